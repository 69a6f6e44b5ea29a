//! Entity for the `webhook_endpoints` table.

use sea_orm::entity::prelude::*;

/// One row of `webhook_endpoints`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_endpoints")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub url: String,
    pub description: Option<String>,
    pub event_types: Json,
    pub program_id: Option<String>,
    pub owner_key_id: String,
    pub partner_id: Option<String>,
    pub secret_ciphertext: String,
    pub previous_secret_ciphertext: Option<String>,
    pub previous_secret_expires_at: Option<DateTimeUtc>,
    pub status: crate::db::states::EndpointStatus,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// Deliveries per second to this endpoint (`None`: the hub's `webhook_rate_limit`).
    pub rate_limit: Option<i32>,
    /// When it was deleted (its deliveries stay as history).
    pub deleted_at: Option<DateTimeUtc>,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
