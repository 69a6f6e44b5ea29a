//! A reconcile over more partners than one chunk (250): on PostgreSQL two chunks are written at
//! once. Two full runs started together book each deal once, with its event; a later change
//! of half the deals is corrected by an incremental run, and the next run writes nothing.

use chrono::{Duration, Utc};
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, Statement};
use tandem::{
    db::Db,
    domain::{
        deals::{ApplyResult, DealCache, apply_deal_change},
        events,
        programs::{CommissionPlanInput, CommissionType, create_program},
        reconcile::{ReconcileStats, reconcile, reconcile_with_overlap},
    },
};
use tandem_connectors::{DealStatus, NeutralDeal, inbound::DealChange};

use crate::{
    db_tests,
    helpers::{TestApp, count, domain_partner, program_input},
};

const PARTNERS: usize = 600;

/// Deal `i` of partner `i`, WON for `amount` dollars.
fn won(i: usize, code: &str, amount: i64) -> DealChange {
    let now = Utc::now();
    DealChange::Upsert(NeutralDeal {
        external_id: format!("D{i}"),
        name: format!("Deal {i}"),
        amount: Decimal::from(amount),
        currency: "USD".into(),
        status: DealStatus::Won,
        stage: None,
        closed_at: Some(now - Duration::days(1)),
        created_at: now - Duration::days(30),
        updated_at: now,
        company_domain: None,
        company_id: None,
        contact_emails: vec![],
        referral_code: Some(code.to_string()),
        deleted: false,
    })
}

/// Applies the deals in one transaction.
async fn apply_all(
    db: &Db,
    program: &tandem::db::entities::program::Model,
    changes: Vec<DealChange>,
) {
    let tx = db.begin_write().await.unwrap();
    let mut cache = DealCache::default();
    let mut buffered = Vec::new();
    for change in &changes {
        let (result, _) =
            apply_deal_change(&*tx, &mut cache, program, "chunks", change, &mut buffered)
                .await
                .unwrap();
        assert!(matches!(result, ApplyResult::Applied(_)), "{result:?}");
    }
    events::record_all(&*tx, buffered).await.unwrap();
    tx.commit().await.unwrap();
}

/// Each partner's ledger sum in cents, in partner order (Partner 0, 1, …).
async fn sums(db: &Db) -> Vec<i64> {
    let rows = db
        .reads()
        .query_all_raw(Statement::from_string(
            db.backend(),
            "SELECT p.name, COALESCE(CAST(SUM(e.amount_cents) AS BIGINT), 0) AS cents \
             FROM partners p LEFT JOIN ledger_entries e ON e.partner_id = p.id GROUP BY p.name",
        ))
        .await
        .unwrap();
    let mut out = vec![None; PARTNERS];
    for row in rows {
        let name: String = row.try_get("", "name").unwrap();
        let i: usize = name.trim_start_matches("Partner ").parse().unwrap();
        out[i] = Some(row.try_get::<i64>("", "cents").unwrap());
    }
    out.into_iter().map(|c| c.expect("every partner")).collect()
}

fn total(runs: &[&ReconcileStats]) -> (u64, u64) {
    runs.iter()
        .fold((0, 0), |(w, c), s| (w + s.entries_written, c + s.conflicts))
}

async fn many_chunks_are_written_once(app: TestApp) {
    let db = &app.db;
    let plan = CommissionPlanInput {
        commission_type: CommissionType::Percent,
        rate: Some(Decimal::from(10)),
        flat_amount: None,
        tiers: None,
        cap_per_deal: None,
        min_deal_amount: None,
        recurring: None,
    };
    let program = create_program(db, program_input("Chunks", plan))
        .await
        .unwrap();
    let mut codes = Vec::with_capacity(PARTNERS);
    for i in 0..PARTNERS {
        codes.push(
            domain_partner(db, &program.id, &format!("Partner {i}"))
                .await
                .1,
        );
    }
    // Deal i: 100 + i dollars, 10 % of it expected.
    let deals = |amount: &dyn Fn(usize) -> i64, which: &dyn Fn(usize) -> bool| {
        (0..PARTNERS)
            .filter(|i| which(*i))
            .map(|i| won(i, &codes[i], amount(i)))
            .collect::<Vec<_>>()
    };
    apply_all(db, &program, deals(&|i| 100 + i as i64, &|_| true)).await;

    // Two full runs at once: each deal is booked by one of them.
    let (first, second) = tokio::join!(reconcile(db, None), reconcile(db, None));
    let (first, second) = (first.unwrap(), second.unwrap());
    let (written, conflicts) = total(&[&first, &second]);
    assert_eq!(written, PARTNERS as u64, "{first:?} {second:?}");
    assert!(conflicts <= PARTNERS as u64);
    assert_eq!(
        count(db, "SELECT COUNT(*) AS n FROM ledger_entries").await,
        PARTNERS as i64
    );
    assert_eq!(
        count(
            db,
            "SELECT COUNT(*) AS n FROM events WHERE type = 'commission.accrued'"
        )
        .await,
        PARTNERS as i64
    );
    assert_eq!(
        count(db, "SELECT COUNT(*) AS n FROM deal_commissions").await,
        PARTNERS as i64
    );
    let expected: Vec<i64> = (0..PARTNERS as i64).map(|i| (100 + i) * 10).collect();
    assert_eq!(sums(db).await, expected);

    // Half the deals grow by 50 dollars: an incremental run appends the 5-dollar differences.
    apply_all(db, &program, deals(&|i| 150 + i as i64, &|i| i % 2 == 0)).await;
    let since = Utc::now() - Duration::minutes(5);
    let changed = reconcile_with_overlap(db, Some(since), Duration::zero())
        .await
        .unwrap();
    assert_eq!(
        changed.entries_written,
        (PARTNERS / 2) as u64,
        "{changed:?}"
    );
    let expected: Vec<i64> = (0..PARTNERS as i64)
        .map(|i| (100 + i) * 10 + if i % 2 == 0 { 500 } else { 0 })
        .collect();
    assert_eq!(sums(db).await, expected);

    // Nothing left to do, full or incremental.
    assert_eq!(reconcile(db, None).await.unwrap().entries_written, 0);
    assert_eq!(reconcile(db, Some(since)).await.unwrap().entries_written, 0);
}

db_tests!(many_chunks_are_written_once);
