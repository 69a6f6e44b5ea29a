//! Prometheus metrics: requests and latency per HTTP route and per GraphQL operation, webhook
//! and delivery counts, database statements. Rendered in the text exposition format at
//! `GET /metrics`. A leaf: any layer may record here; it depends on none of them.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Most distinct GraphQL operation names tracked; further names are counted as `other`.
const MAX_OPERATION_LABELS: usize = 200;

/// The process's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_latency: HistogramVec,
    graphql_requests: IntCounterVec,
    graphql_latency: HistogramVec,
    db_statements: IntCounter,
    worker_statements: IntCounterVec,
    sqlite_vm_steps: IntCounter,
    sqlite_full_scan_steps: IntCounter,
    webhook_receipts: IntCounterVec,
    inbox_backlog: prometheus::IntGauge,
    webhook_deliveries: IntCounterVec,
    webhook_pending: prometheus::IntGauge,
    table_rows: prometheus::IntGaugeVec,
    table_bytes: prometheus::IntGaugeVec,
    kpi_answers: IntCounterVec,
    /// When the table sizes were last measured.
    sizes_measured: Arc<Mutex<Option<Instant>>>,
    operations: Arc<Mutex<HashSet<String>>>,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "tandem_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_latency = HistogramVec::new(
            HistogramOpts::new(
                "tandem_http_request_duration_seconds",
                "HTTP request latency by route",
            ),
            &["route"],
        )
        .expect("valid metric");
        let graphql_requests = IntCounterVec::new(
            Opts::new(
                "tandem_graphql_requests_total",
                "GraphQL operations by name and outcome",
            ),
            &["operation", "outcome"],
        )
        .expect("valid metric");
        let graphql_latency = HistogramVec::new(
            HistogramOpts::new(
                "tandem_graphql_request_duration_seconds",
                "GraphQL operation latency by name",
            ),
            &["operation"],
        )
        .expect("valid metric");
        let db_statements = IntCounter::new(
            "tandem_db_statements_total",
            "SQL statements executed by this process",
        )
        .expect("valid metric");
        let worker_statements = IntCounterVec::new(
            Opts::new(
                "tandem_db_worker_statements_total",
                "SQL statements executed by each background worker of this process (inbox, \
                 feed, fanout, deliveries, crm-sync, jobs): divided by its work counter, the \
                 statements per webhook applied, per delivery, per sync",
            ),
            &["worker"],
        )
        .expect("valid metric");
        let sqlite_vm_steps = IntCounter::new(
            "tandem_db_sqlite_vm_steps_total",
            "SQLite virtual-machine steps of the statements this process ran through its pool \
             (a statement that scans instead of seeking makes this grow with the data)",
        )
        .expect("valid metric");
        let sqlite_full_scan_steps = IntCounter::new(
            "tandem_db_sqlite_full_scan_steps_total",
            "Rows SQLite stepped through in full table scans for this process's pooled statements",
        )
        .expect("valid metric");
        let webhook_receipts = IntCounterVec::new(
            Opts::new(
                "tandem_webhook_receipts_total",
                "Inbound webhook events by source kind and outcome (RECEIVED, FAILED, DUPLICATE, unauthorized)",
            ),
            &["kind", "outcome"],
        )
        .expect("valid metric");
        let inbox_backlog = prometheus::IntGauge::new(
            "tandem_inbox_backlog",
            "Webhook receipts stored but not yet applied",
        )
        .expect("valid metric");
        let webhook_deliveries = IntCounterVec::new(
            Opts::new(
                "tandem_webhook_deliveries_total",
                "Outbound webhook attempts by outcome (succeeded, retrying, failed)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let webhook_pending = prometheus::IntGauge::new(
            "tandem_webhook_deliveries_pending",
            "Outbound webhook deliveries not yet succeeded or given up",
        )
        .expect("valid metric");
        let table_rows = prometheus::IntGaugeVec::new(
            Opts::new(
                "tandem_table_rows",
                "Rows per table (PostgreSQL: the statistics' estimate), measured at most every \
                 few minutes",
            ),
            &["table"],
        )
        .expect("valid metric");
        let table_bytes = prometheus::IntGaugeVec::new(
            Opts::new(
                "tandem_table_bytes",
                "Bytes on disk per table, its indexes included, measured at most every few minutes",
            ),
            &["table"],
        )
        .expect("valid metric");
        let kpi_answers = IntCounterVec::new(
            Opts::new(
                "tandem_kpi_answers_total",
                "KPI answers (kpis, Kpis.months) by whether they were kept from an earlier \
                 computation on unchanged data or computed",
            ),
            &["query", "answer"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_latency.clone()),
            Box::new(graphql_requests.clone()),
            Box::new(graphql_latency.clone()),
            Box::new(db_statements.clone()),
            Box::new(worker_statements.clone()),
            Box::new(sqlite_vm_steps.clone()),
            Box::new(sqlite_full_scan_steps.clone()),
            Box::new(webhook_receipts.clone()),
            Box::new(inbox_backlog.clone()),
            Box::new(webhook_deliveries.clone()),
            Box::new(webhook_pending.clone()),
            Box::new(table_rows.clone()),
            Box::new(table_bytes.clone()),
            Box::new(kpi_answers.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        Metrics {
            registry,
            http_requests,
            http_latency,
            graphql_requests,
            graphql_latency,
            db_statements,
            worker_statements,
            sqlite_vm_steps,
            sqlite_full_scan_steps,
            webhook_receipts,
            inbox_backlog,
            webhook_deliveries,
            webhook_pending,
            table_rows,
            table_bytes,
            kpi_answers,
            sizes_measured: Arc::new(Mutex::new(None)),
            operations: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Records one GraphQL operation.
    pub fn observe_graphql(&self, operation: &str, ok: bool, seconds: f64) {
        let label = self.operation_label(operation);
        let outcome = if ok { "ok" } else { "error" };
        self.graphql_requests
            .with_label_values(&[label.as_str(), outcome])
            .inc();
        self.graphql_latency
            .with_label_values(&[label.as_str()])
            .observe(seconds);
    }

    /// Records one inbound webhook event (or a rejected request).
    pub fn observe_webhook(&self, kind: &str, outcome: &str) {
        self.webhook_receipts
            .with_label_values(&[kind, outcome])
            .inc();
    }

    /// Counts one KPI answer of `query` (`kpis`, `months`): `kept` or `computed`.
    pub fn observe_kpi_answer(&self, query: &str, answer: &str) {
        self.kpi_answers.with_label_values(&[query, answer]).inc();
    }

    /// Sets the inbox backlog gauge (refreshed on every scrape).
    pub fn set_inbox_backlog(&self, backlog: u64) {
        self.inbox_backlog
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
    }

    /// Counts outbound webhook attempts by outcome.
    pub fn observe_deliveries(&self, outcome: &str, n: u64) {
        self.webhook_deliveries
            .with_label_values(&[outcome])
            .inc_by(n);
    }

    /// Sets the pending-deliveries gauge (refreshed on every scrape).
    pub fn set_pending_deliveries(&self, pending: u64) {
        self.webhook_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    /// Whether the table sizes are due for measuring (never measured, or more than `every`
    /// ago); claims the measurement, so that concurrent scrapes measure once.
    pub fn claim_table_sizes(&self, every: Duration) -> bool {
        let mut measured = self
            .sizes_measured
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let due = measured.is_none_or(|at| at.elapsed() >= every);
        if due {
            *measured = Some(Instant::now());
        }
        due
    }

    /// Sets the table-size gauges: `(table, rows, bytes if known)`.
    pub fn set_table_sizes<'a>(
        &self,
        sizes: impl IntoIterator<Item = (&'a str, i64, Option<i64>)>,
    ) {
        for (table, rows, bytes) in sizes {
            self.table_rows.with_label_values(&[table]).set(rows);
            if let Some(bytes) = bytes {
                self.table_bytes.with_label_values(&[table]).set(bytes);
            }
        }
    }

    fn operation_label(&self, operation: &str) -> String {
        let valid = !operation.is_empty()
            && operation.len() <= 64
            && operation
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return "other".to_string();
        }
        let mut seen = self.operations.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(operation) || seen.len() < MAX_OPERATION_LABELS {
            seen.insert(operation.to_string());
            operation.to_string()
        } else {
            "other".to_string()
        }
    }

    /// Renders every metric; `statements` is the database's running statement count (request
    /// handling), `workers` each worker's, and `sqlite_steps` the running (virtual-machine,
    /// full-scan) step counts on SQLite.
    pub fn render<'a>(
        &self,
        statements: u64,
        workers: impl IntoIterator<Item = (&'a str, u64)>,
        sqlite_steps: Option<(u64, u64)>,
    ) -> String {
        let catch_up = |counter: &IntCounter, total: u64| {
            let current = counter.get();
            if total > current {
                counter.inc_by(total - current);
            }
        };
        catch_up(&self.db_statements, statements);
        for (worker, total) in workers {
            catch_up(&self.worker_statements.with_label_values(&[worker]), total);
        }
        if let Some((vm, full_scan)) = sqlite_steps {
            catch_up(&self.sqlite_vm_steps, vm);
            catch_up(&self.sqlite_full_scan_steps, full_scan);
        }
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(err) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %err, "encoding metrics failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Records one HTTP request of `route`.
    pub fn observe_http(&self, route: &str, method: &str, status: &str, seconds: f64) {
        self.http_requests
            .with_label_values(&[route, method, status])
            .inc();
        self.http_latency
            .with_label_values(&[route])
            .observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
