//! Running the worker beside the local runner when its backend is AWS (an
//! emulator or a dev account): the same handler, fed by the [`Poller`].

use crate::{BoxError, Clients, Worker, WorkerConfig, poller::Poller, poller::run_poller};
use latchkey_core::adapters::{aws_calls, dynamo, sqs};
use std::sync::Arc;

/// The sender used locally when `LATCHKEY_SES_FROM` is not set.
pub const LOCAL_FROM: &str = "latchkey <noreply@latchkey.test>";

/// Starts the SQS poller for the local runner, until `shutdown` resolves
/// (a batch in hand is handled to its end first: `run_poller`). With
/// `bootstrap`, the tables, queues and the sender's SES identity are
/// created where missing (emulators only; Terraform owns them on AWS).
/// Other settings come from the worker's variables, with local defaults.
pub async fn spawn_poller(
    table_prefix: &str,
    public_base_url: &str,
    bootstrap: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, BoxError> {
    let sdk = aws_calls::sdk_config().await;
    let clients = Clients::from_sdk(&sdk);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let (queue_url, dlq_url) = if bootstrap {
        dynamo::ensure_tables(&clients.dynamo, table_prefix).await?;
        sqs::ensure_queues(&clients.sqs, table_prefix).await?
    } else {
        crate::dlq::queue_urls(&clients.sqs, |k| match k {
            "LATCHKEY_TABLE_PREFIX" => Some(table_prefix.to_string()),
            k => env(k),
        })
        .await?
    };
    let from = env("LATCHKEY_SES_FROM").unwrap_or_else(|| LOCAL_FROM.to_string());
    if bootstrap {
        ensure_identity(&clients.ses, &from).await?;
    }
    let cfg = WorkerConfig::from_lookup(|k| match k {
        "LATCHKEY_TABLE_PREFIX" => Some(table_prefix.to_string()),
        "LATCHKEY_MAIL_QUEUE_URL" => Some(queue_url.clone()),
        "LATCHKEY_MAIL_DLQ_URL" => Some(dlq_url.clone()),
        "LATCHKEY_SES_FROM" => Some(from.clone()),
        "PUBLIC_BASE_URL" => Some(public_base_url.to_string()),
        k => env(k),
    })?;
    let poller = Poller::new(clients.sqs.clone(), queue_url).await?;
    let worker = Arc::new(Worker::from_config(&cfg, clients)?);
    tracing::info!(queue = poller.queue_url(), "mail worker polling");
    Ok(tokio::spawn(run_poller(poller, worker, shutdown)))
}

/// Creates the SES identity of `from`'s domain if it is missing (an
/// emulator accepts it at once; real SES needs DNS records as well).
pub async fn ensure_identity(ses: &aws_sdk_sesv2::Client, from: &str) -> Result<(), BoxError> {
    let addr = from.rsplit('<').next().unwrap_or(from).trim_end_matches('>').trim();
    let domain = addr.rsplit_once('@').map_or(addr, |(_, d)| d);
    match ses.create_email_identity().email_identity(domain).send().await {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error().is_some_and(|s| {
                matches!(
                    s,
                    aws_sdk_sesv2::operation::create_email_identity::CreateEmailIdentityError::AlreadyExistsException(
                        _
                    )
                )
            }) =>
        {
            Ok(())
        }
        Err(e) => Err(Box::new(e)),
    }
}
