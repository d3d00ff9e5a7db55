//! Throttling of sign-up, login, setup, refresh and invitations (A2).
//!
//! Policy: each of these costs the server an Argon2 hash (19 MiB by default)
//! or a token check, so every one is counted per client address, and the
//! password endpoints per account too:
//! - every request to them: `ip_requests_per_minute` per client address;
//! - sign-ups: `signups_per_ip_per_hour` per address and
//!   `signups_per_email_per_hour` per email (a taken email answers 409, so this
//!   also bounds how fast addresses can be probed);
//! - failed logins: `login_failures_per_account_ip` per (email, address) per
//!   15 minutes, and a looser `login_failures_per_account_per_hour` per email
//!   from all addresses together. An attempt takes its unit before the
//!   password is checked (so concurrent guesses cannot slip past), and a
//!   correct password gives it back and clears the (email, address) budget.
//!   Someone guessing from one address locks only that address out of the
//!   account; the owner logging in from elsewhere is not affected until the
//!   per-account ceiling is reached, which takes many addresses;
//! - invitation accepts: `invitation_accepts_per_account_per_hour` per account.
//!
//! Every limit is GCRA: a burst of N, then one more every period/N. An
//! exhausted limit answers 429 `rate_limited` with `Retry-After`. Emails are
//! counted whether or not they have an account, so the answers never tell.
//!
//! The client address is the TCP peer, unless the peer is one of
//! `auth.trusted_proxies`; then it is the right-most `X-Forwarded-For` entry
//! that is not a trusted proxy. IPv6 clients are counted per /64, the block a
//! single subscriber usually gets.
//!
//! The counters live behind [`Limiter`], in memory on each instance today
//! ([`memory::MemoryLimiter`]); a limiter shared through Redis can implement
//! the same trait for cluster-wide limits.

pub mod memory;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpRequest;
use futures_util::future::BoxFuture;
use ipnet::IpNet;

use crate::config::AuthSettings;
use crate::error::{ApiError, ApiResult};

/// A limit: a budget of `burst` units that refills completely over `period`
/// (one unit every `period / burst`). A burst of 0 turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub period: Duration,
}

impl Rate {
    pub fn new(burst: u32, period: Duration) -> Self {
        Rate { burst, period }
    }

    /// Time for one unit to refill; `None` when the limit is off.
    pub fn interval(self) -> Option<Duration> {
        (self.burst > 0 && !self.period.is_zero()).then(|| self.period / self.burst)
    }
}

/// Keyed budgets. Implementations must be safe to share between workers;
/// a key's budget is independent of every other key's.
pub trait Limiter: Send + Sync + 'static {
    /// Takes one unit of `key`'s budget, or says how long until one is back.
    fn take<'a>(&'a self, key: &'a str, rate: Rate) -> BoxFuture<'a, Result<(), Duration>>;
    /// Returns a unit taken earlier (an attempt that turned out legitimate).
    fn give_back<'a>(&'a self, key: &'a str, rate: Rate) -> BoxFuture<'a, ()>;
    /// Forgets `key`: its budget is full again.
    fn clear<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()>;
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The throttling policy of the account endpoints (see the module docs).
pub struct AuthThrottle {
    limiter: Arc<dyn Limiter>,
    trusted_proxies: Vec<IpNet>,
    per_ip: Rate,
    signup_ip: Rate,
    signup_email: Rate,
    failures_account_ip: Rate,
    failures_account: Rate,
    accepts_account: Rate,
}

/// A login attempt that has taken its failure units; see [`AuthThrottle::login`].
pub struct LoginAttempt {
    account_ip_key: String,
    account_key: String,
}

impl AuthThrottle {
    pub fn new(settings: &AuthSettings, limiter: Arc<dyn Limiter>) -> anyhow::Result<Self> {
        let trusted_proxies = settings
            .trusted_proxies
            .iter()
            .map(|p| parse_net(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(AuthThrottle {
            limiter,
            trusted_proxies,
            per_ip: Rate::new(settings.ip_requests_per_minute, MINUTE),
            signup_ip: Rate::new(settings.signups_per_ip_per_hour, HOUR),
            signup_email: Rate::new(settings.signups_per_email_per_hour, HOUR),
            failures_account_ip: Rate::new(settings.login_failures_per_account_ip, FAILURE_WINDOW),
            failures_account: Rate::new(settings.login_failures_per_account_per_hour, HOUR),
            accepts_account: Rate::new(settings.invitation_accepts_per_account_per_hour, HOUR),
        })
    }

    /// The client's address as this policy counts it (see the module docs).
    pub fn client_ip(&self, req: &HttpRequest) -> IpAddr {
        let peer = req
            .peer_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        client_ip(peer, forwarded_for(req).as_deref(), &self.trusted_proxies)
    }

    async fn take(&self, key: &str, rate: Rate, message: &str) -> ApiResult<()> {
        self.limiter.take(key, rate).await.map_err(|wait| {
            ApiError::rate_limited(
                format!(
                    "{message}; try again in {} s",
                    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
                ),
                wait,
            )
        })
    }

    /// Any request to the account endpoints from `ip`.
    pub async fn request(&self, ip: IpAddr) -> ApiResult<()> {
        self.take(
            &format!("ip:{}", ip_key(ip)),
            self.per_ip,
            "too many requests from this address",
        )
        .await
    }

    /// A sign-up (or setup) for `email` from `ip`.
    pub async fn signup(&self, ip: IpAddr, email: &str) -> ApiResult<()> {
        self.take(
            &format!("signup-ip:{}", ip_key(ip)),
            self.signup_ip,
            "too many sign-ups from this address",
        )
        .await?;
        self.take(
            &format!("signup-email:{email}"),
            self.signup_email,
            "too many sign-ups for this email",
        )
        .await
    }

    /// Takes a failed-login unit for (`email`, `ip`) and for `email` before the
    /// password is checked; [`AuthThrottle::login_succeeded`] gives them back.
    pub async fn login(&self, ip: IpAddr, email: &str) -> ApiResult<LoginAttempt> {
        let attempt = LoginAttempt {
            account_ip_key: format!("login-account-ip:{email}|{}", ip_key(ip)),
            account_key: format!("login-account:{email}"),
        };
        let locked = "too many failed logins for this account";
        self.take(&attempt.account_ip_key, self.failures_account_ip, locked)
            .await?;
        if let Err(e) = self
            .take(&attempt.account_key, self.failures_account, locked)
            .await
        {
            self.limiter
                .give_back(&attempt.account_ip_key, self.failures_account_ip)
                .await;
            return Err(e);
        }
        Ok(attempt)
    }

    /// The password was right: the attempt was no failure.
    pub async fn login_succeeded(&self, attempt: LoginAttempt) {
        self.limiter.clear(&attempt.account_ip_key).await;
        self.limiter
            .give_back(&attempt.account_key, self.failures_account)
            .await;
    }

    /// An invitation accept by a signed-in account.
    pub async fn accept(&self, account_id: &str) -> ApiResult<()> {
        self.take(
            &format!("accept:{account_id}"),
            self.accepts_account,
            "too many invitation accepts by this account",
        )
        .await
    }
}

fn parse_net(s: &str) -> anyhow::Result<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            anyhow::anyhow!("auth.trusted_proxies: {s:?} is not an IP address or CIDR range")
        })
}

fn forwarded_for(req: &HttpRequest) -> Option<String> {
    let values: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The client of a request from `peer` with `X-Forwarded-For: forwarded`.
pub fn client_ip(peer: IpAddr, forwarded: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(&ip));
    if !is_trusted(peer) {
        return peer;
    }
    let Some(forwarded) = forwarded else {
        return peer;
    };
    // Each proxy appends the address it got the request from: walk from the
    // right, past our own proxies, to the first address we did not put there.
    // Anything left of it was written by the client and proves nothing.
    let mut client = peer;
    for entry in forwarded.rsplit(',') {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !is_trusted(client) {
                    return client;
                }
            }
            Err(_) => return client,
        }
    }
    client
}

/// How an address is counted: IPv4 as is, IPv6 per /64.
pub fn ip_key(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let proxies = vec![parse_net("10.0.0.0/8").unwrap(), parse_net("::1").unwrap()];
        // Not from a proxy: the header is the client's own claim.
        assert_eq!(
            client_ip(ip("203.0.113.9"), Some("198.51.100.1"), &proxies),
            ip("203.0.113.9")
        );
        // From a proxy: the right-most address the proxies did not add.
        assert_eq!(
            client_ip(
                ip("10.0.0.2"),
                Some("1.2.3.4, 198.51.100.7, 10.0.0.5"),
                &proxies
            ),
            ip("198.51.100.7")
        );
        assert_eq!(client_ip(ip("::1"), None, &proxies), ip("::1"));
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("garbage, 10.0.0.3"), &proxies),
            ip("10.0.0.3")
        );
        // No proxies configured: never trusted.
        assert_eq!(
            client_ip(ip("127.0.0.1"), Some("198.51.100.1"), &[]),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            ip_key(ip("2001:db8:1:2:aaaa::1")),
            ip_key(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(ip_key(ip("2001:db8:1:2::1")), ip_key(ip("2001:db8:1:3::1")));
        assert_eq!(ip_key(ip("::ffff:192.0.2.1")), "192.0.2.1");
    }

    #[test]
    fn a_bad_trusted_proxy_is_refused() {
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("not-an-ip").is_err());
        assert!(parse_net("192.0.2.1").is_ok());
    }
}
