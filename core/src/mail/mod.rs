//! Mail jobs: what the flows ask to be sent, as a typed, versioned message
//! that travels through the queue, and its rendering into subject, text and
//! HTML. Codes and tokens travel in the job (the queue is encrypted at rest on
//! AWS) but never reach a log: `Debug` on a job is redacted.

pub mod delivery;
mod render;

pub use render::{RenderedMail, Renderer};

use crate::clock::Timestamp;
use crate::domain::Secret;
use serde::{Deserialize, Serialize};

/// The current version of the job format. A consumer refuses versions it
/// does not know (the job is parked, not dropped).
pub const MAIL_JOB_VERSION: u32 = 1;

/// One mail to send, with its idempotency id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailEnvelope {
    pub v: u32,
    /// Unique per job: the consumer sends each id at most once.
    pub id: String,
    pub to: String,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The audit subject the mail belongs to (a user id, or
    /// `audit::mapping::otp_subject` for standalone OTP mail); `None` when
    /// there is no account to attribute it to. Jobs queued before the field
    /// existed parse with `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub job: MailJob,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MailJob {
    /// Confirm the address: a link carrying the verification token.
    VerifyEmail { username: String, token: Secret<String>, expires_hours: u32 },
    /// The second login step.
    LoginCode { username: String, code: Secret<String>, expires_minutes: u32 },
    /// The standalone OTP API's code.
    StandaloneCode { code: Secret<String>, expires_minutes: u32 },
    /// Someone tried to register with an address that already has an account.
    SignupAttempt {},
    /// Too many wrong passwords: the account is locked for a while. With
    /// `codes_spent`, the lock follows the account-wide budget of wrong
    /// codes: someone who knows the password guessed codes, and only a
    /// password reset by mail lets anyone sign in again.
    AccountLocked {
        username: String,
        locked_until: Timestamp,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        codes_spent: bool,
    },
    /// The password was changed and the other sessions ended; or, when
    /// `by_reset`, it was set through a reset link and every session ended.
    PasswordChanged {
        username: String,
        at: Timestamp,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        by_reset: bool,
    },
    /// A link to choose a new password (the account's owner asked for it,
    /// or someone who knows the address did).
    PasswordReset { username: String, token: Secret<String>, expires_minutes: u32 },
}

impl MailJob {
    /// A stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MailJob::VerifyEmail { .. } => "verify_email",
            MailJob::LoginCode { .. } => "login_code",
            MailJob::StandaloneCode { .. } => "standalone_code",
            MailJob::SignupAttempt {} => "signup_attempt",
            MailJob::AccountLocked { .. } => "account_locked",
            MailJob::PasswordChanged { .. } => "password_changed",
            MailJob::PasswordReset { .. } => "password_reset",
        }
    }
}

impl MailEnvelope {
    pub fn new(
        id: String,
        to: &crate::domain::Email,
        now: Timestamp,
        request_id: Option<String>,
        subject: Option<String>,
        job: MailJob,
    ) -> Self {
        MailEnvelope { v: MAIL_JOB_VERSION, id, to: to.as_str().to_string(), created_at: now, request_id, subject, job }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a queued job, refusing unknown versions.
    pub fn from_json(s: &str) -> Result<Self, String> {
        let env: MailEnvelope = serde_json::from_str(s).map_err(|e| format!("unparseable mail job: {e}"))?;
        if env.v != MAIL_JOB_VERSION {
            return Err(format!("unknown mail job version {}", env.v));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_redacts() {
        let env = MailEnvelope::new(
            "j1".into(),
            &crate::domain::Email::parse("a@example.com").unwrap(),
            1,
            None,
            Some("user-1".into()),
            MailJob::LoginCode { username: "alice".into(), code: Secret::new("123456".into()), expires_minutes: 5 },
        );
        let json = env.to_json();
        assert!(json.contains("\"kind\":\"login_code\""));
        assert!(json.contains("\"subject\":\"user-1\""));
        assert_eq!(MailEnvelope::from_json(&json).unwrap(), env);
        assert!(!format!("{env:?}").contains("123456"));
    }

    #[test]
    fn a_job_queued_without_a_subject_still_parses() {
        let json = r#"{"v":1,"id":"x","to":"a@b.co","created_at":0,"job":{"kind":"signup_attempt"}}"#;
        assert_eq!(MailEnvelope::from_json(json).unwrap().subject, None);
        let env = MailEnvelope::from_json(json).unwrap();
        assert!(!env.to_json().contains("subject"));
    }

    #[test]
    fn refuses_unknown_version() {
        let json = r#"{"v":2,"id":"x","to":"a@b.co","created_at":0,"job":{"kind":"signup_attempt"}}"#;
        assert!(MailEnvelope::from_json(json).is_err());
        assert!(MailEnvelope::from_json("not json").is_err());
    }
}
