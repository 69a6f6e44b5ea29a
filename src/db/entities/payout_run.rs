//! Entity for the `payout_runs` table: one month-end (or any) payment of a program's partners
//! in one currency (DESIGN §14).

use sea_orm::entity::prelude::*;

/// One row of `payout_runs`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "payout_runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub program_id: String,
    pub currency: String,
    /// Entries available at this time are paid.
    pub cutoff: DateTimeUtc,
    pub minimum_cents: i64,
    pub status: crate::db::states::PayoutRunStatus,
    pub total_cents: i64,
    pub payout_count: i32,
    /// JSON array of `{partnerId, reason, amount}`.
    pub skipped: Json,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
