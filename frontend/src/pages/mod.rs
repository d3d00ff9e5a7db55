pub mod auth;
pub mod dashboard;
pub mod placeholder;
pub mod settings;
