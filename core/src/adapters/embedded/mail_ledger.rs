//! `MailLedger` on the embedded store's database: a `mail_ledger` table on
//! the same connection, so the claim is one `BEGIN IMMEDIATE` transaction
//! like every other guard here. The table is created on open (`IF NOT
//! EXISTS`) rather than by a schema migration, so the ledger can be added
//! to an existing database without a version bump (a column added later,
//! `subject`, is added to an older table on open). The job's code or token
//! is never written here.
//!
//! Every write that brings a record to a state the audit trail records
//! (`ledger_state::AUDITED`: sent, failed) also appends a
//! `ChangeEntity::Mail` row to the change feed in the same transaction, so
//! the audit driver sees each delivery outcome. Claims and retries are left
//! out, as the ledger stream's filter leaves them out on AWS.

use super::changes::{ChangeEntity, record};
use super::{Db, EmbeddedStore};
use crate::clock::Timestamp;
use crate::mail::delivery::{Claim, Holding, JobMeta, LEDGER_TTL_SECS, LedgerEntry, MailLedger, ledger_state};
use crate::ports::StoreResult;
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS mail_ledger (
    id          TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL,
    recipient   TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('sending', 'sent', 'failed', 'retry')),
    attempts    INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    reason      TEXT,
    provider_id TEXT,
    lease_until INTEGER,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    subject     TEXT
);
CREATE INDEX IF NOT EXISTS mail_ledger_by_expiry ON mail_ledger (expires_at);
"#;

/// The SQLite mail ledger. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedMailLedger {
    db: Db,
}

impl std::fmt::Debug for EmbeddedMailLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedMailLedger").finish_non_exhaustive()
    }
}

impl EmbeddedMailLedger {
    /// The ledger on `store`'s database, creating its table if missing.
    pub async fn open(store: &EmbeddedStore) -> StoreResult<Self> {
        let db = store.db().clone();
        db.tx(|tx| {
            tx.execute_batch(SCHEMA)?;
            // A table created before `subject` existed gains the column.
            let has_subject =
                tx.prepare("SELECT 1 FROM pragma_table_info('mail_ledger') WHERE name = 'subject'")?.exists([])?;
            if !has_subject {
                tx.execute_batch("ALTER TABLE mail_ledger ADD COLUMN subject TEXT")?;
            }
            Ok(())
        })
        .await?;
        Ok(EmbeddedMailLedger { db })
    }
}

const SELECT_ENTRY: &str = "SELECT id, kind, recipient, state, attempts, reason, provider_id, lease_until, updated_at, \
                            subject FROM mail_ledger WHERE id = ?1";

fn read_entry(tx: &rusqlite::Connection, id: &str) -> StoreResult<Option<LedgerEntry>> {
    Ok(tx
        .prepare_cached(SELECT_ENTRY)?
        .query_row([id], |r| {
            Ok(LedgerEntry {
                id: r.get(0)?,
                kind: r.get(1)?,
                to: r.get(2)?,
                state: r.get(3)?,
                attempts: r.get(4)?,
                reason: r.get(5)?,
                provider_id: r.get(6)?,
                lease_until: r.get(7)?,
                updated_at: r.get(8)?,
                subject: r.get(9)?,
            })
        })
        .optional()?)
}

/// Runs `write` on record `id` and, if the record is now in an audited
/// state, appends its before and after to the change feed (nothing if it
/// did not change), in the caller's transaction.
fn tracked<T>(
    tx: &rusqlite::Connection,
    id: &str,
    at: Timestamp,
    write: impl FnOnce(Option<&LedgerEntry>) -> StoreResult<T>,
) -> StoreResult<T> {
    let old = read_entry(tx, id)?;
    let out = write(old.as_ref())?;
    let new = read_entry(tx, id)?;
    if new.as_ref().is_some_and(|n| ledger_state::audited(&n.state)) {
        record(tx, at, ChangeEntity::Mail, id, old.as_ref(), new.as_ref())?;
    }
    Ok(out)
}

#[async_trait]
impl MailLedger for EmbeddedMailLedger {
    async fn claim(&self, job: &JobMeta, now: Timestamp, lease_secs: i64) -> StoreResult<Claim> {
        let job = job.clone();
        self.db
            .tx(move |tx| {
                tracked(tx, &job.id, now, |old| {
                    if let Some(old) = old {
                        if old.state == ledger_state::SENT {
                            return Ok(Claim::AlreadySent);
                        }
                        if let Some(until) = old.lease_until.filter(|u| *u > now) {
                            return Ok(Claim::Busy { lease_until: until });
                        }
                    }
                    tx.prepare_cached(
                        "INSERT INTO mail_ledger (id, kind, recipient, state, attempts, lease_until, created_at, \
                         updated_at, expires_at, subject) VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?6, ?7, ?8) \
                         ON CONFLICT (id) DO UPDATE SET state = excluded.state, attempts = attempts + 1, \
                         lease_until = excluded.lease_until, reason = NULL, kind = excluded.kind, \
                         recipient = excluded.recipient, updated_at = excluded.updated_at, \
                         expires_at = excluded.expires_at, subject = COALESCE(excluded.subject, subject)",
                    )?
                    .execute(params![
                        job.id,
                        job.kind,
                        job.to,
                        ledger_state::SENDING,
                        now + lease_secs,
                        now,
                        now + LEDGER_TTL_SECS,
                        job.subject
                    ])?;
                    Ok(Claim::Claimed)
                })
            })
            .await
    }

    async fn mark_sent(&self, id: &str, provider_id: &str, now: Timestamp) -> StoreResult<()> {
        let (id, provider_id) = (id.to_string(), provider_id.to_string());
        self.db
            .tx(move |tx| {
                tracked(tx, &id, now, |_| {
                    tx.prepare_cached(
                        "UPDATE mail_ledger SET state = ?2, provider_id = ?3, updated_at = ?4, lease_until = NULL, \
                         reason = NULL WHERE id = ?1",
                    )?
                    .execute(params![id, ledger_state::SENT, provider_id, now])?;
                    // The queue shares this database: its job is acknowledged
                    // in the same commit (the consumer does not ack a `Sent`).
                    super::mail_queue::ack_sent(tx, &id, now)
                })
            })
            .await
    }

    async fn mark_failed(&self, job: &JobMeta, reason: &str, now: Timestamp, holding: Holding) -> StoreResult<()> {
        let (job, reason) = (job.clone(), reason.to_string());
        self.db
            .tx(move |tx| {
                tracked(tx, &job.id, now, |_| {
                    tx.prepare_cached(
                        "INSERT INTO mail_ledger (id, kind, recipient, state, attempts, reason, created_at, \
                         updated_at, expires_at, subject) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?6, ?7, ?9) \
                         ON CONFLICT (id) DO UPDATE SET state = excluded.state, reason = excluded.reason, \
                         lease_until = NULL, updated_at = excluded.updated_at, expires_at = excluded.expires_at, \
                         subject = COALESCE(excluded.subject, subject) \
                         WHERE state <> ?8 AND (?10 OR lease_until IS NULL OR lease_until <= ?6)",
                    )?
                    .execute(params![
                        job.id,
                        job.kind,
                        job.to,
                        ledger_state::FAILED,
                        reason,
                        now,
                        now + LEDGER_TTL_SECS,
                        ledger_state::SENT,
                        job.subject,
                        holding == Holding::Claim
                    ])?;
                    Ok(())
                })
            })
            .await
    }

    async fn release(&self, id: &str, reason: &str, now: Timestamp) -> StoreResult<()> {
        let (id, reason) = (id.to_string(), reason.to_string());
        self.db
            .tx(move |tx| {
                tracked(tx, &id, now, |_| {
                    tx.prepare_cached(
                        "UPDATE mail_ledger SET state = ?2, reason = ?3, lease_until = NULL, updated_at = ?4 \
                         WHERE id = ?1 AND state = ?5",
                    )?
                    .execute(params![
                        id,
                        ledger_state::RETRY,
                        reason,
                        now,
                        ledger_state::SENDING
                    ])?;
                    Ok(())
                })
            })
            .await
    }

    async fn entry(&self, id: &str) -> StoreResult<Option<LedgerEntry>> {
        let id = id.to_string();
        self.db.tx(move |tx| read_entry(tx, &id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{T0, store};
    use super::*;
    use crate::mail::delivery::LEASE_SECS;

    fn job(id: &str) -> JobMeta {
        JobMeta { id: id.into(), kind: "login_code", to: "a@example.com".into(), subject: Some("user-1".into()) }
    }

    #[tokio::test]
    async fn claims_once_leases_expire_and_sent_is_final() {
        let (s, _) = store();
        let l = EmbeddedMailLedger::open(&s).await.unwrap();
        // Opening twice is fine.
        let l2 = EmbeddedMailLedger::open(&s).await.unwrap();
        assert_eq!(l.claim(&job("a"), T0, LEASE_SECS).await.unwrap(), Claim::Claimed);
        assert_eq!(
            l2.claim(&job("a"), T0 + 1, LEASE_SECS).await.unwrap(),
            Claim::Busy { lease_until: T0 + LEASE_SECS }
        );
        // The first claimer died: the lease ends and another may claim.
        assert_eq!(l2.claim(&job("a"), T0 + LEASE_SECS, LEASE_SECS).await.unwrap(), Claim::Claimed);
        l2.mark_sent("a", "file.eml", T0 + LEASE_SECS).await.unwrap();
        assert_eq!(l.claim(&job("a"), T0 + 10_000, LEASE_SECS).await.unwrap(), Claim::AlreadySent);
        l.mark_failed(&job("a"), "late", T0, Holding::Claim).await.unwrap();
        let e = l.entry("a").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.attempts, e.reason), (ledger_state::SENT, 2, None));
        assert_eq!(e.provider_id.as_deref(), Some("file.eml"));
    }

    #[tokio::test]
    async fn the_sent_mark_acknowledges_the_queued_job_in_the_same_commit() {
        let (s, _) = store();
        let (l, q) = (EmbeddedMailLedger::open(&s).await.unwrap(), s.mail_queue());
        let env = crate::mail::MailEnvelope::new(
            "q1".into(),
            &crate::domain::Email::parse("a@example.com").unwrap(),
            T0,
            None,
            None,
            crate::mail::MailJob::SignupAttempt {},
        );
        crate::ports::MailQueue::enqueue(&q, &env).await.unwrap();
        assert_eq!(l.claim(&job("q1"), T0, LEASE_SECS).await.unwrap(), Claim::Claimed);
        assert_eq!(q.job_state("q1").await.unwrap().unwrap().0, super::super::mail_queue::PENDING);
        l.mark_sent("q1", "file.eml", T0).await.unwrap();
        assert_eq!(q.job_state("q1").await.unwrap(), Some((super::super::mail_queue::SENT.to_string(), 1, None)));
        // A ledger entry with no queued job (the SES worker's case) is fine.
        l.claim(&job("solo"), T0, LEASE_SECS).await.unwrap();
        l.mark_sent("solo", "file.eml", T0).await.unwrap();
    }

    #[tokio::test]
    async fn release_and_park_record_reasons() {
        let (s, _) = store();
        let l = EmbeddedMailLedger::open(&s).await.unwrap();
        l.claim(&job("b"), T0, LEASE_SECS).await.unwrap();
        l.release("b", "disk full", T0).await.unwrap();
        let e = l.entry("b").await.unwrap().unwrap();
        assert_eq!(
            (e.state.as_str(), e.reason.as_deref(), e.lease_until),
            (ledger_state::RETRY, Some("disk full"), None)
        );
        assert_eq!(l.claim(&job("b"), T0, LEASE_SECS).await.unwrap(), Claim::Claimed);
        l.mark_failed(&job("c"), "bad address", T0, Holding::Nothing).await.unwrap();
        let e = l.entry("c").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.attempts), (ledger_state::FAILED, 0));
        assert_eq!(l.entry("nope").await.unwrap(), None);
    }

    /// A delivery without the claim (parking before it claims, or on a last
    /// receive after it gave its claim back) leaves another's live claim
    /// alone; the holder, or anyone once the lease has ended, parks it.
    #[tokio::test]
    async fn a_park_without_the_claim_leaves_a_live_claim_alone() {
        let (s, _) = store();
        let l = EmbeddedMailLedger::open(&s).await.unwrap();
        assert_eq!(l.claim(&job("h"), T0, LEASE_SECS).await.unwrap(), Claim::Claimed);
        l.mark_failed(&job("h"), "bad address", T0 + 1, Holding::Nothing).await.unwrap();
        let e = l.entry("h").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.lease_until), (ledger_state::SENDING, Some(T0 + LEASE_SECS)));
        l.mark_failed(&job("h"), "rejected", T0 + 2, Holding::Claim).await.unwrap();
        let e = l.entry("h").await.unwrap().unwrap();
        assert_eq!(
            (e.state.as_str(), e.reason.as_deref(), e.lease_until),
            (ledger_state::FAILED, Some("rejected"), None)
        );

        assert_eq!(l.claim(&job("d"), T0, LEASE_SECS).await.unwrap(), Claim::Claimed);
        l.mark_failed(&job("d"), "exhausted", T0 + LEASE_SECS, Holding::Nothing).await.unwrap();
        assert_eq!(l.entry("d").await.unwrap().unwrap().state, ledger_state::FAILED, "a lease that has ended");
    }

    #[tokio::test]
    async fn each_outcome_is_a_change_feed_row_in_the_same_transaction() {
        use crate::adapters::embedded::{ChangeEntity, ChangeOp};
        let (s, _) = store();
        let l = EmbeddedMailLedger::open(&s).await.unwrap();
        // Key, op, state before, state after, subject after.
        type MailRow = (String, ChangeOp, Option<String>, String, Option<String>);
        let rows = async || -> Vec<MailRow> {
            let img = |v: Option<serde_json::Value>| v.map(|v| serde_json::from_value::<LedgerEntry>(v).unwrap());
            s.changes_after(0, 1000)
                .await
                .unwrap()
                .into_iter()
                .filter(|c| c.entity == ChangeEntity::Mail)
                .map(|c| {
                    let new = img(c.new).expect("an outcome has an after image");
                    (c.key, c.op, img(c.old).map(|o| o.state), new.state, new.subject)
                })
                .collect()
        };
        let row = |key: &str, op, old: Option<&str>, new: &str| {
            (key.to_string(), op, old.map(str::to_string), new.to_string(), Some("user-1".to_string()))
        };
        // A claim and a retry are no audit event: not in the feed. A refused
        // claim writes nothing at all.
        l.claim(&job("m"), T0, LEASE_SECS).await.unwrap();
        l.claim(&job("m"), T0 + 1, LEASE_SECS).await.unwrap();
        l.release("m", "disk full", T0 + 2).await.unwrap();
        l.claim(&job("m"), T0 + 3, LEASE_SECS).await.unwrap();
        assert_eq!(rows().await, []);
        // The outcomes are, each with the record before it; a failure after
        // the mail went out changes nothing.
        l.mark_sent("m", "file.eml", T0 + 4).await.unwrap();
        l.mark_failed(&job("m"), "late", T0 + 5, Holding::Claim).await.unwrap();
        l.mark_failed(&job("f"), "bad address", T0 + 6, Holding::Nothing).await.unwrap();
        assert_eq!(
            rows().await,
            [
                row("m", ChangeOp::Modify, Some(ledger_state::SENDING), ledger_state::SENT),
                row("f", ChangeOp::Insert, None, ledger_state::FAILED)
            ]
        );
    }

    #[tokio::test]
    async fn an_older_table_gains_the_subject_column() {
        let (s, _) = store();
        s.db()
            .tx(|tx| {
                tx.execute_batch(
                    "CREATE TABLE mail_ledger (id TEXT PRIMARY KEY NOT NULL, kind TEXT NOT NULL, \
                     recipient TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, \
                     reason TEXT, provider_id TEXT, lease_until INTEGER, created_at INTEGER NOT NULL, \
                     updated_at INTEGER NOT NULL, expires_at INTEGER NOT NULL); \
                     INSERT INTO mail_ledger VALUES ('old', 'verify_email', 'a@example.com', 'sent', 1, NULL, \
                     'p', NULL, 1, 1, 9);",
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let l = EmbeddedMailLedger::open(&s).await.unwrap();
        let _again = EmbeddedMailLedger::open(&s).await.unwrap();
        assert_eq!(l.entry("old").await.unwrap().unwrap().subject, None);
        l.claim(&job("new"), T0, LEASE_SECS).await.unwrap();
        assert_eq!(l.entry("new").await.unwrap().unwrap().subject.as_deref(), Some("user-1"));
    }
}
