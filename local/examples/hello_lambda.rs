//! The baseline for Lambda cold init: a hello-world lambda_runtime binary,
//! built with the same profile as the function binaries. Used by `bench/run`
//! (section 7), in a cargo invocation of its own so the functions keep the
//! zips' features:
//!   CARGO_TARGET_DIR=target/lambda-build cargo build --profile lambda -p latchkey-local --example hello_lambda
//!   scripts/package-lambdas --hello     (arm64, for the emulated figures)

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|_event: LambdaEvent<Value>| async { Ok::<_, Error>(json!({"hello": "world"})) }))
        .await
}
