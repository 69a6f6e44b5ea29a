//! Retention: the history tables that grow with traffic are pruned by the `prune` job, each
//! after its own retention period.
//!
//! | kind | what goes | what always stays |
//! |---|---|---|
//! | webhook receipts | applied, ignored, stale and failed receipts | receipts still to apply |
//! | duplicate receipts | repeats of an event already received | |
//! | deliveries | succeeded, failed and cancelled deliveries, with their attempt logs | pending deliveries |
//! | delivery attempts | attempts of any delivery | |
//! | job runs | finished runs | running runs, and each job's latest |
//! | sync runs | finished CRM sync runs | running runs, and each connection's latest |
//! | events | events the fan-out has passed, no delivery of them pending (never by default) | |
//!
//! The commission ledger is never pruned: it is the program's books. `deal_commissions` and
//! `invoice_commissions` are not history either: one row per (deal or invoice, partner) holds
//! what the reconciler last computed, replaced in place; nor is `event_cursors` (one row per
//! consumer of the event stream: the fan-out).
//!
//! Pruning never holds the database for long: each table is walked oldest first (its key grows
//! with time) a page at a time, up to the page that holds rows younger than the cutoff, and
//! each page's prunable rows are deleted in their own short write transaction, with a yield in
//! between, so that ingest and the workers interleave with it. No time column needs an index.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr, Statement, TryGetable, Value};
use serde::Serialize;

use crate::{
    config::RetentionPeriods,
    db::{
        Db,
        states::{DeliveryStatus, JobRunStatus, ReceiptStatus},
    },
    domain::events::FANOUT_CURSOR,
};

/// Rows read (and at most deleted) per step.
const PAGE: u64 = 1_000;

/// Rows deleted per kind by one prune.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pruned {
    pub receipts_deleted: u64,
    pub duplicates_deleted: u64,
    pub deliveries_deleted: u64,
    pub attempts_deleted: u64,
    pub job_runs_deleted: u64,
    pub sync_runs_deleted: u64,
    pub events_deleted: u64,
}

/// One kind of history: the table, its time-ordered key (an integer `seq` or a time-ordered
/// id) and time column, the SQL condition (over the table's row, unaliased) under which an old
/// row is kept anyway, and the rows of other tables that go with it (`(table, column naming
/// this table's key)`).
struct Kind {
    table: &'static str,
    key: Key,
    time: &'static str,
    keep: String,
    dependents: &'static [(&'static str, &'static str)],
}

/// A table's key column.
#[derive(Clone, Copy)]
enum Key {
    /// `seq`, an integer.
    Seq,
    /// `id`, a UUIDv7 (time-ordered) string.
    Id,
}

impl Key {
    fn column(self) -> &'static str {
        match self {
            Key::Seq => "seq",
            Key::Id => "id",
        }
    }
}

/// Prunes every kind past its retention, as of `now`, in this order (deliveries before the
/// events they name).
pub async fn prune(
    db: &Db,
    retention: &RetentionPeriods,
    now: DateTime<Utc>,
) -> Result<Pruned, DbErr> {
    let kind = |table, key, time, keep: &str, dependents| Kind {
        table,
        key,
        time,
        keep: keep.to_string(),
        dependents,
    };
    // The states named in the conditions.
    let (duplicate, received) = (
        ReceiptStatus::Duplicate.as_str(),
        ReceiptStatus::Received.as_str(),
    );
    let pending = DeliveryStatus::Pending.as_str();
    let running = JobRunStatus::Running.as_str();
    // Events: only what the fan-out has passed (none before it ever ran), and never an event
    // a delivery still has to send.
    let (position, cursor) = if db.is_postgres() {
        ("(events.tx_id, events.seq)", "(c.tx_id, c.seq)")
    } else {
        ("events.seq", "c.seq")
    };
    // The pending deliveries' events are read once per statement (through the partial index of
    // pending deliveries), not once per event: no index leads with a delivery's event.
    let events_kept = format!(
        "NOT EXISTS (SELECT 1 FROM event_cursors c WHERE c.name = '{FANOUT_CURSOR}' \
         AND {position} <= {cursor}) OR events.id IN (SELECT d.event_id FROM \
         webhook_deliveries d WHERE d.status = '{pending}')"
    );
    let mut pruned = Pruned::default();
    let plan: [(Option<std::time::Duration>, Kind, &mut u64); 7] = [
        (
            retention.duplicates,
            kind(
                "webhook_receipts",
                Key::Seq,
                "received_at",
                &format!("status <> '{duplicate}'"),
                &[],
            ),
            &mut pruned.duplicates_deleted,
        ),
        (
            // Duplicates have their own period; receipts still to apply always stay.
            retention.receipts,
            kind(
                "webhook_receipts",
                Key::Seq,
                "received_at",
                &format!("status IN ('{received}', '{duplicate}')"),
                &[],
            ),
            &mut pruned.receipts_deleted,
        ),
        (
            retention.attempts,
            kind(
                "webhook_delivery_attempts",
                Key::Id,
                "attempted_at",
                "1 = 0",
                &[],
            ),
            &mut pruned.attempts_deleted,
        ),
        (
            retention.deliveries,
            kind(
                "webhook_deliveries",
                Key::Id,
                "created_at",
                &format!("status = '{pending}'"),
                &[("webhook_delivery_attempts", "delivery_id")],
            ),
            &mut pruned.deliveries_deleted,
        ),
        (
            retention.job_runs,
            kind(
                "job_runs",
                Key::Id,
                "started_at",
                &format!(
                    "status = '{running}' OR id IN (SELECT MAX(id) FROM job_runs GROUP BY name)"
                ),
                &[],
            ),
            &mut pruned.job_runs_deleted,
        ),
        (
            retention.sync_runs,
            kind(
                "sync_runs",
                Key::Id,
                "started_at",
                &format!(
                    "status = '{running}' OR id IN \
                     (SELECT MAX(id) FROM sync_runs GROUP BY connection_id)"
                ),
                &[],
            ),
            &mut pruned.sync_runs_deleted,
        ),
        (
            retention.events,
            kind("events", Key::Seq, "created_at", &events_kept, &[]),
            &mut pruned.events_deleted,
        ),
    ];
    for (period, kind, deleted) in plan {
        let Some(period) = period else { continue };
        let before = now - chrono::Duration::from_std(period).unwrap_or(chrono::Duration::MAX);
        *deleted = match kind.key {
            Key::Seq => prune_kind::<i64>(db, &kind, before).await?,
            Key::Id => prune_kind::<String>(db, &kind, before).await?,
        };
    }
    Ok(pruned)
}

/// Walks `kind`'s table oldest first up to the first row at or after `before`, deleting a page's
/// prunable rows at a time. Returns the rows deleted.
async fn prune_kind<K>(db: &Db, kind: &Kind, before: DateTime<Utc>) -> Result<u64, DbErr>
where
    K: TryGetable + Into<Value> + Clone,
{
    let Kind { table, time, .. } = kind;
    let key = kind.key.column();
    let mut after: Option<K> = None;
    let mut deleted = 0;
    loop {
        let [cutoff, limit, from] = db.params();
        let (range, mut values) = match &after {
            Some(k) => (format!("WHERE {key} > {from}"), vec![k.clone().into()]),
            None => (String::new(), Vec::new()),
        };
        values.splice(0..0, [before.into(), (PAGE as i64).into()]);
        let rows = db
            .reads()
            .query_all_raw(Statement::from_sql_and_values(
                db.backend(),
                format!(
                    "SELECT {key} AS k, CASE WHEN {time} < {cutoff} THEN 1 ELSE 0 END AS old \
                     FROM {table} {range} ORDER BY {key} LIMIT {limit}"
                ),
                values,
            ))
            .await?;
        let mut old: Vec<K> = Vec::with_capacity(rows.len());
        let mut reached_young = false;
        for row in &rows {
            if row.try_get::<i32>("", "old")? == 1 {
                old.push(row.try_get("", "k")?);
            } else {
                reached_young = true;
            }
        }
        if !old.is_empty() {
            deleted += delete_page(db, kind, &old).await?;
        }
        // The page that reaches young rows is the last: keys grow with time, give or take
        // the clocks of several instances, which a page absorbs.
        let Some(last) = rows.last() else {
            return Ok(deleted);
        };
        if reached_young || (rows.len() as u64) < PAGE {
            return Ok(deleted);
        }
        after = Some(last.try_get("", "k")?);
        tokio::task::yield_now().await;
    }
}

/// Deletes the rows of `page` (keys of `kind`'s table) that the kind does not keep, and their
/// dependents, in one write transaction.
async fn delete_page<K>(db: &Db, kind: &Kind, page: &[K]) -> Result<u64, DbErr>
where
    K: Into<Value> + Clone,
{
    let marks: Vec<String> = (1..=page.len()).map(|i| db.placeholder(i)).collect();
    let values: Vec<Value> = page.iter().cloned().map(Into::into).collect();
    let doomed = format!(
        "SELECT {key} FROM {table} WHERE {key} IN ({marks}) AND NOT ({keep})",
        key = kind.key.column(),
        table = kind.table,
        marks = marks.join(", "),
        keep = kind.keep,
    );
    let tx = db.begin_write().await?;
    for (dependent, column) in kind.dependents {
        tx.execute_raw(Statement::from_sql_and_values(
            db.backend(),
            format!("DELETE FROM {dependent} WHERE {column} IN ({doomed})"),
            values.clone(),
        ))
        .await?;
    }
    let result = tx
        .execute_raw(Statement::from_sql_and_values(
            db.backend(),
            format!(
                "DELETE FROM {table} WHERE {key} IN ({doomed})",
                table = kind.table,
                key = kind.key.column()
            ),
            values,
        ))
        .await?;
    tx.commit().await?;
    Ok(result.rows_affected())
}
