//! How much work SQLite does: every pooled SQLite connection reports, as each statement
//! finishes (and the native reader after each of its statements), how many virtual-machine steps it took and how many of them stepped through a full
//! table scan (`sqlite3_stmt_status` with `SQLITE_STMTSTATUS_VM_STEP` / `FULLSCAN_STEP`, read
//! from a `SQLITE_TRACE_PROFILE` hook). Unlike wall-clock time these counts are exact and
//! reproducible: a statement that scans a growing table instead of seeking shows up as a step
//! count that grows with the data (the apply-cost test compares them at two table sizes), and
//! `/metrics` exports them.
//!
//! The crate denies `unsafe` everywhere else: sqlx offers no safe access to these counters, so
//! this module alone calls SQLite's C API (two functions, each call with its SAFETY argument).
#![allow(unsafe_code)]

use std::{
    ffi::{c_int, c_uint, c_void},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use rusqlite::ffi;
use sea_orm::sqlx::SqliteConnection;

/// Counters shared by every connection of one pool.
#[derive(Debug, Default)]
pub struct SqliteSteps {
    vm: AtomicU64,
    full_scan: AtomicU64,
}

/// A reading of [`SqliteSteps`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepCount {
    /// Virtual-machine steps of finished statements.
    pub vm: u64,
    /// Steps forward through a table in a full table scan.
    pub full_scan: u64,
}

impl std::ops::Sub for StepCount {
    type Output = StepCount;
    fn sub(self, earlier: StepCount) -> StepCount {
        StepCount {
            vm: self.vm.saturating_sub(earlier.vm),
            full_scan: self.full_scan.saturating_sub(earlier.full_scan),
        }
    }
}

impl SqliteSteps {
    /// The counts so far.
    pub fn read(&self) -> StepCount {
        StepCount {
            vm: self.vm.load(Ordering::Relaxed),
            full_scan: self.full_scan.load(Ordering::Relaxed),
        }
    }

    /// Adds the steps of a statement run outside the pool (the native reader).
    pub fn add(&self, vm: i32, full_scan: i32) {
        self.vm.fetch_add(vm.max(0) as u64, Ordering::Relaxed);
        self.full_scan
            .fetch_add(full_scan.max(0) as u64, Ordering::Relaxed);
    }

    /// Makes a pooled connection report into `steps` for as long as it lives (called once per
    /// new connection).
    pub async fn install(
        steps: &Arc<SqliteSteps>,
        conn: &mut SqliteConnection,
    ) -> Result<(), sea_orm::sqlx::Error> {
        let mut handle = conn.lock_handle().await?;
        let handle = handle.as_raw_handle().as_ptr();
        // The hook may fire until the connection closes: it holds its own reference, released
        // by the SQLITE_TRACE_CLOSE event.
        let context = Arc::into_raw(steps.clone()) as *mut c_void;
        // SAFETY: `handle` is an open connection, locked for us by `lock_handle` (no other
        // thread uses it during the call); `context` stays valid until the CLOSE event.
        let rc = unsafe {
            ffi::sqlite3_trace_v2(
                handle,
                ffi::SQLITE_TRACE_PROFILE | ffi::SQLITE_TRACE_CLOSE,
                Some(on_trace),
                context,
            )
        };
        if rc != ffi::SQLITE_OK {
            // SAFETY: the hook was not installed, so nothing else holds this reference.
            drop(unsafe { Arc::from_raw(context as *const SqliteSteps) });
        }
        Ok(())
    }
}

unsafe extern "C" fn on_trace(
    event: c_uint,
    context: *mut c_void,
    subject: *mut c_void,
    _detail: *mut c_void,
) -> c_int {
    let steps = context as *const SqliteSteps;
    if event == ffi::SQLITE_TRACE_PROFILE {
        let stmt = subject as *mut ffi::sqlite3_stmt;
        // SAFETY: SQLite passes the finishing statement; `context` lives until CLOSE. Resetting
        // the counters makes each execution count once.
        unsafe {
            let vm = ffi::sqlite3_stmt_status(stmt, ffi::SQLITE_STMTSTATUS_VM_STEP, 1);
            let full = ffi::sqlite3_stmt_status(stmt, ffi::SQLITE_STMTSTATUS_FULLSCAN_STEP, 1);
            (*steps).add(vm, full);
        }
    } else if event == ffi::SQLITE_TRACE_CLOSE {
        // SAFETY: the reference taken in `install`, released once as the connection closes.
        drop(unsafe { Arc::from_raw(steps) });
    }
    0
}
