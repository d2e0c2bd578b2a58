//! What every handler can reach.

use latchkey_core::flows::Auth;

#[derive(Clone)]
pub struct AppState {
    pub auth: Auth,
    /// Take the client IP from `X-Forwarded-For` (only behind our own proxy).
    pub trust_forwarded_for: bool,
}
