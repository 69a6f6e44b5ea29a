//! `tandem bench-sla`: the cost of the registration sweeps (DESIGN §12), run by bench/sla.sh.
//!
//! Seeds one program with `--settled` referrals whose SLA is decided (accepted, protected for
//! 90 more days), `--pending` whose SLA falls due tomorrow and `--due` whose SLA fell due a
//! minute ago, then measures:
//! - the idle sweeps: `lead-sla` and `expire-registrations` with nothing due (what every
//!   minute's and every hour's run costs on a settled database), median of 20;
//! - the breach sweep: `--instances` sweepers, each with its own connection pool as separate
//!   processes would have, breaching the due referrals at once; every referral must end with
//!   exactly one `referral.sla_breached` event.
//!
//! Prints one JSON line.

use std::time::Instant;

use chrono::{Duration as Span, Utc};
use sea_orm::{ActiveValue::Set, EntityTrait};
use serde_json::{Value, json};
use tandem::{
    db::{
        Db,
        entities::{program, referral},
        states::{ReferralStatus, SlaState},
    },
    domain::{ids::new_id, registration},
};

use super::{
    peak_rss_mib,
    reconcile::{count, insert_partners, insert_program, program_row},
};

/// `tandem bench-sla`.
#[derive(Debug, clap::Args)]
pub struct BenchSlaArgs {
    /// Referrals whose SLA is already met.
    #[arg(long, default_value_t = 1_000_000)]
    pub settled: u32,
    /// Referrals whose SLA falls due tomorrow.
    #[arg(long, default_value_t = 100_000)]
    pub pending: u32,
    /// Referrals whose SLA fell due a minute ago.
    #[arg(long, default_value_t = 10_000)]
    pub due: u32,
    /// Concurrent sweepers (instances).
    #[arg(long, default_value_t = 2)]
    pub instances: u32,
}

const PARTNERS: usize = 100;
const CHUNK: u32 = 1_000;

async fn seed(db: &Db, args: &BenchSlaArgs) -> anyhow::Result<(chrono::DateTime<Utc>, f64)> {
    let started = Instant::now();
    let now = Utc::now();
    let program_id = insert_program(
        db,
        program::ActiveModel {
            lead_sla_minutes: Set(Some(60)),
            ..program_row(
                "SLA benchmark",
                tandem::db::states::ProgramKind::Channel,
                "10",
                now,
            )
        },
    )
    .await?;
    let partners: Vec<(String, String)> = (0..PARTNERS)
        .map(|_| (new_id(), program_id.clone()))
        .collect();
    insert_partners(db, &partners, now).await?;
    let total = args.settled + args.pending + args.due;
    let mut next = 0;
    while next < total {
        let end = (next + CHUNK).min(total);
        let rows: Vec<referral::ActiveModel> = (next..end)
            .map(|i| {
                let (state, due, engaged) = if i < args.settled {
                    (
                        SlaState::Met,
                        now - Span::days(2),
                        Some(now - Span::days(3)),
                    )
                } else if i < args.settled + args.pending {
                    (SlaState::Pending, now + Span::days(1), None)
                } else {
                    (SlaState::Pending, now - Span::minutes(1), None)
                };
                let accepted = due - Span::minutes(60);
                referral::ActiveModel {
                    id: Set(new_id()),
                    program_id: Set(program_id.clone()),
                    partner_id: Set(partners[i as usize % PARTNERS].0.clone()),
                    company_name: Set(format!("Lead {i}")),
                    company_domain: Set(Some(format!("lead{i}.example"))),
                    status: Set(ReferralStatus::Accepted),
                    submitted_at: Set(accepted),
                    updated_at: Set(accepted),
                    accepted_at: Set(Some(accepted)),
                    protected_until: Set(Some(now + Span::days(90))),
                    engaged_at: Set(engaged),
                    sla_due_at: Set(Some(due)),
                    sla_state: Set(Some(state)),
                    ..Default::default()
                }
            })
            .collect();
        let tx = db.begin_write().await?;
        referral::Entity::insert_many(rows).exec(&*tx).await?;
        tx.commit().await?;
        next = end;
    }
    if db.is_postgres() {
        // What autovacuum would gather after a bulk load.
        db.execute_unprepared("ANALYZE").await?;
    }
    Ok((now, started.elapsed().as_secs_f64()))
}

/// Median milliseconds of 20 runs of `sweep`, which must find nothing.
async fn idle_ms<F, Fut>(sweep: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<u64, sea_orm::DbErr>>,
{
    let mut times = Vec::with_capacity(20);
    for _ in 0..20 {
        let started = Instant::now();
        let flipped = sweep().await?;
        anyhow::ensure!(flipped == 0, "an idle sweep changed {flipped} rows");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[9] + times[10]) / 2.0)
}

/// Runs the benchmark and returns its JSON line.
pub async fn run(db: &Db, database_url: &str, args: &BenchSlaArgs) -> anyhow::Result<Value> {
    let (seeded_at, seed_secs) = seed(db, args).await?;
    // Before the earliest due time (a minute before the seeding): nothing is due.
    let before_due = seeded_at - Span::minutes(2);
    let sla_idle = idle_ms(|| registration::breach_due_slas(db, before_due)).await?;
    let expiry_idle = idle_ms(|| registration::expire_registrations(db, Utc::now())).await?;
    let mut sweepers = Vec::new();
    for _ in 0..args.instances {
        sweepers.push(Db::connect(database_url, 4).await?);
    }
    let started = Instant::now();
    let now = Utc::now();
    let runs = sweepers
        .into_iter()
        .map(|db| tokio::spawn(async move { registration::breach_due_slas(&db, now).await }));
    let mut per_instance = Vec::new();
    for run in runs.collect::<Vec<_>>() {
        per_instance.push(run.await??);
    }
    let breach_secs = started.elapsed().as_secs_f64();
    let breached: u64 = per_instance.iter().sum();
    let events = count(
        db,
        "SELECT COUNT(*) AS n FROM events WHERE type = 'referral.sla_breached'",
    )
    .await?;
    let extract = if db.is_postgres() {
        "data->>'referralId'"
    } else {
        "json_extract(data, '$.referralId')"
    };
    let distinct = count(
        db,
        &format!(
            "SELECT COUNT(DISTINCT {extract}) AS n FROM events \
             WHERE type = 'referral.sla_breached'"
        ),
    )
    .await?;
    anyhow::ensure!(
        breached == u64::from(args.due) && events == i64::from(args.due) && distinct == events,
        "expected {} breaches with one event each; flipped {breached}, {events} events, \
         {distinct} referrals",
        args.due
    );
    Ok(json!({
        "backend": if db.is_postgres() { "postgres" } else { "sqlite" },
        "settled": args.settled,
        "pending": args.pending,
        "due": args.due,
        "instances": args.instances,
        "seedSeconds": seed_secs,
        "leadSlaIdleSweepMs": sla_idle,
        "expiryIdleSweepMs": expiry_idle,
        "breachSweepSeconds": breach_secs,
        "breachesPerSecond": f64::from(args.due) / breach_secs,
        "breachedPerInstance": per_instance,
        "events": events,
        "peakRssMib": peak_rss_mib(),
    }))
}
