//! Newtypes and entities. Values that come from users are validated and
//! normalised on construction, so a `Username` or an `Email` in hand is
//! always in canonical form.

mod email;
mod entities;
mod ids;
mod otp_code;
mod password;
mod secret;
mod username;

pub use email::{Email, mask_local_part};
pub use entities::{Challenge, OtpRecord, RequestMeta, ResetLink, Session, User, VerificationRecord};
pub use ids::{ChallengeId, SessionId, UserId};
pub use otp_code::{CodeClosed, OtpCode};
pub use password::{Password, PasswordPolicy, nfkc};
pub use secret::Secret;
pub use username::Username;

/// A login identifier: a username or an email address, told apart by `@`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginIdentifier {
    Username(Username),
    Email(Email),
}

impl LoginIdentifier {
    pub fn parse(raw: &str) -> Result<Self, crate::Error> {
        if raw.contains('@') {
            Email::parse(raw)
                .map(LoginIdentifier::Email)
                .map_err(|_| crate::Error::validation("identifier", "not a valid username or email address"))
        } else {
            Username::parse(raw)
                .map(LoginIdentifier::Username)
                .map_err(|_| crate::Error::validation("identifier", "not a valid username or email address"))
        }
    }

    /// The canonical form, used as a rate-limit key.
    pub fn as_key(&self) -> &str {
        match self {
            LoginIdentifier::Username(u) => u.as_str(),
            LoginIdentifier::Email(e) => e.as_str(),
        }
    }
}
