//! The OpenAPI document. Paths come from the route table (`routes::configure`)
//! through utoipa-actix-web; this module adds the title, tags and the bearer
//! security scheme. `openapi/openapi.json` is a snapshot of `document()`, and a
//! test fails when the two drift (`cargo xtask openapi` refreshes it).

use actix_web::App;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::AppExt;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tally API",
        description = "Manage accounts, namespaces, members and events of a Tally server. \
                       Every error is `{\"error\": {\"code\", \"message\", \"request_id\"}}` \
                       with a stable snake_case code."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "system", description = "Health, readiness and status"),
        (name = "auth", description = "Accounts and sessions"),
        (name = "namespaces", description = "Namespaces: the unit of billing and isolation"),
        (name = "members", description = "Members, roles and invitations"),
        (name = "events", description = "The event log (D4)"),
        (name = "keys", description = "API keys for the gateway (K1-K7)"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token from /api/v1/auth/login"))
                    .build(),
            ),
        );
    }
}

/// The document without paths; the route table fills those in.
pub fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// The complete document, as served at `/api/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, api) = App::new()
        .into_utoipa_app()
        .openapi(base())
        .configure(crate::routes::configure)
        .split_for_parts();
    api
}
