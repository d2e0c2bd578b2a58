//! The admin stats page. The admin key is typed into the form on every
//! request and checked like the API's bearer key, after the same per-client
//! limit; it is never put in a cookie or echoed back into the page.

use super::account::FieldErrors;
use super::extract::PageForm;
use super::render::{self, page};
use super::visitor::Visitor;
use super::with_cookies;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use latchkey_core::audit::{day_of, day_string, parse_day};
use minijinja::context;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The longest range the page answers (as the API).
const MAX_DAYS: i64 = 366;

fn admin_page(
    s: &AppState,
    v: &mut Visitor,
    status: StatusCode,
    from: &str,
    to: &str,
    errors: FieldErrors,
    days: Option<Vec<minijinja::Value>>,
) -> Response {
    let (csrf, cookies) = v.form_token();
    let ctx = context! {
        title => "Admin: event counts", csrf, from, to, errors, days,
        disabled => s.admin_key.is_none(), signed_in => v.session.is_some(),
    };
    with_cookies(page(status, "admin.html", ctx), cookies)
}

pub async fn form(State(s): State<AppState>, mut v: Visitor) -> Response {
    let today = day_of(s.auth.now());
    let status = if s.admin_key.is_some() { StatusCode::OK } else { StatusCode::NOT_FOUND };
    admin_page(&s, &mut v, status, &day_string(today - 6), &day_string(today), FieldErrors::new(), None)
}

#[derive(Deserialize)]
pub struct AdminForm {
    csrf: Option<String>,
    admin_key: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

pub async fn stats(State(s): State<AppState>, mut v: Visitor, PageForm(f): PageForm<AdminForm>) -> Response {
    if let Some(r) = v.csrf_refusal(f.csrf.as_deref()) {
        return r;
    }
    let (from_s, to_s) = (f.from.unwrap_or_default(), f.to.unwrap_or_default());
    let mut errors = FieldErrors::new();
    let key_ok = match crate::routes::admin::admin_key_ok(&s, f.admin_key.as_deref().map(str::trim), &v.meta).await {
        Ok(ok) => ok,
        Err(e) => return render::failure(e),
    };
    if !key_ok {
        errors.insert("admin_key", "This admin key is not right.".into());
        return admin_page(&s, &mut v, StatusCode::UNAUTHORIZED, &from_s, &to_s, errors, None);
    }
    let (from, to) = (parse_day(&from_s), parse_day(&to_s));
    if from.is_none() {
        errors.insert("from", "Enter a date as YYYY-MM-DD.".into());
    }
    if to.is_none() {
        errors.insert("to", "Enter a date as YYYY-MM-DD.".into());
    }
    let (Some(from), Some(to)) = (from, to) else {
        return admin_page(&s, &mut v, StatusCode::BAD_REQUEST, &from_s, &to_s, errors, None);
    };
    if to < from || to - from >= MAX_DAYS {
        errors.insert("to", format!("Must be on or after the start, at most {MAX_DAYS} days."));
        return admin_page(&s, &mut v, StatusCode::BAD_REQUEST, &from_s, &to_s, errors, None);
    }
    let counts = match s.audit.stats(from, to, s.auth.now()).await {
        Ok(c) => c,
        Err(e) => return render::failure(latchkey_core::Error::from(e)),
    };
    let mut days: BTreeMap<i64, BTreeMap<&'static str, u64>> = BTreeMap::new();
    for c in &counts {
        *days.entry(c.day).or_default().entry(c.event.as_str()).or_default() += c.count;
    }
    let days = days
        .into_iter()
        .map(|(d, counts)| {
            let counts: Vec<_> = counts.into_iter().map(|(event, count)| context! { event, count }).collect();
            context! { day => day_string(d), counts }
        })
        .collect();
    admin_page(&s, &mut v, StatusCode::OK, &from_s, &to_s, FieldErrors::new(), Some(days))
}
