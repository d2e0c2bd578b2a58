//! The signed-in home: the profile and the user's recent security events.
//! Without a live session it redirects to the sign-in page and shows
//! nothing private; like every page it is `Cache-Control: no-store`. Its
//! read of the trail counts against `RateLimits::activity`, as the
//! activity API's does: past it the page lists no events and says when
//! they can be shown again.

use super::render::{self, page};
use super::visitor::Visitor;
use super::{cookies, with_cookies};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use latchkey_core::clock::rfc3339;
use minijinja::context;

/// How many events the dashboard lists.
const RECENT: u32 = 10;

pub async fn dashboard(State(s): State<AppState>, mut v: Visitor) -> Response {
    let Some((_, profile)) = v.session.clone() else {
        let r = Redirect::to("/login").into_response();
        return if v.stale_session { with_cookies(r, vec![cookies::clear(cookies::SESSION)]) } else { r };
    };
    // Past the activity limit the page still shows the profile and the
    // sign-out form (someone else behind the same address can spend the
    // client's reads), with the wait in place of the events.
    let activity_wait = match s.auth.limit_activity(&profile.id, &v.meta).await {
        Ok(()) => None,
        Err(latchkey_core::Error::RateLimited { retry_after }) => Some(retry_after),
        Err(e) => return render::failure(e),
    };
    let records = match activity_wait {
        Some(_) => Vec::new(),
        None => match s.audit.list(&profile.id.to_string(), None, RECENT, s.auth.now()).await {
            Ok(page) => page.records,
            Err(e) => return render::failure(latchkey_core::Error::from(e)),
        },
    };
    let events = records
        .iter()
        .map(|r| {
            context! {
                at => rfc3339(r.at).replace('T', " ").trim_end_matches('Z').to_string(),
                event => r.event.as_str().replace('_', " "),
                outcome => serde_json::to_value(r.outcome).ok().and_then(|v| v.as_str().map(str::to_owned)),
                reason => r.reason.as_deref().map(|x| x.replace('_', " ")),
                ip => r.ip.clone(),
            }
        })
        .collect::<Vec<_>>();
    let (csrf, cookies) = v.form_token();
    let ctx = context! {
        title => format!("Hello, {}", profile.username),
        signed_in => true,
        csrf,
        events,
        activity_wait,
        profile => context! {
            username => profile.username,
            email => profile.email,
            verified => profile.verified,
            created_at => rfc3339(profile.created_at).replace('T', " ").trim_end_matches('Z').to_string() + " UTC",
        },
    };
    with_cookies(page(StatusCode::OK, "dashboard.html", ctx), cookies)
}
