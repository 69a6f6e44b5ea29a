//! Scheduled jobs (DESIGN §8). Job bodies are plain async functions returning their stats;
//! tokio-cron-scheduler only wires cron expressions to them. Every run is a `job_runs` row.
//!
//! A database lease (`job_leases`) makes each due run happen once across instances sharing a
//! database: a scheduled run claims its tick (the lease's `due_at` moves to the next tick, so
//! an instance firing the same tick later skips it) and holds the lease while it runs,
//! renewing it; a crashed holder's lease expires and its run is recorded FAILED by whoever
//! takes the lease next. `runJob` runs at once (waiting for a running one to finish).

use std::{str::FromStr, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait, EntityTrait, Statement};
use serde_json::{Value, json};
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::{
    config::{Config, parse_cron},
    db::{
        Db,
        entities::{job_lease, job_run},
        states::JobRunStatus,
    },
    domain::{certifications, groups, ids::new_id, reconcile, registration},
    error::{ApiError, ApiResult},
};

/// The jobs this hub runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobName {
    /// Brings the ledger to the expected commissions.
    Reconcile,
    /// Approves accruals whose hold has passed.
    ReleaseHolds,
    /// Syncs the deals of one CRM connection.
    CrmSync(String),
    /// Syncs every CRM connection, one after the other (`runJob(input: {name: "crm-sync"})`).
    CrmSyncAll,
    /// Drops history past its retention (receipts, deliveries, attempts, runs; see
    /// `domain::retention`).
    Prune,
    /// Ends the protection of registrations without an attributed deal (DESIGN §12).
    ExpireRegistrations,
    /// Records the lead-engagement SLAs that are due without an engagement.
    LeadSla,
    /// Announces the certifications expiring within 30 days (DESIGN §13).
    Certifications,
    /// Promotes partners whose rules hold for a higher group; demotes at group reviews.
    EvaluateGroups,
}

impl JobName {
    /// The public name.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobName::Reconcile => "reconcile",
            JobName::ReleaseHolds => "release-holds",
            JobName::CrmSync(_) | JobName::CrmSyncAll => "crm-sync",
            JobName::Prune => "prune",
            JobName::ExpireRegistrations => "expire-registrations",
            JobName::LeadSla => "lead-sla",
            JobName::Certifications => "certifications",
            JobName::EvaluateGroups => "evaluate-groups",
        }
    }

    /// The lease row: one per job, one per connection for `crm-sync`.
    pub fn lease_key(&self) -> String {
        match self {
            JobName::CrmSync(connection) => format!("crm-sync:{connection}"),
            JobName::CrmSyncAll => "crm-sync:all".to_string(),
            other => other.as_str().to_string(),
        }
    }
}

impl FromStr for JobName {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<JobName, ApiError> {
        match s {
            "reconcile" => Ok(JobName::Reconcile),
            "release-holds" => Ok(JobName::ReleaseHolds),
            "crm-sync" => Ok(JobName::CrmSyncAll),
            "prune" => Ok(JobName::Prune),
            "expire-registrations" => Ok(JobName::ExpireRegistrations),
            "lead-sla" => Ok(JobName::LeadSla),
            "certifications" => Ok(JobName::Certifications),
            "evaluate-groups" => Ok(JobName::EvaluateGroups),
            _ => Err(ApiError::bad_input(
                "input.name",
                "unknown job: expected reconcile, release-holds, crm-sync, prune, \
                 expire-registrations, lead-sla, certifications or evaluate-groups",
            )),
        }
    }
}

/// How a run was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// By the scheduler, for the tick at this time.
    Scheduled(DateTime<Utc>, DateTime<Utc>),
    /// By `runJob`; `full` forces a full reconciliation.
    Manual {
        /// Full instead of incremental (reconcile only).
        full: bool,
    },
}

/// Runs jobs under the lease.
#[derive(Clone)]
pub struct Jobs {
    db: Db,
    holder: Arc<str>,
    lease: Duration,
    syncer: Option<Arc<crate::domain::crm::Syncer>>,
    /// How long each kind of history is kept (`prune`).
    retention: crate::config::RetentionPeriods,
}

/// Whether a scheduled tick ran here.
#[derive(Debug)]
pub enum TickOutcome {
    /// This instance ran it.
    Ran(job_run::Model),
    /// Another instance ran (or runs) this tick.
    Skipped,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

impl Jobs {
    /// Jobs on `db`, leases lasting `lease`.
    pub fn new(db: Db, lease: Duration) -> Jobs {
        Jobs {
            db,
            holder: Arc::from(format!("{}-{}", std::process::id(), new_id()).as_str()),
            lease,
            syncer: None,
            retention: crate::config::Config::default()
                .retention_periods()
                .expect("the default retention is valid"),
        }
    }

    /// Sets how long `prune` keeps each kind of history.
    pub fn with_retention(mut self, retention: crate::config::RetentionPeriods) -> Jobs {
        self.retention = retention;
        self
    }

    /// Lets this instance run `crm-sync` with `syncer`.
    pub fn with_syncer(mut self, syncer: crate::domain::crm::Syncer) -> Jobs {
        self.syncer = Some(Arc::new(syncer));
        self
    }

    /// Tries to take the lease of `name`. For a scheduled tick, only if the tick is due (not
    /// claimed by another instance). Returns the job's cursor when taken.
    async fn acquire(
        &self,
        name: &JobName,
        run_id: &str,
        trigger: Trigger,
    ) -> ApiResult<Option<Option<String>>> {
        let db = &self.db;
        let now = Utc::now();
        let expires = ms(now) + self.lease.as_millis() as i64;
        let [key, holder, run, expires_at, next_due_at, tick_at] = db.params();
        // A crashed holder's run stays RUNNING: close it when its lease is found expired.
        let previous = job_lease::Entity::find_by_id(name.lease_key())
            .one(db.reads())
            .await?;
        let (due_check, next_due) = match trigger {
            Trigger::Scheduled(tick, next) => (
                format!(" AND job_leases.due_at_ms <= {tick_at}"),
                ms(next).max(ms(tick) + 1),
            ),
            Trigger::Manual { .. } => (String::new(), 0),
        };
        let due_update = match trigger {
            Trigger::Scheduled(..) => "excluded.due_at_ms",
            Trigger::Manual { .. } => "job_leases.due_at_ms",
        };
        let mut values: Vec<sea_orm::Value> = vec![
            name.lease_key().into(),
            self.holder.to_string().into(),
            run_id.into(),
            expires.into(),
            next_due.into(),
        ];
        if let Trigger::Scheduled(tick, _) = trigger {
            values.push(ms(tick).into());
        }
        let sql = format!(
            "INSERT INTO job_leases (name, holder, run_id, expires_at_ms, due_at_ms, cursor) \
             VALUES ({key}, {holder}, {run}, {expires_at}, {next_due_at}, NULL) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             run_id = excluded.run_id, expires_at_ms = excluded.expires_at_ms, \
             due_at_ms = {due_update} \
             WHERE job_leases.expires_at_ms < {now_ms}{due_check} RETURNING cursor",
            now_ms = ms(now)
        );
        let tx = db.begin_write().await?;
        let row = tx
            .query_one_raw(Statement::from_sql_and_values(db.backend(), sql, values))
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let cursor: Option<String> = row.try_get("", "cursor")?;
        if let Some(previous) = previous
            && previous.expires_at_ms < ms(now)
            && let Some(stale) = previous.run_id
        {
            let [finished_at, id] = db.params();
            tx.execute_raw(Statement::from_sql_and_values(
                db.backend(),
                format!(
                    "UPDATE job_runs SET status = 'FAILED', finished_at = {finished_at}, \
                     error = 'the instance running it stopped (lease expired)' \
                     WHERE id = {id} AND status = 'RUNNING'"
                ),
                [now.into(), stale.into()],
            ))
            .await?;
        }
        tx.commit().await?;
        Ok(Some(cursor))
    }

    /// Gives the lease back, keeping the job's cursor unless a new one is given.
    async fn release(&self, name: &JobName, run_id: &str, cursor: Option<String>) -> ApiResult<()> {
        let db = &self.db;
        let [key, run, new_cursor] = db.params();
        db.execute_write(
            format!(
                "UPDATE job_leases SET holder = NULL, run_id = NULL, expires_at_ms = 0, \
                 cursor = COALESCE({new_cursor}, cursor) WHERE name = {key} AND run_id = {run}"
            ),
            vec![name.lease_key().into(), run_id.into(), cursor.into()],
        )
        .await?;
        Ok(())
    }

    async fn renew(db: Db, name: JobName, run_id: String, lease: Duration) {
        let every = lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let expires = ms(Utc::now()) + lease.as_millis() as i64;
            let renewed = db
                .execute_write(
                    format!(
                        "UPDATE job_leases SET expires_at_ms = {} WHERE name = {} AND run_id = {}",
                        db.placeholder(1),
                        db.placeholder(2),
                        db.placeholder(3)
                    ),
                    vec![
                        expires.into(),
                        name.lease_key().into(),
                        run_id.clone().into(),
                    ],
                )
                .await;
            if let Err(e) = renewed {
                tracing::warn!(job = name.as_str(), error = %e, "renewing the job lease failed");
            }
        }
    }

    /// Runs `name` now (`runJob`), waiting up to `wait` for a run in progress elsewhere to end.
    pub async fn run_now(
        &self,
        name: JobName,
        full: bool,
        wait: Duration,
    ) -> ApiResult<job_run::Model> {
        let run_id = new_id();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(cursor) = self
                .acquire(&name, &run_id, Trigger::Manual { full })
                .await?
            {
                return self.execute(&name, run_id, cursor, full).await;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Conflict(format!(
                    "{} is running on another instance; try again when it finishes",
                    name.as_str()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs the scheduled tick `tick` of `name` unless another instance claimed it; `next` is
    /// the following tick.
    pub async fn run_tick(
        &self,
        name: JobName,
        tick: DateTime<Utc>,
        next: DateTime<Utc>,
    ) -> ApiResult<TickOutcome> {
        let run_id = new_id();
        match self
            .acquire(&name, &run_id, Trigger::Scheduled(tick, next))
            .await?
        {
            Some(cursor) => Ok(TickOutcome::Ran(
                self.execute(&name, run_id, cursor, false).await?,
            )),
            None => Ok(TickOutcome::Skipped),
        }
    }

    async fn execute(
        &self,
        name: &JobName,
        run_id: String,
        cursor: Option<String>,
        full: bool,
    ) -> ApiResult<job_run::Model> {
        let started = Utc::now();
        let run = {
            let tx = self.db.begin_write().await?;
            let run = job_run::ActiveModel {
                id: Set(run_id.clone()),
                name: Set(name.as_str().to_string()),
                status: Set(JobRunStatus::Running),
                started_at: Set(started),
                finished_at: Set(None),
                stats: Set(None),
                error: Set(None),
            }
            .insert(&*tx)
            .await?;
            tx.commit().await?;
            run
        };
        let heartbeat = tokio::spawn(Jobs::renew(
            self.db.clone(),
            name.clone(),
            run_id.clone(),
            self.lease,
        ));
        let outcome = guarded(self.body(name, &run_id, cursor.as_deref(), full)).await;
        heartbeat.abort();
        let (status, stats, error, next_cursor) = match outcome {
            Ok((stats, next_cursor)) => (JobRunStatus::Succeeded, Some(stats), None, next_cursor),
            Err(e) => {
                tracing::error!(job = name.as_str(), error = %e, "job failed");
                (JobRunStatus::Failed, None, Some(e), None)
            }
        };
        let mut row: job_run::ActiveModel = run.into();
        row.status = Set(status);
        row.finished_at = Set(Some(Utc::now()));
        row.stats = Set(stats);
        row.error = Set(error);
        let finished = {
            let tx = self.db.begin_write().await?;
            let finished = row.update(&*tx).await?;
            tx.commit().await?;
            finished
        };
        self.release(name, &run_id, next_cursor).await?;
        Ok(finished)
    }

    /// The job bodies: stats, and the cursor to keep.
    async fn body(
        &self,
        name: &JobName,
        run_id: &str,
        cursor: Option<&str>,
        full: bool,
    ) -> Result<(Value, Option<String>), String> {
        match name {
            JobName::Reconcile => {
                let since = if full {
                    None
                } else {
                    cursor
                        .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
                        .map(|t| t.with_timezone(&Utc))
                };
                let stats = reconcile::reconcile(&self.db, since)
                    .await
                    .map_err(|e| e.to_string())?;
                let next = stats.watermark.map(|w| w.to_rfc3339());
                let mut value = serde_json::to_value(&stats).map_err(|e| e.to_string())?;
                // Partner groups follow what this run computed (DESIGN §13): promotions at
                // once. A promotion is history the next run computes deals with.
                let groups = groups::evaluate_groups(&self.db, Utc::now())
                    .await
                    .map_err(|e| e.to_string())?;
                value["groups"] = serde_json::to_value(&groups).map_err(|e| e.to_string())?;
                Ok((value, next))
            }
            JobName::ReleaseHolds => {
                let released = reconcile::release_holds(&self.db)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((json!({ "released": released }), None))
            }
            JobName::Prune => {
                let pruned = crate::domain::retention::prune(&self.db, &self.retention, Utc::now())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((
                    serde_json::to_value(&pruned).map_err(|e| e.to_string())?,
                    None,
                ))
            }
            JobName::ExpireRegistrations => {
                let expired = registration::expire_registrations(&self.db, Utc::now())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((json!({ "expired": expired }), None))
            }
            JobName::LeadSla => {
                let breached = registration::breach_due_slas(&self.db, Utc::now())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((json!({ "breached": breached }), None))
            }
            JobName::EvaluateGroups => {
                let stats = groups::evaluate_groups(&self.db, Utc::now())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((
                    serde_json::to_value(&stats).map_err(|e| e.to_string())?,
                    None,
                ))
            }
            JobName::Certifications => {
                let expiring = certifications::notify_expiring(&self.db, Utc::now())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((json!({ "expiring": expiring }), None))
            }
            JobName::CrmSyncAll => {
                let connections = crate::domain::crm::connection_schedules(&self.db)
                    .await
                    .map_err(|e| e.message())?;
                let mut runs = Vec::new();
                let mut failed = Vec::new();
                for (connection_id, _) in connections {
                    // Each connection's run is its own job run, under its own lease.
                    let run = Box::pin(self.run_now(
                        JobName::CrmSync(connection_id.clone()),
                        false,
                        Duration::from_secs(60),
                    ))
                    .await;
                    match run {
                        Ok(run) => {
                            if run.status == JobRunStatus::Failed {
                                failed.push(format!(
                                    "{connection_id}: {}",
                                    run.error.clone().unwrap_or_default()
                                ));
                            }
                            runs.push(json!({"connectionId": connection_id, "runId": run.id, "status": run.status}));
                        }
                        Err(e) => failed.push(format!("{connection_id}: {}", e.message())),
                    }
                }
                if !failed.is_empty() {
                    return Err(format!(
                        "{} connection(s) failed: {}",
                        failed.len(),
                        failed.join("; ")
                    ));
                }
                Ok((json!({ "connections": runs.len(), "runs": runs }), None))
            }
            JobName::CrmSync(connection_id) => {
                let syncer = self
                    .syncer
                    .as_ref()
                    .ok_or("this instance has no CRM syncer")?;
                let stats = syncer.sync(connection_id, run_id).await?;
                Ok((
                    serde_json::to_value(&stats).map_err(|e| e.to_string())?,
                    None,
                ))
            }
        }
    }
}

/// Runs a job body so that a panic inside it becomes the run's error: the run then ends
/// FAILED and its lease is released like after any other failure, instead of staying RUNNING
/// with its lease renewed until the process restarts.
async fn guarded<T>(
    body: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(body).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(format!("the job panicked: {message}"))
        }
    }
}

/// Starts the cron scheduler with the configured schedules.
pub async fn start_scheduler(jobs: Jobs, config: &Config) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    for (name, expr) in [
        (JobName::Reconcile, config.reconcile_schedule.clone()),
        (JobName::ReleaseHolds, config.release_holds_schedule.clone()),
        (JobName::Prune, config.prune_schedule.clone()),
        (
            JobName::ExpireRegistrations,
            config.expire_registrations_schedule.clone(),
        ),
        (JobName::LeadSla, config.lead_sla_schedule.clone()),
        (
            JobName::Certifications,
            config.certifications_schedule.clone(),
        ),
        (
            JobName::EvaluateGroups,
            config.evaluate_groups_schedule.clone(),
        ),
    ] {
        let cron = Arc::new(parse_cron(&expr)?);
        let jobs = jobs.clone();
        scheduler
            .add(Job::new_async(expr.as_str(), move |_id, _scheduler| {
                let jobs = jobs.clone();
                let cron = cron.clone();
                let name = name.clone();
                Box::pin(async move {
                    // The tick this firing belongs to (the scheduler may fire a little late).
                    let now = Utc::now() + chrono::Duration::milliseconds(500);
                    let Ok(tick) = cron.find_previous_occurrence(&now, true) else {
                        return;
                    };
                    let Ok(next) = cron.find_next_occurrence(&tick, false) else {
                        return;
                    };
                    match jobs.run_tick(name.clone(), tick, next).await {
                        Ok(TickOutcome::Ran(run)) => {
                            tracing::info!(job = name.as_str(), run = %run.id, status = %run.status, "job ran");
                        }
                        Ok(TickOutcome::Skipped) => {
                            tracing::debug!(job = name.as_str(), "tick taken by another instance");
                        }
                        Err(e) => {
                            tracing::error!(job = name.as_str(), error = ?e, "job could not run");
                        }
                    }
                })
            })?)
            .await?;
    }
    // CRM connections come and go: every minute (`crm_sync_check_schedule`), each connection's
    // own schedule is checked and a due tick runs (once across instances, under the
    // connection's lease).
    let crm_jobs = jobs.clone();
    scheduler
        .add(Job::new_async(
            config.crm_sync_check_schedule.as_str(),
            move |_id, _scheduler| {
                let jobs = crm_jobs.clone();
                Box::pin(async move { run_due_syncs(&jobs).await })
            },
        )?)
        .await?;
    scheduler.start().await?;
    Ok(scheduler)
}

/// Runs the due `crm-sync` ticks of every connection (each on its own task).
pub async fn run_due_syncs(jobs: &Jobs) {
    let schedules = match crate::domain::crm::connection_schedules(&jobs.db).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = ?e, "listing CRM connections failed");
            return;
        }
    };
    let now = Utc::now();
    for (connection_id, schedule) in schedules {
        let Ok(cron) = parse_cron(&schedule) else {
            continue;
        };
        let Ok(tick) = cron.find_previous_occurrence(&now, true) else {
            continue;
        };
        let Ok(next) = cron.find_next_occurrence(&tick, false) else {
            continue;
        };
        let jobs = jobs.clone();
        tokio::spawn(async move {
            match jobs
                .run_tick(JobName::CrmSync(connection_id.clone()), tick, next)
                .await
            {
                Ok(TickOutcome::Ran(run)) => {
                    tracing::info!(connection = %connection_id, run = %run.id, status = %run.status, "crm-sync ran");
                }
                Ok(TickOutcome::Skipped) => {}
                Err(e) => {
                    tracing::error!(connection = %connection_id, error = ?e, "crm-sync could not run")
                }
            }
        });
    }
}

/// Asks for a connection's `crm-sync` soon, outside its schedule: HubSpot webhook receipts that
/// wait for their deal to be fetched trigger it. Requests for one connection are coalesced: at
/// most one run per connection at a time in this process, plus one more when requests arrived
/// during it.
#[derive(Clone)]
pub struct SyncTrigger {
    sender: tokio::sync::mpsc::UnboundedSender<String>,
}

impl SyncTrigger {
    /// Starts the trigger's task on `jobs`.
    pub fn start(jobs: Jobs) -> SyncTrigger {
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            let state: Arc<std::sync::Mutex<std::collections::HashMap<String, bool>>> =
                Arc::default();
            while let Some(connection) = receiver.recv().await {
                {
                    let mut running = state.lock().expect("trigger state");
                    if let Some(again) = running.get_mut(&connection) {
                        *again = true;
                        continue;
                    }
                    running.insert(connection.clone(), false);
                }
                let (jobs, state) = (jobs.clone(), state.clone());
                tokio::spawn(async move {
                    loop {
                        // Let a burst of webhooks gather into one run.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let run = jobs
                            .run_now(
                                JobName::CrmSync(connection.clone()),
                                false,
                                Duration::from_secs(60),
                            )
                            .await;
                        if let Err(e) = run {
                            tracing::warn!(connection = %connection, error = ?e, "triggered crm-sync could not run");
                        }
                        let mut running = state.lock().expect("trigger state");
                        if running.get(&connection) == Some(&true) {
                            running.insert(connection.clone(), false);
                            continue;
                        }
                        running.remove(&connection);
                        break;
                    }
                });
            }
        });
        SyncTrigger { sender }
    }

    /// Requests a sync of `connection_id`.
    pub fn request(&self, connection_id: &str) {
        let _ = self.sender.send(connection_id.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::guarded;

    #[tokio::test]
    async fn a_panicking_body_becomes_the_runs_error() {
        let outcome: Result<(), String> = guarded(async {
            let cents: i64 = i64::MAX;
            // What `commission::to_cents` did before its arithmetic was checked.
            if cents > 0 {
                panic!("Multiplication overflowed");
            }
            Ok(())
        })
        .await;
        assert_eq!(
            outcome,
            Err("the job panicked: Multiplication overflowed".to_string())
        );
        let formatted: Result<(), String> =
            guarded(async { panic!("{} of {}", "one", "two") }).await;
        assert_eq!(formatted, Err("the job panicked: one of two".to_string()));
        assert_eq!(guarded(async { Ok::<_, String>(7) }).await, Ok(7));
    }
}
