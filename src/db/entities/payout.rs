//! Entity for the `payouts` table.

use sea_orm::entity::prelude::*;

/// One row of `payouts`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "payouts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub partner_id: String,
    pub program_id: String,
    pub currency: String,
    pub status: crate::db::states::PayoutStatus,
    pub reference: Option<String>,
    pub created_at: DateTimeUtc,
    pub paid_at: Option<DateTimeUtc>,
    /// Total in cents (of `currency`).
    pub total_cents: i64,
    /// The payout run that made it (none for `createPayout`).
    pub run_id: Option<String>,
    /// The partner's payout method when the payout was made.
    pub method_kind: Option<crate::db::states::PayoutMethodKind>,
    /// Its details, sealed.
    pub method_details: Option<String>,
    /// Why sending it failed.
    pub failure: Option<String>,
    /// How many times a transfer that paid it was reversed (its next idempotency key differs).
    pub send_generation: Option<i32>,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
