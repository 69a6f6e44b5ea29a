//! Certifications (DESIGN §13, the seed's "automated training and tracking"): a person at a
//! partner completed a course, recorded by an admin, an LMS through an INTEGRATION key, or a
//! `certification.issued` webhook. A certification counts while unexpired; 30 days before it
//! expires the `certifications` job writes `certification.expiring`, once per expiry date.

use async_graphql::{ID, InputObject};
use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::json;
use tandem_connectors::inbound::CertificationIssued;

use crate::{
    db::{
        Db,
        entities::{certification, event, partner, program},
        states::CertificationSource,
    },
    domain::{
        auth::Principal,
        events::{self, EventType},
        ids::{is_valid_id, new_id},
        normalize::{email_domain, normalize_email},
        sweeps::{Kind, Sweep, sweep},
    },
    error::{ApiError, ApiResult},
};

/// How long before expiry `certification.expiring` is written.
pub const EXPIRING_NOTICE_DAYS: i64 = 30;

/// Input of `recordCertification`.
#[derive(Debug, Clone, InputObject)]
pub struct RecordCertificationInput {
    /// The partner the person works for.
    pub partner_id: ID,
    /// The certified person.
    pub person_email: String,
    /// The course, as the LMS names it (1 to 100 letters, digits, `.`, `_`, `-`, `:`).
    pub course_key: String,
    /// When it was issued (default now; not in the future).
    pub issued_at: Option<DateTime<Utc>>,
    /// When it expires (after `issuedAt`; none: never).
    pub expires_at: Option<DateTime<Utc>>,
}

/// What a course key may be.
pub const COURSE_KEY_RULE: &str = "must be 1 to 100 letters, digits, '.', '_', '-' or ':'";

/// Whether `key` (trimmed) is a course key: 1 to 100 letters, digits, `.`, `_`, `-`, `:`.
pub fn is_course_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 100
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

/// A certification to record, checked.
pub struct NewCertification {
    person_email: String,
    course_key: String,
    issued_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

/// Checks a certification's fields; `Err((field, message))` names the one at fault.
fn check(
    person_email: &str,
    course_key: &str,
    issued_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<NewCertification, (&'static str, &'static str)> {
    let person_email =
        normalize_email(person_email).ok_or(("personEmail", "must be an email address"))?;
    let course_key = course_key.trim();
    if !is_course_key(course_key) {
        return Err(("courseKey", COURSE_KEY_RULE));
    }
    let now = Utc::now();
    let issued_at = issued_at.unwrap_or(now);
    if issued_at > now + Duration::minutes(5) {
        return Err(("issuedAt", "must not be in the future"));
    }
    if expires_at.is_some_and(|e| e <= issued_at) {
        return Err(("expiresAt", "must be after issuedAt"));
    }
    Ok(NewCertification {
        person_email,
        course_key: course_key.to_string(),
        issued_at,
        expires_at,
    })
}

/// Records (or renews: same person and course) a certification of `partner` inside the
/// caller's transaction; writes `certification.recorded`. A new expiry date re-arms the
/// expiring notice.
async fn record(
    conn: &impl ConnectionTrait,
    partner: &partner::Model,
    new: NewCertification,
    source: CertificationSource,
    events: &mut Vec<event::ActiveModel>,
) -> Result<certification::Model, sea_orm::DbErr> {
    let now = Utc::now();
    let existing = certification::Entity::find()
        .filter(certification::Column::PartnerId.eq(partner.id.as_str()))
        .filter(certification::Column::PersonEmail.eq(new.person_email.as_str()))
        .filter(certification::Column::CourseKey.eq(new.course_key.as_str()))
        .one(conn)
        .await?;
    let renewed = existing.is_some();
    let stored = match existing {
        Some(found) => {
            let rearm = found.expires_at != new.expires_at;
            let notified = found.expiring_notified_at;
            let mut model: certification::ActiveModel = found.into();
            model.issued_at = Set(new.issued_at);
            model.expires_at = Set(new.expires_at);
            model.expiring_notified_at = Set(if rearm { None } else { notified });
            model.source = Set(source);
            model.updated_at = Set(now);
            model.update(conn).await?
        }
        None => {
            certification::ActiveModel {
                id: Set(new_id()),
                program_id: Set(partner.program_id.clone()),
                partner_id: Set(partner.id.clone()),
                person_email: Set(new.person_email),
                course_key: Set(new.course_key),
                issued_at: Set(new.issued_at),
                expires_at: Set(new.expires_at),
                expiring_notified_at: Set(None),
                source: Set(source),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(conn)
            .await?
        }
    };
    events.push(events::new_event(
        EventType::CertificationRecorded,
        &stored.program_id,
        Some(&stored.partner_id),
        json!({
            "certificationId": stored.id,
            "personEmail": stored.person_email,
            "courseKey": stored.course_key,
            "issuedAt": stored.issued_at,
            "expiresAt": stored.expires_at,
            "renewed": renewed,
        }),
    ));
    Ok(stored)
}

/// `recordCertification`: an admin, or an INTEGRATION key granted the partner's program (an
/// LMS), records a certification.
pub async fn record_certification(
    db: &Db,
    principal: &Principal,
    input: RecordCertificationInput,
) -> ApiResult<certification::Model> {
    if matches!(principal, Principal::Partner { .. }) {
        return Err(ApiError::Forbidden(
            "certifications are recorded by admins and training systems (integration keys)"
                .to_string(),
        ));
    }
    let new = check(
        &input.person_email,
        &input.course_key,
        input.issued_at,
        input.expires_at,
    )
    .map_err(|(field, message)| ApiError::bad_input(format!("input.{field}"), message))?;
    let partner_id = input.partner_id.to_string();
    if !is_valid_id(&partner_id) {
        return Err(ApiError::NotFound("partner"));
    }
    let tx = db.begin_write().await?;
    let partner = partner::Entity::find_by_id(partner_id)
        .one(&*tx)
        .await?
        .filter(|p| principal.operates(&p.program_id))
        .ok_or(ApiError::NotFound("partner"))?;
    let mut caused = Vec::new();
    let stored = record(&*tx, &partner, new, CertificationSource::Api, &mut caused).await?;
    events::record_all(&*tx, caused).await?;
    tx.commit().await?;
    Ok(stored)
}

/// What a `certification.issued` webhook did.
pub enum IssuedOutcome {
    /// Recorded.
    Recorded,
    /// Not recorded: why.
    Refused(String),
}

/// Applies a `certification.issued` event of a STANDARD source of `program` inside the inbox
/// batch's transaction.
pub async fn apply_certification_issued(
    conn: &impl ConnectionTrait,
    program: &program::Model,
    issued: &CertificationIssued,
    received_at: DateTime<Utc>,
    events: &mut Vec<event::ActiveModel>,
) -> Result<IssuedOutcome, sea_orm::DbErr> {
    let new = match check(
        &issued.person_email,
        &issued.course_key,
        Some(issued.issued_at.unwrap_or(received_at)),
        issued.expires_at,
    ) {
        Ok(new) => new,
        Err((field, message)) => {
            return Ok(IssuedOutcome::Refused(format!("`data.{field}` {message}")));
        }
    };
    let mut query =
        partner::Entity::find().filter(partner::Column::ProgramId.eq(program.id.as_str()));
    query = match (&issued.partner_id, &issued.referral_code) {
        (Some(id), _) => query.filter(partner::Column::Id.eq(id.as_str())),
        (None, Some(code)) => {
            query.filter(partner::Column::ReferralCode.eq(code.trim().to_ascii_uppercase()))
        }
        (None, None) => query.filter(
            partner::Column::Domain.eq(email_domain(&new.person_email).unwrap_or_default()),
        ),
    };
    let Some(partner) = query.one(conn).await? else {
        return Ok(IssuedOutcome::Refused(
            "no partner of this program matches (partnerId, referralCode or the person's email \
             domain)"
                .to_string(),
        ));
    };
    record(conn, &partner, new, CertificationSource::Webhook, events).await?;
    Ok(IssuedOutcome::Recorded)
}

const EXPIRING: Sweep = Sweep {
    table: "certifications",
    event: EventType::CertificationExpiring,
    set: "expiring_notified_at = {now}",
    // The partial index `idx_certifications_expiring` holds the rows not yet notified.
    choice: "SELECT c.id FROM certifications c WHERE c.expiring_notified_at IS NULL \
             AND c.expires_at <= {now} ORDER BY c.expires_at",
    guard: "expiring_notified_at IS NULL",
    id_field: "certificationId",
    fields: &[
        ("person_email", "personEmail", Kind::Text),
        ("course_key", "courseKey", Kind::Text),
        ("expires_at", "expiresAt", Kind::Time),
    ],
};

/// The `certifications` job: writes `certification.expiring` for every certification expiring
/// within 30 days of `now` (once per expiry date; a certification recorded already expired is
/// notified too, so that nothing waits unannounced).
pub async fn notify_expiring(db: &Db, now: DateTime<Utc>) -> Result<u64, sea_orm::DbErr> {
    sweep(
        db,
        &EXPIRING,
        now + Duration::days(EXPIRING_NOTICE_DAYS),
        now,
    )
    .await
}

/// A partner's certifications, newest first (at most 500); with `active`, only unexpired ones.
pub async fn certifications_of(
    db: &Db,
    partner_id: &str,
    active: bool,
) -> ApiResult<Vec<certification::Model>> {
    let mut query =
        certification::Entity::find().filter(certification::Column::PartnerId.eq(partner_id));
    if active {
        query = query.filter(
            Condition::any()
                .add(certification::Column::ExpiresAt.is_null())
                .add(certification::Column::ExpiresAt.gt(Utc::now())),
        );
    }
    Ok(query
        .order_by_desc(certification::Column::IssuedAt)
        .order_by_asc(certification::Column::Id)
        .limit(500)
        .all(db.reads())
        .await?)
}
