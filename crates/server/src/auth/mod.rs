//! Accounts' credentials and sessions.
//!
//! Policy:
//! - Passwords are hashed with Argon2id (PHC string with its parameters), on the
//!   blocking pool so hashing never stalls the async workers.
//! - Access tokens are HS256 JWTs valid for `access_token_ttl_secs`; they are not
//!   stored. Refresh tokens are 256-bit random secrets, stored only as SHA-256
//!   hashes, single use, rotated on every refresh and revoked by log-out.
//! - An unknown email costs the same Argon2 verification as a wrong password, so
//!   response time does not reveal which emails have accounts.
//! - Operators are made only explicitly (`bootstrap`); an email never grants
//!   anything by itself, and sign-up never joins a namespace.

pub mod accounts;
pub mod bootstrap;
pub mod extract;
pub mod password;
pub mod tokens;

pub use extract::{ClientIp, CurrentAccount, CurrentMember, CurrentOperator, Permission};
pub use password::Passwords;
pub use tokens::Tokens;
