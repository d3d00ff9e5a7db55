use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::config::AuthSettings;
use crate::error::ApiError;

/// Argon2id hashing with the configured cost.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A hash of a random password, verified against when the email is unknown.
    dummy_hash: Arc<String>,
}

impl Passwords {
    pub fn new(settings: &AuthSettings) -> anyhow::Result<Self> {
        let params = Params::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_parallelism,
            None,
        )
        .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
        let mut this = Passwords {
            params,
            dummy_hash: Arc::new(String::new()),
        };
        let dummy = uuid::Uuid::new_v4().to_string();
        this.dummy_hash = Arc::new(this.hash_blocking(&dummy)?);
        Ok(this)
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    fn hash_blocking(&self, password: &str) -> anyhow::Result<String> {
        let salt = SaltString::generate(&mut OsRng);
        self.argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("argon2 hash failed: {e}"))
    }

    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.hash_blocking(&password))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)
    }

    /// Verifies `password` against `hash`, or against a dummy hash when there is
    /// no account, so both cases take the same time. Returns true on a match.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let known = hash.is_some();
            let phc = hash.unwrap_or_else(|| this.dummy_hash.as_str().to_owned());
            let parsed = PasswordHash::new(&phc)
                .map_err(|e| anyhow::anyhow!("stored password hash is malformed: {e}"))?;
            // Verification uses the parameters recorded in the hash itself.
            let ok = this
                .argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
            Ok::<bool, anyhow::Error>(known && ok)
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
    }
}
