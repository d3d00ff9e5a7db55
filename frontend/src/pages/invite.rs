//! `/invite#TOKEN`: what an invitation offers, and accepting it.
//!
//! The token comes in the address's fragment, so it never reaches a server
//! log. A visitor without a session logs in or signs up first; the token
//! waits in `sessionStorage` (this tab only) and the login page comes back
//! here. Nothing is joined until the signed-in visitor presses Accept.

use gloo_storage::{SessionStorage, Storage};
use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::components::A;
use leptos_router::hooks::use_navigate;

use crate::api;
use crate::components::{short_time, ErrorNotice, Loaded};
use crate::state::use_app;

const PENDING_KEY: &str = "tally.invitation";

/// The part of the address after `#`, where setup and invitation links carry
/// their token (a fragment never reaches a server or its logs).
pub fn location_fragment() -> Option<String> {
    let hash = web_sys::window()?.location().hash().ok()?;
    let token = hash.trim_start_matches('#').trim().to_owned();
    (!token.is_empty()).then_some(token)
}

/// The invitation token this tab is on its way to accept, if any.
pub fn pending_invitation() -> Option<String> {
    SessionStorage::get::<String>(PENDING_KEY)
        .ok()
        .filter(|t| !t.is_empty())
}

fn forget_invitation() {
    SessionStorage::delete(PENDING_KEY);
}

#[component]
pub fn Invite() -> impl IntoView {
    let app = use_app();
    let navigate = use_navigate();
    let token = location_fragment().or_else(pending_invitation);
    if let Some(token) = &token {
        let _ = SessionStorage::set(PENDING_KEY, token);
    }
    let preview = LocalResource::new({
        let token = token.clone();
        move || {
            let token = token.clone();
            async move {
                match token {
                    Some(token) => api::lookup_invitation(&token).await,
                    None => Err(api::ApiError {
                        status: 404,
                        code: "not_found".into(),
                        message: "This address has no invitation in it. Open the whole link you were sent.".into(),
                    }),
                }
            }
        }
    });
    let error = RwSignal::new(None::<api::ApiError>);
    let busy = RwSignal::new(false);
    let accept = move |_| {
        let Some(token) = token.clone() else { return };
        if busy.get_untracked() {
            return;
        }
        busy.set(true);
        let navigate = navigate.clone();
        spawn_local(async move {
            let result = api::accept_invitation(&token).await;
            busy.set(false);
            match result {
                Ok(joined) => {
                    forget_invitation();
                    app.select_namespace(&joined.namespace.id);
                    app.reload.update(|n| *n += 1);
                    navigate("/", Default::default());
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };

    view! {
        <div class="auth">
            <div class="card" data-testid="invitation">
                <div class="brand">"Tally" <span>"."</span></div>
                <h1>"Invitation"</h1>
                <Loaded resource=preview loading="Reading the invitation…" show=move |p| {
                    let accept = accept.clone();
                    view! {
                        <p data-testid="invitation-summary">
                            <strong>{p.invited_by.clone()}</strong> " invites you to join "
                            <strong>{p.namespace_name.clone()}</strong> " as "
                            <span class="badge">{p.role.as_str()}</span> "."
                        </p>
                        <p class="muted">
                            {format!("Sent to {}. The link works once, until {}.", p.email, short_time(&p.expires_at))}
                        </p>
                        {move || error.get().map(|e| view! { <ErrorNotice error=e /> })}
                        {match app.account.get() {
                            Some(account) => view! {
                                <p class="muted">{format!("You are signed in as {}.", account.email)}</p>
                                <button data-testid="invite-accept" on:click=accept.clone() disabled=move || busy.get()>
                                    "Accept and join"
                                </button>
                            }.into_any(),
                            None => view! {
                                <p class="muted">"Log in or sign up first; you come back here to accept."</p>
                                <div class="inline-row">
                                    <A href="/login"><span data-testid="invite-login">"Log in"</span></A>
                                    " · "
                                    <A href="/signup"><span data-testid="invite-signup">"Sign up"</span></A>
                                </div>
                            }.into_any(),
                        }}
                    }.into_any()
                } />
                <p class="muted"><A href="/">"Back to the dashboard"</A></p>
            </div>
        </div>
    }
}
