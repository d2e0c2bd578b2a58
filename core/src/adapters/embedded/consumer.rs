//! The embedded mail consumer: takes due jobs from the `SqliteMailQueue` in
//! order and hands them to the `Outbox`. A job that cannot be parsed, or
//! that the outbox refuses for good, is parked as `failed` with its reason;
//! a file-system error is retried with backoff and parked after
//! `MAX_DELIVERY_ATTEMPTS`. Nothing is dropped silently.

use super::mail_queue::{ClaimedJob, SqliteMailQueue};
use super::outbox::{DeliveryError, Outbox};
use crate::mail::MailEnvelope;
use crate::ports::StoreResult;
use std::time::Duration;

/// Attempts before a job that keeps failing is parked.
pub const MAX_DELIVERY_ATTEMPTS: u32 = 5;

/// How often the consumer looks for due jobs when nobody wakes it (retries
/// whose backoff has run out, jobs enqueued by another process).
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// Runs the consumer until the task is aborted.
pub fn spawn_mail_consumer(queue: SqliteMailQueue, outbox: Outbox) -> tokio::task::JoinHandle<()> {
    spawn_with_idle_wake(queue, outbox, IDLE_WAKE)
}

fn spawn_with_idle_wake(queue: SqliteMailQueue, outbox: Outbox, idle_wake: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = drain(&queue, &outbox).await {
                // Jobs stay queued; the next wake-up tries again.
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "mail queue unavailable");
            }
            // Woken by an enqueue, or by the timer.
            let _ = tokio::time::timeout(idle_wake, queue.wait_for_work()).await;
        }
    })
}

/// Delivers every job that is due now; returns how many were handled.
pub(crate) async fn drain(queue: &SqliteMailQueue, outbox: &Outbox) -> StoreResult<usize> {
    let mut handled = 0;
    while let Some(job) = queue.claim_next().await? {
        handle(queue, outbox, job).await?;
        handled += 1;
    }
    Ok(handled)
}

async fn handle(queue: &SqliteMailQueue, outbox: &Outbox, job: ClaimedJob) -> StoreResult<()> {
    let env = match MailEnvelope::from_json(&job.body) {
        Ok(env) => env,
        Err(reason) => {
            tracing::error!(mail_id = %job.id, %reason, "mail job parked: unreadable");
            return queue.mark_failed(&job.id, &reason).await;
        }
    };
    let kind = env.job.kind();
    match outbox.try_deliver(&env).await {
        Ok(path) => {
            tracing::info!(mail_id = %job.id, kind, path = %path.display(), "mail written to the outbox");
            queue.mark_sent(&job.id).await
        }
        Err(DeliveryError::Permanent(reason)) => {
            tracing::error!(mail_id = %job.id, kind, %reason, "mail job parked: undeliverable");
            queue.mark_failed(&job.id, &reason).await
        }
        Err(DeliveryError::Transient(reason)) => {
            let state = queue.record_attempt_failure(&job.id, &reason, MAX_DELIVERY_ATTEMPTS).await?;
            tracing::warn!(mail_id = %job.id, kind, %reason, attempt = job.attempts + 1, state, "mail delivery failed");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::mail_queue::{FAILED, PENDING, SENT};
    use super::super::test_support::{TempDir, store};
    use super::*;
    use crate::domain::{Email, Secret};
    use crate::mail::{MailJob, Renderer};
    use crate::ports::MailQueue;
    use std::path::Path;

    fn outbox(dir: &Path) -> Outbox {
        Outbox::new(
            dir.to_path_buf(),
            Renderer::new("http://127.0.0.1:3000").unwrap(),
            "latchkey <noreply@latchkey.local>".into(),
        )
    }

    fn job(id: &str) -> MailEnvelope {
        MailEnvelope::new(
            id.into(),
            &Email::parse("carol@example.com").unwrap(),
            1_700_000_000,
            None,
            MailJob::StandaloneCode { code: Secret::new("271828".into()), expires_minutes: 10 },
        )
    }

    fn emls(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    #[tokio::test]
    async fn one_file_per_job_id_even_if_enqueued_twice() {
        let (s, _) = store();
        let dir = TempDir::new();
        let (q, o) = (s.mail_queue(), outbox(&dir.0));
        q.enqueue(&job("dup1")).await.unwrap();
        q.enqueue(&job("dup1")).await.unwrap();
        assert_eq!(drain(&q, &o).await.unwrap(), 1);
        // Enqueued again after it was sent: still not delivered twice.
        q.enqueue(&job("dup1")).await.unwrap();
        assert_eq!(drain(&q, &o).await.unwrap(), 0);
        assert_eq!(emls(&dir.0), vec!["1700000000-dup1.eml".to_string()]);
        assert_eq!(q.job_state("dup1").await.unwrap(), Some((SENT.to_string(), 1, None)));
    }

    #[tokio::test]
    async fn poison_jobs_are_parked_with_a_reason_and_do_not_block_others() {
        let (s, _) = store();
        let dir = TempDir::new();
        let (q, o) = (s.mail_queue(), outbox(&dir.0));
        q.enqueue_raw("garbage", "{not json").await.unwrap();
        let mut future = job("v2");
        future.v = 2;
        q.enqueue(&future).await.unwrap();
        let mut bad_to = job("badto");
        bad_to.to = "not an address".into();
        q.enqueue(&bad_to).await.unwrap();
        q.enqueue(&job("good")).await.unwrap();
        assert_eq!(drain(&q, &o).await.unwrap(), 4);

        let (state, attempts, reason) = q.job_state("garbage").await.unwrap().unwrap();
        assert_eq!((state.as_str(), attempts), (FAILED, 1));
        assert!(reason.unwrap().contains("unparseable mail job"));
        let (state, _, reason) = q.job_state("v2").await.unwrap().unwrap();
        assert_eq!(state, FAILED);
        assert_eq!(reason.as_deref(), Some("unknown mail job version 2"));
        let (state, _, reason) = q.job_state("badto").await.unwrap().unwrap();
        assert_eq!(state, FAILED);
        assert!(reason.unwrap().contains("recipient"));
        assert_eq!(q.job_state("good").await.unwrap().unwrap().0, SENT);
        assert_eq!(emls(&dir.0), vec!["1700000000-good.eml".to_string()]);
        assert_eq!(q.pending_count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn write_errors_are_retried_then_parked_after_five_attempts() {
        let (s, clock) = store();
        let dir = TempDir::new();
        let blocked = dir.0.join("outbox");
        // A file where the directory should be: every write fails.
        std::fs::write(&blocked, b"in the way").unwrap();
        let (q, o) = (s.mail_queue(), outbox(&blocked));
        q.enqueue(&job("retry")).await.unwrap();
        for attempt in 1..=MAX_DELIVERY_ATTEMPTS {
            assert_eq!(drain(&q, &o).await.unwrap(), 1, "attempt {attempt}");
            let (state, attempts, reason) = q.job_state("retry").await.unwrap().unwrap();
            assert_eq!(attempts, attempt);
            assert!(reason.is_some());
            assert_eq!(state, if attempt < MAX_DELIVERY_ATTEMPTS { PENDING } else { FAILED });
            // Backing off: not retried at once.
            assert_eq!(drain(&q, &o).await.unwrap(), 0);
            clock.advance(300);
        }
        assert_eq!(q.pending_count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_retry_that_succeeds_is_sent_once() {
        let (s, clock) = store();
        let dir = TempDir::new();
        let target = dir.0.join("outbox");
        std::fs::write(&target, b"in the way").unwrap();
        let (q, o) = (s.mail_queue(), outbox(&target));
        q.enqueue(&job("later")).await.unwrap();
        assert_eq!(drain(&q, &o).await.unwrap(), 1);
        std::fs::remove_file(&target).unwrap();
        clock.advance(300);
        assert_eq!(drain(&q, &o).await.unwrap(), 1);
        assert_eq!(q.job_state("later").await.unwrap().unwrap().0, SENT);
        assert_eq!(emls(&target), vec!["1700000000-later.eml".to_string()]);
    }

    #[tokio::test]
    async fn the_spawned_consumer_is_woken_by_enqueue() {
        let (s, _) = store();
        let dir = TempDir::new();
        let q = s.mail_queue();
        // The timer never fires within the test: only the enqueue can wake it.
        let task = spawn_with_idle_wake(q.clone(), outbox(&dir.0), Duration::from_secs(3600));
        // Give it time to find the queue empty and start waiting. (Were it
        // slower, the test would still pass; it would just prove less.)
        tokio::time::sleep(Duration::from_millis(50)).await;
        q.enqueue(&job("woken")).await.unwrap();
        q.enqueue(&job("woken")).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if q.job_state("woken").await.unwrap().is_some_and(|(state, _, _)| state == SENT) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "consumer did not deliver");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        assert_eq!(emls(&dir.0), vec!["1700000000-woken.eml".to_string()]);
    }
}
