//! Outbound webhook endpoints: who may register which URL for which events, their signing
//! secrets (shown once, stored sealed, rotated with a 24 h overlap), and the URL safety rules
//! (http(s) only; loopback, private and link-local targets refused unless configured).

use std::collections::HashSet;

use async_graphql::{ID, InputObject, MaybeUndefined};
use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement,
};
use serde_json::json;

pub use crate::db::states::{DeliveryStatus, EndpointStatus};
use crate::{
    db::{
        Db,
        entities::{program, webhook_delivery, webhook_endpoint},
    },
    domain::{
        auth::Principal,
        events::EventType,
        ids::{is_valid_id, new_id},
        secrets::{SecretKey, new_standard_secret},
    },
    error::{ApiError, ApiResult},
};

/// How long a rotated-out secret keeps signing deliveries.
pub const PREVIOUS_SECRET_GRACE_HOURS: i64 = 24;

/// Input of `createWebhookEndpoint`.
#[derive(Debug, InputObject)]
pub struct CreateWebhookEndpointInput {
    /// Where events are posted (http or https).
    pub url: String,
    /// Event types to receive, such as `deal.won` (at least one).
    pub event_types: Vec<String>,
    /// A note for humans.
    pub description: Option<String>,
    /// Only events of this program (default: every program the key may see).
    pub program_id: Option<ID>,
    /// Deliveries per second to this endpoint (1–10,000; default: the hub's
    /// `webhook_rate_limit`).
    pub rate_limit: Option<i32>,
}

/// An endpoint just created or rotated, with its secret (the only time it is shown).
pub struct EndpointWithSecret {
    /// The endpoint.
    pub endpoint: webhook_endpoint::Model,
    /// `whsec_…`.
    pub secret: String,
}

/// Why a URL may not be an endpoint.
pub fn check_target_url(url: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http or https URL".to_string());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".to_string());
    }
    if parsed.host().is_none() {
        return Err("has no host".to_string());
    }
    // The rule every outbound request follows (`tandem_connectors::net`); names are judged
    // again when they resolve.
    if !allow_private && !tandem_connectors::net::literal_host_is_public(&parsed) {
        return Err(
            "targets a loopback, private or link-local address (refused unless \
             TANDEM_WEBHOOK_ALLOW_PRIVATE_TARGETS is set)"
                .to_string(),
        );
    }
    Ok(parsed)
}

/// Checks and normalises the event types of an endpoint.
fn check_event_types(types: &[String]) -> ApiResult<Vec<String>> {
    if types.is_empty() {
        return Err(ApiError::bad_input(
            "input.eventTypes",
            "name at least one event type",
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, t) in types.iter().enumerate() {
        if EventType::parse(t).is_none() {
            return Err(ApiError::bad_input(
                format!("input.eventTypes[{i}]"),
                format!("unknown event type {t:?}"),
            ));
        }
        if seen.insert(t.clone()) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

/// Whether `principal` may manage `endpoint` (anything else is reported as not found).
fn manages(principal: &Principal, endpoint: &webhook_endpoint::Model) -> bool {
    match principal {
        Principal::Admin { .. } => true,
        Principal::Integration { key_id, .. } => &endpoint.owner_key_id == key_id,
        Principal::Partner { partner_id, .. } => endpoint.partner_id.as_ref() == Some(partner_id),
    }
}

/// The endpoint `id` if `principal` manages it, else `NOT_FOUND`.
pub async fn find_managed(
    db: &Db,
    principal: &Principal,
    id: &str,
) -> ApiResult<webhook_endpoint::Model> {
    find_managed_in(db.reads(), principal, id, false).await
}

/// Like [`find_managed`] on `conn`; `lock` takes the row for update (PostgreSQL; SQLite
/// writers are serialised anyway).
async fn find_managed_in(
    conn: &impl ConnectionTrait,
    principal: &Principal,
    id: &str,
    lock: bool,
) -> ApiResult<webhook_endpoint::Model> {
    if !is_valid_id(id) {
        return Err(ApiError::NotFound("webhook endpoint"));
    }
    let mut query = webhook_endpoint::Entity::find_by_id(id.to_string());
    if lock && conn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        query = query.lock_exclusive();
    }
    query
        .one(conn)
        .await?
        .filter(|e| manages(principal, e) && e.deleted_at.is_none())
        .ok_or(ApiError::NotFound("webhook endpoint"))
}

/// The endpoint `id` if `principal` manages or managed it, deleted or not: its deliveries stay
/// readable as history.
pub async fn find_managed_history(
    db: &Db,
    principal: &Principal,
    id: &str,
) -> ApiResult<webhook_endpoint::Model> {
    if !is_valid_id(id) {
        return Err(ApiError::NotFound("webhook endpoint"));
    }
    webhook_endpoint::Entity::find_by_id(id.to_string())
        .one(db.reads())
        .await?
        .filter(|e| manages(principal, e))
        .ok_or(ApiError::NotFound("webhook endpoint"))
}

/// A filter restricting `webhook_endpoints` to those `principal` manages (deleted ones
/// included: see [`live`]).
pub fn managed_by(principal: &Principal) -> sea_orm::Condition {
    match principal {
        Principal::Admin { .. } => sea_orm::Condition::all(),
        Principal::Integration { key_id, .. } => {
            sea_orm::Condition::all().add(webhook_endpoint::Column::OwnerKeyId.eq(key_id.as_str()))
        }
        Principal::Partner { partner_id, .. } => sea_orm::Condition::all()
            .add(webhook_endpoint::Column::PartnerId.eq(partner_id.as_str())),
    }
}

/// Writes a changed endpoint (stamping `updated_at`) and commits.
async fn save(
    tx: crate::db::WriteTx,
    mut active: webhook_endpoint::ActiveModel,
) -> ApiResult<webhook_endpoint::Model> {
    active.updated_at = Set(Utc::now());
    let endpoint = active.update(&*tx).await?;
    tx.commit().await?;
    Ok(endpoint)
}

/// A filter leaving deleted endpoints out.
pub fn live() -> sea_orm::Condition {
    sea_orm::Condition::all().add(webhook_endpoint::Column::DeletedAt.is_null())
}

/// The highest per-endpoint rate limit (deliveries per second).
pub const MAX_ENDPOINT_RATE_LIMIT: i32 = 10_000;

fn check_description(description: Option<String>) -> ApiResult<Option<String>> {
    let description = description.map(|d| d.trim().to_string());
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 500)
    {
        return Err(ApiError::bad_input(
            "input.description",
            "must be at most 500 characters",
        ));
    }
    Ok(description.filter(|d| !d.is_empty()))
}

fn check_rate_limit(rate: Option<i32>) -> ApiResult<Option<i32>> {
    match rate {
        Some(r) if !(1..=MAX_ENDPOINT_RATE_LIMIT).contains(&r) => Err(ApiError::bad_input(
            "input.rateLimit",
            format!("must be between 1 and {MAX_ENDPOINT_RATE_LIMIT} deliveries per second"),
        )),
        other => Ok(other),
    }
}

/// Input of `updateWebhookEndpoint`: fields left out keep their value; `description` and
/// `rateLimit` set to null go back to none and the hub's default.
#[derive(Debug, InputObject)]
pub struct UpdateWebhookEndpointInput {
    /// The endpoint.
    pub id: ID,
    /// A new target URL (checked like a new endpoint's).
    pub url: Option<String>,
    /// The event types to receive from now on.
    pub event_types: Option<Vec<String>>,
    /// A note for humans.
    pub description: MaybeUndefined<String>,
    /// Deliveries per second to this endpoint (1–10,000; null: the hub's default).
    pub rate_limit: MaybeUndefined<i32>,
}

/// Changes an endpoint's URL, event types, description or rate limit. Deliveries not yet
/// made go to the new URL; the event types apply to events from now on.
pub async fn update_endpoint(
    db: &Db,
    principal: &Principal,
    input: UpdateWebhookEndpointInput,
    allow_private: bool,
) -> ApiResult<webhook_endpoint::Model> {
    let url = input
        .url
        .as_deref()
        .map(|u| {
            check_target_url(u, allow_private).map_err(|m| ApiError::bad_input("input.url", m))
        })
        .transpose()?;
    let event_types = input
        .event_types
        .as_deref()
        .map(check_event_types)
        .transpose()?;
    let description = match input.description {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(d) => Some(check_description(Some(d))?),
    };
    let rate_limit = match input.rate_limit {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(r) => Some(check_rate_limit(Some(r))?),
    };
    let tx = db.begin_write().await?;
    let endpoint = find_managed_in(&*tx, principal, input.id.as_str(), true).await?;
    let mut active: webhook_endpoint::ActiveModel = endpoint.into();
    if let Some(url) = url {
        active.url = Set(url.to_string());
    }
    if let Some(types) = event_types {
        active.event_types = Set(json!(types));
    }
    if let Some(description) = description {
        active.description = Set(description);
    }
    if let Some(rate_limit) = rate_limit {
        active.rate_limit = Set(rate_limit);
    }
    save(tx, active).await
}

/// Deletes an endpoint: it receives nothing more, its pending deliveries are CANCELLED, and
/// its deliveries stay readable (`webhookDeliveries(filter: {endpointId})`). Returns the
/// endpoint as deleted and how many deliveries were cancelled.
pub async fn delete_endpoint(
    db: &Db,
    principal: &Principal,
    id: &str,
) -> ApiResult<(webhook_endpoint::Model, u64)> {
    let tx = db.begin_write().await?;
    let endpoint = find_managed_in(&*tx, principal, id, true).await?;
    let now = Utc::now();
    let [status, next, endpoint_id] = db.params();
    // A delivery a worker is posting at this moment still records what really happened to it
    // (its outcome update matches on the claim token).
    let cancelled = tx
        .execute_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "UPDATE webhook_deliveries SET status = {status}, next_attempt_at_ms = {next} \
                 WHERE endpoint_id = {endpoint_id} AND status = 'PENDING'"
            ),
            vec![
                DeliveryStatus::Cancelled.as_str().into(),
                Option::<i64>::None.into(),
                endpoint.id.clone().into(),
            ],
        ))
        .await?
        .rows_affected();
    let mut active: webhook_endpoint::ActiveModel = endpoint.into();
    active.status = Set(EndpointStatus::Disabled);
    active.disabled_reason = Set(Some("deleted".into()));
    active.deleted_at = Set(Some(now));
    Ok((save(tx, active).await?, cancelled))
}

/// The delivery `id` as `conn` sees it, whoever's it is (NOT_FOUND when there is none).
async fn delivery_in(conn: &impl ConnectionTrait, id: &str) -> ApiResult<webhook_delivery::Model> {
    if !is_valid_id(id) {
        return Err(ApiError::NotFound("webhook delivery"));
    }
    webhook_delivery::Entity::find_by_id(id.to_string())
        .one(conn)
        .await?
        .ok_or(ApiError::NotFound("webhook delivery"))
}

/// One delivery to an endpoint `principal` manages (deleted endpoints included, like their
/// delivery log); NOT_FOUND for any other.
pub async fn find_delivery(
    db: &Db,
    principal: &Principal,
    id: &str,
) -> ApiResult<webhook_delivery::Model> {
    let delivery = delivery_in(db.reads(), id).await?;
    find_managed_history(db, principal, &delivery.endpoint_id)
        .await
        .map_err(|_| ApiError::NotFound("webhook delivery"))?;
    Ok(delivery)
}

/// Makes one delivery PENDING and due now, to be sent again with its original webhook-id
/// (the attempt count goes on). `CONFLICT` while a worker is attempting it.
pub async fn resend_delivery(
    db: &Db,
    principal: &Principal,
    id: &str,
) -> ApiResult<webhook_delivery::Model> {
    let tx = db.begin_write().await?;
    let delivery = delivery_in(&*tx, id).await?;
    find_managed_in(&*tx, principal, &delivery.endpoint_id, true)
        .await
        .map_err(|_| ApiError::NotFound("webhook delivery"))?;
    if delivery.status == DeliveryStatus::Pending && delivery.claim_token.is_some() {
        return Err(ApiError::Conflict(
            "the delivery is being attempted right now".into(),
        ));
    }
    let mut active: webhook_delivery::ActiveModel = delivery.into();
    active.status = Set(DeliveryStatus::Pending);
    active.next_attempt_at_ms = Set(Some(Utc::now().timestamp_millis()));
    active.claim_token = Set(None);
    let delivery = active.update(&*tx).await?;
    tx.commit().await?;
    Ok(delivery)
}

/// Creates an endpoint owned by the caller's key. ADMIN keys may name any program (or none:
/// every event); INTEGRATION keys only programs they are granted; PARTNER keys receive events
/// about their own partner only.
pub async fn create_endpoint(
    db: &Db,
    key: &SecretKey,
    principal: &Principal,
    input: CreateWebhookEndpointInput,
    allow_private: bool,
) -> ApiResult<EndpointWithSecret> {
    let url = check_target_url(&input.url, allow_private)
        .map_err(|m| ApiError::bad_input("input.url", m))?;
    let event_types = check_event_types(&input.event_types)?;
    let description = check_description(input.description)?;
    let rate_limit = check_rate_limit(input.rate_limit)?;
    let program_id = match input.program_id {
        None => None,
        Some(id) => {
            let id = id.to_string();
            let visible = match principal {
                Principal::Admin { .. } => true,
                Principal::Integration { program_ids, .. } => program_ids.contains(&id),
                Principal::Partner { program_id, .. } => program_id == &id,
            };
            let exists = visible
                && is_valid_id(&id)
                && program::Entity::find_by_id(id.clone())
                    .one(db.reads())
                    .await?
                    .is_some();
            if !exists {
                return Err(ApiError::NotFound("program"));
            }
            Some(id)
        }
    };
    let secret = new_standard_secret();
    let now = Utc::now();
    let model = webhook_endpoint::ActiveModel {
        id: Set(new_id()),
        url: Set(url.to_string()),
        description: Set(description),
        event_types: Set(json!(event_types)),
        program_id: Set(program_id),
        owner_key_id: Set(principal.key_id().to_string()),
        partner_id: Set(principal.partner_scope().map(str::to_string)),
        secret_ciphertext: Set(key.seal(&secret)),
        previous_secret_ciphertext: Set(None),
        previous_secret_expires_at: Set(None),
        status: Set(EndpointStatus::Enabled),
        disabled_reason: Set(None),
        failing_since: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        rate_limit: Set(rate_limit),
        deleted_at: Set(None),
    };
    let tx = db.begin_write().await?;
    let endpoint = model.insert(&*tx).await?;
    tx.commit().await?;
    Ok(EndpointWithSecret { endpoint, secret })
}

/// Replaces an endpoint's secret. The old one keeps signing (a second signature in
/// `webhook-signature`) for 24 hours, so receivers can switch without losing a delivery.
pub async fn rotate_secret(
    db: &Db,
    key: &SecretKey,
    principal: &Principal,
    id: &str,
) -> ApiResult<EndpointWithSecret> {
    let tx = db.begin_write().await?;
    let endpoint = find_managed_in(&*tx, principal, id, true).await?;
    let secret = new_standard_secret();
    let now = Utc::now();
    let mut active: webhook_endpoint::ActiveModel = endpoint.clone().into();
    active.previous_secret_ciphertext = Set(Some(endpoint.secret_ciphertext.clone()));
    active.previous_secret_expires_at =
        Set(Some(now + Duration::hours(PREVIOUS_SECRET_GRACE_HOURS)));
    active.secret_ciphertext = Set(key.seal(&secret));
    let endpoint = save(tx, active).await?;
    Ok(EndpointWithSecret { endpoint, secret })
}

/// Enables an endpoint (its failure streak is forgotten and pending deliveries resume) or
/// disables it by hand (it receives nothing; pending deliveries wait until it is enabled).
pub async fn set_endpoint_status(
    db: &Db,
    principal: &Principal,
    id: &str,
    status: EndpointStatus,
) -> ApiResult<webhook_endpoint::Model> {
    let tx = db.begin_write().await?;
    let endpoint = find_managed_in(&*tx, principal, id, true).await?;
    if endpoint.status == status && status == EndpointStatus::Disabled {
        return Ok(endpoint);
    }
    let mut active: webhook_endpoint::ActiveModel = endpoint.into();
    active.status = Set(status);
    active.failing_since = Set(None);
    active.disabled_reason = Set((status == EndpointStatus::Disabled)
        .then(|| "disabled with disableWebhookEndpoint".to_string()));
    save(tx, active).await
}

/// Queues again, for one endpoint, every event since `since` that it has not received: failed
/// deliveries start over, and events since its creation it never got a delivery for (it was
/// disabled) get one.
/// Returns how many deliveries were queued.
pub async fn replay_deliveries(
    db: &Db,
    principal: &Principal,
    id: &str,
    since: DateTime<Utc>,
) -> ApiResult<u64> {
    let now = Utc::now();
    if since > now {
        return Err(ApiError::bad_input("input.since", "is in the future"));
    }
    let endpoint = find_managed(db, principal, id).await?;
    let owner = crate::domain::auth::principals_of_keys(db, vec![endpoint.owner_key_id.clone()])
        .await?
        .remove(&endpoint.owner_key_id)
        .ok_or_else(|| {
            ApiError::Conflict("the key that created this endpoint has been revoked".to_string())
        })?;
    let matcher = EndpointMatcher::new(&endpoint, owner)?;
    let now_ms = now.timestamp_millis();
    let tx = db.begin_write().await?;
    let backend = db.backend();
    let requeued = tx
        .execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE webhook_deliveries SET status = 'PENDING', attempt = 0, \
                 next_attempt_at_ms = {p1}, claim_token = NULL \
                 WHERE endpoint_id = {p2} AND status = 'FAILED' AND created_at >= {p3}",
                p1 = db.numbered(1),
                p2 = db.numbered(2),
                p3 = db.numbered(3),
            ),
            vec![now_ms.into(), endpoint.id.clone().into(), since.into()],
        ))
        .await?
        .rows_affected();
    // Events the endpoint never got a delivery for (from its creation on: an endpoint cannot
    // have missed what happened before it existed), in pages.
    let mut missed = 0u64;
    let mut after_seq = i64::MIN;
    loop {
        let rows = crate::db::entities::event::Entity::find()
            .filter(
                crate::db::entities::event::Column::CreatedAt.gte(since.max(endpoint.created_at)),
            )
            .filter(crate::db::entities::event::Column::Seq.gt(after_seq))
            .filter(crate::db::entities::event::Column::EventType.is_in(matcher.types.clone()))
            .order_by_asc(crate::db::entities::event::Column::Seq)
            .limit(1000)
            .all(&*tx)
            .await?;
        let Some(last) = rows.last() else { break };
        after_seq = last.seq;
        let wanted: Vec<_> = rows.iter().filter(|e| matcher.wants(e)).collect();
        if wanted.is_empty() {
            continue;
        }
        let ids: Vec<String> = wanted.iter().map(|e| e.id.clone()).collect();
        let have: HashSet<String> = webhook_delivery::Entity::find()
            .filter(webhook_delivery::Column::EndpointId.eq(endpoint.id.as_str()))
            .filter(webhook_delivery::Column::EventId.is_in(ids))
            .all(&*tx)
            .await?
            .into_iter()
            .map(|d| d.event_id)
            .collect();
        let new: Vec<webhook_delivery::ActiveModel> = wanted
            .into_iter()
            .filter(|e| !have.contains(&e.id))
            .map(|e| new_delivery(&endpoint.id, e, now_ms))
            .collect();
        missed += new.len() as u64;
        crate::db::insert_all(&*tx, new, None).await?;
    }
    tx.commit().await?;
    Ok(requeued + missed)
}

/// A PENDING delivery of `event` to `endpoint_id`, due at `due_ms`.
pub fn new_delivery(
    endpoint_id: &str,
    event: &crate::db::entities::event::Model,
    due_ms: i64,
) -> webhook_delivery::ActiveModel {
    webhook_delivery::ActiveModel {
        id: Set(new_id()),
        endpoint_id: Set(endpoint_id.to_string()),
        event_id: Set(event.id.clone()),
        event_type: Set(event.event_type.clone()),
        status: Set(DeliveryStatus::Pending),
        attempt: Set(0),
        status_code: Set(None),
        latency_ms: Set(None),
        last_error: Set(None),
        last_attempt_at: Set(None),
        delivered_at: Set(None),
        next_attempt_at_ms: Set(Some(due_ms)),
        claim_token: Set(None),
        created_at: Set(Utc::now()),
    }
}

/// Which events an endpoint receives: its types and program, within what its owner's key may
/// see.
pub struct EndpointMatcher {
    /// The endpoint's id.
    pub endpoint_id: String,
    types: Vec<String>,
    program_id: Option<String>,
    owner: Principal,
    created_at: DateTime<Utc>,
}

impl EndpointMatcher {
    /// The matcher of an endpoint whose owner key is `owner`.
    pub fn new(endpoint: &webhook_endpoint::Model, owner: Principal) -> ApiResult<Self> {
        let types: Vec<String> =
            serde_json::from_value(endpoint.event_types.clone()).map_err(|e| {
                ApiError::Internal(format!("endpoint {} event types: {e}", endpoint.id))
            })?;
        Ok(EndpointMatcher {
            endpoint_id: endpoint.id.clone(),
            types,
            program_id: endpoint.program_id.clone(),
            owner,
            created_at: endpoint.created_at,
        })
    }

    /// Whether the endpoint receives `event` when it is fanned out (events from before the
    /// endpoint existed are only sent by a replay).
    pub fn receives(&self, event: &crate::db::entities::event::Model) -> bool {
        event.created_at >= self.created_at && self.wants(event)
    }

    /// Whether the event is of a type, program and scope the endpoint is for.
    pub fn wants(&self, event: &crate::db::entities::event::Model) -> bool {
        self.types.iter().any(|t| t == &event.event_type)
            && self
                .program_id
                .as_ref()
                .is_none_or(|p| p == &event.program_id)
            && self
                .owner
                .sees_event(&event.program_id, event.partner_id.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use tandem_connectors::net::is_public_ip;

    use super::*;

    #[test]
    fn only_public_http_targets_pass_by_default() {
        assert!(check_target_url("https://hooks.example.com/tandem", false).is_ok());
        assert!(check_target_url("http://93.184.216.34:8080/x", false).is_ok());
        for bad in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "not a url",
            "http://127.0.0.1/x",
            "http://localhost:8080/x",
            "http://api.localhost/x",
            "http://10.1.2.3/x",
            "http://172.16.0.1/x",
            "http://192.168.1.1/x",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/x",
            "http://0.0.0.0/x",
            "http://[::1]/x",
            "http://[fe80::1]/x",
            "http://[fd00::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "https://user:pass@example.com/x",
        ] {
            assert!(check_target_url(bad, false).is_err(), "{bad} passed");
        }
        assert!(check_target_url("http://127.0.0.1:9/x", true).is_ok());
        assert!(check_target_url("ftp://127.0.0.1/x", true).is_err());
    }

    /// The addresses of the outside probe (issue 16, finding 5) and the rest of the IANA
    /// special-purpose registries; public addresses, also in IPv6 forms carrying them, pass.
    #[test]
    fn special_purpose_ranges_and_embedded_ipv4_are_refused() {
        for bad in [
            "64:ff9b::a9fe:a9fe",     // NAT64 of 169.254.169.254
            "64:ff9b::7f00:1",        // NAT64 of 127.0.0.1
            "64:ff9b:1::1",           // local-use NAT64
            "::127.0.0.1",            // IPv4-compatible
            "::8.8.8.8",              // IPv4-compatible, even of a public address
            "2002:7f00:1::",          // 6to4 of 127.0.0.1
            "2002:808:808::1",        // 6to4 of a public address: refused as a form
            "::ffff:0:7f00:1",        // IPv4-translated
            "fec0::1",                // site-local
            "2001::1",                // Teredo
            "2001:10::1",             // ORCHID
            "2001:db8::1",            // documentation
            "3fff::1",                // documentation (2024)
            "100::1",                 // discard-only
            "5f00::1",                // SRv6 SIDs
            "ff02::1",                // multicast
            "::",                     // unspecified
            "::1",                    // loopback
            "fe80::1",                // link-local
            "fc00::1",                // unique local
            "::ffff:169.254.169.254", // IPv4-mapped link-local
            "::ffff:10.0.0.1",        // IPv4-mapped private
            "198.18.0.1",             // benchmarking
            "198.19.255.255",         // benchmarking
            "240.0.0.1",              // reserved
            "255.255.255.255",        // broadcast
            "192.0.0.1",              // IETF protocol assignments
            "192.0.2.1",              // TEST-NET-1
            "198.51.100.7",           // TEST-NET-2
            "203.0.113.9",            // TEST-NET-3
            "192.88.99.1",            // 6to4 relay anycast
            "224.0.0.1",              // multicast
            "0.1.2.3",                // this network
            "100.127.255.255",        // shared address space
            "172.31.255.255",         // private
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(!is_public_ip(ip), "{bad} passed");
            let url = match ip {
                IpAddr::V4(_) => format!("http://{bad}/x"),
                IpAddr::V6(_) => format!("http://[{bad}]/x"),
            };
            assert!(check_target_url(&url, false).is_err(), "{url} passed");
        }
        for good in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "198.20.0.1",
            "223.255.255.254",
            "2606:4700:4700::1111",
            "2a00:1450:4001:82b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public_ip(good.parse().unwrap()), "{good} refused");
        }
    }
}
