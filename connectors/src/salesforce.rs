//! Salesforce REST: SOQL on Opportunity through `queryAll` (deleted rows included, so deletions
//! arrive as `IsDeleted`), `WHERE SystemModstamp >= cursor ORDER BY SystemModstamp`, paging with
//! `nextRecordsUrl`, an overlap window and de-duplication; `IsWon`/`IsClosed`; timestamps with
//! `+0000` offsets; the API version configurable. The account's website gives the company
//! domain, the opportunity's contact roles the emails, `Tandem_Referral_Code__c` the code.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    CrmConnector, DealPage, ReferralPush,
    deal::{DealStatus, NeutralDeal},
    error::{ConnectorError, Result},
    http::CrmHttp,
    lenient,
};

/// The custom field carrying Tandem's referral code (DESIGN §7).
pub const REFERRAL_CODE_FIELD: &str = "Tandem_Referral_Code__c";

/// Where a Salesforce sync stands (`page` is the `nextRecordsUrl` of the current query).
pub type Cursor = crate::TimeCursor;

/// A Salesforce connection.
pub struct Salesforce {
    http: CrmHttp,
    default_currency: String,
    version: String,
    overlap: Duration,
}

impl Salesforce {
    /// A Salesforce client on API version `version` (such as `62.0`).
    pub fn new(http: CrmHttp, default_currency: &str, version: &str) -> Salesforce {
        Salesforce {
            http,
            default_currency: default_currency.to_string(),
            version: version.trim_start_matches('v').to_string(),
            overlap: Duration::seconds(60),
        }
    }

    fn soql(&self, since: Option<DateTime<Utc>>, id: Option<&str>) -> String {
        let mut q = format!(
            "SELECT Id, Name, Amount, StageName, CloseDate, IsClosed, IsWon, CreatedDate, \
             SystemModstamp, IsDeleted, AccountId, Account.Website, {REFERRAL_CODE_FIELD}, \
             (SELECT Contact.Email FROM OpportunityContactRoles) FROM Opportunity"
        );
        if let Some(id) = id {
            q.push_str(&format!(" WHERE Id = '{id}'"));
        } else if let Some(since) = since {
            q.push_str(&format!(
                " WHERE SystemModstamp >= {}",
                since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ));
        }
        q.push_str(" ORDER BY SystemModstamp ASC, Id ASC");
        q
    }
}

fn records(body: &Value) -> Result<&[Value]> {
    body.get("records")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .ok_or_else(|| ConnectorError::Malformed("Salesforce answer without `records`".into()))
}

/// Maps one Opportunity row.
pub fn map_opportunity(row: &Value, default_currency: &str) -> Result<NeutralDeal> {
    let id = lenient::text(row.get("Id"))
        .ok_or_else(|| ConnectorError::Malformed("Opportunity without Id".into()))?;
    let updated_at = lenient::time(row.get("SystemModstamp"))
        .or_else(|| lenient::time(row.get("LastModifiedDate")))
        .ok_or_else(|| {
            ConnectorError::Malformed(format!("Opportunity {id} without SystemModstamp"))
        })?;
    let won = lenient::boolean(row.get("IsWon")).unwrap_or(false);
    let closed = lenient::boolean(row.get("IsClosed")).unwrap_or(false);
    let status = if won {
        DealStatus::Won
    } else if closed {
        DealStatus::Lost
    } else {
        DealStatus::Open
    };
    let website = row
        .get("Account")
        .and_then(|a| lenient::text(a.get("Website")));
    let domain = website.and_then(|w| lenient::domain_of(&w));
    let mut emails: Vec<String> = row
        .get("OpportunityContactRoles")
        .and_then(|r| r.get("records"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| lenient::text(r.get("Contact").and_then(|c| c.get("Email"))))
        .map(|e| e.to_ascii_lowercase())
        .collect();
    emails.sort();
    emails.dedup();
    Ok(NeutralDeal {
        name: lenient::text(row.get("Name")).unwrap_or_else(|| format!("Opportunity {id}")),
        amount: lenient::decimal(row.get("Amount")).unwrap_or_default(),
        currency: lenient::text(row.get("CurrencyIsoCode"))
            .unwrap_or_else(|| default_currency.to_string())
            .to_ascii_uppercase(),
        status,
        stage: lenient::text(row.get("StageName")),
        closed_at: if status == DealStatus::Open {
            None
        } else {
            lenient::time(row.get("CloseDate")).or(Some(updated_at))
        },
        created_at: lenient::time(row.get("CreatedDate")).unwrap_or(updated_at),
        updated_at,
        company_domain: domain,
        company_id: lenient::text(row.get("AccountId")),
        contact_emails: emails,
        referral_code: lenient::text(row.get(REFERRAL_CODE_FIELD)),
        deleted: lenient::boolean(row.get("IsDeleted")).unwrap_or(false),
        external_id: id,
    })
}

#[async_trait]
impl CrmConnector for Salesforce {
    async fn sync_page(&self, cursor: Option<&str>) -> Result<DealPage> {
        let cursor = Cursor::load(cursor, "Salesforce")?;
        let answer = match &cursor.page {
            Some(next) => self.http.json(Method::GET, next, &[], None).await?,
            None => {
                self.http
                    .json(
                        Method::GET,
                        &format!("/services/data/v{}/queryAll", self.version),
                        &[("q", self.soql(cursor.since, None))],
                        None,
                    )
                    .await?
            }
        };
        let all: Vec<NeutralDeal> = records(&answer)?
            .iter()
            .map(|r| map_opportunity(r, &self.default_currency))
            .collect::<Result<_>>()?;
        let done = lenient::boolean(answer.get("done")).unwrap_or(true);
        let next = lenient::text(answer.get("nextRecordsUrl")).filter(|_| !done);
        Ok(cursor.after(all, next, self.overlap))
    }

    async fn fetch_deal(&self, external_id: &str) -> Result<Option<NeutralDeal>> {
        if !(15..=18).contains(&external_id.len())
            || !external_id.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ConnectorError::Malformed(format!(
                "{external_id:?} is not a Salesforce id"
            )));
        }
        let answer = self
            .http
            .json(
                Method::GET,
                &format!("/services/data/v{}/queryAll", self.version),
                &[("q", self.soql(None, Some(external_id)))],
                None,
            )
            .await?;
        records(&answer)?
            .first()
            .map(|r| map_opportunity(r, &self.default_currency))
            .transpose()
    }

    async fn push_primary(&self, referral: &ReferralPush) -> Result<String> {
        let (first, last) = referral.contact_names();
        let mut lead = json!({
            "Company": referral.company_name,
            "LastName": if last.is_empty() { "(unknown)".to_string() } else { last },
            REFERRAL_CODE_FIELD: referral.referral_code,
            "LeadSource": "Partner Referral",
        });
        if !first.is_empty() {
            lead["FirstName"] = json!(first);
        }
        if let Some(email) = &referral.contact_email {
            lead["Email"] = json!(email);
        }
        if let Some(domain) = &referral.company_domain {
            lead["Website"] = json!(domain);
        }
        let answer = self
            .http
            .json(
                Method::POST,
                &format!("/services/data/v{}/sobjects/Lead", self.version),
                &[],
                Some(&lead),
            )
            .await?;
        lenient::text(answer.get("id"))
            .ok_or_else(|| ConnectorError::Malformed("Lead created without an id".into()))
    }

    async fn push_secondary(&self, _: &ReferralPush, _: &str) -> Result<Option<String>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixture as fixture;

    #[test]
    fn the_fixture_opportunities_map() {
        let page = fixture("salesforce_query_response_page1.json");
        let deals: Vec<NeutralDeal> = records(&page)
            .unwrap()
            .iter()
            .map(|r| map_opportunity(r, "USD").unwrap())
            .collect();
        assert_eq!(deals[0].status, DealStatus::Open);
        assert_eq!(deals[0].amount.to_string(), "15000");
        assert_eq!(
            deals[0].updated_at.to_rfc3339(),
            "2026-05-01T07:25:37+00:00"
        );
        assert_eq!(deals[1].status, DealStatus::Won);
        assert_eq!(
            deals[1].closed_at.unwrap().to_rfc3339(),
            "2026-01-20T00:00:00+00:00"
        );
        let last = fixture("salesforce_query_response_page2_last.json");
        let lost = map_opportunity(&records(&last).unwrap()[0], "USD").unwrap();
        assert_eq!(lost.status, DealStatus::Lost);
        assert_eq!(lost.amount.to_string(), "0");
        let row = json!({"Id": "006000000000001AAA", "SystemModstamp": "2026-05-01T07:25:37.000+0000",
            "IsDeleted": true, "Account": {"Website": "http://www.Acme.example/x"},
            "OpportunityContactRoles": {"totalSize": 1, "done": true, "records": [{"Contact": {"Email": "Bo@Acme.example"}}]},
            "Tandem_Referral_Code__c": "TDM-1"});
        let d = map_opportunity(&row, "EUR").unwrap();
        assert!(d.deleted);
        assert_eq!(d.company_domain.as_deref(), Some("acme.example"));
        assert_eq!(d.contact_emails, vec!["bo@acme.example".to_string()]);
        assert_eq!(d.referral_code.as_deref(), Some("TDM-1"));
        assert_eq!(d.currency, "EUR");
    }
}
