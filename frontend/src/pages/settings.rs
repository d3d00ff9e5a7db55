//! Namespace settings: name, members and roles, invitations; and, for the
//! server's operators, Settings › Backup (O1).

use leptos::prelude::*;
use leptos::task::spawn_local;
use tally_common::{AddMemberResponse, BackupInfo, BackupList, Role};

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
        <section class="panel">
            <h2>"Backup"</h2>
            <p class="muted">
                "Backups of the whole server: take one, download it, set a schedule. "
                <a href="/settings/backup" data-testid="backup-link">"Settings › Backup"</a>
            </p>
        </section>
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

/// Bytes as people read them: `812 B`, `4.2 KB`, `3.4 MB`.
fn size(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    if b < 1000.0 {
        format!("{bytes} B")
    } else if b < 1_000_000.0 {
        format!("{:.1} KB", b / 1000.0)
    } else if b < 1_000_000_000.0 {
        format!("{:.1} MB", b / 1_000_000.0)
    } else {
        format!("{:.2} GB", b / 1_000_000_000.0)
    }
}

/// Settings › Backup (O1, D5): the server's backups for its operators.
#[component]
pub fn Backup() -> impl IntoView {
    let app = use_app();
    view! {
        <div class="page-head"><h1>"Backup"</h1></div>
        {move || if app.is_operator.get() {
            view! { <Backups /> }.into_any()
        } else {
            view! {
                <section class="panel" data-testid="backup-not-operator">
                    <p>"Backups cover the whole server, so its operators take them. Ask an operator of this server to take one."</p>
                </section>
            }.into_any()
        }}
    }
}

#[component]
fn Backups() -> impl IntoView {
    let changed = RwSignal::new(0u32);
    let list = LocalResource::new(move || {
        changed.track();
        api::backups()
    });
    let error = RwSignal::new(None::<api::ApiError>);
    let notice = RwSignal::new(None::<String>);
    let secrets = RwSignal::new(false);
    let busy = RwSignal::new(false);
    let take = move |_| {
        busy.set(true);
        notice.set(None);
        let include = secrets.get_untracked();
        spawn_local(async move {
            match api::create_backup(include).await {
                Ok(b) => {
                    error.set(None);
                    notice.set(Some(format!(
                        "Backup {} taken: {} tables, {} rows, {}.",
                        b.name,
                        b.tables,
                        crate::components::charts::count_label(b.rows as f64),
                        size(b.size_bytes)
                    )));
                    changed.update(|n| *n += 1);
                }
                Err(e) => error.set(Some(e)),
            }
            busy.set(false);
        });
    };
    let remove = move |name: String| {
        spawn_local(async move {
            match api::delete_backup(&name).await {
                Ok(()) => {
                    error.set(None);
                    notice.set(Some(format!("Backup {name} deleted.")));
                    changed.update(|n| *n += 1);
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    let download = move |name: String| {
        spawn_local(async move {
            if let Err(e) = api::download(&api::backup_path(&name), &name).await {
                error.set(Some(e));
            }
        });
    };
    view! {
        {move || error.get().map(|e| view! { <ErrorNotice error=e /> })}
        {move || notice.get().map(|t| view! { <div class="alert ok" data-testid="backup-notice">{t}</div> })}
        <section class="panel">
            <h2>"Take a backup"</h2>
            <p class="muted">
                "One file with every table, read from one moment while the server keeps serving. \
                 It restores into an empty SQLite or PostgreSQL database: "
                <code>"tally backup restore FILE --database-url …"</code>
                ", or upload it on a new server's setup page."
            </p>
            <label class="check">
                <input type="checkbox" data-testid="backup-secrets"
                    prop:checked=move || secrets.get()
                    on:change=move |ev| secrets.set(event_target_checked(&ev)) />
                <span>"Include the JWT signing secret and upstream credentials"</span>
            </label>
            <p class="muted" data-testid="backup-secrets-note">
                {move || if secrets.get() {
                    "The file will hold secrets: keep it as safe as the server itself."
                } else {
                    "Without them a restored server signs everyone out, and APIs with upstream credentials need them entered again. Passwords and API keys are always in the file as hashes only."
                }}
            </p>
            <button data-testid="backup-create" on:click=take disabled=move || busy.get()>
                {move || if busy.get() { "Taking a backup…" } else { "Take a backup now" }}
            </button>
        </section>
        <Loaded resource=list loading="Loading backups…" show=move |l: BackupList| {
            let schedule = if l.schedule.every_hours > 0 {
                format!(
                    "Every {} hours, keeping the newest {}{}; next {}.",
                    l.schedule.every_hours,
                    l.schedule.keep,
                    if l.schedule.include_secrets { ", with secrets" } else { "" },
                    l.schedule.next_at.as_deref().map(short_time).unwrap_or_else(|| "now".into())
                )
            } else {
                "No schedule: set every_hours (and keep) under [backup] in the configuration.".to_owned()
            };
            let last = l.last_backup_at.as_deref().map(short_time).unwrap_or_else(|| "never".into());
            let rows = l.items.into_iter().map(|b: BackupInfo| {
                let (d, r) = (b.name.clone(), b.name.clone());
                view! {
                    <tr data-testid="backup-row">
                        <td class="nowrap"><code>{b.name.clone()}</code></td>
                        <td class="nowrap">{short_time(&b.created_at)}</td>
                        <td class="num">{size(b.size_bytes)}</td>
                        <td class="num">{crate::components::charts::count_label(b.rows as f64)}</td>
                        <td>{b.source_backend.clone()}</td>
                        <td>{if b.secrets_included { "yes" } else { "no" }}</td>
                        <td class="row-actions">
                            <button class="secondary" data-testid="backup-download" on:click=move |_| download(d.clone())>"Download"</button>
                            <button class="secondary danger" data-testid="backup-delete" on:click=move |_| remove(r.clone())>"Delete"</button>
                        </td>
                    </tr>
                }
            }).collect_view();
            view! {
                <section class="panel">
                    <h2>"Backups"</h2>
                    <p>"Last successful backup: " <strong data-testid="backup-last">{last}</strong></p>
                    <p class="muted" data-testid="backup-schedule">{schedule}</p>
                    <div class="table-wrap">
                        <table>
                            <thead><tr>
                                <th>"File"</th><th>"Taken"</th><th class="num">"Size"</th><th class="num">"Rows"</th>
                                <th>"From"</th><th>"Secrets"</th><th></th>
                            </tr></thead>
                            <tbody>{rows}</tbody>
                        </table>
                    </div>
                    {(!l.unreadable.is_empty()).then(|| view! {
                        <p class="muted">{format!("Not readable as backups: {}", l.unreadable.join(", "))}</p>
                    })}
                </section>
            }.into_any()
        } />
    }
}
