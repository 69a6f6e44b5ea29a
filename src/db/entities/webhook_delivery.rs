//! Entity for the `webhook_deliveries` table.

use sea_orm::entity::prelude::*;

/// One row of `webhook_deliveries`: one event to one endpoint, with its latest attempt.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_deliveries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub event_type: String,
    pub status: crate::db::states::DeliveryStatus,
    pub attempt: i32,
    pub status_code: Option<i32>,
    pub latency_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<DateTimeUtc>,
    pub delivered_at: Option<DateTimeUtc>,
    pub next_attempt_at_ms: Option<i64>,
    pub claim_token: Option<String>,
    pub created_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
