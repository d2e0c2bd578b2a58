//! latchkey-api: the HTTP face of latchkey. `app(state)` builds the axum
//! Router; `main.rs` serves it under lambda_http on AWS Lambda or as a plain
//! HTTP server elsewhere. `wiring` turns a `Config` into the ports.

pub mod error;
pub mod extract;
pub mod headers;
pub mod hosts;
pub mod pages;
pub mod refusals;
pub mod routes;
pub mod state;
pub mod wiring;

pub use state::AppState;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use routes::{activity, admin, auth, otp, system};

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    with_state(routes(), state)
}

/// The API's routes and the layers that need no state: what `app` puts
/// the state into. It can be built before the state is (a cold start
/// builds it while its secrets are read).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(system::healthz))
        .route("/.well-known/jwks.json", get(system::jwks))
        .route("/openapi.json", get(system::openapi))
        .route("/v1/register", post(auth::register))
        .route("/v1/verify-email", post(auth::verify_email))
        .route("/v1/verify-email/resend", post(auth::resend_verification))
        .route("/v1/login", post(auth::login))
        .route("/v1/login/otp", post(auth::login_otp))
        .route("/v1/login/otp/resend", post(auth::login_otp_resend))
        .route("/v1/token/refresh", post(auth::refresh))
        .route("/v1/logout", post(auth::logout))
        .route("/v1/logout/others", post(auth::end_other_sessions))
        .route("/v1/sessions", get(auth::sessions))
        .route("/v1/sessions/{id}/revoke", post(auth::end_session))
        .route("/v1/me", get(auth::me))
        .route("/v1/me/delete", post(auth::delete_account))
        .route("/v1/me/email", post(auth::request_email_change))
        .route("/v1/email/confirm", post(auth::confirm_email_change))
        .route("/v1/password", post(auth::change_password))
        .route("/v1/password/forgot", post(auth::forgot_password))
        .route("/v1/password/reset", post(auth::reset_password))
        .route("/v1/me/activity", get(activity::my_activity))
        .route("/v1/admin/users/{id}/audit", get(admin::user_audit))
        .route("/v1/admin/audit", get(admin::audit_by_name))
        .route("/v1/admin/stats", get(admin::stats))
        .route("/otp", post(otp::otp))
        // Browser pages (server-rendered, CSRF-checked; see `pages`).
        .route("/", get(pages::home))
        .route("/static/style.css", get(pages::stylesheet))
        .route("/register", get(pages::account::register_form).post(pages::account::register))
        .route("/register/sent", get(pages::account::check_mail))
        .route("/register/resend", post(pages::account::resend))
        .route("/verify-email", get(pages::account::verify_landing).post(pages::account::verify))
        .route("/login", get(pages::login::login_form).post(pages::login::login))
        .route("/login/code", get(pages::login::code_form).post(pages::login::code))
        .route("/login/code/resend", post(pages::login::resend))
        .route("/logout", post(pages::login::logout))
        .route("/password/forgot", get(pages::reset::forgot_form).post(pages::reset::forgot))
        .route("/password/reset", get(pages::reset::reset_form).post(pages::reset::reset))
        .route("/dashboard", get(pages::dashboard::dashboard))
        .route("/sessions/end", post(pages::dashboard::end_sessions))
        .route("/account/password", post(pages::dashboard::change_password))
        .route("/account/email", post(pages::dashboard::change_email))
        .route("/email/confirm", get(pages::email::confirm_form).post(pages::email::confirm))
        .route("/account/delete", post(pages::dashboard::delete_account))
        .route("/one-time-code", get(pages::otp::form))
        .route("/one-time-code/send", post(pages::otp::send))
        .route("/one-time-code/verify", post(pages::otp::verify))
        .route("/admin", get(pages::admin::form).post(pages::admin::stats))
        .route("/admin/audit", post(pages::admin::audit))
        .fallback(system::not_found)
        .method_not_allowed_fallback(system::method_not_allowed)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
        // A body must arrive whole within its deadline (with the header read
        // timeout of the local server's connections, see `wiring`): a client
        // cannot hold a request open by sending a byte now and then.
        .layer(axum::middleware::from_fn(extract::body_deadline))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            use axum::response::IntoResponse;
            error::ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal error")
                .into_response()
        }))
}

/// `routes` with the state, and the layers that read it.
pub fn with_state(routes: Router<AppState>, state: AppState) -> Router {
    routes
        // Outside Lambda, only requests addressed to this service (DNS
        // rebinding); logged as refusals, with the security headers.
        .layer(axum::middleware::from_fn_with_state(state.clone(), hosts::check))
        .layer(axum::middleware::from_fn_with_state(state.clone(), refusals::log_refusals))
        .layer(axum::middleware::from_fn(headers::security_headers))
        .with_state(state)
}
