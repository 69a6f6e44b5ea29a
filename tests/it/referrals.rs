//! Referral registration: normalisation, free-mail domains, duplicates within the window,
//! no leak of the earlier registration, admin review.

use chrono::{Duration, Utc};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};
use serde_json::json;
use tandem::db::entities::referral;

use crate::{
    db_tests,
    helpers::{TestApp, count, error_code, error_field},
};

async fn referrals_are_normalised(app: TestApp) {
    let program = app.create_program("P").await;
    let partner = app.create_partner(&program, "Alpha").await;
    let token = app.partner_key(&partner).await;
    let r = app
        .submit_referral(
            &token,
            json!({"companyName": " Contoso ", "companyDomain": "HTTPS://WWW.Contoso.com/buy?x=1", "contactEmail": " Jane@Contoso.COM "}),
        )
        .await;
    assert_eq!(r["status"], "ACCEPTED");
    assert_eq!(r["companyDomain"], "contoso.com");
    assert_eq!(r["contactEmail"], "jane@contoso.com");
    // A free-mail domain is not a company domain.
    let r = app
        .submit_referral(&token, json!({"companyName": "Solo", "companyDomain": "gmail.com", "contactEmail": "solo@gmail.com"}))
        .await;
    assert_eq!(r["status"], "ACCEPTED");
    assert_eq!(r["companyDomain"], serde_json::Value::Null);
    // ... so another company with a gmail contact is not its duplicate.
    let r = app
        .submit_referral(&token, json!({"companyName": "Other", "companyDomain": "gmail.com", "contactEmail": "other@gmail.com"}))
        .await;
    assert_eq!(r["status"], "ACCEPTED");
}

async fn duplicates_within_the_window_never_reveal_the_first_partner(app: TestApp) {
    let program = app.create_program("P").await;
    let alpha = app.create_partner(&program, "Alpha").await;
    let beta = app.create_partner(&program, "Beta").await;
    let alpha_token = app.partner_key(&alpha).await;
    let beta_token = app.partner_key(&beta).await;
    let first = app
        .submit_referral(
            &alpha_token,
            json!({"companyName": "Contoso", "companyDomain": "contoso.com"}),
        )
        .await;
    assert_eq!(first["status"], "ACCEPTED");
    let dup = app
        .submit_referral(
            &beta_token,
            json!({"companyName": "Contoso Inc", "companyDomain": "www.contoso.com"}),
        )
        .await;
    assert_eq!(dup["status"], "DUPLICATE");
    assert_eq!(
        dup["duplicateOfId"],
        serde_json::Value::Null,
        "partners are not told"
    );
    // Nothing reachable from Beta's key names Alpha.
    let seen = app
        .ok(&beta_token, "{ referrals { edges { node { id status duplicateOfId partner { id name } deal { id } } } } events { edges { node { data } } } }", json!({}))
        .await
        .to_string();
    assert!(!seen.contains(&alpha), "{seen}");
    assert!(!seen.contains("Alpha"), "{seen}");
    assert!(!seen.contains(first["id"].as_str().unwrap()), "{seen}");
    // Admins see which registration came first.
    let data = app
        .admin_ok(
            "query($id: ID!) { referral(id: $id) { duplicateOfId } }",
            json!({"id": dup["id"]}),
        )
        .await;
    assert_eq!(data["referral"]["duplicateOfId"], first["id"]);
    // Without a domain, the contact email decides.
    let a = app
        .submit_referral(
            &alpha_token,
            json!({"companyName": "NoDomain", "contactEmail": "buyer@fabrikam.com"}),
        )
        .await;
    assert_eq!(a["status"], "ACCEPTED");
    let b = app
        .submit_referral(
            &beta_token,
            json!({"companyName": "NoDomain", "contactEmail": "BUYER@fabrikam.com"}),
        )
        .await;
    assert_eq!(b["status"], "DUPLICATE");
    // A rejected registration does not block a later one.
    app.admin_ok(
        "mutation($id: ID!) { updateReferralStatus(input: {id: $id, status: REJECTED}) { referral { status } } }",
        json!({"id": first["id"]}),
    )
    .await;
    let again = app
        .submit_referral(
            &beta_token,
            json!({"companyName": "Contoso", "companyDomain": "contoso.com"}),
        )
        .await;
    assert_eq!(again["status"], "ACCEPTED");
}

async fn registrations_older_than_the_window_do_not_block(app: TestApp) {
    let data = app
        .admin_ok(
            "mutation { createProgram(input: {name: \"P\", kind: CHANNEL, currency: \"USD\", attributionWindowDays: 30, commission: {type: FLAT, flatAmount: \"100\"}}) { program { id } } }",
            json!({}),
        )
        .await;
    let program = data["createProgram"]["program"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let alpha = app.create_partner(&program, "Alpha").await;
    let token = app.partner_key(&alpha).await;
    let old = app
        .submit_referral(
            &token,
            json!({"companyName": "Old", "companyDomain": "old.com"}),
        )
        .await;
    let stored = referral::Entity::find_by_id(old["id"].as_str().unwrap().to_string())
        .one(app.db.reads())
        .await
        .unwrap()
        .unwrap();
    let mut aged: referral::ActiveModel = stored.into();
    aged.submitted_at = Set(Utc::now() - Duration::days(31));
    let tx = app.db.begin_write().await.unwrap();
    aged.update(&*tx).await.unwrap();
    tx.commit().await.unwrap();
    let fresh = app
        .submit_referral(
            &token,
            json!({"companyName": "Old", "companyDomain": "old.com"}),
        )
        .await;
    assert_eq!(fresh["status"], "ACCEPTED");
}

async fn concurrent_registrations_of_one_company_accept_exactly_one(app: TestApp) {
    let program = app.create_program("P").await;
    let mut tokens = Vec::new();
    for i in 0..6 {
        let partner = app.create_partner(&program, &format!("Partner {i}")).await;
        tokens.push(app.partner_key(&partner).await);
    }
    let submissions = tokens.iter().map(|token| {
        app.submit_referral(
            token,
            json!({"companyName": "Race", "companyDomain": "race.com"}),
        )
    });
    let results = futures_util::future::join_all(submissions).await;
    let accepted = results.iter().filter(|r| r["status"] == "ACCEPTED").count();
    assert_eq!(accepted, 1, "{results:?}");
}

async fn referral_input_is_validated(app: TestApp) {
    let program = app.create_program("P").await;
    let alpha = app.create_partner(&program, "Alpha").await;
    let token = app.partner_key(&alpha).await;
    let m = "mutation($input: SubmitReferralInput!) { submitReferral(input: $input) { referral { id } } }";
    for (input, field) in [
        (json!({"companyName": ""}), "input.companyName"),
        (
            json!({"companyName": "X", "companyDomain": "not a domain"}),
            "input.companyDomain",
        ),
        (
            json!({"companyName": "X", "contactEmail": "nope"}),
            "input.contactEmail",
        ),
        (
            json!({"companyName": "X", "notes": "n".repeat(5001)}),
            "input.notes",
        ),
    ] {
        let resp = app.gql(&token, m, json!({"input": input})).await;
        assert_eq!(error_code(&resp), "BAD_USER_INPUT", "{resp}");
        assert_eq!(error_field(&resp), field);
    }
    // Admins must name the partner.
    let resp = app
        .gql(&app.admin, m, json!({"input": {"companyName": "X"}}))
        .await;
    assert_eq!(error_field(&resp), "input.partnerId");
    // A partner cannot file for another partner or program.
    let beta = app.create_partner(&program, "Beta").await;
    let resp = app
        .gql(
            &token,
            m,
            json!({"input": {"companyName": "X", "partnerId": beta}}),
        )
        .await;
    assert_eq!(error_code(&resp), "NOT_FOUND");
    let other = app.create_program("Other").await;
    let resp = app
        .gql(
            &token,
            m,
            json!({"input": {"companyName": "X", "programId": other}}),
        )
        .await;
    assert_eq!(error_code(&resp), "NOT_FOUND");
    // Suspended partners cannot submit.
    app.admin_ok(
        "mutation($id: ID!) { updatePartnerStatus(input: {id: $id, status: SUSPENDED}) { partner { id } } }",
        json!({"id": alpha}),
    )
    .await;
    let resp = app
        .gql(&token, m, json!({"input": {"companyName": "X"}}))
        .await;
    assert_eq!(error_code(&resp), "CONFLICT");
    assert_eq!(app.count_rows("referrals").await, 0);
    assert_eq!(
        app.count_rows("events WHERE type = 'referral.submitted'")
            .await,
        0
    );
}

async fn admins_review_referrals(app: TestApp) {
    let program = app.create_program("P").await;
    let alpha = app.create_partner(&program, "Alpha").await;
    let token = app.partner_key(&alpha).await;
    let r = app
        .submit_referral(&token, json!({"companyName": "Contoso"}))
        .await;
    let m = "mutation($id: ID!, $s: ReferralStatus!) { updateReferralStatus(input: {id: $id, status: $s}) { referral { status } } }";
    let resp = app
        .gql(&token, m, json!({"id": r["id"], "s": "REJECTED"}))
        .await;
    assert_eq!(error_code(&resp), "FORBIDDEN");
    let resp = app
        .gql(&app.admin, m, json!({"id": r["id"], "s": "CONVERTED"}))
        .await;
    assert_eq!(error_field(&resp), "input.status");
    let data = app
        .admin_ok(m, json!({"id": r["id"], "s": "REJECTED"}))
        .await;
    assert_eq!(
        data["updateReferralStatus"]["referral"]["status"],
        "REJECTED"
    );
    app.events_settled().await;
    let data = app
        .ok(
            &token,
            "{ events(types: [\"referral.status_changed\"]) { edges { node { type data } } } }",
            json!({}),
        )
        .await;
    let event = &data["events"]["edges"][0]["node"];
    assert_eq!(event["data"]["status"], "REJECTED");
    assert_eq!(event["data"]["previousStatus"], "ACCEPTED");
    assert_eq!(event["data"]["partnerId"], alpha);
    assert_eq!(event["data"]["programId"], program);
}

/// Both partners' `referrals.totalCount`, checked against a real count.
async fn referral_totals(app: &TestApp, alpha: &str, beta: &str) -> (i64, i64) {
    let q = "query($a: ID!, $b: ID!) { a: partner(id: $a) { referrals(first: 1) { totalCount } } \
             b: partner(id: $b) { referrals(first: 1) { totalCount } } }";
    let data = app.admin_ok(q, json!({"a": alpha, "b": beta})).await;
    let real = |p: &str| format!("SELECT COUNT(*) AS n FROM referrals WHERE partner_id = '{p}'");
    let real_a = count(&app.db, &real(alpha)).await;
    let real_b = count(&app.db, &real(beta)).await;
    assert_eq!(data["a"]["referrals"]["totalCount"], real_a, "alpha");
    assert_eq!(data["b"]["referrals"]["totalCount"], real_b, "beta");
    (real_a, real_b)
}

/// `partner.referrals.totalCount` reads the per-partner counter the database's triggers keep:
/// it must equal a real count after submissions (including duplicates), a failed submission, a
/// referral moved to another partner and a deleted one, and survive the migration being undone
/// and redone (which rebuilds it from the referrals).
async fn referral_totals_follow_every_change(app: TestApp) {
    let program = app.create_program("P").await;
    let alpha = app.create_partner(&program, "Alpha").await;
    let beta = app.create_partner(&program, "Beta").await;
    let alpha_token = app.partner_key(&alpha).await;
    let beta_token = app.partner_key(&beta).await;
    app.submit_referrals(&alpha_token, 5, "example").await;
    // A duplicate is stored too (and counted); an invalid submission writes nothing.
    let dup = app
        .submit_referral(
            &beta_token,
            json!({"companyName": "C0", "companyDomain": "c0.example"}),
        )
        .await;
    assert_eq!(dup["status"], "DUPLICATE");
    let bad = app
        .gql(
            &beta_token,
            "mutation($i: SubmitReferralInput!) { submitReferral(input: $i) { referral { id } } }",
            json!({"i": {"companyName": "X", "contactEmail": "not an email"}}),
        )
        .await;
    assert_eq!(error_code(&bad), "BAD_USER_INPUT");

    assert_eq!(referral_totals(&app, &alpha, &beta).await, (5, 1));

    // Moved to another partner, then deleted (neither has a mutation; an operator could do it).
    let db = &app.db;
    let one = |sql: String| async move {
        db.execute_unprepared(&sql).await.unwrap();
    };
    let moved = referral::Entity::find()
        .all(app.db.reads())
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.partner_id == alpha)
        .unwrap();
    one(format!(
        "UPDATE referrals SET partner_id = '{beta}' WHERE id = '{}'",
        moved.id
    ))
    .await;
    assert_eq!(referral_totals(&app, &alpha, &beta).await, (4, 2));
    one(format!(
        "UPDATE referrals SET status = 'REJECTED' WHERE partner_id = '{beta}'"
    ))
    .await;
    assert_eq!(referral_totals(&app, &alpha, &beta).await, (4, 2));
    one(format!("DELETE FROM referrals WHERE id = '{}'", moved.id)).await;
    assert_eq!(referral_totals(&app, &alpha, &beta).await, (4, 1));

    // Undo and redo the migration: the counter table is rebuilt from the referrals. The
    // migrations that came later are undone first (counted from the list, so that a new
    // migration does not change this test).
    use tandem_migrations::MigratorTrait;
    let names: Vec<String> = tandem_migrations::Migrator::migrations()
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    let counts = names
        .iter()
        .position(|n| n == "m20261124_000006_referral_counts")
        .unwrap();
    app.db
        .migrate_down((names.len() - counts) as u32)
        .await
        .unwrap();
    assert!(
        app.db
            .execute_unprepared("SELECT total FROM referral_counts")
            .await
            .is_err(),
        "the counter table is dropped"
    );
    app.db.migrate().await.unwrap();
    assert_eq!(referral_totals(&app, &alpha, &beta).await, (4, 1));
    let r = app
        .submit_referral(
            &beta_token,
            json!({"companyName": "New", "companyDomain": "new.example"}),
        )
        .await;
    assert_eq!(r["status"], "ACCEPTED");
    assert_eq!(referral_totals(&app, &alpha, &beta).await, (4, 2));
}

db_tests!(
    referral_totals_follow_every_change,
    referrals_are_normalised,
    duplicates_within_the_window_never_reveal_the_first_partner,
    registrations_older_than_the_window_do_not_block,
    concurrent_registrations_of_one_company_accept_exactly_one,
    referral_input_is_validated,
    admins_review_referrals,
);
