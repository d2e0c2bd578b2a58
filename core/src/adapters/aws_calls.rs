//! Building the AWS clients once per process from one `SdkConfig`, and a
//! `CallCounter` interceptor that records which AWS operations were called
//! (tests and benchmarks count round trips with it).

use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use std::sync::{Arc, Mutex, PoisonError};

/// The process's AWS configuration from the usual sources (environment,
/// profile, instance role), loaded once at start-up.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// A DynamoDB client on `cfg`, counting its calls into `counter` if given.
pub fn dynamo_client(cfg: &SdkConfig, counter: Option<&CallCounter>) -> aws_sdk_dynamodb::Client {
    let mut b = aws_sdk_dynamodb::config::Builder::from(cfg);
    if let Some(c) = counter {
        b = b.interceptor(c.clone());
    }
    aws_sdk_dynamodb::Client::from_conf(b.build())
}

/// An SQS client on `cfg`, counting its calls into `counter` if given.
pub fn sqs_client(cfg: &SdkConfig, counter: Option<&CallCounter>) -> aws_sdk_sqs::Client {
    let mut b = aws_sdk_sqs::config::Builder::from(cfg);
    if let Some(c) = counter {
        b = b.interceptor(c.clone());
    }
    aws_sdk_sqs::Client::from_conf(b.build())
}

/// An SES v2 client on `cfg`, counting its calls into `counter` if given.
pub fn sesv2_client(cfg: &SdkConfig, counter: Option<&CallCounter>) -> aws_sdk_sesv2::Client {
    let mut b = aws_sdk_sesv2::config::Builder::from(cfg);
    if let Some(c) = counter {
        b = b.interceptor(c.clone());
    }
    aws_sdk_sesv2::Client::from_conf(b.build())
}

/// Records every operation the clients it is attached to start, as
/// `service:Operation` with the service in lower case (`dynamodb:GetItem`,
/// `sqs:SendMessage`, `sesv2:SendEmail`), once per operation however often
/// the SDK retries it. Clones share one record.
#[derive(Debug, Clone, Default)]
pub struct CallCounter {
    calls: Arc<Mutex<Vec<String>>>,
}

impl CallCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// The calls recorded so far, leaving the record empty.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The calls recorded so far.
    pub fn snapshot(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn record(&self, call: String) {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).push(call);
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "latchkey::CallCounter"
    }

    // Not `read_before_execution`: a client-level interceptor runs that hook
    // before the operation's own configuration (which holds `Metadata`) is
    // in the bag. This hook runs once per operation, outside the retry loop.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let call = match cfg.load::<Metadata>() {
            Some(m) => format!("{}:{}", m.service().to_ascii_lowercase(), m.name()),
            None => "unknown:unknown".to_string(),
        };
        self.record(call);
        Ok(())
    }
}
