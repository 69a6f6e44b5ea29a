//! Reward distribution (DESIGN §14): payout methods (validated, sealed, masked), payout runs
//! over 1,000 partners computed by hand, and their exports — the SEPA file validated against
//! ISO 20022's own `pain.001.001.03` schema by libxml2, the PayPal Payouts and plain CSVs.

use std::sync::Mutex;

use chrono::{Duration, Utc};
use futures_util::{StreamExt, stream};
use rust_decimal::Decimal;
use sea_orm::{ActiveValue::Set, EntityTrait};
use serde_json::{Value, json};
use tandem::db::{
    entities::ledger_entry,
    states::{LedgerEntryKind, LedgerEntryStatus},
};

use crate::{
    commissions::program_with,
    db_tests,
    helpers::{TestApp, count, error_code, error_field},
};

const SET_METHOD: &str = "mutation($input: SetPayoutMethodInput!) { setPayoutMethod(input: $input) { \
    payoutMethod { kind masked accountHolder } } }";

const CREATE_RUN: &str = "mutation($input: CreatePayoutRunInput!) { createPayoutRun(input: $input) { \
    payoutRun { id status total payoutCount currency minimumAmount \
    payouts { id partner { id } total currency status method runId shortId } \
    skipped { partnerId reason amount } } } }";

const EXPORT: &str = "mutation($input: ExportPayoutRunInput!) { exportPayoutRun(input: $input) { \
    export { filename contentType content payouts total } } }";

/// The ISO 20022 schema, shipped as a test fixture.
fn xsd_path() -> String {
    format!(
        "{}/tests/fixtures/iso20022/pain.001.001.03.xsd",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// libxml2's XML Schema validator, called directly (the `libxml` crate needs libclang to
/// build; these few functions are libxml2's stable C API).
mod xml2 {
    use std::ffi::{c_char, c_int, c_void};

    #[link(name = "xml2")]
    unsafe extern "C" {
        pub fn xmlSchemaNewParserCtxt(url: *const c_char) -> *mut c_void;
        pub fn xmlSchemaParse(ctxt: *mut c_void) -> *mut c_void;
        pub fn xmlSchemaFreeParserCtxt(ctxt: *mut c_void);
        pub fn xmlSchemaNewValidCtxt(schema: *mut c_void) -> *mut c_void;
        pub fn xmlSchemaValidateDoc(ctxt: *mut c_void, doc: *mut c_void) -> c_int;
        pub fn xmlSchemaFreeValidCtxt(ctxt: *mut c_void);
        pub fn xmlSchemaFree(schema: *mut c_void);
        pub fn xmlReadMemory(
            buffer: *const c_char,
            size: c_int,
            url: *const c_char,
            encoding: *const c_char,
            options: c_int,
        ) -> *mut c_void;
        pub fn xmlFreeDoc(doc: *mut c_void);
    }
}

/// libxml2 is used from one test thread at a time.
static LIBXML: Mutex<()> = Mutex::new(());

/// Validates `xml` against pain.001.001.03 with libxml2's XSD validator: `Err` with the
/// number of violations (libxml2 prints each on stderr).
fn validate_pain_001(xml: &str) -> Result<(), i32> {
    let _guard = LIBXML.lock().unwrap_or_else(|e| e.into_inner());
    let path = std::ffi::CString::new(xsd_path()).unwrap();
    // SAFETY: libxml2's documented create/use/free sequence; every pointer is checked before
    // use and freed once, and calls are serialised by the mutex above.
    unsafe {
        let parser = xml2::xmlSchemaNewParserCtxt(path.as_ptr());
        assert!(!parser.is_null(), "schema parser");
        let schema = xml2::xmlSchemaParse(parser);
        xml2::xmlSchemaFreeParserCtxt(parser);
        assert!(!schema.is_null(), "the XSD parses");
        let doc = xml2::xmlReadMemory(
            xml.as_ptr().cast(),
            i32::try_from(xml.len()).unwrap(),
            std::ptr::null(),
            std::ptr::null(),
            0,
        );
        if doc.is_null() {
            xml2::xmlSchemaFree(schema);
            return Err(-1);
        }
        let validator = xml2::xmlSchemaNewValidCtxt(schema);
        let result = xml2::xmlSchemaValidateDoc(validator, doc);
        xml2::xmlSchemaFreeValidCtxt(validator);
        xml2::xmlFreeDoc(doc);
        xml2::xmlSchemaFree(schema);
        if result == 0 { Ok(()) } else { Err(result) }
    }
}

/// Each `(input, field)` sent as `query`'s input (with `fixed` added) is refused as
/// `BAD_USER_INPUT` naming `field`.
async fn assert_rejects(
    app: &TestApp,
    query: &str,
    fixed: (&str, Value),
    cases: Vec<(Value, &str)>,
) {
    for (mut input, field) in cases {
        input[fixed.0] = fixed.1.clone();
        let got = app.gql(&app.admin, query, json!({"input": input})).await;
        assert_eq!(error_field(&got), field, "{got}");
    }
}

/// The text of every `<tag>` in `xml`, in order.
fn texts(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start..];
        let Some(gt) = after.find('>') else { break };
        let Some(end) = after.find(&close) else { break };
        out.push(after[gt + 1..end].to_string());
        rest = &after[end + close.len()..];
    }
    out
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// Appends ledger entries for a partner directly (the reconciler's output is tested
/// elsewhere): `(amount, status, available ago in minutes)`.
pub async fn seed_entries(
    app: &TestApp,
    program: &str,
    partner: &str,
    entries: &[(&str, LedgerEntryStatus, i64)],
) {
    seed_entries_in(app, program, partner, "EUR", entries).await;
}

/// [`seed_entries`] in `currency`.
pub async fn seed_entries_in(
    app: &TestApp,
    program: &str,
    partner: &str,
    currency: &str,
    entries: &[(&str, LedgerEntryStatus, i64)],
) {
    let now = Utc::now();
    let rows: Vec<ledger_entry::ActiveModel> = entries
        .iter()
        .map(|(amount, status, ago)| ledger_entry::ActiveModel {
            id: Set(tandem::domain::ids::new_id()),
            partner_id: Set(partner.to_string()),
            program_id: Set(program.to_string()),
            deal_id: Set(None),
            payout_id: Set(None),
            kind: Set(LedgerEntryKind::Adjustment),
            amount_cents: Set((dec(amount) * Decimal::ONE_HUNDRED).try_into().unwrap()),
            currency: Set(currency.into()),
            status: Set(*status),
            created_at: Set(now - Duration::days(40)),
            available_at: Set(now - Duration::minutes(*ago)),
            updated_at: Set(now),
            deal_seq: Set(None),
            invoice_id: Set(None),
            invoice_seq: Set(None),
            note: Set(None),
            hold_reason: Set((*status == LedgerEntryStatus::Held)
                .then_some(tandem::db::states::HoldReason::AboveReviewThreshold)),
            declines: Set(None),
        })
        .collect();
    let tx = app.db.begin_write().await.unwrap();
    ledger_entry::Entity::insert_many(rows)
        .exec_without_returning(&*tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// A valid German IBAN for account number `n` (check digits computed by ISO 7064 mod 97-10).
fn iban_for(n: u64) -> String {
    let bban = format!("37040044{n:010}");
    // "DE" = 13 14, then "00" for the check digits.
    let digits = format!("{bban}131400");
    let remainder = digits
        .bytes()
        .fold(0u64, |acc, b| (acc * 10 + u64::from(b - b'0')) % 97);
    format!("DE{:02}{bban}", 98 - remainder)
}

async fn a_month_end_run_over_a_thousand_partners(app: TestApp) {
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "10"}),
        json!({"currency": "EUR"}),
    )
    .await;
    const N: usize = 1_000;
    let ids: Vec<String> = stream::iter(0..N)
        .map(|i| {
            let app = &app;
            let program = &program;
            async move {
                app.create_partner(program, &format!("Partner {i:04}"))
                    .await
            }
        })
        .buffered(8)
        .collect()
        .await;
    // 3 without a method (0..3), 5 under the minimum (3..8), 2 with held entries (8..10),
    // 2 suspended (10..12).
    let no_method = &ids[0..3];
    let under = &ids[3..8];
    let holding = &ids[8..10];
    let suspended = &ids[10..12];
    let results: Vec<Value> = stream::iter(ids.iter().enumerate().skip(3))
        .map(|(i, id)| {
            let app = &app;
            async move {
                app.gql(
                    &app.admin,
                    SET_METHOD,
                    json!({"input": {"partnerId": id, "kind": "SEPA", "iban": iban_for(i as u64),
                                     "bic": if i % 2 == 0 { Value::from("COBADEFFXXX") } else { Value::Null },
                                     "accountHolder": format!("Partner {i:04} GmbH")}}),
                )
                .await
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for r in &results {
        assert!(r["errors"].is_null(), "{r}");
    }
    for id in suspended {
        app.admin_ok(
            "mutation($id: ID!) { updatePartnerStatus(input: {id: $id, status: SUSPENDED}) { partner { id } } }",
            json!({"id": id}),
        )
        .await;
    }
    // Every partner: two approved entries available before the cutoff (paid), one approved
    // after it, one pending, one already paid out elsewhere (none of those three paid).
    let mut expected: Vec<(String, Decimal)> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (a, b) = if under.contains(id) {
            ("10.00".to_string(), "-2.50".to_string())
        } else {
            (
                format!("{}.{:02}", 50 + i % 200, i % 100),
                "12.34".to_string(),
            )
        };
        if holding.contains(id) {
            seed_entries(
                &app,
                &program,
                id,
                &[("400.00", LedgerEntryStatus::Held, 60 * 24 * 3)],
            )
            .await;
        }
        seed_entries(
            &app,
            &program,
            id,
            &[
                (&a, LedgerEntryStatus::Approved, 60 * 24 * 3),
                (&b, LedgerEntryStatus::Approved, 60 * 24 * 2),
                ("99.00", LedgerEntryStatus::Approved, 10),
                ("77.00", LedgerEntryStatus::Pending, -60 * 24),
                ("55.00", LedgerEntryStatus::Paid, 60 * 24 * 30),
            ],
        )
        .await;
        expected.push((id.clone(), dec(&a) + dec(&b)));
    }
    let cutoff = Utc::now() - Duration::hours(1);
    let run = app
        .admin_ok(
            CREATE_RUN,
            json!({"input": {"programId": program, "currency": "eur", "cutoff": cutoff.to_rfc3339(),
                             "minimumAmount": "25"}}),
        )
        .await["createPayoutRun"]["payoutRun"]
        .clone();
    // Exact payouts: everyone but the ten, each its two available entries.
    let paid: Vec<&(String, Decimal)> = expected
        .iter()
        .filter(|(id, _)| !no_method.contains(id) && !under.contains(id) && !suspended.contains(id))
        .collect();
    assert_eq!(run["payoutCount"], paid.len());
    assert_eq!(
        paid.len(),
        990,
        "the partners with held entries are paid the rest"
    );
    let mut got: Vec<(String, Decimal)> = run["payouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["currency"], "EUR");
            assert_eq!(p["status"], "PENDING");
            assert_eq!(p["method"], "SEPA");
            assert_eq!(p["runId"], run["id"]);
            (
                p["partner"]["id"].as_str().unwrap().to_string(),
                dec(p["total"].as_str().unwrap()),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, Decimal)> = paid.iter().map(|p| (*p).clone()).collect();
    want.sort();
    assert_eq!(got, want);
    let total: Decimal = want.iter().map(|(_, t)| *t).sum();
    assert_eq!(dec(run["total"].as_str().unwrap()), total);
    // The skipped list, with what each would have been paid.
    let mut skipped: Vec<(String, String, Decimal)> = run["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["partnerId"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
                dec(s["amount"].as_str().unwrap()),
            )
        })
        .collect();
    skipped.sort();
    let mut want_skipped: Vec<(String, String, Decimal)> = holding
        .iter()
        .map(|id| (id.clone(), "ENTRIES_HELD".to_string(), dec("400.00")))
        .collect();
    want_skipped.extend(expected.iter().filter_map(|(id, amount)| {
        let reason = if no_method.contains(id) {
            "NO_PAYOUT_METHOD"
        } else if under.contains(id) {
            "BELOW_MINIMUM"
        } else if suspended.contains(id) {
            "PARTNER_SUSPENDED"
        } else {
            return None;
        };
        Some((id.clone(), reason.to_string(), *amount))
    }));
    want_skipped.sort();
    assert_eq!(skipped, want_skipped);

    // The SEPA file validates against ISO 20022's schema; its control sums are the run total.
    app.admin_ok(
        "mutation($p: ID!) { setProgramPayoutAccount(input: {programId: $p, accountHolder: \"Acme Cloud SE\", iban: \"DE89 3704 0044 0532 0130 00\", bic: \"COBADEFFXXX\"}) { program { payoutAccount } } }",
        json!({"p": program}),
    )
    .await;
    let export = app
        .admin_ok(
            EXPORT,
            json!({"input": {"id": run["id"], "format": "SEPA_PAIN_001"}}),
        )
        .await["exportPayoutRun"]["export"]
        .clone();
    assert_eq!(export["contentType"], "application/xml");
    assert_eq!(export["payouts"], 990);
    let xml = export["content"].as_str().unwrap();
    validate_pain_001(xml)
        .unwrap_or_else(|n| panic!("pain.001 invalid: {n} violations (see stderr)"));
    let sums = texts(xml, "CtrlSum");
    assert_eq!(sums.len(), 2, "group header and payment information");
    for sum in &sums {
        assert_eq!(dec(sum), total);
    }
    assert_eq!(texts(xml, "NbOfTxs"), ["990", "990"]);
    let amounts: Decimal = texts(xml, "InstdAmt").iter().map(|a| dec(a)).sum();
    assert_eq!(amounts, total);
    // One transaction per payout, its end-to-end id the payout id (compact form).
    let mut ends = texts(xml, "EndToEndId");
    ends.sort();
    let mut payout_ids: Vec<String> = run["payouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().replace('-', ""))
        .collect();
    payout_ids.sort();
    assert_eq!(ends, payout_ids);
    // Nothing in the file is the sealed form, and the schema check can fail.
    assert!(!xml.contains("v1:"));
    let broken = xml.replacen("<NbOfTxs>990</NbOfTxs>", "", 1);
    assert!(
        validate_pain_001(&broken).is_err(),
        "the validator rejects a file without NbOfTxs"
    );

    // The bank confirms: the run is paid, and balances show it.
    let paid_run = app
        .admin_ok(
            "mutation($id: ID!) { markPayoutRunPaid(input: {id: $id, reference: \"BANK-2026-12\"}) { payoutRun { status } } }",
            json!({"id": run["id"]}),
        )
        .await;
    assert_eq!(paid_run["markPayoutRunPaid"]["payoutRun"]["status"], "PAID");
    let paid_events = count(
        &app.db,
        "SELECT COUNT(*) AS n FROM events WHERE type = 'payout.paid'",
    )
    .await;
    assert_eq!(paid_events, 990);
    let again = app
        .gql(
            &app.admin,
            "mutation($id: ID!) { markPayoutRunPaid(input: {id: $id, reference: \"again\"}) { payoutRun { status } } }",
            json!({"id": run["id"]}),
        )
        .await;
    assert_eq!(error_code(&again), "CONFLICT", "{again}");
    // A second run pays nothing twice: only the twelve skipped remain, still skipped.
    let second = app
        .admin_ok(
            CREATE_RUN,
            json!({"input": {"programId": program, "currency": "EUR", "cutoff": cutoff.to_rfc3339(),
                             "minimumAmount": "25"}}),
        )
        .await["createPayoutRun"]["payoutRun"]
        .clone();
    assert_eq!(second["payoutCount"], 0);
    assert_eq!(second["skipped"].as_array().unwrap().len(), 12);
}

async fn methods_are_validated_sealed_and_masked(app: TestApp) {
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "10"}),
        json!({"currency": "EUR"}),
    )
    .await;
    let alpha = app.create_partner(&program, "Alpha").await;
    let beta = app.create_partner(&program, "Beta").await;
    let alpha_key = app.partner_key(&alpha).await;
    // A partner sets its own method and sees it masked.
    let set = app
        .gql(
            &alpha_key,
            SET_METHOD,
            json!({"input": {"partnerId": alpha, "kind": "SEPA", "iban": "de89 3704 0044 0532 0130 00",
                             "bic": "cobadeff", "accountHolder": "Alpha GmbH"}}),
        )
        .await;
    assert_eq!(
        set["data"]["setPayoutMethod"]["payoutMethod"],
        json!({"kind": "SEPA", "masked": "DE89 **** **** **** **30 00", "accountHolder": "Alpha GmbH"}),
        "{set}"
    );
    // Stored sealed: the IBAN appears nowhere in the row.
    let stored = tandem::db::entities::payout_method::Entity::find_by_id(alpha.clone())
        .one(app.db.reads())
        .await
        .unwrap()
        .unwrap();
    assert!(stored.details.starts_with("v1:"), "{}", stored.details);
    for clear in ["370400440532013000", "3704 0044", "Alpha GmbH"] {
        assert!(
            !stored.details.contains(clear),
            "{clear} in {}",
            stored.details
        );
    }
    // Not another partner's.
    let other = app
        .gql(
            &alpha_key,
            SET_METHOD,
            json!({"input": {"partnerId": beta, "kind": "PAYPAL", "paypalEmail": "x@y.example"}}),
        )
        .await;
    assert_eq!(error_code(&other), "NOT_FOUND", "{other}");
    // Bad input names the field.
    assert_rejects(
        &app,
        SET_METHOD,
        ("partnerId", json!(alpha)),
        vec![
        (
            json!({"kind": "SEPA", "iban": "DE89 3704 0044 0532 0130 01", "accountHolder": "A"}),
            "input.iban",
        ),
        (
            json!({"kind": "SEPA", "iban": "DE89370400440532013000", "bic": "DEUT1EFF", "accountHolder": "A"}),
            "input.bic",
        ),
        (
            json!({"kind": "SEPA", "iban": "DE89370400440532013000"}),
            "input.accountHolder",
        ),
        (
            json!({"kind": "SEPA", "iban": "DE89370400440532013000", "accountHolder": "A", "paypalEmail": "a@b.example"}),
            "input.paypalEmail",
        ),
        (
            json!({"kind": "PAYPAL", "paypalEmail": "not an address"}),
            "input.paypalEmail",
        ),
        (json!({"kind": "PAYPAL"}), "input.paypalEmail"),
        (
            json!({"kind": "STRIPE_CONNECT", "stripeAccountId": "acc_123"}),
            "input.stripeAccountId",
        ),
        ],
    )
    .await;
    let paypal = app
        .admin_ok(
            SET_METHOD,
            json!({"input": {"partnerId": beta, "kind": "PAYPAL", "paypalEmail": "Olga@Beta.example"}}),
        )
        .await;
    assert_eq!(
        paypal["setPayoutMethod"]["payoutMethod"]["masked"],
        "o***@beta.example"
    );
    let read = app
        .gql(
            &alpha_key,
            "query($id: ID!) { partner(id: $id) { payoutMethod { kind masked } } }",
            json!({"id": alpha}),
        )
        .await;
    assert_eq!(
        read["data"]["partner"]["payoutMethod"]["masked"],
        "DE89 **** **** **** **30 00"
    );
}

async fn paypal_and_csv_exports(app: TestApp) {
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "10"}),
        json!({"currency": "USD"}),
    )
    .await;
    let mut ids = Vec::new();
    for (i, method) in [
        json!({"kind": "PAYPAL", "paypalEmail": "ana@alpha.example"}),
        json!({"kind": "PAYPAL", "paypalEmail": "ben@beta.example"}),
        json!({"kind": "STRIPE_CONNECT", "stripeAccountId": "acct_1Nv0FGQ9RKHgCVdK"}),
    ]
    .into_iter()
    .enumerate()
    {
        let id = app
            .create_partner(&program, &format!("Partner, {i} \"quoted\""))
            .await;
        let mut input = method;
        input["partnerId"] = json!(id);
        app.admin_ok(SET_METHOD, json!({"input": input})).await;
        let cents = 10_050 * (i + 1);
        let amount = format!("{}.{:02}", cents / 100, cents % 100);
        seed_entries_in(
            &app,
            &program,
            &id,
            "USD",
            &[(&amount, LedgerEntryStatus::Approved, 60 * 24)],
        )
        .await;
        ids.push(id);
    }
    let run = app
        .admin_ok(
            CREATE_RUN,
            json!({"input": {"programId": program, "currency": "USD"}}),
        )
        .await["createPayoutRun"]["payoutRun"]
        .clone();
    assert_eq!(run["payoutCount"], 3);
    assert_eq!(run["total"], "603.00");
    let short = |partner: &str| {
        run["payouts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["partner"]["id"] == partner)
            .unwrap()["shortId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // PayPal's batch upload: recipient, amount, currency, customer id (≤ 30), note; no header.
    let paypal = app
        .admin_ok(
            EXPORT,
            json!({"input": {"id": run["id"], "format": "PAYPAL_PAYOUTS_CSV"}}),
        )
        .await["exportPayoutRun"]["export"]
        .clone();
    assert_eq!(paypal["payouts"], 2);
    assert_eq!(paypal["total"], "301.50");
    let mut lines: Vec<&str> = paypal["content"].as_str().unwrap().lines().collect();
    lines.sort();
    let mut want = vec![
        format!(
            "ana@alpha.example,100.50,USD,{},Commissions commission",
            short(&ids[0])
        ),
        format!(
            "ben@beta.example,201.00,USD,{},Commissions commission",
            short(&ids[1])
        ),
    ];
    want.sort();
    assert_eq!(lines, want);
    assert!(short(&ids[0]).len() <= 30 && !short(&ids[0]).contains(' '));
    // The plain CSV lists every payout, quoting what needs it; accounts masked.
    let csv = app
        .admin_ok(EXPORT, json!({"input": {"id": run["id"], "format": "CSV"}}))
        .await["exportPayoutRun"]["export"]
        .clone();
    let content = csv["content"].as_str().unwrap();
    let mut reader = ::csv::Reader::from_reader(content.as_bytes());
    let rows: Vec<::csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 3);
    let stripe = rows.iter().find(|r| &r[3] == "STRIPE_CONNECT").unwrap();
    assert_eq!(&stripe[2], "Partner, 2 \"quoted\"");
    assert_eq!(&stripe[4], "acct_****CVdK");
    assert_eq!(&stripe[5], "301.50");
    // Paying the run's payouts one by one moves the run: PARTIALLY_PAID, then PAID.
    const MARK: &str = "mutation($id: ID!, $r: String!) { markPayoutPaid(input: {id: $id, reference: $r}) { payout { status } } }";
    let payouts: Vec<Value> = run["payouts"].as_array().unwrap().clone();
    for (i, p) in payouts.iter().enumerate() {
        app.admin_ok(MARK, json!({"id": p["id"], "r": format!("bank-{i}")}))
            .await;
        let want = if i + 1 == payouts.len() {
            "PAID"
        } else {
            "PARTIALLY_PAID"
        };
        let status = app
            .admin_ok(
                "query($id: ID!) { payoutRun(id: $id) { status } }",
                json!({"id": run["id"]}),
            )
            .await["payoutRun"]["status"]
            .clone();
        assert_eq!(status, want, "after {} paid", i + 1);
    }
    // SEPA for a USD run is refused; so is a run with no payout for the rail.
    let sepa = app
        .gql(
            &app.admin,
            EXPORT,
            json!({"input": {"id": run["id"], "format": "SEPA_PAIN_001"}}),
        )
        .await;
    assert_eq!(error_code(&sepa), "CONFLICT", "{sepa}");
    // Rejections: bad currency, minimum, cutoff; unknown program; partner keys.
    assert_rejects(
        &app,
        CREATE_RUN,
        ("programId", json!(program)),
        vec![
            (json!({"currency": "dollars"}), "input.currency"),
            (
                json!({"currency": "USD", "minimumAmount": "0"}),
                "input.minimumAmount",
            ),
            (
                json!({"currency": "USD", "cutoff": (Utc::now() + Duration::days(2)).to_rfc3339()}),
                "input.cutoff",
            ),
        ],
    )
    .await;
    let key = app.partner_key(&ids[0]).await;
    let got = app
        .gql(
            &key,
            CREATE_RUN,
            json!({"input": {"programId": program, "currency": "USD"}}),
        )
        .await;
    assert_eq!(error_code(&got), "FORBIDDEN", "{got}");
}

async fn adjustments_are_appended_with_their_reason(app: TestApp) {
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "10"}),
        json!({"currency": "EUR"}),
    )
    .await;
    let alpha = app.create_partner(&program, "Alpha").await;
    let key = app.partner_key(&alpha).await;
    const ADJUST: &str = "mutation($input: CreateAdjustmentInput!) { createAdjustment(input: $input) { \
        ledgerEntry { id kind amount currency status note } } }";
    let bonus = app
        .admin_ok(
            ADJUST,
            json!({"input": {"partnerId": alpha, "amount": "125.00", "currency": "eur", "reason": "Q4 launch bonus"}}),
        )
        .await;
    assert_eq!(
        bonus["createAdjustment"]["ledgerEntry"]["status"],
        "APPROVED"
    );
    app.admin_ok(
        ADJUST,
        json!({"input": {"partnerId": alpha, "amount": "-25", "currency": "EUR", "reason": "Duplicate bonus"}}),
    )
    .await;
    // The partner sees both, with the reasons, and their net in its balance.
    let seen = app
        .ok(
            &key,
            "query($p: ID!) { ledgerEntries(first: 10) { edges { node { kind amount note } } } balances(partnerId: $p) { currency approved } }",
            json!({"p": alpha}),
        )
        .await;
    let mut entries: Vec<(Value, Value, Value)> = seen["ledgerEntries"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let n = &e["node"];
            (n["kind"].clone(), n["amount"].clone(), n["note"].clone())
        })
        .collect();
    entries.sort_by_key(|e| e.1.to_string());
    assert_eq!(
        entries,
        [
            (
                json!("ADJUSTMENT"),
                json!("-25.00"),
                json!("Duplicate bonus")
            ),
            (
                json!("ADJUSTMENT"),
                json!("125.00"),
                json!("Q4 launch bonus")
            ),
        ]
    );
    assert_eq!(
        seen["balances"],
        json!([{"currency": "EUR", "approved": "100.00"}])
    );
    // A run pays the net.
    app.admin_ok(
        SET_METHOD,
        json!({"input": {"partnerId": alpha, "kind": "PAYPAL", "paypalEmail": "ops@alpha.example"}}),
    )
    .await;
    let run = app
        .admin_ok(
            CREATE_RUN,
            json!({"input": {"programId": program, "currency": "EUR"}}),
        )
        .await;
    assert_eq!(run["createPayoutRun"]["payoutRun"]["total"], "100.00");
    // Rejections name the field; partner keys cannot adjust.
    assert_rejects(
        &app,
        ADJUST,
        ("partnerId", json!(alpha)),
        vec![
            (
                json!({"amount": "0", "currency": "EUR", "reason": "x"}),
                "input.amount",
            ),
            (
                json!({"amount": "1.005", "currency": "EUR", "reason": "x"}),
                "input.amount",
            ),
            (
                json!({"amount": "1", "currency": "euros", "reason": "x"}),
                "input.currency",
            ),
            (
                json!({"amount": "1", "currency": "EUR", "reason": "  "}),
                "input.reason",
            ),
        ],
    )
    .await;
    let got = app
        .gql(
            &key,
            ADJUST,
            json!({"input": {"partnerId": alpha, "amount": "1", "currency": "EUR", "reason": "me"}}),
        )
        .await;
    assert_eq!(error_code(&got), "FORBIDDEN", "{got}");
}

/// A partner's entries as (deal external id, kind, amount, status, hold reason, note).
async fn entries(
    app: &TestApp,
    partner: &str,
) -> Vec<(String, String, String, String, Value, Value)> {
    let data = app
        .admin_ok(
            "query($p: ID!) { ledgerEntries(filter: {partnerId: $p}, first: 100) { edges { node {
                id kind amount status holdReason note deal { externalId } } } } }",
            json!({"p": partner}),
        )
        .await;
    let mut out: Vec<_> = data["ledgerEntries"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let n = &e["node"];
            (
                n["deal"]["externalId"].as_str().unwrap_or("").to_string(),
                n["kind"].as_str().unwrap().to_string(),
                n["amount"].as_str().unwrap().to_string(),
                n["status"].as_str().unwrap().to_string(),
                n["holdReason"].clone(),
                n["note"].clone(),
            )
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.2).cmp(&(&b.0, &b.2)));
    out
}

async fn entry_id(app: &TestApp, partner: &str, deal: &str, status: &str) -> Value {
    let data = app
        .admin_ok(
            "query($p: ID!) { ledgerEntries(filter: {partnerId: $p}, first: 100) { edges { node {
                id status deal { externalId } } } } }",
            json!({"p": partner}),
        )
        .await;
    data["ledgerEntries"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["node"])
        .find(|n| n["deal"]["externalId"] == deal && n["status"] == status)
        .unwrap_or_else(|| panic!("no {status} entry of {deal}: {data}"))["id"]
        .clone()
}

async fn holds_release_and_decline(app: TestApp) {
    use crate::commissions::{Crm, reconcile, run_job};
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "10"}),
        json!({"currency": "USD", "holdDays": 0, "manualReviewAbove": "1000"}),
    )
    .await;
    let created = app
        .admin_ok(
            "mutation($p: ID!) { createPartner(input: {programId: $p, name: \"Acme\", domain: \"https://www.Acme.example/\", contactEmail: \"ops@acme.example\"}) { partner { id referralCode } } }",
            json!({"p": program}),
        )
        .await;
    let acme = created["createPartner"]["partner"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let code = created["createPartner"]["partner"]["referralCode"]
        .as_str()
        .unwrap()
        .to_string();
    let key = app.partner_key(&acme).await;
    app.admin_ok(
        SET_METHOD,
        json!({"input": {"partnerId": acme, "kind": "PAYPAL", "paypalEmail": "ops@acme.example"}}),
    )
    .await;
    let mut crm = Crm::new(&app, &program).await;
    // A deal for the partner's own company (by a contact's address): a self-referral.
    crm.deal(
        &app,
        json!({"id": "SELF", "amount": "2000", "status": "won", "closedAt": Utc::now().to_rfc3339(),
               "referralCode": code, "contactEmails": ["cfo@acme.example"]}),
    )
    .await;
    // One above the review threshold (commission 1,500 > 1,000), one ordinary.
    crm.won(&app, "BIG", "15000", 0, &code).await;
    crm.won(&app, "OK", "500", 0, &code).await;
    reconcile(&app).await;
    run_job(&app, "release-holds", false).await;
    assert_eq!(
        entries(&app, &acme).await,
        [
            (
                "BIG".into(),
                "ACCRUAL".into(),
                "1500.00".into(),
                "HELD".into(),
                json!("ABOVE_REVIEW_THRESHOLD"),
                Value::Null
            ),
            (
                "OK".into(),
                "ACCRUAL".into(),
                "50.00".into(),
                "APPROVED".into(),
                Value::Null,
                Value::Null
            ),
            (
                "SELF".into(),
                "ACCRUAL".into(),
                "200.00".into(),
                "HELD".into(),
                json!("SELF_REFERRAL"),
                Value::Null
            ),
        ]
    );
    let balances = app
        .ok(
            &key,
            "query($p: ID!) { balances(partnerId: $p) { approved held } }",
            json!({"p": acme}),
        )
        .await;
    assert_eq!(
        balances["balances"],
        json!([{"approved": "50.00", "held": "1700.00"}])
    );
    let held_events = count(
        &app.db,
        "SELECT COUNT(*) AS n FROM events WHERE type = 'commission.held'",
    )
    .await;
    assert_eq!(held_events, 2);
    // Held entries are never paid: the run pays the ordinary one only.
    let run = app
        .admin_ok(
            CREATE_RUN,
            json!({"input": {"programId": program, "currency": "USD"}}),
        )
        .await["createPayoutRun"]["payoutRun"]
        .clone();
    assert_eq!(run["total"], "50.00");
    // The self-referral is reviewed and released, then paid by the next run.
    let released = app
        .admin_ok(
            "mutation($id: ID!) { releaseHeldEntry(input: {id: $id}) { ledgerEntry { status holdReason } } }",
            json!({"id": entry_id(&app, &acme, "SELF", "HELD").await}),
        )
        .await;
    assert_eq!(
        released["releaseHeldEntry"]["ledgerEntry"],
        json!({"status": "APPROVED", "holdReason": "SELF_REFERRAL"})
    );
    let run = app
        .admin_ok(
            CREATE_RUN,
            json!({"input": {"programId": program, "currency": "USD"}}),
        )
        .await["createPayoutRun"]["payoutRun"]
        .clone();
    assert_eq!(run["total"], "200.00");
    // The big one is declined: the partner reads the reason, and it nets to zero.
    let big = entry_id(&app, &acme, "BIG", "HELD").await;
    let declined = app
        .admin_ok(
            "mutation($id: ID!) { declineLedgerEntry(input: {id: $id, reason: \"Deal under audit\"}) { declined { status } reversal { kind amount status note declines } } }",
            json!({"id": big}),
        )
        .await;
    assert_eq!(
        declined["declineLedgerEntry"]["reversal"],
        json!({"kind": "REVERSAL", "amount": "-1500.00", "status": "APPROVED",
               "note": "Deal under audit", "declines": big})
    );
    let seen = app
        .ok(
            &key,
            "query($p: ID!) { ledgerEntries(filter: {kind: REVERSAL}, first: 5) { edges { node { amount note } } } balances(partnerId: $p) { approved held } }",
            json!({"p": acme}),
        )
        .await;
    assert_eq!(
        seen["ledgerEntries"]["edges"][0]["node"],
        json!({"amount": "-1500.00", "note": "Deal under audit"})
    );
    assert_eq!(
        seen["balances"],
        json!([{"approved": "0.00", "held": "0.00"}])
    );
    // The reconciler keeps the declined commission at zero, whatever the deal does next.
    let full = run_job(&app, "reconcile", true).await;
    assert_eq!(full["entriesWritten"], 0, "{full}");
    crm.deal(
        &app,
        json!({"id": "BIG", "amount": "20000", "status": "won", "closedAt": Utc::now().to_rfc3339(),
               "referralCode": code}),
    )
    .await;
    let stats = reconcile(&app).await;
    assert_eq!(stats["entriesWritten"], 0, "{stats}");
    let state = app
        .admin_ok(
            "query { deals(first: 10) { edges { node { externalId commission { state expected } } } } }",
            json!({}),
        )
        .await;
    let big_state = state["deals"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"]["externalId"] == "BIG")
        .unwrap()["node"]["commission"]
        .clone();
    assert_eq!(big_state, json!({"state": "DECLINED", "expected": "0.00"}));
    // Declining twice, or an entry already paid, is a conflict; a reason is required.
    let twice = app
        .gql(
            &app.admin,
            "mutation($id: ID!) { declineLedgerEntry(input: {id: $id, reason: \"again\"}) { reversal { id } } }",
            json!({"id": big}),
        )
        .await;
    assert_eq!(error_code(&twice), "CONFLICT", "{twice}");
    let no_reason = app
        .gql(
            &app.admin,
            "mutation($id: ID!) { declineLedgerEntry(input: {id: $id, reason: \"\"}) { reversal { id } } }",
            json!({"id": entry_id(&app, &acme, "OK", "APPROVED").await}),
        )
        .await;
    assert_eq!(error_field(&no_reason), "input.reason", "{no_reason}");
    let released_twice = app
        .gql(
            &app.admin,
            "mutation($id: ID!) { releaseHeldEntry(input: {id: $id}) { ledgerEntry { id } } }",
            json!({"id": big}),
        )
        .await;
    assert_eq!(error_code(&released_twice), "CONFLICT", "{released_twice}");
    let by_partner = app
        .gql(
            &key,
            "mutation($id: ID!) { releaseHeldEntry(input: {id: $id}) { ledgerEntry { id } } }",
            json!({"id": big}),
        )
        .await;
    assert_eq!(error_code(&by_partner), "FORBIDDEN", "{by_partner}");

    // A suspended partner's accruals are held; a deal lost while held reverses within the hold.
    app.admin_ok(
        "mutation($id: ID!) { updatePartnerStatus(input: {id: $id, status: SUSPENDED}) { partner { id } } }",
        json!({"id": acme}),
    )
    .await;
    crm.won(&app, "LATER", "100", 0, &code).await;
    reconcile(&app).await;
    crm.deal(
        &app,
        json!({"id": "LATER", "amount": "100", "status": "lost", "referralCode": code}),
    )
    .await;
    reconcile(&app).await;
    let later: Vec<_> = entries(&app, &acme)
        .await
        .into_iter()
        .filter(|e| e.0 == "LATER")
        .collect();
    assert_eq!(
        later,
        [
            (
                "LATER".into(),
                "REVERSAL".into(),
                "-10.00".into(),
                "HELD".into(),
                json!("PARTNER_SUSPENDED"),
                Value::Null
            ),
            (
                "LATER".into(),
                "ACCRUAL".into(),
                "10.00".into(),
                "HELD".into(),
                json!("PARTNER_SUSPENDED"),
                Value::Null
            ),
        ]
    );
}

db_tests!(
    holds_release_and_decline,
    adjustments_are_appended_with_their_reason,
    a_month_end_run_over_a_thousand_partners,
    methods_are_validated_sealed_and_masked,
    paypal_and_csv_exports
);
