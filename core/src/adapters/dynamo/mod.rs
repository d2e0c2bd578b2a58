//! The DynamoDB adapter: `UserStore`, `ChallengeStore`, `SessionStore`,
//! `OtpStore` and `RateLimiter` on the three tables of `crate::tables`.
//!
//! Every guard in the port contracts is a DynamoDB condition expression, so
//! each check and its write are one atomic request (a single conditional
//! write, or one `TransactWriteItems` where two items change together).
//! The item layout is in [`items`].

pub mod audit;
mod bootstrap;
mod challenges;
mod errors;
pub mod items;
mod limiter;
pub mod mail_ledger;
mod otp;
mod sessions;
mod users;

pub use bootstrap::ensure_tables;
pub use mail_ledger::DynamoMailLedger;

use crate::StoreError;
use crate::tables;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::builders::{ConditionCheckBuilder, DeleteBuilder, UpdateBuilder};
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use errors::{is_transient, map_sdk, reason_codes};
use items::{Item, PK, s};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// How often a transaction cancelled only by contention (another
/// transaction on the same item) is sent again before giving up as
/// `Unavailable`. Hot items such as rate-limit counters meet this on AWS.
const TRANSACTION_ATTEMPTS: u32 = 5;

/// The DynamoDB store. Cheap to clone (the client is an `Arc` inside); build
/// it once per process from the shared `SdkConfig`.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    users: String,
    tokens: String,
    limits: String,
}

impl DynamoStore {
    /// The store on the tables `{table_prefix}-users`, `-tokens` and
    /// `-rate-limits`.
    pub fn new(client: Client, table_prefix: &str) -> Self {
        DynamoStore {
            client,
            users: tables::table_name(table_prefix, &tables::USERS),
            tokens: tables::table_name(table_prefix, &tables::TOKENS),
            limits: tables::table_name(table_prefix, &tables::RATE_LIMITS),
        }
    }

    /// A strongly consistent read of one item, as an entity.
    async fn get<T: DeserializeOwned>(&self, table: &str, pk: String) -> Result<Option<T>, StoreError> {
        self.get_item(table, pk).await?.map(items::from_item).transpose()
    }

    async fn get_item(&self, table: &str, pk: String) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(table)
            .key(PK, s(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(map_sdk)?;
        Ok(out.item)
    }

    /// Runs one transaction. A cancellation caused only by contention or
    /// throttling is retried (with a fresh idempotency token, after a short
    /// random pause); any other cancellation is returned with its per-item
    /// reason codes so the caller can tell which guard failed.
    async fn transact(&self, transact_items: Vec<TransactWriteItem>) -> Result<(), TxError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The token makes the SDK's own retries of this attempt
            // idempotent: a retry after a lost response succeeds instead of
            // failing its own conditions.
            let token = uuid::Uuid::new_v4().to_string();
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(transact_items.clone()))
                .client_request_token(token)
                .send()
                .await;
            let err = match result {
                Ok(_) => return Ok(()),
                Err(err) => err,
            };
            if let SdkError::ServiceError(e) = &err
                && let TransactWriteItemsError::TransactionCanceledException(c) = e.err()
            {
                let codes = reason_codes(c.cancellation_reasons());
                if is_transient(&codes) && attempt < TRANSACTION_ATTEMPTS {
                    backoff(attempt).await;
                    continue;
                }
                return Err(TxError::Cancelled { codes, error: map_sdk(err) });
            }
            return Err(TxError::Other(map_sdk(err)));
        }
    }
}

/// A transaction item that puts `item` if `condition` holds.
fn put_item(table: &str, item: Item, condition: &str) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression(condition)
        .build()
        .map_err(StoreError::internal)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// A transaction item from an update whose table, key and expressions are
/// set.
fn update_item(update: UpdateBuilder) -> Result<TransactWriteItem, StoreError> {
    Ok(TransactWriteItem::builder().update(update.build().map_err(StoreError::internal)?).build())
}

/// A transaction item that only checks a condition on another item.
fn check_item(check: ConditionCheckBuilder) -> Result<TransactWriteItem, StoreError> {
    Ok(TransactWriteItem::builder().condition_check(check.build().map_err(StoreError::internal)?).build())
}

/// A transaction item from a delete whose table, key and condition are set.
fn delete_item(delete: DeleteBuilder) -> Result<TransactWriteItem, StoreError> {
    Ok(TransactWriteItem::builder().delete(delete.build().map_err(StoreError::internal)?).build())
}

async fn backoff(attempt: u32) {
    let cap_ms = 10u64 << attempt.min(6);
    let ms = rand::random_range(cap_ms / 2..=cap_ms);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Why a transaction failed.
#[derive(Debug)]
enum TxError {
    /// The transaction was cancelled: one reason code per item, in order
    /// (`None` where that item was fine), and the default translation.
    Cancelled {
        codes: Vec<Option<String>>,
        error: StoreError,
    },
    Other(StoreError),
}

impl TxError {
    /// Whether item `index`'s condition failed.
    fn check_failed(&self, index: usize) -> bool {
        match self {
            TxError::Cancelled { codes, .. } => {
                codes.get(index).and_then(Option::as_deref) == Some(errors::CONDITIONAL_CHECK_FAILED)
            }
            TxError::Other(_) => false,
        }
    }
}

impl From<TxError> for StoreError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Cancelled { error, .. } | TxError::Other(error) => error,
        }
    }
}
