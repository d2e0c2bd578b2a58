//! A signed-in user's password change, and their "sign out everywhere
//! else": both end every other session of the user at once (SECURITY.md),
//! and the session that asked lives on. Both first check the current
//! password: a wrong one counts toward the account's lock as at login, and
//! a session that guesses into or through a lock is ended. Both end
//! every device token of the account too (the epoch they vouch at moves
//! on) and give the client that asked a new one at the new epoch, as a
//! reset by mail does: it proved the password through a live session.

use super::Auth;
use super::sessions::Caller;
use crate::clock::Timestamp;
use crate::domain::{Password, RequestMeta, SessionId, User, UserId};
use crate::error::{Error, StoreError};
use crate::mail::MailJob;

/// What a new `password_epoch` comes with.
enum NewEpoch<'a> {
    /// A new password, as this PHC string.
    Password(&'a str),
    /// The password stays: only the other sessions end.
    SamePassword,
}

impl Auth {
    /// Changes the password of `caller` (an access token, or a browser's
    /// session) from `current` to `new` (the registration rules apply,
    /// checked after the current password). Every other session of the user
    /// ends; this one stays. Returns a device token for this client at the
    /// new epoch (the change ended its older one).
    pub async fn change_password(
        &self,
        caller: Caller<'_>,
        current: String,
        new: String,
        meta: &RequestMeta,
    ) -> Result<String, Error> {
        let (uid, sid, user) = self.check_current_password(caller, current, "password change", meta).await?;
        let new = self.new_password(new, &user.username, &user.email).map_err(|e| match e {
            Error::Validation { reason, .. } => Error::Validation { field: "new_password", reason },
            other => other,
        })?;
        let phc = self.hasher.hash(&new, self.ports.rng.as_ref()).await?;
        let (at, epoch) = self.next_epoch(&uid, &sid, &user, NewEpoch::Password(&phc), meta).await?;
        tracing::info!(user_id = %uid, session_id = %sid, "password changed; other sessions ended");
        let notice = MailJob::PasswordChanged { username: user.username.to_string(), at, by_reset: false };
        self.notify(&user.email, Some(uid.to_string()), meta, notice).await;
        Ok(self.device_token(&uid, at, epoch))
    }

    /// "Sign out everywhere else" (ASVS 5.0 7.5.2: terminate all other
    /// sessions, having authenticated again): once `current` is the
    /// password of the caller of `access_token`, every other session of
    /// the user ends, and with them every login in progress and every
    /// device token (a lost device stops vouching for the account); this
    /// session stays. The password does not change, and the owner is not
    /// mailed (they asked, with the password); the audit trail records
    /// `other_sessions_ended`. Returns a device token for this client at
    /// the new epoch.
    pub async fn end_other_sessions(
        &self,
        caller: Caller<'_>,
        current: String,
        meta: &RequestMeta,
    ) -> Result<String, Error> {
        let (uid, sid, user) = self.check_current_password(caller, current, "sign-out elsewhere", meta).await?;
        let (at, epoch) = self.next_epoch(&uid, &sid, &user, NewEpoch::SamePassword, meta).await?;
        tracing::info!(user_id = %uid, session_id = %sid, "other sessions ended at the user's request");
        Ok(self.device_token(&uid, at, epoch))
    }

    /// Deletes the caller's account once `current` is its password (checked
    /// as for a password change: the same limits, and a wrong one counts
    /// toward the lock). The user and its username and email go at once,
    /// in one write (both names are free from then on); every session,
    /// login in progress, link and device token of it ends with it, as each
    /// reads the account. The owner is mailed, and the audit trail records
    /// `account_deleted` with this request. A change or reset of the
    /// password since it was checked wins, as it does over a change.
    pub async fn delete_account(&self, caller: Caller<'_>, current: String, meta: &RequestMeta) -> Result<(), Error> {
        let (uid, sid, mut user) = self.check_current_password(caller, current, "account deletion", meta).await?;
        let mut tries = 0;
        loop {
            match self.ports.users.delete_account(&user, meta).await {
                Ok(()) => break,
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
            tries += 1;
            // An address change committed meanwhile (it moves neither the
            // hash nor the epoch): made again with the new address, whose
            // claim goes with the account.
            if tries < 3
                && let Some(now) = self.ports.users.user_by_id(&uid).await?
                && now.email != user.email
                && (&now.password_hash, now.password_epoch) == (&user.password_hash, user.password_epoch)
            {
                user.email = now.email;
                continue;
            }
            let at = self.now();
            (user.password_hash, user.password_epoch) =
                self.recheck(&uid, &sid, &user.password_hash, user.password_epoch, tries, at).await?;
        }
        let at = self.now();
        tracing::info!(user_id = %uid, session_id = %sid, "account deleted by its owner");
        let notice = MailJob::AccountDeleted { username: user.username.to_string(), at };
        self.notify(&user.email, Some(uid.to_string()), meta, notice).await;
        Ok(())
    }

    /// The caller's account and session, once `current` is the account's
    /// password (a browser's account as its cookie's check read it; the
    /// writes that follow are conditioned on the hash and epoch checked).
    /// Limited as a login is (per client and per account, before any
    /// hashing); a wrong password is a wrong password at login.
    pub(super) async fn check_current_password(
        &self,
        caller: Caller<'_>,
        current: String,
        what: &str,
        meta: &RequestMeta,
    ) -> Result<(UserId, SessionId, User), Error> {
        let now = self.now();
        let (uid, sid) = self.caller_ids(caller, now)?;
        let current = Password::for_login(current)
            .map_err(|_| Error::validation("current_password", "is not your current password"))?;
        let l = &self.policy.limits;
        self.limit(&[
            l.login_ip.key(format!("password:ip:{}", super::client_key(meta))),
            l.login_identifier.key(format!("password:user:{uid}")),
        ])
        .await?;
        let (_, user) = self.caller_records(caller, &uid, &sid, now).await?;
        if !self.hasher.verify(&current, Some(&user.password_hash)).await? {
            // A wrong password here is a wrong password at login: it counts
            // toward the account's lock (audit `login_failed`; the owner is
            // mailed when it locks). A session that guesses while the
            // account is locked, or whose guess locks it, is ended: else a
            // stolen session could go on guessing through a lock that stops
            // every login.
            tracing::info!(user_id = %uid, session_id = %sid, "{what} refused: wrong current password");
            let Some(after) = self.count_failure(&user, now, self.policy.login_lock_threshold, meta).await? else {
                // The account was deleted meanwhile, its sessions with it.
                return Err(Error::Unauthorized);
            };
            if after.is_locked(now) {
                tracing::warn!(user_id = %uid, session_id = %sid, "session ended: wrong current password while locked");
                self.ports.sessions.revoke_session(&sid, now, "wrong_password", meta).await?;
                return Err(Error::Unauthorized);
            }
            return Err(Error::validation("current_password", "is not your current password"));
        }
        Ok((uid, sid, user))
    }

    /// Counts one more `password_epoch` on `user`, checked through session
    /// `sid`: every other session ends, `sid` moves to the new epoch. Returns
    /// the write's time, taken after any hashing, right before the write (a
    /// login whose password step came before the write is one it ends), and
    /// the epoch it wrote.
    async fn next_epoch(
        &self,
        uid: &UserId,
        sid: &SessionId,
        user: &User,
        new: NewEpoch<'_>,
        meta: &RequestMeta,
    ) -> Result<(Timestamp, u64), Error> {
        let mut checked = user.password_hash.clone();
        let mut epoch = user.password_epoch;
        let mut tries = 0;
        loop {
            let at = self.now();
            let phc = match new {
                NewEpoch::Password(phc) => phc,
                NewEpoch::SamePassword => checked.as_str(),
            };
            match self.ports.users.change_password(uid, &checked, epoch, phc, sid, at, meta).await {
                Ok(()) => return Ok((at, epoch + 1)),
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
            tries += 1;
            (checked, epoch) = self.recheck(uid, sid, &checked, epoch, tries, at).await?;
        }
    }

    /// After a write conditioned on the hash and epoch the current password
    /// was checked against is refused: the hash and epoch to make it again
    /// over, or why not. Revoked or gone meanwhile (a logout in another
    /// tab), or the password was reset or changed since it was checked (by
    /// another session, which ended this one, or by this one in another
    /// request). Two writes keep the password the caller typed: a login's
    /// rehash of it (the epoch as it was: write over the rehashed one), and
    /// this session's own "sign out everywhere else" in another request
    /// (the hash as it was, this session at the newer epoch: write on top),
    /// each made again while `tries` < 3.
    async fn recheck(
        &self,
        uid: &UserId,
        sid: &SessionId,
        checked: &str,
        epoch: u64,
        tries: u32,
        at: Timestamp,
    ) -> Result<(String, u64), Error> {
        match self.live_session(sid, at).await? {
            Some((s, u))
                if tries < 3 && s.user_id == *uid && u.password_epoch == epoch && u.password_hash != checked =>
            {
                Ok((u.password_hash, epoch))
            }
            Some((s, u))
                if tries < 3 && s.user_id == *uid && u.password_epoch != epoch && u.password_hash == checked =>
            {
                Ok((u.password_hash, u.password_epoch))
            }
            // This session lives on at a newer epoch with another hash: it
            // changed the password itself, in another request that won. The
            // password this one checked is no longer the current one; the
            // session is fine (not a 401, which tells a client to drop its
            // tokens).
            Some((s, u)) if s.user_id == *uid && u.password_epoch != epoch => {
                Err(Error::validation("current_password", "is not your current password"))
            }
            _ => Err(Error::Unauthorized),
        }
    }
}
