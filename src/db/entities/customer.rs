//! Entity for the `customers` table: companies a partner brought (DESIGN §11).

use sea_orm::entity::prelude::*;

/// One row of `customers`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, tandem_derive::NativeRow)]
#[sea_orm(table_name = "customers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub program_id: String,
    pub partner_id: String,
    /// Normalised company domain (unique per program).
    pub domain: Option<String>,
    pub name: String,
    pub crm_company_id: Option<String>,
    /// The billing system's customer id (Stripe `cus_…`) it was linked through, if any.
    pub billing_customer_id: Option<String>,
    /// The won deal that made it a customer, if a deal did.
    pub deal_id: Option<String>,
    pub first_won_at: DateTimeUtc,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
