//! The console's page frame and shared pieces (maud templates).

use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::{Failure, Session};

/// A page: header with the navigation of the visitor's role, then `body`.
pub fn layout(session: Option<&Session>, title: &str, active: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Tandem" }
                link rel="icon" type="image/svg+xml" href="/console/assets/favicon.svg";
                link rel="stylesheet" href="/console/assets/console.css";
            }
            body {
                header class="top" {
                    a class="brand" href="/" { "Tandem" }
                    @if let Some(session) = session {
                        nav aria-label="Main" {
                            ul {
                                @for (href, label) in navigation(session) {
                                    li {
                                        a href=(href) aria-current=[(label == active).then_some("page")] { (label) }
                                    }
                                }
                            }
                        }
                        div class="who" {
                            span { (who(session)) }
                            form method="post" action="/console/logout" {
                                (csrf(session))
                                button type="submit" class="link" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn navigation(session: &Session) -> Vec<(&'static str, &'static str)> {
    if session.is_admin() {
        vec![
            ("/console/overview", "Overview"),
            ("/console/programs", "Programs"),
            ("/console/partners", "Partners"),
            ("/console/registrations", "Registrations"),
            ("/console/referrals", "Referrals"),
            ("/console/deals", "Deals"),
            ("/console/commissions", "Commissions"),
            ("/console/payouts", "Payouts"),
            ("/console/payout-runs", "Payout runs"),
            ("/console/integrations", "Integrations"),
            ("/graphql", "GraphiQL"),
        ]
    } else {
        vec![
            ("/console/overview", "Dashboard"),
            ("/console/referrals", "Referrals"),
            ("/console/deals", "Deals"),
            ("/console/commissions", "Commissions"),
            ("/console/payouts", "Payouts"),
        ]
    }
}

fn who(session: &Session) -> String {
    match &session.caller.partner {
        Some(partner) => format!("Partner · {}", partner.name),
        None => "Program manager".to_string(),
    }
}

/// The hidden CSRF field of a form.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf()); }
}

/// The sign-in page.
pub fn login(error: Option<&str>) -> Markup {
    layout(
        None,
        "Sign in",
        "",
        html! {
            p { "Sign in with an API key: a program manager's (ADMIN) or a partner's (PARTNER) key. "
                "The key is exchanged for a session; it is not kept in your browser." }
            form id="login" method="post" action="/console/login" class="card narrow" {
                label for="token" { "API key" }
                input id="token" name="token" type="password" autocomplete="off" required
                    placeholder="tdm_…" aria-describedby=[error.map(|_| "login-error")];
                @if let Some(error) = error {
                    p id="login-error" class="error" role="alert" { (error) }
                }
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// The not-found page.
pub fn not_found(session: Option<&Session>) -> Markup {
    layout(
        session,
        "Not found",
        "",
        html! {
            p data-not-found { "There is no such page, or it is not yours to see." }
            p { a href="/" { "Back to the start" } }
        },
    )
}

/// A page that only says what went wrong.
pub fn problem(session: Option<&Session>, title: &str, message: &str) -> Markup {
    layout(
        session,
        title,
        "",
        html! {
            p class="error" role="alert" { (message) }
            p { a href="/" { "Back to the start" } }
        },
    )
}

/// The form field a failure names: the last part of `extensions.field` (`input.companyName` is
/// `companyName`).
fn named_field(failure: &Failure) -> Option<&str> {
    failure
        .field
        .as_deref()
        .map(|f| f.rsplit('.').next().unwrap_or(f))
}

/// A form's error for one field (`input.companyName` names `companyName`), or the form's own
/// error when the failure names no field of the form.
pub fn field_error(failure: Option<&Failure>, field: &str) -> Markup {
    let Some(failure) = failure else {
        return html! {};
    };
    html! {
        @if named_field(failure) == Some(field) {
            p class="error" id=(format!("{field}-error")) role="alert" { (failure.message) }
        }
    }
}

/// The form-wide error when the failure names none of `fields`.
pub fn form_error(failure: Option<&Failure>, fields: &[&str]) -> Markup {
    let Some(failure) = failure else {
        return html! {};
    };
    html! {
        @if !named_field(failure).is_some_and(|n| fields.contains(&n)) {
            p class="error" role="alert" { (failure.message) }
        }
    }
}

/// A search box over a list.
pub fn search(
    action: &str,
    value: Option<&str>,
    label: &str,
    keep: &[(&str, Option<&str>)],
) -> Markup {
    html! {
        form method="get" action=(action) class="search" role="search" {
            (hidden(keep))
            label for="q" { (label) }
            input id="q" name="q" type="search" value=[value];
            button type="submit" { "Search" }
            @if value.is_some() {
                // Back to the list as it was before the search (its other filters kept).
                a href=(with_params(action, keep)) { "Clear" }
            }
        }
    }
}

/// The parameters a form keeps, as hidden inputs.
pub fn hidden(keep: &[(&str, Option<&str>)]) -> Markup {
    html! {
        @for (name, value) in keep {
            @if let Some(value) = value { input type="hidden" name=(name) value=(value); }
        }
    }
}

/// Above a list narrowed to one partner (`?partner=`): says so, and links to every partner's.
pub fn one_partner(path: &str, partner: Option<&str>) -> Markup {
    html! {
        @if partner.is_some() {
            p class="scope" data-scope="partner" { "One partner's rows only. " a href=(path) { "Every partner's" } }
        }
    }
}

/// A partner's (or a program's) balances per currency, a row each.
pub fn balances(balances: &Value) -> Markup {
    let rows = balances.as_array().cloned().unwrap_or_default();
    html! {
        section aria-labelledby="balances-heading" {
            h2 id="balances-heading" { "Balances" }
            @if rows.is_empty() {
                (empty("No commission yet: it appears here once a referred deal is won."))
            } @else {
                table {
                    thead { tr { th { "Currency" } th { "Pending" } th { "Approved" } th { "In payout" } th { "Paid" } th { "Held" } } }
                    tbody {
                        @for b in &rows {
                            @let c = text(&b["currency"]);
                            tr {
                                td { (c) }
                                @for f in ["pending", "approved", "inPayout", "paid", "held"] {
                                    td class="num" { (super::format::money(&text(&b[f]), &c)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The foot of a list: how many rows of how many, and the links to the first and next pages of
/// the connection (`totalCount`, `pageInfo`), keeping the page's other parameters.
pub fn list_footer(path: &str, keep: &[(&str, Option<&str>)], connection: &Value) -> Markup {
    list_footer_at(path, "after", keep, connection)
}

/// [`list_footer`] for a page with several lists: this one's cursor is the parameter `cursor`.
pub fn list_footer_at(
    path: &str,
    cursor: &str,
    keep: &[(&str, Option<&str>)],
    connection: &Value,
) -> Markup {
    let page_info = &connection["pageInfo"];
    let shown = connection["edges"].as_array().map_or(0, Vec::len);
    let total = connection["totalCount"].as_i64().unwrap_or(0);
    let next = page_info["hasNextPage"]
        .as_bool()
        .unwrap_or(false)
        .then(|| page_info["endCursor"].as_str())
        .flatten()
        .map(|after| with_params(path, &[keep, &[(cursor, Some(after))]].concat()));
    html! {
        nav class="pager" aria-label="Pages" {
            span { (shown) " shown of " (total) }
            @if page_info["hasPreviousPage"].as_bool().unwrap_or(false) {
                a href=(with_params(path, keep)) { "First page" }
            }
            @if let Some(next) = next {
                a rel="next" href=(next) { "Next page" }
            }
        }
    }
}

/// A list's status filter: `statuses` (API names) and "Any", keeping the other parameters.
pub fn status_filter(
    action: &str,
    statuses: &[&str],
    chosen: Option<&str>,
    keep: &[(&str, Option<&str>)],
) -> Markup {
    html! {
        form method="get" action=(action) class="search" {
            (hidden(keep))
            (status_select(statuses, chosen))
            button type="submit" { "Show" }
        }
    }
}

/// A labelled status chooser: `statuses` (API names) and "Any".
pub fn status_select(statuses: &[&str], chosen: Option<&str>) -> Markup {
    html! {
        label for="status" { "Status" }
        select id="status" name="status" {
            option value="" selected[chosen.is_none()] { "Any" }
            @for s in statuses {
                option value=(s) selected[Some(*s) == chosen] { (super::format::words(s)) }
            }
        }
    }
}

/// The `status` parameter when it is one of `statuses`.
pub fn chosen_status<'a>(
    params: &'a std::collections::HashMap<String, String>,
    statuses: &[&str],
) -> Option<&'a str> {
    super::param(params, "status").filter(|s| statuses.contains(s))
}

/// `path` with the parameters that have a value, as a query string.
pub fn with_params(path: &str, params: &[(&str, Option<&str>)]) -> String {
    let query: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", urlencode(v))))
        .collect();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// Percent-encodes a query parameter's value.
pub fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// What the last form did, from the query string (`?done=…` or `?error=…`), shown once.
pub fn notice(params: &std::collections::HashMap<String, String>) -> Markup {
    html! {
        @if let Some(done) = super::param(params, "done") {
            div class="notice" role="status" data-done=(done) { p { (done) } }
        }
        @if let Some(error) = super::param(params, "error") {
            div class="notice error" role="alert" { p { (error) } }
        }
    }
}

/// The program chooser of a filter form.
pub fn program_select(programs: &[(String, String)], chosen: &str) -> Markup {
    html! {
        label for="program" { "Program" }
        select id="program" name="program" {
            @for (id, name) in programs {
                option value=(id) selected[id == chosen] { (name) }
            }
        }
    }
}

/// An empty list's message: what to do next.
pub fn empty(message: &str) -> Markup {
    html! { p class="empty" { (message) } }
}

/// Text of a JSON value (`""` for null).
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
