//! latchkey-local: the whole system in one process. `cargo run --release`
//! serves http://127.0.0.1:3000 on the embedded SQLite store under `var/`,
//! with mail written to `var/outbox/` and announced on the console. Set
//! `LATCHKEY_BACKEND=aws` (with `AWS_ENDPOINT_URL` for an emulator and
//! `LATCHKEY_BOOTSTRAP=true` to create tables and queues) to run on
//! DynamoDB and SQS instead; the mail worker then polls the SQS queue and
//! sends through SES (`LATCHKEY_SES_FROM`, default
//! `noreply@latchkey.test`, whose identity the bootstrap creates).

use latchkey_core::config::{Backend, Config};
use latchkey_stream_processor::verify;

#[tokio::main]
async fn main() {
    latchkey_api::wiring::init_tracing();
    if let Err(e) = run().await {
        // The whole chain: "store unavailable: <the reason>".
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        eprintln!("latchkey: {message}");
        std::process::exit(1);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn run() -> Result<(), BoxError> {
    let usage = format!("usage: latchkey [{}]", verify::COMMAND);
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "latchkey: run the whole service locally.\n\n{usage}\n\nWith no arguments it serves; `verify-chain` checks a subject's \
             audit trail on the configured store (the embedded one only while no runner has it open) and exits \
             0 if it is intact, 2 if not.\n\nConfiguration is read from the environment; see the README's \
             configuration table."
        );
        return Ok(());
    }
    let config = Config::from_env()?;
    if args.first().is_some_and(|a| a == "verify-chain") {
        let what = verify::parse(&args[1..], &usage)?;
        std::process::exit(verify_chain(&config, what).await?);
    }
    if !args.is_empty() {
        return Err(usage.into());
    }
    let built = latchkey_api::wiring::build(&config).await?;
    // Told to stop once the server has: a mail batch in hand is finished.
    let (stop_mail, mail_stopped) = tokio::sync::oneshot::channel::<()>();
    let mail_poller = match &config.backend {
        Backend::Embedded { data_dir } => {
            tracing::info!(data = %data_dir.display(), outbox = %data_dir.join("outbox").display(), "embedded backend");
            None
        }
        Backend::Aws { table_prefix, bootstrap, .. } => {
            tracing::info!(%table_prefix, "aws backend");
            // The mail worker's handler, fed from the real SQS queue.
            let stopped = async {
                let _ = mail_stopped.await;
            };
            let public_base_url = &config.public_base_url;
            Some(latchkey_mail_worker::local::spawn_poller(table_prefix, public_base_url, *bootstrap, stopped).await?)
        }
    };
    // On AWS a Lambda reads the streams; here a poller feeds the same handler.
    let poller = match &config.backend {
        Backend::Embedded { .. } => None,
        Backend::Aws { table_prefix, .. } => {
            use latchkey_core::adapters::{aws_calls, dynamo::DynamoStore, dynamo::audit::DynamoAuditStore, ssm};
            use latchkey_stream_processor::{Processor, poller::StreamPoller};
            let sdk = aws_calls::sdk_config().await;
            let key = ssm::audit_key(&config, &sdk).await?;
            let client = aws_calls::dynamo_client(&sdk, None);
            let audit = std::sync::Arc::new(DynamoAuditStore::new(client.clone(), table_prefix));
            let users = std::sync::Arc::new(DynamoStore::new(client, table_prefix));
            let processor =
                Processor::new(audit, key, (&config.policy).into(), config.audit_retention_days).releasing_names(users);
            let poller = StreamPoller::new(&sdk, table_prefix);
            Some(tokio::spawn(poller.run(processor, std::time::Duration::from_millis(500))))
        }
    };
    let app = latchkey_api::app(built.state.clone().serving_directly(&config.public_base_url));
    // Said once the socket is bound: a client that reads it can connect.
    let served = match latchkey_api::wiring::listen(&config.bind) {
        Ok(listener) => {
            println!("latchkey serving {} (bind {})", config.public_base_url, config.bind);
            latchkey_api::wiring::serve(app, listener, config.http_threads).await
        }
        Err(e) => Err(e),
    };
    let _ = stop_mail.send(());
    if let Some(mail) = mail_poller {
        tracing::info!("stopping: the mail poller finishes the batch in hand");
        let _ = mail.await;
    }
    built.shutdown().await;
    if let Some(t) = poller {
        t.abort();
    }
    Ok(served?)
}

/// `latchkey verify-chain`: the subject's trail on the store `config`
/// names, checked with the key that sealed it. Returns the exit code.
async fn verify_chain(config: &Config, what: verify::VerifyArgs) -> Result<i32, BoxError> {
    use latchkey_core::audit::AuditStore;
    use latchkey_core::clock::{Clock, SystemClock};
    let (audit, key): (Box<dyn AuditStore>, _) = match &config.backend {
        Backend::Embedded { data_dir } => {
            use latchkey_core::adapters::embedded::{EmbeddedStore, audit::SqliteAuditStore};
            let db = data_dir.join("latchkey.sqlite3");
            if !db.exists() {
                return Err(
                    format!("{}: no database here (LATCHKEY_DATA_DIR names the runner's data)", db.display()).into()
                );
            }
            let key = latchkey_api::wiring::embedded_audit_key(config, data_dir)?;
            // The runner holds its database alone: so does this.
            let store = EmbeddedStore::open(&db).map_err(|e| -> BoxError {
                match e {
                    latchkey_core::StoreError::Unavailable(why) => {
                        format!("{why}: stop the runner, then verify").into()
                    }
                    other => other.into(),
                }
            })?;
            (Box::new(SqliteAuditStore::open(&store).await?), key)
        }
        Backend::Aws { table_prefix, .. } => {
            use latchkey_core::adapters::{aws_calls, dynamo::audit::DynamoAuditStore, ssm};
            let sdk = aws_calls::sdk_config().await;
            let key = ssm::audit_key(config, &sdk).await?;
            (Box::new(DynamoAuditStore::new(aws_calls::dynamo_client(&sdk, None), table_prefix)), key)
        }
    };
    Ok(verify::report(verify::verify(audit.as_ref(), key, what, SystemClock.now()).await?))
}
