//! The OpenAPI document of the JSON API (`api/openapi.json`, served at
//! `GET /openapi.json`) against the Router it describes, on the embedded
//! backend:
//!
//! - the document's operations and the Router's JSON routes are one set (the
//!   route list is read from `api/src/lib.rs`; routes whose handlers live in
//!   `pages::` are the browser pages, which the document leaves out),
//! - every documented operation is routed: it never gets the Router's own
//!   404 (told apart from a handler's 404 by its body) or 405,
//! - the served document is the file, byte for byte,
//! - real responses of a whole journey, errors included, have a documented
//!   status, the documented content type and required headers, and a body
//!   that validates against the documented schema.
//!
//! The schemas are checked by a small validator of the JSON Schema subset
//! the document uses; it panics on any keyword it does not know, so it
//! cannot pass by ignoring one. schemathesis (`scripts/schemathesis`) fuzzes
//! the same document against the running binary.

use latchkey_core::audit::AuditEventType;
use latchkey_tests::scenarios::{PASSWORD, token_from_link, unique};
use latchkey_tests::system::TestSystem;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use std::collections::BTreeSet;

const DOC: &str = include_str!("../../api/openapi.json");
const ROUTER_SOURCE: &str = include_str!("../../api/src/lib.rs");

const ADMIN_KEY: &str = "openapi-test-admin-key-5f0c2a";
/// `printf '%s' "$ADMIN_KEY" | sha256sum`, as an operator would configure it.
const ADMIN_KEY_SHA256: &str = "57af2bb96acdd09f27b5ea14428ee3fca6d2f3a6f3b0188b15f28bb84b40f859";

/// What the Router itself answers for a path it does not know.
fn router_not_found() -> Value {
    json!({"error": "not_found", "message": "no such resource"})
}

fn doc() -> Value {
    serde_json::from_str(DOC).expect("api/openapi.json is JSON")
}

// ------------------------------------------------------------ the route list

/// One `.route(path, method(handler).method(handler)...)` of the Router.
#[derive(Debug)]
struct Route {
    path: String,
    /// (upper-case method, handler path as written)
    methods: Vec<(String, String)>,
}

/// The `.route(...)` calls of `app()` in `api/src/lib.rs`, read from its
/// source text.
fn router_routes() -> Vec<Route> {
    let mut routes = Vec::new();
    let mut rest = ROUTER_SOURCE;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("balanced .route( call");
        let args = &rest[..end];
        let (path, handlers) = args.split_once(',').expect(".route(path, handlers)");
        let path = path.trim();
        assert!(path.starts_with('"') && path.ends_with('"'), "route path is a string literal: {path}");
        // `get(a)`, `get(a).post(b)`, `post(b)` ...
        let methods = handlers
            .split(')')
            .filter_map(|call| {
                let (method, handler) = call.trim().trim_start_matches('.').split_once('(')?;
                Some((method.trim().to_ascii_uppercase(), handler.trim().to_string()))
            })
            .collect::<Vec<_>>();
        assert!(!methods.is_empty(), "no methods parsed in .route({args})");
        routes.push(Route { path: path.trim_matches('"').to_string(), methods });
        rest = &rest[end..];
    }
    routes
}

/// Whether a handler serves the JSON API (`routes::*`) or a browser page
/// (`pages::*`). Any other module has to be classified here first.
fn is_json_api(handler: &str) -> bool {
    match handler.split("::").next().unwrap_or_default() {
        "system" | "auth" | "activity" | "admin" | "otp" => true,
        "pages" => false,
        other => panic!("handler {handler}: module {other} is neither the JSON API nor a page; classify it"),
    }
}

fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            assert!(
                ["get", "post", "put", "patch", "delete"].contains(&method.as_str()),
                "{path}: unexpected key {method} in a path item"
            );
            ops.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    ops
}

#[test]
fn documented_operations_are_the_routers_json_routes() {
    let doc = doc();
    let mut api = BTreeSet::new();
    let mut pages = BTreeSet::new();
    for route in router_routes() {
        for (method, handler) in &route.methods {
            let op = (method.clone(), route.path.clone());
            if is_json_api(handler) {
                api.insert(op)
            } else {
                pages.insert(op)
            };
        }
    }
    // The parser found both kinds, so the comparison below means something.
    assert!(api.contains(&("GET".to_string(), "/healthz".to_string())), "{api:?}");
    assert!(pages.contains(&("POST".to_string(), "/login".to_string())), "{pages:?}");

    let documented = documented_operations(&doc);
    let undocumented: Vec<_> = api.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&api).collect();
    assert!(undocumented.is_empty(), "JSON routes missing from api/openapi.json: {undocumented:?}");
    assert!(unrouted.is_empty(), "documented operations the Router has no JSON route for: {unrouted:?}");
    let documented_paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for (_, page) in &pages {
        assert!(!documented_paths.contains(page), "browser page {page} is out of the document's scope");
    }
}

#[test]
fn the_document_is_openapi_3_0_of_this_version() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.0.3");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"), "bump info.version with the workspace");
}

#[test]
fn audit_event_names_match_the_core_enum() {
    let doc = doc();
    let documented: BTreeSet<&str> = doc["components"]["schemas"]["AuditEvent"]["properties"]["event"]["enum"]
        .as_array()
        .expect("event enum")
        .iter()
        .map(|v| v.as_str().expect("string"))
        .collect();
    let core: BTreeSet<&str> = AuditEventType::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(documented, core);
}

// ----------------------------------------------------------- the validator

/// The JSON Schema subset of OpenAPI 3.0 that `api/openapi.json` uses.
struct Schemas<'a> {
    doc: &'a Value,
}

impl<'a> Schemas<'a> {
    /// Follows `$ref`s (local ones only) to the object they name.
    fn resolve(&self, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            assert_eq!(v.as_object().map(|o| o.len()), Some(1), "a $ref has no siblings in OpenAPI 3.0: {v}");
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("only local $refs: {r}"));
            v = self.doc.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {r}"));
        }
        v
    }

    fn errors(&self, schema: &Value, v: &Value, at: &str) -> Vec<String> {
        let mut errs = Vec::new();
        self.check(schema, v, at, &mut errs);
        errs
    }

    fn check(&self, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
        let schema = self.resolve(schema);
        let s = schema.as_object().unwrap_or_else(|| panic!("schema at {at} is not an object: {schema}"));
        if v.is_null() && s.get("nullable") == Some(&Value::Bool(true)) {
            return;
        }
        for (key, want) in s {
            match key.as_str() {
                "description" | "title" | "nullable" => {}
                "type" => {
                    let ok = match want.as_str().expect("type is a string in 3.0") {
                        "object" => v.is_object(),
                        "array" => v.is_array(),
                        "string" => v.is_string(),
                        "boolean" => v.is_boolean(),
                        "integer" => v.is_i64() || v.is_u64(),
                        "number" => v.is_number(),
                        other => panic!("unknown type {other}"),
                    };
                    if !ok {
                        errs.push(format!("{at}: {v} is not of type {want}"));
                    }
                }
                "enum" => {
                    if !want.as_array().expect("enum array").contains(v) {
                        errs.push(format!("{at}: {v} is not one of {want}"));
                    }
                }
                "required" => {
                    if let Some(o) = v.as_object() {
                        for name in want.as_array().expect("required array") {
                            let name = name.as_str().expect("required names");
                            if !o.contains_key(name) {
                                errs.push(format!("{at}: required member {name} is missing"));
                            }
                        }
                    }
                }
                "properties" => {
                    if let Some(o) = v.as_object() {
                        for (name, sub) in want.as_object().expect("properties object") {
                            if let Some(member) = o.get(name) {
                                self.check(sub, member, &format!("{at}.{name}"), errs);
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    if let Some(o) = v.as_object() {
                        let declared = s.get("properties").and_then(Value::as_object);
                        for (name, member) in o {
                            if declared.is_some_and(|d| d.contains_key(name)) {
                                continue;
                            }
                            match want {
                                Value::Bool(true) => {}
                                Value::Bool(false) => errs.push(format!("{at}: undocumented member {name}")),
                                sub => self.check(sub, member, &format!("{at}.{name}"), errs),
                            }
                        }
                    }
                }
                "items" => {
                    if let Some(a) = v.as_array() {
                        for (i, item) in a.iter().enumerate() {
                            self.check(want, item, &format!("{at}[{i}]"), errs);
                        }
                    }
                }
                "minItems" | "maxItems" => {
                    if let (Some(a), Some(bound)) = (v.as_array(), want.as_u64()) {
                        let n = a.len() as u64;
                        if (key == "minItems" && n < bound) || (key == "maxItems" && n > bound) {
                            errs.push(format!("{at}: {n} items, outside {key} {bound}"));
                        }
                    }
                }
                "minimum" | "maximum" => {
                    if let (Some(n), Some(bound)) = (v.as_f64(), want.as_f64()) {
                        let ok = if key == "minimum" { n >= bound } else { n <= bound };
                        if !ok {
                            errs.push(format!("{at}: {n} is outside {key} {bound}"));
                        }
                    }
                }
                "minLength" | "maxLength" => {
                    if let (Some(text), Some(bound)) = (v.as_str(), want.as_u64()) {
                        let n = text.chars().count() as u64;
                        if (key == "minLength" && n < bound) || (key == "maxLength" && n > bound) {
                            errs.push(format!("{at}: length {n} is outside {key} {bound}"));
                        }
                    }
                }
                "format" => {
                    if let Some(text) = v.as_str() {
                        let ok = match want.as_str().expect("format") {
                            "uuid" => text.len() == 36 && uuid::Uuid::parse_str(text).is_ok(),
                            "date" => is_date(text),
                            "date-time" => is_date_time(text),
                            other => panic!("unknown format {other}"),
                        };
                        if !ok {
                            errs.push(format!("{at}: {text:?} is not a {want}"));
                        }
                    }
                }
                "allOf" => {
                    for (i, sub) in want.as_array().expect("allOf").iter().enumerate() {
                        self.check(sub, v, &format!("{at}<allOf {i}>"), errs);
                    }
                }
                "oneOf" | "anyOf" => {
                    let branches = want.as_array().expect("oneOf/anyOf");
                    let passing = branches.iter().filter(|b| self.errors(b, v, at).is_empty()).count();
                    let ok = if key == "oneOf" { passing == 1 } else { passing >= 1 };
                    if !ok {
                        errs.push(format!("{at}: {passing} of the {key} branches match {v}"));
                    }
                }
                other => panic!("the validator does not know the keyword {other} (at {at}); teach it"),
            }
        }
    }
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// RFC 3339 full-date.
fn is_date(s: &str) -> bool {
    let p: Vec<&str> = s.split('-').collect();
    p.len() == 3 && p[0].len() == 4 && p[1].len() == 2 && p[2].len() == 2 && p.iter().all(|x| digits(x))
}

/// RFC 3339 date-time.
fn is_date_time(s: &str) -> bool {
    let Some((date, time)) = s.split_once('T') else { return false };
    let (clock, zone_ok) = if let Some(c) = time.strip_suffix('Z') {
        (c, true)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let z = &time[i + 1..];
        (&time[..i], z.len() == 5 && digits(&z[..2]) && &z[2..3] == ":" && digits(&z[3..]))
    } else {
        return false;
    };
    let clock = clock.split_once('.').map_or(clock, |(c, frac)| if digits(frac) { c } else { "" });
    let c: Vec<&str> = clock.split(':').collect();
    is_date(date) && zone_ok && c.len() == 3 && c.iter().all(|x| x.len() == 2 && digits(x))
}

// ------------------------------------------------------- checked requests

enum Body {
    Empty,
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

/// Sends requests and checks each response against the document.
struct Checked<'a> {
    sys: &'a TestSystem,
    doc: &'a Value,
}

impl Checked<'_> {
    /// `template` is the documented path, `path` the one requested (with
    /// parameters filled in and a query string).
    async fn call(
        &self,
        method: &str,
        template: &str,
        path: &str,
        body: Body,
        bearer: Option<&str>,
    ) -> (u16, Value, HeaderMap) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.sys.http.request(m, self.sys.url(path));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        req = match body {
            Body::Empty => req,
            Body::Json(v) => req.json(&v),
            Body::Raw(ct, bytes) => req.header("content-type", ct).body(bytes),
        };
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        let body = self.check_response(method, template, status, &headers, &text);
        (status, body, headers)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value, HeaderMap) {
        self.call("POST", path, path, Body::Json(body), None).await
    }

    async fn get(&self, template: &str, path: &str, bearer: Option<&str>) -> (u16, Value, HeaderMap) {
        self.call("GET", template, path, Body::Empty, bearer).await
    }

    /// Panics unless the response is one the document describes; returns
    /// the parsed body (Null when empty).
    fn check_response(&self, method: &str, template: &str, status: u16, headers: &HeaderMap, text: &str) -> Value {
        let what = format!("{method} {template} -> {status}");
        let schemas = Schemas { doc: self.doc };
        let op = self.doc["paths"][template]
            .get(method.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("{what}: operation not documented"));
        let responses = &op["responses"];
        let documented = responses
            .get(status.to_string())
            .or_else(|| responses.get(format!("{}XX", status / 100)))
            .or_else(|| responses.get("default"))
            .unwrap_or_else(|| panic!("{what}: status not documented; body {text}"));
        let documented = schemas.resolve(documented);
        for (name, header) in documented.get("headers").and_then(Value::as_object).into_iter().flatten() {
            let header = schemas.resolve(header);
            let value = headers.get(name.as_str()).and_then(|v| v.to_str().ok());
            let Some(value) = value else {
                assert_ne!(header.get("required"), Some(&Value::Bool(true)), "{what}: no {name} header");
                continue;
            };
            let as_json = match header["schema"]["type"].as_str() {
                Some("integer") => value.parse::<i64>().map(Value::from).unwrap_or(Value::String(value.into())),
                _ => Value::String(value.into()),
            };
            let errs = schemas.errors(&header["schema"], &as_json, &format!("{what} header {name}"));
            assert!(errs.is_empty(), "{errs:#?}");
        }
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        match documented.get("content").and_then(Value::as_object) {
            None => {
                assert!(text.is_empty(), "{what}: undocumented body {text}");
                Value::Null
            }
            Some(content) => {
                let (media, spec) = content.iter().next().expect("one media type");
                assert_eq!(content.len(), 1, "{what}: one media type per response");
                assert!(
                    content_type.split(';').next().is_some_and(|c| c.trim().eq_ignore_ascii_case(media)),
                    "{what}: content type {content_type:?}, documented {media}; body {text}"
                );
                let body: Value =
                    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {text}"));
                let errs = schemas.errors(&spec["schema"], &body, &what);
                assert!(errs.is_empty(), "{what}: body {body} does not match the document: {errs:#?}");
                body
            }
        }
    }
}

/// Relaxed limits, the admin API, and a refresh retry grace (off by
/// default), so the retry's answer is held to the document too.
async fn system() -> TestSystem {
    TestSystem::embedded_with(&[
        ("LATCHKEY_RATE_LIMITS", "relaxed"),
        ("LATCHKEY_ADMIN_KEY_HASH", ADMIN_KEY_SHA256),
        ("LATCHKEY_REFRESH_RETRY_GRACE_SECS", "30"),
    ])
    .await
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn the_served_document_is_the_file() {
    let sys = system().await;
    let r = sys.http.get(sys.url("/openapi.json")).send().await.expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json; charset=utf-8");
    assert_eq!(r.text().await.expect("body"), DOC);
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let sys = system().await;
    let doc = doc();
    let c = Checked { sys: &sys, doc: &doc };

    // The two Router answers this test looks for, so its check can fail.
    let r = sys.http.get(sys.url("/v1/no-such-route")).send().await.expect("request");
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.expect("json"), router_not_found());
    let r = sys.http.delete(sys.url("/healthz")).send().await.expect("request");
    assert_eq!(r.status(), 405);

    let ops = documented_operations(&doc);
    assert!(ops.len() >= 16, "{ops:?}");
    for (method, template) in ops {
        let path = template.replace("{id}", &uuid::Uuid::new_v4().to_string());
        let body = if method == "POST" { Body::Json(json!({})) } else { Body::Empty };
        // Checked: the status is documented for this operation and the body
        // matches, so a Router 404/405 (documented nowhere) fails here too.
        let (status, body, _) = c.call(&method, &template, &path, body, None).await;
        assert!(
            status != 405 && !(status == 404 && body == router_not_found()),
            "{method} {path}: not routed ({status} {body})"
        );
    }
}

/// A whole journey through every operation, with the errors a client meets
/// on the way; every response is checked against the document.
#[tokio::test]
async fn real_responses_match_the_document() {
    let sys = system().await;
    let doc = doc();
    let c = Checked { sys: &sys, doc: &doc };
    let st = |r: &(u16, Value, HeaderMap)| (r.0, r.1["error"].as_str().map(str::to_owned));
    let code = |s: &str| Some(s.to_string());

    assert_eq!(c.get("/healthz", "/healthz", None).await.0, 200);
    assert_eq!(c.get("/.well-known/jwks.json", "/.well-known/jwks.json", None).await.0, 200);
    assert_eq!(c.get("/openapi.json", "/openapi.json", None).await.0, 200);

    // Registration and its refusals.
    let (username, email) = unique();
    let register = json!({"username": username, "email": email, "password": PASSWORD});
    assert_eq!(c.post("/v1/register", register).await.0, 202);
    let taken = json!({"username": username, "email": unique().1, "password": PASSWORD});
    assert_eq!(st(&c.post("/v1/register", taken).await), (409, code("username_taken")));
    let r = c.post("/v1/register", json!({"username": username})).await;
    assert_eq!((st(&r), r.1["field"].as_str()), ((400, code("invalid_request")), Some("email")));
    let r = c.call("POST", "/v1/register", "/v1/register", Body::Raw("application/json", b"{".to_vec()), None).await;
    assert_eq!(st(&r), (400, code("malformed_json")));
    let form = Body::Raw("application/x-www-form-urlencoded", b"username=a".to_vec());
    assert_eq!(
        st(&c.call("POST", "/v1/register", "/v1/register", form, None).await),
        (415, code("unsupported_media_type"))
    );
    let big = json!({"username": username, "email": email, "password": "x".repeat(20 * 1024)});
    assert_eq!(st(&c.post("/v1/register", big).await), (413, code("payload_too_large")));

    // Verification.
    let login = json!({"identifier": username, "password": PASSWORD});
    // Not verified yet: answered as a wrong password (no enumeration).
    assert_eq!(st(&c.post("/v1/login", login.clone()).await), (401, code("invalid_credentials")));
    assert_eq!(c.post("/v1/verify-email/resend", json!({"email": email})).await.0, 202);
    let forged = json!({"token": "A".repeat(43)});
    assert_eq!(st(&c.post("/v1/verify-email", forged).await), (400, code("verification_token_invalid")));
    let token = token_from_link(&sys.wait_mail(&email, 1).await.link().expect("link"));
    assert_eq!(c.post("/v1/verify-email", json!({"token": token})).await.0, 200);
    assert_eq!(st(&c.post("/v1/verify-email", json!({"token": token})).await), (400, code("verification_token_used")));

    // The password step, the code step.
    let wrong = json!({"identifier": username, "password": "not the password at all"});
    assert_eq!(st(&c.post("/v1/login", wrong).await), (401, code("invalid_credentials")));
    let mails = sys.mails_to(&email).await.len();
    let (status, challenge, _) = c.post("/v1/login", login).await;
    assert_eq!(status, 202);
    let challenge_id = challenge["challenge_id"].as_str().expect("challenge_id").to_string();
    let otp = sys.wait_mail(&email, mails + 1).await.code().expect("code");
    let r = c.post("/v1/login/otp/resend", json!({"challenge_id": challenge_id})).await;
    assert_eq!(st(&r), (429, code("rate_limited")), "within the resend cooldown");
    let unknown = json!({"challenge_id": uuid::Uuid::new_v4().to_string()});
    assert_eq!(st(&c.post("/v1/login/otp/resend", unknown).await), (401, code("challenge_invalid")));
    let bad = if otp == "000000" { "111111" } else { "000000" };
    let r = c.post("/v1/login/otp", json!({"challenge_id": challenge_id, "code": bad})).await;
    assert_eq!((st(&r), r.1["attempts_left"].as_u64()), ((401, code("otp_invalid")), Some(5)));
    let (status, tokens, _) = c.post("/v1/login/otp", json!({"challenge_id": challenge_id, "code": otp})).await;
    assert_eq!(status, 200);
    let r = c.post("/v1/login/otp", json!({"challenge_id": challenge_id, "code": otp})).await;
    assert_eq!(st(&r), (401, code("otp_used")));

    // The access token.
    let access = tokens["access_token"].as_str().expect("access").to_string();
    let (status, profile, _) = c.get("/v1/me", "/v1/me", Some(&access)).await;
    assert_eq!(status, 200);
    assert_eq!(st(&c.get("/v1/me", "/v1/me", None).await), (401, code("unauthorized")));
    assert_eq!(st(&c.get("/v1/me", "/v1/me", Some("not.a.jwt")).await), (401, code("unauthorized")));
    // The audit trail is written from the store's change feed: wait for it.
    let mut events = Value::Null;
    for _ in 0..400 {
        let (status, page, _) = c.get("/v1/me/activity", "/v1/me/activity", Some(&access)).await;
        assert_eq!(status, 200);
        if page["events"].as_array().is_some_and(|e| !e.is_empty()) {
            events = page["events"].clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(events.is_array(), "no audit events within 20 s");
    let r = c.get("/v1/me/activity", "/v1/me/activity?limit=1", Some(&access)).await;
    assert_eq!(r.1["events"].as_array().map(Vec::len), Some(1), "{}", r.1);
    let r = c.get("/v1/me/activity", "/v1/me/activity?limit=0", Some(&access)).await;
    assert_eq!((st(&r), r.1["field"].as_str()), ((400, code("invalid_request")), Some("limit")));
    assert_eq!(st(&c.get("/v1/me/activity", "/v1/me/activity", None).await), (401, code("unauthorized")));
    // A repeated parameter is the API's JSON 400, after the credential check.
    let r = c.get("/v1/me/activity", "/v1/me/activity?limit=1&limit=2", Some(&access)).await;
    assert_eq!(st(&r), (400, code("invalid_request")));
    let r = c.get("/v1/me/activity", "/v1/me/activity?limit=1&limit=2", None).await;
    assert_eq!(st(&r), (401, code("unauthorized")));

    // The admin API.
    let admin = "/v1/admin/users/{id}/audit";
    let user_id = profile["id"].as_str().expect("id");
    let (status, page, _) = c.get(admin, &format!("/v1/admin/users/{user_id}/audit"), Some(ADMIN_KEY)).await;
    assert_eq!((status, page["events"].as_array().is_some_and(|e| !e.is_empty())), (200, true), "{page}");
    let r = c.get(admin, &format!("/v1/admin/users/{user_id}/audit"), Some(&access)).await;
    assert_eq!(st(&r), (401, code("unauthorized")));
    for bad_id in ["not-an-id", "%FF"] {
        let r = c.get(admin, &format!("/v1/admin/users/{bad_id}/audit"), Some(ADMIN_KEY)).await;
        assert_eq!((st(&r), r.1["field"].as_str()), ((400, code("invalid_request")), Some("id")), "{bad_id}");
        let r = c.get(admin, &format!("/v1/admin/users/{bad_id}/audit"), None).await;
        assert_eq!(st(&r), (401, code("unauthorized")), "{bad_id}: the key is checked first");
    }
    // A trail by name: an account's by its username, the standalone
    // codes' by an address; a name without an account; both names.
    let named = "/v1/admin/audit";
    let (status, page, _) = c.get(named, &format!("{named}?user={username}"), Some(ADMIN_KEY)).await;
    assert_eq!((status, page["user_id"].as_str()), (200, Some(user_id)), "{page}");
    let (status, page, _) = c.get(named, &format!("{named}?otp_email={}", unique().1), Some(ADMIN_KEY)).await;
    assert_eq!((status, page["events"].as_array().map(Vec::len)), (200, Some(0)), "{page}");
    let r = c.get(named, &format!("{named}?user=nobody-by-this-name"), Some(ADMIN_KEY)).await;
    assert_eq!(st(&r), (404, code("user_not_found")));
    let r = c.get(named, &format!("{named}?user={username}&otp_email={email}"), Some(ADMIN_KEY)).await;
    assert_eq!((st(&r), r.1["field"].as_str()), ((400, code("invalid_request")), Some("user")));
    assert_eq!(st(&c.get(named, &format!("{named}?user={username}"), None).await), (401, code("unauthorized")));

    // The day of the newest event has at least one count.
    let today = &events[0]["at"].as_str().expect("at")[..10];
    let stats = "/v1/admin/stats";
    let (status, counts, _) = c.get(stats, &format!("{stats}?from={today}&to={today}"), Some(ADMIN_KEY)).await;
    assert_eq!((status, counts["days"].as_array().map(Vec::len)), (200, Some(1)), "{counts}");
    let r = c.get(stats, &format!("{stats}?from={today}&to=2000-01-01"), Some(ADMIN_KEY)).await;
    assert_eq!(st(&r), (400, code("invalid_request")));
    let r = c.get(stats, &format!("{stats}?from={today}"), Some(ADMIN_KEY)).await;
    assert_eq!((st(&r), r.1["field"].as_str()), ((400, code("invalid_request")), Some("to")));
    assert_eq!(st(&c.get(stats, stats, None).await), (401, code("unauthorized")));
    let r = c.get(stats, &format!("{stats}?from={today}&to={today}&to={today}"), Some(ADMIN_KEY)).await;
    assert_eq!(st(&r), (400, code("invalid_request")));

    // The session list; ending a session that is none of the account's.
    let (status, list, _) = c.get("/v1/sessions", "/v1/sessions", Some(&access)).await;
    assert_eq!((status, list["sessions"][0]["current"].as_bool()), (200, Some(true)), "{list}");
    assert_eq!(st(&c.get("/v1/sessions", "/v1/sessions", None).await), (401, code("unauthorized")));
    let revoke = "/v1/sessions/{id}/revoke";
    let stranger = format!("/v1/sessions/{}/revoke", uuid::Uuid::new_v4());
    let r = c.call("POST", revoke, &stranger, Body::Json(json!({"current_password": PASSWORD})), Some(&access)).await;
    assert_eq!(st(&r), (404, code("session_not_found")));
    let r = c.call("POST", revoke, &stranger, Body::Json(json!({"current_password": "not it"})), Some(&access)).await;
    assert_eq!((st(&r), r.1["field"].as_str()), ((400, code("invalid_request")), Some("current_password")));

    // Refresh and logout.
    let refresh = tokens["refresh_token"].as_str().expect("refresh").to_string();
    let (status, rotated, _) = c.post("/v1/token/refresh", json!({"refresh_token": refresh})).await;
    assert_eq!(status, 200);
    // Sent again at once (a retry): the same refresh token.
    let (status, again, _) = c.post("/v1/token/refresh", json!({"refresh_token": refresh})).await;
    assert_eq!((status, &again["refresh_token"]), (200, &rotated["refresh_token"]));
    let (status, newest, _) = c.post("/v1/token/refresh", json!({"refresh_token": rotated["refresh_token"]})).await;
    assert_eq!(status, 200);
    let r = c.post("/v1/token/refresh", json!({"refresh_token": refresh})).await;
    assert_eq!(st(&r), (401, code("invalid_refresh_token")));
    let r = c.post("/v1/logout", json!({"refresh_token": newest["refresh_token"]})).await;
    assert_eq!((r.0, &r.1), (204, &Value::Null));
    assert_eq!(st(&c.post("/v1/logout", json!({"refresh_token": "x"})).await), (401, code("invalid_refresh_token")));

    // The standalone OTP API.
    let (_, address) = unique();
    let send = json!({"action": "send_otp", "email": address});
    assert_eq!(c.post("/otp", send.clone()).await.0, 200);
    let r = c.post("/otp", send).await;
    assert_eq!((r.0, r.2.contains_key("retry-after")), (429, true), "within the send cooldown");
    let bad = json!({"action": "verify_otp", "email": address, "otp": "12345x"});
    assert_eq!(c.post("/otp", bad).await.1["message"], "OTP must be 6 digits");
    let code_sent = sys.wait_mail(&address, 1).await.code().expect("code");
    let wrong_otp = if code_sent == "000000" { "111111" } else { "000000" };
    let wrong = json!({"action": "verify_otp", "email": address, "otp": wrong_otp});
    let mut answers = Vec::new();
    for _ in 0..7 {
        answers.push(c.post("/otp", wrong.clone()).await.0);
    }
    assert_eq!(answers, [401, 401, 401, 401, 401, 401, 403]);
    let nobody = json!({"action": "verify_otp", "email": unique().1, "otp": "123456"});
    assert_eq!(c.post("/otp", nobody).await.0, 404);
    assert_eq!(c.post("/otp", json!({"action": "dance"})).await.0, 400);
    let big = json!({"action": "send_otp", "email": "x".repeat(20 * 1024)});
    assert_eq!(c.post("/otp", big).await.0, 413);

    // Moving an account to another address, and a move refused because the
    // address got an account after its link was mailed (another user).
    let (mover, mover_email) = latchkey_tests::scenarios::verified_user(&sys).await;
    let moving = latchkey_tests::scenarios::sign_in(&sys, &mover, &mover_email).await;
    let moving = moving["access_token"].as_str().expect("access").to_string();
    let ask = |to: String, bearer: Option<String>| {
        let body = Body::Json(json!({ "current_password": PASSWORD, "new_email": to }));
        let c = &c;
        async move { c.call("POST", "/v1/me/email", "/v1/me/email", body, bearer.as_deref()).await }
    };
    let confirm = |token: String| {
        let c = &c;
        async move { c.post("/v1/email/confirm", json!({ "token": token })).await }
    };
    let r = ask("not an address".into(), Some(moving.clone())).await;
    assert_eq!((st(&r), r.1["field"].as_str()), ((400, code("invalid_request")), Some("new_email")));
    assert_eq!(st(&ask(unique().1, None).await), (401, code("unauthorized")));
    let (taken_later, free) = (unique().1, unique().1);
    for to in [&taken_later, &free] {
        assert_eq!(ask(to.clone(), Some(moving.clone())).await.0, 202);
    }
    let token_of =
        |mail: latchkey_tests::system::Mail| latchkey_tests::scenarios::token_from_link(&mail.link().expect("link"));
    let (late, token) = (token_of(sys.wait_mail(&taken_later, 1).await), token_of(sys.wait_mail(&free, 1).await));
    assert_eq!(st(&confirm(format!("x{token}")).await), (400, code("email_change_link_invalid")));
    let register = json!({"username": unique().0, "email": taken_later, "password": PASSWORD});
    assert_eq!(c.post("/v1/register", register).await.0, 202);
    assert_eq!(st(&confirm(late).await), (409, code("email_taken")));
    let (status, moved, _) = confirm(token.clone()).await;
    assert_eq!((status, moved["email"].as_str()), (200, Some(free.as_str())), "{moved}");
    assert_eq!(st(&confirm(token).await), (400, code("email_change_link_invalid")));

    // Deleting the account, from a new session (the one above signed out).
    let tokens = latchkey_tests::scenarios::sign_in(&sys, &username, &email).await;
    let access = tokens["access_token"].as_str().expect("access").to_string();
    let checked = &c;
    let delete = |password: &'static str, bearer: Option<String>| {
        let body = Body::Json(json!({ "current_password": password }));
        async move { checked.call("POST", "/v1/me/delete", "/v1/me/delete", body, bearer.as_deref()).await }
    };
    let r = delete("not it", Some(access.clone())).await;
    assert_eq!((st(&r), r.1["field"].as_str()), ((400, code("invalid_request")), Some("current_password")));
    assert_eq!(st(&delete(PASSWORD, None).await), (401, code("unauthorized")));
    let r = delete(PASSWORD, Some(access.clone())).await;
    assert_eq!((r.0, &r.1), (204, &Value::Null));
    assert_eq!(st(&delete(PASSWORD, Some(access.clone())).await), (401, code("unauthorized")));
}
