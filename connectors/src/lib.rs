//! `tandem-connectors`: the neutral Deal model every CRM maps onto, and the trait each CRM
//! client implements. HTTP and mapping only: no database, no GraphQL.
#![forbid(unsafe_code)]

pub mod deal;
pub mod error;
pub mod inbound;
pub mod lenient;
pub mod verify;

pub use deal::{DealStatus, NeutralDeal};
pub use error::{ConnectorError, Result};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// One page of deals from a CRM's incremental listing, with the cursor to resume after it.
#[derive(Debug, Clone)]
pub struct DealPage {
    /// Deals in the CRM's modification-time order.
    pub deals: Vec<NeutralDeal>,
    /// Opaque cursor to pass back for the next page; `None` when the listing is exhausted.
    pub next_cursor: Option<String>,
}

/// A CRM client: lists deals changed since a point in time, one page at a time.
#[async_trait]
pub trait CrmConnector: Send + Sync {
    /// Fetches one page of deals modified at or after `since`, continuing from `cursor`.
    async fn list_deals_since(
        &self,
        since: Option<DateTime<Utc>>,
        cursor: Option<&str>,
    ) -> Result<DealPage>;

    /// Fetches one deal by its CRM id (used by webhook notifications that carry only an id).
    async fn fetch_deal(&self, external_id: &str) -> Result<Option<NeutralDeal>>;
}
