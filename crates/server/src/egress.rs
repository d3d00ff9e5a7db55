//! Outbound connections: which hosts and addresses the server may reach when
//! it calls an upstream, probes an upstream's health or fetches the price
//! feed (`[egress]` in the settings).
//!
//! Policy:
//! - A destination is the host written in a URL and the addresses it resolves
//!   to (a literal address resolves to itself).
//! - A host name matching a `deny` entry is refused. When `allow` is not
//!   empty, a name must match an `allow` name, or (when `allow` lists
//!   networks) resolve into an allowed network.
//! - An address is refused when it is in a `deny` network; when
//!   `deny_private` is on and it is loopback, private, link-local, shared,
//!   multicast or otherwise not globally routable; when it is a cloud metadata
//!   address (169.254.169.254, fd00:ec2::254); and, when `allow` is not empty,
//!   when neither its host name nor the address itself is allowed. An
//!   `allow` network that holds the address overrides `deny_private` and the
//!   metadata rule (never `deny`): that is how an internal upstream in a
//!   known subnet is reached from a hardened server.
//! - The checks run where a URL is accepted (catalog APIs from the API and
//!   from the config file, `billing.price_url` at start and before each
//!   fetch), and again when a connection is made: the DNS resolver of every
//!   outbound client drops the addresses the policy refuses (so a name that
//!   re-resolves to a denied address, DNS rebinding, reaches nothing), the
//!   connected socket's peer address is checked before a request byte is
//!   sent (literal addresses, which skip DNS), and redirects are followed
//!   only to URLs the policy accepts. Validation never resolves names: the
//!   answer at validation time proves nothing about the answer at call time.
//!
//! The default (empty lists, `deny_private = false`) refuses only the
//! metadata addresses, so existing installs, the test suite and `tally
//! demo` (upstreams on loopback) keep working; docs/SECURITY.md says how to
//! harden it.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connection, HttpInfo};
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde::Deserialize;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The `[egress]` settings as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EgressSettings {
    /// Host names (`api.openai.com`), subdomain patterns (`*.example.com`),
    /// addresses and networks (`10.1.2.0/24`) that may be reached. Empty:
    /// any host not denied.
    pub allow: Vec<String>,
    /// Names, patterns, addresses and networks that may never be reached.
    pub deny: Vec<String>,
    /// Refuse loopback, private, link-local and other non-public addresses
    /// unless an `allow` network holds them.
    pub deny_private: bool,
}

/// Longest allow or deny list accepted.
const MAX_ENTRIES: usize = 1000;

/// Cloud instance metadata services: never reached unless an `allow`
/// network names them.
const METADATA: [IpAddr; 3] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    // Alibaba Cloud's metadata service.
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// An exact host name, lower case, without a trailing dot.
    Name(String),
    /// `*.example.com`, kept as `.example.com`: any name below it.
    Below(String),
    Net(IpNet),
}

impl Rule {
    fn parse(entry: &str) -> Result<Rule, String> {
        let e = entry.trim().trim_end_matches('.').to_ascii_lowercase();
        if let Ok(net) = e.parse::<IpNet>() {
            return Ok(Rule::Net(net.trunc()));
        }
        if let Ok(ip) = e
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(Rule::Net(IpNet::from(canonical(ip))));
        }
        if let Some(parent) = e.strip_prefix("*.") {
            if valid_name(parent) {
                return Ok(Rule::Below(format!(".{parent}")));
            }
        } else if valid_name(&e) {
            return Ok(Rule::Name(e));
        }
        Err(format!(
            "'{entry}' is not a host name, *.domain pattern, address or network"
        ))
    }

    fn matches_name(&self, name: &str) -> bool {
        match self {
            Rule::Name(n) => n == name,
            Rule::Below(suffix) => name.ends_with(suffix.as_str()),
            Rule::Net(_) => false,
        }
    }

    fn matches_addr(&self, ip: IpAddr) -> bool {
        matches!(self, Rule::Net(net) if net.contains(&ip))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Not a public unicast address: loopback, private, link-local, shared
/// (CGNAT), benchmarking, documentation, multicast, reserved, unspecified.
pub fn is_private(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                // NAT64 (64:ff9b::/96) can lead anywhere in IPv4.
                || (first == 0x0064 && v6.segments()[1] == 0xff9b)
        }
    }
}

/// The compiled policy.
#[derive(Debug, Default)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    deny_private: bool,
}

impl Policy {
    pub fn new(s: &EgressSettings) -> Result<Policy, String> {
        let rules = |list: &[String], key: &str| -> Result<Vec<Rule>, String> {
            if list.len() > MAX_ENTRIES {
                return Err(format!("egress.{key} has more than {MAX_ENTRIES} entries"));
            }
            list.iter()
                .map(|e| Rule::parse(e).map_err(|m| format!("egress.{key}: {m}")))
                .collect()
        };
        Ok(Policy {
            allow: rules(&s.allow, "allow")?,
            deny: rules(&s.deny, "deny")?,
            deny_private: s.deny_private,
        })
    }

    /// Whether an `allow` name entry names `name` (which then needs no
    /// allowed network for its addresses).
    fn name_allowed(&self, name: &str) -> bool {
        self.allow.iter().any(|r| r.matches_name(name))
    }

    /// The name rules, before any DNS.
    pub fn check_name(&self, name: &str) -> Result<(), String> {
        let name = normalize_name(name);
        if self.deny.iter().any(|r| r.matches_name(&name)) {
            return Err(format!("host '{name}' is denied by egress.deny"));
        }
        let nets_allowed = self.allow.iter().any(|r| matches!(r, Rule::Net(_)));
        if !self.allow.is_empty() && !nets_allowed && !self.name_allowed(&name) {
            return Err(format!("host '{name}' is not in egress.allow"));
        }
        Ok(())
    }

    /// The address rules. `name_allowed`: the address came from resolving a
    /// name that an `allow` entry names.
    pub fn check_addr(&self, ip: IpAddr, name_allowed: bool) -> Result<(), String> {
        let ip = canonical(ip);
        if self.deny.iter().any(|r| r.matches_addr(ip)) {
            return Err(format!("address {ip} is denied by egress.deny"));
        }
        let explicitly = self.allow.iter().any(|r| r.matches_addr(ip));
        if explicitly {
            return Ok(());
        }
        if METADATA.contains(&ip) {
            return Err(format!(
                "address {ip} is a cloud metadata service; only an egress.allow network can open it"
            ));
        }
        if self.deny_private && is_private(ip) {
            return Err(format!(
                "address {ip} is not public and egress.deny_private is on"
            ));
        }
        if !self.allow.is_empty() && !name_allowed {
            return Err(format!("address {ip} is not in egress.allow"));
        }
        Ok(())
    }

    /// Checks a URL's host as written: a name by the name rules, a literal
    /// address by the address rules. Does not resolve names.
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("'{url}' is not a URL: {e}"))?;
        match url.host() {
            Some(url::Host::Domain(name)) => self.check_name(name),
            Some(url::Host::Ipv4(ip)) => self.check_addr(IpAddr::V4(ip), false),
            Some(url::Host::Ipv6(ip)) => self.check_addr(IpAddr::V6(ip), false),
            None => Err("the URL has no host".into()),
        }
    }

    /// Keeps the resolved addresses of `name` that the policy allows.
    fn filter(&self, name: &str, addrs: impl Iterator<Item = SocketAddr>) -> Vec<SocketAddr> {
        let name_allowed = self.name_allowed(&normalize_name(name));
        addrs
            .filter(|a| match self.check_addr(a.ip(), name_allowed) {
                Ok(()) => true,
                Err(why) => {
                    tracing::warn!(host = name, reason = %why, "egress: address dropped");
                    false
                }
            })
            .collect()
    }
}

/// The policy and the outbound clients built under it.
#[derive(Debug)]
pub struct Egress {
    policy: Arc<Policy>,
    shared: OnceLock<reqwest::Client>,
}

impl Default for Egress {
    fn default() -> Self {
        Egress::from_policy(Policy::default())
    }
}

impl Egress {
    pub fn new(settings: &EgressSettings) -> Result<Egress, String> {
        Ok(Egress::from_policy(Policy::new(settings)?))
    }

    fn from_policy(policy: Policy) -> Egress {
        Egress {
            policy: Arc::new(policy),
            shared: OnceLock::new(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// A client builder whose connections obey the policy: its DNS resolver
    /// drops denied addresses, its connector checks the connected peer, and
    /// redirects are followed (at most 10) only to URLs the policy accepts.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let policy = self.policy.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects");
            }
            match policy.check_url(attempt.url().as_str()) {
                Ok(()) => attempt.follow(),
                Err(why) => attempt.error(format!("redirect refused by the egress policy: {why}")),
            }
        });
        reqwest::Client::builder()
            .dns_resolver(Arc::new(Resolver {
                policy: self.policy.clone(),
            }))
            .connector_layer(PeerCheck {
                policy: self.policy.clone(),
            })
            .redirect(redirects)
    }

    /// A client with default settings under the policy, built once (the
    /// price feed).
    pub fn client(&self) -> reqwest::Result<reqwest::Client> {
        if let Some(c) = self.shared.get() {
            return Ok(c.clone());
        }
        let client = self.client_builder().build()?;
        Ok(self.shared.get_or_init(|| client).clone())
    }
}

/// Resolves names with the system resolver and drops what the policy refuses.
struct Resolver {
    policy: Arc<Policy>,
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            policy.check_name(&host).map_err(BoxError::from)?;
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept = policy.filter(&host, found);
            if kept.is_empty() {
                return Err(BoxError::from(format!(
                    "egress policy: no allowed address for host '{host}'"
                )));
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

/// Checks the peer of every new connection before it is used: literal
/// addresses in URLs skip the resolver, and this is where they meet the
/// address rules (a name's addresses were already filtered, so the name
/// allow-list is not asked again here).
#[derive(Clone)]
struct PeerCheck {
    policy: Arc<Policy>,
}

impl<S> tower_layer::Layer<S> for PeerCheck {
    type Service = PeerCheckService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PeerCheckService {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Clone)]
struct PeerCheckService<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S, R> tower_service::Service<R> for PeerCheckService<S>
where
    S: tower_service::Service<R, Error = BoxError>,
    S::Response: Connection + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let connecting = self.inner.call(req);
        let policy = self.policy.clone();
        Box::pin(async move {
            let conn = connecting.await?;
            let mut extras = http::Extensions::new();
            conn.connected().get_extras(&mut extras);
            let Some(peer) = extras.get::<HttpInfo>().map(HttpInfo::remote_addr) else {
                return Err(BoxError::from(
                    "egress policy: the connection's peer address is unknown",
                ));
            };
            if let Err(why) = policy.check_addr(peer.ip(), true) {
                tracing::warn!(peer = %peer, reason = %why, "egress: connection refused");
                return Err(BoxError::from(format!("egress policy: {why}")));
            }
            Ok(conn)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn policy(allow: &[&str], deny: &[&str], deny_private: bool) -> Policy {
        Policy::new(&EgressSettings {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            deny_private,
        })
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_reaches_anything_but_the_metadata_service() {
        let p = Policy::default();
        assert!(p.check_url("http://127.0.0.1:8080/x").is_ok());
        assert!(p.check_url("https://api.openai.com/v1").is_ok());
        assert!(p.check_url("http://10.0.0.1/").is_ok());
        assert!(p.check_url("http://169.254.169.254/latest").is_err());
        assert!(p.check_url("http://[fd00:ec2::254]/").is_err());
        assert!(p.check_url("http://[::ffff:169.254.169.254]/").is_err());
        assert!(p.check_addr(ip("169.254.169.254"), true).is_err());
    }

    #[test]
    fn deny_private_refuses_every_non_public_address_form() {
        let p = policy(&[], &[], true);
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(p.check_addr(ip(bad), true).is_err(), "{bad} is refused");
        }
        for good in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(p.check_addr(ip(good), true).is_ok(), "{good} is allowed");
        }
        assert!(
            p.check_url("http://localhost/").is_ok(),
            "names wait for DNS"
        );
    }

    #[test]
    fn allow_lists_names_patterns_and_networks() {
        let p = policy(
            &["api.openai.com", "*.example.com", "10.1.2.0/24"],
            &[],
            true,
        );
        assert!(p.check_url("https://API.OpenAI.com./v1").is_ok());
        assert!(p.check_url("https://a.b.example.com").is_ok());
        assert!(
            p.check_addr(ip("10.1.2.7"), false).is_ok(),
            "allowed network beats deny_private"
        );
        assert!(p.check_addr(ip("10.1.3.7"), false).is_err());
        assert!(p.check_url("http://10.1.2.9:8000").is_ok());
        assert!(
            p.check_url("http://8.8.8.8").is_err(),
            "a literal outside the list"
        );
        // A name outside the names may still resolve into an allowed network.
        assert!(p.check_name("llm.internal").is_ok());
        assert!(p
            .filter(
                "llm.internal",
                [SocketAddr::new(ip("8.8.8.8"), 0)].into_iter()
            )
            .is_empty());
        assert_eq!(
            p.filter(
                "llm.internal",
                [SocketAddr::new(ip("10.1.2.3"), 0)].into_iter()
            )
            .len(),
            1
        );
        // An allowed name still never reaches a private address.
        assert!(p
            .filter(
                "x.example.com",
                [SocketAddr::new(ip("127.0.0.1"), 0)].into_iter()
            )
            .is_empty());
        assert_eq!(
            p.filter(
                "x.example.com",
                [SocketAddr::new(ip("8.8.8.8"), 0)].into_iter()
            )
            .len(),
            1
        );

        let names_only = policy(&["*.example.com"], &[], false);
        assert!(
            names_only.check_url("https://example.com").is_err(),
            "the pattern needs a label"
        );
        assert!(names_only.check_url("https://evil.com").is_err());
        assert!(names_only.check_url("http://127.0.0.1").is_err());
    }

    #[test]
    fn deny_beats_allow_and_metadata_needs_an_allowed_network() {
        let p = policy(&["10.0.0.0/8"], &["10.9.0.0/16", "*.corp.example"], false);
        assert!(p.check_addr(ip("10.9.1.1"), true).is_err());
        assert!(p.check_addr(ip("10.8.1.1"), false).is_ok());
        assert!(p.check_name("db.corp.example").is_err());
        let metadata = policy(&["169.254.169.254"], &[], true);
        assert!(metadata.check_url("http://169.254.169.254/").is_ok());
    }

    #[test]
    fn bad_entries_are_refused_with_the_key_named() {
        for bad in ["", "http://x.com", "a..b", "*.", "10.0.0.0/33", "x y"] {
            let err = Policy::new(&EgressSettings {
                deny: vec![bad.into()],
                ..EgressSettings::default()
            })
            .unwrap_err();
            assert!(err.starts_with("egress.deny:"), "{bad}: {err}");
        }
        assert_eq!(
            Rule::parse("[::1]").unwrap(),
            Rule::Net("::1/128".parse().unwrap())
        );
    }
}
