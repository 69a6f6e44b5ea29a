//! Entity for the `invoice_adjustments` table: refunds and credit notes of an invoice.

use sea_orm::entity::prelude::*;

/// One row of `invoice_adjustments`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "invoice_adjustments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub source_id: String,
    /// The invoice's Stripe id (the invoice may arrive later).
    pub invoice_external_id: String,
    pub kind: crate::db::states::AdjustmentKind,
    /// The charge (`ch_…`) or credit note (`cn_…`).
    pub external_id: String,
    pub currency: String,
    /// Decimal amount in major units, including tax, that no longer counts as paid.
    pub amount: String,
    pub occurred_at: DateTimeUtc,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
