//! Units: simulated time in integer nanoseconds, bytes, floating-point operations.
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, AddAssign, Sub};

/// Simulated time in integer nanoseconds. Integer time makes event ordering exact (no epsilon comparisons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct SimTime(pub u64);

impl SimTime {
    /// Time zero.
    pub const ZERO: SimTime = SimTime(0);
    /// The largest representable time (about 584 years).
    pub const MAX: SimTime = SimTime(u64::MAX);

    /// From seconds, rounded to the nearest nanosecond; negative or non-finite inputs saturate at 0 / MAX.
    pub fn from_secs_f64(s: f64) -> SimTime {
        if s.is_nan() || s <= 0.0 {
            SimTime(0)
        } else {
            let ns = (s * 1e9).round();
            if ns >= u64::MAX as f64 {
                SimTime::MAX
            } else {
                SimTime(ns as u64)
            }
        }
    }
    /// From whole nanoseconds.
    pub const fn from_nanos(ns: u64) -> SimTime {
        SimTime(ns)
    }
    /// Nanoseconds.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
    /// Seconds as `f64`.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 * 1e-9
    }
    /// Saturating addition.
    pub fn saturating_add(self, d: SimTime) -> SimTime {
        SimTime(self.0.saturating_add(d.0))
    }
}

impl Add for SimTime {
    type Output = SimTime;
    fn add(self, rhs: SimTime) -> SimTime {
        SimTime(self.0.saturating_add(rhs.0))
    }
}
impl AddAssign for SimTime {
    fn add_assign(&mut self, rhs: SimTime) {
        self.0 = self.0.saturating_add(rhs.0);
    }
}
impl Sub for SimTime {
    type Output = SimTime;
    fn sub(self, rhs: SimTime) -> SimTime {
        SimTime(self.0.saturating_sub(rhs.0))
    }
}
impl fmt::Display for SimTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.9}s", self.as_secs_f64())
    }
}

/// A byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Bytes(pub u64);

impl Bytes {
    /// GiB (2^30 bytes).
    pub const GIB: u64 = 1 << 30;
    /// As `f64`.
    pub fn as_f64(self) -> f64 {
        self.0 as f64
    }
}

/// A count of floating-point operations (a multiply-add counts as 2).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default, Serialize, Deserialize)]
pub struct Flops(pub f64);

impl Flops {
    /// FLOPs of an `m x k` by `k x n` matrix product: `2 m n k`.
    pub fn gemm(m: u64, n: u64, k: u64) -> Flops {
        Flops(2.0 * m as f64 * n as f64 * k as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn simtime_round_trip_and_saturation() {
        assert_eq!(SimTime::from_secs_f64(1.5).as_nanos(), 1_500_000_000);
        assert_eq!(SimTime::from_secs_f64(-3.0), SimTime::ZERO);
        assert_eq!(SimTime::from_secs_f64(f64::INFINITY), SimTime::MAX);
        assert_eq!(SimTime(5) - SimTime(9), SimTime::ZERO);
        assert_eq!(SimTime::MAX + SimTime(1), SimTime::MAX);
    }
    #[test]
    fn gemm_flops() {
        assert_eq!(Flops::gemm(2, 3, 4).0, 48.0);
    }
}
