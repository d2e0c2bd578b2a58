//! A forgotten password: a link mailed to the account's address lets its
//! holder choose a new one.
//!
//! The link carries `<nonce>.<user id>.<issued at>.<tag>`: 128 random bits,
//! the account, the UTC second it was made, and an HMAC-SHA256 tag (full
//! length) under the code key (domain `latchkey/password-reset/v1`) over
//! those and the account's password hash as it was then. Nothing is stored.
//! The link works for `Policy::password_reset_ttl_secs` (1 hour) and only
//! while the account's password hash is the one it was made for: a reset
//! replaces that hash (the store's write is conditional on it, so of two
//! resets with one link exactly one succeeds), and so does a password
//! change or a rehash, so every earlier link dies with them.
//!
//! Asking answers the same whether or not the address has an account; only
//! a verified account is mailed a link (an unverified one proves nothing of
//! its address yet: verify first). A reset ends every session of the
//! account and a running lock (the wrong passwords were tried against a
//! password that is gone); the owner is told by mail.

use super::Auth;
use crate::clock::Timestamp;
use crate::domain::{Email, OtpCode, RequestMeta, Secret, User, UserId};
use crate::error::{Error, StoreError};
use crate::mail::MailJob;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Characters of the nonce (16 bytes, URL-safe base64).
const NONCE_LEN: usize = 22;
/// Characters of the tag (HMAC-SHA256, hex).
const TAG_LEN: usize = 64;
/// Longer than any link token this service makes.
const MAX_TOKEN_LEN: usize = 160;
const MAC_DOMAIN: &str = "latchkey/password-reset/v1";

/// What a reset link's token says before it is checked against its account.
struct ResetClaim<'a> {
    nonce: &'a str,
    user: &'a str,
    issued: &'a str,
    tag: &'a str,
    user_id: UserId,
    issued_at: Timestamp,
}

impl<'a> ResetClaim<'a> {
    /// The parts of a well-formed token; anything else is `None`.
    fn parse(token: &'a str) -> Option<Self> {
        if token.len() > MAX_TOKEN_LEN || !token.is_ascii() {
            return None;
        }
        let mut parts = token.split('.');
        let (nonce, user, issued, tag) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || nonce.len() != NONCE_LEN || tag.len() != TAG_LEN {
            return None;
        }
        Some(ResetClaim { nonce, user, issued, tag, user_id: UserId::parse(user)?, issued_at: issued.parse().ok()? })
    }
}

impl Auth {
    /// Mails a reset link if `email` belongs to a verified account. Answers
    /// the same whether or not it does; limited per client and per address
    /// (`Policy::password_reset_per_hour`), since each call may send mail.
    pub async fn request_password_reset(&self, email: &str, meta: &RequestMeta) -> Result<(), Error> {
        let email = Email::parse(email)?;
        let l = &self.policy.limits;
        self.limit(&[
            l.code_send_ip.key(format!("send:ip:{}", super::client_key(meta))),
            crate::config::Limit::new(self.policy.password_reset_per_hour, 3600)
                .key(format!("reset:email:{}", email.as_str())),
        ])
        .await?;
        let Some(user) = self.ports.users.user_by_email(&email).await?.filter(|u| u.verified) else {
            tracing::info!(to = %email.masked(), "password reset asked for an address without a verified account");
            return Ok(());
        };
        let token = self.reset_token(&user, self.now());
        let job = MailJob::PasswordReset {
            username: user.username.to_string(),
            token: Secret::new(token),
            expires_minutes: (self.policy.password_reset_ttl_secs / 60) as u32,
        };
        self.send(&user.email, Some(user.id.to_string()), meta, job).await
    }

    /// Sets a new password with a reset link's token. The registration's
    /// password rules apply (checked after the link, so a refused password
    /// leaves the link usable); every session of the account ends.
    pub async fn reset_password(&self, token: &str, new: String, meta: &RequestMeta) -> Result<(), Error> {
        let l = &self.policy.limits;
        self.limit(&[l.code_verify_ip.key(format!("reset:ip:{}", super::client_key(meta)))]).await?;
        let now = self.now();
        let claim = ResetClaim::parse(token).ok_or(Error::ResetLinkInvalid)?;
        let fresh = claim.issued_at <= now && now < claim.issued_at.saturating_add(self.policy.password_reset_ttl_secs);
        if !fresh {
            return Err(Error::ResetLinkInvalid);
        }
        let user = self.ports.users.user_by_id(&claim.user_id).await?.ok_or(Error::ResetLinkInvalid)?;
        let expected = self.reset_tag(claim.nonce, claim.user, claim.issued, &user.password_hash);
        if !OtpCode::hashes_equal(&expected, claim.tag) {
            return Err(Error::ResetLinkInvalid);
        }
        let new = self.new_password(new, &user.username, &user.email).map_err(|e| match e {
            Error::Validation { reason, .. } => Error::Validation { field: "new_password", reason },
            other => other,
        })?;
        let phc = self.hasher.hash(&new, self.ports.rng.as_ref()).await?;
        match self.ports.users.reset_password(&user.id, &user.password_hash, &phc, now, meta).await {
            Ok(()) => {}
            // Used by another request meanwhile, or the password changed.
            Err(StoreError::Conflict(_)) => return Err(Error::ResetLinkInvalid),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(user_id = %user.id, "password reset; every session ended");
        let notice = MailJob::PasswordChanged { username: user.username.to_string(), at: now, by_reset: true };
        self.notify(&user.email, Some(user.id.to_string()), meta, notice).await;
        Ok(())
    }

    /// A reset link's token for `user` as it is now, made at `now`.
    fn reset_token(&self, user: &User, now: Timestamp) -> String {
        let mut nonce = [0u8; 16];
        self.ports.rng.fill(&mut nonce);
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let (id, issued) = (user.id.to_string(), now.to_string());
        let tag = self.reset_tag(&nonce, &id, &issued, &user.password_hash);
        format!("{nonce}.{id}.{issued}.{tag}")
    }

    fn reset_tag(&self, nonce: &str, user: &str, issued: &str, password_hash: &str) -> String {
        self.code_key.mac(MAC_DOMAIN, &[nonce, user, issued, password_hash])
    }
}
