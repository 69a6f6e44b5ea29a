//! Tandem: a self-hosted hub for B2B partner and referral programs.
//!
//! The library holds everything; `main.rs` only parses the command line. Layers:
//! `http` (poem) → `graphql` (async-graphql, no HTTP) → `domain` (rules) → `db` (sea-orm).
// No unsafe code, except the one audited FFI module that reads SQLite's statement counters
// (`db::steps`), which allows it for itself.
#![deny(unsafe_code)]

pub mod app;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod graphql;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod outbound;

/// Installs the process-wide rustls crypto provider. Two providers are compiled in (ring for the
/// database driver, aws-lc for reqwest), so rustls cannot pick one by itself.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
