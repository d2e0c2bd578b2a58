//! `SessionStore`: sessions in the tokens table (created by
//! `redeem_challenge`).

use super::DynamoStore;
use super::errors::{map_sdk, old_item_on_failed_check};
use super::items::{self, Item, PK, n, s};
use super::users::meta_value;
use crate::StoreError;
use crate::clock::Timestamp;
use crate::domain::{RequestMeta, Session, SessionId, UserId};
use crate::error::Conflict;
use crate::ports::{SessionStore, StoreResult};
use crate::tables;
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;

impl DynamoStore {
    /// Every item of the tokens table that the `by_user` index lists for
    /// `user_id`, page by page; `shape` adds a filter or a projection to
    /// each page's query.
    pub(super) async fn items_of_user(
        &self,
        user_id: &UserId,
        shape: impl Fn(QueryFluentBuilder) -> QueryFluentBuilder,
    ) -> StoreResult<Vec<Item>> {
        let gsi = &tables::TOKENS.gsis[0];
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let query = self
                .client
                .query()
                .table_name(&self.tokens)
                .index_name(gsi.name)
                .key_condition_expression("#u = :u")
                .expression_attribute_names("#u", gsi.hash_key)
                .expression_attribute_values(":u", s(user_id.to_string()));
            let out = shape(query).set_exclusive_start_key(start).send().await.map_err(map_sdk)?;
            found.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(found),
            }
        }
    }
}

#[async_trait]
impl SessionStore for DynamoStore {
    async fn session(&self, id: &SessionId) -> StoreResult<Option<Session>> {
        self.get(&self.tokens, items::session_pk(id)).await
    }

    async fn rotate_session(
        &self,
        id: &SessionId,
        old_hash: &str,
        new_hash: &str,
        retry_seal: &str,
        now: Timestamp,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        let result = self
            .client
            .update_item()
            .table_name(&self.tokens)
            .key(PK, s(items::session_pk(id)))
            .update_expression(
                "SET refresh_hash = :new, retry_seal = :seal, refreshed_at = :now, meta = :meta ADD generation :one",
            )
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(revoked_at) AND refresh_hash = :old")
            .expression_attribute_values(":new", s(new_hash))
            .expression_attribute_values(":old", s(old_hash))
            .expression_attribute_values(":seal", s(retry_seal))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":meta", meta_value(meta)?)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // The SDK sends a request again when its answer was lost: if an
            // earlier send of this one was applied, the session already holds
            // this rotation's new hash (from a fresh secret), and the refusal
            // is of the retry by its own write, not a reuse.
            Err(err) => match old_item_on_failed_check(err)? {
                Some(old) if items::text(&old, "refresh_hash") == Some(new_hash) && !old.contains_key("revoked_at") => {
                    Ok(())
                }
                _ => Err(StoreError::Conflict(Conflict::Stale)),
            },
        }
    }

    async fn revoke_session(
        &self,
        id: &SessionId,
        now: Timestamp,
        reason: &str,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        // The condition keeps the first revocation and never writes a
        // phantom item for an unknown id; either way the answer is Ok.
        let result = self
            .client
            .update_item()
            .table_name(&self.tokens)
            .key(PK, s(items::session_pk(id)))
            .update_expression("SET revoked_at = :now, revoke_reason = :reason, meta = :meta")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(revoked_at)")
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":meta", meta_value(meta)?)
            .send()
            .await
            .map_err(map_sdk);
        match result {
            Ok(_) | Err(StoreError::Conflict(Conflict::Stale)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn live_sessions_of(&self, user_id: &UserId, now: Timestamp) -> StoreResult<Vec<Session>> {
        self.items_of_user(user_id, |q| {
            q.filter_expression("begins_with(pk, :p) AND attribute_not_exists(revoked_at) AND expires_at > :now")
                .expression_attribute_values(":p", s(items::session_pk(&"")))
                .expression_attribute_values(":now", n(now))
        })
        .await?
        .into_iter()
        .map(items::from_item)
        .collect()
    }

    async fn record_refresh_retry(&self, id: &SessionId, current_hash: &str, meta: &RequestMeta) -> StoreResult<()> {
        // A send of it again by the SDK (after a lost answer) counts it
        // twice: two audit events for one retry, nothing else.
        self.client
            .update_item()
            .table_name(&self.tokens)
            .key(PK, s(items::session_pk(id)))
            .update_expression("SET meta = :meta ADD retries_answered :one")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(revoked_at) AND refresh_hash = :cur")
            .expression_attribute_values(":cur", s(current_hash))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":meta", meta_value(meta)?)
            .send()
            .await
            .map_err(map_sdk)?;
        Ok(())
    }
}
