//! Partner groups (DESIGN §13): the worked example of the issue, computed by hand — Silver
//! (default, 10 %) and Gold (≥ 3 won deals and ≥ 50,000 won revenue in 365 days and 2 certified
//! people, 15 %); promotion at once, demotion only at the group review, a manual override that
//! holds, the group plan in force at each deal's close, and what partner keys see.

use chrono::{Duration, Utc};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use serde_json::{Value, json};
use tandem::db::entities::certification;

use crate::{
    commissions::{Crm, partner, program_with, reconcile, run_job},
    db_tests,
    helpers::{TestApp, error_code, error_field, nodes},
    registration::integration_key,
};

const CREATE: &str = "mutation($input: CreatePartnerGroupInput!) { createPartnerGroup(input: $input) { \
    group { id name rank isDefault holdDays commission { type rate } rules { minDealsWon minWonRevenue \
    windowDays requiredCertifications minCertifiedPeople } } } }";

const SET: &str = "mutation($input: SetPartnerGroupInput!) { setPartnerGroup(input: $input) { \
    membership { group { name } reason manual note until } } }";

const STANDING: &str = "query($id: ID!) { partner(id: $id) { group { name rank } \
    groupHistory { group { name } reason manual note until } \
    nextGroupProgress { group { name } dealsWonNeeded revenueNeeded certificationsNeeded \
    missingCertifications certifiedPeopleNeeded } } }";

async fn create_group(app: &TestApp, input: Value) -> Value {
    app.admin_ok(CREATE, json!({"input": input})).await["createPartnerGroup"]["group"].clone()
}

async fn standing(app: &TestApp, token: &str, partner: &str) -> Value {
    let got = app.gql(token, STANDING, json!({"id": partner})).await;
    assert!(got["errors"].is_null(), "{got}");
    got["data"]["partner"].clone()
}

/// The deal's commission entries as (amount, hold days).
async fn entries_of(app: &TestApp, partner: &str) -> Vec<(String, String, i64)> {
    let data = app
        .admin_ok(
            "query($f: LedgerEntryFilter) { ledgerEntries(filter: $f, first: 100) { edges { node {
                kind amount createdAt availableAt deal { externalId } } } } }",
            json!({"f": {"partnerId": partner}}),
        )
        .await;
    let mut out: Vec<(String, String, i64)> = nodes(&data["ledgerEntries"])
        .into_iter()
        .map(|e| {
            let at = |k: &str| {
                chrono::DateTime::parse_from_rfc3339(e[k].as_str().unwrap())
                    .unwrap()
                    .with_timezone(&Utc)
            };
            (
                e["deal"]["externalId"].as_str().unwrap().to_string(),
                e["amount"].as_str().unwrap().to_string(),
                (at("availableAt") - at("createdAt")).num_days(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn group_events(app: &TestApp) -> Vec<Value> {
    nodes(
        &app.admin_ok(
            "query { events(first: 100, types: [\"partner.group_changed\"]) { edges { node { data } } } }",
            json!({}),
        )
        .await["events"],
    )
    .into_iter()
    .map(|e| e["data"].clone())
    .collect()
}

async fn silver_and_gold_worked_example(app: TestApp) {
    // The program's own plan (8 %) applies outside any group; Silver pays 10 %, Gold 15 %.
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "8"}), json!({})).await;
    let silver = create_group(
        &app,
        json!({"programId": program, "name": "Silver", "rank": 0,
               "commission": {"type": "PERCENT", "rate": "10"}}),
    )
    .await;
    assert_eq!(silver["isDefault"], true);
    assert_eq!(
        silver["holdDays"], 30,
        "the program's hold period by default"
    );
    let gold = create_group(
        &app,
        json!({"programId": program, "name": "Gold", "rank": 1, "holdDays": 7,
               "commission": {"type": "PERCENT", "rate": "15"},
               "rules": {"minDealsWon": 3, "minWonRevenue": "50000",
                         "requiredCertifications": ["sales-101"], "minCertifiedPeople": 2}}),
    )
    .await;
    assert_eq!(
        gold["rules"],
        json!({"minDealsWon": 3, "minWonRevenue": "50000", "windowDays": 365,
               "requiredCertifications": ["sales-101"], "minCertifiedPeople": 2})
    );
    let acme = partner(&app, &program, "Acme").await;
    let key = app.partner_key(&acme.id).await;

    // A new partner joins the default group; it sees what earns Gold.
    let seen = standing(&app, &key, &acme.id).await;
    assert_eq!(seen["group"], json!({"name": "Silver", "rank": 0}));
    assert_eq!(
        seen["nextGroupProgress"],
        json!({"group": {"name": "Gold"}, "dealsWonNeeded": 3, "revenueNeeded": "50000.00",
               "certificationsNeeded": 2, "missingCertifications": ["sales-101"],
               "certifiedPeopleNeeded": 2})
    );
    // Partners read their program's groups (and no other program's); integration keys none.
    let groups = app
        .gql(
            &key,
            "query($p: ID!) { partnerGroups(programId: $p) { name rank commission { rate } } }",
            json!({"p": program}),
        )
        .await;
    assert_eq!(
        groups["data"]["partnerGroups"],
        json!([{"name": "Silver", "rank": 0, "commission": {"rate": "10"}},
               {"name": "Gold", "rank": 1, "commission": {"rate": "15"}}])
    );
    let other = program_with(&app, json!({"type": "PERCENT", "rate": "8"}), json!({})).await;
    let hidden = app
        .gql(
            &key,
            "query($p: ID!) { partnerGroups(programId: $p) { name } }",
            json!({"p": other}),
        )
        .await;
    assert_eq!(error_code(&hidden), "NOT_FOUND", "{hidden}");
    let lms = integration_key(&app, &[&program]).await;
    let refused = app
        .gql(
            &lms,
            "query($p: ID!) { partnerGroups(programId: $p) { name } }",
            json!({"p": program}),
        )
        .await;
    assert_eq!(error_code(&refused), "FORBIDDEN", "{refused}");

    // Two people certified (the LMS records them).
    let mut certs = Vec::new();
    for person in ["ana@acme.example", "ben@acme.example"] {
        let got = app
            .gql(
                &lms,
                "mutation($input: RecordCertificationInput!) { recordCertification(input: $input) { certification { id } } }",
                json!({"input": {"partnerId": acme.id, "personEmail": person, "courseKey": "sales-101",
                                 "expiresAt": (Utc::now() + Duration::days(300)).to_rfc3339()}}),
            )
            .await;
        certs.push(
            got["data"]["recordCertification"]["certification"]["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }

    // Two won deals: not yet Gold.
    let mut crm = Crm::new(&app, &program).await;
    crm.won(&app, "d1", "20000", 0, &acme.code).await;
    crm.won(&app, "d2", "20000", 0, &acme.code).await;
    let stats = reconcile(&app).await;
    assert_eq!(stats["groups"]["promoted"], 0, "{stats}");
    let seen = standing(&app, &key, &acme.id).await;
    assert_eq!(seen["group"]["name"], "Silver");
    assert_eq!(
        seen["nextGroupProgress"],
        json!({"group": {"name": "Gold"}, "dealsWonNeeded": 1, "revenueNeeded": "10000.00",
               "certificationsNeeded": 0, "missingCertifications": [],
               "certifiedPeopleNeeded": 0})
    );

    // The third won deal (55,000 in all) promotes at once: the reconcile evaluates the groups.
    crm.won(&app, "d3", "15000", 0, &acme.code).await;
    let stats = reconcile(&app).await;
    assert_eq!(stats["groups"]["promoted"], 1, "{stats}");
    let seen = standing(&app, &key, &acme.id).await;
    assert_eq!(seen["group"], json!({"name": "Gold", "rank": 1}));
    assert_eq!(
        seen["nextGroupProgress"],
        Value::Null,
        "Gold is the top group"
    );
    let events = group_events(&app).await;
    let promoted: Vec<&Value> = events
        .iter()
        .filter(|e| e["reason"] == "PROMOTED")
        .collect();
    assert_eq!(promoted.len(), 1);
    assert_eq!(promoted[0]["from"]["name"], "Silver");
    assert_eq!(promoted[0]["to"]["name"], "Gold");
    assert_eq!(promoted[0]["partnerId"], json!(acme.id));

    // The 4th deal, closed after the promotion, earns 15 % held 7 days; the first three keep
    // 10 % held 30 days (Silver's).
    crm.won(&app, "d4", "10000", 0, &acme.code).await;
    reconcile(&app).await;
    assert_eq!(
        entries_of(&app, &acme.id).await,
        [
            ("d1".to_string(), "2000.00".to_string(), 30),
            ("d2".to_string(), "2000.00".to_string(), 30),
            ("d3".to_string(), "1500.00".to_string(), 30),
            ("d4".to_string(), "1500.00".to_string(), 7),
        ]
    );
    // A full run agrees with what the incremental runs booked.
    let full = run_job(&app, "reconcile", true).await;
    assert_eq!(full["entriesWritten"], 0, "{full}");

    // Gold's plan changes: the next reconcile re-prices the deal closed in Gold only.
    app.admin_ok(
        "mutation($id: ID!) { updatePartnerGroup(input: {id: $id, commission: {type: PERCENT, rate: \"20\"}}) { group { commission { rate } } } }",
        json!({"id": gold["id"]}),
    )
    .await;
    reconcile(&app).await;
    let entries = entries_of(&app, &acme.id).await;
    assert_eq!(entries.len(), 5, "{entries:?}");
    assert!(entries.contains(&("d4".to_string(), "500.00".to_string(), 7)));

    // A certification expires: the partner stays Gold until the next review…
    let stored = certification::Entity::find_by_id(certs[1].clone())
        .one(app.db.reads())
        .await
        .unwrap()
        .unwrap();
    let mut expired: certification::ActiveModel = stored.into();
    expired.expires_at = Set(Some(Utc::now() - Duration::minutes(1)));
    let tx = app.db.begin_write().await.unwrap();
    expired.update(&*tx).await.unwrap();
    tx.commit().await.unwrap();
    let stats = run_job(&app, "evaluate-groups", false).await;
    assert_eq!(
        (stats["demoted"].clone(), stats["reviewed"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(
        standing(&app, &key, &acme.id).await["group"]["name"],
        "Gold"
    );
    // …which the program holds every second from now on: then it is demoted.
    app.admin_ok(
        "mutation($id: ID!) { updateProgram(input: {id: $id, groupReviewSchedule: \"* * * * * *\"}) { program { groupReviewSchedule } } }",
        json!({"id": program}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let stats = run_job(&app, "evaluate-groups", false).await;
    assert_eq!(
        (stats["demoted"].clone(), stats["reviewed"].clone()),
        (json!(1), json!(1))
    );
    let seen = standing(&app, &key, &acme.id).await;
    assert_eq!(seen["group"]["name"], "Silver");
    assert_eq!(seen["nextGroupProgress"]["certifiedPeopleNeeded"], 1);
    assert_eq!(seen["nextGroupProgress"]["certificationsNeeded"], 1);
    // A deal closed after the demotion earns Silver's 10 % again.
    crm.won(&app, "d5", "1000", 0, &acme.code).await;
    reconcile(&app).await;
    assert!(entries_of(&app, &acme.id).await.contains(&(
        "d5".to_string(),
        "100.00".to_string(),
        30
    )));

    // A manual override holds through reviews, until cleared.
    let set = app
        .admin_ok(
            SET,
            json!({"input": {"partnerId": acme.id, "groupId": gold["id"], "note": "strategic account"}}),
        )
        .await;
    assert_eq!(
        set["setPartnerGroup"]["membership"],
        json!({"group": {"name": "Gold"}, "reason": "MANUAL", "manual": true,
               "note": "strategic account", "until": null})
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let stats = run_job(&app, "evaluate-groups", false).await;
    assert_eq!(stats["demoted"], 0, "{stats}");
    assert_eq!(
        standing(&app, &key, &acme.id).await["group"]["name"],
        "Gold"
    );
    let cleared = app
        .admin_ok(
            SET,
            json!({"input": {"partnerId": acme.id, "groupId": null}}),
        )
        .await;
    assert_eq!(
        cleared["setPartnerGroup"]["membership"]["reason"],
        "OVERRIDE_CLEARED"
    );
    assert_eq!(
        cleared["setPartnerGroup"]["membership"]["group"]["name"],
        "Silver"
    );
    // The history, newest first; the admin's note stays hidden from the partner.
    let seen = standing(&app, &key, &acme.id).await;
    let history: Vec<(Value, Value, Value)> = seen["groupHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["group"]["name"].clone(),
                m["reason"].clone(),
                m["note"].clone(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            (json!("Silver"), json!("OVERRIDE_CLEARED"), Value::Null),
            (json!("Gold"), json!("MANUAL"), Value::Null),
            (json!("Silver"), json!("DEMOTED"), Value::Null),
            (json!("Gold"), json!("PROMOTED"), Value::Null),
            (json!("Silver"), json!("JOINED"), Value::Null),
        ]
    );
    let admin_view = app.admin_ok(STANDING, json!({"id": acme.id})).await;
    assert_eq!(
        admin_view["partner"]["groupHistory"][1]["note"],
        "strategic account"
    );
    // Every change was announced (joined, promoted, demoted, manual, cleared).
    let reasons: Vec<Value> = group_events(&app)
        .await
        .iter()
        .map(|e| e["reason"].clone())
        .collect();
    for reason in [
        "JOINED",
        "PROMOTED",
        "DEMOTED",
        "MANUAL",
        "OVERRIDE_CLEARED",
    ] {
        assert!(reasons.contains(&json!(reason)), "{reason} in {reasons:?}");
    }
}

async fn groups_reject_bad_input(app: TestApp) {
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "8"}), json!({})).await;
    let plan = json!({"type": "PERCENT", "rate": "10"});
    let try_create = |input: Value| {
        let app = &app;
        async move { app.gql(&app.admin, CREATE, json!({"input": input})).await }
    };
    let first_not_default =
        try_create(json!({"programId": program, "name": "Gold", "rank": 1, "commission": plan}))
            .await;
    assert_eq!(error_field(&first_not_default), "input.rank");
    let rules_on_default = try_create(json!({"programId": program, "name": "Silver", "rank": 0,
        "commission": plan, "rules": {"minDealsWon": 1}}))
    .await;
    assert_eq!(error_field(&rules_on_default), "input.rules");
    let recurring = try_create(json!({"programId": program, "name": "Silver", "rank": 0,
        "commission": {"type": "PERCENT", "rate": "10", "recurring": {"basis": "DEALS"}}}))
    .await;
    assert_eq!(error_field(&recurring), "input.commission.recurring");
    let unknown = try_create(json!({"programId": "prg_0000000000000000000000000000000a",
        "name": "Silver", "rank": 0, "commission": plan}))
    .await;
    assert_eq!(error_code(&unknown), "NOT_FOUND", "{unknown}");
    create_group(
        &app,
        json!({"programId": program, "name": "Silver", "rank": 0, "commission": plan}),
    )
    .await;
    for (input, field) in [
        (
            json!({"rules": {"windowDays": 0}}),
            "input.rules.windowDays",
        ),
        (
            json!({"rules": {"minDealsWon": -1}}),
            "input.rules.minDealsWon",
        ),
        (
            json!({"rules": {"minWonRevenue": "-5"}}),
            "input.rules.minWonRevenue",
        ),
        (
            json!({"rules": {"requiredCertifications": ["ok", "not a key"]}}),
            "input.rules.requiredCertifications[1]",
        ),
        (json!({"holdDays": 5000}), "input.holdDays"),
        (json!({"rank": 1001}), "input.rank"),
        (
            json!({"commission": {"type": "PERCENT", "rate": "0"}}),
            "input.commission.rate",
        ),
    ] {
        let mut full = json!({"programId": program, "name": "Gold", "rank": 1, "commission": plan});
        for (k, v) in input.as_object().unwrap() {
            full[k] = v.clone();
        }
        let got = try_create(full).await;
        assert_eq!(error_field(&got), field, "{got}");
    }
    let taken = try_create(json!({"programId": program, "name": "Other", "rank": 0,
        "commission": plan}))
    .await;
    assert_eq!(error_code(&taken), "CONFLICT", "{taken}");
    let same_name = try_create(json!({"programId": program, "name": "Silver", "rank": 2,
        "commission": plan}))
    .await;
    assert_eq!(error_code(&same_name), "CONFLICT", "{same_name}");
    // Nothing half-written: one group only.
    let groups = app
        .admin_ok(
            "query($p: ID!) { partnerGroups(programId: $p) { name } }",
            json!({"p": program}),
        )
        .await;
    assert_eq!(groups["partnerGroups"], json!([{"name": "Silver"}]));

    // Updates name their field too; the default group takes no rules.
    let silver = &app
        .admin_ok(
            "query($p: ID!) { partnerGroups(programId: $p) { id } }",
            json!({"p": program}),
        )
        .await["partnerGroups"][0]["id"];
    let got = app
        .gql(
            &app.admin,
            "mutation($id: ID!) { updatePartnerGroup(input: {id: $id, rules: {minDealsWon: 2}}) { group { id } } }",
            json!({"id": silver}),
        )
        .await;
    assert_eq!(error_field(&got), "input.rules");
    let got = app
        .gql(
            &app.admin,
            "mutation($p: ID!) { updateProgram(input: {id: $p, groupReviewSchedule: \"quarterly\"}) { program { id } } }",
            json!({"p": program}),
        )
        .await;
    assert_eq!(error_field(&got), "input.groupReviewSchedule");

    // Keys: partners and integrations cannot manage groups.
    let acme = partner(&app, &program, "Acme").await;
    let key = app.partner_key(&acme.id).await;
    let got = app
        .gql(
            &key,
            CREATE,
            json!({"input": {"programId": program, "name": "Gold", "rank": 1, "commission": plan}}),
        )
        .await;
    assert_eq!(error_code(&got), "FORBIDDEN", "{got}");
    let got = app
        .gql(
            &key,
            SET,
            json!({"input": {"partnerId": acme.id, "groupId": silver}}),
        )
        .await;
    assert_eq!(error_code(&got), "FORBIDDEN", "{got}");
    // An unknown group, and a group of another program, are not found.
    let other = program_with(&app, json!({"type": "PERCENT", "rate": "8"}), json!({})).await;
    let foreign = create_group(
        &app,
        json!({"programId": other, "name": "Silver", "rank": 0, "commission": plan}),
    )
    .await;
    for group in [json!("grp_unknown"), foreign["id"].clone()] {
        let got = app
            .gql(
                &app.admin,
                SET,
                json!({"input": {"partnerId": acme.id, "groupId": group}}),
            )
            .await;
        assert_eq!(error_code(&got), "NOT_FOUND", "{got}");
    }
    // A program without groups has nothing to set.
    let lone = program_with(&app, json!({"type": "PERCENT", "rate": "8"}), json!({})).await;
    let loner = partner(&app, &lone, "Loner").await;
    let got = app
        .gql(
            &app.admin,
            SET,
            json!({"input": {"partnerId": loner.id, "groupId": null}}),
        )
        .await;
    assert_eq!(error_code(&got), "CONFLICT", "{got}");
    let seen = standing(&app, &app.admin, &loner.id).await;
    assert_eq!(seen["group"], Value::Null);
    assert_eq!(seen["nextGroupProgress"], Value::Null);
    // Existing partners joined the default group when it was created.
    let joined = app.admin_ok(STANDING, json!({"id": acme.id})).await;
    assert_eq!(joined["partner"]["group"]["name"], "Silver");
}

/// Two instances evaluating at once promote each partner once: one open membership and one
/// event per partner.
async fn concurrent_evaluations_promote_once(app: TestApp) {
    const N: usize = 40;
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "8"}), json!({})).await;
    create_group(
        &app,
        json!({"programId": program, "name": "Silver", "rank": 0,
               "commission": {"type": "PERCENT", "rate": "10"}}),
    )
    .await;
    create_group(
        &app,
        json!({"programId": program, "name": "Gold", "rank": 1,
               "commission": {"type": "PERCENT", "rate": "15"},
               "rules": {"minCertifiedPeople": 1}}),
    )
    .await;
    for i in 0..N {
        let p = partner(&app, &program, &format!("Partner {i}")).await;
        app.admin_ok(
            "mutation($input: RecordCertificationInput!) { recordCertification(input: $input) { certification { id } } }",
            json!({"input": {"partnerId": p.id, "personEmail": format!("ana@p{i}.example"), "courseKey": "basics"}}),
        )
        .await;
    }
    let mut instances = Vec::new();
    for _ in 0..2 {
        let db = tandem::db::Db::connect(&app.database_url, 4).await.unwrap();
        instances.push(tokio::spawn(async move {
            tandem::domain::groups::evaluate_groups(&db, Utc::now())
                .await
                .unwrap()
        }));
    }
    let mut promoted = 0;
    for instance in instances {
        promoted += instance.await.unwrap().promoted;
    }
    assert_eq!(promoted, N as u64);
    let open = crate::helpers::count(
        &app.db,
        "SELECT COUNT(*) AS n FROM partner_group_memberships WHERE until IS NULL",
    )
    .await;
    assert_eq!(open, N as i64);
    let reasons: Vec<Value> = group_events(&app)
        .await
        .into_iter()
        .filter(|e| e["reason"] == "PROMOTED")
        .collect();
    assert_eq!(reasons.len(), N, "one promotion event per partner");
}

db_tests!(
    silver_and_gold_worked_example,
    groups_reject_bad_input,
    concurrent_evaluations_promote_once
);
