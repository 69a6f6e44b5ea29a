//! The commission rules of DESIGN §4 as pure functions: currency conversion at the rate
//! effective when a deal closed, a partner's prior revenue over the trailing 365 days, tiers,
//! cap, minimum, termination, and rounding half away from zero once at the end. No database
//! and no floats: the reconciler feeds these the facts it read.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::{Decimal, RoundingStrategy, prelude::ToPrimitive};
use tandem_connectors::DealStatus;

pub use crate::db::states::CommissionState;
use crate::domain::programs::{CommissionPlan, CommissionType};

/// How far back a partner's won deals count towards its tier.
pub const TIER_LOOKBACK_DAYS: i64 = 365;

/// One currency pair's rates, sorted by `effective_at`.
type RateHistory = Vec<(DateTime<Utc>, Decimal)>;

/// Exchange rates by (base, quote).
#[derive(Debug, Default, Clone)]
pub struct Rates {
    by_pair: HashMap<(String, String), RateHistory>,
}

impl Rates {
    /// Adds a rate: one `base` is worth `rate` of `quote` from `effective_at` on.
    pub fn insert(&mut self, base: &str, quote: &str, effective_at: DateTime<Utc>, rate: Decimal) {
        let list = self
            .by_pair
            .entry((base.to_string(), quote.to_string()))
            .or_default();
        let at = list.partition_point(|(t, _)| *t <= effective_at);
        list.insert(at, (effective_at, rate));
    }

    /// The latest rate of exactly the pair (`base` → `quote`) with `effective_at ≤ at`.
    fn direct(&self, base: &str, quote: &str, at: DateTime<Utc>) -> Option<Leg> {
        let list = self.by_pair.get(&(base.to_string(), quote.to_string()))?;
        let n = list.partition_point(|(t, _)| *t <= at);
        (n > 0).then(|| Leg {
            base: base.to_string(),
            quote: quote.to_string(),
            rate: list[n - 1].1,
            effective_at: list[n - 1].0,
            inverted: false,
        })
    }

    /// One step from `from` to `to`: the direct pair, else the inverse pair (used as 1/rate).
    fn leg(&self, from: &str, to: &str, at: DateTime<Utc>) -> Option<Leg> {
        self.direct(from, to, at).or_else(|| {
            self.direct(to, from, at)
                .filter(|leg| !leg.rate.is_zero())
                .map(|leg| Leg {
                    inverted: true,
                    ..leg
                })
        })
    }

    /// The rates that convert `base` into `quote` at `at`, each the latest effective then: the
    /// direct pair; else its inverse (`quote` → `base`, divided by); else a cross rate through
    /// one intermediate currency, each leg direct or inverse — the intermediate with the fewest
    /// inverted legs, then the first in alphabetical order. Empty for the same currency;
    /// `None` when no such path exists.
    pub fn path(&self, base: &str, quote: &str, at: DateTime<Utc>) -> Option<Vec<Leg>> {
        if base == quote {
            return Some(Vec::new());
        }
        if let Some(leg) = self.leg(base, quote, at) {
            return Some(vec![leg]);
        }
        let mut via: Vec<&str> = self
            .by_pair
            .keys()
            .flat_map(|(b, q)| [b.as_str(), q.as_str()])
            .filter(|c| *c != base && *c != quote)
            .collect();
        via.sort_unstable();
        via.dedup();
        via.into_iter()
            .filter_map(|c| Some(vec![self.leg(base, c, at)?, self.leg(c, quote, at)?]))
            .min_by_key(|legs| legs.iter().filter(|l| l.inverted).count())
    }

    /// The rate from `base` to `quote` effective at `at` along [`Rates::path`] (1 for the same
    /// currency). For display: amounts convert leg by leg with [`Rates::convert`].
    pub fn rate_at(&self, base: &str, quote: &str, at: DateTime<Utc>) -> Option<Decimal> {
        self.convert(Decimal::ONE, base, quote, at)
    }

    /// `amount` of `base` in `quote` at `at` along [`Rates::path`], without rounding: each
    /// leg multiplies by its rate, or divides by it when inverted, so that the one rounding
    /// is the commission's at the end.
    pub fn convert(
        &self,
        amount: Decimal,
        base: &str,
        quote: &str,
        at: DateTime<Utc>,
    ) -> Option<Decimal> {
        self.path(base, quote, at)?
            .iter()
            .try_fold(amount, |amount, leg| leg.apply(amount))
    }
}

/// One exchange rate used in a conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leg {
    /// The stored pair's base currency.
    pub base: String,
    /// The stored pair's quote currency.
    pub quote: String,
    /// One `base` is worth `rate` of `quote`.
    pub rate: Decimal,
    /// From when the rate applies.
    pub effective_at: DateTime<Utc>,
    /// Whether the conversion ran quote → base (dividing by the rate).
    pub inverted: bool,
}

impl Leg {
    /// `amount` taken across this leg.
    pub fn apply(&self, amount: Decimal) -> Option<Decimal> {
        if self.inverted {
            amount.checked_div(self.rate)
        } else {
            amount.checked_mul(self.rate)
        }
    }
}

/// A program's terms as the computation needs them.
#[derive(Debug, Clone)]
pub struct Terms {
    /// The commission plan.
    pub plan: CommissionPlan,
    /// The program currency.
    pub currency: String,
}

/// A partner group's terms (DESIGN §13): its plan (with the program's recurring terms) and
/// hold period.
#[derive(Debug, Clone)]
pub struct GroupTerms {
    /// The group's commission plan.
    pub plan: CommissionPlan,
    /// Days its accruals stay pending.
    pub hold_days: i32,
}

/// One period of a partner's group membership.
#[derive(Debug, Clone)]
pub struct Period {
    /// When it began.
    pub since: DateTime<Utc>,
    /// When it ended (`None`: current).
    pub until: Option<DateTime<Utc>>,
    /// The group's terms.
    pub group: std::sync::Arc<GroupTerms>,
}

/// The group a partner was in at `at`, among its membership periods.
pub fn group_at(periods: &[Period], at: DateTime<Utc>) -> Option<&GroupTerms> {
    periods
        .iter()
        .rev()
        .find(|p| p.since <= at && p.until.is_none_or(|u| at < u))
        .map(|p| p.group.as_ref())
}

/// What a deal is credited on: its WON facts, or the WON snapshot it kept when locked.
#[derive(Debug, Clone, PartialEq)]
pub struct Basis {
    /// Deal amount in the deal currency.
    pub amount: Decimal,
    /// Deal currency.
    pub currency: String,
    /// When it closed (won).
    pub closed_at: DateTime<Utc>,
}

/// One deal of a partner's timeline, as read from the mirror.
#[derive(Debug, Clone, PartialEq)]
pub struct DealFacts {
    /// Deal id (ties on `closed_at` are broken by it).
    pub id: String,
    /// Status as counted (deleted counts LOST).
    pub status: DealStatus,
    /// Current amount and currency.
    pub amount: Decimal,
    /// Current currency.
    pub currency: String,
    /// Close time; a WON deal without one counts as closed at `updated_at`.
    pub closed_at: Option<DateTime<Utc>>,
    /// The CRM's modification time.
    pub updated_at: DateTime<Utc>,
    /// When the deal was created in the CRM (reported, not computed with).
    pub created_at: DateTime<Utc>,
    /// The WON snapshot kept by a deal LOCKED after its clawback period.
    pub locked: Option<Basis>,
    /// Attributed as a later deal of the partner's customer (`CUSTOMER`): earns the plan's
    /// recurring rate.
    pub recurring: bool,
}

impl DealFacts {
    /// The close time counted for a WON deal.
    pub fn effective_closed_at(&self) -> DateTime<Utc> {
        self.closed_at.unwrap_or(self.updated_at)
    }

    /// The basis the deal is credited on, and whether it is the locked snapshot.
    pub fn basis(&self) -> Option<(Basis, bool)> {
        if self.status == DealStatus::Won {
            return Some((
                Basis {
                    amount: self.amount,
                    currency: self.currency.clone(),
                    closed_at: self.effective_closed_at(),
                },
                false,
            ));
        }
        self.locked.clone().map(|b| (b, true))
    }
}

impl CommissionState {
    /// Whether the ledger may be brought to the expected value (false: leave it alone).
    pub fn writable(self) -> bool {
        !matches!(
            self,
            CommissionState::MissingFxRate | CommissionState::Invalid
        )
    }
}

/// The outcome for one deal of a timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Deal id.
    pub deal_id: String,
    /// Why.
    pub state: CommissionState,
    /// Expected commission, rounded to 2 places (0 unless earned or locked).
    pub expected: Decimal,
    /// The amount in program currency (exact) at the basis' close, or, for a deal with no
    /// basis, at its current close (or `now` while open); `None` without a rate.
    pub amount_program: Option<Decimal>,
    /// The close time counted.
    pub closed_at: Option<DateTime<Utc>>,
    /// The hold period of the partner's group at the close (`None`: the program's).
    pub hold_days: Option<i32>,
}

/// Rounds money to 2 places, half away from zero.
pub fn round_money(value: Decimal) -> Decimal {
    value.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// A rounded amount in cents.
pub fn to_cents(value: Decimal) -> Option<i64> {
    round_money(value)
        .checked_mul(Decimal::ONE_HUNDRED)?
        .to_i64()
}

/// Cents back to a 2-place decimal.
pub fn from_cents(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

/// The commission for a deal whose amount in program currency is `amount_p`, given the
/// partner's prior revenue (unrounded; [`round_money`] is applied by the caller).
fn raw_commission(plan: &CommissionPlan, amount_p: Decimal, prior: Decimal) -> Option<Decimal> {
    let commission = match plan.commission_type {
        CommissionType::Flat => plan.flat_amount.unwrap_or_default(),
        CommissionType::Percent => {
            let rate = plan
                .tiers
                .iter()
                .rev()
                .find(|t| t.min_revenue <= prior)
                .map(|t| t.rate)
                .or(plan.rate)
                .unwrap_or_default();
            amount_p.checked_mul(rate)? / Decimal::ONE_HUNDRED
        }
    };
    Some(match plan.cap_per_deal {
        Some(cap) if commission > cap => cap,
        _ => commission,
    })
}

/// Computes every deal of one partner's timeline in one program. `deals` are the deals
/// attributed to the partner (any order); `terminated_at` is the partner's termination;
/// `now` converts open deals for reporting.
pub fn compute_timeline(
    terms: &Terms,
    rates: &Rates,
    terminated_at: Option<DateTime<Utc>>,
    deals: &[DealFacts],
    now: DateTime<Utc>,
) -> Vec<Outcome> {
    compute_in_groups(terms, &[], rates, terminated_at, deals, now)
}

/// [`compute_timeline`] for a partner with group memberships: a deal is computed with the
/// plan of the group the partner was in when it closed (the program's plan outside any
/// group), and accrues with that group's hold period.
pub fn compute_in_groups(
    terms: &Terms,
    periods: &[Period],
    rates: &Rates,
    terminated_at: Option<DateTime<Utc>>,
    deals: &[DealFacts],
    now: DateTime<Utc>,
) -> Vec<Outcome> {
    // Each deal's basis converted into program currency.
    let converted: Vec<Option<(Basis, bool, Option<Decimal>)>> = deals
        .iter()
        .map(|d| {
            d.basis().map(|(basis, locked)| {
                let amount_p = rates.convert(
                    basis.amount,
                    &basis.currency,
                    &terms.currency,
                    basis.closed_at,
                );
                (basis, locked, amount_p)
            })
        })
        .collect();
    // The WON deals with a rate, by (closed, id), with prefix sums of their program amounts.
    let mut won: Vec<(DateTime<Utc>, &str, Decimal)> = deals
        .iter()
        .zip(&converted)
        .filter_map(|(d, c)| match c {
            Some((basis, false, Some(amount_p))) => {
                Some((basis.closed_at, d.id.as_str(), *amount_p))
            }
            _ => None,
        })
        .collect();
    won.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut prefix = Vec::with_capacity(won.len() + 1);
    prefix.push(Decimal::ZERO);
    for (_, _, amount) in &won {
        let last = *prefix.last().unwrap_or(&Decimal::ZERO);
        prefix.push(last.checked_add(*amount).unwrap_or(Decimal::MAX));
    }
    let prior_revenue = |closed: DateTime<Utc>, id: &str| -> Decimal {
        let hi = won.partition_point(|(t, i, _)| (*t, *i) < (closed, id));
        let from = closed - Duration::days(TIER_LOOKBACK_DAYS);
        let lo = won.partition_point(|(t, _, _)| *t < from);
        if lo >= hi {
            Decimal::ZERO
        } else {
            prefix[hi].checked_sub(prefix[lo]).unwrap_or(Decimal::MAX)
        }
    };
    deals
        .iter()
        .zip(converted)
        .map(|(deal, converted)| {
            let Some((basis, locked, amount_p)) = converted else {
                // No basis: earns nothing; report its amount at its close (or now).
                let at = deal.closed_at.unwrap_or(now);
                return Outcome {
                    deal_id: deal.id.clone(),
                    state: CommissionState::NotEarned,
                    expected: Decimal::ZERO,
                    amount_program: rates.convert(deal.amount, &deal.currency, &terms.currency, at),
                    closed_at: deal.closed_at,
                    hold_days: None,
                };
            };
            let group = group_at(periods, basis.closed_at);
            let deal_plan = group.map_or(&terms.plan, |g| &g.plan);
            let outcome = |state, expected| Outcome {
                deal_id: deal.id.clone(),
                state,
                expected,
                amount_program: amount_p,
                closed_at: Some(basis.closed_at),
                hold_days: group.map(|g| g.hold_days),
            };
            let Some(amount_p) = amount_p else {
                return outcome(CommissionState::MissingFxRate, Decimal::ZERO);
            };
            let earning = if locked {
                CommissionState::Locked
            } else {
                CommissionState::Earned
            };
            let below_min = deal_plan.min_deal_amount.is_some_and(|m| amount_p < m);
            let after_termination = terminated_at.is_some_and(|t| basis.closed_at >= t);
            if below_min || after_termination {
                let state = if locked {
                    CommissionState::Locked
                } else {
                    CommissionState::NotEarned
                };
                return outcome(state, Decimal::ZERO);
            }
            if terms.plan.pays_invoices() {
                // The program pays on its customers' invoices: deals carry no money themselves.
                let state = if locked {
                    CommissionState::Locked
                } else {
                    CommissionState::NotEarned
                };
                return outcome(state, Decimal::ZERO);
            }
            let prior = prior_revenue(basis.closed_at, &deal.id);
            let recurring_plan;
            let plan = if deal.recurring {
                recurring_plan = deal_plan.recurring_plan(false);
                &recurring_plan
            } else {
                deal_plan
            };
            // A commission that cannot be held in cents (only data stored before the money
            // bounds could produce one) marks the deal invalid instead of failing the run.
            match raw_commission(plan, amount_p, prior).map(round_money) {
                Some(expected) if to_cents(expected).is_some() => outcome(earning, expected),
                _ => outcome(CommissionState::Invalid, Decimal::ZERO),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::programs::Tier;
    use chrono::TimeZone;

    fn day(n: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap() + Duration::days(n)
    }

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn percent(rate: &str) -> CommissionPlan {
        CommissionPlan {
            commission_type: CommissionType::Percent,
            rate: Some(dec(rate)),
            flat_amount: None,
            tiers: vec![],
            cap_per_deal: None,
            min_deal_amount: None,
            recurring: None,
        }
    }

    fn won(id: &str, amount: &str, currency: &str, closed: i64) -> DealFacts {
        DealFacts {
            id: id.to_string(),
            status: DealStatus::Won,
            amount: dec(amount),
            currency: currency.to_string(),
            closed_at: Some(day(closed)),
            updated_at: day(closed),
            created_at: day(closed),
            locked: None,
            recurring: false,
        }
    }

    fn terms(plan: CommissionPlan) -> Terms {
        Terms {
            plan,
            currency: "USD".into(),
        }
    }

    fn expected(outcomes: &[Outcome]) -> Vec<String> {
        outcomes
            .iter()
            .map(|o| format!("{:.2}", o.expected))
            .collect()
    }

    /// Any decimal, from tiny to `Decimal::MAX`, either sign (what a database row written
    /// before the money bounds could hold).
    fn any_decimal() -> impl proptest::strategy::Strategy<Value = Decimal> {
        use proptest::prelude::*;
        (any::<i128>(), 0u32..=28).prop_map(|(m, scale)| {
            Decimal::from_i128_with_scale(m % 79_228_162_514_264_337_593_543_950_335, scale)
        })
    }

    proptest::proptest! {
        /// The commission arithmetic never panics, whatever the amounts, rates, tiers, caps and
        /// exchange rates: every deal's outcome is a commission that fits in cents, or INVALID /
        /// MISSING_FX_RATE with nothing expected.
        #[test]
        fn commission_arithmetic_never_panics(
            amounts in proptest::collection::vec(any_decimal(), 1..6),
            rate in any_decimal(),
            flat in proptest::option::of(any_decimal()),
            cap in proptest::option::of(any_decimal()),
            min in proptest::option::of(any_decimal()),
            tier in proptest::option::of((any_decimal(), any_decimal())),
            fx in any_decimal(),
        ) {
            let plan = CommissionPlan {
                commission_type: if flat.is_some() { CommissionType::Flat } else { CommissionType::Percent },
                rate: Some(rate),
                flat_amount: flat,
                tiers: tier.map(|(min_revenue, rate)| vec![Tier { min_revenue, rate }]).unwrap_or_default(),
                cap_per_deal: cap,
                min_deal_amount: min,
                recurring: None,
            };
            let mut rates = Rates::default();
            rates.insert("EUR", "USD", day(-1), fx);
            let deals: Vec<DealFacts> = amounts
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let mut deal = won(&format!("d{i}"), "0", if i % 2 == 0 { "USD" } else { "EUR" }, i as i64);
                    deal.amount = *a;
                    deal
                })
                .collect();
            for outcome in compute_timeline(&terms(plan), &rates, None, &deals, day(30)) {
                match outcome.state {
                    CommissionState::Invalid | CommissionState::MissingFxRate => {
                        proptest::prop_assert_eq!(outcome.expected, Decimal::ZERO)
                    }
                    _ => proptest::prop_assert!(to_cents(outcome.expected).is_some()),
                }
            }
        }

        /// Within the money bounds nothing is ever invalid, and cents round-trip.
        #[test]
        fn bounded_amounts_always_compute(
            cents in 0i64..100_000_000_000_000,
            rate_bp in 1i64..=10_000,
        ) {
            let amount = from_cents(cents);
            let rate = Decimal::new(rate_bp, 2);
            let out = compute_timeline(
                &terms(percent(&rate.to_string())),
                &Rates::default(),
                None,
                &[{ let mut d = won("a", "0", "USD", 1); d.amount = amount; d }],
                day(10),
            );
            proptest::prop_assert_eq!(out[0].state, CommissionState::Earned);
            proptest::prop_assert_eq!(to_cents(amount), Some(cents));
            proptest::prop_assert!(out[0].expected <= amount);
        }
    }

    #[test]
    fn percent_rounds_half_away_from_zero_once() {
        // 12.5 % of 100.10 = 12.5125 → 12.51; of 100.20 = 12.525 → 12.53.
        let out = compute_timeline(
            &terms(percent("12.5")),
            &Rates::default(),
            None,
            &[won("a", "100.10", "USD", 1), won("b", "100.20", "USD", 2)],
            day(10),
        );
        assert_eq!(expected(&out), ["12.51", "12.53"]);
    }

    #[test]
    fn tiers_use_prior_revenue_of_the_trailing_year_with_ties_by_id() {
        let mut plan = percent("10");
        plan.tiers = vec![
            Tier {
                min_revenue: dec("0"),
                rate: dec("10"),
            },
            Tier {
                min_revenue: dec("1000"),
                rate: dec("20"),
            },
        ];
        let deals = [
            won("a", "600", "USD", 0),
            // Same close as "c": "b" < "c", so "b" counts for "c" but not the reverse.
            won("b", "500", "USD", 10),
            won("c", "100", "USD", 10),
            // 366 days after "a": only b + c (600) are within the year → 10 %.
            won("d", "100", "USD", 366),
        ];
        let out = compute_timeline(&terms(plan), &Rates::default(), None, &deals, day(400));
        // a: prior 0 → 60; b: prior 600 → 50; c: prior 1100 → 20 % = 20; d: prior 600 → 10.
        assert_eq!(expected(&out), ["60.00", "50.00", "20.00", "10.00"]);
    }

    #[test]
    fn cap_minimum_flat_and_termination() {
        let mut plan = percent("20");
        plan.cap_per_deal = Some(dec("150"));
        plan.min_deal_amount = Some(dec("100"));
        let out = compute_timeline(
            &terms(plan),
            &Rates::default(),
            Some(day(5)),
            &[
                won("a", "1000", "USD", 1),
                won("b", "99.99", "USD", 2),
                won("c", "500", "USD", 3),
                won("d", "500", "USD", 5),
            ],
            day(10),
        );
        assert_eq!(expected(&out), ["150.00", "0.00", "100.00", "0.00"]);
        let flat = CommissionPlan {
            commission_type: CommissionType::Flat,
            rate: None,
            flat_amount: Some(dec("250")),
            tiers: vec![],
            cap_per_deal: Some(dec("200")),
            min_deal_amount: None,
            recurring: None,
        };
        let out = compute_timeline(
            &terms(flat),
            &Rates::default(),
            None,
            &[won("a", "1", "USD", 1)],
            day(10),
        );
        assert_eq!(expected(&out), ["200.00"]);
    }

    #[test]
    fn conversion_uses_the_rate_effective_at_close() {
        let mut rates = Rates::default();
        rates.insert("EUR", "USD", day(0), dec("1.10"));
        rates.insert("EUR", "USD", day(5), dec("1.20"));
        let out = compute_timeline(
            &terms(percent("10")),
            &rates,
            None,
            &[
                won("a", "1000", "EUR", 4),
                won("b", "1000", "EUR", 5),
                won("c", "1000", "GBP", 5),
            ],
            day(10),
        );
        assert_eq!(expected(&out), ["110.00", "120.00", "0.00"]);
        assert_eq!(out[2].state, CommissionState::MissingFxRate);
        assert_eq!(out[0].amount_program, Some(dec("1100.00")));
    }

    #[test]
    fn a_locked_deal_keeps_its_snapshot_and_stops_counting_for_tiers() {
        let mut plan = percent("10");
        plan.tiers = vec![Tier {
            min_revenue: dec("1000"),
            rate: dec("20"),
        }];
        let mut locked = won("a", "1000", "USD", 0);
        locked.status = DealStatus::Lost;
        locked.closed_at = Some(day(200));
        locked.locked = Some(Basis {
            amount: dec("1000"),
            currency: "USD".into(),
            closed_at: day(0),
        });
        let out = compute_timeline(
            &terms(plan),
            &Rates::default(),
            None,
            &[locked, won("b", "100", "USD", 10)],
            day(300),
        );
        assert_eq!(out[0].state, CommissionState::Locked);
        assert_eq!(expected(&out), ["100.00", "10.00"]);
    }

    #[test]
    fn rates_convert_directly_inverted_or_crossed_each_at_the_close() {
        let mut rates = Rates::default();
        rates.insert("EUR", "GBP", day(0), dec("0.8573"));
        rates.insert("GBP", "USD", day(0), dec("1.2719"));
        rates.insert("USD", "EUR", day(20), dec("0.9"));
        rates.insert("USD", "EUR", day(30), dec("0.8"));
        // Before any USD→EUR rate: crossed through GBP, unrounded.
        let path = rates.path("EUR", "USD", day(10)).unwrap();
        assert_eq!(
            path.iter()
                .map(|l| (l.base.as_str(), l.quote.as_str(), l.inverted))
                .collect::<Vec<_>>(),
            [("EUR", "GBP", false), ("GBP", "USD", false)]
        );
        assert_eq!(
            rates.convert(dec("1000.02"), "EUR", "USD", day(10)),
            Some(dec("1090.4216779974"))
        );
        // Then the inverse of USD→EUR, the one effective at the close: divided by it.
        let path = rates.path("EUR", "USD", day(25)).unwrap();
        assert_eq!(path.len(), 1);
        assert!(path[0].inverted);
        assert_eq!(path[0].rate, dec("0.9"));
        assert_eq!(
            rates
                .convert(dec("1000.05"), "EUR", "USD", day(25))
                .unwrap()
                .round_dp(10),
            dec("1111.1666666667")
        );
        assert_eq!(
            rates.convert(dec("100"), "EUR", "USD", day(31)),
            Some(dec("125"))
        );
        // The direct pair wins over both.
        rates.insert("EUR", "USD", day(25), dec("1.1"));
        assert_eq!(
            rates.convert(dec("100"), "EUR", "USD", day(31)),
            Some(dec("110.0"))
        );
        // A cross rate with an inverted leg: GBP→EUR through USD needs USD→EUR at the close.
        let path = rates.path("GBP", "JPY", day(31));
        assert!(path.is_none(), "no path to a currency without rates");
        assert_eq!(rates.path("USD", "USD", day(0)), Some(Vec::new()));
        assert_eq!(rates.rate_at("USD", "USD", day(0)), Some(Decimal::ONE));
    }

    #[test]
    fn a_cross_rate_prefers_direct_legs_then_the_first_currency() {
        let mut rates = Rates::default();
        // Via CHF both legs are inverted (EUR→CHF from CHF→EUR, CHF→USD from USD→CHF), via GBP
        // one: CHF comes first alphabetically, GBP wins with fewer inverted legs.
        rates.insert("CHF", "EUR", day(0), dec("1.05"));
        rates.insert("USD", "CHF", day(0), dec("0.9"));
        rates.insert("EUR", "GBP", day(0), dec("0.85"));
        rates.insert("USD", "GBP", day(0), dec("0.8"));
        let path = rates.path("EUR", "USD", day(1)).unwrap();
        assert_eq!(path[0].quote, "GBP", "{path:?}");
        assert_eq!(path.iter().filter(|l| l.inverted).count(), 1);
        // 100 EUR → 85 GBP → 85 / 0.8 = 106.25 USD.
        assert_eq!(
            rates.convert(dec("100"), "EUR", "USD", day(1)),
            Some(dec("106.25"))
        );
    }
}
