//! Durable, exactly-once sweeps: a job finds the rows whose time has come and flips them with a
//! conditional `UPDATE … WHERE id IN (<choice> LIMIT n [FOR UPDATE SKIP LOCKED]) AND <still in
//! the old state> RETURNING …`, writing one event per returned row in the same transaction.
//! Two instances sweeping at once (PostgreSQL: `SKIP LOCKED` in the row choice; SQLite: one
//! writer at a time) cannot both flip a row, so each event is written once whatever the job
//! lease does. Each sweep's choice reads a partial index of the rows still waiting.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr, QueryResult, Statement};
use serde_json::{Map, Value, json};

use crate::{
    db::Db,
    domain::events::{self, EventType},
};

/// Rows a sweep flips per transaction.
const SWEEP_BATCH: i64 = 1_000;

/// How a returned column goes into the event.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A time.
    Time,
    /// Text.
    Text,
}

/// One sweep: which rows, what it sets, and the event written for each.
pub struct Sweep {
    /// The table (with `id`, `program_id`, `partner_id` and `updated_at` columns).
    pub table: &'static str,
    /// The event written per flipped row.
    pub event: EventType,
    /// The `SET` assignments.
    pub set: &'static str,
    /// `SELECT … id …` of the due rows, in order; `{now}` is the sweep's time.
    pub choice: &'static str,
    /// What must still hold of a row when it is flipped.
    pub guard: &'static str,
    /// The row id's name in the event.
    pub id_field: &'static str,
    /// Returned columns and their names in the event.
    pub fields: &'static [(&'static str, &'static str, Kind)],
}

fn field(row: &QueryResult, column: &str, kind: Kind) -> Result<Value, DbErr> {
    Ok(match kind {
        Kind::Time => json!(row.try_get::<Option<DateTime<Utc>>>("", column)?),
        Kind::Text => json!(row.try_get::<Option<String>>("", column)?),
    })
}

/// Runs `which` until nothing is left due at `due` (`{now}` in its choice); `now` stamps the
/// rows. Returns how many rows it flipped.
pub async fn sweep(
    db: &Db,
    which: &Sweep,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    let mut flipped = 0;
    let returned: Vec<&str> = which.fields.iter().map(|f| f.0).collect();
    loop {
        let [due_p, limit_p, now_p] = db.params();
        // Rows another instance is flipping are skipped, not waited for: it writes their events.
        let lock = if db.is_postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE {table} SET {set}, updated_at = {now_p} WHERE id IN ({choice} \
             LIMIT {limit_p}{lock}) AND {guard} RETURNING id, program_id, partner_id, {fields}",
            table = which.table,
            set = which.set.replace("{now}", &now_p),
            choice = which.choice.replace("{now}", &due_p),
            guard = which.guard,
            fields = returned.join(", "),
        );
        let tx = db.begin_write().await?;
        let rows = tx
            .query_all_raw(Statement::from_sql_and_values(
                db.backend(),
                sql,
                [due.into(), SWEEP_BATCH.into(), now.into()],
            ))
            .await?;
        let mut batch = Vec::with_capacity(rows.len());
        for row in &rows {
            let program_id: String = row.try_get("", "program_id")?;
            let partner_id: String = row.try_get("", "partner_id")?;
            let mut data = Map::new();
            data.insert(
                which.id_field.to_string(),
                json!(row.try_get::<String>("", "id")?),
            );
            for (column, name, kind) in which.fields {
                data.insert(name.to_string(), field(row, column, *kind)?);
            }
            batch.push(events::new_event(
                which.event,
                &program_id,
                Some(&partner_id),
                Value::Object(data),
            ));
        }
        events::record_all(&*tx, batch).await?;
        tx.commit().await?;
        flipped += rows.len() as u64;
        if (rows.len() as i64) < SWEEP_BATCH {
            return Ok(flipped);
        }
    }
}
