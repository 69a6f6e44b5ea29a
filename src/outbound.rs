//! Events out: the in-process event feed (GraphQL subscriptions), the fan-out of committed
//! events to webhook endpoints, and the delivery worker.
//!
//! - The **feed** reads committed events in commit order (see [`events`]) and broadcasts them.
//!   It wakes when this process commits a write, on PostgreSQL also on `NOTIFY tandem_events`
//!   (a trigger on `events`, so other instances' writes wake it), and polls as a fallback.
//! - The **fan-out** keeps a durable cursor (`event_cursors`): in one transaction it reads the
//!   events after it, inserts a PENDING delivery per matching endpoint (unique per endpoint and
//!   event) and moves the cursor. On PostgreSQL the cursor row is locked, so instances take
//!   turns.
//! - The **delivery worker** claims due deliveries by moving them one claim lease ahead
//!   (`FOR UPDATE SKIP LOCKED` on PostgreSQL), posts them signed per Standard Webhooks, and
//!   records outcomes in batches. A crashed worker's claims fall due when the lease runs out.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, Statement, Value,
};
use secrecy::ExposeSecret;
use serde_json::json;
use tandem_connectors::verify::{decode_standard_secret, sign_standard};
use tokio::sync::{Notify, Semaphore, broadcast, mpsc, watch};

use crate::{
    config::Config,
    db::{
        Db,
        entities::{event, webhook_delivery, webhook_endpoint},
    },
    domain::{
        auth::principals_of_keys,
        endpoints::{
            DeliveryStatus, EndpointMatcher, EndpointStatus, check_target_url, new_delivery,
        },
        events::{self, EventPosition},
        ids::new_id,
        secrets::SecretKey,
    },
    error::ApiError,
    metrics::Metrics,
};

/// Response bodies are read up to this many bytes, then dropped.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Events read per feed or fan-out batch.
const BATCH: u64 = 500;
/// Deliveries claimed at once by a worker.
const CLAIM_BATCH: u64 = 256;
/// Requests in flight per worker across all endpoints.
const MAX_IN_FLIGHT: usize = 1024;
/// The fan-out's row in `event_cursors`.
const FANOUT_CURSOR: &str = "webhook-fanout";

/// Delivery settings (from [`Config`]).
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// Delays before each retry.
    pub retry_schedule: Vec<Duration>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Continuous failure after which an endpoint is disabled.
    pub disable_after: Duration,
    /// Deliveries per second per endpoint.
    pub rate_limit: u32,
    /// Requests in flight per endpoint.
    pub max_in_flight: u32,
    /// Whether loopback/private/link-local targets are allowed.
    pub allow_private: bool,
    /// Claim lease.
    pub claim: Duration,
}

impl OutboundSettings {
    /// The settings of a (validated) configuration.
    pub fn from_config(config: &Config) -> OutboundSettings {
        OutboundSettings {
            retry_schedule: config.retry_schedule().unwrap_or_default(),
            timeout: Duration::from_millis(config.webhook_timeout_ms),
            disable_after: config.disable_after(),
            rate_limit: config.webhook_rate_limit,
            max_in_flight: config.webhook_max_in_flight,
            allow_private: config.webhook_allow_private_targets,
            claim: Duration::from_secs(config.webhook_claim_secs),
        }
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

// ---------------------------------------------------------------------------------------------
// The event feed

/// Committed events as they appear, for subscriptions (in-process broadcast).
#[derive(Clone)]
pub struct EventFeed {
    inner: Arc<FeedInner>,
}

struct FeedInner {
    sender: broadcast::Sender<Arc<Vec<event::Model>>>,
    head: watch::Sender<EventPosition>,
    /// Signalled after each published batch (wakes the fan-out).
    published: Notify,
}

impl EventFeed {
    /// Starts the feed at the current end of the stream.
    pub async fn start(db: Db, stop: watch::Receiver<bool>) -> Result<EventFeed, DbErr> {
        let head = latest_position(&db).await?;
        let (sender, _) = broadcast::channel(1024);
        let feed = EventFeed {
            inner: Arc::new(FeedInner {
                sender,
                head: watch::channel(head).0,
                published: Notify::new(),
            }),
        };
        let wake = Arc::new(Notify::new());
        if db.is_postgres() {
            tokio::spawn(listen_for_events(db.clone(), wake.clone(), stop.clone()));
        }
        tokio::spawn(feed.clone().run(db, wake, stop));
        Ok(feed)
    }

    /// Receives every batch published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<event::Model>>> {
        self.inner.sender.subscribe()
    }

    /// The position of the last event published.
    pub fn head(&self) -> EventPosition {
        *self.inner.head.borrow()
    }

    /// Completes after the next published batch.
    pub async fn published(&self) {
        self.inner.published.notified().await
    }

    async fn run(self, db: Db, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        let idle = if db.is_postgres() {
            Duration::from_millis(250)
        } else {
            Duration::from_millis(500)
        };
        let mut position = self.head();
        // After a wake-up that found nothing (on PostgreSQL a commit can become visible a
        // little after its notification), look again soon, backing off.
        let mut eager: u32 = 0;
        loop {
            if *stop.borrow() {
                return;
            }
            match read_visible(db.reads(), position, BATCH).await {
                Ok(rows) if !rows.is_empty() => {
                    position = EventPosition::of(rows.last().expect("non-empty"));
                    let full = rows.len() as u64 == BATCH;
                    self.inner.head.send_replace(position);
                    let _ = self.inner.sender.send(Arc::new(rows));
                    self.inner.published.notify_waiters();
                    eager = 0;
                    if full {
                        continue;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "reading new events failed");
                    eager = 0;
                }
            }
            let pause = if eager > 0 {
                eager -= 1;
                Duration::from_millis(2 << (6 - eager.min(6)))
            } else {
                idle
            };
            tokio::select! {
                _ = db.committed() => eager = 6,
                _ = wake.notified() => eager = 6,
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// PostgreSQL: wakes the feed on `NOTIFY tandem_events` (sent at commit by a trigger on
/// `events`), reconnecting after errors.
async fn listen_for_events(db: Db, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let Some(pool) = db.postgres_pool().cloned() else {
        return;
    };
    loop {
        let listener = async {
            let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen("tandem_events").await?;
            loop {
                listener.recv().await?;
                wake.notify_one();
            }
            #[allow(unreachable_code)]
            Ok::<(), sea_orm::sqlx::Error>(())
        };
        tokio::select! {
            result = listener => {
                if let Err(err) = result {
                    tracing::warn!(error = %err, "LISTEN tandem_events failed; retrying");
                }
            }
            _ = stop.changed() => return,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The position of the newest committed event (the start of the stream when empty).
async fn latest_position(db: &Db) -> Result<EventPosition, DbErr> {
    let postgres = db.is_postgres();
    let mut query = events::committed_after(event::Entity::find(), postgres, None);
    if postgres {
        query = query.order_by_desc(event::Column::TxId);
    }
    Ok(query
        .order_by_desc(event::Column::Seq)
        .one(db.reads())
        .await?
        .map(|e| EventPosition::of(&e))
        .unwrap_or_default())
}

/// Committed events after `after`, unscoped, oldest first.
async fn read_visible(
    conn: &impl ConnectionTrait,
    after: EventPosition,
    limit: u64,
) -> Result<Vec<event::Model>, DbErr> {
    let postgres = conn.get_database_backend() == sea_orm::DatabaseBackend::Postgres;
    let query = events::committed_after(event::Entity::find(), postgres, Some(after));
    events::in_stream_order(query, postgres)
        .limit(limit)
        .all(conn)
        .await
}

// ---------------------------------------------------------------------------------------------
// Fan-out

/// Turns committed events into deliveries, durably, once.
#[derive(Clone)]
pub struct Fanout {
    db: Db,
}

impl Fanout {
    /// A fan-out over `db`.
    pub fn new(db: Db) -> Fanout {
        Fanout { db }
    }

    /// Fans out until caught up; returns the deliveries created.
    pub async fn catch_up(&self) -> Result<u64, ApiError> {
        let mut total = 0;
        loop {
            let (events, created) = self.pass().await?;
            total += created;
            if events < BATCH {
                return Ok(total);
            }
        }
    }

    /// One batch: returns (events read, deliveries created).
    async fn pass(&self) -> Result<(u64, u64), ApiError> {
        let db = &self.db;
        let backend = db.backend();
        let tx = db.begin_write().await?;
        let lock = if db.is_postgres() { " FOR UPDATE" } else { "" };
        let row = tx
            .query_one_raw(Statement::from_sql_and_values(
                backend,
                format!(
                    "SELECT tx_id, seq FROM event_cursors WHERE name = {}{lock}",
                    db.numbered(1)
                ),
                vec![FANOUT_CURSOR.into()],
            ))
            .await?;
        let Some(row) = row else {
            // First start: begin at the end of the stream (endpoints only receive events
            // from after their creation anyway).
            let head = latest_position(db).await?;
            tx.execute_raw(Statement::from_sql_and_values(
                backend,
                format!(
                    "INSERT INTO event_cursors (name, tx_id, seq, updated_at) VALUES ({}, {}, {}, {}) \
                     ON CONFLICT (name) DO NOTHING",
                    db.numbered(1),
                    db.numbered(2),
                    db.numbered(3),
                    db.numbered(4)
                ),
                vec![
                    FANOUT_CURSOR.into(),
                    head.tx.into(),
                    head.seq.into(),
                    Utc::now().into(),
                ],
            ))
            .await?;
            tx.commit().await?;
            return Ok((0, 0));
        };
        let cursor = EventPosition {
            tx: row.try_get("", "tx_id")?,
            seq: row.try_get("", "seq")?,
        };
        let events = read_visible(&*tx, cursor, BATCH).await?;
        let Some(last) = events.last() else {
            return Ok((0, 0));
        };
        let last = EventPosition::of(last);
        let matchers = enabled_matchers(db).await?;
        let due = now_ms();
        let mut deliveries = Vec::new();
        for event in &events {
            for matcher in &matchers {
                if matcher.receives(event) {
                    deliveries.push(new_delivery(&matcher.endpoint_id, event, due));
                }
            }
        }
        let created = deliveries.len() as u64;
        for chunk in deliveries.chunks(200) {
            webhook_delivery::Entity::insert_many(chunk.to_vec())
                .on_conflict(
                    sea_orm::sea_query::OnConflict::columns([
                        webhook_delivery::Column::EndpointId,
                        webhook_delivery::Column::EventId,
                    ])
                    .do_nothing()
                    .to_owned(),
                )
                .exec_without_returning(&*tx)
                .await?;
        }
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE event_cursors SET tx_id = {}, seq = {}, updated_at = {} WHERE name = {}",
                db.numbered(1),
                db.numbered(2),
                db.numbered(3),
                db.numbered(4)
            ),
            vec![
                last.tx.into(),
                last.seq.into(),
                Utc::now().into(),
                FANOUT_CURSOR.into(),
            ],
        ))
        .await?;
        tx.commit().await?;
        Ok((events.len() as u64, created))
    }

    /// Runs until stopped: a pass whenever the feed publishes (and every second).
    pub async fn run(
        self,
        feed: EventFeed,
        worker_wake: Arc<Notify>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            match self.catch_up().await {
                Ok(created) if created > 0 => worker_wake.notify_one(),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = ?err, "webhook fan-out failed"),
            }
            tokio::select! {
                _ = feed.published() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Matchers of every ENABLED endpoint whose owner key is not revoked.
async fn enabled_matchers(db: &Db) -> Result<Vec<EndpointMatcher>, ApiError> {
    let endpoints = webhook_endpoint::Entity::find()
        .filter(webhook_endpoint::Column::Status.eq(EndpointStatus::Enabled.as_str()))
        .all(db.reads())
        .await?;
    if endpoints.is_empty() {
        return Ok(Vec::new());
    }
    let mut owners = principals_of_keys(
        db,
        endpoints.iter().map(|e| e.owner_key_id.clone()).collect(),
    )
    .await?;
    let mut matchers = Vec::new();
    for endpoint in &endpoints {
        if let Some(owner) = owners.get(&endpoint.owner_key_id) {
            matchers.push(EndpointMatcher::new(endpoint, owner.clone())?);
        }
    }
    owners.clear();
    Ok(matchers)
}

// ---------------------------------------------------------------------------------------------
// Delivery

/// Claims up to `limit` due deliveries of enabled endpoints for `lease` (skipping endpoints in
/// `skip`): their `next_attempt_at_ms` moves to the end of the lease and `claim_token` to
/// `token`. On PostgreSQL rows locked by another claimer are skipped.
pub async fn claim_due(
    db: &Db,
    token: &str,
    limit: u64,
    lease: Duration,
    skip: &[String],
) -> Result<Vec<webhook_delivery::Model>, DbErr> {
    let now = now_ms();
    let until = now + lease.as_millis() as i64;
    let backend = db.backend();
    let tx = db.begin_write().await?;
    let mut values: Vec<Value> = vec![until.into(), token.into(), now.into()];
    let skip_sql = if skip.is_empty() {
        String::new()
    } else {
        let marks: Vec<String> = (0..skip.len()).map(|i| db.numbered(5 + i)).collect();
        format!(" AND d.endpoint_id NOT IN ({})", marks.join(", "))
    };
    values.push((limit as i64).into());
    values.extend(skip.iter().map(|s| Value::from(s.clone())));
    let sql = if db.is_postgres() {
        tx.execute_unprepared(
            "SET LOCAL enable_bitmapscan = off; SET LOCAL plan_cache_mode = force_custom_plan",
        )
        .await?;
        format!(
            "WITH due AS (SELECT d.id FROM webhook_deliveries d \
             JOIN webhook_endpoints e ON e.id = d.endpoint_id \
             WHERE d.status = 'PENDING' AND d.next_attempt_at_ms <= $3 AND e.status = 'ENABLED'{skip_sql} \
             ORDER BY d.next_attempt_at_ms LIMIT $4 FOR UPDATE OF d SKIP LOCKED) \
             UPDATE webhook_deliveries SET next_attempt_at_ms = $1, claim_token = $2 \
             FROM due WHERE webhook_deliveries.id = due.id RETURNING webhook_deliveries.*"
        )
    } else {
        format!(
            "UPDATE webhook_deliveries SET next_attempt_at_ms = ?1, claim_token = ?2 \
             WHERE id IN (SELECT d.id FROM webhook_deliveries d \
             JOIN webhook_endpoints e ON e.id = d.endpoint_id \
             WHERE d.status = 'PENDING' AND d.next_attempt_at_ms <= ?3 AND e.status = 'ENABLED'{skip_sql} \
             ORDER BY d.next_attempt_at_ms LIMIT ?4) RETURNING *"
        )
    };
    let rows = tx
        .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    let claimed = rows
        .iter()
        .map(|row| webhook_delivery::Model::from_query_result(row, ""))
        .collect::<Result<Vec<_>, _>>()?;
    tx.commit().await?;
    Ok(claimed)
}

/// What one attempt came to.
#[derive(Debug, Clone)]
struct Outcome {
    delivery_id: String,
    claim_token: String,
    endpoint_id: String,
    attempt: i32,
    attempted_at: DateTime<Utc>,
    status_code: Option<u16>,
    latency_ms: i64,
    error: Option<String>,
    retry_after: Option<Duration>,
}

impl Outcome {
    fn succeeded(&self) -> bool {
        self.status_code.is_some_and(|c| (200..300).contains(&c))
    }
}

/// Per-endpoint limits of one worker.
struct Gate {
    in_flight: Arc<Semaphore>,
    limiter: DefaultDirectRateLimiter,
    /// Claimed and not yet finished.
    held: AtomicUsize,
}

/// An endpoint as a worker needs it.
struct Target {
    url: String,
    keys: Vec<Vec<u8>>,
}

/// Delivers webhooks.
#[derive(Clone)]
pub struct DeliveryWorker {
    inner: Arc<WorkerInner>,
}

struct WorkerInner {
    db: Db,
    key: Arc<SecretKey>,
    settings: OutboundSettings,
    http: reqwest::Client,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
    in_flight: Arc<Semaphore>,
    wake: Arc<Notify>,
    token: String,
    metrics: Metrics,
}

impl DeliveryWorker {
    /// A worker over `db`; `wake` is signalled when new deliveries are due.
    pub fn new(
        db: Db,
        key: Arc<SecretKey>,
        settings: OutboundSettings,
        wake: Arc<Notify>,
        metrics: Metrics,
    ) -> DeliveryWorker {
        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("Tandem-Webhooks/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(64);
        if !settings.allow_private {
            http = http.dns_resolver(Arc::new(tandem_connectors::net::PublicOnlyResolver));
        }
        let http = http
            .build()
            .expect("the HTTP client configuration is valid");
        DeliveryWorker {
            inner: Arc::new(WorkerInner {
                db,
                key,
                settings,
                http,
                gates: Mutex::new(HashMap::new()),
                in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
                wake,
                token: new_id(),
                metrics,
            }),
        }
    }

    fn gate(&self, endpoint_id: &str) -> Arc<Gate> {
        let settings = &self.inner.settings;
        let mut gates = self.inner.gates.lock().expect("gate map");
        gates
            .entry(endpoint_id.to_string())
            .or_insert_with(|| {
                let rate = NonZeroU32::new(settings.rate_limit).unwrap_or(NonZeroU32::MIN);
                Arc::new(Gate {
                    in_flight: Arc::new(Semaphore::new(settings.max_in_flight as usize)),
                    limiter: RateLimiter::direct(Quota::per_second(rate)),
                    held: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// Endpoints this worker holds enough of: the next claim leaves them out, so that nothing
    /// claimed waits behind a rate limit long enough for its lease to run out.
    fn saturated(&self) -> Vec<String> {
        let settings = &self.inner.settings;
        let cap = (settings.max_in_flight as usize * 4).max(settings.rate_limit as usize * 2);
        let gates = self.inner.gates.lock().expect("gate map");
        gates
            .iter()
            .filter(|(_, g)| g.held.load(Ordering::Relaxed) >= cap)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Runs until stopped.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let (results, receiver) = mpsc::channel::<Outcome>(4096);
        let recorder = tokio::spawn(record_outcomes(
            self.inner.db.clone(),
            self.inner.settings.clone(),
            self.inner.metrics.clone(),
            receiver,
        ));
        loop {
            if *stop.borrow() {
                break;
            }
            let claimed = match self.claim_and_send(&results).await {
                Ok(n) => n,
                Err(err) => {
                    tracing::warn!(error = ?err, "claiming webhook deliveries failed");
                    0
                }
            };
            if claimed as u64 == CLAIM_BATCH {
                continue;
            }
            // Sleep until the next delivery falls due (at most 1 s: other instances add work
            // too), never less than 10 ms: due deliveries of endpoints this worker holds enough
            // of are left for later.
            let pause = match next_due_in(&self.inner.db).await {
                Ok(Some(wait)) => wait.clamp(Duration::from_millis(10), Duration::from_secs(1)),
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => break,
            }
        }
        // Let attempts in flight finish and be recorded.
        let _ = self
            .inner
            .in_flight
            .acquire_many(MAX_IN_FLIGHT as u32)
            .await;
        drop(results);
        let _ = recorder.await;
    }

    /// Claims one batch and starts sending it; returns how many were claimed.
    async fn claim_and_send(&self, results: &mpsc::Sender<Outcome>) -> Result<usize, ApiError> {
        let room = self
            .inner
            .in_flight
            .available_permits()
            .min(CLAIM_BATCH as usize);
        if room == 0 {
            return Ok(0);
        }
        let claimed = claim_due(
            &self.inner.db,
            &self.inner.token,
            room as u64,
            self.inner.settings.claim,
            &self.saturated(),
        )
        .await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let n = claimed.len();
        let targets = self.targets(&claimed).await?;
        let events = load_events(&self.inner.db, &claimed).await?;
        for delivery in claimed {
            let (Some(target), Some(event)) = (
                targets.get(&delivery.endpoint_id).cloned(),
                events.get(&delivery.event_id).cloned(),
            ) else {
                tracing::warn!(delivery = %delivery.id, "delivery without its endpoint or event");
                continue;
            };
            let permit = self
                .inner
                .in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            let gate = self.gate(&delivery.endpoint_id);
            gate.held.fetch_add(1, Ordering::Relaxed);
            let worker = self.clone();
            let results = results.clone();
            tokio::spawn(async move {
                let outcome = worker.attempt(&gate, &target, &event, &delivery).await;
                gate.held.fetch_sub(1, Ordering::Relaxed);
                let _ = results.send(outcome).await;
                drop(permit);
            });
        }
        Ok(n)
    }

    async fn targets(
        &self,
        claimed: &[webhook_delivery::Model],
    ) -> Result<HashMap<String, Arc<Target>>, ApiError> {
        let mut ids: Vec<String> = claimed.iter().map(|d| d.endpoint_id.clone()).collect();
        ids.sort();
        ids.dedup();
        let endpoints = webhook_endpoint::Entity::find()
            .filter(webhook_endpoint::Column::Id.is_in(ids))
            .all(self.inner.db.reads())
            .await?;
        let now = Utc::now();
        let mut targets = HashMap::new();
        for endpoint in endpoints {
            let mut sealed = vec![endpoint.secret_ciphertext.clone()];
            if let (Some(previous), Some(until)) = (
                &endpoint.previous_secret_ciphertext,
                endpoint.previous_secret_expires_at,
            ) && until > now
            {
                sealed.push(previous.clone());
            }
            let mut keys = Vec::new();
            for s in sealed {
                let secret =
                    self.inner.key.open(&s).map_err(|e| {
                        ApiError::Internal(format!("endpoint {}: {e}", endpoint.id))
                    })?;
                keys.push(decode_standard_secret(secret.expose_secret()).map_err(|_| {
                    ApiError::Internal(format!("endpoint {} secret is not base64", endpoint.id))
                })?);
            }
            targets.insert(
                endpoint.id.clone(),
                Arc::new(Target {
                    url: endpoint.url,
                    keys,
                }),
            );
        }
        Ok(targets)
    }

    /// One attempt: waits for the endpoint's limits, posts, and reports what happened.
    async fn attempt(
        &self,
        gate: &Gate,
        target: &Target,
        event: &event::Model,
        delivery: &webhook_delivery::Model,
    ) -> Outcome {
        let _slot = gate.in_flight.acquire().await.expect("semaphore open");
        gate.limiter.until_ready().await;
        let attempted_at = Utc::now();
        let started = Instant::now();
        let result = self.post(target, event).await;
        let latency_ms = started.elapsed().as_millis() as i64;
        let mut outcome = Outcome {
            delivery_id: delivery.id.clone(),
            claim_token: delivery.claim_token.clone().unwrap_or_default(),
            endpoint_id: delivery.endpoint_id.clone(),
            attempt: delivery.attempt + 1,
            attempted_at,
            status_code: None,
            latency_ms,
            error: None,
            retry_after: None,
        };
        match result {
            Ok((status, retry_after, snippet)) => {
                outcome.status_code = Some(status);
                outcome.retry_after = retry_after;
                if !(200..300).contains(&status) {
                    outcome.error = Some(if snippet.is_empty() {
                        format!("HTTP {status}")
                    } else {
                        format!("HTTP {status}: {snippet}")
                    });
                }
            }
            Err(message) => outcome.error = Some(message),
        }
        outcome
    }

    /// Posts an event; returns the status, any `Retry-After`, and the start of the body.
    async fn post(
        &self,
        target: &Target,
        event: &event::Model,
    ) -> Result<(u16, Option<Duration>, String), String> {
        check_target_url(&target.url, self.inner.settings.allow_private)
            .map_err(|m| format!("URL refused: {m}"))?;
        let body = envelope(event);
        let timestamp = Utc::now().timestamp();
        let signature = target
            .keys
            .iter()
            .map(|key| sign_standard(key, &event.id, timestamp, &body))
            .collect::<Vec<_>>()
            .join(" ");
        let response = self
            .inner
            .http
            .post(&target.url)
            .header("content-type", "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(describe_error)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut response = response;
        let mut body = Vec::new();
        // At most 64 KiB of the answer is read; the rest is dropped with the connection.
        while body.len() < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(err) => {
                    if (200..300).contains(&status) {
                        break;
                    }
                    return Err(describe_error(err));
                }
            }
        }
        body.truncate(MAX_RESPONSE_BYTES);
        let text = String::from_utf8_lossy(&body);
        let snippet: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(200)
            .collect();
        Ok((status, retry_after, snippet))
    }
}

fn describe_error(err: reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_string()
    } else if err.is_connect() {
        format!("could not connect: {}", root_cause(&err))
    } else {
        format!("request failed: {}", root_cause(&err))
    }
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// The body of a delivery: `{"id","type","timestamp","data"}`.
pub fn envelope(event: &event::Model) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": event.id,
        "type": event.event_type,
        "timestamp": event.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": event.data,
    }))
    .expect("JSON values serialise")
}

/// `Retry-After` as seconds or an HTTP date, capped at one day.
fn parse_retry_after(value: &str) -> Option<Duration> {
    tandem_connectors::http::parse_retry_after(value)
        .map(|wait| wait.min(Duration::from_secs(86_400)))
}

/// The delay before retry number `attempt` (1-based: after the first failed attempt), with
/// ±20 % jitter; `None` when the schedule is exhausted.
pub fn retry_delay(schedule: &[Duration], failed_attempts: i32) -> Option<Duration> {
    let step = schedule.get(usize::try_from(failed_attempts - 1).ok()?)?;
    let factor = rand::rng().random_range(0.8..=1.2);
    Some(step.mul_f64(factor))
}

async fn load_events(
    db: &Db,
    claimed: &[webhook_delivery::Model],
) -> Result<HashMap<String, event::Model>, DbErr> {
    let mut ids: Vec<String> = claimed.iter().map(|d| d.event_id.clone()).collect();
    ids.sort();
    ids.dedup();
    Ok(event::Entity::find()
        .filter(event::Column::Id.is_in(ids))
        .all(db.reads())
        .await?
        .into_iter()
        .map(|e| (e.id.clone(), e))
        .collect())
}

/// How long until the earliest pending delivery of an enabled endpoint is due.
async fn next_due_in(db: &Db) -> Result<Option<Duration>, DbErr> {
    let row = db
        .reads()
        .query_one_raw(Statement::from_string(
            db.backend(),
            "SELECT MIN(d.next_attempt_at_ms) AS due FROM webhook_deliveries d \
             JOIN webhook_endpoints e ON e.id = d.endpoint_id \
             WHERE d.status = 'PENDING' AND e.status = 'ENABLED'",
        ))
        .await?;
    let due: Option<i64> = match row {
        Some(row) => row.try_get("", "due")?,
        None => None,
    };
    Ok(due.map(|due| Duration::from_millis((due - now_ms()).max(0) as u64)))
}

/// Writes outcomes in batches (one transaction each).
async fn record_outcomes(
    db: Db,
    settings: OutboundSettings,
    metrics: Metrics,
    mut receiver: mpsc::Receiver<Outcome>,
) {
    let mut batch = Vec::new();
    while let Some(first) = receiver.recv().await {
        batch.push(first);
        while batch.len() < 512 {
            match receiver.try_recv() {
                Ok(outcome) => batch.push(outcome),
                Err(_) => break,
            }
        }
        let mut tries = 0;
        loop {
            match write_outcomes(&db, &settings, &batch).await {
                Ok(counts) => {
                    for (outcome, n) in counts {
                        metrics.observe_deliveries(outcome, n);
                    }
                    break;
                }
                Err(err) => {
                    tries += 1;
                    tracing::warn!(error = %err, tries, "recording webhook outcomes failed");
                    if tries >= 5 {
                        // The claims run out and the deliveries are attempted again.
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
            }
        }
        batch.clear();
    }
}

/// Records a batch of outcomes in one transaction; returns counts by outcome label.
async fn write_outcomes(
    db: &Db,
    settings: &OutboundSettings,
    batch: &[Outcome],
) -> Result<[(&'static str, u64); 3], DbErr> {
    let mut counts = [("succeeded", 0), ("retrying", 0), ("failed", 0)];
    let backend = db.backend();
    let p = |n| db.numbered(n);
    let tx = db.begin_write().await?;
    let mut failing: HashMap<&str, DateTime<Utc>> = HashMap::new();
    let mut recovered: Vec<&str> = Vec::new();
    let mut gone: Vec<&Outcome> = Vec::new();
    for outcome in batch {
        let (status, next, delivered_at) = if outcome.succeeded() {
            (DeliveryStatus::Succeeded, None, Some(outcome.attempted_at))
        } else if outcome.status_code == Some(410) {
            (DeliveryStatus::Failed, None, None)
        } else {
            let delay = outcome
                .retry_after
                .or_else(|| retry_delay(&settings.retry_schedule, outcome.attempt));
            match delay {
                Some(delay) if outcome.attempt <= settings.retry_schedule.len() as i32 => (
                    DeliveryStatus::Pending,
                    Some(outcome.attempted_at.timestamp_millis() + delay.as_millis() as i64),
                    None,
                ),
                _ => (DeliveryStatus::Failed, None, None),
            }
        };
        counts[match status {
            DeliveryStatus::Succeeded => 0,
            DeliveryStatus::Pending => 1,
            DeliveryStatus::Failed => 2,
        }]
        .1 += 1;
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE webhook_deliveries SET status = {}, attempt = {}, status_code = {}, \
                 latency_ms = {}, last_error = {}, last_attempt_at = {}, delivered_at = {}, \
                 next_attempt_at_ms = {}, claim_token = NULL WHERE id = {} AND claim_token = {}",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                p(6),
                p(7),
                p(8),
                p(9),
                p(10)
            ),
            vec![
                status.as_str().into(),
                outcome.attempt.into(),
                outcome.status_code.map(i32::from).into(),
                outcome.latency_ms.into(),
                outcome.error.clone().into(),
                outcome.attempted_at.into(),
                delivered_at.into(),
                next.into(),
                outcome.delivery_id.clone().into(),
                outcome.claim_token.clone().into(),
            ],
        ))
        .await?;
        if outcome.succeeded() {
            recovered.push(&outcome.endpoint_id);
            failing.remove(outcome.endpoint_id.as_str());
        } else {
            if outcome.status_code == Some(410) {
                gone.push(outcome);
            }
            failing
                .entry(&outcome.endpoint_id)
                .or_insert(outcome.attempted_at);
        }
    }
    for endpoint_id in recovered {
        if failing.contains_key(endpoint_id) {
            continue;
        }
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE webhook_endpoints SET failing_since = NULL \
                 WHERE id = {} AND failing_since IS NOT NULL",
                p(1)
            ),
            vec![endpoint_id.into()],
        ))
        .await?;
    }
    let disable_before = Utc::now()
        - chrono::Duration::from_std(settings.disable_after).unwrap_or(chrono::Duration::days(5));
    for (endpoint_id, since) in failing {
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE webhook_endpoints SET failing_since = {} \
                 WHERE id = {} AND failing_since IS NULL",
                p(1),
                p(2)
            ),
            vec![since.into(), endpoint_id.into()],
        ))
        .await?;
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE webhook_endpoints SET status = 'DISABLED', disabled_reason = {}, \
                 updated_at = {} WHERE id = {} AND status = 'ENABLED' AND failing_since <= {}",
                p(1),
                p(2),
                p(3),
                p(4)
            ),
            vec![
                format!(
                    "every attempt failed for {}",
                    humantime::format_duration(settings.disable_after)
                )
                .into(),
                Utc::now().into(),
                endpoint_id.into(),
                disable_before.into(),
            ],
        ))
        .await?;
    }
    for outcome in gone {
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE webhook_endpoints SET status = 'DISABLED', disabled_reason = {}, \
                 updated_at = {} WHERE id = {} AND status = 'ENABLED'",
                p(1),
                p(2),
                p(3)
            ),
            vec![
                "the endpoint answered 410 Gone".into(),
                Utc::now().into(),
                outcome.endpoint_id.clone().into(),
            ],
        ))
        .await?;
    }
    tx.commit().await?;
    Ok(counts)
}

/// Pending deliveries (for `/metrics`).
pub async fn pending_deliveries(db: &Db) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait;
    // A literal, as the partial index `idx_webhook_deliveries_due` states it: plans ignore bound
    // values here (SQLITE_ENABLE_QPSG), so `status = ?` would count by scanning every delivery.
    webhook_delivery::Entity::find()
        .filter(sea_orm::sea_query::Expr::cust("status = 'PENDING'"))
        .count(db.reads())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_follow_the_schedule_with_jitter() {
        let schedule = [Duration::from_secs(5), Duration::from_secs(300)];
        for _ in 0..100 {
            let first = retry_delay(&schedule, 1).unwrap();
            assert!(first >= Duration::from_secs(4) && first <= Duration::from_secs(6));
            let second = retry_delay(&schedule, 2).unwrap();
            assert!(second >= Duration::from_secs(240) && second <= Duration::from_secs(360));
        }
        assert_eq!(retry_delay(&schedule, 3), None);
        assert_eq!(retry_delay(&schedule, 0), None);
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("999999"),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
