//! Partner groups (DESIGN §13): ranked groups per program with their own commission plan, hold
//! period and promotion rules, and each partner's membership history (the group a deal's
//! commission is computed with is the one the partner was in when the deal closed).

use sea_orm_migration::prelude::*;

use crate::helpers::{Kind, add, column, drop_columns, index, name, table};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000007_partner_groups"
    }
}

/// At most one open membership per partner: two evaluations (or an evaluation and a manual
/// change) racing cannot leave a partner in two groups.
const OPEN_MEMBERSHIP_INDEX: &str = "CREATE UNIQUE INDEX idx_group_memberships_open ON \
     partner_group_memberships (partner_id) WHERE until IS NULL";

/// The group evaluation sums each partner's won deals of a program over a trailing window
/// from this index alone.
const WON_WINDOW_INDEX: &str = "CREATE INDEX idx_deal_commissions_won_window ON \
     deal_commissions (program_id, deal_status, closed_at, partner_id, state, \
     amount_program_cents)";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use Kind::*;
        manager
            .alter_table(add("programs", column("group_review_schedule", Text, true)))
            .await?;
        manager
            .alter_table(add("programs", column("groups_reviewed_at", Time, true)))
            .await?;
        manager
            .create_table(table(
                "partner_groups",
                &["id"],
                vec![
                    column("id", Id, false),
                    column("program_id", Id, false),
                    column("name", Text, false),
                    column("rank", Int, false),
                    column("commission", Json, false),
                    column("hold_days", Int, false),
                    column("min_deals_won", Int, false),
                    column("min_won_revenue", Text, false),
                    column("window_days", Int, false),
                    column("required_certifications", Json, false),
                    column("min_certified_people", Int, false),
                    column("created_at", Time, false),
                    column("updated_at", Time, false),
                ],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_partner_groups_rank",
                "partner_groups",
                &["program_id", "rank"],
                true,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_partner_groups_name",
                "partner_groups",
                &["program_id", "name"],
                true,
            ))
            .await?;
        manager
            .create_table(table(
                "partner_group_memberships",
                &["id"],
                vec![
                    column("id", Id, false),
                    column("program_id", Id, false),
                    column("partner_id", Id, false),
                    column("group_id", Id, false),
                    column("since", Time, false),
                    column("until", Time, true),
                    column("reason", Text, false),
                    column("manual", Bool, false),
                    column("note", Text, true),
                    column("created_at", Time, false),
                ],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_group_memberships_partner",
                "partner_group_memberships",
                &["partner_id", "since"],
                false,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_group_memberships_program",
                "partner_group_memberships",
                &["program_id", "until"],
                false,
            ))
            .await?;
        // The incremental reconciler recomputes the partners whose history changed.
        manager
            .create_index(index(
                "idx_group_memberships_created",
                "partner_group_memberships",
                &["created_at"],
                false,
            ))
            .await?;
        let conn = manager.get_connection();
        conn.execute_unprepared(OPEN_MEMBERSHIP_INDEX).await?;
        conn.execute_unprepared(WON_WINDOW_INDEX).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX idx_deal_commissions_won_window")
            .await?;
        for t in ["partner_group_memberships", "partner_groups"] {
            manager
                .drop_table(Table::drop().table(name(t)).to_owned())
                .await?;
        }
        drop_columns(
            manager,
            &[
                ("programs", "groups_reviewed_at"),
                ("programs", "group_review_schedule"),
            ],
        )
        .await
    }
}
