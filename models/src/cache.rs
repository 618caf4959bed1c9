//! The row cache of an embedding table (PICASSO's GPU cache of hot ids, arXiv 2204.04903): one replacement-policy
//! state machine, run by the cache simulator (`trainlab_sim::recsys::hit_rate_of`, `simulate_hit_rate`) and by the
//! measured CPU step (`trainlab_executors::recsys`, which moves the rows it says), so the measured hit rate and the
//! simulated one come from the same decisions.
//!
//! Keys are 0-based popularity ranks (rank 0 is the most popular row). A cache holds `k` rows in slots `0..k`:
//! - `static_topk`: the ranks `0..k` (slot = rank), never replaced; a miss is not admitted;
//! - `lru`: a miss is admitted; when full, the least recently used row is evicted and its slot reused;
//! - `lfu`: a miss is admitted with count 1; when full, the cached row with the smallest access count is evicted,
//!   ties to the least recently used (counts are kept while a row is cached only).
//!
//! Time is the access index; an access is `O(1)` amortised (LRU: last-access map plus a queue of accesses whose
//! superseded entries are skipped at eviction) or `O(log k)` (LFU: an ordered set of `(count, last access, rank)`).
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};

use trainlab_core::workloads::recsys::CachePolicy;

/// A multiplicative (Fibonacci) hash of a rank: ranks are not adversarial, and this is much faster than SipHash.
#[derive(Clone, Copy, Default, Debug)]
pub struct RankHash;

/// The hasher of [`RankHash`].
#[derive(Default)]
pub struct RankHasher(u64);

impl Hasher for RankHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (x ^ (x >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl BuildHasher for RankHash {
    type Hasher = RankHasher;
    fn build_hasher(&self) -> RankHasher {
        RankHasher(0)
    }
}

/// A map keyed by rank.
pub type RankMap<V> = HashMap<u64, V, RankHash>;

/// What one access did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The row is cached in `slot`.
    Hit {
        /// Its slot.
        slot: u32,
    },
    /// The row was not cached. With `slot`, it is admitted there (`evicted`: the rank that held the slot).
    Miss {
        /// The slot it now holds (`None`: not admitted, static top-k).
        slot: Option<u32>,
        /// The rank evicted to make room.
        evicted: Option<u64>,
    },
}

impl Access {
    /// Whether the access hit.
    pub fn is_hit(self) -> bool {
        matches!(self, Access::Hit { .. })
    }
}

/// Per cached rank: slot, access count, last access.
#[derive(Debug, Clone, Copy)]
struct Entry {
    slot: u32,
    count: u64,
    last: u64,
}

/// The cache of one table: `k` slots under a [`CachePolicy`].
#[derive(Debug, Clone)]
pub struct RowCache {
    policy: CachePolicy,
    k: u64,
    clock: u64,
    entries: RankMap<Entry>,
    /// LRU: every access `(time, rank)` in time order (stale ones skipped at eviction).
    recency: VecDeque<(u64, u64)>,
    /// LFU: `(count, last access, rank)` of every cached rank.
    frequency: BTreeSet<(u64, u64, u64)>,
}

impl RowCache {
    /// An empty cache of `k` rows (static top-k: already holding ranks `0..k`).
    pub fn new(policy: CachePolicy, k: u64) -> RowCache {
        let cap = if policy == CachePolicy::StaticTopk {
            0
        } else {
            (k as usize).min(1 << 24) + 1
        };
        RowCache {
            policy,
            k,
            clock: 0,
            entries: RankMap::with_capacity_and_hasher(cap, RankHash),
            recency: VecDeque::new(),
            frequency: BTreeSet::new(),
        }
    }

    /// Slots.
    pub fn capacity(&self) -> u64 {
        self.k
    }

    /// The policy.
    pub fn policy(&self) -> CachePolicy {
        self.policy
    }

    /// The slot of `rank` if it is cached, without counting an access.
    pub fn slot(&self, rank: u64) -> Option<u32> {
        match self.policy {
            CachePolicy::StaticTopk => (rank < self.k).then_some(rank as u32),
            _ => self.entries.get(&rank).map(|e| e.slot),
        }
    }

    /// The cached ranks and their slots (any order).
    pub fn cached(&self) -> Vec<(u64, u32)> {
        match self.policy {
            CachePolicy::StaticTopk => (0..self.k).map(|r| (r, r as u32)).collect(),
            _ => self.entries.iter().map(|(&r, e)| (r, e.slot)).collect(),
        }
    }

    /// One access of `rank`.
    pub fn access(&mut self, rank: u64) -> Access {
        let now = self.clock;
        self.clock += 1;
        if self.k == 0 {
            return Access::Miss {
                slot: None,
                evicted: None,
            };
        }
        match self.policy {
            CachePolicy::StaticTopk => {
                if rank < self.k {
                    Access::Hit { slot: rank as u32 }
                } else {
                    Access::Miss {
                        slot: None,
                        evicted: None,
                    }
                }
            }
            CachePolicy::Lru => {
                let out = if let Some(e) = self.entries.get_mut(&rank) {
                    e.last = now;
                    Access::Hit { slot: e.slot }
                } else {
                    let victim = if self.entries.len() as u64 >= self.k {
                        let mut victim = None;
                        while let Some((t, old)) = self.recency.pop_front() {
                            if self.entries.get(&old).is_some_and(|e| e.last == t) {
                                victim = self.entries.remove(&old).map(|e| (e.slot, old));
                                break;
                            }
                        }
                        Some(victim.expect("a full cache has a least recent row"))
                    } else {
                        None
                    };
                    self.admit(rank, now, victim)
                };
                self.recency.push_back((now, rank));
                out
            }
            CachePolicy::Lfu => {
                if let Some(e) = self.entries.get_mut(&rank) {
                    self.frequency.remove(&(e.count, e.last, rank));
                    e.count += 1;
                    e.last = now;
                    self.frequency.insert((e.count, now, rank));
                    Access::Hit { slot: e.slot }
                } else {
                    let victim = (self.entries.len() as u64 >= self.k).then(|| {
                        let (_, _, old) = self.frequency.pop_first().expect("a full cache has a least used row");
                        let e = self.entries.remove(&old).expect("ordered rows are cached");
                        (e.slot, old)
                    });
                    self.frequency.insert((1, now, rank));
                    self.admit(rank, now, victim)
                }
            }
        }
    }

    /// Admits `rank` (count 1, last access `now`) into the victim's slot, or the next free one.
    fn admit(&mut self, rank: u64, now: u64, victim: Option<(u32, u64)>) -> Access {
        let slot = victim.map_or(self.entries.len() as u32, |(slot, _)| slot);
        self.entries.insert(
            rank,
            Entry {
                slot,
                count: 1,
                last: now,
            },
        );
        Access::Miss {
            slot: Some(slot),
            evicted: victim.map(|(_, old)| old),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(policy: CachePolicy, k: u64, seq: &[u64]) -> Vec<bool> {
        let mut c = RowCache::new(policy, k);
        seq.iter().map(|&r| c.access(r).is_hit()).collect()
    }

    #[test]
    fn hand_worked_sequences() {
        // LRU, 2 slots: 1 2 1 3 (evicts 2) 2 (evicts 1) 1 (evicts 3)
        assert_eq!(
            hits(CachePolicy::Lru, 2, &[1, 2, 1, 3, 2, 1]),
            [false, false, true, false, false, false]
        );
        // LFU, 2 slots: 1 1 2 3 (evicts 2: count 1, older than nothing else of count 1) 3 1
        assert_eq!(
            hits(CachePolicy::Lfu, 2, &[1, 1, 2, 3, 3, 1]),
            [false, true, false, false, true, true]
        );
        // LFU ties go to the least recent: 1 2 3 evicts 1
        assert_eq!(
            hits(CachePolicy::Lfu, 2, &[1, 2, 3, 2, 1]),
            [false, false, false, true, false]
        );
        // static top-2: ranks 0 and 1 only
        assert_eq!(
            hits(CachePolicy::StaticTopk, 2, &[0, 5, 1, 2]),
            [true, false, true, false]
        );
        assert_eq!(hits(CachePolicy::Lru, 0, &[1, 1]), [false, false]);
    }

    #[test]
    fn slots_are_reused_and_never_shared() {
        for policy in [CachePolicy::Lru, CachePolicy::Lfu] {
            let mut c = RowCache::new(policy, 8);
            let mut x = 12345u64;
            for _ in 0..10_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let rank = (x >> 33) % 40;
                let a = c.access(rank);
                if let Access::Miss { slot: Some(s), evicted } = a {
                    assert!(u64::from(s) < 8);
                    if let Some(old) = evicted {
                        assert_eq!(c.slot(old), None);
                    }
                }
                assert!(c.slot(rank).is_some());
                let mut slots: Vec<u32> = c.cached().iter().map(|&(_, s)| s).collect();
                slots.sort_unstable();
                slots.dedup();
                assert_eq!(slots.len(), c.cached().len());
                assert!(c.cached().len() <= 8);
            }
        }
    }
}
