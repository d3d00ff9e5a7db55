//! A throwaway PostgreSQL database for one run (the schemathesis step, `bench-gateway
//! --postgres`), created and dropped with `psql` so the run starts empty and leaves nothing
//! behind, also when it fails half-way: the drop is in `Drop`.

use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::{describe, note, Ctx};

/// A database of its own on the PostgreSQL server at `server_url`, dropped on drop.
pub(crate) struct FreshDatabase {
    server_url: String,
    pub(crate) name: String,
    /// `server_url` with the database replaced by this one.
    pub(crate) url: String,
}

impl FreshDatabase {
    /// Creates `{prefix}_{pid}_{nanos}`. `purpose` says who needs psql when it is missing.
    pub(crate) fn create(cx: &Ctx, server_url: &str, prefix: &str, purpose: &str) -> Result<Self> {
        require_psql(cx, purpose)?;
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let url = with_database(server_url, &name)?;
        psql(cx, server_url, &format!("CREATE DATABASE {name}"))?;
        Ok(Self {
            server_url: server_url.to_string(),
            name,
            url,
        })
    }

    /// Runs one query in this database and returns its output, unaligned and without headers
    /// (`psql -At`): one line per row, columns separated by `|`.
    pub(crate) fn query(&self, cx: &Ctx, sql: &str) -> Result<String> {
        let output = cx
            .cmd("psql")
            .arg(&self.url)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-c", sql])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .context("cannot start psql")?;
        if !output.status.success() {
            bail!("psql failed on `{sql}` ({})", describe(output.status));
        }
        String::from_utf8(output.stdout).context("psql printed something that is not UTF-8")
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        // FORCE: a server that is still connected (a run that failed before stopping it)
        // must not keep the database alive.
        if let Ok(cx) = Ctx::new() {
            let _ = psql(
                &cx,
                &self.server_url,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            );
        }
    }
}

/// Fails with what to install when psql is missing; callers check before a long run.
pub(crate) fn require_psql(cx: &Ctx, purpose: &str) -> Result<()> {
    if !cx.has("psql") {
        bail!(
            "{purpose}, and creates its database with psql, which is not installed \
             (Debian: apt-get install postgresql-client)"
        );
    }
    Ok(())
}

/// Runs one statement with psql. The URL may hold a password, so only the statement is shown.
fn psql(cx: &Ctx, url: &str, sql: &str) -> Result<()> {
    note(format!("$ psql {} -c '{sql}'", redact(url)));
    let status = cx
        .cmd("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .stdin(Stdio::null())
        .status()
        .context("cannot start psql")?;
    if !status.success() {
        bail!("psql failed on `{sql}` ({})", describe(status));
    }
    Ok(())
}

/// `postgres://user@host:port/db?opts` with the database replaced by `name`.
pub(crate) fn with_database(url: &str, name: &str) -> Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .context("the PostgreSQL URL is not a URL (postgres://user@host:port/db)")?;
    let (before_query, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    let mut out = format!("{scheme}://{authority}/{name}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// The URL with its password (if any) replaced by `***`, for printing.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_of_a_postgres_url() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x").ok(),
            Some("postgres://postgres@127.0.0.1:5432/x".to_string())
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x").ok(),
            Some("postgres://u:p@h/x?sslmode=disable".to_string())
        );
        assert_eq!(
            with_database("postgres://u@h", "x").ok(),
            Some("postgres://u@h/x".to_string())
        );
    }

    #[test]
    fn hides_the_password_of_a_printed_url() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        assert_eq!(redact("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("not a url"), "not a url");
    }
}
