//! Writing a chunk in one transaction: the ledger entries (each unique per (partner, deal,
//! number), so two reconcilers never book twice), the `deal_commissions` rows, and events.

use super::*;

pub(super) async fn write(
    db: &Db,
    ctx: &Context,
    entries: Vec<NewEntry>,
    commissions: Vec<plan::CommissionRow>,
    stats: &mut ReconcileStats,
) -> Result<(), DbErr> {
    let tx = db.begin_write().await?;
    let inserted = insert_entries(db, &tx, &entries, ctx.now).await?;
    let (buffered, conflicted) = booked_events(&entries, &inserted, ctx.now, stats);
    let commissions: Vec<deal_commission::ActiveModel> = commissions
        .into_iter()
        .filter(|((partner_id, deal_id), _)| {
            !conflicted.contains(&(partner_id.clone(), Subject::Deal(deal_id.clone())))
        })
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

/// Appends entries, each unique per (partner, subject, number), so that an entry another
/// reconciler wrote first is skipped; returns the ids of those inserted. All entries of one
/// call are of one subject kind.
pub(super) async fn insert_entries(
    db: &Db,
    tx: &sea_orm::DatabaseTransaction,
    entries: &[NewEntry],
    now: DateTime<Utc>,
) -> Result<HashSet<String>, DbErr> {
    let mut inserted: HashSet<String> = HashSet::new();
    for chunk in entries.chunks(500) {
        let rows: Vec<ledger_entry::ActiveModel> = chunk
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
                }
            })
            .collect();
        let unique = match chunk[0].subject {
            Subject::Deal(_) => [
                ledger_entry::Column::PartnerId,
                ledger_entry::Column::DealId,
                ledger_entry::Column::DealSeq,
            ],
            Subject::Invoice(_) => [
                ledger_entry::Column::InvoiceId,
                ledger_entry::Column::PartnerId,
                ledger_entry::Column::InvoiceSeq,
            ],
        };
        let affected = ledger_entry::Entity::insert_many(rows)
            .on_conflict(OnConflict::columns(unique).do_nothing().to_owned())
            .exec_without_returning(tx)
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
        buffered.push(events::new_event(
            event_type,
            &e.program_id,
            Some(&e.partner_id),
            data,
        ));
    }
    (buffered, conflicted)
}

/// Kind, status and availability of a new entry: accruals are held `holdDays` (APPROVED at
/// once without a hold), reversals are APPROVED at once.
pub(super) fn entry_terms(
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
