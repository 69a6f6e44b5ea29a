//! `tandem bench-groups`: the cost of `evaluate-groups` (DESIGN §13), run by bench/groups.sh.
//!
//! Seeds one program with `--partners` partners, `--deals` reconciled deals spread evenly over
//! them (the reconciler's rows, which is what the evaluation reads: 60 % WON, closed over the
//! last two years, 500 to 20,000 USD) and two certified people for every other partner, then
//! creates three groups through the domain (Silver, the default; Gold: ≥ 3 won deals and
//! ≥ 50,000 won revenue in 365 days and 2 people certified on `sales-101`; Platinum: ≥ 35 won
//! deals and ≥ 350,000 in 365 days), and measures:
//! - creating the default group (every partner joins it, one event each);
//! - the first evaluation (every qualifying partner promoted, with its event), whose
//!   promotions are checked against the count computed while seeding;
//! - an idle evaluation (nothing changes: what each daily run and each run after a reconcile
//!   costs), median of 5;
//! - a review evaluation after Gold's rules were raised to 30 won deals (the demotions checked
//!   against the seeded data);
//! - `nextGroupProgress` for one partner, median of 50.
//!
//! Prints one JSON line.

use std::time::Instant;

use chrono::{Duration as Span, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rust_decimal::Decimal;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use tandem::db::insert_all;
use tandem::{
    db::{
        Db,
        entities::{certification, deal_commission, partner, program},
        states::{CertificationSource, CommissionState, CommissionType, DealStatus, ProgramKind},
    },
    domain::{
        groups::{self, CreatePartnerGroupInput, GroupRulesInput, UpdatePartnerGroupInput},
        ids::new_id,
        programs::CommissionPlanInput,
    },
};

use super::{
    peak_rss_mib,
    reconcile::{count, insert_partners, insert_program, program_row},
    seed::bench_deal,
};

/// `tandem bench-groups`.
#[derive(Debug, clap::Args)]
pub struct BenchGroupsArgs {
    /// Partners in the program.
    #[arg(long, default_value_t = 10_000)]
    pub partners: u32,
    /// Reconciled deals, spread evenly over the partners.
    #[arg(long, default_value_t = 1_000_000)]
    pub deals: u32,
}

const CHUNK: usize = 1_000;

/// What the seeding expects the first evaluation to do.
struct Expected {
    gold: u64,
    platinum: u64,
    /// Gold partners with fewer than 30 won deals: demoted once Gold asks for 30.
    demoted: u64,
}

fn plan(rate: u32) -> CommissionPlanInput {
    CommissionPlanInput {
        commission_type: CommissionType::Percent,
        rate: Some(Decimal::from(rate)),
        flat_amount: None,
        tiers: None,
        cap_per_deal: None,
        min_deal_amount: None,
        recurring: None,
    }
}

async fn seed(db: &Db, args: &BenchGroupsArgs) -> anyhow::Result<(String, Expected, f64)> {
    let started = Instant::now();
    let now = Utc::now();
    let program_id = insert_program(
        db,
        program_row("Groups benchmark", ProgramKind::Channel, "10", now),
    )
    .await?;
    let partners: Vec<(String, String)> = (0..args.partners)
        .map(|_| (new_id(), program_id.clone()))
        .collect();
    insert_partners(db, &partners, now - Span::days(800)).await?;
    let mut rng = StdRng::seed_from_u64(13);
    // Per partner: (won deals, won cents) in the last 365 days.
    let mut recent = vec![(0u32, 0i64); partners.len()];
    let mut rows = Vec::with_capacity(CHUNK);
    let mut deals = Vec::with_capacity(CHUNK);
    for i in 0..args.deals as usize {
        let p = i % partners.len();
        let won = rng.random_range(0..100) < 60;
        let cents = rng.random_range(50_000i64..=2_000_000);
        let closed = now - Span::minutes(rng.random_range(60..2 * 365 * 24 * 60));
        if won && closed >= now - Span::days(365) {
            recent[p].0 += 1;
            recent[p].1 += cents;
        }
        let deal = bench_deal(
            &program_id,
            i,
            Decimal::new(cents, 2).to_string(),
            if won {
                DealStatus::Won
            } else {
                DealStatus::Lost
            },
            closed - Span::days(30),
            Some(closed),
            now,
        );
        let deal_id = deal.id.clone();
        deals.push(deal);
        rows.push(deal_commission::ActiveModel {
            deal_id,
            partner_id: Set(partners[p].0.clone()),
            program_id: Set(program_id.clone()),
            amount_program: Set(Some(Decimal::new(cents, 2).to_string())),
            amount_program_cents: Set(Some(cents)),
            deal_status: Set(if won {
                DealStatus::Won
            } else {
                DealStatus::Lost
            }),
            closed_at: Set(Some(closed)),
            deal_created_at: Set(closed - Span::days(30)),
            state: Set(if won {
                CommissionState::Earned
            } else {
                CommissionState::NotEarned
            }),
            expected_cents: Set(if won { cents / 10 } else { 0 }),
            computed_at: Set(now),
        });
        if rows.len() == CHUNK || i + 1 == args.deals as usize {
            let tx = db.begin_write().await?;
            insert_all(&*tx, std::mem::take(&mut deals), None).await?;
            insert_all(&*tx, std::mem::take(&mut rows), None).await?;
            tx.commit().await?;
        }
    }
    // Two people certified on sales-101 at every other partner.
    let certs: Vec<certification::ActiveModel> = partners
        .iter()
        .step_by(2)
        .flat_map(|(partner_id, _)| {
            ["ana", "ben"].map(|person| certification::ActiveModel {
                id: Set(new_id()),
                program_id: Set(program_id.clone()),
                partner_id: Set(partner_id.clone()),
                person_email: Set(format!("{person}@{partner_id}.example")),
                course_key: Set("sales-101".into()),
                issued_at: Set(now - Span::days(10)),
                expires_at: Set(Some(now + Span::days(300))),
                expiring_notified_at: Set(None),
                source: Set(CertificationSource::Api),
                created_at: Set(now),
                updated_at: Set(now),
            })
        })
        .collect();
    for chunk in certs.chunks(CHUNK) {
        let tx = db.begin_write().await?;
        certification::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&*tx)
            .await?;
        tx.commit().await?;
    }
    let mut expected = Expected {
        gold: 0,
        platinum: 0,
        demoted: 0,
    };
    for (i, (deals, cents)) in recent.iter().enumerate() {
        if *deals >= 35 && *cents >= 35_000_000 {
            expected.platinum += 1;
        } else if i % 2 == 0 && *deals >= 3 && *cents >= 5_000_000 {
            expected.gold += 1;
            if *deals < 30 {
                expected.demoted += 1;
            }
        }
    }
    if db.is_postgres() {
        // What autovacuum would gather after a bulk load.
        db.execute_unprepared("ANALYZE").await?;
    }
    Ok((program_id, expected, started.elapsed().as_secs_f64()))
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    }
}

/// Runs the benchmark and returns its JSON line.
pub async fn run(db: &Db, args: &BenchGroupsArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(args.partners >= 2, "--partners must be at least 2");
    let (program_id, expected, seed_secs) = seed(db, args).await?;
    let group = |name: &str, rank: i32, rate: u32, rules: Option<GroupRulesInput>| {
        CreatePartnerGroupInput {
            program_id: program_id.clone().into(),
            name: name.into(),
            rank,
            commission: plan(rate),
            hold_days: None,
            rules,
        }
    };
    let started = Instant::now();
    groups::create_partner_group(db, group("Silver", 0, 10, None))
        .await
        .map_err(|e| anyhow::anyhow!(e.message()))?;
    let default_secs = started.elapsed().as_secs_f64();
    let gold = groups::create_partner_group(
        db,
        group(
            "Gold",
            1,
            15,
            Some(GroupRulesInput {
                min_deals_won: Some(3),
                min_won_revenue: Some(Decimal::from(50_000)),
                required_certifications: Some(vec!["sales-101".into()]),
                min_certified_people: Some(2),
                ..Default::default()
            }),
        ),
    )
    .await
    .map_err(|e| anyhow::anyhow!(e.message()))?;
    groups::create_partner_group(
        db,
        group(
            "Platinum",
            2,
            20,
            Some(GroupRulesInput {
                min_deals_won: Some(35),
                min_won_revenue: Some(Decimal::from(350_000)),
                ..Default::default()
            }),
        ),
    )
    .await
    .map_err(|e| anyhow::anyhow!(e.message()))?;

    let started = Instant::now();
    let first = groups::evaluate_groups(db, Utc::now()).await?;
    let first_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        first.promoted == expected.gold + expected.platinum,
        "expected {} promotions ({} Gold, {} Platinum), the evaluation made {}",
        expected.gold + expected.platinum,
        expected.gold,
        expected.platinum,
        first.promoted
    );
    let mut idle = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let stats = groups::evaluate_groups(db, Utc::now()).await?;
        anyhow::ensure!(
            stats.promoted + stats.demoted + stats.joined == 0,
            "an idle evaluation changed groups: {stats:?}"
        );
        idle.push(started.elapsed().as_secs_f64());
    }

    // Gold now asks for 30 won deals; the review (made due) demotes whoever falls short.
    groups::update_partner_group(
        db,
        UpdatePartnerGroupInput {
            id: gold.id.clone().into(),
            name: None,
            commission: None,
            hold_days: None,
            rules: Some(GroupRulesInput {
                min_deals_won: Some(30),
                ..Default::default()
            }),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!(e.message()))?;
    let tx = db.begin_write().await?;
    program::Entity::update_many()
        .col_expr(
            program::Column::GroupsReviewedAt,
            sea_orm::sea_query::Expr::value(Utc::now() - Span::days(200)),
        )
        .filter(program::Column::Id.eq(program_id.as_str()))
        .exec(&*tx)
        .await?;
    tx.commit().await?;
    let started = Instant::now();
    let review = groups::evaluate_groups(db, Utc::now()).await?;
    let review_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        review.reviewed == 1 && review.demoted == expected.demoted,
        "expected a review demoting {} partners: {review:?}",
        expected.demoted
    );

    let sample: Vec<partner::Model> = partner::Entity::find().all(db.reads()).await?;
    let mut progress = Vec::new();
    for p in sample.iter().step_by((sample.len() / 50).max(1)).take(50) {
        let started = Instant::now();
        groups::next_group_progress(db, p)
            .await
            .map_err(|e| anyhow::anyhow!(e.message()))?;
        progress.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let events = count(
        db,
        "SELECT COUNT(*) AS n FROM events WHERE type = 'partner.group_changed'",
    )
    .await?;
    Ok(json!({
        "backend": if db.is_postgres() { "postgres" } else { "sqlite" },
        "partners": args.partners,
        "deals": args.deals,
        "seedSeconds": seed_secs,
        "defaultGroupSeconds": default_secs,
        "firstEvaluationSeconds": first_secs,
        "firstEvaluation": first,
        "idleEvaluationSeconds": median(idle),
        "reviewEvaluationSeconds": review_secs,
        "reviewEvaluation": review,
        "nextGroupProgressMs": median(progress),
        "groupChangedEvents": events,
        "peakRssMib": peak_rss_mib(),
    }))
}
