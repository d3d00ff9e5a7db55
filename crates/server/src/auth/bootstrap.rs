//! Operators, made only explicitly (A1).
//!
//! Policy: no account becomes an operator by signing up first or by having an
//! email named in the config file (sign-up never proves an email). The first
//! operator comes from one of:
//! - `tally admin create-operator` (or `grant-operator` for an existing
//!   account), run by whoever can reach the configured database;
//! - the one-time setup token: a server that starts without an operator makes
//!   a random token, keeps only its SHA-256 (with an expiry), writes the token
//!   to `<data_dir>/setup-token` (mode 0600) and prints the setup link on the
//!   terminal when stderr is one. Its structured log only names the file, so
//!   log collectors never see the token. `POST /api/v1/auth/setup` with it
//!   creates the operator and burns every setup token.
//!
//! Once an operator exists no setup token is made or accepted; operators are
//! then added with `tally admin grant-operator`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tally_common::Severity;
use tally_store::accounts::AccountRow;
use tally_store::events::NewEvent;
use tally_store::{AnyConnection, Store};

use crate::auth::tokens::{random_token, sha256_hex};
use crate::auth::Passwords;
use crate::config::Settings;
use crate::input::normalize_email;

/// The file in the data directory that holds the current setup token.
pub const SETUP_TOKEN_FILE: &str = "setup-token";
const SETUP_TOKEN_PREFIX: &str = "tsu_";

pub fn setup_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SETUP_TOKEN_FILE)
}

/// Removes the setup token file, if any (best effort: the token in it no
/// longer works anyway once an operator exists).
pub fn remove_setup_token_file(data_dir: &Path) {
    let path = setup_token_path(data_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!(file = %path.display(), "setup token file removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot remove the setup token file")
        }
    }
}

/// Writes `token` to a new file readable by this user only.
fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A file left by an earlier start may have other permissions: replace it.
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()
}

/// At start: when the server has no operator, makes a setup token and says
/// where it is; otherwise removes a stale token file.
pub async fn prepare_setup(
    store: &Store,
    settings: &Settings,
    base_url: &str,
) -> anyhow::Result<()> {
    let mut conn = store.conn().await?;
    if tally_store::accounts::any_operator(&mut conn).await? {
        remove_setup_token_file(&settings.data_dir);
        return Ok(());
    }
    let token = random_token(SETUP_TOKEN_PREFIX);
    let expires_at = tally_store::now_ms() + settings.auth.setup_token_ttl_secs.max(60) * 1000;
    tally_store::setup_tokens::insert(&mut conn, &sha256_hex(&token), expires_at).await?;
    let path = setup_token_path(&settings.data_dir);
    match write_private(&path, &token) {
        Ok(()) => tracing::warn!(
            file = %path.display(),
            "this server has no operator yet: open {base_url}/setup with the token in the file \
             (valid {} h, until the first operator exists), or run `tally admin create-operator --email ...`",
            settings.auth.setup_token_ttl_secs.max(60) / 3600
        ),
        Err(e) => tracing::warn!(
            file = %path.display(),
            error = %e,
            "this server has no operator yet and the setup token file cannot be written: \
             run `tally admin create-operator --email ...`"
        ),
    }
    if std::io::stderr().is_terminal() {
        eprintln!(
            "\n  This server has no operator yet. Set it up at:\n\n    {base_url}/setup#{token}\n"
        );
    }
    Ok(())
}

async fn account(conn: &mut AnyConnection, email: &str) -> anyhow::Result<AccountRow> {
    let email = normalize_email(email).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    tally_store::accounts::by_email(conn, &email)
        .await?
        .with_context(|| format!("no account has the email {email}"))
}

async fn operator_event(conn: &mut AnyConnection, kind: &str, message: &str) -> anyhow::Result<()> {
    tally_store::events::insert(
        conn,
        NewEvent {
            namespace_id: None,
            environment: None,
            kind,
            severity: Severity::Info,
            message,
            actor: Some("tally admin"),
        },
    )
    .await?;
    Ok(())
}

/// `tally admin create-operator`: a new account that is an operator.
pub async fn create_operator(
    store: &Store,
    settings: &Settings,
    passwords: &Passwords,
    email: &str,
    password: &str,
    display_name: Option<&str>,
) -> anyhow::Result<AccountRow> {
    let email = normalize_email(email).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let err = |e: crate::error::ApiError| anyhow::anyhow!("{}", e.message);
    super::accounts::check_password(password).map_err(err)?;
    let name = super::accounts::display_name(&email, display_name).map_err(err)?;
    let hash = passwords.hash(password.to_owned()).await.map_err(err)?;
    let mut tx = store.begin().await?;
    let account = super::accounts::create(&mut tx, &settings.gateway, &email, &name, &hash, true)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create {email}: {}", e.message))?;
    tally_store::setup_tokens::clear(&mut tx).await?;
    operator_event(
        &mut tx,
        "operator.granted",
        &format!("{email} created as an operator"),
    )
    .await?;
    tx.commit().await?;
    remove_setup_token_file(&settings.data_dir);
    Ok(account)
}

/// `tally admin grant-operator`: makes an existing account an operator.
pub async fn grant_operator(
    store: &Store,
    settings: &Settings,
    email: &str,
) -> anyhow::Result<AccountRow> {
    let mut tx = store.begin().await?;
    let mut account = account(&mut tx, email).await?;
    if !account.is_operator {
        tally_store::accounts::set_operator(&mut tx, &account.id, true).await?;
        operator_event(
            &mut tx,
            "operator.granted",
            &format!("{} made an operator", account.email),
        )
        .await?;
        account.is_operator = true;
    }
    tally_store::setup_tokens::clear(&mut tx).await?;
    tx.commit().await?;
    remove_setup_token_file(&settings.data_dir);
    Ok(account)
}

/// `tally admin revoke-operator`: the account stays, without operator rights.
/// Returns how many operators are left.
pub async fn revoke_operator(store: &Store, email: &str) -> anyhow::Result<usize> {
    let mut tx = store.begin().await?;
    let account = account(&mut tx, email).await?;
    if !account.is_operator {
        bail!("{} is not an operator", account.email);
    }
    tally_store::accounts::set_operator(&mut tx, &account.id, false).await?;
    operator_event(
        &mut tx,
        "operator.revoked",
        &format!("{} is no longer an operator", account.email),
    )
    .await?;
    let left = tally_store::accounts::operators(&mut tx).await?.len();
    tx.commit().await?;
    Ok(left)
}

pub async fn list_operators(store: &Store) -> anyhow::Result<Vec<AccountRow>> {
    let mut conn = store.conn().await?;
    Ok(tally_store::accounts::operators(&mut conn).await?)
}
