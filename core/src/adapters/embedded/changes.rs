//! The change feed: one row per data change, written in the same transaction
//! as the change, with the record before and after as JSON. It is the
//! embedded stand-in for a DynamoDB stream with NEW_AND_OLD_IMAGES, read by
//! the audit trail in order of `seq`, which deletes the rows it has applied
//! (in the transaction that moves its checkpoint): the images hold password
//! hashes, and nothing else reads them. Rate-limit counters are not in it.
//! A removal made by the store's TTL sweep (`sweep.rs`) is marked `by_ttl`,
//! as DynamoDB marks its TTL service's REMOVE records.

use super::EmbeddedStore;
use crate::StoreError;
use crate::clock::Timestamp;
use crate::ports::StoreResult;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

/// Which kind of record changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeEntity {
    User,
    Verification,
    Challenge,
    Session,
    Otp,
    /// A mail ledger record (its image is a `LedgerEntry`).
    Mail,
}

impl ChangeEntity {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeEntity::User => "user",
            ChangeEntity::Verification => "verification",
            ChangeEntity::Challenge => "challenge",
            ChangeEntity::Session => "session",
            ChangeEntity::Otp => "otp",
            ChangeEntity::Mail => "mail",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "user" => ChangeEntity::User,
            "verification" => ChangeEntity::Verification,
            "challenge" => ChangeEntity::Challenge,
            "session" => ChangeEntity::Session,
            "otp" => ChangeEntity::Otp,
            "mail" => ChangeEntity::Mail,
            _ => return None,
        })
    }
}

/// What happened to the record (DynamoDB's INSERT / MODIFY / REMOVE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    Insert,
    Modify,
    Remove,
}

impl ChangeOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Insert => "insert",
            ChangeOp::Modify => "modify",
            ChangeOp::Remove => "remove",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "insert" => ChangeOp::Insert,
            "modify" => ChangeOp::Modify,
            "remove" => ChangeOp::Remove,
            _ => return None,
        })
    }
}

/// One row of the feed. `old` is absent for an insert, `new` for a remove;
/// both are the serde JSON of the domain record (`User`, `Session`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Strictly increasing, never reused: a reader's checkpoint.
    pub seq: i64,
    /// When the change was written, by the store's clock.
    pub at: Timestamp,
    pub entity: ChangeEntity,
    /// The record's key: user id, token hash, challenge id, session id,
    /// address hash, or mail job id.
    pub key: String,
    pub op: ChangeOp,
    pub old: Option<serde_json::Value>,
    pub new: Option<serde_json::Value>,
    /// A removal made by the TTL sweep, not by a request.
    pub by_ttl: bool,
}

thread_local! {
    /// Set when this thread wrote a change row in the transaction it is
    /// running ([`super::Db::tx`] runs each transaction on one thread).
    static RECORDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a change row was written since the last call on this thread.
pub(crate) fn take_recorded() -> bool {
    RECORDED.with(|r| r.replace(false))
}

/// Appends a change row for `old` -> `new`, unless nothing changed. Call it
/// inside the transaction that wrote the data.
pub(crate) fn record<T: Serialize + PartialEq>(
    c: &Connection,
    at: Timestamp,
    entity: ChangeEntity,
    key: &str,
    old: Option<&T>,
    new: Option<&T>,
) -> StoreResult<()> {
    let op = match (old, new) {
        (None, None) => return Ok(()),
        (Some(o), Some(n)) if o == n => return Ok(()),
        (None, Some(_)) => ChangeOp::Insert,
        (Some(_), Some(_)) => ChangeOp::Modify,
        (Some(_), None) => ChangeOp::Remove,
    };
    insert(c, at, entity, key, op, old, new, false)
}

/// Appends the change row of a removal by the TTL sweep: `old` is the
/// record it deleted. Call it inside the transaction that deleted it.
pub(crate) fn record_expiry<T: Serialize>(
    c: &Connection,
    at: Timestamp,
    entity: ChangeEntity,
    key: &str,
    old: &T,
) -> StoreResult<()> {
    insert(c, at, entity, key, ChangeOp::Remove, Some(old), None, true)
}

#[allow(clippy::too_many_arguments)]
fn insert<T: Serialize>(
    c: &Connection,
    at: Timestamp,
    entity: ChangeEntity,
    key: &str,
    op: ChangeOp,
    old: Option<&T>,
    new: Option<&T>,
    by_ttl: bool,
) -> StoreResult<()> {
    let json = |v: Option<&T>| v.map(serde_json::to_string).transpose().map_err(StoreError::internal);
    c.prepare_cached(
        "INSERT INTO changes (at, entity, key, op, old_json, new_json, by_ttl) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(rusqlite::params![at, entity.as_str(), key, op.as_str(), json(old)?, json(new)?, by_ttl])?;
    RECORDED.with(|r| r.set(true));
    Ok(())
}

impl EmbeddedStore {
    /// Up to `limit` changes with `seq > after`, oldest first. Start from 0.
    pub async fn changes_after(&self, after: i64, limit: usize) -> StoreResult<Vec<Change>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db()
            .tx(move |tx| {
                let mut stmt = tx.prepare_cached(
                    "SELECT seq, at, entity, key, op, old_json, new_json, by_ttl FROM changes WHERE seq > ?1 \
                     ORDER BY seq LIMIT ?2",
                )?;
                let rows = stmt.query_map(rusqlite::params![after, limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, bool>(7)?,
                    ))
                })?;
                let json = |s: Option<String>| {
                    s.map(|s| serde_json::from_str::<serde_json::Value>(&s)).transpose().map_err(StoreError::internal)
                };
                let mut out = Vec::new();
                for row in rows {
                    let (seq, at, entity, key, op, old, new, by_ttl) = row?;
                    let entity = ChangeEntity::parse(&entity)
                        .ok_or_else(|| StoreError::internal(format!("change {seq}: unknown entity {entity:?}")))?;
                    let op = ChangeOp::parse(&op)
                        .ok_or_else(|| StoreError::internal(format!("change {seq}: unknown op {op:?}")))?;
                    out.push(Change { seq, at, entity, key, op, old: json(old)?, new: json(new)?, by_ttl });
                }
                Ok(out)
            })
            .await
    }
}
