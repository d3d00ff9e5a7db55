use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tally_common::{Account, AuthResponse, ErrorCode};
use tally_store::AnyConnection;

use crate::error::{ApiError, ApiResult};

/// Issues and checks session tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_ttl_secs: i64,
    refresh_ttl_secs: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Account id.
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
}

/// Seconds an access token is still taken after its expiry (clock skew
/// between instances).
const LEEWAY_SECS: i64 = 5;

/// Prefix that makes refresh tokens recognisable in secret scanners.
const REFRESH_PREFIX: &str = "trt_";

impl Tokens {
    pub fn new(secret: &[u8], access_ttl_secs: i64, refresh_ttl_secs: i64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // The expiry is checked against Tally's clock (`verify_access`), as
        // every other deadline is; the claim must still be there.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_ttl_secs,
            refresh_ttl_secs,
        }
    }

    pub fn access_token(&self, account_id: &str) -> ApiResult<String> {
        let now = tally_store::clock::now_ms() / 1000;
        let claims = Claims {
            sub: account_id.to_owned(),
            iat: now,
            exp: now + self.access_ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    /// Checks an access token and returns the account id it was issued to.
    pub fn verify_access(&self, token: &str) -> ApiResult<String> {
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) if data.claims.exp + LEEWAY_SECS < tally_store::clock::now_ms() / 1000 => {
                Err(ApiError::new(
                    ErrorCode::TokenExpired,
                    "the access token has expired; refresh it",
                ))
            }
            Ok(data) => Ok(data.claims.sub),
            Err(_) => Err(ApiError::unauthorized("the access token is invalid")),
        }
    }

    /// Creates a session for `account`: a new access token and a new refresh token
    /// in `family_id` (a new family on log-in, the same family on refresh).
    pub async fn issue(
        &self,
        conn: &mut AnyConnection,
        account: Account,
        family_id: &str,
    ) -> ApiResult<AuthResponse> {
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let refresh_token = format!("{REFRESH_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
        let expires_at = tally_store::now_ms() + self.refresh_ttl_secs * 1000;
        tally_store::sessions::insert(
            conn,
            &hash_refresh_token(&refresh_token),
            &account.id,
            family_id,
            expires_at,
        )
        .await?;
        Ok(AuthResponse {
            access_token: self.access_token(&account.id)?,
            token_type: "Bearer".into(),
            expires_in: self.access_ttl_secs,
            refresh_token,
            account,
        })
    }
}

/// The stored form of a refresh token: hex SHA-256. A fast hash is right here
/// because the token is 256 random bits, not a guessable password.
pub fn hash_refresh_token(token: &str) -> String {
    sha256_hex(token)
}

/// Hex SHA-256 of a high-entropy secret (refresh tokens, API key secrets).
pub fn sha256_hex(secret: &str) -> String {
    use std::fmt::Write;
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A one-time secret (setup token, invitation): `prefix` and 256 random bits,
/// URL-safe. Stored only as [`sha256_hex`].
pub fn random_token(prefix: &str) -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// A fresh random secret for signing access tokens, when none is configured.
pub fn generate_secret() -> String {
    let mut raw = [0u8; 48];
    rand::thread_rng().fill_bytes(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}
