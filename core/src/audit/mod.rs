//! The audit trail: security events derived from data changes, never
//! written by the flows themselves. A change (a DynamoDB stream record or a
//! row of the embedded change feed) goes through the one pure function
//! [`audit_events`]; each event joins its subject's tamper-evident hash
//! chain in an [`AuditStore`].
//!
//! An event names who (subject, request id, client IP, user agent), what
//! (event type, outcome, reason code), and when (UTC seconds). It never
//! carries a password, code, token, secret hash or key: the mapping copies
//! only the fields listed on [`AuditEvent`].

mod admin_key;
mod chain;
mod mapping;
mod store;

pub use admin_key::AdminKeyHash;
pub use chain::{
    AuditHead, ChainBreak, ChainReport, GENESIS_HASH, check_logged_head, log_head, record_hash, verify_chain,
    verify_chain_at,
};
pub use mapping::{AuditPolicy, Images, SourceChange, audit_events, mail_failure_code, otp_subject};
pub use store::{AuditPage, AuditStore, DayCount, day_of, day_string, parse_day};

use crate::clock::Timestamp;
use crate::keys::AuditKey;
use serde::{Deserialize, Serialize};

/// The kinds of security event. Stored and serialised as the snake_case
/// name `as_str` gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AuditEventType {
    UserRegistered,
    VerificationMailRequested,
    EmailVerified,
    VerificationExpired,
    LoginCodeIssued,
    CodeVerified,
    CodeFailed,
    ChallengeExhausted,
    CodeExpired,
    OtpSent,
    OtpVerified,
    OtpFailed,
    OtpExhausted,
    OtpExpired,
    /// A wrong password below the lock threshold (the one that reaches it
    /// is an `AccountLocked`).
    LoginFailed,
    AccountLocked,
    AccountUnlocked,
    PasswordChanged,
    /// The user's "sign out everywhere else": every other session, login in
    /// progress and device token ended, the password unchanged.
    OtherSessionsEnded,
    /// A password set through a mailed reset link: every session ended.
    PasswordReset,
    /// An account nobody verified, deleted when a registration took its
    /// username or email after its hold ran out.
    UnverifiedAccountReplaced,
    /// An account nobody verified, deleted with its names
    /// `User::UNVERIFIED_RETENTION_SECS` after it was made (DynamoDB's TTL,
    /// the embedded sweep).
    UnverifiedAccountExpired,
    /// A verified account deleted by its owner (with the password): the
    /// user and its names; what else it had ends with it.
    AccountDeleted,
    /// The account moved to a new address through the link mailed there
    /// (asked for by someone signed in who typed the password).
    EmailChanged,
    SessionCreated,
    SessionRefreshed,
    SessionRevoked,
    SessionExpired,
    MailDelivered,
    MailFailed,
    /// A type this build does not know, read from a store: written by a
    /// newer stream processor (during a deploy, or before a rollback). Kept
    /// by its name, so its record still lists, counts and hashes as it was
    /// written. Never produced by this build's mapping.
    Other(&'static str),
}

impl AuditEventType {
    pub const ALL: &'static [AuditEventType] = &[
        AuditEventType::UserRegistered,
        AuditEventType::VerificationMailRequested,
        AuditEventType::EmailVerified,
        AuditEventType::VerificationExpired,
        AuditEventType::LoginCodeIssued,
        AuditEventType::CodeVerified,
        AuditEventType::CodeFailed,
        AuditEventType::ChallengeExhausted,
        AuditEventType::CodeExpired,
        AuditEventType::OtpSent,
        AuditEventType::OtpVerified,
        AuditEventType::OtpFailed,
        AuditEventType::OtpExhausted,
        AuditEventType::OtpExpired,
        AuditEventType::LoginFailed,
        AuditEventType::AccountLocked,
        AuditEventType::AccountUnlocked,
        AuditEventType::PasswordChanged,
        AuditEventType::OtherSessionsEnded,
        AuditEventType::PasswordReset,
        AuditEventType::UnverifiedAccountReplaced,
        AuditEventType::UnverifiedAccountExpired,
        AuditEventType::AccountDeleted,
        AuditEventType::EmailChanged,
        AuditEventType::SessionCreated,
        AuditEventType::SessionRefreshed,
        AuditEventType::SessionRevoked,
        AuditEventType::SessionExpired,
        AuditEventType::MailDelivered,
        AuditEventType::MailFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditEventType::UserRegistered => "user_registered",
            AuditEventType::VerificationMailRequested => "verification_mail_requested",
            AuditEventType::EmailVerified => "email_verified",
            AuditEventType::VerificationExpired => "verification_expired",
            AuditEventType::LoginCodeIssued => "login_code_issued",
            AuditEventType::CodeVerified => "code_verified",
            AuditEventType::CodeFailed => "code_failed",
            AuditEventType::ChallengeExhausted => "challenge_exhausted",
            AuditEventType::CodeExpired => "code_expired",
            AuditEventType::OtpSent => "otp_sent",
            AuditEventType::OtpVerified => "otp_verified",
            AuditEventType::OtpFailed => "otp_failed",
            AuditEventType::OtpExhausted => "otp_exhausted",
            AuditEventType::OtpExpired => "otp_expired",
            AuditEventType::LoginFailed => "login_failed",
            AuditEventType::AccountLocked => "account_locked",
            AuditEventType::AccountUnlocked => "account_unlocked",
            AuditEventType::PasswordChanged => "password_changed",
            AuditEventType::OtherSessionsEnded => "other_sessions_ended",
            AuditEventType::PasswordReset => "password_reset",
            AuditEventType::UnverifiedAccountReplaced => "unverified_account_replaced",
            AuditEventType::UnverifiedAccountExpired => "unverified_account_expired",
            AuditEventType::AccountDeleted => "account_deleted",
            AuditEventType::EmailChanged => "email_changed",
            AuditEventType::SessionCreated => "session_created",
            AuditEventType::SessionRefreshed => "session_refreshed",
            AuditEventType::SessionRevoked => "session_revoked",
            AuditEventType::SessionExpired => "session_expired",
            AuditEventType::MailDelivered => "mail_delivered",
            AuditEventType::MailFailed => "mail_failed",
            AuditEventType::Other(name) => name,
        }
    }

    /// A type this build knows, by name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|e| e.as_str() == s)
    }

    /// A type as stored: one this build knows, or `Other` for a well-formed
    /// name it does not (1 to 64 of `a-z`, `0-9`, `_`). `None` for a name no
    /// processor writes, or past [`MAX_OTHER_TYPES`] distinct unknown names.
    pub fn from_stored(s: &str) -> Option<Self> {
        Self::parse(s).or_else(|| intern_other(s).map(AuditEventType::Other))
    }
}

/// The most distinct unknown type names one process keeps (each is leaked,
/// so that the type stays `Copy`): far more than one release adds.
pub const MAX_OTHER_TYPES: usize = 64;

fn intern_other(s: &str) -> Option<&'static str> {
    let well_formed =
        (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !well_formed {
        return None;
    }
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(name) = names.iter().find(|n| **n == s) {
        return Some(name);
    }
    if names.len() >= MAX_OTHER_TYPES {
        return None;
    }
    let name: &'static str = Box::leak(s.to_owned().into_boxed_str());
    names.push(name);
    Some(name)
}

impl Serialize for AuditEventType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AuditEventType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        AuditEventType::from_stored(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "not an audit event type: {:?}",
                name.chars().take(64).collect::<String>()
            ))
        })
    }
}

impl std::fmt::Display for AuditEventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the event ended for the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    /// Nobody acted: a lifetime ran out (a TTL deletion, or a lock ending).
    Expired,
}

/// One security event, before it joins its subject's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// The idempotency key: the source change's id (stream event id or feed
    /// sequence number) and the event's index among that change's events.
    pub event_id: String,
    /// A user id, or `otp:<address hmac>` for the standalone OTP API.
    pub subject: String,
    pub event: AuditEventType,
    /// When the change happened (UTC seconds).
    pub at: Timestamp,
    pub outcome: Outcome,
    /// A stable reason code (`wrong_code`, `logout`, `ttl`, …).
    pub reason: Option<String>,
    pub attempts_left: Option<u32>,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// An event as stored: link `seq` of its subject's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub subject: String,
    /// 1 for a subject's first record, then +1 per record.
    pub seq: u64,
    pub event_id: String,
    pub event: AuditEventType,
    pub at: Timestamp,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts_left: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// When retention removes the record (UTC seconds); never earlier than
    /// the previous record's.
    pub expires_at: Timestamp,
    /// The previous record's `hash` ([`GENESIS_HASH`] for seq 1).
    pub prev_hash: String,
    /// SHA-256 over every other field but `seal`, hex.
    pub hash: String,
    /// The audit key's MAC over `hash` (`AuditKey::seal`), hex. `None` only
    /// on records written before the trail was sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

impl AuditRecord {
    /// `event` as link `seq` after a record whose hash is `prev_hash`,
    /// sealed with `key`.
    pub fn chained(event: &AuditEvent, seq: u64, prev_hash: &str, expires_at: Timestamp, key: &AuditKey) -> Self {
        let mut r = AuditRecord {
            subject: event.subject.clone(),
            seq,
            event_id: event.event_id.clone(),
            event: event.event,
            at: event.at,
            outcome: event.outcome,
            reason: event.reason.clone(),
            attempts_left: event.attempts_left,
            request_id: event.request_id.clone(),
            ip: event.ip.clone(),
            user_agent: event.user_agent.clone(),
            expires_at,
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
            seal: None,
        };
        r.hash = record_hash(&r);
        r.seal = Some(key.seal(&r.hash));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_by_its_name_and_an_unknown_name_is_kept() {
        for &t in AuditEventType::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<AuditEventType>(&json).unwrap(), t);
            assert_eq!(AuditEventType::from_stored(t.as_str()), Some(t));
        }
        let newer: AuditEventType = serde_json::from_str("\"passkey_added\"").unwrap();
        assert_eq!(newer, AuditEventType::Other("passkey_added"));
        assert_eq!(serde_json::to_string(&newer).unwrap(), "\"passkey_added\"");
        assert_eq!(AuditEventType::parse("passkey_added"), None, "parse knows only this build's types");
        // Names no processor writes are refused, as before.
        for bad in ["", "Passkey", "a b", "x\"y", &"a".repeat(65)] {
            assert_eq!(AuditEventType::from_stored(bad), None, "{bad:?}");
            let e = serde_json::from_str::<AuditEventType>(&serde_json::to_string(bad).unwrap()).unwrap_err();
            assert!(e.to_string().starts_with("not an audit event type"), "{bad:?}: {e}");
        }
    }
}
