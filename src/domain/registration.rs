//! The time-driven half of the registration lifecycle (DESIGN §12): protection expiry, lead
//! engagement and the engagement SLA.
//!
//! Both are [`Sweep`]s, durable and exactly-once without relying on the job lease; an
//! engagement racing the SLA sweep locks the referral row first, so the two never both decide
//! a clock: each `referral.expired` and `referral.sla_breached` is written once. The sweeps
//! read partial indexes of the rows still waiting, so settled referrals cost them nothing.

use async_graphql::{ID, InputObject};
use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Select,
};
use serde_json::json;
use tandem_connectors::inbound::LeadEngagement;

use crate::{
    db::{
        Db,
        entities::{event, partner, program, referral, referral_engagement},
        states::{EngagementSource, ReferralStatus, SlaState},
    },
    domain::{
        auth::Principal,
        events::{self, EventType},
        ids::{is_valid_id, new_id},
        normalize::{normalize_domain, optional_text},
        referrals::holds_registration,
        sweeps::{Kind, Sweep, sweep},
    },
    error::{ApiError, ApiResult},
};

const EXPIRY: Sweep = Sweep {
    table: "referrals",
    event: EventType::ReferralExpired,
    set: "status = 'EXPIRED'",
    // The partial index `idx_referrals_protection` holds exactly the ACCEPTED rows.
    choice: "SELECT r.id FROM referrals r WHERE r.status = 'ACCEPTED' \
             AND r.protected_until <= {now} \
             AND NOT EXISTS (SELECT 1 FROM attributions a WHERE a.referral_id = r.id) \
             ORDER BY r.protected_until",
    guard: "status = 'ACCEPTED'",
    id_field: "referralId",
    fields: &[("protected_until", "protectedUntil", Kind::Time)],
};

const SLA: Sweep = Sweep {
    table: "referrals",
    event: EventType::ReferralSlaBreached,
    set: "sla_state = 'BREACHED'",
    // The partial index `idx_referrals_sla_due` holds exactly the PENDING rows.
    choice: "SELECT r.id FROM referrals r WHERE r.sla_state = 'PENDING' \
             AND r.sla_due_at <= {now} ORDER BY r.sla_due_at",
    guard: "sla_state = 'PENDING'",
    id_field: "referralId",
    fields: &[("sla_due_at", "dueAt", Kind::Time)],
};

/// The `expire-registrations` job: `ACCEPTED` registrations whose protection ended at or before
/// `now` without an attributed deal become `EXPIRED` (`referral.expired`, once each).
pub async fn expire_registrations(db: &Db, now: DateTime<Utc>) -> Result<u64, DbErr> {
    sweep(db, &EXPIRY, now, now).await
}

/// The `lead-sla` job: referrals whose SLA is still `PENDING` at its due time become
/// `BREACHED` (`referral.sla_breached`, once each).
pub async fn breach_due_slas(db: &Db, now: DateTime<Utc>) -> Result<u64, DbErr> {
    sweep(db, &SLA, now, now).await
}

/// An engagement to record on a referral.
pub struct Engagement {
    /// What sales did.
    pub kind: String,
    /// When.
    pub at: DateTime<Utc>,
    /// A note for managers.
    pub note: Option<String>,
    /// Who recorded it.
    pub source: EngagementSource,
}

/// `query` reading the referral row to engage, locked on PostgreSQL: an engagement and the SLA
/// sweep (which skips locked rows) then never both decide the same clock.
fn locking(
    conn: &impl ConnectionTrait,
    query: Select<referral::Entity>,
) -> Select<referral::Entity> {
    if conn.get_database_backend() == DatabaseBackend::Postgres {
        query.lock_exclusive()
    } else {
        query
    }
}

/// Records `engagement` on `found` (read through [`locking`]) inside the caller's
/// transaction: the earliest engagement is the referral's `engagedAt` (first one:
/// `referral.engaged`), and it stops a pending SLA clock (`MET` by the due time; after it
/// `BREACHED`, with the breach event unless the sweep already wrote it).
async fn engage(
    conn: &impl ConnectionTrait,
    found: referral::Model,
    engagement: Engagement,
    events: &mut Vec<event::ActiveModel>,
) -> Result<referral::Model, DbErr> {
    let now = Utc::now();
    referral_engagement::ActiveModel {
        id: Set(new_id()),
        referral_id: Set(found.id.clone()),
        program_id: Set(found.program_id.clone()),
        kind: Set(engagement.kind.clone()),
        at: Set(engagement.at),
        note: Set(engagement.note.clone()),
        source: Set(engagement.source),
        created_at: Set(now),
    }
    .insert(conn)
    .await?;
    let first = found.engaged_at.is_none();
    let engaged_at = found
        .engaged_at
        .map_or(engagement.at, |e| e.min(engagement.at));
    let sla_state = match (found.sla_state, found.sla_due_at) {
        (Some(SlaState::Pending), Some(due)) if engagement.at <= due => Some(SlaState::Met),
        (Some(SlaState::Pending), Some(due)) => {
            events.push(events::new_event(
                EventType::ReferralSlaBreached,
                &found.program_id,
                Some(&found.partner_id),
                json!({ "referralId": found.id, "dueAt": due }),
            ));
            Some(SlaState::Breached)
        }
        (state, _) => state,
    };
    if first {
        events.push(events::new_event(
            EventType::ReferralEngaged,
            &found.program_id,
            Some(&found.partner_id),
            json!({
                "referralId": found.id,
                "kind": engagement.kind,
                "at": engagement.at,
                "source": engagement.source,
                "slaState": sla_state,
            }),
        ));
    }
    if found.engaged_at == Some(engaged_at) && found.sla_state == sla_state {
        return Ok(found);
    }
    let mut model: referral::ActiveModel = found.into();
    model.engaged_at = Set(Some(engaged_at));
    model.sla_state = Set(sla_state);
    model.updated_at = Set(now);
    model.update(conn).await
}

/// A CRM deal was attributed to the referral: sales engaged the lead when the deal was created
/// (never later than now; attribution rules only match deals created after the submission).
pub async fn engaged_by_deal(
    conn: &impl ConnectionTrait,
    referral_id: &str,
    deal_created_at: DateTime<Utc>,
    events: &mut Vec<event::ActiveModel>,
) -> Result<(), DbErr> {
    let query = locking(conn, referral::Entity::find_by_id(referral_id.to_string()));
    let Some(found) = query.one(conn).await? else {
        return Ok(());
    };
    let at = deal_created_at.min(Utc::now());
    engage(
        conn,
        found,
        Engagement {
            kind: "deal".to_string(),
            at,
            note: None,
            source: EngagementSource::Deal,
        },
        events,
    )
    .await?;
    Ok(())
}

/// Whether a referral in `status` can still be engaged (it holds or held its company).
fn engageable(status: ReferralStatus) -> bool {
    matches!(
        status,
        ReferralStatus::Submitted
            | ReferralStatus::Conflict
            | ReferralStatus::Accepted
            | ReferralStatus::Converted
    )
}

/// Input of `recordEngagement`.
#[derive(Debug, Clone, InputObject)]
pub struct RecordEngagementInput {
    /// The referral.
    pub referral_id: ID,
    /// What sales did, such as `call`, `email` or `meeting` (1 to 64 characters).
    pub kind: String,
    /// When it happened (default now; not in the future, not before the submission).
    pub at: Option<DateTime<Utc>>,
    /// A note for the program's managers (up to 2,000 characters; never shown to partners).
    pub note: Option<String>,
}

/// `recordEngagement`: an admin, or an INTEGRATION key granted the referral's program (a sales
/// tool), records that sales engaged the lead.
pub async fn record_engagement(
    db: &Db,
    principal: &Principal,
    input: RecordEngagementInput,
) -> ApiResult<referral::Model> {
    if matches!(principal, Principal::Partner { .. }) {
        return Err(ApiError::Forbidden(
            "engagements are recorded by admins and sales tools (integration keys)".to_string(),
        ));
    }
    let kind = input.kind.trim().to_string();
    if kind.is_empty() || kind.chars().count() > 64 {
        return Err(ApiError::bad_input(
            "input.kind",
            "must be 1 to 64 characters",
        ));
    }
    let note = optional_text("input.note", input.note.as_deref(), 2000)?;
    let now = Utc::now();
    let at = input.at.unwrap_or(now);
    if at > now + Duration::minutes(5) {
        return Err(ApiError::bad_input("input.at", "must not be in the future"));
    }
    let id = input.referral_id.to_string();
    if !is_valid_id(&id) {
        return Err(ApiError::NotFound("referral"));
    }
    let tx = db.begin_write().await?;
    let found = locking(&*tx, referral::Entity::find_by_id(id))
        .one(&*tx)
        .await?
        .filter(|r| principal.operates(&r.program_id))
        .ok_or(ApiError::NotFound("referral"))?;
    if !engageable(found.status) {
        return Err(ApiError::Conflict(format!(
            "a {} referral holds no lead to engage",
            found.status
        )));
    }
    if at < found.submitted_at {
        return Err(ApiError::bad_input(
            "input.at",
            "must not be before the referral was submitted",
        ));
    }
    let mut caused = Vec::new();
    let updated = engage(
        &*tx,
        found,
        Engagement {
            kind,
            at,
            note,
            source: EngagementSource::Api,
        },
        &mut caused,
    )
    .await?;
    events::record_all(&*tx, caused).await?;
    tx.commit().await?;
    Ok(updated)
}

/// What a `lead.engaged` webhook did.
pub enum LeadOutcome {
    /// Recorded on this referral.
    Engaged(String),
    /// No live registration matches: why.
    Unmatched(String),
}

/// Applies a `lead.engaged` event of a STANDARD source of `program` inside the inbox batch's
/// transaction: the company's live registration (of the partner with `referralCode`, when
/// given; the earliest one otherwise) is engaged at `at` (default `received_at`).
pub async fn apply_lead_engaged(
    conn: &impl ConnectionTrait,
    program: &program::Model,
    lead: &LeadEngagement,
    received_at: DateTime<Utc>,
    events: &mut Vec<event::ActiveModel>,
) -> Result<LeadOutcome, DbErr> {
    let Some(domain) = normalize_domain(&lead.company_domain) else {
        return Ok(LeadOutcome::Unmatched(format!(
            "`data.companyDomain` {:?} is not a domain name",
            lead.company_domain
        )));
    };
    let at = lead.at.unwrap_or(received_at).min(Utc::now());
    let mut query = referral::Entity::find()
        .filter(referral::Column::ProgramId.eq(program.id.as_str()))
        .filter(referral::Column::CompanyDomain.eq(domain.as_str()))
        .filter(holds_registration(at));
    if let Some(code) = &lead.referral_code {
        let Some(found) = partner::Entity::find()
            .filter(partner::Column::ProgramId.eq(program.id.as_str()))
            .filter(partner::Column::ReferralCode.eq(code.trim().to_ascii_uppercase()))
            .one(conn)
            .await?
        else {
            return Ok(LeadOutcome::Unmatched(format!(
                "no partner of this program has the referral code {code:?}"
            )));
        };
        query = query.filter(referral::Column::PartnerId.eq(found.id));
    }
    let query = query
        .order_by_asc(referral::Column::SubmittedAt)
        .order_by_asc(referral::Column::Id);
    let Some(found) = locking(conn, query).one(conn).await? else {
        return Ok(LeadOutcome::Unmatched(format!(
            "no live registration of {domain} in this program"
        )));
    };
    let at = at.max(found.submitted_at);
    let engaged = engage(
        conn,
        found,
        Engagement {
            kind: lead.kind.clone(),
            at,
            note: lead.note.clone(),
            source: EngagementSource::Webhook,
        },
        events,
    )
    .await?;
    Ok(LeadOutcome::Engaged(engaged.id))
}

/// The engagements of a referral, earliest first.
pub async fn engagements_of(
    db: &Db,
    referral_id: &str,
) -> ApiResult<Vec<referral_engagement::Model>> {
    Ok(referral_engagement::Entity::find()
        .filter(referral_engagement::Column::ReferralId.eq(referral_id))
        .order_by_asc(referral_engagement::Column::At)
        .order_by_asc(referral_engagement::Column::Id)
        .limit(200)
        .all(db.reads())
        .await?)
}
