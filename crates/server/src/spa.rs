//! The dashboard's files (A4): served precompressed, cached by name, with the
//! security headers a dashboard needs.
//!
//! Policy:
//! - `cargo xtask build-spa` writes a brotli (`.br`) and a gzip (`.gz`)
//!   sibling next to every compressible file of the build. A request gets
//!   the best sibling its `Accept-Encoding` accepts (brotli, then gzip, then
//!   the file itself) with `Content-Encoding` and `Vary: Accept-Encoding`;
//!   the type, length, ETag and HEAD answers are those of the bytes sent. A
//!   request with `Range` gets the file itself, so ranges always count bytes
//!   of the plain file.
//! - Files whose names carry Trunk's content hash (`style-<hex>.css`,
//!   `tally-frontend-<hex>_bg.wasm`) never change: `Cache-Control: public,
//!   max-age=31536000, immutable`. Everything else, `index.html` above all,
//!   is `no-cache` (revalidated by ETag), so a new build is seen at once.
//! - A path that names a file (its last segment has an extension) and does
//!   not exist is a JSON 404; a path without one is a client-side route and
//!   gets `index.html`. Paths are built from the request segment by segment:
//!   no `..`, no hidden files, nothing outside the static directory.
//! - `index.html` carries the dashboard's Content-Security-Policy with the
//!   SHA-256 of each inline script it contains (Trunk's loader), so the
//!   policy follows whatever build is on disk and no other inline script can
//!   run.

use std::path::{Path, PathBuf};

use actix_files::NamedFile;
use actix_web::http::header::{self, ContentEncoding, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::headers;

/// Files that change with every build are named by their content.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Files whose name stays: always revalidated.
pub const NO_CACHE: &str = "no-cache";

/// Extensions worth compressing (and that `xtask build-spa` compresses).
pub const COMPRESSIBLE: [&str; 9] = [
    "wasm", "js", "mjs", "css", "html", "svg", "json", "txt", "map",
];

/// Serves `req` from the dashboard's build in `dir` (GET and HEAD only).
pub async fn serve(req: &HttpRequest, dir: &Path) -> HttpResponse {
    let path = req.path();
    let names_a_file = path
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains('.'));
    match relative(path) {
        Some(rel) if !rel.as_os_str().is_empty() => {
            let full = dir.join(&rel);
            if is_file(&full).await {
                let cache = if is_hashed(&rel) { IMMUTABLE } else { NO_CACHE };
                return file(req, &full, cache).await;
            }
            if names_a_file {
                return missing(path);
            }
        }
        Some(_) => {}
        None => return missing(path),
    }
    index(req, dir).await
}

fn missing(path: &str) -> HttpResponse {
    ApiError::not_found(&format!("file {path}")).error_response()
}

/// The request path as a path below the static directory: percent-decoded
/// segments, none empty after decoding, `.`/`..`, hidden or holding a
/// separator. `None` when a segment is refused.
fn relative(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        let seg = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .ok()?;
        if seg.is_empty() || seg.starts_with('.') || seg.contains(['/', '\\', '\0']) {
            return None;
        }
        out.push(seg.as_ref());
    }
    Some(out)
}

async fn is_file(path: &Path) -> bool {
    tokio::fs::metadata(path).await.is_ok_and(|m| m.is_file())
}

/// Whether a file name carries Trunk's content hash: a `-`, then 8 to 16
/// hex digits, then `.` or `_` (`style-3f2a….css`, `app-3f2a…_bg.wasm`).
pub fn is_hashed(rel: &Path) -> bool {
    let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let bytes = name.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        if b != b'-' {
            return false;
        }
        let digits = bytes[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        (8..=16).contains(&digits) && matches!(bytes.get(i + 1 + digits), Some(b'.' | b'_'))
    })
}

fn extension(path: &Path) -> &str {
    path.extension().and_then(|e| e.to_str()).unwrap_or("")
}

/// The encodings `req` accepts among those we store, best first: brotli
/// before gzip at equal quality; `q=0` (directly or through `*`) refuses.
fn accepted(req: &HttpRequest) -> Vec<(ContentEncoding, &'static str)> {
    let header = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut star: Option<f32> = None;
    let mut br: Option<f32> = None;
    let mut gzip: Option<f32> = None;
    for item in header.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match coding.as_str() {
            "br" => br = Some(q),
            "gzip" | "x-gzip" => gzip = Some(q),
            "*" => star = Some(q),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let br = br.or(star).unwrap_or(0.0);
    let gzip = gzip.or(star).unwrap_or(0.0);
    let mut candidates = [
        (br, ContentEncoding::Brotli, "br"),
        (gzip, ContentEncoding::Gzip, "gz"),
    ];
    // Stable sort: brotli stays first on a tie.
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (q, enc, ext) in candidates {
        if q > 0.0 {
            out.push((enc, ext));
        }
    }
    out
}

/// One file: the best precompressed sibling the client accepts, else the file.
async fn file(req: &HttpRequest, full: &Path, cache: &'static str) -> HttpResponse {
    let ext = extension(full).to_ascii_lowercase();
    let compressible = COMPRESSIBLE.contains(&ext.as_str());
    let mime = mime_guess::from_path(full).first_or_octet_stream();
    let mut chosen: (PathBuf, Option<ContentEncoding>) = (full.to_path_buf(), None);
    if compressible && !req.headers().contains_key(header::RANGE) {
        for (enc, suffix) in accepted(req) {
            let mut sibling = full.as_os_str().to_owned();
            sibling.push(".");
            sibling.push(suffix);
            let sibling = PathBuf::from(sibling);
            if is_file(&sibling).await {
                chosen = (sibling, Some(enc));
                break;
            }
        }
    }
    let named = match NamedFile::open_async(&chosen.0).await {
        Ok(f) => f,
        Err(e) => {
            return ApiError::internal(anyhow::anyhow!("cannot open {}: {e}", chosen.0.display()))
                .error_response()
        }
    };
    let mut named = named.set_content_type(mime).disable_content_disposition();
    if let Some(enc) = chosen.1 {
        named = named.set_content_encoding(enc);
    }
    let mut res = named.into_response(req);
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if compressible {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if ext == "html" {
        if let Some(csp) = html_csp(full).await {
            h.insert(header::CONTENT_SECURITY_POLICY, csp);
        }
    }
    res
}

/// `index.html`, or a page saying the dashboard is not built.
async fn index(req: &HttpRequest, dir: &Path) -> HttpResponse {
    let index = dir.join("index.html");
    if is_file(&index).await {
        return file(req, &index, NO_CACHE).await;
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, NO_CACHE))
        .body(
            "<!doctype html><title>Tally</title><h1>Tally</h1>\
             <p>The API is running, but the dashboard has not been built. \
             Run <code>cargo xtask run</code> to build and serve it, \
             or see <a href=\"/api/docs/\">the API documentation</a>.</p>",
        )
}

/// The dashboard's policy for an HTML file on disk, with its inline scripts.
async fn html_csp(path: &Path) -> Option<HeaderValue> {
    let html = tokio::fs::read_to_string(path).await.ok()?;
    HeaderValue::from_str(&headers::dashboard_csp(&inline_script_hashes(&html))).ok()
}

/// `'sha256-…'` of the text of every `<script>` without `src` in `html`,
/// as CSP hashes it (the exact characters between the tags).
pub fn inline_script_hashes(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = lower[at..].find("<script").map(|i| at + i) {
        let Some(open_end) = lower[start..].find('>').map(|i| start + i + 1) else {
            break;
        };
        let Some(close) = lower[open_end..].find("</script").map(|i| open_end + i) else {
            break;
        };
        let tag = &lower[start..open_end];
        if !tag.contains(" src=") && !tag.contains("\nsrc=") {
            let digest = Sha256::digest(&html.as_bytes()[open_end..close]);
            out.push(format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            ));
        }
        at = close;
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn hashed_names_are_those_trunk_writes() {
        for yes in [
            "tally-frontend-9f86d081884c7d65_bg.wasm",
            "tally-frontend-9f86d081884c7d65.js",
            "style-2c26b46b68ffc68f.css",
            "snippets/x-0123abcd.js",
        ] {
            assert!(is_hashed(Path::new(yes)), "{yes}");
        }
        for no in [
            "index.html",
            "favicon.ico",
            "tally-frontend.js",
            "a-b.css",
            "x-1234567.js",
        ] {
            assert!(!is_hashed(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn paths_never_leave_the_static_directory() {
        assert_eq!(relative("/").unwrap(), PathBuf::new());
        assert_eq!(relative("/a/b.js").unwrap(), PathBuf::from("a/b.js"));
        assert_eq!(relative("/a%20b.js").unwrap(), PathBuf::from("a b.js"));
        for bad in [
            "/../etc/passwd",
            "/%2e%2e/x",
            "/a/%2F/b",
            "/.env",
            "/a/..%5cx",
            "/%00",
        ] {
            assert!(relative(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn brotli_wins_ties_and_q_zero_refuses() {
        let enc = |h: &str| -> Vec<&str> {
            let req = TestRequest::default()
                .insert_header((header::ACCEPT_ENCODING, h))
                .to_http_request();
            accepted(&req).into_iter().map(|(_, e)| e).collect()
        };
        assert_eq!(enc("gzip, deflate, br, zstd"), ["br", "gz"]);
        assert_eq!(enc("gzip"), ["gz"]);
        assert_eq!(enc("br;q=0.5, gzip"), ["gz", "br"]);
        assert_eq!(enc("*;q=0.1, br;q=0"), ["gz"]);
        assert_eq!(enc("identity"), Vec::<&str>::new());
        assert_eq!(enc(""), Vec::<&str>::new());
    }

    #[test]
    fn inline_scripts_are_hashed_and_external_ones_are_not() {
        let html = "<script type=\"module\">import init from '/a.js';</script>\
                    <script src=\"/b.js\"></script><SCRIPT>x()</SCRIPT>";
        let hashes = inline_script_hashes(html);
        assert_eq!(hashes.len(), 2);
        let expected = base64::engine::general_purpose::STANDARD
            .encode(Sha256::digest(b"import init from '/a.js';"));
        assert_eq!(hashes[0], format!("'sha256-{expected}'"));
    }
}
