//! The Salesforce connector against a wiremock server with the REST shapes of
//! `tests/fixtures/crm/`, a copy of `shared/fixtures/crm/`: `queryAll` SOQL by `SystemModstamp`, `nextRecordsUrl` paging, the
//! configured API version, OAuth refresh with `instance_url`, `INVALID_SESSION_ID` (401) refresh,
//! `REQUEST_LIMIT_EXCEEDED`, Lead push.

mod common;

use common::{fixture, quick};
use serde_json::json;
use tandem_connectors::{
    ConnectorError, CrmConnector, DealStatus, ReferralPush,
    http::{Credentials, CrmHttp, OAuthClient, Vendor},
    salesforce::{Cursor, Salesforce},
};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{body_partial_json, body_string_contains, header, method, path, query_param},
};

#[tokio::test]
async fn soql_pages_with_next_records_url_after_an_oauth_refresh() {
    let login = MockServer::start().await;
    let instance = MockServer::start().await;
    let mut token = fixture("salesforce_oauth_refresh_response.json");
    token["instance_url"] = json!(instance.uri());
    Mock::given(method("POST"))
        .and(path("/services/oauth2/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains("client_id=consumer-key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(token))
        .expect(1)
        .mount(&login)
        .await;
    Mock::given(method("GET"))
        .and(path("/services/data/v61.0/queryAll"))
        .and(header("authorization", "Bearer 00DdM000000abcd!AQEAQ.example"))
        .and(query_param(
            "q",
            "SELECT Id, Name, Amount, StageName, CloseDate, IsClosed, IsWon, CreatedDate, SystemModstamp, IsDeleted, AccountId, Account.Website, Tandem_Referral_Code__c, (SELECT Contact.Email FROM OpportunityContactRoles) FROM Opportunity ORDER BY SystemModstamp ASC, Id ASC",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("salesforce_query_response_page1.json")))
        .expect(1)
        .mount(&instance)
        .await;
    Mock::given(method("GET"))
        .and(path("/services/data/v62.0/query/01gRO0000016PIAYA2-2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(fixture("salesforce_query_response_page2_last.json")),
        )
        .expect(1)
        .mount(&instance)
        .await;
    let http = CrmHttp::new(
        Vendor::Salesforce,
        &login.uri(),
        Credentials::OAuth(OAuthClient {
            token_url: format!("{}/services/oauth2/token", login.uri()),
            client_id: "consumer-key".into(),
            client_secret: "consumer-secret".into(),
            refresh_token: "5Aep861".into(),
            basic_auth: false,
        }),
        quick(),
    )
    .unwrap();
    let salesforce = Salesforce::new(http, "USD", "61.0");
    let first = salesforce.sync_page(None).await.unwrap();
    assert!(first.more);
    assert_eq!(first.deals.len(), 2);
    assert_eq!(first.deals[1].status, DealStatus::Won);
    // The Account is the deal's CRM company.
    assert_eq!(
        first.deals[0].company_id.as_deref(),
        Some("001dM00003jU9GxQAK")
    );
    let second = salesforce.sync_page(Some(&first.cursor)).await.unwrap();
    assert!(!second.more);
    assert_eq!(second.deals[0].status, DealStatus::Lost);
    let cursor: Cursor = serde_json::from_str(&second.cursor).unwrap();
    assert_eq!(
        cursor.since.unwrap().to_rfc3339(),
        "2026-05-02T08:59:00+00:00"
    );
    // The next pass filters on SystemModstamp.
    Mock::given(method("GET"))
        .and(path("/services/data/v61.0/queryAll"))
        .and(query_param(
            "q",
            "SELECT Id, Name, Amount, StageName, CloseDate, IsClosed, IsWon, CreatedDate, SystemModstamp, IsDeleted, AccountId, Account.Website, Tandem_Referral_Code__c, (SELECT Contact.Email FROM OpportunityContactRoles) FROM Opportunity WHERE SystemModstamp >= 2026-05-02T08:59:00.000Z ORDER BY SystemModstamp ASC, Id ASC",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("salesforce_query_response_page2_last.json")))
        .expect(1)
        .mount(&instance)
        .await;
    let third = salesforce.sync_page(Some(&second.cursor)).await.unwrap();
    assert!(third.deals.is_empty(), "already applied");
}

#[tokio::test]
async fn invalid_sessions_refresh_once_and_request_limits_fail() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]),
        ))
        .mount(&server)
        .await;
    let http = CrmHttp::new(
        Vendor::Salesforce,
        &server.uri(),
        Credentials::AccessToken("00D!stale".into()),
        quick(),
    )
    .unwrap();
    let err = Salesforce::new(http, "USD", "62.0")
        .sync_page(None)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Unauthorized(_)), "{err}");
    assert!(err.to_string().contains("Session expired"));

    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("sforce-limit-info", "api-usage=15000/15000")
                .set_body_json(fixture("salesforce_error_request_limit.json")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let http = CrmHttp::new(
        Vendor::Salesforce,
        &server.uri(),
        Credentials::AccessToken("t".into()),
        quick(),
    )
    .unwrap();
    let err = Salesforce::new(http, "USD", "62.0")
        .sync_page(None)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::RateLimited(_)), "{err}");
    assert!(err.to_string().contains("api-usage=15000/15000"));
}

#[tokio::test]
async fn referrals_become_leads_with_the_code() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/services/data/v62.0/sobjects/Lead"))
        .and(body_partial_json(
            json!({"Company": "Initech", "FirstName": "Peter", "LastName": "Gibbons",
            "Email": "peter@initech.example", "Tandem_Referral_Code__c": "TDM-9"}),
        ))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"id": "00Q5e00000AbCdEAAA", "success": true, "errors": []})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let http = CrmHttp::new(
        Vendor::Salesforce,
        &server.uri(),
        Credentials::AccessToken("t".into()),
        quick(),
    )
    .unwrap();
    let salesforce = Salesforce::new(http, "USD", "62.0");
    let push = ReferralPush {
        company_name: "Initech".into(),
        company_domain: Some("initech.example".into()),
        contact_name: Some("Peter Gibbons".into()),
        contact_email: Some("peter@initech.example".into()),
        referral_code: "TDM-9".into(),
    };
    assert_eq!(
        salesforce.push_primary(&push).await.unwrap(),
        "00Q5e00000AbCdEAAA"
    );
    assert_eq!(salesforce.push_secondary(&push, "x").await.unwrap(), None);
}
