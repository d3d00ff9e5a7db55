//! The `tally` command.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tally_server::config::{Overrides, Settings};
use tally_server::{openapi, telemetry, Application};

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
