//! Mail pipeline figures (a benchmark that prints, not a timed test):
//!
//! ```text
//! cargo run --release -p latchkey-mail-worker --example mail_bench
//! ```
//!
//! 1. jobs/s through the worker on the emulator (SQS poller -> handler ->
//!    DynamoDB ledger -> SES), send rate limit set out of the way;
//! 2. jobs/s through the embedded consumer (SQLite queue + ledger, outbox);
//! 3. register -> mail written to the outbox, p50/p99, embedded mode;
//! 4. the send-rate limiter's observed rate against the configured one,
//!    alone and through the `Deliverer`.

#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use latchkey_core::clock::{Clock, SystemClock};
use latchkey_core::domain::{Email, Secret};
use latchkey_core::mail::delivery::{Deliverer, Mailer, MemoryMailLedger, SendError, SendRateLimiter, ledger_state};
use latchkey_core::mail::{MailEnvelope, MailJob, RenderedMail, Renderer};
use latchkey_core::ports::MailQueue;
use latchkey_mail_worker::poller::Poller;
use latchkey_mail_worker::{Clients, Worker, WorkerConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn job(i: usize, tag: &str) -> MailEnvelope {
    MailEnvelope::new(
        format!("{tag}{i}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        &Email::parse(&format!("bench{i}@example.com")).unwrap(),
        // Queued now: the deliverer refuses a job whose code has expired.
        SystemClock.now(),
        None,
        None,
        MailJob::StandaloneCode { code: Secret::new("123456".into()), expires_minutes: 10 },
    )
}

async fn on_emulator(n: usize) {
    let endpoint = latchkey_tests::emulator_endpoint().await;
    let sdk = latchkey_tests::sdk_config(&endpoint).await;
    let prefix = latchkey_tests::random_prefix();
    let clients = Clients::from_sdk(&sdk);
    latchkey_core::adapters::dynamo::ensure_tables(&clients.dynamo, &prefix).await.unwrap();
    let (q, d) = latchkey_core::adapters::sqs::ensure_queues(&clients.sqs, &prefix).await.unwrap();
    latchkey_mail_worker::local::ensure_identity(&clients.ses, "noreply@latchkey.test").await.unwrap();
    let cfg = WorkerConfig::from_lookup(|k| {
        Some(match k {
            "LATCHKEY_TABLE_PREFIX" => prefix.clone(),
            "LATCHKEY_MAIL_QUEUE_URL" => q.clone(),
            "LATCHKEY_MAIL_DLQ_URL" => d.clone(),
            "LATCHKEY_SES_FROM" => "noreply@latchkey.test".into(),
            "LATCHKEY_SES_MAX_SEND_RATE" => "100000".into(),
            "PUBLIC_BASE_URL" => "http://127.0.0.1:3000".into(),
            _ => return None,
        })
    })
    .unwrap();
    let sqs = clients.sqs.clone();
    let worker = Arc::new(Worker::from_config(&cfg, clients).unwrap());
    for i in 0..n {
        sqs.send_message().queue_url(&q).message_body(job(i, "aws").to_json()).send().await.unwrap();
    }
    let mut poller = Poller::new(sqs.clone(), q.clone()).await.unwrap();
    poller.wait_secs = 0;
    let started = Instant::now();
    let mut handled = 0;
    while handled < n {
        let s = poller.poll_once(&worker).await.unwrap();
        handled += s.handled;
        if started.elapsed() > Duration::from_secs(300) {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "worker on moto:       {handled} jobs in {secs:.2} s = {:.1} jobs/s (one poller, batches of 10)",
        handled as f64 / secs
    );
}

async fn embedded(n: usize) {
    use latchkey_core::adapters::embedded::{EmbeddedStore, Outbox, embedded_deliverer, spawn_mail_consumer};
    let dir = latchkey_tests::system::TempDir::new();
    let store = EmbeddedStore::open(dir.0.join("db.sqlite3")).unwrap();
    let queue = store.mail_queue();
    let r = || Renderer::new("http://127.0.0.1:3000").unwrap();
    let outbox = Outbox::new(dir.0.join("outbox"), r(), "l <n@l.test>".into());
    let d = Arc::new(embedded_deliverer(&store, outbox, r(), Arc::new(SystemClock)).await.unwrap());
    let jobs: Vec<MailEnvelope> = (0..n).map(|i| job(i, "emb")).collect();
    for j in &jobs {
        queue.enqueue(j).await.unwrap();
    }
    let started = Instant::now();
    let consumer = spawn_mail_consumer(queue.clone(), d.clone());
    while queue.pending_count().await.unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    consumer.task.abort();
    let last = d.ledger().entry(&jobs[n - 1].id).await.unwrap().unwrap();
    assert_eq!(last.state, ledger_state::SENT);
    println!(
        "embedded consumer:    {n} jobs in {secs:.2} s = {:.1} jobs/s (outbox files, SQLite ledger)",
        n as f64 / secs
    );
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn register_to_mail(n: usize) {
    let sys = latchkey_tests::system::TestSystem::embedded().await;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let (username, email) = latchkey_tests::scenarios::unique();
        let body =
            serde_json::json!({"username": username, "email": email, "password": latchkey_tests::scenarios::PASSWORD});
        let t0 = Instant::now();
        let (st, _, _) = sys.post("/v1/register", body).await;
        assert_eq!(st, 202);
        while sys.mails_to(&email).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(t0.elapsed() < Duration::from_secs(10));
        }
        lat.push(t0.elapsed());
    }
    lat.sort();
    println!(
        "register -> mail (embedded): n={n} p50 {:.1} ms, p99 {:.1} ms (includes the argon2 hash of registration)",
        pct(&lat, 0.5).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3
    );
}

struct Null;

#[async_trait]
impl Mailer for Null {
    async fn send(&self, env: &MailEnvelope, _: &RenderedMail) -> Result<String, SendError> {
        Ok(env.id.clone())
    }
}

async fn limiter(rate: f64, n: usize) {
    let l = Arc::new(SendRateLimiter::new(rate, 1));
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let l = l.clone();
            tokio::spawn(async move {
                for _ in 0..n / 8 {
                    l.acquire().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // n sends with a burst of 1 span (n - 1) intervals.
    let observed = ((n / 8 * 8) as f64 - 1.0) / started.elapsed().as_secs_f64();
    println!(
        "limiter alone:        configured {rate}/s, observed {observed:.2}/s ({:+.2}%), 8 tasks",
        (observed / rate - 1.0) * 100.0
    );

    let d = Arc::new(Deliverer::new(
        Renderer::new("http://127.0.0.1:3000").unwrap(),
        Arc::new(MemoryMailLedger::new()),
        Arc::new(Null),
        Arc::new(SendRateLimiter::new(rate, 1)),
        Arc::new(SystemClock),
    ));
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let jobs: Vec<_> = (0..n)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move { d.deliver(&job(i, "lim"), deadline).await })
        })
        .collect();
    for j in jobs {
        j.await.unwrap();
    }
    let observed = (n as f64 - 1.0) / started.elapsed().as_secs_f64();
    println!(
        "limiter via deliver:  configured {rate}/s, observed {observed:.2}/s ({:+.2}%), {n} concurrent jobs",
        (observed / rate - 1.0) * 100.0
    );
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 1 } else { 2 };
    limiter(50.0, 200 * scale).await;
    embedded(500 * scale).await;
    register_to_mail(50 * scale).await;
    on_emulator(100 * scale).await;
}
