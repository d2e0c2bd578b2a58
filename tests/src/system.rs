//! A whole latchkey system for end-to-end tests: the real Router served on a
//! loopback port, on the embedded store (mail read from the outbox) or on
//! DynamoDB + SQS in the emulator (mail read from the SQS queue, where the
//! mail worker would take it).

use latchkey_api::wiring::{BuildOptions, Built};
use latchkey_core::adapters::aws_calls::CallCounter;
use latchkey_core::config::Config;
use latchkey_core::mail::MailEnvelope;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// One mail as a user would find it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    pub kind: String,
}

impl Mail {
    /// The first `http(s)://...` link in the body.
    pub fn link(&self) -> Option<String> {
        let start = self.text.find("http")?;
        Some(self.text[start..].split_whitespace().next()?.to_string())
    }

    /// The six digits after "code is:" (as the templates put it).
    pub fn code(&self) -> Option<String> {
        let at = self.text.find("code is:")?;
        let b = &self.text.as_bytes()[at..];
        (0..b.len().saturating_sub(5)).find_map(|i| {
            let run = &b[i..i + 6];
            let before = i == 0 || !b[i - 1].is_ascii_digit();
            let after = i + 6 == b.len() || !b[i + 6].is_ascii_digit();
            (before && after && run.iter().all(u8::is_ascii_digit)).then(|| String::from_utf8_lossy(run).into_owned())
        })
    }
}

enum MailSource {
    /// The outbox directory, and the queue whose order it was written in.
    Outbox(PathBuf, latchkey_core::adapters::embedded::SqliteMailQueue),
    Sqs {
        client: aws_sdk_sqs::Client,
        url: String,
        seen: Mutex<Vec<Mail>>,
    },
}

pub struct TestSystem {
    pub base: String,
    pub http: reqwest::Client,
    pub backend: &'static str,
    pub calls: Option<CallCounter>,
    mail: MailSource,
    _built: Built,
    server: tokio::task::JoinHandle<()>,
    _dir: Option<TempDir>,
}

impl Drop for TestSystem {
    /// Stops the server and the background tasks (mail consumer, audit feed)
    /// before the data directory goes, so none of them writes into it again.
    fn drop(&mut self) {
        self.server.abort();
        self._built.abort();
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("latchkey-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // A write that was already under way when its task was aborted can
        // land while the tree is being removed; try again briefly.
        for _ in 0..5 {
            if std::fs::remove_dir_all(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// A clock that stands still at the moment it is made. Rate-limit windows
/// are aligned to the clock, so every request of a test on a system built
/// with it falls in one window of each limit, however slowly the test runs
/// (a wall clock may cross a window's edge halfway through and count the
/// rest afresh); `advance` steps it where a test needs time to pass.
pub fn frozen_clock() -> std::sync::Arc<latchkey_core::clock::FixedClock> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    std::sync::Arc::new(latchkey_core::clock::FixedClock::new(now))
}

fn config(pairs: &[(&str, String)]) -> Config {
    let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    Config::from_lookup(|k| m.get(k).cloned()).expect("test config")
}

impl TestSystem {
    /// The embedded backend with relaxed rate limits.
    pub async fn embedded() -> Self {
        Self::embedded_with(&[("LATCHKEY_RATE_LIMITS", "relaxed")]).await
    }

    pub async fn embedded_with(extra: &[(&str, &str)]) -> Self {
        let dir = TempDir::new();
        let mut pairs = vec![("LATCHKEY_DATA_DIR", dir.0.display().to_string())];
        pairs.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let cfg = config(&pairs);
        let built = latchkey_api::wiring::build(&cfg).await.expect("build embedded");
        let mail = outbox_of(&built, &dir);
        Self::serve(built, &cfg, mail, "embedded", None, Some(dir)).await
    }

    /// The embedded backend whose flows and store read `clock`, for tests
    /// that step time (cooldowns, expiries) instead of waiting for it.
    pub async fn embedded_on_clock(
        extra: &[(&str, &str)],
        clock: std::sync::Arc<dyn latchkey_core::clock::Clock>,
    ) -> Self {
        let dir = TempDir::new();
        let mut pairs = vec![("LATCHKEY_DATA_DIR", dir.0.display().to_string())];
        pairs.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let cfg = config(&pairs);
        let opts = BuildOptions { clock, ..Default::default() };
        let built = latchkey_api::wiring::build_with(&cfg, opts).await.expect("build embedded");
        let mail = outbox_of(&built, &dir);
        Self::serve(built, &cfg, mail, "embedded", None, Some(dir)).await
    }

    /// DynamoDB + SQS on the emulator, fresh tables and queues.
    pub async fn aws() -> Self {
        Self::aws_with(&[("LATCHKEY_RATE_LIMITS", "relaxed")]).await
    }

    pub async fn aws_with(extra: &[(&str, &str)]) -> Self {
        Self::aws_on(&crate::random_prefix(), extra).await
    }

    /// Another api instance on the tables and queues of `prefix` (made if
    /// missing), as Lambda runs several side by side.
    pub async fn aws_on(prefix: &str, extra: &[(&str, &str)]) -> Self {
        Self::aws_on_clock(prefix, extra, std::sync::Arc::new(latchkey_core::clock::SystemClock)).await
    }

    /// DynamoDB + SQS on the emulator, fresh tables and queues, with flows
    /// that read `clock` (see [`TestSystem::embedded_on_clock`]).
    pub async fn aws_with_clock(
        extra: &[(&str, &str)],
        clock: std::sync::Arc<dyn latchkey_core::clock::Clock>,
    ) -> Self {
        Self::aws_on_clock(&crate::random_prefix(), extra, clock).await
    }

    async fn aws_on_clock(
        prefix: &str,
        extra: &[(&str, &str)],
        clock: std::sync::Arc<dyn latchkey_core::clock::Clock>,
    ) -> Self {
        use base64::Engine;
        let endpoint = crate::emulator_endpoint().await;
        let sdk = crate::sdk_config(&endpoint).await;
        let prefix = prefix.to_string();
        let key = latchkey_core::keys::SigningKey::generate().expect("key").to_base64();
        let hmac = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let mut pairs = vec![
            ("LATCHKEY_BACKEND", "aws".to_string()),
            ("LATCHKEY_TABLE_PREFIX", prefix.clone()),
            ("LATCHKEY_BOOTSTRAP", "true".to_string()),
            ("LATCHKEY_JWT_PRIVATE_KEY", key),
            ("LATCHKEY_CODE_HMAC_KEY", hmac),
        ];
        pairs.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let cfg = config(&pairs);
        let calls = CallCounter::default();
        let opts = BuildOptions { clock, sdk: Some(sdk.clone()), calls: Some(calls.clone()) };
        let built = latchkey_api::wiring::build_with(&cfg, opts).await.expect("build aws");
        let client = aws_sdk_sqs::Client::new(&sdk);
        let url = client
            .get_queue_url()
            .queue_name(latchkey_core::tables::queue_name(&prefix, latchkey_core::tables::MAIL_QUEUE))
            .send()
            .await
            .expect("queue url")
            .queue_url
            .expect("queue url");
        let mail = MailSource::Sqs { client, url, seen: Mutex::new(Vec::new()) };
        Self::serve(built, &cfg, mail, "aws", Some(calls), None).await
    }

    async fn serve(
        built: Built,
        cfg: &Config,
        mail: MailSource,
        backend: &'static str,
        calls: Option<CallCounter>,
        dir: Option<TempDir>,
    ) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The server the local runner runs (its Host check included), on
        // two threads; aborting this task shuts them.
        let app = latchkey_api::app(built.state.clone().serving_directly(&cfg.public_base_url));
        let server = tokio::spawn(async move {
            let _ = latchkey_api::wiring::serve_threads(listener, app, 2, std::future::pending()).await;
        });
        TestSystem {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client"),
            backend,
            calls,
            mail,
            _built: built,
            server,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
        let r = self.http.post(self.url(path)).json(&body).send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)), headers)
    }

    /// A JSON POST with a bearer token; the body `Null` when it is empty
    /// or not JSON.
    pub async fn post_auth(&self, path: &str, bearer: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self.http.post(self.url(path)).bearer_auth(bearer).json(&body).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn get_auth(&self, path: &str, bearer: &str) -> (u16, serde_json::Value) {
        let r = self.http.get(self.url(path)).bearer_auth(bearer).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// All mail sent to `to` so far, oldest first.
    pub async fn mails_to(&self, to: &str) -> Vec<Mail> {
        match &self.mail {
            MailSource::Outbox(dir, queue) => {
                let order = queue.ids_in_queue_order().await.expect("the mail queue's order");
                outbox_mails_in_order(dir, to, &order)
            }
            MailSource::Sqs { client, url, seen } => {
                loop {
                    let out = client
                        .receive_message()
                        .queue_url(url)
                        .max_number_of_messages(10)
                        .send()
                        .await
                        .expect("receive");
                    let msgs = out.messages.unwrap_or_default();
                    if msgs.is_empty() {
                        break;
                    }
                    for m in msgs {
                        let env = MailEnvelope::from_json(m.body().unwrap_or_default()).expect("queued job parses");
                        seen.lock().expect("lock").push(mail_from_job(&env));
                        if let Some(h) = m.receipt_handle() {
                            client.delete_message().queue_url(url).receipt_handle(h).send().await.expect("delete");
                        }
                    }
                }
                seen.lock().expect("lock").iter().filter(|m| m.to.eq_ignore_ascii_case(to)).cloned().collect()
            }
        }
    }

    /// Waits (bounded, polling) until `to` has at least `n` mails; returns the newest.
    pub async fn wait_mail(&self, to: &str, n: usize) -> Mail {
        for _ in 0..800 {
            let all = self.mails_to(to).await;
            if all.len() >= n {
                return all[all.len() - 1].clone();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no mail #{n} to {to} within 20 s");
    }
}

/// The outbox of an embedded system built in `dir`.
fn outbox_of(built: &Built, dir: &TempDir) -> MailSource {
    let store = built.embedded.as_ref().expect("the embedded store");
    MailSource::Outbox(dir.0.join("outbox"), store.mail_queue())
}

/// All mail to `to` in the outbox directory `dir`, oldest first by the
/// files' times (which tie within a tick of the file system's clock: where
/// the queue is at hand, [`outbox_mails_in_order`]).
pub fn outbox_mails_to(dir: &std::path::Path, to: &str) -> Vec<Mail> {
    outbox_mails_in_order(dir, to, &[])
}

/// All mail to `to` in the outbox directory `dir`, in the order of the job
/// ids in `order` (the queue's, which the consumer delivers in), then by
/// the files' times. An outbox file is `<created_at>-<job id>.eml`.
pub fn outbox_mails_in_order(dir: &std::path::Path, to: &str, order: &[String]) -> Vec<Mail> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "eml")).collect()
        })
        .unwrap_or_default();
    let position: HashMap<&str, usize> = order.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let queued = |p: &PathBuf| {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        stem.split_once('-').and_then(|(_, id)| position.get(id).copied()).unwrap_or(usize::MAX)
    };
    files.sort_by_key(|p| (queued(p), std::fs::metadata(p).and_then(|m| m.modified()).ok()));
    files
        .iter()
        .filter_map(|p| parse_eml(&std::fs::read_to_string(p).ok()?))
        .filter(|m| m.to.eq_ignore_ascii_case(to))
        .collect()
}

fn mail_from_job(env: &MailEnvelope) -> Mail {
    // The same rendering the worker uses, with the test's public base URL.
    let r = latchkey_core::mail::Renderer::new("http://127.0.0.1:3000").expect("renderer");
    let m = r.render(env).expect("render");
    Mail { to: env.to.clone(), subject: m.subject, text: m.text, kind: env.job.kind().to_string() }
}

/// Reads To, Subject and the text/plain part of an outbox .eml.
fn parse_eml(raw: &str) -> Option<Mail> {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n")?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let to = header("To")?;
    let to = to.rsplit('<').next().unwrap_or(&to).trim_end_matches('>').trim().trim_matches('"').to_string();
    let subject = header("Subject").unwrap_or_default();
    let kind = header("X-Latchkey-Kind").unwrap_or_default();
    let text = decode_qp(&text_part(head, body));
    Some(Mail { to, subject, text, kind })
}

/// The text/plain part of a (possibly multipart) body.
fn text_part(head: &str, body: &str) -> String {
    let boundary = head
        .split("boundary=")
        .nth(1)
        .map(|b| b.split([';', '\n']).next().unwrap_or("").trim().trim_matches('"').to_string());
    let Some(boundary) = boundary.filter(|b| !b.is_empty()) else { return body.to_string() };
    body.split(&format!("--{boundary}"))
        .filter_map(|part| part.trim_start_matches('\n').split_once("\n\n"))
        .find(|(h, _)| h.to_ascii_lowercase().contains("content-type: text/plain"))
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Undoes quoted-printable soft breaks and escapes (enough for our mail).
fn decode_qp(s: &str) -> String {
    let s = s.replace("=\n", "");
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'='
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
