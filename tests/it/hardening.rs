//! Findings of the outside probe (issue 16), one regression test each: what an attacker or a
//! careless integrator tried, and what must happen instead.

use serde_json::{Value, json};

use crate::{
    db_tests,
    helpers::TestApp,
    outbound::{connect, ws_next, ws_send},
};

/// Creates a key; returns (token, id).
async fn key(app: &TestApp, input: Value) -> (String, String) {
    let created = app
        .admin_ok(
            "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { token apiKey { id } } }",
            json!({"input": input}),
        )
        .await;
    (
        created["createApiKey"]["token"]
            .as_str()
            .unwrap()
            .to_string(),
        created["createApiKey"]["apiKey"]["id"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

/// Runs one operation over an open graphql-transport-ws socket and returns its first answer
/// (`next` or `error`).
async fn over_socket<S>(ws: &mut S, id: &str, query: &str) -> Value
where
    S: futures_util::SinkExt<tokio_tungstenite::tungstenite::Message>
        + futures_util::StreamExt<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
    <S as futures_util::Sink<tokio_tungstenite::tungstenite::Message>>::Error: std::fmt::Debug,
{
    ws_send(
        ws,
        json!({"id": id, "type": "subscribe", "payload": {"query": query}}),
    )
    .await;
    loop {
        let msg = ws_next(ws).await.expect("an answer on the socket");
        if msg["id"] == id && (msg["type"] == "next" || msg["type"] == "error") {
            return msg;
        }
    }
}

/// The `extensions.code` of the first error of a socket answer (`next` with errors, or
/// `error` with a list).
fn socket_error_code(msg: &Value) -> String {
    let errors = if msg["type"] == "error" {
        &msg["payload"]
    } else {
        &msg["payload"]["errors"]
    };
    errors[0]["extensions"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Finding 1: a key revoked while its websocket is open loses its rights with the next
/// operation: queries, mutations (an admin key minting another admin key) and new
/// subscriptions all answer UNAUTHENTICATED.
async fn revoked_keys_lose_open_websockets_at_once(app: TestApp) {
    let program = app.create_program("Sockets").await;
    let partner = app.create_partner(&program, "Acme").await;
    let (partner_token, partner_key) = key(
        &app,
        json!({"name": "p", "role": "PARTNER", "partnerId": partner}),
    )
    .await;
    let (admin_token, admin_key) = key(&app, json!({"name": "a", "role": "ADMIN"})).await;

    let mut partner_ws = connect(&app, &partner_token).await;
    assert_eq!(
        ws_next(&mut partner_ws).await.unwrap()["type"],
        "connection_ack"
    );
    let mut admin_ws = connect(&app, &admin_token).await;
    assert_eq!(
        ws_next(&mut admin_ws).await.unwrap()["type"],
        "connection_ack"
    );
    let before = over_socket(&mut partner_ws, "1", "{ viewer { role } }").await;
    assert_eq!(
        before["payload"]["data"]["viewer"]["role"], "PARTNER",
        "{before}"
    );
    let mint = "mutation { createApiKey(input: {name: \"x\", role: ADMIN}) { token } }";
    let minted = over_socket(&mut admin_ws, "1", mint).await;
    assert!(
        minted["payload"]["data"]["createApiKey"]["token"].is_string(),
        "{minted}"
    );

    for id in [&partner_key, &admin_key] {
        app.admin_ok(
            "mutation($id: ID!) { revokeApiKey(input: {id: $id}) { apiKey { revokedAt } } }",
            json!({"id": id}),
        )
        .await;
    }

    let read = over_socket(&mut partner_ws, "2", "{ viewer { role } }").await;
    assert_eq!(socket_error_code(&read), "UNAUTHENTICATED", "{read}");
    assert!(read["payload"]["data"]["viewer"].is_null(), "{read}");
    let history = over_socket(
        &mut partner_ws,
        "3",
        "subscription { events(after: \"0.0\") { id } }",
    )
    .await;
    assert_eq!(socket_error_code(&history), "UNAUTHENTICATED", "{history}");
    let minted = over_socket(&mut admin_ws, "2", mint).await;
    assert_eq!(socket_error_code(&minted), "UNAUTHENTICATED", "{minted}");
    assert_eq!(
        app.count_rows("api_keys").await,
        4,
        "no key was minted after revocation"
    );
}

db_tests!(revoked_keys_lose_open_websockets_at_once);
