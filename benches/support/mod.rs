//! What the benchmarks share: a fresh database per run, GraphQL calls to the hub under test,
//! and the process's peak RSS.

#![allow(dead_code)] // each benchmark uses its own part

use serde_json::{Value, json};
use tandem::{
    config::{Config, Redacted},
    db::Db,
};

/// The secret key every benchmark hub uses.
pub const SECRET_KEY: &str = "dGFuZGVtLXRlc3Qtc2VjcmV0LWtleS0zMi1ieXRlcyE=";

/// A hub's configuration for a benchmark on `database_url`: port 0, no scheduler, quiet logs.
pub fn config(database_url: &str) -> Config {
    Config {
        database_url: database_url.to_string(),
        secret_key: Some(Redacted(SECRET_KEY.to_string())),
        bind: "127.0.0.1:0".to_string(),
        scheduler: false,
        log: "warn".to_string(),
        ..Config::default()
    }
}

/// A fresh database: a temporary SQLite file, or a new PostgreSQL database on the server of
/// `TANDEM_BENCH_POSTGRES_URL` (default: the local one), removed by [`BenchDb::remove`].
pub struct BenchDb {
    /// Its URL.
    pub url: String,
    admin: Option<(String, String)>,
}

impl BenchDb {
    /// A fresh database on `backend` (`sqlite` or `postgres`).
    pub async fn fresh(backend: &str) -> BenchDb {
        if backend == "postgres" {
            let admin_url = std::env::var("TANDEM_BENCH_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
            let name = format!("tandem_bench_{}", uuid::Uuid::new_v4().simple());
            let admin = Db::connect(&admin_url, 1).await.unwrap();
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            let (base, _) = admin_url.rsplit_once('/').unwrap();
            BenchDb {
                url: format!("{base}/{name}"),
                admin: Some((admin_url, name)),
            }
        } else {
            let path =
                std::env::temp_dir().join(format!("tandem-bench-{}.db", uuid::Uuid::new_v4()));
            BenchDb {
                url: format!("sqlite://{}", path.display()),
                admin: None,
            }
        }
    }

    /// Drops the database (PostgreSQL) or deletes the file and its companions (SQLite).
    pub async fn remove(self) {
        match self.admin {
            Some((admin_url, name)) => {
                let admin = Db::connect(&admin_url, 1).await.unwrap();
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
            }
            None => {
                if let Some(path) = self.url.strip_prefix("sqlite://") {
                    for suffix in ["", "-wal", "-shm", ".key"] {
                        let _ = std::fs::remove_file(format!("{path}{suffix}"));
                    }
                }
            }
        }
    }
}

/// A hub served in this process on a benchmark database.
pub struct Hub {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its first admin key.
    pub admin: String,
    /// Its state (database, webhook sources, inbox…).
    pub state: tandem::http::AppState,
    /// Stops the server when fired (or dropped).
    pub stop: tokio::sync::oneshot::Sender<()>,
}

/// Migrates `config.database_url`, builds the hub on it and serves it until [`Hub::stop`].
pub async fn start_hub(config: Config) -> Hub {
    let db = Db::connect(&config.database_url, 8).await.unwrap();
    db.migrate().await.unwrap();
    let app = tandem::app::App::build_with_db(config, db).await.unwrap();
    let admin = app.ensure_admin_key().await.unwrap().unwrap();
    let state = app.state.clone();
    let base = format!("http://{}", app.addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    Hub {
        base,
        admin,
        state,
        stop,
    }
}

/// Posts a GraphQL request to the hub at `base` and returns `data` (panics on errors).
pub async fn gql(base: &str, token: &str, query: &str, variables: Value) -> Value {
    let resp: Value = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .bearer_auth(token)
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(resp.get("errors").is_none(), "{resp}");
    resp["data"].clone()
}

/// The process's peak resident set (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}
