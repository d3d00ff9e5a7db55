use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{ErrorCode, Me, Member, MemberList, Role};

use crate::helpers::{assert_error, backend_tests, json, spawn_app, Backend};

backend_tests!(
    adding_an_existing_account_makes_it_a_member_with_that_role,
    inviting_an_unknown_email_makes_it_a_member_on_signup,
    member_management_follows_the_roles,
    a_namespace_always_keeps_an_owner,
    concurrent_demotions_of_two_owners_leave_one_owner,
    any_member_can_leave,
);

fn members_path(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/members")
}

async fn adding_an_existing_account_makes_it_a_member_with_that_role(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = app.signup("owner").await;
    let dev = app.signup("dev").await;
    let res = app
        .post(
            &members_path(&owner.namespace_id),
            Some(&owner.token),
            json!({"email": dev.email.to_uppercase(), "role": "developer"}),
        )
        .await;
    let body: Value = json(res, StatusCode::CREATED).await;
    assert_eq!(body["status"], "added");
    assert_eq!(body["member"]["role"], "developer");

    let me: Me = json(
        app.get("/api/v1/me", Some(&dev.token)).await,
        StatusCode::OK,
    )
    .await;
    let shared = me
        .namespaces
        .iter()
        .find(|n| n.namespace.id == owner.namespace_id)
        .expect("dev sees the shared namespace");
    assert_eq!(shared.role, Role::Developer);

    // Adding again is a conflict; the role is changed with PATCH instead.
    let res = app
        .post(
            &members_path(&owner.namespace_id),
            Some(&owner.token),
            json!({"email": dev.email, "role": "viewer"}),
        )
        .await;
    assert_error(res, StatusCode::CONFLICT, ErrorCode::Conflict).await;
    let res = app
        .post(
            &members_path(&owner.namespace_id),
            Some(&owner.token),
            json!({"email": dev.email, "role": "superuser"}),
        )
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::InvalidJson).await;
}

async fn inviting_an_unknown_email_makes_it_a_member_on_signup(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = app.signup("owner").await;
    let res = app
        .post(
            &members_path(&owner.namespace_id),
            Some(&owner.token),
            json!({"email": "Newcomer@Example.com", "role": "billing"}),
        )
        .await;
    let body: Value = json(res, StatusCode::CREATED).await;
    assert_eq!(body["status"], "invited");
    assert_eq!(body["invitation"]["email"], "newcomer@example.com");

    let list: MemberList = json(
        app.get(&members_path(&owner.namespace_id), Some(&owner.token))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list.invitations.len(), 1);

    let res = app
        .post(
            "/api/v1/auth/signup",
            None,
            json!({"email": "newcomer@example.com", "password": "a fine password"}),
        )
        .await;
    let auth: tally_common::AuthResponse = json(res, StatusCode::CREATED).await;
    let me: Me = json(
        app.get("/api/v1/me", Some(&auth.access_token)).await,
        StatusCode::OK,
    )
    .await;
    let roles: Vec<_> = me.namespaces.iter().map(|n| n.role).collect();
    assert_eq!(me.namespaces.len(), 2, "personal + invited");
    assert!(roles.contains(&Role::Billing));

    let list: MemberList = json(
        app.get(&members_path(&owner.namespace_id), Some(&owner.token))
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(list.invitations.is_empty());
    assert_eq!(list.members.len(), 2);
}

async fn member_management_follows_the_roles(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = app.signup("owner").await;
    let admin = app.signup("admin").await;
    let dev = app.signup("dev").await;
    let viewer = app.signup("viewer").await;
    app.add_member(&owner, &admin, "admin").await;
    app.add_member(&owner, &dev, "developer").await;
    app.add_member(&owner, &viewer, "viewer").await;
    let path = members_path(&owner.namespace_id);

    // Everyone may read the member list.
    for user in [&admin, &dev, &viewer] {
        let res = app.get(&path, Some(&user.token)).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    // Developers and viewers manage nobody.
    for user in [&dev, &viewer] {
        let res = app
            .post(
                &path,
                Some(&user.token),
                json!({"email": "x@example.com", "role": "viewer"}),
            )
            .await;
        assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
        let res = app
            .patch(
                &format!("{path}/{}", viewer.account_id),
                &user.token,
                json!({"role": "admin"}),
            )
            .await;
        assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
    }
    // Admins manage non-owners but cannot touch the owner role.
    let res = app
        .patch(
            &format!("{path}/{}", viewer.account_id),
            &admin.token,
            json!({"role": "billing"}),
        )
        .await;
    let member: Member = json(res, StatusCode::OK).await;
    assert_eq!(member.role, Role::Billing);
    let res = app
        .patch(
            &format!("{path}/{}", dev.account_id),
            &admin.token,
            json!({"role": "owner"}),
        )
        .await;
    assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
    let res = app
        .post(
            &path,
            Some(&admin.token),
            json!({"email": "boss@example.com", "role": "owner"}),
        )
        .await;
    assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
    let res = app
        .delete(&format!("{path}/{}", owner.account_id), &admin.token)
        .await;
    assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
    let res = app
        .delete(&format!("{path}/{}", dev.account_id), &admin.token)
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app
        .delete(&format!("{path}/{}", dev.account_id), &admin.token)
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;

    // The removed developer no longer sees the namespace at all.
    let res = app
        .get(
            &format!("/api/v1/namespaces/{}", owner.namespace_id),
            Some(&dev.token),
        )
        .await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;

    // Invitations: admins withdraw them, viewers cannot.
    let res = app
        .post(
            &path,
            Some(&admin.token),
            json!({"email": "later@example.com", "role": "viewer"}),
        )
        .await;
    let body: Value = json(res, StatusCode::CREATED).await;
    let inv = body["invitation"]["id"].as_str().unwrap().to_owned();
    let inv_path = format!(
        "/api/v1/namespaces/{}/invitations/{inv}",
        owner.namespace_id
    );
    let res = app.delete(&inv_path, &viewer.token).await;
    assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
    let res = app.delete(&inv_path, &admin.token).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app.delete(&inv_path, &admin.token).await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
}

async fn a_namespace_always_keeps_an_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = app.signup("owner").await;
    let path = members_path(&owner.namespace_id);
    let res = app
        .patch(
            &format!("{path}/{}", owner.account_id),
            &owner.token,
            json!({"role": "admin"}),
        )
        .await;
    assert_error(res, StatusCode::CONFLICT, ErrorCode::LastOwner).await;
    let res = app
        .delete(&format!("{path}/{}", owner.account_id), &owner.token)
        .await;
    assert_error(res, StatusCode::CONFLICT, ErrorCode::LastOwner).await;

    // With a second owner, the first may step down.
    let other = app.signup("other").await;
    app.add_member(&owner, &other, "owner").await;
    let res = app
        .patch(
            &format!("{path}/{}", owner.account_id),
            &owner.token,
            json!({"role": "viewer"}),
        )
        .await;
    let member: Member = json(res, StatusCode::OK).await;
    assert_eq!(member.role, Role::Viewer);
}

async fn concurrent_demotions_of_two_owners_leave_one_owner(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app.signup("a").await;
    let b = app.signup("b").await;
    app.add_member(&a, &b, "owner").await;
    let path = members_path(&a.namespace_id);
    let path_a = format!("{path}/{}", a.account_id);
    let path_b = format!("{path}/{}", b.account_id);
    for _ in 0..3 {
        let demote_a = app.patch(&path_a, &a.token, json!({"role": "admin"}));
        let demote_b = app.patch(&path_b, &b.token, json!({"role": "admin"}));
        let (ra, rb) = tokio::join!(demote_a, demote_b);
        let statuses = [ra.status(), rb.status()];
        let list: MemberList = json(app.get(&path, Some(&a.token)).await, StatusCode::OK).await;
        let owners = list
            .members
            .iter()
            .filter(|m| m.role == Role::Owner)
            .count();
        assert_eq!(owners, 1, "statuses {statuses:?}");
        // Restore two owners for the next round (whoever is still owner promotes).
        let still_owner = list.members.iter().find(|m| m.role == Role::Owner).unwrap();
        let (token, demoted) = if still_owner.account_id == a.account_id {
            (&a.token, &b.account_id)
        } else {
            (&b.token, &a.account_id)
        };
        let res = app
            .patch(
                &format!("{path}/{demoted}"),
                token,
                json!({"role": "owner"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
    }
}

async fn any_member_can_leave(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = app.signup("owner").await;
    let viewer = app.signup("viewer").await;
    app.add_member(&owner, &viewer, "viewer").await;
    let res = app
        .delete(
            &format!(
                "{}/{}",
                members_path(&owner.namespace_id),
                viewer.account_id
            ),
            &viewer.token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let me: Me = json(
        app.get("/api/v1/me", Some(&viewer.token)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me.namespaces.len(), 1);
    assert_eq!(me.namespaces[0].namespace.id, viewer.namespace_id);
}
