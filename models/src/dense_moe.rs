//! Mixture-of-experts layers in the training-step model of [`crate::dense`] (a `dense_training` workload with a
//! `moe` section).
//!
//! Every `every`-th layer's FFN is replaced by `E` experts of the model's FFN shape behind a router; the experts of a
//! layer are split over the `ep` ranks of an expert-parallel group carved out of the data-parallel ranks (ranks
//! `tp cp` apart in the order tp, cp, dp, pp, so the group spans nodes once `tp cp ep > gpus_per_node`). Per MoE
//! layer and micro-batch, forward, on one GPU holding `t = b s / cp` tokens:
//!
//! * **router**: the `[t, h] x [h, E]` GEMM on the GEMM law, softmax and one top-k pass per choice streamed at
//!   memory bandwidth (the constants of [`crate::moe::MoeCostModel`]), and the half of the layer's element-wise work
//!   and launches that the dense FFN up GEMM carries;
//! * **dispatch and combine**: one all-to-all each over the EP group through the [`Network`] capability (the
//!   dense step's network: intra-node or inter-node by where the group lands) carrying the busiest rank's rows of
//!   `h` elements (capacity-sized buffers, `C E / ep` rows, with `pad_to_capacity`), plus the local permutation
//!   (2 launches, the rows read and written once);
//! * **experts**: the slowest rank's `E / ep` experts, each on its rows (the rank's rows spread evenly over its
//!   experts; `C` each with `pad_to_capacity`), with the FFN's GEMMs split over `tp` as the dense FFN's, and 3
//!   launches per expert.
//!
//! Backward: router and experts twice the forward, dispatch and combine once more each (their gradients); full
//! recomputation replays the forward, all-to-alls included. The all-to-alls are never overlapped (the next
//! operation needs their result). The tensor-parallel collective after the MoE FFN is the dense one's, never
//! chunked with `tp_comm_overlap` (the combine sits between the expert GEMM and it).
//!
//! **The slowest rank's load.** The group routes `N = t ep` tokens per micro-batch; capacity `C = ceil(gamma k N /
//! E)` (Switch Eq. 3). [`closed_form_load`]: expert `i`'s load is `Binomial(N, q_i)` with `q_i` the chance a token picks it
//! (`k_g` choices per routing group, `p_i` the Zipf(`router_skew`) popularity within a group of `E / groups`
//! experts; with two choices the exact inclusion probability of sampling without replacement `p_i (1 + sum_{j !=
//! i} p_j / (1 - p_j))` instead of `2 p_i`; exact marginals for one or two choices and for a uniform router, an
//! approximation for more choices under skew; loads taken as independent), capped at `C`
//! (moments from [`crate::moe::capped_moments`], summed over the non-negligible window: [`capped_moments_fast`]); a rank holds `E / ep` experts drawn at random (the popularity is over a random
//! permutation), so its processed rows have mean `n_r mu` and variance `n_r sigma_w^2 + n_r sigma_b^2 (E - n_r) / (E
//! - 1)`, and the slowest of `ep` ranks is taken at Blom's expected maximum of normals (as the `moe_layer` closed
//! form, to which this reduces for a uniform router). The operation-level simulator uses instead the mean over
//! Monte Carlo routing draws of `moe_layer`'s simulator (`trainlab_sim::dense`), so the two backends differ by the
//! load estimate only; with `pad_to_capacity` the load does not enter the time and they agree exactly.
//!
//! **Memory.** Expert weights, gradients and optimizer state are sharded over `ep` (each GPU holds `E / ep` experts
//! of the `tp`-split FFN); ZeRO shards the expert optimizer state over the `dp cp / ep` ranks that hold the same
//! experts, the dense state over `dp cp` as before; the expert gradients are reduced over that expert-data-parallel
//! group after the backward. Activations of an MoE layer: the FFN's share of Korthikanti's per-layer bytes
//! ([`FFN_ACTIVATION_SHARE`]) scaled by the rows the rank processes over its `t` tokens.
use trainlab_core::workloads::{CollectiveAlgo, CollectiveOp, DenseTraining, MoeSpec, ParallelConfig};

use crate::hardware::{GemmLaw, Network, Placement, memory_time};
use crate::moe::{CappedMoments, expected_max_std_normal, ln_binom_pmf};

/// Share of Korthikanti's `34 sbh` per-layer activation bytes that belong to the FFN (`19 sbh`: its input `2`, the
/// `4h` up output `8`, the activation's output `8`, the dropout mask `1`; Korthikanti et al. 2022 sec. 4.1).
pub const FFN_ACTIVATION_SHARE: f64 = 19.0 / 34.0;
/// Bytes streamed per router logit by the softmax (as [`crate::moe`]).
const SOFTMAX_BYTES_PER_LOGIT: f64 = 32.0;
/// Bytes streamed per router logit per top-k selection pass (as [`crate::moe`]).
const TOPK_BYTES_PER_LOGIT_PASS: f64 = 4.0;
/// Kernel launches of one expert's forward (up GEMM, activation, down GEMM).
const EXPERT_LAUNCHES: f64 = 3.0;
/// Kernel launches of one dispatch or combine.
const DISPATCH_LAUNCHES: f64 = 2.0;

/// The slowest expert-parallel rank's load in one MoE layer for one micro-batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeLoad {
    /// Expert capacity in slots.
    pub capacity: u64,
    /// Processed slots of the slowest rank.
    pub rank_rows: f64,
    /// Mean processed slots of a rank.
    pub mean_rank_rows: f64,
    /// Dropped fraction of the routed slots.
    pub drop_fraction: f64,
    /// From Monte Carlo routing draws (else the closed form).
    pub monte_carlo: bool,
}

/// Tokens an expert-parallel group routes per micro-batch (`t ep`, `t = b s / cp` the tokens of one GPU).
pub fn group_tokens(w: &DenseTraining, cfg: &ParallelConfig) -> u64 {
    cfg.micro_batch * (w.model.seq_len / cfg.cp.max(1)) * cfg.ep.max(1)
}

/// Expert capacity `ceil(gamma k N / E)` for `n` tokens (as `moe_layer`).
pub fn capacity(moe: &MoeSpec, n: u64) -> u64 {
    let c = moe.capacity_factor * moe.top_k as f64 * n as f64 / moe.experts as f64;
    (c - 1e-9).ceil().max(0.0) as u64
}

/// [`crate::moe::capped_moments`] summed only where the pmf is not negligible: from `12` standard deviations (plus
/// 40) below the mean to `min(c, 12 sd + 40 above)`, the pmf by its ratio recurrence from one log-gamma
/// evaluation, so the cost is `O(sd)` instead of `O(c)` (a capacity of millions of slots in a dropless layer).
/// Beyond the window the mass is below `1e-30`; it agrees with the full sum to about 1e-12 (unit test).
pub fn capped_moments_fast(n: u64, p: f64, c: u64) -> CappedMoments {
    let mean = n as f64 * p;
    if p <= 0.0 || n == 0 {
        return CappedMoments {
            mean_capped: 0.0,
            var_capped: 0.0,
            excess: 0.0,
        };
    }
    let c = c.min(n);
    let sd = (mean * (1.0 - p)).max(0.0).sqrt();
    let lo = (mean - 12.0 * sd - 40.0).max(0.0).floor() as u64;
    let hi = ((mean + 12.0 * sd + 40.0).ceil() as u64).min(n);
    if p >= 1.0 || lo > c {
        // every load is at or above the capacity
        let cf = c as f64;
        return CappedMoments {
            mean_capped: cf,
            var_capped: 0.0,
            excess: (mean - cf).max(0.0),
        };
    }
    if c >= hi {
        // the capacity is beyond every non-negligible load: nothing is capped
        return CappedMoments {
            mean_capped: mean,
            var_capped: mean * (1.0 - p),
            excess: 0.0,
        };
    }
    let ratio = p / (1.0 - p);
    let end = c;
    let mut q = ln_binom_pmf(n, p, lo).exp();
    let (mut s1, mut s2, mut mass) = (0.0, 0.0, 0.0);
    let mut x = lo;
    loop {
        let v = x as f64;
        s1 += v * q;
        s2 += v * v * q;
        mass += q;
        if x >= end {
            break;
        }
        q *= (n - x) as f64 / (x + 1) as f64 * ratio;
        x += 1;
    }
    CappedMoments::of_sums(mean, c, s1, s2, mass)
}

/// The closed-form load (see the module docs) of `n` tokens over `ep` ranks.
pub fn closed_form_load(moe: &MoeSpec, n: u64, ep: u64) -> MoeLoad {
    let e = moe.experts;
    let groups = moe.groups();
    let g = e / groups;
    let per_group = moe.top_k / groups;
    let c = capacity(moe, n);
    // Zipf popularity within a group of g experts
    let s = moe.router_skew;
    let (mut mean_capped, mut var_within, mut excess) = (Vec::new(), 0.0, 0.0);
    if s == 0.0 {
        let m = capped_moments_fast(n, per_group as f64 / g as f64, c);
        mean_capped.push(m.mean_capped);
        var_within = m.var_capped;
        excess = m.excess * g as f64;
    } else {
        let z: f64 = (1..=g).map(|i| (i as f64).powf(-s)).sum();
        // two choices by successive sampling without replacement: P(i chosen) = p_i (1 + sum_{j != i} p_j / (1 -
        // p_j)) exactly; more choices: min(1, k p_i), an approximation
        let sj: f64 = (1..=g)
            .map(|i| {
                let p = (i as f64).powf(-s) / z;
                p / (1.0 - p).max(f64::MIN_POSITIVE)
            })
            .sum();
        for i in 1..=g {
            let p = (i as f64).powf(-s) / z;
            let q = match per_group {
                1 => p,
                2 => p * (1.0 + sj - p / (1.0 - p).max(f64::MIN_POSITIVE)),
                k => k as f64 * p,
            }
            .min(1.0);
            let m = capped_moments_fast(n, q, c);
            mean_capped.push(m.mean_capped);
            var_within += m.var_capped / g as f64;
            excess += m.excess;
        }
    }
    let mu = mean_capped.iter().sum::<f64>() / mean_capped.len() as f64;
    let var_between = mean_capped.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / mean_capped.len() as f64;
    let n_r = (e / ep.max(1)) as f64;
    let fpc = if e > 1 {
        (e as f64 - n_r) / (e as f64 - 1.0)
    } else {
        0.0
    };
    let mean_rank = n_r * mu;
    let sd = (n_r * var_within + n_r * var_between * fpc).sqrt();
    let rank_rows = (mean_rank + sd * expected_max_std_normal(ep)).clamp(mean_rank, n_r * c as f64);
    MoeLoad {
        capacity: c,
        rank_rows,
        mean_rank_rows: mean_rank,
        // every group sees the same popularity: groups x (excess of one group) over k N slots
        drop_fraction: groups as f64 * excess / (moe.top_k as f64 * n as f64),
        monte_carlo: false,
    }
}

/// Per-operation times and sizes of the MoE layers of a layout, per MoE layer and micro-batch on one GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeCosts {
    /// An MoE FFN every this many layers.
    pub every: u64,
    /// Router forward (GEMM, softmax, top-k, and the FFN's half of the element-wise work and launches), seconds.
    pub router: f64,
    /// Expert compute of the slowest rank, forward, seconds.
    pub experts: f64,
    /// One dispatch or combine (all-to-all plus local permutation), seconds.
    pub a2a: f64,
    /// Non-expert parameters of an MoE layer on one GPU (attention, norms, router).
    pub layer_params: f64,
    /// Expert parameters of an MoE layer on one GPU (`E / ep` experts over `tp`).
    pub expert_params: f64,
    /// The ranks that hold the same experts (`dp cp / ep`), over which expert gradients are reduced.
    pub expert_dp_group: Placement,
    /// The load behind these times.
    pub load: MoeLoad,
}

impl MoeCosts {
    /// MoE layers among `layers` of one stage.
    pub fn layers_in(&self, layers: u64) -> u64 {
        layers.div_ceil(self.every.max(1))
    }
    /// Forward compute of one MoE layer given the dense layer's attention part (`qkv + core + proj`).
    pub fn fwd(&self, attention: f64) -> f64 {
        attention + self.router + self.experts
    }
}

/// The MoE costs of a checked layout with `load` (the closed form's when `None`): `t` tokens per GPU, GEMMs on
/// `law`, element-wise half-layer cost `elementwise_half` (the dense FFN up GEMM's share).
#[allow(clippy::too_many_arguments)]
pub fn moe_costs(
    w: &DenseTraining,
    cfg: &ParallelConfig,
    law: &GemmLaw,
    mem_bw: f64,
    launch: f64,
    elementwise_half: f64,
    net: &dyn Network,
    load: Option<MoeLoad>,
) -> Option<MoeCosts> {
    let moe = w.moe.as_ref()?;
    let m = &w.model;
    let eb = w.dtype.bytes() as f64;
    let (tp, cp, ep) = (cfg.tp.max(1), cfg.cp.max(1), cfg.ep.max(1));
    let tpf = tp as f64;
    let gpn = u64::from(w.cluster.gpus_per_node).max(1);
    let t = (cfg.micro_batch * (m.seq_len / cp)) as f64;
    let h = m.hidden as f64;
    let f = m.ffn_hidden as f64;
    let e = moe.experts as f64;
    let load = load.unwrap_or_else(|| closed_form_load(moe, group_tokens(w, cfg), ep));
    let n_r = moe.experts / ep;
    let per_group = (moe.top_k / moe.groups()) as f64;
    let router = law.matmul_time(t, e, h, 1.0, eb)
        + memory_time(
            t * e * (SOFTMAX_BYTES_PER_LOGIT + per_group * TOPK_BYTES_PER_LOGIT_PASS),
            mem_bw,
        )
        + elementwise_half;
    let (rows_per_expert, a2a_rows) = if moe.pad_to_capacity {
        (load.capacity as f64, load.capacity as f64 * n_r as f64)
    } else {
        (load.rank_rows / n_r as f64, load.rank_rows)
    };
    let up_width = f * if m.gated_ffn { 2.0 } else { 1.0 } / tpf;
    let experts = if rows_per_expert > 0.0 {
        n_r as f64
            * (EXPERT_LAUNCHES * launch
                + law.matmul_time(rows_per_expert, up_width, h, 1.0, eb)
                + law.matmul_time(rows_per_expert, h, f / tpf, 1.0, eb))
    } else {
        0.0
    };
    let local = DISPATCH_LAUNCHES * launch + memory_time(2.0 * a2a_rows * h * eb, mem_bw);
    // the EP group: ep ranks `tp cp` apart
    let stride = tp * cp;
    let ep_group = Placement {
        ranks: ep,
        per_node: (gpn / stride.min(gpn)).clamp(1, ep),
    };
    let a2a = local
        + if ep > 1 {
            net.collective_time(
                CollectiveOp::AllToAll,
                CollectiveAlgo::Ring,
                a2a_rows * h * eb,
                ep_group,
            )
            .0
        } else {
            0.0
        };
    let hd = h / m.heads as f64;
    let attn = 2.0 * h * h + 2.0 * h * hd * m.kv() as f64;
    let ffn = if m.gated_ffn { 3.0 } else { 2.0 } * h * f;
    let edp = (cfg.dp * cp) / ep;
    let edp_stride = stride * ep;
    Some(MoeCosts {
        every: moe.every,
        router,
        experts,
        a2a,
        layer_params: (attn + 2.0 * h + h * e) / tpf,
        expert_params: n_r as f64 * ffn / tpf,
        expert_dp_group: Placement {
            ranks: edp,
            per_node: (gpn / edp_stride.min(gpn)).clamp(1, edp.max(1)),
        },
        load,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::moe::capped_moments;

    #[test]
    fn fast_capped_moments_equal_the_full_sum() {
        for &(n, p, c) in &[
            (4096u64, 1.0 / 32.0, 160u64),
            (4096, 1.0 / 32.0, 10),
            (65536, 1.0 / 128.0, 640),
            (32768, 0.25, 16384),
            (32768, 0.25, 8000),
            (1000, 0.9, 950),
            (100, 0.5, 0),
        ] {
            let a = capped_moments(n, p, c);
            let b = capped_moments_fast(n, p, c);
            for (x, y) in [
                (a.mean_capped, b.mean_capped),
                (a.var_capped, b.var_capped),
                (a.excess, b.excess),
            ] {
                // both sums carry rounding (the variance a difference of two large moments): 1e-6 relative to the
                // mean load
                assert!(
                    (x - y).abs() <= 1e-6 * (n as f64 * p).max(1.0),
                    "{n} {p} {c}: {a:?} vs {b:?}"
                );
            }
        }
    }

    /// A uniform router: the rank load is `moe_layer`'s closed form (`uniform_load`) of the same layer.
    #[test]
    fn uniform_load_is_the_moe_layer_closed_form() {
        let moe = MoeSpec {
            experts: 32,
            every: 1,
            top_k: 2,
            routing: trainlab_core::workloads::MoeRouting::TopK,
            capacity_factor: 1.25,
            pad_to_capacity: false,
            router_skew: 0.0,
        };
        let l = closed_form_load(&moe, 4096, 8);
        let layer = trainlab_core::workloads::MoeLayer {
            tokens: 4096,
            d_model: 512,
            d_ff: 2048,
            experts: 32,
            routing: trainlab_core::workloads::Routing::TopK(2),
            capacity_factor: 1.25,
            balance_loss: None,
            ep_ranks: 8,
            dtype: trainlab_core::Dtype::Bf16,
            cluster: crate::collectives::tests::cluster(1),
            router: trainlab_core::workloads::RouterModel::Uniform,
            pad_to_capacity: false,
        };
        let u = crate::moe::uniform_load(&layer);
        assert_eq!(l.capacity, u.capacity);
        assert!((l.rank_rows / u.expected_max_rank_processed - 1.0).abs() < 1e-9);
        assert!((l.drop_fraction - u.drop_fraction).abs() < 1e-9);
        // a skewed router drops more and its slowest rank is further above the mean (the capacity caps the popular
        // experts, so the processed rows themselves can fall)
        let skewed = closed_form_load(
            &MoeSpec {
                router_skew: 1.0,
                ..moe
            },
            4096,
            8,
        );
        assert!(
            skewed.drop_fraction > l.drop_fraction
                && skewed.rank_rows / skewed.mean_rank_rows > l.rank_rows / l.mean_rank_rows,
            "{skewed:?} vs {l:?}"
        );
    }
}
