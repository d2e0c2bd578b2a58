use super::Auth;
use crate::domain::Secret;
use crate::domain::{Email, Password, RequestMeta, User, UserId, Username, VerificationRecord};
use crate::error::{Conflict, Error, StoreError};
use crate::keys::{random_token, token_hash};
use crate::mail::MailJob;

impl Auth {
    /// Registers an account and queues its verification mail. A taken
    /// username is `UsernameTaken`; a taken email answers exactly like
    /// success and mails the owner instead, and the store holds the
    /// username as the account would have held it (`UserStore::create_user`),
    /// so no later registration of that username tells the two apart.
    pub async fn register(
        &self,
        username: &str,
        email: &str,
        password: String,
        meta: &RequestMeta,
    ) -> Result<(), Error> {
        let username = Username::parse(username)?;
        let email = Email::parse(email)?;
        let l = &self.policy.limits;
        self.limit(&[
            l.register_ip.key(format!("register:ip:{}", super::client_key(meta))),
            l.register_email.key(format!("register:email:{}", email.mailbox_key())),
        ])
        .await?;
        // The strength estimate costs up to ~10 ms for a long password, so it
        // runs within the limit: a refused password counts as a try.
        let password = self.new_password(password, &username, &email)?;

        let rng = self.ports.rng.as_ref();
        let phc = self.hasher.hash(&password, rng).await?;
        let now = self.now();
        let user = User {
            id: UserId::random(rng),
            username: username.clone(),
            email: email.clone(),
            password_hash: phc,
            verified: false,
            created_at: now,
            failed_logins: 0,
            locked_until: None,
            otp_failures: 0,
            verification_sent_at: Some(now),
            sessions_valid_after: None,
            password_reset_at: None,
            password_resets: 0,
            password_epoch: 0,
            email_changes: 0,
            meta: meta.clone(),
        };
        let token = random_token(rng);
        let verification = VerificationRecord {
            token_hash: token_hash(&token),
            user_id: user.id,
            created_at: now,
            expires_at: now + self.policy.verification_ttl_secs,
            used_at: None,
            meta: meta.clone(),
        };
        let hold_ended = now - self.policy.unverified_hold_secs;
        match self.ports.users.create_user(&user, &verification, hold_ended).await {
            Ok(replaced) => {
                for old in replaced {
                    tracing::info!(user_id = %old, by = %user.id, "unverified account past its hold replaced");
                }
                tracing::info!(user_id = %user.id, "user registered");
                if !self.notify(&email, Some(user.id.to_string()), meta, self.verify_job(&user, token)).await {
                    self.give_back_verification_cooldown(&user.id, now, None).await;
                }
                Ok(())
            }
            Err(StoreError::Conflict(Conflict::UsernameTaken)) => Err(Error::UsernameTaken),
            Err(StoreError::Conflict(Conflict::EmailTaken)) => {
                tracing::info!(to = %email.masked(), "registration with a taken email; its username held");
                self.notify(&email, None, meta, MailJob::SignupAttempt {}).await;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `raw` as the new password of the account `username` / `email`: the
    /// policy's rules, and not built from the username, the address or its
    /// local part. Registration and a password change both use it.
    pub(crate) fn new_password(&self, raw: String, username: &Username, email: &Email) -> Result<Password, Error> {
        let local = email.as_str().split('@').next().unwrap_or_default();
        Password::new_checked(raw, &self.policy.password, &[username.as_str(), email.as_str(), local])
    }

    pub(crate) fn verify_job(&self, user: &User, token: String) -> MailJob {
        MailJob::VerifyEmail {
            username: user.username.to_string(),
            token: Secret::new(token),
            expires_hours: (self.policy.verification_ttl_secs / 3600) as u32,
        }
    }
}
