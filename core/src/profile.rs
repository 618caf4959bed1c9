//! Calibration profiles: what `trainlab calibrate --workload KIND` writes and every analytical or simulated backend of
//! the kinds that read it takes through `--profile`.
//!
//! A profile file is one envelope ([`Profile`]) around kind-specific parameters: the profile's `kind` (which
//! calibration wrote it), a `format` number (a file of another format is stale and refused), its [`Provenance`]
//! (machine, date, command, version, git revision, what was measured) and the held-out table measured when it was
//! fitted ([`HeldOut`]). The parameters themselves are typed by the crate that owns the model: [`DeviceProfile`]
//! here (GEMM, memory, launch), the MoE cost model in `trainlab-models`, the fault-handling timings in
//! `trainlab-models`, the D-CPT law in `trainlab-models`.
use crate::{Dtype, Error};
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
    /// Git revision of the build that measured (`unknown` outside a checkout).
    #[serde(default)]
    pub git_rev: String,
    /// What was measured, one entry per measured configuration (e.g. `1024x1024x1024 fp32`).
    #[serde(default)]
    pub measured: Vec<String>,
}

/// The current profile file format. Files of another format are refused as stale (re-run the calibration).
pub const PROFILE_FORMAT: u32 = 2;

/// One row of a profile's held-out table: a metric of a configuration that was measured but not fitted, with the
/// calibrated and (where the kind has one) the uncalibrated prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldOut {
    /// The held-out configuration.
    pub case: String,
    /// The metric compared.
    pub metric: String,
    /// The measured value.
    pub measured: f64,
    /// The calibrated model's prediction.
    pub calibrated: f64,
    /// The uncalibrated model's prediction, if the kind has one.
    #[serde(default)]
    pub uncalibrated: Option<f64>,
}

impl HeldOut {
    /// Relative error of the calibrated prediction, `(calibrated - measured) / |measured|` (NaN when measured is 0).
    pub fn calibrated_error(&self) -> f64 {
        rel(self.calibrated, self.measured)
    }
    /// Relative error of the uncalibrated prediction.
    pub fn uncalibrated_error(&self) -> Option<f64> {
        self.uncalibrated.map(|u| rel(u, self.measured))
    }
}

fn rel(pred: f64, measured: f64) -> f64 {
    if measured == 0.0 {
        f64::NAN
    } else {
        (pred - measured) / measured.abs()
    }
}

/// A profile file: kind, format, provenance, parameters and held-out table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile<P> {
    /// The profile kind: the name of the calibration that wrote it (`device`, `moe_layer`, `training_job`, ...).
    pub kind: String,
    /// File format ([`PROFILE_FORMAT`]).
    pub format: u32,
    /// Where and how it was measured.
    pub provenance: Provenance,
    /// The fitted parameters.
    pub params: P,
    /// Measured-vs-predicted on configurations held out of the fit.
    #[serde(default)]
    pub held_out: Vec<HeldOut>,
}

impl<P> Profile<P> {
    /// Median absolute relative error of the calibrated predictions over the held-out table (NaN if empty).
    pub fn held_out_median_abs_error(&self) -> f64 {
        let errs: Vec<f64> = self
            .held_out
            .iter()
            .map(|h| h.calibrated_error().abs())
            .filter(|e| e.is_finite())
            .collect();
        crate::stats::median(&errs)
    }
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
    /// The GPU preset (`cluster.gpu`) the profile was fitted for, where it was fitted for one (the published-run
    /// calibrations of `datasets/calibration/published-dense/`); a workload on another GPU refuses it
    /// ([`DeviceProfile::check_gpu`]). `None` (a profile measured with `calibrate`): not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
}

impl DeviceProfile {
    /// Checks every number: rates and bandwidth finite and > 0, the half-rate dimension and launch overhead finite
    /// and >= 0, a known backend. `path` prefixes the field names (`profile.params`).
    pub fn validate(&self, path: &str) -> Result<(), Error> {
        use crate::error::check;
        if self.backend != "cpu" && self.backend != "cuda" {
            return Err(Error::invalid(
                format!("{path}.backend"),
                &self.backend,
                "a device profile is measured on `cpu` or `cuda`",
                "recalibrate: trainlab calibrate --workload gemm",
            ));
        }
        if self.gemm_rate.is_empty() {
            return Err(Error::invalid(
                format!("{path}.gemm_rate"),
                "{}",
                "no GEMM rate",
                "recalibrate: trainlab calibrate --workload gemm",
            ));
        }
        for (d, r) in &self.gemm_rate {
            check::positive(&format!("{path}.gemm_rate.{}", d.as_str()), *r)?;
        }
        check::positive(&format!("{path}.mem_bw_bytes_per_s"), self.mem_bw_bytes_per_s)?;
        check::non_negative(&format!("{path}.gemm_half_dim"), self.gemm_half_dim)?;
        check::non_negative(&format!("{path}.launch_overhead_s"), self.launch_overhead_s)
    }

    /// An input error (at `--profile`) when the profile names a GPU preset other than `gpu`, the workload's.
    pub fn check_gpu(&self, gpu: &str) -> Result<(), Error> {
        match &self.gpu {
            Some(g) if g != gpu => Err(Error::invalid(
                "--profile",
                g,
                format!("a profile fitted for the {g}, and the workload's cluster.gpu is {gpu}"),
                format!("give a profile of the {gpu}, or drop --profile"),
            )),
            _ => Ok(()),
        }
    }

    /// Asymptotic GEMM rate for `dtype` (falls back to fp32).
    pub fn rate(&self, dtype: Dtype) -> f64 {
        self.gemm_rate
            .get(&dtype)
            .or_else(|| self.gemm_rate.get(&Dtype::Fp32))
            .copied()
            .unwrap_or(1e9)
    }
}
