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
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self';"), "{csp}");
    let page = resp.text().await.unwrap();
    assert!(page.contains("Tandem GraphiQL"));
    // Every asset GraphiQL loads is served from the binary: nothing from a CDN, no inline script.
    assert!(
        !page.contains("https://") && !page.contains("http://"),
        "{page}"
    );
    let sources: Vec<&str> = page
        .split("src=\"")
        .skip(1)
        .chain(page.split("href=\"").skip(1))
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assert_eq!(sources.len(), 7, "{sources:?}");
    assert_eq!(
        page.matches("<script").count(),
        4,
        "only the four asset scripts"
    );
    for source in sources {
        let resp = get(source).await.unwrap();
        assert_eq!(resp.status(), 200, "{source}");
        let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            kind.starts_with("text/javascript")
                || kind.starts_with("text/css")
                || kind == "image/svg+xml",
            "{source}: {kind}"
        );
        let body = resp.text().await.unwrap();
        assert!(!body.contains("sourceMappingURL"), "{source}");
        assert!(!body.contains("unpkg.com"), "{source}");
    }
    assert_eq!(
        get("/graphql/assets/nothing.js").await.unwrap().status(),
        404
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
