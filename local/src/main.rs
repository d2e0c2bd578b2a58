//! latchkey-local: the whole system in one process. `cargo run --release`
//! serves http://127.0.0.1:3000 on the embedded SQLite store under `var/`,
//! with mail written to `var/outbox/` and announced on the console. Set
//! `LATCHKEY_BACKEND=aws` (with `AWS_ENDPOINT_URL` for an emulator and
//! `LATCHKEY_BOOTSTRAP=true` to create tables and queues) to run on
//! DynamoDB and SQS instead; the mail worker then polls the SQS queue and
//! sends through SES (`LATCHKEY_SES_FROM`, default
//! `noreply@latchkey.test`, whose identity the bootstrap creates).

use latchkey_core::config::{Backend, Config};

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

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "latchkey: run the whole service locally.\n\nConfiguration is read from the environment; see the README's configuration table."
        );
        return Ok(());
    }
    let config = Config::from_env()?;
    let mut built = latchkey_api::wiring::build(&config).await?;
    match &config.backend {
        Backend::Embedded { data_dir } => {
            tracing::info!(data = %data_dir.display(), outbox = %data_dir.join("outbox").display(), "embedded backend")
        }
        Backend::Aws { table_prefix, bootstrap, .. } => {
            tracing::info!(%table_prefix, "aws backend");
            // The mail worker's handler, fed from the real SQS queue.
            let poller =
                latchkey_mail_worker::local::spawn_poller(table_prefix, &config.public_base_url, *bootstrap).await?;
            built.tasks.push(poller);
        }
    }
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
    let app = latchkey_api::app(built.state.clone());
    println!("latchkey serving {} (bind {})", config.public_base_url, config.bind);
    latchkey_api::wiring::serve(app, &config.bind, config.http_threads).await?;
    for t in built.tasks.into_iter().chain(poller) {
        t.abort();
    }
    Ok(())
}
