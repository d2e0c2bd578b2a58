//! `RateLimiter`: fixed-window counters, one item per key and window, all of
//! a request's keys counted in one transaction so a refusal counts nothing.

use super::items::{self, LIMIT_TTL_GRACE_SECS, PK, TTL, TTL_NAME, n, s};
use super::{DynamoStore, update_item};
use crate::StoreError;
use crate::clock::Timestamp;
use crate::ports::{LimitKey, RateLimiter, StoreResult};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::Update;

/// DynamoDB's cap on the items of one transaction.
const MAX_TRANSACTION_ITEMS: usize = 100;

/// One counter item this request hits: `hits` times (the same key and
/// window given more than once), at most `limit` per window.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counter {
    pk: String,
    hits: u32,
    limit: u32,
    /// Seconds from `now` until the window ends.
    retry_after: u64,
}

/// The counters for `keys` at `now`, with duplicates merged (a transaction
/// may touch each item only once).
fn counters(keys: &[LimitKey], now: Timestamp) -> StoreResult<Vec<Counter>> {
    let mut out: Vec<Counter> = Vec::with_capacity(keys.len());
    for k in keys {
        if k.window_secs <= 0 {
            return Err(StoreError::internal(format!("rate limit `{}` has a window of {} s", k.key, k.window_secs)));
        }
        let window_start = now - now.rem_euclid(k.window_secs);
        let pk = items::limit_pk(&k.key, window_start);
        let retry_after = (window_start + k.window_secs - now) as u64;
        match out.iter_mut().find(|c| c.pk == pk) {
            Some(c) => {
                c.hits += 1;
                c.limit = c.limit.min(k.limit);
                c.retry_after = c.retry_after.max(retry_after);
            }
            None => out.push(Counter { pk, hits: 1, limit: k.limit, retry_after }),
        }
    }
    Ok(out)
}

#[async_trait]
impl RateLimiter for DynamoStore {
    async fn hit(&self, keys: &[LimitKey], now: Timestamp) -> StoreResult<Option<u64>> {
        let counters = counters(keys, now)?;
        if counters.is_empty() {
            return Ok(None);
        }
        if counters.len() > MAX_TRANSACTION_ITEMS {
            return Err(StoreError::internal(format!("{} rate-limit keys in one hit", counters.len())));
        }
        // A limit below the hits asked for refuses whatever the count (the
        // condition below would let a brand-new counter through).
        if let Some(wait) = counters.iter().filter(|c| c.limit < c.hits).map(|c| c.retry_after).max() {
            return Ok(Some(wait));
        }
        let mut tx = Vec::with_capacity(counters.len());
        for c in &counters {
            let window_end = now + c.retry_after as i64;
            let update = Update::builder()
                .table_name(&self.limits)
                .key(PK, s(c.pk.clone()))
                .update_expression(format!("ADD c :hits SET {TTL_NAME} = :ttl"))
                .condition_expression("attribute_not_exists(c) OR c <= :room")
                .expression_attribute_names(TTL_NAME, TTL)
                .expression_attribute_values(":hits", n(c.hits))
                .expression_attribute_values(":ttl", n(window_end + LIMIT_TTL_GRACE_SECS))
                .expression_attribute_values(":room", n(c.limit - c.hits));
            tx.push(update_item(update)?);
        }
        match self.transact(tx).await {
            Ok(()) => Ok(None),
            Err(e) => {
                let refused =
                    counters.iter().enumerate().filter(|(i, _)| e.check_failed(*i)).map(|(_, c)| c.retry_after).max();
                match refused {
                    Some(wait) => Ok(Some(wait)),
                    None => Err(e.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str, limit: u32, window_secs: i64) -> LimitKey {
        LimitKey { key: k.into(), limit, window_secs }
    }

    #[test]
    fn windows_align_to_the_clock() {
        let c = counters(&[key("a", 5, 60), key("b", 3, 3600)], 7_265).unwrap();
        assert_eq!(c[0], Counter { pk: "RL#a#7260".into(), hits: 1, limit: 5, retry_after: 55 });
        assert_eq!(c[1], Counter { pk: "RL#b#7200".into(), hits: 1, limit: 3, retry_after: 3_535 });
        // At the first second of a window the whole window is left.
        assert_eq!(counters(&[key("a", 5, 60)], 7_260).unwrap()[0].retry_after, 60);
    }

    #[test]
    fn merges_duplicate_keys_and_rejects_bad_windows() {
        let c = counters(&[key("a", 5, 60), key("a", 3, 60)], 100).unwrap();
        assert_eq!(c, vec![Counter { pk: "RL#a#60".into(), hits: 2, limit: 3, retry_after: 20 }]);
        assert!(counters(&[key("a", 5, 0)], 100).is_err());
    }
}
