//! The mail worker's handler fed with JSON fixtures of real SQS events
//! (deserialized into `aws_lambda_events`' `SqsEvent`), with a recording
//! mailer and the real DLQ on the emulator.

// Test support code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsEvent;
use latchkey_core::clock::{Clock, SystemClock};
use latchkey_core::mail::delivery::{
    Deliverer, MailLedger, Mailer, MemoryMailLedger, RetryPolicy, SendError, SendRateLimiter,
};
use latchkey_core::mail::{MailEnvelope, RenderedMail, Renderer};
use latchkey_mail_worker::{FAILURE_REASON_ATTRIBUTE, Worker, handle};
use latchkey_tests::{emulator_endpoint, random_prefix, sdk_config};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records what it sends; or refuses everything transiently.
#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<RenderedMail>>,
    down: bool,
}

#[async_trait]
impl Mailer for Recorder {
    async fn send(&self, env: &MailEnvelope, mail: &RenderedMail) -> Result<String, SendError> {
        if self.down {
            return Err(SendError::Transient("503".into()));
        }
        self.sent.lock().unwrap().push(mail.clone());
        Ok(format!("sent-{}", env.id))
    }
}

fn fixture(name: &str, subst: &[(&str, &str)]) -> SqsEvent {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    // Queued now: the deliverer refuses a job whose code has expired.
    let mut text = std::fs::read_to_string(&path).unwrap().replace("__CREATED__", &SystemClock.now().to_string());
    for (k, v) in subst {
        text = text.replace(k, v);
    }
    serde_json::from_str(&text).unwrap()
}

async fn worker(mailer: Arc<Recorder>, ledger: Arc<MemoryMailLedger>) -> (Worker, aws_sdk_sqs::Client, String) {
    let sdk = sdk_config(&emulator_endpoint().await).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (_, dlq) = latchkey_core::adapters::sqs::ensure_queues(&sqs, &random_prefix()).await.unwrap();
    let retry = RetryPolicy {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        max_retries: 2,
        reserve: Duration::ZERO,
    };
    let d = Deliverer::new(
        Renderer::new("https://auth.example.com").unwrap(),
        ledger,
        mailer,
        Arc::new(SendRateLimiter::unlimited()),
        Arc::new(SystemClock),
    )
    .with_retry(retry);
    (Worker::new(Arc::new(d), sqs.clone(), dlq.clone()), sqs, dlq)
}

fn ids() -> (String, String) {
    (uuid::Uuid::new_v4().simple().to_string(), uuid::Uuid::new_v4().simple().to_string())
}

#[tokio::test]
async fn a_fixture_batch_sends_two_and_parks_the_poison_record() {
    let (j1, j2) = ids();
    let ev = fixture(
        "sqs_mail_batch.json",
        &[("__JOB1__", &j1), ("__JOB2__", &j2), ("__RCPT1__", "f1@example.com"), ("__RCPT2__", "f2@example.com")],
    );
    assert_eq!(ev.records.len(), 3);
    assert_eq!(ev.records[0].message_attributes["kind"].string_value.as_deref(), Some("signup_attempt"));
    let (mailer, ledger) = (Arc::new(Recorder::default()), Arc::new(MemoryMailLedger::new()));
    let (w, sqs, dlq) = worker(mailer.clone(), ledger.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);

    let response = handle(ev.clone(), &w, deadline).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let sent = mailer.sent.lock().unwrap().clone();
    let mut to: Vec<&str> = sent.iter().map(|m| m.to.as_str()).collect();
    to.sort();
    assert_eq!(to, ["f1@example.com", "f2@example.com"]);
    assert!(sent.iter().any(|m| m.text.contains("482915")));
    assert_eq!(ledger.entry(&j2).await.unwrap().unwrap().provider_id, Some(format!("sent-{j2}")));

    let dead = sqs
        .receive_message()
        .queue_url(&dlq)
        .max_number_of_messages(10)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some("this is not a mail job"));
    let attrs = dead[0].message_attributes().unwrap();
    assert!(attrs[FAILURE_REASON_ATTRIBUTE].string_value().unwrap().starts_with("unparseable mail job"));
    assert_eq!(attrs["source_message_id"].string_value(), Some("6b3b4f6e-7c43-4d3c-a1c4-2a4c3e1d0f11"));

    // Lambda hands the same batch over again: nothing is sent twice.
    handle(ev, &w, deadline).await;
    assert_eq!(mailer.sent.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn when_ses_is_down_only_the_deliverable_records_are_reported() {
    let (j1, j2) = ids();
    let ev = fixture(
        "sqs_mail_batch.json",
        &[("__JOB1__", &j1), ("__JOB2__", &j2), ("__RCPT1__", "g1@example.com"), ("__RCPT2__", "g2@example.com")],
    );
    let mailer = Arc::new(Recorder { down: true, ..Default::default() });
    let (w, _, _) = worker(mailer.clone(), Arc::new(MemoryMailLedger::new())).await;
    let response = handle(ev, &w, tokio::time::Instant::now() + Duration::from_secs(30)).await;
    let mut failed: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    failed.sort();
    assert_eq!(failed, ["059f36b4-87a3-44ab-83d2-661975830a7d", "2e1424d4-f796-459a-8184-9c92662be6da"]);
    let json = serde_json::to_value(&response).unwrap();
    assert_eq!(json["batchItemFailures"].as_array().unwrap().len(), 2);
    assert!(
        json["batchItemFailures"].as_array().unwrap().iter().all(|f| !f["itemIdentifier"].as_str().unwrap().is_empty())
    );
}
