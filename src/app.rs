//! Building and running the hub: connect and migrate the database, bind the listener, serve
//! until a shutdown signal.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use poem::{
    Server,
    listener::{Acceptor, Listener, TcpAcceptor, TcpListener},
};

use crate::{
    config::Config,
    db::Db,
    domain::{
        auth::{ApiKeyRole, create_key, has_admin_key},
        crm::{CrmSettings, Syncer},
        inbox::{Inbox, InboxWorker},
        secrets::SecretKey,
        webhooks::Webhooks,
    },
    error::ApiError,
    graphql::{build_schema, limits::LimitedSchema, outbound::OutboundContext},
    http::{AppState, routes},
    jobs::{Jobs, SyncTrigger, start_scheduler},
    metrics::Metrics,
    outbound::{DeliveryWorker, EventFeed, Fanout, OutboundSettings},
};

/// A hub whose database is ready and whose listener is bound.
pub struct App {
    /// Shared state (also handy for tests).
    pub state: AppState,
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    acceptor: TcpAcceptor,
    stop_workers: tokio::sync::watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    scheduler: Option<tokio_cron_scheduler::JobScheduler>,
}

impl App {
    /// Connects and migrates the database and binds the listen address.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let db = Db::connect(&config.database_url, config.database_max_connections)
            .await
            .context("connecting to the database")?;
        db.migrate().await.context("migrating the database")?;
        Self::build_with_db(config, db).await
    }

    /// Like [`App::build`] on an already migrated database.
    pub async fn build_with_db(config: Config, db: Db) -> anyhow::Result<App> {
        let acceptor = TcpListener::bind(config.bind.clone())
            .into_acceptor()
            .await
            .with_context(|| format!("binding {}", config.bind))?;
        let addr = acceptor
            .local_addr()
            .into_iter()
            .find_map(|a| a.as_socket_addr().copied())
            .context("the listener has no socket address")?;
        let key = SecretKey::resolve(
            config.secret_key.as_ref().map(|k| k.0.as_str()),
            &config.database_url,
        )?;
        let key = Arc::new(key);
        let webhooks = Webhooks::new(db.clone(), key.clone());
        let inbox = Inbox::start(db.clone());
        let public_base = config.public_base_url(addr);
        let (stop_workers, stop) = tokio::sync::watch::channel(false);
        // Receipts left in the inbox by a previous run are applied from here on.
        // Each worker counts its own statements (`tandem_db_worker_statements_total`).
        let mut worker_dbs: Vec<(&'static str, Db)> = Vec::new();
        let mut worker_db = |name: &'static str| {
            let own = db.with_own_statement_counter();
            worker_dbs.push((name, own.clone()));
            own
        };
        let worker = InboxWorker::new(worker_db("inbox"), webhooks.clone(), inbox.clone());
        let mut workers = Vec::new();
        // Every instance drops a webhook source another one changed (PostgreSQL).
        workers.push(tokio::spawn(
            webhooks.clone().listen_for_changes(stop.clone()),
        ));
        if config.inbox_worker {
            workers.push(tokio::spawn(worker.run(stop.clone())));
        }
        let feed = EventFeed::start(worker_db("feed"), stop.clone())
            .await
            .context("starting the event feed")?;
        let settings = OutboundSettings::from_config(&config);
        let metrics = Metrics::new();
        if config.webhook_worker {
            let wake = Arc::new(tokio::sync::Notify::new());
            let fanout = Fanout::new(worker_db("fanout"));
            workers.push(tokio::spawn(fanout.run(
                feed.clone(),
                wake.clone(),
                stop.clone(),
            )));
            let worker = DeliveryWorker::new(
                worker_db("deliveries"),
                key.clone(),
                settings.clone(),
                wake,
                metrics.clone(),
            );
            workers.push(tokio::spawn(worker.run(stop.clone())));
        }
        let outbound = OutboundContext {
            key: key.clone(),
            settings,
            feed,
        };
        let syncer = Syncer::new(
            worker_db("crm-sync"),
            key.clone(),
            CrmSettings {
                timeout: Duration::from_millis(config.crm_timeout_ms),
                retry_budget: Duration::from_secs(config.crm_retry_budget_secs),
                allow_private: config.webhook_allow_private_targets,
            },
        );
        let jobs = Jobs::new(
            worker_db("jobs"),
            Duration::from_secs(config.job_lease_secs),
        )
        .with_syncer(syncer)
        .with_retention(config.retention_periods().map_err(|e| anyhow::anyhow!(e))?);
        let scheduler = if config.scheduler {
            Some(
                start_scheduler(jobs.clone(), &config)
                    .await
                    .context("starting the job scheduler")?,
            )
        } else {
            None
        };
        let sync_trigger = SyncTrigger::start(jobs.clone());
        let sockets = crate::http::sockets::SocketLimits::new(
            config.ws_max_per_address,
            config.ws_max_per_key,
        );
        let state = AppState {
            schema: LimitedSchema::new(
                build_schema(
                    db.clone(),
                    crate::graphql::Services {
                        webhooks: webhooks.clone(),
                        jobs,
                        outbound,
                        public_base: public_base.clone(),
                        apply_limiter: crate::domain::applications::ApplyLimiter::new(
                            config.apply_rate_limit,
                        ),
                        stripe: match &config.stripe_api_key {
                            Some(key) => Some(std::sync::Arc::new(
                                crate::domain::stripe_transfers::StripeTransfers::new(
                                    &config.stripe_api_base,
                                    &key.0,
                                )?,
                            )),
                            None => None,
                        },
                        kpis: crate::domain::kpis::KpiCache::counted(metrics.clone()),
                    },
                ),
                db.clone(),
            ),
            db,
            worker_dbs: std::sync::Arc::new(worker_dbs),
            metrics,
            config,
            webhooks,
            inbox,
            public_base,
            sync_trigger,
            sockets,
        };
        Ok(App {
            state,
            addr,
            acceptor,
            stop_workers,
            workers,
            scheduler,
        })
    }

    /// The base URL clients use.
    pub fn base_url(&self) -> String {
        self.state.public_base.clone()
    }

    /// On a database without an admin key, creates one and returns its token.
    pub async fn ensure_admin_key(&self) -> anyhow::Result<Option<String>> {
        if has_admin_key(&self.state.db)
            .await
            .map_err(ApiError::into_anyhow)?
        {
            return Ok(None);
        }
        let created = create_key(
            &self.state.db,
            "initial admin",
            ApiKeyRole::Admin,
            None,
            &[],
        )
        .await
        .map_err(ApiError::into_anyhow)?;
        Ok(Some(created.token))
    }

    /// Serves until `shutdown` completes, then drains in-flight requests (up to 10 s).
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> std::io::Result<()> {
        let endpoint = routes(self.state);
        let served = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(endpoint, shutdown, Some(Duration::from_secs(10)))
            .await;
        // No new job runs; a run in progress is cut at exit and its lease expires.
        if let Some(mut scheduler) = self.scheduler {
            let _ = scheduler.shutdown().await;
        }
        // Let the workers finish their current transaction; an interrupted one rolls back.
        let _ = self.stop_workers.send(true);
        for worker in self.workers {
            let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
        }
        served
    }
}

#[cfg(unix)]
fn listen(
    kind: tokio::signal::unix::SignalKind,
    name: &str,
) -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(kind) {
        Ok(sig) => Some(sig),
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for {name}");
            None
        }
    }
}

#[cfg(unix)]
async fn received(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig.as_mut() {
        Some(sig) => {
            sig.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is called (not when
/// the future is first polled), so a signal arriving right after start-up is not missed.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    let (mut terminate, mut interrupt) = (
        listen(tokio::signal::unix::SignalKind::terminate(), "SIGTERM"),
        listen(tokio::signal::unix::SignalKind::interrupt(), "SIGINT"),
    );
    async move {
        #[cfg(unix)]
        tokio::select! {
            _ = received(&mut terminate) => {},
            _ = received(&mut interrupt) => {},
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown signal received, draining");
    }
}
