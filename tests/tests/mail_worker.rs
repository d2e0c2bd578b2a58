//! The mail worker on the emulator: real SQS queues, the DynamoDB ledger,
//! SES v2 (sent mail read back from moto: `localstack/moto_server.py`'s
//! `/latchkey/ses.json`, or `/moto-api/data.json` on another moto), and a
//! small HTTP proxy in front of moto that answers SES requests with 429/503
//! to inject faults.

// Test support code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::QueueAttributeName;
use latchkey_core::adapters::aws_calls::SES_ATTEMPT_TIMEOUT;
use latchkey_core::adapters::dynamo::audit::DynamoAuditStore;
use latchkey_core::audit::{AuditEventType, AuditPolicy, AuditStore, verify_chain};
use latchkey_core::clock::{Clock, SystemClock};
use latchkey_core::domain::{Email, Secret};
use latchkey_core::mail::delivery::{RetryPolicy, ledger_state};
use latchkey_core::mail::{MailEnvelope, MailJob};
use latchkey_core::tables;
use latchkey_mail_worker::poller::{Poller, record};
use latchkey_mail_worker::{Clients, FAILURE_REASON_ATTRIBUTE, Worker, WorkerConfig, handle};
use latchkey_stream_processor::Processor;
use latchkey_stream_processor::poller::{StreamPoller, deliver};
use latchkey_tests::{drain_queue, emulator_endpoint, message_attribute, random_prefix, sdk_config};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

const FROM: &str = "latchkey <noreply@latchkey.test>";

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        max_retries: 2,
        reserve: Duration::from_millis(50),
    }
}

fn rcpt(tag: &str) -> String {
    format!("{tag}-{}@example.com", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A standalone code for `to`, queued now (it lives 10 minutes).
fn job(to: &str) -> MailEnvelope {
    job_at(to, SystemClock.now(), MailJob::StandaloneCode { code: Secret::new("135790".into()), expires_minutes: 10 })
}

fn job_at(to: &str, created_at: i64, job: MailJob) -> MailEnvelope {
    MailEnvelope::new(
        uuid::Uuid::new_v4().simple().to_string(),
        &Email::parse(to).expect("address"),
        created_at,
        None,
        None,
        job,
    )
}

/// Answers SES `SendEmail` requests with an error while `fail` says so;
/// forwards everything else to moto.
#[derive(Clone)]
struct Fault {
    /// Fail the first N SES sends.
    first: Arc<AtomicUsize>,
    /// Fail every SES send whose body contains this.
    matching: Option<String>,
    always: bool,
    /// How long each forwarded SES send is held before it goes to moto.
    delay: Duration,
    /// SES sends seen (failed or forwarded).
    seen: Arc<AtomicUsize>,
    /// Forwarded SES sends the client hung up on before moto answered
    /// (its attempt timeout: an ambiguous failure, which the delivery
    /// tries again by design).
    timed_out: Arc<AtomicUsize>,
    /// Each forwarded SES send's answer, in order: its HTTP status and how
    /// long moto took.
    answers: Arc<std::sync::Mutex<Vec<(u16, Duration)>>>,
}

impl Fault {
    /// What the proxy saw of SES, for a failure's message: a count of sends
    /// that is off by one may come from a moto answer slower than the SES
    /// client's attempt timeout (`SES_ATTEMPT_TIMEOUT`), which the delivery
    /// tries again by design.
    fn seen_by_proxy(&self) -> String {
        format!(
            "SES sends seen by the proxy {}, cut off by the client {}, moto's answers {:?}",
            self.seen.load(Ordering::SeqCst),
            self.timed_out.load(Ordering::SeqCst),
            self.answers.lock().expect("answers")
        )
    }

    fn none() -> Self {
        Fault {
            first: Arc::new(AtomicUsize::new(0)),
            matching: None,
            always: false,
            delay: Duration::ZERO,
            seen: Arc::default(),
            timed_out: Arc::default(),
            answers: Arc::default(),
        }
    }
}

/// An SES send in the proxy: its answer goes into `Fault::answers`; one
/// dropped before it had one (the client hung up) is counted into
/// `Fault::timed_out`.
struct SesSend {
    start: std::time::Instant,
    fault: Fault,
    answered: bool,
}

impl SesSend {
    fn answered(&mut self, status: u16) {
        self.answered = true;
        self.fault.answers.lock().expect("answers").push((status, self.start.elapsed()));
    }
}

impl Drop for SesSend {
    fn drop(&mut self) {
        if !self.answered {
            self.fault.timed_out.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Starts the proxy; returns its endpoint.
async fn proxy(upstream: String, fault: Fault) -> String {
    use axum::body::{Body, to_bytes};
    use axum::extract::{Request, State};
    use axum::response::Response;
    // A fresh connection to moto per request: a pooled one that moto has
    // just closed fails the request it is reused for (a send the worker
    // would see fail, not one SES refused).
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("an HTTP client");
    let app = axum::Router::new().fallback(move |State(f): State<Fault>, req: Request| {
        let (http, upstream) = (http.clone(), upstream.clone());
        async move {
            let (parts, body) = req.into_parts();
            let ses = parts.uri.path().starts_with("/v2/email/outbound-emails");
            // Counted when the answer is done or dropped (the client hung up).
            let mut send = ses.then(|| SesSend { start: std::time::Instant::now(), fault: f.clone(), answered: false });
            let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
            if ses {
                let n = f.seen.fetch_add(1, Ordering::SeqCst);
                let text = String::from_utf8_lossy(&bytes);
                let fail = f.always
                    || f.matching.as_deref().is_some_and(|m| text.contains(m))
                    || f.first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1)).is_ok();
                if fail {
                    // Alternate a typed throttling error and a bare 503.
                    return if n % 2 == 0 {
                        Response::builder()
                            .status(429)
                            .header("x-amzn-errortype", "TooManyRequestsException")
                            .header("content-type", "application/json")
                            .body(Body::from(r#"{"message":"Too many requests"}"#))
                            .unwrap()
                    } else {
                        Response::builder().status(503).body(Body::from("unavailable")).unwrap()
                    };
                }
            }
            if ses {
                tokio::time::sleep(f.delay).await;
            }
            let url = format!("{upstream}{}", parts.uri.path_and_query().map_or("/", |p| p.as_str()));
            let mut req = http.request(parts.method.clone(), url).body(bytes.to_vec());
            for (k, v) in &parts.headers {
                if !matches!(k.as_str(), "host" | "content-length" | "transfer-encoding") {
                    req = req.header(k, v);
                }
            }
            let resp = req.send().await;
            // No answer from moto is passed on as a 502.
            if let Some(send) = &mut send {
                send.answered(resp.as_ref().map_or(502, |r| r.status().as_u16()));
            }
            let resp = match resp {
                Ok(r) => r,
                Err(e) => return Response::builder().status(502).body(Body::from(format!("moto: {e}"))).unwrap(),
            };
            let mut out = Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                if !matches!(k.as_str(), "content-length" | "transfer-encoding" | "connection") {
                    out = out.header(k, v);
                }
            }
            out.body(Body::from(resp.bytes().await.unwrap_or_default())).unwrap()
        }
    });
    let app = app.with_state(fault);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

struct Rig {
    endpoint: String,
    prefix: String,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    dlq_url: String,
    worker: Arc<Worker>,
    fault: Fault,
}

/// Tables, queues (with `visibility` seconds) and the SES identity on the
/// emulator, and a worker whose SES calls pass through a fault proxy.
async fn rig(fault: Fault, from: &str, visibility: Option<u32>, prefix: Option<String>) -> Rig {
    let endpoint = emulator_endpoint().await;
    let sdk = sdk_config(&endpoint).await;
    let prefix = prefix.unwrap_or_else(random_prefix);
    let clients = Clients::from_sdk(&sdk);
    latchkey_core::adapters::dynamo::ensure_tables(&clients.dynamo, &prefix).await.unwrap();
    let (queue_url, dlq_url) = latchkey_core::adapters::sqs::ensure_queues(&clients.sqs, &prefix).await.unwrap();
    if let Some(v) = visibility {
        clients
            .sqs
            .set_queue_attributes()
            .queue_url(&queue_url)
            .attributes(QueueAttributeName::VisibilityTimeout, v.to_string())
            .send()
            .await
            .unwrap();
    }
    latchkey_mail_worker::local::ensure_identity(&clients.ses, FROM).await.unwrap();
    let proxied = sdk_config(&proxy(endpoint.clone(), fault.clone()).await).await;
    // Built as the worker builds it (no SDK retries under its own).
    let clients = Clients { ses: latchkey_core::adapters::aws_calls::sesv2_client(&proxied, None), ..clients };
    let (q, d) = (queue_url.clone(), dlq_url.clone());
    let cfg = WorkerConfig::from_lookup(|k| {
        Some(match k {
            "LATCHKEY_TABLE_PREFIX" => prefix.clone(),
            "LATCHKEY_MAIL_QUEUE_URL" => q.clone(),
            "LATCHKEY_MAIL_DLQ_URL" => d.clone(),
            "LATCHKEY_SES_FROM" => from.to_string(),
            "LATCHKEY_SES_MAX_SEND_RATE" => "200".into(),
            "PUBLIC_BASE_URL" => "http://127.0.0.1:3000".into(),
            _ => return None,
        })
    })
    .unwrap();
    let sqs = clients.sqs.clone();
    let worker = Arc::new(Worker::with_retry(&cfg, clients, fast_retry()).unwrap());
    Rig { endpoint, prefix, sqs, queue_url, dlq_url, worker, fault }
}

impl Rig {
    /// SES mails moto recorded for `to`.
    async fn mails(&self, to: &str) -> Vec<Value> {
        addressed(&self.sent().await, to)
    }

    /// Every SES mail moto recorded (fetch once, filter many).
    async fn sent(&self) -> Vec<Value> {
        // `localstack/moto_server.py` serves moto's SES record alone. Any
        // other moto has only `/moto-api/data.json`, which serialises its
        // whole state, every model it ever made (6 s late in a run here),
        // holding up every other request meanwhile: one read at a time
        // there, so the tests running beside this one wait for one read,
        // not several.
        static ONE_READ: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _read = ONE_READ.lock().await;
        let lean = format!("{}/latchkey/ses.json", self.endpoint);
        let whole = format!("{}/moto-api/data.json", self.endpoint);
        let mut url = &lean;
        // A request racing another test's writes can fail ("dictionary
        // changed size"): ask again.
        let mut data = Value::Null;
        for attempt in 0..10 {
            let started = Instant::now();
            let r = reqwest::get(url).await.unwrap();
            if r.status() == reqwest::StatusCode::NOT_FOUND && url == &lean {
                url = &whole;
                continue;
            }
            let read = r.json::<Value>().await;
            // Shown with a failure: how long the emulator was held up.
            eprintln!("{url} read in {:?}", started.elapsed());
            match read {
                Ok(v) => {
                    data = v;
                    break;
                }
                Err(e) if attempt < 9 => {
                    eprintln!("{url} unreadable ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("moto's SES record ({url}): {e}"),
            }
        }
        data["ses"]["Message"].as_array().cloned().unwrap_or_default()
    }

    async fn send(&self, body: &str) {
        self.sqs.send_message().queue_url(&self.queue_url).message_body(body).send().await.unwrap();
    }

    async fn poller(&self) -> Poller {
        Poller::new(self.sqs.clone(), self.queue_url.clone()).await.unwrap()
    }

    /// Everything in the DLQ (consumed).
    async fn dead_letters(&self) -> Vec<aws_sdk_sqs::types::Message> {
        drain_queue(&self.sqs, &self.dlq_url).await
    }

    async fn queue_depth(&self, url: &str) -> u64 {
        let a = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap_or_default();
        a.values().map(|v| v.parse::<u64>().unwrap_or(0)).sum()
    }
}

/// The api on the emulator with the rig's prefix (TestSystem picks its own
/// prefix and reads the queue itself, which would take the worker's mail).
struct Api {
    base: String,
    http: reqwest::Client,
    _built: latchkey_api::wiring::Built,
}

impl Api {
    async fn start(prefix: &str) -> Self {
        use base64::Engine;
        let sdk = sdk_config(&emulator_endpoint().await).await;
        let key = latchkey_core::keys::SigningKey::generate().unwrap().to_base64();
        let hmac = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let pairs: std::collections::HashMap<&str, String> = [
            ("LATCHKEY_BACKEND", "aws".to_string()),
            ("LATCHKEY_TABLE_PREFIX", prefix.to_string()),
            ("LATCHKEY_BOOTSTRAP", "true".to_string()),
            ("LATCHKEY_JWT_PRIVATE_KEY", key),
            ("LATCHKEY_CODE_HMAC_KEY", hmac),
            ("LATCHKEY_RATE_LIMITS", "relaxed".to_string()),
        ]
        .into_iter()
        .collect();
        let cfg = latchkey_core::config::Config::from_lookup(|k| pairs.get(k).cloned()).unwrap();
        let opts = latchkey_api::wiring::BuildOptions { sdk: Some(sdk), ..Default::default() };
        let built = latchkey_api::wiring::build_with(&cfg, opts).await.unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = latchkey_api::app(built.state.clone());
        tokio::spawn(latchkey_api::wiring::serve_threads(listener, app, 2, std::future::pending()));
        Api { base, http: reqwest::Client::new(), _built: built }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value, ()) {
        let r = self.http.post(format!("{}{path}", self.base)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null), ())
    }
}

fn addressed(sent: &[Value], to: &str) -> Vec<Value> {
    sent.iter()
        .filter(|m| m["destinations"]["ToAddresses"].as_array().is_some_and(|a| a.iter().any(|t| t == to)))
        .cloned()
        .collect()
}

fn reason(m: &aws_sdk_sqs::types::Message) -> Option<String> {
    message_attribute(m, FAILURE_REASON_ATTRIBUTE)
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

#[tokio::test]
async fn register_then_poll_sends_a_working_verification_link_and_the_login_code() {
    let prefix = random_prefix();
    let rig = rig(Fault::none(), FROM, None, Some(prefix.clone())).await;
    let sys = Api::start(&prefix).await;
    let poller = rig.poller().await;
    let (username, email) = latchkey_tests::scenarios::unique();
    let (st, body, _) = sys
        .post(
            "/v1/register",
            json!({"username": username, "email": email, "password": latchkey_tests::scenarios::PASSWORD}),
        )
        .await;
    assert_eq!(st, 202, "{body}");
    let stats = poller.poll_once(&rig.worker).await.unwrap();
    assert_eq!((stats.received, stats.handled, stats.failed), (1, 1, 0));

    let mails = rig.mails(&email).await;
    assert_eq!(mails.len(), 1, "{mails:?}; {}", rig.fault.seen_by_proxy());
    let html = mails[0]["body"].as_str().unwrap();
    let token = html.split("verify-email?token=").nth(1).unwrap().split(['"', '<', '&', ' ']).next().unwrap();
    let (st, body, _) = sys.post("/v1/verify-email", json!({ "token": token })).await;
    assert_eq!(st, 200, "{body}");

    let (st, body, _) =
        sys.post("/v1/login", json!({"identifier": username, "password": latchkey_tests::scenarios::PASSWORD})).await;
    assert_eq!(st, 202, "{body}");
    let challenge = body["challenge_id"].as_str().unwrap().to_string();
    assert_eq!(poller.poll_once(&rig.worker).await.unwrap().handled, 1);
    let mails = rig.mails(&email).await;
    assert_eq!(mails.len(), 2);
    let code_html = mails[1]["body"].as_str().unwrap();
    let code: String =
        code_html.split("monospace\">").nth(1).unwrap().chars().take_while(char::is_ascii_digit).collect();
    assert_eq!(code.len(), 6, "{code_html}");
    let (st, body, _) = sys.post("/v1/login/otp", json!({"challenge_id": challenge, "code": code})).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(rig.queue_depth(&rig.queue_url).await, 0, "handled messages are deleted");

    // The rest of the AWS pipeline: the streams of the users, tokens and
    // mail-ledger tables, read as Lambda's mappings read them, into the
    // stream processor. No record is refused (the worker's ledger writes
    // among them) and both deliveries are in the user's sealed trail.
    let access = body["access_token"].as_str().unwrap().to_string();
    let me: Value =
        sys.http.get(format!("{}/v1/me", sys.base)).bearer_auth(&access).send().await.unwrap().json().await.unwrap();
    let id = me["id"].as_str().unwrap().to_string();
    let sdk = sdk_config(&emulator_endpoint().await).await;
    let audit = Arc::new(DynamoAuditStore::new(aws_sdk_dynamodb::Client::new(&sdk), &prefix));
    let processor = Processor::new(audit.clone(), latchkey_tests::audit_key(), AuditPolicy::default(), 400);
    let mut streams = StreamPoller::new(&sdk, &prefix);
    let mut given_up = Vec::new();
    for _ in 0..5 {
        let batch = streams.next_batch().await.unwrap();
        if batch.records.is_empty() {
            break;
        }
        given_up.extend(deliver(&processor, batch, 1, Duration::ZERO).await);
    }
    assert!(given_up.is_empty(), "stream records the processor refused: {given_up:?}");
    let chain = audit.chain(&id).await.unwrap();
    let delivered = chain.iter().filter(|r| r.event == AuditEventType::MailDelivered).count();
    assert_eq!(delivered, 2, "{chain:?}");
    verify_chain(&latchkey_tests::audit_key(), &id, &chain).unwrap();
}

#[tokio::test]
async fn the_same_job_delivered_three_times_is_one_mail() {
    let rig = rig(Fault::none(), FROM, None, None).await;
    let to = rcpt("dup");
    let env = job(&to);
    // The same SQS message handed over three times, one after another...
    for _ in 0..3 {
        let ev = event(vec![record("msg-1", &env.to_json())]);
        assert!(handle(ev, &rig.worker, soon()).await.batch_item_failures.is_empty());
    }
    // ...and three copies in one batch plus three queued copies.
    let ev = event((0..3).map(|i| record(&format!("copy-{i}"), &env.to_json())).collect());
    handle(ev, &rig.worker, soon()).await;
    for _ in 0..3 {
        rig.send(&env.to_json()).await;
    }
    let poller = rig.poller().await;
    while poller.poll_once(&rig.worker).await.unwrap().received > 0 {}
    assert_eq!(rig.mails(&to).await.len(), 1, "{}", rig.fault.seen_by_proxy());
    let e = rig.worker.deliverer().ledger().entry(&env.id).await.unwrap().unwrap();
    assert_eq!((e.state.as_str(), e.attempts), (ledger_state::SENT, 1));
    assert!(!format!("{e:?}").contains("135790"), "no code in the ledger");
}

/// Ctrl-C on `mail-worker poll` (the poller's shutdown) while a batch is
/// being sent: the batch is handled to its end first, so its mail goes out
/// once, the ledger records it sent and the message is deleted (cut off,
/// the send would be left claimed for a lease, the message in flight).
#[tokio::test]
async fn a_shutdown_during_a_batch_lets_it_finish() {
    let fault = Fault { delay: Duration::from_millis(400), ..Fault::none() };
    let rig = rig(fault, FROM, None, None).await;
    let to = rcpt("shutdown");
    let env = job(&to);
    rig.send(&env.to_json()).await;
    let seen = rig.fault.seen.clone();
    // Shut down as soon as the send reaches SES (held there 400 ms).
    let shutdown = async move {
        while seen.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let run = latchkey_mail_worker::poller::run_poller(rig.poller().await, rig.worker.clone(), shutdown);
    tokio::time::timeout(Duration::from_secs(20), run).await.expect("the poller stops after its batch");
    assert_eq!(rig.fault.answers.lock().unwrap().len(), 1, "the send was answered, not cut off");
    assert_eq!(rig.mails(&to).await.len(), 1, "{}", rig.fault.seen_by_proxy());
    let e = rig.worker.deliverer().ledger().entry(&env.id).await.unwrap().unwrap();
    assert_eq!(e.state.as_str(), ledger_state::SENT);
    assert_eq!(rig.queue_depth(&rig.queue_url).await, 0, "the handled message is deleted");

    // Shut down while a receive waits on an empty queue: at once.
    let run = latchkey_mail_worker::poller::run_poller(rig.poller().await, rig.worker.clone(), async {});
    tokio::time::timeout(Duration::from_secs(5), run).await.expect("an idle poller stops");
}

fn event(records: Vec<SqsMessage>) -> SqsEvent {
    let mut e = SqsEvent::default();
    e.records = records;
    e
}

#[tokio::test]
async fn a_batch_of_ten_with_two_failing_reports_exactly_those_two() {
    let fault = Fault { matching: Some("fail-".into()), ..Fault::none() };
    let rig = rig(fault, FROM, None, None).await;
    let tos: Vec<String> = (0..10).map(|i| rcpt(if i == 3 || i == 7 { "fail" } else { "ok" })).collect();
    let records: Vec<SqsMessage> =
        tos.iter().enumerate().map(|(i, to)| record(&format!("m{i}"), &job(to).to_json())).collect();
    for round in 0..2 {
        let response = handle(event(records.clone()), &rig.worker, soon()).await;
        let mut ids: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["m3", "m7"], "round {round}");
    }
    let sent = rig.sent().await;
    for (i, to) in tos.iter().enumerate() {
        assert_eq!(addressed(&sent, to).len(), usize::from(i != 3 && i != 7), "{to}; {}", rig.fault.seen_by_proxy());
    }
}

#[tokio::test]
async fn transient_then_success_is_one_mail() {
    let fault = Fault { first: Arc::new(AtomicUsize::new(2)), ..Fault::none() };
    let rig = rig(fault, FROM, None, None).await;
    let to = rcpt("flaky");
    let env = job(&to);
    let response = handle(event(vec![record("t1", &env.to_json())]), &rig.worker, soon()).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(rig.fault.seen.load(Ordering::SeqCst), 3, "two refused, one sent; {}", rig.fault.seen_by_proxy());
    assert_eq!(rig.mails(&to).await.len(), 1, "{}", rig.fault.seen_by_proxy());
}

#[tokio::test]
async fn always_transient_goes_to_the_dlq_after_max_receive_count() {
    let fault = Fault { always: true, ..Fault::none() };
    // 40 s: the poller's deadline (38 s) leaves each receive time for a
    // send (`MIN_SEND_WINDOW`), so every receive reaches SES, and leaves the
    // last receive time for its ledger writes and the dead letter on a
    // loaded emulator (a CI run with 8 s, a 6 s deadline, had the park cut
    // off and SQS's redrive dead-letter the job without its reason). The
    // receives come the worker's retry backoff apart (5, 10, 20, 30 s: about
    // 65 s in all), not a visibility timeout apart, so this costs no time.
    let rig = rig(fault, FROM, Some(40), None).await;
    let to = rcpt("down");
    let env = job(&to);
    rig.send(&env.to_json()).await;
    let poller = rig.poller().await;
    let started = Instant::now();
    let mut receives = 0;
    loop {
        receives += poller.poll_once(&rig.worker).await.unwrap().received;
        if rig.queue_depth(&rig.dlq_url).await > 0 {
            break;
        }
        // A guard against a hang, not a timing: moto slows down under the
        // other tests' load (a CI run took over 180 s here).
        assert!(started.elapsed() < Duration::from_secs(420), "never parked");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(receives, tables::MAIL_MAX_RECEIVE_COUNT as usize);
    assert!(rig.fault.seen.load(Ordering::SeqCst) >= receives, "every receive tried SES");
    // Parked by the worker on the last receive, with its reason: the ledger
    // says failed (a mail_failed in the audit trail), not retry for ever.
    let dead = rig.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some(env.to_json().as_str()));
    let entry = rig.worker.deliverer().ledger().entry(&env.id).await.unwrap();
    let why = reason(&dead[0])
        .unwrap_or_else(|| panic!("no reason on the dead letter: not parked by the worker; the ledger has {entry:?}"));
    let exhausted = format!("transient failures exhausted after {} receives: ", tables::MAIL_MAX_RECEIVE_COUNT);
    assert!(why.starts_with(&exhausted), "{why}");
    let e = entry.expect("a ledger record");
    assert_eq!((e.state.as_str(), e.reason.as_deref()), (ledger_state::FAILED, Some(why.as_str())));
    assert!(rig.mails(&to).await.is_empty());
}

#[tokio::test]
async fn permanent_failure_goes_to_the_dlq_at_once_with_its_reason() {
    let unverified = format!("noreply@unverified-{}.test", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let rig = rig(Fault::none(), &unverified, None, None).await;
    let to = rcpt("rejected");
    let env = job(&to);
    rig.send(&env.to_json()).await;
    // Parked by the receive on which SES refused it. On a loaded machine
    // every try of a receive can time out against the emulator before SES
    // answers: that receive gives the job back (retried by design, the
    // assertions on `answers` below hold it to that), and a later one parks it.
    let poller = rig.poller().await;
    let started = Instant::now();
    loop {
        let stats = poller.poll_once(&rig.worker).await.unwrap();
        if stats.handled == 1 {
            assert_eq!((stats.received, stats.failed), (1, 0));
            break;
        }
        assert_eq!(stats.failed, stats.received, "given back, not dropped: {stats:?}");
        assert!(started.elapsed() < Duration::from_secs(120), "never parked");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(rig.queue_depth(&rig.queue_url).await, 0, "deleted, never retried");
    let dead = rig.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let why = reason(&dead[0]).unwrap();
    assert!(why.starts_with("MessageRejected"), "{why}");
    // Refused for good, and never tried after it. Tries before it that the
    // client saw fail transiently are retried by design: an error SES
    // would retry, no answer (the client hung up at its attempt timeout),
    // or an answer so late (the proxy's clock starts after the client's)
    // that the client may have given up first.
    let answers = rig.fault.answers.lock().expect("answers").clone();
    let timed_out = rig.fault.timed_out.load(Ordering::SeqCst);
    let seen = rig.fault.seen.load(Ordering::SeqCst);
    assert_eq!(seen, answers.len() + timed_out, "{seen} sends, {answers:?}, {timed_out} timed out");
    let refused = |s: u16| (400..500).contains(&s) && s != 429;
    let late = SES_ATTEMPT_TIMEOUT - Duration::from_secs(1);
    let (last, before) = answers.split_last().expect("an answer");
    assert!(refused(last.0), "the last try was refused: {answers:?}");
    assert!(before.iter().all(|&(s, t)| s >= 500 || s == 429 || t >= late), "{answers:?}");
    let e = rig.worker.deliverer().ledger().entry(&env.id).await.unwrap().unwrap();
    assert_eq!((e.state.as_str(), e.reason.as_deref()), (ledger_state::FAILED, Some(why.as_str())));
    assert!(rig.mails(&to).await.is_empty());
    assert_eq!(rig.prefix.len(), 10);
}

#[tokio::test]
async fn a_poison_body_goes_to_the_dlq() {
    let rig = rig(Fault::none(), FROM, None, None).await;
    rig.send("{\"v\":1,\"code\":\"999999\"").await;
    let stats = rig.poller().await.poll_once(&rig.worker).await.unwrap();
    assert_eq!((stats.received, stats.handled), (1, 1));
    let dead = rig.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let why = reason(&dead[0]).unwrap();
    assert!(why.starts_with("unparseable mail job"), "{why}");
    assert!(!why.contains("999999"));
    assert_eq!(rig.fault.seen.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn dlq_redrive_moves_dead_letters_back() {
    let rig = rig(Fault::none(), FROM, None, None).await;
    let env = job(&rcpt("redrive"));
    rig.sqs.send_message().queue_url(&rig.dlq_url).message_body(env.to_json()).send().await.unwrap();
    let listed = latchkey_mail_worker::dlq::list(&rig.sqs, &rig.dlq_url).await.unwrap();
    assert_eq!((listed.letters.len(), listed.may_be_incomplete), (1, false));
    // Listing consumed nothing.
    assert_eq!(latchkey_mail_worker::dlq::list(&rig.sqs, &rig.dlq_url).await.unwrap().letters.len(), 1);
    let run = latchkey_mail_worker::dlq::redrive(&rig.sqs, &rig.dlq_url, &rig.queue_url, 10).await.unwrap();
    assert_eq!((run.moved.len(), run.came_back), (1, 0));
    assert_eq!(rig.queue_depth(&rig.dlq_url).await, 0);
    assert_eq!(rig.poller().await.poll_once(&rig.worker).await.unwrap().handled, 1);
    assert_eq!(rig.mails(&env.to).await.len(), 1, "{}", rig.fault.seen_by_proxy());
}

/// A redrive without a limit stops at the first letter it moved that is
/// back in the DLQ, instead of moving it round for ever: here the "mail
/// queue" it redrives to is the DLQ itself, so each letter is back at
/// once. Each moves once and everything is left visible in the DLQ; a
/// limit leaves the letters beyond it visible too.
#[tokio::test]
async fn dlq_redrive_stops_at_a_letter_that_came_back() {
    use latchkey_mail_worker::dlq::redrive;
    let rig = rig(Fault::none(), FROM, None, None).await;
    // Two jobs as the api queues them (with their id as an attribute) and
    // a body without one, told apart by its bytes.
    for i in 0..2 {
        let env = job(&rcpt(&format!("back{i}")));
        let id = aws_sdk_sqs::types::MessageAttributeValue::builder().data_type("String").string_value(&env.id).build();
        let send = rig.sqs.send_message().queue_url(&rig.dlq_url).message_body(env.to_json());
        send.message_attributes("job_id", id.unwrap()).send().await.unwrap();
    }
    rig.sqs.send_message().queue_url(&rig.dlq_url).message_body("{\"v\":1").send().await.unwrap();
    let run = tokio::time::timeout(Duration::from_secs(60), redrive(&rig.sqs, &rig.dlq_url, &rig.dlq_url, usize::MAX))
        .await
        .expect("the redrive ends")
        .unwrap();
    // However the receives order the letters, no job moves twice.
    let mut jobs: Vec<_> = run.moved.iter().map(|l| l.job_id.clone()).collect();
    jobs.sort();
    jobs.dedup();
    assert!((1..=3).contains(&run.moved.len()) && jobs.len() == run.moved.len(), "each moved once: {run:?}");
    assert!(run.came_back >= 1, "{run:?}");
    let visible = || async { latchkey_mail_worker::dlq::list(&rig.sqs, &rig.dlq_url).await.unwrap().letters.len() };
    assert_eq!((rig.queue_depth(&rig.dlq_url).await, visible().await), (3, 3), "all there and visible");
    let run = redrive(&rig.sqs, &rig.dlq_url, &rig.queue_url, 2).await.unwrap();
    assert_eq!((run.moved.len(), run.came_back), (2, 0));
    assert_eq!((rig.queue_depth(&rig.dlq_url).await, visible().await), (1, 1), "the one beyond the limit is visible");
    assert_eq!(rig.queue_depth(&rig.queue_url).await, 2);
}

/// A listing that outlasts the time it hides each letter for receives the
/// first ones again: it lists each once, ends (it went on without end) and
/// says it may be incomplete.
#[tokio::test]
async fn dlq_list_ends_when_the_letters_come_round_again() {
    let rig = rig(Fault::none(), FROM, None, None).await;
    for i in 0..3 {
        let env = job(&rcpt(&format!("round{i}")));
        rig.sqs.send_message().queue_url(&rig.dlq_url).message_body(env.to_json()).send().await.unwrap();
    }
    // Hidden for no time at all: every receive brings the same letters back.
    let listing = latchkey_mail_worker::dlq::list_hiding_for(&rig.sqs, &rig.dlq_url, 0);
    let listed = tokio::time::timeout(Duration::from_secs(30), listing).await.expect("the listing ends").unwrap();
    let mut ids: Vec<_> = listed.letters.iter().map(|l| l.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!((listed.letters.len(), ids.len()), (3, 3), "{listed:?}");
    assert!(listed.may_be_incomplete, "it says it may have missed some");
    assert_eq!(rig.queue_depth(&rig.dlq_url).await, 3, "nothing consumed");
}

/// Jobs that may no longer be sent, put on the queue as a late DLQ redrive
/// would: a code past its life, and a notice (no code) older than any mail
/// is sent. Both are deleted from the queue without an SES call or a dead
/// letter, and failed in the ledger with the reason; a fresh job in the
/// same batch goes out.
#[tokio::test]
async fn stale_jobs_on_the_queue_are_deleted_unsent() {
    use latchkey_core::mail::delivery::MAX_JOB_AGE_SECS;
    let rig = rig(Fault::none(), FROM, None, None).await;
    let now = SystemClock.now();
    let (dead_code, old_notice, fresh) = (rcpt("deadcode"), rcpt("oldnotice"), rcpt("fresh"));
    let code = || MailJob::StandaloneCode { code: Secret::new("135790".into()), expires_minutes: 10 };
    let stale = [
        job_at(&dead_code, now - 11 * 60, code()),
        job_at(&old_notice, now - MAX_JOB_AGE_SECS - 60, MailJob::SignupAttempt {}),
    ];
    for env in &stale {
        rig.send(&env.to_json()).await;
    }
    rig.send(&job(&fresh).to_json()).await;
    let poller = rig.poller().await;
    let (mut received, mut handled) = (0, 0);
    let started = Instant::now();
    while received < 3 {
        let stats = poller.poll_once(&rig.worker).await.expect("poll");
        (received, handled) = (received + stats.received, handled + stats.handled);
        // A guard against a hang (the emulator can be held up for seconds).
        assert!(started.elapsed() < Duration::from_secs(120), "{received} of 3 jobs received");
    }
    assert_eq!(handled, 3, "all three handled, none left for redelivery");
    assert_eq!(rig.queue_depth(&rig.queue_url).await, 0, "deleted");
    assert!(rig.dead_letters().await.is_empty(), "nothing to redrive");
    assert_eq!(
        rig.fault.seen.load(Ordering::SeqCst),
        1,
        "one SES call: the fresh job's; {}",
        rig.fault.seen_by_proxy()
    );
    let sent = rig.sent().await;
    assert_eq!(addressed(&sent, &fresh).len(), 1);
    assert!(addressed(&sent, &dead_code).is_empty() && addressed(&sent, &old_notice).is_empty());
    for (env, why) in stale.iter().zip(["expired: its code or link stopped working at", "expired: queued "]) {
        let e = rig.worker.deliverer().ledger().entry(&env.id).await.expect("ledger").expect("a record");
        assert_eq!(e.state, ledger_state::FAILED, "{e:?}");
        assert!(e.reason.as_deref().is_some_and(|r| r.starts_with(why)), "{e:?}");
    }
}

/// A record that fails transiently is shown again after the worker's short
/// backoff (5 s on a first receive), not after the queue's visibility
/// timeout (300 s here), and its redelivery sends it.
#[tokio::test]
async fn a_transient_failure_comes_back_after_a_short_backoff() {
    use latchkey_mail_worker::RETRY_BACKOFF_FIRST;
    // Every send of the first delivery fails (1 + max_retries).
    let sends = 1 + fast_retry().max_retries;
    let rig = rig(Fault { first: Arc::new(AtomicUsize::new(sends)), ..Fault::none() }, FROM, Some(300), None).await;
    let to = rcpt("backoff");
    rig.send(&job(&to).to_json()).await;
    let poller = rig.poller().await;
    let started = Instant::now();
    let first = loop {
        let stats = poller.poll_once(&rig.worker).await.expect("poll");
        if stats.received > 0 {
            break stats;
        }
        // Guards against a hang, not timings: the emulator can be held up
        // for seconds late in a run (see `Rig::sent`).
        assert!(started.elapsed() < Duration::from_secs(60), "the job never arrived");
    };
    assert_eq!((first.received, first.failed), (1, 1), "left for redelivery");
    assert_eq!(rig.fault.seen.load(Ordering::SeqCst), sends);
    let left = Instant::now();
    loop {
        let stats = poller.poll_once(&rig.worker).await.expect("poll");
        if stats.received > 0 {
            assert_eq!((stats.received, stats.handled), (1, 1));
            break;
        }
        // 5 s and polling, against the queue's 300 s.
        assert!(left.elapsed() < Duration::from_secs(120), "not shown again after the backoff");
    }
    // Not at once either: the backoff held it (less a generous margin).
    assert!(left.elapsed() >= RETRY_BACKOFF_FIRST / 2, "shown again after {:?}", left.elapsed());
    assert_eq!(rig.mails(&to).await.len(), 1, "{}", rig.fault.seen_by_proxy());
    assert_eq!(rig.queue_depth(&rig.queue_url).await, 0);
}
