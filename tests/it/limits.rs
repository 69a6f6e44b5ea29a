//! Request limits: page size, depth, complexity, body size, malformed JSON — rejected before the
//! database is touched; nested lists cost a constant number of statements.

use serde_json::json;

use crate::{
    db_tests,
    helpers::{TestApp, error_code, error_field},
};

async fn oversized_pages_deep_and_complex_queries_are_rejected_before_the_database(app: TestApp) {
    let before = app.db.statement_count();
    let resp = app
        .gql(
            &app.admin,
            "{ programs(first: 101) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&resp), "BAD_USER_INPUT");
    assert_eq!(error_field(&resp), "first");
    let resp = app
        .gql(&app.admin, "query($n: Int) { partners { edges { node { referrals(first: $n) { totalCount } } } } }", json!({"n": 500}))
        .await;
    assert_eq!(error_field(&resp), "first");
    let resp = app
        .gql(
            &app.admin,
            "{ programs(first: -1) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&resp), "BAD_USER_INPUT");

    let deep = "{ viewer { partner { program { partners(first: 1) { edges { node { program { partners(first: 1) { edges { node { program { partners(first: 1) { edges { node { id } } } } } } } } } } } } } } }";
    let resp = app.gql(&app.admin, deep, json!({})).await;
    assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
    assert!(
        resp["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nested too deep"),
        "{resp}"
    );

    let complex = "{ partners(first: 100) { edges { node { referrals(first: 100) { edges { node { id companyName } } } } } } }";
    let resp = app.gql(&app.admin, complex, json!({})).await;
    assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
    assert!(
        resp["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("complex"),
        "{resp}"
    );

    let resp = app.gql(&app.admin, "{ nosuchfield }", json!({})).await;
    assert_eq!(error_code(&resp), "BAD_USER_INPUT");
    assert_eq!(app.db.statement_count(), before, "no statement ran");
}

async fn malformed_and_oversized_bodies_get_http_errors(app: TestApp) {
    let url = format!("{}/graphql", app.base);
    let resp = app
        .client
        .post(&url)
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body("{\"query\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(error_code(&body), "BAD_USER_INPUT");

    let huge = format!(
        "{{\"query\": \"{{ viewer {{ role }} }}\", \"variables\": {{\"x\": \"{}\"}}}}",
        "a".repeat(1024 * 1024 + 10)
    );
    let resp = app
        .client
        .post(&url)
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["connection"], "close");
    // The server is still up.
    assert_eq!(
        app.admin_ok("{ viewer { role } }", json!({})).await["viewer"]["role"],
        "ADMIN"
    );
}

async fn statements_per_dashboard_query_do_not_grow_with_page_size(app: TestApp) {
    let program = app.create_program("P").await;
    let alpha = app.create_partner(&program, "Alpha").await;
    let token = app.partner_key(&alpha).await;
    let referrals = app.submit_referrals(&token, 60, "com").await;
    for (i, referral) in referrals.iter().enumerate().step_by(2) {
        crate::isolation::insert_attributed_deal(
            &app,
            &program,
            &alpha,
            Some(referral),
            &format!("D{i}"),
        )
        .await;
    }
    let dashboard = "query($id: ID!, $n: Int!) { partner(id: $id) { id name referralCode program { name currency }
        referrals(first: $n) { totalCount edges { node { id status companyName submittedAt partner { name }
          deal { id name amount status partner { id } attributionMethod } } } }
        deals(first: $n) { totalCount edges { node { id amount } } } } }";
    let mut costs = Vec::new();
    // Every page holds referrals with and without deals, so each page exercises every loader.
    for n in [2, 10, 50] {
        let before = app.db.statement_count();
        let data = app
            .ok(&token, dashboard, json!({"id": alpha, "n": n}))
            .await;
        assert_eq!(
            data["partner"]["referrals"]["edges"]
                .as_array()
                .unwrap()
                .len(),
            n
        );
        costs.push(app.db.statement_count() - before);
    }
    // One statement per loader and level (batches follow the query's levels, not a timer), so
    // exactly the same count for every page size; a per-item implementation would need at
    // least 50 at the largest page.
    assert!(
        costs.iter().all(|&c| c == costs[0]) && costs[0] <= 12,
        "statements per request: {costs:?}"
    );
    // The deal reached through a referral is the attributed one.
    let data = app
        .ok(&token, dashboard, json!({"id": alpha, "n": 2}))
        .await;
    let edges = data["partner"]["referrals"]["edges"].as_array().unwrap();
    assert!(
        edges
            .iter()
            .any(|e| e["node"]["deal"]["attributionMethod"] == "DOMAIN")
    );
}

/// Each page of referrals loads its deals at once, and the pages of sibling partners share
/// one batch: the statements of a program's partners with their referrals and deals do not
/// grow with the number of partners.
async fn referral_pages_of_many_partners_share_their_deal_statement(app: TestApp) {
    let program = app.create_program("P").await;
    for name in ["Alpha", "Beta", "Gamma", "Delta"] {
        let partner = app.create_partner(&program, name).await;
        let token = app.partner_key(&partner).await;
        let referrals = app.submit_referrals(&token, 3, &name.to_lowercase()).await;
        crate::isolation::insert_attributed_deal(
            &app,
            &program,
            &partner,
            Some(&referrals[0]),
            &format!("{name} deal"),
        )
        .await;
    }
    let query = "query($p: ID!, $n: Int!) { program(id: $p) { partners(first: $n) { edges { node {
        name referrals(first: 5) { edges { node { companyName deal { name attributionMethod } } } } } } } } }";
    let mut costs = Vec::new();
    for n in [1, 4] {
        let before = app.db.statement_count();
        let data = app.admin_ok(query, json!({"p": program, "n": n})).await;
        let partners = crate::helpers::nodes(&data["program"]["partners"]);
        assert_eq!(partners.len(), n);
        for partner in &partners {
            let referrals = crate::helpers::nodes(&partner["referrals"]);
            assert_eq!(referrals.len(), 3, "{partner}");
            let deals: Vec<_> = referrals
                .iter()
                .filter(|r| !r["deal"].is_null())
                .map(|r| r["deal"]["name"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(
                deals,
                [format!("{} deal", partner["name"].as_str().unwrap())]
            );
        }
        costs.push(app.db.statement_count() - before);
    }
    assert_eq!(
        costs[0], costs[1],
        "statements for 1 and 4 partners: {costs:?}"
    );
}

/// Parsed documents are kept by query text; the page check and validation still run with each
/// request's own variables, and a text that does not parse is reported every time.
async fn a_kept_document_is_checked_again_with_each_requests_variables(app: TestApp) {
    let query = "query($n: Int) { programs(first: $n) { totalCount } }";
    for _ in 0..2 {
        let data = app.admin_ok(query, json!({"n": 5})).await;
        assert_eq!(data["programs"]["totalCount"], 0);
        let before = app.db.statement_count();
        let resp = app.gql(&app.admin, query, json!({"n": 101})).await;
        assert_eq!(error_field(&resp), "first", "{resp}");
        let resp = app.gql(&app.admin, query, json!({"n": "five"})).await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
        assert_eq!(app.db.statement_count(), before, "no statement ran");
        let resp = app
            .gql(&app.admin, "{ programs(first: 5) { ", json!({}))
            .await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
    }
    // The same text under another key is answered for that key.
    let program = app.create_program("P").await;
    let partner = app.create_partner(&program, "Alpha").await;
    let token = app.partner_key(&partner).await;
    let viewer = "{ viewer { role } }";
    assert_eq!(
        app.admin_ok(viewer, json!({})).await["viewer"]["role"],
        "ADMIN"
    );
    assert_eq!(
        app.ok(&token, viewer, json!({})).await["viewer"]["role"],
        "PARTNER"
    );
}

db_tests!(
    a_kept_document_is_checked_again_with_each_requests_variables,
    oversized_pages_deep_and_complex_queries_are_rejected_before_the_database,
    malformed_and_oversized_bodies_get_http_errors,
    statements_per_dashboard_query_do_not_grow_with_page_size,
    referral_pages_of_many_partners_share_their_deal_statement,
    the_benchmarked_dashboard_takes_four_statements,
);

/// The query `bench/dashboard.sh` drives, with a partner key: the key with its partner (one
/// statement), the partner, its page of referrals with their count, and their deals.
async fn the_benchmarked_dashboard_takes_four_statements(app: TestApp) {
    let program = app.create_program("P").await;
    let alpha = app.create_partner(&program, "Alpha").await;
    let token = app.partner_key(&alpha).await;
    let referrals = app.submit_referrals(&token, 6, "com").await;
    crate::isolation::insert_attributed_deal(&app, &program, &alpha, Some(&referrals[0]), "D")
        .await;
    let dashboard = std::fs::read_to_string("bench/dashboard.sh").unwrap();
    let query = dashboard
        .lines()
        .find_map(|line| line.strip_prefix("query='"))
        .and_then(|rest| rest.strip_suffix('\''))
        .expect("the query of bench/dashboard.sh");
    let before = app.db.statement_count();
    let data = app.ok(&token, query, json!({"id": alpha})).await;
    let statements = app.db.statement_count() - before;
    assert_eq!(data["partner"]["referrals"]["totalCount"], 6);
    let deals = crate::helpers::nodes(&data["partner"]["referrals"])
        .iter()
        .filter(|r| !r["deal"].is_null())
        .count();
    assert_eq!(deals, 1);
    assert!(statements <= 4, "statements: {statements}");
}
