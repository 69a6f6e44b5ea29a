//! Partner isolation: a partner key sees its own partner, referrals and deals only; another
//! partner's objects are reported exactly like missing ones, by id, in lists and nested.

use chrono::Utc;
use sea_orm::{ActiveModelTrait, ActiveValue::Set};
use serde_json::json;
use tandem::db::entities::{attribution, deal};

use crate::{
    db_tests,
    helpers::{TestApp, error_code},
};

/// Inserts a CRM deal attributed to `partner` through `referral`.
pub async fn insert_attributed_deal(
    app: &TestApp,
    program: &str,
    partner: &str,
    referral: Option<&str>,
    name: &str,
) -> String {
    let now = Utc::now();
    let id = tandem::domain::ids::new_id();
    let tx = app.db.begin_write().await.unwrap();
    deal::ActiveModel {
        id: Set(id.clone()),
        program_id: Set(program.to_string()),
        source_id: Set("test".into()),
        external_id: Set(format!("ext-{id}")),
        name: Set(name.into()),
        amount: Set("1000.00".into()),
        currency: Set("USD".into()),
        status: Set(tandem::db::states::DealStatus::Open),
        stage: Set(None),
        closed_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        company_domain: Set(None),
        contact_emails: Set(json!([])),
        referral_code: Set(None),
        deleted: Set(false),
        first_seen_at: Set(now),
        last_applied_at: Set(now),
        ..Default::default()
    }
    .insert(&*tx)
    .await
    .unwrap();
    attribution::ActiveModel {
        deal_id: Set(id.clone()),
        partner_id: Set(partner.to_string()),
        referral_id: Set(referral.map(str::to_string)),
        method: Set(tandem::db::states::AttributionMethod::Domain),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&*tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

async fn a_partner_sees_only_its_own_data(app: TestApp) {
    let program = app.create_program("P").await;
    let other_program = app.create_program("Q").await;
    let alpha = app.create_partner(&program, "Alpha").await;
    let beta = app.create_partner(&program, "Beta").await;
    let alpha_token = app.partner_key(&alpha).await;
    let beta_token = app.partner_key(&beta).await;
    let ra = app
        .submit_referral(
            &alpha_token,
            json!({"companyName": "A Corp", "companyDomain": "a.com"}),
        )
        .await;
    let rb = app
        .submit_referral(
            &beta_token,
            json!({"companyName": "B Corp", "companyDomain": "b.com"}),
        )
        .await;
    let rb_id = rb["id"].as_str().unwrap();
    let da = insert_attributed_deal(&app, &program, &alpha, ra["id"].as_str(), "Deal A").await;
    let db = insert_attributed_deal(&app, &program, &beta, Some(rb_id), "Deal B").await;

    // By id: Beta's objects look exactly like missing ones.
    let missing = "01900000-0000-7000-8000-000000000000";
    for (field, id) in [
        ("partner", beta.as_str()),
        ("referral", rb_id),
        ("deal", db.as_str()),
        ("program", other_program.as_str()),
    ] {
        let query = format!("query($id: ID!) {{ {field}(id: $id) {{ id }} }}");
        let theirs = app.gql(&alpha_token, &query, json!({"id": id})).await;
        let absent = app.gql(&alpha_token, &query, json!({"id": missing})).await;
        assert_eq!(error_code(&theirs), "NOT_FOUND", "{field}: {theirs}");
        assert_eq!(theirs["data"], absent["data"]);
        assert_eq!(
            theirs["errors"][0]["message"],
            absent["errors"][0]["message"]
        );
        assert_eq!(
            theirs["errors"][0]["extensions"],
            absent["errors"][0]["extensions"]
        );
    }

    // Lists and nested paths.
    let seen = app
        .ok(
            &alpha_token,
            "query($p: ID!) { partners { totalCount edges { node { id } } }
              referrals(filter: {partnerId: null}) { totalCount edges { node { id } } }
              deals { totalCount edges { node { id partner { id } } } }
              programs(first: 5) { totalCount edges { node { id partners(first: 5) { totalCount edges { node { id referrals(first: 10) { edges { node { id deal { id } } } } deals(first: 10) { edges { node { id } } } } } } } } }
              program(id: $p) { partners(first: 100) { totalCount edges { node { id } } } }
              viewer { partner { program { partners { edges { node { id } } } } } } }",
            json!({"p": program}),
        )
        .await;
    let text = seen.to_string();
    assert!(text.contains(&alpha) && text.contains(&da));
    for foreign in [&beta, &db, &rb_id.to_string(), &other_program] {
        assert!(!text.contains(foreign.as_str()), "{foreign} leaked: {text}");
    }
    assert_eq!(seen["partners"]["totalCount"], 1);
    assert_eq!(seen["referrals"]["totalCount"], 1);
    assert_eq!(seen["deals"]["totalCount"], 1);
    assert_eq!(seen["programs"]["totalCount"], 1);
    assert_eq!(seen["program"]["partners"]["totalCount"], 1);

    // Filters naming another partner return nothing.
    let data = app
        .ok(&alpha_token, "query($b: ID!) { referrals(filter: {partnerId: $b}) { totalCount } deals(filter: {partnerId: $b}) { totalCount } }", json!({"b": beta}))
        .await;
    assert_eq!(data["referrals"]["totalCount"], 0);
    assert_eq!(data["deals"]["totalCount"], 0);

    // The admin sees everything.
    let data = app
        .admin_ok(
            "{ partners { totalCount } referrals { totalCount } deals { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(data["partners"]["totalCount"], 2);
    assert_eq!(data["referrals"]["totalCount"], 2);
    assert_eq!(data["deals"]["totalCount"], 2);
    let data = app
        .admin_ok(
            "{ open: deals(filter: {status: OPEN}) { totalCount edges { node { status } } }
               won: deals(filter: {status: WON}) { totalCount }
               lost: deals(filter: {status: LOST}) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(data["open"]["totalCount"], 2);
    assert_eq!(data["open"]["edges"][0]["node"]["status"], "OPEN");
    assert_eq!(data["won"]["totalCount"], 0);
    assert_eq!(data["lost"]["totalCount"], 0);
}

async fn integration_keys_read_events_of_granted_programs_only(app: TestApp) {
    let granted = app.create_program("Granted").await;
    let other = app.create_program("Other").await;
    app.create_partner(&granted, "In").await;
    app.create_partner(&other, "Out").await;
    let data = app
        .admin_ok(
            "mutation($p: ID!) { createApiKey(input: {name: \"integration\", role: INTEGRATION, programIds: [$p]}) { token apiKey { programIds } } }",
            json!({"p": granted}),
        )
        .await;
    assert_eq!(
        data["createApiKey"]["apiKey"]["programIds"],
        json!([granted])
    );
    let token = data["createApiKey"]["token"].as_str().unwrap();
    let events = app
        .ok(
            token,
            "{ events { totalCount edges { node { data } } } }",
            json!({}),
        )
        .await;
    assert_eq!(events["events"]["totalCount"], 1);
    assert_eq!(
        events["events"]["edges"][0]["node"]["data"]["programId"],
        granted
    );
    let resp = app
        .gql(token, "{ partners { totalCount } }", json!({}))
        .await;
    assert_eq!(error_code(&resp), "FORBIDDEN");
}

db_tests!(
    a_partner_sees_only_its_own_data,
    integration_keys_read_events_of_granted_programs_only,
);
