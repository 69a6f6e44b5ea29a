//! `POST /graphql` and `GET /graphql` (GraphiQL). The body is read with a 1 MiB limit (413
//! beyond), malformed JSON answers 400, and every GraphQL error leaves with an
//! `extensions.code`.

use std::time::Instant;

use async_graphql::{
    ErrorExtensionValues, Executor, Response as GqlResponse, http::GraphiQLSource,
};
use poem::{
    Body, IntoResponse, Request, Response,
    error::ReadBodyError,
    handler,
    http::{StatusCode, header},
    web::{Data, Html},
};
use serde_json::json;

use async_graphql::ErrorExtensions;

use crate::{
    error::ApiError,
    graphql::{RequestAuth, SocketToken},
    http::{AppState, metrics::operation_name},
};

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// GraphiQL, pointed at this server.
#[handler]
pub async fn graphiql() -> Html<String> {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .title("Tandem GraphiQL")
            .finish(),
    )
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(json!({"errors": [{"message": message, "extensions": {"code": code}}]}).to_string())
}

/// The bearer token of a request: `Some("")` for a malformed header, so that it is rejected
/// rather than treated as anonymous.
pub fn bearer_token(req: &Request) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?;
    let value = value.to_str().unwrap_or_default().trim();
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => "",
    };
    Some(token.to_string())
}

/// Gives every error without a code one: errors raised before execution (parse, validation,
/// argument coercion) are the client's, so `BAD_USER_INPUT`, naming the argument when known.
fn add_error_codes(response: &mut GqlResponse) {
    for error in &mut response.errors {
        let has_code = error
            .extensions
            .as_ref()
            .is_some_and(|ext| ext.get("code").is_some());
        if has_code {
            continue;
        }
        let mut ext = error
            .extensions
            .take()
            .unwrap_or_else(ErrorExtensionValues::default);
        ext.set("code", "BAD_USER_INPUT");
        if let Some(field) = argument_in_message(&error.message) {
            ext.set("field", field);
        } else if error.message.starts_with("Failed to parse") && error.path.len() == 1 {
            // A scalar inside the `input` argument could not be parsed; async-graphql does not
            // say which nested field, so the argument is named.
            ext.set("field", "input");
        }
        error.extensions = Some(ext);
    }
}

/// Extracts `input.kind` from messages such as
/// `Invalid value for argument "input.kind", enumeration type …`.
fn argument_in_message(message: &str) -> Option<String> {
    let rest = message.split_once("argument \"")?.1;
    let (field, _) = rest.split_once('"')?;
    Some(field.to_string())
}

/// Executes one GraphQL request.
#[handler]
pub async fn graphql_post(req: &Request, body: Body, state: Data<&AppState>) -> Response {
    let started = Instant::now();
    let bytes = match body.into_bytes_limit(MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(ReadBodyError::PayloadTooLarge) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BAD_USER_INPUT",
                "request body exceeds 1 MiB",
            );
        }
        Err(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "could not read the request body",
            );
        }
    };
    let request: async_graphql::Request = match serde_json::from_slice(&bytes) {
        Ok(request) => request,
        Err(err) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                &format!("the body is not a GraphQL request in JSON: {err}"),
            );
        }
    };
    let operation = operation_name(request.operation_name.as_deref(), &request.query);
    let request = request.data(RequestAuth::new(bearer_token(req)));
    let mut response = state.schema.execute(request).await;
    add_error_codes(&mut response);
    state.metrics.observe_graphql(
        &operation,
        response.errors.is_empty(),
        started.elapsed().as_secs_f64(),
    );
    match serde_json::to_vec(&response) {
        Ok(body) => Response::builder()
            .content_type("application/json")
            .body(body),
        Err(err) => {
            tracing::error!(error = %err, "serialising a GraphQL response failed");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "internal error",
            )
        }
    }
    .into_response()
}

/// The bearer token in a `connection_init` payload: `{"Authorization": "Bearer tdm_…"}`, the key
/// name in any case.
fn init_token(payload: &serde_json::Value) -> Option<String> {
    let value = payload
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))?
        .1
        .as_str()?
        .trim();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Some(token.trim().to_string())
        }
        _ => Some(String::new()),
    }
}

/// `GET /graphql/ws`: subscriptions over `graphql-transport-ws` (and the older
/// `graphql-ws`). The key travels in the `connection_init` payload; a missing or invalid key
/// closes the connection before any operation runs.
#[handler]
pub async fn graphql_ws(
    protocol: async_graphql_poem::GraphQLProtocol,
    websocket: poem::web::websocket::WebSocket,
    state: Data<&AppState>,
) -> impl IntoResponse {
    let schema = state.schema.clone();
    let db = state.db.clone();
    websocket
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |stream| {
            async_graphql_poem::GraphQLWebSocket::new(stream, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let token =
                        init_token(&payload).ok_or_else(|| ApiError::Unauthenticated.extend())?;
                    crate::domain::auth::authenticate(&db, &token)
                        .await
                        .map_err(|e| e.extend())?;
                    let mut data = async_graphql::Data::default();
                    data.insert(SocketToken(token));
                    Ok(data)
                })
                .serve()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_names_are_extracted() {
        assert_eq!(
            argument_in_message(
                "Invalid value for argument \"input.kind\", enumeration type \"ProgramKind\" does not contain the value \"X\""
            )
            .as_deref(),
            Some("input.kind")
        );
        assert_eq!(argument_in_message("Unknown field"), None);
    }
}
