//! The item layout: partition keys, attribute names the conditions use, and
//! the translation between entities and attribute maps (serde_dynamo).
//!
//! Entity fields sit flat at the top level of their item, so a condition can
//! name them (`failures`, `used_at`, …). An `Option::None` is an absent
//! attribute, never a NULL, so `attribute_not_exists(used_at)` means
//! "unused".

use crate::StoreError;
use crate::clock::Timestamp;
use crate::domain::{User, UserId};
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

pub(crate) type Item = HashMap<String, AttributeValue>;

/// The partition key attribute of every table.
pub const PK: &str = "pk";
/// The TTL attribute of the users, tokens and rate-limits tables. `ttl` is a
/// DynamoDB reserved word: expressions name it through [`TTL_NAME`].
pub const TTL: &str = "ttl";
pub(crate) const TTL_NAME: &str = "#ttl";

pub use crate::tables::TTL_GRACE_SECS;
/// Rate-limit counters are swept a minute after their window ends.
pub const LIMIT_TTL_GRACE_SECS: i64 = 60;

pub fn user_pk(id: &impl std::fmt::Display) -> String {
    format!("USER#{id}")
}
pub fn username_claim_pk(username: &str) -> String {
    format!("UNAME#{username}")
}
pub fn email_claim_pk(email: &str) -> String {
    format!("EMAIL#{email}")
}

/// The attribute of a claim item naming the account that holds the name.
pub(crate) const CLAIM_USER_ID: &str = "user_id";
/// The attribute of a username claim item that is a hold: a registration
/// refused for a taken email holds its username, without an account, as an
/// unverified account made at `held_at` would (see `UserStore::create_user`).
pub(crate) const HELD_AT: &str = "held_at";

/// What a claim item (`UNAME#…` or `EMAIL#…`) says about its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The account with this id holds the name.
    Account(UserId),
    /// A username hold made at this time, with no account behind it.
    Hold(Timestamp),
}

/// A claim item for `claim`. Neither kind carries `username` or `email`, so
/// no claim (a hold included) is ever in the users table's indexes. A hold
/// carries the `ttl` of the unverified account it stands for (deleted with
/// it, `User::UNVERIFIED_RETENTION_SECS` after it was made); an account's
/// claim has none: it goes with its account (`DynamoStore::release_names`).
pub(crate) fn claim_item(pk: String, claim: Claim) -> Item {
    let value = match claim {
        Claim::Account(id) => (CLAIM_USER_ID.to_string(), s(id.to_string())),
        Claim::Hold(at) => (HELD_AT.to_string(), n(at)),
    };
    let mut item: Item = [(PK.to_string(), s(pk)), value].into();
    if let Claim::Hold(at) = claim {
        item.insert(TTL.to_string(), n(User::unverified_gone_at(at)));
    }
    item
}

/// The claim a stored claim item makes.
pub(crate) fn claim_of(item: &Item) -> Result<Claim, StoreError> {
    if let Some(id) = text(item, CLAIM_USER_ID) {
        return UserId::parse(id).map(Claim::Account).ok_or_else(|| StoreError::internal("claim with a bad user id"));
    }
    match item.get(HELD_AT) {
        Some(AttributeValue::N(v)) => v.parse().map(Claim::Hold).map_err(StoreError::internal),
        _ => Err(StoreError::internal("claim item names no account and is no hold")),
    }
}
pub fn verification_pk(token_hash: &str) -> String {
    format!("VERIFY#{token_hash}")
}
pub fn challenge_pk(id: &impl std::fmt::Display) -> String {
    format!("CHAL#{id}")
}
pub fn session_pk(id: &impl std::fmt::Display) -> String {
    format!("SESSION#{id}")
}
pub fn otp_pk(address_hash: &str) -> String {
    format!("OTP#{address_hash}")
}
/// The window start is the last `#`-separated part, so the key may itself
/// contain `#` without two (key, window) pairs sharing an item.
pub fn limit_pk(key: &str, window_start: Timestamp) -> String {
    format!("RL#{key}#{window_start}")
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: impl Into<i64>) -> AttributeValue {
    AttributeValue::N(v.into().to_string())
}

/// The user's `password_epoch` is still `:epoch`, the value the caller
/// read as `password_epoch` (a password step, or the check before a change
/// or reset); users written before the counter existed have none, which is
/// 0.
pub(crate) fn unchanged_since(password_epoch: u64) -> &'static str {
    if password_epoch == 0 {
        "(attribute_not_exists(password_epoch) OR password_epoch = :epoch)"
    } else {
        "password_epoch = :epoch"
    }
}

pub(crate) fn epoch_value(password_epoch: u64) -> AttributeValue {
    AttributeValue::N(password_epoch.to_string())
}

/// The epoch a password change or reset from `password_epoch` sets.
pub(crate) fn next_epoch(password_epoch: u64) -> Result<u64, StoreError> {
    password_epoch.checked_add(1).ok_or_else(|| StoreError::internal("password_epoch overflow"))
}

/// A fresh mark for a conditional write to put on its item, by which a
/// send of it again (the SDK's, after a lost answer) knows the write that
/// refused it as its own ([`super::errors::own_write_or_stale`]).
pub(crate) fn write_mark() -> String {
    let mut mark = [0u8; 16];
    crate::rng::SecureRng::fill(&crate::rng::OsSecureRng, &mut mark);
    hex::encode(mark)
}

/// The item for an entity: its fields at the top level (absent for `None`),
/// plus its partition key and, where given, its TTL.
pub(crate) fn to_item<T: Serialize>(entity: &T, pk: String, ttl: Option<Timestamp>) -> Result<Item, StoreError> {
    let mut item: Item = serde_dynamo::to_item(entity).map_err(StoreError::internal)?;
    item.retain(|_, v| !matches!(v, AttributeValue::Null(_)));
    item.insert(PK.to_string(), s(pk));
    if let Some(ttl) = ttl {
        item.insert(TTL.to_string(), n(ttl));
    }
    Ok(item)
}

/// The entity in an item; extra attributes (`pk`, `ttl`) are ignored.
pub(crate) fn from_item<T: DeserializeOwned>(item: Item) -> Result<T, StoreError> {
    serde_dynamo::from_item(item).map_err(StoreError::internal)
}

/// A string attribute of an item, if it has one.
pub(crate) fn text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

/// A numeric attribute of an item, e.g. a counter returned by an update.
pub(crate) fn number(item: &Item, name: &str) -> Result<u32, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().map_err(StoreError::internal),
        _ => Err(StoreError::internal(format!("item has no numeric `{name}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RequestMeta, VerificationRecord};
    use crate::rng::SecureRng;

    struct Sevens;
    impl SecureRng for Sevens {
        fn fill(&self, buf: &mut [u8]) {
            buf.fill(7);
        }
    }

    #[test]
    fn none_is_absent_and_round_trips() {
        let rec = VerificationRecord {
            token_hash: "ab".into(),
            user_id: crate::domain::UserId::random(&Sevens),
            created_at: 10,
            expires_at: 20,
            used_at: None,
            meta: RequestMeta { ip: Some("203.0.113.7".into()), ..Default::default() },
        };
        let item = to_item(&rec, verification_pk("ab"), Some(20 + TTL_GRACE_SECS)).unwrap();
        assert!(!item.contains_key("used_at"));
        assert_eq!(item.get("pk"), Some(&s("VERIFY#ab")));
        assert_eq!(item.get("ttl"), Some(&n(86_420)));
        assert_eq!(item.get("expires_at"), Some(&n(20)));
        assert_eq!(from_item::<VerificationRecord>(item).unwrap(), rec);
    }

    #[test]
    fn claims_round_trip_and_stay_out_of_the_indexes() {
        let id = crate::domain::UserId::random(&Sevens);
        for (claim, attr) in [(Claim::Account(id), CLAIM_USER_ID), (Claim::Hold(1_700_000_000), HELD_AT)] {
            let item = claim_item(username_claim_pk("bob"), claim);
            assert_eq!(item.get(PK), Some(&s("UNAME#bob")));
            assert!(item.contains_key(attr));
            assert!(!item.contains_key("username") && !item.contains_key("email"), "{item:?}");
            assert_eq!(claim_of(&item).unwrap(), claim);
            // A hold goes when the unverified account it stands for would;
            // an account's claim goes with its account.
            let ttl = matches!(claim, Claim::Hold(_)).then(|| n(1_700_000_000 + 30 * 86_400 + 86_400));
            assert_eq!(item.get(TTL), ttl.as_ref(), "{claim:?}");
        }
        let bare: Item = [(PK.to_string(), s("UNAME#bob"))].into();
        assert!(matches!(claim_of(&bare), Err(StoreError::Internal(_))));
    }

    #[test]
    fn limit_keys_do_not_collide() {
        assert_ne!(limit_pk("a#1", 2), limit_pk("a", 12));
        assert_eq!(limit_pk("login:ip:1.2.3.4", 60), "RL#login:ip:1.2.3.4#60");
    }
}
