//! Certifications (DESIGN §13): who at a partner completed which course, until when, and
//! whether the 30-day expiry notice went out.

use sea_orm_migration::prelude::*;

use crate::helpers::{Kind, column, index, name, table};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000005_certifications"
    }
}

/// The `certifications` job reads only the certifications whose notice has not gone out.
const EXPIRING_INDEX: &str = "CREATE INDEX idx_certifications_expiring ON certifications \
     (expires_at) WHERE expiring_notified_at IS NULL";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use Kind::*;
        manager
            .create_table(table(
                "certifications",
                &["id"],
                vec![
                    column("id", Id, false),
                    column("program_id", Id, false),
                    column("partner_id", Id, false),
                    column("person_email", Text, false),
                    column("course_key", Text, false),
                    column("issued_at", Time, false),
                    column("expires_at", Time, true),
                    column("expiring_notified_at", Time, true),
                    column("source", Text, false),
                    column("created_at", Time, false),
                    column("updated_at", Time, false),
                ],
            ))
            .await?;
        // One certification per person and course at a partner: a renewal updates it.
        manager
            .create_index(index(
                "idx_certifications_person_course",
                "certifications",
                &["partner_id", "person_email", "course_key"],
                true,
            ))
            .await?;
        manager
            .get_connection()
            .execute_unprepared(EXPIRING_INDEX)
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(name("certifications")).to_owned())
            .await?;
        Ok(())
    }
}
