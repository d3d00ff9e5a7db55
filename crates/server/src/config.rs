//! Typed settings (O3): defaults < config file < `TALLY_*` environment < flags.
//!
//! Policy: every setting has a safe default, so `tally serve` with no
//! configuration starts on SQLite under `./data`. Secrets (the JWT secret, a
//! database URL that may hold a password) are `SecretString`, whose `Debug`
//! prints `[REDACTED]`, so logging the settings never leaks them.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tally_common::Currency;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free port.
    pub bind: String,
    /// Where the SQLite database (and later backups) live.
    pub data_dir: PathBuf,
    /// `postgres://…` or `sqlite:…`; empty means SQLite at `<data_dir>/tally.db`.
    pub database_url: Option<SecretString>,
    pub database_max_connections: u32,
    /// The built SPA (trunk's dist folder), served at `/`.
    pub static_dir: PathBuf,
    pub log_format: LogFormat,
    pub auth: AuthSettings,
    /// No longer supported: an email in a config file never makes an operator
    /// (anyone could sign up with it first). `tally serve` refuses to start
    /// while it is set and names `tally admin grant-operator` instead.
    pub operators: Vec<String>,
    /// Catalog APIs owned by this file: created or replaced at every start.
    pub catalog: Vec<tally_common::CatalogApiConfig>,
    pub gateway: GatewaySettings,
    pub billing: BillingSettings,
    pub monitoring: MonitoringSettings,
    /// Which hosts and addresses outbound calls may reach (`[egress]`).
    pub egress: crate::egress::EgressSettings,
    /// `redis://host:port/db`: per-key rate limits and quotas shared by every
    /// instance (O5). Unset, each instance limits on its own (one instance).
    pub redis_url: Option<SecretString>,
    /// Several instances on one PostgreSQL database (O5).
    pub cluster: ClusterSettings,
    /// Backups (O1): where they go, and an optional schedule.
    pub backup: BackupSettings,
    /// Webhook deliveries (W1, W2).
    pub webhooks: WebhookSettings,
    /// When set, `/metrics` answers only requests with
    /// `Authorization: Bearer <metrics_token>` (O3).
    pub metrics_token: Option<SecretString>,
    /// On SIGTERM, how long calls and streams in flight may take to finish
    /// before the server stops anyway (O3).
    pub shutdown_timeout_secs: u64,
}

/// Webhook deliveries (`[webhooks]`, W1, W2).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WebhookSettings {
    /// Seconds to wait before each retry after a failed attempt; a delivery
    /// that fails once more than there are entries is marked failed. The
    /// default spans about three days (Standard Webhooks' example).
    pub retry_schedule_secs: Vec<u64>,
    /// Each delay is drawn within this fraction of its value either side
    /// (0.1: ±10%), so receivers that failed together are not retried in a
    /// burst.
    pub jitter: f64,
    /// How long an attempt may take, connection to last byte.
    pub timeout_secs: u64,
    /// An endpoint whose attempts have all failed for this long is disabled
    /// (an event says so); 0: never.
    pub disable_after_secs: u64,
    /// How often each instance looks for due deliveries.
    pub poll_interval_ms: u64,
    /// Deliveries sent at once by one instance (one endpoint at a time each).
    pub concurrency: usize,
    /// Finished deliveries and their attempts are deleted after this many
    /// days; 0: kept.
    pub retention_days: u32,
    /// `key.expiring` goes out this many days before a key's expiry.
    pub key_expiry_warning_days: u32,
    /// Endpoints per namespace.
    pub max_endpoints: usize,
    /// Let webhook URLs reach loopback, private and other non-public
    /// addresses. Off, they are refused (any member with the developer role
    /// registers URLs, and the server would POST into its own network);
    /// networks in `egress.allow` stay reachable either way.
    pub allow_private: bool,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            retry_schedule_secs: vec![5, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 86_400],
            jitter: 0.1,
            timeout_secs: 15,
            disable_after_secs: 5 * 86_400,
            poll_interval_ms: 1_000,
            concurrency: 8,
            retention_days: 30,
            key_expiry_warning_days: 7,
            max_endpoints: 20,
            allow_private: false,
        }
    }
}

/// Backups (`[backup]`, O1).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BackupSettings {
    /// Where backups are written and listed; default `<data_dir>/backups`.
    /// With several instances, shared storage (or one instance's API) keeps
    /// one list.
    pub dir: Option<PathBuf>,
    /// Take a backup this many hours after the last one (0: no schedule).
    pub every_hours: u64,
    /// Scheduled backups kept; older ones are deleted after each new one
    /// (0 keeps every one).
    pub keep: usize,
    /// Whether scheduled backups include the JWT secret and upstream
    /// credentials.
    pub include_secrets: bool,
    /// Owners and admins see a banner when the last backup is older than
    /// this (or there is none and the server is older), in days; 0: never.
    pub overdue_days: u32,
    /// The largest archive a new server accepts for a restore through the
    /// API, in MB (the command line has no limit).
    pub max_restore_mb: u64,
}

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            dir: None,
            every_hours: 0,
            keep: 7,
            include_secrets: false,
            overdue_days: 30,
            max_restore_mb: 16_384,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("data"),
            database_url: None,
            database_max_connections: 10,
            static_dir: PathBuf::from("frontend/dist"),
            log_format: LogFormat::Text,
            auth: AuthSettings::default(),
            operators: Vec::new(),
            catalog: Vec::new(),
            gateway: GatewaySettings::default(),
            billing: BillingSettings::default(),
            monitoring: MonitoringSettings::default(),
            egress: crate::egress::EgressSettings::default(),
            redis_url: None,
            cluster: ClusterSettings::default(),
            backup: BackupSettings::default(),
            webhooks: WebhookSettings::default(),
            metrics_token: None,
            shutdown_timeout_secs: 30,
        }
    }
}

/// Instances sharing one PostgreSQL database and Redis (O5, docs/DEPLOY.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClusterSettings {
    /// Prefix of every Redis key this deployment uses, so several
    /// deployments (or tests) can share one Redis.
    pub redis_prefix: String,
    /// Longest wait for Redis on a call; past it the call is limited by this
    /// instance alone and Redis counts as down for a second.
    pub redis_timeout_ms: u64,
    /// A credit lease of an instance that stopped renewing it returns to the
    /// balance after this long (PostgreSQL).
    pub lease_ttl_secs: u64,
    /// A lease covers the spending of about this long at the recent rate.
    pub lease_window_ms: u64,
    /// Largest lease an instance takes at once (micro-credits).
    pub lease_max_micros: i64,
    /// An unused lease goes back to the balance after this long without calls.
    pub lease_idle_secs: u64,
    /// How often changes are polled while change notifications
    /// (PostgreSQL LISTEN/NOTIFY) work; `gateway.poll_interval_ms` applies
    /// while they do not, and on SQLite.
    pub fallback_poll_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            redis_prefix: "tally".into(),
            redis_timeout_ms: 200,
            lease_ttl_secs: 15,
            lease_window_ms: 2000,
            lease_max_micros: 100_000_000,
            lease_idle_secs: 5,
            fallback_poll_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// HMAC secret for access tokens. When unset, one is generated on first start
    /// and kept in the database, so every instance on that database shares it.
    pub jwt_secret: Option<SecretString>,
    pub access_token_ttl_secs: i64,
    pub refresh_token_ttl_secs: i64,
    /// Argon2id cost. The defaults are OWASP's recommendation (19 MiB, t=2, p=1).
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    /// Password hashes computed at once (each takes `argon2_memory_kib`);
    /// 0: one per CPU. Further sign-ups and logins wait their turn.
    pub max_concurrent_hashes: usize,
    /// How long a sign-up or login waits for a hashing slot before it gets 503
    /// `unavailable` with `Retry-After`.
    pub hash_wait_ms: u64,
    /// How long the one-time setup token of a server without an operator
    /// works (a restart makes a new one).
    pub setup_token_ttl_secs: i64,
    /// How long an invitation link works.
    pub invitation_ttl_secs: i64,
    /// Requests to sign-up, login, setup, refresh and invitations from one
    /// client address per minute (a burst of that many, then one every
    /// 60/N s). 0 turns a limit off.
    pub ip_requests_per_minute: u32,
    /// Sign-ups from one client address per hour.
    pub signups_per_ip_per_hour: u32,
    /// Sign-up attempts for one email per hour (a taken email answers 409,
    /// so this also bounds how fast emails can be probed).
    pub signups_per_email_per_hour: u32,
    /// Failed logins of one account from one client address per 15 minutes;
    /// then one more try every 15/N minutes. A successful login clears it.
    pub login_failures_per_account_ip: u32,
    /// Failed logins of one account from all addresses together per hour:
    /// looser, so that one address cannot lock a victim out, and still a
    /// ceiling on guesses from many addresses.
    pub login_failures_per_account_per_hour: u32,
    /// Invitation accepts by one signed-in account per hour.
    pub invitation_accepts_per_account_per_hour: u32,
    /// Most throttle entries kept in memory (client addresses, emails,
    /// accounts); idle ones go first, and an entry is dropped as soon as its
    /// budget is full again.
    pub throttle_max_entries: u64,
    /// Addresses or CIDR ranges of reverse proxies in front of this server.
    /// Only when the peer is one of them is `X-Forwarded-For` read for the
    /// client's address (its right-most address that is not a proxy).
    pub trusted_proxies: Vec<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            jwt_secret: None,
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_concurrent_hashes: 0,
            hash_wait_ms: 5_000,
            setup_token_ttl_secs: 24 * 3600,
            invitation_ttl_secs: 7 * 24 * 3600,
            ip_requests_per_minute: 30,
            signups_per_ip_per_hour: 10,
            signups_per_email_per_hour: 5,
            login_failures_per_account_ip: 5,
            login_failures_per_account_per_hour: 100,
            invitation_accepts_per_account_per_hour: 20,
            throttle_max_entries: 100_000,
            trusted_proxies: Vec::new(),
        }
    }
}

/// The gateway and the credits it spends (G1-G5, C1, C3).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct GatewaySettings {
    /// Largest request body the gateway forwards.
    pub max_body_bytes: usize,
    /// Test credits one faucet top-up gives (micro-credits).
    pub faucet_amount_micros: i64,
    /// How long a namespace waits between faucet top-ups.
    pub faucet_cooldown_secs: i64,
    /// Test credits a new namespace starts with (micro-credits; 0 for none).
    pub welcome_test_credits_micros: i64,
    /// How often each instance looks for changed keys and catalog entries; a
    /// revocation takes effect everywhere within this interval (K5).
    pub poll_interval_ms: u64,
    /// A cached key is re-read after this long even without a change notice.
    pub key_cache_ttl_secs: u64,
    /// Most key secrets the key cache holds; the least useful go first.
    pub key_cache_capacity: u64,
    /// Most unknown secrets remembered as unknown (a separate cache, so
    /// unknown secrets can never push known keys out).
    pub unknown_key_cache_capacity: u64,
    /// How long an unknown secret is answered from memory.
    pub unknown_key_cache_ttl_secs: u64,
    /// Most database lookups of uncached secrets at once, so a flood of
    /// unknown secrets cannot take every pooled connection.
    pub key_lookup_concurrency: usize,
    /// Requests with a key that is not in the cache one client address may
    /// make per second (burst as large) while its keys keep turning out
    /// unknown; more get 429 `rate_limited` without a lookup. 0 turns it off.
    pub unknown_keys_per_ip_per_sec: u32,
    /// Most per-key limiters kept in memory; beyond it, limiters whose
    /// buckets have refilled and that no call holds are dropped.
    pub limiter_capacity: usize,
    /// Seconds between health probes of upstreams that have a `health_path`.
    pub health_interval_secs: u64,
    /// The platform's fee on calls to a seller's API, in basis points of the
    /// cost (1,000 = 10%); the seller earns the rest (C8).
    pub platform_fee_bps: u32,
    /// A seller whose live balance is below this (micro-credits) has the live
    /// serving of its APIs paused until it tops up (C8).
    pub seller_critical_balance_micros: i64,
    /// Longest a streamed call may last from its start; the API's
    /// `timeout_ms` bounds the wait for each chunk, this the whole stream
    /// (and the compute time its hold covers).
    pub stream_deadline_secs: u64,
    /// A streaming client that does not take the next chunk within this long
    /// counts as gone: the stream ends and what it received is billed.
    pub stream_send_timeout_secs: u64,
    /// Largest single server-sent event the gateway passes through.
    pub max_event_bytes: usize,
    /// Largest upstream answer of a call that is not streamed.
    pub max_response_bytes: usize,
    /// The egress policy compiled from the top-level `[egress]` settings;
    /// `Application::build` puts it here, so the gateway's clients obey it.
    #[serde(skip)]
    pub egress: std::sync::Arc<crate::egress::Egress>,
    /// `cluster.fallback_poll_ms`, put here by `Application::build`.
    #[serde(skip)]
    pub fallback_poll_ms: u64,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            max_body_bytes: 8 * 1024 * 1024,
            faucet_amount_micros: 10_000_000,
            faucet_cooldown_secs: 3600,
            welcome_test_credits_micros: 10_000_000,
            poll_interval_ms: 500,
            key_cache_ttl_secs: 60,
            key_cache_capacity: 100_000,
            unknown_key_cache_capacity: 100_000,
            unknown_key_cache_ttl_secs: 5,
            key_lookup_concurrency: 4,
            unknown_keys_per_ip_per_sec: 20,
            limiter_capacity: 100_000,
            health_interval_secs: 5,
            platform_fee_bps: 1000,
            seller_critical_balance_micros: 1_000_000,
            stream_deadline_secs: 900,
            stream_send_timeout_secs: 30,
            max_event_bytes: 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
            egress: std::sync::Arc::default(),
            fallback_poll_ms: 5000,
        }
    }
}

/// Top-ups, statements and low-balance alerts (C2, C4, C5).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BillingSettings {
    /// HMAC-SHA256 secret shared with the payment processor or chain watcher
    /// that signs deposit notifications. Unset: the deposit endpoint answers
    /// 503 and no top-up can complete.
    pub deposit_secret: Option<SecretString>,
    /// A deposit notification whose timestamp is further than this from the
    /// server's clock is refused (replay protection).
    pub deposit_tolerance_secs: i64,
    /// Past the token generation event: RTITY is accepted besides USDC and USDT.
    pub post_tge: bool,
    /// Micro-credits per whole unit of each currency, used when `price_url`
    /// is empty. 1,000,000 is one credit per unit.
    pub rates: RateSettings,
    /// Where current rates are fetched at each deposit (`{currency}` is
    /// replaced by `USDC`, `USDT` or `RTITY`); the answer is JSON with
    /// `credits_per_unit` as a decimal number or string. Empty: `rates`.
    pub price_url: Option<String>,
    /// How long a price fetch may take before the deposit is refused (502;
    /// the processor retries).
    pub price_timeout_ms: u64,
    /// How often balances are compared with low-balance alert and auto
    /// top-up thresholds, and bonus expiries, seller pauses and subscription
    /// renewals are looked for.
    pub alert_check_interval_ms: u64,
    /// The subscription credit packages offered (C6), as `[[billing.packages]]`.
    pub packages: Vec<PackageSettings>,
}

/// One subscription credit package: `credits_micros` credited each month for
/// `price_units` (millionths) of `currency`.
#[derive(Debug, Clone, Deserialize)]
pub struct PackageSettings {
    pub slug: String,
    pub name: String,
    pub credits_micros: i64,
    pub price_units: i64,
    #[serde(default = "usdc")]
    pub currency: Currency,
}

fn usdc() -> Currency {
    Currency::Usdc
}

fn default_packages() -> Vec<PackageSettings> {
    let package = |slug: &str, name: &str, credits: i64, price: i64| PackageSettings {
        slug: slug.into(),
        name: name.into(),
        credits_micros: credits * 1_000_000,
        price_units: price * 1_000_000,
        currency: Currency::Usdc,
    };
    vec![
        package("starter", "Starter", 110, 100),
        package("growth", "Growth", 600, 500),
    ]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RateSettings {
    pub usdc: i64,
    pub usdt: i64,
    pub rtity: i64,
}

impl Default for RateSettings {
    fn default() -> Self {
        RateSettings {
            usdc: 1_000_000,
            usdt: 1_000_000,
            rtity: 1_000_000,
        }
    }
}

impl Default for BillingSettings {
    fn default() -> Self {
        BillingSettings {
            deposit_secret: None,
            deposit_tolerance_secs: 300,
            post_tge: false,
            rates: RateSettings::default(),
            price_url: None,
            price_timeout_ms: 5000,
            alert_check_interval_ms: 1000,
            packages: default_packages(),
        }
    }
}

/// Retention of raw usage events and of the monitoring rollups (M6). 0 keeps
/// them forever.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MonitoringSettings {
    /// Raw events (request log, export, statements' per-API lines). Forever
    /// by default: monthly statements break usage down through them.
    pub raw_retention_days: u32,
    /// Per-minute rollups (series up to six hours, per-minute charts).
    pub minute_retention_days: u32,
    /// Per-hour rollups (series and breakdowns over hours, the dashboard's
    /// 48-hour chart and 24-hour figures).
    pub hour_retention_days: u32,
    /// Per-day rollups (ranges beyond seven days, the dashboard's all-time
    /// figures and API table).
    pub day_retention_days: u32,
    /// How often the pruning task runs.
    pub prune_interval_secs: u64,
}

impl Default for MonitoringSettings {
    fn default() -> Self {
        MonitoringSettings {
            raw_retention_days: 0,
            minute_retention_days: 14,
            hour_retention_days: 0,
            day_retention_days: 0,
            prune_interval_secs: 3_600,
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers alone.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_dir: Option<PathBuf>,
}

impl Settings {
    /// Loads settings from an optional TOML file, the environment and flags.
    pub fn load(
        file: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Settings, Box<figment::Error>> {
        let mut fig = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    file.display()
                ))));
            }
            fig = fig.merge(Toml::file(file));
        }
        fig.merge(Env::prefixed("TALLY_").split("__"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)
    }

    /// The database URL to connect to, after applying the SQLite default.
    pub fn database_url(&self) -> std::io::Result<String> {
        match &self.database_url {
            Some(url) if !url.expose_secret().trim().is_empty() => {
                Ok(url.expose_secret().trim().to_owned())
            }
            _ => {
                std::fs::create_dir_all(&self.data_dir)?;
                let dir = std::fs::canonicalize(&self.data_dir)?;
                Ok(format!(
                    "sqlite://{}?mode=rwc",
                    dir.join("tally.db").display()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::result_large_err)]

    use super::*;

    #[test]
    fn layers_apply_in_order_defaults_file_environment_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "tally.toml",
                r#"
                    bind = "0.0.0.0:9000"
                    data_dir = "from-file"
                    [auth]
                    access_token_ttl_secs = 60
                    jwt_secret = "file-secret-file-secret-file-secret"
                "#,
            )?;
            jail.set_env("TALLY_DATA_DIR", "from-env");
            jail.set_env("TALLY_AUTH__REFRESH_TOKEN_TTL_SECS", "120");
            let flags = Overrides {
                bind: Some("127.0.0.1:7000".into()),
                ..Overrides::default()
            };
            let s = Settings::load(Some(Path::new("tally.toml")), &flags).map_err(|e| *e)?;
            assert_eq!(s.bind, "127.0.0.1:7000", "flag beats file");
            assert_eq!(s.data_dir, PathBuf::from("from-env"), "env beats file");
            assert_eq!(s.auth.access_token_ttl_secs, 60, "file beats default");
            assert_eq!(s.auth.refresh_token_ttl_secs, 120);
            assert_eq!(s.static_dir, PathBuf::from("frontend/dist"), "default");
            // Secrets never show in Debug output.
            let debug = format!("{s:?}");
            assert!(!debug.contains("file-secret"), "{debug}");
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_is_an_error_not_a_silent_default() {
        let err = Settings::load(
            Some(Path::new("/nonexistent/tally.toml")),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn without_a_database_url_sqlite_in_the_data_dir_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings {
            data_dir: dir.path().join("nested"),
            ..Settings::default()
        };
        let url = s.database_url().unwrap();
        assert!(url.starts_with("sqlite://"), "{url}");
        assert!(url.ends_with("nested/tally.db?mode=rwc"), "{url}");
        assert!(dir.path().join("nested").is_dir());
    }
}
