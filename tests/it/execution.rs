//! Edges, referrals and deals are resolved by `graphql::inline` rather than async-graphql's
//! generic container executor; selections it does not take (fragments, a response key used
//! twice) go the generic way. Both must answer alike: same data, same errors, fields in
//! selection order.

use serde_json::{Value, json};

use crate::{db_tests, helpers::TestApp, isolation::insert_attributed_deal};

/// A partner with three referrals, two with deals (one won with every optional field set,
/// one deleted), and a fourth referral with every optional field; returns (partner id,
/// partner key).
async fn seed(app: &TestApp) -> (String, String) {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
    use tandem::db::entities::deal;
    let program = app.create_program("P").await;
    let partner = app.create_partner(&program, "Alpha").await;
    let token = app.partner_key(&partner).await;
    let referrals = app.submit_referrals(&token, 3, "com").await;
    for (i, referral) in referrals.iter().take(2).enumerate() {
        insert_attributed_deal(app, &program, &partner, Some(referral), &format!("D{i}")).await;
    }
    let tx = app.db.begin_write().await.unwrap();
    deal::Entity::update_many()
        .col_expr(deal::Column::Status, Expr::value("WON"))
        .col_expr(deal::Column::Stage, Expr::value("closedwon"))
        .col_expr(
            deal::Column::ClosedAt,
            Expr::value(chrono::Utc::now() - chrono::Duration::milliseconds(1500)),
        )
        .col_expr(deal::Column::CompanyDomain, Expr::value("c0.com"))
        .col_expr(
            deal::Column::ContactEmails,
            Expr::value(serde_json::json!(["a@c0.com", "b@c0.com"])),
        )
        .col_expr(deal::Column::ReferralCode, Expr::value("ABCD1234"))
        .col_expr(deal::Column::Amount, Expr::value("1234.50"))
        .filter(deal::Column::Name.eq("D0"))
        .exec(&*tx)
        .await
        .unwrap();
    deal::Entity::update_many()
        .col_expr(deal::Column::Deleted, Expr::value(true))
        .filter(deal::Column::Name.eq("D1"))
        .exec(&*tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    app.submit_referral(
        &token,
        json!({"companyName": "Full", "companyDomain": "https://www.Full.example/x",
               "contactName": "Ada", "contactEmail": "Ada@Full.example", "notes": "met at a fair"}),
    )
    .await;
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

// Every field an inlined referral or deal can answer without its resolver (see
// `graphql::inline::PlainFields`), and some that always take the resolver.
const PLAIN: &str = "query($id: ID!) { partner(id: $id) { referrals(first: 10) { edges {
    __typename cursor node { __typename id status companyName companyDomain contactName
      contactEmail notes submittedAt duplicateOfId
      deal { __typename id externalId name amount currency status stage closedAt createdAt
        updatedAt companyDomain contactEmails referralCode deleted attributionMethod } } } } } }";

const FRAGMENTS: &str = "query($id: ID!) { partner(id: $id) { referrals(first: 10) { edges {
    ... on ReferralEdge { __typename cursor }
    node { ...R deal { ...D } } } } } }
  fragment R on Referral { __typename id status ... on Referral { companyName companyDomain
    contactName contactEmail notes submittedAt duplicateOfId } }
  fragment D on Deal { __typename id externalId name amount currency status stage closedAt
    createdAt updatedAt companyDomain contactEmails referralCode deleted attributionMethod }";

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
    assert_eq!(edges.len(), 4);
    // The seeded values arrive as stored, on both paths.
    let node = |name: &str| {
        edges
            .iter()
            .map(|e| &e["node"])
            .find(|n| n["companyName"] == name)
            .unwrap_or_else(|| panic!("{name} in {plain}"))
    };
    let full = node("Full");
    assert_eq!(full["companyDomain"], "full.example");
    assert_eq!(full["contactName"], "Ada");
    assert_eq!(full["contactEmail"], "ada@full.example");
    assert_eq!(full["notes"], "met at a fair");
    assert!(full["deal"].is_null());
    let won = &node("C0")["deal"];
    assert_eq!(won["status"], "WON");
    assert_eq!(won["amount"], "1234.50");
    assert_eq!(won["stage"], "closedwon");
    assert_eq!(won["contactEmails"], json!(["a@c0.com", "b@c0.com"]));
    assert_eq!(won["referralCode"], "ABCD1234");
    assert!(won["closedAt"].is_string());
    let deleted = &node("C1")["deal"];
    assert_eq!(deleted["status"], "LOST");
    assert_eq!(deleted["deleted"], true);
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
        2
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
    // Corrupt one stored amount (states are typed: a bad one fails its row, not a field):
    // that field errors, its siblings still resolve.
    let sql = format!(
        "UPDATE deals SET amount = 'bogus' WHERE name = {}",
        app.db.placeholder(1)
    );
    app.db
        .execute_write(sql, ["D0".into()].into())
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
    assert_eq!(path.last().unwrap(), "amount", "{plain}");
    assert_eq!(path[path.len() - 2], "deal");
    let edges = plain["data"]["partner"]["referrals"]["edges"]
        .as_array()
        .unwrap();
    assert_eq!(edges.len(), 4);
    assert!(edges.iter().all(|e| e["node"]["companyName"].is_string()));
}

db_tests!(
    inlined_objects_answer_like_the_generic_executor,
    a_failing_field_in_an_inlined_object_fails_alone,
);
