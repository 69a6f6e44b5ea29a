//! Entity for the `webhook_receipts` table (the inbound inbox).

use sea_orm::entity::prelude::*;

/// One row of `webhook_receipts`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_receipts")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub id: String,
    pub source_id: String,
    pub program_id: String,
    pub provider_event_id: Option<String>,
    pub dedupe_key: Option<String>,
    pub payload: String,
    pub status: crate::db::states::ReceiptStatus,
    pub reason: Option<String>,
    pub deal_id: Option<String>,
    pub attempts: i32,
    pub available_at_ms: Option<i64>,
    pub received_at: DateTimeUtc,
    pub processed_at: Option<DateTimeUtc>,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
