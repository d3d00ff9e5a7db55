//! Sign-up, log-in and the first operator's setup.
//!
//! After signing in, a pending invitation (opened at `/invite` before the
//! visitor had a session) takes them back there to accept it.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::components::{Redirect, A};
use leptos_router::hooks::use_navigate;
use tally_common::{LoginRequest, SetupRequest, SignupRequest};

use crate::api;
use crate::components::ErrorNotice;
use crate::pages::invite::{location_fragment, pending_invitation};
use crate::state::use_app;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Login,
    Signup,
    Setup,
}

/// Where to go once signed in: a pending invitation, else the dashboard.
fn after_sign_in() -> &'static str {
    if pending_invitation().is_some() {
        "/invite"
    } else {
        "/"
    }
}

#[component]
pub fn Login() -> impl IntoView {
    view! { <AuthForm mode=Mode::Login /> }
}

#[component]
pub fn Signup() -> impl IntoView {
    view! { <AuthForm mode=Mode::Signup /> }
}

/// The server's first operator, with the setup token from `/setup#TOKEN` (or
/// pasted from `<data_dir>/setup-token`); or, with the same token, a backup
/// restored into this empty server.
#[component]
pub fn Setup() -> impl IntoView {
    view! { <AuthForm mode=Mode::Setup /> }
}

/// Uploads a backup archive with the setup token (O1); on success the
/// accounts of the backup sign in.
#[component]
fn RestoreBackup(token: RwSignal<String>) -> impl IntoView {
    let file = NodeRef::<leptos::html::Input>::new();
    let error = RwSignal::new(None::<api::ApiError>);
    let done = RwSignal::new(None::<tally_common::RestoredBackup>);
    let busy = RwSignal::new(false);
    let restore = move |_| {
        let Some(archive) = file
            .get_untracked()
            .and_then(|input| input.files())
            .and_then(|files| files.get(0))
        else {
            error.set(Some(api::ApiError {
                status: 0,
                code: "invalid_request".into(),
                message: "choose a backup file (tally-backup-….tar) first".into(),
            }));
            return;
        };
        busy.set(true);
        error.set(None);
        spawn_local(async move {
            let result = api::restore_backup(&token.get_untracked(), &archive).await;
            busy.set(false);
            match result {
                Ok(r) => done.set(Some(r)),
                Err(e) => error.set(Some(e)),
            }
        });
    };
    view! {
        <details class="more" data-testid="restore-backup">
            <summary>"Restore a backup instead"</summary>
            <div class="stack">
                <p class="muted">
                    "Moving a Tally here? Upload a backup (Settings › Backup, or tally backup create) \
                     with the setup token above. It goes into this empty server whole or not at all; \
                     then sign in with an account from the backup."
                </p>
                {move || error.get().map(|e| view! { <ErrorNotice error=e /> })}
                {move || done.get().map(|r| view! {
                    <div class="alert ok" data-testid="restore-result">
                        {format!(
                            "Restored {} rows in {} tables from the {} backup of {}.",
                            tally_common::format::count(r.rows as f64),
                            r.tables,
                            r.source_backend,
                            r.created_at.get(..16).unwrap_or(&r.created_at).replace('T', " "),
                        )}
                        {(!r.secrets_included).then_some(
                            " It held no upstream credentials: enter them again for APIs that need them.",
                        )}
                        " " <A href="/login">"Log in"</A>
                    </div>
                })}
                <input type="file" accept=".tar,application/x-tar" data-testid="restore-file" node_ref=file />
                <button
                    type="button"
                    class="secondary"
                    data-testid="restore-submit"
                    disabled=move || busy.get() || done.with(Option::is_some)
                    on:click=restore
                >
                    {move || if busy.get() { "Restoring…" } else { "Restore" }}
                </button>
            </div>
        </details>
    }
}

#[component]
fn AuthForm(mode: Mode) -> impl IntoView {
    let app = use_app();
    let navigate = use_navigate();
    let token = RwSignal::new(if mode == Mode::Setup {
        location_fragment().unwrap_or_default()
    } else {
        String::new()
    });
    let email = RwSignal::new(String::new());
    let password = RwSignal::new(String::new());
    let display_name = RwSignal::new(String::new());
    let error = RwSignal::new(None::<api::ApiError>);
    let busy = RwSignal::new(false);

    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        if busy.get_untracked() {
            return;
        }
        busy.set(true);
        let navigate = navigate.clone();
        spawn_local(async move {
            let result = match mode {
                Mode::Login => {
                    api::login(&LoginRequest {
                        email: email.get_untracked(),
                        password: password.get_untracked(),
                    })
                    .await
                }
                Mode::Signup => {
                    let name = display_name.get_untracked();
                    api::signup(&SignupRequest {
                        email: email.get_untracked(),
                        password: password.get_untracked(),
                        display_name: (!name.trim().is_empty()).then_some(name),
                    })
                    .await
                }
                Mode::Setup => {
                    let name = display_name.get_untracked();
                    api::setup(&SetupRequest {
                        token: token.get_untracked(),
                        email: email.get_untracked(),
                        password: password.get_untracked(),
                        display_name: (!name.trim().is_empty()).then_some(name),
                    })
                    .await
                }
            };
            busy.set(false);
            match result {
                Ok(tokens) => {
                    error.set(None);
                    app.account.set(Some(tokens.account));
                    app.reload.update(|n| *n += 1);
                    navigate(after_sign_in(), Default::default());
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };

    let (title, action, switch_text, switch_href, switch_label) = match mode {
        Mode::Login => ("Log in", "Log in", "No account yet?", "/signup", "Sign up"),
        Mode::Signup => (
            "Create your account",
            "Sign up",
            "Already have an account?",
            "/login",
            "Log in",
        ),
        Mode::Setup => (
            "Set up this server",
            "Create the operator",
            "Not the first operator?",
            "/login",
            "Log in",
        ),
    };
    let intro = match mode {
        Mode::Setup => "This server has no operator yet. The operator manages the catalog and grants credits. \
             The one-time setup token is in the setup link the server printed, and in the file \
             setup-token of its data directory. An email that already has an account needs that account's password.",
        _ => "Keys, credits and usage for your paid API.",
    };

    view! {
        <Show when=move || mode == Mode::Setup || app.account.with(Option::is_none) fallback=|| view! { <Redirect path=after_sign_in() /> }>
            <div class="auth">
                <div class="card">
                    <div class="brand">"Tally" <span>"."</span></div>
                    <h1>{title}</h1>
                    <p class="muted" data-testid="auth-intro">{intro}</p>
                    <form class="stack" on:submit=submit.clone()>
                        {move || error.get().map(|e| view! { <ErrorNotice error=e /> })}
                        {(mode == Mode::Setup).then(|| view! {
                            <label>
                                "Setup token"
                                <input
                                    data-testid="setup-token"
                                    required
                                    autocomplete="off"
                                    spellcheck="false"
                                    prop:value=move || token.get()
                                    on:input=move |ev| token.set(event_target_value(&ev))
                                />
                            </label>
                        })}
                        {(mode != Mode::Login).then(|| view! {
                            <label>
                                "Name (optional)"
                                <input
                                    data-testid="display-name"
                                    autocomplete="name"
                                    maxlength="100"
                                    prop:value=move || display_name.get()
                                    on:input=move |ev| display_name.set(event_target_value(&ev))
                                />
                            </label>
                        })}
                        <label>
                            "Email"
                            <input
                                data-testid="email"
                                type="email"
                                required
                                autocomplete="email"
                                prop:value=move || email.get()
                                on:input=move |ev| email.set(event_target_value(&ev))
                            />
                        </label>
                        <label>
                            "Password"
                            <input
                                data-testid="password"
                                type="password"
                                required
                                minlength=if mode == Mode::Login { "1" } else { "8" }
                                autocomplete=if mode == Mode::Login { "current-password" } else { "new-password" }
                                prop:value=move || password.get()
                                on:input=move |ev| password.set(event_target_value(&ev))
                            />
                        </label>
                        <button type="submit" data-testid="submit" disabled=move || busy.get()>
                            {action}
                        </button>
                    </form>
                    {(mode == Mode::Setup).then(|| view! { <RestoreBackup token /> })}
                    <p class="muted">{switch_text} " " <A href=switch_href>{switch_label}</A></p>
                </div>
            </div>
        </Show>
    }
}
