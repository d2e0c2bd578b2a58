//! `OtpStore`: standalone one-time codes in the tokens table, one item per
//! address (keyed by its keyed hash).

use super::DynamoStore;
use super::errors::{map_sdk, own_write_or_stale};
use super::items::{self, PK, TTL_GRACE_SECS, n, s};
use super::users::meta_value;
use crate::StoreError;
use crate::clock::Timestamp;
use crate::domain::{OtpRecord, RequestMeta};
use crate::ports::{OtpStore, StoreResult};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};

impl DynamoStore {
    /// Takes an attempt on the code item `pk` (a login challenge or a
    /// standalone code): `ADD attempts 1`, only if it exists, is unused, is
    /// within its attempt and failure caps (an item from before `attempts`
    /// existed has had none) and has not expired; the item as it is after.
    pub(super) async fn take_attempt<T: serde::de::DeserializeOwned>(
        &self,
        pk: String,
        now: Timestamp,
        max_attempts: u32,
    ) -> StoreResult<T> {
        let out = self
            .client
            .update_item()
            .table_name(&self.tokens)
            .key(PK, s(pk))
            .update_expression("ADD attempts :one")
            .condition_expression(
                "attribute_exists(pk) AND attribute_not_exists(used_at) AND failures < :max \
                 AND (attempts < :max OR attribute_not_exists(attempts)) AND expires_at > :now",
            )
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":max", n(max_attempts))
            .expression_attribute_values(":now", n(now))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(map_sdk)?;
        items::from_item(out.attributes.ok_or_else(|| StoreError::internal("UpdateItem returned no attributes"))?)
    }

    /// Gives back a send of the code item `pk` whose mail was not queued:
    /// `last_sent_at = previous_sent_at` (and, for a login's resend,
    /// `resends - 1`), only if the item still has `code_hash` and
    /// `last_sent_at = sent_at`.
    pub(super) async fn give_back_send(
        &self,
        pk: String,
        code_hash: &str,
        sent_at: Timestamp,
        previous_sent_at: Timestamp,
        resend: bool,
    ) -> StoreResult<()> {
        let (update, condition) = if resend {
            ("SET last_sent_at = :prev ADD resends :minus_one", " AND resends > :zero")
        } else {
            ("SET last_sent_at = :prev", "")
        };
        let req = self
            .client
            .update_item()
            .table_name(&self.tokens)
            .key(PK, s(pk))
            .update_expression(update)
            .condition_expression(format!(
                "attribute_exists(pk) AND code_hash = :h AND last_sent_at = :sent{condition}"
            ))
            .expression_attribute_values(":prev", n(previous_sent_at))
            .expression_attribute_values(":h", s(code_hash))
            .expression_attribute_values(":sent", n(sent_at));
        let req = if resend {
            req.expression_attribute_values(":minus_one", n(-1)).expression_attribute_values(":zero", n(0))
        } else {
            req
        };
        req.send().await.map(|_| ()).map_err(map_sdk)
    }
}

#[async_trait]
impl OtpStore for DynamoStore {
    async fn otp(&self, address_hash: &str) -> StoreResult<Option<OtpRecord>> {
        self.get(&self.tokens, items::otp_pk(address_hash)).await
    }

    async fn put_otp(&self, record: &OtpRecord, expected: Option<&OtpRecord>) -> StoreResult<()> {
        // The TTL's grace covers the failure budget's window: the item, and
        // the wrong codes it counts, outlive the code by at least that.
        const _: () = assert!(TTL_GRACE_SECS >= OtpRecord::BUDGET_WINDOW_SECS);
        let mut item =
            items::to_item(record, items::otp_pk(&record.address_hash), Some(record.expires_at + TTL_GRACE_SECS))?;
        // Marks the item as this call's write, so that a send of it again
        // (the SDK's, after a lost answer) can tell its own write from
        // another request's.
        let send_id = items::write_mark();
        item.insert("send_id".into(), s(send_id.clone()));
        let req = self.client.put_item().table_name(&self.tokens).set_item(Some(item));
        let req = match expected {
            None => req.condition_expression("attribute_not_exists(pk)"),
            // An item from before `attempts` existed has had none taken.
            Some(e) => {
                let req = req
                    .expression_attribute_values(":sent", n(e.last_sent_at))
                    .expression_attribute_values(":failures", n(e.failures))
                    .expression_attribute_values(":attempts", n(e.attempts));
                let guard = "last_sent_at = :sent AND failures = :failures \
                     AND (attempts = :attempts OR attribute_not_exists(attempts))";
                // A code redeemed since the read: its right code gave the
                // budget back, which the new record must not undo.
                match e.used_at {
                    None => req.condition_expression(format!("{guard} AND attribute_not_exists(used_at)")),
                    Some(at) => req
                        .condition_expression(format!("{guard} AND used_at = :used"))
                        .expression_attribute_values(":used", n(at)),
                }
            }
        };
        match req.return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld).send().await {
            Ok(_) => Ok(()),
            // Not a send that raced this one (which would leave the code
            // unmailed) when the item carries this call's mark.
            Err(err) => own_write_or_stale(err, "send_id", &send_id),
        }
    }

    async fn take_otp_attempt(&self, address_hash: &str, now: Timestamp, max_attempts: u32) -> StoreResult<OtpRecord> {
        self.take_attempt(items::otp_pk(address_hash), now, max_attempts).await
    }

    async fn redeem_otp(
        &self,
        address_hash: &str,
        code_hash: &str,
        now: Timestamp,
        max_failures: u32,
        budget: u32,
        meta: &RequestMeta,
    ) -> StoreResult<()> {
        // Marks the item as this call's redemption, so that a send of it
        // again (the SDK's, after a lost answer) can tell its own write from
        // another request's.
        let redemption_id = items::write_mark();
        let result = self
            .client
            .update_item()
            .table_name(&self.tokens)
            .key(PK, s(items::otp_pk(address_hash)))
            .update_expression("SET used_at = :now, meta = :meta, budget_failures = :zero, redemption_id = :redemption")
            .condition_expression(
                "attribute_exists(pk) AND attribute_not_exists(used_at) AND code_hash = :h \
                 AND failures < :max AND expires_at > :now AND (budget_failures < :budget \
                 OR attribute_not_exists(budget_failures))",
            )
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":h", s(code_hash))
            .expression_attribute_values(":max", n(max_failures))
            .expression_attribute_values(":budget", n(budget))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":meta", meta_value(meta)?)
            .expression_attribute_values(":redemption", s(redemption_id.clone()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // A refusal of this redemption sent again, by its own first
            // send: the code is used, by this call (else the right code
            // would be spent and its owner told it failed).
            Err(err) => own_write_or_stale(err, "redemption_id", &redemption_id),
        }
    }

    async fn record_otp_failure(
        &self,
        address_hash: &str,
        max_failures: u32,
        budget: u32,
        meta: &RequestMeta,
    ) -> StoreResult<u32> {
        let out = self
            .client
            .update_item()
            .table_name(&self.tokens)
            .key(PK, s(items::otp_pk(address_hash)))
            .update_expression("SET meta = :meta ADD failures :one, budget_failures :one")
            .condition_expression(
                "attribute_exists(pk) AND attribute_not_exists(used_at) AND failures < :max \
                 AND (budget_failures < :budget OR attribute_not_exists(budget_failures))",
            )
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":max", n(max_failures))
            .expression_attribute_values(":budget", n(budget))
            .expression_attribute_values(":meta", meta_value(meta)?)
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(map_sdk)?;
        let attrs = out.attributes.ok_or_else(|| StoreError::internal("UpdateItem returned no attributes"))?;
        items::number(&attrs, "failures")
    }

    async fn give_back_otp_cooldown(
        &self,
        address_hash: &str,
        code_hash: &str,
        sent_at: Timestamp,
        previous_sent_at: Timestamp,
    ) -> StoreResult<()> {
        self.give_back_send(items::otp_pk(address_hash), code_hash, sent_at, previous_sent_at, false).await
    }
}
