//! Multi-row inserts, the same call on both backends.
//!
//! - SQLite: multi-row `INSERT … VALUES`, as many rows a statement as its bound-value limit
//!   allows.
//! - PostgreSQL: the rows travel as one JSONB parameter that `jsonb_populate_recordset` unpacks
//!   into the table's own row type: `INSERT INTO t (…) SELECT … FROM
//!   jsonb_populate_recordset(NULL::t, $1)`. A `VALUES` list of 500 rows × 18 columns is a
//!   statement of 9,000 parameters that PostgreSQL parses and plans each time, and a chunk of
//!   25,000 rows needed fifty of them; one parameter of any length is one small statement whose
//!   plan is cached.
//!
//! Columns are those set in the first row (rows of one call are built alike); columns left
//! `NotSet` take their defaults.

use sea_orm::{
    ActiveModelTrait, ActiveValue, ConnectionTrait, DatabaseBackend, DbErr, EntityName,
    EntityTrait, Iden, Iterable, Value,
    sea_query::{Alias, Expr, Func, OnConflict, Query},
};
use serde_json::{Map, Value as Json};

/// SQLite's bound-value limit is 32,766 since 3.32; stay under it.
const SQLITE_VALUES: usize = 30_000;
/// Rows of one PostgreSQL statement (bounds the size of its parameter).
const POSTGRES_ROWS: usize = 50_000;

/// Inserts `rows` (with `on_conflict` when given) and returns the number of rows written.
pub async fn insert_all<A>(
    conn: &impl ConnectionTrait,
    rows: Vec<A>,
    on_conflict: Option<OnConflict>,
) -> Result<u64, DbErr>
where
    A: ActiveModelTrait + Clone + Send,
{
    let Some(first) = rows.first() else {
        return Ok(0);
    };
    let columns: Vec<<A::Entity as EntityTrait>::Column> =
        <A::Entity as EntityTrait>::Column::iter()
            .filter(|c| !matches!(first.get(*c), ActiveValue::NotSet))
            .collect();
    let mut written = 0;
    match conn.get_database_backend() {
        DatabaseBackend::Postgres => {
            for chunk in rows.chunks(POSTGRES_ROWS) {
                written += insert_json(conn, chunk, &columns, on_conflict.clone()).await?;
            }
        }
        _ => {
            let per_statement = (SQLITE_VALUES / columns.len().max(1)).max(1);
            for chunk in rows.chunks(per_statement) {
                let mut insert = A::Entity::insert_many(chunk.to_vec());
                if let Some(on_conflict) = &on_conflict {
                    insert = insert.on_conflict(on_conflict.clone());
                }
                written += insert.exec_without_returning(conn).await?;
            }
        }
    }
    Ok(written)
}

/// One PostgreSQL statement for `rows`, passed as a JSON array of objects keyed by column.
async fn insert_json<A>(
    conn: &impl ConnectionTrait,
    rows: &[A],
    columns: &[<A::Entity as EntityTrait>::Column],
    on_conflict: Option<OnConflict>,
) -> Result<u64, DbErr>
where
    A: ActiveModelTrait,
{
    let mut objects = Vec::with_capacity(rows.len());
    for row in rows {
        let mut object = Map::new();
        for column in columns {
            let value = row.get(*column).into_value();
            object.insert(column.to_string(), json_of(value)?);
        }
        objects.push(Json::Object(object));
    }
    let entity = A::Entity::default();
    let table = entity.table_name();
    let unpack = Func::cust(Alias::new("jsonb_populate_recordset"))
        .arg(Expr::cust(format!("NULL::\"{table}\"")))
        .arg(Expr::val(Json::Array(objects)));
    let select = Query::select()
        .columns(columns.iter().copied())
        .from_function(unpack, Alias::new("r"))
        .to_owned();
    let mut insert = Query::insert();
    insert
        .into_table(entity)
        .columns(columns.iter().copied())
        .select_from(select)
        .map_err(|e| DbErr::Custom(format!("bulk insert into {table}: {e}")))?;
    if let Some(on_conflict) = on_conflict {
        insert.on_conflict(on_conflict);
    }
    let statement = DatabaseBackend::Postgres.build(&insert);
    Ok(conn.execute_raw(statement).await?.rows_affected())
}

/// The JSON text PostgreSQL reads back as the value sqlx would have bound: times in RFC 3339
/// with microseconds (truncated, as sqlx truncates), decimals as text (exact).
fn json_of(value: Option<Value>) -> Result<Json, DbErr> {
    let Some(value) = value else {
        return Ok(Json::Null);
    };
    Ok(match value {
        Value::Bool(v) => v.map_or(Json::Null, Json::Bool),
        Value::SmallInt(v) => v.map_or(Json::Null, Json::from),
        Value::Int(v) => v.map_or(Json::Null, Json::from),
        Value::BigInt(v) => v.map_or(Json::Null, Json::from),
        Value::Double(v) => v.map_or(Json::Null, Json::from),
        Value::String(v) => v.map_or(Json::Null, Json::String),
        Value::Json(v) => v.map_or(Json::Null, |v| *v),
        Value::ChronoDateTimeUtc(v) => v.map_or(Json::Null, |t| {
            Json::String(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        }),
        Value::Decimal(v) => v.map_or(Json::Null, |d| Json::String(d.to_string())),
        Value::Uuid(v) => v.map_or(Json::Null, |u| Json::String(u.to_string())),
        other => {
            return Err(DbErr::Custom(format!(
                "bulk insert: no JSON form for {other:?}"
            )));
        }
    })
}
