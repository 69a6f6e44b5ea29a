//! The console's pages: each reads (or changes) through one GraphQL operation run as the
//! signed-in key, then renders.

use std::collections::HashMap;

use maud::{Markup, html};
use poem::{
    Request, Response, handler,
    http::StatusCode,
    web::{Data, Form, Path, Query},
};
use serde_json::{Value, json};

use super::{
    Failure, Outcome, Session, charts, edges, failed, form_input,
    format::{money, percent, time, words},
    gql, html as page, id_action, list_query, list_selection, not_found_page, page_variables,
    param, program_choice, read, redirect,
    views::{
        self, chosen_status, csrf, empty, field_error, form_error, layout, list_footer, search,
        status_filter, text,
    },
    with_post, with_session,
};
use crate::http::AppState;

// ---------------------------------------------------------------------------------------------
// Overview / dashboard.

/// How a KPI is shown.
enum Kind {
    Count,
    Money,
    Share,
    Hours,
}

/// Every scalar field of `Kpis`, in the order of the cards.
const KPIS: [(&str, &str, Kind); 18] = [
    ("wonRevenue", "Won revenue", Kind::Money),
    ("commissionAccrued", "Commission booked", Kind::Money),
    ("commissionPaid", "Commission paid", Kind::Money),
    ("pipelineValue", "Open pipeline", Kind::Money),
    ("recurringRevenue", "Recurring revenue", Kind::Money),
    ("commissionRecurring", "Recurring commission", Kind::Money),
    ("referralsSubmitted", "Referrals submitted", Kind::Count),
    ("referralsAccepted", "Referrals accepted", Kind::Count),
    ("referralsDuplicate", "Duplicates", Kind::Count),
    ("dealsAttributed", "Deals attributed", Kind::Count),
    ("dealsWon", "Deals won", Kind::Count),
    ("dealsLost", "Deals lost", Kind::Count),
    ("activeCustomers", "Active customers", Kind::Count),
    ("conversionRate", "Conversion rate", Kind::Share),
    ("winRate", "Win rate", Kind::Share),
    ("slaMetRate", "Lead SLA met", Kind::Share),
    (
        "medianHoursToFirstDeal",
        "Median hours to first deal",
        Kind::Hours,
    ),
    (
        "medianHoursToEngagement",
        "Median hours to engagement",
        Kind::Hours,
    ),
];

/// The periods the overview offers: (parameter, label, days back; `None` for all time).
const PERIODS: [(&str, &str, Option<i64>); 4] = [
    ("all", "All time", None),
    ("365d", "Last 12 months", Some(365)),
    ("90d", "Last 90 days", Some(90)),
    ("30d", "Last 30 days", Some(30)),
];

fn kpi_selection() -> String {
    KPIS.iter()
        .map(|(name, _, _)| *name)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `GET /console/overview`: KPI cards and charts of a program (a partner's own figures on its
/// dashboard).
#[handler]
pub async fn overview(
    req: &Request,
    state: Data<&AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    with_session(req, &state, async |session| {
            let state = *state;
            let (program_id, programs) = match &session.caller.partner {
                Some(partner) => (Some(partner.program_id.clone()), Vec::new()),
                None => program_choice(state, req, &session, &params).await?,
            };
            let title = if session.is_admin() {
                "Overview"
            } else {
                "Dashboard"
            };
            let Some(program_id) = program_id else {
                return Ok(page(
                    StatusCode::OK,
                    layout(
                        Some(&session),
                        title,
                        title,
                        empty(
                            "No program yet. Create one with the createProgram mutation in \
                             GraphiQL (or run `tandem serve --demo` on an empty database).",
                        ),
                    ),
                ));
            };
            let period = param(&params, "period").unwrap_or("all");
            let days = PERIODS
                .iter()
                .find(|p| p.0 == period)
                .map(|p| p.2)
                .ok_or_else(|| not_found_page(Some(&session)))?;
            // From the start of a UTC day, so that the figures (and their kept answer, see
            // `KpiCache`) stay the same all day long.
            let today = chrono::Utc::now().date_naive().and_time(chrono::NaiveTime::MIN);
            let from = days.map(|d| (today.and_utc() - chrono::Duration::days(d)).to_rfc3339());
            let partner_id = session.partner_id().map(str::to_string);
            let query = format!(
                "query($program: ID!, $partner: ID, $from: DateTime) {{ \
                   program(id: $program) {{ id name currency }} \
                   kpis(programId: $program, partnerId: $partner, from: $from) {{ {} \
                     months(last: 12) {{ month wonRevenue commissionAccrued }} \
                     leaderboard {{ partner {{ id name }} wonRevenue dealsWon }} }} \
                   {} }}",
                kpi_selection(),
                if partner_id.is_some() {
                    "balances(partnerId: $partner) { currency pending approved inPayout paid held } \
                     viewer { partner { group { name } nextGroupProgress { group { name } \
                     dealsWonNeeded revenueNeeded certificationsNeeded } } }"
                } else {
                    ""
                }
            );
            let data = read(
                state,
                req,
                &session,
                &query,
                json!({"program": program_id, "partner": partner_id, "from": from}),
            )
            .await?;
            let currency = text(&data["program"]["currency"]);
            let kpis = &data["kpis"];
            let months: Vec<charts::Month> = kpis["months"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| charts::Month {
                    month: text(&m["month"]),
                    revenue: text(&m["wonRevenue"]),
                    commission: text(&m["commissionAccrued"]),
                })
                .collect();
            let leaders: Vec<(String, String)> = kpis["leaderboard"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| (text(&l["partner"]["name"]), text(&l["wonRevenue"])))
                .collect();
            let body = html! {
                form method="get" action="/console/overview" class="filters" {
                    @if session.is_admin() {
                        (views::program_select(&programs, &program_id))
                    } @else {
                        p { (text(&data["program"]["name"])) }
                    }
                    label for="period" { "Period" }
                    select id="period" name="period" {
                        @for (value, label, _) in PERIODS {
                            option value=(value) selected[value == period] { (label) }
                        }
                    }
                    button type="submit" { "Show" }
                }
                section aria-labelledby="kpis-heading" {
                    h2 id="kpis-heading" { "Key figures" }
                    p class="hint" { "Money in " (currency) ". Deal figures are as of the last reconciliation." }
                    div class="cards" {
                        @for (name, label, kind) in &KPIS {
                            (kpi_card(name, label, kind, &kpis[*name], &currency))
                        }
                    }
                }
                @if !session.is_admin() {
                    (views::balances(&data["balances"]))
                    (group(&data["viewer"]["partner"]))
                }
                section aria-labelledby="charts-heading" {
                    h2 id="charts-heading" { "Charts" }
                    div class="chart-box" {
                        h3 { "Won revenue and commission by month" }
                        @if months.is_empty() {
                            (empty("No won deal or commission in the last 12 months yet."))
                        }
                        (charts::revenue_by_month(&months, &currency))
                        p class="legend" { span class="key revenue" {} "Won revenue " span class="key commission" {} "Commission" }
                    }
                    div class="chart-box" {
                        h3 { "Referral funnel" }
                        (charts::funnel(
                            kpis["referralsSubmitted"].as_i64().unwrap_or(0),
                            kpis["referralsAccepted"].as_i64().unwrap_or(0),
                            kpis["dealsAttributed"].as_i64().unwrap_or(0),
                            kpis["dealsWon"].as_i64().unwrap_or(0),
                        ))
                    }
                    div class="chart-box" {
                        h3 { "Leaderboard" }
                        @if leaders.is_empty() {
                            (empty("No won deal in this period yet."))
                        }
                        (charts::leaderboard(&leaders, &currency))
                    }
                }
            };
            Ok(page(StatusCode::OK, layout(Some(&session), title, title, body)))
    })
    .await
}

fn kpi_card(name: &str, label: &str, kind: &Kind, value: &Value, currency: &str) -> Markup {
    let raw = text(value);
    let shown = match (kind, value) {
        (_, Value::Null) => "no data yet".to_string(),
        (Kind::Money, _) => money(&raw, currency),
        (Kind::Share, v) => percent(v.as_f64().unwrap_or(0.0)),
        (Kind::Hours, v) => format!("{:.1} h", v.as_f64().unwrap_or(0.0)),
        (Kind::Count, _) => raw.clone(),
    };
    html! {
        div class="card kpi" {
            h3 { (label) }
            // The API's own value, as `kpis` answers it; the line below says it in words.
            p class="value" { data data-kpi=(name) value=(raw) { (raw) } }
            @if !matches!(kind, Kind::Count) || value.is_null() {
                p class="shown" { (shown) }
            }
        }
    }
}

fn group(partner: &Value) -> Markup {
    html! {
        section aria-labelledby="group-heading" {
            h2 id="group-heading" { "Group" }
            @if partner["group"].is_null() {
                p { "Not in a group." }
            } @else {
                p { "Group: " strong { (text(&partner["group"]["name"])) } }
            }
            @let next = &partner["nextGroupProgress"];
            @if !next.is_null() {
                p { "To reach " strong { (text(&next["group"]["name"])) } ": "
                    (text(&next["dealsWonNeeded"])) " more won deals, "
                    (text(&next["revenueNeeded"])) " more won revenue, "
                    (text(&next["certificationsNeeded"])) " more certifications." }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Partners.

/// `GET /console/partners`: partners, searchable.
#[handler]
pub async fn partners(
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
                    "partners",
                    "PartnerFilter",
                    "id name domain status createdAt group { name }",
                ),
                page_variables(&params, json!({"search": q})),
            )
            .await?;
            let list = &data["partners"];
            let body = html! {
                (search("/console/partners", q, "Search partners by name or domain", &[]))
                @if edges(list).is_empty() {
                    @if q.is_some() {
                        (empty("No partner matches this search."))
                    } @else {
                        (empty("No partner yet. Create one with createPartner, or open applications so companies can apply."))
                    }
                } @else {
                    table {
                        thead { tr { th { "Name" } th { "Domain" } th { "Status" } th { "Group" } th { "Joined" } } }
                        tbody {
                            @for p in edges(list) {
                                tr data-partner-id=(text(&p["id"])) {
                                    td { a href=(format!("/console/partners/{}", text(&p["id"]))) { (text(&p["name"])) } }
                                    td { (text(&p["domain"])) }
                                    td { (words(&text(&p["status"]))) }
                                    td { (text(&p["group"]["name"])) }
                                    td { (time(&text(&p["createdAt"]))) }
                                }
                            }
                        }
                    }
                }
                (list_footer("/console/partners", &[("q", q)], list))
            };
            Ok(page(StatusCode::OK, layout(Some(&session), "Partners", "Partners", body)))
    })
    .await
}

/// Under a "latest" list: how many there are in all, and the link to the list of them all.
fn all_of(path: &str, connection: &Value, what: &str) -> Markup {
    let total = connection["totalCount"].as_i64().unwrap_or(0);
    let shown = edges(connection).len() as i64;
    html! {
        @if total > shown {
            p class="more" { a href=(path) { "All " (total) " " (what) } }
        }
    }
}

/// `GET /console/partners/{id}`: one partner with its referrals, deals, ledger and balances.
#[handler]
pub async fn partner_page(
    req: &Request,
    state: Data<&AppState>,
    Path(id): Path<String>,
) -> Response {
    with_session(req, &state, async |session| {
            let data = read(
                &state,
                req,
                &session,
                "query($id: ID!) { partner(id: $id) { id name domain status contactEmail referralCode \
                   createdAt program { name currency } group { name } \
                   referrals(first: 10) { totalCount edges { node { id companyName status statusDetail submittedAt } } } \
                   deals(first: 10) { totalCount edges { node { id name amount currency status closedAt } } } } \
                   balances(partnerId: $id) { currency pending approved inPayout paid held } \
                   ledgerEntries(filter: {partnerId: $id}, first: 10) { totalCount edges { node { id kind amount currency status createdAt } } } }",
                json!({"id": id}),
            )
            .await?;
            let p = &data["partner"];
            let body = html! {
                dl class="facts" {
                    dt { "Status" } dd { (words(&text(&p["status"]))) }
                    dt { "Domain" } dd { (text(&p["domain"])) }
                    dt { "Contact" } dd { (text(&p["contactEmail"])) }
                    dt { "Referral code" } dd { code { (text(&p["referralCode"])) } }
                    dt { "Program" } dd { (text(&p["program"]["name"])) }
                    dt { "Group" } dd { (text(&p["group"]["name"])) }
                    dt { "Joined" } dd { (time(&text(&p["createdAt"]))) }
                }
                (views::balances(&data["balances"]))
                section {
                    h2 { "Latest referrals" }
                    (referral_table(&edges(&p["referrals"]), None))
                    (all_of(&format!("/console/referrals?partner={}", text(&p["id"])), &p["referrals"], "referrals"))
                }
                section {
                    h2 { "Latest deals" }
                    (deal_table(&edges(&p["deals"]), false))
                    (all_of(&format!("/console/deals?partner={}", text(&p["id"])), &p["deals"], "deals"))
                }
                section {
                    h2 { "Latest ledger entries" }
                    (ledger_table(&edges(&data["ledgerEntries"]), false))
                    (all_of(&format!("/console/commissions?partner={}", text(&p["id"])), &data["ledgerEntries"], "ledger entries"))
                }
            };
            let name = text(&p["name"]);
            Ok(page(StatusCode::OK, layout(Some(&session), &name, "Partners", body)))
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Referrals.

/// Referral rows; `manager` (a program manager's session) adds the partner column and, on
/// ACCEPTED registrations, the form that extends their protection.
fn referral_table(rows: &[&Value], manager: Option<&Session>) -> Markup {
    let with_partner = manager.is_some();
    html! {
        @if rows.is_empty() {
            (empty("No referral yet."))
        } @else {
            table {
                thead { tr {
                    th { "Company" }
                    @if with_partner { th { "Partner" } }
                    th { "Status" } th { "Detail" } th { "Submitted" } th { "Protected until" } th { "Lead SLA" }
                    @if with_partner { th { "Protection" } }
                } }
                tbody {
                    @for r in rows {
                        tr data-referral-id=(text(&r["id"])) data-status=(text(&r["status"])) {
                            td { (text(&r["companyName"])) br; small { (text(&r["companyDomain"])) } }
                            @if with_partner {
                                td { a href=(format!("/console/partners/{}", text(&r["partner"]["id"]))) { (text(&r["partner"]["name"])) } }
                            }
                            td { span class=(format!("status {}", text(&r["status"]).to_lowercase())) { (words(&text(&r["status"]))) } }
                            td { (text(&r["statusDetail"])) }
                            td { (time(&text(&r["submittedAt"]))) }
                            td { (time(&text(&r["protectedUntil"]))) }
                            td {
                                @if !r["sla"].is_null() {
                                    (words(&text(&r["sla"]["state"]))) " · due " (time(&text(&r["sla"]["dueAt"])))
                                }
                            }
                            @if let Some(session) = manager {
                                td {
                                    @if r["status"] == "ACCEPTED" {
                                        form method="post" action=(format!("/console/referrals/{}/extend", text(&r["id"]))) class="inline" {
                                            (csrf(session))
                                            button type="submit" data-action="extend" { "Extend" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

const REFERRAL_FIELDS: &str = "id companyName companyDomain status statusDetail submittedAt \
                               protectedUntil sla { state dueAt } partner { id name }";

/// The referral statuses a list may be filtered by.
const REFERRAL_STATUSES: [&str; 7] = [
    "SUBMITTED",
    "CONFLICT",
    "ACCEPTED",
    "DUPLICATE",
    "REJECTED",
    "CONVERTED",
    "EXPIRED",
];

/// The registration form as submitted (kept when it is shown again with an error).
type Submitted = (HashMap<String, String>, Failure);

async fn referrals_page(
    state: &AppState,
    req: &Request,
    session: &Session,
    params: &HashMap<String, String>,
    submitted: Option<Submitted>,
) -> Outcome {
    let q = param(params, "q");
    let status = chosen_status(params, &REFERRAL_STATUSES);
    let partner = param(params, "partner");
    let notice_id = param(params, "submitted");
    let query = format!(
        "query($first: Int, $after: String, $filter: ReferralFilter, $notice: ID!, $withNotice: Boolean!) {{ {} \
           notice: referral(id: $notice) @include(if: $withNotice) {{ id companyName status statusDetail }} }}",
        list_selection("referrals", REFERRAL_FIELDS)
    );
    let mut variables = page_variables(
        params,
        json!({"search": q, "status": status, "partnerId": partner}),
    );
    variables["notice"] = json!(notice_id.unwrap_or("-"));
    variables["withNotice"] = json!(notice_id.is_some());
    let data = read(state, req, session, &query, variables).await?;
    let list = &data["referrals"];
    let notice = &data["notice"];
    let (values, failure) = match &submitted {
        Some((values, failure)) => (Some(values), Some(failure)),
        None => (None, None),
    };
    let value = |name: &str| values.and_then(|v| v.get(name)).map(String::as_str);
    let fields = [
        "companyName",
        "companyDomain",
        "contactName",
        "contactEmail",
        "notes",
    ];
    let body = html! {
        (views::notice(params))
        @if !notice.is_null() {
            @let status = text(&notice["status"]);
            div class=(format!("notice {}", status.to_lowercase())) role="status" data-notice=(status) {
                @if status == "DUPLICATE" {
                    p { strong { "Duplicate: " } (text(&notice["companyName"])) " was already registered. " (text(&notice["statusDetail"])) }
                } @else {
                    p { strong { "Registered: " } (text(&notice["companyName"])) " — " (text(&notice["statusDetail"])) }
                }
            }
        }
        @if !session.is_admin() {
            section aria-labelledby="register-heading" {
                h2 id="register-heading" { "Register a referral" }
                form id="submit-referral" method="post" action="/console/referrals" class="card" novalidate {
                    (csrf(session))
                    (form_error(failure, &fields))
                    @for (name, label, kind, required) in [
                        ("companyName", "Company name", "text", true),
                        ("companyDomain", "Company domain", "text", false),
                        ("contactName", "Contact name", "text", false),
                        ("contactEmail", "Contact email", "email", false),
                    ] {
                        div class="field" {
                            label for=(name) { (label) @if required { " (required)" } }
                            input id=(name) name=(name) type=(kind) value=[value(name)] required[required]
                                aria-invalid=[failure.and_then(|f| f.field.as_deref()).filter(|f| f.ends_with(name)).map(|_| "true")];
                            (field_error(failure, name))
                        }
                    }
                    div class="field" {
                        label for="notes" { "Notes for the program manager" }
                        textarea id="notes" name="notes" rows="3" { (value("notes").unwrap_or_default()) }
                        (field_error(failure, "notes"))
                    }
                    button type="submit" { "Register" }
                }
            }
        }
        section aria-labelledby="list-heading" {
            h2 id="list-heading" { "Referrals" }
            (views::one_partner("/console/referrals", partner))
            form method="get" action="/console/referrals" class="search" role="search" {
                (views::hidden(&[("partner", partner)]))
                label for="q" { "Search by company" }
                input id="q" name="q" type="search" value=[q];
                (views::status_select(&REFERRAL_STATUSES, status))
                button type="submit" { "Search" }
            }
            @if edges(list).is_empty() && q.is_none() && status.is_none() && session.is_admin() {
                (empty("No referral yet. Partners register them here or through submitReferral."))
            } @else if edges(list).is_empty() && q.is_none() && status.is_none() {
                (empty("No referral yet. Register your first one with the form above."))
            } @else {
                (referral_table(&edges(list), session.is_admin().then_some(session)))
            }
            (list_footer(
                "/console/referrals",
                &[("partner", partner), ("q", q), ("status", status)],
                list
            ))
        }
    };
    // A form shown again with its errors is a page like any other (200): a browser logs an
    // error status of the document itself as a failed load.
    Ok(page(
        StatusCode::OK,
        layout(Some(session), "Referrals", "Referrals", body),
    ))
}

/// `GET /console/referrals`: referrals (a partner's own), with the registration form.
#[handler]
pub async fn referrals(
    req: &Request,
    state: Data<&AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    with_session(req, &state, async |session| {
        referrals_page(&state, req, &session, &params, None).await
    })
    .await
}

/// `POST /console/referrals`: `submitReferral` with the form's fields.
#[handler]
pub async fn submit_referral(
    req: &Request,
    state: Data<&AppState>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    with_post(req, &state, &form, async |session| {
            let input = form_input(
                &form,
                &["companyName", "companyDomain", "contactName", "contactEmail", "notes"],
            );
            if !input.contains_key("companyName") {
                let failure = Failure {
                    code: "BAD_USER_INPUT".into(),
                    message: "The company name is required.".into(),
                    field: Some("input.companyName".into()),
                };
                return referrals_page(&state, req, &session, &HashMap::new(), Some((form.clone(), failure)))
                    .await;
            }
            match gql(
                &state,
                req,
                &session,
                "mutation($input: SubmitReferralInput!) { submitReferral(input: $input) { referral { id status } } }",
                json!({"input": input}),
            )
            .await
            {
                Ok(data) => Ok(redirect(&format!(
                    "/console/referrals?submitted={}",
                    text(&data["submitReferral"]["referral"]["id"])
                ))),
                Err(failure) if matches!(failure.code.as_str(), "BAD_USER_INPUT" | "CONFLICT" | "FORBIDDEN" | "RATE_LIMITED") => {
                    referrals_page(&state, req, &session, &HashMap::new(), Some((form.clone(), failure))).await
                }
                Err(failure) => Err(failed(req, &state, &session, failure)),
            }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Registration review.

async fn registrations_page(
    state: &AppState,
    req: &Request,
    session: &Session,
    params: &HashMap<String, String>,
    failure: Option<(String, Failure)>,
) -> Outcome {
    if !session.is_admin() {
        return Err(not_found_page(Some(session)));
    }
    let status = match param(params, "status") {
        Some("CONFLICT") => "CONFLICT",
        _ => "SUBMITTED",
    };
    let q = param(params, "q");
    let data = read(
        state,
        req,
        session,
        &list_query(
            "referrals",
            "ReferralFilter",
            &format!("{REFERRAL_FIELDS} notes contactEmail conflict {{ dealId customerId }}"),
        ),
        page_variables(params, json!({"status": status, "search": q})),
    )
    .await?;
    let list = &data["referrals"];
    let reviewed = param(params, "reviewed");
    let body = html! {
        nav class="tabs" aria-label="Queues" {
            a href="/console/registrations" aria-current=[(status == "SUBMITTED").then_some("page")] { "Submitted" }
            a href="/console/registrations?status=CONFLICT" aria-current=[(status == "CONFLICT").then_some("page")] { "Channel conflicts" }
        }
        @if let Some(decision) = reviewed {
            div class="notice" role="status" { p { "Done: the registration was " (if decision == "APPROVE" { "approved" } else { "rejected" }) "." } }
        }
        @if let Some((id, failure)) = &failure {
            div class="notice error" role="alert" data-failed=(id) { p { (failure.message) } }
        }
        (search("/console/registrations", q, "Search by company name or domain", &[("status", Some(status))]))
        @if edges(list).is_empty() && q.is_some() {
            (empty("No registration in this queue matches. Clear the search to see them all."))
        } @else if edges(list).is_empty() {
            (empty("Nothing waits for review. Registrations of programs with MANUAL approval, and those in channel conflict, appear here."))
        } @else {
            table {
                thead { tr { th { "Company" } th { "Partner" } th { "Submitted" } th { "Detail" } th { "Decision" } } }
                tbody {
                    @for r in edges(list) {
                        @let id = text(&r["id"]);
                        tr data-referral-id=(id) data-status=(text(&r["status"])) {
                            td { (text(&r["companyName"])) br; small { (text(&r["companyDomain"])) " " (text(&r["contactEmail"])) } }
                            td { a href=(format!("/console/partners/{}", text(&r["partner"]["id"]))) { (text(&r["partner"]["name"])) } }
                            td { (time(&text(&r["submittedAt"]))) }
                            td {
                                (text(&r["statusDetail"]))
                                @if !r["conflict"].is_null() {
                                    br; small { "Conflicts with deal " code { (text(&r["conflict"]["dealId"])) }  }
                                }
                                @if !r["notes"].is_null() { br; small { "Notes: " (text(&r["notes"])) } }
                            }
                            td class="actions" {
                                form method="post" action=(format!("/console/registrations/{id}/review")) class="inline" {
                                    (csrf(session))
                                    input type="hidden" name="decision" value="APPROVE";
                                    button type="submit" data-action="approve" { "Approve" }
                                }
                                form method="post" action=(format!("/console/registrations/{id}/review")) class="inline" {
                                    (csrf(session))
                                    input type="hidden" name="decision" value="REJECT";
                                    label for=(format!("reason-{id}")) { "Reason" }
                                    input id=(format!("reason-{id}")) name="reason" type="text" required maxlength="1000";
                                    button type="submit" data-action="reject" { "Reject" }
                                }
                            }
                        }
                    }
                }
            }
        }
        (list_footer("/console/registrations", &[("status", Some(status)), ("q", q)], list))
    };
    Ok(page(
        StatusCode::OK,
        layout(Some(session), "Registration review", "Registrations", body),
    ))
}

/// `GET /console/registrations`: the review queue (program managers).
#[handler]
pub async fn registrations(
    req: &Request,
    state: Data<&AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    with_session(req, &state, async |session| {
        registrations_page(&state, req, &session, &params, None).await
    })
    .await
}

/// `POST /console/registrations/{id}/review`: `reviewReferral`.
#[handler]
pub async fn review(
    req: &Request,
    state: Data<&AppState>,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    with_post(req, &state, &form, async |session| {
            let decision = form.get("decision").map(String::as_str).unwrap_or_default();
            let reason = form.get("reason").map(|r| r.trim()).filter(|r| !r.is_empty());
            let outcome = gql(
                &state,
                req,
                &session,
                "mutation($input: ReviewReferralInput!) { reviewReferral(input: $input) { referral { id status } } }",
                json!({"input": {"id": id, "decision": decision, "reason": reason}}),
            )
            .await;
            match outcome {
                Ok(_) => Ok(redirect(&format!("/console/registrations?reviewed={decision}"))),
                Err(failure) if failure.code == "UNAUTHENTICATED" || failure.code == "NOT_FOUND" => {
                    Err(failed(req, &state, &session, failure))
                }
                Err(failure) => registrations_page(&state, req, &session, &HashMap::new(), Some((id, failure))).await,
            }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Deals, commissions, payouts.

fn deal_table(rows: &[&Value], with_partner: bool) -> Markup {
    html! {
        @if rows.is_empty() {
            (empty("No deal yet: deals arrive from the CRM once a referred company has one."))
        } @else {
            table {
                thead { tr {
                    th { "Deal" }
                    @if with_partner { th { "Partner" } }
                    th { "Amount" } th { "Status" } th { "Closed" }
                } }
                tbody {
                    @for d in rows {
                        tr data-deal-id=(text(&d["id"])) {
                            td { (text(&d["name"])) }
                            @if with_partner {
                                td { (text(&d["partner"]["name"])) }
                            }
                            td class="num" { (money(&text(&d["amount"]), &text(&d["currency"]))) }
                            td { (words(&text(&d["status"]))) }
                            td { (time(&text(&d["closedAt"]))) }
                        }
                    }
                }
            }
        }
    }
}

fn ledger_table(rows: &[&Value], with_partner: bool) -> Markup {
    html! {
        @if rows.is_empty() {
            (empty("No ledger entry yet: commission is booked when a referred deal is won."))
        } @else {
            table {
                thead { tr {
                    th { "Booked" }
                    @if with_partner { th { "Partner" } }
                    th { "Kind" } th { "Amount" } th { "Status" }
                } }
                tbody {
                    @for e in rows {
                        tr data-entry-id=(text(&e["id"])) {
                            td { (time(&text(&e["createdAt"]))) }
                            @if with_partner { td { (text(&e["partner"]["name"])) } }
                            td { (words(&text(&e["kind"]))) }
                            td class="num" { (money(&text(&e["amount"]), &text(&e["currency"]))) }
                            td { (words(&text(&e["status"]))) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /console/deals`: attributed deals (a partner's own), searchable.
#[handler]
pub async fn deals(
    req: &Request,
    state: Data<&AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    with_session(req, &state, async |session| {
            let q = param(&params, "q");
            let partner = param(&params, "partner");
            let data = read(
                &state,
                req,
                &session,
                &list_query(
                    "deals",
                    "DealFilter",
                    "id name amount currency status closedAt partner { name }",
                ),
                page_variables(&params, json!({"search": q, "partnerId": partner})),
            )
            .await?;
            let list = &data["deals"];
            let body = html! {
                (views::one_partner("/console/deals", partner))
                (search("/console/deals", q, "Search deals by name, domain or CRM id", &[("partner", partner)]))
                (deal_table(&edges(list), session.is_admin()))
                (list_footer("/console/deals", &[("partner", partner), ("q", q)], list))
            };
            Ok(page(StatusCode::OK, layout(Some(&session), "Deals", "Deals", body)))
    })
    .await
}

/// A partner's own balances, on its commissions and payouts pages (`$partner`, `$own`).
const OWN_BALANCES: &str = "balances(partnerId: $partner) @include(if: $own) { currency pending approved inPayout paid held }";

/// The ledger entry statuses a list may be filtered by.
const ENTRY_STATUSES: [&str; 4] = ["PENDING", "APPROVED", "HELD", "PAID"];

/// The payout statuses a list may be filtered by.
const PAYOUT_STATUSES: [&str; 3] = ["PENDING", "PAID", "FAILED"];

/// `GET /console/commissions`: the ledger (a partner's own, with its balances).
#[handler]
pub async fn commissions(
    req: &Request,
    state: Data<&AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    with_session(req, &state, async |session| {
            let status = chosen_status(&params, &ENTRY_STATUSES);
            let scope = param(&params, "partner");
            let partner = session.partner_id().map(str::to_string);
            let mut variables = page_variables(&params, json!({"status": status, "partnerId": scope}));
            variables["partner"] = json!(partner.as_deref().unwrap_or("-"));
            variables["own"] = json!(partner.is_some());
            let data = read(
                &state,
                req,
                &session,
                &format!(
                    "query($first: Int, $after: String, $filter: LedgerEntryFilter, $partner: ID!, $own: Boolean!) {{ {} {OWN_BALANCES} }}",
                    list_selection("ledgerEntries", "id kind amount currency status createdAt partner { name }")
                ),
                variables,
            )
            .await?;
            let list = &data["ledgerEntries"];
            let body = html! {
                @if partner.is_some() { (views::balances(&data["balances"])) }
                section {
                    h2 { "Ledger" }
                    (views::one_partner("/console/commissions", scope))
                    (status_filter("/console/commissions", &ENTRY_STATUSES, status, &[("partner", scope)]))
                    (ledger_table(&edges(list), session.is_admin()))
                    (list_footer("/console/commissions", &[("partner", scope), ("status", status)], list))
                }
            };
            Ok(page(StatusCode::OK, layout(Some(&session), "Commissions", "Commissions", body)))
    })
    .await
}

/// `GET /console/payouts`: payouts (a partner's own).
#[handler]
pub async fn payouts(
    req: &Request,
    state: Data<&AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    with_session(req, &state, async |session| {
            let status = chosen_status(&params, &PAYOUT_STATUSES);
            let data = read(
                &state,
                req,
                &session,
                &format!(
                    "query($first: Int, $after: String, $filter: PayoutFilter, $partner: ID!, $own: Boolean!) {{ {} {OWN_BALANCES} \
                       viewer @include(if: $own) {{ partner {{ payoutMethod {{ kind masked accountHolder }} }} }} }}",
                    list_selection("payouts", "id shortId total currency status method createdAt paidAt partner { name }")
                ),
                {
                    let mut variables = page_variables(&params, json!({"status": status}));
                    variables["partner"] = json!(session.partner_id().unwrap_or("-"));
                    variables["own"] = json!(session.partner_id().is_some());
                    variables
                },
            )
            .await?;
            let list = &data["payouts"];
            let rows = edges(list);
            let body = html! {
                (views::notice(&params))
                @if session.partner_id().is_some() {
                    (views::balances(&data["balances"]))
                    (super::manage::payout_method_section(&session, &data["viewer"]["partner"]["payoutMethod"], None))
                    h2 { "Payouts" }
                }
                (status_filter("/console/payouts", &PAYOUT_STATUSES, status, &[]))
                @if rows.is_empty() && status.is_some() {
                    (empty("No payout in this status."))
                } @else if rows.is_empty() {
                    (empty("No payout yet. Approved commission is gathered into payouts by createPayout or a payout run."))
                } @else {
                    table {
                        thead { tr { th { "Payout" } @if session.is_admin() { th { "Partner" } } th { "Total" } th { "Method" } th { "Status" } th { "Created" } th { "Paid" } } }
                        tbody {
                            @for p in &rows {
                                tr data-payout-id=(text(&p["id"])) {
                                    td { code { (text(&p["shortId"])) } }
                                    @if session.is_admin() { td { (text(&p["partner"]["name"])) } }
                                    td class="num" { (money(&text(&p["total"]), &text(&p["currency"]))) }
                                    td { (words(&text(&p["method"]))) }
                                    td { (words(&text(&p["status"]))) }
                                    td { (time(&text(&p["createdAt"]))) }
                                    td { (time(&text(&p["paidAt"]))) }
                                }
                            }
                        }
                    }
                }
                (list_footer("/console/payouts", &[("status", status)], list))
            };
            Ok(page(StatusCode::OK, layout(Some(&session), "Payouts", "Payouts", body)))
    })
    .await
}

id_action!(
    /// `POST /console/referrals/{id}/extend`: `extendReferral` (program managers).
    extend,
    "/console/referrals",
    "mutation($id: ID!) { extendReferral(input: {id: $id}) { referral { protectedUntil } } }",
    |data| {
        format!(
            "Protection extended until {}.",
            time(&text(&data["extendReferral"]["referral"]["protectedUntil"]))
        )
    },
);
