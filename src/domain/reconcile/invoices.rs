//! Recurring commissions on invoices (DESIGN §11): an invoice of a referred customer is
//! reconciled like a deal — its expected commission computed (the plan's recurring rate on its
//! amount excluding tax, net of refunds and credit notes, converted at the rate effective when
//! it was paid, nothing once the customer's recurring period is over), the difference with
//! the ledger appended as entries that point at the invoice, each (partner, invoice, number)
//! unique so that two reconcilers never book twice.
//!
//! A refund or credit note dated more than `clawbackDays` after the payment is not reversed:
//! the invoice is `LOCKED` at what it earned, as a deal taken out of WON late keeps its
//! commission.

use super::read::{INVOICE_LEDGER, LEDGER, read_booked};
use super::*;
use crate::db::entities::invoice_commission;
use crate::domain::billing::within_recurring;

/// Invoices per chunk in a per-invoice pass.
const INVOICE_CHUNK: usize = 5_000;
/// Partners per chunk when whole partners are computed (a partner may have thousands of
/// invoices: small chunks bound the memory a chunk holds).
const INVOICE_PARTNER_CHUNK: usize = 20;

/// One linked invoice as the reconciler reads it.
struct InvoiceRow {
    id: String,
    partner_id: String,
    program_id: String,
    customer_id: String,
    source_id: String,
    external_id: String,
    currency: String,
    amount_paid: Decimal,
    excluding_tax: Decimal,
    paid_at: DateTime<Utc>,
    first_won_at: DateTime<Utc>,
    stored: Option<StoredInvoice>,
}

/// What the last run computed for an (invoice, partner).
struct StoredInvoice {
    state: CommissionState,
    expected_cents: i64,
    amount_program: Option<String>,
    /// The indexed columns of the row as stored (when they still hold, an update leaves the
    /// row's indexes alone).
    program_id: String,
    customer_id: Option<String>,
    paid_at: DateTime<Utc>,
}

/// Which invoices a chunk reads.
enum InvoiceScope<'a> {
    Partners(&'a [String]),
    Invoices(&'a [String]),
}

/// Reconciles invoices: every linked invoice on a full run (`since` = `None`), otherwise those
/// that changed after `since` and the partners whose terms changed.
pub(super) async fn reconcile_invoices(
    db: &Db,
    ctx: &Context,
    since: Option<DateTime<Utc>>,
    stats: &mut ReconcileStats,
) -> Result<(), DbErr> {
    let prepare = |scope| prepare(db, ctx, scope);
    let write = |batch: InvoiceBatch| write_invoices(db, ctx, batch.entries, batch.rows);
    match since {
        None => {
            // The partners with linked invoices, a few at a time (a partner's invoices are
            // computed together: tiers count its prior invoice revenue).
            let mut partners: Vec<String> = Vec::new();
            for row in db
                .reads()
                .query_all_raw(Statement::from_string(
                    db.backend(),
                    "SELECT DISTINCT partner_id FROM invoices WHERE partner_id IS NOT NULL",
                ))
                .await?
            {
                partners.push(get(&row, "partner_id")?);
            }
            partners.sort();
            let chunks = partners
                .chunks(INVOICE_PARTNER_CHUNK)
                .map(InvoiceScope::Partners)
                .collect::<Vec<_>>();
            pipelined(chunks, stats, writers(db), prepare, write).await?;
        }
        Some(since) => {
            let started = std::time::Instant::now();
            let (partners, invoices) = changed_invoices(db, ctx, since).await?;
            stats.timings.changes += started.elapsed().as_secs_f64();
            let chunks = partners
                .chunks(INVOICE_PARTNER_CHUNK)
                .map(InvoiceScope::Partners)
                .collect::<Vec<_>>();
            pipelined(chunks, stats, writers(db), prepare, write).await?;
            let chunks = invoices
                .chunks(INVOICE_CHUNK)
                .map(InvoiceScope::Invoices)
                .collect::<Vec<_>>();
            pipelined(chunks, stats, writers(db), prepare, write).await?;
        }
    }
    Ok(())
}

/// Whether a program's invoice commissions depend on each other: they pay on invoices at the
/// plan's own rate, whose tiers count prior revenue (an explicit recurring rate has no tiers).
fn tiered_invoices(ctx: &Context, program_id: &str) -> bool {
    ctx.terms.get(program_id).is_some_and(|(t, _)| {
        t.plan.pays_invoices()
            && t.plan.recurring.as_ref().is_some_and(|r| r.rate.is_none())
            && !t.plan.tiers.is_empty()
    })
}

/// Partners to recompute whole, and single invoices, changed after `since`.
async fn changed_invoices(
    db: &Db,
    ctx: &Context,
    since: DateTime<Utc>,
) -> Result<(Vec<String>, Vec<String>), DbErr> {
    let [p1] = db.params();
    let query = |sql: String| db.records(sql, vec![since.into()]);
    let mut whole: BTreeSet<String> = BTreeSet::new();
    for sql in [
        "SELECT id AS partner_id FROM partners WHERE updated_at > {p1}",
        // No DISTINCT: with it SQLite scans an index in partner order instead of the
        // (nearly empty) partial index of declines.
        "SELECT partner_id FROM ledger_entries WHERE declines > '' AND created_at > {p1}",
    ] {
        for row in query(sql.replace("{p1}", &p1)).await? {
            whole.insert(get(&row, "partner_id")?);
        }
    }
    let mut programs_changed: HashSet<String> = HashSet::new();
    for row in query(format!("SELECT id FROM programs WHERE updated_at > {p1}")).await? {
        programs_changed.insert(get(&row, "id")?);
    }
    // A new rate may convert any invoice in one of its currencies (or into a program currency
    // of the pair): those partners are recomputed whole.
    let mut currencies: HashSet<String> = HashSet::new();
    for row in query(format!(
        "SELECT DISTINCT base, quote FROM exchange_rates WHERE created_at > {p1}"
    ))
    .await?
    {
        currencies.insert(get(&row, "base")?);
        currencies.insert(get(&row, "quote")?);
    }
    for (program_id, (terms, _)) in &ctx.terms {
        if currencies.contains(&terms.currency) {
            programs_changed.insert(program_id.clone());
        }
    }
    whole.extend(
        ctx.partners
            .iter()
            .filter(|(_, (program_id, _))| programs_changed.contains(program_id))
            .map(|(id, _)| id.clone()),
    );
    if !currencies.is_empty() {
        let list: Vec<String> = currencies.into_iter().collect();
        let (cond, values) = db.in_list("currency", &list, 1);
        for row in db
            .records(
                format!(
                    "SELECT DISTINCT partner_id FROM invoices \
                     WHERE partner_id IS NOT NULL AND {cond}"
                ),
                values,
            )
            .await?
        {
            whole.insert(get(&row, "partner_id")?);
        }
    }
    let mut single: BTreeSet<String> = BTreeSet::new();
    for row in query(format!(
        "SELECT id, partner_id, program_id FROM invoices \
         WHERE updated_at > {p1} AND partner_id IS NOT NULL"
    ))
    .await?
    {
        let partner_id: String = get(&row, "partner_id")?;
        let program_id: String = get(&row, "program_id")?;
        if whole.contains(&partner_id) {
            continue;
        }
        if tiered_invoices(ctx, &program_id) {
            whole.insert(partner_id);
        } else {
            single.insert(get(&row, "id")?);
        }
    }
    Ok((whole.into_iter().collect(), single.into_iter().collect()))
}

async fn read_invoices(db: &Db, scope: &InvoiceScope<'_>) -> Result<Vec<InvoiceRow>, DbErr> {
    let (column, ids) = match scope {
        InvoiceScope::Partners(ids) => ("i.partner_id", ids),
        InvoiceScope::Invoices(ids) => ("i.id", ids),
    };
    let (cond, values) = db.in_list(column, ids, 1);
    let rows = db
        .records(
            format!(
                "SELECT i.id, i.partner_id, i.program_id, i.customer_id, i.source_id, \
                 i.external_id, i.currency, i.amount_paid, i.amount_excluding_tax, i.paid_at, \
                 c.first_won_at, ic.state AS ic_state, ic.expected_cents AS ic_expected, \
                 ic.amount_program AS ic_amount, ic.program_id AS ic_program, \
                 ic.customer_id AS ic_customer, ic.paid_at AS ic_paid \
                 FROM invoices i JOIN customers c ON c.id = i.customer_id \
                 LEFT JOIN invoice_commissions ic \
                   ON ic.invoice_id = i.id AND ic.partner_id = i.partner_id \
                 WHERE {cond} AND i.partner_id IS NOT NULL"
            ),
            values,
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let stored = match get::<Option<CommissionState>>(&row, "ic_state")? {
            Some(state) => Some(StoredInvoice {
                state,
                expected_cents: get(&row, "ic_expected")?,
                amount_program: get(&row, "ic_amount")?,
                program_id: get(&row, "ic_program")?,
                customer_id: get(&row, "ic_customer")?,
                paid_at: get(&row, "ic_paid")?,
            }),
            None => None,
        };
        out.push(InvoiceRow {
            id: get(&row, "id")?,
            partner_id: get(&row, "partner_id")?,
            program_id: get(&row, "program_id")?,
            customer_id: get(&row, "customer_id")?,
            source_id: get(&row, "source_id")?,
            external_id: get(&row, "external_id")?,
            currency: get(&row, "currency")?,
            amount_paid: parse_decimal(&get::<String>(&row, "amount_paid")?, "invoice amount")?,
            excluding_tax: parse_decimal(
                &get::<String>(&row, "amount_excluding_tax")?,
                "invoice amount excluding tax",
            )?,
            paid_at: get(&row, "paid_at")?,
            first_won_at: get(&row, "first_won_at")?,
            stored,
        });
    }
    Ok(out)
}

/// Refunds and credit notes per (source, invoice external id): (currency, amount, when).
type Reductions = HashMap<(String, String), Vec<(String, Decimal, DateTime<Utc>)>>;

async fn read_reductions(db: &Db, invoices: &[InvoiceRow]) -> Result<Reductions, DbErr> {
    let mut out: Reductions = HashMap::new();
    let mut sources: Vec<String> = invoices.iter().map(|i| i.source_id.clone()).collect();
    sources.sort();
    sources.dedup();
    let externals: Vec<String> = invoices.iter().map(|i| i.external_id.clone()).collect();
    for chunk in externals.chunks(INVOICE_CHUNK) {
        let (sources_cond, mut values) = db.in_list("source_id", &sources, 1);
        let (cond, more) = db.in_list("invoice_external_id", chunk, values.len() + 1);
        values.extend(more);
        for row in db
            .records(
                format!(
                    "SELECT source_id, invoice_external_id, currency, amount, occurred_at \
                     FROM invoice_adjustments WHERE {sources_cond} AND {cond}"
                ),
                values,
            )
            .await?
        {
            out.entry((get(&row, "source_id")?, get(&row, "invoice_external_id")?))
                .or_default()
                .push((
                    get(&row, "currency")?,
                    parse_decimal(&get::<String>(&row, "amount")?, "refund amount")?,
                    get(&row, "occurred_at")?,
                ));
        }
    }
    Ok(out)
}

/// The invoice's amount excluding tax that still counts: reduced in proportion to what was
/// refunded or credited (tax included, so the proportion is of the amount paid), counting only
/// reductions within the clawback period. Returns the amount and whether a later reduction was
/// left out (the invoice is then LOCKED).
pub fn net_amount(
    amount_paid: Decimal,
    excluding_tax: Decimal,
    currency: &str,
    paid_at: DateTime<Utc>,
    clawback_days: i32,
    reductions: &[(String, Decimal, DateTime<Utc>)],
) -> (Decimal, bool) {
    let deadline = paid_at + Duration::days(i64::from(clawback_days));
    let mut reduced = Decimal::ZERO;
    let mut late = false;
    for (reduction_currency, amount, at) in reductions {
        if reduction_currency != currency {
            continue;
        }
        if *at > deadline {
            late = true;
            continue;
        }
        reduced += *amount;
    }
    if amount_paid <= Decimal::ZERO {
        return (excluding_tax, late);
    }
    let kept = (Decimal::ONE - (reduced / amount_paid).min(Decimal::ONE)).max(Decimal::ZERO);
    (excluding_tax * kept, late)
}

/// A chunk's computed entries and `invoice_commissions` rows, waiting to be written.
struct InvoiceBatch {
    entries: Vec<NewEntry>,
    rows: Vec<InvoiceRowUpdate>,
}

/// An `invoice_commissions` row to write, and whether only its computed columns changed.
struct InvoiceRowUpdate {
    model: invoice_commission::ActiveModel,
    computed_only: bool,
}

/// Reads and computes one chunk of invoices.
async fn prepare(
    db: &Db,
    ctx: &Context,
    scope: InvoiceScope<'_>,
) -> Result<(Option<InvoiceBatch>, ReconcileStats), DbErr> {
    let mut stats = ReconcileStats::default();
    let started = std::time::Instant::now();
    let mut invoices = read_invoices(db, &scope).await?;
    if invoices.is_empty() {
        return Ok((None, stats));
    }
    // In the order of the computations' key, so that a chunk's rows are written side by side.
    invoices.sort_unstable_by(|a, b| (&a.partner_id, &a.id).cmp(&(&b.partner_id, &b.id)));
    let reductions = read_reductions(db, &invoices).await?;
    stats.timings.read += started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    // Each partner's invoices form its timeline (tiers count its prior invoice revenue).
    let mut by_partner: BTreeMap<&str, Vec<(&InvoiceRow, DealFacts, bool)>> = BTreeMap::new();
    for invoice in &invoices {
        let Some(program) = ctx.programs.get(&invoice.program_id) else {
            continue;
        };
        let (amount, late) = net_amount(
            invoice.amount_paid,
            invoice.excluding_tax,
            &invoice.currency,
            invoice.paid_at,
            program.clawback_days,
            reductions
                .get(&(invoice.source_id.clone(), invoice.external_id.clone()))
                .map(Vec::as_slice)
                .unwrap_or_default(),
        );
        let earns = within_recurring(program, invoice.first_won_at, invoice.paid_at);
        by_partner.entry(&invoice.partner_id).or_default().push((
            invoice,
            DealFacts {
                id: invoice.id.clone(),
                status: if earns {
                    DealStatus::Won
                } else {
                    DealStatus::Lost
                },
                amount,
                currency: invoice.currency.clone(),
                closed_at: Some(invoice.paid_at),
                updated_at: invoice.paid_at,
                created_at: invoice.paid_at,
                locked: None,
                recurring: false,
            },
            late,
        ));
    }
    let mut results: Vec<(&InvoiceRow, Outcome)> = Vec::new();
    for (partner_id, rows) in &by_partner {
        let Some((program_id, terminated_at)) = ctx.partners.get(*partner_id) else {
            continue;
        };
        let Some((terms, _)) = ctx.terms.get(program_id) else {
            continue;
        };
        let pays = terms.plan.pays_invoices();
        let invoice_terms = Terms {
            plan: terms.plan.recurring_plan(true),
            currency: terms.currency.clone(),
        };
        let facts: Vec<DealFacts> = rows.iter().map(|(_, f, _)| f.clone()).collect();
        let outcomes =
            compute_timeline(&invoice_terms, &ctx.rates, *terminated_at, &facts, ctx.now);
        for ((row, _, late), mut outcome) in rows.iter().zip(outcomes) {
            if !pays && outcome.state.writable() {
                outcome.state = CommissionState::NotEarned;
                outcome.expected = Decimal::ZERO;
            }
            if *late && outcome.state == CommissionState::Earned {
                outcome.state = CommissionState::Locked;
            }
            if ctx
                .declined
                .contains(&(row.partner_id.clone(), Subject::Invoice(row.id.clone())))
            {
                // A manager declined it: 0 whatever the invoice does next.
                outcome.state = CommissionState::Declined;
                outcome.expected = Decimal::ZERO;
            }
            results.push((row, outcome));
        }
    }
    // Which pairs to compare with the ledger: all on a full run, else those whose expectation
    // moved (or that were left alone for a missing rate).
    let needs_check = |row: &InvoiceRow, outcome: &Outcome| {
        outcome.state.writable()
            && (ctx.verify_all
                || row.stored.as_ref().is_none_or(|s| {
                    s.expected_cents != to_cents(outcome.expected).unwrap_or(0)
                        || !s.state.writable()
                }))
    };
    let to_check: Vec<String> = results
        .iter()
        .filter(|(row, outcome)| needs_check(row, outcome))
        .map(|(row, _)| row.id.clone())
        .collect();
    // Whole partners on a full run: one read of their entries rather than one lookup per
    // invoice.
    let booked = match &scope {
        InvoiceScope::Partners(partners) if ctx.verify_all => {
            read_booked(db, "invoice", LEDGER, "le.partner_id", partners).await?
        }
        _ => read_booked(db, "invoice", INVOICE_LEDGER, "i.id", &to_check).await?,
    };
    let mut entries: Vec<NewEntry> = Vec::new();
    let mut rows: Vec<InvoiceRowUpdate> = Vec::new();
    for (row, outcome) in results {
        stats.invoices_checked += 1;
        if outcome.state == CommissionState::MissingFxRate {
            stats.missing_exchange_rates += 1;
        }
        let expected_cents = to_cents(outcome.expected).unwrap_or(0);
        let amount_program = outcome.amount_program.map(|a| a.normalize().to_string());
        let changed = row.stored.as_ref().is_none_or(|s| {
            s.state != outcome.state
                || s.expected_cents != expected_cents
                || s.amount_program != amount_program
        });
        if changed {
            let computed_only = row.stored.as_ref().is_some_and(|s| {
                s.program_id == row.program_id
                    && s.customer_id.as_ref() == Some(&row.customer_id)
                    && s.paid_at == row.paid_at
            });
            let model = invoice_commission::ActiveModel {
                invoice_id: Set(row.id.clone()),
                partner_id: Set(row.partner_id.clone()),
                program_id: Set(row.program_id.clone()),
                customer_id: Set(Some(row.customer_id.clone())),
                amount_program_cents: Set(outcome.amount_program.and_then(to_cents)),
                amount_program: Set(amount_program),
                paid_at: Set(row.paid_at),
                state: Set(outcome.state),
                expected_cents: Set(expected_cents),
                computed_at: Set(ctx.now),
            };
            rows.push(InvoiceRowUpdate {
                model,
                computed_only,
            });
        }
        if !needs_check(row, &outcome) {
            continue;
        }
        let have = booked
            .get(&(row.partner_id.clone(), row.id.clone()))
            .cloned()
            .unwrap_or_default();
        let Some(diff) = expected_cents.checked_sub(have.cents) else {
            stats.invalid += 1;
            continue;
        };
        if diff != 0 {
            let (terms, hold_days) = &ctx.terms[&row.program_id];
            entries.push(NewEntry {
                id: new_id(),
                partner_id: row.partner_id.clone(),
                program_id: row.program_id.clone(),
                subject: Subject::Invoice(row.id.clone()),
                cents: diff,
                currency: terms.currency.clone(),
                hold_days: *hold_days,
                seq: have.max_seq + 1,
                hold: None,
            });
        }
    }
    stats.timings.compute += started.elapsed().as_secs_f64();
    let batch = (!entries.is_empty() || !rows.is_empty()).then_some(InvoiceBatch { entries, rows });
    Ok((batch, stats))
}

/// Writes a prepared chunk in one transaction.
async fn write_invoices(
    db: &Db,
    ctx: &Context,
    entries: Vec<NewEntry>,
    rows: Vec<InvoiceRowUpdate>,
) -> Result<ReconcileStats, DbErr> {
    let mut stats = ReconcileStats::default();
    let started = std::time::Instant::now();
    let tx = db.begin_write().await?;
    let (buffered, conflicted) = write::book(db, &tx, ctx, entries, &mut stats).await?;
    let (computed_only, whole): (Vec<InvoiceRowUpdate>, Vec<InvoiceRowUpdate>) = rows
        .into_iter()
        .filter(|row| match (&row.model.partner_id, &row.model.invoice_id) {
            (sea_orm::ActiveValue::Set(partner), sea_orm::ActiveValue::Set(id)) => {
                !conflicted.contains(&(partner.clone(), Subject::Invoice(id.clone())))
            }
            _ => true,
        })
        .partition(|row| row.computed_only);
    stats.computations_updated += (computed_only.len() + whole.len()) as u64;
    // Rows whose indexed columns (program, customer, payment date) hold update only the
    // computed ones, leaving the table's indexes untouched.
    let computed = [
        invoice_commission::Column::AmountProgram,
        invoice_commission::Column::AmountProgramCents,
        invoice_commission::Column::State,
        invoice_commission::Column::ExpectedCents,
        invoice_commission::Column::ComputedAt,
    ];
    let indexed = [
        invoice_commission::Column::ProgramId,
        invoice_commission::Column::CustomerId,
        invoice_commission::Column::PaidAt,
    ];
    for (rows, columns) in [
        (computed_only, computed.to_vec()),
        (whole, [computed.as_slice(), indexed.as_slice()].concat()),
    ] {
        let models: Vec<_> = rows.into_iter().map(|row| row.model).collect();
        crate::db::insert_all(
            &*tx,
            models,
            Some(
                OnConflict::columns([
                    invoice_commission::Column::PartnerId,
                    invoice_commission::Column::InvoiceId,
                ])
                .update_columns(columns)
                .to_owned(),
            ),
        )
        .await?;
    }
    events::record_all(&*tx, buffered).await?;
    tx.commit().await?;
    stats.timings.write += started.elapsed().as_secs_f64();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn a_half_refund_halves_the_amount_excluding_tax() {
        let paid = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
        let half = vec![("EUR".to_string(), dec("595.00"), paid + Duration::days(3))];
        let (net, late) = net_amount(dec("1190.00"), dec("1000.00"), "EUR", paid, 90, &half);
        assert_eq!((net.round_dp(2), late), (dec("500.00"), false));
        // The same refund after the clawback period is not counted: the invoice is locked.
        let late_refund = vec![("EUR".to_string(), dec("595.00"), paid + Duration::days(91))];
        let (net, late) = net_amount(
            dec("1190.00"),
            dec("1000.00"),
            "EUR",
            paid,
            90,
            &late_refund,
        );
        assert_eq!((net, late), (dec("1000.00"), true));
        // More than paid never makes a negative amount.
        let over = vec![("EUR".to_string(), dec("5000"), paid)];
        let (net, _) = net_amount(dec("1190.00"), dec("1000.00"), "EUR", paid, 90, &over);
        assert_eq!(net, Decimal::ZERO);
    }
}
