//! Outbound webhooks: endpoints technology-integration partners register, one delivery row per
//! (endpoint, event), and the fan-out cursor over the event outbox.
//!
//! The fan-out reads committed events after its cursor and inserts a PENDING delivery for every
//! matching endpoint, moving the cursor in the same transaction. Delivery workers claim due
//! deliveries by pushing `next_attempt_at_ms` one claim lease ahead (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL), so a crashed worker's claims fall due again when the lease runs out.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000004_outbound_webhooks"
    }
}

#[derive(DeriveIden)]
enum WebhookEndpoints {
    Table,
    Id,
    Url,
    Description,
    /// JSON array of event type names.
    EventTypes,
    /// Only events of this program (NULL: every program the owner may see).
    ProgramId,
    /// The key that created it: its role and grants scope what the endpoint receives; a revoked
    /// owner's endpoints receive nothing.
    OwnerKeyId,
    /// PARTNER-owned endpoints: the partner (its other keys manage it too).
    PartnerId,
    /// The signing secret (`whsec_…`), encrypted with `TANDEM_SECRET_KEY`.
    SecretCiphertext,
    /// The secret before the last rotation, still signed with until `previous_secret_expires_at`.
    PreviousSecretCiphertext,
    PreviousSecretExpiresAt,
    /// ENABLED or DISABLED.
    Status,
    DisabledReason,
    /// Start of the current run of failed attempts (NULL after any success).
    FailingSince,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    /// UUIDv7: time ordered.
    Id,
    EndpointId,
    EventId,
    EventType,
    /// PENDING (due at `next_attempt_at_ms`), SUCCEEDED or FAILED (gave up).
    Status,
    /// Attempts made so far.
    Attempt,
    StatusCode,
    LatencyMs,
    LastError,
    LastAttemptAt,
    DeliveredAt,
    /// Epoch milliseconds at which the delivery is due (a claim moves it one lease ahead);
    /// NULL once it has succeeded or failed for good.
    NextAttemptAtMs,
    /// The claim the delivery is under: a stale worker's result is not recorded over a newer one.
    ClaimToken,
    CreatedAt,
}

#[derive(DeriveIden)]
enum EventCursors {
    Table,
    Name,
    TxId,
    Seq,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WebhookEndpoints::Table)
                    .col(string(WebhookEndpoints::Id).primary_key())
                    .col(text(WebhookEndpoints::Url))
                    .col(text_null(WebhookEndpoints::Description))
                    .col(json(WebhookEndpoints::EventTypes))
                    .col(string_null(WebhookEndpoints::ProgramId))
                    .col(string(WebhookEndpoints::OwnerKeyId))
                    .col(string_null(WebhookEndpoints::PartnerId))
                    .col(text(WebhookEndpoints::SecretCiphertext))
                    .col(text_null(WebhookEndpoints::PreviousSecretCiphertext))
                    .col(timestamp_with_time_zone_null(
                        WebhookEndpoints::PreviousSecretExpiresAt,
                    ))
                    .col(string(WebhookEndpoints::Status))
                    .col(text_null(WebhookEndpoints::DisabledReason))
                    .col(timestamp_with_time_zone_null(
                        WebhookEndpoints::FailingSince,
                    ))
                    .col(timestamp_with_time_zone(WebhookEndpoints::CreatedAt))
                    .col(timestamp_with_time_zone(WebhookEndpoints::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(WebhookEndpoints::Table, WebhookEndpoints::ProgramId)
                            .to(Alias::new("programs"), Alias::new("id"))
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(WebhookEndpoints::Table, WebhookEndpoints::OwnerKeyId)
                            .to(Alias::new("api_keys"), Alias::new("id"))
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookDeliveries::Table)
                    .col(string(WebhookDeliveries::Id).primary_key())
                    .col(string(WebhookDeliveries::EndpointId))
                    .col(string(WebhookDeliveries::EventId))
                    .col(string(WebhookDeliveries::EventType))
                    .col(string(WebhookDeliveries::Status))
                    .col(integer(WebhookDeliveries::Attempt))
                    .col(integer_null(WebhookDeliveries::StatusCode))
                    .col(big_integer_null(WebhookDeliveries::LatencyMs))
                    .col(text_null(WebhookDeliveries::LastError))
                    .col(timestamp_with_time_zone_null(
                        WebhookDeliveries::LastAttemptAt,
                    ))
                    .col(timestamp_with_time_zone_null(
                        WebhookDeliveries::DeliveredAt,
                    ))
                    .col(big_integer_null(WebhookDeliveries::NextAttemptAtMs))
                    .col(string_null(WebhookDeliveries::ClaimToken))
                    .col(timestamp_with_time_zone(WebhookDeliveries::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(WebhookDeliveries::Table, WebhookDeliveries::EndpointId)
                            .to(WebhookEndpoints::Table, WebhookEndpoints::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EventCursors::Table)
                    .col(string(EventCursors::Name).primary_key())
                    .col(big_integer(EventCursors::TxId))
                    .col(big_integer(EventCursors::Seq))
                    .col(timestamp_with_time_zone(EventCursors::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        let conn = manager.get_connection();
        for sql in [
            "CREATE UNIQUE INDEX ux_webhook_deliveries_endpoint_event \
             ON webhook_deliveries (endpoint_id, event_id)",
            "CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries (next_attempt_at_ms) \
             WHERE status = 'PENDING'",
            "CREATE INDEX idx_webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id)",
            "CREATE INDEX idx_events_created_at ON events (created_at)",
        ] {
            conn.execute_unprepared(sql).await?;
        }
        // Deliveries are updated several times each: keep their statistics and dead tuples in
        // check where autovacuum runs at all. And wake other instances' event feeds at commit
        // (payload-free; readers query).
        crate::helpers::on_postgres(
            manager,
            &[
                "ALTER TABLE webhook_deliveries SET (autovacuum_vacuum_scale_factor = 0.02, \
                 autovacuum_analyze_scale_factor = 0.02)",
                "CREATE FUNCTION tandem_notify_events() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN PERFORM pg_notify('tandem_events', ''); RETURN NULL; END $$",
                "CREATE TRIGGER tandem_events_notify AFTER INSERT ON events \
                 FOR EACH STATEMENT EXECUTE FUNCTION tandem_notify_events()",
            ],
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        crate::helpers::on_postgres(
            manager,
            &[
                "DROP TRIGGER tandem_events_notify ON events",
                "DROP FUNCTION tandem_notify_events()",
            ],
        )
        .await?;
        conn.execute_unprepared("DROP INDEX idx_events_created_at")
            .await?;
        for table in ["event_cursors", "webhook_deliveries", "webhook_endpoints"] {
            manager
                .drop_table(Table::drop().table(Alias::new(table)).to_owned())
                .await?;
        }
        Ok(())
    }
}
