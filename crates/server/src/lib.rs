//! The Tally server: REST API, gateway and dashboard hosting.
//!
//! `Application::build` does everything `tally serve` does short of blocking:
//! connect and migrate the database, load or create the signing secret, record
//! the `startup` event, bind the listener (port 0 picks a free port). Tests use it
//! the same way the binary does.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod egress;
pub mod error;
pub mod gateway;
pub mod headers;
pub mod input;
pub mod leadership;
pub mod monitoring;
pub mod openapi;
pub mod routes;
pub mod services;
pub mod spa;
pub mod state;
pub mod telemetry;
pub mod throttle;
pub mod upkeep;
pub mod views;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{fn_service, Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use anyhow::Context;
use secrecy::ExposeSecret;
use tally_common::Severity;
use tally_store::events::NewEvent;
use tally_store::{ConnectOptions, Store};
use tracing_actix_web::TracingLogger;
use utoipa_actix_web::AppExt;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::{Passwords, Tokens};
use crate::config::Settings;
use crate::error::{extractors, ApiError};
use crate::state::AppState;

/// Largest JSON body the API accepts.
const JSON_LIMIT: usize = 1024 * 1024;

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        // Before any task records a metric.
        telemetry::metrics_handle();
        // A policy or an outbound URL that cannot stand stops the start
        // before anything is written.
        for warning in check_settings(&settings)? {
            tracing::warn!("{warning}");
        }
        let egress = Arc::new(egress::Egress::new(&settings.egress).map_err(anyhow::Error::msg)?);
        let throttle = Arc::new(
            throttle::AuthThrottle::new(
                &settings.auth,
                throttle::memory::MemoryLimiter::new(settings.auth.throttle_max_entries),
            )
            .context("invalid auth settings")?,
        );
        let url = settings
            .database_url()
            .context("cannot create the data directory")?;
        let store = Store::connect(&ConnectOptions {
            url: url.clone(),
            max_connections: settings.database_max_connections,
        })
        .await
        .context("cannot connect to the database")?;
        store.migrate().await.context("database migration failed")?;

        let secret = match &settings.auth.jwt_secret {
            // (`check_settings` warned of a short one.)
            Some(secret) if !secret.expose_secret().is_empty() => secret.expose_secret().to_owned(),
            _ => {
                let mut conn = store.conn().await?;
                tally_store::settings::get_or_insert(
                    &mut conn,
                    "jwt_secret",
                    &auth::tokens::generate_secret(),
                )
                .await?
            }
        };
        let tokens = Tokens::new(
            secret.as_bytes(),
            settings.auth.access_token_ttl_secs,
            settings.auth.refresh_token_ttl_secs,
        );
        let auth_settings = settings.auth.clone();
        let passwords = tokio::task::spawn_blocking(move || Passwords::new(&auth_settings))
            .await
            .context("argon2 setup panicked")??;

        {
            let mut conn = store.conn().await?;
            tally_store::events::insert(
                &mut conn,
                NewEvent {
                    namespace_id: None,
                    environment: None,
                    kind: "startup",
                    severity: Severity::Info,
                    message: &format!(
                        "Tally {} started on {}",
                        env!("CARGO_PKG_VERSION"),
                        store.backend().as_str()
                    ),
                    actor: Some("system"),
                },
            )
            .await?;
        }

        let mut gateway_settings = settings.gateway.clone();
        gateway_settings.egress = egress.clone();
        gateway_settings.fallback_poll_ms = settings.cluster.fallback_poll_ms;
        // On PostgreSQL every instance spends from credit leases, one alone
        // as well as several (O5); SQLite is one instance, exact in memory.
        let instance = cluster::Cluster::new_instance_id();
        let accounts = Arc::new(match store.backend() {
            tally_store::Backend::Sqlite => services::accounts::Accounts::new(store.clone()),
            tally_store::Backend::Postgres => services::accounts::Accounts::leased(
                store.clone(),
                services::accounts::Leasing {
                    instance: instance.clone(),
                    window: std::time::Duration::from_millis(
                        settings.cluster.lease_window_ms.max(1),
                    ),
                    max: settings.cluster.lease_max_micros.max(1),
                    idle: std::time::Duration::from_secs(settings.cluster.lease_idle_secs),
                },
            ),
        });
        let redis = gateway::shared_limits::RedisSettings::from_settings(&settings)?;
        let gateway = gateway::Gateway::new(
            store.clone(),
            gateway_settings,
            &settings.catalog,
            accounts.clone(),
            redis,
        )
        .await
        .context("cannot load the catalog")?;
        gateway.start_background();

        let listener = TcpListener::bind(&settings.bind)
            .with_context(|| format!("cannot listen on {}", settings.bind))?;
        let addr = listener.local_addr()?;
        let cluster = cluster::Cluster::join(
            store.clone(),
            url,
            instance,
            base_url(addr),
            settings.cluster.clone(),
        )
        .await
        .context("cannot register this instance")?;
        cluster.start(&gateway);
        let leadership = cluster.leadership.clone();
        monitoring::start_pruner(
            store.clone(),
            settings.monitoring.clone(),
            leadership.clone(),
        );
        let check_every =
            std::time::Duration::from_millis(settings.billing.alert_check_interval_ms);
        services::billing::start_alert_checker(store.clone(), check_every, leadership.clone());
        upkeep::start(
            store.clone(),
            gateway.clone(),
            settings.webhooks.clone(),
            check_every,
            leadership.clone(),
        );
        auth::bootstrap::prepare_setup(&store, &settings, &base_url(addr))
            .await
            .context("cannot prepare the setup token")?;
        let settings = Arc::new(settings);
        let backups = Arc::new(services::backups::Backups::default());
        services::backups::start_schedule(
            store.clone(),
            settings.clone(),
            backups.clone(),
            leadership.clone(),
            check_every,
        );
        // Webhook URLs come from any developer of any namespace: unless the
        // operator allows it, they never reach non-public addresses.
        let webhook_egress = egress::Egress::new(&egress::EgressSettings {
            deny_private: settings.egress.deny_private || !settings.webhooks.allow_private,
            ..settings.egress.clone()
        })
        .map_err(anyhow::Error::msg)?;
        let webhooks = services::webhooks::Worker::new(
            store.clone(),
            settings.webhooks.clone(),
            webhook_egress,
        )
        .context("cannot build the webhook client")?;
        webhooks.start(leadership.clone());
        let state = web::Data::new(AppState {
            store,
            tokens,
            passwords,
            accounts,
            throttle,
            gateway,
            cluster,
            egress,
            settings,
            backups,
            webhooks,
            started_at: tally_store::clock::now(),
            started: Instant::now(),
        });
        let server = {
            let state = state.clone();
            let drain_secs = state.settings.shutdown_timeout_secs;
            // SIGTERM: stop accepting, let calls and streams in flight
            // finish for up to `shutdown_timeout_secs`, then stop.
            HttpServer::new(move || app(state.clone()))
                .shutdown_timeout(drain_secs)
                .listen(listener)?
                .run()
        };
        tracing::info!(
            backend = state.store.backend().as_str(),
            "listening on http://{addr}"
        );
        Ok(Application {
            port: addr.port(),
            server,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// The gateway, for tests and benchmarks that look at its state.
    pub fn gateway(&self) -> &Arc<gateway::Gateway> {
        &self.state.gateway
    }

    /// Serves until the server stops (SIGINT or SIGTERM: in-flight requests
    /// finish), then leaves the cluster, returning this instance's leases.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let done = self.server.await;
        self.state.cluster.leave().await;
        done
    }
}

/// How to reach a server listening on `addr` from this machine.
fn base_url(addr: std::net::SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}", addr.port())
}

/// Checks settings as `tally serve` would before touching the database
/// (`tally check-config` prints the result): an error stops the start; the
/// returned warnings are logged.
pub fn check_settings(settings: &Settings) -> anyhow::Result<Vec<String>> {
    let mut warnings = Vec::new();
    let policy =
        egress::Policy::new(&settings.egress).map_err(|e| anyhow::anyhow!("egress: {e}"))?;
    check_egress(settings, &policy)?;
    if !settings.operators.is_empty() {
        anyhow::bail!(
            "the `operators` setting no longer makes operators (anyone could sign up with \
             one of its emails first). Make each one an operator with \
             `tally admin grant-operator --email EMAIL` (or create the account with \
             `tally admin create-operator --email EMAIL`), then remove `operators` from the \
             configuration"
        );
    }
    if let Some(url) = &settings.database_url {
        let url = url.expose_secret().trim();
        if !url.is_empty() && tally_store::Backend::from_url(url).is_none() {
            anyhow::bail!("database_url must start with sqlite: or postgres:");
        }
    }
    let mut slugs = std::collections::HashSet::new();
    for api in &settings.catalog {
        gateway::catalog::validate(api)
            .map_err(|e| anyhow::anyhow!("catalog API '{}' in the config file: {e}", api.slug))?;
        if !slugs.insert(api.slug.as_str()) {
            anyhow::bail!(
                "catalog API '{}' appears twice in the config file",
                api.slug
            );
        }
    }
    gateway::shared_limits::RedisSettings::from_settings(settings)?;
    if settings
        .auth
        .jwt_secret
        .as_ref()
        .is_some_and(|s| !s.expose_secret().is_empty() && s.expose_secret().len() < 32)
    {
        warnings.push("auth.jwt_secret is shorter than 32 bytes; use a longer one".to_owned());
    }
    let loopback = settings
        .bind
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback());
    if settings.metrics_token.is_none() && !loopback {
        warnings.push(format!(
            "/metrics is open to anyone who reaches {}; set metrics_token or keep the port private",
            settings.bind
        ));
    }
    Ok(warnings)
}

/// The config file's outbound URLs (catalog upstreams, the price feed) must
/// pass the egress policy, or the server does not start.
fn check_egress(settings: &Settings, policy: &egress::Policy) -> anyhow::Result<()> {
    for api in &settings.catalog {
        for u in api.upstreams.iter().chain(&api.test_upstreams) {
            policy.check_url(&u.url).map_err(|why| {
                anyhow::anyhow!(
                    "catalog API '{}' in the config file: upstream {}: {why}",
                    api.slug,
                    u.url
                )
            })?;
        }
    }
    if let Some(url) = settings.billing.price_url.as_deref().map(str::trim) {
        if !url.is_empty() {
            policy
                .check_url(&url.replace("{currency}", "USDC"))
                .map_err(|why| anyhow::anyhow!("billing.price_url: {why}"))?;
        }
    }
    Ok(())
}

/// The whole HTTP application for one worker.
fn app(
    state: web::Data<AppState>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let static_dir = state.settings.static_dir.clone();
    let (app, api) = App::new()
        .app_data(state)
        .app_data(
            web::JsonConfig::default()
                .limit(JSON_LIMIT)
                .error_handler(extractors::json),
        )
        .app_data(web::PathConfig::default().error_handler(extractors::path))
        .app_data(web::QueryConfig::default().error_handler(extractors::query))
        .into_utoipa_app()
        .openapi(openapi::base())
        .configure(routes::configure)
        .split_for_parts();
    app.route("/metrics", web::get().to(routes::system::metrics))
        .service(
            SwaggerUi::new("/api/docs/{_:.*}").url("/api/openapi.json", openapi::complete(api)),
        )
        .default_service(fallback_service(static_dir))
        .wrap(from_fn(headers::security))
        .wrap(from_fn(telemetry::request_context))
        .wrap(TracingLogger::default())
}

/// Every request no route took: the dashboard's files, or a JSON 404.
fn fallback_service(
    static_dir: PathBuf,
) -> impl actix_web::dev::ServiceFactory<
    ServiceRequest,
    Config = (),
    Response = ServiceResponse,
    Error = actix_web::Error,
    InitError = (),
> + 'static {
    fn_service(move |req: ServiceRequest| {
        let dir = static_dir.clone();
        async move {
            let (req, _) = req.into_parts();
            let res = spa_fallback(&req, &dir).await;
            Ok(ServiceResponse::new(req, res))
        }
    })
}

/// Unknown API paths and methods other than GET and HEAD get a JSON 404;
/// anything else is the dashboard's (see `spa`).
async fn spa_fallback(req: &HttpRequest, static_dir: &std::path::Path) -> HttpResponse {
    let path = req.path();
    let is_get = req.method() == actix_web::http::Method::GET
        || req.method() == actix_web::http::Method::HEAD;
    if headers::is_api_path(path) || !is_get {
        return ApiError::not_found(&format!("route {} {}", req.method(), path)).error_response();
    }
    spa::serve(req, static_dir).await
}
