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
            add("programs", column("payout_account", Text, true)),
            add("programs", column("payout_account_masked", Text, true)),
            // Why an adjustment was made (shown to the partner).
            add("ledger_entries", column("note", Text, true)),
        ] {
            manager.alter_table(statement).await?;
        }
        manager
            .create_index(index("idx_payouts_run", "payouts", &["run_id"], false))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX idx_payouts_run")
            .await?;
        for t in ["payout_runs", "payout_methods"] {
            manager
                .drop_table(Table::drop().table(name(t)).to_owned())
                .await?;
        }
        drop_columns(
            manager,
            &[
                ("ledger_entries", "note"),
                ("programs", "payout_account_masked"),
                ("programs", "payout_account"),
                ("payouts", "failure"),
                ("payouts", "method_details"),
                ("payouts", "method_kind"),
                ("payouts", "run_id"),
            ],
        )
        .await
    }
}
