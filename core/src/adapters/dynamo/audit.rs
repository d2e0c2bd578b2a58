//! `AuditStore` on the audit table (`crate::tables::AUDIT`), without a
//! Scan anywhere: a subject's records and chain head share a partition
//! (`SUBJ#<subject>`), statistics are per-day counter items (`DAY#<date>`)
//! bumped in the same transaction as the record they count, and an
//! `EVENT#<id>` marker makes a replayed event a no-op.

use super::errors::map_sdk;
use super::items::{self, Item, PK, TTL, TTL_NAME, n, s};
use super::{DynamoStore, update_item};
use crate::StoreError;
use crate::audit::{
    AuditEvent, AuditEventType, AuditHead, AuditPage, AuditRecord, AuditStore, DayCount, GENESIS_HASH, day_of,
    day_string,
};
use crate::clock::Timestamp;
use crate::keys::AuditKey;
use crate::ports::StoreResult;
use crate::tables;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

/// The sort key attribute of the audit table.
pub const SK: &str = "sk";
const HEAD: &str = "HEAD";
const REC: &str = "REC#";
/// Rounds of "read head, append" when another writer appends to the same
/// subject in between.
const APPEND_ATTEMPTS: u32 = 8;

/// Transaction item positions in `append`.
const MARKER: usize = 0;
const HEAD_ITEM: usize = 1;
const RECORD: usize = 2;
const COUNTER: usize = 3;

fn subject_pk(subject: &str) -> String {
    format!("SUBJ#{subject}")
}
fn record_sk(seq: u64) -> String {
    format!("{REC}{seq:020}")
}
fn event_pk(event_id: &str) -> String {
    format!("EVENT#{event_id}")
}
fn day_pk(day: i64) -> String {
    format!("DAY#{}", day_string(day))
}

/// The DynamoDB audit store. Cheap to clone; build once per process.
#[derive(Debug, Clone)]
pub struct DynamoAuditStore {
    inner: DynamoStore,
    table: String,
}

impl DynamoAuditStore {
    /// The store on `{table_prefix}-audit`.
    pub fn new(client: Client, table_prefix: &str) -> Self {
        DynamoAuditStore {
            inner: DynamoStore::new(client, table_prefix),
            table: tables::table_name(table_prefix, &tables::AUDIT),
        }
    }

    fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The chain head: the last record's seq, hash and expiry (the head's
    /// TTL is its last record's `expires_at`).
    async fn head(&self, subject: &str) -> StoreResult<Option<(u64, String, Option<Timestamp>)>> {
        let out = self
            .client()
            .get_item()
            .table_name(&self.table)
            .key(PK, s(subject_pk(subject)))
            .key(SK, s(HEAD))
            .consistent_read(true)
            .send()
            .await
            .map_err(map_sdk)?;
        let Some(item) = out.item else { return Ok(None) };
        let seq = items::number(&item, "seq")?;
        let hash = match item.get("hash") {
            Some(AttributeValue::S(h)) => h.clone(),
            _ => return Err(StoreError::internal("audit chain head without a hash")),
        };
        Ok(Some((u64::from(seq), hash, ttl_of(&item)?)))
    }

    /// The sequence number, hash and expiry of a subject's last record, if
    /// it has one (a consistent read).
    async fn last_record(&self, subject: &str) -> StoreResult<Option<(u64, String, Option<Timestamp>)>> {
        let (records, _) = self.query_records(subject, record_sk(0), record_sk(u64::MAX), false, Some(1), None).await?;
        Ok(records.into_iter().next().map(|r| (r.seq, r.hash, Some(r.expires_at))))
    }

    /// One query of a subject's records between two sort keys.
    async fn query_records(
        &self,
        subject: &str,
        lo: String,
        hi: String,
        forward: bool,
        limit: Option<i32>,
        start: Option<Item>,
    ) -> StoreResult<(Vec<AuditRecord>, Option<Item>)> {
        let out = self
            .client()
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND #sk BETWEEN :lo AND :hi")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", s(subject_pk(subject)))
            .expression_attribute_values(":lo", s(lo))
            .expression_attribute_values(":hi", s(hi))
            .scan_index_forward(forward)
            .consistent_read(true)
            .set_limit(limit)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(map_sdk)?;
        let records = out.items.unwrap_or_default().into_iter().map(items::from_item).collect::<StoreResult<_>>()?;
        Ok((records, out.last_evaluated_key))
    }
}

fn put(
    table: &str,
    item: Item,
    condition: &str,
    values: Vec<(&str, AttributeValue)>,
) -> StoreResult<TransactWriteItem> {
    let mut b = Put::builder().table_name(table).set_item(Some(item)).condition_expression(condition);
    for (k, v) in values {
        b = b.expression_attribute_values(k, v);
    }
    Ok(TransactWriteItem::builder().put(b.build().map_err(StoreError::internal)?).build())
}

/// An item's `ttl` (the head's: the expiry of its last record; a day
/// counter's: the latest expiry of the records it counts), if it has one.
fn ttl_of(item: &Item) -> StoreResult<Option<Timestamp>> {
    match item.get(TTL) {
        Some(AttributeValue::N(t)) => Ok(Some(t.parse().map_err(StoreError::internal)?)),
        _ => Ok(None),
    }
}

#[async_trait]
impl AuditStore for DynamoAuditStore {
    async fn append(
        &self,
        key: &AuditKey,
        event: &AuditEvent,
        expires_at: Timestamp,
    ) -> StoreResult<Option<AuditHead>> {
        // Whether the day's counter lives past this record already (its
        // TTL only ever moves later: a record appended after a later-expiring
        // one of the same day and type must not end the day's count early).
        let mut counter_outlives = false;
        for _ in 0..APPEND_ATTEMPTS {
            let head = self.head(&event.subject).await?;
            let (seq, prev, head_expires) = match &head {
                Some(h) => h.clone(),
                // No head: a new subject, or a head that expired before its
                // records (TTL deletes in no order, up to days late): the
                // chain goes on from its last record, so the next record
                // neither collides with a live one nor breaks the chain.
                None => self.last_record(&event.subject).await?.unwrap_or((0, GENESIS_HASH.to_string(), None)),
            };
            // Never before the record it follows: the TTL then never takes
            // a later record while an earlier one stays, which would read
            // as a break (see `AuditStore::append`).
            let expires_at = head_expires.map_or(expires_at, |h| h.max(expires_at));
            let rec = AuditRecord::chained(event, seq + 1, &prev, expires_at, key);
            let ttl = n(expires_at);

            let marker: Item = [
                (PK.to_string(), s(event_pk(&event.event_id))),
                (SK.to_string(), s("-")),
                (TTL.to_string(), ttl.clone()),
            ]
            .into();
            let head_item: Item = [
                (PK.to_string(), s(subject_pk(&event.subject))),
                (SK.to_string(), s(HEAD)),
                ("seq".to_string(), AttributeValue::N(rec.seq.to_string())),
                ("hash".to_string(), s(rec.hash.clone())),
                (TTL.to_string(), ttl.clone()),
            ]
            .into();
            let mut record = items::to_item(&rec, subject_pk(&event.subject), Some(expires_at))?;
            record.insert(SK.to_string(), s(record_sk(rec.seq)));
            let head_put = match head {
                None => put(&self.table, head_item, "attribute_not_exists(pk)", vec![])?,
                Some(_) => {
                    put(&self.table, head_item, "seq = :prev", vec![(":prev", AttributeValue::N(seq.to_string()))])?
                }
            };
            let day = day_of(rec.at);
            let counter = Update::builder()
                .table_name(&self.table)
                .key(PK, s(day_pk(day)))
                .key(SK, s(rec.event.as_str()))
                .expression_attribute_names("#count", "count")
                .expression_attribute_names(TTL_NAME, TTL)
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":ttl", ttl);
            let counter = if counter_outlives {
                // (`if_not_exists`: the TTL may have taken the counter since.)
                counter.update_expression(format!("ADD #count :one SET {TTL_NAME} = if_not_exists({TTL_NAME}, :ttl)"))
            } else {
                counter
                    .update_expression(format!("ADD #count :one SET {TTL_NAME} = :ttl"))
                    .condition_expression(format!("attribute_not_exists({TTL_NAME}) OR {TTL_NAME} <= :ttl"))
            };
            let tx = vec![
                put(&self.table, marker, "attribute_not_exists(pk)", vec![])?,
                head_put,
                put(&self.table, record, "attribute_not_exists(pk)", vec![])?,
                update_item(counter)?,
            ];
            match self.inner.transact(tx).await {
                Ok(()) => return Ok(Some(AuditHead::of(&rec))),
                Err(e) if e.check_failed(MARKER) => return Ok(None),
                Err(e) if e.check_failed(HEAD_ITEM) || e.check_failed(RECORD) => continue,
                Err(e) if e.check_failed(COUNTER) => counter_outlives = true,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::unavailable(format!("audit chain of {} kept moving; append abandoned", event.subject)))
    }

    async fn list(&self, subject: &str, before: Option<u64>, limit: u32, now: Timestamp) -> StoreResult<AuditPage> {
        let limit = limit.clamp(1, 1000);
        let hi = match before {
            Some(0 | 1) => return Ok(AuditPage { records: vec![], next_before: None }),
            Some(b) => record_sk(b - 1),
            None => record_sk(u64::MAX),
        };
        let want = i32::try_from(limit).unwrap_or(1000) + 1;
        let (records, _) = self.query_records(subject, record_sk(0), hi, false, Some(want), None).await?;
        Ok(AuditPage::newest_first(records, limit, now))
    }

    async fn chain(&self, subject: &str) -> StoreResult<Vec<AuditRecord>> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let (mut page, next) =
                self.query_records(subject, record_sk(0), record_sk(u64::MAX), true, None, start).await?;
            out.append(&mut page);
            match next {
                Some(k) => start = Some(k),
                None => return Ok(out),
            }
        }
    }

    async fn stats(&self, from_day: i64, to_day: i64, now: Timestamp) -> StoreResult<Vec<DayCount>> {
        let mut out = Vec::new();
        for day in from_day..=to_day {
            let resp = self
                .client()
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", s(day_pk(day)))
                .send()
                .await
                .map_err(map_sdk)?;
            for item in resp.items.unwrap_or_default() {
                let event = match item.get(SK) {
                    Some(AttributeValue::S(e)) => AuditEventType::from_stored(e),
                    _ => None,
                };
                let Some(event) = event else { continue };
                // A day's count lives until its latest-expiring record does.
                if ttl_of(&item)?.is_some_and(|ttl| ttl <= now) {
                    continue;
                }
                out.push(DayCount { day, event, count: u64::from(items::number(&item, "count")?) });
            }
        }
        Ok(out)
    }
}
