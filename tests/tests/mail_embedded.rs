//! The embedded mail pipeline end to end: the store's queue, the consumer
//! task, the shared `Deliverer` with the SQLite ledger, the outbox.

// Test support code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use latchkey_core::adapters::embedded::{EmbeddedStore, Outbox, embedded_deliverer, spawn_mail_consumer};
use latchkey_core::clock::{Clock, SystemClock};
use latchkey_core::domain::{Email, Secret};
use latchkey_core::mail::delivery::ledger_state;
use latchkey_core::mail::{MailEnvelope, MailJob, Renderer};
use latchkey_core::ports::MailQueue;
use latchkey_tests::system::TempDir;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn the_consumer_writes_one_eml_per_job_id() {
    let dir = TempDir::new();
    let store = EmbeddedStore::open(dir.0.join("db.sqlite3")).unwrap();
    let queue = store.mail_queue();
    let outbox_dir = dir.0.join("outbox");
    let outbox =
        Outbox::new(outbox_dir.clone(), Renderer::new("http://127.0.0.1:3000").unwrap(), "l <n@l.test>".into());
    let d = Arc::new(
        embedded_deliverer(&store, outbox, Renderer::new("http://127.0.0.1:3000").unwrap(), Arc::new(SystemClock))
            .await
            .unwrap(),
    );
    let consumer = spawn_mail_consumer(queue.clone(), d.clone());
    let to = Email::parse("ivy@example.com").unwrap();
    // Queued now: the deliverer refuses a job whose code has expired.
    let now = SystemClock.now();
    let jobs: Vec<MailEnvelope> = (0..3)
        .map(|i| {
            MailEnvelope::new(
                format!("job{i}"),
                &to,
                now,
                None,
                None,
                MailJob::StandaloneCode { code: Secret::new(format!("00000{i}")), expires_minutes: 10 },
            )
        })
        .collect();
    for _ in 0..3 {
        for j in &jobs {
            queue.enqueue(j).await.unwrap();
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut all_sent = true;
        for j in &jobs {
            let e = d.ledger().entry(&j.id).await.unwrap();
            all_sent &= e.is_some_and(|e| e.state == ledger_state::SENT);
        }
        if all_sent {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And once more straight through the deliverer, as a second consumer might.
    let again = d.deliver(&jobs[0], tokio::time::Instant::now() + Duration::from_secs(5)).await;
    assert_eq!(again, latchkey_core::mail::delivery::Outcome::AlreadySent);
    assert!(consumer.stop(latchkey_core::adapters::embedded::STOP_GRACE).await, "stops by itself when idle");
    let mut files: Vec<String> = std::fs::read_dir(&outbox_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, (0..3).map(|i| format!("{now}-job{i}.eml")).collect::<Vec<_>>());
    assert_eq!(queue.pending_count().await.unwrap(), 0);
}
