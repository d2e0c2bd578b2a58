//! Every refused request leaves one log line with its route, status, error
//! code, wait and client IP, and nothing a client sent: unknown names,
//! forged refresh tokens, wrong admin keys and rate limits (a live probe
//! found none of them in the log). Requests that succeed leave none.

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::Request;
use latchkey_tests::logs::Captured;
use latchkey_tests::system::TempDir;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use tower::ServiceExt as _;

/// Method, path, JSON body, bearer, the status wanted and its error code.
type Case<'a> = (&'a str, &'a str, Option<Value>, Option<&'a str>, u16, &'a str);

const CLIENT: [u8; 4] = [203, 0, 113, 9];
const ADMIN_KEY_SHA256: &str = "11570a378233764fc1f63afc1541f7977d9b65eb3ff360ffa1519dd52d1bbd75";

/// The answer's status, and its `Retry-After` if it has one.
async fn send(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    bearer: Option<&str>,
) -> (u16, Option<String>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(b) = bearer {
        req = req.header("authorization", format!("Bearer {b}"));
    }
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let mut req = req.body(body).expect("request");
    req.extensions_mut().insert(ConnectInfo(SocketAddr::from((CLIENT, 40_000))));
    let res = app.clone().oneshot(req).await.expect("the Router answers");
    let retry_after = res.headers().get("retry-after").map(|v| v.to_str().expect("ASCII").to_string());
    (res.status().as_u16(), retry_after)
}

#[tokio::test]
async fn refusals_leave_one_line_each_without_what_the_client_sent() {
    let captured = Captured::global();

    let dir = TempDir::new();
    let admin_key = "the-real-admin-key-0123456789abcdef";
    let env: HashMap<&str, String> = [
        ("LATCHKEY_DATA_DIR", dir.0.display().to_string()),
        // printf %s "$admin_key" | sha256sum
        ("LATCHKEY_ADMIN_KEY_HASH", ADMIN_KEY_SHA256.into()),
    ]
    .into();
    let cfg = latchkey_core::config::Config::from_lookup(|k| env.get(k).cloned()).expect("config");
    let built = latchkey_api::wiring::build(&cfg).await.expect("build");
    let app = latchkey_api::app(built.state.clone());
    captured.take();

    let secret_password = "a-password-nobody-should-log";
    let forged = format!("{}.{}", uuid::Uuid::new_v4(), "Zm9yZ2VkLXNlY3JldC1mb3JnZWQtc2VjcmV0LWZvcmdlZA");
    let wrong_key = "a-wrong-admin-key-guess";
    let link_token = "dGhpcy1pcy1hLWxpbmstdG9rZW4tdGhhdC1tdXN0LW5vdC1sb2c";
    let cases: [Case; 5] = [
        (
            "POST",
            "/v1/login",
            Some(json!({"identifier": "nobody-at-all", "password": secret_password})),
            None,
            401,
            "invalid_credentials",
        ),
        ("POST", "/v1/token/refresh", Some(json!({"refresh_token": forged})), None, 401, "invalid_refresh_token"),
        ("GET", "/v1/admin/stats", None, Some(wrong_key), 401, "unauthorized"),
        ("POST", "/otp", Some(json!({"action": "send_otp", "email": "rate@example.com"})), None, 200, ""),
        ("POST", "/otp", Some(json!({"action": "send_otp", "email": "rate@example.com"})), None, 429, ""),
    ];
    let mut refused = Vec::new();
    let mut told = None;
    for (method, uri, body, bearer, want, code) in cases {
        let (status, retry_after) = send(&app, method, uri, body, bearer).await;
        told = retry_after;
        assert_eq!(status, want, "{method} {uri}");
        let lines = captured.take();
        let ours: Vec<&Value> = lines.iter().filter(|l| l["message"] == "request refused").collect();
        if want < 400 {
            assert!(ours.is_empty(), "a {want} left a refusal line: {lines:?}");
            continue;
        }
        assert_eq!(ours.len(), 1, "{method} {uri}: {lines:?}");
        let line = ours[0];
        assert_eq!(
            (line["method"].as_str(), line["route"].as_str(), line["status"].as_u64(), line["ip"].as_str()),
            (Some(method), Some(uri), Some(u64::from(want)), Some("203.0.113.9")),
            "{line}"
        );
        if !code.is_empty() {
            assert_eq!(line["error"], code, "{line}");
        }
        assert!(line["request_id"].as_str().is_some_and(|id| id.len() >= 16), "{line}");
        refused.push(lines);
    }
    let limited = refused.last().expect("the 429");
    let line = limited.iter().find(|l| l["message"] == "request refused").expect("its line");
    // What the client was told (60 s, or 59 when a second passed between
    // the two sends).
    let told = told.expect("the 429 has a Retry-After");
    assert!(told.parse::<u64>().is_ok_and(|s| (59..=60).contains(&s)), "{told}");
    assert_eq!(line["retry_after"], told.as_str(), "{line}");

    // A path with a link's token in its query: the route, never the query.
    assert_eq!(send(&app, "GET", &format!("/no-such-page?token={link_token}"), None, None).await.0, 404);
    let lines = captured.take();
    assert!(lines.iter().any(|l| l["message"] == "request refused" && l["route"] == "(no route)"), "{lines:?}");
    refused.push(lines);

    let all = serde_json::to_string(&refused).expect("json");
    for secret in [secret_password, "nobody-at-all", forged.as_str(), wrong_key, admin_key, link_token] {
        assert!(!all.contains(secret), "the log holds {secret:?}: {all}");
    }
    assert_eq!(send(&app, "GET", "/healthz", None, None).await.0, 200);
    assert!(captured.take().iter().all(|l| l["message"] != "request refused"));

    // Served directly, a request addressed to another host name (DNS
    // rebinding) is refused and logged like the rest.
    let direct = latchkey_api::app(built.state.clone().serving_directly(&cfg.public_base_url));
    let mut req = Request::builder().uri("/v1/me").header("host", "attacker.example:3000").body(Body::empty()).unwrap();
    req.extensions_mut().insert(ConnectInfo(SocketAddr::from((CLIENT, 40_000))));
    assert_eq!(direct.oneshot(req).await.expect("answer").status(), 421);
    let lines = captured.take();
    let ours: Vec<&Value> = lines.iter().filter(|l| l["message"] == "request refused").collect();
    assert_eq!(ours.len(), 1, "{lines:?}");
    assert_eq!(
        (ours[0]["route"].as_str(), ours[0]["status"].as_u64(), ours[0]["error"].as_str(), ours[0]["ip"].as_str()),
        (Some("/v1/me"), Some(421), Some("misdirected_request"), Some("203.0.113.9")),
        "{lines:?}"
    );
    built.abort();
}
