//! `tandem bench-billing <phase>`: the recurring-commission benchmark (bench/billing.sh runs the
//! phases, each in its own process so that its peak RSS is its own):
//! - `seed`: one revenue-share program paying 10 % of invoices for 36 months, P partners,
//!   C referred customers (first won over the last four years, so some are past their
//!   period), N paid invoices spread over each customer's life, 10 % in EUR (one EUR→USD
//!   rate), 2 % partly refunded; everything back-dated a day;
//! - `full`: a full reconciliation through the job system;
//! - `touch`: 1 % of the invoices get a (larger) refund, stamped as just applied;
//! - `incremental`: an incremental reconciliation;
//! - `ingest`: `--events` signed-and-verified Stripe `invoice.paid` events of the seeded
//!   customers stored in the inbox (group commits of 100) and applied by the inbox worker
//!   (parse, link by email domain, write): events/s of each step.
//!
//! Each phase prints one JSON line: seconds, peak RSS (VmHWM) and the phase's figures.

use std::{sync::Arc, time::Instant};

use chrono::{Duration as Span, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng};
use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait, Statement};
use serde_json::{Value, json};

use tandem::db::insert_all;
use tandem::{
    db::{
        Db,
        entities::{customer, invoice, invoice_adjustment, program},
        states::{AdjustmentKind, RecurringBasis, WebhookSourceKind},
    },
    domain::{
        ids::new_id,
        inbox::{Inbox, InboxWorker, NewReceipt, backlog},
        secrets::SecretKey,
        webhooks::{CreateWebhookSourceInput, Disposition, Webhooks},
    },
};

use super::reconcile::{
    count, insert_eur_rate, insert_partners, insert_program, program_row, reconcile_job,
};

/// The phases.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Phase {
    /// Load the data set.
    Seed,
    /// Full reconciliation.
    Full,
    /// Refund 1 % of the invoices.
    Touch,
    /// Incremental reconciliation.
    Incremental,
    /// Store and apply Stripe events through the inbox.
    Ingest,
}

/// `tandem bench-billing`.
#[derive(Debug, clap::Args)]
pub struct BenchBillingArgs {
    /// Which phase.
    #[arg(value_enum)]
    pub phase: Phase,
    /// Invoices to seed.
    #[arg(long, default_value_t = 1_000_000)]
    pub invoices: u32,
    /// Referred customers to seed.
    #[arg(long, default_value_t = 10_000)]
    pub customers: u32,
    /// Partners to seed.
    #[arg(long, default_value_t = 1_000)]
    pub partners: u32,
    /// Percentage of invoices `touch` refunds.
    #[arg(long, default_value_t = 1.0)]
    pub percent: f64,
    /// Events `ingest` sends.
    #[arg(long, default_value_t = 20_000)]
    pub events: u32,
}

/// Runs one phase and returns its JSON line.
pub async fn run(db: &Db, args: &BenchBillingArgs) -> anyhow::Result<Value> {
    let started = Instant::now();
    let figures = match args.phase {
        Phase::Seed => seed(db, args).await?,
        Phase::Full | Phase::Incremental => {
            reconcile_job(db, matches!(args.phase, Phase::Full)).await?
        }
        Phase::Touch => touch(db, args.percent).await?,
        Phase::Ingest => ingest(db, args.events, args.customers).await?,
    };
    Ok(super::phase_line(args.phase, started, figures))
}

const BATCH: usize = 2_000;

async fn seed(db: &Db, args: &BenchBillingArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.customers >= args.partners,
        "--customers must be ≥ --partners"
    );
    let mut rng = StdRng::seed_from_u64(42);
    let now = Utc::now();
    let past = now - Span::days(1);
    let program_id = insert_program(
        db,
        program::ActiveModel {
            recurring_basis: Set(Some(RecurringBasis::Invoices)),
            recurring_months: Set(Some(36)),
            recurring_rate: Set(Some("10".into())),
            ..program_row(
                "Revenue share",
                tandem::db::states::ProgramKind::RevenueShare,
                "20",
                past,
            )
        },
    )
    .await?;
    insert_eur_rate(db, now - Span::days(6 * 365), past).await?;
    let partners: Vec<String> = (0..args.partners).map(|_| new_id()).collect();
    let rows: Vec<(String, String)> = partners
        .iter()
        .map(|id| (id.clone(), program_id.clone()))
        .collect();
    insert_partners(db, &rows, past).await?;
    // Customers, first won up to four years ago (a quarter past their 36 months).
    let mut customers = Vec::with_capacity(args.customers as usize);
    for i in 0..args.customers {
        let first_won = now - Span::minutes(rng.random_range(30 * 24 * 60..4 * 365 * 24 * 60));
        customers.push((
            new_id(),
            partners[(i % args.partners) as usize].clone(),
            first_won,
        ));
    }
    for (n, chunk) in customers.chunks(BATCH / 2).enumerate() {
        let tx = db.begin_write().await?;
        let rows: Vec<customer::ActiveModel> = chunk
            .iter()
            .enumerate()
            .map(|(k, (id, partner_id, first_won))| {
                let i = n * (BATCH / 2) + k;
                customer::ActiveModel {
                    id: Set(id.clone()),
                    program_id: Set(program_id.clone()),
                    partner_id: Set(partner_id.clone()),
                    domain: Set(Some(format!("c{i}.bench.example"))),
                    name: Set(format!("Customer {i}")),
                    crm_company_id: Set(None),
                    billing_customer_id: Set(None),
                    deal_id: Set(None),
                    first_won_at: Set(*first_won),
                    created_at: Set(past),
                    updated_at: Set(past),
                }
            })
            .collect();
        customer::Entity::insert_many(rows).exec(&*tx).await?;
        tx.commit().await?;
    }
    let mut next = 0u32;
    let mut refunds = 0u32;
    while next < args.invoices {
        let end = (next + BATCH as u32).min(args.invoices);
        let mut rows = Vec::with_capacity(BATCH);
        let mut adjustments = Vec::new();
        for i in next..end {
            let c = (i % args.customers) as usize;
            let (customer_id, partner_id, first_won) = &customers[c];
            let life = (now - *first_won).num_minutes().max(1);
            let paid_at = *first_won + Span::minutes(rng.random_range(0..life));
            let eur = i % 10 == 0;
            let currency = if eur { "EUR" } else { "USD" };
            let excluding: i64 = rng.random_range(5_000..500_000);
            let paid = excluding + excluding * 19 / 100;
            let external_id = format!("in_bench_{i}");
            if rng.random_range(0..100) < 2 {
                refunds += 1;
                adjustments.push(invoice_adjustment::ActiveModel {
                    id: Set(new_id()),
                    source_id: Set("bench".into()),
                    invoice_external_id: Set(external_id.clone()),
                    kind: Set(AdjustmentKind::Refund),
                    external_id: Set(format!("ch_bench_{i}")),
                    currency: Set(currency.into()),
                    amount: Set(format!("{}.{:02}", paid / 400, (paid / 4) % 100)),
                    occurred_at: Set(paid_at + Span::days(3)),
                    created_at: Set(past),
                    updated_at: Set(past),
                });
            }
            rows.push(invoice::ActiveModel {
                id: Set(new_id()),
                program_id: Set(program_id.clone()),
                source_id: Set("bench".into()),
                external_id: Set(external_id),
                billing_customer: Set(Some(format!("cus_bench_{c}"))),
                customer_email: Set(Some(format!("billing@c{c}.bench.example"))),
                link_domain: Set(Some(format!("c{c}.bench.example"))),
                customer_id: Set(Some(customer_id.clone())),
                partner_id: Set(Some(partner_id.clone())),
                currency: Set(currency.into()),
                amount_paid: Set(format!("{}.{:02}", paid / 100, paid % 100)),
                amount_excluding_tax: Set(format!("{}.{:02}", excluding / 100, excluding % 100)),
                paid_at: Set(paid_at),
                created_at: Set(past),
                updated_at: Set(past),
            });
        }
        let tx = db.begin_write().await?;
        insert_all(&*tx, rows, None).await?;
        insert_all(&*tx, adjustments, None).await?;
        tx.commit().await?;
        next = end;
    }
    Ok(
        json!({"invoices": args.invoices, "customers": args.customers,
              "partners": args.partners, "refunded": refunds}),
    )
}

async fn touch(db: &Db, percent: f64) -> anyhow::Result<Value> {
    let rows = db
        .reads()
        .query_all_raw(Statement::from_string(
            db.backend(),
            "SELECT external_id, currency, amount_paid, paid_at FROM invoices",
        ))
        .await?;
    let mut rng = StdRng::seed_from_u64(7);
    let now = Utc::now();
    let picked: Vec<_> = rows
        .iter()
        .filter(|_| rng.random_bool(percent / 100.0))
        .collect();
    let mut changed = 0u64;
    for chunk in picked.chunks(1000) {
        let tx = db.begin_write().await?;
        let mut adjustments = Vec::with_capacity(chunk.len());
        let mut ids = Vec::with_capacity(chunk.len());
        for row in chunk {
            let external_id: String = row.try_get("", "external_id")?;
            let paid: rust_decimal::Decimal = row.try_get::<String>("", "amount_paid")?.parse()?;
            let paid_at: chrono::DateTime<Utc> = row.try_get("", "paid_at")?;
            adjustments.push(invoice_adjustment::ActiveModel {
                id: Set(new_id()),
                source_id: Set("bench".into()),
                invoice_external_id: Set(external_id.clone()),
                kind: Set(AdjustmentKind::CreditNote),
                external_id: Set(format!("cn_touch_{external_id}")),
                currency: Set(row.try_get("", "currency")?),
                amount: Set((paid / rust_decimal::Decimal::from(3))
                    .round_dp(2)
                    .to_string()),
                occurred_at: Set(paid_at + Span::days(1)),
                created_at: Set(now),
                updated_at: Set(now),
            });
            ids.push(external_id);
        }
        invoice_adjustment::Entity::insert_many(adjustments)
            .exec_without_returning(&*tx)
            .await?;
        let (cond, mut values) = db.in_list("external_id", &ids, 2);
        values.insert(0, now.into());
        tx.execute_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "UPDATE invoices SET updated_at = {} WHERE {cond}",
                db.placeholder(1)
            ),
            values,
        ))
        .await?;
        tx.commit().await?;
        changed += chunk.len() as u64;
    }
    Ok(json!({"creditNotes": changed}))
}

async fn ingest(db: &Db, events: u32, customers: u32) -> anyhow::Result<Value> {
    let program = program::Entity::find()
        .one(db.reads())
        .await?
        .ok_or_else(|| anyhow::anyhow!("seed first"))?;
    let mut key = [0u8; 32];
    tandem::domain::secrets::random_bytes(&mut key);
    let key = SecretKey::from_base64(&base64_key(&key))?;
    let webhooks = Webhooks::new(db.clone(), Arc::new(key));
    let secret = "whsec_benchStripeSecret000000000";
    let created = webhooks
        .create_source(
            "http://127.0.0.1",
            CreateWebhookSourceInput {
                name: "Stripe".into(),
                kind: WebhookSourceKind::Stripe,
                program_id: async_graphql::ID(program.id.clone()),
                connection_id: None,
                secret: Some(secret.into()),
                salesforce_org_id: None,
                hubspot_signature_version: None,
                referral_code_field: None,
            },
        )
        .await
        .map_err(tandem::error::ApiError::into_anyhow)?;
    let source = webhooks
        .source(&created.model.id)
        .await
        .map_err(tandem::error::ApiError::into_anyhow)?
        .ok_or_else(|| anyhow::anyhow!("source"))?;
    let now = Utc::now();
    // Build and verify every request first (signing and verifying are the sender's and the
    // HTTP handler's share), then time the inbox: storing, then applying.
    let mut receipts = Vec::with_capacity(events as usize);
    let verify_started = Instant::now();
    for i in 0..events {
        let c = i % customers.max(1);
        let body = json!({
            "id": format!("evt_ingest_{i}"), "object": "event", "type": "invoice.paid",
            "created": now.timestamp(),
            "data": {"object": {
                "id": format!("in_ingest_{i}"), "object": "invoice",
                "customer": format!("cus_bench_{c}"),
                "customer_email": format!("billing@c{c}.bench.example"),
                "currency": "usd", "amount_paid": 11_900, "total": 11_900,
                "total_excluding_tax": 10_000,
                "status_transitions": {"paid_at": now.timestamp()}
            }}
        })
        .to_string();
        let header =
            tandem_connectors::verify::sign_stripe(secret, now.timestamp(), body.as_bytes());
        let mut headers = http::HeaderMap::new();
        headers.insert("stripe-signature", header.parse()?);
        let request = tandem::domain::webhooks::InboundRequest {
            method: "POST",
            url: "http://127.0.0.1/webhooks/x",
            headers: &headers,
            token: None,
            body: body.as_bytes(),
            received_at: now,
        };
        source
            .verify(&request)
            .map_err(|e| anyhow::anyhow!("verify: {e}"))?;
        for event in source.split(&request) {
            anyhow::ensure!(
                matches!(event.disposition, Disposition::Apply),
                "not applicable"
            );
            receipts.push(NewReceipt {
                source_id: source.model.id.clone(),
                program_id: program.id.clone(),
                event,
                received_at: now,
            });
        }
    }
    let verify_secs = verify_started.elapsed().as_secs_f64();
    let inbox = Inbox::start(db.clone());
    let store_started = Instant::now();
    let mut pending = Vec::new();
    let mut iter = receipts.into_iter().peekable();
    while iter.peek().is_some() {
        let group: Vec<NewReceipt> = iter.by_ref().take(100).collect();
        let inbox = inbox.clone();
        pending.push(tokio::spawn(async move { inbox.store(group).await }));
        if pending.len() >= 64 {
            for task in pending.drain(..) {
                task.await?.map_err(tandem::error::ApiError::into_anyhow)?;
            }
        }
    }
    for task in pending {
        task.await?.map_err(tandem::error::ApiError::into_anyhow)?;
    }
    let store_secs = store_started.elapsed().as_secs_f64();
    let worker = InboxWorker::new(db.clone(), webhooks, inbox);
    let apply_started = Instant::now();
    while worker.apply_due().await? > 0 {}
    let apply_secs = apply_started.elapsed().as_secs_f64();
    let left = backlog(db).await?;
    let linked = count(
        db,
        "SELECT COUNT(*) AS n FROM invoices WHERE external_id LIKE 'in_ingest_%' AND customer_id IS NOT NULL",
    )
    .await?;
    Ok(json!({
        "events": events,
        "verifyPerSec": f64::from(events) / verify_secs,
        "storedPerSec": f64::from(events) / store_secs,
        "appliedPerSec": f64::from(events) / apply_secs,
        "linked": linked,
        "backlogLeft": left,
    }))
}

fn base64_key(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
