//! Certifications (DESIGN §13): recorded by admins, LMS integration keys and
//! `certification.issued` webhooks; renewed in place; announced once 30 days before expiry.

use chrono::{Duration, SubsecRound, Utc};
use serde_json::{Value, json};

use crate::{
    commissions::{Crm, partner, program_with, run_job},
    db_tests,
    helpers::{TestApp, error_code, error_field, nodes},
    registration::integration_key,
    webhooks::{drain, post_signed},
};

const RECORD: &str = "mutation($input: RecordCertificationInput!) { recordCertification(input: $input) { \
    certification { id partnerId partner { id } personEmail courseKey issuedAt expiresAt active source } } }";

async fn record(app: &TestApp, token: &str, input: Value) -> Value {
    app.gql(token, RECORD, json!({"input": input})).await
}

async fn events_of(app: &TestApp, event_type: &str) -> Vec<Value> {
    nodes(
        &app.admin_ok(
            "query($t: [String!]) { events(first: 100, types: $t) { edges { node { data } } } }",
            json!({"t": [event_type]}),
        )
        .await["events"],
    )
    .into_iter()
    .map(|e| e["data"].clone())
    .collect()
}

async fn certifications_are_recorded_renewed_and_announced(app: TestApp) {
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "10"}), json!({})).await;
    let other = program_with(&app, json!({"type": "PERCENT", "rate": "10"}), json!({})).await;
    let alpha = partner(&app, &program, "Alpha").await;
    let alpha_key = app.partner_key(&alpha.id).await;
    let now = Utc::now().trunc_subsecs(0);

    // Who may record.
    let input = json!({"partnerId": alpha.id, "personEmail": "Ana@Alpha.example",
                       "courseKey": "sales-101", "expiresAt": (now + Duration::days(10)).to_rfc3339()});
    let refused = record(&app, &alpha_key, input.clone()).await;
    assert_eq!(error_code(&refused), "FORBIDDEN", "{refused}");
    let stranger = integration_key(&app, &[&other]).await;
    let hidden = record(&app, &stranger, input.clone()).await;
    assert_eq!(error_code(&hidden), "NOT_FOUND", "{hidden}");
    let lms = integration_key(&app, &[&program]).await;
    let first = record(&app, &lms, input.clone()).await;
    let first = &first["data"]["recordCertification"]["certification"];
    assert_eq!(first["personEmail"], "ana@alpha.example");
    assert_eq!(first["active"], true);
    assert_eq!(first["source"], "API");
    // Integration keys read no partner data: the partner object stays null for the LMS.
    assert_eq!(first["partnerId"], json!(alpha.id));
    assert_eq!(first["partner"], Value::Null);
    // Bad input names the field.
    for (change, field) in [
        (json!({"personEmail": "nobody"}), "input.personEmail"),
        (json!({"courseKey": "has spaces"}), "input.courseKey"),
        (json!({"courseKey": ""}), "input.courseKey"),
        (
            json!({"issuedAt": (now + Duration::days(1)).to_rfc3339()}),
            "input.issuedAt",
        ),
        (
            json!({"issuedAt": now.to_rfc3339(), "expiresAt": (now - Duration::days(1)).to_rfc3339()}),
            "input.expiresAt",
        ),
    ] {
        let mut bad = input.clone();
        for (k, v) in change.as_object().unwrap() {
            bad[k] = v.clone();
        }
        let resp = record(&app, &app.admin, bad).await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{change}: {resp}");
        assert_eq!(error_field(&resp), field);
    }

    // Expiring within 30 days: announced once; one expiring in 60 days is not yet.
    record(
        &app,
        &app.admin,
        json!({"partnerId": alpha.id, "personEmail": "ben@alpha.example", "courseKey": "tech-201",
               "expiresAt": (now + Duration::days(60)).to_rfc3339()}),
    )
    .await;
    assert_eq!(run_job(&app, "certifications", false).await["expiring"], 1);
    assert_eq!(run_job(&app, "certifications", false).await["expiring"], 0);
    let expiring = events_of(&app, "certification.expiring").await;
    assert_eq!(expiring.len(), 1, "{expiring:?}");
    assert_eq!(expiring[0]["personEmail"], "ana@alpha.example");
    assert_eq!(expiring[0]["courseKey"], "sales-101");
    assert_eq!(expiring[0]["partnerId"], json!(alpha.id));

    // A renewal updates the same certification and re-arms the notice for its new date.
    let mut renewal = input.clone();
    renewal["expiresAt"] = json!((now + Duration::days(20)).to_rfc3339());
    let renewed = record(&app, &app.admin, renewal).await;
    assert_eq!(
        renewed["data"]["recordCertification"]["certification"]["partner"]["id"],
        json!(alpha.id)
    );
    assert_eq!(
        renewed["data"]["recordCertification"]["certification"]["id"],
        first["id"]
    );
    let recorded = events_of(&app, "certification.recorded").await;
    assert_eq!(
        recorded.iter().filter(|e| e["renewed"] == true).count(),
        1,
        "{recorded:?}"
    );
    assert_eq!(run_job(&app, "certifications", false).await["expiring"], 1);
    assert_eq!(events_of(&app, "certification.expiring").await.len(), 2);

    // An LMS webhook on a STANDARD source, matched by referral code or by the person's domain.
    app.admin_ok(
        "mutation($id: ID!) { updatePartner(input: {id: $id, domain: \"alpha.example\"}) { partner { id } } }",
        json!({"id": alpha.id}),
    )
    .await;
    let crm = Crm::new(&app, &program).await;
    let expired_at = now - Duration::days(1);
    for (id, data) in [
        (
            "cert-1",
            json!({"personEmail": "cara@alpha.example", "courseKey": "sales-101",
                          "referralCode": alpha.code, "issuedAt": (now - Duration::days(400)).to_rfc3339(),
                          "expiresAt": expired_at.to_rfc3339()}),
        ),
        (
            "cert-2",
            json!({"personEmail": "dan@alpha.example", "courseKey": "sales-101"}),
        ),
        (
            "cert-3",
            json!({"personEmail": "eve@unknown.example", "courseKey": "sales-101"}),
        ),
    ] {
        let body = json!({"type": "certification.issued", "data": data}).to_string();
        let resp = post_signed(&app, &crm.source, id, Utc::now().timestamp(), &body).await;
        assert_eq!(resp.status(), 200);
    }
    drain(&app).await;
    let receipts = nodes(
        &app.admin_ok(
            "query($id: ID!) { webhookReceipts(filter: {sourceId: $id}) { edges { node { providerEventId status reason } } } }",
            json!({"id": crm.source.id}),
        )
        .await["webhookReceipts"],
    );
    let status = |id: &str| {
        receipts
            .iter()
            .find(|r| r["providerEventId"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(status("cert-1")["status"], "APPLIED");
    assert_eq!(status("cert-2")["status"], "APPLIED");
    assert_eq!(status("cert-3")["status"], "FAILED");
    assert!(
        status("cert-3")["reason"]
            .as_str()
            .unwrap()
            .contains("no partner")
    );

    // The partner reads its own certifications; `active` leaves out the expired one.
    let mine = app
        .ok(
            &alpha_key,
            "query($id: ID!) { partner(id: $id) { all: certifications { personEmail source active } active: certifications(active: true) { personEmail } } }",
            json!({"id": alpha.id}),
        )
        .await;
    let all = mine["partner"]["all"].as_array().unwrap();
    assert_eq!(all.len(), 4, "{mine}");
    let mut active: Vec<&str> = mine["partner"]["active"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["personEmail"].as_str().unwrap())
        .collect();
    active.sort_unstable();
    assert_eq!(
        active,
        [
            "ana@alpha.example",
            "ben@alpha.example",
            "dan@alpha.example"
        ]
    );
    assert!(
        all.iter()
            .any(|c| c["personEmail"] == "cara@alpha.example" && c["source"] == "WEBHOOK")
    );
}

db_tests!(certifications_are_recorded_renewed_and_announced);
