//! The deal registration lifecycle (DESIGN §12): program registration settings and lead SLA,
//! the referral's acceptance, protection window, extensions, rejection reason, channel
//! conflict, engagement and SLA state, the engagements recorded for it, and the indexes the
//! `expire-registrations` and `lead-sla` sweeps and the conflict check read.

use sea_orm_migration::prelude::*;

use crate::helpers::{Kind, add, column, drop_columns, index, name, table};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000003_registration"
    }
}

/// Partial indexes (same syntax on SQLite and PostgreSQL): each sweep reads only the rows it
/// may change, so an index of millions of settled referrals costs it nothing.
const PARTIAL_INDEXES: [&str; 2] = [
    "CREATE INDEX idx_referrals_sla_due ON referrals (sla_due_at) WHERE sla_state = 'PENDING'",
    "CREATE INDEX idx_referrals_protection ON referrals (protected_until) \
     WHERE status = 'ACCEPTED'",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use Kind::*;
        let with_default = |c: &str, kind: Kind, default: SimpleExpr| {
            let mut def = column(c, kind, false);
            def.default(default);
            def
        };
        for statement in [
            add(
                "programs",
                with_default("registration_approval", Text, "AUTO".into()),
            ),
            add("programs", with_default("protection_days", Int, 90.into())),
            add("programs", with_default("extension_days", Int, 30.into())),
            add("programs", with_default("max_extensions", Int, 1.into())),
            add("programs", column("lead_sla_minutes", Int, true)),
            add("referrals", column("accepted_at", Time, true)),
            add("referrals", column("protected_until", Time, true)),
            add("referrals", with_default("extensions", Int, 0.into())),
            add("referrals", column("rejection_reason", Text, true)),
            add("referrals", column("conflict_deal_id", Id, true)),
            add("referrals", column("conflict_customer_id", Id, true)),
            add("referrals", column("engaged_at", Time, true)),
            add("referrals", column("sla_due_at", Time, true)),
            add("referrals", column("sla_state", Text, true)),
        ] {
            manager.alter_table(statement).await?;
        }
        manager
            .create_table(table(
                "referral_engagements",
                &["id"],
                vec![
                    column("id", Id, false),
                    column("referral_id", Id, false),
                    column("program_id", Id, false),
                    column("kind", Text, false),
                    column("at", Time, false),
                    column("note", Text, true),
                    column("source", Text, false),
                    column("created_at", Time, false),
                ],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_referral_engagements_referral",
                "referral_engagements",
                &["referral_id", "at"],
                false,
            ))
            .await?;
        // The channel-conflict check looks for the company's deals in the program.
        manager
            .create_index(index(
                "idx_deals_program_domain",
                "deals",
                &["program_id", "company_domain"],
                false,
            ))
            .await?;
        let conn = manager.get_connection();
        for sql in PARTIAL_INDEXES {
            conn.execute_unprepared(sql).await?;
        }
        backfill(manager).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        for index in [
            "idx_referrals_sla_due",
            "idx_referrals_protection",
            "idx_deals_program_domain",
        ] {
            conn.execute_unprepared(&format!("DROP INDEX {index}"))
                .await?;
        }
        manager
            .drop_table(Table::drop().table(name("referral_engagements")).to_owned())
            .await?;
        drop_columns(
            manager,
            &[
                ("referrals", "sla_state"),
                ("referrals", "sla_due_at"),
                ("referrals", "engaged_at"),
                ("referrals", "conflict_customer_id"),
                ("referrals", "conflict_deal_id"),
                ("referrals", "rejection_reason"),
                ("referrals", "extensions"),
                ("referrals", "protected_until"),
                ("referrals", "accepted_at"),
                ("programs", "lead_sla_minutes"),
                ("programs", "max_extensions"),
                ("programs", "extension_days"),
                ("programs", "protection_days"),
                ("programs", "registration_approval"),
            ],
        )
        .await?;
        Ok(())
    }
}

/// Registrations accepted before this migration were accepted when submitted and are protected
/// for the default 90 days from then (computed here, so that each database stores the time in
/// its own format).
async fn backfill(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let conn = manager.get_connection();
    let backend = conn.get_database_backend();
    let (p1, p2, p3) = match backend {
        sea_orm::DatabaseBackend::Postgres => ("$1", "$2", "$3"),
        _ => ("?", "?", "?"),
    };
    let mut after = String::new();
    loop {
        let rows = conn
            .query_all_raw(sea_orm::Statement::from_sql_and_values(
                backend,
                format!(
                    "SELECT id, submitted_at FROM referrals WHERE status IN ('ACCEPTED', \
                     'CONVERTED') AND id > {p1} ORDER BY id LIMIT 1000"
                ),
                [after.clone().into()],
            ))
            .await?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = last.try_get("", "id")?;
        for row in rows {
            let id: String = row.try_get("", "id")?;
            let submitted: chrono::DateTime<chrono::Utc> = row.try_get("", "submitted_at")?;
            conn.execute_raw(sea_orm::Statement::from_sql_and_values(
                backend,
                format!(
                    "UPDATE referrals SET accepted_at = {p1}, protected_until = {p2} \
                     WHERE id = {p3}"
                ),
                [
                    submitted.into(),
                    (submitted + chrono::Duration::days(90)).into(),
                    id.into(),
                ],
            ))
            .await?;
        }
    }
}
