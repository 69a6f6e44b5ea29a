//! Public partner applications (DESIGN §13): a company asks to join a program whose
//! applications are open, without a key; a program manager approves it into a partner (with its
//! first key, shown once) or rejects it. An applicant whose email domain the program lists in
//! `autoApproveDomains` is approved at once. The settings themselves are the program's
//! ([`crate::domain::programs::Applications`]).

use std::{net::IpAddr, num::NonZeroU32, sync::Arc};

use async_graphql::{ID, InputObject};
use chrono::Utc;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QuerySelect, Statement,
};
use serde_json::json;

use crate::{
    db::{
        Db,
        entities::{partner, partner_application},
        states::{ApiKeyRole, ApplicationStatus},
    },
    domain::{
        auth::insert_key,
        events::{self, EventType},
        ids::{is_valid_id, new_id},
        normalize::{email_domain, is_free_mail, normalize_domain, normalize_email, optional_text},
        partners::insert_partner,
        programs::{Applications, find_program, validated_name},
        referrals::ReviewDecision,
    },
    error::{ApiError, ApiResult},
};

/// The per-address limit of `applyToProgram` (`TANDEM_APPLY_RATE_LIMIT` per minute).
#[derive(Clone)]
pub struct ApplyLimiter(Arc<DefaultKeyedRateLimiter<IpAddr>>);

impl ApplyLimiter {
    /// At most `per_minute` applications a minute from one address.
    pub fn new(per_minute: u32) -> ApplyLimiter {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute.max(1)).expect("non-zero"));
        ApplyLimiter(Arc::new(RateLimiter::keyed(quota)))
    }

    /// Counts one application from `address`: `TOO_MANY_REQUESTS` over the limit.
    pub fn check(&self, address: IpAddr) -> ApiResult<()> {
        if self.0.len() > 10_000 {
            // Forget addresses whose allowance is back to full.
            self.0.retain_recent();
        }
        self.0.check_key(&address).map_err(|_| {
            ApiError::TooManyRequests(
                "too many applications from this address; try again in a minute".to_string(),
            )
        })
    }
}

/// Input of `applyToProgram`.
#[derive(Debug, Clone, InputObject)]
pub struct ApplyToProgramInput {
    /// The program (its applications must be open).
    pub program_id: ID,
    /// The applying company's name.
    pub name: String,
    /// Its domain (default: the contact email's); never a free-mail domain.
    pub domain: Option<String>,
    /// Who to talk to: a company address, not a free-mail one.
    pub contact_email: String,
    /// Their name.
    pub contact_name: Option<String>,
    /// A word for the program manager (up to 5,000 characters).
    pub message: Option<String>,
}

/// What `applyToProgram` and `reviewApplication` produced.
pub struct Reviewed {
    /// The application as it stands.
    pub application: partner_application::Model,
    /// The partner an approval created.
    pub partner: Option<partner::Model>,
    /// Its first partner key's token (shown this once).
    pub token: Option<String>,
}

struct ValidApplication {
    name: String,
    domain: String,
    contact_email: String,
    contact_name: Option<String>,
    message: Option<String>,
}

fn validate(input: &ApplyToProgramInput) -> ApiResult<ValidApplication> {
    let name = validated_name("input.name", &input.name)?;
    let contact_email = normalize_email(&input.contact_email)
        .ok_or_else(|| ApiError::bad_input("input.contactEmail", "must be an email address"))?;
    let email_domain = email_domain(&contact_email)
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_input("input.contactEmail", "must be an email address"))?;
    if is_free_mail(&email_domain) {
        return Err(ApiError::bad_input(
            "input.contactEmail",
            "must be a company address, not a free-mail one",
        ));
    }
    let domain = match input.domain.as_deref().map(str::trim) {
        None | Some("") => email_domain,
        Some(d) => normalize_domain(d)
            .ok_or_else(|| ApiError::bad_input("input.domain", "must be a domain name"))?,
    };
    if is_free_mail(&domain) {
        return Err(ApiError::bad_input(
            "input.domain",
            "must be the company's domain, not a free-mail one",
        ));
    }
    let contact_name = match input.contact_name.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(n) => Some(validated_name("input.contactName", n)?),
    };
    let message = optional_text("input.message", input.message.as_deref(), 5000)?;
    Ok(ValidApplication {
        name,
        domain,
        contact_email,
        contact_name,
        message,
    })
}

/// Creates the partner (and its first key) an approved application asks for, inside `conn`.
async fn approve(
    conn: &impl ConnectionTrait,
    application: partner_application::Model,
    reason: Option<String>,
) -> ApiResult<Reviewed> {
    let partner = insert_partner(
        conn,
        &application.program_id,
        application.name.clone(),
        Some(application.domain.clone()),
        application.contact_email.clone(),
    )
    .await
    .map_err(|e| match e {
        ApiError::BadInput { message, .. } => ApiError::Conflict(message),
        other => other,
    })?;
    let key = insert_key(
        conn,
        &format!("{} (first key)", partner.name),
        ApiKeyRole::Partner,
        Some(&partner.id),
        &[],
    )
    .await?;
    let mut model: partner_application::ActiveModel = application.into();
    model.status = Set(ApplicationStatus::Approved);
    model.partner_id = Set(Some(partner.id.clone()));
    model.reason = Set(reason);
    model.reviewed_at = Set(Some(Utc::now()));
    Ok(Reviewed {
        application: model.update(conn).await?,
        partner: Some(partner),
        token: Some(key.token),
    })
}

/// `applyToProgram`: records an application to an open program (`NOT_FOUND` for a program
/// that does not exist or is closed), refusing a company that is already a partner or already
/// applied (`CONFLICT`); approves it at once when its email domain is auto-approved. Writes
/// `partner.applied` (and `partner.created` on approval).
pub async fn apply_to_program(db: &Db, input: ApplyToProgramInput) -> ApiResult<Reviewed> {
    let valid = validate(&input)?;
    let program_id = input.program_id.to_string();
    let tx = db.begin_write().await?;
    let program = Some(find_program(&*tx, &program_id).await?)
        .filter(|p| p.applications_open)
        .ok_or(ApiError::NotFound("program"))?;
    if db.is_postgres() {
        // Serialise concurrent applications of one company to one program.
        tx.execute_raw(Statement::from_sql_and_values(
            db.backend(),
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            [format!("application:{program_id}:{}", valid.domain).into()],
        ))
        .await?;
    }
    let is_partner = partner::Entity::find()
        .filter(partner::Column::ProgramId.eq(program_id.as_str()))
        .filter(partner::Column::Domain.eq(valid.domain.as_str()))
        .one(&*tx)
        .await?
        .is_some();
    if is_partner {
        return Err(ApiError::Conflict(
            "a partner of this program already has this domain".to_string(),
        ));
    }
    let pending = partner_application::Entity::find()
        .filter(partner_application::Column::ProgramId.eq(program_id.as_str()))
        .filter(partner_application::Column::Domain.eq(valid.domain.as_str()))
        .filter(partner_application::Column::Status.eq(ApplicationStatus::Pending.as_str()))
        .limit(1)
        .one(&*tx)
        .await?
        .is_some();
    if pending {
        return Err(ApiError::Conflict(
            "an application of this company is already under review".to_string(),
        ));
    }
    let application = partner_application::ActiveModel {
        id: Set(new_id()),
        program_id: Set(program_id.clone()),
        name: Set(valid.name),
        domain: Set(valid.domain),
        contact_email: Set(valid.contact_email),
        contact_name: Set(valid.contact_name),
        message: Set(valid.message),
        status: Set(ApplicationStatus::Pending),
        reason: Set(None),
        partner_id: Set(None),
        created_at: Set(Utc::now()),
        reviewed_at: Set(None),
    }
    .insert(&*tx)
    .await?;
    let auto = email_domain(&application.contact_email).is_some_and(|d| {
        Applications::of(&program)
            .auto_approve_domains
            .iter()
            .any(|a| a == d)
    });
    events::record(
        &*tx,
        EventType::PartnerApplied,
        &program_id,
        None,
        json!({
            "applicationId": application.id,
            "name": application.name,
            "domain": application.domain,
            "autoApproved": auto,
        }),
    )
    .await?;
    let reviewed = if auto {
        approve(
            &*tx,
            application,
            Some("email domain approved automatically".to_string()),
        )
        .await?
    } else {
        Reviewed {
            application,
            partner: None,
            token: None,
        }
    };
    tx.commit().await?;
    Ok(reviewed)
}

/// Input of `reviewApplication`.
#[derive(Debug, Clone, InputObject)]
pub struct ReviewApplicationInput {
    /// The application (`PENDING`).
    pub id: ID,
    /// Approve (creates the partner and its first key) or reject.
    pub decision: ReviewDecision,
    /// Why (up to 1,000 characters).
    pub reason: Option<String>,
}

/// `reviewApplication` (admins): approves a `PENDING` application into a partner with its first
/// key, or rejects it (`CONFLICT` for any other state).
pub async fn review_application(db: &Db, input: ReviewApplicationInput) -> ApiResult<Reviewed> {
    let reason = optional_text("input.reason", input.reason.as_deref(), 1000)?;
    let id = input.id.to_string();
    if !is_valid_id(&id) {
        return Err(ApiError::NotFound("application"));
    }
    let tx = db.begin_write().await?;
    let mut query = partner_application::Entity::find_by_id(id);
    if db.is_postgres() {
        query = query.lock_exclusive();
    }
    let application = query
        .one(&*tx)
        .await?
        .ok_or(ApiError::NotFound("application"))?;
    if application.status != ApplicationStatus::Pending {
        return Err(ApiError::Conflict(format!(
            "only PENDING applications are reviewed; this one is {}",
            application.status
        )));
    }
    let reviewed = match input.decision {
        ReviewDecision::Approve => approve(&*tx, application, reason).await?,
        ReviewDecision::Reject => {
            let mut model: partner_application::ActiveModel = application.into();
            model.status = Set(ApplicationStatus::Rejected);
            model.reason = Set(reason);
            model.reviewed_at = Set(Some(Utc::now()));
            Reviewed {
                application: model.update(&*tx).await?,
                partner: None,
                token: None,
            }
        }
    };
    tx.commit().await?;
    Ok(reviewed)
}
