//! The dead-letter queue, for operators:
//!
//! ```text
//! cargo run -p latchkey-mail-worker -- dlq list
//! cargo run -p latchkey-mail-worker -- dlq redrive [--max N]
//! ```
//!
//! with `LATCHKEY_MAIL_QUEUE_URL` and `LATCHKEY_MAIL_DLQ_URL` set (or
//! `LATCHKEY_TABLE_PREFIX`, to find `{prefix}-mail` and `{prefix}-mail-dlq`
//! by name) and the usual AWS credentials (`AWS_ENDPOINT_URL` for the
//! emulator). `list` prints each dead letter's id, job id, kind, receive
//! count and failure reason, never its body (which holds a code or link).
//! `redrive` moves them back to the mail queue after a fix: each is sent
//! to the queue (without its `failure_reason`), then deleted from the DLQ.
//! A redrive stops when the DLQ is empty, after `--max` letters, or after
//! the batch that held a letter of a job it moved (it failed again, or was
//! a second copy: redriving it once more could go round for ever). Any
//! other argument is refused.
//! A job the ledger already shows as sent is not sent again, and neither is
//! one whose code or link has expired or that is 6 days old (the worker
//! drops it as expired, `failed` in the ledger).

use crate::{BoxError, FAILURE_REASON_ATTRIBUTE, SOURCE_MESSAGE_ID_ATTRIBUTE};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use latchkey_core::tables;

/// One dead letter, without its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub message_id: String,
    pub job_id: Option<String>,
    pub kind: Option<String>,
    pub failure_reason: Option<String>,
    pub receive_count: Option<String>,
}

impl std::fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        write!(
            f,
            "{}\tjob={}\tkind={}\treceives={}\treason={}",
            self.message_id,
            o(&self.job_id),
            o(&self.kind),
            o(&self.receive_count),
            // A message SQS moved itself after maxReceiveCount receives
            // carries no reason of ours: the worker parks a job's last
            // receive with one, unless another worker held the job then or
            // the worker's own DLQ copy could not be written in time.
            self.failure_reason.clone().unwrap_or_else(|| "moved by SQS after maxReceiveCount receives".into())
        )
    }
}

fn attr(m: &Message, name: &str) -> Option<String> {
    m.message_attributes()?.get(name)?.string_value().map(str::to_string)
}

fn dead_letter(m: &Message) -> DeadLetter {
    DeadLetter {
        message_id: m.message_id().unwrap_or_default().to_string(),
        job_id: attr(m, "job_id"),
        kind: attr(m, "kind"),
        failure_reason: attr(m, FAILURE_REASON_ATTRIBUTE),
        receive_count: m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .cloned(),
    }
}

async fn receive(sqs: &Client, url: &str, visibility: i32) -> Result<Vec<Message>, BoxError> {
    Ok(sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .visibility_timeout(visibility)
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .message_attribute_names("All")
        .send()
        .await?
        .messages
        .unwrap_or_default())
}

/// What [`list`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Each letter once.
    pub letters: Vec<DeadLetter>,
    /// Letters came round again before the listing ended (it outlasted
    /// the time each is hidden for): some may not have been listed.
    pub may_be_incomplete: bool,
}

/// How long [`list`] hides each letter it has read: far longer than a
/// listing of thousands takes (they are made visible again at its end).
const LIST_HIDE_SECS: i32 = 300;

/// Every dead letter, read without consuming: each is hidden while the
/// listing runs and made visible again at the end.
pub async fn list(sqs: &Client, dlq_url: &str) -> Result<Listing, BoxError> {
    list_hiding_for(sqs, dlq_url, LIST_HIDE_SECS).await
}

/// [`list`], hiding each letter for `visibility` seconds. A listing that
/// takes longer receives the first letters again: each is listed once, the
/// listing ends at a batch with nothing new (it went on receiving the same
/// letters before, without end), and says it may be incomplete.
pub async fn list_hiding_for(sqs: &Client, dlq_url: &str, visibility: i32) -> Result<Listing, BoxError> {
    let mut letters = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let mut handles = Vec::new();
    let mut may_be_incomplete = false;
    loop {
        let batch = receive(sqs, dlq_url, visibility).await?;
        let mut new = false;
        for m in &batch {
            handles.extend(m.receipt_handle().map(str::to_string));
            if ids.insert(m.message_id().unwrap_or_default().to_string()) {
                letters.push(dead_letter(m));
                new = true;
            } else {
                may_be_incomplete = true;
            }
        }
        if !new {
            break;
        }
    }
    for h in handles {
        // Best effort: if this fails the message reappears after `visibility`.
        let _ = sqs.change_message_visibility().queue_url(dlq_url).receipt_handle(h).visibility_timeout(0).send().await;
    }
    Ok(Listing { letters, may_be_incomplete })
}

/// What [`redrive`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redriven {
    /// The letters moved to the mail queue, each once.
    pub moved: Vec<DeadLetter>,
    /// Letters of jobs this run had already moved, found in the DLQ before
    /// it ended: the job failed again at once, or the DLQ held two copies
    /// of it (the worker's own copy of a last receive and SQS's move of the
    /// same message, if the worker's delete was lost). The run stopped at
    /// the first batch that held one and left them there, visible.
    pub came_back: usize,
}

/// What makes two letters the same job: its `job_id` attribute, or the
/// body of a letter without one (a poison body keeps its bytes).
fn job_key(m: &Message) -> String {
    attr(m, "job_id").map_or_else(|| format!("body:{}", m.body().unwrap_or_default()), |id| format!("job:{id}"))
}

/// Moves up to `max` dead letters back to the mail queue. The run ends when
/// the DLQ is empty, `max` have moved, or a letter it moved is back (a job
/// that fails again at once would otherwise go round for ever); whatever
/// it received and did not move is made visible again at once.
pub async fn redrive(sqs: &Client, dlq_url: &str, queue_url: &str, max: usize) -> Result<Redriven, BoxError> {
    let mut moved = Vec::new();
    let mut came_back = 0;
    let mut keys = std::collections::HashSet::new();
    while moved.len() < max && came_back == 0 {
        let batch = receive(sqs, dlq_url, 60).await?;
        if batch.is_empty() {
            break;
        }
        for m in batch {
            let key = job_key(&m);
            let again = keys.contains(&key);
            if again || moved.len() >= max {
                came_back += usize::from(again);
                if let Some(h) = m.receipt_handle() {
                    // Best effort: if this fails the letter reappears in 60 s,
                    // and what was moved is still reported.
                    let release =
                        sqs.change_message_visibility().queue_url(dlq_url).receipt_handle(h).visibility_timeout(0);
                    if let Err(e) = release.send().await {
                        tracing::warn!(error = %e, "a letter not moved stays hidden for 60 s");
                    }
                }
                continue;
            }
            let mut req = sqs.send_message().queue_url(queue_url).message_body(m.body().unwrap_or_default());
            for (name, value) in m.message_attributes().into_iter().flatten() {
                if name == FAILURE_REASON_ATTRIBUTE || name == SOURCE_MESSAGE_ID_ATTRIBUTE {
                    continue;
                }
                if let (Some(v), Some(t)) = (value.string_value(), Some(value.data_type()))
                    && let Ok(a) = MessageAttributeValue::builder().data_type(t).string_value(v).build()
                {
                    req = req.message_attributes(name, a);
                }
            }
            // Send first, then delete: a crash in between duplicates the
            // message, and the ledger makes the duplicate harmless.
            req.send().await?;
            if let Some(h) = m.receipt_handle() {
                sqs.delete_message().queue_url(dlq_url).receipt_handle(h).send().await?;
            }
            keys.insert(key);
            moved.push(dead_letter(&m));
        }
    }
    Ok(Redriven { moved, came_back })
}

/// The queue URLs from the environment, or looked up by the prefix.
pub async fn queue_urls(sqs: &Client, get: impl Fn(&str) -> Option<String>) -> Result<(String, String), BoxError> {
    let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
    if let (Some(q), Some(d)) = (get("LATCHKEY_MAIL_QUEUE_URL"), get("LATCHKEY_MAIL_DLQ_URL")) {
        return Ok((q, d));
    }
    let prefix = get("LATCHKEY_TABLE_PREFIX")
        .ok_or("set LATCHKEY_MAIL_QUEUE_URL and LATCHKEY_MAIL_DLQ_URL, or LATCHKEY_TABLE_PREFIX")?;
    let url = |suffix: &'static str| {
        let name = tables::queue_name(&prefix, suffix);
        async move { sqs.get_queue_url().queue_name(name).send().await.map(|o| o.queue_url.unwrap_or_default()) }
    };
    Ok((url(tables::MAIL_QUEUE).await?, url(tables::MAIL_DLQ).await?))
}

const USAGE: &str = "usage: latchkey-mail-worker dlq list | dlq redrive [--max N] (N >= 1)";

/// An operator's command, as parsed from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    List,
    Redrive { max: usize },
}

/// Parses `list` or `redrive [--max N]`; anything else, including an
/// argument it does not know, is refused with the usage.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut args = args.iter().map(String::as_str);
    let mut command = match args.next() {
        Some("list") => Command::List,
        Some("redrive") => Command::Redrive { max: usize::MAX },
        Some(other) => return Err(format!("unknown command {other:?}; {USAGE}")),
        None => return Err(USAGE.into()),
    };
    let mut max_given = false;
    while let Some(arg) = args.next() {
        match (&mut command, arg) {
            (Command::Redrive { max }, "--max") if !max_given => {
                let n = args.next().ok_or_else(|| format!("--max needs a number; {USAGE}"))?;
                *max = n
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n >= 1)
                    .ok_or_else(|| format!("--max needs a whole number of 1 or more, not {n:?}; {USAGE}"))?;
                max_given = true;
            }
            _ => return Err(format!("unknown argument {arg:?}; {USAGE}")),
        }
    }
    Ok(command)
}

/// Runs a parsed `dlq list` / `dlq redrive [--max N]`.
pub async fn run(sqs: &Client, command: Command) -> Result<(), BoxError> {
    let (queue_url, dlq_url) = queue_urls(sqs, |k| std::env::var(k).ok()).await?;
    match command {
        Command::List => {
            let listing = list(sqs, &dlq_url).await?;
            for l in &listing.letters {
                println!("{l}");
            }
            println!("{} dead letter(s) in {dlq_url}", listing.letters.len());
            if listing.may_be_incomplete {
                println!("some letters came round again before the listing ended: it may be incomplete");
            }
        }
        Command::Redrive { max } => {
            let run = redrive(sqs, &dlq_url, &queue_url, max).await?;
            for l in &run.moved {
                println!("redriven {l}");
            }
            println!("{} message(s) moved to {queue_url}", run.moved.len());
            if run.came_back > 0 {
                println!(
                    "stopped: {} letter(s) of jobs this run moved are in the DLQ again (failed again, or a \
                     second copy of one); see `dlq list` for why before redriving them again",
                    run.came_back
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Command, String> {
        parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_commands_and_their_one_option_parse() {
        assert_eq!(parsed(&["list"]), Ok(Command::List));
        assert_eq!(parsed(&["redrive"]), Ok(Command::Redrive { max: usize::MAX }));
        assert_eq!(parsed(&["redrive", "--max", "25"]), Ok(Command::Redrive { max: 25 }));
    }

    #[test]
    fn anything_else_is_refused_and_named() {
        for (args, names) in [
            (&[][..], "usage:"),
            (&["lsit"][..], "unknown command \"lsit\""),
            (&["list", "--max", "3"][..], "unknown argument \"--max\""),
            (&["list", "all"][..], "unknown argument \"all\""),
            (&["redrive", "--dry-run"][..], "unknown argument \"--dry-run\""),
            (&["redrive", "--max"][..], "--max needs a number"),
            (&["redrive", "--max", "0"][..], "not \"0\""),
            (&["redrive", "--max", "-1"][..], "not \"-1\""),
            (&["redrive", "--max", "ten"][..], "not \"ten\""),
            (&["redrive", "--max", "3", "--max", "4"][..], "unknown argument \"--max\""),
            (&["redrive", "--max", "3", "now"][..], "unknown argument \"now\""),
        ] {
            let err = parsed(args).expect_err(&format!("{args:?} is refused"));
            assert!(err.contains(names) && err.contains("usage:"), "{args:?}: {err}");
        }
    }
}
