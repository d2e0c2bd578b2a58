use super::Auth;
use crate::clock::Timestamp;
use crate::domain::{
    Challenge, ChallengeId, CodeClosed, LoginIdentifier, OtpCode, Password, RequestMeta, Secret, User, UserId,
};
use crate::error::{Error, StoreError};
use crate::mail::MailJob;
use crate::ports::{LockCheck, LoginFailure};

/// The password step passed: a code is on its way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginStarted {
    pub challenge_id: ChallengeId,
    pub expires_at: Timestamp,
    /// Seconds until a resend is allowed.
    pub resend_after: i64,
}

impl Auth {
    /// The password step. Unknown users and wrong passwords get the same
    /// error after the same argon2 work. Never yields a token or session.
    pub async fn login(
        &self,
        identifier: &str,
        password: String,
        device_token: Option<&str>,
        meta: &RequestMeta,
    ) -> Result<LoginStarted, Error> {
        let password = Password::for_login(password)?;
        let ident = LoginIdentifier::parse(identifier)?;
        let now = self.now();
        let l = &self.policy.limits;
        let by_identifier = l.login_identifier.key(format!("login:id:{}", ident.as_key()));
        let device = device_token.and_then(|t| self.device_claim(t, now));
        self.limit(&[
            l.login_ip.key(format!("login:ip:{}", super::client_key(meta))),
            match &device {
                Some(d) => l.login_device.key(format!("login:device:{}", d.device_id)),
                None => by_identifier.clone(),
            },
        ])
        .await?;

        let user = match &ident {
            LoginIdentifier::Username(u) => self.ports.users.user_by_username(u).await?,
            LoginIdentifier::Email(e) => self.ports.users.user_by_email(e).await?,
        };
        // A device vouches only for an account it finished a login of; for
        // any other name, the per-identifier limit it skipped applies.
        let trusted = device.as_ref().is_some_and(|d| user.as_ref().is_some_and(|u| d.vouches_for(u)));
        if device.is_some() && !trusted {
            self.limit(&[by_identifier]).await?;
        }
        let ok = self.hasher.verify(&password, user.as_ref().map(|u| u.password_hash.as_str())).await?;
        let Some(user) = user else {
            self.refuse_as_unknown(now, meta).await;
            return Err(Error::InvalidCredentials);
        };
        let locked = user.is_locked(now);
        if locked && !trusted {
            tracing::info!(user_id = %user.id, "login refused: account locked");
            // Changes nothing during a lock; taken for the same timing.
            self.count_failure(&user, now, self.policy.login_lock_threshold, meta).await?;
            return Err(Error::InvalidCredentials);
        }
        if !ok {
            // Below the lock threshold this line (and the audit trail's
            // `login_failed`) is the only trace of a wrong password; the id
            // names the account, never what was typed.
            tracing::info!(user_id = %user.id, "login refused: wrong password");
            self.count_failure(&user, now, self.policy.login_lock_threshold, meta).await?;
            return Err(Error::InvalidCredentials);
        }
        if !user.verified {
            // Refused as an unknown name is, with the same answer: else
            // registering an address and signing in to the new account would
            // tell whether the address had one already (registering a taken
            // address only holds the username, which signs in as unknown).
            // The sign-in pages say an unconfirmed address is one reason.
            tracing::info!(user_id = %user.id, "login refused: email address not verified");
            self.refuse_as_unknown(now, meta).await;
            return Err(Error::InvalidCredentials);
        }
        if user.otp_failures >= self.policy.account_code_failure_budget {
            // The account-wide code budget is spent by someone who knows the
            // password: no code is issued or accepted until it is reset by
            // mail. Refused like a lock, and locked (the owner is mailed
            // when it starts, so at most once a lock period).
            tracing::warn!(user_id = %user.id, "login refused: the account's code budget is spent");
            self.count_failure(&user, now, 1, meta).await?;
            return Err(Error::InvalidCredentials);
        }
        if self.hasher.needs_rehash(&user.password_hash) {
            let phc = self.hasher.hash(&password, self.ports.rng.as_ref()).await?;
            match self.ports.users.set_password_hash(&user.id, &user.password_hash, &phc, meta).await {
                // Changed or reset meanwhile: the newer password stands (and
                // the challenge below is refused if it ended this login).
                Ok(()) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }

        let rng = self.ports.rng.as_ref();
        let id = ChallengeId::random(rng);
        let code = OtpCode::generate(rng);
        let challenge = Challenge {
            id,
            user_id: user.id,
            code_hash: self.login_code_hash(&id, &code),
            created_at: now,
            expires_at: now + self.policy.login_code_ttl_secs,
            last_sent_at: now,
            resends: 0,
            failures: 0,
            attempts: 0,
            password_epoch: user.password_epoch,
            used_at: None,
            meta: meta.clone(),
        };
        // A device's login during a lock leaves the lock to run out: it was
        // not the owner's guessing that set it. Any other login is refused
        // by the store if a lock started since the read above (others' wrong
        // passwords, counted while this one was hashed).
        let lock = if locked {
            LockCheck::TrustedDevice
        } else {
            LockCheck::Unlocked { reset_failures: user.failed_logins > 0 || user.locked_until.is_some() }
        };
        // The code goes to the address the write finds on the account: the
        // read above may be an index's copy from before an address change
        // (DynamoDB), whose old mailbox must not get it.
        let mut to = user.email.clone();
        let mut moved = false;
        loop {
            match self.ports.challenges.create_challenge_to(&challenge, Some(&to), lock, meta).await {
                Ok(()) => break,
                Err(StoreError::Conflict(_)) => {
                    // Moved since the read (once; as read now, by id): the
                    // code goes to the new address. The password and the
                    // lock are as they were, or this login ends below.
                    if !moved
                        && let Some(now_read) = self.ports.users.user_by_id(&user.id).await?
                        && now_read.email != to
                        && now_read.password_epoch == user.password_epoch
                        && (locked || !now_read.is_locked(now))
                    {
                        (to, moved) = (now_read.email, true);
                        continue;
                    }
                    // Locked while this one was checked (or gone): refused
                    // like any login during a lock.
                    tracing::info!(user_id = %user.id, "login refused: account locked, changed or gone while the password was checked");
                    return Err(Error::InvalidCredentials);
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.send(&to, Some(user.id.to_string()), meta, self.code_job(&user, code)).await?;
        tracing::info!(user_id = %user.id, challenge_id = %id, "login code issued");
        Ok(LoginStarted {
            challenge_id: id,
            expires_at: challenge.expires_at,
            resend_after: self.policy.code_resend_cooldown_secs,
        })
    }

    /// Replaces the code of a pending challenge and mails it. Never resets
    /// the failure count.
    pub async fn resend_login_code(&self, challenge_id: &str, meta: &RequestMeta) -> Result<LoginStarted, Error> {
        let id = parse_challenge(challenge_id)?;
        let l = &self.policy.limits;
        self.limit(&[
            l.code_send_ip.key(format!("send:ip:{}", super::client_key(meta))),
            l.code_send_address.key(format!("send:challenge:{id}")),
        ])
        .await?;
        let now = self.now();
        let p = &self.policy;
        let c = self.ports.challenges.challenge(&id).await?.ok_or(Error::ChallengeNotFound)?;
        let check = |c: &Challenge| -> Result<(), Error> {
            // An expired code is what a resend is for; the rest is final.
            match c.closed(now, p.code_max_failures) {
                Some(CodeClosed::Used) => return Err(Error::OtpUsed),
                Some(CodeClosed::Exhausted) => return Err(Error::OtpExhausted),
                Some(CodeClosed::Expired) | None => {}
            }
            if now >= c.created_at + Challenge::MAX_AGE_SECS {
                // A password step this old is not brought back to life.
                return Err(Error::OtpExpired);
            }
            if c.resends >= p.code_max_resends {
                // Only a new login helps now: final, with no time to come
                // back at (this login's resends never come back). Its last
                // code still works while it lives.
                return Err(if c.expires_at > now { Error::ResendsSpent } else { Error::ChallengeNotFound });
            }
            let wait = c.last_sent_at + p.code_resend_cooldown_secs - now;
            if wait > 0 {
                return Err(Error::RateLimited { retry_after: wait as u64 });
            }
            Ok(())
        };
        check(&c)?;
        let user = self.ports.users.user_by_id(&c.user_id).await?.ok_or(Error::ChallengeNotFound)?;
        if user.password_epoch != c.password_epoch {
            // The password changed since this login's password step.
            return Err(Error::ChallengeNotFound);
        }
        if user.otp_failures >= p.account_code_failure_budget {
            // No code is issued once the account's code budget is spent.
            return Err(Error::OtpExhausted);
        }
        let code = OtpCode::generate(self.ports.rng.as_ref());
        let code_hash = self.login_code_hash(&id, &code);
        let expires_at = now + p.login_code_ttl_secs;
        match self
            .ports
            .challenges
            .replace_challenge_code(
                &id,
                &code_hash,
                expires_at,
                now,
                p.code_resend_cooldown_secs,
                p.code_max_resends,
                p.code_max_failures,
                meta,
            )
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                let c = self.ports.challenges.challenge(&id).await?.ok_or(Error::ChallengeNotFound)?;
                check(&c)?;
                return Err(Error::RateLimited { retry_after: p.code_resend_cooldown_secs as u64 });
            }
            Err(e) => return Err(e.into()),
        }
        if let Err(e) = self.send(&user.email, Some(user.id.to_string()), meta, self.code_job(&user, code)).await {
            // Nothing was mailed: neither the cooldown nor one of the
            // login's resends is spent on it. (The new code stays, as in
            // `send_otp`.)
            if let Err(g) = self.ports.challenges.give_back_resend(&id, &code_hash, now, c.last_sent_at).await {
                tracing::warn!(challenge_id = %id, error = %g, "the resend of a code not mailed was not given back (a resend since, or this give-back sent twice)");
            }
            return Err(e);
        }
        tracing::info!(user_id = %user.id, challenge_id = %id, "login code re-sent");
        Ok(LoginStarted { challenge_id: id, expires_at, resend_after: p.code_resend_cooldown_secs })
    }

    /// The store write of a wrong password for an account (one conditional
    /// update, here of an id that matches nothing), so a refusal as an
    /// unknown name takes as long on a remote store too.
    async fn refuse_as_unknown(&self, now: Timestamp, meta: &RequestMeta) {
        let nobody = UserId::random(self.ports.rng.as_ref());
        let p = &self.policy;
        let _ =
            self.ports.users.record_login_failure(&nobody, now, p.login_lock_threshold, p.login_lock_secs, meta).await;
    }

    /// Counts a wrong password toward the account's lock and mails the
    /// owner if it locks; the user as stored after, or `None` if the
    /// account was deleted since it was read (nothing to count: the caller
    /// refuses as it would a wrong password, or a session that died with
    /// the account).
    pub(super) async fn count_failure(
        &self,
        user: &User,
        now: Timestamp,
        threshold: u32,
        meta: &RequestMeta,
    ) -> Result<Option<User>, Error> {
        let counted =
            self.ports.users.record_login_failure(&user.id, now, threshold, self.policy.login_lock_secs, meta).await;
        let LoginFailure { user: after, started_lock } = match counted {
            Ok(counted) => counted,
            Err(StoreError::Conflict(_)) => {
                tracing::info!(user_id = %user.id, "wrong password for an account deleted since it was read");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        // Only the failure that started the lock mails: the others of a
        // burst read the user unlocked too, and find it locked after.
        if started_lock {
            tracing::warn!(user_id = %user.id, "account locked after failed logins");
            let until = after.locked_until.unwrap_or(now);
            let codes_spent = after.otp_failures >= self.policy.account_code_failure_budget;
            let job = MailJob::AccountLocked { username: user.username.to_string(), locked_until: until, codes_spent };
            self.notify(&user.email, Some(user.id.to_string()), meta, job).await;
        }
        Ok(Some(after))
    }

    pub(crate) fn login_code_hash(&self, id: &ChallengeId, code: &OtpCode) -> String {
        self.code_key.mac("latchkey/login-code/v1", &[&id.to_string(), code.expose()])
    }

    fn code_job(&self, user: &User, code: OtpCode) -> MailJob {
        MailJob::LoginCode {
            username: user.username.to_string(),
            code: Secret::new(code.expose().to_string()),
            expires_minutes: (self.policy.login_code_ttl_secs / 60) as u32,
        }
    }
}

pub(crate) fn parse_challenge(raw: &str) -> Result<ChallengeId, Error> {
    ChallengeId::parse(raw.trim()).ok_or_else(|| Error::validation("challenge_id", "is not a valid challenge id"))
}
