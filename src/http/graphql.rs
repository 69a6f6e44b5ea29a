//! `POST /graphql` and `GET /graphql` (GraphiQL). The body is read with a 1 MiB limit (413
//! beyond), malformed JSON answers 400, and every GraphQL error leaves with an
//! `extensions.code`.

use std::time::Instant;

use async_graphql::{ErrorExtensionValues, Executor, Response as GqlResponse};
use poem::{
    Body, IntoResponse, Request, Response,
    error::ReadBodyError,
    handler,
    http::{StatusCode, header},
    web::Data,
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

/// GraphiQL's page: every script and stylesheet comes from this binary ([`graphiql_asset`]), so
/// it works offline, and its policy lets no inline script run.
const GRAPHIQL_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="robots" content="noindex">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Tandem GraphiQL</title>
    <link rel="icon" type="image/svg+xml" href="/console/assets/favicon.svg">
    <link rel="stylesheet" href="/graphql/assets/graphiql.min.css">
    <link rel="stylesheet" href="/graphql/assets/tandem.css">
  </head>
  <body>
    <div id="graphiql" data-endpoint="/graphql" data-subscription-endpoint="/graphql/ws">Loading...</div>
    <script src="/graphql/assets/react.production.min.js"></script>
    <script src="/graphql/assets/react-dom.production.min.js"></script>
    <script src="/graphql/assets/graphiql.min.js"></script>
    <script src="/graphql/assets/tandem.js"></script>
  </body>
</html>
"#;

/// GraphiQL's policy: scripts from here only; inline styles (GraphiQL sets element styles);
/// queries and subscriptions to this origin.
const GRAPHIQL_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                            img-src 'self' data:; font-src 'self' data:; connect-src 'self' ws: wss:; \
                            frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// GraphiQL (4.1.2) and React (18.3.1) production builds, embedded (see
/// `assets/graphiql/LICENSES.txt`): name, content type, body.
const GRAPHIQL_ASSETS: [(&str, &str, &str); 6] = [
    (
        "graphiql.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/graphiql/graphiql.min.js"),
    ),
    (
        "graphiql.min.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/graphiql/graphiql.min.css"),
    ),
    (
        "react.production.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/graphiql/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/graphiql/react-dom.production.min.js"),
    ),
    (
        "tandem.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/graphiql/tandem.js"),
    ),
    (
        "tandem.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/graphiql/tandem.css"),
    ),
];

/// GraphiQL, pointed at this server.
#[handler]
pub async fn graphiql() -> Response {
    Response::builder()
        .content_type("text/html; charset=utf-8")
        .header("content-security-policy", GRAPHIQL_CSP)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .body(GRAPHIQL_PAGE)
}

/// `GET /graphql/assets/{name}`: one of GraphiQL's embedded assets.
#[handler]
pub async fn graphiql_asset(poem::web::Path(name): poem::web::Path<String>) -> Response {
    match GRAPHIQL_ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => Response::builder()
            .content_type(*content_type)
            .header(header::CACHE_CONTROL, "public, max-age=86400")
            .header("x-content-type-options", "nosniff")
            .body(*body),
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body("no such asset"),
    }
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

/// The request's client address, as resolvers see it (rate limits of `applyToProgram`).
pub fn client_address(req: &Request) -> crate::graphql::ClientAddress {
    crate::graphql::ClientAddress(
        req.remote_addr()
            .as_socket_addr()
            .map(|a| a.ip().to_canonical()),
    )
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
    let token = bearer_token(req);
    let mut request = request;
    // Introspection is for authenticated keys only (GraphiQL sends the key): the schema costs
    // an anonymous caller nothing to ask for many times over. Such a request authenticates up
    // front, and its resolvers reuse the principal found.
    let auth = if request.query.contains("__schema") || request.query.contains("__type") {
        let principal = match token.as_deref() {
            Some(token) => crate::domain::auth::authenticate(&state.db, token)
                .await
                .ok(),
            None => None,
        };
        match principal {
            Some(principal) => RequestAuth::resolved(token, principal),
            None => {
                request = request.disable_introspection();
                // Resolvers look again (and report a database error as such).
                RequestAuth::new(token)
            }
        }
    } else {
        RequestAuth::new(token)
    };
    let request = request.data(auth).data(client_address(req));
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
/// closes the connection before any operation runs, and so does a socket that sends no
/// `connection_init` within `ws_init_timeout_secs` (close code 4408, as graphql-transport-ws
/// specifies). A client address may hold `ws_max_per_address` sockets (the upgrade answers 429
/// beyond), a key `ws_max_per_key` (`connection_init` beyond it closes the socket).
#[handler]
pub async fn graphql_ws(
    protocol: async_graphql_poem::GraphQLProtocol,
    websocket: poem::web::websocket::WebSocket,
    remote: &poem::web::RemoteAddr,
    state: Data<&AppState>,
) -> Response {
    let address_slot = match remote.as_socket_addr().map(|a| a.ip()) {
        Some(ip) => match state.sockets.address(ip) {
            Some(slot) => Some(slot),
            None => {
                return json_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RATE_LIMITED",
                    "too many open websockets from this address",
                );
            }
        },
        None => None,
    };
    let schema = state.schema.clone();
    let db = state.db.clone();
    let sockets = state.sockets.clone();
    let init_timeout = std::time::Duration::from_secs(state.config.ws_init_timeout_secs);
    websocket
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            use futures_util::{SinkExt, StreamExt};
            use poem::web::websocket::Message;

            let _address_slot = address_slot;
            let initialised = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = initialised.clone();
            let (mut to_client, from_client) = socket.split();
            // The GraphQL side writes into a channel; this task owns the socket's sink, so it
            // can also close the socket itself when `connection_init` never comes.
            let (sender, mut outgoing) = tokio::sync::mpsc::channel::<Message>(64);
            let sink = futures_util::sink::unfold(sender, |sender, message: Message| async move {
                sender
                    .send(message)
                    .await
                    .map_err(|_| std::io::Error::other("websocket closed"))?;
                Ok::<_, std::io::Error>(sender)
            });
            let serve = async_graphql_poem::GraphQLWebSocket::new_with_pair(
                Box::pin(sink),
                from_client,
                schema,
                protocol,
            )
            .on_connection_init(move |payload| async move {
                let token =
                    init_token(&payload).ok_or_else(|| ApiError::Unauthenticated.extend())?;
                let principal = crate::domain::auth::authenticate(&db, &token)
                    .await
                    .map_err(|e| e.extend())?;
                let key_slot = sockets.key(principal.key_id()).ok_or_else(|| {
                    async_graphql::Error::new("too many open websockets for this key")
                })?;
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
                let mut data = async_graphql::Data::default();
                data.insert(SocketToken(token));
                // Held as long as the connection's data: the key's place is freed with it.
                data.insert(key_slot);
                Ok(data)
            })
            .serve();
            tokio::pin!(serve);
            let deadline = tokio::time::sleep(init_timeout);
            tokio::pin!(deadline);
            let mut serving = true;
            while serving {
                tokio::select! {
                    _ = &mut serve => serving = false,
                    Some(message) = outgoing.recv() => {
                        if to_client.send(message).await.is_err() {
                            return;
                        }
                    }
                    _ = &mut deadline, if !initialised.load(std::sync::atomic::Ordering::Relaxed) => {
                        let _ = to_client
                            .send(Message::close_with(4408u16, "Connection initialisation timeout"))
                            .await;
                        return;
                    }
                }
            }
            // What the GraphQL side wrote last (an error, a close frame) still goes out.
            while let Ok(message) = outgoing.try_recv() {
                if to_client.send(message).await.is_err() {
                    return;
                }
            }
            let _ = to_client.close().await;
        })
        .into_response()
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
