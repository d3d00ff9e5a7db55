pub mod layout;

use leptos::prelude::*;

use crate::api::ApiError;

/// An API error as a red notice.
#[component]
pub fn ErrorNotice(error: ApiError) -> impl IntoView {
    view! { <div class="alert error" data-testid="error">{error.message}</div> }
}

/// `3d 4h`, `2h 5m`, `12m`, `40s`.
pub fn human_duration(seconds: i64) -> String {
    let (d, h, m) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{}s", seconds.max(0))
    }
}

/// `2026-11-22T21:10:56.380Z` as `2026-11-22 21:10:56 UTC`.
pub fn short_time(rfc3339: &str) -> String {
    let t = rfc3339.replacen('T', " ", 1);
    let t = t.split('.').next().unwrap_or(&t).trim_end_matches('Z');
    format!("{t} UTC")
}
