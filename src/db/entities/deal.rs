//! Entity for the `deals` table.

use sea_orm::entity::prelude::*;

/// One row of `deals`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, tandem_derive::NativeRow)]
#[sea_orm(table_name = "deals")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub program_id: String,
    pub source_id: String,
    pub external_id: String,
    pub name: String,
    pub amount: String,
    pub currency: String,
    pub status: crate::db::states::DealStatus,
    pub stage: Option<String>,
    pub closed_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub company_domain: Option<String>,
    pub contact_emails: Json,
    pub referral_code: Option<String>,
    pub deleted: bool,
    pub first_seen_at: DateTimeUtc,
    pub last_applied_at: DateTimeUtc,
    /// Set when an update took the deal out of WON after its clawback period: it keeps the
    /// commission of the WON snapshot below.
    pub locked_at: Option<DateTimeUtc>,
    pub locked_amount: Option<String>,
    pub locked_currency: Option<String>,
    pub locked_closed_at: Option<DateTimeUtc>,
    /// The CRM's id of the deal's company, if it has one.
    pub crm_company_id: Option<String>,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

/// The columns of a deal that GraphQL shows: what the `Deal` type is built from, so that a
/// page of deals reads and decodes these alone rather than the bookkeeping columns (source,
/// sync times, the clawback lock) as well.
#[derive(Clone, Debug, PartialEq, sea_orm::FromQueryResult, tandem_derive::NativeRow)]
pub struct View {
    pub id: String,
    pub external_id: String,
    pub name: String,
    pub amount: String,
    pub currency: String,
    pub status: crate::db::states::DealStatus,
    pub stage: Option<String>,
    pub closed_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub company_domain: Option<String>,
    pub contact_emails: Json,
    pub referral_code: Option<String>,
    pub deleted: bool,
}

impl From<Model> for View {
    fn from(m: Model) -> View {
        View {
            id: m.id,
            external_id: m.external_id,
            name: m.name,
            amount: m.amount,
            currency: m.currency,
            status: m.status,
            stage: m.stage,
            closed_at: m.closed_at,
            created_at: m.created_at,
            updated_at: m.updated_at,
            company_domain: m.company_domain,
            contact_emails: m.contact_emails,
            referral_code: m.referral_code,
            deleted: m.deleted,
        }
    }
}
