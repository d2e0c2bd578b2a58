//! The worker on a job's last receive and at its deadline: SQS events from
//! a JSON fixture (deserialized into `aws_lambda_events`' `SqsEvent`) or
//! from the real queue on the emulator, a scripted mailer, the in-memory
//! ledger and the real DLQ.

// Test support code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sqs::types::QueueAttributeName;
use latchkey_core::clock::{Clock, SystemClock};
use latchkey_core::mail::delivery::{
    Claim, Deliverer, JobMeta, LEASE_SECS, MailLedger, Mailer, MemoryMailLedger, RetryPolicy, SendError,
    SendRateLimiter, ledger_state,
};
use latchkey_core::mail::{MailEnvelope, RenderedMail, Renderer};
use latchkey_core::tables;
use latchkey_mail_worker::poller::{Poller, record};
use latchkey_mail_worker::{FAILURE_REASON_ATTRIBUTE, SOURCE_MESSAGE_ID_ATTRIBUTE, Worker, handle};
use latchkey_tests::{drain_queue, emulator_endpoint, message_attribute, random_prefix, sdk_config};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Sends, or (`down`) refuses every send as SES does when it is struggling.
struct Ses {
    down: bool,
}

#[async_trait]
impl Mailer for Ses {
    async fn send(&self, env: &MailEnvelope, _mail: &RenderedMail) -> Result<String, SendError> {
        if self.down {
            return Err(SendError::Transient("TooManyRequestsException: slow down".into()));
        }
        Ok(format!("sent-{}", env.id))
    }
}

fn worker(sqs: aws_sdk_sqs::Client, dlq_url: &str, down: bool) -> (Worker, Arc<MemoryMailLedger>) {
    let ledger = Arc::new(MemoryMailLedger::new());
    let retry = RetryPolicy {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        max_retries: 2,
        reserve: Duration::from_millis(50),
    };
    let d = Deliverer::new(
        Renderer::new("https://auth.example.com").unwrap(),
        ledger.clone(),
        Arc::new(Ses { down }),
        Arc::new(SendRateLimiter::unlimited()),
        Arc::new(SystemClock),
    )
    .with_retry(retry);
    (Worker::new(Arc::new(d), sqs, dlq_url), ledger)
}

/// The SQS client and the mail queues under a fresh prefix, on the emulator.
async fn queues() -> (aws_sdk_sqs::Client, String, String) {
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&emulator_endpoint().await).await);
    let (queue, dlq) = latchkey_core::adapters::sqs::ensure_queues(&sqs, &random_prefix()).await.unwrap();
    (sqs, queue, dlq)
}

fn ids() -> (String, String) {
    (uuid::Uuid::new_v4().simple().to_string(), uuid::Uuid::new_v4().simple().to_string())
}

/// The fixture's two records: job 1 on receive `count1`, job 2 on `count2`,
/// both queued now (their codes live 5 minutes).
fn late_receives(jobs: &(String, String), count1: u32, count2: u32) -> SqsEvent {
    let path = format!("{}/tests/fixtures/sqs_late_receives.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("__JOB1__", &jobs.0)
        .replace("__JOB2__", &jobs.1)
        .replace("__RCPT1__", &format!("r1-{}@example.com", &jobs.0[..8]))
        .replace("__RCPT2__", &format!("r2-{}@example.com", &jobs.1[..8]))
        .replace("__COUNT1__", &count1.to_string())
        .replace("__COUNT2__", &count2.to_string())
        .replace("__CREATED__", &SystemClock.now().to_string());
    serde_json::from_str(&text).unwrap()
}

fn reported(response: &aws_lambda_events::event::sqs::SqsBatchResponse) -> Vec<&str> {
    response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

#[tokio::test]
async fn a_transient_failure_on_the_last_receive_is_parked_with_its_reason() {
    let (sqs, _, dlq) = queues().await;
    let (w, ledger) = worker(sqs.clone(), &dlq, true);
    let jobs = ids();
    let max = tables::MAIL_MAX_RECEIVE_COUNT;
    let ev = late_receives(&jobs, max - 1, max);
    let (first, last) = (ev.records[0].message_id.clone().unwrap(), ev.records[1].message_id.clone().unwrap());
    let response = handle(ev, &w, soon()).await;

    // A receive before the last: left to SQS, as ever.
    assert_eq!(reported(&response), [first.as_str()]);
    assert_eq!(ledger.entry(&jobs.0).await.unwrap().unwrap().state, ledger_state::RETRY);
    // The last: handled, parked with the reason, failed in the ledger.
    let why = format!("transient failures exhausted after {max} receives: TooManyRequestsException: slow down");
    let dead = drain_queue(&sqs, &dlq).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(message_attribute(&dead[0], FAILURE_REASON_ATTRIBUTE).as_deref(), Some(why.as_str()));
    assert_eq!(message_attribute(&dead[0], SOURCE_MESSAGE_ID_ATTRIBUTE).as_deref(), Some(last.as_str()));
    assert_eq!(message_attribute(&dead[0], "job_id").as_deref(), Some(jobs.1.as_str()));
    let e = ledger.entry(&jobs.1).await.unwrap().unwrap();
    assert_eq!((e.state.as_str(), e.reason.as_deref()), (ledger_state::FAILED, Some(why.as_str())));
}

#[tokio::test]
async fn a_job_another_worker_holds_on_its_last_receive_is_left_to_sqs() {
    let (sqs, _, dlq) = queues().await;
    let (w, ledger) = worker(sqs.clone(), &dlq, false);
    let jobs = ids();
    let ev = late_receives(&jobs, 1, tables::MAIL_MAX_RECEIVE_COUNT);
    let last = ev.records[1].message_id.clone().unwrap();
    // Another worker is sending job 2 right now.
    let holder =
        JobMeta::of(&latchkey_core::mail::MailEnvelope::from_json(ev.records[1].body.as_deref().unwrap()).unwrap());
    assert_eq!(ledger.claim(&holder, SystemClock.now(), LEASE_SECS).await.unwrap(), Claim::Claimed);

    let response = handle(ev, &w, soon()).await;
    // Reported, so SQS dead-letters it itself should the holder fail; not
    // parked, and its record is the holder's.
    assert_eq!(reported(&response), [last.as_str()]);
    assert!(drain_queue(&sqs, &dlq).await.is_empty());
    assert_eq!(ledger.entry(&jobs.1).await.unwrap().unwrap().state, ledger_state::SENDING);
    assert_eq!(ledger.entry(&jobs.0).await.unwrap().unwrap().state, ledger_state::SENT);
}

#[tokio::test]
async fn the_poller_parks_a_job_on_its_real_last_receive() {
    let (sqs, queue, dlq) = queues().await;
    // 4 s: each receive's deadline is then 3 s, room for the last one's
    // dead letter on a slow emulator (1 s left it 0.75 s, and a dead letter
    // cut off leaves the job to SQS's own redrive, without its reason).
    // This worker changes no visibility, so the receives come 4 s apart.
    sqs.set_queue_attributes()
        .queue_url(&queue)
        .attributes(QueueAttributeName::VisibilityTimeout, "4")
        .send()
        .await
        .unwrap();
    let (w, ledger) = worker(sqs.clone(), &dlq, true);
    let job = late_receives(&ids(), 1, 1).records[0].body.clone().unwrap();
    let job_id = latchkey_core::mail::MailEnvelope::from_json(&job).unwrap().id;
    sqs.send_message().queue_url(&queue).message_body(&job).send().await.unwrap();
    let poller = Poller::new(sqs.clone(), queue.clone()).await.unwrap();
    let started = Instant::now();
    let mut receives = 0;
    let mut handled = 0;
    while handled == 0 {
        let stats = poller.poll_once(&w).await.unwrap();
        receives += stats.received;
        handled += stats.handled;
        // A guard against a hang: five receives take about 20 s.
        assert!(started.elapsed() < Duration::from_secs(120), "never parked");
    }
    // SQS counted the receives itself (ApproximateReceiveCount).
    assert_eq!(receives, tables::MAIL_MAX_RECEIVE_COUNT as usize);
    let dead = drain_queue(&sqs, &dlq).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some(job.as_str()));
    let why = message_attribute(&dead[0], FAILURE_REASON_ATTRIBUTE).unwrap();
    let prefix = format!("transient failures exhausted after {} receives: ", tables::MAIL_MAX_RECEIVE_COUNT);
    assert!(why.starts_with(&prefix), "{why}");
    let e = ledger.entry(&job_id).await.unwrap().unwrap();
    assert_eq!((e.state.as_str(), e.reason.as_deref()), (ledger_state::FAILED, Some(why.as_str())));
    assert_eq!(e.attempts, tables::MAIL_MAX_RECEIVE_COUNT);
}

/// A job another worker holds is shown again when that worker's lease
/// ends, not after the queue's visibility timeout (60 s here): the next
/// receive then claims it and sends it.
#[tokio::test]
async fn a_job_another_worker_holds_comes_back_when_its_lease_ends() {
    let (sqs, queue, dlq) = queues().await;
    let (w, ledger) = worker(sqs.clone(), &dlq, false);
    let w = w.with_queue_url(&queue);
    let poller = Poller::new(sqs.clone(), queue.clone()).await.unwrap();
    assert_eq!(
        sqs.get_queue_attributes()
            .queue_url(&queue)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap()[&QueueAttributeName::VisibilityTimeout],
        "60"
    );
    let job = late_receives(&ids(), 1, 1).records[0].body.clone().unwrap();
    let env = latchkey_core::mail::MailEnvelope::from_json(&job).unwrap();
    // Another worker claimed it a while ago: its lease ends in 8 s, after
    // the send and the first receive below, however slow the emulator.
    let lease_ends = LEASE_SECS - 8;
    assert_eq!(
        ledger.claim(&JobMeta::of(&env), SystemClock.now() - lease_ends, LEASE_SECS).await.unwrap(),
        Claim::Claimed
    );
    sqs.send_message().queue_url(&queue).message_body(&job).send().await.unwrap();
    let sent = Instant::now();
    let mut first = poller.poll_once(&w).await.unwrap();
    while first.received == 0 {
        assert!(sent.elapsed() < Duration::from_secs(10), "the job never arrived");
        first = poller.poll_once(&w).await.unwrap();
    }
    assert_eq!((first.received, first.failed), (1, 1), "busy: left for redelivery");
    let left = Instant::now();
    loop {
        let stats = poller.poll_once(&w).await.unwrap();
        if stats.received > 0 {
            assert_eq!(stats.handled, 1);
            break;
        }
        // The lease's 8 s and a second, against the queue's 60 s.
        assert!(left.elapsed() < Duration::from_secs(40), "not shown again when the lease ended");
    }
    let e = ledger.entry(&env.id).await.unwrap().unwrap();
    assert_eq!((e.state.as_str(), e.attempts), (ledger_state::SENT, 2));
    assert!(drain_queue(&sqs, &dlq).await.is_empty());
}

/// Accepts connections and never answers on them.
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_dead_letter_write_ends_by_the_deadline() {
    let endpoint = black_hole().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&endpoint).await);
    let (w, _) = worker(sqs, &format!("{endpoint}/000000000000/t-mail-dlq"), false);
    let ev = {
        let mut e = SqsEvent::default();
        e.records = vec![record("poison-1", "{\"v\":1,\"code\":\"999999\"")];
        e
    };
    let deadline = Instant::now() + Duration::from_millis(500);
    let response = tokio::time::timeout(Duration::from_secs(30), handle(ev, &w, deadline))
        .await
        .expect("the handler answers by its deadline");
    assert!(Instant::now() < deadline + Duration::from_millis(200));
    // Not parked: reported, so SQS keeps the message.
    assert_eq!(reported(&response), ["poison-1"]);
}
