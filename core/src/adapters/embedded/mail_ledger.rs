//! `MailLedger` on the embedded store's database: a `mail_ledger` table on
//! the same connection, so the claim is one `BEGIN IMMEDIATE` transaction
//! like every other guard here. The table is created on open (`IF NOT
//! EXISTS`) rather than by a schema migration, so the ledger can be added
//! to an existing database without a version bump. The job's code or token
//! is never written here.

use super::{Db, EmbeddedStore};
use crate::clock::Timestamp;
use crate::mail::delivery::{Claim, JobMeta, LEDGER_TTL_SECS, LedgerEntry, MailLedger, ledger_state};
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
    expires_at  INTEGER NOT NULL
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
        db.tx(|tx| Ok(tx.execute_batch(SCHEMA)?)).await?;
        Ok(EmbeddedMailLedger { db })
    }
}

#[async_trait]
impl MailLedger for EmbeddedMailLedger {
    async fn claim(&self, job: &JobMeta, now: Timestamp, lease_secs: i64) -> StoreResult<Claim> {
        let job = job.clone();
        self.db
            .tx(move |tx| {
                let old: Option<(String, Option<i64>)> = tx
                    .prepare_cached("SELECT state, lease_until FROM mail_ledger WHERE id = ?1")?
                    .query_row([&job.id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((state, lease)) = &old {
                    if state == ledger_state::SENT {
                        return Ok(Claim::AlreadySent);
                    }
                    if let Some(until) = lease.filter(|u| *u > now) {
                        return Ok(Claim::Busy { lease_until: until });
                    }
                }
                tx.prepare_cached(
                    "INSERT INTO mail_ledger (id, kind, recipient, state, attempts, lease_until, created_at, \
                     updated_at, expires_at) VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?6, ?7) \
                     ON CONFLICT (id) DO UPDATE SET state = excluded.state, attempts = attempts + 1, \
                     lease_until = excluded.lease_until, reason = NULL, kind = excluded.kind, \
                     recipient = excluded.recipient, updated_at = excluded.updated_at, \
                     expires_at = excluded.expires_at",
                )?
                .execute(params![
                    job.id,
                    job.kind,
                    job.to,
                    ledger_state::SENDING,
                    now + lease_secs,
                    now,
                    now + LEDGER_TTL_SECS
                ])?;
                Ok(Claim::Claimed)
            })
            .await
    }

    async fn mark_sent(&self, id: &str, provider_id: &str, now: Timestamp) -> StoreResult<()> {
        let (id, provider_id) = (id.to_string(), provider_id.to_string());
        self.db
            .tx(move |tx| {
                tx.prepare_cached(
                    "UPDATE mail_ledger SET state = ?2, provider_id = ?3, updated_at = ?4, lease_until = NULL, \
                     reason = NULL WHERE id = ?1",
                )?
                .execute(params![id, ledger_state::SENT, provider_id, now])?;
                Ok(())
            })
            .await
    }

    async fn mark_failed(&self, job: &JobMeta, reason: &str, now: Timestamp) -> StoreResult<()> {
        let (job, reason) = (job.clone(), reason.to_string());
        self.db
            .tx(move |tx| {
                tx.prepare_cached(
                    "INSERT INTO mail_ledger (id, kind, recipient, state, attempts, reason, created_at, updated_at, \
                     expires_at) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?6, ?7) \
                     ON CONFLICT (id) DO UPDATE SET state = excluded.state, reason = excluded.reason, \
                     lease_until = NULL, updated_at = excluded.updated_at, expires_at = excluded.expires_at \
                     WHERE state <> ?8",
                )?
                .execute(params![
                    job.id,
                    job.kind,
                    job.to,
                    ledger_state::FAILED,
                    reason,
                    now,
                    now + LEDGER_TTL_SECS,
                    ledger_state::SENT
                ])?;
                Ok(())
            })
            .await
    }

    async fn release(&self, id: &str, reason: &str, now: Timestamp) -> StoreResult<()> {
        let (id, reason) = (id.to_string(), reason.to_string());
        self.db
            .tx(move |tx| {
                tx.prepare_cached(
                    "UPDATE mail_ledger SET state = ?2, reason = ?3, lease_until = NULL, updated_at = ?4 \
                     WHERE id = ?1 AND state = ?5",
                )?
                .execute(params![id, ledger_state::RETRY, reason, now, ledger_state::SENDING])?;
                Ok(())
            })
            .await
    }

    async fn entry(&self, id: &str) -> StoreResult<Option<LedgerEntry>> {
        let id = id.to_string();
        self.db
            .tx(move |tx| {
                Ok(tx
                    .prepare_cached(
                        "SELECT id, kind, recipient, state, attempts, reason, provider_id, lease_until, updated_at \
                         FROM mail_ledger WHERE id = ?1",
                    )?
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
                        })
                    })
                    .optional()?)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{T0, store};
    use super::*;
    use crate::mail::delivery::LEASE_SECS;

    fn job(id: &str) -> JobMeta {
        JobMeta { id: id.into(), kind: "login_code", to: "a@example.com".into() }
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
        l.mark_failed(&job("a"), "late", T0).await.unwrap();
        let e = l.entry("a").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.attempts, e.reason), (ledger_state::SENT, 2, None));
        assert_eq!(e.provider_id.as_deref(), Some("file.eml"));
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
        l.mark_failed(&job("c"), "bad address", T0).await.unwrap();
        let e = l.entry("c").await.unwrap().unwrap();
        assert_eq!((e.state.as_str(), e.attempts), (ledger_state::FAILED, 0));
        assert_eq!(l.entry("nope").await.unwrap(), None);
    }
}
