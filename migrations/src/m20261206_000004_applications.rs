//! Public partner applications (DESIGN §13): a program's application settings and the
//! applications received, reviewed into partners.

use sea_orm_migration::prelude::*;

use crate::helpers::{Kind, add, column, drop_columns, index, name, table};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000004_applications"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use Kind::*;
        let mut open = column("applications_open", Bool, false);
        open.default(false);
        let mut domains = column("auto_approve_domains", Json, false);
        domains.default(Expr::val("[]"));
        for statement in [add("programs", open), add("programs", domains)] {
            manager.alter_table(statement).await?;
        }
        manager
            .create_table(table(
                "partner_applications",
                &["id"],
                vec![
                    column("id", Id, false),
                    column("program_id", Id, false),
                    column("name", Text, false),
                    column("domain", Text, false),
                    column("contact_email", Text, false),
                    column("contact_name", Text, true),
                    column("message", Text, true),
                    column("status", Text, false),
                    column("reason", Text, true),
                    column("partner_id", Id, true),
                    column("created_at", Time, false),
                    column("reviewed_at", Time, true),
                ],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_partner_applications_program",
                "partner_applications",
                &["program_id", "id"],
                false,
            ))
            .await?;
        // The duplicate check looks for the company's open application.
        manager
            .create_index(index(
                "idx_partner_applications_domain",
                "partner_applications",
                &["program_id", "domain"],
                false,
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(name("partner_applications")).to_owned())
            .await?;
        drop_columns(
            manager,
            &[
                ("programs", "auto_approve_domains"),
                ("programs", "applications_open"),
            ],
        )
        .await
    }
}
