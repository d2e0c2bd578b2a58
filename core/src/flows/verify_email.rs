use super::Auth;
use crate::clock::Timestamp;
use crate::domain::{Email, RequestMeta, UserId, VerificationRecord};
use crate::error::{Error, StoreError};
use crate::keys::{random_token, token_hash};

impl Auth {
    /// Consumes a verification token and marks its user verified.
    pub async fn verify_email(&self, token: &str, meta: &RequestMeta) -> Result<(), Error> {
        // Tokens are 43 URL-safe base64 characters; anything else is tampered.
        if token.len() != 43 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(Error::VerificationInvalid);
        }
        let l = &self.policy.limits;
        self.limit(&[l.code_verify_ip.key(format!("verify-email:ip:{}", super::client_key(meta)))]).await?;
        let hash = token_hash(token);
        let now = self.now();
        let Some(rec) = self.ports.users.verification(&hash).await? else {
            return Err(Error::VerificationInvalid);
        };
        classify(&rec, now)?;
        match self.ports.users.consume_verification(&rec, now, meta).await {
            Ok(user_id) => {
                tracing::info!(%user_id, "email verified");
                Ok(())
            }
            Err(StoreError::Conflict(_)) => match self.ports.users.verification(&hash).await? {
                // Its account was replaced by a registration of its name
                // while unverified (the token outlives it on DynamoDB), or
                // outlived its retention unverified.
                Some(rec) if self.ports.users.user_by_id(&rec.user_id).await?.is_none_or(|u| u.retention_over(now)) => {
                    Err(Error::VerificationInvalid)
                }
                Some(rec) => classify(&rec, now).and(Err(Error::VerificationUsed)),
                None => Err(Error::VerificationInvalid),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Sends a fresh verification link if the address belongs to an
    /// unverified account and the cooldown has passed. Answers the same
    /// whether or not the address is known.
    pub async fn resend_verification(&self, email: &str, meta: &RequestMeta) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let email = Email::parse(email)?;
        let l = &self.policy.limits;
        self.limit(&[
            l.code_send_ip.key(format!("send:ip:{}", super::client_key(meta))),
            // The exact address here, so a stranger who knows the bare
            // address cannot spend the limit of an account registered under
            // a tag; the mailbox's own limit is counted below, only for an
            // unverified account.
            l.verification_resend_address.key(format!("verify-resend:email:{}", email.as_str())),
        ])
        .await?;
        self.resend_if_unverified(&email, meta).await?;
        self.uniform_answer(started).await;
        Ok(())
    }

    /// A verification mail that could not be queued does not hold its
    /// owner off for the resend cooldown: asked again, it is sent at once.
    /// (The unmailed link stays valid.) `previous` is the send before this
    /// one, if there was one; without it, the cooldown is set to have ended.
    pub(super) async fn give_back_verification_cooldown(
        &self,
        user: &UserId,
        sent_at: Timestamp,
        previous: Option<Timestamp>,
    ) {
        let previous = previous.unwrap_or(sent_at - self.policy.verification_resend_cooldown_secs);
        if let Err(e) = self.ports.users.give_back_verification_cooldown(user, sent_at, previous).await {
            tracing::warn!(user_id = %user, error = %e, "the resend cooldown of a verification mail not queued was not given back (a send since, or this give-back sent twice)");
        }
    }

    async fn resend_if_unverified(&self, email: &Email, meta: &RequestMeta) -> Result<(), Error> {
        let Some(user) = self.ports.users.user_by_email(email).await? else { return Ok(()) };
        if user.verified {
            return Ok(());
        }
        let now = self.now();
        // Per mailbox too, counted only here, for an unverified account: the
        // accounts somebody registers under tags of one inbox (5 an hour,
        // registration is limited per mailbox) would each bring their own
        // address's budget, and the inbox's mail would grow with them; a
        // stranger asking for the bare address spends none of it. Past it,
        // nothing is sent and the answer is the same (a 429 here would tell
        // the address has an unverified account).
        let mailbox = self.policy.limits.verification_resend_mailbox;
        if self
            .ports
            .limiter
            .hit(&[mailbox.key(format!("verify-resend:mailbox:{}", email.mailbox_key()))], now)
            .await?
            .is_some()
        {
            tracing::info!(to = %email.masked(), "verification link not sent again: the mailbox's limit is spent");
            return Ok(());
        }
        let token = random_token(self.ports.rng.as_ref());
        let rec = VerificationRecord {
            token_hash: token_hash(&token),
            user_id: user.id,
            created_at: now,
            expires_at: now + self.policy.verification_ttl_secs,
            used_at: None,
            meta: meta.clone(),
        };
        match self.ports.users.add_verification(&rec, now, self.policy.verification_resend_cooldown_secs, meta).await {
            // A queue outage answered only here would tell which addresses
            // have an unverified account; the owner can ask again.
            Ok(()) => {
                if !self.notify(&user.email, Some(user.id.to_string()), meta, self.verify_job(&user, token)).await {
                    self.give_back_verification_cooldown(&user.id, now, user.verification_sent_at).await;
                }
                Ok(())
            }
            // Within the cooldown: say nothing different.
            Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn classify(rec: &VerificationRecord, now: i64) -> Result<(), Error> {
    if rec.used_at.is_some() {
        Err(Error::VerificationUsed)
    } else if rec.expires_at <= now {
        Err(Error::VerificationExpired)
    } else {
        Ok(())
    }
}
