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
use latchkey_core::audit::{AuditHead, AuditPolicy, AuditStore, check_logged_head, verify_chain_at};
use latchkey_core::clock::{Clock, SystemClock, Timestamp};
use latchkey_core::config::Config;
use latchkey_core::keys::{AuditKey, AuditKeyring};
use latchkey_stream_processor::Processor;
use std::sync::Arc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage: latchkey-stream-processor [verify-chain <subject> [--unsealed-before <unix seconds>] \
                     [--head <seq>:<hash>:<expires_at>]... [--retired-key <file>]...]";

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
        let VerifyFlags { unsealed_before, heads, retired } = verify_flags(flags)?;
        let sdk = aws_calls::sdk_config().await;
        let keys = AuditKeyring::new(retired, ssm::audit_key(&config, &sdk).await?);
        let records = audit(&sdk).chain(subject).await?;
        // Records past their expiry may still be there (the TTL is late and
        // in no order): a gap after one is retention, not a break.
        let now = SystemClock.now();
        let checked = verify_chain_at(&keys, subject, &records, now, unsealed_before).and_then(|report| {
            heads.iter().try_for_each(|h| check_logged_head(subject, &records, h, now)).map(|()| report)
        });
        return match checked {
            Ok(report) => {
                let sealed = match report.unsealed {
                    0 => "all sealed".to_string(),
                    n => format!("the first {n} unsealed (made before {unsealed_before})"),
                };
                let retired = match report.by_retired_key {
                    0 => String::new(),
                    n => format!(", {n} of them with retired keys"),
                };
                println!(
                    "chain of {subject}: {} records, intact, {sealed}{retired}; reaches {} logged head(s)",
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
    // Terraform's audit_seal_key_version: which key this instance seals with.
    if let Ok(v) = std::env::var("LATCHKEY_AUDIT_KEY_VERSION") {
        let version: u32 = v.parse().map_err(|_| format!("LATCHKEY_AUDIT_KEY_VERSION: a whole number (got {v:?})"))?;
        tracing::info!(key_version = version, "audit seal key read");
    }
    let users = Arc::new(DynamoStore::new(aws_calls::dynamo_client(&sdk, None), &prefix));
    let processor = Processor::new(audit(&sdk), key, AuditPolicy::from(&config.policy), config.audit_retention_days)
        .releasing_names(users);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Event>| {
        let processor = processor.clone();
        async move { Ok::<_, BoxError>(processor.handle(&event.payload).await) }
    }))
    .await
}

/// `verify-chain`'s flags after the subject.
#[derive(Debug)]
struct VerifyFlags {
    /// `--unsealed-before <unix seconds>`, at most once.
    unsealed_before: Timestamp,
    /// `--head <seq>:<hash>:<expires_at>`, any number (the processor's
    /// `audit head` log lines).
    heads: Vec<AuditHead>,
    /// `--retired-key <file>`, any number, oldest first: the keys rotation
    /// retired, one base64 key per file.
    retired: Vec<AuditKey>,
}

fn verify_flags(flags: &[String]) -> Result<VerifyFlags, BoxError> {
    let (mut unsealed_before, mut heads, mut retired) = (None, Vec::new(), Vec::new());
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
            "--retired-key" => {
                let text = std::fs::read_to_string(value).map_err(|e| format!("--retired-key {value}: {e}"))?;
                retired.push(AuditKey::from_base64(text.trim()).map_err(|e| format!("--retired-key {value}: {e}"))?);
            }
            _ => return Err(format!("{flag}: not a flag of verify-chain (or given twice); {USAGE}").into()),
        }
    }
    Ok(VerifyFlags { unsealed_before: unsealed_before.unwrap_or(Timestamp::MIN), heads, retired })
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Result<VerifyFlags, String> {
        verify_flags(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>()).map_err(|e| e.to_string())
    }

    #[test]
    fn verify_chain_takes_its_flags_and_refuses_bad_ones_clearly() {
        let dir = std::env::temp_dir().join(format!("latchkey-verify-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (old, bad) = (dir.join("old.b64"), dir.join("bad.b64"));
        std::fs::write(&old, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n").unwrap();
        std::fs::write(&bad, "c2hvcnQ=").unwrap();
        let (old, bad) = (old.to_str().unwrap(), bad.to_str().unwrap());
        let head = format!("3:{}:2000000000", "ab".repeat(32));

        let f =
            flags(&["--unsealed-before", "1700000000", "--head", &head, "--retired-key", old, "--retired-key", old])
                .unwrap();
        assert_eq!((f.unsealed_before, f.heads.len(), f.retired.len()), (1_700_000_000, 1, 2));
        let f = flags(&[]).unwrap();
        assert_eq!((f.unsealed_before, f.heads.len(), f.retired.len()), (Timestamp::MIN, 0, 0));

        let missing = dir.join("none.b64");
        let refusals = [
            (vec!["--retired-key", bad], format!("--retired-key {bad}: ")),
            (vec!["--retired-key", missing.to_str().unwrap()], format!("--retired-key {}: ", missing.display())),
            (vec!["--retired-key"], "--retired-key: a value is missing; usage: ".to_string()),
            (vec!["--unsealed-before", "soon"], "--unsealed-before: unix seconds (got \"soon\")".to_string()),
            (vec!["--unsealed-before", "1", "--unsealed-before", "2"], "--unsealed-before: not a flag".to_string()),
            (vec!["--head", "3:zz:1"], "--head: ".to_string()),
            (vec!["--key", "x"], "--key: not a flag of verify-chain".to_string()),
        ];
        for (args, start) in refusals {
            let e = flags(&args).unwrap_err();
            assert!(e.starts_with(&start), "{args:?}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
