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
        description = "Manage accounts, namespaces, members, keys, credits, usage and the catalog of a Tally server, and call APIs through its gateway. \
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
        (name = "catalog", description = "APIs callable through the gateway, their upstreams and prices"),
        (name = "credits", description = "Balances, the ledger, grants, the testnet faucet, top-ups, statements, low-balance alerts and auto top-ups (C1-C6)"),
        (name = "usage", description = "Recorded gateway calls (G4) and the Playground"),
        (name = "monitoring", description = "Charts, breakdowns, the request log and exports from usage rollups, and the dashboard summary (M1-M6, D1-D3)"),
        (name = "gateway", description = "The data plane: OpenAI-compatible endpoints and every other catalog API (G1-G5); authenticate with an API key"),
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
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key secret (tk_test_… or tk_live_…)"))
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
