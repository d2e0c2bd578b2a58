//! SDK errors translated into `StoreError`, in one place, from the SDK's
//! typed errors and the transaction's per-item reason codes — never from
//! message text.

use crate::StoreError;
use crate::error::Conflict;
use aws_sdk_dynamodb::Error as DynamoError;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::CancellationReason;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

/// Reason codes DynamoDB puts on a cancelled transaction's items.
pub(crate) const CONDITIONAL_CHECK_FAILED: &str = "ConditionalCheckFailed";
/// Another transaction or write held the item: worth trying again.
const TRANSIENT_REASONS: &[&str] =
    &["TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"];

/// The old image an `UpdateItem` or `PutItem` refused by its condition
/// carries (asked for with `ReturnValuesOnConditionCheckFailure::AllOld`;
/// `None` when there was no item); any other error mapped by [`map_sdk`].
pub(crate) fn old_item_on_failed_check<E>(
    err: SdkError<E, HttpResponse>,
) -> Result<Option<super::items::Item>, StoreError>
where
    E: FailedCheck + std::error::Error + Send + Sync + 'static,
    DynamoError: From<E>,
{
    if let SdkError::ServiceError(e) = &err
        && let Some(old) = e.err().old_item()
    {
        return Ok(old.cloned());
    }
    Err(map_sdk(err))
}

/// A conditional write's error: `Ok` when its condition refused it and the
/// item already holds `value` in `attr`, a value only this write puts there
/// (a send of it again by the SDK, after a lost answer, refused by its own
/// first send); else `Conflict(Stale)` for a refusal, and any other error
/// mapped by [`map_sdk`].
pub(crate) fn own_write_or_stale<E>(err: SdkError<E, HttpResponse>, attr: &str, value: &str) -> Result<(), StoreError>
where
    E: FailedCheck + std::error::Error + Send + Sync + 'static,
    DynamoError: From<E>,
{
    match old_item_on_failed_check(err)? {
        Some(old) if super::items::text(&old, attr) == Some(value) => Ok(()),
        _ => Err(StoreError::Conflict(Conflict::Stale)),
    }
}

/// A single-item write's error that may be its condition's refusal.
pub(crate) trait FailedCheck {
    /// `Some` when the condition refused the write, with the old image if
    /// there was an item.
    fn old_item(&self) -> Option<Option<&super::items::Item>>;
}

impl FailedCheck for UpdateItemError {
    fn old_item(&self) -> Option<Option<&super::items::Item>> {
        match self {
            UpdateItemError::ConditionalCheckFailedException(c) => Some(c.item()),
            _ => None,
        }
    }
}

impl FailedCheck for PutItemError {
    fn old_item(&self) -> Option<Option<&super::items::Item>> {
        match self {
            PutItemError::ConditionalCheckFailedException(c) => Some(c.item()),
            _ => None,
        }
    }
}

/// Any DynamoDB call's error as a store error: a failed condition is
/// `Conflict(Stale)`; throttling, 5xx, timeouts and dispatch failures are
/// `Unavailable`; everything else is `Internal`.
pub(crate) fn map_sdk<E>(err: SdkError<E, HttpResponse>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    DynamoError: From<E>,
{
    let server_error = err.raw_response().is_some_and(|r| r.status().is_server_error());
    match err {
        SdkError::ServiceError(e) => map_service(DynamoError::from(e.into_err()), server_error),
        e @ (SdkError::TimeoutError(_) | SdkError::DispatchFailure(_)) => StoreError::unavailable(e),
        e @ SdkError::ResponseError(_) if server_error => StoreError::unavailable(e),
        e => StoreError::internal(e),
    }
}

fn map_service(err: DynamoError, server_error: bool) -> StoreError {
    match err {
        DynamoError::ConditionalCheckFailedException(_) => StoreError::Conflict(Conflict::Stale),
        DynamoError::TransactionCanceledException(e) => {
            let codes = reason_codes(e.cancellation_reasons());
            map_reasons(&codes, DynamoError::TransactionCanceledException(e))
        }
        e @ (DynamoError::ThrottlingException(_)
        | DynamoError::ProvisionedThroughputExceededException(_)
        | DynamoError::RequestLimitExceeded(_)
        | DynamoError::InternalServerError(_)
        | DynamoError::TransactionConflictException(_)
        | DynamoError::TransactionInProgressException(_)
        | DynamoError::ReplicatedWriteConflictException(_)) => StoreError::unavailable(e),
        e if server_error => StoreError::unavailable(e),
        e => StoreError::internal(e),
    }
}

/// One entry per transaction item, in order: `None` where that item was
/// fine, else its reason code.
pub(crate) fn reason_codes(reasons: &[CancellationReason]) -> Vec<Option<String>> {
    reasons.iter().map(|r| r.code().filter(|c| *c != "None").map(str::to_string)).collect()
}

/// A cancelled transaction as a store error: any failed condition makes it
/// a conflict, else contention or throttling makes it unavailable.
fn map_reasons(codes: &[Option<String>], source: DynamoError) -> StoreError {
    let has = |wanted: &[&str]| codes.iter().flatten().any(|c| wanted.contains(&c.as_str()));
    if has(&[CONDITIONAL_CHECK_FAILED]) {
        StoreError::Conflict(Conflict::Stale)
    } else if has(TRANSIENT_REASONS) {
        StoreError::unavailable(source)
    } else {
        StoreError::internal(source)
    }
}

/// Whether a cancelled transaction may succeed if sent again: no condition
/// failed, only contention or throttling got in the way.
pub(crate) fn is_transient(codes: &[Option<String>]) -> bool {
    let mut any = false;
    for c in codes.iter().flatten() {
        if !TRANSIENT_REASONS.contains(&c.as_str()) {
            return false;
        }
        any = true;
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(c: &[&str]) -> Vec<Option<String>> {
        reason_codes(&c.iter().map(|c| CancellationReason::builder().code(*c).build()).collect::<Vec<_>>())
    }

    fn cancelled() -> DynamoError {
        DynamoError::TransactionCanceledException(
            aws_sdk_dynamodb::types::error::TransactionCanceledException::builder().build(),
        )
    }

    #[test]
    fn classifies_cancellation_reasons() {
        let c = codes(&["None", "ConditionalCheckFailed", "TransactionConflict"]);
        assert_eq!(c[0], None);
        assert!(matches!(map_reasons(&c, cancelled()), StoreError::Conflict(Conflict::Stale)));
        assert!(!is_transient(&c));

        let c = codes(&["None", "TransactionConflict"]);
        assert!(matches!(map_reasons(&c, cancelled()), StoreError::Unavailable(_)));
        assert!(is_transient(&c));

        let c = codes(&["ValidationError", "None"]);
        assert!(matches!(map_reasons(&c, cancelled()), StoreError::Internal(_)));
        assert!(!is_transient(&c));
        assert!(!is_transient(&codes(&["None", "None"])));
    }

    #[test]
    fn classifies_service_errors() {
        use aws_sdk_dynamodb::types::error::{
            ConditionalCheckFailedException, ResourceNotFoundException, ThrottlingException,
        };
        let e = DynamoError::ConditionalCheckFailedException(ConditionalCheckFailedException::builder().build());
        assert!(matches!(map_service(e, false), StoreError::Conflict(Conflict::Stale)));
        let e = DynamoError::ThrottlingException(ThrottlingException::builder().build());
        assert!(matches!(map_service(e, false), StoreError::Unavailable(_)));
        let e = DynamoError::ResourceNotFoundException(ResourceNotFoundException::builder().build());
        assert!(matches!(map_service(e, false), StoreError::Internal(_)));
        let e = DynamoError::ResourceNotFoundException(ResourceNotFoundException::builder().build());
        assert!(matches!(map_service(e, true), StoreError::Unavailable(_)));
    }
}
