//! The committed OpenAPI snapshot must match the code.

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
fn every_operation_has_a_summary_tag_and_error_responses() {
    let doc = serde_json::to_value(tally_server::openapi::document()).expect("serialize");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 12, "{} paths", paths.len());
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            let where_ = format!("{method} {path}");
            assert!(
                op["summary"].is_string() || op["description"].is_string(),
                "{where_}: doc"
            );
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{where_}: tag"
            );
            let responses = op["responses"].as_object().expect("responses");
            let authed = op.get("security").is_some();
            if authed {
                assert!(responses.contains_key("401"), "{where_}: documents 401");
            }
        }
    }
}
