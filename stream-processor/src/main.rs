//! The stream-processor binary: wiring only. On Lambda it serves DynamoDB
//! Streams batches; `verify-chain <subject> [--unsealed-before <unix
//! seconds>] [--head <seq>:<hash>:<expires_at>]... [--retired-key <file>]...`
//! checks a subject's audit hash chain and its seals (with the current key
//! and the keys rotation retired, oldest first, one base64 key per file),
//! and that it still reaches each head the processor logged for it, and
//! prints the first broken link.
//!
//! Configuration: `LATCHKEY_TABLE_PREFIX` (default `latchkey`),
//! `LATCHKEY_AUDIT_RETENTION_DAYS` (default 400), `LATCHKEY_TLS_ROOTS`
//! (default `amazon`; `verify-chain` uses the system's CA store), and the
//! audit seal key: `LATCHKEY_AUDIT_KEY_PARAM` (an SSM SecureString
//! parameter name, read once at cold start) or `LATCHKEY_AUDIT_KEY`, and
//! `LATCHKEY_AUDIT_KEY_VERSION` (its rotation number, logged at start).

use aws_lambda_events::dynamodb::Event;
use lambda_runtime::{LambdaEvent, service_fn};
use latchkey_core::adapters::dynamo::DynamoStore;
use latchkey_core::adapters::dynamo::audit::DynamoAuditStore;
use latchkey_core::adapters::{aws_calls, ssm};
use latchkey_core::audit::AuditPolicy;
use latchkey_core::clock::{Clock, SystemClock, lambda_deadline};
use latchkey_core::config::Config;
use latchkey_stream_processor::{ANSWER_MARGIN, Processor, verify};
use std::sync::Arc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().json().with_env_filter(env_filter()).without_time().init();
    let config = Config::from_env()?;
    let prefix = std::env::var("LATCHKEY_TABLE_PREFIX").unwrap_or_else(|_| "latchkey".into());
    let audit =
        |sdk: &aws_config::SdkConfig| Arc::new(DynamoAuditStore::new(aws_calls::dynamo_client(sdk, None), &prefix));

    let usage = format!("usage: latchkey-stream-processor [{}]", verify::COMMAND);
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "verify-chain") {
        let what = verify::parse(&args[1..], &usage)?;
        let sdk = aws_calls::sdk_config().await;
        let key = ssm::audit_key(&config, &sdk).await?;
        let verdict = verify::verify(audit(&sdk).as_ref(), key, what, SystemClock.now()).await?;
        std::process::exit(verify::report(verdict));
    }
    if !args.is_empty() {
        return Err(usage.into());
    }

    let sdk = aws_calls::lambda_sdk_config().await?;
    // The one AWS call of a cold start, begun first: the clients are built
    // while SSM answers. (Spawning wakes a worker thread: only for a
    // parameter.)
    let reading = config.audit_key_param.is_some().then(|| {
        let (config, sdk) = (config.clone(), sdk.clone());
        tokio::spawn(async move { ssm::audit_key(&config, &sdk).await })
    });
    let (audit, users) = (audit(&sdk), Arc::new(DynamoStore::new(aws_calls::dynamo_client(&sdk, None), &prefix)));
    let key = match reading {
        Some(reading) => reading.await.map_err(|e| format!("reading the audit seal key: {e}"))??,
        None => ssm::audit_key(&config, &sdk).await?,
    };
    // Terraform's audit_seal_key_version: which key this instance seals with.
    if let Ok(v) = std::env::var("LATCHKEY_AUDIT_KEY_VERSION") {
        let version: u32 = v.parse().map_err(|_| format!("LATCHKEY_AUDIT_KEY_VERSION: a whole number (got {v:?})"))?;
        tracing::info!(key_version = version, "audit seal key read");
    }
    let processor = Processor::new(audit, key, AuditPolicy::from(&config.policy), config.audit_retention_days)
        .releasing_names(users);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Event>| {
        let processor = processor.clone();
        let deadline = lambda_deadline(event.context.deadline, ANSWER_MARGIN);
        async move { processor.invoke_by(&event.payload, Some(deadline)).await.map_err(BoxError::from) }
    }))
    .await
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}
