//! `tandem bench-seed`: bulk-loads a benchmark data set (one program, N partners, M referrals,
//! a deal attributed to every fifth referral) and creates a partner key for the dashboard
//! benchmark.

use chrono::{Duration, Utc};
use sea_orm::{ActiveValue::Set, EntityTrait};
use serde::Serialize;
use serde_json::json;

use tandem::db::states::DealStatus;
use tandem::{
    db::{
        Db,
        entities::{attribution, deal, partner, referral},
    },
    domain::{
        auth::{ApiKeyRole, create_key},
        ids::new_id,
        partners::generate_referral_code,
    },
    error::ApiError,
};

/// What was seeded.
#[derive(Debug, Serialize)]
pub struct BenchSeed {
    /// The program.
    pub program_id: String,
    /// A partner in the middle of the set, and its key.
    pub partner_id: String,
    /// Token of a PARTNER key for `partner_id`.
    pub partner_token: String,
    /// Token of an ADMIN key.
    pub admin_token: String,
}

const BATCH: usize = 500;

/// A mirrored deal of benchmark program `program_id` (`bench-{i}`, USD, domain
/// `customer{i}.example`), created at `created_at`, last seen at `now`.
pub fn bench_deal(
    program_id: &str,
    i: usize,
    amount: String,
    status: DealStatus,
    created_at: chrono::DateTime<Utc>,
    closed_at: Option<chrono::DateTime<Utc>>,
    now: chrono::DateTime<Utc>,
) -> deal::ActiveModel {
    deal::ActiveModel {
        id: Set(new_id()),
        program_id: Set(program_id.to_string()),
        source_id: Set("bench".into()),
        external_id: Set(format!("bench-{i}")),
        name: Set(format!("Deal {i}")),
        amount: Set(amount),
        currency: Set("USD".into()),
        status: Set(status),
        stage: Set(None),
        closed_at: Set(closed_at),
        created_at: Set(created_at),
        updated_at: Set(closed_at.unwrap_or(created_at)),
        company_domain: Set(Some(format!("customer{i}.example"))),
        contact_emails: Set(json!([])),
        referral_code: Set(None),
        deleted: Set(false),
        first_seen_at: Set(now),
        last_applied_at: Set(now),
        ..Default::default()
    }
}

/// Seeds the data set in batched transactions.
pub async fn seed(db: &Db, partners: u32, referrals: u32) -> anyhow::Result<BenchSeed> {
    anyhow::ensure!(partners > 0, "--partners must be at least 1");
    let now = Utc::now();
    let program_id = super::reconcile::insert_program(
        db,
        super::reconcile::program_row(
            "Benchmark program",
            tandem::db::states::ProgramKind::ReferralNetwork,
            "10",
            now,
        ),
    )
    .await?;
    let mut partner_ids = Vec::with_capacity(partners as usize);
    for chunk_start in (0..partners).step_by(BATCH) {
        let tx = db.begin_write().await?;
        let rows: Vec<partner::ActiveModel> = (chunk_start
            ..(chunk_start + BATCH as u32).min(partners))
            .map(|i| {
                let id = new_id();
                partner_ids.push(id.clone());
                partner::ActiveModel {
                    id: Set(id),
                    program_id: Set(program_id.clone()),
                    name: Set(format!("Partner {i}")),
                    domain: Set(Some(format!("partner{i}.example"))),
                    contact_email: Set(format!("contact@partner{i}.example")),
                    status: Set(tandem::db::states::PartnerStatus::Active),
                    referral_code: Set(format!("{}{}", &generate_referral_code()[..4], i)),
                    terminated_at: Set(None),
                    created_at: Set(now),
                    updated_at: Set(now),
                }
            })
            .collect();
        partner::Entity::insert_many(rows).exec(&*tx).await?;
        tx.commit().await?;
    }
    let mut next = 0u32;
    while next < referrals {
        let end = (next + BATCH as u32).min(referrals);
        let tx = db.begin_write().await?;
        let mut refs = Vec::new();
        let mut deals = Vec::new();
        let mut attributions = Vec::new();
        for i in next..end {
            // Every 50th referral goes to the dashboard partner, so it has well over 50.
            let partner_index = if i % 50 == 0 {
                partners / 2
            } else {
                i % partners
            };
            let partner_id = partner_ids[partner_index as usize].clone();
            let id = new_id();
            let submitted = now - Duration::minutes(i64::from(referrals - i));
            if i % 5 == 0 {
                let won = i % 10 == 0;
                deals.push(bench_deal(
                    &program_id,
                    i as usize,
                    format!("{}.00", 1000 + i % 9000),
                    if won {
                        DealStatus::Won
                    } else {
                        DealStatus::Open
                    },
                    submitted,
                    won.then_some(submitted),
                    now,
                ));
                attributions.push(attribution::ActiveModel {
                    deal_id: deals
                        .last()
                        .map_or(sea_orm::ActiveValue::NotSet, |d| d.id.clone()),
                    partner_id: Set(partner_id.clone()),
                    referral_id: Set(Some(id.clone())),
                    method: Set(tandem::db::states::AttributionMethod::Domain),
                    created_at: Set(now),
                    updated_at: Set(now),
                });
            }
            refs.push(referral::ActiveModel {
                id: Set(id),
                program_id: Set(program_id.clone()),
                partner_id: Set(partner_id),
                company_name: Set(format!("Customer {i}")),
                company_domain: Set(Some(format!("customer{i}.example"))),
                contact_name: Set(None),
                contact_email: Set(Some(format!("buyer@customer{i}.example"))),
                notes: Set(None),
                status: Set(tandem::db::states::ReferralStatus::Accepted),
                duplicate_of_id: Set(None),
                submitted_at: Set(submitted),
                updated_at: Set(submitted),
                accepted_at: Set(Some(submitted)),
                ..Default::default()
            });
        }
        referral::Entity::insert_many(refs).exec(&*tx).await?;
        if !deals.is_empty() {
            deal::Entity::insert_many(deals).exec(&*tx).await?;
            attribution::Entity::insert_many(attributions)
                .exec(&*tx)
                .await?;
        }
        tx.commit().await?;
        next = end;
    }
    // Planner statistics, as autovacuum gathers them a minute or so after a bulk load (it is off
    // on some servers, this project's test machine included): without them PostgreSQL joins a
    // page's deals by scanning both tables (17 ms instead of 0.3 ms). SQLite plans these
    // queries from its indexes alone (Tandem never runs ANALYZE there).
    if db.is_postgres() {
        db.execute_unprepared("ANALYZE").await?;
    }
    let partner_id = partner_ids[(partners / 2) as usize].clone();
    let key = create_key(
        db,
        "bench partner",
        ApiKeyRole::Partner,
        Some(&partner_id),
        &[],
    )
    .await
    .map_err(ApiError::into_anyhow)?;
    let admin = create_key(db, "bench admin", ApiKeyRole::Admin, None, &[])
        .await
        .map_err(ApiError::into_anyhow)?;
    Ok(BenchSeed {
        program_id,
        partner_id,
        partner_token: key.token,
        admin_token: admin.token,
    })
}
