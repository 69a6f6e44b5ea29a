//! The event outbox: every state change writes its event in the same transaction, and
//! readers page through events in commit order.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::{Value, json};

use crate::{
    db::{Db, entities::event},
    domain::{auth::Principal, ids::new_id},
    error::ApiResult,
};

/// The catalog of event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A partner joined a program.
    PartnerCreated,
    /// A partner's status or details changed.
    PartnerUpdated,
    /// A partner (or an admin on its behalf) registered a referral.
    ReferralSubmitted,
    /// An admin (or a won deal) changed a referral's status.
    ReferralStatusChanged,
    /// A deal was attributed to a partner.
    DealAttributed,
    /// An attributed deal was won.
    DealWon,
    /// An attributed deal was lost or deleted.
    DealLost,
    /// Commission accrued to a partner.
    CommissionAccrued,
    /// Commission was reversed.
    CommissionReversed,
    /// A payout was created.
    PayoutCreated,
    /// A payout was marked paid.
    PayoutPaid,
    /// A partner's first won deal (or a billing customer naming it) made a company its
    /// customer (DESIGN §11).
    CustomerReferred,
    /// A paid invoice was linked to a partner's referred customer.
    InvoiceAttributed,
    /// A registration's protection ended without an attributed deal (DESIGN §12).
    ReferralExpired,
    /// Sales first engaged a referred lead.
    ReferralEngaged,
    /// A referred lead was not engaged within the program's lead SLA (once per referral).
    ReferralSlaBreached,
    /// A company applied to join a program (DESIGN §13).
    PartnerApplied,
    /// A person at a partner was certified on a course (or the certification renewed).
    CertificationRecorded,
    /// A certification expires in 30 days (once per expiry date).
    CertificationExpiring,
    /// A partner moved to another group (promoted, demoted, set by an admin).
    PartnerGroupChanged,
    /// An accrual waits for a manager's review (DESIGN §14).
    CommissionHeld,
    /// A manager declined a commission: a reversal with the reason was appended.
    CommissionDeclined,
    /// A payout was sent (a Stripe Connect transfer created).
    PayoutSent,
    /// Sending a payout failed, or its transfer was reversed.
    PayoutFailed,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 24] = [
        EventType::PartnerCreated,
        EventType::PartnerUpdated,
        EventType::ReferralSubmitted,
        EventType::ReferralStatusChanged,
        EventType::DealAttributed,
        EventType::DealWon,
        EventType::DealLost,
        EventType::CommissionAccrued,
        EventType::CommissionReversed,
        EventType::PayoutCreated,
        EventType::PayoutPaid,
        EventType::CustomerReferred,
        EventType::InvoiceAttributed,
        EventType::ReferralExpired,
        EventType::ReferralEngaged,
        EventType::ReferralSlaBreached,
        EventType::PartnerApplied,
        EventType::CertificationRecorded,
        EventType::CertificationExpiring,
        EventType::PartnerGroupChanged,
        EventType::CommissionHeld,
        EventType::CommissionDeclined,
        EventType::PayoutSent,
        EventType::PayoutFailed,
    ];

    /// The wire name, such as `partner.created`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PartnerCreated => "partner.created",
            EventType::PartnerUpdated => "partner.updated",
            EventType::ReferralSubmitted => "referral.submitted",
            EventType::ReferralStatusChanged => "referral.status_changed",
            EventType::DealAttributed => "deal.attributed",
            EventType::DealWon => "deal.won",
            EventType::DealLost => "deal.lost",
            EventType::CommissionAccrued => "commission.accrued",
            EventType::CommissionReversed => "commission.reversed",
            EventType::PayoutCreated => "payout.created",
            EventType::PayoutPaid => "payout.paid",
            EventType::CustomerReferred => "customer.referred",
            EventType::InvoiceAttributed => "invoice.attributed",
            EventType::ReferralExpired => "referral.expired",
            EventType::ReferralEngaged => "referral.engaged",
            EventType::ReferralSlaBreached => "referral.sla_breached",
            EventType::PartnerApplied => "partner.applied",
            EventType::CertificationRecorded => "certification.recorded",
            EventType::CertificationExpiring => "certification.expiring",
            EventType::PartnerGroupChanged => "partner.group_changed",
            EventType::CommissionHeld => "commission.held",
            EventType::CommissionDeclined => "commission.declined",
            EventType::PayoutSent => "payout.sent",
            EventType::PayoutFailed => "payout.failed",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// Builds an event row: `data` is an object; `programId` and (when given) `partnerId` are added
/// to it, since they scope the event to keys.
pub fn new_event(
    event_type: EventType,
    program_id: &str,
    partner_id: Option<&str>,
    data: Value,
) -> event::ActiveModel {
    let mut data = match data {
        Value::Object(map) => map,
        other => {
            let mut map = serde_json::Map::new();
            map.insert("value".into(), other);
            map
        }
    };
    data.insert("programId".into(), json!(program_id));
    if let Some(partner_id) = partner_id {
        data.insert("partnerId".into(), json!(partner_id));
    }
    event::ActiveModel {
        id: Set(format!("evt_{}", new_id().replace('-', ""))),
        event_type: Set(event_type.as_str().to_string()),
        program_id: Set(program_id.to_string()),
        partner_id: Set(partner_id.map(str::to_string)),
        data: Set(Value::Object(data)),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
}

/// Appends an event inside the caller's transaction.
pub async fn record(
    conn: &impl ConnectionTrait,
    event_type: EventType,
    program_id: &str,
    partner_id: Option<&str>,
    data: Value,
) -> Result<event::Model, DbErr> {
    new_event(event_type, program_id, partner_id, data)
        .insert(conn)
        .await
}

/// Appends buffered events, in order, with one statement (inside the caller's transaction).
pub async fn record_all(
    conn: &impl ConnectionTrait,
    events: Vec<event::ActiveModel>,
) -> Result<(), DbErr> {
    crate::db::insert_all(conn, events, None).await?;
    Ok(())
}

/// A position in the event stream: after the events of transaction `tx` up to `seq`
/// (PostgreSQL pages by `(tx_id, seq)`; on SQLite `tx` is 0 and `seq` alone orders).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EventPosition {
    /// Transaction id (PostgreSQL).
    pub tx: i64,
    /// Insert order.
    pub seq: i64,
}

impl EventPosition {
    /// The position of an event.
    pub fn of(event: &event::Model) -> EventPosition {
        EventPosition {
            tx: event.tx_id.unwrap_or(0),
            seq: event.seq,
        }
    }

    /// Cursor text: `tx.seq`.
    pub fn to_cursor(self) -> String {
        format!("{}.{}", self.tx, self.seq)
    }

    /// Parses [`EventPosition::to_cursor`] (or a bare `seq`).
    pub fn parse(text: &str) -> Option<EventPosition> {
        match text.split_once('.') {
            Some((tx, seq)) => Some(EventPosition {
                tx: tx.parse().ok()?,
                seq: seq.parse().ok()?,
            }),
            None => Some(EventPosition {
                tx: 0,
                seq: text.parse().ok()?,
            }),
        }
    }
}

/// PostgreSQL: only events of transactions older than every one of this database still in
/// flight (all of them have finished, so nothing can be committed behind a reader).
///
/// Transaction ids are server-wide, so the snapshot's own horizon (`pg_snapshot_xmin`) would
/// also wait for transactions of other databases on the server, which can never write these
/// rows: an idle-in-transaction session of another application held every new event back.
/// The horizon is the oldest in-flight id of the statement's snapshot that `pg_stat_activity`
/// does not show running in another database (or the snapshot's `xmax` when there is none).
/// That is sound however the two reads interleave: an id shown running in another database
/// belongs to that database for good, and one that finished meanwhile (or whose backend this
/// role may not inspect) still holds the horizon back, as before.
pub const COMMITTED_ON_POSTGRES: &str = "tx_id < (\
    SELECT LEAST(pg_snapshot_xmax(snap)::text::bigint, (\
        SELECT MIN(xid::text::bigint) FROM pg_snapshot_xip(snap) AS xid \
        WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity AS activity \
            WHERE activity.backend_xid::text::bigint = xid::text::bigint % 4294967296 \
            AND activity.datname <> current_database()))) \
    FROM (SELECT pg_current_snapshot() AS snap) AS current_snapshot)";

/// The outbound fan-out's row in `event_cursors` (retention prunes only what it has passed).
pub const FANOUT_CURSOR: &str = "webhook-fanout";

/// Restricts `query` to committed events after `after` in stream order: `(tx_id, seq)` on
/// PostgreSQL, `seq` on SQLite (one writer at a time, so `seq` order is commit order).
pub fn committed_after(
    query: sea_orm::Select<event::Entity>,
    postgres: bool,
    after: Option<EventPosition>,
) -> sea_orm::Select<event::Entity> {
    use sea_orm::sea_query::Expr;
    let mut query = query;
    if postgres {
        query = query.filter(Expr::cust(COMMITTED_ON_POSTGRES));
        if let Some(after) = after {
            // A row comparison, which PostgreSQL turns into the start of an index scan on
            // (tx_id, seq); the equivalent `tx_id > a OR (tx_id = a AND seq > s)` makes it walk
            // the index from the first event ever written (or of a large transaction) and
            // filter, a cost that grows with the history.
            query = query.filter(Expr::cust_with_values(
                "(tx_id, seq) > ($1, $2)",
                [after.tx, after.seq],
            ));
        }
    } else if let Some(after) = after {
        query = query.filter(event::Column::Seq.gt(after.seq));
    }
    query
}

/// Orders events as the stream does (oldest first).
pub fn in_stream_order(
    query: sea_orm::Select<event::Entity>,
    postgres: bool,
) -> sea_orm::Select<event::Entity> {
    let query = if postgres {
        query.order_by_asc(event::Column::TxId)
    } else {
        query
    };
    query.order_by_asc(event::Column::Seq)
}

/// Fails with `BAD_USER_INPUT` on an unknown event type (`types[i]`).
pub fn check_types(types: &[String]) -> ApiResult<()> {
    for (i, t) in types.iter().enumerate() {
        if EventType::parse(t).is_none() {
            return Err(crate::error::ApiError::bad_input(
                format!("types[{i}]"),
                format!("unknown event type {t:?}"),
            ));
        }
    }
    Ok(())
}

fn scoped_events(
    db: &Db,
    principal: &Principal,
    after: Option<EventPosition>,
    types: Option<&[String]>,
) -> sea_orm::Select<event::Entity> {
    let mut query = event::Entity::find();
    match principal {
        Principal::Admin { .. } => {}
        Principal::Partner { partner_id, .. } => {
            query = query.filter(event::Column::PartnerId.eq(partner_id.as_str()));
        }
        Principal::Integration { program_ids, .. } => {
            query = query.filter(event::Column::ProgramId.is_in(program_ids.iter().cloned()));
        }
    }
    if let Some(types) = types {
        query = query.filter(event::Column::EventType.is_in(types.iter().cloned()));
    }
    committed_after(query, db.is_postgres(), after)
}

/// Lists events after `after`, oldest first, visible to `principal`, optionally limited to
/// some types. Returns up to `limit + 1` rows so the caller can tell whether more follow.
pub async fn list_events(
    db: &Db,
    principal: &Principal,
    after: Option<EventPosition>,
    types: Option<&[String]>,
    limit: u64,
) -> ApiResult<Vec<event::Model>> {
    let query = scoped_events(db, principal, after, types);
    Ok(in_stream_order(query, db.is_postgres())
        .limit(limit + 1)
        .all(db.reads())
        .await?)
}

/// Counts the events [`list_events`] would page through.
pub async fn count_events(
    db: &Db,
    principal: &Principal,
    after: Option<EventPosition>,
    types: Option<&[String]>,
) -> Result<u64, DbErr> {
    scoped_events(db, principal, after, types)
        .count(db.reads())
        .await
}
