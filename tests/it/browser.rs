//! The console in a real browser (DESIGN §16): headless Chromium driven over WebDriver
//! (`chromedriver`, fantoccini) against the real binary started with `serve --demo`.
//!
//! Without Chromium and ChromeDriver (`/usr/bin/chromium`, `/usr/bin/chromedriver`, or
//! `TANDEM_CHROMIUM` / `TANDEM_CHROMEDRIVER`) the test prints a skip notice and passes, like the
//! PostgreSQL half; with `TANDEM_REQUIRE_BROWSER=1` (set by `.ci/run`) it fails instead.
//! `TANDEM_UPDATE_SCREENSHOTS=1` writes the overview and the partner dashboard to
//! `docs/screenshots/` for the README; they are always written to `target/screenshots/`.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator, wd::WebDriverCompatibleCommand};
use serde_json::{Value, json};

use crate::helpers::{free_port, gql_ok_at};

fn tool(env: &str, default: &str) -> Option<String> {
    let path = std::env::var(env).unwrap_or_else(|_| default.to_string());
    std::path::Path::new(&path).exists().then_some(path)
}

/// Kills its process when dropped (a failing assertion must not leave Chromium behind).
struct Process(Option<Child>);

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// The hub started with `serve --demo`: its base URL and the keys it printed.
struct Demo {
    client: reqwest::Client,
    base: String,
    admin: String,
    partner: String,
    console_line: String,
    _process: Process,
    _dir: PathBuf,
}

fn start_demo() -> Demo {
    let dir = std::env::temp_dir().join(format!("tandem-browser-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["serve", "--demo", "--bind", &format!("127.0.0.1:{port}")])
        .arg("--database-url")
        .arg(format!("sqlite://{}/demo.db", dir.display()))
        .env("TANDEM_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tandem serve --demo");
    let stderr = child.stderr.take().unwrap();
    // Killed however the test ends.
    let process = Process(Some(child));
    let mut lines = BufReader::new(stderr).lines();
    let mut keys = Vec::new();
    let mut console_line = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in lines.by_ref() {
        let line = line.unwrap();
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("tdm_") && !keys.iter().any(|k| k == word) {
                keys.push(word.to_string());
            }
        }
        if line.starts_with("Console:") {
            console_line = line.clone();
        }
        if line.contains("Tandem listening") {
            break;
        }
        assert!(Instant::now() < deadline, "the demo did not start");
    }
    std::thread::spawn(move || for _ in lines {});
    assert_eq!(keys.len(), 2, "an admin key and a partner key: {keys:?}");
    Demo {
        client: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
        admin: keys[0].clone(),
        partner: keys[1].clone(),
        console_line,
        _process: process,
        _dir: dir,
    }
}

impl Demo {
    /// A GraphQL operation that must succeed; its `data`.
    async fn gql(&self, key: &str, query: &str, variables: Value) -> Value {
        gql_ok_at(&self.client, &self.base, key, query, variables).await
    }
}

/// `POST /session/{id}/se/log`: the browser's console messages since the last call.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

struct Browser {
    client: Client,
    base: String,
    _driver: Process,
}

impl Browser {
    async fn start(base: &str) -> Option<Browser> {
        let required = std::env::var("TANDEM_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
        let (Some(chromium), Some(driver)) = (
            tool("TANDEM_CHROMIUM", "/usr/bin/chromium"),
            tool("TANDEM_CHROMEDRIVER", "/usr/bin/chromedriver"),
        ) else {
            assert!(
                !required,
                "TANDEM_REQUIRE_BROWSER=1 but Chromium or ChromeDriver is missing"
            );
            eprintln!(
                "skipped the browser tests: Chromium and ChromeDriver are not installed \
                 (apt-get install chromium chromium-driver)"
            );
            return None;
        };
        // fantoccini's connector is built with rustls, which needs a provider chosen (the hub's).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let port = free_port();
        let process = Process(Some(
            Command::new(driver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        ));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": chromium, "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                   "--disable-dev-shm-usage", "--window-size=1280,1800", "--hide-scrollbars"]}),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::rustls()
                .expect("tls")
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(err) if Instant::now() > deadline => panic!("chromedriver: {err}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Some(Browser {
            client,
            base: base.to_string(),
            _driver: process,
        })
    }

    async fn open(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
        self.no_console_errors(path, None).await;
        // GraphiQL's editors are its own (CodeMirror's hidden inputs).
        if !path.starts_with("/graphql") {
            self.usable_by_keyboard_and_reader(path).await;
        }
    }

    /// Every control has a label (a `label` tied to it or `aria-label`), every button and link
    /// a name, and no two elements share an id: what a screen reader and a keyboard need.
    async fn usable_by_keyboard_and_reader(&self, page: &str) {
        let found = self
            .client
            .execute(
                "const unlabelled = [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                   .filter(e => (!e.labels || e.labels.length === 0) && !e.getAttribute('aria-label'))
                   .map(e => e.outerHTML);
                 const nameless = [...document.querySelectorAll('button, a')]
                   .filter(e => !e.textContent.trim() && !e.getAttribute('aria-label'))
                   .map(e => e.outerHTML);
                 const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
                 const repeated = ids.filter((id, i) => ids.indexOf(id) !== i);
                 const unreachable = [...document.querySelectorAll('button, a, input, select, textarea')]
                   .filter(e => e.tabIndex < 0 && e.type !== 'hidden')
                   .map(e => e.outerHTML);
                 return {unlabelled, nameless, repeated, unreachable};",
                vec![],
            )
            .await
            .unwrap();
        for problem in ["unlabelled", "nameless", "repeated", "unreachable"] {
            assert_eq!(found[problem], json!([]), "{problem} on {page}");
        }
    }

    /// Opens the not-found page: the one error logged is the page's own 404.
    async fn open_not_found(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap();
        self.no_console_errors(path, Some(path)).await;
        assert_eq!(self.count("[data-not-found]").await, 1, "{path}");
    }

    /// Waits (at most 10 s) until the browser is at `expected`.
    async fn wait_for_path(&self, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let path = self.path().await;
            if path == expected {
                return;
            }
            assert!(Instant::now() < deadline, "at {path}, not {expected}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        }
    }

    /// Fails on any error the page logged to the browser's console (CSP violations, failed
    /// loads, script errors), but the 404 of a not-found page's own document.
    async fn no_console_errors(&self, page: &str, not_found: Option<&str>) {
        let log = self.client.issue_cmd(BrowserLog).await.unwrap();
        let own_404 = not_found.map(|path| {
            format!(
                "{}{path} - Failed to load resource: the server responded with a status of 404",
                self.base
            )
        });
        let severe: Vec<&Value> = log
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .filter(|entry| {
                !own_404.as_deref().is_some_and(|own| {
                    entry["message"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with(own)
                })
            })
            .collect();
        assert!(severe.is_empty(), "console errors on {page}: {severe:?}");
    }

    async fn css(&self, selector: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("{selector}: {e}"))
    }

    async fn count(&self, selector: &str) -> usize {
        self.client
            .find_all(Locator::Css(selector))
            .await
            .unwrap()
            .len()
    }

    async fn fill(&self, selector: &str, text: &str) {
        let field = self.css(selector).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Clicks a form's button and waits (at most 10 s) for the page the form leads to.
    async fn click(&self, selector: &str) {
        let element = self.css(selector).await;
        self.client
            .execute("window.tandemLeftPage = true;", vec![])
            .await
            .unwrap();
        element.click().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let loaded = self
                .client
                .execute(
                    "return window.tandemLeftPage === undefined && document.readyState === 'complete';",
                    vec![],
                )
                .await
                .unwrap();
            if loaded == Value::Bool(true) {
                break;
            }
            assert!(Instant::now() < deadline, "{selector} led to no page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.no_console_errors(selector, None).await;
    }

    async fn sign_in(&self, key: &str) {
        self.open("/").await;
        self.fill("form#login input[name=token]", key).await;
        self.click("form#login button[type=submit]").await;
    }

    async fn sign_out(&self) {
        self.click("form[action='/console/logout'] button").await;
        self.wait_for_path("/").await;
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut dirs = vec![root.join("target/screenshots")];
        if std::env::var("TANDEM_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
            dirs.push(root.join("docs/screenshots"));
        }
        for dir in dirs {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), &png).unwrap();
        }
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

const KPI_FIELDS: &str = "referralsSubmitted referralsAccepted referralsDuplicate dealsAttributed \
    dealsWon dealsLost conversionRate winRate pipelineValue wonRevenue commissionAccrued \
    commissionPaid medianHoursToFirstDeal slaMetRate medianHoursToEngagement recurringRevenue \
    activeCustomers commissionRecurring";

/// Every `data-kpi` element's text equals the API's answer.
async fn kpis_match(browser: &Browser, demo: &Demo, key: &str, program: &str) {
    let answer = demo
        .gql(
            key,
            &format!(
                "query($p: ID!) {{ kpis(programId: $p) {{ {KPI_FIELDS} months {{ month }} }} }}"
            ),
            json!({"p": program}),
        )
        .await;
    let cards = browser
        .client
        .find_all(Locator::Css("[data-kpi]"))
        .await
        .unwrap();
    assert_eq!(cards.len(), 18);
    for card in cards {
        let name = card.attr("data-kpi").await.unwrap().unwrap();
        let shown = card.text().await.unwrap();
        crate::console::assert_kpi_shown(&name, &shown, &answer["kpis"][&name]);
    }
    // The revenue chart: one group of bars per month with data.
    let months = answer["kpis"]["months"].as_array().unwrap().len();
    assert!(months >= 1);
    assert_eq!(
        browser
            .count("svg[data-chart='revenue-by-month'] g.month rect.bar.revenue")
            .await,
        months
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let demo = start_demo();
    assert!(
        demo.console_line.contains(&format!("{}/", demo.base)),
        "serve --demo prints the console URL: {}",
        demo.console_line
    );
    let Some(browser) = Browser::start(&demo.base).await else {
        return;
    };
    // The browser is closed however the run ends (a failed assertion included).
    let result =
        futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run(&browser, &demo)))
            .await;
    browser.client.clone().close().await.ok();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn run(browser: &Browser, demo: &Demo) {
    let viewer = demo
        .gql(
            &demo.partner,
            "{ viewer { partner { id name program { id } } } }",
            json!({}),
        )
        .await;
    let own = viewer["viewer"]["partner"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let program = viewer["viewer"]["partner"]["program"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The manager signs in with the demo's admin key: the overview's figures are the API's.
    browser.sign_in(&demo.admin).await;
    browser.wait_for_path("/console/overview").await;
    kpis_match(browser, demo, &demo.admin, &program).await;
    assert_eq!(browser.count("svg[data-chart='funnel']").await, 1);
    assert!(
        browser
            .count("svg[data-chart='leaderboard'] rect.bar")
            .await
            >= 1
    );
    browser.screenshot("overview.png").await;
    for page in [
        "/console/partners",
        "/console/referrals",
        "/console/registrations",
        "/console/deals",
        "/console/commissions",
        "/console/payouts",
        "/console/partners?q=north",
        "/console/programs",
        "/console/integrations",
        "/console/integrations/receipts",
        "/console/integrations/deliveries",
        "/console/payout-runs",
    ] {
        browser.open(page).await;
        assert_eq!(browser.count("[data-not-found]").await, 0, "{page}");
    }
    // A partner's page, the lists narrowed to it, and a delivery's attempts (when the demo
    // has delivered anything yet).
    let found = demo
        .gql(
            &demo.admin,
            "{ partners(first: 1) { edges { node { id } } } webhookDeliveries(first: 1) { edges { node { id } } } }",
            json!({}),
        )
        .await;
    let partner = found["partners"]["edges"][0]["node"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut pages = vec![
        format!("/console/partners/{partner}"),
        format!("/console/referrals?partner={partner}"),
        format!("/console/deals?partner={partner}"),
        format!("/console/commissions?partner={partner}"),
    ];
    if let Some(delivery) = found["webhookDeliveries"]["edges"][0]["node"]["id"].as_str() {
        pages.push(format!("/console/integrations/deliveries/{delivery}"));
    }
    for page in &pages {
        browser.open(page).await;
        assert_eq!(browser.count("[data-not-found]").await, 0, "{page}");
    }
    // GraphiQL loads offline from the binary.
    browser.open("/graphql").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while browser.count(".graphiql-container").await == 0 {
        assert!(Instant::now() < deadline, "GraphiQL stayed on Loading...");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A registration waits in a program with MANUAL approval; the manager approves it.
    let manual = demo.gql(&demo.admin,
        "mutation { createProgram(input: {name: \"Reviewed\", kind: CHANNEL, currency: \"EUR\", \
         commission: {type: PERCENT, rate: \"10\"}, registration: {approval: MANUAL}}) { program { id } } }",
        json!({}),
    )
    .await["createProgram"]["program"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reseller = demo.gql(&demo.admin,
        "mutation($p: ID!) { createPartner(input: {programId: $p, name: \"Reseller\", contactEmail: \"r@reseller.example\"}) { partner { id } } }",
        json!({"p": manual}),
    )
    .await["createPartner"]["partner"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reseller_key = demo.gql(&demo.admin,
        "mutation($p: ID!) { createApiKey(input: {name: \"reseller\", role: PARTNER, partnerId: $p}) { token } }",
        json!({"p": reseller}),
    )
    .await["createApiKey"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let submitted = demo.gql(&reseller_key,
        "mutation { submitReferral(input: {companyName: \"Soylent\", companyDomain: \"soylent.example\"}) { referral { id status } } }",
        json!({}),
    )
    .await;
    let waiting = submitted["submitReferral"]["referral"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        submitted["submitReferral"]["referral"]["status"],
        "SUBMITTED"
    );
    browser.open("/console/registrations").await;
    browser
        .click(&format!(
            "tr[data-referral-id='{waiting}'] button[data-action=approve]"
        ))
        .await;
    assert_eq!(
        browser.path().await,
        "/console/registrations?reviewed=APPROVE"
    );
    assert_eq!(
        browser
            .count(&format!("tr[data-referral-id='{waiting}']"))
            .await,
        0
    );
    let status = demo
        .gql(
            &demo.admin,
            "query($id: ID!) { referral(id: $id) { status } }",
            json!({"id": waiting}),
        )
        .await;
    assert_eq!(status["referral"]["status"], "ACCEPTED");
    browser.sign_out().await;

    // The partner signs in with the demo's partner key: its dashboard is its own figures.
    browser.sign_in(&demo.partner).await;
    browser.wait_for_path("/console/overview").await;
    kpis_match(browser, demo, &demo.partner, &program).await;
    browser.screenshot("partner-dashboard.png").await;
    // It registers a referral through the form and sees it listed.
    browser.open("/console/referrals").await;
    browser
        .fill("form#submit-referral input[name=companyName]", "Hooli")
        .await;
    browser
        .fill(
            "form#submit-referral input[name=companyDomain]",
            "hooli.example",
        )
        .await;
    browser
        .fill(
            "form#submit-referral input[name=contactEmail]",
            "gavin@hooli.example",
        )
        .await;
    browser
        .click("form#submit-referral button[type=submit]")
        .await;
    let notice = browser.css("[data-notice]").await;
    assert_eq!(
        notice.attr("data-notice").await.unwrap().unwrap(),
        "ACCEPTED"
    );
    let path = browser.path().await;
    let id = path.rsplit('=').next().unwrap().to_string();
    let row = browser.css(&format!("tr[data-referral-id='{id}']")).await;
    assert!(row.text().await.unwrap().contains("Hooli"));
    // The same company again: the duplicate is reported as the API reports it.
    browser
        .fill("form#submit-referral input[name=companyName]", "Hooli Inc")
        .await;
    browser
        .fill(
            "form#submit-referral input[name=companyDomain]",
            "www.hooli.example",
        )
        .await;
    browser
        .click("form#submit-referral button[type=submit]")
        .await;
    let notice = browser.css("[data-notice]").await;
    assert_eq!(
        notice.attr("data-notice").await.unwrap().unwrap(),
        "DUPLICATE"
    );
    assert!(notice.text().await.unwrap().contains("Duplicate"));
    // A field the API refuses is named next to it.
    browser
        .fill("form#submit-referral input[name=companyName]", "Initrode")
        .await;
    browser
        .fill("form#submit-referral input[name=contactEmail]", "nobody")
        .await;
    browser
        .click("form#submit-referral button[type=submit]")
        .await;
    assert!(browser.count("#contactEmail-error").await == 1);
    // Another partner's page is the not-found page.
    let others = demo
        .gql(
            &demo.admin,
            "query($p: ID!) { partners(filter: {programId: $p}) { edges { node { id } } } }",
            json!({"p": program}),
        )
        .await;
    let other = others["partners"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| text(&e["node"]["id"]))
        .find(|id| *id != own)
        .unwrap();
    browser
        .open_not_found(&format!("/console/partners/{other}"))
        .await;
    browser.open(&format!("/console/partners/{own}")).await;
    assert_eq!(browser.count("[data-not-found]").await, 0);
    for page in ["/console/deals", "/console/commissions", "/console/payouts"] {
        browser.open(page).await;
    }
    browser.sign_out().await;

    // A revoked key's session is signed out on its next page.
    let temporary = demo.gql(&demo.admin,
        "mutation($p: ID!) { createApiKey(input: {name: \"temporary\", role: PARTNER, partnerId: $p}) { token apiKey { id } } }",
        json!({"p": own}),
    )
    .await;
    browser
        .sign_in(temporary["createApiKey"]["token"].as_str().unwrap())
        .await;
    browser.wait_for_path("/console/overview").await;
    demo.gql(
        &demo.admin,
        "mutation($id: ID!) { revokeApiKey(input: {id: $id}) { apiKey { revokedAt } } }",
        json!({"id": temporary["createApiKey"]["apiKey"]["id"]}),
    )
    .await;
    browser.open("/console/referrals").await;
    browser.wait_for_path("/").await;
    assert_eq!(browser.count("form#login").await, 1);
}
