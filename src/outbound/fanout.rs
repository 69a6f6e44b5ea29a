//! The fan-out: committed events become PENDING deliveries of the matching endpoints.

use super::{
    feed::{latest_position, read_visible},
    *,
};

/// Turns committed events into deliveries, durably, once.
#[derive(Clone)]
pub struct Fanout {
    db: Db,
}

impl Fanout {
    /// A fan-out over `db`.
    pub fn new(db: Db) -> Fanout {
        Fanout { db }
    }

    /// Fans out until caught up; returns the deliveries created.
    pub async fn catch_up(&self) -> Result<u64, ApiError> {
        let mut total = 0;
        loop {
            let (events, created) = self.pass().await?;
            total += created;
            if events < BATCH {
                return Ok(total);
            }
        }
    }

    /// The cursor (`None` before the first pass); with `lock`, held until the transaction ends
    /// (PostgreSQL; on SQLite the writer lock serialises passes).
    async fn cursor(
        &self,
        conn: &impl ConnectionTrait,
        lock: bool,
    ) -> Result<Option<EventPosition>, ApiError> {
        let db = &self.db;
        let lock = if lock && db.is_postgres() {
            " FOR UPDATE"
        } else {
            ""
        };
        let row = conn
            .query_one_raw(Statement::from_sql_and_values(
                db.backend(),
                format!(
                    "SELECT tx_id, seq FROM event_cursors WHERE name = {}{lock}",
                    db.numbered(1)
                ),
                vec![FANOUT_CURSOR.into()],
            ))
            .await?;
        Ok(match row {
            Some(row) => Some(EventPosition {
                tx: row.try_get("", "tx_id")?,
                seq: row.try_get("", "seq")?,
            }),
            None => None,
        })
    }

    /// One batch: returns (events read, deliveries created).
    async fn pass(&self) -> Result<(u64, u64), ApiError> {
        let db = &self.db;
        // Nothing after the cursor: done, without a write transaction. (An idle fan-out then
        // takes no lock and, on PostgreSQL, no transaction id each second, so the data version
        // that kept answers hang on stays put.) An event committed meanwhile wakes the next pass.
        if let Some(cursor) = self.cursor(db.reads(), false).await?
            && read_visible(db.reads(), cursor, 1).await?.is_empty()
        {
            return Ok((0, 0));
        }
        let backend = db.backend();
        let tx = db.begin_write().await?;
        let Some(cursor) = self.cursor(&*tx, true).await? else {
            // First start: begin at the end of the stream (endpoints only receive events
            // from after their creation anyway).
            let head = latest_position(db).await?;
            tx.execute_raw(Statement::from_sql_and_values(
                backend,
                format!(
                    "INSERT INTO event_cursors (name, tx_id, seq, updated_at) VALUES ({}, {}, {}, {}) \
                     ON CONFLICT (name) DO NOTHING",
                    db.numbered(1),
                    db.numbered(2),
                    db.numbered(3),
                    db.numbered(4)
                ),
                vec![
                    FANOUT_CURSOR.into(),
                    head.tx.into(),
                    head.seq.into(),
                    Utc::now().into(),
                ],
            ))
            .await?;
            tx.commit().await?;
            return Ok((0, 0));
        };
        let events = read_visible(&*tx, cursor, BATCH).await?;
        let Some(last) = events.last() else {
            return Ok((0, 0));
        };
        let last = EventPosition::of(last);
        let matchers = enabled_matchers(db).await?;
        let due = now_ms();
        let mut deliveries = Vec::new();
        for event in &events {
            for matcher in &matchers {
                if matcher.receives(event) {
                    deliveries.push(new_delivery(&matcher.endpoint_id, event, due));
                }
            }
        }
        let created = deliveries.len() as u64;
        crate::db::insert_all(
            &*tx,
            deliveries,
            Some(
                sea_orm::sea_query::OnConflict::columns([
                    webhook_delivery::Column::EndpointId,
                    webhook_delivery::Column::EventId,
                ])
                .do_nothing()
                .to_owned(),
            ),
        )
        .await?;
        tx.execute_raw(Statement::from_sql_and_values(
            backend,
            format!(
                "UPDATE event_cursors SET tx_id = {}, seq = {}, updated_at = {} WHERE name = {}",
                db.numbered(1),
                db.numbered(2),
                db.numbered(3),
                db.numbered(4)
            ),
            vec![
                last.tx.into(),
                last.seq.into(),
                Utc::now().into(),
                FANOUT_CURSOR.into(),
            ],
        ))
        .await?;
        tx.commit().await?;
        Ok((events.len() as u64, created))
    }

    /// Runs until stopped: a pass whenever the feed publishes (and every second).
    pub async fn run(
        self,
        feed: EventFeed,
        worker_wake: Arc<Notify>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            match self.catch_up().await {
                Ok(created) if created > 0 => worker_wake.notify_one(),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = ?err, "webhook fan-out failed"),
            }
            tokio::select! {
                _ = feed.published() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Matchers of every ENABLED endpoint whose owner key is not revoked.
async fn enabled_matchers(db: &Db) -> Result<Vec<EndpointMatcher>, ApiError> {
    let endpoints = webhook_endpoint::Entity::find()
        .filter(webhook_endpoint::Column::Status.eq(EndpointStatus::Enabled.as_str()))
        .all(db.reads())
        .await?;
    if endpoints.is_empty() {
        return Ok(Vec::new());
    }
    let mut owners = principals_of_keys(
        db,
        endpoints.iter().map(|e| e.owner_key_id.clone()).collect(),
    )
    .await?;
    let mut matchers = Vec::new();
    for endpoint in &endpoints {
        if let Some(owner) = owners.get(&endpoint.owner_key_id) {
            matchers.push(EndpointMatcher::new(endpoint, owner.clone())?);
        }
    }
    owners.clear();
    Ok(matchers)
}

// ---------------------------------------------------------------------------------------------
// Delivery
