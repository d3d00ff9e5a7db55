//! The committed OpenAPI snapshot must match the code, and the document the
//! server serves must be complete: every reference resolves, every error is
//! an `ErrorBody` in JSON, every operation documents the errors its kind can
//! give, and downloads and streams name their real content types.

use std::path::PathBuf;

#[test]
fn the_openapi_snapshot_matches_the_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi/openapi.json");
    let current = tally_server::openapi::document()
        .to_pretty_json()
        .expect("render OpenAPI")
        + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &current).expect("write snapshot");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == current,
        "openapi/openapi.json is out of date; run `cargo xtask openapi` and commit the result"
    );
}

#[test]
fn every_operation_has_a_tag() {
    let doc = serde_json::to_value(tally_server::openapi::document()).expect("serialize");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 12, "{} paths", paths.len());
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{method} {path}: tag"
            );
        }
    }
}

mod served {
    use std::collections::HashSet;

    use reqwest::StatusCode;
    use serde_json::Value;

    use crate::helpers::{backend_tests, json, spawn_app, Backend};

    backend_tests!(
        the_served_document_is_the_snapshot_source_and_every_reference_resolves,
        every_error_response_is_an_error_body_in_json,
        every_operation_documents_the_errors_its_kind_can_give,
        downloads_and_streams_are_documented_with_their_real_content_types,
    );

    async fn served(backend: Backend) -> Value {
        let app = spawn_app(backend).await;
        json(app.get("/api/openapi.json", None).await, StatusCode::OK).await
    }

    /// Follows a local JSON pointer (`#/components/schemas/X`).
    fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
        let pointer = reference.strip_prefix('#')?;
        doc.pointer(pointer)
    }

    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    /// Every (method, path, operation) of the document.
    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                out.push((method.to_uppercase(), path.clone(), op));
            }
        }
        out
    }

    /// A response object, following a `$ref` to `components/responses`.
    fn response<'a>(doc: &'a Value, r: &'a Value) -> &'a Value {
        match r["$ref"].as_str() {
            Some(reference) => resolve(doc, reference).expect("response reference resolves"),
            None => r,
        }
    }

    async fn the_served_document_is_the_snapshot_source_and_every_reference_resolves(
        backend: Backend,
    ) {
        let doc = served(backend).await;
        let snapshot = serde_json::to_value(tally_server::openapi::document()).expect("render");
        assert!(
            doc == snapshot,
            "/api/openapi.json differs from openapi::document()"
        );
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 100, "{} references", all.len());
        let unresolved: HashSet<&str> = all
            .into_iter()
            .filter(|r| resolve(&doc, r).is_none())
            .collect();
        assert!(unresolved.is_empty(), "unresolved: {unresolved:?}");
        let mut ids = HashSet::new();
        for (method, path, op) in operations(&doc) {
            let id = op["operationId"].as_str().expect("operationId");
            assert!(
                ids.insert(id.to_owned()),
                "{method} {path}: operationId {id} is not unique"
            );
        }
    }

    async fn every_error_response_is_an_error_body_in_json(backend: Backend) {
        let doc = served(backend).await;
        for (method, path, op) in operations(&doc) {
            for (status, r) in op["responses"].as_object().expect("responses") {
                let r = response(&doc, r);
                let content = &r["content"];
                if status.starts_with('2') || status == "default" {
                    continue;
                }
                // `4XX`/`5XX`: an upstream's own answer, passed through by the gateway.
                if status.ends_with("XX") {
                    assert!(
                        path.starts_with("/v1/"),
                        "{method} {path}: {status} outside the gateway"
                    );
                    continue;
                }
                let types: Vec<&String> = content
                    .as_object()
                    .map(|c| c.keys().collect())
                    .unwrap_or_default();
                assert_eq!(
                    types,
                    ["application/json"],
                    "{method} {path} {status}: content types"
                );
                assert_eq!(
                    content["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                    "{method} {path} {status}: schema"
                );
            }
        }
    }

    async fn every_operation_documents_the_errors_its_kind_can_give(backend: Backend) {
        let doc = served(backend).await;
        for (method, path, op) in operations(&doc) {
            let responses = op["responses"].as_object().expect("responses");
            let has = |status: &str| responses.contains_key(status);
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let is_in = |place: &str| params.iter().any(|p| p["in"] == place);
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            let body = op.get("requestBody").is_some();
            let where_ = format!("{method} {path}");
            assert!(
                op["summary"].is_string() || op["description"].is_string(),
                "{where_}: doc"
            );
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{where_}: a success"
            );
            if secured {
                assert!(has("401"), "{where_}: 401 for its credentials");
            }
            if body || is_in("query") {
                assert!(has("400"), "{where_}: 400 for a malformed body or query");
            }
            if body {
                assert!(has("413"), "{where_}: 413 for an oversized body");
            }
            if is_in("path") {
                assert!(has("404"), "{where_}: 404 for an unknown id");
            }
            if secured || body || !params.is_empty() {
                assert!(has("500") && has("503"), "{where_}: 500 and 503");
            }
        }
    }

    fn content_types(doc: &Value, method: &str, path: &str, status: &str) -> Vec<String> {
        let r = &doc["paths"][path][method]["responses"][status];
        response(doc, r)["content"]
            .as_object()
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    async fn downloads_and_streams_are_documented_with_their_real_content_types(backend: Backend) {
        let doc = served(backend).await;
        let ns = "/api/v1/namespaces/{namespace_id}";
        assert_eq!(
            content_types(&doc, "get", &format!("{ns}/monitoring/export"), "200"),
            ["application/x-ndjson", "text/csv"]
        );
        for statements in ["/credits/statements", "/credits/statements/{month}"] {
            assert_eq!(
                content_types(&doc, "get", &format!("{ns}{statements}"), "200"),
                ["application/json", "text/csv"]
            );
        }
        for streaming in ["/v1/chat/completions", "/v1/completions"] {
            assert_eq!(
                content_types(&doc, "post", streaming, "200"),
                ["application/json", "text/event-stream"]
            );
        }
    }
}
