//! Entity for the `exchange_rates` table.

use sea_orm::entity::prelude::*;

/// One row of `exchange_rates`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "exchange_rates")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub base: String,
    pub quote: String,
    pub rate: String,
    pub effective_at: DateTimeUtc,
    pub created_at: DateTimeUtc,
}

/// No relations are declared: joins are written explicitly where they are needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
