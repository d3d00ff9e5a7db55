//! HTTP integration tests; see `helpers` for how each runs on both backends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod auth;
mod backups;
mod billing;
mod bonuses;
mod cluster;
mod durability;
mod egress;
mod events;
mod gateway;
mod hostile;
mod keycache;
mod keys;
mod members;
mod money;
mod monitoring;
mod namespaces;
mod openapi;
mod operations;
mod operators;
mod periods;
mod redis_limits;
mod sellers;
mod static_files;
mod subscriptions;
mod system;
mod throttle;
mod webhooks;
