//! The events outbox: each change writes its event in the same transaction; the `events` query
//! pages through them oldest first, filtered by type and scoped by key.

use serde_json::json;

use crate::{
    db_tests,
    helpers::{TestApp, error_code, error_field},
};

async fn every_change_writes_its_event_and_events_page_in_order(app: TestApp) {
    let program = app.create_program("P").await;
    let alpha = app.create_partner(&program, "Alpha").await;
    let token = app.partner_key(&alpha).await;
    let r = app
        .submit_referral(
            &token,
            json!({"companyName": "Contoso", "companyDomain": "contoso.com"}),
        )
        .await;
    app.admin_ok(
        "mutation($id: ID!) { updateReferralStatus(input: {id: $id, status: REJECTED}) { referral { id } } }",
        json!({"id": r["id"]}),
    )
    .await;
    app.admin_ok(
        "mutation($id: ID!) { updatePartnerStatus(input: {id: $id, status: SUSPENDED}) { partner { id } } }",
        json!({"id": alpha}),
    )
    .await;

    app.events_settled().await;
    let page = "query($after: String, $types: [String!]) { events(first: 2, after: $after, types: $types) { totalCount pageInfo { hasNextPage endCursor } edges { cursor node { id type timestamp data } } } }";
    let mut types = Vec::new();
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let data = app.admin_ok(page, json!({"after": after})).await;
        for edge in data["events"]["edges"].as_array().unwrap() {
            types.push(edge["node"]["type"].as_str().unwrap().to_string());
            ids.push(edge["node"]["id"].as_str().unwrap().to_string());
            assert_eq!(edge["node"]["data"]["programId"], program);
        }
        if data["events"]["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = data["events"]["pageInfo"]["endCursor"]
            .as_str()
            .map(str::to_string);
    }
    assert_eq!(
        types,
        [
            "partner.created",
            "referral.submitted",
            "referral.status_changed",
            "partner.updated"
        ]
    );
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "event ids are unique");

    let data = app
        .admin_ok(
            page,
            json!({"types": ["partner.created", "partner.updated"]}),
        )
        .await;
    assert_eq!(data["events"]["totalCount"], 2);

    let resp = app
        .gql(&app.admin, page, json!({"types": ["partner.exploded"]}))
        .await;
    assert_eq!(error_code(&resp), "BAD_USER_INPUT");
    assert_eq!(error_field(&resp), "types[0]");
    let resp = app.gql(&app.admin, page, json!({"after": "%%%"})).await;
    assert_eq!(error_field(&resp), "after");
}

async fn a_failed_mutation_writes_no_event(app: TestApp) {
    let program = app.create_program("P").await;
    let before = app.count_rows("events").await;
    let resp = app
        .gql(
            &app.admin,
            "mutation($p: ID!) { createPartner(input: {programId: $p, name: \"X\", contactEmail: \"bad\"}) { partner { id } } }",
            json!({"p": program}),
        )
        .await;
    assert_eq!(error_code(&resp), "BAD_USER_INPUT");
    assert_eq!(app.count_rows("events").await, before);
    assert_eq!(app.count_rows("partners").await, 0);
}

async fn a_reader_never_passes_an_event_still_being_committed(app: TestApp) {
    use tandem::domain::events::{EventType, record};
    if !app.db.is_postgres() {
        // One writer at a time: seq order is commit order; nothing is held back.
        return;
    }
    let program = app.create_program("P").await;
    let steps = || async {
        let data = app
            .admin_ok(
                "{ events(first: 100) { edges { node { data } } } }",
                json!({}),
            )
            .await;
        crate::helpers::nodes(&data["events"])
            .iter()
            .filter_map(|e| e["data"]["step"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    // A slow transaction writes first; a fast one writes after it and commits first. Which of
    // the two gets the lower seq does not matter: neither may be read while the slow one is
    // open, or a reader could page past it.
    let slow = app.db.begin_write().await.unwrap();
    record(
        &*slow,
        EventType::PartnerUpdated,
        &program,
        None,
        json!({"step": "slow"}),
    )
    .await
    .unwrap();
    let fast = app.db.begin_write().await.unwrap();
    record(
        &*fast,
        EventType::PartnerUpdated,
        &program,
        None,
        json!({"step": "fast"}),
    )
    .await
    .unwrap();
    fast.commit().await.unwrap();
    assert_eq!(steps().await, Vec::<String>::new());
    slow.commit().await.unwrap();
    app.events_settled().await;
    assert_eq!(steps().await, ["slow", "fast"]);
}

async fn transactions_of_other_databases_do_not_hold_events_back(app: TestApp) {
    use sea_orm::ConnectionTrait;
    if !app.db.is_postgres() {
        return;
    }
    // Another application's database on the same server, with a transaction left open after
    // it wrote (so it holds a transaction id older than everything below).
    let other = crate::helpers::fresh_postgres_database().await.unwrap();
    let other_db = tandem::db::Db::connect(&other.url, 1).await.unwrap();
    other_db
        .execute_unprepared("CREATE TABLE notes (body TEXT)")
        .await
        .unwrap();
    let open = other_db.begin_write().await.unwrap();
    open.execute_unprepared("INSERT INTO notes VALUES ('idle in transaction')")
        .await
        .unwrap();

    let program = app.create_program("P").await;
    app.create_partner(&program, "Visible at once").await;
    let data = app
        .admin_ok(
            "{ events(first: 100) { totalCount edges { node { type } } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["events"]["totalCount"], 1);
    assert_eq!(
        data["events"]["edges"][0]["node"]["type"],
        "partner.created"
    );

    open.tx.rollback().await.unwrap();
    other_db.close().await.unwrap();
}

db_tests!(
    transactions_of_other_databases_do_not_hold_events_back,
    every_change_writes_its_event_and_events_page_in_order,
    a_failed_mutation_writes_no_event,
    a_reader_never_passes_an_event_still_being_committed,
);
