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
    // The routes need no state: they are built while `build_with` waits for
    // the secrets (a cold start's one AWS call, begun before anything else).
    let (built, routes) =
        tokio::join!(latchkey_api::wiring::build_with(&config, BuildOptions { sdk, ..Default::default() }), async {
            latchkey_api::routes()
        });
    let built = built?;
    if on_lambda {
        let app = latchkey_api::with_state(routes, built.state.clone());
        lambda_http::run(app).await
    } else {
        let app = latchkey_api::with_state(routes, built.state.clone().serving_directly(&config.public_base_url));
        let served = match latchkey_api::wiring::listen(&config.bind) {
            Ok(listener) => latchkey_api::wiring::serve(app, listener, config.http_threads).await,
            Err(e) => Err(e),
        };
        // On the embedded store: the mail job in hand is finished first.
        built.shutdown().await;
        served.map_err(Into::into)
    }
}
