//! Entity for the `invoices` table: paid invoices of a billing source.

use sea_orm::entity::prelude::*;

/// One row of `invoices`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, tandem_derive::NativeRow)]
#[sea_orm(table_name = "invoices")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub program_id: String,
    pub source_id: String,
    /// Stripe's invoice id (`in_…`).
    pub external_id: String,
    /// Stripe's customer id (`cus_…`).
    pub billing_customer: Option<String>,
    pub customer_email: Option<String>,
    /// The company domain the invoice links on while unlinked (the billing customer's
    /// `metadata.company_domain`, else its email's domain; never a free-mail domain).
    pub link_domain: Option<String>,
    /// The referred customer it is linked to (null: unlinked, kept until one appears).
    pub customer_id: Option<String>,
    pub partner_id: Option<String>,
    /// Upper-case ISO 4217.
    pub currency: String,
    /// Decimal amounts in major units.
    pub amount_paid: String,
    pub amount_excluding_tax: String,
    pub paid_at: DateTimeUtc,
    pub created_at: DateTimeUtc,
    /// Last change (applied event, refund, credit note, link): what incremental reconcile scans.
    pub updated_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
