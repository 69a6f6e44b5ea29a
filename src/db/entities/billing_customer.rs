//! Entity for the `billing_customers` table: the billing system's customers as last seen.

use sea_orm::entity::prelude::*;

/// One row of `billing_customers`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "billing_customers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub source_id: String,
    pub program_id: String,
    /// Stripe's customer id (`cus_…`).
    pub external_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    /// `metadata.tandem_referral_code`, upper-cased.
    pub referral_code: Option<String>,
    /// `metadata.company_domain`, normalised.
    pub company_domain: Option<String>,
    /// The event's creation time: an older event does not overwrite a newer one.
    pub event_at: DateTimeUtc,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
