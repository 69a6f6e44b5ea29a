//! Multi-row inserts, one call for every batch writer: multi-row `INSERT … VALUES` statements of
//! at most [`ROWS_PER_STATEMENT`] rows, and fewer when the columns would pass
//! [`VALUES_PER_STATEMENT`] bound values (SQLite's limit is 32,766, PostgreSQL's 65,535).
//!
//! Tried on PostgreSQL and dropped (BENCHMARKS.md, commission engine, 2026-12-07 evening): the
//! rows of a whole chunk as one JSONB parameter unpacked by `jsonb_populate_recordset`. The
//! full reconciliation took 145 s against 136 s with `VALUES`, with twice the peak RSS: the
//! server's work per row (index entries, foreign-key checks, WAL) is the cost, not the
//! statements.

use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DbErr, EntityTrait, Iterable, sea_query::OnConflict,
};

/// Rows per statement, at most.
pub const ROWS_PER_STATEMENT: usize = 500;
/// Bound values per statement, at most.
pub const VALUES_PER_STATEMENT: usize = 30_000;

/// Inserts `rows` (with `on_conflict` when given) and returns the number of rows written.
/// Rows of one call are built alike: the columns set in the first are those inserted.
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
    let columns = <A::Entity as EntityTrait>::Column::iter()
        .filter(|c| !matches!(first.get(*c), sea_orm::ActiveValue::NotSet))
        .count();
    let per_statement = (VALUES_PER_STATEMENT / columns.max(1)).clamp(1, ROWS_PER_STATEMENT);
    let mut written = 0;
    for chunk in rows.chunks(per_statement) {
        let mut insert = A::Entity::insert_many(chunk.to_vec());
        if let Some(on_conflict) = &on_conflict {
            insert = insert.on_conflict(on_conflict.clone());
        }
        written += insert.exec_without_returning(conn).await?;
    }
    Ok(written)
}
