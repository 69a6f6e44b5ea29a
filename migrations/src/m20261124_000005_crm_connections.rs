//! CRM connections and their sync runs. A connection's credentials are sealed with
//! `TANDEM_SECRET_KEY`; its cursor is checkpointed in the transaction that applies each page,
//! so a sync cut short resumes where the last applied page ended.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000005_crm_connections"
    }
}

#[derive(DeriveIden)]
enum CrmConnections {
    Table,
    Id,
    Name,
    /// HUBSPOT, SALESFORCE or PIPEDRIVE.
    Kind,
    ProgramId,
    BaseUrl,
    /// JSON `{"accessToken"}` or `{"oauth": {…}}`, sealed.
    CredentialsCiphertext,
    /// Cron (6 fields) of its `crm-sync` runs.
    Schedule,
    ReferralCodeField,
    /// SALESFORCE: the REST API version (such as `62.0`).
    ApiVersion,
    /// The connector's opaque sync position.
    Cursor,
    /// ACTIVE or FAILING.
    Status,
    LastError,
    LastSyncedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum SyncRuns {
    Table,
    /// The job run's id.
    Id,
    ConnectionId,
    /// RUNNING, SUCCEEDED or FAILED.
    Status,
    StartedAt,
    FinishedAt,
    Pages,
    DealsSeen,
    DealsChanged,
    /// Parked HubSpot webhook receipts whose deal was fetched and applied.
    ReceiptsApplied,
    /// Accepted referrals created in the CRM.
    ReferralsPushed,
    Error,
}

/// Accepted referrals created in a connection's CRM: one row per (connection, referral), so a
/// referral is never created twice; the CRM ids are stored as soon as each object exists.
#[derive(DeriveIden)]
enum CrmReferralPushes {
    Table,
    ConnectionId,
    ReferralId,
    /// HubSpot company id.
    CompanyExternalId,
    /// HubSpot contact id.
    ContactExternalId,
    /// PUSHED or FAILED (retried on the next sync).
    Status,
    Error,
    PushedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(CrmConnections::Table)
                    .col(string(CrmConnections::Id).primary_key())
                    .col(string(CrmConnections::Name))
                    .col(string(CrmConnections::Kind))
                    .col(string(CrmConnections::ProgramId))
                    .col(text(CrmConnections::BaseUrl))
                    .col(text(CrmConnections::CredentialsCiphertext))
                    .col(string(CrmConnections::Schedule))
                    .col(string_null(CrmConnections::ReferralCodeField))
                    .col(string_null(CrmConnections::ApiVersion))
                    .col(text_null(CrmConnections::Cursor))
                    .col(string(CrmConnections::Status))
                    .col(text_null(CrmConnections::LastError))
                    .col(timestamp_with_time_zone_null(CrmConnections::LastSyncedAt))
                    .col(timestamp_with_time_zone(CrmConnections::CreatedAt))
                    .col(timestamp_with_time_zone(CrmConnections::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(CrmConnections::Table, CrmConnections::ProgramId)
                            .to(Alias::new("programs"), Alias::new("id"))
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(SyncRuns::Table)
                    .col(string(SyncRuns::Id).primary_key())
                    .col(string(SyncRuns::ConnectionId))
                    .col(string(SyncRuns::Status))
                    .col(timestamp_with_time_zone(SyncRuns::StartedAt))
                    .col(timestamp_with_time_zone_null(SyncRuns::FinishedAt))
                    .col(integer(SyncRuns::Pages))
                    .col(integer(SyncRuns::DealsSeen))
                    .col(integer(SyncRuns::DealsChanged))
                    .col(integer(SyncRuns::ReceiptsApplied))
                    .col(integer(SyncRuns::ReferralsPushed))
                    .col(text_null(SyncRuns::Error))
                    .foreign_key(
                        ForeignKey::create()
                            .from(SyncRuns::Table, SyncRuns::ConnectionId)
                            .to(CrmConnections::Table, CrmConnections::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(CrmReferralPushes::Table)
                    .col(string(CrmReferralPushes::ConnectionId))
                    .col(string(CrmReferralPushes::ReferralId))
                    .col(string_null(CrmReferralPushes::CompanyExternalId))
                    .col(string_null(CrmReferralPushes::ContactExternalId))
                    .col(string(CrmReferralPushes::Status))
                    .col(text_null(CrmReferralPushes::Error))
                    .col(timestamp_with_time_zone_null(CrmReferralPushes::PushedAt))
                    .primary_key(
                        Index::create()
                            .col(CrmReferralPushes::ConnectionId)
                            .col(CrmReferralPushes::ReferralId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(CrmReferralPushes::Table, CrmReferralPushes::ConnectionId)
                            .to(CrmConnections::Table, CrmConnections::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(CrmReferralPushes::Table, CrmReferralPushes::ReferralId)
                            .to(Alias::new("referrals"), Alias::new("id"))
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX idx_sync_runs_connection ON sync_runs (connection_id, id)",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["crm_referral_pushes", "sync_runs", "crm_connections"] {
            manager
                .drop_table(Table::drop().table(Alias::new(table)).to_owned())
                .await?;
        }
        Ok(())
    }
}
