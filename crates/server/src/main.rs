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
    /// Check the configuration as `serve` would (file, TALLY_* variables and
    /// these flags), print the settings in effect, and exit: 0 when it can
    /// start, 1 with the reason when not. Touches no database.
    CheckConfig(ServeArgs),
    /// Print the OpenAPI document as JSON.
    Openapi,
    /// Fill a namespace with realistic traffic through a running server's gateway (O4).
    Demo(DemoArgs),
    /// Manage operators directly in the configured database (A1).
    Admin(AdminArgs),
    /// Back up every table to one portable archive, list backups, or restore
    /// one into an empty database of either backend (O1).
    Backup(BackupArgs),
}

#[derive(Args)]
struct BackupArgs {
    #[command(subcommand)]
    command: BackupCommand,
    #[command(flatten)]
    db: DbArgs,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Write a backup of the configured database, from one snapshot (the
    /// server may keep running).
    Create {
        /// Where to write it: a directory (default <data_dir>/backups) or a
        /// file name ending in .tar.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Include the JWT signing secret and upstream credentials. Without
        /// them a restored server signs everyone out and its APIs need their
        /// credentials again.
        #[arg(long)]
        include_secrets: bool,
    },
    /// List the backups in a directory (default <data_dir>/backups).
    List {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Restore a backup into the configured database, which must be empty
    /// (migrated here first). Checked whole before anything is written; on
    /// any error nothing is.
    Restore {
        /// The backup file.
        file: PathBuf,
    },
}

#[derive(Args)]
struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
    #[command(flatten)]
    db: DbArgs,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an account that is an operator. The password is read from
    /// --password-file, else prompted for on a terminal, else read from the
    /// first line of standard input; it is never a command-line argument.
    CreateOperator {
        #[arg(long)]
        email: String,
        #[arg(long)]
        display_name: Option<String>,
        /// A file whose first line is the password.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Make an existing account an operator.
    GrantOperator {
        #[arg(long)]
        email: String,
    },
    /// Take operator rights away from an account (the account stays).
    RevokeOperator {
        #[arg(long)]
        email: String,
    },
    /// List the operators.
    ListOperators,
}

#[derive(Args)]
struct DemoArgs {
    /// Base URL of the running server.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "TALLY_DEMO_URL")]
    url: String,
    /// Account to use; signed up when it does not exist. When the server has no
    /// operator yet and its setup token is in the data directory, the account
    /// becomes the operator through it, which lets the demo add demo APIs and
    /// grant live credits.
    #[arg(long, default_value = "demo@example.com", env = "TALLY_DEMO_EMAIL")]
    email: String,
    /// The account's password. Default: generated on first use and kept in
    /// <data_dir>/demo-password (mode 0600), so later runs sign in again.
    #[arg(long, env = "TALLY_DEMO_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// The server's data directory, where the setup token and the demo
    /// password are kept (default: the `data_dir` setting, ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
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
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Database URL (postgres://… or sqlite:…); default SQLite in the data directory.
    #[arg(long, global = true)]
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

impl ServeArgs {
    /// What these flags change in the settings (`serve` and `check-config`).
    fn overrides(self) -> Overrides {
        Overrides {
            bind: self.bind,
            data_dir: self.db.data_dir,
            database_url: self.db.database_url,
            static_dir: self.static_dir,
        }
    }
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
            let overrides = Overrides {
                data_dir: args.data_dir,
                ..Overrides::default()
            };
            let settings = Settings::load(cli.config.as_deref(), &overrides)?;
            let opts = demo::DemoOptions {
                url: args.url,
                email: args.email,
                password: args.password,
                data_dir: settings.data_dir,
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
            let overrides = args.overrides();
            let settings = Settings::load(cli.config.as_deref(), &overrides)?;
            telemetry::init_tracing(settings.log_format);
            shift_clock_for_tests()?;
            actix_web::rt::System::new().block_on(async move {
                let app = Application::build(settings).await?;
                app.run_until_stopped().await?;
                tracing::info!("stopped");
                Ok(())
            })
        }
        Command::CheckConfig(args) => {
            let overrides = args.overrides();
            let settings = Settings::load(cli.config.as_deref(), &overrides)?;
            let warnings = tally_server::check_settings(&settings)?;
            println!(
                "configuration OK ({}; TALLY_* variables and flags applied)",
                cli.config
                    .as_deref()
                    .map_or("no config file".to_owned(), |f| format!(
                        "file {}",
                        f.display()
                    ))
            );
            for w in &warnings {
                println!("warning: {w}");
            }
            if settings.backup.every_hours == 0 {
                println!(
                    "note: no backup schedule (backup.every_hours = 0): take backups by hand or set one"
                );
            }
            // Secret settings print as [REDACTED]; upstream credentials too.
            let mut shown = settings;
            for api in &mut shown.catalog {
                for u in api
                    .upstreams
                    .iter_mut()
                    .chain(api.test_upstreams.iter_mut())
                {
                    if u.api_key.is_some() {
                        u.api_key = Some("[REDACTED]".into());
                    }
                }
            }
            println!("settings in effect (secrets redacted):\n{shown:#?}");
            Ok(())
        }
        Command::Admin(args) => {
            let overrides = Overrides {
                data_dir: args.db.data_dir,
                database_url: args.db.database_url,
                ..Overrides::default()
            };
            let settings = Settings::load(cli.config.as_deref(), &overrides)?;
            telemetry::init_tracing(settings.log_format);
            let password = match &args.command {
                AdminCommand::CreateOperator { password_file, .. } => {
                    Some(read_password(password_file.as_deref())?)
                }
                _ => None,
            };
            actix_web::rt::System::new().block_on(admin(settings, args.command, password))
        }
        Command::Backup(args) => {
            let overrides = Overrides {
                data_dir: args.db.data_dir,
                database_url: args.db.database_url,
                ..Overrides::default()
            };
            let settings = Settings::load(cli.config.as_deref(), &overrides)?;
            telemetry::init_tracing(settings.log_format);
            actix_web::rt::System::new().block_on(backup(settings, args.command))
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

async fn backup(settings: Settings, command: BackupCommand) -> anyhow::Result<()> {
    use tally_store::backup;
    let default_dir = settings.data_dir.join("backups");
    let connect = || async {
        let store = tally_store::Store::connect(&tally_store::ConnectOptions {
            url: settings.database_url()?,
            max_connections: 2,
        })
        .await?;
        store.migrate().await?;
        anyhow::Ok(store)
    };
    match command {
        BackupCommand::Create {
            out,
            include_secrets,
        } => {
            let out = out.unwrap_or(default_dir);
            let path = if out.extension().is_some_and(|e| e == "tar") {
                out
            } else {
                out.join(backup::file_name(tally_store::now_ms()))
            };
            let store = connect().await?;
            let m = backup::create(&store, &path, backup::CreateOptions { include_secrets })
                .await
                .with_context(|| format!("backup to {} failed", path.display()))?;
            backup::record_success(&store, m.created_at).await?;
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            println!(
                "{}: {} tables, {} rows, {} bytes, schema {}, from {}{}",
                path.display(),
                m.tables.len(),
                m.rows(),
                size,
                m.schema_version,
                m.source_backend,
                if m.secrets_included {
                    ", secrets included"
                } else {
                    ", without the JWT secret and upstream credentials"
                }
            );
        }
        BackupCommand::List { dir } => {
            let dir = dir.unwrap_or(default_dir);
            let listed = backup::list(&dir)?;
            if listed.is_empty() {
                println!("no backups in {}", dir.display());
            }
            for b in listed {
                match b.manifest {
                    Ok(m) => println!(
                        "{}  {} bytes  {} rows  schema {}  from {}{}",
                        b.path.display(),
                        b.size,
                        m.rows(),
                        m.schema_version,
                        m.source_backend,
                        if m.secrets_included { "  secrets" } else { "" }
                    ),
                    Err(e) => println!("{}  {} bytes  unreadable: {e}", b.path.display(), b.size),
                }
            }
        }
        BackupCommand::Restore { file } => {
            let store = connect().await?;
            let r = backup::restore(&store, &file).await.with_context(|| {
                format!("restore of {} failed; nothing was written", file.display())
            })?;
            println!(
                "restored {} tables, {} rows from {} ({} backup of schema {}) into {}",
                r.rows.len(),
                r.rows.values().sum::<i64>(),
                file.display(),
                r.manifest.source_backend,
                r.manifest.schema_version,
                store.backend().as_str()
            );
            if !r.manifest.secrets_included {
                println!(
                    "the backup holds no JWT secret or upstream credentials: everyone signs in \
                     again, and APIs with upstream credentials need them entered again"
                );
            }
        }
    }
    Ok(())
}

/// `TALLY_TEST_CLOCK_OFFSET_SECS`: runs the server as if that many seconds
/// later (or earlier), for browser tests of what happens as time passes (a
/// backup growing overdue). Never for a real server: it says so in its log.
fn shift_clock_for_tests() -> anyhow::Result<()> {
    let Ok(offset) = std::env::var("TALLY_TEST_CLOCK_OFFSET_SECS") else {
        return Ok(());
    };
    let secs: i64 = offset
        .trim()
        .parse()
        .context("TALLY_TEST_CLOCK_OFFSET_SECS must be a whole number of seconds")?;
    tally_store::clock::travel_to(tally_store::now_ms() + secs.saturating_mul(1000));
    tracing::warn!(
        offset_secs = secs,
        "TALLY_TEST_CLOCK_OFFSET_SECS moves this server's clock: for tests only"
    );
    Ok(())
}

/// The new operator's password: from a file, a prompt, or standard input.
fn read_password(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal};
    let first_line = |text: &str| text.lines().next().unwrap_or_default().to_owned();
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        return Ok(first_line(&text));
    }
    if std::io::stdin().is_terminal() {
        let password = rpassword::prompt_password("Password for the new operator: ")?;
        let again = rpassword::prompt_password("The same password again: ")?;
        anyhow::ensure!(password == again, "the two passwords differ");
        return Ok(password);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(first_line(&line))
}

async fn admin(
    settings: Settings,
    command: AdminCommand,
    password: Option<String>,
) -> anyhow::Result<()> {
    use tally_server::auth::bootstrap;
    let store = tally_store::Store::connect(&tally_store::ConnectOptions {
        url: settings.database_url()?,
        max_connections: 2,
    })
    .await
    .context("cannot connect to the database")?;
    store.migrate().await.context("database migration failed")?;
    match command {
        AdminCommand::CreateOperator {
            email,
            display_name,
            ..
        } => {
            let passwords = tally_server::auth::Passwords::new(&settings.auth)?;
            let account = bootstrap::create_operator(
                &store,
                &settings,
                &passwords,
                &email,
                &password.unwrap_or_default(),
                display_name.as_deref(),
            )
            .await?;
            println!("created operator {} ({})", account.email, account.id);
        }
        AdminCommand::GrantOperator { email } => {
            let account = bootstrap::grant_operator(&store, &settings, &email).await?;
            println!("{} is an operator", account.email);
        }
        AdminCommand::RevokeOperator { email } => {
            let left = bootstrap::revoke_operator(&store, &email).await?;
            println!("{email} is no longer an operator");
            if left == 0 {
                println!(
                    "no operator is left: the next start of the server makes a new setup token"
                );
            }
        }
        AdminCommand::ListOperators => {
            for account in bootstrap::list_operators(&store).await? {
                println!("{}\t{}", account.email, account.id);
            }
        }
    }
    store.close().await;
    Ok(())
}
