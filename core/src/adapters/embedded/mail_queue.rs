//! The embedded mail queue: a `mail_jobs` table on the store's database.
//! Enqueueing is idempotent by job id (at-least-once producers do not make
//! duplicates) and wakes the consumer; the consumer claims due jobs in
//! order and records each outcome. A job ends `sent` or `failed` with its
//! reason; nothing is dropped.

use super::{Db, EmbeddedStore};
use crate::StoreError;
use crate::mail::MailEnvelope;
use crate::ports::{MailQueue, StoreResult};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

/// The job states, as stored.
pub(crate) const PENDING: &str = "pending";
pub(crate) const SENT: &str = "sent";
pub(crate) const FAILED: &str = "failed";

#[derive(Clone)]
pub struct SqliteMailQueue {
    db: Db,
}

impl std::fmt::Debug for SqliteMailQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteMailQueue").finish_non_exhaustive()
    }
}

/// A job taken for delivery.
#[derive(Debug)]
pub(crate) struct ClaimedJob {
    pub id: String,
    pub body: String,
    pub attempts: u32,
    /// Another job was due when this one was claimed (so the consumer need
    /// not ask again to learn that the queue is empty).
    pub more: bool,
}

impl SqliteMailQueue {
    /// The queue on `store`'s database (same connection, same clock).
    pub fn new(store: &EmbeddedStore) -> Self {
        SqliteMailQueue { db: store.db().clone() }
    }

    /// Jobs still waiting for delivery (including those backing off).
    pub async fn pending_count(&self) -> StoreResult<u64> {
        self.db
            .tx(|tx| Ok(tx.query_row("SELECT COUNT(*) FROM mail_jobs WHERE state = ?1", [PENDING], |r| r.get(0))?))
            .await
    }

    /// The ids of the jobs on the queue, in the order they were queued (and
    /// so delivered): tests read the outbox in this order, since its files'
    /// times tie within a tick of the file system's clock.
    pub async fn ids_in_queue_order(&self) -> StoreResult<Vec<String>> {
        self.db
            .tx(|tx| {
                let mut stmt = tx.prepare_cached("SELECT id FROM mail_jobs ORDER BY rowid")?;
                let ids = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(ids)
            })
            .await
    }

    /// `(state, attempts, last_error)` of a job, if it exists.
    pub async fn job_state(&self, id: &str) -> StoreResult<Option<(String, u32, Option<String>)>> {
        let id = id.to_string();
        self.db
            .tx(move |tx| {
                Ok(tx
                    .query_row("SELECT state, attempts, last_error FROM mail_jobs WHERE id = ?1", [id], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()?)
            })
            .await
    }

    /// Resolves when a job may have been enqueued since the last wait.
    pub(crate) async fn wait_for_work(&self) {
        self.db.mail_ready.notified().await;
    }

    /// Inserts a raw body, as a producer with a bug (or an older or newer
    /// version) might.
    #[cfg(test)]
    pub(crate) async fn enqueue_raw(&self, id: &str, body: &str) -> StoreResult<()> {
        self.insert(id.to_string(), body.to_string()).await
    }

    async fn insert(&self, id: String, body: String) -> StoreResult<()> {
        let now = self.db.now();
        self.db
            .tx(move |tx| {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO mail_jobs (id, body, state, attempts, created_at, not_before) \
                     VALUES (?1, ?2, ?3, 0, ?4, 0)",
                )?
                .execute(params![id, body, PENDING, now])?;
                Ok(())
            })
            .await?;
        // A permit is stored if the consumer is busy, so no wake-up is lost.
        self.db.mail_ready.notify_one();
        Ok(())
    }

    /// The oldest pending job that is due. The claim writes nothing (the
    /// queue's only consumer runs in this process, which owns the database,
    /// and it handles one job at a time): every way a delivery ends moves
    /// the job on (`sent`, `failed`, or backed off with `not_before`), so
    /// the next claim sees the next job. If the process dies mid-delivery,
    /// the job is still pending when it starts again, and the mail ledger's
    /// lease stops a second send until that lease ends. (A lease written
    /// here cost one more write transaction per mail for nothing.)
    pub(crate) async fn claim_next(&self) -> StoreResult<Option<ClaimedJob>> {
        let now = self.db.now();
        self.db
            .tx(move |tx| {
                let mut due = tx.prepare_cached(
                    "SELECT id, body, attempts FROM mail_jobs WHERE state = ?1 AND not_before <= ?2 \
                     ORDER BY rowid LIMIT 2",
                )?;
                let mut rows = due.query_map(params![PENDING, now], |r| {
                    Ok(ClaimedJob { id: r.get(0)?, body: r.get(1)?, attempts: r.get(2)?, more: false })
                })?;
                let job = rows.next().transpose()?.map(|j| ClaimedJob { more: rows.next().is_some(), ..j });
                Ok(job)
            })
            .await
    }

    /// Delivered. Only a pending job moves to `sent`. (After a send, the
    /// ledger's sent mark does this in its own transaction, `ack_sent`;
    /// the consumer calls this when that mark could not be written.)
    pub(crate) async fn mark_sent(&self, id: &str) -> StoreResult<()> {
        let (id, now) = (id.to_string(), self.db.now());
        self.db.tx(move |tx| ack_sent(tx, &id, now)).await
    }

    /// Will never be deliverable: parked with its reason.
    pub(crate) async fn mark_failed(&self, id: &str, reason: &str) -> StoreResult<()> {
        let (id, reason) = (id.to_string(), reason.to_string());
        self.db
            .tx(move |tx| {
                tx.prepare_cached(
                    "UPDATE mail_jobs SET state = ?2, last_error = ?3, attempts = attempts + 1 \
                     WHERE id = ?1 AND state = ?4",
                )?
                .execute(params![id, FAILED, reason, PENDING])?;
                Ok(())
            })
            .await
    }

    /// Not before `until`, without counting an attempt.
    pub(crate) async fn defer(&self, id: &str, until: i64) -> StoreResult<()> {
        let id = id.to_string();
        self.db
            .tx(move |tx| {
                tx.prepare_cached("UPDATE mail_jobs SET not_before = ?2 WHERE id = ?1 AND state = ?3")?
                    .execute(params![id, until, PENDING])?;
                Ok(())
            })
            .await
    }

    /// A delivery attempt failed for a reason that may pass: count it and
    /// back off, or park the job after `max_attempts`. Returns the state the
    /// job is left in.
    pub(crate) async fn record_attempt_failure(
        &self,
        id: &str,
        reason: &str,
        max_attempts: u32,
    ) -> StoreResult<&'static str> {
        let (id, reason, now) = (id.to_string(), reason.to_string(), self.db.now());
        self.db
            .tx(move |tx| {
                let Some(attempts) = tx
                    .query_row(
                        "SELECT attempts FROM mail_jobs WHERE id = ?1 AND state = ?2",
                        params![id, PENDING],
                        |r| r.get::<_, u32>(0),
                    )
                    .optional()?
                else {
                    return Err(StoreError::internal("mail job vanished while being delivered"));
                };
                let attempts = attempts.saturating_add(1);
                let state = if attempts >= max_attempts { FAILED } else { PENDING };
                tx.prepare_cached(
                    "UPDATE mail_jobs SET state = ?2, attempts = ?3, last_error = ?4, not_before = ?5 WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    state,
                    attempts,
                    reason,
                    now.saturating_add(backoff_secs(attempts))
                ])?;
                Ok(state)
            })
            .await
    }
}

/// Moves a pending job to `sent`, inside the caller's transaction, and
/// drops its body: it held the live link or code, and a sent job is never
/// read again (the id stays, so enqueueing it again still does nothing).
pub(crate) fn ack_sent(tx: &rusqlite::Connection, id: &str, now: i64) -> StoreResult<()> {
    tx.prepare_cached(
        "UPDATE mail_jobs SET state = ?2, sent_at = ?3, last_error = NULL, attempts = attempts + 1, body = '' \
         WHERE id = ?1 AND state = ?4",
    )?
    .execute(params![id, SENT, now, PENDING])?;
    Ok(())
}

/// 2, 4, 8, … seconds after the n-th failed attempt, at most 5 minutes.
fn backoff_secs(attempts: u32) -> i64 {
    1i64.checked_shl(attempts.min(30)).unwrap_or(i64::MAX).min(300)
}

#[async_trait]
impl MailQueue for SqliteMailQueue {
    async fn enqueue(&self, job: &MailEnvelope) -> StoreResult<()> {
        self.insert(job.id.clone(), job.to_json()).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::store;
    use super::*;
    use crate::domain::Email;
    use crate::mail::MailJob;

    fn env(id: &str) -> MailEnvelope {
        MailEnvelope::new(id.into(), &Email::parse("a@example.com").unwrap(), 0, None, None, MailJob::SignupAttempt {})
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff_secs(1), 2);
        assert_eq!(backoff_secs(4), 16);
        assert_eq!(backoff_secs(20), 300);
        assert_eq!(backoff_secs(u32::MAX), 300);
    }

    #[tokio::test]
    async fn enqueue_is_idempotent_by_id_and_claims_go_in_order() {
        let (s, clock) = store();
        let q = s.mail_queue();
        q.enqueue(&env("a")).await.unwrap();
        q.enqueue(&env("b")).await.unwrap();
        q.enqueue(&env("a")).await.unwrap();
        assert_eq!(q.pending_count().await.unwrap(), 2);
        let first = q.claim_next().await.unwrap().unwrap();
        // The claim also says whether another job is due.
        assert_eq!((first.id.as_str(), first.more), ("a", true));
        // A claim writes nothing: until `a` is moved on, it is still next.
        assert_eq!(q.claim_next().await.unwrap().unwrap().id, "a");
        assert_eq!(q.job_state("a").await.unwrap(), Some((PENDING.to_string(), 0, None)));
        q.mark_sent("a").await.unwrap();
        let second = q.claim_next().await.unwrap().unwrap();
        assert_eq!((second.id.as_str(), second.more), ("b", false));
        // A sent job enqueued again stays sent.
        q.enqueue(&env("a")).await.unwrap();
        assert_eq!(q.job_state("a").await.unwrap(), Some((SENT.to_string(), 1, None)));
        // A failed attempt backs `b` off; it comes back when that ends.
        assert_eq!(q.record_attempt_failure("b", "disk full", 5).await.unwrap(), PENDING);
        assert!(q.claim_next().await.unwrap().is_none());
        clock.advance(backoff_secs(1));
        assert_eq!(q.claim_next().await.unwrap().unwrap().id, "b");
        assert_eq!(q.job_state("nope").await.unwrap(), None);
    }

    #[tokio::test]
    async fn failures_back_off_then_park_the_job() {
        let (s, clock) = store();
        let q = s.mail_queue();
        q.enqueue(&env("j")).await.unwrap();
        for n in 1..=3u32 {
            assert!(q.claim_next().await.unwrap().is_some());
            assert_eq!(
                q.record_attempt_failure("j", "disk full", 3).await.unwrap(),
                if n < 3 { PENDING } else { FAILED }
            );
            assert!(q.claim_next().await.unwrap().is_none(), "backing off");
            clock.advance(backoff_secs(n));
        }
        assert_eq!(q.job_state("j").await.unwrap(), Some((FAILED.to_string(), 3, Some("disk full".to_string()))));
        assert_eq!(q.pending_count().await.unwrap(), 0);
    }
}
