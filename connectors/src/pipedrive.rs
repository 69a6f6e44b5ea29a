//! Pipedrive API v2: `GET /api/v2/deals` sorted by `update_time` (ascending) with
//! `updated_since` and cursor paging, an overlap window and de-duplication; organizations and
//! persons read in batches (`ids=`) for the company domain and contact emails; the referral code
//! from a configured deal custom field. API token (`x-api-token`) or OAuth (the token answer's
//! `api_domain` becomes the API base).

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::Duration;
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    CrmConnector, DealPage, ReferralPush,
    deal::{DealStatus, NeutralDeal},
    error::{ConnectorError, Result},
    http::CrmHttp,
    lenient,
};

/// Where a Pipedrive sync stands (`page` is Pipedrive's `next_cursor`).
pub type Cursor = crate::TimeCursor;

/// A Pipedrive connection.
pub struct Pipedrive {
    http: CrmHttp,
    default_currency: String,
    code_field: Option<String>,
    page_size: u32,
    overlap: Duration,
}

impl Pipedrive {
    /// A Pipedrive client; `code_field` is the deal custom field key holding the referral code.
    pub fn new(http: CrmHttp, default_currency: &str, code_field: Option<String>) -> Pipedrive {
        Pipedrive {
            http,
            default_currency: default_currency.to_string(),
            code_field,
            page_size: 100,
            overlap: Duration::seconds(60),
        }
    }

    /// Deals per page (Pipedrive allows up to 500).
    pub fn page_size(mut self, n: u32) -> Pipedrive {
        self.page_size = n.clamp(1, 500);
        self
    }

    /// Reads `field` of the objects `ids` of `kind` (`organizations`, `persons`).
    async fn batch(&self, kind: &str, ids: &[String]) -> Result<HashMap<String, Value>> {
        let mut out = HashMap::new();
        let mut ids: Vec<String> = ids.to_vec();
        ids.sort();
        ids.dedup();
        for chunk in ids.chunks(100) {
            let answer = self
                .http
                .json(
                    Method::GET,
                    &format!("/api/v2/{kind}"),
                    &[("ids", chunk.join(",")), ("limit", "100".to_string())],
                    None,
                )
                .await?;
            for object in data(&answer)? {
                if let Some(id) = lenient::text(object.get("id")) {
                    out.insert(id, object.clone());
                }
            }
        }
        Ok(out)
    }

    async fn map_all(&self, objects: &[Value]) -> Result<Vec<NeutralDeal>> {
        let org_ids: Vec<String> = objects
            .iter()
            .filter_map(|d| lenient::text(d.get("org_id")))
            .collect();
        let person_ids: Vec<String> = objects
            .iter()
            .filter_map(|d| lenient::text(d.get("person_id")))
            .collect();
        let orgs = self.batch("organizations", &org_ids).await?;
        let persons = self.batch("persons", &person_ids).await?;
        objects
            .iter()
            .map(|d| {
                let domain = lenient::text(d.get("org_id"))
                    .and_then(|id| orgs.get(&id))
                    .and_then(org_domain);
                let emails = lenient::text(d.get("person_id"))
                    .and_then(|id| persons.get(&id))
                    .map(person_emails)
                    .unwrap_or_default();
                map_deal(
                    d,
                    domain,
                    emails,
                    &self.default_currency,
                    self.code_field.as_deref(),
                )
            })
            .collect()
    }
}

fn data(body: &Value) -> Result<&[Value]> {
    match body.get("data") {
        Some(Value::Array(items)) => Ok(items.as_slice()),
        Some(Value::Null) => Ok(&[]),
        _ => Err(ConnectorError::Malformed(
            "Pipedrive answer without `data`".into(),
        )),
    }
}

/// An organization's domain: a `domain` or `website` field when the account has one.
fn org_domain(org: &Value) -> Option<String> {
    ["domain", "website"]
        .iter()
        .find_map(|k| lenient::text(org.get(k)))
        .or_else(|| {
            org.get("custom_fields")?
                .as_object()?
                .values()
                .find_map(|v| {
                    lenient::text(Some(v)).filter(|s| s.contains('.') && !s.contains(' '))
                })
        })
        .and_then(|s| lenient::domain_of(&s))
}

/// A person's emails (`emails: [{value, primary}]`, or v1's `email` array).
fn person_emails(person: &Value) -> Vec<String> {
    let list = person
        .get("emails")
        .or_else(|| person.get("email"))
        .and_then(Value::as_array);
    let mut out: Vec<String> = list
        .into_iter()
        .flatten()
        .filter_map(|e| lenient::text(e.get("value")).or_else(|| lenient::text(Some(e))))
        .filter(|e| e.contains('@'))
        .map(|e| e.to_ascii_lowercase())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The deal's organization id (`org_id`: a number in v2, `{"value": …}` in v1 payloads).
pub fn org_id(deal: &Value) -> Option<String> {
    let org = deal.get("org_id")?;
    lenient::text(org.get("value")).or_else(|| lenient::text(Some(org)))
}

/// Maps one Pipedrive v2 deal.
pub fn map_deal(
    deal: &Value,
    company_domain: Option<String>,
    contact_emails: Vec<String>,
    default_currency: &str,
    code_field: Option<&str>,
) -> Result<NeutralDeal> {
    let id = lenient::text(deal.get("id"))
        .ok_or_else(|| ConnectorError::Malformed("Pipedrive deal without id".into()))?;
    let updated_at = lenient::time(deal.get("update_time")).ok_or_else(|| {
        ConnectorError::Malformed(format!("Pipedrive deal {id} without update_time"))
    })?;
    let status = match lenient::text(deal.get("status")).as_deref() {
        Some("won") => DealStatus::Won,
        Some("lost") => DealStatus::Lost,
        _ => DealStatus::Open,
    };
    let closed_at = match status {
        DealStatus::Open => None,
        DealStatus::Won => lenient::time(deal.get("won_time")),
        DealStatus::Lost => lenient::time(deal.get("lost_time")),
    }
    .or_else(|| {
        (status != DealStatus::Open)
            .then(|| lenient::time(deal.get("close_time")))
            .flatten()
    })
    .or((status != DealStatus::Open).then_some(updated_at));
    let referral_code = code_field.and_then(|field| {
        let value = deal
            .get("custom_fields")
            .and_then(|c| c.get(field))
            .or_else(|| deal.get(field))?;
        // v2 custom fields may be objects ({"value": …}) or scalars.
        lenient::text(value.get("value").or(Some(value)))
    });
    Ok(NeutralDeal {
        name: lenient::text(deal.get("title")).unwrap_or_else(|| format!("Pipedrive deal {id}")),
        amount: lenient::decimal(deal.get("value")).unwrap_or_default(),
        currency: lenient::text(deal.get("currency"))
            .map(|c| c.to_ascii_uppercase())
            .unwrap_or_else(|| default_currency.to_ascii_uppercase()),
        status,
        stage: lenient::text(deal.get("stage_id")).map(|s| format!("stage {s}")),
        closed_at,
        created_at: lenient::time(deal.get("add_time")).unwrap_or(updated_at),
        updated_at,
        company_domain,
        company_id: org_id(deal),
        contact_emails,
        referral_code,
        deleted: lenient::boolean(deal.get("is_deleted")).unwrap_or(false),
        external_id: id,
    })
}

#[async_trait]
impl CrmConnector for Pipedrive {
    async fn sync_page(&self, cursor: Option<&str>) -> Result<DealPage> {
        let cursor = Cursor::load(cursor, "Pipedrive")?;
        let mut query = vec![
            ("sort_by", "update_time".to_string()),
            ("sort_direction", "asc".to_string()),
            ("limit", self.page_size.to_string()),
        ];
        if let Some(since) = cursor.since {
            query.push((
                "updated_since",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ));
        }
        if let Some(page) = &cursor.page {
            query.push(("cursor", page.clone()));
        }
        let answer = self
            .http
            .json(Method::GET, "/api/v2/deals", &query, None)
            .await?;
        let all = self.map_all(data(&answer)?).await?;
        let next = lenient::text(
            answer
                .get("additional_data")
                .and_then(|a| a.get("next_cursor")),
        );
        Ok(cursor.after(all, next, self.overlap))
    }

    async fn fetch_deal(&self, external_id: &str) -> Result<Option<NeutralDeal>> {
        if external_id.is_empty() || !external_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConnectorError::Malformed(format!(
                "{external_id:?} is not a Pipedrive deal id"
            )));
        }
        match self
            .http
            .json(
                Method::GET,
                &format!("/api/v2/deals/{external_id}"),
                &[],
                None,
            )
            .await
        {
            Ok(answer) => {
                let deal = answer.get("data").cloned().unwrap_or(Value::Null);
                if deal.is_null() {
                    return Ok(None);
                }
                Ok(self.map_all(std::slice::from_ref(&deal)).await?.pop())
            }
            Err(ConnectorError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn push_primary(&self, referral: &ReferralPush) -> Result<String> {
        let answer = self
            .http
            .json(
                Method::POST,
                "/api/v2/organizations",
                &[],
                Some(&json!({"name": referral.company_name})),
            )
            .await?;
        lenient::text(answer.get("data").and_then(|d| d.get("id")))
            .ok_or_else(|| ConnectorError::Malformed("organization created without an id".into()))
    }

    async fn push_secondary(
        &self,
        referral: &ReferralPush,
        primary_id: &str,
    ) -> Result<Option<String>> {
        let org: i64 = primary_id
            .parse()
            .map_err(|_| ConnectorError::Malformed(format!("organization id {primary_id:?}")))?;
        let mut body = json!({"title": referral.company_name, "organization_id": org});
        if let Some(field) = &self.code_field {
            body[field.as_str()] = json!(referral.referral_code);
        }
        // Leads live in API v1.
        let answer = self
            .http
            .json(Method::POST, "/api/v1/leads", &[], Some(&body))
            .await?;
        lenient::text(answer.get("data").and_then(|d| d.get("id")))
            .map(Some)
            .ok_or_else(|| ConnectorError::Malformed("lead created without an id".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixture as fixture;

    #[test]
    fn the_fixture_deals_map() {
        let page = fixture("pipedrive_v2_deals_page1.json");
        let deals: Vec<NeutralDeal> = data(&page)
            .unwrap()
            .iter()
            .map(|d| map_deal(d, None, vec![], "EUR", None).unwrap())
            .collect();
        assert_eq!(deals[0].external_id, "1");
        assert_eq!(deals[0].status, DealStatus::Open);
        assert_eq!(deals[0].amount.to_string(), "25000");
        assert_eq!(deals[1].status, DealStatus::Won);
        assert_eq!(deals[1].amount.to_string(), "12500.5");
        assert!(deals[1].closed_at.is_some());
        let last = fixture("pipedrive_v2_deals_page2_last.json");
        let lost = map_deal(&data(&last).unwrap()[0], None, vec![], "EUR", None).unwrap();
        assert_eq!(lost.status, DealStatus::Lost);
        assert_eq!(
            lost.closed_at.unwrap().to_rfc3339(),
            "2026-05-16T08:00:00+00:00"
        );
        let person = json!({"emails": [{"value": "Ann@Acme.example", "primary": true}, {"value": "x", "primary": false}]});
        assert_eq!(person_emails(&person), vec!["ann@acme.example".to_string()]);
        assert_eq!(
            org_domain(&json!({"website": "https://www.Acme.example/about"})).as_deref(),
            Some("acme.example")
        );
        let coded = json!({"id": 9, "update_time": "2026-05-15T10:16:44Z", "status": "open",
            "custom_fields": {"abc123": "TDM-CODE"}});
        assert_eq!(
            map_deal(&coded, None, vec![], "EUR", Some("abc123"))
                .unwrap()
                .referral_code
                .as_deref(),
            Some("TDM-CODE")
        );
    }
}
