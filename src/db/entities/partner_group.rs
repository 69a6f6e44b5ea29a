//! Entity for the `partner_groups` table: a ranked group of a program with its own commission
//! plan, hold period and promotion rules (DESIGN §13).

use sea_orm::entity::prelude::*;

/// One row of `partner_groups`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, tandem_derive::NativeRow)]
#[sea_orm(table_name = "partner_groups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub program_id: String,
    pub name: String,
    /// 0 is the program's default group; higher ranks are better groups.
    pub rank: i32,
    /// The commission plan, as JSON (`CommissionPlan`).
    pub commission: Json,
    pub hold_days: i32,
    pub min_deals_won: i32,
    /// Decimal text, program currency.
    pub min_won_revenue: String,
    pub window_days: i32,
    /// JSON array of course keys.
    pub required_certifications: Json,
    pub min_certified_people: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
