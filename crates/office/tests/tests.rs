//! The back office's integration tests: one binary (see `Cargo.toml`).
//!
//! `conformance` runs every scenario on SQLite and, when `ICCARD_TEST_POSTGRES_URL` is set, on
//! PostgreSQL; `concurrency` spawns this binary as several processes posting at once.

mod concurrency;
mod conformance;
mod crash;
mod crash_cards;
mod issuance;
mod keystore;
mod lifecycle;
mod pkcs11;
mod recharge;
mod returns;
mod settlement;
mod shifts;
mod support;
