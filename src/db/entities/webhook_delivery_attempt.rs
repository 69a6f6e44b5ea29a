//! Entity for the `webhook_delivery_attempts` table.

use sea_orm::entity::prelude::*;

/// One attempt at a delivery: when, what the endpoint answered (status, the first KiB of the
/// body) or what went wrong.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, tandem_derive::NativeRow)]
#[sea_orm(table_name = "webhook_delivery_attempts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub delivery_id: String,
    pub attempt: i32,
    pub attempted_at: DateTimeUtc,
    pub status_code: Option<i32>,
    pub latency_ms: Option<i64>,
    pub response_snippet: Option<String>,
    pub error: Option<String>,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
