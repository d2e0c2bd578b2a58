//! The audit trail on the embedded store: an `AuditStore` in the same
//! SQLite database, and the driver that feeds it from the change feed
//! through the same mapping the DynamoDB stream processor uses.
//!
//! Its tables are created on first open (`IF NOT EXISTS`) rather than by a
//! schema migration, so the audit trail can be added to or dropped from a
//! database without touching the data's schema version.

use super::{Change, ChangeEntity, ChangeOp, EmbeddedStore};
use crate::StoreError;
use crate::audit::{
    AuditEvent, AuditEventType, AuditHead, AuditPage, AuditPolicy, AuditRecord, AuditStore, DayCount, GENESIS_HASH,
    Images, SourceChange, audit_events, day_of, log_head,
};
use crate::clock::Timestamp;
use crate::keys::AuditKey;
use crate::ports::StoreResult;
use async_trait::async_trait;
use rusqlite::OptionalExtension;
use std::time::Duration;

/// Records deleted per transaction by [`SqliteAuditStore::purge_expired`].
const PURGE_BATCH: usize = 500;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS audit_records (
    subject    TEXT NOT NULL,
    seq        INTEGER NOT NULL CHECK (seq >= 1),
    event_id   TEXT NOT NULL UNIQUE,
    event      TEXT NOT NULL,
    day        INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    record     TEXT NOT NULL,
    PRIMARY KEY (subject, seq)
);
CREATE INDEX IF NOT EXISTS audit_records_by_day ON audit_records (day, event);
CREATE INDEX IF NOT EXISTS audit_records_by_expiry ON audit_records (expires_at);
CREATE TABLE IF NOT EXISTS audit_heads (
    subject TEXT PRIMARY KEY NOT NULL,
    seq     INTEGER NOT NULL,
    hash    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_feed_checkpoint (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
"#;

/// How long the driver sleeps when no commit wakes it (a safety net: every
/// commit that writes change rows wakes it at once).
const FEED_FALLBACK: Duration = Duration::from_secs(5);
/// How long the driver lets changes gather after a wake-up.
const FEED_COALESCE: Duration = Duration::from_millis(100);
/// How often expired audit records are removed and the store's TTL sweep runs.
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// Changes read per round.
const FEED_BATCH: usize = 200;

/// The audit trail in the embedded database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteAuditStore {
    store: EmbeddedStore,
}

impl SqliteAuditStore {
    /// The audit store on `store`'s database, creating its tables if needed.
    pub async fn open(store: &EmbeddedStore) -> StoreResult<Self> {
        store.db().tx(|tx| Ok(tx.execute_batch(SCHEMA)?)).await?;
        Ok(SqliteAuditStore { store: store.clone() })
    }

    /// The last change-feed sequence number the driver has applied.
    pub async fn checkpoint(&self) -> StoreResult<i64> {
        self.store
            .db()
            .tx(|tx| {
                Ok(tx
                    .query_row("SELECT seq FROM audit_feed_checkpoint WHERE id = 1", [], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0))
            })
            .await
    }

    pub async fn set_checkpoint(&self, seq: i64) -> StoreResult<()> {
        self.store.db().tx(move |tx| write_checkpoint(tx, seq)).await
    }

    /// Appends `events` (each with its expiry), moves the checkpoint to
    /// `seq` and deletes the change rows up to it but those in `kept`, all
    /// in one transaction: a batch of the feed is applied whole or not at
    /// all, and a row is gone only once its events are stored. (`kept`: rows
    /// that did not decode, left below the checkpoint to be looked at.)
    /// Returns the new head of each event that was new, with its subject, in
    /// the order appended.
    ///
    /// The rows hold whole before/after images (password hashes among
    /// them) and the audit trail is their only reader, so they are kept no
    /// longer than it needs them. `seq` is AUTOINCREMENT, so an emptied
    /// table never hands out a number at or below the checkpoint again.
    pub async fn apply_batch(
        &self,
        key: &AuditKey,
        events: Vec<(AuditEvent, Timestamp)>,
        seq: i64,
        kept: Vec<i64>,
    ) -> StoreResult<Vec<(String, AuditHead)>> {
        let key = key.clone();
        self.store
            .db()
            .tx(move |tx| {
                let mut heads = Vec::new();
                for (event, expires_at) in &events {
                    if let Some(head) = append_in(tx, &key, event, *expires_at)? {
                        heads.push((event.subject.clone(), head));
                    }
                }
                write_checkpoint(tx, seq)?;
                let kept = serde_json::to_string(&kept).map_err(StoreError::internal)?;
                tx.prepare_cached(
                    "DELETE FROM changes WHERE seq <= ?1 AND seq NOT IN (SELECT value FROM json_each(?2))",
                )?
                .execute(rusqlite::params![seq, kept])?;
                Ok(heads)
            })
            .await
    }

    /// Removes records whose retention has ended (the embedded TTL), in
    /// transactions of at most [`PURGE_BATCH`] records: a runner that was off
    /// for weeks does not hold the database (every request waits on it) for
    /// one long delete. Returns how many went.
    pub async fn purge_expired(&self, now: Timestamp) -> StoreResult<usize> {
        let mut purged = 0;
        loop {
            let n = self
                .store
                .db()
                .tx(move |tx| {
                    Ok(tx
                        .prepare_cached(
                            "DELETE FROM audit_records WHERE rowid IN \
                             (SELECT rowid FROM audit_records WHERE expires_at <= ?1 LIMIT ?2)",
                        )?
                        .execute(rusqlite::params![now, PURGE_BATCH])?)
                })
                .await?;
            purged += n;
            if n < PURGE_BATCH {
                return Ok(purged);
            }
            // Others' calls get the database between two batches.
            tokio::task::yield_now().await;
        }
    }

    /// The database this store lives in (tests tamper with it through this).
    #[cfg(test)]
    pub(crate) fn raw(&self) -> &EmbeddedStore {
        &self.store
    }
}

fn write_checkpoint(tx: &rusqlite::Connection, seq: i64) -> StoreResult<()> {
    tx.prepare_cached(
        "INSERT INTO audit_feed_checkpoint (id, seq) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
    )?
    .execute([seq])?;
    Ok(())
}

/// Appends `event` to its subject's hash chain inside `tx`, sealed with
/// `key`, unless an event with its id is already there (appends are
/// idempotent). Returns the new head if it was added.
fn append_in(
    tx: &rusqlite::Connection,
    key: &AuditKey,
    event: &AuditEvent,
    expires_at: Timestamp,
) -> StoreResult<Option<AuditHead>> {
    if tx.prepare_cached("SELECT 1 FROM audit_records WHERE event_id = ?1")?.exists([&event.event_id])? {
        return Ok(None);
    }
    // The head, with the expiry of the record it names (none if that one
    // was already purged: it had expired, and so ends before this one).
    let head: Option<(i64, String, Option<Timestamp>)> = tx
        .prepare_cached(
            "SELECT h.seq, h.hash, r.expires_at FROM audit_heads h \
             LEFT JOIN audit_records r ON r.subject = h.subject AND r.seq = h.seq WHERE h.subject = ?1",
        )?
        .query_row([&event.subject], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let (seq, prev, head_expires) = head.unwrap_or((0, GENESIS_HASH.to_string(), None));
    // Never before the record it follows (see `AuditStore::append`).
    let expires_at = head_expires.map_or(expires_at, |h| h.max(expires_at));
    let seq = u64::try_from(seq).map_err(StoreError::internal)? + 1;
    let rec = AuditRecord::chained(event, seq, &prev, expires_at, key);
    let json = serde_json::to_string(&rec).map_err(StoreError::internal)?;
    let seq_i = i64::try_from(seq).map_err(StoreError::internal)?;
    tx.prepare_cached(
        "INSERT INTO audit_records (subject, seq, event_id, event, day, expires_at, record) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(rusqlite::params![
        rec.subject,
        seq_i,
        rec.event_id,
        rec.event.as_str(),
        day_of(rec.at),
        expires_at,
        json
    ])?;
    tx.prepare_cached(
        "INSERT INTO audit_heads (subject, seq, hash) VALUES (?1, ?2, ?3) \
         ON CONFLICT (subject) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
    )?
    .execute(rusqlite::params![rec.subject, seq_i, rec.hash])?;
    Ok(Some(AuditHead::of(&rec)))
}

fn parse_record(json: &str) -> StoreResult<AuditRecord> {
    serde_json::from_str(json).map_err(StoreError::internal)
}

#[async_trait]
impl AuditStore for SqliteAuditStore {
    async fn append(
        &self,
        key: &AuditKey,
        event: &AuditEvent,
        expires_at: Timestamp,
    ) -> StoreResult<Option<AuditHead>> {
        let (key, event) = (key.clone(), event.clone());
        self.store.db().tx(move |tx| append_in(tx, &key, &event, expires_at)).await
    }

    async fn list(&self, subject: &str, before: Option<u64>, limit: u32, now: Timestamp) -> StoreResult<AuditPage> {
        let subject = subject.to_string();
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let limit = limit.max(1);
        self.store
            .db()
            .tx(move |tx| {
                let mut stmt = tx.prepare_cached(
                    "SELECT record FROM audit_records WHERE subject = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
                )?;
                let rows = stmt
                    .query_map(rusqlite::params![subject, before, i64::from(limit) + 1], |r| r.get::<_, String>(0))?;
                let mut records = Vec::new();
                for row in rows {
                    records.push(parse_record(&row?)?);
                }
                Ok(AuditPage::newest_first(records, limit, now))
            })
            .await
    }

    async fn chain(&self, subject: &str) -> StoreResult<Vec<AuditRecord>> {
        let subject = subject.to_string();
        self.store
            .db()
            .tx(move |tx| {
                let mut stmt = tx.prepare_cached("SELECT record FROM audit_records WHERE subject = ?1 ORDER BY seq")?;
                let rows = stmt.query_map([subject], |r| r.get::<_, String>(0))?;
                let mut out = Vec::new();
                for row in rows {
                    out.push(parse_record(&row?)?);
                }
                Ok(out)
            })
            .await
    }

    async fn stats(&self, from_day: i64, to_day: i64, now: Timestamp) -> StoreResult<Vec<DayCount>> {
        self.store
            .db()
            .tx(move |tx| {
                let mut stmt = tx.prepare_cached(
                    "SELECT day, event, COUNT(*) FROM audit_records WHERE day BETWEEN ?1 AND ?2 AND expires_at > ?3 \
                     GROUP BY day, event ORDER BY day, event",
                )?;
                let rows = stmt.query_map([from_day, to_day, now], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (day, event, count) = row?;
                    // As DynamoDB's: a type a newer build wrote counts by its name.
                    let Some(event) = AuditEventType::from_stored(&event) else { continue };
                    out.push(DayCount { day, event, count: u64::try_from(count).unwrap_or(0) });
                }
                Ok(out)
            })
            .await
    }
}

/// A feed row as the mapping's input. A removal by the store's TTL sweep
/// is an expiry, as a DynamoDB TTL REMOVE is on AWS.
pub fn source_change(c: &Change) -> StoreResult<SourceChange> {
    fn img<T: serde::de::DeserializeOwned>(v: &Option<serde_json::Value>) -> StoreResult<Option<T>> {
        v.clone().map(serde_json::from_value).transpose().map_err(StoreError::internal)
    }
    let images = match c.entity {
        ChangeEntity::User => Images::User(img(&c.old)?, img(&c.new)?),
        ChangeEntity::Verification => Images::Verification(img(&c.old)?, img(&c.new)?),
        ChangeEntity::Challenge => Images::Challenge(img(&c.old)?, img(&c.new)?),
        ChangeEntity::Session => Images::Session(img(&c.old)?, img(&c.new)?),
        ChangeEntity::Otp => Images::Otp(img(&c.old)?, img(&c.new)?),
        ChangeEntity::Mail => Images::Mail(img(&c.old)?, img(&c.new)?),
    };
    let expired_by_ttl = c.by_ttl && c.op == ChangeOp::Remove;
    Ok(SourceChange { source_id: format!("feed:{}", c.seq), at: c.at, expired_by_ttl, images })
}

/// Applies every change after the checkpoint to the audit trail, moves
/// the checkpoint and deletes the applied rows, one transaction per batch
/// of up to [`FEED_BATCH`] changes. A row that does not decode is logged
/// and skipped (it must not block the feed), and kept in `changes` below the
/// checkpoint, where the feed no longer reads it, for someone to look at
/// (docs/operations.md); a storage error stops the round, and the next round
/// repeats that batch. Returns the events added, each sealed with `key`;
/// each one's new head is logged (`audit head`, as the stream processor
/// logs it) once its batch is stored.
pub async fn drain_change_feed(
    store: &EmbeddedStore,
    audit: &SqliteAuditStore,
    key: &AuditKey,
    policy: &AuditPolicy,
    retention_secs: i64,
) -> StoreResult<usize> {
    let mut after = audit.checkpoint().await?;
    let mut added = 0;
    loop {
        let batch = store.changes_after(after, FEED_BATCH).await?;
        let Some(last) = batch.last() else { return Ok(added) };
        let last = last.seq;
        let (mut events, mut kept) = (Vec::new(), Vec::new());
        for c in &batch {
            match source_change(c) {
                Ok(change) => events.extend(audit_events(&change, policy).into_iter().map(|e| {
                    let expires = e.at.saturating_add(retention_secs);
                    (e, expires)
                })),
                Err(e) => {
                    tracing::error!(seq = c.seq, error = %e, "change feed row does not decode; skipped, and kept");
                    kept.push(c.seq);
                }
            }
        }
        let heads = audit.apply_batch(key, events, last, kept).await?;
        for (subject, head) in &heads {
            log_head(subject, head);
        }
        added += heads.len();
        if batch.len() < FEED_BATCH {
            return Ok(added); // that was the tail of the feed
        }
        after = last;
    }
}

/// Runs [`drain_change_feed`] on a thread of its own until the returned task
/// is aborted, purges audit records past their retention and, as often,
/// runs the store's TTL sweep ([`EmbeddedStore::sweep_expired`]). It sleeps until a commit writes change rows
/// (or [`FEED_FALLBACK`] passes), then waits [`FEED_COALESCE`] so that a busy
/// spell is applied in a few transactions rather than one per change.
pub fn spawn_audit_feed(
    store: EmbeddedStore,
    audit: SqliteAuditStore,
    key: AuditKey,
    policy: AuditPolicy,
    retention_secs: i64,
) -> tokio::task::JoinHandle<()> {
    super::spawn_background("audit-feed", async move {
        let changes_ready = store.db().changes_ready.clone();
        let mut next_purge = tokio::time::Instant::now();
        loop {
            let round = async {
                drain_change_feed(&store, &audit, &key, &policy, retention_secs).await?;
                if tokio::time::Instant::now() >= next_purge {
                    audit.purge_expired(store.db().now()).await?;
                    // Its removals wake this loop for the next round.
                    let swept = store.sweep_expired().await?;
                    if swept.total() > 0 {
                        tracing::info!(?swept, "TTL sweep: records past their expiry deleted");
                    }
                    next_purge = tokio::time::Instant::now() + PURGE_EVERY;
                }
                Ok::<_, crate::StoreError>(())
            };
            match round.await {
                Ok(()) => {
                    tokio::select! {
                        _ = changes_ready.notified() => {}
                        _ = tokio::time::sleep(FEED_FALLBACK) => {}
                    }
                    tokio::time::sleep(FEED_COALESCE).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "audit feed round failed; retrying");
                    tokio::time::sleep(FEED_FALLBACK).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{T0, challenge, key, store, user};
    use super::*;
    use crate::audit::{AuditEventType as T, verify_chain};
    use crate::domain::{User, VerificationRecord};
    use crate::ports::LockCheck;
    use crate::ports::{ChallengeStore, UserStore};

    const RETENTION: i64 = 400 * 86_400;

    async fn registered(s: &EmbeddedStore) -> User {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let u = user(&format!("u{}", &id[..10]), &format!("u{}@example.com", &id[..10]));
        let v = VerificationRecord {
            token_hash: format!("tok{id}"),
            user_id: u.id,
            created_at: T0,
            expires_at: T0 + 100,
            used_at: None,
            meta: u.meta.clone(),
        };
        s.create_user(&u, &v, i64::MIN).await.unwrap();
        s.consume_verification(&v, T0 + 1, &u.meta).await.unwrap();
        let c = challenge(&u, "h");
        s.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &u.meta).await.unwrap();
        s.record_challenge_failure(&c.id, &u.id, 6, u32::MAX, c.password_epoch, &u.meta).await.unwrap();
        u
    }

    #[tokio::test]
    async fn the_feed_becomes_a_chain_once_however_often_it_is_replayed() {
        let (s, _) = store();
        let audit = SqliteAuditStore::open(&s).await.unwrap();
        let u = registered(&s).await;
        let policy = AuditPolicy::default();
        let added = drain_change_feed(&s, &audit, &key(), &policy, RETENTION).await.unwrap();
        assert_eq!(added, 5);
        let chain = audit.chain(&u.id.to_string()).await.unwrap();
        let kinds: Vec<T> = chain.iter().map(|r| r.event).collect();
        assert_eq!(
            kinds,
            [T::UserRegistered, T::VerificationMailRequested, T::EmailVerified, T::LoginCodeIssued, T::CodeFailed]
        );
        assert_eq!(chain[4].attempts_left, Some(5));
        assert_eq!(chain[0].expires_at, T0 + RETENTION);
        verify_chain(&key(), &u.id.to_string(), &chain).unwrap();

        // A replay of the whole feed adds nothing.
        audit.set_checkpoint(0).await.unwrap();
        assert_eq!(drain_change_feed(&s, &audit, &key(), &policy, RETENTION).await.unwrap(), 0);
        assert_eq!(audit.chain(&u.id.to_string()).await.unwrap(), chain);

        let day = day_of(T0);
        let stats = audit.stats(day, day, T0).await.unwrap();
        assert!(stats.contains(&DayCount { day, event: T::UserRegistered, count: 1 }), "{stats:?}");
    }

    #[tokio::test]
    async fn the_spawned_feed_is_woken_by_a_commit_not_by_its_timer() {
        let (s, _) = store();
        let audit = SqliteAuditStore::open(&s).await.unwrap();
        let feed = spawn_audit_feed(s.clone(), audit.clone(), key(), AuditPolicy::default(), RETENTION);
        // Let it find the feed empty and go to sleep.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let woke = tokio::time::Instant::now();
        let u = registered(&s).await;
        // Only a wake-up by the commits can deliver the whole trail before the
        // fallback timer (5 s) fires.
        loop {
            if audit.chain(&u.id.to_string()).await.unwrap().len() == 5 {
                break;
            }
            assert!(
                woke.elapsed() < FEED_FALLBACK - Duration::from_millis(500),
                "the feed was not woken by the commit"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        feed.abort();
        // The driver's own commits write no change rows, so they must not
        // signal it (or it would wake itself forever).
        let _ = s.db().changes_ready_pending(); // take any wake-up left by the user's commits
        audit.apply_batch(&key(), Vec::new(), 1_000_000, Vec::new()).await.unwrap();
        audit.purge_expired(T0).await.unwrap();
        assert!(!s.db().changes_ready_pending(), "a commit without change rows signalled the feed");
        registered(&s).await;
        assert!(s.db().changes_ready_pending(), "a commit with change rows did not signal the feed");
    }

    async fn feed_seqs(s: &EmbeddedStore) -> Vec<i64> {
        s.changes_after(0, 10_000).await.unwrap().iter().map(|c| c.seq).collect()
    }

    #[tokio::test]
    async fn the_feed_deletes_the_rows_it_has_applied_and_keeps_the_rest() {
        let (s, _) = store();
        let audit = SqliteAuditStore::open(&s).await.unwrap();
        let policy = AuditPolicy::default();
        let first = registered(&s).await;
        let written = feed_seqs(&s).await.len();
        assert!(written >= 5, "{written}");
        drain_change_feed(&s, &audit, &key(), &policy, RETENTION).await.unwrap();
        let handled = audit.checkpoint().await.unwrap();
        assert!(feed_seqs(&s).await.is_empty(), "the applied rows (old password hashes among them) are gone");

        // Rows written after the checkpoint stay until a round applies them;
        // an emptied table does not number them from 1 again.
        let second = registered(&s).await;
        let pending = feed_seqs(&s).await;
        assert_eq!(pending.len(), written);
        assert!(pending.iter().all(|&seq| seq > handled), "{pending:?} after {handled}");
        // A round that fails leaves the rows and the checkpoint as they were.
        s.db()
            .tx(|tx| {
                Ok(tx.execute_batch(
                    "CREATE TRIGGER audit_down BEFORE INSERT ON audit_records BEGIN SELECT RAISE(ABORT, 'down'); END;",
                )?)
            })
            .await
            .unwrap();
        assert!(drain_change_feed(&s, &audit, &key(), &policy, RETENTION).await.is_err());
        assert_eq!((feed_seqs(&s).await, audit.checkpoint().await.unwrap()), (pending, handled));
        s.db().tx(|tx| Ok(tx.execute_batch("DROP TRIGGER audit_down;")?)).await.unwrap();
        assert_eq!(drain_change_feed(&s, &audit, &key(), &policy, RETENTION).await.unwrap(), 5);
        assert!(feed_seqs(&s).await.is_empty());
        for u in [first, second] {
            assert_eq!(audit.chain(&u.id.to_string()).await.unwrap().len(), 5);
        }
    }

    /// A row that does not decode (a bug, or a newer build's row read by an
    /// older one) does not stop the feed, and is not deleted with the rows
    /// around it: it stays below the checkpoint, to be looked at.
    #[tokio::test]
    async fn a_row_that_does_not_decode_is_skipped_and_kept() {
        let (s, _) = store();
        let audit = SqliteAuditStore::open(&s).await.unwrap();
        let policy = AuditPolicy::default();
        let before = registered(&s).await;
        s.db()
            .tx(|tx| {
                Ok(tx.execute(
                    "INSERT INTO changes (at, entity, key, op, old_json, new_json) \
                     VALUES (1, 'user', 'USER#odd', 'insert', NULL, '{\"id\": 5}')",
                    [],
                )?)
            })
            .await
            .unwrap();
        let odd = *feed_seqs(&s).await.last().unwrap();
        let after = registered(&s).await;
        assert_eq!(drain_change_feed(&s, &audit, &key(), &policy, RETENTION).await.unwrap(), 10);
        for u in [before, after] {
            assert_eq!(audit.chain(&u.id.to_string()).await.unwrap().len(), 5, "the feed stopped at the odd row");
        }
        assert!(audit.checkpoint().await.unwrap() > odd);
        let left: Vec<(i64, String)> = s
            .db()
            .tx(|tx| {
                let mut q = tx.prepare("SELECT seq, key FROM changes")?;
                let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
                Ok(rows)
            })
            .await
            .unwrap();
        assert_eq!(left, [(odd, "USER#odd".to_string())], "only the odd row is kept");
        // Not read again: the next round adds nothing and keeps it.
        assert_eq!(drain_change_feed(&s, &audit, &key(), &policy, RETENTION).await.unwrap(), 0);
        assert!(feed_seqs(&s).await.contains(&odd));
    }

    /// The `i`-th event of subject `u1`, `i` seconds after `T0`.
    fn code_verified(i: i64) -> AuditEvent {
        AuditEvent {
            event_id: format!("e{i}"),
            subject: "u1".into(),
            event: T::CodeVerified,
            at: T0 + i,
            outcome: crate::audit::Outcome::Success,
            reason: None,
            attempts_left: None,
            request_id: None,
            ip: None,
            user_agent: None,
        }
    }

    /// An event appended with an earlier expiry than the record before it
    /// (another table's change that arrived late, or a shorter retention)
    /// expires with that record: the purge then never leaves a gap.
    #[tokio::test]
    async fn a_record_never_expires_before_the_one_it_follows() {
        let (s, _) = store();
        let audit = SqliteAuditStore::open(&s).await.unwrap();
        for (i, expires) in [(1, T0 + 200), (2, T0 + 100), (3, T0 + 300)] {
            assert!(audit.append(&key(), &code_verified(i), expires).await.unwrap().is_some());
        }
        let chain = audit.chain("u1").await.unwrap();
        assert_eq!(chain.iter().map(|r| r.expires_at).collect::<Vec<_>>(), [T0 + 200, T0 + 200, T0 + 300]);
        audit.purge_expired(T0 + 150).await.unwrap();
        assert_eq!(audit.chain("u1").await.unwrap().len(), 3, "nothing expired out of order");
        audit.purge_expired(T0 + 200).await.unwrap();
        let rest = audit.chain("u1").await.unwrap();
        assert_eq!(rest.iter().map(|r| r.seq).collect::<Vec<_>>(), [3]);
        verify_chain(&key(), "u1", &rest).unwrap();
    }

    /// A store whose trail holds one registered user's five records, and
    /// that user's id.
    async fn one_trail() -> (SqliteAuditStore, String) {
        let (s, _) = store();
        let audit = SqliteAuditStore::open(&s).await.unwrap();
        let u = registered(&s).await;
        drain_change_feed(&s, &audit, &key(), &AuditPolicy::default(), RETENTION).await.unwrap();
        (audit, u.id.to_string())
    }

    #[tokio::test]
    async fn pages_newest_first() {
        let (audit, subject) = one_trail().await;
        let p1 = audit.list(&subject, None, 2, T0).await.unwrap();
        assert_eq!(p1.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 4]);
        let p2 = audit.list(&subject, p1.next_before, 2, T0).await.unwrap();
        assert_eq!(p2.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 2]);
        let p3 = audit.list(&subject, p2.next_before, 2, T0).await.unwrap();
        assert_eq!((p3.records.len(), p3.next_before), (1, None));
        assert!(audit.list("nobody", None, 10, T0).await.unwrap().records.is_empty());
    }

    /// Records past their expiry are neither listed nor counted, before the
    /// purge (every 10 minutes here, days late on DynamoDB) deletes them; a
    /// page that reached them is the last.
    #[tokio::test]
    async fn expired_records_are_not_listed_or_counted_before_they_are_deleted() {
        let (s, _) = store();
        let audit = SqliteAuditStore::open(&s).await.unwrap();
        for i in 1..=5 {
            audit.append(&key(), &code_verified(i), T0 + 10 * i).await.unwrap();
        }
        let seqs = |p: &AuditPage| p.records.iter().map(|r| r.seq).collect::<Vec<_>>();
        // At T0 + 20 the records expiring at T0 + 10 and T0 + 20 are gone.
        let p1 = audit.list("u1", None, 2, T0 + 20).await.unwrap();
        assert_eq!((seqs(&p1), p1.next_before), (vec![5, 4], Some(4)));
        let p2 = audit.list("u1", p1.next_before, 2, T0 + 20).await.unwrap();
        assert_eq!((seqs(&p2), p2.next_before), (vec![3], None));
        assert_eq!(seqs(&audit.list("u1", None, 10, T0 + 19).await.unwrap()), [5, 4, 3, 2]);
        let day = day_of(T0);
        let count = |now| {
            let audit = &audit;
            async move { audit.stats(day, day, now).await.unwrap().iter().map(|c| c.count).sum::<u64>() }
        };
        assert_eq!((count(T0).await, count(T0 + 20).await, count(T0 + 50).await), (5, 3, 0));
        assert_eq!(audit.chain("u1").await.unwrap().len(), 5, "nothing was deleted: verification still reads them");
    }

    /// A record of a type a newer stream processor wrote (read here during
    /// a deploy, or after a rollback) lists, counts and verifies by its name;
    /// the chain goes on after it.
    #[tokio::test]
    async fn a_type_this_build_does_not_know_reads_by_its_name() {
        let (s, _) = store();
        let audit = SqliteAuditStore::open(&s).await.unwrap();
        let newer = T::from_stored("passkey_added").unwrap();
        assert_eq!((newer, newer.as_str()), (T::Other("passkey_added"), "passkey_added"));
        audit.append(&key(), &code_verified(1), T0 + 100).await.unwrap();
        audit.append(&key(), &AuditEvent { event: newer, ..code_verified(2) }, T0 + 100).await.unwrap();
        audit.append(&key(), &code_verified(3), T0 + 100).await.unwrap();
        let page = audit.list("u1", None, 10, T0).await.unwrap();
        let kinds: Vec<&str> = page.records.iter().map(|r| r.event.as_str()).collect();
        assert_eq!(kinds, ["code_verified", "passkey_added", "code_verified"]);
        verify_chain(&key(), "u1", &audit.chain("u1").await.unwrap()).unwrap();
        let stats = audit.stats(day_of(T0), day_of(T0), T0).await.unwrap();
        assert!(stats.iter().any(|c| c.event == newer && c.count == 1), "{stats:?}");
    }

    #[tokio::test]
    async fn editing_a_stored_record_breaks_the_chain_at_that_record() {
        let (audit, subject) = one_trail().await;
        let sub = subject.clone();
        audit
            .raw()
            .db()
            .tx(move |tx| {
                tx.execute(
                    "UPDATE audit_records SET record = json_set(record, '$.ip', '198.51.100.9') \
                     WHERE subject = ?1 AND seq = 3",
                    [sub],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let e = verify_chain(&key(), &subject, &audit.chain(&subject).await.unwrap()).unwrap_err();
        assert_eq!(e.seq, 3);
    }

    /// The attack a live probe made on a copy of an unsealed trail, on the
    /// database itself: three records removed, the rest renumbered and
    /// re-hashed, the head moved to the new last record. The hashes hold
    /// again; the seals cannot follow without the key.
    #[tokio::test]
    async fn records_removed_and_the_rest_rehashed_in_the_database_are_found() {
        let (audit, subject) = one_trail().await;
        let mut forged = audit.chain(&subject).await.unwrap();
        forged.drain(1..4);
        let mut prev = forged[0].hash.clone();
        for (seq, r) in (2..).zip(forged.iter_mut().skip(1)) {
            (r.seq, r.prev_hash) = (seq, prev);
            r.hash = crate::audit::record_hash(r);
            prev = r.hash.clone();
        }
        let (rows, sub) = (forged.clone(), subject.clone());
        audit
            .raw()
            .db()
            .tx(move |tx| {
                tx.execute("DELETE FROM audit_records WHERE subject = ?1 AND seq > 1", [&sub])?;
                for r in &rows[1..] {
                    tx.execute(
                        "INSERT INTO audit_records (subject, seq, event_id, event, day, expires_at, record) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        rusqlite::params![
                            r.subject,
                            r.seq as i64,
                            r.event_id,
                            r.event.as_str(),
                            day_of(r.at),
                            r.expires_at,
                            serde_json::to_string(r).unwrap()
                        ],
                    )?;
                }
                let last = rows.last().unwrap();
                tx.execute(
                    "UPDATE audit_heads SET seq = ?2, hash = ?3 WHERE subject = ?1",
                    rusqlite::params![sub, last.seq as i64, last.hash],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let stored = audit.chain(&subject).await.unwrap();
        assert_eq!(stored, forged);
        let e = verify_chain(&key(), &subject, &stored).unwrap_err();
        assert_eq!((e.seq, e.reason), (2, "seal does not match: changed, or sealed with another key"));
        // The links alone hold: what the trail could not tell before it
        // was sealed.
        let unsealed: Vec<_> = stored.into_iter().map(|r| AuditRecord { seal: None, ..r }).collect();
        let report = crate::audit::verify_chain_at(&key().into(), &subject, &unsealed, Timestamp::MIN, Timestamp::MAX);
        assert_eq!(report.map(|r| (r.records, r.unsealed)), Ok((2, 2)));
    }

    /// A backlog of expired records (a runner off for weeks) goes in
    /// batches, all of it, and nothing that is still live.
    #[tokio::test]
    async fn retention_purges_a_backlog_in_batches_and_keeps_live_records() {
        let (s, _) = store();
        let audit = SqliteAuditStore::open(&s).await.unwrap();
        let backlog = 2 * PURGE_BATCH + 1;
        let events: Vec<_> = (1..=backlog as i64 + 2)
            .map(|i| (code_verified(i), if i <= backlog as i64 { T0 + 100 } else { T0 + 10_000 }))
            .collect();
        audit.apply_batch(&key(), events, 0, Vec::new()).await.unwrap();
        assert_eq!(audit.purge_expired(T0 + 99).await.unwrap(), 0);
        assert_eq!(audit.purge_expired(T0 + 100).await.unwrap(), backlog);
        let left: Vec<u64> = audit.chain("u1").await.unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(left, [backlog as u64 + 1, backlog as u64 + 2]);
    }

    #[tokio::test]
    async fn retention_purges_and_a_bad_row_does_not_block_the_feed() {
        let (s, _) = store();
        let audit = SqliteAuditStore::open(&s).await.unwrap();
        s.db()
            .tx(|tx| {
                tx.execute(
                    "INSERT INTO changes (at, entity, key, op, old_json, new_json) \
                     VALUES (1, 'user', 'x', 'insert', NULL, '{\"not\": \"a user\"}')",
                    [],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let u = registered(&s).await;
        assert_eq!(drain_change_feed(&s, &audit, &key(), &AuditPolicy::default(), 10).await.unwrap(), 5);
        assert_eq!(audit.purge_expired(T0 + 10).await.unwrap(), 5);
        assert!(audit.chain(&u.id.to_string()).await.unwrap().is_empty());
    }
}
