//! The deal registration lifecycle (DESIGN §12): approval and review, channel conflicts, the
//! protection window with its extensions and expiry, lead engagement and its SLA, on SQLite and
//! PostgreSQL.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use serde_json::{Value, json};
use tandem::db::entities::referral;

use crate::{
    commissions::{Crm, partner, program_with, run_job},
    db_tests,
    helpers::{TestApp, count, error_code, error_field, nodes},
    webhooks::{drain, post_signed},
};

const REFERRAL_FIELDS: &str = "id status statusDetail companyDomain acceptedAt protectedUntil \
    extensions rejectionReason engagedAt sla { dueAt state } conflict { dealId customerId }";

/// A program with these registration settings (and other top-level fields).
async fn program(app: &TestApp, extra: Value) -> String {
    program_with(app, json!({"type": "PERCENT", "rate": "10"}), extra).await
}

async fn submit(app: &TestApp, token: &str, domain: &str) -> Value {
    let data = app
        .gql(
            token,
            &format!(
                "mutation($input: SubmitReferralInput!) {{ submitReferral(input: $input) {{ referral {{ {REFERRAL_FIELDS} }} }} }}"
            ),
            json!({"input": {"companyName": domain, "companyDomain": domain}}),
        )
        .await;
    assert!(data.get("errors").is_none(), "{data}");
    data["data"]["submitReferral"]["referral"].clone()
}

async fn referral_as(app: &TestApp, token: &str, id: &str) -> Value {
    app.ok(
        token,
        &format!("query($id: ID!) {{ referral(id: $id) {{ {REFERRAL_FIELDS} }} }}"),
        json!({"id": id}),
    )
    .await["referral"]
        .clone()
}

async fn review(app: &TestApp, token: &str, id: &str, decision: &str, reason: Value) -> Value {
    app.gql(
        token,
        &format!(
            "mutation($input: ReviewReferralInput!) {{ reviewReferral(input: $input) {{ referral {{ {REFERRAL_FIELDS} }} }} }}"
        ),
        json!({"input": {"id": id, "decision": decision, "reason": reason}}),
    )
    .await
}

async fn extend(app: &TestApp, token: &str, id: &str) -> Value {
    app.gql(
        token,
        &format!(
            "mutation($id: ID!) {{ extendReferral(input: {{id: $id}}) {{ referral {{ {REFERRAL_FIELDS} }} }} }}"
        ),
        json!({"id": id}),
    )
    .await
}

async fn engage(app: &TestApp, token: &str, input: Value) -> Value {
    app.gql(
        token,
        &format!(
            "mutation($input: RecordEngagementInput!) {{ recordEngagement(input: $input) {{ referral {{ {REFERRAL_FIELDS} }} }} }}"
        ),
        json!({"input": input}),
    )
    .await
}

fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap_or_else(|| panic!("{value}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// Changes a stored referral directly (to move its clocks into the past).
pub async fn age(app: &TestApp, id: &str, change: impl FnOnce(&mut referral::ActiveModel)) {
    let stored = referral::Entity::find_by_id(id.to_string())
        .one(app.db.reads())
        .await
        .unwrap()
        .unwrap();
    let mut model: referral::ActiveModel = stored.into();
    change(&mut model);
    let tx = app.db.begin_write().await.unwrap();
    model.update(&*tx).await.unwrap();
    tx.commit().await.unwrap();
}

/// Events of `event_type` about referral `id`.
async fn events_about(app: &TestApp, event_type: &str, id: &str) -> Vec<Value> {
    let data = app
        .admin_ok(
            "query($types: [String!]) { events(first: 100, types: $types) { edges { node { type data } } } }",
            json!({"types": [event_type]}),
        )
        .await;
    nodes(&data["events"])
        .into_iter()
        .filter(|e| e["data"]["referralId"] == id)
        .collect()
}

/// An INTEGRATION key granted `programs`.
pub async fn integration_key(app: &TestApp, programs: &[&str]) -> String {
    app.admin_ok(
        "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { token } }",
        json!({"input": {"name": "sales tool", "role": "INTEGRATION", "programIds": programs}}),
    )
    .await["createApiKey"]["token"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn manual_approval_and_review(app: TestApp) {
    let program = program(&app, json!({"registration": {"approval": "MANUAL"}})).await;
    let settings = app
        .admin_ok(
            "query($id: ID!) { program(id: $id) { registration { approval protectionDays extensionDays maxExtensions } leadSlaMinutes } }",
            json!({"id": program}),
        )
        .await;
    assert_eq!(
        settings["program"]["registration"],
        json!({"approval": "MANUAL", "protectionDays": 90, "extensionDays": 30, "maxExtensions": 1})
    );
    assert_eq!(settings["program"]["leadSlaMinutes"], Value::Null);
    let alpha = app.create_partner(&program, "Alpha").await;
    let beta = app.create_partner(&program, "Beta").await;
    let alpha_key = app.partner_key(&alpha).await;
    let beta_key = app.partner_key(&beta).await;

    let first = submit(&app, &alpha_key, "manual.example").await;
    assert_eq!(first["status"], "SUBMITTED");
    assert_eq!(
        first["statusDetail"],
        "awaiting approval by the program manager"
    );
    assert_eq!(first["protectedUntil"], Value::Null);
    let id = first["id"].as_str().unwrap();
    // A submitted registration already holds its company.
    let dup = submit(&app, &beta_key, "manual.example").await;
    assert_eq!(dup["status"], "DUPLICATE");

    // Partners cannot review, not even their own registration.
    let refused = review(&app, &alpha_key, id, "APPROVE", Value::Null).await;
    assert_eq!(error_code(&refused), "FORBIDDEN", "{refused}");
    let unknown = review(
        &app,
        &app.admin,
        "00000000-0000-0000-0000-000000000000",
        "APPROVE",
        Value::Null,
    )
    .await;
    assert_eq!(error_code(&unknown), "NOT_FOUND", "{unknown}");
    let long = review(&app, &app.admin, id, "REJECT", json!("x".repeat(1001))).await;
    assert_eq!(error_code(&long), "BAD_USER_INPUT");
    assert_eq!(error_field(&long), "input.reason");

    let before = Utc::now();
    let approved = review(&app, &app.admin, id, "APPROVE", Value::Null).await;
    let approved = &approved["data"]["reviewReferral"]["referral"];
    assert_eq!(approved["status"], "ACCEPTED");
    let accepted_at = time(&approved["acceptedAt"]);
    assert!(accepted_at >= before - Duration::seconds(1));
    assert_eq!(
        time(&approved["protectedUntil"]),
        accepted_at + Duration::days(90)
    );
    // Reviewing it again: it is no longer SUBMITTED.
    let again = review(&app, &app.admin, id, "REJECT", Value::Null).await;
    assert_eq!(error_code(&again), "CONFLICT", "{again}");

    // A rejection's reason reaches the partner, through the API and the event.
    let second = submit(&app, &alpha_key, "second.example").await;
    let second_id = second["id"].as_str().unwrap();
    let rejected = review(
        &app,
        &app.admin,
        second_id,
        "REJECT",
        json!("  Already a customer of our EMEA team  "),
    )
    .await;
    assert_eq!(
        rejected["data"]["reviewReferral"]["referral"]["status"],
        "REJECTED"
    );
    let seen = referral_as(&app, &alpha_key, second_id).await;
    assert_eq!(seen["status"], "REJECTED");
    assert_eq!(
        seen["rejectionReason"],
        "Already a customer of our EMEA team"
    );
    let events = app
        .ok(
            &alpha_key,
            "{ events(first: 50, types: [\"referral.status_changed\"]) { edges { node { data } } } }",
            json!({}),
        )
        .await;
    let reasons: Vec<Value> = nodes(&events["events"])
        .into_iter()
        .filter(|e| e["data"]["referralId"] == second_id)
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert_eq!(reasons[0]["status"], "REJECTED");
    assert_eq!(reasons[0]["previousStatus"], "SUBMITTED");
    assert_eq!(reasons[0]["reason"], "Already a customer of our EMEA team");
    // A rejected registration no longer holds the company.
    let third = submit(&app, &beta_key, "second.example").await;
    assert_eq!(third["status"], "SUBMITTED");

    // Switching the program to AUTO accepts the next registration at once.
    app.admin_ok(
        "mutation($id: ID!) { updateProgram(input: {id: $id, registration: {approval: AUTO, protectionDays: 10}}) { program { id } } }",
        json!({"id": program}),
    )
    .await;
    let auto = submit(&app, &alpha_key, "auto.example").await;
    assert_eq!(auto["status"], "ACCEPTED");
    assert_eq!(
        time(&auto["protectedUntil"]),
        time(&auto["acceptedAt"]) + Duration::days(10)
    );
    // Settings are validated, naming the field.
    for (input, field) in [
        (
            json!({"registration": {"protectionDays": -1}}),
            "input.registration.protectionDays",
        ),
        (
            json!({"registration": {"extensionDays": 0}}),
            "input.registration.extensionDays",
        ),
        (
            json!({"registration": {"maxExtensions": 101}}),
            "input.registration.maxExtensions",
        ),
        (json!({"leadSlaMinutes": 0}), "input.leadSlaMinutes"),
    ] {
        let mut input = input;
        input["id"] = json!(program);
        let resp = app
            .gql(
                &app.admin,
                "mutation($input: UpdateProgramInput!) { updateProgram(input: $input) { program { id } } }",
                json!({"input": input}),
            )
            .await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
        assert_eq!(error_field(&resp), field);
    }
}

async fn channel_conflicts_are_held_for_review_without_leaking(app: TestApp) {
    let program = program(&app, json!({"attributionWindowDays": 90})).await;
    let alpha = partner(&app, &program, "Alpha").await;
    let alpha_key = app.partner_key(&alpha.id).await;
    let mut crm = Crm::new(&app, &program).await;
    // The sales team's own open deal with the company, created before the submission.
    crm.deal(
        &app,
        json!({"id": "SALES-OWNED-1", "amount": "48213.57", "status": "open",
               "companyDomain": "owned.example", "name": "Owned by Sam Seller",
               "createdAt": (Utc::now() - Duration::days(3)).to_rfc3339()}),
    )
    .await;
    let held = submit(&app, &alpha_key, "www.owned.example").await;
    assert_eq!(held["status"], "CONFLICT");
    assert_eq!(held["statusDetail"], "under review");
    assert_eq!(held["conflict"], Value::Null, "partners are not told");
    let id = held["id"].as_str().unwrap().to_string();
    // Nothing the partner can read names the deal or its owner.
    let seen = app
        .ok(
            &alpha_key,
            &format!(
                "{{ referrals {{ edges {{ node {{ {REFERRAL_FIELDS} deal {{ id }} }} }} }} events {{ edges {{ node {{ data }} }} }} }}"
            ),
            json!({}),
        )
        .await
        .to_string();
    let deal_id = count(
        &app.db,
        "SELECT COUNT(*) AS n FROM deals WHERE external_id = 'SALES-OWNED-1'",
    )
    .await;
    assert_eq!(deal_id, 1);
    // The amount is looked for as text and as a JSON number of cents: a bare "5000" once matched
    // the clock-derived digits of a UUIDv7 id.
    for secret in ["SALES-OWNED-1", "Sam Seller", "48213.57", ":4821357"] {
        assert!(!seen.contains(secret), "{secret} leaked: {seen}");
    }
    let admin_view = referral_as(&app, &app.admin, &id).await;
    let conflict_deal = admin_view["conflict"]["dealId"].as_str().unwrap();
    let deal = app
        .admin_ok(
            "query($id: ID!) { deal(id: $id) { externalId } }",
            json!({"id": conflict_deal}),
        )
        .await;
    assert_eq!(deal["deal"]["externalId"], "SALES-OWNED-1");
    assert!(!seen.contains(conflict_deal));
    // The program manager approves it: protected from then on.
    let approved = review(&app, &app.admin, &id, "APPROVE", Value::Null).await;
    assert_eq!(
        approved["data"]["reviewReferral"]["referral"]["status"],
        "ACCEPTED"
    );

    // A deal won longer ago than the attribution window, or lost, is no conflict.
    crm.deal(
        &app,
        json!({"id": "OLD-WIN", "amount": "100", "status": "won", "companyDomain": "oldwin.example",
               "closedAt": (Utc::now() - Duration::days(200)).to_rfc3339(),
               "createdAt": (Utc::now() - Duration::days(220)).to_rfc3339()}),
    )
    .await;
    crm.deal(
        &app,
        json!({"id": "LOST-1", "amount": "100", "status": "lost", "companyDomain": "lost.example",
               "createdAt": (Utc::now() - Duration::days(20)).to_rfc3339()}),
    )
    .await;
    assert_eq!(
        submit(&app, &alpha_key, "oldwin.example").await["status"],
        "ACCEPTED"
    );
    assert_eq!(
        submit(&app, &alpha_key, "lost.example").await["status"],
        "ACCEPTED"
    );
    // A recently won deal is one.
    crm.deal(
        &app,
        json!({"id": "NEW-WIN", "amount": "100", "status": "won", "companyDomain": "newwin.example",
               "closedAt": (Utc::now() - Duration::days(10)).to_rfc3339(),
               "createdAt": (Utc::now() - Duration::days(30)).to_rfc3339()}),
    )
    .await;
    assert_eq!(
        submit(&app, &alpha_key, "newwin.example").await["status"],
        "CONFLICT"
    );

    // A referred customer is a conflict too, even when its deal is long closed.
    let beta = partner(&app, &program, "Beta").await;
    let beta_key = app.partner_key(&beta.id).await;
    crm.deal(
        &app,
        json!({"id": "CUST-1", "amount": "900", "status": "won", "companyDomain": "customer.example",
               "referralCode": beta.code,
               "closedAt": (Utc::now() - Duration::days(300)).to_rfc3339(),
               "createdAt": (Utc::now() - Duration::days(320)).to_rfc3339()}),
    )
    .await;
    let customer = submit(&app, &alpha_key, "customer.example").await;
    assert_eq!(customer["status"], "CONFLICT");
    let admin_view = referral_as(&app, &app.admin, customer["id"].as_str().unwrap()).await;
    assert_eq!(admin_view["conflict"]["dealId"], Value::Null);
    assert!(admin_view["conflict"]["customerId"].is_string());
    // Which partner's customer it is stays hidden from the other partner.
    let seen = app
        .ok(
            &alpha_key,
            "{ referrals { edges { node { id status conflict { customerId } } } } }",
            json!({}),
        )
        .await
        .to_string();
    assert!(!seen.contains(&beta.id));
    // A conflict holds the company: another partner's registration is a duplicate.
    assert_eq!(
        submit(&app, &beta_key, "owned.example").await["status"],
        "DUPLICATE"
    );
    let rejected = review(
        &app,
        &app.admin,
        customer["id"].as_str().unwrap(),
        "REJECT",
        json!("already our customer"),
    )
    .await;
    assert_eq!(
        rejected["data"]["reviewReferral"]["referral"]["rejectionReason"],
        "already our customer"
    );
}

async fn protection_extends_and_expires(app: TestApp) {
    let program = program(
        &app,
        json!({"registration": {"protectionDays": 1, "extensionDays": 2, "maxExtensions": 1}}),
    )
    .await;
    let alpha = partner(&app, &program, "Alpha").await;
    let beta = partner(&app, &program, "Beta").await;
    let alpha_key = app.partner_key(&alpha.id).await;
    let beta_key = app.partner_key(&beta.id).await;

    let kept = submit(&app, &alpha_key, "kept.example").await;
    let kept_id = kept["id"].as_str().unwrap();
    let until = time(&kept["protectedUntil"]);
    assert_eq!(until, time(&kept["acceptedAt"]) + Duration::days(1));
    // Partners cannot extend.
    let refused = extend(&app, &alpha_key, kept_id).await;
    assert_eq!(error_code(&refused), "FORBIDDEN", "{refused}");
    let extended = extend(&app, &app.admin, kept_id).await;
    let extended = &extended["data"]["extendReferral"]["referral"];
    assert_eq!(extended["extensions"], 1);
    assert_eq!(time(&extended["protectedUntil"]), until + Duration::days(2));
    // Past maxExtensions: CONFLICT, and nothing changed.
    let again = extend(&app, &app.admin, kept_id).await;
    assert_eq!(error_code(&again), "CONFLICT", "{again}");
    assert_eq!(
        referral_as(&app, &app.admin, kept_id).await["extensions"],
        1
    );

    // Lapsing: one registration without a deal, one with an attributed (open) deal.
    let lapsing = submit(&app, &alpha_key, "lapsing.example").await;
    let lapsing_id = lapsing["id"].as_str().unwrap().to_string();
    let with_deal = submit(&app, &alpha_key, "withdeal.example").await;
    let with_deal_id = with_deal["id"].as_str().unwrap().to_string();
    let mut crm = Crm::new(&app, &program).await;
    crm.deal(
        &app,
        json!({"id": "WD-1", "amount": "100", "status": "open", "companyDomain": "withdeal.example",
               "createdAt": Utc::now().to_rfc3339()}),
    )
    .await;
    assert!(
        referral_as(&app, &app.admin, &with_deal_id).await["engagedAt"].is_string(),
        "an attributed deal is an engagement"
    );
    // Microseconds: what PostgreSQL keeps.
    let past = (Utc::now() - Duration::seconds(1)).trunc_subsecs(6);
    for id in [&lapsing_id, &with_deal_id] {
        age(&app, id, |m| m.protected_until = Set(Some(past))).await;
    }
    // Before the job runs, the lapsed registration already stops holding the company.
    let stats = run_job(&app, "expire-registrations", false).await;
    assert_eq!(stats["expired"], 1, "{stats}");
    let expired = referral_as(&app, &alpha_key, &lapsing_id).await;
    assert_eq!(expired["status"], "EXPIRED");
    assert_eq!(
        expired["statusDetail"],
        "expired: the protection ended without a deal"
    );
    assert_eq!(
        referral_as(&app, &app.admin, &with_deal_id).await["status"],
        "ACCEPTED"
    );
    let events = events_about(&app, "referral.expired", &lapsing_id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        time(&events[0]["data"]["protectedUntil"]),
        time(&json!(past.to_rfc3339()))
    );
    // Running again expires nothing twice.
    assert_eq!(
        run_job(&app, "expire-registrations", false).await["expired"],
        0
    );
    assert_eq!(
        events_about(&app, "referral.expired", &lapsing_id)
            .await
            .len(),
        1
    );
    // An expired registration neither blocks the company nor attributes its deals.
    let taken = submit(&app, &beta_key, "lapsing.example").await;
    assert_eq!(taken["status"], "ACCEPTED");
    crm.deal(
        &app,
        json!({"id": "LAP-1", "amount": "100", "status": "open", "companyDomain": "lapsing.example",
               "createdAt": Utc::now().to_rfc3339()}),
    )
    .await;
    let attributed = app
        .admin_ok(
            "{ deals(first: 10) { edges { node { externalId partner { id } attributionMethod } } } }",
            json!({}),
        )
        .await;
    let lap = nodes(&attributed["deals"])
        .into_iter()
        .find(|d| d["externalId"] == "LAP-1")
        .unwrap();
    assert_eq!(lap["partner"]["id"], json!(beta.id));
    assert_eq!(lap["attributionMethod"], "DOMAIN");
    // An expired registration cannot be extended; an admin can accept it again.
    let refused = extend(&app, &app.admin, &lapsing_id).await;
    assert_eq!(error_code(&refused), "CONFLICT");

    // protectionDays 0: no protection; the next run expires it.
    app.admin_ok(
        "mutation($id: ID!) { updateProgram(input: {id: $id, registration: {protectionDays: 0}}) { program { id } } }",
        json!({"id": program}),
    )
    .await;
    let unprotected = submit(&app, &alpha_key, "zero.example").await;
    assert_eq!(unprotected["protectedUntil"], unprotected["acceptedAt"]);
    assert_eq!(
        run_job(&app, "expire-registrations", false).await["expired"],
        1
    );
}

async fn a_deal_after_protected_until_is_not_attributed(app: TestApp) {
    let program = program(&app, json!({"registration": {"protectionDays": 30}})).await;
    let alpha = partner(&app, &program, "Alpha").await;
    let key = app.partner_key(&alpha.id).await;
    let late = submit(&app, &key, "late.example").await;
    let early = submit(&app, &key, "early.example").await;
    let mut crm = Crm::new(&app, &program).await;
    let after = time(&late["protectedUntil"]) + Duration::seconds(1);
    let before = time(&early["protectedUntil"]) - Duration::seconds(1);
    crm.deal(
        &app,
        json!({"id": "AFTER", "amount": "100", "status": "open", "companyDomain": "late.example",
               "createdAt": after.to_rfc3339(), "updatedAt": (after + Duration::seconds(1)).to_rfc3339()}),
    )
    .await;
    crm.deal(
        &app,
        json!({"id": "BEFORE", "amount": "100", "status": "open", "companyDomain": "early.example",
               "createdAt": before.to_rfc3339(), "updatedAt": (before + Duration::seconds(1)).to_rfc3339()}),
    )
    .await;
    let deals = app
        .admin_ok(
            "{ deals(first: 10) { edges { node { externalId attributionMethod } } } }",
            json!({}),
        )
        .await;
    let by_id = |external: &str| {
        nodes(&deals["deals"])
            .into_iter()
            .find(|d| d["externalId"] == external)
            .unwrap()
    };
    assert_eq!(by_id("AFTER")["attributionMethod"], Value::Null);
    assert_eq!(by_id("BEFORE")["attributionMethod"], "DOMAIN");
    let linked = app
        .admin_ok(
            "query($id: ID!) { referral(id: $id) { deal { externalId } } }",
            json!({"id": early["id"]}),
        )
        .await;
    assert_eq!(linked["referral"]["deal"]["externalId"], "BEFORE");
}

async fn engagement_meets_or_breaches_the_sla_once(app: TestApp) {
    let program = program(&app, json!({"leadSlaMinutes": 60})).await;
    let other_program =
        program_with(&app, json!({"type": "PERCENT", "rate": "10"}), json!({})).await;
    let alpha = partner(&app, &program, "Alpha").await;
    let key = app.partner_key(&alpha.id).await;

    // Engaged in time through the API: MET, and `referral.engaged` once.
    let met = submit(&app, &key, "met.example").await;
    let met_id = met["id"].as_str().unwrap().to_string();
    assert_eq!(met["sla"]["state"], "PENDING");
    assert_eq!(
        time(&met["sla"]["dueAt"]),
        time(&met["acceptedAt"]) + Duration::minutes(60)
    );
    let refused = engage(&app, &key, json!({"referralId": met_id, "kind": "call"})).await;
    assert_eq!(error_code(&refused), "FORBIDDEN", "{refused}");
    let stranger = integration_key(&app, &[&other_program]).await;
    let hidden = engage(
        &app,
        &stranger,
        json!({"referralId": met_id, "kind": "call"}),
    )
    .await;
    assert_eq!(error_code(&hidden), "NOT_FOUND", "{hidden}");
    for (input, field) in [
        (json!({"referralId": met_id, "kind": " "}), "input.kind"),
        (
            json!({"referralId": met_id, "kind": "call", "at": (Utc::now() + Duration::hours(1)).to_rfc3339()}),
            "input.at",
        ),
        (
            json!({"referralId": met_id, "kind": "call", "at": (Utc::now() - Duration::days(1)).to_rfc3339()}),
            "input.at",
        ),
        (
            json!({"referralId": met_id, "kind": "call", "note": "n".repeat(2001)}),
            "input.note",
        ),
    ] {
        let resp = engage(&app, &app.admin, input).await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
        assert_eq!(error_field(&resp), field);
    }
    let sales_tool = integration_key(&app, &[&program]).await;
    let engaged = engage(
        &app,
        &sales_tool,
        json!({"referralId": met_id, "kind": "call", "note": "budget confirmed"}),
    )
    .await;
    let engaged = &engaged["data"]["recordEngagement"]["referral"];
    assert_eq!(engaged["sla"]["state"], "MET", "{engaged}");
    let first_engaged = engaged["engagedAt"].clone();
    engage(
        &app,
        &app.admin,
        json!({"referralId": met_id, "kind": "email"}),
    )
    .await;
    let seen = app
        .ok(
            &key,
            "query($id: ID!) { referral(id: $id) { engagedAt sla { state } engagements { kind source note } } }",
            json!({"id": met_id}),
        )
        .await;
    assert_eq!(seen["referral"]["engagedAt"], first_engaged);
    assert_eq!(seen["referral"]["sla"]["state"], "MET");
    assert_eq!(
        seen["referral"]["engagements"],
        json!([{"kind": "call", "source": "API", "note": null}, {"kind": "email", "source": "API", "note": null}]),
        "partners do not read the notes"
    );
    let admin_notes = app
        .admin_ok(
            "query($id: ID!) { referral(id: $id) { engagements { note } } }",
            json!({"id": met_id}),
        )
        .await;
    assert_eq!(
        admin_notes["referral"]["engagements"][0]["note"],
        "budget confirmed"
    );
    assert_eq!(
        events_about(&app, "referral.engaged", &met_id).await.len(),
        1
    );

    // Not engaged by the due time: the job breaches it once; a later engagement changes
    // nothing but `engagedAt`.
    let late = submit(&app, &key, "late.example").await;
    let late_id = late["id"].as_str().unwrap().to_string();
    let due = (Utc::now() - Duration::seconds(5)).trunc_subsecs(6);
    age(&app, &late_id, |m| m.sla_due_at = Set(Some(due))).await;
    // Past due, the API already says so (the job records it).
    assert_eq!(
        referral_as(&app, &key, &late_id).await["sla"]["state"],
        "BREACHED"
    );
    let stats = run_job(&app, "lead-sla", false).await;
    assert_eq!(stats["breached"], 1, "{stats}");
    assert_eq!(run_job(&app, "lead-sla", false).await["breached"], 0);
    engage(
        &app,
        &app.admin,
        json!({"referralId": late_id, "kind": "call"}),
    )
    .await;
    let after = referral_as(&app, &key, &late_id).await;
    assert_eq!(after["sla"]["state"], "BREACHED");
    assert!(after["engagedAt"].is_string());
    let breaches = events_about(&app, "referral.sla_breached", &late_id).await;
    assert_eq!(breaches.len(), 1, "{breaches:?}");
    assert_eq!(
        time(&breaches[0]["data"]["dueAt"]),
        time(&json!(due.to_rfc3339()))
    );

    // Engaged after the due time but before the job ran: breached once, by the engagement.
    let racing = submit(&app, &key, "racing.example").await;
    let racing_id = racing["id"].as_str().unwrap().to_string();
    age(&app, &racing_id, |m| {
        m.sla_due_at = Set(Some(Utc::now() - Duration::seconds(5)))
    })
    .await;
    engage(
        &app,
        &app.admin,
        json!({"referralId": racing_id, "kind": "call"}),
    )
    .await;
    assert_eq!(run_job(&app, "lead-sla", false).await["breached"], 0);
    assert_eq!(
        events_about(&app, "referral.sla_breached", &racing_id)
            .await
            .len(),
        1
    );

    // A `lead.engaged` webhook from a sales tool on a STANDARD source.
    let hooked = submit(&app, &key, "hooked.example").await;
    let hooked_id = hooked["id"].as_str().unwrap().to_string();
    age(&app, &hooked_id, |m| {
        m.submitted_at = Set(Utc::now() - Duration::minutes(10))
    })
    .await;
    let crm = Crm::new(&app, &program).await;
    let at = (Utc::now() - Duration::minutes(1)).trunc_subsecs(0);
    for (id, body) in [
        (
            "lead-1",
            json!({"type": "lead.engaged", "data": {"companyDomain": "WWW.Hooked.example",
                   "referralCode": alpha.code, "kind": "meeting", "at": at.to_rfc3339()}}),
        ),
        (
            "lead-2",
            json!({"type": "lead.engaged", "data": {"companyDomain": "nobody.example", "kind": "call"}}),
        ),
    ] {
        let resp = post_signed(
            &app,
            &crm.source,
            id,
            Utc::now().timestamp(),
            &body.to_string(),
        )
        .await;
        assert_eq!(resp.status(), 200);
    }
    // A malformed one is refused at the door.
    let resp = post_signed(
        &app,
        &crm.source,
        "lead-3",
        Utc::now().timestamp(),
        &json!({"type": "lead.engaged", "data": {"kind": "call"}}).to_string(),
    )
    .await;
    assert!(resp.status().is_client_error() || resp.status() == 200);
    drain(&app).await;
    let receipts = app
        .admin_ok(
            "query($id: ID!) { webhookReceipts(filter: {sourceId: $id}, first: 10) { edges { node { providerEventId status reason } } } }",
            json!({"id": crm.source.id}),
        )
        .await;
    let receipts = nodes(&receipts["webhookReceipts"]);
    let status_of = |id: &str| {
        receipts
            .iter()
            .find(|r| r["providerEventId"] == id)
            .map(|r| (r["status"].clone(), r["reason"].clone()))
            .unwrap()
    };
    assert_eq!(status_of("lead-1").0, "APPLIED");
    assert_eq!(status_of("lead-2").0, "IGNORED");
    assert!(
        status_of("lead-2")
            .1
            .as_str()
            .unwrap()
            .contains("nobody.example"),
        "{receipts:?}"
    );
    assert_eq!(status_of("lead-3").0, "FAILED");
    let hooked = referral_as(&app, &app.admin, &hooked_id).await;
    assert_eq!(hooked["sla"]["state"], "MET");
    assert_eq!(time(&hooked["engagedAt"]), time(&json!(at.to_rfc3339())));

    // A deal attributed to the referral is an engagement.
    let by_deal = submit(&app, &key, "bydeal.example").await;
    let by_deal_id = by_deal["id"].as_str().unwrap().to_string();
    let mut crm = crm;
    crm.deal(
        &app,
        json!({"id": "BD-1", "amount": "100", "status": "open", "companyDomain": "bydeal.example",
               "createdAt": Utc::now().to_rfc3339()}),
    )
    .await;
    let by_deal = app
        .admin_ok(
            "query($id: ID!) { referral(id: $id) { sla { state } engagements { kind source } } }",
            json!({"id": by_deal_id}),
        )
        .await;
    assert_eq!(by_deal["referral"]["sla"]["state"], "MET");
    assert_eq!(
        by_deal["referral"]["engagements"],
        json!([{"kind": "deal", "source": "DEAL"}])
    );

    // Partners see their own SLA states; admins filter by them; the KPIs sum them up.
    let breached = app
        .ok(
            &key,
            "{ referrals(filter: {slaState: BREACHED}) { edges { node { id } } } }",
            json!({}),
        )
        .await;
    let mut ids: Vec<String> = nodes(&breached["referrals"])
        .into_iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut expected = vec![late_id.clone(), racing_id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let kpis = app
        .admin_ok(
            "query($id: ID!) { kpis(programId: $id) { slaMetRate medianHoursToEngagement } }",
            json!({"id": program}),
        )
        .await;
    // met, hooked and bydeal met; late and racing breached.
    assert_eq!(kpis["kpis"]["slaMetRate"], json!(0.6));
    assert!(kpis["kpis"]["medianHoursToEngagement"].as_f64().unwrap() < 0.1);
    // An engagement on a rejected referral is refused.
    let rejected = submit(&app, &key, "rejected.example").await;
    app.admin_ok(
        "mutation($id: ID!) { updateReferralStatus(input: {id: $id, status: REJECTED}) { referral { id } } }",
        json!({"id": rejected["id"]}),
    )
    .await;
    let refused = engage(
        &app,
        &app.admin,
        json!({"referralId": rejected["id"], "kind": "call"}),
    )
    .await;
    assert_eq!(error_code(&refused), "CONFLICT");
}

/// 10,000 referrals whose SLA fell due swept by two instances at once (each its own pool, as
/// two processes would be, bypassing the job lease that would otherwise serialise them):
/// every referral is breached once, with exactly one event.
async fn sla_breaches_once_across_two_instances(app: TestApp) {
    const N: usize = 10_000;
    let program = program(&app, json!({"leadSlaMinutes": 30})).await;
    let alpha = partner(&app, &program, "Alpha").await;
    let now = Utc::now();
    let due = now - Duration::minutes(1);
    for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
        let rows: Vec<referral::ActiveModel> = chunk
            .iter()
            .map(|i| referral::ActiveModel {
                id: Set(tandem::domain::ids::new_id()),
                program_id: Set(program.clone()),
                partner_id: Set(alpha.id.clone()),
                company_name: Set(format!("Lead {i}")),
                company_domain: Set(Some(format!("lead{i}.example"))),
                contact_name: Set(None),
                contact_email: Set(None),
                notes: Set(None),
                status: Set(tandem::db::states::ReferralStatus::Accepted),
                duplicate_of_id: Set(None),
                submitted_at: Set(due - Duration::minutes(30)),
                updated_at: Set(due - Duration::minutes(30)),
                accepted_at: Set(Some(due - Duration::minutes(30))),
                protected_until: Set(Some(now + Duration::days(90))),
                extensions: Set(0),
                rejection_reason: Set(None),
                conflict_deal_id: Set(None),
                conflict_customer_id: Set(None),
                engaged_at: Set(None),
                sla_due_at: Set(Some(due)),
                sla_state: Set(Some(tandem::db::states::SlaState::Pending)),
            })
            .collect();
        let tx = app.db.begin_write().await.unwrap();
        referral::Entity::insert_many(rows)
            .exec(&*tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let mut instances = Vec::new();
    for _ in 0..2 {
        let db = tandem::db::Db::connect(&app.database_url, 4).await.unwrap();
        instances.push(tokio::spawn(async move {
            tandem::domain::registration::breach_due_slas(&db, Utc::now())
                .await
                .unwrap()
        }));
    }
    let mut flipped = 0;
    for instance in instances {
        flipped += instance.await.unwrap();
    }
    assert_eq!(flipped, N as u64);
    let events = count(
        &app.db,
        "SELECT COUNT(*) AS n FROM events WHERE type = 'referral.sla_breached'",
    )
    .await;
    assert_eq!(events, N as i64);
    let referral_id = if app.db.is_postgres() {
        "data->>'referralId'"
    } else {
        "json_extract(data, '$.referralId')"
    };
    let distinct = count(
        &app.db,
        &format!(
            "SELECT COUNT(DISTINCT {referral_id}) AS n FROM events \
             WHERE type = 'referral.sla_breached'"
        ),
    )
    .await;
    assert_eq!(distinct, N as i64, "no referral breached twice");
    let breached = count(
        &app.db,
        "SELECT COUNT(*) AS n FROM referrals WHERE sla_state = 'BREACHED'",
    )
    .await;
    assert_eq!(breached, N as i64);
    // The job finds nothing left, on either instance.
    assert_eq!(run_job(&app, "lead-sla", false).await["breached"], 0);
}

db_tests!(
    sla_breaches_once_across_two_instances,
    manual_approval_and_review,
    channel_conflicts_are_held_for_review_without_leaking,
    protection_extends_and_expires,
    a_deal_after_protected_until_is_not_attributed,
    engagement_meets_or_breaches_the_sla_once,
);
