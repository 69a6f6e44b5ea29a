//! Entity for the `ledger_entries` table.

use sea_orm::entity::prelude::*;

/// One row of `ledger_entries`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "ledger_entries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub partner_id: String,
    pub program_id: String,
    pub deal_id: Option<String>,
    pub payout_id: Option<String>,
    pub kind: crate::db::states::LedgerEntryKind,
    /// Signed amount in cents (of `currency`).
    pub amount_cents: i64,
    pub currency: String,
    pub status: crate::db::states::LedgerEntryStatus,
    pub created_at: DateTimeUtc,
    pub available_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// For reconciliation entries: n for the n-th entry of this (partner, deal).
    pub deal_seq: Option<i32>,
    /// The invoice a recurring commission entry is for.
    pub invoice_id: Option<String>,
    /// For invoice entries: n for the n-th entry of this (partner, invoice).
    pub invoice_seq: Option<i32>,
    /// Why an admin adjusted the ledger (`createAdjustment`), shown to the partner.
    pub note: Option<String>,
    /// Why the entry is (or was) HELD.
    pub hold_reason: Option<crate::db::states::HoldReason>,
    /// The entry a manager's decline reverses (`declineLedgerEntry`).
    pub declines: Option<String>,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
