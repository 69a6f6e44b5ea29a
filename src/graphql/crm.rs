//! GraphQL for CRM connections: `createCrmConnection`, `crmConnections`, `syncCrmConnection`,
//! `syncRuns` (admins only). Credentials are write-only.

use crate::graphql::admin_db;
use crate::graphql::connection::EqIf;
use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use sea_orm::EntityTrait;

use crate::{
    db::states::JobRunStatus,
    db::{
        entities::{crm_connection, sync_run},
        pages::Direction,
    },
    domain::{
        crm::{ConnectionStatus, CreateCrmConnectionInput, CrmKind, create_connection},
        ids::is_valid_id,
    },
    error::ApiError,
    graphql::{
        commissions::load_program,
        connection::connection,
        outbound::OutboundContext,
        principal,
        types::{Program, page_complexity},
    },
    jobs::{JobName, Jobs},
};

/// A CRM account deals are synced from. Its credentials are never returned.
pub struct CrmConnection(pub crm_connection::Model);

/// A CRM account deals are synced from. Its credentials are never returned.
#[tandem_derive::plain_object]
#[Object]
impl CrmConnection {
    /// Unique id (HUBSPOT webhook sources name it as `connectionId`).
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Label.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The CRM.
    async fn kind(&self) -> CrmKind {
        self.0.kind
    }
    /// The program its deals belong to.
    async fn program(&self, ctx: &Context<'_>) -> Result<Option<Program>> {
        load_program(ctx, &self.0.program_id).await
    }
    /// The API base URL.
    async fn base_url(&self) -> &str {
        &self.0.base_url
    }
    /// Cron of its `crm-sync` runs.
    async fn schedule(&self) -> &str {
        &self.0.schedule
    }
    /// The CRM field carrying Tandem's referral code.
    async fn referral_code_field(&self) -> Option<&str> {
        self.0.referral_code_field.as_deref()
    }
    /// SALESFORCE: the REST API version used.
    async fn api_version(&self) -> Option<&str> {
        self.0.api_version.as_deref()
    }
    /// ACTIVE, or FAILING after a failed sync.
    async fn status(&self) -> ConnectionStatus {
        self.0.status
    }
    /// The CRM's message from the last failed sync (credentials redacted).
    async fn last_error(&self) -> Option<&str> {
        self.0.last_error.as_deref()
    }
    /// When a sync last succeeded.
    async fn last_synced_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_synced_at
    }
    /// Whether the initial backfill has finished (incremental syncs follow).
    async fn backfilled(&self) -> bool {
        self.0
            .cursor
            .as_deref()
            .is_some_and(|c| c.contains("\"incremental\""))
    }
    /// When it was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// One `crm-sync` run of a connection.
pub struct SyncRun(pub sync_run::Model);

/// One `crm-sync` run of a connection.
#[tandem_derive::plain_object]
#[Object]
impl SyncRun {
    /// Unique id (the job run's).
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The connection.
    async fn connection_id(&self) -> ID {
        ID(self.0.connection_id.clone())
    }
    /// RUNNING, SUCCEEDED or FAILED.
    async fn status(&self) -> JobRunStatus {
        self.0.status
    }
    /// Start.
    async fn started_at(&self) -> DateTime<Utc> {
        self.0.started_at
    }
    /// End.
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }
    /// Pages applied.
    async fn pages(&self) -> i32 {
        self.0.pages
    }
    /// Deals read.
    async fn deals_seen(&self) -> i32 {
        self.0.deals_seen
    }
    /// Deals whose mirror changed.
    async fn deals_changed(&self) -> i32 {
        self.0.deals_changed
    }
    /// Parked HubSpot webhook receipts whose deal was fetched and applied.
    async fn receipts_applied(&self) -> i32 {
        self.0.receipts_applied
    }
    /// Accepted referrals created in the CRM.
    async fn referrals_pushed(&self) -> i32 {
        self.0.referrals_pushed
    }
    /// Duration in milliseconds (finished runs).
    async fn duration_ms(&self) -> Option<i64> {
        self.0
            .finished_at
            .map(|f| (f - self.0.started_at).num_milliseconds())
    }
    /// Why it failed (the CRM's message, credentials redacted).
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
}

// Reached through connections, resolved field by field.

connection!(
    CrmConnectionConnection,
    CrmConnectionEdge,
    CrmConnection,
    "CRM connections"
);
connection!(SyncRunConnection, SyncRunEdge, SyncRun, "sync runs");

/// CRM queries.
#[derive(Default)]
pub struct CrmQuery;

/// CRM queries.
#[Object]
impl CrmQuery {
    /// CRM connections, newest first (admins only).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn crm_connections(
        &self,
        ctx: &Context<'_>,
        program_id: Option<ID>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<CrmConnectionConnection> {
        principal(ctx).await?.require_admin()?;
        let query = crm_connection::Entity::find()
            .eq_if(crm_connection::Column::ProgramId, program_id.map(|id| id.0));
        let page = (first, after);
        CrmConnectionConnection::page(ctx, query, Direction::Descending, page, CrmConnection).await
    }

    /// Sync runs, newest first (admins only).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn sync_runs(
        &self,
        ctx: &Context<'_>,
        connection_id: Option<ID>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<SyncRunConnection> {
        principal(ctx).await?.require_admin()?;
        let query = sync_run::Entity::find()
            .eq_if(sync_run::Column::ConnectionId, connection_id.map(|id| id.0));
        SyncRunConnection::page(ctx, query, Direction::Descending, (first, after), SyncRun).await
    }
}

/// Result of `createCrmConnection`.
#[derive(SimpleObject)]
pub struct CreateCrmConnectionPayload {
    /// The new connection (its first sync runs on its schedule or with `syncCrmConnection`).
    pub connection: CrmConnection,
}

/// Input of `syncCrmConnection`.
#[derive(Debug, InputObject)]
pub struct SyncCrmConnectionInput {
    /// The connection.
    pub id: ID,
}

/// Result of `syncCrmConnection`.
#[derive(SimpleObject)]
pub struct SyncCrmConnectionPayload {
    /// The finished run (FAILED with the CRM's message when the sync failed).
    pub sync_run: SyncRun,
}

/// CRM mutations.
#[derive(Default)]
pub struct CrmMutation;

/// CRM mutations.
#[Object]
impl CrmMutation {
    /// Connects a CRM account to a program (admins). Credentials are sealed and never shown.
    async fn create_crm_connection(
        &self,
        ctx: &Context<'_>,
        input: CreateCrmConnectionInput,
    ) -> Result<CreateCrmConnectionPayload> {
        let db = admin_db(ctx).await?;
        let outbound = ctx.data_unchecked::<OutboundContext>();
        let model =
            create_connection(db, &outbound.key, input, outbound.settings.allow_private).await?;
        Ok(CreateCrmConnectionPayload {
            connection: CrmConnection(model),
        })
    }

    /// Runs a connection's sync now and returns the finished run (admins). Waits up to 60 s
    /// for a run of the same connection in progress elsewhere.
    async fn sync_crm_connection(
        &self,
        ctx: &Context<'_>,
        input: SyncCrmConnectionInput,
    ) -> Result<SyncCrmConnectionPayload> {
        let db = admin_db(ctx).await?;
        let id = input.id.to_string();
        if !is_valid_id(&id)
            || crm_connection::Entity::find_by_id(id.clone())
                .one(db.reads())
                .await
                .map_err(ApiError::from)?
                .is_none()
        {
            return Err(ApiError::NotFound("CRM connection").into());
        }
        let jobs = ctx.data_unchecked::<Jobs>();
        let run = jobs
            .run_now(
                JobName::CrmSync(id),
                false,
                std::time::Duration::from_secs(60),
            )
            .await?;
        let sync_run = sync_run::Entity::find_by_id(run.id.clone())
            .one(db.reads())
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| {
                ApiError::Internal(format!(
                    "job run {} has no sync run: {:?}",
                    run.id, run.error
                ))
            })?;
        Ok(SyncCrmConnectionPayload {
            sync_run: SyncRun(sync_run),
        })
    }
}
