//! How large each table is, for `/metrics`: rows, and bytes on disk with its indexes.
//!
//! PostgreSQL answers from its statistics (`pg_stat_user_tables.n_live_tup`, an estimate kept
//! by autovacuum and ANALYZE, and `pg_total_relation_size`), at no cost. SQLite keeps no such
//! figures: rows are counted (`COUNT(*)`, which walks the smallest index) and bytes summed from
//! the `dbstat` table (every page), so the caller measures at most every few minutes.

use sea_orm::{ConnectionTrait, DbErr, Statement};

use super::Db;

/// One table's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSize {
    /// The table's name.
    pub table: String,
    /// Its rows (an estimate on PostgreSQL).
    pub rows: i64,
    /// Bytes on disk, indexes included (`None` where the database cannot tell).
    pub bytes: Option<i64>,
}

impl Db {
    /// The size of every Tandem table (the migration bookkeeping excluded), by name.
    pub async fn table_sizes(&self) -> Result<Vec<TableSize>, DbErr> {
        let reads = self.reads();
        let query = |sql: &str| {
            reads.query_all_raw(Statement::from_string(self.backend(), sql.to_string()))
        };
        if self.is_postgres() {
            let rows = query(
                "SELECT relname AS name, CAST(n_live_tup AS BIGINT) AS rows, \
                 CAST(pg_total_relation_size(relid) AS BIGINT) AS bytes \
                 FROM pg_stat_user_tables WHERE schemaname = current_schema() \
                 AND relname NOT LIKE 'seaql%' ORDER BY relname",
            )
            .await?;
            return rows
                .iter()
                .map(|row| {
                    Ok(TableSize {
                        table: row.try_get("", "name")?,
                        rows: row.try_get("", "rows")?,
                        bytes: Some(row.try_get("", "bytes")?),
                    })
                })
                .collect();
        }
        let names = query(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite%' AND name NOT LIKE 'seaql%' ORDER BY name",
        )
        .await?;
        // Without the dbstat table (a SQLite built without it), bytes stay unknown.
        let mut bytes = std::collections::HashMap::new();
        if let Ok(rows) = query(
            "SELECT m.tbl_name AS name, CAST(SUM(s.pgsize) AS BIGINT) AS bytes \
             FROM dbstat s JOIN sqlite_master m ON m.name = s.name GROUP BY m.tbl_name",
        )
        .await
        {
            for row in rows {
                bytes.insert(
                    row.try_get::<String>("", "name")?,
                    row.try_get::<i64>("", "bytes")?,
                );
            }
        }
        let mut sizes = Vec::with_capacity(names.len());
        for row in names {
            let table: String = row.try_get("", "name")?;
            let count = query(&format!("SELECT COUNT(*) AS n FROM \"{table}\""))
                .await?
                .first()
                .map(|r| r.try_get::<i64>("", "n"))
                .transpose()?
                .unwrap_or(0);
            sizes.push(TableSize {
                bytes: bytes.get(&table).copied(),
                table,
                rows: count,
            });
        }
        Ok(sizes)
    }
}
