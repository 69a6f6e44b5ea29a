//! HTTP side of the metrics: the per-route middleware and the GraphQL operation label.

use std::time::Instant;

use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

use crate::metrics::Metrics;

/// Middleware that records one route's requests.
pub struct RouteMetrics {
    metrics: Metrics,
    route: &'static str,
}

impl RouteMetrics {
    /// Records requests and latency of the wrapped endpoint under the label `route`.
    pub fn new(metrics: &Metrics, route: &'static str) -> RouteMetrics {
        RouteMetrics {
            metrics: metrics.clone(),
            route,
        }
    }
}

impl<E: Endpoint> Middleware<E> for RouteMetrics {
    type Output = RouteMetricsEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        RouteMetricsEndpoint {
            inner,
            metrics: self.metrics.clone(),
            route: self.route,
        }
    }
}

/// See [`RouteMetrics`].
pub struct RouteMetricsEndpoint<E> {
    inner: E,
    metrics: Metrics,
    route: &'static str,
}

impl<E: Endpoint> Endpoint for RouteMetricsEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let start = Instant::now();
        let method = req.method().to_string();
        let result = self.inner.call(req).await.map(IntoResponse::into_response);
        let status = match &result {
            Ok(resp) => resp.status(),
            Err(err) => err.status(),
        };
        self.metrics.observe_http(
            self.route,
            &method,
            status.as_str(),
            start.elapsed().as_secs_f64(),
        );
        result
    }
}

/// The operation name of a request: the explicit `operationName`, else the name of the first
/// operation in the document, else `anonymous`.
pub fn operation_name(explicit: Option<&str>, query: &str) -> String {
    if let Some(name) = explicit {
        return name.to_string();
    }
    let mut rest = query.trim_start();
    while let Some(stripped) = rest.strip_prefix('#') {
        rest = stripped
            .split_once('\n')
            .map(|(_, r)| r)
            .unwrap_or("")
            .trim_start();
    }
    for keyword in ["query", "mutation", "subscription"] {
        if let Some(after) = rest.strip_prefix(keyword) {
            let name: String = after
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                return name;
            }
        }
    }
    "anonymous".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_are_found() {
        assert_eq!(operation_name(Some("X"), "query Y { a }"), "X");
        assert_eq!(
            operation_name(None, "  query Dashboard($id: ID!) { a }"),
            "Dashboard"
        );
        assert_eq!(operation_name(None, "# c\nmutation Make { a }"), "Make");
        assert_eq!(operation_name(None, "{ a }"), "anonymous");
    }
}
