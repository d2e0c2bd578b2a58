//! The link in the verification mail lands here. A GET only shows a page
//! with a button; the token is consumed by the POST that button sends, so
//! mail scanners that prefetch links cannot verify (or burn) the token.

use crate::extract::Meta;
use crate::state::AppState;
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use latchkey_core::Error;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct TokenParam {
    token: Option<String>,
}

fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{t} · latchkey</title></head><body style=\"font-family:system-ui,sans-serif;max-width:32em;margin:3em auto;padding:0 1em\">\
<h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    )
}

pub async fn landing(Query(q): Query<TokenParam>) -> Response {
    let token = q.token.unwrap_or_default();
    if token.is_empty() || token.len() > 256 {
        return (
            StatusCode::BAD_REQUEST,
            Html(page(
                "Link incomplete",
                "<p>This verification link is incomplete. Open the link from the mail again, or ask for a new one.</p>",
            )),
        )
            .into_response();
    }
    Html(page(
        "Confirm your email address",
        &format!(
            "<p>Press the button to confirm your address.</p>\
<form method=\"post\" action=\"/verify-email\"><input type=\"hidden\" name=\"token\" value=\"{}\">\
<button type=\"submit\">Confirm my email address</button></form>",
            escape(&token)
        ),
    ))
    .into_response()
}

pub async fn submit(State(s): State<AppState>, Meta(meta): Meta, Form(q): Form<TokenParam>) -> Response {
    let token = q.token.unwrap_or_default();
    match s.auth.verify_email(&token, &meta).await {
        Ok(()) => Html(page(
            "Email confirmed",
            "<p>Your address is confirmed. You can <a href=\"/login\">sign in</a> now.</p>",
        ))
        .into_response(),
        Err(e) => {
            let text = match &e {
                Error::VerificationExpired => "This link has expired. Ask for a new one from the sign-in page.",
                Error::VerificationUsed => {
                    "This link has already been used. If your address is confirmed, just sign in."
                }
                Error::RateLimited { .. } => "Too many attempts. Please wait a minute and try again.",
                _ => "This link is not valid. Open the link from the mail again, or ask for a new one.",
            };
            let status = crate::error::ApiError::from(e).status;
            (status, Html(page("Could not confirm", &format!("<p>{text}</p>")))).into_response()
        }
    }
}
