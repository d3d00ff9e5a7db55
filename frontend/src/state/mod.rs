//! App-wide state: the session, the namespaces of the account, the selected
//! namespace and environment. Provided once as context; the selection is kept
//! in `localStorage` so a reload returns to the same place.

use std::cell::Cell;

use gloo_storage::{LocalStorage, Storage};
use leptos::prelude::*;
use tally_common::{Account, Environment, NamespaceWithRole, Role};

const NAMESPACE_KEY: &str = "tally.namespace";
const ENVIRONMENT_KEY: &str = "tally.environment";

#[derive(Clone, Copy)]
pub struct AppState {
    /// The signed-in account; `None` sends every protected page to /login.
    pub account: RwSignal<Option<Account>>,
    pub namespaces: RwSignal<Vec<NamespaceWithRole>>,
    /// The selected namespace id.
    pub namespace: RwSignal<Option<String>>,
    pub environment: RwSignal<Environment>,
    /// Operators run the server: the catalog and credit grants are theirs.
    pub is_operator: RwSignal<bool>,
    /// Bumped to make pages reload their data (e.g. after a change elsewhere).
    pub reload: RwSignal<u32>,
}

thread_local! {
    static ACCOUNT: Cell<Option<RwSignal<Option<Account>>>> = const { Cell::new(None) };
}

impl AppState {
    pub fn new() -> Self {
        let account = RwSignal::new(crate::api::stored_tokens().map(|t| t.account));
        ACCOUNT.with(|a| a.set(Some(account)));
        let environment = LocalStorage::get::<String>(ENVIRONMENT_KEY)
            .ok()
            .and_then(|s| Environment::parse(&s))
            .unwrap_or(Environment::Test);
        AppState {
            account,
            namespaces: RwSignal::new(Vec::new()),
            namespace: RwSignal::new(LocalStorage::get(NAMESPACE_KEY).ok()),
            environment: RwSignal::new(environment),
            is_operator: RwSignal::new(false),
            reload: RwSignal::new(0),
        }
    }

    pub fn select_namespace(&self, id: &str) {
        let _ = LocalStorage::set(NAMESPACE_KEY, id);
        self.namespace.set(Some(id.to_owned()));
    }

    pub fn select_environment(&self, env: Environment) {
        let _ = LocalStorage::set(ENVIRONMENT_KEY, env.as_str());
        self.environment.set(env);
    }

    /// The selected namespace, if it is one of the account's.
    pub fn current(&self) -> Option<NamespaceWithRole> {
        let id = self.namespace.get()?;
        self.namespaces
            .with(|list| list.iter().find(|n| n.namespace.id == id).cloned())
    }

    /// Keeps the selection valid after the namespace list changed.
    pub fn set_namespaces(&self, list: Vec<NamespaceWithRole>) {
        let selected = self.namespace.get_untracked();
        let valid = selected
            .as_ref()
            .is_some_and(|id| list.iter().any(|n| &n.namespace.id == id));
        if !valid {
            if let Some(first) = list.first() {
                self.select_namespace(&first.namespace.id);
            }
        }
        self.namespaces.set(list);
    }

    /// Developers, admins and owners manage keys.
    pub fn can_develop(&self) -> bool {
        self.current()
            .is_some_and(|n| matches!(n.role, Role::Owner | Role::Admin | Role::Developer))
    }

    /// Billing members, admins and owners top up, read invoices and change
    /// billing settings.
    pub fn can_bill(&self) -> bool {
        self.current()
            .is_some_and(|n| matches!(n.role, Role::Owner | Role::Admin | Role::Billing))
    }

    pub fn can_manage(&self) -> bool {
        self.current()
            .is_some_and(|n| matches!(n.role, Role::Owner | Role::Admin))
    }
}

pub fn use_app() -> AppState {
    expect_context::<AppState>()
}

/// Called by the API client when the session cannot be renewed.
pub fn session_ended() {
    ACCOUNT.with(|a| {
        if let Some(account) = a.get() {
            account.set(None);
        }
    });
}
