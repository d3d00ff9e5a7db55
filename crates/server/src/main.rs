//! The `tally` command.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tally_server::config::{Overrides, Settings};
use tally_server::{openapi, telemetry, Application};

mod demo;

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Gateway, credit ledger and dashboard for a paid API"
)]
struct Cli {
    /// TOML configuration file (settings: defaults < file < TALLY_* env < flags).
    #[arg(long, global = true, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: REST API, dashboard and gateway.
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(DbArgs),
    /// Print the OpenAPI document as JSON.
    Openapi,
    /// Fill a namespace with realistic traffic through a running server's gateway (O4).
    Demo(DemoArgs),
}

#[derive(Args)]
struct DemoArgs {
    /// Base URL of the running server.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "TALLY_DEMO_URL")]
    url: String,
    /// Account to use; signed up when it does not exist. On a new server the
    /// first account is an operator, which lets the demo add demo APIs and
    /// grant live credits.
    #[arg(long, default_value = "demo@example.com", env = "TALLY_DEMO_EMAIL")]
    email: String,
    #[arg(long, default_value = "demo-password", env = "TALLY_DEMO_PASSWORD")]
    password: String,
    /// Namespace id or name (a new name is created); default the account's first.
    #[arg(long)]
    namespace: Option<String>,
    /// Number of gateway calls.
    #[arg(long, default_value_t = 300)]
    calls: u32,
    /// Spread the calls over this many seconds (default: as fast as possible).
    #[arg(long)]
    duration: Option<u64>,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Do not add the demo APIs to the catalog.
    #[arg(long)]
    no_catalog: bool,
    /// Seed for a repeatable traffic mix.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args)]
struct DbArgs {
    /// Directory for the SQLite database (default ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database URL (postgres://… or sqlite:…); default SQLite in the data directory.
    #[arg(long)]
    database_url: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 0.0.0.0:8080; port 0 picks a free port.
    #[arg(long)]
    bind: Option<String>,
    /// Directory of the built dashboard (default frontend/dist).
    #[arg(long)]
    static_dir: Option<PathBuf>,
    #[command(flatten)]
    db: DbArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => {
            let json = openapi::document()
                .to_pretty_json()
                .context("cannot render the OpenAPI document")?;
            println!("{json}");
            Ok(())
        }
        Command::Demo(args) => {
            let opts = demo::DemoOptions {
                url: args.url,
                email: args.email,
                password: args.password,
                namespace: args.namespace,
                calls: args.calls,
                duration: args.duration.map(std::time::Duration::from_secs),
                concurrency: args.concurrency,
                no_catalog: args.no_catalog,
                seed: args.seed,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the runtime")?
                .block_on(demo::run(opts))
        }
        Command::Serve(args) => {
            let overrides = Overrides {
                bind: args.bind,
                data_dir: args.db.data_dir,
                database_url: args.db.database_url,
                static_dir: args.static_dir,
            };
            let settings = Settings::load(cli.config.as_deref(), &overrides)?;
            telemetry::init_tracing(settings.log_format);
            actix_web::rt::System::new().block_on(async move {
                let app = Application::build(settings).await?;
                app.run_until_stopped().await?;
                tracing::info!("stopped");
                Ok(())
            })
        }
        Command::Migrate(args) => {
            let overrides = Overrides {
                data_dir: args.data_dir,
                database_url: args.database_url,
                ..Overrides::default()
            };
            let settings = Settings::load(cli.config.as_deref(), &overrides)?;
            telemetry::init_tracing(settings.log_format);
            actix_web::rt::System::new().block_on(async move {
                let store = tally_store::Store::connect(&tally_store::ConnectOptions {
                    url: settings.database_url()?,
                    max_connections: 1,
                })
                .await?;
                store.migrate().await?;
                tracing::info!(backend = store.backend().as_str(), "migrations applied");
                Ok(())
            })
        }
    }
}
