//! The CRM's company id of a deal (HubSpot company, Salesforce Account, Pipedrive organization):
//! a referred customer is recognised by it as well as by its domain (DESIGN §11).

use sea_orm_migration::prelude::*;

use crate::helpers::{Kind, add, column, drop_columns, index};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000006_crm_company"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(add("deals", column("crm_company_id", Kind::Text, true)))
            .await?;
        manager
            .create_index(index(
                "idx_customers_crm_company",
                "customers",
                &["program_id", "crm_company_id"],
                false,
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX idx_customers_crm_company")
            .await?;
        drop_columns(manager, &[("deals", "crm_company_id")]).await
    }
}
