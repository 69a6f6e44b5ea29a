//! Day-two management: endpoints get their own rate limit and can be deleted (their history
//! stays); every delivery attempt is kept (`webhook_delivery_attempts`: status, latency, the
//! first KiB of the answer or the error); inbound webhook sources can be rotated (the previous
//! secret verifies until it expires), disabled and deleted.

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
enum WebhookDeliveryAttempts {
    Table,
    Id,
    DeliveryId,
    Attempt,
    AttemptedAt,
    StatusCode,
    LatencyMs,
    ResponseSnippet,
    Error,
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
        manager
            .create_table(
                Table::create()
                    .table(WebhookDeliveryAttempts::Table)
                    .col(
                        ColumnDef::new(WebhookDeliveryAttempts::Id)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveryAttempts::DeliveryId)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveryAttempts::Attempt)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveryAttempts::AttemptedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveryAttempts::StatusCode)
                            .integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveryAttempts::LatencyMs)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveryAttempts::ResponseSnippet)
                            .text()
                            .null(),
                    )
                    .col(ColumnDef::new(WebhookDeliveryAttempts::Error).text().null())
                    .to_owned(),
            )
            .await?;
        // A delivery's attempts are read in id order (ids are time-ordered).
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_delivery_attempts_delivery")
                    .table(WebhookDeliveryAttempts::Table)
                    .col(WebhookDeliveryAttempts::DeliveryId)
                    .col(WebhookDeliveryAttempts::Id)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(WebhookDeliveryAttempts::Table)
                    .to_owned(),
            )
            .await?;
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
