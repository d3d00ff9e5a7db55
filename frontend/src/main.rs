//! The Tally dashboard: a Leptos client-side app served by `tally serve` at `/`.

mod api;
mod components;
mod pages;
mod state;

use leptos::prelude::*;
use leptos_router::components::{ParentRoute, Route, Router, Routes};
use leptos_router::path;

use crate::components::layout::Layout;
use crate::pages::{
    auth, catalog, credits, dashboard, finance, invite, keys, monitoring, placeholder::Placeholder,
    playground, settings, webhooks,
};

#[component]
fn App() -> impl IntoView {
    provide_context(state::AppState::new());
    view! {
        <Router>
            <Routes fallback=|| view! { <p class="content">"Page not found. " <a href="/">"Back to the dashboard"</a></p> }>
                <Route path=path!("/login") view=auth::Login />
                <Route path=path!("/signup") view=auth::Signup />
                <Route path=path!("/setup") view=auth::Setup />
                <Route path=path!("/invite") view=invite::Invite />
                <ParentRoute path=path!("") view=Layout>
                    <Route path=path!("") view=dashboard::Dashboard />
                    <Route path=path!("settings") view=settings::Settings />
                    <Route path=path!("settings/backup") view=settings::Backup />
                    <Route path=path!("keys") view=keys::Keys />
                    <Route path=path!("playground") view=playground::Playground />
                    <Route path=path!("credits") view=credits::Credits />
                    <Route path=path!("catalog") view=catalog::Catalog />
                    <Route path=path!("monitoring") view=monitoring::Monitoring />
                    <Route path=path!("finance") view=finance::Finance />
                    <Route path=path!("apis") view=|| view! {
                        <Placeholder title="APIs" text="Register your own APIs, price them and earn credits when others call them." />
                    } />
                    <Route path=path!("subclouds") view=|| view! {
                        <Placeholder title="Subclouds" text="Named pools of upstream nodes with reserved capacity and hourly hosting prices." />
                    } />
                    <Route path=path!("webhooks") view=webhooks::Webhooks />
                </ParentRoute>
            </Routes>
        </Router>
    }
}

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}
