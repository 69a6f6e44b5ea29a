//! Events out: signed outbound webhooks (verified with the Standard Webhooks reference
//! library), retries, `Retry-After`, 410, timeouts, rotation, replay, scoping, crash recovery,
//! several workers on one PostgreSQL, and GraphQL subscriptions over websockets.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use poem::{
    EndpointExt, Request, Response, Server,
    listener::{Acceptor, Listener, TcpListener},
};
use serde_json::{Value, json};
use tandem::config::Config;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use crate::{
    commissions::{Crm, partner, program_with, run_job},
    db_tests,
    helpers::{TestApp, count, error_code, error_field, nodes},
};

/// What a test receiver answers to the n-th request (1-based) carrying a given webhook-id.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    Status(u16),
    RetryAfter(u16, u64),
    Hang(Duration),
    Redirect(&'static str),
    Big(usize),
}

type Behaviour = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn id(&self) -> String {
        self.headers["webhook-id"].to_str().unwrap().to_string()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    /// Verifies with the Standard Webhooks reference library.
    pub fn verifies_with(&self, secret: &str) -> bool {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&self.body, &self.headers)
            .is_ok()
    }
}

/// A local HTTP server standing in for a subscriber's endpoint.
pub struct Receiver {
    pub url: String,
    log: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    /// (requests being answered now, most at once so far).
    concurrency: Arc<Mutex<(usize, usize)>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let log: Arc<Mutex<Vec<Received>>> = Arc::default();
        let behaviour: Arc<Mutex<Behaviour>> =
            Arc::new(Mutex::new(Arc::new(|_| Reply::Status(204))));
        let concurrency: Arc<Mutex<(usize, usize)>> = Arc::default();
        let (l, b, c) = (log.clone(), behaviour.clone(), concurrency.clone());
        let endpoint = poem::endpoint::make(move |req: Request| {
            let (log, behaviour, concurrency) = (l.clone(), b.clone(), c.clone());
            async move {
                {
                    let mut c = concurrency.lock().unwrap();
                    c.0 += 1;
                    c.1 = c.1.max(c.0);
                }
                let headers = req.headers().clone();
                let body = req.into_body().into_vec().await.unwrap_or_default();
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let nth = {
                    let mut log = log.lock().unwrap();
                    log.push(Received {
                        headers,
                        body,
                        at: Instant::now(),
                    });
                    log.iter().filter(|r| r.id() == id).count()
                };
                let reply = (behaviour.lock().unwrap().clone())(nth);
                let response = match reply {
                    Reply::Status(code) => Response::builder()
                        .status(http::StatusCode::from_u16(code).unwrap())
                        .body("receiver says hi"),
                    Reply::RetryAfter(code, secs) => Response::builder()
                        .status(http::StatusCode::from_u16(code).unwrap())
                        .header("retry-after", secs.to_string())
                        .body(""),
                    Reply::Hang(d) => {
                        tokio::time::sleep(d).await;
                        Response::builder().status(http::StatusCode::OK).body("")
                    }
                    Reply::Redirect(to) => Response::builder()
                        .status(http::StatusCode::FOUND)
                        .header("location", to)
                        .body(""),
                    Reply::Big(n) => Response::builder()
                        .status(http::StatusCode::OK)
                        .body(vec![b'x'; n]),
                };
                concurrency.lock().unwrap().0 -= 1;
                response
            }
        });
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .unwrap();
        let addr = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
        tokio::spawn(Server::new_with_acceptor(acceptor).run(endpoint.map_to_response()));
        Receiver {
            url: format!("http://{addr}/hooks"),
            log,
            behaviour,
            concurrency,
        }
    }

    /// The most requests this receiver was answering at once.
    pub fn max_concurrency(&self) -> usize {
        self.concurrency.lock().unwrap().1
    }

    pub fn behave(&self, f: impl Fn(usize) -> Reply + Send + Sync + 'static) {
        *self.behaviour.lock().unwrap() = Arc::new(f);
    }

    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until `pred` holds for the requests received so far.
    pub async fn wait_until(
        &self,
        what: &str,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.received();
            if pred(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "receiver: still waiting for {what}; got {} requests",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Compressed retry timing for tests.
pub fn fast(config: &mut Config) {
    config.webhook_retry_schedule = "100ms,200ms,300ms".to_string();
    config.webhook_timeout_ms = 1_000;
    config.webhook_claim_secs = 30;
}

const CREATE: &str = "mutation($input: CreateWebhookEndpointInput!) {
    createWebhookEndpoint(input: $input) { secret endpoint { id url eventTypes status programId } } }";

/// Creates an endpoint with `token`; returns (id, secret).
pub async fn endpoint(app: &TestApp, token: &str, input: Value) -> (String, String) {
    let data = app.ok(token, CREATE, json!({"input": input})).await;
    let payload = &data["createWebhookEndpoint"];
    (
        payload["endpoint"]["id"].as_str().unwrap().to_string(),
        payload["secret"].as_str().unwrap().to_string(),
    )
}

async fn deliveries(app: &TestApp, endpoint_id: &str) -> Vec<Value> {
    let data = app
        .admin_ok(
            "query($f: WebhookDeliveryFilter) { webhookDeliveries(filter: $f, first: 100) { edges { node {
                id eventId eventType status attempt statusCode latencyMs lastError deliveredAt nextAttemptAt } } } }",
            json!({"f": {"endpointId": endpoint_id}}),
        )
        .await;
    nodes(&data["webhookDeliveries"])
}

async fn endpoint_state(app: &TestApp, id: &str) -> Value {
    let data = app
        .admin_ok(
            "{ webhookEndpoints(first: 100) { edges { node { id status disabledReason failingSince previousSecretExpiresAt } } } }",
            json!({}),
        )
        .await;
    nodes(&data["webhookEndpoints"])
        .into_iter()
        .find(|e| e["id"] == id)
        .unwrap()
}

/// Waits (bounded) until the endpoint's deliveries satisfy `pred`.
pub async fn wait_deliveries(
    app: &TestApp,
    endpoint_id: &str,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = deliveries(app, endpoint_id).await;
        if pred(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "still waiting for {what}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn deliveries_are_signed_and_verifiable(app: TestApp) {
    let receiver = Receiver::start().await;
    let program = app.create_program("Events").await;
    let (endpoint_id, secret) = endpoint(
        &app,
        &app.admin,
        json!({"url": receiver.url, "eventTypes": ["partner.created", "referral.submitted"],
               "description": "CRM sync", "programId": program}),
    )
    .await;
    assert!(secret.starts_with("whsec_"));
    let partner_id = app.create_partner(&program, "Acme").await;
    let key = app.partner_key(&partner_id).await;
    app.submit_referral(
        &key,
        json!({"companyName": "Globex", "companyDomain": "globex.example"}),
    )
    .await;
    // Another program's events do not reach an endpoint bound to this one.
    let other = app.create_program("Other").await;
    app.create_partner(&other, "Elsewhere").await;

    let got = receiver
        .wait_until("two deliveries", |r| r.len() >= 2)
        .await;
    app.events_settled().await;
    let events = app
        .admin_ok(
            "query($t: [String!]) { events(types: $t, first: 100) { edges { node { id type data } } } }",
            json!({"t": ["partner.created", "referral.submitted"]}),
        )
        .await;
    let events = nodes(&events["events"]);
    let ours: Vec<&Value> = events
        .iter()
        .filter(|e| e["data"]["programId"] == program)
        .collect();
    assert_eq!(ours.len(), 2);
    // Deliveries run concurrently: match them to events by id, not by order.
    assert_eq!(got.len(), 2);
    for event in &ours {
        let received = got
            .iter()
            .find(|r| r.id() == event["id"].as_str().unwrap())
            .unwrap_or_else(|| panic!("no delivery of {event}"));
        assert!(received.verifies_with(&secret), "signature must verify");
        let body = received.json();
        assert_eq!(body["id"], event["id"]);
        assert_eq!(body["type"], event["type"]);
        assert_eq!(body["data"], event["data"]);
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(received.headers["content-type"], "application/json");
        let ts: i64 = received.headers["webhook-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((Utc::now().timestamp() - ts).abs() < 60);
        // A tampered body does not verify with the reference library.
        let mut tampered = received.clone();
        tampered.body.push(b' ');
        assert!(!tampered.verifies_with(&secret));
        assert!(!received.verifies_with("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    }
    // Nothing else arrives (the other program's partner).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 2);
    let list = wait_deliveries(&app, &endpoint_id, "two successes", |d| {
        d.len() == 2 && d.iter().all(|d| d["status"] == "SUCCEEDED")
    })
    .await;
    for d in &list {
        assert_eq!(d["attempt"], 1);
        assert_eq!(d["statusCode"], 204);
        assert!(d["latencyMs"].as_i64().is_some());
        assert!(d["deliveredAt"].is_string());
        assert!(d["nextAttemptAt"].is_null());
    }
    // Newest first.
    assert_eq!(list[0]["eventType"], "referral.submitted");
}

async fn failures_are_retried_with_the_same_id(app: TestApp) {
    let receiver = Receiver::start().await;
    // The first two attempts fail (500, then 429 with Retry-After: 1), the third succeeds.
    receiver.behave(|nth| match nth {
        1 => Reply::Status(500),
        2 => Reply::RetryAfter(429, 1),
        _ => Reply::Status(200),
    });
    let program = app.create_program("Retries").await;
    let (endpoint_id, secret) = endpoint(
        &app,
        &app.admin,
        json!({"url": receiver.url, "eventTypes": ["partner.created"]}),
    )
    .await;
    app.create_partner(&program, "Flaky").await;
    let got = receiver
        .wait_until("three attempts", |r| r.len() >= 3)
        .await;
    assert!(got.iter().all(|r| r.verifies_with(&secret)));
    assert!(
        got.iter().all(|r| r.id() == got[0].id()),
        "stable webhook-id"
    );
    // 100 ms ± 20 % after the first failure; at least the 1 s Retry-After after the 429.
    let first_gap = got[1].at - got[0].at;
    assert!(first_gap >= Duration::from_millis(75), "{first_gap:?}");
    let second_gap = got[2].at - got[1].at;
    assert!(second_gap >= Duration::from_millis(950), "{second_gap:?}");
    let list = wait_deliveries(&app, &endpoint_id, "success", |d| {
        d.len() == 1 && d[0]["status"] == "SUCCEEDED"
    })
    .await;
    assert_eq!(list[0]["attempt"], 3);
    assert_eq!(list[0]["statusCode"], 200);
    assert!(endpoint_state(&app, &endpoint_id).await["failingSince"].is_null());
}

async fn exhausted_retries_fail_and_replay_recovers(app: TestApp) {
    let receiver = Receiver::start().await;
    receiver.behave(|_| Reply::Status(503));
    let program = app.create_program("Replay").await;
    let started = Utc::now();
    let (endpoint_id, secret) = endpoint(
        &app,
        &app.admin,
        json!({"url": receiver.url, "eventTypes": ["partner.created"]}),
    )
    .await;
    app.create_partner(&program, "Down").await;
    // One attempt plus three retries, then FAILED.
    let list = wait_deliveries(&app, &endpoint_id, "failure", |d| {
        d.len() == 1 && d[0]["status"] == "FAILED"
    })
    .await;
    assert_eq!(list[0]["attempt"], 4);
    assert_eq!(list[0]["statusCode"], 503);
    assert!(list[0]["lastError"].as_str().unwrap().contains("503"));
    assert_eq!(receiver.received().len(), 4);
    assert!(endpoint_state(&app, &endpoint_id).await["failingSince"].is_string());

    receiver.behave(|_| Reply::Status(200));
    let replay = "mutation($input: ReplayWebhookDeliveriesInput!) { replayWebhookDeliveries(input: $input) { queued endpoint { id } } }";
    let data = app
        .admin_ok(
            replay,
            json!({"input": {"endpointId": endpoint_id, "since": started.to_rfc3339()}}),
        )
        .await;
    assert_eq!(data["replayWebhookDeliveries"]["queued"], 1);
    let got = receiver.wait_until("the replay", |r| r.len() >= 5).await;
    assert!(got[4].verifies_with(&secret));
    assert_eq!(got[4].id(), got[0].id());
    wait_deliveries(&app, &endpoint_id, "replayed success", |d| {
        d[0]["status"] == "SUCCEEDED"
    })
    .await;
    // Replaying again queues nothing: everything since then was delivered.
    let data = app
        .admin_ok(
            replay,
            json!({"input": {"endpointId": endpoint_id, "since": started.to_rfc3339()}}),
        )
        .await;
    assert_eq!(data["replayWebhookDeliveries"]["queued"], 0);
    // A future `since` is refused.
    let resp = app
        .gql(
            &app.admin,
            replay,
            json!({"input": {"endpointId": endpoint_id,
                "since": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339()}}),
        )
        .await;
    assert_eq!(error_code(&resp), "BAD_USER_INPUT");
    assert_eq!(error_field(&resp), "input.since");
}

async fn gone_disables_until_enabled_and_replay_fills_the_gap(app: TestApp) {
    let receiver = Receiver::start().await;
    receiver.behave(|_| Reply::Status(410));
    let program = app.create_program("Gone").await;
    let started = Utc::now();
    let (endpoint_id, secret) = endpoint(
        &app,
        &app.admin,
        json!({"url": receiver.url, "eventTypes": ["partner.created"]}),
    )
    .await;
    app.create_partner(&program, "First").await;
    wait_deliveries(&app, &endpoint_id, "410", |d| {
        d.len() == 1 && d[0]["status"] == "FAILED"
    })
    .await;
    let state = endpoint_state(&app, &endpoint_id).await;
    assert_eq!(state["status"], "DISABLED");
    assert!(state["disabledReason"].as_str().unwrap().contains("410"));
    // While disabled, events are not delivered (nor queued).
    app.create_partner(&program, "Second").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(deliveries(&app, &endpoint_id).await.len(), 1);

    receiver.behave(|_| Reply::Status(200));
    let data = app
        .admin_ok(
            "mutation($input: EnableWebhookEndpointInput!) { enableWebhookEndpoint(input: $input) { endpoint { status disabledReason } } }",
            json!({"input": {"id": endpoint_id}}),
        )
        .await;
    assert_eq!(
        data["enableWebhookEndpoint"]["endpoint"]["status"],
        "ENABLED"
    );
    assert!(data["enableWebhookEndpoint"]["endpoint"]["disabledReason"].is_null());
    app.create_partner(&program, "Third").await;
    receiver
        .wait_until("the event after enabling", |r| r.len() >= 2)
        .await;
    // Replay sends the failed one and the one missed while disabled.
    let data = app
        .admin_ok(
            "mutation($input: ReplayWebhookDeliveriesInput!) { replayWebhookDeliveries(input: $input) { queued } }",
            json!({"input": {"endpointId": endpoint_id, "since": started.to_rfc3339()}}),
        )
        .await;
    assert_eq!(data["replayWebhookDeliveries"]["queued"], 2);
    let got = receiver.wait_until("replays", |r| r.len() >= 4).await;
    assert!(got.iter().all(|r| r.verifies_with(&secret)));
    let names: Vec<String> = got[1..]
        .iter()
        .map(|r| {
            r.json()["data"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for name in ["First", "Second", "Third"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
}

async fn a_hanging_receiver_times_out(app: TestApp) {
    let receiver = Receiver::start().await;
    receiver.behave(|nth| {
        if nth == 1 {
            Reply::Hang(Duration::from_secs(5))
        } else {
            Reply::Status(200)
        }
    });
    let program = app.create_program("Slow").await;
    let (endpoint_id, _) = endpoint(
        &app,
        &app.admin,
        json!({"url": receiver.url, "eventTypes": ["partner.created"]}),
    )
    .await;
    app.create_partner(&program, "Sloth").await;
    let list = wait_deliveries(&app, &endpoint_id, "success after a timeout", |d| {
        d.len() == 1 && d[0]["status"] == "SUCCEEDED"
    })
    .await;
    assert_eq!(list[0]["attempt"], 2);
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    // The timeout (1 s in these tests) cut the first attempt, not the receiver's 5 s.
    assert!(got[1].at - got[0].at < Duration::from_secs(4));
}

async fn rotation_signs_with_both_secrets_for_a_day(app: TestApp) {
    let receiver = Receiver::start().await;
    let program = app.create_program("Rotate").await;
    let (endpoint_id, old) = endpoint(
        &app,
        &app.admin,
        json!({"url": receiver.url, "eventTypes": ["partner.created"]}),
    )
    .await;
    app.create_partner(&program, "Before").await;
    let got = receiver.wait_until("first", |r| !r.is_empty()).await;
    assert!(got[0].verifies_with(&old));
    let sigs = got[0].headers["webhook-signature"].to_str().unwrap();
    assert_eq!(sigs.split(' ').count(), 1);

    let data = app
        .admin_ok(
            "mutation($input: RotateWebhookEndpointSecretInput!) { rotateWebhookEndpointSecret(input: $input) { secret endpoint { id previousSecretExpiresAt } } }",
            json!({"input": {"id": endpoint_id}}),
        )
        .await;
    let new = data["rotateWebhookEndpointSecret"]["secret"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new, old);
    let until: chrono::DateTime<Utc> =
        data["rotateWebhookEndpointSecret"]["endpoint"]["previousSecretExpiresAt"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
    let hours = (until - Utc::now()).num_minutes();
    assert!((23 * 60..=24 * 60).contains(&hours), "{hours}");
    app.create_partner(&program, "After").await;
    let got = receiver.wait_until("second", |r| r.len() >= 2).await;
    let sigs = got[1].headers["webhook-signature"].to_str().unwrap();
    assert_eq!(sigs.split(' ').count(), 2, "{sigs}");
    assert!(got[1].verifies_with(&new));
    assert!(got[1].verifies_with(&old));
    // Secrets are stored sealed: neither appears in the database.
    let stored = count(
        &app.db,
        &format!(
            "SELECT COUNT(*) AS n FROM webhook_endpoints WHERE secret_ciphertext LIKE '%{}%' \
             OR previous_secret_ciphertext LIKE '%{}%'",
            &new[6..20],
            &old[6..20]
        ),
    )
    .await;
    assert_eq!(stored, 0);
}

async fn keys_are_scoped_and_bad_input_is_rejected(app: TestApp) {
    let receiver = Receiver::start().await;
    let program = app.create_program("Scopes").await;
    let other_program = app.create_program("Hidden").await;
    let alice = app.create_partner(&program, "Alice").await;
    let bob = app.create_partner(&program, "Bob").await;
    let alice_key = app.partner_key(&alice).await;
    let bob_key = app.partner_key(&bob).await;
    let integration = app
        .admin_ok(
            "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { token } }",
            json!({"input": {"name": "integration", "role": "INTEGRATION", "programIds": [program]}}),
        )
        .await["createApiKey"]["token"]
        .as_str()
        .unwrap()
        .to_string();

    // A partner's endpoint receives events about itself only.
    let alice_receiver = Receiver::start().await;
    let (alice_endpoint, alice_secret) = endpoint(
        &app,
        &alice_key,
        json!({"url": alice_receiver.url, "eventTypes": ["referral.submitted"]}),
    )
    .await;
    // An integration's endpoint receives events of the programs it is granted.
    let (integration_endpoint, integration_secret) = endpoint(
        &app,
        &integration,
        json!({"url": receiver.url, "eventTypes": ["partner.created", "referral.submitted"]}),
    )
    .await;
    app.submit_referral(
        &bob_key,
        json!({"companyName": "Bobco", "companyDomain": "bobco.example"}),
    )
    .await;
    app.submit_referral(
        &alice_key,
        json!({"companyName": "Aliceco", "companyDomain": "aliceco.example"}),
    )
    .await;
    app.create_partner(&other_program, "Invisible").await;
    app.create_partner(&program, "Visible").await;
    let got = alice_receiver
        .wait_until("alice's referral", |r| !r.is_empty())
        .await;
    let got_integration = receiver
        .wait_until("integration events", |r| r.len() >= 3)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = alice_receiver.received().len().max(got.len());
    assert_eq!(got, 1, "alice receives only her own referral");
    let first = &alice_receiver.received()[0];
    assert!(first.verifies_with(&alice_secret));
    assert_eq!(first.json()["data"]["partnerId"], alice);
    assert_eq!(
        receiver.received().len(),
        3,
        "no event of the other program"
    );
    assert!(
        got_integration
            .iter()
            .all(|r| r.verifies_with(&integration_secret)
                && r.json()["data"]["programId"] == program)
    );

    // Each key sees and manages its own endpoints only; others' are NOT_FOUND.
    let list = "{ webhookEndpoints { totalCount edges { node { id } } } }";
    assert_eq!(
        app.ok(&alice_key, list, json!({})).await["webhookEndpoints"]["totalCount"],
        1
    );
    assert_eq!(
        app.ok(&bob_key, list, json!({})).await["webhookEndpoints"]["totalCount"],
        0
    );
    assert_eq!(
        app.ok(&integration, list, json!({})).await["webhookEndpoints"]["totalCount"],
        1
    );
    assert_eq!(
        app.admin_ok(list, json!({})).await["webhookEndpoints"]["totalCount"],
        2
    );
    for (token, id) in [
        (&bob_key, &alice_endpoint),
        (&alice_key, &integration_endpoint),
    ] {
        let resp = app
            .gql(
                token,
                "mutation($input: RotateWebhookEndpointSecretInput!) { rotateWebhookEndpointSecret(input: $input) { secret } }",
                json!({"input": {"id": id}}),
            )
            .await;
        assert_eq!(error_code(&resp), "NOT_FOUND", "{resp}");
        let resp = app
            .gql(
                token,
                "query($f: WebhookDeliveryFilter) { webhookDeliveries(filter: $f) { totalCount } }",
                json!({"f": {"endpointId": id}}),
            )
            .await;
        assert_eq!(error_code(&resp), "NOT_FOUND", "{resp}");
    }
    let resp = app
        .ok(&bob_key, "{ webhookDeliveries { totalCount } }", json!({}))
        .await;
    assert_eq!(resp["webhookDeliveries"]["totalCount"], 0);
    // A program the key may not see is NOT_FOUND.
    for (token, program_id) in [(&integration, &other_program), (&alice_key, &other_program)] {
        let resp = app
            .gql(
                token,
                CREATE,
                json!({"input": {"url": receiver.url, "eventTypes": ["deal.won"], "programId": program_id}}),
            )
            .await;
        assert_eq!(error_code(&resp), "NOT_FOUND", "{resp}");
    }

    // Bad input names the field and writes nothing.
    let before = app.count_rows("webhook_endpoints").await;
    for (input, field) in [
        (
            json!({"url": "ftp://example.com/x", "eventTypes": ["deal.won"]}),
            "input.url",
        ),
        (
            json!({"url": "not a url", "eventTypes": ["deal.won"]}),
            "input.url",
        ),
        (
            json!({"url": receiver.url, "eventTypes": []}),
            "input.eventTypes",
        ),
        (
            json!({"url": receiver.url, "eventTypes": ["deal.won", "deal.exploded"]}),
            "input.eventTypes[1]",
        ),
        (
            json!({"url": receiver.url, "eventTypes": ["deal.won"], "description": "x".repeat(501)}),
            "input.description",
        ),
    ] {
        let resp = app.gql(&app.admin, CREATE, json!({"input": input})).await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
        assert_eq!(error_field(&resp), field, "{resp}");
    }
    let resp = app
        .gql(
            "",
            CREATE,
            json!({"input": {"url": receiver.url, "eventTypes": ["deal.won"]}}),
        )
        .await;
    assert_eq!(error_code(&resp), "UNAUTHENTICATED");
    assert_eq!(app.count_rows("webhook_endpoints").await, before);
}

fn tight_limits(config: &mut Config) {
    fast(config);
    config.webhook_rate_limit = 5;
    config.webhook_max_in_flight = 2;
}

async fn limits_redirects_and_big_answers(app: TestApp) {
    let program = app.create_program("Limits").await;
    // Rate: 5 per second per endpoint (a burst of 5, then one per 200 ms).
    let fast_receiver = Receiver::start().await;
    // Concurrency: at most 2 requests in flight to one endpoint.
    let slow_receiver = Receiver::start().await;
    slow_receiver.behave(|_| Reply::Hang(Duration::from_millis(150)));
    // Redirects are not followed; large answers are read up to 64 KiB and accepted.
    let redirecting = Receiver::start().await;
    let target = Receiver::start().await;
    let target_url: &'static str = Box::leak(target.url.clone().into_boxed_str());
    redirecting.behave(move |_| Reply::Redirect(target_url));
    let big = Receiver::start().await;
    big.behave(|_| Reply::Big(1024 * 1024));
    let mut ids = Vec::new();
    for r in [&fast_receiver, &slow_receiver, &redirecting, &big] {
        ids.push(
            endpoint(
                &app,
                &app.admin,
                json!({"url": r.url, "eventTypes": ["partner.created"], "programId": program}),
            )
            .await
            .0,
        );
    }
    for i in 0..12 {
        app.create_partner(&program, &format!("P{i}")).await;
    }
    let got = fast_receiver
        .wait_until("12 deliveries", |r| r.len() >= 12)
        .await;
    let span = got[11].at - got[0].at;
    assert!(
        span >= Duration::from_millis(1000),
        "12 deliveries at 5/s took {span:?}"
    );
    slow_receiver
        .wait_until("12 slow deliveries", |r| r.len() >= 12)
        .await;
    assert!(
        slow_receiver.max_concurrency() <= 2,
        "{}",
        slow_receiver.max_concurrency()
    );
    assert_eq!(slow_receiver.max_concurrency(), 2);
    let big_deliveries = wait_deliveries(&app, &ids[3], "big answers accepted", |d| {
        d.len() == 12 && d.iter().all(|d| d["status"] == "SUCCEEDED")
    })
    .await;
    assert_eq!(big_deliveries[0]["statusCode"], 200);
    let redirected = wait_deliveries(&app, &ids[2], "redirects failed", |d| {
        d.len() == 12 && d.iter().all(|d| d["statusCode"] == 302)
    })
    .await;
    assert!(redirected.iter().all(|d| d["status"] != "SUCCEEDED"));
    assert!(
        target.received().is_empty(),
        "the redirect was not followed"
    );
}

/// Production rules: loopback and private targets are refused.
pub fn strict(config: &mut Config) {
    config.webhook_allow_private_targets = false;
}

/// Loopback, private and link-local targets the production rules refuse.
pub const PRIVATE_TARGETS: [&str; 5] = [
    "http://127.0.0.1:9/hooks",
    "http://localhost/hooks",
    "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.8/x",
    "http://[::1]/x",
];

async fn private_targets_are_refused_by_default(app: TestApp) {
    for url in PRIVATE_TARGETS {
        let resp = app
            .gql(
                &app.admin,
                CREATE,
                json!({"input": {"url": url, "eventTypes": ["deal.won"]}}),
            )
            .await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{url}: {resp}");
        assert_eq!(error_field(&resp), "input.url");
    }
    assert_eq!(app.count_rows("webhook_endpoints").await, 0);
}

fn disable_quickly(config: &mut Config) {
    config.webhook_retry_schedule = ["100ms"; 12].join(",");
    config.webhook_disable_after = "600ms".to_string();
}

async fn an_endpoint_failing_continuously_is_disabled(app: TestApp) {
    let receiver = Receiver::start().await;
    receiver.behave(|_| Reply::Status(500));
    let program = app.create_program("Failing").await;
    let (endpoint_id, _) = endpoint(
        &app,
        &app.admin,
        json!({"url": receiver.url, "eventTypes": ["partner.created"]}),
    )
    .await;
    app.create_partner(&program, "Doomed").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = endpoint_state(&app, &endpoint_id).await;
        if state["status"] == "DISABLED" {
            assert!(state["disabledReason"].as_str().unwrap().contains("failed"));
            break;
        }
        assert!(Instant::now() < deadline, "never disabled: {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Disabled endpoints get no further attempts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = receiver.received().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), n);
}

pub fn no_worker(config: &mut Config) {
    config.webhook_worker = false;
}

async fn a_crashed_workers_claims_are_retried(app: TestApp) {
    use tandem::outbound::{DeliveryWorker, Fanout, OutboundSettings, claim_due};
    let receiver = Receiver::start().await;
    let program = app.create_program("Crash").await;
    let (endpoint_id, secret) = endpoint(
        &app,
        &app.admin,
        json!({"url": receiver.url, "eventTypes": ["partner.created"]}),
    )
    .await;
    let fanout = Fanout::new(app.db.clone());
    fanout.catch_up().await.unwrap(); // places the cursor
    app.create_partner(&program, "Orphan").await;
    app.events_settled().await;
    assert_eq!(fanout.catch_up().await.unwrap(), 1);
    // A worker claims the delivery for 1 s and dies before sending it.
    let claimed = claim_due(&app.db, "crashed", 10, Duration::from_secs(1), &[])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    // A second claimer finds nothing while the claim holds.
    let again = claim_due(&app.db, "other", 10, Duration::from_secs(1), &[])
        .await
        .unwrap();
    assert!(again.is_empty());
    // A live worker picks it up once the claim has run out.
    let mut config = Config::default();
    fast(&mut config);
    config.webhook_allow_private_targets = true;
    let key =
        tandem::domain::secrets::SecretKey::from_base64(crate::helpers::TEST_SECRET_KEY).unwrap();
    let worker = DeliveryWorker::new(
        app.db.clone(),
        Arc::new(key),
        OutboundSettings::from_config(&config),
        Arc::new(tokio::sync::Notify::new()),
        tandem::metrics::Metrics::new(),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(worker.run(stopped));
    let got = receiver
        .wait_until("the orphaned delivery", |r| !r.is_empty())
        .await;
    assert!(got[0].verifies_with(&secret));
    wait_deliveries(&app, &endpoint_id, "success", |d| {
        d.len() == 1 && d[0]["status"] == "SUCCEEDED"
    })
    .await;
    stop.send(true).unwrap();
    handle.await.unwrap();
    assert_eq!(receiver.received().len(), 1);
}

/// Sends one graphql-transport-ws message.
pub async fn ws_send<S>(ws: &mut S, value: Value)
where
    S: SinkExt<Message> + Unpin,
    <S as futures_util::Sink<Message>>::Error: std::fmt::Debug,
{
    ws.send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

/// The next JSON message (skipping pings), or `None` when the server closed.
pub async fn ws_next<S>(ws: &mut S) -> Option<Value>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a websocket message within 20 s")?;
        match msg.ok()? {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] == "ping" {
                    continue;
                }
                return Some(value);
            }
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

pub async fn connect(
    app: &TestApp,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}/graphql/ws", app.base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "graphql-transport-ws"
    );
    ws_send(
        &mut ws,
        json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {token}")}}),
    )
    .await;
    ws
}

const SUBSCRIBE: &str = "subscription($t: [String!], $after: String) { events(types: $t, after: $after) { id type cursor data } }";

async fn subscriptions_stream_and_resume(app: TestApp) {
    let program = app.create_program("Live").await;
    let alice = app.create_partner(&program, "Alice").await;
    let bob = app.create_partner(&program, "Bob").await;
    let created = app
        .admin_ok(
            "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { token apiKey { id } } }",
            json!({"input": {"name": "alice", "role": "PARTNER", "partnerId": alice}}),
        )
        .await;
    let alice_key = created["createApiKey"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let alice_key_id = created["createApiKey"]["apiKey"]["id"].clone();
    let bob_key = app.partner_key(&bob).await;

    // A bad key never gets an ack.
    let mut ws = connect(&app, "tdm_not_a_key").await;
    let reply = ws_next(&mut ws).await;
    assert!(
        reply.as_ref().is_none_or(|m| m["type"] != "connection_ack"),
        "{reply:?}"
    );

    let mut admin = connect(&app, &app.admin).await;
    assert_eq!(ws_next(&mut admin).await.unwrap()["type"], "connection_ack");
    ws_send(
        &mut admin,
        json!({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": {"t": ["referral.submitted"]}}}),
    )
    .await;
    let mut partner = connect(&app, &alice_key).await;
    assert_eq!(
        ws_next(&mut partner).await.unwrap()["type"],
        "connection_ack"
    );
    // (Typed, because a subscription "from now" may still see an event committed just before
    // it started: on PostgreSQL the feed only reads transactions older than every open one.)
    ws_send(
        &mut partner,
        json!({"id": "p", "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": {"t": ["referral.submitted"]}}}),
    )
    .await;
    // Give the subscriptions a moment to register with the feed.
    tokio::time::sleep(Duration::from_millis(200)).await;

    app.submit_referral(
        &bob_key,
        json!({"companyName": "B1", "companyDomain": "b1.example"}),
    )
    .await;
    app.submit_referral(
        &alice_key,
        json!({"companyName": "A1", "companyDomain": "a1.example"}),
    )
    .await;
    let first = ws_next(&mut admin).await.unwrap();
    assert_eq!(first["type"], "next", "{first}");
    assert_eq!(first["id"], "1");
    let event = &first["payload"]["data"]["events"];
    assert_eq!(event["type"], "referral.submitted");
    assert_eq!(event["data"]["partnerId"], bob);
    let second = ws_next(&mut admin).await.unwrap();
    assert_eq!(
        second["payload"]["data"]["events"]["data"]["partnerId"],
        alice
    );
    let cursor = second["payload"]["data"]["events"]["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    // The partner's subscription sees its own event only.
    let mine = ws_next(&mut partner).await.unwrap();
    assert_eq!(
        mine["payload"]["data"]["events"]["data"]["partnerId"],
        alice
    );
    assert_eq!(
        mine["payload"]["data"]["events"]["type"],
        "referral.submitted"
    );

    // Disconnect; events happen; resume from the cursor and miss nothing.
    admin.close(None).await.unwrap();
    app.submit_referral(
        &bob_key,
        json!({"companyName": "B2", "companyDomain": "b2.example"}),
    )
    .await;
    app.submit_referral(
        &alice_key,
        json!({"companyName": "A2", "companyDomain": "a2.example"}),
    )
    .await;
    app.events_settled().await;
    let mut admin = connect(&app, &app.admin).await;
    assert_eq!(ws_next(&mut admin).await.unwrap()["type"], "connection_ack");
    ws_send(
        &mut admin,
        json!({"id": "2", "type": "subscribe", "payload": {"query": SUBSCRIBE,
            "variables": {"t": ["referral.submitted"], "after": cursor}}}),
    )
    .await;
    let a = ws_next(&mut admin).await.unwrap();
    let b = ws_next(&mut admin).await.unwrap();
    let names: Vec<Value> = [a, b]
        .iter()
        .map(|m| m["payload"]["data"]["events"]["data"]["companyName"].clone())
        .collect();
    assert_eq!(names, vec![json!("B2"), json!("A2")]);
    // And live events keep coming on the resumed subscription.
    app.submit_referral(
        &bob_key,
        json!({"companyName": "B3", "companyDomain": "b3.example"}),
    )
    .await;
    let c = ws_next(&mut admin).await.unwrap();
    assert_eq!(c["payload"]["data"]["events"]["data"]["companyName"], "B3");

    // Revoking the partner's key ends its open subscription (checked every 10 s).
    app.ok(
        &alice_key,
        "mutation($id: ID!) { revokeApiKey(input: {id: $id}) { apiKey { id } } }",
        json!({"id": alice_key_id}),
    )
    .await;
    // (Alice's own later referrals may still arrive first.)
    loop {
        match ws_next(&mut partner).await {
            None => break,
            Some(m) if m["type"] == "complete" => break,
            Some(m) => {
                assert_eq!(
                    m["payload"]["data"]["events"]["data"]["partnerId"], alice,
                    "{m}"
                );
            }
        }
    }

    // An unknown type is an error on the operation.
    ws_send(
        &mut admin,
        json!({"id": "3", "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": {"t": ["nope"]}}}),
    )
    .await;
    let err = ws_next(&mut admin).await.unwrap();
    assert!(
        err["type"] == "error" || err["payload"]["errors"].is_array(),
        "{err}"
    );
}

/// A query sent over the websocket runs its loaders like one sent over HTTP (each operation
/// gets its own, driven with its execution) and answers the same, scoped to the key.
async fn queries_over_the_websocket_load_nested_objects(app: TestApp) {
    let program = app.create_program("Nested").await;
    let alice = app.create_partner(&program, "Alice").await;
    let token = app.partner_key(&alice).await;
    let referrals = app.submit_referrals(&token, 3, "ws").await;
    crate::isolation::insert_attributed_deal(
        &app,
        &program,
        &alice,
        Some(&referrals[0]),
        "WS deal",
    )
    .await;
    let query = "query($id: ID!) { partner(id: $id) { name program { name }
        referrals(first: 5) { totalCount edges { node { companyName partner { name }
          deal { name partner { name } } } } } } }";
    let over_http = app.ok(&token, query, json!({"id": alice})).await;
    assert_eq!(over_http["partner"]["referrals"]["totalCount"], 3);
    assert_eq!(over_http["partner"]["program"]["name"], "Nested");

    let mut ws = connect(&app, &token).await;
    assert_eq!(ws_next(&mut ws).await.unwrap()["type"], "connection_ack");
    for id in ["q1", "q2"] {
        ws_send(
            &mut ws,
            json!({"id": id, "type": "subscribe", "payload": {"query": query, "variables": {"id": alice}}}),
        )
        .await;
        let next = ws_next(&mut ws).await.unwrap();
        assert_eq!(next["type"], "next", "{next}");
        assert_eq!(next["id"], id);
        assert_eq!(next["payload"]["data"], over_http, "{next}");
        assert!(next["payload"].get("errors").is_none(), "{next}");
        assert_eq!(ws_next(&mut ws).await.unwrap()["type"], "complete");
    }
    // Another partner's id is missing over the websocket too.
    let bob = app.create_partner(&program, "Bob").await;
    ws_send(
        &mut ws,
        json!({"id": "q3", "type": "subscribe", "payload": {"query": query, "variables": {"id": bob}}}),
    )
    .await;
    let next = ws_next(&mut ws).await.unwrap();
    assert_eq!(
        next["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{next}"
    );
}

async fn every_event_type_matches_its_schema(app: TestApp) {
    let receiver = Receiver::start().await;
    let all: Vec<&str> = tandem::domain::events::EventType::ALL
        .iter()
        .map(|t| t.as_str())
        .collect();
    let (_, secret) = endpoint(
        &app,
        &app.admin,
        json!({"url": receiver.url, "eventTypes": all}),
    )
    .await;
    // A scenario touching every type.
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "10"}),
        json!({"holdDays": 0}),
    )
    .await;
    let alice = partner(&app, &program, "Alice").await;
    let key = app.partner_key(&alice.id).await;
    let referral = app
        .submit_referral(
            &key,
            json!({"companyName": "Won Co", "companyDomain": "wonco.example"}),
        )
        .await;
    app.submit_referral(
        &key,
        json!({"companyName": "Rejected", "companyDomain": "rejected.example"}),
    )
    .await;
    let rejected = app
        .admin_ok(
            "{ referrals(first: 10) { edges { node { id companyName } } } }",
            json!({}),
        )
        .await;
    let rejected_id = nodes(&rejected["referrals"])
        .into_iter()
        .find(|r| r["companyName"] == "Rejected")
        .unwrap()["id"]
        .clone();
    app.admin_ok(
        "mutation($input: UpdateReferralStatusInput!) { updateReferralStatus(input: $input) { referral { id } } }",
        json!({"input": {"id": rejected_id, "status": "REJECTED"}}),
    )
    .await;
    let mut crm = Crm::new(&app, &program).await;
    crm.won(&app, "D1", "1000", 1, &alice.code).await;
    crm.won(&app, "D2", "500", 1, &alice.code).await;
    // A won deal with a company domain makes a customer; its Stripe invoice is linked to it.
    crm.deal(
        &app,
        json!({"id": "D3", "amount": "100", "status": "won", "closedAt": Utc::now().to_rfc3339(),
               "referralCode": alice.code, "companyDomain": "wonco.example"}),
    )
    .await;
    let stripe = crate::billing::Stripe::new(&app, &program).await;
    stripe
        .send(
            &app,
            &crate::billing::invoice_paid(
                "evt_all",
                "in_all",
                "cus_all",
                "ap@wonco.example",
                "usd",
                1_000,
                1_000,
                Utc::now(),
            ),
        )
        .await;
    run_job(&app, "reconcile", false).await;
    crm.deal(
        &app,
        json!({"id": "D2", "amount": "500", "status": "lost",
        "closedAt": Utc::now().to_rfc3339(), "referralCode": alice.code}),
    )
    .await;
    run_job(&app, "reconcile", false).await;
    let payout = app
        .admin_ok(
            "mutation($input: CreatePayoutInput!) { createPayout(input: $input) { payout { id } } }",
            json!({"input": {"partnerId": alice.id, "currency": "USD"}}),
        )
        .await["createPayout"]["payout"]["id"]
        .clone();
    app.admin_ok(
        "mutation($input: MarkPayoutPaidInput!) { markPayoutPaid(input: $input) { payout { id } } }",
        json!({"input": {"id": payout, "reference": "wire 42"}}),
    )
    .await;
    app.admin_ok(
        "mutation($input: UpdatePartnerStatusInput!) { updatePartnerStatus(input: $input) { partner { id } } }",
        json!({"input": {"id": alice.id, "status": "SUSPENDED"}}),
    )
    .await;
    let _ = referral;
    // The registration lifecycle: an engagement, a breached SLA, an expiry.
    app.admin_ok(
        "mutation($id: ID!) { updateProgram(input: {id: $id, leadSlaMinutes: 60}) { program { id } } }",
        json!({"id": program}),
    )
    .await;
    let bob = partner(&app, &program, "Bob").await;
    let bob_key = app.partner_key(&bob.id).await;
    let mut lifecycle = Vec::new();
    for domain in ["engaged.example", "breached.example", "expired.example"] {
        let r = app
            .submit_referral(
                &bob_key,
                json!({"companyName": domain, "companyDomain": domain}),
            )
            .await;
        lifecycle.push(r["id"].as_str().unwrap().to_string());
    }
    app.admin_ok(
        "mutation($id: ID!) { recordEngagement(input: {referralId: $id, kind: \"call\"}) { referral { id } } }",
        json!({"id": lifecycle[0]}),
    )
    .await;
    let past = Utc::now() - chrono::Duration::seconds(1);
    crate::registration::age(&app, &lifecycle[1], |m| {
        m.sla_due_at = sea_orm::ActiveValue::Set(Some(past))
    })
    .await;
    crate::registration::age(&app, &lifecycle[2], |m| {
        m.protected_until = sea_orm::ActiveValue::Set(Some(past))
    })
    .await;
    run_job(&app, "lead-sla", false).await;
    run_job(&app, "expire-registrations", false).await;
    // A public application, approved at once.
    app.admin_ok(
        "mutation($id: ID!) { updateProgram(input: {id: $id, applications: {open: true, autoApproveDomains: [\"joiner.example\"]}}) { program { id } } }",
        json!({"id": program}),
    )
    .await;
    let applied = app
        .gql(
            "",
            "mutation($p: ID!) { applyToProgram(input: {programId: $p, name: \"Joiner\", contactEmail: \"ops@joiner.example\"}) { token } }",
            json!({"p": program}),
        )
        .await;
    assert!(
        applied["data"]["applyToProgram"]["token"].is_string(),
        "{applied}"
    );
    // A certification expiring within 30 days.
    app.admin_ok(
        "mutation($input: RecordCertificationInput!) { recordCertification(input: $input) { certification { id } } }",
        json!({"input": {"partnerId": bob.id, "personEmail": "bob@bob.example", "courseKey": "sales-101",
                         "expiresAt": (Utc::now() + chrono::Duration::days(5)).to_rfc3339()}}),
    )
    .await;
    run_job(&app, "certifications", false).await;
    // A held accrual (above the review threshold), declined by a manager.
    app.admin_ok(
        "mutation($id: ID!) { updateProgram(input: {id: $id, manualReviewAbove: \"1000\"}) { program { id } } }",
        json!({"id": program}),
    )
    .await;
    crm.won(&app, "D-BIG", "50000", 1, &alice.code).await;
    run_job(&app, "reconcile", false).await;
    let held = app
        .admin_ok(
            "query($p: ID!) { ledgerEntries(filter: {partnerId: $p, status: HELD}, first: 5) { edges { node { id } } } }",
            json!({"p": alice.id}),
        )
        .await;
    let held_id = held["ledgerEntries"]["edges"][0]["node"]["id"].clone();
    assert!(held_id.is_string(), "{held}");
    app.admin_ok(
        "mutation($id: ID!) { declineLedgerEntry(input: {id: $id, reason: \"Deal under audit\"}) { reversal { id } } }",
        json!({"id": held_id}),
    )
    .await;
    // Stripe Connect: one transfer made (payout.sent), one refused (payout.failed).
    {
        use wiremock::{Mock, MockServer, matchers};
        let server = MockServer::start().await;
        Mock::given(matchers::method("POST"))
            .and(matchers::path("/v1/transfers"))
            .respond_with(crate::stripe_connect::StripeStandIn::default())
            .mount(&server)
            .await;
        let carol = app.create_partner(&program, "Carol").await;
        for (partner, account) in [(&carol, "acct_closed"), (&bob.id, "acct_1Nv0FGQ9RKHgOPEN")] {
            app.admin_ok(
                "mutation($input: SetPayoutMethodInput!) { setPayoutMethod(input: $input) { payoutMethod { kind } } }",
                json!({"input": {"partnerId": partner, "kind": "STRIPE_CONNECT", "stripeAccountId": account}}),
            )
            .await;
            crate::stripe_connect::approved_entry(&app, &program, partner, 5_000, "CHF").await;
        }
        let run = app
            .admin_ok(
                "mutation($p: ID!) { createPayoutRun(input: {programId: $p, currency: \"CHF\"}) { payoutRun { id } } }",
                json!({"p": program}),
            )
            .await;
        let key = tandem::domain::secrets::SecretKey::from_base64(crate::helpers::TEST_SECRET_KEY)
            .unwrap();
        let client = tandem::domain::stripe_transfers::StripeTransfers::new(
            &server.uri(),
            crate::stripe_connect::STRIPE_KEY,
        )
        .unwrap();
        tandem::domain::stripe_transfers::send_payout_run(
            &app.db,
            &key,
            Some(&client),
            run["createPayoutRun"]["payoutRun"]["id"].as_str().unwrap(),
        )
        .await
        .unwrap();
    }
    // Partner groups: everyone joins the default group; an admin moves bob up.
    let silver = app
        .admin_ok(
            "mutation($p: ID!) { createPartnerGroup(input: {programId: $p, name: \"Silver\", rank: 0, commission: {type: PERCENT, rate: \"10\"}}) { group { id } } }",
            json!({"p": program}),
        )
        .await;
    assert!(silver["createPartnerGroup"]["group"]["id"].is_string());
    let gold = app
        .admin_ok(
            "mutation($p: ID!) { createPartnerGroup(input: {programId: $p, name: \"Gold\", rank: 1, commission: {type: PERCENT, rate: \"15\"}, rules: {minDealsWon: 50}}) { group { id } } }",
            json!({"p": program}),
        )
        .await;
    app.admin_ok(
        "mutation($partner: ID!, $group: ID!) { setPartnerGroup(input: {partnerId: $partner, groupId: $group}) { membership { id } } }",
        json!({"partner": bob.id, "group": gold["createPartnerGroup"]["group"]["id"]}),
    )
    .await;

    // Every event in the outbox validates against its schema…
    app.events_settled().await;
    let mut stored = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let data = app
            .admin_ok(
                "query($after: String) { events(first: 100, after: $after) { edges { node { id type timestamp data } } pageInfo { hasNextPage endCursor } } }",
                json!({"after": after}),
            )
            .await;
        stored.extend(nodes(&data["events"]));
        if data["events"]["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = data["events"]["pageInfo"]["endCursor"]
            .as_str()
            .map(str::to_string);
    }
    let mut validators = HashMap::new();
    for t in &all {
        let path = format!("{}/schema/events/{t}.json", env!("CARGO_MANIFEST_DIR"));
        let schema: Value = serde_json::from_str(
            &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")),
        )
        .unwrap();
        validators.insert(t.to_string(), jsonschema::validator_for(&schema).unwrap());
    }
    let mut seen = std::collections::HashSet::new();
    for event in &stored {
        let t = event["type"].as_str().unwrap();
        let errors: Vec<String> = validators[t]
            .iter_errors(event)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{t} {event}: {errors:?}");
        seen.insert(t.to_string());
    }
    let mut missing: Vec<&&str> = all.iter().filter(|t| !seen.contains(**t)).collect();
    missing.sort();
    assert!(missing.is_empty(), "no event of types {missing:?}");
    // …and so does every delivery body, each verified by the reference library.
    let got = receiver
        .wait_until("every event", |r| r.len() >= stored.len())
        .await;
    for received in &got {
        assert!(received.verifies_with(&secret));
        let body = received.json();
        let t = body["type"].as_str().unwrap();
        assert!(validators[t].is_valid(&body), "{body}");
    }
    let mut ids: Vec<String> = got.iter().map(|r| r.id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), stored.len(), "each event delivered once");
}

db_tests!(config = fast;
    deliveries_are_signed_and_verifiable,
    failures_are_retried_with_the_same_id,
    exhausted_retries_fail_and_replay_recovers,
    gone_disables_until_enabled_and_replay_fills_the_gap,
    a_hanging_receiver_times_out,
    rotation_signs_with_both_secrets_for_a_day,
    keys_are_scoped_and_bad_input_is_rejected,
    subscriptions_stream_and_resume,
    queries_over_the_websocket_load_nested_objects,
    every_event_type_matches_its_schema,
);

db_tests!(mod limits, config = tight_limits; limits_redirects_and_big_answers);
db_tests!(mod strict_targets, config = strict; private_targets_are_refused_by_default);
db_tests!(mod disabling, config = disable_quickly; an_endpoint_failing_continuously_is_disabled);
db_tests!(mod crashes, config = no_worker; a_crashed_workers_claims_are_retried);

/// Two hub instances on one PostgreSQL share the delivery work: with no faults every event
/// reaches every endpoint exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_postgres_deliver_each_event_once() {
    let Some(app) = TestApp::postgres_with(fast).await else {
        eprintln!("skipped: TANDEM_TEST_POSTGRES_URL is not set");
        return;
    };
    let (_second, stop_second) = app.spawn_instance_with(fast).await;
    let receivers = [Receiver::start().await, Receiver::start().await];
    for r in &receivers {
        endpoint(
            &app,
            &app.admin,
            json!({"url": r.url, "eventTypes": ["partner.created"]}),
        )
        .await;
    }
    let program = app.create_program("Shared").await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (base, admin, program) = (app.base.clone(), app.admin.clone(), program.clone());
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}/graphql"))
                .bearer_auth(admin)
                .json(&json!({"query": "mutation($input: CreatePartnerInput!) { createPartner(input: $input) { partner { id } } }",
                    "variables": {"input": {"programId": program, "name": format!("P{i}"),
                    "contactEmail": format!("p{i}@example.com")}}}))
                .send()
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().status().is_success());
    }
    for r in &receivers {
        let got = r.wait_until("60 deliveries", |g| g.len() >= 60).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = r.received().len().max(got.len());
        assert_eq!(got, 60, "exactly once");
        let mut ids: Vec<String> = r.received().iter().map(|x| x.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 60);
    }
    // Every delivery is recorded as succeeded, once.
    let succeeded = count(
        &app.db,
        "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE status = 'SUCCEEDED'",
    )
    .await;
    assert_eq!(succeeded, 120);
    // With faults (a third of first attempts fail), every event still arrives at least once.
    for r in &receivers {
        r.behave(|nth| {
            if nth == 1 && rand::random_range(0..3) == 0 {
                Reply::Status(500)
            } else {
                Reply::Status(200)
            }
        });
    }
    for i in 60..90 {
        app.create_partner(&program, &format!("P{i}")).await;
    }
    for r in &receivers {
        r.wait_until("90 distinct events", |g| {
            let mut ids: Vec<String> = g
                .iter()
                .filter(|x| x.json()["data"]["name"].is_string())
                .map(|x| x.id())
                .collect();
            ids.sort();
            ids.dedup();
            ids.len() >= 90
        })
        .await;
    }
    let _ = stop_second.send(());
}
