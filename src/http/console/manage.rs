//! The program manager's remaining pages: programs and plans, payout runs with their exports;
//! and the partner's payout method. Like every console page, each runs GraphQL as the
//! signed-in key.

use std::collections::HashMap;

use maud::{Markup, html};
use poem::{
    Request, Response, handler,
    http::{StatusCode, header},
    web::{Data, Form, Path, Query},
};
use serde_json::{Value, json};

use super::{
    Failure, Session, act_on, done_or_failed, edges, for_managers, form_input,
    format::{counted, money, time, words},
    gql, html as page, list_query, not_found_page, page_variables, param, program_choice, read,
    views::{self, csrf, empty, field_error, form_error, layout, text},
    with_post, with_session,
};
use crate::http::AppState;

fn plan(plan: &Value, currency: &str) -> Markup {
    html! {
        (words(&text(&plan["type"])))
        @if !plan["rate"].is_null() { " " (text(&plan["rate"])) " %" }
        @if !plan["flatAmount"].is_null() { " " (money(&text(&plan["flatAmount"]), currency)) }
        @if let Some(tiers) = plan["tiers"].as_array().filter(|t| !t.is_empty()) {
            br; small { "Tiers: "
                @for (i, t) in tiers.iter().enumerate() {
                    @if i > 0 { ", " }
                    (text(&t["rate"])) " % from " (money(&text(&t["minRevenue"]), currency))
                }
            }
        }
        @if !plan["capPerDeal"].is_null() { br; small { "Cap per deal " (money(&text(&plan["capPerDeal"]), currency)) } }
        @if !plan["minDealAmount"].is_null() { br; small { "Deals from " (money(&text(&plan["minDealAmount"]), currency)) } }
        @if !plan["recurring"].is_null() { br; small { "Recurring share on invoices" } }
    }
}

/// `GET /console/programs`: programs with their plans, registration settings and groups.
#[handler]
pub async fn programs_page(
    req: &Request,
    state: Data<&AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    with_session(req, &state, async |session| {
        let q = param(&params, "q");
        let data = read(
            &state,
            req,
            &session,
            &list_query(
                "programs",
                "ProgramFilter",
                "id name kind currency attributionWindowDays holdDays clawbackDays leadSlaMinutes \
                 commission { type rate flatAmount capPerDeal minDealAmount tiers { minRevenue rate } recurring { months } } \
                 registration { approval protectionDays extensionDays maxExtensions } \
                 partnerGroups { name rank isDefault commission { type rate flatAmount tiers { minRevenue rate } capPerDeal minDealAmount recurring { months } } } \
                 partners(first: 0) { totalCount }",
            ),
            page_variables(&params, json!({"search": q})),
        )
        .await?;
        let list = &data["programs"];
        let body = html! {
            (super::views::search("/console/programs", q, "Search programs by name", &[]))
            @if edges(list).is_empty() && q.is_some() {
                (empty("No program matches. Clear the search to see them all."))
            } @else if edges(list).is_empty() {
                (empty("No program yet. Create one with the createProgram mutation in GraphiQL."))
            }
            @for p in edges(list) {
                @let currency = text(&p["currency"]);
                section class="card" data-program-id=(text(&p["id"])) {
                    h2 { (text(&p["name"])) }
                    dl class="facts" {
                        dt { "Kind" } dd { (words(&text(&p["kind"]))) }
                        dt { "Currency" } dd { (currency) }
                        dt { "Commission" } dd { (plan(&p["commission"], &currency)) }
                        dt { "Attribution window" } dd { (text(&p["attributionWindowDays"])) " days" }
                        dt { "Hold, clawback" } dd { (text(&p["holdDays"])) " days, " (text(&p["clawbackDays"])) " days" }
                        dt { "Registration" } dd {
                            (words(&text(&p["registration"]["approval"]))) " approval, protected "
                            (text(&p["registration"]["protectionDays"])) " days, extended by "
                            (text(&p["registration"]["extensionDays"])) " days up to "
                            (text(&p["registration"]["maxExtensions"])) " times"
                        }
                        dt { "Lead SLA" } dd {
                            @if p["leadSlaMinutes"].is_null() { "none" } @else { (text(&p["leadSlaMinutes"])) " minutes" }
                        }
                        dt { "Partners" } dd { a href=(format!("/console/overview?program={}", text(&p["id"]))) { (text(&p["partners"]["totalCount"])) } }
                    }
                    @if let Some(groups) = p["partnerGroups"].as_array().filter(|g| !g.is_empty()) {
                        h3 { "Partner groups" }
                        table {
                            thead { tr { th { "Group" } th { "Rank" } th { "Commission" } } }
                            tbody {
                                @for g in groups {
                                    tr { td { (text(&g["name"])) @if g["isDefault"] == true { " (default)" } } td { (text(&g["rank"])) } td { (plan(&g["commission"], &currency)) } }
                                }
                            }
                        }
                    }
                }
            }
            (super::views::list_footer("/console/programs", &[("q", q)], list))
        };
        Ok(page(StatusCode::OK, layout(Some(&session), "Programs and plans", "Programs", body)))
    })
    .await
}

/// `GET /console/payout-runs?program=`: a program's payout runs with their exports.
#[handler]
pub async fn payout_runs(
    req: &Request,
    state: Data<&AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    for_managers(req, &state, async |session| {
        let (program, programs) = program_choice(&state, req, &session, &params).await?;
        let Some(program) = program else {
            return Ok(page(StatusCode::OK, layout(Some(&session), "Payout runs", "Payout runs", empty("No program yet."))));
        };
        let data = read(
            &state,
            req,
            &session,
            "query($p: ID!) { program(id: $p) { currency } \
               programBalances(programId: $p) { currency pending approved inPayout paid held } \
               payoutRuns(programId: $p) { id currency cutoff minimumAmount status total payoutCount createdAt \
                 skipped { reason } } }",
            json!({"p": program}),
        )
        .await?;
        let runs = data["payoutRuns"].as_array().cloned().unwrap_or_default();
        let here = format!("/console/payout-runs?program={}", views::urlencode(&program));
        let body = html! {
            (views::notice(&params))
            form method="get" action="/console/payout-runs" class="filters" {
                (views::program_select(&programs, &program))
                button type="submit" { "Show" }
            }
            (views::balances(&data["programBalances"]))
            section {
                h2 { "New payout run" }
                form #create-payout-run method="post" action="/console/payout-runs" class="inline" {
                    (csrf(&session))
                    input type="hidden" name="programId" value=(program);
                    label for="run-currency" { "Currency" }
                    input #run-currency name="currency" required value=(text(&data["program"]["currency"])) size="4";
                    label for="run-minimum" { "Minimum per partner" }
                    input #run-minimum name="minimumAmount" inputmode="decimal" placeholder="0.01" size="8";
                    button type="submit" data-action="create-run" { "Gather approved commission" }
                }
            }
            @if runs.is_empty() {
                (empty("No payout run yet. createPayoutRun gathers the approved commission of every partner into payouts."))
            } @else {
                table {
                    thead { tr { th { "Created" } th { "Cutoff" } th { "Status" } th { "Payouts" } th { "Total" } th { "Export" } th { "Payment" } } }
                    tbody {
                        @for r in &runs {
                            @let id = text(&r["id"]);
                            tr data-run-id=(id) {
                                td { (time(&text(&r["createdAt"]))) }
                                td { (time(&text(&r["cutoff"]))) }
                                td { (words(&text(&r["status"]))) }
                                td { (text(&r["payoutCount"]))
                                    @let skipped = r["skipped"].as_array().map_or(0, Vec::len);
                                    @if skipped > 0 { br; small { (counted(&skipped.to_string(), "partner waits", "partners wait")) " for a later run" } } }
                                td class="num" { (money(&text(&r["total"]), &text(&r["currency"]))) }
                                td {
                                    form method="post" action=(format!("/console/payout-runs/{id}/export")) class="inline" {
                                        (csrf(&session))
                                        label for=(format!("format-{id}")) { "Format" }
                                        select id=(format!("format-{id}")) name="format" {
                                            option value="CSV" { "CSV (every payout)" }
                                            option value="SEPA_PAIN_001" { "SEPA pain.001" }
                                            option value="PAYPAL_PAYOUTS_CSV" { "PayPal Payouts CSV" }
                                        }
                                        button type="submit" data-action="export" { "Download" }
                                    }
                                }
                                td {
                                    @if r["status"] == "DRAFT" || r["status"] == "FAILED" || r["status"] == "PARTIALLY_PAID" {
                                        form method="post" action=(format!("/console/payout-runs/{id}/send")) class="inline" {
                                            (csrf(&session))
                                            input type="hidden" name="back" value=(here);
                                            button type="submit" data-action="send" { "Send with Stripe" }
                                        }
                                    }
                                    @if r["status"] == "DRAFT" {
                                        form method="post" action=(format!("/console/payout-runs/{id}/paid")) class="inline" {
                                            (csrf(&session))
                                            input type="hidden" name="back" value=(here);
                                            label for=(format!("reference-{id}")) { "Bank or PayPal reference" }
                                            input id=(format!("reference-{id}")) name="reference" required size="14";
                                            button type="submit" data-action="mark-paid" { "Mark paid" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        };
        Ok(page(StatusCode::OK, layout(Some(&session), "Payout runs", "Payout runs", body)))
    })
    .await
}

/// `POST /console/payout-runs`: `createPayoutRun` for the program and currency of the form.
#[handler]
pub async fn create_run(
    req: &Request,
    state: Data<&AppState>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let input = form_input(&form, &["programId", "currency", "minimumAmount"]);
    let back = format!(
        "/console/payout-runs?program={}",
        views::urlencode(form.get("programId").map_or("", String::as_str))
    );
    act_on(
        (req, &state, &form),
        &back,
        "mutation($input: CreatePayoutRunInput!) { createPayoutRun(input: $input) { payoutRun { payoutCount total currency } } }",
        json!({"input": input}),
        |data| {
            let run = &data["createPayoutRun"]["payoutRun"];
            format!(
                "Payout run made: {}, {} in all.",
                counted(&text(&run["payoutCount"]), "payout", "payouts"),
                money(&text(&run["total"]), &text(&run["currency"]))
            )
        },
    )
    .await
}

super::id_action!(
    /// `POST /console/payout-runs/{id}/send`: `sendPayoutRun` (Stripe transfers).
    send_run,
    "/console/payout-runs",
    "mutation($id: ID!) { sendPayoutRun(input: {id: $id}) { payoutRun { status } } }",
    |data| format!(
        "Sent: the run is {}.",
        words(&text(&data["sendPayoutRun"]["payoutRun"]["status"])).to_lowercase()
    ),
);

/// `POST /console/payout-runs/{id}/paid`: `markPayoutRunPaid` with the bank's reference.
#[handler]
pub async fn mark_run_paid(
    req: &Request,
    state: Data<&AppState>,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let reference = form.get("reference").map(|r| r.trim()).unwrap_or_default();
    act_on(
        (req, &state, &form),
        "/console/payout-runs",
        "mutation($id: ID!, $reference: String!) { markPayoutRunPaid(input: {id: $id, reference: $reference}) { payoutRun { status payoutCount } } }",
        json!({"id": id, "reference": reference}),
        |data| {
            format!(
                "Marked paid: {}.",
                counted(
                    &text(&data["markPayoutRunPaid"]["payoutRun"]["payoutCount"]),
                    "payout",
                    "payouts"
                )
            )
        },
    )
    .await
}

/// `POST /console/payout-runs/{id}/export`: `exportPayoutRun`, answered as a file to download.
#[handler]
pub async fn export_run(
    req: &Request,
    state: Data<&AppState>,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    with_post(req, &state, &form, async |session| {
        let format = form.get("format").map(String::as_str).unwrap_or_default();
        let outcome = gql(
            &state,
            req,
            &session,
            "mutation($id: ID!, $format: PayoutExportFormat!) { exportPayoutRun(input: {id: $id, format: $format}) { export { filename contentType content } } }",
            json!({"id": id, "format": format}),
        )
        .await;
        match outcome {
            Ok(data) => {
                let export = &data["exportPayoutRun"]["export"];
                let filename: String = text(&export["filename"])
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                    .collect();
                Ok(Response::builder()
                    .content_type(text(&export["contentType"]))
                    .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{filename}\""))
                    .body(text(&export["content"])))
            }
            Err(failure) => done_or_failed(req, &state, &session, "/console/payout-runs", Err(failure)),
        }
    })
    .await
}

/// The partner's payout method: shown masked, set with a form (`setPayoutMethod`).
pub fn payout_method_section(
    session: &Session,
    method: &Value,
    failure: Option<&Failure>,
) -> Markup {
    let fields = ["kind", "iban", "bic", "accountHolder", "paypalEmail"];
    html! {
        section aria-labelledby="method-heading" {
            h2 id="method-heading" { "Payout method" }
            @if method.is_null() {
                (empty("No payout method yet: set one below to be paid."))
            } @else {
                p data-payout-method=(text(&method["kind"])) { (words(&text(&method["kind"]))) ": " code { (text(&method["masked"])) }
                    @if !method["accountHolder"].is_null() { " (" (text(&method["accountHolder"])) ")" } }
            }
            form id="payout-method" method="post" action="/console/payout-method" class="card" {
                (csrf(session))
                (form_error(failure, &fields))
                div class="field" {
                    label for="kind" { "Kind" }
                    select id="kind" name="kind" {
                        option value="SEPA" { "SEPA bank transfer (EUR)" }
                        option value="PAYPAL" { "PayPal" }
                    }
                    (field_error(failure, "kind"))
                }
                @for (name, label) in [("iban", "IBAN (SEPA)"), ("bic", "BIC (SEPA)"), ("accountHolder", "Account holder (SEPA)"), ("paypalEmail", "PayPal email")] {
                    div class="field" {
                        label for=(name) { (label) }
                        input id=(name) name=(name) type="text" autocomplete="off";
                        (field_error(failure, name))
                    }
                }
                button type="submit" { "Save payout method" }
            }
        }
    }
}

/// `POST /console/payout-method`: `setPayoutMethod` for the partner's own method.
#[handler]
pub async fn set_payout_method(
    req: &Request,
    state: Data<&AppState>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    with_post(req, &state, &form, async |session| {
        let Some(partner) = session.partner_id().map(str::to_string) else {
            return Err(not_found_page(Some(&session)));
        };
        let mut input = form_input(&form, &["kind", "iban", "bic", "accountHolder", "paypalEmail"]);
        input.insert("partnerId".into(), json!(partner));
        let outcome = gql(
            &state,
            req,
            &session,
            "mutation($input: SetPayoutMethodInput!) { setPayoutMethod(input: $input) { payoutMethod { kind } } }",
            json!({"input": input}),
        )
        .await
        .map(|_| "The payout method is saved.".to_string());
        done_or_failed(req, &state, &session, "/console/payouts", outcome)
    })
    .await
}
