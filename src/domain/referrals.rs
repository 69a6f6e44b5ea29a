//! Referral registration (deal registration): normalisation, duplicate detection within the
//! attribution window, and admin review.

use async_graphql::{ID, InputObject};
use chrono::{Duration, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait,
    QueryFilter, QueryOrder, Statement,
};
use serde_json::json;

pub use crate::db::states::ReferralStatus;
use crate::{
    db::{
        Db,
        entities::{partner, program, referral},
    },
    domain::{
        auth::Principal,
        events::{self, EventType},
        ids::{is_valid_id, new_id},
        normalize::{company_domain, normalize_domain, normalize_email},
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
    let notes = input
        .notes
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    if notes.is_some_and(|n| n.chars().count() > 5000) {
        return Err(ApiError::bad_input(
            "input.notes",
            "must be at most 5000 characters",
        ));
    }
    Ok(ValidReferral {
        company_name,
        company_domain: company_domain(domain),
        contact_name,
        contact_email,
        notes: notes.map(str::to_string),
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

/// Registers a referral: `ACCEPTED`, or `DUPLICATE` when an accepted or converted referral for
/// the same company exists in the program within the attribution window. The submitter is never
/// told who holds the earlier registration.
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
            .filter(referral::Column::Status.is_in([
                ReferralStatus::Accepted.as_str(),
                ReferralStatus::Converted.as_str(),
            ]))
            .filter(referral::Column::SubmittedAt.gte(window_start))
            .filter(condition)
            .order_by_asc(referral::Column::SubmittedAt)
            .one(&*tx)
            .await?;
    }
    let status = if duplicate_of.is_some() {
        ReferralStatus::Duplicate
    } else {
        ReferralStatus::Accepted
    };
    let model = referral::ActiveModel {
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
    }
    .insert(&*tx)
    .await?;
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

/// An admin accepts or rejects a referral; writes `referral.status_changed`.
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
            "admins can set ACCEPTED or REJECTED; DUPLICATE and CONVERTED are set by Tandem",
        ));
    }
    let tx = db.begin_write().await?;
    let existing = referral::Entity::find_by_id(input.id.to_string())
        .one(&*tx)
        .await?
        .ok_or(ApiError::NotFound("referral"))?;
    if existing.status == input.status {
        return Ok(existing);
    }
    if existing.status == ReferralStatus::Converted {
        return Err(ApiError::Conflict(
            "a converted referral keeps its status".to_string(),
        ));
    }
    let previous = existing.status;
    let mut model: referral::ActiveModel = existing.into();
    model.status = Set(input.status);
    model.updated_at = Set(Utc::now());
    let updated = model.update(&*tx).await?;
    events::record(
        &*tx,
        EventType::ReferralStatusChanged,
        &updated.program_id,
        Some(&updated.partner_id),
        json!({
            "referralId": updated.id,
            "status": updated.status,
            "previousStatus": previous,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(updated)
}
