pub mod layout;

use leptos::prelude::*;

use crate::api::ApiError;

/// How often live data (uptime, event log) reloads in place (D8).
const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A counter that ticks every 30 s while the calling component is mounted;
/// resources that track it reload in place.
pub fn use_refresh_tick() -> RwSignal<u32> {
    let tick = RwSignal::new(0u32);
    if let Ok(handle) = set_interval_with_handle(
        move || tick.update(|n| *n = n.wrapping_add(1)),
        REFRESH_EVERY,
    ) {
        on_cleanup(move || handle.clear());
    }
    tick
}

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
