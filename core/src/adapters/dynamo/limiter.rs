//! `RateLimiter`: fixed-window counters, one item per key and window, all of
//! a request's keys counted in one transaction so a refusal counts nothing.

use super::items::{self, LIMIT_TTL_GRACE_SECS, PK, TTL, TTL_NAME, n, s};
use super::{DynamoStore, update_item};
use crate::StoreError;
use crate::clock::Timestamp;
use crate::ports::{LimitCounter, LimitKey, RateLimiter, StoreResult};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::Update;

/// DynamoDB's cap on the items of one transaction.
const MAX_TRANSACTION_ITEMS: usize = 100;

#[async_trait]
impl RateLimiter for DynamoStore {
    async fn hit(&self, keys: &[LimitKey], now: Timestamp) -> StoreResult<Option<u64>> {
        // Duplicates are merged: a transaction may touch each item only once.
        let counters = LimitCounter::of(keys, now)?;
        if counters.is_empty() {
            return Ok(None);
        }
        if counters.len() > MAX_TRANSACTION_ITEMS {
            return Err(StoreError::internal(format!("{} rate-limit keys in one hit", counters.len())));
        }
        // A limit below the hits asked for refuses whatever the count (the
        // condition below would let a brand-new counter through).
        if let Some(wait) = counters.iter().filter(|c| c.refuses(0)).map(|c| c.retry_after(now)).max() {
            return Ok(Some(wait));
        }
        let mut tx = Vec::with_capacity(counters.len());
        for c in &counters {
            let update = Update::builder()
                .table_name(&self.limits)
                .key(PK, s(items::limit_pk(&c.key, c.window_start)))
                .update_expression(format!("ADD c :hits SET {TTL_NAME} = :ttl"))
                .condition_expression("attribute_not_exists(c) OR c <= :room")
                .expression_attribute_names(TTL_NAME, TTL)
                .expression_attribute_values(":hits", n(c.hits))
                .expression_attribute_values(":ttl", n(c.window_end + LIMIT_TTL_GRACE_SECS))
                .expression_attribute_values(":room", n(c.limit - c.hits));
            tx.push(update_item(update)?);
        }
        match self.transact(tx).await {
            Ok(()) => Ok(None),
            Err(e) => {
                let refused = counters
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| e.check_failed(*i))
                    .map(|(_, c)| c.retry_after(now))
                    .max();
                match refused {
                    Some(wait) => Ok(Some(wait)),
                    None => Err(e.into()),
                }
            }
        }
    }
}
