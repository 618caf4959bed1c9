//! Roofline backends of one device (GEMM, memory bandwidth, launch latency) and the datasheet defaults of a
//! [`DeviceProfile`].
//!
//! The time of a GEMM of `F` FLOPs touching `bytes` bytes is one launch plus the GEMM law of [`crate::hardware`]
//! (Williams, Waterman & Patterson 2009, "Roofline", with a saturating efficiency curve):
//!
//! `t = launch_overhead + max(F / (rate * d / (d + half_dim)), bytes / mem_bw)`
//!
//! with `d = min(m, n, k)` the smallest GEMM dimension: small problems cannot fill the device (too few tiles, too
//! little reuse), and `half_dim` is the dimension at which half the asymptotic rate is reached.
use std::collections::BTreeMap;

use crate::hardware::{GemmLaw, memory_time};

use trainlab_core::profile::Provenance;
use trainlab_core::workloads::{Gemm, GemmOutcome, LaunchLatency, LaunchOutcome, MemBandwidth, MemOutcome};
use trainlab_core::{Backend, DeviceProfile, Dtype, Error, Fidelity, GpuSpec, RunCtx, Workload};

/// Fraction of the dense datasheet peak that large GEMMs sustain on NVIDIA data-centre GPUs. cuBLAS reaches
/// 70-80% of the dense bf16 peak on large square problems on A100/H100 (clock throttling under sustained tensor-core
/// load keeps it below the boost-clock peak); 0.75 is the middle of that range.
pub const DATASHEET_GEMM_EFFICIENCY: f64 = 0.75;
/// Fraction of the datasheet HBM bandwidth a streaming kernel sustains (STREAM-like copies reach 85-92%).
pub const DATASHEET_MEM_EFFICIENCY: f64 = 0.9;
/// Smallest GEMM dimension at which a datacentre GPU reaches half its asymptotic rate (a guess consistent with
/// 128x128 tensor-core tiles: a 128-wide problem fills one tile column, a 1,024-wide one reaches ~89%).
pub const DATASHEET_GEMM_HALF_DIM: f64 = 128.0;
/// CUDA kernel launch overhead seen by back-to-back launches from a stream, seconds (~4-6 us on H100).
pub const DATASHEET_LAUNCH_OVERHEAD_S: f64 = 5e-6;

/// Predicted time of one (batched) GEMM: one launch plus the roofline time.
pub fn gemm_time(profile: &DeviceProfile, g: &Gemm) -> f64 {
    let d = g.m.min(g.n).min(g.k) as f64;
    profile.launch_overhead_s + GemmLaw::of(profile, g.dtype).time(g.flops(), g.bytes(), d)
}

/// Predicted time of one pass of a streaming memory kernel: one launch plus bytes moved / bandwidth.
pub fn mem_time(profile: &DeviceProfile, m: &MemBandwidth) -> f64 {
    profile.launch_overhead_s + memory_time(m.bytes_moved(), profile.mem_bw_bytes_per_s)
}

/// A profile from a GPU datasheet: every listed dtype at [`DATASHEET_GEMM_EFFICIENCY`] of its dense peak, HBM at
/// [`DATASHEET_MEM_EFFICIENCY`], half-rate dimension [`DATASHEET_GEMM_HALF_DIM`], launch overhead
/// [`DATASHEET_LAUNCH_OVERHEAD_S`]. These are documented defaults, not measurements; `trainlab calibrate` replaces them.
pub fn datasheet_profile(gpu: &GpuSpec) -> DeviceProfile {
    let gemm_rate: BTreeMap<Dtype, f64> = gpu
        .peak_flops
        .iter()
        .filter(|(_, v)| v.is_finite() && **v > 0.0)
        .map(|(k, v)| (*k, v * DATASHEET_GEMM_EFFICIENCY))
        .collect();
    DeviceProfile {
        backend: "cuda".into(),
        gemm_rate,
        gemm_half_dim: DATASHEET_GEMM_HALF_DIM,
        launch_overhead_s: DATASHEET_LAUNCH_OVERHEAD_S,
        mem_bw_bytes_per_s: gpu.hbm_bandwidth_bytes_per_s * DATASHEET_MEM_EFFICIENCY,
        provenance: Provenance {
            date: String::new(),
            device: gpu.name.clone(),
            command: format!(
                "datasheet: {DATASHEET_GEMM_EFFICIENCY} x dense peak, {DATASHEET_MEM_EFFICIENCY} x HBM bandwidth"
            ),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        },
        holdout_median_abs_rel_error: None,
        gpu: None,
    }
}

/// A documented guess for a small CPU (2 cores, AVX2 + FMA, ~3 GHz): per core 2 FMA units x 8 fp32 lanes x 2 FLOPs
/// = 32 FLOP/cycle, ~96 GFLOP/s per core peak; a good BLAS sustains ~70%, so ~130 GFLOP/s fp32 for two cores and half
/// that in fp64-like emulation of other types (bf16/fp16 are converted to fp32 on AVX2: same rate as fp32).
/// DRAM ~12 GB/s sustained per socket share, half-rate dimension 48 (cache blocking needs a few 8x6 micro-tiles),
/// 20 us thread-pool dispatch.
pub fn default_cpu_profile() -> DeviceProfile {
    let rate = 130e9;
    let gemm_rate = [Dtype::Fp32, Dtype::Tf32, Dtype::Fp16, Dtype::Bf16]
        .into_iter()
        .map(|d| (d, rate))
        .collect();
    DeviceProfile {
        backend: "cpu".into(),
        gemm_rate,
        gemm_half_dim: 48.0,
        launch_overhead_s: 20e-6,
        mem_bw_bytes_per_s: 12e9,
        provenance: Provenance {
            date: String::new(),
            device: "generic 2-core AVX2 CPU (guess)".into(),
            command: "default_cpu_profile()".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        },
        holdout_median_abs_rel_error: None,
        gpu: None,
    }
}

/// The roofline backend: answers GEMM, memory-bandwidth and launch-latency workloads from a [`DeviceProfile`].
#[derive(Debug, Clone)]
pub struct Roofline {
    /// The device parameters.
    pub profile: DeviceProfile,
}

impl Backend<Gemm> for Roofline {
    fn name(&self) -> &str {
        "roofline"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, w: &Gemm, _ctx: &mut RunCtx) -> Result<GemmOutcome, Error> {
        w.validate()?;
        Ok(GemmOutcome::from_time(w, gemm_time(&self.profile, w), 0.0))
    }
}

impl Backend<MemBandwidth> for Roofline {
    fn name(&self) -> &str {
        "roofline"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, w: &MemBandwidth, _ctx: &mut RunCtx) -> Result<MemOutcome, Error> {
        w.validate()?;
        let t = mem_time(&self.profile, w);
        Ok(MemOutcome {
            time_s: t,
            bytes_per_s: w.bytes_moved() / t,
        })
    }
}

impl Backend<LaunchLatency> for Roofline {
    fn name(&self) -> &str {
        "roofline"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, w: &LaunchLatency, _ctx: &mut RunCtx) -> Result<LaunchOutcome, Error> {
        w.validate()?;
        Ok(LaunchOutcome {
            per_launch_s: self.profile.launch_overhead_s,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use trainlab_core::Seed;

    pub(crate) fn h100() -> GpuSpec {
        GpuSpec {
            name: "h100-sxm".into(),
            memory_bytes: 80 << 30,
            peak_flops: [
                (Dtype::Bf16, 989e12),
                (Dtype::Fp16, 989e12),
                (Dtype::Tf32, 494e12),
                (Dtype::Fp32, 67e12),
            ]
            .into_iter()
            .collect(),
            hbm_bandwidth_bytes_per_s: 3.35e12,
            nvlink_bandwidth_bytes_per_s: 450e9,
            tdp_watts: 700.0,
            source: "test".into(),
            sm: None,
        }
    }

    #[test]
    fn large_gemm_approaches_rate() {
        let p = datasheet_profile(&h100());
        let g = Gemm {
            m: 16384,
            n: 16384,
            k: 16384,
            batch: 1,
            dtype: Dtype::Bf16,
            device: Default::default(),
        };
        let achieved = g.flops() / gemm_time(&p, &g);
        let expect = 0.75 * 989e12 * 16384.0 / (16384.0 + 128.0);
        assert!((achieved / expect - 1.0).abs() < 1e-3, "{achieved} vs {expect}");
    }

    #[test]
    fn small_gemm_is_launch_or_memory_bound() {
        let p = datasheet_profile(&h100());
        let g = Gemm::square(8);
        let t = gemm_time(&p, &g);
        assert!(t >= p.launch_overhead_s && t < p.launch_overhead_s * 1.01);
        // skinny GEMM: memory bound
        let g = Gemm {
            m: 65536,
            n: 1,
            k: 65536,
            batch: 1,
            dtype: Dtype::Bf16,
            device: Default::default(),
        };
        let t = gemm_time(&p, &g) - p.launch_overhead_s;
        assert!((t - g.bytes() / p.mem_bw_bytes_per_s).abs() / t < 1e-9);
    }

    #[test]
    fn time_monotone_in_size() {
        let p = default_cpu_profile();
        let mut last = 0.0;
        for n in [1u64, 2, 4, 16, 64, 256, 1024, 4096] {
            let t = gemm_time(&p, &Gemm::square(n));
            assert!(t > last);
            last = t;
        }
    }

    #[test]
    fn backends_answer() {
        let mut r = Roofline {
            profile: datasheet_profile(&h100()),
        };
        let mut ctx = RunCtx::new(Seed(1));
        let m = MemBandwidth {
            bytes: 1 << 30,
            kernel: trainlab_core::workloads::MemKernel::Triad,
            device: Default::default(),
        };
        let o = Backend::<MemBandwidth>::run(&mut r, &m, &mut ctx).unwrap();
        assert!(o.bytes_per_s < 0.9 * 3.35e12 && o.bytes_per_s > 0.89 * 3.35e12);
        let l = Backend::<LaunchLatency>::run(
            &mut r,
            &LaunchLatency {
                launches: 10,
                device: Default::default(),
            },
            &mut ctx,
        )
        .unwrap();
        assert_eq!(l.per_launch_s, 5e-6);
        assert!(Backend::<Gemm>::run(&mut r, &Gemm::square(0), &mut ctx).is_err());
    }
}
