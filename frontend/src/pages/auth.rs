//! Sign-up and log-in.

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_router::components::{Redirect, A};
use leptos_router::hooks::use_navigate;
use tally_common::{LoginRequest, SignupRequest};

use crate::api;
use crate::components::ErrorNotice;
use crate::state::use_app;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Login,
    Signup,
}

#[component]
pub fn Login() -> impl IntoView {
    view! { <AuthForm mode=Mode::Login /> }
}

#[component]
pub fn Signup() -> impl IntoView {
    view! { <AuthForm mode=Mode::Signup /> }
}

#[component]
fn AuthForm(mode: Mode) -> impl IntoView {
    let app = use_app();
    let navigate = use_navigate();
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
            };
            busy.set(false);
            match result {
                Ok(tokens) => {
                    error.set(None);
                    app.account.set(Some(tokens.account));
                    app.reload.update(|n| *n += 1);
                    navigate("/", Default::default());
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
    };

    view! {
        <Show when=move || app.account.with(Option::is_none) fallback=|| view! { <Redirect path="/" /> }>
            <div class="auth">
                <div class="card">
                    <div class="brand">"Tally" <span>"."</span></div>
                    <h1>{title}</h1>
                    <p class="muted">"Keys, credits and usage for your paid API."</p>
                    <form class="stack" on:submit=submit.clone()>
                        {move || error.get().map(|e| view! { <ErrorNotice error=e /> })}
                        {(mode == Mode::Signup).then(|| view! {
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
                                minlength=if mode == Mode::Signup { "8" } else { "1" }
                                autocomplete=if mode == Mode::Signup { "new-password" } else { "current-password" }
                                prop:value=move || password.get()
                                on:input=move |ev| password.set(event_target_value(&ev))
                            />
                        </label>
                        <button type="submit" data-testid="submit" disabled=move || busy.get()>
                            {action}
                        </button>
                    </form>
                    <p class="muted">{switch_text} " " <A href=switch_href>{switch_label}</A></p>
                </div>
            </div>
        </Show>
    }
}
