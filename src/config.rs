//! Configuration: defaults < optional `tandem.toml` < `TANDEM_*` environment < command-line flags,
//! merged with figment and validated once at start.

use std::net::SocketAddr;

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The hub's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// `sqlite://…` or `postgres://…` (`TANDEM_DATABASE_URL`).
    pub database_url: String,
    /// Listen address (`TANDEM_BIND`).
    pub bind: String,
    /// tracing filter (`TANDEM_LOG`).
    pub log: String,
    /// `pretty` or `json` (`TANDEM_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Base URL clients reach this hub at (`TANDEM_PUBLIC_URL`); defaults from the bind address.
    pub public_url: Option<String>,
    /// Maximum number of pooled database connections.
    pub database_max_connections: u32,
    /// Key sealing webhook secrets and CRM credentials at rest (`TANDEM_SECRET_KEY`, 32 bytes
    /// in base64). Generated beside a SQLite database when absent; required with PostgreSQL.
    pub secret_key: Option<Redacted>,
    /// Whether this instance runs the inbox worker that applies received webhooks
    /// (`TANDEM_INBOX_WORKER`, default true). With several instances on one PostgreSQL, some
    /// may only receive.
    pub inbox_worker: bool,
    /// Whether this instance runs scheduled jobs (`TANDEM_SCHEDULER`, default true). Each due
    /// run happens once across instances sharing a database (a database lease).
    pub scheduler: bool,
    /// Cron (6 fields, seconds first, UTC) of `reconcile` (`TANDEM_RECONCILE_SCHEDULE`).
    pub reconcile_schedule: String,
    /// Cron of `release-holds` (`TANDEM_RELEASE_HOLDS_SCHEDULE`).
    pub release_holds_schedule: String,
    /// Cron of `prune`, which drops history past its retention (`TANDEM_PRUNE_SCHEDULE`,
    /// default daily at 03:30 UTC).
    pub prune_schedule: String,
    /// Cron of `expire-registrations`, which ends the protection of registrations without an
    /// attributed deal (`TANDEM_EXPIRE_REGISTRATIONS_SCHEDULE`, default hourly at :05).
    pub expire_registrations_schedule: String,
    /// Cron of `lead-sla`, which records breached lead-engagement SLAs
    /// (`TANDEM_LEAD_SLA_SCHEDULE`, default every minute at :15).
    pub lead_sla_schedule: String,
    /// Cron of `certifications`, which announces certifications expiring within 30 days
    /// (`TANDEM_CERTIFICATIONS_SCHEDULE`, default hourly at :10).
    pub certifications_schedule: String,
    /// Cron of `evaluate-groups`, which promotes partners (and demotes them at their program's
    /// group review); it also runs after each reconcile (`TANDEM_EVALUATE_GROUPS_SCHEDULE`,
    /// default daily at 02:20 UTC).
    pub evaluate_groups_schedule: String,
    /// How long each attempt of an outbound delivery is kept in its attempt log
    /// (`TANDEM_WEBHOOK_ATTEMPT_RETENTION`, default `30d`); `prune` removes older ones. This and
    /// the other `*_retention` settings take a duration (`36h`, `30d`) or `never`.
    pub webhook_attempt_retention: String,
    /// How long applied, ignored and failed webhook receipts are kept
    /// (`TANDEM_WEBHOOK_RECEIPT_RETENTION`, default `30d`, at least `3d`: a receipt is what
    /// recognises a provider's repeat of the same event). Receipts still to apply always stay.
    pub webhook_receipt_retention: String,
    /// How long receipts recorded as duplicates are kept (`TANDEM_DUPLICATE_RECEIPT_RETENTION`,
    /// default `7d`).
    pub duplicate_receipt_retention: String,
    /// How long finished outbound deliveries (succeeded, failed, cancelled) are kept with their
    /// attempts (`TANDEM_WEBHOOK_DELIVERY_RETENTION`, default `30d`). Pending ones always stay.
    pub webhook_delivery_retention: String,
    /// How long finished job runs are kept (`TANDEM_JOB_RUN_RETENTION`, default `90d`).
    pub job_run_retention: String,
    /// How long finished CRM sync runs are kept (`TANDEM_SYNC_RUN_RETENTION`, default `90d`);
    /// each connection's latest run always stays.
    pub sync_run_retention: String,
    /// How long events are kept (`TANDEM_EVENT_RETENTION`, default `never`). When set, at least
    /// as long as deliveries; only events the outbound fan-out has passed, with no delivery
    /// pending, are pruned. The commission ledger is never pruned.
    pub event_retention: String,
    /// How long a job's lease lasts without renewal, in seconds (`TANDEM_JOB_LEASE_SECS`): a
    /// crashed holder's run can be taken over after this.
    pub job_lease_secs: u64,
    /// Whether this instance delivers outbound webhooks (`TANDEM_WEBHOOK_WORKER`, default
    /// true). Several instances on one PostgreSQL share the work.
    pub webhook_worker: bool,
    /// Delays before the retries of a failed delivery (`TANDEM_WEBHOOK_RETRY_SCHEDULE`,
    /// comma-separated durations such as `5s,5m,30m,2h,5h,10h,10h`); ±20 % jitter is added, and a
    /// `Retry-After` answer replaces the delay. After the last one the delivery has failed.
    pub webhook_retry_schedule: String,
    /// Per-attempt timeout in milliseconds (`TANDEM_WEBHOOK_TIMEOUT_MS`, default 15000).
    pub webhook_timeout_ms: u64,
    /// An endpoint failing without a single success for this long is disabled
    /// (`TANDEM_WEBHOOK_DISABLE_AFTER`, default `5d`).
    pub webhook_disable_after: String,
    /// Deliveries per second to one endpoint at most (`TANDEM_WEBHOOK_RATE_LIMIT`, default 100).
    pub webhook_rate_limit: u32,
    /// Requests in flight to one endpoint at most (`TANDEM_WEBHOOK_MAX_IN_FLIGHT`, default 16).
    pub webhook_max_in_flight: u32,
    /// Allow endpoint URLs on loopback, private and link-local addresses
    /// (`TANDEM_WEBHOOK_ALLOW_PRIVATE_TARGETS`, default false).
    pub webhook_allow_private_targets: bool,
    /// How long a worker's claim on a delivery lasts, in seconds (`TANDEM_WEBHOOK_CLAIM_SECS`,
    /// default 60): a crashed worker's deliveries are retried after this.
    pub webhook_claim_secs: u64,
    /// Per-request timeout of CRM API calls in milliseconds (`TANDEM_CRM_TIMEOUT_MS`, default
    /// 30000): an unreachable CRM fails within it.
    pub crm_timeout_ms: u64,
    /// How long one CRM call may keep retrying 429s, 5xx and timeouts, in seconds
    /// (`TANDEM_CRM_RETRY_BUDGET_SECS`, default 120).
    pub crm_retry_budget_secs: u64,
    /// How often the scheduler looks for CRM connections whose own schedule is due
    /// (`TANDEM_CRM_SYNC_CHECK_SCHEDULE`, 6-field cron, default every minute at :30).
    pub crm_sync_check_schedule: String,
    /// `applyToProgram` calls per minute from one client address (`TANDEM_APPLY_RATE_LIMIT`,
    /// default 10; then `TOO_MANY_REQUESTS`).
    pub apply_rate_limit: u32,
    /// Stripe secret key for Stripe Connect payouts (`TANDEM_STRIPE_API_KEY`; without it
    /// `sendPayoutRun` answers `CONFLICT`). Never logged.
    pub stripe_api_key: Option<Redacted>,
    /// Stripe's API base (`TANDEM_STRIPE_API_BASE`, default `https://api.stripe.com`).
    pub stripe_api_base: String,
    /// Seconds a websocket may stay open without `connection_init` before it is closed with
    /// 4408 (`TANDEM_WS_INIT_TIMEOUT_SECS`, default 10).
    pub ws_init_timeout_secs: u64,
    /// Open websockets per client address (`TANDEM_WS_MAX_PER_ADDRESS`, default 256; the
    /// upgrade answers 429 beyond it).
    pub ws_max_per_address: u32,
    /// Open websockets per API key (`TANDEM_WS_MAX_PER_KEY`, default 64; `connection_init`
    /// beyond it is refused and the socket closed).
    pub ws_max_per_key: u32,
    /// When set, `GET /metrics` answers only requests with `Authorization: Bearer <this>`
    /// (`TANDEM_METRICS_TOKEN`); unset, it is open to whoever reaches the listen address.
    pub metrics_token: Option<Redacted>,
}

/// The parsed retention settings (`None`: kept forever); see [`Config::retention_periods`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPeriods {
    pub receipts: Option<std::time::Duration>,
    pub duplicates: Option<std::time::Duration>,
    pub deliveries: Option<std::time::Duration>,
    pub attempts: Option<std::time::Duration>,
    pub job_runs: Option<std::time::Duration>,
    pub sync_runs: Option<std::time::Duration>,
    pub events: Option<std::time::Duration>,
}

/// A configuration value that must never reach a log: `Debug` prints `[redacted]`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: "sqlite://./tandem.db".to_string(),
            bind: "127.0.0.1:8080".to_string(),
            log: "info,sqlx=warn,sea_orm=warn,tokio_cron_scheduler=warn,poem=warn".to_string(),
            log_format: LogFormat::Pretty,
            public_url: None,
            database_max_connections: 8,
            secret_key: None,
            inbox_worker: true,
            scheduler: true,
            reconcile_schedule: "0 */10 * * * *".to_string(),
            release_holds_schedule: "0 0 * * * *".to_string(),
            prune_schedule: "0 30 3 * * *".to_string(),
            expire_registrations_schedule: "0 5 * * * *".to_string(),
            lead_sla_schedule: "15 * * * * *".to_string(),
            certifications_schedule: "0 10 * * * *".to_string(),
            evaluate_groups_schedule: "0 20 2 * * *".to_string(),
            webhook_attempt_retention: "30d".to_string(),
            webhook_receipt_retention: "30d".to_string(),
            duplicate_receipt_retention: "7d".to_string(),
            webhook_delivery_retention: "30d".to_string(),
            job_run_retention: "90d".to_string(),
            sync_run_retention: "90d".to_string(),
            event_retention: "never".to_string(),
            job_lease_secs: 300,
            webhook_worker: true,
            webhook_retry_schedule: "5s,5m,30m,2h,5h,10h,10h".to_string(),
            webhook_timeout_ms: 15_000,
            webhook_disable_after: "5d".to_string(),
            webhook_rate_limit: 100,
            webhook_max_in_flight: 16,
            webhook_allow_private_targets: false,
            webhook_claim_secs: 60,
            crm_timeout_ms: 30_000,
            crm_retry_budget_secs: 120,
            crm_sync_check_schedule: "30 * * * * *".to_string(),
            apply_rate_limit: 10,
            stripe_api_key: None,
            stripe_api_base: "https://api.stripe.com".to_string(),
            ws_init_timeout_secs: 10,
            ws_max_per_address: 256,
            ws_max_per_key: 64,
            metrics_token: None,
        }
    }
}

/// Values given on the command line; they override everything else.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FlagOverrides {
    /// `--database-url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// `--bind`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
}

impl Config {
    /// Loads the layered configuration from `tandem.toml` (if present in the working
    /// directory, or at `TANDEM_CONFIG`), the environment and the flags.
    pub fn load(flags: &FlagOverrides) -> Result<Config, Box<figment::Error>> {
        let file = std::env::var("TANDEM_CONFIG").unwrap_or_else(|_| "tandem.toml".to_string());
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(file))
            .merge(Env::prefixed("TANDEM_").only(&[
                "database_url",
                "bind",
                "log",
                "log_format",
                "public_url",
                "database_max_connections",
                "secret_key",
                "inbox_worker",
                "scheduler",
                "reconcile_schedule",
                "release_holds_schedule",
                "prune_schedule",
                "expire_registrations_schedule",
                "lead_sla_schedule",
                "certifications_schedule",
                "evaluate_groups_schedule",
                "webhook_attempt_retention",
                "webhook_receipt_retention",
                "duplicate_receipt_retention",
                "webhook_delivery_retention",
                "job_run_retention",
                "sync_run_retention",
                "event_retention",
                "job_lease_secs",
                "webhook_worker",
                "webhook_retry_schedule",
                "webhook_timeout_ms",
                "webhook_disable_after",
                "webhook_rate_limit",
                "webhook_max_in_flight",
                "webhook_allow_private_targets",
                "webhook_claim_secs",
                "crm_timeout_ms",
                "crm_retry_budget_secs",
                "crm_sync_check_schedule",
                "apply_rate_limit",
                "stripe_api_key",
                "stripe_api_base",
                "ws_init_timeout_secs",
                "ws_max_per_address",
                "ws_max_per_key",
                "metrics_token",
            ]))
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Box<figment::Error>> {
        let invalid = |message: String| Err(Box::new(figment::Error::from(message)));
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return invalid("database_url must start with sqlite: or postgres://".to_string());
        }
        if self.bind.parse::<SocketAddr>().is_err() {
            return invalid(format!(
                "bind must be an address such as 127.0.0.1:8080, got {:?}",
                self.bind
            ));
        }
        for (name, cron) in [
            ("reconcile_schedule", &self.reconcile_schedule),
            ("release_holds_schedule", &self.release_holds_schedule),
            ("prune_schedule", &self.prune_schedule),
            (
                "expire_registrations_schedule",
                &self.expire_registrations_schedule,
            ),
            ("lead_sla_schedule", &self.lead_sla_schedule),
            ("certifications_schedule", &self.certifications_schedule),
            ("evaluate_groups_schedule", &self.evaluate_groups_schedule),
            ("crm_sync_check_schedule", &self.crm_sync_check_schedule),
        ] {
            if let Err(e) = parse_cron(cron) {
                return invalid(format!("{name} {cron:?} is not a 6-field cron: {e}"));
            }
        }
        if self.job_lease_secs < 2 {
            return invalid("job_lease_secs must be at least 2".to_string());
        }
        if let Err(e) = self.retry_schedule() {
            return invalid(format!("webhook_retry_schedule: {e}"));
        }
        if let Err(e) = humantime::parse_duration(&self.webhook_disable_after) {
            return invalid(format!("webhook_disable_after: {e}"));
        }
        if let Err(e) = self.retention_periods() {
            return invalid(e);
        }
        if self.webhook_timeout_ms == 0 || self.webhook_rate_limit == 0 {
            return invalid("webhook_timeout_ms and webhook_rate_limit must be positive".into());
        }
        if self.webhook_max_in_flight == 0 || self.webhook_claim_secs == 0 {
            return invalid("webhook_max_in_flight and webhook_claim_secs must be positive".into());
        }
        if self.ws_init_timeout_secs == 0
            || self.ws_max_per_address == 0
            || self.ws_max_per_key == 0
        {
            return invalid(
                "ws_init_timeout_secs, ws_max_per_address and ws_max_per_key must be positive"
                    .into(),
            );
        }
        if self.crm_timeout_ms == 0 {
            return invalid("crm_timeout_ms must be positive".into());
        }
        if self.database_max_connections == 0 {
            return invalid("database_max_connections must be at least 1".to_string());
        }
        Ok(())
    }

    /// The parsed `webhook_retry_schedule`.
    pub fn retry_schedule(&self) -> Result<Vec<std::time::Duration>, String> {
        self.webhook_retry_schedule
            .split(',')
            .map(str::trim)
            .filter(|step| !step.is_empty())
            .map(|step| humantime::parse_duration(step).map_err(|e| format!("{step:?}: {e}")))
            .collect()
    }

    /// The `*_retention` settings parsed (`None`: kept forever), checked against each other.
    pub fn retention_periods(&self) -> Result<RetentionPeriods, String> {
        let period = |name: &str, text: &str| -> Result<Option<std::time::Duration>, String> {
            match text.trim() {
                "never" => Ok(None),
                text => humantime::parse_duration(text)
                    .map(Some)
                    .map_err(|e| format!("{name}: {e} (a duration such as 30d, or never)")),
            }
        };
        let periods = RetentionPeriods {
            receipts: period("webhook_receipt_retention", &self.webhook_receipt_retention)?,
            duplicates: period(
                "duplicate_receipt_retention",
                &self.duplicate_receipt_retention,
            )?,
            deliveries: period(
                "webhook_delivery_retention",
                &self.webhook_delivery_retention,
            )?,
            attempts: period("webhook_attempt_retention", &self.webhook_attempt_retention)?,
            job_runs: period("job_run_retention", &self.job_run_retention)?,
            sync_runs: period("sync_run_retention", &self.sync_run_retention)?,
            events: period("event_retention", &self.event_retention)?,
        };
        let day = std::time::Duration::from_secs(86_400);
        if periods.receipts.is_some_and(|p| p < 3 * day) {
            return Err(
                "webhook_receipt_retention must be at least 3d: providers repeat an \
                        event for up to three days, and the receipt is what recognises it"
                    .into(),
            );
        }
        if let Some(events) = periods.events
            && periods.deliveries.is_none_or(|d| events < d)
        {
            return Err(
                "event_retention must be at least webhook_delivery_retention: a delivery \
                 names its event"
                    .into(),
            );
        }
        Ok(periods)
    }

    /// [`Config::webhook_disable_after`] as a duration.
    pub fn disable_after(&self) -> std::time::Duration {
        humantime::parse_duration(&self.webhook_disable_after)
            .unwrap_or(std::time::Duration::from_secs(5 * 86_400))
    }

    /// The public base URL, derived from the bind address when not configured.
    pub fn public_base_url(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{bound}"),
        }
    }
}

/// Parses a 6-field cron expression (seconds first) exactly as the scheduler does.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure type is fixed by figment
mod tests {
    use super::*;

    #[test]
    fn flags_beat_environment_beats_file_beats_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "tandem.toml",
                "database_url = \"sqlite://file.db\"\nbind = \"127.0.0.1:9000\"\nlog = \"debug\"\n",
            )?;
            let config = Config::load(&FlagOverrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.database_url, "sqlite://file.db");
            assert_eq!(config.bind, "127.0.0.1:9000");
            assert_eq!(config.log_format, LogFormat::Pretty);

            jail.set_env("TANDEM_BIND", "127.0.0.1:9100");
            jail.set_env("TANDEM_LOG_FORMAT", "json");
            let config = Config::load(&FlagOverrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.bind, "127.0.0.1:9100");
            assert_eq!(config.log_format, LogFormat::Json);
            assert_eq!(config.log, "debug");

            let flags = FlagOverrides {
                database_url: Some("postgres://db/x".into()),
                bind: Some("127.0.0.1:9200".into()),
            };
            let config = Config::load(&flags).map_err(|e| e.to_string())?;
            assert_eq!(config.bind, "127.0.0.1:9200");
            assert_eq!(config.database_url, "postgres://db/x");
            Ok(())
        });
    }

    #[test]
    fn invalid_settings_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TANDEM_BIND", "not an address");
            assert!(Config::load(&FlagOverrides::default()).is_err());
            jail.set_env("TANDEM_BIND", "127.0.0.1:1");
            jail.set_env("TANDEM_DATABASE_URL", "mysql://x");
            assert!(Config::load(&FlagOverrides::default()).is_err());
            jail.set_env("TANDEM_DATABASE_URL", "sqlite://x.db");
            jail.set_env("TANDEM_RECONCILE_SCHEDULE", "every ten minutes");
            let err = Config::load(&FlagOverrides::default()).unwrap_err();
            assert!(err.to_string().contains("reconcile_schedule"), "{err}");
            // Five-field crons are refused too: the seconds field comes first.
            jail.set_env("TANDEM_RECONCILE_SCHEDULE", "*/10 * * * *");
            assert!(Config::load(&FlagOverrides::default()).is_err());
            jail.set_env("TANDEM_RECONCILE_SCHEDULE", "0 */5 * * * *");
            jail.set_env("TANDEM_JOB_LEASE_SECS", "1");
            assert!(Config::load(&FlagOverrides::default()).is_err());
            jail.set_env("TANDEM_JOB_LEASE_SECS", "60");
            let config = Config::load(&FlagOverrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(config.reconcile_schedule, "0 */5 * * * *");
            assert!(config.scheduler);
            Ok(())
        });
    }

    #[test]
    fn retention_takes_durations_or_never_and_keeps_what_dedupes() {
        figment::Jail::expect_with(|jail| {
            let load = || Config::load(&FlagOverrides::default());
            let periods = load().map_err(|e| e.to_string())?.retention_periods()?;
            let days = |n: u64| Some(std::time::Duration::from_secs(n * 86_400));
            assert_eq!(periods.receipts, days(30));
            assert_eq!(periods.duplicates, days(7));
            assert_eq!((periods.job_runs, periods.events), (days(90), None));
            jail.set_env("TANDEM_JOB_RUN_RETENTION", "never");
            jail.set_env("TANDEM_DUPLICATE_RECEIPT_RETENTION", "36h");
            let periods = load().map_err(|e| e.to_string())?.retention_periods()?;
            assert_eq!(periods.job_runs, None);
            assert_eq!(
                periods.duplicates,
                Some(std::time::Duration::from_secs(36 * 3600))
            );
            for (key, value, named) in [
                ("TANDEM_SYNC_RUN_RETENTION", "a while", "sync_run_retention"),
                (
                    "TANDEM_WEBHOOK_RECEIPT_RETENTION",
                    "1d",
                    "webhook_receipt_retention",
                ),
                ("TANDEM_EVENT_RETENTION", "10d", "event_retention"),
            ] {
                jail.set_env(key, value);
                let err = load().unwrap_err().to_string();
                assert!(err.contains(named), "{key}={value}: {err}");
                jail.set_env(key, "90d");
            }
            // Events kept forever while deliveries are not: refused too.
            jail.set_env("TANDEM_WEBHOOK_DELIVERY_RETENTION", "never");
            assert!(load().is_err());
            jail.set_env("TANDEM_EVENT_RETENTION", "never");
            assert!(load().is_ok());
            Ok(())
        });
    }
}
