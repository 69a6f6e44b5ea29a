//! Events-out benchmark: `cargo bench --bench outbound -- [sqlite|postgres]`.
//!
//! Runs the real hub in-process with a local receiver (a poem server answering 204) and
//! measures, on one machine:
//! 1. delivery throughput: 20,000 committed events fanned out to one endpoint and delivered
//!    (fan-out + signing + HTTP + outcome recording), in deliveries/s;
//! 2. commit-to-delivery latency: events committed one at a time at ~100/s while the worker
//!    runs; the time from each commit's return to its arrival at the receiver (p50/p95/p99);
//! 3. subscription fan-out: 1,000 websocket subscribers (`graphql-transport-ws`), one event
//!    committed, the time until the last subscriber has it.
//!
//! PostgreSQL: `TANDEM_BENCH_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! a fresh database is created and dropped. Results: `bench/results/outbound-<backend>.json`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use poem::{
    Request, Response, Server,
    listener::{Acceptor, Listener, TcpListener},
};
use serde_json::{Value, json};
use tandem::{
    app::App,
    config::{Config, Redacted},
    db::Db,
    domain::events::{self, EventType},
    metrics::Metrics,
    outbound::{DeliveryWorker, Fanout, OutboundSettings},
};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

mod support;

const THROUGHPUT_EVENTS: usize = 20_000;
const LATENCY_EVENTS: usize = 1_000;
const SUBSCRIBERS: usize = 1_000;

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

async fn receiver() -> (String, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let a = arrivals.clone();
    let endpoint = poem::endpoint::make(move |req: Request| {
        let arrivals = a.clone();
        async move {
            let id = req
                .headers()
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let _ = req.into_body().into_vec().await;
            arrivals
                .lock()
                .unwrap()
                .entry(id)
                .or_insert_with(Instant::now);
            Response::builder()
                .status(http::StatusCode::NO_CONTENT)
                .finish()
        }
    });
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let addr = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
    tokio::spawn(Server::new_with_acceptor(acceptor).run(endpoint));
    (format!("http://{addr}/hooks"), arrivals)
}

fn config(url: &str, worker: bool) -> Config {
    Config {
        database_url: url.to_string(),
        secret_key: Some(Redacted(support::SECRET_KEY.to_string())),
        bind: "127.0.0.1:0".to_string(),
        scheduler: false,
        webhook_worker: worker,
        webhook_allow_private_targets: true,
        webhook_rate_limit: 1_000_000,
        webhook_max_in_flight: 64,
        database_max_connections: 16,
        // The subscription phase opens SUBSCRIBERS sockets from one address with one key.
        ws_max_per_address: 2 * SUBSCRIBERS as u32,
        ws_max_per_key: 2 * SUBSCRIBERS as u32,
        log: "warn".to_string(),
        ..Config::default()
    }
}

struct Hub {
    base: String,
    admin: String,
    db: Db,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(url: &str, worker: bool) -> Hub {
    let db = Db::connect(url, 16).await.unwrap();
    db.migrate().await.unwrap();
    let app = App::build_with_db(config(url, worker), db.clone())
        .await
        .unwrap();
    let admin = match app.ensure_admin_key().await.unwrap() {
        Some(token) => token,
        None => {
            tandem::domain::auth::create_key(
                &db,
                "bench",
                tandem::domain::auth::ApiKeyRole::Admin,
                None,
                &[],
            )
            .await
            .map_err(|e| e.into_anyhow())
            .unwrap()
            .token
        }
    };
    let base = format!("http://{}", app.addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    Hub {
        base,
        admin,
        db,
        stop,
    }
}

async fn gql(hub: &Hub, query: &str, variables: Value) -> Value {
    support::gql(&hub.base, &hub.admin, query, variables).await
}

/// A program and a partner to hang events on.
async fn program_and_partner(hub: &Hub) -> (String, String) {
    let program = gql(
        hub,
        "mutation($input: CreateProgramInput!) { createProgram(input: $input) { program { id } } }",
        json!({"input": {"name": "Bench", "kind": "TECHNOLOGY_INTEGRATION", "currency": "USD",
            "commission": {"type": "PERCENT", "rate": "10"}}}),
    )
    .await["createProgram"]["program"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let partner = gql(
        hub,
        "mutation($input: CreatePartnerInput!) { createPartner(input: $input) { partner { id } } }",
        json!({"input": {"programId": program, "name": "Bench partner", "contactEmail": "bench@example.com"}}),
    )
    .await["createPartner"]["partner"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    (program, partner)
}

async fn create_endpoint(hub: &Hub, url: &str) {
    gql(
        hub,
        "mutation($input: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $input) { secret } }",
        json!({"input": {"url": url, "eventTypes": ["partner.updated"]}}),
    )
    .await;
}

/// Commits `n` events in transactions of `per_tx`; returns (id, commit instant) pairs.
async fn commit_events(
    db: &Db,
    program: &str,
    partner: &str,
    n: usize,
    per_tx: usize,
) -> Vec<(String, Instant)> {
    let mut out = Vec::with_capacity(n);
    let mut made = 0;
    while made < n {
        let tx = db.begin_write().await.unwrap();
        let mut batch = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..per_tx.min(n - made) {
            let event = events::new_event(
                EventType::PartnerUpdated,
                program,
                Some(partner),
                json!({"status": "ACTIVE", "previousStatus": "SUSPENDED"}),
            );
            ids.push(event.id.clone().unwrap());
            batch.push(event);
        }
        made += batch.len();
        events::record_all(&*tx, batch).await.unwrap();
        tx.commit().await.unwrap();
        let at = Instant::now();
        out.extend(ids.into_iter().map(|id| (id, at)));
    }
    out
}

async fn wait_for(arrivals: &Arrivals, n: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if arrivals.lock().unwrap().len() >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn throughput(url: &str) -> Value {
    let hub = start(url, false).await;
    let (program, partner) = program_and_partner(&hub).await;
    let (receiver_url, arrivals) = receiver().await;
    create_endpoint(&hub, &receiver_url).await;
    let fanout = Fanout::new(hub.db.clone());
    fanout.catch_up().await.unwrap();
    commit_events(&hub.db, &program, &partner, THROUGHPUT_EVENTS, 1_000).await;
    let started = Instant::now();
    let created = fanout.catch_up().await.unwrap();
    let fanned = started.elapsed();
    assert_eq!(created as usize, THROUGHPUT_EVENTS);
    let key = tandem::domain::secrets::SecretKey::from_base64(support::SECRET_KEY).unwrap();
    let worker = DeliveryWorker::new(
        hub.db.clone(),
        Arc::new(key),
        OutboundSettings::from_config(&config(url, true)),
        Arc::new(tokio::sync::Notify::new()),
        Metrics::new(),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sending = Instant::now();
    let handle = tokio::spawn(worker.run(stopped));
    assert!(wait_for(&arrivals, THROUGHPUT_EVENTS, Duration::from_secs(600)).await);
    let delivered = sending.elapsed();
    stop.send(true).unwrap();
    handle.await.unwrap();
    let recorded = sending.elapsed();
    let _ = hub.stop.send(());
    let result = json!({
        "events": THROUGHPUT_EVENTS,
        "fanout_seconds": fanned.as_secs_f64(),
        "fanout_per_second": THROUGHPUT_EVENTS as f64 / fanned.as_secs_f64(),
        "delivery_seconds": delivered.as_secs_f64(),
        "deliveries_per_second": THROUGHPUT_EVENTS as f64 / delivered.as_secs_f64(),
        "deliveries_recorded_seconds": recorded.as_secs_f64(),
        "end_to_end_per_second": THROUGHPUT_EVENTS as f64 / (fanned + delivered).as_secs_f64(),
    });
    println!("throughput: {result}");
    result
}

async fn latency(url: &str) -> Value {
    let hub = start(url, true).await;
    let (program, partner) = program_and_partner(&hub).await;
    let (receiver_url, arrivals) = receiver().await;
    create_endpoint(&hub, &receiver_url).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut commits = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for _ in 0..LATENCY_EVENTS {
        tick.tick().await;
        commits.extend(commit_events(&hub.db, &program, &partner, 1, 1).await);
    }
    assert!(wait_for(&arrivals, LATENCY_EVENTS, Duration::from_secs(120)).await);
    let arrived = arrivals.lock().unwrap().clone();
    let mut ms: Vec<f64> = commits
        .iter()
        .map(|(id, at)| arrived[id].saturating_duration_since(*at).as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let _ = hub.stop.send(());
    let result = json!({
        "events": LATENCY_EVENTS,
        "rate_per_second": 100,
        "p50_ms": percentile(&ms, 0.5),
        "p95_ms": percentile(&ms, 0.95),
        "p99_ms": percentile(&ms, 0.99),
        "max_ms": ms.last(),
    });
    println!("latency: {result}");
    result
}

async fn subscriptions(url: &str) -> Value {
    let hub = start(url, false).await;
    let (program, partner) = program_and_partner(&hub).await;
    let ws_url = format!("{}/graphql/ws", hub.base.replace("http://", "ws://"));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(SUBSCRIBERS);
    let (got_tx, mut got_rx) = tokio::sync::mpsc::channel::<Instant>(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let (ws_url, admin, ready, got) = (
            ws_url.clone(),
            hub.admin.clone(),
            ready_tx.clone(),
            got_tx.clone(),
        );
        tokio::spawn(async move {
            let mut request = ws_url.into_client_request().unwrap();
            request.headers_mut().insert(
                "sec-websocket-protocol",
                "graphql-transport-ws".parse().unwrap(),
            );
            let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
            let send = |v: Value| Message::Text(v.to_string().into());
            ws.send(send(json!({"type": "connection_init",
                "payload": {"Authorization": format!("Bearer {admin}")}})))
                .await
                .unwrap();
            loop {
                if let Some(Ok(Message::Text(t))) = ws.next().await
                    && t.contains("connection_ack")
                {
                    break;
                }
            }
            ws.send(send(
                json!({"id": "1", "type": "subscribe", "payload": {"query":
                "subscription { events(types: [\"partner.updated\"]) { id type data } }"}}),
            ))
            .await
            .unwrap();
            ready.send(()).await.unwrap();
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg
                    && t.contains("\"next\"")
                {
                    got.send(Instant::now()).await.unwrap();
                    break;
                }
            }
        });
    }
    for _ in 0..SUBSCRIBERS {
        ready_rx.recv().await.unwrap();
    }
    // Let every subscription reach the feed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let committed = commit_events(&hub.db, &program, &partner, 1, 1).await[0].1;
    let mut ms = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let at = tokio::time::timeout(Duration::from_secs(30), got_rx.recv())
            .await
            .expect("every subscriber receives the event")
            .unwrap();
        ms.push(at.saturating_duration_since(committed).as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let _ = hub.stop.send(());
    let result = json!({
        "subscribers": SUBSCRIBERS,
        "first_ms": ms.first(),
        "p50_ms": percentile(&ms, 0.5),
        "last_ms": ms.last(),
    });
    println!("subscriptions: {result}");
    result
}

#[tokio::main]
async fn main() {
    tandem::install_crypto_provider();
    let backend = std::env::args()
        .skip(1)
        .find(|a| a == "sqlite" || a == "postgres")
        .unwrap_or_else(|| "sqlite".to_string());
    let mut results = serde_json::Map::new();
    for part in ["throughput", "latency", "subscriptions"] {
        let database = support::BenchDb::fresh(&backend).await;
        let url = database.url.clone();
        let value = match part {
            "throughput" => throughput(&url).await,
            "latency" => latency(&url).await,
            _ => subscriptions(&url).await,
        };
        results.insert(part.to_string(), value);
        tokio::time::sleep(Duration::from_millis(500)).await;
        database.remove().await;
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_string())
        })
        .unwrap_or_default();
    results.insert("backend".into(), json!(backend));
    results.insert("cpu".into(), json!(cpu));
    results.insert(
        "cores".into(),
        json!(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        ),
    );
    results.insert("at".into(), json!(chrono::Utc::now().to_rfc3339()));
    std::fs::create_dir_all("bench/results").unwrap();
    let out = format!("bench/results/outbound-{backend}.json");
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&Value::Object(results)).unwrap(),
    )
    .unwrap();
    println!("results in {out}");
}
