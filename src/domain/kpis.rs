//! Program KPIs (DESIGN §4), each computed by SQL aggregates: referrals as they stand; deals and
//! their money (in the program currency) as of the last reconciliation, which keeps one row per
//! attributed deal (`deal_commissions`); commission from the ledger and payouts.

use chrono::{DateTime, Months, NaiveTime, Utc};
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DatabaseBackend, EntityTrait, QueryResult, Statement, Value};

use crate::{
    db::{Db, Memo, entities::program},
    domain::{commission::from_cents, ledger::COMMISSION_KINDS},
    error::ApiResult,
};

/// The question: a program, optionally one partner, optionally a time range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KpiQuery {
    /// The program.
    pub program_id: String,
    /// Only this partner.
    pub partner_id: Option<String>,
    /// From (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// To (exclusive).
    pub to: Option<DateTime<Utc>>,
    /// Leaderboard length.
    pub leaderboard_size: u64,
}

/// The answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Kpis {
    /// Referrals submitted in the range.
    pub referrals_submitted: i64,
    /// Of which ACCEPTED or CONVERTED.
    pub referrals_accepted: i64,
    /// Of which DUPLICATE.
    pub referrals_duplicate: i64,
    /// Attributed deals created in the range.
    pub deals_attributed: i64,
    /// Attributed deals won (closed in the range).
    pub deals_won: i64,
    /// Attributed deals lost or deleted (closed in the range).
    pub deals_lost: i64,
    /// dealsWon ÷ referralsAccepted.
    pub conversion_rate: Option<f64>,
    /// dealsWon ÷ (dealsWon + dealsLost).
    pub win_rate: Option<f64>,
    /// Open attributed deals, in program currency.
    pub pipeline_value: Decimal,
    /// Won attributed deals closed in the range, in program currency.
    pub won_revenue: Decimal,
    /// Net commission booked (accruals less reversals) in the range.
    pub commission_accrued: Decimal,
    /// Payouts marked paid in the range.
    pub commission_paid: Decimal,
    /// Median hours from a referral's submission to the creation of the first deal attributed
    /// to it (referrals submitted in the range).
    pub median_hours_to_first_deal: Option<f64>,
    /// Partners by won revenue.
    pub leaderboard: Vec<LeaderboardRow>,
    /// Linked invoices paid in the range: amounts excluding tax, net of refunds and credit
    /// notes, in program currency (DESIGN §11).
    pub recurring_revenue: Decimal,
    /// Referred customers whose recurring period has not ended (now).
    pub active_customers: i64,
    /// Net recurring commission booked on invoices in the range.
    pub commission_recurring: Decimal,
    /// Of the referrals submitted in the range whose lead SLA is decided, the share met.
    pub sla_met_rate: Option<f64>,
    /// Median hours from a referral's acceptance to sales' first engagement (referrals
    /// submitted in the range; engagement before acceptance counts 0).
    pub median_hours_to_engagement: Option<f64>,
}

/// One leaderboard line.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderboardRow {
    /// The partner.
    pub partner_id: String,
    /// Won revenue in program currency.
    pub won_revenue: Decimal,
    /// Won deals.
    pub deals_won: i64,
}

/// Builds `WHERE` fragments with numbered placeholders.
struct Filter<'a> {
    db: &'a Db,
    values: Vec<Value>,
}

impl<'a> Filter<'a> {
    fn new(db: &'a Db) -> Filter<'a> {
        Filter {
            db,
            values: Vec::new(),
        }
    }

    fn bind(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        self.db.numbered(self.values.len())
    }

    /// `program = ? [AND partner = ?] [AND time in range]`.
    fn scope(&mut self, q: &KpiQuery, program: &str, partner: &str, time: Option<&str>) -> String {
        // SQLite keeps no statistics here: with a partner it would still walk the program's
        // rows through the program-led indexes (more of their columns constrained). `+column`
        // leaves that term out of index selection, so the partner's own rows are read.
        let program = if q.partner_id.is_some() && !self.db.is_postgres() {
            format!("+{program}")
        } else {
            program.to_string()
        };
        let mut sql = format!("{program} = {}", self.bind(q.program_id.clone()));
        if let Some(partner_id) = &q.partner_id {
            sql.push_str(&format!(
                " AND {partner} = {}",
                self.bind(partner_id.clone())
            ));
        }
        if let Some(time) = time {
            sql.push_str(&format!(" AND {}", self.range(q, time)));
        }
        sql
    }

    /// `time` within `[from, to)` (`1 = 1` without bounds).
    fn range(&mut self, q: &KpiQuery, time: &str) -> String {
        let mut sql = String::from("1 = 1");
        if let Some(from) = q.from {
            sql.push_str(&format!(" AND {time} >= {}", self.bind(from)));
        }
        if let Some(to) = q.to {
            sql.push_str(&format!(" AND {time} < {}", self.bind(to)));
        }
        sql
    }
}

async fn one_row(db: &Db, sql: String, values: Vec<Value>) -> ApiResult<QueryResult> {
    let row = db
        .reads()
        .query_one_raw(Statement::from_sql_and_values(db.backend(), sql, values))
        .await?;
    row.ok_or_else(|| crate::error::ApiError::Internal("aggregate returned no row".into()))
}

fn count(cond: &str) -> String {
    format!("CAST(COALESCE(SUM(CASE WHEN {cond} THEN 1 ELSE 0 END), 0) AS BIGINT)")
}

fn cents(expr: &str) -> String {
    format!("CAST(COALESCE(SUM({expr}), 0) AS BIGINT)")
}

fn ratio(n: i64, d: i64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// The KPIs and monthly figures the API answers, kept while the data has not changed (see
/// [`Memo`]): a dashboard asks for the same figures again and again, and over a whole program
/// they take hundreds of milliseconds to compute. Each answer is counted in the metrics as
/// kept or computed (`tandem_kpi_answers_total`).
#[derive(Default)]
pub struct KpiCache {
    kpis: Memo<KpiQuery, Kpis>,
    months: Memo<KpiQuery, Vec<MonthFigures>>,
    metrics: Option<crate::metrics::Metrics>,
}

impl KpiCache {
    /// A cache whose answers are counted in `metrics`.
    pub fn counted(metrics: crate::metrics::Metrics) -> KpiCache {
        KpiCache {
            metrics: Some(metrics),
            ..KpiCache::default()
        }
    }

    /// [`kpis`], or its kept answer.
    pub async fn kpis(&self, db: &Db, q: &KpiQuery) -> ApiResult<Kpis> {
        let answer = self.kpis.answer(db, q.clone(), || compute(db, q)).await?;
        Ok(self.tally("kpis", answer))
    }

    /// [`by_month`], or its kept answer.
    pub async fn by_month(&self, db: &Db, q: &KpiQuery, last: u32) -> ApiResult<Vec<MonthFigures>> {
        let q = month_window(q, last, Utc::now());
        let answer = self
            .months
            .answer::<crate::error::ApiError, _>(db, q.clone(), || async {
                Ok((months_of(db, &q).await?, None))
            })
            .await?;
        Ok(self.tally("months", answer))
    }

    /// The value of an answer to `query`, counted in the metrics as kept or computed.
    fn tally<V>(&self, query: &str, (value, kept): (V, bool)) -> V {
        if let Some(metrics) = &self.metrics {
            metrics.observe_kpi_answer(query, if kept { "kept" } else { "computed" });
        }
        value
    }
}

/// Computes the KPIs.
pub async fn kpis(db: &Db, q: &KpiQuery) -> ApiResult<Kpis> {
    Ok(compute(db, q).await?.0)
}

/// The earlier of two optional instants.
fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The KPIs, and the instant they stop being true without any change of data (a pending lead
/// SLA falls due, a customer's recurring period ends). The parts read different tables and run
/// at once, each on its own connection.
async fn compute(db: &Db, q: &KpiQuery) -> ApiResult<(Kpis, Option<DateTime<Utc>>)> {
    let at = Utc::now();
    let (
        referrals,
        (overdue, next_due),
        deals,
        (accrued, commission_recurring, paid),
        median,
        median_engagement,
        (recurring_revenue, active_customers, first_ending),
        leaderboard,
    ) = tokio::try_join!(
        referral_counts(db, q),
        pending_slas(db, q, at),
        deal_figures(db, q),
        commission_figures(db, q),
        median_hours(db, q, "first_deal_hours"),
        median_hours(db, q, "engagement_hours"),
        recurring(db, q, at),
        leaderboard(db, q),
    )?;
    let sla_breached = referrals.breached + overdue;
    let kpis = Kpis {
        referrals_submitted: referrals.submitted,
        referrals_accepted: referrals.accepted,
        referrals_duplicate: referrals.duplicate,
        deals_attributed: deals.attributed,
        deals_won: deals.won,
        deals_lost: deals.lost,
        conversion_rate: ratio(deals.won, referrals.accepted),
        win_rate: ratio(deals.won, deals.won + deals.lost),
        pipeline_value: from_cents(deals.pipeline),
        won_revenue: from_cents(deals.revenue),
        commission_accrued: from_cents(accrued),
        commission_paid: from_cents(paid),
        median_hours_to_first_deal: median,
        leaderboard,
        recurring_revenue: from_cents(recurring_revenue),
        active_customers,
        commission_recurring: from_cents(commission_recurring),
        sla_met_rate: ratio(referrals.met, referrals.met + sla_breached),
        median_hours_to_engagement: median_engagement,
    };
    Ok((kpis, earliest(next_due, first_ending)))
}

/// Referral counts of a range, the lead SLAs as recorded (a pending one past due is counted by
/// [`pending_slas`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ReferralCounts {
    submitted: i64,
    accepted: i64,
    duplicate: i64,
    met: i64,
    breached: i64,
}

impl std::ops::AddAssign for ReferralCounts {
    fn add_assign(&mut self, other: ReferralCounts) {
        self.submitted += other.submitted;
        self.accepted += other.accepted;
        self.duplicate += other.duplicate;
        self.met += other.met;
        self.breached += other.breached;
    }
}

/// The referral counts: a program's whole UTC days from the day counts the database keeps
/// (`referral_days`, kept by triggers as referrals change), the part days at either end of the
/// range by reading those referrals; one partner's by reading its referrals.
async fn referral_counts(db: &Db, q: &KpiQuery) -> ApiResult<ReferralCounts> {
    let Some((first, end)) = whole_days(q) else {
        return scanned_referrals(db, q).await;
    };
    let mut counts = kept_referrals(db, q, first, end).await?;
    // The part days: from `from` to the first midnight, from the last midnight to `to`.
    let parts = [
        q.from.zip(first).filter(|(from, first)| from < first),
        end.zip(q.to).filter(|(end, to)| end < to),
    ];
    for (from, to) in parts.into_iter().flatten() {
        let part = KpiQuery {
            from: Some(from),
            to: Some(to),
            ..q.clone()
        };
        counts += scanned_referrals(db, &part).await?;
    }
    Ok(counts)
}

/// `[from, to)`, either open.
type Bounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// The whole UTC days within a program-wide query's range, `[first, end)` (`None` for no
/// bound); `None` when the query is one partner's or its range holds no whole day.
fn whole_days(q: &KpiQuery) -> Option<Bounds> {
    if q.partner_id.is_some() {
        return None;
    }
    let midnight = |at: DateTime<Utc>| at.date_naive().and_time(NaiveTime::MIN).and_utc();
    let first = q.from.map(|from| {
        let day = midnight(from);
        if day == from {
            day
        } else {
            day + chrono::Duration::days(1)
        }
    });
    let end = q.to.map(midnight);
    match (first, end) {
        (Some(first), Some(end)) if first >= end => None,
        bounds => Some(bounds),
    }
}

/// `YYYY-MM-DD`, the key of `referral_days`.
fn day_key(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

/// Sums the kept day counts of a program over `[first, end)`.
async fn kept_referrals(
    db: &Db,
    q: &KpiQuery,
    first: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
) -> ApiResult<ReferralCounts> {
    let mut f = Filter::new(db);
    let mut scope = format!("program_id = {}", f.bind(q.program_id.clone()));
    if let Some(first) = first {
        scope.push_str(&format!(" AND day >= {}", f.bind(day_key(first))));
    }
    if let Some(end) = end {
        scope.push_str(&format!(" AND day < {}", f.bind(day_key(end))));
    }
    let row = one_row(
        db,
        format!(
            "SELECT {} AS submitted, {} AS accepted, {} AS duplicate, {} AS met, {} AS breached \
             FROM referral_days WHERE {scope}",
            cents("submitted"),
            cents("accepted"),
            cents("duplicate"),
            cents("sla_met"),
            cents("sla_breached"),
        ),
        f.values,
    )
    .await?;
    referral_counts_of(&row)
}

/// Counts the referrals of the query's range by reading them (their index).
async fn scanned_referrals(db: &Db, q: &KpiQuery) -> ApiResult<ReferralCounts> {
    let mut f = Filter::new(db);
    let scope = f.scope(q, "program_id", "partner_id", Some("submitted_at"));
    let row = one_row(
        db,
        format!(
            "SELECT COUNT(*) AS submitted, {} AS accepted, {} AS duplicate, {} AS met, \
             {} AS breached FROM referrals WHERE {scope}",
            count("status IN ('ACCEPTED', 'CONVERTED', 'EXPIRED')"),
            count("status = 'DUPLICATE'"),
            count("sla_state = 'MET'"),
            count("sla_state = 'BREACHED'"),
        ),
        f.values,
    )
    .await?;
    referral_counts_of(&row)
}

fn referral_counts_of(row: &QueryResult) -> ApiResult<ReferralCounts> {
    Ok(ReferralCounts {
        submitted: row.try_get("", "submitted")?,
        accepted: row.try_get("", "accepted")?,
        duplicate: row.try_get("", "duplicate")?,
        met: row.try_get("", "met")?,
        breached: row.try_get("", "breached")?,
    })
}

/// Of the range's referrals whose lead SLA is pending: how many are past due at `at` (breached
/// before the sweep records it), and the next due time after `at`.
async fn pending_slas(
    db: &Db,
    q: &KpiQuery,
    at: DateTime<Utc>,
) -> ApiResult<(i64, Option<DateTime<Utc>>)> {
    let mut f = Filter::new(db);
    let scope = f.scope(q, "program_id", "partner_id", Some("submitted_at"));
    let now = f.bind(at);
    // SQLite plans without statistics and would rather read the program's KPI index.
    let index = if q.partner_id.is_none() && !db.is_postgres() {
        " INDEXED BY idx_referrals_pending"
    } else {
        ""
    };
    let row = one_row(
        db,
        format!(
            "SELECT {} AS overdue, MIN(CASE WHEN sla_due_at > {now} THEN sla_due_at END) \
             AS next_due FROM referrals{index} WHERE {scope} AND sla_state = 'PENDING'",
            count(&format!("sla_due_at <= {now}")),
        ),
        f.values,
    )
    .await?;
    Ok((row.try_get("", "overdue")?, row.try_get("", "next_due")?))
}

/// The attributed deals' figures (in cents of the program currency).
struct DealFigures {
    attributed: i64,
    won: i64,
    lost: i64,
    pipeline: i64,
    revenue: i64,
}

/// Deals, from the reconciler's view of every attributed deal (one scan): attributed by
/// creation, won and lost by close (a deleted deal counts lost), open ones as pipeline.
async fn deal_figures(db: &Db, q: &KpiQuery) -> ApiResult<DealFigures> {
    let mut f = Filter::new(db);
    let base = f.scope(q, "program_id", "partner_id", None);
    let created_range = f.range(q, "deal_created_at");
    let closed_range = f.range(q, "closed_at");
    let row = one_row(
        db,
        format!(
            "SELECT {} AS attributed, {} AS won, {} AS lost, {} AS pipeline, {} AS revenue \
             FROM deal_commissions WHERE {base} AND state <> 'DETACHED'",
            count(&created_range),
            count(&format!("deal_status = 'WON' AND {closed_range}")),
            count(&format!("deal_status = 'LOST' AND {closed_range}")),
            cents("CASE WHEN deal_status = 'OPEN' THEN amount_program_cents ELSE 0 END"),
            cents(&format!(
                "CASE WHEN deal_status = 'WON' AND {closed_range} THEN amount_program_cents ELSE 0 END"
            )),
        ),
        f.values,
    )
    .await?;
    Ok(DealFigures {
        attributed: row.try_get("", "attributed")?,
        won: row.try_get("", "won")?,
        lost: row.try_get("", "lost")?,
        pipeline: row.try_get("", "pipeline")?,
        revenue: row.try_get("", "revenue")?,
    })
}

/// Commission booked (of every kind, and the part earned on invoices) and payouts paid in the
/// range, in cents.
async fn commission_figures(db: &Db, q: &KpiQuery) -> ApiResult<(i64, i64, i64)> {
    let mut f = Filter::new(db);
    let scope = f.scope(q, "program_id", "partner_id", Some("created_at"));
    let row = one_row(
        db,
        format!(
            "SELECT {} AS accrued, {} AS recurring FROM ledger_entries WHERE {scope} \
             AND kind IN {COMMISSION_KINDS}",
            cents("amount_cents"),
            cents("CASE WHEN invoice_id IS NOT NULL THEN amount_cents ELSE 0 END"),
        ),
        f.values,
    )
    .await?;
    let accrued: i64 = row.try_get("", "accrued")?;
    let recurring: i64 = row.try_get("", "recurring")?;
    let mut f = Filter::new(db);
    let scope = f.scope(q, "program_id", "partner_id", Some("paid_at"));
    let row = one_row(
        db,
        format!(
            "SELECT {} AS paid FROM payouts WHERE {scope} AND status = 'PAID'",
            cents("total_cents")
        ),
        f.values,
    )
    .await?;
    Ok((accrued, recurring, row.try_get("", "paid")?))
}

/// Partners by won revenue in the range.
async fn leaderboard(db: &Db, q: &KpiQuery) -> ApiResult<Vec<LeaderboardRow>> {
    let mut f = Filter::new(db);
    let base = f.scope(q, "program_id", "partner_id", None);
    let won_range = f.range(q, "closed_at");
    let limit = f.bind(q.leaderboard_size as i64);
    let rows = db
        .reads()
        .query_all_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "SELECT partner_id, {} AS revenue, COUNT(*) AS won FROM deal_commissions \
                 WHERE {base} AND state <> 'DETACHED' AND deal_status = 'WON' AND {won_range} \
                 GROUP BY partner_id ORDER BY revenue DESC, partner_id LIMIT {limit}",
                cents("COALESCE(amount_program_cents, 0)")
            ),
            f.values,
        ))
        .await?;
    let mut leaderboard = Vec::with_capacity(rows.len());
    for row in rows {
        leaderboard.push(LeaderboardRow {
            partner_id: row.try_get("", "partner_id")?,
            won_revenue: from_cents(row.try_get("", "revenue")?),
            deals_won: row.try_get("", "won")?,
        });
    }
    Ok(leaderboard)
}

/// The recurring KPIs: invoice revenue in the range, customers still earning (at `at`), and
/// when the first of those stops earning.
async fn recurring(
    db: &Db,
    q: &KpiQuery,
    at: DateTime<Utc>,
) -> ApiResult<(i64, i64, Option<DateTime<Utc>>)> {
    let mut f = Filter::new(db);
    let scope = f.scope(q, "program_id", "partner_id", Some("paid_at"));
    let row = one_row(
        db,
        format!(
            "SELECT {} AS revenue FROM invoice_commissions WHERE {scope}",
            cents("COALESCE(amount_program_cents, 0)")
        ),
        f.values,
    )
    .await?;
    let revenue: i64 = row.try_get("", "revenue")?;
    let program = program::Entity::find_by_id(q.program_id.clone())
        .one(db.reads())
        .await?;
    let Some(program) = program.filter(|p| p.recurring_basis.is_some()) else {
        return Ok((revenue, 0, None));
    };
    let mut f = Filter::new(db);
    let mut scope = f.scope(q, "program_id", "partner_id", None);
    let months = program
        .recurring_months
        .map(|months| Months::new(months.max(0) as u32));
    if let Some(months) = months {
        // recurringUntil = firstWonAt + months > now  ⇔  firstWonAt > now - months.
        let since = at
            .checked_sub_months(months)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        scope.push_str(&format!(" AND first_won_at > {}", f.bind(since)));
    }
    let row = one_row(
        db,
        format!(
            "SELECT COUNT(*) AS active, MIN(first_won_at) AS oldest FROM customers WHERE {scope}"
        ),
        f.values,
    )
    .await?;
    let oldest: Option<DateTime<Utc>> = row.try_get("", "oldest")?;
    let ends = months.and_then(|months| oldest?.checked_add_months(months));
    Ok((revenue, row.try_get("", "active")?, ends))
}

/// The median of a referral's kept hours (`first_deal_hours`: submission to the first
/// attributed deal's creation; `engagement_hours`: acceptance to engagement) over the range's
/// referrals that have them. Both columns are kept by the database (migration
/// `m20261207_000014`) and indexed by program and hours: the statement counts them and steps to
/// the middle one or two.
async fn median_hours(db: &Db, q: &KpiQuery, column: &str) -> ApiResult<Option<f64>> {
    let mut f = Filter::new(db);
    let counted = f.scope(q, "program_id", "partner_id", Some("submitted_at"));
    let scope = f.scope(q, "r.program_id", "r.partner_id", Some("r.submitted_at"));
    let rows = db
        .reads()
        .query_all_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "WITH c AS (SELECT COUNT(*) AS n FROM referrals \
                   WHERE {counted} AND {column} IS NOT NULL) \
                 SELECT CAST(r.{column} AS DOUBLE PRECISION) AS hours, c.n AS n \
                 FROM referrals r CROSS JOIN c \
                 WHERE {scope} AND r.{column} IS NOT NULL ORDER BY r.{column} \
                 LIMIT 2 OFFSET (SELECT (n - 1) / 2 FROM c)"
            ),
            f.values,
        ))
        .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let n: i64 = first.try_get("", "n")?;
    let middle = if n % 2 == 1 { &rows[..1] } else { &rows[..] };
    let mut sum = 0.0;
    for row in middle {
        sum += row.try_get::<f64>("", "hours")?;
    }
    Ok(Some(sum / middle.len() as f64))
}

/// One calendar month (UTC) of a program's money.
#[derive(Debug, Clone, PartialEq)]
pub struct MonthFigures {
    /// `YYYY-MM`.
    pub month: String,
    /// Won attributed deals closed in the month, in program currency.
    pub won_revenue: Decimal,
    /// Net commission booked in the month (accruals less reversals).
    pub commission_accrued: Decimal,
}

/// The first instant of the month `months_back` months before the month of `at`.
fn month_start(at: DateTime<Utc>, months_back: u32) -> DateTime<Utc> {
    use chrono::{Datelike, TimeZone};
    let first = Utc
        .with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(at);
    first
        .checked_sub_months(Months::new(months_back))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Won revenue and commission by calendar month: the `last` months up to the month of the
/// query's `to` (exclusive) or the current month (whole), not before its `from`; months with
/// neither are left out. Oldest first.
pub async fn by_month(db: &Db, q: &KpiQuery, last: u32) -> ApiResult<Vec<MonthFigures>> {
    months_of(db, &month_window(q, last, Utc::now())).await
}

/// The query of [`by_month`]: `from` and `to` bound to the window of months, which depends on
/// the clock only through the current month.
fn month_window(q: &KpiQuery, last: u32, now: DateTime<Utc>) -> KpiQuery {
    let end = q.to.unwrap_or(now);
    let window_start = month_start(end, last.saturating_sub(1));
    let to = q.to.unwrap_or_else(|| {
        month_start(now, 0)
            .checked_add_months(Months::new(1))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    });
    KpiQuery {
        from: Some(q.from.map_or(window_start, |from| from.max(window_start))),
        to: Some(to),
        ..q.clone()
    }
}

/// The figures by month within the query's (bounded) range.
async fn months_of(db: &Db, q: &KpiQuery) -> ApiResult<Vec<MonthFigures>> {
    let month = |column: &str| match db.backend() {
        DatabaseBackend::Postgres => format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM')"),
        // Times are stored as UTC text (`YYYY-MM-DD HH:MM:SS…+00:00`).
        _ => format!("substr({column}, 1, 7)"),
    };
    // Won revenue by month of close, commission by month of booking: two statements, at once.
    let by_month = |table: &str, time: &str, amount: &str, only: &str| {
        let mut f = Filter::new(db);
        let scope = f.scope(q, "program_id", "partner_id", Some(time));
        let sql = format!(
            "SELECT {} AS month, {} AS cents FROM {table} WHERE {scope} AND {only} GROUP BY 1",
            month(time),
            cents(amount),
        );
        db.reads()
            .query_all_raw(Statement::from_sql_and_values(db.backend(), sql, f.values))
    };
    let (won, booked) = tokio::try_join!(
        by_month(
            "deal_commissions",
            "closed_at",
            "COALESCE(amount_program_cents, 0)",
            "state <> 'DETACHED' AND deal_status = 'WON'",
        ),
        by_month(
            "ledger_entries",
            "created_at",
            "amount_cents",
            &format!("kind IN {COMMISSION_KINDS}"),
        ),
    )?;
    let mut months: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
    for row in won {
        months.entry(row.try_get("", "month")?).or_default().0 +=
            row.try_get::<i64>("", "cents")?;
    }
    for row in booked {
        months.entry(row.try_get("", "month")?).or_default().1 +=
            row.try_get::<i64>("", "cents")?;
    }
    Ok(months
        .into_iter()
        .filter(|(_, (won, commission))| *won != 0 || *commission != 0)
        .map(|(month, (won, commission))| MonthFigures {
            month,
            won_revenue: from_cents(won),
            commission_accrued: from_cents(commission),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn month_windows_start_on_the_first() {
        let at = Utc.with_ymd_and_hms(2026, 3, 17, 12, 30, 0).unwrap();
        assert_eq!(
            month_start(at, 0),
            Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            month_start(at, 11),
            Utc.with_ymd_and_hms(2025, 4, 1, 0, 0, 0).unwrap()
        );
    }
}
