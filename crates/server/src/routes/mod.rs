//! The route table: every REST handler is registered here, once, through
//! utoipa-actix-web so the OpenAPI document is generated from the same table.

pub mod alerts;
pub mod auth;
pub mod auto_topups;
pub mod backups;
pub mod banners;
pub mod bonuses;
pub mod catalog;
pub mod credits;
pub mod dashboard;
pub mod events;
pub mod invitations;
pub mod keys;
pub mod me;
pub mod members;
pub mod monitoring;
pub mod namespaces;
pub mod statements;
pub mod subscriptions;
pub mod system;
pub mod topups;
pub mod usage;
pub mod webhooks;

use utoipa_actix_web::service_config::ServiceConfig;

use crate::gateway::http as gateway;

/// Registers every documented route.
pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(system::healthz)
        .service(system::readyz)
        .service(gateway::chat_completions)
        .service(gateway::completions)
        .service(gateway::embeddings)
        .service(gateway::models)
        .service(gateway::model)
        .service(gateway::generic)
        .service(
            utoipa_actix_web::scope("/api/v1")
                .service(system::status)
                .service(auth::signup)
                .service(auth::login)
                .service(auth::setup)
                .service(backups::restore)
                .service(auth::refresh)
                .service(auth::logout)
                .service(me::me)
                .service(namespaces::list)
                .service(namespaces::create)
                .service(namespaces::get)
                .service(namespaces::update)
                .service(members::list)
                .service(members::add)
                .service(members::update)
                .service(members::remove)
                .service(members::delete_invitation)
                .service(invitations::lookup)
                .service(invitations::accept)
                .service(events::list)
                .service(keys::create)
                .service(keys::list)
                .service(keys::get)
                .service(keys::update)
                .service(keys::rotate)
                .service(keys::revoke)
                .service(keys::audit)
                .service(usage::key_stats)
                .service(usage::list)
                .service(usage::playground)
                .service(monitoring::series)
                .service(monitoring::breakdown)
                .service(monitoring::requests)
                .service(monitoring::export)
                .service(dashboard::summary)
                .service(credits::balances)
                .service(credits::ledger)
                .service(credits::faucet)
                .service(credits::grant)
                .service(bonuses::grant)
                .service(bonuses::list)
                .service(banners::list)
                .service(topups::create_intent)
                .service(topups::list_intents)
                .service(topups::get_intent)
                .service(topups::deposit)
                .service(statements::list)
                .service(statements::get)
                .service(alerts::list)
                .service(alerts::set)
                .service(alerts::remove)
                .service(auto_topups::list)
                .service(auto_topups::set)
                .service(auto_topups::remove)
                .service(subscriptions::packages)
                .service(subscriptions::list)
                .service(subscriptions::create)
                .service(subscriptions::cancel)
                .service(catalog::list)
                .service(catalog::admin_list)
                .service(catalog::create)
                .service(catalog::admin_get)
                .service(catalog::update)
                .service(catalog::remove)
                .service(backups::list)
                .service(backups::create)
                .service(backups::download)
                .service(backups::remove)
                .service(webhooks::list)
                .service(webhooks::create)
                .service(webhooks::get)
                .service(webhooks::update)
                .service(webhooks::remove)
                .service(webhooks::rotate)
                .service(webhooks::test)
                .service(webhooks::deliveries)
                .service(webhooks::delivery)
                .service(webhooks::replay),
        );
}
