//! The api binary: wiring only. On Lambda (AWS_LAMBDA_RUNTIME_API set) it
//! serves the Router through lambda_http; elsewhere as a plain HTTP server.

use latchkey_api::wiring::BuildOptions;
use latchkey_core::adapters::aws_calls;
use latchkey_core::config::Config;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    latchkey_api::wiring::init_tracing();
    let config = Config::from_env()?;
    let on_lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    // On Lambda the AWS clients trust the Amazon roots only, unless
    // LATCHKEY_TLS_ROOTS says `system` (as the other two functions).
    let sdk = if on_lambda { Some(aws_calls::lambda_sdk_config().await?) } else { None };
    let built = latchkey_api::wiring::build_with(&config, BuildOptions { sdk, ..Default::default() }).await?;
    if on_lambda {
        lambda_http::run(latchkey_api::app(built.state.clone())).await
    } else {
        let app = latchkey_api::app(built.state.clone().serving_directly(&config.public_base_url));
        let served = match latchkey_api::wiring::listen(&config.bind) {
            Ok(listener) => latchkey_api::wiring::serve(app, listener, config.http_threads).await,
            Err(e) => Err(e),
        };
        // On the embedded store: the mail job in hand is finished first.
        built.shutdown().await;
        served.map_err(Into::into)
    }
}
