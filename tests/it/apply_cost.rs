//! The cost of the webhook main path must not grow with the data already stored: a receipt
//! received, applied (deal upsert, attribution, referral conversion, events), fanned out and
//! delivered costs about the same on an empty database as next to 100,000 deals with their
//! receipts, attributions, events and deliveries. A statement that scans a growing table
//! instead of seeking (a partial index its predicate cannot use, a join in the wrong order)
//! makes the ratio grow with the seeded size.
//!
//! On SQLite the cost is the exact count of virtual-machine steps of every statement the
//! process ran (`Db::sqlite_steps`); on PostgreSQL it is the rows the server read for this
//! database (sequential-scan tuples plus index fetches, `pg_stat_user_tables`, after ANALYZE as
//! autovacuum would run it).

use std::time::Duration;

use chrono::Utc;
use futures_util::future::join_all;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;

use crate::{
    db_tests,
    helpers::{TestApp, count},
    history::{History, seed_history},
    outbound::{Receiver, endpoint},
    webhooks::{Source, deal_event, drain, post_signed, standard_source},
};

/// Rows seeded between the two measurements.
const SEEDED: i64 = 100_000;
/// Receipts per measurement.
const RECEIPTS: usize = 150;
/// The largest allowed growth of the per-receipt cost.
const MAX_RATIO: f64 = 1.5;

struct Setup {
    program: String,
    partner: String,
    code: String,
    source: Source,
    receiver: Receiver,
    delivered: usize,
}

/// Sends `RECEIPTS` new won deals (carrying the partner's code and a referred domain), waits
/// until they are applied and every event they caused is delivered, and returns the cost.
async fn send_batch(app: &TestApp, setup: &mut Setup, batch: &str) -> f64 {
    let before = cost(app).await;
    let now = Utc::now();
    for chunk in (0..RECEIPTS).collect::<Vec<_>>().chunks(10) {
        join_all(chunk.iter().map(|i| {
            let body = deal_event(
                &format!("{batch}-{i}"),
                "won",
                now,
                json!({"referralCode": setup.code, "companyDomain": "referred.example"}),
            );
            let id = format!("msg-{batch}-{i}");
            let source = &setup.source;
            async move {
                let resp = post_signed(app, source, &id, now.timestamp(), &body).await;
                assert!(resp.status().is_success(), "{}", resp.status());
            }
        }))
        .await;
    }
    drain(app).await;
    // Each new deal is attributed and won: two events, each delivered to the endpoint (the
    // referral converts once, on the first batch's first deal).
    setup.delivered += 2 * RECEIPTS;
    let expected = setup.delivered;
    setup
        .receiver
        .wait_until("every event delivered", |got| got.len() >= expected)
        .await;
    // Let the delivery worker record its outcomes before reading the counters.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count(
        &app.db,
        "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE status = 'PENDING'",
    )
    .await
        > 0
    {
        assert!(std::time::Instant::now() < deadline, "deliveries pending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (cost(app).await - before) / RECEIPTS as f64
}

/// The running work counter of the database (see the module comment).
async fn cost(app: &TestApp) -> f64 {
    match app.db.sqlite_steps() {
        Some(steps) => steps.vm as f64,
        None => {
            // Backends report their table statistics when idle, at most every second and at
            // the latest after 10 s (the workers' idle polling adds a few rows a second).
            tokio::time::sleep(Duration::from_secs(11)).await;
            rows_read(app).await
        }
    }
}

async fn rows_read(app: &TestApp) -> f64 {
    table_reads(app)
        .await
        .iter()
        .map(|(_, seq, idx)| seq + idx)
        .sum()
}

/// Per table of this database: (name, rows read by sequential scans, rows fetched by index).
async fn table_reads(app: &TestApp) -> Vec<(String, f64, f64)> {
    app.db
        .execute_unprepared("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    app.db
        .reads()
        .query_all_raw(Statement::from_string(
            app.db.backend(),
            "SELECT relname, COALESCE(seq_tup_read, 0)::float8 AS seq, \
             COALESCE(idx_tup_fetch, 0)::float8 AS idx FROM pg_stat_user_tables ORDER BY relname",
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| {
            (
                row.try_get("", "relname").unwrap(),
                row.try_get("", "seq").unwrap(),
                row.try_get("", "idx").unwrap(),
            )
        })
        .collect()
}

/// Waits until the fan-out has passed every seeded event (a one-time catch-up that is not part
/// of any receipt's cost), then a moment for the event feed to read them too.
async fn caught_up(app: &TestApp) {
    let order = if app.db.is_postgres() {
        "tx_id DESC, seq DESC"
    } else {
        "seq DESC"
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let behind = count(
            &app.db,
            &format!(
                "SELECT COUNT(*) AS n FROM (SELECT tx_id, seq FROM events ORDER BY {order} LIMIT 1) AS last \
                 WHERE NOT EXISTS (SELECT 1 FROM event_cursors c WHERE c.seq = last.seq)"
            ),
        )
        .await;
        if behind == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fan-out did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
}

async fn receipt_cost_does_not_grow_with_the_data(app: TestApp) {
    let program = app.create_program("Apply cost").await;
    let partner = app.create_partner(&program, "Acme").await;
    let key = app.partner_key(&partner).await;
    let code = app
        .ok(&key, "{ viewer { partner { referralCode } } }", json!({}))
        .await["viewer"]["partner"]["referralCode"]
        .as_str()
        .unwrap()
        .to_string();
    app.submit_referral(
        &key,
        json!({"companyName": "Referred", "companyDomain": "referred.example"}),
    )
    .await;
    let receiver = Receiver::start().await;
    let (endpoint_id, _) = endpoint(
        &app,
        &app.admin,
        json!({"url": receiver.url, "eventTypes": ["deal.attributed", "deal.won"], "programId": program}),
    )
    .await;
    let source = standard_source(&app, &program).await;
    let mut setup = Setup {
        program,
        partner,
        code,
        source,
        receiver,
        delivered: 0,
    };
    // Warm caches (sources, prepared statements) and convert the referral once.
    send_batch(&app, &mut setup, "warm").await;
    let empty = send_batch(&app, &mut setup, "empty").await;
    let ids = History {
        program: &setup.program,
        partner: &setup.partner,
        source: &setup.source.id,
        code: &setup.code,
        endpoint: Some(&endpoint_id),
    };
    seed_history(&app.db, &ids, 0, SEEDED).await.unwrap();
    caught_up(&app).await;
    let tables_before = if app.db.is_postgres() {
        table_reads(&app).await
    } else {
        Vec::new()
    };
    let grown = send_batch(&app, &mut setup, "grown").await;
    // Where the rows were read (PostgreSQL), for the failure message.
    let mut by_table = String::new();
    if app.db.is_postgres() {
        for ((name, seq, idx), (_, seq0, idx0)) in
            table_reads(&app).await.iter().zip(&tables_before)
        {
            let (seq, idx) = (seq - seq0, idx - idx0);
            if seq + idx > 0.0 {
                by_table.push_str(&format!(" {name}: {seq} scanned, {idx} by index;"));
            }
        }
    }
    let ratio = grown / empty;
    eprintln!(
        "cost per receipt: {empty:.0} on an empty database, {grown:.0} next to {SEEDED} deals \
         (ratio {ratio:.2}, {})",
        if app.db.is_postgres() {
            "rows read"
        } else {
            "SQLite VM steps"
        }
    );
    assert!(
        ratio < MAX_RATIO,
        "the cost per receipt grew {ratio:.2}× with {SEEDED} existing deals ({empty:.0} → {grown:.0});{by_table}"
    );
}

db_tests!(receipt_cost_does_not_grow_with_the_data);
