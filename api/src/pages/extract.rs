//! The pages' form and query extractors: axum's `Form` and `Query`, with a
//! refusal answered as a page. axum answers a repeated query parameter, a
//! repeated form field, a body over the limit or of another type in plain
//! text, which is no page to show a browser.

use super::render;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::Response;
use serde::de::DeserializeOwned;

/// A form body (`application/x-www-form-urlencoded`).
pub struct PageForm<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for PageForm<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(form)) => Ok(PageForm(form)),
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
