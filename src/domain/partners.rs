//! Partners: creation with a unique referral code, corrections, status changes, scoped lookup.

use async_graphql::{ID, InputObject};
use chrono::Utc;
use rand::Rng;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
};
use serde_json::json;

pub use crate::db::states::PartnerStatus;
use crate::{
    db::{
        Db,
        entities::{partner, program},
    },
    domain::{
        auth::Principal,
        events::{self, EventType},
        ids::{is_valid_id, new_id},
        normalize::{normalize_domain, normalize_email},
        programs::validated_name,
    },
    error::{ApiError, ApiResult},
};

/// Input of `createPartner`.
#[derive(Debug, Clone, InputObject)]
pub struct CreatePartnerInput {
    /// The program the partner joins.
    pub program_id: ID,
    /// Display name.
    pub name: String,
    /// The partner's own company domain.
    pub domain: Option<String>,
    /// Where the program manager reaches the partner.
    pub contact_email: String,
}

/// Input of `updatePartnerStatus`.
#[derive(Debug, Clone, InputObject)]
pub struct UpdatePartnerStatusInput {
    /// The partner.
    pub id: ID,
    /// The new status. `TERMINATED` is final.
    pub status: PartnerStatus,
}

/// Input of `updatePartner`: the fields given are changed, the others kept.
#[derive(Debug, Clone, InputObject)]
pub struct UpdatePartnerInput {
    /// The partner.
    pub id: ID,
    /// New display name.
    pub name: Option<String>,
    /// New company domain (an empty string removes it). Admins only: the domain decides
    /// attribution and self-referral checks.
    pub domain: Option<String>,
    /// New contact address.
    pub contact_email: Option<String>,
}

const CODE_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// A random referral code: 8 upper-case letters and digits.
pub fn generate_referral_code() -> String {
    let mut rng = rand::rng();
    (0..8)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

/// Creates a partner and its `partner.created` event in one transaction.
pub async fn create_partner(db: &Db, input: CreatePartnerInput) -> ApiResult<partner::Model> {
    let name = validated_name("input.name", &input.name)?;
    let contact_email = normalize_email(&input.contact_email)
        .ok_or_else(|| ApiError::bad_input("input.contactEmail", "must be an email address"))?;
    let domain = partner_domain(input.domain.as_deref())?;
    let program_id = input.program_id.to_string();
    if !is_valid_id(&program_id) {
        return Err(ApiError::bad_input(
            "input.programId",
            "no program has this id",
        ));
    }
    let tx = db.begin_write().await?;
    program::Entity::find_by_id(program_id.clone())
        .one(&*tx)
        .await?
        .ok_or_else(|| ApiError::bad_input("input.programId", "no program has this id"))?;
    let model = insert_partner(&*tx, &program_id, name, domain, contact_email).await?;
    tx.commit().await?;
    Ok(model)
}

/// Inserts an ACTIVE partner of `program_id` with a fresh referral code, inside the caller's
/// transaction, and writes `partner.created`. A domain another partner of the program has is
/// refused (`BAD_USER_INPUT` on `input.domain`).
pub async fn insert_partner(
    conn: &impl ConnectionTrait,
    program_id: &str,
    name: String,
    domain: Option<String>,
    contact_email: String,
) -> ApiResult<partner::Model> {
    check_domain_free(conn, program_id, domain.as_deref(), None).await?;
    let mut code = generate_referral_code();
    for _ in 0..8 {
        let taken = partner::Entity::find()
            .filter(partner::Column::ReferralCode.eq(code.as_str()))
            .one(conn)
            .await?
            .is_some();
        if !taken {
            break;
        }
        code = generate_referral_code();
    }
    let now = Utc::now();
    let model = partner::ActiveModel {
        id: Set(new_id()),
        program_id: Set(program_id.to_string()),
        name: Set(name),
        domain: Set(domain),
        contact_email: Set(contact_email),
        status: Set(PartnerStatus::Active),
        referral_code: Set(code),
        terminated_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(conn)
    .await?;
    events::record(
        conn,
        EventType::PartnerCreated,
        program_id,
        Some(&model.id),
        json!({
            "name": model.name,
            "status": model.status,
            "referralCode": model.referral_code,
            "domain": model.domain,
        }),
    )
    .await?;
    crate::domain::groups::join_default_group(conn, &model).await?;
    Ok(model)
}

/// Changes a partner's status and writes `partner.updated`. Terminated partners stay terminated.
pub async fn update_partner_status(
    db: &Db,
    input: UpdatePartnerStatusInput,
) -> ApiResult<partner::Model> {
    let tx = db.begin_write().await?;
    let existing = partner::Entity::find_by_id(input.id.to_string())
        .one(&*tx)
        .await?
        .ok_or(ApiError::NotFound("partner"))?;
    let previous = existing.status;
    if previous == input.status {
        return Ok(existing);
    }
    if previous == PartnerStatus::Terminated {
        return Err(ApiError::Conflict(
            "a terminated partner cannot change status".to_string(),
        ));
    }
    let now = Utc::now();
    let mut model: partner::ActiveModel = existing.into();
    model.status = Set(input.status);
    if input.status == PartnerStatus::Terminated {
        model.terminated_at = Set(Some(now));
    }
    save_updated(
        tx,
        model,
        |p| json!({ "status": p.status, "previousStatus": previous }),
    )
    .await
}

/// Writes a changed partner with its `partner.updated` event (`data` of the partner as
/// written), and commits.
async fn save_updated(
    tx: crate::db::WriteTx,
    mut model: partner::ActiveModel,
    data: impl FnOnce(&partner::Model) -> serde_json::Value,
) -> ApiResult<partner::Model> {
    model.updated_at = Set(Utc::now());
    let updated = model.update(&*tx).await?;
    events::record(
        &*tx,
        EventType::PartnerUpdated,
        &updated.program_id,
        Some(&updated.id),
        data(&updated),
    )
    .await?;
    tx.commit().await?;
    Ok(updated)
}

/// A partner's domain as given: `None` for absent or empty, else normalised.
fn partner_domain(given: Option<&str>) -> ApiResult<Option<String>> {
    match given.map(str::trim) {
        None | Some("") => Ok(None),
        Some(d) => normalize_domain(d)
            .map(Some)
            .ok_or_else(|| ApiError::bad_input("input.domain", "must be a domain name")),
    }
}

/// `CONFLICT` when another partner of the program (than `except`) has `domain`: referrals are
/// attributed by domain, so two partners of one program cannot share one.
async fn check_domain_free(
    conn: &impl ConnectionTrait,
    program_id: &str,
    domain: Option<&str>,
    except: Option<&str>,
) -> ApiResult<()> {
    let Some(domain) = domain else {
        return Ok(());
    };
    let mut query = partner::Entity::find()
        .filter(partner::Column::ProgramId.eq(program_id))
        .filter(partner::Column::Domain.eq(domain));
    if let Some(except) = except {
        query = query.filter(partner::Column::Id.ne(except));
    }
    if query.one(conn).await?.is_some() {
        return Err(ApiError::bad_input(
            "input.domain",
            "another partner of this program has this domain",
        ));
    }
    Ok(())
}

/// Changes a partner's name, domain or contact address and writes `partner.updated` (with
/// the names of the changed fields). Admins may change any partner; a partner key its own
/// name and contact address. A terminated partner cannot be changed.
pub async fn update_partner(
    db: &Db,
    principal: &Principal,
    input: UpdatePartnerInput,
) -> ApiResult<partner::Model> {
    principal.require_admin_or_partner()?;
    let id = input.id.to_string();
    if principal
        .partner_scope()
        .is_some_and(|own| own != id.as_str())
        || !is_valid_id(&id)
    {
        return Err(ApiError::NotFound("partner"));
    }
    if input.domain.is_some() && principal.partner_scope().is_some() {
        return Err(ApiError::Forbidden(
            "only an admin key can change a partner's domain".into(),
        ));
    }
    let name = input
        .name
        .as_deref()
        .map(|n| validated_name("input.name", n))
        .transpose()?;
    let contact_email = input
        .contact_email
        .as_deref()
        .map(|e| {
            normalize_email(e).ok_or_else(|| {
                ApiError::bad_input("input.contactEmail", "must be an email address")
            })
        })
        .transpose()?;
    let domain = input
        .domain
        .as_deref()
        .map(|d| partner_domain(Some(d)))
        .transpose()?;
    let tx = db.begin_write().await?;
    let existing = partner::Entity::find_by_id(id.clone())
        .one(&*tx)
        .await?
        .ok_or(ApiError::NotFound("partner"))?;
    if existing.status == PartnerStatus::Terminated {
        return Err(ApiError::Conflict(
            "a terminated partner cannot be changed".into(),
        ));
    }
    let mut changed = Vec::new();
    let mut model: partner::ActiveModel = existing.clone().into();
    if let Some(name) = name.filter(|n| *n != existing.name) {
        model.name = Set(name);
        changed.push("name");
    }
    if let Some(domain) = domain.filter(|d| *d != existing.domain) {
        check_domain_free(&*tx, &existing.program_id, domain.as_deref(), Some(&id)).await?;
        model.domain = Set(domain);
        changed.push("domain");
    }
    if let Some(email) = contact_email.filter(|e| *e != existing.contact_email) {
        model.contact_email = Set(email);
        changed.push("contactEmail");
    }
    if changed.is_empty() {
        return Ok(existing);
    }
    // The contact address is not in the event: subscribers learn that it changed, not what
    // it is.
    save_updated(tx, model, |p| {
        json!({
            "status": p.status,
            "previousStatus": p.status,
            "name": p.name,
            "domain": p.domain,
            "changed": changed,
        })
    })
    .await
}

/// Finds a partner visible to `principal`: a partner key sees only its own partner, and any
/// other partner is reported exactly like a missing one.
pub async fn find_visible_partner(
    db: &Db,
    principal: &Principal,
    id: &str,
) -> ApiResult<Option<partner::Model>> {
    principal.require_admin_or_partner()?;
    if let Some(own) = principal.partner_scope()
        && own != id
    {
        return Ok(None);
    }
    if !is_valid_id(id) {
        return Ok(None);
    }
    Ok(db
        .select_one(partner::Entity::find_by_id(id.to_string()))
        .await?)
}
