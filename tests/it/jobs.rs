//! Jobs under the database lease: each due tick runs once across instances, a crashed
//! holder's lease expires, the cron scheduler fires, and two reconcilers running at the same
//! time never write an entry twice.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::json;
use tandem::{
    config::Config,
    db::Db,
    domain::reconcile::reconcile,
    jobs::{JobName, Jobs, TickOutcome, start_scheduler},
};

use crate::{
    commissions::{partner, program_with},
    db_tests,
    helpers::{TestApp, count},
    webhooks::{drain, post_signed, standard_source},
};

async fn instance(app: &TestApp) -> Jobs {
    let db = Db::connect(&app.database_url, 4).await.unwrap();
    Jobs::new(db, Duration::from_secs(30))
}

async fn each_due_tick_runs_once_across_instances(app: TestApp) {
    let a = instance(&app).await;
    let b = instance(&app).await;
    let tick = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
    let next = tick + chrono::Duration::minutes(10);
    let (ra, rb) = tokio::join!(
        a.run_tick(JobName::ReleaseHolds, tick, next),
        b.run_tick(JobName::ReleaseHolds, tick, next)
    );
    let ran = [ra.unwrap(), rb.unwrap()]
        .iter()
        .filter(|o| matches!(o, TickOutcome::Ran(_)))
        .count();
    assert_eq!(ran, 1, "one instance runs the tick, the other skips it");
    // The same tick fired late on another instance: skipped.
    assert!(matches!(
        b.run_tick(JobName::ReleaseHolds, tick, next).await.unwrap(),
        TickOutcome::Skipped
    ));
    // The next tick runs.
    let after = next + chrono::Duration::minutes(10);
    assert!(matches!(
        b.run_tick(JobName::ReleaseHolds, next, after)
            .await
            .unwrap(),
        TickOutcome::Ran(_)
    ));
    // Another job's ticks are independent.
    assert!(matches!(
        a.run_tick(JobName::Reconcile, tick, next).await.unwrap(),
        TickOutcome::Ran(_)
    ));
    assert_eq!(app.count_rows("job_runs").await, 3);
    // A manual run does not consume a tick.
    a.run_now(JobName::ReleaseHolds, false, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(
        a.run_tick(
            JobName::ReleaseHolds,
            after,
            after + chrono::Duration::minutes(10)
        )
        .await
        .unwrap(),
        TickOutcome::Ran(_)
    ));
}

async fn a_crashed_holders_lease_expires(app: TestApp) {
    let jobs = instance(&app).await;
    let p = |n| app.db.placeholder(n);
    let exec = |sql: String, values: Vec<sea_orm::Value>| {
        let db = app.db.clone();
        async move {
            db.execute_write(sql, values).await.unwrap();
        }
    };
    // An instance took the reconcile lease, started a run, and died.
    let dead_run = uuid::Uuid::now_v7().to_string();
    exec(
        format!(
            "INSERT INTO job_runs (id, name, status, started_at) VALUES ({}, 'reconcile', 'RUNNING', {})",
            p(1),
            p(2)
        ),
        vec![dead_run.clone().into(), Utc::now().into()],
    )
    .await;
    let expires = Utc::now().timestamp_millis() + 60_000;
    exec(
        format!(
            "INSERT INTO job_leases (name, holder, run_id, expires_at_ms, due_at_ms) VALUES ('reconcile', 'dead', {}, {}, 0)",
            p(1),
            p(2)
        ),
        vec![dead_run.clone().into(), expires.into()],
    )
    .await;
    // While its lease lasts, nobody else runs the job.
    let err = jobs
        .run_now(JobName::Reconcile, false, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("Conflict"), "{err:?}");
    // Once it has expired, the job runs and the dead run is closed as FAILED.
    exec(
        "UPDATE job_leases SET expires_at_ms = 1".to_string(),
        Vec::new(),
    )
    .await;
    let run = jobs
        .run_now(JobName::Reconcile, false, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(run.status, tandem::db::states::JobRunStatus::Succeeded);
    let data = app
        .admin_ok(
            "{ jobRuns(filter: {name: \"reconcile\"}) { edges { node { id status error finishedAt } } } }",
            json!({}),
        )
        .await;
    let runs = crate::helpers::nodes(&data["jobRuns"]);
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1]["id"], dead_run.as_str());
    assert_eq!(runs[1]["status"], "FAILED");
    assert!(runs[1]["error"].as_str().unwrap().contains("lease expired"));
    assert!(!runs[1]["finishedAt"].is_null());
}

async fn the_scheduler_fires_each_tick_once(app: TestApp) {
    // Two instances scheduling release-holds every second for about four seconds.
    let config = Config {
        database_url: app.database_url.clone(),
        reconcile_schedule: "0 0 0 1 1 *".to_string(),
        release_holds_schedule: "* * * * * *".to_string(),
        ..Config::default()
    };
    let started = std::time::Instant::now();
    let mut one = start_scheduler(instance(&app).await, &config)
        .await
        .unwrap();
    let mut two = start_scheduler(instance(&app).await, &config)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(4200)).await;
    one.shutdown().await.unwrap();
    two.shutdown().await.unwrap();
    let elapsed = started.elapsed().as_secs() as i64;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = count(
        &app.db,
        "SELECT COUNT(*) AS n FROM job_runs WHERE name = 'release-holds'",
    )
    .await;
    assert!(
        (2..=elapsed + 1).contains(&runs),
        "{runs} runs in {elapsed} s: each tick once"
    );
}

async fn two_reconcilers_never_write_an_entry_twice(app: TestApp) {
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "10"}), json!({})).await;
    let mut codes = Vec::new();
    for name in ["Alice", "Bob", "Carol"] {
        codes.push(partner(&app, &program, name).await);
    }
    let source = standard_source(&app, &program).await;
    let now = Utc::now();
    let deals = 120;
    for i in 0..deals {
        let body = json!({"type": "deal.updated", "data": {
            "id": format!("D{i}"), "name": "Deal", "amount": format!("{}.00", 100 + i),
            "currency": "USD", "status": "won", "closedAt": now.to_rfc3339(),
            "createdAt": now.to_rfc3339(), "updatedAt": now.to_rfc3339(),
            "referralCode": codes[i % 3].code}})
        .to_string();
        let resp = post_signed(&app, &source, &format!("m{i}"), now.timestamp(), &body).await;
        assert_eq!(resp.status(), 200);
    }
    drain(&app).await;
    // Two instances reconcile at the same time, three times over.
    let one = Db::connect(&app.database_url, 4).await.unwrap();
    let two = Db::connect(&app.database_url, 4).await.unwrap();
    let mut written = 0;
    for _ in 0..3 {
        let (a, b) = tokio::join!(reconcile(&one, None), reconcile(&two, None));
        written += a.unwrap().entries_written + b.unwrap().entries_written;
    }
    assert_eq!(written, deals as u64, "each deal's accrual is written once");
    assert_eq!(app.count_rows("ledger_entries").await, deals as i64);
    assert_eq!(
        count(
            &app.db,
            "SELECT COUNT(*) AS n FROM (SELECT deal_id FROM ledger_entries GROUP BY deal_id HAVING COUNT(*) > 1) t"
        )
        .await,
        0
    );
    // 10 % of 100 + … + 219: 10 % of 19,140 = 1,914.00.
    assert_eq!(
        count(
            &app.db,
            "SELECT CAST(SUM(amount_cents) AS BIGINT) AS n FROM ledger_entries"
        )
        .await,
        191_400
    );
    assert_eq!(
        count(
            &app.db,
            "SELECT COUNT(*) AS n FROM events WHERE type = 'commission.accrued'"
        )
        .await,
        deals as i64
    );
}

db_tests!(
    each_due_tick_runs_once_across_instances,
    a_crashed_holders_lease_expires,
    the_scheduler_fires_each_tick_once,
    two_reconcilers_never_write_an_entry_twice,
);
