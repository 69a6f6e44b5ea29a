//! Entity for the `sync_runs` table.

use sea_orm::entity::prelude::*;

/// One row of `sync_runs`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "sync_runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub connection_id: String,
    pub status: crate::db::states::JobRunStatus,
    pub started_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
    pub pages: i32,
    pub deals_seen: i32,
    pub deals_changed: i32,
    pub receipts_applied: i32,
    pub referrals_pushed: i32,
    pub error: Option<String>,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
