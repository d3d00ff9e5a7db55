//! The catalog: every signed-in account reads the public view; operators
//! create, change and delete APIs. Changes reach this instance's gateway at
//! once and other instances within one poll.

use actix_web::{delete, get, patch, post, web, HttpResponse};
use tally_common::{
    CatalogAdminList, CatalogApi, CatalogApiAdmin, CatalogApiConfig, CatalogList, ErrorBody,
    ErrorCode, UpdateCatalogApi, Upstream,
};
use tally_store::catalog::CatalogRow;

use crate::auth::{CurrentAccount, CurrentOperator};
use crate::error::{ApiError, ApiResult};
use crate::gateway::catalog::validate;
use crate::state::AppState;
use crate::views::rfc3339;

/// What reads show instead of an upstream's credential.
const MASK: &str = "********";

fn parse(row: &CatalogRow) -> ApiResult<CatalogApiConfig> {
    serde_json::from_str(&row.config).map_err(|e| {
        ApiError::internal(anyhow::anyhow!(
            "catalog API {} is malformed: {e}",
            row.slug
        ))
    })
}

fn masked(ups: &[Upstream]) -> Vec<Upstream> {
    ups.iter()
        .map(|u| Upstream {
            api_key: u.api_key.as_ref().map(|_| MASK.to_owned()),
            ..u.clone()
        })
        .collect()
}

fn to_admin(row: &CatalogRow) -> ApiResult<CatalogApiAdmin> {
    let mut config = parse(row)?;
    config.upstreams = masked(&config.upstreams);
    config.test_upstreams = masked(&config.test_upstreams);
    Ok(CatalogApiAdmin {
        config,
        source: row.source.clone(),
        created_at: rfc3339(row.created_at),
        updated_at: rfc3339(row.updated_at),
    })
}

pub fn to_public(c: &CatalogApiConfig) -> CatalogApi {
    CatalogApi {
        slug: c.slug.clone(),
        name: c.name.clone(),
        description: c.description.clone(),
        protocol: c.protocol,
        models: c.models.clone(),
        pricing: c.pricing.clone(),
        live: c.enabled && !c.upstreams.is_empty(),
        test_mode: if c.test_upstreams.is_empty() {
            "sandbox"
        } else {
            "upstream"
        }
        .into(),
        enabled: c.enabled,
        owner: if c.owner_namespace_id.is_some() {
            "seller"
        } else {
            "platform"
        }
        .into(),
    }
}

/// An upstream given back with the mask keeps the credential stored for its URL.
fn unmask(new: Vec<Upstream>, old: &[Upstream]) -> Vec<Upstream> {
    new.into_iter()
        .map(|mut u| {
            if u.api_key.as_deref() == Some(MASK) {
                u.api_key = old
                    .iter()
                    .find(|o| o.url == u.url)
                    .and_then(|o| o.api_key.clone());
            }
            u
        })
        .collect()
}

/// Every upstream URL must pass the egress policy (`upstream_not_allowed`).
fn check_egress(state: &AppState, config: &CatalogApiConfig) -> ApiResult<()> {
    for u in config.upstreams.iter().chain(&config.test_upstreams) {
        state.egress.policy().check_url(&u.url).map_err(|why| {
            ApiError::new(
                ErrorCode::UpstreamNotAllowed,
                format!("upstream {}: {why}", u.url),
            )
        })?;
    }
    Ok(())
}

/// A model may be served by one API only, or routing by model would be ambiguous.
fn check_models(state: &AppState, config: &CatalogApiConfig) -> ApiResult<()> {
    let catalog = state.gateway.catalog();
    for model in &config.models {
        if let Some(other) = catalog.apis.iter().find(|a| {
            a.slug() != config.slug && (a.config.models.contains(model) || a.slug() == model)
        }) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "model '{model}' is already served by API '{}'",
                    other.slug()
                ),
            ));
        }
    }
    Ok(())
}

/// The APIs callers can use, with their prices (no upstream details).
#[utoipa::path(
    operation_id = "list_catalog",
    tag = "catalog",
    security(("bearer" = [])),
    responses((status = 200, body = CatalogList), (status = 401, body = ErrorBody))
)]
#[get("/catalog")]
pub async fn list(state: web::Data<AppState>, _caller: CurrentAccount) -> web::Json<CatalogList> {
    let catalog = state.gateway.catalog();
    web::Json(CatalogList {
        items: catalog.apis.iter().map(|a| to_public(&a.config)).collect(),
    })
}

/// Every API with its configuration; upstream credentials are masked.
#[utoipa::path(
    tag = "catalog",
    security(("bearer" = [])),
    responses(
        (status = 401, body = ErrorBody),(status = 200, body = CatalogAdminList), (status = 403, body = ErrorBody))
)]
#[get("/admin/catalog")]
pub async fn admin_list(
    state: web::Data<AppState>,
    _operator: CurrentOperator,
) -> ApiResult<web::Json<CatalogAdminList>> {
    let mut conn = state.store.conn().await?;
    let rows = tally_store::catalog::list(&mut conn).await?;
    Ok(web::Json(CatalogAdminList {
        items: rows.iter().map(to_admin).collect::<ApiResult<_>>()?,
    }))
}

/// Adds an API to the catalog.
#[utoipa::path(
    operation_id = "create_catalog_api",
    tag = "catalog",
    security(("bearer" = [])),
    request_body = CatalogApiConfig,
    responses(
        (status = 401, body = ErrorBody),
        (status = 201, body = CatalogApiAdmin),
        (status = 400, description = "`invalid_request`, or `upstream_not_allowed`: an upstream URL's host is refused by the egress policy", body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, description = "The slug or a model is taken", body = ErrorBody),
    )
)]
#[post("/admin/catalog")]
pub async fn create(
    state: web::Data<AppState>,
    _operator: CurrentOperator,
    body: web::Json<CatalogApiConfig>,
) -> ApiResult<HttpResponse> {
    let config = body.into_inner();
    validate(&config).map_err(ApiError::invalid)?;
    check_egress(&state, &config)?;
    check_models(&state, &config)?;
    let mut conn = state.store.conn().await?;
    check_owner(&mut conn, &config).await?;
    let json = serde_json::to_string(&config).map_err(ApiError::internal)?;
    let row = match tally_store::catalog::insert(&mut conn, &config.slug, &json, "api").await {
        Err(tally_store::StoreError::Conflict(_)) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("an API with slug '{}' exists", config.slug),
            ))
        }
        other => other?,
    };
    drop(conn);
    state.gateway.reload_catalog().await?;
    Ok(HttpResponse::Created().json(to_admin(&row)?))
}

/// One API with its configuration.
#[utoipa::path(
    tag = "catalog",
    security(("bearer" = [])),
    params(("slug" = String, Path)),
    responses(
        (status = 401, body = ErrorBody),(status = 200, body = CatalogApiAdmin), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody))
)]
#[get("/admin/catalog/{slug}")]
pub async fn admin_get(
    state: web::Data<AppState>,
    _operator: CurrentOperator,
    slug: web::Path<String>,
) -> ApiResult<web::Json<CatalogApiAdmin>> {
    let mut conn = state.store.conn().await?;
    let row = tally_store::catalog::get(&mut conn, &slug)
        .await?
        .ok_or_else(|| ApiError::not_found("API"))?;
    Ok(web::Json(to_admin(&row)?))
}

/// Changes an API; absent fields stay as they are.
#[utoipa::path(
    operation_id = "update_catalog_api",
    tag = "catalog",
    security(("bearer" = [])),
    params(("slug" = String, Path)),
    request_body = UpdateCatalogApi,
    responses(
        (status = 401, body = ErrorBody),
        (status = 200, body = CatalogApiAdmin),
        (status = 400, description = "`invalid_request`, or `upstream_not_allowed`: an upstream URL's host is refused by the egress policy", body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
    )
)]
#[patch("/admin/catalog/{slug}")]
pub async fn update(
    state: web::Data<AppState>,
    _operator: CurrentOperator,
    slug: web::Path<String>,
    body: web::Json<UpdateCatalogApi>,
) -> ApiResult<web::Json<CatalogApiAdmin>> {
    let change = body.into_inner();
    let mut tx = state.store.begin().await?;
    let row = tally_store::catalog::get(&mut tx, &slug)
        .await?
        .ok_or_else(|| ApiError::not_found("API"))?;
    let mut c = parse(&row)?;
    if let Some(v) = change.name {
        c.name = v;
    }
    if let Some(v) = change.description {
        c.description = v;
    }
    if let Some(v) = change.models {
        c.models = v;
    }
    if let Some(v) = change.upstreams {
        c.upstreams = unmask(v, &c.upstreams);
    }
    if let Some(v) = change.test_upstreams {
        c.test_upstreams = unmask(v, &c.test_upstreams);
    }
    if let Some(v) = change.pricing {
        c.pricing = v;
    }
    if let Some(v) = change.output_limit_param {
        c.output_limit_param = v;
    }
    if let Some(v) = change.timeout_ms {
        c.timeout_ms = v;
    }
    if let Some(v) = change.health_path {
        c.health_path = Some(v).filter(|p| !p.is_empty());
    }
    if let Some(v) = change.enabled {
        c.enabled = v;
    }
    if let Some(v) = change.owner_namespace_id {
        c.owner_namespace_id = Some(v).filter(|o| !o.is_empty());
    }
    validate(&c).map_err(ApiError::invalid)?;
    check_egress(&state, &c)?;
    check_models(&state, &c)?;
    check_owner(&mut tx, &c).await?;
    let json = serde_json::to_string(&c).map_err(ApiError::internal)?;
    let row = tally_store::catalog::update(&mut tx, &slug, &json)
        .await?
        .ok_or_else(|| ApiError::not_found("API"))?;
    tx.commit().await?;
    state.gateway.reload_catalog().await?;
    Ok(web::Json(to_admin(&row)?))
}

/// A seller owner must be an existing namespace.
async fn check_owner(conn: &mut tally_store::AnyConnection, c: &CatalogApiConfig) -> ApiResult<()> {
    match &c.owner_namespace_id {
        Some(ns) if !tally_store::namespaces::exists(conn, ns).await? => Err(ApiError::invalid(
            format!("owner_namespace_id: no namespace '{ns}'"),
        )),
        _ => Ok(()),
    }
}

/// Removes an API; calls to it get 404 from then on. Its usage stays.
#[utoipa::path(
    operation_id = "delete_catalog_api",
    tag = "catalog",
    security(("bearer" = [])),
    params(("slug" = String, Path)),
    responses(
        (status = 401, body = ErrorBody),(status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody))
)]
#[delete("/admin/catalog/{slug}")]
pub async fn remove(
    state: web::Data<AppState>,
    _operator: CurrentOperator,
    slug: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let mut conn = state.store.conn().await?;
    if !tally_store::catalog::delete(&mut conn, &slug).await? {
        return Err(ApiError::not_found("API"));
    }
    drop(conn);
    state.gateway.reload_catalog().await?;
    Ok(HttpResponse::NoContent().finish())
}
