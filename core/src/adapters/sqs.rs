//! The SQS mail queue: `MailQueue` on `{prefix}-mail`, whose dead-letter
//! queue `{prefix}-mail-dlq` parks jobs that failed
//! `tables::MAIL_MAX_RECEIVE_COUNT` times.

use crate::StoreError;
use crate::mail::MailEnvelope;
use crate::ports::{MailQueue, StoreResult};
use crate::tables;
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::SdkError;
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

/// A dead letter is kept 14 days (the SQS maximum) for a human to look at.
const DLQ_RETENTION_SECS: u32 = 14 * 24 * 3600;
/// Longer than one SES send with its retries, so a job being worked on is
/// not handed to a second consumer.
const VISIBILITY_TIMEOUT_SECS: u32 = 60;

/// Enqueues mail jobs on SQS. Build it once per process.
#[derive(Debug, Clone)]
pub struct SqsMailQueue {
    client: Client,
    queue_url: String,
}

impl SqsMailQueue {
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        SqsMailQueue { client, queue_url: queue_url.into() }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }
}

fn string_attribute(value: &str) -> StoreResult<MessageAttributeValue> {
    MessageAttributeValue::builder().data_type("String").string_value(value).build().map_err(StoreError::internal)
}

#[async_trait]
impl MailQueue for SqsMailQueue {
    async fn enqueue(&self, job: &MailEnvelope) -> StoreResult<()> {
        // The attributes let a consumer or an operator route and trace a job
        // without opening the body, which holds the code or link.
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(job.to_json())
            .message_attributes("kind", string_attribute(job.job.kind())?)
            .message_attributes("job_id", string_attribute(&job.id)?)
            .send()
            .await
            .map_err(map_sdk)?;
        Ok(())
    }
}

/// Creates the mail queue and its dead-letter queue where missing (for the
/// emulator and tests; Terraform owns them on AWS). Returns the queue URL
/// and the DLQ URL.
pub async fn ensure_queues(client: &Client, prefix: &str) -> Result<(String, String), StoreError> {
    let dlq_url = client
        .create_queue()
        .queue_name(tables::queue_name(prefix, tables::MAIL_DLQ))
        .attributes(QueueAttributeName::MessageRetentionPeriod, DLQ_RETENTION_SECS.to_string())
        .send()
        .await
        .map_err(map_sdk)?
        .queue_url
        .ok_or_else(|| StoreError::internal("CreateQueue returned no URL"))?;
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(map_sdk)?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| StoreError::internal("GetQueueAttributes returned no QueueArn"))?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": tables::MAIL_MAX_RECEIVE_COUNT,
    });
    let queue_url = client
        .create_queue()
        .queue_name(tables::queue_name(prefix, tables::MAIL_QUEUE))
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .attributes(QueueAttributeName::VisibilityTimeout, VISIBILITY_TIMEOUT_SECS.to_string())
        .send()
        .await
        .map_err(map_sdk)?
        .queue_url
        .ok_or_else(|| StoreError::internal("CreateQueue returned no URL"))?;
    Ok((queue_url, dlq_url))
}

/// An SQS error as a store error: throttling, 5xx, timeouts and dispatch
/// failures are `Unavailable`, everything else (a missing queue, a bad
/// message) `Internal`.
fn map_sdk<E>(err: SdkError<E, HttpResponse>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    aws_sdk_sqs::Error: From<E>,
{
    let server_error = err.raw_response().is_some_and(|r| r.status().is_server_error());
    match err {
        SdkError::ServiceError(e) => match aws_sdk_sqs::Error::from(e.into_err()) {
            e @ (aws_sdk_sqs::Error::RequestThrottled(_) | aws_sdk_sqs::Error::KmsThrottled(_)) => {
                StoreError::unavailable(e)
            }
            e if server_error => StoreError::unavailable(e),
            e => StoreError::internal(e),
        },
        e @ (SdkError::TimeoutError(_) | SdkError::DispatchFailure(_)) => StoreError::unavailable(e),
        e @ SdkError::ResponseError(_) if server_error => StoreError::unavailable(e),
        e => StoreError::internal(e),
    }
}
