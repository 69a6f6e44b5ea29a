//! Reading what a run needs: what changed since the last run, a chunk's deals with what was
//! last computed for them, and what the ledger holds.

use super::*;
use crate::{
    db::{ByName, FromColumn},
    domain::deals::AttributionMethod,
};

pub(super) fn get<T: FromColumn + sea_orm::TryGetable>(
    row: &impl ByName,
    col: &str,
) -> Result<T, DbErr> {
    row.by_name(col)
}

/// The ledger, as [`read_booked`] reads it by partner or deal.
pub(super) const LEDGER: &str = "ledger_entries le";
/// The ledger reached through invoices (`i.id`): the index over an invoice's entries leads
/// with the partner, which is the invoice's.
pub(super) const INVOICE_LEDGER: &str =
    "invoices i JOIN ledger_entries le ON le.partner_id = i.partner_id AND le.invoice_id = i.id";

/// What the ledger holds per (partner, subject) for the pairs of these partners or subjects:
/// `subject` is `deal` or `invoice` (the entries' `{subject}_id` and `{subject}_seq`), `from`
/// [`LEDGER`] with `column` `le.partner_id` or `le.deal_id`, or [`INVOICE_LEDGER`] with `i.id`.
pub(super) async fn read_booked(
    db: &Db,
    subject: &str,
    from: &str,
    column: &str,
    ids: &[String],
) -> Result<HashMap<(String, String), Booked>, DbErr> {
    let mut booked = HashMap::new();
    for chunk in ids.chunks(DEAL_CHUNK) {
        let (cond, values) = db.in_list(column, chunk, 1);
        for row in db
            .records(
                format!(
                    "SELECT le.partner_id, le.{subject}_id AS subject_id, \
                     CAST(SUM(le.amount_cents) AS BIGINT) AS cents, \
                     CAST(COALESCE(MAX(le.{subject}_seq), 0) AS BIGINT) AS max_seq \
                     FROM {from} WHERE {cond} AND le.{subject}_id IS NOT NULL \
                     AND le.kind IN {COMMISSION_KINDS} GROUP BY le.partner_id, le.{subject}_id"
                ),
                values,
            )
            .await?
        {
            let cents: Option<i64> = get(&row, "cents")?;
            let max_seq: i64 = get::<Option<i64>>(&row, "max_seq")?.unwrap_or(0);
            booked.insert(
                (get(&row, "partner_id")?, get(&row, "subject_id")?),
                Booked {
                    cents: cents.unwrap_or(0),
                    max_seq: i32::try_from(max_seq).unwrap_or(i32::MAX),
                },
            );
        }
    }
    Ok(booked)
}

/// The `deal_commissions` columns [`Stored::from_row`] reads (table alias `dc`).
pub(super) const STORED_COLUMNS: &str = "dc.state AS dc_state, dc.expected_cents AS dc_expected, \
    dc.amount_program AS dc_amount, dc.deal_status AS dc_status, dc.closed_at AS dc_closed, \
    dc.deal_created_at AS dc_created";

/// What the last run computed for a (deal, partner).
pub(super) struct Stored {
    pub(super) state: CommissionState,
    pub(super) expected_cents: i64,
    pub(super) amount_program: Option<String>,
    pub(super) deal_status: String,
    pub(super) closed_at: Option<DateTime<Utc>>,
    pub(super) created_at: DateTime<Utc>,
}

impl Stored {
    /// From the `dc_*` columns of a `deal_commissions` row.
    fn from_row(row: &impl ByName) -> Result<Stored, DbErr> {
        Ok(Stored {
            state: get(row, "dc_state")?,
            expected_cents: get(row, "dc_expected")?,
            amount_program: get(row, "dc_amount")?,
            deal_status: get(row, "dc_status")?,
            closed_at: get(row, "dc_closed")?,
            created_at: get(row, "dc_created")?,
        })
    }
}

/// What an incremental run recomputes.
#[derive(Default)]
pub(super) struct Changes {
    /// Partners recomputed from the mirror (termination, plan or rate changes).
    pub(super) whole: BTreeSet<String>,
    /// Partners of tiered programs whose changed deals (the values) move their tiers: the
    /// changed deals are read from the mirror, the others from what the last run computed.
    pub(super) tiers: BTreeMap<String, BTreeSet<String>>,
    /// Single deals (their commission depends on no other deal).
    pub(super) deals: BTreeSet<String>,
}

/// What changed after `since`.
pub(super) async fn changed_since(
    db: &Db,
    ctx: &Context,
    since: DateTime<Utc>,
) -> Result<Changes, DbErr> {
    let p1 = db.numbered(1);
    let mut partners = BTreeSet::new();
    // (deal, partner concerned, program, whether the deal counts towards the partner's
    // revenue or is credited on it: WON, or LOCKED, before or after the change).
    let mut pairs: Vec<(String, Option<String>, String, bool)> = Vec::new();
    let rows = db
        .records(
            format!(
                "SELECT d.id AS deal_id, a.partner_id AS partner_id, d.program_id AS program_id, \
                 d.status AS status, d.deleted AS deleted, d.locked_closed_at AS locked \
                 FROM deals d LEFT JOIN attributions a ON a.deal_id = d.id \
                 WHERE d.last_applied_at > {p1} \
                 UNION SELECT a.deal_id, a.partner_id, d.program_id, d.status, d.deleted, \
                 d.locked_closed_at FROM attributions a JOIN deals d ON d.id = a.deal_id \
                 WHERE a.updated_at > {p1}"
            ),
            vec![since.into()],
        )
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
            .records(
                format!(
                    "SELECT deal_id, partner_id, program_id, deal_status, state \
                     FROM deal_commissions WHERE {cond}"
                ),
                values,
            )
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
    // (Also whole: partners whose group history changed — a promotion, a demotion, a manual
    // placement — since their deals may be computed with another group's plan, partners a
    // manager declined a commission of, and the partners of a program one of whose groups
    // changed.)
    for sql in [
        "SELECT id AS partner_id FROM partners WHERE updated_at > {p1}",
        "SELECT DISTINCT partner_id FROM partner_group_memberships WHERE created_at > {p1}",
        // No DISTINCT: with it SQLite scans an index in partner order instead of the
        // (nearly empty) partial index of declines.
        "SELECT partner_id FROM ledger_entries WHERE declines > '' AND created_at > {p1}",
    ] {
        for row in db.records(sql.replace("{p1}", &p1), since_value()).await? {
            partners.insert(get(&row, "partner_id")?);
        }
    }
    for sql in [
        "SELECT id AS program_id FROM programs WHERE updated_at > {p1}",
        "SELECT DISTINCT program_id FROM partner_groups WHERE updated_at > {p1}",
    ] {
        for row in db.records(sql.replace("{p1}", &p1), since_value()).await? {
            let program_id: String = get(&row, "program_id")?;
            partners.extend(
                ctx.partners
                    .iter()
                    .filter(|(_, (p, _))| *p == program_id)
                    .map(|(id, _)| id.clone()),
            );
        }
    }
    for row in db
        .records(
            format!("SELECT DISTINCT base, quote FROM exchange_rates WHERE created_at > {p1}"),
            since_value(),
        )
        .await?
    {
        // A rate converts directly, inverted, or as one leg of a cross rate: any deal whose
        // currency, or whose program's currency, is one of the pair's may now convert
        // differently (a superset; rates change rarely).
        let pair: [String; 2] = [get(&row, "base")?, get(&row, "quote")?];
        for (program_id, (terms, _)) in &ctx.terms {
            let (condition, values) = if pair.contains(&terms.currency) {
                (
                    format!(
                        "(d.currency <> {p2} OR d.locked_currency <> {p2})",
                        p2 = db.numbered(2)
                    ),
                    vec![program_id.clone().into(), terms.currency.clone().into()],
                )
            } else {
                (
                    format!(
                        "(d.currency IN ({p2}, {p3}) OR d.locked_currency IN ({p2}, {p3}))",
                        p2 = db.numbered(2),
                        p3 = db.numbered(3)
                    ),
                    vec![
                        program_id.clone().into(),
                        pair[0].clone().into(),
                        pair[1].clone().into(),
                    ],
                )
            };
            for row in db
                .records(
                    format!(
                        "SELECT DISTINCT a.partner_id FROM deals d \
                     JOIN attributions a ON a.deal_id = d.id \
                     WHERE d.program_id = {} AND {condition}",
                        db.numbered(1),
                    ),
                    values,
                )
                .await?
            {
                partners.insert(get(&row, "partner_id")?);
            }
        }
    }
    tiers.retain(|partner_id, _| !partners.contains(partner_id));
    // A deal whose partners are all recomputed whole needs no pass of its own. (Tier
    // propagation recomputes only a partner's deals that count towards its tiers: a partner's
    // other changed deals, an open deal now lost say, still need theirs.)
    let deals = deals
        .into_iter()
        .filter(|(_, concerned)| concerned.iter().any(|p| !partners.contains(p)))
        .map(|(deal_id, _)| deal_id)
        .collect();
    Ok(Changes {
        whole: partners,
        tiers,
        deals,
    })
}

pub(super) fn parse_decimal(text: &str, what: &str) -> Result<Decimal, DbErr> {
    text.parse()
        .map_err(|e| DbErr::Custom(format!("stored {what} {text:?}: {e}")))
}

/// Tier propagation: the partners' deals that did not change since the last run and count
/// towards their tiers (WON, or LOCKED on a won snapshot), rebuilt from what the last run
/// computed (amounts already in the program currency) instead of the mirror, through the
/// narrow reconciler rows.
pub(super) async fn read_unchanged_counting(
    db: &Db,
    ctx: &Context,
    partners: &[(String, BTreeSet<String>)],
    timelines: &mut BTreeMap<String, Vec<DealFacts>>,
    stored: &mut HashMap<(String, String), Stored>,
) -> Result<(), DbErr> {
    let changed: HashMap<&String, &BTreeSet<String>> =
        partners.iter().map(|(p, d)| (p, d)).collect();
    let ids: Vec<String> = partners.iter().map(|(p, _)| p.clone()).collect();
    // The partners' deals attributed as their customers' (recurring), then their counting
    // computations: two statements, each through its own index (joined, PostgreSQL hashes
    // every attribution).
    let (cond, mut values) = db.in_list("partner_id", &ids, 1);
    values.push(AttributionMethod::Customer.as_str().into());
    let customer: HashSet<(String, String)> = db
        .records(
            format!(
                "SELECT partner_id, deal_id FROM attributions WHERE {cond} AND method = {}",
                db.placeholder(values.len())
            ),
            values,
        )
        .await?
        .iter()
        .map(|row| Ok((get(row, "partner_id")?, get(row, "deal_id")?)))
        .collect::<Result<_, DbErr>>()?;
    let (cond, values) = db.in_list("dc.partner_id", &ids, 1);
    let rows = db
        .records(
            format!(
                "SELECT dc.partner_id, dc.deal_id, {STORED_COLUMNS} FROM deal_commissions dc \
                 WHERE {cond} AND dc.state <> 'DETACHED' \
                   AND (dc.deal_status = 'WON' OR dc.state = 'LOCKED')"
            ),
            values,
        )
        .await?;
    for row in rows {
        let partner_id: String = get(&row, "partner_id")?;
        let deal_id: String = get(&row, "deal_id")?;
        let recurring = customer.contains(&(partner_id.clone(), deal_id.clone()));
        if changed
            .get(&partner_id)
            .is_some_and(|deals| deals.contains(&deal_id))
        {
            continue;
        }
        let previous = Stored::from_row(&row)?;
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
                recurring,
            });
        stored.insert((partner_id, deal_id), previous);
    }
    Ok(())
}

/// What one chunk reads: the attributed deals in scope per partner (their timelines), what
/// the last run computed for them, and (full runs) what the ledger holds.
pub(super) struct ScopeRead {
    /// Deal facts per partner, in the order the reconciler computes them.
    pub timelines: BTreeMap<String, Vec<DealFacts>>,
    /// What the last run computed, per (partner, deal).
    pub stored: HashMap<(String, String), Stored>,
    /// What the ledger holds per (partner, deal) (full runs; empty on incremental ones).
    pub booked: HashMap<(String, String), Booked>,
}

/// Reads one chunk (`None` when the scope is empty).
pub(super) async fn read_scope(
    db: &Db,
    ctx: &Context,
    scope: &Scope<'_>,
    stats: &mut ReconcileStats,
) -> Result<Option<ScopeRead>, DbErr> {
    // What is read from the mirror: the scope's partners or deals, or for tier propagation the
    // changed deals. Of what is read, a tier chunk keeps its partners' pairs, a per-deal chunk
    // all but those of the partners computed whole.
    let skip = match scope {
        Scope::Deals { skip, .. } => Some(*skip),
        _ => None,
    };
    let (by_deal, mirror_ids, keep): (bool, Vec<String>, Option<HashSet<&String>>) = match scope {
        Scope::Partners(ids) => {
            stats.partners += ids.len() as u64;
            (false, ids.to_vec(), None)
        }
        Scope::Deals { ids, .. } => (true, ids.to_vec(), None),
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
        return Ok(None);
    }
    let kept = |partner_id: &String| {
        keep.as_ref().is_none_or(|k| k.contains(partner_id))
            && skip.is_none_or(|s| !s.contains(partner_id))
    };
    let column = |table: &str| {
        if by_deal {
            format!("{table}.deal_id")
        } else {
            format!("{table}.partner_id")
        }
    };
    // The attributed deals in scope, by partner (one statement), then everything last computed
    // for the scope's partners or deals (one statement, through the computations' own index):
    // the pairs still attributed and those whose deal is now attributed elsewhere. (Joined to
    // the mirror instead, PostgreSQL hashes whole tables for each chunk.)
    let (cond, values) = db.in_list(&column("a"), &mirror_ids, 1);
    let rows = db
        .records(
            format!(
                "SELECT a.partner_id, a.method, d.id, d.amount, d.currency, d.status, \
                 d.deleted, d.closed_at, d.updated_at, d.created_at, d.locked_amount, \
                 d.locked_currency, d.locked_closed_at \
                 FROM attributions a JOIN deals d ON d.id = a.deal_id WHERE {cond}"
            ),
            values,
        )
        .await?;
    let mut timelines: BTreeMap<String, Vec<DealFacts>> = BTreeMap::new();
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
        timelines.entry(partner_id).or_default().push(DealFacts {
            id: get(&row, "id")?,
            status,
            amount: parse_decimal(&get::<String>(&row, "amount")?, "deal amount")?,
            currency: get(&row, "currency")?,
            closed_at: get(&row, "closed_at")?,
            updated_at: get(&row, "updated_at")?,
            created_at: get(&row, "created_at")?,
            locked,
            recurring: get::<String>(&row, "method")? == AttributionMethod::Customer.as_str(),
        });
    }
    let mut stored: HashMap<(String, String), Stored> = HashMap::new();
    let (cond, values) = db.in_list(&column("dc"), &mirror_ids, 1);
    for row in db
        .records(
            format!(
                "SELECT dc.partner_id, dc.deal_id, {STORED_COLUMNS} \
                 FROM deal_commissions dc WHERE {cond}"
            ),
            values,
        )
        .await?
    {
        let partner_id: String = get(&row, "partner_id")?;
        if !kept(&partner_id) {
            continue;
        }
        stored.insert((partner_id, get(&row, "deal_id")?), Stored::from_row(&row)?);
    }
    if let Scope::Tiers(partners) = scope {
        read_unchanged_counting(db, ctx, partners, &mut timelines, &mut stored).await?;
    }
    // A full run checks every pair against the ledger; an incremental one trusts that the
    // ledger holds what was last computed (both are written in one transaction) and reads the
    // ledger only for pairs whose expectation moved.
    let booked = if ctx.verify_all {
        read_booked(db, "deal", LEDGER, &column("le"), &mirror_ids).await?
    } else {
        HashMap::new()
    };
    Ok(Some(ScopeRead {
        timelines,
        stored,
        booked,
    }))
}
