//! The local stand-in for the Lambda event source mapping: receives from
//! the real SQS queue (on the emulator, or a dev account), builds the same
//! `SqsEvent` JSON Lambda would deliver, calls [`crate::handle`], deletes
//! what was handled and leaves the reported failures to the visibility
//! timeout, so SQS's own redrive to the DLQ happens for real.

use crate::{BoxError, Worker, handle};
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName};
use base64::Engine;
use serde_json::{Map, Value, json};
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;

/// Receives from one queue. Build once; `poll_once` as often as you like.
#[derive(Debug, Clone)]
pub struct Poller {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    queue_arn: String,
    region: String,
    visibility: Duration,
    /// Long-poll wait per receive (short: the poller should stop promptly).
    pub wait_secs: i32,
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollStats {
    pub received: usize,
    pub handled: usize,
    pub failed: usize,
}

impl Poller {
    /// Reads the queue's ARN and visibility timeout once.
    pub async fn new(sqs: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Result<Self, BoxError> {
        let queue_url = queue_url.into();
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await?
            .attributes
            .unwrap_or_default();
        let queue_arn = attrs.get(&QueueAttributeName::QueueArn).cloned().ok_or("queue has no ARN")?;
        let visibility = attrs
            .get(&QueueAttributeName::VisibilityTimeout)
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Duration::from_secs(30), Duration::from_secs);
        let region = queue_arn.split(':').nth(3).unwrap_or("us-east-1").to_string();
        Ok(Poller { sqs, queue_url, queue_arn, region, visibility, wait_secs: 1 })
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// One ReceiveMessage (up to 10), handled as one Lambda batch. The
    /// batch must finish within the visibility timeout, so it gets that
    /// less a margin as its deadline.
    pub async fn poll_once(&self, worker: &Worker) -> Result<PollStats, BoxError> {
        let messages = self.receive().await?;
        self.handle_batch(worker, messages).await
    }

    /// One ReceiveMessage (up to 10). Safe to drop at any point: a message
    /// received and not handled comes back after the visibility timeout.
    pub async fn receive(&self) -> Result<Vec<aws_sdk_sqs::types::Message>, BoxError> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(self.wait_secs)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await?;
        Ok(out.messages.unwrap_or_default())
    }

    /// `messages` handled as one Lambda batch, then the handled ones
    /// deleted. Not to be dropped midway: a send cut off there may have
    /// reached SES without its ledger record or its delete, and would wait
    /// out its claim's lease.
    pub async fn handle_batch(
        &self,
        worker: &Worker,
        messages: Vec<aws_sdk_sqs::types::Message>,
    ) -> Result<PollStats, BoxError> {
        if messages.is_empty() {
            return Ok(PollStats::default());
        }
        let event = self.event(&messages)?;
        let margin = Duration::from_secs(2).min(self.visibility / 4);
        let deadline = Instant::now() + self.visibility.saturating_sub(margin).max(Duration::from_millis(500));
        let response = handle(event, worker, deadline).await;
        let failed: HashSet<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
        let done: Vec<DeleteMessageBatchRequestEntry> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.message_id().is_some_and(|id| !failed.contains(id)))
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle()?)
                    .build()
                    .ok()
            })
            .collect();
        let handled = done.len();
        if !done.is_empty() {
            let out = self.sqs.delete_message_batch().queue_url(&self.queue_url).set_entries(Some(done)).send().await?;
            for f in out.failed {
                // Left in the queue: redelivered, then found sent in the ledger.
                tracing::warn!(entry = f.id, code = f.code, "could not delete a handled message");
            }
        }
        Ok(PollStats { received: messages.len(), handled, failed: failed.len() })
    }

    /// The `SqsEvent` Lambda would build for these messages, through the
    /// same JSON shape (so the handler sees exactly what it sees on AWS).
    pub fn event(&self, messages: &[aws_sdk_sqs::types::Message]) -> Result<SqsEvent, BoxError> {
        let records: Vec<Value> = messages.iter().map(|m| self.record(m)).collect();
        let event: SqsEvent = serde_json::from_value(json!({ "Records": records }))?;
        Ok(event)
    }

    fn record(&self, m: &aws_sdk_sqs::types::Message) -> Value {
        let attributes: Map<String, Value> = m
            .attributes()
            .map(|a| a.iter().map(|(k, v)| (k.as_str().to_string(), Value::String(v.clone()))).collect())
            .unwrap_or_default();
        let message_attributes: Map<String, Value> = m
            .message_attributes()
            .map(|a| {
                a.iter()
                    .map(|(k, v)| {
                        let b64 = base64::engine::general_purpose::STANDARD;
                        (
                            k.clone(),
                            json!({
                                "stringValue": v.string_value(),
                                "binaryValue": v.binary_value().map(|b| b64.encode(b.as_ref())),
                                "stringListValues": v.string_list_values(),
                                "binaryListValues": v.binary_list_values().iter().map(|b| b64.encode(b.as_ref())).collect::<Vec<_>>(),
                                "dataType": v.data_type(),
                            }),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "messageId": m.message_id(),
            "receiptHandle": m.receipt_handle(),
            "body": m.body(),
            "md5OfBody": m.md5_of_body(),
            "md5OfMessageAttributes": m.md5_of_message_attributes(),
            "attributes": attributes,
            "messageAttributes": message_attributes,
            "eventSourceARN": self.queue_arn,
            "eventSource": "aws:sqs",
            "awsRegion": self.region,
        })
    }
}

/// A record built by hand, for callers that feed `handle` directly.
pub fn record(message_id: &str, body: &str) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(message_id.to_string());
    m.body = Some(body.to_string());
    m.event_source = Some("aws:sqs".into());
    m
}

/// Polls until `shutdown` resolves. Errors (the queue unreachable) are
/// logged and retried after a pause. A shutdown while a receive waits ends
/// it at once (what it would have received comes back after the visibility
/// timeout); a batch already received is handled to its end first (within
/// its deadline), so a Ctrl-C never leaves a mail sent but not recorded.
pub async fn run_poller(
    poller: Poller,
    worker: std::sync::Arc<Worker>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let received = tokio::select! {
            _ = &mut shutdown => return,
            received = poller.receive() => received,
        };
        let result = match received {
            Ok(messages) if messages.is_empty() => continue,
            Ok(messages) => poller.handle_batch(&worker, messages).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(stats) => {
                tracing::debug!(
                    received = stats.received,
                    handled = stats.handled,
                    failed = stats.failed,
                    "mail batch"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "mail queue poll failed");
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
}
