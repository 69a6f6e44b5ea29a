//! The durable inbox of inbound webhooks. Verified requests are group-committed here (many
//! concurrent requests share one transaction and one fsync) *before* they are acknowledged; the
//! worker then applies receipts in arrival order, each exactly once: claims run inside the
//! applying transaction (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the writer lock on SQLite), so
//! a crash rolls a half-applied batch back to RECEIVED, and what is in the inbox on start is
//! applied.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_graphql::Enum;
use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement, TransactionTrait, Value,
    sea_query::{Expr, ExprTrait, LockBehavior, LockType},
};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::{
    db::{
        Db,
        entities::{program, webhook_receipt},
    },
    domain::{
        deals::{ApplyResult, apply_deal_change},
        ids::new_id,
        webhooks::{Disposition, HUBSPOT_WAITING, ReceivedEvent, Webhooks},
    },
    error::{ApiError, ApiResult},
};

/// Where a receipt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(name = "WebhookReceiptStatus")]
pub enum ReceiptStatus {
    /// Stored, not yet applied (or waiting, see `reason`).
    Received,
    /// Applied to the deal mirror.
    Applied,
    /// Older than the stored deal: recorded, not applied.
    IgnoredStale,
    /// A repeat of a provider event already received: acknowledged, not applied.
    Duplicate,
    /// Cannot be applied; `reason` says why.
    Failed,
}

impl ReceiptStatus {
    /// Database form.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptStatus::Received => "RECEIVED",
            ReceiptStatus::Applied => "APPLIED",
            ReceiptStatus::IgnoredStale => "IGNORED_STALE",
            ReceiptStatus::Duplicate => "DUPLICATE",
            ReceiptStatus::Failed => "FAILED",
        }
    }

    /// Parses the database form.
    pub fn parse(s: &str) -> Option<Self> {
        [
            ReceiptStatus::Received,
            ReceiptStatus::Applied,
            ReceiptStatus::IgnoredStale,
            ReceiptStatus::Duplicate,
            ReceiptStatus::Failed,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }
}

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

/// Receipts gathered into one transaction at most.
const MAX_GROUP: usize = 512;
/// Rows per INSERT statement (12 bound values each; well under both databases' limits).
const ROWS_PER_INSERT: usize = 256;

/// The inbox writer: hands receipts to the group committer and wakes the worker.
#[derive(Clone)]
pub struct Inbox {
    sender: mpsc::Sender<Pending>,
    notify: Arc<Notify>,
}

impl Inbox {
    /// Starts the group committer on `db`.
    pub fn start(db: Db) -> Inbox {
        let (sender, receiver) = mpsc::channel(4096);
        let notify = Arc::new(Notify::new());
        tokio::spawn(group_committer(db, receiver, notify.clone()));
        Inbox { sender, notify }
    }

    /// Wakes the worker when receipts were committed.
    pub fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
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

async fn group_committer(db: Db, mut receiver: mpsc::Receiver<Pending>, notify: Arc<Notify>) {
    while let Some(first) = receiver.recv().await {
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
        match commit_receipts(&db, &all).await {
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
        let mut sql = String::from(
            "INSERT INTO webhook_receipts (id, source_id, program_id, provider_event_id, \
             dedupe_key, payload, status, reason, attempts, available_at_ms, received_at, \
             processed_at) VALUES ",
        );
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
            "INSERT INTO webhook_receipts (id, source_id, program_id, provider_event_id, \
             dedupe_key, payload, status, reason, attempts, available_at_ms, received_at, \
             processed_at) VALUES ({}, {}, {}, {}, NULL, {}, 'DUPLICATE', {}, 0, NULL, {}, {})",
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

/// Receipts applied per transaction.
const APPLY_BATCH: u64 = 200;
/// A receipt whose application keeps failing on database errors is given up after this many
/// attempts (its status becomes FAILED).
const MAX_ATTEMPTS: i32 = 8;

/// Applies inbox receipts.
#[derive(Clone)]
pub struct InboxWorker {
    db: Db,
    webhooks: Webhooks,
    notify: Arc<Notify>,
}

/// What happened to one receipt.
struct Outcome {
    status: ReceiptStatus,
    reason: Option<String>,
    deal_id: Option<String>,
    available_at_ms: Option<i64>,
}

impl InboxWorker {
    /// A worker over `db`, woken by `notify`.
    pub fn new(db: Db, webhooks: Webhooks, notify: Arc<Notify>) -> InboxWorker {
        InboxWorker {
            db,
            webhooks,
            notify,
        }
    }

    /// Applies receipts until the inbox has nothing due, waiting for new ones (or polling once a
    /// second, for receipts committed by other instances and retries) until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let notified = self.notify.notified();
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
    pub async fn apply_due(&self) -> Result<usize, DbErr> {
        let now_ms = Utc::now().timestamp_millis();
        let tx = self.db.begin_write().await?;
        let mut claim = webhook_receipt::Entity::find()
            .filter(webhook_receipt::Column::Status.eq(ReceiptStatus::Received.as_str()))
            .filter(webhook_receipt::Column::AvailableAtMs.lte(now_ms))
            .order_by_asc(webhook_receipt::Column::Seq)
            .limit(APPLY_BATCH);
        if self.db.is_postgres() {
            claim = claim.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let receipts = claim.all(&*tx).await?;
        if receipts.is_empty() {
            return Ok(0);
        }
        let mut programs: HashMap<String, program::Model> = HashMap::new();
        for receipt in &receipts {
            if !programs.contains_key(&receipt.program_id)
                && let Some(found) = program::Entity::find_by_id(receipt.program_id.clone())
                    .one(&*tx)
                    .await?
            {
                programs.insert(found.id.clone(), found);
            }
        }
        let count = receipts.len();
        for receipt in receipts {
            let outcome = self.apply_one(&tx, &programs, &receipt).await?;
            let processed = (outcome.status != ReceiptStatus::Received).then(Utc::now);
            webhook_receipt::Entity::update_many()
                .col_expr(
                    webhook_receipt::Column::Status,
                    Expr::value(outcome.status.as_str()),
                )
                .col_expr(webhook_receipt::Column::Reason, Expr::value(outcome.reason))
                .col_expr(
                    webhook_receipt::Column::DealId,
                    Expr::value(outcome.deal_id),
                )
                .col_expr(
                    webhook_receipt::Column::AvailableAtMs,
                    Expr::value(outcome.available_at_ms),
                )
                .col_expr(webhook_receipt::Column::ProcessedAt, Expr::value(processed))
                .col_expr(
                    webhook_receipt::Column::Attempts,
                    Expr::col(webhook_receipt::Column::Attempts).add(1),
                )
                .filter(webhook_receipt::Column::Seq.eq(receipt.seq))
                .exec(&*tx)
                .await?;
        }
        tx.commit().await?;
        Ok(count)
    }

    async fn apply_one(
        &self,
        tx: &sea_orm::DatabaseTransaction,
        programs: &HashMap<String, program::Model>,
        receipt: &webhook_receipt::Model,
    ) -> Result<Outcome, DbErr> {
        let failed = |reason: String| Outcome {
            status: ReceiptStatus::Failed,
            reason: Some(reason),
            deal_id: None,
            available_at_ms: None,
        };
        let source = match self.webhooks.source(&receipt.source_id).await {
            Ok(Some(source)) => source,
            Ok(None) => return Ok(failed("the webhook source no longer exists".into())),
            Err(err) => {
                tracing::error!(receipt = %receipt.id, error = ?err.message(), "cannot open webhook source");
                return Ok(self.retry_later(receipt, "internal error opening the source"));
            }
        };
        let Some(program) = programs.get(&receipt.program_id) else {
            return Ok(failed("the program no longer exists".into()));
        };
        let change = match source.change(
            receipt.payload.as_bytes(),
            &program.currency,
            receipt.received_at,
        ) {
            Ok(Some(change)) => change,
            Ok(None) => {
                return Ok(Outcome {
                    status: ReceiptStatus::Received,
                    reason: Some(HUBSPOT_WAITING.to_string()),
                    deal_id: None,
                    available_at_ms: None,
                });
            }
            Err(err) => return Ok(failed(err.0)),
        };
        // Deals synced through a CRM connection and pushed by its webhooks are one deal.
        let deal_source = source
            .model
            .connection_id
            .clone()
            .unwrap_or_else(|| source.model.id.clone());
        let savepoint = tx.begin().await?;
        match apply_deal_change(&savepoint, program, &deal_source, &change).await {
            Ok(result) => {
                savepoint.commit().await?;
                Ok(match result {
                    ApplyResult::Applied(deal_id) => Outcome {
                        status: ReceiptStatus::Applied,
                        reason: None,
                        deal_id: Some(deal_id),
                        available_at_ms: None,
                    },
                    ApplyResult::Stale(deal_id) => Outcome {
                        status: ReceiptStatus::IgnoredStale,
                        reason: Some(
                            "older than the deal's stored updatedAt: recorded, not applied".into(),
                        ),
                        deal_id: Some(deal_id),
                        available_at_ms: None,
                    },
                    ApplyResult::UnknownDeal => Outcome {
                        status: ReceiptStatus::Applied,
                        reason: Some(
                            "deletion of a deal Tandem never mirrored: nothing to do".into(),
                        ),
                        deal_id: None,
                        available_at_ms: None,
                    },
                })
            }
            Err(err) => {
                savepoint.rollback().await?;
                tracing::warn!(receipt = %receipt.id, error = %err, "applying a webhook receipt failed");
                Ok(self.retry_later(receipt, "internal error while applying"))
            }
        }
    }

    fn retry_later(&self, receipt: &webhook_receipt::Model, what: &str) -> Outcome {
        let attempt = receipt.attempts + 1;
        if attempt >= MAX_ATTEMPTS {
            return Outcome {
                status: ReceiptStatus::Failed,
                reason: Some(format!("{what}; gave up after {attempt} attempts")),
                deal_id: None,
                available_at_ms: None,
            };
        }
        let delay_ms = 500_i64 << Ord::min(attempt, 10);
        Outcome {
            status: ReceiptStatus::Received,
            reason: Some(format!("{what}; retrying (attempt {attempt})")),
            deal_id: None,
            available_at_ms: Some(Utc::now().timestamp_millis() + delay_ms),
        }
    }
}

/// Counts receipts still to apply (due now or later, not parked).
pub async fn backlog(db: &Db) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait;
    webhook_receipt::Entity::find()
        .filter(webhook_receipt::Column::Status.eq(ReceiptStatus::Received.as_str()))
        .filter(webhook_receipt::Column::AvailableAtMs.is_not_null())
        .count(&db.conn)
        .await
}
