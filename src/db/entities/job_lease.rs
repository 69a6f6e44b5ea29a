//! Entity for the `job_leases` table: who runs a job now, and when it is next due.

use sea_orm::entity::prelude::*;

/// One row of `job_leases`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "job_leases")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub holder: Option<String>,
    pub run_id: Option<String>,
    pub expires_at_ms: i64,
    pub due_at_ms: i64,
    pub cursor: Option<String>,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
