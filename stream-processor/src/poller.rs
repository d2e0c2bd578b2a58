//! The local stand-in for Lambda's event source mapping: reads the streams
//! of every table `tables::ALL` marks as streamed (users, tokens, mail
//! ledger) with DescribeStream, GetShardIterator and GetRecords, builds the
//! `DynamoDbEvent` Lambda would deliver, and hands it to the same
//! [`Processor`](crate::Processor).
//!
//! Shards are read from TRIM_HORIZON. The mail ledger's records pass the
//! same filter as its Terraform mapping (`filter_criteria`: only a new
//! image whose `state` the audit trail has an event for), so the handler
//! sees what it sees on AWS. A round's records are merged in order of
//! creation time, and handed over as one event per run of records from one
//! stream (on AWS each mapping reads one stream, and sequence numbers,
//! which name a failed record, are unique only within one). An event with a
//! failed record is handed over again from that record, as Lambda's mapping
//! does, and after `MAX_ATTEMPTS` the record is given up (logged; on AWS it
//! goes to the on-failure queue) and the rest goes on. A round cut short
//! by an error (a shard that cannot be read) keeps the records it read for
//! the next one, and drops the shard's iterator: the next round starts the
//! shard again if it is still there. No checkpoint is kept: a restart reads the shards again,
//! and appends are idempotent.

use crate::Processor;
use aws_lambda_events::dynamodb::Event;
use aws_sdk_dynamodbstreams::types::{Record, ShardIteratorType};
use latchkey_core::mail::delivery::ledger_state;
use latchkey_core::tables;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Records asked for per GetRecords call.
const GET_RECORDS_LIMIT: i32 = 1000;

/// Tries of a failing record before the poller gives it up.
pub const MAX_ATTEMPTS: u32 = 3;

/// Polls the streams of the tables that have one.
pub struct StreamPoller {
    ddb: aws_sdk_dynamodb::Client,
    streams: aws_sdk_dynamodbstreams::Client,
    tables: Vec<String>,
    /// The mail ledger's table, whose mapping filters its records.
    ledger: String,
    /// (stream ARN, shard id) -> the iterator to read next.
    iterators: BTreeMap<(String, String), Option<String>>,
    /// Records read (their shard's iterator moved past them) and not yet
    /// handed over: a round cut short by an error hands them over next.
    pending: Vec<(usize, Value)>,
}

impl StreamPoller {
    /// A poller for `{table_prefix}-*` tables with streams, built from the
    /// process's one `SdkConfig`.
    pub fn new(sdk: &aws_config::SdkConfig, table_prefix: &str) -> Self {
        StreamPoller {
            ddb: aws_sdk_dynamodb::Client::new(sdk),
            streams: aws_sdk_dynamodbstreams::Client::new(sdk),
            tables: tables::ALL.iter().filter(|t| t.stream).map(|t| tables::table_name(table_prefix, t)).collect(),
            ledger: tables::table_name(table_prefix, &tables::MAIL_LEDGER),
            iterators: BTreeMap::new(),
            pending: Vec::new(),
        }
    }

    /// Finds shards not seen yet and starts them at TRIM_HORIZON.
    async fn discover(&mut self) -> Result<(), BoxError> {
        for table in &self.tables {
            let desc = self.ddb.describe_table().table_name(table).send().await?;
            let Some(arn) = desc.table.and_then(|t| t.latest_stream_arn) else { continue };
            let mut start: Option<String> = None;
            loop {
                let out = self
                    .streams
                    .describe_stream()
                    .stream_arn(&arn)
                    .set_exclusive_start_shard_id(start.clone())
                    .send()
                    .await?;
                let Some(d) = out.stream_description else { break };
                for shard in d.shards.unwrap_or_default() {
                    let Some(id) = shard.shard_id else { continue };
                    let key = (arn.clone(), id.clone());
                    if self.iterators.contains_key(&key) {
                        continue;
                    }
                    let it = self
                        .streams
                        .get_shard_iterator()
                        .stream_arn(&arn)
                        .shard_id(&id)
                        .shard_iterator_type(ShardIteratorType::TrimHorizon)
                        .send()
                        .await?
                        .shard_iterator;
                    self.iterators.insert(key, it);
                }
                match d.last_evaluated_shard_id {
                    Some(s) => start = Some(s),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// One round: every open shard read once, the records of all shards
    /// that pass their mapping's filter merged in order of creation time,
    /// as one event ([`deliver`] hands it over one stream's run at a time).
    pub async fn next_batch(&mut self) -> Result<Event, BoxError> {
        self.discover().await?;
        let mut failed = None;
        for ((arn, shard), it) in self.iterators.iter_mut() {
            let Some(current) = it.clone() else { continue };
            let out = match self.streams.get_records().shard_iterator(current).limit(GET_RECORDS_LIMIT).send().await {
                Ok(out) => out,
                Err(e) => {
                    failed = Some(((arn.clone(), shard.clone()), e));
                    break;
                }
            };
            // Ties in creation time go to the table listed first in
            // `tables::ALL` (a user is written before its tokens).
            let rank = self.tables.iter().position(|t| arn.contains(&format!("table/{t}/"))).unwrap_or(usize::MAX);
            let filtered = arn.contains(&format!("table/{}/", self.ledger));
            for r in out.records.unwrap_or_default() {
                let r = wire_record(&r, arn);
                if !filtered || passes_ledger_filter(&r) {
                    self.pending.push((rank, r));
                }
            }
            // Past these records only now they are kept: a later shard's
            // error ends the round, and they go with the next one.
            *it = out.next_shard_iterator;
        }
        if let Some((shard, e)) = failed {
            // Its iterator may have expired (15 minutes unused: a machine
            // that slept) or its stream be gone (the emulator restarted):
            // read again, it would fail every round. The next round's
            // discovery starts it again from TRIM_HORIZON if it is still
            // there (appends are idempotent), and nothing if not.
            self.iterators.remove(&shard);
            return Err(e.into());
        }
        let mut records = std::mem::take(&mut self.pending);
        records.sort_by(|(ra, a), (rb, b)| {
            let t = |v: &Value| v["dynamodb"]["ApproximateCreationDateTime"].as_f64().unwrap_or(0.0);
            t(a).total_cmp(&t(b)).then(ra.cmp(rb))
        });
        let mut batch = Event::default();
        for (_, r) in records {
            // One record Lambda's event type cannot hold is given up alone
            // (logged, as a record that keeps failing), not the round.
            match serde_json::from_value(r) {
                Ok(r) => batch.records.push(r),
                Err(e) => tracing::error!(error = %e, "stream record given up: not a Lambda stream record"),
            }
        }
        Ok(batch)
    }

    /// Reads batches and processes them until the process ends.
    pub async fn run(mut self, processor: Processor, idle: Duration) {
        loop {
            match self.next_batch().await {
                Ok(batch) if batch.records.is_empty() => tokio::time::sleep(idle).await,
                Ok(batch) => {
                    let n = batch.records.len();
                    let given_up = deliver(&processor, batch, MAX_ATTEMPTS, idle).await;
                    tracing::debug!(records = n, given_up = given_up.len(), "stream batch processed");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "stream poll failed; retrying");
                    tokio::time::sleep(idle * 10).await;
                }
            }
        }
    }
}

/// The ledger mapping's filter (terraform/lambda.tf, `filter_criteria`,
/// checked against `ledger_state::AUDITED` by tests/tests/terraform.rs):
/// only records whose new image's `state` the audit trail has an event
/// for. Claims, retries and removals never reach the processor on AWS; nor
/// does the key-only INSERT moto streams before the item an UpdateItem
/// creates.
fn passes_ledger_filter(record: &Value) -> bool {
    record["dynamodb"]["NewImage"]["state"]["S"].as_str().is_some_and(ledger_state::audited)
}

/// Hands `batch` to `processor` as Lambda's mappings do: one event per run
/// of consecutive records from one stream (a failed record is named by its
/// sequence number, unique only within its stream); after a reported
/// failure, again from the failed record on (after `pause`), and after
/// `max_attempts` tries of one record without it, so one poison record
/// neither stalls the rest nor lets later records go before it while it
/// may still succeed. Returns the identifiers of the records given up.
pub async fn deliver(processor: &Processor, batch: Event, max_attempts: u32, pause: Duration) -> Vec<String> {
    let mut given_up = Vec::new();
    let mut records = batch.records.into_iter().peekable();
    while let Some(first) = records.next() {
        let mut run = Event::default();
        let stream = first.event_source_arn.clone();
        run.records.push(first);
        while let Some(r) = records.next_if(|r| r.event_source_arn == stream) {
            run.records.push(r);
        }
        given_up.extend(deliver_one_stream(processor, run, max_attempts, pause).await);
    }
    given_up
}

/// [`deliver`] for records of one stream. A batch the function answers
/// with an error (its first record cannot be mapped) is split in two, the
/// first half delivered before the second, as the mapping's bisecting
/// does; the first half keeps the failing record's tries.
async fn deliver_one_stream(processor: &Processor, batch: Event, max_attempts: u32, pause: Duration) -> Vec<String> {
    let mut given_up = Vec::new();
    // Batches still to deliver, the next one last, with the tries of
    // their first record.
    let mut pending = vec![(batch, 0)];
    while let Some((mut batch, mut tries)) = pending.pop() {
        while !batch.records.is_empty() {
            let response = match processor.invoke(&batch).await {
                Ok(response) => response,
                Err(split) => {
                    tracing::warn!(error = %split, "stream batch split (on AWS: bisected)");
                    let mut rest = Event::default();
                    rest.records = batch.records.split_off(batch.records.len() / 2);
                    pending.push((rest, 0));
                    pending.push((batch, tries));
                    break;
                }
            };
            let Some(failed) = response.batch_item_failures.first().and_then(|f| f.item_identifier.clone()) else {
                break;
            };
            let at = batch.records.iter().position(|r| crate::item_identifier(r) == failed).unwrap_or(0);
            if at > 0 {
                // Progress: the records before the failed one are done.
                batch.records.drain(..at);
                tries = 0;
            }
            tries += 1;
            if tries >= max_attempts {
                tracing::error!(record = %failed, tries, "stream record given up (on AWS: the on-failure queue)");
                batch.records.remove(0);
                given_up.push(failed);
                tries = 0;
            } else {
                tokio::time::sleep(pause).await;
            }
        }
    }
    given_up
}

/// A Streams API record in the JSON shape Lambda delivers.
fn wire_record(r: &Record, arn: &str) -> Value {
    let item = |m: &Option<std::collections::HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>>| {
        m.clone().map(serde_dynamo::Item::from).map(|i| serde_json::to_value(i).unwrap_or(Value::Null))
    };
    let c = r.dynamodb.clone().unwrap_or_else(|| aws_sdk_dynamodbstreams::types::StreamRecord::builder().build());
    let mut change = json!({
        "ApproximateCreationDateTime": c.approximate_creation_date_time.map_or(0.0, |t| t.as_secs_f64()),
        "SequenceNumber": c.sequence_number,
        "SizeBytes": c.size_bytes.unwrap_or(0),
        "StreamViewType": c.stream_view_type.as_ref().map(|v| v.as_str().to_string()),
    });
    for (name, value) in [("Keys", item(&c.keys)), ("NewImage", item(&c.new_image)), ("OldImage", item(&c.old_image))] {
        if let Some(v) = value {
            change[name] = v;
        }
    }
    let mut rec = json!({
        "eventID": r.event_id,
        "eventName": r.event_name.as_ref().map(|n| n.as_str().to_string()),
        "eventVersion": r.event_version,
        "eventSource": r.event_source,
        "awsRegion": r.aws_region.clone().unwrap_or_default(),
        "eventSourceARN": arn,
        "dynamodb": change,
    });
    if let Some(u) = &r.user_identity {
        rec["userIdentity"] = json!({ "type": u.r#type, "principalId": u.principal_id });
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::types::AttributeValue;

    /// A round cut short by a shard that cannot be read (after another
    /// shard's iterator moved on) hands that shard's records over in the
    /// next round: before, they were dropped and never reached the trail.
    /// The shard that failed is not read with the same iterator again (an
    /// expired one failed every round after, and nothing was handed over).
    #[tokio::test]
    async fn records_read_before_another_shards_error_come_with_the_next_round() {
        let sdk = latchkey_tests::sdk_config(&latchkey_tests::emulator_endpoint().await).await;
        let prefix = latchkey_tests::random_prefix();
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        latchkey_core::adapters::dynamo::ensure_tables(&ddb, &prefix).await.expect("tables");
        let mut poller = StreamPoller::new(&sdk, &prefix);
        assert!(poller.next_batch().await.expect("a first round").records.is_empty());

        let users = tables::table_name(&prefix, &tables::USERS);
        let item = ddb.put_item().table_name(&users).item("pk", AttributeValue::S("TEST#kept".into()));
        item.send().await.expect("put");
        // A shard read after the users table's (keys in order) that fails.
        let broken = ("~broken".to_string(), "shard".to_string());
        poller.iterators.insert(broken.clone(), Some("not-an-iterator".into()));
        assert!(poller.next_batch().await.is_err(), "the broken shard ends the round");
        assert!(!poller.iterators.contains_key(&broken), "its iterator is kept");

        let batch = poller.next_batch().await.expect("the next round");
        let keys: Vec<_> =
            batch.records.iter().map(|r| (r.event_name.as_str(), r.change.keys.get("pk").cloned())).collect();
        assert_eq!(keys, vec![("INSERT", Some(serde_dynamo::AttributeValue::S("TEST#kept".into())))]);
        assert!(poller.next_batch().await.expect("a round after").records.is_empty(), "handed over once");
    }
}
