//! A forgotten password: a link mailed to the account's address lets its
//! holder choose a new one.
//!
//! The link carries `<nonce>.<user id>.<issued at>-<resets>-<email
//! changes>.<tag>`: 128 random bits, the account, the UTC second it was
//! made and the account's counts of resets and of address changes then
//! (`User::password_resets`, `User::email_changes`), and an HMAC-SHA256 tag
//! (full length) under the code key (domain `latchkey/password-reset/v4`)
//! over them. Nothing is stored. The link works for
//! `Policy::password_reset_ttl_secs` (1 hour), once, and only while no reset
//! has happened since it was made: a reset counts itself, and the store
//! writes it only if the count is still the link's (so of two resets with
//! links made at one count exactly one succeeds, every earlier link dies,
//! and a link asked for right after a reset works, in its second too). It
//! dies, too, when the account moves to another address: it was mailed to
//! the one the account left, maybe because someone else reads it. (Links
//! of `v3`, without the address count, are refused: ask for a new one.)
//! A password change does not end a link: otherwise someone holding a
//! session and the password could keep every link the owner is mailed dead
//! by changing the password, and the owner could never take the account
//! back. A change racing a reset cannot undo it either: a change (and a
//! rehash) writes only while the hash is the one it checked.
//!
//! Asking answers the same whether or not the address has an account, in
//! the same time (`Auth::uniform_answer`), and a mail queue outage is
//! logged, not answered; only a verified account is mailed a link (an
//! unverified one proves nothing of its address yet: verify first). A reset
//! ends every session and login in progress of the account, a running lock
//! and the code budget's count (the wrong passwords and codes were tried
//! against a password that is gone), tells the owner by mail, and gives the
//! client a device token (`flows::device`), so someone who keeps the account
//! locked cannot keep its owner out after the reset ended their older ones.

use super::Auth;
use super::signed_token::{MailedLink, MailedLinkKind, TokenKind};
use crate::clock::Timestamp;
use crate::domain::{Email, RequestMeta, ResetLink, Secret, User};
use crate::error::{Error, StoreError};
use crate::mail::MailJob;

/// Reset link tokens: the full 32-byte tag.
const RESET: TokenKind = TokenKind { domain: "latchkey/password-reset/v4", tag_len: 64, max_len: 170 };

impl Auth {
    /// Mails a reset link if `email` belongs to a verified account. Answers
    /// the same whether or not it does; limited per client and per address
    /// (`RateLimits::password_reset_address`), since each call may send mail.
    pub async fn request_password_reset(&self, email: &str, meta: &RequestMeta) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let email = Email::parse(email)?;
        let l = &self.policy.limits;
        self.limit(&[
            l.code_send_ip.key(format!("send:ip:{}", super::client_key(meta))),
            // The exact address, not the mailbox: mail goes only to an
            // account's own address, so tags multiply nothing here, and a
            // stranger who knows the bare address cannot spend the limit of
            // an account registered under a tag.
            l.password_reset_address.key(format!("reset:email:{}", email.as_str())),
        ])
        .await?;
        // The email index may lag (DynamoDB's is eventually consistent): the
        // account is read again by its id, so a link asked for right after a
        // reset carries the count that reset left, and an account verified a
        // moment ago is mailed its link.
        let user = match self.ports.users.user_by_email(&email).await? {
            Some(indexed) => self.ports.users.user_by_id(&indexed.id).await?,
            None => None,
        };
        match user.filter(|u| u.verified) {
            Some(user) => {
                let job = MailJob::PasswordReset {
                    username: user.username.to_string(),
                    token: Secret::new(self.reset_token(&user, self.now())),
                    expires_minutes: (self.policy.password_reset_ttl_secs / 60) as u32,
                };
                tracing::info!(user_id = %user.id, "password reset link asked for");
                // A queue outage answered only here would tell who has an
                // account; the owner can ask again.
                self.notify(&user.email, Some(user.id.to_string()), meta, job).await;
            }
            None => {
                tracing::info!(to = %email.masked(), "password reset asked for an address without a verified account")
            }
        }
        self.uniform_answer(started).await;
        Ok(())
    }

    /// Sets a new password with a reset link's token. The registration's
    /// password rules apply (checked after the link, so a refused password
    /// leaves the link usable); every session of the account ends. Returns
    /// a device token for the client that made the reset.
    pub async fn reset_password(&self, token: &str, new: String, meta: &RequestMeta) -> Result<String, Error> {
        let (user, link) = self.open_link(&RESET_LINK, self.policy.password_reset_ttl_secs, token, meta).await?;
        let new = self.new_password(new, &user.username, &user.email).map_err(|e| match e {
            Error::Validation { reason, .. } => Error::Validation { field: "new_password", reason },
            other => other,
        })?;
        let phc = self.hasher.hash(&new, self.ports.rng.as_ref()).await?;
        // The reset's time is taken after the hashing, right before the
        // write, so every login and change that wrote before it is one it
        // ends; the store refuses a time before the last change (a change
        // that committed in between), and then it is taken again.
        // A change that committed in between moved the epoch on too: the
        // reset is made from the epoch read last, and the next one is what
        // the reset's device token vouches at.
        let mut epoch = user.password_epoch;
        let mut tries = 0;
        let at = loop {
            let at = self.now();
            match self.ports.users.reset_password(&user.id, link, epoch, &phc, at, meta).await {
                Ok(()) => break at,
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
            tries += 1;
            let current = self
                .ports
                .users
                .user_by_id(&user.id)
                .await?
                .ok_or_else(|| RESET_LINK.refuse("no such account", meta))?;
            if !link.current_for(&current) {
                return Err(RESET_LINK.refuse("used meanwhile", meta));
            }
            if tries == 3 {
                return Err(Error::Unavailable("the account's password kept changing during the reset".into()));
            }
            if current.password_epoch == epoch {
                // Refused for the time alone: a change is ahead of this clock.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            epoch = current.password_epoch;
        };
        tracing::info!(user_id = %user.id, "password reset; every session ended");
        let notice = MailJob::PasswordChanged { username: user.username.to_string(), at, by_reset: true };
        self.notify(&user.email, Some(user.id.to_string()), meta, notice).await;
        Ok(self.device_token(&user.id, at, epoch + 1))
    }

    /// A reset link's token for `user` as read now, made at `now`.
    fn reset_token(&self, user: &User, now: Timestamp) -> String {
        self.sign_token(&RESET, &user.id, &format!("{now}-{}-{}", user.password_resets, user.email_changes))
    }
}

/// Reset links, as `reset_password` opens them.
const RESET_LINK: MailedLinkKind<ResetLink> = MailedLinkKind {
    token: &RESET,
    parse: parse_issued,
    scope: "reset",
    name: "password reset",
    stale: "used, older than the last reset, or mailed to an address the account left",
    refusal: || Error::ResetLinkInvalid,
};

impl MailedLink for ResetLink {
    fn issued_at(&self) -> Timestamp {
        self.issued_at
    }

    fn current_for(&self, user: &User) -> bool {
        ResetLink::current_for(self, user)
    }
}

/// The `<issued at>-<resets>-<email changes>` part of a link this service
/// signed (the tag was checked first, so nothing else reaches here).
fn parse_issued(issued: &str) -> Option<ResetLink> {
    let mut parts = issued.splitn(3, '-');
    let (at, resets, changes) = (parts.next()?, parts.next()?, parts.next()?);
    Some(ResetLink { issued_at: at.parse().ok()?, resets: resets.parse().ok()?, email_changes: changes.parse().ok()? })
}
