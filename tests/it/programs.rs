//! Programs and partners: creation, update, validation (each rejection names the field and
//! writes nothing).

use serde_json::json;

use crate::{
    db_tests,
    helpers::{TestApp, error_code, error_field, nodes},
};

const CREATE: &str = "mutation($input: CreateProgramInput!) { createProgram(input: $input) { program { id name kind currency attributionWindowDays holdDays clawbackDays commission { type rate flatAmount tiers { minRevenue rate } capPerDeal minDealAmount } } } }";

async fn creates_programs_of_every_kind_with_defaults(app: TestApp) {
    for kind in [
        "REVENUE_SHARE",
        "CO_MARKETING",
        "STRATEGIC_ALLIANCE",
        "TECHNOLOGY_INTEGRATION",
        "CHANNEL",
        "REFERRAL_NETWORK",
    ] {
        let data = app
            .admin_ok(
                CREATE,
                json!({"input": {"name": format!("{kind} program"), "kind": kind, "currency": "eur",
                    "commission": {"type": "PERCENT", "rate": "12.5",
                        "tiers": [{"minRevenue": "0", "rate": "10"}, {"minRevenue": "50000", "rate": "15"}],
                        "capPerDeal": "5000.00", "minDealAmount": "100"}}}),
            )
            .await;
        let program = &data["createProgram"]["program"];
        assert_eq!(program["kind"], kind);
        assert_eq!(program["currency"], "EUR");
        assert_eq!(program["attributionWindowDays"], 90);
        assert_eq!(program["holdDays"], 30);
        assert_eq!(program["clawbackDays"], 90);
        assert_eq!(program["commission"]["rate"], "12.5");
        assert_eq!(program["commission"]["capPerDeal"], "5000.00");
        assert_eq!(program["commission"]["tiers"][1]["minRevenue"], "50000");
    }
    let data = app.admin_ok("{ programs(first: 4) { totalCount pageInfo { hasNextPage endCursor } edges { node { kind } } } }", json!({})).await;
    assert_eq!(data["programs"]["totalCount"], 6);
    assert_eq!(data["programs"]["pageInfo"]["hasNextPage"], true);
    let cursor = data["programs"]["pageInfo"]["endCursor"]
        .as_str()
        .unwrap()
        .to_string();
    let data = app
        .admin_ok(
            "query($after: String) { programs(first: 4, after: $after) { pageInfo { hasNextPage } edges { node { kind } } } }",
            json!({"after": cursor}),
        )
        .await;
    let kinds: Vec<_> = data["programs"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["kind"].clone())
        .collect();
    assert_eq!(kinds, vec![json!("CHANNEL"), json!("REFERRAL_NETWORK")]);
    assert_eq!(data["programs"]["pageInfo"]["hasNextPage"], false);
}

async fn invalid_programs_are_rejected_naming_the_field(app: TestApp) {
    let base = json!({"name": "P", "kind": "CHANNEL", "currency": "USD",
        "commission": {"type": "PERCENT", "rate": "10"}});
    let cases = [
        (json!({"currency": "EURO"}), "input.currency"),
        (json!({"currency": "XXX"}), "input.currency"),
        (json!({"name": "  "}), "input.name"),
        (
            json!({"commission": {"type": "PERCENT", "rate": "-1"}}),
            "input.commission.rate",
        ),
        (
            json!({"commission": {"type": "PERCENT", "rate": "100.5"}}),
            "input.commission.rate",
        ),
        (
            json!({"commission": {"type": "PERCENT"}}),
            "input.commission.rate",
        ),
        (
            json!({"commission": {"type": "FLAT", "flatAmount": "-5"}}),
            "input.commission.flatAmount",
        ),
        (
            json!({"commission": {"type": "PERCENT", "rate": "10", "capPerDeal": "-1"}}),
            "input.commission.capPerDeal",
        ),
        (
            json!({"commission": {"type": "PERCENT", "rate": "10", "minDealAmount": "-0.01"}}),
            "input.commission.minDealAmount",
        ),
        (
            json!({"commission": {"type": "PERCENT", "rate": "10", "tiers": [{"minRevenue": "100", "rate": "10"}, {"minRevenue": "50", "rate": "12"}]}}),
            "input.commission.tiers[1].minRevenue",
        ),
        (
            json!({"commission": {"type": "PERCENT", "rate": "10", "tiers": [{"minRevenue": "0", "rate": "101"}]}}),
            "input.commission.tiers[0].rate",
        ),
        (
            json!({"attributionWindowDays": 0}),
            "input.attributionWindowDays",
        ),
        (json!({"holdDays": -1}), "input.holdDays"),
        (json!({"kind": "PYRAMID"}), "input.kind"),
        (
            json!({"commission": {"type": "PERCENT", "rate": "ten"}}),
            "input",
        ),
    ];
    for (patch, field) in cases {
        let mut input = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            input[k] = v.clone();
        }
        let resp = app.gql(&app.admin, CREATE, json!({"input": input})).await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{field}: {resp}");
        assert!(
            error_field(&resp).starts_with(field),
            "expected field {field}, got {resp}"
        );
    }
    assert_eq!(app.count_rows("programs").await, 0);
}

async fn updates_programs(app: TestApp) {
    let id = app.create_program("Old").await;
    let data = app
        .admin_ok(
            "mutation($id: ID!) { updateProgram(input: {id: $id, name: \"New\", holdDays: 7, commission: {type: FLAT, flatAmount: \"250\"}}) { program { name holdDays currency commission { type flatAmount rate } } } }",
            json!({"id": id}),
        )
        .await;
    let program = &data["updateProgram"]["program"];
    assert_eq!(program["name"], "New");
    assert_eq!(program["holdDays"], 7);
    assert_eq!(program["currency"], "USD");
    assert_eq!(program["commission"]["type"], "FLAT");
    assert_eq!(program["commission"]["rate"], serde_json::Value::Null);
    let resp = app
        .gql(&app.admin, "mutation { updateProgram(input: {id: \"01900000-0000-7000-8000-000000000000\", name: \"x\"}) { program { id } } }", json!({}))
        .await;
    assert_eq!(error_code(&resp), "NOT_FOUND");
}

async fn partners_get_codes_and_status_changes_are_checked(app: TestApp) {
    let program = app.create_program("P").await;
    let data = app
        .admin_ok(
            "mutation($p: ID!) { createPartner(input: {programId: $p, name: \"Northwind\", domain: \"https://www.Northwind.example/about\", contactEmail: \" Ops@Northwind.EXAMPLE \"}) { partner { id status referralCode domain contactEmail program { id } } } }",
            json!({"p": program}),
        )
        .await;
    let partner = &data["createPartner"]["partner"];
    assert_eq!(partner["status"], "ACTIVE");
    assert_eq!(partner["domain"], "northwind.example");
    assert_eq!(partner["contactEmail"], "ops@northwind.example");
    assert_eq!(partner["program"]["id"], program);
    let code = partner["referralCode"].as_str().unwrap();
    assert_eq!(code.len(), 8);
    assert!(
        code.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    );
    let id = partner["id"].as_str().unwrap().to_string();

    let status = "mutation($id: ID!, $s: PartnerStatus!) { updatePartnerStatus(input: {id: $id, status: $s}) { partner { status terminatedAt } } }";
    let data = app
        .admin_ok(status, json!({"id": id, "s": "SUSPENDED"}))
        .await;
    assert_eq!(
        data["updatePartnerStatus"]["partner"]["status"],
        "SUSPENDED"
    );
    let data = app
        .admin_ok(status, json!({"id": id, "s": "TERMINATED"}))
        .await;
    assert!(data["updatePartnerStatus"]["partner"]["terminatedAt"].is_string());
    let resp = app
        .gql(&app.admin, status, json!({"id": id, "s": "ACTIVE"}))
        .await;
    assert_eq!(error_code(&resp), "CONFLICT");

    for (input, field) in [
        (
            json!({"programId": program, "name": "X", "contactEmail": "not-an-email"}),
            "input.contactEmail",
        ),
        (
            json!({"programId": program, "name": "X", "contactEmail": "a@b.com", "domain": "no domain"}),
            "input.domain",
        ),
        (
            json!({"programId": "01900000-0000-7000-8000-000000000000", "name": "X", "contactEmail": "a@b.com"}),
            "input.programId",
        ),
    ] {
        let resp = app
            .gql(&app.admin, "mutation($input: CreatePartnerInput!) { createPartner(input: $input) { partner { id } } }", json!({"input": input}))
            .await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT");
        assert_eq!(error_field(&resp), field);
    }
    assert_eq!(app.count_rows("partners").await, 1);
    // partner.created + 2 × partner.updated; the rejected mutations wrote no events.
    assert_eq!(app.count_rows("events").await, 3);
}

async fn partners_are_corrected_with_update_partner(app: TestApp) {
    let program = app.create_program("P").await;
    let other = app.create_partner(&program, "Other").await;
    let update = "mutation($input: UpdatePartnerInput!) { updatePartner(input: $input) { partner { id name domain contactEmail status } } }";
    app.admin_ok(
        update,
        json!({"input": {"id": other, "domain": "taken.example"}}),
    )
    .await;
    let id = app.create_partner(&program, "Northwind").await;
    let events_before = app.count_rows("events").await;

    // An admin corrects every field; values are normalised as on creation.
    let data = app
        .admin_ok(
            update,
            json!({"input": {"id": id, "name": " Northwind Traders ", "domain": "https://WWW.northwind.example/x", "contactEmail": " Ops@Northwind.example "}}),
        )
        .await;
    let partner = &data["updatePartner"]["partner"];
    assert_eq!(partner["name"], "Northwind Traders");
    assert_eq!(partner["domain"], "northwind.example");
    assert_eq!(partner["contactEmail"], "ops@northwind.example");
    assert_eq!(partner["status"], "ACTIVE");

    // Rejections name the field and change nothing.
    for (input, code, field) in [
        (
            json!({"id": id, "domain": "taken.example"}),
            "BAD_USER_INPUT",
            Some("input.domain"),
        ),
        (
            json!({"id": id, "domain": "not a domain"}),
            "BAD_USER_INPUT",
            Some("input.domain"),
        ),
        (
            json!({"id": id, "contactEmail": "nope"}),
            "BAD_USER_INPUT",
            Some("input.contactEmail"),
        ),
        (
            json!({"id": id, "name": "  "}),
            "BAD_USER_INPUT",
            Some("input.name"),
        ),
        (
            json!({"id": "01900000-0000-7000-8000-000000000000", "name": "X"}),
            "NOT_FOUND",
            None,
        ),
    ] {
        let resp = app.gql(&app.admin, update, json!({"input": input})).await;
        assert_eq!(error_code(&resp), code, "{input}: {resp}");
        if let Some(field) = field {
            assert_eq!(error_field(&resp), field, "{input}");
        }
    }

    // A partner key corrects its own name and contact, not its domain, and not another partner.
    let key = app.partner_key(&id).await;
    let data = app
        .ok(
            &key,
            update,
            json!({"input": {"id": id, "contactEmail": "billing@northwind.example"}}),
        )
        .await;
    assert_eq!(
        data["updatePartner"]["partner"]["contactEmail"],
        "billing@northwind.example"
    );
    let resp = app
        .gql(
            &key,
            update,
            json!({"input": {"id": id, "domain": "elsewhere.example"}}),
        )
        .await;
    assert_eq!(error_code(&resp), "FORBIDDEN");
    let resp = app
        .gql(
            &key,
            update,
            json!({"input": {"id": other, "name": "Mine now"}}),
        )
        .await;
    assert_eq!(error_code(&resp), "NOT_FOUND");

    // An empty domain removes it; an unchanged value writes no event.
    let data = app
        .admin_ok(update, json!({"input": {"id": id, "domain": ""}}))
        .await;
    assert_eq!(
        data["updatePartner"]["partner"]["domain"],
        serde_json::Value::Null
    );
    app.admin_ok(
        update,
        json!({"input": {"id": id, "name": "Northwind Traders"}}),
    )
    .await;

    // Three changes, three partner.updated events naming the changed fields (never the
    // address itself), each valid against its JSON Schema.
    assert_eq!(app.count_rows("events").await, events_before + 3);
    let data = app
        .admin_ok(
            "{ events(first: 100, types: [\"partner.updated\"]) { edges { node { id type timestamp data } } } }",
            json!({}),
        )
        .await;
    let events: Vec<serde_json::Value> = nodes(&data["events"])
        .into_iter()
        .filter(|e| e["data"]["partnerId"] == id.as_str())
        .collect();
    let changed: Vec<&serde_json::Value> = events.iter().map(|e| &e["data"]["changed"]).collect();
    assert_eq!(
        changed,
        [
            &json!(["name", "domain", "contactEmail"]),
            &json!(["contactEmail"]),
            &json!(["domain"])
        ]
    );
    let path = format!(
        "{}/schema/events/partner.updated.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for event in &events {
        assert!(validator.is_valid(event), "{event}");
        assert!(!event.to_string().contains("@northwind"), "{event}");
    }

    // A terminated partner cannot be changed.
    app.admin_ok(
        "mutation($id: ID!) { updatePartnerStatus(input: {id: $id, status: TERMINATED}) { partner { id } } }",
        json!({"id": id}),
    )
    .await;
    let resp = app
        .gql(
            &app.admin,
            update,
            json!({"input": {"id": id, "name": "Again"}}),
        )
        .await;
    assert_eq!(error_code(&resp), "CONFLICT");
}

db_tests!(
    creates_programs_of_every_kind_with_defaults,
    invalid_programs_are_rejected_naming_the_field,
    updates_programs,
    partners_get_codes_and_status_changes_are_checked,
    partners_are_corrected_with_update_partner,
);
