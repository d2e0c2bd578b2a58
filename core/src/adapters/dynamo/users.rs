//! `UserStore`: user items, their username/email claims (a username claim
//! may be a hold, with no account), and verification tokens.

use super::errors::{map_sdk, old_item_on_failed_check, own_write_or_stale};
use super::items::{
    self, CLAIM_USER_ID, Claim, HELD_AT, Item, PK, TTL_GRACE_SECS, TTL_NAME, epoch_value, n, next_epoch, s,
    unchanged_since,
};
use super::{DynamoStore, backoff, delete_item, put_item, update_item};
use crate::clock::Timestamp;
use crate::domain::{Email, RequestMeta, ResetLink, SessionId, User, UserId, Username, VerificationRecord};
use crate::error::Conflict;
use crate::ports::{LoginFailure, StoreResult, UserStore};
use crate::{StoreError, tables};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, DeleteRequest, Put, ReturnValue, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, Update, WriteRequest,
};

impl DynamoStore {
    /// Deletes the items of the tokens table that name `user_id` (its
    /// sessions, login challenges and verification links; standalone codes
    /// name no account), as the `by_user` index lists them: an item
    /// written a moment before may not be listed yet and is left to its
    /// TTL. A plain REMOVE, which the audit trail records nothing for, as
    /// when SQLite deletes them with the account. 25 to a call, the
    /// unprocessed ones sent again after a backoff, up to 4 times.
    async fn forget_tokens_of(&self, user_id: &UserId) -> StoreResult<()> {
        let keys: Vec<AttributeValue> = self
            .items_of_user(user_id, |q| q.projection_expression("pk"))
            .await?
            .into_iter()
            .filter_map(|mut item| item.remove(PK))
            .collect();
        for chunk in keys.chunks(25) {
            let mut requests = chunk
                .iter()
                .map(|pk| {
                    let delete = DeleteRequest::builder().key(PK, pk.clone()).build().map_err(StoreError::internal)?;
                    Ok(WriteRequest::builder().delete_request(delete).build())
                })
                .collect::<StoreResult<Vec<_>>>()?;
            for attempt in 0.. {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.tokens, requests)
                    .send()
                    .await
                    .map_err(map_sdk)?;
                requests = out.unprocessed_items.and_then(|mut left| left.remove(&self.tokens)).unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
                if attempt == 3 {
                    return Err(StoreError::Unavailable(format!("{} deletes left unprocessed", requests.len()).into()));
                }
                backoff(attempt).await;
            }
        }
        Ok(())
    }
}

/// Rounds of "count, else lock" before `record_login_failure` gives up;
/// each round only repeats when another request changed the user between
/// the two conditional writes.
const LOGIN_FAILURE_ROUNDS: u32 = 4;

/// Rounds of "register, else read the holders and take over (or hold the
/// username)" before a registration whose names keep changing hands gives
/// up (`Unavailable`).
const REGISTRATION_ROUNDS: u32 = 3;

/// Index of the username and email claims in `create_user`'s transaction.
const USERNAME_CLAIM: usize = 1;
const EMAIL_CLAIM: usize = 2;
/// Index of the email holder's check in `hold_username`'s transaction.
const HOLD_EMAIL_HOLDER: usize = 1;
/// Index of the user's update and of the new address's claim in
/// `change_email`'s transaction.
const MOVED_USER: usize = 0;
const NEW_EMAIL_CLAIM: usize = 1;

pub(super) const UNLOCKED: &str = "(attribute_not_exists(locked_until) OR locked_until <= :now)";

/// The `meta` attribute (a map) of a request, for `SET meta = :meta` in the
/// updates that record which request modified an item.
pub(super) fn meta_value(meta: &RequestMeta) -> StoreResult<AttributeValue> {
    serde_dynamo::to_attribute_value(meta).map_err(StoreError::internal)
}

impl DynamoStore {
    /// The user whose `attribute` is `value`, through the GSI on it.
    async fn user_by_index(&self, attribute: &str, value: &str) -> StoreResult<Option<User>> {
        let gsi = tables::USERS
            .gsis
            .iter()
            .find(|g| g.hash_key == attribute)
            .ok_or_else(|| StoreError::internal(format!("no index on `{attribute}`")))?;
        let out = self
            .client
            .query()
            .table_name(&self.users)
            .index_name(gsi.name)
            .key_condition_expression("#k = :v")
            .expression_attribute_names("#k", gsi.hash_key)
            .expression_attribute_values(":v", s(value))
            .limit(1)
            .send()
            .await
            .map_err(map_sdk)?;
        out.items.and_then(|mut v| v.pop()).map(items::from_item).transpose()
    }

    /// One conditional update of a user returning the new image; a failed
    /// condition returns the item as it was (`None`: no such user).
    async fn update_user_or_old(
        &self,
        id: &UserId,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> StoreResult<Result<User, Option<Item>>> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.users)
            .key(PK, s(items::user_pk(id)))
            .update_expression(update)
            .condition_expression(condition)
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        match req.send().await {
            Ok(out) => {
                let item = out.attributes.ok_or_else(|| StoreError::internal("UpdateItem returned no attributes"))?;
                Ok(Ok(items::from_item(item)?))
            }
            Err(err) => Ok(Err(old_item_on_failed_check(err)?)),
        }
    }
}

/// What a claim put requires of the claim item it overwrites.
#[derive(Debug, Clone, Copy)]
enum Guard<'a> {
    /// There is none.
    Free,
    /// It still names this account (one being replaced).
    Names(&'a UserId),
    /// It is still this hold (made at this time, before the cut-off).
    HeldAt(Timestamp),
}

/// A name's holder that a registration may take the name from: made
/// before the cut-off, and nobody verified anything.
#[derive(Debug, Clone)]
enum Stale {
    Account(Box<User>),
    /// A username hold (no account).
    Hold(Timestamp),
    /// A claim whose account is gone: deleted by the TTL as unverified
    /// (`User::UNVERIFIED_RETENTION_SECS`), its claims not yet released by
    /// the stream processor (`DynamoStore::release_names`).
    Orphan(UserId),
}

impl Stale {
    fn guard(&self) -> Guard<'_> {
        match self {
            Stale::Account(u) => Guard::Names(&u.id),
            Stale::Hold(at) => Guard::HeldAt(*at),
            Stale::Orphan(id) => Guard::Names(id),
        }
    }

    fn account(&self) -> Option<&User> {
        match self {
            Stale::Account(u) => Some(u),
            Stale::Hold(_) | Stale::Orphan(_) => None,
        }
    }

    /// The account its claim names (there or gone).
    fn names(&self) -> Option<&UserId> {
        match self {
            Stale::Account(u) => Some(&u.id),
            Stale::Orphan(id) => Some(id),
            Stale::Hold(_) => None,
        }
    }
}

/// A name's holder, as read after a refused registration.
#[derive(Debug)]
enum Holder {
    /// The claim went since the refusal: look again.
    Gone,
    /// Held: a verified account, or an account or hold made at or after
    /// the cut-off.
    Taken,
    Stale(Stale),
}

/// How `hold_username` ended.
#[derive(Debug)]
enum HoldOutcome {
    Held,
    /// The email's holder is gone, or is past its hold: look again.
    EmailHolderChanged,
    /// The username's claim is not what was read any more: look again.
    UsernameChanged,
}

impl DynamoStore {
    /// A put of `claim` as the claim item `pk`, if the item there is what
    /// `guard` expects.
    fn claim_put(&self, pk: String, claim: Claim, guard: Guard<'_>) -> StoreResult<TransactWriteItem> {
        let put = Put::builder().table_name(&self.users).set_item(Some(items::claim_item(pk, claim)));
        let put = match guard {
            Guard::Free => put.condition_expression("attribute_not_exists(pk)"),
            Guard::Names(id) => put
                .condition_expression(format!("{CLAIM_USER_ID} = :holder"))
                .expression_attribute_values(":holder", s(id.to_string())),
            Guard::HeldAt(at) => put
                .condition_expression(format!("attribute_not_exists({CLAIM_USER_ID}) AND {HELD_AT} = :held"))
                .expression_attribute_values(":held", n(at)),
        };
        Ok(TransactWriteItem::builder().put(put.build().map_err(StoreError::internal)?).build())
    }

    /// `create_user`'s transaction: the user, its two claims (each put if
    /// what is there is what its guard expects), its first verification
    /// token.
    fn registration(
        &self,
        user: &User,
        verification: &VerificationRecord,
        username: Guard<'_>,
        email: Guard<'_>,
    ) -> StoreResult<Vec<TransactWriteItem>> {
        let absent = "attribute_not_exists(pk)";
        let claim = Claim::Account(user.id);
        Ok(vec![
            put_item(
                &self.users,
                items::to_item(
                    user,
                    items::user_pk(&user.id),
                    (!user.verified).then(|| User::unverified_gone_at(user.created_at)),
                )?,
                absent,
            )?,
            self.claim_put(items::username_claim_pk(user.username.as_str()), claim, username)?,
            self.claim_put(items::email_claim_pk(user.email.as_str()), claim, email)?,
            put_item(
                &self.tokens,
                items::to_item(
                    verification,
                    items::verification_pk(&verification.token_hash),
                    Some(verification.expires_at + TTL_GRACE_SECS),
                )?,
                absent,
            )?,
        ])
    }

    /// The deletes that take the names of `old`, a stale unverified
    /// account, for `user`: its item, only while it is still unverified and
    /// made before the cut-off, and those of its claims that `user`'s own
    /// puts do not overwrite, only while they name it.
    fn take_over(&self, old: &User, user: &User, before: Timestamp) -> StoreResult<Vec<TransactWriteItem>> {
        let delete = |pk: String, condition: &str| {
            Delete::builder().table_name(&self.users).key(PK, s(pk)).condition_expression(condition)
        };
        let mut tx = vec![delete_item(
            delete(items::user_pk(&old.id), "verified = :false AND created_at < :before")
                .expression_attribute_values(":false", AttributeValue::Bool(false))
                .expression_attribute_values(":before", n(before)),
        )?];
        let named = |pk| {
            delete(pk, &format!("{CLAIM_USER_ID} = :old")).expression_attribute_values(":old", s(old.id.to_string()))
        };
        if old.username != user.username {
            tx.push(delete_item(named(items::username_claim_pk(old.username.as_str())))?);
        }
        if old.email != user.email {
            tx.push(delete_item(named(items::email_claim_pk(old.email.as_str())))?);
        }
        Ok(tx)
    }

    /// The claim on a name (`None`: there is none).
    async fn claim(&self, pk: String) -> StoreResult<Option<Claim>> {
        self.get_item(&self.users, pk).await?.map(|item| items::claim_of(&item)).transpose()
    }

    /// The account `id`, as a name's holder. A claim naming an account
    /// that is not there is an orphan, taken over only while it still
    /// names that account: if the account went in a registration that took
    /// the name (with the claim, in one transaction), the claim names the
    /// new account and the take-over is refused, so the caller looks again.
    async fn account_holder(&self, id: &UserId, before: Timestamp) -> StoreResult<Holder> {
        Ok(match self.get::<User>(&self.users, items::user_pk(id)).await? {
            None => Holder::Stale(Stale::Orphan(*id)),
            Some(u) if !u.verified && u.created_at < before => Holder::Stale(Stale::Account(Box::new(u))),
            Some(_) => Holder::Taken,
        })
    }

    /// The username's holder, from its claim as read after `user`'s
    /// registration was refused for it.
    async fn username_holder(&self, claim: Option<Claim>, user: &User, before: Timestamp) -> StoreResult<Holder> {
        match claim {
            None => Ok(Holder::Gone),
            Some(Claim::Account(id)) => self.account_holder(&id, before).await,
            Some(Claim::Hold(at)) => {
                // A hold answers after the same reads as the account it
                // stands for: the read of a holder (here one that cannot
                // exist, the new account's), so no answer's time tells a
                // hold from an account.
                self.get_item(&self.users, items::user_pk(&user.id)).await?;
                Ok(if at < before { Holder::Stale(Stale::Hold(at)) } else { Holder::Taken })
            }
        }
    }

    /// The registration again, taking each name over from its stale holder:
    /// a stale account's item and its other claims are deleted in the same
    /// transaction, each only if it is still what was read (unverified,
    /// created before the cut-off, the claim naming it); a stale hold is
    /// overwritten only while it is the one read. `None`: something changed
    /// since the read (a holder verified, or another registration took the
    /// same name over), so the caller looks again.
    async fn replace_unverified(
        &self,
        user: &User,
        verification: &VerificationRecord,
        username_holder: Option<Stale>,
        email_holder: Option<Stale>,
        before: Timestamp,
    ) -> StoreResult<Option<Vec<UserId>>> {
        let mut tx = self.registration(
            user,
            verification,
            username_holder.as_ref().map_or(Guard::Free, Stale::guard),
            email_holder.as_ref().map_or(Guard::Free, Stale::guard),
        )?;
        let mut replaced: Vec<&User> = Vec::new();
        for old in [username_holder.as_ref(), email_holder.as_ref()].into_iter().flatten().filter_map(Stale::account) {
            if !replaced.iter().any(|r| r.id == old.id) {
                replaced.push(old);
            }
        }
        for old in &replaced {
            tx.extend(self.take_over(old, user, before)?);
        }
        let guards = tx.len();
        match self.transact(tx).await {
            Ok(()) => Ok(Some(replaced.into_iter().map(|u| u.id).collect())),
            // Something changed since the read: a holder verified (it keeps
            // its name), or taken over by another registration (gone). The
            // caller's next read tells which.
            Err(e) if (0..guards).any(|i| e.check_failed(i)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// For a registration refused because the account `email_holder` has
    /// its email: holds `user`'s username, without an account, as an
    /// unverified account made at `user.created_at` would. The username's
    /// claim becomes a hold, put where there is none, or over its stale
    /// holder (a stale account goes as in `replace_unverified`), in one
    /// transaction with a check that `email_holder` still keeps its email
    /// (verified, or made at or after the cut-off).
    async fn hold_username(
        &self,
        user: &User,
        email_holder: &UserId,
        username_holder: Option<&Stale>,
        before: Timestamp,
    ) -> StoreResult<HoldOutcome> {
        let keeps_email = ConditionCheck::builder()
            .table_name(&self.users)
            .key(PK, s(items::user_pk(email_holder)))
            .condition_expression("verified = :true OR created_at >= :before")
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":before", n(before))
            .build()
            .map_err(StoreError::internal)?;
        let mut tx = vec![
            self.claim_put(
                items::username_claim_pk(user.username.as_str()),
                Claim::Hold(user.created_at),
                username_holder.map_or(Guard::Free, Stale::guard),
            )?,
            TransactWriteItem::builder().condition_check(keeps_email).build(),
        ];
        if let Some(old) = username_holder.and_then(Stale::account) {
            tx.extend(self.take_over(old, user, before)?);
        }
        let guards = tx.len();
        match self.transact(tx).await {
            Ok(()) => Ok(HoldOutcome::Held),
            Err(e) if e.check_failed(HOLD_EMAIL_HOLDER) => Ok(HoldOutcome::EmailHolderChanged),
            Err(e) if (0..guards).any(|i| e.check_failed(i)) => Ok(HoldOutcome::UsernameChanged),
            Err(e) => Err(e.into()),
        }
    }
}

impl DynamoStore {
    /// Deletes the username and email claims of `user`, an account
    /// DynamoDB's TTL deleted as unverified (the stream processor calls
    /// this for its REMOVE), each only while it still names `user`: one a
    /// registration took over since names another account, and stays.
    /// Returns how many it deleted; safe to repeat (a redelivered record
    /// deletes nothing more).
    pub async fn release_names(&self, user: &User) -> StoreResult<usize> {
        let mut released = 0;
        for pk in [items::username_claim_pk(user.username.as_str()), items::email_claim_pk(user.email.as_str())] {
            let out = self
                .client
                .delete_item()
                .table_name(&self.users)
                .key(PK, s(pk))
                .condition_expression(format!("{CLAIM_USER_ID} = :id"))
                .expression_attribute_values(":id", s(user.id.to_string()))
                .send()
                .await;
            match out.map_err(map_sdk) {
                Ok(_) => released += 1,
                // Not there, or another account's now.
                Err(StoreError::Conflict(Conflict::Stale)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(released)
    }
}

#[async_trait]
impl UserStore for DynamoStore {
    async fn create_user(
        &self,
        user: &User,
        verification: &VerificationRecord,
        replace_unverified_before: Timestamp,
    ) -> StoreResult<Vec<UserId>> {
        let before = replace_unverified_before;
        for _ in 0..REGISTRATION_ROUNDS {
            let e = match self.transact(self.registration(user, verification, Guard::Free, Guard::Free)?).await {
                Ok(()) => return Ok(Vec::new()),
                Err(e) if e.check_failed(USERNAME_CLAIM) || e.check_failed(EMAIL_CLAIM) => e,
                Err(e) => return Err(e.into()),
            };
            // Only a refused registration pays for these reads (both claims
            // at once). The outer `None`: that claim was free.
            let read = |failed: bool, pk: String| async move {
                match failed {
                    true => self.claim(pk).await.map(Some),
                    false => Ok(None),
                }
            };
            let (username_claim, email_claim) = tokio::try_join!(
                read(e.check_failed(USERNAME_CLAIM), items::username_claim_pk(user.username.as_str())),
                read(e.check_failed(EMAIL_CLAIM), items::email_claim_pk(user.email.as_str())),
            )?;
            // The username first: its conflict is the one reported.
            let username_holder = match username_claim {
                None => None,
                Some(claim) => match self.username_holder(claim, user, before).await? {
                    Holder::Taken => return Err(StoreError::Conflict(Conflict::UsernameTaken)),
                    Holder::Gone => continue,
                    Holder::Stale(stale) => Some(stale),
                },
            };
            let email_holder = match email_claim {
                None => None,
                Some(None) => continue,
                Some(Some(Claim::Hold(_))) => return Err(StoreError::internal("an email claim that is a hold")),
                // The username's stale holder has the email too.
                Some(Some(Claim::Account(id))) if username_holder.as_ref().and_then(Stale::names) == Some(&id) => {
                    username_holder.clone()
                }
                Some(Some(Claim::Account(id))) => {
                    match self.hold_username(user, &id, username_holder.as_ref(), before).await? {
                        HoldOutcome::Held => return Err(StoreError::Conflict(Conflict::EmailTaken)),
                        HoldOutcome::UsernameChanged => continue,
                        HoldOutcome::EmailHolderChanged => match self.account_holder(&id, before).await? {
                            Holder::Stale(stale) => Some(stale),
                            _ => continue,
                        },
                    }
                }
            };
            if let Some(replaced) =
                self.replace_unverified(user, verification, username_holder, email_holder, before).await?
            {
                return Ok(replaced);
            }
        }
        // Never a taken email without its username held: that answer would
        // tell the email apart from a free one.
        Err(StoreError::unavailable("create_user: the names kept changing hands"))
    }

    async fn user_by_id(&self, id: &UserId) -> StoreResult<Option<User>> {
        self.get(&self.users, items::user_pk(id)).await
    }

    async fn user_by_username(&self, username: &Username) -> StoreResult<Option<User>> {
        self.user_by_index("username", username.as_str()).await
    }

    async fn user_by_email(&self, email: &Email) -> StoreResult<Option<User>> {
        self.user_by_index("email", email.as_str()).await
    }

    async fn record_login_failure(
        &self,
        id: &UserId,
        now: Timestamp,
        threshold: u32,
        lock_secs: i64,
        meta: &RequestMeta,
    ) -> StoreResult<LoginFailure> {
        // Counts below `last` only increment; the failure that reaches the
        // threshold locks instead. Both writes require "not locked", so a
        // lock is never extended and a failure during one changes nothing.
        let last = n(threshold.max(1) - 1);
        let meta = meta_value(meta)?;
        for _ in 0..LOGIN_FAILURE_ROUNDS {
            let counted = self
                .update_user_or_old(
                    id,
                    // An ended lock is cleared (as the SQLite twin does),
                    // so the trail shows it ended before the next one.
                    "SET failed_logins = failed_logins + :one, meta = :meta REMOVE locked_until",
                    &format!("attribute_exists(pk) AND {UNLOCKED} AND failed_logins < :last"),
                    vec![(":one", n(1)), (":now", n(now)), (":last", last.clone()), (":meta", meta.clone())],
                )
                .await?;
            match counted {
                Ok(user) => return Ok(LoginFailure { user, started_lock: false }),
                Err(None) => return Err(StoreError::Conflict(Conflict::Stale)),
                Err(Some(old)) => {
                    let old: User = items::from_item(old)?;
                    if old.is_locked(now) {
                        return Ok(LoginFailure { user: old, started_lock: false });
                    }
                }
            }
            let locked = self
                .update_user_or_old(
                    id,
                    "SET locked_until = :until, failed_logins = :zero, meta = :meta",
                    &format!("attribute_exists(pk) AND {UNLOCKED} AND failed_logins >= :last"),
                    vec![
                        (":until", n(now + lock_secs)),
                        (":zero", n(0)),
                        (":now", n(now)),
                        (":last", last.clone()),
                        (":meta", meta.clone()),
                    ],
                )
                .await?;
            match locked {
                Ok(user) => return Ok(LoginFailure { user, started_lock: true }),
                Err(None) => return Err(StoreError::Conflict(Conflict::Stale)),
                Err(Some(old)) => {
                    let old: User = items::from_item(old)?;
                    if old.is_locked(now) {
                        return Ok(LoginFailure { user: old, started_lock: false });
                    }
                    // The count went down in between (a successful login
                    // reset it): count again.
                }
            }
        }
        Err(StoreError::unavailable("record_login_failure: the user kept changing under contention"))
    }

    async fn set_password_hash(
        &self,
        id: &UserId,
        expected_phc: &str,
        phc: &str,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        self.client
            .update_item()
            .table_name(&self.users)
            .key(PK, s(items::user_pk(id)))
            .update_expression("SET password_hash = :h, meta = :meta")
            .condition_expression("attribute_exists(pk) AND password_hash = :expected")
            .expression_attribute_values(":h", s(phc))
            .expression_attribute_values(":expected", s(expected_phc))
            .expression_attribute_values(":meta", meta_value(meta)?)
            .send()
            .await
            .map_err(map_sdk)?;
        Ok(())
    }

    /// Two writes: the user item takes the request's `meta` first (on the
    /// same condition), so the stream's REMOVE, whose old image is all it
    /// carries, names the request that deleted the account; then one
    /// transaction deletes the user and its claims. A claim already gone is
    /// no reason to keep the account. Then its sessions, login challenges
    /// and verification links go (`forget_tokens_of`): none is left for its
    /// TTL with the addresses and user agents it holds.
    async fn delete_account(&self, user: &User, meta: &RequestMeta) -> StoreResult<()> {
        let unchanged = format!(
            "attribute_exists(pk) AND password_hash = :expected AND email = :email AND {}",
            unchanged_since(user.password_epoch)
        );
        let (expected, epoch, uid) = (s(&user.password_hash), epoch_value(user.password_epoch), s(user.id.to_string()));
        let email = s(user.email.as_str());
        self.client
            .update_item()
            .table_name(&self.users)
            .key(PK, s(items::user_pk(&user.id)))
            .update_expression("SET meta = :meta")
            .condition_expression(&unchanged)
            .expression_attribute_values(":expected", expected.clone())
            .expression_attribute_values(":epoch", epoch.clone())
            .expression_attribute_values(":email", email.clone())
            .expression_attribute_values(":meta", meta_value(meta)?)
            .send()
            .await
            .map_err(map_sdk)?;
        let account = Delete::builder()
            .table_name(&self.users)
            .key(PK, s(items::user_pk(&user.id)))
            .condition_expression(unchanged)
            .expression_attribute_values(":expected", expected)
            .expression_attribute_values(":epoch", epoch)
            .expression_attribute_values(":email", email);
        let claim = |pk: String| {
            Delete::builder()
                .table_name(&self.users)
                .key(PK, s(pk))
                .condition_expression(format!("attribute_not_exists(pk) OR {CLAIM_USER_ID} = :uid"))
                .expression_attribute_values(":uid", uid.clone())
        };
        self.transact(vec![
            delete_item(account)?,
            delete_item(claim(items::username_claim_pk(user.username.as_str())))?,
            delete_item(claim(items::email_claim_pk(user.email.as_str())))?,
        ])
        .await?;
        // The account is gone: what is left cannot be used (every read of
        // a session, challenge or link checks the account), so a failure
        // here leaves it to the TTL rather than failing a done deletion.
        if let Err(e) = self.forget_tokens_of(&user.id).await {
            tracing::warn!(error = %e, user_id = %user.id, "account deleted; its sessions and codes are left to their TTL");
        }
        Ok(())
    }

    async fn change_password(
        &self,
        id: &UserId,
        expected_phc: &str,
        expected_epoch: u64,
        phc: &str,
        keep: &SessionId,
        now: Timestamp,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let meta = meta_value(meta)?;
        let next = epoch_value(next_epoch(expected_epoch)?);
        let user = Update::builder()
            .table_name(&self.users)
            .key(PK, s(items::user_pk(id)))
            .update_expression(
                "SET password_hash = :h, sessions_valid_after = :now, meta = :meta, password_epoch = :next",
            )
            .condition_expression(format!(
                "attribute_exists(pk) AND password_hash = :expected AND {}",
                unchanged_since(expected_epoch)
            ))
            .expression_attribute_values(":epoch", epoch_value(expected_epoch))
            .expression_attribute_values(":next", next.clone())
            .expression_attribute_values(":h", s(phc))
            .expression_attribute_values(":expected", s(expected_phc))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":meta", meta.clone());
        let session = Update::builder()
            .table_name(&self.tokens)
            .key(PK, s(items::session_pk(keep)))
            .update_expression("SET password_epoch = :next, meta = :meta")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(revoked_at) AND user_id = :uid")
            .expression_attribute_values(":next", next)
            .expression_attribute_values(":uid", s(id.to_string()))
            .expression_attribute_values(":meta", meta);
        self.transact(vec![update_item(user)?, update_item(session)?]).await?;
        Ok(())
    }

    async fn reset_password(
        &self,
        id: &UserId,
        link: ResetLink,
        expected_epoch: u64,
        phc: &str,
        now: Timestamp,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let resets = link.resets.checked_add(1).ok_or_else(|| StoreError::internal("password_resets overflow"))?;
        // A user never reset has no count (0).
        let current_count = if link.resets == 0 {
            "(attribute_not_exists(password_resets) OR password_resets = :resets)"
        } else {
            "password_resets = :resets"
        };
        // Still at the address the link was mailed to.
        let same_address = if link.email_changes == 0 {
            "(attribute_not_exists(email_changes) OR email_changes = :changes)"
        } else {
            "email_changes = :changes"
        };
        let result = self
            .client
            .update_item()
            .table_name(&self.users)
            .key(PK, s(items::user_pk(id)))
            .update_expression(
                "SET password_hash = :h, sessions_valid_after = :now, password_reset_at = :now, \
                 password_resets = :next_resets, failed_logins = :zero, otp_failures = :zero, meta = :meta, \
                 password_epoch = :next REMOVE locked_until",
            )
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":epoch", epoch_value(expected_epoch))
            .expression_attribute_values(":next", epoch_value(next_epoch(expected_epoch)?))
            .expression_attribute_values(":resets", n(link.resets))
            .expression_attribute_values(":next_resets", n(resets))
            .expression_attribute_values(":changes", n(link.email_changes))
            .condition_expression(format!(
                "attribute_exists(pk) AND {current_count} AND {same_address} \
                 AND (attribute_not_exists(password_reset_at) OR password_reset_at <= :issued) \
                 AND (attribute_not_exists(sessions_valid_after) OR sessions_valid_after <= :now) AND {}",
                unchanged_since(expected_epoch)
            ))
            .expression_attribute_values(":h", s(phc))
            .expression_attribute_values(":issued", n(link.issued_at))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":meta", meta_value(meta)?)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        if let Err(err) = result {
            // The SDK sends a request again when its answer was lost (a
            // timeout, a 500): if an earlier send of this one was applied,
            // the user already holds this reset's hash (its salt is new), and
            // the reset is done; the refusal is of the retry by its own write.
            return own_write_or_stale(err, "password_hash", phc);
        }
        Ok(())
    }

    /// One transaction: the user (on the count, epoch and address it was
    /// read with), the new address's claim (where there is none) and the
    /// old one's delete (a claim already gone does not block). The user's
    /// refusal is reported first: a taken address is only news about a
    /// user as read. A retry of a lost answer is the same transaction with
    /// its client request token (`transact`).
    async fn change_email(&self, user: &User, new: &Email, meta: &RequestMeta) -> StoreResult<()> {
        // One transaction cannot put and delete the same claim.
        if *new == user.email {
            return Err(StoreError::Conflict(Conflict::EmailTaken));
        }
        let changes =
            user.email_changes.checked_add(1).ok_or_else(|| StoreError::internal("email_changes overflow"))?;
        // A user never moved has no count (0).
        let current_count = if user.email_changes == 0 {
            "(attribute_not_exists(email_changes) OR email_changes = :changes)"
        } else {
            "email_changes = :changes"
        };
        let uid = s(user.id.to_string());
        let moved = Update::builder()
            .table_name(&self.users)
            .key(PK, s(items::user_pk(&user.id)))
            .update_expression("SET email = :new, email_changes = :next, meta = :meta")
            .condition_expression(format!(
                "attribute_exists(pk) AND email = :old AND {current_count} AND {}",
                unchanged_since(user.password_epoch)
            ))
            .expression_attribute_values(":new", s(new.as_str()))
            .expression_attribute_values(":old", s(user.email.as_str()))
            .expression_attribute_values(":changes", n(user.email_changes))
            .expression_attribute_values(":next", n(changes))
            .expression_attribute_values(":epoch", epoch_value(user.password_epoch))
            .expression_attribute_values(":meta", meta_value(meta)?);
        let old_claim = Delete::builder()
            .table_name(&self.users)
            .key(PK, s(items::email_claim_pk(user.email.as_str())))
            .condition_expression(format!("attribute_not_exists(pk) OR {CLAIM_USER_ID} = :uid"))
            .expression_attribute_values(":uid", uid);
        let tx = vec![
            update_item(moved)?,
            self.claim_put(items::email_claim_pk(new.as_str()), Claim::Account(user.id), Guard::Free)?,
            delete_item(old_claim)?,
        ];
        match self.transact(tx).await {
            Ok(()) => Ok(()),
            Err(e) if e.check_failed(MOVED_USER) => Err(StoreError::Conflict(Conflict::Stale)),
            Err(e) if e.check_failed(NEW_EMAIL_CLAIM) => Err(StoreError::Conflict(Conflict::EmailTaken)),
            Err(e) => Err(e.into()),
        }
    }

    async fn add_verification(
        &self,
        verification: &VerificationRecord,
        now: Timestamp,
        cooldown_secs: i64,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let user = Update::builder()
            .table_name(&self.users)
            .key(PK, s(items::user_pk(&verification.user_id)))
            .update_expression("SET verification_sent_at = :now, meta = :meta")
            // An account past its `ttl` is gone, whenever the TTL gets to
            // deleting it (User::retention_over).
            .condition_expression(format!(
                "attribute_exists(pk) AND verified = :false \
                 AND (attribute_not_exists(verification_sent_at) OR verification_sent_at <= :cut) \
                 AND (attribute_not_exists({TTL_NAME}) OR {TTL_NAME} > :now)"
            ))
            .expression_attribute_names(TTL_NAME, items::TTL)
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":cut", n(now - cooldown_secs))
            .expression_attribute_values(":meta", meta_value(meta)?);
        let token = items::to_item(
            verification,
            items::verification_pk(&verification.token_hash),
            Some(verification.expires_at + TTL_GRACE_SECS),
        )?;
        self.transact(vec![update_item(user)?, put_item(&self.tokens, token, "attribute_not_exists(pk)")?]).await?;
        Ok(())
    }

    async fn give_back_verification_cooldown(
        &self,
        id: &UserId,
        sent_at: Timestamp,
        previous_sent_at: Timestamp,
    ) -> StoreResult<()> {
        self.client
            .update_item()
            .table_name(&self.users)
            .key(PK, s(items::user_pk(id)))
            .update_expression("SET verification_sent_at = :prev")
            .condition_expression("attribute_exists(pk) AND verified = :false AND verification_sent_at = :sent")
            .expression_attribute_values(":prev", n(previous_sent_at))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":sent", n(sent_at))
            .send()
            .await
            .map(|_| ())
            .map_err(map_sdk)
    }

    async fn verification(&self, token_hash: &str) -> StoreResult<Option<VerificationRecord>> {
        self.get(&self.tokens, items::verification_pk(token_hash)).await
    }

    async fn consume_verification(
        &self,
        rec: &VerificationRecord,
        now: Timestamp,
        meta: &RequestMeta,
    ) -> StoreResult<UserId> {
        let meta = meta_value(meta)?;
        // The caller read the token (which names its user); the transaction
        // re-checks the stored token, so a concurrent consume cannot also
        // win and a token that was never stored changes nothing.
        let token_hash = rec.token_hash.as_str();
        let token = Update::builder()
            .table_name(&self.tokens)
            .key(PK, s(items::verification_pk(token_hash)))
            .update_expression("SET used_at = :now, meta = :meta")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(used_at) AND expires_at > :now")
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":meta", meta.clone());
        let user = Update::builder()
            .table_name(&self.users)
            .key(PK, s(items::user_pk(&rec.user_id)))
            // Verified, the account is kept: its TTL goes.
            .update_expression(format!("SET verified = :true, meta = :meta REMOVE {TTL_NAME}"))
            // Past its `ttl`: gone, whenever the TTL gets to deleting it.
            .condition_expression(format!(
                "attribute_exists(pk) AND (attribute_not_exists({TTL_NAME}) OR {TTL_NAME} > :now)"
            ))
            .expression_attribute_names(TTL_NAME, items::TTL)
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":meta", meta);
        self.transact(vec![update_item(token)?, update_item(user)?]).await?;
        Ok(rec.user_id)
    }
}
