//! The event feed: committed events in commit order, broadcast to this process's
//! subscriptions.

use super::*;

// ---------------------------------------------------------------------------------------------
// The event feed

/// Committed events as they appear, for subscriptions (in-process broadcast).
#[derive(Clone)]
pub struct EventFeed {
    inner: Arc<FeedInner>,
}

struct FeedInner {
    sender: broadcast::Sender<Arc<Vec<event::Model>>>,
    head: watch::Sender<EventPosition>,
    /// Signalled after each published batch (wakes the fan-out).
    published: Notify,
}

impl EventFeed {
    /// Starts the feed at the current end of the stream.
    pub async fn start(db: Db, stop: watch::Receiver<bool>) -> Result<EventFeed, DbErr> {
        let head = latest_position(&db).await?;
        let (sender, _) = broadcast::channel(1024);
        let feed = EventFeed {
            inner: Arc::new(FeedInner {
                sender,
                head: watch::channel(head).0,
                published: Notify::new(),
            }),
        };
        let wake = Arc::new(Notify::new());
        if db.is_postgres() {
            tokio::spawn(listen_for_events(db.clone(), wake.clone(), stop.clone()));
        }
        tokio::spawn(feed.clone().run(db, wake, stop));
        Ok(feed)
    }

    /// Receives every batch published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<event::Model>>> {
        self.inner.sender.subscribe()
    }

    /// The position of the last event published.
    pub fn head(&self) -> EventPosition {
        *self.inner.head.borrow()
    }

    /// Completes after the next published batch.
    pub async fn published(&self) {
        self.inner.published.notified().await
    }

    async fn run(self, db: Db, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        let idle = if db.is_postgres() {
            Duration::from_millis(250)
        } else {
            Duration::from_millis(500)
        };
        let mut position = self.head();
        // After a wake-up that found nothing (on PostgreSQL a commit can become visible a
        // little after its notification), look again soon, backing off.
        let mut eager: u32 = 0;
        loop {
            if *stop.borrow() {
                return;
            }
            match read_visible(db.reads(), position, BATCH).await {
                Ok(rows) if !rows.is_empty() => {
                    position = EventPosition::of(rows.last().expect("non-empty"));
                    let full = rows.len() as u64 == BATCH;
                    self.inner.head.send_replace(position);
                    let _ = self.inner.sender.send(Arc::new(rows));
                    self.inner.published.notify_waiters();
                    eager = 0;
                    if full {
                        continue;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "reading new events failed");
                    eager = 0;
                }
            }
            let pause = if eager > 0 {
                eager -= 1;
                Duration::from_millis(2 << (6 - eager.min(6)))
            } else {
                idle
            };
            tokio::select! {
                _ = db.committed() => eager = 6,
                _ = wake.notified() => eager = 6,
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// PostgreSQL: wakes the feed on `NOTIFY tandem_events` (sent at commit by a trigger on
/// `events`), and whenever the listener (re)connects.
async fn listen_for_events(db: Db, wake: Arc<Notify>, stop: watch::Receiver<bool>) {
    let wake = &wake;
    db.listen(
        "tandem_events",
        stop,
        || async { wake.notify_one() },
        |_| async { wake.notify_one() },
    )
    .await
}

/// The position of the newest committed event (the start of the stream when empty).
pub(super) async fn latest_position(db: &Db) -> Result<EventPosition, DbErr> {
    let postgres = db.is_postgres();
    let mut query = events::committed_after(event::Entity::find(), postgres, None);
    if postgres {
        query = query.order_by_desc(event::Column::TxId);
    }
    Ok(query
        .order_by_desc(event::Column::Seq)
        .one(db.reads())
        .await?
        .map(|e| EventPosition::of(&e))
        .unwrap_or_default())
}

/// Committed events after `after`, unscoped, oldest first.
pub(super) async fn read_visible(
    conn: &impl ConnectionTrait,
    after: EventPosition,
    limit: u64,
) -> Result<Vec<event::Model>, DbErr> {
    let postgres = conn.get_database_backend() == sea_orm::DatabaseBackend::Postgres;
    let query = events::committed_after(event::Entity::find(), postgres, Some(after));
    events::in_stream_order(query, postgres)
        .limit(limit)
        .all(conn)
        .await
}

// ---------------------------------------------------------------------------------------------
// Fan-out
