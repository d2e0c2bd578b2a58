//! The audit trail end to end: a user's whole journey over HTTP, then the
//! trail read back through the admin API (and the user's own activity
//! page), on the embedded backend (its change-feed driver runs inside the
//! system) and on DynamoDB in the emulator (the streams poller feeds the
//! Lambda handler). Also: the admin API's credential check and its
//! per-client limit, the activity API's limit per account and client, and a chain
//! edited in DynamoDB failing verification at that record.

use aws_lambda_events::dynamodb::Event;
use latchkey_core::adapters::dynamo::audit::DynamoAuditStore;
use latchkey_core::audit::{
    AdminKeyHash, AuditHead, AuditPolicy, AuditStore, check_logged_head, verify_chain, verify_chain_at,
};
use latchkey_core::keys::AuditKey;
use latchkey_stream_processor::{Processor, poller::StreamPoller};
use latchkey_tests::scenarios::{PASSWORD, reset_with_link, sign_in, token_from_link, unique, verified_user};
use latchkey_tests::system::{TestSystem, frozen_clock};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

fn admin_hash() -> String {
    // The configured value is the hex SHA-256 of the key, computed here the
    // way an operator would, independently of the code under test.
    let hex: String = sha256(ADMIN_KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    assert!(AdminKeyHash::from_hex(&hex).is_some_and(|h| h == AdminKeyHash::of_key(ADMIN_KEY)));
    hex
}

/// The pairs a system with relaxed rate limits and the admin API open to
/// [`ADMIN_KEY`] (its hash is `hash`) is started with.
/// Relaxed limits, the admin key, and a refresh retry grace (off by
/// default): the journey retries a refresh.
fn admin_env(hash: &str) -> [(&'static str, &str); 3] {
    [
        ("LATCHKEY_RATE_LIMITS", "relaxed"),
        ("LATCHKEY_ADMIN_KEY_HASH", hash),
        ("LATCHKEY_REFRESH_RETRY_GRACE_SECS", "30"),
    ]
}

/// On the embedded backend, with [`admin_env`].
async fn admin_embedded() -> TestSystem {
    TestSystem::embedded_with(&admin_env(&admin_hash())).await
}

/// On the emulator, with [`admin_env`].
async fn admin_aws() -> TestSystem {
    TestSystem::aws_with(&admin_env(&admin_hash())).await
}

fn sha256(data: &[u8]) -> [u8; 32] {
    // The test computes the configured hash independently of the code under
    // test (`openssl`/`sha256sum` would do the same for an operator).
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(data)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    let text = String::from_utf8(out.stdout).expect("utf8");
    let hex = text.split_whitespace().next().expect("digest");
    let mut d = [0u8; 32];
    for (i, b) in d.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    d
}

const JOURNEY: &[&str] = &[
    "user_registered",
    "verification_mail_requested",
    "email_verified",
    "login_code_issued",
    "code_verified",
    "session_created",
    "session_refreshed",
    "session_refreshed",
    "session_revoked",
];

/// The same journey on the embedded backend, where the mail consumer runs
/// inside the system and records each delivery: the verification mail and
/// the login code mail appear as `mail_delivered` (the journey waits for
/// each before using the mail, so the order is fixed).
const EMBEDDED_JOURNEY: &[&str] = &[
    "user_registered",
    "verification_mail_requested",
    "mail_delivered",
    "email_verified",
    "login_code_issued",
    "mail_delivered",
    "code_verified",
    "session_created",
    "session_refreshed",
    "session_refreshed",
    "session_revoked",
];

/// Polls the admin stats (bounded) until today's trail holds `n`
/// `mail_delivered` events: the delivery was recorded and the audit driver
/// has applied it. The embedded system is the test's own, so the count is
/// this journey's.
async fn wait_delivered(sys: &TestSystem, n: u64) {
    let today = time_today();
    let mut last = Value::Null;
    for _ in 0..100 {
        let (st, stats) = admin_get(sys, &format!("/v1/admin/stats?from={today}&to={today}"), Some(ADMIN_KEY)).await;
        assert_eq!(st, 200, "{stats}");
        if stats["days"][0]["counts"]["mail_delivered"].as_u64().unwrap_or(0) >= n {
            return;
        }
        last = stats;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} mail_delivered events within 5 s: {last}");
}

/// The journey of [`journey`] on the embedded backend, waiting for each
/// mail's delivery record before acting on the mail. Returns the user id
/// and address.
async fn embedded_journey(sys: &TestSystem) -> (String, String) {
    let (username, email) = unique();
    let (st, body, _) =
        sys.post("/v1/register", json!({"username": username, "email": email, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{body}");
    let mail = sys.wait_mail(&email, 1).await;
    wait_delivered(sys, 1).await;
    let token = token_from_link(&mail.link().expect("link in mail"));
    let (st, body, _) = sys.post("/v1/verify-email", json!({ "token": token })).await;
    assert_eq!(st, 200, "{body}");

    let (st, body, _) = sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{body}");
    let challenge = body["challenge_id"].as_str().expect("challenge_id").to_string();
    let code = sys.wait_mail(&email, 2).await.code().expect("code in mail");
    wait_delivered(sys, 2).await;
    let (st, tokens, _) = sys.post("/v1/login/otp", json!({"challenge_id": challenge, "code": code})).await;
    assert_eq!(st, 200, "{tokens}");

    let access = tokens["access_token"].as_str().expect("access");
    let (st, me) = sys.get_auth("/v1/me", access).await;
    assert_eq!(st, 200, "{me}");
    let id = me["id"].as_str().expect("id").to_string();
    let (st, rotated, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": tokens["refresh_token"] })).await;
    assert_eq!(st, 200, "{rotated}");
    retry_refresh(sys, &tokens["refresh_token"], &rotated["refresh_token"]).await;
    let (st, _, _) = sys.post("/v1/logout", json!({ "refresh_token": rotated["refresh_token"] })).await;
    assert_eq!(st, 204);
    (id, email)
}

/// The refresh's answer was lost and the client sends the replaced token
/// again: it gets the rotation's token, and the trail a second
/// `session_refreshed` (reason `retry_grace`).
async fn retry_refresh(sys: &TestSystem, replaced: &Value, current: &Value) {
    let (st, again, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": replaced })).await;
    assert_eq!((st, &again["refresh_token"]), (200, current), "{again}");
}

/// register -> verify -> login -> code -> refresh -> retry -> logout; returns the
/// user id and an access token that was valid before the logout.
async fn journey(sys: &TestSystem) -> (String, String) {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let access = tokens["access_token"].as_str().expect("access").to_string();
    let (st, me) = sys.get_auth("/v1/me", &access).await;
    assert_eq!(st, 200, "{me}");
    let id = me["id"].as_str().expect("id").to_string();
    let (st, rotated, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": tokens["refresh_token"] })).await;
    assert_eq!(st, 200, "{rotated}");
    retry_refresh(sys, &tokens["refresh_token"], &rotated["refresh_token"]).await;
    let (st, _, _) = sys.post("/v1/logout", json!({ "refresh_token": rotated["refresh_token"] })).await;
    assert_eq!(st, 204);
    (id, rotated["access_token"].as_str().expect("access").to_string())
}

async fn admin_get(sys: &TestSystem, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = sys.http.get(sys.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.expect("request");
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(Value::Null))
}

/// The user's trail, oldest first, read page by page through the admin API.
async fn trail(sys: &TestSystem, id: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/admin/users/{id}/audit?limit=3&cursor={c}"),
            None => format!("/v1/admin/users/{id}/audit?limit=3"),
        };
        let (st, body) = admin_get(sys, &path, Some(ADMIN_KEY)).await;
        assert_eq!(st, 200, "{body}");
        all.extend(body["events"].as_array().expect("events").iter().cloned());
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    all.reverse();
    all
}

fn kinds(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["event"].as_str().unwrap_or_default().to_string()).collect()
}

/// Polls (bounded) until `id`'s trail has at least `expected` events,
/// running `pump` before each look.
async fn settled<F, Fut>(sys: &TestSystem, id: &str, expected: usize, mut pump: F) -> Vec<Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..100 {
        pump().await;
        let t = trail(sys, id).await;
        if t.len() >= expected {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    trail(sys, id).await
}

/// Polls (bounded) until `id`'s trail holds an event of `kind`, running
/// `pump` before each look; the trail then.
async fn trail_until<F, Fut>(sys: &TestSystem, id: &str, kind: &str, mut pump: F) -> Vec<Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut events = Vec::new();
    for _ in 0..100 {
        pump().await;
        events = trail(sys, id).await;
        if kinds(&events).iter().any(|k| k == kind) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    events
}

fn is_mail(e: &Value) -> bool {
    e["event"].as_str().is_some_and(|k| k.starts_with("mail_"))
}

fn check_trail(events: &[Value], expected: &[&str]) {
    assert_eq!(kinds(events), expected);
    let refreshes: Vec<_> =
        events.iter().filter(|e| e["event"] == "session_refreshed").map(|e| e["reason"].as_str()).collect();
    assert_eq!(refreshes, [None, Some("retry_grace")], "the rotation, then the retry answered within the grace");
    let revoked = events.last().expect("events");
    assert_eq!((revoked["reason"].as_str(), revoked["outcome"].as_str()), (Some("logout"), Some("success")));
    // Requests carry the caller's address; a delivery is no request.
    assert!(events.iter().filter(|e| !is_mail(e)).all(|e| e["ip"] == "127.0.0.1"), "{events:?}");
    assert!(events.iter().filter(|e| is_mail(e)).all(|e| e["ip"].is_null()), "{events:?}");
    let text = serde_json::to_string(events).expect("json");
    assert!(!text.contains("argon2") && !text.contains("hash"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_journey_leaves_exactly_its_trail() {
    let sys = admin_embedded().await;
    let (id, email) = embedded_journey(&sys).await;
    let events = settled(&sys, &id, EMBEDDED_JOURNEY.len(), || async {}).await;
    check_trail(&events, EMBEDDED_JOURNEY);
    let mails: Vec<_> = events.iter().filter(|e| is_mail(e)).collect();
    assert_eq!(
        mails.iter().map(|e| (e["reason"].as_str(), e["outcome"].as_str())).collect::<Vec<_>>(),
        [(Some("verify_email"), Some("success")), (Some("login_code"), Some("success"))]
    );
    let text = serde_json::to_string(&events).expect("json");
    assert!(!text.contains(&email), "no address in the trail: {text}");

    let today = time_today();
    let (st, stats) = admin_get(&sys, &format!("/v1/admin/stats?from={today}&to={today}"), Some(ADMIN_KEY)).await;
    assert_eq!(st, 200, "{stats}");
    let counts = &stats["days"][0]["counts"];
    assert!(counts["user_registered"].as_u64().unwrap_or(0) >= 1, "{stats}");
    assert!(counts["session_revoked"].as_u64().unwrap_or(0) >= 1, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn my_activity_shows_my_events_only_with_my_token() {
    let sys = TestSystem::embedded().await;
    // Two accounts with the same journey, one after the other: each token
    // reads its own account's events, none of the other's.
    let mut tokens = vec![];
    for _ in 0..2 {
        let (username, email) = verified_user(&sys).await;
        tokens.push(sign_in(&sys, &username, &email).await["access_token"].as_str().expect("access").to_string());
    }
    let mut ids = vec![];
    for access in &tokens {
        let mut body = Value::Null;
        for _ in 0..100 {
            let (st, b) = sys.get_auth("/v1/me/activity", access).await;
            assert_eq!(st, 200, "{b}");
            body = b;
            if body["events"].as_array().is_some_and(|e| e.iter().filter(|e| !is_mail(e)).count() >= 6) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut events = body["events"].as_array().expect("events").clone();
        events.reverse();
        // The mail deliveries interleave with the requests at their own pace.
        let requests: Vec<Value> = events.iter().filter(|e| !is_mail(e)).cloned().collect();
        assert_eq!(kinds(&requests), &JOURNEY[..6], "only this account's events");
        ids.push(requests.iter().map(|e| e["request_id"].clone()).collect::<Vec<_>>());
    }
    assert!(ids[0].iter().all(|id| !ids[1].contains(id)), "one request in both trails: {ids:?}");
    assert_eq!(sys.get_auth("/v1/me/activity", "not-a-token").await.0, 401);
    assert_eq!(sys.http.get(sys.url("/v1/me/activity")).send().await.expect("send").status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_refuse_without_the_right_key() {
    let sys = admin_embedded().await;
    let (id, _) = journey(&sys).await;
    let _ = settled(&sys, &id, JOURNEY.len(), || async {}).await;
    let today = time_today();
    for path in [format!("/v1/admin/users/{id}/audit"), format!("/v1/admin/stats?from={today}&to={today}")] {
        // The hash itself is not the key.
        for key in [None, Some("wrong-key"), Some(""), Some(&admin_hash()[..])] {
            let (st, body) = admin_get(&sys, &path, key).await;
            assert_eq!(st, 401, "{path} {key:?}");
            assert_eq!(body["error"], "unauthorized");
            assert!(body.get("events").is_none() && body.get("days").is_none());
        }
        let (st, body) = admin_get(&sys, &path, Some(ADMIN_KEY)).await;
        assert_eq!(st, 200, "{body}");
    }
    // Without a configured hash nobody gets in.
    let closed = TestSystem::embedded().await;
    assert_eq!(admin_get(&closed, &format!("/v1/admin/users/{id}/audit"), Some(ADMIN_KEY)).await.0, 401);
}

/// With the default limits, every admin request of a client counts
/// against its 60 a minute before the key is checked: the 61st is a 429
/// with the wait even with the right key, and says nothing of the key. Only
/// that client is refused; with the admin API off nothing is counted.
async fn admin_requests_are_limited_per_client(sys: &TestSystem) {
    let from = |ip: &str, key: &str| {
        sys.http
            .get(sys.url("/v1/admin/stats?from=2020-01-01&to=2020-01-02"))
            .bearer_auth(key)
            .header("x-forwarded-for", ip)
    };
    let guesser = "203.0.113.9";
    for i in 0..60 {
        let key = if i == 30 { ADMIN_KEY.to_string() } else { format!("guess-{i}-0123456789abcdefghij") };
        let r = from(guesser, &key).send().await.expect("send");
        assert_eq!(r.status().as_u16(), if i == 30 { 200 } else { 401 }, "request {i}");
    }
    for key in [ADMIN_KEY, "guess-61-0123456789abcdefghij"] {
        let r = from(guesser, key).send().await.expect("send");
        assert_eq!(r.status().as_u16(), 429);
        let retry: u64 = r.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
        assert!((1..=60).contains(&retry), "{retry}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"], "rate_limited");
    }
    let r = from("198.51.100.4", ADMIN_KEY).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 200, "another client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_admin_requests_are_limited_per_client() {
    let hash = admin_hash();
    let sys = TestSystem::embedded_on_clock(
        &[("LATCHKEY_TRUST_FORWARDED_FOR", "true"), ("LATCHKEY_ADMIN_KEY_HASH", &hash)],
        frozen_clock(),
    )
    .await;
    admin_requests_are_limited_per_client(&sys).await;
    // Off, nothing is counted: the 61st request is still the 401 of an
    // API that is off.
    let off = TestSystem::embedded_with(&[]).await;
    for i in 0..61 {
        assert_eq!(
            admin_get(&off, "/v1/admin/stats?from=2020-01-01&to=2020-01-02", Some(ADMIN_KEY)).await.0,
            401,
            "{i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_admin_requests_are_limited_per_client() {
    let hash = admin_hash();
    let sys = TestSystem::aws_with_clock(
        &[("LATCHKEY_TRUST_FORWARDED_FOR", "true"), ("LATCHKEY_ADMIN_KEY_HASH", &hash)],
        frozen_clock(),
    )
    .await;
    admin_requests_are_limited_per_client(&sys).await;
}

/// With the default limits, each read of a user's own trail counts against
/// 60 a minute of that account and 60 of that client, once the token
/// checks out: the account's 61st read is a 429 with the wait from any
/// client, another account's from the same client too, and another
/// account from another client still reads. A request without a live
/// token is a 401 and spends nothing.
async fn activity_reads_are_limited_per_account_and_client(sys: &TestSystem) {
    let (a, a_email) = verified_user(sys).await;
    let (b, b_email) = verified_user(sys).await;
    let a_token = sign_in(sys, &a, &a_email).await["access_token"].as_str().expect("access").to_string();
    let b_token = sign_in(sys, &b, &b_email).await["access_token"].as_str().expect("access").to_string();
    let read = |ip: &str, token: &str| {
        sys.http.get(sys.url("/v1/me/activity?limit=1")).bearer_auth(token).header("x-forwarded-for", ip).send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    for i in 0..30 {
        assert_eq!(status(read("203.0.113.9", "not-a-token").await.expect("send")), 401, "forged {i}");
    }
    for i in 0..60 {
        assert_eq!(status(read("203.0.113.9", &a_token).await.expect("send")), 200, "read {i}");
    }
    for (ip, token, what) in
        [("203.0.113.9", &a_token, "the account's 61st"), ("198.51.100.4", &a_token, "the account from elsewhere")]
    {
        let r = read(ip, token).await.expect("send");
        assert_eq!(r.status().as_u16(), 429, "{what}");
        let retry: u64 = r.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
        assert!((1..=60).contains(&retry), "{retry}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"], "rate_limited", "{what}");
    }
    assert_eq!(status(read("203.0.113.9", &b_token).await.expect("send")), 429, "another account from that client");
    assert_eq!(status(read("192.0.2.77", &b_token).await.expect("send")), 200, "another account from another client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_activity_reads_are_limited_per_account_and_client() {
    let sys = TestSystem::embedded_on_clock(&[("LATCHKEY_TRUST_FORWARDED_FOR", "true")], frozen_clock()).await;
    activity_reads_are_limited_per_account_and_client(&sys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_activity_reads_are_limited_per_account_and_client() {
    let sys = TestSystem::aws_with_clock(&[("LATCHKEY_TRUST_FORWARDED_FOR", "true")], frozen_clock()).await;
    activity_reads_are_limited_per_account_and_client(&sys).await;
}

fn time_today() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    latchkey_core::audit::day_string((now / 86_400) as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_journey_leaves_exactly_its_trail_and_an_edit_breaks_the_chain() {
    // The processor's log lines (its own and every other test's).
    let log = latchkey_tests::logs::Captured::global();
    let sys = admin_aws().await;
    let (id, _) = journey(&sys).await;

    let pump = StreamPump::holding(&id).await;
    let events = settled(&sys, &id, JOURNEY.len(), || pump.pump()).await;
    check_trail(&events, JOURNEY);

    // Replaying every batch adds nothing.
    pump.replay().await;
    assert_eq!(kinds(&trail(&sys, &id).await), JOURNEY);
    let StreamPump { ddb, prefix, audit, .. } = pump;
    let chain = audit.chain(&id).await.expect("chain");
    verify_chain(&latchkey_tests::audit_key(), &id, &chain).expect("intact");

    // The newest head the processor logged for this subject is the chain's end.
    let logged: AuditHead = log
        .take()
        .iter()
        .filter(|l| l["message"] == "audit head" && l["subject"] == id.as_str())
        .filter_map(|l| l["head"].as_str()?.parse().ok())
        .max_by_key(|h: &AuditHead| h.seq)
        .expect("an audit head line for the subject");
    assert_eq!(logged, AuditHead::of(chain.last().expect("records")));
    let now = latchkey_core::clock::Clock::now(&latchkey_core::clock::SystemClock);
    check_logged_head(&id, &chain, &logged, now).expect("the chain reaches its logged head");

    // Whoever can write the table can cut the newest record off and move
    // the head back: the rest still verifies, but not against the log.
    let s = aws_sdk_dynamodb::types::AttributeValue::S;
    let last = &chain[chain.len() - 1];
    ddb.delete_item()
        .table_name(format!("{prefix}-audit"))
        .key("pk", s(format!("SUBJ#{id}")))
        .key("sk", s(format!("REC#{:020}", last.seq)))
        .send()
        .await
        .expect("cut the newest record");
    ddb.update_item()
        .table_name(format!("{prefix}-audit"))
        .key("pk", s(format!("SUBJ#{id}")))
        .key("sk", s("HEAD".into()))
        .update_expression("SET seq = :seq, #h = :h")
        .expression_attribute_names("#h", "hash")
        .expression_attribute_values(":seq", aws_sdk_dynamodb::types::AttributeValue::N((last.seq - 1).to_string()))
        .expression_attribute_values(":h", s(last.prev_hash.clone()))
        .send()
        .await
        .expect("move the head back");
    let cut = audit.chain(&id).await.expect("chain");
    assert_eq!(cut.len(), chain.len() - 1);
    verify_chain(&latchkey_tests::audit_key(), &id, &cut).expect("a cut chain holds by itself");
    let brk = check_logged_head(&id, &cut, &logged, now).expect_err("cut behind its logged head");
    assert_eq!(
        (brk.seq, brk.reason),
        (last.seq, "a head the logs recorded is missing before its expiry: the chain was cut back")
    );

    // Editing one stored record breaks the chain at that record.
    ddb.update_item()
        .table_name(format!("{prefix}-audit"))
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("SUBJ#{id}")))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S(format!("REC#{:020}", 4)))
        .update_expression("SET ip = :ip")
        .expression_attribute_values(":ip", aws_sdk_dynamodb::types::AttributeValue::S("198.51.100.9".into()))
        .send()
        .await
        .expect("tamper");
    let brk =
        verify_chain(&latchkey_tests::audit_key(), &id, &audit.chain(&id).await.expect("chain")).expect_err("tampered");
    assert_eq!(brk.seq, 4);

    // Re-hashing the chain from there on, as whoever can write the table
    // can, makes every link hold again but not the seals: they need the key.
    let mut forged = audit.chain(&id).await.expect("chain");
    let mut prev = forged[2].hash.clone();
    for r in forged.iter_mut().skip(3) {
        r.prev_hash = prev;
        r.hash = latchkey_core::audit::record_hash(r);
        prev = r.hash.clone();
        ddb.update_item()
            .table_name(format!("{prefix}-audit"))
            .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("SUBJ#{id}")))
            .key("sk", aws_sdk_dynamodb::types::AttributeValue::S(format!("REC#{:020}", r.seq)))
            .update_expression("SET prev_hash = :p, #h = :h")
            .expression_attribute_names("#h", "hash")
            .expression_attribute_values(":p", aws_sdk_dynamodb::types::AttributeValue::S(r.prev_hash.clone()))
            .expression_attribute_values(":h", aws_sdk_dynamodb::types::AttributeValue::S(r.hash.clone()))
            .send()
            .await
            .expect("re-hash");
    }
    let stored = audit.chain(&id).await.expect("chain");
    assert_eq!(stored, forged);
    let brk = verify_chain(&latchkey_tests::audit_key(), &id, &stored).expect_err("re-hashed without the key");
    assert_eq!((brk.seq, brk.reason), (4, "seal does not match: changed, or sealed with another key"));
}

/// A rotation of the seal key on DynamoDB: the stream processor seals a
/// user's first records with the old key, then (its key replaced) the
/// next with the new one. The chain verifies with the retired key given
/// before the current one, and not without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_a_chain_across_a_seal_key_rotation_verifies_with_the_retired_key() {
    use latchkey_core::clock::{Clock, SystemClock};
    use latchkey_core::keys::AuditKeyring;

    let sys = admin_aws().await;
    let (username, email) = verified_user(&sys).await;
    let tokens = sign_in(&sys, &username, &email).await;
    let (_, me) = sys.get_auth("/v1/me", tokens["access_token"].as_str().expect("access")).await;
    let id = me["id"].as_str().expect("id").to_string();
    let before = &JOURNEY[..6];
    let old = StreamPump::holding(&id).await;
    assert_eq!(kinds(&settled(&sys, &id, before.len(), || old.pump()).await), before);

    // The key is replaced: a new processor (a cold start) seals with it.
    let new_key = AuditKey::new(vec![4; 32]).expect("a key");
    let sdk = latchkey_tests::sdk_config(&latchkey_tests::emulator_endpoint().await).await;
    let new = StreamPump::sealing_with(&sdk, &old.prefix, new_key.clone(), |p| p);
    let (st, body, _) = sys.post("/v1/login", json!({"identifier": username, "password": "not the password"})).await;
    assert_eq!(st, 401, "{body}");
    let events = settled(&sys, &id, before.len() + 1, || new.pump()).await;
    assert_eq!(kinds(&events)[before.len()..], ["login_failed"]);

    let chain = new.audit.chain(&id).await.expect("chain");
    let (now, since) = (SystemClock.now(), latchkey_core::clock::Timestamp::MIN);
    let ring = AuditKeyring::new(vec![latchkey_tests::audit_key()], new_key.clone());
    let report = verify_chain_at(&ring, &id, &chain, now, since).expect("intact across the rotation");
    assert_eq!((report.records, report.unsealed, report.by_retired_key), (before.len() + 1, 0, before.len()));
    let brk = verify_chain_at(&new_key.into(), &id, &chain, now, since).expect_err("the old seals need the old key");
    assert_eq!((brk.seq, brk.reason), (1, "seal does not match: changed, or sealed with another key"));
    let brk = verify_chain(&latchkey_tests::audit_key(), &id, &chain).expect_err("sealed after the rotation");
    assert_eq!(brk.seq, before.len() as u64 + 1);
}

/// An account signed up and in, by name: (username, email, id).
async fn named_account(sys: &TestSystem) -> (String, String, String) {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let (st, me) = sys.get_auth("/v1/me", tokens["access_token"].as_str().expect("access")).await;
    assert_eq!(st, 200, "{me}");
    (username, email, me["id"].as_str().expect("id").to_string())
}

/// `GET /v1/admin/audit`: an account's trail by its username or address is
/// its trail by id, however the name is typed; the standalone codes sent to
/// an address have a trail of their own (`otp_email`); an id is taken as
/// given (an account since deleted keeps its trail); a name without an
/// account is a 404, both names or none a 400 naming `user`, a bad address
/// one naming `otp_email`, and nothing is read without the key. `pump`
/// brings the trail up to date (the stream processor, on AWS).
async fn admin_finds_trails_by_name<F, Fut>(sys: &TestSystem, mut pump: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (username, email, id) = named_account(sys).await;
    trail_until(sys, &id, "session_created", &mut pump).await;
    // The newest page by id once it holds still (the mail deliveries'
    // events come at their own pace).
    let id_path = format!("/v1/admin/users/{id}/audit");
    let by_id = || admin_get(sys, &id_path, Some(ADMIN_KEY));
    let mut newest = by_id().await.1;
    for _ in 0..100 {
        pump().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let again = by_id().await.1;
        if again == newest {
            break;
        }
        newest = again;
    }
    assert!(newest["events"].as_array().is_some_and(|e| e.len() >= 2), "{newest}");
    for name in [username.clone(), username.to_uppercase(), email.clone(), email.to_uppercase(), id.clone()] {
        let (st, body) = admin_get(sys, &format!("/v1/admin/audit?user={name}"), Some(ADMIN_KEY)).await;
        assert_eq!(st, 200, "{name}: {body}");
        assert_eq!((&body["user_id"], &body["events"]), (&json!(id), &newest["events"]), "{name}");
        assert!(body.get("otp_email").is_none(), "{body}");
    }
    // Paged like the trail by id.
    let (_, first) = admin_get(sys, &format!("/v1/admin/audit?user={username}&limit=1"), Some(ADMIN_KEY)).await;
    let cursor = first["next_cursor"].as_str().expect("more than one record");
    let path = format!("/v1/admin/audit?user={username}&limit=1&cursor={cursor}");
    let (_, second) = admin_get(sys, &path, Some(ADMIN_KEY)).await;
    assert_eq!(second["events"][0], newest["events"][1], "{second}");

    // The standalone codes of an address, however it is typed.
    let (_, address) = unique();
    let (st, _, _) = sys.post("/otp", json!({"action": "send_otp", "email": address})).await;
    assert_eq!(st, 200);
    let mut codes = Value::Null;
    for _ in 0..100 {
        pump().await;
        let path = format!("/v1/admin/audit?otp_email={}", address.to_uppercase());
        let (st, body) = admin_get(sys, &path, Some(ADMIN_KEY)).await;
        assert_eq!(st, 200, "{body}");
        codes = body;
        if codes["events"].as_array().is_some_and(|e| !e.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let requests: Vec<Value> =
        codes["events"].as_array().expect("events").iter().filter(|e| !is_mail(e)).cloned().collect();
    assert_eq!(kinds(&requests), ["otp_sent"], "{codes}");
    assert_eq!(codes["otp_email"], json!(address), "{codes}");
    assert!(codes.get("user_id").is_none(), "{codes}");

    // A username of 32 hex digits (which the id parser would take too) is
    // a username.
    let hex = uuid::Uuid::new_v4().simple().to_string();
    let signup = json!({"username": hex, "email": unique().1, "password": PASSWORD});
    assert_eq!(sys.post("/v1/register", signup).await.0, 202);
    let mut named = Value::Null;
    for _ in 0..100 {
        pump().await;
        named = admin_get(sys, &format!("/v1/admin/audit?user={hex}"), Some(ADMIN_KEY)).await.1;
        if named["events"].as_array().is_some_and(|e| kinds(e).contains(&"user_registered".to_string())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let as_id = uuid::Uuid::parse_str(&hex).expect("hex").to_string();
    assert!(named["user_id"].as_str().is_some_and(|u| u != as_id), "{named}");
    assert!(kinds(named["events"].as_array().expect("events")).contains(&"user_registered".to_string()), "{named}");

    // An id without an account: its (empty) trail, not a 404.
    let (st, body) = admin_get(sys, &format!("/v1/admin/audit?user={}", uuid::Uuid::new_v4()), Some(ADMIN_KEY)).await;
    assert_eq!((st, body["events"].as_array().map(Vec::len)), (200, Some(0)), "{body}");
    let (st, body) = admin_get(sys, "/v1/admin/audit?user=nobody-by-this-name", Some(ADMIN_KEY)).await;
    assert_eq!((st, body["error"].as_str()), (404, Some("user_not_found")), "{body}");
    let (st, body) = admin_get(sys, "/v1/admin/audit?user=nobody@example.com", Some(ADMIN_KEY)).await;
    assert_eq!((st, body["error"].as_str()), (404, Some("user_not_found")), "{body}");
    for (path, field) in [
        (format!("/v1/admin/audit?user={username}&otp_email={address}"), "user"),
        ("/v1/admin/audit".to_string(), "user"),
        ("/v1/admin/audit?user=%20".to_string(), "user"),
        ("/v1/admin/audit?user=a%20b".to_string(), "user"),
        ("/v1/admin/audit?otp_email=not-an-address".to_string(), "otp_email"),
        (format!("/v1/admin/audit?user={username}&limit=0"), "limit"),
    ] {
        let (st, body) = admin_get(sys, &path, Some(ADMIN_KEY)).await;
        assert_eq!((st, body["field"].as_str()), (400, Some(field)), "{path}: {body}");
    }
    for key in [None, Some("wrong-key")] {
        let (st, body) = admin_get(sys, &format!("/v1/admin/audit?user={username}"), key).await;
        assert_eq!(st, 401, "{body}");
        assert!(body.get("events").is_none() && body.get("user_id").is_none(), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_admin_finds_trails_by_name() {
    let sys = admin_embedded().await;
    admin_finds_trails_by_name(&sys, || async {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_admin_finds_trails_by_name() {
    let sys = admin_aws().await;
    // The pump reads the streams of this system's tables, found by an
    // account in them.
    let (_, _, id) = named_account(&sys).await;
    let pump = StreamPump::holding(&id).await;
    admin_finds_trails_by_name(&sys, || pump.pump()).await;
}

/// The table prefix of the system that holds user `id` (the harness picks
/// a random one and does not expose it; user ids are random too).
async fn prefix_holding(ddb: &aws_sdk_dynamodb::Client, id: &str) -> String {
    let mut start: Option<String> = None;
    loop {
        let out = ddb.list_tables().set_exclusive_start_table_name(start.clone()).send().await.expect("list tables");
        for name in out.table_names() {
            let Some(prefix) = name.strip_suffix("-users") else { continue };
            let item = ddb
                .get_item()
                .table_name(name)
                .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("USER#{id}")))
                .send()
                .await
                .expect("get item");
            if item.item.is_some() {
                return prefix.to_string();
            }
        }
        match out.last_evaluated_table_name {
            Some(n) => start = Some(n),
            None => panic!("no users table holds {id}"),
        }
    }
}

/// The stream processor on the emulator's tables, fed by the streams
/// poller as the Lambda's event source mapping would feed it. Each `pump`
/// reads one batch and hands it to the handler, which must take all of it;
/// the batches are kept, to replay.
struct StreamPump {
    ddb: aws_sdk_dynamodb::Client,
    prefix: String,
    audit: Arc<DynamoAuditStore>,
    poller: tokio::sync::Mutex<StreamPoller>,
    processor: Processor,
    batches: std::sync::Mutex<Vec<Event>>,
}

impl StreamPump {
    /// On the tables of the system that holds user `id`.
    async fn holding(id: &str) -> Self {
        let sdk = latchkey_tests::sdk_config(&latchkey_tests::emulator_endpoint().await).await;
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let prefix = prefix_holding(&ddb, id).await;
        Self::on(&sdk, &prefix, |p| p)
    }

    /// On the tables named `prefix`-*, with the processor `setup` makes of
    /// the default one.
    fn on(sdk: &aws_config::SdkConfig, prefix: &str, setup: impl FnOnce(Processor) -> Processor) -> Self {
        Self::sealing_with(sdk, prefix, latchkey_tests::audit_key(), setup)
    }

    /// [`StreamPump::on`], sealing with `key`.
    fn sealing_with(
        sdk: &aws_config::SdkConfig,
        prefix: &str,
        key: AuditKey,
        setup: impl FnOnce(Processor) -> Processor,
    ) -> Self {
        let ddb = aws_sdk_dynamodb::Client::new(sdk);
        let audit = Arc::new(DynamoAuditStore::new(ddb.clone(), prefix));
        let processor = Processor::new(audit.clone(), key, AuditPolicy::default(), 400);
        StreamPump {
            ddb,
            prefix: prefix.to_string(),
            audit,
            poller: tokio::sync::Mutex::new(StreamPoller::new(sdk, prefix)),
            processor: setup(processor),
            batches: std::sync::Mutex::default(),
        }
    }

    async fn pump(&self) {
        self.pump_edited(|_| {}).await;
    }

    /// Pumps one batch, edited by `edit` before the handler sees it.
    async fn pump_edited(&self, edit: impl FnOnce(&mut Event)) {
        let mut batch = self.poller.lock().await.next_batch().await.expect("poll the streams");
        edit(&mut batch);
        let resp = self.processor.handle(&batch).await;
        assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
        self.batches.lock().expect("batches").push(batch);
    }

    /// Hands every batch pumped so far to the handler again.
    async fn replay(&self) {
        let batches = self.batches.lock().expect("batches").clone();
        for b in &batches {
            let resp = self.processor.handle(b).await;
            assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
        }
    }
}

/// A system on the emulator (one account signed up through its API, only
/// to find its tables) and an account nobody verified, put in its store
/// as if registered `days` days ago, whose latest link is `link`, made
/// `link_age` seconds ago and valid for a day.
struct Aged {
    sys: TestSystem,
    sdk: aws_config::SdkConfig,
    ddb: aws_sdk_dynamodb::Client,
    prefix: String,
    store: Arc<latchkey_core::adapters::dynamo::DynamoStore>,
    old: latchkey_core::domain::User,
    name: String,
    email: String,
}

async fn aged_unverified_account(days: i64, link: &str, link_age: i64) -> Aged {
    use latchkey_core::adapters::dynamo::DynamoStore;
    use latchkey_core::domain::{Email, RequestMeta, User, UserId, Username, VerificationRecord};
    use latchkey_core::ports::UserStore;
    use latchkey_core::rng::OsSecureRng;

    let sys = admin_aws().await;
    let (known, known_email) = verified_user(&sys).await;
    let tokens = sign_in(&sys, &known, &known_email).await;
    let (_, me) = sys.get_auth("/v1/me", tokens["access_token"].as_str().expect("access")).await;
    let sdk = latchkey_tests::sdk_config(&latchkey_tests::emulator_endpoint().await).await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let prefix = prefix_holding(&ddb, me["id"].as_str().expect("id")).await;

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let (name, email) = unique();
    let created = now - days * 86_400;
    let old = User {
        id: UserId::random(&OsSecureRng),
        username: Username::parse(&name).expect("username"),
        email: Email::parse(&email).expect("email"),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".into(),
        verified: false,
        created_at: created,
        failed_logins: 0,
        locked_until: None,
        otp_failures: 0,
        verification_sent_at: Some(created),
        sessions_valid_after: None,
        password_reset_at: None,
        password_resets: 0,
        password_epoch: 0,
        email_changes: 0,
        meta: RequestMeta { ip: Some("198.51.100.4".into()), ..Default::default() },
    };
    let token = VerificationRecord {
        token_hash: latchkey_core::keys::token_hash(link),
        user_id: old.id,
        created_at: now - link_age,
        expires_at: now - link_age + 86_400,
        used_at: None,
        meta: RequestMeta::default(),
    };
    let store = Arc::new(DynamoStore::new(ddb.clone(), &prefix));
    store.create_user(&old, &token, i64::MIN).await.expect("the old account");
    Aged { sys, sdk, ddb, prefix, store, old, name, email }
}

/// On DynamoDB: an account nobody verified within its hold, whose username
/// a new registration takes, is deleted with its claims, and the stream's
/// REMOVE ends its trail with `unverified_account_replaced` (no request
/// metadata: its own registration's is not the remover's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_an_unverified_account_replaced_past_its_hold_ends_its_trail() {
    use latchkey_core::ports::UserStore;

    // Registered 8 days ago and never verified (the hold is 7 days); its
    // latest link, still valid, from a resend an hour ago.
    let link = "L".repeat(43);
    let Aged { sys, sdk, prefix, store, old, name, email, .. } = aged_unverified_account(8, &link, 3600).await;

    // Someone registers that username with an address of their own.
    let (_, fresh_email) = unique();
    let (st, body, _) =
        sys.post("/v1/register", json!({"username": name, "email": fresh_email, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{body}");
    assert_eq!(store.user_by_id(&old.id).await.expect("read"), None, "the old account is gone");
    let new = store.user_by_username(&old.username).await.expect("read").expect("the name's new holder");
    assert_eq!(new.email.as_str(), fresh_email);
    // The token outlives its account on DynamoDB (until its TTL) but
    // verifies nothing.
    let (st, body, _) = sys.post("/v1/verify-email", json!({"token": link})).await;
    assert_eq!((st, body["error"].as_str()), (400, Some("verification_token_invalid")), "{body}");
    // Its address is free again, for its owner.
    let (st, body, _) =
        sys.post("/v1/register", json!({"username": unique().0, "email": email, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{body}");
    assert!(store.user_by_email(&old.email).await.expect("read").is_some_and(|u| u.id != old.id && u.id != new.id));

    let pump = StreamPump::on(&sdk, &prefix, |p| p);
    let id = old.id.to_string();
    let events = settled(&sys, &id, 3, || pump.pump()).await;
    assert_eq!(kinds(&events), ["user_registered", "verification_mail_requested", "unverified_account_replaced"]);
    let last = events.last().expect("events");
    assert_eq!((last["outcome"].as_str(), last["reason"].as_str()), (Some("expired"), Some("unverified_past_hold")));
    assert!(last["ip"].is_null(), "{last}");
}

/// On DynamoDB: an account nobody verified for 30 days is deleted by the
/// TTL (done here by hand: the emulator runs no TTL; the stream's REMOVE is
/// marked as the TTL's, as DynamoDB marks it). The stream processor ends
/// its trail with `unverified_account_expired` and releases its claims, so
/// both names register again without replacing anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_an_unverified_account_the_ttl_deletes_ends_its_trail_and_frees_its_names() {
    use aws_lambda_events::dynamodb::UserIdentity;
    use aws_sdk_dynamodb::types::AttributeValue;
    use latchkey_core::adapters::dynamo::items;
    use latchkey_core::audit::Images;
    use latchkey_core::ports::UserStore;
    use latchkey_stream_processor::TTL_PRINCIPAL;

    // Registered 31 days ago, never verified, its one link long dead.
    let Aged { sys, sdk, ddb, prefix, store, old, name, email } =
        aged_unverified_account(31, &"T".repeat(43), 31 * 86_400).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let user_pk = items::user_pk(&old.id);
    let table = format!("{prefix}-users");
    let item = ddb
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S(user_pk.clone()))
        .send()
        .await
        .expect("get")
        .item
        .expect("the old account's item");
    let ttl: i64 = item["ttl"].as_n().expect("a ttl").parse().expect("a number");
    assert!(ttl <= now, "its ttl ({ttl}) has passed: the TTL may delete it");
    // What the TTL does.
    ddb.delete_item().table_name(&table).key("pk", AttributeValue::S(user_pk.clone())).send().await.expect("delete");

    let pump = StreamPump::on(&sdk, &prefix, |p| p.releasing_names(store.clone()));
    let id = old.id.to_string();
    // The old account's REMOVE, marked as the TTL's.
    let as_the_ttls = |batch: &mut Event| {
        for r in &mut batch.records {
            let change = latchkey_stream_processor::source_change(r).expect("a record");
            if change.is_some_and(|c| matches!(c.images, Images::User(Some(u), None) if u.id == old.id)) {
                let mut ttl = UserIdentity::default();
                ttl.type_ = "Service".into();
                ttl.principal_id = TTL_PRINCIPAL.into();
                r.user_identity = Some(ttl);
            }
        }
    };
    let events = settled(&sys, &id, 3, || pump.pump_edited(as_the_ttls)).await;
    assert_eq!(kinds(&events), ["user_registered", "verification_mail_requested", "unverified_account_expired"]);
    let last = events.last().expect("events");
    assert_eq!((last["outcome"].as_str(), last["reason"].as_str()), (Some("expired"), Some("ttl")));
    assert!(last["ip"].is_null(), "{last}");

    // Its claims went with it.
    for claim in [items::username_claim_pk(&name), items::email_claim_pk(old.email.as_str())] {
        let item = ddb.get_item().table_name(&table).key("pk", AttributeValue::S(claim.clone())).send().await;
        assert_eq!(item.expect("get").item, None, "{claim}");
    }
    // Both names register again, together, replacing nobody.
    let (st, body, _) = sys.post("/v1/register", json!({"username": name, "email": email, "password": PASSWORD})).await;
    assert_eq!(st, 202, "{body}");
    let new = store.user_by_username(&old.username).await.expect("read").expect("the name's new holder");
    assert_eq!((new.email.as_str(), new.id != old.id), (old.email.as_str(), true));
}

/// A user locked out by wrong passwords resets the password by mail; returns
/// the user id. The trail then ends (requests only) with the lock, its end
/// by the reset, and the reset.
async fn locked_then_reset(sys: &TestSystem) -> String {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let (_, me) = sys.get_auth("/v1/me", tokens["access_token"].as_str().expect("access")).await;
    let n = sys.mails_to(&email).await.len();
    for _ in 0..10 {
        let (st, _, _) =
            sys.post("/v1/login", json!({"identifier": username, "password": "wrong wrong wrong wrong"})).await;
        assert_eq!(st, 401);
    }
    // The lock notice first, so the next mail is the link.
    assert_eq!(sys.wait_mail(&email, n + 1).await.kind, "account_locked");
    let n = n + 1;
    let (st, _, _) = sys.post("/v1/password/forgot", json!({ "email": email })).await;
    assert_eq!(st, 202);
    let link = sys.wait_mail(&email, n + 1).await.link().expect("link");
    let (st, body) = reset_with_link(sys, &link, "velvet orbit harbor lantern").await;
    assert_eq!(st, 200, "{body}");
    me["id"].as_str().expect("id").to_string()
}

const RESET_TAIL: &[(&str, &str, &str)] = &[
    ("account_locked", "failure", "too_many_failures"),
    ("login_failed", "failure", "wrong_password"),
    ("account_unlocked", "success", "password_reset"),
    ("password_reset", "success", "all_sessions_ended"),
];

/// Polls (bounded) until the trail holds a `password_reset`; the tail of
/// its requests' events.
async fn reset_tail<F, Fut>(sys: &TestSystem, id: &str, pump: F) -> Vec<(String, String, String)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let events = trail_until(sys, id, "password_reset", pump).await;
    let requests: Vec<_> = events.iter().filter(|e| !is_mail(e)).collect();
    assert!(requests.iter().all(|e| e["ip"] == "127.0.0.1"), "{requests:?}");
    let field = |e: &Value, k: &str| e[k].as_str().unwrap_or_default().to_string();
    let all: Vec<_> = requests.iter().map(|e| (field(e, "event"), field(e, "outcome"), field(e, "reason"))).collect();
    all[all.len().saturating_sub(RESET_TAIL.len())..].to_vec()
}

/// The ten wrong passwords of [`locked_then_reset`]: one `login_failed`
/// each, the nine before the lock counting down to it right before it in
/// the trail, the tenth (none left) right after the lock it caused, all
/// counted in the day's stats.
async fn check_failed_logins(sys: &TestSystem, id: &str) {
    let requests: Vec<Value> = trail(sys, id).await.into_iter().filter(|e| !is_mail(e)).collect();
    let locked = requests.iter().position(|e| e["event"] == "account_locked").expect("the lock");
    let failed = &requests[locked.saturating_sub(9)..locked];
    assert_eq!(kinds(failed), ["login_failed"; 9], "{requests:?}");
    let left: Vec<u64> = failed.iter().map(|e| e["attempts_left"].as_u64().unwrap_or(99)).collect();
    assert_eq!(left, (1..=9).rev().collect::<Vec<u64>>());
    assert!(
        failed.iter().all(|e| e["reason"] == "wrong_password" && e["outcome"] == "failure" && e["ip"] == "127.0.0.1"),
        "{failed:?}"
    );
    let tenth = &requests[locked + 1];
    assert_eq!(
        (tenth["event"].as_str(), tenth["reason"].as_str(), tenth["attempts_left"].as_u64()),
        (Some("login_failed"), Some("wrong_password"), Some(0)),
        "{requests:?}"
    );
    assert_eq!(requests.iter().filter(|e| e["event"] == "login_failed").count(), 10, "{requests:?}");
    let text = serde_json::to_string(&requests).expect("json");
    assert!(!text.contains("wrong wrong") && !text.contains("argon2"), "{text}");
    let today = time_today();
    let (st, stats) = admin_get(sys, &format!("/v1/admin/stats?from={today}&to={today}"), Some(ADMIN_KEY)).await;
    assert_eq!(st, 200, "{stats}");
    assert!(stats["days"][0]["counts"]["login_failed"].as_u64().unwrap_or(0) >= 10, "{stats}");
}

fn owned(tail: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    tail.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_reset_during_a_lock_ends_it_in_the_trail() {
    let sys = admin_embedded().await;
    let id = locked_then_reset(&sys).await;
    assert_eq!(reset_tail(&sys, &id, || async {}).await, owned(RESET_TAIL));
    check_failed_logins(&sys, &id).await;
}

/// The same through the DynamoDB stream: `password_reset_at` and the
/// removed `locked_until` of the user's MODIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_a_reset_during_a_lock_ends_it_in_the_trail() {
    let sys = admin_aws().await;
    let id = locked_then_reset(&sys).await;
    let pump = StreamPump::holding(&id).await;
    let tail = reset_tail(&sys, &id, || pump.pump()).await;
    assert_eq!(tail, owned(RESET_TAIL));
    check_failed_logins(&sys, &id).await;
}

/// A user signs out everywhere else (`POST /v1/logout/others`) from one of
/// two sessions; returns their id and the other session's tokens.
async fn signed_out_elsewhere(sys: &TestSystem) -> (String, Value) {
    let (username, email) = verified_user(sys).await;
    let mine = sign_in(sys, &username, &email).await;
    let other = sign_in(sys, &username, &email).await;
    let access = mine["access_token"].as_str().expect("access");
    let (_, me) = sys.get_auth("/v1/me", access).await;
    let r = sys
        .http
        .post(sys.url("/v1/logout/others"))
        .bearer_auth(access)
        .json(&json!({ "current_password": PASSWORD }))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
    (me["id"].as_str().expect("id").to_string(), other)
}

/// Polls (bounded) until the trail holds an `other_sessions_ended`; the
/// trail's request events (no mail) then.
async fn sign_out_trail<F, Fut>(sys: &TestSystem, id: &str, pump: F) -> Vec<Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    trail_until(sys, id, "other_sessions_ended", pump).await.into_iter().filter(|e| !is_mail(e)).collect()
}

/// The sign-out is one `other_sessions_ended` (success, the request's
/// address), last in the trail: no password change, no session revoked one
/// by one (the other sessions end by the account's epoch).
fn check_sign_out_trail(events: &[Value]) {
    last_and_only(events, "other_sessions_ended", ("outcome", "success"));
    let k = kinds(events);
    assert!(!k.iter().any(|k| k == "password_changed" || k == "session_revoked"), "{k:?}");
}

/// The trail's last event is its only `kind`, made by the request (its
/// address), with `field` = `value`.
fn last_and_only(events: &[Value], kind: &str, (field, value): (&str, &str)) {
    let last = events.last().expect("events");
    assert_eq!(
        (last["event"].as_str(), last[field].as_str(), last["ip"].as_str()),
        (Some(kind), Some(value), Some("127.0.0.1")),
        "{events:?}"
    );
    let k = kinds(events);
    assert_eq!(k.iter().filter(|k| *k == kind).count(), 1, "{k:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_signing_out_everywhere_else_is_one_event_in_the_trail() {
    let sys = admin_embedded().await;
    let (id, other) = signed_out_elsewhere(&sys).await;
    check_sign_out_trail(&sign_out_trail(&sys, &id, || async {}).await);
    let (st, _, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": other["refresh_token"] })).await;
    assert_eq!(st, 401);
}

/// The same through the DynamoDB stream: the user's MODIFY with a new
/// `password_epoch` and the same hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_signing_out_everywhere_else_is_one_event_in_the_trail() {
    let sys = admin_aws().await;
    let (id, other) = signed_out_elsewhere(&sys).await;
    let pump = StreamPump::holding(&id).await;
    check_sign_out_trail(&sign_out_trail(&sys, &id, || pump.pump()).await);
    let (st, _, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": other["refresh_token"] })).await;
    assert_eq!(st, 401);
}

/// A user ends the other of their two sessions from one
/// (`POST /v1/sessions/{id}/revoke`); returns their id.
async fn ended_one_session(sys: &TestSystem) -> String {
    let (username, email) = verified_user(sys).await;
    let mine = sign_in(sys, &username, &email).await;
    let other = sign_in(sys, &username, &email).await;
    let access = mine["access_token"].as_str().expect("access");
    let (_, me) = sys.get_auth("/v1/me", access).await;
    let (_, theirs) = sys.get_auth("/v1/me", other["access_token"].as_str().expect("access")).await;
    let path = format!("/v1/sessions/{}/revoke", theirs["session_id"].as_str().expect("session_id"));
    let (st, body) = sys.post_auth(&path, access, json!({ "current_password": PASSWORD })).await;
    assert_eq!(st, 204, "{body}");
    me["id"].as_str().expect("id").to_string()
}

/// Ending one session is one `session_revoked`, reason `ended_by_user`,
/// with the request's address, last in the trail.
fn check_ended_one_trail(events: &[Value]) {
    last_and_only(events, "session_revoked", ("reason", "ended_by_user"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_ending_one_session_is_one_revocation_in_the_trail() {
    let sys = admin_embedded().await;
    let id = ended_one_session(&sys).await;
    let events = trail_until(&sys, &id, "session_revoked", || async {}).await;
    check_ended_one_trail(&events.into_iter().filter(|e| !is_mail(e)).collect::<Vec<_>>());
}

/// The same through the DynamoDB stream: the session's MODIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_ending_one_session_is_one_revocation_in_the_trail() {
    let sys = admin_aws().await;
    let id = ended_one_session(&sys).await;
    let pump = StreamPump::holding(&id).await;
    let events = trail_until(&sys, &id, "session_revoked", || pump.pump()).await;
    check_ended_one_trail(&events.into_iter().filter(|e| !is_mail(e)).collect::<Vec<_>>());
}

/// A verified user with two sessions: their id, and the tokens of each.
async fn two_sessions(sys: &TestSystem) -> (String, Value, Value) {
    let (username, email) = verified_user(sys).await;
    let mine = sign_in(sys, &username, &email).await;
    let other = sign_in(sys, &username, &email).await;
    let (_, me) = sys.get_auth("/v1/me", mine["access_token"].as_str().expect("access")).await;
    (me["id"].as_str().expect("id").to_string(), mine, other)
}

/// The user agent of the deleting request (the requests before it carry
/// the harness's own).
const DELETING_CLIENT: &str = "deleting-client/1.0";

/// `POST /v1/me/delete` from the session of `tokens`, with the password.
async fn delete_account(sys: &TestSystem, tokens: &Value) {
    let access = tokens["access_token"].as_str().expect("access");
    let r = sys
        .http
        .post(sys.url("/v1/me/delete"))
        .bearer_auth(access)
        .header("user-agent", DELETING_CLIENT)
        .json(&json!({ "current_password": PASSWORD }))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 204);
}

/// The trail of a deleted account is kept, and ends with one
/// `account_deleted`, reason `by_owner`, made by the deleting request (its
/// address and user agent); the account's other session is over.
async fn check_deleted(sys: &TestSystem, events: Vec<Value>, other: &Value) {
    let events: Vec<Value> = events.into_iter().filter(|e| !is_mail(e)).collect();
    last_and_only(&events, "account_deleted", ("reason", "by_owner"));
    assert_eq!(events.last().and_then(|e| e["user_agent"].as_str()), Some(DELETING_CLIENT), "{events:?}");
    let (st, _, _) = sys.post("/v1/token/refresh", json!({ "refresh_token": other["refresh_token"] })).await;
    assert_eq!(st, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_deleting_an_account_ends_its_trail_with_the_request() {
    let sys = admin_embedded().await;
    let (id, mine, other) = two_sessions(&sys).await;
    delete_account(&sys, &mine).await;
    check_deleted(&sys, trail_until(&sys, &id, "account_deleted", || async {}).await, &other).await;
}

/// The same through the DynamoDB stream: the user's REMOVE, whose old
/// image carries the deleting request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_deleting_an_account_ends_its_trail_with_the_request() {
    let sys = admin_aws().await;
    let (id, mine, other) = two_sessions(&sys).await;
    let pump = StreamPump::holding(&id).await;
    delete_account(&sys, &mine).await;
    check_deleted(&sys, trail_until(&sys, &id, "account_deleted", || pump.pump()).await, &other).await;
}

/// Someone who knows a verified user's password spends the account's code
/// budget (100 wrong codes over 17 logins); returns the user id and address.
/// The 100th wrong code locks the account and mails its owner at once.
async fn codes_spent(sys: &TestSystem) -> (String, String) {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let (_, me) = sys.get_auth("/v1/me", tokens["access_token"].as_str().expect("access")).await;
    let (mut spent, mut logins) = (0, 0);
    while spent < 100 {
        logins += 1;
        let before = sys.mails_to(&email).await.len();
        let (st, body, _) = sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD})).await;
        assert_eq!(st, 202, "the password step after {spent} wrong codes: {body}");
        let challenge = body["challenge_id"].as_str().expect("challenge_id").to_string();
        let code = sys.wait_mail(&email, before + 1).await.code().expect("code in mail");
        let wrong = if code == "000000" { "111111" } else { "000000" };
        for _ in 0..6 {
            if spent == 100 {
                break;
            }
            let (st, body, _) = sys.post("/v1/login/otp", json!({"challenge_id": challenge, "code": wrong})).await;
            assert_eq!(st, 401, "{body}");
            spent += 1;
        }
    }
    // The verification link, the sign-in's code and a code per login, then
    // the lock notice.
    let n = 2 + logins + 1;
    let lock = sys.wait_mail(&email, n).await;
    assert_eq!(lock.kind, "account_locked", "the owner is mailed right after the 100th wrong code");
    let (st, body, _) = sys.post("/v1/login", json!({"identifier": username, "password": PASSWORD})).await;
    assert_eq!(st, 401, "the right password during the lock: {body}");
    assert_eq!(sys.mails_to(&email).await.len(), n, "a password step during the lock mails nothing more");
    (me["id"].as_str().expect("id").to_string(), email)
}

/// Polls (bounded) until `id`'s newest request event is a lock; the
/// newest `n` request events then, oldest first.
async fn lock_tail<F, Fut>(sys: &TestSystem, id: &str, n: usize, mut pump: F) -> Vec<(String, String, String)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let field = |e: &Value, k: &str| e[k].as_str().unwrap_or_default().to_string();
    let mut requests = Vec::new();
    for _ in 0..100 {
        pump().await;
        let (st, body) = admin_get(sys, &format!("/v1/admin/users/{id}/audit?limit=200"), Some(ADMIN_KEY)).await;
        assert_eq!(st, 200, "{body}");
        requests = body["events"].as_array().expect("events").iter().filter(|e| !is_mail(e)).cloned().collect();
        if requests.first().is_some_and(|e| e["event"] == "account_locked") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(requests.iter().filter(|e| e["event"] == "code_failed").count(), 100, "{requests:?}");
    assert!(!requests.iter().any(|e| e["event"] == "login_failed"), "no password was wrong: {requests:?}");
    let mut tail: Vec<_> =
        requests.iter().take(n).map(|e| (field(e, "event"), field(e, "outcome"), field(e, "reason"))).collect();
    tail.reverse();
    tail
}

/// The 100th wrong code, then the lock it causes, with the budget's reason.
const BUDGET_TAIL: &[(&str, &str, &str)] =
    &[("code_failed", "failure", "wrong_code"), ("account_locked", "failure", "code_budget_spent")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_the_wrong_code_that_spends_the_budget_locks_and_tells_the_owner() {
    let sys = admin_embedded().await;
    let (id, _) = codes_spent(&sys).await;
    assert_eq!(lock_tail(&sys, &id, BUDGET_TAIL.len(), || async {}).await, owned(BUDGET_TAIL));
}

/// The same through the DynamoDB stream: the lock is the user's MODIFY
/// that sets `locked_until` once `otp_failures` is at the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_the_wrong_code_that_spends_the_budget_locks_and_tells_the_owner() {
    let sys = admin_aws().await;
    let (id, _) = codes_spent(&sys).await;
    let pump = StreamPump::holding(&id).await;
    let tail = lock_tail(&sys, &id, BUDGET_TAIL.len(), || pump.pump()).await;
    assert_eq!(tail, owned(BUDGET_TAIL));
}

/// The user agent of the request that opens an address change link.
const CONFIRMING_CLIENT: &str = "confirming-client/1.0";

/// A verified user moves to another address: asked with the password, made
/// by the link (opened by `CONFIRMING_CLIENT`). Returns the user's id.
async fn moved_address(sys: &TestSystem) -> String {
    let (username, email) = verified_user(sys).await;
    let tokens = sign_in(sys, &username, &email).await;
    let access = tokens["access_token"].as_str().expect("access");
    let (_, me) = sys.get_auth("/v1/me", access).await;
    let new = format!("moved-{email}");
    let (st, body) =
        sys.post_auth("/v1/me/email", access, json!({ "current_password": PASSWORD, "new_email": new })).await;
    assert_eq!(st, 202, "{body}");
    let link = sys.wait_mail(&new, 1).await.link().expect("link");
    let r = sys
        .http
        .post(sys.url("/v1/email/confirm"))
        .header("user-agent", CONFIRMING_CLIENT)
        .json(&json!({ "token": latchkey_tests::scenarios::token_from_link(&link) }))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    me["id"].as_str().expect("id").to_string()
}

/// Polls (bounded) until the trail of `id` holds the move and `notices`
/// deliveries of a notice to the old address (the embedded system's
/// trail has its deliveries; the aws one here pumps no mail ledger: 0);
/// then: one `email_changed`, last of the requests, made by the request
/// that opened the link, and no mail to the new address in the account's
/// trail (it would tell an address with an account from a free one).
async fn check_moved<F, Fut>(sys: &TestSystem, id: &str, notices: usize, mut pump: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let delivered = |events: &[Value]| events.iter().filter(|e| e["reason"] == "email_change_notice").count();
    let mut events = Vec::new();
    for _ in 0..100 {
        pump().await;
        events = trail(sys, id).await;
        if kinds(&events).iter().any(|k| k == "email_changed") && delivered(&events) == notices {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered(&events), notices, "{events:?}");
    let mails: Vec<&str> = events.iter().filter(|e| is_mail(e)).filter_map(|e| e["reason"].as_str()).collect();
    assert!(!mails.iter().any(|r| *r == "email_change_link" || *r == "email_in_use"), "{mails:?}");
    let requests: Vec<Value> = events.into_iter().filter(|e| !is_mail(e)).collect();
    let last = requests.last().expect("events");
    assert_eq!(
        (last["event"].as_str(), last["outcome"].as_str(), last["reason"].as_str(), last["ip"].as_str()),
        (Some("email_changed"), Some("success"), None, Some("127.0.0.1")),
        "{requests:?}"
    );
    assert_eq!(last["user_agent"].as_str(), Some(CONFIRMING_CLIENT), "{requests:?}");
    assert_eq!(kinds(&requests).iter().filter(|k| *k == "email_changed").count(), 1, "{requests:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_an_address_change_is_one_event_made_by_the_link() {
    let sys = admin_embedded().await;
    let id = moved_address(&sys).await;
    check_moved(&sys, &id, 2, || async {}).await;
}

/// The same through the DynamoDB stream: the user's MODIFY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_an_address_change_is_one_event_made_by_the_link() {
    let sys = admin_aws().await;
    let id = moved_address(&sys).await;
    let pump = StreamPump::holding(&id).await;
    check_moved(&sys, &id, 0, || pump.pump()).await;
}
