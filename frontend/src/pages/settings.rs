//! Namespace settings: name, members and roles, invitations.

use leptos::prelude::*;
use leptos::task::spawn_local;
use tally_common::{AddMemberResponse, Role};

use crate::api;
use crate::components::{short_time, ErrorNotice, Loaded};
use crate::state::use_app;

fn role_options(selected: Role) -> impl IntoView {
    Role::ALL
        .into_iter()
        .map(|r| view! { <option value=r.as_str() selected=r == selected>{r.as_str()}</option> })
        .collect_view()
}

#[component]
pub fn Settings() -> impl IntoView {
    view! {
        <div class="page-head"><h1>"Settings"</h1></div>
        <NamespaceName />
        <Members />
    }
}

#[component]
fn NamespaceName() -> impl IntoView {
    let app = use_app();
    let name = RwSignal::new(String::new());
    Effect::new(move |_| {
        if let Some(ns) = app.current() {
            name.set(ns.namespace.name);
        }
    });
    let message = RwSignal::new(None::<Result<String, api::ApiError>>);
    let save = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let Some(ns) = app.namespace.get_untracked() else {
            return;
        };
        let value = name.get_untracked();
        spawn_local(async move {
            let result = api::rename_namespace(&ns, &value).await;
            if result.is_ok() {
                app.reload.update(|n| *n += 1);
            }
            message.set(Some(result.map(|_| "Saved.".to_owned())));
        });
    };
    view! {
        <section class="panel">
            <h2>"Namespace"</h2>
            {move || message.get().map(|m| match m {
                Ok(text) => view! { <div class="alert ok">{text}</div> }.into_any(),
                Err(e) => view! { <ErrorNotice error=e /> }.into_any(),
            })}
            <form class="inline" on:submit=save>
                <input
                    data-testid="namespace-rename"
                    maxlength="100"
                    prop:value=move || name.get()
                    on:input=move |ev| name.set(event_target_value(&ev))
                    disabled=move || !app.can_manage()
                />
                <button type="submit" disabled=move || !app.can_manage()>"Rename"</button>
                <span class="muted">
                    {move || app.current().map(|n| format!("Id {} · your role: {}", n.namespace.id, n.role))}
                </span>
            </form>
        </section>
    }
}

#[component]
fn Members() -> impl IntoView {
    let app = use_app();
    let changed = RwSignal::new(0u32);
    let list = LocalResource::new(move || {
        changed.track();
        let ns = app.namespace.get().unwrap_or_default();
        async move { api::members(&ns).await }
    });
    let error = RwSignal::new(None::<api::ApiError>);
    let notice = RwSignal::new(None::<String>);
    // The last invitation's link: shown until dismissed, since only its hash
    // is kept and it cannot be shown again.
    let invited = RwSignal::new(None::<AddMemberResponse>);
    let email = RwSignal::new(String::new());
    let role = RwSignal::new(Role::Developer);

    let done = move |result: Result<Option<String>, api::ApiError>| match result {
        Ok(text) => {
            error.set(None);
            notice.set(text);
            changed.update(|n| *n += 1);
            app.reload.update(|n| *n += 1);
        }
        Err(e) => {
            notice.set(None);
            error.set(Some(e));
        }
    };
    let add = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let ns = app.namespace.get_untracked().unwrap_or_default();
        let (address, r) = (email.get_untracked(), role.get_untracked());
        spawn_local(async move {
            let result = api::add_member(&ns, &address, r).await.map(|res| {
                email.set(String::new());
                invited.set(Some(res));
                None
            });
            done(result);
        });
    };

    view! {
        <section class="panel">
            <h2>"Members"</h2>
            {move || error.get().map(|e| view! { <ErrorNotice error=e /> })}
            {move || notice.get().map(|t| view! { <div class="alert ok">{t}</div> })}
            {move || invited.get().map(|res| {
                let origin = web_sys::window()
                    .and_then(|w| w.location().origin().ok())
                    .unwrap_or_default();
                let link = format!("{origin}{}", res.invite_path);
                let copy = link.clone();
                view! {
                    <div class="alert ok" data-testid="invite-panel">
                        <p>{format!(
                            "Invitation for {} as {}. Send them this link: they open it, log in or sign up, and accept. \
                             It works once, until {}, and is shown only now.",
                            res.invitation.email, res.invitation.role, short_time(&res.invitation.expires_at)
                        )}</p>
                        <div class="inline-row">
                            <code data-testid="invite-link" class="wrap">{link}</code>
                            <button class="secondary" data-testid="invite-copy" on:click=move |_| {
                                if let Some(window) = web_sys::window() {
                                    let _ = window.navigator().clipboard().write_text(&copy);
                                }
                            }>"Copy"</button>
                            <button class="secondary" on:click=move |_| invited.set(None)>"Done"</button>
                        </div>
                    </div>
                }
            })}
            <Loaded resource=list loading="Loading members…" show=move |list| {
                let manage = app.can_manage();
                let me = app.account.get_untracked().map(|a| a.id).unwrap_or_default();
                let ns = app.namespace.get_untracked().unwrap_or_default();
                view! {
                    <div class="table-wrap"><table data-testid="members">
                        <thead><tr><th>"Member"</th><th>"Role"</th><th>"Joined"</th><th></th></tr></thead>
                        <tbody>
                            {list.members.into_iter().map(|m| {
                                let (ns1, ns2) = (ns.clone(), ns.clone());
                                let (id1, id2) = (m.account_id.clone(), m.account_id.clone());
                                let is_me = m.account_id == me;
                                view! {
                                    <tr>
                                        <td>{m.display_name} <span class="muted">" · " {m.email}</span></td>
                                        <td>
                                            <select
                                                disabled=!manage
                                                on:change=move |ev| {
                                                    let (ns, id) = (ns1.clone(), id1.clone());
                                                    let Some(r) = Role::parse(&event_target_value(&ev)) else { return };
                                                    spawn_local(async move {
                                                        done(api::update_member(&ns, &id, r).await.map(|m| Some(format!("{} is now {}.", m.email, m.role))));
                                                    });
                                                }
                                            >
                                                {role_options(m.role)}
                                            </select>
                                        </td>
                                        <td class="muted">{short_time(&m.joined_at)}</td>
                                        <td>
                                            {(manage || is_me).then(|| view! {
                                                <button class="danger" on:click=move |_| {
                                                    let (ns, id) = (ns2.clone(), id2.clone());
                                                    spawn_local(async move {
                                                        done(api::remove_member(&ns, &id).await.map(|()| Some("Member removed.".to_owned())));
                                                    });
                                                }>{if is_me { "Leave" } else { "Remove" }}</button>
                                            })}
                                        </td>
                                    </tr>
                                }
                            }).collect_view()}
                            {list.invitations.into_iter().map(|inv| {
                                let ns = ns.clone();
                                let id = inv.id.clone();
                                view! {
                                    <tr data-testid="invitation-row">
                                        <td>
                                            {inv.email}
                                            {if inv.expired {
                                                view! { <span class="badge warning" title="Withdraw it and invite again for a new link">"expired"</span> }.into_any()
                                            } else {
                                                view! { <span class="badge" title=format!("The link works until {}", short_time(&inv.expires_at))>"invited"</span> }.into_any()
                                            }}
                                        </td>
                                        <td>{inv.role.as_str()}</td>
                                        <td class="muted">{short_time(&inv.created_at)}</td>
                                        <td>
                                            {manage.then(|| view! {
                                                <button class="danger" on:click=move |_| {
                                                    let (ns, id) = (ns.clone(), id.clone());
                                                    spawn_local(async move {
                                                        done(api::withdraw_invitation(&ns, &id).await.map(|()| Some("Invitation withdrawn.".to_owned())));
                                                    });
                                                }>"Withdraw"</button>
                                            })}
                                        </td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table></div>
                }.into_any()
            } />
            <Show when=move || app.can_manage()>
                <h2 style="margin-top:18px">"Invite a member"</h2>
                <p class="muted">"Everyone joins through a one-time link that you send them; an email alone never joins a namespace."</p>
                <form class="inline" on:submit=add>
                    <input
                        data-testid="member-email"
                        type="email"
                        required
                        placeholder="colleague@example.com"
                        prop:value=move || email.get()
                        on:input=move |ev| email.set(event_target_value(&ev))
                    />
                    <select data-testid="member-role" on:change=move |ev| {
                        if let Some(r) = Role::parse(&event_target_value(&ev)) {
                            role.set(r);
                        }
                    }>
                        {role_options(Role::Developer)}
                    </select>
                    <button type="submit" data-testid="member-add">"Invite"</button>
                </form>
            </Show>
        </section>
    }
}
