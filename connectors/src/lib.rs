//! `tandem-connectors`: the neutral Deal model every CRM maps onto, and the trait each CRM
//! client implements. HTTP and mapping only: no database, no GraphQL.
#![forbid(unsafe_code)]

pub mod deal;
pub mod error;
pub mod http;
pub mod hubspot;
pub mod inbound;
pub mod lenient;
pub mod money;
pub mod net;
pub mod pipedrive;
pub mod salesforce;
pub mod stripe;
pub mod verify;

/// A file of `tests/fixtures/crm/`, parsed (for the clients' unit tests; the integration tests
/// have the same helper in `tests/common`).
#[cfg(test)]
fn test_fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/crm/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

pub use deal::{DealStatus, NeutralDeal};
pub use error::{ConnectorError, Result};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// One page of a sync: the deals, and the cursor to checkpoint once they are applied.
#[derive(Debug, Clone)]
pub struct DealPage {
    /// Deals in the CRM's modification-time order (repeats of already-applied changes left out).
    pub deals: Vec<NeutralDeal>,
    /// Where to resume after this page (stored durably by the caller once the deals are applied).
    pub cursor: String,
    /// Whether more pages follow now; `false` when the sync has caught up (the cursor then
    /// starts the next incremental pass).
    pub more: bool,
}

/// A CRM client: syncs deals page by page from a durable cursor, and fetches single deals.
#[async_trait]
pub trait CrmConnector: Send + Sync {
    /// Fetches the page after `cursor` (`None`: the first page of a full backfill).
    async fn sync_page(&self, cursor: Option<&str>) -> Result<DealPage>;

    /// Fetches one deal by its CRM id (used by webhook notifications that carry only an id);
    /// `None` when the CRM does not know it.
    async fn fetch_deal(&self, external_id: &str) -> Result<Option<NeutralDeal>>;

    /// Creates (or finds) the first CRM object of a pushed referral (HubSpot company,
    /// Pipedrive organization, Salesforce Lead); returns its id.
    async fn push_primary(&self, referral: &ReferralPush) -> Result<String>;

    /// Creates the second object, tied to the first (HubSpot contact, Pipedrive lead); `None`
    /// when the CRM needs none.
    async fn push_secondary(
        &self,
        referral: &ReferralPush,
        primary_id: &str,
    ) -> Result<Option<String>>;
}

/// A change already applied, as (CRM id, modification time in ms): what an overlapping pass
/// skips when the CRM returns it again.
pub type Seen = (String, i64);

/// The changes to remember for the next pass starting at `since`: those of `previous` and
/// `deals` modified at or after it (bounded: re-applying a change is harmless, since the
/// mirror ignores updates that are not newer).
pub fn seen_since(
    previous: Vec<Seen>,
    deals: &[NeutralDeal],
    since: Option<DateTime<Utc>>,
) -> Vec<Seen> {
    let mut seen: Vec<Seen> = previous
        .into_iter()
        .chain(deals.iter().map(seen_of))
        .filter(|(_, ms)| since.is_none_or(|s| *ms >= s.timestamp_millis()))
        .collect();
    seen.sort();
    seen.dedup();
    seen.truncate(5_000);
    seen
}

/// `deals` without the changes in `seen`.
pub fn unseen(deals: &[NeutralDeal], seen: &[Seen]) -> Vec<NeutralDeal> {
    let skip: std::collections::HashSet<&Seen> = seen.iter().collect();
    deals
        .iter()
        .filter(|d| !skip.contains(&seen_of(d)))
        .cloned()
        .collect()
}

fn seen_of(deal: &NeutralDeal) -> Seen {
    (deal.external_id.clone(), deal.updated_at.timestamp_millis())
}

/// Where a sync that pages by modification time stands (Salesforce, Pipedrive): one pass reads
/// every change since `since`, page by page; the next pass starts an overlap window before the
/// newest change seen, skipping what it already applied.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimeCursor {
    /// Lower bound (inclusive) of the CRM's modification time (`None`: everything, a backfill).
    pub since: Option<DateTime<Utc>>,
    /// The CRM's handle of the next page in this pass (Pipedrive `next_cursor`, Salesforce
    /// `nextRecordsUrl`).
    #[serde(alias = "next")]
    pub page: Option<String>,
    /// Changes applied at or after `since`: skipped when seen again.
    pub seen: Vec<Seen>,
    /// The newest change seen in this pass.
    pub newest: Option<DateTime<Utc>>,
}

impl TimeCursor {
    /// A stored cursor (`None`: the start of a backfill).
    pub fn load(stored: Option<&str>, crm: &str) -> Result<TimeCursor> {
        match stored {
            None => Ok(TimeCursor::default()),
            Some(text) => serde_json::from_str(text)
                .map_err(|e| ConnectorError::Malformed(format!("stored {crm} cursor: {e}"))),
        }
    }

    /// The page made of `all` (the deals the CRM returned; those already applied are left
    /// out) and the cursor after it: on to `next`, or, when the pass is over, a new pass from
    /// `overlap` before the newest change.
    pub fn after(
        self,
        all: Vec<NeutralDeal>,
        next: Option<String>,
        overlap: chrono::Duration,
    ) -> DealPage {
        let deals = unseen(&all, &self.seen);
        let newest = all.iter().map(|d| d.updated_at).chain(self.newest).max();
        let (cursor, more) = match next {
            Some(page) => (
                TimeCursor {
                    page: Some(page),
                    newest,
                    ..self
                },
                true,
            ),
            None => {
                let since = newest.or(self.since).map(|n| n - overlap);
                let seen = seen_since(self.seen, &all, since);
                (
                    TimeCursor {
                        since,
                        page: None,
                        seen,
                        newest: None,
                    },
                    false,
                )
            }
        };
        DealPage {
            deals,
            cursor: serde_json::to_string(&cursor).expect("cursors serialise"),
            more,
        }
    }
}

/// A referral to create in a CRM.
#[derive(Debug, Clone)]
pub struct ReferralPush {
    /// Company name.
    pub company_name: String,
    /// Company domain, when known.
    pub company_domain: Option<String>,
    /// Contact name, when known.
    pub contact_name: Option<String>,
    /// Contact email, when known.
    pub contact_email: Option<String>,
    /// The partner's referral code, written to the CRM's referral-code field.
    pub referral_code: String,
}

impl ReferralPush {
    /// The contact name split into (first, last).
    pub fn contact_names(&self) -> (String, String) {
        match self.contact_name.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => match name.rsplit_once(' ') {
                Some((first, last)) => (first.to_string(), last.to_string()),
                None => (String::new(), name.to_string()),
            },
            _ => (String::new(), String::new()),
        }
    }
}
