//! Stripe Connect payouts (DESIGN §14) against a local server that behaves like Stripe's
//! documented transfers API: form-encoded `POST /v1/transfers`, bearer auth, idempotency keys
//! (a replay with the same parameters returns the first response; changed parameters under the
//! same key are an `idempotency_error`), error objects, and a 429 before execution (not saved
//! under the key). Sending a run twice, and killing the sender in the middle, creates each
//! transfer once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration as StdDuration,
};

use chrono::Utc;
use serde_json::{Value, json};
use tandem::{
    db::states::LedgerEntryStatus,
    domain::{secrets::SecretKey, stripe_transfers::StripeTransfers},
};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

use crate::{
    commissions::program_with,
    db_tests,
    helpers::{TEST_SECRET_KEY, TestApp, count, error_code, gql_ok_at},
};

pub const STRIPE_KEY: &str = "sk_test_tandem";

/// What the stand-in saw and keeps.
#[derive(Default)]
struct Ledger {
    /// Idempotency key → (form body, status, response).
    saved: HashMap<String, (String, u16, Value)>,
    /// Transfers created: (key, destination, amount, currency).
    created: Vec<(String, String, String, String)>,
    replays: usize,
    requests: usize,
    rate_limited: bool,
    /// Answered 500 once (a Stripe outage): not saved under the key either.
    flaked: bool,
}

#[derive(Clone, Default)]
pub struct StripeStandIn {
    ledger: Arc<Mutex<Ledger>>,
    delay_ms: Arc<Mutex<u64>>,
}

fn stripe_error(status: u16, kind: &str, code: &str, message: &str) -> (u16, Value) {
    (
        status,
        json!({"error": {"type": kind, "code": code, "message": message}}),
    )
}

impl Respond for StripeStandIn {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let delay = StdDuration::from_millis(*self.delay_ms.lock().unwrap());
        let reply = |(status, body): (u16, Value)| {
            ResponseTemplate::new(status)
                .set_body_json(body)
                .set_delay(delay)
        };
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if header("authorization").as_deref() != Some(&format!("Bearer {STRIPE_KEY}")) {
            return reply(stripe_error(
                401,
                "invalid_request_error",
                "api_key_invalid",
                "Invalid API Key provided",
            ));
        }
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/x-www-form-urlencoded"),
            "Stripe's API is form-encoded"
        );
        let body = String::from_utf8(request.body.clone()).unwrap();
        let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let mut ledger = self.ledger.lock().unwrap();
        ledger.requests += 1;
        let Some(key) = header("idempotency-key") else {
            return reply(stripe_error(
                400,
                "invalid_request_error",
                "missing_key",
                "this stand-in wants an Idempotency-Key",
            ));
        };
        if let Some((saved_body, status, response)) = ledger.saved.get(&key).cloned() {
            if saved_body != body {
                return reply(stripe_error(
                    400,
                    "idempotency_error",
                    "idempotency_key_in_use",
                    "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                ));
            }
            ledger.replays += 1;
            return reply((status, response)).insert_header("Idempotent-Replayed", "true");
        }
        let destination = form.get("destination").cloned().unwrap_or_default();
        // A rate limit answered before the request runs: not saved under the key.
        if destination == "acct_busy" && !ledger.rate_limited {
            ledger.rate_limited = true;
            return reply(stripe_error(
                429,
                "invalid_request_error",
                "rate_limit",
                "Too many requests hit the API too quickly.",
            ))
            .insert_header("Retry-After", "0");
        }
        if destination == "acct_flaky" && !ledger.flaked {
            ledger.flaked = true;
            return reply(stripe_error(
                500,
                "api_error",
                "api_error",
                "An unknown error occurred.",
            ));
        }
        let (status, response) = if destination == "acct_closed" {
            stripe_error(
                400,
                "invalid_request_error",
                "account_invalid",
                "The destination account is closed.",
            )
        } else {
            let id = format!("tr_{:04}", ledger.created.len() + 1);
            ledger.created.push((
                key.clone(),
                destination.clone(),
                form.get("amount").cloned().unwrap_or_default(),
                form.get("currency").cloned().unwrap_or_default(),
            ));
            (
                200,
                json!({"id": id, "object": "transfer", "amount": form.get("amount").and_then(|a| a.parse::<i64>().ok()),
                       "currency": form.get("currency"), "destination": destination,
                       "transfer_group": form.get("transfer_group")}),
            )
        };
        ledger.saved.insert(key, (body, status, response.clone()));
        reply((status, response))
    }
}

/// One APPROVED entry of `cents`, available since yesterday.
pub async fn approved_entry(
    app: &TestApp,
    program: &str,
    partner: &str,
    cents: i64,
    currency: &str,
) {
    let amount = format!("{}.{:02}", cents / 100, cents % 100);
    crate::payouts::seed_entries_in(
        app,
        program,
        partner,
        currency,
        &[(&amount, LedgerEntryStatus::Approved, 60 * 24)],
    )
    .await;
}

const RUN: &str = "query($id: ID!) { payoutRun(id: $id) { status payouts { id status reference failure method partner { id } } } }";

async fn stripe_transfers_are_created_once(app: TestApp) {
    let stand_in = StripeStandIn::default();
    let server = MockServer::start().await;
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/v1/transfers"))
        .respond_with(stand_in.clone())
        .mount(&server)
        .await;
    let stripe_base = server.uri();
    let (base, _stop) = app
        .spawn_instance_with(move |config| {
            config.stripe_api_key = Some(tandem::config::Redacted(STRIPE_KEY.into()));
            config.stripe_api_base = stripe_base;
        })
        .await;
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "10"}),
        json!({"currency": "USD"}),
    )
    .await;
    const N: usize = 12;
    let mut partners = Vec::new();
    for i in 0..N {
        let id = app.create_partner(&program, &format!("Connect {i}")).await;
        let account = match i {
            0 => "acct_busy".to_string(),
            1 => "acct_closed".to_string(),
            2 => "acct_flaky".to_string(),
            _ => format!("acct_1Nv0FGQ9RKHg{i:04}"),
        };
        app.admin_ok(
            "mutation($input: SetPayoutMethodInput!) { setPayoutMethod(input: $input) { payoutMethod { kind } } }",
            json!({"input": {"partnerId": id, "kind": "STRIPE_CONNECT", "stripeAccountId": account}}),
        )
        .await;
        approved_entry(&app, &program, &id, 10_000 + i as i64 * 101, "USD").await;
        partners.push(id);
    }
    let run = app
        .admin_ok(
            "mutation($p: ID!) { createPayoutRun(input: {programId: $p, currency: \"USD\"}) { payoutRun { id payoutCount } } }",
            json!({"p": program}),
        )
        .await["createPayoutRun"]["payoutRun"]
        .clone();
    assert_eq!(run["payoutCount"], N);
    // Without the key configured, the first instance refuses to send.
    let run_id = run["id"].as_str().unwrap().to_string();
    let unconfigured = app
        .gql(
            &app.admin,
            "mutation($id: ID!) { sendPayoutRun(input: {id: $id}) { payoutRun { status } } }",
            json!({"id": run_id}),
        )
        .await;
    assert_eq!(error_code(&unconfigured), "CONFLICT", "{unconfigured}");

    // The sender is killed after a few transfers (a process dying mid-run: whatever it had not
    // committed is lost, including transfers Stripe made whose answer it never recorded).
    *stand_in.delay_ms.lock().unwrap() = 40;
    let key = Arc::new(SecretKey::from_base64(TEST_SECRET_KEY).unwrap());
    let client = Arc::new(StripeTransfers::new(&server.uri(), STRIPE_KEY).unwrap());
    let sender = {
        let (db, key, client, run_id) =
            (app.db.clone(), key.clone(), client.clone(), run_id.clone());
        tokio::spawn(async move {
            tandem::domain::stripe_transfers::send_payout_run(&db, &key, Some(&client), &run_id)
                .await
        })
    };
    loop {
        if stand_in.ledger.lock().unwrap().requests >= 6 {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    sender.abort();
    let _ = sender.await;
    let created_before = stand_in.ledger.lock().unwrap().created.len();
    assert!(
        (3..N).contains(&created_before),
        "killed mid-run: {created_before}"
    );
    *stand_in.delay_ms.lock().unwrap() = 0;

    // Sent again through the API (twice): every payout is paid by exactly one transfer.
    for _ in 0..2 {
        let sent = app
            .gql(
                &app.admin,
                "mutation($id: ID!) { sendPayoutRun(input: {id: $id}) { payoutRun { status } } }",
                json!({"id": run_id}),
            )
            .await;
        // The second send finds only the refused payout left.
        assert!(
            sent["errors"].is_null() || error_code(&sent) == "CONFLICT",
            "{sent}"
        );
        let sent = gql_ok_at(
            &app.client,
            &base,
            &app.admin,
            "mutation($id: ID!) { sendPayoutRun(input: {id: $id}) { payoutRun { status } } }",
            json!({"id": run_id}),
        )
        .await;
        assert_eq!(
            sent["sendPayoutRun"]["payoutRun"]["status"],
            "PARTIALLY_PAID"
        );
    }
    {
        let ledger = stand_in.ledger.lock().unwrap();
        assert_eq!(
            ledger.created.len(),
            N - 1,
            "one transfer per payable payout"
        );
        let mut keys: Vec<&String> = ledger.created.iter().map(|c| &c.0).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), N - 1, "no key created twice");
        assert!(ledger.rate_limited, "the 429 was retried");
        assert!(ledger.flaked, "the 500 was retried");
        // Amounts in minor units, currencies lower-case.
        for (_, destination, amount, currency) in &ledger.created {
            assert_eq!(currency, "usd");
            assert!(destination.starts_with("acct_"));
            assert!(amount.parse::<i64>().unwrap() >= 10_000);
        }
    }
    let state = app.admin_ok(RUN, json!({"id": run_id})).await["payoutRun"].clone();
    assert_eq!(state["status"], "PARTIALLY_PAID");
    for p in state["payouts"].as_array().unwrap() {
        assert_eq!(p["method"], "STRIPE_CONNECT");
        if p["partner"]["id"] == partners[1].as_str() {
            assert_eq!(p["status"], "FAILED");
            assert!(
                p["failure"].as_str().unwrap().contains("account_invalid"),
                "{p}"
            );
        } else {
            assert_eq!(p["status"], "PAID", "{p}");
            assert!(p["reference"].as_str().unwrap().starts_with("tr_"));
        }
    }
    let sent_events = count(
        &app.db,
        "SELECT COUNT(*) AS n FROM events WHERE type = 'payout.sent'",
    )
    .await;
    assert_eq!(sent_events, (N - 1) as i64, "one payout.sent per payout");
    let failed_events = count(
        &app.db,
        "SELECT COUNT(*) AS n FROM events WHERE type = 'payout.failed'",
    )
    .await;
    assert!(failed_events >= 1);

    // The same key with other parameters is Stripe's idempotency error, surfaced as such.
    let first_key = state["payouts"][0]["id"].as_str().unwrap().to_string();
    let changed = client
        .transfer(
            &first_key,
            &[
                ("amount", "1".to_string()),
                ("currency", "usd".to_string()),
                ("destination", "acct_other".to_string()),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(changed.code, "idempotency_key_in_use", "{changed:?}");
    // Stripe reverses one transfer: the payout reopens and the next send pays it anew.
    let reopened = state["payouts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["status"] == "PAID")
        .unwrap()
        .clone();
    let stripe = crate::billing::Stripe::new(&app, &program).await;
    stripe
        .send(
            &app,
            &json!({"id": "evt_reversal", "object": "event", "type": "transfer.reversed",
                "created": Utc::now().timestamp(),
                "data": {"object": {"id": reopened["reference"], "object": "transfer", "reversed": true}}}),
        )
        .await;
    let after = app.admin_ok(RUN, json!({"id": run_id})).await["payoutRun"]["payouts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == reopened["id"])
        .unwrap()
        .clone();
    assert_eq!(after["status"], "FAILED");
    assert!(
        after["failure"]
            .as_str()
            .unwrap()
            .contains("transfer_reversed")
    );
    gql_ok_at(
        &app.client,
        &base,
        &app.admin,
        "mutation($id: ID!) { sendPayoutRun(input: {id: $id}) { payoutRun { status } } }",
        json!({"id": run_id}),
    )
    .await;
    assert_eq!(
        stand_in.ledger.lock().unwrap().created.len(),
        N,
        "a new transfer after the reversal"
    );
    let paid_again = app.admin_ok(RUN, json!({"id": run_id})).await["payoutRun"]["payouts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == reopened["id"])
        .unwrap()
        .clone();
    assert_eq!(paid_again["status"], "PAID");
    assert_ne!(paid_again["reference"], reopened["reference"]);
}

db_tests!(stripe_transfers_are_created_once);
