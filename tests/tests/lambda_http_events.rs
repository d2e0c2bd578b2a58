//! API Gateway HTTP API (v2) events, as Lambda delivers them, go through
//! lambda_http into the real Router: the same path a request takes on AWS.

use http_body_util::BodyExt;
use lambda_http::request::LambdaRequest;
use latchkey_core::ports::UserStore;
use latchkey_tests::system::TempDir;
use std::collections::HashMap;
use tower::ServiceExt;

async fn system() -> (axum::Router, latchkey_api::wiring::Built, TempDir) {
    let dir = TempDir::new();
    let env: HashMap<&str, String> =
        [("LATCHKEY_DATA_DIR", dir.0.display().to_string()), ("LATCHKEY_RATE_LIMITS", "relaxed".into())].into();
    let cfg = latchkey_core::config::Config::from_lookup(|k| env.get(k).cloned()).expect("config");
    let built = latchkey_api::wiring::build(&cfg).await.expect("build");
    (latchkey_api::app(built.state.clone()), built, dir)
}

fn event(fixture: &str, body: Option<&str>) -> http::Request<lambda_http::Body> {
    let mut raw =
        std::fs::read_to_string(format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"))).expect("fixture");
    if let Some(b) = body {
        raw = raw.replace("\"__BODY__\"", &serde_json::to_string(b).expect("json string"));
    }
    let req: LambdaRequest = serde_json::from_str(&raw).expect("a valid API Gateway v2 event");
    req.into()
}

#[tokio::test]
async fn healthz_through_lambda_http() {
    let (app, _built, _dir) = system().await;
    let resp = app.oneshot(event("apigw_v2_healthz.json", None)).await.expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).expect("json")["status"], "ok");
}

#[tokio::test]
async fn register_through_lambda_http_records_the_source_ip() {
    let (app, built, _dir) = system().await;
    let name = format!("lambda{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let body = serde_json::json!({"username": name, "email": format!("{name}@example.com"), "password": "correct horse battery staple"}).to_string();
    let resp = app.oneshot(event("apigw_v2_register.json", Some(&body))).await.expect("response");
    assert_eq!(resp.status(), 202);
    let store = built.embedded.as_ref().expect("embedded store");
    let user = store
        .user_by_username(&latchkey_core::domain::Username::parse(&name).expect("name"))
        .await
        .expect("read")
        .expect("user stored");
    assert_eq!(user.meta.ip.as_deref(), Some("198.51.100.23"), "client IP from the request context");
    assert_eq!(user.meta.request_id.as_deref(), Some("NWkN2jB7DoEEJxw="));
    assert_eq!(user.meta.user_agent.as_deref(), Some("curl/8.5.0"));
}
