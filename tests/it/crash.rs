//! Crash safety of the inbox: the real binary is killed with SIGKILL in the middle of a burst of
//! signed webhooks and restarted on the same database. Every webhook that got a 2xx must be in
//! the inbox and applied exactly once; none may be applied twice.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use serde_json::json;
use tandem::db::Db;
use tandem_connectors::verify::{decode_standard_secret, sign_standard};

use crate::helpers::{
    TEST_SECRET_KEY, count, free_port, fresh_postgres_database, gql_ok_at, spawn_serve, terminate,
};

async fn kill_mid_burst_and_restart(database_url: &str) {
    tandem::install_crypto_provider();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let (child, token) = spawn_serve(
        database_url,
        port,
        &[("TANDEM_SECRET_KEY", TEST_SECRET_KEY)],
    );
    let admin = token.expect("first start prints the admin key");
    let client = reqwest::Client::new();
    let program = gql_ok_at(
        &client,
        &base,
        &admin,
        r#"mutation { createProgram(input: {name: "Crash", kind: CHANNEL, currency: "USD",
            commission: {type: PERCENT, rate: "10"}}) { program { id } } }"#,
        json!({}),
    )
    .await["createProgram"]["program"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let partner = gql_ok_at(&client, &base, &admin,
        "mutation($p: ID!) { createPartner(input: {programId: $p, name: \"P\", contactEmail: \"p@p.example\"}) { partner { id referralCode } } }",
        json!({"p": program})).await["createPartner"]["partner"].clone();
    let code = partner["referralCode"].as_str().unwrap().to_string();
    let source = gql_ok_at(&client, &base, &admin,
        "mutation($p: ID!) { createWebhookSource(input: {name: \"crm\", kind: STANDARD, programId: $p}) { secret url } }",
        json!({"p": program})).await["createWebhookSource"].clone();
    let key = decode_standard_secret(source["secret"].as_str().unwrap()).unwrap();
    let url = source["url"].as_str().unwrap().to_string();

    // A burst from 16 concurrent senders; the server is killed once 150 were acknowledged.
    let total = 600;
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..16 {
        let (client, url, key, code) = (client.clone(), url.clone(), key.clone(), code.clone());
        let (acked, acked_count, next) = (acked.clone(), acked_count.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= total {
                    return;
                }
                let id = format!("msg_{n}");
                let body = json!({"type": "deal.updated", "data": {"id": format!("deal-{n}"),
                    "name": "d", "amount": "100.00", "status": "won", "referralCode": code,
                    "updatedAt": Utc::now().to_rfc3339()}})
                .to_string();
                let ts = Utc::now().timestamp();
                let sent = client
                    .post(&url)
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", ts.to_string())
                    .header(
                        "webhook-signature",
                        sign_standard(&key, &id, ts, body.as_bytes()),
                    )
                    .body(body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                if let Ok(resp) = sent
                    && resp.status().is_success()
                {
                    acked.lock().unwrap().push(id);
                    acked_count.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked_count.load(Ordering::SeqCst) < 150 {
        assert!(Instant::now() < deadline, "the burst did not get going");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut child = child;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for sender in senders {
        sender.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(acked.len() < total, "the kill landed mid-burst");

    // Restart: receipts left in the inbox are applied.
    let (child, token) = spawn_serve(
        database_url,
        port,
        &[("TANDEM_SECRET_KEY", TEST_SECRET_KEY)],
    );
    assert!(token.is_none());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = gql_ok_at(
            &client,
            &base,
            &admin,
            "{ webhookReceipts(filter: {status: RECEIVED}) { totalCount } }",
            json!({}),
        )
        .await["webhookReceipts"]["totalCount"]
            .as_i64()
            .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} receipts never applied after restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    terminate(child);

    let db = Db::connect(database_url, 1).await.unwrap();
    for id in &acked {
        let applied = count(&db, &format!(
            "SELECT COUNT(*) AS n FROM webhook_receipts WHERE provider_event_id = '{id}' AND status = 'APPLIED'"
        )).await;
        assert_eq!(
            applied, 1,
            "acknowledged webhook {id} applied {applied} times"
        );
    }
    let applied = count(
        &db,
        "SELECT COUNT(*) AS n FROM webhook_receipts WHERE status = 'APPLIED'",
    )
    .await;
    assert!(applied >= acked.len() as i64);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM webhook_receipts WHERE status <> 'APPLIED'"
        )
        .await,
        0
    );
    assert_eq!(count(&db, "SELECT COUNT(*) AS n FROM deals").await, applied);
    let won = count(
        &db,
        "SELECT COUNT(*) AS n FROM events WHERE type = 'deal.won'",
    )
    .await;
    assert_eq!(won, applied, "one deal.won per applied webhook, never two");
    let twice = count(&db, "SELECT COUNT(*) AS n FROM (SELECT partner_id FROM events WHERE type = 'deal.attributed' GROUP BY partner_id, CAST(data AS TEXT) HAVING COUNT(*) > 1) t").await;
    assert_eq!(twice, 0);
    db.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_nothing_acknowledged_sqlite() {
    let dir = std::env::temp_dir().join(format!("tandem-crash-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    kill_mid_burst_and_restart(&format!("sqlite://{}/tandem.db", dir.display())).await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_nothing_acknowledged_postgres() {
    let Some(database) = fresh_postgres_database().await else {
        eprintln!(
            "skipped sigkill_mid_burst_loses_nothing_acknowledged on PostgreSQL: TANDEM_TEST_POSTGRES_URL is not set"
        );
        return;
    };
    kill_mid_burst_and_restart(&database.url).await;
}
