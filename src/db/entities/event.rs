//! Entity for the `events` table.

use sea_orm::entity::prelude::*;

/// One row of `events`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub id: String,
    #[sea_orm(column_name = "type")]
    pub event_type: String,
    pub program_id: String,
    pub partner_id: Option<String>,
    pub data: Json,
    pub created_at: DateTimeUtc,
    /// PostgreSQL: the writing transaction's id (set by the column default); null on SQLite.
    pub tx_id: Option<i64>,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
