//! The console (DESIGN §16): web pages for program managers (ADMIN keys) and partners (PARTNER
//! keys) at `/`, in the same binary.
//!
//! - **Sign-in** exchanges a key for a server-side session ([`crate::domain::sessions`]): the
//!   cookie `tandem_session` is HttpOnly, SameSite=Strict, Secure behind https, and expires.
//! - **One authorisation model**: every page runs GraphQL operations on the public schema,
//!   in-process, as the signed-in key ([`crate::graphql::RequestAuth::signed_in`]); a page can
//!   show or change nothing the key could not through `/graphql`. A partner opening another
//!   partner's page meets the API's `NOT_FOUND`, shown as the not-found page.
//! - **No script**: pages are HTML and forms; charts are inline SVG drawn here. Every response
//!   sends a Content-Security-Policy without scripts and with `frame-ancestors 'none'`; every
//!   state-changing form carries the session's CSRF token, and cross-origin posts are refused.

// A page handler's `Err` is the page's own answer (a redirect, the not-found page), made once
// per request: boxing it would buy nothing.
#![allow(clippy::result_large_err)]

mod charts;
mod format;
mod integrations;
mod manage;
mod pages;
mod views;

use async_graphql::Executor;
use poem::{
    Endpoint, EndpointExt, Request, Response, Route, get, handler,
    http::{StatusCode, header},
    post,
    web::{Data, Form},
};
use serde_json::{Value, json};
use std::collections::HashMap;

use crate::{
    domain::{auth::Authenticated, sessions},
    error::ApiError,
    graphql::RequestAuth,
    http::AppState,
};

/// The session cookie's name.
pub const COOKIE: &str = "tandem_session";

/// What every console response carries: no script may run, no page may frame it, forms post
/// only here.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// The console's stylesheet, embedded in the binary.
const STYLESHEET: &str = include_str!("../../../assets/console/console.css");

/// The hub's icon (also answered at `/favicon.ico`, where browsers look for one).
const FAVICON: &str = include_str!("../../../assets/console/favicon.svg");

/// A signed-in visitor.
pub struct Session {
    token: String,
    /// Who signed in.
    pub caller: Authenticated,
}

impl Session {
    /// Whether a program manager signed in.
    pub fn is_admin(&self) -> bool {
        self.caller.principal.partner_scope().is_none()
    }

    /// The partner a partner key is bound to.
    pub fn partner_id(&self) -> Option<&str> {
        self.caller.principal.partner_scope()
    }

    /// The CSRF token its forms carry.
    pub fn csrf(&self) -> String {
        sessions::csrf_token(&self.token)
    }
}

/// A GraphQL error as a page shows it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// `extensions.code`.
    pub code: String,
    /// The message.
    pub message: String,
    /// `extensions.field`, when the error names one.
    pub field: Option<String>,
}

/// What a page handler ends with: the page, or another answer (a redirect, the not-found page).
type Outcome = Result<Response, Response>;

/// The session token in the request's cookies.
fn session_cookie(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
}

/// Whether the console is served over https (directly, or behind a proxy that says so).
fn over_https(req: &Request, state: &AppState) -> bool {
    state.public_base.starts_with("https://")
        || req.uri().scheme_str() == Some("https")
        || req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn cookie(req: &Request, state: &AppState, value: &str, max_age: i64) -> String {
    let secure = if over_https(req, state) {
        "; Secure"
    } else {
        ""
    };
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

fn redirect(to: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, to)
        .finish()
}

/// Signed out: the cookie is cleared and the visitor goes to the sign-in page.
fn signed_out(req: &Request, state: &AppState) -> Response {
    let mut response = redirect("/");
    if let Ok(value) = cookie(req, state, "", 0).parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The visitor's session, or the answer that sends them to sign in.
async fn signed_in(req: &Request, state: &AppState) -> Result<Session, Response> {
    let Some(token) = session_cookie(req) else {
        return Err(redirect("/"));
    };
    match sessions::caller(&state.db, &token).await {
        Ok(caller) => Ok(Session { token, caller }),
        Err(ApiError::Unauthenticated) => Err(signed_out(req, state)),
        Err(err) => Err(error_page(None, &err.message())),
    }
}

/// A page for a signed-in visitor: `page` runs with the session; a visitor without one is sent
/// to sign in.
async fn with_session(
    req: &Request,
    state: &AppState,
    page: impl AsyncFnOnce(Session) -> Outcome,
) -> Response {
    match signed_in(req, state).await {
        Ok(session) => page(session).await.unwrap_or_else(|r| r),
        Err(response) => response,
    }
}

/// A page for program managers: `page` runs with an ADMIN key's session; any other signed-in
/// key gets the not-found page (the page does not exist for it).
async fn for_managers(
    req: &Request,
    state: &AppState,
    page: impl AsyncFnOnce(Session) -> Outcome,
) -> Response {
    with_session(req, state, async |session| {
        if !session.is_admin() {
            return Err(not_found_page(Some(&session)));
        }
        page(session).await
    })
    .await
}

/// A form posted by a signed-in visitor: its origin and CSRF token are checked before `page`
/// runs.
async fn with_post(
    req: &Request,
    state: &AppState,
    form: &HashMap<String, String>,
    page: impl AsyncFnOnce(Session) -> Outcome,
) -> Response {
    with_session(req, state, async |session| {
        check_post(req, &session, form)?;
        page(session).await
    })
    .await
}

/// Refuses a state-changing request whose CSRF token is not the session's, or that comes from
/// another origin.
fn check_post(
    req: &Request,
    session: &Session,
    form: &HashMap<String, String>,
) -> Result<(), Response> {
    if !same_origin(req) {
        return Err(forbidden(
            Some(session),
            "This form came from another site.",
        ));
    }
    let given = form.get("csrf").map(String::as_str).unwrap_or_default();
    if !sessions::csrf_matches(&session.token, given) {
        return Err(forbidden(
            Some(session),
            "This form has expired. Go back, reload the page and try again.",
        ));
    }
    Ok(())
}

/// A post's `Origin`, when the browser sends one, names this host.
fn same_origin(req: &Request) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .is_some_and(|(_, rest)| !host.is_empty() && rest == host)
}

/// Runs one GraphQL operation as the session's key.
pub async fn gql(
    state: &AppState,
    req: &Request,
    session: &Session,
    query: &str,
    variables: Value,
) -> Result<Value, Failure> {
    let request = async_graphql::Request::new(query)
        .variables(async_graphql::Variables::from_json(variables))
        .data(RequestAuth::signed_in(session.caller.clone()))
        .data(super::graphql::client_address(req));
    let response = state.schema.execute(request).await;
    if let Some(error) = response.errors.first() {
        let ext = |name: &str| {
            error
                .extensions
                .as_ref()
                .and_then(|e| e.get(name))
                .and_then(|v| match v {
                    async_graphql::Value::String(s) => Some(s.clone()),
                    _ => None,
                })
        };
        return Err(Failure {
            code: ext("code").unwrap_or_else(|| "BAD_USER_INPUT".into()),
            message: error.message.clone(),
            field: ext("field"),
        });
    }
    response.data.into_json().map_err(|e| Failure {
        code: "INTERNAL".into(),
        message: e.to_string(),
        field: None,
    })
}

/// Runs a read for a page: the failure becomes the page's answer.
async fn read(
    state: &AppState,
    req: &Request,
    session: &Session,
    query: &str,
    variables: Value,
) -> Result<Value, Response> {
    gql(state, req, session, query, variables)
        .await
        .map_err(|f| failed(req, state, session, f))
}

/// The nodes of a connection's edges.
fn edges(connection: &Value) -> Vec<&Value> {
    connection["edges"]
        .as_array()
        .map(|edges| edges.iter().map(|e| &e["node"]).collect())
        .unwrap_or_default()
}

/// A mutation's input from a posted form: the named fields that are not blank, trimmed.
fn form_input(form: &HashMap<String, String>, names: &[&str]) -> serde_json::Map<String, Value> {
    names
        .iter()
        .filter_map(|name| {
            let value = form
                .get(*name)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())?;
            Some((name.to_string(), json!(value)))
        })
        .collect()
}

/// The programs a manager chooses between (`id`, `name`), and the one chosen: `?program=`, else
/// the first.
async fn program_choice(
    state: &AppState,
    req: &Request,
    session: &Session,
    params: &HashMap<String, String>,
) -> Result<(Option<String>, Vec<(String, String)>), Response> {
    let data = read(
        state,
        req,
        session,
        "{ programs(first: 100) { edges { node { id name } } } }",
        json!({}),
    )
    .await?;
    let programs: Vec<(String, String)> = edges(&data["programs"])
        .into_iter()
        .map(|p| (views::text(&p["id"]), views::text(&p["name"])))
        .collect();
    let chosen = param(params, "program")
        .map(str::to_string)
        .or_else(|| programs.first().map(|p| p.0.clone()));
    Ok((chosen, programs))
}

/// After a form: back to `path` with what happened.
fn back(path: &str, outcome: Result<String, Failure>) -> Response {
    let (key, message) = match outcome {
        Ok(done) => ("done", done),
        Err(failure) => ("error", failure.message),
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    redirect(&format!("{path}{sep}{key}={}", views::urlencode(&message)))
}

/// The answer for an operation that failed while reading a page.
fn failed(req: &Request, state: &AppState, session: &Session, failure: Failure) -> Response {
    match failure.code.as_str() {
        "UNAUTHENTICATED" => signed_out(req, state),
        "NOT_FOUND" => not_found_page(Some(session)),
        "FORBIDDEN" => forbidden(Some(session), &failure.message),
        _ => error_page(Some(session), &failure.message),
    }
}

/// Where a form goes back to: its `back` field when that is a page of this site below `path`
/// (never an open redirect), else `path`.
fn back_within<'a>(form: &'a HashMap<String, String>, path: &'a str) -> &'a str {
    form.get("back")
        .map(String::as_str)
        .filter(|back| back.starts_with(path) && !back.contains("//") && !back.contains('\\'))
        .unwrap_or(path)
}

/// A form that runs one mutation with `variables`, then goes back to `path` (or to the form's
/// `back`, a page below `path`) saying what `said` makes of the answer, or the API's error.
async fn act_on(
    (req, state, form): (&Request, &AppState, &HashMap<String, String>),
    path: &str,
    mutation: &str,
    variables: Value,
    said: impl FnOnce(&Value) -> String,
) -> Response {
    let path = back_within(form, path);
    with_post(req, state, form, async |session| {
        let outcome = gql(state, req, &session, mutation, variables)
            .await
            .map(|data| said(&data));
        done_or_failed(req, state, &session, path, outcome)
    })
    .await
}

/// `POST …/{id}/…`: a handler that runs one mutation on the id in its path ([`act_on`]).
macro_rules! id_action {
    ($(#[$doc:meta])* $name:ident, $back:expr, $mutation:expr, $said:expr $(,)?) => {
        $(#[$doc])*
        #[poem::handler]
        pub async fn $name(
            req: &poem::Request,
            state: poem::web::Data<&crate::http::AppState>,
            poem::web::Path(id): poem::web::Path<String>,
            poem::web::Form(form): poem::web::Form<std::collections::HashMap<String, String>>,
        ) -> poem::Response {
            let variables = serde_json::json!({"id": id});
            super::act_on((req, &state, &form), $back, $mutation, variables, $said).await
        }
    };
}
pub(crate) use id_action;

/// A form's outcome: back to the page with a notice, or the session's end or not-found page.
fn done_or_failed(
    req: &Request,
    state: &AppState,
    session: &Session,
    path: &str,
    outcome: Result<String, Failure>,
) -> Outcome {
    match outcome {
        Err(f) if matches!(f.code.as_str(), "UNAUTHENTICATED" | "NOT_FOUND") => {
            Err(failed(req, state, session, f))
        }
        other => Ok(back(path, other)),
    }
}

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    Response::builder()
        .status(status)
        .content_type("text/html; charset=utf-8")
        .body(markup.into_string())
}

fn not_found_page(session: Option<&Session>) -> Response {
    html(StatusCode::NOT_FOUND, views::not_found(session))
}

fn forbidden(session: Option<&Session>, message: &str) -> Response {
    html(
        StatusCode::FORBIDDEN,
        views::problem(session, "Not allowed", message),
    )
}

fn error_page(session: Option<&Session>, message: &str) -> Response {
    html(
        StatusCode::INTERNAL_SERVER_ERROR,
        views::problem(session, "Something went wrong", message),
    )
}

// ---------------------------------------------------------------------------------------------
// Sign-in and out.

/// `GET /`: the sign-in page, or the signed-in visitor's overview.
#[handler]
async fn home(req: &Request, state: Data<&AppState>) -> Response {
    if session_cookie(req).is_some() {
        return match signed_in(req, &state).await {
            Ok(_) => redirect("/console/overview"),
            Err(response) => response,
        };
    }
    html(StatusCode::OK, views::login(None))
}

/// `POST /console/login`: a key for a session.
#[handler]
async fn login(
    req: &Request,
    state: Data<&AppState>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !same_origin(req) {
        return forbidden(None, "This form came from another site.");
    }
    let token = form.get("token").map(String::as_str).unwrap_or_default();
    match sessions::open(&state.db, token).await {
        Ok(opened) => {
            let max_age = (opened.expires_at - chrono::Utc::now()).num_seconds();
            let mut response = redirect("/console/overview");
            if let Ok(value) = cookie(req, &state, &opened.token, max_age).parse() {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(ApiError::Unauthenticated) => html(
            StatusCode::UNAUTHORIZED,
            views::login(Some(
                "This key is not valid: it is unknown, revoked, or its partner's relationship has ended.",
            )),
        ),
        Err(ApiError::Forbidden(message)) => {
            html(StatusCode::FORBIDDEN, views::login(Some(&message)))
        }
        Err(err) => error_page(None, &err.message()),
    }
}

/// `POST /console/logout`: ends the session.
#[handler]
async fn logout(
    req: &Request,
    state: Data<&AppState>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    with_post(req, &state, &form, async |session| {
        sessions::close(&state.db, &session.token)
            .await
            .map_err(|e| error_page(Some(&session), &e.message()))?;
        Ok(signed_out(req, &state))
    })
    .await
}

/// `GET /console/assets/console.css`.
#[handler]
fn stylesheet() -> Response {
    Response::builder()
        .content_type("text/css; charset=utf-8")
        .header(header::CACHE_CONTROL, "public, max-age=3600")
        .body(STYLESHEET)
}

/// `GET /console/assets/favicon.svg` and `GET /favicon.ico`.
#[handler]
pub fn favicon() -> Response {
    Response::builder()
        .content_type("image/svg+xml")
        .header(header::CACHE_CONTROL, "public, max-age=86400")
        .body(FAVICON)
}

/// Any other console path.
#[handler]
async fn fallback(req: &Request, state: Data<&AppState>) -> Response {
    match signed_in(req, &state).await {
        Ok(session) => not_found_page(Some(&session)),
        Err(_) => html(StatusCode::NOT_FOUND, views::not_found(None)),
    }
}

/// Adds the console's security headers to every answer.
async fn secure_headers(response: poem::Result<Response>) -> poem::Result<Response> {
    let mut response = response?;
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("x-frame-options", "DENY"),
    ] {
        headers.insert(name, poem::http::HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(
            header::CACHE_CONTROL,
            poem::http::HeaderValue::from_static("no-store"),
        );
    }
    Ok(response)
}

/// The console's routes: `/` and `/console/…`.
pub fn routes() -> (impl Endpoint, impl Endpoint) {
    let console = Route::new()
        .at("/login", post(login))
        .at("/logout", post(logout))
        .at("/assets/console.css", get(stylesheet))
        .at("/assets/favicon.svg", get(favicon))
        .at("/overview", get(pages::overview))
        .at("/partners", get(pages::partners))
        .at("/partners/:id", get(pages::partner_page))
        .at(
            "/referrals",
            get(pages::referrals).post(pages::submit_referral),
        )
        .at("/referrals/:id/extend", post(pages::extend))
        .at("/registrations", get(pages::registrations))
        .at("/registrations/:id/review", post(pages::review))
        .at("/deals", get(pages::deals))
        .at("/commissions", get(pages::commissions))
        .at("/payouts", get(pages::payouts))
        .at("/payout-method", post(manage::set_payout_method))
        .at(
            "/payout-runs",
            get(manage::payout_runs).post(manage::create_run),
        )
        .at("/payout-runs/:id/send", post(manage::send_run))
        .at("/payout-runs/:id/paid", post(manage::mark_run_paid))
        .at("/payout-runs/:id/export", post(manage::export_run))
        .at("/programs", get(manage::programs_page))
        .at("/integrations", get(integrations::integrations))
        .at("/integrations/receipts", get(integrations::receipts))
        .at("/integrations/deliveries", get(integrations::deliveries))
        .at("/integrations/deliveries/:id", get(integrations::delivery))
        .at(
            "/integrations/deliveries/:id/resend",
            post(integrations::resend),
        )
        .at("/integrations/crm/:id/sync", post(integrations::sync_now))
        .at(
            "/integrations/endpoints/:id/enable",
            post(integrations::enable_endpoint),
        )
        .at("/*", get(fallback))
        .after(secure_headers);
    (get(home).after(secure_headers), console)
}

/// A query parameter, trimmed; `None` when absent or blank.
fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// The selection of a list page's connection `field` (paged by `$first` and `$after`, filtered
/// by `$filter`): its total, its page info and each node's `fields`.
fn list_selection(field: &str, fields: &str) -> String {
    format!(
        "{field}(first: $first, after: $after, filter: $filter) {{ totalCount \
         pageInfo {{ hasNextPage hasPreviousPage endCursor }} edges {{ node {{ {fields} }} }} }}"
    )
}

/// A list page's operation: [`list_selection`] with `$filter` of type `filter`.
fn list_query(field: &str, filter: &str, fields: &str) -> String {
    format!(
        "query($first: Int, $after: String, $filter: {filter}) {{ {} }}",
        list_selection(field, fields)
    )
}

/// The variables of a list page: `first`, `after` (the cursor) and a filter.
fn page_variables(params: &HashMap<String, String>, filter: Value) -> Value {
    json!({
        "first": PAGE_SIZE,
        "after": param(params, "after"),
        "filter": filter,
    })
}

/// Rows a list page shows.
pub const PAGE_SIZE: i64 = 25;
