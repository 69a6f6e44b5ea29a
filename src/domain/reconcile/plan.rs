//! Planning a chunk, without the database: every pair's outcome (through the commission
//! rules of `commission.rs`), which pairs to check against the ledger, and the entries and
//! `deal_commissions` rows to write.

use super::*;

/// One computed (deal, partner).
pub(super) struct Pair {
    pub(super) program_id: String,
    pub(super) partner_id: String,
    pub(super) outcome: Outcome,
    pub(super) status: DealStatus,
    pub(super) created_at: DateTime<Utc>,
}

/// What the ledger holds for one (partner, deal): the sum of its entries and the highest entry
/// number (the next entry is `max_seq + 1`).
#[derive(Default, Clone)]
pub(super) struct Booked {
    pub(super) cents: i64,
    pub(super) max_seq: i32,
}

/// What an entry is for: a deal, or an invoice (recurring commission).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Subject {
    Deal(String),
    Invoice(String),
}

/// An entry to append.
pub(super) struct NewEntry {
    pub(super) id: String,
    pub(super) partner_id: String,
    pub(super) program_id: String,
    pub(super) subject: Subject,
    pub(super) cents: i64,
    pub(super) currency: String,
    pub(super) hold_days: i32,
    pub(super) seq: i32,
    /// Held for a manager (set by the writer, [`super::write::apply_holds`]).
    pub(super) hold: Option<HoldReason>,
}

/// Computes every pair of a chunk: the partners' timelines, then DETACHED for the pairs the
/// ledger or the last computation knows whose deal is attributed elsewhere now.
pub(super) fn pairs(
    ctx: &Context,
    timelines: &BTreeMap<String, Vec<DealFacts>>,
    stored: &HashMap<(String, String), Stored>,
    booked: &HashMap<(String, String), Booked>,
) -> Vec<Pair> {
    let mut results: Vec<Pair> = Vec::new();
    let mut attributed: HashSet<(String, String)> = HashSet::new();
    for (partner_id, deals) in timelines {
        let Some((program_id, terminated_at)) = ctx.partners.get(partner_id) else {
            continue;
        };
        let Some((terms, _)) = ctx.terms.get(program_id) else {
            continue;
        };
        let periods = ctx.periods.get(partner_id).map_or(&[][..], Vec::as_slice);
        let outcomes =
            compute_in_groups(terms, periods, &ctx.rates, *terminated_at, deals, ctx.now);
        for (deal, mut outcome) in deals.iter().zip(outcomes) {
            attributed.insert((partner_id.clone(), deal.id.clone()));
            if ctx
                .declined
                .contains(&(partner_id.clone(), Subject::Deal(deal.id.clone())))
            {
                // A manager declined it: 0 whatever the deal does next.
                outcome.state = CommissionState::Declined;
                outcome.expected = Decimal::ZERO;
            }
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
                hold_days: None,
            },
            status,
            created_at: previous.map_or(ctx.now, |p| p.created_at),
        });
    }

    results
}

/// Whether a pair must be compared with the ledger: a writable state, and on incremental runs
/// only when its expectation moved (or it was left alone last time).
pub(super) fn needs_check(
    ctx: &Context,
    stored: &HashMap<(String, String), Stored>,
    partner_id: &str,
    outcome: &Outcome,
) -> bool {
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
}

/// The deals whose ledger an incremental run must read.
pub(super) fn deals_to_check(
    ctx: &Context,
    stored: &HashMap<(String, String), Stored>,
    results: &[Pair],
) -> Vec<String> {
    let mut need: Vec<String> = results
        .iter()
        .filter(|pair| needs_check(ctx, stored, &pair.partner_id, &pair.outcome))
        .map(|pair| pair.outcome.deal_id.clone())
        .collect();
    need.sort();
    need.dedup();
    need
}

/// A `deal_commissions` row to write, keyed by (partner, deal).
pub(super) type CommissionRow = ((String, String), deal_commission::ActiveModel);

/// What to write for a chunk: the ledger entries that bring each checked pair to its expected
/// commission, and the `deal_commissions` rows that changed.
pub(super) fn decide(
    ctx: &Context,
    results: Vec<Pair>,
    stored: &HashMap<(String, String), Stored>,
    booked: &HashMap<(String, String), Booked>,
    stats: &mut ReconcileStats,
) -> (Vec<NewEntry>, Vec<CommissionRow>) {
    let mut entries: Vec<NewEntry> = Vec::new();
    let mut commissions: Vec<CommissionRow> = Vec::new();
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
                    deal_status: Set(status.into()),
                    closed_at: Set(outcome.closed_at),
                    deal_created_at: Set(created_at),
                    state: Set(outcome.state),
                    expected_cents: Set(expected_cents),
                    computed_at: Set(ctx.now),
                },
            ));
        }
        if !needs_check(ctx, stored, &partner_id, &outcome) {
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
                subject: Subject::Deal(outcome.deal_id),
                cents: diff,
                currency: terms.currency.clone(),
                hold_days: outcome.hold_days.unwrap_or(*hold_days),
                seq: have.max_seq + 1,
                hold: None,
            });
        }
    }
    (entries, commissions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::programs::{CommissionPlan, CommissionType};

    /// One program paying 10 %, one partner, one won deal of 1,000.
    fn setup(verify_all: bool) -> (Context, BTreeMap<String, Vec<DealFacts>>) {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let plan = CommissionPlan {
            commission_type: CommissionType::Percent,
            rate: Some(Decimal::from(10)),
            flat_amount: None,
            tiers: Vec::new(),
            cap_per_deal: None,
            min_deal_amount: None,
            recurring: None,
        };
        let ctx = Context {
            terms: HashMap::from([(
                "prog".to_string(),
                (
                    Terms {
                        plan,
                        currency: "USD".into(),
                    },
                    30,
                ),
            )]),
            programs: HashMap::new(),
            periods: HashMap::new(),
            tiered_groups: HashSet::new(),
            declined: HashSet::new(),
            rates: Rates::default(),
            partners: HashMap::from([("part".to_string(), ("prog".to_string(), None))]),
            now,
            verify_all,
        };
        let deal = DealFacts {
            id: "deal".into(),
            status: DealStatus::Won,
            amount: Decimal::from(1000),
            currency: "USD".into(),
            closed_at: Some(now - Duration::days(1)),
            updated_at: now,
            created_at: now - Duration::days(10),
            locked: None,
            recurring: false,
        };
        (ctx, BTreeMap::from([("part".to_string(), vec![deal])]))
    }

    #[test]
    fn a_new_won_deal_accrues_its_commission_once() {
        let (ctx, timelines) = setup(true);
        let mut stats = ReconcileStats::default();
        let results = pairs(&ctx, &timelines, &HashMap::new(), &HashMap::new());
        assert_eq!(results.len(), 1);
        let (entries, rows) = decide(&ctx, results, &HashMap::new(), &HashMap::new(), &mut stats);
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].cents, entries[0].seq), (10_000, 1));
        assert_eq!(rows.len(), 1);
        // Booked already: nothing more to append, and an unchanged row is not rewritten.
        let booked = HashMap::from([(
            ("part".to_string(), "deal".to_string()),
            Booked {
                cents: 10_000,
                max_seq: 1,
            },
        )]);
        let results = pairs(&ctx, &timelines, &HashMap::new(), &booked);
        let (entries, _) = decide(&ctx, results, &HashMap::new(), &booked, &mut stats);
        assert!(entries.is_empty());
    }

    #[test]
    fn a_pair_attributed_elsewhere_is_detached_and_reversed() {
        let (ctx, _) = setup(true);
        let booked = HashMap::from([(
            ("part".to_string(), "gone".to_string()),
            Booked {
                cents: 5_000,
                max_seq: 2,
            },
        )]);
        let results = pairs(&ctx, &BTreeMap::new(), &HashMap::new(), &booked);
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].outcome.state, CommissionState::Detached);
        let mut stats = ReconcileStats::default();
        let (entries, _) = decide(&ctx, results, &HashMap::new(), &booked, &mut stats);
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].cents, entries[0].seq), (-5_000, 3));
    }

    #[test]
    fn an_incremental_run_checks_only_moved_expectations() {
        let (ctx, timelines) = setup(false);
        let stored = HashMap::from([(
            ("part".to_string(), "deal".to_string()),
            Stored {
                state: CommissionState::Earned,
                expected_cents: 10_000,
                amount_program: Some("1000".into()),
                deal_status: "WON".into(),
                closed_at: None,
                created_at: ctx.now,
            },
        )]);
        let results = pairs(&ctx, &timelines, &stored, &HashMap::new());
        assert!(deals_to_check(&ctx, &stored, &results).is_empty());
        assert_eq!(
            deals_to_check(&ctx, &HashMap::new(), &results),
            ["deal".to_string()]
        );
    }
}
