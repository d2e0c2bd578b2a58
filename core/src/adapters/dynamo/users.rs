//! `UserStore`: user items, their username/email claims, and verification
//! tokens.

use super::errors::{map_sdk, old_item_on_failed_check};
use super::items::{self, Item, PK, TTL_GRACE_SECS, epoch_value, n, next_epoch, s, unchanged_since};
use super::{DynamoStore, delete_item, put_item, update_item};
use crate::clock::Timestamp;
use crate::domain::{Email, RequestMeta, SessionId, User, UserId, Username, VerificationRecord};
use crate::error::Conflict;
use crate::ports::{StoreResult, UserStore};
use crate::{StoreError, tables};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};

/// Rounds of "count, else lock" before `record_login_failure` gives up;
/// each round only repeats when another request changed the user between
/// the two conditional writes.
const LOGIN_FAILURE_ROUNDS: u32 = 4;

/// Rounds of "register, else read the holders and take over" before a
/// registration whose names keep changing hands gives up (as taken).
const REGISTRATION_ROUNDS: u32 = 3;

/// Index of the username and email claims in `create_user`'s transaction.
const USERNAME_CLAIM: usize = 1;
const EMAIL_CLAIM: usize = 2;

const UNLOCKED: &str = "(attribute_not_exists(locked_until) OR locked_until <= :now)";

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

impl DynamoStore {
    /// `create_user`'s transaction: the user, its two claims, its first
    /// verification token. A claim is put if it is absent or, given the id
    /// of the account holding it, if it still names that account.
    fn registration(
        &self,
        user: &User,
        verification: &VerificationRecord,
        username_holder: Option<&UserId>,
        email_holder: Option<&UserId>,
    ) -> StoreResult<Vec<TransactWriteItem>> {
        let absent = "attribute_not_exists(pk)";
        let claim = |pk: String, holder: Option<&UserId>| -> StoreResult<TransactWriteItem> {
            let item: Item = [(PK.to_string(), s(pk)), ("user_id".to_string(), s(user.id.to_string()))].into();
            let put = Put::builder().table_name(&self.users).set_item(Some(item));
            let put = match holder {
                None => put.condition_expression(absent),
                Some(h) => put
                    .condition_expression("user_id = :holder")
                    .expression_attribute_values(":holder", s(h.to_string())),
            };
            Ok(TransactWriteItem::builder().put(put.build().map_err(StoreError::internal)?).build())
        };
        Ok(vec![
            put_item(&self.users, items::to_item(user, items::user_pk(&user.id), None)?, absent)?,
            claim(items::username_claim_pk(user.username.as_str()), username_holder)?,
            claim(items::email_claim_pk(user.email.as_str()), email_holder)?,
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

    /// The user a claim item names (`None`: the claim or its user is gone,
    /// which a registration cannot tell from a taken name).
    async fn claim_holder(&self, claim_pk: String) -> StoreResult<Option<User>> {
        let Some(claim) = self.get_item(&self.users, claim_pk).await? else { return Ok(None) };
        let Some(id) = claim.get("user_id").and_then(|v| v.as_s().ok()).and_then(|id| UserId::parse(id)) else {
            return Ok(None);
        };
        self.get(&self.users, items::user_pk(&id)).await
    }

    /// The registration again, taking each name over from the unverified
    /// account holding it: that account's item and its other claims are
    /// deleted in the same transaction, each only if it is still what was
    /// read (unverified, created before the cut-off, the claim naming it).
    /// `None`: something changed since the read (a holder verified, or
    /// another registration took the same account over), so the caller
    /// looks again.
    async fn replace_unverified(
        &self,
        user: &User,
        verification: &VerificationRecord,
        username_holder: Option<User>,
        email_holder: Option<User>,
        before: Timestamp,
    ) -> StoreResult<Option<Vec<UserId>>> {
        let mut tx = self.registration(
            user,
            verification,
            username_holder.as_ref().map(|u| &u.id),
            email_holder.as_ref().map(|u| &u.id),
        )?;
        let mut replaced: Vec<User> = Vec::new();
        for old in [username_holder, email_holder].into_iter().flatten() {
            if !replaced.iter().any(|r| r.id == old.id) {
                replaced.push(old);
            }
        }
        // Each only while it is what was read.
        let delete = |pk: String, condition: &str| {
            Delete::builder().table_name(&self.users).key(PK, s(pk)).condition_expression(condition)
        };
        for old in &replaced {
            tx.push(delete_item(
                delete(items::user_pk(&old.id), "verified = :false AND created_at < :before")
                    .expression_attribute_values(":false", AttributeValue::Bool(false))
                    .expression_attribute_values(":before", n(before)),
            )?);
            // Its claims that the new account's puts do not overwrite.
            let named = |pk| delete(pk, "user_id = :old").expression_attribute_values(":old", s(old.id.to_string()));
            if old.username != user.username {
                tx.push(delete_item(named(items::username_claim_pk(old.username.as_str())))?);
            }
            if old.email != user.email {
                tx.push(delete_item(named(items::email_claim_pk(old.email.as_str())))?);
            }
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
}

#[async_trait]
impl UserStore for DynamoStore {
    async fn create_user(
        &self,
        user: &User,
        verification: &VerificationRecord,
        replace_unverified_before: Timestamp,
    ) -> StoreResult<Vec<UserId>> {
        let mut taken = Conflict::UsernameTaken;
        for _ in 0..REGISTRATION_ROUNDS {
            let e = match self.transact(self.registration(user, verification, None, None)?).await {
                Ok(()) => return Ok(Vec::new()),
                Err(e) if e.check_failed(USERNAME_CLAIM) || e.check_failed(EMAIL_CLAIM) => e,
                Err(e) => return Err(e.into()),
            };
            // Only a refused registration pays for these reads (both names'
            // at once).
            let holder = |failed: bool, pk: String| async move {
                match failed {
                    true => self.claim_holder(pk).await.map(Some),
                    false => Ok(None),
                }
            };
            let (username_holder, email_holder) = tokio::try_join!(
                holder(e.check_failed(USERNAME_CLAIM), items::username_claim_pk(user.username.as_str())),
                holder(e.check_failed(EMAIL_CLAIM), items::email_claim_pk(user.email.as_str())),
            )?;
            let held = |h: &Option<Option<User>>| match h {
                None => Some(true),
                // The claim or its holder went since the put failed: taken
                // over by another registration meanwhile.
                Some(None) => None,
                Some(Some(u)) => Some(!u.verified && u.created_at < replace_unverified_before),
            };
            taken = if username_holder.is_some() { Conflict::UsernameTaken } else { Conflict::EmailTaken };
            match (held(&username_holder), held(&email_holder)) {
                (Some(false), _) => return Err(StoreError::Conflict(Conflict::UsernameTaken)),
                (_, Some(false)) => return Err(StoreError::Conflict(Conflict::EmailTaken)),
                (None, _) | (_, None) => continue,
                (Some(true), Some(true)) => {}
            }
            let (username_holder, email_holder) = (username_holder.flatten(), email_holder.flatten());
            if let Some(replaced) = self
                .replace_unverified(user, verification, username_holder, email_holder, replace_unverified_before)
                .await?
            {
                return Ok(replaced);
            }
        }
        Err(StoreError::Conflict(taken))
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
    ) -> StoreResult<User> {
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
                Ok(user) => return Ok(user),
                Err(None) => return Err(StoreError::Conflict(Conflict::Stale)),
                Err(Some(old)) => {
                    let old: User = items::from_item(old)?;
                    if old.is_locked(now) {
                        return Ok(old);
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
                Ok(user) => return Ok(user),
                Err(None) => return Err(StoreError::Conflict(Conflict::Stale)),
                Err(Some(old)) => {
                    let old: User = items::from_item(old)?;
                    if old.is_locked(now) {
                        return Ok(old);
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
        link_issued_at: Timestamp,
        expected_epoch: u64,
        phc: &str,
        now: Timestamp,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let result = self
            .client
            .update_item()
            .table_name(&self.users)
            .key(PK, s(items::user_pk(id)))
            .update_expression(
                "SET password_hash = :h, sessions_valid_after = :now, password_reset_at = :now, \
                 failed_logins = :zero, otp_failures = :zero, meta = :meta, password_epoch = :next REMOVE locked_until",
            )
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":epoch", epoch_value(expected_epoch))
            .expression_attribute_values(":next", epoch_value(next_epoch(expected_epoch)?))
            .condition_expression(format!(
                "attribute_exists(pk) AND (attribute_not_exists(password_reset_at) OR password_reset_at < :issued) \
                 AND (attribute_not_exists(sessions_valid_after) OR sessions_valid_after <= :now) AND {}",
                unchanged_since(expected_epoch)
            ))
            .expression_attribute_values(":h", s(phc))
            .expression_attribute_values(":issued", n(link_issued_at))
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
            return match old_item_on_failed_check(err)? {
                Some(old) if items::text(&old, "password_hash") == Some(phc) => Ok(()),
                _ => Err(StoreError::Conflict(Conflict::Stale)),
            };
        }
        Ok(())
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
            .condition_expression(
                "attribute_exists(pk) AND verified = :false \
                 AND (attribute_not_exists(verification_sent_at) OR verification_sent_at <= :cut)",
            )
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
            .update_expression("SET verified = :true, meta = :meta")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":meta", meta);
        self.transact(vec![update_item(token)?, update_item(user)?]).await?;
        Ok(rec.user_id)
    }
}
