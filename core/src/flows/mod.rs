//! The use cases. `Auth` holds the ports and the policy; each submodule adds
//! the methods of one flow. HTTP handlers call exactly one of these.

mod admin;
mod browser;
mod device;
mod email_change;
mod login;
mod otp;
mod password;
mod rate_limit;
mod register;
mod reset;
mod session;
mod sessions;
mod signed_token;
mod tokens;
mod verify_email;

pub use admin::{AdminTrail, NAME_ONE_TRAIL, TrailOf};
pub use browser::BrowserSession;
pub use login::LoginStarted;
pub use otp::OtpSent;
pub use rate_limit::client_key;
pub use session::{Profile, TokenPair};
pub use sessions::{Caller, MAX_LISTED, SessionView};
pub use tokens::{AccessClaims, TokenIssuer};

use crate::config::Policy;
use crate::keys::CodeKey;
use crate::mail::{MailEnvelope, MailJob};
use crate::password_hasher::PasswordHasher;
use crate::ports::{ChallengeStore, Clock, MailQueue, OtpStore, RateLimiter, SecureRng, SessionStore, UserStore};
use std::sync::Arc;

/// The ports a running system provides. One backend usually implements all
/// store traits with one type.
#[derive(Clone)]
pub struct Ports {
    pub users: Arc<dyn UserStore>,
    pub challenges: Arc<dyn ChallengeStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub otps: Arc<dyn OtpStore>,
    pub limiter: Arc<dyn RateLimiter>,
    pub mail: Arc<dyn MailQueue>,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn SecureRng>,
}

/// Everything the flows need, built once per process.
#[derive(Clone)]
pub struct Auth {
    pub(crate) ports: Ports,
    pub(crate) policy: Arc<Policy>,
    pub(crate) hasher: PasswordHasher,
    pub(crate) code_key: CodeKey,
    pub(crate) tokens: Arc<TokenIssuer>,
}

impl Auth {
    pub fn new(ports: Ports, policy: Policy, hasher: PasswordHasher, code_key: CodeKey, tokens: TokenIssuer) -> Self {
        Auth { ports, policy: Arc::new(policy), hasher, code_key, tokens: Arc::new(tokens) }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn tokens(&self) -> &TokenIssuer {
        &self.tokens
    }

    pub fn now(&self) -> crate::clock::Timestamp {
        self.ports.clock.now()
    }

    fn new_id(&self) -> String {
        hex::encode(&self.ports.rng.bytes32()[..16])
    }

    /// Enqueues `job` to `to`; `subject` is the audit subject its delivery
    /// is recorded under (`None`: no account to attribute it to).
    async fn send(
        &self,
        to: &crate::domain::Email,
        subject: Option<String>,
        meta: &crate::domain::RequestMeta,
        job: MailJob,
    ) -> Result<(), crate::Error> {
        let env = MailEnvelope::new(self.new_id(), to, self.now(), meta.request_id.clone(), subject, job);
        let kind = env.job.kind();
        self.ports.mail.enqueue(&env).await?;
        tracing::info!(mail_id = %env.id, kind, to = %to.masked(), "mail job enqueued");
        Ok(())
    }

    /// Waits until `Policy::uniform_answer_ms` have passed since `started`:
    /// a request that answers the same whether or not an account exists
    /// (asking for a reset link or a new verification link) also answers
    /// in the same time, though only an account costs a mail job (measured
    /// on the embedded store before this: 3.3 ms for a verified address
    /// against 1.8 ms for an unknown one).
    async fn uniform_answer(&self, started: std::time::Instant) {
        let floor = std::time::Duration::from_millis(self.policy.uniform_answer_ms);
        if let Some(left) = floor.checked_sub(started.elapsed()) {
            tokio::time::sleep(left).await;
        }
    }

    /// As `send`, for a mail that follows a change already committed: a
    /// queue outage is logged, not answered, so the request reports what was
    /// done. (An error would be worse: a registration answered 500 exists
    /// and its retry says "username taken"; the tenth wrong password would
    /// answer 500 only for accounts that exist.) Where the mail matters the
    /// user can ask for it again: the verification resend. Whether the job
    /// was queued.
    async fn notify(
        &self,
        to: &crate::domain::Email,
        subject: Option<String>,
        meta: &crate::domain::RequestMeta,
        job: MailJob,
    ) -> bool {
        let kind = job.kind();
        match self.send(to, subject, meta, job).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(kind, to = %to.masked(), error = %e, "mail job not queued; the change stands");
                false
            }
        }
    }
}
