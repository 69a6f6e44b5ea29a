//! Inbound webhooks end to end: sources, verification per kind, the durable inbox, exactly-once
//! application, stale updates, attribution (MANUAL > CODE > DOMAIN) and the events they write.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tandem_connectors::verify::{decode_standard_secret, sign_standard};

use crate::{
    db_tests,
    helpers::{TestApp, count, error_code, error_field, nodes},
};

/// A created source: id, secret shown once, URL.
pub struct Source {
    pub id: String,
    pub secret: Option<String>,
    pub url: String,
}

pub async fn create_source(app: &TestApp, input: Value) -> Source {
    let data = app
        .admin_ok(
            "mutation($input: CreateWebhookSourceInput!) { createWebhookSource(input: $input) {
                source { id kind url } secret url } }",
            json!({"input": input}),
        )
        .await;
    let payload = &data["createWebhookSource"];
    Source {
        id: payload["source"]["id"].as_str().unwrap().to_string(),
        secret: payload["secret"].as_str().map(str::to_string),
        url: payload["url"].as_str().unwrap().to_string(),
    }
}

pub async fn standard_source(app: &TestApp, program: &str) -> Source {
    create_source(
        app,
        json!({"name": "crm", "kind": "STANDARD", "programId": program}),
    )
    .await
}

/// Posts a Standard Webhooks request signed with `secret` at `timestamp`.
pub async fn post_signed(
    app: &TestApp,
    source: &Source,
    webhook_id: &str,
    timestamp: i64,
    body: &str,
) -> reqwest::Response {
    let key = decode_standard_secret(source.secret.as_deref().unwrap()).unwrap();
    app.client
        .post(&source.url)
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            sign_standard(&key, webhook_id, timestamp, body.as_bytes()),
        )
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

pub fn deal_event(id: &str, status: &str, updated_at: DateTime<Utc>, extra: Value) -> String {
    let mut data = json!({
        "id": id, "name": format!("Deal {id}"), "amount": "1000.00", "currency": "USD",
        "status": status, "stage": status,
        "createdAt": updated_at.to_rfc3339(), "updatedAt": updated_at.to_rfc3339(),
    });
    for (k, v) in extra.as_object().unwrap() {
        data[k] = v.clone();
    }
    json!({"type": "deal.updated", "data": data}).to_string()
}

/// Waits (bounded) until the inbox has nothing left to apply.
pub async fn drain(app: &TestApp) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let backlog = tandem::domain::inbox::backlog(&app.db).await.unwrap();
        if backlog == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "inbox still holds {backlog} receipts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn receipts(app: &TestApp) -> Vec<Value> {
    let data = app
        .admin_ok(
            "{ webhookReceipts(first: 100) { totalCount edges { node {
                id status reason providerEventId attempts deal { id status } } } } }",
            json!({}),
        )
        .await;
    nodes(&data["webhookReceipts"])
}

async fn events_of(app: &TestApp, types: &[&str]) -> Vec<Value> {
    app.events_settled().await;
    let data = app
        .admin_ok(
            "query($types: [String!]) { events(types: $types, first: 100) { edges { node { type data } } } }",
            json!({"types": types}),
        )
        .await;
    nodes(&data["events"])
}

async fn referral_code(app: &TestApp, partner: &str) -> String {
    let data = app
        .admin_ok(
            "query($id: ID!) { partner(id: $id) { referralCode } }",
            json!({"id": partner}),
        )
        .await;
    data["partner"]["referralCode"]
        .as_str()
        .unwrap()
        .to_string()
}

const DEAL_FIELDS: &str = "id externalId status amount partner { id } attributionMethod";

async fn only_deal(app: &TestApp) -> Value {
    let data = app
        .admin_ok(
            &format!(
                "{{ deals(first: 10) {{ totalCount edges {{ node {{ {DEAL_FIELDS} }} }} }} }}"
            ),
            json!({}),
        )
        .await;
    assert_eq!(data["deals"]["totalCount"], 1, "{data}");
    data["deals"]["edges"][0]["node"].clone()
}

async fn won_deal_is_attributed_and_converts_the_referral(app: TestApp) {
    let program = app.create_program("Webhooks").await;
    let alice = app.create_partner(&program, "Alice").await;
    let bob = app.create_partner(&program, "Bob").await;
    let alice_key = app.partner_key(&alice).await;
    let bob_key = app.partner_key(&bob).await;
    let referral = app
        .submit_referral(
            &alice_key,
            json!({"companyName": "Acme", "companyDomain": "acme.com", "contactEmail": "cto@acme.com"}),
        )
        .await;
    let source = standard_source(&app, &program).await;
    assert!(source.secret.as_deref().unwrap().starts_with("whsec_"));
    assert!(source.url.ends_with(&format!("/webhooks/{}", source.id)));

    let now = Utc::now();
    let body = deal_event(
        "HS-1",
        "won",
        now + chrono::Duration::seconds(1),
        json!({"companyDomain": "https://www.Acme.com/about", "contactEmails": ["buyer@gmail.com"],
               "amount": 12500.5}),
    );
    let resp = post_signed(&app, &source, "msg_1", now.timestamp(), &body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let ack: Value = resp.json().await.unwrap();
    assert_eq!(ack["receipts"][0]["status"], "RECEIVED");
    drain(&app).await;

    let deal = only_deal(&app).await;
    assert_eq!(deal["externalId"], "HS-1");
    assert_eq!(deal["status"], "WON");
    assert_eq!(deal["amount"], "12500.5");
    assert_eq!(deal["partner"]["id"], alice.as_str());
    assert_eq!(deal["attributionMethod"], "DOMAIN");
    let receipts = receipts(&app).await;
    assert_eq!(receipts[0]["status"], "APPLIED");
    assert_eq!(receipts[0]["providerEventId"], "msg_1");
    assert_eq!(receipts[0]["deal"]["id"], deal["id"]);

    // The referral converted, and the partner sees its deal; the other partner does not.
    let mine = app
        .ok(
            &alice_key,
            "query($id: ID!) { referral(id: $id) { status deal { id status } } deals { totalCount } }",
            json!({"id": referral["id"]}),
        )
        .await;
    assert_eq!(mine["referral"]["status"], "CONVERTED");
    assert_eq!(mine["referral"]["deal"]["id"], deal["id"]);
    assert_eq!(mine["deals"]["totalCount"], 1);
    let theirs = app
        .gql(
            &bob_key,
            "query($id: ID!) { deal(id: $id) { id } }",
            json!({"id": deal["id"]}),
        )
        .await;
    assert_eq!(error_code(&theirs), "NOT_FOUND");
    let bob_deals = app
        .ok(&bob_key, "{ deals { totalCount } }", json!({}))
        .await;
    assert_eq!(bob_deals["deals"]["totalCount"], 0);

    // One event of each kind, in the outbox, scoped to Alice.
    let events = events_of(
        &app,
        &[
            "deal.attributed",
            "deal.won",
            "deal.lost",
            "referral.status_changed",
        ],
    )
    .await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["deal.attributed", "deal.won", "referral.status_changed"]
    );
    for event in &events {
        assert_eq!(event["data"]["partnerId"], alice.as_str());
        assert_eq!(event["data"]["programId"], program.as_str());
    }
    assert_eq!(events[0]["data"]["method"], "DOMAIN");
    let bob_events = app
        .ok(&bob_key, "{ events { totalCount } }", json!({}))
        .await;
    assert_eq!(
        bob_events["events"]["totalCount"], 1,
        "only Bob's partner.created"
    );
}

async fn code_beats_domain_and_manual_beats_both(app: TestApp) {
    let program = app.create_program("Rules").await;
    let alice = app.create_partner(&program, "Alice").await;
    let bob = app.create_partner(&program, "Bob").await;
    let alice_key = app.partner_key(&alice).await;
    app.submit_referral(
        &alice_key,
        json!({"companyName": "Acme", "companyDomain": "acme.com"}),
    )
    .await;
    let bob_code = referral_code(&app, &bob).await;
    let source = standard_source(&app, &program).await;
    let t0 = Utc::now() + chrono::Duration::seconds(1);
    let body = deal_event(
        "D-7",
        "open",
        t0,
        json!({"companyDomain": "acme.com", "referralCode": bob_code.to_lowercase()}),
    );
    assert!(
        post_signed(&app, &source, "m1", Utc::now().timestamp(), &body)
            .await
            .status()
            .is_success()
    );
    drain(&app).await;
    let deal = only_deal(&app).await;
    assert_eq!(deal["partner"]["id"], bob.as_str());
    assert_eq!(deal["attributionMethod"], "CODE");

    // An admin credits Alice; a later CRM update still carrying Bob's code does not undo it.
    let attributed = app
        .admin_ok(
            &format!("mutation($input: AttributeDealInput!) {{ attributeDeal(input: $input) {{ deal {{ {DEAL_FIELDS} }} }} }}"),
            json!({"input": {"dealId": deal["id"], "partnerId": alice}}),
        )
        .await;
    assert_eq!(
        attributed["attributeDeal"]["deal"]["attributionMethod"],
        "MANUAL"
    );
    assert_eq!(
        attributed["attributeDeal"]["deal"]["partner"]["id"],
        alice.as_str()
    );
    let won = deal_event(
        "D-7",
        "won",
        t0 + chrono::Duration::seconds(5),
        json!({"companyDomain": "acme.com", "referralCode": bob_code}),
    );
    assert!(
        post_signed(&app, &source, "m2", Utc::now().timestamp(), &won)
            .await
            .status()
            .is_success()
    );
    drain(&app).await;
    let deal = only_deal(&app).await;
    assert_eq!(deal["status"], "WON");
    assert_eq!(deal["partner"]["id"], alice.as_str());
    assert_eq!(deal["attributionMethod"], "MANUAL");
    let won_events = events_of(&app, &["deal.won"]).await;
    assert_eq!(won_events.len(), 1);
    assert_eq!(won_events[0]["data"]["partnerId"], alice.as_str());
    let attributed = events_of(&app, &["deal.attributed"]).await;
    assert_eq!(attributed.len(), 2, "CODE to Bob, then MANUAL to Alice");
    assert_eq!(attributed[0]["data"]["partnerId"], bob.as_str());
    assert_eq!(attributed[0]["data"]["reattributed"], false);
    // The move is flagged without naming Bob: Alice reads this event.
    assert_eq!(attributed[1]["data"]["reattributed"], true);
    assert!(!attributed[1].to_string().contains(bob.as_str()));

    // Rejections: another program's partner, unknown ids, partner keys.
    let other_program = app.create_program("Other").await;
    let stranger = app.create_partner(&other_program, "Stranger").await;
    let mutation =
        "mutation($input: AttributeDealInput!) { attributeDeal(input: $input) { deal { id } } }";
    let resp = app
        .gql(
            &app.admin,
            mutation,
            json!({"input": {"dealId": deal["id"], "partnerId": stranger}}),
        )
        .await;
    assert_eq!(error_code(&resp), "BAD_USER_INPUT");
    assert_eq!(error_field(&resp), "input.partnerId");
    let resp = app
        .gql(
            &app.admin,
            mutation,
            json!({"input": {"dealId": uuid::Uuid::now_v7().to_string(), "partnerId": alice}}),
        )
        .await;
    assert_eq!(error_code(&resp), "NOT_FOUND");
    let resp = app
        .gql(
            &alice_key,
            mutation,
            json!({"input": {"dealId": deal["id"], "partnerId": alice}}),
        )
        .await;
    assert_eq!(error_code(&resp), "FORBIDDEN");
}

async fn stale_updates_are_recorded_not_applied(app: TestApp) {
    let program = app.create_program("Stale").await;
    let partner = app.create_partner(&program, "Pat").await;
    let code = referral_code(&app, &partner).await;
    let source = standard_source(&app, &program).await;
    let t = Utc::now();
    let newer = deal_event(
        "S-1",
        "won",
        t,
        json!({"amount": "200.00", "referralCode": code}),
    );
    let older = deal_event(
        "S-1",
        "open",
        t - chrono::Duration::minutes(5),
        json!({"amount": "100.00", "referralCode": code}),
    );
    let now = Utc::now().timestamp();
    assert!(
        post_signed(&app, &source, "n", now, &newer)
            .await
            .status()
            .is_success()
    );
    drain(&app).await;
    assert!(
        post_signed(&app, &source, "o", now, &older)
            .await
            .status()
            .is_success()
    );
    drain(&app).await;
    let deal = only_deal(&app).await;
    assert_eq!(deal["amount"], "200.00");
    assert_eq!(deal["status"], "WON");
    let receipts = receipts(&app).await;
    assert_eq!(receipts[0]["status"], "IGNORED_STALE", "{receipts:?}");
    assert_eq!(receipts[0]["deal"]["id"], deal["id"]);
    assert_eq!(receipts[1]["status"], "APPLIED");

    // A deletion counts as lost and tells the partner.
    let deletion = json!({"type": "deal.deleted", "data": {"id": "S-1",
        "updatedAt": (t + chrono::Duration::minutes(1)).to_rfc3339()}})
    .to_string();
    assert!(
        post_signed(&app, &source, "d", now, &deletion)
            .await
            .status()
            .is_success()
    );
    drain(&app).await;
    let deal = only_deal(&app).await;
    assert_eq!(deal["status"], "LOST");
    let lost = events_of(&app, &["deal.lost"]).await;
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0]["data"]["deleted"], true);
}

async fn fifty_concurrent_repeats_apply_once(app: TestApp) {
    let program = app.create_program("Repeats").await;
    let partner = app.create_partner(&program, "Pat").await;
    let code = referral_code(&app, &partner).await;
    let source = standard_source(&app, &program).await;
    let body = deal_event("R-1", "won", Utc::now(), json!({"referralCode": code}));
    let ts = Utc::now().timestamp();
    let sends = (0..50).map(|_| post_signed(&app, &source, "msg_repeat", ts, &body));
    for resp in futures_util::future::join_all(sends).await {
        assert_eq!(resp.status(), StatusCode::OK);
    }
    drain(&app).await;
    let receipts = receipts(&app).await;
    assert_eq!(receipts.len(), 50);
    let applied = receipts.iter().filter(|r| r["status"] == "APPLIED").count();
    let duplicates = receipts
        .iter()
        .filter(|r| r["status"] == "DUPLICATE")
        .count();
    assert_eq!((applied, duplicates), (1, 49));
    assert_eq!(app.count_rows("deals").await, 1);
    assert_eq!(events_of(&app, &["deal.won"]).await.len(), 1);
    assert_eq!(events_of(&app, &["deal.attributed"]).await.len(), 1);
}

async fn rejected_requests_store_nothing(app: TestApp) {
    let program = app.create_program("Rejections").await;
    let source = standard_source(&app, &program).await;
    let key = decode_standard_secret(source.secret.as_deref().unwrap()).unwrap();
    let body = deal_event("X", "open", Utc::now(), json!({}));
    let now = Utc::now().timestamp();
    let send = |headers: Vec<(&'static str, String)>, body: String| {
        let mut req = app.client.post(&source.url).body(body);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        req.send()
    };
    let signed = |id: &str, ts: i64| sign_standard(&key, id, ts, body.as_bytes());
    let cases = vec![
        // no signature at all
        vec![
            ("webhook-id", "a".to_string()),
            ("webhook-timestamp", now.to_string()),
        ],
        // a signature of other content
        vec![
            ("webhook-id", "a".to_string()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", sign_standard(&key, "a", now, b"{}")),
        ],
        // signed by another secret
        vec![
            ("webhook-id", "a".to_string()),
            ("webhook-timestamp", now.to_string()),
            (
                "webhook-signature",
                sign_standard(b"another key entirely", "a", now, body.as_bytes()),
            ),
        ],
        // expired (more than 300 s old) and from the future
        vec![
            ("webhook-id", "a".to_string()),
            ("webhook-timestamp", (now - 400).to_string()),
            ("webhook-signature", signed("a", now - 400)),
        ],
        vec![
            ("webhook-id", "a".to_string()),
            ("webhook-timestamp", (now + 400).to_string()),
            ("webhook-signature", signed("a", now + 400)),
        ],
        // the id is part of what is signed
        vec![
            ("webhook-id", "b".to_string()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", signed("a", now)),
        ],
    ];
    for headers in cases {
        let resp = send(headers, body.clone()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let err: Value = resp.json().await.unwrap();
        assert!(
            err["error"]
                .as_str()
                .unwrap()
                .starts_with("verification failed")
        );
    }
    assert_eq!(app.count_rows("webhook_receipts").await, 0);

    // Unknown sources, oversized bodies.
    for path in [uuid::Uuid::now_v7().to_string(), "not-an-id".to_string()] {
        let resp = app
            .client
            .post(format!("{}/webhooks/{path}", app.base))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    let huge = "x".repeat(2 * 1024 * 1024);
    let resp = send(vec![], huge).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The rest of the body was never read: the connection is not reused for the next request.
    assert_eq!(resp.headers()["connection"], "close");
    assert_eq!(app.count_rows("webhook_receipts").await, 0);

    // A valid signature over a malformed or unexpected payload: 400, stored FAILED with why.
    for (id, payload, why) in [
        ("bad-json", "{not json", "not valid JSON"),
        (
            "bad-type",
            r#"{"type":"invoice.paid","data":{"id":"1"}}"#,
            "unsupported event type",
        ),
        (
            "bad-status",
            r#"{"type":"deal.updated","data":{"id":"1","status":"maybe","updatedAt":"2026-01-01T00:00:00Z"}}"#,
            "data.status",
        ),
    ] {
        let resp = post_signed(&app, &source, id, now, payload).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(why), "{body}");
    }
    drain(&app).await;
    let receipts = receipts(&app).await;
    assert_eq!(receipts.len(), 3);
    assert!(
        receipts
            .iter()
            .all(|r| r["status"] == "FAILED" && r["reason"].is_string())
    );
    assert_eq!(app.count_rows("deals").await, 0);
    // The hub is still up.
    assert_eq!(
        app.admin_ok("{ viewer { role } }", json!({})).await["viewer"]["role"],
        "ADMIN"
    );
}

async fn source_creation_rules(app: TestApp) {
    let program = app.create_program("Sources").await;
    let partner = app.create_partner(&program, "Pat").await;
    let partner_key = app.partner_key(&partner).await;
    let mutation = "mutation($input: CreateWebhookSourceInput!) { createWebhookSource(input: $input) { secret url } }";
    for (input, field) in [
        (
            json!({"name": "h", "kind": "HUBSPOT", "programId": program}),
            "input.secret",
        ),
        (
            json!({"name": "s", "kind": "SALESFORCE", "programId": program}),
            "input.salesforceOrgId",
        ),
        (
            json!({"name": "s", "kind": "SALESFORCE", "programId": program, "salesforceOrgId": "nope"}),
            "input.salesforceOrgId",
        ),
        (
            json!({"name": "p", "kind": "PIPEDRIVE", "programId": program, "secret": "nocolon"}),
            "input.secret",
        ),
        (
            json!({"name": "x", "kind": "STANDARD", "programId": program, "secret": "whsec_!!"}),
            "input.secret",
        ),
        (
            json!({"name": "x", "kind": "STANDARD", "programId": uuid::Uuid::now_v7().to_string()}),
            "input.programId",
        ),
        (
            json!({"name": " ", "kind": "STANDARD", "programId": program}),
            "input.name",
        ),
    ] {
        let resp = app.gql(&app.admin, mutation, json!({"input": input})).await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
        assert_eq!(error_field(&resp), field, "{resp}");
    }
    let resp = app
        .gql(
            &partner_key,
            mutation,
            json!({"input": {"name": "x", "kind": "STANDARD", "programId": program}}),
        )
        .await;
    assert_eq!(error_code(&resp), "FORBIDDEN");
    let resp = app
        .gql(
            &partner_key,
            "{ webhookReceipts { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&resp), "FORBIDDEN");
    assert_eq!(app.count_rows("webhook_sources").await, 0);

    let pipedrive = create_source(
        &app,
        json!({"name": "p", "kind": "PIPEDRIVE", "programId": program}),
    )
    .await;
    let secret = pipedrive.secret.unwrap();
    assert!(secret.starts_with("tandem:") && secret.len() > 30);
    let salesforce = create_source(
        &app,
        json!({"name": "s", "kind": "SALESFORCE", "programId": program,
        "salesforceOrgId": "00D5e000000abcdEAA"}),
    )
    .await;
    let token = salesforce.secret.unwrap();
    assert!(salesforce.url.ends_with(&format!("?token={token}")));
    let hubspot = create_source(
        &app,
        json!({"name": "h", "kind": "HUBSPOT", "programId": program,
        "secret": "my-client-secret"}),
    )
    .await;
    assert!(hubspot.secret.is_none(), "the admin supplied it");

    // Listing never shows a secret again, and none is stored in clear.
    let listed = app
        .admin_ok(
            "{ webhookSources { totalCount edges { node { id kind url hubspotSignatureVersion salesforceOrgId program { id } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(listed["webhookSources"]["totalCount"], 3);
    let text = listed.to_string();
    for secret in [secret.as_str(), token.as_str(), "my-client-secret"] {
        assert!(!text.contains(secret));
    }
    let row = sea_orm::ConnectionTrait::query_all_raw(
        app.db.reads(),
        sea_orm::Statement::from_string(
            app.db.backend(),
            "SELECT secret_ciphertext FROM webhook_sources",
        ),
    )
    .await
    .unwrap();
    for r in row {
        let sealed: String = r.try_get("", "secret_ciphertext").unwrap();
        assert!(sealed.starts_with("v1:"));
        for secret in [secret.as_str(), token.as_str(), "my-client-secret"] {
            assert!(!sealed.contains(secret));
        }
    }
}

fn hubspot_v3(secret: &str, method: &str, url: &str, body: &str, ts: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{method}{url}{body}{ts}").as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

async fn hubspot_events_are_verified_and_stored(app: TestApp) {
    let program = app.create_program("HubSpot").await;
    let source = create_source(
        &app,
        json!({"name": "hs", "kind": "HUBSPOT", "programId": program,
        "secret": "hubspot-client-secret"}),
    )
    .await;
    // HubSpot signs the URI as it called it; a query string it percent-encoded is decoded first.
    let called = format!("{}?portal=62515&note=a%3Ab", source.url);
    let signed_uri = format!("{}?portal=62515&note=a:b", source.url);
    let body = json!([
        {"eventId": 101, "subscriptionType": "deal.propertyChange", "objectId": 9001, "occurredAt": Utc::now().timestamp_millis(),
         "propertyName": "dealstage", "propertyValue": "closedwon", "portalId": 62515, "attemptNumber": 0},
        {"eventId": 102, "subscriptionType": "deal.deletion", "objectId": 9002, "occurredAt": Utc::now().timestamp_millis()}
    ])
    .to_string();
    let ts = Utc::now().timestamp_millis().to_string();
    let post = |sig: String, ts: String| {
        app.client
            .post(&called)
            .header("X-HubSpot-Signature-v3", sig)
            .header("X-HubSpot-Request-Timestamp", ts)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    let wrong = hubspot_v3("other-secret", "POST", &signed_uri, &body, &ts);
    assert_eq!(
        post(wrong, ts.clone()).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let old = (Utc::now().timestamp_millis() - 6 * 60 * 1000).to_string();
    let old_sig = hubspot_v3("hubspot-client-secret", "POST", &signed_uri, &body, &old);
    assert_eq!(
        post(old_sig, old).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.count_rows("webhook_receipts").await, 0);

    let good = hubspot_v3("hubspot-client-secret", "POST", &signed_uri, &body, &ts);
    let resp = post(good.clone(), ts.clone()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drain(&app).await;
    let receipts_now = receipts(&app).await;
    let by_event = |id: &str| {
        receipts_now
            .iter()
            .find(|r| r["providerEventId"] == id)
            .cloned()
            .unwrap()
    };
    let waiting = by_event("101");
    assert_eq!(waiting["status"], "RECEIVED");
    assert!(
        waiting["reason"]
            .as_str()
            .unwrap()
            .contains("CRM connection")
    );
    let deletion = by_event("102");
    assert_eq!(deletion["status"], "APPLIED");
    // HubSpot retries: the same events are acknowledged and not stored again as new.
    let resp = post(good, ts).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let again = receipts(&app).await;
    assert_eq!(
        again.iter().filter(|r| r["status"] == "DUPLICATE").count(),
        2
    );

    // A verified body that is not a batch of events: acknowledged (HubSpot retries anything
    // else), stored FAILED with the reason.
    let odd = r#"{"not":"an array"}"#;
    let ts = Utc::now().timestamp_millis().to_string();
    let resp = app
        .client
        .post(&called)
        .header(
            "X-HubSpot-Signature-v3",
            hubspot_v3("hubspot-client-secret", "POST", &signed_uri, odd, &ts),
        )
        .header("X-HubSpot-Request-Timestamp", ts)
        .body(odd)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let newest = &receipts(&app).await[0];
    assert_eq!(newest["status"], "FAILED");
    assert!(
        newest["reason"].as_str().unwrap().contains("JSON array"),
        "{newest}"
    );

    // A v1 source checks X-HubSpot-Signature = hex(SHA-256(secret + body)).
    let v1 = create_source(
        &app,
        json!({"name": "hs1", "kind": "HUBSPOT", "programId": program,
        "secret": "v1-secret", "hubspotSignatureVersion": "V1"}),
    )
    .await;
    let body = json!([{"eventId": 5, "subscriptionType": "deal.creation", "objectId": 1, "occurredAt": 1}]).to_string();
    let digest = hex::encode(Sha256::digest(format!("v1-secret{body}").as_bytes()));
    let resp = app
        .client
        .post(&v1.url)
        .header("X-HubSpot-Signature", digest)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app
        .client
        .post(&v1.url)
        .header("X-HubSpot-Signature", "0".repeat(64))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

async fn pipedrive_deals_arrive_inline(app: TestApp) {
    let program = app.create_program("Pipedrive").await;
    let partner = app.create_partner(&program, "Pat").await;
    let code = referral_code(&app, &partner).await;
    let source = create_source(
        &app,
        json!({"name": "pd", "kind": "PIPEDRIVE", "programId": program,
        "referralCodeField": "9f3a1b2c"}),
    )
    .await;
    let credentials = source.secret.clone().unwrap();
    let body = json!({
        "meta": {"action": "change", "entity": "deal", "entity_id": "2", "id": "8d3c6a5b-1f0e-4a8b-9c7d-2e1f0a9b8c7d",
                 "timestamp": "2026-05-15T10:16:44.000Z", "version": "2.0", "company_id": "1", "user_id": "25760681"},
        "data": {"id": 2, "title": "Globex - Renewal", "value": 12500.5, "currency": "USD", "status": "won",
                 "stage_id": 5, "add_time": "2026-05-15T09:55:02Z", "update_time": "2026-05-15T10:16:44Z",
                 "won_time": "2026-05-15T10:16:44Z", "custom_fields": {"9f3a1b2c": code}},
        "previous": {"status": "open"}
    })
    .to_string();
    let post = |auth: String| {
        app.client
            .post(&source.url)
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    let basic = |c: &str| format!("Basic {}", STANDARD.encode(c));
    for bad in [basic("tandem:wrong-password"), "Bearer x".to_string()] {
        assert_eq!(post(bad).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let resp = app
        .client
        .post(&source.url)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        post(basic(&credentials)).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        post(basic(&credentials)).await.unwrap().status(),
        StatusCode::OK
    );
    drain(&app).await;
    let deal = only_deal(&app).await;
    assert_eq!(deal["externalId"], "2");
    assert_eq!(deal["status"], "WON");
    assert_eq!(deal["partner"]["id"], partner.as_str());
    assert_eq!(deal["attributionMethod"], "CODE");
    let statuses: Vec<Value> = receipts(&app)
        .await
        .into_iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("DUPLICATE"), json!("APPLIED")]);
    // Pipedrive retries non-2xx: an unusable event is acknowledged and stored as FAILED.
    let person = r#"{"meta":{"action":"change","entity":"person","id":"p-1"},"data":{"id":1}}"#;
    let resp = app
        .client
        .post(&source.url)
        .header("authorization", basic(&credentials))
        .body(person)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let newest = &receipts(&app).await[0];
    assert_eq!(newest["status"], "FAILED");
    assert!(newest["reason"].as_str().unwrap().contains("person"));
}

const SALESFORCE_ORG: &str = "00D5e000000abcdEAA";

fn outbound_message(org: &str, notification_id: &str, code: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>{org}</OrganizationId>
   <ActionId>04k5e000000abcdAAA</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/60.0/00D5e000000abcd</EnterpriseUrl>
   <PartnerUrl>https://example.my.salesforce.com/services/Soap/u/60.0/00D5e000000abcd</PartnerUrl>
   <Notification>
    <Id>{notification_id}</Id>
    <sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>0065e000001AbCdAAK</sf:Id>
     <sf:Amount>48000.0</sf:Amount>
     <sf:CloseDate>2026-05-01</sf:CloseDate>
     <sf:CreatedDate>2026-04-02T10:00:00.000Z</sf:CreatedDate>
     <sf:IsClosed>true</sf:IsClosed>
     <sf:IsWon>true</sf:IsWon>
     <sf:Name>Initech Platform</sf:Name>
     <sf:StageName>Closed Won</sf:StageName>
     <sf:SystemModstamp>2026-05-01T07:25:37.000Z</sf:SystemModstamp>
     <sf:Tandem_Referral_Code__c>{code}</sf:Tandem_Referral_Code__c>
    </sObject>
   </Notification>
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>"#
    )
}

async fn salesforce_outbound_messages_are_acknowledged(app: TestApp) {
    let program = app.create_program("Salesforce").await;
    let partner = app.create_partner(&program, "Pat").await;
    let code = referral_code(&app, &partner).await;
    let source = create_source(
        &app,
        json!({"name": "sf", "kind": "SALESFORCE", "programId": program,
        "salesforceOrgId": SALESFORCE_ORG}),
    )
    .await;
    let without_token = source.url.split('?').next().unwrap().to_string();
    let post = |url: String, body: String| {
        app.client
            .post(url)
            .header("content-type", "text/xml; charset=utf-8")
            .header("SOAPAction", "notifications")
            .body(body)
            .send()
    };
    let message = outbound_message(SALESFORCE_ORG, "04l5e000000Xyz1AAC", &code);
    for (url, body) in [
        (without_token.clone(), message.clone()),
        (format!("{without_token}?token=wrongtoken"), message.clone()),
        (
            source.url.clone(),
            outbound_message("00D000000000001AAA", "04l", &code),
        ),
    ] {
        assert_eq!(
            post(url, body).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(app.count_rows("webhook_receipts").await, 0);

    let resp = post(source.url.clone(), message).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ack = resp.text().await.unwrap();
    assert!(ack.contains("<Ack>true</Ack>"), "{ack}");
    drain(&app).await;
    let deal = only_deal(&app).await;
    assert_eq!(deal["externalId"], "0065e000001AbCdAAK");
    assert_eq!(deal["status"], "WON");
    assert_eq!(deal["amount"], "48000.0");
    assert_eq!(deal["partner"]["id"], partner.as_str());

    // An org id is checked even in a body that is otherwise broken; a broken body with the
    // right org is stored FAILED and not acknowledged.
    let broken = format!("<OrganizationId>{SALESFORCE_ORG}</OrganizationId><unclosed>");
    let resp = post(source.url.clone(), broken).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(receipts(&app).await[0]["status"], "FAILED");
}

db_tests!(
    won_deal_is_attributed_and_converts_the_referral,
    code_beats_domain_and_manual_beats_both,
    stale_updates_are_recorded_not_applied,
    fifty_concurrent_repeats_apply_once,
    rejected_requests_store_nothing,
    source_creation_rules,
    hubspot_events_are_verified_and_stored,
    pipedrive_deals_arrive_inline,
    salesforce_outbound_messages_are_acknowledged,
    a_failing_receipt_is_retried_alone,
);

/// Two hub instances on one PostgreSQL database, both receiving and both applying (claims with
/// `FOR UPDATE SKIP LOCKED`): every receipt is applied exactly once, and concurrent updates of
/// one deal end at its newest state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_apply_every_receipt_once() {
    let Some(app) = TestApp::postgres().await else {
        eprintln!(
            "skipped two_instances_on_postgres_apply_every_receipt_once on PostgreSQL: TANDEM_TEST_POSTGRES_URL is not set"
        );
        return;
    };
    let (second_base, _second) = app.spawn_instance().await;
    let program = app.create_program("Scale-out").await;
    let partner = app.create_partner(&program, "Pat").await;
    let code = referral_code(&app, &partner).await;
    let source = standard_source(&app, &program).await;
    let second = Source {
        id: source.id.clone(),
        secret: source.secret.clone(),
        url: source.url.replace(&app.base, &second_base),
    };
    let t0 = Utc::now();
    let ts = t0.timestamp();
    let mut requests = Vec::new();
    for n in 0..200 {
        let target = if n % 2 == 0 { &source } else { &second };
        let body = deal_event(
            &format!("deal-{n}"),
            "won",
            t0,
            json!({"referralCode": code}),
        );
        requests.push((target, format!("distinct-{n}"), body));
    }
    // Forty updates of one deal, in shuffled order across both instances.
    for n in 0..40 {
        let version = (n * 17) % 40;
        let target = if n % 2 == 0 { &second } else { &source };
        let body = deal_event(
            "shared",
            "open",
            t0 + chrono::Duration::seconds(version),
            json!({"amount": format!("{version}.00"), "referralCode": code}),
        );
        requests.push((target, format!("shared-{n}"), body));
    }
    let sends = requests
        .iter()
        .map(|(target, id, body)| post_signed(&app, target, id, ts, body));
    for resp in futures_util::future::join_all(sends).await {
        assert_eq!(resp.status(), StatusCode::OK);
    }
    drain(&app).await;
    assert_eq!(
        count(&app.db, "SELECT COUNT(*) AS n FROM webhook_receipts").await,
        240
    );
    assert_eq!(
        count(&app.db, "SELECT COUNT(*) AS n FROM webhook_receipts WHERE status = 'APPLIED' AND provider_event_id LIKE 'distinct-%'").await,
        200
    );
    assert_eq!(
        count(&app.db, "SELECT COUNT(*) AS n FROM webhook_receipts WHERE status NOT IN ('APPLIED', 'IGNORED_STALE')").await,
        0
    );
    assert_eq!(count(&app.db, "SELECT COUNT(*) AS n FROM deals").await, 201);
    assert_eq!(
        count(
            &app.db,
            "SELECT COUNT(*) AS n FROM events WHERE type = 'deal.won'"
        )
        .await,
        200
    );
    assert_eq!(
        count(
            &app.db,
            "SELECT COUNT(*) AS n FROM events WHERE type = 'deal.attributed'"
        )
        .await,
        201
    );
    let row = sea_orm::ConnectionTrait::query_one_raw(
        app.db.reads(),
        sea_orm::Statement::from_string(
            app.db.backend(),
            "SELECT amount FROM deals WHERE external_id = 'shared'",
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let amount: String = row.try_get("", "amount").unwrap();
    assert_eq!(amount, "39.00", "the newest update wins");
}

/// A receipt whose application hits a database error is rolled back alone (the rest of its
/// batch applies), stays RECEIVED with the reason and is retried until it applies.
async fn a_failing_receipt_is_retried_alone(app: TestApp) {
    let program = app.create_program("Retries").await;
    let source = standard_source(&app, &program).await;
    let trigger = if app.db.is_postgres() {
        vec![
            "CREATE FUNCTION refuse_boom() RETURNS trigger AS $$ BEGIN \
             IF NEW.external_id = 'boom' THEN RAISE EXCEPTION 'boom'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON deals FOR EACH ROW EXECUTE FUNCTION refuse_boom()",
        ]
    } else {
        vec![
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON deals WHEN NEW.external_id = 'boom' \
             BEGIN SELECT RAISE(ABORT, 'boom'); END",
        ]
    };
    for sql in trigger {
        app.db.execute_unprepared(sql).await.unwrap();
    }
    let now = Utc::now();
    let ts = now.timestamp();
    for id in ["before", "boom", "after"] {
        let body = deal_event(id, "open", now, json!({}));
        assert!(
            post_signed(&app, &source, id, ts, &body)
                .await
                .status()
                .is_success()
        );
    }
    // The two good receipts apply; the failing one waits for a retry.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let failing = loop {
        let all = receipts(&app).await;
        let applied = all.iter().filter(|r| r["status"] == "APPLIED").count();
        let boom = all
            .iter()
            .find(|r| r["providerEventId"] == "boom")
            .unwrap()
            .clone();
        if applied == 2 && boom["attempts"].as_i64().unwrap() >= 1 {
            break boom;
        }
        assert!(std::time::Instant::now() < deadline, "{all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failing["status"], "RECEIVED");
    assert!(
        failing["reason"].as_str().unwrap().contains("retrying"),
        "{failing}"
    );
    assert_eq!(app.count_rows("deals").await, 2);

    // Once the cause is gone, the retry applies it.
    let drop_sql = if app.db.is_postgres() {
        "DROP TRIGGER refuse_boom ON deals"
    } else {
        "DROP TRIGGER refuse_boom"
    };
    app.db.execute_unprepared(drop_sql).await.unwrap();
    drain(&app).await;
    let all = receipts(&app).await;
    assert!(all.iter().all(|r| r["status"] == "APPLIED"), "{all:?}");
    assert_eq!(app.count_rows("deals").await, 3);
}
