//! GraphQL for inbound webhooks and deal attribution: `createWebhookSource`, its rotation,
//! disabling and deletion, `attributeDeal`, `webhookSources`, `webhookReceipts` (admins only).

use crate::graphql::admin_db;
use crate::graphql::connection::EqIf;
use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::{
    db::{
        Db,
        entities::{webhook_receipt, webhook_source},
        pages::{Direction, Page, PageArgs},
    },
    domain::{
        deals::{AttributeDealInput, attribute_deal},
        ids::is_valid_id,
        inbox::ReceiptStatus,
        webhooks::{
            CreateWebhookSourceInput, HubSpotSignatureScheme, SourceStatus, WebhookSourceKind,
            Webhooks,
        },
    },
    error::ApiError,
    graphql::{
        PublicBase,
        commissions::load_program,
        connection::{TotalCount, connection},
        loaders::Loaders,
        principal,
        types::{Deal, Program, page_complexity},
    },
};

/// Where CRMs post: a kind, a program, and a verification secret (never shown again).
pub struct WebhookSource(pub webhook_source::Model);

/// Where CRMs post: a kind, a program, and a verification secret (never shown again).
#[tandem_derive::plain_object]
#[Object]
impl WebhookSource {
    /// Unique id (the last segment of its URL).
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Label.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// How requests are verified and what they carry.
    async fn kind(&self) -> WebhookSourceKind {
        self.0.kind
    }
    /// The program its deals belong to.
    async fn program(&self, ctx: &Context<'_>) -> Result<Option<Program>> {
        load_program(ctx, &self.0.program_id).await
    }
    /// The URL to post to. For SALESFORCE the `token` parameter is left out: it is the secret,
    /// shown once by `createWebhookSource`.
    async fn url(&self, ctx: &Context<'_>) -> String {
        Webhooks::source_url(&ctx.data_unchecked::<PublicBase>().0, &self.0, None)
    }
    /// ENABLED, or DISABLED (answers 410 Gone and stores nothing).
    async fn status(&self) -> SourceStatus {
        self.0.status
    }
    /// Until when the secret before the last rotation still verifies.
    async fn previous_secret_expires_at(&self) -> Option<DateTime<Utc>> {
        self.0
            .previous_secret_expires_at
            .filter(|until| *until > Utc::now())
    }
    /// When it was deleted (it answers 410 Gone; its receipts stay).
    async fn deleted_at(&self) -> Option<DateTime<Utc>> {
        self.0.deleted_at
    }
    /// HUBSPOT: the CRM connection deals are fetched through.
    async fn connection_id(&self) -> Option<ID> {
        self.0.connection_id.clone().map(ID)
    }
    /// SALESFORCE: the org id Outbound Messages must carry.
    async fn salesforce_org_id(&self) -> Option<&str> {
        self.0.salesforce_org_id.as_deref()
    }
    /// HUBSPOT: the signature scheme checked.
    async fn hubspot_signature_version(&self) -> Option<HubSpotSignatureScheme> {
        (self.0.kind == WebhookSourceKind::Hubspot)
            .then(|| HubSpotSignatureScheme::parse(self.0.hubspot_signature_version.as_deref()))
    }
    /// The CRM field carrying Tandem's referral code (PIPEDRIVE, SALESFORCE).
    async fn referral_code_field(&self) -> Option<&str> {
        self.0.referral_code_field.as_deref()
    }
    /// When it was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// One provider event received through a webhook source, and what became of it.
pub struct WebhookReceipt(pub webhook_receipt::Model);

/// One provider event received through a webhook source, and what became of it.
#[tandem_derive::plain_object]
#[Object]
impl WebhookReceipt {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// RECEIVED, APPLIED, IGNORED_STALE, DUPLICATE or FAILED.
    async fn status(&self) -> ReceiptStatus {
        self.0.status
    }
    /// Why it failed, was ignored, or still waits.
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
    /// When it arrived (committed before the sender got its 2xx).
    async fn received_at(&self) -> DateTime<Utc> {
        self.0.received_at
    }
    /// When it was applied, ignored or given up.
    async fn processed_at(&self) -> Option<DateTime<Utc>> {
        self.0.processed_at
    }
    /// The provider's event id (`webhook-id`, HubSpot `eventId`, Pipedrive `meta.id`,
    /// Salesforce notification `Id`).
    async fn provider_event_id(&self) -> Option<&str> {
        self.0.provider_event_id.as_deref()
    }
    /// Application attempts so far.
    async fn attempts(&self) -> i32 {
        self.0.attempts
    }
    /// The source it came through.
    async fn source(&self, ctx: &Context<'_>) -> Result<Option<WebhookSource>> {
        let loaders = ctx.data_unchecked::<Loaders>();
        Ok(loaders
            .webhook_sources
            .load_one(self.0.source_id.clone())
            .await?
            .map(WebhookSource))
    }
    /// The deal it updated (or would have, when stale).
    async fn deal(&self, ctx: &Context<'_>) -> Result<Option<Deal>> {
        let Some(deal_id) = &self.0.deal_id else {
            return Ok(None);
        };
        let loaders = ctx.data_unchecked::<Loaders>();
        Ok(loaders
            .deals
            .load_one(deal_id.clone())
            .await?
            .map(Deal::from))
    }
}

// Reached through connections, resolved field by field.

connection!(
    WebhookSourceConnection,
    WebhookSourceEdge,
    WebhookSource,
    "webhook sources"
);
connection!(
    WebhookReceiptConnection,
    WebhookReceiptEdge,
    WebhookReceipt,
    "webhook receipts"
);

/// Filters for `webhookReceipts`.
#[derive(Debug, Default, InputObject)]
pub struct WebhookReceiptFilter {
    /// Only receipts of this source.
    pub source_id: Option<ID>,
    /// Only receipts in this status.
    pub status: Option<ReceiptStatus>,
}

/// Webhook queries.
#[derive(Default)]
pub struct WebhookQuery;

/// Webhook queries.
#[Object]
impl WebhookQuery {
    /// Webhook sources, newest first (admins only).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn webhook_sources(
        &self,
        ctx: &Context<'_>,
        program_id: Option<ID>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<WebhookSourceConnection> {
        principal(ctx).await?.require_admin()?;
        let query = webhook_source::Entity::find()
            .filter(webhook_source::Column::DeletedAt.is_null())
            .eq_if(webhook_source::Column::ProgramId, program_id.map(|id| id.0));
        let page = (first, after);
        WebhookSourceConnection::page(ctx, query, Direction::Descending, page, WebhookSource).await
    }

    /// Webhook receipts, newest first (admins only).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn webhook_receipts(
        &self,
        ctx: &Context<'_>,
        filter: Option<WebhookReceiptFilter>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<WebhookReceiptConnection> {
        principal(ctx).await?.require_admin()?;
        let args = PageArgs::parse(first, after)?;
        let filter = filter.unwrap_or_default();
        let mut query = webhook_receipt::Entity::find()
            .eq_if(
                webhook_receipt::Column::SourceId,
                filter.source_id.map(|id| id.0),
            )
            .eq_if(
                webhook_receipt::Column::Status,
                filter.status.map(|s| s.as_str()),
            );
        let count_query = query.clone();
        if let Some(after) = &args.after {
            let seq: i64 = after
                .parse()
                .map_err(|_| ApiError::bad_input("after", "is not a cursor from this API"))?;
            query = query.filter(webhook_receipt::Column::Seq.lt(seq));
        }
        let db = ctx.data_unchecked::<Db>();
        let rows = query
            .order_by_desc(webhook_receipt::Column::Seq)
            .limit(args.first + 1)
            .all(db.reads())
            .await
            .map_err(ApiError::from)?;
        Ok(WebhookReceiptConnection::build(
            Page::from_overfetch(rows, args.first),
            args.after.is_some(),
            |r| r.seq.to_string(),
            WebhookReceipt,
            TotalCount::query(move |db| {
                let q = count_query.clone();
                async move { q.count(db.reads()).await }
            }),
        ))
    }
}

/// Result of `createWebhookSource`.
#[derive(SimpleObject)]
pub struct CreateWebhookSourcePayload {
    /// The new source.
    pub source: WebhookSource,
    /// The secret to configure in the sender, shown this once (`whsec_…` for STANDARD,
    /// `user:password` for PIPEDRIVE, the URL token for SALESFORCE; null for HUBSPOT, whose
    /// client secret the admin supplied).
    pub secret: Option<String>,
    /// The URL to configure in the sender (for SALESFORCE it carries the token).
    pub url: String,
}

/// Input of `rotateWebhookSourceSecret`.
#[derive(InputObject)]
pub struct RotateWebhookSourceSecretInput {
    /// The source.
    pub id: ID,
    /// The new secret, checked as on creation (required for HUBSPOT: the app's new client
    /// secret; generated for the other kinds when absent).
    pub secret: Option<String>,
    /// Hours the previous secret keeps verifying (default 24, at most 720; 0 ends it now).
    pub grace_hours: Option<i32>,
}

impl std::fmt::Debug for RotateWebhookSourceSecretInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateWebhookSourceSecretInput")
            .field("id", &self.id)
            .field("grace_hours", &self.grace_hours)
            .finish_non_exhaustive()
    }
}

/// Result of `rotateWebhookSourceSecret`.
#[derive(SimpleObject)]
pub struct RotateWebhookSourceSecretPayload {
    /// The source.
    pub source: WebhookSource,
    /// The new secret, shown this once (null for HUBSPOT, whose secret the admin supplied).
    pub secret: Option<String>,
    /// The URL to configure in the sender (for SALESFORCE it carries the new token).
    pub url: String,
}

/// Input of `disableWebhookSource`, `enableWebhookSource` and `deleteWebhookSource`.
#[derive(Debug, InputObject)]
pub struct WebhookSourceIdInput {
    /// The source.
    pub id: ID,
}

/// Result of `disableWebhookSource`, `enableWebhookSource` and `deleteWebhookSource`.
#[derive(SimpleObject)]
pub struct WebhookSourcePayload {
    /// The source as it is now.
    pub source: WebhookSource,
}

/// Enables or disables a source (admins).
async fn set_source_status(
    ctx: &Context<'_>,
    input: WebhookSourceIdInput,
    status: SourceStatus,
) -> Result<WebhookSourcePayload> {
    principal(ctx).await?.require_admin()?;
    let webhooks = ctx.data_unchecked::<Webhooks>();
    let source = webhooks
        .set_source_status(input.id.as_str(), status)
        .await?;
    Ok(WebhookSourcePayload {
        source: WebhookSource(source),
    })
}

/// Result of `attributeDeal`.
#[derive(SimpleObject)]
pub struct AttributeDealPayload {
    /// The deal, now attributed MANUAL to the partner.
    pub deal: Deal,
}

/// Webhook and attribution mutations.
#[derive(Default)]
pub struct WebhookMutation;

/// Webhook and attribution mutations.
#[Object]
impl WebhookMutation {
    /// Creates a webhook source (admins). Its secret is returned once and stored encrypted.
    async fn create_webhook_source(
        &self,
        ctx: &Context<'_>,
        input: CreateWebhookSourceInput,
    ) -> Result<CreateWebhookSourcePayload> {
        principal(ctx).await?.require_admin()?;
        let webhooks = ctx.data_unchecked::<Webhooks>();
        let base = &ctx.data_unchecked::<PublicBase>().0;
        let created = webhooks.create_source(base, input).await?;
        Ok(CreateWebhookSourcePayload {
            source: WebhookSource(created.model),
            secret: created.secret,
            url: created.url,
        })
    }

    /// Replaces a source's secret (admins). The previous one keeps verifying for the grace
    /// period, so the sender can be switched without losing a request; every instance sees the
    /// change within a second.
    async fn rotate_webhook_source_secret(
        &self,
        ctx: &Context<'_>,
        input: RotateWebhookSourceSecretInput,
    ) -> Result<RotateWebhookSourceSecretPayload> {
        principal(ctx).await?.require_admin()?;
        let webhooks = ctx.data_unchecked::<Webhooks>();
        let base = &ctx.data_unchecked::<PublicBase>().0;
        let rotated = webhooks
            .rotate_source_secret(
                base,
                input.id.as_str(),
                input.secret.as_deref(),
                input.grace_hours,
            )
            .await?;
        Ok(RotateWebhookSourceSecretPayload {
            source: WebhookSource(rotated.model),
            secret: rotated.secret,
            url: rotated.url,
        })
    }

    /// Disables a source (admins): it answers 410 Gone and stores nothing until enabled.
    async fn disable_webhook_source(
        &self,
        ctx: &Context<'_>,
        input: WebhookSourceIdInput,
    ) -> Result<WebhookSourcePayload> {
        set_source_status(ctx, input, SourceStatus::Disabled).await
    }

    /// Enables a disabled source again (admins).
    async fn enable_webhook_source(
        &self,
        ctx: &Context<'_>,
        input: WebhookSourceIdInput,
    ) -> Result<WebhookSourcePayload> {
        set_source_status(ctx, input, SourceStatus::Enabled).await
    }

    /// Deletes a source (admins): it answers 410 Gone from now on; its receipts stay.
    async fn delete_webhook_source(
        &self,
        ctx: &Context<'_>,
        input: WebhookSourceIdInput,
    ) -> Result<WebhookSourcePayload> {
        principal(ctx).await?.require_admin()?;
        let webhooks = ctx.data_unchecked::<Webhooks>();
        let source = webhooks.delete_source(input.id.as_str()).await?;
        Ok(WebhookSourcePayload {
            source: WebhookSource(source),
        })
    }

    /// Attributes a deal to a partner of its program (admins). MANUAL attribution is never
    /// overridden by the automatic CODE and DOMAIN rules.
    async fn attribute_deal(
        &self,
        ctx: &Context<'_>,
        input: AttributeDealInput,
    ) -> Result<AttributeDealPayload> {
        let db = admin_db(ctx).await?;
        if !is_valid_id(input.deal_id.as_str()) {
            return Err(ApiError::NotFound("deal").into());
        }
        if !is_valid_id(input.partner_id.as_str()) {
            return Err(ApiError::NotFound("partner").into());
        }
        let (deal, attribution) = attribute_deal(db, input).await?;
        Ok(AttributeDealPayload {
            deal: Deal::new(deal, Some(attribution)),
        })
    }
}
