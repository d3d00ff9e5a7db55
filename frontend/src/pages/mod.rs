pub mod auth;
pub mod catalog;
pub mod credits;
pub mod dashboard;
pub mod keys;
pub mod placeholder;
pub mod playground;
pub mod settings;
