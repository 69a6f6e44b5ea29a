//! Writing a chunk in one transaction: the ledger entries (each unique per (partner, deal,
//! number), so two reconcilers never book twice), the `deal_commissions` rows, and events.

use super::*;
use crate::{
    db::{insert_all, states::PartnerStatus},
    domain::normalize::email_domain,
};
use sea_orm::ColumnTrait;

pub(super) async fn write(
    db: &Db,
    ctx: &Context,
    entries: Vec<NewEntry>,
    commissions: Vec<plan::CommissionRow>,
    stats: &mut ReconcileStats,
) -> Result<(), DbErr> {
    let mut commissions = commissions;
    // By deal, the primary key of `deal_commissions` (see `in_key_order`).
    commissions.sort_by(|a, b| a.0.1.cmp(&b.0.1));
    let tx = db.begin_write().await?;
    let (buffered, conflicted) = book(db, &tx, ctx, entries, stats).await?;
    let commissions: Vec<deal_commission::ActiveModel> = commissions
        .into_iter()
        .filter(|((partner_id, deal_id), _)| {
            !conflicted.contains(&(partner_id.clone(), Subject::Deal(deal_id.clone())))
        })
        .map(|(_, model)| model)
        .collect();
    stats.computations_updated += commissions.len() as u64;
    insert_all(
        &*tx,
        commissions,
        Some(
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
        ),
    )
    .await?;
    events::record_all(&*tx, buffered).await?;
    tx.commit().await
}

/// Books a chunk's entries inside the writing transaction: decides their holds, appends
/// them (in key order) and returns the events of those appended with the (partner, subject)
/// pairs another reconciler booked first (their computations are not recorded as ours).
pub(super) async fn book(
    db: &Db,
    tx: &sea_orm::DatabaseTransaction,
    ctx: &Context,
    mut entries: Vec<NewEntry>,
    stats: &mut ReconcileStats,
) -> Result<
    (
        Vec<crate::db::entities::event::ActiveModel>,
        HashSet<(String, Subject)>,
    ),
    DbErr,
> {
    in_key_order(&mut entries);
    apply_holds(db, tx, ctx, &mut entries).await?;
    let inserted = insert_entries(db, tx, &entries, ctx.now).await?;
    Ok(booked_events(&entries, &inserted, ctx.now, stats))
}

/// Orders a chunk's entries by deal or invoice: a chunk is computed partner by partner, but
/// the ledger's deal index leads with the deal, whose ids are in no relation to the partner.
/// Inserted in key order, each page of that index is visited once per chunk instead of at
/// random (measured on the 1,000,000 invoice benchmark: see BENCHMARKS.md). (The unique
/// indexes lead with the partner: a chunk's partners' pages, whatever the order.)
fn in_key_order(entries: &mut [NewEntry]) {
    entries.sort_by(|a, b| (&a.subject, &a.partner_id).cmp(&(&b.subject, &b.partner_id)));
}

/// Appends entries, each unique per (partner, subject, number), so that an entry another
/// reconciler wrote first is skipped; returns the ids of those inserted. All entries of one
/// call are of one subject kind.
pub(super) async fn insert_entries(
    db: &Db,
    tx: &sea_orm::DatabaseTransaction,
    entries: &[NewEntry],
    now: DateTime<Utc>,
) -> Result<HashSet<String>, DbErr> {
    let Some(first) = entries.first() else {
        return Ok(HashSet::new());
    };
    let rows: Vec<ledger_entry::ActiveModel> = entries
        .iter()
        .map(|e| {
            let (kind, status, available) = entry_terms(e, now);
            let (deal, invoice) = match &e.subject {
                Subject::Deal(id) => (Some(id.clone()), None),
                Subject::Invoice(id) => (None, Some(id.clone())),
            };
            ledger_entry::ActiveModel {
                id: Set(e.id.clone()),
                partner_id: Set(e.partner_id.clone()),
                program_id: Set(e.program_id.clone()),
                deal_seq: Set(deal.as_ref().map(|_| e.seq)),
                invoice_seq: Set(invoice.as_ref().map(|_| e.seq)),
                deal_id: Set(deal),
                invoice_id: Set(invoice),
                payout_id: Set(None),
                kind: Set(kind),
                amount_cents: Set(e.cents),
                currency: Set(e.currency.clone()),
                status: Set(status),
                created_at: Set(now),
                available_at: Set(available),
                updated_at: Set(now),
                note: Set(None),
                hold_reason: Set(e.hold),
                declines: Set(None),
            }
        })
        .collect();
    // The unique indexes are partial (over entries of their kind of subject): the conflict
    // target names the condition.
    let (unique, subject) = match first.subject {
        Subject::Deal(_) => (
            [
                ledger_entry::Column::PartnerId,
                ledger_entry::Column::DealId,
                ledger_entry::Column::DealSeq,
            ],
            ledger_entry::Column::DealId,
        ),
        Subject::Invoice(_) => (
            [
                ledger_entry::Column::PartnerId,
                ledger_entry::Column::InvoiceId,
                ledger_entry::Column::InvoiceSeq,
            ],
            ledger_entry::Column::InvoiceId,
        ),
    };
    let on_conflict = OnConflict::columns(unique)
        .target_and_where(subject.is_not_null())
        .do_nothing()
        .to_owned();
    let affected = insert_all(tx, rows, Some(on_conflict)).await?;
    let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
    if affected == entries.len() as u64 {
        return Ok(ids.into_iter().collect());
    }
    // Some collided with another reconciler's entries: find which of ours are in.
    let mut inserted: HashSet<String> = HashSet::new();
    for chunk in ids.chunks(500) {
        let (cond, values) = db.in_list("id", chunk, 1);
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
    Ok(inserted)
}

/// The `commission.accrued` / `commission.reversed` events of the entries inserted, counted in
/// `stats`, and the (partner, subject) pairs another reconciler booked first: their computation
/// is not recorded as ours, so the next run compares them with the ledger again.
pub(super) fn booked_events(
    entries: &[NewEntry],
    inserted: &HashSet<String>,
    now: DateTime<Utc>,
    stats: &mut ReconcileStats,
) -> (
    Vec<crate::db::entities::event::ActiveModel>,
    HashSet<(String, Subject)>,
) {
    let mut buffered = Vec::new();
    let mut conflicted = HashSet::new();
    for e in entries {
        if !inserted.contains(&e.id) {
            stats.conflicts += 1;
            conflicted.insert((e.partner_id.clone(), e.subject.clone()));
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
        let mut data = json!({
            "ledgerEntryId": e.id,
            "kind": kind.as_str(),
            "amount": amount.to_string(),
            "currency": e.currency,
            "status": status.as_str(),
            "availableAt": available,
        });
        let (field, id) = match &e.subject {
            Subject::Deal(id) => ("dealId", id),
            Subject::Invoice(id) => ("invoiceId", id),
        };
        data[field] = json!(id);
        if let Some(reason) = e.hold {
            let mut held = json!({
                "ledgerEntryId": e.id,
                "amount": amount.to_string(),
                "currency": e.currency,
                "reason": reason.as_str(),
            });
            held[field] = json!(id);
            buffered.push(events::new_event(
                EventType::CommissionHeld,
                &e.program_id,
                Some(&e.partner_id),
                held,
            ));
        }
        buffered.push(events::new_event(
            event_type,
            &e.program_id,
            Some(&e.partner_id),
            data,
        ));
    }
    (buffered, conflicted)
}

/// Decides which new entries wait for a manager (DESIGN §14), inside the writing
/// transaction: any entry of a deal or invoice that already has a HELD entry is held with it
/// (so that a reversal nets against the held accrual rather than the paid balance); a new
/// accrual is held when its deal's company or a contact's email domain (an invoice's
/// customer's domain) is the partner's own domain, when the partner is suspended, or when it
/// is above the program's `manualReviewAbove`.
pub(super) async fn apply_holds(
    db: &Db,
    tx: &sea_orm::DatabaseTransaction,
    ctx: &Context,
    entries: &mut [NewEntry],
) -> Result<(), DbErr> {
    if entries.is_empty() {
        return Ok(());
    }
    let ids = |want_deal: bool| -> Vec<String> {
        let mut ids: Vec<String> = entries
            .iter()
            .filter_map(|e| match (&e.subject, want_deal) {
                (Subject::Deal(id), true) | (Subject::Invoice(id), false) => Some(id.clone()),
                _ => None,
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let (deal_ids, invoice_ids) = (ids(true), ids(false));
    let query = |sql: String, values: Vec<Value>| {
        tx.query_all_raw(Statement::from_sql_and_values(db.backend(), sql, values))
    };
    // Entries already held, by (partner, subject).
    let mut held: HashMap<(String, Subject), HoldReason> = HashMap::new();
    for (column, list, deal) in [
        ("deal_id", &deal_ids, true),
        ("invoice_id", &invoice_ids, false),
    ] {
        for chunk in list.chunks(500) {
            let (cond, values) = db.in_list(column, chunk, 1);
            for row in query(
                format!(
                    "SELECT partner_id, {column} AS subject, hold_reason FROM ledger_entries \
                     WHERE status = 'HELD' AND {cond}"
                ),
                values,
            )
            .await?
            {
                let subject: String = get(&row, "subject")?;
                let reason: Option<HoldReason> = get(&row, "hold_reason")?;
                let subject = if deal {
                    Subject::Deal(subject)
                } else {
                    Subject::Invoice(subject)
                };
                if let Some(reason) = reason {
                    held.insert((get(&row, "partner_id")?, subject), reason);
                }
            }
        }
    }
    // The partners of new accruals: their own domain and standing.
    let mut partner_ids: Vec<String> = entries
        .iter()
        .filter(|e| e.cents > 0)
        .map(|e| e.partner_id.clone())
        .collect();
    partner_ids.sort();
    partner_ids.dedup();
    let mut partners: HashMap<String, (Option<String>, String)> = HashMap::new();
    for chunk in partner_ids.chunks(500) {
        let (cond, values) = db.in_list("id", chunk, 1);
        for row in query(
            format!("SELECT id, domain, status FROM partners WHERE {cond}"),
            values,
        )
        .await?
        {
            partners.insert(
                get(&row, "id")?,
                (get(&row, "domain")?, get(&row, "status")?),
            );
        }
    }
    // The companies of the subjects, only when some partner has a domain to compare.
    let mut companies: HashMap<Subject, Vec<String>> = HashMap::new();
    if partners.values().any(|(domain, _)| domain.is_some()) {
        for chunk in deal_ids.chunks(500) {
            let (cond, values) = db.in_list("id", chunk, 1);
            for row in query(
                format!("SELECT id, company_domain, contact_emails FROM deals WHERE {cond}"),
                values,
            )
            .await?
            {
                let mut domains: Vec<String> = Vec::new();
                if let Some(domain) = get::<Option<String>>(&row, "company_domain")? {
                    domains.push(domain);
                }
                let contacts: serde_json::Value = get(&row, "contact_emails")?;
                for email in contacts.as_array().into_iter().flatten() {
                    if let Some(domain) = email.as_str().and_then(email_domain) {
                        domains.push(domain.to_string());
                    }
                }
                companies.insert(Subject::Deal(get(&row, "id")?), domains);
            }
        }
        for chunk in invoice_ids.chunks(500) {
            let (cond, values) = db.in_list("i.id", chunk, 1);
            for row in query(
                format!(
                    "SELECT i.id, c.domain FROM invoices i JOIN customers c \
                     ON c.id = i.customer_id WHERE {cond}"
                ),
                values,
            )
            .await?
            {
                let domain: Option<String> = get(&row, "domain")?;
                companies.insert(
                    Subject::Invoice(get(&row, "id")?),
                    domain.into_iter().collect(),
                );
            }
        }
    }
    for e in entries.iter_mut() {
        if let Some(reason) = held.get(&(e.partner_id.clone(), e.subject.clone())) {
            e.hold = Some(*reason);
            continue;
        }
        if e.cents <= 0 {
            continue;
        }
        let Some((domain, status)) = partners.get(&e.partner_id) else {
            continue;
        };
        let own = domain.as_deref();
        let self_referral = own.is_some_and(|own| {
            companies
                .get(&e.subject)
                .is_some_and(|domains| domains.iter().any(|d| d == own))
        });
        let threshold = ctx
            .programs
            .get(&e.program_id)
            .and_then(|p| p.manual_review_above.as_deref())
            .and_then(|t| t.parse::<Decimal>().ok())
            .and_then(to_cents);
        e.hold = if self_referral {
            Some(HoldReason::SelfReferral)
        } else if status == PartnerStatus::Suspended.as_str() {
            Some(HoldReason::PartnerSuspended)
        } else if threshold.is_some_and(|t| e.cents > t) {
            Some(HoldReason::AboveReviewThreshold)
        } else {
            None
        };
    }
    Ok(())
}

/// Kind, status and availability of a new entry: accruals are held `holdDays` (APPROVED at
/// once without a hold), reversals are APPROVED at once.
pub(super) fn entry_terms(
    e: &NewEntry,
    now: DateTime<Utc>,
) -> (LedgerEntryKind, LedgerEntryStatus, DateTime<Utc>) {
    if e.cents > 0 {
        let available = now + Duration::days(i64::from(e.hold_days));
        let status = if e.hold.is_some() {
            LedgerEntryStatus::Held
        } else if available <= now {
            LedgerEntryStatus::Approved
        } else {
            LedgerEntryStatus::Pending
        };
        (LedgerEntryKind::Accrual, status, available)
    } else if e.hold.is_some() {
        (LedgerEntryKind::Reversal, LedgerEntryStatus::Held, now)
    } else {
        (LedgerEntryKind::Reversal, LedgerEntryStatus::Approved, now)
    }
}
