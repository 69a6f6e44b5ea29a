//! The HTTP surface (poem): GraphQL, GraphiQL, the console, health, readiness and metrics.

pub mod console;
pub mod graphql;
pub mod metrics;
pub mod sockets;
pub mod webhooks;

use poem::{
    EndpointExt, IntoResponse, Response, Route, get, handler,
    http::StatusCode,
    web::{Data, Json},
};
use serde_json::json;

use crate::{
    config::Config,
    db::Db,
    domain::{inbox::Inbox, webhooks::Webhooks},
    graphql::limits::LimitedSchema,
};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// The workers' own handles on it, by worker (their statements are counted apart).
    pub worker_dbs: std::sync::Arc<Vec<(&'static str, Db)>>,
    /// The GraphQL schema.
    pub schema: LimitedSchema,
    /// Metrics.
    pub metrics: crate::metrics::Metrics,
    /// Configuration.
    pub config: Config,
    /// Webhook sources (verification, cached secrets).
    pub webhooks: Webhooks,
    /// The inbound inbox writer.
    pub inbox: Inbox,
    /// The base URL senders reach this hub at (signed HubSpot URLs are rebuilt from it).
    pub public_base: String,
    /// Starts a CRM sync when HubSpot receipts wait for their deal.
    pub sync_trigger: crate::jobs::SyncTrigger,
    /// Open websockets per client address and per key.
    pub sockets: std::sync::Arc<sockets::SocketLimits>,
}

/// `GET /healthz`: the process is up.
#[handler]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the database answers.
#[handler]
async fn readyz(state: Data<&AppState>) -> Response {
    match state.db.ping().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "reason": "database unreachable"})),
            )
                .into_response()
        }
    }
}

/// How often `/metrics` measures the tables (counting rows is not free on SQLite).
const TABLE_SIZES_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// `GET /metrics`: Prometheus text format; with `metrics_token` configured, only for requests
/// bearing it (compared in constant time).
#[handler]
async fn metrics_endpoint(req: &poem::Request, state: Data<&AppState>) -> Response {
    if let Some(expected) = &state.config.metrics_token {
        let given = graphql::bearer_token(req).unwrap_or_default();
        let matches: bool =
            subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected.0.as_bytes()).into();
        if !matches {
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("www-authenticate", "Bearer")
                .body("metrics need the configured bearer token");
        }
    }
    match crate::domain::inbox::backlog(&state.db).await {
        Ok(backlog) => state.metrics.set_inbox_backlog(backlog),
        Err(err) => tracing::warn!(error = %err, "counting the inbox backlog failed"),
    }
    match crate::outbound::pending_deliveries(&state.db).await {
        Ok(pending) => state.metrics.set_pending_deliveries(pending),
        Err(err) => tracing::warn!(error = %err, "counting pending deliveries failed"),
    }
    if state.metrics.claim_table_sizes(TABLE_SIZES_EVERY) {
        match state.db.table_sizes().await {
            Ok(sizes) => state
                .metrics
                .set_table_sizes(sizes.iter().map(|s| (s.table.as_str(), s.rows, s.bytes))),
            Err(err) => tracing::warn!(error = %err, "measuring the tables failed"),
        }
    }
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(
            state.metrics.render(
                state.db.statement_count(),
                state
                    .worker_dbs
                    .iter()
                    .map(|(name, db)| (*name, db.statement_count())),
                state.db.sqlite_steps().map(|s| (s.vm, s.full_scan)),
            ),
        )
}

/// A request refused for the size of its body (413) is answered before the rest of the body is
/// read, so its connection cannot carry another request: the answer says so
/// (`Connection: close`), or a client would send its next request on a connection the server
/// is closing, and see it fail.
async fn close_after_refused_body(response: poem::Result<Response>) -> poem::Result<Response> {
    let mut response = response?;
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        response.headers_mut().insert(
            poem::http::header::CONNECTION,
            poem::http::HeaderValue::from_static("close"),
        );
    }
    Ok(response)
}

/// All routes.
pub fn routes(state: AppState) -> impl poem::Endpoint {
    let m = state.metrics.clone();
    let (home, console) = console::routes();
    Route::new()
        .at("/", home.with(metrics::RouteMetrics::new(&m, "/")))
        .at(
            "/favicon.ico",
            get(console::favicon).with(metrics::RouteMetrics::new(&m, "/favicon.ico")),
        )
        .nest(
            "/console",
            console.with(metrics::RouteMetrics::new(&m, "/console")),
        )
        .at(
            "/graphql",
            get(graphql::graphiql)
                .post(graphql::graphql_post)
                .with(metrics::RouteMetrics::new(&m, "/graphql")),
        )
        .at(
            "/graphql/assets/:name",
            get(graphql::graphiql_asset).with(metrics::RouteMetrics::new(&m, "/graphql/assets")),
        )
        .at(
            "/graphql/ws",
            get(graphql::graphql_ws).with(metrics::RouteMetrics::new(&m, "/graphql/ws")),
        )
        .at(
            "/webhooks/:source_id",
            poem::post(webhooks::receive_webhook)
                .with(metrics::RouteMetrics::new(&m, "/webhooks/{sourceId}")),
        )
        .at(
            "/healthz",
            get(healthz).with(metrics::RouteMetrics::new(&m, "/healthz")),
        )
        .at(
            "/readyz",
            get(readyz).with(metrics::RouteMetrics::new(&m, "/readyz")),
        )
        .at(
            "/metrics",
            get(metrics_endpoint).with(metrics::RouteMetrics::new(&m, "/metrics")),
        )
        .data(state)
        .after(close_after_refused_body)
}
