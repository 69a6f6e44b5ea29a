//! Database access: connecting (SQLite or PostgreSQL), migrating, counting statements, and
//! serialising writers on SQLite.

mod bulk;
pub mod entities;
mod memo;
mod native;
pub mod pages;
mod sizes;
pub mod states;
pub mod steps;

pub use bulk::insert_all;
pub use memo::Memo;
pub use native::{
    ALIAS_PREFIX, Aliased, ByName, ColumnName, Decode, FromColumn, MaybeAliased, Named, NativeRow,
    Record,
};
pub use sizes::TableSize;

use std::{
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    QuerySelect, QueryTrait, Select, SqlxPostgresConnector, SqlxSqliteConnector, Statement,
    TransactionTrait, Value,
    sqlx::{
        postgres::PgPoolOptions,
        sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    },
};
use tandem_migrations::MigratorTrait;
use tokio::sync::{Mutex, OwnedMutexGuard};

use native::NativeReader;
use steps::{SqliteSteps, StepCount};

/// A shared handle on the database.
#[derive(Clone)]
pub struct Db {
    /// The sea-orm connection pool: private, so that every write goes through
    /// [`Db::begin_write`] (or [`Db::execute_unprepared`]) and, on SQLite, the writer lock.
    conn: DatabaseConnection,
    /// The same pool for reads only (see [`Reads`]).
    reads: Reads,
    /// SQLite allows one writer at a time: writers queue here instead of failing with
    /// `SQLITE_BUSY`. `None` on PostgreSQL.
    write_lock: Option<Arc<Mutex<()>>>,
    statements: Arc<AtomicU64>,
    /// Signalled after every write transaction commits: wakes this process's event feed.
    committed: Arc<tokio::sync::Notify>,
    /// The native read path for hot queries (SQLite files only).
    native: Option<Arc<NativeReader>>,
    /// Work done by the pool's SQLite statements (`None` on PostgreSQL).
    steps: Option<Arc<SqliteSteps>>,
}

/// A write transaction; on SQLite it also holds the writer lock until dropped.
pub struct WriteTx {
    /// The open transaction.
    pub tx: DatabaseTransaction,
    _guard: Option<OwnedMutexGuard<()>>,
    committed: Arc<tokio::sync::Notify>,
}

impl std::ops::Deref for WriteTx {
    type Target = DatabaseTransaction;
    fn deref(&self) -> &DatabaseTransaction {
        &self.tx
    }
}

impl WriteTx {
    /// Commits the transaction, then releases the writer lock.
    pub async fn commit(self) -> Result<(), DbErr> {
        self.tx.commit().await?;
        self.committed.notify_one();
        Ok(())
    }
}

impl Db {
    /// Connects to `url` (`sqlite:…` or `postgres://…`). SQLite files are created when missing
    /// and put in WAL mode.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, DbErr> {
        let statements = Arc::new(AtomicU64::new(0));
        let mut native = None;
        let mut steps = None;
        let (mut conn, write_lock) = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| DbErr::Custom(format!("invalid SQLite URL: {e}")))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
                // A page cache of up to 64 MiB per connection (SQLite's default is 2 MiB): the
                // writer's index inserts land all over tables of millions of rows.
                .pragma("cache_size", "-65536");
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            if !in_memory {
                native = Some(Arc::new(NativeReader::new(
                    options.get_filename(),
                    max_connections as usize,
                )));
            }
            let counters = Arc::new(SqliteSteps::default());
            steps = Some(counters.clone());
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .min_connections(1)
                .after_connect(move |conn, _| {
                    let counters = counters.clone();
                    Box::pin(async move { SqliteSteps::install(&counters, conn).await })
                })
                .connect_with(options)
                .await
                .map_err(|e| DbErr::Conn(sea_orm::RuntimeErr::Internal(e.to_string())))?;
            (
                SqlxSqliteConnector::from_sqlx_sqlite_pool(pool),
                Some(Arc::new(Mutex::new(()))),
            )
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(|e| DbErr::Conn(sea_orm::RuntimeErr::Internal(e.to_string())))?;
            (SqlxPostgresConnector::from_sqlx_postgres_pool(pool), None)
        };
        let counter = statements.clone();
        conn.set_metric_callback(move |_info| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        Ok(Db {
            reads: Reads(conn.clone()),
            conn,
            write_lock,
            statements,
            committed: Arc::new(tokio::sync::Notify::new()),
            native,
            steps,
        })
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        tandem_migrations::Migrator::up(&self.conn, None).await
    }

    /// The backend in use.
    pub fn backend(&self) -> DatabaseBackend {
        self.conn.get_database_backend()
    }

    /// Whether this is PostgreSQL (for statements that differ, such as advisory locks).
    pub fn is_postgres(&self) -> bool {
        self.backend() == DatabaseBackend::Postgres
    }

    /// Total SQL statements executed since start (exported as a metric; tests use it to check
    /// that a query's statement count does not grow with page size).
    pub fn statement_count(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// SQLite work done by this database's statements so far (virtual-machine and full-scan
    /// steps, through the pool and the native reader alike). `None` on PostgreSQL.
    pub fn sqlite_steps(&self) -> Option<StepCount> {
        self.steps.as_ref().map(|s| s.read())
    }

    /// The same pool (and SQLite writer lock) with its own statement counter: background
    /// workers use it so that request statement counts stay exact.
    pub fn with_own_statement_counter(&self) -> Db {
        let statements = Arc::new(AtomicU64::new(0));
        let mut conn = self.conn.clone();
        let counter = statements.clone();
        conn.set_metric_callback(move |_info| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        Db {
            reads: Reads(conn.clone()),
            conn,
            write_lock: self.write_lock.clone(),
            statements,
            committed: self.committed.clone(),
            native: self.native.clone(),
            steps: self.steps.clone(),
        }
    }

    /// The pool for reads: sea-orm selects run on it (`.one(db.reads())`); a write through it
    /// is refused.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    /// Every row of `sql` (values bound in order) as `T`: on an SQLite file through the native
    /// reader on the calling thread when one of its connections is free, otherwise (or on
    /// PostgreSQL) through the pool. Statements count alike on both paths.
    pub async fn rows<T: Decode>(&self, sql: String, values: Vec<Value>) -> Result<Vec<T>, DbErr> {
        if let Some(answered) = self.native.as_ref().and_then(|reader| {
            reader
                .rows(&sql, &values, self.steps.as_deref())
                .transpose()
        }) {
            // The pool's statements count through sea-orm's metric callback; these here.
            self.statements.fetch_add(1, Ordering::Relaxed);
            return answered;
        }
        self.conn
            .query_all_raw(Statement::from_sql_and_values(self.backend(), sql, values))
            .await?
            .iter()
            .map(T::pooled)
            .collect()
    }

    /// Every row of a statement built at run time, read by column name ([`ByName::by_name`]): the
    /// bulk reads of background jobs (thousands of rows a statement). On an SQLite file the
    /// native reader steps it on a blocking thread, never on a runtime worker (sqlx hands each
    /// row over from its worker thread, about 16 µs a row); when every native connection is
    /// busy, or on PostgreSQL, the pool answers.
    pub async fn records(&self, sql: String, values: Vec<Value>) -> Result<Vec<Record>, DbErr> {
        let Some(reader) = self.native.clone() else {
            return self.pooled_records(sql, values).await;
        };
        let steps = self.steps.clone();
        let (sql, values, answered) = tokio::task::spawn_blocking(move || {
            let answered = reader.records(&sql, &values, steps.as_deref());
            (sql, values, answered)
        })
        .await
        .map_err(|e| DbErr::Custom(format!("native read: {e}")))?;
        match answered.transpose() {
            Some(answered) => {
                self.statements.fetch_add(1, Ordering::Relaxed);
                answered
            }
            None => self.pooled_records(sql, values).await,
        }
    }

    async fn pooled_records(&self, sql: String, values: Vec<Value>) -> Result<Vec<Record>, DbErr> {
        Ok(self
            .conn
            .query_all_raw(Statement::from_sql_and_values(self.backend(), sql, values))
            .await?
            .into_iter()
            .map(Record::pooled)
            .collect())
    }

    /// Every row of a select (see [`Db::rows`]).
    pub async fn select_all<E>(&self, select: Select<E>) -> Result<Vec<E::Model>, DbErr>
    where
        E: EntityTrait,
        E::Model: Decode,
    {
        let stmt = select.build(self.backend());
        self.rows(stmt.sql, stmt.values.map(|v| v.0).unwrap_or_default())
            .await
    }

    /// The first row of a select (see [`Db::rows`]).
    pub async fn select_one<E>(&self, select: Select<E>) -> Result<Option<E::Model>, DbErr>
    where
        E: EntityTrait,
        E::Model: Decode,
    {
        Ok(self.select_all(select.limit(1)).await?.into_iter().next())
    }

    /// The SQLite writer lock (`None` on PostgreSQL), waited for.
    async fn writer(&self) -> Option<OwnedMutexGuard<()>> {
        match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        }
    }

    /// Begins a write transaction.
    pub async fn begin_write(&self) -> Result<WriteTx, DbErr> {
        let guard = self.writer().await;
        // On SQLite the write lock is taken at BEGIN (IMMEDIATE), where the busy timeout
        // applies: a deferred transaction that read first and then wrote after another
        // process (`tandem keys create` beside a serving hub) committed would fail at once
        // with SQLITE_BUSY_SNAPSHOT.
        let tx = match guard {
            Some(_) => {
                self.conn
                    .begin_with_options(sea_orm::TransactionOptions {
                        sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                        ..Default::default()
                    })
                    .await?
            }
            None => self.conn.begin().await?,
        };
        Ok(WriteTx {
            tx,
            _guard: guard,
            committed: self.committed.clone(),
        })
    }

    /// Runs one writing statement in its own write transaction; returns the rows affected.
    pub async fn execute_write(&self, sql: String, values: Vec<Value>) -> Result<u64, DbErr> {
        let tx = self.begin_write().await?;
        let result = tx
            .execute_raw(Statement::from_sql_and_values(self.backend(), sql, values))
            .await?;
        tx.commit().await?;
        Ok(result.rows_affected())
    }

    /// Runs SQL outside a transaction (DDL such as `CREATE DATABASE`, `ANALYZE`, `VACUUM`),
    /// holding the SQLite writer lock while it runs.
    pub async fn execute_unprepared(&self, sql: &str) -> Result<u64, DbErr> {
        let _guard = self.writer().await;
        Ok(self.conn.execute_unprepared(sql).await?.rows_affected())
    }

    /// PostgreSQL: `LISTEN channel` until `stop` changes, calling `on_message` with each
    /// notification's payload, and `on_connect` each time the listener (re)connects (what was
    /// announced meanwhile was missed). Reconnects a second after an error. Returns at once on
    /// SQLite (one process: changes are seen in process).
    pub async fn listen<C, FC, M, FM>(
        &self,
        channel: &'static str,
        mut stop: tokio::sync::watch::Receiver<bool>,
        on_connect: C,
        on_message: M,
    ) where
        C: Fn() -> FC,
        FC: std::future::Future<Output = ()>,
        M: Fn(String) -> FM,
        FM: std::future::Future<Output = ()>,
    {
        if !self.is_postgres() {
            return;
        }
        let pool = self.conn.get_postgres_connection_pool().clone();
        loop {
            let listener = async {
                let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(&pool).await?;
                listener.listen(channel).await?;
                on_connect().await;
                loop {
                    let notification = listener.recv().await?;
                    on_message(notification.payload().to_string()).await;
                }
                #[allow(unreachable_code)]
                Ok::<(), sea_orm::sqlx::Error>(())
            };
            tokio::select! {
                result = listener => {
                    if let Err(err) = result {
                        tracing::warn!(error = %err, "LISTEN {channel} failed; retrying");
                    }
                }
                _ = stop.changed() => return,
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Reverts the last `steps` migrations (tests of migrations, operators' tooling).
    pub async fn migrate_down(&self, steps: u32) -> Result<(), DbErr> {
        let _guard = self.writer().await;
        tandem_migrations::Migrator::down(&self.conn, Some(steps)).await
    }

    /// Completes after the next write transaction of this process commits (or at once if one
    /// committed since the last call): the event feed's wake-up.
    pub async fn committed(&self) {
        self.committed.notified().await
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), DbErr> {
        self.conn
            .execute_raw(Statement::from_string(self.backend(), "SELECT 1"))
            .await
            .map(|_| ())
    }

    /// Placeholder for the n-th (1-based) bound value in raw SQL: `$n` on PostgreSQL, a plain
    /// `?` on SQLite, so values must be bound in the order their placeholders appear, once
    /// each. (SQLite resolves `?NNN` names with a linear scan per parameter, which makes a bulk
    /// statement with thousands of them quadratic.) See [`Db::numbered`] for reuse.
    pub fn placeholder(&self, n: usize) -> String {
        match self.backend() {
            DatabaseBackend::Postgres => format!("${n}"),
            _ => "?".to_string(),
        }
    }

    /// The first `N` numbered placeholders, for statements written with inline names:
    /// `let [id, status] = db.params(); format!("… WHERE id = {id} AND status = {status}")`,
    /// values bound in that order.
    pub fn params<const N: usize>(&self) -> [String; N] {
        std::array::from_fn(|i| self.numbered(i + 1))
    }

    /// A numbered placeholder (`$n`, `?n`): the same value may appear several times and out of
    /// order. For small statements only (see [`Db::placeholder`]).
    pub fn numbered(&self, n: usize) -> String {
        match self.backend() {
            DatabaseBackend::Postgres => format!("${n}"),
            _ => format!("?{n}"),
        }
    }

    /// `column IN (…)` over `ids`, its placeholders numbered from `first`, with the values to
    /// bind.
    pub fn in_list(&self, column: &str, ids: &[String], first: usize) -> (String, Vec<Value>) {
        let marks: Vec<String> = (0..ids.len())
            .map(|i| self.placeholder(first + i))
            .collect();
        (
            format!("{column} IN ({})", marks.join(", ")),
            ids.iter().map(|id| id.clone().into()).collect(),
        )
    }

    /// Closes the pool.
    pub async fn close(self) -> Result<(), DbErr> {
        self.conn.close().await
    }
}

/// The pool, for reads only: implements sea-orm's `ConnectionTrait` so that selects run on it,
/// and refuses every statement sea-orm sends as a write (`execute`), so that writes can only
/// be made in a [`WriteTx`] (which holds the SQLite writer lock). sea-orm has no `begin` on it
/// either: a transaction outside the writer does not compile.
#[derive(Clone)]
pub struct Reads(DatabaseConnection);

/// Whether a statement sea-orm sends as a query is a read (an insert or update with
/// `RETURNING` is sent as a query too).
fn is_read(sql: &str) -> bool {
    let sql = sql.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
    ["SELECT", "WITH", "VALUES", "EXPLAIN"].iter().any(|k| {
        sql.get(..k.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(k))
    })
}

fn write_refused() -> DbErr {
    DbErr::Custom("a write outside the writer: use Db::begin_write".into())
}

#[async_trait::async_trait]
impl ConnectionTrait for Reads {
    fn get_database_backend(&self) -> DatabaseBackend {
        self.0.get_database_backend()
    }

    async fn execute_raw(&self, _stmt: Statement) -> Result<sea_orm::ExecResult, DbErr> {
        Err(write_refused())
    }

    async fn execute_unprepared(&self, _sql: &str) -> Result<sea_orm::ExecResult, DbErr> {
        Err(write_refused())
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<sea_orm::QueryResult>, DbErr> {
        if !is_read(&stmt.sql) {
            return Err(write_refused());
        }
        self.0.query_one_raw(stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
        if !is_read(&stmt.sql) {
            return Err(write_refused());
        }
        self.0.query_all_raw(stmt).await
    }
}

/// Whether `e` is a unique-constraint violation (SQLite or PostgreSQL), as sea-orm classifies it.
pub fn is_unique_violation(e: &sea_orm::DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}
