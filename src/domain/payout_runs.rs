//! Payout runs (DESIGN §14): a program pays every partner whose APPROVED entries available at
//! the cutoff reach the minimum, in one currency, one payout per partner, each snapshotting
//! the partner's payout method; partners left out are listed with the reason. A run is
//! exported for the rail finance uses — a SEPA credit transfer file (ISO 20022
//! `pain.001.001.03`), a PayPal Payouts batch CSV, or a plain CSV — and marked paid once the
//! bank or PayPal confirms.

use std::collections::HashMap;

use async_graphql::{Enum, ID, InputObject, SimpleObject};
use chrono::{DateTime, SecondsFormat, Utc};
use quick_xml::{
    Writer,
    events::{BytesDecl, BytesText, Event},
};
use rust_decimal::Decimal;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, Statement,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use crate::db::states::PayoutRunStatus;
use crate::{
    db::{
        Db,
        entities::{partner, payout, payout_method, payout_run, program},
        states::{PartnerStatus, PayoutMethodKind, PayoutStatus},
    },
    domain::{
        commission::{from_cents, to_cents},
        events::{self, EventType},
        ids::{is_valid_id, new_id},
        ledger,
        normalize::normalize_currency,
        payout_methods::{MethodDetails, PayoutMethodKind as Kind, SetPayoutMethodInput, check},
        programs::{check_money, find_program},
        secrets::SecretKey,
    },
    error::{ApiError, ApiResult},
};

/// Why a partner with money to pay was left out of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SkipReason {
    /// The partner has set no payout method.
    NoPayoutMethod,
    /// Its available amount is below the run's minimum (it waits for the next run).
    BelowMinimum,
    /// Its available entries net to zero or less.
    NothingToPay,
    /// The partner is suspended: nothing is paid until it is reinstated.
    PartnerSuspended,
    /// Entries of the partner are HELD for review: that amount is not paid (its other
    /// entries are) until a manager releases them.
    EntriesHeld,
}

/// A partner left out of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, SimpleObject)]
#[serde(rename_all = "camelCase")]
#[graphql(name = "SkippedPartner")]
pub struct Skipped {
    /// The partner.
    pub partner_id: String,
    /// Why.
    pub reason: SkipReason,
    /// What it would have been paid.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// Input of `createPayoutRun`.
#[derive(Debug, Clone, InputObject)]
pub struct CreatePayoutRunInput {
    /// The program.
    pub program_id: ID,
    /// The currency paid (the entries in it).
    pub currency: String,
    /// Entries available at this time are paid (default now; not in the future).
    pub cutoff: Option<DateTime<Utc>>,
    /// Partners whose available amount is below this wait for a later run (default 0.01).
    pub minimum_amount: Option<Decimal>,
}

/// One payout the run makes.
struct Planned {
    partner: partner::Model,
    method: payout_method::Model,
}

/// `createPayoutRun` (admins): one payout per partner whose APPROVED entries in `currency`
/// available at `cutoff`, not yet in a payout, reach `minimumAmount`; writes `payout.created`
/// for each. Partners with money but no method, under the minimum, with nothing positive, or
/// suspended are listed in `skipped`.
pub async fn create_payout_run(
    db: &Db,
    input: CreatePayoutRunInput,
) -> ApiResult<payout_run::Model> {
    let currency = normalize_currency(&input.currency).ok_or_else(|| {
        ApiError::bad_input("input.currency", "must be an ISO 4217 currency code")
    })?;
    let now = Utc::now();
    let cutoff = input.cutoff.unwrap_or(now);
    if cutoff > now + chrono::Duration::minutes(1) {
        return Err(ApiError::bad_input(
            "input.cutoff",
            "must not be in the future",
        ));
    }
    let minimum = input.minimum_amount.unwrap_or(Decimal::new(1, 2));
    check_money("input.minimumAmount", minimum)?;
    if minimum <= Decimal::ZERO {
        return Err(ApiError::bad_input(
            "input.minimumAmount",
            "must be greater than 0",
        ));
    }
    let minimum_cents = to_cents(minimum).unwrap_or(i64::MAX);
    let program_id = input.program_id.to_string();
    let tx = db.begin_write().await?;
    let program = find_program(&*tx, &program_id).await?;
    let [p1, p2, p3] = db.params();
    let available = tx
        .query_all_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "SELECT partner_id, CAST(SUM(amount_cents) AS BIGINT) AS cents \
                 FROM ledger_entries WHERE program_id = {p1} AND currency = {p2} \
                 AND status = 'APPROVED' AND payout_id IS NULL AND available_at <= {p3} \
                 GROUP BY partner_id ORDER BY partner_id"
            ),
            [
                program.id.clone().into(),
                currency.clone().into(),
                cutoff.into(),
            ],
        ))
        .await?;
    let partners: HashMap<String, partner::Model> = partner::Entity::find()
        .filter(partner::Column::ProgramId.eq(program.id.as_str()))
        .all(&*tx)
        .await?
        .into_iter()
        .map(|p| (p.id.clone(), p))
        .collect();
    let mut methods: HashMap<String, payout_method::Model> = payout_method::Entity::find()
        .filter(payout_method::Column::ProgramId.eq(program.id.as_str()))
        .all(&*tx)
        .await?
        .into_iter()
        .map(|m| (m.partner_id.clone(), m))
        .collect();
    let mut skipped: Vec<Skipped> = Vec::new();
    let mut planned: Vec<Planned> = Vec::new();
    for row in available {
        let partner_id: String = row.try_get("", "partner_id")?;
        let cents: i64 = row.try_get("", "cents")?;
        let Some(partner) = partners.get(&partner_id) else {
            continue;
        };
        let skip = |reason| Skipped {
            partner_id: partner_id.clone(),
            reason,
            amount: from_cents(cents),
        };
        let reason = if cents <= 0 {
            Some(SkipReason::NothingToPay)
        } else if partner.status == PartnerStatus::Suspended {
            Some(SkipReason::PartnerSuspended)
        } else if !methods.contains_key(&partner_id) {
            Some(SkipReason::NoPayoutMethod)
        } else if cents < minimum_cents {
            Some(SkipReason::BelowMinimum)
        } else {
            None
        };
        match (reason, methods.remove(&partner_id)) {
            (Some(reason), _) => skipped.push(skip(reason)),
            (None, Some(method)) => planned.push(Planned {
                partner: partner.clone(),
                method,
            }),
            (None, None) => skipped.push(skip(SkipReason::NoPayoutMethod)),
        }
    }
    // Held entries are never paid: the partners concerned are listed with the held amount.
    for row in tx
        .query_all_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "SELECT partner_id, CAST(SUM(amount_cents) AS BIGINT) AS cents \
                 FROM ledger_entries WHERE program_id = {p1} AND currency = {p2} \
                 AND status = 'HELD' GROUP BY partner_id"
            ),
            [program.id.clone().into(), currency.clone().into()],
        ))
        .await?
    {
        let cents: i64 = row.try_get("", "cents")?;
        if cents != 0 {
            skipped.push(Skipped {
                partner_id: row.try_get("", "partner_id")?,
                reason: SkipReason::EntriesHeld,
                amount: from_cents(cents),
            });
        }
    }
    let run_id = new_id();
    let mut total: i64 = 0;
    let mut count = 0;
    let mut caused = Vec::new();
    let [q1, q2, q3, q4, q5, q6] = db.params();
    for Planned { partner, method } in planned {
        let payout_id = new_id();
        // Gathered under the same conditions as summed: what another writer gathered in
        // between is not taken twice (the sum is what this statement returns).
        let rows = tx
            .query_all_raw(Statement::from_sql_and_values(
                db.backend(),
                format!(
                    "UPDATE ledger_entries SET payout_id = {q1}, updated_at = {q2} \
                     WHERE partner_id = {q3} AND currency = {q4} AND status = 'APPROVED' \
                     AND payout_id IS NULL AND available_at <= {q5} AND program_id = {q6} \
                     RETURNING amount_cents"
                ),
                [
                    payout_id.clone().into(),
                    now.into(),
                    partner.id.clone().into(),
                    currency.clone().into(),
                    cutoff.into(),
                    program.id.clone().into(),
                ],
            ))
            .await?;
        let mut cents: i64 = 0;
        for row in &rows {
            cents = cents.saturating_add(row.try_get::<i64>("", "amount_cents")?);
        }
        if cents < minimum_cents {
            // Changed under us: give the entries back and wait for the next run.
            tx.execute_raw(Statement::from_sql_and_values(
                db.backend(),
                format!("UPDATE ledger_entries SET payout_id = NULL WHERE payout_id = {q1}"),
                [payout_id.clone().into()],
            ))
            .await?;
            skipped.push(Skipped {
                partner_id: partner.id.clone(),
                reason: if cents <= 0 {
                    SkipReason::NothingToPay
                } else {
                    SkipReason::BelowMinimum
                },
                amount: from_cents(cents),
            });
            continue;
        }
        payout::ActiveModel {
            id: Set(payout_id.clone()),
            partner_id: Set(partner.id.clone()),
            program_id: Set(program.id.clone()),
            currency: Set(currency.clone()),
            total_cents: Set(cents),
            status: Set(PayoutStatus::Pending),
            reference: Set(None),
            created_at: Set(now),
            paid_at: Set(None),
            run_id: Set(Some(run_id.clone())),
            method_kind: Set(Some(method.kind)),
            method_details: Set(Some(method.details.clone())),
            failure: Set(None),
            send_generation: Set(None),
        }
        .insert(&*tx)
        .await?;
        caused.push(events::new_event(
            EventType::PayoutCreated,
            &program.id,
            Some(&partner.id),
            json!({
                "payoutId": payout_id,
                "total": from_cents(cents).to_string(),
                "currency": currency,
                "entries": rows.len(),
            }),
        ));
        total = total.saturating_add(cents);
        count += 1;
    }
    if count == 0 && skipped.is_empty() {
        return Err(ApiError::Conflict(format!(
            "no partner of the program has approved {currency} entries available at the cutoff"
        )));
    }
    skipped.sort_by(|a, b| (&a.partner_id, a.reason as u8).cmp(&(&b.partner_id, b.reason as u8)));
    let run = payout_run::ActiveModel {
        id: Set(run_id),
        program_id: Set(program.id.clone()),
        currency: Set(currency),
        cutoff: Set(cutoff),
        minimum_cents: Set(minimum_cents),
        status: Set(PayoutRunStatus::Draft),
        total_cents: Set(total),
        payout_count: Set(count),
        skipped: Set(serde_json::to_value(&skipped)
            .map_err(|e| ApiError::Internal(format!("skipped: {e}")))?),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&*tx)
    .await?;
    events::record_all(&*tx, caused).await?;
    tx.commit().await?;
    Ok(run)
}

/// The partners a run left out.
pub fn skipped_of(run: &payout_run::Model) -> ApiResult<Vec<Skipped>> {
    serde_json::from_value(run.skipped.clone())
        .map_err(|e| ApiError::Internal(format!("payout run {} skipped: {e}", run.id)))
}

/// A run's payouts, by partner.
pub async fn payouts_of(
    conn: &impl ConnectionTrait,
    run_id: &str,
) -> ApiResult<Vec<payout::Model>> {
    Ok(payout::Entity::find()
        .filter(payout::Column::RunId.eq(run_id))
        .order_by_asc(payout::Column::PartnerId)
        .all(conn)
        .await?)
}

/// A run by id.
pub async fn find_run(conn: &impl ConnectionTrait, id: &str) -> ApiResult<payout_run::Model> {
    if !is_valid_id(id) {
        return Err(ApiError::NotFound("payout run"));
    }
    payout_run::Entity::find_by_id(id.to_string())
        .one(conn)
        .await?
        .ok_or(ApiError::NotFound("payout run"))
}

/// A program's runs, newest first.
pub async fn runs_of(db: &Db, program_id: &str) -> ApiResult<Vec<payout_run::Model>> {
    Ok(payout_run::Entity::find()
        .filter(payout_run::Column::ProgramId.eq(program_id))
        .order_by_desc(payout_run::Column::Id)
        .all(db.reads())
        .await?)
}

/// Input of `markPayoutRunPaid`.
#[derive(Debug, InputObject)]
pub struct MarkPayoutRunPaidInput {
    /// The run.
    pub id: ID,
    /// The bank's or PayPal's batch reference.
    pub reference: String,
}

/// `markPayoutRunPaid` (admins): marks every unpaid payout of the run, and its entries, PAID
/// with the reference; writes `payout.paid` for each.
pub async fn mark_run_paid(db: &Db, input: MarkPayoutRunPaidInput) -> ApiResult<payout_run::Model> {
    let reference = ledger::check_reference(&input.reference)?;
    let tx = db.begin_write().await?;
    let run = find_run(&*tx, input.id.as_str()).await?;
    let now = Utc::now();
    let mut caused = Vec::new();
    let mut marked = 0;
    for p in payouts_of(&*tx, &run.id).await? {
        if p.status == PayoutStatus::Paid {
            continue;
        }
        caused.push(events::new_event(
            EventType::PayoutPaid,
            &p.program_id,
            Some(&p.partner_id),
            json!({
                "payoutId": p.id,
                "total": from_cents(p.total_cents).to_string(),
                "currency": p.currency,
                "reference": reference,
            }),
        ));
        ledger::pay_payout(&*tx, p, &reference, now).await?;
        marked += 1;
    }
    if marked == 0 {
        return Err(ApiError::Conflict(
            "every payout of the run is already paid".into(),
        ));
    }
    ledger::refresh_run_status(&*tx, &run.id, None).await?;
    events::record_all(&*tx, caused).await?;
    let run = find_run(&*tx, &run.id).await?;
    tx.commit().await?;
    Ok(run)
}

/// Input of `setProgramPayoutAccount`: the account a program pays from (the debtor of its
/// SEPA files).
#[derive(Debug, Clone, InputObject)]
pub struct SetProgramPayoutAccountInput {
    /// The program.
    pub program_id: ID,
    /// The account holder (the paying company).
    pub account_holder: String,
    /// Its IBAN.
    pub iban: String,
    /// Its bank's BIC (optional within the SEPA area).
    pub bic: Option<String>,
}

/// `setProgramPayoutAccount` (admins).
pub async fn set_program_account(
    db: &Db,
    key: &SecretKey,
    input: SetProgramPayoutAccountInput,
) -> ApiResult<program::Model> {
    let details = check(&SetPayoutMethodInput {
        partner_id: input.program_id.clone(),
        kind: Kind::Sepa,
        iban: Some(input.iban),
        bic: input.bic,
        account_holder: Some(input.account_holder),
        paypal_email: None,
        stripe_account_id: None,
    })?;
    let tx = db.begin_write().await?;
    let found = find_program(&*tx, input.program_id.as_str()).await?;
    let mut model: program::ActiveModel = found.into();
    model.payout_account = Set(Some(details.seal(key)?));
    model.payout_account_masked = Set(Some(details.masked()));
    // Not `updated_at`: the program's terms did not change (the reconciler keys on it).
    let updated = model.update(&*tx).await?;
    tx.commit().await?;
    Ok(updated)
}

/// The files a run exports to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum PayoutExportFormat {
    /// SEPA credit transfer initiation, ISO 20022 `pain.001.001.03` (the run's SEPA payouts,
    /// EUR).
    SepaPain001,
    /// PayPal Payouts batch CSV (the run's PayPal payouts).
    PaypalPayoutsCsv,
    /// Every payout of the run, one line each.
    Csv,
}

/// Input of `exportPayoutRun`.
#[derive(Debug, InputObject)]
pub struct ExportPayoutRunInput {
    /// The run.
    pub id: ID,
    /// The file.
    pub format: PayoutExportFormat,
}

/// An exported file.
#[derive(Debug, Clone, SimpleObject)]
pub struct PayoutExport {
    /// A file name for it.
    pub filename: String,
    /// Its media type.
    pub content_type: String,
    /// The file.
    pub content: String,
    /// Payouts in it.
    pub payouts: i32,
    /// Their total.
    pub total: Decimal,
}

/// A payout with its opened method.
struct Line {
    payout: payout::Model,
    partner: partner::Model,
    details: Option<MethodDetails>,
}

/// The compact form of an id (hex, no hyphens: 32 characters, within ISO 20022's 35).
pub fn compact_id(id: &str) -> String {
    id.replace('-', "")
}

/// An id in base 36 (at most 25 characters: PayPal's Customer ID takes 30).
pub fn short_id(id: &str) -> String {
    let Ok(uuid) = uuid::Uuid::parse_str(id) else {
        return compact_id(id);
    };
    let mut n = uuid.as_u128();
    let mut out = Vec::new();
    while n > 0 {
        let d = (n % 36) as u8;
        out.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        n /= 36;
    }
    if out.is_empty() {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// `exportPayoutRun` (admins): the run's unpaid payouts as a file for the rail.
pub async fn export_run(
    db: &Db,
    key: &SecretKey,
    input: ExportPayoutRunInput,
) -> ApiResult<PayoutExport> {
    let run = find_run(db.reads(), input.id.as_str()).await?;
    let program = find_program(db.reads(), &run.program_id).await?;
    let partners: HashMap<String, partner::Model> = partner::Entity::find()
        .filter(partner::Column::ProgramId.eq(run.program_id.as_str()))
        .all(db.reads())
        .await?
        .into_iter()
        .map(|p| (p.id.clone(), p))
        .collect();
    let mut lines = Vec::new();
    for p in payouts_of(db.reads(), &run.id).await? {
        let details = p
            .method_details
            .as_deref()
            .map(|sealed| MethodDetails::open(key, sealed))
            .transpose()?;
        let Some(partner) = partners.get(&p.partner_id).cloned() else {
            continue;
        };
        lines.push(Line {
            payout: p,
            partner,
            details,
        });
    }
    let unpaid = |kind: PayoutMethodKind| {
        lines
            .iter()
            .filter(move |l| l.payout.status != PayoutStatus::Paid)
            .filter(move |l| l.payout.method_kind == Some(kind))
    };
    let stamp = run.created_at.format("%Y%m%d");
    let (filename, content_type, content, chosen): (String, &str, String, Vec<&Line>) =
        match input.format {
            PayoutExportFormat::SepaPain001 => {
                if run.currency != "EUR" {
                    return Err(ApiError::Conflict(format!(
                        "SEPA credit transfers are in EUR; this run pays {}",
                        run.currency
                    )));
                }
                let debtor = program
                    .payout_account
                    .as_deref()
                    .map(|sealed| MethodDetails::open(key, sealed))
                    .transpose()?
                    .ok_or_else(|| {
                        ApiError::Conflict(
                            "the program has no payout account: set it with \
                             setProgramPayoutAccount first"
                                .into(),
                        )
                    })?;
                let chosen: Vec<&Line> = unpaid(PayoutMethodKind::Sepa).collect();
                let xml = pain_001(&run, &program, &debtor, &chosen)?;
                (
                    format!("payout-run-{stamp}-{}.xml", compact_id(&run.id)),
                    "application/xml",
                    xml,
                    chosen,
                )
            }
            PayoutExportFormat::PaypalPayoutsCsv => {
                let chosen: Vec<&Line> = unpaid(PayoutMethodKind::Paypal).collect();
                let mut csv = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(Vec::new());
                for line in &chosen {
                    let Some(MethodDetails::Paypal { email }) = &line.details else {
                        continue;
                    };
                    csv.write_record([
                        email.as_str(),
                        &from_cents(line.payout.total_cents).to_string(),
                        &line.payout.currency,
                        &short_id(&line.payout.id),
                        &format!("{} commission", program.name),
                    ])
                    .map_err(|e| ApiError::Internal(format!("csv: {e}")))?;
                }
                let bytes = csv
                    .into_inner()
                    .map_err(|e| ApiError::Internal(format!("csv: {e}")))?;
                (
                    format!("payout-run-{stamp}-{}-paypal.csv", compact_id(&run.id)),
                    "text/csv",
                    String::from_utf8_lossy(&bytes).into_owned(),
                    chosen,
                )
            }
            PayoutExportFormat::Csv => {
                let mut csv = csv::Writer::from_writer(Vec::new());
                let header = [
                    "payout_id",
                    "partner_id",
                    "partner_name",
                    "method",
                    "account",
                    "amount",
                    "currency",
                    "status",
                    "reference",
                ];
                csv.write_record(header)
                    .map_err(|e| ApiError::Internal(format!("csv: {e}")))?;
                for line in &lines {
                    csv.write_record([
                        line.payout.id.as_str(),
                        &line.partner.id,
                        &line.partner.name,
                        line.payout.method_kind.map_or("", |k| k.as_str()),
                        &line
                            .details
                            .as_ref()
                            .map(|d| d.masked())
                            .unwrap_or_default(),
                        &from_cents(line.payout.total_cents).to_string(),
                        &line.payout.currency,
                        line.payout.status.as_str(),
                        line.payout.reference.as_deref().unwrap_or(""),
                    ])
                    .map_err(|e| ApiError::Internal(format!("csv: {e}")))?;
                }
                let bytes = csv
                    .into_inner()
                    .map_err(|e| ApiError::Internal(format!("csv: {e}")))?;
                (
                    format!("payout-run-{stamp}-{}.csv", compact_id(&run.id)),
                    "text/csv",
                    String::from_utf8_lossy(&bytes).into_owned(),
                    lines.iter().collect(),
                )
            }
        };
    if chosen.is_empty() && input.format != PayoutExportFormat::Csv {
        return Err(ApiError::Conflict(
            "the run has no unpaid payout for this rail".into(),
        ));
    }
    let total: i64 = chosen.iter().map(|l| l.payout.total_cents).sum();
    Ok(PayoutExport {
        filename,
        content_type: content_type.to_string(),
        content,
        payouts: chosen.len() as i32,
        total: from_cents(total),
    })
}

type XmlWriter = Writer<Vec<u8>>;

fn xml_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("pain.001: {e}"))
}

/// `<name>text</name>`.
fn leaf(w: &mut XmlWriter, name: &str, text: &str) -> ApiResult<()> {
    w.create_element(name)
        .write_text_content(BytesText::new(text))
        .map_err(xml_err)?;
    Ok(())
}

/// `<name>` … `</name>` around `inner`.
fn node(
    w: &mut XmlWriter,
    name: &str,
    inner: impl FnOnce(&mut XmlWriter) -> ApiResult<()>,
) -> ApiResult<()> {
    w.write_event(Event::Start(quick_xml::events::BytesStart::new(name)))
        .map_err(xml_err)?;
    inner(w)?;
    w.write_event(Event::End(quick_xml::events::BytesEnd::new(name)))
        .map_err(xml_err)?;
    Ok(())
}

/// The account's bank: its BIC, or `NOTPROVIDED` (allowed within the SEPA area).
fn agent(w: &mut XmlWriter, name: &str, bic: Option<&str>) -> ApiResult<()> {
    node(w, name, |w| {
        node(w, "FinInstnId", |w| match bic {
            Some(bic) => leaf(w, "BIC", bic),
            None => node(w, "Othr", |w| leaf(w, "Id", "NOTPROVIDED")),
        })
    })
}

/// ISO 20022 text: SEPA's Latin character set, at most `max` characters.
fn sepa_text(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " /-?:().,'+".contains(c) {
                c
            } else {
                ' '
            }
        })
        .take(max)
        .collect::<String>()
        .trim()
        .to_string()
}

/// A SEPA credit transfer initiation (pain.001.001.03): one payment information block
/// debiting the program's account, one `CdtTrfTxInf` per payout (end-to-end id = the payout
/// id in compact form), control sums in both headers.
fn pain_001(
    run: &payout_run::Model,
    program: &program::Model,
    debtor: &MethodDetails,
    lines: &[&Line],
) -> ApiResult<String> {
    let MethodDetails::Sepa {
        iban: debtor_iban,
        bic: debtor_bic,
        account_holder: debtor_name,
    } = debtor
    else {
        return Err(ApiError::Internal("program account is not SEPA".into()));
    };
    let count = lines.len().to_string();
    let sum = from_cents(lines.iter().map(|l| l.payout.total_cents).sum()).to_string();
    let created = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let execution = Utc::now().date_naive().format("%Y-%m-%d").to_string();
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
        .map_err(xml_err)?;
    let mut document = quick_xml::events::BytesStart::new("Document");
    document.push_attribute(("xmlns", "urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"));
    document.push_attribute(("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"));
    w.write_event(Event::Start(document)).map_err(xml_err)?;
    node(&mut w, "CstmrCdtTrfInitn", |w| {
        node(w, "GrpHdr", |w| {
            leaf(w, "MsgId", &compact_id(&run.id))?;
            leaf(w, "CreDtTm", &created)?;
            leaf(w, "NbOfTxs", &count)?;
            leaf(w, "CtrlSum", &sum)?;
            node(w, "InitgPty", |w| {
                leaf(w, "Nm", &sepa_text(debtor_name, 70))
            })
        })?;
        node(w, "PmtInf", |w| {
            leaf(w, "PmtInfId", &compact_id(&run.id))?;
            leaf(w, "PmtMtd", "TRF")?;
            leaf(w, "BtchBookg", "true")?;
            leaf(w, "NbOfTxs", &count)?;
            leaf(w, "CtrlSum", &sum)?;
            node(w, "PmtTpInf", |w| {
                node(w, "SvcLvl", |w| leaf(w, "Cd", "SEPA"))
            })?;
            leaf(w, "ReqdExctnDt", &execution)?;
            node(w, "Dbtr", |w| leaf(w, "Nm", &sepa_text(debtor_name, 70)))?;
            node(w, "DbtrAcct", |w| {
                node(w, "Id", |w| leaf(w, "IBAN", debtor_iban))
            })?;
            agent(w, "DbtrAgt", debtor_bic.as_deref())?;
            leaf(w, "ChrgBr", "SLEV")?;
            for line in lines {
                let Some(MethodDetails::Sepa {
                    iban,
                    bic,
                    account_holder,
                }) = &line.details
                else {
                    continue;
                };
                node(w, "CdtTrfTxInf", |w| {
                    node(w, "PmtId", |w| {
                        leaf(w, "EndToEndId", &compact_id(&line.payout.id))
                    })?;
                    node(w, "Amt", |w| {
                        w.create_element("InstdAmt")
                            .with_attribute(("Ccy", "EUR"))
                            .write_text_content(BytesText::new(
                                &from_cents(line.payout.total_cents).to_string(),
                            ))
                            .map_err(xml_err)?;
                        Ok(())
                    })?;
                    if let Some(bic) = bic {
                        agent(w, "CdtrAgt", Some(bic))?;
                    }
                    node(w, "Cdtr", |w| leaf(w, "Nm", &sepa_text(account_holder, 70)))?;
                    node(w, "CdtrAcct", |w| node(w, "Id", |w| leaf(w, "IBAN", iban)))?;
                    node(w, "RmtInf", |w| {
                        leaf(
                            w,
                            "Ustrd",
                            &sepa_text(
                                &format!("{} commission {}", program.name, line.partner.name),
                                140,
                            ),
                        )
                    })
                })?;
            }
            Ok(())
        })
    })?;
    w.write_event(Event::End(quick_xml::events::BytesEnd::new("Document")))
        .map_err(xml_err)?;
    String::from_utf8(w.into_inner()).map_err(xml_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_fit_the_rails_limits() {
        let id = new_id();
        assert_eq!(compact_id(&id).len(), 32);
        assert!(short_id(&id).len() <= 25);
        assert_ne!(short_id(&id), short_id(&new_id()));
        assert_eq!(short_id("00000000-0000-0000-0000-000000000024"), "10");
    }

    #[test]
    fn sepa_text_keeps_the_latin_set() {
        assert_eq!(
            sepa_text("Müller & Söhne <GmbH>", 70),
            "M ller   S hne  GmbH"
        );
        assert_eq!(sepa_text(&"x".repeat(100), 70).len(), 70);
    }
}
