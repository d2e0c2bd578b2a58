//! The baseline for Lambda cold init: a hello-world lambda_runtime binary,
//! built with the same profile as the function binaries. Used by `bench/run`.
//!   cargo build --release -p latchkey-local --example hello_lambda

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|_event: LambdaEvent<Value>| async { Ok::<_, Error>(json!({"hello": "world"})) }))
        .await
}
