//! The api binary: wiring only. On Lambda (AWS_LAMBDA_RUNTIME_API set) it
//! serves the Router through lambda_http; elsewhere as a plain HTTP server.

use latchkey_core::config::Config;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    latchkey_api::wiring::init_tracing();
    let config = Config::from_env()?;
    let built = latchkey_api::wiring::build(&config).await?;
    let app = latchkey_api::app(built.state.clone());
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        lambda_http::run(app).await
    } else {
        latchkey_api::wiring::serve(app, &config.bind).await.map_err(Into::into)
    }
}
