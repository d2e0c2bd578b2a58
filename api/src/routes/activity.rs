//! `GET /v1/me/activity`: the signed-in user's own recent security events.
//! Each read counts against `RateLimits::activity` once the token and its
//! session check out (429 past it).

use super::admin::{PageQuery, bearer, page_params, query, record_json};
use crate::error::ApiError;
use crate::extract::Meta;
use crate::state::AppState;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub async fn my_activity(
    State(s): State<AppState>,
    Meta(meta): Meta,
    headers: HeaderMap,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let token = bearer(&headers).ok_or(latchkey_core::Error::Unauthorized)?;
    let profile = s.auth.me(token).await?;
    s.auth.limit_activity(&profile.id, &meta).await?;
    let (before, limit) = page_params(&query(q)?)?;
    let page =
        s.audit.list(&profile.id.to_string(), before, limit, s.auth.now()).await.map_err(latchkey_core::Error::from)?;
    Ok(Json(json!({
        "events": page.records.iter().map(record_json).collect::<Vec<_>>(),
        "next_cursor": page.next_before.map(|b| b.to_string()),
    }))
    .into_response())
}
