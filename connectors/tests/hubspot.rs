//! The HubSpot connector against a wiremock server that answers with the vendor's documented
//! shapes (`tests/fixtures/crm/`, a copy of `shared/fixtures/crm/`): the requests it sends (paths, query, headers, bodies),
//! paging, rate limits, 5xx, and OAuth refresh with a rotated refresh token.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{fixture, quick};
use serde_json::{Value, json};
use tandem_connectors::{
    ConnectorError, CrmConnector, DealStatus,
    http::{Credentials, CrmHttp, OAuthClient, RetryPolicy, Vendor},
    hubspot::{Cursor, HubSpot},
};
use wiremock::{
    Mock, MockServer, Request, ResponseTemplate,
    matchers::{body_partial_json, header, method, path, query_param},
};

fn client(server: &MockServer, credentials: Credentials) -> HubSpot {
    let http = CrmHttp::new(Vendor::HubSpot, &server.uri(), credentials, quick()).unwrap();
    HubSpot::new(http, "USD").page_size(2)
}

/// Answers association and batch-read calls: deal 512 ↔ company 9001 (acme.example) and
/// contact 301 (buyer@acme.example).
async fn mount_associations(server: &MockServer) {
    Mock::given(method("POST"))
        .and(path("/crm/v4/associations/deals/companies/batch/read"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "COMPLETE",
            "results": [{"from": {"id": "512"}, "to": [{"toObjectId": 9001, "associationTypes": []}]}]})))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/crm/v4/associations/deals/contacts/batch/read"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"status": "COMPLETE",
            "results": [{"from": {"id": "512"}, "to": [{"toObjectId": 301, "associationTypes": []}]}]})))
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/crm/v3/objects/companies/batch/read"))
        .and(body_partial_json(json!({"properties": ["domain"]})))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"status": "COMPLETE",
            "results": [{"id": "9001", "properties": {"domain": "acme.example"}}]})),
        )
        .mount(server)
        .await;
    Mock::given(method("POST"))
        .and(path("/crm/v3/objects/contacts/batch/read"))
        .and(body_partial_json(json!({"properties": ["email"]})))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"status": "COMPLETE",
            "results": [{"id": "301", "properties": {"email": "buyer@acme.example"}}]})),
        )
        .mount(server)
        .await;
}

#[tokio::test]
async fn backfill_then_incremental_search() {
    let server = MockServer::start().await;
    mount_associations(&server).await;
    let mut list = fixture("hubspot_list_response.json");
    list["paging"] = Value::Null;
    Mock::given(method("GET"))
        .and(path("/crm/v3/objects/deals"))
        .and(header("authorization", "Bearer pat-na1-test"))
        .and(query_param("limit", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list))
        .expect(1)
        .mount(&server)
        .await;
    let hubspot = client(&server, Credentials::AccessToken("pat-na1-test".into()));
    let page = hubspot.sync_page(None).await.unwrap();
    assert!(!page.more);
    assert_eq!(page.deals.len(), 1);
    let deal = &page.deals[0];
    assert_eq!(deal.external_id, "512");
    assert_eq!(deal.company_domain.as_deref(), Some("acme.example"));
    assert_eq!(deal.contact_emails, vec!["buyer@acme.example".to_string()]);
    // The backfill ends in an incremental cursor reaching back one overlap window before the
    // newest change, remembering the deal it already has.
    let cursor: Cursor = serde_json::from_str(&page.cursor).unwrap();
    let Cursor::Incremental { since, seen, .. } = &cursor else {
        panic!("{cursor:?}")
    };
    assert_eq!(since.to_rfc3339(), "2026-02-01T09:59:00+00:00");
    assert_eq!(seen, &vec![("512".to_string(), 1_769_940_000_000)]);

    // Incremental: a search sorted by hs_lastmodifieddate from `since`, two pages.
    let since_ms = since.timestamp_millis().to_string();
    Mock::given(method("POST"))
        .and(path("/crm/v3/objects/deals/search"))
        .and(body_partial_json(json!({
            "filterGroups": [{"filters": [{"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": since_ms}]}],
            "sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}],
            "limit": 2, "after": "2"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(fixture("hubspot_search_response_page2_last.json")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/crm/v3/objects/deals/search"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(fixture("hubspot_search_response_page1.json")),
        )
        .mount(&server)
        .await;
    let page = hubspot.sync_page(Some(&page.cursor)).await.unwrap();
    assert!(page.more);
    // 512 at the same modification time was applied already: skipped.
    let ids: Vec<&str> = page.deals.iter().map(|d| d.external_id.as_str()).collect();
    assert_eq!(ids, vec!["513"]);
    assert_eq!(page.deals[0].status, DealStatus::Won);
    let page = hubspot.sync_page(Some(&page.cursor)).await.unwrap();
    assert!(!page.more);
    assert_eq!(page.deals[0].external_id, "514");
    assert_eq!(page.deals[0].status, DealStatus::Lost);
    let Cursor::Incremental { since, after, .. } = serde_json::from_str(&page.cursor).unwrap()
    else {
        panic!()
    };
    assert_eq!(after, None);
    assert_eq!(since.to_rfc3339(), "2026-02-05T07:59:00+00:00");
    // The search body asked for the referral-code property.
    let searches: Vec<Request> = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == "/crm/v3/objects/deals/search")
        .collect();
    let body: Value = serde_json::from_slice(&searches[0].body).unwrap();
    assert!(
        body["properties"]
            .as_array()
            .unwrap()
            .contains(&json!("tandem_referral_code"))
    );
}

#[tokio::test]
async fn searches_restart_before_the_ten_thousand_ceiling() {
    let server = MockServer::start().await;
    mount_associations(&server).await;
    let mut page = fixture("hubspot_search_response_page1.json");
    page["paging"]["next"]["after"] = json!("9999");
    Mock::given(method("POST"))
        .and(path("/crm/v3/objects/deals/search"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page))
        .mount(&server)
        .await;
    let hubspot = client(&server, Credentials::AccessToken("t".into()));
    let cursor = serde_json::to_string(&Cursor::Incremental {
        since: "2026-01-01T00:00:00Z".parse().unwrap(),
        after: Some("9998".into()),
        seen: vec![],
        newest: None,
    })
    .unwrap();
    let next = hubspot.sync_page(Some(&cursor)).await.unwrap();
    assert!(next.more);
    let Cursor::Incremental {
        since, after, seen, ..
    } = serde_json::from_str(&next.cursor).unwrap()
    else {
        panic!()
    };
    // A new search from the last modification time reached, not after=9999.
    assert_eq!(after, None);
    assert_eq!(since.to_rfc3339(), "2026-02-03T16:42:11.512+00:00");
    assert_eq!(seen, vec![("513".to_string(), 1_770_136_931_512)]);
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried() {
    let server = MockServer::start().await;
    mount_associations(&server).await;
    let calls = Arc::new(Mutex::new(0u32));
    let c = calls.clone();
    Mock::given(method("GET"))
        .and(path("/crm/v3/objects/deals"))
        .respond_with(move |_: &Request| {
            let mut n = c.lock().unwrap();
            *n += 1;
            match *n {
                1 => ResponseTemplate::new(429)
                    .insert_header("retry-after", "0")
                    .set_body_json(fixture("hubspot_429_ten_secondly.json")),
                2 => ResponseTemplate::new(429)
                    .insert_header("x-hubspot-ratelimit-interval-milliseconds", "50")
                    .set_body_json(fixture("hubspot_429_ten_secondly.json")),
                3 => ResponseTemplate::new(502),
                4 => ResponseTemplate::new(200).set_delay(Duration::from_secs(5)),
                _ => {
                    let mut list = fixture("hubspot_list_response.json");
                    list["paging"] = Value::Null;
                    ResponseTemplate::new(200).set_body_json(list)
                }
            }
        })
        .mount(&server)
        .await;
    let hubspot = {
        let http = CrmHttp::new(
            Vendor::HubSpot,
            &server.uri(),
            Credentials::AccessToken("t".into()),
            RetryPolicy {
                timeout: Duration::from_millis(500),
                ..quick()
            },
        )
        .unwrap();
        HubSpot::new(http, "USD")
    };
    let page = hubspot.sync_page(None).await.unwrap();
    assert_eq!(page.deals.len(), 1);
    assert_eq!(*calls.lock().unwrap(), 5);
}

#[tokio::test]
async fn daily_limits_and_exhausted_budgets_fail() {
    let server = MockServer::start().await;
    let mut daily = fixture("hubspot_429_ten_secondly.json");
    daily["policyName"] = json!("DAILY");
    Mock::given(method("GET"))
        .and(path("/crm/v3/objects/deals"))
        .respond_with(ResponseTemplate::new(429).set_body_json(daily))
        .expect(1)
        .mount(&server)
        .await;
    let hubspot = client(&server, Credentials::AccessToken("t".into()));
    let err = hubspot.sync_page(None).await.unwrap_err();
    assert!(matches!(err, ConnectorError::RateLimited(_)), "{err}");

    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let started = std::time::Instant::now();
    let err = client(&server, Credentials::AccessToken("t".into()))
        .sync_page(None)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::GaveUp { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(8));

    // Malformed answers fail without retrying.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>"))
        .expect(1)
        .mount(&server)
        .await;
    let err = client(&server, Credentials::AccessToken("t".into()))
        .sync_page(None)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Malformed(_)), "{err}");
}

#[tokio::test]
async fn oauth_refreshes_on_401_and_reports_the_rotated_token() {
    let server = MockServer::start().await;
    mount_associations(&server).await;
    Mock::given(method("POST"))
        .and(path("/oauth/v1/token"))
        .and(wiremock::matchers::body_string_contains(
            "grant_type=refresh_token",
        ))
        .and(wiremock::matchers::body_string_contains(
            "refresh_token=old-refresh",
        ))
        .and(wiremock::matchers::body_string_contains("client_id=app-id"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(fixture("hubspot_oauth_token_response.json")),
        )
        .expect(1)
        .mount(&server)
        .await;
    let fresh = fixture("hubspot_oauth_token_response.json")["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut list = fixture("hubspot_list_response.json");
    list["paging"] = Value::Null;
    Mock::given(method("GET"))
        .and(path("/crm/v3/objects/deals"))
        .and(header("authorization", format!("Bearer {fresh}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(list))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/crm/v3/objects/deals"))
        .respond_with(ResponseTemplate::new(401).set_body_json(fixture("hubspot_error_401.json")))
        .mount(&server)
        .await;
    let rotated = Arc::new(Mutex::new(None));
    let r = rotated.clone();
    let http = CrmHttp::new(
        Vendor::HubSpot,
        &server.uri(),
        Credentials::OAuth(OAuthClient {
            token_url: format!("{}/oauth/v1/token", server.uri()),
            client_id: "app-id".into(),
            client_secret: "app-secret".into(),
            refresh_token: "old-refresh".into(),
            basic_auth: false,
        }),
        quick(),
    )
    .unwrap()
    .on_refresh(move |refreshed| *r.lock().unwrap() = refreshed.refresh_token);
    let page = HubSpot::new(http, "USD").sync_page(None).await.unwrap();
    assert_eq!(page.deals.len(), 1);
    assert_eq!(
        rotated.lock().unwrap().as_deref(),
        Some("6f18f26a-3e95-4d95-a6e5-3d5c6e5c9e5a")
    );

    // A refresh token the CRM refuses: Unauthorized with its message, no secret in it.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/v1/token"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(fixture("hubspot_oauth_refresh_error.json")),
        )
        .mount(&server)
        .await;
    let http = CrmHttp::new(
        Vendor::HubSpot,
        &server.uri(),
        Credentials::OAuth(OAuthClient {
            token_url: format!("{}/oauth/v1/token", server.uri()),
            client_id: "app-id".into(),
            client_secret: "app-secret".into(),
            refresh_token: "revoked-refresh".into(),
            basic_auth: false,
        }),
        quick(),
    )
    .unwrap();
    let err = HubSpot::new(http, "USD").sync_page(None).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConnectorError::Unauthorized(_)), "{text}");
    assert!(text.contains("refresh token is invalid"), "{text}");
    assert!(!text.contains("revoked-refresh") && !text.contains("app-secret"));
}

#[tokio::test]
async fn single_deals_are_fetched_by_id() {
    let server = MockServer::start().await;
    mount_associations(&server).await;
    let deal = fixture("hubspot_list_response.json")["results"][0].clone();
    Mock::given(method("GET"))
        .and(path("/crm/v3/objects/deals/512"))
        .respond_with(ResponseTemplate::new(200).set_body_json(deal))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/crm/v3/objects/deals/999"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"status": "error", "message": "resource not found", "category": "OBJECT_NOT_FOUND"})))
        .mount(&server)
        .await;
    let hubspot = client(&server, Credentials::AccessToken("t".into()));
    let deal = hubspot.fetch_deal("512").await.unwrap().unwrap();
    assert_eq!(deal.company_domain.as_deref(), Some("acme.example"));
    assert!(hubspot.fetch_deal("999").await.unwrap().is_none());
    assert!(hubspot.fetch_deal("../admin").await.is_err());
}

#[tokio::test]
async fn a_spent_window_delays_the_next_request_instead_of_drawing_a_429() {
    let server = MockServer::start().await;
    mount_associations(&server).await;
    let mut list = fixture("hubspot_list_response.json");
    list["paging"] = Value::Null;
    Mock::given(method("GET"))
        .and(path("/crm/v3/objects/deals"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-hubspot-ratelimit-remaining", "0")
                .insert_header("x-hubspot-ratelimit-interval-milliseconds", "400")
                .insert_header("x-hubspot-ratelimit-max", "100")
                .set_body_json(list),
        )
        .mount(&server)
        .await;
    let hubspot = client(&server, Credentials::AccessToken("t".into()));
    let started = std::time::Instant::now();
    let page = hubspot.sync_page(None).await.unwrap();
    assert_eq!(page.deals.len(), 1);
    // The association reads after the list waited for the 400 ms window to pass.
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
}
