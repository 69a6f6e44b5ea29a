//! Kept KPI answers (`db::Memo`, `domain::kpis::KpiCache`): an answer is given again only while
//! the database is unchanged (whoever wrote: this hub, another connection, another process) and
//! the clock has not reached the moment it stops being true.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use chrono::{Duration, Utc};
use sea_orm::ActiveValue::Set;
use serde_json::json;
use tandem::db::{Db, Memo, states::SlaState};

use crate::{db_tests, helpers::TestApp, registration::age};

db_tests!(
    an_answer_is_kept_until_anything_commits,
    kpis_follow_every_write_and_the_clock,
    answers_are_counted_in_the_metrics
);

/// Asks `memo` for key 1 with a computation that counts its calls and answers `until`.
async fn ask(
    memo: &Memo<u8, usize>,
    db: &Db,
    calls: &Arc<AtomicUsize>,
    until: Option<chrono::DateTime<Utc>>,
) -> usize {
    let calls = calls.clone();
    memo.get_or_compute::<sea_orm::DbErr, _>(db, 1, || async move {
        Ok((calls.fetch_add(1, Ordering::SeqCst) + 1, until))
    })
    .await
    .unwrap()
}

/// Asks until two answers in a row are the same one (kept): at once on SQLite; on PostgreSQL
/// the token is the cluster's snapshot, which the other tests' databases move too, so a few
/// tries may be needed. Returns the kept answer.
async fn kept(memo: &Memo<u8, usize>, db: &Db, calls: &Arc<AtomicUsize>) -> usize {
    for _ in 0..200 {
        let first = ask(memo, db, calls, None).await;
        if ask(memo, db, calls, None).await == first {
            return first;
        }
    }
    panic!("the answer was never kept");
}

async fn an_answer_is_kept_until_anything_commits(app: TestApp) {
    let memo = Memo::<u8, usize>::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let db = &app.db;
    assert!(db.data_version().await.unwrap().is_some());

    let first = kept(&memo, db, &calls).await;
    if !db.is_postgres() {
        assert_eq!(first, 1, "kept from the first answer on");
        // Reads change nothing.
        app.count_rows("programs").await;
        assert_eq!(ask(&memo, db, &calls, None).await, 1);
    }

    // A write of this hub (through the API): computed again.
    let before = kept(&memo, db, &calls).await;
    app.create_program("Memo").await;
    let after = kept(&memo, db, &calls).await;
    assert!(after > before, "{after} after {before}");

    // A write on another connection, as another process would make.
    let other = Db::connect(&app.database_url, 1).await.unwrap();
    other
        .execute_write("UPDATE programs SET name = 'Memo 2'".into(), vec![])
        .await
        .unwrap();
    assert!(kept(&memo, db, &calls).await > after);

    // An answer whose moment has come is computed again.
    let timed = Memo::<u8, usize>::default();
    let soon = Some(Utc::now() + Duration::milliseconds(300));
    let at_first = ask(&timed, db, &calls, soon).await;
    if !db.is_postgres() {
        assert_eq!(
            ask(&timed, db, &calls, soon).await,
            at_first,
            "kept until its moment"
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    assert!(ask(&timed, db, &calls, None).await > at_first);

    // A write while the answer is computed: the answer is not kept.
    let fresh = Memo::<u8, usize>::default();
    let writes = other.clone();
    let during = fresh
        .get_or_compute::<sea_orm::DbErr, _>(db, 1, || async move {
            writes
                .execute_write("UPDATE programs SET name = 'Memo 3'".into(), vec![])
                .await?;
            Ok((7, None))
        })
        .await
        .unwrap();
    assert_eq!(during, 7);
    assert!(
        fresh.is_empty(),
        "an answer computed across a write is not kept"
    );
    other.close().await.unwrap();
}

async fn kpis_follow_every_write_and_the_clock(app: TestApp) {
    let program = app.create_program("Kept KPIs").await;
    let partner = app.create_partner(&program, "Kept partner").await;
    let key = app.partner_key(&partner).await;
    let query = "query($p: ID!) { kpis(programId: $p) { referralsSubmitted slaMetRate \
                 months { month } } }";
    let kpis = |token: String| {
        let app = &app;
        let program = program.clone();
        async move { app.ok(&token, query, json!({"p": program})).await["kpis"].clone() }
    };
    let admin = app.admin.clone();
    assert_eq!(kpis(admin.clone()).await["referralsSubmitted"], 0);
    assert_eq!(kpis(key.clone()).await["referralsSubmitted"], 0);

    // Each write shows at once, to the manager and to the partner.
    let first = app
        .submit_referral(
            &key,
            json!({"companyName": "Kept one", "companyDomain": "kept-one.example"}),
        )
        .await;
    assert_eq!(kpis(admin.clone()).await["referralsSubmitted"], 1);
    assert_eq!(kpis(key.clone()).await["referralsSubmitted"], 1);
    app.submit_referral(
        &key,
        json!({"companyName": "Kept two", "companyDomain": "kept-two.example"}),
    )
    .await;
    assert_eq!(kpis(admin.clone()).await["referralsSubmitted"], 2);

    // A lead SLA that falls due with no write at all: breached from its due time on (the KPI
    // counts a pending clock past its due time as breached before the sweep records it).
    let id = first["id"].as_str().unwrap().to_string();
    let due = Utc::now() + Duration::seconds(2);
    age(&app, &id, |m| {
        m.sla_state = Set(Some(SlaState::Pending));
        m.sla_due_at = Set(Some(due));
    })
    .await;
    let before = kpis(admin.clone()).await;
    assert_eq!(before["slaMetRate"], serde_json::Value::Null, "{before}");
    assert_eq!(kpis(admin.clone()).await, before, "unchanged, asked again");
    while Utc::now() <= due {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let after = kpis(admin.clone()).await;
    assert_eq!(after["slaMetRate"], 0.0, "{after}");
    assert_eq!(after["referralsSubmitted"], 2);
}

/// `tandem_kpi_answers_total{query, answer}` of `/metrics`.
async fn answers(app: &TestApp, query: &str, answer: &str) -> u64 {
    let text = app.metrics().await;
    let line = format!("tandem_kpi_answers_total{{answer=\"{answer}\",query=\"{query}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// Every `kpis` and `Kpis.months` answer is counted as kept or computed on `/metrics`.
async fn answers_are_counted_in_the_metrics(app: TestApp) {
    let program = app.create_program("Counted KPIs").await;
    let ask = || {
        app.ok(
            &app.admin,
            "query($p: ID!) { kpis(programId: $p) { referralsSubmitted months { month } } }",
            json!({"p": program}),
        )
    };
    ask().await;
    assert!(answers(&app, "kpis", "computed").await >= 1);
    assert!(answers(&app, "months", "computed").await >= 1);
    // Asked again on unchanged data: kept (on PostgreSQL the other tests' databases move the
    // cluster's snapshot, so a few tries may be needed).
    for _ in 0..200 {
        ask().await;
        if answers(&app, "kpis", "kept").await >= 1 && answers(&app, "months", "kept").await >= 1 {
            return;
        }
    }
    panic!("no answer was ever counted as kept");
}
