//! Entity for the `crm_referral_pushes` table.

use sea_orm::entity::prelude::*;

/// One row of `crm_referral_pushes`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "crm_referral_pushes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub connection_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub referral_id: String,
    pub company_external_id: Option<String>,
    pub contact_external_id: Option<String>,
    pub status: crate::db::states::PushStatus,
    pub error: Option<String>,
    pub pushed_at: Option<DateTimeUtc>,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
