//! The storage contract suite on the embedded SQLite store, a fresh
//! in-memory database per test.
use latchkey_core::{adapters::embedded::EmbeddedStore, testing::Subject};

async fn subject() -> Subject {
    Subject::from_store(EmbeddedStore::in_memory().expect("in-memory store"))
}

latchkey_core::contract_suite!(subject());
