use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use tally_common::ErrorCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::AuthSettings;
use crate::error::ApiError;

/// Argon2id hashing with the configured cost.
///
/// At most `max_concurrent_hashes` run at once (each holds
/// `argon2_memory_kib` while it runs, on the blocking pool); the others wait
/// up to `hash_wait_ms` for a slot and then get 503 `unavailable` with
/// `Retry-After`, so a flood of logins can neither exhaust memory nor starve
/// the blocking pool that the rest of the server uses.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A hash of a random password, verified against when the email is unknown.
    dummy_hash: Arc<String>,
    slots: Arc<Semaphore>,
    wait: Duration,
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
        let slots = match settings.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut this = Passwords {
            params,
            dummy_hash: Arc::new(String::new()),
            slots: Arc::new(Semaphore::new(slots)),
            wait: Duration::from_millis(settings.hash_wait_ms),
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

    /// Waits for a hashing slot; the permit is held until the hash is done.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(closed)) => Err(ApiError::internal(closed)),
            Err(_) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "the server is busy checking passwords; try again shortly",
            )
            .with_retry_after(Duration::from_secs(1))),
        }
    }

    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let permit = self.slot().await?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.hash_blocking(&password)
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
    }

    /// Verifies `password` against `hash`, or against a dummy hash when there is
    /// no account, so both cases take the same time. Returns true on a match.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        let permit = self.slot().await?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cheap(max: usize, wait_ms: u64) -> Passwords {
        let settings = AuthSettings {
            argon2_memory_kib: 1024,
            argon2_iterations: 1,
            max_concurrent_hashes: max,
            hash_wait_ms: wait_ms,
            ..AuthSettings::default()
        };
        Passwords::new(&settings).unwrap()
    }

    #[tokio::test]
    async fn hashes_wait_for_a_slot_and_give_up_with_503_and_retry_after() {
        let passwords = cheap(1, 50);
        let hash = passwords.hash("a password".into()).await.unwrap();
        // Hold the only slot, as a long hash would.
        let held = passwords.slots.clone().acquire_owned().await.unwrap();
        let err = passwords
            .verify("a password".into(), Some(hash.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Unavailable);
        assert_eq!(err.retry_after_secs(), Some(1));
        assert!(passwords.hash("another".into()).await.is_err());
        drop(held);
        assert!(passwords
            .verify("a password".into(), Some(hash))
            .await
            .unwrap());
    }

    #[test]
    fn zero_slots_means_one_per_cpu() {
        let passwords = cheap(0, 10);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(passwords.slots.available_permits(), cpus);
    }
}
