//! latchkey-core: the domain of an email authentication service.
//!
//! Newtypes that validate and normalise on construction (`domain`), the use
//! cases (`flows`), the traits they need from the outside world (`ports`),
//! mail jobs and their templates (`mail`), and the adapters that implement the
//! ports on DynamoDB/SQS (`aws` feature) and on an embedded SQLite store
//! (`embedded` feature). Nothing here knows about HTTP or Lambda.

pub mod adapters;
pub mod audit;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod flows;
pub mod keys;
pub mod mail;
pub mod password_hasher;
pub mod ports;
pub mod rng;
pub mod tables;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, StoreError};
