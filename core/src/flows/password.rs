//! A signed-in user's password change: it ends every other session of the
//! user at once (SECURITY.md), and the session that made it lives on. A
//! wrong current password counts toward the account's lock as at login, and
//! a session that guesses into or through a lock is ended.

use super::Auth;
use crate::domain::{Password, RequestMeta, SessionId, UserId};
use crate::error::{Error, StoreError};
use crate::mail::MailJob;

impl Auth {
    /// Changes the password of the caller of `access_token` from `current`
    /// to `new` (the registration rules apply, checked after the current
    /// password). Every other session of the user ends; this one stays.
    pub async fn change_password(
        &self,
        access_token: &str,
        current: String,
        new: String,
        meta: &RequestMeta,
    ) -> Result<(), Error> {
        let now = self.now();
        let claims = self.tokens.verify(access_token, now)?;
        let uid = UserId::parse(&claims.sub).ok_or(Error::Unauthorized)?;
        let sid = SessionId::parse(&claims.sid).ok_or(Error::Unauthorized)?;
        let current = Password::for_login(current)
            .map_err(|_| Error::validation("current_password", "is not your current password"))?;
        // As a login would be: per client and per account, before any hashing.
        let l = &self.policy.limits;
        self.limit(&[
            l.login_ip.key(format!("password:ip:{}", super::client_key(meta))),
            l.login_identifier.key(format!("password:user:{uid}")),
        ])
        .await?;
        let (s, user) = self.live_session(&sid, now).await?.ok_or(Error::Unauthorized)?;
        if s.user_id != uid {
            return Err(Error::Unauthorized);
        }
        if !self.hasher.verify(&current, Some(&user.password_hash)).await? {
            // A wrong password here is a wrong password at login: it counts
            // toward the account's lock (audit `login_failed`; the owner is
            // mailed when it locks). A session that guesses while the
            // account is locked, or whose guess locks it, is ended: else a
            // stolen session could go on guessing through a lock that stops
            // every login.
            tracing::info!(user_id = %uid, session_id = %sid, "password change refused: wrong current password");
            let after = self.count_failure(&user, now, self.policy.login_lock_threshold, meta).await?;
            if after.is_locked(now) {
                tracing::warn!(user_id = %uid, session_id = %sid, "session ended: wrong current password while locked");
                self.ports.sessions.revoke_session(&sid, now, "wrong_password", meta).await?;
                return Err(Error::Unauthorized);
            }
            return Err(Error::validation("current_password", "is not your current password"));
        }
        let new = self.new_password(new, &user.username, &user.email).map_err(|e| match e {
            Error::Validation { reason, .. } => Error::Validation { field: "new_password", reason },
            other => other,
        })?;
        let phc = self.hasher.hash(&new, self.ports.rng.as_ref()).await?;
        // The change's time is taken after the hashing, right before the
        // write: a login whose password step came before the write is one
        // the change ends.
        let mut checked = user.password_hash.clone();
        let mut tries = 0;
        let at = loop {
            let at = self.now();
            match self.ports.users.change_password(&uid, &checked, user.password_epoch, &phc, &sid, at, meta).await {
                Ok(()) => break at,
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
            // Revoked or gone meanwhile (a logout in another tab), or the
            // password was reset or changed since it was checked (by another
            // session, which ended this one, or by this one in another
            // request). Only a login's rehash of the same password leaves
            // the epoch as it was: then change the rehashed one.
            tries += 1;
            match self.live_session(&sid, at).await? {
                Some((s, u))
                    if tries < 3
                        && s.user_id == uid
                        && u.password_epoch == user.password_epoch
                        && u.password_hash != checked =>
                {
                    checked = u.password_hash
                }
                // This session lives on at a newer epoch: it changed the
                // password itself, in another request that won. The
                // password this one checked is no longer the current one;
                // the session is fine (not a 401, which tells a client to
                // drop its tokens).
                Some((s, u)) if s.user_id == uid && u.password_epoch != user.password_epoch => {
                    return Err(Error::validation("current_password", "is not your current password"));
                }
                _ => return Err(Error::Unauthorized),
            }
        };
        tracing::info!(user_id = %uid, session_id = %sid, "password changed; other sessions ended");
        let notice = MailJob::PasswordChanged { username: user.username.to_string(), at, by_reset: false };
        self.notify(&user.email, Some(uid.to_string()), meta, notice).await;
        Ok(())
    }
}
