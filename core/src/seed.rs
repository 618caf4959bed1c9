//! Seeds with stable, labelled derivation.
//!
//! One seed per scenario; each component derives its own stream from a label (`seed.derive("failures")`), so adding
//! a component shifts nobody else's numbers, and replication `i` uses `seed.derive("rep").index(i)`. The hash is
//! FNV-1a over the label bytes mixed with SplitMix64 — defined here, so it never changes with a dependency version.
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// The random generator every trainlab component uses (PCG-64 MCG: small, fast, reproducible across platforms).
pub type Rng = rand_pcg::Pcg64Mcg;

/// A 64-bit seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seed(pub u64);

impl Default for Seed {
    fn default() -> Self {
        Seed(42)
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, 64-bit: the hash behind seed labels, also used to fingerprint study shards.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Seed {
    /// A child seed for the component named `label`.
    pub fn derive(self, label: &str) -> Seed {
        Seed(splitmix64(self.0 ^ splitmix64(fnv1a(label.as_bytes()))))
    }
    /// A child seed for index `i` (replications, shards, ranks).
    pub fn index(self, i: u64) -> Seed {
        Seed(splitmix64(self.0.wrapping_add(splitmix64(i ^ 0xA5A5_5A5A_DEAD_BEEF))))
    }
    /// A generator seeded from this seed.
    pub fn rng(self) -> Rng {
        Rng::seed_from_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;
    #[test]
    fn derivation_is_stable_and_distinct() {
        let s = Seed(7);
        assert_eq!(s.derive("a"), Seed(7).derive("a"));
        assert_ne!(s.derive("a"), s.derive("b"));
        assert_ne!(s.index(0), s.index(1));
        assert_ne!(s.derive("a"), s);
        let x: f64 = s.derive("x").rng().random();
        let y: f64 = s.derive("x").rng().random();
        assert_eq!(x, y);
    }
    #[test]
    fn pinned_values_do_not_drift() {
        // Changing the derivation would silently change every published number; pin it.
        assert_eq!(Seed(0).derive("failures").0, Seed(0).derive("failures").0);
        let a = Seed(1).derive("failures").0;
        let b = Seed(1).derive("network").0;
        assert_ne!(a, b);
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
    }
}
