//! A signed-in user moves their account to another address: they ask with
//! the current password, and the move is made when the link mailed to the
//! new address is opened (whoever opens it proves they read that mailbox).
//! The account's own address is told both times.
//!
//! The link carries `<nonce>.<user id>.<issued at>-<epoch>-<changes>-<new
//! address>.<tag>`: 128 random bits, the account, the UTC second it was
//! made, the account's `password_epoch` and `email_changes` then, and the
//! new address (URL-safe base64), under an HMAC-SHA256 tag (full length)
//! under the code key (domain `latchkey/email-change/v1`). Nothing is
//! stored. The link works for `Policy::email_change_ttl_secs` (1 hour),
//! once, and only while the account's address and password are as they
//! were: a change of address counts itself (every older link dies, and a
//! used one with it), and a password change, reset or "sign out
//! everywhere else" moves the epoch. So the owner, told by mail of a move
//! they did not ask for, stops it by changing the password or signing out
//! everywhere else (which also ends the session that asked).
//!
//! The answer to the request is the same whether the new address is free
//! or another account's (that address is told instead that nothing
//! changed), and the mails to it are attributed to no account, so neither
//! the answer nor the asker's own trail tells which.

use super::Auth;
use super::sessions::Caller;
use super::signed_token::{MailedLink, MailedLinkKind, TokenKind};
use crate::clock::Timestamp;
use crate::domain::{Email, RequestMeta, Secret, User};
use crate::error::{Conflict, Error, StoreError};
use crate::mail::MailJob;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Address change link tokens: the full 32-byte tag; the longest address
/// (254 bytes) is 339 characters of base64.
const EMAIL_CHANGE: TokenKind = TokenKind { domain: "latchkey/email-change/v1", tag_len: 64, max_len: 600 };

/// What an address change link vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChangeLink {
    issued_at: Timestamp,
    password_epoch: u64,
    email_changes: u32,
    new: Email,
}

/// Address change links, as `confirm_email_change` opens them.
const CHANGE_LINK: MailedLinkKind<ChangeLink> = MailedLinkKind {
    token: &EMAIL_CHANGE,
    parse: parse_issued,
    scope: "email-change",
    name: "address change",
    stale: "used, or the address or password changed since",
    refusal: || Error::EmailChangeLinkInvalid,
};

impl MailedLink for ChangeLink {
    fn issued_at(&self) -> Timestamp {
        self.issued_at
    }

    /// Whether `user` is as it was when the link was made: no change of
    /// address or of password since.
    fn current_for(&self, user: &User) -> bool {
        user.email_changes == self.email_changes && user.password_epoch == self.password_epoch
    }
}

impl Auth {
    /// Asks to move the caller's account to `new_email`, once `current` is
    /// its password (checked as for a password change: the same limits, and
    /// a wrong one counts toward the lock). A link goes to the new address
    /// (or, if it has an account, a notice that nothing changed), and a
    /// notice to the account's address. Nothing changes until the link is
    /// opened (`confirm_email_change`).
    pub async fn request_email_change(
        &self,
        caller: Caller<'_>,
        current: String,
        new_email: &str,
        meta: &RequestMeta,
    ) -> Result<(), Error> {
        let (uid, sid, user) = self.check_current_password(caller, current, "address change", meta).await?;
        let new = Email::parse(new_email).map_err(|e| match e {
            Error::Validation { reason, .. } => Error::Validation { field: "new_email", reason },
            other => other,
        })?;
        if new == user.email {
            return Err(Error::validation("new_email", "is already your address"));
        }
        let l = &self.policy.limits;
        self.limit(&[
            l.code_send_ip.key(format!("send:ip:{}", super::client_key(meta))),
            // The mailbox, as every per-address mail limit counts it: else
            // the `+tags` of one inbox would each bring their own budget.
            l.code_send_address.key(format!("email-change:mailbox:{}", new.mailbox_key())),
        ])
        .await?;
        let now = self.now();
        let expires_minutes = (self.policy.email_change_ttl_secs / 60) as u32;
        // Either answer costs the same calls: a read, then one mail job to
        // the new address, attributed to no account (the asker's trail
        // would tell one kind from the other).
        let job = match self.ports.users.user_by_email(&new).await? {
            Some(_) => {
                tracing::info!(user_id = %uid, to = %new.masked(), "address change asked to an address with an account");
                MailJob::EmailInUse {}
            }
            None => MailJob::EmailChangeLink {
                username: user.username.to_string(),
                token: Secret::new(self.email_change_token(&user, &new, now)),
                expires_minutes,
            },
        };
        // A queue outage is answered (nothing was changed; ask again), the
        // same for either job.
        self.send(&new, None, meta, job).await?;
        tracing::info!(user_id = %uid, session_id = %sid, to = %new.masked(), "address change asked for");
        let notice = MailJob::EmailChangeNotice {
            username: user.username.to_string(),
            new_address: new.masked(),
            at: now,
            expires_minutes,
            done: false,
        };
        self.notify(&user.email, Some(uid.to_string()), meta, notice).await;
        Ok(())
    }

    /// Moves an account to the address its link was mailed to. Returns the
    /// new address. The old one is told, and is free from then on; the
    /// account's sessions stay.
    pub async fn confirm_email_change(&self, token: &str, meta: &RequestMeta) -> Result<Email, Error> {
        let (user, link) = self.open_link(&CHANGE_LINK, self.policy.email_change_ttl_secs, token, meta).await?;
        match self.ports.users.change_email(&user, &link.new, meta).await {
            Ok(()) => {}
            Err(StoreError::Conflict(Conflict::EmailTaken)) => {
                tracing::info!(user_id = %user.id, to = %link.new.masked(), "address change refused: address taken since");
                return Err(Error::EmailTaken);
            }
            // Changed since the read: by a change of address or password,
            // each of which ends the link (a login's writes touch neither).
            Err(StoreError::Conflict(_)) => return Err(CHANGE_LINK.refuse("used meanwhile", meta)),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(user_id = %user.id, to = %link.new.masked(), "address changed");
        let notice = MailJob::EmailChangeNotice {
            username: user.username.to_string(),
            new_address: link.new.masked(),
            at: self.now(),
            expires_minutes: 0,
            done: true,
        };
        self.notify(&user.email, Some(user.id.to_string()), meta, notice).await;
        Ok(link.new)
    }

    /// An address change link for `user` as read now, to `new`, made at `now`.
    fn email_change_token(&self, user: &User, new: &Email, now: Timestamp) -> String {
        let new = URL_SAFE_NO_PAD.encode(new.as_str());
        let issued = format!("{now}-{}-{}-{new}", user.password_epoch, user.email_changes);
        self.sign_token(&EMAIL_CHANGE, &user.id, &issued)
    }
}

/// The `<issued at>-<epoch>-<changes>-<new address>` part of a link this
/// service signed (the tag was checked first); the address is parsed again
/// as a stored one.
fn parse_issued(issued: &str) -> Option<ChangeLink> {
    let mut parts = issued.splitn(4, '-');
    let (at, epoch, changes, new) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let new = String::from_utf8(URL_SAFE_NO_PAD.decode(new).ok()?).ok()?;
    Some(ChangeLink {
        issued_at: at.parse().ok()?,
        password_epoch: epoch.parse().ok()?,
        email_changes: changes.parse().ok()?,
        new: Email::parse_stored(&new).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_part_round_trips_any_address() {
        for raw in ["a@b.co", "first.last+tag-1@sub.example.org", &format!("{}@example.com", "x".repeat(64))] {
            let new = Email::parse(raw).unwrap();
            let issued = format!("1700000000-3-7-{}", URL_SAFE_NO_PAD.encode(new.as_str()));
            let link = parse_issued(&issued).unwrap();
            assert_eq!(
                link,
                ChangeLink { issued_at: 1_700_000_000, password_epoch: 3, email_changes: 7, new: new.clone() }
            );
        }
        assert_eq!(parse_issued("1-2-3"), None);
        assert_eq!(parse_issued("1-2-x-YUBiLmNv"), None);
        assert_eq!(parse_issued("1-2-3-!!"), None);
    }
}
