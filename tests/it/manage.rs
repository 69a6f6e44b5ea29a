//! Day-two management: webhook sources rotated, disabled and deleted (seen by every instance),
//! endpoints updated, disabled and deleted.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tandem::config::Config;

use crate::{
    db_tests,
    helpers::{TestApp, error_code, error_field, nodes},
    outbound::{PRIVATE_TARGETS, Receiver, endpoint, fast, no_worker, strict},
    webhooks::{Source, create_source, post_signed, standard_source},
};

const UPDATE_ENDPOINT: &str = "mutation($input: UpdateWebhookEndpointInput!) {
    updateWebhookEndpoint(input: $input) { endpoint { id url eventTypes description rateLimit status } } }";

const ROTATE_SOURCE: &str = "mutation($input: RotateWebhookSourceSecretInput!) {
    rotateWebhookSourceSecret(input: $input) { secret url source { id status previousSecretExpiresAt } } }";

fn body(id: &str) -> String {
    crate::webhooks::deal_event(id, "OPEN", chrono::Utc::now(), json!({}))
}

/// The source as the sender now knows it: same URL, the rotated secret.
fn with_secret(source: &Source, secret: &str) -> Source {
    Source {
        id: source.id.clone(),
        secret: Some(secret.to_string()),
        url: source.url.clone(),
    }
}

async fn post(app: &TestApp, source: &Source, id: &str) -> u16 {
    let now = chrono::Utc::now().timestamp();
    post_signed(app, source, id, now, &body(id))
        .await
        .status()
        .as_u16()
}

async fn rotate(app: &TestApp, source: &Source, input: Value) -> String {
    let mut input = input;
    input["id"] = json!(source.id);
    let data = app.admin_ok(ROTATE_SOURCE, json!({"input": input})).await;
    data["rotateWebhookSourceSecret"]["secret"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn sources_rotate_with_a_grace_period(app: TestApp) {
    let program = app.create_program("Rotation").await;
    let first = standard_source(&app, &program).await;
    assert_eq!(post(&app, &first, "a1").await, 200);

    // Rotated: both secrets verify during the grace period.
    let second = with_secret(&first, &rotate(&app, &first, json!({})).await);
    assert_ne!(second.secret, first.secret);
    assert_eq!(
        post(&app, &first, "a2").await,
        200,
        "old secret in its grace"
    );
    assert_eq!(post(&app, &second, "a3").await, 200, "new secret");
    let sources = app
        .admin_ok(
            "{ webhookSources { edges { node { id previousSecretExpiresAt } } } }",
            json!({}),
        )
        .await;
    let until = nodes(&sources["webhookSources"])[0]["previousSecretExpiresAt"]
        .as_str()
        .unwrap()
        .parse::<chrono::DateTime<chrono::Utc>>()
        .unwrap();
    let hours = (until - chrono::Utc::now()).num_minutes() as f64 / 60.0;
    assert!((23.9..=24.0).contains(&hours), "default grace {hours} h");

    // Once the grace period has run out (moved into the past here; an instance reading the
    // source afresh sees it so), the old secret is refused and the new one verifies.
    let [until, id] = app.db.params();
    app.db
        .execute_write(
            format!(
                "UPDATE webhook_sources SET previous_secret_expires_at = {until} WHERE id = {id}"
            ),
            vec![
                (chrono::Utc::now() - chrono::Duration::minutes(1)).into(),
                first.id.clone().into(),
            ],
        )
        .await
        .unwrap();
    let (later_base, _later) = app.spawn_instance().await;
    let on_later = |s: &Source| Source {
        url: s.url.replace(&app.base, &later_base),
        ..with_secret(s, s.secret.as_deref().unwrap())
    };
    assert_eq!(
        post(&app, &on_later(&first), "a2b").await,
        401,
        "grace over"
    );
    assert_eq!(post(&app, &on_later(&second), "a3b").await, 200);

    // Rotated again with no grace: only the newest verifies.
    let third = with_secret(
        &first,
        &rotate(&app, &first, json!({"graceHours": 0})).await,
    );
    assert_eq!(post(&app, &second, "a4").await, 401, "grace ended at once");
    assert_eq!(post(&app, &first, "a5").await, 401, "two rotations ago");
    assert_eq!(post(&app, &third, "a6").await, 200);

    // Rejections.
    let resp = app
        .gql(
            &app.admin,
            ROTATE_SOURCE,
            json!({"input": {"id": first.id, "graceHours": -1}}),
        )
        .await;
    assert_eq!(error_code(&resp), "BAD_USER_INPUT");
    assert_eq!(error_field(&resp), "input.graceHours");
    let resp = app
        .gql(
            &app.admin,
            ROTATE_SOURCE,
            json!({"input": {"id": first.id, "secret": "whsec_short"}}),
        )
        .await;
    assert_eq!(error_code(&resp), "BAD_USER_INPUT");
    assert_eq!(error_field(&resp), "input.secret");
    let hubspot = create_source(
        &app,
        json!({"name": "h", "kind": "HUBSPOT", "programId": program, "secret": "client-secret-1"}),
    )
    .await;
    let resp = app
        .gql(
            &app.admin,
            ROTATE_SOURCE,
            json!({"input": {"id": hubspot.id}}),
        )
        .await;
    assert_eq!(
        error_code(&resp),
        "BAD_USER_INPUT",
        "HubSpot needs the new secret"
    );
    let data = app
        .admin_ok(
            ROTATE_SOURCE,
            json!({"input": {"id": hubspot.id, "secret": "client-secret-2"}}),
        )
        .await;
    assert!(data["rotateWebhookSourceSecret"]["secret"].is_null());
    let resp = app
        .gql(
            &app.admin,
            ROTATE_SOURCE,
            json!({"input": {"id": "01900000-0000-7000-8000-000000000000"}}),
        )
        .await;
    assert_eq!(error_code(&resp), "NOT_FOUND");
    let partner = app.create_partner(&program, "P").await;
    let key = app.partner_key(&partner).await;
    let resp = app
        .gql(&key, ROTATE_SOURCE, json!({"input": {"id": first.id}}))
        .await;
    assert_eq!(error_code(&resp), "FORBIDDEN");
}

const SOURCE_STATE: &str = "mutation($id: ID!) {
    disableWebhookSource(input: {id: $id}) { source { id status } } }";

async fn disabled_and_deleted_sources_answer_410_and_store_nothing(app: TestApp) {
    let program = app.create_program("Lifecycle").await;
    let source = standard_source(&app, &program).await;
    assert_eq!(post(&app, &source, "b1").await, 200);
    // A second instance on the same database has the source cached.
    let (other_base, _other) = app.spawn_instance().await;
    let on_other = Source {
        url: source.url.replace(&app.base, &other_base),
        ..with_secret(&source, source.secret.as_deref().unwrap())
    };
    assert_eq!(post(&app, &on_other, "b2").await, 200);
    let receipts = app.count_rows("webhook_receipts").await;

    let data = app.admin_ok(SOURCE_STATE, json!({"id": source.id})).await;
    assert_eq!(data["disableWebhookSource"]["source"]["status"], "DISABLED");
    assert_eq!(post(&app, &source, "b3").await, 410);
    assert_eq!(
        app.count_rows("webhook_receipts").await,
        receipts,
        "nothing stored"
    );
    if app.db.is_postgres() {
        // Every instance learns of it through NOTIFY, within a second.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let status = post(&app, &on_other, "b4").await;
            if status == 410 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the other instance still answers {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // (What the other instance accepted before it learned of the change was stored.)
    let receipts = app.count_rows("webhook_receipts").await;

    let data = app
        .admin_ok(
            "mutation($id: ID!) { enableWebhookSource(input: {id: $id}) { source { status } } }",
            json!({"id": source.id}),
        )
        .await;
    assert_eq!(data["enableWebhookSource"]["source"]["status"], "ENABLED");
    assert_eq!(post(&app, &source, "b5").await, 200);

    let data = app
        .admin_ok(
            "mutation($id: ID!) { deleteWebhookSource(input: {id: $id}) { source { status deletedAt } } }",
            json!({"id": source.id}),
        )
        .await;
    assert!(data["deleteWebhookSource"]["source"]["deletedAt"].is_string());
    assert_eq!(post(&app, &source, "b6").await, 410);
    // Gone from the list; its receipts stay as history; it can no longer be changed.
    let data = app
        .admin_ok(
            "{ webhookSources { totalCount } webhookReceipts { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(data["webhookSources"]["totalCount"], 0);
    assert_eq!(data["webhookReceipts"]["totalCount"], receipts + 1);
    for mutation in [
        "mutation($id: ID!) { enableWebhookSource(input: {id: $id}) { source { id } } }",
        "mutation($id: ID!) { deleteWebhookSource(input: {id: $id}) { source { id } } }",
        "mutation($id: ID!) { rotateWebhookSourceSecret(input: {id: $id}) { secret } }",
    ] {
        let resp = app
            .gql(&app.admin, mutation, json!({"id": source.id}))
            .await;
        assert_eq!(error_code(&resp), "NOT_FOUND", "{mutation}");
    }
}

async fn endpoints_are_updated_and_disabled(app: TestApp) {
    let first = Receiver::start().await;
    let second = Receiver::start().await;
    let program = app.create_program("Endpoints").await;
    let (id, _) = endpoint(
        &app,
        &app.admin,
        json!({"url": first.url, "eventTypes": ["partner.updated"], "rateLimit": 50}),
    )
    .await;

    // URL, event types, description and rate limit change; deliveries go to the new URL.
    let data = app
        .admin_ok(
            UPDATE_ENDPOINT,
            json!({"input": {"id": id, "url": second.url, "eventTypes": ["partner.created", "partner.created"], "description": " CRM bridge ", "rateLimit": 20}}),
        )
        .await;
    let updated = &data["updateWebhookEndpoint"]["endpoint"];
    assert_eq!(updated["url"], second.url.as_str());
    assert_eq!(updated["eventTypes"], json!(["partner.created"]));
    assert_eq!(updated["description"], "CRM bridge");
    assert_eq!(updated["rateLimit"], 20);
    app.create_partner(&program, "Routed").await;
    second
        .wait_until("the delivery at the new URL", |r| r.len() == 1)
        .await;
    assert!(first.received().is_empty());

    // Null resets the rate limit and the description; absent fields keep their value.
    let data = app
        .admin_ok(
            UPDATE_ENDPOINT,
            json!({"input": {"id": id, "rateLimit": null, "description": null}}),
        )
        .await;
    let updated = &data["updateWebhookEndpoint"]["endpoint"];
    assert_eq!(updated["rateLimit"], Value::Null);
    assert_eq!(updated["description"], Value::Null);
    assert_eq!(updated["url"], second.url.as_str());

    // Rejections name the field and change nothing.
    for (input, field) in [
        (json!({"id": id, "rateLimit": 0}), "input.rateLimit"),
        (json!({"id": id, "rateLimit": 10_001}), "input.rateLimit"),
        (json!({"id": id, "eventTypes": []}), "input.eventTypes"),
        (
            json!({"id": id, "eventTypes": ["deal.won", "nope"]}),
            "input.eventTypes[1]",
        ),
        (json!({"id": id, "url": "ftp://example.com/x"}), "input.url"),
        (
            json!({"id": id, "description": "x".repeat(501)}),
            "input.description",
        ),
    ] {
        let resp = app
            .gql(&app.admin, UPDATE_ENDPOINT, json!({"input": input}))
            .await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{input}");
        assert_eq!(error_field(&resp), field, "{input}");
    }
    let resp = app
        .gql(
            &app.admin,
            "mutation($input: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $input) { secret } }",
            json!({"input": {"url": second.url, "eventTypes": ["deal.won"], "rateLimit": -3}}),
        )
        .await;
    assert_eq!(error_field(&resp), "input.rateLimit");

    // Another key's endpoint is not found for a partner key.
    let partner = app.create_partner(&program, "Other").await;
    second
        .wait_until("the second delivery", |r| r.len() == 2)
        .await;
    let key = app.partner_key(&partner).await;
    let resp = app
        .gql(
            &key,
            UPDATE_ENDPOINT,
            json!({"input": {"id": id, "rateLimit": 5}}),
        )
        .await;
    assert_eq!(error_code(&resp), "NOT_FOUND");

    // Disabled by hand: nothing more is delivered until it is enabled.
    let data = app
        .admin_ok(
            "mutation($id: ID!) { disableWebhookEndpoint(input: {id: $id}) { endpoint { status disabledReason } } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(
        data["disableWebhookEndpoint"]["endpoint"]["status"],
        "DISABLED"
    );
    let delivered = second.received().len();
    app.create_partner(&program, "Unheard").await;
    app.events_settled().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(second.received().len(), delivered);

    // Enabled again with its own limit of 4 per second: the missed event and 8 new ones (9
    // deliveries, a burst of 4 then one every 250 ms) cannot arrive in less than 1.25 s.
    app.admin_ok(
        "mutation($id: ID!) { enableWebhookEndpoint(input: {id: $id}) { endpoint { id } } }",
        json!({"id": id}),
    )
    .await;
    app.admin_ok(
        UPDATE_ENDPOINT,
        json!({"input": {"id": id, "rateLimit": 4}}),
    )
    .await;
    app.admin_ok(
        "mutation($id: ID!, $since: DateTime!) { replayWebhookDeliveries(input: {endpointId: $id, since: $since}) { queued } }",
        json!({"id": id, "since": "2000-01-01T00:00:00Z"}),
    )
    .await;
    for i in 0..8 {
        app.create_partner(&program, &format!("Limited {i}")).await;
    }
    let got = second
        .wait_until("nine more deliveries", |r| r.len() == delivered + 9)
        .await;
    let spread = got[delivered + 8].at - got[delivered].at;
    assert!(
        spread >= Duration::from_millis(1_150),
        "9 deliveries at 4/s arrived within {spread:?}"
    );

    // The attempts of a whole page of deliveries load together, not one query per delivery.
    let before = app.db.statement_count();
    let data = app
        .admin_ok(
            "query($id: ID!) { webhookDeliveries(first: 50, filter: {endpointId: $id}) { edges { node {
                attempts { totalCount edges { node { attempt statusCode } } } } } } }",
            json!({"id": id}),
        )
        .await;
    let statements = app.db.statement_count() - before;
    let deliveries = nodes(&data["webhookDeliveries"]);
    assert!(deliveries.len() >= 10, "{}", deliveries.len());
    assert!(
        deliveries
            .iter()
            .all(|d| d["attempts"]["totalCount"].as_i64() >= Some(1)),
        "{deliveries:?}"
    );
    assert!(
        statements <= 6,
        "{statements} statements for {} deliveries",
        deliveries.len()
    );
}

async fn an_endpoint_cannot_be_moved_to_a_private_address(app: TestApp) {
    let (id, _) = endpoint(
        &app,
        &app.admin,
        json!({"url": "https://hooks.example.com/tandem", "eventTypes": ["deal.won"]}),
    )
    .await;
    for url in PRIVATE_TARGETS {
        let resp = app
            .gql(
                &app.admin,
                UPDATE_ENDPOINT,
                json!({"input": {"id": id, "url": url}}),
            )
            .await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{url}: {resp}");
        assert_eq!(error_field(&resp), "input.url");
    }
    let data = app
        .admin_ok("{ webhookEndpoints { edges { node { url } } } }", json!({}))
        .await;
    assert_eq!(
        nodes(&data["webhookEndpoints"])[0]["url"],
        "https://hooks.example.com/tandem"
    );
}

/// The statuses of an endpoint's deliveries.
async fn statuses(app: &TestApp, endpoint: &str) -> Vec<String> {
    let data = app
        .admin_ok(
            "query($id: ID!) { webhookDeliveries(filter: {endpointId: $id}) { edges { node { status } } } }",
            json!({"id": endpoint}),
        )
        .await;
    nodes(&data["webhookDeliveries"])
        .into_iter()
        .map(|d| d["status"].as_str().unwrap().to_string())
        .collect()
}

async fn deleting_an_endpoint_cancels_its_pending_deliveries(app: TestApp) {
    use tandem::outbound::Fanout;
    let program = app.create_program("Deleted").await;
    let (id, _) = endpoint(
        &app,
        &app.admin,
        json!({"url": "http://127.0.0.1:9/never", "eventTypes": ["partner.created"]}),
    )
    .await;
    let (kept, _) = endpoint(
        &app,
        &app.admin,
        json!({"url": "http://127.0.0.1:9/kept", "eventTypes": ["partner.created"]}),
    )
    .await;
    let fanout = Fanout::new(app.db.clone());
    fanout.catch_up().await.unwrap();
    for name in ["A", "B", "C"] {
        app.create_partner(&program, name).await;
    }
    app.events_settled().await;
    assert_eq!(fanout.catch_up().await.unwrap(), 6);

    let data = app
        .admin_ok(
            "mutation($id: ID!) { deleteWebhookEndpoint(input: {id: $id}) { cancelledDeliveries endpoint { status deletedAt } } }",
            json!({"id": id}),
        )
        .await;
    let deleted = &data["deleteWebhookEndpoint"];
    assert_eq!(deleted["cancelledDeliveries"], 3);
    assert_eq!(deleted["endpoint"]["status"], "DISABLED");
    assert!(deleted["endpoint"]["deletedAt"].is_string());

    // Its history stays readable; the other endpoint's deliveries are untouched.
    assert_eq!(statuses(&app, &id).await, ["CANCELLED"; 3]);
    assert_eq!(statuses(&app, &kept).await, ["PENDING"; 3]);
    let data = app
        .admin_ok("{ webhookEndpoints { edges { node { id } } } }", json!({}))
        .await;
    assert_eq!(
        nodes(&data["webhookEndpoints"]).len(),
        1,
        "the deleted one is not listed"
    );
    // A deleted endpoint gets nothing new and can no longer be changed.
    app.create_partner(&program, "D").await;
    app.events_settled().await;
    assert_eq!(fanout.catch_up().await.unwrap(), 1);
    for mutation in [
        "mutation($id: ID!) { enableWebhookEndpoint(input: {id: $id}) { endpoint { id } } }",
        "mutation($id: ID!) { deleteWebhookEndpoint(input: {id: $id}) { cancelledDeliveries } }",
        "mutation($id: ID!) { updateWebhookEndpoint(input: {id: $id, rateLimit: 1}) { endpoint { id } } }",
    ] {
        let resp = app.gql(&app.admin, mutation, json!({"id": id})).await;
        assert_eq!(error_code(&resp), "NOT_FOUND", "{mutation}");
    }
}

async fn every_attempt_is_logged_and_a_delivery_can_be_resent(app: TestApp) {
    use crate::outbound::Reply;
    let receiver = Receiver::start().await;
    receiver.behave(|nth| match nth {
        1 => Reply::Status(500),
        2 => Reply::Status(503),
        _ => Reply::Big(5000),
    });
    let program = app.create_program("Attempts").await;
    let (id, _) = endpoint(
        &app,
        &app.admin,
        json!({"url": receiver.url, "eventTypes": ["partner.created"]}),
    )
    .await;
    app.create_partner(&program, "Retried").await;
    receiver
        .wait_until("three attempts", |r| r.len() == 3)
        .await;
    let query = "query($id: ID!) { webhookDeliveries(filter: {endpointId: $id}) { edges { node {
        id status attempt attempts { totalCount edges { node { attempt at statusCode latencyMs responseSnippet error } } } } } } }";
    let deadline = Instant::now() + Duration::from_secs(10);
    let delivery = loop {
        let data = app.admin_ok(query, json!({"id": id})).await;
        let delivery = nodes(&data["webhookDeliveries"]).remove(0);
        if delivery["status"] == "SUCCEEDED" {
            break delivery;
        }
        assert!(Instant::now() < deadline, "{delivery}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let attempts = nodes(&delivery["attempts"]);
    assert_eq!(delivery["attempts"]["totalCount"], 3);
    let codes: Vec<&Value> = attempts.iter().map(|a| &a["statusCode"]).collect();
    assert_eq!(codes, [&json!(500), &json!(503), &json!(200)]);
    assert_eq!(
        attempts
            .iter()
            .map(|a| a["attempt"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(attempts[0]["responseSnippet"], "receiver says hi");
    assert_eq!(attempts[0]["error"], "HTTP 500: receiver says hi");
    assert_eq!(attempts[1]["error"], "HTTP 503: receiver says hi");
    assert_eq!(
        attempts[2]["responseSnippet"],
        "x".repeat(1024),
        "the first KiB only"
    );
    assert_eq!(attempts[2]["error"], Value::Null);
    assert!(
        attempts
            .iter()
            .all(|a| a["latencyMs"].is_i64() && a["at"].is_string())
    );

    // Resent: the same webhook-id once more, and a fourth attempt in the log.
    let delivery_id = delivery["id"].as_str().unwrap();
    let data = app
        .admin_ok(
            "mutation($id: ID!) { resendWebhookDelivery(input: {id: $id}) { delivery { status } } }",
            json!({"id": delivery_id}),
        )
        .await;
    assert_eq!(
        data["resendWebhookDelivery"]["delivery"]["status"],
        "PENDING"
    );
    let got = receiver.wait_until("the resend", |r| r.len() == 4).await;
    assert_eq!(got[3].id(), got[0].id(), "the original webhook-id");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let data = app.admin_ok(query, json!({"id": id})).await;
        let delivery = nodes(&data["webhookDeliveries"]).remove(0);
        if delivery["attempts"]["totalCount"] == 4 && delivery["status"] == "SUCCEEDED" {
            assert_eq!(delivery["attempt"], 4);
            break;
        }
        assert!(Instant::now() < deadline, "{delivery}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Another key cannot resend it; an unknown id is not found.
    let partner = app.create_partner(&program, "Nosy").await;
    let key = app.partner_key(&partner).await;
    for (token, id) in [
        (key.as_str(), delivery_id),
        (app.admin.as_str(), "01900000-0000-7000-8000-000000000000"),
    ] {
        let resp = app
            .gql(
                token,
                "mutation($id: ID!) { resendWebhookDelivery(input: {id: $id}) { delivery { id } } }",
                json!({"id": id}),
            )
            .await;
        assert_eq!(error_code(&resp), "NOT_FOUND");
    }
}

/// Attempts are kept for an hour.
fn short_retention(config: &mut Config) {
    config.webhook_attempt_retention = "1h".to_string();
}

async fn prune_drops_attempts_past_their_retention(app: TestApp) {
    use sea_orm::{ActiveValue::Set, EntityTrait};
    use tandem::db::entities::webhook_delivery_attempt;
    let now = chrono::Utc::now();
    let rows: Vec<webhook_delivery_attempt::ActiveModel> = [0, 30, 59, 61, 120, 60 * 24 * 40]
        .iter()
        .enumerate()
        .map(|(i, minutes)| webhook_delivery_attempt::ActiveModel {
            id: Set(tandem::domain::ids::new_id()),
            delivery_id: Set("d".into()),
            attempt: Set(i as i32 + 1),
            attempted_at: Set(now - chrono::Duration::minutes(*minutes)),
            status_code: Set(Some(500)),
            latency_ms: Set(Some(3)),
            response_snippet: Set(None),
            error: Set(Some("HTTP 500".into())),
        })
        .collect();
    let tx = app.db.begin_write().await.unwrap();
    webhook_delivery_attempt::Entity::insert_many(rows)
        .exec(&*tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let stats = crate::commissions::run_job(&app, "prune", false).await;
    assert_eq!(stats["attemptsDeleted"], 3, "{stats}");
    assert_eq!(app.count_rows("webhook_delivery_attempts").await, 3);
    let stats = crate::commissions::run_job(&app, "prune", false).await;
    assert_eq!(stats["attemptsDeleted"], 0);
}

db_tests!(
    sources_rotate_with_a_grace_period,
    disabled_and_deleted_sources_answer_410_and_store_nothing,
    endpoints_are_updated_and_disabled,
);

db_tests!(mod quick_retries, config = fast; every_attempt_is_logged_and_a_delivery_can_be_resent);
db_tests!(mod retention, config = short_retention; prune_drops_attempts_past_their_retention);
db_tests!(mod strict_targets, config = strict; an_endpoint_cannot_be_moved_to_a_private_address);
db_tests!(mod without_worker, config = no_worker; deleting_an_endpoint_cancels_its_pending_deliveries);
