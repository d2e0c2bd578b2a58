//! Outside Lambda (the local runner, the api served as a plain HTTP
//! server) a request must be addressed to this service: its `Host` names an
//! IP address, `localhost` or a name under `.localhost`, or the host of
//! `PUBLIC_BASE_URL`. Anything else is answered 421 before any route runs.
//!
//! This stops DNS rebinding: a page on `attacker.example` whose name is made
//! to resolve to 127.0.0.1 would otherwise be served by a runner listening
//! there, as if it were its own origin, and could read every answer (the
//! browser sends it none of the runner's cookies, but the pages' same-origin
//! check compares the `Origin` with the `Host`, both the attacker's). A
//! rebound name is a name, never an address, and never the configured one.
//! On Lambda, API Gateway decides which hosts reach the function.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use latchkey_core::config::{authority_host, base_url_parts};

/// The host of a base URL (`https://auth.example.com:8443/x` gives
/// `auth.example.com`; an IPv6 literal without its brackets), lower-cased,
/// without a trailing dot.
pub fn host_of_base_url(url: &str) -> String {
    let host = authority_host(base_url_parts(url).map_or("", |(_, authority)| authority));
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Whether a request whose `Host` header is `host` (none: a client that is
/// no browser) is addressed to a service whose public host is `public`.
pub fn addressed_here(host: Option<&str>, public: &str) -> bool {
    let Some(host) = host else { return true };
    let name = authority_host(host.trim());
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || (!name.is_empty() && name == public)
}

/// The layer: 421 for a request addressed to another host, when the state
/// asks for the check.
pub async fn check(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(public) = s.served_host.as_deref() {
        // A value that is not text names no host: refused.
        let host = req.headers().get(header::HOST).map(|v| v.to_str().unwrap_or_default());
        if !addressed_here(host, public) {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected_request",
                format!("this server answers for {public} (PUBLIC_BASE_URL), an IP address or localhost only"),
            )
            .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        assert_eq!(host_of_base_url("https://Auth.Example.com:8443/x?y"), "auth.example.com");
        assert_eq!(host_of_base_url("http://[::1]:3000"), "::1");
        assert_eq!(host_of_base_url("http://localhost:3000"), "localhost");
        assert_eq!(host_of_base_url("https://auth.example.com./"), "auth.example.com");
        assert!(addressed_here(Some("auth.example.com"), &host_of_base_url("https://auth.example.com.")));
        let public = "auth.example.com";
        for ok in [
            "127.0.0.1:3000",
            "127.0.0.1",
            "[::1]:3000",
            "10.1.2.3:80",
            "localhost:3000",
            "LOCALHOST",
            "app.localhost:3000",
            "localhost.:3000",
            "auth.example.com",
            "Auth.Example.COM:8443",
        ] {
            assert!(addressed_here(Some(ok), public), "{ok} refused");
        }
        assert!(addressed_here(None, public), "a client that sends no Host is no browser");
        for bad in [
            "attacker.example:3000",
            "attacker.example",
            "localhost.attacker.example",
            "auth.example.com.attacker.example",
            "127.0.0.1.nip.io:3000",
            "",
            ":3000",
            "\u{0}",
        ] {
            assert!(!addressed_here(Some(bad), public), "{bad:?} accepted");
        }
        assert!(!addressed_here(Some(""), ""), "an empty public host matches nothing");
    }
}
