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
                    invoice_id: Set(None),
                    invoice_seq: Set(None),
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
