//! The plain-field fast path (`#[tandem_derive::plain_object]`) answers exactly as
//! async-graphql's generic executor. Queries are generated from introspection: every root
//! field, every object field below it without required arguments, to a fixed depth. Each is
//! sent twice, as written (fast path where it applies) and with every selection set wrapped in
//! an inline fragment (which sends it down the generic path), for an admin key and a partner
//! key; data and errors (less their text locations) must be identical.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::{db_tests, helpers::TestApp, isolation::insert_attributed_deal};

const DEPTH: usize = 4;

/// The named type under `NON_NULL`/`LIST` wrappers, and whether it is a leaf.
fn named(ty: &Value) -> (&str, &str) {
    let mut t = ty;
    while t["name"].is_null() {
        t = &t["ofType"];
    }
    (t["name"].as_str().unwrap(), t["kind"].as_str().unwrap())
}

/// A field: its name, its arguments (name, required), its type.
type FieldInfo = (String, Vec<(String, bool)>, Value);

struct Schema {
    /// Object type → fields.
    objects: BTreeMap<String, Vec<FieldInfo>>,
}

impl Schema {
    async fn load(app: &TestApp) -> Schema {
        let data = app
            .admin_ok(
                "{ __schema { types { name kind fields { name
                    args { name defaultValue type { kind } }
                    type { kind name ofType { kind name ofType { kind name ofType { kind name } } } }
                } } } }",
                json!({}),
            )
            .await;
        let mut objects = BTreeMap::new();
        for t in data["__schema"]["types"].as_array().unwrap() {
            let name = t["name"].as_str().unwrap();
            if t["kind"] != "OBJECT" || name.starts_with("__") {
                continue;
            }
            let fields = t["fields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let args = f["args"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| {
                            (
                                a["name"].as_str().unwrap().to_string(),
                                a["type"]["kind"] == "NON_NULL" && a["defaultValue"].is_null(),
                            )
                        })
                        .collect();
                    (
                        f["name"].as_str().unwrap().to_string(),
                        args,
                        f["type"].clone(),
                    )
                })
                .collect();
            objects.insert(name.to_string(), fields);
        }
        Schema { objects }
    }

    /// The selection set of `type_name` to `depth`; `generic` wraps every selection set in an
    /// inline fragment (which the fast path never takes). Records the object types it walks.
    fn selection(
        &self,
        type_name: &str,
        depth: usize,
        generic: bool,
        walked: &mut BTreeSet<String>,
    ) -> String {
        walked.insert(type_name.to_string());
        let mut out = vec!["__typename".to_string()];
        for (name, args, ty) in &self.objects[type_name] {
            if args.iter().any(|(_, required)| *required) {
                continue;
            }
            let (inner, kind) = named(ty);
            match kind {
                "OBJECT" if depth > 1 => {
                    let below = self.selection(inner, depth - 1, generic, walked);
                    out.push(format!("{name} {{ {below} }}"));
                }
                "OBJECT" => {}
                _ => out.push(name.clone()),
            }
        }
        if generic {
            format!("... on {type_name} {{ {} }}", out.join(" "))
        } else {
            out.join(" ")
        }
    }
}

/// Drops error locations (the two texts differ in length).
fn comparable(mut resp: Value) -> Value {
    if let Some(errors) = resp.get_mut("errors").and_then(Value::as_array_mut) {
        for error in errors {
            error.as_object_mut().unwrap().remove("locations");
        }
    }
    resp
}

/// Every `__typename` in a response.
fn typenames(value: &Value, seen: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(t)) = map.get("__typename") {
                seen.insert(t.clone());
            }
            map.values().for_each(|v| typenames(v, seen));
        }
        Value::Array(items) => items.iter().for_each(|v| typenames(v, seen)),
        _ => {}
    }
}

/// A program with a partner, referrals, attributed deals (one won, one deleted, one with a
/// stored amount that does not parse: its field errors on both paths), an exchange rate, a
/// reconcile run (ledger entries, deal commissions), a payout, a webhook source and endpoint.
async fn seed(app: &TestApp) -> BTreeMap<&'static str, String> {
    let program = app.create_program("P").await;
    let partner = app.create_partner(&program, "Alpha").await;
    let token = app.partner_key(&partner).await;
    let referrals = app.submit_referrals(&token, 3, "com").await;
    let mut deals = Vec::new();
    for (i, referral) in referrals.iter().enumerate() {
        deals.push(
            insert_attributed_deal(app, &program, &partner, Some(referral), &format!("D{i}")).await,
        );
    }
    let p = |n| app.db.placeholder(n);
    for (sql, id) in [
        (
            format!(
                "UPDATE deals SET status = 'WON', closed_at = created_at, stage = 'closedwon', \
                 company_domain = 'c0.com', referral_code = 'ABCD1234', amount = '1234.50' \
                 WHERE id = {}",
                p(1)
            ),
            &deals[0],
        ),
        (
            format!("UPDATE deals SET deleted = TRUE WHERE id = {}", p(1)),
            &deals[1],
        ),
    ] {
        app.db
            .execute_write(sql, vec![id.clone().into()])
            .await
            .unwrap();
    }
    app.admin_ok(
        "mutation { setExchangeRate(input: {base: \"EUR\", quote: \"USD\", rate: \"1.1\", \
         effectiveAt: \"2020-01-01T00:00:00Z\"}) { exchangeRate { base } } }",
        json!({}),
    )
    .await;
    app.admin_ok(
        "mutation { runJob(input: {name: \"reconcile\"}) { jobRun { status } } }",
        json!({}),
    )
    .await;
    // Stored before amounts were checked (after the reconcile, which would refuse it).
    app.db
        .execute_write(
            format!("UPDATE deals SET amount = 'bogus' WHERE id = {}", p(1)),
            vec![deals[2].clone().into()],
        )
        .await
        .unwrap();
    app.admin_ok(
        "mutation($p: ID!) { createWebhookSource(input: {programId: $p, name: \"in\", kind: STANDARD}) { source { id } } }",
        json!({"p": program}),
    )
    .await;
    // A payout run (a method, an approved adjustment, the run).
    app.admin_ok(
        "mutation($p: ID!) { setPayoutMethod(input: {partnerId: $p, kind: PAYPAL, paypalEmail: \"pay@partner.example\"}) { payoutMethod { kind } } }",
        json!({"p": partner}),
    )
    .await;
    app.admin_ok(
        "mutation($p: ID!) { createAdjustment(input: {partnerId: $p, amount: \"75\", currency: \"USD\", reason: \"bonus\"}) { ledgerEntry { id } } }",
        json!({"p": partner}),
    )
    .await;
    let run = app
        .admin_ok(
            "mutation($p: ID!) { createPayoutRun(input: {programId: $p, currency: \"USD\"}) { payoutRun { id } } }",
            json!({"p": program}),
        )
        .await["createPayoutRun"]["payoutRun"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    BTreeMap::from([
        ("payoutRun", run),
        ("program", program),
        ("partner", partner),
        ("referral", referrals[0].clone()),
        ("deal", deals[0].clone()),
        ("token", token),
    ])
}

async fn both_paths_answer_every_field_alike(app: TestApp) {
    let ids = seed(&app).await;
    let schema = Schema::load(&app).await;
    let mut walked = BTreeSet::new();
    let mut seen_admin = BTreeSet::new();
    let mut compared = 0;
    let unknown = "00000000-0000-0000-0000-000000000000".to_string();
    for (name, args, ty) in schema.objects["QueryRoot"].clone() {
        // Root arguments: the seeded ids; optional ones left out.
        let mut values = Vec::new();
        for (arg, required) in &args {
            if !required {
                continue;
            }
            let value = match (name.as_str(), arg.as_str()) {
                (_, "programId") => &ids["program"],
                (_, "partnerId") => &ids["partner"],
                ("program", "id") => &ids["program"],
                ("partner", "id") => &ids["partner"],
                ("referral", "id") => &ids["referral"],
                ("deal", "id") => &ids["deal"],
                ("payoutRun", "id") => &ids["payoutRun"],
                // No endpoint is seeded: both paths answer NOT_FOUND alike.
                ("webhookDelivery", "id") => &unknown,
                other => panic!("no value for the required root argument {other:?}"),
            };
            values.push(format!("{arg}: \"{value}\""));
        }
        let call = if values.is_empty() {
            name.clone()
        } else {
            format!("{name}({})", values.join(", "))
        };
        let (inner, kind) = named(&ty);
        let query = |generic: bool, walked: &mut BTreeSet<String>| {
            let body = if kind == "OBJECT" {
                format!("{{ {} }}", schema.selection(inner, DEPTH, generic, walked))
            } else {
                String::new()
            };
            format!("{{ {call} {body} }}")
        };
        let fast = query(false, &mut walked);
        let generic = query(true, &mut BTreeSet::new());
        for token in [app.admin.as_str(), ids["token"].as_str()] {
            let a = comparable(app.gql(token, &fast, json!({})).await);
            let b = comparable(app.gql(token, &generic, json!({})).await);
            assert_eq!(a, b, "{name} answers differently on the two paths\n{fast}");
            let text = a.to_string();
            assert!(
                !text.contains("complexity") && !text.contains("too deep"),
                "{name}: the generated query was refused: {text}"
            );
            if token == app.admin {
                typenames(&a, &mut seen_admin);
            }
            compared += 1;
        }
    }
    assert!(compared > 30, "{compared}");
    // Every object type with resolvers of its own was walked, and those the seed can produce
    // were answered with data.
    for expected in [
        "Program",
        "Partner",
        "Referral",
        "Deal",
        "DealCommission",
        "ApiKey",
        "Event",
        "LedgerEntry",
        "ExchangeRate",
        "JobRun",
        "WebhookSource",
        "Kpis",
    ] {
        assert!(walked.contains(expected), "{expected} was not walked");
        assert!(
            seen_admin.contains(expected),
            "{expected} had no data: {seen_admin:?}"
        );
    }
}

db_tests!(both_paths_answer_every_field_alike);
