//! The dashboard's files (A4): precompressed siblings chosen by
//! `Accept-Encoding`, long-lived caching of hashed names, 404 for missing
//! files, index.html for client-side routes, and the security headers.

use std::path::Path;

use reqwest::header::{
    CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG,
    VARY,
};
use reqwest::{Method, StatusCode};
use sha2::Digest;
use tally_common::ErrorCode;

use crate::helpers::{
    assert_error, backend_tests, launch, test_settings, Backend, TestApp, TestDatabase,
};

backend_tests!(
    assets_are_served_precompressed_by_accept_encoding_with_their_own_type_and_length,
    hashed_assets_are_cached_for_a_year_and_index_html_is_revalidated,
    missing_files_are_404_and_client_side_routes_get_the_index,
    every_response_carries_the_security_headers_and_the_index_allows_only_its_own_script,
);

const WASM: &str = "tally-frontend-0123456789abcdef_bg.wasm";
const JS: &str = "tally-frontend-0123456789abcdef.js";
const LOADER: &str = "import init from '/tally-frontend-0123456789abcdef.js'; await init();";

/// A static directory shaped like the build: hashed files, their `.br` and
/// `.gz` siblings (contents marked so the test sees which was sent), an
/// index.html with an inline loader, and an image without siblings.
fn write_dist(dir: &Path) {
    let index = format!(
        "<!DOCTYPE html><html><head><link rel=\"modulepreload\" href=\"/{JS}\">\
         <script type=\"module\">{LOADER}</script></head><body></body></html>"
    );
    for (name, body) in [
        (WASM, b"\0asm-plain-wasm-bytes".to_vec()),
        (&format!("{WASM}.br"), b"brotli-wasm".to_vec()),
        (&format!("{WASM}.gz"), b"gzip-wasm-bytes".to_vec()),
        (JS, b"export default function init() {}".to_vec()),
        (&format!("{JS}.gz"), b"gzip-js".to_vec()),
        ("index.html", index.into_bytes()),
        ("index.html.br", b"brotli-index".to_vec()),
        ("logo.png", b"\x89PNG-not-really".to_vec()),
    ] {
        std::fs::write(dir.join(name), body).unwrap();
    }
}

async fn app_with_dist(backend: Backend) -> TestApp {
    let db = TestDatabase::new(backend).await;
    let dist = db.dir.path().join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    write_dist(&dist);
    let mut settings = test_settings(&db);
    settings.static_dir = dist;
    launch(db, settings).await.0
}

async fn fetch(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = app.client.request(method, app.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn header(res: &reqwest::Response, name: impl reqwest::header::AsHeaderName) -> &str {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

async fn assets_are_served_precompressed_by_accept_encoding_with_their_own_type_and_length(
    backend: Backend,
) {
    let app = app_with_dist(backend).await;
    let wasm = format!("/{WASM}");
    for (accept, encoding, body) in [
        ("gzip, deflate, br, zstd", "br", "brotli-wasm"),
        ("br;q=0.5, gzip", "gzip", "gzip-wasm-bytes"),
        ("gzip", "gzip", "gzip-wasm-bytes"),
        ("identity", "", "\0asm-plain-wasm-bytes"),
        ("br;q=0, gzip;q=0", "", "\0asm-plain-wasm-bytes"),
    ] {
        let res = fetch(&app, Method::GET, &wasm, &[("accept-encoding", accept)]).await;
        assert_eq!(res.status(), StatusCode::OK, "{accept}");
        assert_eq!(header(&res, CONTENT_TYPE), "application/wasm", "{accept}");
        assert_eq!(header(&res, CONTENT_ENCODING), encoding, "{accept}");
        assert_eq!(header(&res, VARY), "accept-encoding", "{accept}");
        assert_eq!(
            header(&res, CONTENT_LENGTH),
            body.len().to_string(),
            "{accept}"
        );
        assert_eq!(res.text().await.unwrap(), body, "{accept}");
    }
    // No header at all: the file itself.
    let res = fetch(&app, Method::GET, &wasm, &[]).await;
    assert_eq!(header(&res, CONTENT_ENCODING), "");
    assert_eq!(res.text().await.unwrap(), "\0asm-plain-wasm-bytes");

    // A file with only a gzip sibling falls back to it for a brotli client.
    let res = fetch(
        &app,
        Method::GET,
        &format!("/{JS}"),
        &[("accept-encoding", "br, gzip")],
    )
    .await;
    assert!(header(&res, CONTENT_TYPE).starts_with("text/javascript"));
    assert_eq!(header(&res, CONTENT_ENCODING), "gzip");
    assert_eq!(res.text().await.unwrap(), "gzip-js");

    // HEAD: the same headers, length of what GET would send, no body.
    let res = fetch(&app, Method::HEAD, &wasm, &[("accept-encoding", "br")]).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, CONTENT_ENCODING), "br");
    assert_eq!(
        header(&res, CONTENT_LENGTH),
        "brotli-wasm".len().to_string()
    );
    assert!(res.bytes().await.unwrap().is_empty());

    // A range counts bytes of the plain file, never of a compressed sibling.
    let res = fetch(
        &app,
        Method::GET,
        &wasm,
        &[("accept-encoding", "br"), ("range", "bytes=0-3")],
    )
    .await;
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_ne!(header(&res, CONTENT_ENCODING), "br");
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"\0asm");

    // Each representation has its own ETag, and revalidation works per encoding.
    let br = fetch(&app, Method::GET, &wasm, &[("accept-encoding", "br")]).await;
    let plain = fetch(&app, Method::GET, &wasm, &[]).await;
    let etag = header(&br, ETAG).to_owned();
    assert!(!etag.is_empty());
    assert_ne!(etag, header(&plain, ETAG));
    let res = fetch(
        &app,
        Method::GET,
        &wasm,
        &[("accept-encoding", "br"), ("if-none-match", &etag)],
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);

    // Images are sent as they are, without Vary.
    let res = fetch(
        &app,
        Method::GET,
        "/logo.png",
        &[("accept-encoding", "br, gzip")],
    )
    .await;
    assert_eq!(header(&res, CONTENT_TYPE), "image/png");
    assert_eq!(header(&res, CONTENT_ENCODING), "");
    assert_eq!(header(&res, VARY), "");
}

async fn hashed_assets_are_cached_for_a_year_and_index_html_is_revalidated(backend: Backend) {
    let app = app_with_dist(backend).await;
    for path in [format!("/{WASM}"), format!("/{JS}")] {
        let res = fetch(&app, Method::GET, &path, &[("accept-encoding", "br")]).await;
        assert_eq!(
            header(&res, CACHE_CONTROL),
            "public, max-age=31536000, immutable",
            "{path}"
        );
    }
    for path in ["/", "/index.html", "/keys", "/logo.png"] {
        let res = fetch(&app, Method::GET, path, &[("accept-encoding", "gzip")]).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&res, CACHE_CONTROL), "no-cache", "{path}");
    }
    // The index has a brotli sibling: a client route gets it too.
    let res = fetch(
        &app,
        Method::GET,
        "/settings/members",
        &[("accept-encoding", "br")],
    )
    .await;
    assert!(header(&res, CONTENT_TYPE).starts_with("text/html"));
    assert_eq!(header(&res, CONTENT_ENCODING), "br");
    assert_eq!(res.text().await.unwrap(), "brotli-index");
}

async fn missing_files_are_404_and_client_side_routes_get_the_index(backend: Backend) {
    let app = app_with_dist(backend).await;
    for path in [
        "/favicon.ico",
        "/x.wasm",
        "/tally-frontend-ffffffffffffffff_bg.wasm",
        "/snippets/missing.js",
        "/keys/list.json",
    ] {
        for method in [Method::GET, Method::HEAD] {
            let res = fetch(&app, method.clone(), path, &[]).await;
            assert_eq!(res.status(), StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(header(&res, CONTENT_TYPE), "application/json", "{path}");
        }
        let res = fetch(&app, Method::GET, path, &[]).await;
        assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    }
    // Nothing outside the static directory, however the path is spelled.
    std::fs::write(app.db.dir.path().join("secret.txt"), "secret").unwrap();
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/.hidden.txt",
    ] {
        let res = fetch(&app, Method::GET, path, &[]).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(!res.text().await.unwrap().contains("secret\n"), "{path}");
    }
    // Client-side routes (no extension) get the index.
    for path in ["/", "/keys", "/settings/members", "/monitoring/requests"] {
        let res = fetch(&app, Method::GET, path, &[]).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert!(
            header(&res, CONTENT_TYPE).starts_with("text/html"),
            "{path}"
        );
        assert!(res.text().await.unwrap().contains(LOADER), "{path}");
    }
    // API paths never fall back to the index.
    let res = fetch(&app, Method::GET, "/api/v1/nothing-here", &[]).await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
}

async fn every_response_carries_the_security_headers_and_the_index_allows_only_its_own_script(
    backend: Backend,
) {
    let app = app_with_dist(backend).await;
    for path in [
        "/",
        "/keys",
        &format!("/{WASM}"),
        "/favicon.ico",
        "/healthz",
        "/api/v1/me",
        "/api/openapi.json",
        "/api/docs/",
        "/v1/models",
    ] {
        let res = fetch(&app, Method::GET, path, &[]).await;
        assert_eq!(header(&res, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&res, "x-frame-options"), "DENY", "{path}");
        assert_eq!(header(&res, "referrer-policy"), "no-referrer", "{path}");
        let csp = header(&res, CONTENT_SECURITY_POLICY);
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(
            csp.contains("object-src 'none'") || csp.starts_with("default-src 'none'"),
            "{path}: {csp}"
        );
        assert!(
            !csp.contains("unsafe-eval'") || csp.contains("'wasm-unsafe-eval'"),
            "{path}: {csp}"
        );
        assert!(
            !csp.contains("script-src 'self' 'unsafe-inline'"),
            "{path}: {csp}"
        );
    }
    // API answers may load nothing.
    let res = fetch(&app, Method::GET, "/api/v1/me", &[]).await;
    assert!(header(&res, CONTENT_SECURITY_POLICY).starts_with("default-src 'none'"));
    // The docs run Swagger UI's own scripts, never inline ones.
    let res = fetch(&app, Method::GET, "/api/docs/", &[]).await;
    let csp = header(&res, CONTENT_SECURITY_POLICY);
    assert!(csp.contains("script-src 'self';"), "{csp}");

    // The index's policy names exactly its inline loader by hash, and wasm.
    let hash = base64_sha256(LOADER);
    for path in ["/", "/keys"] {
        let res = fetch(&app, Method::GET, path, &[("accept-encoding", "br")]).await;
        let csp = header(&res, CONTENT_SECURITY_POLICY);
        assert!(
            csp.contains(&format!(
                "script-src 'self' 'wasm-unsafe-eval' 'sha256-{hash}';"
            )),
            "{path}: {csp}"
        );
        assert!(csp.contains("default-src 'self'"), "{csp}");
    }
}

fn base64_sha256(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(text.as_bytes()))
}
