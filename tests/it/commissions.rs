//! The commission engine end to end: deals arrive as signed webhooks, `runJob(reconcile)`
//! books the ledger, and every rule of DESIGN §4 has a worked example computed by hand.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use crate::{
    db_tests,
    helpers::{TestApp, count, error_code, error_field, nodes},
    webhooks::{Source, drain, post_signed, standard_source},
};

/// A program with this commission plan (and optional windows); returns its id.
pub async fn program_with(app: &TestApp, commission: Value, extra: Value) -> String {
    let mut input = json!({"name": "Commissions", "kind": "CHANNEL", "currency": "USD",
        "commission": commission});
    for (k, v) in extra.as_object().unwrap() {
        input[k] = v.clone();
    }
    let data = app
        .admin_ok(
            "mutation($input: CreateProgramInput!) { createProgram(input: $input) { program { id } } }",
            json!({"input": input}),
        )
        .await;
    data["createProgram"]["program"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// One partner with its referral code.
pub struct TestPartner {
    pub id: String,
    pub code: String,
}

pub async fn partner(app: &TestApp, program: &str, name: &str) -> TestPartner {
    let id = app.create_partner(program, name).await;
    let data = app
        .admin_ok(
            "query($id: ID!) { partner(id: $id) { referralCode } }",
            json!({"id": id}),
        )
        .await;
    TestPartner {
        id,
        code: data["partner"]["referralCode"]
            .as_str()
            .unwrap()
            .to_string(),
    }
}

/// A CRM that posts deal changes: each change gets a fresh webhook id and a later `updatedAt`
/// unless given one.
pub struct Crm {
    pub source: Source,
    sent: u32,
}

impl Crm {
    pub async fn new(app: &TestApp, program: &str) -> Crm {
        Crm {
            source: standard_source(app, program).await,
            sent: 0,
        }
    }

    /// Posts a deal state and waits until it is applied.
    pub async fn deal(&mut self, app: &TestApp, data: Value) {
        self.sent += 1;
        let now = Utc::now();
        let mut data = data;
        let updated = data
            .get("updatedAt")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| (now + Duration::milliseconds(i64::from(self.sent))).to_rfc3339());
        data["updatedAt"] = json!(updated);
        if data.get("createdAt").is_none() {
            data["createdAt"] = json!((now - Duration::days(400)).to_rfc3339());
        }
        if data.get("name").is_none() {
            data["name"] = json!("Deal");
        }
        if data.get("currency").is_none() {
            data["currency"] = json!("USD");
        }
        let body = json!({"type": "deal.updated", "data": data}).to_string();
        let resp = post_signed(
            app,
            &self.source,
            &format!("msg_{}", self.sent),
            now.timestamp(),
            &body,
        )
        .await;
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        drain(app).await;
    }

    /// A won deal closed `days_ago`, carrying a partner's referral code.
    pub async fn won(&mut self, app: &TestApp, id: &str, amount: &str, days_ago: i64, code: &str) {
        self.deal(
            app,
            json!({"id": id, "amount": amount, "status": "won",
                   "closedAt": days(days_ago).to_rfc3339(), "referralCode": code}),
        )
        .await;
    }
}

pub fn days(ago: i64) -> DateTime<Utc> {
    Utc::now() - Duration::days(ago)
}

/// Runs a job and returns its stats (the run must succeed).
pub async fn run_job(app: &TestApp, name: &str, full: bool) -> Value {
    let data = app
        .admin_ok(
            "mutation($input: RunJobInput!) { runJob(input: $input) { jobRun { id name status stats error startedAt finishedAt } } }",
            json!({"input": {"name": name, "full": full}}),
        )
        .await;
    let run = &data["runJob"]["jobRun"];
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    run["stats"].clone()
}

pub async fn reconcile(app: &TestApp) -> Value {
    run_job(app, "reconcile", false).await
}

/// A partner's ledger entries, oldest first, as (kind, amount, status).
pub async fn ledger(app: &TestApp, partner: &str) -> Vec<(String, String, String)> {
    let data = app
        .admin_ok(
            "query($f: LedgerEntryFilter) { ledgerEntries(filter: $f, first: 100) { edges { node {
                kind amount status } } } }",
            json!({"f": {"partnerId": partner}}),
        )
        .await;
    let mut entries: Vec<_> = nodes(&data["ledgerEntries"])
        .into_iter()
        .map(|n| {
            (
                n["kind"].as_str().unwrap().to_string(),
                n["amount"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    entries.reverse();
    entries
}

/// The reconciler's view of a deal: (state, expected, amount in program currency).
pub async fn commission_of(app: &TestApp, external_id: &str) -> (String, String, Value) {
    let data = app
        .admin_ok(
            "{ deals(first: 100) { edges { node { externalId commission { state expected amountInProgramCurrency } } } } }",
            json!({}),
        )
        .await;
    let deal = nodes(&data["deals"])
        .into_iter()
        .find(|d| d["externalId"] == external_id)
        .expect("deal");
    let c = &deal["commission"];
    (
        c["state"].as_str().unwrap().to_string(),
        c["expected"].as_str().unwrap().to_string(),
        c["amountInProgramCurrency"].clone(),
    )
}

/// The net booked commission of one deal for a partner, as a 2-place string.
pub async fn booked(app: &TestApp, partner: &str, external_id: &str) -> String {
    let data = app
        .admin_ok(
            "query($f: LedgerEntryFilter) { ledgerEntries(filter: $f, first: 100) { edges { node {
                amount deal { externalId } } } } }",
            json!({"f": {"partnerId": partner}}),
        )
        .await;
    let cents: i64 = nodes(&data["ledgerEntries"])
        .iter()
        .filter(|n| n["deal"]["externalId"] == external_id)
        .map(|n| {
            let amount: rust_decimal::Decimal = n["amount"].as_str().unwrap().parse().unwrap();
            tandem::domain::commission::to_cents(amount).unwrap()
        })
        .sum();
    format!("{:.2}", tandem::domain::commission::from_cents(cents))
}

fn e(kind: &str, amount: &str, status: &str) -> (String, String, String) {
    (kind.to_string(), amount.to_string(), status.to_string())
}

async fn percent_accrues_adjusts_and_reverses(app: TestApp) {
    // 12.5 %: 100.10 → 12.5125 → 12.51 (rounded once, half away from zero).
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "12.5"}), json!({})).await;
    let alice = partner(&app, &program, "Alice").await;
    let mut crm = Crm::new(&app, &program).await;
    crm.won(&app, "D1", "100.10", 3, &alice.code).await;
    let stats = reconcile(&app).await;
    assert_eq!(stats["mode"], "full", "the first run is full: {stats}");
    assert_eq!(stats["entriesWritten"], 1, "{stats}");
    assert_eq!(stats["accrued"], "12.51");
    assert_eq!(
        ledger(&app, &alice.id).await,
        [e("ACCRUAL", "12.51", "PENDING")]
    );

    // Nothing new: nothing written.
    let stats = reconcile(&app).await;
    assert_eq!(stats["mode"], "incremental");
    assert_eq!(stats["entriesWritten"], 0, "{stats}");

    // The amount grows to 200.20 (25.025 → 25.03): the difference accrues.
    crm.won(&app, "D1", "200.20", 3, &alice.code).await;
    let stats = reconcile(&app).await;
    assert_eq!(stats["entriesWritten"], 1, "{stats}");
    assert_eq!(stats["totalDrift"], "12.52");
    // Lost within the clawback period: everything is reversed, approved at once.
    crm.deal(
        &app,
        json!({"id": "D1", "amount": "200.20", "status": "lost",
        "closedAt": days(1).to_rfc3339(), "referralCode": alice.code}),
    )
    .await;
    reconcile(&app).await;
    assert_eq!(
        ledger(&app, &alice.id).await,
        [
            e("ACCRUAL", "12.51", "PENDING"),
            e("ACCRUAL", "12.52", "PENDING"),
            e("REVERSAL", "-25.03", "APPROVED"),
        ]
    );
    assert_eq!(booked(&app, &alice.id, "D1").await, "0.00");
    // Reopened and won again: accrues again.
    crm.won(&app, "D1", "200.20", 0, &alice.code).await;
    reconcile(&app).await;
    assert_eq!(booked(&app, &alice.id, "D1").await, "25.03");

    // The entries' events, with program and partner.
    app.events_settled().await;
    let data = app
        .admin_ok(
            "{ events(types: [\"commission.accrued\", \"commission.reversed\"], first: 20) { edges { node { type data } } } }",
            json!({}),
        )
        .await;
    let events = nodes(&data["events"]);
    assert_eq!(events.len(), 4);
    assert_eq!(events[2]["type"], "commission.reversed");
    assert_eq!(events[2]["data"]["amount"], "-25.03");
    assert_eq!(events[2]["data"]["partnerId"], alice.id.as_str());
    assert_eq!(events[2]["data"]["programId"], program.as_str());
    // Each entry is held holdDays (30 by default) from its creation.
    let data = app
        .admin_ok(
            "query($f: LedgerEntryFilter) { ledgerEntries(filter: $f, first: 1) { edges { node { createdAt availableAt } } } }",
            json!({"f": {"partnerId": alice.id, "kind": "ACCRUAL"}}),
        )
        .await;
    let node = &nodes(&data["ledgerEntries"])[0];
    let created = DateTime::parse_from_rfc3339(node["createdAt"].as_str().unwrap()).unwrap();
    let available = DateTime::parse_from_rfc3339(node["availableAt"].as_str().unwrap()).unwrap();
    assert_eq!(available - created, Duration::days(30));
}

/// A program paying 10 % below 1,000 of prior revenue (trailing 365 days) and 20 % from 1,000
/// on, its partner Alice, and a CRM source.
async fn tiered_program(app: &TestApp) -> (String, TestPartner, Crm) {
    let program = program_with(
        app,
        json!({"type": "PERCENT", "rate": "10",
               "tiers": [{"minRevenue": "0", "rate": "10"}, {"minRevenue": "1000", "rate": "20"}]}),
        json!({}),
    )
    .await;
    let alice = partner(app, &program, "Alice").await;
    let crm = Crm::new(app, &program).await;
    (program, alice, crm)
}

async fn tiers_and_a_clawback_that_moves_a_later_deal_down(app: TestApp) {
    let (_, alice, mut crm) = tiered_program(&app).await;
    // A deal closed 400 days ago is outside the trailing year of the others.
    crm.won(&app, "OLD", "5000", 400, &alice.code).await;
    crm.won(&app, "A", "1000", 20, &alice.code).await;
    crm.won(&app, "B", "500", 10, &alice.code).await;
    reconcile(&app).await;
    // OLD: prior 0 → 500.00. A: prior 0 (OLD is 380 days before) → 100.00.
    // B: prior 1,000 (A) → 20 % → 100.00.
    assert_eq!(booked(&app, &alice.id, "OLD").await, "500.00");
    assert_eq!(booked(&app, &alice.id, "A").await, "100.00");
    assert_eq!(booked(&app, &alice.id, "B").await, "100.00");

    // A is lost (within clawback): A is reversed, and B falls back to 10 % → 50.00. The
    // incremental run finds B through A's partner.
    crm.deal(
        &app,
        json!({"id": "A", "amount": "1000", "status": "lost",
        "closedAt": days(20).to_rfc3339(), "referralCode": alice.code}),
    )
    .await;
    let stats = reconcile(&app).await;
    assert_eq!(stats["mode"], "incremental");
    assert_eq!(stats["entriesWritten"], 2, "{stats}");
    assert_eq!(stats["reversed"], "-150.00");
    assert_eq!(booked(&app, &alice.id, "A").await, "0.00");
    assert_eq!(booked(&app, &alice.id, "B").await, "50.00");
    assert_eq!(booked(&app, &alice.id, "OLD").await, "500.00");
}

/// In a tiered program, a partner whose won deal changed (its tiers move) and whose open deal
/// was lost in the same interval: the incremental run records both, so the KPIs count the lost
/// deal and drop it from the pipeline. (Runs without the overlap, so that the partner, created
/// moments ago, is not recomputed whole.)
async fn an_open_deal_lost_while_the_partners_tiers_move(app: TestApp) {
    use tandem::domain::reconcile::reconcile_with_overlap;
    let (program, alice, mut crm) = tiered_program(&app).await;
    crm.won(&app, "A", "1000", 20, &alice.code).await;
    crm.deal(
        &app,
        json!({"id": "O", "amount": "300", "status": "open", "referralCode": alice.code}),
    )
    .await;
    let first = reconcile_with_overlap(&app.db, None, Duration::zero())
        .await
        .unwrap();
    let query =
        "query($p: ID!) { kpis(programId: $p) { dealsWon dealsLost pipelineValue wonRevenue } }";
    let before = app.admin_ok(query, json!({"p": program})).await["kpis"].clone();
    assert_eq!(
        before,
        json!({"dealsWon": 1, "dealsLost": 0, "pipelineValue": "300.00", "wonRevenue": "1000.00"})
    );
    // A's amount moves Alice's tiers; O is lost (a change that counts towards nothing).
    crm.won(&app, "A", "1200", 20, &alice.code).await;
    crm.deal(
        &app,
        json!({"id": "O", "amount": "300", "status": "lost",
               "closedAt": days(1).to_rfc3339(), "referralCode": alice.code}),
    )
    .await;
    let stats = reconcile_with_overlap(&app.db, first.watermark, Duration::zero())
        .await
        .unwrap();
    assert_eq!(stats.mode, "incremental");
    assert_eq!(booked(&app, &alice.id, "A").await, "120.00");
    let after = app.admin_ok(query, json!({"p": program})).await["kpis"].clone();
    assert_eq!(
        after,
        json!({"dealsWon": 1, "dealsLost": 1, "pipelineValue": "0.00", "wonRevenue": "1200.00"}),
        "{stats:?}"
    );
}

async fn cap_minimum_flat_and_termination(app: TestApp) {
    // 20 %, capped at 150 per deal, deals under 100 earn nothing.
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "20", "capPerDeal": "150", "minDealAmount": "100"}),
        json!({}),
    )
    .await;
    let alice = partner(&app, &program, "Alice").await;
    let mut crm = Crm::new(&app, &program).await;
    crm.won(&app, "BIG", "1000", 5, &alice.code).await; // 200 → capped 150
    crm.won(&app, "SMALL", "99.99", 5, &alice.code).await; // below minimum → 0
    crm.won(&app, "MID", "500", 5, &alice.code).await; // 100
    reconcile(&app).await;
    assert_eq!(booked(&app, &alice.id, "BIG").await, "150.00");
    assert_eq!(booked(&app, &alice.id, "SMALL").await, "0.00");
    assert_eq!(booked(&app, &alice.id, "MID").await, "100.00");

    // Terminated: a deal closed after termination earns nothing; earlier ones keep theirs.
    app.admin_ok(
        "mutation($input: UpdatePartnerStatusInput!) { updatePartnerStatus(input: $input) { partner { id } } }",
        json!({"input": {"id": alice.id, "status": "TERMINATED"}}),
    )
    .await;
    crm.deal(
        &app,
        json!({"id": "LATE", "amount": "400", "status": "won",
        "closedAt": (Utc::now() + Duration::seconds(5)).to_rfc3339(), "referralCode": alice.code}),
    )
    .await;
    reconcile(&app).await;
    assert_eq!(booked(&app, &alice.id, "LATE").await, "0.00");
    assert_eq!(booked(&app, &alice.id, "MID").await, "100.00");

    // FLAT 250 per won deal, capped at 200.
    let flat = program_with(
        &app,
        json!({"type": "FLAT", "flatAmount": "250", "capPerDeal": "200"}),
        json!({}),
    )
    .await;
    let bob = partner(&app, &flat, "Bob").await;
    let mut crm = Crm::new(&app, &flat).await;
    crm.won(&app, "F1", "1", 1, &bob.code).await;
    reconcile(&app).await;
    assert_eq!(booked(&app, &bob.id, "F1").await, "200.00");
}

async fn a_plan_change_reprices_deals_on_the_next_run(app: TestApp) {
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "10"}), json!({})).await;
    let alice = partner(&app, &program, "Alice").await;
    let mut crm = Crm::new(&app, &program).await;
    crm.won(&app, "D", "1000", 1, &alice.code).await;
    reconcile(&app).await;
    assert_eq!(booked(&app, &alice.id, "D").await, "100.00");
    app.admin_ok(
        "mutation($input: UpdateProgramInput!) { updateProgram(input: $input) { program { id } } }",
        json!({"input": {"id": program, "commission": {"type": "FLAT", "flatAmount": "75"}}}),
    )
    .await;
    let stats = reconcile(&app).await;
    assert_eq!(stats["mode"], "incremental");
    assert_eq!(stats["reversed"], "-25.00", "{stats}");
    assert_eq!(booked(&app, &alice.id, "D").await, "75.00");
}

async fn currency_conversion_and_missing_rates(app: TestApp) {
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "10"}), json!({})).await;
    let alice = partner(&app, &program, "Alice").await;
    let mut crm = Crm::new(&app, &program).await;
    crm.deal(
        &app,
        json!({"id": "EU", "amount": "1000", "currency": "EUR", "status": "won",
        "closedAt": days(5).to_rfc3339(), "referralCode": alice.code}),
    )
    .await;
    let stats = reconcile(&app).await;
    assert_eq!(stats["missingExchangeRates"], 1, "{stats}");
    assert_eq!(stats["entriesWritten"], 0);
    let (state, _, amount) = commission_of(&app, "EU").await;
    assert_eq!(state, "MISSING_FX_RATE");
    assert!(amount.is_null());

    // Rates: 1.10 from 30 days ago, 1.20 from 2 days ago; the deal closed 5 days ago → 1.10.
    for (rate, ago) in [("1.10", 30), ("1.20", 2)] {
        let data = app
            .admin_ok(
                "mutation($input: SetExchangeRateInput!) { setExchangeRate(input: $input) { exchangeRate { base quote rate } } }",
                json!({"input": {"base": "eur", "quote": "USD", "rate": rate,
                    "effectiveAt": days(ago).to_rfc3339()}}),
            )
            .await;
        assert_eq!(data["setExchangeRate"]["exchangeRate"]["base"], "EUR");
    }
    let rates = app
        .admin_ok(
            "{ exchangeRates(base: \"eur\") { totalCount edges { node { base quote rate } } } }",
            json!({}),
        )
        .await;
    assert_eq!(rates["exchangeRates"]["totalCount"], 2);
    assert_eq!(
        nodes(&rates["exchangeRates"])[0]["rate"],
        "1.2",
        "newest first"
    );
    let stats = reconcile(&app).await;
    assert_eq!(stats["missingExchangeRates"], 0, "{stats}");
    // 1000 EUR × 1.10 = 1100 USD × 10 % = 110.00.
    assert_eq!(booked(&app, &alice.id, "EU").await, "110.00");
    assert_eq!(
        commission_of(&app, "EU").await,
        ("EARNED".into(), "110.00".into(), json!("1100"))
    );
    let kpis = app
        .admin_ok(
            "query($p: ID!) { kpis(programId: $p) { wonRevenue } }",
            json!({"p": program}),
        )
        .await;
    assert_eq!(kpis["kpis"]["wonRevenue"], "1100.00");
}

async fn inverse_and_cross_rates_convert_rounded_once(app: TestApp) {
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "50"}), json!({})).await;
    let alice = partner(&app, &program, "Alice").await;
    let mut crm = Crm::new(&app, &program).await;
    for (id, amount, ago) in [("INV", "1000.05", 5), ("CROSS", "1000.02", 20)] {
        crm.deal(
            &app,
            json!({"id": id, "amount": amount, "currency": "EUR", "status": "won",
                "closedAt": days(ago).to_rfc3339(), "referralCode": alice.code}),
        )
        .await;
    }
    reconcile(&app).await;
    let set = "mutation($input: SetExchangeRateInput!) { setExchangeRate(input: $input) { exchangeRate { id } } }";
    // No EUR→USD rate: USD→EUR from 10 days ago (inverted), EUR→GBP and GBP→USD from 30.
    for (base, quote, rate, ago) in [
        ("USD", "EUR", "0.9", 10),
        ("EUR", "GBP", "0.8573", 30),
        ("GBP", "USD", "1.2719", 30),
    ] {
        app.admin_ok(
            set,
            json!({"input": {"base": base, "quote": quote, "rate": rate, "effectiveAt": days(ago).to_rfc3339()}}),
        )
        .await;
    }
    // The incremental run picks the new rates up.
    let stats = reconcile(&app).await;
    assert_eq!(stats["missingExchangeRates"], 0, "{stats}");
    // By hand: 1000.05 EUR ÷ 0.9 = 1111.1666… USD × 50 % = 555.5833… → 555.58 (rounding the
    // amount first would give 555.59).
    assert_eq!(booked(&app, &alice.id, "INV").await, "555.58");
    // 1000.02 EUR × 0.8573 = 857.317146 GBP × 1.2719 = 1090.4216779974 USD × 50 %
    // = 545.2108389987 → 545.21 (rounding each step would give 545.22). Closed 20 days ago,
    // before the USD→EUR rate took effect: crossed.
    assert_eq!(booked(&app, &alice.id, "CROSS").await, "545.21");
    let (state, expected, amount) = commission_of(&app, "CROSS").await;
    assert_eq!((state.as_str(), expected.as_str()), ("EARNED", "545.21"));
    assert_eq!(amount, json!("1090.4216779974"));

    // The commission view names the rates used.
    let data = app
        .admin_ok(
            "{ deals(first: 10) { edges { node { externalId commission { exchangeRates { base quote rate inverted effectiveAt } } } } } }",
            json!({}),
        )
        .await;
    let used = |id: &str| {
        nodes(&data["deals"])
            .into_iter()
            .find(|d| d["externalId"] == id)
            .unwrap()["commission"]["exchangeRates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["base"].as_str().unwrap().to_string(),
                    r["quote"].as_str().unwrap().to_string(),
                    r["rate"].as_str().unwrap().to_string(),
                    r["inverted"].as_bool().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let leg = |b: &str, q: &str, r: &str, inv| (b.to_string(), q.to_string(), r.to_string(), inv);
    assert_eq!(used("INV"), [leg("USD", "EUR", "0.9", true)]);
    assert_eq!(
        used("CROSS"),
        [
            leg("EUR", "GBP", "0.8573", false),
            leg("GBP", "USD", "1.2719", false)
        ]
    );
}

async fn a_deal_lost_after_its_clawback_period_is_locked(app: TestApp) {
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "10"}),
        json!({"clawbackDays": 30}),
    )
    .await;
    let alice = partner(&app, &program, "Alice").await;
    let mut crm = Crm::new(&app, &program).await;
    crm.won(&app, "OLD", "1000", 60, &alice.code).await;
    crm.won(&app, "NEW", "1000", 10, &alice.code).await;
    reconcile(&app).await;
    // OLD closed 60 days ago (> 30): losing it now locks it; NEW is still clawed back.
    for id in ["OLD", "NEW"] {
        crm.deal(
            &app,
            json!({"id": id, "amount": "1000", "status": "lost",
            "closedAt": days(0).to_rfc3339(), "referralCode": alice.code}),
        )
        .await;
    }
    let stats = reconcile(&app).await;
    assert_eq!(stats["locked"], 1, "{stats}");
    assert_eq!(booked(&app, &alice.id, "OLD").await, "100.00");
    assert_eq!(commission_of(&app, "OLD").await.0, "LOCKED");
    assert_eq!(commission_of(&app, "NEW").await.0, "NOT_EARNED");
    assert_eq!(booked(&app, &alice.id, "NEW").await, "0.00");
    // A locked deal's later changes do not reverse it either; winning again recomputes.
    crm.deal(
        &app,
        json!({"id": "OLD", "amount": "5000", "status": "open",
        "referralCode": alice.code}),
    )
    .await;
    reconcile(&app).await;
    assert_eq!(booked(&app, &alice.id, "OLD").await, "100.00");
    crm.won(&app, "OLD", "2000", 0, &alice.code).await;
    reconcile(&app).await;
    assert_eq!(booked(&app, &alice.id, "OLD").await, "200.00");
}

async fn reattribution_moves_the_commission(app: TestApp) {
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "10"}), json!({})).await;
    let alice = partner(&app, &program, "Alice").await;
    let bob = partner(&app, &program, "Bob").await;
    let mut crm = Crm::new(&app, &program).await;
    crm.won(&app, "D", "1000", 1, &alice.code).await;
    reconcile(&app).await;
    let deal = app
        .admin_ok("{ deals(first: 1) { edges { node { id } } } }", json!({}))
        .await;
    let deal_id = nodes(&deal["deals"])[0]["id"].clone();
    app.admin_ok(
        "mutation($input: AttributeDealInput!) { attributeDeal(input: $input) { deal { id } } }",
        json!({"input": {"dealId": deal_id, "partnerId": bob.id}}),
    )
    .await;
    let stats = reconcile(&app).await;
    assert_eq!(stats["entriesWritten"], 2, "{stats}");
    assert_eq!(
        ledger(&app, &alice.id).await,
        [
            e("ACCRUAL", "100.00", "PENDING"),
            e("REVERSAL", "-100.00", "APPROVED")
        ]
    );
    assert_eq!(booked(&app, &bob.id, "D").await, "100.00");
    // Alice's key still sees her entries, but not the deal that is now Bob's.
    let alice_key = app.partner_key(&alice.id).await;
    let mine = app
        .ok(
            &alice_key,
            "{ ledgerEntries { totalCount edges { node { amount deal { id } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(mine["ledgerEntries"]["totalCount"], 2);
    assert!(
        nodes(&mine["ledgerEntries"])
            .iter()
            .all(|n| n["deal"].is_null())
    );
}

async fn payouts_gather_approved_entries(app: TestApp) {
    // No hold: accruals are approved at once.
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "10"}),
        json!({"holdDays": 0}),
    )
    .await;
    let alice = partner(&app, &program, "Alice").await;
    let bob = partner(&app, &program, "Bob").await;
    let mut crm = Crm::new(&app, &program).await;
    crm.won(&app, "A1", "1000", 2, &alice.code).await;
    crm.won(&app, "A2", "234.56", 1, &alice.code).await; // 23.456 → 23.46
    reconcile(&app).await;
    let balances =
        "query($p: ID!) { balances(partnerId: $p) { currency pending approved inPayout paid } }";
    let data = app.admin_ok(balances, json!({"p": alice.id})).await;
    assert_eq!(
        data["balances"],
        json!([{"currency": "USD", "pending": "0.00", "approved": "123.46", "inPayout": "0.00", "paid": "0.00"}])
    );

    let create = "mutation($input: CreatePayoutInput!) { createPayout(input: $input) { payout { id total currency status partner { id } } } }";
    let data = app
        .admin_ok(
            create,
            json!({"input": {"partnerId": alice.id, "currency": "usd"}}),
        )
        .await;
    let payout = &data["createPayout"]["payout"];
    assert_eq!(payout["total"], "123.46");
    assert_eq!(payout["status"], "PENDING");
    let payout_id = payout["id"].as_str().unwrap().to_string();
    // Nothing left to gather: CONFLICT, and nothing written.
    let payouts_before = app.count_rows("payouts").await;
    let resp = app
        .gql(
            &app.admin,
            create,
            json!({"input": {"partnerId": alice.id, "currency": "USD"}}),
        )
        .await;
    assert_eq!(error_code(&resp), "CONFLICT", "{resp}");
    let resp = app
        .gql(
            &app.admin,
            create,
            json!({"input": {"partnerId": bob.id, "currency": "USD"}}),
        )
        .await;
    assert_eq!(error_code(&resp), "CONFLICT", "{resp}");
    assert_eq!(app.count_rows("payouts").await, payouts_before);
    let data = app.admin_ok(balances, json!({"p": alice.id})).await;
    assert_eq!(data["balances"][0]["approved"], "0.00");
    assert_eq!(data["balances"][0]["inPayout"], "123.46");

    let paid = "mutation($input: MarkPayoutPaidInput!) { markPayoutPaid(input: $input) { payout { status reference paidAt } } }";
    let data = app
        .admin_ok(
            paid,
            json!({"input": {"id": payout_id, "reference": "SEPA-42"}}),
        )
        .await;
    assert_eq!(data["markPayoutPaid"]["payout"]["status"], "PAID");
    assert_eq!(data["markPayoutPaid"]["payout"]["reference"], "SEPA-42");
    let resp = app
        .gql(
            &app.admin,
            paid,
            json!({"input": {"id": payout_id, "reference": "again"}}),
        )
        .await;
    assert_eq!(error_code(&resp), "CONFLICT");
    let resp = app
        .gql(
            &app.admin,
            paid,
            json!({"input": {"id": payout_id, "reference": "  "}}),
        )
        .await;
    assert_eq!(error_field(&resp), "input.reference");
    let data = app.admin_ok(balances, json!({"p": alice.id})).await;
    assert_eq!(data["balances"][0]["paid"], "123.46");
    assert_eq!(
        ledger(&app, &alice.id).await,
        [
            e("ACCRUAL", "100.00", "PAID"),
            e("ACCRUAL", "23.46", "PAID")
        ]
    );

    // A deal lost after payment is reversed: the approved balance goes negative, and a payout
    // then has nothing positive to pay.
    crm.deal(
        &app,
        json!({"id": "A2", "amount": "234.56", "status": "lost",
        "closedAt": days(0).to_rfc3339(), "referralCode": alice.code}),
    )
    .await;
    reconcile(&app).await;
    let data = app.admin_ok(balances, json!({"p": alice.id})).await;
    assert_eq!(data["balances"][0]["approved"], "-23.46");
    let resp = app
        .gql(
            &app.admin,
            create,
            json!({"input": {"partnerId": alice.id, "currency": "USD"}}),
        )
        .await;
    assert_eq!(error_code(&resp), "CONFLICT");

    app.events_settled().await;
    let data = app
        .admin_ok(
            "{ events(types: [\"payout.created\", \"payout.paid\"]) { edges { node { type data } } } }",
            json!({}),
        )
        .await;
    let events = nodes(&data["events"]);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["data"]["total"], "123.46");
    assert_eq!(events[1]["data"]["reference"], "SEPA-42");
    let data = app
        .admin_ok(
            "query($p: ID!) { payouts(filter: {partnerId: $p}) { totalCount edges { node { id status } } } }",
            json!({"p": alice.id}),
        )
        .await;
    assert_eq!(data["payouts"]["totalCount"], 1);
}

async fn release_holds_approves_due_accruals(app: TestApp) {
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "10"}), json!({})).await;
    let alice = partner(&app, &program, "Alice").await;
    let mut crm = Crm::new(&app, &program).await;
    crm.won(&app, "A", "1000", 2, &alice.code).await;
    crm.won(&app, "B", "2000", 2, &alice.code).await;
    reconcile(&app).await;
    let stats = run_job(&app, "release-holds", false).await;
    assert_eq!(stats["released"], 0);
    // Make one entry due (as if 30 days had passed).
    let past = Utc::now() - Duration::seconds(1);
    let sql = format!(
        "UPDATE ledger_entries SET available_at = {} WHERE amount_cents = 10000",
        app.db.placeholder(1)
    );
    app.db
        .execute_write(sql, [past.into()].into())
        .await
        .unwrap();
    let stats = run_job(&app, "release-holds", false).await;
    assert_eq!(stats["released"], 1);
    assert_eq!(
        ledger(&app, &alice.id).await,
        [
            e("ACCRUAL", "100.00", "APPROVED"),
            e("ACCRUAL", "200.00", "PENDING")
        ]
    );
    let data = app
        .admin_ok(
            "{ jobRuns(filter: {name: \"release-holds\"}) { totalCount edges { node { name status stats finishedAt } } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["jobRuns"]["totalCount"], 2);
    assert_eq!(
        nodes(&data["jobRuns"])[0]["stats"]["released"],
        1,
        "newest first"
    );
}

async fn kpis_are_aggregates_scoped_to_the_key(app: TestApp) {
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "10"}),
        json!({"holdDays": 0}),
    )
    .await;
    let alice = partner(&app, &program, "Alice").await;
    let bob = partner(&app, &program, "Bob").await;
    let alice_key = app.partner_key(&alice.id).await;
    let bob_key = app.partner_key(&bob.id).await;
    for (key, domain) in [
        (&alice_key, "a1.com"),
        (&alice_key, "a2.com"),
        (&bob_key, "b1.com"),
    ] {
        app.submit_referral(key, json!({"companyName": domain, "companyDomain": domain}))
            .await;
    }
    // A duplicate registration of Alice's a1.com by Bob.
    app.submit_referral(
        &bob_key,
        json!({"companyName": "dup", "companyDomain": "a1.com"}),
    )
    .await;
    let mut crm = Crm::new(&app, &program).await;
    // Deals attributed by domain (created after the referrals), one by code.
    let created = (Utc::now() + Duration::hours(2)).to_rfc3339();
    crm.deal(
        &app,
        json!({"id": "W1", "amount": "1000", "status": "won", "createdAt": created,
        "closedAt": days(0).to_rfc3339(), "companyDomain": "a1.com"}),
    )
    .await;
    crm.deal(
        &app,
        json!({"id": "L1", "amount": "300", "status": "lost", "createdAt": created,
        "closedAt": days(0).to_rfc3339(), "companyDomain": "a2.com"}),
    )
    .await;
    crm.deal(
        &app,
        json!({"id": "O1", "amount": "700", "status": "open", "createdAt": created,
        "companyDomain": "b1.com"}),
    )
    .await;
    crm.won(&app, "W2", "4000", 0, &bob.code).await;
    reconcile(&app).await;
    let query = "query($p: ID!, $partner: ID) { kpis(programId: $p, partnerId: $partner) {
        referralsSubmitted referralsAccepted referralsDuplicate dealsAttributed dealsWon dealsLost
        conversionRate winRate pipelineValue wonRevenue commissionAccrued commissionPaid
        medianHoursToFirstDeal leaderboard { partner { id } wonRevenue dealsWon } } }";
    let all = app.admin_ok(query, json!({"p": program})).await["kpis"].clone();
    assert_eq!(all["referralsSubmitted"], 4);
    assert_eq!(all["referralsAccepted"], 3);
    assert_eq!(all["referralsDuplicate"], 1);
    assert_eq!(all["dealsAttributed"], 4);
    assert_eq!(all["dealsWon"], 2);
    assert_eq!(all["dealsLost"], 1);
    assert_eq!(all["winRate"].as_f64().unwrap(), 2.0 / 3.0);
    assert_eq!(all["conversionRate"].as_f64().unwrap(), 2.0 / 3.0);
    assert_eq!(all["pipelineValue"], "700.00");
    assert_eq!(all["wonRevenue"], "5000.00");
    assert_eq!(all["commissionAccrued"], "500.00");
    assert_eq!(all["commissionPaid"], "0.00");
    // Three referrals have a deal created about 2 hours after their submission.
    let median = all["medianHoursToFirstDeal"].as_f64().unwrap();
    assert!((1.9..2.1).contains(&median), "{median}");
    assert_eq!(all["leaderboard"][0]["partner"]["id"], bob.id.as_str());
    assert_eq!(all["leaderboard"][0]["wonRevenue"], "4000.00");
    assert_eq!(all["leaderboard"][1]["wonRevenue"], "1000.00");

    // Alice's key: her figures only, whatever she asks.
    let mine = app.ok(&alice_key, query, json!({"p": program})).await["kpis"].clone();
    assert_eq!(mine["referralsSubmitted"], 2);
    assert_eq!(mine["wonRevenue"], "1000.00");
    assert_eq!(mine["leaderboard"].as_array().unwrap().len(), 1);
    let resp = app
        .gql(&alice_key, query, json!({"p": program, "partner": bob.id}))
        .await;
    assert_eq!(error_code(&resp), "NOT_FOUND");
    let other = program_with(&app, json!({"type": "PERCENT", "rate": "5"}), json!({})).await;
    let resp = app.gql(&alice_key, query, json!({"p": other})).await;
    assert_eq!(error_code(&resp), "NOT_FOUND");
    // A time range: nothing closed last year.
    let range = app
        .admin_ok(
            "query($p: ID!, $from: DateTime, $to: DateTime) { kpis(programId: $p, from: $from, to: $to) { dealsWon wonRevenue referralsSubmitted } }",
            json!({"p": program, "from": days(400).to_rfc3339(), "to": days(300).to_rfc3339()}),
        )
        .await;
    assert_eq!(
        range["kpis"],
        json!({"dealsWon": 0, "wonRevenue": "0.00", "referralsSubmitted": 0})
    );
}

async fn partner_keys_cannot_run_jobs_pay_or_read_others(app: TestApp) {
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "10"}), json!({})).await;
    let alice = partner(&app, &program, "Alice").await;
    let bob = partner(&app, &program, "Bob").await;
    let mut crm = Crm::new(&app, &program).await;
    crm.won(&app, "B", "1000", 1, &bob.code).await;
    reconcile(&app).await;
    let key = app.partner_key(&alice.id).await;
    for (query, variables) in [
        (
            "mutation { runJob(input: {name: \"reconcile\"}) { jobRun { id } } }",
            json!({}),
        ),
        (
            "mutation($p: ID!) { createPayout(input: {partnerId: $p, currency: \"USD\"}) { payout { id } } }",
            json!({"p": alice.id}),
        ),
        (
            "mutation { setExchangeRate(input: {base: \"EUR\", quote: \"USD\", rate: \"1.1\", effectiveAt: \"2026-01-01T00:00:00Z\"}) { exchangeRate { id } } }",
            json!({}),
        ),
        ("{ jobRuns { totalCount } }", json!({})),
    ] {
        let resp = app.gql(&key, query, variables).await;
        assert_eq!(error_code(&resp), "FORBIDDEN", "{query}: {resp}");
    }
    let resp = app
        .gql(
            &key,
            "query($p: ID!) { balances(partnerId: $p) { paid } }",
            json!({"p": bob.id}),
        )
        .await;
    assert_eq!(error_code(&resp), "NOT_FOUND");
    let data = app
        .ok(
            &key,
            "query($p: ID!) { ledgerEntries(filter: {partnerId: $p}) { totalCount } all: ledgerEntries { totalCount } payouts(filter: {partnerId: $p}) { totalCount } }",
            json!({"p": bob.id}),
        )
        .await;
    assert_eq!(data["ledgerEntries"]["totalCount"], 0);
    assert_eq!(data["all"]["totalCount"], 0);
    assert_eq!(data["payouts"]["totalCount"], 0);
    let bob_key = app.partner_key(&bob.id).await;
    let data = app
        .ok(&bob_key, "{ ledgerEntries { totalCount } }", json!({}))
        .await;
    assert_eq!(data["ledgerEntries"]["totalCount"], 1);
}

async fn bad_input_is_rejected_and_writes_nothing(app: TestApp) {
    let create =
        "mutation($input: CreateProgramInput!) { createProgram(input: $input) { program { id } } }";
    let programs = app.count_rows("programs").await;
    for (commission, currency, field) in [
        (
            json!({"type": "PERCENT", "rate": "-1"}),
            "USD",
            "input.commission.rate",
        ),
        (
            json!({"type": "PERCENT", "rate": "101"}),
            "USD",
            "input.commission.rate",
        ),
        (
            json!({"type": "PERCENT", "rate": "10", "tiers": [{"minRevenue": "1000", "rate": "20"}, {"minRevenue": "500", "rate": "15"}]}),
            "USD",
            "input.commission.tiers[1].minRevenue",
        ),
        (
            json!({"type": "PERCENT", "rate": "10", "capPerDeal": "-5"}),
            "USD",
            "input.commission.capPerDeal",
        ),
        (
            json!({"type": "PERCENT", "rate": "10"}),
            "XYZ",
            "input.currency",
        ),
    ] {
        let resp = app
            .gql(
                &app.admin,
                create,
                json!({"input": {"name": "Bad", "kind": "CHANNEL", "currency": currency, "commission": commission}}),
            )
            .await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
        assert_eq!(error_field(&resp), field, "{resp}");
    }
    assert_eq!(app.count_rows("programs").await, programs);

    let rate = "mutation($input: SetExchangeRateInput!) { setExchangeRate(input: $input) { exchangeRate { id } } }";
    for (input, field) in [
        (
            json!({"base": "EURO", "quote": "USD", "rate": "1.1"}),
            "input.base",
        ),
        (
            json!({"base": "EUR", "quote": "US", "rate": "1.1"}),
            "input.quote",
        ),
        (
            json!({"base": "EUR", "quote": "EUR", "rate": "1"}),
            "input.quote",
        ),
        (
            json!({"base": "EUR", "quote": "USD", "rate": "0"}),
            "input.rate",
        ),
        (
            json!({"base": "EUR", "quote": "USD", "rate": "-2"}),
            "input.rate",
        ),
    ] {
        let mut input = input;
        input["effectiveAt"] = json!("2026-01-01T00:00:00Z");
        let resp = app.gql(&app.admin, rate, json!({"input": input})).await;
        assert_eq!(error_field(&resp), field, "{resp}");
    }
    assert_eq!(app.count_rows("exchange_rates").await, 0);

    let run = "mutation($input: RunJobInput!) { runJob(input: $input) { jobRun { id } } }";
    for name in ["nope", "crm_sync"] {
        let resp = app
            .gql(&app.admin, run, json!({"input": {"name": name}}))
            .await;
        assert_eq!(error_field(&resp), "input.name", "{resp}");
    }
    assert_eq!(app.count_rows("job_runs").await, 0);

    let program = program_with(&app, json!({"type": "PERCENT", "rate": "10"}), json!({})).await;
    let alice = partner(&app, &program, "Alice").await;
    let payout =
        "mutation($input: CreatePayoutInput!) { createPayout(input: $input) { payout { id } } }";
    let resp = app
        .gql(
            &app.admin,
            payout,
            json!({"input": {"partnerId": alice.id, "currency": "dollars"}}),
        )
        .await;
    assert_eq!(error_field(&resp), "input.currency");
    let resp = app
        .gql(
            &app.admin,
            payout,
            json!({"input": {"partnerId": uuid::Uuid::now_v7().to_string(), "currency": "USD"}}),
        )
        .await;
    assert_eq!(error_code(&resp), "NOT_FOUND");
    let resp = app
        .gql(
            &app.admin,
            "mutation { markPayoutPaid(input: {id: \"nope\", reference: \"x\"}) { payout { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&resp), "NOT_FOUND");
    let resp = app
        .gql(
            &app.admin,
            "query($p: ID!) { kpis(programId: $p, from: \"2026-02-01T00:00:00Z\", to: \"2026-01-01T00:00:00Z\") { dealsWon } }",
            json!({"p": program}),
        )
        .await;
    assert_eq!(error_field(&resp), "to");
    assert_eq!(count(&app.db, "SELECT COUNT(*) AS n FROM payouts").await, 0);
}

db_tests!(
    percent_accrues_adjusts_and_reverses,
    tiers_and_a_clawback_that_moves_a_later_deal_down,
    an_open_deal_lost_while_the_partners_tiers_move,
    cap_minimum_flat_and_termination,
    a_plan_change_reprices_deals_on_the_next_run,
    currency_conversion_and_missing_rates,
    inverse_and_cross_rates_convert_rounded_once,
    a_deal_lost_after_its_clawback_period_is_locked,
    reattribution_moves_the_commission,
    payouts_gather_approved_entries,
    release_holds_approves_due_accruals,
    kpis_are_aggregates_scoped_to_the_key,
    partner_keys_cannot_run_jobs_pay_or_read_others,
    bad_input_is_rejected_and_writes_nothing,
);
