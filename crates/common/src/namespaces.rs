//! Namespaces (the unit of billing and isolation), members and roles.

use serde::{Deserialize, Serialize};

/// A member's role in a namespace. Order of power: owner > admin > the rest;
/// developer, billing and viewer are side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including managing owners.
    Owner,
    /// Everything except granting or removing the owner role.
    Admin,
    /// Keys, monitoring and test mode.
    Developer,
    /// Credits and invoices.
    Billing,
    /// Read-only.
    Viewer,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Owner,
        Role::Admin,
        Role::Developer,
        Role::Billing,
        Role::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Billing => "billing",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Namespace {
    pub id: String,
    pub name: String,
    /// RFC 3339 UTC.
    pub created_at: String,
}

/// A namespace as seen by one member: with that member's role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NamespaceWithRole {
    #[serde(flatten)]
    pub namespace: Namespace,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NamespaceList {
    pub items: Vec<NamespaceWithRole>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateNamespaceRequest {
    /// 1 to 100 characters.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 100))]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateNamespaceRequest {
    /// 1 to 100 characters.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 100))]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Member {
    pub account_id: String,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    /// RFC 3339 UTC.
    pub joined_at: String,
}

/// A pending invitation to a namespace. Whoever holds its link (the token,
/// shown once when it is made) accepts it while signed in, and joins with the
/// role; nothing is ever joined by email alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Invitation {
    pub id: String,
    /// Whom the inviter meant; a note, not a check: any signed-in account
    /// holding the link can accept it.
    pub email: String,
    pub role: Role,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC; after it the link no longer works.
    pub expires_at: String,
    /// Past `expires_at`: withdraw it and invite again for a new link.
    pub expired: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberList {
    pub members: Vec<Member>,
    pub invitations: Vec<Invitation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddMemberRequest {
    pub email: String,
    pub role: Role,
}

/// A new invitation and its token, returned once: only a hash is kept, so
/// the link cannot be shown again (inviting the same email again makes a new
/// one and the old link stops working).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddMemberResponse {
    pub invitation: Invitation,
    /// The secret the invitee presents (`tin_…`, 256 random bits).
    pub token: String,
    /// The dashboard link to send, relative to the server's address:
    /// `/invite#<token>` (a fragment, so the token never reaches a server log).
    pub invite_path: String,
}

/// An invitation token, in a body rather than a URL so that it never shows up
/// in access logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InvitationTokenRequest {
    pub token: String,
}

/// What an invitation offers, for the invitee to read before accepting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InvitationPreview {
    pub namespace_name: String,
    pub role: Role,
    pub email: String,
    /// The display name of whoever invited.
    pub invited_by: String,
    /// RFC 3339 UTC.
    pub expires_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateMemberRequest {
    pub role: Role,
}
