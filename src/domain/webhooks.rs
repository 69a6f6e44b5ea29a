//! Webhook sources (DESIGN §6): creating them (their secret is shown once and sealed at rest),
//! verifying inbound requests per source kind on the raw body, and splitting a verified request
//! into provider events ready for the inbox.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use async_graphql::{Enum, ID, InputObject};
use chrono::{DateTime, Utc};
use http::HeaderMap;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, EntityTrait, QuerySelect, Statement,
};
use secrecy::{ExposeSecret, SecretString};
use tandem_connectors::{
    inbound::{self, HubSpotDealEvent, InboundEvent, StandardEvent},
    stripe::{BillingEvent, BillingFact},
    verify::{self, HubSpotRequest, VerifyError},
};
use tokio::sync::RwLock;

pub use crate::db::states::{SourceStatus, WebhookSourceKind};
use crate::{
    db::{
        Db,
        entities::{program, webhook_source},
    },
    domain::{
        ids::{is_valid_id, new_id},
        programs::validated_name,
        secrets::{SecretKey, new_standard_secret, random_bytes},
    },
    error::{ApiError, ApiResult},
};

/// Which HubSpot signature scheme a HUBSPOT source checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(
    name = "HubSpotSignatureVersion",
    remote = "tandem_connectors::verify::HubSpotSignatureVersion"
)]
pub enum HubSpotSignatureScheme {
    /// `X-HubSpot-Signature` v1 (SHA-256 of secret + body).
    V1,
    /// `X-HubSpot-Signature` v2 (SHA-256 of secret + method + URI + body).
    V2,
    /// `X-HubSpot-Signature-v3` (HMAC-SHA256, timestamped): the default.
    V3,
}

impl HubSpotSignatureScheme {
    fn as_str(self) -> &'static str {
        match self {
            HubSpotSignatureScheme::V1 => "V1",
            HubSpotSignatureScheme::V2 => "V2",
            HubSpotSignatureScheme::V3 => "V3",
        }
    }

    /// Parses the database form (absent means V3).
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("V1") => HubSpotSignatureScheme::V1,
            Some("V2") => HubSpotSignatureScheme::V2,
            _ => HubSpotSignatureScheme::V3,
        }
    }
}

/// The Salesforce custom field carrying Tandem's referral code (DESIGN §7).
pub const SALESFORCE_REFERRAL_CODE_FIELD: &str = "Tandem_Referral_Code__c";

/// Input of `createWebhookSource`.
#[derive(InputObject)]
pub struct CreateWebhookSourceInput {
    /// A label for the source.
    pub name: String,
    /// What sends to it.
    pub kind: WebhookSourceKind,
    /// The program whose deals it feeds.
    pub program_id: ID,
    /// HUBSPOT: the CRM connection deals are fetched through.
    pub connection_id: Option<ID>,
    /// STANDARD: an existing `whsec_…` secret (generated when absent). HUBSPOT: the app's
    /// client secret (required). PIPEDRIVE: `user:password` (generated when absent).
    /// SALESFORCE: the URL token (generated when absent).
    pub secret: Option<String>,
    /// SALESFORCE: the org id every Outbound Message must carry (required).
    pub salesforce_org_id: Option<String>,
    /// HUBSPOT: the signature scheme the app uses (default V3).
    pub hubspot_signature_version: Option<HubSpotSignatureScheme>,
    /// PIPEDRIVE: the custom field key holding the referral code; SALESFORCE: the field name
    /// (default `Tandem_Referral_Code__c`).
    pub referral_code_field: Option<String>,
}

impl std::fmt::Debug for CreateWebhookSourceInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateWebhookSourceInput")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("program_id", &self.program_id)
            .finish_non_exhaustive()
    }
}

/// A source ready to verify requests: its row and its opened secrets.
pub struct Source {
    /// The stored row.
    pub model: webhook_source::Model,
    /// Its kind.
    pub kind: WebhookSourceKind,
    current: OpenedSecret,
    /// The secret before the last rotation and until when it still verifies.
    previous: Option<(OpenedSecret, DateTime<Utc>)>,
    hubspot_scheme: HubSpotSignatureScheme,
}

/// A source secret opened for verification.
struct OpenedSecret {
    secret: SecretString,
    /// STANDARD: the decoded key.
    standard_key: Vec<u8>,
}

/// How long a rotated-out source secret keeps verifying by default.
pub const SOURCE_SECRET_GRACE_HOURS: i64 = 24;
/// The longest grace period a rotation may ask for.
pub const MAX_SOURCE_SECRET_GRACE_HOURS: i64 = 24 * 30;

/// The PostgreSQL channel on which a changed source is announced to every instance (payload:
/// its id), so that each drops its cached copy.
const SOURCE_CHANGED_CHANNEL: &str = "tandem_webhook_sources";

/// The parts of an inbound request verification needs.
pub struct InboundRequest<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// The full URL the sender called (public base URL + path + query).
    pub url: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The `token` query parameter (Salesforce).
    pub token: Option<&'a str>,
    /// The raw body.
    pub body: &'a [u8],
    /// When it arrived.
    pub received_at: DateTime<Utc>,
}

impl InboundRequest<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the inbox should do with one event of a verified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Apply it now.
    Apply,
    /// Keep it until it can be applied, with the reason.
    Park(String),
    /// It can never be applied: stored as FAILED with the reason.
    Fail(String),
    /// Verified, but of a type Tandem does not act on: stored as IGNORED with the reason.
    Ignore(String),
}

/// One event of a verified request, ready for the inbox.
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    /// The provider's event id (de-duplication key).
    pub event_id: Option<String>,
    /// What is stored.
    pub payload: String,
    /// What the inbox does with it.
    pub disposition: Disposition,
}

/// Webhook sources: creation, a cache of opened secrets, verification and splitting.
#[derive(Clone)]
pub struct Webhooks {
    db: Db,
    key: Arc<SecretKey>,
    cache: Arc<RwLock<HashMap<String, Arc<Source>>>>,
    /// Bumped on every invalidation: a read that started before one does not fill the cache.
    generation: Arc<AtomicU64>,
}

/// A source just created, with what is shown once.
pub struct CreatedSource {
    /// The stored source.
    pub model: webhook_source::Model,
    /// The secret to hand to the sender (`None` when the admin supplied the HubSpot secret).
    pub secret: Option<String>,
    /// The URL to configure in the sender.
    pub url: String,
}

fn random_alphanumeric(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    random_bytes(&mut bytes);
    // 62 symbols: rejection-free mapping biases very slightly; 256 % 62 = 8 extra hits on the
    // first 8 symbols lowers entropy per symbol from 5.954 to about 5.95 bits.
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// The secret of a source of `kind`: the one `given` (checked) or a new one, and what is shown
/// to the admin (`None` for HUBSPOT, whose client secret the admin supplied).
fn source_secret(
    kind: WebhookSourceKind,
    given: Option<&str>,
) -> ApiResult<(String, Option<String>)> {
    Ok(match kind {
        WebhookSourceKind::Standard => {
            let secret = match given {
                Some(s) => {
                    let key = verify::decode_standard_secret(s).map_err(|_| {
                        ApiError::bad_input("input.secret", "must be a whsec_ secret (base64)")
                    })?;
                    if key.len() < 16 {
                        return Err(ApiError::bad_input(
                            "input.secret",
                            "must hold at least 16 bytes of key material",
                        ));
                    }
                    s.to_string()
                }
                None => new_standard_secret(),
            };
            (secret.clone(), Some(secret))
        }
        WebhookSourceKind::Hubspot => {
            let secret = given.ok_or_else(|| {
                ApiError::bad_input(
                    "input.secret",
                    "the HubSpot app's client secret is required",
                )
            })?;
            (secret.to_string(), None)
        }
        WebhookSourceKind::Pipedrive => {
            let secret = match given {
                Some(s) => match s.split_once(':') {
                    Some((user, password)) if !user.is_empty() && password.len() >= 8 => {
                        s.to_string()
                    }
                    _ => {
                        return Err(ApiError::bad_input(
                            "input.secret",
                            "must be user:password with a password of at least 8 characters",
                        ));
                    }
                },
                None => format!("tandem:{}", random_alphanumeric(32)),
            };
            (secret.clone(), Some(secret))
        }
        WebhookSourceKind::Stripe => {
            // Stripe generates the endpoint's signing secret; the admin copies it here.
            let secret = given.ok_or_else(|| {
                ApiError::bad_input(
                    "input.secret",
                    "the Stripe endpoint's signing secret (whsec_…) is required",
                )
            })?;
            if !secret.starts_with("whsec_") || secret.len() < 16 {
                return Err(ApiError::bad_input(
                    "input.secret",
                    "must be the Stripe endpoint's signing secret (whsec_…)",
                ));
            }
            (secret.to_string(), None)
        }
        WebhookSourceKind::Salesforce => {
            let token = match given {
                Some(s) if s.len() >= 16 && s.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                    s.to_string()
                }
                Some(_) => {
                    return Err(ApiError::bad_input(
                        "input.secret",
                        "a Salesforce token must be at least 16 letters or digits",
                    ));
                }
                None => random_alphanumeric(40),
            };
            (token.clone(), Some(token))
        }
    })
}

fn is_salesforce_id(id: &str) -> bool {
    matches!(id.len(), 15 | 18) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl Webhooks {
    /// Webhook sources on `db`, secrets sealed with `key`.
    pub fn new(db: Db, key: Arc<SecretKey>) -> Webhooks {
        Webhooks {
            db,
            key,
            cache: Arc::new(RwLock::new(HashMap::new())),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The URL a sender posts to.
    pub fn source_url(
        base_url: &str,
        model: &webhook_source::Model,
        secret: Option<&str>,
    ) -> String {
        let url = format!("{}/webhooks/{}", base_url.trim_end_matches('/'), model.id);
        match (model.kind.as_str(), secret) {
            ("SALESFORCE", Some(token)) => format!("{url}?token={token}"),
            _ => url,
        }
    }

    /// Creates a source; the secret comes back once.
    pub async fn create_source(
        &self,
        base_url: &str,
        input: CreateWebhookSourceInput,
    ) -> ApiResult<CreatedSource> {
        let name = validated_name("input.name", &input.name)?;
        let program_id = input.program_id.to_string();
        if !is_valid_id(&program_id) {
            return Err(ApiError::bad_input(
                "input.programId",
                "no program has this id",
            ));
        }
        let given = input
            .secret
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let mut org_id = None;
        let mut referral_code_field = input
            .referral_code_field
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if input.kind == WebhookSourceKind::Salesforce {
            let org = input
                .salesforce_org_id
                .as_deref()
                .map(str::trim)
                .filter(|s| is_salesforce_id(s))
                .ok_or_else(|| {
                    ApiError::bad_input(
                        "input.salesforceOrgId",
                        "the Salesforce org id (15 or 18 characters) is required",
                    )
                })?;
            org_id = Some(org.to_string());
            referral_code_field.get_or_insert_with(|| SALESFORCE_REFERRAL_CODE_FIELD.to_string());
        }
        let (secret, shown) = source_secret(input.kind, given)?;
        let connection_id = input.connection_id.map(|id| id.to_string());
        if let Some(id) = &connection_id
            && !is_valid_id(id)
        {
            return Err(ApiError::bad_input(
                "input.connectionId",
                "not a connection id",
            ));
        }
        let tx = self.db.begin_write().await?;
        program::Entity::find_by_id(program_id.clone())
            .one(&*tx)
            .await?
            .ok_or_else(|| ApiError::bad_input("input.programId", "no program has this id"))?;
        if let Some(id) = &connection_id {
            let connection = crate::db::entities::crm_connection::Entity::find_by_id(id.clone())
                .one(&*tx)
                .await?
                .ok_or_else(|| {
                    ApiError::bad_input("input.connectionId", "no CRM connection has this id")
                })?;
            if connection.program_id != program_id
                || connection.kind != crate::db::states::CrmKind::Hubspot
            {
                return Err(ApiError::bad_input(
                    "input.connectionId",
                    "must be a HUBSPOT connection of the same program",
                ));
            }
        }
        let model = webhook_source::ActiveModel {
            id: Set(new_id()),
            program_id: Set(program_id),
            name: Set(name),
            kind: Set(input.kind),
            connection_id: Set(connection_id),
            secret_ciphertext: Set(self.key.seal(&secret)),
            salesforce_org_id: Set(org_id),
            hubspot_signature_version: Set((input.kind == WebhookSourceKind::Hubspot).then(|| {
                input
                    .hubspot_signature_version
                    .unwrap_or(HubSpotSignatureScheme::V3)
                    .as_str()
                    .to_string()
            })),
            referral_code_field: Set(referral_code_field),
            created_at: Set(Utc::now()),
            previous_secret_ciphertext: Set(None),
            previous_secret_expires_at: Set(None),
            status: Set(SourceStatus::Enabled),
            deleted_at: Set(None),
            updated_at: Set(None),
        }
        .insert(&*tx)
        .await?;
        tx.commit().await?;
        let url = Self::source_url(base_url, &model, shown.as_deref());
        Ok(CreatedSource {
            model,
            secret: shown,
            url,
        })
    }

    fn open_secret(&self, kind: WebhookSourceKind, sealed: &str) -> ApiResult<OpenedSecret> {
        let secret = self
            .key
            .open(sealed)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let standard_key = if kind == WebhookSourceKind::Standard {
            verify::decode_standard_secret(secret.expose_secret())
                .map_err(|_| ApiError::Internal("stored STANDARD secret is not base64".into()))?
        } else {
            Vec::new()
        };
        Ok(OpenedSecret {
            secret,
            standard_key,
        })
    }

    /// The source `id` for a change (locked on PostgreSQL), `NOT_FOUND` when it does not exist
    /// or was deleted.
    async fn find_live(conn: &impl ConnectionTrait, id: &str) -> ApiResult<webhook_source::Model> {
        if !is_valid_id(id) {
            return Err(ApiError::NotFound("webhook source"));
        }
        let mut query = webhook_source::Entity::find_by_id(id.to_string());
        if conn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
            query = query.lock_exclusive();
        }
        query
            .one(conn)
            .await?
            .filter(|s| s.deleted_at.is_none())
            .ok_or(ApiError::NotFound("webhook source"))
    }

    /// Changes the live source `id` inside one write transaction: `change` gets the row as read
    /// there (locked on PostgreSQL) and returns what to write, or `None` to leave it as it is.
    /// A written change is announced to every instance: this one drops its cached copy at
    /// once, the others through `NOTIFY` when the transaction commits (PostgreSQL).
    async fn change_source(
        &self,
        id: &str,
        change: impl FnOnce(&webhook_source::Model) -> ApiResult<Option<webhook_source::ActiveModel>>,
    ) -> ApiResult<webhook_source::Model> {
        let tx = self.db.begin_write().await?;
        let existing = Self::find_live(&*tx, id).await?;
        let Some(mut model) = change(&existing)? else {
            return Ok(existing);
        };
        model.updated_at = Set(Some(Utc::now()));
        let saved = model.update(&*tx).await?;
        if self.db.is_postgres() {
            tx.execute_raw(Statement::from_sql_and_values(
                self.db.backend(),
                "SELECT pg_notify($1, $2)",
                [SOURCE_CHANGED_CHANNEL.into(), saved.id.clone().into()],
            ))
            .await?;
        }
        tx.commit().await?;
        self.forget(Some(&saved.id)).await;
        Ok(saved)
    }

    /// Replaces a source's secret (the one `given`, checked as on creation, or a new one; a
    /// HUBSPOT source needs the app's new client secret). The previous secret keeps verifying
    /// for `grace_hours` (default 24), so the sender can be switched without losing a request.
    pub async fn rotate_source_secret(
        &self,
        base_url: &str,
        id: &str,
        given: Option<&str>,
        grace_hours: Option<i32>,
    ) -> ApiResult<CreatedSource> {
        let grace = i64::from(grace_hours.unwrap_or(SOURCE_SECRET_GRACE_HOURS as i32));
        if !(0..=MAX_SOURCE_SECRET_GRACE_HOURS).contains(&grace) {
            return Err(ApiError::bad_input(
                "input.graceHours",
                format!("must be between 0 and {MAX_SOURCE_SECRET_GRACE_HOURS}"),
            ));
        }
        let given = given.map(str::trim).filter(|s| !s.is_empty());
        let mut shown = None;
        let saved = self
            .change_source(id, |existing| {
                let (secret, show) = source_secret(existing.kind, given)?;
                shown = show;
                let mut model: webhook_source::ActiveModel = existing.clone().into();
                model.previous_secret_ciphertext = Set(Some(existing.secret_ciphertext.clone()));
                model.previous_secret_expires_at =
                    Set(Some(Utc::now() + chrono::Duration::hours(grace)));
                model.secret_ciphertext = Set(self.key.seal(&secret));
                Ok(Some(model))
            })
            .await?;
        let url = Self::source_url(base_url, &saved, shown.as_deref());
        Ok(CreatedSource {
            model: saved,
            secret: shown,
            url,
        })
    }

    /// Enables or disables a source; a DISABLED source answers 410 Gone and stores nothing.
    pub async fn set_source_status(
        &self,
        id: &str,
        status: SourceStatus,
    ) -> ApiResult<webhook_source::Model> {
        self.change_source(id, |existing| {
            if existing.status == status {
                return Ok(None);
            }
            let mut model: webhook_source::ActiveModel = existing.clone().into();
            model.status = Set(status);
            Ok(Some(model))
        })
        .await
    }

    /// Deletes a source: it answers 410 Gone from now on; its receipts stay as history.
    pub async fn delete_source(&self, id: &str) -> ApiResult<webhook_source::Model> {
        self.change_source(id, |existing| {
            let mut model: webhook_source::ActiveModel = existing.clone().into();
            model.status = Set(SourceStatus::Disabled);
            model.deleted_at = Set(Some(Utc::now()));
            Ok(Some(model))
        })
        .await
    }

    /// Drops the cached source `id` (every source with `None`).
    async fn forget(&self, id: Option<&str>) {
        let mut cache = self.cache.write().await;
        self.generation.fetch_add(1, Ordering::AcqRel);
        match id {
            Some(id) => {
                cache.remove(id);
            }
            None => cache.clear(),
        }
    }

    /// PostgreSQL: drops cached sources that another instance changed (`NOTIFY` on
    /// `tandem_webhook_sources`), and the whole cache whenever the listener (re)connects, since
    /// announcements may have been missed meanwhile. Runs until `stop`.
    pub async fn listen_for_changes(self, stop: tokio::sync::watch::Receiver<bool>) {
        let this = &self;
        self.db
            .listen(
                SOURCE_CHANGED_CHANNEL,
                stop,
                || this.forget(None),
                |id| async move { this.forget(Some(&id)).await },
            )
            .await
    }

    /// The source with this id, its secrets opened (cached until it changes).
    pub async fn source(&self, id: &str) -> ApiResult<Option<Arc<Source>>> {
        if let Some(found) = self.cache.read().await.get(id) {
            return Ok(Some(found.clone()));
        }
        if !is_valid_id(id) {
            return Ok(None);
        }
        // A change announced while this read runs must not be overwritten by what it read.
        let generation = self.generation.load(Ordering::Acquire);
        let Some(model) = webhook_source::Entity::find_by_id(id.to_string())
            .one(self.db.reads())
            .await?
        else {
            return Ok(None);
        };
        let kind = model.kind;
        let current = self.open_secret(kind, &model.secret_ciphertext)?;
        let previous = match (
            &model.previous_secret_ciphertext,
            model.previous_secret_expires_at,
        ) {
            (Some(sealed), Some(until)) if until > Utc::now() => {
                Some((self.open_secret(kind, sealed)?, until))
            }
            _ => None,
        };
        let source = Arc::new(Source {
            hubspot_scheme: HubSpotSignatureScheme::parse(
                model.hubspot_signature_version.as_deref(),
            ),
            model,
            kind,
            current,
            previous,
        });
        let mut cache = self.cache.write().await;
        if self.generation.load(Ordering::Acquire) == generation {
            cache.insert(id.to_string(), source.clone());
        }
        Ok(Some(source))
    }
}

impl Source {
    /// Verifies a request on its raw body, before anything is parsed: with the current secret,
    /// or with the previous one while its grace period lasts.
    pub fn verify(&self, request: &InboundRequest<'_>) -> Result<(), VerifyError> {
        let current = self.verify_with(&self.current, request);
        match &self.previous {
            Some((previous, until)) if current.is_err() && request.received_at < *until => {
                self.verify_with(previous, request).or(current)
            }
            _ => current,
        }
    }

    /// Whether the source refuses every request, whatever its signature: a DISABLED or deleted
    /// source answers 410 Gone and stores nothing.
    pub fn is_gone(&self) -> bool {
        self.model.deleted_at.is_some() || self.model.status == SourceStatus::Disabled
    }

    fn verify_with(
        &self,
        opened: &OpenedSecret,
        request: &InboundRequest<'_>,
    ) -> Result<(), VerifyError> {
        match self.kind {
            WebhookSourceKind::Standard => verify::verify_standard(
                std::slice::from_ref(&opened.standard_key),
                request.header("webhook-id"),
                request.header("webhook-timestamp"),
                request.header("webhook-signature"),
                request.body,
                request.received_at.timestamp(),
                Some(verify::STANDARD_TOLERANCE_SECS),
            ),
            WebhookSourceKind::Hubspot => {
                let signature = match self.hubspot_scheme {
                    HubSpotSignatureScheme::V3 => request.header("x-hubspot-signature-v3"),
                    _ => request.header("x-hubspot-signature"),
                };
                verify::verify_hubspot(
                    opened.secret.expose_secret(),
                    self.hubspot_scheme.into(),
                    HubSpotRequest {
                        method: request.method,
                        uri: request.url,
                        signature,
                        timestamp_ms: request.header("x-hubspot-request-timestamp"),
                        body: request.body,
                    },
                    request.received_at.timestamp_millis(),
                    Some(verify::HUBSPOT_MAX_AGE_MS),
                )
            }
            WebhookSourceKind::Pipedrive => verify::verify_basic(
                opened.secret.expose_secret(),
                request.header("authorization"),
            ),
            WebhookSourceKind::Salesforce => verify::verify_salesforce(
                opened.secret.expose_secret(),
                self.model.salesforce_org_id.as_deref().unwrap_or_default(),
                request.token,
                request.body,
            ),
            WebhookSourceKind::Stripe => verify::verify_stripe(
                &[opened.secret.expose_secret()],
                request.header("stripe-signature"),
                request.body,
                request.received_at.timestamp(),
                Some(verify::STRIPE_TOLERANCE_SECS),
            ),
        }
    }

    /// Splits a verified request into events and decides what the inbox does with each. The
    /// payload is checked here so that a malformed one is stored as FAILED at once (and, for
    /// STANDARD, the sender is told).
    pub fn split(&self, request: &InboundRequest<'_>) -> Vec<ReceivedEvent> {
        let events: Vec<InboundEvent> = match self.kind {
            WebhookSourceKind::Standard => vec![InboundEvent {
                event_id: request.header("webhook-id").map(str::to_string),
                payload: String::from_utf8_lossy(request.body).into_owned(),
                error: None,
            }],
            WebhookSourceKind::Hubspot => inbound::split_hubspot(request.body),
            WebhookSourceKind::Pipedrive => vec![inbound::split_pipedrive(request.body)],
            WebhookSourceKind::Salesforce => inbound::split_salesforce(request.body),
            WebhookSourceKind::Stripe => vec![InboundEvent {
                event_id: tandem_connectors::stripe::event_id(request.body),
                payload: String::from_utf8_lossy(request.body).into_owned(),
                error: None,
            }],
        };
        events
            .into_iter()
            .map(|event| {
                let disposition = match event.error {
                    Some(err) => Disposition::Fail(err.0),
                    None => match self.check(event.payload.as_bytes(), request.received_at) {
                        Ok(disposition) => disposition,
                        Err(err) => Disposition::Fail(err.0),
                    },
                };
                ReceivedEvent {
                    event_id: event.event_id,
                    payload: event.payload,
                    disposition,
                }
            })
            .collect()
    }

    fn check(
        &self,
        payload: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<Disposition, inbound::PayloadError> {
        if self.kind == WebhookSourceKind::Stripe {
            return Ok(match self.billing(payload)?.fact {
                BillingFact::Ignored(reason) => Disposition::Ignore(reason),
                _ => Disposition::Apply,
            });
        }
        // The currency only fills in a missing one when applying; any valid code checks.
        match self.inbound(payload, "USD", received_at)? {
            // Money outside Tandem's bounds, or a currency that is no ISO 4217 code, is refused
            // before it is acknowledged (applying checks it again, for every path).
            Inbound::Deal(inbound::DealChange::Upsert(deal)) => {
                deal.check().map_err(inbound::PayloadError)?;
                Ok(Disposition::Apply)
            }
            Inbound::Deal(_) | Inbound::Lead(_) | Inbound::Certification(_) => {
                Ok(Disposition::Apply)
            }
            Inbound::Fetch => Ok(Disposition::Park(HUBSPOT_WAITING.to_string())),
        }
    }

    /// The billing event a stored payload of a STRIPE source carries.
    pub fn billing(&self, payload: &[u8]) -> Result<BillingEvent, inbound::PayloadError> {
        tandem_connectors::stripe::parse_event(payload)
    }

    /// What a stored payload of a CRM or STANDARD source asks for, read once. Billing sources
    /// carry none of these (see [`Source::billing`]).
    pub fn inbound(
        &self,
        payload: &[u8],
        currency: &str,
        received_at: DateTime<Utc>,
    ) -> Result<Inbound, inbound::PayloadError> {
        let field = self.model.referral_code_field.as_deref();
        match self.kind {
            WebhookSourceKind::Standard => Ok(
                match inbound::standard_event(payload, currency, received_at)? {
                    StandardEvent::Deal(change) => Inbound::Deal(change),
                    StandardEvent::LeadEngaged(lead) => Inbound::Lead(lead),
                    StandardEvent::CertificationIssued(issued) => Inbound::Certification(issued),
                },
            ),
            WebhookSourceKind::Hubspot => match inbound::hubspot_deal_event(payload)? {
                HubSpotDealEvent::Deleted(change) => Ok(Inbound::Deal(change)),
                HubSpotDealEvent::NeedsFetch { .. } => Ok(Inbound::Fetch),
            },
            WebhookSourceKind::Pipedrive => {
                inbound::pipedrive_deal_change(payload, field, currency).map(Inbound::Deal)
            }
            WebhookSourceKind::Salesforce => inbound::salesforce_deal_change(
                payload,
                field.unwrap_or(SALESFORCE_REFERRAL_CODE_FIELD),
                currency,
            )
            .map(Inbound::Deal),
            WebhookSourceKind::Stripe => Err(inbound::PayloadError(
                "a billing source carries no deal changes".into(),
            )),
        }
    }
}

/// What a stored receipt of a CRM or STANDARD source asks Tandem to do.
// Nearly every receipt is a deal upsert: boxing the deal would allocate once per receipt.
#[allow(clippy::large_enum_variant)]
pub enum Inbound {
    /// Apply this deal change.
    Deal(inbound::DealChange),
    /// Fetch the deal from the CRM first (HubSpot creation and property-change events).
    Fetch,
    /// Sales engaged a referred lead (STANDARD `lead.engaged`, DESIGN §12).
    Lead(inbound::LeadEngagement),
    /// A person at a partner was certified (STANDARD `certification.issued`, DESIGN §13).
    Certification(inbound::CertificationIssued),
}

/// Why a HubSpot creation/property-change receipt waits in the inbox.
pub const HUBSPOT_WAITING: &str = "waiting for the deal to be fetched from HubSpot: the source's \
CRM connection fetches it on its next sync (a source without a connection keeps it RECEIVED)";
