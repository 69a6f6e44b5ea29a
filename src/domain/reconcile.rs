//! Reconciliation (DESIGN §4): for every attributed deal, bring the sum of its ledger entries to
//! its expected commission by appending the difference. The ledger is the truth for what was
//! booked; `deal_commissions` keeps what was last computed (for KPIs and to find the old
//! partner and close of a deal that changed).
//!
//! Work is streamed in chunks of partners (or of deals), each read with a few statements and
//! written in one transaction. Two reconcilers never write an entry twice: entry n+1 of a
//! (partner, deal) is unique, so a second reconciler that read the same state collides and
//! writes nothing for that deal.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait, QueryResult, Statement, Value,
    sea_query::OnConflict,
};
use serde::Serialize;
use serde_json::json;
use tandem_connectors::DealStatus;

use crate::{
    db::{
        Db,
        entities::{deal_commission, exchange_rate, ledger_entry, partner, program},
    },
    domain::{
        commission::{
            Basis, CommissionState, DealFacts, Outcome, Rates, Terms, compute_timeline, from_cents,
            to_cents,
        },
        deals::counted_status,
        events::{self, EventType},
        ids::new_id,
        ledger::{COMMISSION_KINDS, LedgerEntryKind, LedgerEntryStatus},
        programs::plan_of,
    },
};

/// How far before the previous run's start an incremental run looks again, so that changes
/// committed late (a long transaction, a clock a little behind) are not missed.
pub const OVERLAP: Duration = Duration::minutes(2);

/// Partners per chunk in a full (or per-partner) pass.
const PARTNER_CHUNK: usize = 250;
/// Partners per chunk in tier propagation (narrow rows: bigger chunks, fewer commits).
const TIER_CHUNK: usize = 1_000;
/// Deals per chunk in a per-deal pass.
const DEAL_CHUNK: usize = 5_000;

/// What a reconciliation did (the job run's `stats`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileStats {
    /// `full` or `incremental`.
    pub mode: String,
    /// Partners whose timeline was computed whole.
    pub partners: u64,
    /// (deal, partner) pairs compared with the ledger.
    pub deals_checked: u64,
    /// Entries appended.
    pub entries_written: u64,
    /// Sum of appended ACCRUAL amounts (all currencies, as a plain decimal).
    #[serde(with = "rust_decimal::serde::str")]
    pub accrued: Decimal,
    /// Sum of appended REVERSAL amounts (negative).
    #[serde(with = "rust_decimal::serde::str")]
    pub reversed: Decimal,
    /// Sum of the absolute differences corrected.
    #[serde(with = "rust_decimal::serde::str")]
    pub total_drift: Decimal,
    /// Deals LOCKED by the clawback rule.
    pub locked: u64,
    /// Deals without an exchange rate into their program currency.
    pub missing_exchange_rates: u64,
    /// Deals whose amount could not be computed.
    pub invalid: u64,
    /// Entries not written because another reconciler wrote that deal's entry first.
    pub conflicts: u64,
    /// Deals whose stored computation (state, expected, amount in program currency) changed.
    pub computations_updated: u64,
    /// The watermark the next incremental run starts from.
    pub watermark: Option<DateTime<Utc>>,
    /// Where the time went: finding what changed, reading, computing, writing (seconds).
    pub timings: Timings,
}

/// Seconds spent per step of a run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    /// Finding what changed (incremental runs).
    pub changes: f64,
    /// Reading deals, last computations and ledger sums.
    pub read: f64,
    /// Computing expected commissions.
    pub compute: f64,
    /// Writing entries, events and computations.
    pub write: f64,
}

/// Everything that does not change during a run: programs, rates, partners.
struct Context {
    terms: HashMap<String, (Terms, i32)>,
    rates: Rates,
    partners: HashMap<String, (String, Option<DateTime<Utc>>)>,
    now: DateTime<Utc>,
    /// Full runs compare every pair with the ledger itself.
    verify_all: bool,
}

impl Context {
    async fn load(db: &Db, now: DateTime<Utc>) -> Result<Context, DbErr> {
        let mut terms = HashMap::new();
        for p in program::Entity::find().all(db.reads()).await? {
            let plan = plan_of(&p).map_err(|e| DbErr::Custom(format!("{e:?}")))?;
            terms.insert(
                p.id.clone(),
                (
                    Terms {
                        plan,
                        currency: p.currency.clone(),
                    },
                    p.hold_days,
                ),
            );
        }
        let mut rates = Rates::default();
        for r in exchange_rate::Entity::find().all(db.reads()).await? {
            let rate = parse_decimal(&r.rate, "exchange rate")?;
            rates.insert(&r.base, &r.quote, r.effective_at, rate);
        }
        let partners = partner::Entity::find()
            .all(db.reads())
            .await?
            .into_iter()
            .map(|p| (p.id, (p.program_id, p.terminated_at)))
            .collect();
        Ok(Context {
            terms,
            rates,
            partners,
            now,
            verify_all: true,
        })
    }

    fn tiered(&self, program_id: &str) -> bool {
        self.terms
            .get(program_id)
            .is_some_and(|(t, _)| !t.plan.tiers.is_empty())
    }
}

/// Which rows one chunk reads: whole partners, or single deals (of untiered programs, where
/// a deal's commission does not depend on the partner's other deals).
enum Scope<'a> {
    Partners(&'a [String]),
    Deals(&'a [String]),
    /// Partners with the changed deals that move their tiers.
    Tiers(&'a [(String, BTreeSet<String>)]),
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, col: &str) -> Result<T, DbErr> {
    row.try_get::<T>("", col)
}

/// What the ledger holds per (partner, deal) for the pairs of these partners or deals
/// (`column` is `le.partner_id` or `le.deal_id`).
async fn read_booked(
    db: &Db,
    column: &str,
    ids: &[String],
) -> Result<HashMap<(String, String), Booked>, DbErr> {
    let mut booked = HashMap::new();
    for chunk in ids.chunks(DEAL_CHUNK) {
        let (cond, values) = db.in_list(column, chunk, 1);
        for row in db
            .reads()
            .query_all_raw(Statement::from_sql_and_values(
                db.backend(),
                format!(
                    "SELECT le.partner_id, le.deal_id, CAST(SUM(le.amount_cents) AS BIGINT) AS cents, \
                     CAST(COALESCE(MAX(le.deal_seq), 0) AS BIGINT) AS max_seq FROM ledger_entries le \
                     WHERE {cond} AND le.deal_id IS NOT NULL AND le.kind IN {COMMISSION_KINDS} \
                     GROUP BY le.partner_id, le.deal_id"
                ),
                values,
            ))
            .await?
        {
            let cents: Option<i64> = get(&row, "cents")?;
            let max_seq: i64 = get::<Option<i64>>(&row, "max_seq")?.unwrap_or(0);
            booked.insert(
                (get(&row, "partner_id")?, get(&row, "deal_id")?),
                Booked {
                    cents: cents.unwrap_or(0),
                    max_seq: i32::try_from(max_seq).unwrap_or(i32::MAX),
                },
            );
        }
    }
    Ok(booked)
}

/// One computed (deal, partner).
struct Pair {
    program_id: String,
    partner_id: String,
    outcome: Outcome,
    status: DealStatus,
    created_at: DateTime<Utc>,
}

/// The `deal_commissions` columns [`Stored::from_row`] reads (table alias `dc`).
const STORED_COLUMNS: &str = "dc.state AS dc_state, dc.expected_cents AS dc_expected, \
    dc.amount_program AS dc_amount, dc.deal_status AS dc_status, dc.closed_at AS dc_closed, \
    dc.deal_created_at AS dc_created";

/// What the last run computed for a (deal, partner).
struct Stored {
    state: CommissionState,
    expected_cents: i64,
    amount_program: Option<String>,
    deal_status: String,
    closed_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl Stored {
    /// From the `dc_*` columns of a row (`None` when the pair was never computed).
    fn from_row(row: &QueryResult) -> Result<Option<Stored>, DbErr> {
        let Some(state) = get::<Option<CommissionState>>(row, "dc_state")? else {
            return Ok(None);
        };
        Ok(Some(Stored {
            state,
            expected_cents: get(row, "dc_expected")?,
            amount_program: get(row, "dc_amount")?,
            deal_status: get(row, "dc_status")?,
            closed_at: get(row, "dc_closed")?,
            created_at: get(row, "dc_created")?,
        }))
    }
}

/// What the ledger holds for one (partner, deal): the sum of its entries and the highest entry
/// number (the next entry is `max_seq + 1`).
#[derive(Default, Clone)]
struct Booked {
    cents: i64,
    max_seq: i32,
}

/// Runs a reconciliation: full when `since` is `None`, otherwise incremental over what changed
/// after `since` (minus [`OVERLAP`]). The returned stats carry the next watermark.
pub async fn reconcile(db: &Db, since: Option<DateTime<Utc>>) -> Result<ReconcileStats, DbErr> {
    reconcile_with_overlap(db, since, OVERLAP).await
}

/// [`reconcile`] with another overlap (tests use none, to check that an incremental run finds
/// exactly what changed).
pub async fn reconcile_with_overlap(
    db: &Db,
    since: Option<DateTime<Utc>>,
    overlap: Duration,
) -> Result<ReconcileStats, DbErr> {
    let now = Utc::now();
    let mut ctx = Context::load(db, now).await?;
    ctx.verify_all = since.is_none();
    let mut stats = ReconcileStats {
        mode: if since.is_some() {
            "incremental"
        } else {
            "full"
        }
        .to_string(),
        watermark: Some(now),
        ..ReconcileStats::default()
    };
    match since {
        None => {
            let mut partners: Vec<String> = ctx.partners.keys().cloned().collect();
            partners.sort();
            for chunk in partners.chunks(PARTNER_CHUNK) {
                process(db, &ctx, Scope::Partners(chunk), &mut stats).await?;
            }
        }
        Some(since) => {
            let started = std::time::Instant::now();
            let changes = changed_since(db, &ctx, since - overlap).await?;
            stats.timings.changes += started.elapsed().as_secs_f64();
            let partners: Vec<String> = changes.whole.into_iter().collect();
            for chunk in partners.chunks(PARTNER_CHUNK) {
                process(db, &ctx, Scope::Partners(chunk), &mut stats).await?;
            }
            let tiers: Vec<(String, BTreeSet<String>)> = changes.tiers.into_iter().collect();
            for chunk in tiers.chunks(TIER_CHUNK) {
                process(db, &ctx, Scope::Tiers(chunk), &mut stats).await?;
            }
            let deals: Vec<String> = changes.deals.into_iter().collect();
            for chunk in deals.chunks(DEAL_CHUNK) {
                process(db, &ctx, Scope::Deals(chunk), &mut stats).await?;
            }
        }
    }
    Ok(stats)
}

/// What an incremental run recomputes.
#[derive(Default)]
struct Changes {
    /// Partners recomputed from the mirror (termination, plan or rate changes).
    whole: BTreeSet<String>,
    /// Partners of tiered programs whose changed deals (the values) move their tiers: the
    /// changed deals are read from the mirror, the others from what the last run computed.
    tiers: BTreeMap<String, BTreeSet<String>>,
    /// Single deals (their commission depends on no other deal).
    deals: BTreeSet<String>,
}

/// What changed after `since`.
async fn changed_since(db: &Db, ctx: &Context, since: DateTime<Utc>) -> Result<Changes, DbErr> {
    let p1 = db.numbered(1);
    let mut partners = BTreeSet::new();
    // (deal, partner concerned, program, whether the deal counts towards the partner's
    // revenue or is credited on it: WON, or LOCKED, before or after the change).
    let mut pairs: Vec<(String, Option<String>, String, bool)> = Vec::new();
    let rows = db
        .reads()
        .query_all_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "SELECT d.id AS deal_id, a.partner_id AS partner_id, d.program_id AS program_id, \
                 d.status AS status, d.deleted AS deleted, d.locked_closed_at AS locked \
                 FROM deals d LEFT JOIN attributions a ON a.deal_id = d.id \
                 WHERE d.last_applied_at > {p1} \
                 UNION SELECT a.deal_id, a.partner_id, d.program_id, d.status, d.deleted, \
                 d.locked_closed_at FROM attributions a JOIN deals d ON d.id = a.deal_id \
                 WHERE a.updated_at > {p1}"
            ),
            [since.into()],
        ))
        .await?;
    for row in rows {
        let status: String = get(&row, "status")?;
        let deleted: bool = get(&row, "deleted")?;
        let locked: Option<DateTime<Utc>> = get(&row, "locked")?;
        pairs.push((
            get(&row, "deal_id")?,
            get(&row, "partner_id")?,
            get(&row, "program_id")?,
            counted_status(&status, deleted) == Some(DealStatus::Won) || locked.is_some(),
        ));
    }
    // A re-attributed deal also concerns the partner it left.
    let deal_ids: Vec<String> = pairs.iter().map(|p| p.0.clone()).collect();
    for chunk in deal_ids.chunks(DEAL_CHUNK) {
        let (cond, values) = db.in_list("deal_id", chunk, 1);
        for row in db
            .reads()
            .query_all_raw(Statement::from_sql_and_values(
                db.backend(),
                format!(
                    "SELECT deal_id, partner_id, program_id, deal_status, state \
                     FROM deal_commissions WHERE {cond}"
                ),
                values,
            ))
            .await?
        {
            let status: String = get(&row, "deal_status")?;
            let state: CommissionState = get(&row, "state")?;
            pairs.push((
                get(&row, "deal_id")?,
                Some(get(&row, "partner_id")?),
                get(&row, "program_id")?,
                DealStatus::parse(&status) == Some(DealStatus::Won)
                    || state == CommissionState::Locked,
            ));
        }
    }
    // In a tiered program a deal that counts (before or after) moves the tiers of the
    // partner's later deals: recompute the partner whole. Any other deal only concerns itself.
    let mut concerned: BTreeMap<String, (String, bool, Vec<String>)> = BTreeMap::new();
    for (deal_id, partner_id, program_id, counts) in pairs {
        let entry = concerned
            .entry(deal_id)
            .or_insert_with(|| (program_id, false, Vec::new()));
        entry.1 |= counts;
        if let Some(partner_id) = partner_id {
            entry.2.push(partner_id);
        }
    }
    let mut deals: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut tiers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (deal_id, (program_id, counts, deal_partners)) in concerned {
        if deal_partners.is_empty() {
            continue;
        }
        if counts && ctx.tiered(&program_id) {
            for partner_id in deal_partners {
                tiers.entry(partner_id).or_default().insert(deal_id.clone());
            }
        } else {
            deals.insert(deal_id, deal_partners);
        }
    }
    // Whole partners: terminated (or otherwise changed) partners, partners of programs whose
    // plan changed, and partners with deals a new exchange rate may convert. (Separate small
    // statements: joined into one, SQLite's planner scans every deal.)
    let since_value = || -> Vec<Value> { vec![since.into()] };
    let query = |sql: String, values: Vec<Value>| {
        db.reads()
            .query_all_raw(Statement::from_sql_and_values(db.backend(), sql, values))
    };
    for row in query(
        format!("SELECT id FROM partners WHERE updated_at > {p1}"),
        since_value(),
    )
    .await?
    {
        partners.insert(get(&row, "id")?);
    }
    for row in query(
        format!("SELECT id FROM programs WHERE updated_at > {p1}"),
        since_value(),
    )
    .await?
    {
        let program_id: String = get(&row, "id")?;
        partners.extend(
            ctx.partners
                .iter()
                .filter(|(_, (p, _))| *p == program_id)
                .map(|(id, _)| id.clone()),
        );
    }
    for row in query(
        format!("SELECT DISTINCT base, quote FROM exchange_rates WHERE created_at > {p1}"),
        since_value(),
    )
    .await?
    {
        let base: String = get(&row, "base")?;
        let quote: String = get(&row, "quote")?;
        let programs: Vec<String> = ctx
            .terms
            .iter()
            .filter(|(_, (terms, _))| terms.currency == quote)
            .map(|(id, _)| id.clone())
            .collect();
        for program_id in programs {
            for row in query(
                format!(
                    "SELECT DISTINCT a.partner_id FROM deals d \
                     JOIN attributions a ON a.deal_id = d.id \
                     WHERE d.program_id = {} AND (d.currency = {} OR d.locked_currency = {})",
                    db.numbered(1),
                    db.numbered(2),
                    db.numbered(2)
                ),
                vec![program_id.into(), base.clone().into()],
            )
            .await?
            {
                partners.insert(get(&row, "partner_id")?);
            }
        }
    }
    tiers.retain(|partner_id, _| !partners.contains(partner_id));
    // A deal whose partners are all recomputed with their timeline needs no pass of its own.
    let deals = deals
        .into_iter()
        .filter(|(_, concerned)| {
            concerned
                .iter()
                .any(|p| !partners.contains(p) && !tiers.contains_key(p))
        })
        .map(|(deal_id, _)| deal_id)
        .collect();
    Ok(Changes {
        whole: partners,
        tiers,
        deals,
    })
}

fn parse_decimal(text: &str, what: &str) -> Result<Decimal, DbErr> {
    text.parse()
        .map_err(|e| DbErr::Custom(format!("stored {what} {text:?}: {e}")))
}

/// Tier propagation: the partners' deals that did not change since the last run and count
/// towards their tiers (WON, or LOCKED on a won snapshot), rebuilt from what the last run
/// computed (amounts already in the program currency) instead of the mirror, through the
/// narrow reconciler rows.
async fn read_unchanged_counting(
    db: &Db,
    ctx: &Context,
    partners: &[(String, BTreeSet<String>)],
    timelines: &mut BTreeMap<String, Vec<DealFacts>>,
    stored: &mut HashMap<(String, String), Stored>,
) -> Result<(), DbErr> {
    let changed: HashMap<&String, &BTreeSet<String>> =
        partners.iter().map(|(p, d)| (p, d)).collect();
    let ids: Vec<String> = partners.iter().map(|(p, _)| p.clone()).collect();
    let (cond, values) = db.in_list("dc.partner_id", &ids, 1);
    let rows = db
        .reads()
        .query_all_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "SELECT dc.partner_id, dc.deal_id, {STORED_COLUMNS} \
                 FROM deal_commissions dc \
                 WHERE {cond} AND dc.state <> 'DETACHED' \
                   AND (dc.deal_status = 'WON' OR dc.state = 'LOCKED')"
            ),
            values,
        ))
        .await?;
    for row in rows {
        let partner_id: String = get(&row, "partner_id")?;
        let deal_id: String = get(&row, "deal_id")?;
        if changed
            .get(&partner_id)
            .is_some_and(|deals| deals.contains(&deal_id))
        {
            continue;
        }
        let Some(previous) = Stored::from_row(&row)? else {
            continue;
        };
        let (Some(amount), Some(closed_at)) = (&previous.amount_program, previous.closed_at) else {
            // No rate: it neither counts nor changes.
            continue;
        };
        let Some(currency) = ctx
            .partners
            .get(&partner_id)
            .and_then(|(program_id, _)| ctx.terms.get(program_id))
            .map(|(terms, _)| terms.currency.clone())
        else {
            continue;
        };
        let amount = parse_decimal(amount, "amount in program currency")?;
        let status = DealStatus::parse(&previous.deal_status).ok_or_else(|| {
            DbErr::Custom(format!("stored deal status {:?}", previous.deal_status))
        })?;
        let locked = (previous.state == CommissionState::Locked).then(|| Basis {
            amount,
            currency: currency.clone(),
            closed_at,
        });
        timelines
            .entry(partner_id.clone())
            .or_default()
            .push(DealFacts {
                id: deal_id.clone(),
                status,
                amount,
                currency,
                closed_at: Some(closed_at),
                updated_at: closed_at,
                created_at: previous.created_at,
                locked,
            });
        stored.insert((partner_id, deal_id), previous);
    }
    Ok(())
}

/// Reads, computes and writes one chunk.
async fn process(
    db: &Db,
    ctx: &Context,
    scope: Scope<'_>,
    stats: &mut ReconcileStats,
) -> Result<(), DbErr> {
    let started = std::time::Instant::now();
    // What is read from the mirror: the scope's partners or deals, or for tier propagation the
    // changed deals (keeping the pairs of the chunk's partners).
    let (by_deal, mirror_ids, keep): (bool, Vec<String>, Option<HashSet<&String>>) = match &scope {
        Scope::Partners(ids) => {
            stats.partners += ids.len() as u64;
            (false, ids.to_vec(), None)
        }
        Scope::Deals(ids) => (true, ids.to_vec(), None),
        Scope::Tiers(partners) => {
            stats.partners += partners.len() as u64;
            let mut deal_ids: Vec<String> = partners
                .iter()
                .flat_map(|(_, d)| d.iter().cloned())
                .collect();
            deal_ids.sort();
            deal_ids.dedup();
            (
                true,
                deal_ids,
                Some(partners.iter().map(|(p, _)| p).collect()),
            )
        }
    };
    if mirror_ids.is_empty() {
        return Ok(());
    }
    let kept = |partner_id: &String| keep.as_ref().is_none_or(|k| k.contains(partner_id));
    let column = |table: &str| {
        if by_deal {
            format!("{table}.deal_id")
        } else {
            format!("{table}.partner_id")
        }
    };
    // The attributed deals in scope, by partner, with what was last computed for them (one
    // statement), then the pairs last computed whose deal is now attributed elsewhere.
    let (cond, values) = db.in_list(&column("a"), &mirror_ids, 1);
    let rows = db
        .reads()
        .query_all_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "SELECT a.partner_id, d.id, d.amount, d.currency, d.status, \
                 d.deleted, d.closed_at, d.updated_at, d.created_at, d.locked_amount, \
                 d.locked_currency, d.locked_closed_at, {STORED_COLUMNS} \
                 FROM attributions a JOIN deals d ON d.id = a.deal_id \
                 LEFT JOIN deal_commissions dc \
                   ON dc.deal_id = a.deal_id AND dc.partner_id = a.partner_id \
                 WHERE {cond}"
            ),
            values,
        ))
        .await?;
    let mut timelines: BTreeMap<String, Vec<DealFacts>> = BTreeMap::new();
    let mut stored: HashMap<(String, String), Stored> = HashMap::new();
    for row in rows {
        let partner_id: String = get(&row, "partner_id")?;
        if !kept(&partner_id) {
            continue;
        }
        let deleted: bool = get(&row, "deleted")?;
        let status: String = get(&row, "status")?;
        let status = counted_status(&status, deleted)
            .ok_or_else(|| DbErr::Custom(format!("stored deal status {status:?}")))?;
        let locked = match (
            get::<Option<String>>(&row, "locked_amount")?,
            get::<Option<String>>(&row, "locked_currency")?,
            get::<Option<DateTime<Utc>>>(&row, "locked_closed_at")?,
        ) {
            (Some(amount), Some(currency), Some(closed_at)) => Some(Basis {
                amount: parse_decimal(&amount, "locked amount")?,
                currency,
                closed_at,
            }),
            _ => None,
        };
        let id: String = get(&row, "id")?;
        if let Some(previous) = Stored::from_row(&row)? {
            stored.insert((partner_id.clone(), id.clone()), previous);
        }
        timelines.entry(partner_id).or_default().push(DealFacts {
            id,
            status,
            amount: parse_decimal(&get::<String>(&row, "amount")?, "deal amount")?,
            currency: get(&row, "currency")?,
            closed_at: get(&row, "closed_at")?,
            updated_at: get(&row, "updated_at")?,
            created_at: get(&row, "created_at")?,
            locked,
        });
    }
    let (cond, values) = db.in_list(&column("dc"), &mirror_ids, 1);
    for row in db
        .reads()
        .query_all_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "SELECT dc.partner_id, dc.deal_id, {STORED_COLUMNS} \
                 FROM deal_commissions dc LEFT JOIN attributions a \
                   ON a.deal_id = dc.deal_id AND a.partner_id = dc.partner_id \
                 WHERE {cond} AND a.deal_id IS NULL"
            ),
            values,
        ))
        .await?
    {
        let partner_id: String = get(&row, "partner_id")?;
        if !kept(&partner_id) {
            continue;
        }
        if let Some(previous) = Stored::from_row(&row)? {
            stored.insert((partner_id, get(&row, "deal_id")?), previous);
        }
    }
    if let Scope::Tiers(partners) = &scope {
        read_unchanged_counting(db, ctx, partners, &mut timelines, &mut stored).await?;
    }
    // A full run checks every pair against the ledger; an incremental one trusts that the
    // ledger holds what was last computed (both are written in one transaction) and reads the
    // ledger only for pairs whose expectation moved.
    let mut booked = if ctx.verify_all {
        read_booked(db, &column("le"), &mirror_ids).await?
    } else {
        HashMap::new()
    };
    stats.timings.read += started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    // Compute every pair.
    let mut results: Vec<Pair> = Vec::new();
    let mut attributed: HashSet<(String, String)> = HashSet::new();
    for (partner_id, deals) in &timelines {
        let Some((program_id, terminated_at)) = ctx.partners.get(partner_id) else {
            continue;
        };
        let Some((terms, _)) = ctx.terms.get(program_id) else {
            continue;
        };
        let outcomes = compute_timeline(terms, &ctx.rates, *terminated_at, deals, ctx.now);
        for (deal, outcome) in deals.iter().zip(outcomes) {
            attributed.insert((partner_id.clone(), deal.id.clone()));
            results.push(Pair {
                program_id: program_id.clone(),
                partner_id: partner_id.clone(),
                outcome,
                status: deal.status,
                created_at: deal.created_at,
            });
        }
    }
    // Pairs the ledger or the last computation knows whose deal is attributed elsewhere now.
    let detached: BTreeSet<(String, String)> = stored
        .keys()
        .chain(booked.keys())
        .filter(|k| !attributed.contains(*k))
        .cloned()
        .collect();
    for (partner_id, deal_id) in detached {
        let Some((program_id, _)) = ctx.partners.get(&partner_id) else {
            continue;
        };
        let previous = stored.get(&(partner_id.clone(), deal_id.clone()));
        let status = previous
            .and_then(|p| DealStatus::parse(&p.deal_status))
            .unwrap_or(DealStatus::Open);
        results.push(Pair {
            program_id: program_id.clone(),
            partner_id,
            outcome: Outcome {
                deal_id,
                state: CommissionState::Detached,
                expected: Decimal::ZERO,
                amount_program: previous
                    .and_then(|p| p.amount_program.as_deref())
                    .and_then(|a| a.parse().ok()),
                closed_at: previous.and_then(|p| p.closed_at),
            },
            status,
            created_at: previous.map_or(ctx.now, |p| p.created_at),
        });
    }

    // Which pairs must be compared with the ledger.
    let needs_check = |partner_id: &str, outcome: &Outcome| -> bool {
        if !outcome.state.writable() {
            return false;
        }
        if ctx.verify_all {
            return true;
        }
        let expected_cents = to_cents(outcome.expected).unwrap_or(0);
        stored
            .get(&(partner_id.to_string(), outcome.deal_id.clone()))
            .is_none_or(|p| {
                // A pair left alone last time (no rate) may differ from the ledger.
                p.expected_cents != expected_cents || !p.state.writable()
            })
    };
    if !ctx.verify_all {
        let mut need: Vec<String> = results
            .iter()
            .filter(|pair| needs_check(&pair.partner_id, &pair.outcome))
            .map(|pair| pair.outcome.deal_id.clone())
            .collect();
        need.sort();
        need.dedup();
        booked = read_booked(db, "le.deal_id", &need).await?;
    }

    // Decide what to write.
    let mut entries: Vec<NewEntry> = Vec::new();
    let mut commissions: Vec<((String, String), deal_commission::ActiveModel)> = Vec::new();
    for Pair {
        program_id,
        partner_id,
        outcome,
        status,
        created_at,
    } in results
    {
        stats.deals_checked += 1;
        match outcome.state {
            CommissionState::Locked => stats.locked += 1,
            CommissionState::MissingFxRate => stats.missing_exchange_rates += 1,
            CommissionState::Invalid => stats.invalid += 1,
            _ => {}
        }
        let key = (partner_id.clone(), outcome.deal_id.clone());
        let expected_cents = to_cents(outcome.expected).unwrap_or(0);
        let amount_program = outcome.amount_program.map(|a| a.normalize().to_string());
        let amount_program_cents = outcome.amount_program.and_then(to_cents);
        let status_text = status.as_str().to_string();
        let previous = stored.get(&key);
        let changed = previous.is_none_or(|p| {
            p.state != outcome.state
                || p.expected_cents != expected_cents
                || p.amount_program != amount_program
                || p.deal_status != status_text
                || p.closed_at != outcome.closed_at
                || p.created_at != created_at
        });
        if changed {
            commissions.push((
                key.clone(),
                deal_commission::ActiveModel {
                    deal_id: Set(outcome.deal_id.clone()),
                    partner_id: Set(partner_id.clone()),
                    program_id: Set(program_id.clone()),
                    amount_program: Set(amount_program),
                    amount_program_cents: Set(amount_program_cents),
                    deal_status: Set(status_text),
                    closed_at: Set(outcome.closed_at),
                    deal_created_at: Set(created_at),
                    state: Set(outcome.state),
                    expected_cents: Set(expected_cents),
                    computed_at: Set(ctx.now),
                },
            ));
        }
        if !needs_check(&partner_id, &outcome) {
            continue;
        }
        let have = booked.get(&key).cloned().unwrap_or_default();
        let Some(diff) = expected_cents.checked_sub(have.cents) else {
            stats.invalid += 1;
            continue;
        };
        if diff != 0 {
            let (terms, hold_days) = &ctx.terms[&program_id];
            entries.push(NewEntry {
                id: new_id(),
                partner_id,
                program_id,
                deal_id: outcome.deal_id,
                cents: diff,
                currency: terms.currency.clone(),
                hold_days: *hold_days,
                seq: have.max_seq + 1,
            });
        }
    }
    stats.timings.compute += started.elapsed().as_secs_f64();
    if entries.is_empty() && commissions.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    write(db, ctx, entries, commissions, stats).await?;
    stats.timings.write += started.elapsed().as_secs_f64();
    Ok(())
}

/// An entry to append.
struct NewEntry {
    id: String,
    partner_id: String,
    program_id: String,
    deal_id: String,
    cents: i64,
    currency: String,
    hold_days: i32,
    seq: i32,
}

async fn write(
    db: &Db,
    ctx: &Context,
    entries: Vec<NewEntry>,
    commissions: Vec<((String, String), deal_commission::ActiveModel)>,
    stats: &mut ReconcileStats,
) -> Result<(), DbErr> {
    let tx = db.begin_write().await?;
    let now = ctx.now;
    let mut inserted: HashSet<String> = HashSet::new();
    for chunk in entries.chunks(500) {
        let rows: Vec<ledger_entry::ActiveModel> = chunk
            .iter()
            .map(|e| {
                let (kind, status, available) = entry_terms(e, now);
                ledger_entry::ActiveModel {
                    id: Set(e.id.clone()),
                    partner_id: Set(e.partner_id.clone()),
                    program_id: Set(e.program_id.clone()),
                    deal_id: Set(Some(e.deal_id.clone())),
                    payout_id: Set(None),
                    kind: Set(kind),
                    amount_cents: Set(e.cents),
                    currency: Set(e.currency.clone()),
                    status: Set(status),
                    created_at: Set(now),
                    available_at: Set(available),
                    updated_at: Set(now),
                    deal_seq: Set(Some(e.seq)),
                }
            })
            .collect();
        let affected = ledger_entry::Entity::insert_many(rows)
            .on_conflict(
                OnConflict::columns([
                    ledger_entry::Column::PartnerId,
                    ledger_entry::Column::DealId,
                    ledger_entry::Column::DealSeq,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(&*tx)
            .await?;
        let ids: Vec<String> = chunk.iter().map(|e| e.id.clone()).collect();
        if affected == chunk.len() as u64 {
            inserted.extend(ids);
        } else {
            // Some collided with another reconciler's entries: find which of ours are in.
            let (cond, values) = db.in_list("id", &ids, 1);
            for row in tx
                .query_all_raw(Statement::from_sql_and_values(
                    db.backend(),
                    format!("SELECT id FROM ledger_entries WHERE {cond}"),
                    values,
                ))
                .await?
            {
                inserted.insert(get(&row, "id")?);
            }
        }
    }
    let mut buffered = Vec::new();
    let mut conflicted: HashSet<(String, String)> = HashSet::new();
    for e in &entries {
        if !inserted.contains(&e.id) {
            // Another reconciler wrote this pair's entry first. Its computation is not
            // recorded as ours, so the next run compares the pair with the ledger again.
            stats.conflicts += 1;
            conflicted.insert((e.partner_id.clone(), e.deal_id.clone()));
            continue;
        }
        let (kind, status, available) = entry_terms(e, now);
        let amount = from_cents(e.cents);
        stats.entries_written += 1;
        stats.total_drift += amount.abs();
        let event_type = if e.cents > 0 {
            stats.accrued += amount;
            EventType::CommissionAccrued
        } else {
            stats.reversed += amount;
            EventType::CommissionReversed
        };
        buffered.push(events::new_event(
            event_type,
            &e.program_id,
            Some(&e.partner_id),
            json!({
                "ledgerEntryId": e.id,
                "dealId": e.deal_id,
                "kind": kind.as_str(),
                "amount": amount.to_string(),
                "currency": e.currency,
                "status": status.as_str(),
                "availableAt": available,
            }),
        ));
    }
    let commissions: Vec<deal_commission::ActiveModel> = commissions
        .into_iter()
        .filter(|(key, _)| !conflicted.contains(key))
        .map(|(_, model)| model)
        .collect();
    stats.computations_updated += commissions.len() as u64;
    for chunk in commissions.chunks(500) {
        deal_commission::Entity::insert_many(chunk.to_vec())
            .on_conflict(
                OnConflict::columns([
                    deal_commission::Column::DealId,
                    deal_commission::Column::PartnerId,
                ])
                .update_columns([
                    deal_commission::Column::ProgramId,
                    deal_commission::Column::AmountProgram,
                    deal_commission::Column::AmountProgramCents,
                    deal_commission::Column::DealStatus,
                    deal_commission::Column::ClosedAt,
                    deal_commission::Column::DealCreatedAt,
                    deal_commission::Column::State,
                    deal_commission::Column::ExpectedCents,
                    deal_commission::Column::ComputedAt,
                ])
                .to_owned(),
            )
            .exec_without_returning(&*tx)
            .await?;
    }
    events::record_all(&*tx, buffered).await?;
    tx.commit().await
}

/// Kind, status and availability of a new entry: accruals are held `holdDays` (APPROVED at
/// once without a hold), reversals are APPROVED at once.
fn entry_terms(
    e: &NewEntry,
    now: DateTime<Utc>,
) -> (LedgerEntryKind, LedgerEntryStatus, DateTime<Utc>) {
    if e.cents > 0 {
        let available = now + Duration::days(i64::from(e.hold_days));
        let status = if available <= now {
            LedgerEntryStatus::Approved
        } else {
            LedgerEntryStatus::Pending
        };
        (LedgerEntryKind::Accrual, status, available)
    } else {
        (LedgerEntryKind::Reversal, LedgerEntryStatus::Approved, now)
    }
}

/// Moves PENDING entries whose `availableAt` has passed to APPROVED; returns how many.
pub async fn release_holds(db: &Db) -> Result<u64, DbErr> {
    let now = Utc::now();
    db.execute_write(
        format!(
            "UPDATE ledger_entries SET status = 'APPROVED', updated_at = {} \
             WHERE status = 'PENDING' AND available_at <= {}",
            db.placeholder(1),
            db.placeholder(2)
        ),
        vec![now.into(), now.into()],
    )
    .await
}
