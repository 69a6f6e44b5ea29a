//! Day-two management: endpoints get their own rate limit and can be deleted (their history
//! stays); inbound webhook sources can be rotated (the previous secret verifies until it
//! expires), disabled and deleted.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000001_day_two"
    }
}

#[derive(DeriveIden)]
enum WebhookEndpoints {
    Table,
    RateLimit,
    DeletedAt,
}

#[derive(DeriveIden)]
enum WebhookSources {
    Table,
    PreviousSecretCiphertext,
    PreviousSecretExpiresAt,
    Status,
    DeletedAt,
    UpdatedAt,
}

/// One column per `ALTER TABLE`: SQLite adds a single column per statement.
fn add(table: impl IntoIden, column: ColumnDef) -> TableAlterStatement {
    Table::alter()
        .table(table)
        .add_column(column.to_owned())
        .to_owned()
}

fn drop(table: impl IntoIden, column: impl IntoIden) -> TableAlterStatement {
    Table::alter().table(table).drop_column(column).to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for statement in [
            add(
                WebhookEndpoints::Table,
                ColumnDef::new(WebhookEndpoints::RateLimit)
                    .integer()
                    .null()
                    .to_owned(),
            ),
            add(
                WebhookEndpoints::Table,
                ColumnDef::new(WebhookEndpoints::DeletedAt)
                    .timestamp_with_time_zone()
                    .null()
                    .to_owned(),
            ),
            add(
                WebhookSources::Table,
                ColumnDef::new(WebhookSources::PreviousSecretCiphertext)
                    .string()
                    .null()
                    .to_owned(),
            ),
            add(
                WebhookSources::Table,
                ColumnDef::new(WebhookSources::PreviousSecretExpiresAt)
                    .timestamp_with_time_zone()
                    .null()
                    .to_owned(),
            ),
            add(
                WebhookSources::Table,
                ColumnDef::new(WebhookSources::Status)
                    .string()
                    .not_null()
                    .default("ENABLED")
                    .to_owned(),
            ),
            add(
                WebhookSources::Table,
                ColumnDef::new(WebhookSources::DeletedAt)
                    .timestamp_with_time_zone()
                    .null()
                    .to_owned(),
            ),
            add(
                WebhookSources::Table,
                ColumnDef::new(WebhookSources::UpdatedAt)
                    .timestamp_with_time_zone()
                    .null()
                    .to_owned(),
            ),
        ] {
            manager.alter_table(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for statement in [
            drop(WebhookSources::Table, WebhookSources::UpdatedAt),
            drop(WebhookSources::Table, WebhookSources::DeletedAt),
            drop(WebhookSources::Table, WebhookSources::Status),
            drop(
                WebhookSources::Table,
                WebhookSources::PreviousSecretExpiresAt,
            ),
            drop(
                WebhookSources::Table,
                WebhookSources::PreviousSecretCiphertext,
            ),
            drop(WebhookEndpoints::Table, WebhookEndpoints::DeletedAt),
            drop(WebhookEndpoints::Table, WebhookEndpoints::RateLimit),
        ] {
            manager.alter_table(statement).await?;
        }
        Ok(())
    }
}
