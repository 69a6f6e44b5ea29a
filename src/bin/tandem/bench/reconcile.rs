//! `tandem bench-reconcile <phase>`: the commission-engine benchmark (bench/reconcile.sh runs
//! the phases, each in its own process so that its peak RSS is its own):
//! - `seed`: N deals across P partners in 5 programs (two tiered, one FLAT, two with cap and
//!   minimum), 60 % won, 20 % lost, 20 % open, 10 % in EUR (one EUR→USD rate), closes spread
//!   over three years; everything back-dated a day so that it is not "recent";
//! - `full`: a full reconciliation through the job system (`runJob(reconcile, full)`);
//! - `touch`: changes 1 % of the deals the way CRM updates would (amount, and a third of the
//!   won ones lost), stamping them as just applied;
//! - `incremental`: an incremental reconciliation (what changed since the full run);
//! - `kpis`: the KPIs of every program.
//!
//! Each phase prints one JSON line: seconds, peak RSS (VmHWM) and the phase's figures.

use std::time::{Duration, Instant};

use chrono::{Duration as Span, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng};
use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait, Statement};
use serde_json::{Value, json};

use tandem::db::insert_all;
use tandem::db::states::DealStatus;
use tandem::{
    db::{
        Db,
        entities::{attribution, deal, exchange_rate, partner, program},
    },
    domain::{
        ids::new_id,
        kpis::{KpiQuery, kpis},
        partners::generate_referral_code,
    },
    jobs::{JobName, Jobs},
};

/// The phases.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Phase {
    /// Load the data set.
    Seed,
    /// Full reconciliation.
    Full,
    /// Change 1 % of the deals.
    Touch,
    /// Incremental reconciliation.
    Incremental,
    /// KPIs of every program.
    Kpis,
}

/// `tandem bench-reconcile`.
#[derive(Debug, clap::Args)]
pub struct BenchReconcileArgs {
    /// Which phase.
    #[arg(value_enum)]
    pub phase: Phase,
    /// Deals to seed.
    #[arg(long, default_value_t = 1_000_000)]
    pub deals: u32,
    /// Partners to seed (spread over 5 programs).
    #[arg(long, default_value_t = 10_000)]
    pub partners: u32,
    /// Percentage of deals `touch` changes.
    #[arg(long, default_value_t = 1.0)]
    pub percent: f64,
}

/// A benchmark program row: USD, PERCENT at `rate`, the default windows, created at `at`;
/// callers override what their benchmark needs (`..program_row(…)`).
pub fn program_row(
    name: &str,
    kind: tandem::db::states::ProgramKind,
    rate: &str,
    at: chrono::DateTime<Utc>,
) -> program::ActiveModel {
    program::ActiveModel {
        id: Set(new_id()),
        name: Set(name.into()),
        kind: Set(kind),
        currency: Set("USD".into()),
        commission_type: Set(tandem::db::states::CommissionType::Percent),
        commission_rate: Set(Some(rate.into())),
        commission_flat_amount: Set(None),
        commission_tiers: Set(json!([])),
        cap_per_deal: Set(None),
        min_deal_amount: Set(None),
        attribution_window_days: Set(90),
        hold_days: Set(30),
        clawback_days: Set(90),
        created_at: Set(at),
        updated_at: Set(at),
        ..Default::default()
    }
}

/// Inserts a program row in its own transaction; returns its id.
pub async fn insert_program(db: &Db, row: program::ActiveModel) -> anyhow::Result<String> {
    let id = match &row.id {
        sea_orm::ActiveValue::Set(id) | sea_orm::ActiveValue::Unchanged(id) => id.clone(),
        sea_orm::ActiveValue::NotSet => anyhow::bail!("a program row without an id"),
    };
    let tx = db.begin_write().await?;
    program::Entity::insert(row).exec(&*tx).await?;
    tx.commit().await?;
    Ok(id)
}

/// The `n` column of a `SELECT COUNT(*) AS n …`.
pub async fn count(db: &Db, sql: &str) -> anyhow::Result<i64> {
    let row = db
        .reads()
        .query_one_raw(Statement::from_string(db.backend(), sql))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no row"))?;
    Ok(row.try_get("", "n")?)
}

/// Runs one phase and returns its JSON line.
pub async fn run(db: &Db, args: &BenchReconcileArgs) -> anyhow::Result<Value> {
    let started = Instant::now();
    let figures = match args.phase {
        Phase::Seed => seed(db, args.deals, args.partners).await?,
        Phase::Full | Phase::Incremental => {
            reconcile_job(db, matches!(args.phase, Phase::Full)).await?
        }
        Phase::Touch => touch(db, args.percent).await?,
        Phase::Kpis => {
            let mut times = Vec::new();
            for p in program::Entity::find().all(db.reads()).await? {
                let t = Instant::now();
                let k = kpis(
                    db,
                    &KpiQuery {
                        program_id: p.id.clone(),
                        partner_id: None,
                        from: None,
                        to: None,
                        leaderboard_size: 10,
                    },
                )
                .await
                .map_err(tandem::error::ApiError::into_anyhow)?;
                times.push(
                    json!({"program": p.name, "ms": t.elapsed().as_secs_f64() * 1000.0,
                    "dealsWon": k.deals_won, "wonRevenue": k.won_revenue.to_string()}),
                );
            }
            json!({ "programs": times })
        }
    };
    Ok(super::phase_line(args.phase, started, figures))
}

/// The benchmarks' one exchange rate: 1 EUR = 1.0845 USD from `effective_at` on.
pub async fn insert_eur_rate(
    db: &Db,
    effective_at: chrono::DateTime<Utc>,
    created_at: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    let tx = db.begin_write().await?;
    exchange_rate::Entity::insert(exchange_rate::ActiveModel {
        id: Set(new_id()),
        base: Set("EUR".into()),
        quote: Set("USD".into()),
        rate: Set("1.0845".into()),
        effective_at: Set(effective_at),
        created_at: Set(created_at),
    })
    .exec(&*tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Runs `reconcile` (full or incremental) through the job system; returns the run's stats.
pub async fn reconcile_job(db: &Db, full: bool) -> anyhow::Result<Value> {
    let jobs = Jobs::new(db.clone(), Duration::from_secs(300));
    let run = jobs
        .run_now(JobName::Reconcile, full, Duration::from_secs(5))
        .await
        .map_err(tandem::error::ApiError::into_anyhow)?;
    anyhow::ensure!(
        run.status == tandem::db::states::JobRunStatus::Succeeded,
        "reconcile failed: {:?}",
        run.error
    );
    Ok(run.stats.unwrap_or(Value::Null))
}

const BATCH: usize = 2_000;

/// Inserts benchmark partners (id, program id), `Partner {i}` with a unique referral code.
pub async fn insert_partners(
    db: &Db,
    rows: &[(String, String)],
    past: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    for (n, chunk) in rows.chunks(BATCH / 4).enumerate() {
        let tx = db.begin_write().await?;
        let rows: Vec<partner::ActiveModel> = chunk
            .iter()
            .enumerate()
            .map(|(k, (id, program_id))| {
                let i = n * (BATCH / 4) + k;
                partner::ActiveModel {
                    id: Set(id.clone()),
                    program_id: Set(program_id.clone()),
                    name: Set(format!("Partner {i}")),
                    domain: Set(None),
                    contact_email: Set(format!("p{i}@partners.example")),
                    status: Set(tandem::db::states::PartnerStatus::Active),
                    referral_code: Set(format!("{}{i}", &generate_referral_code()[..3])),
                    terminated_at: Set(None),
                    created_at: Set(past),
                    updated_at: Set(past),
                }
            })
            .collect();
        partner::Entity::insert_many(rows).exec(&*tx).await?;
        tx.commit().await?;
    }
    Ok(())
}

async fn seed(db: &Db, deals: u32, partners: u32) -> anyhow::Result<Value> {
    anyhow::ensure!(partners >= 5, "--partners must be at least 5");
    let mut rng = StdRng::seed_from_u64(42);
    let now = Utc::now();
    let past = now - Span::days(1);
    let tiers = json!([{"minRevenue": "0", "rate": "8"}, {"minRevenue": "50000", "rate": "12"},
                      {"minRevenue": "250000", "rate": "15"}]);
    let plans = [
        (
            "Tiered resellers",
            "PERCENT",
            Some("8"),
            None,
            tiers.clone(),
            None,
            None,
        ),
        (
            "Tiered agencies",
            "PERCENT",
            Some("10"),
            None,
            tiers,
            Some("5000"),
            None,
        ),
        (
            "Referral network",
            "FLAT",
            None,
            Some("250"),
            json!([]),
            None,
            Some("1000"),
        ),
        (
            "Alliances",
            "PERCENT",
            Some("15"),
            None,
            json!([]),
            Some("2500"),
            Some("500"),
        ),
        (
            "Integrations",
            "PERCENT",
            Some("5"),
            None,
            json!([]),
            None,
            None,
        ),
    ];
    let mut program_ids = Vec::new();
    for (name, kind, rate, flat, tiers, cap, min) in plans {
        let id = insert_program(
            db,
            program::ActiveModel {
                commission_type: Set(
                    tandem::db::states::CommissionType::parse(kind).expect("a plan kind")
                ),
                commission_rate: Set(rate.map(str::to_string)),
                commission_flat_amount: Set(flat.map(str::to_string)),
                commission_tiers: Set(tiers),
                cap_per_deal: Set(cap.map(str::to_string)),
                min_deal_amount: Set(min.map(str::to_string)),
                ..program_row(name, tandem::db::states::ProgramKind::Channel, "0", past)
            },
        )
        .await?;
        program_ids.push(id);
    }
    insert_eur_rate(db, now - Span::days(5 * 365), past).await?;
    let mut partner_rows = Vec::with_capacity(partners as usize);
    for i in 0..partners {
        partner_rows.push((new_id(), program_ids[(i % 5) as usize].clone()));
    }
    insert_partners(db, &partner_rows, past).await?;
    let mut next = 0u32;
    while next < deals {
        let end = (next + BATCH as u32).min(deals);
        let mut deal_rows = Vec::with_capacity(BATCH);
        let mut attribution_rows = Vec::with_capacity(BATCH);
        for i in next..end {
            let (partner_id, program_id) = &partner_rows[(i % partners) as usize];
            let id = new_id();
            let roll: u32 = rng.random_range(0..100);
            let status = match roll {
                0..60 => DealStatus::Won,
                60..80 => DealStatus::Lost,
                _ => DealStatus::Open,
            };
            let created = now - Span::minutes(rng.random_range(0..3 * 365 * 24 * 60));
            let closed =
                (status != DealStatus::Open).then(|| created + Span::days(rng.random_range(0..30)));
            let cents: i64 = rng.random_range(10_000..5_000_000);
            deal_rows.push(deal::ActiveModel {
                id: Set(id.clone()),
                program_id: Set(program_id.clone()),
                source_id: Set("bench".into()),
                external_id: Set(format!("bench-{i}")),
                name: Set(format!("Deal {i}")),
                amount: Set(format!("{}.{:02}", cents / 100, cents % 100)),
                currency: Set(if i % 10 == 0 { "EUR" } else { "USD" }.into()),
                status: Set(status),
                stage: Set(None),
                closed_at: Set(closed),
                created_at: Set(created),
                updated_at: Set(closed.unwrap_or(created)),
                company_domain: Set(None),
                contact_emails: Set(json!([])),
                referral_code: Set(None),
                deleted: Set(false),
                first_seen_at: Set(past),
                last_applied_at: Set(past),
                ..Default::default()
            });
            attribution_rows.push(attribution::ActiveModel {
                deal_id: Set(id),
                partner_id: Set(partner_id.clone()),
                referral_id: Set(None),
                method: Set(tandem::db::states::AttributionMethod::Code),
                created_at: Set(past),
                updated_at: Set(past),
            });
        }
        let tx = db.begin_write().await?;
        insert_all(&*tx, deal_rows, None).await?;
        insert_all(&*tx, attribution_rows, None).await?;
        tx.commit().await?;
        next = end;
    }
    // Planner statistics of the loaded tables, as autovacuum gathers them a minute or so after a
    // bulk load (it is off on this machine; see seed.rs). The tables the reconciler fills are
    // left as a first run finds them: never analysed.
    if db.is_postgres() {
        db.execute_unprepared("ANALYZE programs, partners, exchange_rates, deals, attributions")
            .await?;
    }
    Ok(json!({"deals": deals, "partners": partners, "programs": 5}))
}

async fn touch(db: &Db, percent: f64) -> anyhow::Result<Value> {
    // Between the full run and the changes, a server with autovacuum on (PostgreSQL's default;
    // it is off on this machine) would have vacuumed and analysed the tables the full run
    // filled: without statistics the planner takes a million-row table for an empty one.
    if db.is_postgres() {
        db.execute_unprepared("VACUUM ANALYZE deal_commissions, ledger_entries, events")
            .await?;
    }
    let rows = db
        .reads()
        .query_all_raw(Statement::from_string(
            db.backend(),
            "SELECT id, amount, status FROM deals",
        ))
        .await?;
    let mut rng = StdRng::seed_from_u64(7);
    let now = Utc::now();
    let mut changed = 0u64;
    let mut lost = 0u64;
    let picked: Vec<_> = rows
        .iter()
        .filter(|_| rng.random_bool(percent / 100.0))
        .collect();
    for chunk in picked.chunks(1000) {
        let tx = db.begin_write().await?;
        for row in chunk {
            let id: String = row.try_get("", "id")?;
            let status: String = row.try_get("", "status")?;
            let amount: String = row.try_get("", "amount")?;
            let amount: rust_decimal::Decimal = amount.parse()?;
            let bumped = (amount * rust_decimal::Decimal::new(105, 2)).round_dp(2);
            let lose = status == "WON" && rng.random_range(0..3) == 0;
            let new_status = if lose { "LOST" } else { status.as_str() };
            lost += u64::from(lose);
            tx.execute_raw(Statement::from_sql_and_values(
                db.backend(),
                format!(
                    "UPDATE deals SET amount = {}, status = {}, updated_at = {}, \
                     last_applied_at = {} WHERE id = {}",
                    db.placeholder(1),
                    db.placeholder(2),
                    db.placeholder(3),
                    db.placeholder(4),
                    db.placeholder(5)
                ),
                [
                    bumped.to_string().into(),
                    new_status.into(),
                    now.into(),
                    now.into(),
                    id.into(),
                ],
            ))
            .await?;
            changed += 1;
        }
        tx.commit().await?;
    }
    Ok(json!({"changed": changed, "lost": lost}))
}
