//! The durable inbox of inbound webhooks. Verified requests are group-committed here (many
//! concurrent requests share one transaction and one fsync) *before* they are acknowledged; the
//! worker then applies receipts in arrival order, each exactly once: claims run inside the
//! applying transaction (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the writer lock on SQLite), so
//! a crash rolls a half-applied batch back to RECEIVED, and what is in the inbox on start is
//! applied.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement, TransactionTrait, Value,
    sea_query::{Expr, LockBehavior, LockType},
};
use tandem_connectors::{
    NeutralDeal,
    inbound::{CertificationIssued, DealChange, LeadEngagement},
    stripe::BillingEvent,
};
use tokio::sync::{Notify, mpsc, oneshot, watch};

pub use crate::db::states::ReceiptStatus;
use crate::db::states::WebhookSourceKind;
use crate::{
    db::{
        Db,
        entities::{program, webhook_receipt},
    },
    domain::{
        billing::{self, BillingOutcome},
        certifications::{self, IssuedOutcome},
        deals::{self, AppliedDeal, ApplyResult, DealCache, apply_deal_change},
        events,
        ids::new_id,
        registration::{self, LeadOutcome},
        webhooks::{Disposition, HUBSPOT_WAITING, Inbound, ReceivedEvent, Webhooks},
    },
    error::{ApiError, ApiResult},
};

/// A verified event on its way into the inbox.
#[derive(Debug, Clone)]
pub struct NewReceipt {
    /// The source it came through.
    pub source_id: String,
    /// The source's program.
    pub program_id: String,
    /// The event.
    pub event: ReceivedEvent,
    /// When the request arrived.
    pub received_at: DateTime<Utc>,
}

/// A receipt as committed.
#[derive(Debug, Clone)]
pub struct StoredReceipt {
    /// Its id.
    pub id: String,
    /// RECEIVED, FAILED or DUPLICATE.
    pub status: ReceiptStatus,
    /// Why it failed or waits.
    pub reason: Option<String>,
}

struct Pending {
    receipts: Vec<NewReceipt>,
    reply: oneshot::Sender<Result<Vec<StoredReceipt>, String>>,
}

/// The head of both receipt inserts (first receipts and duplicates).
const INSERT_RECEIPT: &str = "INSERT INTO webhook_receipts (id, source_id, program_id, \
    provider_event_id, dedupe_key, payload, status, reason, attempts, available_at_ms, \
    received_at, processed_at) VALUES ";

/// Receipts gathered into one transaction at most.
const MAX_GROUP: usize = 512;
/// Rows per INSERT statement (12 bound values each; well under both databases' limits).
const ROWS_PER_INSERT: usize = 256;

/// The inbox writer: hands receipts to the group committer and wakes the worker.
#[derive(Clone)]
pub struct Inbox {
    sender: mpsc::Sender<Pending>,
    notify: Arc<Notify>,
    committing: Arc<AtomicBool>,
}

impl Inbox {
    /// Starts the group committer on `db`.
    pub fn start(db: Db) -> Inbox {
        let (sender, receiver) = mpsc::channel(4096);
        let notify = Arc::new(Notify::new());
        let committing = Arc::new(AtomicBool::new(false));
        tokio::spawn(group_committer(
            db,
            receiver,
            notify.clone(),
            committing.clone(),
        ));
        Inbox {
            sender,
            notify,
            committing,
        }
    }

    /// Whether acknowledgements are waiting on the committer right now: the worker then lets
    /// them go first (acknowledging fast is what senders need; applying can trail).
    pub fn is_busy(&self) -> bool {
        self.committing.load(Ordering::Relaxed)
            || self.sender.capacity() < self.sender.max_capacity()
    }

    /// Commits `receipts` (in one transaction, possibly shared with other requests') and
    /// returns once they are durable.
    pub async fn store(&self, receipts: Vec<NewReceipt>) -> ApiResult<Vec<StoredReceipt>> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Pending { receipts, reply })
            .await
            .map_err(|_| ApiError::Internal("the inbox committer has stopped".into()))?;
        answer
            .await
            .map_err(|_| ApiError::Internal("the inbox committer has stopped".into()))?
            .map_err(ApiError::Internal)
    }
}

async fn group_committer(
    db: Db,
    mut receiver: mpsc::Receiver<Pending>,
    notify: Arc<Notify>,
    committing: Arc<AtomicBool>,
) {
    while let Some(first) = receiver.recv().await {
        committing.store(true, Ordering::Relaxed);
        let mut group = vec![first];
        let mut rows = group[0].receipts.len();
        while rows < MAX_GROUP {
            match receiver.try_recv() {
                Ok(next) => {
                    rows += next.receipts.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let all: Vec<&NewReceipt> = group.iter().flat_map(|p| p.receipts.iter()).collect();
        let committed = commit_receipts(&db, &all).await;
        committing.store(false, Ordering::Relaxed);
        match committed {
            Ok(mut stored) => {
                notify.notify_waiters();
                notify.notify_one();
                for pending in group {
                    let rest = stored.split_off(pending.receipts.len());
                    let _ = pending.reply.send(Ok(stored));
                    stored = rest;
                }
            }
            Err(err) => {
                tracing::error!(error = %err, receipts = all.len(), "committing webhook receipts failed");
                for pending in group {
                    let _ = pending.reply.send(Err(err.to_string()));
                }
            }
        }
    }
}

fn initial_state(
    event: &ReceivedEvent,
    now_ms: i64,
) -> (ReceiptStatus, Option<String>, Option<i64>) {
    match &event.disposition {
        Disposition::Apply => (ReceiptStatus::Received, None, Some(now_ms)),
        Disposition::Park(reason) => (ReceiptStatus::Received, Some(reason.clone()), None),
        Disposition::Fail(reason) => (ReceiptStatus::Failed, Some(reason.clone()), None),
        Disposition::Ignore(reason) => (ReceiptStatus::Ignored, Some(reason.clone()), None),
    }
}

async fn commit_receipts(db: &Db, receipts: &[&NewReceipt]) -> Result<Vec<StoredReceipt>, DbErr> {
    let now = Utc::now();
    let now_ms = now.timestamp_millis();
    let ids: Vec<String> = receipts.iter().map(|_| new_id()).collect();
    let tx = db.begin_write().await?;
    let mut inserted = std::collections::HashSet::new();
    for (chunk_index, chunk) in receipts.chunks(ROWS_PER_INSERT).enumerate() {
        let offset = chunk_index * ROWS_PER_INSERT;
        let mut sql = String::from(INSERT_RECEIPT);
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 11);
        for (i, receipt) in chunk.iter().enumerate() {
            let (status, reason, available) = initial_state(&receipt.event, now_ms);
            let base = values.len();
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for n in 1..=11 {
                if n > 1 {
                    sql.push(',');
                }
                if n == 9 {
                    sql.push_str("0,");
                }
                sql.push_str(&db.placeholder(base + n));
            }
            sql.push(')');
            values.push(ids[offset + i].clone().into());
            values.push(receipt.source_id.clone().into());
            values.push(receipt.program_id.clone().into());
            values.push(receipt.event.event_id.clone().into());
            values.push(receipt.event.event_id.clone().into());
            values.push(receipt.event.payload.clone().into());
            values.push(status.as_str().into());
            values.push(reason.into());
            values.push(available.into());
            values.push(receipt.received_at.into());
            values.push((status == ReceiptStatus::Failed).then_some(now).into());
        }
        sql.push_str(" ON CONFLICT (source_id, dedupe_key) DO NOTHING RETURNING id");
        let rows = tx
            .query_all_raw(Statement::from_sql_and_values(db.backend(), sql, values))
            .await?;
        for row in rows {
            inserted.insert(row.try_get::<String>("", "id")?);
        }
    }
    let mut stored = Vec::with_capacity(receipts.len());
    for (receipt, id) in receipts.iter().zip(ids) {
        if inserted.contains(&id) {
            let (status, reason, _) = initial_state(&receipt.event, now_ms);
            stored.push(StoredReceipt { id, status, reason });
            continue;
        }
        // The provider event id was seen before: keep a trace, apply nothing.
        let reason = format!(
            "repeat of provider event {} already received",
            receipt.event.event_id.as_deref().unwrap_or_default()
        );
        let sql = format!(
            "{INSERT_RECEIPT}({}, {}, {}, {}, NULL, {}, 'DUPLICATE', {}, 0, NULL, {}, {})",
            db.placeholder(1),
            db.placeholder(2),
            db.placeholder(3),
            db.placeholder(4),
            db.placeholder(5),
            db.placeholder(6),
            db.placeholder(7),
            db.placeholder(8),
        );
        tx.execute_raw(Statement::from_sql_and_values(
            db.backend(),
            sql,
            [
                id.clone().into(),
                receipt.source_id.clone().into(),
                receipt.program_id.clone().into(),
                receipt.event.event_id.clone().into(),
                receipt.event.payload.clone().into(),
                reason.clone().into(),
                receipt.received_at.into(),
                now.into(),
            ],
        ))
        .await?;
        stored.push(StoredReceipt {
            id,
            status: ReceiptStatus::Duplicate,
            reason: Some(reason),
        });
    }
    tx.commit().await?;
    Ok(stored)
}

/// The predicate of the partial index `idx_webhook_receipts_pending`, written exactly as the
/// index states it. It must stay a literal: the bundled SQLite plans statements without looking
/// at bound values (`SQLITE_ENABLE_QPSG`, `.cargo/config.toml`), so `status = ?` could never use
/// the partial index and every claim would scan the whole receipt history.
const PENDING: &str = "status = 'RECEIVED' AND available_at_ms IS NOT NULL";

/// Receipts claimed per transaction (PostgreSQL).
const APPLY_BATCH: u64 = 200;
/// Receipts claimed per transaction on SQLite, where the time budget ends most transactions.
const APPLY_BATCH_SQLITE: u64 = 64;
/// How long one apply transaction may hold the (SQLite) writer lock before it commits what it
/// has: ingest commits wait for it, so this bounds their added latency.
const APPLY_TIME_BUDGET: Duration = Duration::from_millis(8);
/// Longest the worker defers to busy ingest before applying a batch anyway.
const MAX_YIELD: Duration = Duration::from_millis(50);
/// A receipt whose application keeps failing on database errors is given up after this many
/// attempts (its status becomes FAILED).
const MAX_ATTEMPTS: i32 = 8;

/// Applies inbox receipts.
#[derive(Clone)]
pub struct InboxWorker {
    db: Db,
    webhooks: Webhooks,
    inbox: Inbox,
}

/// What happened to one receipt.
struct Outcome {
    status: ReceiptStatus,
    reason: Option<String>,
    deal_id: Option<String>,
    available_at_ms: Option<i64>,
}

impl Outcome {
    /// A receipt settled (or kept waiting) without a deal to point at.
    fn settled(status: ReceiptStatus, reason: Option<String>) -> Outcome {
        Outcome {
            status,
            reason,
            deal_id: None,
            available_at_ms: None,
        }
    }
}

impl InboxWorker {
    /// A worker over `db`, woken by `inbox` commits.
    pub fn new(db: Db, webhooks: Webhooks, inbox: Inbox) -> InboxWorker {
        InboxWorker {
            db,
            webhooks,
            inbox,
        }
    }

    /// Lets pending acknowledgements go first, but never waits more than
    /// [`MAX_YIELD`] so that a sustained flood cannot stop application altogether.
    async fn yield_to_ingest(&self) {
        let started = std::time::Instant::now();
        while self.inbox.is_busy() && started.elapsed() < MAX_YIELD {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Applies receipts until the inbox has nothing due, waiting for new ones (or polling once a
    /// second, for receipts committed by other instances and retries) until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let notified = self.inbox.notify.notified();
            self.yield_to_ingest().await;
            match self.apply_due().await {
                Ok(0) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => {}
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "applying webhook receipts failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
    }

    /// Applies one batch of due receipts in one transaction; returns how many were processed.
    /// The batch first runs without savepoints; if any receipt hits a database error the whole
    /// transaction is rolled back and the batch re-run with a savepoint per receipt, so that
    /// only that receipt is retried later.
    pub async fn apply_due(&self) -> Result<usize, DbErr> {
        match self.apply_batch(false).await {
            Err(BatchError::NeedsSavepoints) => match self.apply_batch(true).await {
                Ok(n) => Ok(n),
                Err(BatchError::Db(err)) => Err(err),
                Err(BatchError::NeedsSavepoints) => Err(DbErr::Custom(
                    "a receipt failed even with savepoints".into(),
                )),
            },
            Err(BatchError::Db(err)) => Err(err),
            Ok(n) => Ok(n),
        }
    }

    async fn apply_batch(&self, careful: bool) -> Result<usize, BatchError> {
        let now_ms = Utc::now().timestamp_millis();
        let tx = self.db.begin_write().await?;
        // Only SQLite's single writer makes ingest wait for this transaction: bound how long it
        // holds the lock, and claim and parse no more than such a transaction gets through.
        let (budget, batch) = if self.db.is_postgres() {
            (None, APPLY_BATCH)
        } else {
            (
                Some(std::time::Instant::now() + APPLY_TIME_BUDGET),
                APPLY_BATCH_SQLITE,
            )
        };
        if self.db.is_postgres() {
            // Walk the pending index in seq order: an index scan stops after the batch and marks
            // entries of applied receipts dead as it passes them, where a bitmap scan (which
            // stale statistics favour) would revisit every one of them until the next vacuum.
            // Plan the batch's wide `IN (…)` lookups for their actual values: a generic plan
            // built without statistics can scan the whole deals table once per batch.
            tx.execute_unprepared(&format!(
                "SET LOCAL enable_bitmapscan = off; {}",
                deals::PLAN_FOR_VALUES
            ))
            .await?;
        }
        let mut claim = webhook_receipt::Entity::find()
            .filter(Expr::cust(PENDING))
            .filter(webhook_receipt::Column::AvailableAtMs.lte(now_ms))
            .order_by_asc(webhook_receipt::Column::Seq)
            .limit(batch);
        if self.db.is_postgres() {
            claim = claim.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let receipts = claim.all(&*tx).await?;
        if receipts.is_empty() {
            return Ok(0);
        }
        let mut programs: HashMap<String, program::Model> = HashMap::new();
        let program_ids: std::collections::BTreeSet<&String> =
            receipts.iter().map(|r| &r.program_id).collect();
        for found in program::Entity::find()
            .filter(program::Column::Id.is_in(program_ids.into_iter().cloned()))
            .all(&*tx)
            .await?
        {
            programs.insert(found.id.clone(), found);
        }
        // Parse every payload first (pure), so the batch's deals load in one statement.
        let mut planned = Vec::with_capacity(receipts.len());
        for receipt in &receipts {
            let plan = self.plan(&programs, receipt).await;
            planned.push(plan);
        }
        let keys: Vec<(String, String)> = planned
            .iter()
            .filter_map(|p| match p {
                Plan::Apply { source, change, .. } => {
                    Some((source.clone(), change.external_id().to_string()))
                }
                Plan::Done(_)
                | Plan::Billing { .. }
                | Plan::Lead { .. }
                | Plan::Certification { .. } => None,
            })
            .collect();
        let mut cache = DealCache::load(&*tx, &keys, self.db.is_postgres()).await?;
        let mut incoming: BTreeMap<&str, Vec<&NeutralDeal>> = BTreeMap::new();
        for plan in &planned {
            if let Plan::Apply {
                program_id,
                change: DealChange::Upsert(deal),
                ..
            } = plan
            {
                incoming.entry(program_id).or_default().push(deal);
            }
        }
        for (program_id, deals) in incoming {
            cache.load_referrals_for(&*tx, program_id, deals).await?;
        }
        if !careful {
            // New deals and attributions are written together at the end of the batch. With
            // savepoints each receipt's rows are written at once, so that a failing insert is
            // that receipt's alone.
            cache.defer_inserts();
        }
        let mut events = Vec::new();
        let mut outcomes: Vec<(i64, Outcome)> = Vec::with_capacity(receipts.len());
        for (receipt, plan) in receipts.iter().zip(planned) {
            if budget.is_some_and(|b| std::time::Instant::now() > b) && !outcomes.is_empty() {
                // Keep the writer lock short: the rest stays RECEIVED for the next batch.
                break;
            }
            let program = match plan {
                Plan::Done(outcome) => {
                    outcomes.push((receipt.seq, outcome));
                    continue;
                }
                Plan::Apply { ref program_id, .. }
                | Plan::Billing { ref program_id, .. }
                | Plan::Lead { ref program_id, .. }
                | Plan::Certification { ref program_id, .. } => &programs[program_id],
            };
            let mut caused = Vec::new();
            let applied = if careful {
                let savepoint = tx.begin().await?;
                match apply_plan(&savepoint, &mut cache, program, plan, &mut caused).await {
                    Ok(result) => {
                        savepoint.commit().await?;
                        Ok(result)
                    }
                    Err(err) => {
                        savepoint.rollback().await?;
                        Err(err)
                    }
                }
            } else {
                apply_plan(&*tx, &mut cache, program, plan, &mut caused).await
            };
            let outcome = match applied {
                Ok((outcome, state)) => {
                    if let Some(state) = state {
                        cache.remember(state);
                    }
                    events.append(&mut caused);
                    outcome
                }
                Err(err) if careful => {
                    tracing::warn!(receipt = %receipt.id, error = %err, "applying a webhook receipt failed");
                    self.retry_later(receipt, "internal error while applying")
                }
                Err(err) => {
                    tracing::debug!(receipt = %receipt.id, error = %err, "re-running the batch with savepoints");
                    return Err(BatchError::NeedsSavepoints);
                }
            };
            outcomes.push((receipt.seq, outcome));
        }
        if let Err(err) = cache.flush(&*tx).await {
            // One of the batch's new deals cannot be written (a concurrent instance created it
            // first): re-run with a savepoint per receipt.
            tracing::debug!(error = %err, "re-running the batch with savepoints");
            return Err(BatchError::NeedsSavepoints);
        }
        events::record_all(&*tx, events).await?;
        record_outcomes(&self.db, &*tx, &outcomes).await?;
        tx.commit().await?;
        Ok(outcomes.len())
    }

    /// What to do with one receipt: its deal change, or an outcome reached without the database.
    async fn plan(
        &self,
        programs: &HashMap<String, program::Model>,
        receipt: &webhook_receipt::Model,
    ) -> Plan {
        let failed =
            |reason: String| Plan::Done(Outcome::settled(ReceiptStatus::Failed, Some(reason)));
        let source = match self.webhooks.source(&receipt.source_id).await {
            Ok(Some(source)) => source,
            Ok(None) => return failed("the webhook source no longer exists".into()),
            Err(err) => {
                tracing::error!(receipt = %receipt.id, error = ?err, "cannot open webhook source");
                return Plan::Done(self.retry_later(receipt, "internal error opening the source"));
            }
        };
        let Some(program) = programs.get(&receipt.program_id) else {
            return failed("the program no longer exists".into());
        };
        if source.kind == WebhookSourceKind::Stripe {
            return match source.billing(receipt.payload.as_bytes()) {
                Ok(event) => Plan::Billing {
                    source: source.model.id.clone(),
                    program_id: program.id.clone(),
                    event,
                },
                Err(err) => failed(err.0),
            };
        }
        match source.inbound(
            receipt.payload.as_bytes(),
            &program.currency,
            receipt.received_at,
        ) {
            Ok(Inbound::Deal(change)) => Plan::Apply {
                // Deals synced through a CRM connection and pushed by its webhooks are one deal.
                source: source
                    .model
                    .connection_id
                    .clone()
                    .unwrap_or_else(|| source.model.id.clone()),
                program_id: program.id.clone(),
                change,
            },
            Ok(Inbound::Lead(lead)) => Plan::Lead {
                program_id: program.id.clone(),
                lead,
                received_at: receipt.received_at,
            },
            Ok(Inbound::Certification(issued)) => Plan::Certification {
                program_id: program.id.clone(),
                issued,
                received_at: receipt.received_at,
            },
            Ok(Inbound::Fetch) => Plan::Done(Outcome::settled(
                ReceiptStatus::Received,
                Some(HUBSPOT_WAITING.to_string()),
            )),
            Err(err) => failed(err.0),
        }
    }

    fn retry_later(&self, receipt: &webhook_receipt::Model, what: &str) -> Outcome {
        let attempt = receipt.attempts + 1;
        if attempt >= MAX_ATTEMPTS {
            return Outcome::settled(
                ReceiptStatus::Failed,
                Some(format!("{what}; gave up after {attempt} attempts")),
            );
        }
        let delay_ms = 500_i64 << attempt.min(10);
        Outcome {
            status: ReceiptStatus::Received,
            reason: Some(format!("{what}; retrying (attempt {attempt})")),
            deal_id: None,
            available_at_ms: Some(Utc::now().timestamp_millis() + delay_ms),
        }
    }
}

enum Plan {
    Apply {
        source: String,
        program_id: String,
        change: DealChange,
    },
    Billing {
        source: String,
        program_id: String,
        event: BillingEvent,
    },
    Lead {
        program_id: String,
        lead: LeadEngagement,
        received_at: DateTime<Utc>,
    },
    Certification {
        program_id: String,
        issued: CertificationIssued,
        received_at: DateTime<Utc>,
    },
    Done(Outcome),
}

/// Applies one planned receipt inside `conn` (the batch's transaction or a savepoint).
async fn apply_plan(
    conn: &impl ConnectionTrait,
    cache: &mut DealCache,
    program: &program::Model,
    plan: Plan,
    caused: &mut Vec<crate::db::entities::event::ActiveModel>,
) -> Result<(Outcome, Option<AppliedDeal>), DbErr> {
    match plan {
        Plan::Apply { source, change, .. } => {
            let (result, state) =
                apply_deal_change(conn, cache, program, &source, &change, caused).await?;
            Ok((applied_outcome(result), state))
        }
        Plan::Billing { source, event, .. } => {
            let result =
                billing::apply_billing_event(conn, program, &source, &event, caused).await?;
            Ok((
                match result {
                    BillingOutcome::Applied => Outcome::settled(ReceiptStatus::Applied, None),
                    BillingOutcome::Stale(reason) => {
                        Outcome::settled(ReceiptStatus::IgnoredStale, Some(reason))
                    }
                    BillingOutcome::Ignored(reason) => {
                        Outcome::settled(ReceiptStatus::Ignored, Some(reason))
                    }
                },
                None,
            ))
        }
        Plan::Lead {
            lead, received_at, ..
        } => Ok((
            match registration::apply_lead_engaged(conn, program, &lead, received_at, caused)
                .await?
            {
                LeadOutcome::Engaged(_) => Outcome::settled(ReceiptStatus::Applied, None),
                LeadOutcome::Unmatched(reason) => {
                    Outcome::settled(ReceiptStatus::Ignored, Some(reason))
                }
            },
            None,
        )),
        Plan::Certification {
            issued,
            received_at,
            ..
        } => Ok((
            match certifications::apply_certification_issued(
                conn,
                program,
                &issued,
                received_at,
                caused,
            )
            .await?
            {
                IssuedOutcome::Recorded => Outcome::settled(ReceiptStatus::Applied, None),
                IssuedOutcome::Refused(reason) => {
                    Outcome::settled(ReceiptStatus::Failed, Some(reason))
                }
            },
            None,
        )),
        // Reached without the database: the batch loop records it directly.
        Plan::Done(outcome) => Ok((outcome, None)),
    }
}

enum BatchError {
    NeedsSavepoints,
    Db(DbErr),
}

impl From<DbErr> for BatchError {
    fn from(err: DbErr) -> Self {
        BatchError::Db(err)
    }
}

fn applied_outcome(result: ApplyResult) -> Outcome {
    match result {
        ApplyResult::Applied(deal_id) => Outcome {
            status: ReceiptStatus::Applied,
            reason: None,
            deal_id: Some(deal_id),
            available_at_ms: None,
        },
        ApplyResult::Stale(deal_id) => Outcome {
            status: ReceiptStatus::IgnoredStale,
            reason: Some("older than the deal's stored updatedAt: recorded, not applied".into()),
            deal_id: Some(deal_id),
            available_at_ms: None,
        },
        ApplyResult::Invalid(reason) => Outcome::settled(ReceiptStatus::Failed, Some(reason)),
        ApplyResult::UnknownDeal => Outcome::settled(
            ReceiptStatus::Applied,
            Some("deletion of a deal Tandem never mirrored: nothing to do".into()),
        ),
    }
}

/// Writes every receipt's outcome with one UPDATE (`CASE seq WHEN …`; the seqs come from the
/// database, the values are bound).
async fn record_outcomes(
    db: &Db,
    conn: &impl ConnectionTrait,
    outcomes: &[(i64, Outcome)],
) -> Result<(), DbErr> {
    let now = Utc::now();
    for chunk in outcomes.chunks(200) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 5);
        let mut column = |name: &str, value: &dyn Fn(&Outcome) -> Value| {
            let mut sql = format!("{name} = CASE seq");
            for (seq, outcome) in chunk {
                values.push(value(outcome));
                sql.push_str(&format!(
                    " WHEN {seq} THEN {}",
                    db.placeholder(values.len())
                ));
            }
            sql.push_str(" END");
            sql
        };
        let assignments = [
            column("status", &|o| o.status.as_str().into()),
            column("reason", &|o| o.reason.clone().into()),
            column("deal_id", &|o| o.deal_id.clone().into()),
            column("available_at_ms", &|o| o.available_at_ms.into()),
            column("processed_at", &|o| {
                (o.status != ReceiptStatus::Received).then_some(now).into()
            }),
        ];
        let seqs: Vec<String> = chunk.iter().map(|(seq, _)| seq.to_string()).collect();
        let sql = format!(
            "UPDATE webhook_receipts SET {}, attempts = attempts + 1 WHERE seq IN ({})",
            assignments.join(", "),
            seqs.join(",")
        );
        conn.execute_raw(Statement::from_sql_and_values(db.backend(), sql, values))
            .await?;
    }
    Ok(())
}

/// Counts receipts still to apply (due now or later, not parked).
pub async fn backlog(db: &Db) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait;
    webhook_receipt::Entity::find()
        .filter(Expr::cust(PENDING))
        .count(db.reads())
        .await
}
