//! The SQLite read path for hot queries: read-only `rusqlite` connections on the same database
//! file, queried on the calling thread.
//!
//! Through sqlx every SQLite statement is a round trip to the connection's worker thread and
//! every row a hand-off back to the async task (a wake-up and a context switch each); on the
//! partner dashboard that cost about 125 µs per statement and 16 µs per row, more than SQLite's
//! own work. Here a statement is stepped to the end in one go on the caller's thread, with its
//! prepared form cached per connection. The queries sent here are short index walks (a page, a
//! lookup by key), so running them inline is cheaper than any hand-off; writes, transactions and
//! everything else keep using the sqlx pool. In WAL mode readers never wait for the writer, and
//! each statement reads the latest committed state, as a pooled sqlx connection would.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rusqlite::{
    Connection, OpenFlags, Row, StatementStatus,
    config::DbConfig,
    types::{Value as SqlValue, ValueRef},
};
use sea_orm::{DbErr, FromQueryResult, QueryResult, RuntimeErr, Value};

use super::steps::SqliteSteps;

/// How long a reader waits on a lock held during WAL recovery or checkpoint restarts.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of the database file the readers map into memory: pages are then read in place
/// instead of being copied into each connection's page cache (pages still in the WAL are read
/// as before).
const MMAP_BYTES: i64 = 256 * 1024 * 1024;
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 64;

/// A small pool of read-only connections, opened on first use.
pub struct NativeReader {
    path: PathBuf,
    slots: Vec<Mutex<Option<Connection>>>,
    /// A connection that only asks `PRAGMA data_version` (see [`NativeReader::data_version`]).
    watcher: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for NativeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeReader")
            .field("path", &self.path)
            .field("connections", &self.slots.len())
            .finish()
    }
}

fn db_err(err: impl std::fmt::Display) -> DbErr {
    DbErr::Query(RuntimeErr::Internal(format!("SQLite: {err}")))
}

impl NativeReader {
    /// A reader of the database file at `path` with up to `connections` connections.
    pub fn new(path: &Path, connections: usize) -> NativeReader {
        NativeReader {
            path: path.to_path_buf(),
            slots: (0..connections.max(1)).map(|_| Mutex::new(None)).collect(),
            watcher: Mutex::new(None),
        }
    }

    fn open(&self) -> Result<Connection, DbErr> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(db_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
        // Plans independent of bound values: otherwise SQLite re-prepares a cached statement
        // each time its LIMIT is bound (see .cargo/config.toml, which sets this for every
        // connection of a build from this repository).
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(db_err)?;
        conn.pragma_update(None, "mmap_size", MMAP_BYTES)
            .map_err(db_err)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    /// A free connection, or `None` when every slot is busy: the caller then uses the pool
    /// rather than blocking its (runtime worker) thread on a slot.
    fn acquire(&self) -> Result<Option<MutexGuard<'_, Option<Connection>>>, DbErr> {
        let Some(mut guard) = self.slots.iter().find_map(|slot| slot.try_lock().ok()) else {
            return Ok(None);
        };
        if guard.is_none() {
            *guard = Some(self.open()?);
        }
        Ok(Some(guard))
    }

    /// SQLite's `PRAGMA data_version` on a connection kept for it alone: two answers differ
    /// when any other connection, of this process or another, committed in between (this one
    /// never writes). `None` while another task is asking (the caller then does without).
    pub(super) fn data_version(&self) -> Result<Option<i64>, DbErr> {
        let Ok(mut guard) = self.watcher.try_lock() else {
            return Ok(None);
        };
        if guard.is_none() {
            *guard = Some(self.open()?);
        }
        let conn = guard.as_ref().expect("opened above");
        conn.pragma_query_value(None, "data_version", |row| row.get(0))
            .map(Some)
            .map_err(db_err)
    }

    /// Every row of `sql` (with `values` bound in order) decoded as `T`, or `None` when no
    /// connection is free. Columns are looked up by name once per statement, not per row.
    pub(super) fn rows<T: Decode>(
        &self,
        sql: &str,
        values: &[Value],
        steps: Option<&SqliteSteps>,
    ) -> Result<Option<Vec<T>>, DbErr> {
        self.query(sql, values, steps, T::plan, T::native)
    }

    /// Every row of `sql` as a [`Record`] (see [`NativeReader::rows`]).
    pub(super) fn records(
        &self,
        sql: &str,
        values: &[Value],
        steps: Option<&SqliteSteps>,
    ) -> Result<Option<Vec<Record>>, DbErr> {
        self.query(
            sql,
            values,
            steps,
            |columns| Ok(Arc::new(columns.0.clone())),
            |row, columns| {
                let values = (0..columns.len())
                    .map(|i| row.get::<_, SqlValue>(i))
                    .collect::<rusqlite::Result<_>>()?;
                Ok(Record(RecordRow::Native {
                    columns: columns.clone(),
                    values,
                }))
            },
        )
    }

    /// Steps `sql` to the end: `plan` reads the statement's columns once, `decode` each row.
    fn query<P, T>(
        &self,
        sql: &str,
        values: &[Value],
        steps: Option<&SqliteSteps>,
        plan: impl FnOnce(&Columns) -> rusqlite::Result<P>,
        mut decode: impl FnMut(&Row<'_>, &P) -> rusqlite::Result<T>,
    ) -> Result<Option<Vec<T>>, DbErr> {
        let params: Vec<SqlValue> = values.iter().map(to_sql).collect::<Result<_, _>>()?;
        let Some(guard) = self.acquire()? else {
            return Ok(None);
        };
        let conn = guard.as_ref().expect("opened by acquire");
        let mut stmt = conn.prepare_cached(sql).map_err(db_err)?;
        let columns = Columns(stmt.column_names().iter().map(|c| c.to_string()).collect());
        let plan = plan(&columns).map_err(db_err)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(db_err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(db_err)? {
            out.push(decode(row, &plan).map_err(db_err)?);
        }
        drop(rows);
        if let Some(steps) = steps {
            // Counted like the pool's statements, so that step counts do not depend on which
            // path answered.
            steps.add(
                stmt.reset_status(StatementStatus::VmStep),
                stmt.reset_status(StatementStatus::FullscanStep),
            );
        }
        Ok(Some(out))
    }
}

/// A row of a statement whose shape is built at run time (bulk reads of the reconciler),
/// read column by column by name through either path.
pub struct Record(RecordRow);

enum RecordRow {
    Native {
        columns: Arc<Vec<String>>,
        values: Vec<SqlValue>,
    },
    Pooled(QueryResult),
}

impl Record {
    /// A pooled row.
    pub(super) fn pooled(row: QueryResult) -> Record {
        Record(RecordRow::Pooled(row))
    }
}

/// Rows whose columns are read by name: a [`Record`], or a pooled sea-orm row.
pub trait ByName {
    /// The value of column `name`.
    fn by_name<T: FromColumn + sea_orm::TryGetable>(&self, name: &str) -> Result<T, DbErr>;
}

impl ByName for QueryResult {
    fn by_name<T: FromColumn + sea_orm::TryGetable>(&self, name: &str) -> Result<T, DbErr> {
        self.try_get::<T>("", name)
    }
}

impl ByName for Record {
    fn by_name<T: FromColumn + sea_orm::TryGetable>(&self, name: &str) -> Result<T, DbErr> {
        match &self.0 {
            RecordRow::Pooled(row) => row.by_name(name),
            RecordRow::Native { columns, values } => {
                let i = columns
                    .iter()
                    .position(|c| c == name)
                    .ok_or_else(|| db_err(format!("no column {name}")))?;
                T::from_value(ValueRef::from(&values[i]), name).map_err(db_err)
            }
        }
    }
}

/// A row type the database façade can read, through either path: the native SQLite reader
/// (`plan` finds its columns once per statement, `native` decodes a row) or the sqlx pool
/// (`pooled`). Models get it from [`NativeRow`] and sea-orm's `FromQueryResult`; the composite
/// rows of joins and grouped pages are built from those.
pub trait Decode: Sized + Send {
    /// What `native` needs to find the columns in a row.
    type Plan;
    /// Finds this row's columns among a statement's.
    fn plan(columns: &Columns) -> rusqlite::Result<Self::Plan>;
    /// Decodes a native row.
    fn native(row: &Row<'_>, plan: &Self::Plan) -> rusqlite::Result<Self>;
    /// Decodes a pooled row.
    fn pooled(row: &QueryResult) -> Result<Self, DbErr>;
}

impl<M: NativeRow + FromQueryResult + Send> Decode for M {
    type Plan = Vec<usize>;
    fn plan(columns: &Columns) -> rusqlite::Result<Vec<usize>> {
        columns.indices::<M>("")
    }
    fn native(row: &Row<'_>, plan: &Vec<usize>) -> rusqlite::Result<Self> {
        M::from_native(row, plan)
    }
    fn pooled(row: &QueryResult) -> Result<Self, DbErr> {
        M::from_query_result(row, "")
    }
}

/// A model selected with its columns prefixed `a_` (the second model of a join whose column
/// names would clash with the first's).
pub struct Aliased<M>(pub M);

/// The prefix of [`Aliased`] columns.
pub const ALIAS_PREFIX: &str = "a_";

impl<M: NativeRow + FromQueryResult + Send> Decode for Aliased<M> {
    type Plan = Vec<usize>;
    fn plan(columns: &Columns) -> rusqlite::Result<Vec<usize>> {
        columns.indices::<M>(ALIAS_PREFIX)
    }
    fn native(row: &Row<'_>, plan: &Vec<usize>) -> rusqlite::Result<Self> {
        M::from_native(row, plan).map(Aliased)
    }
    fn pooled(row: &QueryResult) -> Result<Self, DbErr> {
        M::from_query_result(row, ALIAS_PREFIX).map(Aliased)
    }
}

/// The second model of a `LEFT JOIN`, selected like [`Aliased`]: `None` when the join found
/// no row (its `a_id` is null).
pub struct MaybeAliased<M>(pub Option<M>);

impl<M: NativeRow + FromQueryResult + Send> Decode for MaybeAliased<M> {
    /// The position of `a_id`, then the model's columns.
    type Plan = (usize, Vec<usize>);
    fn plan(columns: &Columns) -> rusqlite::Result<Self::Plan> {
        Ok((
            columns.index(&format!("{ALIAS_PREFIX}id"))?,
            columns.indices::<M>(ALIAS_PREFIX)?,
        ))
    }
    fn native(row: &Row<'_>, plan: &Self::Plan) -> rusqlite::Result<Self> {
        if row.get_ref(plan.0)? == ValueRef::Null {
            return Ok(MaybeAliased(None));
        }
        M::from_native(row, &plan.1).map(|m| MaybeAliased(Some(m)))
    }
    fn pooled(row: &QueryResult) -> Result<Self, DbErr> {
        let id: Option<String> = row.try_get("", &format!("{ALIAS_PREFIX}id"))?;
        match id {
            None => Ok(MaybeAliased(None)),
            Some(_) => M::from_query_result(row, ALIAS_PREFIX).map(|m| MaybeAliased(Some(m))),
        }
    }
}

impl<A: Decode, B: Decode> Decode for (A, B) {
    type Plan = (A::Plan, B::Plan);
    fn plan(columns: &Columns) -> rusqlite::Result<Self::Plan> {
        Ok((A::plan(columns)?, B::plan(columns)?))
    }
    fn native(row: &Row<'_>, plan: &Self::Plan) -> rusqlite::Result<Self> {
        Ok((A::native(row, &plan.0)?, B::native(row, &plan.1)?))
    }
    fn pooled(row: &QueryResult) -> Result<Self, DbErr> {
        Ok((A::pooled(row)?, B::pooled(row)?))
    }
}

/// A value read from the column named by `C` (extra columns of a statement, such as the
/// parent and sort key of a grouped page).
pub struct Named<T, C>(pub T, std::marker::PhantomData<C>);

/// The name of a [`Named`] column.
pub trait ColumnName {
    /// The column's name in the statement.
    const NAME: &'static str;
}

impl<T, C> Decode for Named<T, C>
where
    T: FromColumn + sea_orm::TryGetable + Send,
    C: ColumnName + Send,
{
    type Plan = usize;
    fn plan(columns: &Columns) -> rusqlite::Result<usize> {
        columns.index(C::NAME)
    }
    fn native(row: &Row<'_>, plan: &usize) -> rusqlite::Result<Self> {
        T::column(row, *plan, C::NAME).map(|v| Named(v, std::marker::PhantomData))
    }
    fn pooled(row: &QueryResult) -> Result<Self, DbErr> {
        row.try_get::<T>("", C::NAME)
            .map(|v| Named(v, std::marker::PhantomData))
    }
}

/// The column names of a statement's result.
pub struct Columns(Vec<String>);

impl Columns {
    /// The position of column `name`.
    pub fn index(&self, name: &str) -> rusqlite::Result<usize> {
        self.0
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| rusqlite::Error::InvalidColumnName(name.to_string()))
    }

    /// The positions of a model's columns, in the order of [`NativeRow::COLUMNS`], selected
    /// with `prefix` (empty, or `a_` for the second model of a join).
    pub fn indices<M: NativeRow>(&self, prefix: &str) -> rusqlite::Result<Vec<usize>> {
        M::COLUMNS
            .iter()
            .map(|name| {
                if prefix.is_empty() {
                    self.index(name)
                } else {
                    self.index(&format!("{prefix}{name}"))
                }
            })
            .collect()
    }
}

/// A bound value as SQLite stores it (the same encoding sqlx uses for these types).
fn to_sql(value: &Value) -> Result<SqlValue, DbErr> {
    Ok(match value {
        Value::Bool(v) => v.map_or(SqlValue::Null, |b| SqlValue::Integer(b as i64)),
        Value::TinyInt(v) => v.map_or(SqlValue::Null, |n| SqlValue::Integer(n.into())),
        Value::SmallInt(v) => v.map_or(SqlValue::Null, |n| SqlValue::Integer(n.into())),
        Value::Int(v) => v.map_or(SqlValue::Null, |n| SqlValue::Integer(n.into())),
        Value::BigInt(v) => v.map_or(SqlValue::Null, SqlValue::Integer),
        Value::TinyUnsigned(v) => v.map_or(SqlValue::Null, |n| SqlValue::Integer(n.into())),
        Value::SmallUnsigned(v) => v.map_or(SqlValue::Null, |n| SqlValue::Integer(n.into())),
        Value::Unsigned(v) => v.map_or(SqlValue::Null, |n| SqlValue::Integer(n.into())),
        Value::BigUnsigned(v) => match v {
            None => SqlValue::Null,
            Some(n) => SqlValue::Integer(
                i64::try_from(*n).map_err(|_| db_err(format!("parameter {n} is out of range")))?,
            ),
        },
        Value::String(v) => v.clone().map_or(SqlValue::Null, SqlValue::Text),
        Value::Char(v) => v.map_or(SqlValue::Null, |c| SqlValue::Text(c.to_string())),
        Value::Float(v) => v.map_or(SqlValue::Null, |x| SqlValue::Real(x.into())),
        Value::Double(v) => v.map_or(SqlValue::Null, SqlValue::Real),
        Value::Bytes(v) => v.clone().map_or(SqlValue::Null, SqlValue::Blob),
        // The text sqlx binds (and stores) for a `DateTime<Utc>`: compared as text with the
        // stored values, it must be the same form.
        Value::ChronoDateTimeUtc(v) => v.as_ref().map_or(SqlValue::Null, |t| {
            SqlValue::Text(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false))
        }),
        other => return Err(db_err(format!("unsupported parameter {other:?}"))),
    })
}

/// Decodes one column of a native row.
pub trait FromColumn: Sized {
    /// The value at position `i`, named `name` (for errors).
    fn column(row: &Row<'_>, i: usize, name: &str) -> rusqlite::Result<Self> {
        Self::from_value(row.get_ref(i)?, name)
    }

    /// Decodes a column's value (read once: `Option<T>` hands it on to `T`).
    fn from_value(value: ValueRef<'_>, name: &str) -> rusqlite::Result<Self>;
}

/// A stored state's text decoded by `parse` (see `db::states`).
pub fn stored_text<T>(
    value: ValueRef<'_>,
    name: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    let text = value.as_str().map_err(|e| conversion(name, e))?;
    parse(text).ok_or_else(|| conversion(name, format!("unknown state {text:?}")))
}

fn conversion(name: &str, err: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("column {name}: {err}").into(),
    )
}

/// Two ASCII digits at `at` as a number.
fn two_digits(b: &[u8], at: usize) -> Option<u32> {
    let (tens, ones) = (b[at].wrapping_sub(b'0'), b[at + 1].wrapping_sub(b'0'));
    (tens < 10 && ones < 10).then(|| u32::from(tens) * 10 + u32::from(ones))
}

/// The form sqlx writes, `2026-07-08T15:20:17.172974016+00:00` (or with `Z`), read from the
/// stored bytes without chrono's general parser or a UTF-8 check (every byte is checked to be
/// an ASCII digit or separator): a dashboard page decodes hundreds of them. `None` for any
/// other form (other offsets, leap seconds, SQLite's own format), which the general parser
/// handles.
fn parse_utc_rfc3339(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = two_digits(b, 0)? * 100 + two_digits(b, 2)?;
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let [b'.', fraction @ ..] = rest {
        let mut digits = 0;
        for &c in fraction.iter().take(9) {
            let d = c.wrapping_sub(b'0');
            if d >= 10 {
                break;
            }
            nanos = nanos * 10 + u32::from(d);
            digits += 1;
        }
        if digits == 0 || fraction.get(digits).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        nanos *= 10u32.pow(9 - digits as u32);
        rest = &fraction[digits..];
    }
    if rest != b"+00:00" && rest != b"Z" {
        return None;
    }
    NaiveDate::from_ymd_opt(year as i32, two_digits(b, 5)?, two_digits(b, 8)?)?
        .and_hms_nano_opt(
            two_digits(b, 11)?,
            two_digits(b, 14)?,
            two_digits(b, 17)?,
            nanos,
        )
        .map(|t| t.and_utc())
}

/// Timestamps as sqlx stores them (RFC 3339), and SQLite's own `YYYY-MM-DD HH:MM:SS[.f]`.
fn parse_timestamp(name: &str, text: &str) -> rusqlite::Result<DateTime<Utc>> {
    if let Some(t) = parse_utc_rfc3339(text.as_bytes()) {
        return Ok(t);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f"))
        .map(|t| t.and_utc())
        .map_err(|e| conversion(name, e))
}

/// Types stored as rusqlite reads them.
macro_rules! from_sql_column {
    ($($t:ty),*) => {$(
        impl FromColumn for $t {
            fn from_value(value: ValueRef<'_>, name: &str) -> rusqlite::Result<Self> {
                rusqlite::types::FromSql::column_result(value).map_err(|e| conversion(name, e))
            }
        }
    )*};
}

from_sql_column!(String, i64, i32, bool);

impl FromColumn for DateTime<Utc> {
    fn from_value(value: ValueRef<'_>, name: &str) -> rusqlite::Result<Self> {
        match value {
            ValueRef::Integer(secs) => DateTime::from_timestamp(secs, 0)
                .ok_or_else(|| conversion(name, "timestamp out of range")),
            ValueRef::Text(bytes) => match parse_utc_rfc3339(bytes) {
                Some(t) => Ok(t),
                None => parse_timestamp(
                    name,
                    std::str::from_utf8(bytes).map_err(|e| conversion(name, e))?,
                ),
            },
            ValueRef::Null => Err(conversion(name, "NULL is no timestamp")),
            other => Err(conversion(
                name,
                format!("{:?} is no timestamp", other.data_type()),
            )),
        }
    }
}

impl FromColumn for serde_json::Value {
    fn from_value(value: ValueRef<'_>, name: &str) -> rusqlite::Result<Self> {
        match value {
            ValueRef::Text(bytes) | ValueRef::Blob(bytes) => {
                serde_json::from_slice(bytes).map_err(|e| conversion(name, e))
            }
            ValueRef::Integer(n) => Ok(n.into()),
            ValueRef::Real(x) => Ok(x.into()),
            ValueRef::Null => Ok(serde_json::Value::Null),
        }
    }
}

impl<T: FromColumn> FromColumn for Option<T> {
    fn from_value(value: ValueRef<'_>, name: &str) -> rusqlite::Result<Self> {
        match value {
            ValueRef::Null => Ok(None),
            value => T::from_value(value, name).map(Some),
        }
    }
}

/// A model that can be read from a native row (its columns named as its fields).
pub trait NativeRow: Sized {
    /// The model's column names, in field order.
    const COLUMNS: &'static [&'static str];
    /// Reads the model from `row`; `at` holds the positions of [`NativeRow::COLUMNS`].
    fn from_native(row: &Row<'_>, at: &[usize]) -> rusqlite::Result<Self>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::entities::attribution;

    #[test]
    fn timestamps_in_every_stored_form() {
        let expected = DateTime::parse_from_rfc3339("2026-07-08T12:58:30.5+00:00")
            .unwrap()
            .with_timezone(&Utc);
        for text in [
            "2026-07-08T12:58:30.5+00:00",
            "2026-07-08T14:58:30.500+02:00",
            "2026-07-08 12:58:30.5+00:00",
            "2026-07-08 12:58:30.5",
            "2026-07-08T12:58:30.5",
        ] {
            assert_eq!(parse_timestamp("t", text).unwrap(), expected, "{text}");
        }
        assert!(parse_timestamp("t", "yesterday").is_err());
    }

    #[test]
    fn the_stored_utc_form_reads_like_chrono_reads_it() {
        for text in [
            "2026-07-08T15:20:17.172974016+00:00",
            "2026-07-08T15:20:17.1+00:00",
            "2026-07-08T15:20:17.123456Z",
            "2026-07-08T15:20:17+00:00",
            "2026-07-08T15:20:17Z",
            "1999-12-31T23:59:59.999999999+00:00",
            "2024-02-29T00:00:00+00:00",
        ] {
            let chrono = DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc);
            assert_eq!(parse_utc_rfc3339(text.as_bytes()), Some(chrono), "{text}");
            assert_eq!(parse_timestamp("t", text).unwrap(), chrono, "{text}");
        }
        // Left to the general parser: other offsets, a leap second, SQLite's format, junk.
        for text in [
            "2026-07-08T17:20:17.5+02:00",
            "2016-12-31T23:59:60+00:00",
            "2026-07-08 15:20:17",
            "2026-07-08T15:20:17.+00:00",
            "2026-07-08T15:20:17.1234567891+00:00",
            "2026-02-30T15:20:17+00:00",
            "2026-07-08T15:2a:17+00:00",
            "2026-07-08T15:20:17+00:00 ",
        ] {
            assert_eq!(parse_utc_rfc3339(text.as_bytes()), None, "{text}");
        }
        let leap = parse_timestamp("t", "2016-12-31T23:59:60+00:00").unwrap();
        assert_eq!(
            leap,
            DateTime::parse_from_rfc3339("2016-12-31T23:59:60+00:00").unwrap()
        );
    }

    proptest::proptest! {
        /// Any UTC time in any precision sqlx or a client may store reads back as chrono reads
        /// it; a fraction of more than nine digits is left to chrono.
        #[test]
        fn the_fast_form_agrees_with_chrono(
            secs in 0i64..253_402_300_799,
            nanos in 0u32..1_000_000_000,
            precision in 0usize..12,
            zulu: bool,
        ) {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
            let fraction = format!("{nanos:09}0000");
            let text = format!(
                "{base}{}{}",
                if precision == 0 { String::new() } else { format!(".{}", &fraction[..precision]) },
                if zulu { "Z" } else { "+00:00" },
            );
            let chrono = DateTime::parse_from_rfc3339(&text).map(|t| t.with_timezone(&Utc)).ok();
            let fast = parse_utc_rfc3339(text.as_bytes());
            if precision > 9 {
                proptest::prop_assert_eq!(fast, None);
            } else {
                proptest::prop_assert_eq!(fast, chrono);
            }
            proptest::prop_assert_eq!(parse_timestamp("t", &text).ok(), chrono);
        }
    }

    /// A time bound on the native path is the text sqlx binds and stores (compared as text).
    #[tokio::test]
    async fn times_bind_as_sqlx_binds_them() {
        use sea_orm::sqlx::{self, Connection as _};
        let dir = std::env::temp_dir().join(format!("tandem-native-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x TEXT)")
            .unwrap();
        let mut pooled = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let reader = NativeReader::new(&path, 1);
        for nanos in [0, 500_000_000, 123_456_000, 172_974_016] {
            let t = DateTime::from_timestamp(1_783_000_000, nanos).unwrap();
            let by_sqlx: String = sqlx::query_scalar("SELECT ?")
                .bind(t)
                .fetch_one(&mut pooled)
                .await
                .unwrap();
            let records = reader
                .records("SELECT ? AS t, 1 AS n", &[t.into()], None)
                .unwrap()
                .unwrap();
            assert_eq!(records[0].by_name::<String>("t").unwrap(), by_sqlx);
            assert_eq!(records[0].by_name::<i64>("n").unwrap(), 1);
            assert!(records[0].by_name::<i64>("missing").is_err());
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn reads_models_and_binds_values() {
        let dir = std::env::temp_dir().join(format!("tandem-native-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE attributions (deal_id TEXT, partner_id TEXT, referral_id TEXT, \
             method TEXT, created_at TEXT, updated_at TEXT);
             INSERT INTO attributions VALUES ('d1', 'p1', NULL, 'CODE', \
             '2026-07-08T12:58:30.644829571+00:00', '2026-07-08 12:58:30');",
        )
        .unwrap();
        let reader = NativeReader::new(&path, 2);
        let rows: Vec<attribution::Model> = reader
            .rows(
                "SELECT * FROM attributions WHERE deal_id = ? AND 1 = ?",
                &[Value::from("d1"), Value::BigInt(Some(1))],
                None,
            )
            .unwrap()
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].partner_id, "p1");
        assert_eq!(rows[0].referral_id, None);
        assert_eq!(rows[0].created_at.timestamp_subsec_nanos(), 644_829_571);
        struct DealId;
        impl ColumnName for DealId {
            const NAME: &'static str = "deal_id";
        }
        // A read-only connection cannot write.
        let err = reader
            .rows::<Named<String, DealId>>("DELETE FROM attributions RETURNING deal_id", &[], None)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("readonly"), "{err}");
        // Unsupported parameter types are refused rather than guessed.
        assert!(
            reader
                .rows::<Named<String, DealId>>("SELECT ? AS deal_id", &[Value::Json(None)], None)
                .is_err()
        );
        // With every connection taken, the reader declines instead of waiting.
        let one = NativeReader::new(&path, 1);
        let held = one.acquire().unwrap().unwrap();
        assert!(
            one.rows::<attribution::Model>("SELECT * FROM attributions", &[], None)
                .unwrap()
                .is_none()
        );
        drop(held);
        // Its statements count their SQLite steps like the pool's.
        let steps = SqliteSteps::default();
        assert!(
            one.rows::<attribution::Model>("SELECT * FROM attributions", &[], Some(&steps))
                .unwrap()
                .is_some()
        );
        let counted = steps.read();
        assert!(counted.vm > 0, "{counted:?}");
        drop(conn);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
