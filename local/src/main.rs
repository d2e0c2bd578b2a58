//! latchkey-local: the whole system in one process. `cargo run --release`
//! serves http://127.0.0.1:3000 on the embedded SQLite store under `var/`,
//! with mail written to `var/outbox/` and announced on the console. Set
//! `LATCHKEY_BACKEND=aws` (with `AWS_ENDPOINT_URL` for an emulator and
//! `LATCHKEY_BOOTSTRAP=true` to create tables and queues) to run on
//! DynamoDB and SQS instead.

use latchkey_core::config::{Backend, Config};

#[tokio::main]
async fn main() {
    latchkey_api::wiring::init_tracing();
    if let Err(e) = run().await {
        eprintln!("latchkey: {e}");
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
    let built = latchkey_api::wiring::build(&config).await?;
    match &config.backend {
        Backend::Embedded { data_dir } => {
            tracing::info!(data = %data_dir.display(), outbox = %data_dir.join("outbox").display(), "embedded backend")
        }
        Backend::Aws { table_prefix, .. } => tracing::info!(%table_prefix, "aws backend"),
    }
    let app = latchkey_api::app(built.state.clone());
    println!("latchkey serving {} (bind {})", config.public_base_url, config.bind);
    latchkey_api::wiring::serve(app, &config.bind).await?;
    for t in built.tasks {
        t.abort();
    }
    Ok(())
}
