//! Balances in memory (C1, C3): the one authority for what a namespace can
//! spend, so a gateway call needs no database read to be covered.
//!
//! Policy:
//! - An account is loaded from the `balances` row the first time it is used
//!   and from then on changes only through this module: holds and captures of
//!   calls, and credits after they commit. A hold reserves a call's maximum
//!   cost; `available = balance - held` never goes below zero because a hold
//!   that does not fit is refused under the account's lock.
//! - The in-memory account follows what was committed, whoever is still
//!   waiting: a capture leaves the balance when the writer has committed it
//!   ([`Hold::committed`], called by the writer, not by the call that may have
//!   gone away), and a credit is added by the task that committed it, through
//!   a [`Pinned`] account taken before the commit.
//! - The map is bounded: accounts idle for [`IDLE`] with nothing held and
//!   nobody pinning them are dropped by [`Accounts::sweep`] and loaded again
//!   from the database on next use. An account in use (a hold, a pin, a load in
//!   progress) is never dropped, so a load can never miss a credit or a capture
//!   that is on its way.
//!
//! One instance (SQLite) is exact as above. Several instances on PostgreSQL
//! (O5) spend from credit leases instead ([`Leasing`]):
//! - An account's `balance` in memory is then this instance's lease: the part
//!   of the shared balance it reserved in the database
//!   ([`tally_store::cluster::acquire`], one conditional statement) and may
//!   spend without asking anyone. A hold that the lease cannot cover renews
//!   it first, one renewal per account at a time.
//! - A renewal asks for what the hold lacks plus about `lease_window` of
//!   spending at the account's recent rate (at most `lease_max`); the
//!   database grants at most half of what is unreserved unless the hold needs
//!   more, so a namespace near zero is leased call by call and instances share
//!   what is left instead of one taking it all.
//! - A capture takes its cost out of the lease, the reservation and the balance
//!   in the writer's commit; credits go to the shared balance only (nothing to
//!   add here) and wake accounts that were refused, so the next hold looks at
//!   the database again at once. Without a wake-up, a refused account looks
//!   again after [`DRY_RETRY`] at the latest.
//! - An unused lease goes back after `lease_idle` without calls
//!   ([`Accounts::return_idle`]), all of them at shutdown, and those of an
//!   instance that stopped heartbeating are taken back by another
//!   ([`tally_store::cluster::reap`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tally_common::Environment;
use tally_store::Store;
use tokio::sync::OnceCell;

/// How long an unused account stays in memory.
pub const IDLE: Duration = Duration::from_secs(600);

/// A leased account the database could not cover asks again after this long
/// at the latest, so a credit reaches it within a second even when its
/// notification is lost.
pub const DRY_RETRY: Duration = Duration::from_millis(250);

#[derive(Debug)]
struct Account {
    /// The balance (one instance) or this instance's lease (several).
    balance: i64,
    held: i64,
    used: Instant,
    /// Holds taken in the current and the previous rate window (leasing).
    window_start: Instant,
    window_sum: i64,
    previous_sum: i64,
    /// Leasing: the database could not cover a hold; until then holds that
    /// the lease cannot cover are refused without asking again.
    dry_until: Option<Instant>,
    /// Leasing: what was unreserved at the last refusal, for its message.
    dry_free: i64,
    /// Leasing: the shared balance as last read, and when; forgotten when
    /// this instance moves the account (a capture, a credit) or another
    /// announces a credit.
    shared: Option<(i64, Instant)>,
}

impl Account {
    fn new(balance: i64) -> Account {
        let now = Instant::now();
        Account {
            balance,
            held: 0,
            used: now,
            window_start: now,
            window_sum: 0,
            previous_sum: 0,
            dry_until: None,
            dry_free: 0,
            shared: None,
        }
    }

    /// Counts a hold into the spending rate; `window` long windows.
    fn note_spend(&mut self, amount: i64, window: Duration) {
        let elapsed = self.window_start.elapsed();
        if elapsed >= window {
            self.previous_sum = if elapsed < window * 2 {
                self.window_sum
            } else {
                0
            };
            self.window_sum = 0;
            self.window_start = Instant::now();
        }
        self.window_sum = self.window_sum.saturating_add(amount);
    }

    /// About one window of spending at the recent rate.
    fn rate_target(&self) -> i64 {
        self.previous_sum.max(self.window_sum)
    }
}

#[derive(Debug)]
struct Entry {
    state: Mutex<Account>,
    /// One lease renewal or return per account at a time.
    renew: tokio::sync::Mutex<()>,
}

type Shared = Arc<Entry>;
type Slot = Arc<OnceCell<Shared>>;

/// How an instance of several leases credits (see the module policy).
#[derive(Debug, Clone)]
pub struct Leasing {
    /// This instance's id in `cluster_instances`.
    pub instance: String,
    pub window: Duration,
    pub max: i64,
    pub idle: Duration,
}

pub struct Accounts {
    store: Store,
    map: DashMap<(String, Environment), Slot>,
    leasing: Option<Leasing>,
}

/// A call's reservation. Dropping it releases what is left, so an early
/// return never leaks a hold.
#[derive(Debug)]
pub struct Hold {
    account: Option<Shared>,
    amount: i64,
}

/// An account kept in memory until this is dropped, so a credit committed
/// meanwhile can be added to it (see the module policy).
#[derive(Debug, Clone)]
pub struct Pinned {
    account: Shared,
    leased: bool,
}

/// The balance could not cover the hold.
#[derive(Debug, Clone, Copy)]
pub struct Insufficient {
    pub available: i64,
}

fn lock(e: &Entry) -> MutexGuard<'_, Account> {
    // A panic while holding this lock cannot leave the numbers half-changed
    // (each critical section is one or two integer updates), so a poisoned
    // lock is still consistent.
    e.state.lock().unwrap_or_else(|e| e.into_inner())
}

fn entry(balance: i64) -> Shared {
    Arc::new(Entry {
        state: Mutex::new(Account::new(balance)),
        renew: tokio::sync::Mutex::new(()),
    })
}

impl Accounts {
    /// Accounts of one instance, exact in memory.
    pub fn new(store: Store) -> Self {
        Accounts {
            store,
            map: DashMap::new(),
            leasing: None,
        }
    }

    /// Accounts of one of several instances, spending from credit leases.
    pub fn leased(store: Store, leasing: Leasing) -> Self {
        Accounts {
            store,
            map: DashMap::new(),
            leasing: Some(leasing),
        }
    }

    pub fn leasing(&self) -> Option<&Leasing> {
        self.leasing.as_ref()
    }

    async fn account(&self, ns: &str, env: Environment) -> tally_store::Result<Shared> {
        let slot = {
            let key = (ns.to_owned(), env);
            if let Some(s) = self.map.get(&key) {
                s.clone()
            } else {
                self.map.entry(key).or_default().clone()
            }
        };
        let acc = slot
            .get_or_try_init(|| async {
                if self.leasing.is_some() {
                    // A lease starts empty: the first hold reserves one.
                    return Ok(entry(0));
                }
                let mut conn = self.store.conn().await?;
                let balance = tally_store::ledger::balance(&mut conn, ns, env).await?;
                Ok::<_, tally_store::StoreError>(entry(balance))
            })
            .await?;
        lock(acc).used = Instant::now();
        Ok(acc.clone())
    }

    /// Loads the account and keeps it in memory while the pin lives; take it
    /// before committing a credit, and add the credit to it after.
    pub async fn pin(&self, ns: &str, env: Environment) -> tally_store::Result<Pinned> {
        self.account(ns, env).await.map(|account| Pinned {
            account,
            leased: self.leasing.is_some(),
        })
    }

    /// Reserves `amount` for a call.
    pub async fn hold(
        &self,
        ns: &str,
        env: Environment,
        amount: i64,
    ) -> tally_store::Result<Result<Hold, Insufficient>> {
        if amount <= 0 {
            return Ok(Ok(Hold {
                account: None,
                amount: 0,
            }));
        }
        let account = self.account(ns, env).await?;
        {
            let mut a = lock(&account);
            if let Some(l) = &self.leasing {
                a.note_spend(amount, l.window);
            }
            let available = a.balance - a.held;
            if available >= amount {
                a.held += amount;
                drop(a);
                return Ok(Ok(Hold {
                    account: Some(account),
                    amount,
                }));
            }
            if self.leasing.is_none() {
                return Ok(Err(Insufficient { available }));
            }
        }
        self.hold_after_renewal(ns, env, account, amount).await
    }

    /// Leasing: renews the lease so it covers `amount`, then holds it.
    async fn hold_after_renewal(
        &self,
        ns: &str,
        env: Environment,
        account: Shared,
        amount: i64,
    ) -> tally_store::Result<Result<Hold, Insufficient>> {
        let Some(leasing) = &self.leasing else {
            return Ok(Err(Insufficient { available: 0 }));
        };
        let _renewing = account.renew.lock().await;
        // Another hold may have renewed it meanwhile, or a capture may have
        // released what this one needs.
        let (need, want) = {
            let mut a = lock(&account);
            let available = a.balance - a.held;
            if available >= amount {
                a.held += amount;
                drop(a);
                return Ok(Ok(Hold {
                    account: Some(account.clone()),
                    amount,
                }));
            }
            if a.dry_until.is_some_and(|t| Instant::now() < t) {
                return Ok(Err(Insufficient {
                    available: available.max(0) + a.dry_free,
                }));
            }
            let need = amount - available;
            let want = need
                .saturating_add(a.rate_target())
                .min(leasing.max)
                .max(need);
            (need, want)
        };
        let now = tally_store::now_ms();
        let mut tx = self.store.begin().await?;
        let granted = tally_store::cluster::acquire(
            &mut tx,
            &tally_store::cluster::LeaseRequest {
                instance: &leasing.instance,
                ns,
                env,
                need,
                want,
                unit: amount,
                now,
            },
        )
        .await?;
        let free = match granted {
            Some(_) => 0,
            None => {
                let (balance, reserved) = tally_store::cluster::balance(&mut tx, ns, env).await?;
                balance - reserved
            }
        };
        tx.commit().await?;
        metrics::counter!("tally_credit_lease_renewals_total",
            "outcome" => if granted.is_some() { "granted" } else { "short" })
        .increment(1);
        let mut a = lock(&account);
        match granted {
            Some(n) => {
                a.balance += n;
                a.dry_until = None;
                let available = a.balance - a.held;
                if available < amount {
                    // Cannot happen (the grant covers `need`), but never hold
                    // what the lease does not have.
                    return Ok(Err(Insufficient { available }));
                }
                a.held += amount;
                drop(a);
                Ok(Ok(Hold {
                    account: Some(account.clone()),
                    amount,
                }))
            }
            None => {
                a.dry_until = Some(Instant::now() + DRY_RETRY);
                a.dry_free = free.max(0);
                let available = (a.balance - a.held).max(0) + a.dry_free;
                Ok(Err(Insufficient { available }))
            }
        }
    }

    /// A credit reached the account (maybe on another instance): the next
    /// hold that its lease cannot cover asks the database again at once.
    pub fn wake(&self, ns: &str, env: Environment) {
        let key = (ns.to_owned(), env);
        if let Some(slot) = self.map.get(&key) {
            if let Some(acc) = slot.get() {
                let mut a = lock(acc);
                a.dry_until = None;
                a.shared = None;
            }
        }
    }

    /// Leasing: gives back the leases of accounts without calls for the idle
    /// time and nothing held; how many went back.
    pub async fn return_idle(&self) -> tally_store::Result<usize> {
        let Some(leasing) = &self.leasing else {
            return Ok(0);
        };
        let idle: Vec<((String, Environment), Shared)> = self
            .map
            .iter()
            .filter_map(|e| {
                let acc = e.value().get()?.clone();
                let a = lock(&acc);
                (a.balance > 0 && a.held == 0 && a.used.elapsed() >= leasing.idle)
                    .then(|| (e.key().clone(), acc.clone()))
            })
            .collect();
        let mut returned = 0;
        for ((ns, env), acc) in idle {
            if self.give_back(&ns, env, &acc, false).await? > 0 {
                returned += 1;
            }
        }
        Ok(returned)
    }

    /// Leasing: gives back what this instance's lease on the account does not
    /// hold for calls in flight (before a debit that takes only unreserved
    /// credits, e.g. a bonus expiry); what went back.
    pub async fn return_lease(&self, ns: &str, env: Environment) -> tally_store::Result<i64> {
        if self.leasing.is_none() {
            return Ok(0);
        }
        let acc = self.account(ns, env).await?;
        self.give_back(ns, env, &acc, true).await
    }

    async fn give_back(
        &self,
        ns: &str,
        env: Environment,
        acc: &Shared,
        wait: bool,
    ) -> tally_store::Result<i64> {
        let Some(leasing) = &self.leasing else {
            return Ok(0);
        };
        let _renewing = if wait {
            acc.renew.lock().await
        } else {
            match acc.renew.try_lock() {
                Ok(g) => g,
                Err(_) => return Ok(0),
            }
        };
        // Nothing more can be held from what is being returned.
        let spare = {
            let mut a = lock(acc);
            if !wait && (a.held != 0 || a.used.elapsed() < leasing.idle) {
                return Ok(0);
            }
            let spare = (a.balance - a.held).max(0);
            a.balance -= spare;
            spare
        };
        if spare == 0 {
            return Ok(0);
        }
        let now = tally_store::now_ms();
        let done = async {
            let mut conn = self.store.conn().await?;
            tally_store::cluster::release(&mut conn, &leasing.instance, ns, env, spare, now).await
        }
        .await;
        match done {
            Ok(n) => Ok(n),
            Err(e) => {
                lock(acc).balance += spare;
                Err(e)
            }
        }
    }

    /// Leasing: this instance's leases were taken back (it was thought dead):
    /// nothing more is spent from them; calls in flight finish on what they
    /// hold, and new holds lease again.
    pub fn void_leases(&self) {
        if self.leasing.is_none() {
            return;
        }
        for e in self.map.iter() {
            if let Some(acc) = e.value().get() {
                let mut a = lock(acc);
                a.balance = a.held;
            }
        }
    }

    /// Reserves as much of `amount` as is available now (maybe nothing), for
    /// a debit that takes what it can rather than fail (a bonus expiry, C7).
    pub async fn hold_up_to(
        &self,
        ns: &str,
        env: Environment,
        amount: i64,
    ) -> tally_store::Result<Hold> {
        if self.leasing.is_some() {
            // The shared balance decides, under its row lock, when the debit
            // commits: see `services::credits::expire_bonuses`.
            return Ok(Hold {
                account: None,
                amount,
            });
        }
        let account = self.account(ns, env).await?;
        let amount = {
            let mut a = lock(&account);
            let take = amount.min(a.balance - a.held).max(0);
            a.held += take;
            take
        };
        Ok(Hold {
            account: Some(account),
            amount,
        })
    }

    /// Balance and holds, loading the account if needed. With leases, the
    /// shared balance and what this instance's calls in flight hold of it.
    pub async fn snapshot(&self, ns: &str, env: Environment) -> tally_store::Result<(i64, i64)> {
        if self.leasing.is_some() {
            let (balance, _) = {
                let mut conn = self.store.conn().await?;
                tally_store::cluster::balance(&mut conn, ns, env).await?
            };
            let held = self
                .map
                .get(&(ns.to_owned(), env))
                .and_then(|slot| slot.get().map(|acc| lock(acc).held))
                .unwrap_or(0);
            return Ok((balance, held));
        }
        let account = self.account(ns, env).await?;
        let a = lock(&account);
        Ok((a.balance, a.held))
    }

    /// The balance, as fresh as `max_age` (with leases, a read of the shared
    /// balance at most that old, or newer when this instance moved it since
    /// or another announced a credit; one instance: exact).
    pub async fn balance(
        &self,
        ns: &str,
        env: Environment,
        max_age: Duration,
    ) -> tally_store::Result<i64> {
        if self.leasing.is_none() {
            return Ok(self.snapshot(ns, env).await?.0);
        }
        let account = self.account(ns, env).await?;
        if let Some((balance, at)) = lock(&account).shared {
            if at.elapsed() < max_age {
                return Ok(balance);
            }
        }
        let read_at = Instant::now();
        let (balance, _) = {
            let mut conn = self.store.conn().await?;
            tally_store::cluster::balance(&mut conn, ns, env).await?
        };
        lock(&account).shared = Some((balance, read_at));
        Ok(balance)
    }

    /// Accounts in memory.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops the accounts unused for `idle` that nothing holds, pins or is
    /// loading; returns how many were dropped.
    pub fn sweep(&self, idle: Duration) -> usize {
        let before = self.map.len();
        // `retain` holds each shard's write lock, so no clone of a slot or an
        // account can be taken while it decides.
        self.map.retain(|_, slot| {
            if Arc::strong_count(slot) > 1 {
                return true;
            }
            match slot.get() {
                None => false,
                Some(acc) => {
                    if Arc::strong_count(acc) > 1 {
                        return true;
                    }
                    let a = lock(acc);
                    // A lease not yet given back stays (leasing).
                    a.held != 0
                        || a.used.elapsed() < idle
                        || (self.leasing.is_some() && a.balance != 0)
                }
            }
        });
        before - self.map.len()
    }
}

impl Pinned {
    /// Adds committed credits (or, negative, a committed debit that took no
    /// hold). With leases the credit is in the shared balance already; the
    /// account only looks at it again at its next hold.
    pub fn credit(&self, amount: i64) {
        let mut a = lock(&self.account);
        if self.leased {
            a.dry_until = None;
            a.shared = None;
        } else {
            a.balance += amount;
        }
    }
}

impl Hold {
    pub fn amount(&self) -> i64 {
        self.amount
    }

    /// The call's actual cost is known: keep holding just that (never more
    /// than was held) until it is committed, and release the rest.
    pub fn settle(&mut self, cost: i64) -> i64 {
        let cost = cost.clamp(0, self.amount);
        if let Some(account) = &self.account {
            lock(account).held -= self.amount - cost;
        }
        self.amount = cost;
        cost
    }

    /// The capture has committed: the cost leaves the balance and the hold.
    pub fn committed(mut self) {
        if let Some(account) = self.account.take() {
            let mut a = lock(&account);
            a.held -= self.amount;
            a.balance -= self.amount;
            a.shared = None;
        }
        self.amount = 0;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(account) = &self.account {
            lock(account).held -= self.amount;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn shared(balance: i64) -> Shared {
        entry(balance)
    }

    #[test]
    fn a_hold_settles_to_its_cost_and_commits_it() {
        let acc = shared(100);
        lock(&acc).held = 60;
        let mut hold = Hold {
            account: Some(acc.clone()),
            amount: 60,
        };
        assert_eq!(hold.settle(80), 60, "never more than was held");
        let mut hold2 = Hold {
            account: Some(acc.clone()),
            amount: 0,
        };
        hold2.settle(0);
        drop(hold2);
        hold.settle(25);
        assert_eq!(lock(&acc).held, 25);
        hold.committed();
        let a = lock(&acc);
        assert_eq!((a.balance, a.held), (75, 0));
    }

    #[test]
    fn a_dropped_hold_releases_what_it_held() {
        let acc = shared(100);
        lock(&acc).held = 30;
        drop(Hold {
            account: Some(acc.clone()),
            amount: 30,
        });
        let a = lock(&acc);
        assert_eq!((a.balance, a.held), (100, 0));
    }
}
