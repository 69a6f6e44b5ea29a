//! An index that covers what the referral KPIs read of a program's referrals: the counts by
//! status and lead SLA (with the next pending due time), and the hours from acceptance to
//! engagement. Led by the program and the submission time (the KPI period), so that a period is
//! a range of it and all time the program's prefix; the KPIs then read no table row. Measured
//! on the console benchmark's 200,000-referral program (SQLite shell): the counts 133 → 50 ms,
//! the engagement median 60 → 20 ms.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000013_referral_kpi_index"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX idx_referrals_program_kpis ON referrals \
                 (program_id, submitted_at, status, sla_state, sla_due_at, accepted_at, engaged_at)",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX idx_referrals_program_kpis")
            .await?;
        Ok(())
    }
}
