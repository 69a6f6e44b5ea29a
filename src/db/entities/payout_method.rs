//! Entity for the `payout_methods` table: how a partner is paid (DESIGN §14), sealed.

use sea_orm::entity::prelude::*;

/// One row of `payout_methods`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "payout_methods")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub partner_id: String,
    pub program_id: String,
    pub kind: crate::db::states::PayoutMethodKind,
    /// Sealed JSON of the details (`MethodDetails`).
    pub details: String,
    /// What may be shown.
    pub masked: String,
    pub account_holder: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
