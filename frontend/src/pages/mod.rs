pub mod auth;
pub mod dashboard;
pub mod keys;
pub mod placeholder;
pub mod settings;
