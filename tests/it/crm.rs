//! CRM connections end to end against a wiremock HubSpot serving the vendor's documented shapes:
//! backfill then incremental sync through the deal mirror and attribution, invalid credentials,
//! a sync cut short that resumes, parked HubSpot webhook receipts fetched, chaos (20 % of
//! answers 429/5xx/timeouts), and bad input.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use serde_json::{Value, json};
use tandem::config::Config;
use wiremock::{
    Mock, MockServer, Request, ResponseTemplate,
    matchers::{header, method},
};

use crate::{
    commissions::partner,
    db_tests,
    helpers::{TestApp, error_code, error_field, nodes},
};

fn deal_object(id: &str, modified_ms: i64, won: bool, code: Option<&str>) -> Value {
    let modified = chrono::DateTime::from_timestamp_millis(modified_ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // Created a moment ago (after the test's referrals), modified at `modified_ms`.
    let created = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({
        "id": id,
        "properties": {
            "amount": "1000", "closedate": if won { json!(modified) } else { Value::Null },
            "createdate": created, "deal_currency_code": "USD",
            "dealname": format!("Deal {id}"), "dealstage": if won { "closedwon" } else { "qualifiedtobuy" },
            "hs_is_closed": if won { "true" } else { "false" },
            "hs_is_closed_won": if won { "true" } else { "false" },
            "hs_lastmodifieddate": modified, "hs_object_id": id, "pipeline": "default",
            "tandem_referral_code": code,
        },
        "createdAt": created, "updatedAt": modified, "archived": false,
    })
}

/// A HubSpot stand-in: the deals it holds, listed and searched as HubSpot does (by
/// `hs_lastmodifieddate`, `after` offsets), with deal 1 associated to acme.example.
#[derive(Clone, Default)]
struct FakeHubSpot {
    deals: Arc<Mutex<BTreeMap<String, Value>>>,
    /// Companies and contacts created through the API (id, properties, associations).
    companies: Arc<Mutex<Vec<Value>>>,
    contacts: Arc<Mutex<Vec<Value>>>,
}

impl FakeHubSpot {
    fn put(&self, deal: Value) {
        let id = deal["id"].as_str().unwrap().to_string();
        self.deals.lock().unwrap().insert(id, deal);
    }

    fn sorted(&self) -> Vec<Value> {
        let mut all: Vec<Value> = self.deals.lock().unwrap().values().cloned().collect();
        all.sort_by_key(|d| {
            (
                d["properties"]["hs_lastmodifieddate"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                d["id"].as_str().unwrap().to_string(),
            )
        });
        all
    }

    fn page(all: Vec<Value>, after: usize, limit: usize) -> Value {
        let page: Vec<Value> = all.iter().skip(after).take(limit).cloned().collect();
        let mut body = json!({"total": all.len(), "results": page});
        if after + limit < all.len() {
            body["paging"] = json!({"next": {"after": (after + limit).to_string()}});
        }
        body
    }

    fn answer(&self, req: &Request) -> ResponseTemplate {
        let path = req.url.path().to_string();
        if path == "/crm/v3/objects/deals" {
            let q: BTreeMap<String, String> = req.url.query_pairs().into_owned().collect();
            let after: usize = q.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
            let limit: usize = q.get("limit").and_then(|a| a.parse().ok()).unwrap_or(100);
            let mut all = self
                .deals
                .lock()
                .unwrap()
                .values()
                .cloned()
                .collect::<Vec<_>>();
            all.sort_by_key(|d| d["id"].as_str().unwrap().parse::<u64>().unwrap_or(0));
            return ResponseTemplate::new(200).set_body_json(Self::page(all, after, limit));
        }
        if path == "/crm/v3/objects/deals/search" {
            let body: Value = serde_json::from_slice(&req.body).unwrap();
            let since: i64 = body["filterGroups"][0]["filters"][0]["value"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            let after: usize = body["after"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            let limit = body["limit"].as_u64().unwrap() as usize;
            let all: Vec<Value> = self
                .sorted()
                .into_iter()
                .filter(|d| {
                    tandem_connectors::lenient::parse_time(
                        d["properties"]["hs_lastmodifieddate"].as_str().unwrap(),
                    )
                    .unwrap()
                    .timestamp_millis()
                        >= since
                })
                .collect();
            return ResponseTemplate::new(200).set_body_json(Self::page(all, after, limit));
        }
        if let Some(id) = path.strip_prefix("/crm/v3/objects/deals/") {
            return match self.deals.lock().unwrap().get(id) {
                Some(deal) => ResponseTemplate::new(200).set_body_json(deal),
                None => ResponseTemplate::new(404)
                    .set_body_json(json!({"status": "error", "message": "resource not found"})),
            };
        }
        let inputs = |req: &Request| -> Vec<String> {
            let body: Value = serde_json::from_slice(&req.body).unwrap();
            body["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_string())
                .collect()
        };
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        match path.as_str() {
            "/crm/v3/objects/companies/search" => {
                let domain = body["filterGroups"][0]["filters"][0]["value"].clone();
                let found: Vec<Value> = self
                    .companies
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|c| c["properties"]["domain"] == domain)
                    .cloned()
                    .collect();
                return ResponseTemplate::new(200)
                    .set_body_json(json!({"total": found.len(), "results": found}));
            }
            "/crm/v3/objects/companies" => {
                let mut companies = self.companies.lock().unwrap();
                let id = (7000 + companies.len()).to_string();
                let company = json!({"id": id, "properties": body["properties"]});
                companies.push(company.clone());
                return ResponseTemplate::new(201).set_body_json(company);
            }
            "/crm/v3/objects/contacts" => {
                let mut contacts = self.contacts.lock().unwrap();
                let email = body["properties"]["email"].clone();
                if let Some(existing) = contacts.iter().find(|c| c["properties"]["email"] == email)
                {
                    return ResponseTemplate::new(409).set_body_json(json!({"status": "error",
                        "message": format!("Contact already exists. Existing ID: {}", existing["id"].as_str().unwrap()),
                        "category": "CONFLICT"}));
                }
                let id = (8000 + contacts.len()).to_string();
                let contact = json!({"id": id, "properties": body["properties"], "associations": body["associations"]});
                contacts.push(contact.clone());
                return ResponseTemplate::new(201).set_body_json(contact);
            }
            _ => {}
        }
        match path.as_str() {
            "/crm/v4/associations/deals/companies/batch/read" => {
                let results: Vec<Value> = inputs(req)
                    .into_iter()
                    .filter(|id| id == "1")
                    .map(|id| json!({"from": {"id": id}, "to": [{"toObjectId": 9001, "associationTypes": []}]}))
                    .collect();
                ResponseTemplate::new(200).set_body_json(json!({"status": "COMPLETE", "results": results}))
            }
            "/crm/v4/associations/deals/contacts/batch/read" => ResponseTemplate::new(200)
                .set_body_json(json!({"status": "COMPLETE", "results": []})),
            "/crm/v3/objects/companies/batch/read" => ResponseTemplate::new(200).set_body_json(
                json!({"status": "COMPLETE", "results": [{"id": "9001", "properties": {"domain": "acme.example"}}]}),
            ),
            "/crm/v3/objects/contacts/batch/read" => ResponseTemplate::new(200)
                .set_body_json(json!({"status": "COMPLETE", "results": []})),
            _ => ResponseTemplate::new(404),
        }
    }

    /// Serves this CRM; `fault` may replace any answer.
    async fn serve(
        &self,
        fault: impl Fn(&Request) -> Option<ResponseTemplate> + Send + Sync + 'static,
    ) -> MockServer {
        let server = MockServer::start().await;
        let me = self.clone();
        Mock::given(header("authorization", "Bearer pat-test-token"))
            .respond_with(move |req: &Request| fault(req).unwrap_or_else(|| me.answer(req)))
            .mount(&server)
            .await;
        server
    }
}

async fn connect(app: &TestApp, program: &str, server: &MockServer, token: &str) -> String {
    let data = app
        .admin_ok(
            "mutation($input: CreateCrmConnectionInput!) { createCrmConnection(input: $input) { connection { id kind status baseUrl schedule } } }",
            json!({"input": {"name": "HubSpot", "kind": "HUBSPOT", "programId": program,
                "baseUrl": server.uri(), "accessToken": token}}),
        )
        .await;
    data["createCrmConnection"]["connection"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

const SYNC: &str = "mutation($id: ID!) { syncCrmConnection(input: {id: $id}) { syncRun {
    id status pages dealsSeen dealsChanged receiptsApplied referralsPushed error durationMs } } }";

async fn sync(app: &TestApp, connection: &str) -> Value {
    app.admin_ok(SYNC, json!({"id": connection})).await["syncCrmConnection"]["syncRun"].clone()
}

/// The mirrored deals as (external id, status, partner name, method).
async fn mirrored(app: &TestApp) -> Vec<(String, String, String, String)> {
    let data = app
        .admin_ok(
            "{ deals(first: 100) { edges { node { externalId status attributionMethod partner { name } } } } }",
            json!({}),
        )
        .await;
    let mut out: Vec<_> = nodes(&data["deals"])
        .into_iter()
        .map(|d| {
            (
                d["externalId"].as_str().unwrap().to_string(),
                d["status"].as_str().unwrap().to_string(),
                d["partner"]["name"].as_str().unwrap_or("-").to_string(),
                d["attributionMethod"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn ms(offset_s: i64) -> i64 {
    Utc::now().timestamp_millis() - 3_600_000 + offset_s * 1000
}

async fn hubspot_backfill_then_incremental(app: TestApp) {
    let program = app.create_program("HubSpot sync").await;
    let alice = partner(&app, &program, "Alice").await;
    let bob = app.create_partner(&program, "Bob").await;
    let bob_key = app.partner_key(&bob).await;
    app.submit_referral(
        &bob_key,
        json!({"companyName": "Acme", "companyDomain": "acme.example"}),
    )
    .await;
    let crm = FakeHubSpot::default();
    crm.put(deal_object("1", ms(0), false, None));
    crm.put(deal_object("2", ms(1), true, Some(&alice.code)));
    crm.put(deal_object("3", ms(2), false, None));
    let server = crm.serve(|_| None).await;
    let connection = connect(&app, &program, &server, "pat-test-token").await;

    let run = sync(&app, &connection).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    assert_eq!(run["pages"], 1);
    assert_eq!(run["dealsSeen"], 3);
    assert_eq!(run["dealsChanged"], 3);
    assert_eq!(
        mirrored(&app).await,
        vec![
            ("1".into(), "OPEN".into(), "Bob".into(), "DOMAIN".into()),
            ("2".into(), "WON".into(), "Alice".into(), "CODE".into()),
            ("3".into(), "OPEN".into(), "-".into(), "-".into()),
        ]
    );
    // Deal 1's associated HubSpot company is kept with it.
    assert_eq!(
        crate::helpers::count(
            &app.db,
            "SELECT COUNT(*) AS n FROM deals WHERE external_id = '1' AND crm_company_id = '9001'"
        )
        .await,
        1
    );
    // Nothing changed: the overlap re-reads recent deals and applies nothing.
    let run = sync(&app, &connection).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    assert_eq!(run["dealsChanged"], 0, "{run}");
    // Deal 3 is won in the CRM: the incremental search picks it up.
    crm.put(deal_object("3", ms(60), true, Some(&alice.code)));
    let run = sync(&app, &connection).await;
    assert_eq!(run["dealsChanged"], 1, "{run}");
    let deals = mirrored(&app).await;
    assert_eq!(
        deals[2],
        ("3".into(), "WON".into(), "Alice".into(), "CODE".into())
    );
    let searches = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path() == "/crm/v3/objects/deals/search")
        .count();
    assert!(searches >= 2);

    let data = app
        .admin_ok(
            "{ crmConnections { totalCount edges { node { id status lastError lastSyncedAt backfilled program { name } } } }
               syncRuns(first: 10) { totalCount edges { node { status connectionId dealsChanged } } } }",
            json!({}),
        )
        .await;
    let c = &nodes(&data["crmConnections"])[0];
    assert_eq!(c["status"], "ACTIVE");
    assert_eq!(c["backfilled"], true);
    assert!(c["lastSyncedAt"].is_string());
    assert_eq!(data["syncRuns"]["totalCount"], 3);
    // Newest first.
    assert_eq!(nodes(&data["syncRuns"])[0]["dealsChanged"], 1);
    // runJob(crm-sync) syncs every connection, each as its own run.
    let data = app
        .admin_ok(
            "mutation { runJob(input: {name: \"crm-sync\"}) { jobRun { name status stats error } } }",
            json!({}),
        )
        .await;
    let job = &data["runJob"]["jobRun"];
    assert_eq!(job["status"], "SUCCEEDED", "{job}");
    assert_eq!(job["stats"]["connections"], 1, "{job}");
    assert_eq!(job["stats"]["runs"][0]["status"], "SUCCEEDED", "{job}");
    // The connection's credentials are stored sealed.
    assert_eq!(
        crate::helpers::count(
            &app.db,
            "SELECT COUNT(*) AS n FROM crm_connections WHERE credentials_ciphertext LIKE '%pat-test-token%'"
        )
        .await,
        0
    );
}

async fn invalid_credentials_mark_the_connection_failing(app: TestApp) {
    let program = app.create_program("Bad token").await;
    let crm = FakeHubSpot::default();
    crm.put(deal_object("1", ms(0), false, None));
    let server = crm.serve(|_| None).await;
    // The mock only answers this token; anything else gets HubSpot's 401.
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "status": "error", "message": "Authentication credentials not found.",
            "category": "INVALID_AUTHENTICATION"})))
        .mount(&server)
        .await;
    let connection = connect(&app, &program, &server, "pat-wrong-token").await;
    let run = sync(&app, &connection).await;
    assert_eq!(run["status"], "FAILED");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("Authentication credentials not found"),
        "{error}"
    );
    assert!(!error.contains("pat-wrong-token"));
    assert_eq!(app.count_rows("deals").await, 0);
    let data = app
        .admin_ok(
            "{ crmConnections { edges { node { status lastError } } } }",
            json!({}),
        )
        .await;
    let c = &nodes(&data["crmConnections"])[0];
    assert_eq!(c["status"], "FAILING");
    assert!(c["lastError"].as_str().unwrap().contains("Authentication"));
    // The job run says the same.
    let runs = app
        .admin_ok(
            "{ jobRuns(first: 5) { edges { node { name status error } } } }",
            json!({}),
        )
        .await;
    let run = &nodes(&runs["jobRuns"])[0];
    assert_eq!(run["name"], "crm-sync");
    assert_eq!(run["status"], "FAILED");
}

fn short_budget(config: &mut Config) {
    config.crm_timeout_ms = 300;
    config.crm_retry_budget_secs = 1;
}

async fn an_interrupted_sync_resumes_where_it_stopped(app: TestApp) {
    let program = app.create_program("Resume").await;
    let crm = FakeHubSpot::default();
    for i in 1..=250 {
        crm.put(deal_object(&i.to_string(), ms(i), false, None));
    }
    // The CRM fails every request for the third list page until it recovers.
    let down = Arc::new(AtomicBool::new(true));
    let d = down.clone();
    let server = crm
        .serve(move |req| {
            let third = req.url.path() == "/crm/v3/objects/deals"
                && req
                    .url
                    .query_pairs()
                    .any(|(k, v)| k == "after" && v == "200");
            (third && d.load(Ordering::SeqCst)).then(|| ResponseTemplate::new(503))
        })
        .await;
    let connection = connect(&app, &program, &server, "pat-test-token").await;
    let run = sync(&app, &connection).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    assert_eq!(run["pages"], 2);
    assert!(run["error"].as_str().unwrap().contains("503"), "{run}");
    assert_eq!(app.count_rows("deals").await, 200);

    down.store(false, Ordering::SeqCst);
    let before = server.received_requests().await.unwrap().len();
    let run = sync(&app, &connection).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    assert_eq!(run["dealsChanged"], 50, "{run}");
    // It went on from the third page rather than starting over.
    let requests = server.received_requests().await.unwrap();
    let first_list = requests[before..]
        .iter()
        .find(|r| r.url.path() == "/crm/v3/objects/deals")
        .unwrap();
    assert!(first_list.url.query().unwrap().contains("after=200"));
    assert_eq!(app.count_rows("deals").await, 250);
}

fn chaos_config(config: &mut Config) {
    config.crm_timeout_ms = 400;
    config.crm_retry_budget_secs = 60;
}

async fn chaos_gives_the_same_deals_as_a_clean_run(app: TestApp) {
    let crm = FakeHubSpot::default();
    for i in 1..=400 {
        crm.put(deal_object(&i.to_string(), ms(i), i % 3 == 0, None));
    }
    let clean_program = app.create_program("Clean").await;
    let chaos_program = app.create_program("Chaos").await;
    let clean = crm.serve(|_| None).await;
    let faults = Arc::new(AtomicUsize::new(0));
    let f = faults.clone();
    let chaotic = crm
        .serve(move |_| {
            // 20 % of answers are faults (the very first one always is).
            if f.load(Ordering::SeqCst) > 0 && rand::random_range(0..5) != 0 {
                return None;
            }
            f.fetch_add(1, Ordering::SeqCst);
            Some(match rand::random_range(0..3) {
                0 => ResponseTemplate::new(429)
                    .insert_header("retry-after", "0")
                    .set_body_json(json!({"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
                        "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING"})),
                1 => ResponseTemplate::new(502),
                _ => ResponseTemplate::new(200).set_delay(Duration::from_secs(2)),
            })
        })
        .await;
    let a = connect(&app, &clean_program, &clean, "pat-test-token").await;
    let b = connect(&app, &chaos_program, &chaotic, "pat-test-token").await;
    assert_eq!(sync(&app, &a).await["status"], "SUCCEEDED");
    let run = sync(&app, &b).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    assert!(faults.load(Ordering::SeqCst) > 0);
    let per_program = |program: String| {
        let app = &app;
        async move {
            let rows = sea_orm::ConnectionTrait::query_all_raw(
        app.db.reads(),
                sea_orm::Statement::from_sql_and_values(
                    app.db.backend(),
                    format!(
                        "SELECT external_id, status, amount, closed_at FROM deals WHERE program_id = {}",
                        if app.db.is_postgres() { "$1" } else { "?" }
                    ),
                    [program.into()],
                ),
            )
            .await
            .unwrap();
            let mut deals: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{} {} {} {:?}",
                        r.try_get::<String>("", "external_id").unwrap(),
                        r.try_get::<String>("", "status").unwrap(),
                        r.try_get::<String>("", "amount").unwrap(),
                        r.try_get::<Option<chrono::DateTime<Utc>>>("", "closed_at")
                            .unwrap(),
                    )
                })
                .collect();
            deals.sort();
            (deals.len(), deals)
        }
    };
    let clean_deals = per_program(clean_program).await;
    let chaos_deals = per_program(chaos_program).await;
    assert_eq!(clean_deals.0, 400);
    assert_eq!(clean_deals, chaos_deals);
}

async fn parked_hubspot_receipts_are_fetched_and_applied(app: TestApp) {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::Sha256;
    let program = app.create_program("Webhooks + sync").await;
    let alice = partner(&app, &program, "Alice").await;
    let crm = FakeHubSpot::default();
    let server = crm.serve(|_| None).await;
    let connection = connect(&app, &program, &server, "pat-test-token").await;
    // A first sync on an empty CRM (backfill done).
    assert_eq!(sync(&app, &connection).await["status"], "SUCCEEDED");
    let source = crate::webhooks::create_source(
        &app,
        json!({"name": "hs", "kind": "HUBSPOT", "programId": program,
            "secret": "hubspot-client-secret", "connectionId": connection}),
    )
    .await;
    // HubSpot says deal 77 changed; the receipt waits for the deal to be fetched.
    crm.put(deal_object(
        "77",
        Utc::now().timestamp_millis(),
        true,
        Some(&alice.code),
    ));
    let body = json!([{"eventId": 5001, "subscriptionType": "deal.propertyChange", "objectId": 77,
        "occurredAt": Utc::now().timestamp_millis(), "propertyName": "dealstage",
        "propertyValue": "closedwon", "portalId": 62515, "attemptNumber": 0}])
    .to_string();
    let ts = Utc::now().timestamp_millis().to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(b"hubspot-client-secret").unwrap();
    mac.update(format!("POST{}{body}{ts}", source.url).as_bytes());
    let sig = STANDARD.encode(mac.finalize().into_bytes());
    let resp = app
        .client
        .post(&source.url)
        .header("X-HubSpot-Signature-v3", sig)
        .header("X-HubSpot-Request-Timestamp", ts)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    crate::webhooks::drain(&app).await;
    let receipts = "{ webhookReceipts(first: 5) { edges { node { status reason deal { externalId status partner { name } } } } } }";
    // The receipt waits for its deal, and the webhook starts the connection's sync at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = nodes(&app.admin_ok(receipts, json!({})).await["webhookReceipts"])[0].clone();
        if r["status"] != "RECEIVED" {
            break r;
        }
        assert!(r["reason"].as_str().unwrap().contains("fetched"), "{r}");
        assert!(std::time::Instant::now() < deadline, "still waiting: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(r["status"], "APPLIED", "{r}");
    assert_eq!(r["deal"]["externalId"], "77");
    assert_eq!(r["deal"]["status"], "WON");
    assert_eq!(r["deal"]["partner"]["name"], "Alice");
    // The sync that applied the receipt records its run after the receipt's commit.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let runs = loop {
        let runs = app
            .admin_ok(
                "{ syncRuns(first: 5) { edges { node { status receiptsApplied } } } }",
                json!({}),
            )
            .await;
        if nodes(&runs["syncRuns"])
            .iter()
            .all(|r| r["status"] != "RUNNING")
        {
            break runs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {runs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let applied: i64 = nodes(&runs["syncRuns"])
        .iter()
        .map(|r| r["receiptsApplied"].as_i64().unwrap())
        .sum();
    assert_eq!(applied, 1, "{runs}");
    // A later sync finds nothing left to fetch.
    let run = sync(&app, &connection).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    assert_eq!(run["receiptsApplied"], 0, "{run}");
    // The deal was fetched by id, and the sync's own search sees the same deal: one mirror row.
    let fetched = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .any(|r| r.url.path() == "/crm/v3/objects/deals/77");
    assert!(fetched);
    assert_eq!(app.count_rows("deals").await, 1);
}

async fn connection_input_is_checked(app: TestApp) {
    let program = app.create_program("Checks").await;
    let create = "mutation($input: CreateCrmConnectionInput!) { createCrmConnection(input: $input) { connection { id } } }";
    let base =
        json!({"name": "x", "kind": "HUBSPOT", "programId": program, "accessToken": "pat-x"});
    let with = |patch: Value| {
        let mut input = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                input.as_object_mut().unwrap().remove(k);
            } else {
                input[k] = v.clone();
            }
        }
        json!({"input": input})
    };
    for (patch, field) in [
        (json!({"kind": "SALESFORCE"}), "input.baseUrl"),
        (
            json!({"kind": "SALESFORCE", "baseUrl": "https://acme.my.salesforce.com", "apiVersion": "latest"}),
            "input.apiVersion",
        ),
        (json!({"apiVersion": "62.0"}), "input.apiVersion"),
        (json!({"kind": "MAGIC"}), "input.kind"),
        (json!({"accessToken": null}), "input.accessToken"),
        (
            json!({"oauth": {"clientId": "a", "clientSecret": "b", "refreshToken": "c"}}),
            "input.accessToken",
        ),
        (
            json!({"accessToken": null, "oauth": {"clientId": "a", "clientSecret": "", "refreshToken": "c"}}),
            "input.oauth.clientSecret",
        ),
        (json!({"schedule": "every five minutes"}), "input.schedule"),
        (json!({"baseUrl": "ftp://crm.example"}), "input.baseUrl"),
        (json!({"name": " "}), "input.name"),
    ] {
        let resp = app.gql(&app.admin, create, with(patch.clone())).await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{patch}: {resp}");
        assert_eq!(error_field(&resp), field, "{patch}: {resp}");
    }
    let resp = app
        .gql(
            &app.admin,
            create,
            with(json!({"programId": uuid::Uuid::now_v7().to_string()})),
        )
        .await;
    assert_eq!(error_code(&resp), "NOT_FOUND");
    let partner_id = app.create_partner(&program, "P").await;
    let key = app.partner_key(&partner_id).await;
    let resp = app.gql(&key, create, with(json!({}))).await;
    assert_eq!(error_code(&resp), "FORBIDDEN");
    let resp = app
        .gql(&key, "{ crmConnections { totalCount } }", json!({}))
        .await;
    assert_eq!(error_code(&resp), "FORBIDDEN");
    let resp = app
        .gql(
            &app.admin,
            SYNC,
            json!({"id": uuid::Uuid::now_v7().to_string()}),
        )
        .await;
    assert_eq!(error_code(&resp), "NOT_FOUND");
    assert_eq!(app.count_rows("crm_connections").await, 0);
    // OAuth connections are accepted; a HUBSPOT source may only name a HUBSPOT connection of
    // its program.
    let data = app
        .admin_ok(create, with(json!({"accessToken": null, "oauth": {"clientId": "a", "clientSecret": "b", "refreshToken": "c"}})))
        .await;
    let id = data["createCrmConnection"]["connection"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = app.create_program("Other").await;
    let resp = app
        .gql(
            &app.admin,
            "mutation($input: CreateWebhookSourceInput!) { createWebhookSource(input: $input) { source { id } } }",
            json!({"input": {"name": "hs", "kind": "HUBSPOT", "programId": other, "secret": "s", "connectionId": id}}),
        )
        .await;
    assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
    assert_eq!(error_field(&resp), "input.connectionId");
}

fn scheduled(config: &mut Config) {
    config.scheduler = true;
    config.crm_sync_check_schedule = "* * * * * *".to_string();
    // Keep the other jobs out of the way.
    config.reconcile_schedule = "0 0 0 1 1 *".to_string();
    config.release_holds_schedule = "0 0 0 1 1 *".to_string();
}

async fn connections_sync_on_their_own_schedule(app: TestApp) {
    let program = app.create_program("Scheduled").await;
    let crm = FakeHubSpot::default();
    crm.put(deal_object("1", ms(0), false, None));
    let server = crm.serve(|_| None).await;
    let data = app
        .admin_ok(
            "mutation($input: CreateCrmConnectionInput!) { createCrmConnection(input: $input) { connection { id schedule } } }",
            json!({"input": {"name": "HubSpot", "kind": "HUBSPOT", "programId": program,
                "baseUrl": server.uri(), "accessToken": "pat-test-token", "schedule": "*/2 * * * * *"}}),
        )
        .await;
    assert_eq!(
        data["createCrmConnection"]["connection"]["schedule"],
        "*/2 * * * * *"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let runs = app
            .admin_ok(
                "{ syncRuns { totalCount edges { node { status dealsChanged } } } }",
                json!({}),
            )
            .await;
        let finished: Vec<Value> = nodes(&runs["syncRuns"])
            .into_iter()
            .filter(|r| r["status"] != "RUNNING")
            .collect();
        if finished.len() >= 2 {
            // The first run brought the deal in; later ones found nothing new.
            assert!(
                finished.iter().all(|r| r["status"] == "SUCCEEDED"),
                "{runs}"
            );
            assert_eq!(finished.last().unwrap()["dealsChanged"], 1);
            assert_eq!(finished[0]["dealsChanged"], 0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled sync: {runs}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(app.count_rows("deals").await, 1);
}

mod schedule {
    use super::*;
    db_tests!(config = scheduled; connections_sync_on_their_own_schedule);
}

async fn accepted_referrals_are_pushed_once(app: TestApp) {
    let program = app.create_program("Push").await;
    let alice = partner(&app, &program, "Alice").await;
    let key = app.partner_key(&alice.id).await;
    app.submit_referral(
        &key,
        json!({"companyName": "Initech", "companyDomain": "initech.example",
            "contactName": "Peter Gibbons", "contactEmail": "peter@initech.example"}),
    )
    .await;
    // A duplicate registration is not pushed.
    app.submit_referral(
        &key,
        json!({"companyName": "Initech again", "companyDomain": "initech.example"}),
    )
    .await;
    let crm = FakeHubSpot::default();
    // The contact already exists in the CRM: HubSpot answers 409 with its id.
    crm.contacts
        .lock()
        .unwrap()
        .push(json!({"id": "555", "properties": {"email": "peter@initech.example"}}));
    let server = crm.serve(|_| None).await;
    let connection = connect(&app, &program, &server, "pat-test-token").await;
    let run = sync(&app, &connection).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    assert_eq!(run["referralsPushed"], 1, "{run}");
    let companies = crm.companies.lock().unwrap().clone();
    assert_eq!(companies.len(), 1);
    assert_eq!(companies[0]["properties"]["domain"], "initech.example");
    assert_eq!(companies[0]["properties"]["name"], "Initech");
    assert_eq!(
        companies[0]["properties"]["tandem_referral_code"],
        alice.code.as_str()
    );
    // Syncing again creates nothing twice.
    let run = sync(&app, &connection).await;
    assert_eq!(run["referralsPushed"], 0, "{run}");
    assert_eq!(crm.companies.lock().unwrap().len(), 1);
    let row = crate::helpers::count(
        &app.db,
        "SELECT COUNT(*) AS n FROM crm_referral_pushes WHERE status = 'PUSHED' \
         AND company_external_id = '7000' AND contact_external_id = '555'",
    )
    .await;
    assert_eq!(row, 1);
    // A new referral with a new contact: company and contact created, associated.
    app.submit_referral(
        &key,
        json!({"companyName": "Hooli", "companyDomain": "hooli.example",
            "contactName": "Gavin Belson", "contactEmail": "gavin@hooli.example"}),
    )
    .await;
    let run = sync(&app, &connection).await;
    assert_eq!(run["referralsPushed"], 1, "{run}");
    let contacts = crm.contacts.lock().unwrap().clone();
    let gavin = contacts
        .iter()
        .find(|c| c["properties"]["email"] == "gavin@hooli.example")
        .unwrap();
    assert_eq!(gavin["properties"]["firstname"], "Gavin");
    assert_eq!(gavin["properties"]["lastname"], "Belson");
    assert_eq!(
        gavin["properties"]["tandem_referral_code"],
        alice.code.as_str()
    );
    assert_eq!(gavin["associations"][0]["to"]["id"], "7001");
}

fn crm_fixture(name: &str) -> Value {
    let path = format!(
        "{}/connectors/tests/fixtures/crm/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

async fn pipedrive_and_salesforce_connections_sync(app: TestApp) {
    let program = app.create_program("Other CRMs").await;
    let alice = partner(&app, &program, "Alice").await;
    // Pipedrive: two pages by cursor; the referral code in a deal custom field.
    let pd = MockServer::start().await;
    let mut page1 = crm_fixture("pipedrive_v2_deals_page1.json");
    page1["additional_data"] = json!({"next_cursor": "c2"});
    page1["data"][1]["custom_fields"] = json!({"f00code": alice.code});
    Mock::given(method("GET"))
        .and(wiremock::matchers::path("/api/v2/deals"))
        .and(wiremock::matchers::query_param("cursor", "c2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(crm_fixture("pipedrive_v2_deals_page2_last.json")),
        )
        .mount(&pd)
        .await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::path("/api/v2/deals"))
        .and(header("x-api-token", "pd-token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page1))
        .mount(&pd)
        .await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::path_regex(
            "^/api/v2/(organizations|persons)$",
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"success": true, "data": []})),
        )
        .mount(&pd)
        .await;
    let create = "mutation($input: CreateCrmConnectionInput!) { createCrmConnection(input: $input) { connection { id kind apiVersion } } }";
    let data = app
        .admin_ok(
            create,
            json!({"input": {"name": "Pipedrive", "kind": "PIPEDRIVE", "programId": program,
                "baseUrl": pd.uri(), "accessToken": "pd-token", "referralCodeField": "f00code"}}),
        )
        .await;
    let pd_id = data["createCrmConnection"]["connection"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = sync(&app, &pd_id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    assert_eq!(run["pages"], 2);
    assert_eq!(run["dealsChanged"], 3);

    // Salesforce: SOQL pages through nextRecordsUrl; the code in Tandem_Referral_Code__c.
    let sf = MockServer::start().await;
    let mut first = crm_fixture("salesforce_query_response_page1.json");
    first["records"][1]["Tandem_Referral_Code__c"] = json!(alice.code);
    Mock::given(method("GET"))
        .and(wiremock::matchers::path("/services/data/v62.0/queryAll"))
        .and(header("authorization", "Bearer 00D!session"))
        .respond_with(ResponseTemplate::new(200).set_body_json(first))
        .mount(&sf)
        .await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::path(
            "/services/data/v62.0/query/01gRO0000016PIAYA2-2",
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(crm_fixture("salesforce_query_response_page2_last.json")),
        )
        .mount(&sf)
        .await;
    let data = app
        .admin_ok(
            create,
            json!({"input": {"name": "Salesforce", "kind": "SALESFORCE", "programId": program,
                "baseUrl": sf.uri(), "accessToken": "00D!session"}}),
        )
        .await;
    assert_eq!(
        data["createCrmConnection"]["connection"]["apiVersion"],
        "62.0"
    );
    let sf_id = data["createCrmConnection"]["connection"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = sync(&app, &sf_id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    assert_eq!(run["pages"], 2);
    assert_eq!(run["dealsChanged"], 3);

    let deals = mirrored(&app).await;
    assert_eq!(deals.len(), 6);
    let coded: Vec<_> = deals.iter().filter(|d| d.3 == "CODE").collect();
    assert_eq!(coded.len(), 2, "{deals:?}");
    assert!(coded.iter().all(|d| d.1 == "WON" && d.2 == "Alice"));
    // Each deal keeps its CRM company: the Pipedrive organization, the Salesforce Account.
    let with_company =
        |id: &str| format!("SELECT COUNT(*) AS n FROM deals WHERE crm_company_id = '{id}'");
    assert!(crate::helpers::count(&app.db, &with_company("1")).await >= 1);
    assert!(crate::helpers::count(&app.db, &with_company("001dM00003jU9GxQAK")).await >= 1);
}

async fn oauth_connections_persist_rotated_refresh_tokens(app: TestApp) {
    let program = app.create_program("OAuth").await;
    let server = MockServer::start().await;
    // Each refresh rotates the refresh token, and access tokens expire at once, so every sync
    // refreshes with the token the previous one stored.
    for (old, new) in [("r1", "r2"), ("r2", "r3")] {
        Mock::given(method("POST"))
            .and(wiremock::matchers::path("/oauth/v1/token"))
            .and(wiremock::matchers::body_string_contains(
                format!("refresh_token={old}&").as_str(),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "token_type": "bearer", "refresh_token": new,
                "access_token": format!("access-{new}"), "expires_in": 0})))
            .expect(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(wiremock::matchers::path("/crm/v3/objects/deals"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"results": []})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::path("/crm/v3/objects/deals/search"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"total": 0, "results": []})))
        .mount(&server)
        .await;
    let data = app
        .admin_ok(
            "mutation($input: CreateCrmConnectionInput!) { createCrmConnection(input: $input) { connection { id } } }",
            json!({"input": {"name": "HubSpot OAuth", "kind": "HUBSPOT", "programId": program,
                "baseUrl": server.uri(), "oauth": {"clientId": "app", "clientSecret": "shh", "refreshToken": "r1"}}}),
        )
        .await;
    let id = data["createCrmConnection"]["connection"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sync(&app, &id).await["status"], "SUCCEEDED");
    assert_eq!(sync(&app, &id).await["status"], "SUCCEEDED");
    // A third sync uses r3, which the CRM does not know: the connection fails with its message.
    let run = sync(&app, &id).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("token refresh failed"),
        "{run}"
    );
    assert!(!run["error"].as_str().unwrap().contains("shh"));
}

async fn an_unreachable_crm_fails_within_the_bound(app: TestApp) {
    let program = app.create_program("Unreachable").await;
    // A port nobody listens on, and a CRM that takes connections but never answers (the kernel
    // completes the handshake; nothing accepts or reads). Both on loopback, as every test
    // address is.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    for base in [
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{silent_port}"),
    ] {
        let data = app
            .admin_ok(
                "mutation($input: CreateCrmConnectionInput!) { createCrmConnection(input: $input) { connection { id } } }",
                json!({"input": {"name": "Gone", "kind": "HUBSPOT", "programId": program,
                    "baseUrl": base, "accessToken": "pat-test-token"}}),
            )
            .await;
        let id = data["createCrmConnection"]["connection"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let run = sync(&app, &id).await;
        assert_eq!(run["status"], "FAILED", "{run}");
        // 300 ms per attempt, a 1 s retry budget.
        assert!(run["durationMs"].as_i64().unwrap() < 5_000, "{run}");
        assert_eq!(run["pages"], 0);
    }
    drop(silent);
}

mod bounded {
    use super::*;
    db_tests!(config = short_budget; an_unreachable_crm_fails_within_the_bound);
}

db_tests!(
    oauth_connections_persist_rotated_refresh_tokens,
    pipedrive_and_salesforce_connections_sync,
    accepted_referrals_are_pushed_once,
    hubspot_backfill_then_incremental,
    invalid_credentials_mark_the_connection_failing,
    parked_hubspot_receipts_are_fetched_and_applied,
    connection_input_is_checked,
);

mod resume {
    use super::*;
    db_tests!(config = short_budget; an_interrupted_sync_resumes_where_it_stopped);
}

mod chaos {
    use super::*;
    db_tests!(config = chaos_config; chaos_gives_the_same_deals_as_a_clean_run);
}
