//! latchkey-stream-processor: DynamoDB Streams batches (users, tokens and
//! mail-ledger tables) -> the audit trail. Each record's images are decoded with
//! serde_dynamo into the domain's types and mapped by the one pure
//! function in `latchkey_core::audit`; each record succeeds or fails on its
//! own, and the first that fails is reported back (`batchItemFailures`),
//! so the records before it are done; one that cannot be mapped at the
//! head of a batch fails the invocation instead, so that Lambda splits the
//! batch around it ([`Processor::invoke`]). Appends are idempotent per
//! stream event id, so Lambda's redeliveries add nothing.
//!
//! One record also changes data: the TTL's REMOVE of an account nobody
//! verified (`User::UNVERIFIED_RETENTION_SECS`) releases its username and
//! email claims (`DynamoStore::release_names`, each deleted only while it
//! still names that account), which the TTL cannot delete with it.
//!
//! `poller` drives the same handler from the Streams API when running
//! locally against an emulator.

pub mod poller;
pub mod verify;

use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use latchkey_core::StoreError;
use latchkey_core::adapters::dynamo::DynamoStore;
use latchkey_core::audit::{AuditPolicy, AuditStore, Images, SourceChange, audit_events, log_head};
use latchkey_core::clock::Timestamp;
use latchkey_core::keys::AuditKey;
use latchkey_core::mail::delivery::LedgerEntry;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Kept back from a Lambda invocation's deadline to answer Lambda.
pub const ANSWER_MARGIN: Duration = latchkey_core::clock::LAMBDA_ANSWER_MARGIN;

/// The first wait before a record whose store call failed is tried again
/// within the invocation; each later wait doubles, up to
/// [`STORE_RETRY_MAX`].
pub const STORE_RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two tries of a record within an invocation.
pub const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// The principal of DynamoDB's TTL sweeper in a REMOVE's `userIdentity`.
pub const TTL_PRINCIPAL: &str = "dynamodb.amazonaws.com";

/// Why one record could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record has no `pk` key")]
    NoKey,
    #[error("{entity} image does not decode: {source}")]
    Decode {
        entity: &'static str,
        #[source]
        source: serde_dynamo::Error,
    },
    #[error("unknown event name {0:?}")]
    EventName(String),
    /// Mapped anyway, a MODIFY without its OldImage would read as a
    /// creation (a second `user_registered`) and a REMOVE without it as
    /// nothing at all.
    #[error("{event_name} record with OldImage {old} and NewImage {new}: not the images its event name requires")]
    Images { event_name: String, old: &'static str, new: &'static str },
    #[error(transparent)]
    Store(#[from] latchkey_core::StoreError),
}

/// The batch handler: one per process, shared by every invocation.
#[derive(Clone)]
pub struct Processor {
    audit: Arc<dyn AuditStore>,
    key: AuditKey,
    policy: AuditPolicy,
    retention_secs: i64,
    names: Option<Arc<DynamoStore>>,
}

impl Processor {
    /// Appends to `audit`, each record sealed with `key`.
    pub fn new(audit: Arc<dyn AuditStore>, key: AuditKey, policy: AuditPolicy, retention_days: u32) -> Self {
        Processor { audit, key, policy, retention_secs: i64::from(retention_days) * 86_400, names: None }
    }

    /// Also releases the names of the accounts the TTL deletes as
    /// unverified, in `users`' table (the deployed function does; without
    /// it the processor only appends to the trail).
    pub fn releasing_names(self, users: Arc<DynamoStore>) -> Self {
        Processor { names: Some(users), ..self }
    }

    /// Processes the records in order and stops at the first that fails,
    /// reporting it by its sequence number (what Lambda expects for
    /// DynamoDB Streams). Lambda resumes the shard from that record, so
    /// nothing after it is appended before it: the audit trail keeps the
    /// stream's order (a code is never verified before it was issued).
    pub async fn handle(&self, event: &Event) -> DynamoDbEventResponse {
        self.run(event, None).await.0
    }

    /// [`Processor::handle`], and the index and error of the record that
    /// failed. With a `deadline`, a record whose store call failed (an
    /// error a retry may get past: throttling, a conflict, an outage) is
    /// tried again after a backoff while the next wait still ends before
    /// it: Lambda's own retries of a batch come at once and are few
    /// (`stream_max_retry_attempts`), after which the record and every one
    /// after it in the batch go to the on-failure queue, good ones too.
    /// Trying again is safe: appends are idempotent per event id.
    async fn run(
        &self,
        event: &Event,
        deadline: Option<Instant>,
    ) -> (DynamoDbEventResponse, Option<(usize, RecordError)>) {
        let mut response = DynamoDbEventResponse::default();
        for (i, record) in event.records.iter().enumerate() {
            if let Err(e) = self.process_retrying(record, deadline).await {
                tracing::error!(event_id = %record.event_id, error = %e, "stream record failed; the batch stops here");
                let mut failure = DynamoDbBatchItemFailure::default();
                failure.item_identifier = Some(item_identifier(record));
                response.batch_item_failures.push(failure);
                return (response, Some((i, e)));
            }
        }
        (response, None)
    }

    /// What the function answers Lambda for `event`: [`Processor::handle`]'s
    /// response, except when the batch's first record cannot be mapped
    /// (undecodable, or images that do not fit its event name) and others
    /// follow it. Then it is an error, so that the mapping, which bisects a
    /// batch on a function error (`bisect_batch_on_function_error`), splits
    /// it until that record stands alone: AWS retries a partial response
    /// from the record it names with everything after it, so naming the
    /// first record would have it retried, and after the retries parked,
    /// with the whole rest of the batch, good records too. A store error
    /// (one a retry may get past) stays a partial response, so an outage
    /// does not split every batch. What the failed record appended before
    /// it failed is appended once: appends are idempotent per event id.
    pub async fn invoke(&self, event: &Event) -> Result<DynamoDbEventResponse, SplitBatch> {
        self.invoke_by(event, None).await
    }

    /// [`Processor::invoke`], trying a record whose store call failed again
    /// until `deadline` (the deployed function's: the invocation's, less
    /// [`ANSWER_MARGIN`]).
    pub async fn invoke_by(
        &self,
        event: &Event,
        deadline: Option<Instant>,
    ) -> Result<DynamoDbEventResponse, SplitBatch> {
        match self.run(event, deadline).await {
            (_, Some((0, e))) if event.records.len() > 1 && !matches!(e, RecordError::Store(_)) => {
                Err(SplitBatch { records: event.records.len(), first: item_identifier(&event.records[0]) })
            }
            (response, _) => Ok(response),
        }
    }

    /// [`Processor::process`], tried again after a store error a retry may
    /// get past (`Unavailable`, `Conflict`; not `Internal`) while the next
    /// backoff ends before `deadline`, each try cut off at it (not at all
    /// without one).
    async fn process_retrying(&self, record: &EventRecord, deadline: Option<Instant>) -> Result<usize, RecordError> {
        let Some(deadline) = deadline else { return self.process(record).await };
        let mut wait = STORE_RETRY_FIRST;
        loop {
            // A try, too, ends by the deadline: one cut off is a store error
            // like any (its appends may have landed; they are idempotent).
            let tried = match tokio::time::timeout_at(deadline, self.process(record)).await {
                Ok(result) => result,
                Err(_) => Err(RecordError::Store(StoreError::unavailable("the invocation's deadline came first"))),
            };
            match tried {
                // Only what a retry may get past: throttling, an outage, a
                // lost race. A bug or bad data (`Internal`) fails at once.
                Err(RecordError::Store(e @ (StoreError::Unavailable(_) | StoreError::Conflict(_))))
                    if Instant::now() + wait < deadline =>
                {
                    tracing::warn!(event_id = %record.event_id, error = %e, ?wait, "stream record failed in the store; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(STORE_RETRY_MAX);
                }
                result => return result,
            }
        }
    }

    /// One record: decoded, mapped, appended (and an expired unverified
    /// account's names released, after its event is in the trail, so a
    /// failed release is retried with the record and appends nothing
    /// twice). Returns the events added.
    ///
    /// Each append's new head is logged (`audit head`: subject, seq, hash,
    /// expires_at and `head`, the three as `verify-chain --head` takes
    /// them): the log is the chain's witness outside the audit table (see
    /// `latchkey_core::audit::check_logged_head`).
    pub async fn process(&self, record: &EventRecord) -> Result<usize, RecordError> {
        let Some(change) = source_change(record)? else { return Ok(0) };
        let mut added = 0;
        for e in audit_events(&change, &self.policy) {
            if let Some(head) = self.audit.append(&self.key, &e, e.at.saturating_add(self.retention_secs)).await? {
                log_head(&e.subject, &head);
                added += 1;
            }
        }
        if let (Some(users), Images::User(Some(old), None)) = (&self.names, &change.images)
            && change.expired_by_ttl
            && !old.verified
        {
            let released = users.release_names(old).await?;
            tracing::info!(user_id = %old.id, released, "unverified account expired; its names released");
        }
        Ok(added)
    }
}

/// [`Processor::invoke`]'s error: the first record of a batch of several
/// failed, and the batch is to be split.
#[derive(Debug, thiserror::Error)]
#[error("stream record {first}, the first of {records}, failed: split the batch")]
pub struct SplitBatch {
    pub records: usize,
    pub first: String,
}

/// How a failed record is named in a batch response: its sequence number.
pub fn item_identifier(record: &EventRecord) -> String {
    record.change.sequence_number.clone().unwrap_or_else(|| record.event_id.clone())
}

/// Whether a record is a deletion by DynamoDB's TTL sweeper.
pub fn is_ttl_removal(record: &EventRecord) -> bool {
    record.event_name == "REMOVE"
        && record.user_identity.as_ref().is_some_and(|u| u.type_ == "Service" && u.principal_id == TTL_PRINCIPAL)
}

#[derive(serde::Deserialize)]
struct Key {
    pk: String,
}

fn image<T: DeserializeOwned>(item: &serde_dynamo::Item, entity: &'static str) -> Result<Option<T>, RecordError> {
    if item.is_empty() {
        return Ok(None);
    }
    serde_dynamo::from_item(item.clone()).map(Some).map_err(|source| RecordError::Decode { entity, source })
}

/// Whether the record carries exactly the images its event name implies
/// (the tables stream NEW_AND_OLD_IMAGES): INSERT a new one only, MODIFY
/// both, REMOVE an old one only. The mapping reads "created", "changed" and
/// "removed" from which images are there, so a record that does not fit is
/// refused like one that does not decode, never guessed at.
fn images_fit(r: &EventRecord) -> Result<(), RecordError> {
    let (old, new) = (!r.change.old_image.is_empty(), !r.change.new_image.is_empty());
    let fits = match r.event_name.as_str() {
        "INSERT" => !old && new,
        "MODIFY" => old && new,
        "REMOVE" => old && !new,
        other => return Err(RecordError::EventName(other.to_string())),
    };
    let said = |present: bool| if present { "present" } else { "absent" };
    if fits {
        Ok(())
    } else {
        Err(RecordError::Images { event_name: r.event_name.clone(), old: said(old), new: said(new) })
    }
}

/// The record as the mapping's input; `None` for items the audit trail
/// does not follow (username/email claims, rate-limit counters).
pub fn source_change(r: &EventRecord) -> Result<Option<SourceChange>, RecordError> {
    if !matches!(r.event_name.as_str(), "INSERT" | "MODIFY" | "REMOVE") {
        return Err(RecordError::EventName(r.event_name.clone()));
    }
    let c = &r.change;
    let key: Key = serde_dynamo::from_item(c.keys.clone()).map_err(|_| RecordError::NoKey)?;
    let prefix = key.pk.split_once('#').map_or("", |(p, _)| p);
    let (old, new) = (&c.old_image, &c.new_image);
    let images = match prefix {
        "USER" => Images::User(image(old, "user")?, image(new, "user")?),
        "VERIFY" => Images::Verification(image(old, "verification")?, image(new, "verification")?),
        "CHAL" => Images::Challenge(image(old, "challenge")?, image(new, "challenge")?),
        "SESSION" => Images::Session(image(old, "session")?, image(new, "session")?),
        "OTP" => Images::Otp(image(old, "otp")?, image(new, "otp")?),
        // The mail ledger's items keep the job id only in the key.
        "MAIL" => {
            let id = key.pk.split_once('#').map_or("", |(_, id)| id);
            let ledger = |item| -> Result<Option<LedgerEntry>, RecordError> {
                Ok(image::<LedgerEntry>(item, "mail")?.map(|e| LedgerEntry { id: id.to_string(), ..e }))
            };
            Images::Mail(ledger(old)?, ledger(new)?)
        }
        _ => return Ok(None),
    };
    images_fit(r)?;
    let at: Timestamp = c.approximate_creation_date_time.timestamp();
    Ok(Some(SourceChange { source_id: format!("ddb:{}", r.event_id), at, expired_by_ttl: is_ttl_removal(r), images }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One users-table stream record of the username claim item
    /// `UNAME#probe`, as DynamoDB Streams delivers it; `old` and `new` are
    /// the images' attributes besides `pk` (`None`: no such image).
    fn claim_record(event_name: &str, old: Option<&str>, new: Option<&str>) -> EventRecord {
        let image = |name: &str, attrs: Option<&str>| {
            attrs.map_or(String::new(), |a| format!(r#","{name}":{{"pk":{{"S":"UNAME#probe"}},{a}}}"#))
        };
        let json = format!(
            r#"{{"eventID":"e1","eventName":"{event_name}","eventVersion":"1.1","eventSource":"aws:dynamodb",
            "awsRegion":"eu-west-1","dynamodb":{{"ApproximateCreationDateTime":1700000000.5,
            "Keys":{{"pk":{{"S":"UNAME#probe"}}}}{}{},"SequenceNumber":"1","SizeBytes":64,
            "StreamViewType":"NEW_AND_OLD_IMAGES"}}}}"#,
            image("OldImage", old),
            image("NewImage", new),
        );
        serde_json::from_str(&json).expect("a DynamoDB Streams record")
    }

    /// A username hold (a claim item with `held_at` and no account) is no
    /// record the audit trail follows: made, renewed, or taken over by an
    /// account or from one, it maps to no change and is no error.
    #[test]
    fn a_username_hold_is_no_audit_change() {
        let hold = Some(r#""held_at":{"N":"1700000000"}"#);
        let account = Some(r#""user_id":{"S":"6f1c2a9e-3b7d-4c55-9a0e-1d2f3a4b5c6d"}"#);
        for (name, old, new) in
            [("INSERT", None, hold), ("MODIFY", hold, account), ("MODIFY", account, hold), ("MODIFY", hold, hold)]
        {
            let r = claim_record(name, old, new);
            assert_eq!(
                (r.change.old_image.is_empty(), r.change.new_image.is_empty()),
                (old.is_none(), new.is_none()),
                "{name}: the record's images"
            );
            assert_eq!(source_change(&r).expect("no error"), None, "{name} {old:?} -> {new:?}");
        }
    }
}
