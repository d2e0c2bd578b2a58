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
/// The longest mail job id a consumer takes (the flows make 32 hex characters).
pub const MAX_JOB_ID_LEN: usize = 128;

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
    /// The account was deleted (by someone signed in who typed its
    /// password).
    AccountDeleted { username: String, at: Timestamp },
    /// To the address an account asked to move to: a link that makes it the
    /// account's.
    EmailChangeLink { username: String, token: Secret<String>, expires_minutes: u32 },
    /// To the account's address: a move to `new_address` (as `Email::masked`
    /// shows it) was asked for, the link working `expires_minutes`; or,
    /// when `done`, made.
    EmailChangeNotice {
        username: String,
        new_address: String,
        at: Timestamp,
        #[serde(default)]
        expires_minutes: u32,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        done: bool,
    },
    /// To an address an account asked to move to that already has an
    /// account: nothing was changed.
    EmailInUse {},
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
            MailJob::AccountDeleted { .. } => "account_deleted",
            MailJob::EmailChangeLink { .. } => "email_change_link",
            MailJob::EmailChangeNotice { .. } => "email_change_notice",
            MailJob::EmailInUse {} => "email_in_use",
        }
    }

    /// How long after the job was queued the code or link it carries stops
    /// working, as the job itself says; `None` for a notice that carries
    /// neither (it is still bounded by `delivery::MAX_JOB_AGE_SECS`).
    pub fn content_life_secs(&self) -> Option<i64> {
        match self {
            MailJob::VerifyEmail { expires_hours, .. } => Some(i64::from(*expires_hours) * 3600),
            MailJob::LoginCode { expires_minutes, .. }
            | MailJob::StandaloneCode { expires_minutes, .. }
            | MailJob::PasswordReset { expires_minutes, .. }
            | MailJob::EmailChangeLink { expires_minutes, .. } => Some(i64::from(*expires_minutes) * 60),
            MailJob::SignupAttempt {}
            | MailJob::AccountLocked { .. }
            | MailJob::PasswordChanged { .. }
            | MailJob::AccountDeleted { .. }
            | MailJob::EmailChangeNotice { .. }
            | MailJob::EmailInUse {} => None,
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

    /// When the code or link in this job stops working (`created_at` plus
    /// the job's own lifetime); `None` for a job that carries neither.
    pub fn content_expires_at(&self) -> Option<Timestamp> {
        self.job.content_life_secs().map(|life| self.created_at.saturating_add(life))
    }

    pub fn to_json(&self) -> String {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a queued job, refusing unknown versions and unusable ids, with
    /// a reason that never quotes the body (which may hold a code): the
    /// error's category and position only.
    pub fn from_json(s: &str) -> Result<Self, String> {
        let env: MailEnvelope = serde_json::from_str(s).map_err(|e| {
            format!("unparseable mail job: {:?} error at line {} column {}", e.classify(), e.line(), e.column())
        })?;
        env.check()?;
        Ok(env)
    }

    /// Whether a parsed job can be delivered as it is: a known version, and
    /// an id of 1 to [`MAX_JOB_ID_LEN`] printable ASCII characters (the id
    /// keys the job's ledger record: jobs that shared one empty id would be
    /// "already sent" after the first).
    pub fn check(&self) -> Result<(), String> {
        if self.v != MAIL_JOB_VERSION {
            return Err(format!("unknown mail job version {}", self.v));
        }
        if self.id.is_empty() || self.id.len() > MAX_JOB_ID_LEN || !self.id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "mail job id is not 1 to {MAX_JOB_ID_LEN} printable ASCII characters ({} bytes)",
                self.id.len()
            ));
        }
        Ok(())
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
    fn a_code_or_link_expires_with_its_job_and_a_notice_does_not() {
        let at = |job: MailJob| {
            let to = crate::domain::Email::parse("a@example.com").unwrap();
            MailEnvelope::new("j".into(), &to, 1_000, None, None, job).content_expires_at()
        };
        let code = |s: &str| Secret::new(s.to_string());
        assert_eq!(at(MailJob::LoginCode { username: "a".into(), code: code("1"), expires_minutes: 5 }), Some(1_300));
        assert_eq!(at(MailJob::StandaloneCode { code: code("1"), expires_minutes: 10 }), Some(1_600));
        assert_eq!(
            at(MailJob::PasswordReset { username: "a".into(), token: code("t"), expires_minutes: 30 }),
            Some(2_800)
        );
        assert_eq!(
            at(MailJob::VerifyEmail { username: "a".into(), token: code("t"), expires_hours: 24 }),
            Some(1_000 + 86_400)
        );
        assert_eq!(
            at(MailJob::EmailChangeLink { username: "a".into(), token: code("t"), expires_minutes: 60 }),
            Some(4_600)
        );
        assert_eq!(at(MailJob::SignupAttempt {}), None);
        assert_eq!(at(MailJob::EmailInUse {}), None);
        let notice = |done| MailJob::EmailChangeNotice {
            username: "a".into(),
            new_address: "n***@example.com".into(),
            at: 1,
            expires_minutes: 60,
            done,
        };
        assert_eq!((at(notice(false)), at(notice(true))), (None, None));
        assert_eq!(at(MailJob::PasswordChanged { username: "a".into(), at: 1, by_reset: false }), None);
        assert_eq!(at(MailJob::AccountLocked { username: "a".into(), locked_until: 9, codes_spent: false }), None);
    }

    #[test]
    fn refuses_unknown_version_and_unusable_ids() {
        let json = r#"{"v":2,"id":"x","to":"a@b.co","created_at":0,"job":{"kind":"signup_attempt"}}"#;
        assert!(MailEnvelope::from_json(json).is_err());
        assert!(MailEnvelope::from_json("not json").is_err());
        // The id keys the job's ledger record.
        let good = MailEnvelope::from_json(&json.replace(r#""v":2"#, r#""v":1"#)).unwrap();
        for id in [String::new(), "a b".into(), "é".into(), "x".repeat(MAX_JOB_ID_LEN + 1)] {
            let bad = MailEnvelope { id: id.clone(), ..good.clone() };
            let e = MailEnvelope::from_json(&bad.to_json()).unwrap_err();
            assert!(e.starts_with("mail job id is not 1 to 128 printable ASCII characters"), "{id:?}: {e}");
        }
        let longest = MailEnvelope { id: "x".repeat(MAX_JOB_ID_LEN), ..good };
        assert_eq!(MailEnvelope::from_json(&longest.to_json()).unwrap(), longest);
    }

    #[test]
    fn parse_errors_never_quote_the_body() {
        let body = r#"{"v":1,"id":"x","to":"a@b.co","created_at":"123456","job":{"kind":"signup_attempt"}}"#;
        let e = MailEnvelope::from_json(body).unwrap_err();
        assert!(e.starts_with("unparseable mail job"), "{e}");
        assert!(!e.contains("123456"), "{e}");
        assert_eq!(
            MailEnvelope::from_json(&body.replace("\"123456\"", "1").replace("\"v\":1", "\"v\":9")).unwrap_err(),
            "unknown mail job version 9"
        );
        // An id that could not key a ledger record of its own is parked
        // (jobs with one empty id would all be "already sent" after the first).
        let e = MailEnvelope::from_json(&body.replace("\"123456\"", "1").replace("\"id\":\"x\"", "\"id\":\"\""))
            .unwrap_err();
        assert!(e.starts_with("mail job id is not 1 to 128"), "{e}");
    }
}
