//! What the admin views ask of the flows: whose audit trail a name an
//! operator typed stands for. (The admin key and its limit are checked by
//! the caller, before this.)

use super::Auth;
use crate::domain::{Email, LoginIdentifier, UserId};
use crate::error::Error;

/// The reason of the `user` validation error for a request that names both
/// an account and an address, or neither.
pub const NAME_ONE_TRAIL: &str = "give exactly one of user (an account id, username or address) and otp_email";

/// Whose trail an admin asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrailOf {
    /// An account's, by its id.
    Account(UserId),
    /// The standalone one-time codes (`/otp`) sent to an address, which no
    /// account owns, as the OTP API reads the address.
    CodeAddress(Email),
}

/// A trail an admin asked for, and its subject in the audit store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTrail {
    pub of: TrailOf,
    pub subject: String,
}

impl Auth {
    /// The trail an admin asked for with `user` (an account's id, username
    /// or email address) or `otp_email` (an address standalone codes were
    /// sent to), exactly one of them. `Ok(None)`: no account has that
    /// username or address. Errors name the field: `user` for both or
    /// neither ([`NAME_ONE_TRAIL`]) or a name that is none of the three,
    /// `otp_email` for an address that is not one.
    pub async fn admin_trail(&self, user: Option<&str>, otp_email: Option<&str>) -> Result<Option<AdminTrail>, Error> {
        fn given(v: Option<&str>) -> Option<&str> {
            v.map(str::trim).filter(|v| !v.is_empty())
        }
        match (given(user), given(otp_email)) {
            (Some(name), None) => Ok(self
                .account_for_admin(name)
                .await?
                .map(|id| AdminTrail { subject: id.to_string(), of: TrailOf::Account(id) })),
            (None, Some(address)) => {
                let email =
                    Email::parse(address).map_err(|_| Error::validation("otp_email", "is not an email address"))?;
                let subject = crate::audit::otp_subject(&self.address_hash(&email));
                Ok(Some(AdminTrail { of: TrailOf::CodeAddress(email), subject }))
            }
            _ => Err(Error::validation("user", NAME_ONE_TRAIL)),
        }
    }

    /// The account `name` stands for, as an admin types it: an account id
    /// as given (whether or not the account still exists: its trail
    /// outlives it), else a username or an email address, read as sign-in
    /// reads them. `Ok(None)`: no account by that name.
    async fn account_for_admin(&self, name: &str) -> Result<Option<UserId>, Error> {
        // Only the hyphenated form (36 characters) is an id: the parser
        // also takes 32 hex digits, which is a username too.
        if name.len() == 36
            && let Some(id) = UserId::parse(name)
        {
            return Ok(Some(id));
        }
        let ident = LoginIdentifier::parse(name)
            .map_err(|_| Error::validation("user", "is not an account id, a username or an email address"))?;
        let user = match &ident {
            LoginIdentifier::Username(u) => self.ports.users.user_by_username(u).await?,
            LoginIdentifier::Email(e) => self.ports.users.user_by_email(e).await?,
        };
        Ok(user.map(|u| u.id))
    }
}
