//! The OpenAPI document. Paths come from the route table (`routes::configure`)
//! through utoipa-actix-web; this module adds the title, tags, the security
//! schemes, the schemas that parameters refer to, and the error responses that
//! every route of a kind can give. `openapi/openapi.json` is a snapshot of
//! `document()`, and a test fails when the two drift (`cargo xtask openapi`
//! refreshes it).
//!
//! Policy: the document lists every status and content type a route can
//! answer, and nothing it cannot. A handler's `#[utoipa::path]` documents what
//! is particular to it (its success bodies, 403 for a role it requires, 409,
//! 429, …); [`complete`] adds, where the handler did not, the responses that
//! come from the shared machinery rather than from the handler:
//!
//! - 400 `invalid_request`/`invalid_json` for every operation with a query, a
//!   request body or a typed path parameter (the extractors' failures,
//!   `crate::error::extractors`);
//! - 401 for every operation with a security requirement;
//! - 404 for every operation with a path parameter (an unknown id, or a
//!   namespace the caller is not a member of);
//! - 413 `payload_too_large` for every operation with a request body;
//! - 500 `internal` and 503 `unavailable` (the database is busy or down) for
//!   every operation that authenticates or takes input.
//!
//! Every error response is `ErrorBody` as `application/json`. Content-type
//! errors answer 400 `invalid_json`, never 415. Operation ids are unique.

use std::collections::HashMap;

use actix_web::App;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
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
    // Schemas that only query and path parameters refer to: utoipa-actix-web
    // collects the schemas of bodies and responses, not of parameters.
    components(schemas(
        tally_common::TimeRange,
        tally_common::StatusClass,
        tally_common::Bucket,
        tally_common::BreakdownBy,
        tally_common::ExportFormat,
        tally_common::Environment,
        crate::routes::statements::Format,
    )),
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
        (name = "backups", description = "Backups of the whole database, taken now or on a schedule (O1)"),
        (name = "webhooks", description = "Signed webhooks: endpoints, event subscriptions, deliveries with every attempt, replay (W1, W2)"),
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
    complete(api)
}

/// Adds what the route table cannot say by itself (see the module docs): the
/// shared error responses and unique operation ids. The server applies it to
/// the document it serves, `document()` to the snapshot.
pub fn complete(mut api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let components = api.components.get_or_insert_with(Default::default);
    for shared in Shared::ALL {
        components
            .responses
            .insert(shared.name().to_owned(), RefOr::T(shared.response()));
    }
    let mut ids: HashMap<String, usize> = HashMap::new();
    for item in api.paths.paths.values_mut() {
        for (_, op) in operations(item) {
            add_shared_responses(op);
            if let Some(id) = &op.operation_id {
                *ids.entry(id.clone()).or_default() += 1;
            }
        }
    }
    // A handler registered for several methods has one id; suffix the method.
    for item in api.paths.paths.values_mut() {
        for (method, op) in operations(item) {
            if let Some(id) = op.operation_id.as_mut() {
                if ids.get(id.as_str()).copied().unwrap_or(0) > 1 {
                    *id = format!("{id}_{method}");
                }
            }
        }
    }
    api
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("options", item.options.as_mut()),
        ("head", item.head.as_mut()),
        ("patch", item.patch.as_mut()),
        ("trace", item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.map(|op| (method, op)))
}

/// The error responses that come from shared machinery (extractors, auth,
/// the database), documented once under `components/responses`.
#[derive(Clone, Copy)]
enum Shared {
    BadRequest,
    Unauthorized,
    NotFound,
    PayloadTooLarge,
    Internal,
    Unavailable,
}

impl Shared {
    const ALL: [Shared; 6] = [
        Shared::BadRequest,
        Shared::Unauthorized,
        Shared::NotFound,
        Shared::PayloadTooLarge,
        Shared::Internal,
        Shared::Unavailable,
    ];

    fn name(self) -> &'static str {
        match self {
            Shared::BadRequest => "BadRequest",
            Shared::Unauthorized => "Unauthorized",
            Shared::NotFound => "NotFound",
            Shared::PayloadTooLarge => "PayloadTooLarge",
            Shared::Internal => "Internal",
            Shared::Unavailable => "Unavailable",
        }
    }

    fn status(self) -> &'static str {
        match self {
            Shared::BadRequest => "400",
            Shared::Unauthorized => "401",
            Shared::NotFound => "404",
            Shared::PayloadTooLarge => "413",
            Shared::Internal => "500",
            Shared::Unavailable => "503",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Shared::BadRequest => {
                "`invalid_request`: a path or query parameter is malformed or fails validation; \
                 `invalid_json`: the body is not JSON of the expected shape, or its \
                 Content-Type is not application/json"
            }
            Shared::Unauthorized => {
                "Missing, malformed, expired or revoked credentials (`unauthorized`, \
                 `token_expired`, `invalid_api_key`, …); see `WWW-Authenticate`"
            }
            Shared::NotFound => "`not_found`: no such resource, or one the caller may not see",
            Shared::PayloadTooLarge => {
                "`payload_too_large`: the body is larger than the server accepts"
            }
            Shared::Internal => {
                "`internal`: an unexpected failure inside the server; quote the request id"
            }
            Shared::Unavailable => {
                "`unavailable`: the database is busy or unreachable; retry later"
            }
        }
    }

    fn response(self) -> utoipa::openapi::Response {
        ResponseBuilder::new()
            .description(self.description())
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    }
}

fn add_shared_responses(op: &mut Operation) {
    let params = op.parameters.as_deref().unwrap_or_default();
    let has_query = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Query));
    let has_path = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Path));
    // A path parameter that is not a plain string (an enum such as
    // `environment`) fails to parse with 400.
    let has_typed_path = params.iter().any(|p| {
        matches!(p.parameter_in, ParameterIn::Path)
            && serde_json::to_value(&p.schema).ok() != Some(serde_json::json!({"type": "string"}))
    });
    let has_body = op.request_body.is_some();
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let takes_input = secured || has_body || !params.is_empty();
    let mut wanted = Vec::new();
    if has_query || has_body || has_typed_path {
        wanted.push(Shared::BadRequest);
    }
    if secured {
        wanted.push(Shared::Unauthorized);
    }
    if has_path {
        wanted.push(Shared::NotFound);
    }
    if has_body {
        wanted.push(Shared::PayloadTooLarge);
    }
    if takes_input {
        wanted.push(Shared::Internal);
        wanted.push(Shared::Unavailable);
    }
    for shared in wanted {
        op.responses
            .responses
            .entry(shared.status().to_owned())
            .or_insert_with(|| {
                RefOr::Ref(Ref::new(format!(
                    "#/components/responses/{}",
                    shared.name()
                )))
            });
    }
}
