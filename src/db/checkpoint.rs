//! SQLite WAL checkpoints off the write path.
//!
//! By default SQLite checkpoints inside the commit that takes the WAL past 1,000 pages: the
//! writer that committed copies the WAL back into the database file (and syncs it) while holding
//! Tandem's writer lock, so every writer (ingest, reconcile, mutations) pays for it. Here the
//! pool's connections run with `wal_autocheckpoint = 0` and a thread of its own, on a connection
//! of its own with a small page cache, checkpoints (`PASSIVE`: it never waits for, nor blocks,
//! readers or the writer) every [`INTERVAL`]. The copy then runs beside the next writes, on the
//! other core. A WAL past [`WAL_CAP_FRAMES`] is restarted (waiting for the writer), so a steady
//! stream of commits cannot grow it without bound.
//!
//! A WAL left behind by a process that ended without closing (killed, or exited while other
//! threads held connections) is checkpointed and truncated when the next [`Checkpointer`]
//! starts, so a new process never reads through an old, long WAL; and the last handle's drop
//! checkpoints and truncates what is left (`TRUNCATE`, bounded by [`CLOSING_WAIT`]).

use std::{
    path::Path,
    sync::mpsc::{self, RecvTimeoutError, Sender},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rusqlite::{Connection, OpenFlags};
use sea_orm::{DbErr, RuntimeErr};

/// How often the WAL is copied back into the database file.
pub const INTERVAL: Duration = Duration::from_millis(200);
/// How long a truncating checkpoint waits for a writer of another process to finish.
const CLOSING_WAIT: Duration = Duration::from_secs(2);
/// The checkpointer's page cache, in KiB (a checkpoint copies frames without caching them).
const CACHE_KIB: i64 = 1024;
/// Frames in the WAL beyond which the checkpointer restarts it (64 MiB of 4 KiB pages). A
/// passive checkpoint copies frames but never restarts the WAL: the writer that commits right
/// after can only restart it when every frame was copied, and under a steady stream of
/// commits one always lands first, so the WAL would grow for as long as the stream lasts (to
/// 2.2 GB in a full reconcile of 1,000,000 deals). Past this size the checkpointer waits for
/// the writer, copies the rest and has the next writer start the WAL over (`RESTART`), as
/// SQLite's own automatic checkpoint would have done at every 1,000 frames.
pub const WAL_CAP_FRAMES: i64 = 16_384;
/// The WAL file's size once it is restarted (SQLite's `journal_size_limit`, set on the pool's
/// connections): what a burst grew it to is given back.
pub const WAL_FILE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

fn db_err(err: impl std::fmt::Display) -> DbErr {
    DbErr::Conn(RuntimeErr::Internal(format!("SQLite checkpointer: {err}")))
}

/// What one checkpoint did: `(busy, wal_frames, checkpointed_frames)` as SQLite reports them.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })
}

/// The background checkpointer of one SQLite database file. Dropping it stops the thread after
/// a last, truncating checkpoint.
pub struct Checkpointer {
    stop: Option<Sender<Ask>>,
    thread: Option<JoinHandle<()>>,
}

/// What the thread is asked to do besides its periodic checkpoint.
enum Ask {
    /// Checkpoint everything and truncate the WAL now; answer when done.
    Truncate(Sender<Result<(), DbErr>>),
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer").finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// Opens its connection on `path`, truncates a WAL left by an earlier process, and starts
    /// the thread.
    pub fn start(path: &Path) -> Result<Checkpointer, DbErr> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(db_err)?;
        conn.busy_timeout(CLOSING_WAIT).map_err(db_err)?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(db_err)?;
        // Its own commits are none, but a connection's default would checkpoint on close too.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(db_err)?;
        if let Err(err) = checkpoint(&conn, "TRUNCATE") {
            // Another process writing: its own checkpoints (and this one's) catch up later.
            tracing::debug!(%err, "opening WAL checkpoint skipped");
        }
        let (stop, asks) = mpsc::channel::<Ask>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                let mut next = Instant::now() + INTERVAL;
                loop {
                    match asks.recv_timeout(next.saturating_duration_since(Instant::now())) {
                        Ok(Ask::Truncate(answer)) => {
                            let done = checkpoint(&conn, "TRUNCATE").map(|_| ()).map_err(db_err);
                            let _ = answer.send(done);
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            // SQLITE_BUSY (another process checkpointing) is retried next time.
                            match checkpoint(&conn, "PASSIVE") {
                                Ok((_, frames, _)) if frames > WAL_CAP_FRAMES => {
                                    if let Err(err) = checkpoint(&conn, "RESTART") {
                                        tracing::debug!(%err, "WAL restart skipped");
                                    }
                                }
                                Ok(_) => {}
                                Err(err) => tracing::debug!(%err, "WAL checkpoint skipped"),
                            }
                            next = Instant::now() + INTERVAL;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                if let Err(err) = checkpoint(&conn, "TRUNCATE") {
                    tracing::debug!(%err, "closing WAL checkpoint skipped");
                }
            })
            .map_err(db_err)?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Copies the whole WAL into the database file and truncates it, waiting for the answer on
    /// a blocking thread.
    pub async fn truncate(&self) -> Result<(), DbErr> {
        let (answer, answered) = mpsc::channel();
        let Some(stop) = &self.stop else {
            return Ok(());
        };
        stop.send(Ask::Truncate(answer))
            .map_err(|_| db_err("stopped"))?;
        tokio::task::spawn_blocking(move || answered.recv().map_err(|_| db_err("stopped"))?)
            .await
            .map_err(db_err)?
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use sea_orm::{ConnectionTrait, Statement};

    use super::*;
    use crate::db::Db;

    /// A fresh database file path, and its WAL's.
    fn paths() -> (PathBuf, PathBuf) {
        let db = std::env::temp_dir().join(format!("tandem-wal-{}.db", uuid::Uuid::new_v4()));
        let wal = PathBuf::from(format!("{}-wal", db.display()));
        (db, wal)
    }

    fn remove(db: &Path, wal: &Path) {
        for path in [
            db.to_path_buf(),
            wal.to_path_buf(),
            PathBuf::from(format!("{}-shm", db.display())),
        ] {
            let _ = std::fs::remove_file(path);
        }
    }

    fn wal_len(wal: &Path) -> u64 {
        std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
    }

    /// Rows of `t` in the database file itself, ignoring the WAL (`immutable=1`), or `None`
    /// while the table has not reached the file.
    fn rows_in_file(db: &Path) -> Option<i64> {
        let conn = Connection::open_with_flags(
            format!("file:{}?immutable=1", db.display()),
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .ok()?;
        conn.query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .ok()
    }

    #[tokio::test]
    async fn commits_reach_the_file_without_the_writer_checkpointing() {
        let (path, wal) = paths();
        let db = Db::connect(&format!("sqlite://{}", path.display()), 2)
            .await
            .unwrap();
        // Asked on one of the pool's connections (the writer's).
        let tx = db.begin_write().await.unwrap();
        let autocheckpoint = tx
            .query_one_raw(Statement::from_string(
                db.backend(),
                "PRAGMA wal_autocheckpoint",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(autocheckpoint.try_get_by_index::<i64>(0).unwrap(), 0);
        tx.commit().await.unwrap();
        db.execute_unprepared("CREATE TABLE t (x INTEGER)")
            .await
            .unwrap();
        db.execute_unprepared("INSERT INTO t VALUES (1), (2), (3)")
            .await
            .unwrap();
        // A few pages: far below the 1,000 that would make a default commit checkpoint, so only
        // the checkpointer puts them in the file.
        let deadline = Instant::now() + Duration::from_secs(10);
        while rows_in_file(&path) != Some(3) {
            assert!(Instant::now() < deadline, "the WAL was never checkpointed");
            tokio::time::sleep(INTERVAL / 4).await;
        }
        drop(db);
        remove(&path, &wal);
    }

    #[tokio::test]
    async fn the_last_handle_truncates_the_wal_and_a_new_one_truncates_what_was_left() {
        let (path, wal) = paths();
        let url = format!("sqlite://{}", path.display());
        // Another connection stays open throughout, as another process's would: closing the
        // pool's connections then is not closing the database, which would checkpoint anyway.
        let db = Db::connect(&url, 2).await.unwrap();
        db.execute_unprepared("CREATE TABLE t (x INTEGER)")
            .await
            .unwrap();
        let other = Connection::open(&path).unwrap();
        other.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        db.execute_unprepared("INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        let copy = db.clone();
        drop(db);
        assert!(wal_len(&wal) > 0, "a handle is still open");
        drop(copy);
        assert_eq!(wal_len(&wal), 0, "the last handle truncates the WAL");

        // A WAL left behind (here by a connection that does not checkpoint) is emptied when
        // the next process connects.
        for x in 2..50 {
            other.execute("INSERT INTO t VALUES (?1)", [x]).unwrap();
        }
        assert!(wal_len(&wal) > 0);
        let db = Db::connect(&url, 2).await.unwrap();
        assert_eq!(wal_len(&wal), 0, "connecting truncates the WAL left behind");
        assert_eq!(rows_in_file(&path), Some(49));
        drop(db);
        drop(other);
        remove(&path, &wal);
    }

    #[tokio::test]
    async fn a_steady_stream_of_commits_does_not_grow_the_wal_without_bound() {
        let (path, wal) = paths();
        let db = Db::connect(&format!("sqlite://{}", path.display()), 2)
            .await
            .unwrap();
        db.execute_unprepared("CREATE TABLE t (x INTEGER)")
            .await
            .unwrap();
        db.execute_unprepared("CREATE TABLE blobs (b BLOB)")
            .await
            .unwrap();
        // 320 MiB in commits of 1 MiB, one after the other, each also replacing the last:
        // five times the cap.
        let mut largest = 0;
        for _ in 0..320 {
            db.execute_unprepared(
                "DELETE FROM blobs; INSERT INTO blobs SELECT randomblob(1048576)",
            )
            .await
            .unwrap();
            largest = largest.max(wal_len(&wal));
        }
        let cap = (WAL_CAP_FRAMES * 4096) as u64;
        assert!(
            largest < 3 * cap,
            "the WAL grew to {largest} bytes (cap {cap})"
        );
        drop(db);
        remove(&path, &wal);
    }
}
