//! PostgreSQL: `deal_commissions` without foreign keys, like its sibling `invoice_commissions`.
//!
//! The table is the reconciler's record of what it last computed per (deal, partner), rebuilt
//! by a full run; the reconciler writes rows only for the deals and partners it has just read,
//! and nothing deletes deals or partners. On PostgreSQL each foreign-key check locks the
//! referenced row (`FOR KEY SHARE`), which writes the lock into that row's page: a full run
//! dirtied and WAL-logged every one of 1,000,000 deals to record their computations. Without the
//! two keys the full run of the 1,000,000-deal benchmark went from 55.8 and 58.1 s to 49.7 and
//! 47.8 s (BENCHMARKS.md). SQLite keeps them: its check is a read, and dropping a constraint
//! there means rebuilding the table.

use sea_orm_migration::prelude::*;

use crate::helpers::on_postgres;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000015_deal_commissions_unreferenced"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(
            manager,
            &["ALTER TABLE deal_commissions \
               DROP CONSTRAINT IF EXISTS deal_commissions_deal_id_fkey, \
               DROP CONSTRAINT IF EXISTS deal_commissions_partner_id_fkey"],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(
            manager,
            &["ALTER TABLE deal_commissions \
               ADD CONSTRAINT deal_commissions_deal_id_fkey FOREIGN KEY (deal_id) \
                 REFERENCES deals (id) ON DELETE RESTRICT, \
               ADD CONSTRAINT deal_commissions_partner_id_fkey FOREIGN KEY (partner_id) \
                 REFERENCES partners (id) ON DELETE RESTRICT"],
        )
        .await
    }
}
