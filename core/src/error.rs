//! The one enum of domain outcomes the flows return, and the storage error
//! the ports return. The API maps each variant to a status and a stable code.

/// What a flow can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {reason}")]
    Validation { field: &'static str, reason: String },
    #[error("this username is already taken")]
    UsernameTaken,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("the verification link is not valid")]
    VerificationInvalid,
    #[error("the verification link has expired")]
    VerificationExpired,
    #[error("the verification link has already been used")]
    VerificationUsed,
    /// A password reset link that is forged, expired, already used, or
    /// made before the password last changed: one answer for all.
    #[error("the password reset link is not valid: it may have expired or been used already")]
    ResetLinkInvalid,
    /// An address change link that is forged, expired, already used, or
    /// made before the account's address or password last changed: one
    /// answer for all.
    #[error("the address change link is not valid: it may have expired or been used already")]
    EmailChangeLinkInvalid,
    /// The address an account was to move to got an account of its own
    /// after the link was mailed.
    #[error("this address belongs to another account now")]
    EmailTaken,
    #[error("unknown or finished login challenge")]
    ChallengeNotFound,
    /// A login's new codes are spent; its last code still works while it
    /// lives. Answered as `ChallengeNotFound` by the API (a new login is the
    /// only way to more codes); the pages keep the code form.
    #[error("no more new codes for this login challenge")]
    ResendsSpent,
    #[error("wrong code")]
    OtpInvalid { attempts_left: u32 },
    #[error("the code has expired")]
    OtpExpired,
    #[error("too many wrong codes")]
    OtpExhausted,
    #[error("the code has already been used")]
    OtpUsed,
    /// A session to end that is no live session of the caller's account.
    #[error("no such session: it may have ended already")]
    SessionNotFound,
    #[error("too many requests")]
    RateLimited { retry_after: u64 },
    #[error("missing or invalid access token")]
    Unauthorized,
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// The client hung up and work done only for its answer was skipped (a
    /// queued password hash): nobody reads this, and it is no fault.
    #[error("the client is gone")]
    ClientGone,
    #[error("a dependency is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    pub fn validation(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Validation { field, reason: reason.into() }
    }
}

/// What a storage or queue adapter can fail with. Adapters translate SDK and
/// SQLite errors into these meanings; they never classify by message text.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A condition the write depended on did not hold (a uniqueness claim, a
    /// version check, a cap). Nothing was written.
    #[error("conditional write failed: {0}")]
    Conflict(Conflict),
    /// Throttling, timeouts, 5xx: worth retrying later.
    #[error("store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A bug or corrupt data.
    #[error("store error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Which condition failed, where the caller needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    UsernameTaken,
    EmailTaken,
    /// The item changed since it was read, or a guard (cap, cooldown, single
    /// use) did not hold.
    Stale,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conflict::UsernameTaken => "username taken",
            Conflict::EmailTaken => "email taken",
            Conflict::Stale => "stale",
        })
    }
}

impl StoreError {
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::Internal(e.into())
    }
    pub fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::Unavailable(e.into())
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(s) => Error::Unavailable(s),
            StoreError::Internal(s) => Error::Internal(s),
            StoreError::Conflict(c) => Error::Internal(format!("unhandled conflict: {c}").into()),
        }
    }
}
