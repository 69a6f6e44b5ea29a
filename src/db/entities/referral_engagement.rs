//! Entity for the `referral_engagements` table: each recorded contact of sales with a referred
//! lead (DESIGN §12). The referral keeps the earliest as `engaged_at`.

use sea_orm::entity::prelude::*;

/// One row of `referral_engagements`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, tandem_derive::NativeRow)]
#[sea_orm(table_name = "referral_engagements")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub referral_id: String,
    pub program_id: String,
    /// What sales did (`call`, `email`, `meeting`, …), as the caller named it.
    pub kind: String,
    /// When it happened.
    pub at: DateTimeUtc,
    /// A note for the program's managers (never shown to partner keys).
    pub note: Option<String>,
    pub source: crate::db::states::EngagementSource,
    pub created_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
