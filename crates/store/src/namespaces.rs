//! Namespaces, memberships and invitations. Roles are stored as their
//! snake_case names; the role rules themselves live in the server.

use sqlx::{AnyConnection, Row};
use tally_common::Role;

use crate::{bad_value, new_id, now_ms, Result};

#[derive(Debug, Clone)]
pub struct NamespaceRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct MembershipRow {
    pub namespace: NamespaceRow,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct MemberRow {
    pub account_id: String,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub joined_at: i64,
}

#[derive(Debug, Clone)]
pub struct InvitationRow {
    pub id: String,
    pub namespace_id: String,
    pub email: String,
    pub role: Role,
    pub created_at: i64,
    /// 0 for invitations made before tokens (never valid).
    pub expires_at: i64,
}

/// An invitation as its token's holder sees it.
#[derive(Debug, Clone)]
pub struct InvitationPreviewRow {
    pub invitation: InvitationRow,
    pub namespace_name: String,
    pub invited_by: String,
}

fn role(s: &str) -> Result<Role> {
    Role::parse(s).ok_or_else(|| bad_value("role", s))
}

pub async fn insert(conn: &mut AnyConnection, name: &str) -> Result<NamespaceRow> {
    let row = NamespaceRow {
        id: new_id("ns"),
        name: name.to_owned(),
        created_at: now_ms(),
    };
    sqlx::query("INSERT INTO namespaces (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(&row.id)
        .bind(&row.name)
        .bind(row.created_at)
        .execute(&mut *conn)
        .await?;
    Ok(row)
}

pub async fn rename(conn: &mut AnyConnection, id: &str, name: &str) -> Result<()> {
    sqlx::query("UPDATE namespaces SET name = $1 WHERE id = $2")
        .bind(name)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Locks the namespace row until the transaction ends, serialising changes
/// that must see each other (e.g. the rule that a namespace keeps one owner).
/// A no-op `UPDATE` takes a row lock on PostgreSQL and the write lock on SQLite.
/// Returns false when the namespace does not exist.
pub async fn lock(conn: &mut AnyConnection, id: &str) -> Result<bool> {
    let res = sqlx::query("UPDATE namespaces SET name = name WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(res.rows_affected() == 1)
}

/// Inserts or replaces a membership.
pub async fn upsert_member(
    conn: &mut AnyConnection,
    namespace_id: &str,
    account_id: &str,
    role: Role,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO memberships (namespace_id, account_id, role, created_at) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (namespace_id, account_id) DO UPDATE SET role = excluded.role",
    )
    .bind(namespace_id)
    .bind(account_id)
    .bind(role.as_str())
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn remove_member(
    conn: &mut AnyConnection,
    namespace_id: &str,
    account_id: &str,
) -> Result<bool> {
    let res = sqlx::query("DELETE FROM memberships WHERE namespace_id = $1 AND account_id = $2")
        .bind(namespace_id)
        .bind(account_id)
        .execute(&mut *conn)
        .await?;
    Ok(res.rows_affected() > 0)
}

/// The caller's membership in one namespace, or `None` when not a member
/// (which callers must report exactly like a namespace that does not exist).
pub async fn membership(
    conn: &mut AnyConnection,
    namespace_id: &str,
    account_id: &str,
) -> Result<Option<MembershipRow>> {
    let row = sqlx::query(
        "SELECT n.id, n.name, n.created_at, m.role FROM memberships m \
         JOIN namespaces n ON n.id = m.namespace_id \
         WHERE m.namespace_id = $1 AND m.account_id = $2",
    )
    .bind(namespace_id)
    .bind(account_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| membership_from_row(&r)).transpose()
}

fn membership_from_row(r: &sqlx::any::AnyRow) -> Result<MembershipRow> {
    Ok(MembershipRow {
        namespace: NamespaceRow {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            created_at: r.try_get("created_at")?,
        },
        role: role(r.try_get::<&str, _>("role")?)?,
    })
}

/// Like [`membership`], plus the member's email: what an authenticated request
/// needs to know about its caller, in one query.
pub async fn caller(
    conn: &mut AnyConnection,
    namespace_id: &str,
    account_id: &str,
) -> Result<Option<(MembershipRow, String)>> {
    let row = sqlx::query(
        "SELECT n.id, n.name, n.created_at, m.role, a.email FROM memberships m \
         JOIN namespaces n ON n.id = m.namespace_id \
         JOIN accounts a ON a.id = m.account_id \
         WHERE m.namespace_id = $1 AND m.account_id = $2",
    )
    .bind(namespace_id)
    .bind(account_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| Ok((membership_from_row(&r)?, r.try_get("email")?)))
        .transpose()
}

/// All namespaces of an account, oldest first.
pub async fn memberships_of(
    conn: &mut AnyConnection,
    account_id: &str,
) -> Result<Vec<MembershipRow>> {
    let rows = sqlx::query(
        "SELECT n.id, n.name, n.created_at, m.role FROM memberships m \
         JOIN namespaces n ON n.id = m.namespace_id \
         WHERE m.account_id = $1 ORDER BY n.created_at, n.id",
    )
    .bind(account_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(membership_from_row).collect()
}

const MEMBER_SELECT: &str = "SELECT a.id, a.email, a.display_name, m.role, m.created_at \
     FROM memberships m JOIN accounts a ON a.id = m.account_id";

fn member_from_row(r: &sqlx::any::AnyRow) -> Result<MemberRow> {
    Ok(MemberRow {
        account_id: r.try_get("id")?,
        email: r.try_get("email")?,
        display_name: r.try_get("display_name")?,
        role: role(r.try_get::<&str, _>("role")?)?,
        joined_at: r.try_get("created_at")?,
    })
}

/// The namespaces an operator owns: where server-wide news (backups) goes
/// to webhooks.
pub async fn owned_by_operators(conn: &mut AnyConnection) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT m.namespace_id FROM memberships m \
         JOIN accounts a ON a.id = m.account_id \
         WHERE a.is_operator = 1 AND m.role = 'owner' ORDER BY m.namespace_id",
    )
    .fetch_all(&mut *conn)
    .await?)
}

pub async fn members(conn: &mut AnyConnection, namespace_id: &str) -> Result<Vec<MemberRow>> {
    let sql = format!("{MEMBER_SELECT} WHERE m.namespace_id = $1 ORDER BY m.created_at, a.email");
    let rows = sqlx::query(&sql)
        .bind(namespace_id)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(member_from_row).collect()
}

/// One member of a namespace, or `None` when the account is not a member.
pub async fn member(
    conn: &mut AnyConnection,
    namespace_id: &str,
    account_id: &str,
) -> Result<Option<MemberRow>> {
    let sql = format!("{MEMBER_SELECT} WHERE m.namespace_id = $1 AND m.account_id = $2");
    let row = sqlx::query(&sql)
        .bind(namespace_id)
        .bind(account_id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(member_from_row).transpose()
}

pub async fn count_owners(conn: &mut AnyConnection, namespace_id: &str) -> Result<i64> {
    let n: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM memberships WHERE namespace_id = $1 AND role = 'owner'",
    )
    .bind(namespace_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(n)
}

/// Creates the invitation of an email to a namespace, or renews it: a new
/// token (the old one stops working), role, inviter and expiry.
pub async fn upsert_invitation(
    conn: &mut AnyConnection,
    namespace_id: &str,
    email: &str,
    role: Role,
    invited_by: &str,
    token_hash: &str,
    expires_at: i64,
) -> Result<InvitationRow> {
    let id = new_id("inv");
    let now = now_ms();
    let row = sqlx::query(
        "INSERT INTO invitations \
           (id, namespace_id, email, role, invited_by, created_at, token_hash, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (namespace_id, email) DO UPDATE SET role = excluded.role, \
           invited_by = excluded.invited_by, created_at = excluded.created_at, \
           token_hash = excluded.token_hash, expires_at = excluded.expires_at \
         RETURNING id, created_at",
    )
    .bind(&id)
    .bind(namespace_id)
    .bind(email)
    .bind(role.as_str())
    .bind(invited_by)
    .bind(now)
    .bind(token_hash)
    .bind(expires_at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(InvitationRow {
        id: row.try_get("id")?,
        namespace_id: namespace_id.to_owned(),
        email: email.to_owned(),
        role,
        created_at: row.try_get("created_at")?,
        expires_at,
    })
}

const INVITATION_COLUMNS: &str = "id, namespace_id, email, role, created_at, expires_at";

fn invitation_from_row(r: &sqlx::any::AnyRow) -> Result<InvitationRow> {
    Ok(InvitationRow {
        id: r.try_get("id")?,
        namespace_id: r.try_get("namespace_id")?,
        email: r.try_get("email")?,
        role: role(r.try_get::<&str, _>("role")?)?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

pub async fn invitations(
    conn: &mut AnyConnection,
    namespace_id: &str,
) -> Result<Vec<InvitationRow>> {
    let sql = format!(
        "SELECT {INVITATION_COLUMNS} FROM invitations \
         WHERE namespace_id = $1 ORDER BY created_at, email"
    );
    let rows = sqlx::query(&sql)
        .bind(namespace_id)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(invitation_from_row).collect()
}

/// The invitation whose token hashes to `token_hash`, with its namespace's
/// name and the inviter's display name; expired ones too.
pub async fn invitation_by_token(
    conn: &mut AnyConnection,
    token_hash: &str,
) -> Result<Option<InvitationPreviewRow>> {
    let row = sqlx::query(
        "SELECT i.id, i.namespace_id, i.email, i.role, i.created_at, i.expires_at, \
           n.name AS namespace_name, COALESCE(a.display_name, '') AS inviter \
         FROM invitations i JOIN namespaces n ON n.id = i.namespace_id \
         LEFT JOIN accounts a ON a.id = i.invited_by \
         WHERE i.token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(InvitationPreviewRow {
            invitation: invitation_from_row(&r)?,
            namespace_name: r.try_get("namespace_name")?,
            invited_by: r.try_get("inviter")?,
        })
    })
    .transpose()
}

/// Removes and returns the invitation of a token, so that of two concurrent
/// accepts only one gets it. The caller rolls back when it turns out expired.
pub async fn take_invitation(
    conn: &mut AnyConnection,
    token_hash: &str,
) -> Result<Option<InvitationRow>> {
    let sql =
        format!("DELETE FROM invitations WHERE token_hash = $1 RETURNING {INVITATION_COLUMNS}");
    let row = sqlx::query(&sql)
        .bind(token_hash)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(invitation_from_row).transpose()
}

pub async fn delete_invitation(
    conn: &mut AnyConnection,
    namespace_id: &str,
    invitation_id: &str,
) -> Result<bool> {
    let res = sqlx::query("DELETE FROM invitations WHERE namespace_id = $1 AND id = $2")
        .bind(namespace_id)
        .bind(invitation_id)
        .execute(&mut *conn)
        .await?;
    Ok(res.rows_affected() > 0)
}

pub async fn exists(conn: &mut AnyConnection, id: &str) -> Result<bool> {
    let row = sqlx::query("SELECT 1 FROM namespaces WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.is_some())
}
