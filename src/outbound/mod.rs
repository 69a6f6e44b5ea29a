//! Events out: the in-process event feed (GraphQL subscriptions), the fan-out of committed
//! events to webhook endpoints, and the delivery worker.
//!
//! - The **feed** reads committed events in commit order (see [`events`]) and broadcasts them.
//!   It wakes when this process commits a write, on PostgreSQL also on `NOTIFY tandem_events`
//!   (a trigger on `events`, so other instances' writes wake it), and polls as a fallback.
//! - The **fan-out** keeps a durable cursor (`event_cursors`): in one transaction it reads the
//!   events after it, inserts a PENDING delivery per matching endpoint (unique per endpoint and
//!   event) and moves the cursor. On PostgreSQL the cursor row is locked, so instances take
//!   turns.
//! - The **delivery worker** claims due deliveries by moving them one claim lease ahead
//!   (`FOR UPDATE SKIP LOCKED` on PostgreSQL), posts them signed per Standard Webhooks, and
//!   records outcomes in batches. A crashed worker's claims fall due when the lease runs out.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, Statement, Value,
};
use secrecy::ExposeSecret;
use serde_json::json;
use tandem_connectors::verify::{decode_standard_secret, sign_standard};
use tokio::sync::{Notify, Semaphore, broadcast, mpsc, watch};

use crate::{
    config::Config,
    db::{
        Db,
        entities::{event, webhook_delivery, webhook_endpoint},
    },
    domain::{
        auth::principals_of_keys,
        endpoints::{
            DeliveryStatus, EndpointMatcher, EndpointStatus, check_target_url, new_delivery,
        },
        events::{self, EventPosition, FANOUT_CURSOR},
        ids::new_id,
        secrets::SecretKey,
    },
    error::ApiError,
    metrics::Metrics,
};

/// Response bodies are read up to this many bytes, then dropped.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Events read per feed or fan-out batch.
const BATCH: u64 = 500;
/// Deliveries claimed at once by a worker.
const CLAIM_BATCH: u64 = 256;
/// Requests in flight per worker across all endpoints.
const MAX_IN_FLIGHT: usize = 1024;

/// Delivery settings (from [`Config`]).
#[derive(Debug, Clone)]
pub struct OutboundSettings {
    /// Delays before each retry.
    pub retry_schedule: Vec<Duration>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Continuous failure after which an endpoint is disabled.
    pub disable_after: Duration,
    /// Deliveries per second per endpoint.
    pub rate_limit: u32,
    /// Requests in flight per endpoint.
    pub max_in_flight: u32,
    /// Whether loopback/private/link-local targets are allowed.
    pub allow_private: bool,
    /// Claim lease.
    pub claim: Duration,
}

impl OutboundSettings {
    /// The settings of a (validated) configuration.
    pub fn from_config(config: &Config) -> OutboundSettings {
        OutboundSettings {
            retry_schedule: config.retry_schedule().unwrap_or_default(),
            timeout: Duration::from_millis(config.webhook_timeout_ms),
            disable_after: config.disable_after(),
            rate_limit: config.webhook_rate_limit,
            max_in_flight: config.webhook_max_in_flight,
            allow_private: config.webhook_allow_private_targets,
            claim: Duration::from_secs(config.webhook_claim_secs),
        }
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

mod delivery;
mod fanout;
mod feed;
mod rules;

pub use delivery::{DeliveryWorker, claim_due, pending_deliveries};
pub use fanout::Fanout;
pub use feed::EventFeed;
pub use rules::{envelope, retry_delay};
