//! The binary as a user runs it: `schema`, `keys create`, `serve` printing the first admin key
//! once, and a clean exit on SIGTERM.

use std::process::Command;

use crate::helpers::{free_port, spawn_serve, terminate};

fn tandem() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
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

/// A fresh `serve --demo` with the default log filter logs only Tandem's own lines, and no
/// warning or error (it used to log `webhook fan-out failed … database is locked` on its first
/// second: writes beside the SQLite writer lock failed the fan-out's transaction).
#[test]
fn demo_starts_quietly_without_database_locked() {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("tandem-demo-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}/tandem.db", dir.display());
    let port = free_port();
    let mut child = tandem()
        .args([
            "serve",
            "--demo",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            &db,
        ])
        .env_remove("TANDEM_LOG")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let reader = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    // The demo's workers (fan-out, deliveries, inbox, feed) run against the seeded data.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let status = terminate(child).expect("did not stop on SIGTERM");
    assert!(status.success());
    let log = reader.join().unwrap();
    let noisy: Vec<&String> = log
        .iter()
        .filter(|l| {
            l.contains("WARN")
                || l.contains("ERROR")
                || l.contains("database is locked")
                || l.contains("tokio_cron_scheduler")
                || l.contains("poem::")
        })
        .collect();
    assert!(noisy.is_empty(), "{noisy:#?}");
    assert!(
        log.iter().any(|l| l.contains("Tandem listening")),
        "{log:#?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
