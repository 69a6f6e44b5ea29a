//! Programs and their commission plans: validation, creation, update.

use async_graphql::{InputObject, SimpleObject};
use chrono::Utc;
use rust_decimal::Decimal;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use crate::db::states::{CommissionType, ProgramKind, RecurringBasis, RegistrationApproval};
use crate::{
    db::{Db, entities::program},
    domain::{
        ids::new_id,
        normalize::{is_free_mail, normalize_currency, normalize_domain},
    },
    error::{ApiError, ApiResult},
};

/// A revenue tier: from `minRevenue` of prior revenue on, the rate is `rate` percent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, InputObject, SimpleObject)]
#[graphql(input_name = "TierInput")]
#[serde(rename_all = "camelCase")]
pub struct Tier {
    /// Prior revenue (program currency, trailing 365 days) from which this tier applies.
    #[serde(with = "rust_decimal::serde::str")]
    pub min_revenue: Decimal,
    /// The tier's percentage, such as `"25"`.
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
}

/// The recurring part of a plan (DESIGN §11): what a partner keeps earning on the customers
/// it brought, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, InputObject, SimpleObject, Serialize, Deserialize)]
#[graphql(input_name = "RecurringInput")]
#[serde(rename_all = "camelCase")]
pub struct Recurring {
    /// Months after the customer's first won deal during which it earns; null: for the
    /// customer's lifetime.
    pub months: Option<i32>,
    /// The recurring percentage, such as `"15"`; null: the plan's own rate (tiers apply).
    #[serde(with = "rust_decimal::serde::str_option")]
    pub rate: Option<Decimal>,
    /// `DEALS`: later won deals of the customer; `INVOICES`: every paid invoice.
    pub basis: RecurringBasis,
}

/// How a program's deal registrations are approved and protected (DESIGN §12).
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
#[graphql(name = "RegistrationSettings")]
pub struct Registration {
    /// `AUTO` accepts new registrations at once; `MANUAL` leaves them `SUBMITTED` for review.
    pub approval: RegistrationApproval,
    /// Days an accepted registration is protected (0: none, it expires at the next expiry run).
    pub protection_days: i32,
    /// Days each `extendReferral` adds.
    pub extension_days: i32,
    /// How many times a registration can be extended.
    pub max_extensions: i32,
}

impl Registration {
    /// A program's settings.
    pub fn of(program: &program::Model) -> Registration {
        Registration {
            approval: program.registration_approval,
            protection_days: program.protection_days,
            extension_days: program.extension_days,
            max_extensions: program.max_extensions,
        }
    }
}

/// Registration settings for `createProgram` / `updateProgram`: absent fields keep their value
/// (on creation: `AUTO`, 90, 30, 1).
#[derive(Debug, Clone, InputObject)]
pub struct RegistrationInput {
    /// `AUTO` or `MANUAL`.
    pub approval: Option<RegistrationApproval>,
    /// 0 to 3650 days.
    pub protection_days: Option<i32>,
    /// 1 to 3650 days.
    pub extension_days: Option<i32>,
    /// 0 to 100.
    pub max_extensions: Option<i32>,
}

/// Sets a program row's registration settings: `current`, with what `input` gives.
fn apply_registration(
    model: &mut program::ActiveModel,
    current: &Registration,
    input: Option<RegistrationInput>,
    path: &str,
) -> ApiResult<()> {
    let input = input.unwrap_or(RegistrationInput {
        approval: None,
        protection_days: None,
        extension_days: None,
        max_extensions: None,
    });
    model.registration_approval = Set(input.approval.unwrap_or(current.approval));
    model.protection_days = Set(check_days(
        &format!("{path}.protectionDays"),
        input.protection_days,
        current.protection_days,
        0,
    )?);
    model.extension_days = Set(check_days(
        &format!("{path}.extensionDays"),
        input.extension_days,
        current.extension_days,
        1,
    )?);
    let max_extensions = input.max_extensions.unwrap_or(current.max_extensions);
    if !(0..=100).contains(&max_extensions) {
        return Err(ApiError::bad_input(
            format!("{path}.maxExtensions"),
            "must be between 0 and 100",
        ));
    }
    model.max_extensions = Set(max_extensions);
    Ok(())
}

/// A program's application settings.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
#[graphql(name = "ApplicationSettings")]
pub struct Applications {
    /// Whether `applyToProgram` accepts applications (without a key).
    pub open: bool,
    /// Email domains whose applicants are approved at once.
    pub auto_approve_domains: Vec<String>,
}

impl Applications {
    /// A program's settings.
    pub fn of(program: &program::Model) -> Applications {
        Applications {
            open: program.applications_open,
            auto_approve_domains: serde_json::from_value(program.auto_approve_domains.clone())
                .unwrap_or_default(),
        }
    }
}

/// Application settings for `createProgram` / `updateProgram` (absent fields keep their value;
/// on creation: closed, no auto-approved domains).
#[derive(Debug, Clone, InputObject)]
pub struct ApplicationsInput {
    /// Open the program to public applications.
    pub open: Option<bool>,
    /// Email domains approved at once (normalised; free-mail domains are refused; at most 100).
    pub auto_approve_domains: Option<Vec<String>>,
}

/// Sets a program row's application settings: `current`, with what `input` gives.
fn apply_applications(
    model: &mut program::ActiveModel,
    current: &Applications,
    input: Option<ApplicationsInput>,
    path: &str,
) -> ApiResult<()> {
    let input = input.unwrap_or(ApplicationsInput {
        open: None,
        auto_approve_domains: None,
    });
    model.applications_open = Set(input.open.unwrap_or(current.open));
    let domains = match input.auto_approve_domains {
        None => current.auto_approve_domains.clone(),
        Some(given) => {
            if given.len() > 100 {
                return Err(ApiError::bad_input(
                    format!("{path}.autoApproveDomains"),
                    "at most 100 domains",
                ));
            }
            let mut domains = Vec::with_capacity(given.len());
            for (i, d) in given.iter().enumerate() {
                let field = format!("{path}.autoApproveDomains[{i}]");
                let domain = normalize_domain(d)
                    .ok_or_else(|| ApiError::bad_input(&field, "must be a domain name"))?;
                if is_free_mail(&domain) {
                    return Err(ApiError::bad_input(
                        field,
                        "a free-mail domain would approve anyone",
                    ));
                }
                domains.push(domain);
            }
            domains.sort();
            domains.dedup();
            domains
        }
    };
    model.auto_approve_domains = Set(json!(domains));
    Ok(())
}

/// Minutes of a lead-engagement SLA: 1 minute to 365 days.
fn check_sla_minutes(field: &str, minutes: Option<i32>) -> ApiResult<Option<i32>> {
    match minutes {
        Some(m) if !(1..=525_600).contains(&m) => Err(ApiError::bad_input(
            field,
            "must be between 1 and 525600 minutes (365 days), or null for no SLA",
        )),
        other => Ok(other),
    }
}

/// A commission plan as given to `createProgram` / `updateProgram`.
#[derive(Debug, Clone, InputObject)]
pub struct CommissionPlanInput {
    /// `PERCENT` (needs `rate`) or `FLAT` (needs `flatAmount`).
    #[graphql(name = "type")]
    pub commission_type: CommissionType,
    /// Percentage of the deal amount, 0 < rate ≤ 100.
    pub rate: Option<Decimal>,
    /// Amount per won deal, in the program currency.
    pub flat_amount: Option<Decimal>,
    /// Rate tiers by prior revenue, in increasing `minRevenue` order (PERCENT only).
    pub tiers: Option<Vec<Tier>>,
    /// Upper bound on one deal's commission.
    pub cap_per_deal: Option<Decimal>,
    /// Deals below this amount earn nothing.
    pub min_deal_amount: Option<Decimal>,
    /// Recurring revenue share on the customers a partner brings (DESIGN §11).
    pub recurring: Option<Recurring>,
}

/// A commission plan (a program's, or a partner group's).
#[derive(Debug, Clone, PartialEq, SimpleObject, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommissionPlan {
    /// `PERCENT` or `FLAT`.
    #[graphql(name = "type")]
    #[serde(rename = "type")]
    pub commission_type: CommissionType,
    /// Percentage of the deal amount (PERCENT).
    #[serde(with = "rust_decimal::serde::str_option")]
    pub rate: Option<Decimal>,
    /// Amount per won deal (FLAT).
    #[serde(with = "rust_decimal::serde::str_option")]
    pub flat_amount: Option<Decimal>,
    /// Rate tiers by the partner's prior revenue.
    pub tiers: Vec<Tier>,
    /// Upper bound on one deal's commission.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub cap_per_deal: Option<Decimal>,
    /// Deals below this amount earn nothing.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub min_deal_amount: Option<Decimal>,
    /// Recurring revenue share, if the plan pays one.
    pub recurring: Option<Recurring>,
}

impl CommissionPlan {
    /// Whether the program pays on invoices (its deals then earn nothing themselves).
    pub fn pays_invoices(&self) -> bool {
        self.recurring
            .as_ref()
            .is_some_and(|r| r.basis == RecurringBasis::Invoices)
    }

    /// The plan a recurring commission (a `CUSTOMER` deal, or an invoice) is computed with:
    /// `recurring.rate` as a plain percentage, or without one the plan's own rate and tiers.
    /// Invoices (`for_invoices`) have no per-deal cap or minimum.
    pub fn recurring_plan(&self, for_invoices: bool) -> CommissionPlan {
        let mut plan = self.clone();
        plan.recurring = None;
        if let Some(rate) = self.recurring.as_ref().and_then(|r| r.rate) {
            plan.commission_type = CommissionType::Percent;
            plan.rate = Some(rate);
            plan.flat_amount = None;
            plan.tiers = Vec::new();
        }
        if for_invoices {
            plan.cap_per_deal = None;
            plan.min_deal_amount = None;
        }
        plan
    }
}

fn check_percentage(field: &str, value: Decimal, allow_zero: bool) -> ApiResult<()> {
    let too_low = if allow_zero {
        value < Decimal::ZERO
    } else {
        value <= Decimal::ZERO
    };
    if too_low || value > Decimal::ONE_HUNDRED {
        return Err(ApiError::bad_input(
            field,
            if allow_zero {
                "must be a percentage between 0 and 100"
            } else {
                "must be a percentage greater than 0 and at most 100"
            },
        ));
    }
    Ok(())
}

/// Checks an amount of money (bounds, at most 2 decimal places).
pub fn check_money(field: &str, value: Decimal) -> ApiResult<()> {
    tandem_connectors::money::check_amount(value)
        .map_err(|rule| ApiError::bad_input(field, rule))?;
    if value.scale() > 2 && value.normalize().scale() > 2 {
        return Err(ApiError::bad_input(
            field,
            "must have at most 2 decimal places",
        ));
    }
    Ok(())
}

impl CommissionPlanInput {
    /// Validates the plan; `path` is the input path used in error messages.
    pub fn validate(self, path: &str) -> ApiResult<CommissionPlan> {
        let field = |name: &str| format!("{path}.{name}");
        let tiers = self.tiers.unwrap_or_default();
        match self.commission_type {
            CommissionType::Percent => {
                let rate = self.rate.ok_or_else(|| {
                    ApiError::bad_input(field("rate"), "PERCENT plans need a rate")
                })?;
                check_percentage(&field("rate"), rate, false)?;
                if self.flat_amount.is_some() {
                    return Err(ApiError::bad_input(
                        field("flatAmount"),
                        "PERCENT plans take no flatAmount",
                    ));
                }
            }
            CommissionType::Flat => {
                let flat = self.flat_amount.ok_or_else(|| {
                    ApiError::bad_input(field("flatAmount"), "FLAT plans need a flatAmount")
                })?;
                check_money(&field("flatAmount"), flat)?;
                if self.rate.is_some() {
                    return Err(ApiError::bad_input(
                        field("rate"),
                        "FLAT plans take no rate",
                    ));
                }
                if !tiers.is_empty() {
                    return Err(ApiError::bad_input(
                        field("tiers"),
                        "tiers apply to PERCENT plans only",
                    ));
                }
            }
        }
        let mut previous: Option<Decimal> = None;
        for (i, tier) in tiers.iter().enumerate() {
            check_money(&format!("{path}.tiers[{i}].minRevenue"), tier.min_revenue)?;
            check_percentage(&format!("{path}.tiers[{i}].rate"), tier.rate, true)?;
            if previous.is_some_and(|p| tier.min_revenue <= p) {
                return Err(ApiError::bad_input(
                    format!("{path}.tiers[{i}].minRevenue"),
                    "tiers must be in strictly increasing minRevenue order",
                ));
            }
            previous = Some(tier.min_revenue);
        }
        if let Some(cap) = self.cap_per_deal {
            check_money(&field("capPerDeal"), cap)?;
        }
        if let Some(min) = self.min_deal_amount {
            check_money(&field("minDealAmount"), min)?;
        }
        if let Some(recurring) = &self.recurring {
            if let Some(months) = recurring.months
                && !(1..=1200).contains(&months)
            {
                return Err(ApiError::bad_input(
                    field("recurring.months"),
                    "must be between 1 and 1200 months (null: the customer's lifetime)",
                ));
            }
            match recurring.rate {
                Some(rate) => check_percentage(&field("recurring.rate"), rate, true)?,
                None if self.commission_type == CommissionType::Flat
                    && recurring.basis == RecurringBasis::Invoices =>
                {
                    return Err(ApiError::bad_input(
                        field("recurring.rate"),
                        "a FLAT plan paying on INVOICES needs a recurring rate",
                    ));
                }
                None => {}
            }
        }
        Ok(CommissionPlan {
            commission_type: self.commission_type,
            rate: self.rate.map(|r| r.normalize()),
            flat_amount: self.flat_amount,
            tiers,
            cap_per_deal: self.cap_per_deal,
            min_deal_amount: self.min_deal_amount,
            recurring: self.recurring.map(|r| Recurring {
                rate: r.rate.map(|rate| rate.normalize()),
                ..r
            }),
        })
    }
}

/// Reads a stored decimal column.
pub fn parse_stored_decimal(value: &str) -> ApiResult<Decimal> {
    value
        .parse::<Decimal>()
        .map_err(|e| ApiError::Internal(format!("stored decimal {value:?} is invalid: {e}")))
}

/// The commission plan stored on a program row.
pub fn plan_of(program: &program::Model) -> ApiResult<CommissionPlan> {
    let opt = |v: &Option<String>| v.as_deref().map(parse_stored_decimal).transpose();
    Ok(CommissionPlan {
        commission_type: program.commission_type,
        rate: opt(&program.commission_rate)?,
        flat_amount: opt(&program.commission_flat_amount)?,
        tiers: serde_json::from_value(program.commission_tiers.clone())
            .map_err(|e| ApiError::Internal(format!("program {} tiers: {e}", program.id)))?,
        cap_per_deal: opt(&program.cap_per_deal)?,
        min_deal_amount: opt(&program.min_deal_amount)?,
        recurring: match program.recurring_basis {
            Some(basis) => Some(Recurring {
                months: program.recurring_months,
                rate: opt(&program.recurring_rate)?,
                basis,
            }),
            None => None,
        },
    })
}

/// Input of `createProgram`.
#[derive(Debug, Clone, InputObject)]
pub struct CreateProgramInput {
    /// Display name.
    pub name: String,
    /// Kind of partnership.
    pub kind: ProgramKind,
    /// ISO 4217 code in which commissions are computed and paid.
    pub currency: String,
    /// How commissions are computed.
    pub commission: CommissionPlanInput,
    /// How long a referral may lead to an attributed deal (default 90).
    pub attribution_window_days: Option<i32>,
    /// How long an accrual stays pending before it can be paid (default 30).
    pub hold_days: Option<i32>,
    /// How long after closing a won deal can still be clawed back (default 90).
    pub clawback_days: Option<i32>,
    /// How registrations are approved and protected (default `AUTO`, 90 days, 30-day
    /// extensions, 1 extension).
    pub registration: Option<RegistrationInput>,
    /// Minutes within which sales must engage an accepted referral (null: no SLA).
    pub lead_sla_minutes: Option<i32>,
    /// Public applications (default: closed).
    pub applications: Option<ApplicationsInput>,
    /// When partner groups are reviewed (demotions), a 6-field cron (seconds first); default
    /// quarterly, `0 0 0 1 1,4,7,10 *`.
    pub group_review_schedule: Option<String>,
    /// Accruals above this amount are HELD for a manager's review (default: none).
    pub manual_review_above: Option<Decimal>,
}

/// Input of `updateProgram`: absent fields keep their value. The currency cannot change.
#[derive(Debug, Clone, InputObject)]
pub struct UpdateProgramInput {
    /// The program to change.
    pub id: async_graphql::ID,
    /// New name.
    pub name: Option<String>,
    /// New kind.
    pub kind: Option<ProgramKind>,
    /// New commission plan (applies to deals reconciled from now on).
    pub commission: Option<CommissionPlanInput>,
    /// New attribution window.
    pub attribution_window_days: Option<i32>,
    /// New hold period.
    pub hold_days: Option<i32>,
    /// New clawback period.
    pub clawback_days: Option<i32>,
    /// New registration settings (for registrations accepted from now on).
    pub registration: Option<RegistrationInput>,
    /// New lead SLA in minutes; `null` removes it (for referrals accepted from now on).
    pub lead_sla_minutes: async_graphql::MaybeUndefined<i32>,
    /// New application settings.
    pub applications: Option<ApplicationsInput>,
    /// New group review schedule; `null` restores the quarterly default.
    pub group_review_schedule: async_graphql::MaybeUndefined<String>,
    /// New review threshold for accruals; `null` removes it.
    pub manual_review_above: async_graphql::MaybeUndefined<Decimal>,
}

/// The group review when a program names none (DESIGN §13): quarterly, at midnight UTC on
/// the first day of January, April, July and October.
pub const DEFAULT_REVIEW_SCHEDULE: &str = "0 0 0 1 1,4,7,10 *";

/// Checks a `manualReviewAbove` amount (positive money).
fn check_review_threshold(value: Decimal) -> ApiResult<String> {
    check_money("input.manualReviewAbove", value)?;
    if value <= Decimal::ZERO {
        return Err(ApiError::bad_input(
            "input.manualReviewAbove",
            "must be greater than 0 (null: no threshold)",
        ));
    }
    Ok(value.normalize().to_string())
}

/// Checks a `groupReviewSchedule` (a 6-field cron, seconds first).
fn check_review_schedule(field: &str, schedule: &str) -> ApiResult<String> {
    let schedule = schedule.trim();
    crate::config::parse_cron(schedule).map_err(|e| {
        ApiError::bad_input(
            field,
            format!("must be a 6-field cron expression (seconds first): {e}"),
        )
    })?;
    Ok(schedule.to_string())
}

fn check_name(field: &str, name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::bad_input(field, "must be 1 to 200 characters"));
    }
    Ok(name.to_string())
}

/// Checks a number of days (`min` to 3650), `default` when absent.
pub fn check_days(field: &str, days: Option<i32>, default: i32, min: i32) -> ApiResult<i32> {
    let days = days.unwrap_or(default);
    if !(min..=3650).contains(&days) {
        return Err(ApiError::bad_input(
            field,
            format!("must be between {min} and 3650 days"),
        ));
    }
    Ok(days)
}

fn decimal_str(value: Option<Decimal>) -> Option<String> {
    value.map(|v| v.to_string())
}

fn apply_plan(model: &mut program::ActiveModel, plan: CommissionPlan) -> ApiResult<()> {
    model.commission_type = Set(plan.commission_type);
    model.commission_rate = Set(decimal_str(plan.rate));
    model.commission_flat_amount = Set(decimal_str(plan.flat_amount));
    model.commission_tiers =
        Set(serde_json::to_value(&plan.tiers)
            .map_err(|e| ApiError::Internal(format!("tiers: {e}")))?);
    model.cap_per_deal = Set(decimal_str(plan.cap_per_deal));
    model.min_deal_amount = Set(decimal_str(plan.min_deal_amount));
    model.recurring_basis = Set(plan.recurring.as_ref().map(|r| r.basis));
    model.recurring_months = Set(plan.recurring.as_ref().and_then(|r| r.months));
    model.recurring_rate = Set(decimal_str(plan.recurring.and_then(|r| r.rate)));
    Ok(())
}

/// Creates a program after validating every field.
pub async fn create_program(db: &Db, input: CreateProgramInput) -> ApiResult<program::Model> {
    let name = check_name("input.name", &input.name)?;
    let currency = normalize_currency(&input.currency).ok_or_else(|| {
        ApiError::bad_input("input.currency", "must be an ISO 4217 currency code")
    })?;
    let plan = input.commission.validate("input.commission")?;
    let now = Utc::now();
    let mut model = program::ActiveModel {
        id: Set(new_id()),
        name: Set(name),
        kind: Set(input.kind),
        currency: Set(currency),
        attribution_window_days: Set(check_days(
            "input.attributionWindowDays",
            input.attribution_window_days,
            90,
            1,
        )?),
        hold_days: Set(check_days("input.holdDays", input.hold_days, 30, 0)?),
        clawback_days: Set(check_days(
            "input.clawbackDays",
            input.clawback_days,
            90,
            0,
        )?),
        lead_sla_minutes: Set(check_sla_minutes(
            "input.leadSlaMinutes",
            input.lead_sla_minutes,
        )?),
        group_review_schedule: Set(input
            .group_review_schedule
            .as_deref()
            .map(|s| check_review_schedule("input.groupReviewSchedule", s))
            .transpose()?),
        manual_review_above: Set(input
            .manual_review_above
            .map(check_review_threshold)
            .transpose()?),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    apply_plan(&mut model, plan)?;
    apply_registration(
        &mut model,
        &Registration {
            approval: RegistrationApproval::Auto,
            protection_days: 90,
            extension_days: 30,
            max_extensions: 1,
        },
        input.registration,
        "input.registration",
    )?;
    apply_applications(
        &mut model,
        &Applications {
            open: false,
            auto_approve_domains: Vec::new(),
        },
        input.applications,
        "input.applications",
    )?;
    // Through the writer (on SQLite a write beside it would fail another writer's transaction
    // with SQLITE_BUSY_SNAPSHOT).
    let tx = db.begin_write().await?;
    let created = model.insert(&*tx).await?;
    tx.commit().await?;
    Ok(created)
}

/// Updates a program.
pub async fn update_program(db: &Db, input: UpdateProgramInput) -> ApiResult<program::Model> {
    let existing = program::Entity::find_by_id(input.id.to_string())
        .one(db.reads())
        .await?
        .ok_or(ApiError::NotFound("program"))?;
    let mut model: program::ActiveModel = existing.clone().into();
    if let Some(name) = &input.name {
        model.name = Set(check_name("input.name", name)?);
    }
    if let Some(kind) = input.kind {
        model.kind = Set(kind);
    }
    if let Some(plan) = input.commission {
        apply_plan(&mut model, plan.validate("input.commission")?)?;
    }
    if input.attribution_window_days.is_some() {
        model.attribution_window_days = Set(check_days(
            "input.attributionWindowDays",
            input.attribution_window_days,
            existing.attribution_window_days,
            1,
        )?);
    }
    if input.hold_days.is_some() {
        model.hold_days = Set(check_days(
            "input.holdDays",
            input.hold_days,
            existing.hold_days,
            0,
        )?);
    }
    if input.clawback_days.is_some() {
        model.clawback_days = Set(check_days(
            "input.clawbackDays",
            input.clawback_days,
            existing.clawback_days,
            0,
        )?);
    }
    apply_registration(
        &mut model,
        &Registration::of(&existing),
        input.registration,
        "input.registration",
    )?;
    apply_applications(
        &mut model,
        &Applications::of(&existing),
        input.applications,
        "input.applications",
    )?;
    match input.lead_sla_minutes {
        async_graphql::MaybeUndefined::Undefined => {}
        async_graphql::MaybeUndefined::Null => model.lead_sla_minutes = Set(None),
        async_graphql::MaybeUndefined::Value(minutes) => {
            model.lead_sla_minutes = Set(check_sla_minutes("input.leadSlaMinutes", Some(minutes))?);
        }
    }
    match input.group_review_schedule {
        async_graphql::MaybeUndefined::Undefined => {}
        async_graphql::MaybeUndefined::Null => model.group_review_schedule = Set(None),
        async_graphql::MaybeUndefined::Value(schedule) => {
            model.group_review_schedule = Set(Some(check_review_schedule(
                "input.groupReviewSchedule",
                &schedule,
            )?));
        }
    }
    match input.manual_review_above {
        async_graphql::MaybeUndefined::Undefined => {}
        async_graphql::MaybeUndefined::Null => model.manual_review_above = Set(None),
        async_graphql::MaybeUndefined::Value(value) => {
            model.manual_review_above = Set(Some(check_review_threshold(value)?));
        }
    }
    model.updated_at = Set(Utc::now());
    let tx = db.begin_write().await?;
    let updated = model.update(&*tx).await?;
    tx.commit().await?;
    Ok(updated)
}

/// Program `id` as `conn` sees it (inside a transaction, its view); `NOT_FOUND` for a malformed
/// or unknown id.
pub async fn find_program(
    conn: &impl sea_orm::ConnectionTrait,
    id: &str,
) -> ApiResult<program::Model> {
    if !crate::domain::ids::is_valid_id(id) {
        return Err(ApiError::NotFound("program"));
    }
    program::Entity::find_by_id(id.to_string())
        .one(conn)
        .await?
        .ok_or(ApiError::NotFound("program"))
}

/// Validates a display name (shared by partners and referrals).
pub fn validated_name(field: &str, name: &str) -> ApiResult<String> {
    check_name(field, name)
}
