//! Health, readiness, metrics and GraphiQL.

use serde_json::json;

use crate::{db_tests, helpers::TestApp};

async fn health_readiness_metrics_and_graphiql_answer(app: TestApp) {
    let get = |path: &str| app.client.get(format!("{}{path}", app.base)).send();
    let resp = get("/healthz").await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = get("/readyz").await.unwrap();
    assert_eq!(resp.status(), 200);
    app.admin_ok("query Dashboard { viewer { role } }", json!({}))
        .await;
    let resp = get("/metrics").await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("tandem_graphql_requests_total{operation=\"Dashboard\",outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "tandem_http_requests_total{method=\"POST\",route=\"/graphql\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("tandem_graphql_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("tandem_db_statements_total"), "{text}");
    let resp = get("/graphql").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("graphiql")
    );
}

async fn readiness_fails_when_the_database_is_gone(app: TestApp) {
    app.db.clone().close().await.unwrap();
    let resp = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let resp = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

db_tests!(
    health_readiness_metrics_and_graphiql_answer,
    readiness_fails_when_the_database_is_gone,
);

#[test]
fn migrations_are_idempotent_on_sqlite() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let path = std::env::temp_dir().join(format!("tandem-migrate-{}.db", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}", path.display());
        let db = tandem::db::Db::connect(&url, 1).await.unwrap();
        db.migrate().await.unwrap();
        db.migrate().await.unwrap();
        db.close().await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    });
}
