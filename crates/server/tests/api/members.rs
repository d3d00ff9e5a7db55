use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{ErrorCode, InvitationPreview, Me, Member, MemberList, NamespaceWithRole, Role};
use tally_store::sqlx::{self, Row};

use crate::helpers::{assert_error, backend_tests, json, spawn_app, Backend, TestApp, User};

backend_tests!(
    adding_a_member_is_an_invitation_that_the_invitee_accepts_with_its_token,
    a_sign_up_with_an_invited_email_joins_nothing,
    wrong_expired_withdrawn_renewed_and_used_invitation_tokens_fail,
    member_management_follows_the_roles,
    a_namespace_always_keeps_an_owner,
    concurrent_demotions_of_two_owners_leave_one_owner,
    any_member_can_leave,
);

fn members_path(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/members")
}

async fn invite(app: &TestApp, owner: &User, email: &str, role: &str) -> Value {
    let res = app
        .post(
            &members_path(&owner.namespace_id),
            Some(&owner.token),
            json!({"email": email, "role": role}),
        )
        .await;
    json(res, StatusCode::CREATED).await
}

async fn accept(app: &TestApp, user: &User, token: &str) -> reqwest::Response {
    app.post(
        "/api/v1/invitations/accept",
        Some(&user.token),
        json!({"token": token}),
    )
    .await
}

async fn lookup(app: &TestApp, token: &str) -> reqwest::Response {
    app.post("/api/v1/invitations/lookup", None, json!({"token": token}))
        .await
}

async fn namespaces_of(app: &TestApp, user: &User) -> Vec<NamespaceWithRole> {
    let me: Me = json(
        app.get("/api/v1/me", Some(&user.token)).await,
        StatusCode::OK,
    )
    .await;
    me.namespaces
}

async fn adding_a_member_is_an_invitation_that_the_invitee_accepts_with_its_token(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let owner = app.signup("owner").await;
    let dev = app.signup("dev").await;
    let body = invite(&app, &owner, &dev.email.to_uppercase(), "developer").await;
    let token = body["token"].as_str().unwrap().to_owned();
    assert!(
        token.starts_with("tin_") && token.len() >= 4 + 43,
        "{token}"
    );
    assert_eq!(body["invite_path"], format!("/invite#{token}"));
    assert_eq!(body["invitation"]["email"], dev.email);
    assert_eq!(body["invitation"]["role"], "developer");
    assert_eq!(body["invitation"]["expired"], false);

    // The answer has the same shape whether or not the email has an account.
    let unknown = invite(&app, &owner, "nobody-yet@example.com", "viewer").await;
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&body), keys(&unknown));
    assert_eq!(keys(&body["invitation"]), keys(&unknown["invitation"]));

    // Nothing happens until the invitee accepts.
    assert_eq!(namespaces_of(&app, &dev).await.len(), 1);
    let preview: InvitationPreview = json(lookup(&app, &token).await, StatusCode::OK).await;
    assert_eq!(preview.namespace_name, "Personal");
    assert_eq!(preview.role, Role::Developer);
    assert_eq!(preview.invited_by, "owner");

    let joined: NamespaceWithRole = json(accept(&app, &dev, &token).await, StatusCode::OK).await;
    assert_eq!(joined.namespace.id, owner.namespace_id);
    assert_eq!(joined.role, Role::Developer);
    let shared = namespaces_of(&app, &dev).await;
    assert!(shared
        .iter()
        .any(|n| n.namespace.id == owner.namespace_id && n.role == Role::Developer));
    let list: MemberList = json(
        app.get(&members_path(&owner.namespace_id), Some(&owner.token))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list.members.len(), 2);
    assert_eq!(
        list.invitations.len(),
        1,
        "only the unknown email's is left"
    );

    // Adding a member again is a conflict; the role is changed with PATCH.
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
    // Accepting needs a session.
    let res = app
        .post(
            "/api/v1/invitations/accept",
            None,
            json!({"token": unknown["token"]}),
        )
        .await;
    assert_error(res, StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized).await;
}

async fn a_sign_up_with_an_invited_email_joins_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = app.signup("owner").await;
    let body = invite(&app, &owner, "Newcomer@Example.com", "owner").await;
    assert_eq!(body["invitation"]["email"], "newcomer@example.com");

    // Whoever signs up first with the invited email gets only their own namespace.
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
    assert_eq!(me.namespaces.len(), 1, "personal only");
    assert_eq!(me.namespaces[0].role, Role::Owner);
    assert_ne!(me.namespaces[0].namespace.id, owner.namespace_id);
    let list: MemberList = json(
        app.get(&members_path(&owner.namespace_id), Some(&owner.token))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list.members.len(), 1);
    assert_eq!(list.invitations.len(), 1, "still pending");
}

async fn wrong_expired_withdrawn_renewed_and_used_invitation_tokens_fail(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = app.signup("owner").await;
    let guest = app.signup("guest").await;
    let first = invite(&app, &owner, &guest.email, "viewer").await;
    let first_token = first["token"].as_str().unwrap().to_owned();

    // Only a hash of the token is stored.
    let mut conn = app.store.conn().await.unwrap();
    let rows = sqlx::query("SELECT token_hash FROM invitations")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    for row in &rows {
        let stored: String = row.get("token_hash");
        assert!(!stored.contains(&first_token[4..]));
        assert_eq!(stored.len(), 64);
    }

    for wrong in ["", "tin_nope", &format!("{first_token}x")] {
        assert_error(
            accept(&app, &guest, wrong).await,
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
        )
        .await;
        assert_error(
            lookup(&app, wrong).await,
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
        )
        .await;
    }

    // Inviting again renews the invitation: the old link stops working.
    let renewed = invite(&app, &owner, &guest.email, "billing").await;
    let token = renewed["token"].as_str().unwrap().to_owned();
    assert_ne!(token, first_token);
    assert_error(
        accept(&app, &guest, &first_token).await,
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
    )
    .await;

    // Expired: refused, and left in place (listed as expired).
    sqlx::query("UPDATE invitations SET expires_at = $1")
        .bind(tally_store::now_ms() - 1)
        .execute(&mut *conn)
        .await
        .unwrap();
    assert_error(
        accept(&app, &guest, &token).await,
        StatusCode::GONE,
        ErrorCode::InvitationExpired,
    )
    .await;
    assert_error(
        lookup(&app, &token).await,
        StatusCode::GONE,
        ErrorCode::InvitationExpired,
    )
    .await;
    let list: MemberList = json(
        app.get(&members_path(&owner.namespace_id), Some(&owner.token))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list.invitations.len(), 1);
    assert!(list.invitations[0].expired);
    assert_eq!(namespaces_of(&app, &guest).await.len(), 1);

    // Withdrawn: gone.
    let withdrawn = invite(&app, &owner, &guest.email, "viewer").await;
    let res = app
        .delete(
            &format!(
                "/api/v1/namespaces/{}/invitations/{}",
                owner.namespace_id,
                withdrawn["invitation"]["id"].as_str().unwrap()
            ),
            &owner.token,
        )
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_error(
        accept(&app, &guest, withdrawn["token"].as_str().unwrap()).await,
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
    )
    .await;

    // Used: works once, even for two accounts racing for it.
    let last = invite(&app, &owner, &guest.email, "viewer").await;
    let token = last["token"].as_str().unwrap().to_owned();
    let other = app.signup("other").await;
    let (a, b) = tokio::join!(accept(&app, &guest, &token), accept(&app, &other, &token));
    let statuses = [a.status(), b.status()];
    assert!(statuses.contains(&StatusCode::OK), "{statuses:?}");
    assert!(statuses.contains(&StatusCode::NOT_FOUND), "{statuses:?}");
    assert_error(
        accept(&app, &guest, &token).await,
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
    )
    .await;
    let list: MemberList = json(
        app.get(&members_path(&owner.namespace_id), Some(&owner.token))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list.members.len(), 2, "exactly one of the two joined");
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
