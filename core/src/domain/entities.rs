//! The records the stores keep. Hashes are hex strings; timestamps are Unix
//! seconds (UTC). Nothing here holds a plaintext code, token or password.

use super::otp_code::{CodeClosed, code_closed};
use super::{ChallengeId, Email, SessionId, UserId, Username};
use crate::clock::Timestamp;
use serde::{Deserialize, Serialize};

/// Where a request came from, stored on the items it writes so the audit
/// trail (which reads the change stream) can say who did what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub username: Username,
    pub email: Email,
    /// argon2id PHC string.
    pub password_hash: String,
    pub verified: bool,
    pub created_at: Timestamp,
    /// Consecutive wrong passwords since the last success or lock.
    pub failed_logins: u32,
    /// Logins are refused until this time.
    pub locked_until: Option<Timestamp>,
    /// Wrong login codes across all challenges since the last success
    /// (NIST's account-wide budget).
    pub otp_failures: u32,
    /// When the last verification mail was queued (resend cooldown).
    pub verification_sent_at: Option<Timestamp>,
    /// Set by a password change: sessions valid from before this time are
    /// dead (all but the one that made the change). Absent until then.
    #[serde(default)]
    pub sessions_valid_after: Option<Timestamp>,
    /// Set by a password reset through a mailed link (which also sets
    /// `sessions_valid_after`): tells a reset from a change in the audit
    /// trail. Absent until the first reset.
    #[serde(default)]
    pub password_reset_at: Option<Timestamp>,
    /// Counts the resets through a mailed link. A link carries the count it
    /// was made at and works only while that is still the count, so a reset
    /// ends every link made before it, and a link made after it works even
    /// within the reset's second. Absent (0) until the first reset.
    #[serde(default)]
    pub password_resets: u32,
    /// Counts the password's changes and resets (a rehash is the same
    /// password and does not count). A login in progress carries the value
    /// its password step saw, and its code counts only while it is current.
    #[serde(default)]
    pub password_epoch: u64,
    /// Counts the changes of the account's address through a mailed link.
    /// A link carries the count it was made at and works only while that
    /// is still the count: a change ends every link made before it. Absent
    /// (0) until the first change.
    #[serde(default)]
    pub email_changes: u32,
    pub meta: RequestMeta,
}

/// What a password reset link vouches for: the second it was made and the
/// account's `password_resets` then. It works only while that is still the
/// count (a reset ends every link made before it, within its own second
/// too) and only if no reset was stamped after it was made (a reset by code
/// from before the count existed, while old and new code run side by side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetLink {
    pub issued_at: Timestamp,
    pub resets: u32,
    /// The account's `email_changes` when the link was made: it was mailed
    /// to the address the account had then, and dies when the account moves
    /// (the mailbox it left may be why it moved).
    pub email_changes: u32,
}

impl ResetLink {
    /// Whether `user` is as it was when this link was made: no reset since,
    /// and still at the address it was mailed to.
    pub fn current_for(&self, user: &User) -> bool {
        user.password_resets == self.resets
            && user.password_reset_at.is_none_or(|at| at <= self.issued_at)
            && user.email_changes == self.email_changes
    }
}

impl User {
    /// How long an account nobody verifies is kept: then it is deleted
    /// with its username and email (DynamoDB's TTL, the embedded sweep),
    /// and so is a username hold made at the same time. Well past the
    /// hold on its names (`Policy::unverified_hold_secs`, 7 days) and its
    /// first link (24 hours): until then a resent link still verifies it.
    pub const UNVERIFIED_RETENTION_SECS: i64 = 30 * 86_400;

    /// When an account nobody verified, made at `created_at`, is gone: its
    /// retention and the day of grace both stores' expiry gives it
    /// (DynamoDB's `ttl`, the embedded sweep).
    pub fn unverified_gone_at(created_at: Timestamp) -> Timestamp {
        created_at.saturating_add(Self::UNVERIFIED_RETENTION_SECS).saturating_add(crate::tables::TTL_GRACE_SECS)
    }

    /// Whether this account, unverified, is gone at `now`
    /// ([`User::unverified_gone_at`]), whenever its store gets to deleting
    /// it. Such an account is no longer sent a link or verified.
    pub fn retention_over(&self, now: Timestamp) -> bool {
        !self.verified && Self::unverified_gone_at(self.created_at) <= now
    }

    pub fn is_locked(&self, now: Timestamp) -> bool {
        self.locked_until.is_some_and(|t| t > now)
    }

    /// Whether `session` was ended by a password change or reset of this
    /// user: by count, when the session carries the `password_epoch` it
    /// began at (every session made since that field exists) — a change or
    /// reset since ends it, and the session that made a change carries the
    /// new epoch. A session from before carries none and keeps the earlier
    /// rule, by time: the session that made a change has `valid_from` = its
    /// time; any other session created in that second or before it is
    /// ended; when the last change was a reset, a session that made a
    /// change in the reset's second ends too.
    pub fn ended_by_password_change(&self, session: &Session) -> bool {
        if let Some(epoch) = session.password_epoch {
            return epoch < self.password_epoch;
        }
        match (self.sessions_valid_after, session.valid_from) {
            (None, _) => false,
            (Some(t), Some(from)) => from < t || (from == t && self.password_reset_at == Some(t)),
            (Some(t), None) => session.created_at <= t,
        }
    }
}

/// An email-verification token, stored by the SHA-256 of the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRecord {
    pub token_hash: String,
    pub user_id: UserId,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
    pub meta: RequestMeta,
}

/// A login waiting for its emailed code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub id: ChallengeId,
    pub user_id: UserId,
    /// HMAC-SHA256(code key, challenge id || code), hex.
    pub code_hash: String,
    pub created_at: Timestamp,
    /// Expiry of the current code.
    pub expires_at: Timestamp,
    pub last_sent_at: Timestamp,
    pub resends: u32,
    /// Wrong codes.
    pub failures: u32,
    /// Codes compared, right or wrong: each comparison first takes one of
    /// the `code_max_failures` attempts in a conditional write, so no number
    /// of concurrent guesses gets past the cap. A resend keeps it. Absent in
    /// records written before it existed (read as 0).
    #[serde(default)]
    pub attempts: u32,
    /// The user's `password_epoch` when the password step checked the
    /// password: a change or reset since then ends this login.
    #[serde(default)]
    pub password_epoch: u64,
    pub used_at: Option<Timestamp>,
    pub meta: RequestMeta,
}

impl Challenge {
    /// How long after the password step its code may still be resent: past
    /// this only a new login helps, however the resends were spaced.
    pub const MAX_AGE_SECS: i64 = 3600;

    /// Why its code can no longer be tried at `now` with `max` attempts, if
    /// it cannot.
    pub fn closed(&self, now: Timestamp, max: u32) -> Option<CodeClosed> {
        code_closed(self.used_at.is_some(), self.failures, self.attempts, self.expires_at, now, max)
    }
}

impl OtpRecord {
    /// How long the address's wrong codes are remembered after the last
    /// code it was sent expired: a budget spent within this window keeps
    /// new codes from being issued until it ends. No longer than the grace
    /// a store keeps an expired record for.
    pub const BUDGET_WINDOW_SECS: i64 = 24 * 3600;

    /// Why the code can no longer be tried at `now` with `max` attempts, if
    /// it cannot.
    pub fn closed(&self, now: Timestamp, max: u32) -> Option<CodeClosed> {
        code_closed(self.used_at.is_some(), self.failures, self.attempts, self.expires_at, now, max)
    }

    /// The wrong codes a code sent at `now` inherits from this one: its
    /// `budget_failures` while the window after its expiry lasts, else 0.
    pub fn budget_carried(&self, now: Timestamp) -> u32 {
        if now < self.budget_window_ends() { self.budget_failures } else { 0 }
    }

    /// When the wrong codes counted on this record stop counting toward
    /// the next code's budget.
    pub fn budget_window_ends(&self) -> Timestamp {
        self.expires_at + Self::BUDGET_WINDOW_SECS
    }

    /// The seconds until the address may try or be sent a code again, if
    /// its `budget` of wrong codes is spent at `now`.
    pub fn budget_wait(&self, now: Timestamp, budget: u32) -> Option<u64> {
        (self.budget_carried(now) >= budget).then(|| (self.budget_window_ends() - now).max(1) as u64)
    }
}

/// A signed-in session: one family of rotating refresh tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    /// SHA-256 of the current refresh secret, hex.
    pub refresh_hash: String,
    pub created_at: Timestamp,
    pub refreshed_at: Timestamp,
    pub expires_at: Timestamp,
    pub generation: u32,
    pub revoked_at: Option<Timestamp>,
    pub revoke_reason: Option<String>,
    /// When the session that changed the password did so, for sessions
    /// without `password_epoch` (made before it existed): it survives the
    /// change; else absent and `created_at` counts. No longer written.
    #[serde(default)]
    pub valid_from: Option<Timestamp>,
    /// The user's `password_epoch` this session is valid at: the one its
    /// login's password step saw, or the one a password change it made
    /// set. A change or reset since ends it. Absent in sessions made before
    /// it existed (the time rule of `valid_from` applies to them).
    #[serde(default)]
    pub password_epoch: Option<u64>,
    /// The current refresh secret's random part (16 bytes) sealed under the
    /// secret it replaced (hex; `Auth::refresh`): that one presented again
    /// within `Policy::refresh_retry_grace_secs` of the rotation (a client
    /// retrying after a lost answer) gets the current secret back instead
    /// of revoking the session. Absent before the first rotation, and in
    /// sessions rotated before it existed.
    #[serde(default)]
    pub retry_seal: Option<String>,
    /// How many times a retry within the grace was answered with the
    /// current refresh secret (`Auth::refresh`): each answer is counted,
    /// with its request in `meta`, so the audit trail has it. 0 in sessions
    /// made before it existed.
    #[serde(default)]
    pub retries_answered: u32,
    pub meta: RequestMeta,
}

impl Session {
    /// Not revoked and not over at `now` (its `expires_at`); a password
    /// change or reset may still have ended it
    /// (`User::ended_by_password_change`).
    pub fn is_open_at(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// A standalone one-time code, keyed by a keyed hash of the address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtpRecord {
    pub address_hash: String,
    pub code_hash: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub last_sent_at: Timestamp,
    /// Wrong codes.
    pub failures: u32,
    /// Codes compared, right or wrong (as `Challenge::attempts`).
    #[serde(default)]
    pub attempts: u32,
    /// Wrong codes for this address across its codes since its last right
    /// one: the address's failure budget (NIST 3.1.3.2). A new code carries
    /// it while the code before it expired less than
    /// `BUDGET_WINDOW_SECS` ago; a right code sets it to 0. Absent in
    /// records written before it existed (read as 0).
    #[serde(default)]
    pub budget_failures: u32,
    pub used_at: Option<Timestamp>,
    pub meta: RequestMeta,
}
