//! The commission engine: integer cents for ledger and payout money (so that balances and KPIs
//! are SQL aggregates without floats), a per-deal sequence that makes a concurrent second
//! reconciler's entry collide instead of doubling, the clawback lock on deals, the
//! reconciliation state per (deal, partner), and job leases.

use rust_decimal::Decimal;
use sea_orm_migration::{
    prelude::*,
    schema::*,
    sea_orm::{ConnectionTrait, DatabaseBackend, Statement},
};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000002_commissions"
    }
}

#[derive(DeriveIden)]
enum Deals {
    Table,
    /// Set when an update took the deal out of WON more than `clawbackDays` after it closed:
    /// it then keeps the commission of the snapshot below.
    LockedAt,
    LockedAmount,
    LockedCurrency,
    LockedClosedAt,
}

#[derive(DeriveIden)]
enum DealCommissions {
    Table,
    DealId,
    PartnerId,
    ProgramId,
    /// The deal amount in the program currency (exact decimal), null when no rate applies.
    AmountProgram,
    /// The same, rounded to cents, for SQL sums (KPIs).
    AmountProgramCents,
    /// The status the computation counted: OPEN, WON or LOST (deleted counts LOST).
    DealStatus,
    ClosedAt,
    /// The deal's creation (KPIs count attributed deals by it).
    DealCreatedAt,
    /// EARNED, NOT_EARNED, MISSING_FX_RATE, LOCKED, or DETACHED (attributed elsewhere now).
    State,
    /// What the ledger should hold for this (deal, partner) (the ledger itself is the truth
    /// for what it holds).
    ExpectedCents,
    ComputedAt,
}

#[derive(DeriveIden)]
enum JobLeases {
    Table,
    Name,
    Holder,
    RunId,
    ExpiresAtMs,
    /// The next scheduled run may start from this time (a run that fired late on another
    /// instance finds it in the future and skips).
    DueAtMs,
    /// Job-specific resume state (the reconciler's watermark).
    Cursor,
}

async fn cents_backfill(
    manager: &SchemaManager<'_>,
    table: &str,
    text_col: &str,
    cents_col: &str,
) -> Result<(), DbErr> {
    let conn = manager.get_connection();
    let backend = manager.get_database_backend();
    let rows = conn
        .query_all_raw(Statement::from_string(
            backend,
            format!("SELECT id, {text_col} FROM {table}"),
        ))
        .await?;
    for row in rows {
        let id: String = row.try_get("", "id")?;
        let text: String = row.try_get("", text_col)?;
        let value: Decimal = text
            .parse()
            .map_err(|e| DbErr::Migration(format!("{table}.{text_col} {text:?}: {e}")))?;
        let cents = (value * Decimal::ONE_HUNDRED)
            .round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
        let cents: i64 = cents
            .to_string()
            .parse()
            .map_err(|e| DbErr::Migration(format!("{table}.{text_col} {text:?}: {e}")))?;
        let p = |n: usize| match backend {
            DatabaseBackend::Postgres => format!("${n}"),
            _ => format!("?{n}"),
        };
        conn.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE {table} SET {cents_col} = {} WHERE id = {}",
                p(1),
                p(2)
            ),
            [cents.into(), id.into()],
        ))
        .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        for sql in [
            "ALTER TABLE ledger_entries ADD COLUMN amount_cents BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE ledger_entries ADD COLUMN deal_seq INTEGER",
            "ALTER TABLE payouts ADD COLUMN total_cents BIGINT NOT NULL DEFAULT 0",
        ] {
            conn.execute_unprepared(sql).await?;
        }
        cents_backfill(manager, "ledger_entries", "amount", "amount_cents").await?;
        cents_backfill(manager, "payouts", "total", "total_cents").await?;
        for sql in [
            "ALTER TABLE ledger_entries DROP COLUMN amount",
            "ALTER TABLE payouts DROP COLUMN total",
            // A reconciler writes entry n+1 of a (partner, deal) only once: a second reconciler
            // that read the same state collides here instead of paying twice.
            "CREATE UNIQUE INDEX ux_ledger_entries_deal_seq \
             ON ledger_entries (partner_id, deal_id, deal_seq)",
            "CREATE INDEX idx_ledger_entries_due ON ledger_entries (available_at) \
             WHERE status = 'PENDING'",
            "CREATE INDEX idx_ledger_entries_program ON ledger_entries (program_id, created_at)",
            "CREATE INDEX idx_ledger_entries_payout ON ledger_entries (payout_id)",
            "CREATE INDEX idx_deals_last_applied ON deals (last_applied_at)",
            "CREATE INDEX idx_attributions_updated ON attributions (updated_at)",
            "CREATE INDEX idx_partners_updated ON partners (updated_at)",
            "CREATE INDEX idx_exchange_rates_created ON exchange_rates (created_at)",
        ] {
            conn.execute_unprepared(sql).await?;
        }
        // SQLite accepts one alteration per ALTER TABLE.
        for column in [
            timestamp_with_time_zone_null(Deals::LockedAt),
            string_null(Deals::LockedAmount),
            string_null(Deals::LockedCurrency),
            timestamp_with_time_zone_null(Deals::LockedClosedAt),
        ] {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter()
                        .table(Deals::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(DealCommissions::Table)
                    .col(string(DealCommissions::DealId))
                    .col(string(DealCommissions::PartnerId))
                    .col(string(DealCommissions::ProgramId))
                    .col(string_null(DealCommissions::AmountProgram))
                    .col(big_integer_null(DealCommissions::AmountProgramCents))
                    .col(string(DealCommissions::DealStatus))
                    .col(timestamp_with_time_zone_null(DealCommissions::ClosedAt))
                    .col(timestamp_with_time_zone(DealCommissions::DealCreatedAt))
                    .col(string(DealCommissions::State))
                    .col(big_integer(DealCommissions::ExpectedCents))
                    .col(timestamp_with_time_zone(DealCommissions::ComputedAt))
                    .primary_key(
                        Index::create()
                            .col(DealCommissions::DealId)
                            .col(DealCommissions::PartnerId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(DealCommissions::Table, DealCommissions::DealId)
                            .to(Alias::new("deals"), Alias::new("id"))
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(DealCommissions::Table, DealCommissions::PartnerId)
                            .to(Alias::new("partners"), Alias::new("id"))
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        for sql in [
            "CREATE INDEX idx_deal_commissions_partner ON deal_commissions (partner_id, closed_at)",
            "CREATE INDEX idx_deal_commissions_program ON deal_commissions \
             (program_id, deal_status, partner_id)",
        ] {
            conn.execute_unprepared(sql).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(JobLeases::Table)
                    .col(string(JobLeases::Name).primary_key())
                    .col(string_null(JobLeases::Holder))
                    .col(string_null(JobLeases::RunId))
                    .col(big_integer(JobLeases::ExpiresAtMs))
                    .col(big_integer(JobLeases::DueAtMs))
                    .col(text_null(JobLeases::Cursor))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(JobLeases::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(DealCommissions::Table).to_owned())
            .await?;
        let conn = manager.get_connection();
        for sql in [
            "DROP INDEX ux_ledger_entries_deal_seq",
            "DROP INDEX idx_ledger_entries_due",
            "DROP INDEX idx_ledger_entries_program",
            "DROP INDEX idx_ledger_entries_payout",
            "DROP INDEX idx_deals_last_applied",
            "DROP INDEX idx_attributions_updated",
            "DROP INDEX idx_partners_updated",
            "DROP INDEX idx_exchange_rates_created",
            "ALTER TABLE ledger_entries ADD COLUMN amount VARCHAR NOT NULL DEFAULT '0'",
            "ALTER TABLE payouts ADD COLUMN total VARCHAR NOT NULL DEFAULT '0'",
            "ALTER TABLE ledger_entries DROP COLUMN amount_cents",
            "ALTER TABLE ledger_entries DROP COLUMN deal_seq",
            "ALTER TABLE payouts DROP COLUMN total_cents",
            "ALTER TABLE deals DROP COLUMN locked_at",
            "ALTER TABLE deals DROP COLUMN locked_amount",
            "ALTER TABLE deals DROP COLUMN locked_currency",
            "ALTER TABLE deals DROP COLUMN locked_closed_at",
        ] {
            conn.execute_unprepared(sql).await?;
        }
        Ok(())
    }
}
