//! Security headers on every response (A4).
//!
//! Policy: every response says `X-Content-Type-Options: nosniff`,
//! `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`, and carries a
//! Content-Security-Policy that fits what it is:
//! - the dashboard: scripts, styles, images, fonts and fetches from this
//!   origin only; WebAssembly compilation (`'wasm-unsafe-eval'`); inline
//!   scripts only by hash (Trunk's loader in `index.html`, see `spa`);
//!   inline `style` attributes (the views use a few; they cannot run
//!   script);
//! - the API documentation (`/api/docs/`, Swagger UI served from the binary):
//!   the same origin-only rules plus the inline styles and `data:` images
//!   Swagger UI needs, no inline script;
//! - API answers (JSON, metrics, the gateway): `default-src 'none'`, so a
//!   response opened as a page can load and run nothing.
//!
//! All of them forbid framing (`frame-ancestors 'none'`), plugins and
//! `<base>` changes. A handler that sets its own policy keeps it.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;

/// The dashboard's policy; `script_hashes` are `'sha256-…'` sources of the
/// page's inline scripts.
pub fn dashboard_csp(script_hashes: &[String]) -> String {
    let mut script_src = String::from("'self' 'wasm-unsafe-eval'");
    for h in script_hashes {
        script_src.push(' ');
        script_src.push_str(h);
    }
    format!(
        "default-src 'self'; script-src {script_src}; style-src 'self'; \
         style-src-attr 'unsafe-inline'; img-src 'self' data:; font-src 'self'; \
         connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'"
    )
}

/// Swagger UI at `/api/docs/`.
pub const DOCS_CSP: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
    connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// Everything that is not a page.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; \
    form-action 'none'";

/// Paths answered by the API rather than the dashboard.
pub fn is_api_path(path: &str) -> bool {
    ["/api", "/v1", "/healthz", "/readyz", "/metrics"]
        .iter()
        .any(|p| {
            path == *p
                || path
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}

fn is_docs_path(path: &str) -> bool {
    path == "/api/docs" || path.starts_with("/api/docs/")
}

/// Middleware: adds the headers a response does not already have.
pub async fn security(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let csp = if is_docs_path(req.path()) {
        HeaderValue::from_static(DOCS_CSP)
    } else if is_api_path(req.path()) {
        HeaderValue::from_static(API_CSP)
    } else {
        HeaderValue::from_str(&dashboard_csp(&[])).unwrap_or(HeaderValue::from_static(API_CSP))
    };
    let mut res = next.call(req).await?;
    let h = res.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, csp),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ] {
        if !h.contains_key(&name) {
            h.insert(name, value);
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_are_recognised_by_whole_segments() {
        for api in ["/api", "/api/v1/me", "/v1/models", "/healthz", "/metrics"] {
            assert!(is_api_path(api), "{api}");
        }
        for page in ["/", "/keys", "/apis", "/v1x", "/metricsboard"] {
            assert!(!is_api_path(page), "{page}");
        }
    }
}
