//! SQLite: `invoice_commissions` keyed by (partner, invoice) instead of (invoice, partner),
//! stored WITHOUT ROWID in that key, and the ledger's unique index over an invoice's entries
//! led by the partner: (partner, invoice, number) instead of (invoice, partner, number).
//!
//! The reconciler writes invoices partner by partner, but invoice ids are time-ordered: the old
//! keys sent every chunk's rows to pages all over two B-trees as large as the tables, and each
//! commit wrote those pages to the WAL and checkpointed them back. Keyed by partner first, a
//! chunk's rows land side by side, and the computations table *is* its key (one B-tree
//! fewer). On a 1M-row table written in 50 partner-ordered transactions (sqlite3, WAL,
//! synchronous FULL): 23.1 s before, 8.9 s after; the full 1M-invoice reconcile went from
//! about 60 s to 43–54 s (BENCHMARKS.md).
//!
//! An invoice's partner is its customer's, set once when it is linked, so every lookup of an
//! invoice's computation or entries goes through the invoice to its partner; none needs an
//! index led by the invoice. Those lookups work with either key, so PostgreSQL keeps its keys:
//! there the same change measured 10–20 % slower on the full run (134–158 s against 114–127 s,
//! same machine and day; a heap table gains nothing from the key order, and its B-trees split
//! in the middle instead of at random).
//!
//! The secondary indexes of the rebuilt table take new names (the old ones went with the old
//! table).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::{
    helpers::{index, table},
    m20261206_000002_recurring::invoice_commission_columns,
};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000010_invoice_commissions_by_partner"
    }
}

const TABLE: &str = "invoice_commissions";

/// (old name, new name, columns) of the secondary indexes.
const INDEXES: [(&str, &str, &[&str]); 2] = [
    (
        "idx_invoice_commissions_partner",
        "idx_invoice_commissions_partner_paid",
        &["partner_id", "paid_at"],
    ),
    (
        "idx_invoice_commissions_program",
        "idx_invoice_commissions_program_paid",
        &["program_id", "partner_id", "paid_at"],
    ),
];

/// The ledger's unique index over an invoice's entries: (old, new) definitions.
const LEDGER_OLD: &str = "CREATE UNIQUE INDEX ux_ledger_entries_invoice ON ledger_entries \
    (invoice_id, partner_id, invoice_seq) WHERE invoice_id IS NOT NULL";
const LEDGER_NEW: &str = "CREATE UNIQUE INDEX ux_ledger_entries_partner_invoice ON ledger_entries \
    (partner_id, invoice_id, invoice_seq) WHERE invoice_id IS NOT NULL";

const COLUMNS: &str = "invoice_id, partner_id, program_id, customer_id, amount_program, \
    amount_program_cents, paid_at, state, expected_cents, computed_at";

/// The table as `name`, with `primary` as its key.
fn definition(table_name: &str, primary: &[&str]) -> TableCreateStatement {
    table(table_name, primary, invoice_commission_columns())
}

/// SQLite: copies the table into one keyed by `primary` (WITHOUT ROWID when `without_rowid`),
/// drops the old one with its indexes and creates the indexes named `names`. One batch, so one
/// connection: another pooled connection could still hold the schema from before the drop and
/// refuse the rename ("there is already another table or index with this name").
async fn rebuild(
    manager: &SchemaManager<'_>,
    primary: &[&str],
    without_rowid: bool,
    names: [&str; 2],
) -> Result<(), DbErr> {
    let copy = format!("{TABLE}_rebuilt");
    let create = DbBackend::Sqlite.build(&definition(&copy, primary)).sql;
    let suffix = if without_rowid { " WITHOUT ROWID" } else { "" };
    let mut batch = vec![
        format!("{create}{suffix}"),
        format!("INSERT INTO {copy} ({COLUMNS}) SELECT {COLUMNS} FROM {TABLE}"),
        format!("DROP TABLE {TABLE}"),
        format!("ALTER TABLE {copy} RENAME TO {TABLE}"),
    ];
    for ((_, _, columns), index_name) in INDEXES.iter().zip(names) {
        batch.push(
            DbBackend::Sqlite
                .build(&index(index_name, TABLE, columns, false))
                .sql,
        );
    }
    manager
        .get_connection()
        .execute_unprepared(&batch.join(";\n"))
        .await?;
    Ok(())
}

/// Replaces the ledger's invoice index (`drop`) by the one `create` defines, on one connection.
async fn swap_ledger_index(
    manager: &SchemaManager<'_>,
    drop: &str,
    create: &str,
) -> Result<(), DbErr> {
    manager
        .get_connection()
        .execute_unprepared(&format!("DROP INDEX {drop};\n{create}"))
        .await?;
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Sqlite {
            return Ok(());
        }
        let names = INDEXES.map(|(_, new, _)| new);
        rebuild(manager, &["partner_id", "invoice_id"], true, names).await?;
        swap_ledger_index(manager, "ux_ledger_entries_invoice", LEDGER_NEW).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Sqlite {
            return Ok(());
        }
        let names = INDEXES.map(|(old, _, _)| old);
        rebuild(manager, &["invoice_id", "partner_id"], false, names).await?;
        swap_ledger_index(manager, "ux_ledger_entries_partner_invoice", LEDGER_OLD).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_copy_names_every_column_of_the_table() {
        let create = super::DbBackend::Sqlite
            .build(&super::definition("t", &["partner_id", "invoice_id"]))
            .sql;
        for col in super::COLUMNS.split(", ") {
            assert!(create.contains(&format!("\"{col}\"")), "{col} in {create}");
        }
        assert_eq!(super::COLUMNS.split(", ").count(), 10);
    }
}
