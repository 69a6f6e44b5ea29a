//! Public partner applications (DESIGN §13): the one operation without a key, its validation and
//! rate limit, and the review that creates the partner with its first key.

use serde_json::{Value, json};
use tandem::config::Config;

use crate::{
    db_tests,
    helpers::{TestApp, error_code, error_field, nodes},
};

const APPLY: &str = "mutation($input: ApplyToProgramInput!) { applyToProgram(input: $input) { \
    application { id programId name domain contactEmail status reason partnerId } partnerId token } }";

const REVIEW: &str = "mutation($input: ReviewApplicationInput!) { reviewApplication(input: $input) { \
    application { id status reason partnerId reviewedAt } partnerId token } }";

/// A program open to applications, auto-approving `auto`.
async fn open_program(app: &TestApp, auto: Value) -> String {
    app.admin_ok(
        "mutation($input: CreateProgramInput!) { createProgram(input: $input) { program { id applications { open autoApproveDomains } } } }",
        json!({"input": {"name": "Open", "kind": "CHANNEL", "currency": "USD",
            "commission": {"type": "PERCENT", "rate": "10"},
            "applications": {"open": true, "autoApproveDomains": auto}}}),
    )
    .await["createProgram"]["program"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn application(program: &str, domain: &str) -> Value {
    json!({"programId": program, "name": format!("{domain} Ltd"), "domain": domain,
           "contactEmail": format!("ops@{domain}"), "contactName": "Olga Ops",
           "message": "We resell in the Nordics."})
}

/// Runs `applyToProgram` without a key.
async fn apply(app: &TestApp, input: Value) -> Value {
    app.gql("", APPLY, json!({"input": input})).await
}

fn many_applications(config: &mut Config) {
    config.apply_rate_limit = 1000;
}

async fn only_applications_need_no_key(app: TestApp) {
    let program = open_program(&app, json!(["Trusted.example", "www.trusted.example"])).await;
    let settings = app
        .admin_ok(
            "query($id: ID!) { program(id: $id) { applications { open autoApproveDomains } } }",
            json!({"id": program}),
        )
        .await;
    assert_eq!(
        settings["program"]["applications"],
        json!({"open": true, "autoApproveDomains": ["trusted.example"]})
    );
    // Everything else answers UNAUTHENTICATED without a key.
    for query in [
        "{ viewer { role } }",
        "{ programs { edges { node { id } } } }",
        "{ referrals { edges { node { id } } } }",
        "{ applications { edges { node { id } } } }",
        "{ events { edges { node { id } } } }",
        "mutation { createProgram(input: {name: \"x\", kind: CHANNEL, currency: \"USD\", commission: {type: PERCENT, rate: \"1\"}}) { program { id } } }",
        "mutation { reviewApplication(input: {id: \"x\", decision: APPROVE}) { token } }",
    ] {
        let resp = app.gql("", query, json!({})).await;
        assert_eq!(error_code(&resp), "UNAUTHENTICATED", "{query}: {resp}");
    }

    let resp = apply(&app, application(&program, "Nordic-Resell.example")).await;
    assert!(resp.get("errors").is_none(), "{resp}");
    let pending = &resp["data"]["applyToProgram"];
    assert_eq!(pending["application"]["status"], "PENDING");
    assert_eq!(pending["application"]["domain"], "nordic-resell.example");
    assert_eq!(pending["token"], Value::Null);
    let pending_id = pending["application"]["id"].as_str().unwrap().to_string();

    // Refusals, each naming its field.
    for (change, field) in [
        (
            json!({"contactEmail": "not an address"}),
            "input.contactEmail",
        ),
        (
            json!({"contactEmail": "someone@gmail.com"}),
            "input.contactEmail",
        ),
        (json!({"domain": "outlook.com"}), "input.domain"),
        (json!({"domain": "<script>"}), "input.domain"),
        (json!({"name": "  "}), "input.name"),
        (json!({"name": "x".repeat(201)}), "input.name"),
        (json!({"message": "m".repeat(5001)}), "input.message"),
    ] {
        let mut input = application(&program, "fresh.example");
        for (k, v) in change.as_object().unwrap() {
            input[k] = v.clone();
        }
        let resp = apply(&app, input).await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{change}: {resp}");
        assert_eq!(error_field(&resp), field, "{change}");
    }
    // A company already applying, or already a partner, is a conflict.
    let again = apply(&app, application(&program, "nordic-resell.example")).await;
    assert_eq!(error_code(&again), "CONFLICT", "{again}");
    app.admin_ok(
        "mutation($p: ID!) { createPartner(input: {programId: $p, name: \"Existing\", domain: \"existing.example\", contactEmail: \"a@existing.example\"}) { partner { id } } }",
        json!({"p": program}),
    )
    .await;
    let existing = apply(&app, application(&program, "existing.example")).await;
    assert_eq!(error_code(&existing), "CONFLICT", "{existing}");
    // A closed (or unknown) program is not found.
    let closed = app.create_program("Closed").await;
    for program_id in [
        closed.as_str(),
        "00000000-0000-0000-0000-000000000000",
        "junk",
    ] {
        let resp = apply(&app, application(program_id, "fresh.example")).await;
        assert_eq!(error_code(&resp), "NOT_FOUND", "{resp}");
    }

    // The program manager sees it, and approves it: the partner and its first key.
    let listed = app
        .admin_ok(
            "query($p: ID!) { applications(filter: {programId: $p, status: PENDING}) { totalCount edges { node { id name contactName message } } } }",
            json!({"p": program}),
        )
        .await;
    assert_eq!(listed["applications"]["totalCount"], 1);
    assert_eq!(
        nodes(&listed["applications"])[0]["message"],
        "We resell in the Nordics."
    );
    let other_partner = app.create_partner(&program, "Somebody").await;
    let partner_key = app.partner_key(&other_partner).await;
    let refused = app
        .gql(
            &partner_key,
            REVIEW,
            json!({"input": {"id": pending_id, "decision": "APPROVE"}}),
        )
        .await;
    assert_eq!(error_code(&refused), "FORBIDDEN", "{refused}");
    let approved = app
        .admin_ok(
            REVIEW,
            json!({"input": {"id": pending_id, "decision": "APPROVE"}}),
        )
        .await;
    let approved = &approved["reviewApplication"];
    assert_eq!(approved["application"]["status"], "APPROVED");
    let token = approved["token"].as_str().unwrap();
    assert!(token.starts_with("tdm_"));
    let me = app
        .ok(
            token,
            "{ viewer { role partner { id name status } } }",
            json!({}),
        )
        .await;
    assert_eq!(me["viewer"]["partner"]["name"], "Nordic-Resell.example Ltd");
    assert_eq!(me["viewer"]["partner"]["id"], approved["partnerId"]);
    assert_eq!(me["viewer"]["partner"]["status"], "ACTIVE");
    // Reviewed once only.
    let twice = app
        .gql(
            &app.admin,
            REVIEW,
            json!({"input": {"id": pending_id, "decision": "REJECT"}}),
        )
        .await;
    assert_eq!(error_code(&twice), "CONFLICT", "{twice}");
    // A rejection keeps its reason; the company may apply again.
    let second = apply(&app, application(&program, "second.example")).await;
    let second_id = second["data"]["applyToProgram"]["application"]["id"].clone();
    let rejected = app
        .admin_ok(
            REVIEW,
            json!({"input": {"id": second_id, "decision": "REJECT", "reason": "Outside our territories"}}),
        )
        .await;
    assert_eq!(
        rejected["reviewApplication"]["application"]["reason"],
        "Outside our territories"
    );
    assert_eq!(rejected["reviewApplication"]["token"], Value::Null);
    let retry = apply(&app, application(&program, "second.example")).await;
    assert!(retry.get("errors").is_none(), "{retry}");

    // An auto-approved email domain is a partner at once, key included.
    let mut input = application(&program, "trusted.example");
    input["contactEmail"] = json!("Lead@Trusted.example");
    let auto = apply(&app, input).await;
    let auto = &auto["data"]["applyToProgram"];
    assert_eq!(auto["application"]["status"], "APPROVED", "{auto}");
    assert!(auto["token"].as_str().unwrap().starts_with("tdm_"));
    // Events: partner.applied for each application, partner.created for each approval.
    let events = app
        .admin_ok(
            "{ events(first: 100, types: [\"partner.applied\", \"partner.created\"]) { edges { node { type data } } } }",
            json!({}),
        )
        .await;
    let events = nodes(&events["events"]);
    let applied: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "partner.applied")
        .collect();
    assert_eq!(applied.len(), 4, "{events:?}");
    assert!(
        applied
            .iter()
            .any(|e| e["data"]["domain"] == "trusted.example" && e["data"]["autoApproved"] == true)
    );
    let created: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "partner.created" && e["data"]["partnerId"] == auto["partnerId"])
        .collect();
    assert_eq!(created.len(), 1);
    // Settings are validated.
    let resp = app
        .gql(
            &app.admin,
            "mutation($id: ID!) { updateProgram(input: {id: $id, applications: {autoApproveDomains: [\"gmail.com\"]}}) { program { id } } }",
            json!({"id": program}),
        )
        .await;
    assert_eq!(error_code(&resp), "BAD_USER_INPUT");
    assert_eq!(
        error_field(&resp),
        "input.applications.autoApproveDomains[0]"
    );
    // Closing the program ends applications.
    app.admin_ok(
        "mutation($id: ID!) { updateProgram(input: {id: $id, applications: {open: false}}) { program { id } } }",
        json!({"id": program}),
    )
    .await;
    let late = apply(&app, application(&program, "late.example")).await;
    assert_eq!(error_code(&late), "NOT_FOUND");
}

async fn the_eleventh_application_in_a_minute_is_refused(app: TestApp) {
    let program = open_program(&app, json!([])).await;
    for i in 0..10 {
        let resp = apply(&app, application(&program, &format!("company{i}.example"))).await;
        assert!(resp.get("errors").is_none(), "{i}: {resp}");
    }
    let eleventh = apply(&app, application(&program, "company10.example")).await;
    assert_eq!(error_code(&eleventh), "TOO_MANY_REQUESTS", "{eleventh}");
    // Nothing was stored for it.
    let listed = app
        .admin_ok("{ applications { totalCount } }", json!({}))
        .await;
    assert_eq!(listed["applications"]["totalCount"], 10);
    // Other operations are not limited by it.
    app.admin_ok("{ viewer { role } }", json!({})).await;
}

db_tests!(mod lenient, config = many_applications; only_applications_need_no_key);
db_tests!(the_eleventh_application_in_a_minute_is_refused);
