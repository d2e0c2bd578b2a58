//! The templates (minijinja, HTML auto-escaping, embedded in the binary)
//! and the few ways a page answers.

use crate::error::ApiError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use latchkey_core::Error;
use minijinja::Environment;
use std::sync::LazyLock;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("macros.html", include_str!("templates/macros.html")),
    ("register.html", include_str!("templates/register.html")),
    ("check_mail.html", include_str!("templates/check_mail.html")),
    ("verify.html", include_str!("templates/verify.html")),
    ("forgot.html", include_str!("templates/forgot.html")),
    ("reset.html", include_str!("templates/reset.html")),
    ("email_confirm.html", include_str!("templates/email_confirm.html")),
    ("login.html", include_str!("templates/login.html")),
    ("code.html", include_str!("templates/code.html")),
    ("dashboard.html", include_str!("templates/dashboard.html")),
    ("otp.html", include_str!("templates/otp.html")),
    ("admin.html", include_str!("templates/admin.html")),
    ("message.html", include_str!("templates/message.html")),
    ("forbidden.html", include_str!("templates/forbidden.html")),
];

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in TEMPLATES {
        if let Err(e) = env.add_template(name, source) {
            tracing::error!(template = name, error = %e, "template does not compile");
        }
    }
    env
});

/// Renders `name` with `ctx` as an HTML page with `status`.
pub fn page(status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    match ENV.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(template = name, error = %e, "template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, Html("<!doctype html><title>Error</title><p>Something went wrong.</p>"))
                .into_response()
        }
    }
}

/// A page with a title and one paragraph.
pub fn message(status: StatusCode, title: &str, text: &str) -> Response {
    page(status, "message.html", minijinja::context! { title, text })
}

/// The status the JSON API gives an error, with `Retry-After` copied.
pub fn status_of(e: Error) -> (StatusCode, Option<u64>) {
    let a = ApiError::from(e);
    (a.status, a.retry_after)
}

/// Adds `Retry-After` when there is one.
pub fn retry_after(mut r: Response, secs: Option<u64>) -> Response {
    if let Some(s) = secs {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

/// The page for an error no form field explains (logged by `ApiError`).
pub fn failure(e: Error) -> Response {
    let text = match &e {
        Error::RateLimited { retry_after } => {
            format!("Too many attempts. Please wait {retry_after} seconds and try again.")
        }
        Error::Unavailable(_) => "The service is briefly unavailable. Please try again shortly.".to_string(),
        _ => "Something went wrong. Please try again.".to_string(),
    };
    let (status, retry) = status_of(e);
    retry_after(message(status, "Something went wrong", &text), retry)
}
