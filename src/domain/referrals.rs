//! Referral registration (deal registration, DESIGN §4 and §12): normalisation, duplicate
//! detection within the attribution window, the channel-conflict check, approval (`AUTO` or
//! `MANUAL`), review, the protection window and its extensions. Expiry, engagement and the
//! lead SLA are in [`crate::domain::registration`].

use async_graphql::{Enum, ID, InputObject};
use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement,
};
use serde_json::json;

pub use crate::db::states::ReferralStatus;
use crate::{
    db::{
        Db,
        entities::{customer, deal, partner, program, referral},
        states::{DealStatus, RegistrationApproval, SlaState},
    },
    domain::{
        auth::Principal,
        events::{self, EventType},
        ids::{is_valid_id, new_id},
        normalize::{company_domain, normalize_domain, normalize_email, optional_text},
        partners::PartnerStatus,
        programs::validated_name,
    },
    error::{ApiError, ApiResult},
};

/// Input of `submitReferral`. A partner key may omit `programId` and `partnerId`; an admin
/// submitting on a partner's behalf names the partner.
#[derive(Debug, Clone, InputObject)]
pub struct SubmitReferralInput {
    /// The program (defaults to the partner's).
    pub program_id: Option<ID>,
    /// The referring partner (defaults to the key's partner; required for admins).
    pub partner_id: Option<ID>,
    /// The referred company.
    pub company_name: String,
    /// Its domain; normalised, and ignored for duplicate detection when it is a free-mail domain.
    pub company_domain: Option<String>,
    /// The contact at the referred company.
    pub contact_name: Option<String>,
    /// The contact's email.
    pub contact_email: Option<String>,
    /// Free-form notes for the program manager.
    pub notes: Option<String>,
}

/// Input of `updateReferralStatus` (admins: `ACCEPTED` or `REJECTED`).
#[derive(Debug, Clone, InputObject)]
pub struct UpdateReferralStatusInput {
    /// The referral.
    pub id: ID,
    /// `ACCEPTED` or `REJECTED`.
    pub status: ReferralStatus,
}

struct ValidReferral {
    company_name: String,
    company_domain: Option<String>,
    contact_name: Option<String>,
    contact_email: Option<String>,
    notes: Option<String>,
}

fn validate(input: &SubmitReferralInput) -> ApiResult<ValidReferral> {
    let company_name = validated_name("input.companyName", &input.company_name)?;
    let domain = match input.company_domain.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(d) => Some(normalize_domain(d).ok_or_else(|| {
            ApiError::bad_input(
                "input.companyDomain",
                "must be a domain name such as acme.com",
            )
        })?),
    };
    let contact_email = match input.contact_email.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(e) => Some(normalize_email(e).ok_or_else(|| {
            ApiError::bad_input("input.contactEmail", "must be an email address")
        })?),
    };
    let contact_name = match input.contact_name.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(n) => Some(validated_name("input.contactName", n)?),
    };
    let notes = optional_text("input.notes", input.notes.as_deref(), 5000)?;
    Ok(ValidReferral {
        company_name,
        company_domain: company_domain(domain),
        contact_name,
        contact_email,
        notes,
    })
}

async fn resolve_partner(
    db: &Db,
    principal: &Principal,
    input: &SubmitReferralInput,
) -> ApiResult<partner::Model> {
    let requested_partner = input.partner_id.as_ref().map(|id| id.to_string());
    let requested_program = input.program_id.as_ref().map(|id| id.to_string());
    let partner = match principal {
        Principal::Partner {
            partner_id,
            program_id,
            ..
        } => {
            if requested_partner.as_ref().is_some_and(|p| p != partner_id) {
                return Err(ApiError::NotFound("partner"));
            }
            if requested_program.as_ref().is_some_and(|p| p != program_id) {
                return Err(ApiError::NotFound("program"));
            }
            partner::Entity::find_by_id(partner_id.clone())
                .one(db.reads())
                .await?
                .ok_or(ApiError::Unauthenticated)?
        }
        Principal::Admin { .. } => {
            let id = requested_partner.ok_or_else(|| {
                ApiError::bad_input("input.partnerId", "admins must name the referring partner")
            })?;
            let partner = if is_valid_id(&id) {
                partner::Entity::find_by_id(id).one(db.reads()).await?
            } else {
                None
            }
            .ok_or_else(|| ApiError::bad_input("input.partnerId", "no partner has this id"))?;
            if requested_program.is_some_and(|p| p != partner.program_id) {
                return Err(ApiError::bad_input(
                    "input.programId",
                    "the partner does not belong to this program",
                ));
            }
            partner
        }
        Principal::Integration { .. } => {
            return Err(ApiError::Forbidden(
                "integration keys cannot submit referrals".to_string(),
            ));
        }
    };
    if partner.status != PartnerStatus::Active {
        return Err(ApiError::Conflict(format!(
            "the partner is {} and cannot submit referrals",
            partner.status
        )));
    }
    Ok(partner)
}

/// Registers a referral: `DUPLICATE` when a live registration of the same company exists in
/// the program within the attribution window; else `CONFLICT` when the company already has a
/// CRM deal or is a referred customer; else `SUBMITTED` (manual approval) or `ACCEPTED`. The
/// submitter is never told who holds the earlier registration or the conflicting deal.
pub async fn submit_referral(
    db: &Db,
    principal: &Principal,
    input: SubmitReferralInput,
) -> ApiResult<referral::Model> {
    let valid = validate(&input)?;
    let partner = resolve_partner(db, principal, &input).await?;
    let tx = db.begin_write().await?;
    let program = program::Entity::find_by_id(partner.program_id.clone())
        .one(&*tx)
        .await?
        .ok_or(ApiError::NotFound("program"))?;
    let now = Utc::now();
    let dedupe_key = match (&valid.company_domain, &valid.contact_email) {
        (Some(domain), _) => {
            Some(Condition::all().add(referral::Column::CompanyDomain.eq(domain.as_str())))
        }
        (None, Some(email)) => {
            Some(Condition::all().add(referral::Column::ContactEmail.eq(email.as_str())))
        }
        (None, None) => None,
    };
    let mut duplicate_of = None;
    if let Some(condition) = dedupe_key {
        if db.is_postgres() {
            // Serialise concurrent registrations of the same company in the same program.
            let lock_key = format!(
                "referral:{}:{}",
                program.id,
                valid
                    .company_domain
                    .as_deref()
                    .or(valid.contact_email.as_deref())
                    .unwrap_or_default()
            );
            tx.execute_raw(Statement::from_sql_and_values(
                db.backend(),
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                [lock_key.into()],
            ))
            .await?;
        }
        let window_start = now - Duration::days(i64::from(program.attribution_window_days));
        duplicate_of = referral::Entity::find()
            .filter(referral::Column::ProgramId.eq(program.id.as_str()))
            .filter(holds_registration(now))
            .filter(referral::Column::SubmittedAt.gte(window_start))
            .filter(condition)
            .order_by_asc(referral::Column::SubmittedAt)
            .one(&*tx)
            .await?;
    }
    let conflict = match (&duplicate_of, &valid.company_domain) {
        (None, Some(domain)) => channel_conflict(&*tx, &program, domain, now).await?,
        _ => Conflict::default(),
    };
    let status = if duplicate_of.is_some() {
        ReferralStatus::Duplicate
    } else if conflict.found() {
        ReferralStatus::Conflict
    } else if program.registration_approval == RegistrationApproval::Manual {
        ReferralStatus::Submitted
    } else {
        ReferralStatus::Accepted
    };
    let mut model = referral::ActiveModel {
        id: Set(new_id()),
        program_id: Set(program.id.clone()),
        partner_id: Set(partner.id.clone()),
        company_name: Set(valid.company_name),
        company_domain: Set(valid.company_domain),
        contact_name: Set(valid.contact_name),
        contact_email: Set(valid.contact_email),
        notes: Set(valid.notes),
        status: Set(status),
        duplicate_of_id: Set(duplicate_of.map(|r| r.id)),
        submitted_at: Set(now),
        updated_at: Set(now),
        accepted_at: Set(None),
        protected_until: Set(None),
        extensions: Set(0),
        rejection_reason: Set(None),
        conflict_deal_id: Set(conflict.deal_id),
        conflict_customer_id: Set(conflict.customer_id),
        engaged_at: Set(None),
        sla_due_at: Set(None),
        sla_state: Set(None),
    };
    if status == ReferralStatus::Accepted {
        accept(&mut model, &program, now, None);
    }
    let model = model.insert(&*tx).await?;
    events::record(
        &*tx,
        EventType::ReferralSubmitted,
        &program.id,
        Some(&partner.id),
        json!({
            "referralId": model.id,
            "status": model.status,
            "companyName": model.company_name,
            "companyDomain": model.company_domain,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(model)
}

/// The registrations that hold their company (DESIGN §12): submitted, under conflict review,
/// accepted and still protected, or converted. Expired ones (and accepted ones whose
/// protection has ended, before the expiry job marks them) do not.
pub fn holds_registration(now: DateTime<Utc>) -> Condition {
    Condition::any()
        .add(referral::Column::Status.is_in([
            ReferralStatus::Submitted.as_str(),
            ReferralStatus::Conflict.as_str(),
            ReferralStatus::Converted.as_str(),
        ]))
        .add(
            Condition::all()
                .add(referral::Column::Status.eq(ReferralStatus::Accepted.as_str()))
                .add(
                    Condition::any()
                        .add(referral::Column::ProtectedUntil.is_null())
                        .add(referral::Column::ProtectedUntil.gt(now)),
                ),
        )
}

/// What a new registration conflicts with (admins see it; the partner only `CONFLICT`).
#[derive(Debug, Default)]
struct Conflict {
    deal_id: Option<String>,
    customer_id: Option<String>,
}

impl Conflict {
    fn found(&self) -> bool {
        self.deal_id.is_some() || self.customer_id.is_some()
    }
}

/// The channel-conflict check of DESIGN §12: a mirrored CRM deal of the company created before
/// the submission (open, or won within the attribution window; a deleted deal counts as lost),
/// or a referred customer with this domain.
async fn channel_conflict(
    conn: &impl ConnectionTrait,
    program: &program::Model,
    domain: &str,
    now: DateTime<Utc>,
) -> Result<Conflict, sea_orm::DbErr> {
    let won_since = now - Duration::days(i64::from(program.attribution_window_days));
    let found_deal = deal::Entity::find()
        .filter(deal::Column::ProgramId.eq(program.id.as_str()))
        .filter(deal::Column::CompanyDomain.eq(domain))
        .filter(deal::Column::Deleted.eq(false))
        .filter(deal::Column::CreatedAt.lt(now))
        .filter(
            Condition::any()
                .add(deal::Column::Status.eq(DealStatus::Open.as_str()))
                .add(
                    Condition::all()
                        .add(deal::Column::Status.eq(DealStatus::Won.as_str()))
                        .add(deal::Column::ClosedAt.gte(won_since)),
                ),
        )
        .order_by_asc(deal::Column::CreatedAt)
        .one(conn)
        .await?;
    let found_customer = customer::Entity::find()
        .filter(customer::Column::ProgramId.eq(program.id.as_str()))
        .filter(customer::Column::Domain.eq(domain))
        .one(conn)
        .await?;
    Ok(Conflict {
        deal_id: found_deal.map(|d| d.id),
        customer_id: found_customer.map(|c| c.id),
    })
}

/// Makes a referral `ACCEPTED` at `now`: protected for the program's `protectionDays`, and with
/// the program's lead SLA its clock started (already `MET` when sales engaged the lead
/// before the acceptance).
fn accept(
    model: &mut referral::ActiveModel,
    program: &program::Model,
    now: DateTime<Utc>,
    engaged_at: Option<DateTime<Utc>>,
) {
    model.status = Set(ReferralStatus::Accepted);
    model.accepted_at = Set(Some(now));
    model.protected_until = Set(Some(
        now + Duration::days(i64::from(program.protection_days)),
    ));
    model.extensions = Set(0);
    model.rejection_reason = Set(None);
    match program.lead_sla_minutes {
        Some(minutes) => {
            model.sla_due_at = Set(Some(now + Duration::minutes(i64::from(minutes))));
            model.sla_state = Set(Some(if engaged_at.is_some() {
                SlaState::Met
            } else {
                SlaState::Pending
            }));
        }
        None => {
            model.sla_due_at = Set(None);
            model.sla_state = Set(None);
        }
    }
}

/// A program manager's decision on a `SUBMITTED` or `CONFLICT` registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum ReviewDecision {
    /// Accept it: it is protected from now on.
    Approve,
    /// Reject it; the reason is shown to the partner.
    Reject,
}

/// Input of `reviewReferral`.
#[derive(Debug, Clone, InputObject)]
pub struct ReviewReferralInput {
    /// The referral (`SUBMITTED` or `CONFLICT`).
    pub id: ID,
    /// Approve or reject.
    pub decision: ReviewDecision,
    /// Why (up to 1,000 characters); a rejection's reason is visible to the partner.
    pub reason: Option<String>,
}

/// Input of `extendReferral`.
#[derive(Debug, Clone, InputObject)]
pub struct ExtendReferralInput {
    /// The referral (`ACCEPTED`).
    pub id: ID,
}

/// Reads a referral and its program inside `tx`, the referral row locked on PostgreSQL.
async fn locked_referral(
    db: &Db,
    conn: &impl ConnectionTrait,
    id: &str,
) -> ApiResult<(referral::Model, program::Model)> {
    let mut query = referral::Entity::find_by_id(id.to_string());
    if db.is_postgres() {
        query = query.lock_exclusive();
    }
    let found = query
        .one(conn)
        .await?
        .ok_or(ApiError::NotFound("referral"))?;
    let program = program::Entity::find_by_id(found.program_id.clone())
        .one(conn)
        .await?
        .ok_or(ApiError::NotFound("program"))?;
    Ok((found, program))
}

/// Moves a referral to `ACCEPTED` or `REJECTED` and writes `referral.status_changed` (with the
/// reason, which the partner reads too).
async fn decide(
    conn: &impl ConnectionTrait,
    existing: referral::Model,
    program: &program::Model,
    status: ReferralStatus,
    reason: Option<String>,
) -> ApiResult<referral::Model> {
    let now = Utc::now();
    let previous = existing.status;
    let engaged_at = existing.engaged_at;
    let mut model: referral::ActiveModel = existing.into();
    if status == ReferralStatus::Accepted {
        accept(&mut model, program, now, engaged_at);
    } else {
        model.status = Set(status);
        model.rejection_reason = Set(reason.clone());
        model.sla_state = Set(None);
        model.sla_due_at = Set(None);
    }
    model.updated_at = Set(now);
    let updated = model.update(conn).await?;
    let mut data = json!({
        "referralId": updated.id,
        "status": updated.status,
        "previousStatus": previous,
    });
    if let Some(reason) = reason {
        data["reason"] = json!(reason);
    }
    events::record(
        conn,
        EventType::ReferralStatusChanged,
        &updated.program_id,
        Some(&updated.partner_id),
        data,
    )
    .await?;
    Ok(updated)
}

/// A program manager approves or rejects a `SUBMITTED` or `CONFLICT` registration (`CONFLICT`
/// error for any other state).
pub async fn review_referral(db: &Db, input: ReviewReferralInput) -> ApiResult<referral::Model> {
    let reason = optional_text("input.reason", input.reason.as_deref(), 1000)?;
    let tx = db.begin_write().await?;
    let (existing, program) = locked_referral(db, &*tx, input.id.as_str()).await?;
    if !matches!(
        existing.status,
        ReferralStatus::Submitted | ReferralStatus::Conflict
    ) {
        return Err(ApiError::Conflict(format!(
            "only SUBMITTED or CONFLICT referrals are reviewed; this one is {}",
            existing.status
        )));
    }
    let status = match input.decision {
        ReviewDecision::Approve => ReferralStatus::Accepted,
        ReviewDecision::Reject => ReferralStatus::Rejected,
    };
    let updated = decide(&*tx, existing, &program, status, reason).await?;
    tx.commit().await?;
    Ok(updated)
}

/// An admin sets `ACCEPTED` (a new protection window from now, also for an expired or
/// duplicate registration) or `REJECTED`; writes `referral.status_changed`.
pub async fn update_referral_status(
    db: &Db,
    input: UpdateReferralStatusInput,
) -> ApiResult<referral::Model> {
    if !matches!(
        input.status,
        ReferralStatus::Accepted | ReferralStatus::Rejected
    ) {
        return Err(ApiError::bad_input(
            "input.status",
            "admins can set ACCEPTED or REJECTED; the other states are set by Tandem",
        ));
    }
    let tx = db.begin_write().await?;
    let (existing, program) = locked_referral(db, &*tx, input.id.as_str()).await?;
    if existing.status == input.status {
        return Ok(existing);
    }
    if existing.status == ReferralStatus::Converted {
        return Err(ApiError::Conflict(
            "a converted referral keeps its status".to_string(),
        ));
    }
    let updated = decide(&*tx, existing, &program, input.status, None).await?;
    tx.commit().await?;
    Ok(updated)
}

/// An admin extends an `ACCEPTED` registration's protection by the program's `extensionDays`,
/// at most `maxExtensions` times (`CONFLICT` after, and for any other state).
pub async fn extend_referral(db: &Db, input: ExtendReferralInput) -> ApiResult<referral::Model> {
    let tx = db.begin_write().await?;
    let (existing, program) = locked_referral(db, &*tx, input.id.as_str()).await?;
    if existing.status != ReferralStatus::Accepted {
        return Err(ApiError::Conflict(format!(
            "only ACCEPTED registrations can be extended; this one is {}",
            existing.status
        )));
    }
    if existing.extensions >= program.max_extensions {
        return Err(ApiError::Conflict(format!(
            "this registration was already extended {} time(s), the program's maximum",
            existing.extensions
        )));
    }
    let now = Utc::now();
    let until = existing.protected_until.unwrap_or(now);
    let extensions = existing.extensions + 1;
    let mut model: referral::ActiveModel = existing.into();
    model.protected_until = Set(Some(
        until + Duration::days(i64::from(program.extension_days)),
    ));
    model.extensions = Set(extensions);
    model.updated_at = Set(now);
    let updated = model.update(&*tx).await?;
    tx.commit().await?;
    Ok(updated)
}
