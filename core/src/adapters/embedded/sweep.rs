//! The embedded store's TTL sweep: what DynamoDB's TTL does on AWS. A
//! verification link, login challenge, session or standalone code is
//! deleted [`TTL_GRACE_SECS`] after its own `expires_at` (the same `ttl` the
//! DynamoDB adapter writes), and the change feed gets the removal marked
//! `by_ttl`, so the audit trail records `verification_expired`,
//! `code_expired`, `session_expired` or `otp_expired` exactly where a TTL
//! REMOVE makes them on AWS (the mapping decides: a used code or a revoked
//! session expires with no event). Mail ledger records go when their own
//! `expires_at` passes (their DynamoDB `ttl`, no grace), and so do the
//! queue rows of mails sent that long ago: neither is in the audit trail.
//! Parked (`failed`) mail jobs stay, to be read and sent by hand. An
//! account nobody verified goes `User::UNVERIFIED_RETENTION_SECS` (and the
//! grace) after it was made, with its names and links, as its `ttl` has it
//! go on AWS (the trail's `unverified_account_expired`); so does a
//! username hold made then (no event: no record the trail follows). Rate
//! limit counters go when their window has ended (no event either).
//!
//! Every flow checks expiry itself, so the sweep changes no answer: it
//! keeps the database from growing for ever and gives the trail its
//! expiries. The audit feed's thread runs it (`spawn_audit_feed`).

use super::EmbeddedStore;
use super::changes::{ChangeEntity, record_expiry};
use super::records::{self as rec, Expiring};
use crate::clock::Timestamp;
use crate::domain::User;
use crate::mail::delivery::LEDGER_TTL_SECS;
use crate::ports::StoreResult;
use crate::tables::TTL_GRACE_SECS;
use serde::Serialize;

// A standalone code's record carries its address's failure budget for
// `BUDGET_WINDOW_SECS` after it expires: the sweep must not take it sooner.
const _: () = assert!(TTL_GRACE_SECS >= crate::domain::OtpRecord::BUDGET_WINDOW_SECS);

/// Records deleted per transaction: a long backlog (a runner that was off
/// for days) is swept in short transactions, not one long one.
const SWEEP_BATCH: i64 = 500;

/// What one sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub verifications: usize,
    pub challenges: usize,
    pub sessions: usize,
    pub otps: usize,
    pub unverified_users: usize,
    pub username_holds: usize,
    pub mail_ledger: usize,
    pub mail_jobs: usize,
    pub rate_limits: usize,
}

impl Swept {
    pub fn total(&self) -> usize {
        self.verifications
            + self.challenges
            + self.sessions
            + self.otps
            + self.unverified_users
            + self.username_holds
            + self.mail_ledger
            + self.mail_jobs
            + self.rate_limits
    }
}

/// How long after its `held_at` a username hold is deleted: with the
/// unverified account it stands for.
const HOLD_LIVES: i64 = User::UNVERIFIED_RETENTION_SECS + TTL_GRACE_SECS;
/// The holds' table (without rowid) and its key.
const HOLDS: (&str, &str) = ("username_holds", "username");
/// The rate limits' counters (without rowid) and their key: a finished
/// window is of no further use. Swept here, not by the limiter's hits: every
/// key of one window length ends in the same second, and the first hit after
/// the edge deleted them all on its HTTP thread (a probe: 0.36 s for 300 000
/// rows), while a bounded delete on every hit cost the write paths a quarter
/// of their throughput (bench section 4, code verify and refresh).
const RATE_LIMITS: (&str, &str) = ("rate_limits", "key, window_start");

impl EmbeddedStore {
    /// Deletes what has outlived its TTL by the store's clock (see the
    /// module's doc), recording each audited record's removal in the change
    /// feed in the transaction that deletes it.
    pub async fn sweep_expired(&self) -> StoreResult<Swept> {
        let now = self.db().now();
        Ok(Swept {
            verifications: self.sweep(now, &rec::EXPIRING_VERIFICATIONS, ChangeEntity::Verification).await?,
            challenges: self.sweep(now, &rec::EXPIRING_CHALLENGES, ChangeEntity::Challenge).await?,
            sessions: self.sweep(now, &rec::EXPIRING_SESSIONS, ChangeEntity::Session).await?,
            otps: self.sweep(now, &rec::EXPIRING_OTPS, ChangeEntity::Otp).await?,
            unverified_users: self.sweep(now, &rec::EXPIRING_UNVERIFIED_USERS, ChangeEntity::User).await?,
            username_holds: self.sweep_rows(HOLDS, "held_at <= ?1 - ?2", now, HOLD_LIVES).await?,
            mail_ledger: self.sweep_rows(("mail_ledger", "rowid"), "expires_at <= ?1", now, 0).await?,
            mail_jobs: self
                .sweep_rows(("mail_jobs", "rowid"), "state = 'sent' AND sent_at <= ?1 - ?2", now, LEDGER_TTL_SECS)
                .await?,
            rate_limits: self.sweep_rows(RATE_LIMITS, "expires_at <= ?1", now, 0).await?,
        })
    }

    async fn sweep<T: Serialize + Send + 'static>(
        &self,
        now: Timestamp,
        t: &'static Expiring<T>,
        entity: ChangeEntity,
    ) -> StoreResult<usize> {
        let mut swept = 0;
        loop {
            let n = self
                .db()
                .tx(move |tx| {
                    let gone = rec::delete_expired(tx, t, now - TTL_GRACE_SECS - t.lives, SWEEP_BATCH)?;
                    for r in &gone {
                        record_expiry(tx, now, entity, &(t.key)(r), r)?;
                    }
                    Ok(gone.len())
                })
                .await?;
            swept += n;
            if i64::try_from(n).unwrap_or(i64::MAX) < SWEEP_BATCH {
                return Ok(swept);
            }
        }
    }

    /// Deletes the rows of `table` (named by its `key` columns) that match
    /// `condition` (`?1` = now, `?2` = `lives`), in batches, recording
    /// nothing in the change feed; a table not created yet (the ledger is
    /// made by the mail consumer's start) has nothing to sweep.
    async fn sweep_rows(
        &self,
        (table, key): (&'static str, &'static str),
        condition: &'static str,
        now: Timestamp,
        lives: i64,
    ) -> StoreResult<usize> {
        let mut swept = 0;
        loop {
            let n = self
                .db()
                .tx(move |tx| {
                    let exists = tx
                        .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
                        .exists([table])?;
                    if !exists {
                        return Ok(0);
                    }
                    let sql = format!(
                        "DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE {condition} LIMIT ?3)"
                    );
                    Ok(tx.prepare_cached(&sql)?.execute(rusqlite::params![now, lives, SWEEP_BATCH])?)
                })
                .await?;
            swept += n;
            if i64::try_from(n).unwrap_or(i64::MAX) < SWEEP_BATCH {
                return Ok(swept);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::audit::{SqliteAuditStore, drain_change_feed};
    use super::super::test_support::{T0, TempDir, challenge, key, store, user};
    use super::*;
    use crate::audit::{AuditEventType as T, AuditPolicy, AuditStore, otp_subject, verify_chain};
    use crate::domain::{Challenge, Email, OtpRecord, Session, SessionId, User, VerificationRecord};
    use crate::ports::LockCheck;
    use crate::ports::{ChallengeStore, OtpStore, SessionStore, UserStore};
    use crate::rng::OsSecureRng;

    const DAY: i64 = TTL_GRACE_SECS;

    /// A user whose verification link (expiring at T0 + 100) is unused,
    /// with an unused code (T0 + 300), a used one and the session it made
    /// (T0 + 1000); and an unused standalone code (T0 + 600).
    async fn records(s: &EmbeddedStore) -> (User, VerificationRecord, [Challenge; 2], Session, OtpRecord) {
        let u = user("sweepuser", "sweep@example.com");
        let meta = u.meta.clone();
        let v = VerificationRecord {
            token_hash: "tok".into(),
            user_id: u.id,
            created_at: T0,
            expires_at: T0 + 100,
            used_at: None,
            meta: meta.clone(),
        };
        s.create_user(&u, &v, i64::MIN).await.unwrap();
        let (unused, used) = (challenge(&u, "h1"), challenge(&u, "h2"));
        for c in [&unused, &used] {
            s.create_challenge(c, LockCheck::Unlocked { reset_failures: false }, &meta).await.unwrap();
        }
        let session = Session {
            id: SessionId::random(&OsSecureRng),
            user_id: u.id,
            refresh_hash: "r".into(),
            created_at: T0 + 10,
            refreshed_at: T0 + 10,
            expires_at: T0 + 1000,
            generation: 0,
            revoked_at: None,
            revoke_reason: None,
            valid_from: None,
            password_epoch: Some(0),
            retry_seal: None,
            retries_answered: 0,
            meta: meta.clone(),
        };
        s.redeem_challenge(&used.id, "h2", T0 + 10, 6, 100, 0, &session, &meta).await.unwrap();
        let otp = OtpRecord {
            address_hash: "addr".into(),
            code_hash: "c".into(),
            created_at: T0,
            expires_at: T0 + 600,
            last_sent_at: T0,
            failures: 0,
            attempts: 0,
            budget_failures: 0,
            used_at: None,
            meta,
        };
        s.put_otp(&otp, None).await.unwrap();
        (u, v, [unused, used], session, otp)
    }

    fn kinds(chain: &[crate::audit::AuditRecord]) -> Vec<T> {
        chain.iter().map(|r| r.event).collect()
    }

    #[tokio::test]
    async fn records_go_a_day_past_their_expiry_and_the_trail_says_which_ran_out_unused() {
        let (s, clock) = store();
        let audit = SqliteAuditStore::open(&s).await.unwrap();
        let policy = AuditPolicy::default();
        let (u, v, [unused, used], session, otp) = records(&s).await;
        drain_change_feed(&s, &audit, &key(), &policy, 400 * DAY).await.unwrap();
        let subject = u.id.to_string();
        let before = kinds(&audit.chain(&subject).await.unwrap());
        assert_eq!(
            before,
            [
                T::UserRegistered,
                T::VerificationMailRequested,
                T::LoginCodeIssued,
                T::LoginCodeIssued,
                T::CodeVerified,
                T::SessionCreated
            ]
        );

        // A second before the link's day of grace ends: nothing goes.
        clock.set(T0 + 100 + DAY - 1);
        assert_eq!(s.sweep_expired().await.unwrap(), Swept::default());
        assert!(s.verification("tok").await.unwrap().is_some());

        // The link, both codes and the standalone code are past theirs; the
        // session (T0 + 1000) is a second short of it.
        clock.set(T0 + 1000 + DAY - 1);
        let swept = s.sweep_expired().await.unwrap();
        assert_eq!(swept, Swept { verifications: 1, challenges: 2, otps: 1, ..Swept::default() });
        assert!(s.verification(&v.token_hash).await.unwrap().is_none());
        assert!(s.challenge(&unused.id).await.unwrap().is_none());
        assert!(s.challenge(&used.id).await.unwrap().is_none());
        assert!(s.otp(&otp.address_hash).await.unwrap().is_none());
        assert!(s.session(&session.id).await.unwrap().is_some());
        // The removals are marked as the sweep's in the feed.
        let feed = s.changes_after(0, 100).await.unwrap();
        assert_eq!(feed.len(), 4);
        assert!(feed.iter().all(|c| c.by_ttl && c.op == super::super::ChangeOp::Remove && c.new.is_none()));
        assert!(feed.iter().all(|c| super::super::audit::source_change(c).unwrap().expired_by_ttl));

        drain_change_feed(&s, &audit, &key(), &policy, 400 * DAY).await.unwrap();
        let chain = audit.chain(&subject).await.unwrap();
        // The used code expires with no event; the unused one and the link do.
        assert_eq!(kinds(&chain[before.len()..]), [T::VerificationExpired, T::CodeExpired]);
        assert!(chain[before.len()..].iter().all(|r| r.reason.as_deref() == Some("ttl") && r.ip.is_none()));
        assert_eq!(kinds(&audit.chain(&otp_subject(&otp.address_hash)).await.unwrap()), [T::OtpSent, T::OtpExpired]);

        clock.advance(1);
        assert_eq!(s.sweep_expired().await.unwrap(), Swept { sessions: 1, ..Swept::default() });
        drain_change_feed(&s, &audit, &key(), &policy, 400 * DAY).await.unwrap();
        let chain = audit.chain(&subject).await.unwrap();
        assert_eq!(chain.last().map(|r| r.event), Some(T::SessionExpired));
        verify_chain(&key(), &subject, &chain).unwrap();

        // Nothing is left to sweep, and the user stays.
        assert_eq!(s.sweep_expired().await.unwrap(), Swept::default());
        assert!(s.user_by_id(&u.id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_revoked_session_is_swept_without_an_expiry() {
        let (s, clock) = store();
        let audit = SqliteAuditStore::open(&s).await.unwrap();
        let (u, _, _, session, _) = records(&s).await;
        s.revoke_session(&session.id, T0 + 20, "logout", &u.meta).await.unwrap();
        clock.set(T0 + 1000 + DAY);
        assert_eq!(s.sweep_expired().await.unwrap().sessions, 1);
        drain_change_feed(&s, &audit, &key(), &AuditPolicy::default(), 400 * DAY).await.unwrap();
        let events = kinds(&audit.chain(&u.id.to_string()).await.unwrap());
        assert!(events.contains(&T::SessionRevoked) && events.contains(&T::CodeExpired), "{events:?}");
        assert!(!events.contains(&T::SessionExpired), "{events:?}");
    }

    /// The runner's audit feed sweeps as it starts (a runner that was off
    /// for days catches up) and puts the expiries in the trail.
    #[tokio::test]
    async fn the_audit_feed_sweeps_when_it_starts() {
        use super::super::audit::spawn_audit_feed;
        let (s, clock) = store();
        let audit = SqliteAuditStore::open(&s).await.unwrap();
        let (u, ..) = records(&s).await;
        clock.set(T0 + 1000 + DAY);
        let feed = spawn_audit_feed(s.clone(), audit.clone(), key(), AuditPolicy::default(), 400 * DAY);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let events = kinds(&audit.chain(&u.id.to_string()).await.unwrap());
            if events.contains(&T::SessionExpired) {
                assert!(events.contains(&T::VerificationExpired) && events.contains(&T::CodeExpired), "{events:?}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no sweep: {events:?}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        feed.abort();
        assert_eq!(s.sweep_expired().await.unwrap(), Swept::default());
    }

    /// A backlog longer than one batch is swept whole, in several
    /// transactions.
    #[tokio::test]
    async fn a_backlog_is_swept_in_batches() {
        let (s, clock) = store();
        let (u, ..) = records(&s).await;
        let n = SWEEP_BATCH as usize * 2 + 7;
        for _ in 0..n {
            s.create_challenge(&challenge(&u, "h"), LockCheck::Unlocked { reset_failures: false }, &u.meta)
                .await
                .unwrap();
        }
        clock.set(T0 + 300 + DAY);
        let swept = s.sweep_expired().await.unwrap();
        assert_eq!(swept, Swept { verifications: 1, challenges: n + 2, ..Swept::default() });
        assert_eq!(s.changes_after(0, 100_000).await.unwrap().iter().filter(|c| c.by_ttl).count(), n + 3);
    }

    fn verification_of(u: &User, token_hash: &str) -> VerificationRecord {
        VerificationRecord {
            token_hash: token_hash.into(),
            user_id: u.id,
            created_at: u.created_at,
            expires_at: u.created_at + DAY,
            used_at: None,
            meta: u.meta.clone(),
        }
    }

    async fn holds(s: &EmbeddedStore) -> i64 {
        s.db().tx(|tx| Ok(tx.query_row("SELECT COUNT(*) FROM username_holds", [], |r| r.get(0))?)).await.unwrap()
    }

    /// An account nobody verified goes 30 days and the day of grace after
    /// it was made, with its names and its link, and its trail ends with
    /// `unverified_account_expired`; a username hold made with it goes
    /// then too; a verified account made at the same time stays.
    #[tokio::test]
    async fn an_unverified_account_and_its_hold_go_thirty_days_on_and_a_verified_one_stays() {
        let (s, clock) = store();
        let audit = SqliteAuditStore::open(&s).await.unwrap();
        let policy = AuditPolicy::default();
        let never = i64::MIN;
        let (kept, gone) = (user("kept", "kept@example.com"), user("gone", "gone@example.com"));
        s.create_user(&kept, &verification_of(&kept, "k"), never).await.unwrap();
        s.consume_verification(&verification_of(&kept, "k"), T0 + 5, &kept.meta).await.unwrap();
        // Its link from a resend near the end, still valid when it goes.
        let late_link =
            VerificationRecord { expires_at: T0 + User::UNVERIFIED_RETENTION_SECS + 10, ..verification_of(&gone, "g") };
        s.create_user(&gone, &late_link, never).await.unwrap();
        // Refused for its taken email, this registration holds its username.
        let held = user("held", "gone@example.com");
        assert!(s.create_user(&held, &verification_of(&held, "h"), never).await.is_err());
        assert_eq!(holds(&s).await, 1);

        let due = T0 + User::UNVERIFIED_RETENTION_SECS + DAY;
        clock.set(due - 1);
        let swept = s.sweep_expired().await.unwrap();
        assert_eq!((swept.unverified_users, swept.username_holds), (0, 0), "a second early: {swept:?}");
        assert!(s.user_by_id(&gone.id).await.unwrap().is_some());

        clock.set(due);
        let swept = s.sweep_expired().await.unwrap();
        assert_eq!((swept.unverified_users, swept.username_holds), (1, 1), "{swept:?}");
        assert!(s.user_by_id(&gone.id).await.unwrap().is_none());
        assert!(s.verification("g").await.unwrap().is_none(), "its link went with it");
        assert!(s.user_by_id(&kept.id).await.unwrap().is_some(), "a verified account is never swept");
        assert_eq!(holds(&s).await, 0);

        // Its names and the held one are free: registrations that replace
        // nobody take them.
        let again = User { created_at: due, ..user("gone", "gone@example.com") };
        assert_eq!(s.create_user(&again, &verification_of(&again, "g2"), never).await.unwrap(), Vec::new());
        let held_again = User { created_at: due, ..user("held", "held@example.com") };
        assert_eq!(s.create_user(&held_again, &verification_of(&held_again, "h2"), never).await.unwrap(), Vec::new());

        drain_change_feed(&s, &audit, &key(), &policy, 400 * DAY).await.unwrap();
        let subject = gone.id.to_string();
        let chain = audit.chain(&subject).await.unwrap();
        assert_eq!(kinds(&chain), [T::UserRegistered, T::VerificationMailRequested, T::UnverifiedAccountExpired]);
        let last = chain.last().unwrap();
        assert_eq!((last.reason.as_deref(), last.ip.as_deref()), (Some("ttl"), None));
        verify_chain(&key(), &subject, &chain).unwrap();
        assert!(!kinds(&audit.chain(&kept.id.to_string()).await.unwrap()).contains(&T::UnverifiedAccountExpired));
    }

    /// Mail ledger records go when their TTL passes and so do the queue
    /// rows of mails sent that long ago; a parked job stays.
    #[tokio::test]
    async fn sent_mail_is_forgotten_after_the_ledger_ttl_and_parked_mail_is_kept() {
        use super::super::consumer::drain;
        use super::super::{Outbox, embedded_deliverer};
        use crate::mail::{MailEnvelope, MailJob, Renderer};
        use crate::ports::MailQueue;
        let (s, clock) = store();
        let dir = TempDir::new();
        let renderer = Renderer::new("http://127.0.0.1:3000").unwrap();
        let outbox = Outbox::new(dir.0.clone(), renderer.clone(), "latchkey <noreply@latchkey.local>".into());
        let deliverer = embedded_deliverer(&s, outbox, renderer, clock.clone()).await.unwrap();
        let q = s.mail_queue();
        let to = Email::parse("carol@example.com").unwrap();
        q.enqueue(&MailEnvelope::new("sent1".into(), &to, T0, None, None, MailJob::SignupAttempt {})).await.unwrap();
        q.enqueue_raw("parked1", "{not json").await.unwrap();
        assert_eq!(drain(&q, &deliverer).await.unwrap(), 2);
        assert_eq!(q.job_state("sent1").await.unwrap().unwrap().0, "sent");

        clock.set(T0 + LEDGER_TTL_SECS - 1);
        assert_eq!(s.sweep_expired().await.unwrap(), Swept::default());
        assert!(deliverer.ledger().entry("sent1").await.unwrap().is_some());

        clock.set(T0 + LEDGER_TTL_SECS);
        assert_eq!(s.sweep_expired().await.unwrap(), Swept { mail_ledger: 1, mail_jobs: 1, ..Swept::default() });
        assert!(deliverer.ledger().entry("sent1").await.unwrap().is_none());
        assert_eq!(q.job_state("sent1").await.unwrap(), None);
        assert_eq!(q.job_state("parked1").await.unwrap().unwrap().0, "failed");
        // The ledger's removal is no audit change.
        assert!(s.changes_after(0, 100).await.unwrap().iter().all(|c| !c.by_ttl));
    }

    /// A store whose mail consumer never started has no ledger table.
    #[tokio::test]
    async fn a_store_without_a_mail_ledger_is_swept() {
        let (s, clock) = store();
        clock.set(T0 + 10 * DAY);
        assert_eq!(s.sweep_expired().await.unwrap(), Swept::default());
    }
}
