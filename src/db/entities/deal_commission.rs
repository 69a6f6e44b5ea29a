//! Entity for the `deal_commissions` table: the reconciler's view of one (deal, partner).

use sea_orm::entity::prelude::*;

/// One row of `deal_commissions`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "deal_commissions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub deal_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub partner_id: String,
    pub program_id: String,
    pub amount_program: Option<String>,
    pub amount_program_cents: Option<i64>,
    pub deal_status: crate::db::states::DealStatus,
    pub closed_at: Option<DateTimeUtc>,
    pub deal_created_at: DateTimeUtc,
    pub state: crate::db::states::CommissionState,
    pub expected_cents: i64,
    pub computed_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
