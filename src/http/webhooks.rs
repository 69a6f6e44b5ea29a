//! `POST /webhooks/{sourceId}`: verify on the raw body, commit to the inbox, then acknowledge in
//! the form the sender expects (JSON for STANDARD, HubSpot and Pipedrive; the SOAP `Ack` for
//! Salesforce).

use chrono::Utc;
use poem::{
    Body, Request, Response,
    error::ReadBodyError,
    handler,
    http::StatusCode,
    web::{Data, Path},
};
use serde_json::json;
use tandem_connectors::inbound::SALESFORCE_ACK;

use crate::{
    domain::{
        inbox::{NewReceipt, ReceiptStatus},
        webhooks::{Disposition, InboundRequest, WebhookSourceKind},
    },
    http::{AppState, graphql::MAX_BODY_BYTES},
};

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(body.to_string())
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({"error": message}))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// Receives one webhook request.
#[handler]
pub async fn receive_webhook(
    req: &Request,
    Path(source_id): Path<String>,
    body: Body,
    state: Data<&AppState>,
) -> Response {
    let received_at = Utc::now();
    let bytes = match body.into_bytes_limit(MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(ReadBodyError::PayloadTooLarge) => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "body larger than 1 MiB");
        }
        Err(_) => return error(StatusCode::BAD_REQUEST, "could not read the body"),
    };
    let source = match state.webhooks.source(&source_id).await {
        Ok(Some(source)) => source,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no webhook source has this id"),
        Err(err) => {
            tracing::error!(error = ?err.message(), source = %source_id, "loading a webhook source failed");
            return error(StatusCode::SERVICE_UNAVAILABLE, "try again later");
        }
    };
    if source.is_gone() {
        state.metrics.observe_webhook(source.kind.as_str(), "gone");
        return error(StatusCode::GONE, "this webhook source is disabled");
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let url = format!("{}{}", state.public_base, path_and_query);
    let request = InboundRequest {
        method: req.method().as_str(),
        url: &url,
        headers: req.headers(),
        token: req.uri().query().and_then(|q| query_param(q, "token")),
        body: &bytes,
        received_at,
    };
    if let Err(reason) = source.verify(&request) {
        state
            .metrics
            .observe_webhook(source.kind.as_str(), "unauthorized");
        tracing::info!(source = %source_id, %reason, "webhook verification failed");
        return error(
            StatusCode::UNAUTHORIZED,
            &format!("verification failed: {reason}"),
        );
    }
    let events = source.split(&request);
    // The whole body could not be split into events (malformed XML/JSON before any event id).
    let unsplittable = events.len() == 1
        && events[0].event_id.is_none()
        && matches!(events[0].disposition, Disposition::Fail(_));
    let receipts: Vec<NewReceipt> = events
        .into_iter()
        .map(|event| NewReceipt {
            source_id: source.model.id.clone(),
            program_id: source.model.program_id.clone(),
            event,
            received_at,
        })
        .collect();
    let stored = match state.inbox.store(receipts).await {
        Ok(stored) => stored,
        Err(err) => {
            tracing::error!(error = ?err.message(), "storing webhook receipts failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the webhook could not be stored; retry later",
            );
        }
    };
    for receipt in &stored {
        state
            .metrics
            .observe_webhook(source.kind.as_str(), receipt.status.as_str());
    }
    // HubSpot receipts that wait for their deal: the source's connection fetches it now.
    if let Some(connection) = &source.model.connection_id
        && stored
            .iter()
            .any(|r| r.status == ReceiptStatus::Received && r.reason.is_some())
    {
        state.sync_trigger.request(connection);
    }
    let listed: Vec<_> = stored
        .iter()
        .map(|r| json!({"id": r.id, "status": r.status.as_str(), "reason": r.reason}))
        .collect();
    let all_failed = stored.iter().all(|r| r.status == ReceiptStatus::Failed);
    match source.kind {
        // Tandem's own protocol: a payload that can never apply is the sender's bug; say so.
        WebhookSourceKind::Standard | WebhookSourceKind::Stripe if all_failed => json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": stored.first().and_then(|r| r.reason.clone()), "receipts": listed}),
        ),
        // No notification to acknowledge: a SOAP Ack would claim otherwise.
        WebhookSourceKind::Salesforce if unsplittable => json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": stored.first().and_then(|r| r.reason.clone()), "receipts": listed}),
        ),
        WebhookSourceKind::Salesforce => Response::builder()
            .status(StatusCode::OK)
            .content_type("text/xml; charset=utf-8")
            .body(SALESFORCE_ACK),
        // HubSpot and Pipedrive retry on anything but 2xx; a stored receipt is acknowledged.
        _ => json_response(StatusCode::OK, json!({"receipts": listed})),
    }
}
