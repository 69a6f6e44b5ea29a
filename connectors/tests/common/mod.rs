//! Shared by the connector tests: the fixtures of `tests/fixtures/crm/`, a copy of `shared/fixtures/crm/` and a retry policy
//! that keeps failing tests short.

use std::time::Duration;

use serde_json::Value;
use tandem_connectors::http::RetryPolicy;

/// A fixture file, parsed.
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/crm/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// 2 s per request, 5 s of retries, short backoff.
pub fn quick() -> RetryPolicy {
    RetryPolicy {
        timeout: Duration::from_secs(2),
        budget: Duration::from_secs(5),
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    }
}
