//! Entity for the `invoice_commissions` table: the reconciler's view of one (partner, invoice),
//! keyed in that order (a partner's rows side by side).

use sea_orm::entity::prelude::*;

/// One row of `invoice_commissions`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "invoice_commissions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub partner_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub invoice_id: String,
    pub program_id: String,
    pub customer_id: Option<String>,
    /// Net amount excluding tax in the program currency (exact), null without a rate.
    pub amount_program: Option<String>,
    pub amount_program_cents: Option<i64>,
    pub paid_at: DateTimeUtc,
    pub state: crate::db::states::CommissionState,
    pub expected_cents: i64,
    pub computed_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
