//! The HTTP routes. Each handler extracts input, calls one flow, and maps the
//! result.

pub mod activity;
pub mod admin;
pub mod auth;
pub mod otp;
pub mod system;
