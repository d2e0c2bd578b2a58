//! Delivering one mail job, the same way on every backend: render it, claim
//! it in the `MailLedger` (so a job SQS hands over twice is sent once), send
//! it through a `Mailer` at no more than the configured rate, retrying
//! transient failures with exponential backoff and jitter inside the
//! caller's deadline, and record the outcome. The Lambda worker, the local
//! SQS poller and the embedded consumer all call [`Deliverer::deliver`]; they
//! differ only in what they do with the [`Outcome`] (report a batch item
//! failure, move a message to the DLQ, back off a `mail_jobs` row).
//!
//! The code or token in a job reaches the mailer and nothing else: not a
//! log line, not the ledger (which records kind, recipient, state, attempts
//! and a failure reason), not an error.

mod limiter;

pub use limiter::SendRateLimiter;

use super::{MailEnvelope, RenderedMail, Renderer};
use crate::clock::{Clock, Timestamp};
use crate::domain::Email;
use crate::ports::StoreResult;
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Why a send failed, and whether sending again could help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Throttling, 5xx, a timeout, a dropped connection: try again later.
    #[error("transient: {0}")]
    Transient(String),
    /// The provider refused this mail for good (rejected, bad address,
    /// sender not verified, account paused): park it with the reason.
    #[error("permanent: {reason}")]
    Permanent { reason: String },
}

/// A mail transport: SES on AWS, the `.eml` outbox locally.
#[async_trait]
pub trait Mailer: Send + Sync {
    /// Sends `mail` (rendered from `env`) once; returns the transport's id
    /// for it (the SES MessageId, the outbox file name). Not idempotent by
    /// itself: deduplication is the ledger's job. The error's text must not
    /// contain the mail's body.
    async fn send(&self, env: &MailEnvelope, mail: &RenderedMail) -> Result<String, SendError>;
}

/// What the ledger knows about a job, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMeta {
    pub id: String,
    pub kind: &'static str,
    pub to: String,
    /// The audit subject (see [`MailEnvelope::subject`]).
    pub subject: Option<String>,
}

impl JobMeta {
    pub fn of(env: &MailEnvelope) -> Self {
        JobMeta { id: env.id.clone(), kind: env.job.kind(), to: env.to.clone(), subject: env.subject.clone() }
    }
}

/// The ledger states, as stored.
pub mod ledger_state {
    /// Claimed by a worker until its lease ends.
    pub const SENDING: &str = "sending";
    pub const SENT: &str = "sent";
    /// Parked for good (permanent failure); a later delivery, e.g. a DLQ
    /// redrive after a fix, may claim it again.
    pub const FAILED: &str = "failed";
    /// Transient failures ran out this time; the queue will bring it back.
    pub const RETRY: &str = "retry";

    /// The states the audit trail has an event for (`MailDelivered`,
    /// `MailFailed`). A change to any other state (a claim, a retry) is no
    /// audit event, so the embedded change feed does not carry it and the
    /// Terraform ledger stream mapping filters it out before the processor.
    pub const AUDITED: [&str; 2] = [SENT, FAILED];

    /// Whether a record now in `state` goes to the audit trail.
    pub fn audited(state: &str) -> bool {
        AUDITED.contains(&state)
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This caller may send now; nobody else may until `mark_*`, `release`
    /// or the lease's end.
    Claimed,
    /// Already sent: do nothing.
    AlreadySent,
    /// Another worker holds a live lease until this time.
    Busy { lease_until: Timestamp },
}

/// One job's record, as admins and the audit trail see it. Its serde form
/// is the embedded change feed's image and decodes a DynamoDB stream image
/// (where the id lives only in the `pk`, so it may be absent).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LedgerEntry {
    #[serde(default)]
    pub id: String,
    pub kind: String,
    pub to: String,
    pub state: String,
    /// Claims so far (each delivery that tried to send).
    #[serde(default)]
    pub attempts: u32,
    pub reason: Option<String>,
    pub provider_id: Option<String>,
    pub lease_until: Option<Timestamp>,
    #[serde(default)]
    pub updated_at: Timestamp,
    /// The audit subject; `None` for mail with no account behind it.
    #[serde(default)]
    pub subject: Option<String>,
}

/// Mail ledger records are kept this long (then swept by TTL).
pub const LEDGER_TTL_SECS: i64 = 7 * 24 * 3600;
/// A claim holds a job this long; a worker that dies mid-send gives it back
/// when the lease ends. Longer than any deadline a delivery runs under.
pub const LEASE_SECS: i64 = 300;

/// The idempotency record of mail delivery, keyed by job id, one item per
/// job, kept `LEDGER_TTL_SECS`.
#[async_trait]
pub trait MailLedger: Send + Sync {
    /// Atomically claims `job` for sending until `now + lease_secs` and
    /// counts an attempt, if there is no record, or the record is not `sent`
    /// and holds no live lease (`lease_until > now`). Otherwise writes
    /// nothing and answers `AlreadySent` or `Busy`. Of any number of
    /// concurrent claims of one id, at most one gets `Claimed`.
    async fn claim(&self, job: &JobMeta, now: Timestamp, lease_secs: i64) -> StoreResult<Claim>;

    /// Records the send: state `sent`, the provider's id, lease dropped.
    async fn mark_sent(&self, id: &str, provider_id: &str, now: Timestamp) -> StoreResult<()>;

    /// Parks the job with `reason` (creating the record if there is none).
    /// A `sent` record is left alone.
    async fn mark_failed(&self, job: &JobMeta, reason: &str, now: Timestamp) -> StoreResult<()>;

    /// Gives a claimed job back after transient failures: state `retry`
    /// with `reason`, lease dropped so the next delivery claims it at once.
    /// Only a `sending` record changes.
    async fn release(&self, id: &str, reason: &str, now: Timestamp) -> StoreResult<()>;

    /// The record of `id`; `None` if there is none.
    async fn entry(&self, id: &str) -> StoreResult<Option<LedgerEntry>>;
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent {
        provider_id: String,
    },
    /// The ledger says it went out before: nothing was sent.
    AlreadySent,
    /// Will never succeed as it is: park it with the reason (DLQ, `failed`).
    Park {
        reason: String,
    },
    /// Transient failures used up the time: let the queue bring it back.
    Retry {
        reason: String,
    },
}

/// The send retry schedule inside one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Sends at most `1 + max_retries` times per delivery.
    pub max_retries: usize,
    /// Time kept back from the deadline for recording the outcome.
    pub reserve: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_retries: 6,
            reserve: Duration::from_millis(500),
        }
    }
}

/// Everything one delivery needs. Build it once per process and share it.
pub struct Deliverer {
    renderer: Renderer,
    ledger: Arc<dyn MailLedger>,
    mailer: Arc<dyn Mailer>,
    limiter: Arc<SendRateLimiter>,
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer").field("retry", &self.retry).finish_non_exhaustive()
    }
}

impl Deliverer {
    pub fn new(
        renderer: Renderer,
        ledger: Arc<dyn MailLedger>,
        mailer: Arc<dyn Mailer>,
        limiter: Arc<SendRateLimiter>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Deliverer { renderer, ledger, mailer, limiter, clock, retry: RetryPolicy::default() }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn ledger(&self) -> &Arc<dyn MailLedger> {
        &self.ledger
    }

    pub fn limiter(&self) -> &Arc<SendRateLimiter> {
        &self.limiter
    }

    /// Delivers `env` at most once, finishing before `deadline`: renders,
    /// claims, sends (retrying transient failures with backoff and jitter
    /// while time remains), records the outcome. Never panics on bad input
    /// and never logs the job's secret.
    pub async fn deliver(&self, env: &MailEnvelope, deadline: Instant) -> Outcome {
        let meta = JobMeta::of(env);
        // The queue is a trust boundary of its own: re-check what reaches a
        // header before anything is claimed.
        // (As stored: an account's address from before format characters
        // were refused at input still gets its mail.)
        if Email::parse_stored(&env.to).is_err() {
            return self.park(&meta, "recipient is not a valid email address".into()).await;
        }
        let mail = match self.renderer.render(env) {
            Ok(m) => m,
            Err(reason) => return self.park(&meta, reason).await,
        };
        match self.ledger.claim(&meta, self.clock.now(), LEASE_SECS).await {
            Ok(Claim::Claimed) => {}
            Ok(Claim::AlreadySent) => {
                tracing::info!(mail_id = %meta.id, kind = meta.kind, "mail already sent; duplicate delivery ignored");
                return Outcome::AlreadySent;
            }
            Ok(Claim::Busy { lease_until }) => {
                return Outcome::Retry { reason: format!("another worker holds the job until {lease_until}") };
            }
            Err(e) => return Outcome::Retry { reason: format!("mail ledger unavailable: {e}") },
        }
        match self.send_with_retries(env, &mail, deadline).await {
            Ok(provider_id) => {
                self.record_sent(&meta, &provider_id).await;
                tracing::info!(mail_id = %meta.id, kind = meta.kind, %provider_id, "mail sent");
                Outcome::Sent { provider_id }
            }
            Err(SendError::Permanent { reason }) => self.park(&meta, reason).await,
            Err(SendError::Transient(reason)) => {
                tracing::warn!(mail_id = %meta.id, kind = meta.kind, %reason, "mail not sent; will be retried");
                if let Err(e) = self.ledger.release(&meta.id, &reason, self.clock.now()).await {
                    // The lease runs out by itself; the retry waits for it.
                    tracing::warn!(mail_id = %meta.id, error = %e, "could not release the mail claim");
                }
                Outcome::Retry { reason }
            }
        }
    }

    async fn send_with_retries(
        &self,
        env: &MailEnvelope,
        mail: &RenderedMail,
        deadline: Instant,
    ) -> Result<String, SendError> {
        let stop_at = deadline.checked_sub(self.retry.reserve).unwrap_or(deadline);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.min_delay)
            .with_max_delay(self.retry.max_delay)
            .with_max_times(self.retry.max_retries)
            .with_jitter();
        let attempt = || async {
            if !self.limiter.acquire_before(stop_at).await {
                return Err(SendError::Transient("send rate limit: no slot before the deadline".into()));
            }
            let left = stop_at.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.mailer.send(env, mail)).await {
                Ok(result) => result,
                Err(_) => Err(SendError::Transient("send timed out at the deadline".into())),
            }
        };
        attempt
            .retry(backoff)
            .when(|e| matches!(e, SendError::Transient(_)))
            // Never sleep past the deadline: the queue retries what is left.
            .adjust(|_, next| next.filter(|d| Instant::now() + *d < stop_at))
            .notify(|e, after| tracing::debug!(error = %e, ?after, mail_id = %env.id, "retrying mail send"))
            .await
    }

    async fn record_sent(&self, meta: &JobMeta, provider_id: &str) {
        // The mail is out: a lost record would let the lease expire and a
        // redelivery send it again, so try a few times before giving up.
        for attempt in 0..3u32 {
            match self.ledger.mark_sent(&meta.id, provider_id, self.clock.now()).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(mail_id = %meta.id, error = %e, attempt, "could not record a sent mail");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
            }
        }
        tracing::error!(mail_id = %meta.id, "sent mail not recorded; a redelivery after the lease may repeat it");
    }

    async fn park(&self, meta: &JobMeta, reason: String) -> Outcome {
        tracing::error!(mail_id = %meta.id, kind = meta.kind, %reason, "mail job parked");
        match self.ledger.mark_failed(meta, &reason, self.clock.now()).await {
            Ok(()) => Outcome::Park { reason },
            // Parking is an outcome the ledger must show: retry the whole
            // delivery rather than park unrecorded.
            Err(e) => Outcome::Retry { reason: format!("could not record a parked job ({reason}): {e}") },
        }
    }
}

/// A `MailLedger` in memory, for unit tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemoryMailLedger {
    entries: std::sync::Mutex<std::collections::HashMap<String, LedgerEntry>>,
}

impl MemoryMailLedger {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut std::collections::HashMap<String, LedgerEntry>) -> T) -> T {
        f(&mut self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

#[async_trait]
impl MailLedger for MemoryMailLedger {
    async fn claim(&self, job: &JobMeta, now: Timestamp, lease_secs: i64) -> StoreResult<Claim> {
        self.with(|m| {
            if let Some(e) = m.get(&job.id) {
                if e.state == ledger_state::SENT {
                    return Ok(Claim::AlreadySent);
                }
                if let Some(until) = e.lease_until.filter(|u| *u > now) {
                    return Ok(Claim::Busy { lease_until: until });
                }
            }
            let attempts = m.get(&job.id).map_or(0, |e| e.attempts) + 1;
            m.insert(
                job.id.clone(),
                LedgerEntry {
                    id: job.id.clone(),
                    kind: job.kind.into(),
                    to: job.to.clone(),
                    state: ledger_state::SENDING.into(),
                    attempts,
                    reason: None,
                    provider_id: None,
                    lease_until: Some(now + lease_secs),
                    updated_at: now,
                    subject: job.subject.clone(),
                },
            );
            Ok(Claim::Claimed)
        })
    }

    async fn mark_sent(&self, id: &str, provider_id: &str, now: Timestamp) -> StoreResult<()> {
        self.with(|m| {
            if let Some(e) = m.get_mut(id) {
                e.state = ledger_state::SENT.into();
                e.provider_id = Some(provider_id.into());
                e.lease_until = None;
                e.reason = None;
                e.updated_at = now;
            }
        });
        Ok(())
    }

    async fn mark_failed(&self, job: &JobMeta, reason: &str, now: Timestamp) -> StoreResult<()> {
        self.with(|m| {
            let e = m.entry(job.id.clone()).or_insert_with(|| LedgerEntry {
                id: job.id.clone(),
                kind: job.kind.into(),
                to: job.to.clone(),
                state: ledger_state::FAILED.into(),
                attempts: 0,
                reason: None,
                provider_id: None,
                lease_until: None,
                updated_at: now,
                subject: job.subject.clone(),
            });
            if e.state != ledger_state::SENT {
                e.state = ledger_state::FAILED.into();
                e.reason = Some(reason.into());
                e.lease_until = None;
                e.updated_at = now;
            }
        });
        Ok(())
    }

    async fn release(&self, id: &str, reason: &str, now: Timestamp) -> StoreResult<()> {
        self.with(|m| {
            if let Some(e) = m.get_mut(id).filter(|e| e.state == ledger_state::SENDING) {
                e.state = ledger_state::RETRY.into();
                e.reason = Some(reason.into());
                e.lease_until = None;
                e.updated_at = now;
            }
        });
        Ok(())
    }

    async fn entry(&self, id: &str) -> StoreResult<Option<LedgerEntry>> {
        Ok(self.with(|m| m.get(id).cloned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;
    use crate::domain::Secret;
    use crate::mail::MailJob;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// Answers from a script, then succeeds; records every mail it sends.
    #[derive(Default)]
    struct Scripted {
        script: Mutex<VecDeque<SendError>>,
        sent: Mutex<Vec<RenderedMail>>,
        calls: Mutex<u32>,
    }

    impl Scripted {
        fn failing(errors: impl IntoIterator<Item = SendError>) -> Self {
            Scripted { script: Mutex::new(errors.into_iter().collect()), ..Default::default() }
        }
    }

    #[async_trait]
    impl Mailer for Scripted {
        async fn send(&self, _env: &MailEnvelope, mail: &RenderedMail) -> Result<String, SendError> {
            *self.calls.lock().unwrap() += 1;
            if let Some(e) = self.script.lock().unwrap().pop_front() {
                return Err(e);
            }
            self.sent.lock().unwrap().push(mail.clone());
            Ok(format!("m{}", self.sent.lock().unwrap().len()))
        }
    }

    fn env(id: &str) -> MailEnvelope {
        MailEnvelope::new(
            id.into(),
            &Email::parse("dora@example.com").unwrap(),
            1,
            None,
            Some("user-dora".into()),
            MailJob::LoginCode { username: "dora".into(), code: Secret::new("424242".into()), expires_minutes: 5 },
        )
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_retries: 3,
            reserve: Duration::ZERO,
        }
    }

    fn deliverer(mailer: Arc<Scripted>, ledger: Arc<MemoryMailLedger>, clock: Arc<FixedClock>) -> Deliverer {
        Deliverer::new(
            Renderer::new("https://auth.example.com").unwrap(),
            ledger,
            mailer,
            Arc::new(SendRateLimiter::unlimited()),
            clock,
        )
        .with_retry(fast())
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[tokio::test]
    async fn sends_once_however_often_delivered() {
        let (m, l, c) =
            (Arc::new(Scripted::default()), Arc::new(MemoryMailLedger::new()), Arc::new(FixedClock::new(0)));
        let d = deliverer(m.clone(), l.clone(), c);
        assert_eq!(d.deliver(&env("a"), soon()).await, Outcome::Sent { provider_id: "m1".into() });
        assert_eq!(d.deliver(&env("a"), soon()).await, Outcome::AlreadySent);
        assert_eq!(d.deliver(&env("a"), soon()).await, Outcome::AlreadySent);
        assert_eq!(m.sent.lock().unwrap().len(), 1);
        let e = l.entry("a").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.attempts, e.provider_id.as_deref()), (ledger_state::SENT, 1, Some("m1")));
    }

    #[tokio::test]
    async fn transient_then_success_is_one_mail() {
        let m = Arc::new(Scripted::failing([SendError::Transient("429".into()), SendError::Transient("503".into())]));
        let l = Arc::new(MemoryMailLedger::new());
        let d = deliverer(m.clone(), l.clone(), Arc::new(FixedClock::new(0)));
        assert!(matches!(d.deliver(&env("b"), soon()).await, Outcome::Sent { .. }));
        assert_eq!(*m.calls.lock().unwrap(), 3);
        assert_eq!(m.sent.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn transient_exhausted_is_retry_and_the_claim_is_released() {
        let m = Arc::new(Scripted::failing((0..4).map(|_| SendError::Transient("503".into()))));
        let l = Arc::new(MemoryMailLedger::new());
        let d = deliverer(m.clone(), l.clone(), Arc::new(FixedClock::new(0)));
        assert_eq!(d.deliver(&env("c"), soon()).await, Outcome::Retry { reason: "503".into() });
        assert_eq!(*m.calls.lock().unwrap(), 4, "1 + max_retries sends");
        let e = l.entry("c").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.lease_until), (ledger_state::RETRY, None));
        // The redelivery claims it at once and sends.
        assert!(matches!(d.deliver(&env("c"), soon()).await, Outcome::Sent { .. }));
        assert_eq!(l.entry("c").await.unwrap().unwrap().attempts, 2);
    }

    #[tokio::test]
    async fn permanent_is_parked_at_once_with_its_reason() {
        let m = Arc::new(Scripted::failing([SendError::Permanent { reason: "MessageRejected: nope".into() }]));
        let l = Arc::new(MemoryMailLedger::new());
        let d = deliverer(m.clone(), l.clone(), Arc::new(FixedClock::new(0)));
        assert_eq!(d.deliver(&env("d"), soon()).await, Outcome::Park { reason: "MessageRejected: nope".into() });
        assert_eq!(*m.calls.lock().unwrap(), 1);
        let e = l.entry("d").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.reason.as_deref()), (ledger_state::FAILED, Some("MessageRejected: nope")));
        assert!(!format!("{e:?}").contains("424242"), "the code never reaches the ledger");
    }

    #[tokio::test]
    async fn a_bad_recipient_is_parked_without_a_send() {
        let m = Arc::new(Scripted::default());
        let d = deliverer(m.clone(), Arc::new(MemoryMailLedger::new()), Arc::new(FixedClock::new(0)));
        let mut e = env("e");
        e.to = "x@y.z\r\nBcc: eve@example.com".into();
        assert!(matches!(d.deliver(&e, soon()).await, Outcome::Park { .. }));
        assert_eq!(*m.calls.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn a_live_lease_blocks_until_it_ends() {
        let (m, l, c) =
            (Arc::new(Scripted::default()), Arc::new(MemoryMailLedger::new()), Arc::new(FixedClock::new(0)));
        // A worker claimed the job and died before recording anything.
        assert_eq!(l.claim(&JobMeta::of(&env("f")), 0, LEASE_SECS).await.unwrap(), Claim::Claimed);
        let d = deliverer(m.clone(), l.clone(), c.clone());
        assert!(matches!(d.deliver(&env("f"), soon()).await, Outcome::Retry { .. }));
        assert_eq!(m.sent.lock().unwrap().len(), 0);
        c.advance(LEASE_SECS);
        assert!(matches!(d.deliver(&env("f"), soon()).await, Outcome::Sent { .. }));
    }

    #[tokio::test]
    async fn the_deadline_bounds_the_retries() {
        let m = Arc::new(Scripted::failing((0..100).map(|_| SendError::Transient("503".into()))));
        let d = deliverer(m.clone(), Arc::new(MemoryMailLedger::new()), Arc::new(FixedClock::new(0))).with_retry(
            RetryPolicy {
                min_delay: Duration::from_millis(40),
                max_delay: Duration::from_millis(40),
                max_retries: 100,
                reserve: Duration::ZERO,
            },
        );
        let started = Instant::now();
        let out = d.deliver(&env("g"), Instant::now() + Duration::from_millis(200)).await;
        assert!(matches!(out, Outcome::Retry { .. }));
        assert!(started.elapsed() < Duration::from_millis(400));
        let calls = *m.calls.lock().unwrap();
        assert!((2..=8).contains(&calls), "{calls} sends");
    }
}
