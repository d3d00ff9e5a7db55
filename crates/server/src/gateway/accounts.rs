//! Balances in memory (C1, C3): the gateway's one authority for what a
//! namespace can spend, so a call needs no database read to be covered.
//!
//! Policy: an account is loaded from the `balances` row the first time it is
//! used and from then on changes only through this module: holds and captures
//! of calls, and credits (grants, faucet) after they commit. A hold reserves a
//! call's maximum cost; `available = balance - held` never goes below zero
//! because a hold that does not fit is refused under the account's lock. The
//! database is written behind by the group-commit writer; the in-memory
//! balance drops only once the capture has committed.
//!
//! Single instance: this is exact. Several instances on one database would each
//! hold their own view; leasing slices of the balance (O5) is a later step.

use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use tally_common::Environment;
use tally_store::Store;
use tokio::sync::OnceCell;

#[derive(Debug, Default)]
struct Account {
    balance: i64,
    held: i64,
}

type Slot = Arc<OnceCell<Arc<Mutex<Account>>>>;

pub struct Accounts {
    store: Store,
    map: DashMap<(String, Environment), Slot>,
}

/// A call's reservation. Dropping it releases what is left, so an early
/// return or a client that goes away never leaks a hold.
#[derive(Debug)]
pub struct Hold {
    account: Option<Arc<Mutex<Account>>>,
    amount: i64,
}

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

    async fn account(
        &self,
        ns: &str,
        env: Environment,
    ) -> tally_store::Result<Arc<Mutex<Account>>> {
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
                Ok::<_, tally_store::StoreError>(Arc::new(Mutex::new(Account { balance, held: 0 })))
            })
            .await?;
        Ok(acc.clone())
    }

    /// Makes sure the account is in memory; call before committing a credit
    /// to it, so the load cannot miss or double-count that credit.
    pub async fn load(&self, ns: &str, env: Environment) -> tally_store::Result<()> {
        self.account(ns, env).await.map(|_| ())
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

    /// Adds committed credits (a grant, the faucet) to a loaded account.
    pub fn credited(&self, ns: &str, env: Environment, amount: i64) {
        if let Some(slot) = self.map.get(&(ns.to_owned(), env)) {
            if let Some(account) = slot.get() {
                lock(account).balance += amount;
            }
        }
    }

    /// Balance and holds, loading the account if needed.
    pub async fn snapshot(&self, ns: &str, env: Environment) -> tally_store::Result<(i64, i64)> {
        let account = self.account(ns, env).await?;
        let a = lock(&account);
        Ok((a.balance, a.held))
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
