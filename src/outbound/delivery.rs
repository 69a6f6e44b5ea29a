//! The delivery worker: claims due deliveries, posts them signed, records the outcomes.

use super::{rules::*, *};
use crate::db::entities::webhook_delivery_attempt;
use sea_orm::ActiveValue::Set;

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

/// Per-endpoint limits of one worker.
struct Gate {
    /// Deliveries per second it lets through.
    rate: u32,
    in_flight: Arc<Semaphore>,
    limiter: DefaultDirectRateLimiter,
    /// Claimed and not yet finished.
    held: AtomicUsize,
}

/// An endpoint as a worker needs it.
struct Target {
    url: String,
    keys: Vec<Vec<u8>>,
    /// The endpoint's own rate limit, if it has one.
    rate_limit: Option<u32>,
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

    /// The endpoint's gate at `rate_limit` (or the hub's default); a changed limit starts a
    /// new gate.
    fn gate(&self, endpoint_id: &str, rate_limit: Option<u32>) -> Arc<Gate> {
        let settings = &self.inner.settings;
        let rate = rate_limit.unwrap_or(settings.rate_limit);
        let mut gates = self.inner.gates.lock().expect("gate map");
        if let Some(gate) = gates.get(endpoint_id)
            && gate.rate == rate
        {
            return gate.clone();
        }
        let per_second = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
        let gate = Arc::new(Gate {
            rate,
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight as usize)),
            limiter: RateLimiter::direct(Quota::per_second(per_second)),
            held: AtomicUsize::new(0),
        });
        gates.insert(endpoint_id.to_string(), gate.clone());
        gate
    }

    /// Endpoints this worker holds enough of: the next claim leaves them out, so that nothing
    /// claimed waits behind a rate limit long enough for its lease to run out.
    fn saturated(&self) -> Vec<String> {
        let settings = &self.inner.settings;
        let cap = |g: &Gate| (settings.max_in_flight as usize * 4).max(g.rate as usize * 2);
        let gates = self.inner.gates.lock().expect("gate map");
        gates
            .iter()
            .filter(|(_, g)| g.held.load(Ordering::Relaxed) >= cap(g))
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
            let gate = self.gate(&delivery.endpoint_id, target.rate_limit);
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
                    rate_limit: endpoint.rate_limit.and_then(|r| u32::try_from(r).ok()),
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
            response_snippet: None,
        };
        match result {
            Ok((status, retry_after, snippet, kept)) => {
                outcome.status_code = Some(status);
                outcome.retry_after = retry_after;
                outcome.response_snippet = kept;
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

    /// Posts an event; returns the status, any `Retry-After`, the start of the body for the
    /// error message, and its first KiB for the attempt log.
    async fn post(
        &self,
        target: &Target,
        event: &event::Model,
    ) -> Result<(u16, Option<Duration>, String, Option<String>), String> {
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
        let kept = response_snippet(&body);
        let text = String::from_utf8_lossy(&body);
        let snippet: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(200)
            .collect();
        Ok((status, retry_after, snippet, kept))
    }
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
    let [p1, p2, p3, p4, p5, p6, p7, p8, p9, p10] = db.params();
    let tx = db.begin_write().await?;
    for outcome in batch {
        let (status, next, delivered_at) = next_state(outcome, &settings.retry_schedule);
        counts[match status {
            DeliveryStatus::Succeeded => 0,
            DeliveryStatus::Pending => 1,
            DeliveryStatus::Failed | DeliveryStatus::Cancelled => 2,
        }]
        .1 += 1;
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE webhook_deliveries SET status = {p1}, attempt = {p2}, status_code = {p3}, \
                 latency_ms = {p4}, last_error = {p5}, last_attempt_at = {p6}, \
                 delivered_at = {p7}, next_attempt_at_ms = {p8}, claim_token = NULL \
                 WHERE id = {p9} AND claim_token = {p10}"
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
    }
    // Every attempt is kept, whatever became of its delivery since (the attempt log).
    let attempts: Vec<webhook_delivery_attempt::ActiveModel> = batch
        .iter()
        .map(|o| webhook_delivery_attempt::ActiveModel {
            id: Set(new_id()),
            delivery_id: Set(o.delivery_id.clone()),
            attempt: Set(o.attempt),
            attempted_at: Set(o.attempted_at),
            status_code: Set(o.status_code.map(i32::from)),
            latency_ms: Set(Some(o.latency_ms)),
            response_snippet: Set(o.response_snippet.clone()),
            error: Set(o.error.clone()),
        })
        .collect();
    crate::db::insert_all(&*tx, attempts, None).await?;
    let EndpointHealth {
        recovered,
        failing,
        gone,
    } = endpoint_health(batch);
    for endpoint_id in recovered {
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE webhook_endpoints SET failing_since = NULL \
                 WHERE id = {p1} AND failing_since IS NOT NULL"
            ),
            vec![endpoint_id.into()],
        ))
        .await?;
    }
    let disable_before = disable_cutoff(Utc::now(), settings.disable_after);
    for (endpoint_id, since) in failing {
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE webhook_endpoints SET failing_since = {p1} \
                 WHERE id = {p2} AND failing_since IS NULL"
            ),
            vec![since.into(), endpoint_id.into()],
        ))
        .await?;
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE webhook_endpoints SET status = 'DISABLED', disabled_reason = {p1}, \
                 updated_at = {p2} WHERE id = {p3} AND status = 'ENABLED' \
                 AND failing_since <= {p4}"
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
    for endpoint_id in gone {
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE webhook_endpoints SET status = 'DISABLED', disabled_reason = {p1}, \
                 updated_at = {p2} WHERE id = {p3} AND status = 'ENABLED'"
            ),
            vec![
                "the endpoint answered 410 Gone".into(),
                Utc::now().into(),
                endpoint_id.into(),
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
