//! Property: for random sequences of deal events (won, amount changed, lost, reopened, deleted,
//! re-attributed, time passing) interleaved with random reconciliations (full or incremental),
//! after a last reconciliation every (deal, partner)'s ledger sum equals the commission an
//! independent, naive reading of DESIGN §4 expects from the final state, and one more run
//! writes nothing.
//!
//! Deals go through the real mirror (`apply_deal_change`, `attribute_deal`) and the real
//! reconciler on a real database; the expectation is recomputed here from the event history.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use rust_decimal::{Decimal, RoundingStrategy};
use sea_orm::{ConnectionTrait, Statement};
use tandem::{
    db::Db,
    domain::{
        deals::{AttributeDealInput, DealCache, apply_deal_change, attribute_deal},
        events,
        programs::{CommissionPlanInput, CommissionType, CreateProgramInput, Tier, create_program},
        reconcile::reconcile_with_overlap,
    },
};
use tandem_connectors::{DealStatus, NeutralDeal, inbound::DealChange};

use crate::helpers::{domain_partner, program_input};

const DEALS: usize = 4;
const CLAWBACK_DAYS: i64 = 90;

#[derive(Debug, Clone)]
enum Op {
    Won {
        deal: usize,
        cents: i64,
        back_days: i64,
    },
    Amount {
        deal: usize,
        cents: i64,
    },
    Lost {
        deal: usize,
    },
    Reopen {
        deal: usize,
    },
    Delete {
        deal: usize,
    },
    Reattribute {
        deal: usize,
        to: usize,
    },
    Advance {
        days: i64,
    },
    Reconcile {
        full: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let deal = 0..DEALS;
    prop_oneof![
        4 => (deal.clone(), 1_000i64..600_000, 0i64..40)
            .prop_map(|(deal, cents, back_days)| Op::Won { deal, cents, back_days }),
        2 => (deal.clone(), 1_000i64..600_000).prop_map(|(deal, cents)| Op::Amount { deal, cents }),
        2 => deal.clone().prop_map(|deal| Op::Lost { deal }),
        1 => deal.clone().prop_map(|deal| Op::Reopen { deal }),
        1 => deal.clone().prop_map(|deal| Op::Delete { deal }),
        1 => (deal, 0usize..2).prop_map(|(deal, to)| Op::Reattribute { deal, to }),
        2 => (0i64..200).prop_map(|days| Op::Advance { days }),
        2 => any::<bool>().prop_map(|full| Op::Reconcile { full }),
    ]
}

/// The oracle's view of one deal.
#[derive(Debug, Clone)]
struct Model {
    status: DealStatus,
    deleted: bool,
    cents: i64,
    closed: Option<DateTime<Utc>>,
    updated: DateTime<Utc>,
    /// (cents, closed) kept by a lock.
    locked: Option<(i64, DateTime<Utc>)>,
    partner: usize,
}

impl Model {
    fn effective(&self) -> DealStatus {
        if self.deleted {
            DealStatus::Lost
        } else {
            self.status
        }
    }

    /// Applies a change to `status` at `at` per the clawback rule.
    fn leave_or_enter(&mut self, new_status: DealStatus, at: DateTime<Utc>) {
        if new_status == DealStatus::Won {
            self.locked = None;
        } else if self.effective() == DealStatus::Won {
            let closed = self.closed.unwrap_or(self.updated);
            if at > closed + Duration::days(CLAWBACK_DAYS) {
                self.locked = Some((self.cents, closed));
            }
        }
    }
}

fn money(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

/// DESIGN §4, read naively: 10 % below 2,000 of prior revenue, 15 % from 2,000, 20 % from
/// 6,000; capped at 600; deals under 50 earn nothing.
fn expected(models: &[Option<Model>], i: usize) -> i64 {
    let Some(d) = &models[i] else { return 0 };
    let (cents, closed) = if d.effective() == DealStatus::Won {
        (d.cents, d.closed.unwrap_or(d.updated))
    } else if let Some(locked) = d.locked {
        locked
    } else {
        return 0;
    };
    let amount = money(cents);
    if amount < Decimal::from(50) {
        return 0;
    }
    let mut prior = Decimal::ZERO;
    for (j, other) in models.iter().enumerate() {
        let Some(o) = other else { continue };
        if j == i || o.partner != d.partner || o.effective() != DealStatus::Won {
            continue;
        }
        let oc = o.closed.unwrap_or(o.updated);
        if oc < closed && oc >= closed - Duration::days(365) {
            prior += money(o.cents);
        }
    }
    let rate = if prior >= Decimal::from(6000) {
        20
    } else if prior >= Decimal::from(2000) {
        15
    } else {
        10
    };
    let commission = (amount * Decimal::from(rate) / Decimal::from(100)).min(Decimal::from(600));
    let rounded = commission.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    (rounded * Decimal::from(100)).trunc().try_into().unwrap()
}

struct Fixture {
    db: Db,
}

async fn setup(db: &Db) -> (tandem::db::entities::program::Model, Vec<(String, String)>) {
    let plan = CommissionPlanInput {
        commission_type: CommissionType::Percent,
        rate: Some(Decimal::from(10)),
        flat_amount: None,
        tiers: Some(vec![
            Tier {
                min_revenue: Decimal::ZERO,
                rate: Decimal::from(10),
            },
            Tier {
                min_revenue: Decimal::from(2000),
                rate: Decimal::from(15),
            },
            Tier {
                min_revenue: Decimal::from(6000),
                rate: Decimal::from(20),
            },
        ]),
        cap_per_deal: Some(Decimal::from(600)),
        min_deal_amount: Some(Decimal::from(50)),
        recurring: None,
    };
    let program = create_program(
        db,
        CreateProgramInput {
            clawback_days: Some(CLAWBACK_DAYS as i32),
            ..program_input("Props", plan)
        },
    )
    .await
    .unwrap();
    let mut partners = Vec::new();
    for name in ["Alice", "Bob"] {
        partners.push(domain_partner(db, &program.id, name).await);
    }
    (program, partners)
}

async fn apply(
    db: &Db,
    program: &tandem::db::entities::program::Model,
    source: &str,
    change: DealChange,
) -> Option<String> {
    let tx = db.begin_write().await.unwrap();
    let mut cache = DealCache::default();
    let mut buffered = Vec::new();
    let (result, _) = apply_deal_change(&*tx, &mut cache, program, source, &change, &mut buffered)
        .await
        .unwrap();
    events::record_all(&*tx, buffered).await.unwrap();
    tx.commit().await.unwrap();
    match result {
        tandem::domain::deals::ApplyResult::Applied(id) => Some(id),
        other => panic!("not applied: {other:?}"),
    }
}

async fn ledger_sums(db: &Db, program_id: &str) -> HashMap<(String, String), i64> {
    let sql = format!(
        "SELECT partner_id, deal_id, CAST(SUM(amount_cents) AS BIGINT) AS cents FROM ledger_entries \
         WHERE program_id = {} GROUP BY partner_id, deal_id",
        db.placeholder(1)
    );
    let rows = db
        .reads()
        .query_all_raw(Statement::from_sql_and_values(
            db.backend(),
            sql,
            [program_id.into()],
        ))
        .await
        .unwrap();
    rows.into_iter()
        .map(|r| {
            (
                (
                    r.try_get("", "partner_id").unwrap(),
                    r.try_get("", "deal_id").unwrap(),
                ),
                r.try_get("", "cents").unwrap(),
            )
        })
        .collect()
}

async fn run_case(fixture: &Fixture, ops: Vec<Op>) {
    let db = &fixture.db;
    let (program, partners) = setup(db).await;
    let source = format!("prop-{}", uuid::Uuid::now_v7());
    let mut clock = Utc::now() - Duration::days(3650);
    let mut models: Vec<Option<Model>> = vec![None; DEALS];
    let mut ids: Vec<Option<String>> = vec![None; DEALS];
    let mut watermark: Option<DateTime<Utc>> = None;
    for op in ops {
        clock += Duration::minutes(1);
        let upsert = |deal: usize, m: &Model| {
            DealChange::Upsert(NeutralDeal {
                external_id: format!("D{deal}"),
                name: format!("Deal {deal}"),
                amount: money(m.cents),
                currency: "USD".into(),
                status: m.status,
                stage: None,
                closed_at: m.closed,
                created_at: clock - Duration::days(3000),
                updated_at: m.updated,
                company_domain: None,
                company_id: None,
                contact_emails: vec![],
                referral_code: Some(partners[deal % 2].1.clone()),
                deleted: false,
            })
        };
        match op {
            Op::Won {
                deal,
                cents,
                back_days,
            } => {
                let mut m = models[deal].clone().unwrap_or(Model {
                    status: DealStatus::Open,
                    deleted: false,
                    cents,
                    closed: None,
                    updated: clock,
                    locked: None,
                    partner: deal % 2,
                });
                m.leave_or_enter(DealStatus::Won, clock);
                m.status = DealStatus::Won;
                m.deleted = false;
                m.cents = cents;
                m.closed = Some(clock - Duration::days(back_days));
                m.updated = clock;
                ids[deal] = apply(db, &program, &source, upsert(deal, &m)).await;
                models[deal] = Some(m);
            }
            Op::Amount { deal, cents } => {
                let Some(mut m) = models[deal].clone() else {
                    continue;
                };
                m.leave_or_enter(m.status, clock);
                m.deleted = false;
                m.cents = cents;
                m.updated = clock;
                apply(db, &program, &source, upsert(deal, &m)).await;
                models[deal] = Some(m);
            }
            Op::Lost { deal } | Op::Reopen { deal } => {
                let Some(mut m) = models[deal].clone() else {
                    continue;
                };
                let (status, closed) = if matches!(op, Op::Lost { .. }) {
                    (DealStatus::Lost, Some(clock))
                } else {
                    (DealStatus::Open, None)
                };
                m.leave_or_enter(status, clock);
                m.status = status;
                m.deleted = false;
                m.closed = closed;
                m.updated = clock;
                apply(db, &program, &source, upsert(deal, &m)).await;
                models[deal] = Some(m);
            }
            Op::Delete { deal } => {
                let Some(mut m) = models[deal].clone() else {
                    continue;
                };
                m.leave_or_enter(DealStatus::Lost, clock);
                m.deleted = true;
                m.updated = clock;
                apply(
                    db,
                    &program,
                    &source,
                    DealChange::Delete {
                        external_id: format!("D{deal}"),
                        updated_at: clock,
                    },
                )
                .await;
                models[deal] = Some(m);
            }
            Op::Reattribute { deal, to } => {
                let (Some(m), Some(id)) = (models[deal].as_mut(), &ids[deal]) else {
                    continue;
                };
                attribute_deal(
                    db,
                    AttributeDealInput {
                        deal_id: async_graphql::ID(id.clone()),
                        partner_id: async_graphql::ID(partners[to].0.clone()),
                    },
                )
                .await
                .unwrap();
                m.partner = to;
            }
            Op::Advance { days } => clock += Duration::days(days),
            Op::Reconcile { full } => {
                let since = if full { None } else { watermark };
                let stats = reconcile_with_overlap(db, since, Duration::zero())
                    .await
                    .unwrap();
                watermark = stats.watermark;
            }
        }
    }
    let stats = reconcile_with_overlap(db, watermark, Duration::zero())
        .await
        .unwrap();
    let sums = ledger_sums(db, &program.id).await;
    for (deal, id) in ids.iter().enumerate() {
        let Some(id) = id else { continue };
        for (p, (partner_id, _)) in partners.iter().enumerate() {
            let want = if models[deal].as_ref().unwrap().partner == p {
                expected(&models, deal)
            } else {
                0
            };
            let have = sums
                .get(&(partner_id.clone(), id.clone()))
                .copied()
                .unwrap_or(0);
            assert_eq!(have, want, "deal D{deal}, partner {p}: {models:?}");
        }
    }
    let again = reconcile_with_overlap(db, stats.watermark, Duration::zero())
        .await
        .unwrap();
    assert_eq!(
        again.entries_written, 0,
        "an incremental run after that writes nothing"
    );
    let full = reconcile_with_overlap(db, None, Duration::zero())
        .await
        .unwrap();
    assert_eq!(
        full.entries_written, 0,
        "a full run after that writes nothing"
    );
}

fn check(url: &str, cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(async {
        let db = Db::connect(url, 4).await.unwrap();
        db.migrate().await.unwrap();
        db
    });
    let fixture = Fixture { db };
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..28))| {
        runtime.block_on(run_case(&fixture, ops));
    });
}

#[test]
fn ledger_ends_equal_to_expected_commissions_sqlite() {
    let path = std::env::temp_dir().join(format!("tandem-props-{}.db", uuid::Uuid::new_v4()));
    check(&format!("sqlite://{}", path.display()), 64);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[test]
fn ledger_ends_equal_to_expected_commissions_postgres() {
    let database = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::helpers::fresh_postgres_database());
    let Some(database) = database else {
        eprintln!("skipped on PostgreSQL: TANDEM_TEST_POSTGRES_URL is not set");
        return;
    };
    check(&database.url, 24);
    drop(database);
}
