//! The traits the flows need from the outside world. Every storage adapter
//! (DynamoDB, embedded SQLite) passes the one behaviour suite in
//! `crate::testing`, which is the executable form of these contracts.
//!
//! Common rules for every store method:
//! - "not found" is `Ok(None)`, never an error;
//! - a write whose guard does not hold returns `Err(StoreError::Conflict(_))`
//!   and writes nothing;
//! - every method is atomic: it either happens entirely or not at all;
//! - every method that modifies a record on behalf of a request takes that
//!   request's `meta` and sets the `meta` of each record it modifies to it,
//!   in the same write (the audit trail reads "who did it" from the changed
//!   record); a call that changes nothing leaves `meta` as it was;
//! - expiry is checked by the flows against the `Clock`, never left to the
//!   store's TTL sweeper (DynamoDB deletes expired items up to days late).

use crate::StoreError;
use crate::clock::Timestamp;
use crate::domain::{
    Challenge, ChallengeId, Email, OtpRecord, RequestMeta, ResetLink, Session, SessionId, User, UserId, Username,
    VerificationRecord,
};
use crate::mail::MailEnvelope;
use async_trait::async_trait;

pub use crate::clock::Clock;
pub use crate::rng::SecureRng;

pub type StoreResult<T> = Result<T, StoreError>;

/// A wrong login code as `ChallengeStore::record_challenge_failure` counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeFailure {
    /// The challenge's failures, this one included.
    pub failures: u32,
    /// This one spent the account's code budget: the user's `otp_failures`
    /// went from `account_budget - 1` to `account_budget`.
    pub spent_budget: bool,
}

/// A wrong password as `UserStore::record_login_failure` counted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginFailure {
    /// The user as stored after.
    pub user: User,
    /// This failure started the lock. Of a burst of wrong passwords that all
    /// read the user before any was counted, only one does: the owner is
    /// mailed once a lock, however many of them see it locked after.
    pub started_lock: bool,
}

/// What a new challenge does about the account's lock
/// (`ChallengeStore::create_challenge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockCheck {
    /// The right password, on an account the caller read unlocked: refused
    /// if a lock runs at the challenge's `created_at` (set by others' wrong
    /// passwords since the read). With `reset_failures` (the user has failed
    /// logins or an ended lock on record) the count is reset and the ended
    /// lock cleared in the same write.
    Unlocked { reset_failures: bool },
    /// A device the account trusts, during a lock: the lock is neither
    /// checked nor cleared; it runs out.
    TrustedDevice,
}

#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates the user, claims its username and email, and stores its first
    /// verification token, in one transaction. A taken username gives
    /// `Conflict(UsernameTaken)` (checked first) and writes nothing, so
    /// concurrent registrations of one username leave exactly one account
    /// and no orphan email claim.
    ///
    /// A taken email (with the username free) gives `Conflict(EmailTaken)`
    /// and writes no account, no token and no email claim, so concurrent
    /// registrations of one address leave exactly one account; but it
    /// *holds the username*, in the same transaction as the check: a hold,
    /// made at `user.created_at`, that is no account (no read by id,
    /// username or email finds it, and no audit event comes of it) and
    /// takes the username exactly as an unverified account created then
    /// would. Without it the username's fate would tell whether the email
    /// has an account: a later registration of that username would be
    /// refused after a free email and accepted after a taken one.
    ///
    /// Except: a name held by an account that is still unverified, or by a
    /// hold, made before `replace_unverified_before` is not taken. That
    /// account (one for the username and another for the email, at most)
    /// is deleted with its claims in the same transaction, and its id
    /// returned (a stale hold just goes); an account verified in the
    /// meantime wins instead. Nobody ever proved they own its address, so
    /// it cannot keep the name from whoever does. A registration refused
    /// for its email takes a stale username over the same way, for its
    /// hold (the ids of accounts replaced so are not returned; the change
    /// records their removal). (`i64::MIN`: replace nothing.)
    async fn create_user(
        &self,
        user: &User,
        verification: &VerificationRecord,
        replace_unverified_before: Timestamp,
    ) -> StoreResult<Vec<UserId>>;

    async fn user_by_id(&self, id: &UserId) -> StoreResult<Option<User>>;
    async fn user_by_username(&self, username: &Username) -> StoreResult<Option<User>>;
    async fn user_by_email(&self, email: &Email) -> StoreResult<Option<User>>;

    /// Counts one wrong password. If the account is not locked at `now`, the
    /// count is incremented (starting from 0 if a previous lock has ended);
    /// when it reaches `threshold` the account is locked until
    /// `now + lock_secs` and `failed_logins` is reset. `otp_failures` is
    /// left alone: only a right code or a password reset gives the
    /// account-wide code budget back (else wrong passwords would refill
    /// it). Failures during a lock change
    /// nothing, so a lock can never be extended by hammering. Returns the
    /// user as stored afterwards and whether this failure started the lock;
    /// an unknown user is `Conflict(Stale)`.
    /// A counted failure sets the user's `meta` to the request's.
    async fn record_login_failure(
        &self,
        id: &UserId,
        now: Timestamp,
        threshold: u32,
        lock_secs: i64,
        meta: &RequestMeta,
    ) -> StoreResult<LoginFailure>;

    /// Replaces the password hash (rehash on login when parameters rise)
    /// and sets the user's `meta` to the request's, only if the stored hash
    /// is still `expected_phc`, the one the password was checked against
    /// (a change or reset meanwhile wins); `Conflict(Stale)` otherwise, an
    /// unknown user included.
    async fn set_password_hash(
        &self,
        id: &UserId,
        expected_phc: &str,
        phc: &str,
        meta: &RequestMeta,
    ) -> StoreResult<()>;

    /// A password change: sets the user's `password_epoch` to
    /// `expected_epoch + 1` (every other session of the user ends, and every
    /// login in progress), its `password_hash` to `phc`, its
    /// `sessions_valid_after` to `now` and its `meta`, and the session
    /// `keep`'s `password_epoch` to the new one (it survives), in one
    /// transaction, only if the user exists, `keep` is an unrevoked session
    /// of theirs, and its stored hash and epoch are still `expected_phc` and
    /// `expected_epoch`, the ones the current password was checked against
    /// (a reset or another change meanwhile wins); `Conflict(Stale)`
    /// otherwise. A "sign out everywhere else" is this write with `phc`
    /// equal to `expected_phc`: only the epoch moves.
    #[allow(clippy::too_many_arguments)]
    async fn change_password(
        &self,
        id: &UserId,
        expected_phc: &str,
        expected_epoch: u64,
        phc: &str,
        keep: &SessionId,
        now: Timestamp,
        meta: &RequestMeta,
    ) -> StoreResult<()>;

    /// A password reset through a mailed link: sets the user's
    /// `password_epoch` to `expected_epoch + 1`, its `password_resets` to
    /// `link.resets + 1`, its `password_hash` to `phc`, its
    /// `sessions_valid_after` and `password_reset_at` to `now` (every
    /// session of the user ends), ends a lock and starts the counts afresh
    /// (`locked_until` absent, `failed_logins` and `otp_failures` 0: the
    /// wrong passwords and codes were tried against a password that is
    /// gone) and sets its `meta`, only if the user exists, the link is
    /// current (`ResetLink::current_for`: `password_resets` still
    /// `link.resets`, absent counting as 0, `password_reset_at` absent or at
    /// most `link.issued_at`, and `email_changes` still
    /// `link.email_changes`, absent counting as 0), no password change came after `now`
    /// (`sessions_valid_after` absent or at most `now`: a change that
    /// committed after the caller took `now` would otherwise outlive the
    /// reset), and its epoch is still `expected_epoch` (the caller then
    /// knows the epoch it set); `Conflict(Stale)` otherwise. That condition
    /// makes a link single use and ends every link made before a reset with
    /// it, in the reset's own second too: of two resets with links made at
    /// one count, exactly one succeeds, while a link made after the reset
    /// works at once. (A password change does not end a link: someone
    /// holding a session and the password could otherwise keep every link
    /// the owner is mailed dead.)
    async fn reset_password(
        &self,
        id: &UserId,
        link: ResetLink,
        expected_epoch: u64,
        phc: &str,
        now: Timestamp,
        meta: &RequestMeta,
    ) -> StoreResult<()>;

    /// Deletes the account `user` (as read and checked by the caller): the
    /// user and its username and email claims, at once, only if the user
    /// still exists with the `password_hash` and `password_epoch` it has in
    /// `user` (the ones the current password was checked against: a change
    /// or reset meanwhile wins) and the `email` (an address change meanwhile
    /// moved the claim that goes with it; on DynamoDB the deletion of the
    /// old one would leave the new one naming no account); `Conflict(Stale)`
    /// otherwise, and nothing is deleted (on DynamoDB the user's `meta` is
    /// written first, on the same condition, in a write of its own: one
    /// transaction cannot update and delete one item, and the stream's
    /// REMOVE carries only the old image; so a deletion refused between
    /// the two leaves the account with the request's `meta`). The removal
    /// carries `meta`, the request's (the audit trail's `account_deleted`). Both names are free from then on. What
    /// else the account had ends with it, as everything reads the account
    /// (sessions, logins in progress, links), and those records are deleted
    /// with it: all of them (SQLite), or those a store's index lists by then
    /// (DynamoDB; the rest go at their own expiry).
    async fn delete_account(&self, user: &User, meta: &RequestMeta) -> StoreResult<()>;

    /// Moves the account `user` (as read and checked by the caller) to the
    /// address `new`: its `email` becomes `new`, its `email_changes` one
    /// more and its `meta` the request's, and the email claim moves with it
    /// (the old address is free for a registration from then on), in one
    /// transaction, only if the user still exists with the `email`,
    /// `email_changes` and `password_epoch` it has in `user` (the ones the
    /// caller's link was made at: a change of address since, or of the
    /// password, wins); `Conflict(Stale)` otherwise. An address that any
    /// other account holds, verified or not, gives `Conflict(EmailTaken)`
    /// when the user is as read, and its own (`user.email`) always does.
    /// Nothing is written on a conflict.
    async fn change_email(&self, user: &User, new: &Email, meta: &RequestMeta) -> StoreResult<()>;

    /// Stores another verification token for an unverified user and sets
    /// `verification_sent_at = now`, only if the user is unverified, not
    /// past its retention (`User::retention_over(now)`), and the last send
    /// was at or before `now - cooldown_secs`; otherwise
    /// `Conflict(Stale)`. The user update sets its `meta` to the request's
    /// (the new token carries its own `meta`).
    async fn add_verification(
        &self,
        verification: &VerificationRecord,
        now: Timestamp,
        cooldown_secs: i64,
        meta: &RequestMeta,
    ) -> StoreResult<()>;

    /// Gives back the resend cooldown a verification mail's write at
    /// `sent_at` started (`create_user` or `add_verification`) when the mail
    /// could not be queued: sets `verification_sent_at = previous_sent_at`,
    /// only if the user is unverified and its `verification_sent_at` is
    /// `sent_at` (no send since); `Conflict(Stale)` otherwise. The unmailed
    /// token stays valid; `meta` is not changed.
    async fn give_back_verification_cooldown(
        &self,
        id: &UserId,
        sent_at: Timestamp,
        previous_sent_at: Timestamp,
    ) -> StoreResult<()>;

    /// Reads a verification token by its hash.
    async fn verification(&self, token_hash: &str) -> StoreResult<Option<VerificationRecord>>;

    /// Marks the token used and its user verified, and sets both their
    /// `meta` to the request's, in one transaction, only if the stored token
    /// exists, is unused and `expires_at > now`, and its user is not past
    /// its retention (`User::retention_over(now)`); otherwise `Conflict(Stale)`
    /// and the user stays as it was. `token` is the record as the caller read
    /// it (by `verification`): its `token_hash` and `user_id` say what to
    /// update, so an adapter need not read it again; the stored state is
    /// what the conditions check.
    async fn consume_verification(
        &self,
        token: &VerificationRecord,
        now: Timestamp,
        meta: &RequestMeta,
    ) -> StoreResult<UserId>;
}

#[async_trait]
pub trait ChallengeStore: Send + Sync {
    /// [`ChallengeStore::create_challenge_to`] without an address to check
    /// (fixtures and tests make challenges so).
    async fn create_challenge(&self, challenge: &Challenge, lock: LockCheck, meta: &RequestMeta) -> StoreResult<()> {
        self.create_challenge_to(challenge, None, lock, meta).await
    }

    /// Stores a new challenge. With `LockCheck::Unlocked`, a lock running at
    /// the challenge's `created_at` (set by others' failures since the caller
    /// read the user) refuses it: nothing is written and the answer is
    /// `Conflict(Stale)`; with `reset_failures` as well, the count is reset
    /// and an ended `locked_until` cleared in the same write, which sets the
    /// user's `meta` to the request's. With `LockCheck::TrustedDevice` the
    /// lock is left as it is. With `to`, the address its code is mailed to,
    /// only while the user's own record still has that address (the
    /// caller's read may be an index's copy that lags an address change),
    /// checked in the same write: else `Conflict(Stale)` and nothing is
    /// written. An unknown user is an error either way (`Stale` with `to`).
    async fn create_challenge_to(
        &self,
        challenge: &Challenge,
        to: Option<&Email>,
        lock: LockCheck,
        meta: &RequestMeta,
    ) -> StoreResult<()>;

    async fn challenge(&self, id: &ChallengeId) -> StoreResult<Option<Challenge>>;

    /// Takes one attempt before a code is compared: increments `attempts`
    /// only if the challenge is unused, `attempts < max_attempts`, `failures
    /// < max_attempts` and `expires_at > now`, in one conditional write, and
    /// returns the challenge as it is after; `Conflict(Stale)` otherwise (a
    /// missing challenge included). So however many guesses arrive at once,
    /// at most `max_attempts` codes are ever compared. `meta` is unchanged.
    async fn take_challenge_attempt(
        &self,
        id: &ChallengeId,
        now: Timestamp,
        max_attempts: u32,
    ) -> StoreResult<Challenge>;

    /// Redeems the challenge: sets `used_at = now` and creates `session`, and
    /// resets the user's account-wide code failure count, in one transaction,
    /// only if the challenge is unused, still has `code_hash`, has fewer than
    /// `max_failures` failures and `expires_at > now`, and its user has
    /// fewer than `account_budget` `otp_failures` (a spent budget accepts no
    /// code, not even on a challenge opened before it was spent) and its
    /// `password_epoch` is still `password_epoch`, the challenge's as the
    /// caller read it (a password changed or reset since the password step
    /// ends the login in progress too); otherwise `Conflict(Stale)`. Of any number of concurrent calls at most one wins.
    /// Sets the challenge's and the user's `meta` to the request's (the new
    /// session carries its own `meta`).
    #[allow(clippy::too_many_arguments)]
    async fn redeem_challenge(
        &self,
        id: &ChallengeId,
        code_hash: &str,
        now: Timestamp,
        max_failures: u32,
        account_budget: u32,
        password_epoch: u64,
        session: &Session,
        meta: &RequestMeta,
    ) -> StoreResult<()>;

    /// Counts one wrong code: increments the challenge's `failures` and the
    /// user's `otp_failures` together, only if the challenge is unused and
    /// has fewer than `max_failures` failures, and the user has fewer than
    /// `account_budget` `otp_failures` and its `password_epoch` is still
    /// `password_epoch` (a login ended by a password change or reset spends
    /// nothing of the budget the reset gave back); `Conflict(Stale)`
    /// otherwise, and nothing is counted (also when `user_id` is not the
    /// challenge's user, or that user is gone). Both updates set `meta` to the request's.
    /// Returns the new failure count, and whether this wrong code was the
    /// one that brought the user's `otp_failures` to `account_budget` (of
    /// every wrong code counted against a budget, exactly one says so). The
    /// check and the increment are one conditional write, so concurrent
    /// guesses cannot pass the cap.
    async fn record_challenge_failure(
        &self,
        id: &ChallengeId,
        user_id: &UserId,
        max_failures: u32,
        account_budget: u32,
        password_epoch: u64,
        meta: &RequestMeta,
    ) -> StoreResult<CodeFailure>;

    /// Replaces the code: sets `code_hash`, `expires_at`, `last_sent_at = now`
    /// and `resends += 1`, never touching `failures` or `attempts`, only if
    /// the challenge is unused, `created_at > now - Challenge::MAX_AGE_SECS`,
    /// `last_sent_at <= now - cooldown_secs`, `resends < max_resends` and
    /// `failures` and `attempts` are both `< max_failures`; otherwise
    /// `Conflict(Stale)`. Sets the challenge's `meta` to the request's.
    #[allow(clippy::too_many_arguments)]
    async fn replace_challenge_code(
        &self,
        id: &ChallengeId,
        code_hash: &str,
        expires_at: Timestamp,
        now: Timestamp,
        cooldown_secs: i64,
        max_resends: u32,
        max_failures: u32,
        meta: &RequestMeta,
    ) -> StoreResult<()>;

    /// Gives back what a `replace_challenge_code` at `sent_at` took when its
    /// mail could not be queued: sets `last_sent_at = previous_sent_at` and
    /// `resends -= 1`, only if the challenge still has `code_hash`,
    /// `last_sent_at = sent_at` (no resend since) and `resends > 0` (the
    /// login's own code is no resend); `Conflict(Stale)` otherwise. The
    /// unmailed code stays, with any failures and attempts counted on it;
    /// `meta` is not changed.
    async fn give_back_resend(
        &self,
        id: &ChallengeId,
        code_hash: &str,
        sent_at: Timestamp,
        previous_sent_at: Timestamp,
    ) -> StoreResult<()>;
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn session(&self, id: &SessionId) -> StoreResult<Option<Session>>;

    /// Rotates the refresh secret: only if the session is not revoked and its
    /// `refresh_hash` is still `old_hash`; sets the new hash, `retry_seal`,
    /// `refreshed_at` and `generation += 1` and sets `meta` to the
    /// request's. `Conflict(Stale)` otherwise.
    async fn rotate_session(
        &self,
        id: &SessionId,
        old_hash: &str,
        new_hash: &str,
        retry_seal: &str,
        now: Timestamp,
        meta: &RequestMeta,
    ) -> StoreResult<()>;

    /// Revokes the session now and sets its `meta` to the request's.
    /// Idempotent: revoking a revoked or unknown session succeeds and
    /// changes nothing (not even `meta`).
    async fn revoke_session(&self, id: &SessionId, now: Timestamp, reason: &str, meta: &RequestMeta)
    -> StoreResult<()>;

    /// The sessions of `user_id` that are not revoked and whose
    /// `expires_at` is after `now`, in no order (those a password change or
    /// reset ended are the caller's to drop: `User::ended_by_password_change`).
    /// On DynamoDB this reads an index, which can lag a write by a moment:
    /// a session made or revoked just before may be missing or still listed.
    async fn live_sessions_of(&self, user_id: &UserId, now: Timestamp) -> StoreResult<Vec<Session>>;

    /// Counts a retry of the last rotation answered with the current secret
    /// (`retries_answered += 1`) and sets `meta` to the request's, only if
    /// the session is not revoked and its `refresh_hash` is still
    /// `current_hash`. `Conflict(Stale)` otherwise.
    async fn record_refresh_retry(&self, id: &SessionId, current_hash: &str, meta: &RequestMeta) -> StoreResult<()>;
}

#[async_trait]
pub trait OtpStore: Send + Sync {
    async fn otp(&self, address_hash: &str) -> StoreResult<Option<OtpRecord>>;

    /// Writes `record` for its address, replacing what is there, only if the
    /// stored record still has `expected`'s `last_sent_at`, `failures`,
    /// `attempts` and `used_at` (`None`: only if there is no record), so no
    /// guess counted since the read is lost, and no redemption (which gave
    /// the budget back). `Conflict(Stale)` otherwise.
    async fn put_otp(&self, record: &OtpRecord, expected: Option<&OtpRecord>) -> StoreResult<()>;

    /// Takes one attempt before a code is compared, as
    /// `ChallengeStore::take_challenge_attempt`: increments `attempts` only
    /// if the code is unused, `attempts` and `failures` are both
    /// `< max_attempts` and `expires_at > now`; returns the record after.
    async fn take_otp_attempt(&self, address_hash: &str, now: Timestamp, max_attempts: u32) -> StoreResult<OtpRecord>;

    /// Marks the code used and sets `budget_failures` to 0, only if it is
    /// unused, still has `code_hash`, has fewer than `max_failures` failures
    /// and fewer than `budget` `budget_failures` (a spent budget accepts no
    /// code) and `expires_at > now`, and sets `meta` to the request's.
    #[allow(clippy::too_many_arguments)]
    async fn redeem_otp(
        &self,
        address_hash: &str,
        code_hash: &str,
        now: Timestamp,
        max_failures: u32,
        budget: u32,
        meta: &RequestMeta,
    ) -> StoreResult<()>;

    /// Increments `failures` and `budget_failures` together and sets `meta`
    /// to the request's, only if the code is unused, has fewer than
    /// `max_failures` failures and fewer than `budget` `budget_failures`
    /// (one conditional write: concurrent wrong codes pass neither cap);
    /// `Conflict(Stale)` otherwise. Returns the new `failures`.
    async fn record_otp_failure(
        &self,
        address_hash: &str,
        max_failures: u32,
        budget: u32,
        meta: &RequestMeta,
    ) -> StoreResult<u32>;

    /// Gives back the cooldown a `put_otp` at `sent_at` started when its mail
    /// could not be queued: sets `last_sent_at = previous_sent_at`, only if
    /// the record still has `code_hash` and `last_sent_at = sent_at` (no
    /// send since); `Conflict(Stale)` otherwise. The unmailed code stays,
    /// with any failures and attempts counted on it; `meta` is not changed.
    async fn give_back_otp_cooldown(
        &self,
        address_hash: &str,
        code_hash: &str,
        sent_at: Timestamp,
        previous_sent_at: Timestamp,
    ) -> StoreResult<()>;
}

/// One counter to hit: at most `limit` hits per fixed `window_secs` window
/// (windows are aligned to the clock, so a burst straddling a boundary can
/// reach twice the limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKey {
    /// e.g. `login:ip:203.0.113.7`; the adapter may hash or prefix it. A
    /// key is always used with one window length (each flow's key prefix
    /// with its one `Limit`): across hits, DynamoDB keeps a counter item
    /// until the window end its latest hit gave it.
    pub key: String,
    pub limit: u32,
    pub window_secs: i64,
}

/// One counter a `RateLimiter::hit` touches: a key's window at `now`. Both
/// stores build their counters with `LimitCounter::of`, so a key listed more
/// than once is counted the same way by each: the copies that fall in the
/// same window are one counter, hit once per copy, under the smallest of
/// their limits, and kept until the latest of their window ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCounter {
    pub key: String,
    pub window_start: Timestamp,
    pub window_end: Timestamp,
    pub hits: u32,
    pub limit: u32,
}

impl LimitCounter {
    /// The counters for `keys` at `now`, in the order their keys first
    /// appear. A window of zero or less is a configuration bug, refused as
    /// `Internal`.
    pub fn of(keys: &[LimitKey], now: Timestamp) -> StoreResult<Vec<LimitCounter>> {
        let mut out: Vec<LimitCounter> = Vec::with_capacity(keys.len());
        for k in keys {
            if k.window_secs <= 0 {
                return Err(StoreError::internal(format!(
                    "rate limit `{}` has a window of {} s",
                    k.key, k.window_secs
                )));
            }
            let window_start = now - now.rem_euclid(k.window_secs);
            let window_end = window_start.saturating_add(k.window_secs);
            match out.iter_mut().find(|c| c.key == k.key && c.window_start == window_start) {
                Some(c) => {
                    c.hits = c.hits.saturating_add(1);
                    c.limit = c.limit.min(k.limit);
                    c.window_end = c.window_end.max(window_end);
                }
                None => {
                    out.push(LimitCounter { key: k.key.clone(), window_start, window_end, hits: 1, limit: k.limit })
                }
            }
        }
        Ok(out)
    }

    /// Whether a counter that already holds `count` hits refuses these.
    pub fn refuses(&self, count: u32) -> bool {
        u64::from(count) + u64::from(self.hits) > u64::from(self.limit)
    }

    /// Seconds from `now` until the counter's window ends (at least 1).
    pub fn retry_after(&self, now: Timestamp) -> u64 {
        u64::try_from(self.window_end - now).unwrap_or(0).max(1)
    }
}

#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Counts one hit on every key, atomically: if any key is already at its
    /// limit in the current window, nothing is counted and the answer is
    /// `Ok(Some(retry_after_secs))` for the key that refused (the longest
    /// wait if several do). `Ok(None)` means allowed. A key listed more than
    /// once is merged as `LimitCounter::of` says; a window of zero or less is
    /// `Err(Internal)`.
    async fn hit(&self, keys: &[LimitKey], now: Timestamp) -> StoreResult<Option<u64>>;
}

#[async_trait]
pub trait MailQueue: Send + Sync {
    /// Enqueues a job for delivery. At-least-once: the consumer deduplicates
    /// by `MailEnvelope::id`.
    async fn enqueue(&self, job: &MailEnvelope) -> StoreResult<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str, limit: u32, window_secs: i64) -> LimitKey {
        LimitKey { key: k.into(), limit, window_secs }
    }

    fn counter(key: &str, window_start: Timestamp, window_end: Timestamp, hits: u32, limit: u32) -> LimitCounter {
        LimitCounter { key: key.into(), window_start, window_end, hits, limit }
    }

    #[test]
    fn windows_align_to_the_clock() {
        let c = LimitCounter::of(&[key("a", 5, 60), key("b", 3, 3600)], 7_265).unwrap();
        assert_eq!(c, vec![counter("a", 7_260, 7_320, 1, 5), counter("b", 7_200, 10_800, 1, 3)]);
        assert_eq!((c[0].retry_after(7_265), c[1].retry_after(7_265)), (55, 3_535));
        // At the first second of a window the whole window is left.
        assert_eq!(LimitCounter::of(&[key("a", 5, 60)], 7_260).unwrap()[0].retry_after(7_260), 60);
        assert_eq!(LimitCounter::of(&[key("a", 5, 60)], -1).unwrap()[0].window_start, -60);
    }

    #[test]
    fn copies_of_a_key_merge_under_the_smallest_limit_in_either_order() {
        for keys in [[key("a", 5, 60), key("a", 3, 60)], [key("a", 3, 60), key("a", 5, 60)]] {
            let c = LimitCounter::of(&keys, 100).unwrap();
            assert_eq!(c, vec![counter("a", 60, 120, 2, 3)]);
            assert!(!c[0].refuses(1) && c[0].refuses(2), "2 hits fit under 3 after 1, not after 2");
        }
        // Windows of other lengths that start together share the counter and
        // keep the later end; ones that start apart are counters of their own.
        let c = LimitCounter::of(&[key("a", 5, 3600), key("a", 2, 60)], 7_200).unwrap();
        assert_eq!(c, vec![counter("a", 7_200, 10_800, 2, 2)]);
        assert_eq!(LimitCounter::of(&[key("a", 5, 3600), key("a", 2, 60)], 7_260).unwrap().len(), 2);
    }

    #[test]
    fn a_window_of_zero_or_less_is_refused() {
        for w in [0, -60] {
            let e = LimitCounter::of(&[key("ok", 1, 60), key("bad", 1, w)], 100).unwrap_err();
            let StoreError::Internal(why) = e else { panic!("window {w}: {e:?}") };
            assert!(why.to_string().contains("`bad`"), "window {w}: {why}");
        }
    }
}
