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
//! Single instance: this is exact. Several instances on one database would each
//! hold their own view; leasing slices of the balance (O5) is a later step.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tally_common::Environment;
use tally_store::Store;
use tokio::sync::OnceCell;

/// How long an unused account stays in memory.
pub const IDLE: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Account {
    balance: i64,
    held: i64,
    used: Instant,
}

type Shared = Arc<Mutex<Account>>;
type Slot = Arc<OnceCell<Shared>>;

pub struct Accounts {
    store: Store,
    map: DashMap<(String, Environment), Slot>,
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
pub struct Pinned(Shared);

/// The balance could not cover the hold.
#[derive(Debug, Clone, Copy)]
pub struct Insufficient {
    pub available: i64,
}

fn lock(m: &Mutex<Account>) -> MutexGuard<'_, Account> {
    // A panic while holding this lock cannot leave the numbers half-changed
    // (each critical section is one or two integer updates), so a poisoned
    // lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Accounts {
    pub fn new(store: Store) -> Self {
        Accounts {
            store,
            map: DashMap::new(),
        }
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
                let mut conn = self.store.conn().await?;
                let balance = tally_store::ledger::balance(&mut conn, ns, env).await?;
                Ok::<_, tally_store::StoreError>(Arc::new(Mutex::new(Account {
                    balance,
                    held: 0,
                    used: Instant::now(),
                })))
            })
            .await?;
        lock(acc).used = Instant::now();
        Ok(acc.clone())
    }

    /// Loads the account and keeps it in memory while the pin lives; take it
    /// before committing a credit, and add the credit to it after.
    pub async fn pin(&self, ns: &str, env: Environment) -> tally_store::Result<Pinned> {
        self.account(ns, env).await.map(Pinned)
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
            let available = a.balance - a.held;
            if available < amount {
                return Ok(Err(Insufficient { available }));
            }
            a.held += amount;
        }
        Ok(Ok(Hold {
            account: Some(account),
            amount,
        }))
    }

    /// Reserves as much of `amount` as is available now (maybe nothing), for
    /// a debit that takes what it can rather than fail (a bonus expiry, C7).
    pub async fn hold_up_to(
        &self,
        ns: &str,
        env: Environment,
        amount: i64,
    ) -> tally_store::Result<Hold> {
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

    /// Balance and holds, loading the account if needed.
    pub async fn snapshot(&self, ns: &str, env: Environment) -> tally_store::Result<(i64, i64)> {
        let account = self.account(ns, env).await?;
        let a = lock(&account);
        Ok((a.balance, a.held))
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
                    a.held != 0 || a.used.elapsed() < idle
                }
            }
        });
        before - self.map.len()
    }
}

impl Pinned {
    /// Adds committed credits (or, negative, a committed debit that took no hold).
    pub fn credit(&self, amount: i64) {
        lock(&self.0).balance += amount;
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
        Arc::new(Mutex::new(Account {
            balance,
            held: 0,
            used: Instant::now(),
        }))
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
