//! The binary as a user runs it: `schema`, `keys create`, `serve` printing the first admin key
//! once, and a clean exit on SIGTERM.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

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

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let start = |expect_key: bool| {
        let mut child = tandem()
            .args([
                "serve",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                &db,
            ])
            .env("TANDEM_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let mut token = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(t) = line.split_whitespace().find(|w| w.starts_with("tdm_")) {
                token.get_or_insert(t.to_string());
            }
            if line.contains("Tandem listening") || Instant::now() > deadline {
                break;
            }
        }
        assert_eq!(
            token.is_some(),
            expect_key,
            "admin key printed only on first start"
        );
        std::thread::spawn(move || for _ in lines {});
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
    let stop = |mut child: std::process::Child| {
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                break;
            }
            assert!(Instant::now() < deadline, "did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
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
