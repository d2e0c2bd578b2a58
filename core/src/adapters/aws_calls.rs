//! Building the AWS clients once per process from one `SdkConfig`, the trust
//! store of their HTTPS client, and a `CallCounter` interceptor that records
//! which AWS operations were called (tests and benchmarks count round trips
//! with it).

use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{BeforeSerializationInterceptorContextRef, Input};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The process's AWS configuration from the usual sources (environment,
/// profile, instance role), loaded once at start-up. Its HTTPS client trusts
/// the system's CA store (the SDK's default): the local runner and the
/// operator commands.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// The variable that chooses the Lambda functions' trust store: `amazon`
/// (the default) or `system`.
pub const TLS_ROOTS_VAR: &str = "LATCHKEY_TLS_ROOTS";

/// The Amazon Trust Services root CAs (Amazon Root CA 1-4 and Starfield
/// Services Root Certificate Authority - G2), PEM. Where they come from,
/// their fingerprints and expiry dates are in the file.
pub const AMAZON_TRUST_ROOTS_PEM: &[u8] = include_bytes!("amazon-trust-roots.pem");

/// Which root certificates the AWS clients' HTTPS client trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRoots {
    /// Only [`AMAZON_TRUST_ROOTS_PEM`], compiled in: every AWS endpoint the
    /// functions call chains to these. Nothing is read from disk at cold
    /// start (the system store is a bundle file plus, on Debian, ~140 files
    /// of one certificate each: ~2 ms of a Lambda cold start), and no other
    /// CA can vouch for an AWS endpoint. `HTTPS_PROXY` is not honoured.
    Amazon,
    /// The system's CA store (`SSL_CERT_FILE` / `SSL_CERT_DIR`, else the
    /// distribution's), and `HTTPS_PROXY`: the SDK's own default client.
    System,
}

impl TlsRoots {
    /// Parses a value of [`TLS_ROOTS_VAR`]; unset or blank is `amazon`.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") | Some("amazon") => Ok(TlsRoots::Amazon),
            Some("system") => Ok(TlsRoots::System),
            Some(other) => Err(format!("{TLS_ROOTS_VAR}: must be amazon or system (got {other:?})")),
        }
    }

    /// [`TLS_ROOTS_VAR`] from the environment.
    pub fn from_env() -> Result<Self, String> {
        Self::parse(std::env::var(TLS_ROOTS_VAR).ok().as_deref())
    }
}

/// The Lambda functions' AWS configuration: as [`sdk_config`], with the
/// trust store [`TLS_ROOTS_VAR`] names (by default only the Amazon roots).
/// A bad value is a start-up error.
pub async fn lambda_sdk_config() -> Result<SdkConfig, BoxError> {
    sdk_config_with(TlsRoots::from_env()?).await
}

/// As [`sdk_config`], with the HTTPS client trusting `roots`.
pub async fn sdk_config_with(roots: TlsRoots) -> Result<SdkConfig, BoxError> {
    let loader = aws_config::defaults(BehaviorVersion::latest());
    let loader = match roots {
        TlsRoots::System => loader,
        TlsRoots::Amazon => loader.http_client(amazon_roots_client()?),
    };
    Ok(loader.load().await)
}

/// The SDK's default HTTPS client (hyper 1, rustls on aws-lc-rs) with a
/// trust store of the Amazon roots alone. rustls reads them when a client
/// is built on it.
fn amazon_roots_client() -> Result<SharedHttpClient, BoxError> {
    use aws_smithy_http_client::{Builder, tls};
    let roots = tls::TrustStore::empty().with_native_roots(false).with_pem_certificate(AMAZON_TRUST_ROOTS_PEM);
    let context = tls::TlsContext::builder().with_trust_store(roots).build()?;
    Ok(Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
        .tls_context(context)
        .build_https())
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

/// How long one DynamoDB, SQS or SSM request of the api may wait for its
/// answer before the SDK gives it up (and tries again, on a new connection).
/// The SDK sets no such limit: a request on a connection that went quiet
/// (a half-open socket, a brown-out) waited until Lambda ended the whole
/// invocation, and in the local runner on the AWS backend for ever.
pub const API_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one operation of the api may take with its retries: below the
/// api function's default timeout (10 s), so one call that stalls ends in a
/// 503 rather than the invocation's end (a request of several calls that
/// are each slow can still reach Lambda's timeout).
pub const API_OPERATION_TIMEOUT: Duration = Duration::from_secs(9);

/// `cfg` with the api's request timeouts ([`API_ATTEMPT_TIMEOUT`],
/// [`API_OPERATION_TIMEOUT`]); its connect timeout is kept (the SDK's
/// default, 3.1 s, if it has none). The batch functions bound their calls
/// by their invocation's deadline instead.
pub fn with_api_timeouts(cfg: &SdkConfig) -> SdkConfig {
    let connect = cfg.timeout_config().and_then(TimeoutConfig::connect_timeout).unwrap_or(Duration::from_millis(3100));
    cfg.to_builder()
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(connect)
                .operation_attempt_timeout(API_ATTEMPT_TIMEOUT)
                .operation_timeout(API_OPERATION_TIMEOUT)
                .build(),
        )
        .build()
}

/// How long one SES request may take before it is given up as a timeout
/// (transient). Shorter than `mail::delivery::MIN_SEND_WINDOW`, the time a
/// send is only started with, so a send ends by this timeout, never cut
/// off by the delivery's deadline.
pub const SES_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);

/// An SES v2 client on `cfg`, counting its calls into `counter` if given.
///
/// It makes one HTTP request per operation: no retries of the SDK's own,
/// and each request ends within [`SES_ATTEMPT_TIMEOUT`]. The delivery
/// retries sends itself (`mail::delivery`), inside its deadline and the
/// send rate limit, which counts one slot per try; SDK retries under it
/// would multiply the tries (3 per slot by default), overrun the rate, and
/// resend a request SES may already have taken, which sends the mail twice.
pub fn sesv2_client(cfg: &SdkConfig, counter: Option<&CallCounter>) -> aws_sdk_sesv2::Client {
    let mut b = aws_sdk_sesv2::config::Builder::from(cfg)
        .retry_config(RetryConfig::disabled())
        // Merged into the shared config's timeouts (its connect timeout stays).
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(SES_ATTEMPT_TIMEOUT)
                .operation_timeout(SES_ATTEMPT_TIMEOUT)
                .build(),
        );
    if let Some(c) = counter {
        b = b.interceptor(c.clone());
    }
    aws_sdk_sesv2::Client::from_conf(b.build())
}

/// Records every operation the clients it is attached to start, as
/// `service:Operation` with the service in lower case (`dynamodb:GetItem`,
/// `sqs:SendMessage`, `sesv2:SendEmail`), once per operation however often
/// the SDK retries it; and, apart, the IAM permissions those operations
/// need ([`Permission`]), so tests can hold a role's policy to the calls
/// its code makes. Clones share one record.
#[derive(Debug, Clone, Default)]
pub struct CallCounter {
    calls: Arc<Mutex<Vec<String>>>,
    permissions: Arc<Mutex<BTreeSet<Permission>>>,
}

/// One IAM permission an AWS call needs: the action, and the DynamoDB table
/// (with `/index/<name>` for a query of an index) it is needed on, `None`
/// for other services. A transaction needs no action of its own but one
/// per item: `dynamodb:PutItem`, `UpdateItem`, `DeleteItem` or
/// `ConditionCheckItem` on that item's table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    pub action: String,
    pub table: Option<String>,
}

impl Permission {
    fn on(action: &str, table: &str) -> Self {
        Permission { action: format!("dynamodb:{action}"), table: Some(table.to_string()) }
    }

    /// What `call` (`service:Operation`, as recorded) with this input needs.
    fn needed_by(call: &str, input: &Input) -> Vec<Permission> {
        use aws_sdk_dynamodb::operation::{
            batch_write_item::BatchWriteItemInput, delete_item::DeleteItemInput, get_item::GetItemInput,
            put_item::PutItemInput, query::QueryInput, transact_write_items::TransactWriteItemsInput,
            update_item::UpdateItemInput,
        };
        let table = |t: &Option<String>| t.clone().unwrap_or_default();
        if let Some(i) = input.downcast_ref::<GetItemInput>() {
            return vec![Permission::on("GetItem", &table(&i.table_name))];
        }
        if let Some(i) = input.downcast_ref::<PutItemInput>() {
            return vec![Permission::on("PutItem", &table(&i.table_name))];
        }
        if let Some(i) = input.downcast_ref::<UpdateItemInput>() {
            return vec![Permission::on("UpdateItem", &table(&i.table_name))];
        }
        if let Some(i) = input.downcast_ref::<DeleteItemInput>() {
            return vec![Permission::on("DeleteItem", &table(&i.table_name))];
        }
        if let Some(i) = input.downcast_ref::<QueryInput>() {
            let on = match &i.index_name {
                Some(index) => format!("{}/index/{index}", table(&i.table_name)),
                None => table(&i.table_name),
            };
            return vec![Permission::on("Query", &on)];
        }
        if let Some(i) = input.downcast_ref::<BatchWriteItemInput>() {
            // IAM checks BatchWriteItem on each table it writes.
            return i.request_items().into_iter().flatten().map(|(t, _)| Permission::on("BatchWriteItem", t)).collect();
        }
        if let Some(i) = input.downcast_ref::<TransactWriteItemsInput>() {
            return i
                .transact_items()
                .iter()
                .filter_map(|item| {
                    if let Some(x) = item.put() {
                        Some(Permission::on("PutItem", x.table_name()))
                    } else if let Some(x) = item.update() {
                        Some(Permission::on("UpdateItem", x.table_name()))
                    } else if let Some(x) = item.delete() {
                        Some(Permission::on("DeleteItem", x.table_name()))
                    } else {
                        item.condition_check().map(|x| Permission::on("ConditionCheckItem", x.table_name()))
                    }
                })
                .collect();
        }
        // Other services' actions: SES v2's are named `ses:` in IAM.
        let action = match call.split_once(':') {
            Some(("sesv2", op)) => format!("ses:{op}"),
            _ => call.to_string(),
        };
        vec![Permission { action, table: None }]
    }
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

    /// The permissions the calls recorded so far needed, leaving that
    /// record empty (the calls' own record is kept).
    pub fn take_permissions(&self) -> BTreeSet<Permission> {
        std::mem::take(&mut *self.permissions.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn record(&self, call: String, input: &Input) {
        let needs = Permission::needed_by(&call, input);
        self.permissions.lock().unwrap_or_else(PoisonError::into_inner).extend(needs);
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
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let call = match cfg.load::<Metadata>() {
            Some(m) => format!("{}:{}", m.service().to_ascii_lowercase(), m.name()),
            None => "unknown:unknown".to_string(),
        };
        self.record(call, context.input());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature;
    use base64::Engine;
    use sha2::Digest;
    use time::macros::datetime;

    /// The five roots by subject (in DER order), with their expiry and the
    /// SHA-256 of their DER (as in the file's comments).
    const EXPECTED: [(&str, time::OffsetDateTime, &str); 5] = [
        (
            "C=US, O=Amazon, CN=Amazon Root CA 1",
            datetime!(2038-01-17 00:00:00 UTC),
            "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e",
        ),
        (
            "C=US, O=Amazon, CN=Amazon Root CA 2",
            datetime!(2040-05-26 00:00:00 UTC),
            "1ba5b2aa8c65401a82960118f80bec4f62304d83cec4713a19c39c011ea46db4",
        ),
        (
            "C=US, O=Amazon, CN=Amazon Root CA 3",
            datetime!(2040-05-26 00:00:00 UTC),
            "18ce6cfe7bf14e60b2e347b8dfe868cb31d02ebb3ada271569f50343b46db3a4",
        ),
        (
            "C=US, O=Amazon, CN=Amazon Root CA 4",
            datetime!(2040-05-26 00:00:00 UTC),
            "e35d28419ed02025cfa69038cd623962458da5c695fbdea3c22b0bfb25897092",
        ),
        (
            "C=US, ST=Arizona, L=Scottsdale, O=Starfield Technologies, Inc., \
             CN=Starfield Services Root Certificate Authority - G2",
            datetime!(2037-12-31 23:59:59 UTC),
            "568d6905a2c88708a4b3025190edcfedb1974a606a13c6e5290fcb2ae63edab5",
        ),
    ];

    /// The DER of each CERTIFICATE block of a PEM text; any other block is
    /// refused.
    fn pem_certificates(pem: &str) -> Vec<Vec<u8>> {
        let mut certs = Vec::new();
        let mut body: Option<String> = None;
        for line in pem.lines().map(str::trim) {
            match (line, &mut body) {
                ("-----BEGIN CERTIFICATE-----", None) => body = Some(String::new()),
                ("-----END CERTIFICATE-----", Some(b64)) => {
                    certs.push(base64::engine::general_purpose::STANDARD.decode(&*b64).expect("base64"));
                    body = None;
                }
                (l, _) if l.starts_with("-----") => panic!("unexpected PEM line {l:?}"),
                (l, Some(b64)) => b64.push_str(l),
                (_, None) => {}
            }
        }
        assert!(body.is_none(), "unterminated PEM block");
        certs
    }

    /// The first DER element of `input`: tag, contents, the whole element,
    /// and what follows it.
    fn der(input: &[u8]) -> (u8, &[u8], &[u8], &[u8]) {
        let (tag, first) = (input[0], input[1]);
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            (input[2..2 + n].iter().fold(0, |acc, &b| acc << 8 | usize::from(b)), 2 + n)
        };
        (tag, &input[header..header + len], &input[..header + len], &input[header + len..])
    }

    /// The elements inside a SEQUENCE's or SET's contents: (tag, contents, whole).
    fn elements(mut contents: &[u8]) -> Vec<(u8, &[u8], &[u8])> {
        let mut out = Vec::new();
        while !contents.is_empty() {
            let (tag, inner, whole, rest) = der(contents);
            out.push((tag, inner, whole));
            contents = rest;
        }
        out
    }

    /// An X.509 Name as `C=US, O=Amazon, CN=...`, in DER order.
    fn name(contents: &[u8]) -> String {
        let mut parts = Vec::new();
        for (_, rdn, _) in elements(contents) {
            for (_, attribute, _) in elements(rdn) {
                let [(_, oid, _), (_, value, _)] = elements(attribute)[..] else { panic!("attribute") };
                let key = match oid {
                    [0x55, 0x04, 0x03] => "CN",
                    [0x55, 0x04, 0x06] => "C",
                    [0x55, 0x04, 0x07] => "L",
                    [0x55, 0x04, 0x08] => "ST",
                    [0x55, 0x04, 0x0a] => "O",
                    other => panic!("unexpected name attribute {other:02x?}"),
                };
                parts.push(format!("{key}={}", std::str::from_utf8(value).expect("utf-8")));
            }
        }
        parts.join(", ")
    }

    /// A UTCTime or GeneralizedTime (`...Z`).
    fn der_time(tag: u8, contents: &[u8]) -> time::OffsetDateTime {
        let s = std::str::from_utf8(contents).expect("ascii");
        let s = match tag {
            0x17 if &s[..2] < "50" => format!("20{s}"),
            0x17 => format!("19{s}"),
            0x18 => s.to_string(),
            t => panic!("not a time: tag {t:#x}"),
        };
        let n = |from: usize, len: usize| s[from..from + len].parse::<u8>().expect("digits");
        let year: i32 = s[..4].parse().expect("year");
        let month = time::Month::try_from(n(4, 2)).expect("month");
        time::Date::from_calendar_date(year, month, n(6, 2))
            .and_then(|d| d.with_hms(n(8, 2), n(10, 2), n(12, 2)))
            .expect("date")
            .assume_utc()
    }

    struct Parsed {
        subject: String,
        issuer_is_subject: bool,
        ca: bool,
        not_after: time::OffsetDateTime,
        /// The signature verifies with the certificate's own key.
        self_signed: bool,
    }

    fn parse_certificate(cert: &[u8]) -> Parsed {
        let (_, body, _, rest) = der(cert);
        assert!(rest.is_empty(), "trailing bytes");
        let [(_, tbs, tbs_whole), (_, algorithm, _), (_, sig, _)] = elements(body)[..] else { panic!("certificate") };
        let fields = elements(tbs);
        // [0] version, serial, signature algorithm, issuer, validity, subject, key, [3] extensions
        assert_eq!(fields[0].0, 0xa0, "X.509 v3");
        let (issuer, subject) = (fields[3].2, fields[5].2);
        let validity = elements(fields[4].1);
        let key = elements(fields[6].1)[1].1;
        let ca = fields
            .iter()
            .find(|f| f.0 == 0xa3)
            .map(|f| elements(der(f.1).1))
            .unwrap_or_default()
            .into_iter()
            .map(|(_, ext, _)| elements(ext))
            .find(|ext| ext[0].1 == [0x55, 0x1d, 0x13]) // basicConstraints
            .is_some_and(|ext| {
                let value = ext.last().expect("extnValue").1;
                elements(der(value).1).first().is_some_and(|(tag, v, _)| *tag == 0x01 && *v == [0xff])
            });
        let alg: &dyn signature::VerificationAlgorithm = match elements(algorithm)[0].1 {
            [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b] => &signature::RSA_PKCS1_2048_8192_SHA256,
            [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c] => &signature::RSA_PKCS1_2048_8192_SHA384,
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02] => &signature::ECDSA_P256_SHA256_ASN1,
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03] => &signature::ECDSA_P384_SHA384_ASN1,
            other => panic!("unexpected signature algorithm {other:02x?}"),
        };
        // BIT STRINGs: the first byte counts unused bits (0 here).
        let self_signed = signature::UnparsedPublicKey::new(alg, &key[1..]).verify(tbs_whole, &sig[1..]).is_ok();
        Parsed {
            subject: name(fields[5].1),
            issuer_is_subject: issuer == subject,
            ca,
            not_after: der_time(validity[1].0, validity[1].1),
            self_signed,
        }
    }

    #[test]
    fn the_pinned_roots_are_the_five_amazon_trust_services_cas() {
        let pem = std::str::from_utf8(AMAZON_TRUST_ROOTS_PEM).expect("the PEM file is text");
        let certs = pem_certificates(pem);
        assert_eq!(certs.len(), EXPECTED.len(), "certificates in amazon-trust-roots.pem");
        // A year's notice before a root expires: replace the file then.
        let deadline = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        for (cert, (subject, not_after, sha256)) in certs.iter().zip(EXPECTED) {
            let p = parse_certificate(cert);
            assert_eq!(p.subject, subject);
            assert_eq!(hex::encode(sha2::Sha256::digest(cert)), sha256, "{subject}: fingerprint");
            assert!(p.issuer_is_subject && p.self_signed, "{subject}: not self-signed");
            assert!(p.ca, "{subject}: not a CA (basicConstraints)");
            assert_eq!(p.not_after, not_after, "{subject}: expiry");
            assert!(p.not_after > deadline, "{subject}: expires {}, within a year", p.not_after);
        }
    }

    #[tokio::test]
    async fn rustls_takes_the_pinned_roots() {
        // Building an SDK client builds its HTTPS connector, where rustls
        // parses the roots (and panics on one it cannot use).
        let cfg = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .http_client(amazon_roots_client().expect("client"))
            .build();
        let _ = dynamo_client(&cfg, None);
    }

    /// An HTTP client that answers every request with `status` (or never,
    /// with `None`) and counts the requests.
    #[derive(Debug, Clone)]
    struct Canned {
        status: Option<u16>,
        requests: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl aws_smithy_runtime_api::client::http::HttpConnector for Canned {
        fn call(
            &self,
            _request: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
        ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
            use aws_smithy_runtime_api::client::http::HttpConnectorFuture;
            use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
            self.requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match self.status {
                Some(s) => HttpConnectorFuture::ready(Ok(HttpResponse::new(
                    s.try_into().expect("a status"),
                    aws_smithy_types::body::SdkBody::empty(),
                ))),
                None => HttpConnectorFuture::new(std::future::pending()),
            }
        }
    }

    impl aws_smithy_runtime_api::client::http::HttpClient for Canned {
        fn http_connector(
            &self,
            _settings: &aws_smithy_runtime_api::client::http::HttpConnectorSettings,
            _components: &RuntimeComponents,
        ) -> aws_smithy_runtime_api::client::http::SharedHttpConnector {
            aws_smithy_runtime_api::client::http::SharedHttpConnector::new(self.clone())
        }
    }

    /// A configuration whose HTTP client is `canned`.
    fn over(canned: &Canned) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sesv2::config::SharedCredentialsProvider::new(
                aws_sdk_sesv2::config::Credentials::new("test", "test", None, None, "test"),
            ))
            .http_client(SharedHttpClient::new(canned.clone()))
            .build()
    }

    /// One `SendEmail` through `sesv2_client` over `canned`.
    async fn send_email_over(canned: &Canned) -> Result<(), crate::mail::delivery::SendError> {
        use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message};
        let cfg = over(canned);
        let text = Content::builder().data("hello").build().expect("content");
        let message = Message::builder().subject(text.clone()).body(Body::builder().text(text).build()).build();
        sesv2_client(&cfg, None)
            .send_email()
            .from_email_address("noreply@example.com")
            .destination(Destination::builder().to_addresses("dora@example.com").build())
            .content(EmailContent::builder().simple(message).build())
            .send()
            .await
            .map(|_| ())
            .map_err(crate::adapters::ses::classify)
    }

    #[tokio::test(start_paused = true)]
    async fn the_ses_client_sends_one_request_per_send() {
        // A 503 and a 429 are what the SDK's standard retries would repeat.
        for status in [503, 429] {
            let canned = Canned { status: Some(status), requests: Arc::default() };
            let result = send_email_over(&canned).await;
            assert!(matches!(result, Err(crate::mail::delivery::SendError::Transient(_))), "{result:?}");
            assert_eq!(canned.requests.load(std::sync::atomic::Ordering::SeqCst), 1, "HTTP {status}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_ses_request_ends_by_its_own_timeout_within_the_send_window() {
        assert!(SES_ATTEMPT_TIMEOUT < crate::mail::delivery::MIN_SEND_WINDOW);
        let canned = Canned { status: None, requests: Arc::default() };
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(600), send_email_over(&canned))
            .await
            .expect("the SES client gave up by itself");
        assert_eq!(result, Err(crate::mail::delivery::SendError::Transient("SES request timed out".into())));
        assert_eq!(started.elapsed(), SES_ATTEMPT_TIMEOUT);
        assert_eq!(canned.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    use aws_sdk_dynamodb::types::AttributeValue::S as AttrS;

    #[tokio::test(start_paused = true)]
    async fn an_api_request_that_gets_no_answer_is_given_up_in_time() {
        let canned = Canned { status: None, requests: Arc::default() };
        let cfg = over(&canned);
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(600),
            dynamo_client(&with_api_timeouts(&cfg), None)
                .get_item()
                .table_name("t")
                .key("pk", AttrS("x".into()))
                .send(),
        )
        .await
        .expect("the DynamoDB client gave up by itself");
        assert!(result.is_err());
        assert_eq!(started.elapsed(), API_OPERATION_TIMEOUT);
        // A try that waited its limit was given up for another (how many
        // fit depends on the retries' jittered backoff).
        assert!(canned.requests.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    }

    #[test]
    fn tls_roots_values() {
        for (value, roots) in [
            (None, TlsRoots::Amazon),
            (Some(""), TlsRoots::Amazon),
            (Some(" "), TlsRoots::Amazon),
            (Some("amazon"), TlsRoots::Amazon),
            (Some("system"), TlsRoots::System),
            (Some(" system\n"), TlsRoots::System),
        ] {
            assert_eq!(TlsRoots::parse(value), Ok(roots), "{value:?}");
        }
        for bad in ["native", "Amazon", "SYSTEM", "amazon,system"] {
            let e = TlsRoots::parse(Some(bad)).expect_err(bad);
            assert!(e.starts_with("LATCHKEY_TLS_ROOTS: must be amazon or system") && e.contains(bad), "{e}");
        }
    }
}
