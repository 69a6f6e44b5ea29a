//! Edges, referrals and deals are resolved by `graphql::inline` rather than async-graphql's
//! generic container executor; selections it does not take (fragments, a response key used
//! twice) go the generic way. Both must answer alike: same data, same errors, fields in
//! selection order.

use serde_json::{Value, json};

use crate::{db_tests, helpers::TestApp, isolation::insert_attributed_deal};

/// A partner with three referrals, two with deals; returns (partner id, partner key).
async fn seed(app: &TestApp) -> (String, String) {
    let program = app.create_program("P").await;
    let partner = app.create_partner(&program, "Alpha").await;
    let token = app.partner_key(&partner).await;
    let referrals = app.submit_referrals(&token, 3, "com").await;
    for (i, referral) in referrals.iter().take(2).enumerate() {
        insert_attributed_deal(app, &program, &partner, Some(referral), &format!("D{i}")).await;
    }
    (partner, token)
}

/// The raw response text of a query.
async fn raw(app: &TestApp, token: &str, query: &str, variables: Value) -> String {
    app.client
        .post(format!("{}/graphql", app.base))
        .bearer_auth(token)
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

const PLAIN: &str = "query($id: ID!) { partner(id: $id) { referrals(first: 10) { edges {
    __typename cursor node { __typename id status companyName submittedAt
      deal { __typename id name amount status closedAt attributionMethod } } } } } }";

const FRAGMENTS: &str = "query($id: ID!) { partner(id: $id) { referrals(first: 10) { edges {
    ... on ReferralEdge { __typename cursor }
    node { ...R deal { ...D } } } } } }
  fragment R on Referral { __typename id status ... on Referral { companyName submittedAt } }
  fragment D on Deal { __typename id name amount status closedAt attributionMethod }";

async fn inlined_objects_answer_like_the_generic_executor(app: TestApp) {
    let (partner, token) = seed(&app).await;
    let vars = json!({"id": partner});
    let plain = app.gql(&token, PLAIN, vars.clone()).await;
    let generic = app.gql(&token, FRAGMENTS, vars.clone()).await;
    assert!(plain.get("errors").is_none(), "{plain}");
    assert_eq!(plain, generic);
    let edges = plain["data"]["partner"]["referrals"]["edges"]
        .as_array()
        .unwrap();
    assert_eq!(edges.len(), 3);
    assert_eq!(edges[0]["__typename"], "ReferralEdge");
    assert_eq!(edges[0]["node"]["__typename"], "Referral");
    assert_eq!(
        edges
            .iter()
            .filter(|e| e["node"]["deal"]["__typename"] == "Deal")
            .count(),
        2
    );
    assert_eq!(
        edges.iter().filter(|e| e["node"]["deal"].is_null()).count(),
        1
    );

    // Fields come back in the order they were selected, aliases included.
    let text = raw(
        &app,
        &token,
        "query($id: ID!) { partner(id: $id) { referrals(first: 1) { edges { node {
            submittedAt when: submittedAt id companyName } cursor } } } }",
        vars.clone(),
    )
    .await;
    let at = |key: &str| text.find(key).unwrap_or_else(|| panic!("{key} in {text}"));
    assert!(at("\"submittedAt\"") < at("\"when\""), "{text}");
    assert!(at("\"when\"") < at("\"id\""), "{text}");
    assert!(at("\"id\"") < at("\"companyName\""), "{text}");
    assert!(at("\"companyName\"") < at("\"cursor\""), "{text}");

    // A response key selected twice is merged, as the generic executor merges it.
    let data = app
        .ok(
            &token,
            "query($id: ID!) { partner(id: $id) { referrals(first: 10) { edges { node {
                id deal { id } deal { name } } } } } }",
            vars.clone(),
        )
        .await;
    for edge in data["partner"]["referrals"]["edges"].as_array().unwrap() {
        let deal = &edge["node"]["deal"];
        if !deal.is_null() {
            assert!(deal["id"].is_string() && deal["name"].is_string(), "{deal}");
        }
    }
}

async fn a_failing_field_in_an_inlined_object_fails_alone(app: TestApp) {
    let (partner, token) = seed(&app).await;
    // Corrupt one stored status: that field errors, its siblings still resolve.
    let sql = format!(
        "UPDATE referrals SET status = 'BOGUS' WHERE company_name = {}",
        app.db.placeholder(1)
    );
    sea_orm::ConnectionTrait::execute_raw(
        &app.db.conn,
        sea_orm::Statement::from_sql_and_values(app.db.backend(), sql, ["C1".into()]),
    )
    .await
    .unwrap();
    let vars = json!({"id": partner});
    let mut plain = app.gql(&token, PLAIN, vars.clone()).await;
    let mut generic = app.gql(&token, FRAGMENTS, vars).await;
    // The two texts place `status` at different lines and columns.
    for resp in [&mut plain, &mut generic] {
        for error in resp["errors"].as_array_mut().expect("an error") {
            error.as_object_mut().unwrap().remove("locations");
        }
    }
    assert_eq!(plain, generic);
    let errors = plain["errors"].as_array().expect("an error");
    assert_eq!(errors.len(), 1, "{plain}");
    assert_eq!(errors[0]["extensions"]["code"], "INTERNAL");
    let path = errors[0]["path"].as_array().unwrap();
    assert_eq!(path.last().unwrap(), "status", "{plain}");
    assert_eq!(path[path.len() - 2], "node");
    let edges = plain["data"]["partner"]["referrals"]["edges"]
        .as_array()
        .unwrap();
    assert_eq!(edges.len(), 3);
    assert!(edges.iter().all(|e| e["node"]["companyName"].is_string()));
}

db_tests!(
    inlined_objects_answer_like_the_generic_executor,
    a_failing_field_in_an_inlined_object_fails_alone,
);
