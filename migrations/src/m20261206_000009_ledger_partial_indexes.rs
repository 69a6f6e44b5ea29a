//! Ledger indexes over one kind of subject only: a deal's entries are not in the invoice
//! indexes and an invoice's not in the deal ones, and entries outside a payout are not in the
//! payout index. Each entry the reconciler appends then updates seven B-trees instead of ten
//! (the rows of the other kind were all NULL keys, written for nothing), and the indexes are
//! smaller. Queries by `deal_id = …`, `deal_id IN (…)` (and the same for invoices and
//! payouts) imply `IS NOT NULL`: SQLite and PostgreSQL both use the partial indexes for them;
//! the reconciler's `ON CONFLICT` names the index's condition.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000009_ledger_partial_indexes"
    }
}

/// (old name, new name, unique, columns, the column that must not be NULL). The partial
/// indexes take new names: a pooled SQLite connection that last read the schema before the
/// drop could otherwise still see the old index under the name.
const INDEXES: [(&str, &str, bool, &str, &str); 4] = [
    (
        "idx_ledger_deal",
        "idx_ledger_entries_deal",
        false,
        "deal_id, id",
        "deal_id",
    ),
    (
        "ux_ledger_entries_deal_seq",
        "ux_ledger_entries_deal",
        true,
        "partner_id, deal_id, deal_seq",
        "deal_id",
    ),
    (
        "idx_ledger_entries_invoice_seq",
        "ux_ledger_entries_invoice",
        true,
        "invoice_id, partner_id, invoice_seq",
        "invoice_id",
    ),
    (
        "idx_ledger_entries_payout",
        "idx_ledger_entries_paid_out",
        false,
        "payout_id",
        "payout_id",
    ),
];

fn create(name: &str, unique: bool, columns: &str, condition: Option<&str>) -> String {
    format!(
        "CREATE {}INDEX {name} ON ledger_entries ({columns}){}",
        if unique { "UNIQUE " } else { "" },
        condition
            .map(|c| format!(" WHERE {c} IS NOT NULL"))
            .unwrap_or_default()
    )
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        for (old, new, unique, columns, condition) in INDEXES {
            conn.execute_unprepared(&format!("DROP INDEX {old}"))
                .await?;
            conn.execute_unprepared(&create(new, unique, columns, Some(condition)))
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        for (old, new, unique, columns, _) in INDEXES {
            conn.execute_unprepared(&format!("DROP INDEX {new}"))
                .await?;
            conn.execute_unprepared(&create(old, unique, columns, None))
                .await?;
        }
        Ok(())
    }
}
