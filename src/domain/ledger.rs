//! The commission ledger's read side and its money movements: exchange rates, balances,
//! payouts (DESIGN §4). Entries are appended by the reconciler; here only their status (and the
//! payout that gathers them) changes.

use async_graphql::InputObject;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QuerySelect, Statement,
};
use serde_json::json;

pub use crate::db::states::{HoldReason, LedgerEntryKind, LedgerEntryStatus, PayoutStatus};
use crate::{
    db::{
        Db,
        entities::{exchange_rate, ledger_entry, partner, payout, payout_run},
        states::PayoutRunStatus,
    },
    domain::{
        commission::{Rates, from_cents},
        events::{self, EventType},
        ids::{is_valid_id, new_id},
        normalize::normalize_currency,
    },
    error::{ApiError, ApiResult},
};

/// The kinds that make up a deal's booked commission, as an SQL list.
pub const COMMISSION_KINDS: &str = "('ACCRUAL', 'REVERSAL', 'ADJUSTMENT')";

/// Input of `setExchangeRate`.
#[derive(Debug, InputObject)]
pub struct SetExchangeRateInput {
    /// ISO 4217 code converted from (the deal currency).
    pub base: String,
    /// ISO 4217 code converted into (the program currency).
    pub quote: String,
    /// How many `quote` one `base` is worth; greater than 0.
    pub rate: Decimal,
    /// From when the rate applies (deals closed at or after it use it, until a later one).
    pub effective_at: DateTime<Utc>,
}

/// The exchange rates in effect up to `at` (each pair's history until then): what a deal
/// closed at `at` converts with.
pub async fn rates_until(db: &Db, at: DateTime<Utc>) -> ApiResult<Rates> {
    let mut rates = Rates::default();
    for r in exchange_rate::Entity::find()
        .filter(exchange_rate::Column::EffectiveAt.lte(at))
        .all(db.reads())
        .await?
    {
        let rate: Decimal = r
            .rate
            .parse()
            .map_err(|e| ApiError::Internal(format!("stored exchange rate {:?}: {e}", r.rate)))?;
        rates.insert(&r.base, &r.quote, r.effective_at, rate);
    }
    Ok(rates)
}

/// Records a rate. Setting the same pair and time again replaces the rate (the next
/// reconciliation recomputes the deals it converts).
pub async fn set_exchange_rate(
    db: &Db,
    input: SetExchangeRateInput,
) -> ApiResult<exchange_rate::Model> {
    let base = normalize_currency(&input.base)
        .ok_or_else(|| ApiError::bad_input("input.base", "must be an ISO 4217 currency code"))?;
    let quote = normalize_currency(&input.quote)
        .ok_or_else(|| ApiError::bad_input("input.quote", "must be an ISO 4217 currency code"))?;
    if base == quote {
        return Err(ApiError::bad_input(
            "input.quote",
            "must differ from base (a currency converts to itself at 1)",
        ));
    }
    let max_rate = Decimal::from(tandem_connectors::money::MAX_EXCHANGE_RATE);
    if input.rate <= Decimal::ZERO || input.rate > max_rate {
        return Err(ApiError::bad_input(
            "input.rate",
            format!("must be greater than 0 and at most {max_rate}"),
        ));
    }
    if input.rate.scale() > 12 {
        return Err(ApiError::bad_input(
            "input.rate",
            "must have at most 12 decimal places",
        ));
    }
    let now = Utc::now();
    let tx = db.begin_write().await?;
    let existing = exchange_rate::Entity::find()
        .filter(exchange_rate::Column::Base.eq(base.as_str()))
        .filter(exchange_rate::Column::Quote.eq(quote.as_str()))
        .filter(exchange_rate::Column::EffectiveAt.eq(input.effective_at))
        .one(&*tx)
        .await?;
    let model = match existing {
        Some(found) => {
            let mut row: exchange_rate::ActiveModel = found.into();
            row.rate = Set(input.rate.normalize().to_string());
            row.created_at = Set(now);
            row.update(&*tx).await?
        }
        None => {
            exchange_rate::ActiveModel {
                id: Set(new_id()),
                base: Set(base),
                quote: Set(quote),
                rate: Set(input.rate.normalize().to_string()),
                effective_at: Set(input.effective_at),
                created_at: Set(now),
            }
            .insert(&*tx)
            .await?
        }
    };
    tx.commit().await?;
    Ok(model)
}

/// A partner's money in one currency.
#[derive(Debug, Clone, PartialEq, async_graphql::SimpleObject)]
pub struct Balance {
    /// ISO 4217 code.
    pub currency: String,
    /// Held until their `availableAt` (PENDING).
    pub pending: Decimal,
    /// Available and not yet gathered into a payout (what `createPayout` would pay).
    pub approved: Decimal,
    /// Gathered into a payout not yet marked paid.
    pub in_payout: Decimal,
    /// Paid out.
    pub paid: Decimal,
    /// Held for a manager's review (never paid until released).
    pub held: Decimal,
}

/// A partner's balances per currency, by SQL aggregate.
pub async fn balances(db: &Db, partner_id: &str) -> ApiResult<Vec<Balance>> {
    balances_where(db, "partner_id", partner_id).await
}

/// A program's balances per currency: the sums of its partners' (what the program owes, holds
/// and has paid).
pub async fn program_balances(db: &Db, program_id: &str) -> ApiResult<Vec<Balance>> {
    balances_where(db, "program_id", program_id).await
}

/// The balances of the ledger entries whose `column` is `id`.
async fn balances_where(db: &Db, column: &str, id: &str) -> ApiResult<Vec<Balance>> {
    let sum = |cond: &str| {
        format!("CAST(COALESCE(SUM(CASE WHEN {cond} THEN amount_cents ELSE 0 END), 0) AS BIGINT)")
    };
    let sql = format!(
        "SELECT currency, {} AS pending, {} AS approved, {} AS in_payout, {} AS paid, \
         {} AS held FROM ledger_entries WHERE {column} = {} GROUP BY currency \
         ORDER BY currency",
        sum("status = 'PENDING'"),
        sum("status = 'APPROVED' AND payout_id IS NULL"),
        sum("status = 'APPROVED' AND payout_id IS NOT NULL"),
        sum("status = 'PAID'"),
        sum("status = 'HELD'"),
        db.placeholder(1)
    );
    let rows = db
        .reads()
        .query_all_raw(Statement::from_sql_and_values(
            db.backend(),
            sql,
            [id.into()],
        ))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let cents = |col: &str| row.try_get::<i64>("", col).map(from_cents);
        out.push(Balance {
            currency: row.try_get("", "currency")?,
            pending: cents("pending")?,
            approved: cents("approved")?,
            in_payout: cents("in_payout")?,
            paid: cents("paid")?,
            held: cents("held")?,
        });
    }
    Ok(out)
}

/// Input of `createPayout`.
#[derive(Debug, InputObject)]
pub struct CreatePayoutInput {
    /// The partner to pay.
    pub partner_id: async_graphql::ID,
    /// The currency of the entries to gather.
    pub currency: String,
}

/// Gathers all of a partner's APPROVED entries in `currency` not yet in a payout into one
/// payout; its total must be positive (CONFLICT otherwise, and nothing changes).
pub async fn create_payout(db: &Db, input: CreatePayoutInput) -> ApiResult<payout::Model> {
    let currency = normalize_currency(&input.currency).ok_or_else(|| {
        ApiError::bad_input("input.currency", "must be an ISO 4217 currency code")
    })?;
    if !is_valid_id(input.partner_id.as_str()) {
        return Err(ApiError::NotFound("partner"));
    }
    let tx = db.begin_write().await?;
    let partner = partner::Entity::find_by_id(input.partner_id.to_string())
        .one(&*tx)
        .await?
        .ok_or(ApiError::NotFound("partner"))?;
    let id = new_id();
    let now = Utc::now();
    let [p1, p2, p3, p4] = db.params();
    let rows = tx
        .query_all_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "UPDATE ledger_entries SET payout_id = {p1}, updated_at = {p2} \
                 WHERE partner_id = {p3} AND currency = {p4} AND status = 'APPROVED' \
                 AND payout_id IS NULL RETURNING amount_cents"
            ),
            [
                id.clone().into(),
                now.into(),
                partner.id.clone().into(),
                currency.clone().into(),
            ],
        ))
        .await?;
    let mut total: i64 = 0;
    for row in &rows {
        total = total.saturating_add(row.try_get::<i64>("", "amount_cents")?);
    }
    if total <= 0 {
        // Dropping the transaction rolls the gathering back.
        return Err(ApiError::Conflict(if rows.is_empty() {
            format!("partner has no approved {currency} commission to pay")
        } else {
            format!(
                "partner's approved {currency} entries total {}, which is not positive",
                from_cents(total)
            )
        }));
    }
    let model = payout::ActiveModel {
        id: Set(id.clone()),
        partner_id: Set(partner.id.clone()),
        program_id: Set(partner.program_id.clone()),
        currency: Set(currency.clone()),
        total_cents: Set(total),
        status: Set(PayoutStatus::Pending),
        reference: Set(None),
        created_at: Set(now),
        paid_at: Set(None),
        ..Default::default()
    }
    .insert(&*tx)
    .await?;
    events::record(
        &*tx,
        EventType::PayoutCreated,
        &partner.program_id,
        Some(&partner.id),
        json!({
            "payoutId": id,
            "total": from_cents(total).to_string(),
            "currency": currency,
            "entries": rows.len(),
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(model)
}

/// Input of `markPayoutPaid`.
#[derive(Debug, InputObject)]
pub struct MarkPayoutPaidInput {
    /// The payout.
    pub id: async_graphql::ID,
    /// The payment reference (bank transfer id, invoice number…).
    pub reference: String,
}

/// Marks a payout and its entries PAID.
pub async fn mark_payout_paid(db: &Db, input: MarkPayoutPaidInput) -> ApiResult<payout::Model> {
    let reference = check_reference(&input.reference)?;
    if !is_valid_id(input.id.as_str()) {
        return Err(ApiError::NotFound("payout"));
    }
    let tx = db.begin_write().await?;
    let mut query = payout::Entity::find_by_id(input.id.to_string());
    if db.is_postgres() {
        query = query.lock_exclusive();
    }
    let found = query.one(&*tx).await?.ok_or(ApiError::NotFound("payout"))?;
    if found.status == PayoutStatus::Paid {
        return Err(ApiError::Conflict("the payout is already paid".to_string()));
    }
    let model = pay_payout(&*tx, found, &reference, Utc::now()).await?;
    if let Some(run_id) = &model.run_id {
        refresh_run_status(&*tx, run_id, None).await?;
    }
    events::record(
        &*tx,
        EventType::PayoutPaid,
        &model.program_id,
        Some(&model.partner_id),
        json!({
            "payoutId": model.id,
            "total": from_cents(model.total_cents).to_string(),
            "currency": model.currency,
            "reference": reference,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(model)
}

/// Pays a payout inside the caller's transaction: its entries and the row `PAID` with the
/// reference (an earlier failure cleared). The caller writes the event and refreshes the
/// status of the payout's run ([`refresh_run_status`]).
pub async fn pay_payout(
    conn: &impl ConnectionTrait,
    found: payout::Model,
    reference: &str,
    now: DateTime<Utc>,
) -> Result<payout::Model, sea_orm::DbErr> {
    set_entries_of_payout(conn, &found.id, LedgerEntryStatus::Paid, now).await?;
    let mut row: payout::ActiveModel = found.into();
    row.status = Set(PayoutStatus::Paid);
    row.reference = Set(Some(reference.to_string()));
    row.paid_at = Set(Some(now));
    row.failure = Set(None);
    row.update(conn).await
}

/// Sets the status of every entry a payout holds (`PAID` when it is paid, `APPROVED` again
/// when the transfer that paid it was reversed).
pub async fn set_entries_of_payout(
    conn: &impl ConnectionTrait,
    payout_id: &str,
    status: LedgerEntryStatus,
    now: DateTime<Utc>,
) -> Result<(), sea_orm::DbErr> {
    ledger_entry::Entity::update_many()
        .col_expr(
            ledger_entry::Column::Status,
            sea_orm::sea_query::Expr::value(status.as_str()),
        )
        .col_expr(
            ledger_entry::Column::UpdatedAt,
            sea_orm::sea_query::Expr::value(now),
        )
        .filter(ledger_entry::Column::PayoutId.eq(payout_id))
        .exec(conn)
        .await?;
    Ok(())
}

/// The status a payout run's payouts give it: every one paid → `PAID`, some → `PARTIALLY_PAID`,
/// none paid but some failed → `FAILED`; otherwise `otherwise` (or `None`: leave it).
pub fn run_status(
    payouts: &[PayoutStatus],
    otherwise: Option<PayoutRunStatus>,
) -> Option<PayoutRunStatus> {
    let paid = payouts.iter().filter(|s| **s == PayoutStatus::Paid).count();
    if !payouts.is_empty() && paid == payouts.len() {
        Some(PayoutRunStatus::Paid)
    } else if paid > 0 {
        Some(PayoutRunStatus::PartiallyPaid)
    } else if payouts.contains(&PayoutStatus::Failed) {
        Some(PayoutRunStatus::Failed)
    } else {
        otherwise
    }
}

/// Sets a run's status from its payouts ([`run_status`]), inside the caller's transaction.
pub async fn refresh_run_status(
    conn: &impl ConnectionTrait,
    run_id: &str,
    otherwise: Option<PayoutRunStatus>,
) -> Result<(), sea_orm::DbErr> {
    let statuses: Vec<PayoutStatus> = payout::Entity::find()
        .select_only()
        .column(payout::Column::Status)
        .filter(payout::Column::RunId.eq(run_id))
        .into_tuple()
        .all(conn)
        .await?;
    match run_status(&statuses, otherwise) {
        Some(status) => set_run_status(conn, run_id, status).await,
        None => Ok(()),
    }
}

/// Sets a payout run's status, inside the caller's transaction.
pub async fn set_run_status(
    conn: &impl ConnectionTrait,
    run_id: &str,
    status: PayoutRunStatus,
) -> Result<(), sea_orm::DbErr> {
    payout_run::Entity::update_many()
        .col_expr(
            payout_run::Column::Status,
            sea_orm::sea_query::Expr::value(status.as_str()),
        )
        .col_expr(
            payout_run::Column::UpdatedAt,
            sea_orm::sea_query::Expr::value(Utc::now()),
        )
        .filter(payout_run::Column::Id.eq(run_id))
        .exec(conn)
        .await?;
    Ok(())
}

/// An entry a manager writes (an adjustment, a decline): APPROVED, available `now`, outside
/// any deal or invoice unless the caller says otherwise, with the reason the partner reads.
fn manual_entry(
    (partner_id, program_id): (&str, &str),
    kind: LedgerEntryKind,
    cents: i64,
    currency: &str,
    now: DateTime<Utc>,
    note: String,
) -> crate::db::entities::ledger_entry::ActiveModel {
    crate::db::entities::ledger_entry::ActiveModel {
        id: Set(new_id()),
        partner_id: Set(partner_id.to_string()),
        program_id: Set(program_id.to_string()),
        deal_id: Set(None),
        payout_id: Set(None),
        kind: Set(kind),
        amount_cents: Set(cents),
        currency: Set(currency.to_string()),
        status: Set(LedgerEntryStatus::Approved),
        created_at: Set(now),
        available_at: Set(now),
        updated_at: Set(now),
        deal_seq: Set(None),
        invoice_id: Set(None),
        invoice_seq: Set(None),
        note: Set(Some(note)),
        hold_reason: Set(None),
        declines: Set(None),
    }
}

/// A payment reference (`markPayoutPaid`, `markPayoutRunPaid`): 1 to 200 characters.
pub fn check_reference(reference: &str) -> ApiResult<String> {
    let reference = reference.trim();
    if reference.is_empty() || reference.chars().count() > 200 {
        return Err(ApiError::bad_input(
            "input.reference",
            "must be 1 to 200 characters",
        ));
    }
    Ok(reference.to_string())
}

/// Input of `createAdjustment`.
#[derive(Debug, InputObject)]
pub struct CreateAdjustmentInput {
    /// The partner.
    pub partner_id: async_graphql::ID,
    /// The amount, positive (owed to the partner) or negative (owed by it); not zero.
    pub amount: Decimal,
    /// ISO 4217 code.
    pub currency: String,
    /// Why (1 to 1000 characters): the partner sees it.
    pub reason: String,
}

/// `createAdjustment` (admins): appends an `ADJUSTMENT` entry outside any deal, APPROVED at
/// once (payable by the next payout when positive, netted against it when negative), with
/// the reason the partner sees. The reconciler leaves it alone: it belongs to no deal.
pub async fn create_adjustment(
    db: &Db,
    input: CreateAdjustmentInput,
) -> ApiResult<crate::db::entities::ledger_entry::Model> {
    let currency = normalize_currency(&input.currency).ok_or_else(|| {
        ApiError::bad_input("input.currency", "must be an ISO 4217 currency code")
    })?;
    crate::domain::programs::check_money("input.amount", input.amount.abs())?;
    let cents = crate::domain::commission::to_cents(input.amount)
        .filter(|c| *c != 0)
        .ok_or_else(|| ApiError::bad_input("input.amount", "must not be zero"))?;
    let reason =
        crate::domain::normalize::optional_text("input.reason", Some(&input.reason), 1000)?
            .ok_or_else(|| ApiError::bad_input("input.reason", "is required"))?;
    if !is_valid_id(input.partner_id.as_str()) {
        return Err(ApiError::NotFound("partner"));
    }
    let tx = db.begin_write().await?;
    let partner = partner::Entity::find_by_id(input.partner_id.to_string())
        .one(&*tx)
        .await?
        .ok_or(ApiError::NotFound("partner"))?;
    let now = Utc::now();
    let entry = manual_entry(
        (&partner.id, &partner.program_id),
        LedgerEntryKind::Adjustment,
        cents,
        &currency,
        now,
        reason,
    )
    .insert(&*tx)
    .await?;
    tx.commit().await?;
    Ok(entry)
}

/// Input of `releaseHeldEntry`.
#[derive(Debug, InputObject)]
pub struct ReleaseHeldEntryInput {
    /// The HELD entry.
    pub id: async_graphql::ID,
}

/// `releaseHeldEntry` (admins): a HELD entry becomes PENDING until its `availableAt`, or
/// APPROVED when that has passed; its `holdReason` stays as the record of the review.
pub async fn release_held_entry(
    db: &Db,
    input: ReleaseHeldEntryInput,
) -> ApiResult<crate::db::entities::ledger_entry::Model> {
    use crate::db::entities::ledger_entry;
    if !is_valid_id(input.id.as_str()) {
        return Err(ApiError::NotFound("ledger entry"));
    }
    let tx = db.begin_write().await?;
    let entry = ledger_entry::Entity::find_by_id(input.id.to_string())
        .one(&*tx)
        .await?
        .ok_or(ApiError::NotFound("ledger entry"))?;
    if entry.status != LedgerEntryStatus::Held {
        return Err(ApiError::Conflict(format!(
            "the entry is {}, not HELD",
            entry.status
        )));
    }
    let now = Utc::now();
    let status = if entry.available_at <= now {
        LedgerEntryStatus::Approved
    } else {
        LedgerEntryStatus::Pending
    };
    let mut row: ledger_entry::ActiveModel = entry.into();
    row.status = Set(status);
    row.updated_at = Set(now);
    let released = row.update(&*tx).await?;
    tx.commit().await?;
    Ok(released)
}

/// Input of `declineLedgerEntry`.
#[derive(Debug, InputObject)]
pub struct DeclineLedgerEntryInput {
    /// The accrual (or positive adjustment) to decline.
    pub id: async_graphql::ID,
    /// Why (1 to 1000 characters): the partner sees it.
    pub reason: String,
}

/// What `declineLedgerEntry` did.
pub struct Declined {
    /// The declined entry (now APPROVED, netting with the reversal).
    pub declined: crate::db::entities::ledger_entry::Model,
    /// The reversal appended.
    pub reversal: crate::db::entities::ledger_entry::Model,
}

/// `declineLedgerEntry` (admins): appends an equal `REVERSAL` carrying the reason, and makes
/// the declined entry and its reversal APPROVED together so that they net to zero in the
/// balance and in any payout. Declining a deal's (or an invoice's) accrual declines the
/// partner's commission on it: later reconciles keep it at 0 (state `DECLINED`). Writes
/// `commission.declined`.
pub async fn decline_ledger_entry(db: &Db, input: DeclineLedgerEntryInput) -> ApiResult<Declined> {
    use crate::db::entities::ledger_entry;
    use sea_orm::QueryOrder;
    let reason =
        crate::domain::normalize::optional_text("input.reason", Some(&input.reason), 1000)?
            .ok_or_else(|| ApiError::bad_input("input.reason", "is required"))?;
    if !is_valid_id(input.id.as_str()) {
        return Err(ApiError::NotFound("ledger entry"));
    }
    let tx = db.begin_write().await?;
    let mut query = ledger_entry::Entity::find_by_id(input.id.to_string());
    if db.is_postgres() {
        query = query.lock_exclusive();
    }
    let entry = query
        .one(&*tx)
        .await?
        .ok_or(ApiError::NotFound("ledger entry"))?;
    let declinable = matches!(
        entry.kind,
        LedgerEntryKind::Accrual | LedgerEntryKind::Adjustment
    ) && entry.amount_cents > 0;
    if !declinable {
        return Err(ApiError::Conflict(
            "only accruals and positive adjustments can be declined".into(),
        ));
    }
    if entry.status == LedgerEntryStatus::Paid || entry.payout_id.is_some() {
        return Err(ApiError::Conflict(
            "the entry is already in a payout: use createAdjustment".into(),
        ));
    }
    let already = ledger_entry::Entity::find()
        .filter(ledger_entry::Column::Declines.eq(entry.id.as_str()))
        .one(&*tx)
        .await?;
    if already.is_some() {
        return Err(ApiError::Conflict("the entry is already declined".into()));
    }
    let now = Utc::now();
    // The next number of the (partner, deal or invoice) entries, after the reconciler's.
    let next = |column: ledger_entry::Column, seq: ledger_entry::Column, id: String| {
        let tx = &tx;
        let partner = entry.partner_id.clone();
        async move {
            let last = ledger_entry::Entity::find()
                .filter(ledger_entry::Column::PartnerId.eq(partner))
                .filter(column.eq(id))
                .order_by_desc(seq)
                .one(&**tx)
                .await?;
            Ok::<i32, sea_orm::DbErr>(
                last.and_then(|e| match seq {
                    ledger_entry::Column::DealSeq => e.deal_seq,
                    _ => e.invoice_seq,
                })
                .unwrap_or(0)
                    + 1,
            )
        }
    };
    let deal_seq = match &entry.deal_id {
        Some(id) => Some(
            next(
                ledger_entry::Column::DealId,
                ledger_entry::Column::DealSeq,
                id.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let invoice_seq = match &entry.invoice_id {
        Some(id) => Some(
            next(
                ledger_entry::Column::InvoiceId,
                ledger_entry::Column::InvoiceSeq,
                id.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let reversal = ledger_entry::ActiveModel {
        deal_id: Set(entry.deal_id.clone()),
        deal_seq: Set(deal_seq),
        invoice_id: Set(entry.invoice_id.clone()),
        invoice_seq: Set(invoice_seq),
        declines: Set(Some(entry.id.clone())),
        // With the declined entry: the two are always paid (and counted) together.
        available_at: Set(entry.available_at),
        ..manual_entry(
            (&entry.partner_id, &entry.program_id),
            LedgerEntryKind::Reversal,
            -entry.amount_cents,
            &entry.currency,
            now,
            reason.clone(),
        )
    }
    .insert(&*tx)
    .await
    .map_err(|e| {
        if crate::db::is_unique_violation(&e) {
            ApiError::Conflict("the reconciler booked this deal meanwhile: retry".into())
        } else {
            e.into()
        }
    })?;
    let mut row: ledger_entry::ActiveModel = entry.clone().into();
    row.status = Set(LedgerEntryStatus::Approved);
    row.updated_at = Set(now);
    let declined = row.update(&*tx).await?;
    events::record(
        &*tx,
        EventType::CommissionDeclined,
        &declined.program_id,
        Some(&declined.partner_id),
        json!({
            "ledgerEntryId": reversal.id,
            "declinedEntryId": declined.id,
            "dealId": declined.deal_id,
            "invoiceId": declined.invoice_id,
            "amount": from_cents(reversal.amount_cents).to_string(),
            "currency": reversal.currency,
            "reason": reason,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(Declined { declined, reversal })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_status_follows_its_payouts() {
        use PayoutStatus::{Failed, Paid, Pending};
        let status = |p: &[PayoutStatus]| run_status(p, Some(PayoutRunStatus::Draft));
        assert_eq!(status(&[Paid, Paid]), Some(PayoutRunStatus::Paid));
        assert_eq!(
            status(&[Paid, Failed]),
            Some(PayoutRunStatus::PartiallyPaid)
        );
        assert_eq!(
            status(&[Paid, Pending]),
            Some(PayoutRunStatus::PartiallyPaid)
        );
        assert_eq!(status(&[Failed, Pending]), Some(PayoutRunStatus::Failed));
        assert_eq!(status(&[Pending]), Some(PayoutRunStatus::Draft));
        assert_eq!(run_status(&[Pending], None), None);
        assert_eq!(status(&[]), Some(PayoutRunStatus::Draft));
    }
}
