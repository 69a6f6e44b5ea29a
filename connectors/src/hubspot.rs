//! HubSpot CRM v3: a backfill with `GET /crm/v3/objects/deals` (`after` paging), then
//! incremental `POST /crm/v3/objects/deals/search` on `hs_lastmodifieddate` ascending, with an
//! overlap window and de-duplication, restarting the search from the last timestamp before the
//! 10,000-result ceiling. Company domains and contact emails come through the association and
//! batch-read endpoints.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    CrmConnector, DealPage, ReferralPush,
    deal::{DealStatus, NeutralDeal},
    error::{ConnectorError, Result},
    http::CrmHttp,
    lenient, seen_since, unseen,
};

/// HubSpot's search endpoints return at most this many results per query.
pub const SEARCH_CEILING: u64 = 10_000;
/// The custom deal property carrying Tandem's referral code (DESIGN §7).
pub const REFERRAL_CODE_PROPERTY: &str = "tandem_referral_code";

/// Where a HubSpot sync stands (stored as the connection's cursor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum Cursor {
    /// Listing every deal.
    Backfill {
        /// The `after` of the next page.
        after: Option<String>,
        /// The newest modification seen so far.
        newest: Option<DateTime<Utc>>,
    },
    /// Searching deals modified since `since`.
    Incremental {
        /// Lower bound (inclusive) of `hs_lastmodifieddate`.
        since: DateTime<Utc>,
        /// The `after` of the next page of this search.
        after: Option<String>,
        /// Deals already applied at or after `since` (id and modification in ms): skipped
        /// when the overlap returns them again.
        seen: Vec<(String, i64)>,
        /// The newest modification seen in this pass.
        newest: Option<DateTime<Utc>>,
    },
}

/// A HubSpot connection.
pub struct HubSpot {
    http: CrmHttp,
    default_currency: String,
    page_size: u32,
    overlap: Duration,
}

const PROPERTIES: &[&str] = &[
    "dealname",
    "amount",
    "deal_currency_code",
    "dealstage",
    "pipeline",
    "closedate",
    "hs_is_closed",
    "hs_is_closed_won",
    "createdate",
    "hs_lastmodifieddate",
    REFERRAL_CODE_PROPERTY,
];

impl HubSpot {
    /// A HubSpot client; deals without `deal_currency_code` are in `default_currency`.
    pub fn new(http: CrmHttp, default_currency: &str) -> HubSpot {
        HubSpot {
            http,
            default_currency: default_currency.to_string(),
            page_size: 100,
            overlap: Duration::seconds(60),
        }
    }

    /// Deals per page (HubSpot allows up to 100 for list and search).
    pub fn page_size(mut self, n: u32) -> HubSpot {
        self.page_size = n.clamp(1, 100);
        self
    }

    /// How far each incremental pass reaches back before the newest change seen (HubSpot's
    /// search index trails writes).
    pub fn overlap(mut self, overlap: Duration) -> HubSpot {
        self.overlap = overlap;
        self
    }

    /// The HTTP layer (to read a refreshed API base).
    pub fn http(&self) -> &CrmHttp {
        &self.http
    }

    async fn backfill(
        &self,
        after: Option<String>,
        newest: Option<DateTime<Utc>>,
    ) -> Result<DealPage> {
        let mut query = vec![
            ("limit", self.page_size.to_string()),
            ("properties", PROPERTIES.join(",")),
            ("archived", "false".to_string()),
        ];
        if let Some(after) = &after {
            query.push(("after", after.clone()));
        }
        let body = self
            .http
            .json(Method::GET, "/crm/v3/objects/deals", &query, None)
            .await?;
        let results = results(&body)?;
        let deals = self.map_all(results).await?;
        let newest = newest_of(newest, &deals);
        let next_after = next_after(&body);
        let (cursor, more) = match next_after {
            Some(after) => (
                Cursor::Backfill {
                    after: Some(after),
                    newest,
                },
                true,
            ),
            None => (self.caught_up(newest, &deals, &[]), false),
        };
        Ok(DealPage {
            deals,
            cursor: encode(&cursor),
            more,
        })
    }

    /// The cursor of the next incremental pass: from the newest change minus the overlap,
    /// remembering what was applied since then.
    fn caught_up(
        &self,
        newest: Option<DateTime<Utc>>,
        deals: &[NeutralDeal],
        previous: &[(String, i64)],
    ) -> Cursor {
        let newest = newest.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        let since = newest - self.overlap;
        let seen = seen_since(previous.to_vec(), deals, Some(since));
        Cursor::Incremental {
            since,
            after: None,
            seen,
            newest: None,
        }
    }

    async fn search(
        &self,
        since: DateTime<Utc>,
        after: Option<String>,
        seen: Vec<(String, i64)>,
        newest: Option<DateTime<Utc>>,
    ) -> Result<DealPage> {
        let mut body = json!({
            "filterGroups": [{"filters": [{
                "propertyName": "hs_lastmodifieddate",
                "operator": "GTE",
                "value": since.timestamp_millis().to_string(),
            }]}],
            "sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}],
            "properties": PROPERTIES,
            "limit": self.page_size,
        });
        if let Some(after) = &after {
            body["after"] = json!(after);
        }
        let answer = self
            .http
            .json(
                Method::POST,
                "/crm/v3/objects/deals/search",
                &[],
                Some(&body),
            )
            .await?;
        let results = results(&answer)?;
        let all = self.map_all(results).await?;
        let deals = unseen(&all, &seen);
        let newest = newest_of(newest, &all);
        let next = next_after(&answer);
        let (cursor, more) = match next {
            Some(next_after) => {
                let offset: u64 = next_after.parse().unwrap_or(0);
                if offset + u64::from(self.page_size) > SEARCH_CEILING {
                    // The search cannot page past 10,000 results: start a new search from
                    // the last modification time reached (same-time deals are de-duplicated).
                    let last = all.last().map(|d| d.updated_at).unwrap_or(since);
                    let seen_now: Vec<(String, i64)> = all
                        .iter()
                        .filter(|d| d.updated_at == last)
                        .map(|d| (d.external_id.clone(), d.updated_at.timestamp_millis()))
                        .collect();
                    (
                        Cursor::Incremental {
                            since: last,
                            after: None,
                            seen: seen_now,
                            newest,
                        },
                        true,
                    )
                } else {
                    (
                        Cursor::Incremental {
                            since,
                            after: Some(next_after),
                            seen,
                            newest,
                        },
                        true,
                    )
                }
            }
            None => {
                let base = newest
                    .map(|n| n.max(since + self.overlap))
                    .or(Some(since + self.overlap));
                (self.caught_up(base, &all, &seen), false)
            }
        };
        Ok(DealPage {
            deals,
            cursor: encode(&cursor),
            more,
        })
    }

    /// Maps a page of deal objects, reading their companies' domains and contacts' emails.
    async fn map_all(&self, objects: &[Value]) -> Result<Vec<NeutralDeal>> {
        let ids: Vec<String> = objects
            .iter()
            .filter_map(|o| lenient::text(o.get("id")))
            .collect();
        let companies = self.associated(&ids, "companies").await?;
        let contacts = self.associated(&ids, "contacts").await?;
        let domains = self
            .read_property(
                "companies",
                &companies.values().flatten().cloned().collect::<Vec<_>>(),
                "domain",
            )
            .await?;
        let emails = self
            .read_property(
                "contacts",
                &contacts.values().flatten().cloned().collect::<Vec<_>>(),
                "email",
            )
            .await?;
        objects
            .iter()
            .map(|o| {
                let id = lenient::text(o.get("id")).unwrap_or_default();
                let domain = companies
                    .get(&id)
                    .and_then(|c| c.iter().find_map(|c| domains.get(c).cloned()));
                let company_id = companies.get(&id).and_then(|c| c.first().cloned());
                let mut contact_emails: Vec<String> = contacts
                    .get(&id)
                    .map(|c| c.iter().filter_map(|c| emails.get(c).cloned()).collect())
                    .unwrap_or_default();
                contact_emails.sort();
                contact_emails.dedup();
                map_deal(o, domain, contact_emails, &self.default_currency)
                    .map(|deal| NeutralDeal { company_id, ..deal })
            })
            .collect()
    }

    /// Deal id → associated object ids (v4 batch association read).
    async fn associated(
        &self,
        deal_ids: &[String],
        to: &str,
    ) -> Result<HashMap<String, Vec<String>>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        if deal_ids.is_empty() {
            return Ok(out);
        }
        let body =
            json!({"inputs": deal_ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()});
        let answer = self
            .http
            .json(
                Method::POST,
                &format!("/crm/v4/associations/deals/{to}/batch/read"),
                &[],
                Some(&body),
            )
            .await?;
        for result in answer
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(from) = lenient::text(result.get("from").and_then(|f| f.get("id"))) else {
                continue;
            };
            let targets = result
                .get("to")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|t| lenient::text(t.get("toObjectId").or_else(|| t.get("id"))));
            out.entry(from).or_default().extend(targets);
        }
        Ok(out)
    }

    /// Object id → one property (batch read), for companies or contacts.
    async fn read_property(
        &self,
        object: &str,
        ids: &[String],
        property: &str,
    ) -> Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        let mut ids: Vec<String> = ids.to_vec();
        ids.sort();
        ids.dedup();
        for chunk in ids.chunks(100) {
            let body = json!({
                "properties": [property],
                "inputs": chunk.iter().map(|id| json!({"id": id})).collect::<Vec<_>>(),
            });
            let answer = self
                .http
                .json(
                    Method::POST,
                    &format!("/crm/v3/objects/{object}/batch/read"),
                    &[],
                    Some(&body),
                )
                .await?;
            for result in answer
                .get("results")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let (Some(id), Some(value)) = (
                    lenient::text(result.get("id")),
                    lenient::text(result.get("properties").and_then(|p| p.get(property))),
                ) {
                    out.insert(id, value);
                }
            }
        }
        Ok(out)
    }
}

impl HubSpot {
    /// The company for a referral: an existing one with its domain, else a new one carrying
    /// the referral code. Returns its id.
    pub async fn ensure_company(&self, referral: &ReferralPush) -> Result<String> {
        if let Some(domain) = &referral.company_domain {
            let body = json!({
                "filterGroups": [{"filters": [{"propertyName": "domain", "operator": "EQ", "value": domain}]}],
                "properties": ["domain", "name", REFERRAL_CODE_PROPERTY],
                "limit": 1,
            });
            let answer = self
                .http
                .json(
                    Method::POST,
                    "/crm/v3/objects/companies/search",
                    &[],
                    Some(&body),
                )
                .await?;
            if let Some(id) = results(&answer)?
                .first()
                .and_then(|c| lenient::text(c.get("id")))
            {
                return Ok(id);
            }
        }
        let mut properties = json!({
            "name": referral.company_name,
            REFERRAL_CODE_PROPERTY: referral.referral_code,
        });
        if let Some(domain) = &referral.company_domain {
            properties["domain"] = json!(domain);
        }
        let answer = self
            .http
            .json(
                Method::POST,
                "/crm/v3/objects/companies",
                &[],
                Some(&json!({"properties": properties})),
            )
            .await?;
        lenient::text(answer.get("id"))
            .ok_or_else(|| ConnectorError::Malformed("company created without an id".into()))
    }

    /// The contact for a referral, associated with `company_id`: created, or the existing
    /// contact with that email (HubSpot answers 409 with its id). Returns its id.
    pub async fn ensure_contact(
        &self,
        referral: &ReferralPush,
        email: &str,
        company_id: &str,
    ) -> Result<String> {
        let (first, last) = referral.contact_names();
        let body = json!({
            "properties": {
                "email": email,
                "firstname": first,
                "lastname": last,
                REFERRAL_CODE_PROPERTY: referral.referral_code,
            },
            "associations": [{
                "to": {"id": company_id},
                // contact → company, unlabeled (HubSpot-defined type 279).
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 279}],
            }],
        });
        match self
            .http
            .json(Method::POST, "/crm/v3/objects/contacts", &[], Some(&body))
            .await
        {
            Ok(answer) => lenient::text(answer.get("id"))
                .ok_or_else(|| ConnectorError::Malformed("contact created without an id".into())),
            Err(ConnectorError::Remote(message)) if message.contains("Existing ID:") => message
                .split("Existing ID:")
                .nth(1)
                .map(|rest| {
                    rest.trim()
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                })
                .filter(|id| !id.is_empty())
                .ok_or(ConnectorError::Remote(message)),
            Err(other) => Err(other),
        }
    }
}

fn encode(cursor: &Cursor) -> String {
    serde_json::to_string(cursor).expect("cursors serialise")
}

fn results(body: &Value) -> Result<&[Value]> {
    body.get("results")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .ok_or_else(|| ConnectorError::Malformed("HubSpot answer without `results`".into()))
}

fn next_after(body: &Value) -> Option<String> {
    lenient::text(body.get("paging")?.get("next")?.get("after"))
}

fn newest_of(newest: Option<DateTime<Utc>>, deals: &[NeutralDeal]) -> Option<DateTime<Utc>> {
    deals.iter().map(|d| d.updated_at).chain(newest).max()
}

/// Maps one HubSpot deal object (lenient: numbers as strings, nulls).
pub fn map_deal(
    object: &Value,
    company_domain: Option<String>,
    contact_emails: Vec<String>,
    default_currency: &str,
) -> Result<NeutralDeal> {
    let id = lenient::text(object.get("id"))
        .ok_or_else(|| ConnectorError::Malformed("HubSpot deal without id".into()))?;
    let props = object.get("properties").unwrap_or(&Value::Null);
    let prop = |k: &str| props.get(k);
    let updated_at = lenient::time(prop("hs_lastmodifieddate"))
        .or_else(|| lenient::time(object.get("updatedAt")))
        .ok_or_else(|| {
            ConnectorError::Malformed(format!("HubSpot deal {id} without hs_lastmodifieddate"))
        })?;
    let created_at = lenient::time(prop("createdate"))
        .or_else(|| lenient::time(object.get("createdAt")))
        .unwrap_or(updated_at);
    let won = lenient::boolean(prop("hs_is_closed_won")).unwrap_or(false);
    let closed = lenient::boolean(prop("hs_is_closed")).unwrap_or(false);
    let status = if won {
        DealStatus::Won
    } else if closed {
        DealStatus::Lost
    } else {
        DealStatus::Open
    };
    Ok(NeutralDeal {
        name: lenient::text(prop("dealname")).unwrap_or_else(|| format!("HubSpot deal {id}")),
        amount: lenient::decimal(prop("amount")).unwrap_or_default(),
        currency: lenient::text(prop("deal_currency_code"))
            .map(|c| c.to_ascii_uppercase())
            .unwrap_or_else(|| default_currency.to_ascii_uppercase()),
        status,
        stage: lenient::text(prop("dealstage")),
        closed_at: if status == DealStatus::Open {
            None
        } else {
            lenient::time(prop("closedate")).or(Some(updated_at))
        },
        created_at,
        updated_at,
        company_domain,
        company_id: None,
        contact_emails,
        referral_code: lenient::text(prop(REFERRAL_CODE_PROPERTY)),
        deleted: object
            .get("archived")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        external_id: id,
    })
}

#[async_trait]
impl CrmConnector for HubSpot {
    async fn sync_page(&self, cursor: Option<&str>) -> Result<DealPage> {
        let cursor = match cursor {
            None => Cursor::Backfill {
                after: None,
                newest: None,
            },
            Some(text) => serde_json::from_str(text)
                .map_err(|e| ConnectorError::Malformed(format!("stored HubSpot cursor: {e}")))?,
        };
        match cursor {
            Cursor::Backfill { after, newest } => self.backfill(after, newest).await,
            Cursor::Incremental {
                since,
                after,
                seen,
                newest,
            } => self.search(since, after, seen, newest).await,
        }
    }

    async fn fetch_deal(&self, external_id: &str) -> Result<Option<NeutralDeal>> {
        if external_id.is_empty() || !external_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConnectorError::Malformed(format!(
                "{external_id:?} is not a HubSpot object id"
            )));
        }
        let query = vec![("properties", PROPERTIES.join(","))];
        let answer = match self
            .http
            .json(
                Method::GET,
                &format!("/crm/v3/objects/deals/{external_id}"),
                &query,
                None,
            )
            .await
        {
            Ok(answer) => answer,
            Err(ConnectorError::NotFound(_)) => return Ok(None),
            Err(other) => return Err(other),
        };
        Ok(self.map_all(std::slice::from_ref(&answer)).await?.pop())
    }

    async fn push_primary(&self, referral: &ReferralPush) -> Result<String> {
        self.ensure_company(referral).await
    }

    async fn push_secondary(
        &self,
        referral: &ReferralPush,
        primary_id: &str,
    ) -> Result<Option<String>> {
        match &referral.contact_email {
            Some(email) => Ok(Some(
                self.ensure_contact(referral, email, primary_id).await?,
            )),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixture as fixture;

    #[test]
    fn the_fixture_deals_map() {
        let page1 = fixture("hubspot_search_response_page1.json");
        let deals: Vec<NeutralDeal> = results(&page1)
            .unwrap()
            .iter()
            .map(|o| map_deal(o, None, vec![], "EUR").unwrap())
            .collect();
        assert_eq!(deals[0].external_id, "512");
        assert_eq!(deals[0].status, DealStatus::Open);
        assert_eq!(deals[0].amount.to_string(), "25000");
        assert_eq!(deals[0].closed_at, None);
        assert_eq!(deals[1].status, DealStatus::Won);
        assert_eq!(deals[1].amount.to_string(), "12500.50");
        assert_eq!(deals[1].currency, "USD");
        assert_eq!(
            deals[1].closed_at.unwrap().to_rfc3339(),
            "2026-02-03T00:00:00+00:00"
        );
        let page2 = fixture("hubspot_search_response_page2_last.json");
        let lost = map_deal(&results(&page2).unwrap()[0], None, vec![], "EUR").unwrap();
        assert_eq!(lost.status, DealStatus::Lost);
        assert_eq!(lost.amount.to_string(), "0");
        assert!(lost.closed_at.is_some());
        assert_eq!(next_after(&page1).as_deref(), Some("2"));
        assert_eq!(next_after(&page2), None);
    }
}
