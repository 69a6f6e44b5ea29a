//! CRM connections and deal sync (DESIGN §7). A connection holds sealed credentials and a
//! durable cursor; a sync run applies page after page through the same upsert and attribution
//! as webhook deals, checkpointing the cursor in each page's transaction, and first fetches the
//! deals of HubSpot webhook receipts parked for want of a connection.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_graphql::{ID, InputObject};
use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement,
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tandem_connectors::{
    ConnectorError, CrmConnector, DealPage,
    http::{Credentials, CrmHttp, OAuthClient, RetryPolicy, Vendor},
    hubspot::HubSpot,
    inbound::{DealChange, HubSpotDealEvent, hubspot_deal_event},
    pipedrive::Pipedrive,
    salesforce::Salesforce,
};

pub use crate::db::states::{ConnectionStatus, CrmKind, PushStatus};
use crate::{
    db::states::JobRunStatus,
    db::{
        Db,
        entities::{crm_connection, program, sync_run, webhook_receipt, webhook_source},
    },
    domain::{
        deals::{ApplyResult, DealCache, PLAN_FOR_VALUES, apply_deal_change},
        events,
        ids::{is_valid_id, new_id},
        inbox::ReceiptStatus,
        secrets::SecretKey,
    },
    error::{ApiError, ApiResult},
};

/// OAuth client credentials of a connection.
#[derive(Debug, InputObject)]
pub struct OAuthInput {
    /// The app's client id.
    pub client_id: String,
    /// The app's client secret (stored sealed, never returned).
    pub client_secret: String,
    /// A refresh token (stored sealed; a rotated one replaces it).
    pub refresh_token: String,
    /// Token endpoint (default: HubSpot `/oauth/v1/token` on the base URL).
    pub token_url: Option<String>,
}

/// Input of `createCrmConnection`.
#[derive(Debug, InputObject)]
pub struct CreateCrmConnectionInput {
    /// A label.
    pub name: String,
    /// The CRM.
    pub kind: CrmKind,
    /// The program synced deals belong to.
    pub program_id: ID,
    /// API base URL (default: the vendor's; set it for sandboxes and tests).
    pub base_url: Option<String>,
    /// A fixed access token (HubSpot private app token).
    pub access_token: Option<String>,
    /// OAuth refresh-token credentials instead of an access token.
    pub oauth: Option<OAuthInput>,
    /// Cron (6 fields, seconds first, UTC) of its `crm-sync` runs (default every 5 minutes).
    pub schedule: Option<String>,
    /// The CRM field carrying Tandem's referral code: PIPEDRIVE, the deal custom field key
    /// (HubSpot uses `tandem_referral_code`, Salesforce `Tandem_Referral_Code__c`).
    pub referral_code_field: Option<String>,
    /// SALESFORCE: the REST API version (default `62.0`).
    pub api_version: Option<String>,
}

/// Sealed credentials, as stored.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredCredentials {
    access_token: Option<String>,
    oauth: Option<StoredOAuth>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct StoredOAuth {
    client_id: String,
    client_secret: String,
    refresh_token: String,
    token_url: String,
}

/// Default sync schedule: every 5 minutes.
pub const DEFAULT_SCHEDULE: &str = "0 */5 * * * *";

/// Bounds of CRM HTTP calls (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct CrmSettings {
    /// Per-request timeout.
    pub timeout: Duration,
    /// Total retry time per call.
    pub retry_budget: Duration,
    /// Whether CRM URLs may point at loopback, private or link-local addresses (the same
    /// `webhook_allow_private_targets` setting as outbound webhooks; mock CRMs in tests).
    pub allow_private: bool,
}

/// Checks a CRM URL by the rules of outbound webhook targets: http(s), no credentials in it,
/// and (unless private targets are allowed) a public host.
fn check_http_url(field: &str, url: &str, allow_private: bool) -> ApiResult<String> {
    let parsed = crate::domain::endpoints::check_target_url(url, allow_private)
        .map_err(|reason| ApiError::bad_input(field, reason))?;
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// Creates a connection (admins). Credentials are sealed and never shown again.
pub async fn create_connection(
    db: &Db,
    key: &SecretKey,
    input: CreateCrmConnectionInput,
    allow_private: bool,
) -> ApiResult<crm_connection::Model> {
    let name = input.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::bad_input(
            "input.name",
            "must be 1 to 200 characters",
        ));
    }
    let program_id = input.program_id.to_string();
    if !is_valid_id(&program_id)
        || program::Entity::find_by_id(program_id.clone())
            .one(db.reads())
            .await?
            .is_none()
    {
        return Err(ApiError::NotFound("program"));
    }
    let base_url = match (&input.base_url, input.kind) {
        (Some(url), _) => check_http_url("input.baseUrl", url, allow_private)?,
        (None, CrmKind::Hubspot) => "https://api.hubapi.com".to_string(),
        (None, CrmKind::Pipedrive) => "https://api.pipedrive.com".to_string(),
        // The org's instance URL; with OAuth the token answer's `instance_url` replaces it.
        (None, CrmKind::Salesforce) if input.oauth.is_some() => {
            "https://login.salesforce.com".to_string()
        }
        (None, CrmKind::Salesforce) => {
            return Err(ApiError::bad_input(
                "input.baseUrl",
                "a Salesforce connection with an access token needs the org's instance URL",
            ));
        }
    };
    let api_version = match (input.kind, input.api_version) {
        (CrmKind::Salesforce, None) => Some("62.0".to_string()),
        (CrmKind::Salesforce, Some(v)) => {
            let v = v.trim().trim_start_matches('v').to_string();
            let valid = v.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && b.bytes().all(|c| c.is_ascii_digit())
            });
            if !valid {
                return Err(ApiError::bad_input(
                    "input.apiVersion",
                    "must look like 62.0",
                ));
            }
            Some(v)
        }
        (_, Some(_)) => {
            return Err(ApiError::bad_input(
                "input.apiVersion",
                "only SALESFORCE connections have an API version",
            ));
        }
        (_, None) => None,
    };
    let credentials = match (input.access_token, input.oauth) {
        (Some(token), None) if !token.trim().is_empty() => StoredCredentials {
            access_token: Some(token.trim().to_string()),
            oauth: None,
        },
        (None, Some(oauth)) => {
            for (field, value) in [
                ("input.oauth.clientId", &oauth.client_id),
                ("input.oauth.clientSecret", &oauth.client_secret),
                ("input.oauth.refreshToken", &oauth.refresh_token),
            ] {
                if value.trim().is_empty() {
                    return Err(ApiError::bad_input(field, "must not be empty"));
                }
            }
            let token_url = match (&oauth.token_url, input.kind) {
                (Some(url), _) => check_http_url("input.oauth.tokenUrl", url, allow_private)?,
                (None, CrmKind::Hubspot) => format!("{base_url}/oauth/v1/token"),
                (None, CrmKind::Pipedrive) => "https://oauth.pipedrive.com/oauth/token".to_string(),
                (None, CrmKind::Salesforce) => format!("{base_url}/services/oauth2/token"),
            };
            StoredCredentials {
                access_token: None,
                oauth: Some(StoredOAuth {
                    client_id: oauth.client_id.trim().to_string(),
                    client_secret: oauth.client_secret.trim().to_string(),
                    refresh_token: oauth.refresh_token.trim().to_string(),
                    token_url,
                }),
            }
        }
        _ => {
            return Err(ApiError::bad_input(
                "input.accessToken",
                "give either accessToken or oauth",
            ));
        }
    };
    let schedule = input
        .schedule
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| DEFAULT_SCHEDULE.to_string());
    if let Err(e) = crate::config::parse_cron(&schedule) {
        return Err(ApiError::bad_input(
            "input.schedule",
            format!("is not a 6-field cron (seconds first): {e}"),
        ));
    }
    let referral_code_field = input.referral_code_field.map(|f| f.trim().to_string());
    if referral_code_field
        .as_ref()
        .is_some_and(|f| f.is_empty() || f.len() > 100)
    {
        return Err(ApiError::bad_input(
            "input.referralCodeField",
            "must be 1 to 100 characters",
        ));
    }
    let sealed = key.seal(
        &serde_json::to_string(&credentials)
            .map_err(|e| ApiError::Internal(format!("credentials: {e}")))?,
    );
    let now = Utc::now();
    let tx = db.begin_write().await?;
    let model = crm_connection::ActiveModel {
        id: Set(new_id()),
        name: Set(name),
        kind: Set(input.kind),
        program_id: Set(program_id),
        base_url: Set(base_url),
        credentials_ciphertext: Set(sealed),
        schedule: Set(schedule),
        referral_code_field: Set(referral_code_field),
        api_version: Set(api_version),
        cursor: Set(None),
        status: Set(ConnectionStatus::Active),
        last_error: Set(None),
        last_synced_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&*tx)
    .await?;
    tx.commit().await?;
    Ok(model)
}

/// What a sync run did (also the job run's stats).
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStats {
    /// The connection synced.
    pub connection_id: String,
    /// Pages applied.
    pub pages: i32,
    /// Deals read from the CRM.
    pub deals_seen: i32,
    /// Deals whose mirror changed.
    pub deals_changed: i32,
    /// Parked webhook receipts applied.
    pub receipts_applied: i32,
    /// Accepted referrals created in the CRM.
    pub referrals_pushed: i32,
}

/// Where a refresh token rotated during a sync waits to be sealed with the next checkpoint.
type RotationSlot = Arc<Mutex<Option<String>>>;

/// Runs a connection's deal sync.
pub struct Syncer {
    db: Db,
    key: Arc<SecretKey>,
    settings: CrmSettings,
}

impl Syncer {
    /// A syncer over `db`.
    pub fn new(db: Db, key: Arc<SecretKey>, settings: CrmSettings) -> Syncer {
        Syncer { db, key, settings }
    }

    /// The connector of a connection; a rotated refresh token lands in `rotated`.
    fn connector(
        &self,
        connection: &crm_connection::Model,
        currency: &str,
        rotated: RotationSlot,
    ) -> ApiResult<Box<dyn CrmConnector>> {
        let kind = connection.kind;
        let opened = self
            .key
            .open(&connection.credentials_ciphertext)
            .map_err(|e| ApiError::Internal(format!("connection {}: {e}", connection.id)))?;
        let stored: StoredCredentials =
            serde_json::from_str(opened.expose_secret()).map_err(|e| {
                ApiError::Internal(format!("connection {} credentials: {e}", connection.id))
            })?;
        let credentials = match (stored.access_token, stored.oauth) {
            (Some(token), _) => Credentials::AccessToken(token),
            (None, Some(o)) => Credentials::OAuth(OAuthClient {
                token_url: o.token_url,
                client_id: o.client_id,
                client_secret: o.client_secret,
                refresh_token: o.refresh_token,
                // Pipedrive wants the client credentials as HTTP Basic.
                basic_auth: kind == CrmKind::Pipedrive,
            }),
            (None, None) => {
                return Err(ApiError::Internal(format!(
                    "connection {} has no credentials",
                    connection.id
                )));
            }
        };
        let policy = RetryPolicy {
            timeout: self.settings.timeout,
            budget: self.settings.retry_budget,
            ..RetryPolicy::default()
        };
        let vendor = match kind {
            CrmKind::Hubspot => Vendor::HubSpot,
            CrmKind::Salesforce => Vendor::Salesforce,
            CrmKind::Pipedrive => Vendor::Pipedrive,
        };
        let sink = rotated;
        let mut http = CrmHttp::new(vendor, &connection.base_url, credentials, policy)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if !self.settings.allow_private {
            http = http
                .public_only()
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        let http = http.on_refresh(move |r| {
            if let Some(token) = r.refresh_token {
                *sink.lock().expect("rotation slot") = Some(token);
            }
        });
        let connector: Box<dyn CrmConnector> = match kind {
            CrmKind::Hubspot => Box::new(HubSpot::new(http, currency)),
            CrmKind::Pipedrive => Box::new(Pipedrive::new(
                http,
                currency,
                connection.referral_code_field.clone(),
            )),
            CrmKind::Salesforce => Box::new(Salesforce::new(
                http,
                currency,
                connection.api_version.as_deref().unwrap_or("62.0"),
            )),
        };
        Ok(connector)
    }

    /// Seals a rotated refresh token into the stored credentials.
    fn reseal(&self, connection: &crm_connection::Model, refresh_token: &str) -> ApiResult<String> {
        let opened = self
            .key
            .open(&connection.credentials_ciphertext)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut stored: StoredCredentials = serde_json::from_str(opened.expose_secret())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Some(o) = stored.oauth.as_mut() {
            o.refresh_token = refresh_token.to_string();
        }
        Ok(self
            .key
            .seal(&serde_json::to_string(&stored).map_err(|e| ApiError::Internal(e.to_string()))?))
    }

    /// Syncs one connection under run `run_id`: parked receipts first, then pages until caught
    /// up. A failure is recorded on the run and the connection (`FAILING`, the CRM's message)
    /// and returned; pages applied before it stay applied, with the cursor after them.
    pub async fn sync(&self, connection_id: &str, run_id: &str) -> Result<SyncStats, String> {
        let connection = crm_connection::Entity::find_by_id(connection_id.to_string())
            .one(self.db.reads())
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("CRM connection {connection_id} does not exist"))?;
        let mut stats = SyncStats {
            connection_id: connection.id.clone(),
            ..SyncStats::default()
        };
        self.start_run(&connection.id, run_id)
            .await
            .map_err(|e| e.message())?;
        let rotated: RotationSlot = Arc::default();
        let result = self
            .sync_pages(&connection, run_id, &mut stats, rotated.clone())
            .await;
        // A refresh token rotated after the last checkpoint (or before a failure) must not be
        // lost: the CRM may already have invalidated the old one.
        let pending = rotated.lock().expect("rotation slot").take();
        if let Some(token) = pending {
            let sealed = self.reseal(&connection, &token).map_err(|e| e.message())?;
            self.db
                .execute_write(
                    format!(
                        "UPDATE crm_connections SET credentials_ciphertext = {} WHERE id = {}",
                        self.db.numbered(1),
                        self.db.numbered(2)
                    ),
                    vec![sealed.into(), connection.id.clone().into()],
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        let error = result.err();
        self.finish_run(&connection.id, run_id, error.as_deref())
            .await
            .map_err(|e| e.message())?;
        match error {
            Some(error) => Err(error),
            None => Ok(stats),
        }
    }

    async fn sync_pages(
        &self,
        connection: &crm_connection::Model,
        run_id: &str,
        stats: &mut SyncStats,
        rotated: RotationSlot,
    ) -> Result<(), String> {
        let program = program::Entity::find_by_id(connection.program_id.clone())
            .one(self.db.reads())
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the connection's program no longer exists")?;
        let connector = self
            .connector(connection, &program.currency, rotated.clone())
            .map_err(|e| e.message())?;
        stats.receipts_applied = self
            .apply_parked(connection, &program, connector.as_ref(), run_id)
            .await?;
        stats.referrals_pushed = self.push_referrals(connection, connector.as_ref()).await?;
        // Each page is applied while the next one is fetched (its cursor is the page's own).
        let mut page = connector
            .sync_page(connection.cursor.as_deref())
            .await
            .map_err(describe)?;
        // A run stops after this many pages; the next run continues from the cursor.
        for _ in 0..10_000 {
            let more = page.more;
            let (applied, next) = tokio::join!(
                self.apply_page(connection, &program, run_id, stats, &rotated, &page),
                async {
                    if more {
                        Some(connector.sync_page(Some(&page.cursor)).await)
                    } else {
                        None
                    }
                }
            );
            applied?;
            match next {
                Some(next) => page = next.map_err(describe)?,
                None => break,
            }
        }
        Ok(())
    }

    /// Applies one page in one transaction: its deals through the mirror and attribution, the
    /// events they cause, and the checkpoint (cursor, a rotated credential, the run's counters).
    async fn apply_page(
        &self,
        connection: &crm_connection::Model,
        program: &program::Model,
        run_id: &str,
        stats: &mut SyncStats,
        rotated: &RotationSlot,
        page: &DealPage,
    ) -> Result<(), String> {
        let tx = self.db.begin_write().await.map_err(|e| e.to_string())?;
        if self.db.is_postgres() {
            tx.execute_unprepared(PLAN_FOR_VALUES)
                .await
                .map_err(|e| e.to_string())?;
        }
        let keys: Vec<(String, String)> = page
            .deals
            .iter()
            .map(|d| (connection.id.clone(), d.external_id.clone()))
            .collect();
        let mut cache = DealCache::load(&*tx, &keys, self.db.is_postgres())
            .await
            .map_err(|e| e.to_string())?;
        cache
            .load_referrals_for(&*tx, &program.id, &page.deals)
            .await
            .map_err(|e| e.to_string())?;
        // The page's new deals and attributions are written together (flushed below).
        cache.defer_inserts();
        let mut caused = Vec::new();
        let mut changed = 0;
        for deal in &page.deals {
            let change = DealChange::Upsert(deal.clone());
            let (result, state) = apply_deal_change(
                &*tx,
                &mut cache,
                program,
                &connection.id,
                &change,
                &mut caused,
            )
            .await
            .map_err(|e| e.to_string())?;
            if let Some(state) = state {
                cache.remember(state);
            }
            match result {
                ApplyResult::Applied(_) => changed += 1,
                ApplyResult::Invalid(reason) => {
                    tracing::warn!(connection = %connection.id, deal = %deal.external_id, %reason, "CRM deal not stored");
                }
                ApplyResult::Stale(_) | ApplyResult::UnknownDeal => {}
            }
        }
        cache.flush(&*tx).await.map_err(|e| e.to_string())?;
        events::record_all(&*tx, caused)
            .await
            .map_err(|e| e.to_string())?;
        stats.pages += 1;
        stats.deals_seen += page.deals.len() as i32;
        stats.deals_changed += changed;
        let rotated_now = rotated.lock().expect("rotation slot").take();
        let sealed = match rotated_now {
            Some(token) => Some(self.reseal(connection, &token).map_err(|e| e.message())?),
            None => None,
        };
        self.checkpoint(&*tx, connection, run_id, &page.cursor, sealed, stats)
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Stores the cursor (and a rotated credential) and the run's counters with the page.
    async fn checkpoint(
        &self,
        conn: &impl ConnectionTrait,
        connection: &crm_connection::Model,
        run_id: &str,
        cursor: &str,
        sealed: Option<String>,
        stats: &SyncStats,
    ) -> Result<(), sea_orm::DbErr> {
        let db = &self.db;
        let [p1, p2, p3, p4, p5, p6] = db.params();
        conn.execute_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "UPDATE crm_connections SET cursor = {p1}, \
                 credentials_ciphertext = COALESCE({p2}, credentials_ciphertext), updated_at = {p3} \
                 WHERE id = {p4}"
            ),
            vec![
                cursor.into(),
                sealed.into(),
                Utc::now().into(),
                connection.id.clone().into(),
            ],
        ))
        .await?;
        conn.execute_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "UPDATE sync_runs SET pages = {p1}, deals_seen = {p2}, deals_changed = {p3}, \
                 receipts_applied = {p4}, referrals_pushed = {p5} WHERE id = {p6}"
            ),
            vec![
                stats.pages.into(),
                stats.deals_seen.into(),
                stats.deals_changed.into(),
                stats.receipts_applied.into(),
                stats.referrals_pushed.into(),
                run_id.into(),
            ],
        ))
        .await?;
        Ok(())
    }

    /// Fetches and applies the deals of HubSpot receipts parked for this connection.
    async fn apply_parked(
        &self,
        connection: &crm_connection::Model,
        program: &program::Model,
        connector: &dyn CrmConnector,
        run_id: &str,
    ) -> Result<i32, String> {
        let sources: Vec<String> = webhook_source::Entity::find()
            .filter(webhook_source::Column::ConnectionId.eq(connection.id.as_str()))
            .all(self.db.reads())
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|s| s.id)
            .collect();
        if sources.is_empty() {
            return Ok(0);
        }
        let parked = webhook_receipt::Entity::find()
            .filter(webhook_receipt::Column::SourceId.is_in(sources))
            .filter(webhook_receipt::Column::Status.eq(ReceiptStatus::Received.as_str()))
            .filter(webhook_receipt::Column::AvailableAtMs.is_null())
            .order_by_asc(webhook_receipt::Column::Seq)
            .limit(1_000)
            .all(self.db.reads())
            .await
            .map_err(|e| e.to_string())?;
        // One fetch per deal, however many receipts name it.
        let mut fetched: HashMap<String, Option<tandem_connectors::NeutralDeal>> = HashMap::new();
        let mut applied = 0;
        for receipt in parked {
            let external_id = match hubspot_deal_event(receipt.payload.as_bytes()) {
                Ok(HubSpotDealEvent::NeedsFetch { external_id }) => external_id,
                _ => continue,
            };
            if !fetched.contains_key(&external_id) {
                let deal = connector.fetch_deal(&external_id).await.map_err(describe)?;
                fetched.insert(external_id.clone(), deal);
            }
            let tx = self.db.begin_write().await.map_err(|e| e.to_string())?;
            let (status, reason, deal_id) = match &fetched[&external_id] {
                None => (
                    ReceiptStatus::Failed,
                    Some(format!("HubSpot has no deal {external_id}")),
                    None,
                ),
                Some(deal) => {
                    let keys = vec![(connection.id.clone(), deal.external_id.clone())];
                    let mut cache = DealCache::load(&*tx, &keys, self.db.is_postgres())
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut caused = Vec::new();
                    let (result, _) = apply_deal_change(
                        &*tx,
                        &mut cache,
                        program,
                        &connection.id,
                        &DealChange::Upsert(deal.clone()),
                        &mut caused,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    events::record_all(&*tx, caused)
                        .await
                        .map_err(|e| e.to_string())?;
                    match result {
                        ApplyResult::Applied(id) => (ReceiptStatus::Applied, None, Some(id)),
                        ApplyResult::Stale(id) => (ReceiptStatus::IgnoredStale, None, Some(id)),
                        ApplyResult::UnknownDeal => (ReceiptStatus::Applied, None, None),
                        ApplyResult::Invalid(reason) => (ReceiptStatus::Failed, Some(reason), None),
                    }
                }
            };
            let db = &self.db;
            let [p1, p2, p3, p4, p5] = db.params();
            tx.execute_raw(Statement::from_sql_and_values(
                db.backend(),
                format!(
                    "UPDATE webhook_receipts SET status = {p1}, reason = {p2}, deal_id = {p3}, \
                     processed_at = {p4}, attempts = attempts + 1 WHERE seq = {p5} AND status = 'RECEIVED'"
                ),
                vec![
                    status.as_str().into(),
                    reason.into(),
                    deal_id.into(),
                    Utc::now().into(),
                    receipt.seq.into(),
                ],
            ))
            .await
            .map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())?;
            applied += 1;
        }
        let _ = run_id;
        Ok(applied)
    }

    /// Creates the program's ACCEPTED referrals in the CRM (HubSpot company + contact with the
    /// partner's referral code), at most 100 per run. Each CRM id is stored as soon as the
    /// object exists, so a retry never creates it twice; a referral's own failure is recorded
    /// on its row and retried next run, while credential and rate-limit failures end the run.
    async fn push_referrals(
        &self,
        connection: &crm_connection::Model,
        connector: &dyn CrmConnector,
    ) -> Result<i32, String> {
        use crate::db::entities::{crm_referral_push, partner, referral};
        let pushed: std::collections::HashSet<String> = crm_referral_push::Entity::find()
            .filter(crm_referral_push::Column::ConnectionId.eq(connection.id.as_str()))
            .filter(crm_referral_push::Column::Status.eq(PushStatus::Pushed))
            .all(self.db.reads())
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|p| p.referral_id)
            .collect();
        let candidates = referral::Entity::find()
            .filter(referral::Column::ProgramId.eq(connection.program_id.as_str()))
            .filter(referral::Column::Status.eq("ACCEPTED"))
            .order_by_asc(referral::Column::Id)
            .all(self.db.reads())
            .await
            .map_err(|e| e.to_string())?;
        let mut count = 0;
        for referral in candidates
            .into_iter()
            .filter(|r| !pushed.contains(&r.id))
            .take(100)
        {
            let code = partner::Entity::find_by_id(referral.partner_id.clone())
                .one(self.db.reads())
                .await
                .map_err(|e| e.to_string())?
                .map(|p| p.referral_code)
                .unwrap_or_default();
            let existing =
                crm_referral_push::Entity::find_by_id((connection.id.clone(), referral.id.clone()))
                    .one(self.db.reads())
                    .await
                    .map_err(|e| e.to_string())?;
            let push = tandem_connectors::ReferralPush {
                company_name: referral.company_name.clone(),
                company_domain: referral.company_domain.clone(),
                contact_name: referral.contact_name.clone(),
                contact_email: referral.contact_email.clone(),
                referral_code: code,
            };
            let mut company = existing
                .as_ref()
                .and_then(|e| e.company_external_id.clone());
            let mut contact = existing
                .as_ref()
                .and_then(|e| e.contact_external_id.clone());
            let outcome: Result<(), ConnectorError> = async {
                if company.is_none() {
                    company = Some(connector.push_primary(&push).await?);
                    self.record_push(
                        connection,
                        &referral.id,
                        &company,
                        &contact,
                        PushStatus::Pending,
                        None,
                    )
                    .await
                    .map_err(|e| ConnectorError::Remote(e.message()))?;
                }
                if contact.is_none() {
                    let primary = company.clone().unwrap_or_default();
                    contact = connector.push_secondary(&push, &primary).await?;
                }
                Ok(())
            }
            .await;
            match outcome {
                Ok(()) => {
                    self.record_push(
                        connection,
                        &referral.id,
                        &company,
                        &contact,
                        PushStatus::Pushed,
                        None,
                    )
                    .await
                    .map_err(|e| e.message())?;
                    count += 1;
                }
                Err(
                    err @ (ConnectorError::Unauthorized(_)
                    | ConnectorError::RateLimited(_)
                    | ConnectorError::GaveUp { .. }),
                ) => return Err(describe(err)),
                Err(err) => {
                    self.record_push(
                        connection,
                        &referral.id,
                        &company,
                        &contact,
                        PushStatus::Failed,
                        Some(describe(err)),
                    )
                    .await
                    .map_err(|e| e.message())?;
                }
            }
        }
        Ok(count)
    }

    async fn record_push(
        &self,
        connection: &crm_connection::Model,
        referral_id: &str,
        company: &Option<String>,
        contact: &Option<String>,
        status: PushStatus,
        error: Option<String>,
    ) -> ApiResult<()> {
        let db = &self.db;
        let [p1, p2, p3, p4, p5, p6, p7] = db.params();
        let pushed_at = (status == PushStatus::Pushed).then(Utc::now);
        db.execute_write(
            format!(
                "INSERT INTO crm_referral_pushes (connection_id, referral_id, company_external_id, \
                 contact_external_id, status, error, pushed_at) VALUES ({p1}, {p2}, {p3}, {p4}, {p5}, {p6}, {p7}) \
                 ON CONFLICT (connection_id, referral_id) DO UPDATE SET \
                 company_external_id = excluded.company_external_id, \
                 contact_external_id = excluded.contact_external_id, status = excluded.status, \
                 error = excluded.error, pushed_at = excluded.pushed_at"
            ),
            vec![
                connection.id.clone().into(),
                referral_id.into(),
                company.clone().into(),
                contact.clone().into(),
                status.as_str().into(),
                error.into(),
                pushed_at.into(),
            ],
        )
        .await?;
        Ok(())
    }

    async fn start_run(&self, connection_id: &str, run_id: &str) -> ApiResult<()> {
        let tx = self.db.begin_write().await?;
        sync_run::ActiveModel {
            id: Set(run_id.to_string()),
            connection_id: Set(connection_id.to_string()),
            status: Set(JobRunStatus::Running),
            started_at: Set(Utc::now()),
            finished_at: Set(None),
            pages: Set(0),
            deals_seen: Set(0),
            deals_changed: Set(0),
            receipts_applied: Set(0),
            referrals_pushed: Set(0),
            error: Set(None),
        }
        .insert(&*tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn finish_run(
        &self,
        connection_id: &str,
        run_id: &str,
        error: Option<&str>,
    ) -> ApiResult<()> {
        let db = &self.db;
        let [p1, p2, p3, p4, p5] = db.params();
        let now = Utc::now();
        let status = if error.is_some() {
            JobRunStatus::Failed
        } else {
            JobRunStatus::Succeeded
        };
        let tx = db.begin_write().await?;
        tx.execute_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "UPDATE sync_runs SET status = {p1}, finished_at = {p2}, error = {p3} WHERE id = {p4}"
            ),
            vec![
                status.as_str().into(),
                now.into(),
                error.map(str::to_string).into(),
                run_id.into(),
            ],
        ))
        .await?;
        let (connection_status, synced_at) = match error {
            Some(_) => (ConnectionStatus::Failing, None),
            None => (ConnectionStatus::Active, Some(now)),
        };
        tx.execute_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "UPDATE crm_connections SET status = {p1}, last_error = {p2}, \
                 last_synced_at = COALESCE({p3}, last_synced_at), updated_at = {p4} WHERE id = {p5}"
            ),
            vec![
                connection_status.as_str().into(),
                error.map(str::to_string).into(),
                synced_at.into(),
                now.into(),
                connection_id.into(),
            ],
        ))
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A connector failure as recorded on the run and the connection (never a credential: the
/// HTTP layer redacts them).
fn describe(err: ConnectorError) -> String {
    err.to_string()
}

/// Ids of every connection (for the scheduler).
pub async fn connection_schedules(db: &Db) -> ApiResult<Vec<(String, String)>> {
    Ok(crm_connection::Entity::find()
        .all(db.reads())
        .await?
        .into_iter()
        .map(|c| (c.id, c.schedule))
        .collect())
}
