//! The JSON auth API under /v1.

use crate::error::ApiError;
use crate::extract::{JsonBody, Meta, required};
use crate::state::AppState;
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use latchkey_core::clock::rfc3339;
use latchkey_core::flows::{Caller, LoginStarted, TokenPair};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
pub struct RegisterReq {
    username: Option<String>,
    email: Option<String>,
    password: Option<String>,
}

pub async fn register(
    State(s): State<AppState>,
    Meta(meta): Meta,
    JsonBody(r): JsonBody<RegisterReq>,
) -> Result<Response, ApiError> {
    let username = required(r.username, "username")?;
    let email = required(r.email, "email")?;
    let password = required(r.password, "password")?;
    s.auth.register(&username, &email, password, &meta).await?;
    Ok(accepted("If the address can receive mail, a verification link is on its way."))
}

#[derive(Deserialize)]
pub struct TokenReq {
    token: Option<String>,
}

pub async fn verify_email(
    State(s): State<AppState>,
    Meta(meta): Meta,
    JsonBody(r): JsonBody<TokenReq>,
) -> Result<Response, ApiError> {
    let token = required(r.token, "token")?;
    s.auth.verify_email(&token, &meta).await?;
    Ok(Json(json!({ "status": "verified", "message": "Your email address is verified. You can sign in now." }))
        .into_response())
}

#[derive(Deserialize)]
pub struct EmailReq {
    email: Option<String>,
}

pub async fn resend_verification(
    State(s): State<AppState>,
    Meta(meta): Meta,
    JsonBody(r): JsonBody<EmailReq>,
) -> Result<Response, ApiError> {
    let email = required(r.email, "email")?;
    s.auth.resend_verification(&email, &meta).await?;
    Ok(accepted("If the address belongs to an unverified account, a new link is on its way."))
}

#[derive(Deserialize)]
pub struct LoginReq {
    identifier: Option<String>,
    password: Option<String>,
    /// From an earlier finished login on this device (optional).
    device_token: Option<String>,
}

pub async fn login(
    State(s): State<AppState>,
    Meta(meta): Meta,
    JsonBody(r): JsonBody<LoginReq>,
) -> Result<Response, ApiError> {
    let identifier = required(r.identifier, "identifier")?;
    let password = required(r.password, "password")?;
    let started = s.auth.login(&identifier, password, r.device_token.as_deref(), &meta).await?;
    Ok((StatusCode::ACCEPTED, Json(challenge_json(&started))).into_response())
}

#[derive(Deserialize)]
pub struct CodeReq {
    challenge_id: Option<String>,
    code: Option<String>,
}

pub async fn login_otp(
    State(s): State<AppState>,
    Meta(meta): Meta,
    JsonBody(r): JsonBody<CodeReq>,
) -> Result<Response, ApiError> {
    let challenge_id = required(r.challenge_id, "challenge_id")?;
    let code = required(r.code, "code")?;
    let pair = s.auth.verify_login_code(&challenge_id, &code, &meta).await?;
    Ok(Json(tokens_json(&pair)).into_response())
}

#[derive(Deserialize)]
pub struct ChallengeReq {
    challenge_id: Option<String>,
}

pub async fn login_otp_resend(
    State(s): State<AppState>,
    Meta(meta): Meta,
    JsonBody(r): JsonBody<ChallengeReq>,
) -> Result<Response, ApiError> {
    let challenge_id = required(r.challenge_id, "challenge_id")?;
    let started = s.auth.resend_login_code(&challenge_id, &meta).await?;
    Ok((StatusCode::ACCEPTED, Json(challenge_json(&started))).into_response())
}

#[derive(Deserialize)]
pub struct RefreshReq {
    refresh_token: Option<String>,
}

pub async fn refresh(
    State(s): State<AppState>,
    Meta(meta): Meta,
    JsonBody(r): JsonBody<RefreshReq>,
) -> Result<Response, ApiError> {
    let token = required(r.refresh_token, "refresh_token")?;
    let pair = s.auth.refresh(&token, &meta).await?;
    Ok(Json(tokens_json(&pair)).into_response())
}

pub async fn logout(
    State(s): State<AppState>,
    Meta(meta): Meta,
    JsonBody(r): JsonBody<RefreshReq>,
) -> Result<Response, ApiError> {
    let token = required(r.refresh_token, "refresh_token")?;
    s.auth.logout(&token, &meta).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The access token of `Authorization: Bearer <token>`, or 401.
fn access_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .ok_or(latchkey_core::Error::Unauthorized)?;
    Ok(token.trim())
}

#[derive(Deserialize)]
pub struct PasswordReq {
    current_password: Option<String>,
    new_password: Option<String>,
}

/// Changes the caller's password; every other session of theirs ends. The
/// client gets a device token at the new epoch (the change ended its older
/// one).
pub async fn change_password(
    State(s): State<AppState>,
    Meta(meta): Meta,
    headers: HeaderMap,
    JsonBody(r): JsonBody<PasswordReq>,
) -> Result<Response, ApiError> {
    let token = access_token(&headers)?;
    let current = required(r.current_password, "current_password")?;
    let new = required(r.new_password, "new_password")?;
    let device_token = s.auth.change_password(Caller::Bearer(token), current, new, &meta).await?;
    Ok(Json(json!({
        "status": "password_changed",
        "message": "Your password is changed. Every other session of your account is signed out.",
        "device_token": device_token,
    }))
    .into_response())
}

#[derive(Deserialize)]
pub struct CurrentPasswordReq {
    current_password: Option<String>,
}

/// "Sign out everywhere else": once the current password checks out, every
/// other session of the caller ends (and every login in progress and device
/// token of theirs); this one stays, and its client gets a new device token.
pub async fn end_other_sessions(
    State(s): State<AppState>,
    Meta(meta): Meta,
    headers: HeaderMap,
    JsonBody(r): JsonBody<CurrentPasswordReq>,
) -> Result<Response, ApiError> {
    let token = access_token(&headers)?;
    let current = required(r.current_password, "current_password")?;
    let device_token = s.auth.end_other_sessions(Caller::Bearer(token), current, &meta).await?;
    Ok(Json(json!({
        "status": "other_sessions_ended",
        "message": "Every other session of your account is signed out.",
        "device_token": device_token,
    }))
    .into_response())
}

/// Deletes the caller's account once the current password checks out:
/// the account and its names go at once, its sessions end with it, the
/// owner is mailed.
pub async fn delete_account(
    State(s): State<AppState>,
    Meta(meta): Meta,
    headers: HeaderMap,
    JsonBody(r): JsonBody<CurrentPasswordReq>,
) -> Result<Response, ApiError> {
    let token = access_token(&headers)?;
    let current = required(r.current_password, "current_password")?;
    s.auth.delete_account(Caller::Bearer(token), current, &meta).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub struct EmailChangeReq {
    current_password: Option<String>,
    new_email: Option<String>,
}

/// Asks to move the caller's account to `new_email`, once the current
/// password checks out: a link goes to the new address, a notice to the
/// account's; the same answer whether or not the new address has an
/// account.
pub async fn request_email_change(
    State(s): State<AppState>,
    Meta(meta): Meta,
    headers: HeaderMap,
    JsonBody(r): JsonBody<EmailChangeReq>,
) -> Result<Response, ApiError> {
    let token = access_token(&headers)?;
    let current = required(r.current_password, "current_password")?;
    let new_email = required(r.new_email, "new_email")?;
    s.auth.request_email_change(Caller::Bearer(token), current, &new_email, &meta).await?;
    Ok(accepted(
        "A link is on its way to the new address: the account moves there when it is opened. \
         Your current address was told.",
    ))
}

/// Moves an account to the address its link was mailed to.
pub async fn confirm_email_change(
    State(s): State<AppState>,
    Meta(meta): Meta,
    JsonBody(r): JsonBody<TokenReq>,
) -> Result<Response, ApiError> {
    let token = required(r.token, "token")?;
    let email = s.auth.confirm_email_change(&token, &meta).await?;
    Ok(Json(json!({
        "status": "email_changed",
        "message": "The account's address is changed: sign in and mail go to this one from now on.",
        "email": email.as_str(),
    }))
    .into_response())
}

/// The caller's live sessions, the most recently active first (counted
/// against the activity limit, as a read of the trail is).
pub async fn sessions(State(s): State<AppState>, Meta(meta): Meta, headers: HeaderMap) -> Result<Response, ApiError> {
    let views = s.auth.sessions(Caller::Bearer(access_token(&headers)?), &meta).await?;
    let sessions: Vec<_> = views
        .iter()
        .map(|v| {
            json!({
                "id": v.id.to_string(),
                "current": v.current,
                "created_at": rfc3339(v.created_at),
                "last_active_at": rfc3339(v.last_active_at),
                "expires_at": rfc3339(v.expires_at),
                "ip": v.ip,
                "user_agent": v.user_agent,
            })
        })
        .collect();
    Ok(Json(json!({ "sessions": sessions })).into_response())
}

/// Ends one of the caller's sessions once the current password checks out
/// (404 `session_not_found` for one that is not theirs or has ended).
pub async fn end_session(
    State(s): State<AppState>,
    Meta(meta): Meta,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    JsonBody(r): JsonBody<CurrentPasswordReq>,
) -> Result<Response, ApiError> {
    let token = access_token(&headers)?;
    let Ok(Path(id)) = id else { return Err(ApiError::not_found()) };
    let current = required(r.current_password, "current_password")?;
    s.auth.end_session(Caller::Bearer(token), &id, current, &meta).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Mails a password reset link if the address has a verified account;
/// answers the same either way.
pub async fn forgot_password(
    State(s): State<AppState>,
    Meta(meta): Meta,
    JsonBody(r): JsonBody<EmailReq>,
) -> Result<Response, ApiError> {
    let email = required(r.email, "email")?;
    s.auth.request_password_reset(&email, &meta).await?;
    Ok(accepted("If the address belongs to a verified account, a link to choose a new password is on its way."))
}

#[derive(Deserialize)]
pub struct ResetReq {
    token: Option<String>,
    new_password: Option<String>,
}

/// Sets a new password with a reset link's token; every session ends. The
/// client gets a device token (the reset ended its older one).
pub async fn reset_password(
    State(s): State<AppState>,
    Meta(meta): Meta,
    JsonBody(r): JsonBody<ResetReq>,
) -> Result<Response, ApiError> {
    let token = required(r.token, "token")?;
    let new = required(r.new_password, "new_password")?;
    let device_token = s.auth.reset_password(&token, new, &meta).await?;
    Ok(Json(json!({
        "status": "password_reset",
        "message": "Your new password is set and every session has ended. Sign in with it now.",
        "device_token": device_token,
    }))
    .into_response())
}

pub async fn me(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let p = s.auth.me(access_token(&headers)?).await?;
    Ok(Json(json!({
        "id": p.id.to_string(),
        "username": p.username,
        "email": p.email,
        "email_verified": p.verified,
        "created_at": rfc3339(p.created_at),
        "session_id": p.session_id.to_string(),
    }))
    .into_response())
}

fn accepted(message: &str) -> Response {
    (StatusCode::ACCEPTED, Json(json!({ "status": "accepted", "message": message }))).into_response()
}

fn challenge_json(c: &LoginStarted) -> serde_json::Value {
    json!({
        "challenge_id": c.challenge_id.to_string(),
        "expires_at": rfc3339(c.expires_at),
        "resend_after": c.resend_after,
    })
}

fn tokens_json(p: &TokenPair) -> serde_json::Value {
    let mut body = json!({
        "access_token": p.access_token,
        "refresh_token": p.refresh_token,
        "token_type": "Bearer",
        "expires_in": p.expires_in,
    });
    if let Some(device) = &p.device_token {
        body["device_token"] = json!(device);
    }
    body
}
