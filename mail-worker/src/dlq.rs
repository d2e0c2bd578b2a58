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

/// Moves up to `max` dead letters back to the mail queue; returns them.
pub async fn redrive(sqs: &Client, dlq_url: &str, queue_url: &str, max: usize) -> Result<Vec<DeadLetter>, BoxError> {
    let mut moved = Vec::new();
    while moved.len() < max {
        let batch = receive(sqs, dlq_url, 60).await?;
        if batch.is_empty() {
            break;
        }
        for m in batch.into_iter().take(max - moved.len()) {
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
            moved.push(dead_letter(&m));
        }
    }
    Ok(moved)
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

/// `dlq list` / `dlq redrive [--max N]`.
pub async fn cli(sqs: &Client, args: &[String]) -> Result<(), BoxError> {
    let (queue_url, dlq_url) = queue_urls(sqs, |k| std::env::var(k).ok()).await?;
    match args.first().map(String::as_str) {
        Some("list") => {
            let listing = list(sqs, &dlq_url).await?;
            for l in &listing.letters {
                println!("{l}");
            }
            println!("{} dead letter(s) in {dlq_url}", listing.letters.len());
            if listing.may_be_incomplete {
                println!("some letters came round again before the listing ended: it may be incomplete");
            }
        }
        Some("redrive") => {
            let max = match args.iter().position(|a| a == "--max") {
                Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).ok_or("--max needs a number")?,
                None => usize::MAX,
            };
            let moved = redrive(sqs, &dlq_url, &queue_url, max).await?;
            for l in &moved {
                println!("redriven {l}");
            }
            println!("{} message(s) moved to {queue_url}", moved.len());
        }
        _ => return Err("usage: latchkey-mail-worker dlq list | dlq redrive [--max N]".into()),
    }
    Ok(())
}
