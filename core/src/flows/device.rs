//! Device tokens: what keeps an account's owner able to sign in while
//! someone else keeps guessing its password (OWASP, "Slow Down Online
//! Guessing Attacks with Device Cookies").
//!
//! Every finished login (password and code) gets a device token. A password
//! step that presents a valid one for the account it names is not refused
//! by the account's lock and is not counted against the per-identifier limit,
//! both of which anyone who knows the username can keep exhausted; it is
//! limited per device instead (`RateLimits::login_device`, 10 an hour, also
//! spent by a token presented for another account). The password and the
//! emailed code are still required. Outside a lock a wrong password counts
//! towards the account's lock like anyone's (the owner is told when it
//! locks); during a lock it changes nothing, so someone holding a stolen
//! token gets at most 10 guesses an hour, fewer than the lock cycle allows
//! anyone (10 per 15 minutes).
//!
//! A token is `<device id>.<user id>.<issued at>e<epoch>.<tag>`: 128
//! random bits, the account, the UTC second it was issued and the
//! account's `password_epoch` it was issued at, and an HMAC tag over them
//! under the code key (domain `latchkey/device-token/v2`). Nothing is
//! stored. It is refused once `device_token_ttl_secs` have passed, and once
//! the account's password changed or was reset since (its epoch is no
//! longer the account's). A login's token carries the epoch its password
//! step saw (and its code step found current); a password reset by mail
//! gives the client that made it a token at the reset's new epoch, so the
//! owner who proved the mailbox is not locked out by someone who keeps the
//! account locked while the reset ended every older token. A password
//! change and a "sign out everywhere else" do the same for the client that
//! asked (it proved the password through a live session). (Tokens of the
//! first format, `latchkey/device-token/v1`, which decided by time, are no
//! longer accepted: such a device vouches again after its next login.)

use super::Auth;
use super::signed_token::{TokenKind, alive};
use crate::clock::Timestamp;
use crate::domain::{User, UserId};

/// Device tokens: the nonce is the device id; a tag of 16 bytes.
const DEVICE: TokenKind = TokenKind { domain: "latchkey/device-token/v2", tag_len: 32, max_len: 160 };

/// A device token whose tag checks out and which has not expired. Whether
/// it vouches for a given account is [`DeviceClaim::vouches_for`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceClaim {
    pub device_id: String,
    user_id: UserId,
    /// The account's `password_epoch` when the token was issued.
    password_epoch: u64,
}

impl DeviceClaim {
    /// Whether this device finished a login of `user` (or made its reset)
    /// since the user's last password change or reset.
    pub fn vouches_for(&self, user: &User) -> bool {
        self.user_id == user.id && self.password_epoch == user.password_epoch
    }
}

impl Auth {
    /// A new device token for `user_id`, issued at `now` at the account's
    /// `password_epoch`.
    pub(crate) fn device_token(&self, user_id: &UserId, now: Timestamp, password_epoch: u64) -> String {
        self.sign_token(&DEVICE, user_id, &format!("{now}e{password_epoch}"))
    }

    /// The claim of `token` if this service issued it and it is still
    /// within its lifetime at `now`; anything else is `None` (a bad token
    /// is the same as none: the password step goes on without it).
    pub(crate) fn device_claim(&self, token: &str, now: Timestamp) -> Option<DeviceClaim> {
        let signed = self.signed_parts(&DEVICE, token)?;
        let (at, epoch) = signed.issued.split_once('e')?;
        let (issued_at, password_epoch): (Timestamp, u64) = (at.parse().ok()?, epoch.parse().ok()?);
        let user_id = UserId::parse(signed.user)?;
        alive(issued_at, now, self.policy.device_token_ttl_secs).then(|| DeviceClaim {
            device_id: signed.nonce.to_string(),
            user_id,
            password_epoch,
        })
    }
}
