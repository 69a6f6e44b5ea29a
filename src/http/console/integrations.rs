//! The integrations pages (program managers): CRM connections with "Sync now", webhook sources
//! and every receipt they stored, outbound endpoints with "Enable again", and every delivery
//! with its attempts and "Resend". Like every console page, each runs GraphQL as the
//! signed-in key.

use std::collections::HashMap;

use maud::{Markup, html};
use poem::{
    Request, Response, handler,
    http::StatusCode,
    web::{Data, Query},
};
use serde_json::{Value, json};

use super::{
    Session, edges, for_managers,
    format::{time, words},
    html as page, id_action, list_query, page_variables, param, read,
    views::{
        self, chosen_status, csrf, empty, layout, list_footer, list_footer_at, status_filter, text,
    },
};
use crate::http::AppState;

/// Rows of each list on the integrations page.
const SECTION_SIZE: i64 = 25;
/// The latest receipts and deliveries shown there.
const LATEST: i64 = 5;

/// The receipt statuses a list may be filtered by.
const RECEIPT_STATUSES: [&str; 6] = [
    "RECEIVED",
    "APPLIED",
    "IGNORED_STALE",
    "DUPLICATE",
    "IGNORED",
    "FAILED",
];
/// The delivery statuses a list may be filtered by.
const DELIVERY_STATUSES: [&str; 4] = ["PENDING", "SUCCEEDED", "FAILED", "CANCELLED"];

/// The fields of a receipt row.
const RECEIPT_FIELDS: &str = "id status reason receivedAt attempts source { id name }";
/// The fields of a delivery row.
const DELIVERY_FIELDS: &str =
    "id endpointId eventId eventType status attempt statusCode lastError createdAt nextAttemptAt";

fn receipt_table(rows: &[&Value]) -> Markup {
    html! {
        table {
            thead { tr { th { "Received" } th { "Source" } th { "Status" } th { "Attempts" } th { "Reason" } } }
            tbody {
                @for r in rows {
                    tr data-receipt-id=(text(&r["id"])) {
                        td { (time(&text(&r["receivedAt"]))) }
                        td { a href=(format!("/console/integrations/receipts?source={}", text(&r["source"]["id"]))) { (text(&r["source"]["name"])) } }
                        td { (words(&text(&r["status"]))) }
                        td { (text(&r["attempts"])) }
                        td { (text(&r["reason"])) }
                    }
                }
            }
        }
    }
}

fn delivery_table(session: &Session, rows: &[&Value], back: &str) -> Markup {
    html! {
        table {
            thead { tr { th { "Created" } th { "Event" } th { "Status" } th { "Attempts" } th { "Answer" } th { "" } } }
            tbody {
                @for d in rows {
                    @let id = text(&d["id"]);
                    tr data-delivery-id=(id) {
                        td { (time(&text(&d["createdAt"]))) }
                        td { a href=(format!("/console/integrations/deliveries/{id}")) { code { (text(&d["eventType"])) } } br; small { (text(&d["eventId"])) } }
                        td { (words(&text(&d["status"])))
                            @if !d["nextAttemptAt"].is_null() { br; small { "next attempt " (time(&text(&d["nextAttemptAt"]))) } } }
                        td { (text(&d["attempt"])) }
                        td { (text(&d["statusCode"])) " " (text(&d["lastError"])) }
                        td {
                            @if d["status"] != "PENDING" {
                                form method="post" action=(format!("/console/integrations/deliveries/{id}/resend")) class="inline" {
                                    (csrf(session))
                                    input type="hidden" name="back" value=(back);
                                    button type="submit" data-action="resend" { "Resend" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /console/integrations`: CRM connections, webhook sources and endpoints (each list
/// paged on its own: `crm`, `sources`, `endpoints`), and the latest receipts and deliveries.
#[handler]
pub async fn integrations(
    req: &Request,
    state: Data<&AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    for_managers(req, &state, async |session| {
        let cursors = ["crm", "sources", "endpoints"].map(|name| (name, param(&params, name)));
        let data = read(
            &state,
            req,
            &session,
            &format!(
                "query($crm: String, $sources: String, $endpoints: String) {{ \
                   crmConnections(first: {SECTION_SIZE}, after: $crm) {{ totalCount pageInfo {{ hasNextPage hasPreviousPage endCursor }} \
                     edges {{ node {{ id name kind status lastError lastSyncedAt backfilled schedule program {{ name }} }} }} }} \
                   webhookSources(first: {SECTION_SIZE}, after: $sources) {{ totalCount pageInfo {{ hasNextPage hasPreviousPage endCursor }} \
                     edges {{ node {{ id name kind url status program {{ name }} }} }} }} \
                   webhookEndpoints(first: {SECTION_SIZE}, after: $endpoints) {{ totalCount pageInfo {{ hasNextPage hasPreviousPage endCursor }} \
                     edges {{ node {{ id url status disabledReason failingSince eventTypes }} }} }} \
                   webhookReceipts(first: {LATEST}) {{ edges {{ node {{ {RECEIPT_FIELDS} }} }} }} \
                   webhookDeliveries(first: {LATEST}) {{ edges {{ node {{ {DELIVERY_FIELDS} }} }} }} }}"
            ),
            json!({"crm": cursors[0].1, "sources": cursors[1].1, "endpoints": cursors[2].1}),
        )
        .await?;
        // Paging one list keeps where the others are.
        let others = |name: &str| -> Vec<(&str, Option<&str>)> {
            cursors.iter().filter(|c| c.0 != name).copied().collect()
        };
        let footer = |name: &str, list: &Value| {
            list_footer_at("/console/integrations", name, &others(name), list)
        };
        let connections = edges(&data["crmConnections"]);
        let sources = edges(&data["webhookSources"]);
        let endpoints = edges(&data["webhookEndpoints"]);
        let latest_receipts = edges(&data["webhookReceipts"]);
        let latest_deliveries = edges(&data["webhookDeliveries"]);
        let body = html! {
            (views::notice(&params))
            section {
                h2 { "CRM connections" }
                @if connections.is_empty() {
                    (empty("No CRM connection yet. Add HubSpot, Salesforce or Pipedrive with createCrmConnection."))
                } @else {
                    table {
                        thead { tr { th { "Connection" } th { "Program" } th { "Status" } th { "Last sync" } th { "Schedule" } th { "" } } }
                        tbody {
                            @for c in &connections {
                                @let id = text(&c["id"]);
                                tr data-connection-id=(id) {
                                    td { (text(&c["name"])) br; small { (words(&text(&c["kind"]))) } }
                                    td { (text(&c["program"]["name"])) }
                                    td { (words(&text(&c["status"])))
                                        @if !c["lastError"].is_null() { br; small class="error" { (text(&c["lastError"])) } } }
                                    td { (time(&text(&c["lastSyncedAt"]))) @if c["backfilled"] == false { br; small { "backfill not finished" } } }
                                    td { code { (text(&c["schedule"])) } }
                                    td {
                                        form method="post" action=(format!("/console/integrations/crm/{id}/sync")) class="inline" {
                                            (csrf(&session))
                                            button type="submit" data-action="sync" { "Sync now" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    (footer("crm", &data["crmConnections"]))
                }
            }
            section {
                h2 { "Webhook sources" }
                @if sources.is_empty() {
                    (empty("No webhook source yet. createWebhookSource gives a CRM a signed URL to post deal changes to."))
                } @else {
                    table {
                        thead { tr { th { "Source" } th { "Program" } th { "Status" } th { "URL" } th { "" } } }
                        tbody {
                            @for s in &sources {
                                @let id = text(&s["id"]);
                                tr data-source-id=(id) {
                                    td { (text(&s["name"])) br; small { (words(&text(&s["kind"]))) } }
                                    td { (text(&s["program"]["name"])) }
                                    td { (words(&text(&s["status"]))) }
                                    td { code { (text(&s["url"])) } }
                                    td { a href=(format!("/console/integrations/receipts?source={id}")) { "Receipts" } }
                                }
                            }
                        }
                    }
                    (footer("sources", &data["webhookSources"]))
                }
                h3 { "Latest receipts" }
                @if latest_receipts.is_empty() {
                    (empty("No webhook received yet."))
                } @else {
                    (receipt_table(&latest_receipts))
                    p { a href="/console/integrations/receipts" { "All receipts" } }
                }
            }
            section {
                h2 { "Outbound webhook endpoints" }
                @if endpoints.is_empty() {
                    (empty("No endpoint yet. createWebhookEndpoint sends signed events to an integration."))
                } @else {
                    table {
                        thead { tr { th { "URL" } th { "Events" } th { "Status" } th { "" } } }
                        tbody {
                            @for e in &endpoints {
                                @let id = text(&e["id"]);
                                tr data-endpoint-id=(id) {
                                    td { code { (text(&e["url"])) } br; a href=(format!("/console/integrations/deliveries?endpoint={id}")) { "Deliveries" } }
                                    td { small { (e["eventTypes"].as_array().map(|t| t.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()) } }
                                    td { (words(&text(&e["status"])))
                                        @if !e["disabledReason"].is_null() { br; small class="error" { (text(&e["disabledReason"])) } }
                                        @if !e["failingSince"].is_null() { br; small { "failing since " (time(&text(&e["failingSince"]))) } } }
                                    td {
                                        @if e["status"] == "DISABLED" {
                                            form method="post" action=(format!("/console/integrations/endpoints/{id}/enable")) class="inline" {
                                                (csrf(&session))
                                                button type="submit" data-action="enable" { "Enable again" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    (footer("endpoints", &data["webhookEndpoints"]))
                }
                h3 { "Latest deliveries" }
                @if latest_deliveries.is_empty() {
                    (empty("No delivery yet."))
                } @else {
                    (delivery_table(&session, &latest_deliveries, "/console/integrations"))
                    p { a href="/console/integrations/deliveries" { "All deliveries" } }
                }
            }
        };
        Ok(page(StatusCode::OK, layout(Some(&session), "Integrations", "Integrations", body)))
    })
    .await
}

/// `GET /console/integrations/receipts?source=&status=`: every stored webhook receipt, newest
/// first, paged.
#[handler]
pub async fn receipts(
    req: &Request,
    state: Data<&AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    for_managers(req, &state, async |session| {
        let source = param(&params, "source");
        let status = chosen_status(&params, &RECEIPT_STATUSES);
        let data = read(
            &state,
            req,
            &session,
            &list_query("webhookReceipts", "WebhookReceiptFilter", RECEIPT_FIELDS),
            page_variables(&params, json!({"sourceId": source, "status": status})),
        )
        .await?;
        let list = &data["webhookReceipts"];
        let rows = edges(list);
        let keep = [("source", source), ("status", status)];
        let body = html! {
            p { a href="/console/integrations" { "Integrations" } }
            (status_filter("/console/integrations/receipts", &RECEIPT_STATUSES, status, &keep[..1]))
            @if rows.is_empty() {
                (empty("No receipt here. A CRM posts to a webhook source's URL; each request it signs is stored here before it is answered."))
            } @else {
                (receipt_table(&rows))
            }
            (list_footer("/console/integrations/receipts", &keep, list))
        };
        Ok(page(StatusCode::OK, layout(Some(&session), "Webhook receipts", "Integrations", body)))
    })
    .await
}

/// `GET /console/integrations/deliveries?endpoint=&status=`: every outbound delivery, newest
/// first, paged, with "Resend".
#[handler]
pub async fn deliveries(
    req: &Request,
    state: Data<&AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    for_managers(req, &state, async |session| {
        let endpoint = param(&params, "endpoint");
        let status = chosen_status(&params, &DELIVERY_STATUSES);
        let data = read(
            &state,
            req,
            &session,
            &list_query("webhookDeliveries", "WebhookDeliveryFilter", DELIVERY_FIELDS),
            page_variables(&params, json!({"endpointId": endpoint, "status": status})),
        )
        .await?;
        let list = &data["webhookDeliveries"];
        let rows = edges(list);
        let keep = [("endpoint", endpoint), ("status", status)];
        let here = match endpoint {
            Some(id) => format!("/console/integrations/deliveries?endpoint={}", views::urlencode(id)),
            None => "/console/integrations/deliveries".to_string(),
        };
        let body = html! {
            (views::notice(&params))
            p { a href="/console/integrations" { "Integrations" } }
            (status_filter("/console/integrations/deliveries", &DELIVERY_STATUSES, status, &keep[..1]))
            @if rows.is_empty() {
                (empty("No delivery here. Each event an endpoint subscribes to is delivered to it, signed, and listed here."))
            } @else {
                (delivery_table(&session, &rows, &here))
            }
            (list_footer("/console/integrations/deliveries", &keep, list))
        };
        Ok(page(StatusCode::OK, layout(Some(&session), "Webhook deliveries", "Integrations", body)))
    })
    .await
}

/// `GET /console/integrations/deliveries/{id}`: one delivery and every attempt at it (answer
/// code, time taken, the start of the answer or the error), with "Resend".
#[handler]
pub async fn delivery(
    req: &Request,
    state: Data<&AppState>,
    poem::web::Path(id): poem::web::Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    for_managers(req, &state, async |session| {
        let data = read(
            &state,
            req,
            &session,
            &format!(
                "query($id: ID!, $after: String) {{ webhookDelivery(id: $id) {{ {DELIVERY_FIELDS} deliveredAt \
                   attempts(first: 25, after: $after) {{ totalCount pageInfo {{ hasNextPage hasPreviousPage endCursor }} \
                     edges {{ node {{ attempt at statusCode latencyMs responseSnippet error }} }} }} }} }}"
            ),
            json!({"id": id, "after": param(&params, "after")}),
        )
        .await?;
        let d = &data["webhookDelivery"];
        let here = format!("/console/integrations/deliveries/{}", text(&d["id"]));
        let attempts = edges(&d["attempts"]);
        let body = html! {
            (views::notice(&params))
            p { a href=(format!("/console/integrations/deliveries?endpoint={}", text(&d["endpointId"]))) { "The endpoint's deliveries" } }
            dl class="facts" {
                dt { "Event" } dd { code { (text(&d["eventType"])) } " " small { (text(&d["eventId"])) } }
                dt { "Status" } dd { (words(&text(&d["status"]))) }
                dt { "Created" } dd { (time(&text(&d["createdAt"]))) }
                dt { "Delivered" } dd { (time(&text(&d["deliveredAt"]))) }
                dt { "Next attempt" } dd { (time(&text(&d["nextAttemptAt"]))) }
            }
            @if d["status"] != "PENDING" {
                form method="post" action=(format!("{here}/resend")) class="inline" {
                    (csrf(&session))
                    input type="hidden" name="back" value=(here);
                    button type="submit" data-action="resend" { "Resend" }
                }
            }
            section {
                h2 { "Attempts" }
                @if attempts.is_empty() {
                    (empty("Not attempted yet: the delivery worker sends it when it is due."))
                } @else {
                    table {
                        thead { tr { th { "Attempt" } th { "At" } th { "Answer" } th { "Time" } th { "What came back" } } }
                        tbody {
                            @for a in &attempts {
                                tr data-attempt=(text(&a["attempt"])) {
                                    td { (text(&a["attempt"])) }
                                    td { (time(&text(&a["at"]))) }
                                    td { (text(&a["statusCode"])) }
                                    td class="num" { @if !a["latencyMs"].is_null() { (text(&a["latencyMs"])) " ms" } }
                                    td { @if !a["error"].is_null() { span class="error" { (text(&a["error"])) } } " " small { (text(&a["responseSnippet"])) } }
                                }
                            }
                        }
                    }
                }
                (list_footer(&here, &[], &d["attempts"]))
            }
        };
        Ok(page(StatusCode::OK, layout(Some(&session), "Webhook delivery", "Integrations", body)))
    })
    .await
}

id_action!(
    /// `POST /console/integrations/deliveries/{id}/resend`: `resendWebhookDelivery` (due now).
    resend,
    "/console/integrations",
    "mutation($id: ID!) { resendWebhookDelivery(input: {id: $id}) { delivery { status } } }",
    |_| "The delivery is due again: it goes out now.".to_string(),
);

id_action!(
    /// `POST /console/integrations/crm/{id}/sync`: `syncCrmConnection` (the sync runs now).
    sync_now,
    "/console/integrations",
    "mutation($id: ID!) { syncCrmConnection(input: {id: $id}) { syncRun { status dealsSeen dealsChanged error } } }",
    |data| {
        let run = &data["syncCrmConnection"]["syncRun"];
        match run["status"].as_str() {
            Some("FAILED") => format!("The sync failed: {}", text(&run["error"])),
            _ => format!(
                "Synced: {} deals read, {} changed.",
                text(&run["dealsSeen"]),
                text(&run["dealsChanged"])
            ),
        }
    },
);

id_action!(
    /// `POST /console/integrations/endpoints/{id}/enable`: `enableWebhookEndpoint` (its pending
    /// deliveries go out again).
    enable_endpoint,
    "/console/integrations",
    "mutation($id: ID!) { enableWebhookEndpoint(input: {id: $id}) { endpoint { status } } }",
    |_| "The endpoint is enabled again: its pending deliveries go out.".to_string(),
);
