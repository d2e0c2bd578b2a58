//! The signed-in home: the profile, where the account is signed in, and the
//! user's recent security events. Without a live session it redirects to
//! the sign-in page and shows nothing private; like every page it is
//! `Cache-Control: no-store`. Its reads (the trail and the sessions) count
//! once against `RateLimits::activity`, as the activity API's read does:
//! past it the page lists neither and says when they can be shown again.
//!
//! `POST /sessions/end` ends one of the other sessions, or all of them
//! ("sign out everywhere else"), once the current password checks out
//! (ASVS 5.0 7.5.2), through the same flows as the API. `POST
//! /account/password` changes the password (every other session ends),
//! `POST /account/email` asks to move the account to another address (a
//! link goes there), and `POST /account/delete` deletes the account and
//! signs this browser out, each once the current password checks out.

use super::account::{FieldErrors, sentence};
use super::extract::{PageForm, PageQuery};
use super::render::{self, page};
use super::visitor::Visitor;
use super::{cookies, with_cookies};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use latchkey_core::Error;
use latchkey_core::clock::{Timestamp, rfc3339};
use latchkey_core::flows::{BrowserSession, Caller};
use minijinja::context;
use serde::Deserialize;

/// How many events the dashboard lists.
const RECENT: u32 = 10;
/// How much of a user agent a session's row shows.
const AGENT_CHARS: usize = 80;
/// The `session_id` that asks to end every other session.
const EVERY_OTHER: &str = "others";

#[derive(Deserialize)]
pub struct DashboardQuery {
    ended: Option<String>,
    email: Option<String>,
    password: Option<String>,
}

pub async fn dashboard(State(s): State<AppState>, mut v: Visitor, PageQuery(q): PageQuery<DashboardQuery>) -> Response {
    let notice = match (q.ended.as_deref(), q.email.as_deref(), q.password.as_deref()) {
        (Some(EVERY_OTHER), ..) => Some("Every other session is signed out."),
        (Some(_), ..) => Some("That session is signed out."),
        (None, Some(_), _) => Some(
            "A link is on its way to the new address: your account moves there when it is opened, within an hour. \
             Your current address was told.",
        ),
        (None, None, Some(_)) => Some(
            "Your password is changed. Every other session of your account is signed out, and your address was told.",
        ),
        (None, None, None) => None,
    };
    render(&s, &mut v, StatusCode::OK, notice, None, FieldErrors::new()).await
}

fn when(t: Timestamp) -> String {
    rfc3339(t).replace('T', " ").trim_end_matches('Z').to_string()
}

/// The dashboard as `v` sees it, with a notice or a form error.
async fn render(
    s: &AppState,
    v: &mut Visitor,
    status: StatusCode,
    notice: Option<&str>,
    form_error: Option<String>,
    errors: FieldErrors,
) -> Response {
    let Some((_, signed_in)) = v.session.clone() else {
        let r = Redirect::to("/login").into_response();
        return if v.stale_session { with_cookies(r, vec![cookies::clear(cookies::SESSION)]) } else { r };
    };
    // Past the activity limit the page still shows the profile and the
    // sign-out forms (someone else behind the same address can spend the
    // client's reads), with the wait in place of the events and sessions.
    let profile = &signed_in.profile;
    let activity_wait = match s.auth.limit_activity(&profile.id, &v.meta).await {
        Ok(()) => None,
        Err(Error::RateLimited { retry_after }) => Some(retry_after),
        Err(e) => return render::failure(e),
    };
    let (records, sessions) = match activity_wait {
        Some(_) => (Vec::new(), Vec::new()),
        None => {
            let page = match s.audit.list(&profile.id.to_string(), None, RECENT, s.auth.now()).await {
                Ok(page) => page,
                Err(e) => return render::failure(Error::from(e)),
            };
            match s.auth.sessions(Caller::Browser(&signed_in), &v.meta).await {
                Ok(sessions) => (page.records, sessions),
                Err(e) => return render::failure(e),
            }
        }
    };
    let events = records
        .iter()
        .map(|r| {
            context! {
                at => when(r.at),
                event => r.event.as_str().replace('_', " "),
                outcome => serde_json::to_value(r.outcome).ok().and_then(|v| v.as_str().map(str::to_owned)),
                reason => r.reason.as_deref().map(|x| x.replace('_', " ")),
                ip => r.ip.clone(),
            }
        })
        .collect::<Vec<_>>();
    let sessions = sessions
        .iter()
        .map(|x| {
            let agent = x.user_agent.as_deref().unwrap_or("unknown browser");
            let agent = match agent.char_indices().nth(AGENT_CHARS) {
                Some((cut, _)) => format!("{}…", &agent[..cut]),
                None => agent.to_string(),
            };
            let from = x.ip.clone().unwrap_or_else(|| "an unknown address".into());
            context! {
                id => x.id.to_string(),
                current => x.current,
                created_at => when(x.created_at),
                last_active_at => when(x.last_active_at),
                label => format!("{agent}, from {from}, last active {} UTC", when(x.last_active_at)),
                ip => x.ip.clone(),
                agent,
            }
        })
        .collect::<Vec<_>>();
    let (csrf, cookies) = v.form_token();
    let ctx = context! {
        title => format!("Hello, {}", profile.username),
        signed_in => true,
        csrf,
        events,
        sessions,
        every_other => EVERY_OTHER,
        password_min => v.password_min_chars(),
        activity_wait,
        notice,
        form_error,
        errors,
        profile => context! {
            username => profile.username,
            email => profile.email,
            verified => profile.verified,
            created_at => when(profile.created_at) + " UTC",
        },
    };
    with_cookies(page(status, "dashboard.html", ctx), cookies)
}

#[derive(Deserialize)]
pub struct EndForm {
    csrf: Option<String>,
    session_id: Option<String>,
    current_password: Option<String>,
}

/// The session of the visitor posting a dashboard form with `csrf`, or
/// the answer instead: nobody signed in to act for goes to the sign-in
/// page (only for this origin's own forms; another's is refused), and a
/// bad token is refused.
async fn signed_in_form(s: &AppState, v: &mut Visitor, csrf: Option<&str>) -> Result<BrowserSession, Response> {
    let Some((_, signed_in)) = v.session.clone() else {
        if !v.same_origin() {
            return Err(v.csrf_refusal(None).unwrap_or_else(|| Redirect::to("/login").into_response()));
        }
        return Err(render(s, v, StatusCode::OK, None, None, FieldErrors::new()).await);
    };
    match v.csrf_refusal(csrf) {
        Some(r) => Err(r),
        None => Ok(signed_in),
    }
}

/// The answer to a dashboard form whose session ended while it was being
/// handled: the sign-in page, this browser's session cookie cleared.
fn session_ended() -> Response {
    with_cookies(Redirect::to("/login").into_response(), vec![cookies::clear(cookies::SESSION)])
}

/// The answer to a dashboard form its flow refused with `e`: a refused
/// field's sentence next to the form's field that `field_for` names for it
/// (a wrong current password said as such); the sign-in page if a guess
/// that locked the account, or one during a lock, ended this session (or a
/// reset did meanwhile); else the error's page.
async fn refused(
    s: &AppState,
    v: &mut Visitor,
    e: Error,
    field_for: impl Fn(&'static str) -> &'static str,
) -> Response {
    match e {
        Error::Validation { field, reason } => {
            let text = if field == "current_password" {
                "That is not your current password.".into()
            } else {
                sentence(&reason)
            };
            let mut errors = FieldErrors::new();
            errors.insert(field_for(field), text);
            render(s, v, StatusCode::BAD_REQUEST, None, None, errors).await
        }
        Error::Unauthorized => session_ended(),
        e => render::failure(e),
    }
}

/// `POST /sessions/end`: ends the chosen session, or every other one.
pub async fn end_sessions(State(s): State<AppState>, mut v: Visitor, PageForm(f): PageForm<EndForm>) -> Response {
    let signed_in = match signed_in_form(&s, &mut v, f.csrf.as_deref()).await {
        Ok(signed_in) => signed_in,
        Err(r) => return r,
    };
    let target = f.session_id.unwrap_or_default();
    let password = f.current_password.unwrap_or_default();
    let mut errors = FieldErrors::new();
    if target.is_empty() {
        errors.insert("session_id", "Choose a session to sign out.".into());
    }
    if password.is_empty() {
        errors.insert("current_password", "Type your current password.".into());
    }
    if !errors.is_empty() {
        return render(&s, &mut v, StatusCode::BAD_REQUEST, None, None, errors).await;
    }
    let caller = Caller::Browser(&signed_in);
    let ended = if target == EVERY_OTHER {
        s.auth.end_other_sessions(caller, password, &v.meta).await.map(Some)
    } else {
        s.auth.end_session(caller, &target, password, &v.meta).await.map(|()| None)
    };
    match ended {
        // Every other device token ended too; this browser gets a new one.
        Ok(Some(device)) => with_device(&s, Redirect::to("/dashboard?ended=others"), &device),
        Ok(None) => Redirect::to("/dashboard?ended=one").into_response(),
        Err(Error::SessionNotFound) => {
            let text = "That session had already ended.".to_string();
            render(&s, &mut v, StatusCode::NOT_FOUND, None, Some(text), errors).await
        }
        Err(e) => refused(&s, &mut v, e, |field| field).await,
    }
}

#[derive(Deserialize)]
pub struct EmailForm {
    csrf: Option<String>,
    new_email: Option<String>,
    email_password: Option<String>,
}

/// `POST /account/email`: asks to move the account to another address
/// (the flow of `POST /v1/me/email`).
pub async fn change_email(State(s): State<AppState>, mut v: Visitor, PageForm(f): PageForm<EmailForm>) -> Response {
    let signed_in = match signed_in_form(&s, &mut v, f.csrf.as_deref()).await {
        Ok(signed_in) => signed_in,
        Err(r) => return r,
    };
    let mut errors = FieldErrors::new();
    let (new_email, password) = (f.new_email.unwrap_or_default(), f.email_password.unwrap_or_default());
    if new_email.trim().is_empty() {
        errors.insert("new_email", "Type the new address.".into());
    }
    if password.is_empty() {
        errors.insert("email_password", "Type your current password.".into());
    }
    if !errors.is_empty() {
        return render(&s, &mut v, StatusCode::BAD_REQUEST, None, None, errors).await;
    }
    match s.auth.request_email_change(Caller::Browser(&signed_in), password, &new_email, &v.meta).await {
        Ok(()) => Redirect::to("/dashboard?email=asked").into_response(),
        Err(e) => {
            refused(&s, &mut v, e, |field| if field == "current_password" { "email_password" } else { "new_email" })
                .await
        }
    }
}

#[derive(Deserialize)]
pub struct PasswordForm {
    csrf: Option<String>,
    password_current: Option<String>,
    new_password: Option<String>,
}

/// `POST /account/password`: changes the password (the flow of
/// `POST /v1/password`): every other session of the account ends, this one
/// stays, and the owner is mailed.
pub async fn change_password(
    State(s): State<AppState>,
    mut v: Visitor,
    PageForm(f): PageForm<PasswordForm>,
) -> Response {
    let signed_in = match signed_in_form(&s, &mut v, f.csrf.as_deref()).await {
        Ok(signed_in) => signed_in,
        Err(r) => return r,
    };
    let mut errors = FieldErrors::new();
    let (current, new) = (f.password_current.unwrap_or_default(), f.new_password.unwrap_or_default());
    if current.is_empty() {
        errors.insert("password_current", "Type your current password.".into());
    }
    if new.is_empty() {
        errors.insert("new_password", "Type the new password.".into());
    }
    if !errors.is_empty() {
        return render(&s, &mut v, StatusCode::BAD_REQUEST, None, None, errors).await;
    }
    match s.auth.change_password(Caller::Browser(&signed_in), current, new, &v.meta).await {
        Ok(device) => with_device(&s, Redirect::to("/dashboard?password=changed"), &device),
        Err(e) => {
            refused(
                &s,
                &mut v,
                e,
                |field| if field == "current_password" { "password_current" } else { "new_password" },
            )
            .await
        }
    }
}

/// `response` with this browser's new device cookie (the flow ended the
/// one it had, with every other of the account).
fn with_device(s: &AppState, response: impl IntoResponse, device: &str) -> Response {
    with_cookies(response.into_response(), vec![cookies::device(device, &s.auth)])
}

#[derive(Deserialize)]
pub struct DeleteForm {
    csrf: Option<String>,
    delete_password: Option<String>,
}

/// `POST /account/delete`: deletes the account (the flow of
/// `POST /v1/me/delete`), then signs this browser out of it.
pub async fn delete_account(State(s): State<AppState>, mut v: Visitor, PageForm(f): PageForm<DeleteForm>) -> Response {
    let signed_in = match signed_in_form(&s, &mut v, f.csrf.as_deref()).await {
        Ok(signed_in) => signed_in,
        Err(r) => return r,
    };
    let mut errors = FieldErrors::new();
    let password = f.delete_password.unwrap_or_default();
    if password.is_empty() {
        errors.insert("delete_password", "Type your current password.".into());
        return render(&s, &mut v, StatusCode::BAD_REQUEST, None, None, errors).await;
    }
    match s.auth.delete_account(Caller::Browser(&signed_in), password, &v.meta).await {
        Ok(()) => {
            // The account is gone: so are this browser's session and its
            // remembered device.
            let clear = [cookies::SESSION, cookies::PRE, cookies::CSRF, cookies::DEVICE].map(cookies::clear).to_vec();
            with_cookies(Redirect::to("/login?deleted=1").into_response(), clear)
        }
        Err(e) => refused(&s, &mut v, e, |_| "delete_password").await,
    }
}
