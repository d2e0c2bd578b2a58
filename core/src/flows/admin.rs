//! What the admin views ask of the flows: whose audit trail a name an
//! operator typed stands for. (The admin key and its limit are checked by
//! the caller, before this.)

use super::Auth;
use crate::domain::{Email, LoginIdentifier, UserId};
use crate::error::Error;

impl Auth {
    /// The account `name` stands for, as an admin types it: an account id
    /// as given (whether or not the account still exists: its trail
    /// outlives it), else a username or an email address, read as sign-in
    /// reads them. `Ok(None)`: no account by that name. A name that is
    /// none of the three is an error naming the field `user`.
    pub async fn account_for_admin(&self, name: &str) -> Result<Option<UserId>, Error> {
        let name = name.trim();
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

    /// The audit subject of the standalone one-time codes (`/otp`) sent to
    /// `address`, which no account owns: the keyed hash the trail keeps in
    /// place of the address. With the address as the OTP API reads it.
    pub fn code_address_subject(&self, address: &str) -> Result<(Email, String), Error> {
        let email =
            Email::parse(address.trim()).map_err(|_| Error::validation("otp_email", "is not an email address"))?;
        let subject = crate::audit::otp_subject(&self.address_hash(&email));
        Ok((email, subject))
    }
}
