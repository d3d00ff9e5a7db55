//! What dropping changed keys costs the key cache: moka's
//! `invalidate_entries_if` (what `KeyCache::invalidate` uses) against an
//! id -> secret hashes index with one `invalidate` per hash, on a cache built
//! like the gateway's (100,000 entries, invalidation closures on).
//!
//! Run with `cargo run --release -p tally-server --example bench_keycache`.
//! It prints figures; it never fails because of speed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use moka::future::Cache;

const ENTRIES: usize = 100_000;
const GETS: usize = 200_000;

type Hash = [u8; 32];

/// Stands in for the gateway's cached key: what the predicate reads.
#[derive(Clone)]
struct Cached {
    id: Arc<str>,
}

fn hash_of(i: usize) -> Hash {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    h
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

async fn filled() -> Cache<Hash, Cached> {
    let cache = Cache::builder()
        .max_capacity(ENTRIES as u64 * 2)
        .time_to_idle(Duration::from_secs(3600))
        .support_invalidation_closures()
        .build();
    for i in 0..ENTRIES {
        cache
            .insert(
                hash_of(i),
                Cached {
                    id: format!("key_{i}").into(),
                },
            )
            .await;
    }
    cache.run_pending_tasks().await;
    cache
}

/// Latency of `GETS` reads of random cached secrets, in microseconds.
async fn reads(cache: &Cache<Hash, Cached>) -> (f64, f64, f64) {
    let mut lat = Vec::with_capacity(GETS);
    let mut x: u64 = 88_172_645_463_325_252;
    for _ in 0..GETS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let h = hash_of(x as usize % ENTRIES);
        let t = Instant::now();
        let hit = cache.get(&h).await;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(hit);
    }
    let max = lat.iter().cloned().fold(0.0, f64::max);
    (pct(&mut lat, 0.5), pct(&mut lat, 0.99), max)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    println!("moka future cache, {ENTRIES} entries, {GETS} reads per row (us)");
    println!("{:<58} {:>7} {:>7} {:>9}", "", "p50", "p99", "max");

    let cache = filled().await;
    let (p50, p99, max) = reads(&cache).await;
    println!(
        "{:<58} {p50:>7.3} {p99:>7.3} {max:>9.1}",
        "reads, nothing to drop"
    );

    // What the change poller does every 500 ms while keys change: one
    // predicate per poll naming the changed keys.
    for changed in [1usize, 100] {
        let cache = filled().await;
        let ids: HashSet<Arc<str>> = (0..changed)
            .map(|i| Arc::from(format!("key_{}", i * 997 % ENTRIES)))
            .collect();
        let t = Instant::now();
        for _ in 0..4 {
            let ids = ids.clone();
            cache
                .invalidate_entries_if(move |_, c| ids.contains(&c.id))
                .unwrap();
        }
        let register_us = t.elapsed().as_secs_f64() * 1e6 / 4.0;
        let (p50, p99, max) = reads(&cache).await;
        println!(
            "{:<58} {p50:>7.3} {p99:>7.3} {max:>9.1}",
            format!("reads after 4 predicates of {changed} ids (registered in {register_us:.1} us each)")
        );
        let t = Instant::now();
        cache.run_pending_tasks().await;
        println!(
            "{:<58} {:>7} {:>7} {:>9.1}",
            format!("  maintenance applying what is left of them (ms)"),
            "",
            "",
            t.elapsed().as_secs_f64() * 1e3
        );
        let gone = (0..ENTRIES)
            .filter(|i| ids.contains(format!("key_{i}").as_str()))
            .all(|i| !cache.contains_key(&hash_of(i)));
        assert!(gone, "every changed key was dropped");
    }

    // The alternative: an index kept next to the cache, one removal per hash.
    let cache = filled().await;
    let index: DashMap<Arc<str>, Vec<Hash>> = DashMap::new();
    for i in 0..ENTRIES {
        index
            .entry(format!("key_{i}").into())
            .or_default()
            .push(hash_of(i));
    }
    for changed in [1usize, 100] {
        let ids: Vec<String> = (0..changed)
            .map(|i| format!("key_{}", (i * 997 + 1) % ENTRIES))
            .collect();
        let t = Instant::now();
        for id in &ids {
            if let Some(hashes) = index.get(id.as_str()) {
                for h in hashes.iter() {
                    cache.invalidate(h).await;
                }
            }
        }
        println!(
            "{:<58} {:>7} {:>7} {:>9.1}",
            format!("index: drop {changed} ids (us, once)"),
            "",
            "",
            t.elapsed().as_secs_f64() * 1e6
        );
    }
    let (p50, p99, max) = reads(&cache).await;
    println!(
        "{:<58} {p50:>7.3} {p99:>7.3} {max:>9.1}",
        "index: reads after dropping"
    );
}
