pub mod banners;
pub mod charts;
pub mod layout;

use leptos::prelude::*;

use crate::api::ApiError;

/// How often live data (uptime, event log) reloads in place (D8).
const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The dashboard's one 30 s refresh tick (D8), shared through the context so
/// every panel of a page reloads together.
#[derive(Clone, Copy)]
struct RefreshTick(RwSignal<u32>);

fn ticking() -> RwSignal<u32> {
    let tick = RwSignal::new(0u32);
    if let Ok(handle) = set_interval_with_handle(
        move || tick.update(|n| *n = n.wrapping_add(1)),
        REFRESH_EVERY,
    ) {
        on_cleanup(move || handle.clear());
    }
    tick
}

/// Starts the shared tick for the components below the caller (the shell).
pub fn provide_refresh_tick() {
    provide_context(RefreshTick(ticking()));
}

/// A counter that ticks every 30 s; resources that track it reload in place.
/// It is the shell's shared tick, or a tick of the caller's own outside it.
pub fn use_refresh_tick() -> RwSignal<u32> {
    use_context::<RefreshTick>().map_or_else(ticking, |t| t.0)
}

/// An API error as a red notice.
#[component]
pub fn ErrorNotice(error: ApiError) -> impl IntoView {
    view! { <div class="alert error" data-testid="error">{error.message}</div> }
}

/// A resource shown once loaded: a loading line the first time, the error as
/// a notice, otherwise `show`'s view of the value. Later reloads (the refresh
/// tick, a change) swap the content in place without the loading line.
#[component]
pub fn Loaded<T, F>(
    resource: LocalResource<Result<T, ApiError>>,
    loading: &'static str,
    show: F,
) -> impl IntoView
where
    T: Clone + Send + Sync + 'static,
    F: Fn(T) -> AnyView + Clone + Send + Sync + 'static,
{
    view! {
        <Transition fallback=move || view! { <p class="loading">{loading}</p> }>
            {move || {
                let show = show.clone();
                Suspend::new(async move {
                    match resource.await {
                        Err(e) => view! { <ErrorNotice error=e /> }.into_any(),
                        Ok(value) => show(value),
                    }
                })
            }}
        </Transition>
    }
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

pub use tally_common::format::{credits, millis, parse_credits, Micros};

/// An amount as people read it, with its unit: `19.66 credits`,
/// `0.0021 credits` (see [`Micros`]).
pub fn credits_label(micros: i64) -> String {
    format!("{} credits", Micros(micros))
}

/// The exact amount, for a hover title: `19.660341 credits`.
pub fn exact_credits(micros: i64) -> String {
    format!("{:#} credits", Micros(micros))
}

/// A price rule in words, only the parts that cost something.
pub fn pricing_summary(p: &tally_common::Pricing) -> String {
    let parts: Vec<String> = [
        (p.per_request_micros, "request"),
        (p.per_1k_input_tokens_micros, "1k input tokens"),
        (p.per_1k_output_tokens_micros, "1k output tokens"),
        (p.per_compute_second_micros, "compute second"),
    ]
    .into_iter()
    .filter(|(micros, _)| *micros != 0)
    .map(|(micros, unit)| format!("{} / {unit}", credits_label(micros)))
    .collect();
    if parts.is_empty() {
        "free".to_owned()
    } else {
        parts.join(" · ")
    }
}

/// Optional whole-number input: empty is `None`; anything else must parse.
pub fn parse_optional<T: std::str::FromStr>(text: &str, what: &str) -> Result<Option<T>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| invalid_input(&format!("{what} must be a whole number")))
}

/// A mistake in a form, caught before anything is sent; shown like an API error.
pub fn invalid_input(message: &str) -> ApiError {
    ApiError {
        status: 400,
        code: "invalid_request".into(),
        message: message.to_owned(),
    }
}
