//! Entity for the `referrals` table.

use sea_orm::entity::prelude::*;

/// One row of `referrals`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, tandem_derive::NativeRow)]
#[sea_orm(table_name = "referrals")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub program_id: String,
    pub partner_id: String,
    pub company_name: String,
    pub company_domain: Option<String>,
    pub contact_name: Option<String>,
    pub contact_email: Option<String>,
    pub notes: Option<String>,
    pub status: crate::db::states::ReferralStatus,
    pub duplicate_of_id: Option<String>,
    pub submitted_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub accepted_at: Option<DateTimeUtc>,
    pub protected_until: Option<DateTimeUtc>,
    pub extensions: i32,
    pub rejection_reason: Option<String>,
    pub conflict_deal_id: Option<String>,
    pub conflict_customer_id: Option<String>,
    pub engaged_at: Option<DateTimeUtc>,
    pub sla_due_at: Option<DateTimeUtc>,
    pub sla_state: Option<crate::db::states::SlaState>,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
