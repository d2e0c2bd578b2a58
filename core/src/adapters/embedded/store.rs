//! The store ports on SQLite. Each method reads what its guard needs and
//! writes inside one `BEGIN IMMEDIATE` transaction (see `Db::tx`), so the
//! check and the write are one step, and a refused guard returns before
//! anything is written (but for the username hold a registration refused
//! for its email leaves, as `UserStore::create_user` says). Every data
//! change appends to the change feed in the same transaction; username
//! holds do not (like DynamoDB's claim items, they are no record the audit
//! trail follows).

use super::EmbeddedStore;
use super::changes::{ChangeEntity, record};
use super::records::{self as rec, UserKey};
use crate::clock::Timestamp;
use crate::domain::{
    Challenge, ChallengeId, Email, OtpRecord, RequestMeta, ResetLink, Session, SessionId, User, UserId, Username,
    VerificationRecord,
};
use crate::error::{Conflict, StoreError};
use crate::ports::{
    ChallengeStore, CodeFailure, LockCheck, LoginFailure, OtpStore, SessionStore, StoreResult, UserStore,
};
use async_trait::async_trait;

fn conflict<T>(c: Conflict) -> StoreResult<T> {
    Err(StoreError::Conflict(c))
}

fn stale<T>() -> StoreResult<T> {
    conflict(Conflict::Stale)
}

#[async_trait]
impl UserStore for EmbeddedStore {
    async fn create_user(
        &self,
        user: &User,
        verification: &VerificationRecord,
        replace_unverified_before: Timestamp,
    ) -> StoreResult<Vec<UserId>> {
        let (user, v, at) = (user.clone(), verification.clone(), self.db().now());
        let before = replace_unverified_before;
        let made = self
            .db()
            .tx(move |tx| {
                // Explicit checks, in the contract's order, so the answer
                // names the right claim; the UNIQUE constraints back them up.
                let replaceable = |u: &User| !u.verified && u.created_at < before;
                let by_username = rec::load_user(tx, UserKey::Username(&user.username))?;
                let hold = rec::load_username_hold(tx, &user.username)?;
                if by_username.as_ref().is_some_and(|u| !replaceable(u)) || hold.is_some_and(|h| h >= before) {
                    return conflict(Conflict::UsernameTaken);
                }
                let by_email = rec::load_user(tx, UserKey::Email(&user.email))?;
                let email_taken = by_email.as_ref().is_some_and(|u| !replaceable(u));
                if !email_taken
                    && (rec::load_user(tx, UserKey::Id(&user.id))?.is_some()
                        || rec::load_verification(tx, &v.token_hash)?.is_some())
                {
                    return stale();
                }
                // The stale holders go: the username's always (a refused
                // registration holds the name in its place), the email's
                // only for the account that takes it.
                let by_email = if email_taken { None } else { by_email };
                let mut replaced = Vec::new();
                for old in [by_username, by_email].into_iter().flatten() {
                    if !replaced.contains(&old.id) {
                        // Its verification tokens go with it (ON DELETE CASCADE).
                        rec::delete_user(tx, &old.id)?;
                        record(tx, at, ChangeEntity::User, &old.id.to_string(), Some(&old), None)?;
                        replaced.push(old.id);
                    }
                }
                if email_taken {
                    // Held as an unverified account made now would hold it.
                    rec::put_username_hold(tx, &user.username, user.created_at)?;
                    return Ok(None);
                }
                if hold.is_some() {
                    rec::delete_username_hold(tx, &user.username)?;
                }
                rec::insert_user(tx, &user)?;
                rec::insert_verification(tx, &v)?;
                record(tx, at, ChangeEntity::User, &user.id.to_string(), None, Some(&user))?;
                record(tx, at, ChangeEntity::Verification, &v.token_hash, None, Some(&v))?;
                Ok(Some(replaced))
            })
            .await?;
        // A hold is committed with its answer, which only then says "taken".
        made.map_or_else(|| conflict(Conflict::EmailTaken), Ok)
    }

    async fn user_by_id(&self, id: &UserId) -> StoreResult<Option<User>> {
        let id = *id;
        self.db().tx(move |tx| Ok(rec::load_user(tx, UserKey::Id(&id))?)).await
    }

    async fn user_by_username(&self, username: &Username) -> StoreResult<Option<User>> {
        let u = username.clone();
        self.db().tx(move |tx| Ok(rec::load_user(tx, UserKey::Username(&u))?)).await
    }

    async fn user_by_email(&self, email: &Email) -> StoreResult<Option<User>> {
        let e = email.clone();
        self.db().tx(move |tx| Ok(rec::load_user(tx, UserKey::Email(&e))?)).await
    }

    async fn record_login_failure(
        &self,
        id: &UserId,
        now: Timestamp,
        threshold: u32,
        lock_secs: i64,
        meta: &RequestMeta,
    ) -> StoreResult<LoginFailure> {
        let (id, meta, at) = (*id, meta.clone(), self.db().now());
        self.db()
            .tx(move |tx| {
                // There is no user to count against: the guard "exists" fails.
                let Some(old) = rec::load_user(tx, UserKey::Id(&id))? else {
                    return stale();
                };
                if old.is_locked(now) {
                    // A lock is never extended by hammering.
                    return Ok(LoginFailure { user: old, started_lock: false });
                }
                let mut new = User { meta, ..old.clone() };
                // A lock that has ended starts the count afresh.
                let count = if old.locked_until.is_some() { 0 } else { old.failed_logins };
                new.locked_until = None;
                new.failed_logins = count.saturating_add(1);
                if new.failed_logins >= threshold {
                    new.locked_until = Some(now.saturating_add(lock_secs));
                    new.failed_logins = 0;
                }
                rec::update_user(tx, &new)?;
                record(tx, at, ChangeEntity::User, &id.to_string(), Some(&old), Some(&new))?;
                Ok(LoginFailure { started_lock: new.locked_until.is_some(), user: new })
            })
            .await
    }

    async fn set_password_hash(
        &self,
        id: &UserId,
        expected_phc: &str,
        phc: &str,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let (id, expected, phc, meta, at) =
            (*id, expected_phc.to_string(), phc.to_string(), meta.clone(), self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old) = rec::load_user(tx, UserKey::Id(&id))?.filter(|u| u.password_hash == expected) else {
                    return stale();
                };
                let new = User { password_hash: phc, meta, ..old.clone() };
                rec::update_user(tx, &new)?;
                record(tx, at, ChangeEntity::User, &id.to_string(), Some(&old), Some(&new))
            })
            .await
    }

    async fn change_password(
        &self,
        id: &UserId,
        expected_phc: &str,
        expected_epoch: u64,
        phc: &str,
        keep: &SessionId,
        now: Timestamp,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let (id, expected, phc, keep, meta, at) =
            (*id, expected_phc.to_string(), phc.to_string(), *keep, meta.clone(), self.db().now());
        let epoch = expected_epoch.checked_add(1).ok_or_else(|| StoreError::internal("password_epoch overflow"))?;
        self.db()
            .tx(move |tx| {
                let (Some(old_u), Some(old_s)) = (rec::load_user(tx, UserKey::Id(&id))?, rec::load_session(tx, &keep)?)
                else {
                    return stale();
                };
                if old_s.user_id != id
                    || old_s.revoked_at.is_some()
                    || old_u.password_hash != expected
                    || old_u.password_epoch != expected_epoch
                {
                    return stale();
                }
                let new_u = User {
                    password_hash: phc,
                    sessions_valid_after: Some(now),
                    password_epoch: epoch,
                    meta: meta.clone(),
                    ..old_u.clone()
                };
                let new_s = Session { password_epoch: Some(epoch), meta, ..old_s.clone() };
                rec::update_user(tx, &new_u)?;
                record(tx, at, ChangeEntity::User, &id.to_string(), Some(&old_u), Some(&new_u))?;
                rec::update_session(tx, &new_s)?;
                record(tx, at, ChangeEntity::Session, &keep.to_string(), Some(&old_s), Some(&new_s))
            })
            .await
    }

    async fn reset_password(
        &self,
        id: &UserId,
        link: ResetLink,
        expected_epoch: u64,
        phc: &str,
        now: Timestamp,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let (id, phc, meta, at) = (*id, phc.to_string(), meta.clone(), self.db().now());
        let epoch = expected_epoch.checked_add(1).ok_or_else(|| StoreError::internal("password_epoch overflow"))?;
        let resets = link.resets.checked_add(1).ok_or_else(|| StoreError::internal("password_resets overflow"))?;
        self.db()
            .tx(move |tx| {
                let unused = |u: &User| {
                    link.current_for(u)
                        && u.sessions_valid_after.is_none_or(|t| t <= now)
                        && u.password_epoch == expected_epoch
                };
                let Some(old) = rec::load_user(tx, UserKey::Id(&id))?.filter(unused) else {
                    return stale();
                };
                let new = User {
                    password_hash: phc,
                    sessions_valid_after: Some(now),
                    password_reset_at: Some(now),
                    password_resets: resets,
                    password_epoch: epoch,
                    locked_until: None,
                    failed_logins: 0,
                    otp_failures: 0,
                    meta,
                    ..old.clone()
                };
                rec::update_user(tx, &new)?;
                record(tx, at, ChangeEntity::User, &id.to_string(), Some(&old), Some(&new))
            })
            .await
    }

    async fn delete_account(&self, user: &User, meta: &RequestMeta) -> StoreResult<()> {
        let (id, expected, meta, at) = (user.id, user.clone(), meta.clone(), self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old) = rec::load_user(tx, UserKey::Id(&id))? else { return stale() };
                if old.password_hash != expected.password_hash
                    || old.password_epoch != expected.password_epoch
                    || old.email != expected.email
                {
                    return stale();
                }
                // Its username and email are columns of its row; its
                // verifications, challenges and sessions go with it (ON
                // DELETE CASCADE), as its records in DynamoDB end at their
                // expiry. The removal is the request's, as on DynamoDB.
                rec::delete_user(tx, &id)?;
                record(tx, at, ChangeEntity::User, &id.to_string(), Some(&User { meta, ..old }), None)
            })
            .await
    }

    async fn change_email(&self, user: &User, new: &Email, meta: &RequestMeta) -> StoreResult<()> {
        if *new == user.email {
            return conflict(Conflict::EmailTaken);
        }
        let (id, expected, new, meta, at) = (user.id, user.clone(), new.clone(), meta.clone(), self.db().now());
        self.db()
            .tx(move |tx| {
                let as_read = |u: &User| {
                    u.email == expected.email
                        && u.email_changes == expected.email_changes
                        && u.password_epoch == expected.password_epoch
                };
                let Some(old) = rec::load_user(tx, UserKey::Id(&id))?.filter(as_read) else { return stale() };
                // The address is a column of the row, UNIQUE: the check
                // names the conflict, the constraint backs it up.
                if rec::load_user(tx, UserKey::Email(&new))?.is_some() {
                    return conflict(Conflict::EmailTaken);
                }
                let changes =
                    old.email_changes.checked_add(1).ok_or_else(|| StoreError::internal("email_changes overflow"))?;
                let moved = User { email: new, email_changes: changes, meta, ..old.clone() };
                rec::set_user_email(tx, &moved)?;
                record(tx, at, ChangeEntity::User, &id.to_string(), Some(&old), Some(&moved))
            })
            .await
    }

    async fn add_verification(
        &self,
        verification: &VerificationRecord,
        now: Timestamp,
        cooldown_secs: i64,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let (v, meta, at) = (verification.clone(), meta.clone(), self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old) = rec::load_user(tx, UserKey::Id(&v.user_id))? else {
                    return stale();
                };
                let cooled = old.verification_sent_at.is_none_or(|t| t <= now.saturating_sub(cooldown_secs));
                if old.verified
                    || old.retention_over(now)
                    || !cooled
                    || rec::load_verification(tx, &v.token_hash)?.is_some()
                {
                    return stale();
                }
                let new = User { verification_sent_at: Some(now), meta, ..old.clone() };
                rec::insert_verification(tx, &v)?;
                rec::update_user(tx, &new)?;
                record(tx, at, ChangeEntity::Verification, &v.token_hash, None, Some(&v))?;
                record(tx, at, ChangeEntity::User, &new.id.to_string(), Some(&old), Some(&new))
            })
            .await
    }

    async fn give_back_verification_cooldown(
        &self,
        id: &UserId,
        sent_at: Timestamp,
        previous_sent_at: Timestamp,
    ) -> StoreResult<()> {
        let (id, at) = (*id, self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old) = rec::load_user(tx, UserKey::Id(&id))? else {
                    return stale();
                };
                if old.verified || old.verification_sent_at != Some(sent_at) {
                    return stale();
                }
                let new = User { verification_sent_at: Some(previous_sent_at), ..old.clone() };
                rec::update_user(tx, &new)?;
                record(tx, at, ChangeEntity::User, &id.to_string(), Some(&old), Some(&new))
            })
            .await
    }

    async fn verification(&self, token_hash: &str) -> StoreResult<Option<VerificationRecord>> {
        let h = token_hash.to_string();
        self.db().tx(move |tx| Ok(rec::load_verification(tx, &h)?)).await
    }

    async fn consume_verification(
        &self,
        token: &VerificationRecord,
        now: Timestamp,
        meta: &RequestMeta,
    ) -> StoreResult<UserId> {
        // Re-read inside the transaction: here that costs nothing.
        let (h, meta, at) = (token.token_hash.clone(), meta.clone(), self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old_v) = rec::load_verification(tx, &h)? else {
                    return stale();
                };
                if old_v.used_at.is_some() || old_v.expires_at <= now {
                    return stale();
                }
                let Some(old_u) = rec::load_user(tx, UserKey::Id(&old_v.user_id))? else {
                    // The foreign key makes this unreachable short of corruption.
                    return Err(StoreError::internal("verification token without its user"));
                };
                // Past its retention, not yet swept: gone, as on DynamoDB.
                if old_u.retention_over(now) {
                    return stale();
                }
                let new_v = VerificationRecord { used_at: Some(now), meta: meta.clone(), ..old_v.clone() };
                let new_u = User { verified: true, meta, ..old_u.clone() };
                rec::set_verification_used(tx, &h, now, &new_v.meta)?;
                rec::update_user(tx, &new_u)?;
                record(tx, at, ChangeEntity::Verification, &h, Some(&old_v), Some(&new_v))?;
                record(tx, at, ChangeEntity::User, &new_u.id.to_string(), Some(&old_u), Some(&new_u))?;
                Ok(new_u.id)
            })
            .await
    }
}

#[async_trait]
impl ChallengeStore for EmbeddedStore {
    async fn create_challenge_to(
        &self,
        challenge: &Challenge,
        to: Option<&Email>,
        lock: LockCheck,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let (c, to, meta, at) = (challenge.clone(), to.cloned(), meta.clone(), self.db().now());
        self.db()
            .tx(move |tx| {
                if rec::challenge_exists(tx, &c.id)? {
                    return stale();
                }
                // The foreign key refuses a challenge for an unknown user; say
                // so plainly rather than as a constraint error. The whole
                // record is read only when its lock or address is checked.
                let checked = matches!(lock, LockCheck::Unlocked { .. }) || to.is_some();
                let reset = matches!(lock, LockCheck::Unlocked { reset_failures: true });
                let old_u = if checked { rec::load_user(tx, UserKey::Id(&c.user_id))? } else { None };
                if old_u.is_none() && (checked || !rec::user_exists(tx, &c.user_id)?) {
                    // With an address to check, gone since the caller's read
                    // (as on DynamoDB, whose condition finds no item).
                    if to.is_some() {
                        return stale();
                    }
                    return Err(StoreError::internal("challenge for an unknown user"));
                }
                if old_u
                    .as_ref()
                    .is_some_and(|u| matches!(lock, LockCheck::Unlocked { .. }) && u.is_locked(c.created_at))
                {
                    // Locked since the caller's read: refused, and the lock stays.
                    return stale();
                }
                if let (Some(to), Some(u)) = (&to, &old_u)
                    && u.email != *to
                {
                    // Moved to another address since the caller's read.
                    return stale();
                }
                rec::insert_challenge(tx, &c)?;
                record(tx, at, ChangeEntity::Challenge, &c.id.to_string(), None, Some(&c))?;
                if let Some(old_u) = old_u.filter(|u| reset && (u.failed_logins != 0 || u.locked_until.is_some())) {
                    let new_u = User { failed_logins: 0, locked_until: None, meta, ..old_u.clone() };
                    rec::update_user(tx, &new_u)?;
                    record(tx, at, ChangeEntity::User, &new_u.id.to_string(), Some(&old_u), Some(&new_u))?;
                }
                Ok(())
            })
            .await
    }

    async fn challenge(&self, id: &ChallengeId) -> StoreResult<Option<Challenge>> {
        let id = *id;
        self.db().tx(move |tx| Ok(rec::load_challenge(tx, &id)?)).await
    }

    async fn take_challenge_attempt(
        &self,
        id: &ChallengeId,
        now: Timestamp,
        max_attempts: u32,
    ) -> StoreResult<Challenge> {
        let (id, at) = (*id, self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old) = rec::load_challenge(tx, &id)? else {
                    return stale();
                };
                if old.closed(now, max_attempts).is_some() {
                    return stale();
                }
                let new = Challenge { attempts: old.attempts + 1, ..old.clone() };
                rec::update_challenge(tx, &new)?;
                record(tx, at, ChangeEntity::Challenge, &id.to_string(), Some(&old), Some(&new))?;
                Ok(new)
            })
            .await
    }

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
    ) -> StoreResult<()> {
        let (id, code_hash, s, meta, at) = (*id, code_hash.to_string(), session.clone(), meta.clone(), self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old_c) = rec::load_challenge(tx, &id)? else {
                    return stale();
                };
                // The flow compared the code in constant time; this equality
                // only guards against a resend that replaced it meanwhile.
                if old_c.used_at.is_some()
                    || old_c.code_hash != code_hash
                    || old_c.failures >= max_failures
                    || old_c.expires_at <= now
                    || old_c.user_id != s.user_id
                    || rec::load_session(tx, &s.id)?.is_some()
                {
                    return stale();
                }
                // As on DynamoDB: the session is the challenge's user's, and
                // a user that is gone gets none.
                let Some(old_u) = rec::load_user(tx, UserKey::Id(&old_c.user_id))? else {
                    return stale();
                };
                if old_u.otp_failures >= account_budget || old_u.password_epoch != password_epoch {
                    return stale();
                }
                let new_c = Challenge { used_at: Some(now), meta: meta.clone(), ..old_c.clone() };
                rec::update_challenge(tx, &new_c)?;
                record(tx, at, ChangeEntity::Challenge, &id.to_string(), Some(&old_c), Some(&new_c))?;
                rec::insert_session(tx, &s)?;
                record(tx, at, ChangeEntity::Session, &s.id.to_string(), None, Some(&s))?;
                let new_u = User { otp_failures: 0, meta, ..old_u.clone() };
                rec::update_user(tx, &new_u)?;
                record(tx, at, ChangeEntity::User, &new_u.id.to_string(), Some(&old_u), Some(&new_u))?;
                Ok(())
            })
            .await
    }

    async fn record_challenge_failure(
        &self,
        id: &ChallengeId,
        user_id: &UserId,
        max_failures: u32,
        account_budget: u32,
        password_epoch: u64,
        meta: &RequestMeta,
    ) -> StoreResult<CodeFailure> {
        let (id, user_id, meta, at) = (*id, *user_id, meta.clone(), self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old_c) = rec::load_challenge(tx, &id)? else {
                    return stale();
                };
                // As on DynamoDB: a user that is gone counts nothing.
                let Some(old_u) = rec::load_user(tx, UserKey::Id(&user_id))? else {
                    return stale();
                };
                if old_c.used_at.is_some()
                    || old_c.user_id != user_id
                    || old_c.failures >= max_failures
                    || old_u.otp_failures >= account_budget
                    || old_u.password_epoch != password_epoch
                {
                    return stale();
                }
                let new_c = Challenge { failures: old_c.failures + 1, meta: meta.clone(), ..old_c.clone() };
                rec::update_challenge(tx, &new_c)?;
                record(tx, at, ChangeEntity::Challenge, &id.to_string(), Some(&old_c), Some(&new_c))?;
                let new_u = User { otp_failures: old_u.otp_failures.saturating_add(1), meta, ..old_u.clone() };
                let spent_budget = new_u.otp_failures == account_budget;
                rec::update_user(tx, &new_u)?;
                record(tx, at, ChangeEntity::User, &user_id.to_string(), Some(&old_u), Some(&new_u))?;
                Ok(CodeFailure { failures: new_c.failures, spent_budget })
            })
            .await
    }

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
    ) -> StoreResult<()> {
        let (id, code_hash, meta, at) = (*id, code_hash.to_string(), meta.clone(), self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old) = rec::load_challenge(tx, &id)? else {
                    return stale();
                };
                if old.used_at.is_some()
                    || old.created_at <= now.saturating_sub(Challenge::MAX_AGE_SECS)
                    || old.last_sent_at > now.saturating_sub(cooldown_secs)
                    || old.resends >= max_resends
                    || old.failures >= max_failures
                    || old.attempts >= max_failures
                {
                    return stale();
                }
                let new = Challenge {
                    code_hash,
                    expires_at,
                    last_sent_at: now,
                    resends: old.resends + 1,
                    meta,
                    ..old.clone()
                };
                rec::update_challenge(tx, &new)?;
                record(tx, at, ChangeEntity::Challenge, &id.to_string(), Some(&old), Some(&new))
            })
            .await
    }

    async fn give_back_resend(
        &self,
        id: &ChallengeId,
        code_hash: &str,
        sent_at: Timestamp,
        previous_sent_at: Timestamp,
    ) -> StoreResult<()> {
        let (id, code_hash, at) = (*id, code_hash.to_string(), self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old) = rec::load_challenge(tx, &id)? else {
                    return stale();
                };
                if old.code_hash != code_hash || old.last_sent_at != sent_at || old.resends == 0 {
                    return stale();
                }
                let new = Challenge { last_sent_at: previous_sent_at, resends: old.resends - 1, ..old.clone() };
                rec::update_challenge(tx, &new)?;
                record(tx, at, ChangeEntity::Challenge, &id.to_string(), Some(&old), Some(&new))
            })
            .await
    }
}

#[async_trait]
impl SessionStore for EmbeddedStore {
    async fn session(&self, id: &SessionId) -> StoreResult<Option<Session>> {
        let id = *id;
        self.db().tx(move |tx| Ok(rec::load_session(tx, &id)?)).await
    }

    async fn rotate_session(
        &self,
        id: &SessionId,
        old_hash: &str,
        new_hash: &str,
        retry_seal: &str,
        now: Timestamp,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let (id, old_hash, new_hash, meta, at) =
            (*id, old_hash.to_string(), new_hash.to_string(), meta.clone(), self.db().now());
        let retry_seal = Some(retry_seal.to_string());
        self.db()
            .tx(move |tx| {
                let Some(old) = rec::load_session(tx, &id)? else {
                    return stale();
                };
                if old.revoked_at.is_some() || old.refresh_hash != old_hash {
                    return stale();
                }
                let new = Session {
                    refresh_hash: new_hash,
                    retry_seal,
                    refreshed_at: now,
                    generation: old.generation.saturating_add(1),
                    meta,
                    ..old.clone()
                };
                rec::update_session(tx, &new)?;
                record(tx, at, ChangeEntity::Session, &id.to_string(), Some(&old), Some(&new))
            })
            .await
    }

    async fn revoke_session(
        &self,
        id: &SessionId,
        now: Timestamp,
        reason: &str,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let (id, reason, meta, at) = (*id, reason.to_string(), meta.clone(), self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old) = rec::load_session(tx, &id)? else {
                    return Ok(());
                };
                if old.revoked_at.is_some() {
                    return Ok(());
                }
                let new = Session { revoked_at: Some(now), revoke_reason: Some(reason), meta, ..old.clone() };
                rec::update_session(tx, &new)?;
                record(tx, at, ChangeEntity::Session, &id.to_string(), Some(&old), Some(&new))
            })
            .await
    }

    async fn live_sessions_of(&self, user_id: &UserId, now: Timestamp) -> StoreResult<Vec<Session>> {
        let user_id = *user_id;
        self.db().tx(move |tx| Ok(rec::live_sessions_of(tx, &user_id, now)?)).await
    }

    async fn record_refresh_retry(&self, id: &SessionId, current_hash: &str, meta: &RequestMeta) -> StoreResult<()> {
        let (id, current_hash, meta, at) = (*id, current_hash.to_string(), meta.clone(), self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old) = rec::load_session(tx, &id)? else {
                    return stale();
                };
                if old.revoked_at.is_some() || old.refresh_hash != current_hash {
                    return stale();
                }
                let new = Session { retries_answered: old.retries_answered.saturating_add(1), meta, ..old.clone() };
                rec::update_session(tx, &new)?;
                record(tx, at, ChangeEntity::Session, &id.to_string(), Some(&old), Some(&new))
            })
            .await
    }
}

#[async_trait]
impl OtpStore for EmbeddedStore {
    async fn otp(&self, address_hash: &str) -> StoreResult<Option<OtpRecord>> {
        let h = address_hash.to_string();
        self.db().tx(move |tx| Ok(rec::load_otp(tx, &h)?)).await
    }

    async fn put_otp(&self, record_: &OtpRecord, expected: Option<&OtpRecord>) -> StoreResult<()> {
        let guard = |o: &OtpRecord| (o.last_sent_at, o.failures, o.attempts, o.used_at);
        let (new, expected, at) = (record_.clone(), expected.map(guard), self.db().now());
        self.db()
            .tx(move |tx| {
                let old = rec::load_otp(tx, &new.address_hash)?;
                if old.as_ref().map(guard) != expected {
                    return stale();
                }
                rec::upsert_otp(tx, &new)?;
                record(tx, at, ChangeEntity::Otp, &new.address_hash, old.as_ref(), Some(&new))
            })
            .await
    }

    async fn take_otp_attempt(&self, address_hash: &str, now: Timestamp, max_attempts: u32) -> StoreResult<OtpRecord> {
        let (h, at) = (address_hash.to_string(), self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old) = rec::load_otp(tx, &h)? else {
                    return stale();
                };
                if old.closed(now, max_attempts).is_some() {
                    return stale();
                }
                let new = OtpRecord { attempts: old.attempts + 1, ..old.clone() };
                rec::upsert_otp(tx, &new)?;
                record(tx, at, ChangeEntity::Otp, &h, Some(&old), Some(&new))?;
                Ok(new)
            })
            .await
    }

    async fn redeem_otp(
        &self,
        address_hash: &str,
        code_hash: &str,
        now: Timestamp,
        max_failures: u32,
        budget: u32,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let (h, code_hash, meta, at) = (address_hash.to_string(), code_hash.to_string(), meta.clone(), self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old) = rec::load_otp(tx, &h)? else {
                    return stale();
                };
                if old.used_at.is_some()
                    || old.code_hash != code_hash
                    || old.failures >= max_failures
                    || old.budget_failures >= budget
                    || old.expires_at <= now
                {
                    return stale();
                }
                let new = OtpRecord { used_at: Some(now), budget_failures: 0, meta, ..old.clone() };
                rec::upsert_otp(tx, &new)?;
                record(tx, at, ChangeEntity::Otp, &h, Some(&old), Some(&new))
            })
            .await
    }

    async fn record_otp_failure(
        &self,
        address_hash: &str,
        max_failures: u32,
        budget: u32,
        meta: &RequestMeta,
    ) -> StoreResult<u32> {
        let (h, meta, at) = (address_hash.to_string(), meta.clone(), self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old) = rec::load_otp(tx, &h)? else {
                    return stale();
                };
                if old.used_at.is_some() || old.failures >= max_failures || old.budget_failures >= budget {
                    return stale();
                }
                let new = OtpRecord {
                    failures: old.failures + 1,
                    budget_failures: old.budget_failures + 1,
                    meta,
                    ..old.clone()
                };
                rec::upsert_otp(tx, &new)?;
                record(tx, at, ChangeEntity::Otp, &h, Some(&old), Some(&new))?;
                Ok(new.failures)
            })
            .await
    }

    async fn give_back_otp_cooldown(
        &self,
        address_hash: &str,
        code_hash: &str,
        sent_at: Timestamp,
        previous_sent_at: Timestamp,
    ) -> StoreResult<()> {
        let (h, code_hash, at) = (address_hash.to_string(), code_hash.to_string(), self.db().now());
        self.db()
            .tx(move |tx| {
                let Some(old) = rec::load_otp(tx, &h)? else {
                    return stale();
                };
                if old.code_hash != code_hash || old.last_sent_at != sent_at {
                    return stale();
                }
                let new = OtpRecord { last_sent_at: previous_sent_at, ..old.clone() };
                rec::upsert_otp(tx, &new)?;
                record(tx, at, ChangeEntity::Otp, &h, Some(&old), Some(&new))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::changes::{Change, ChangeOp};
    use super::super::test_support::{T0, store, user};
    use super::*;
    use crate::rng::{OsSecureRng, SecureRng};
    use std::sync::{Arc, LazyLock};

    /// The meta of the requests that modify records in these tests.
    static META: LazyLock<RequestMeta> = LazyLock::new(|| RequestMeta {
        request_id: Some("req-2".into()),
        ip: Some("198.51.100.9".into()),
        user_agent: Some("store-tests".into()),
    });

    fn token() -> String {
        hex::encode(OsSecureRng.bytes32())
    }

    fn verification(u: &User) -> VerificationRecord {
        VerificationRecord {
            token_hash: token(),
            user_id: u.id,
            created_at: T0,
            expires_at: T0 + 86_400,
            used_at: None,
            meta: RequestMeta::default(),
        }
    }

    fn challenge(u: &User) -> Challenge {
        Challenge {
            id: ChallengeId::random(&OsSecureRng),
            user_id: u.id,
            code_hash: "code-1".into(),
            created_at: T0,
            expires_at: T0 + 300,
            last_sent_at: T0,
            resends: 0,
            failures: 0,
            attempts: 0,
            password_epoch: 0,
            used_at: None,
            meta: RequestMeta::default(),
        }
    }

    fn session(u: &User) -> Session {
        Session {
            id: SessionId::random(&OsSecureRng),
            user_id: u.id,
            refresh_hash: "refresh-0".into(),
            created_at: T0,
            refreshed_at: T0,
            expires_at: T0 + 86_400,
            generation: 0,
            revoked_at: None,
            revoke_reason: None,
            valid_from: None,
            password_epoch: Some(0),
            retry_seal: None,
            retries_answered: 0,
            meta: RequestMeta::default(),
        }
    }

    fn otp(addr: &str, last_sent_at: i64) -> OtpRecord {
        OtpRecord {
            address_hash: addr.into(),
            code_hash: "otp-1".into(),
            created_at: last_sent_at,
            expires_at: last_sent_at + 600,
            last_sent_at,
            failures: 0,
            attempts: 0,
            budget_failures: 0,
            used_at: None,
            meta: RequestMeta::default(),
        }
    }

    async fn count(s: &EmbeddedStore, table: &'static str) -> i64 {
        s.db()
            .tx(move |tx| Ok(tx.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?))
            .await
            .unwrap()
    }

    async fn changes(s: &EmbeddedStore) -> Vec<Change> {
        s.changes_after(0, 1000).await.unwrap()
    }

    fn is_conflict<T: std::fmt::Debug>(r: StoreResult<T>, c: Conflict) -> bool {
        matches!(r, Err(StoreError::Conflict(x)) if x == c)
    }

    async fn registered(s: &EmbeddedStore, name: &str) -> User {
        let u = user(name, &format!("{name}@example.com"));
        s.create_user(&u, &verification(&u), i64::MIN).await.unwrap();
        u
    }

    #[tokio::test]
    async fn a_challenge_needs_a_new_id_and_a_known_user_and_a_refusal_writes_nothing() {
        let (s, _) = store();
        let u = registered(&s, "ivy").await;
        let before = changes(&s).await.len();
        let stranger = user("nobody", "nobody@example.com");
        let locks = [
            LockCheck::TrustedDevice,
            LockCheck::Unlocked { reset_failures: false },
            LockCheck::Unlocked { reset_failures: true },
        ];
        for lock in locks {
            assert!(
                matches!(s.create_challenge(&challenge(&stranger), lock, &META).await, Err(StoreError::Internal(_))),
                "a challenge for an unknown user ({lock:?})"
            );
        }
        let c = challenge(&u);
        s.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
        for lock in locks {
            let again = Challenge { code_hash: "code-2".into(), ..c.clone() };
            assert!(is_conflict(s.create_challenge(&again, lock, &META).await, Conflict::Stale), "a reused id");
        }
        assert_eq!(s.challenge(&c.id).await.unwrap(), Some(c), "the first challenge is unchanged");
        assert_eq!(count(&s, "challenges").await, 1);
        assert_eq!(changes(&s).await.len(), before + 1, "only the one challenge made a change row");
    }

    #[tokio::test]
    async fn not_found_is_none() {
        let (s, _) = store();
        assert!(s.user_by_id(&UserId::random(&OsSecureRng)).await.unwrap().is_none());
        assert!(s.user_by_username(&Username::parse("nobody").unwrap()).await.unwrap().is_none());
        assert!(s.user_by_email(&Email::parse("no@example.com").unwrap()).await.unwrap().is_none());
        assert!(s.verification("nope").await.unwrap().is_none());
        assert!(s.challenge(&ChallengeId::random(&OsSecureRng)).await.unwrap().is_none());
        assert!(s.session(&SessionId::random(&OsSecureRng)).await.unwrap().is_none());
        assert!(s.otp("nope").await.unwrap().is_none());
    }

    /// An account stored with an address input no longer accepts (a
    /// format character) still reads, by id and by its address.
    #[tokio::test]
    async fn an_address_stored_before_format_characters_were_refused_still_reads() {
        let (s, _) = store();
        let u =
            User { email: Email::parse_stored("zw\u{200D}@example.com").unwrap(), ..user("zoe", "zoe@example.com") };
        s.create_user(&u, &verification(&u), i64::MIN).await.unwrap();
        assert_eq!(s.user_by_id(&u.id).await.unwrap().as_ref(), Some(&u));
        assert_eq!(s.user_by_email(&u.email).await.unwrap().as_ref(), Some(&u));
    }

    #[tokio::test]
    async fn create_user_round_trips_and_feeds_the_change_log() {
        let (s, _) = store();
        let u = user("alice", "Alice@Example.com");
        let v = verification(&u);
        s.create_user(&u, &v, i64::MIN).await.unwrap();
        assert_eq!(s.user_by_id(&u.id).await.unwrap().as_ref(), Some(&u));
        assert_eq!(s.user_by_username(&u.username).await.unwrap().as_ref(), Some(&u));
        assert_eq!(s.user_by_email(&Email::parse("alice@example.com").unwrap()).await.unwrap().as_ref(), Some(&u));
        assert_eq!(s.verification(&v.token_hash).await.unwrap().as_ref(), Some(&v));

        let feed = changes(&s).await;
        assert_eq!(feed.len(), 2);
        assert_eq!(
            (feed[0].entity, feed[0].op, feed[0].key.as_str()),
            (ChangeEntity::User, ChangeOp::Insert, u.id.to_string().as_str())
        );
        assert_eq!(feed[0].old, None);
        assert_eq!(feed[0].new, Some(serde_json::to_value(&u).unwrap()));
        assert_eq!(feed[0].at, T0);
        assert_eq!((feed[1].entity, feed[1].key.as_str()), (ChangeEntity::Verification, v.token_hash.as_str()));
        assert!(feed[1].seq > feed[0].seq);
        assert_eq!(s.changes_after(feed[0].seq, 10).await.unwrap(), feed[1..].to_vec());
        assert_eq!(s.changes_after(0, 1).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn username_conflict_wins_over_email_and_only_a_hold_is_written() {
        let (s, _) = store();
        let alice = registered(&s, "alice").await;
        let before = changes(&s).await;

        // Both taken: the username is reported.
        let both = user("alice", "alice@example.com");
        assert!(is_conflict(s.create_user(&both, &verification(&both), i64::MIN).await, Conflict::UsernameTaken));
        // Only the username.
        let name = user("alice", "other@example.com");
        assert!(is_conflict(s.create_user(&name, &verification(&name), i64::MIN).await, Conflict::UsernameTaken));
        // Only the email (in another case: emails are normalised).
        let mail = user("bob", "ALICE@example.com");
        let mail_v = verification(&mail);
        assert!(is_conflict(s.create_user(&mail, &mail_v, i64::MIN).await, Conflict::EmailTaken));

        assert_eq!(count(&s, "users").await, 1);
        assert_eq!(count(&s, "verifications").await, 1, "no orphan token");
        assert!(s.verification(&mail_v.token_hash).await.unwrap().is_none());
        assert!(s.user_by_username(&mail.username).await.unwrap().is_none(), "a hold is no account");
        assert_eq!(count(&s, "username_holds").await, 1, "the taken email held its username (only)");
        assert_eq!(changes(&s).await, before, "a refused write, its hold included, leaves no change row");
        assert_eq!(s.user_by_id(&alice.id).await.unwrap(), Some(alice));
    }

    #[tokio::test]
    async fn a_write_that_fails_midway_rolls_back_with_its_feed_rows() {
        let (s, _) = store();
        let u = user("nina", "nina@example.com");
        // A token for a user that does not exist: the user row and its change
        // row are written first, then the foreign key refuses the token.
        let v = VerificationRecord { user_id: UserId::random(&OsSecureRng), ..verification(&u) };
        assert!(matches!(s.create_user(&u, &v, i64::MIN).await, Err(StoreError::Internal(_))));
        assert_eq!(count(&s, "users").await, 0);
        assert_eq!(count(&s, "changes").await, 0);
        // And the connection is fit for the next call.
        s.create_user(&u, &verification(&u), i64::MIN).await.unwrap();
        assert_eq!(count(&s, "changes").await, 2);
    }

    #[tokio::test]
    async fn twenty_concurrent_registrations_of_one_email_make_one_account() {
        let (s, _) = store();
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let u = user(&format!("user{i}"), "same@example.com");
                    s.create_user(&u, &verification(&u), i64::MIN).await
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(StoreError::Conflict(Conflict::EmailTaken)) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(ok, 1);
        assert_eq!(count(&s, "users").await, 1);
        assert_eq!(count(&s, "verifications").await, 1);
        assert_eq!(count(&s, "changes").await, 2);
    }

    #[tokio::test]
    async fn a_verification_token_is_consumed_once_and_not_after_expiry() {
        let (s, _) = store();
        let u = user("carol", "carol@example.com");
        let v = verification(&u);
        s.create_user(&u, &v, i64::MIN).await.unwrap();
        assert!(
            is_conflict(s.consume_verification(&v, v.expires_at, &META).await, Conflict::Stale),
            "expired at expires_at"
        );
        assert!(!s.user_by_id(&u.id).await.unwrap().unwrap().verified);
        assert_eq!(s.consume_verification(&v, T0 + 10, &META).await.unwrap(), u.id);
        assert!(s.user_by_id(&u.id).await.unwrap().unwrap().verified);
        assert_eq!(s.verification(&v.token_hash).await.unwrap().unwrap().used_at, Some(T0 + 10));
        assert!(is_conflict(s.consume_verification(&v, T0 + 11, &META).await, Conflict::Stale));
        assert!(is_conflict(
            s.consume_verification(&VerificationRecord { token_hash: "unknown".into(), ..v.clone() }, T0, &META).await,
            Conflict::Stale
        ));
    }

    #[tokio::test]
    async fn concurrent_consumes_of_one_token_have_one_winner() {
        let (s, _) = store();
        let u = user("dave", "dave@example.com");
        let v = verification(&u);
        s.create_user(&u, &v, i64::MIN).await.unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (s, h) = (s.clone(), v.clone());
                tokio::spawn(async move { s.consume_verification(&h, T0 + 1, &META).await })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap().is_ok());
        }
        assert_eq!(ok, 1);
    }

    #[tokio::test]
    async fn add_verification_respects_the_cooldown_and_verified_users() {
        let (s, _) = store();
        let u = registered(&s, "erin").await; // sent at T0
        let v2 = VerificationRecord { created_at: T0 + 30, ..verification(&u) };
        assert!(is_conflict(s.add_verification(&v2, T0 + 30, 60, &META).await, Conflict::Stale));
        assert!(s.verification(&v2.token_hash).await.unwrap().is_none(), "nothing written");
        s.add_verification(&v2, T0 + 60, 60, &META).await.unwrap();
        assert_eq!(s.user_by_id(&u.id).await.unwrap().unwrap().verification_sent_at, Some(T0 + 60));
        assert!(s.verification(&v2.token_hash).await.unwrap().is_some());
        s.consume_verification(&v2, T0 + 61, &META).await.unwrap();
        let v3 = verification(&u);
        assert!(
            is_conflict(s.add_verification(&v3, T0 + 10_000, 60, &META).await, Conflict::Stale),
            "already verified"
        );
    }

    #[tokio::test]
    async fn login_failures_lock_at_the_threshold_and_not_beyond() {
        let (s, _) = store();
        let u = registered(&s, "frank").await;
        // Some code failures on record, to see the lock leave them alone
        // (only a right code or a password reset gives the budget back).
        let c = challenge(&u);
        s.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
        s.record_challenge_failure(&c.id, &u.id, 6, u32::MAX, c.password_epoch, &META).await.unwrap();

        let (sr, id) = (&s, u.id);
        let fail = move |t| async move { sr.record_login_failure(&id, t, 3, 900, &META).await.unwrap() };
        for n in 1..=2 {
            let after = fail(T0).await;
            assert_eq!((after.user.failed_logins, after.user.locked_until, after.started_lock), (n, None, false));
        }
        let LoginFailure { user: locked, started_lock } = fail(T0 + 5).await;
        assert_eq!((locked.failed_logins, locked.locked_until, locked.otp_failures), (0, Some(T0 + 905), 1));
        assert!(started_lock);
        let feed_len = changes(&s).await.len();
        // Hammering during the lock changes nothing and cannot extend it.
        for t in [T0 + 6, T0 + 904] {
            assert_eq!(fail(t).await, LoginFailure { user: locked.clone(), started_lock: false });
        }
        assert_eq!(changes(&s).await.len(), feed_len);
        // After the lock the count starts again from zero.
        let after = fail(T0 + 905).await.user;
        assert_eq!((after.failed_logins, after.is_locked(T0 + 905)), (1, false));
        assert_eq!(fail(T0 + 906).await.user.failed_logins, 2);
        assert!(fail(T0 + 907).await.user.is_locked(T0 + 907));
        assert!(is_conflict(
            s.record_login_failure(&UserId::random(&OsSecureRng), T0, 3, 900, &META).await,
            Conflict::Stale
        ));
    }

    #[tokio::test]
    async fn a_right_password_resets_the_failures_with_the_new_challenge() {
        let (s, _) = store();
        let u = registered(&s, "gina").await;
        s.record_login_failure(&u.id, T0, 10, 900, &META).await.unwrap();
        s.create_challenge(&challenge(&u), LockCheck::Unlocked { reset_failures: true }, &META).await.unwrap();
        assert_eq!(s.user_by_id(&u.id).await.unwrap().unwrap().failed_logins, 0);
        s.set_password_hash(&u.id, &u.password_hash, "$argon2id$new", &META).await.unwrap();
        assert_eq!(s.user_by_id(&u.id).await.unwrap().unwrap().password_hash, "$argon2id$new");
    }

    #[tokio::test]
    async fn redeeming_a_challenge_has_one_winner_among_twenty() {
        let (s, _) = store();
        let u = registered(&s, "hank").await;
        let c = challenge(&u);
        s.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
        s.record_challenge_failure(&c.id, &u.id, 6, u32::MAX, c.password_epoch, &META).await.unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (s, u) = (s.clone(), u.clone());
                tokio::spawn(async move {
                    s.redeem_challenge(&c.id, "code-1", T0 + 10, 6, u32::MAX, c.password_epoch, &session(&u), &META)
                        .await
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(StoreError::Conflict(Conflict::Stale)) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(ok, 1);
        assert_eq!(count(&s, "sessions").await, 1);
        assert_eq!(s.challenge(&c.id).await.unwrap().unwrap().used_at, Some(T0 + 10));
        assert_eq!(s.user_by_id(&u.id).await.unwrap().unwrap().otp_failures, 0, "budget reset on success");
    }

    #[tokio::test]
    async fn redeem_checks_code_expiry_and_cap() {
        let (s, _) = store();
        let u = registered(&s, "ivan").await;
        let c = challenge(&u);
        s.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
        let before = changes(&s).await;
        assert!(is_conflict(
            s.redeem_challenge(&c.id, "other", T0, 6, u32::MAX, c.password_epoch, &session(&u), &META).await,
            Conflict::Stale
        ));
        assert!(is_conflict(
            s.redeem_challenge(&c.id, "code-1", c.expires_at, 6, u32::MAX, c.password_epoch, &session(&u), &META).await,
            Conflict::Stale
        ));
        assert!(is_conflict(
            s.redeem_challenge(&c.id, "code-1", T0, 0, u32::MAX, c.password_epoch, &session(&u), &META).await,
            Conflict::Stale
        ));
        assert!(is_conflict(
            s.redeem_challenge(&ChallengeId::random(&OsSecureRng), "code-1", T0, 6, u32::MAX, 0, &session(&u), &META)
                .await,
            Conflict::Stale
        ));
        assert_eq!(count(&s, "sessions").await, 0);
        assert_eq!(changes(&s).await, before);
    }

    #[tokio::test]
    async fn concurrent_wrong_codes_never_pass_the_cap() {
        let (s, _) = store();
        let u = registered(&s, "judy").await;
        let c = challenge(&u);
        s.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.record_challenge_failure(&c.id, &u.id, 6, u32::MAX, c.password_epoch, &META).await
                })
            })
            .collect();
        let mut counts = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(f) => counts.push(f.failures),
                Err(StoreError::Conflict(Conflict::Stale)) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        counts.sort_unstable();
        assert_eq!(counts, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(s.challenge(&c.id).await.unwrap().unwrap().failures, 6);
        assert_eq!(s.user_by_id(&u.id).await.unwrap().unwrap().otp_failures, 6);
        // Exhausted: the right code no longer redeems.
        assert!(is_conflict(
            s.redeem_challenge(&c.id, "code-1", T0, 6, u32::MAX, c.password_epoch, &session(&u), &META).await,
            Conflict::Stale
        ));
    }

    #[tokio::test]
    async fn replacing_a_code_is_guarded_and_keeps_the_failures() {
        let (s, _) = store();
        let u = registered(&s, "kate").await;
        let c = challenge(&u);
        s.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
        s.record_challenge_failure(&c.id, &u.id, 6, u32::MAX, c.password_epoch, &META).await.unwrap();
        let replace = |now: i64, max_resends: u32, max_failures: u32| {
            let s = s.clone();
            async move {
                s.replace_challenge_code(
                    &c.id,
                    &format!("code-{now}"),
                    now + 300,
                    now,
                    60,
                    max_resends,
                    max_failures,
                    &META,
                )
                .await
            }
        };
        // Cooldown: 60 s after the last send.
        assert!(is_conflict(replace(T0 + 59, 3, 6).await, Conflict::Stale));
        replace(T0 + 60, 3, 6).await.unwrap();
        let after = s.challenge(&c.id).await.unwrap().unwrap();
        assert_eq!(
            (after.code_hash.as_str(), after.expires_at, after.last_sent_at, after.resends, after.failures),
            ("code-1700000060", T0 + 360, T0 + 60, 1, 1),
            "failures are never reset"
        );
        // The cooldown now counts from the resend.
        assert!(is_conflict(replace(T0 + 100, 3, 6).await, Conflict::Stale));
        replace(T0 + 120, 3, 6).await.unwrap();
        // Max resends (2 done, max 2).
        assert!(is_conflict(replace(T0 + 1000, 2, 6).await, Conflict::Stale));
        // Failure cap reached (1 failure, max 1).
        assert!(is_conflict(replace(T0 + 1000, 3, 1).await, Conflict::Stale));
        // Used.
        s.redeem_challenge(&c.id, "code-1700000120", T0 + 130, 6, u32::MAX, c.password_epoch, &session(&u), &META)
            .await
            .unwrap();
        assert!(is_conflict(replace(T0 + 2000, 9, 6).await, Conflict::Stale));
        assert_eq!(s.challenge(&c.id).await.unwrap().unwrap().resends, 2);
    }

    #[tokio::test]
    async fn sessions_rotate_once_and_revoke_idempotently() {
        let (s, _) = store();
        let u = registered(&s, "liam").await;
        let c = challenge(&u);
        s.create_challenge(&c, LockCheck::Unlocked { reset_failures: false }, &META).await.unwrap();
        let sess = session(&u);
        s.redeem_challenge(&c.id, "code-1", T0, 6, u32::MAX, c.password_epoch, &sess, &META).await.unwrap();
        s.rotate_session(&sess.id, "refresh-0", "refresh-1", "seal-1", T0 + 5, &META).await.unwrap();
        let got = s.session(&sess.id).await.unwrap().unwrap();
        assert_eq!((got.refresh_hash.as_str(), got.refreshed_at, got.generation), ("refresh-1", T0 + 5, 1));
        assert!(is_conflict(
            s.rotate_session(&sess.id, "refresh-0", "refresh-2", "seal-2", T0 + 6, &META).await,
            Conflict::Stale
        ));

        s.revoke_session(&sess.id, T0 + 7, "logout", &META).await.unwrap();
        let feed_len = changes(&s).await.len();
        s.revoke_session(&sess.id, T0 + 8, "again", &META).await.unwrap();
        s.revoke_session(&SessionId::random(&OsSecureRng), T0, "unknown", &META).await.unwrap();
        let got = s.session(&sess.id).await.unwrap().unwrap();
        assert_eq!((got.revoked_at, got.revoke_reason.as_deref()), (Some(T0 + 7), Some("logout")));
        assert_eq!(changes(&s).await.len(), feed_len, "a second revoke changes nothing");
        assert!(is_conflict(
            s.rotate_session(&sess.id, "refresh-1", "refresh-2", "seal-2", T0 + 9, &META).await,
            Conflict::Stale
        ));
    }

    #[tokio::test]
    async fn otps_are_written_conditionally_redeemed_once_and_capped() {
        let (s, _) = store();
        let first = otp("addr", T0);
        assert!(
            is_conflict(
                s.put_otp(&first, Some(&OtpRecord { last_sent_at: T0 - 1, ..first.clone() })).await,
                Conflict::Stale
            ),
            "expected a record"
        );
        s.put_otp(&first, None).await.unwrap();
        assert!(is_conflict(s.put_otp(&first, None).await, Conflict::Stale), "expected none");
        assert_eq!(s.otp("addr").await.unwrap(), Some(first.clone()));

        assert_eq!(s.record_otp_failure("addr", 2, 100, &META).await.unwrap(), 1);
        let counted = OtpRecord { failures: 1, budget_failures: 1, ..first.clone() };
        let second = OtpRecord { failures: 1, ..otp("addr", T0 + 60) };
        assert!(is_conflict(
            s.put_otp(&second, Some(&OtpRecord { last_sent_at: T0 + 1, ..counted.clone() })).await,
            Conflict::Stale
        ));
        s.put_otp(&second, Some(&first)).await.unwrap_err();
        s.put_otp(&second, Some(&counted)).await.unwrap();
        assert!(is_conflict(s.redeem_otp("addr", "wrong", T0 + 61, 2, 100, &META).await, Conflict::Stale));
        assert!(is_conflict(s.redeem_otp("addr", "otp-1", T0 + 660, 2, 100, &META).await, Conflict::Stale), "expired");

        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.redeem_otp("addr", "otp-1", T0 + 61, 2, 100, &META).await })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap().is_ok());
        }
        assert_eq!(ok, 1);
        assert!(is_conflict(s.record_otp_failure("addr", 5, 100, &META).await, Conflict::Stale), "used");
        assert!(is_conflict(s.record_otp_failure("nope", 5, 100, &META).await, Conflict::Stale));

        s.put_otp(&otp("capped", T0), None).await.unwrap();
        assert_eq!(s.record_otp_failure("capped", 2, 100, &META).await.unwrap(), 1);
        assert_eq!(s.record_otp_failure("capped", 2, 100, &META).await.unwrap(), 2);
        assert!(is_conflict(s.record_otp_failure("capped", 2, 100, &META).await, Conflict::Stale));
        assert!(is_conflict(s.redeem_otp("capped", "otp-1", T0 + 1, 2, 100, &META).await, Conflict::Stale));
    }

    #[tokio::test]
    async fn the_feed_records_old_and_new_images() {
        let (s, clock) = store();
        let u = registered(&s, "mona").await;
        let seq = changes(&s).await.last().unwrap().seq;
        clock.advance(42);
        let after = s.record_login_failure(&u.id, T0, 5, 900, &META).await.unwrap().user;
        let feed = s.changes_after(seq, 10).await.unwrap();
        assert_eq!(feed.len(), 1);
        let ch = &feed[0];
        assert_eq!((ch.entity, ch.op, ch.at), (ChangeEntity::User, ChangeOp::Modify, T0 + 42));
        assert_eq!(ch.old, Some(serde_json::to_value(&u).unwrap()));
        assert_eq!(ch.new, Some(serde_json::to_value(&after).unwrap()));
        assert_eq!(after.meta, *META, "the new image carries the modifying request's meta");

        s.put_otp(&otp("feed", T0), None).await.unwrap();
        let last = changes(&s).await.pop().unwrap();
        assert_eq!(
            (last.entity, last.op, last.key.as_str(), last.old),
            (ChangeEntity::Otp, ChangeOp::Insert, "feed", None)
        );
    }

    #[tokio::test]
    async fn concurrent_mixed_writers_leave_a_consistent_feed() {
        let (s, _) = store();
        let s = Arc::new(s);
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let u = user(&format!("mix{i}"), &format!("mix{i}@example.com"));
                    s.create_user(&u, &verification(&u), i64::MIN).await.unwrap();
                    s.record_login_failure(&u.id, T0, 10, 900, &META).await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let feed = changes(&s).await;
        assert_eq!(feed.len(), 30);
        assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq));
    }
}
