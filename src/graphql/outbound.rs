//! GraphQL for events out: webhook endpoints and deliveries, and the `events` subscription.

use crate::graphql::caller;
use crate::graphql::connection::EqIf;
use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect, QueryTrait};

use crate::{
    db::{
        Db,
        entities::{webhook_delivery, webhook_delivery_attempt, webhook_endpoint},
        pages::{Direction, PageArgs},
    },
    domain::{
        auth::Principal,
        endpoints::{
            CreateWebhookEndpointInput, DeliveryStatus, EndpointStatus, UpdateWebhookEndpointInput,
            create_endpoint, delete_endpoint, find_delivery, find_managed, find_managed_history,
            live, managed_by, replay_deliveries, resend_delivery, rotate_secret,
            set_endpoint_status, update_endpoint,
        },
        events::{EventPosition, check_types, list_events},
        secrets::SecretKey,
    },
    error::ApiError,
    graphql::{
        connection::connection,
        loaders::{ChildKind, Loaders},
        principal,
        types::{Event, child_page, page_complexity},
    },
    outbound::{EventFeed, OutboundSettings},
};

/// What the outbound GraphQL needs: the sealing key, the settings and the event feed.
#[derive(Clone)]
pub struct OutboundContext {
    /// Seals endpoint secrets.
    pub key: Arc<SecretKey>,
    /// Delivery settings (URL rules).
    pub settings: OutboundSettings,
    /// Live events for subscriptions.
    pub feed: EventFeed,
}

/// A URL Tandem posts events to, signed per Standard Webhooks.
pub struct WebhookEndpoint(pub webhook_endpoint::Model);

/// A URL Tandem posts events to, signed per Standard Webhooks.
#[tandem_derive::plain_object]
#[Object]
impl WebhookEndpoint {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Where events are posted.
    async fn url(&self) -> &str {
        &self.0.url
    }
    /// The event types it receives.
    async fn event_types(&self) -> Result<Vec<String>> {
        serde_json::from_value(self.0.event_types.clone())
            .map_err(|e| ApiError::Internal(format!("stored event types: {e}")).into())
    }
    /// ENABLED or DISABLED.
    async fn status(&self) -> EndpointStatus {
        self.0.status
    }
    /// Why it was disabled.
    async fn disabled_reason(&self) -> Option<&str> {
        self.0.disabled_reason.as_deref()
    }
    /// A note for humans.
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    /// Deliveries per second to it (null: the hub's `webhook_rate_limit`).
    async fn rate_limit(&self) -> Option<i32> {
        self.0.rate_limit
    }
    /// When it was deleted (it then receives nothing; its deliveries stay as history).
    async fn deleted_at(&self) -> Option<DateTime<Utc>> {
        self.0.deleted_at
    }
    /// Only events of this program (null: every program the owning key may see).
    async fn program_id(&self) -> Option<ID> {
        self.0.program_id.clone().map(ID)
    }
    /// Since when every attempt has failed (null after any success).
    async fn failing_since(&self) -> Option<DateTime<Utc>> {
        self.0.failing_since
    }
    /// Until when the secret before the last rotation still signs deliveries.
    async fn previous_secret_expires_at(&self) -> Option<DateTime<Utc>> {
        self.0
            .previous_secret_expires_at
            .filter(|until| *until > Utc::now())
    }
    /// When it was created (it receives events from then on).
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// One event on its way to one endpoint, with its latest attempt.
pub struct WebhookDelivery(pub webhook_delivery::Model);

/// One event on its way to one endpoint, with its latest attempt.
#[tandem_derive::plain_object]
#[Object]
impl WebhookDelivery {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The endpoint.
    async fn endpoint_id(&self) -> ID {
        ID(self.0.endpoint_id.clone())
    }
    /// The event (its id is the `webhook-id` header of every attempt).
    async fn event_id(&self) -> &str {
        &self.0.event_id
    }
    /// The event's type.
    async fn event_type(&self) -> &str {
        &self.0.event_type
    }
    /// PENDING, SUCCEEDED or FAILED.
    async fn status(&self) -> DeliveryStatus {
        self.0.status
    }
    /// Attempts made so far.
    async fn attempt(&self) -> i32 {
        self.0.attempt
    }
    /// HTTP status of the latest attempt (null when it got no answer).
    async fn status_code(&self) -> Option<i32> {
        self.0.status_code
    }
    /// Duration of the latest attempt.
    async fn latency_ms(&self) -> Option<i64> {
        self.0.latency_ms
    }
    /// What went wrong in the latest attempt (timeout, connection error, status and the
    /// start of the body).
    async fn last_error(&self) -> Option<&str> {
        self.0.last_error.as_deref()
    }
    /// When the latest attempt was made.
    async fn last_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.0.last_attempt_at
    }
    /// When the endpoint accepted it.
    async fn delivered_at(&self) -> Option<DateTime<Utc>> {
        self.0.delivered_at
    }
    /// When the next attempt is due (PENDING only).
    async fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        if self.0.status != DeliveryStatus::Pending {
            return None;
        }
        self.0
            .next_attempt_at_ms
            .and_then(DateTime::<Utc>::from_timestamp_millis)
    }
    /// When it was queued.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// Every attempt so far, oldest first: when, what the endpoint answered (status and the
    /// first KiB of the body) or what went wrong.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn attempts(
        &self,
        ctx: &Context<'_>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<WebhookDeliveryAttemptConnection> {
        // Through a loader: the attempts of a whole page of deliveries in one statement.
        let loaders = ctx.data_unchecked::<Loaders>();
        let args = PageArgs::parse(first, after)?;
        let (page, had_cursor, total) = child_page(
            &loaders.delivery_attempts,
            ChildKind::DeliveryAttempts,
            &self.0.id,
            args,
        )
        .await?;
        Ok(WebhookDeliveryAttemptConnection::build(
            page,
            had_cursor,
            |a| a.id.clone(),
            Attempt,
            total,
        ))
    }
}

/// One attempt at a delivery.
pub struct Attempt(pub webhook_delivery_attempt::Model);

/// One attempt at a delivery.
#[tandem_derive::plain_object]
#[Object(name = "WebhookDeliveryAttempt")]
impl Attempt {
    /// 1 for the first attempt, then 2, 3, …
    async fn attempt(&self) -> i32 {
        self.0.attempt
    }
    /// When it was made.
    async fn at(&self) -> DateTime<Utc> {
        self.0.attempted_at
    }
    /// The endpoint's HTTP status (null when it gave no answer).
    async fn status_code(&self) -> Option<i32> {
        self.0.status_code
    }
    /// How long it took.
    async fn latency_ms(&self) -> Option<i64> {
        self.0.latency_ms
    }
    /// The first KiB of the answer's body.
    async fn response_snippet(&self) -> Option<&str> {
        self.0.response_snippet.as_deref()
    }
    /// What went wrong (timeout, connection error, or the status and start of the body).
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
}

// Reached through connections, resolved field by field.

connection!(
    WebhookEndpointConnection,
    WebhookEndpointEdge,
    WebhookEndpoint,
    "webhook endpoints"
);
connection!(
    WebhookDeliveryAttemptConnection,
    WebhookDeliveryAttemptEdge,
    Attempt,
    "delivery attempts"
);
connection!(
    WebhookDeliveryConnection,
    WebhookDeliveryEdge,
    WebhookDelivery,
    "webhook deliveries"
);

/// Filters for `webhookDeliveries`.
#[derive(Debug, Default, InputObject)]
pub struct WebhookDeliveryFilter {
    /// Only deliveries to this endpoint.
    pub endpoint_id: Option<ID>,
    /// Only deliveries in this status.
    pub status: Option<DeliveryStatus>,
    /// Only deliveries of this event.
    pub event_id: Option<String>,
}

/// Outbound webhook queries.
#[derive(Default)]
pub struct OutboundQuery;

/// Outbound webhook queries.
#[Object]
impl OutboundQuery {
    /// Webhook endpoints the caller manages, newest first (admins: all).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn webhook_endpoints(
        &self,
        ctx: &Context<'_>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<WebhookEndpointConnection> {
        let query = webhook_endpoint::Entity::find()
            .filter(managed_by(principal(ctx).await?))
            .filter(live());
        let page = (first, after);
        WebhookEndpointConnection::page(ctx, query, Direction::Descending, page, WebhookEndpoint)
            .await
    }

    /// One delivery to an endpoint the caller manages, with its attempts (NOT_FOUND for any
    /// other).
    async fn webhook_delivery(&self, ctx: &Context<'_>, id: ID) -> Result<WebhookDelivery> {
        let (principal, db) = caller(ctx).await?;
        Ok(WebhookDelivery(
            find_delivery(db, principal, id.as_str()).await?,
        ))
    }

    /// Deliveries to the endpoints the caller manages, newest first.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        filter: Option<WebhookDeliveryFilter>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<WebhookDeliveryConnection> {
        let (principal, db) = caller(ctx).await?;
        let filter = filter.unwrap_or_default();
        let mut query = webhook_delivery::Entity::find();
        if let Some(endpoint_id) = &filter.endpoint_id {
            find_managed_history(db, principal, endpoint_id.as_str()).await?;
            query = query.filter(webhook_delivery::Column::EndpointId.eq(endpoint_id.to_string()));
        } else if !matches!(principal, Principal::Admin { .. }) {
            let managed = webhook_endpoint::Entity::find()
                .select_only()
                .column(webhook_endpoint::Column::Id)
                .filter(managed_by(principal))
                .into_query();
            query = query.filter(webhook_delivery::Column::EndpointId.in_subquery(managed));
        }
        let query = query
            .eq_if(
                webhook_delivery::Column::Status,
                filter.status.map(|s| s.as_str()),
            )
            .eq_if(webhook_delivery::Column::EventId, filter.event_id);
        let page = (first, after);
        WebhookDeliveryConnection::page(ctx, query, Direction::Descending, page, WebhookDelivery)
            .await
    }
}

/// Result of `createWebhookEndpoint`.
#[derive(SimpleObject)]
pub struct CreateWebhookEndpointPayload {
    /// The new endpoint.
    pub endpoint: WebhookEndpoint,
    /// Its signing secret (`whsec_…`), shown this once.
    pub secret: String,
}

/// Input of `rotateWebhookEndpointSecret`.
#[derive(Debug, InputObject)]
pub struct RotateWebhookEndpointSecretInput {
    /// The endpoint.
    pub id: ID,
}

/// Result of `rotateWebhookEndpointSecret`.
#[derive(SimpleObject)]
pub struct RotateWebhookEndpointSecretPayload {
    /// The endpoint.
    pub endpoint: WebhookEndpoint,
    /// The new secret, shown this once; the previous one keeps signing for 24 hours.
    pub secret: String,
}

/// Input of `enableWebhookEndpoint`.
#[derive(Debug, InputObject)]
pub struct EnableWebhookEndpointInput {
    /// The endpoint.
    pub id: ID,
}

/// Result of `enableWebhookEndpoint`.
#[derive(SimpleObject)]
pub struct EnableWebhookEndpointPayload {
    /// The endpoint, ENABLED.
    pub endpoint: WebhookEndpoint,
}

/// Result of `updateWebhookEndpoint`.
#[derive(SimpleObject)]
pub struct UpdateWebhookEndpointPayload {
    /// The endpoint as it is now.
    pub endpoint: WebhookEndpoint,
}

/// Input of `disableWebhookEndpoint`.
#[derive(Debug, InputObject)]
pub struct DisableWebhookEndpointInput {
    /// The endpoint.
    pub id: ID,
}

/// Result of `disableWebhookEndpoint`.
#[derive(SimpleObject)]
pub struct DisableWebhookEndpointPayload {
    /// The endpoint, DISABLED.
    pub endpoint: WebhookEndpoint,
}

/// Input of `deleteWebhookEndpoint`.
#[derive(Debug, InputObject)]
pub struct DeleteWebhookEndpointInput {
    /// The endpoint.
    pub id: ID,
}

/// Result of `deleteWebhookEndpoint`.
#[derive(SimpleObject)]
pub struct DeleteWebhookEndpointPayload {
    /// The endpoint as deleted (`deletedAt` set).
    pub endpoint: WebhookEndpoint,
    /// Pending deliveries cancelled.
    pub cancelled_deliveries: i64,
}

/// Input of `resendWebhookDelivery`.
#[derive(Debug, InputObject)]
pub struct ResendWebhookDeliveryInput {
    /// The delivery.
    pub id: ID,
}

/// Result of `resendWebhookDelivery`.
#[derive(SimpleObject)]
pub struct ResendWebhookDeliveryPayload {
    /// The delivery, PENDING and due now.
    pub delivery: WebhookDelivery,
}

/// Input of `replayWebhookDeliveries`.
#[derive(Debug, InputObject)]
pub struct ReplayWebhookDeliveriesInput {
    /// The endpoint.
    pub endpoint_id: ID,
    /// Events from this time on that the endpoint has not received are sent again.
    pub since: DateTime<Utc>,
}

/// Result of `replayWebhookDeliveries`.
#[derive(SimpleObject)]
pub struct ReplayWebhookDeliveriesPayload {
    /// The endpoint.
    pub endpoint: WebhookEndpoint,
    /// Deliveries queued.
    pub queued: i64,
}

/// Outbound webhook mutations.
#[derive(Default)]
pub struct OutboundMutation;

/// Outbound webhook mutations.
#[Object]
impl OutboundMutation {
    /// Registers an endpoint for some event types. Its secret is returned once and stored
    /// encrypted. ADMIN: any program or all; INTEGRATION: programs granted to the key;
    /// PARTNER: events about its own partner only.
    async fn create_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        input: CreateWebhookEndpointInput,
    ) -> Result<CreateWebhookEndpointPayload> {
        let principal = principal(ctx).await?;
        let outbound = ctx.data_unchecked::<OutboundContext>();
        let db = ctx.data_unchecked::<Db>();
        let created = create_endpoint(
            db,
            &outbound.key,
            principal,
            input,
            outbound.settings.allow_private,
        )
        .await?;
        Ok(CreateWebhookEndpointPayload {
            endpoint: WebhookEndpoint(created.endpoint),
            secret: created.secret,
        })
    }

    /// Replaces an endpoint's secret; deliveries carry signatures with both the new and the
    /// old secret for 24 hours.
    async fn rotate_webhook_endpoint_secret(
        &self,
        ctx: &Context<'_>,
        input: RotateWebhookEndpointSecretInput,
    ) -> Result<RotateWebhookEndpointSecretPayload> {
        let principal = principal(ctx).await?;
        let outbound = ctx.data_unchecked::<OutboundContext>();
        let db = ctx.data_unchecked::<Db>();
        let rotated = rotate_secret(db, &outbound.key, principal, input.id.as_str()).await?;
        Ok(RotateWebhookEndpointSecretPayload {
            endpoint: WebhookEndpoint(rotated.endpoint),
            secret: rotated.secret,
        })
    }

    /// Enables a disabled endpoint; its pending deliveries resume.
    async fn enable_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        input: EnableWebhookEndpointInput,
    ) -> Result<EnableWebhookEndpointPayload> {
        let (principal, db) = caller(ctx).await?;
        let endpoint =
            set_endpoint_status(db, principal, input.id.as_str(), EndpointStatus::Enabled).await?;
        Ok(EnableWebhookEndpointPayload {
            endpoint: WebhookEndpoint(endpoint),
        })
    }

    /// Changes an endpoint's URL (checked like a new one), event types, description or rate
    /// limit. Deliveries not yet made go to the new URL.
    async fn update_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        input: UpdateWebhookEndpointInput,
    ) -> Result<UpdateWebhookEndpointPayload> {
        let (principal, db) = caller(ctx).await?;
        let allow_private = ctx
            .data_unchecked::<OutboundContext>()
            .settings
            .allow_private;
        let endpoint = update_endpoint(db, principal, input, allow_private).await?;
        Ok(UpdateWebhookEndpointPayload {
            endpoint: WebhookEndpoint(endpoint),
        })
    }

    /// Disables an endpoint: it receives nothing until enabled again; its pending deliveries
    /// wait.
    async fn disable_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        input: DisableWebhookEndpointInput,
    ) -> Result<DisableWebhookEndpointPayload> {
        let (principal, db) = caller(ctx).await?;
        let endpoint =
            set_endpoint_status(db, principal, input.id.as_str(), EndpointStatus::Disabled).await?;
        Ok(DisableWebhookEndpointPayload {
            endpoint: WebhookEndpoint(endpoint),
        })
    }

    /// Deletes an endpoint: its pending deliveries are cancelled; its deliveries stay readable
    /// with `webhookDeliveries(filter: {endpointId})`.
    async fn delete_webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        input: DeleteWebhookEndpointInput,
    ) -> Result<DeleteWebhookEndpointPayload> {
        let (principal, db) = caller(ctx).await?;
        let (endpoint, cancelled) = delete_endpoint(db, principal, input.id.as_str()).await?;
        Ok(DeleteWebhookEndpointPayload {
            endpoint: WebhookEndpoint(endpoint),
            cancelled_deliveries: cancelled as i64,
        })
    }

    /// Sends one delivery again, with its original `webhook-id` (receivers de-duplicate on
    /// it): it becomes PENDING and due now.
    async fn resend_webhook_delivery(
        &self,
        ctx: &Context<'_>,
        input: ResendWebhookDeliveryInput,
    ) -> Result<ResendWebhookDeliveryPayload> {
        let (principal, db) = caller(ctx).await?;
        let delivery = resend_delivery(db, principal, input.id.as_str()).await?;
        Ok(ResendWebhookDeliveryPayload {
            delivery: WebhookDelivery(delivery),
        })
    }

    /// Sends again what an endpoint missed since a time: failed deliveries start over, and
    /// events it got no delivery for (while disabled) are queued.
    async fn replay_webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        input: ReplayWebhookDeliveriesInput,
    ) -> Result<ReplayWebhookDeliveriesPayload> {
        let (principal, db) = caller(ctx).await?;
        let queued =
            replay_deliveries(db, principal, input.endpoint_id.as_str(), input.since).await?;
        let endpoint = find_managed(db, principal, input.endpoint_id.as_str()).await?;
        Ok(ReplayWebhookDeliveriesPayload {
            endpoint: WebhookEndpoint(endpoint),
            queued: queued as i64,
        })
    }
}

/// The subscription root.
#[derive(Default)]
pub struct SubscriptionRoot;

/// Events read per catch-up query.
const CATCH_UP_PAGE: u64 = 100;

/// How often an open subscription checks that its key is still valid.
const REVOCATION_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the key `key_id` still authenticates: it exists, is not revoked, and its partner (if
/// any) is not terminated. A database error counts as active: the stream is not cut for a
/// transient failure.
async fn key_is_active(db: &Db, key_id: &str) -> bool {
    match crate::domain::auth::principals_of_keys(db, vec![key_id.to_string()]).await {
        Ok(principals) => principals.contains_key(key_id),
        Err(err) => {
            tracing::warn!(error = ?err, "checking a subscription's key failed");
            true
        }
    }
}

/// The subscription root.
#[Subscription]
impl SubscriptionRoot {
    /// The event stream, as outbound webhooks see it, scoped like the caller's key. From
    /// `after` (an event's `cursor`) when given, so a reconnecting client misses nothing;
    /// else from now.
    async fn events(
        &self,
        ctx: &Context<'_>,
        types: Option<Vec<String>>,
        after: Option<String>,
    ) -> Result<impl Stream<Item = Event> + use<>> {
        let principal = principal(ctx).await?.clone();
        if let Some(types) = &types {
            check_types(types)?;
        }
        let start = match &after {
            None => None,
            Some(cursor) => Some(
                EventPosition::parse(cursor)
                    .ok_or_else(|| ApiError::bad_input("after", "is not an event cursor"))?,
            ),
        };
        let db = ctx.data_unchecked::<Db>().clone();
        let feed = ctx.data_unchecked::<OutboundContext>().feed.clone();
        // Subscribe before catching up, so nothing published meanwhile is missed.
        let mut live = feed.subscribe();
        let mut position = start.unwrap_or_else(|| feed.head());
        let mut catch_up = start.is_some();
        let mut revocation_check = tokio::time::interval(REVOCATION_CHECK);
        revocation_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(async_stream::stream! {
            loop {
                if catch_up {
                    loop {
                        let rows = match list_events(&db, &principal, Some(position), types.as_deref(), CATCH_UP_PAGE).await {
                            Ok(rows) => rows,
                            Err(err) => {
                                tracing::warn!(error = ?err, "subscription catch-up failed");
                                return;
                            }
                        };
                        let more = rows.len() as u64 > CATCH_UP_PAGE;
                        for event in rows.into_iter().take(CATCH_UP_PAGE as usize) {
                            position = EventPosition::of(&event);
                            yield Event(event);
                        }
                        if !more {
                            break;
                        }
                    }
                    catch_up = false;
                }
                let received = tokio::select! {
                    received = live.recv() => received,
                    _ = revocation_check.tick() => {
                        // A key revoked after the subscription started ends it.
                        if !key_is_active(&db, principal.key_id()).await {
                            return;
                        }
                        continue;
                    }
                };
                match received {
                    Ok(batch) => {
                        for event in batch.iter() {
                            let at = EventPosition::of(event);
                            if at <= position {
                                continue;
                            }
                            position = at;
                            let wanted = types.as_ref().is_none_or(|t| t.contains(&event.event_type))
                                && principal.sees_event(&event.program_id, event.partner_id.as_deref());
                            if wanted {
                                yield Event(event.clone());
                            }
                        }
                    }
                    // Fell behind the broadcast: read what was missed from the database.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => catch_up = true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    }
}
