use super::Auth;
use super::sessions::Caller;
use crate::clock::Timestamp;
use crate::domain::{Challenge, CodeClosed, OtpCode, RequestMeta, Session, SessionId, User, UserId};
use crate::error::{Error, StoreError};
use crate::keys::token_hash;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a finished login gets.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenPair {
    pub access_token: String,
    /// `<session id>.<secret>`; opaque to clients.
    pub refresh_token: String,
    pub expires_in: i64,
    pub session_id: SessionId,
    pub user_id: UserId,
    /// A new device token, on a finished login (not on a refresh).
    pub device_token: Option<String>,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPair").field("session_id", &self.session_id).finish_non_exhaustive()
    }
}

/// What `/v1/me` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub id: UserId,
    pub username: String,
    pub email: String,
    pub verified: bool,
    pub created_at: Timestamp,
    pub session_id: SessionId,
}

impl Profile {
    /// What a signed-in caller may see of `u`, in session `session_id`.
    pub(crate) fn of(u: crate::domain::User, session_id: SessionId) -> Self {
        Profile {
            id: u.id,
            username: u.username.to_string(),
            email: u.email.to_string(),
            verified: u.verified,
            created_at: u.created_at,
            session_id,
        }
    }
}

/// Why an account accepts no code for a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    BudgetSpent,
    PasswordChanged,
}

impl Auth {
    /// The code step: a right code (once) turns the challenge into a session.
    pub async fn verify_login_code(
        &self,
        challenge_id: &str,
        code: &str,
        meta: &RequestMeta,
    ) -> Result<TokenPair, Error> {
        let id = super::login::parse_challenge(challenge_id)?;
        let code = OtpCode::parse(code, "code")?;
        let l = &self.policy.limits;
        self.limit(&[
            l.code_verify_ip.key(format!("verify:ip:{}", super::client_key(meta))),
            l.code_verify_subject.key(format!("verify:challenge:{id}")),
        ])
        .await?;
        let now = self.now();
        let max = self.policy.code_max_failures;
        let budget = self.policy.account_code_failure_budget;
        let closed = |c: &Challenge| match c.closed(now, max) {
            Some(CodeClosed::Used) => Some(Error::OtpUsed),
            Some(CodeClosed::Exhausted) => Some(Error::OtpExhausted),
            Some(CodeClosed::Expired) => Some(Error::OtpExpired),
            None => None,
        };
        // The attempt is taken before the code is compared, so concurrent
        // guesses cannot compare more than `max` codes between them.
        let c = match self.ports.challenges.take_challenge_attempt(&id, now, max).await {
            Ok(c) => c,
            Err(StoreError::Conflict(_)) => {
                let c = self.ports.challenges.challenge(&id).await?.ok_or(Error::ChallengeNotFound)?;
                return Err(closed(&c).unwrap_or(Error::OtpExhausted));
            }
            Err(e) => return Err(e.into()),
        };
        let attempts_left = max.saturating_sub(c.attempts);
        let presented = self.login_code_hash(&id, &code);
        if !OtpCode::hashes_equal(&presented, &c.code_hash) {
            return match self
                .ports
                .challenges
                .record_challenge_failure(&id, &c.user_id, max, budget, c.password_epoch, meta)
                .await
            {
                Ok(f) => {
                    tracing::info!(user_id = %c.user_id, challenge_id = %id, failures = f.failures, "wrong login code");
                    if f.spent_budget {
                        self.lock_for_spent_budget(&c.user_id, now, meta).await;
                    }
                    Err(Error::OtpInvalid { attempts_left })
                }
                Err(StoreError::Conflict(_)) => Err(match self.account_refuses(&c).await? {
                    // The account's code budget is spent: no code counts now.
                    Some(Refusal::BudgetSpent) => Error::OtpExhausted,
                    // The password changed since this login's password step.
                    Some(Refusal::PasswordChanged) => Error::ChallengeNotFound,
                    // Used by a right code meanwhile: this one was still wrong.
                    None => Error::OtpInvalid { attempts_left },
                }),
                Err(e) => Err(e.into()),
            };
        }
        let (session, secret) = self.new_session(c.user_id, now, c.password_epoch, meta);
        match self
            .ports
            .challenges
            .redeem_challenge(&id, &presented, now, max, budget, c.password_epoch, &session, meta)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                let c = self.ports.challenges.challenge(&id).await?.ok_or(Error::ChallengeNotFound)?;
                if let Some(e) = closed(&c) {
                    return Err(e);
                }
                return Err(match self.account_refuses(&c).await? {
                    Some(Refusal::BudgetSpent) => {
                        tracing::warn!(user_id = %c.user_id, "right login code refused: the code budget is spent");
                        Error::OtpExhausted
                    }
                    Some(Refusal::PasswordChanged) => {
                        tracing::info!(user_id = %c.user_id, "login code refused: the password changed since its step");
                        Error::ChallengeNotFound
                    }
                    // The code was replaced by a resend in the meantime.
                    None => Error::OtpInvalid { attempts_left },
                });
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(user_id = %c.user_id, session_id = %session.id, "session created");
        let pair = self.token_pair(&session, &secret, now)?;
        // At the password step's epoch, which the redeem found current: a
        // change or reset from now on ends this token too.
        Ok(TokenPair { device_token: Some(self.device_token(&c.user_id, now, c.password_epoch)), ..pair })
    }

    /// The wrong code that spent the account's code budget came from
    /// someone who knows the password: the account locks now and its owner
    /// is mailed a link to reset it (as the next password step would, which
    /// may never come), unless a lock is already running. The wrong code is
    /// counted whatever happens here: a store error is logged, not
    /// answered, and the next password step locks and mails instead.
    async fn lock_for_spent_budget(&self, user_id: &UserId, now: Timestamp, meta: &RequestMeta) {
        tracing::warn!(user_id = %user_id, "the account's code budget is spent: locking it");
        let locked = match self.ports.users.user_by_id(user_id).await {
            Ok(Some(user)) => self.count_failure(&user, now, 1, meta).await.map(drop),
            Ok(None) => Ok(()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = locked {
            tracing::error!(user_id = %user_id, error = %e, "the spent code budget's lock failed; the next password step locks");
        }
    }

    /// Why the account of `c` accepts no code for it now, if it does not:
    /// its code budget is spent (only a password reset by mail gives it
    /// back), or its password changed since the password step (or the
    /// account is gone).
    pub(crate) async fn account_refuses(&self, c: &Challenge) -> Result<Option<Refusal>, Error> {
        let Some(user) = self.ports.users.user_by_id(&c.user_id).await? else {
            return Ok(Some(Refusal::PasswordChanged));
        };
        Ok(if user.otp_failures >= self.policy.account_code_failure_budget {
            Some(Refusal::BudgetSpent)
        } else if user.password_epoch != c.password_epoch {
            Some(Refusal::PasswordChanged)
        } else {
            None
        })
    }

    /// Rotates a refresh token. A token that is not the session's current
    /// one (reuse after rotation, or a lost race) revokes the whole session,
    /// except the one the last rotation replaced, presented again by the
    /// client that rotated it within `refresh_retry_grace_secs`: a retry
    /// after a lost answer, or its own requests racing, get that rotation's
    /// token back (`retried_refresh`), and the answer is counted in the
    /// session (`retries_answered`, for the audit trail).
    pub async fn refresh(&self, refresh_token: &str, meta: &RequestMeta) -> Result<TokenPair, Error> {
        let (sid, secret) = parse_refresh(refresh_token)?;
        let l = &self.policy.limits;
        self.limit(&[l.refresh_ip.key(format!("refresh:ip:{}", super::client_key(meta)))]).await?;
        // A secret this service never issued for the session proves nothing:
        // refused without touching it (else knowing a session id, which is
        // in every access token, would be enough to end the session).
        if !self.issued_refresh_secret(&sid, secret) {
            return Err(Error::InvalidRefreshToken);
        }
        let now = self.now();
        let (s, _) = self.live_session(&sid, now).await?.ok_or(Error::InvalidRefreshToken)?;
        let presented = token_hash(secret);
        if !OtpCode::hashes_equal(&presented, &s.refresh_hash) {
            return self.refresh_again_or_revoke(&s, secret, now, meta, "refresh token reuse").await;
        }
        let (new_secret, random) = self.refresh_secret(&sid);
        let seal = self.retry_seal(&sid, secret, &random);
        match self.ports.sessions.rotate_session(&sid, &presented, &token_hash(&new_secret), &seal, now, meta).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                // Rotated meanwhile, perhaps by this client's own retry.
                let Some((s, _)) = self.live_session(&sid, now).await? else {
                    return Err(Error::InvalidRefreshToken);
                };
                return self.refresh_again_or_revoke(&s, secret, now, meta, "concurrent refresh").await;
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(user_id = %s.user_id, session_id = %sid, "session refreshed");
        self.token_pair(&s, &new_secret, now)
    }

    /// The answer to `secret` (issued for session `s`, not its current
    /// one): the current token again if the last rotation replaced `secret`
    /// within the grace, else the session is revoked (`refresh_reuse`).
    async fn refresh_again_or_revoke(
        &self,
        s: &Session,
        secret: &str,
        now: Timestamp,
        meta: &RequestMeta,
        what: &'static str,
    ) -> Result<TokenPair, Error> {
        if let Some(current) = self.retried_refresh(s, secret, now, meta) {
            // Counted before it is answered, so the trail has every token
            // given out. Refused, the session was rotated again or revoked
            // since it was read: the token would be stale, and the copy is
            // refused without revoking (the rotation or revocation that
            // beat it decided the session's fate).
            match self.ports.sessions.record_refresh_retry(&s.id, &s.refresh_hash, meta).await {
                Ok(()) => {}
                Err(StoreError::Conflict(_)) => return Err(Error::InvalidRefreshToken),
                Err(e) => return Err(e.into()),
            }
            tracing::info!(user_id = %s.user_id, session_id = %s.id, "refresh retried: its rotation's token given again");
            return self.token_pair(s, &current, now);
        }
        tracing::warn!(user_id = %s.user_id, session_id = %s.id, "{what}: session revoked");
        self.ports.sessions.revoke_session(&s.id, now, "refresh_reuse", meta).await?;
        Err(Error::InvalidRefreshToken)
    }

    /// Session `s`'s current refresh secret, if `secret` is the one its
    /// last rotation replaced, that rotation is at most
    /// `refresh_retry_grace_secs` from `now`, and the request comes from the
    /// client that made it (its address, or /64, and user agent, which the
    /// rotation left in the session's `meta`): the seal opened with `secret`
    /// gives a secret whose hash is the session's. A copy of the token sent
    /// from anywhere else is a reuse, as before the grace.
    fn retried_refresh(&self, s: &Session, secret: &str, now: Timestamp, meta: &RequestMeta) -> Option<String> {
        // Either way: another instance's clock may be a little ahead.
        let grace = self.policy.refresh_retry_grace_secs;
        if grace <= 0 || (now - s.refreshed_at).abs() > grace {
            return None;
        }
        let same_client = meta.ip.is_some()
            && super::client_key(meta) == super::client_key(&s.meta)
            && meta.user_agent == s.meta.user_agent;
        if !same_client {
            return None;
        }
        let sealed = hex::decode(s.retry_seal.as_deref()?).ok()?;
        let sealed: [u8; REFRESH_RANDOM_BYTES] = sealed.try_into().ok()?;
        let random = xor(&sealed, &self.retry_pad(&s.id, secret));
        let current = self.refresh_secret_of(&s.id, &random);
        OtpCode::hashes_equal(&token_hash(&current), &s.refresh_hash).then_some(current)
    }

    /// The random part of a rotation's new secret sealed under the secret
    /// it replaces (hex), for `retried_refresh`. The pad is keyed by the
    /// code HMAC key and that secret, so opening it takes both: the stored
    /// session alone (a read of the table, a stream record) does not give
    /// the current secret, nor does the old secret without the key.
    fn retry_seal(&self, sid: &SessionId, replaced: &str, random: &[u8; REFRESH_RANDOM_BYTES]) -> String {
        hex::encode(xor(random, &self.retry_pad(sid, replaced)))
    }

    fn retry_pad(&self, sid: &SessionId, replaced: &str) -> [u8; REFRESH_RANDOM_BYTES] {
        let mac = self.code_key.mac("latchkey/refresh-retry-seal/v1", &[&sid.to_string(), replaced]);
        let mut pad = [0u8; REFRESH_RANDOM_BYTES];
        #[allow(clippy::expect_used)]
        hex::decode_to_slice(&mac[..2 * REFRESH_RANDOM_BYTES], &mut pad).expect("a MAC is hex");
        pad
    }

    /// Revokes the session a refresh token belongs to. Idempotent: a
    /// token of an unknown or already revoked session is not an error. A
    /// secret this service did not issue for the session is
    /// `InvalidRefreshToken`, and revokes nothing.
    pub async fn logout(&self, refresh_token: &str, meta: &RequestMeta) -> Result<(), Error> {
        let (sid, secret) = parse_refresh(refresh_token)?;
        if !self.issued_refresh_secret(&sid, secret) {
            return Err(Error::InvalidRefreshToken);
        }
        self.ports.sessions.revoke_session(&sid, self.now(), "logout", meta).await?;
        tracing::info!(session_id = %sid, "session revoked by logout");
        Ok(())
    }

    /// The profile behind a valid access token whose session is alive.
    pub async fn me(&self, access_token: &str) -> Result<Profile, Error> {
        let (s, u) = self.caller_session(Caller::Bearer(access_token), self.now()).await?;
        Ok(Profile::of(u, s.id))
    }

    /// Session `sid` and its user, if the session exists, is not revoked nor
    /// over at `now` (its `expires_at`), its user exists and no password
    /// change has ended it since. Every reader of a session goes through
    /// here, so none can miss one of these rules.
    pub(crate) async fn live_session(
        &self,
        sid: &SessionId,
        now: Timestamp,
    ) -> Result<Option<(Session, User)>, StoreError> {
        let Some(s) = self.ports.sessions.session(sid).await?.filter(|s| s.is_open_at(now)) else {
            return Ok(None);
        };
        let user = self.ports.users.user_by_id(&s.user_id).await?;
        Ok(user.filter(|u| !u.ended_by_password_change(&s)).map(|u| (s, u)))
    }

    /// A new refresh secret for session `sid`: 128 random bits (URL-safe
    /// base64) then a 128-bit tag (hex) binding them to the session, so a
    /// presented secret shows whether this service issued it. Its random
    /// part too, which a rotation seals (`retry_seal`).
    fn refresh_secret(&self, sid: &SessionId) -> (String, [u8; REFRESH_RANDOM_BYTES]) {
        let mut random = [0u8; REFRESH_RANDOM_BYTES];
        self.ports.rng.fill(&mut random);
        (self.refresh_secret_of(sid, &random), random)
    }

    /// The refresh secret of session `sid` whose random part is `random`.
    fn refresh_secret_of(&self, sid: &SessionId, random: &[u8; REFRESH_RANDOM_BYTES]) -> String {
        let random = URL_SAFE_NO_PAD.encode(random);
        let tag = self.refresh_tag(sid, &random);
        format!("{random}{tag}")
    }

    fn refresh_tag(&self, sid: &SessionId, random: &str) -> String {
        let mut mac = self.code_key.mac("latchkey/refresh-secret/v1", &[&sid.to_string(), random]);
        mac.truncate(REFRESH_TAG_LEN);
        mac
    }

    /// Whether `secret` (of a parsed token) was issued by this service for
    /// session `sid`; the tag is compared in constant time.
    pub(crate) fn issued_refresh_secret(&self, sid: &SessionId, secret: &str) -> bool {
        let Some((random, tag)) = secret.split_at_checked(REFRESH_RANDOM_LEN) else { return false };
        OtpCode::hashes_equal(&self.refresh_tag(sid, random), tag)
    }

    /// A new session of `user_id` at the user's `password_epoch`.
    fn new_session(
        &self,
        user_id: UserId,
        now: Timestamp,
        password_epoch: u64,
        meta: &RequestMeta,
    ) -> (Session, String) {
        let id = SessionId::random(self.ports.rng.as_ref());
        let (secret, _) = self.refresh_secret(&id);
        let s = Session {
            id,
            user_id,
            refresh_hash: token_hash(&secret),
            created_at: now,
            refreshed_at: now,
            expires_at: now + self.policy.refresh_ttl_secs,
            generation: 0,
            revoked_at: None,
            revoke_reason: None,
            valid_from: None,
            password_epoch: Some(password_epoch),
            retry_seal: None,
            retries_answered: 0,
            meta: meta.clone(),
        };
        (s, secret)
    }

    fn token_pair(&self, s: &Session, secret: &str, now: Timestamp) -> Result<TokenPair, Error> {
        Ok(TokenPair {
            access_token: self.tokens.issue(&s.user_id, &s.id, now, s.expires_at, self.new_id())?,
            refresh_token: format!("{}.{secret}", s.id),
            expires_in: self.tokens.ttl_secs().min(s.expires_at - now),
            session_id: s.id,
            user_id: s.user_id,
            device_token: None,
        })
    }
}

/// Bytes of a refresh secret's random part.
const REFRESH_RANDOM_BYTES: usize = 16;
/// Characters of a refresh secret's random part (16 bytes, base64).
const REFRESH_RANDOM_LEN: usize = 22;
/// Characters of its tag (16 bytes of HMAC-SHA256, hex).
const REFRESH_TAG_LEN: usize = 32;
/// Characters of a refresh secret, the part after `<session id>.`.
pub(crate) const REFRESH_SECRET_LEN: usize = REFRESH_RANDOM_LEN + REFRESH_TAG_LEN;

fn xor<const N: usize>(a: &[u8; N], b: &[u8; N]) -> [u8; N] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

fn parse_refresh(token: &str) -> Result<(SessionId, &str), Error> {
    let (sid, secret) = token.split_once('.').ok_or(Error::InvalidRefreshToken)?;
    let sid = SessionId::parse(sid).ok_or(Error::InvalidRefreshToken)?;
    if secret.len() != REFRESH_SECRET_LEN || !secret.is_ascii() {
        return Err(Error::InvalidRefreshToken);
    }
    Ok((sid, secret))
}
