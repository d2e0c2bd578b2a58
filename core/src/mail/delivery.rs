//! Delivering one mail job, the same way on every backend: render it, claim
//! it in the `MailLedger` (so a job SQS hands over twice is sent once), send
//! it through a `Mailer` at no more than the configured rate, retrying
//! transient failures with exponential backoff and jitter inside the
//! caller's deadline, and record the outcome. The Lambda worker, the local
//! SQS poller and the embedded consumer all call [`Deliverer::deliver`]; they
//! differ only in what they do with the [`Outcome`] (report a batch item
//! failure, move a message to the DLQ, back off a `mail_jobs` row).
//!
//! A job is sent only while it is worth sending: not once the code or link
//! it carries has expired, and never once it is [`MAX_JOB_AGE_SECS`] old,
//! whatever it carries (a DLQ redrive can bring back jobs days old). Such a
//! job ends as [`Outcome::Expired`], recorded `failed` with the reason.
//!
//! Every step ends by the caller's deadline, the bookkeeping after a send
//! included: a caller that answers its queue in time keeps a mail that went
//! out from being handed over (and sent) again.
//!
//! The code or token in a job reaches the mailer and nothing else: not a
//! log line, not the ledger (which records kind, recipient, state, attempts
//! and a failure reason), not an error.

mod limiter;

pub use limiter::SendRateLimiter;

use super::{MailEnvelope, RenderedMail, Renderer};
use crate::clock::{Clock, Timestamp, rfc3339};
use crate::domain::Email;
use crate::ports::StoreResult;
use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, timeout_at};

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
/// The oldest a job may be (from its `created_at`) and still be sent,
/// whatever it carries: 6 days, a day short of [`LEDGER_TTL_SECS`]. The
/// ledger record that answers "already sent" lives at least
/// `LEDGER_TTL_SECS` past the claim that sent the job (TTL deletes late,
/// never early), and that claim came after the job was queued; a copy of
/// the job delivered later than that (the DLQ keeps a message 14 days, and
/// an operator may redrive it) could find no record and send the mail a
/// second time. The spare day covers skew between the clock that stamped
/// `created_at` (the api's) and the worker's.
pub const MAX_JOB_AGE_SECS: i64 = 6 * 24 * 3600;
const _: () = assert!(MAX_JOB_AGE_SECS < LEDGER_TTL_SECS);

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
    /// A `sent` record is left alone, and so is a live lease the caller does
    /// not hold (`Holding::Nothing`): that delivery may be sending the job
    /// now, and its record is its own to write.
    async fn mark_failed(&self, job: &JobMeta, reason: &str, now: Timestamp, holding: Holding) -> StoreResult<()>;

    /// Gives a claimed job back after transient failures: state `retry`
    /// with `reason`, lease dropped so the next delivery claims it at once.
    /// Only a `sending` record changes.
    async fn release(&self, id: &str, reason: &str, now: Timestamp) -> StoreResult<()>;

    /// The record of `id`; `None` if there is none.
    async fn entry(&self, id: &str) -> StoreResult<Option<LedgerEntry>>;
}

/// Whether the delivery that ends a job holds the job's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// It claimed the job, and its lease is live (a lease outlasts any
    /// delivery's deadline).
    Claim,
    /// It has no claim: it ends the job before claiming it, or after it
    /// gave its claim back or could not take it.
    Nothing,
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent {
        provider_id: String,
        /// The ledger's sent mark was written. When it was not, the claim
        /// holds off a duplicate only until its lease ends: a queue that can
        /// still end the job's own row should (the embedded one does).
        recorded: bool,
    },
    /// The ledger says it went out before: nothing was sent.
    AlreadySent,
    /// Will never succeed as it is: park it with the reason (DLQ, `failed`).
    Park { reason: String },
    /// Not sent, and it never will be: the code or link in it has expired,
    /// or the job is [`MAX_JOB_AGE_SECS`] old. Final, like [`Outcome::Park`]
    /// (`failed` in the ledger with the reason, so a `mail_failed` audit
    /// event), but there is nothing to dead-letter: a redrive could only
    /// refuse it again. The queue drops it.
    Expired { reason: String },
    /// Transient failures used up the time: let the queue bring it back.
    Retry { reason: String },
    /// Another delivery holds the job's claim until `lease_until`: nothing
    /// was tried. Not a failure of this job: a queue that counts attempts
    /// must not count this one, and need not look again before then.
    Busy { lease_until: Timestamp },
}

/// Whether the caller's queue brings a job back after [`Outcome::Retry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// It does: a transient failure is left for a later delivery.
    Follows,
    /// This is the last receive the queue allows (SQS's `maxReceiveCount`;
    /// `receives` so far). A job left for redelivery now would be
    /// dead-lettered by the queue without a reason, and its ledger record
    /// would stay `retry` (no `mail_failed` in the audit trail), so a
    /// transient failure is parked with its reason instead.
    LastReceive { receives: u32 },
}

/// The least time left before the deadline (less the policy's reserve)
/// with which a send is started, or a limiter slot taken. A send cut off
/// by the deadline may have reached the provider already; reported as
/// transient, it would be sent again on the queue's redelivery. With this
/// much time an attempt ends by its own answer or by the SES client's own
/// per-attempt timeout (`aws_calls::SES_ATTEMPT_TIMEOUT`, which is shorter),
/// not by ours; with less, the job is left for a later delivery, like any
/// other "not now".
pub const MIN_SEND_WINDOW: Duration = Duration::from_secs(5);

/// The send retry schedule inside one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Sends at most `1 + max_retries` times per delivery.
    pub max_retries: usize,
    /// Time kept back from the deadline for recording the outcome. No send
    /// starts unless [`MIN_SEND_WINDOW`] remains before `deadline - reserve`.
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

/// Why `env` may no longer be sent at `now` (the reason the ledger and the
/// audit trail get), or `None` while it may. Its code or link stops working
/// at [`MailEnvelope::content_expires_at`]; any job is done at
/// [`MAX_JOB_AGE_SECS`].
pub fn expiry(env: &MailEnvelope, now: Timestamp) -> Option<String> {
    if let Some(at) = env.content_expires_at().filter(|at| now >= *at) {
        return Some(format!(
            "expired: its code or link stopped working at {} ({} s before this delivery); not sent",
            rfc3339(at),
            now.saturating_sub(at)
        ));
    }
    let age = now.saturating_sub(env.created_at);
    (age >= MAX_JOB_AGE_SECS).then(|| {
        format!(
            "expired: queued {age} s ago; no mail is sent {MAX_JOB_AGE_SECS} s or more after it was \
             queued (the mail ledger forgets a job after {LEDGER_TTL_SECS} s); not sent"
        )
    })
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

    /// The clock deliveries are judged by (expiry, leases).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Delivers `env` at most once, finishing before `deadline`: renders,
    /// claims, refuses it if it has expired (see [`expiry`]; by the
    /// deliverer's clock), sends (retrying transient failures with backoff
    /// and jitter while time remains), records the outcome. Never panics on bad input
    /// and never logs the job's secret. The queue is taken to bring the job
    /// back after a [`Outcome::Retry`].
    pub async fn deliver(&self, env: &MailEnvelope, deadline: Instant) -> Outcome {
        self.deliver_with(env, deadline, Redelivery::Follows).await
    }

    /// As [`Deliverer::deliver`], told whether the queue brings the job back:
    /// on its last receive a transient failure is parked (`failed` in the
    /// ledger, with the reason) rather than left for a redelivery that will
    /// not come. A job another worker holds is not: see below.
    pub async fn deliver_with(&self, env: &MailEnvelope, deadline: Instant, redelivery: Redelivery) -> Outcome {
        let meta = JobMeta::of(env);
        match (self.attempt(env, &meta, deadline).await, redelivery) {
            (Attempt::Done(outcome), _) => outcome,
            // Not parked even on the last receive: the lease's holder is
            // sending the job now and owns its record; a `failed` written
            // under its claim would record a failure for mail that may go
            // out a moment later. Nor is it lost: left unhandled, SQS
            // dead-letters the message itself, from where a redrive brings
            // it back and the ledger answers "already sent" if the holder
            // sent it. (On AWS the queue's receives outlast a lease, see
            // terraform's worker_timeout_seconds, so a dead worker's claim
            // has ended by the last receive.)
            (Attempt::Busy { lease_until }, _) => Outcome::Busy { lease_until },
            (Attempt::NotNow { reason, .. }, Redelivery::Follows) => Outcome::Retry { reason },
            (Attempt::NotNow { reason, holding }, Redelivery::LastReceive { receives }) => {
                self.give_up(
                    &meta,
                    format!("transient failures exhausted after {receives} receives: {reason}"),
                    holding,
                    deadline,
                )
                .await
            }
        }
    }

    async fn attempt(&self, env: &MailEnvelope, meta: &JobMeta, deadline: Instant) -> Attempt {
        // The queue is a trust boundary of its own: re-check what reaches a
        // header before anything is claimed.
        // (As stored: an account's address from before format characters
        // were refused at input still gets its mail.)
        if Email::parse_stored(&env.to).is_err() {
            return self.park(meta, "recipient is not a valid email address".into(), Holding::Nothing, deadline).await;
        }
        let mail = match self.renderer.render(env) {
            Ok(m) => m,
            Err(reason) => return self.park(meta, reason, Holding::Nothing, deadline).await,
        };
        // Waited for only until the last moment a send may start: a claim
        // answered later could send nothing, and the time after it is left
        // for recording what became of the job (on its last receive, the
        // park and the dead letter's reason) instead of running out in a
        // hung call. With that moment already past, until the deadline as
        // before: no send starts, but the claim's answer may still be
        // "already sent" or "busy", and one cut off at once could land
        // (the embedded ledger's runs on a blocking thread) and hold the
        // job for a lease.
        let claim_by = self.latest_send_start(deadline).filter(|t| *t > Instant::now()).unwrap_or(deadline);
        match timeout_at(claim_by, self.ledger.claim(meta, self.clock.now(), LEASE_SECS)).await {
            Ok(Ok(Claim::Claimed)) => {}
            Ok(Ok(Claim::AlreadySent)) => {
                tracing::info!(mail_id = %meta.id, kind = meta.kind, "mail already sent; duplicate delivery ignored");
                return Attempt::Done(Outcome::AlreadySent);
            }
            Ok(Ok(Claim::Busy { lease_until })) => return Attempt::Busy { lease_until },
            Ok(Err(e)) => {
                return Attempt::NotNow { reason: format!("mail ledger unavailable: {e}"), holding: Holding::Nothing };
            }
            // The claim may still land; its lease then runs out by itself.
            Err(_) => {
                return Attempt::NotNow {
                    reason: "mail ledger did not answer the claim in time to send before the deadline".into(),
                    holding: Holding::Nothing,
                };
            }
        }
        // Under the claim, not before it: a copy of a job that went out is
        // still "already sent", and a job another worker holds may be going
        // out right now (its record is that worker's to write). A claim of
        // a job whose record the TTL swept finds nothing, and is refused
        // here: the age bound keeps such a job from being sent again.
        if let Some(reason) = expiry(env, self.clock.now()) {
            return self.expire(meta, reason, deadline).await;
        }
        match self.send_with_retries(env, &mail, deadline).await {
            Ok(provider_id) => {
                let recorded = self.record_sent(meta, &provider_id, deadline).await;
                tracing::info!(mail_id = %meta.id, kind = meta.kind, %provider_id, "mail sent");
                Attempt::Done(Outcome::Sent { provider_id, recorded })
            }
            Err(Unsent::Expired(reason)) => self.expire(meta, reason, deadline).await,
            Err(Unsent::Failed(SendError::Permanent { reason })) => {
                self.park(meta, reason, Holding::Claim, deadline).await
            }
            Err(Unsent::Failed(SendError::Transient(reason))) => {
                tracing::warn!(mail_id = %meta.id, kind = meta.kind, %reason, "mail not sent; will be retried");
                // By the reserve, which is kept for recording the outcome
                // (on the last receive, the park and its dead letter).
                let release = self.ledger.release(&meta.id, &reason, self.clock.now());
                let holding = match timeout_at(self.before_reserve(deadline), release).await {
                    Ok(Ok(())) => Holding::Nothing,
                    // The lease runs out by itself; the retry waits for it.
                    // Still this delivery's: on the last receive, it parks
                    // the job under it.
                    Ok(Err(e)) => {
                        tracing::warn!(mail_id = %meta.id, error = %e, "could not release the mail claim");
                        Holding::Claim
                    }
                    // It may still land, and a duplicate then claim the job:
                    // this delivery does not write over a claim it may no
                    // longer hold.
                    Err(_) => {
                        tracing::warn!(mail_id = %meta.id, "mail claim not released before the deadline");
                        Holding::Nothing
                    }
                };
                Attempt::NotNow { reason, holding }
            }
        }
    }

    /// `deadline` less the policy's reserve (the time kept for recording
    /// an outcome); `deadline` itself if it is nearer than that.
    fn before_reserve(&self, deadline: Instant) -> Instant {
        deadline.checked_sub(self.retry.reserve).unwrap_or(deadline)
    }

    /// The last moment a send may start before `deadline`: see
    /// [`MIN_SEND_WINDOW`] and [`RetryPolicy::reserve`].
    fn latest_send_start(&self, deadline: Instant) -> Option<Instant> {
        deadline.checked_sub(self.retry.reserve)?.checked_sub(MIN_SEND_WINDOW)
    }

    async fn send_with_retries(
        &self,
        env: &MailEnvelope,
        mail: &RenderedMail,
        deadline: Instant,
    ) -> Result<String, Unsent> {
        let stop_at = self.before_reserve(deadline);
        let latest_start = self.latest_send_start(deadline);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.min_delay)
            .with_max_delay(self.retry.max_delay)
            .with_max_times(self.retry.max_retries)
            .with_jitter();
        let attempt = || async {
            let Some(latest_start) = latest_start.filter(|t| Instant::now() <= *t) else {
                return Err(Unsent::transient("too little time left to start a send before the deadline"));
            };
            if !self.limiter.acquire_before(latest_start).await {
                return Err(Unsent::transient("send rate limit: no slot in time to send before the deadline"));
            }
            // The wait for a slot, and the retries before it, can outlast
            // the code or link: checked at the last moment before each send.
            if let Some(reason) = expiry(env, self.clock.now()) {
                return Err(Unsent::Expired(reason));
            }
            // At least MIN_SEND_WINDOW: this cuts off only a send that hangs
            // past the mailer's own timeout.
            let left = stop_at.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.mailer.send(env, mail)).await {
                Ok(result) => result.map_err(Unsent::Failed),
                Err(_) => Err(Unsent::transient("send timed out at the deadline")),
            }
        };
        attempt
            .retry(backoff)
            .when(|e| matches!(e, Unsent::Failed(SendError::Transient(_))))
            // Never sleep into the last MIN_SEND_WINDOW: the attempt after
            // the sleep could not start. The queue retries what is left.
            .adjust(|_, next| next.filter(|d| latest_start.is_some_and(|latest| Instant::now() + *d <= latest)))
            .notify(|e, after| tracing::debug!(error = %e, ?after, mail_id = %env.id, "retrying mail send"))
            .await
    }

    /// Records a send, by `deadline`. The mail is out: a lost record would
    /// let the lease end and a redelivery send it again, so it is tried a
    /// few times. But not past the deadline: a caller that answers its
    /// queue late has the message (sent or not) handed over again, which a
    /// missing record cannot stop once the lease ends. When the record
    /// cannot land in time the delivery is still reported as sent, so the
    /// queue deletes the message and does not redeliver it; the claim stays
    /// `sending` until its lease (LEASE_SECS, longer than any deadline) ends,
    /// and a duplicate of the message within it is answered "busy" and
    /// not sent. Only a duplicate after the lease (SQS delivers at least
    /// once) could send the mail a second time; the error log says so.
    /// Returns whether the mark was written.
    async fn record_sent(&self, meta: &JobMeta, provider_id: &str, deadline: Instant) -> bool {
        let record = async {
            for attempt in 0..3u32 {
                match self.ledger.mark_sent(&meta.id, provider_id, self.clock.now()).await {
                    Ok(()) => return true,
                    Err(e) => {
                        tracing::warn!(mail_id = %meta.id, error = %e, attempt, "could not record a sent mail");
                        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                    }
                }
            }
            false
        };
        let recorded = matches!(timeout_at(deadline, record).await, Ok(true));
        if !recorded {
            tracing::error!(
                mail_id = %meta.id,
                "sent mail not recorded; its claim holds off a duplicate until the lease ends, after which one may repeat it"
            );
        }
        recorded
    }

    async fn park(&self, meta: &JobMeta, reason: String, holding: Holding, deadline: Instant) -> Attempt {
        tracing::error!(mail_id = %meta.id, kind = meta.kind, %reason, "mail job parked");
        match self.record_failed(meta, &reason, holding, self.before_reserve(deadline)).await {
            Ok(()) => Attempt::Done(Outcome::Park { reason }),
            // Parking is an outcome the ledger must show: retry the whole
            // delivery rather than park unrecorded.
            Err(why) => Attempt::NotNow { reason: format!("could not record a parked job ({reason}): {why}"), holding },
        }
    }

    /// Ends a claimed job that may no longer be sent: `failed` with the
    /// reason, as a parked job (the audit trail's `mail_failed` comes from
    /// that record, so when it cannot be written in time the delivery is
    /// retried instead, as a park is).
    async fn expire(&self, meta: &JobMeta, reason: String, deadline: Instant) -> Attempt {
        tracing::warn!(mail_id = %meta.id, kind = meta.kind, %reason, "mail job expired; not sent");
        match self.record_failed(meta, &reason, Holding::Claim, self.before_reserve(deadline)).await {
            Ok(()) => Attempt::Done(Outcome::Expired { reason }),
            Err(why) => Attempt::NotNow {
                reason: format!("could not record an expired job ({reason}): {why}"),
                holding: Holding::Claim,
            },
        }
    }

    /// Parks a job the queue will not bring back. Parked even when the
    /// ledger cannot record it: the queue would dead-letter it anyway, and
    /// this way the dead letter carries the reason. The record is written
    /// by the policy's reserve, which is left for the caller's dead-letter
    /// copy. Under this delivery's claim if it still holds it (its release
    /// or its record did not land); else without one (it was given back, or
    /// could not be taken), so a claim another delivery took meanwhile keeps
    /// its record, and a redrive of the dead letter then finds the job
    /// "already sent" if that delivery sent it.
    async fn give_up(&self, meta: &JobMeta, reason: String, holding: Holding, deadline: Instant) -> Outcome {
        tracing::error!(mail_id = %meta.id, kind = meta.kind, %reason, "mail job parked on its last receive");
        if let Err(why) = self.record_failed(meta, &reason, holding, self.before_reserve(deadline)).await {
            tracing::error!(mail_id = %meta.id, error = %why, "parked job not recorded in the mail ledger");
        }
        Outcome::Park { reason }
    }

    /// Marks the job `failed` with `reason` in the ledger, by `deadline`;
    /// why it could not be, if it could not.
    async fn record_failed(
        &self,
        meta: &JobMeta,
        reason: &str,
        holding: Holding,
        deadline: Instant,
    ) -> Result<(), String> {
        match timeout_at(deadline, self.ledger.mark_failed(meta, reason, self.clock.now(), holding)).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("no answer from the mail ledger before the deadline".into()),
        }
    }
}

/// Why `send_with_retries` sent nothing.
#[derive(Debug, thiserror::Error)]
enum Unsent {
    #[error(transparent)]
    Failed(SendError),
    /// The code or link stopped working (or the job grew too old) while the
    /// send waited for a rate-limit slot or a retry.
    #[error("{0}")]
    Expired(String),
}

impl Unsent {
    fn transient(reason: &str) -> Self {
        Unsent::Failed(SendError::Transient(reason.into()))
    }
}

/// How one try at a job ended, before the caller's redelivery is weighed.
enum Attempt {
    Done(Outcome),
    /// Another worker's live claim.
    Busy {
        lease_until: Timestamp,
    },
    /// Transient: nothing was sent, and a later delivery may succeed.
    NotNow {
        reason: String,
        /// Whether this delivery still holds the job's claim.
        holding: Holding,
    },
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

    async fn mark_failed(&self, job: &JobMeta, reason: &str, now: Timestamp, holding: Holding) -> StoreResult<()> {
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
            let others_live_lease = holding == Holding::Nothing && e.lease_until.is_some_and(|until| until > now);
            if e.state != ledger_state::SENT && !others_live_lease {
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

    /// Answers from a script, then succeeds; records every mail it sends
    /// and when each send started.
    #[derive(Default)]
    struct Scripted {
        script: Mutex<VecDeque<SendError>>,
        sent: Mutex<Vec<RenderedMail>>,
        calls: Mutex<u32>,
        started: Mutex<Vec<Instant>>,
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
            self.started.lock().unwrap().push(Instant::now());
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

    fn deliverer(mailer: Arc<Scripted>, ledger: Arc<dyn MailLedger>, clock: Arc<FixedClock>) -> Deliverer {
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
        assert_eq!(d.deliver(&env("a"), soon()).await, Outcome::Sent { provider_id: "m1".into(), recorded: true });
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
        assert_eq!(d.deliver(&env("f"), soon()).await, Outcome::Busy { lease_until: LEASE_SECS });
        assert_eq!(m.sent.lock().unwrap().len(), 0);
        c.advance(LEASE_SECS);
        assert!(matches!(d.deliver(&env("f"), soon()).await, Outcome::Sent { .. }));
    }

    #[tokio::test(start_paused = true)]
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
        let out = d.deliver(&env("g"), Instant::now() + MIN_SEND_WINDOW + Duration::from_millis(200)).await;
        assert!(matches!(out, Outcome::Retry { .. }));
        assert!(started.elapsed() < Duration::from_millis(400));
        let calls = *m.calls.lock().unwrap();
        assert!((2..=8).contains(&calls), "{calls} sends");
    }

    #[tokio::test(start_paused = true)]
    async fn no_send_starts_without_the_minimum_window() {
        let (m, l) = (Arc::new(Scripted::default()), Arc::new(MemoryMailLedger::new()));
        let d = deliverer(m.clone(), l.clone(), Arc::new(FixedClock::new(0)));
        let deadline = Instant::now() + MIN_SEND_WINDOW - Duration::from_millis(1);
        let out = d.deliver(&env("h"), deadline).await;
        assert!(matches!(&out, Outcome::Retry { reason } if reason.contains("too little time")), "{out:?}");
        assert_eq!(*m.calls.lock().unwrap(), 0, "a send that could be cut off is not started");
        // Released like any other "not now": the next delivery claims it.
        let e = l.entry("h").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.lease_until), (ledger_state::RETRY, None));
        assert!(matches!(d.deliver(&env("h"), soon()).await, Outcome::Sent { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_never_starts_inside_the_send_window() {
        let m = Arc::new(Scripted::failing((0..100).map(|_| SendError::Transient("503".into()))));
        let d = deliverer(m.clone(), Arc::new(MemoryMailLedger::new()), Arc::new(FixedClock::new(0))).with_retry(
            RetryPolicy {
                min_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(1),
                max_retries: 100,
                reserve: Duration::from_millis(500),
            },
        );
        let deadline = Instant::now() + MIN_SEND_WINDOW + Duration::from_secs(4);
        assert!(matches!(d.deliver(&env("i"), deadline).await, Outcome::Retry { .. }));
        let started = m.started.lock().unwrap().clone();
        assert!(started.len() >= 2, "{} sends", started.len());
        for t in started {
            let left = deadline - Duration::from_millis(500) - t;
            assert!(left >= MIN_SEND_WINDOW, "a send started with {left:?} left");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_limiter_slot_inside_the_send_window_is_refused() {
        let m = Arc::new(Scripted::default());
        let limiter = Arc::new(SendRateLimiter::new(1.0, 1));
        // The bucket's one token is spent: the next slot comes in 1 s.
        limiter.acquire().await;
        let d = Deliverer::new(
            Renderer::new("https://auth.example.com").unwrap(),
            Arc::new(MemoryMailLedger::new()),
            m.clone(),
            limiter,
            Arc::new(FixedClock::new(0)),
        )
        .with_retry(fast());
        let out = d.deliver(&env("j"), Instant::now() + MIN_SEND_WINDOW + Duration::from_millis(500)).await;
        assert!(matches!(&out, Outcome::Retry { reason } if reason.contains("rate limit")), "{out:?}");
        assert_eq!(*m.calls.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn the_last_receive_parks_a_transient_failure_with_its_reason() {
        let m = Arc::new(Scripted::failing((0..4).map(|_| SendError::Transient("503".into()))));
        let l = Arc::new(MemoryMailLedger::new());
        let d = deliverer(m.clone(), l.clone(), Arc::new(FixedClock::new(0)));
        let out = d.deliver_with(&env("k"), soon(), Redelivery::LastReceive { receives: 5 }).await;
        let reason = "transient failures exhausted after 5 receives: 503";
        assert_eq!(out, Outcome::Park { reason: reason.into() });
        let e = l.entry("k").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.reason.as_deref(), e.lease_until), (ledger_state::FAILED, Some(reason), None));
        // Before the last receive it is left for the queue, as ever.
        let m = Arc::new(Scripted::failing((0..4).map(|_| SendError::Transient("503".into()))));
        let d = deliverer(m, l.clone(), Arc::new(FixedClock::new(0)));
        assert_eq!(
            d.deliver_with(&env("k2"), soon(), Redelivery::Follows).await,
            Outcome::Retry { reason: "503".into() }
        );
        assert_eq!(l.entry("k2").await.unwrap().unwrap().state, ledger_state::RETRY);
    }

    #[tokio::test]
    async fn the_last_receive_leaves_a_job_another_worker_holds() {
        let (m, l) = (Arc::new(Scripted::default()), Arc::new(MemoryMailLedger::new()));
        assert_eq!(l.claim(&JobMeta::of(&env("l")), 0, LEASE_SECS).await.unwrap(), Claim::Claimed);
        let d = deliverer(m.clone(), l.clone(), Arc::new(FixedClock::new(0)));
        let out = d.deliver_with(&env("l"), soon(), Redelivery::LastReceive { receives: 5 }).await;
        assert_eq!(out, Outcome::Busy { lease_until: LEASE_SECS });
        let e = l.entry("l").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.lease_until), (ledger_state::SENDING, Some(LEASE_SECS)), "the holder's claim");
        assert_eq!(*m.calls.lock().unwrap(), 0);
    }

    /// A notice: no code or link, so only the age bound applies.
    fn notice(id: &str, created_at: Timestamp) -> MailEnvelope {
        MailEnvelope::new(
            id.into(),
            &Email::parse("dora@example.com").unwrap(),
            created_at,
            None,
            Some("user-dora".into()),
            MailJob::SignupAttempt {},
        )
    }

    #[tokio::test]
    async fn a_code_is_sent_until_it_expires_and_never_after() {
        let (m, l) = (Arc::new(Scripted::default()), Arc::new(MemoryMailLedger::new()));
        // `env` is queued at 1 with a 5-minute code: dead from 301 on.
        let expires_at = env("x").content_expires_at().unwrap();
        assert_eq!(expires_at, 301);
        let clock = Arc::new(FixedClock::new(expires_at - 1));
        let d = deliverer(m.clone(), l.clone(), clock.clone());
        assert!(matches!(d.deliver(&env("fresh"), soon()).await, Outcome::Sent { .. }));
        clock.set(expires_at);
        let out = d.deliver(&env("stale"), soon()).await;
        let Outcome::Expired { reason } = &out else { panic!("{out:?}") };
        assert!(reason.starts_with("expired: its code or link stopped working at"), "{reason}");
        assert_eq!(m.sent.lock().unwrap().len(), 1, "the stale code is not sent");
        let e = l.entry("stale").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.reason.as_ref(), e.lease_until), (ledger_state::FAILED, Some(reason), None));
        assert!(!reason.contains("424242") && !format!("{e:?}").contains("424242"));
        // The record's move from the claim to `failed` is the audit trail's
        // `mail_failed`, as for any other final failure.
        use crate::audit::{AuditEventType, AuditPolicy, Images, SourceChange, audit_events};
        let claimed = LedgerEntry { state: ledger_state::SENDING.into(), reason: None, ..e.clone() };
        let change = SourceChange {
            source_id: "feed:1".into(),
            at: expires_at,
            expired_by_ttl: false,
            images: Images::Mail(Some(claimed), Some(e.clone())),
        };
        let events: Vec<_> = audit_events(&change, &AuditPolicy::default()).into_iter().map(|ev| ev.event).collect();
        assert_eq!(events, [AuditEventType::MailFailed]);
        // On the queue's last receive too: refused, not parked for a redrive.
        let out = d.deliver_with(&env("stale2"), soon(), Redelivery::LastReceive { receives: 5 }).await;
        assert!(matches!(out, Outcome::Expired { .. }), "{out:?}");
        assert_eq!(*m.calls.lock().unwrap(), 1);
    }

    /// Fails its first send, which takes until `clock` reads `then`.
    struct FailsUntil {
        inner: Scripted,
        clock: Arc<FixedClock>,
        then: Timestamp,
    }

    #[async_trait]
    impl Mailer for FailsUntil {
        async fn send(&self, env: &MailEnvelope, mail: &RenderedMail) -> Result<String, SendError> {
            let result = self.inner.send(env, mail).await;
            self.clock.set(self.then);
            result
        }
    }

    #[tokio::test]
    async fn a_code_that_dies_while_its_send_is_retried_is_not_sent() {
        let expires_at = env("x").content_expires_at().unwrap();
        let clock = Arc::new(FixedClock::new(expires_at - 1));
        let m = Arc::new(FailsUntil {
            inner: Scripted::failing([SendError::Transient("503".into())]),
            clock: clock.clone(),
            then: expires_at,
        });
        let l = Arc::new(MemoryMailLedger::new());
        let d = Deliverer::new(
            Renderer::new("https://auth.example.com").unwrap(),
            l.clone(),
            m.clone(),
            Arc::new(SendRateLimiter::unlimited()),
            clock,
        )
        .with_retry(fast());
        let out = d.deliver(&env("late"), soon()).await;
        let Outcome::Expired { reason } = &out else { panic!("{out:?}") };
        assert!(reason.starts_with("expired: its code or link stopped working at"), "{reason}");
        assert_eq!(*m.inner.calls.lock().unwrap(), 1, "no retry once the code is dead");
        assert!(m.inner.sent.lock().unwrap().is_empty());
        let e = l.entry("late").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.reason.as_ref(), e.lease_until), (ledger_state::FAILED, Some(reason), None));
    }

    #[test]
    fn a_job_from_the_far_past_is_expired_without_overflow() {
        let mut e = env("ancient");
        e.created_at = i64::MIN;
        let reason = expiry(&e, 1_700_000_000).expect("expired");
        assert!(reason.starts_with("expired: its code or link stopped working at"), "{reason}");
        assert!(reason.contains(&format!("({} s before", i64::MAX)), "{reason}");
    }

    #[tokio::test]
    async fn a_notice_is_refused_at_the_maximum_age() {
        let (m, l) = (Arc::new(Scripted::default()), Arc::new(MemoryMailLedger::new()));
        let clock = Arc::new(FixedClock::new(MAX_JOB_AGE_SECS - 1));
        let d = deliverer(m.clone(), l.clone(), clock.clone());
        assert!(matches!(d.deliver(&notice("young", 0), soon()).await, Outcome::Sent { .. }));
        clock.set(MAX_JOB_AGE_SECS);
        let out = d.deliver(&notice("old", 0), soon()).await;
        let Outcome::Expired { reason } = &out else { panic!("{out:?}") };
        assert!(reason.starts_with(&format!("expired: queued {MAX_JOB_AGE_SECS} s ago")), "{reason}");
        assert_eq!(m.sent.lock().unwrap().len(), 1);
        assert_eq!(l.entry("old").await.unwrap().unwrap().state, ledger_state::FAILED);
    }

    /// A job sent once comes back (a DLQ redrive) after the TTL swept its
    /// ledger record: the age bound, not the ledger, keeps it from going
    /// out a second time.
    #[tokio::test]
    async fn a_job_is_not_sent_again_once_its_ledger_record_could_be_gone() {
        let m = Arc::new(Scripted::default());
        let clock = Arc::new(FixedClock::new(0));
        let d = deliverer(m.clone(), Arc::new(MemoryMailLedger::new()), clock.clone());
        assert!(matches!(d.deliver(&notice("n", 0), soon()).await, Outcome::Sent { .. }));
        // The claim was at 0; the record is swept from LEDGER_TTL_SECS on.
        let swept = Arc::new(MemoryMailLedger::new());
        clock.set(LEDGER_TTL_SECS);
        let d = deliverer(m.clone(), swept.clone(), clock.clone());
        assert!(matches!(d.deliver(&notice("n", 0), soon()).await, Outcome::Expired { .. }));
        assert_eq!(m.sent.lock().unwrap().len(), 1);
        assert_eq!(swept.entry("n").await.unwrap().unwrap().state, ledger_state::FAILED);
    }

    #[tokio::test]
    async fn an_expired_copy_of_a_sent_or_held_job_leaves_its_record_alone() {
        let (m, l) = (Arc::new(Scripted::default()), Arc::new(MemoryMailLedger::new()));
        let clock = Arc::new(FixedClock::new(0));
        let d = deliverer(m.clone(), l.clone(), clock.clone());
        assert!(matches!(d.deliver(&env("sent"), soon()).await, Outcome::Sent { .. }));
        // Another worker claimed this one just before the code died.
        assert_eq!(l.claim(&JobMeta::of(&env("held")), 300, LEASE_SECS).await.unwrap(), Claim::Claimed);
        clock.set(env("x").content_expires_at().unwrap());
        assert_eq!(d.deliver(&env("sent"), soon()).await, Outcome::AlreadySent);
        assert_eq!(l.entry("sent").await.unwrap().unwrap().state, ledger_state::SENT);
        // The holder may be sending it now: its claim is not overwritten.
        assert_eq!(d.deliver(&env("held"), soon()).await, Outcome::Busy { lease_until: 300 + LEASE_SECS });
        assert_eq!(l.entry("held").await.unwrap().unwrap().state, ledger_state::SENDING);
        assert_eq!(*m.calls.lock().unwrap(), 1);
    }

    /// A ledger whose writes after the claim never answer.
    struct StallsAfterClaim(MemoryMailLedger);

    #[async_trait]
    impl MailLedger for StallsAfterClaim {
        async fn claim(&self, job: &JobMeta, now: Timestamp, lease_secs: i64) -> StoreResult<Claim> {
            self.0.claim(job, now, lease_secs).await
        }
        async fn mark_sent(&self, _: &str, _: &str, _: Timestamp) -> StoreResult<()> {
            std::future::pending().await
        }
        async fn mark_failed(&self, _: &JobMeta, _: &str, _: Timestamp, _: Holding) -> StoreResult<()> {
            std::future::pending().await
        }
        async fn release(&self, _: &str, _: &str, _: Timestamp) -> StoreResult<()> {
            std::future::pending().await
        }
        async fn entry(&self, id: &str) -> StoreResult<Option<LedgerEntry>> {
            self.0.entry(id).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_bookkeeping_after_a_send_ends_by_the_deadline() {
        for (script, sent) in [
            (vec![], true),
            (vec![SendError::Permanent { reason: "MessageRejected: nope".into() }], false),
            (vec![SendError::Transient("503".into()); 4], false),
        ] {
            let m = Arc::new(Scripted::failing(script));
            let l = Arc::new(StallsAfterClaim(MemoryMailLedger::new()));
            let d = deliverer(m.clone(), l.clone(), Arc::new(FixedClock::new(0)));
            let deadline = soon();
            let out = tokio::time::timeout_at(deadline + Duration::from_secs(60), d.deliver(&env("m"), deadline))
                .await
                .expect("the delivery ends by its deadline");
            assert!(Instant::now() <= deadline);
            // A mail that went out is reported sent, record or not, so the
            // queue does not hand it over again; the claim (still `sending`)
            // holds off a duplicate until its lease ends.
            assert_eq!(matches!(out, Outcome::Sent { .. }), sent, "{out:?}");
            let e = l.entry("m").await.unwrap().unwrap();
            assert_eq!((e.state.as_str(), e.lease_until), (ledger_state::SENDING, Some(LEASE_SECS)));
        }
    }

    /// A ledger whose claim never answers (a hung connection); its other
    /// calls answer.
    /// A memory ledger with faults: the calls named in `hang` never
    /// answer, those in `fail` answer an error.
    #[derive(Default)]
    struct Faulty {
        ledger: MemoryMailLedger,
        hang: &'static [&'static str],
        fail: &'static [&'static str],
    }

    impl Faulty {
        async fn fault(&self, call: &str) -> StoreResult<()> {
            if self.hang.contains(&call) {
                std::future::pending::<()>().await;
            }
            if self.fail.contains(&call) {
                return Err(crate::StoreError::unavailable(format!("{call}: throttled")));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl MailLedger for Faulty {
        async fn claim(&self, job: &JobMeta, now: Timestamp, lease_secs: i64) -> StoreResult<Claim> {
            self.fault("claim").await?;
            self.ledger.claim(job, now, lease_secs).await
        }
        async fn mark_sent(&self, id: &str, provider_id: &str, now: Timestamp) -> StoreResult<()> {
            self.fault("mark_sent").await?;
            self.ledger.mark_sent(id, provider_id, now).await
        }
        async fn mark_failed(&self, job: &JobMeta, reason: &str, now: Timestamp, holding: Holding) -> StoreResult<()> {
            self.fault("mark_failed").await?;
            self.ledger.mark_failed(job, reason, now, holding).await
        }
        async fn release(&self, id: &str, reason: &str, now: Timestamp) -> StoreResult<()> {
            self.fault("release").await?;
            self.ledger.release(id, reason, now).await
        }
        async fn entry(&self, id: &str) -> StoreResult<Option<LedgerEntry>> {
            self.ledger.entry(id).await
        }
    }

    /// A claim is waited for only until the last moment a send could
    /// start, so a hung ledger leaves the time after it for recording the
    /// outcome: on the last receive the job is parked with its reason
    /// (and the worker copies it to the dead-letter queue) well before the
    /// deadline, not at it.
    #[tokio::test(start_paused = true)]
    async fn a_hung_claim_leaves_time_to_park_the_job() {
        let m = Arc::new(Scripted::default());
        let l = Arc::new(Faulty { hang: &["claim"], ..Faulty::default() });
        let reserve = Duration::from_millis(500);
        let d =
            deliverer(m.clone(), l.clone(), Arc::new(FixedClock::new(0))).with_retry(RetryPolicy { reserve, ..fast() });
        let deadline = Instant::now() + Duration::from_secs(20);
        let out = d.deliver_with(&env("hung"), deadline, Redelivery::LastReceive { receives: 5 }).await;
        assert!(
            matches!(&out, Outcome::Park { reason } if reason.contains("did not answer the claim in time")),
            "{out:?}"
        );
        assert_eq!(
            Instant::now(),
            deadline - reserve - MIN_SEND_WINDOW,
            "the claim's wait ends where a send must start"
        );
        assert_eq!(*m.calls.lock().unwrap(), 0);
        assert_eq!(l.entry("hung").await.unwrap().unwrap().state, ledger_state::FAILED);
        // Earlier receives give it back for the next one, as early.
        let deadline = Instant::now() + Duration::from_secs(20);
        assert!(matches!(d.deliver(&env("again"), deadline).await, Outcome::Retry { .. }));
        assert_eq!(Instant::now(), deadline - reserve - MIN_SEND_WINDOW);
    }
    /// On the last receive, a ledger that hangs leaves the reserve to the
    /// caller's dead-letter copy: the park's record is waited for only
    /// until the deadline less the reserve, as is the claim's release.
    #[tokio::test(start_paused = true)]
    async fn a_hung_ledger_leaves_the_reserve_for_the_dead_letter() {
        let m = Arc::new(Scripted::failing((0..10).map(|_| SendError::Transient("503".into()))));
        let l = Arc::new(Faulty { hang: &["release", "mark_failed"], ..Faulty::default() });
        let reserve = Duration::from_millis(1500);
        let d =
            deliverer(m.clone(), l.clone(), Arc::new(FixedClock::new(0))).with_retry(RetryPolicy { reserve, ..fast() });
        let deadline = Instant::now() + Duration::from_secs(20);
        let out = d.deliver_with(&env("stuck"), deadline, Redelivery::LastReceive { receives: 5 }).await;
        assert!(matches!(&out, Outcome::Park { reason } if reason.contains("503")), "{out:?}");
        assert_eq!(Instant::now(), deadline - reserve, "the ledger's writes ran into the reserve");
    }

    /// A permanent refusal whose park the ledger does not answer: the
    /// park's record is waited for only until the reserve, which is left for
    /// the caller's dead-letter copy (the job is parked with its reason).
    #[tokio::test(start_paused = true)]
    async fn a_park_the_ledger_does_not_answer_leaves_the_reserve() {
        let m = Arc::new(Scripted::failing([SendError::Permanent { reason: "550 mailbox unavailable".into() }]));
        let l = Arc::new(Faulty { hang: &["mark_failed"], ..Faulty::default() });
        let reserve = Duration::from_millis(1500);
        let d =
            deliverer(m.clone(), l.clone(), Arc::new(FixedClock::new(0))).with_retry(RetryPolicy { reserve, ..fast() });
        let deadline = Instant::now() + Duration::from_secs(20);
        let out = d.deliver_with(&env("refused"), deadline, Redelivery::LastReceive { receives: 5 }).await;
        assert!(matches!(&out, Outcome::Park { reason } if reason.contains("550")), "{out:?}");
        assert_eq!(Instant::now(), deadline - reserve, "the park's record ran into the reserve");
    }

    /// A release that timed out may still land, and a duplicate then claim
    /// the job: on the last receive this delivery parks it without a claim,
    /// so a live claim (here its own, which it cannot tell from another's)
    /// keeps its record rather than being written over.
    #[tokio::test(start_paused = true)]
    async fn a_release_that_timed_out_parks_without_the_claim() {
        let m = Arc::new(Scripted::failing((0..10).map(|_| SendError::Transient("503".into()))));
        let l = Arc::new(Faulty { hang: &["release"], ..Faulty::default() });
        let d = deliverer(m.clone(), l.clone(), Arc::new(FixedClock::new(0)))
            .with_retry(RetryPolicy { reserve: Duration::from_millis(500), ..fast() });
        let deadline = Instant::now() + Duration::from_secs(20);
        let out = d.deliver_with(&env("unsure"), deadline, Redelivery::LastReceive { receives: 5 }).await;
        assert!(matches!(&out, Outcome::Park { .. }), "{out:?}");
        assert_eq!(l.entry("unsure").await.unwrap().unwrap().state, ledger_state::SENDING);
    }

    /// On the last receive, a delivery whose release of its claim failed
    /// parks the job under that claim: the ledger says `failed` with the
    /// reason (the audit trail's `mail_failed`), not `sending` until its
    /// record expires.
    #[tokio::test]
    async fn a_claim_that_could_not_be_given_back_is_parked_on_the_last_receive() {
        let m = Arc::new(Scripted::failing((0..10).map(|_| SendError::Transient("503".into()))));
        let l = Arc::new(Faulty { fail: &["release"], ..Faulty::default() });
        let d = deliverer(m.clone(), l.clone(), Arc::new(FixedClock::new(0)));
        let out = d.deliver_with(&env("held"), soon(), Redelivery::LastReceive { receives: 5 }).await;
        assert!(matches!(&out, Outcome::Park { .. }), "{out:?}");
        let e = l.entry("held").await.unwrap().unwrap();
        assert_eq!(e.state, ledger_state::FAILED, "{e:?}");
        assert!(e.reason.as_deref().is_some_and(|r| r.contains("503")), "{e:?}");
    }
}
