//! Recurring revenue share (DESIGN §11) end to end: Stripe events signed as Stripe signs them
//! (checked against `openssl`), referred customers, invoices linked to them, the recurring
//! ledger computed by hand, and the refusals.

use chrono::{DateTime, Duration, Months, SubsecRound, Utc};
use serde_json::{Value, json};
use tandem_connectors::verify::sign_stripe;

use crate::{
    commissions::{Crm, TestPartner, partner, program_with, reconcile},
    db_tests,
    helpers::{TestApp, count, error_code, error_field, nodes},
    webhooks::{Source, create_source, drain},
};

/// The endpoint secret Stripe would show for the test endpoint.
pub const STRIPE_SECRET: &str = "whsec_tandemStripeTestSecret0123456789";

/// A real-shaped Stripe event from `tests/fixtures/stripe/`.
pub fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/stripe/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// `invoice.paid` for `invoice` of `customer`: `paid` and `excluding_tax` in minor units.
#[allow(clippy::too_many_arguments)]
pub fn invoice_paid(
    evt: &str,
    invoice: &str,
    customer: &str,
    email: &str,
    currency: &str,
    paid: i64,
    excluding_tax: i64,
    paid_at: DateTime<Utc>,
) -> Value {
    let mut event = fixture("invoice.paid");
    event["id"] = json!(evt);
    event["created"] = json!(paid_at.timestamp());
    let o = &mut event["data"]["object"];
    o["id"] = json!(invoice);
    o["customer"] = json!(customer);
    o["customer_email"] = json!(email);
    o["currency"] = json!(currency);
    o["amount_due"] = json!(paid);
    o["amount_paid"] = json!(paid);
    o["total"] = json!(paid);
    o["tax"] = json!(paid - excluding_tax);
    o["subtotal"] = json!(excluding_tax);
    o["total_excluding_tax"] = json!(excluding_tax);
    o["status_transitions"]["paid_at"] = json!(paid_at.timestamp());
    event
}

/// `charge.refunded` of the charge of `invoice`, `refunded` (cumulative) in minor units.
pub fn charge_refunded(
    evt: &str,
    charge: &str,
    invoice: &str,
    currency: &str,
    refunded: i64,
    at: DateTime<Utc>,
) -> Value {
    let mut event = fixture("charge.refunded");
    event["id"] = json!(evt);
    event["created"] = json!(at.timestamp());
    let o = &mut event["data"]["object"];
    o["id"] = json!(charge);
    o["invoice"] = json!(invoice);
    o["currency"] = json!(currency);
    o["amount_refunded"] = json!(refunded);
    event
}

/// `customer.created` / `customer.updated` with this metadata.
pub fn customer_event(kind: &str, evt: &str, id: &str, email: &str, metadata: Value) -> Value {
    let mut event = fixture("customer.created");
    event["id"] = json!(evt);
    event["type"] = json!(kind);
    event["created"] = json!(Utc::now().timestamp());
    let o = &mut event["data"]["object"];
    o["id"] = json!(id);
    o["email"] = json!(email);
    o["metadata"] = metadata;
    event
}

/// A STRIPE webhook source of a program.
pub struct Stripe {
    pub source: Source,
}

impl Stripe {
    pub async fn new(app: &TestApp, program: &str) -> Stripe {
        let source = create_source(
            app,
            json!({"name": "Stripe billing", "kind": "STRIPE", "programId": program,
                   "secret": STRIPE_SECRET}),
        )
        .await;
        assert!(
            source.secret.is_none(),
            "Stripe's own secret is never echoed"
        );
        Stripe { source }
    }

    /// Posts an event signed now, as Stripe does.
    pub async fn post(&self, app: &TestApp, event: &Value) -> reqwest::Response {
        let body = event.to_string();
        let header = sign_stripe(STRIPE_SECRET, Utc::now().timestamp(), body.as_bytes());
        self.post_raw(app, &body, &header).await
    }

    pub async fn post_raw(&self, app: &TestApp, body: &str, header: &str) -> reqwest::Response {
        app.client
            .post(&self.source.url)
            .header("stripe-signature", header)
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// Posts an event, expects a 2xx, and waits until the inbox has applied it.
    pub async fn send(&self, app: &TestApp, event: &Value) {
        let resp = self.post(app, event).await;
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        drain(app).await;
    }
}

async fn set_rate(app: &TestApp, base: &str, quote: &str, rate: &str, at: DateTime<Utc>) {
    app.admin_ok(
        "mutation($input: SetExchangeRateInput!) { setExchangeRate(input: $input) { exchangeRate { id } } }",
        json!({"input": {"base": base, "quote": quote, "rate": rate, "effectiveAt": at.to_rfc3339()}}),
    )
    .await;
}

/// A partner's invoice entries as `externalId → [(kind, amount, status)]`, oldest first.
async fn invoice_ledger(
    app: &TestApp,
    partner: &str,
) -> std::collections::BTreeMap<String, Vec<(String, String, String)>> {
    let data = app
        .admin_ok(
            "query($f: LedgerEntryFilter) { ledgerEntries(filter: $f, first: 100) { edges { node {
                kind amount status deal { id } invoice { externalId } } } } }",
            json!({"f": {"partnerId": partner}}),
        )
        .await;
    let mut out: std::collections::BTreeMap<String, Vec<(String, String, String)>> =
        Default::default();
    for n in nodes(&data["ledgerEntries"]).into_iter().rev() {
        let Some(invoice) = n["invoice"]["externalId"].as_str() else {
            continue;
        };
        out.entry(invoice.to_string()).or_default().push((
            n["kind"].as_str().unwrap().to_string(),
            n["amount"].as_str().unwrap().to_string(),
            n["status"].as_str().unwrap().to_string(),
        ));
    }
    out
}

async fn invoice_commission(app: &TestApp, external_id: &str) -> Value {
    let data = app
        .admin_ok(
            "{ invoices(first: 100) { edges { node { externalId commission { state expected amountProgram } } } } }",
            json!({}),
        )
        .await;
    nodes(&data["invoices"])
        .into_iter()
        .find(|i| i["externalId"] == external_id)
        .expect("invoice")["commission"]
        .clone()
}

fn entry(kind: &str, amount: &str, status: &str) -> (String, String, String) {
    (kind.into(), amount.into(), status.into())
}

/// The worked example of the issue, computed by hand. A USD program paying 15 % of invoices for
/// 12 months; a partner's deal with Acme Corp is won (first won at FW); 14 monthly invoices of
/// 1,000.00 EUR + 190.00 tax, paid at FW + k months + 1 day (k = 0‥13); EUR→USD is 1.10 until
/// FW + 5 months, then 1.20; invoice 3 is refunded 50 % ten days after it was paid.
///
/// | invoice | rate | net EUR | USD     | 15 %    |
/// |---------|------|---------|---------|---------|
/// | 1, 2, 4, 5 | 1.10 | 1000 | 1100.00 | 165.00 |
/// | 3       | 1.10 | 500     | 550.00  | 82.50 (165.00 accrued, −82.50 reversed) |
/// | 6 ‥ 12  | 1.20 | 1000    | 1200.00 | 180.00  |
/// | 13, 14  | 1.20 | 1000    | 1200.00 | 0 (paid after FW + 12 months) |
///
/// Total 4 × 165.00 + 82.50 + 7 × 180.00 = 2,002.50 USD; the deal itself earns nothing (the
/// plan pays on invoices).
async fn worked_example_of_recurring_invoices(app: TestApp) {
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "10",
               "recurring": {"months": 12, "rate": "15", "basis": "INVOICES"}}),
        json!({"kind": "REVENUE_SHARE", "clawbackDays": 90}),
    )
    .await;
    let alice = partner(&app, &program, "Alice").await;
    let stripe = Stripe::new(&app, &program).await;
    let first_won = (Utc::now() - Duration::days(430)).trunc_subsecs(0);
    let paid_at = |k: u32| first_won + Months::new(k) + Duration::days(1);
    set_rate(&app, "EUR", "USD", "1.10", first_won - Duration::days(30)).await;
    set_rate(&app, "EUR", "USD", "1.20", first_won + Months::new(5)).await;

    // The billing customer, then two invoices before the deal is won: kept unlinked.
    stripe
        .send(
            &app,
            &customer_event(
                "customer.created",
                "evt_cus_1",
                "cus_acme",
                "billing@acme-corp.example",
                json!({"company_domain": "https://www.Acme-Corp.example/"}),
            ),
        )
        .await;
    let invoice = |k: u32| {
        invoice_paid(
            &format!("evt_in_{k}"),
            &format!("in_{k:02}"),
            "cus_acme",
            "billing@acme-corp.example",
            "eur",
            119_000,
            100_000,
            paid_at(k - 1),
        )
    };
    for k in 1..=2 {
        stripe.send(&app, &invoice(k)).await;
    }
    let unlinked = app
        .admin_ok(
            "{ invoices(filter: {linked: false}, first: 10) { totalCount edges { node { externalId customer { id } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(unlinked["invoices"]["totalCount"], 2, "{unlinked}");

    // The deal is won: Acme becomes Alice's customer and the waiting invoices are linked.
    let mut crm = Crm::new(&app, &program).await;
    crm.deal(
        &app,
        json!({"id": "ACME-1", "amount": "12000", "status": "won",
               "closedAt": first_won.to_rfc3339(), "referralCode": alice.code,
               "companyDomain": "acme-corp.example"}),
    )
    .await;
    for k in 3..=14 {
        stripe.send(&app, &invoice(k)).await;
    }
    let customers = app
        .admin_ok(
            "query($f: CustomerFilter) { customers(filter: $f, first: 10) { totalCount edges { node {
                domain name firstWonAt recurringUntil partner { id } invoices(first: 20) { totalCount } } } } }",
            json!({"f": {"programId": program}}),
        )
        .await;
    let customer = &nodes(&customers["customers"])[0];
    assert_eq!(customers["customers"]["totalCount"], 1);
    assert_eq!(customer["domain"], "acme-corp.example");
    assert_eq!(customer["partner"]["id"], json!(alice.id));
    assert_eq!(customer["invoices"]["totalCount"], 14);
    let until: DateTime<Utc> = customer["recurringUntil"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(until, first_won + Months::new(12));

    let stats = reconcile(&app).await;
    assert_eq!(stats["invoicesChecked"], 14, "{stats}");
    // The refund of invoice 3 arrives ten days after its payment (within the clawback period).
    stripe
        .send(
            &app,
            &charge_refunded(
                "evt_refund_3",
                "ch_03",
                "in_03",
                "eur",
                59_500,
                paid_at(2) + Duration::days(10),
            ),
        )
        .await;
    reconcile(&app).await;

    let ledger = invoice_ledger(&app, &alice.id).await;
    let accrual = |amount: &str| vec![entry("ACCRUAL", amount, "PENDING")];
    for k in [1, 2, 4, 5] {
        assert_eq!(
            ledger[&format!("in_{k:02}")],
            accrual("165.00"),
            "invoice {k}"
        );
    }
    assert_eq!(
        ledger["in_03"],
        vec![
            entry("ACCRUAL", "165.00", "PENDING"),
            entry("REVERSAL", "-82.50", "APPROVED")
        ]
    );
    for k in 6..=12 {
        assert_eq!(
            ledger[&format!("in_{k:02}")],
            accrual("180.00"),
            "invoice {k}"
        );
    }
    assert!(!ledger.contains_key("in_13") && !ledger.contains_key("in_14"));
    let total: rust_decimal::Decimal = ledger
        .values()
        .flatten()
        .map(|(_, a, _)| a.parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    assert_eq!(total.to_string(), "2002.50");
    for k in [13, 14] {
        let c = invoice_commission(&app, &format!("in_{k}")).await;
        assert_eq!(c["state"], "NOT_EARNED", "{c}");
        assert_eq!(c["expected"], "0.00");
        assert_eq!(c["amountProgram"], "1200.00");
    }
    assert_eq!(
        invoice_commission(&app, "in_03").await["amountProgram"],
        "550.00"
    );
    // The ledger filtered by one invoice (found through the invoice's partner) holds that
    // invoice's entries and no other's; an unknown invoice has none.
    let invoices = app
        .admin_ok(
            "{ invoices(first: 100) { edges { node { id externalId } } } }",
            json!({}),
        )
        .await;
    let in_03 = nodes(&invoices["invoices"])
        .into_iter()
        .find(|n| n["externalId"] == "in_03")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let by_invoice = "query($id: ID!) { ledgerEntries(filter: {invoiceId: $id}, first: 100) { edges { node { kind amount status invoice { externalId } } } } }";
    let data = app.admin_ok(by_invoice, json!({"id": in_03})).await;
    let found: Vec<(String, String, String)> = nodes(&data["ledgerEntries"])
        .into_iter()
        .rev()
        .map(|n| {
            assert_eq!(n["invoice"]["externalId"], "in_03", "{n}");
            entry(
                n["kind"].as_str().unwrap(),
                n["amount"].as_str().unwrap(),
                n["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(found, ledger["in_03"]);
    let none = app
        .admin_ok(
            by_invoice,
            json!({"id": "01900000-0000-7000-8000-000000000000"}),
        )
        .await;
    assert!(nodes(&none["ledgerEntries"]).is_empty(), "{none}");
    // The deal itself earns nothing: the plan pays on invoices.
    let deal = app
        .admin_ok(
            "{ deals(first: 5) { edges { node { externalId attributionMethod commission { state expected } } } } }",
            json!({}),
        )
        .await;
    let deal = &nodes(&deal["deals"])[0];
    assert_eq!(deal["attributionMethod"], "CODE");
    assert_eq!(deal["commission"]["state"], "NOT_EARNED");
    assert_eq!(deal["commission"]["expected"], "0.00");
    // Nothing new on a re-run, full or incremental.
    let again = reconcile(&app).await;
    assert_eq!(again["entriesWritten"], 0, "{again}");
    let full = crate::commissions::run_job(&app, "reconcile", true).await;
    assert_eq!(full["entriesWritten"], 0, "{full}");

    // What the partner sees, and the KPIs.
    let key = app.partner_key(&alice.id).await;
    let mine = app
        .ok(
            &key,
            "query($id: ID!, $program: ID!) {
               partner(id: $id) { customers(first: 5) { edges { node { domain revenueToDate } } } }
               kpis(programId: $program) { recurringRevenue commissionRecurring activeCustomers } }",
            json!({"id": alice.id, "program": program}),
        )
        .await;
    let customer = &nodes(&mine["partner"]["customers"])[0];
    // 4 × 1100 + 550 + 9 × 1200 (invoices 13 and 14 are revenue too, without commission).
    assert_eq!(customer["revenueToDate"], "15750.00");
    assert_eq!(mine["kpis"]["recurringRevenue"], "15750.00");
    assert_eq!(mine["kpis"]["commissionRecurring"], "2002.50");
    // FW + 12 months is two months ago: the customer no longer earns.
    assert_eq!(mine["kpis"]["activeCustomers"], 0);
}

/// One invoice delivered twice at once (the same Stripe event id), again under another event
/// id, and out of order with its refunds: one accrual, then one reversal, never more.
async fn the_same_invoice_twice_and_out_of_order_books_once(app: TestApp) {
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "20",
               "recurring": {"months": 24, "rate": "10", "basis": "INVOICES"}}),
        json!({"holdDays": 0}),
    )
    .await;
    let alice = partner(&app, &program, "Alice").await;
    let stripe = Stripe::new(&app, &program).await;
    // The customer names Alice's code: its first invoice makes it her customer.
    stripe
        .send(
            &app,
            &customer_event(
                "customer.created",
                "evt_cus",
                "cus_beta",
                "ap@beta.example",
                json!({"tandem_referral_code": alice.code.to_lowercase()}),
            ),
        )
        .await;
    let paid = (Utc::now() - Duration::days(5)).trunc_subsecs(0);
    // The refund (cumulative 25.00 of 100.00) arrives before its invoice.
    stripe
        .send(
            &app,
            &charge_refunded(
                "evt_r1",
                "ch_1",
                "in_1",
                "usd",
                2_500,
                paid + Duration::hours(1),
            ),
        )
        .await;
    let event = invoice_paid(
        "evt_inv",
        "in_1",
        "cus_beta",
        "ap@beta.example",
        "usd",
        10_000,
        10_000,
        paid,
    );
    let (a, b) = tokio::join!(stripe.post(&app, &event), stripe.post(&app, &event));
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let mut again = event.clone();
    again["id"] = json!("evt_inv_redelivered");
    stripe.send(&app, &again).await;
    drain(&app).await;
    let receipts = app
        .admin_ok(
            "{ webhookReceipts(first: 20) { edges { node { status } } } }",
            json!({}),
        )
        .await;
    let statuses: Vec<String> = nodes(&receipts["webhookReceipts"])
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "DUPLICATE").count(),
        1,
        "{statuses:?}"
    );
    // Two reconcilers at once book the invoice once: 10 % of 75.00.
    let (x, y) = tokio::join!(reconcile(&app), reconcile(&app));
    let written = x["entriesWritten"].as_i64().unwrap() + y["entriesWritten"].as_i64().unwrap();
    assert_eq!(written, 1, "{x} {y}");
    assert_eq!(
        invoice_ledger(&app, &alice.id).await["in_1"],
        vec![entry("ACCRUAL", "7.50", "APPROVED")]
    );
    // A later refund (cumulative 50.00), then the older one again out of order: one reversal.
    stripe
        .send(
            &app,
            &charge_refunded(
                "evt_r2",
                "ch_1",
                "in_1",
                "usd",
                5_000,
                paid + Duration::hours(2),
            ),
        )
        .await;
    let mut older = charge_refunded(
        "evt_r1b",
        "ch_1",
        "in_1",
        "usd",
        2_500,
        paid + Duration::hours(1),
    );
    older["id"] = json!("evt_r1_late");
    stripe.send(&app, &older).await;
    let (x, y) = tokio::join!(reconcile(&app), reconcile(&app));
    let written = x["entriesWritten"].as_i64().unwrap() + y["entriesWritten"].as_i64().unwrap();
    assert_eq!(written, 1, "{x} {y}");
    assert_eq!(
        invoice_ledger(&app, &alice.id).await["in_1"],
        vec![
            entry("ACCRUAL", "7.50", "APPROVED"),
            entry("REVERSAL", "-2.50", "APPROVED")
        ]
    );
    assert_eq!(reconcile(&app).await["entriesWritten"], 0);
    // The customer was created from the referral code, and said so.
    let events = app
        .admin_ok(
            "{ events(first: 100, types: [\"customer.referred\", \"invoice.attributed\", \"commission.reversed\"]) { edges { node { type data } } } }",
            json!({}),
        )
        .await;
    let events = nodes(&events["events"]);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "customer.referred",
            "invoice.attributed",
            "commission.reversed"
        ]
    );
    assert_eq!(events[0]["data"]["via"], "BILLING_REFERRAL_CODE");
    assert_eq!(events[1]["data"]["linkedBy"], "REFERRAL_CODE");
    assert!(events[2]["data"]["invoiceId"].as_str().is_some());
}

/// Stripe's scheme checked against an independent implementation (`openssl dgst -hmac`), and
/// every refusal: bad or stale signatures store nothing; unknown types are acknowledged and
/// kept as IGNORED; malformed objects answer 400 with the reason stored.
async fn stripe_signatures_and_bad_input(app: TestApp) {
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "10"}), json!({})).await;
    let stripe = Stripe::new(&app, &program).await;
    let body = fixture("invoice.paid").to_string();
    let now = Utc::now().timestamp();

    // openssl computes the same v1 signature as Tandem's signer, and the hub accepts it.
    let payload = format!("{now}.{body}");
    match std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", STRIPE_SECRET, "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(payload.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let hex = String::from_utf8(out.stdout).unwrap();
            let hex = hex.split_whitespace().next().unwrap().to_string();
            assert_eq!(
                sign_stripe(STRIPE_SECRET, now, body.as_bytes()),
                format!("t={now},v1={hex}")
            );
            // Several v1 signatures (a rolled secret) and a v0: any v1 may match.
            let header = format!("t={now},v1={},v1={hex},v0=deadbeef", "0".repeat(64));
            let resp = stripe.post_raw(&app, &body, &header).await;
            assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        }
        Err(err) => eprintln!("openssl not available ({err}): the cross-check is skipped"),
    }
    drain(&app).await;
    let stored = count(&app.db, "SELECT COUNT(*) AS n FROM webhook_receipts").await;

    // Refusals that store nothing: a wrong secret, a changed body, a stale or missing
    // timestamp, no header at all.
    let refused = [
        sign_stripe("whsec_someoneElsesSecret0000000", now, body.as_bytes()),
        sign_stripe(STRIPE_SECRET, now, b"{}"),
        sign_stripe(STRIPE_SECRET, now - 301, body.as_bytes()),
        sign_stripe(STRIPE_SECRET, now, body.as_bytes()).replace(&format!("t={now},"), ""),
        "garbage".to_string(),
    ];
    for header in refused {
        let resp = stripe.post_raw(&app, &body, &header).await;
        assert_eq!(resp.status(), 401, "{header}");
        let json: Value = resp.json().await.unwrap();
        assert!(
            json["error"]
                .as_str()
                .unwrap()
                .contains("verification failed"),
            "{json}"
        );
    }
    let resp = app
        .client
        .post(&stripe.source.url)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        count(&app.db, "SELECT COUNT(*) AS n FROM webhook_receipts").await,
        stored
    );

    // An event type Tandem does not act on: acknowledged, kept as IGNORED.
    let mut other = fixture("invoice.paid");
    other["id"] = json!("evt_created");
    other["type"] = json!("invoice.created");
    let resp = stripe.post(&app, &other).await;
    assert_eq!(resp.status(), 200);
    let json: Value = resp.json().await.unwrap();
    assert_eq!(json["receipts"][0]["status"], "IGNORED", "{json}");

    // Malformed objects: 400, stored as FAILED with the reason.
    let mut bad = fixture("invoice.paid");
    bad["id"] = json!("evt_bad_amount");
    bad["data"]["object"]["amount_paid"] = json!("1190.00");
    let resp = stripe.post(&app, &bad).await;
    assert_eq!(resp.status(), 400);
    let json: Value = resp.json().await.unwrap();
    assert!(
        json["error"].as_str().unwrap().contains("amount_paid"),
        "{json}"
    );
    let mut bad = fixture("invoice.paid");
    bad["id"] = json!("evt_bad_currency");
    bad["data"]["object"]["currency"] = json!("xyz");
    let resp = stripe.post(&app, &bad).await;
    assert_eq!(resp.status(), 400);
    let failed = app
        .admin_ok(
            "{ webhookReceipts(first: 20) { edges { node { status reason providerEventId } } } }",
            json!({}),
        )
        .await;
    let failed: Vec<Value> = nodes(&failed["webhookReceipts"])
        .into_iter()
        .filter(|r| r["status"] == "FAILED")
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        failed
            .iter()
            .any(|r| r["reason"].as_str().unwrap().contains("currency"))
    );

    // A source needs Stripe's whsec_ secret.
    for secret in [None, Some("not-a-stripe-secret")] {
        let resp = app
            .gql(
                &app.admin,
                "mutation($input: CreateWebhookSourceInput!) { createWebhookSource(input: $input) { url } }",
                json!({"input": {"name": "s", "kind": "STRIPE", "programId": program, "secret": secret}}),
            )
            .await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
        assert_eq!(error_field(&resp), "input.secret");
    }
}

/// An invoice in a currency without an exchange rate waits (MISSING_FX_RATE) like a deal, and
/// accrues once a rate effective at its payment exists; a partner key sees only its own
/// customers and invoices.
async fn invoices_wait_for_rates_and_stay_private(app: TestApp) {
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "20",
               "recurring": {"rate": "10", "basis": "INVOICES"}}),
        json!({"holdDays": 0}),
    )
    .await;
    let alice = partner(&app, &program, "Alice").await;
    let bob: TestPartner = partner(&app, &program, "Bob").await;
    let stripe = Stripe::new(&app, &program).await;
    let paid = (Utc::now() - Duration::days(3)).trunc_subsecs(0);
    for (cus, code) in [("cus_a", &alice.code), ("cus_b", &bob.code)] {
        stripe
            .send(
                &app,
                &customer_event(
                    "customer.created",
                    &format!("evt_{cus}"),
                    cus,
                    &format!("ap@{cus}.example").replace('_', "-"),
                    json!({"tandem_referral_code": code}),
                ),
            )
            .await;
    }
    stripe
        .send(
            &app,
            &invoice_paid(
                "evt_jpy",
                "in_jpy",
                "cus_a",
                "ap@cus-a.example",
                "jpy",
                150_000,
                150_000,
                paid,
            ),
        )
        .await;
    stripe
        .send(
            &app,
            &invoice_paid(
                "evt_b",
                "in_b",
                "cus_b",
                "ap@cus-b.example",
                "usd",
                5_000,
                5_000,
                paid,
            ),
        )
        .await;
    reconcile(&app).await;
    let waiting = invoice_commission(&app, "in_jpy").await;
    assert_eq!(waiting["state"], "MISSING_FX_RATE", "{waiting}");
    assert!(!invoice_ledger(&app, &alice.id).await.contains_key("in_jpy"));
    // JPY has no minor unit: 150000 is ¥150,000; at 0.0065 that is 975.00 USD, 10 % = 97.50.
    set_rate(&app, "JPY", "USD", "0.0065", paid - Duration::days(1)).await;
    reconcile(&app).await;
    assert_eq!(
        invoice_ledger(&app, &alice.id).await["in_jpy"],
        vec![entry("ACCRUAL", "97.50", "APPROVED")]
    );
    // Lifetime plan: the customer stays active.
    let kpis = app
        .admin_ok(
            "query($p: ID!) { kpis(programId: $p) { activeCustomers } }",
            json!({"p": program}),
        )
        .await;
    assert_eq!(kpis["kpis"]["activeCustomers"], 2);

    // Alice's key: her customer and invoice only, whatever the filter says.
    let key = app.partner_key(&alice.id).await;
    for filter in [json!({}), json!({"partnerId": bob.id})] {
        let seen = app
            .ok(
                &key,
                "query($f: CustomerFilter, $i: InvoiceFilter) { customers(filter: $f, first: 10) { edges { node { id partner { id } } } }
                   invoices(filter: $i, first: 10) { edges { node { externalId } } } }",
                json!({"f": filter, "i": filter}),
            )
            .await;
        for c in nodes(&seen["customers"]) {
            assert_eq!(c["partner"]["id"], json!(alice.id));
        }
        let invoices: Vec<Value> = nodes(&seen["invoices"]);
        assert!(
            invoices.iter().all(|i| i["externalId"] == "in_jpy"),
            "{invoices:?}"
        );
    }
    let entries = app
        .ok(
            &key,
            "{ ledgerEntries(first: 10) { edges { node { invoice { externalId } } } } }",
            json!({}),
        )
        .await;
    assert!(
        nodes(&entries["ledgerEntries"])
            .iter()
            .all(|e| e["invoice"]["externalId"] == "in_jpy")
    );
}

/// `recurring.basis: DEALS`: a later deal of the customer is attributed with `CUSTOMER` and
/// earns the recurring rate, even long after the referral's attribution window; a deal closed
/// after the recurring period is not.
async fn later_deals_of_a_customer_earn_the_recurring_rate(app: TestApp) {
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "20",
               "recurring": {"months": 12, "rate": "5", "basis": "DEALS"}}),
        json!({"holdDays": 0}),
    )
    .await;
    let alice = partner(&app, &program, "Alice").await;
    let mut crm = Crm::new(&app, &program).await;
    let first = (Utc::now() - Duration::days(200)).trunc_subsecs(0);
    crm.deal(
        &app,
        json!({"id": "NEW", "amount": "10000", "status": "won", "closedAt": first.to_rfc3339(),
               "referralCode": alice.code, "companyDomain": "gamma.example", "companyId": "C-42"}),
    )
    .await;
    // A deal of the same CRM company without a domain or contacts: the company id recognises
    // the customer.
    crm.deal(
        &app,
        json!({"id": "BYID", "amount": "1000", "status": "won",
               "createdAt": (first + Duration::days(100)).to_rfc3339(),
               "closedAt": (first + Duration::days(120)).to_rfc3339(), "companyId": "C-42"}),
    )
    .await;
    // A renewal 190 days later (inside 12 months), and one 400 days after the first win
    // (created then too, so only the customer rule could attribute it).
    crm.deal(
        &app,
        json!({"id": "RENEWAL", "amount": "4000", "status": "won",
               "createdAt": (first + Duration::days(180)).to_rfc3339(),
               "closedAt": (first + Duration::days(190)).to_rfc3339(),
               "contactEmails": ["cfo@gamma.example"]}),
    )
    .await;
    // Opened inside the period (attributed to the customer's partner), won after it: no longer
    // attributed.
    crm.deal(
        &app,
        json!({"id": "AFTER", "amount": "3000", "status": "open",
               "createdAt": (first + Duration::days(300)).to_rfc3339(),
               "companyDomain": "gamma.example"}),
    )
    .await;
    let method = |deals: &Value, id: &str| {
        nodes(&deals["deals"])
            .into_iter()
            .find(|d| d["externalId"] == id)
            .unwrap()["attributionMethod"]
            .clone()
    };
    let q = "{ deals(first: 10) { edges { node { externalId attributionMethod } } } }";
    assert_eq!(
        method(&app.admin_ok(q, json!({})).await, "AFTER"),
        "CUSTOMER"
    );
    crm.deal(
        &app,
        json!({"id": "AFTER", "amount": "3000", "status": "won",
               "createdAt": (first + Duration::days(300)).to_rfc3339(),
               "closedAt": (first + Duration::days(370)).to_rfc3339(),
               "companyDomain": "gamma.example"}),
    )
    .await;
    assert_eq!(
        method(&app.admin_ok(q, json!({})).await, "AFTER"),
        Value::Null
    );
    crm.deal(
        &app,
        json!({"id": "LATE", "amount": "4000", "status": "open",
               "createdAt": (Utc::now() + Duration::days(200)).to_rfc3339(),
               "companyDomain": "gamma.example"}),
    )
    .await;
    reconcile(&app).await;
    let deals = app
        .admin_ok(
            "{ deals(first: 10) { edges { node { externalId attributionMethod partner { id } commission { expected } } } } }",
            json!({}),
        )
        .await;
    let deals = nodes(&deals["deals"]);
    let find = |id: &str| {
        deals
            .iter()
            .find(|d| d["externalId"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(find("NEW")["attributionMethod"], "CODE");
    assert_eq!(find("NEW")["commission"]["expected"], "2000.00");
    assert_eq!(find("RENEWAL")["attributionMethod"], "CUSTOMER");
    assert_eq!(find("RENEWAL")["partner"]["id"], json!(alice.id));
    assert_eq!(find("RENEWAL")["commission"]["expected"], "200.00");
    assert_eq!(find("LATE")["attributionMethod"], Value::Null);
    assert_eq!(find("BYID")["attributionMethod"], "CUSTOMER");
    assert_eq!(find("BYID")["commission"]["expected"], "50.00");
    // One customer only: the renewal did not make another.
    let customers = app
        .admin_ok(
            "{ customers(first: 5) { totalCount edges { node { domain crmCompanyId } } } }",
            json!({}),
        )
        .await;
    assert_eq!(customers["customers"]["totalCount"], 1);
    assert_eq!(nodes(&customers["customers"])[0]["crmCompanyId"], "C-42");
}

/// Bad recurring plans are refused naming the field.
async fn recurring_plans_are_validated(app: TestApp) {
    let create = "mutation($input: CreateProgramInput!) { createProgram(input: $input) { program { id commission { recurring { months rate basis } } } } }";
    for (recurring, field) in [
        (
            json!({"months": 0, "rate": "10", "basis": "INVOICES"}),
            "input.commission.recurring.months",
        ),
        (
            json!({"months": 12, "rate": "101", "basis": "INVOICES"}),
            "input.commission.recurring.rate",
        ),
    ] {
        let resp = app
            .gql(
                &app.admin,
                create,
                json!({"input": {"name": "P", "kind": "REVENUE_SHARE", "currency": "USD",
                    "commission": {"type": "PERCENT", "rate": "10", "recurring": recurring}}}),
            )
            .await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
        assert_eq!(error_field(&resp), field);
    }
    let resp = app
        .gql(
            &app.admin,
            create,
            json!({"input": {"name": "P", "kind": "REVENUE_SHARE", "currency": "USD",
                "commission": {"type": "FLAT", "flatAmount": "100",
                               "recurring": {"months": 12, "basis": "INVOICES"}}}}),
        )
        .await;
    assert_eq!(
        error_field(&resp),
        "input.commission.recurring.rate",
        "{resp}"
    );
    // Lifetime, the plan's own rate; then updated to 24 months at 12 %.
    let data = app
        .admin_ok(
            create,
            json!({"input": {"name": "P", "kind": "REVENUE_SHARE", "currency": "USD",
                "commission": {"type": "PERCENT", "rate": "10", "recurring": {"basis": "INVOICES"}}}}),
        )
        .await;
    let program = &data["createProgram"]["program"];
    assert_eq!(
        program["commission"]["recurring"],
        json!({"months": null, "rate": null, "basis": "INVOICES"})
    );
    let data = app
        .admin_ok(
            "mutation($input: UpdateProgramInput!) { updateProgram(input: $input) { program { commission { recurring { months rate basis } } } } }",
            json!({"input": {"id": program["id"], "commission": {"type": "PERCENT", "rate": "10",
                "recurring": {"months": 24, "rate": "12.5", "basis": "DEALS"}}}}),
        )
        .await;
    assert_eq!(
        data["updateProgram"]["program"]["commission"]["recurring"],
        json!({"months": 24, "rate": "12.5", "basis": "DEALS"})
    );
}

/// A manager declines an invoice's recurring commission: it nets to zero and stays at zero.
async fn a_declined_invoice_commission_stays_declined(app: TestApp) {
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "10",
               "recurring": {"months": 12, "rate": "15", "basis": "INVOICES"}}),
        json!({"holdDays": 0}),
    )
    .await;
    let alice = partner(&app, &program, "Alice").await;
    let stripe = Stripe::new(&app, &program).await;
    let now = Utc::now().trunc_subsecs(0);
    stripe
        .send(
            &app,
            &customer_event(
                "customer.created",
                "evt_cus_beta",
                "cus_beta",
                "billing@beta.example",
                json!({"company_domain": "beta.example"}),
            ),
        )
        .await;
    let mut crm = Crm::new(&app, &program).await;
    crm.deal(
        &app,
        json!({"id": "BETA-1", "amount": "1000", "status": "won",
               "closedAt": (now - Duration::days(10)).to_rfc3339(), "referralCode": alice.code,
               "companyDomain": "beta.example"}),
    )
    .await;
    stripe
        .send(
            &app,
            &invoice_paid(
                "evt_in_beta",
                "in_beta",
                "cus_beta",
                "billing@beta.example",
                "usd",
                100_000,
                100_000,
                now - Duration::days(1),
            ),
        )
        .await;
    reconcile(&app).await;
    let accrual = &app
        .admin_ok(
            "query($p: ID!) { ledgerEntries(filter: {partnerId: $p, kind: ACCRUAL}, first: 10) { edges { node { id amount invoice { externalId } } } } }",
            json!({"p": alice.id}),
        )
        .await["ledgerEntries"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .find(|n| n["invoice"]["externalId"] == "in_beta")
        .unwrap();
    assert_eq!(accrual["amount"], "150.00");
    let declined = app
        .admin_ok(
            "mutation($id: ID!) { declineLedgerEntry(input: {id: $id, reason: \"Invoice disputed\"}) { reversal { amount note } } }",
            json!({"id": accrual["id"]}),
        )
        .await;
    assert_eq!(
        declined["declineLedgerEntry"]["reversal"],
        json!({"amount": "-150.00", "note": "Invoice disputed"})
    );
    for full in [false, true] {
        let stats = crate::commissions::run_job(&app, "reconcile", full).await;
        assert_eq!(stats["entriesWritten"], 0, "{stats}");
    }
    let declined_events = count(
        &app.db,
        "SELECT COUNT(*) AS n FROM events WHERE type = 'commission.declined'",
    )
    .await;
    assert_eq!(declined_events, 1);
}

db_tests!(
    a_declined_invoice_commission_stays_declined,
    worked_example_of_recurring_invoices,
    the_same_invoice_twice_and_out_of_order_books_once,
    stripe_signatures_and_bad_input,
    invoices_wait_for_rates_and_stay_private,
    later_deals_of_a_customer_earn_the_recurring_rate,
    recurring_plans_are_validated,
);
