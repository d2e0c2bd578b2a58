//! Request extractors: a JSON body that is size-limited and names the field
//! on every error, and the request's metadata (client IP, user agent,
//! request id) for rate limits and the audit trail.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header, request::Parts};
use latchkey_core::domain::RequestMeta;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// A JSON body of at most 16 KiB. Errors: 413 when larger, 415 without a
/// JSON content type, 400 naming the field for wrong types and bad syntax.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let too_large =
            || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is larger than 16 KiB");
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await.map_err(|e| {
            if timed_out(&e) {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request body was not sent in time")
            } else {
                too_large()
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// How long a request's body may take to arrive whole, once its head has.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Gives every request body a deadline: `BODY_READ_TIMEOUT` after the
/// request reached the Router, reading it fails (a total deadline, where
/// tower-http's body timeout restarts with each chunk, so a byte every few
/// seconds kept a request open for hours). Under Lambda the body is
/// already whole and never waits.
pub async fn body_deadline(req: Request, next: axum::middleware::Next) -> axum::response::Response {
    let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    next.run(req.map(|body| {
        axum::body::Body::new(DeadlineBody { body, deadline: Box::pin(tokio::time::sleep_until(deadline)) })
    }))
    .await
}

/// A body whose frames must all arrive before `deadline`.
struct DeadlineBody {
    body: axum::body::Body,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// The error a body gives once its deadline has passed.
#[derive(Debug)]
struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimedOut {}

impl http_body::Body for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::future::Future as _;
        let this = self.get_mut();
        // What has arrived is read first; the deadline counts only a wait.
        match std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            std::task::Poll::Pending => match this.deadline.as_mut().poll(cx) {
                std::task::Poll::Ready(()) => std::task::Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut)))),
                std::task::Poll::Pending => std::task::Poll::Pending,
            },
            ready => ready,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Whether reading a body failed because its deadline passed.
pub(crate) fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<BodyTimedOut>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Parses JSON, naming the path of the first error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let malformed = |message: &str| {
        let mut err = ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", message);
        err.extra = Some(("field", serde_json::Value::String("body".into())));
        err
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // A path that names a member: not the object itself ("."), not a
        // key serde could not read ("?"), and plain (a key of any shape
        // in a member the DTO does not have is not echoed back).
        let member = path != "." && plain_name(&path);
        if inner.is_eof() {
            malformed("the body is not a valid JSON object of the expected shape")
        } else if inner.is_syntax() {
            // Inside one member's value (a bad escape such as a lone
            // surrogate `"\ud800"`, a stray character): that member.
            if member {
                ApiError::field(&path, "is not valid JSON (a bad escape or character in its value)")
            } else {
                malformed("the body is not a valid JSON object of the expected shape")
            }
        } else if !member {
            match duplicate_member(&inner) {
                Some(name) => ApiError::field(&name, "is given more than once"),
                None => malformed("the body is not a valid JSON object of the expected shape"),
            }
        } else {
            ApiError::field(&path, "has the wrong type")
        }
    })?;
    // Nothing but whitespace may follow the object: a body with more in it
    // is not the one this service read (a proxy or WAF could read it
    // differently).
    de.end().map_err(|_| malformed("the body has data after its JSON object"))?;
    Ok(value)
}

/// The member a `duplicate field` error names (serde's wording for an
/// object that gives one member twice), if it is a plain field name.
fn duplicate_member(e: &serde_json::Error) -> Option<String> {
    let text = e.to_string();
    let name = text.strip_prefix("duplicate field `")?.split_once('`')?.0;
    plain_name(name).then(|| name.to_string())
}

/// A member path fit to name in an answer: 1 to 64 ASCII letters, digits,
/// `_` or `.` (nested members).
fn plain_name(path: &str) -> bool {
    (1..=64).contains(&path.len()) && path.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// Fetches a required field of a request DTO, or a 400 naming it.
pub fn required<T>(v: Option<T>, field: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| ApiError::field(field, "is required"))
}

/// Who sent the request.
pub struct Meta(pub RequestMeta);

impl FromRequestParts<AppState> for Meta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(Meta(request_meta(parts, state.trust_forwarded_for)))
    }
}

pub fn request_meta(parts: &Parts, trust_forwarded_for: bool) -> RequestMeta {
    use lambda_http::request::RequestContext;
    let mut ip = None;
    let mut request_id = None;
    if let Some(ctx) = parts.extensions.get::<RequestContext>() {
        match ctx {
            RequestContext::ApiGatewayV2(c) => {
                ip = c.http.source_ip.clone();
                request_id = c.request_id.clone();
            }
            RequestContext::ApiGatewayV1(c) => {
                ip = c.identity.source_ip.clone();
                request_id = c.request_id.clone();
            }
            _ => {}
        }
    }
    if ip.is_none() && trust_forwarded_for {
        // The last entry is the one the trusted proxy appended (the address
        // that connected to it); anything before it is the client's to say,
        // and taking it would let a client pick its own rate-limit bucket.
        // Header lines repeat as one comma-joined list (RFC 9110 5.3), and a
        // proxy may add its own line rather than extend the client's, so the
        // last entry is the last of the last line. Split as bytes: a line
        // the proxy extended may hold the client's non-ASCII bytes before
        // the proxy's entry, and refusing the whole line for them would put
        // the client in the proxy's own bucket.
        ip = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
            .and_then(|last| std::str::from_utf8(last).ok())
            .and_then(|s| forwarded_ip(s.trim()));
    }
    if ip.is_none() {
        ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
    }
    let user_agent = parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(clean);
    let request_id = request_id.or_else(|| parts.extensions.get::<RequestId>().map(|r| r.0.clone()));
    RequestMeta { request_id, ip, user_agent }
}

/// A forwarded entry's address: a bare IP, or one with the port some
/// proxies append (`192.0.2.1:5678`, `[2001:db8::1]:443`). An entry read as
/// no address puts its client in the proxy's own bucket, with every other
/// client of that proxy.
fn forwarded_ip(entry: &str) -> Option<String> {
    let ip = entry.parse::<std::net::IpAddr>().or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip())).ok()?;
    Some(ip.to_string())
}

/// Printable ASCII only, at most 256 characters: user agents end up in logs
/// and the audit trail and must not forge lines there.
fn clean(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii() && !c.is_ascii_control()).take(256).collect()
}

/// The id this process gave the request (when the platform gave none).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Whether the request declares a JSON body (`application/json`, with any
/// parameters). Anything else is refused: a cross-site page can send a
/// form or text body without a CORS preflight, but not JSON.
pub fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
}

/// A request body that sends `first`, then `filler` every 2 s, 20 times:
/// each gap well within the body deadline, the whole body not (tests run
/// with paused time).
#[cfg(test)]
pub(crate) fn trickling_body(first: &'static [u8], filler: &'static [u8]) -> axum::body::Body {
    use futures::StreamExt as _;
    let trickle = futures::stream::unfold(0, move |i| async move {
        (i < 20).then_some(())?;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        Some((Ok::<_, std::io::Error>(axum::body::Bytes::from_static(filler)), i + 1))
    });
    let chunks = futures::stream::iter([Ok::<_, std::io::Error>(axum::body::Bytes::from_static(first))]).chain(trickle);
    axum::body::Body::from_stream(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `field` a 400 for `body` names, and its error code.
    fn refusal(body: &str) -> (String, String) {
        #[derive(serde::Deserialize, Debug)]
        struct Dto {
            #[allow(dead_code)]
            otp: Option<String>,
        }
        let e = parse_json::<Dto>(body.as_bytes()).expect_err(body);
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
        let field = match &e.extra {
            Some(("field", serde_json::Value::String(f))) => f.clone(),
            other => panic!("{body}: no field named: {other:?}"),
        };
        (field, e.code.to_string())
    }

    /// SECURITY.md: a 400 names the field. A bad escape inside a member's
    /// value and a member given twice name that member; what belongs to no
    /// one member (a cut-off body, a stray key, a bare value, an odd key)
    /// is the body.
    #[test]
    fn malformed_members_are_named() {
        for body in [r#"{"otp":"\ud800"}"#, r#"{"otp":"\q"}"#, r#"{"otp":12x}"#] {
            assert_eq!(refusal(body), ("otp".into(), "invalid_request".into()), "{body}");
        }
        assert_eq!(refusal(r#"{"otp":"1","otp":"2"}"#), ("otp".into(), "invalid_request".into()));
        assert_eq!(refusal(r#"{"otp":1}"#), ("otp".into(), "invalid_request".into()));
        let odd_key = r#"{"<b>\u00e9":"\q"}"#;
        for body in [r#"{"otp":"12"#, r#"{"otp":"1", x}"#, r#"{"otp":"1",}"#, "true", "", r#"{"otp":"1"} x"#, odd_key] {
            assert_eq!(refusal(body), ("body".into(), "malformed_json".into()), "{body}");
        }
    }

    fn parts(forwarded: &str) -> Parts {
        let req = axum::http::Request::builder().header("x-forwarded-for", forwarded).body(()).expect("request");
        req.into_parts().0
    }

    /// A body that has not arrived whole by its deadline is given up on,
    /// with a 408 (not a 413: nothing was too large), however steadily it
    /// trickles; one that arrives is read.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_in_time_is_a_408() {
        use tower::ServiceExt as _;
        #[derive(serde::Deserialize)]
        struct Body {
            a: u32,
        }
        let app = axum::Router::new()
            .route("/", axum::routing::post(|JsonBody(b): JsonBody<Body>| async move { b.a.to_string() }))
            .layer(axum::middleware::from_fn(body_deadline));
        // A byte every 2 s: each gap well within the deadline, the whole
        // body not (the deadline is total, not per chunk). Paused time.
        let stalled = trickling_body(b"{\"a\"", b" ");
        let request = |body| {
            axum::http::Request::post("/").header("content-type", "application/json").body(body).expect("request")
        };
        let r = app.clone().oneshot(request(stalled)).await.expect("response");
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        let r = app.oneshot(request(axum::body::Body::from("{\"a\": 7}"))).await.expect("response");
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[test]
    fn forwarded_for_is_read_only_when_trusted_and_from_its_last_entry() {
        let p = parts("203.0.113.9, 198.51.100.7");
        assert_eq!(request_meta(&p, true).ip.as_deref(), Some("198.51.100.7"), "the proxy's entry, not the client's");
        assert_eq!(request_meta(&p, false).ip, None, "not trusted: ignored");
        assert_eq!(request_meta(&parts("198.51.100.7"), true).ip.as_deref(), Some("198.51.100.7"));
        assert_eq!(request_meta(&parts("203.0.113.9, not-an-ip"), true).ip, None);
    }

    /// A proxy that writes its entry with the client's port is read as that
    /// address, not as none (which put every client in the proxy's bucket).
    #[test]
    fn forwarded_for_with_a_port_is_read_as_its_address() {
        for (entry, ip) in [
            ("203.0.113.9, 198.51.100.7:5678", "198.51.100.7"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("2001:DB8::1", "2001:db8::1"),
        ] {
            assert_eq!(request_meta(&parts(entry), true).ip.as_deref(), Some(ip), "{entry}");
        }
        for entry in ["198.51.100.7:", "198.51.100.7:99999", "[2001:db8::1]", "2001:db8::1:443x"] {
            assert_eq!(request_meta(&parts(entry), true).ip, None, "{entry}");
        }
    }

    /// A proxy that adds a line of its own (rather than extending the
    /// client's) is read from its line: the client's line comes first, and
    /// taking its entry let a client choose its own address (the live probe
    /// sent 40 codes past a limit of 30 an hour per address this way).
    #[test]
    fn forwarded_for_on_several_lines_is_read_from_the_last() {
        let req = axum::http::Request::builder()
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-for", "192.0.2.1, 198.51.100.7")
            .body(())
            .expect("request");
        assert_eq!(request_meta(&req.into_parts().0, true).ip.as_deref(), Some("198.51.100.7"));
    }

    /// A client's bytes that are not ASCII, in the line a proxy extended,
    /// do not hide the proxy's entry after them: refusing the line put the
    /// client in the proxy's own bucket, a rate limit of its choosing.
    #[test]
    fn forwarded_for_with_the_clients_non_ascii_bytes_is_read_from_the_proxys_entry() {
        let value = axum::http::HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.7").expect("obs-text is a valid value");
        let req = axum::http::Request::builder().header("x-forwarded-for", value).body(()).expect("request");
        assert_eq!(request_meta(&req.into_parts().0, true).ip.as_deref(), Some("198.51.100.7"));
        let value = axum::http::HeaderValue::from_bytes(b"198.51.100.7\xff").expect("obs-text is a valid value");
        let req = axum::http::Request::builder().header("x-forwarded-for", value).body(()).expect("request");
        assert_eq!(request_meta(&req.into_parts().0, true).ip, None, "an entry that is no address is none");
    }
}
