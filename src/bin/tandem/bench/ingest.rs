//! `tandem bench-ingest`: a load generator for the webhook ingest path. It creates a program,
//! a partner and a STANDARD source on a running hub (with an admin key), then sends signed
//! webhooks with distinct ids in three phases and reports what it measured:
//!
//! 1. **max**: `connections` closed-loop senders for `max_secs`: acknowledged webhooks/s;
//! 2. **rate**: an open-loop 1,000/s for `rate_secs`: acknowledgement latency p50/p99/max;
//! 3. **burst**: an open-loop 2,000/s for `burst_secs`, then the time until the inbox backlog is
//!    back to 0 (the apply worker keeping up).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tandem_connectors::verify::{decode_standard_secret, sign_standard};

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchIngestArgs {
    /// Base URL of the running hub.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin key of that hub.
    #[arg(long, env = "TANDEM_BENCH_TOKEN")]
    pub token: String,
    /// Concurrent senders in the max-throughput phase.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Seconds of the max-throughput phase (0 skips it).
    #[arg(long, default_value_t = 15)]
    pub max_secs: u64,
    /// Seconds of the 1,000/s latency phase (0 skips it).
    #[arg(long, default_value_t = 15)]
    pub rate_secs: u64,
    /// Seconds of the 2,000/s burst phase (0 skips it).
    #[arg(long, default_value_t = 30)]
    pub burst_secs: u64,
    /// Do not wait for the inbox to empty (for a hub running with TANDEM_INBOX_WORKER=false).
    #[arg(long)]
    pub no_drain: bool,
}

struct Target {
    client: reqwest::Client,
    url: String,
    key: Vec<u8>,
    code: String,
    next: AtomicU64,
    run: String,
}

/// A signed STANDARD `deal.updated` webhook: a new won 1,250.00 USD deal `deal-{run}-{n}` with
/// the partner's referral `code`, webhook id `{prefix}-{run}-{n}`.
pub(crate) struct DealWebhook {
    pub(crate) id: String,
    pub(crate) body: String,
    pub(crate) timestamp: String,
    pub(crate) signature: String,
}

impl DealWebhook {
    pub(crate) fn new(key: &[u8], prefix: &str, run: &str, n: u64, code: &str) -> DealWebhook {
        let id = format!("{prefix}-{run}-{n}");
        let now = chrono::Utc::now();
        let body = json!({"type": "deal.updated", "data": {
            "id": format!("deal-{run}-{n}"), "name": "Bench deal", "amount": "1250.00",
            "currency": "USD", "status": "won", "referralCode": code,
            "createdAt": now.to_rfc3339(), "updatedAt": now.to_rfc3339()}})
        .to_string();
        let ts = now.timestamp();
        let signature = sign_standard(key, &id, ts, body.as_bytes());
        DealWebhook {
            id,
            body,
            timestamp: ts.to_string(),
            signature,
        }
    }

    /// The POST of this webhook to `url`.
    pub(crate) fn request(&self, client: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
        client
            .post(url)
            .header("webhook-id", &self.id)
            .header("webhook-timestamp", &self.timestamp)
            .header("webhook-signature", &self.signature)
            .header("content-type", "application/json")
            .body(self.body.clone())
    }
}

impl Target {
    async fn send_one(&self) -> Result<Duration, String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let webhook = DealWebhook::new(&self.key, "bench", &self.run, n, &self.code);
        let started = Instant::now();
        let resp = webhook
            .request(&self.client, &self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let elapsed = started.elapsed();
        if resp.status().is_success() {
            // Read the (small) body so the connection is reused.
            let _ = resp.bytes().await;
            Ok(elapsed)
        } else {
            Err(format!("HTTP {}", resp.status()))
        }
    }
}

pub(crate) async fn graphql(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    query: &str,
    variables: Value,
) -> anyhow::Result<Value> {
    let resp: Value = client
        .post(format!("{url}/graphql"))
        .bearer_auth(token)
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await?
        .json()
        .await?;
    if let Some(errors) = resp.get("errors") {
        bail!("GraphQL error: {errors}");
    }
    Ok(resp["data"].clone())
}

pub(crate) struct Latencies(pub(crate) Vec<Duration>);

impl Latencies {
    fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[index]
    }

    pub(crate) fn summary(mut self) -> String {
        self.0.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(self.percentile(0.50)),
            ms(self.percentile(0.90)),
            ms(self.percentile(0.99)),
            ms(self.percentile(1.0)),
        )
    }
}

/// The value of the gauge `name` on the hub's `/metrics`.
pub(crate) async fn gauge(client: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .with_context(|| format!("{name} missing from /metrics"))?
        .trim()
        .parse()
        .with_context(|| format!("{name} is not a number"))
}

/// The hub's own inbox backlog gauge (`tandem_inbox_backlog` on `/metrics`).
pub(crate) async fn backlog(client: &reqwest::Client, base: &str) -> anyhow::Result<i64> {
    Ok(gauge(client, base, "tandem_inbox_backlog").await? as i64)
}

async fn wait_for_empty_inbox(
    target: &Target,
    args: &BenchIngestArgs,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    if args.no_drain {
        return Ok(Duration::ZERO);
    }
    loop {
        if backlog(&target.client, &args.url).await? == 0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("the inbox was not empty after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends at a fixed rate for `secs`; returns latencies and the number of errors.
async fn open_loop(target: Arc<Target>, rate: u64, secs: u64) -> (Latencies, u64) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = rate * secs;
    let mut sent = 0u64;
    let started = Instant::now();
    while sent < total {
        tick.tick().await;
        // Catch up to the schedule: `rate` per second since the start.
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            sent += 1;
            let (target, tx) = (target.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tx.send(target.send_one().await);
            });
        }
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(total as usize);
    let mut errors = 0;
    while let Some(result) = rx.recv().await {
        match result {
            Ok(latency) => latencies.push(latency),
            Err(_) => errors += 1,
        }
    }
    (Latencies(latencies), errors)
}

/// What a load generator creates on the hub (with an admin key): a 10 % PERCENT program in
/// USD, a partner, and a STANDARD webhook source of the program.
pub(crate) struct BenchProgram {
    pub(crate) program_id: String,
    /// The partner's referral code.
    pub(crate) code: String,
    pub(crate) source_id: String,
    pub(crate) source_url: String,
    /// The source's signing key (decoded from its `whsec_…` secret).
    pub(crate) source_key: Vec<u8>,
}

impl BenchProgram {
    pub(crate) async fn create(
        client: &reqwest::Client,
        url: &str,
        token: &str,
        name: &str,
    ) -> anyhow::Result<BenchProgram> {
        let program_id = graphql(client, url, token,
            "mutation($n: String!) { createProgram(input: {name: $n, kind: CHANNEL, currency: \"USD\",
                commission: {type: PERCENT, rate: \"10\"}}) { program { id } } }", json!({"n": name})).await?
            ["createProgram"]["program"]["id"].as_str().context("program id")?.to_string();
        let partner = graphql(client, url, token,
            "mutation($p: ID!) { createPartner(input: {programId: $p, name: \"Bench partner\", contactEmail: \"bench@partner.example\"}) { partner { referralCode } } }",
            json!({"p": program_id})).await?;
        let source = graphql(client, url, token,
            "mutation($p: ID!) { createWebhookSource(input: {name: \"bench\", kind: STANDARD, programId: $p}) { secret url source { id } } }",
            json!({"p": program_id})).await?["createWebhookSource"].clone();
        Ok(BenchProgram {
            program_id,
            code: partner["createPartner"]["partner"]["referralCode"]
                .as_str()
                .context("code")?
                .to_string(),
            source_id: source["source"]["id"]
                .as_str()
                .context("source id")?
                .to_string(),
            source_url: source["url"].as_str().context("source url")?.to_string(),
            source_key: decode_standard_secret(source["secret"].as_str().context("secret")?)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        })
    }
}

/// Runs the benchmark and returns the report.
pub async fn run(args: BenchIngestArgs) -> anyhow::Result<String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let setup = BenchProgram::create(&client, &args.url, &args.token, "Ingest benchmark").await?;
    let target = Arc::new(Target {
        client,
        url: setup.source_url,
        key: setup.source_key,
        code: setup.code,
        next: AtomicU64::new(0),
        run,
    });
    // Warm the connection pool and the source cache.
    for _ in 0..200 {
        target
            .send_one()
            .await
            .map_err(|e| anyhow::anyhow!("warm-up request failed: {e}"))?;
    }
    wait_for_empty_inbox(&target, &args, Duration::from_secs(60)).await?;
    let mut report = Vec::new();

    if args.max_secs > 0 {
        let deadline = Instant::now() + Duration::from_secs(args.max_secs);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..args.connections {
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    match target.send_one().await {
                        Ok(latency) => latencies.push(latency),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            }));
        }
        let mut latencies = Vec::new();
        let mut errors = 0;
        for task in tasks {
            let (l, e) = task.await?;
            latencies.extend(l);
            errors += e;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let acked = latencies.len();
        report.push(format!(
            "max throughput: {} concurrent senders for {}s: {acked} acknowledged ({:.0}/s), {errors} errors; latency {}",
            args.connections,
            args.max_secs,
            acked as f64 / elapsed,
            Latencies(latencies).summary()
        ));
        let drained = wait_for_empty_inbox(&target, &args, Duration::from_secs(600)).await?;
        report.push(format!(
            "  inbox backlog back to 0 {:.1}s after the phase ended",
            drained.as_secs_f64()
        ));
    }

    if args.rate_secs > 0 {
        let (latencies, errors) = open_loop(target.clone(), 1000, args.rate_secs).await;
        report.push(format!(
            "1,000/s for {}s: {} acknowledged, {errors} errors; acknowledgement latency {}",
            args.rate_secs,
            latencies.0.len(),
            latencies.summary()
        ));
        wait_for_empty_inbox(&target, &args, Duration::from_secs(600)).await?;
    }

    if args.burst_secs > 0 {
        let (latencies, errors) = open_loop(target.clone(), 2000, args.burst_secs).await;
        let drained = wait_for_empty_inbox(&target, &args, Duration::from_secs(600)).await?;
        report.push(format!(
            "2,000/s burst for {}s: {} acknowledged, {errors} errors; latency {}; inbox backlog back to 0 {:.1}s after the burst",
            args.burst_secs,
            latencies.0.len(),
            latencies.summary(),
            drained.as_secs_f64()
        ));
    }
    Ok(report.join("\n"))
}
