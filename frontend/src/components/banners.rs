//! The banners above every page (D5): serving paused, low balance. The
//! server decides what to show (`GET …/banners`); they reload with the
//! shell's 30 s tick and whenever the namespace or environment changes, and
//! keep showing the last answer while reloading.

use leptos::prelude::*;
use leptos_router::components::A;
use tally_common::{Banner, Severity};

use crate::api;
use crate::components::use_refresh_tick;
use crate::state::use_app;

/// Bumped by pages whose actions may change a banner (a top-up, an alert
/// threshold), so the banners reload at once rather than at the next tick.
#[derive(Clone, Copy)]
struct BannersChanged(RwSignal<u32>);

/// Provides the signal behind [`banners_changed`]; the shell calls it.
pub fn provide_banners_changed() {
    provide_context(BannersChanged(RwSignal::new(0)));
}

/// Reloads the banners now.
pub fn banners_changed() {
    if let Some(BannersChanged(s)) = use_context::<BannersChanged>() {
        s.update(|n| *n = n.wrapping_add(1));
    }
}

#[component]
pub fn Banners() -> impl IntoView {
    let app = use_app();
    let tick = use_refresh_tick();
    let changed = use_context::<BannersChanged>().map(|c| c.0);
    let banners = LocalResource::new(move || {
        tick.track();
        if let Some(c) = changed {
            c.track();
        }
        let ns = app.namespace.get().unwrap_or_default();
        let env = app.environment.get();
        async move { api::banners(&ns, env).await }
    });
    // The last list that loaded, so a reload does not blink the banners away.
    let shown = RwSignal::new(Vec::<Banner>::new());
    Effect::new(move |_| {
        if let Some(Ok(list)) = banners.get() {
            shown.set(list.items);
        }
    });
    view! {
        <For each=move || shown.get() key=|b| (b.kind.clone(), b.message.clone()) let:b>
            <BannerView b />
        </For>
    }
}

#[component]
fn BannerView(b: Banner) -> impl IntoView {
    let class = match b.severity {
        Severity::Error => "alert error banner",
        Severity::Warning => "alert warning banner",
        Severity::Info => "alert ok banner",
    };
    let testid = match b.kind.as_str() {
        "low_balance" => "low-balance-banner",
        "serving_paused" => "paused-banner",
        "backup_overdue" => "backup-banner",
        _ => "banner",
    };
    let label = if b.link.starts_with("/finance") {
        "Go to Finance →"
    } else if b.link.starts_with("/settings/backup") {
        "Go to Settings › Backup →"
    } else {
        "Open →"
    };
    view! {
        <div class=class data-testid=testid data-kind=b.kind>
            <span>{b.message}</span>
            " "
            <A href=b.link><span class="banner-link">{label}</span></A>
        </div>
    }
}
