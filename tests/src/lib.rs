//! latchkey-tests: the support library of latchkey's contract and end-to-end
//! tests. It finds (or starts) the AWS emulator the DynamoDB and SQS tests run
//! against, builds the one `SdkConfig` that points every client at it, and
//! hands out random table prefixes so test files never share state or depend
//! on the order they run in.
//!
//! The emulator is the one named by `LATCHKEY_TEST_AWS_ENDPOINT` (e.g.
//! LocalStack on `http://127.0.0.1:4566`) or else the moto server that
//! `localstack/moto.sh start` runs, started on first use and left running
//! for the next test process.

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::config::{Credentials, SharedCredentialsProvider};
use std::path::{Path, PathBuf};
use std::process::Command;
use tokio::sync::OnceCell;

/// An emulator endpoint to use instead of starting moto.
pub const ENDPOINT_ENV: &str = "LATCHKEY_TEST_AWS_ENDPOINT";

static ENDPOINT: OnceCell<String> = OnceCell::const_new();

/// The emulator's endpoint URL: `$LATCHKEY_TEST_AWS_ENDPOINT` if set, else
/// the moto server of `localstack/moto.sh start`, started once per process.
/// Panics with the script's output if the emulator cannot be started.
pub async fn emulator_endpoint() -> String {
    ENDPOINT
        .get_or_init(|| async {
            match std::env::var(ENDPOINT_ENV) {
                Ok(endpoint) if !endpoint.trim().is_empty() => endpoint.trim().to_owned(),
                _ => tokio::task::spawn_blocking(start_moto).await.expect("starting moto panicked"),
            }
        })
        .await
        .clone()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repository").to_path_buf()
}

/// Runs `moto.sh start` under an exclusive file lock. The script has no lock
/// of its own: two test processes starting it together could each launch a
/// server, or one could see the other's pid file before its endpoint file
/// and fail. Holding the lock, the later caller finds the running server.
fn start_moto() -> String {
    let root = repo_root();
    let state_dir = root.join("var").join("moto");
    std::fs::create_dir_all(&state_dir).unwrap_or_else(|e| panic!("creating {}: {e}", state_dir.display()));
    let lock_path = state_dir.join("test-harness.lock");
    let lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", lock_path.display()));
    lock.lock().unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));

    let script = root.join("localstack").join("moto.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    drop(lock);

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let endpoint = stdout.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or_default();
    if !out.status.success() || !endpoint.starts_with("http") {
        panic!(
            "`{} start` failed ({}); set {ENDPOINT_ENV} to use another emulator.\nstdout:\n{stdout}\nstderr:\n{stderr}",
            script.display(),
            out.status
        );
    }
    endpoint.to_owned()
}

/// The configuration every test AWS client is built from: region
/// `us-east-1`, static test credentials and `endpoint` set explicitly.
/// Nothing is read from the environment or `~/.aws`, so a developer's
/// `AWS_*` variables (even `AWS_ENDPOINT_URL_DYNAMODB`) cannot send a test
/// to a real account.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test",
            "test",
            None,
            None,
            "latchkey-tests",
        )))
        .endpoint_url(endpoint)
        .build()
}

/// A fresh table/queue prefix, `t-<8 hex>`.
pub fn random_prefix() -> String {
    format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

mod e2e_macro;
/// Everything in the queue at `url` (consumed, with its message
/// attributes): the mail DLQ's contents in the worker tests.
pub async fn drain_queue(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let mut out = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive from the queue")
            .messages
            .unwrap_or_default();
        if got.is_empty() {
            return out;
        }
        for m in &got {
            let handle = m.receipt_handle().expect("a received message has a receipt handle");
            sqs.delete_message().queue_url(url).receipt_handle(handle).send().await.expect("delete from the queue");
        }
        out.extend(got);
    }
}

/// A string message attribute of `m`.
pub fn message_attribute(m: &aws_sdk_sqs::types::Message, name: &str) -> Option<String> {
    m.message_attributes()?.get(name)?.string_value().map(str::to_string)
}

pub mod logs;
pub mod scenarios;
pub mod system;
pub mod terraform;

/// The audit seal key the tests' trail writers and verifiers share.
pub fn audit_key() -> latchkey_core::keys::AuditKey {
    latchkey_core::keys::AuditKey::new(vec![3; 32]).expect("a 32-byte key")
}

/// The JSON fixture `tests/fixtures/<name>` as a `T` (a Lambda event type).
pub fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let raw = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{path}: not the event it should be: {e}"))
}
