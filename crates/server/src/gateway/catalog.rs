//! The catalog in memory: APIs by slug and by model, their upstream pools,
//! and what a call costs (G3, C3).
//!
//! Policy: the catalog is rebuilt from the database when any instance changes
//! it (checked every poll), and swapped in whole, so a call sees one
//! consistent catalog. Pools pick targets round-robin by weight among healthy
//! ones; a target that fails a call or a health probe sits out for a while,
//! and when every target is out the pool still tries them rather than refuse.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use reqwest::header::HeaderValue;
use tally_common::{CatalogApiConfig, Environment, OutputLimitParam, Pricing, Protocol};

/// How long a target that failed a call is skipped.
const COOL_DOWN_MS: i64 = 10_000;

pub struct Target {
    /// Base URL without a trailing slash.
    pub url: String,
    pub auth: Option<HeaderValue>,
    weight: u32,
    down_until_ms: AtomicI64,
    probe_ok: AtomicBool,
}

impl Target {
    fn healthy(&self, now_ms: i64) -> bool {
        self.probe_ok.load(Ordering::Relaxed)
            && self.down_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// A call to this target failed at the transport level or with a 5xx.
    pub fn failed(&self, now_ms: i64) {
        self.down_until_ms
            .store(now_ms + COOL_DOWN_MS, Ordering::Relaxed);
    }

    pub fn probed(&self, ok: bool) {
        self.probe_ok.store(ok, Ordering::Relaxed);
    }
}

pub struct Pool {
    pub targets: Vec<Target>,
    /// Target indexes repeated by weight.
    schedule: Vec<usize>,
    next: AtomicUsize,
}

impl Pool {
    fn new(upstreams: &[tally_common::Upstream]) -> Self {
        let targets: Vec<Target> = upstreams
            .iter()
            .map(|u| Target {
                url: u.url.trim_end_matches('/').to_owned(),
                auth: u
                    .api_key
                    .as_deref()
                    .and_then(|k| HeaderValue::from_str(&format!("Bearer {k}")).ok())
                    .map(|mut v| {
                        v.set_sensitive(true);
                        v
                    }),
                weight: u.weight.clamp(1, 100),
                down_until_ms: AtomicI64::new(0),
                probe_ok: AtomicBool::new(true),
            })
            .collect();
        let schedule = targets
            .iter()
            .enumerate()
            .flat_map(|(i, t)| std::iter::repeat_n(i, t.weight as usize))
            .collect();
        Pool {
            targets,
            schedule,
            next: AtomicUsize::new(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The targets to try for one call, in order: healthy ones first, starting
    /// at the next in the weighted rotation, then the rest as a last resort.
    pub fn order(&self, now_ms: i64) -> Vec<&Target> {
        if self.targets.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
        let mut seen = vec![false; self.targets.len()];
        let mut out = Vec::with_capacity(self.targets.len());
        let rotation = self.schedule[start..].iter().chain(&self.schedule[..start]);
        for &i in rotation {
            if !seen[i] && self.targets[i].healthy(now_ms) {
                seen[i] = true;
                out.push(&self.targets[i]);
            }
        }
        for (i, t) in self.targets.iter().enumerate() {
            if !seen[i] {
                out.push(t);
            }
        }
        out
    }
}

pub struct Api {
    pub config: CatalogApiConfig,
    pub live: Pool,
    pub test: Pool,
}

impl Api {
    pub fn new(config: CatalogApiConfig) -> Self {
        Api {
            live: Pool::new(&config.upstreams),
            test: Pool::new(&config.test_upstreams),
            config,
        }
    }

    pub fn slug(&self) -> &str {
        &self.config.slug
    }

    /// Where calls of `env` go; `None` means the sandbox responder.
    pub fn pool(&self, env: Environment) -> Option<&Pool> {
        match env {
            Environment::Live => Some(&self.live),
            Environment::Test if self.test.is_empty() => None,
            Environment::Test => Some(&self.test),
        }
    }
}

#[derive(Default)]
pub struct Catalog {
    pub apis: Vec<Arc<Api>>,
    by_slug: HashMap<String, Arc<Api>>,
    by_model: HashMap<String, Arc<Api>>,
    /// The database fingerprint this was built from.
    pub version: (i64, i64),
}

impl Catalog {
    pub fn new(configs: Vec<CatalogApiConfig>, version: (i64, i64)) -> Self {
        let apis: Vec<Arc<Api>> = configs.into_iter().map(|c| Arc::new(Api::new(c))).collect();
        let by_slug = apis
            .iter()
            .map(|a| (a.config.slug.clone(), a.clone()))
            .collect();
        let mut by_model = HashMap::new();
        for api in apis
            .iter()
            .filter(|a| a.config.protocol == Protocol::Openai)
        {
            for model in &api.config.models {
                by_model.entry(model.clone()).or_insert_with(|| api.clone());
            }
        }
        Catalog {
            apis,
            by_slug,
            by_model,
            version,
        }
    }

    pub fn by_slug(&self, slug: &str) -> Option<&Arc<Api>> {
        self.by_slug.get(slug)
    }

    /// The OpenAI-compatible API serving `model`; an API's slug names it too.
    pub fn by_model(&self, model: &str) -> Option<&Arc<Api>> {
        self.by_model.get(model).or_else(|| {
            self.by_slug
                .get(model)
                .filter(|a| a.config.protocol == Protocol::Openai)
        })
    }
}

/// The API a new server starts with: an OpenAI-compatible model that test
/// keys reach in the sandbox, so the whole flow works before any upstream is
/// configured. Operators can change or delete it.
pub fn sandbox_api() -> CatalogApiConfig {
    CatalogApiConfig {
        slug: "sandbox".into(),
        name: "Sandbox model".into(),
        description: "Deterministic fake completions and embeddings for test keys. \
                      Give it live upstreams to serve live keys."
            .into(),
        protocol: Protocol::Openai,
        models: vec!["tally-sandbox".into()],
        upstreams: Vec::new(),
        test_upstreams: Vec::new(),
        pricing: Pricing {
            per_request_micros: 1000,
            per_1k_input_tokens_micros: 10_000,
            per_1k_output_tokens_micros: 30_000,
            per_compute_second_micros: 0,
            default_max_output_tokens: 1024,
        },
        output_limit_param: OutputLimitParam::MaxTokens,
        timeout_ms: 60_000,
        health_path: None,
        enabled: true,
        owner_namespace_id: None,
    }
}

fn valid_url(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.query().is_none()
    })
}

/// Checks an API's configuration; the message says what is wrong.
pub fn validate(c: &CatalogApiConfig) -> Result<(), String> {
    let slug_ok = !c.slug.is_empty()
        && c.slug.len() <= 64
        && c.slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !c.slug.starts_with('-');
    if !slug_ok {
        return Err("slug must be 1 to 64 lower-case letters, digits and '-'".into());
    }
    let name_len = c.name.trim().chars().count();
    if name_len == 0 || name_len > 100 || c.name.chars().any(char::is_control) {
        return Err("name must be 1 to 100 characters without control characters".into());
    }
    if c.description.chars().count() > 2000 {
        return Err("description must be at most 2000 characters".into());
    }
    if c.models.len() > 100
        || c.models.iter().any(|m| {
            m.is_empty()
                || m.len() > 200
                || m.chars().any(|ch| ch.is_whitespace() || ch.is_control())
        })
    {
        return Err(
            "models must be at most 100 names of 1 to 200 characters without spaces".into(),
        );
    }
    if c.protocol == Protocol::Openai && c.models.is_empty() {
        return Err("an OpenAI-compatible API needs at least one model".into());
    }
    for u in c.upstreams.iter().chain(&c.test_upstreams) {
        if !valid_url(&u.url) {
            return Err(format!(
                "upstream URL '{}' must be an http(s) URL without a query",
                u.url
            ));
        }
        if u.weight == 0 || u.weight > 100 {
            return Err("upstream weight must be 1 to 100".into());
        }
        if u.api_key
            .as_deref()
            .is_some_and(|k| HeaderValue::from_str(&format!("Bearer {k}")).is_err())
        {
            return Err("upstream api_key must be printable ASCII".into());
        }
    }
    if c.upstreams.len() + c.test_upstreams.len() > 50 {
        return Err("at most 50 upstreams per API".into());
    }
    let p = &c.pricing;
    if [
        p.per_request_micros,
        p.per_1k_input_tokens_micros,
        p.per_1k_output_tokens_micros,
        p.per_compute_second_micros,
    ]
    .iter()
    .any(|&v| !(0..=1_000_000_000_000).contains(&v))
    {
        return Err("prices must be 0 to 1,000,000,000,000 micro-credits".into());
    }
    if c.protocol == Protocol::Http
        && p.per_1k_output_tokens_micros > 0
        && p.default_max_output_tokens == 0
    {
        // The hold of a call must bound what it can be billed (see
        // `services::pricing`); an HTTP request has no output limit to read.
        return Err(
            "an HTTP API priced per output token needs default_max_output_tokens, the most one call is billed for".into(),
        );
    }
    if !(100..=600_000).contains(&c.timeout_ms) {
        return Err("timeout_ms must be 100 to 600000".into());
    }
    if c.health_path
        .as_deref()
        .is_some_and(|p| !p.starts_with('/') || p.len() > 200)
    {
        return Err("health_path must start with '/'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn pools_rotate_by_weight_and_put_failed_targets_last() {
        let up = |url: &str, weight| tally_common::Upstream {
            url: url.into(),
            api_key: None,
            weight,
        };
        let pool = Pool::new(&[up("http://a/", 2), up("http://b", 1)]);
        let firsts: Vec<&str> = (0..6).map(|_| pool.order(0)[0].url.as_str()).collect();
        assert_eq!(
            firsts,
            ["http://a", "http://a", "http://b", "http://a", "http://a", "http://b"]
        );
        pool.targets[0].failed(1000);
        let order: Vec<&str> = pool.order(1000).iter().map(|t| t.url.as_str()).collect();
        assert_eq!(order, ["http://b", "http://a"]);
        assert!(!pool.targets[0].healthy(1000 + COOL_DOWN_MS - 1));
        assert!(pool.targets[0].healthy(1000 + COOL_DOWN_MS));
    }
}
