//! The binary as a user runs it: `schema`, `keys create`, `serve` printing the first admin key
//! once, and a clean exit on SIGTERM.

use std::process::Command;

use crate::helpers::{free_port, gql_ok_at, spawn_serve, terminate};

fn tandem() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
}

/// Runs the binary with `args` on database `db`, asserting it succeeds; returns its output.
fn tandem_ok(args: &[&str], db: &str) -> String {
    let out = tandem()
        .args(args)
        .args(["--database-url", db])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn schema_command_prints_the_sdl() {
    let out = tandem().arg("schema").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        tandem::graphql::sdl()
    );
}

#[test]
fn serve_prints_the_admin_key_once_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("tandem-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}/tandem.db", dir.display());

    let out = tandem()
        .args([
            "keys",
            "create",
            "--role",
            "partner",
            "--name",
            "x",
            "--database-url",
            &db,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a partner key needs --partner-id");

    let port = free_port();
    let start = |expect_key: bool| {
        let (child, token) = spawn_serve(&db, port, &[]);
        assert_eq!(
            token.is_some(),
            expect_key,
            "admin key printed only on first start"
        );
        (child, token)
    };

    let (child, token) = start(true);
    let token = token.unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        tandem::install_crypto_provider();
        let resp: serde_json::Value = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/graphql"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"query": "{ viewer { role } }"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(resp["data"]["viewer"]["role"], "ADMIN");
    });
    let stop = |child: std::process::Child| {
        let status = terminate(child).expect("did not stop on SIGTERM");
        assert!(status.success(), "exit status {status}");
    };
    stop(child);
    // Second start on the same database: no new admin key is printed.
    let (child, token) = start(false);
    assert!(token.is_none());
    stop(child);

    let out = tandem()
        .args([
            "keys",
            "create",
            "--role",
            "admin",
            "--name",
            "ops",
            "--database-url",
            &db,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .starts_with("tdm_")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `serve --demo` on a fresh SQLite file with the default log filter: its database URL,
/// the process, and a thread collecting its log lines (joined after the process stops).
fn start_demo(
    name: &str,
) -> (
    String,
    u16,
    std::process::Child,
    std::thread::JoinHandle<Vec<String>>,
    std::path::PathBuf,
) {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("tandem-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}/tandem.db", dir.display());
    let port = free_port();
    let mut child = tandem()
        .args(["serve", "--demo", "--bind", &format!("127.0.0.1:{port}")])
        .args(["--database-url", &db])
        .env_remove("TANDEM_LOG")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let reader = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    (db, port, child, reader, dir)
}

/// Log lines that should never appear.
fn noisy(log: &[String]) -> Vec<&String> {
    log.iter()
        .filter(|l| {
            l.contains("WARN")
                || l.contains("ERROR")
                || l.contains("database is locked")
                || l.contains("SQLITE_BUSY")
                || l.contains("tokio_cron_scheduler")
                || l.contains("poem::")
        })
        .collect()
}

/// A fresh `serve --demo` with the default log filter logs only Tandem's own lines, and no
/// warning or error (it used to log `webhook fan-out failed … database is locked` on its first
/// second: writes beside the SQLite writer lock failed the fan-out's transaction).
#[test]
fn demo_starts_quietly_without_database_locked() {
    let (_db, _port, child, reader, dir) = start_demo("demo");
    // The demo's workers (fan-out, deliveries, inbox, feed) run against the seeded data.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let status = terminate(child).expect("did not stop on SIGTERM");
    assert!(status.success());
    let log = reader.join().unwrap();
    let noisy = noisy(&log);
    assert!(noisy.is_empty(), "{noisy:#?}");
    assert!(
        log.iter().any(|l| l.contains("Tandem listening")),
        "{log:#?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Every SQLite write path at once against a demo hub: mutations (programs, partners, keys,
/// referrals), signed webhooks (inbox and apply), reconciles (ledger), the fan-out and
/// deliveries of the demo's events, and keys created from the command line while the hub
/// serves. No request fails and the log holds no `database is locked`, warning or error.
#[test]
fn concurrent_writes_on_sqlite_never_hit_a_locked_database() {
    use std::time::Duration;

    use serde_json::{Value, json};
    use tandem_connectors::verify::{decode_standard_secret, sign_standard};

    let (db, port, child, reader, dir) = start_demo("busy");
    let base = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..200 {
            if client
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the hub did not start");
    });
    let cli_key = |db: &str, name: &str| {
        let out = tandem_ok(&["keys", "create", "--role", "admin", "--name", name], db);
        out.trim().lines().last().unwrap().to_string()
    };
    let token = cli_key(&db, "load");
    let gql = {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        move |query: &'static str, variables: Value| {
            let (client, base, token) = (client.clone(), base.clone(), token.clone());
            async move { gql_ok_at(&client, &base, &token, query, variables).await }
        }
    };
    rt.block_on(async {
        let created = gql(
            "mutation { createProgram(input: {name: \"Load\", kind: CHANNEL, currency: \"USD\",
              commission: {type: PERCENT, rate: \"10\"}}) { program { id } } }",
            json!({}),
        )
        .await;
        let program = created["createProgram"]["program"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let source = gql(
            "mutation($p: ID!) { createWebhookSource(input: {programId: $p, name: \"crm\",
              kind: STANDARD}) { secret url } }",
            json!({"p": program}),
        )
        .await;
        let key = decode_standard_secret(source["createWebhookSource"]["secret"].as_str().unwrap())
            .unwrap();
        let url = source["createWebhookSource"]["url"]
            .as_str()
            .unwrap()
            .to_string();
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (program, gql) = (program.clone(), gql.clone());
            tasks.push(tokio::spawn(async move {
                let partner = gql(
                    "mutation($p: ID!, $n: String!) { createPartner(input: {programId: $p,
                      name: $n, contactEmail: \"a@b.example\"}) { partner { id } } }",
                    json!({"p": program, "n": format!("Partner {i}")}),
                )
                .await;
                let id = partner["createPartner"]["partner"]["id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                gql(
                    "mutation($id: ID!) { createApiKey(input: {role: PARTNER, partnerId: $id,
                      name: \"k\"}) { token } }",
                    json!({"id": id}),
                )
                .await;
                gql(
                    "mutation($id: ID!, $c: String!) { submitReferral(input: {partnerId: $id,
                      companyName: $c, companyDomain: $c}) { referral { id } } }",
                    json!({"id": id, "c": format!("company{i}.example")}),
                )
                .await;
            }));
        }
        for n in 0..60 {
            let (client, url, key) = (client.clone(), url.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let id = format!("msg_{n}");
                let body = json!({"type": "deal.updated", "data": {"id": format!("deal-{n}"),
                    "name": "d", "amount": "100.00", "status": "won",
                    "companyDomain": format!("company{}.example", n % 20),
                    "updatedAt": chrono::Utc::now().to_rfc3339()}})
                .to_string();
                let ts = chrono::Utc::now().timestamp();
                let resp = client
                    .post(&url)
                    .header("webhook-id", &id)
                    .header("webhook-timestamp", ts.to_string())
                    .header(
                        "webhook-signature",
                        sign_standard(&key, &id, ts, body.as_bytes()),
                    )
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(resp.status().is_success(), "{}", resp.status());
            }));
        }
        for _ in 0..5 {
            let gql = gql.clone();
            tasks.push(tokio::spawn(async move {
                gql(
                    "mutation { runJob(input: {name: \"reconcile\"}) { jobRun { status } } }",
                    json!({}),
                )
                .await;
            }));
        }
        let db = db.clone();
        let keys = tokio::task::spawn_blocking(move || {
            for i in 0..3 {
                cli_key(&db, &format!("cli{i}"));
            }
        });
        for task in tasks {
            task.await.unwrap();
        }
        keys.await.unwrap();
        // Let the apply worker, the fan-out and the deliveries finish their share.
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let status = terminate(child).expect("did not stop on SIGTERM");
    assert!(status.success());
    let log = reader.join().unwrap();
    let noisy = noisy(&log);
    assert!(noisy.is_empty(), "{noisy:#?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The benchmark drivers of the binary run on a small data set (they write through the same
/// writer as the hub, so a write path that bypasses it fails here).
#[test]
fn bench_commands_seed_and_reconcile_a_small_data_set() {
    let dir = std::env::temp_dir().join(format!("tandem-bench-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = tandem_ok;
    let seed_db = format!("sqlite://{}/seed.db", dir.display());
    let seeded = run(
        &["bench-seed", "--partners", "5", "--referrals", "20"],
        &seed_db,
    );
    let seeded: serde_json::Value = serde_json::from_str(seeded.trim()).unwrap();
    assert!(
        seeded["token"].is_string() || seeded.is_object(),
        "{seeded}"
    );
    let db = format!("sqlite://{}/reconcile.db", dir.display());
    for phase in ["seed", "full", "touch", "incremental", "kpis"] {
        let line = run(
            &[
                "bench-reconcile",
                phase,
                "--deals",
                "200",
                "--partners",
                "10",
            ],
            &db,
        );
        assert!(line.trim_start().starts_with('{'), "{phase}: {line}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
