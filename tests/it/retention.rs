//! Retention: `prune` drops each kind of history past its period, keeps what must stay (receipts
//! still to apply, pending deliveries, a job's latest run, a connection's latest sync, events
//! the fan-out has not passed or a delivery still needs), never touches the ledger, and
//! `/metrics` reports the table sizes.

use chrono::{DateTime, Duration, Utc};
use sea_orm::Value;
use serde_json::json;
use tandem::config::Config;

use crate::{
    commissions::run_job,
    db_tests,
    helpers::{TestApp, count},
    webhooks::{deal_event, drain, post_signed, standard_source},
};

/// Default periods, events kept 30 days, and no outbound worker: the test places the fan-out's
/// cursor itself, and pending deliveries stay pending.
fn events_pruned(config: &mut Config) {
    config.event_retention = "30d".to_string();
    config.webhook_worker = false;
}

async fn write(app: &TestApp, sql: &str, values: Vec<Value>) -> u64 {
    app.db.execute_write(sql.to_string(), values).await.unwrap()
}

/// The first column of every row of `sql`.
async fn column<T: sea_orm::TryGetable>(app: &TestApp, sql: &str) -> Vec<T> {
    use sea_orm::ConnectionTrait;
    app.db
        .reads()
        .query_all_raw(sea_orm::Statement::from_string(app.db.backend(), sql))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get_by_index(0).unwrap())
        .collect()
}

fn days_ago(days: i64) -> DateTime<Utc> {
    Utc::now() - Duration::days(days)
}

async fn prune_keeps_what_must_stay(app: TestApp) {
    let [p1, p2, p3, p4, p5] = app.db.params();
    // Webhook receipts: three applied, one repeat (DUPLICATE), one still to apply.
    let program = app.create_program("Retention").await;
    let source = standard_source(&app, &program).await;
    let now = Utc::now();
    for (webhook_id, deal) in [
        ("msg_1", "deal-1"),
        ("msg_2", "deal-2"),
        ("msg_3", "deal-3"),
        ("msg_1", "deal-1"),
        ("msg_4", "deal-4"),
    ] {
        let body = deal_event(deal, "OPEN", now, json!({}));
        let resp = post_signed(&app, &source, webhook_id, now.timestamp(), &body).await;
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    drain(&app).await;
    assert_eq!(
        count(
            &app.db,
            "SELECT COUNT(*) AS n FROM webhook_receipts WHERE status = 'DUPLICATE'"
        )
        .await,
        1
    );
    let waiting = count(&app.db, "SELECT MAX(seq) AS n FROM webhook_receipts").await;
    write(
        &app,
        &format!(
            "UPDATE webhook_receipts SET status = 'RECEIVED', available_at_ms = NULL \
             WHERE seq = {p1}"
        ),
        vec![waiting.into()],
    )
    .await;
    write(
        &app,
        &format!("UPDATE webhook_receipts SET received_at = {p1}"),
        vec![days_ago(40).into()],
    )
    .await;
    let deals = app.count_rows("deals").await;
    let ledger = app.count_rows("ledger_entries").await;

    // Job runs: two release-holds runs 100 days old; the second is the job's latest.
    for _ in 0..2 {
        run_job(&app, "release-holds", false).await;
    }
    write(
        &app,
        &format!("UPDATE job_runs SET started_at = {p1} WHERE name = 'release-holds'"),
        vec![days_ago(100).into()],
    )
    .await;
    let latest: String = column(
        &app,
        "SELECT MAX(id) FROM job_runs WHERE name = 'release-holds'",
    )
    .await
    .remove(0);

    // Sync runs of two connections, all 100 days old: the first has two, the second one (the
    // latest of each stays). No scheduler runs in the tests: the connections never sync.
    let mut connections = Vec::new();
    for name in ["first", "second"] {
        let data = app
            .admin_ok(
                "mutation($input: CreateCrmConnectionInput!) { createCrmConnection(input: $input) \
                 { connection { id } } }",
                json!({"input": {"name": name, "kind": "HUBSPOT", "programId": program,
                    "baseUrl": "http://127.0.0.1:9", "accessToken": "pat-test"}}),
            )
            .await;
        connections.push(
            data["createCrmConnection"]["connection"]["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut sync_ids = Vec::new();
    for connection in [&connections[0], &connections[0], &connections[1]] {
        let id = tandem::domain::ids::new_id();
        write(
            &app,
            &format!(
                "INSERT INTO sync_runs (id, connection_id, status, started_at, finished_at, \
                 pages, deals_seen, deals_changed, receipts_applied, referrals_pushed) \
                 VALUES ({p1}, {p2}, 'SUCCEEDED', {p3}, {p3}, 1, 0, 0, 0, 0)"
            ),
            vec![
                id.clone().into(),
                connection.clone().into(),
                days_ago(100).into(),
            ],
        )
        .await;
        sync_ids.push(id);
    }

    // Deliveries to one endpoint: an old succeeded one with two recent attempts, an old
    // pending one (its event must stay), a recent failed one.
    let endpoint = app
        .admin_ok(
            "mutation { createWebhookEndpoint(input: {url: \"http://127.0.0.1:9/hook\", \
             eventTypes: [\"deal.won\"]}) { endpoint { id } } }",
            json!({}),
        )
        .await["createWebhookEndpoint"]["endpoint"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Events: four referrals' (`referral.created`).
    let partner = app.create_partner(&program, "Referrer").await;
    let key = app.partner_key(&partner).await;
    app.submit_referrals(&key, 4, "example").await;
    app.events_settled().await;
    let ids: Vec<String> = column(&app, "SELECT id FROM events ORDER BY seq").await;
    let seqs: Vec<i64> = column(&app, "SELECT seq FROM events ORDER BY seq").await;
    let events: Vec<(String, i64)> = ids.into_iter().zip(seqs).collect();
    assert!(events.len() >= 4, "{events:?}");
    let mut delivery_ids = Vec::new();
    for (status, age, event) in [
        ("SUCCEEDED", 40, &events[0].0),
        ("PENDING", 40, &events[1].0),
        ("FAILED", 1, &events[2].0),
    ] {
        let id = tandem::domain::ids::new_id();
        write(
            &app,
            &format!(
                "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, event_type, status, \
                 attempt, next_attempt_at_ms, created_at) \
                 VALUES ({p1}, {p2}, {p3}, 'deal.won', '{status}', 1, {p4}, {p5})"
            ),
            vec![
                id.clone().into(),
                endpoint.clone().into(),
                event.clone().into(),
                (Utc::now() + Duration::days(365)).timestamp_millis().into(),
                days_ago(age).into(),
            ],
        )
        .await;
        delivery_ids.push(id);
    }
    for attempt in 1..=2 {
        write(
            &app,
            &format!(
                "INSERT INTO webhook_delivery_attempts (id, delivery_id, attempt, attempted_at) \
                 VALUES ({p1}, {p2}, {p3}, {p4})"
            ),
            vec![
                tandem::domain::ids::new_id().into(),
                delivery_ids[0].clone().into(),
                attempt.into(),
                days_ago(1).into(),
            ],
        )
        .await;
    }

    // Events: all 40 days old; the fan-out has passed all but the last.
    write(
        &app,
        &format!("UPDATE events SET created_at = {p1}"),
        vec![days_ago(40).into()],
    )
    .await;
    let passed = events[events.len() - 2].1;
    write(
        &app,
        &format!(
            "INSERT INTO event_cursors (name, tx_id, seq, updated_at) \
             SELECT 'webhook-fanout', COALESCE(tx_id, 0), seq, {p1} FROM events WHERE seq = {p2}"
        ),
        vec![Utc::now().into(), passed.into()],
    )
    .await;

    let stats = run_job(&app, "prune", false).await;
    assert_eq!(stats["duplicatesDeleted"], 1, "{stats}");
    assert_eq!(stats["receiptsDeleted"], 3, "{stats}");
    assert_eq!(stats["deliveriesDeleted"], 1, "{stats}");
    assert_eq!(stats["attemptsDeleted"], 0, "{stats}");
    assert_eq!(stats["jobRunsDeleted"], 1, "{stats}");
    assert_eq!(stats["syncRunsDeleted"], 1, "{stats}");
    // Every event up to the cursor, but the one a pending delivery still needs.
    let behind = events.iter().filter(|(_, seq)| *seq <= passed).count() as i64;
    let kept: Vec<String> = column(&app, "SELECT id FROM events ORDER BY seq").await;
    assert_eq!(
        stats["eventsDeleted"],
        behind - 1,
        "{stats} {events:?} kept {kept:?}"
    );

    // What stays.
    let receipts: Vec<i64> = column(&app, "SELECT seq FROM webhook_receipts").await;
    assert_eq!(receipts, vec![waiting]);
    let deliveries: Vec<String> =
        column(&app, "SELECT status FROM webhook_deliveries ORDER BY id").await;
    assert_eq!(deliveries, ["PENDING", "FAILED"]);
    assert_eq!(app.count_rows("webhook_delivery_attempts").await, 0);
    let runs: Vec<String> =
        column(&app, "SELECT id FROM job_runs WHERE name = 'release-holds'").await;
    assert_eq!(runs, vec![latest]);
    let syncs: Vec<String> = column(&app, "SELECT id FROM sync_runs ORDER BY id").await;
    assert_eq!(syncs, sync_ids[1..]);
    let kept_events: Vec<String> = column(&app, "SELECT id FROM events ORDER BY seq").await;
    assert_eq!(kept_events[0], events[1].0, "the pending delivery's event");
    assert_eq!(
        kept_events.last().unwrap(),
        &events.last().unwrap().0,
        "the event after the fan-out's cursor"
    );
    assert_eq!(kept_events.len(), events.len() - (behind as usize - 1));
    assert_eq!(app.count_rows("deals").await, deals);
    assert_eq!(app.count_rows("ledger_entries").await, ledger);

    // Nothing left to prune.
    let again = run_job(&app, "prune", false).await;
    for kind in [
        "receiptsDeleted",
        "duplicatesDeleted",
        "deliveriesDeleted",
        "attemptsDeleted",
        "jobRunsDeleted",
        "syncRunsDeleted",
        "eventsDeleted",
    ] {
        assert_eq!(again[kind], 0, "{kind}: {again}");
    }
}

/// `/metrics` reports every table's rows (and bytes where the database can tell), and each
/// worker's statements.
async fn metrics_report_table_sizes(app: TestApp) {
    let program = app.create_program("Sizes").await;
    app.create_partner(&program, "One").await;
    let source = standard_source(&app, &program).await;
    let now = Utc::now();
    let body = deal_event("deal-1", "OPEN", now, json!({}));
    let resp = post_signed(&app, &source, "msg_1", now.timestamp(), &body).await;
    assert!(resp.status().is_success());
    drain(&app).await;
    run_job(&app, "release-holds", false).await;
    let text = app.metrics().await;
    let gauge = |name: &str, table: &str| -> Option<f64> {
        let prefix = format!("{name}{{table=\"{table}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().unwrap())
    };
    for table in [
        "programs",
        "partners",
        "ledger_entries",
        "webhook_receipts",
        "events",
    ] {
        assert!(
            gauge("tandem_table_rows", table).is_some(),
            "{table}: {text}"
        );
        let bytes = gauge("tandem_table_bytes", table).expect(table);
        assert!(bytes > 0.0, "{table}: {bytes}");
    }
    if !app.db.is_postgres() {
        // Exact counts on SQLite (PostgreSQL's are the statistics' estimates).
        assert_eq!(gauge("tandem_table_rows", "programs"), Some(1.0));
        assert_eq!(gauge("tandem_table_rows", "partners"), Some(1.0));
    }
    assert!(gauge("tandem_table_rows", "seaql_migrations").is_none());
    let statements = |worker: &str| {
        let prefix = format!("tandem_db_worker_statements_total{{worker=\"{worker}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse::<f64>().unwrap())
            .unwrap_or(0.0)
    };
    // The receipt was applied by the inbox worker, the job run by the jobs' handle.
    assert!(statements("inbox") > 0.0, "{text}");
    assert!(statements("jobs") > 0.0, "{text}");
}

db_tests!(mod events_pruned, config = events_pruned; prune_keeps_what_must_stay);
db_tests!(metrics_report_table_sizes);
