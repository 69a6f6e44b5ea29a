//! The Pipedrive connector against a wiremock server with the API v2 shapes of
//! `tests/fixtures/crm/`, a copy of `shared/fixtures/crm/`: sorted, cursor-paged listing with `updated_since`, organization and
//! person batch reads, the API-token header, OAuth with Basic client credentials and the returned
//! `api_domain`, rate limits and the daily budget, referral push.

mod common;

use common::{fixture, quick};
use serde_json::json;
use tandem_connectors::{
    ConnectorError, CrmConnector, DealStatus, ReferralPush,
    http::{Credentials, CrmHttp, OAuthClient, Vendor},
    pipedrive::{Cursor, Pipedrive},
};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{body_partial_json, header, method, path, query_param, query_param_is_missing},
};

async fn mount_people(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/api/v2/organizations"))
        .and(query_param("ids", "1"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"success": true,
            "data": [{"id": 1, "name": "Acme", "website": "https://www.acme.example"}]})),
        )
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/persons"))
        .and(query_param("ids", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"success": true,
            "data": [{"id": 1, "name": "Ann", "emails": [{"value": "ann@acme.example", "primary": true, "label": "work"}]}]})))
        .mount(server)
        .await;
}

#[tokio::test]
async fn deals_page_by_cursor_then_follow_updates() {
    let server = MockServer::start().await;
    mount_people(&server).await;
    let mut page1 = fixture("pipedrive_v2_deals_page1.json");
    page1["additional_data"] = json!({"next_cursor": "eyJpZCI6Mn0"});
    Mock::given(method("GET"))
        .and(path("/api/v2/deals"))
        .and(header("x-api-token", "pd-token"))
        .and(query_param("sort_by", "update_time"))
        .and(query_param("sort_direction", "asc"))
        .and(query_param_is_missing("cursor"))
        .and(query_param_is_missing("updated_since"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page1))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/deals"))
        .and(query_param("cursor", "eyJpZCI6Mn0"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(fixture("pipedrive_v2_deals_page2_last.json")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let http = CrmHttp::new(
        Vendor::Pipedrive,
        &server.uri(),
        Credentials::AccessToken("pd-token".into()),
        quick(),
    )
    .unwrap();
    let pipedrive = Pipedrive::new(http, "EUR", Some("abc123".into()));
    let first = pipedrive.sync_page(None).await.unwrap();
    assert!(first.more);
    assert_eq!(first.deals.len(), 2);
    assert_eq!(
        first.deals[0].company_domain.as_deref(),
        Some("acme.example")
    );
    assert_eq!(
        first.deals[0].contact_emails,
        vec!["ann@acme.example".to_string()]
    );
    let second = pipedrive.sync_page(Some(&first.cursor)).await.unwrap();
    assert!(!second.more);
    assert_eq!(second.deals[0].status, DealStatus::Lost);
    let cursor: Cursor = serde_json::from_str(&second.cursor).unwrap();
    assert_eq!(
        cursor.since.unwrap().to_rfc3339(),
        "2026-05-16T07:59:00+00:00"
    );
    assert_eq!(cursor.page, None);
    // The next pass asks for updates since then; the deal already applied is skipped.
    Mock::given(method("GET"))
        .and(path("/api/v2/deals"))
        .and(query_param("updated_since", "2026-05-16T07:59:00Z"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(fixture("pipedrive_v2_deals_page2_last.json")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let third = pipedrive.sync_page(Some(&second.cursor)).await.unwrap();
    assert!(third.deals.is_empty());
}

#[tokio::test]
async fn oauth_uses_basic_client_credentials_and_the_api_domain() {
    let server = MockServer::start().await;
    let api = MockServer::start().await;
    mount_people(&api).await;
    let mut token = fixture("pipedrive_oauth_token_response.json");
    token["api_domain"] = json!(api.uri());
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        // base64("client:secret")
        .and(header("authorization", "Basic Y2xpZW50OnNlY3JldA=="))
        .respond_with(ResponseTemplate::new(200).set_body_json(token))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/deals"))
        .and(header("authorization", "Bearer v1u:AQIBAHj-example"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(fixture("pipedrive_v2_deals_page2_last.json")),
        )
        .expect(1)
        .mount(&api)
        .await;
    let http = CrmHttp::new(
        Vendor::Pipedrive,
        "https://api.pipedrive.invalid",
        Credentials::OAuth(OAuthClient {
            token_url: format!("{}/oauth/token", server.uri()),
            client_id: "client".into(),
            client_secret: "secret".into(),
            refresh_token: "old".into(),
            basic_auth: true,
        }),
        quick(),
    )
    .unwrap();
    let page = Pipedrive::new(http, "EUR", None)
        .sync_page(None)
        .await
        .unwrap();
    assert_eq!(page.deals.len(), 1);
}

#[tokio::test]
async fn rate_limits_wait_for_the_reset_and_the_daily_budget_fails() {
    let server = MockServer::start().await;
    mount_people(&server).await;
    Mock::given(method("GET"))
        .and(path("/api/v2/deals"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("x-ratelimit-reset", "0")
                .set_body_json(fixture("pipedrive_429.json")),
        )
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v2/deals"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(fixture("pipedrive_v2_deals_page2_last.json")),
        )
        .mount(&server)
        .await;
    let http = CrmHttp::new(
        Vendor::Pipedrive,
        &server.uri(),
        Credentials::AccessToken("t".into()),
        quick(),
    )
    .unwrap();
    assert_eq!(
        Pipedrive::new(http, "EUR", None)
            .sync_page(None)
            .await
            .unwrap()
            .deals
            .len(),
        1
    );

    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("x-daily-requests-left", "0")
                .set_body_json(fixture("pipedrive_429.json")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let http = CrmHttp::new(
        Vendor::Pipedrive,
        &server.uri(),
        Credentials::AccessToken("t".into()),
        quick(),
    )
    .unwrap();
    let err = Pipedrive::new(http, "EUR", None)
        .sync_page(None)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::RateLimited(_)), "{err}");
}

#[tokio::test]
async fn referrals_become_an_organization_and_a_lead_with_the_code() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v2/organizations"))
        .and(body_partial_json(json!({"name": "Initech"})))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"success": true, "data": {"id": 42, "name": "Initech"}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/leads"))
        .and(body_partial_json(
            json!({"title": "Initech", "organization_id": 42, "abc123": "TDM-7"}),
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(
            json!({"success": true, "data": {"id": "adf21080-0e10-11eb-879b-05d71fb426ec"}}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let http = CrmHttp::new(
        Vendor::Pipedrive,
        &server.uri(),
        Credentials::AccessToken("t".into()),
        quick(),
    )
    .unwrap();
    let pipedrive = Pipedrive::new(http, "EUR", Some("abc123".into()));
    let push = ReferralPush {
        company_name: "Initech".into(),
        company_domain: Some("initech.example".into()),
        contact_name: None,
        contact_email: None,
        referral_code: "TDM-7".into(),
    };
    let org = pipedrive.push_primary(&push).await.unwrap();
    assert_eq!(org, "42");
    let lead = pipedrive.push_secondary(&push, &org).await.unwrap();
    assert_eq!(
        lead.as_deref(),
        Some("adf21080-0e10-11eb-879b-05d71fb426ec")
    );
}
