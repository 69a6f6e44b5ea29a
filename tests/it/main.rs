//! Integration tests: the real hub over HTTP, on SQLite and (with `TANDEM_TEST_POSTGRES_URL`)
//! on PostgreSQL.

mod applications;
mod apply_cost;
mod auth;
mod billing;
mod browser;
mod bulk;
mod certifications;
mod cli;
mod commissions;
mod console;
mod crash;
mod crm;
mod events;
mod execution;
mod groups;
mod hardening;
mod helpers;
mod history;
mod isolation;
mod jobs;
mod kpi_cache;
mod ledger_props;
mod limits;
mod manage;
mod ops;
mod outbound;
mod payouts;
mod plain;
mod programs;
mod referrals;
mod registration;
mod retention;
mod schema;
mod stripe_connect;
mod webhooks;
