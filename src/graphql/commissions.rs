//! GraphQL for the commission engine: `ledgerEntries`, `balances`, `payouts`, `kpis`,
//! `exchangeRates`, `jobRuns`; `setExchangeRate`, `runJob`, `createPayout`, `markPayoutPaid`.

use crate::graphql::admin_db;
use crate::graphql::caller;
use crate::graphql::connection::EqIf;
use std::time::Duration;

use async_graphql::{Context, ID, InputObject, Json, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sea_orm::EntityTrait;

use crate::{
    db::states::JobRunStatus,
    db::{
        Db,
        entities::{exchange_rate, invoice, job_run, ledger_entry, payout, program},
        pages::Direction,
    },
    domain::{
        auth::Principal,
        commission::from_cents,
        ids::is_valid_id,
        kpis::{KpiCache, KpiQuery, LeaderboardRow},
        ledger::{
            Balance, CreatePayoutInput, LedgerEntryKind, LedgerEntryStatus, MarkPayoutPaidInput,
            PayoutStatus, SetExchangeRateInput, balances, create_payout, mark_payout_paid,
            set_exchange_rate,
        },
        partners::find_visible_partner,
        programs::parse_stored_decimal,
    },
    error::ApiError,
    graphql::{
        connection::connection,
        loaders::Loaders,
        principal,
        types::{Deal, Partner, Program, page_complexity},
    },
    jobs::{JobName, Jobs},
};

/// A program through the request's loader.
pub(crate) async fn load_program(ctx: &Context<'_>, id: &str) -> Result<Option<Program>> {
    let loaders = ctx.data_unchecked::<Loaders>();
    Ok(loaders
        .programs
        .load_one(id.to_string())
        .await?
        .map(Program))
}

/// A partner through the request's loader.
pub(crate) async fn load_partner(ctx: &Context<'_>, id: &str) -> Result<Option<Partner>> {
    let loaders = ctx.data_unchecked::<Loaders>();
    Ok(loaders
        .partners
        .load_one(id.to_string())
        .await?
        .map(Partner))
}

/// One ledger entry: commission accrued, reversed, adjusted or paid.
pub struct LedgerEntry(pub ledger_entry::Model);

/// One ledger entry: commission accrued, reversed, adjusted or paid.
#[tandem_derive::plain_object]
#[Object]
impl LedgerEntry {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// ACCRUAL, REVERSAL, ADJUSTMENT or PAYOUT.
    async fn kind(&self) -> LedgerEntryKind {
        self.0.kind
    }
    /// Signed amount (reversals are negative).
    async fn amount(&self) -> Decimal {
        from_cents(self.0.amount_cents)
    }
    /// ISO 4217 code (the program currency).
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    /// PENDING, APPROVED or PAID.
    async fn status(&self) -> LedgerEntryStatus {
        self.0.status
    }
    /// When it was appended.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When it can be paid (accruals: `createdAt + holdDays`).
    async fn available_at(&self) -> DateTime<Utc> {
        self.0.available_at
    }
    /// The deal it concerns. For a partner key, null once the deal is attributed to another
    /// partner.
    async fn deal(&self, ctx: &Context<'_>) -> Result<Option<Deal>> {
        let Some(deal_id) = &self.0.deal_id else {
            return Ok(None);
        };
        let loaders = ctx.data_unchecked::<Loaders>();
        let attribution = loaders.attributions.load_one(deal_id.clone()).await?;
        if let Some(own) = principal(ctx).await?.partner_scope()
            && attribution.as_ref().is_none_or(|a| a.partner_id != own)
        {
            return Ok(None);
        }
        Ok(loaders
            .deals
            .load_one(deal_id.clone())
            .await?
            .map(|d| Deal::new(d, attribution)))
    }
    /// The invoice it concerns (recurring commission, DESIGN §11). Only the partner the
    /// invoice is credited to (and admins) see it.
    async fn invoice(&self, ctx: &Context<'_>) -> Result<Option<crate::graphql::billing::Invoice>> {
        let Some(invoice_id) = &self.0.invoice_id else {
            return Ok(None);
        };
        let loaders = ctx.data_unchecked::<Loaders>();
        let Some(found) = loaders.invoices.load_one(invoice_id.clone()).await? else {
            return Ok(None);
        };
        if let Some(own) = principal(ctx).await?.partner_scope()
            && found.partner_id.as_deref() != Some(own)
        {
            return Ok(None);
        }
        Ok(Some(crate::graphql::billing::Invoice(found)))
    }
    /// The partner it is owed to.
    async fn partner(&self, ctx: &Context<'_>) -> Result<Option<Partner>> {
        load_partner(ctx, &self.0.partner_id).await
    }
    /// Why an admin adjusted the ledger (`createAdjustment`) or declined an entry (on the
    /// reversal `declineLedgerEntry` appended).
    async fn note(&self) -> Option<&str> {
        self.0.note.as_deref()
    }
    /// Why the entry is (or was) HELD for review.
    async fn hold_reason(&self) -> Option<crate::db::states::HoldReason> {
        self.0.hold_reason
    }
    /// The entry this reversal declines.
    async fn declines(&self) -> Option<ID> {
        self.0.declines.clone().map(ID)
    }
    /// The payout that gathered it.
    async fn payout_id(&self) -> Option<ID> {
        self.0.payout_id.clone().map(ID)
    }
}

/// Result of `createAdjustment` and `releaseHeldEntry`.
#[derive(async_graphql::SimpleObject)]
pub struct CreateAdjustmentPayload {
    /// The entry appended (or released).
    pub ledger_entry: LedgerEntry,
}

/// Result of `declineLedgerEntry`.
#[derive(async_graphql::SimpleObject)]
pub struct DeclineLedgerEntryPayload {
    /// The declined entry.
    pub declined: LedgerEntry,
    /// The reversal appended, with the reason.
    pub reversal: LedgerEntry,
}

/// A payment to a partner gathering its approved entries.
pub struct Payout(pub payout::Model);

/// A payment to a partner gathering its approved entries.
#[tandem_derive::plain_object]
#[Object]
impl Payout {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The partner paid.
    async fn partner(&self, ctx: &Context<'_>) -> Result<Option<Partner>> {
        load_partner(ctx, &self.0.partner_id).await
    }
    /// ISO 4217 code.
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    /// Sum of the gathered entries.
    async fn total(&self) -> Decimal {
        from_cents(self.0.total_cents)
    }
    /// PENDING until marked paid.
    async fn status(&self) -> PayoutStatus {
        self.0.status
    }
    /// The payment reference given to `markPayoutPaid`.
    async fn reference(&self) -> Option<&str> {
        self.0.reference.as_deref()
    }
    /// When it was created.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When it was marked paid.
    async fn paid_at(&self) -> Option<DateTime<Utc>> {
        self.0.paid_at
    }
    /// The payout run that made it (null for `createPayout`).
    async fn run_id(&self) -> Option<ID> {
        self.0.run_id.clone().map(ID)
    }
    /// The partner's payout method when the run made it.
    async fn method(&self) -> Option<crate::db::states::PayoutMethodKind> {
        self.0.method_kind
    }
    /// The id files with short id fields carry (PayPal's Customer ID): the payout id in base 36.
    async fn short_id(&self) -> String {
        crate::domain::payout_runs::short_id(&self.0.id)
    }
    /// Why sending it failed.
    async fn failure(&self) -> Option<&str> {
        self.0.failure.as_deref()
    }
}

/// A rate converting deal amounts into a program currency.
pub struct ExchangeRate(pub exchange_rate::Model);

/// A rate converting deal amounts into a program currency.
#[tandem_derive::plain_object]
#[Object]
impl ExchangeRate {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Converted from.
    async fn base(&self) -> &str {
        &self.0.base
    }
    /// Converted into.
    async fn quote(&self) -> &str {
        &self.0.quote
    }
    /// One `base` is worth this many `quote`.
    async fn rate(&self) -> Result<Decimal> {
        Ok(parse_stored_decimal(&self.0.rate)?)
    }
    /// From when it applies.
    async fn effective_at(&self) -> DateTime<Utc> {
        self.0.effective_at
    }
}

/// One run of a scheduled job.
pub struct JobRun(pub job_run::Model);

/// One run of a scheduled job.
#[tandem_derive::plain_object]
#[Object]
impl JobRun {
    /// Unique id.
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// `reconcile`, `release-holds`, `crm-sync`, `prune`, `expire-registrations`, `lead-sla` or
    /// `certifications`.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// RUNNING, SUCCEEDED or FAILED.
    async fn status(&self) -> JobRunStatus {
        self.0.status
    }
    /// When it started.
    async fn started_at(&self) -> DateTime<Utc> {
        self.0.started_at
    }
    /// When it finished.
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }
    /// What it did (reconcile: mode, dealsChecked, entriesWritten, totalDrift, locked,
    /// missingExchangeRates, …).
    async fn stats(&self) -> Option<Json<serde_json::Value>> {
        self.0.stats.clone().map(Json)
    }
    /// Why it failed.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
}

/// One calendar month of a program's money (`Kpis.months`).
pub struct KpiMonth(pub crate::domain::kpis::MonthFigures);

/// One calendar month (UTC) of a program's money.
#[Object]
impl KpiMonth {
    /// `YYYY-MM`.
    async fn month(&self) -> &str {
        &self.0.month
    }
    /// Won attributed deals closed in the month.
    async fn won_revenue(&self) -> Decimal {
        self.0.won_revenue
    }
    /// Net commission booked in the month (accruals less reversals).
    async fn commission_accrued(&self) -> Decimal {
        self.0.commission_accrued
    }
}

/// One leaderboard line.
pub struct LeaderboardEntry(pub LeaderboardRow);

/// One leaderboard line.
#[Object]
impl LeaderboardEntry {
    /// The partner.
    async fn partner(&self, ctx: &Context<'_>) -> Result<Option<Partner>> {
        load_partner(ctx, &self.0.partner_id).await
    }
    /// Won revenue in the program currency.
    async fn won_revenue(&self) -> Decimal {
        self.0.won_revenue
    }
    /// Won deals.
    async fn deals_won(&self) -> i64 {
        self.0.deals_won
    }
}

/// Program KPIs. Referral figures are live; deal figures and their money (in the program
/// currency) are as of the last reconciliation (`runJob(reconcile)` refreshes them now);
/// commission figures come from the ledger and payouts.
pub struct Kpis(pub crate::domain::kpis::Kpis, pub KpiQuery);

/// Program KPIs. Referral figures are live; deal figures and their money (in the program
/// currency) are as of the last reconciliation (`runJob(reconcile)` refreshes them now);
/// commission figures come from the ledger and payouts.
#[Object]
impl Kpis {
    /// Referrals submitted in the range.
    async fn referrals_submitted(&self) -> i64 {
        self.0.referrals_submitted
    }
    /// Of those, accepted at some point (ACCEPTED, CONVERTED or EXPIRED).
    async fn referrals_accepted(&self) -> i64 {
        self.0.referrals_accepted
    }
    /// Of those, DUPLICATE.
    async fn referrals_duplicate(&self) -> i64 {
        self.0.referrals_duplicate
    }
    /// Attributed deals created in the range.
    async fn deals_attributed(&self) -> i64 {
        self.0.deals_attributed
    }
    /// Attributed deals won, closed in the range.
    async fn deals_won(&self) -> i64 {
        self.0.deals_won
    }
    /// Attributed deals lost or deleted, closed in the range.
    async fn deals_lost(&self) -> i64 {
        self.0.deals_lost
    }
    /// dealsWon ÷ referralsAccepted (null without accepted referrals).
    async fn conversion_rate(&self) -> Option<f64> {
        self.0.conversion_rate
    }
    /// dealsWon ÷ (dealsWon + dealsLost) (null without closed deals).
    async fn win_rate(&self) -> Option<f64> {
        self.0.win_rate
    }
    /// Open attributed deals (whatever the range).
    async fn pipeline_value(&self) -> Decimal {
        self.0.pipeline_value
    }
    /// Won attributed deals closed in the range.
    async fn won_revenue(&self) -> Decimal {
        self.0.won_revenue
    }
    /// Net commission booked in the range (accruals less reversals).
    async fn commission_accrued(&self) -> Decimal {
        self.0.commission_accrued
    }
    /// Payouts marked paid in the range.
    async fn commission_paid(&self) -> Decimal {
        self.0.commission_paid
    }
    /// Median hours from a referral's submission to the creation of the first deal attributed
    /// to it (referrals submitted in the range; null when none has a deal).
    async fn median_hours_to_first_deal(&self) -> Option<f64> {
        self.0.median_hours_to_first_deal
    }
    /// Of the referrals submitted in the range whose lead-engagement SLA is decided (met, or
    /// breached), the share met (null when none).
    async fn sla_met_rate(&self) -> Option<f64> {
        self.0.sla_met_rate
    }
    /// Median hours from a referral's acceptance to sales' first engagement with the lead
    /// (referrals submitted in the range; null when none was engaged).
    async fn median_hours_to_engagement(&self) -> Option<f64> {
        self.0.median_hours_to_engagement
    }
    /// Linked invoices paid in the range: amounts excluding tax, net of refunds and credit
    /// notes, in the program currency.
    async fn recurring_revenue(&self) -> Decimal {
        self.0.recurring_revenue
    }
    /// Referred customers whose recurring period has not ended.
    async fn active_customers(&self) -> i64 {
        self.0.active_customers
    }
    /// Net recurring commission booked on invoices in the range.
    async fn commission_recurring(&self) -> Decimal {
        self.0.commission_recurring
    }
    /// Won revenue and net commission by calendar month (UTC): the `last` months up to the month
    /// of `to` (before `to`), or up to the current month (all of it) without `to`; not before
    /// `from`; months with neither are left out. Oldest first.
    async fn months(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 12, validator(minimum = 1, maximum = 120))] last: i32,
    ) -> Result<Vec<KpiMonth>> {
        let db = ctx.data_unchecked::<Db>();
        Ok(ctx
            .data_unchecked::<KpiCache>()
            .by_month(db, &self.1, last as u32)
            .await?
            .into_iter()
            .map(KpiMonth)
            .collect())
    }
    /// Partners by won revenue (a partner key sees only itself).
    async fn leaderboard(&self) -> Vec<LeaderboardEntry> {
        self.0
            .leaderboard
            .iter()
            .cloned()
            .map(LeaderboardEntry)
            .collect()
    }
}

// Reached through connections, resolved field by field.

connection!(
    LedgerEntryConnection,
    LedgerEntryEdge,
    LedgerEntry,
    "ledger entries"
);
connection!(PayoutConnection, PayoutEdge, Payout, "payouts");
connection!(
    ExchangeRateConnection,
    ExchangeRateEdge,
    ExchangeRate,
    "exchange rates"
);
connection!(JobRunConnection, JobRunEdge, JobRun, "job runs");

/// Filters for `ledgerEntries`.
#[derive(Debug, Default, InputObject)]
pub struct LedgerEntryFilter {
    /// Only this partner's entries.
    pub partner_id: Option<ID>,
    /// Only entries of this deal.
    pub deal_id: Option<ID>,
    /// Only entries of this invoice.
    pub invoice_id: Option<ID>,
    /// Only this kind.
    pub kind: Option<LedgerEntryKind>,
    /// Only this status.
    pub status: Option<LedgerEntryStatus>,
}

/// Filters for `payouts`.
#[derive(Debug, Default, InputObject)]
pub struct PayoutFilter {
    /// Only this partner's payouts.
    pub partner_id: Option<ID>,
    /// Only payouts in this status.
    pub status: Option<PayoutStatus>,
}

/// Filters for `jobRuns`.
#[derive(Debug, Default, InputObject)]
pub struct JobRunFilter {
    /// Only runs of this job.
    pub name: Option<String>,
}

/// Commission queries.
#[derive(Default)]
pub struct CommissionQuery;

/// Commission queries.
#[Object]
impl CommissionQuery {
    /// Ledger entries, newest first. A partner key sees only its own.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn ledger_entries(
        &self,
        ctx: &Context<'_>,
        filter: Option<LedgerEntryFilter>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<LedgerEntryConnection> {
        let principal = principal(ctx).await?;
        principal.require_admin_or_partner()?;
        let filter = filter.unwrap_or_default();
        // A partner key asking for another partner's entries gets none: both filters apply.
        let query = ledger_entry::Entity::find()
            .eq_if(ledger_entry::Column::PartnerId, principal.partner_scope())
            .eq_if(
                ledger_entry::Column::PartnerId,
                filter.partner_id.map(|id| id.0),
            )
            .eq_if(ledger_entry::Column::DealId, filter.deal_id.map(|id| id.0))
            .eq_if(ledger_entry::Column::Kind, filter.kind.map(|k| k.as_str()))
            .eq_if(
                ledger_entry::Column::Status,
                filter.status.map(|s| s.as_str()),
            );
        // An invoice's entries are found by (partner, invoice): its partner is the invoice's.
        use sea_orm::{ColumnTrait, QueryFilter};
        let query = match filter.invoice_id {
            Some(id) => query
                .filter(ledger_entry::Column::InvoiceId.eq(id.0.as_str()))
                .filter(
                    ledger_entry::Column::PartnerId.in_subquery(
                        sea_orm::sea_query::Query::select()
                            .column(invoice::Column::PartnerId)
                            .from(invoice::Entity)
                            .and_where(invoice::Column::Id.eq(id.0))
                            .to_owned(),
                    ),
                ),
            None => query,
        };
        let page = (first, after);
        LedgerEntryConnection::page(ctx, query, Direction::Descending, page, LedgerEntry).await
    }

    /// A partner's balances per currency (pending, approved, in payout, paid).
    async fn balances(&self, ctx: &Context<'_>, partner_id: ID) -> Result<Vec<Balance>> {
        let (principal, db) = caller(ctx).await?;
        let partner = find_visible_partner(db, principal, partner_id.as_str())
            .await?
            .ok_or(ApiError::NotFound("partner"))?;
        Ok(balances(db, &partner.id).await?)
    }

    /// Payouts, newest first. A partner key sees only its own.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn payouts(
        &self,
        ctx: &Context<'_>,
        filter: Option<PayoutFilter>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<PayoutConnection> {
        let principal = principal(ctx).await?;
        principal.require_admin_or_partner()?;
        let filter = filter.unwrap_or_default();
        // A partner key asking for another partner's payouts gets none: both filters apply.
        let query = payout::Entity::find()
            .eq_if(payout::Column::PartnerId, principal.partner_scope())
            .eq_if(payout::Column::PartnerId, filter.partner_id.map(|id| id.0))
            .eq_if(payout::Column::Status, filter.status.map(|s| s.as_str()));
        PayoutConnection::page(ctx, query, Direction::Descending, (first, after), Payout).await
    }

    /// KPIs of a program, optionally for one partner and a time range (`from` inclusive, `to`
    /// exclusive). A partner key gets its own figures only. Aggregates over every deal of the
    /// program: it costs `KPI_COMPLEXITY` of the request's complexity budget, so one request
    /// asks for a few at most.
    #[allow(clippy::too_many_arguments)]
    #[graphql(complexity = "super::KPI_COMPLEXITY + child_complexity")]
    async fn kpis(
        &self,
        ctx: &Context<'_>,
        program_id: ID,
        partner_id: Option<ID>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        #[graphql(default = 10, validator(minimum = 0, maximum = 100))] leaderboard_size: i32,
    ) -> Result<Kpis> {
        let principal = principal(ctx).await?;
        principal.require_admin_or_partner()?;
        let db = ctx.data_unchecked::<Db>();
        if let (Some(from), Some(to)) = (from, to)
            && to <= from
        {
            return Err(ApiError::bad_input("to", "must be after from").into());
        }
        if !is_valid_id(program_id.as_str()) {
            return Err(ApiError::NotFound("program").into());
        }
        let partner_id = match (principal.partner_scope(), partner_id) {
            (Some(own), Some(asked)) if own != asked.as_str() => {
                return Err(ApiError::NotFound("partner").into());
            }
            (Some(own), _) => Some(own.to_string()),
            (None, Some(asked)) => {
                let found = find_visible_partner(db, principal, asked.as_str())
                    .await?
                    .ok_or(ApiError::NotFound("partner"))?;
                if found.program_id != program_id.as_str() {
                    return Err(ApiError::NotFound("partner").into());
                }
                Some(found.id)
            }
            (None, None) => None,
        };
        if let Principal::Partner {
            program_id: own, ..
        } = principal
            && own != program_id.as_str()
        {
            return Err(ApiError::NotFound("program").into());
        }
        program::Entity::find_by_id(program_id.to_string())
            .one(db.reads())
            .await
            .map_err(ApiError::from)?
            .ok_or(ApiError::NotFound("program"))?;
        let query = KpiQuery {
            program_id: program_id.to_string(),
            partner_id,
            from,
            to,
            leaderboard_size: leaderboard_size as u64,
        };
        let kpis = ctx.data_unchecked::<KpiCache>().kpis(db, &query).await?;
        Ok(Kpis(kpis, query))
    }

    /// Exchange rates, newest first (admins only), optionally of one pair.
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn exchange_rates(
        &self,
        ctx: &Context<'_>,
        base: Option<String>,
        quote: Option<String>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<ExchangeRateConnection> {
        principal(ctx).await?.require_admin()?;
        let code = |c: String| c.trim().to_ascii_uppercase();
        let query = exchange_rate::Entity::find()
            .eq_if(exchange_rate::Column::Base, base.map(code))
            .eq_if(exchange_rate::Column::Quote, quote.map(code));
        let page = (first, after);
        ExchangeRateConnection::page(ctx, query, Direction::Descending, page, ExchangeRate).await
    }

    /// Job runs, newest first (admins only).
    #[graphql(complexity = "page_complexity(first, child_complexity)")]
    async fn job_runs(
        &self,
        ctx: &Context<'_>,
        filter: Option<JobRunFilter>,
        #[graphql(validator(minimum = 0, maximum = 100))] first: Option<i32>,
        after: Option<String>,
    ) -> Result<JobRunConnection> {
        principal(ctx).await?.require_admin()?;
        let query =
            job_run::Entity::find().eq_if(job_run::Column::Name, filter.unwrap_or_default().name);
        JobRunConnection::page(ctx, query, Direction::Descending, (first, after), JobRun).await
    }
}

/// Input of `runJob`.
#[derive(Debug, InputObject)]
pub struct RunJobInput {
    /// `reconcile`, `release-holds`, `crm-sync`, `prune`, `expire-registrations`, `lead-sla` or
    /// `certifications`.
    pub name: String,
    /// reconcile: recompute every deal instead of what changed since the last run.
    #[graphql(default)]
    pub full: bool,
}

/// Result of `setExchangeRate`.
#[derive(SimpleObject)]
pub struct SetExchangeRatePayload {
    /// The rate as stored.
    pub exchange_rate: ExchangeRate,
}

/// Result of `runJob`.
#[derive(SimpleObject)]
pub struct RunJobPayload {
    /// The finished run (SUCCEEDED or FAILED).
    pub job_run: JobRun,
}

/// Result of `createPayout` and `markPayoutPaid`.
#[derive(SimpleObject)]
pub struct CreatePayoutPayload {
    /// The payout.
    pub payout: Payout,
}

/// Result of `markPayoutPaid`.
#[derive(SimpleObject)]
pub struct MarkPayoutPaidPayload {
    /// The payout, now PAID.
    pub payout: Payout,
}

/// Commission mutations (admins only).
#[derive(Default)]
pub struct CommissionMutation;

/// Commission mutations (admins only).
#[Object]
impl CommissionMutation {
    /// Records an exchange rate (deals closed from `effectiveAt` on convert with it).
    async fn set_exchange_rate(
        &self,
        ctx: &Context<'_>,
        input: SetExchangeRateInput,
    ) -> Result<SetExchangeRatePayload> {
        let rate = set_exchange_rate(admin_db(ctx).await?, input).await?;
        Ok(SetExchangeRatePayload {
            exchange_rate: ExchangeRate(rate),
        })
    }

    /// Runs a job now and returns its finished run. Waits (up to 60 s) for a run of the same
    /// job in progress on another instance, then answers CONFLICT.
    async fn run_job(&self, ctx: &Context<'_>, input: RunJobInput) -> Result<RunJobPayload> {
        principal(ctx).await?.require_admin()?;
        let name: JobName = input.name.parse()?;
        let jobs = ctx.data_unchecked::<Jobs>();
        let run = jobs
            .run_now(name, input.full, Duration::from_secs(60))
            .await?;
        Ok(RunJobPayload {
            job_run: JobRun(run),
        })
    }

    /// Gathers a partner's approved entries in a currency into a payout (CONFLICT when their
    /// total is not positive).
    async fn create_payout(
        &self,
        ctx: &Context<'_>,
        input: CreatePayoutInput,
    ) -> Result<CreatePayoutPayload> {
        let payout = create_payout(admin_db(ctx).await?, input).await?;
        Ok(CreatePayoutPayload {
            payout: Payout(payout),
        })
    }

    /// Appends an `ADJUSTMENT` to a partner's ledger outside any deal (admins): APPROVED at
    /// once, with the reason the partner sees.
    async fn create_adjustment(
        &self,
        ctx: &Context<'_>,
        input: crate::domain::ledger::CreateAdjustmentInput,
    ) -> Result<CreateAdjustmentPayload> {
        let entry = crate::domain::ledger::create_adjustment(admin_db(ctx).await?, input).await?;
        Ok(CreateAdjustmentPayload {
            ledger_entry: LedgerEntry(entry),
        })
    }

    /// Releases a HELD entry after review (admins): PENDING until its `availableAt`, then
    /// APPROVED like any other.
    async fn release_held_entry(
        &self,
        ctx: &Context<'_>,
        input: crate::domain::ledger::ReleaseHeldEntryInput,
    ) -> Result<CreateAdjustmentPayload> {
        let entry = crate::domain::ledger::release_held_entry(admin_db(ctx).await?, input).await?;
        Ok(CreateAdjustmentPayload {
            ledger_entry: LedgerEntry(entry),
        })
    }

    /// Declines an accrual (admins): appends an equal REVERSAL with the reason the partner
    /// sees; the two net to zero. A declined deal commission stays at 0. Writes
    /// `commission.declined`.
    async fn decline_ledger_entry(
        &self,
        ctx: &Context<'_>,
        input: crate::domain::ledger::DeclineLedgerEntryInput,
    ) -> Result<DeclineLedgerEntryPayload> {
        let done = crate::domain::ledger::decline_ledger_entry(admin_db(ctx).await?, input).await?;
        Ok(DeclineLedgerEntryPayload {
            declined: LedgerEntry(done.declined),
            reversal: LedgerEntry(done.reversal),
        })
    }

    /// Marks a payout and its entries PAID.
    async fn mark_payout_paid(
        &self,
        ctx: &Context<'_>,
        input: MarkPayoutPaidInput,
    ) -> Result<MarkPayoutPaidPayload> {
        let payout = mark_payout_paid(admin_db(ctx).await?, input).await?;
        Ok(MarkPayoutPaidPayload {
            payout: Payout(payout),
        })
    }
}
