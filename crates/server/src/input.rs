//! Checks of what callers send that more than one route (and the auth layer)
//! apply: emails, names, expiry times.

use crate::error::{ApiError, ApiResult};

/// Trims and lower-cases an email and checks its shape (not deliverability).
pub fn normalize_email(email: &str) -> ApiResult<String> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@')
                && !domain.starts_with('.') && !domain.ends_with('.'));
    if valid {
        Ok(email)
    } else {
        Err(ApiError::invalid("email must be a valid address"))
    }
}

/// A trimmed, non-empty name of at most `max` characters without control characters.
pub fn clean_name(field: &str, value: &str, max: usize) -> ApiResult<String> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must be 1 to {max} characters without control characters"
        )));
    }
    Ok(value.to_owned())
}

/// An RFC 3339 time in the future, as Unix milliseconds.
pub fn parse_expiry(value: &str) -> ApiResult<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(value.trim())
        .map_err(|_| ApiError::invalid("expires_at must be an RFC 3339 time"))?
        .timestamp_millis();
    if t <= tally_store::now_ms() {
        return Err(ApiError::invalid("expires_at must be in the future"));
    }
    Ok(t)
}
