//! Simulated backend for dense training: the analytical step model's per-micro-batch stage times, replayed through
//! the 1F1B pipeline event simulator ([`crate::pipeline`]).
//!
//! The closed form charges every micro-batch slot of the slowest stage with the pipeline point-to-point time,
//! `(m + p - 1) (f + b + 2 t_p2p)`. The simulator instead sends activations and gradients as events between
//! stages, so transfers on the critical path are counted where they occur and overlap elsewhere. With one stage
//! both agree to the nanosecond clock (tested); with many stages the simulator is the reference for the bubble.
//! Stages are uniform (each runs the slowest stage's times), as in the closed form.
use crate::pipeline::simulate_1f1b;
use trainlab_core::workloads::{DenseOutcome, DenseTraining, Recompute};
use trainlab_core::{Backend, DeviceProfile, Error, Fidelity, RunCtx};
use trainlab_models::dense::{outcome_of, step_breakdown};
use trainlab_models::search::search;

/// Dense training answered by the pipeline DES (name `pipeline_des`).
#[derive(Debug, Clone, Default)]
pub struct DensePipelineSim {
    /// A calibrated device profile; `None` uses the GPU's datasheet profile.
    pub profile: Option<DeviceProfile>,
}

impl Backend<DenseTraining> for DensePipelineSim {
    fn name(&self) -> &str {
        "pipeline_des"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Simulated
    }
    fn run(&mut self, w: &DenseTraining, _ctx: &mut RunCtx) -> Result<DenseOutcome, Error> {
        let cfg = match w.parallel {
            Some(c) => c,
            None => search(w, self.profile.as_ref())?.best.config,
        };
        let b = step_breakdown(w, &cfg, self.profile.as_ref())?;
        // Tensor-parallel all-reduces: 2 in the forward, the rest (2, or 4 with full recomputation) in the backward.
        let n_ar = if cfg.recompute == Recompute::Full { 6.0 } else { 4.0 };
        let f = b.forward_mb_s + b.tp_comm_mb_s * 2.0 / n_ar;
        let bw = b.backward_mb_s + b.tp_comm_mb_s * (n_ar - 2.0) / n_ar;
        let p = cfg.pp as usize;
        let m = b.micro_batches as usize;
        let p2p = b.pp_comm_mb_s / 2.0;
        let sim = simulate_1f1b(p, m, &vec![f; p], &vec![bw; p], p2p)?;
        let step = sim.step_time_s + b.dp_exposed_s + b.optimizer_s;
        let mut sb = b.clone();
        sb.step_time_s = step;
        sb.bubble_fraction = sim.bubble_fraction;
        sb.mfu = b.mfu * b.step_time_s / step;
        Ok(outcome_of(w, &sb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainlab_core::workloads::{ParallelConfig, TransformerSpec};
    use trainlab_core::{ClusterSpec, Dtype, GpuSpec, LinkSpec, Seed};
    use trainlab_models::dense::DenseAnalytical;

    fn workload(pp: u64, dp: u64) -> DenseTraining {
        let gpu = GpuSpec {
            name: "h100-sxm".into(),
            memory_bytes: 80 << 30,
            peak_flops: [(Dtype::Bf16, 989e12), (Dtype::Fp32, 67e12)].into_iter().collect(),
            hbm_bandwidth_bytes_per_s: 3.35e12,
            nvlink_bandwidth_bytes_per_s: 450e9,
            tdp_watts: 700.0,
            source: "test".into(),
            sm: None,
        };
        DenseTraining {
            model: TransformerSpec {
                name: "t".into(),
                layers: 32,
                hidden: 4096,
                heads: 32,
                kv_heads: None,
                ffn_hidden: 11008,
                gated_ffn: true,
                vocab: 32000,
                seq_len: 4096,
            },
            cluster: ClusterSpec {
                gpu,
                gpus_per_node: 8,
                nodes: (8 * pp * dp / 8) as u32,
                intra: LinkSpec {
                    bandwidth_bytes_per_s: 450e9,
                    latency_s: 3e-6,
                },
                inter: LinkSpec {
                    bandwidth_bytes_per_s: 50e9,
                    latency_s: 8e-6,
                },
            },
            global_batch_tokens: 4096 * 256,
            train_tokens: 1e12,
            dtype: Dtype::Bf16,
            parallel: Some(ParallelConfig {
                tp: 8,
                pp,
                dp,
                micro_batch: 1,
                recompute: Recompute::Selective,
                zero1: true,
            }),
            overlap_comm: true,
            downtime: None,
        }
    }

    #[test]
    fn one_stage_agrees_exactly_with_the_closed_form() {
        let w = workload(1, 4);
        let mut ctx = RunCtx::new(Seed(1));
        let a = DenseAnalytical { profile: None }.run(&w, &mut ctx).unwrap();
        let s = DensePipelineSim::default().run(&w, &mut ctx).unwrap();
        // Equal up to the simulator's integer-nanosecond clock: at most 1 ns rounding per event.
        let m = 256.0;
        assert!(
            (a.step_time_s - s.step_time_s).abs() <= 2.0 * m * 1e-9,
            "{a:?} vs {s:?}"
        );
    }

    #[test]
    fn many_stages_agree_within_the_p2p_accounting() {
        let w = workload(4, 2);
        let mut ctx = RunCtx::new(Seed(1));
        let a = DenseAnalytical { profile: None }.run(&w, &mut ctx).unwrap();
        let s = DensePipelineSim::default().run(&w, &mut ctx).unwrap();
        // The DES only pays transfers on the critical path, so it is never slower, and the gap is small.
        assert!(
            s.step_time_s <= a.step_time_s * (1.0 + 1e-9),
            "{} > {}",
            s.step_time_s,
            a.step_time_s
        );
        assert!(
            s.step_time_s >= 0.95 * a.step_time_s,
            "{} vs {}",
            s.step_time_s,
            a.step_time_s
        );
        assert!((s.bubble_fraction - a.bubble_fraction).abs() < 0.02);
    }
}
