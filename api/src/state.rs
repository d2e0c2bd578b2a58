//! What every handler can reach.

use latchkey_core::audit::{AdminKeyHash, AuditStore};
use latchkey_core::flows::Auth;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub auth: Auth,
    /// Take the client IP from `X-Forwarded-For` (only behind our own proxy).
    pub trust_forwarded_for: bool,
    /// The audit trail, read by the admin and activity routes (the stream
    /// processor writes it).
    pub audit: Arc<dyn AuditStore>,
    /// The admin bearer key's hash; `None` shuts the admin API.
    pub admin_key: Option<AdminKeyHash>,
    /// The scheme of `PUBLIC_BASE_URL` (`https`, or `http` for a local
    /// host): a page's POST that names its `Origin` must name this one.
    pub scheme: &'static str,
    /// Outside Lambda, the host of `PUBLIC_BASE_URL`: a request whose
    /// `Host` names another host name is refused (`hosts`, DNS rebinding).
    /// `None` on Lambda, where API Gateway decides.
    pub served_host: Option<Arc<str>>,
}

impl AppState {
    /// The state for a server of its own (not on Lambda): it answers only
    /// requests addressed to `public_base_url`'s host, an IP address or
    /// localhost.
    pub fn serving_directly(mut self, public_base_url: &str) -> Self {
        self.served_host = Some(crate::hosts::host_of_base_url(public_base_url).into());
        self
    }
}
