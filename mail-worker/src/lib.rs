//! latchkey-mail-worker: the only thing that sends mail on AWS. An SQS
//! event source mapping hands it batches of mail jobs from `{prefix}-mail`;
//! [`handle`] delivers each record independently and concurrently through
//! the shared `Deliverer` (ledger claim so a job is sent once, SES v2 with
//! backoff and jitter inside the invocation's time, a per-instance send
//! rate limit), and answers with the ids of the records SQS should redeliver
//! (ReportBatchItemFailures).
//!
//! - Sent, or sent before: handled (SQS deletes it).
//! - Unparseable body or permanent SES refusal: copied to the DLQ at once
//!   with a `failure_reason` message attribute, then handled.
//! - Expired (its code or link is dead, or the job is older than
//!   `MAX_JOB_AGE_SECS`, as after a late DLQ redrive): not sent, `failed` in
//!   the ledger with the reason, and handled: SQS deletes it, and there is
//!   no DLQ copy, since a redrive could only refuse it again.
//! - Transient failure that outlasted the retries: reported, so SQS
//!   redelivers it; its visibility is first cut to a short backoff
//!   ([`retry_backoff`]: 5 s, doubling with each receive, at most 30 s), so
//!   a login code is not held back for the queue's visibility timeout
//!   (minutes on AWS). On the last receive SQS
//!   allows (the record's `ApproximateReceiveCount` has reached
//!   `MAIL_MAX_RECEIVE_COUNT`, the queue's `maxReceiveCount`), it is parked
//!   instead, as a permanent failure is: `failed` in the ledger (so the
//!   audit trail has its `mail_failed`) and a DLQ copy with the reason.
//! - Held by another worker (its claim's lease is live): reported, and
//!   shown again when the lease ends ([`busy_visibility`]). Left to SQS even
//!   on its last receive, which then redrives it to the DLQ itself.
//!
//! Everything, the DLQ copy and the ledger records included, ends by the
//! invocation's deadline, so the handler answers Lambda in time and a mail
//! that went out is not handed over again with the whole batch.
//!
//! The same handler runs under Lambda (`main.rs`), under the local
//! [`poller`] that receives from the real queue (emulator mode), and in the
//! benchmark. [`dlq`] lists dead letters and moves them back after a fix.

pub mod config;
pub mod dlq;
pub mod local;
pub mod poller;

pub use config::WorkerConfig;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sqs::types::MessageAttributeValue;
use latchkey_core::adapters::{aws_calls, dynamo, ses};
use latchkey_core::clock::SystemClock;
use latchkey_core::clock::Timestamp;
use latchkey_core::mail::delivery::{Deliverer, LEASE_SECS, Outcome, Redelivery, RetryPolicy, SendRateLimiter};
use latchkey_core::mail::{MailEnvelope, Renderer};
use latchkey_core::tables;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The message attribute a parked job carries in the DLQ.
pub const FAILURE_REASON_ATTRIBUTE: &str = "failure_reason";
/// The SQS message id of the record that was parked.
pub const SOURCE_MESSAGE_ID_ATTRIBUTE: &str = "source_message_id";
/// SQS caps a string attribute's size; a reason is cut well below it.
const MAX_REASON_CHARS: usize = 1024;
/// The SQS system attribute counting a message's receives, this one included.
pub const RECEIVE_COUNT_ATTRIBUTE: &str = "ApproximateReceiveCount";

/// Kept back from a Lambda invocation's deadline to answer Lambda.
pub const ANSWER_MARGIN: Duration = latchkey_core::clock::LAMBDA_ANSWER_MARGIN;

/// How soon SQS shows a record again after its first transient failure
/// (each later receive doubles it, up to [`RETRY_BACKOFF_MAX`]). Left to
/// the queue, a retry would wait its visibility timeout: 6 x the worker's
/// timeout plus the batching window on AWS (181 s with Terraform's
/// defaults), 60 s on an emulator; a login code lives 5 minutes.
pub const RETRY_BACKOFF_FIRST: Duration = Duration::from_secs(5);
/// The longest backoff, well below the queue's visibility timeout (at
/// least 84 s with Terraform, 60 s on an emulator). With the first at 5 s,
/// the 5 receives a job gets span about a minute of an SES outage (5, 10,
/// 20, 30 s apart) before it is parked with its reason, for a redrive.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the handler needs, built once per cold start.
pub struct Worker {
    deliverer: Arc<Deliverer>,
    sqs: aws_sdk_sqs::Client,
    dlq_url: String,
    /// The queue the records come from, for ChangeMessageVisibility; without
    /// it a record left for redelivery waits the queue's visibility timeout.
    queue_url: Option<String>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("dlq_url", &self.dlq_url)
            .field("queue_url", &self.queue_url)
            .finish_non_exhaustive()
    }
}

/// The AWS clients the worker uses, all from one `SdkConfig` (tests may put
/// SES behind a fault-injecting proxy).
#[derive(Debug, Clone)]
pub struct Clients {
    pub dynamo: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub ses: aws_sdk_sesv2::Client,
}

impl Clients {
    pub fn from_sdk(sdk: &aws_config::SdkConfig) -> Self {
        Clients {
            dynamo: aws_calls::dynamo_client(sdk, None),
            sqs: aws_calls::sqs_client(sdk, None),
            ses: aws_calls::sesv2_client(sdk, None),
        }
    }
}

impl Worker {
    pub fn new(deliverer: Arc<Deliverer>, sqs: aws_sdk_sqs::Client, dlq_url: impl Into<String>) -> Self {
        Worker { deliverer, sqs, dlq_url: dlq_url.into(), queue_url: None }
    }

    /// The mail queue's URL: a record left for redelivery is then shown
    /// again after a short backoff rather than the queue's visibility
    /// timeout (see [`retry_backoff`], [`busy_visibility`]).
    pub fn with_queue_url(mut self, queue_url: impl Into<String>) -> Self {
        self.queue_url = Some(queue_url.into());
        self
    }

    /// The production worker: DynamoDB ledger, SES mailer, the configured
    /// send rate, the default retry schedule.
    pub fn from_config(cfg: &WorkerConfig, clients: Clients) -> Result<Self, BoxError> {
        Self::with_retry(cfg, clients, RetryPolicy::default())
    }

    pub fn with_retry(cfg: &WorkerConfig, clients: Clients, retry: RetryPolicy) -> Result<Self, BoxError> {
        let renderer = Renderer::new(&cfg.public_base_url)?;
        let ledger = dynamo::DynamoMailLedger::new(clients.dynamo, &cfg.table_prefix);
        let mailer = ses::SesMailer::new(clients.ses, cfg.ses_from.clone(), cfg.ses_configuration_set.clone());
        let limiter = SendRateLimiter::new(cfg.max_send_rate, 1);
        let deliverer =
            Deliverer::new(renderer, Arc::new(ledger), Arc::new(mailer), Arc::new(limiter), Arc::new(SystemClock))
                .with_retry(retry);
        let worker = Worker::new(Arc::new(deliverer), clients.sqs, cfg.dlq_url.clone());
        Ok(match &cfg.queue_url {
            Some(url) => worker.with_queue_url(url),
            None => {
                tracing::warn!(
                    "LATCHKEY_MAIL_QUEUE_URL is not set: a mail left for redelivery waits the queue's visibility timeout"
                );
                worker
            }
        })
    }

    pub fn deliverer(&self) -> &Arc<Deliverer> {
        &self.deliverer
    }

    /// Copies the record to the DLQ with its reason, by `deadline`. `true`
    /// once it is there (the record is then handled); `false` if the DLQ
    /// could not be written in time (the record is reported, so SQS keeps
    /// it). A write cut off by the deadline may still have landed: the
    /// message then has two dead letters, and the ledger answers the second
    /// redrive of a sent job with "already sent".
    async fn park(&self, record: &SqsMessage, reason: &str, deadline: Instant) -> bool {
        let id = record.message_id.as_deref().unwrap_or("");
        let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
        let body = record.body.as_deref().filter(|b| !b.is_empty()).unwrap_or("(empty body)");
        let mut req = self.sqs.send_message().queue_url(&self.dlq_url).message_body(body);
        // Keep the producer's routing attributes (kind, job_id); SQS allows
        // ten per message and two are ours.
        for (name, attr) in record.message_attributes.iter().take(8) {
            if name == FAILURE_REASON_ATTRIBUTE || name == SOURCE_MESSAGE_ID_ATTRIBUTE {
                continue;
            }
            if let (Some(v), Some(t)) = (&attr.string_value, &attr.data_type)
                && let Ok(a) = MessageAttributeValue::builder().data_type(t).string_value(v).build()
            {
                req = req.message_attributes(name, a);
            }
        }
        for (name, value) in [(FAILURE_REASON_ATTRIBUTE, reason.as_str()), (SOURCE_MESSAGE_ID_ATTRIBUTE, id)] {
            if value.is_empty() {
                continue;
            }
            match MessageAttributeValue::builder().data_type("String").string_value(value).build() {
                Ok(a) => req = req.message_attributes(name, a),
                Err(e) => tracing::error!(error = %e, "building a DLQ attribute"),
            }
        }
        match tokio::time::timeout_at(deadline, req.send()).await {
            Ok(Ok(_)) => {
                tracing::error!(message_id = id, %reason, "mail job moved to the dead-letter queue");
                true
            }
            Ok(Err(e)) => {
                tracing::error!(message_id = id, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "could not write to the dead-letter queue");
                false
            }
            Err(_) => {
                tracing::error!(message_id = id, "the dead-letter queue did not answer before the deadline");
                false
            }
        }
    }

    /// One record: `true` if handled (delete it), `false` to redeliver.
    async fn process(&self, record: &SqsMessage, deadline: Instant) -> bool {
        let env = match MailEnvelope::from_json(record.body.as_deref().unwrap_or("")) {
            Ok(env) => env,
            Err(reason) => return self.park(record, &reason, deadline).await,
        };
        let message_id = record.message_id.as_deref().unwrap_or("");
        match self.deliverer.deliver_with(&env, deadline, redelivery(record)).await {
            Outcome::Sent { .. } | Outcome::AlreadySent => true,
            Outcome::Park { reason } => self.park(record, &reason, deadline).await,
            // Recorded failed in the ledger; nothing for the DLQ.
            Outcome::Expired { reason } => {
                tracing::warn!(message_id, mail_id = %env.id, %reason, "expired mail job dropped from the queue");
                true
            }
            Outcome::Retry { reason } => {
                let after = retry_backoff(receive_count(record).unwrap_or(1));
                tracing::warn!(message_id, mail_id = %env.id, %reason, after_secs = after.as_secs(), "mail job left for redelivery");
                self.show_again_after(record, after, deadline).await;
                false
            }
            Outcome::Busy { lease_until } => {
                let after = busy_visibility(lease_until, self.deliverer.clock().now());
                tracing::warn!(message_id, mail_id = %env.id, lease_until, after_secs = after.as_secs(), "mail job held by another worker; left for redelivery");
                self.show_again_after(record, after, deadline).await;
                false
            }
        }
    }

    /// Sets `record`'s visibility to `after` (ChangeMessageVisibility), so
    /// SQS hands it over again then rather than after the queue's visibility
    /// timeout. Ends by `deadline` and fails soft: a failed or late call is
    /// logged, and the record, reported all the same, waits the queue's
    /// visibility timeout as it did before.
    async fn show_again_after(&self, record: &SqsMessage, after: Duration, deadline: Instant) {
        let message_id = record.message_id.as_deref().unwrap_or("");
        let handle = record.receipt_handle.as_deref().filter(|h| !h.is_empty());
        let (Some(queue_url), Some(handle)) = (self.queue_url.as_deref(), handle) else {
            tracing::debug!(
                message_id,
                "no queue URL or receipt handle: the record waits the queue's visibility timeout"
            );
            return;
        };
        // Both backoffs are bounded far below i32::MAX seconds.
        let secs = i32::try_from(after.as_secs()).unwrap_or(i32::MAX);
        let req =
            self.sqs.change_message_visibility().queue_url(queue_url).receipt_handle(handle).visibility_timeout(secs);
        match tokio::time::timeout_at(deadline, req.send()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(
                message_id,
                error = %aws_sdk_sqs::error::DisplayErrorContext(&e),
                "could not shorten the record's visibility; it waits the queue's visibility timeout"
            ),
            Err(_) => tracing::warn!(
                message_id,
                "the record's visibility was not changed before the deadline; it waits the queue's visibility timeout"
            ),
        }
    }
}

/// How long SQS hides a record left for redelivery after a transient
/// failure on its `receives`-th receive: [`RETRY_BACKOFF_FIRST`], doubled
/// on each later receive, at most [`RETRY_BACKOFF_MAX`].
pub fn retry_backoff(receives: u32) -> Duration {
    let doublings = receives.saturating_sub(1).min(16);
    RETRY_BACKOFF_FIRST.saturating_mul(1 << doublings).min(RETRY_BACKOFF_MAX)
}

/// How long SQS hides a record whose job another worker holds until
/// `lease_until`: until the lease ends (and a second more, the ledger's
/// clock counting whole seconds), when the next receive can claim the job
/// if the holder died, or finds it sent. Not cut to the retry backoff:
/// receives spent inside a dead worker's 5-minute lease would get the job
/// dead-lettered unsent. At most the lease itself ([`LEASE_SECS`]).
pub fn busy_visibility(lease_until: Timestamp, now: Timestamp) -> Duration {
    let left = lease_until.saturating_sub(now).clamp(0, LEASE_SECS);
    Duration::from_secs(left.unsigned_abs() + 1)
}

/// The record's `ApproximateReceiveCount`, if it has a readable one.
fn receive_count(record: &SqsMessage) -> Option<u32> {
    record.attributes.get(RECEIVE_COUNT_ATTRIBUTE).and_then(|v| v.trim().parse::<u32>().ok())
}

/// Whether SQS hands `record` over again after a reported failure. It
/// moves a message to the DLQ instead once its receives would pass the
/// queue's `maxReceiveCount`, which is core's `MAIL_MAX_RECEIVE_COUNT`
/// (Terraform and `sqs::ensure_queues` set it from there, and the Terraform
/// test holds them equal), so a record received that many times is on its
/// last receive. The count is approximate: one counted high parks a job a
/// receive early, one counted low (or missing, as in a hand-built event)
/// leaves it to SQS's redrive, as before.
pub fn redelivery(record: &SqsMessage) -> Redelivery {
    match receive_count(record) {
        Some(receives) if receives >= tables::MAIL_MAX_RECEIVE_COUNT => Redelivery::LastReceive { receives },
        _ => Redelivery::Follows,
    }
}

/// Handles one SQS batch: every record concurrently and independently,
/// finishing before `deadline`. The response lists only the records to
/// redeliver, by their (non-empty) message id.
pub async fn handle(event: SqsEvent, worker: &Worker, deadline: Instant) -> SqsBatchResponse {
    let results = futures::future::join_all(event.records.iter().map(|r| async move {
        let handled = worker.process(r, deadline).await;
        (r.message_id.as_deref(), handled)
    }))
    .await;
    let mut response = SqsBatchResponse::default();
    for (id, handled) in results {
        if handled {
            continue;
        }
        match id.filter(|id| !id.is_empty()) {
            Some(id) => {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id.to_string();
                response.batch_item_failures.push(failure);
            }
            // Reporting an empty id would fail the whole batch; SQS never
            // sends one, so this is only ever a malformed test event.
            None => tracing::error!("a failed record has no message id; it cannot be reported"),
        }
    }
    response
}

pub use latchkey_core::clock::lambda_deadline;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_receive_is_the_queues_max_receive_count() {
        let with = |count: Option<&str>| {
            let mut r = poller::record("m", "{}");
            if let Some(c) = count {
                r.attributes.insert(RECEIVE_COUNT_ATTRIBUTE.into(), c.into());
            }
            redelivery(&r)
        };
        let max = tables::MAIL_MAX_RECEIVE_COUNT;
        assert_eq!(with(Some(&max.to_string())), Redelivery::LastReceive { receives: max });
        assert_eq!(with(Some(&(max + 1).to_string())), Redelivery::LastReceive { receives: max + 1 });
        for early in [None, Some("1"), Some(&*(max - 1).to_string()), Some("many")] {
            assert_eq!(with(early), Redelivery::Follows, "{early:?}");
        }
    }

    #[test]
    fn the_retry_backoff_doubles_per_receive_up_to_its_cap() {
        let secs = |r| retry_backoff(r).as_secs();
        assert_eq!([0, 1, 2, 3, 4, 5, 6, 1000, u32::MAX].map(secs), [5, 5, 10, 20, 30, 30, 30, 30, 30]);
        // Well below the visibility timeout of the emulator's queue (60 s)
        // and of Terraform's (6 x at least 14 s).
        assert!(RETRY_BACKOFF_MAX.as_secs() * 2 <= 60);
    }

    #[test]
    fn a_held_job_is_shown_again_when_the_lease_ends() {
        assert_eq!(busy_visibility(1_000 + 42, 1_000), Duration::from_secs(43));
        assert_eq!(busy_visibility(1_000, 1_000), Duration::from_secs(1));
        assert_eq!(busy_visibility(900, 1_000), Duration::from_secs(1), "a lease that has ended");
        assert_eq!(busy_visibility(i64::MAX, 0), Duration::from_secs(LEASE_SECS as u64 + 1), "never past a lease");
    }
}
