//! `TestApp`: boots the real hub in-process on `127.0.0.1:0` against a fresh database —
//! a temporary SQLite file, or a fresh PostgreSQL database (created from
//! `TANDEM_TEST_POSTGRES_URL`, dropped afterwards).

use serde_json::{Value, json};
use tandem::{
    app::App,
    config::{Config, Redacted},
    db::Db,
};
use tokio::sync::oneshot;

/// Runs each named scenario `async fn name(app: TestApp)` on SQLite and on PostgreSQL
/// (`config = tweak;` adjusts the configuration; `mod name, config = tweak;` puts the tests in
/// a module of that name, for several configurations in one file).
#[macro_export]
macro_rules! db_tests {
    (mod $module:ident, config = $tweak:ident; $($name:ident),* $(,)?) => {
        mod $module {
            use super::*;
            $crate::db_tests!(config = $tweak; $($name),*);
        }
    };
    (config = $tweak:ident; $($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::TestApp::sqlite_with(super::$tweak).await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    match $crate::helpers::TestApp::postgres_with(super::$tweak).await {
                        Some(app) => super::$name(app).await,
                        None => eprintln!(
                            "skipped {} on PostgreSQL: TANDEM_TEST_POSTGRES_URL is not set",
                            stringify!($name)
                        ),
                    }
                }
            )*
        }
    };
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::TestApp::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    match $crate::helpers::TestApp::postgres().await {
                        Some(app) => super::$name(app).await,
                        None => eprintln!(
                            "skipped {} on PostgreSQL: TANDEM_TEST_POSTGRES_URL is not set",
                            stringify!($name)
                        ),
                    }
                }
            )*
        }
    };
}

enum Cleanup {
    SqliteFile(std::path::PathBuf),
    // Held for its Drop, which drops the database.
    Postgres(#[allow(dead_code)] PgDatabase),
}

/// A program made through the domain (not the API): `commission` and defaults elsewhere.
pub fn program_input(
    name: &str,
    commission: tandem::domain::programs::CommissionPlanInput,
) -> tandem::domain::programs::CreateProgramInput {
    tandem::domain::programs::CreateProgramInput {
        name: name.into(),
        kind: tandem::domain::programs::ProgramKind::Channel,
        currency: "USD".into(),
        commission,
        attribution_window_days: None,
        hold_days: None,
        clawback_days: None,
        registration: None,
        lead_sla_minutes: None,
        applications: None,
        group_review_schedule: None,
        manual_review_above: None,
    }
}

/// A partner of `program_id` made through the domain; returns (id, referral code).
pub async fn domain_partner(db: &Db, program_id: &str, name: &str) -> (String, String) {
    let partner = tandem::domain::partners::create_partner(
        db,
        tandem::domain::partners::CreatePartnerInput {
            program_id: async_graphql::ID(program_id.to_string()),
            name: name.into(),
            domain: None,
            contact_email: format!("{}@partners.example", name.replace(' ', ".")),
        },
    )
    .await
    .unwrap();
    (partner.id, partner.referral_code)
}

/// A fresh PostgreSQL database, dropped when this is dropped.
pub struct PgDatabase {
    /// Its URL.
    pub url: String,
    admin_url: String,
    name: String,
}

/// Creates a fresh PostgreSQL database, or `None` without `TANDEM_TEST_POSTGRES_URL`.
pub async fn fresh_postgres_database() -> Option<PgDatabase> {
    let admin_url = std::env::var("TANDEM_TEST_POSTGRES_URL").ok()?;
    let name = format!("tandem_test_{}", uuid::Uuid::new_v4().simple());
    let admin = Db::connect(&admin_url, 1)
        .await
        .expect("TANDEM_TEST_POSTGRES_URL must be reachable");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    admin.close().await.ok();
    Some(PgDatabase {
        url: database_url_with_name(&admin_url, &name),
        admin_url,
        name,
    })
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(admin) = Db::connect(&admin_url, 1).await {
                    let _ = admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// A running hub with an admin token.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// HTTP client.
    pub client: reqwest::Client,
    /// An admin token.
    pub admin: String,
    /// The hub's database handle (same pool and statement counter as the server).
    pub db: Db,
    /// The database URL (for further instances on the same database).
    pub database_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    cleanup: Option<Cleanup>,
}

/// The secret key every test instance shares (instances on one database must).
pub const TEST_SECRET_KEY: &str = "dGFuZGVtLXRlc3Qtc2VjcmV0LWtleS0zMi1ieXRlcyE=";

fn config(database_url: &str) -> Config {
    Config {
        database_url: database_url.to_string(),
        secret_key: Some(Redacted(TEST_SECRET_KEY.to_string())),
        bind: "127.0.0.1:0".to_string(),
        // Tests run jobs with `runJob`; the lease tests start schedulers themselves.
        scheduler: false,
        // Test receivers listen on loopback.
        webhook_allow_private_targets: true,
        ..Config::default()
    }
}

/// Leaves the test configuration as it is.
pub fn default_config(_: &mut Config) {}

impl TestApp {
    /// A hub on a fresh SQLite file.
    pub async fn sqlite() -> TestApp {
        TestApp::sqlite_with(default_config).await
    }

    /// A hub on a fresh PostgreSQL database, or `None` without `TANDEM_TEST_POSTGRES_URL`.
    pub async fn postgres() -> Option<TestApp> {
        TestApp::postgres_with(default_config).await
    }

    /// Like [`TestApp::sqlite`] with the configuration adjusted by `tweak`.
    pub async fn sqlite_with(tweak: fn(&mut Config)) -> TestApp {
        let path = std::env::temp_dir().join(format!("tandem-test-{}.db", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}", path.display());
        TestApp::start(&url, Cleanup::SqliteFile(path), tweak).await
    }

    /// Like [`TestApp::postgres`] with the configuration adjusted by `tweak`.
    pub async fn postgres_with(tweak: fn(&mut Config)) -> Option<TestApp> {
        let database = fresh_postgres_database().await?;
        let url = database.url.clone();
        Some(TestApp::start(&url, Cleanup::Postgres(database), tweak).await)
    }

    async fn start(url: &str, cleanup: Cleanup, tweak: fn(&mut Config)) -> TestApp {
        tandem::install_crypto_provider();
        let db = Db::connect(url, 8).await.expect("connect test database");
        db.migrate().await.expect("migrate test database");
        let mut config = config(url);
        tweak(&mut config);
        let app = App::build_with_db(config, db.clone())
            .await
            .expect("build app");
        let admin = app
            .ensure_admin_key()
            .await
            .expect("admin key")
            .expect("fresh database has no admin key");
        let base = format!("http://{}", app.addr);
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        TestApp {
            base,
            client: reqwest::Client::new(),
            admin,
            db,
            database_url: url.to_string(),
            shutdown: Some(tx),
            cleanup: Some(cleanup),
        }
    }

    /// Starts another hub instance on the same database (as a second server in a deployment
    /// would be); it runs until the returned sender is dropped or fired.
    pub async fn spawn_instance(&self) -> (String, oneshot::Sender<()>) {
        self.spawn_instance_with(default_config).await
    }

    /// Like [`TestApp::spawn_instance`] with the configuration adjusted by `tweak`.
    pub async fn spawn_instance_with(
        &self,
        tweak: impl FnOnce(&mut Config),
    ) -> (String, oneshot::Sender<()>) {
        let db = Db::connect(&self.database_url, 8)
            .await
            .expect("connect second instance");
        let mut config = config(&self.database_url);
        tweak(&mut config);
        let app = App::build_with_db(config, db)
            .await
            .expect("build second instance");
        let base = format!("http://{}", app.addr);
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        (base, tx)
    }

    /// Posts a GraphQL request and returns the JSON response (any HTTP status).
    pub async fn gql(&self, token: &str, query: &str, variables: Value) -> Value {
        gql_at(&self.client, &self.base, token, query, variables).await
    }

    /// Like [`TestApp::gql`] as admin, asserting there are no errors; returns `data`.
    pub async fn admin_ok(&self, query: &str, variables: Value) -> Value {
        let resp = self.gql(&self.admin, query, variables).await;
        assert!(resp.get("errors").is_none(), "unexpected errors: {resp}");
        resp["data"].clone()
    }

    /// Like [`TestApp::gql`] with `token`, asserting there are no errors; returns `data`.
    pub async fn ok(&self, token: &str, query: &str, variables: Value) -> Value {
        let resp = self.gql(token, query, variables).await;
        assert!(resp.get("errors").is_none(), "unexpected errors: {resp}");
        resp["data"].clone()
    }

    /// Creates a program with a 20 % plan and returns its id.
    pub async fn create_program(&self, name: &str) -> String {
        let data = self
            .admin_ok(
                "mutation($input: CreateProgramInput!) { createProgram(input: $input) { program { id } } }",
                json!({"input": {"name": name, "kind": "REVENUE_SHARE", "currency": "usd",
                    "commission": {"type": "PERCENT", "rate": "20"}}}),
            )
            .await;
        data["createProgram"]["program"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Creates a partner and returns its id.
    pub async fn create_partner(&self, program_id: &str, name: &str) -> String {
        let data = self
            .admin_ok(
                "mutation($input: CreatePartnerInput!) { createPartner(input: $input) { partner { id } } }",
                json!({"input": {"programId": program_id, "name": name,
                    "contactEmail": format!("{}@partners.example", name.to_lowercase().replace(' ', "."))}}),
            )
            .await;
        data["createPartner"]["partner"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Creates a PARTNER key and returns its token.
    pub async fn partner_key(&self, partner_id: &str) -> String {
        let data = self
            .admin_ok(
                "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { token } }",
                json!({"input": {"name": "partner key", "role": "PARTNER", "partnerId": partner_id}}),
            )
            .await;
        data["createApiKey"]["token"].as_str().unwrap().to_string()
    }

    /// Submits a referral with a partner token; returns the payload's referral.
    pub async fn submit_referral(&self, token: &str, input: Value) -> Value {
        let data = self
            .ok(
                token,
                "mutation($input: SubmitReferralInput!) { submitReferral(input: $input) { referral { id status companyDomain contactEmail duplicateOfId } } }",
                json!({"input": input}),
            )
            .await;
        data["submitReferral"]["referral"].clone()
    }

    /// Submits referrals `C{i}` / `c{i}.{tld}` for `i` in `0..n` (each a new company, so all are
    /// accepted); returns their ids.
    pub async fn submit_referrals(&self, token: &str, n: usize, tld: &str) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let r = self
                .submit_referral(
                    token,
                    json!({"companyName": format!("C{i}"), "companyDomain": format!("c{i}.{tld}")}),
                )
                .await;
            assert_eq!(r["status"], "ACCEPTED", "{r}");
            ids.push(r["id"].as_str().unwrap().to_string());
        }
        ids
    }

    /// Waits (bounded) until every event written so far is readable. On PostgreSQL the
    /// `events` query returns only events of transactions older than every transaction of the
    /// database still in flight, so a read right after a commit can come back short while a
    /// background worker's transaction is open. No-op on SQLite.
    pub async fn events_settled(&self) {
        if !self.db.is_postgres() {
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let pending = count(
                &self.db,
                &format!(
                    "SELECT COUNT(*) AS n FROM events WHERE NOT ({})",
                    tandem::domain::events::COMMITTED_ON_POSTGRES
                ),
            )
            .await;
            if pending == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{pending} events still held back"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Counts rows of a table directly in the database.
    pub async fn count_rows(&self, table: &str) -> i64 {
        count(&self.db, &format!("SELECT COUNT(*) AS n FROM {table}")).await
    }
}

/// Posts a GraphQL request to the hub at `base` (without a key when `token` is empty) and
/// returns the JSON response (any HTTP status).
pub async fn gql_at(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    query: &str,
    variables: Value,
) -> Value {
    let mut req = client
        .post(format!("{base}/graphql"))
        .json(&json!({"query": query, "variables": variables}));
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    req.send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json response")
}

/// Like [`gql_at`], asserting there are no errors; returns `data`.
pub async fn gql_ok_at(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    query: &str,
    variables: Value,
) -> Value {
    let resp = gql_at(client, base, token, query, variables).await;
    assert!(resp.get("errors").is_none(), "{query}: {resp}");
    resp["data"].clone()
}

/// Runs a `SELECT COUNT(*) AS n …` statement directly in the database.
pub async fn count(db: &Db, sql: &str) -> i64 {
    let row = sea_orm::ConnectionTrait::query_one_raw(
        db.reads(),
        sea_orm::Statement::from_string(db.backend(), sql.to_string()),
    )
    .await
    .expect("count")
    .expect("a row");
    row.try_get::<i64>("", "n").expect("count column")
}

/// The nodes of a connection (`{edges {node}}`) in a GraphQL response.
pub fn nodes(connection: &Value) -> Vec<Value> {
    connection["edges"]
        .as_array()
        .expect("a connection with edges")
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

/// The first error's `extensions.code`.
pub fn error_code(resp: &Value) -> &str {
    resp["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {resp}"))
}

/// The first error's `extensions.field`.
pub fn error_field(resp: &Value) -> &str {
    resp["errors"][0]["extensions"]["field"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field in {resp}"))
}

fn database_url_with_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.cleanup.take() {
            Some(Cleanup::SqliteFile(path)) => {
                for suffix in ["", "-wal", "-shm", ".key"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Some(Cleanup::Postgres(database)) => drop(database),
            None => {}
        }
    }
}

/// A free local TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind port 0")
        .local_addr()
        .expect("local address")
        .port()
}

/// Starts the real binary (`tandem serve`) on `database_url` and `port` with extra environment,
/// waits (at most 60 s) until it listens, and returns it with the admin key it printed, if any.
pub fn spawn_serve(
    database_url: &str,
    port: u16,
    env: &[(&str, &str)],
) -> (std::process::Child, Option<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            database_url,
        ])
        .env("TANDEM_LOG", "info")
        .envs(env.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tandem serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut token = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for line in lines.by_ref() {
        let line = line.expect("stderr line");
        if let Some(t) = line.split_whitespace().find(|w| w.starts_with("tdm_")) {
            token.get_or_insert(t.to_string());
        }
        if line.contains("Tandem listening") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "server did not start");
    }
    std::thread::spawn(move || for _ in lines {});
    (child, token)
}

/// Sends SIGTERM and waits up to 20 s for the process to exit; `None` when it did not (it is
/// then killed).
pub fn terminate(mut child: std::process::Child) -> Option<std::process::ExitStatus> {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM failed");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
