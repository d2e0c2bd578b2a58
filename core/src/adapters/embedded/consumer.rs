//! The embedded mail consumer: takes due jobs from the `SqliteMailQueue` in
//! order and delivers each through the shared `Deliverer` (the same ledger
//! claim, send retries and parking as the SES worker on AWS), with the
//! `Outbox` as the mailer and `EmbeddedMailLedger` on the same database. A
//! job that cannot be parsed, or that is refused for good, is parked as
//! `failed` with its reason, and so is one that expired before it could be
//! sent (its code or link dead, or the job too old); a job whose sends kept
//! failing is retried with the queue's backoff and parked after
//! `MAX_DELIVERY_ATTEMPTS`, `failed` in the ledger as well. Nothing is
//! dropped silently, and a job id is written to the outbox at most once.

use super::EmbeddedStore;
use super::mail_ledger::EmbeddedMailLedger;
use super::mail_queue::{ClaimedJob, SqliteMailQueue};
use super::outbox::Outbox;
use crate::clock::Clock;
use crate::mail::delivery::{Deliverer, Outcome, Redelivery, RetryPolicy, SendRateLimiter};
use crate::mail::{MailEnvelope, Renderer};
use crate::ports::StoreResult;
use std::sync::Arc;
use std::time::Duration;

/// Attempts before a job that keeps failing is parked.
pub const MAX_DELIVERY_ATTEMPTS: u32 = 5;

/// How often the consumer looks for due jobs when nobody wakes it (retries
/// whose backoff has run out).
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// How long one delivery (with its in-place send retries) may take.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(10);

/// A few quick retries in place; the queue's backoff does the long waits.
pub const EMBEDDED_RETRY: RetryPolicy = RetryPolicy {
    min_delay: Duration::from_millis(20),
    max_delay: Duration::from_millis(200),
    max_retries: 2,
    reserve: Duration::from_millis(100),
};

/// The embedded backend's `Deliverer`: the outbox as the mailer, the ledger
/// on `store`'s database, no send-rate limit (files are not an SES account).
pub async fn embedded_deliverer(
    store: &EmbeddedStore,
    outbox: Outbox,
    renderer: Renderer,
    clock: Arc<dyn Clock>,
) -> StoreResult<Deliverer> {
    let ledger = EmbeddedMailLedger::open(store).await?;
    Ok(Deliverer::new(renderer, Arc::new(ledger), Arc::new(outbox), Arc::new(SendRateLimiter::unlimited()), clock)
        .with_retry(EMBEDDED_RETRY))
}

/// How long [`MailConsumer::stop`] waits for a delivery in hand: its own
/// deadline, and a second for the outcome's write.
pub const STOP_GRACE: Duration = Duration::from_secs(DELIVERY_DEADLINE.as_secs() + 1);

/// The running consumer.
pub struct MailConsumer {
    /// Its task. Aborting it cuts off a delivery in hand: its ledger claim
    /// then holds the job for the claim's lease (5 minutes) before a later
    /// run may send it, so a runner that stops uses [`MailConsumer::stop`].
    pub task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl MailConsumer {
    /// Asks the consumer to stop: the job in hand is delivered and its
    /// outcome written, and no other job is taken (they stay queued for
    /// the next run). Waits for that at most `grace`, then aborts it.
    /// Returns whether it stopped by itself. Dropping the consumer asks
    /// it to stop the same way, without waiting.
    pub async fn stop(self, grace: Duration) -> bool {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_ok() {
            return true;
        }
        task.abort();
        false
    }
}

/// Runs the consumer on a thread of its own (its store calls and file
/// writes run inline there) until it is stopped (or its task aborted).
pub fn spawn_mail_consumer(queue: SqliteMailQueue, deliverer: Arc<Deliverer>) -> MailConsumer {
    spawn_with_idle_wake(queue, deliverer, IDLE_WAKE)
}

/// Asked to stop, or nobody left to ask (the consumer was dropped).
fn stop_asked(stopping: &tokio::sync::watch::Receiver<bool>) -> bool {
    *stopping.borrow() || stopping.has_changed().is_err()
}

fn spawn_with_idle_wake(queue: SqliteMailQueue, deliverer: Arc<Deliverer>, idle_wake: Duration) -> MailConsumer {
    let (stop, mut stopping) = tokio::sync::watch::channel(false);
    let task = super::spawn_background("mail-consumer", async move {
        while !stop_asked(&stopping) {
            if let Err(e) = drain_until(&queue, &deliverer, || stop_asked(&stopping)).await {
                // Jobs stay queued; the next wake-up tries again.
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "mail queue unavailable");
            }
            // Woken by an enqueue, by the timer, or to stop.
            tokio::select! {
                _ = tokio::time::timeout(idle_wake, queue.wait_for_work()) => {}
                _ = stopping.changed() => {}
            }
        }
        tracing::debug!("mail consumer stopped");
    });
    MailConsumer { task, stop }
}

/// Delivers every job that is due now; returns how many were handled.
#[cfg(test)]
pub(crate) async fn drain(queue: &SqliteMailQueue, deliverer: &Deliverer) -> StoreResult<usize> {
    drain_until(queue, deliverer, || false).await
}

/// Delivers every job that is due now, taking none once `stop` says so;
/// returns how many were handled.
async fn drain_until(queue: &SqliteMailQueue, deliverer: &Deliverer, stop: impl Fn() -> bool) -> StoreResult<usize> {
    let mut handled = 0;
    while !stop()
        && let Some(job) = queue.claim_next().await?
    {
        let more = job.more;
        handle(queue, deliverer, job).await?;
        handled += 1;
        if !more {
            // Jobs enqueued since the claim left a wake-up for the next drain.
            break;
        }
    }
    Ok(handled)
}

async fn handle(queue: &SqliteMailQueue, deliverer: &Deliverer, job: ClaimedJob) -> StoreResult<()> {
    let env = match MailEnvelope::from_json(&job.body) {
        Ok(env) => env,
        Err(reason) => {
            tracing::error!(mail_id = %job.id, %reason, "mail job parked: unreadable");
            return queue.mark_failed(&job.id, &reason).await;
        }
    };
    let deadline = tokio::time::Instant::now() + DELIVERY_DEADLINE;
    // On the last attempt a transient failure is parked with its reason,
    // in the ledger too (the audit trail's `mail_failed`), as the SES
    // worker does on a message's last receive; else the ledger would say
    // `retry` for a job nobody retries.
    let attempt = job.attempts.saturating_add(1);
    let redelivery = if attempt >= MAX_DELIVERY_ATTEMPTS {
        Redelivery::LastReceive { receives: attempt }
    } else {
        Redelivery::Follows
    };
    match deliverer.deliver_with(&env, deadline, redelivery).await {
        // The ledger's sent mark acknowledged the job in the same commit.
        Outcome::Sent { recorded: true, .. } => Ok(()),
        // Written, but the sent mark was not: the row still ends here, or
        // the next drain after the claim's lease would write it again.
        Outcome::Sent { recorded: false, .. } => queue.mark_sent(&job.id).await,
        Outcome::AlreadySent => queue.mark_sent(&job.id).await,
        // Recorded `failed` in the ledger (the audit trail's `mail_failed`);
        // the row ends failed with the same reason, and is never retried.
        Outcome::Park { reason } | Outcome::Expired { reason } => queue.mark_failed(&job.id, &reason).await,
        Outcome::Retry { reason } => {
            let state = queue.record_attempt_failure(&job.id, &reason, MAX_DELIVERY_ATTEMPTS).await?;
            tracing::warn!(mail_id = %job.id, kind = env.job.kind(), %reason, attempt = job.attempts + 1, state, "mail delivery failed");
            Ok(())
        }
        // A claim left by a run of this process that died mid-delivery:
        // the mail may have been written, and the ledger keeps it from a
        // second write until the lease ends. Waiting for that is not a
        // failed attempt (counted, the job was parked after ~30 s of
        // backoff, well inside the 5-minute lease: never delivered).
        Outcome::Busy { lease_until } => {
            tracing::info!(mail_id = %job.id, lease_until, "mail job claimed by an earlier run; waiting for its lease");
            queue.defer(&job.id, lease_until).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::mail_queue::{FAILED, PENDING, SENT};
    use super::super::test_support::{TempDir, store};
    use super::*;
    use crate::clock::FixedClock;
    use crate::domain::{Email, Secret};
    use crate::mail::{MailJob, Renderer};
    use crate::ports::MailQueue;
    use std::path::Path;

    async fn outbox(s: &EmbeddedStore, clock: Arc<FixedClock>, dir: &Path) -> Deliverer {
        let o = Outbox::new(
            dir.to_path_buf(),
            Renderer::new("http://127.0.0.1:3000").unwrap(),
            "latchkey <noreply@latchkey.local>".into(),
        );
        embedded_deliverer(s, o, Renderer::new("http://127.0.0.1:3000").unwrap(), clock).await.unwrap()
    }

    fn job(id: &str) -> MailEnvelope {
        MailEnvelope::new(
            id.into(),
            &Email::parse("carol@example.com").unwrap(),
            1_700_000_000,
            None,
            None,
            MailJob::StandaloneCode { code: Secret::new("271828".into()), expires_minutes: 10 },
        )
    }

    /// A job with no code or link in it: only the age bound ends its life.
    fn notice(id: &str) -> MailEnvelope {
        MailEnvelope::new(
            id.into(),
            &Email::parse("carol@example.com").unwrap(),
            1_700_000_000,
            None,
            None,
            MailJob::SignupAttempt {},
        )
    }

    /// An outbox path with a file where its directory should be: every
    /// write fails until the test removes the file.
    fn blocked_outbox(dir: &TempDir) -> std::path::PathBuf {
        let path = dir.0.join("outbox");
        std::fs::write(&path, b"in the way").unwrap();
        path
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
        let (s, clock) = store();
        let dir = TempDir::new();
        let (q, o) = (s.mail_queue(), outbox(&s, clock.clone(), &dir.0).await);
        q.enqueue(&job("dup1")).await.unwrap();
        q.enqueue(&job("dup1")).await.unwrap();
        assert_eq!(drain(&q, &o).await.unwrap(), 1);
        // Enqueued again after it was sent: still not delivered twice.
        q.enqueue(&job("dup1")).await.unwrap();
        assert_eq!(drain(&q, &o).await.unwrap(), 0);
        assert_eq!(emls(&dir.0), vec!["1700000000-dup1.eml".to_string()]);
        assert_eq!(q.job_state("dup1").await.unwrap(), Some((SENT.to_string(), 1, None)));
    }

    /// A sent job's body held its link or code: it is dropped with the
    /// send; a parked job keeps its body, to be read and sent by hand.
    #[tokio::test]
    async fn a_sent_job_keeps_no_body_and_a_parked_one_does() {
        let (s, clock) = store();
        let dir = TempDir::new();
        let (q, o) = (s.mail_queue(), outbox(&s, clock.clone(), &dir.0).await);
        q.enqueue(&job("sent1")).await.unwrap();
        q.enqueue_raw("parked1", "{not json").await.unwrap();
        assert_eq!(drain(&q, &o).await.unwrap(), 2);
        let body = |id: &'static str| {
            s.db().tx(move |tx| {
                Ok(tx.query_row("SELECT body FROM mail_jobs WHERE id = ?1", [id], |r| r.get::<_, String>(0))?)
            })
        };
        assert_eq!(body("sent1").await.unwrap(), "");
        assert_eq!(body("parked1").await.unwrap(), "{not json");
        // Enqueued again after its send: still not sent twice.
        q.enqueue(&job("sent1")).await.unwrap();
        assert_eq!(drain(&q, &o).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn poison_jobs_are_parked_with_a_reason_and_do_not_block_others() {
        let (s, clock) = store();
        let dir = TempDir::new();
        let (q, o) = (s.mail_queue(), outbox(&s, clock.clone(), &dir.0).await);
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
        let blocked = blocked_outbox(&dir);
        let (q, o) = (s.mail_queue(), outbox(&s, clock.clone(), &blocked).await);
        // A notice: the backoff below outlasts a code's 10 minutes.
        q.enqueue(&notice("retry")).await.unwrap();
        for attempt in 1..=MAX_DELIVERY_ATTEMPTS {
            assert_eq!(drain(&q, &o).await.unwrap(), 1, "attempt {attempt}");
            let (state, attempts, reason) = q.job_state("retry").await.unwrap().unwrap();
            assert_eq!(attempts, attempt);
            assert!(reason.is_some());
            assert_eq!(state, if attempt < MAX_DELIVERY_ATTEMPTS { PENDING } else { FAILED });
            // The ledger says `retry` until the last attempt.
            let ledger = o.ledger().entry("retry").await.unwrap().unwrap().state;
            assert_eq!(ledger, if attempt < MAX_DELIVERY_ATTEMPTS { "retry" } else { "failed" }, "attempt {attempt}");
            // Backing off: not retried at once.
            assert_eq!(drain(&q, &o).await.unwrap(), 0);
            clock.advance(300);
        }
        assert_eq!(q.pending_count().await.unwrap(), 0);
        // The last one is failed in the ledger (the audit trail's
        // `mail_failed`) with the reason the row ends with.
        let (_, _, reason) = q.job_state("retry").await.unwrap().unwrap();
        let e = o.ledger().entry("retry").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), &e.reason), ("failed", &reason));
        assert!(
            reason.as_deref().is_some_and(|r| r.starts_with("transient failures exhausted after 5 ")),
            "{reason:?}"
        );
    }

    /// A run that died mid-delivery left the job pending and its claim in
    /// the ledger: the job waits out the lease, uncounted, and is then
    /// delivered once (it was parked after five counted tries, all inside
    /// the lease: never delivered).
    #[tokio::test]
    async fn a_job_claimed_by_a_run_that_died_waits_for_its_lease_and_is_delivered() {
        use crate::mail::delivery::{Claim, JobMeta, LEASE_SECS};
        let (s, clock) = store();
        let dir = TempDir::new();
        let (q, o) = (s.mail_queue(), outbox(&s, clock.clone(), &dir.0).await);
        q.enqueue(&job("died")).await.unwrap();
        let t0 = clock.now();
        assert_eq!(o.ledger().claim(&JobMeta::of(&job("died")), t0, LEASE_SECS).await.unwrap(), Claim::Claimed);
        assert_eq!(drain(&q, &o).await.unwrap(), 1);
        assert_eq!(q.job_state("died").await.unwrap(), Some((PENDING.to_string(), 0, None)), "not an attempt");
        for step in [2, 4, 8, 16, 32, 64, 128] {
            clock.advance(step);
            assert_eq!(drain(&q, &o).await.unwrap(), 0, "waiting for the lease at +{}", clock.now() - t0);
        }
        clock.set(t0 + LEASE_SECS);
        assert_eq!(drain(&q, &o).await.unwrap(), 1);
        assert_eq!(q.job_state("died").await.unwrap().unwrap().0, SENT);
        assert_eq!(emls(&dir.0), vec!["1700000000-died.eml".to_string()]);
    }

    /// A job still queued when its code dies (the outbox was blocked until
    /// then) is failed with the reason, in the queue and in the ledger, and
    /// never written; its ledger record makes the audit trail's
    /// `mail_failed`.
    #[tokio::test]
    async fn a_job_whose_code_expired_while_queued_is_failed_unwritten() {
        let (s, clock) = store();
        let dir = TempDir::new();
        let target = blocked_outbox(&dir);
        let (q, o) = (s.mail_queue(), outbox(&s, clock.clone(), &target).await);
        q.enqueue(&job("late")).await.unwrap();
        assert_eq!(drain(&q, &o).await.unwrap(), 1);
        assert_eq!(q.job_state("late").await.unwrap().unwrap().0, PENDING);
        std::fs::remove_file(&target).unwrap();
        // Ten minutes after it was queued, the code is dead.
        clock.set(job("late").content_expires_at().unwrap());
        assert_eq!(drain(&q, &o).await.unwrap(), 1);
        let (state, _, reason) = q.job_state("late").await.unwrap().unwrap();
        assert_eq!(state, FAILED);
        assert!(reason.as_deref().is_some_and(|r| r.starts_with("expired: ")), "{reason:?}");
        let e = o.ledger().entry("late").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.reason), ("failed", reason));
        assert!(emls(&target).is_empty());
        // Not retried later either.
        clock.advance(3600);
        assert_eq!(drain(&q, &o).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_retry_that_succeeds_is_sent_once() {
        let (s, clock) = store();
        let dir = TempDir::new();
        let target = blocked_outbox(&dir);
        let (q, o) = (s.mail_queue(), outbox(&s, clock.clone(), &target).await);
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
        let (s, clock) = store();
        let dir = TempDir::new();
        let q = s.mail_queue();
        // The timer never fires within the test: only the enqueue can wake it.
        let consumer = spawn_with_idle_wake(
            q.clone(),
            Arc::new(outbox(&s, clock.clone(), &dir.0).await),
            Duration::from_secs(3600),
        );
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
        assert!(consumer.stop(Duration::from_secs(10)).await, "stops by itself when idle");
        assert_eq!(emls(&dir.0), vec!["1700000000-woken.eml".to_string()]);
    }

    /// The outbox, with each send held, once it has begun (and said so),
    /// until the test releases it.
    struct HeldOutbox {
        inner: Outbox,
        started: tokio::sync::Notify,
        release: tokio::sync::Notify,
    }

    #[async_trait::async_trait]
    impl crate::mail::delivery::Mailer for HeldOutbox {
        async fn send(
            &self,
            env: &MailEnvelope,
            mail: &crate::mail::RenderedMail,
        ) -> Result<String, crate::mail::delivery::SendError> {
            self.started.notify_one();
            self.release.notified().await;
            self.inner.send(env, mail).await
        }
    }

    /// Asked to stop while it writes a mail, the consumer finishes that
    /// delivery (the file, the ledger's sent mark, the job acknowledged)
    /// and takes no other job: the next stays queued for the next run.
    #[tokio::test]
    async fn a_stop_during_a_delivery_lets_it_finish_and_takes_no_other() {
        use super::super::mail_queue::PENDING;
        use crate::mail::delivery::{MailLedger, SendRateLimiter};
        let (s, clock) = store();
        let dir = TempDir::new();
        let q = s.mail_queue();
        let renderer = || Renderer::new("http://127.0.0.1:3000").unwrap();
        let mailer = Arc::new(HeldOutbox {
            inner: Outbox::new(dir.0.clone(), renderer(), "latchkey <noreply@latchkey.local>".into()),
            started: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
        });
        let ledger = Arc::new(EmbeddedMailLedger::open(&s).await.unwrap());
        let deliverer =
            Deliverer::new(renderer(), ledger.clone(), mailer.clone(), Arc::new(SendRateLimiter::unlimited()), clock)
                .with_retry(EMBEDDED_RETRY);
        q.enqueue(&job("first")).await.unwrap();
        q.enqueue(&job("second")).await.unwrap();
        let consumer = spawn_with_idle_wake(q.clone(), Arc::new(deliverer), Duration::from_secs(3600));
        tokio::time::timeout(Duration::from_secs(10), mailer.started.notified()).await.expect("a send began");
        // The stop is asked first (its first poll), then the send let go.
        let (stopped, ()) = tokio::join!(biased; consumer.stop(Duration::from_secs(10)), async {
            tokio::task::yield_now().await;
            mailer.release.notify_one();
        });
        assert!(stopped, "it stopped by itself");
        assert_eq!(emls(&dir.0), vec!["1700000000-first.eml".to_string()]);
        assert_eq!(q.job_state("first").await.unwrap().unwrap().0, SENT);
        assert_eq!(ledger.entry("first").await.unwrap().unwrap().state, "sent");
        let (state, attempts, _) = q.job_state("second").await.unwrap().unwrap();
        assert_eq!((state.as_str(), attempts), (PENDING, 0), "not taken");
        assert!(ledger.entry("second").await.unwrap().is_none());
    }

    /// A mail written whose sent mark the ledger refuses (a trigger stands
    /// in for a full disk) still ends its queue row: nothing takes it
    /// again, after the claim's lease either.
    #[tokio::test]
    async fn a_written_mail_whose_sent_mark_fails_is_not_written_again() {
        use crate::mail::delivery::LEASE_SECS;
        let (s, clock) = store();
        let dir = TempDir::new();
        let (q, o) = (s.mail_queue(), outbox(&s, clock.clone(), &dir.0).await);
        s.db()
            .tx(|tx| {
                tx.execute_batch(
                    "CREATE TRIGGER refuse_sent BEFORE UPDATE ON mail_ledger WHEN NEW.state = 'sent' \
                     BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
                )?;
                Ok(())
            })
            .await
            .unwrap();
        q.enqueue(&job("unmarked")).await.unwrap();
        assert_eq!(drain(&q, &o).await.unwrap(), 1);
        assert_eq!(emls(&dir.0), vec!["1700000000-unmarked.eml".to_string()]);
        assert_eq!(
            o.ledger().entry("unmarked").await.unwrap().unwrap().state,
            "sending",
            "the trigger let the mark through"
        );
        assert_eq!(q.job_state("unmarked").await.unwrap().unwrap().0, SENT);
        clock.advance(LEASE_SECS + 1);
        assert_eq!(drain(&q, &o).await.unwrap(), 0);
        assert_eq!(emls(&dir.0).len(), 1, "written again after the lease");
    }

    #[tokio::test]
    async fn the_ledger_stops_a_second_write_of_a_sent_job() {
        let (s, clock) = store();
        let dir = TempDir::new();
        let (q, o) = (s.mail_queue(), outbox(&s, clock.clone(), &dir.0).await);
        q.enqueue(&job("once")).await.unwrap();
        assert_eq!(drain(&q, &o).await.unwrap(), 1);
        assert_eq!(emls(&dir.0), vec!["1700000000-once.eml".to_string()]);
        std::fs::remove_file(dir.0.join("1700000000-once.eml")).unwrap();
        // The same job reaches the deliverer again (a second consumer, a
        // re-enqueue after the queue row was lost): nothing is written.
        assert_eq!(
            o.deliver(&job("once"), tokio::time::Instant::now() + Duration::from_secs(5)).await,
            Outcome::AlreadySent
        );
        assert!(emls(&dir.0).is_empty());
        let e = o.ledger().entry("once").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.provider_id.as_deref()), ("sent", Some("1700000000-once.eml")));
    }
}
