//! Inbound webhooks: the sources CRMs post to, and the durable inbox of verified receipts.
//!
//! A receipt is committed before the CRM gets its 2xx and is applied from here by the inbox
//! worker, so a crash between acknowledgement and application loses nothing.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000001_webhooks"
    }
}

#[derive(DeriveIden)]
enum WebhookSources {
    Table,
    Id,
    ProgramId,
    Name,
    Kind,
    ConnectionId,
    /// The verification secret, encrypted with `TANDEM_SECRET_KEY` (never stored in clear).
    SecretCiphertext,
    SalesforceOrgId,
    /// HubSpot only: which signature scheme (`V1`, `V2`, `V3`) the app uses.
    HubspotSignatureVersion,
    /// Pipedrive only: the custom field key carrying the referral code.
    ReferralCodeField,
    CreatedAt,
}

#[derive(DeriveIden)]
enum WebhookReceipts {
    Table,
    /// Insertion order: the worker applies receipts in this order.
    Seq,
    Id,
    SourceId,
    ProgramId,
    /// The provider's event id (`webhook-id`, HubSpot `eventId`, Pipedrive `meta.id`,
    /// Salesforce notification `Id`).
    ProviderEventId,
    /// Equal to `provider_event_id` on the first receipt of an event, NULL on later copies
    /// (status DUPLICATE): the unique index on (source_id, dedupe_key) is what makes a repeat
    /// impossible to apply twice.
    DedupeKey,
    /// The event as received (the raw body, or one element of a batched body).
    Payload,
    Status,
    Reason,
    DealId,
    Attempts,
    /// Epoch milliseconds after which the worker may (re)try; NULL parks the receipt.
    AvailableAtMs,
    ReceivedAt,
    ProcessedAt,
}

#[derive(DeriveIden)]
enum Programs {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WebhookSources::Table)
                    .col(string(WebhookSources::Id).primary_key())
                    .col(string(WebhookSources::ProgramId))
                    .col(text(WebhookSources::Name))
                    .col(string(WebhookSources::Kind))
                    .col(string_null(WebhookSources::ConnectionId))
                    .col(text(WebhookSources::SecretCiphertext))
                    .col(string_null(WebhookSources::SalesforceOrgId))
                    .col(string_null(WebhookSources::HubspotSignatureVersion))
                    .col(string_null(WebhookSources::ReferralCodeField))
                    .col(timestamp_with_time_zone(WebhookSources::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(WebhookSources::Table, WebhookSources::ProgramId)
                            .to(Programs::Table, Programs::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(WebhookReceipts::Table)
                    .col(big_pk_auto(WebhookReceipts::Seq))
                    .col(string_uniq(WebhookReceipts::Id))
                    .col(string(WebhookReceipts::SourceId))
                    .col(string(WebhookReceipts::ProgramId))
                    .col(string_null(WebhookReceipts::ProviderEventId))
                    .col(string_null(WebhookReceipts::DedupeKey))
                    .col(text(WebhookReceipts::Payload))
                    .col(string(WebhookReceipts::Status))
                    .col(text_null(WebhookReceipts::Reason))
                    .col(string_null(WebhookReceipts::DealId))
                    .col(integer(WebhookReceipts::Attempts).default(0))
                    .col(big_integer_null(WebhookReceipts::AvailableAtMs))
                    .col(timestamp_with_time_zone(WebhookReceipts::ReceivedAt))
                    .col(timestamp_with_time_zone_null(WebhookReceipts::ProcessedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(WebhookReceipts::Table, WebhookReceipts::SourceId)
                            .to(WebhookSources::Table, WebhookSources::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, cols, unique) in [
            (
                "uq_webhook_receipts_source_event",
                vec![
                    WebhookReceipts::SourceId.into_iden(),
                    WebhookReceipts::DedupeKey.into_iden(),
                ],
                true,
            ),
            (
                "idx_webhook_receipts_source",
                vec![
                    WebhookReceipts::SourceId.into_iden(),
                    WebhookReceipts::Seq.into_iden(),
                ],
                false,
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table(WebhookReceipts::Table);
            for col in cols {
                index.col(col);
            }
            if unique {
                index.unique();
            }
            manager.create_index(index.to_owned()).await?;
        }
        // The worker's queue: a partial index holds only what is still to apply (parked receipts
        // excluded), so claiming stays cheap however long the history grows (same syntax on
        // SQLite and PostgreSQL).
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX idx_webhook_receipts_pending ON webhook_receipts (seq) \
                 WHERE status = 'RECEIVED' AND available_at_ms IS NOT NULL",
            )
            .await?;
        // A queue table: vacuum and analyze it often so applied receipts leave the index.
        crate::helpers::on_postgres(
            manager,
            &[
                "ALTER TABLE webhook_receipts SET (autovacuum_vacuum_scale_factor = 0.02, \
               autovacuum_analyze_scale_factor = 0.02)",
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WebhookReceipts::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(WebhookSources::Table).to_owned())
            .await
    }
}
