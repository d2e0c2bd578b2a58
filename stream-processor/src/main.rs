//! The stream-processor binary: wiring only. On Lambda it serves DynamoDB
//! Streams batches; `verify-chain <subject> [--unsealed-before <unix
//! seconds>] [--head <seq>:<hash>:<expires_at>]...` checks a subject's
//! audit hash chain and its seals, and that it still reaches each head the
//! processor logged for it, and prints the first broken link.
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
use latchkey_core::audit::{AuditHead, AuditPolicy, AuditStore, check_logged_head, verify_chain_at};
use latchkey_core::clock::{Clock, SystemClock, Timestamp};
use latchkey_core::config::Config;
use latchkey_stream_processor::Processor;
use std::sync::Arc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: latchkey-stream-processor [verify-chain <subject> [--unsealed-before <unix seconds>] \
                     [--head <seq>:<hash>:<expires_at>]...]";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().json().with_env_filter(env_filter()).without_time().init();
    let config = Config::from_env()?;
    let prefix = std::env::var("LATCHKEY_TABLE_PREFIX").unwrap_or_else(|_| "latchkey".into());
    let audit =
        |sdk: &aws_config::SdkConfig| Arc::new(DynamoAuditStore::new(aws_calls::dynamo_client(sdk, None), &prefix));

    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "verify-chain") {
        let Some((subject, flags)) = args[1..].split_first() else { return Err(USAGE.into()) };
        let (unsealed_before, heads) = verify_flags(flags)?;
        let sdk = aws_calls::sdk_config().await;
        let key = ssm::audit_key(&config, &sdk).await?;
        let records = audit(&sdk).chain(subject).await?;
        // Records past their expiry may still be there (the TTL is late and
        // in no order): a gap after one is retention, not a break.
        let now = SystemClock.now();
        let checked = verify_chain_at(&key, subject, &records, now, unsealed_before).and_then(|report| {
            heads.iter().try_for_each(|h| check_logged_head(subject, &records, h, now)).map(|()| report)
        });
        return match checked {
            Ok(report) if report.unsealed > 0 => {
                println!(
                    "chain of {subject}: {} records, intact; the first {} unsealed (made before {unsealed_before}); \
                     reaches {} logged head(s)",
                    report.records,
                    report.unsealed,
                    heads.len()
                );
                Ok(())
            }
            Ok(report) => {
                println!(
                    "chain of {subject}: {} records, intact, all sealed; reaches {} logged head(s)",
                    report.records,
                    heads.len()
                );
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

/// `verify-chain`'s flags after the subject: `--unsealed-before <unix
/// seconds>` (at most once) and any number of `--head <seq>:<hash>:<expires_at>`
/// (the processor's `audit head` log lines).
fn verify_flags(flags: &[String]) -> Result<(Timestamp, Vec<AuditHead>), BoxError> {
    let (mut unsealed_before, mut heads) = (None, Vec::new());
    let mut it = flags.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag}: a value is missing; {USAGE}"))?;
        match flag.as_str() {
            "--unsealed-before" if unsealed_before.is_none() => {
                let t = value
                    .parse::<Timestamp>()
                    .map_err(|_| format!("--unsealed-before: unix seconds (got {value:?})"))?;
                unsealed_before = Some(t);
            }
            "--head" => heads.push(value.parse::<AuditHead>().map_err(|e| format!("--head: {e}"))?),
            _ => return Err(format!("{flag}: not a flag of verify-chain (or given twice); {USAGE}").into()),
        }
    }
    Ok((unsealed_before.unwrap_or(Timestamp::MIN), heads))
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}
