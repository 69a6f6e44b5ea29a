//! Answers kept while the database has not changed ([`Memo`]), for aggregates that are costly
//! to compute and asked for again and again (the KPIs of a dashboard).

use std::{collections::HashMap, future::Future, hash::Hash, sync::Mutex, time::Instant};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr, Statement};

use super::Db;

/// How many answers a memo keeps; the one used least recently goes first.
const CAPACITY: usize = 256;

impl Db {
    /// A token that changes whenever anything commits to the database, from this process or
    /// another; `None` where it cannot be told (an in-memory SQLite database, or a moment when
    /// the SQLite watcher is busy). Equal tokens at two moments mean the same data in between.
    ///
    /// - SQLite: `PRAGMA data_version` on a connection kept for it, which never writes.
    /// - PostgreSQL: the current snapshot (`xmin:xmax:xip`). Every transaction that writes gets
    ///   an id, and its end raises `xmax` or leaves the in-progress list; neither goes back.
    pub async fn data_version(&self) -> Result<Option<String>, DbErr> {
        if self.is_postgres() {
            let row = self
                .reads()
                .query_one_raw(Statement::from_string(
                    self.backend(),
                    "SELECT pg_current_snapshot()::text AS version",
                ))
                .await?;
            return row
                .map(|row| row.try_get::<String>("", "version"))
                .transpose();
        }
        match &self.native {
            Some(reader) => Ok(reader.data_version()?.map(|v| v.to_string())),
            None => Ok(None),
        }
    }
}

/// Answers by key, each kept with the [`Db::data_version`] it was computed at and, when it
/// depends on the clock, the instant it stops being true. An answer is given again only while
/// the database is unchanged and that instant has not come; so a kept answer is always the one
/// a computation would give now.
pub struct Memo<K, V> {
    kept: Mutex<HashMap<K, Kept<V>>>,
}

struct Kept<V> {
    version: String,
    until: Option<DateTime<Utc>>,
    value: V,
    used: Instant,
}

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo {
            kept: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Memo<K, V> {
    /// The answer for `key`: the kept one if still true, else `compute`'s, which returns the
    /// value and the instant it stops being true (`None`: only a change of data ends it). The
    /// new answer is kept only if the data did not change while it was computed.
    pub async fn get_or_compute<E, Fut>(
        &self,
        db: &Db,
        key: K,
        compute: impl FnOnce() -> Fut,
    ) -> Result<V, E>
    where
        E: From<DbErr>,
        Fut: Future<Output = Result<(V, Option<DateTime<Utc>>), E>>,
    {
        Ok(self.answer(db, key, compute).await?.0)
    }

    /// [`Memo::get_or_compute`], and whether the answer was a kept one (`true`) or computed.
    pub async fn answer<E, Fut>(
        &self,
        db: &Db,
        key: K,
        compute: impl FnOnce() -> Fut,
    ) -> Result<(V, bool), E>
    where
        E: From<DbErr>,
        Fut: Future<Output = Result<(V, Option<DateTime<Utc>>), E>>,
    {
        let before = db.data_version().await?;
        if let Some(version) = &before
            && let Some(value) = self.lookup(&key, version)
        {
            return Ok((value, true));
        }
        let (value, until) = compute().await?;
        if let Some(version) = before
            && db.data_version().await?.as_ref() == Some(&version)
        {
            self.keep(key, version, until, value.clone());
        }
        Ok((value, false))
    }

    fn lookup(&self, key: &K, version: &str) -> Option<V> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let entry = kept.get_mut(key)?;
        if entry.version != version || entry.until.is_some_and(|until| Utc::now() >= until) {
            kept.remove(key);
            return None;
        }
        entry.used = Instant::now();
        Some(entry.value.clone())
    }

    fn keep(&self, key: K, version: String, until: Option<DateTime<Utc>>, value: V) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= CAPACITY && !kept.contains_key(&key) {
            // Answers of an older version can never be given again: drop them first.
            kept.retain(|_, entry| entry.version == version);
            if kept.len() >= CAPACITY
                && let Some(oldest) = kept
                    .iter()
                    .min_by_key(|(_, entry)| entry.used)
                    .map(|(key, _)| key.clone())
            {
                kept.remove(&oldest);
            }
        }
        kept.insert(
            key,
            Kept {
                version,
                until,
                value,
                used: Instant::now(),
            },
        );
    }

    /// How many answers are kept (tests).
    pub fn len(&self) -> usize {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
