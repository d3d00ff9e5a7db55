use reqwest::StatusCode;
use serde_json::json;
use tally_common::{ErrorCode, EventPage, Severity};

use crate::helpers::{assert_error, backend_tests, json, spawn_app, Backend};

backend_tests!(
    the_event_log_shows_startup_and_namespace_events_newest_first,
    the_event_log_pages_and_filters,
    events_of_one_namespace_never_appear_in_another,
);

async fn the_event_log_shows_startup_and_namespace_events_newest_first(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("ada").await;
    app.patch(
        &format!("/api/v1/namespaces/{}", user.namespace_id),
        &user.token,
        json!({"name": "Lab"}),
    )
    .await;
    let page: EventPage = json(
        app.get(
            &format!("/api/v1/namespaces/{}/events", user.namespace_id),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let kinds: Vec<_> = page.items.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["namespace.renamed", "namespace.created", "startup"]);
    assert!(page.next_before.is_none());
    let startup = &page.items[2];
    assert_eq!(startup.severity, Severity::Info);
    assert!(startup.namespace_id.is_none());
    assert!(startup.message.starts_with("Tally "));
    assert_eq!(page.items[0].actor.as_deref(), Some(user.email.as_str()));
    assert!(page.items[0].message.contains("\"Lab\""));
}

async fn the_event_log_pages_and_filters(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("grace").await;
    let base = format!("/api/v1/namespaces/{}/events", user.namespace_id);
    for i in 0..5 {
        app.patch(
            &format!("/api/v1/namespaces/{}", user.namespace_id),
            &user.token,
            json!({"name": format!("Name {i}")}),
        )
        .await;
    }
    // 7 events: startup, created, 5 renames. Page through 3 at a time.
    let mut seen = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let url = match before {
            Some(b) => format!("{base}?limit=3&before={b}"),
            None => format!("{base}?limit=3"),
        };
        let page: EventPage = json(app.get(&url, Some(&user.token)).await, StatusCode::OK).await;
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|e| e.id));
        match page.next_before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats"
    );

    let page: EventPage = json(
        app.get(
            &format!("{base}?severity=error&environment=live"),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert!(page.items.is_empty());
    let page: EventPage = json(
        app.get(
            &format!("{base}?severity=info&environment=test"),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        page.items.len(),
        7,
        "events of no single environment show in both"
    );

    for bad in [
        "limit=0",
        "limit=201",
        "limit=x",
        "severity=fatal",
        "environment=prod",
        "before=x",
    ] {
        let res = app.get(&format!("{base}?{bad}"), Some(&user.token)).await;
        assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    }
}

async fn events_of_one_namespace_never_appear_in_another(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let res = app
        .patch(
            &format!("/api/v1/namespaces/{}", alice.namespace_id),
            &alice.token,
            json!({"name": "Alice secret project"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    // Alice's own log has the rename, so there is something to leak.
    let alices: EventPage = json(
        app.get(
            &format!("/api/v1/namespaces/{}/events", alice.namespace_id),
            Some(&alice.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert!(
        alices
            .items
            .iter()
            .any(|e| e.kind == "namespace.renamed" && e.message.contains("Alice secret project")),
        "the rename is logged in Alice's namespace"
    );
    let page: EventPage = json(
        app.get(
            &format!("/api/v1/namespaces/{}/events", bob.namespace_id),
            Some(&bob.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert!(
        page.items.iter().any(|e| e.kind == "namespace.created"),
        "Bob sees his own events"
    );
    for event in &page.items {
        assert!(
            event.namespace_id.is_none()
                || event.namespace_id.as_deref() == Some(bob.namespace_id.as_str())
        );
        assert!(!event.message.contains("Alice"));
    }
}
