//! HTTP integration tests; see `helpers` for how each runs on both backends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helpers;

mod auth;
mod billing;
mod bonuses;
mod durability;
mod egress;
mod events;
mod gateway;
mod keys;
mod members;
mod monitoring;
mod namespaces;
mod openapi;
mod sellers;
mod static_files;
mod subscriptions;
mod system;
