//! Commit-order-safe event reading on PostgreSQL. Events are numbered (`seq`) when inserted,
//! but transactions commit in another order, so a reader paging by `seq` could pass a number
//! that a slower transaction fills in afterwards, and miss that event for good. Each event now
//! records the id of the transaction that wrote it (`tx_id`); readers page by `(tx_id, seq)` and
//! only return events of transactions older than every transaction still in flight
//! (`pg_snapshot_xmin`): all of those are finished, so nothing can appear behind a reader.
//! SQLite has one writer at a time, so its `seq` order is commit order and `tx_id` stays empty.

use sea_orm_migration::{prelude::*, sea_orm::DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000003_event_visibility"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        match manager.get_database_backend() {
            DatabaseBackend::Postgres => {
                // Events written before this migration are all committed: number them 0.
                conn.execute_unprepared(
                    "ALTER TABLE events ADD COLUMN tx_id BIGINT NOT NULL DEFAULT 0",
                )
                .await?;
                conn.execute_unprepared(
                    "ALTER TABLE events ALTER COLUMN tx_id \
                     SET DEFAULT (pg_current_xact_id()::text::bigint)",
                )
                .await?;
                conn.execute_unprepared("CREATE INDEX idx_events_tx_seq ON events (tx_id, seq)")
                    .await?;
            }
            _ => {
                conn.execute_unprepared("ALTER TABLE events ADD COLUMN tx_id BIGINT")
                    .await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        crate::helpers::on_postgres(manager, &["DROP INDEX idx_events_tx_seq"]).await?;
        conn.execute_unprepared("ALTER TABLE events DROP COLUMN tx_id")
            .await?;
        Ok(())
    }
}
