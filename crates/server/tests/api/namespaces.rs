use reqwest::StatusCode;
use serde_json::json;
use tally_common::{ErrorCode, Me, NamespaceList, NamespaceWithRole, Role};

use crate::helpers::{assert_error, backend_tests, json, spawn_app, Backend};

backend_tests!(
    creating_a_namespace_makes_the_caller_its_owner,
    namespace_names_are_validated,
    renaming_needs_owner_or_admin,
    another_accounts_namespace_is_not_found_on_every_route,
);

async fn creating_a_namespace_makes_the_caller_its_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("olga").await;
    let res = app
        .post(
            "/api/v1/namespaces",
            Some(&user.token),
            json!({"name": "  Research lab  "}),
        )
        .await;
    let created: NamespaceWithRole = json(res, StatusCode::CREATED).await;
    assert_eq!(created.namespace.name, "Research lab");
    assert_eq!(created.role, Role::Owner);

    let list: NamespaceList = json(
        app.get("/api/v1/namespaces", Some(&user.token)).await,
        StatusCode::OK,
    )
    .await;
    let names: Vec<_> = list
        .items
        .iter()
        .map(|n| n.namespace.name.as_str())
        .collect();
    assert_eq!(names, ["Personal", "Research lab"]);

    let one: NamespaceWithRole = json(
        app.get(
            &format!("/api/v1/namespaces/{}", created.namespace.id),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(one, created);
}

async fn namespace_names_are_validated(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.signup("nina").await;
    for name in ["", "   ", &"x".repeat(101), "bad\u{0007}name"] {
        let res = app
            .post(
                "/api/v1/namespaces",
                Some(&user.token),
                json!({"name": name}),
            )
            .await;
        assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    }
    let res = app
        .patch(
            &format!("/api/v1/namespaces/{}", user.namespace_id),
            &user.token,
            json!({"name": ""}),
        )
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest).await;
    let me: Me = json(
        app.get("/api/v1/me", Some(&user.token)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me.namespaces.len(), 1);
    assert_eq!(me.namespaces[0].namespace.name, "Personal");
}

async fn renaming_needs_owner_or_admin(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = app.signup("owner").await;
    let path = format!("/api/v1/namespaces/{}", owner.namespace_id);
    for role in ["developer", "billing", "viewer"] {
        let member = app.signup(role).await;
        app.add_member(&owner, &member, role).await;
        let res = app
            .patch(&path, &member.token, json!({"name": "Hijacked"}))
            .await;
        assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
    }
    let admin = app.signup("admin").await;
    app.add_member(&owner, &admin, "admin").await;
    let res = app
        .patch(&path, &admin.token, json!({"name": "Renamed"}))
        .await;
    let ns: NamespaceWithRole = json(res, StatusCode::OK).await;
    assert_eq!(ns.namespace.name, "Renamed");
    assert_eq!(ns.role, Role::Admin);
    let ns: NamespaceWithRole =
        json(app.get(&path, Some(&owner.token)).await, StatusCode::OK).await;
    assert_eq!(ns.namespace.name, "Renamed");
}

async fn another_accounts_namespace_is_not_found_on_every_route(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.signup("alice").await;
    let bob = app.signup("bob").await;
    let ns = &alice.namespace_id;
    let missing = "ns_does_not_exist";

    // Bob probes Alice's namespace and one that does not exist: the answers
    // must be identical, so existence is never revealed.
    for target in [ns.as_str(), missing] {
        let base = format!("/api/v1/namespaces/{target}");
        let responses = vec![
            app.get(&base, Some(&bob.token)).await,
            app.patch(&base, &bob.token, json!({"name": "mine"})).await,
            app.get(&format!("{base}/members"), Some(&bob.token)).await,
            app.post(
                &format!("{base}/members"),
                Some(&bob.token),
                json!({"email": bob.email, "role": "owner"}),
            )
            .await,
            app.patch(
                &format!("{base}/members/{}", alice.account_id),
                &bob.token,
                json!({"role": "viewer"}),
            )
            .await,
            app.delete(&format!("{base}/members/{}", alice.account_id), &bob.token)
                .await,
            app.delete(&format!("{base}/invitations/inv_x"), &bob.token)
                .await,
            app.get(&format!("{base}/events"), Some(&bob.token)).await,
        ];
        for res in responses {
            let err = assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
            assert_eq!(err.error.message, "namespace not found");
        }
    }
    // Nothing changed for Alice.
    let me: Me = json(
        app.get("/api/v1/me", Some(&alice.token)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me.namespaces[0].namespace.name, "Personal");
    let members: tally_common::MemberList = json(
        app.get(
            &format!("/api/v1/namespaces/{ns}/members"),
            Some(&alice.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(members.members.len(), 1);
    assert!(members.invitations.is_empty());
}
