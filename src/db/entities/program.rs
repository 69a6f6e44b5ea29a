//! Entity for the `programs` table.

use sea_orm::entity::prelude::*;

/// One row of `programs`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, tandem_derive::NativeRow)]
#[sea_orm(table_name = "programs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub name: String,
    pub kind: crate::db::states::ProgramKind,
    pub currency: String,
    pub commission_type: crate::db::states::CommissionType,
    pub commission_rate: Option<String>,
    pub commission_flat_amount: Option<String>,
    pub commission_tiers: Json,
    pub cap_per_deal: Option<String>,
    pub min_deal_amount: Option<String>,
    pub attribution_window_days: i32,
    pub hold_days: i32,
    pub clawback_days: i32,
    pub recurring_basis: Option<crate::db::states::RecurringBasis>,
    pub recurring_months: Option<i32>,
    pub recurring_rate: Option<String>,
    pub registration_approval: crate::db::states::RegistrationApproval,
    pub protection_days: i32,
    pub extension_days: i32,
    pub max_extensions: i32,
    pub lead_sla_minutes: Option<i32>,
    pub applications_open: bool,
    /// JSON array of normalised domains whose applicants are approved at once.
    pub auto_approve_domains: Json,
    /// Cron of the group reviews (demotions); null: quarterly.
    pub group_review_schedule: Option<String>,
    /// When the groups were last reviewed (set when the first group is created).
    pub groups_reviewed_at: Option<DateTimeUtc>,
    /// The program's own account (SEPA debtor), sealed.
    pub payout_account: Option<String>,
    pub payout_account_masked: Option<String>,
    /// Accruals above this amount (decimal text, program currency) wait for a manager.
    pub manual_review_above: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
