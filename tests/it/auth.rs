//! Keys: missing, malformed, unknown and revoked keys are `UNAUTHENTICATED`; roles are enforced.

use serde_json::json;

use crate::{
    db_tests,
    helpers::{TestApp, error_code, error_field},
};

async fn missing_invalid_and_revoked_keys_are_unauthenticated(app: TestApp) {
    let query = "{ viewer { role } }";
    assert_eq!(
        error_code(&app.gql("", query, json!({})).await),
        "UNAUTHENTICATED"
    );
    assert_eq!(
        error_code(&app.gql("tdm_not_a_real_token", query, json!({})).await),
        "UNAUTHENTICATED"
    );
    assert_eq!(
        error_code(&app.gql("garbage", query, json!({})).await),
        "UNAUTHENTICATED"
    );

    let data = app
        .admin_ok(
            "mutation { createApiKey(input: {name: \"temp\", role: ADMIN}) { token apiKey { id role tokenPrefix } } }",
            json!({}),
        )
        .await;
    let token = data["createApiKey"]["token"].as_str().unwrap().to_string();
    let id = data["createApiKey"]["apiKey"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(token.starts_with("tdm_"));
    assert!(
        token.starts_with(
            data["createApiKey"]["apiKey"]["tokenPrefix"]
                .as_str()
                .unwrap()
        )
    );
    assert_eq!(
        app.ok(&token, query, json!({})).await["viewer"]["role"],
        "ADMIN"
    );

    // The token is stored only as a hash.
    let stored = app
        .count_rows(&format!(
            "api_keys WHERE token_hash = '{}'",
            tandem::domain::auth::hash_token(&token)
        ))
        .await;
    assert_eq!(stored, 1);
    let plain = app
        .count_rows(&format!(
            "api_keys WHERE token_hash = '{token}' OR token_prefix = '{token}'"
        ))
        .await;
    assert_eq!(plain, 0);

    app.admin_ok(
        "mutation($id: ID!) { revokeApiKey(input: {id: $id}) { apiKey { revokedAt } } }",
        json!({"id": id}),
    )
    .await;
    assert_eq!(
        error_code(&app.gql(&token, query, json!({})).await),
        "UNAUTHENTICATED"
    );
}

async fn partner_keys_cannot_use_admin_mutations(app: TestApp) {
    let program = app.create_program("P").await;
    let partner = app.create_partner(&program, "Alpha").await;
    let token = app.partner_key(&partner).await;
    assert_eq!(
        app.ok(&token, "{ viewer { role partner { id } } }", json!({}))
            .await["viewer"]["partner"]["id"],
        partner
    );
    for mutation in [
        "mutation { createProgram(input: {name: \"x\", kind: CHANNEL, currency: \"EUR\", commission: {type: FLAT, flatAmount: \"5\"}}) { program { id } } }",
        "mutation { createApiKey(input: {name: \"x\", role: ADMIN}) { token } }",
    ] {
        let resp = app.gql(&token, mutation, json!({})).await;
        assert_eq!(error_code(&resp), "FORBIDDEN", "{resp}");
    }
    let resp = app
        .gql(
            &token,
            "mutation($p: ID!) { createPartner(input: {programId: $p, name: \"x\", contactEmail: \"a@b.com\"}) { partner { id } } }",
            json!({"p": program}),
        )
        .await;
    assert_eq!(error_code(&resp), "FORBIDDEN");
    assert_eq!(app.count_rows("partners").await, 1);
}

async fn key_creation_is_validated(app: TestApp) {
    let resp = app
        .gql(
            &app.admin,
            "mutation { createApiKey(input: {name: \"p\", role: PARTNER}) { token } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&resp), "BAD_USER_INPUT");
    assert_eq!(error_field(&resp), "input.partnerId");
    let resp = app
        .gql(
            &app.admin,
            "mutation { createApiKey(input: {name: \"i\", role: INTEGRATION}) { token } }",
            json!({}),
        )
        .await;
    assert_eq!(error_field(&resp), "input.programIds");
    let resp = app
        .gql(&app.admin, "mutation { createApiKey(input: {name: \"p\", role: PARTNER, partnerId: \"nope\"}) { token } }", json!({}))
        .await;
    assert_eq!(error_field(&resp), "input.partnerId");
    assert_eq!(app.count_rows("api_keys").await, 1);
}

db_tests!(
    missing_invalid_and_revoked_keys_are_unauthenticated,
    partner_keys_cannot_use_admin_mutations,
    key_creation_is_validated,
);
