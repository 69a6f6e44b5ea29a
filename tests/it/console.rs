//! The console (DESIGN §16) over real HTTP, on SQLite and PostgreSQL: sign-in and sessions,
//! CSRF and the security headers, the overview's figures against the API's, registration
//! through the form and review by a manager, and a partner kept to its own pages. (The same
//! flows in a real browser are in `tests/browser.rs`.)

use reqwest::{StatusCode, redirect::Policy};
use serde_json::{Value, json};

use crate::{
    commissions::{Crm, partner, program_with, reconcile},
    db_tests,
    helpers::{TestApp, count},
};

/// A browser-like visitor: no automatic redirects, one session cookie.
struct Visitor {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Visitor {
    fn new(app: &TestApp) -> Visitor {
        Visitor {
            client: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap(),
            base: app.base.clone(),
            cookie: None,
        }
    }

    fn remember(&mut self, resp: &reqwest::Response) {
        if let Some(set) = resp.headers().get("set-cookie") {
            let set = set.to_str().unwrap();
            let value = set
                .split(';')
                .next()
                .unwrap()
                .trim_start_matches("tandem_session=");
            self.cookie = (!value.is_empty()).then(|| value.to_string());
        }
    }

    async fn get(&mut self, path: &str) -> (StatusCode, String, reqwest::header::HeaderMap) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("tandem_session={c}"));
        }
        let resp = req.send().await.unwrap();
        self.remember(&resp);
        let status = resp.status();
        let headers = resp.headers().clone();
        (status, resp.text().await.unwrap(), headers)
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", format!("tandem_session={c}"));
        }
        let resp = req.send().await.unwrap();
        self.remember(&resp);
        resp
    }

    async fn sign_in(app: &TestApp, key: &str) -> Visitor {
        let mut visitor = Visitor::new(app);
        let resp = visitor.post("/console/login", &[("token", key)]).await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert!(visitor.cookie.is_some());
        visitor
    }

    /// The CSRF token of a page's forms.
    async fn csrf(&mut self, path: &str) -> String {
        let (status, page, _) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        attribute_after(&page, "name=\"csrf\" value=\"")
            .into_iter()
            .next()
            .expect("a CSRF field")
    }
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Every value that follows `marker` up to the next `"`.
fn attribute_after(page: &str, marker: &str) -> Vec<String> {
    page.match_indices(marker)
        .map(|(i, _)| {
            let rest = &page[i + marker.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect()
}

/// A `data-kpi` element's text is the API's value: strings and integers as they are, null as
/// nothing, and floats (computed again for each request) equal to the last digits of a double.
pub fn assert_kpi_shown(name: &str, shown: &str, expected: &Value) {
    match expected {
        Value::String(s) => assert_eq!(shown, s, "data-kpi={name}"),
        Value::Null => assert_eq!(shown, "", "data-kpi={name}"),
        Value::Number(n) if n.is_f64() => {
            let (shown, expected) = (shown.parse::<f64>().unwrap(), n.as_f64().unwrap());
            assert!(
                (shown - expected).abs() <= expected.abs() * 1e-12,
                "data-kpi={name}: {shown} vs {expected}"
            );
        }
        other => assert_eq!(shown, other.to_string(), "data-kpi={name}"),
    }
}

/// `data-kpi` name → its element's text.
fn kpi_values(page: &str) -> Vec<(String, String)> {
    page.match_indices("data-kpi=\"")
        .map(|(i, m)| {
            let rest = &page[i + m.len()..];
            let name = rest[..rest.find('"').unwrap()].to_string();
            let text_start = rest.find('>').unwrap() + 1;
            let text = &rest[text_start..];
            (name, text[..text.find('<').unwrap()].to_string())
        })
        .collect()
}

async fn sign_in_sessions_and_headers(app: TestApp) {
    let mut anonymous = Visitor::new(&app);
    let (status, page, headers) = anonymous.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<form id=\"login\""), "{page}");
    assert!(page.contains("name=\"token\""));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(!page.contains("<script"), "no script on console pages");
    // Pages need a session.
    let (status, _, headers) = anonymous.get("/console/overview").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/");
    // A wrong key, a malformed one, an integration key: refused, with the reason.
    for (key, code) in [
        (
            "tdm_notarealkeynotarealkeynotarealkeynotareal",
            StatusCode::UNAUTHORIZED,
        ),
        ("", StatusCode::UNAUTHORIZED),
    ] {
        let resp = anonymous.post("/console/login", &[("token", key)]).await;
        assert_eq!(resp.status(), code);
        assert!(resp.headers().get("set-cookie").is_none());
        assert!(resp.text().await.unwrap().contains("This key is not valid"));
    }
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "10"}), json!({})).await;
    let integration = app
        .admin_ok(
            "mutation($p: ID!) { createApiKey(input: {name: \"i\", role: INTEGRATION, programIds: [$p]}) { token } }",
            json!({"p": program}),
        )
        .await["createApiKey"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = anonymous
        .post("/console/login", &[("token", &integration)])
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // A posted form from another site is refused before the key is looked at.
    let resp = anonymous
        .client
        .post(format!("{}/console/login", app.base))
        .header("origin", "http://evil.example")
        .form(&[("token", app.admin.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // A temporary admin key signs in: the cookie is HttpOnly, SameSite=Strict and expires.
    let created = app
        .admin_ok(
            "mutation { createApiKey(input: {name: \"console\", role: ADMIN}) { token apiKey { id } } }",
            json!({}),
        )
        .await;
    let key = created["createApiKey"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let key_id = created["createApiKey"]["apiKey"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut manager = Visitor::new(&app);
    let resp = manager.post("/console/login", &[("token", &key)]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&resp), "/console/overview");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=4319"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    let session = manager.cookie.clone().unwrap();
    assert!(session.starts_with("tds_") && !session.contains(&key));
    // The session is stored hashed, and a session token is no API key.
    assert_eq!(
        count(
            &app.db,
            &format!("SELECT COUNT(*) AS n FROM console_sessions WHERE id = '{session}'")
        )
        .await,
        0
    );
    assert_eq!(
        count(&app.db, "SELECT COUNT(*) AS n FROM console_sessions").await,
        1
    );
    let as_key = app.gql(&session, "{ viewer { role } }", json!({})).await;
    assert_eq!(as_key["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    let (status, page, headers) = manager.get("/console/overview").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        !page.contains(&key) && !page.contains(&session),
        "keys never appear in pages"
    );
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["x-frame-options"], "DENY");
    // The home page sends a signed-in visitor on.
    let (status, _, headers) = manager.get("/").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/console/overview");
    // Logging out needs the page's CSRF token.
    let resp = manager.post("/console/logout", &[("csrf", "forged")]).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let csrf = manager.csrf("/console/overview").await;
    // Another session's token does not fit this one.
    let mut other = Visitor::sign_in(&app, &app.admin).await;
    let resp = other.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = manager.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(
        resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert!(manager.cookie.is_none());
    manager.cookie = Some(session);
    let (status, _, headers) = manager.get("/console/overview").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "an ended session is gone");
    assert_eq!(headers["location"], "/");

    // A revoked key's sessions end at once.
    let mut revoked = Visitor::sign_in(&app, &key).await;
    assert_eq!(revoked.get("/console/partners").await.0, StatusCode::OK);
    app.admin_ok(
        "mutation($id: ID!) { revokeApiKey(input: {id: $id}) { apiKey { revokedAt } } }",
        json!({"id": key_id}),
    )
    .await;
    let (status, _, headers) = revoked.get("/console/partners").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/");
    assert!(
        headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let resp = revoked.post("/console/login", &[("token", &key)]).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Unknown console pages are the not-found page.
    let (status, page, _) = other.get("/console/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("data-not-found"));
    let (status, css, headers) = other.get("/console/assets/console.css").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert!(css.contains("svg.chart"));
}

async fn the_overview_shows_the_apis_figures(app: TestApp) {
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "10"}), json!({})).await;
    let alpha = partner(&app, &program, "Alpha <Agency>").await;
    let beta = partner(&app, &program, "Beta").await;
    let mut crm = Crm::new(&app, &program).await;
    crm.won(&app, "D-1", "1000.00", 1, &alpha.code).await;
    crm.won(&app, "D-2", "2500.00", 45, &alpha.code).await;
    crm.won(&app, "D-3", "400.00", 2, &beta.code).await;
    reconcile(&app).await;
    let mut manager = Visitor::sign_in(&app, &app.admin).await;
    let (status, page, _) = manager
        .get(&format!("/console/overview?program={program}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let answer = app
        .admin_ok(
            "query($p: ID!) { kpis(programId: $p) { referralsSubmitted referralsAccepted \
             referralsDuplicate dealsAttributed dealsWon dealsLost conversionRate winRate \
             pipelineValue wonRevenue commissionAccrued commissionPaid medianHoursToFirstDeal \
             slaMetRate medianHoursToEngagement recurringRevenue activeCustomers \
             commissionRecurring months { month wonRevenue commissionAccrued } } }",
            json!({"p": program}),
        )
        .await;
    let kpis = &answer["kpis"];
    let shown = kpi_values(&page);
    assert_eq!(shown.len(), 18, "{shown:?}");
    for (name, text) in &shown {
        assert_kpi_shown(name, text, &kpis[name]);
    }
    assert_eq!(kpis["wonRevenue"], "3900.00");
    // One group of bars per month with data, from `Kpis.months`.
    let months = kpis["months"].as_array().unwrap();
    assert!(!months.is_empty() && months.len() <= 2, "{months:?}");
    assert_eq!(page.matches("<g class=\"month\"").count(), months.len());
    for m in months {
        assert!(page.contains(&format!("data-month=\"{}\"", m["month"].as_str().unwrap())));
    }
    assert!(page.contains("data-chart=\"revenue-by-month\""));
    assert!(page.contains("data-chart=\"funnel\""));
    assert!(page.contains("data-chart=\"leaderboard\""));
    assert!(page.contains("Alpha &lt;Agency&gt;"), "names are escaped");
    assert!(!page.contains("Alpha <Agency>"));
    // The last 30 days leave D-2 out, as `kpis(from:)` does.
    let (_, recent, _) = manager
        .get(&format!("/console/overview?program={program}&period=30d"))
        .await;
    let won: Vec<_> = kpi_values(&recent)
        .into_iter()
        .filter(|(n, _)| n == "wonRevenue")
        .collect();
    assert_eq!(won[0].1, "1400.00");
    // An unknown period or program is not found, not an error.
    assert_eq!(
        manager.get("/console/overview?period=forever").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        manager
            .get("/console/overview?program=00000000-0000-0000-0000-000000000000")
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // A partner's dashboard shows its own figures only.
    let key = app.partner_key(&alpha.id).await;
    let mut alpha_visitor = Visitor::sign_in(&app, &key).await;
    let (status, page, _) = alpha_visitor.get("/console/overview").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let own = app
        .ok(
            &key,
            "query($p: ID!) { kpis(programId: $p) { wonRevenue dealsWon commissionAccrued } }",
            json!({"p": program}),
        )
        .await;
    let shown = kpi_values(&page);
    for name in ["wonRevenue", "dealsWon", "commissionAccrued"] {
        let text = &shown.iter().find(|(n, _)| n == name).unwrap().1;
        let expected = match &own["kpis"][name] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(text, &expected, "{name}");
    }
    assert_eq!(own["kpis"]["wonRevenue"], "3500.00");
    assert!(!page.contains(">Beta<"), "another partner's name: {page}");
    assert!(page.contains("Balances"));
}

async fn partners_register_and_managers_review(app: TestApp) {
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "10"}),
        json!({"registration": {"approval": "MANUAL"}}),
    )
    .await;
    let alpha = partner(&app, &program, "Alpha").await;
    let beta = partner(&app, &program, "Beta").await;
    let alpha_key = app.partner_key(&alpha.id).await;
    let beta_key = app.partner_key(&beta.id).await;
    let mut a = Visitor::sign_in(&app, &alpha_key).await;
    let (status, page, _) = a.get("/console/referrals").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<form id=\"submit-referral\""));
    for field in [
        "companyName",
        "companyDomain",
        "contactName",
        "contactEmail",
        "notes",
    ] {
        assert!(page.contains(&format!("name=\"{field}\"")), "{field}");
    }
    assert!(
        page.contains("Register your first one"),
        "empty state: {page}"
    );
    let csrf = a.csrf("/console/referrals").await;
    // Without the CSRF token nothing is written.
    let resp = a
        .post(
            "/console/referrals",
            &[("companyName", "Acme"), ("csrf", "x")],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // A bad field is shown next to it, with what was typed kept.
    let resp = a
        .post(
            "/console/referrals",
            &[
                ("csrf", &csrf),
                ("companyName", "Acme"),
                ("contactEmail", "not-an-email"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let page = resp.text().await.unwrap();
    assert!(page.contains("id=\"contactEmail-error\""), "{page}");
    assert!(page.contains("value=\"not-an-email\""));
    let resp = a.post("/console/referrals", &[("csrf", &csrf)]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("id=\"companyName-error\"")
    );
    assert_eq!(
        count(&app.db, "SELECT COUNT(*) AS n FROM referrals").await,
        0
    );
    // Registered: listed as SUBMITTED, under review.
    let resp = a
        .post(
            "/console/referrals",
            &[
                ("csrf", &csrf),
                ("companyName", "Acme Corp"),
                ("companyDomain", "acme.example"),
                ("contactEmail", "cto@acme.example"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let next = location(&resp);
    let id = next.rsplit('=').next().unwrap().to_string();
    let (_, page, _) = a.get(&next).await;
    assert!(
        page.contains(&format!(
            "data-referral-id=\"{id}\" data-status=\"SUBMITTED\""
        )),
        "{page}"
    );
    assert!(page.contains("Registered: "));
    // The partner has no review queue, and no other partner's page.
    assert_eq!(
        a.get("/console/registrations").await.0,
        StatusCode::NOT_FOUND
    );
    let (status, page, _) = a.get(&format!("/console/partners/{}", beta.id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("data-not-found"));
    assert_eq!(
        a.get(&format!("/console/partners/{}", alpha.id)).await.0,
        StatusCode::OK
    );

    // The manager sees it in the queue and approves it.
    let mut m = Visitor::sign_in(&app, &app.admin).await;
    let (_, page, _) = m.get("/console/registrations").await;
    assert!(
        page.contains(&format!("data-referral-id=\"{id}\"")),
        "{page}"
    );
    // The queue searches by company.
    let (_, page, _) = m.get("/console/registrations?q=ACME").await;
    assert!(
        page.contains(&format!("data-referral-id=\"{id}\"")),
        "{page}"
    );
    let (_, page, _) = m.get("/console/registrations?q=globex").await;
    assert!(!page.contains("data-referral-id="), "{page}");
    assert!(
        page.contains("No registration in this queue matches"),
        "{page}"
    );
    // Clearing a search keeps the queue.
    let (_, page, _) = m.get("/console/registrations?status=CONFLICT&q=acme").await;
    assert!(
        page.contains("href=\"/console/registrations?status=CONFLICT\">Clear</a>"),
        "{page}"
    );
    let csrf_m = m.csrf("/console/registrations").await;
    // A decision the API does not know: its error is shown, nothing changes.
    let resp = m
        .post(
            &format!("/console/registrations/{id}/review"),
            &[("csrf", &csrf_m), ("decision", "MAYBE")],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains(&format!("data-failed=\"{id}\""))
    );
    let resp = m
        .post(
            &format!("/console/registrations/{id}/review"),
            &[("csrf", &csrf_m), ("decision", "APPROVE")],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let status = app
        .admin_ok(
            "query($id: ID!) { referral(id: $id) { status } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(status["referral"]["status"], "ACCEPTED");
    let (_, page, _) = m.get("/console/registrations").await;
    assert!(!page.contains(&format!("data-referral-id=\"{id}\"")));
    assert!(page.contains("Nothing waits for review"));
    // Its protection is extended from the referral list (admins only).
    let (_, page, _) = m.get("/console/referrals").await;
    assert!(
        page.contains(&format!("action=\"/console/referrals/{id}/extend\"")),
        "{page}"
    );
    let before = app
        .admin_ok(
            "query($id: ID!) { referral(id: $id) { protectedUntil } }",
            json!({"id": id}),
        )
        .await;
    let resp = m
        .post(
            &format!("/console/referrals/{id}/extend"),
            &[("csrf", &csrf_m)],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, page, _) = m.get(&location(&resp)).await;
    assert!(page.contains("Protection extended until"), "{page}");
    let after = app
        .admin_ok(
            "query($id: ID!) { referral(id: $id) { protectedUntil extensions } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(after["referral"]["extensions"], 1);
    assert_ne!(
        after["referral"]["protectedUntil"],
        before["referral"]["protectedUntil"]
    );
    // A partner's post is refused by the API, and said so.
    let csrf_a = a.csrf("/console/referrals").await;
    let resp = a
        .post(
            &format!("/console/referrals/{id}/extend"),
            &[("csrf", &csrf_a)],
        )
        .await;
    let (_, page, _) = a.get(&location(&resp)).await;
    assert!(page.contains("class=\"notice error\""), "{page}");
    let still = app
        .admin_ok(
            "query($id: ID!) { referral(id: $id) { extensions } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(still["referral"]["extensions"], 1);
    // Another partner registering the same company is told it is a duplicate.
    let mut b = Visitor::sign_in(&app, &beta_key).await;
    let csrf_b = b.csrf("/console/referrals").await;
    let resp = b
        .post(
            "/console/referrals",
            &[
                ("csrf", &csrf_b),
                ("companyName", "ACME"),
                ("companyDomain", "www.acme.example"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, page, _) = b.get(&location(&resp)).await;
    assert!(page.contains("data-notice=\"DUPLICATE\""), "{page}");
    assert!(page.contains("Duplicate: "));
    // Beta's list holds only its own; the first registration stays Alpha's.
    assert!(!page.contains(&format!("data-referral-id=\"{id}\"")));
    // The manager's lists search: partners by name, referrals by company.
    let (_, page, _) = m.get("/console/partners?q=alp").await;
    assert!(page.contains(&format!("data-partner-id=\"{}\"", alpha.id)));
    assert!(!page.contains(&format!("data-partner-id=\"{}\"", beta.id)));
    let (_, page, _) = m.get("/console/referrals?q=acme&status=DUPLICATE").await;
    assert_eq!(page.matches("data-referral-id=").count(), 1, "{page}");
    assert!(page.contains("data-status=\"DUPLICATE\""));
    // A search longer than 200 characters is refused, naming the field, on every list.
    for list in ["programs", "partners", "referrals", "deals"] {
        let resp = app
            .gql(
                &app.admin,
                &format!("query($s: String) {{ {list}(filter: {{search: $s}}) {{ totalCount }} }}"),
                json!({"s": "x".repeat(201)}),
            )
            .await;
        assert_eq!(
            resp["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{resp}"
        );
        assert_eq!(resp["errors"][0]["extensions"]["field"], "filter.search");
    }
    // A search with LIKE's wildcards matches them literally.
    let (_, page, _) = m.get("/console/partners?q=%25").await;
    assert_eq!(page.matches("data-partner-id=").count(), 0, "{page}");
}

async fn lists_page_through_their_rows(app: TestApp) {
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "10"}), json!({})).await;
    let alpha = partner(&app, &program, "Alpha").await;
    let key = app.partner_key(&alpha.id).await;
    app.submit_referrals(&key, 30, "pages.example").await;
    let mut a = Visitor::sign_in(&app, &key).await;
    let (_, first, _) = a.get("/console/referrals").await;
    assert_eq!(first.matches("data-referral-id=").count(), 25);
    assert!(first.contains("25 shown of 30"), "{first}");
    let next = attribute_after(&first, "rel=\"next\" href=\"")
        .pop()
        .expect("a next page")
        .replace("&amp;", "&");
    let (_, second, _) = a.get(&next).await;
    assert_eq!(second.matches("data-referral-id=").count(), 5);
    assert!(!second.contains("rel=\"next\""));
    assert!(second.contains("First page"));
    let ids = |page: &str| attribute_after(page, "data-referral-id=\"");
    assert!(ids(&second).iter().all(|id| !ids(&first).contains(id)));
}

db_tests!(
    sign_in_sessions_and_headers,
    the_overview_shows_the_apis_figures,
    partners_register_and_managers_review,
    lists_page_through_their_rows,
    programs_integrations_payout_runs_and_payout_methods,
    receipts_and_deliveries_have_their_own_pages,
    payouts_filter_by_status,
    payout_runs_are_made_and_marked_paid_from_the_console,
    a_partners_page_leads_to_all_its_rows,
);

async fn a_partners_page_leads_to_all_its_rows(app: TestApp) {
    let program = program_with(&app, json!({"type": "PERCENT", "rate": "10"}), json!({})).await;
    let alpha = partner(&app, &program, "Alpha").await;
    let beta = partner(&app, &program, "Beta").await;
    let alpha_key = app.partner_key(&alpha.id).await;
    let beta_key = app.partner_key(&beta.id).await;
    app.submit_referrals(&alpha_key, 12, "alpha.example").await;
    app.submit_referrals(&beta_key, 3, "beta.example").await;
    let mut m = Visitor::sign_in(&app, &app.admin).await;
    let (status, page, _) = m.get(&format!("/console/partners/{}", alpha.id)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page.matches("data-referral-id=").count(), 10);
    let link = format!("/console/referrals?partner={}", alpha.id);
    assert!(
        page.contains(&format!("href=\"{link}\">All 12 referrals")),
        "{page}"
    );
    let (_, list, _) = m.get(&link).await;
    assert_eq!(list.matches("data-referral-id=").count(), 12, "{list}");
    assert!(list.contains("data-scope=\"partner\""));
    assert!(!list.contains("beta.example"), "only Alpha's rows");
    // Searching and filtering keep the partner.
    assert!(list.contains(&format!("name=\"partner\" value=\"{}\"", alpha.id)));
    let (_, found, _) = m.get(&format!("{link}&q=c1&status=ACCEPTED")).await;
    // c1 and c10, c11 of alpha.example; none of Beta's c1.beta.example.
    assert_eq!(found.matches("data-referral-id=").count(), 3, "{found}");
    assert!(!found.contains("beta.example"));
    // Every partner's: all 15.
    let (_, every, _) = m.get("/console/referrals").await;
    assert_eq!(every.matches("data-referral-id=").count(), 15);
    for path in ["/console/deals", "/console/commissions"] {
        let (status, page, _) = m.get(&format!("{path}?partner={}", alpha.id)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(page.contains("data-scope=\"partner\""), "{path}");
    }
    // A partner asking for another partner's rows sees none of them.
    let mut b = Visitor::sign_in(&app, &beta_key).await;
    let (_, page, _) = b.get(&link).await;
    assert!(!page.contains("alpha.example"), "{page}");
}

async fn payout_runs_are_made_and_marked_paid_from_the_console(app: TestApp) {
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "10"}),
        json!({"holdDays": 0}),
    )
    .await;
    let alpha = partner(&app, &program, "Alpha").await;
    let beta = partner(&app, &program, "Beta").await;
    let mut crm = Crm::new(&app, &program).await;
    crm.won(&app, "R1", "1000", 2, &alpha.code).await;
    crm.won(&app, "R2", "500", 3, &beta.code).await;
    reconcile(&app).await;
    app.admin_ok(
        "mutation($input: SetPayoutMethodInput!) { setPayoutMethod(input: $input) { payoutMethod { kind } } }",
        json!({"input": {"partnerId": alpha.id, "kind": "SEPA",
            "iban": "DE89 3704 0044 0532 0130 00", "accountHolder": "Alpha GmbH"}}),
    )
    .await;

    let mut m = Visitor::sign_in(&app, &app.admin).await;
    let here = format!("/console/payout-runs?program={program}");
    let (status, page, _) = m.get(&here).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("form id=\"create-payout-run\""), "{page}");
    // The program's balances: Alpha's 100.00 and Beta's 50.00 approved.
    assert!(
        page.contains(&balance_row(["0.00", "150.00", "0.00", "0.00", "0.00"])),
        "{page}"
    );
    let sums = app
        .admin_ok(
            "query($p: ID!, $a: ID!, $b: ID!) { programBalances(programId: $p) { currency approved } \
               a: balances(partnerId: $a) { approved } b: balances(partnerId: $b) { approved } }",
            json!({"p": program, "a": alpha.id, "b": beta.id}),
        )
        .await;
    assert_eq!(
        sums["programBalances"],
        json!([{"currency": "USD", "approved": "150.00"}])
    );
    assert_eq!(
        (&sums["a"][0]["approved"], &sums["b"][0]["approved"]),
        (&json!("100.00"), &json!("50.00"))
    );
    let csrf = m.csrf(&here).await;
    // A bad minimum: refused with the API's reason, nothing made.
    let resp = m
        .post(
            "/console/payout-runs",
            &[
                ("csrf", &csrf),
                ("programId", &program),
                ("currency", "USD"),
                ("minimumAmount", "-5"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(
        location(&resp).starts_with(&format!("{here}&error=")),
        "{}",
        location(&resp)
    );
    assert_eq!(
        count(&app.db, "SELECT COUNT(*) AS n FROM payout_runs").await,
        0
    );
    // Made: Alpha is paid, Beta (no payout method) waits.
    let resp = m
        .post(
            "/console/payout-runs",
            &[
                ("csrf", &csrf),
                ("programId", &program),
                ("currency", "USD"),
            ],
        )
        .await;
    let (_, page, _) = m.get(&location(&resp)).await;
    assert!(
        page.contains("Payout run made: 1 payout, $100.00 in all."),
        "{page}"
    );
    assert!(page.contains("1 partner waits for a later run"));
    let run = attribute_after(&page, "data-run-id=\"")
        .pop()
        .expect("the run");
    // Without Stripe configured, "Send" says why it cannot.
    let resp = m
        .post(
            &format!("/console/payout-runs/{run}/send"),
            &[("csrf", &csrf), ("back", &here)],
        )
        .await;
    assert!(
        location(&resp).starts_with(&format!("{here}&error=")),
        "{}",
        location(&resp)
    );
    // Marked paid with the bank's reference; a blank reference is refused first.
    let resp = m
        .post(
            &format!("/console/payout-runs/{run}/paid"),
            &[("csrf", &csrf), ("back", &here), ("reference", " ")],
        )
        .await;
    assert!(location(&resp).contains("&error="), "{}", location(&resp));
    let resp = m
        .post(
            &format!("/console/payout-runs/{run}/paid"),
            &[
                ("csrf", &csrf),
                ("back", &here),
                ("reference", "BANK-2026-12-07"),
            ],
        )
        .await;
    let (_, page, _) = m.get(&location(&resp)).await;
    assert!(page.contains("Marked paid: 1 payout."), "{page}");
    // Alpha's 100.00 paid, Beta's 50.00 still approved.
    assert!(
        page.contains(&balance_row(["0.00", "50.00", "0.00", "100.00", "0.00"])),
        "{page}"
    );
    let status = app
        .admin_ok(
            "query($id: ID!) { payoutRun(id: $id) { status } }",
            json!({"id": run}),
        )
        .await;
    assert_eq!(status["payoutRun"]["status"], "PAID");
    // A partner cannot.
    let key = app.partner_key(&alpha.id).await;
    let mut a = Visitor::sign_in(&app, &key).await;
    let csrf = a.csrf("/console/payouts").await;
    let resp = a
        .post(
            "/console/payout-runs",
            &[
                ("csrf", &csrf),
                ("programId", &program),
                ("currency", "USD"),
            ],
        )
        .await;
    assert!(location(&resp).contains("error="), "{}", location(&resp));
    assert_eq!(
        count(&app.db, "SELECT COUNT(*) AS n FROM payout_runs").await,
        1
    );
    // Nor read the program's balances; an unknown program is not found.
    let got = app
        .gql(
            &key,
            "query($p: ID!) { programBalances(programId: $p) { approved } }",
            json!({"p": program}),
        )
        .await;
    assert_eq!(crate::helpers::error_code(&got), "FORBIDDEN", "{got}");
    let got = app
        .gql(
            &app.admin,
            "query { programBalances(programId: \"nope\") { approved } }",
            json!({}),
        )
        .await;
    assert_eq!(crate::helpers::error_code(&got), "NOT_FOUND", "{got}");
}

/// A USD row of the balances table: pending, approved, in payout, paid, held.
fn balance_row(amounts: [&str; 5]) -> String {
    let cells: String = amounts
        .iter()
        .map(|a| format!("<td class=\"num\">${a}</td>"))
        .collect();
    format!("<tr><td>USD</td>{cells}</tr>")
}

async fn payouts_filter_by_status(app: TestApp) {
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "10"}),
        json!({"holdDays": 0}),
    )
    .await;
    let alice = partner(&app, &program, "Alice").await;
    let mut crm = Crm::new(&app, &program).await;
    crm.won(&app, "P1", "1000", 2, &alice.code).await;
    reconcile(&app).await;
    let payout = app
        .admin_ok(
            "mutation($input: CreatePayoutInput!) { createPayout(input: $input) { payout { id } } }",
            json!({"input": {"partnerId": alice.id, "currency": "USD"}}),
        )
        .await["createPayout"]["payout"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let key = app.partner_key(&alice.id).await;
    for token in [app.admin.clone(), key] {
        let mut v = Visitor::sign_in(&app, &token).await;
        let (_, page, _) = v.get("/console/payouts").await;
        assert!(
            page.contains(&format!("data-payout-id=\"{payout}\"")),
            "{page}"
        );
        let (_, page, _) = v.get("/console/payouts?status=PENDING").await;
        assert!(page.contains(&format!("data-payout-id=\"{payout}\"")));
        assert!(
            page.contains("<option value=\"PENDING\" selected"),
            "{page}"
        );
        let (_, page, _) = v.get("/console/payouts?status=PAID").await;
        assert!(!page.contains("data-payout-id="));
        assert!(page.contains("No payout in this status."), "{page}");
        // An unknown status is no filter.
        let (status, page, _) = v.get("/console/payouts?status=BOGUS").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains(&format!("data-payout-id=\"{payout}\"")));
    }
}

async fn receipts_and_deliveries_have_their_own_pages(app: TestApp) {
    use crate::{
        outbound::{endpoint, wait_deliveries},
        webhooks::{deal_event, drain, post_signed, standard_source},
    };
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let program = app.create_program("Integrations").await;
    let receiver = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let (endpoint_id, _) = endpoint(
        &app,
        &app.admin,
        json!({"url": receiver.uri(), "eventTypes": ["partner.created"], "programId": program}),
    )
    .await;
    let mut partners = Vec::new();
    for i in 0..3 {
        partners.push(app.create_partner(&program, &format!("Partner {i}")).await);
    }
    let delivered = wait_deliveries(&app, &endpoint_id, "three deliveries", |d| {
        d.len() == 3 && d.iter().all(|d| d["status"] == "SUCCEEDED")
    })
    .await;
    let source = standard_source(&app, &program).await;
    for i in 0..4 {
        let body = deal_event(&format!("D-{i}"), "OPEN", chrono::Utc::now(), json!({}));
        let resp = post_signed(
            &app,
            &source,
            &format!("msg_{i}"),
            chrono::Utc::now().timestamp(),
            &body,
        )
        .await;
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    drain(&app).await;

    let mut m = Visitor::sign_in(&app, &app.admin).await;
    let (status, page, _) = m.get("/console/integrations").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(&format!(
            "/console/integrations/receipts?source={}",
            source.id
        )),
        "{page}"
    );
    assert!(page.contains(&format!(
        "/console/integrations/deliveries?endpoint={endpoint_id}"
    )));
    assert!(
        page.contains("1 shown of 1"),
        "each list says how many it shows"
    );

    // Receipts: by source, by status; an empty filter says so.
    let (status, page, _) = m
        .get(&format!(
            "/console/integrations/receipts?source={}",
            source.id
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page.matches("data-receipt-id=").count(), 4, "{page}");
    assert!(page.contains("4 shown of 4"));
    let (_, page, _) = m
        .get(&format!(
            "/console/integrations/receipts?source={}&status=APPLIED",
            source.id
        ))
        .await;
    assert_eq!(page.matches("data-receipt-id=").count(), 4, "{page}");
    let (_, page, _) = m.get("/console/integrations/receipts?status=FAILED").await;
    assert_eq!(page.matches("data-receipt-id=").count(), 0);
    assert!(page.contains("No receipt here"), "{page}");

    // Deliveries of the endpoint, and "Resend": due again, delivered a second time.
    let here = format!("/console/integrations/deliveries?endpoint={endpoint_id}");
    let (status, page, _) = m.get(&here).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page.matches("data-delivery-id=").count(), 3, "{page}");
    let (_, page, _) = m.get(&format!("{here}&status=PENDING")).await;
    assert_eq!(page.matches("data-delivery-id=").count(), 0);
    let csrf = m.csrf(&here).await;
    let first = delivered[0]["id"].as_str().unwrap().to_string();
    let resp = m
        .post(
            &format!("/console/integrations/deliveries/{first}/resend"),
            &[("csrf", &csrf), ("back", &here)],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let back = location(&resp);
    assert!(back.starts_with(&format!("{here}&done=")), "{back}");
    let (_, page, _) = m.get(&back).await;
    assert!(page.contains("goes out now"), "{page}");
    wait_deliveries(&app, &endpoint_id, "the resent delivery", |d| {
        d.iter().any(|d| {
            d["id"] == first.as_str()
                && d["status"] == "SUCCEEDED"
                && d["attempt"].as_i64() >= Some(2)
        })
    })
    .await;
    // The delivery's own page: its attempts, the first and the resent one.
    let (status, page, _) = m
        .get(&format!("/console/integrations/deliveries/{first}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("data-attempt=\"1\"") && page.contains("data-attempt=\"2\""),
        "{page}"
    );
    assert!(page.contains("partner.created"));
    let (_, list, _) = m.get(&here).await;
    assert!(list.contains(&format!(
        "href=\"/console/integrations/deliveries/{first}\""
    )));
    assert_eq!(
        m.get("/console/integrations/deliveries/00000000-0000-0000-0000-000000000000")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let api = app
        .admin_ok(
            "query($id: ID!) { webhookDelivery(id: $id) { id status attempts(first: 10) { totalCount } } }",
            json!({"id": first}),
        )
        .await;
    assert_eq!(api["webhookDelivery"]["attempts"]["totalCount"], 2, "{api}");
    let unknown = app
        .gql(
            &app.admin,
            "query { webhookDelivery(id: \"00000000-0000-0000-0000-000000000000\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(
        crate::helpers::error_code(&unknown),
        "NOT_FOUND",
        "{unknown}"
    );
    // `back` leads only to the integrations pages.
    let resp = m
        .post(
            &format!("/console/integrations/deliveries/{first}/resend"),
            &[("csrf", &csrf), ("back", "https://elsewhere.example/")],
        )
        .await;
    assert!(
        location(&resp).starts_with("/console/integrations?"),
        "{}",
        location(&resp)
    );
    let resp = m
        .post(
            "/console/integrations/deliveries/00000000-0000-0000-0000-000000000000/resend",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // A partner has none of these pages.
    let key = app.partner_key(&partners[0]).await;
    let mut a = Visitor::sign_in(&app, &key).await;
    for path in [
        "/console/integrations/receipts".to_string(),
        "/console/integrations/deliveries".to_string(),
        format!("/console/integrations/deliveries/{first}"),
    ] {
        assert_eq!(a.get(&path).await.0, StatusCode::NOT_FOUND, "{path}");
    }
    // Nor through the API.
    let theirs = app
        .gql(
            &key,
            "query($id: ID!) { webhookDelivery(id: $id) { id } }",
            json!({"id": first}),
        )
        .await;
    assert!(
        theirs["data"].is_null() || theirs["data"]["webhookDelivery"].is_null(),
        "{theirs}"
    );
    assert!(!crate::helpers::error_code(&theirs).is_empty(), "{theirs}");
}

async fn programs_integrations_payout_runs_and_payout_methods(app: TestApp) {
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let program = program_with(
        &app,
        json!({"type": "PERCENT", "rate": "12.5", "capPerDeal": "5000"}),
        json!({"registration": {"approval": "MANUAL"}}),
    )
    .await;
    let alpha = partner(&app, &program, "Alpha").await;
    let mut m = Visitor::sign_in(&app, &app.admin).await;
    let (status, page, _) = m.get("/console/programs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(&format!("data-program-id=\"{program}\"")),
        "{page}"
    );
    assert!(
        page.contains("12.5 %") && page.contains("Cap per deal $5,000"),
        "{page}"
    );
    assert!(page.contains("Manual approval"));
    // Programs are searched by name.
    let other = app.create_program("Zephyr Alliance").await;
    let (_, page, _) = m.get("/console/programs?q=zEPHYR").await;
    assert!(
        page.contains(&format!("data-program-id=\"{other}\"")),
        "{page}"
    );
    assert!(
        !page.contains(&format!("data-program-id=\"{program}\"")),
        "{page}"
    );
    let (_, page, _) = m.get("/console/programs?q=nothing-like-it").await;
    assert!(page.contains("No program matches"), "{page}");

    // A CRM that refuses the token: "Sync now" runs the sync and says why it failed.
    let crm = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "status": "error", "message": "Authentication credentials not found.",
            "category": "INVALID_AUTHENTICATION"})))
        .mount(&crm)
        .await;
    let connection = app
        .admin_ok(
            "mutation($input: CreateCrmConnectionInput!) { createCrmConnection(input: $input) { connection { id } } }",
            json!({"input": {"name": "HubSpot", "kind": "HUBSPOT", "programId": program,
                "baseUrl": crm.uri(), "accessToken": "pat-secret-token"}}),
        )
        .await["createCrmConnection"]["connection"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, page, _) = m.get("/console/integrations").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&format!("data-connection-id=\"{connection}\"")));
    assert!(
        page.contains("No webhook source yet"),
        "empty states say what to do"
    );
    let csrf = m.csrf("/console/integrations").await;
    let resp = m
        .post(
            &format!("/console/integrations/crm/{connection}/sync"),
            &[("csrf", "x")],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = m
        .post(
            &format!("/console/integrations/crm/{connection}/sync"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, page, _) = m.get(&location(&resp)).await;
    assert!(page.contains("The sync failed"), "{page}");
    assert!(page.contains("Authentication credentials not found"));
    assert!(page.contains("Failing"));
    assert!(
        !page.contains("pat-secret-token"),
        "credentials never shown"
    );
    let resp = m
        .post(
            "/console/integrations/crm/00000000-0000-0000-0000-000000000000/sync",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Payout runs: the empty state, and an unknown run's export is not found.
    let (status, page, _) = m
        .get(&format!("/console/payout-runs?program={program}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("No payout run yet"), "{page}");
    let resp = m
        .post(
            "/console/payout-runs/00000000-0000-0000-0000-000000000000/export",
            &[("csrf", &csrf), ("format", "CSV")],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // A partner sets its payout method: shown masked; a bad IBAN is refused with the reason.
    let key = app.partner_key(&alpha.id).await;
    let mut a = Visitor::sign_in(&app, &key).await;
    assert_eq!(
        a.get("/console/integrations").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(a.get("/console/payout-runs").await.0, StatusCode::NOT_FOUND);
    let (_, page, _) = a.get("/console/payouts").await;
    assert!(page.contains("No payout method yet"));
    let csrf = a.csrf("/console/payouts").await;
    let resp = a
        .post(
            "/console/payout-method",
            &[
                ("csrf", &csrf),
                ("kind", "SEPA"),
                ("iban", "DE00 1234"),
                ("accountHolder", "Alpha"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, page, _) = a.get(&location(&resp)).await;
    assert!(page.contains("class=\"notice error\""), "{page}");
    let resp = a
        .post(
            "/console/payout-method",
            &[
                ("csrf", &csrf),
                ("kind", "SEPA"),
                ("iban", "DE89 3704 0044 0532 0130 00"),
                ("bic", "COBADEFFXXX"),
                ("accountHolder", "Alpha GmbH"),
            ],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, page, _) = a.get(&location(&resp)).await;
    assert!(page.contains("data-payout-method=\"SEPA\""), "{page}");
    assert!(page.contains("DE89 **** **** **** **30 00"));
    assert!(!page.contains("3704 0044"), "the IBAN is never shown whole");
}
