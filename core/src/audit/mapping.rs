//! The one pure function from a data change to audit events. The DynamoDB
//! stream handler and the embedded change-feed driver both decode their
//! change into [`SourceChange`] and call [`audit_events`].

use super::{AuditEvent, AuditEventType as T, Outcome};
use crate::clock::Timestamp;
use crate::domain::{Challenge, OtpRecord, RequestMeta, Session, User, UserId, VerificationRecord};
use crate::mail::delivery::{LedgerEntry, ledger_state};

/// The record before and after a change, by kind. `None` before: created;
/// `None` after: removed.
#[derive(Debug, Clone, PartialEq)]
pub enum Images {
    User(Option<User>, Option<User>),
    Verification(Option<VerificationRecord>, Option<VerificationRecord>),
    Challenge(Option<Challenge>, Option<Challenge>),
    Session(Option<Session>, Option<Session>),
    Otp(Option<OtpRecord>, Option<OtpRecord>),
    /// A mail ledger record (one per mail job).
    Mail(Option<LedgerEntry>, Option<LedgerEntry>),
}

/// One change as the audit trail sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceChange {
    /// Unique per change and stable across redeliveries: `ddb:<eventID>`
    /// or `feed:<seq>`.
    pub source_id: String,
    pub at: Timestamp,
    /// A removal made by the store's TTL sweeper, not by a request.
    pub expired_by_ttl: bool,
    pub images: Images,
}

/// The policy numbers the mapping needs to describe an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPolicy {
    pub code_max_failures: u32,
    /// Wrong codes across challenges that spend an account's code budget
    /// (a lock then has reason `code_budget_spent`).
    pub account_code_failure_budget: u32,
    /// Wrong passwords that lock an account (a `login_failed` event says
    /// how many are left).
    pub login_lock_threshold: u32,
    /// Wrong standalone codes across an address's codes that spend its
    /// budget (`otp_exhausted` then has reason `code_budget_spent`).
    pub otp_failure_budget: u32,
}

impl From<&crate::config::Policy> for AuditPolicy {
    fn from(p: &crate::config::Policy) -> Self {
        AuditPolicy {
            code_max_failures: p.code_max_failures,
            account_code_failure_budget: p.account_code_failure_budget,
            login_lock_threshold: p.login_lock_threshold,
            otp_failure_budget: p.otp_failure_budget,
        }
    }
}

impl Default for AuditPolicy {
    fn default() -> Self {
        AuditPolicy::from(&crate::config::Policy::default())
    }
}

/// The audit subject of a standalone OTP address (its keyed hash).
pub fn otp_subject(address_hash: &str) -> String {
    format!("otp:{address_hash}")
}

/// Every code [`mail_failure_code`] gives, checked against sample reasons.
#[cfg(test)]
#[test]
fn mail_failure_codes_name_the_cause() {
    for (reason, code) in [
        (
            "expired: its code or link stopped working at 2026-11-22T05:00:00Z (3 s before this delivery); not sent",
            "expired",
        ),
        ("expired: queued 518400 s ago; no mail is sent 518400 s or more after it was queued", "expired"),
        ("recipient is not a valid email address", "invalid_recipient"),
        ("transient failures exhausted after 5 receives: Throttling", "retries_exhausted"),
        ("unparseable mail job: Syntax error at line 1 column 2", "bad_job"),
        ("MessageRejected: Email address is not verified.", "sender_not_verified"),
        ("something else", "permanent_failure"),
    ] {
        assert_eq!(mail_failure_code(Some(reason)), code, "{reason}");
    }
}

/// A short, fixed reason code for a parked mail, derived from the ledger's
/// free-text reason (which may quote a provider's message or an address):
/// only these codes reach the audit trail.
pub fn mail_failure_code(reason: Option<&str>) -> &'static str {
    let r = reason.unwrap_or_default().to_ascii_lowercase();
    if r.starts_with("expired:") {
        // `mail::delivery::expiry`: its code or link died unsent, or it was
        // too old to send.
        "expired"
    } else if r.contains("not a valid email address") || r.contains("bad address") || r.contains("invalid address") {
        "invalid_recipient"
    } else if r.contains("not verified") {
        "sender_not_verified"
    } else if r.contains("paused") || r.contains("accountsendingpaused") {
        "sending_paused"
    } else if r.starts_with("messagerejected") || r.contains("rejected") {
        "rejected"
    } else if r.contains("unparseable") || r.contains("mail job version") {
        "bad_job"
    } else if r.contains("render") || r.contains("template") {
        "render_failed"
    } else if r.contains("attempts") || r.contains("transient") || r.contains("timed out") {
        "retries_exhausted"
    } else {
        "permanent_failure"
    }
}

/// The events a change means, in the order they happened. Most changes
/// mean none (a claim item, a counter reset, a password rehash).
pub fn audit_events(change: &SourceChange, policy: &AuditPolicy) -> Vec<AuditEvent> {
    let mut out = Events { change, list: Vec::new() };
    let max = policy.code_max_failures;
    let ttl = change.expired_by_ttl;
    match &change.images {
        Images::User(old, new) => match (old, new) {
            (None, Some(n)) => out.push(n.id, T::UserRegistered, Outcome::Success, None, None, &n.meta),
            (Some(o), Some(n)) => {
                // A reset raises the count of resets (two in one second
                // leave `password_reset_at` as it was); the time alone tells
                // one between images written before the count existed.
                let reset = n
                    .password_reset_at
                    .filter(|_| n.password_resets > o.password_resets || n.password_reset_at != o.password_reset_at);
                if !o.verified && n.verified {
                    out.push(n.id, T::EmailVerified, Outcome::Success, None, None, &n.meta);
                }
                if n.locked_until.is_some() && n.locked_until != o.locked_until {
                    // A new lock over an old one, which had run out (both
                    // stores write a lock only on an unlocked account; a
                    // right password refused for the spent code budget
                    // locks again without clearing it first): its end first.
                    // Not by the change's time, which is the stream's,
                    // rounded to the second.
                    if o.locked_until.is_some() {
                        out.lock_ended(n.id);
                    }
                    let spent = n.otp_failures >= policy.account_code_failure_budget;
                    let reason = if spent { "code_budget_spent" } else { "too_many_failures" };
                    out.push(n.id, T::AccountLocked, Outcome::Failure, Some(reason), None, &n.meta);
                    if !spent {
                        // The wrong password that reached the threshold (it
                        // resets the count, so the rule below misses it). After
                        // the lock, so the lock keeps the event id it had
                        // before this was counted.
                        out.push(n.id, T::LoginFailed, Outcome::Failure, Some("wrong_password"), Some(0), &n.meta);
                    }
                } else if let (Some(until), None) = (o.locked_until, n.locked_until) {
                    match reset {
                        // A reset ends a running lock; one long over is
                        // just tidied away.
                        Some(at) if until > at => {
                            out.push(n.id, T::AccountUnlocked, Outcome::Success, Some("password_reset"), None, &n.meta)
                        }
                        Some(_) => {}
                        None => out.lock_ended(n.id),
                    }
                }
                // Only a counted wrong password raises the count (the one
                // that reaches the threshold resets it and is counted with
                // the lock above); below the threshold this is its only trace. After
                // the unlock: a lock that had ended is cleared by the
                // failure that starts the count again.
                if n.failed_logins > o.failed_logins {
                    let left = Some(policy.login_lock_threshold.saturating_sub(n.failed_logins));
                    out.push(n.id, T::LoginFailed, Outcome::Failure, Some("wrong_password"), left, &n.meta);
                }
                // The epoch counts every change and reset, however close
                // together; `sessions_valid_after` (whole seconds) misses a
                // second change within the same second, and is only the
                // sign of a change between images written before the
                // epoch existed (both without one, so both 0).
                let changed = n.password_epoch > o.password_epoch
                    || (n.password_epoch == 0
                        && n.sessions_valid_after.is_some()
                        && n.sessions_valid_after != o.sessions_valid_after);
                if reset.is_some() {
                    out.push(n.id, T::PasswordReset, Outcome::Success, Some("all_sessions_ended"), None, &n.meta);
                } else if n.password_epoch > o.password_epoch && n.password_hash == o.password_hash {
                    // A new epoch without a new hash (a rehash keeps the
                    // epoch; a new password gets a new salt): the user's
                    // "sign out everywhere else".
                    out.push(n.id, T::OtherSessionsEnded, Outcome::Success, None, None, &n.meta);
                } else if changed {
                    out.push(n.id, T::PasswordChanged, Outcome::Success, Some("other_sessions_ended"), None, &n.meta);
                }
                // The address itself (a registration's is the first image's;
                // only a confirmed link changes it).
                if n.email != o.email {
                    out.push(n.id, T::EmailChanged, Outcome::Success, None, None, &n.meta);
                }
            }
            // A verified account is deleted only by its owner, and its
            // removal carries that request (the last write before it).
            (Some(o), None) if o.verified && !ttl => {
                out.push(o.id, T::AccountDeleted, Outcome::Success, Some("by_owner"), None, &o.meta)
            }
            // An account nobody verified is deleted by the TTL when it has
            // been kept long enough, or else by a registration that took a
            // name from it after its hold. The TTL's removal carries no
            // request; a registration's is the new account's (the old
            // image carries the old registration's).
            (Some(o), None) if !o.verified && ttl => out.expired(o.id, T::UnverifiedAccountExpired),
            (Some(o), None) if !o.verified => {
                out.push_subject(
                    o.id.to_string(),
                    T::UnverifiedAccountReplaced,
                    Outcome::Expired,
                    Some("unverified_past_hold"),
                    None,
                    None,
                );
            }
            _ => {}
        },
        Images::Verification(old, new) => match (old, new) {
            (None, Some(n)) => out.push(n.user_id, T::VerificationMailRequested, Outcome::Success, None, None, &n.meta),
            (Some(o), None) if ttl && o.used_at.is_none() => out.expired(o.user_id, T::VerificationExpired),
            _ => {}
        },
        Images::Challenge(old, new) => match (old, new) {
            (None, Some(n)) => out.push(n.user_id, T::LoginCodeIssued, Outcome::Success, None, None, &n.meta),
            (Some(o), Some(n)) => {
                if n.resends > o.resends {
                    // A resend replaces the code; one that had run out
                    // unused would otherwise leave no expiry (the TTL
                    // removal only sees the last code).
                    if o.used_at.is_none() && o.failures < max && o.expires_at <= n.last_sent_at {
                        out.expired(o.user_id, T::CodeExpired);
                    }
                    out.push(n.user_id, T::LoginCodeIssued, Outcome::Success, Some("resend"), None, &n.meta);
                }
                if n.failures > o.failures {
                    let left = Some(max.saturating_sub(n.failures));
                    out.push(n.user_id, T::CodeFailed, Outcome::Failure, Some("wrong_code"), left, &n.meta);
                    if n.failures >= max && o.failures < max {
                        let r = Some("too_many_wrong_codes");
                        out.push(n.user_id, T::ChallengeExhausted, Outcome::Failure, r, Some(0), &n.meta);
                    }
                }
                if o.used_at.is_none() && n.used_at.is_some() {
                    out.push(n.user_id, T::CodeVerified, Outcome::Success, None, None, &n.meta);
                }
            }
            (Some(o), None) if ttl && o.used_at.is_none() && o.failures < max => out.expired(o.user_id, T::CodeExpired),
            _ => {}
        },
        Images::Session(old, new) => match (old, new) {
            (None, Some(n)) => out.push(n.user_id, T::SessionCreated, Outcome::Success, None, None, &n.meta),
            (Some(o), Some(n)) => {
                if n.generation > o.generation {
                    out.push(n.user_id, T::SessionRefreshed, Outcome::Success, None, None, &n.meta);
                } else if n.retries_answered > o.retries_answered {
                    // The last rotation's token given again to a retry of
                    // it within the grace (no rotation).
                    out.push(n.user_id, T::SessionRefreshed, Outcome::Success, Some("retry_grace"), None, &n.meta);
                }
                if o.revoked_at.is_none() && n.revoked_at.is_some() {
                    let reason = n.revoke_reason.as_deref().unwrap_or("revoked");
                    // A logout is the user's own act; anything else is a
                    // defence (refresh-token reuse) or an admin's.
                    let outcome = if reason == "logout" { Outcome::Success } else { Outcome::Failure };
                    out.push(n.user_id, T::SessionRevoked, outcome, Some(reason), None, &n.meta);
                }
            }
            (Some(o), None) if ttl && o.revoked_at.is_none() => out.expired(o.user_id, T::SessionExpired),
            _ => {}
        },
        Images::Otp(old, new) => match (old, new) {
            (None, Some(n)) => out.push_otp(n, T::OtpSent, Outcome::Success, None, None),
            (Some(o), Some(n)) => {
                if n.created_at != o.created_at || n.code_hash != o.code_hash {
                    // A send replaces the address's record: the old code, if
                    // it ran out unused, is not removed by the TTL any more.
                    if o.used_at.is_none() && o.failures < max && o.expires_at <= n.created_at {
                        out.push_subject(
                            otp_subject(&o.address_hash),
                            T::OtpExpired,
                            Outcome::Expired,
                            Some("ttl"),
                            None,
                            None,
                        );
                    }
                    out.push_otp(n, T::OtpSent, Outcome::Success, None, None);
                } else {
                    if n.failures > o.failures {
                        let left = Some(max.saturating_sub(n.failures));
                        out.push_otp(n, T::OtpFailed, Outcome::Failure, Some("wrong_code"), left);
                        let budget = policy.otp_failure_budget;
                        if n.budget_failures >= budget && o.budget_failures < budget {
                            out.push_otp(n, T::OtpExhausted, Outcome::Failure, Some("code_budget_spent"), Some(0));
                        } else if n.failures >= max && o.failures < max {
                            out.push_otp(n, T::OtpExhausted, Outcome::Failure, Some("too_many_wrong_codes"), Some(0));
                        }
                    }
                    if o.used_at.is_none() && n.used_at.is_some() {
                        out.push_otp(n, T::OtpVerified, Outcome::Success, None, None);
                    }
                }
            }
            (Some(o), None) if ttl && o.used_at.is_none() && o.failures < max => {
                out.push_subject(otp_subject(&o.address_hash), T::OtpExpired, Outcome::Expired, Some("ttl"), None, None)
            }
            _ => {}
        },
        Images::Mail(old, new) => {
            if let Some(n) = new {
                let subject = n.subject.clone().or_else(|| old.as_ref().and_then(|o| o.subject.clone()));
                let was = old.as_ref().map(|o| o.state.as_str());
                if let Some(subject) = subject {
                    if n.state == ledger_state::SENT && was != Some(ledger_state::SENT) {
                        out.push_subject(subject, T::MailDelivered, Outcome::Success, Some(&n.kind), None, None);
                    } else if n.state == ledger_state::FAILED && was != Some(ledger_state::FAILED) {
                        let code = mail_failure_code(n.reason.as_deref());
                        out.push_subject(subject, T::MailFailed, Outcome::Failure, Some(code), None, None);
                    }
                }
            }
        }
    }
    out.list
}

struct Events<'a> {
    change: &'a SourceChange,
    list: Vec<AuditEvent>,
}

impl Events<'_> {
    fn push(
        &mut self,
        subject: impl std::fmt::Display,
        event: T,
        outcome: Outcome,
        reason: Option<&str>,
        attempts_left: Option<u32>,
        meta: &RequestMeta,
    ) {
        self.push_subject(subject.to_string(), event, outcome, reason, attempts_left, Some(meta));
    }

    fn push_otp(&mut self, r: &OtpRecord, event: T, outcome: Outcome, reason: Option<&str>, left: Option<u32>) {
        self.push_subject(otp_subject(&r.address_hash), event, outcome, reason, left, Some(&r.meta));
    }

    /// A lifetime ran out: nobody made a request, so no request metadata.
    fn expired(&mut self, subject: impl std::fmt::Display, event: T) {
        self.push_subject(subject.to_string(), event, Outcome::Expired, Some("ttl"), None, None);
    }

    /// A lock ran out: seen at the account's next change, whose request
    /// did not end it (its metadata is not the lock's end's).
    fn lock_ended(&mut self, user: UserId) {
        self.push_subject(user.to_string(), T::AccountUnlocked, Outcome::Expired, Some("lock_ended"), None, None);
    }

    fn push_subject(
        &mut self,
        subject: String,
        event: T,
        outcome: Outcome,
        reason: Option<&str>,
        attempts_left: Option<u32>,
        meta: Option<&RequestMeta>,
    ) {
        let meta = if self.change.expired_by_ttl { None } else { meta };
        self.list.push(AuditEvent {
            event_id: format!("{}#{}", self.change.source_id, self.list.len()),
            subject,
            event,
            at: self.change.at,
            outcome,
            reason: reason.map(str::to_string),
            attempts_left,
            request_id: meta.and_then(|m| m.request_id.clone()),
            ip: meta.and_then(|m| m.ip.clone()),
            user_agent: meta.and_then(|m| m.user_agent.clone()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ChallengeId, Email, SessionId, UserId, Username};
    use crate::rng::OsSecureRng;

    const T0: Timestamp = 1_700_000_000;

    fn meta() -> RequestMeta {
        RequestMeta { request_id: Some("req-1".into()), ip: Some("203.0.113.7".into()), user_agent: Some("ua".into()) }
    }

    fn user() -> User {
        User {
            id: UserId::random(&OsSecureRng),
            username: Username::parse("alice").unwrap(),
            email: Email::parse("alice@example.com").unwrap(),
            password_hash: "$argon2id$v=19$secret".into(),
            verified: false,
            created_at: T0,
            failed_logins: 0,
            locked_until: None,
            otp_failures: 0,
            verification_sent_at: Some(T0),
            sessions_valid_after: None,
            password_reset_at: None,
            password_resets: 0,
            password_epoch: 0,
            email_changes: 0,
            meta: meta(),
        }
    }

    fn challenge(u: &User) -> Challenge {
        Challenge {
            id: ChallengeId::random(&OsSecureRng),
            user_id: u.id,
            code_hash: "c0dehash".into(),
            created_at: T0,
            expires_at: T0 + 300,
            last_sent_at: T0,
            resends: 0,
            failures: 0,
            attempts: 0,
            password_epoch: 0,
            used_at: None,
            meta: meta(),
        }
    }

    fn change(images: Images, ttl: bool) -> SourceChange {
        SourceChange { source_id: "feed:7".into(), at: T0 + 5, expired_by_ttl: ttl, images }
    }

    fn kinds(c: &SourceChange) -> Vec<T> {
        audit_events(c, &AuditPolicy::default()).iter().map(|e| e.event).collect()
    }

    #[test]
    fn registration_and_verification() {
        let u = user();
        let evs = audit_events(&change(Images::User(None, Some(u.clone())), false), &AuditPolicy::default());
        assert_eq!(evs.len(), 1);
        let e = &evs[0];
        assert_eq!((e.event, e.subject.clone(), e.at), (T::UserRegistered, u.id.to_string(), T0 + 5));
        assert_eq!(
            (e.event_id.as_str(), e.ip.as_deref(), e.request_id.as_deref()),
            ("feed:7#0", Some("203.0.113.7"), Some("req-1"))
        );
        let v = User { verified: true, ..u.clone() };
        assert_eq!(kinds(&change(Images::User(Some(u.clone()), Some(v)), false)), [T::EmailVerified]);
        let rehash = User { password_hash: "other".into(), ..u.clone() };
        assert!(kinds(&change(Images::User(Some(u.clone()), Some(rehash)), false)).is_empty(), "a rehash");
        let changed = User { password_hash: "other".into(), sessions_valid_after: Some(T0 + 9), ..u.clone() };
        assert_eq!(kinds(&change(Images::User(Some(u.clone()), Some(changed.clone())), false)), [T::PasswordChanged]);
        let reset = User { password_reset_at: Some(T0 + 20), sessions_valid_after: Some(T0 + 20), ..changed.clone() };
        let evs =
            audit_events(&change(Images::User(Some(changed.clone()), Some(reset)), false), &AuditPolicy::default());
        assert_eq!(
            evs.iter().map(|e| (e.event, e.reason.as_deref())).collect::<Vec<_>>(),
            [(T::PasswordReset, Some("all_sessions_ended"))],
            "a reset, not also a change"
        );
        let locked = User { locked_until: Some(T0 + 100), failed_logins: 0, ..changed.clone() };
        let reset = User { password_reset_at: Some(T0 + 50), locked_until: None, ..locked.clone() };
        assert_eq!(
            audit_events(&change(Images::User(Some(locked), Some(reset.clone())), false), &AuditPolicy::default())
                .iter()
                .map(|e| (e.event, e.outcome, e.reason.as_deref()))
                .collect::<Vec<_>>(),
            [
                (T::AccountUnlocked, Outcome::Success, Some("password_reset")),
                (T::PasswordReset, Outcome::Success, Some("all_sessions_ended"))
            ],
            "a reset during a lock ends it"
        );
        let budget = AuditPolicy::default().account_code_failure_budget;
        for (otp_failures, reason) in [(budget - 1, "too_many_failures"), (budget, "code_budget_spent")] {
            let before = User { otp_failures, ..u.clone() };
            let after = User { locked_until: Some(T0 + 900), ..before.clone() };
            let evs = audit_events(&change(Images::User(Some(before), Some(after)), false), &AuditPolicy::default());
            let got: Vec<_> = evs.iter().map(|e| (e.event, e.reason.as_deref(), e.attempts_left)).collect();
            if reason == "too_many_failures" {
                assert_eq!(
                    got,
                    [(T::AccountLocked, Some(reason), None), (T::LoginFailed, Some("wrong_password"), Some(0))]
                );
            } else {
                // A right password refused for the spent budget locks too.
                assert_eq!(got, [(T::AccountLocked, Some(reason), None)]);
            }
        }
        let lock_over = User { locked_until: Some(T0 + 10), ..changed.clone() };
        assert_eq!(
            kinds(&change(Images::User(Some(lock_over), Some(reset)), false)),
            [T::PasswordReset],
            "a lock long over is not ended again"
        );
        let replaced = audit_events(&change(Images::User(Some(u.clone()), None), false), &AuditPolicy::default());
        assert_eq!(replaced.len(), 1);
        let e = &replaced[0];
        assert_eq!(
            (e.event, e.outcome, e.reason.as_deref()),
            (T::UnverifiedAccountReplaced, Outcome::Expired, Some("unverified_past_hold"))
        );
        assert_eq!((e.subject.as_str(), e.ip.as_deref()), (u.id.to_string().as_str(), None));
        // Kept long enough unverified, the TTL deletes it: no request.
        let expired = audit_events(&change(Images::User(Some(u.clone()), None), true), &AuditPolicy::default());
        let got: Vec<_> = expired
            .iter()
            .map(|e| (e.event, e.outcome, e.reason.as_deref(), e.subject.clone(), e.ip.clone()))
            .collect();
        assert_eq!(got, [(T::UnverifiedAccountExpired, Outcome::Expired, Some("ttl"), u.id.to_string(), None)]);
        // No TTL deletes a verified user (its owner does: `account_deleted`).
        let verified = User { verified: true, ..u };
        assert!(kinds(&change(Images::User(Some(verified.clone()), None), true)).is_empty());
        assert_eq!(kinds(&change(Images::User(Some(verified), None), false)), [T::AccountDeleted]);
    }

    #[test]
    fn every_password_change_is_one_event_even_within_a_second() {
        let u = User { verified: true, ..user() };
        let first = User { password_hash: "p1".into(), sessions_valid_after: Some(T0 + 9), password_epoch: 1, ..u };
        // The second change in the same second: `sessions_valid_after`
        // does not move, the epoch does.
        let second = User { password_hash: "p2".into(), password_epoch: 2, ..first.clone() };
        let evs = audit_events(
            &change(Images::User(Some(first.clone()), Some(second.clone())), false),
            &AuditPolicy::default(),
        );
        assert_eq!(
            evs.iter().map(|e| (e.event, e.reason.as_deref())).collect::<Vec<_>>(),
            [(T::PasswordChanged, Some("other_sessions_ended"))]
        );
        // A reset in that second is a reset only; a change after it, in the
        // same second again, is a change.
        let reset = User { password_reset_at: Some(T0 + 9), password_epoch: 3, password_resets: 1, ..second.clone() };
        assert_eq!(kinds(&change(Images::User(Some(second.clone()), Some(reset.clone())), false)), [T::PasswordReset]);
        // A second reset in that second (by a link asked for after the
        // first, which is good in its second too): its count tells it.
        let again = User { password_hash: "p3".into(), password_epoch: 4, password_resets: 2, ..reset.clone() };
        let evs = audit_events(&change(Images::User(Some(reset.clone()), Some(again)), false), &AuditPolicy::default());
        assert_eq!(
            evs.iter().map(|e| (e.event, e.reason.as_deref())).collect::<Vec<_>>(),
            [(T::PasswordReset, Some("all_sessions_ended"))]
        );
        let after = User { password_hash: "p4".into(), password_epoch: 4, ..reset.clone() };
        assert_eq!(kinds(&change(Images::User(Some(reset), Some(after.clone())), false)), [T::PasswordChanged]);
        // A rehash keeps the epoch: nothing.
        let rehash = User { password_hash: "p4'".into(), ..after.clone() };
        assert!(kinds(&change(Images::User(Some(after), Some(rehash)), false)).is_empty());
        // Images written before the epoch existed (both 0): the session
        // cut-off still tells a change.
        let legacy = User { password_epoch: 0, sessions_valid_after: Some(T0), ..first.clone() };
        let legacy_changed = User { sessions_valid_after: Some(T0 + 9), ..legacy.clone() };
        assert_eq!(
            kinds(&change(Images::User(Some(legacy.clone()), Some(legacy_changed)), false)),
            [T::PasswordChanged]
        );
        // The first change after the epoch came in: 0 -> 1 counts once.
        let upgraded = User {
            password_hash: "p5".into(),
            password_epoch: 1,
            sessions_valid_after: Some(T0 + 9),
            ..legacy.clone()
        };
        assert_eq!(kinds(&change(Images::User(Some(legacy), Some(upgraded)), false)), [T::PasswordChanged]);
    }

    /// A new epoch on the same hash is the user's "sign out everywhere
    /// else", each one an event, within a second too; the next change of
    /// the password is a change again.
    #[test]
    fn a_new_epoch_on_the_same_password_ends_the_other_sessions() {
        let u = User { verified: true, password_hash: "p1".into(), password_epoch: 1, ..user() };
        let ended = User { password_epoch: 2, sessions_valid_after: Some(T0 + 9), ..u.clone() };
        let evs = audit_events(&change(Images::User(Some(u), Some(ended.clone())), false), &AuditPolicy::default());
        assert_eq!(
            evs.iter().map(|e| (e.event, e.outcome, e.reason.as_deref())).collect::<Vec<_>>(),
            [(T::OtherSessionsEnded, Outcome::Success, None)]
        );
        assert_eq!(T::OtherSessionsEnded.as_str(), "other_sessions_ended");
        let again = User { password_epoch: 3, ..ended.clone() };
        assert_eq!(kinds(&change(Images::User(Some(ended), Some(again.clone())), false)), [T::OtherSessionsEnded]);
        let changed = User { password_hash: "p2".into(), password_epoch: 4, ..again.clone() };
        assert_eq!(kinds(&change(Images::User(Some(again), Some(changed)), false)), [T::PasswordChanged]);
    }

    #[test]
    fn a_wrong_password_below_the_threshold_is_a_failed_login_without_secrets() {
        let u = User { verified: true, ..user() };
        let policy = AuditPolicy::default();
        let once = User { failed_logins: 1, ..u.clone() };
        let evs = audit_events(&change(Images::User(Some(u.clone()), Some(once.clone())), false), &policy);
        assert_eq!(evs.len(), 1);
        let e = &evs[0];
        assert_eq!(
            (e.event, e.outcome, e.reason.as_deref(), e.attempts_left),
            (T::LoginFailed, Outcome::Failure, Some("wrong_password"), Some(policy.login_lock_threshold - 1))
        );
        assert_eq!(
            (e.subject.clone(), e.ip.as_deref(), e.request_id.as_deref()),
            (u.id.to_string(), Some("203.0.113.7"), Some("req-1"))
        );
        let json = serde_json::to_string(&evs).unwrap();
        assert!(!json.contains("argon2") && !json.contains("alice"), "{json}");
        // The one that reaches the threshold resets the count and locks: the
        // lock, then that failure (none left).
        let last = User { failed_logins: policy.login_lock_threshold - 1, ..u.clone() };
        let locked = User { failed_logins: 0, locked_until: Some(T0 + 900), ..u.clone() };
        let evs = audit_events(&change(Images::User(Some(last), Some(locked)), false), &policy);
        assert_eq!(
            evs.iter().map(|e| (e.event, e.event_id.as_str(), e.attempts_left)).collect::<Vec<_>>(),
            [(T::AccountLocked, "feed:7#0", None), (T::LoginFailed, "feed:7#1", Some(0))]
        );
        // The first wrong password after a lock ran out: the lock's end
        // (which that request did not make: no request of its own), then
        // the failure.
        let lock_over = User { locked_until: Some(T0 - 1), ..u.clone() };
        let evs = audit_events(&change(Images::User(Some(lock_over.clone()), Some(once.clone())), false), &policy);
        assert_eq!(
            evs.iter().map(|e| (e.event, e.outcome, e.reason.as_deref(), e.ip.as_deref())).collect::<Vec<_>>(),
            [
                (T::AccountUnlocked, Outcome::Expired, Some("lock_ended"), None),
                (T::LoginFailed, Outcome::Failure, Some("wrong_password"), Some("203.0.113.7"))
            ]
        );
        assert_eq!(evs[0].request_id, None);
        // A right password refused for the spent code budget locks again
        // over a lock that had run out, without clearing it first: that
        // lock's end, then the new lock, whatever the stream's clock says
        // (its second may be one before the old lock's end).
        let spent = policy.account_code_failure_budget;
        let relocked = User { locked_until: Some(T0 + 900), otp_failures: spent, ..lock_over.clone() };
        for ended in [T0 - 1, T0 + 6] {
            let ran_out = User { otp_failures: spent, locked_until: Some(ended), ..lock_over.clone() };
            assert_eq!(
                kinds(&change(Images::User(Some(ran_out), Some(relocked.clone())), false)),
                [T::AccountUnlocked, T::AccountLocked]
            );
        }
        // A login that passes resets the count: no failure.
        assert!(kinds(&change(Images::User(Some(once), Some(u.clone())), false)).is_empty());
        // The cooldown of a verification mail that was not queued, given
        // back: no event.
        let given_back = User { verification_sent_at: Some(T0 - 60), ..u.clone() };
        assert!(kinds(&change(Images::User(Some(u), Some(given_back)), false)).is_empty());
    }

    #[test]
    fn a_code_replaced_after_it_ran_out_unused_is_an_expiry_first() {
        let u = user();
        let c = challenge(&u);
        let resend = |old: &Challenge, at: Timestamp| Challenge {
            code_hash: "new".into(),
            expires_at: at + 300,
            last_sent_at: at,
            resends: old.resends + 1,
            ..old.clone()
        };
        let late = change(Images::Challenge(Some(c.clone()), Some(resend(&c, c.expires_at))), false);
        let evs = audit_events(&late, &AuditPolicy::default());
        assert_eq!(
            evs.iter().map(|e| (e.event, e.outcome, e.reason.as_deref())).collect::<Vec<_>>(),
            [(T::CodeExpired, Outcome::Expired, Some("ttl")), (T::LoginCodeIssued, Outcome::Success, Some("resend"))]
        );
        assert_eq!(
            (evs[0].ip.as_deref(), evs[1].ip.as_deref()),
            (None, Some("203.0.113.7")),
            "the expiry was no request"
        );
        // A resend while the code was live: no expiry.
        let early = change(Images::Challenge(Some(c.clone()), Some(resend(&c, c.expires_at - 1))), false);
        assert_eq!(kinds(&early), [T::LoginCodeIssued]);
        // A resend whose mail was not queued, given back: no event (the
        // code stays; the next resend is the next issue).
        let resent = resend(&c, c.expires_at - 1);
        let given_back = Challenge { last_sent_at: c.last_sent_at, resends: c.resends, ..resent.clone() };
        assert!(kinds(&change(Images::Challenge(Some(resent), Some(given_back)), false)).is_empty());

        let o = OtpRecord {
            address_hash: "addr".into(),
            code_hash: "x".into(),
            created_at: T0,
            expires_at: T0 + 600,
            last_sent_at: T0,
            failures: 1,
            attempts: 1,
            budget_failures: 1,
            used_at: None,
            meta: meta(),
        };
        let send = |old: &OtpRecord, at: Timestamp| OtpRecord {
            code_hash: "y".into(),
            created_at: at,
            expires_at: at + 600,
            last_sent_at: at,
            failures: 0,
            attempts: 0,
            ..old.clone()
        };
        let evs = audit_events(
            &change(Images::Otp(Some(o.clone()), Some(send(&o, T0 + 600))), false),
            &AuditPolicy::default(),
        );
        assert_eq!(
            evs.iter().map(|e| (e.event, e.subject.as_str(), e.outcome)).collect::<Vec<_>>(),
            [(T::OtpExpired, "otp:addr", Outcome::Expired), (T::OtpSent, "otp:addr", Outcome::Success)]
        );
        // Replaced while live, or after it was used or spent: no expiry.
        assert_eq!(kinds(&change(Images::Otp(Some(o.clone()), Some(send(&o, T0 + 599))), false)), [T::OtpSent]);
        let used = OtpRecord { used_at: Some(T0 + 1), ..o.clone() };
        assert_eq!(kinds(&change(Images::Otp(Some(used.clone()), Some(send(&used, T0 + 700))), false)), [T::OtpSent]);
        let spent = OtpRecord { failures: AuditPolicy::default().code_max_failures, ..o.clone() };
        assert_eq!(kinds(&change(Images::Otp(Some(spent.clone()), Some(send(&spent, T0 + 700))), false)), [T::OtpSent]);
    }

    #[test]
    fn wrong_codes_count_down_then_exhaust() {
        let u = user();
        let c = challenge(&u);
        let f5 = Challenge { failures: 5, ..c.clone() };
        let f6 = Challenge { failures: 6, ..c.clone() };
        let evs = audit_events(
            &change(Images::Challenge(Some(c.clone()), Some(Challenge { failures: 1, ..c.clone() })), false),
            &AuditPolicy::default(),
        );
        assert_eq!(
            (evs[0].event, evs[0].attempts_left, evs[0].reason.as_deref()),
            (T::CodeFailed, Some(5), Some("wrong_code"))
        );
        assert_eq!(
            kinds(&change(Images::Challenge(Some(f5), Some(f6)), false)),
            [T::CodeFailed, T::ChallengeExhausted]
        );
        let used = Challenge { used_at: Some(T0 + 5), ..c.clone() };
        assert_eq!(kinds(&change(Images::Challenge(Some(c.clone()), Some(used)), false)), [T::CodeVerified]);
        // Taking an attempt before a comparison is not an outcome.
        let attempt = Challenge { attempts: 1, ..c.clone() };
        assert!(kinds(&change(Images::Challenge(Some(c), Some(attempt)), false)).is_empty());
    }

    #[test]
    fn a_ttl_removal_is_an_expiry_without_request_data_and_a_plain_removal_is_nothing() {
        let u = user();
        let c = challenge(&u);
        let evs = audit_events(&change(Images::Challenge(Some(c.clone()), None), true), &AuditPolicy::default());
        assert_eq!(evs.len(), 1);
        assert_eq!(
            (evs[0].event, evs[0].outcome, evs[0].reason.as_deref()),
            (T::CodeExpired, Outcome::Expired, Some("ttl"))
        );
        assert_eq!((evs[0].ip.as_deref(), evs[0].request_id.as_deref()), (None, None));
        assert!(kinds(&change(Images::Challenge(Some(c), None), false)).is_empty());
    }

    #[test]
    fn a_verified_account_removed_is_deleted_by_its_owner_with_the_request() {
        let u = User { verified: true, meta: meta(), ..user() };
        let evs = audit_events(&change(Images::User(Some(u.clone()), None), false), &AuditPolicy::default());
        assert_eq!(evs.len(), 1);
        let e = &evs[0];
        assert_eq!((e.event, e.outcome, e.reason.as_deref()), (T::AccountDeleted, Outcome::Success, Some("by_owner")));
        assert_eq!((e.subject.as_str(), e.ip.as_deref()), (u.id.to_string().as_str(), Some("203.0.113.7")));
        assert_eq!(e.event.as_str(), "account_deleted");
    }

    #[test]
    fn a_new_address_is_one_email_changed_with_the_request() {
        let u = User { verified: true, ..user() };
        let request = RequestMeta { ip: Some("198.51.100.9".into()), ..meta() };
        let email = Email::parse("new@example.org").unwrap();
        let moved = User { email, email_changes: 1, meta: request, ..u.clone() };
        let evs = audit_events(&change(Images::User(Some(u.clone()), Some(moved)), false), &AuditPolicy::default());
        assert_eq!(evs.len(), 1, "{evs:?}");
        let e = &evs[0];
        assert_eq!((e.event, e.outcome, e.reason.as_deref()), (T::EmailChanged, Outcome::Success, None));
        assert_eq!((e.subject.as_str(), e.ip.as_deref()), (u.id.to_string().as_str(), Some("198.51.100.9")));
        assert_eq!(e.event.as_str(), "email_changed");
        // The address is no field of the event: the trail keeps none.
        assert!(!format!("{e:?}").contains("example.org"), "{e:?}");
    }

    #[test]
    fn sessions_and_otps() {
        let u = user();
        let s = Session {
            id: SessionId::random(&OsSecureRng),
            user_id: u.id,
            refresh_hash: "h".into(),
            created_at: T0,
            refreshed_at: T0,
            expires_at: T0 + 100,
            generation: 0,
            revoked_at: None,
            revoke_reason: None,
            valid_from: None,
            password_epoch: Some(0),
            retry_seal: None,
            retries_answered: 0,
            meta: meta(),
        };
        let s1 = Session { generation: 1, refresh_hash: "h2".into(), ..s.clone() };
        let s2 = Session { revoked_at: Some(T0 + 9), revoke_reason: Some("logout".into()), ..s1.clone() };
        assert_eq!(kinds(&change(Images::Session(None, Some(s.clone())), false)), [T::SessionCreated]);
        assert_eq!(kinds(&change(Images::Session(Some(s), Some(s1.clone())), false)), [T::SessionRefreshed]);
        // A retry within the grace, answered with the current token: counted,
        // with its request, and not a rotation.
        let m = RequestMeta { request_id: Some("req-retry".into()), ..meta() };
        let retried = Session { retries_answered: 1, meta: m, ..s1.clone() };
        let evs =
            audit_events(&change(Images::Session(Some(s1.clone()), Some(retried.clone())), false), &Default::default());
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert_eq!((evs[0].event, evs[0].reason.as_deref()), (T::SessionRefreshed, Some("retry_grace")));
        assert_eq!(evs[0].request_id.as_deref(), Some("req-retry"), "the retry's own request");
        let evs = audit_events(&change(Images::Session(Some(s1), Some(s2)), false), &AuditPolicy::default());
        assert_eq!((evs[0].event, evs[0].reason.as_deref()), (T::SessionRevoked, Some("logout")));

        let o = OtpRecord {
            address_hash: "addr".into(),
            code_hash: "x".into(),
            created_at: T0,
            expires_at: T0 + 600,
            last_sent_at: T0,
            failures: 0,
            attempts: 0,
            budget_failures: 0,
            used_at: None,
            meta: meta(),
        };
        let evs = audit_events(&change(Images::Otp(None, Some(o.clone())), false), &AuditPolicy::default());
        assert_eq!((evs[0].event, evs[0].subject.as_str()), (T::OtpSent, "otp:addr"));
        let failed = OtpRecord { failures: 1, ..o.clone() };
        assert_eq!(kinds(&change(Images::Otp(Some(o.clone()), Some(failed)), false)), [T::OtpFailed]);
        let attempt = OtpRecord { attempts: 1, ..o.clone() };
        assert!(kinds(&change(Images::Otp(Some(o.clone()), Some(attempt)), false)).is_empty());
        // The cooldown of a send whose mail was not queued, given back.
        let given_back = OtpRecord { last_sent_at: T0 - 60, ..o.clone() };
        assert!(kinds(&change(Images::Otp(Some(o.clone()), Some(given_back)), false)).is_empty());
        assert_eq!(kinds(&change(Images::Otp(Some(o.clone()), None), true)), [T::OtpExpired]);

        // The wrong code that spends the address's budget across codes says
        // so, once, also when it is the code's last attempt too.
        let policy = AuditPolicy::default();
        let reasons = |old: &OtpRecord, new: &OtpRecord| {
            audit_events(&change(Images::Otp(Some(old.clone()), Some(new.clone())), false), &policy)
                .into_iter()
                .map(|e| (e.event, e.reason))
                .collect::<Vec<_>>()
        };
        let spent = |failures: u32| {
            let before = OtpRecord { failures, budget_failures: policy.otp_failure_budget - 1, ..o.clone() };
            let after = OtpRecord { failures: failures + 1, budget_failures: policy.otp_failure_budget, ..o.clone() };
            reasons(&before, &after)
        };
        let failed = (T::OtpFailed, Some("wrong_code".to_string()));
        let budget_spent = (T::OtpExhausted, Some("code_budget_spent".to_string()));
        assert_eq!(spent(1), [failed.clone(), budget_spent.clone()]);
        assert_eq!(spent(policy.code_max_failures - 1), [failed.clone(), budget_spent]);
        let last = OtpRecord { failures: policy.code_max_failures - 1, budget_failures: 5, ..o.clone() };
        let capped = OtpRecord { failures: policy.code_max_failures, budget_failures: 6, ..o };
        assert_eq!(reasons(&last, &capped), [failed, (T::OtpExhausted, Some("too_many_wrong_codes".to_string()))]);
    }

    fn ledger(state: &str, subject: Option<&str>) -> LedgerEntry {
        LedgerEntry {
            id: "job-1".into(),
            kind: "login_code".into(),
            to: "alice@example.com".into(),
            state: state.into(),
            attempts: 1,
            reason: None,
            provider_id: None,
            lease_until: Some(T0 + 300),
            updated_at: T0,
            subject: subject.map(str::to_string),
        }
    }

    #[test]
    fn mail_outcomes_reach_the_subject_without_the_address() {
        let sending = ledger(ledger_state::SENDING, Some("user-1"));
        let sent = LedgerEntry {
            provider_id: Some("m1".into()),
            lease_until: None,
            ..ledger(ledger_state::SENT, Some("user-1"))
        };
        let evs = audit_events(
            &change(Images::Mail(Some(sending.clone()), Some(sent.clone())), false),
            &AuditPolicy::default(),
        );
        assert_eq!(evs.len(), 1);
        assert_eq!(
            (evs[0].event, evs[0].subject.as_str(), evs[0].outcome, evs[0].reason.as_deref()),
            (T::MailDelivered, "user-1", Outcome::Success, Some("login_code"))
        );
        // Sent stays sent: a later touch is no second delivery.
        assert!(kinds(&change(Images::Mail(Some(sent.clone()), Some(sent)), false)).is_empty());
        // The claim itself is nothing.
        assert!(kinds(&change(Images::Mail(None, Some(sending.clone())), false)).is_empty());

        let failed = LedgerEntry {
            reason: Some("MessageRejected: Email address is not verified: alice@example.com".into()),
            ..ledger(ledger_state::FAILED, Some("user-1"))
        };
        let evs = audit_events(
            &change(Images::Mail(Some(sending.clone()), Some(failed.clone())), false),
            &AuditPolicy::default(),
        );
        assert_eq!(evs.len(), 1);
        assert_eq!(
            (evs[0].event, evs[0].outcome, evs[0].reason.as_deref()),
            (T::MailFailed, Outcome::Failure, Some("sender_not_verified"))
        );
        let json = serde_json::to_string(&evs).unwrap();
        assert!(!json.contains("alice@example.com") && !json.contains("MessageRejected"), "{json}");
        // A job parked before any claim is a failure too.
        let bad = LedgerEntry {
            reason: Some("recipient is not a valid email address".into()),
            ..ledger(ledger_state::FAILED, Some("u"))
        };
        let evs = audit_events(&change(Images::Mail(None, Some(bad)), false), &AuditPolicy::default());
        assert_eq!((evs[0].event, evs[0].reason.as_deref()), (T::MailFailed, Some("invalid_recipient")));
        // A transient give-back is not a failure.
        assert!(
            kinds(&change(Images::Mail(Some(sending), Some(ledger(ledger_state::RETRY, Some("u")))), false)).is_empty()
        );

        // No subject: no event.
        let anon = ledger(ledger_state::SENDING, None);
        for end in [ledger_state::SENT, ledger_state::FAILED] {
            let c = change(Images::Mail(Some(anon.clone()), Some(ledger(end, None))), false);
            assert!(kinds(&c).is_empty(), "{end}");
        }
    }

    #[test]
    fn nothing_secret_reaches_an_event() {
        let u = user();
        let c = challenge(&u);
        let evs = audit_events(
            &change(Images::Challenge(Some(c.clone()), Some(Challenge { failures: 1, ..c })), false),
            &AuditPolicy::default(),
        );
        let json = serde_json::to_string(&evs).unwrap();
        assert!(!json.contains("c0dehash") && !json.contains("argon2"), "{json}");
    }
}
