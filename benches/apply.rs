//! Inbox apply benchmark: `cargo bench --bench apply -- [sqlite|postgres] [receipts] [sizes…]`.
//!
//! Measures how many webhook receipts per second the apply worker gets through next to a
//! growing history: for each size (default 0, 100,000 and 1,000,000 existing deals, each with
//! its applied receipt, attribution, referral and two events, seeded directly in SQL), it sends
//! `receipts` (default 20,000) signed STANDARD webhooks of new won deals carrying the partner's
//! code to a hub whose own apply worker is off, then runs one apply worker alone until the
//! inbox is empty and times it. On SQLite it also reports the SQLite virtual-machine steps per
//! receipt (exact, unlike the wall clock). The apply rate at the largest size must stay within
//! 1.5× of the rate on the empty database (the cost of a receipt must not grow with the data).
//! Results: `bench/results/apply-<backend>.json`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tandem::{
    config::Config,
    domain::inbox::{InboxWorker, backlog},
};
use tandem_connectors::verify::{decode_standard_secret, sign_standard};

#[path = "../tests/it/history.rs"]
mod history;
mod support;
use support::gql;

/// Posts `count` signed webhooks of new won deals (64 in flight).
async fn send(url: &str, key: &[u8], code: &str, batch: &str, count: usize) {
    let client = reqwest::Client::new();
    let now = chrono::Utc::now();
    stream::iter(0..count)
        .for_each_concurrent(64, |i| {
            let client = client.clone();
            async move {
                let id = format!("msg-{batch}-{i}");
                let body = json!({"type": "deal.updated", "data": {
                    "id": format!("{batch}-{i}"), "name": "Bench deal", "amount": "1250.00",
                    "currency": "USD", "status": "won", "referralCode": code,
                    "companyDomain": "referred.example",
                    "createdAt": now.to_rfc3339(), "updatedAt": now.to_rfc3339()}})
                .to_string();
                let resp = client
                    .post(url)
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", now.timestamp().to_string())
                    .header(
                        "webhook-signature",
                        sign_standard(key, &id, now.timestamp(), body.as_bytes()),
                    )
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(resp.status().is_success(), "{}", resp.status());
            }
        })
        .await;
}

#[tokio::main]
async fn main() {
    tandem::install_crypto_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let backend = if args.iter().any(|a| a == "postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    let numbers: Vec<i64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let receipts = numbers.first().copied().unwrap_or(20_000) as usize;
    let sizes: Vec<i64> = if numbers.len() > 1 {
        numbers[1..].to_vec()
    } else {
        vec![0, 100_000, 1_000_000]
    };

    let database = support::BenchDb::fresh(backend).await;
    let url = database.url.clone();
    let config = Config {
        // Receipts queue up; the benchmark's own worker applies them.
        inbox_worker: false,
        ..support::config(&url)
    };
    let support::Hub {
        base,
        admin,
        state,
        stop,
    } = support::start_hub(config).await;
    let db = state.db.clone();
    let (webhooks, inbox) = (state.webhooks.clone(), state.inbox.clone());

    let program = gql(&base, &admin,
        "mutation { createProgram(input: {name: \"Apply bench\", kind: CHANNEL, currency: \"USD\", commission: {type: PERCENT, rate: \"10\"}}) { program { id } } }",
        json!({})).await["createProgram"]["program"]["id"].as_str().unwrap().to_string();
    let partner = gql(&base, &admin,
        "mutation($p: ID!) { createPartner(input: {programId: $p, name: \"Acme\", contactEmail: \"ops@acme.example\"}) { partner { id referralCode } } }",
        json!({"p": program})).await["createPartner"]["partner"].clone();
    let (partner_id, code) = (
        partner["id"].as_str().unwrap().to_string(),
        partner["referralCode"].as_str().unwrap().to_string(),
    );
    gql(&base, &admin,
        "mutation($p: ID!) { submitReferral(input: {partnerId: $p, companyName: \"Referred\", companyDomain: \"referred.example\"}) { referral { id } } }",
        json!({"p": partner_id})).await;
    let source = gql(&base, &admin,
        "mutation($p: ID!) { createWebhookSource(input: {name: \"bench\", kind: STANDARD, programId: $p}) { source { id } secret url } }",
        json!({"p": program})).await["createWebhookSource"].clone();
    let source_id = source["source"]["id"].as_str().unwrap().to_string();
    let source_url = source["url"].as_str().unwrap().to_string();
    let key = decode_standard_secret(source["secret"].as_str().unwrap()).unwrap();
    let worker = Arc::new(InboxWorker::new(db.clone(), webhooks, inbox));
    let ids = history::History {
        program: &program,
        partner: &partner_id,
        source: &source_id,
        code: &code,
        endpoint: None,
    };

    // Warm-up: caches, prepared statements.
    send(&source_url, &key, &code, "warm", 500).await;
    while worker.apply_due().await.unwrap() > 0 {}

    let mut seeded = 0;
    let mut rows = Vec::new();
    for (n, &size) in sizes.iter().enumerate() {
        if size > seeded {
            let started = Instant::now();
            // In steps of 250,000: one transaction each.
            while seeded < size {
                let to = (seeded + 250_000).min(size);
                history::seed_history(&db, &ids, seeded, to).await.unwrap();
                seeded = to;
            }
            eprintln!(
                "seeded {size} deals in {:.1}s",
                started.elapsed().as_secs_f64()
            );
        }
        send(&source_url, &key, &code, &format!("run{n}"), receipts).await;
        let queued = backlog(&db).await.unwrap();
        assert_eq!(queued as usize, receipts);
        let steps_before = db.sqlite_steps();
        let started = Instant::now();
        let mut applied = 0;
        loop {
            let done = worker.apply_due().await.unwrap();
            if done == 0 {
                break;
            }
            applied += done;
        }
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(applied, receipts);
        let steps = db
            .sqlite_steps()
            .zip(steps_before)
            .map(|(after, before)| (after - before).vm as f64 / receipts as f64);
        let row = json!({
            "existing_deals": size,
            "receipts": receipts,
            "seconds": seconds,
            "receipts_per_second": receipts as f64 / seconds,
            "sqlite_vm_steps_per_receipt": steps,
        });
        eprintln!("{row}");
        rows.push(row);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    database.remove().await;
    let rate = |row: &Value| row["receipts_per_second"].as_f64().unwrap();
    let slowdown = rate(&rows[0]) / rate(rows.last().unwrap());
    let result = json!({
        "backend": backend,
        "runs": rows,
        "slowdown_largest_vs_first": slowdown,
        "target": "slowdown < 1.5",
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "at": chrono::Utc::now().to_rfc3339(),
    });
    println!("{}", serde_json::to_string_pretty(&result).unwrap());
    std::fs::create_dir_all("bench/results").unwrap();
    let out = format!("bench/results/apply-{backend}.json");
    std::fs::write(&out, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    println!("results in {out}");
    assert!(
        slowdown < 1.5,
        "applying slowed down {slowdown:.2}× between {} and {} existing deals",
        sizes[0],
        sizes.last().unwrap()
    );
}
