//! The `tandem` command line (clap): `serve` (default), `migrate`, `keys create`, `schema`,
//! `bench-seed`.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::{EnvFilter, fmt};

use tandem::{
    app::{App, shutdown_signal},
    config::{Config, FlagOverrides, LogFormat},
    db::Db,
    domain::auth::{ApiKeyRole, create_key},
};

/// Tandem: a self-hosted hub for B2B partner and referral programs.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about)]
pub struct Cli {
    /// Database URL (`sqlite://…` or `postgres://…`); overrides TANDEM_DATABASE_URL.
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the GraphQL gateway (the default).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API keys.
    Keys {
        /// Key operation.
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print the GraphQL SDL.
    Schema,
    /// Seed a benchmark data set (partners with many referrals) and print a partner token.
    BenchSeed(BenchSeedArgs),
    /// Benchmark webhook ingest against a running hub (see bench/ingest.sh).
    BenchIngest(crate::bench::ingest::BenchIngestArgs),
    /// Load and check several instances sharing one PostgreSQL, one killed mid-run (see
    /// bench/scaleout.sh).
    BenchScaleout(crate::bench::scaleout::BenchScaleoutArgs),
    /// Benchmark the commission engine, one phase per run (see bench/reconcile.sh).
    BenchReconcile(crate::bench::reconcile::BenchReconcileArgs),
    /// Benchmark recurring commissions on invoices, one phase per run (see bench/billing.sh).
    BenchBilling(crate::bench::billing::BenchBillingArgs),
    /// Benchmark the registration sweeps: idle cost and breaching due SLAs from several
    /// instances at once (see bench/sla.sh).
    BenchSla(crate::bench::sla::BenchSlaArgs),
    /// Benchmark partner-group evaluation (promotions, idle runs, reviews) over many
    /// partners and deals (see bench/groups.sh).
    BenchGroups(crate::bench::groups::BenchGroupsArgs),
}

/// `tandem serve`.
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Listen address; overrides TANDEM_BIND.
    #[arg(long)]
    pub bind: Option<String>,
    /// Seed a demo program with partners, referrals, deals and ledger entries (once).
    #[arg(long)]
    pub demo: bool,
}

/// `tandem keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its token once.
    Create {
        /// admin, partner or integration.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The partner a partner key is bound to.
        #[arg(long)]
        partner_id: Option<String>,
        /// A program an integration key may read events of (repeatable).
        #[arg(long = "program-id")]
        program_ids: Vec<String>,
        /// A label for the key.
        #[arg(long)]
        name: String,
    },
}

/// Key roles on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Program manager.
    Admin,
    /// One partner.
    Partner,
    /// Technology-integration partner.
    Integration,
}

/// `tandem bench-seed`.
#[derive(Debug, clap::Args)]
pub struct BenchSeedArgs {
    /// Number of partners.
    #[arg(long, default_value_t = 10_000)]
    pub partners: u32,
    /// Number of referrals, spread over the partners.
    #[arg(long, default_value_t = 200_000)]
    pub referrals: u32,
}

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Runs the command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or(Command::Serve(ServeArgs::default()));
    let mut flags = FlagOverrides {
        database_url: cli.database_url,
        bind: None,
    };
    if let Command::Serve(args) = &command {
        flags.bind = args.bind.clone();
    }
    if let Command::Schema = command {
        print!("{}", tandem::graphql::sdl());
        return Ok(());
    }
    let config = Config::load(&flags).context("loading configuration")?;
    init_tracing(&config);
    match command {
        Command::Serve(args) => serve(config, args.demo).await,
        Command::Migrate => {
            let db = Db::connect(&config.database_url, 1).await?;
            db.migrate().await?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Keys {
            command:
                KeysCommand::Create {
                    role,
                    partner_id,
                    program_ids,
                    name,
                },
        } => {
            let db = Db::connect(&config.database_url, 1).await?;
            db.migrate().await?;
            let role = match role {
                RoleArg::Admin => ApiKeyRole::Admin,
                RoleArg::Partner => ApiKeyRole::Partner,
                RoleArg::Integration => ApiKeyRole::Integration,
            };
            let created = create_key(&db, &name, role, partner_id.as_deref(), &program_ids)
                .await
                .map_err(tandem::error::ApiError::into_anyhow)?;
            println!("{}", created.token);
            Ok(())
        }
        Command::BenchIngest(args) => {
            println!("{}", crate::bench::ingest::run(args).await?);
            Ok(())
        }
        Command::BenchScaleout(args) => {
            println!(
                "{}",
                crate::bench::scaleout::run(args, &config.database_url).await?
            );
            Ok(())
        }
        Command::BenchSeed(args) => {
            let db = Db::connect(&config.database_url, 2).await?;
            db.migrate().await?;
            let seeded = crate::bench::seed::seed(&db, args.partners, args.referrals).await?;
            println!("{}", serde_json::to_string(&seeded)?);
            Ok(())
        }
        Command::BenchReconcile(args) => {
            let db = Db::connect(&config.database_url, 4).await?;
            db.migrate().await?;
            let line = crate::bench::reconcile::run(&db, &args).await?;
            println!("{}", serde_json::to_string(&line)?);
            Ok(())
        }
        Command::BenchBilling(args) => {
            let db = Db::connect(&config.database_url, 4).await?;
            db.migrate().await?;
            let line = crate::bench::billing::run(&db, &args).await?;
            println!("{}", serde_json::to_string(&line)?);
            Ok(())
        }
        Command::BenchSla(args) => {
            let db = Db::connect(&config.database_url, 4).await?;
            db.migrate().await?;
            let line = crate::bench::sla::run(&db, &config.database_url, &args).await?;
            println!("{}", serde_json::to_string(&line)?);
            Ok(())
        }
        Command::BenchGroups(args) => {
            let db = Db::connect(&config.database_url, 4).await?;
            db.migrate().await?;
            let line = crate::bench::groups::run(&db, &args).await?;
            println!("{}", serde_json::to_string(&line)?);
            Ok(())
        }
        Command::Schema => unreachable!("handled above"),
    }
}

async fn serve(config: Config, demo: bool) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let app = App::build(config).await?;
    let base = app.base_url();
    if let Some(token) = app.ensure_admin_key().await? {
        eprintln!("\nCreated the first admin API key (shown once, store it now):\n\n    {token}\n");
        eprintln!("GraphiQL: {base}/graphql  (send the header  Authorization: Bearer {token})\n");
    }
    if demo && let Some(seeded) = crate::demo::seed_demo(&app.state.db).await? {
        eprintln!(
            "Seeded the demo program {} with partners; partner key for {} (shown once):\n\n    {}\n",
            seeded.program_id, seeded.partner_name, seeded.partner_token
        );
    }
    if demo {
        eprintln!("Console: {base}/  (sign in with the admin key, or with a partner's key)\n");
    }
    tracing::info!(address = %app.addr, "Tandem listening; console at {base}/, GraphiQL at {base}/graphql");
    app.run_until(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
