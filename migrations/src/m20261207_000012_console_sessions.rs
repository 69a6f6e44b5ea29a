//! Console sessions (DESIGN §16): an API key exchanged for a session cookie. Only the SHA-256
//! of the session token is stored; the session lasts until `expires_at`, its logout, or the
//! revocation of its key.

use sea_orm_migration::prelude::*;

use crate::helpers::{Kind, column, index, name, table};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000012_console_sessions"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use Kind::*;
        manager
            .create_table(table(
                "console_sessions",
                &["id"],
                vec![
                    column("id", Id, false),
                    column("key_id", Id, false),
                    column("created_at", Time, false),
                    column("expires_at", Time, false),
                ],
            ))
            .await?;
        // Revoking a key ends its sessions; expired sessions are swept by expiry.
        manager
            .create_index(index(
                "idx_console_sessions_key",
                "console_sessions",
                &["key_id"],
                false,
            ))
            .await?;
        manager
            .create_index(index(
                "idx_console_sessions_expiry",
                "console_sessions",
                &["expires_at"],
                false,
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(name("console_sessions")).to_owned())
            .await
    }
}
