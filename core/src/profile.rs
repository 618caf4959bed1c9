//! A device profile: the parameters the analytical models use for one device, fitted by `trainlab calibrate` from
//! measured microbenchmarks (or taken from a datasheet), with provenance.
use crate::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a profile came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// ISO date of the measurement.
    pub date: String,
    /// Device description (CPU model or GPU name).
    pub device: String,
    /// The command that produced it.
    pub command: String,
    /// trainlab version.
    pub version: String,
}

/// Fitted performance parameters of one device.
///
/// GEMM time model (roofline with size-dependent efficiency):
/// `t = launch_overhead_s + max(F / (rate * d / (d + gemm_half_dim)), bytes / mem_bw)` with `F = 2mnk`,
/// `d = min(m, n, k)` and `rate = gemm_rate[dtype]` the asymptotic GEMM rate of large problems.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    /// `cpu` or `cuda`.
    pub backend: String,
    /// Asymptotic GEMM rate per dtype, FLOP/s.
    pub gemm_rate: BTreeMap<Dtype, f64>,
    /// Smallest GEMM dimension at which half the asymptotic rate is reached.
    pub gemm_half_dim: f64,
    /// Fixed cost per kernel or call, seconds.
    pub launch_overhead_s: f64,
    /// Sustained memory bandwidth, bytes/s (counting bytes read and written).
    pub mem_bw_bytes_per_s: f64,
    /// Where the numbers come from.
    pub provenance: Provenance,
    /// Median absolute relative error on held-out GEMM sizes at calibration time, if measured.
    #[serde(default)]
    pub holdout_median_abs_rel_error: Option<f64>,
}

impl DeviceProfile {
    /// Asymptotic GEMM rate for `dtype` (falls back to fp32).
    pub fn rate(&self, dtype: Dtype) -> f64 {
        self.gemm_rate
            .get(&dtype)
            .or_else(|| self.gemm_rate.get(&Dtype::Fp32))
            .copied()
            .unwrap_or(1e9)
    }
}
