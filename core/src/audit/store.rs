//! The port the audit trail is kept behind.

use super::{AuditEvent, AuditEventType, AuditHead, AuditRecord};
use crate::clock::Timestamp;
use crate::keys::AuditKey;
use crate::ports::StoreResult;
use async_trait::async_trait;

/// A page of one subject's records, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Pass as `before` for the next (older) page; `None` on the last page.
    pub next_before: Option<u64>,
}

impl AuditPage {
    /// The page of `list`, from up to `limit + 1` records a store read
    /// newest first: those not expired at `now`, at most `limit`. Expired
    /// records are the oldest (an expiry never comes before the one it
    /// follows), so a read that met one, or fewer than `limit + 1` records,
    /// was the last page.
    pub fn newest_first(mut fetched: Vec<AuditRecord>, limit: u32, now: Timestamp) -> Self {
        let read = fetched.len();
        fetched.retain(|r| r.expires_at > now);
        let more = fetched.len() > limit as usize && fetched.len() == read;
        fetched.truncate(limit as usize);
        let next_before = if more { fetched.last().map(|r| r.seq) } else { None };
        AuditPage { records: fetched, next_before }
    }
}

/// How many events of one type happened on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayCount {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    pub event: AuditEventType,
    pub count: u64,
}

/// The audit trail's storage. Contract:
/// - `append` is idempotent per `AuditEvent::event_id`: a second append of
///   an id already stored writes nothing and answers `Ok(false)`;
/// - `append` is atomic: the record, its subject's chain head, the
///   idempotency marker and the day's counter change together; concurrent
///   appends to one subject are serialised (a lost race is retried inside),
///   so a chain never forks or skips a number;
/// - records are never changed after they are written; retention removes
///   them (`expires_at`), oldest first per subject;
/// - a record's `expires_at` is the one given or its predecessor's,
///   whichever is later, so expiry never decreases along a chain (events
///   of one subject arrive out of time order from different tables, and
///   retention can be shortened; a later record expiring first would leave
///   a gap that reads as a break);
/// - an unknown subject lists as an empty page, never an error.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends `event` to its subject's chain, sealed with `key`, to expire
    /// at `expires_at` or later. The chain's new head if it was added,
    /// `None` if it was there already. The key is the caller's: only the
    /// trail's writer holds it, not every reader of the store.
    async fn append(&self, key: &AuditKey, event: &AuditEvent, expires_at: Timestamp)
    -> StoreResult<Option<AuditHead>>;

    /// Up to `limit` records of `subject` with `seq < before` (all if
    /// `None`), newest first; none whose `expires_at` is at or before
    /// `now`, however late the store deletes it (DynamoDB's TTL can be days
    /// late): retention is a promise about who can read an IP. Along a
    /// chain an expiry never comes before the one it follows, so expired
    /// records are a page's oldest, and a page that left one out is the
    /// last.
    async fn list(&self, subject: &str, before: Option<u64>, limit: u32, now: Timestamp) -> StoreResult<AuditPage>;

    /// Every stored record of `subject`, oldest first (for verification).
    async fn chain(&self, subject: &str) -> StoreResult<Vec<AuditRecord>>;

    /// Counts per event type for each day in `from_day..=to_day` (days
    /// since the epoch, UTC), of records not expired at `now` (on DynamoDB
    /// a day's count lives until its latest-expiring record expires). Days
    /// and types without events are left out; a type this build does not
    /// know (a newer writer's) is counted by its stored name
    /// (`AuditEventType::from_stored`).
    async fn stats(&self, from_day: i64, to_day: i64, now: Timestamp) -> StoreResult<Vec<DayCount>>;
}

/// The UTC day of a timestamp, as days since the epoch.
pub fn day_of(ts: Timestamp) -> i64 {
    ts.div_euclid(86_400)
}

/// `YYYY-MM-DD` for a day number.
pub fn day_string(day: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(day.saturating_mul(86_400))
        .map(|t| {
            let d = t.date();
            format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
        })
        .unwrap_or_default()
}

/// The day number of a `YYYY-MM-DD` date.
pub fn parse_day(s: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(s.trim(), &format).ok()?;
    Some(day_of(date.midnight().assume_utc().unix_timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip() {
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(parse_day("2023-11-14"), Some(day_of(1_700_000_000)));
        assert_eq!(day_string(day_of(1_700_000_000)), "2023-11-14");
        assert_eq!(parse_day("2023-13-01"), None);
        assert_eq!(parse_day("yesterday"), None);
    }
}
