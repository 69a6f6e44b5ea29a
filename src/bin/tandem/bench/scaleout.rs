//! `tandem bench-scaleout`: a load generator and checker for several hub instances sharing one
//! PostgreSQL database (see `bench/scaleout.sh`, which starts the instances).
//!
//! 1. Through the first instance it creates a program (10 % PERCENT), a partner, a STANDARD
//!    webhook source and an outbound endpoint pointing at a receiver in this process, which
//!    verifies every delivery's Standard Webhooks signature.
//! 2. It sends signed `deal.updated` webhooks (each a new won deal with the partner's referral
//!    code) at `rate` per second for `secs`, spread round robin over the instances, as a load
//!    balancer would: a request that fails to connect or gets a 5xx is sent again, with the same
//!    `webhook-id`, to the next live instance, and the failed instance is taken out of the
//!    rotation.
//! 3. After `kill_after_secs` it SIGKILLs the process `kill_pid` (one of the instances).
//! 4. It waits for the inbox backlog to reach 0, runs `runJob(reconcile)` on every live instance
//!    at once, and waits until the receiver has every event the endpoint subscribed to.
//! 5. It checks the database (`--database-url`, the one the instances share): every acknowledged webhook has exactly one applied receipt and
//!    one deal, every deal exactly one accrual of the expected amount, every subscribed event was
//!    received with a valid signature. It prints the figures and what each instance did (from
//!    its `/metrics`; the killed one's as last scraped), and fails when a check fails.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use poem::{
    EndpointExt as _, Request, Response, Server,
    http::StatusCode,
    listener::{Acceptor, Listener, TcpListener},
};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::json;
use tandem_connectors::verify::{decode_standard_secret, verify_standard};

use super::ingest::{BenchProgram, DealWebhook, Latencies, backlog, gauge, graphql};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchScaleoutArgs {
    /// Base URLs of the instances (repeat, or separate with commas).
    #[arg(long = "url", required = true, value_delimiter = ',')]
    pub urls: Vec<String>,
    /// An admin key (any instance's: they share the database).
    #[arg(long, env = "TANDEM_BENCH_TOKEN")]
    pub token: String,
    /// Webhooks per second, over all instances.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 30)]
    pub secs: u64,
    /// The process id of the instance to SIGKILL mid-run (none: nothing is killed).
    #[arg(long)]
    pub kill_pid: Option<u32>,
    /// Seconds after the start of sending at which `kill_pid` is killed (default: half-way).
    #[arg(long)]
    pub kill_after_secs: Option<u64>,
    /// Seconds to wait for the inbox, the reconcile and the deliveries before failing.
    #[arg(long, default_value_t = 300)]
    pub drain_limit_secs: u64,
}

/// Events the endpoint subscribes to: two per applied deal, one per accrual.
const EVENT_TYPES: [&str; 3] = ["deal.attributed", "deal.won", "commission.accrued"];

/// One instance as the load balancer sees it.
struct Instance {
    url: String,
    up: AtomicBool,
    acknowledged: AtomicU64,
    failed_over: AtomicU64,
    /// `/metrics` as last scraped (the killed instance's stays as it was before the kill).
    metrics: Mutex<String>,
}

struct Load {
    client: reqwest::Client,
    instances: Vec<Instance>,
    source_path: String,
    key: Vec<u8>,
    code: String,
    run: String,
    next: AtomicU64,
    acked: Mutex<Vec<String>>,
}

impl Load {
    /// Sends webhook `n`, failing over to the next live instance; returns the latency of the
    /// acknowledging attempt.
    async fn send(&self, n: u64) -> Result<Duration, String> {
        let webhook = DealWebhook::new(&self.key, "scale", &self.run, n, &self.code);
        let count = self.instances.len();
        let mut last_error = String::from("no live instance");
        for step in 0..count {
            let instance = &self.instances[(n as usize + step) % count];
            if !instance.up.load(Ordering::Relaxed) {
                continue;
            }
            let started = Instant::now();
            let sent = webhook
                .request(
                    &self.client,
                    &format!("{}{}", instance.url, self.source_path),
                )
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    let _ = resp.bytes().await;
                    let elapsed = started.elapsed();
                    instance.acknowledged.fetch_add(1, Ordering::Relaxed);
                    self.acked.lock().expect("acked").push(webhook.id);
                    return Ok(elapsed);
                }
                Ok(resp) if resp.status().is_client_error() => {
                    // A 4xx is the hub's answer about this webhook: another instance would
                    // give the same one.
                    last_error = format!("HTTP {}", resp.status());
                    break;
                }
                Ok(resp) => last_error = format!("HTTP {}", resp.status()),
                Err(err) => {
                    last_error = err.to_string();
                    if err.is_connect() {
                        instance.up.store(false, Ordering::Relaxed);
                    }
                }
            }
            instance.failed_over.fetch_add(1, Ordering::Relaxed);
        }
        Err(last_error)
    }
}

/// What the receiver got: deliveries per event id, and how many failed verification.
#[derive(Default)]
struct Received {
    by_event: HashMap<String, u32>,
    bad_signatures: u64,
}

async fn start_receiver(
    secret: Arc<Mutex<Option<Vec<u8>>>>,
    received: Arc<Mutex<Received>>,
) -> anyhow::Result<String> {
    let endpoint = poem::endpoint::make(move |req: Request| {
        let (secret, received) = (secret.clone(), received.clone());
        async move {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let (id, ts, sig) = (
                header("webhook-id"),
                header("webhook-timestamp"),
                header("webhook-signature"),
            );
            let body = req.into_body().into_vec().await.unwrap_or_default();
            let key = secret.lock().expect("secret").clone();
            let verified = key.is_some_and(|key| {
                verify_standard(
                    &[key],
                    id.as_deref(),
                    ts.as_deref(),
                    sig.as_deref(),
                    &body,
                    chrono::Utc::now().timestamp(),
                    Some(300),
                )
                .is_ok()
            });
            let mut received = received.lock().expect("received");
            if !verified {
                received.bad_signatures += 1;
                return Response::builder()
                    .status(StatusCode::UNAUTHORIZED)
                    .finish();
            }
            *received.by_event.entry(id.unwrap_or_default()).or_default() += 1;
            Response::builder().status(StatusCode::NO_CONTENT).finish()
        }
    });
    let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await?;
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .context("receiver address")?;
    tokio::spawn(async move {
        let _ = Server::new_with_acceptor(acceptor)
            .run(endpoint.map_to_response())
            .await;
    });
    Ok(format!("http://{addr}/hook"))
}

/// Sums the samples of metric `name` whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && line.contains(labels)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(client: &reqwest::Client, instance: &Instance) {
    if !instance.up.load(Ordering::Relaxed) {
        return;
    }
    let text = async {
        client
            .get(format!("{}/metrics", instance.url))
            .send()
            .await?
            .text()
            .await
    };
    if let Ok(text) = text.await {
        *instance.metrics.lock().expect("metrics") = text;
    }
}

async fn rows(db: &DatabaseConnection, sql: String) -> anyhow::Result<Vec<sea_orm::QueryResult>> {
    Ok(db
        .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await?)
}

/// Runs the benchmark and the checks; returns the report, or fails with it when a check fails.
pub async fn run(args: BenchScaleoutArgs, database_url: &str) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?;
    let first = args.urls[0].clone();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let secret = Arc::new(Mutex::new(None));
    let received = Arc::new(Mutex::new(Received::default()));
    let receiver = start_receiver(secret.clone(), received.clone()).await?;

    let setup = BenchProgram::create(&client, &first, &args.token, "Scale-out benchmark").await?;
    let program = setup.program_id.clone();
    let endpoint = graphql(&client, &first, &args.token,
        "mutation($input: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $input) { secret } }",
        json!({"input": {"url": receiver, "eventTypes": EVENT_TYPES, "programId": program, "rateLimit": 10_000}})).await?;
    let endpoint_secret = endpoint["createWebhookEndpoint"]["secret"]
        .as_str()
        .context("endpoint secret")?;
    *secret.lock().expect("secret") =
        Some(decode_standard_secret(endpoint_secret).map_err(|e| anyhow::anyhow!("{e}"))?);
    let source_path = url::Url::parse(&setup.source_url)?.path().to_string();
    let source_id = setup.source_id.clone();

    let load = Arc::new(Load {
        client: client.clone(),
        instances: args
            .urls
            .iter()
            .map(|url| Instance {
                url: url.trim_end_matches('/').to_string(),
                up: AtomicBool::new(true),
                acknowledged: AtomicU64::new(0),
                failed_over: AtomicU64::new(0),
                metrics: Mutex::new(String::new()),
            })
            .collect(),
        source_path,
        key: setup.source_key,
        code: setup.code,
        run,
        next: AtomicU64::new(0),
        acked: Mutex::default(),
    });

    // Scrape every instance's /metrics twice a second until the end.
    let scraping = Arc::new(AtomicBool::new(true));
    {
        let (load, scraping) = (load.clone(), scraping.clone());
        tokio::spawn(async move {
            while scraping.load(Ordering::Relaxed) {
                for instance in &load.instances {
                    scrape(&load.client, instance).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    // The kill.
    let kill_after = Duration::from_secs(args.kill_after_secs.unwrap_or(args.secs / 2));
    let killed_at = Arc::new(Mutex::new(None));
    if let Some(pid) = args.kill_pid {
        let killed_at = killed_at.clone();
        tokio::spawn(async move {
            tokio::time::sleep(kill_after).await;
            let status = tokio::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .await;
            if matches!(status, Ok(s) if s.success()) {
                *killed_at.lock().expect("killed") = Some(Instant::now());
            }
        });
    }

    // The load: open loop at `rate`.
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let total = args.rate * args.secs;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        while sent < due {
            sent += 1;
            let (load, tx) = (load.clone(), tx.clone());
            tokio::spawn(async move {
                let n = load.next.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(load.send(n).await);
            });
        }
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(total as usize);
    let mut errors = 0u64;
    while let Some(result) = rx.recv().await {
        match result {
            Ok(latency) => latencies.push(latency),
            Err(_) => errors += 1,
        }
    }
    let send_secs = started.elapsed().as_secs_f64();
    let acked_n = latencies.len();
    let mut report = vec![format!(
        "{} instances, {}/s for {}s: {acked_n} acknowledged ({:.0}/s), {errors} not acknowledged; latency {}",
        load.instances.len(),
        args.rate,
        args.secs,
        acked_n as f64 / send_secs,
        Latencies(latencies).summary()
    )];
    if let Some(pid) = args.kill_pid {
        let at = killed_at.lock().expect("killed").map(|t| t - started);
        report.push(match at {
            Some(at) => format!(
                "  instance pid {pid} SIGKILLed {:.1}s into the run",
                at.as_secs_f64()
            ),
            None => format!("  instance pid {pid} could not be killed"),
        });
    }

    // Drain: the inbox, then the reconcile, then the deliveries.
    let limit = Duration::from_secs(args.drain_limit_secs);
    let live = || {
        load.instances
            .iter()
            .filter(|i| i.up.load(Ordering::Relaxed))
            .map(|i| i.url.clone())
            .collect::<Vec<_>>()
    };
    let probe = live().first().cloned().context("no instance is left")?;
    let drain_started = Instant::now();
    while backlog(&client, &probe).await? != 0 {
        if drain_started.elapsed() > limit {
            bail!("the inbox backlog was not 0 after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.push(format!(
        "  inbox backlog back to 0 {:.1}s after sending ended",
        drain_started.elapsed().as_secs_f64()
    ));

    let reconcile_started = Instant::now();
    let runs = live().into_iter().map(|url| {
        let (client, token) = (client.clone(), args.token.clone());
        tokio::spawn(async move {
            graphql(
                &client,
                &url,
                &token,
                "mutation { runJob(input: {name: \"reconcile\"}) { jobRun { status error } } }",
                json!({}),
            )
            .await
        })
    });
    let mut outcomes = Vec::new();
    for run in runs.collect::<Vec<_>>() {
        outcomes.push(match run.await? {
            Ok(data) => data["runJob"]["jobRun"]["status"]
                .as_str()
                .unwrap_or("?")
                .to_string(),
            Err(err) => format!("error: {err}"),
        });
    }
    report.push(format!(
        "  runJob(reconcile) on every live instance at once: {} in {:.1}s",
        outcomes.join(", "),
        reconcile_started.elapsed().as_secs_f64()
    ));

    let db = Database::connect(database_url).await?;
    let subscribed = EVENT_TYPES.map(|t| format!("'{t}'")).join(", ");
    let expected_events: i64 = rows(
        &db,
        format!(
            "SELECT COUNT(*) AS n FROM events WHERE program_id = '{program}' \
             AND type IN ({subscribed})"
        ),
    )
    .await?[0]
        .try_get("", "n")?;
    let deliveries_started = Instant::now();
    loop {
        let got = received.lock().expect("received").by_event.len() as i64;
        if got >= expected_events {
            break;
        }
        if deliveries_started.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.push(format!(
        "  deliveries: {expected_events} subscribed events; the receiver had them all {:.1}s after the reconcile",
        deliveries_started.elapsed().as_secs_f64()
    ));
    // The receiver has every event once its POSTs are answered; the senders record the
    // outcomes in batches after that.
    let recorded_started = Instant::now();
    while gauge(&client, &probe, "tandem_webhook_deliveries_pending").await? > 0.0
        && recorded_started.elapsed() < limit
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.push(format!(
        "  every delivery's outcome recorded {:.1}s later",
        recorded_started.elapsed().as_secs_f64()
    ));
    scraping.store(false, Ordering::Relaxed);
    for instance in &load.instances {
        scrape(&client, instance).await;
    }

    // The checks.
    let mut failures = Vec::new();
    let acked: Vec<String> = load.acked.lock().expect("acked").clone();
    let acked_set: HashSet<&String> = acked.iter().collect();
    let receipts = rows(
        &db,
        format!(
            "SELECT provider_event_id AS id, status, deal_id FROM webhook_receipts \
             WHERE source_id = '{source_id}'"
        ),
    )
    .await?;
    let mut applied: HashMap<String, u32> = HashMap::new();
    let mut duplicates = 0;
    let mut other = 0;
    for row in &receipts {
        let id: Option<String> = row.try_get("", "id")?;
        let status: String = row.try_get("", "status")?;
        match status.as_str() {
            "APPLIED" => *applied.entry(id.unwrap_or_default()).or_default() += 1,
            "DUPLICATE" => duplicates += 1,
            _ => other += 1,
        }
    }
    let missing = acked.iter().filter(|id| !applied.contains_key(*id)).count();
    let doubled = applied.values().filter(|&&n| n > 1).count();
    let unacked_applied = applied.keys().filter(|id| !acked_set.contains(id)).count();
    report.push(format!(
        "  receipts: {} applied ({} of them for webhooks never acknowledged), {duplicates} duplicates (a webhook resent after its first instance died holding it), {other} in another state",
        applied.len(),
        unacked_applied
    ));
    if missing > 0 {
        failures.push(format!(
            "{missing} acknowledged webhooks have no applied receipt"
        ));
    }
    if doubled > 0 {
        failures.push(format!("{doubled} webhooks were applied more than once"));
    }
    if other > 0 {
        failures.push(format!(
            "{other} receipts are neither APPLIED nor DUPLICATE"
        ));
    }

    let deals: i64 = rows(
        &db,
        format!("SELECT COUNT(*) AS n FROM deals WHERE program_id = '{program}'"),
    )
    .await?[0]
        .try_get("", "n")?;
    if deals != applied.len() as i64 {
        failures.push(format!(
            "{deals} deals for {} applied webhooks (one new deal each)",
            applied.len()
        ));
    }
    let ledger = rows(
        &db,
        format!(
            "SELECT COUNT(*) AS entries, COUNT(DISTINCT deal_id) AS deals, \
             COALESCE(MIN(amount_cents), 0) AS low, COALESCE(MAX(amount_cents), 0) AS high \
             FROM ledger_entries WHERE program_id = '{program}'"
        ),
    )
    .await?;
    let entries: i64 = ledger[0].try_get("", "entries")?;
    let accrued: i64 = ledger[0].try_get("", "deals")?;
    let (low, high): (i64, i64) = (
        ledger[0].try_get("", "low")?,
        ledger[0].try_get("", "high")?,
    );
    report.push(format!(
        "  ledger: {entries} entries for {accrued} of {deals} deals (each 10 % of 1,250.00 = 125.00 expected)"
    ));
    if entries != deals || accrued != deals || low != 12_500 || high != 12_500 {
        failures.push(format!(
            "expected one accrual of 12500 cents per deal: {entries} entries over {accrued} deals, amounts {low}..{high}"
        ));
    }

    let received = std::mem::take(&mut *received.lock().expect("received"));
    let delivered_twice = received.by_event.values().filter(|&&n| n > 1).count();
    let event_ids: HashSet<String> = rows(
        &db,
        format!(
            "SELECT id FROM events WHERE program_id = '{program}' \
             AND type IN ({subscribed})"
        ),
    )
    .await?
    .iter()
    .filter_map(|row| row.try_get::<String>("", "id").ok())
    .collect();
    let undelivered = event_ids
        .iter()
        .filter(|id| !received.by_event.contains_key(*id))
        .count();
    report.push(format!(
        "  receiver: {} events, {delivered_twice} of them delivered more than once (at least once is the contract), {} bad signatures",
        received.by_event.len(),
        received.bad_signatures
    ));
    if undelivered > 0 {
        failures.push(format!(
            "{undelivered} subscribed events were not delivered"
        ));
    }
    if received.bad_signatures > 0 {
        failures.push(format!(
            "{} deliveries failed signature verification",
            received.bad_signatures
        ));
    }
    if event_ids.len() as i64 != 2 * deals + entries {
        failures.push(format!(
            "{} subscribed events for {deals} deals and {entries} accruals (2 per deal + 1 per accrual expected)",
            event_ids.len()
        ));
    }

    report.push(
        "  what each instance did (from its /metrics; a killed instance's as last scraped):".into(),
    );
    for instance in &load.instances {
        let text = instance.metrics.lock().expect("metrics");
        report.push(format!(
            "    {}{}: {} webhooks acknowledged to the generator, {} requests failed over away from it; stored {:.0} receipts; statements: inbox {:.0}, fan-out {:.0}, deliveries {:.0}, jobs {:.0}; {:.0} deliveries succeeded",
            instance.url,
            if instance.up.load(Ordering::Relaxed) { "" } else { " (killed)" },
            instance.acknowledged.load(Ordering::Relaxed),
            instance.failed_over.load(Ordering::Relaxed),
            metric(&text, "tandem_webhook_receipts_total", "outcome=\"RECEIVED\""),
            metric(&text, "tandem_db_worker_statements_total", "worker=\"inbox\""),
            metric(&text, "tandem_db_worker_statements_total", "worker=\"fanout\""),
            metric(&text, "tandem_db_worker_statements_total", "worker=\"deliveries\""),
            metric(&text, "tandem_db_worker_statements_total", "worker=\"jobs\""),
            metric(&text, "tandem_webhook_deliveries_total", "outcome=\"succeeded\""),
        ));
    }
    let total = |name: &str, labels: &str| -> f64 {
        load.instances
            .iter()
            .map(|i| metric(&i.metrics.lock().expect("metrics"), name, labels))
            .sum()
    };
    let worker = |w: &str| {
        total(
            "tandem_db_worker_statements_total",
            &format!("worker=\"{w}\""),
        )
    };
    let delivered = total("tandem_webhook_deliveries_total", "outcome=\"succeeded\"");
    report.push(format!(
        "  statements over all instances: per applied webhook {:.2} (inbox worker), per event {:.2} (fan-out), per delivery {:.2} (claim, outcome, attempt log)",
        worker("inbox") / applied.len().max(1) as f64,
        worker("fanout") / event_ids.len().max(1) as f64,
        worker("deliveries") / delivered.max(1.0),
    ));
    if failures.is_empty() {
        report.push("checks: passed (every acknowledged webhook applied once, one accrual per deal, every subscribed event delivered and verified)".into());
        Ok(report.join("\n"))
    } else {
        report.push(format!("checks: FAILED: {}", failures.join("; ")));
        bail!("{}", report.join("\n"))
    }
}
