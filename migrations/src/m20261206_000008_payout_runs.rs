//! Reward distribution (DESIGN §14): partners' payout methods (sealed), payout runs, and the
//! run, method and failure of each payout; the program's own account (the debtor of its SEPA
//! files); the reason of a manual ledger adjustment.

use sea_orm_migration::prelude::*;

use crate::helpers::{Kind, add, column, drop_columns, index, name, table};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000008_payout_runs"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use Kind::*;
        manager
            .create_table(table(
                "payout_methods",
                &["partner_id"],
                vec![
                    column("partner_id", Id, false),
                    column("program_id", Id, false),
                    column("kind", Text, false),
                    // Sealed (AES-256-GCM under the hub's secret key).
                    column("details", Text, false),
                    column("masked", Text, false),
                    column("account_holder", Text, true),
                    column("created_at", Time, false),
                    column("updated_at", Time, false),
                ],
            ))
            .await?;
        manager
            .create_table(table(
                "payout_runs",
                &["id"],
                vec![
                    column("id", Id, false),
                    column("program_id", Id, false),
                    column("currency", Text, false),
                    column("cutoff", Time, false),
                    column("minimum_cents", BigInt, false),
                    column("status", Text, false),
                    column("total_cents", BigInt, false),
                    column("payout_count", Int, false),
                    column("skipped", Json, false),
                    column("created_at", Time, false),
                    column("updated_at", Time, false),
                ],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_payout_runs_program",
                "payout_runs",
                &["program_id", "id"],
                false,
            ))
            .await?;
        for statement in [
            add("payouts", column("run_id", Id, true)),
            add("payouts", column("method_kind", Text, true)),
            add("payouts", column("method_details", Text, true)),
            add("payouts", column("failure", Text, true)),
            // Bumped when a sent transfer is reversed: the next send is a new request.
            add("payouts", column("send_generation", Int, true)),
            add("programs", column("payout_account", Text, true)),
            add("programs", column("payout_account_masked", Text, true)),
            // Why an adjustment was made, or an entry declined (shown to the partner).
            add("ledger_entries", column("note", Text, true)),
            // Why an accrual is HELD (self-referral, review threshold, suspended partner).
            add("ledger_entries", column("hold_reason", Text, true)),
            // The entry a manager's decline reverses.
            add("ledger_entries", column("declines", Id, true)),
            // Accruals above this amount wait for a manager (decimal text, program currency).
            add("programs", column("manual_review_above", Text, true)),
        ] {
            manager.alter_table(statement).await?;
        }
        manager
            .create_index(index("idx_payouts_run", "payouts", &["run_id"], false))
            .await?;
        let conn = manager.get_connection();
        for sql in [
            // New entries of a deal or invoice with a held entry are held with it.
            "CREATE INDEX idx_ledger_entries_held_deal ON ledger_entries (deal_id) \
             WHERE status = 'HELD'",
            "CREATE INDEX idx_ledger_entries_held_invoice ON ledger_entries (invoice_id) \
             WHERE status = 'HELD'",
            // The reconciler keeps declined commissions at zero.
            "CREATE INDEX idx_ledger_entries_declines ON ledger_entries (declines) \
             WHERE declines IS NOT NULL",
        ] {
            conn.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for index in [
            "idx_payouts_run",
            "idx_ledger_entries_held_deal",
            "idx_ledger_entries_held_invoice",
            "idx_ledger_entries_declines",
        ] {
            manager
                .get_connection()
                .execute_unprepared(&format!("DROP INDEX {index}"))
                .await?;
        }
        for t in ["payout_runs", "payout_methods"] {
            manager
                .drop_table(Table::drop().table(name(t)).to_owned())
                .await?;
        }
        drop_columns(
            manager,
            &[
                ("programs", "manual_review_above"),
                ("ledger_entries", "declines"),
                ("ledger_entries", "hold_reason"),
                ("ledger_entries", "note"),
                ("programs", "payout_account_masked"),
                ("programs", "payout_account"),
                ("payouts", "send_generation"),
                ("payouts", "failure"),
                ("payouts", "method_details"),
                ("payouts", "method_kind"),
                ("payouts", "run_id"),
            ],
        )
        .await
    }
}
