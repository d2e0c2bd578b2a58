//! The admin page: event counts per day, and an audit trail by name. The
//! admin key is typed into the form on every request and checked like the
//! API's bearer key, after the same per-client limit; it is never put in a
//! cookie or echoed back into the page.

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
/// Audit records a page shows at once.
const PAGE: u32 = 50;

/// The audit-trail form's values and, once asked, the trail it shows.
#[derive(Default)]
struct Trail {
    user: String,
    otp_email: String,
    /// The records, newest first; `None` until a trail was asked for.
    events: Option<Vec<minijinja::Value>>,
    /// The cursor of older records, if there are more.
    older: Option<String>,
}

fn admin_page(
    s: &AppState,
    v: &mut Visitor,
    status: StatusCode,
    from: &str,
    to: &str,
    errors: FieldErrors,
    days: Option<Vec<minijinja::Value>>,
) -> Response {
    admin_page_with(s, v, status, from, to, errors, days, Trail::default())
}

#[allow(clippy::too_many_arguments)]
fn admin_page_with(
    s: &AppState,
    v: &mut Visitor,
    status: StatusCode,
    from: &str,
    to: &str,
    errors: FieldErrors,
    days: Option<Vec<minijinja::Value>>,
    trail: Trail,
) -> Response {
    let (csrf, cookies) = v.form_token();
    let ctx = context! {
        title => "Admin: event counts and audit trails", csrf, from, to, errors, days,
        trail_user => trail.user, trail_otp_email => trail.otp_email, events => trail.events, older => trail.older,
        disabled => s.admin_key.is_none(), signed_in => v.session.is_some(),
    };
    with_cookies(page(status, "admin.html", ctx), cookies)
}

fn default_range(s: &AppState) -> (String, String) {
    let today = day_of(s.auth.now());
    (day_string(today - 6), day_string(today))
}

pub async fn form(State(s): State<AppState>, mut v: Visitor) -> Response {
    let (from, to) = default_range(&s);
    let status = if s.admin_key.is_some() { StatusCode::OK } else { StatusCode::NOT_FOUND };
    admin_page(&s, &mut v, status, &from, &to, FieldErrors::new(), None)
}

#[derive(Deserialize)]
pub struct AuditForm {
    csrf: Option<String>,
    audit_key: Option<String>,
    user: Option<String>,
    otp_email: Option<String>,
    cursor: Option<String>,
}

/// An audit trail by name (`POST /admin/audit`): an account's, by its id,
/// username or address, or the standalone codes sent to an address; the
/// key checked as on the stats form, the newest records first, and a form
/// for the older ones (the key typed again: it is never kept).
pub async fn audit(State(s): State<AppState>, mut v: Visitor, PageForm(f): PageForm<AuditForm>) -> Response {
    if let Some(r) = v.csrf_refusal(f.csrf.as_deref()) {
        return r;
    }
    let (from, to) = default_range(&s);
    let mut trail =
        Trail { user: f.user.unwrap_or_default(), otp_email: f.otp_email.unwrap_or_default(), ..Trail::default() };
    let mut errors = FieldErrors::new();
    let key_ok = match crate::routes::admin::admin_key_ok(&s, f.audit_key.as_deref().map(str::trim), &v.meta).await {
        Ok(ok) => ok,
        Err(e) => return render::failure(e),
    };
    if !key_ok {
        errors.insert("audit_key", "This admin key is not right.".into());
        return admin_page_with(&s, &mut v, StatusCode::UNAUTHORIZED, &from, &to, errors, None, trail);
    }
    let before = match f.cursor.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match c.parse::<u64>() {
            Ok(c) => Some(c),
            Err(_) => {
                errors.insert("user", "The link to older records is not right; ask again.".into());
                return admin_page_with(&s, &mut v, StatusCode::BAD_REQUEST, &from, &to, errors, None, trail);
            }
        },
    };
    let asked = match s.auth.admin_trail(Some(&trail.user), Some(&trail.otp_email)).await {
        Ok(Some(asked)) => Ok(asked.subject),
        Ok(None) => Err(("user", "No account has this id, username or address.", StatusCode::NOT_FOUND)),
        Err(latchkey_core::Error::Validation { field: "otp_email", .. }) => {
            Err(("otp_email", "Enter an email address.", StatusCode::BAD_REQUEST))
        }
        Err(latchkey_core::Error::Validation { reason, .. }) if reason == latchkey_core::flows::NAME_ONE_TRAIL => {
            Err((
                "user",
                "Fill in one of the two: an account (id, username or address), or an address codes were sent to.",
                StatusCode::BAD_REQUEST,
            ))
        }
        Err(latchkey_core::Error::Validation { .. }) => {
            Err(("user", "Enter an account's id, username or email address.", StatusCode::BAD_REQUEST))
        }
        Err(e) => return render::failure(e),
    };
    let subject = match asked {
        Ok(subject) => subject,
        Err((field, text, status)) => {
            errors.insert(field, text.into());
            return admin_page_with(&s, &mut v, status, &from, &to, errors, None, trail);
        }
    };
    let page_of = match s.audit.list(&subject, before, PAGE, s.auth.now()).await {
        Ok(p) => p,
        Err(e) => return render::failure(latchkey_core::Error::from(e)),
    };
    trail.events = Some(
        page_of
            .records
            .iter()
            .map(|r| {
                context! {
                    at => latchkey_core::clock::rfc3339(r.at), event => r.event.as_str(), outcome => r.outcome,
                    reason => r.reason, ip => r.ip, user_agent => r.user_agent,
                }
            })
            .collect(),
    );
    trail.older = page_of.next_before.map(|b| b.to_string());
    admin_page_with(&s, &mut v, StatusCode::OK, &from, &to, FieldErrors::new(), None, trail)
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
