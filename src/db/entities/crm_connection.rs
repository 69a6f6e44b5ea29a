//! Entity for the `crm_connections` table.

use sea_orm::entity::prelude::*;

/// One row of `crm_connections`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "crm_connections")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    pub kind: crate::db::states::CrmKind,
    pub program_id: String,
    pub base_url: String,
    pub credentials_ciphertext: String,
    pub schedule: String,
    pub referral_code_field: Option<String>,
    pub api_version: Option<String>,
    pub cursor: Option<String>,
    pub status: crate::db::states::ConnectionStatus,
    pub last_error: Option<String>,
    pub last_synced_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
