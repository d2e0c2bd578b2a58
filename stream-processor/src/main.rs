//! The stream-processor binary: wiring only. On Lambda it serves DynamoDB
//! Streams batches; `verify-chain <subject> [--unsealed-before <unix
//! seconds>]` checks a subject's audit hash chain and its seals and prints
//! the first broken link.
//!
//! Configuration: `LATCHKEY_TABLE_PREFIX` (default `latchkey`),
//! `LATCHKEY_AUDIT_RETENTION_DAYS` (default 400), `LATCHKEY_TLS_ROOTS`
//! (default `amazon`; `verify-chain` uses the system's CA store), and the
//! audit seal key: `LATCHKEY_AUDIT_KEY_PARAM` (an SSM SecureString
//! parameter name, read once at cold start) or `LATCHKEY_AUDIT_KEY`.

use aws_lambda_events::dynamodb::Event;
use lambda_runtime::{LambdaEvent, service_fn};
use latchkey_core::adapters::dynamo::DynamoStore;
use latchkey_core::adapters::dynamo::audit::DynamoAuditStore;
use latchkey_core::adapters::{aws_calls, ssm};
use latchkey_core::audit::{AuditPolicy, AuditStore, verify_chain_at};
use latchkey_core::clock::{Clock, SystemClock, Timestamp};
use latchkey_core::config::Config;
use latchkey_stream_processor::Processor;
use std::sync::Arc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: latchkey-stream-processor [verify-chain <subject> [--unsealed-before <unix seconds>]]";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().json().with_env_filter(env_filter()).without_time().init();
    let config = Config::from_env()?;
    let prefix = std::env::var("LATCHKEY_TABLE_PREFIX").unwrap_or_else(|_| "latchkey".into());
    let audit =
        |sdk: &aws_config::SdkConfig| Arc::new(DynamoAuditStore::new(aws_calls::dynamo_client(sdk, None), &prefix));

    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "verify-chain") {
        let (subject, unsealed_before) = match &args[1..] {
            [subject] => (subject, Timestamp::MIN),
            [subject, flag, t] if flag == "--unsealed-before" => match t.parse::<Timestamp>() {
                Ok(t) => (subject, t),
                Err(_) => return Err(format!("--unsealed-before: unix seconds (got {t:?})").into()),
            },
            _ => return Err(USAGE.into()),
        };
        let sdk = aws_calls::sdk_config().await;
        let key = ssm::audit_key(&config, &sdk).await?;
        let records = audit(&sdk).chain(subject).await?;
        // Records past their expiry may still be there (the TTL is late and
        // in no order): a gap after one is retention, not a break.
        return match verify_chain_at(&key, subject, &records, SystemClock.now(), unsealed_before) {
            Ok(report) if report.unsealed > 0 => {
                println!(
                    "chain of {subject}: {} records, intact; the first {} unsealed (made before {unsealed_before})",
                    report.records, report.unsealed
                );
                Ok(())
            }
            Ok(report) => {
                println!("chain of {subject}: {} records, intact, all sealed", report.records);
                Ok(())
            }
            Err(brk) => {
                println!("{brk}");
                std::process::exit(2);
            }
        };
    }
    if !args.is_empty() {
        return Err(USAGE.into());
    }

    let sdk = aws_calls::lambda_sdk_config().await?;
    let key = ssm::audit_key(&config, &sdk).await?;
    let users = Arc::new(DynamoStore::new(aws_calls::dynamo_client(&sdk, None), &prefix));
    let processor = Processor::new(audit(&sdk), key, AuditPolicy::from(&config.policy), config.audit_retention_days)
        .releasing_names(users);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Event>| {
        let processor = processor.clone();
        async move { Ok::<_, BoxError>(processor.handle(&event.payload).await) }
    }))
    .await
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}
