//! Reconciliation (DESIGN §4): for every attributed deal, bring the sum of its ledger entries to
//! its expected commission by appending the difference. The ledger is the truth for what was
//! booked; `deal_commissions` keeps what was last computed (for KPIs and to find the old
//! partner and close of a deal that changed).
//!
//! Work is streamed in chunks of partners (or of deals), each read with a few statements and
//! written in one transaction. Two reconcilers never write an entry twice: entry n+1 of a
//! (partner, deal) is unique, so a second reconciler that read the same state collides and
//! writes nothing for that deal.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

mod invoices;
mod plan;
mod read;
mod write;

pub use invoices::net_amount;

use plan::{Booked, NewEntry, Subject, deals_to_check, decide, pairs};
use read::{ScopeRead, Stored, changed_since, get, parse_decimal, read_booked, read_scope};
use write::write;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait, QueryOrder, Statement, Value,
    sea_query::OnConflict,
};
use serde::Serialize;
use serde_json::json;
use tandem_connectors::DealStatus;

use crate::{
    db::{
        Db,
        entities::{
            deal_commission, exchange_rate, ledger_entry, partner, partner_group_membership,
            program,
        },
    },
    domain::{
        commission::{
            Basis, CommissionState, DealFacts, GroupTerms, Outcome, Period, Rates, Terms,
            compute_in_groups, compute_timeline, from_cents, to_cents,
        },
        deals::counted_status,
        events::{self, EventType},
        groups,
        ids::new_id,
        ledger::{COMMISSION_KINDS, HoldReason, LedgerEntryKind, LedgerEntryStatus},
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
    /// Linked invoices whose recurring commission was computed.
    pub invoices_checked: u64,
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

impl ReconcileStats {
    /// Adds the counts and timings of a part of the run (a chunk read, a chunk written).
    fn add(&mut self, part: &ReconcileStats) {
        self.partners += part.partners;
        self.deals_checked += part.deals_checked;
        self.invoices_checked += part.invoices_checked;
        self.entries_written += part.entries_written;
        self.accrued += part.accrued;
        self.reversed += part.reversed;
        self.total_drift += part.total_drift;
        self.locked += part.locked;
        self.missing_exchange_rates += part.missing_exchange_rates;
        self.invalid += part.invalid;
        self.conflicts += part.conflicts;
        self.computations_updated += part.computations_updated;
        self.timings.changes += part.timings.changes;
        self.timings.read += part.timings.read;
        self.timings.compute += part.timings.compute;
        self.timings.write += part.timings.write;
    }
}

/// How many chunk writes may be in flight at once. SQLite has one writer, so one. On
/// PostgreSQL the server's work per written row (index entries, foreign-key checks, WAL) is what
/// a run waits for, and one transaction keeps one server process busy: a second one uses
/// another core (full run of the 1,000,000-deal benchmark: see BENCHMARKS.md).
fn writers(db: &Db) -> usize {
    if db.is_postgres() { 2 } else { 1 }
}

/// Runs chunks through `prepare` (read and compute) and `write`, writing prepared chunks
/// while the next one is read and computed: at most `writers` writes are in flight (on SQLite
/// one, which holds the writer), and the chunks of one call must not overlap (a chunk never
/// reads what another is still writing, and no two chunks write the same rows). Each step
/// returns its own counts, added to `stats`.
async fn pipelined<C, B, PF, WF>(
    chunks: impl IntoIterator<Item = C>,
    stats: &mut ReconcileStats,
    writers: usize,
    mut prepare: impl FnMut(C) -> PF,
    mut write: impl FnMut(B) -> WF,
) -> Result<(), DbErr>
where
    PF: Future<Output = Result<(Option<B>, ReconcileStats), DbErr>>,
    WF: Future<Output = Result<ReconcileStats, DbErr>>,
{
    use futures_util::{StreamExt, stream::FuturesUnordered};
    let writers = writers.max(1);
    let mut writing = FuturesUnordered::new();
    for chunk in chunks {
        // Read and compute this chunk while the writes in flight go on.
        let preparing = prepare(chunk);
        tokio::pin!(preparing);
        let (batch, part) = loop {
            tokio::select! {
                prepared = &mut preparing => break prepared?,
                Some(written) = writing.next(), if !writing.is_empty() => stats.add(&written?),
            }
        };
        stats.add(&part);
        // A free writer for it.
        while writing.len() >= writers {
            if let Some(written) = writing.next().await {
                stats.add(&written?);
            }
        }
        if let Some(batch) = batch {
            writing.push(write(batch));
        }
    }
    while let Some(written) = writing.next().await {
        stats.add(&written?);
    }
    Ok(())
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
    /// Writing entries, events and computations (a chunk is written while the next one is
    /// read and computed: the steps add up to more than the run took).
    pub write: f64,
}

/// Everything that does not change during a run: programs, rates, partners.
struct Context {
    terms: HashMap<String, (Terms, i32)>,
    /// The program rows (recurring period, clawback days of invoices).
    programs: HashMap<String, program::Model>,
    rates: Rates,
    partners: HashMap<String, (String, Option<DateTime<Utc>>)>,
    /// Each partner's group memberships, oldest first (DESIGN §13).
    periods: HashMap<String, Vec<Period>>,
    /// Programs with a tiered group plan.
    tiered_groups: HashSet<String>,
    /// (partner, deal or invoice) pairs a manager declined: their commission stays 0.
    declined: HashSet<(String, Subject)>,
    now: DateTime<Utc>,
    /// Full runs compare every pair with the ledger itself.
    verify_all: bool,
}

impl Context {
    async fn load(db: &Db, now: DateTime<Utc>) -> Result<Context, DbErr> {
        let mut terms = HashMap::new();
        let mut programs = HashMap::new();
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
            programs.insert(p.id.clone(), p);
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
        // Groups carry their program's recurring terms: those apply to every group.
        let mut group_terms: HashMap<String, Arc<GroupTerms>> = HashMap::new();
        let mut tiered_groups = HashSet::new();
        for group in groups::groups_of(db.reads(), None).await? {
            let mut plan = group.plan;
            if let Some((program_terms, _)) = terms.get(&group.model.program_id) {
                plan.recurring = program_terms.plan.recurring.clone();
            }
            if !plan.tiers.is_empty() {
                tiered_groups.insert(group.model.program_id.clone());
            }
            group_terms.insert(
                group.model.id,
                Arc::new(GroupTerms {
                    plan,
                    hold_days: group.model.hold_days,
                }),
            );
        }
        let mut periods: HashMap<String, Vec<Period>> = HashMap::new();
        for m in partner_group_membership::Entity::find()
            .order_by_asc(partner_group_membership::Column::Since)
            .all(db.reads())
            .await?
        {
            if let Some(group) = group_terms.get(&m.group_id) {
                periods.entry(m.partner_id).or_default().push(Period {
                    since: m.since,
                    until: m.until,
                    group: group.clone(),
                });
            }
        }
        // `declines > ''` (not `IS NOT NULL`): a range SQLite can read from the partial index
        // `idx_ledger_entries_declines` instead of scanning every entry.
        let mut declined = HashSet::new();
        for row in db
            .reads()
            .query_all_raw(Statement::from_string(
                db.backend(),
                "SELECT DISTINCT partner_id, deal_id, invoice_id FROM ledger_entries \
                 WHERE declines > ''",
            ))
            .await?
        {
            let subject = match (
                get::<Option<String>>(&row, "deal_id")?,
                get::<Option<String>>(&row, "invoice_id")?,
            ) {
                (Some(deal), _) => Subject::Deal(deal),
                (None, Some(invoice)) => Subject::Invoice(invoice),
                (None, None) => continue,
            };
            declined.insert((get(&row, "partner_id")?, subject));
        }
        Ok(Context {
            terms,
            programs,
            rates,
            partners,
            periods,
            tiered_groups,
            declined,
            now,
            verify_all: true,
        })
    }

    fn tiered(&self, program_id: &str) -> bool {
        self.tiered_groups.contains(program_id)
            || self
                .terms
                .get(program_id)
                .is_some_and(|(t, _)| !t.plan.tiers.is_empty())
    }
}

/// Which rows one chunk reads: whole partners, or single deals (of untiered programs, where
/// a deal's commission does not depend on the partner's other deals).
enum Scope<'a> {
    Partners(&'a [String]),
    /// Deals, leaving out the pairs of the partners in `skip` (computed whole elsewhere).
    Deals {
        ids: &'a [String],
        skip: &'a BTreeSet<String>,
    },
    /// Partners with the changed deals that move their tiers.
    Tiers(&'a [(String, BTreeSet<String>)]),
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
    let ctx = &ctx;
    let prepare = |scope| prepare(db, ctx, scope);
    let write = |batch| write_batch(db, ctx, batch);
    match since {
        None => {
            let mut partners: Vec<String> = ctx.partners.keys().cloned().collect();
            partners.sort();
            let chunks = partners
                .chunks(PARTNER_CHUNK)
                .map(Scope::Partners)
                .collect::<Vec<_>>();
            pipelined(chunks, &mut stats, writers(db), prepare, write).await?;
        }
        Some(since) => {
            let started = std::time::Instant::now();
            let changes = changed_since(db, ctx, since - overlap).await?;
            stats.timings.changes += started.elapsed().as_secs_f64();
            // One pipeline for the three kinds of chunk: no two chunks concern the same
            // (partner, deal) pair. Whole partners are not in the tier chunks, and the per-deal
            // chunks leave out the pairs of whole partners; a deal of the per-deal pass counts
            // towards no tiers, so no tier chunk computes it.
            let partners: Vec<String> = changes.whole.iter().cloned().collect();
            let tiers: Vec<(String, BTreeSet<String>)> = changes.tiers.into_iter().collect();
            let deals: Vec<String> = changes.deals.into_iter().collect();
            let whole = &changes.whole;
            let chunks = partners
                .chunks(PARTNER_CHUNK)
                .map(Scope::Partners)
                .chain(tiers.chunks(TIER_CHUNK).map(Scope::Tiers))
                .chain(
                    deals
                        .chunks(DEAL_CHUNK)
                        .map(|ids| Scope::Deals { ids, skip: whole }),
                )
                .collect::<Vec<_>>();
            pipelined(chunks, &mut stats, writers(db), prepare, write).await?;
        }
    }
    invoices::reconcile_invoices(db, ctx, since.map(|s| s - overlap), &mut stats).await?;
    Ok(stats)
}

/// A chunk's computed entries and `deal_commissions` rows, waiting to be written.
struct DealBatch {
    entries: Vec<NewEntry>,
    commissions: Vec<plan::CommissionRow>,
}

/// Reads and computes one chunk.
async fn prepare(
    db: &Db,
    ctx: &Context,
    scope: Scope<'_>,
) -> Result<(Option<DealBatch>, ReconcileStats), DbErr> {
    let mut stats = ReconcileStats::default();
    let started = std::time::Instant::now();
    let Some(ScopeRead {
        timelines,
        stored,
        mut booked,
    }) = read_scope(db, ctx, &scope, &mut stats).await?
    else {
        return Ok((None, stats));
    };
    stats.timings.read += started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let results = pairs(ctx, &timelines, &stored, &booked);
    // A full run checks every pair against the ledger; an incremental one trusts that the
    // ledger holds what was last computed (both are written in one transaction) and reads the
    // ledger only for pairs whose expectation moved.
    if !ctx.verify_all {
        booked = read_booked(
            db,
            "deal",
            read::LEDGER,
            "le.deal_id",
            &deals_to_check(ctx, &stored, &results),
        )
        .await?;
    }
    let (entries, commissions) = decide(ctx, results, &stored, &booked, &mut stats);
    stats.timings.compute += started.elapsed().as_secs_f64();
    let batch = (!entries.is_empty() || !commissions.is_empty()).then_some(DealBatch {
        entries,
        commissions,
    });
    Ok((batch, stats))
}

/// Writes a prepared chunk.
async fn write_batch(db: &Db, ctx: &Context, batch: DealBatch) -> Result<ReconcileStats, DbErr> {
    let mut stats = ReconcileStats::default();
    let started = std::time::Instant::now();
    write(db, ctx, batch.entries, batch.commissions, &mut stats).await?;
    stats.timings.write += started.elapsed().as_secs_f64();
    Ok(stats)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A write that counts how many are in flight, keeps the highest count seen, and takes a
    /// moment (so that writes overlap when they may).
    async fn counted_write(
        in_flight: &AtomicUsize,
        most: &AtomicUsize,
        written: &std::sync::Mutex<Vec<usize>>,
        batch: usize,
    ) -> Result<ReconcileStats, DbErr> {
        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        in_flight.fetch_sub(1, Ordering::SeqCst);
        if batch == 13 {
            return Err(DbErr::Custom("write 13 failed".into()));
        }
        written.lock().unwrap().push(batch);
        Ok(ReconcileStats {
            entries_written: 1,
            ..ReconcileStats::default()
        })
    }

    async fn run(
        chunks: usize,
        writers: usize,
    ) -> (Result<(), DbErr>, ReconcileStats, usize, Vec<usize>) {
        let (in_flight, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let written = std::sync::Mutex::new(Vec::new());
        let mut stats = ReconcileStats::default();
        let result = pipelined(
            0..chunks,
            &mut stats,
            writers,
            |chunk| async move {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                // Every third chunk has nothing to write.
                let batch = (chunk % 3 != 2).then_some(chunk);
                Ok((
                    batch,
                    ReconcileStats {
                        deals_checked: 1,
                        ..ReconcileStats::default()
                    },
                ))
            },
            |batch| counted_write(&in_flight, &most, &written, batch),
        )
        .await;
        let mut written = written.into_inner().unwrap();
        written.sort();
        (result, stats, most.into_inner(), written)
    }

    #[tokio::test]
    async fn writes_overlap_up_to_the_writers_and_every_chunk_is_counted() {
        for writers in [1, 2, 3] {
            let (result, stats, most, written) = run(12, writers).await;
            result.unwrap();
            assert_eq!(most, writers, "{writers} writer(s)");
            let expected: Vec<usize> = (0..12).filter(|c| c % 3 != 2).collect();
            assert_eq!(written, expected);
            assert_eq!(stats.deals_checked, 12);
            assert_eq!(stats.entries_written, expected.len() as u64);
        }
    }

    #[tokio::test]
    async fn a_failed_write_fails_the_run() {
        let (result, _, _, written) = run(20, 2).await;
        assert!(matches!(result, Err(DbErr::Custom(m)) if m == "write 13 failed"));
        assert!(!written.contains(&13));
    }
}
