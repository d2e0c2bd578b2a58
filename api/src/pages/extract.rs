//! The pages' form and query extractors: axum's `Form` and `Query`, with a
//! refusal answered as a page. axum answers a repeated query parameter, a
//! repeated form field, a body over the limit or of another type in plain
//! text, which is no page to show a browser.

use super::render;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::Response;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The query of a mailed link's landing page (`?token=`).
#[derive(Deserialize)]
pub struct LinkQuery {
    token: Option<String>,
}

impl LinkQuery {
    /// The token, unless the link was cut short: none, or longer than
    /// `max_len`, longer than any token of that kind.
    pub fn token(self, max_len: usize) -> Option<String> {
        self.token.filter(|t| !t.is_empty() && t.len() <= max_len)
    }
}

/// A form body (`application/x-www-form-urlencoded`).
pub struct PageForm<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for PageForm<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(form)) => Ok(PageForm(form)),
            Err(refused) if crate::extract::timed_out(&refused) => Err(render::message(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                "That form took too long to arrive",
                "Please go back, reload the page and try again.",
            )),
            Err(refused) => Err(render::message(
                refused.status(),
                "That form could not be read",
                "Please go back, reload the page and try again.",
            )),
        }
    }
}

/// The query string of a page's URL.
pub struct PageQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for PageQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(query)) => Ok(PageQuery(query)),
            Err(refused) => Err(render::message(
                refused.status(),
                "That link could not be read",
                "The address has something in it twice or in a form this site does not use. Please open the \
                 link from the mail again.",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    /// A form body that has not arrived whole by its deadline is a 408 page.
    #[tokio::test(start_paused = true)]
    async fn a_form_that_does_not_arrive_in_time_is_a_408_page() {
        #[derive(serde::Deserialize)]
        struct Form {
            #[allow(dead_code)]
            a: String,
        }
        let app = axum::Router::new()
            .route("/", axum::routing::post(|PageForm(_): PageForm<Form>| async { "read" }))
            .layer(axum::middleware::from_fn(crate::extract::body_deadline));
        let body = crate::extract::trickling_body(b"a=", b"x");
        let request = axum::http::Request::post("/")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .expect("request");
        let r = app.oneshot(request).await.expect("response");
        assert_eq!(r.status(), axum::http::StatusCode::REQUEST_TIMEOUT);
        assert!(r.headers()["content-type"].to_str().unwrap_or("").starts_with("text/html"));
    }
}
