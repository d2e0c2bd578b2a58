//! The admin API: a user's audit trail and per-day event counts, behind
//! `Authorization: Bearer <admin key>`. A missing or wrong key is a 401
//! before anything is read; every request with the API on counts against
//! the client's admin limit first (`RateLimits::admin_ip`, 429 past it).

use crate::error::ApiError;
use crate::extract::Meta;
use crate::state::AppState;
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use latchkey_core::audit::{AuditRecord, day_string, parse_day};
use latchkey_core::clock::rfc3339;
use latchkey_core::domain::RequestMeta;
use latchkey_core::flows::TrailOf;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Records per page unless the client asks for fewer.
const PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;
/// The longest range `stats` answers.
const MAX_STATS_DAYS: i64 = 366;

/// The bearer credential of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
}

/// Whether `key` is the admin key, after counting the request against its
/// client's admin limit (`RateLimited` past it, whatever the key). With the
/// admin API off no key can match, and nothing is counted. The API's bearer
/// check and the admin page's form both ask this.
pub(crate) async fn admin_key_ok(
    s: &AppState,
    key: Option<&str>,
    meta: &RequestMeta,
) -> Result<bool, latchkey_core::Error> {
    let Some(hash) = &s.admin_key else { return Ok(false) };
    s.auth.limit_admin(meta).await?;
    Ok(key.is_some_and(|key| hash.matches(key)))
}

async fn require_admin(s: &AppState, headers: &HeaderMap, meta: &RequestMeta) -> Result<(), ApiError> {
    if admin_key_ok(s, bearer(headers), meta).await? { Ok(()) } else { Err(latchkey_core::Error::Unauthorized.into()) }
}

#[derive(Deserialize)]
pub struct PageQuery {
    cursor: Option<String>,
    limit: Option<String>,
}

/// Query parameters, taken as a `Result` so they are read after the
/// credential check, and so a query string serde cannot read (a repeated
/// parameter) is a 400 in the API's error shape rather than axum's
/// plain-text rejection.
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the query string repeats a parameter or cannot be read",
        )
    })
}

/// `?cursor=` and `?limit=` as (before, limit).
pub(crate) fn page_params(q: &PageQuery) -> Result<(Option<u64>, u32), ApiError> {
    let before = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| ApiError::field("cursor", "is not a cursor from this API"))?),
    };
    let limit = match q.limit.as_deref() {
        None | Some("") => PAGE,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::field("limit", format!("must be 1..={MAX_PAGE}")))?,
    };
    Ok((before, limit))
}

/// An audit record as the API shows it (no chain hashes).
pub(crate) fn record_json(r: &AuditRecord) -> Value {
    json!({
        "seq": r.seq,
        "event": r.event.as_str(),
        "at": rfc3339(r.at),
        "outcome": r.outcome,
        "reason": r.reason,
        "attempts_left": r.attempts_left,
        "request_id": r.request_id,
        "ip": r.ip,
        "user_agent": r.user_agent,
    })
}

pub async fn user_audit(
    State(s): State<AppState>,
    headers: HeaderMap,
    Meta(meta): Meta,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_admin(&s, &headers, &meta).await?;
    // A path segment that is not UTF-8 once percent-decoded is no user id either.
    let id = id
        .ok()
        .and_then(|Path(id)| latchkey_core::domain::UserId::parse(&id))
        .ok_or_else(|| ApiError::field("id", "is not a user id"))?;
    let (before, limit) = page_params(&query(q)?)?;
    let page = s.audit.list(&id.to_string(), before, limit, s.auth.now()).await.map_err(latchkey_core::Error::from)?;
    Ok(Json(json!({
        "user_id": id.to_string(),
        "events": page.records.iter().map(record_json).collect::<Vec<_>>(),
        "next_cursor": page.next_before.map(|b| b.to_string()),
    }))
    .into_response())
}

#[derive(Deserialize)]
pub struct AuditQuery {
    user: Option<String>,
    otp_email: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/admin/audit?user=` or `?otp_email=`: a trail by the name an
/// operator has (an account's username or address, or the address standalone
/// codes were sent to), where `users/{id}/audit` needs the account's id.
pub async fn audit_by_name(
    State(s): State<AppState>,
    headers: HeaderMap,
    Meta(meta): Meta,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_admin(&s, &headers, &meta).await?;
    let q = query(q)?;
    let (before, limit) = page_params(&PageQuery { cursor: q.cursor, limit: q.limit })?;
    let trail = s.auth.admin_trail(q.user.as_deref(), q.otp_email.as_deref()).await?.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "user_not_found", "no account has this id, username or address")
    })?;
    let mut answer = match &trail.of {
        TrailOf::Account(id) => json!({ "user_id": id.to_string() }),
        TrailOf::CodeAddress(email) => json!({ "otp_email": email.as_str() }),
    };
    let page = s.audit.list(&trail.subject, before, limit, s.auth.now()).await.map_err(latchkey_core::Error::from)?;
    answer["events"] = page.records.iter().map(record_json).collect();
    answer["next_cursor"] = json!(page.next_before.map(|b| b.to_string()));
    Ok(Json(answer).into_response())
}

#[derive(Deserialize)]
pub struct StatsQuery {
    from: Option<String>,
    to: Option<String>,
}

pub async fn stats(
    State(s): State<AppState>,
    headers: HeaderMap,
    Meta(meta): Meta,
    q: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_admin(&s, &headers, &meta).await?;
    let q = query(q)?;
    let day = |v: Option<&str>, field: &str| {
        v.and_then(parse_day).ok_or_else(|| ApiError::field(field, "must be a date YYYY-MM-DD"))
    };
    let from = day(q.from.as_deref(), "from")?;
    let to = day(q.to.as_deref(), "to")?;
    if to < from || to - from >= MAX_STATS_DAYS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("to: must be on or after from, at most {MAX_STATS_DAYS} days"),
        ));
    }
    let counts = s.audit.stats(from, to, s.auth.now()).await.map_err(latchkey_core::Error::from)?;
    let mut days: BTreeMap<i64, BTreeMap<&'static str, u64>> = BTreeMap::new();
    for c in &counts {
        *days.entry(c.day).or_default().entry(c.event.as_str()).or_default() += c.count;
    }
    let days: Vec<Value> =
        days.into_iter().map(|(d, counts)| json!({ "day": day_string(d), "counts": counts })).collect();
    Ok(Json(json!({ "from": day_string(from), "to": day_string(to), "days": days })).into_response())
}
