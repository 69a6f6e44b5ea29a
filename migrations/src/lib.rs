//! Database migrations for Tandem. Migrations never import the service's entities, so the
//! same migration runs on SQLite and PostgreSQL.
#![forbid(unsafe_code)]

pub use sea_orm_migration::prelude::*;

mod helpers;
mod m20261123_000001_initial;
mod m20261124_000001_webhooks;
mod m20261124_000002_commissions;
mod m20261124_000003_event_visibility;
mod m20261124_000004_outbound_webhooks;
mod m20261124_000005_crm_connections;
mod m20261124_000006_referral_counts;
mod m20261206_000001_day_two;
mod m20261206_000002_recurring;
mod m20261206_000003_registration;
mod m20261206_000004_applications;
mod m20261206_000005_certifications;
mod m20261206_000006_crm_company;
mod m20261206_000007_partner_groups;
mod m20261206_000008_payout_runs;
mod m20261206_000009_ledger_partial_indexes;
mod m20261207_000010_invoice_commissions_by_partner;
mod m20261207_000011_commission_scan_indexes;
mod m20261207_000012_console_sessions;
mod m20261207_000013_referral_kpi_index;
mod m20261207_000014_referral_kpi_rollup;
mod m20261207_000015_deal_commissions_unreferenced;

/// The ordered list of Tandem migrations.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_initial::Migration),
            Box::new(m20261124_000001_webhooks::Migration),
            Box::new(m20261124_000002_commissions::Migration),
            Box::new(m20261124_000003_event_visibility::Migration),
            Box::new(m20261124_000004_outbound_webhooks::Migration),
            Box::new(m20261124_000005_crm_connections::Migration),
            Box::new(m20261124_000006_referral_counts::Migration),
            Box::new(m20261206_000001_day_two::Migration),
            Box::new(m20261206_000002_recurring::Migration),
            Box::new(m20261206_000003_registration::Migration),
            Box::new(m20261206_000004_applications::Migration),
            Box::new(m20261206_000005_certifications::Migration),
            Box::new(m20261206_000006_crm_company::Migration),
            Box::new(m20261206_000007_partner_groups::Migration),
            Box::new(m20261206_000008_payout_runs::Migration),
            Box::new(m20261206_000009_ledger_partial_indexes::Migration),
            Box::new(m20261207_000010_invoice_commissions_by_partner::Migration),
            Box::new(m20261207_000011_commission_scan_indexes::Migration),
            Box::new(m20261207_000012_console_sessions::Migration),
            Box::new(m20261207_000013_referral_kpi_index::Migration),
            Box::new(m20261207_000014_referral_kpi_rollup::Migration),
            Box::new(m20261207_000015_deal_commissions_unreferenced::Migration),
        ]
    }
}
