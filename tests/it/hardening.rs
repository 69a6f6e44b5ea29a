//! Findings of the outside probe (issue 16), one regression test each: what an attacker or a
//! careless integrator tried, and what must happen instead.

use serde_json::{Value, json};

use chrono::Utc;

use crate::{
    commissions::{Crm, ledger, partner, program_with, run_job},
    db_tests,
    helpers::{TestApp, error_code, error_field},
    outbound::{connect, ws_next, ws_send},
    webhooks::{post_signed, standard_source},
};

/// Creates a key; returns (token, id).
async fn key(app: &TestApp, input: Value) -> (String, String) {
    let created = app
        .admin_ok(
            "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { token apiKey { id } } }",
            json!({"input": input}),
        )
        .await;
    (
        created["createApiKey"]["token"]
            .as_str()
            .unwrap()
            .to_string(),
        created["createApiKey"]["apiKey"]["id"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

/// Runs one operation over an open graphql-transport-ws socket and returns its first answer
/// (`next` or `error`).
async fn over_socket<S>(ws: &mut S, id: &str, query: &str) -> Value
where
    S: futures_util::SinkExt<tokio_tungstenite::tungstenite::Message>
        + futures_util::StreamExt<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
    <S as futures_util::Sink<tokio_tungstenite::tungstenite::Message>>::Error: std::fmt::Debug,
{
    ws_send(
        ws,
        json!({"id": id, "type": "subscribe", "payload": {"query": query}}),
    )
    .await;
    loop {
        let msg = ws_next(ws).await.expect("an answer on the socket");
        if msg["id"] == id && (msg["type"] == "next" || msg["type"] == "error") {
            return msg;
        }
    }
}

/// The `extensions.code` of the first error of a socket answer (`next` with errors, or
/// `error` with a list).
fn socket_error_code(msg: &Value) -> String {
    let errors = if msg["type"] == "error" {
        &msg["payload"]
    } else {
        &msg["payload"]["errors"]
    };
    errors[0]["extensions"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Finding 1: a key revoked while its websocket is open loses its rights with the next
/// operation: queries, mutations (an admin key minting another admin key) and new
/// subscriptions all answer UNAUTHENTICATED.
async fn revoked_keys_lose_open_websockets_at_once(app: TestApp) {
    let program = app.create_program("Sockets").await;
    let partner = app.create_partner(&program, "Acme").await;
    let (partner_token, partner_key) = key(
        &app,
        json!({"name": "p", "role": "PARTNER", "partnerId": partner}),
    )
    .await;
    let (admin_token, admin_key) = key(&app, json!({"name": "a", "role": "ADMIN"})).await;

    let mut partner_ws = connect(&app, &partner_token).await;
    assert_eq!(
        ws_next(&mut partner_ws).await.unwrap()["type"],
        "connection_ack"
    );
    let mut admin_ws = connect(&app, &admin_token).await;
    assert_eq!(
        ws_next(&mut admin_ws).await.unwrap()["type"],
        "connection_ack"
    );
    let before = over_socket(&mut partner_ws, "1", "{ viewer { role } }").await;
    assert_eq!(
        before["payload"]["data"]["viewer"]["role"], "PARTNER",
        "{before}"
    );
    let mint = "mutation { createApiKey(input: {name: \"x\", role: ADMIN}) { token } }";
    let minted = over_socket(&mut admin_ws, "1", mint).await;
    assert!(
        minted["payload"]["data"]["createApiKey"]["token"].is_string(),
        "{minted}"
    );

    for id in [&partner_key, &admin_key] {
        app.admin_ok(
            "mutation($id: ID!) { revokeApiKey(input: {id: $id}) { apiKey { revokedAt } } }",
            json!({"id": id}),
        )
        .await;
    }

    let read = over_socket(&mut partner_ws, "2", "{ viewer { role } }").await;
    assert_eq!(socket_error_code(&read), "UNAUTHENTICATED", "{read}");
    assert!(read["payload"]["data"]["viewer"].is_null(), "{read}");
    let history = over_socket(
        &mut partner_ws,
        "3",
        "subscription { events(after: \"0.0\") { id } }",
    )
    .await;
    assert_eq!(socket_error_code(&history), "UNAUTHENTICATED", "{history}");
    let minted = over_socket(&mut admin_ws, "2", mint).await;
    assert_eq!(socket_error_code(&minted), "UNAUTHENTICATED", "{minted}");
    assert_eq!(
        app.count_rows("api_keys").await,
        4,
        "no key was minted after revocation"
    );
}

/// Findings 2 and 8 at the door: a signed deal whose amount is beyond the money bounds, is
/// negative, or whose currency is no ISO 4217 code is refused with 400 and stored as FAILED,
/// never as a deal; plan values and exchange rates beyond the bounds are BAD_USER_INPUT with
/// the field.
async fn money_beyond_bounds_is_refused_at_every_entry_point(app: TestApp) {
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "20"}), json!({})).await;
    let source = standard_source(&app, &program).await;
    let now = Utc::now();
    for (i, (amount, currency, reason)) in [
        ("800000000000000000000000000", "USD", "amount"),
        ("1000000000000", "USD", "amount"),
        ("-5.00", "USD", "amount"),
        ("100.00", "../../", "currency"),
        ("100.00", "XYZ", "currency"),
    ]
    .into_iter()
    .enumerate()
    {
        let body = json!({"type": "deal.updated", "data": {"id": format!("big-{i}"), "name": "Big",
            "amount": amount, "currency": currency, "status": "won",
            "createdAt": now.to_rfc3339(), "updatedAt": now.to_rfc3339()}})
        .to_string();
        let resp = post_signed(&app, &source, &format!("msg-{i}"), now.timestamp(), &body).await;
        assert_eq!(resp.status(), 400, "{amount} {currency}");
        let text = resp.text().await.unwrap();
        assert!(text.contains(reason), "{text}");
    }
    assert_eq!(app.count_rows("deals").await, 0);
    let failed = crate::helpers::count(
        &app.db,
        "SELECT COUNT(*) AS n FROM webhook_receipts WHERE status = 'FAILED'",
    )
    .await;
    assert_eq!(failed, 5);

    let create =
        "mutation($input: CreateProgramInput!) { createProgram(input: $input) { program { id } } }";
    for (commission, field) in [
        (
            json!({"type": "FLAT", "flatAmount": "9999999999999999999999999999"}),
            "input.commission.flatAmount",
        ),
        (
            json!({"type": "PERCENT", "rate": "10", "capPerDeal": "1000000000000"}),
            "input.commission.capPerDeal",
        ),
        (
            json!({"type": "PERCENT", "rate": "10", "minDealAmount": "-1"}),
            "input.commission.minDealAmount",
        ),
        (
            json!({"type": "PERCENT", "rate": "10", "tiers": [{"minRevenue": "1000000000000", "rate": "12"}]}),
            "input.commission.tiers[0].minRevenue",
        ),
    ] {
        let resp = app
            .gql(
                &app.admin,
                create,
                json!({"input": {"name": "Huge", "kind": "CHANNEL", "currency": "USD", "commission": commission}}),
            )
            .await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
        assert_eq!(error_field(&resp), field, "{resp}");
    }
    let resp = app
        .gql(
            &app.admin,
            "mutation { setExchangeRate(input: {base: \"EUR\", quote: \"USD\", rate: \"99999999999\", effectiveAt: \"2026-01-01T00:00:00Z\"}) { exchangeRate { rate } } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
    assert_eq!(error_field(&resp), "input.rate", "{resp}");
}

/// Finding 2 in the engine: a deal stored with an amount no entry point accepts any more (as
/// data from before the bounds would be) is counted invalid by `reconcile`, which books every
/// other deal and ends SUCCEEDED; the next run starts at once (no lease left behind).
async fn one_oversized_deal_never_stops_reconcile(app: TestApp) {
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "20"}),
        json!({"holdDays": 0}),
    )
    .await;
    let acme = partner(&app, &program, "Acme").await;
    let mut crm = Crm::new(&app, &program).await;
    crm.won(&app, "good", "1000.00", 3, &acme.code).await;
    crm.won(&app, "poison", "10.00", 3, &acme.code).await;
    // What a deal stored before the bounds existed looks like.
    app.db
        .execute_unprepared(
            "UPDATE deals SET amount = '800000000000000000000000000' WHERE external_id = 'poison'",
        )
        .await
        .unwrap();
    let stats = run_job(&app, "reconcile", true).await;
    assert_eq!(stats["invalid"], 1, "{stats}");
    let entries = ledger(&app, &acme.id).await;
    assert_eq!(
        entries,
        vec![(
            "ACCRUAL".to_string(),
            "200.00".to_string(),
            "APPROVED".to_string()
        )],
        "the good deal is booked, the poisoned one is not"
    );
    // The lease was released: another run starts at once and finds nothing to change.
    let started = std::time::Instant::now();
    let again = run_job(&app, "reconcile", false).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(again["entriesWritten"], 0, "{again}");
}

/// A CRM that echoes the whole request (headers, then body) in an error answer, as APIs do in
/// 400/403 answers and failed token refreshes.
struct Echo(u16);

impl wiremock::Respond for Echo {
    fn respond(&self, request: &wiremock::Request) -> wiremock::ResponseTemplate {
        let headers: Vec<String> = request
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or_default()))
            .collect();
        let echoed = format!(
            "bad request {} {}; headers: {}; body: {}",
            request.method,
            request.url,
            headers.join(", "),
            String::from_utf8_lossy(&request.body)
        );
        wiremock::ResponseTemplate::new(self.0)
            .set_body_json(json!({"status": "error", "message": echoed, "error": echoed}))
    }
}

/// Where a connection's error text ends up: the sync run, the connection, the job run.
async fn stored_errors_containing(app: &TestApp, secret: &str) -> i64 {
    let mut total = 0;
    for (table, column) in [
        ("sync_runs", "error"),
        ("crm_connections", "last_error"),
        ("job_runs", "error"),
    ] {
        total += crate::helpers::count(
            &app.db,
            &format!("SELECT COUNT(*) AS n FROM {table} WHERE {column} LIKE '%{secret}%'"),
        )
        .await;
    }
    total
}

/// Creates a connection (`input` without `baseUrl`) to a CRM that echoes every request with
/// `status`, syncs it, and returns the failed run.
async fn echo_sync(app: &TestApp, status: u16, mut input: Value) -> Value {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(Echo(status))
        .mount(&server)
        .await;
    input["baseUrl"] = json!(server.uri());
    let data = app
        .admin_ok(
            "mutation($input: CreateCrmConnectionInput!) { createCrmConnection(input: $input) { connection { id } } }",
            json!({"input": input}),
        )
        .await;
    let run = app
        .admin_ok(
            "mutation($id: ID!) { syncCrmConnection(input: {id: $id}) { syncRun { status error } } }",
            json!({"id": data["createCrmConnection"]["connection"]["id"]}),
        )
        .await["syncCrmConnection"]["syncRun"]
        .clone();
    assert_eq!(run["status"], "FAILED", "{run}");
    run
}

/// Finding 3: whatever the status, an error text that echoes the request never carries the
/// connection's credentials (access token, client secret, refresh token, in clear, form- or
/// Basic-encoded) into the run, the connection, the job run or the API.
async fn crm_errors_never_carry_credentials(app: TestApp) {
    let program = app.create_program("Echo").await;
    for status in [400, 403] {
        let token = format!("pat-eu1-echoed-secret-{status}");
        let run = echo_sync(
            &app,
            status,
            json!({"name": format!("Echo {status}"), "kind": "HUBSPOT",
            "programId": program, "accessToken": token}),
        )
        .await;
        let error = run["error"].as_str().unwrap();
        assert!(
            error.contains("bad request"),
            "the CRM's message is kept: {error}"
        );
        assert!(error.contains("[redacted]"), "{error}");
        assert!(!error.contains(&token), "{error}");
        assert_eq!(stored_errors_containing(&app, &token).await, 0);
    }
    // OAuth: the token endpoint answers 400 echoing the form body and the Basic header.
    let (secret, refresh) = ("client/secret+with=specials", "refresh-token-abcdef");
    let run = echo_sync(
        &app,
        400,
        json!({"name": "Echo OAuth", "kind": "HUBSPOT", "programId": program,
        "oauth": {"clientId": "app", "clientSecret": secret, "refreshToken": refresh}}),
    )
    .await;
    let error = run["error"].as_str().unwrap();
    for leaked in [secret, "client%2Fsecret%2Bwith%3Dspecials", refresh] {
        assert!(!error.contains(leaked), "{leaked} in {error}");
    }
    assert_eq!(stored_errors_containing(&app, refresh).await, 0);
    assert_eq!(stored_errors_containing(&app, "client%2Fsecret").await, 0);
    let listed = app
        .admin_ok(
            "{ crmConnections { edges { node { lastError } } } }",
            json!({}),
        )
        .await;
    assert!(!listed.to_string().contains("echoed-secret"), "{listed}");
    assert!(!listed.to_string().contains(refresh), "{listed}");
}

/// Finding 6: a SUSPENDED partner's keys read but cannot submit or create anything
/// (CONFLICT); a TERMINATED partner's keys stop authenticating, on HTTP and on sockets.
async fn suspended_partners_read_only_terminated_partners_locked_out(app: TestApp) {
    let program = app.create_program("Lifecycle").await;
    let partner_id = app.create_partner(&program, "Acme").await;
    let token = app.partner_key(&partner_id).await;
    let set_status = |status: &'static str| {
        let (app, partner_id) = (&app, partner_id.clone());
        async move {
            app.admin_ok(
                "mutation($id: ID!, $s: PartnerStatus!) { updatePartnerStatus(input: {id: $id, status: $s}) { partner { status } } }",
                json!({"id": partner_id, "s": status}),
            )
            .await
        }
    };
    let submit = json!({"query": "mutation { submitReferral(input: {companyName: \"Globex\", companyDomain: \"globex.example\"}) { referral { id } } }"});
    let endpoint = "mutation { createWebhookEndpoint(input: {url: \"https://hooks.example.com/tandem\", eventTypes: [\"deal.won\"]}) { secret } }";
    let viewer = "{ viewer { role partner { name } } }";

    set_status("SUSPENDED").await;
    let read = app.gql(&token, viewer, json!({})).await;
    assert_eq!(read["data"]["viewer"]["partner"]["name"], "Acme", "{read}");
    let submitted = app
        .gql(&token, submit["query"].as_str().unwrap(), json!({}))
        .await;
    assert_eq!(error_code(&submitted), "CONFLICT", "{submitted}");
    let created = app.gql(&token, endpoint, json!({})).await;
    assert_eq!(error_code(&created), "CONFLICT", "{created}");
    assert_eq!(app.count_rows("referrals").await, 0);
    assert_eq!(app.count_rows("webhook_endpoints").await, 0);

    // Back to ACTIVE, a socket opens; then TERMINATED: HTTP and the open socket are refused.
    set_status("ACTIVE").await;
    let mut ws = connect(&app, &token).await;
    assert_eq!(ws_next(&mut ws).await.unwrap()["type"], "connection_ack");
    set_status("TERMINATED").await;
    let read = app.gql(&token, viewer, json!({})).await;
    assert_eq!(error_code(&read), "UNAUTHENTICATED", "{read}");
    let created = app.gql(&token, endpoint, json!({})).await;
    assert_eq!(error_code(&created), "UNAUTHENTICATED", "{created}");
    let over = over_socket(&mut ws, "1", viewer).await;
    assert_eq!(socket_error_code(&over), "UNAUTHENTICATED", "{over}");
    assert_eq!(app.count_rows("webhook_endpoints").await, 0);
}

/// Finding 4: expensive fields cannot be multiplied through aliases, and introspection needs
/// a key.
async fn aliases_cannot_multiply_expensive_fields(app: TestApp) {
    let program = app.create_program("Aliases").await;
    let partner_id = app.create_partner(&program, "Acme").await;
    let token = app.partner_key(&partner_id).await;
    let kpis = |n: usize| {
        let fields: Vec<String> = (0..n)
            .map(|i| format!("k{i}: kpis(programId: \"{program}\") {{ dealsWon }}"))
            .collect();
        format!("{{ {} }}", fields.join(" "))
    };
    let three = app.gql(&token, &kpis(3), json!({})).await;
    assert!(three.get("errors").is_none(), "{three}");
    let many = app.gql(&token, &kpis(4), json!({})).await;
    assert_eq!(error_code(&many), "BAD_USER_INPUT", "{many}");
    assert!(many["data"].is_null(), "{many}");
    let roots: Vec<String> = (0..33)
        .map(|i| format!("v{i}: viewer {{ role }}"))
        .collect();
    let wide = app
        .gql(&token, &format!("{{ {} }}", roots.join(" ")), json!({}))
        .await;
    assert_eq!(error_code(&wide), "BAD_USER_INPUT", "{wide}");
    assert!(wide.to_string().contains("root fields"), "{wide}");

    let introspect = "{ __schema { queryType { name } } }";
    let anonymous = app.gql("", introspect, json!({})).await;
    // Introspection is off for the request: the schema answers nothing.
    assert!(anonymous["data"]["__schema"].is_null(), "{anonymous}");
    assert!(!anonymous.to_string().contains("QueryRoot"), "{anonymous}");
    let with_bad_key = app.gql("tdm_not_a_real_key", introspect, json!({})).await;
    assert!(with_bad_key["data"]["__schema"].is_null(), "{with_bad_key}");
    let with_key = app.gql(&token, introspect, json!({})).await;
    assert_eq!(
        with_key["data"]["__schema"]["queryType"]["name"], "QueryRoot",
        "{with_key}"
    );
}

db_tests!(
    aliases_cannot_multiply_expensive_fields,
    suspended_partners_read_only_terminated_partners_locked_out,
    crm_errors_never_carry_credentials,
    revoked_keys_lose_open_websockets_at_once,
    money_beyond_bounds_is_refused_at_every_entry_point,
    one_oversized_deal_never_stops_reconcile,
);

/// Finding 7: sockets that never authenticate are closed, and one address or one key cannot
/// hold an unbounded number of sockets.
mod sockets {
    use std::time::{Duration, Instant};

    use futures_util::StreamExt;
    use tandem::config::Config;
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    use crate::{
        db_tests,
        helpers::TestApp,
        outbound::{connect, ws_next},
    };

    fn small_limits(config: &mut Config) {
        config.ws_init_timeout_secs = 1;
        config.ws_max_per_address = 4;
        config.ws_max_per_key = 2;
    }

    fn request(app: &TestApp) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        let url = format!("{}/graphql/ws", app.base.replace("http://", "ws://"));
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        request
    }

    /// A socket that sends nothing is closed with 4408 once the init timeout passes.
    async fn silent_sockets_are_closed_with_4408(app: TestApp) {
        let (mut ws, _) = tokio_tungstenite::connect_async(request(&app))
            .await
            .unwrap();
        let started = Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(message) = ws.next().await {
                if let Ok(Message::Close(frame)) = message {
                    return frame.map(|f| u16::from(f.code));
                }
            }
            None
        })
        .await
        .expect("the server closes a silent socket");
        assert_eq!(closed, Some(4408));
        assert!(started.elapsed() >= Duration::from_millis(900));
    }

    /// The fifth socket from one address is refused at the upgrade (429); a third socket
    /// with one key is closed at `connection_init`; closing sockets frees their places.
    async fn sockets_are_capped_per_address_and_key(app: TestApp) {
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut ws = connect(&app, &app.admin).await;
            assert_eq!(ws_next(&mut ws).await.unwrap()["type"], "connection_ack");
            held.push(ws);
        }
        let mut third = connect(&app, &app.admin).await;
        let refused = ws_next(&mut third).await;
        assert!(
            refused
                .as_ref()
                .is_none_or(|m| m["type"] != "connection_ack"),
            "{refused:?}"
        );
        drop(third);
        // The refused socket's place is freed as the server closes it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Two authenticated sockets and two unauthenticated ones fill the address.
        let (_a, _) = tokio_tungstenite::connect_async(request(&app))
            .await
            .unwrap();
        let (_b, _) = tokio_tungstenite::connect_async(request(&app))
            .await
            .unwrap();
        match tokio_tungstenite::connect_async(request(&app)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 429)
            }
            other => panic!("expected 429, got {other:?}"),
        }
        // Closing a socket gives its place back.
        let mut first = held.remove(0);
        first.close(None).await.unwrap();
        drop(first);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut again = connect(&app, &app.admin).await;
        assert_eq!(ws_next(&mut again).await.unwrap()["type"], "connection_ack");
    }

    db_tests!(config = small_limits;
        silent_sockets_are_closed_with_4408,
        sockets_are_capped_per_address_and_key,
    );
}

/// Finding 8: `/metrics` can be closed with a bearer token.
mod metrics {
    use tandem::config::{Config, Redacted};

    use crate::{db_tests, helpers::TestApp};

    fn with_token(config: &mut Config) {
        config.metrics_token = Some(Redacted("metrics-scraper-secret".into()));
    }

    async fn metrics_need_the_configured_token(app: TestApp) {
        let url = format!("{}/metrics", app.base);
        let anonymous = app.client.get(&url).send().await.unwrap();
        assert_eq!(anonymous.status(), 401);
        let wrong = app
            .client
            .get(&url)
            .bearer_auth("metrics-scraper-secreT")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        let scraped = app
            .client
            .get(&url)
            .bearer_auth("metrics-scraper-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(scraped.status(), 200);
        assert!(
            scraped
                .text()
                .await
                .unwrap()
                .contains("tandem_inbox_backlog")
        );
    }

    db_tests!(config = with_token; metrics_need_the_configured_token);
}

/// Finding 5: with private targets not allowed (the default), endpoint URLs and CRM base and
/// token URLs in any special-purpose range, or carrying credentials, are refused at creation.
mod ssrf {
    use serde_json::json;
    use tandem::config::Config;

    use crate::{
        db_tests,
        helpers::{TestApp, error_code, error_field},
    };

    fn public_targets_only(config: &mut Config) {
        config.webhook_allow_private_targets = false;
    }

    const PROBED: [&str; 10] = [
        "http://[64:ff9b::a9fe:a9fe]/x",
        "http://[::127.0.0.1]/x",
        "http://[2002:7f00:1::]/x",
        "http://[::ffff:0:7f00:1]/x",
        "http://[fec0::1]/x",
        "http://198.18.0.1/x",
        "http://240.0.0.1/x",
        "http://192.0.0.1/x",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost:8080/x",
    ];

    async fn special_purpose_targets_are_refused(app: TestApp) {
        let program = app.create_program("SSRF").await;
        for url in PROBED {
            let resp = app
                .gql(
                    &app.admin,
                    "mutation($input: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $input) { secret } }",
                    json!({"input": {"url": url, "eventTypes": ["deal.won"]}}),
                )
                .await;
            assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{url}: {resp}");
            assert_eq!(error_field(&resp), "input.url", "{url}: {resp}");
            let resp = app
                .gql(
                    &app.admin,
                    "mutation($input: CreateCrmConnectionInput!) { createCrmConnection(input: $input) { connection { id } } }",
                    json!({"input": {"name": "CRM", "kind": "HUBSPOT", "programId": program,
                        "baseUrl": url, "accessToken": "pat-na1-token"}}),
                )
                .await;
            assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{url}: {resp}");
            assert_eq!(error_field(&resp), "input.baseUrl", "{url}: {resp}");
        }
        let resp = app
            .gql(
                &app.admin,
                "mutation($input: CreateCrmConnectionInput!) { createCrmConnection(input: $input) { connection { id } } }",
                json!({"input": {"name": "CRM", "kind": "HUBSPOT", "programId": program,
                    "baseUrl": "https://admin:hunter2secret@crm.example.com", "accessToken": "pat-na1-token"}}),
            )
            .await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
        assert_eq!(error_field(&resp), "input.baseUrl", "{resp}");
        assert!(!resp.to_string().contains("hunter2secret"), "{resp}");
        let resp = app
            .gql(
                &app.admin,
                "mutation($input: CreateCrmConnectionInput!) { createCrmConnection(input: $input) { connection { id } } }",
                json!({"input": {"name": "CRM", "kind": "HUBSPOT", "programId": program,
                    "oauth": {"clientId": "app", "clientSecret": "s3cret", "refreshToken": "r1",
                              "tokenUrl": "http://[::ffff:169.254.169.254]/token"}}}),
            )
            .await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
        assert_eq!(error_field(&resp), "input.oauth.tokenUrl", "{resp}");
        assert_eq!(app.count_rows("crm_connections").await, 0);
        assert_eq!(app.count_rows("webhook_endpoints").await, 0);
    }

    db_tests!(config = public_targets_only; special_purpose_targets_are_refused);
}
