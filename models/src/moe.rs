//! Closed-form model of one MoE layer step (GShard / Switch routing, M6-T prototypes) and the step-cost model the
//! simulator shares.
//!
//! * **Load and drops** (uniform router): an expert's load is `X ~ Binomial(N, k/E)` (exact marginal for top-k
//!   without replacement and for k-top-1 prototypes), capacity `C = ceil(gamma k N / E)` (Switch Eq. 3), expected
//!   dropped slots `E * E[(X - C)+]`, drop fraction `E[(X - C)+] * E / (k N)` (design notes §3.3).
//! * **Expected max load**: `E[max] = sum_m (1 - F(m)^E)`, treating the `E` loads as independent (they are weakly
//!   negatively correlated, so this slightly overstates the max; the error is O(1/E)).
//! * **Slowest rank**: the processed load of a rank is a sum of `E/R` capped loads `min(X, C)`; its max over `R`
//!   ranks uses the normal approximation with Blom's expected maximum `Phi^-1((R - 0.375) / (R + 0.25))`.
//! * **Step cost** ([`MoeCostModel`]): expert and router GEMMs on the GEMM law of [`crate::hardware`] (rate
//!   `rate * m / (m + m_half)` with `m` = rows of the GEMM: the expert's tokens, or the rank's tokens for the
//!   router), two all-to-alls (dispatch, combine) in the forward and two in the backward (each carrying the
//!   busiest rank's rows, or capacity-sized buffers of `C E / ranks` rows with `pad_to_capacity`) through the
//!   [`crate::hardware::Network`] capability (alpha-beta by default: inter-node latency once the expert-parallel
//!   group spans nodes), each rank waiting for the slowest. [`MoeCostModel::from_profile`] takes its parameters
//!   from a `DeviceProfile`, so a calibrated profile applies to MoE as to dense training.
//!
//!   The law's `d` is the row count, not `min(m, n, k)` as for dense GEMMs: expert widths exceed the rows per
//!   expert in the models this targets, and with `d` = rows the expert time summed over experts is linear in the
//!   counts the single-device calibration observes (non-empty experts, processed slots), which
//!   [`fit_single_device`] relies on.
use serde::{Deserialize, Serialize};
use statrs::function::gamma::ln_gamma;
use trainlab_core::workloads::{CollectiveAlgo, CollectiveOp};
use trainlab_core::{
    Backend, ClusterSpec, DeviceProfile, Dtype, Error, Fidelity, RunCtx, Workload,
    workloads::moe::{Estimate, LoadSummary, MoeLayer, MoeOutcome, RouterModel},
};

use crate::hardware::{AlphaBetaNetwork, GemmLaw, Network, Placement, memory_time};
use crate::roofline::datasheet_profile;

/// Parameters of the MoE step-time model. Built from a device profile and a cluster ([`MoeCostModel::from_profile`],
/// [`MoeCostModel::from_cluster`] for the datasheet profile) or fitted to measured runs ([`fit_single_device`]).
/// Its GEMMs follow the GEMM law of [`crate::hardware`] (`rate`, `half_dim`, `mem_bw`), its all-to-alls the
/// [`Network`] capability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeCostModel {
    /// Asymptotic expert GEMM rate per device, FLOP/s.
    pub gemm_rate: f64,
    /// Rows (tokens per expert) at which an expert GEMM reaches half the asymptotic rate (the law's `half_dim`).
    pub gemm_half_rows: f64,
    /// Fixed cost per non-empty expert per pass (kernel launches, packing), seconds.
    pub expert_overhead_s: f64,
    /// Memory bandwidth for GEMM operands, bytes/s.
    pub mem_bw: f64,
    /// Bytes per element of activations and weights.
    pub elem_bytes: f64,
    /// The network the dispatch and combine all-to-alls cross (alpha-beta over the cluster's two tiers).
    pub network: AlphaBetaNetwork,
    /// GPUs per node (expert-parallel ranks are packed this many to a node).
    pub gpus_per_node: u64,
    /// Fixed cost of a dispatch or combine, seconds (kernel launches, index building).
    pub dispatch_fixed_s: f64,
    /// Local gather/scatter cost per routed slot per model-width element, seconds (the permutation into expert
    /// order; on one device this is the whole dispatch).
    pub dispatch_s_per_elem: f64,
    /// Softmax cost per router logit, seconds.
    pub router_s_per_logit: f64,
    /// Top-k selection cost per router logit per selection pass (one pass per choice in a group), seconds.
    #[serde(default)]
    pub router_s_per_pass_logit: f64,
    /// Backward expert compute as a multiple of forward (2: input and weight gradients).
    pub backward_factor: f64,
    /// Backward dispatch/combine as a multiple of forward.
    pub backward_comm_factor: f64,
    /// Backward router (two GEMMs and the softmax backward) as a multiple of the forward router.
    #[serde(default = "two")]
    pub backward_router_factor: f64,
}

fn two() -> f64 {
    2.0
}

/// Kernel launches of one expert's forward: the up GEMM, the activation, the down GEMM.
const EXPERT_LAUNCHES: f64 = 3.0;
/// Kernel launches of one dispatch or combine: index building and the permutation.
const DISPATCH_LAUNCHES: f64 = 2.0;
/// Bytes streamed per router logit by the softmax (fp32 logits read and probabilities written, forward and the
/// saved copy: 8 accesses of 4 bytes).
const SOFTMAX_BYTES_PER_LOGIT: f64 = 32.0;
/// Bytes streamed per router logit per top-k selection pass (one fp32 read).
const TOPK_BYTES_PER_LOGIT_PASS: f64 = 4.0;

impl MoeCostModel {
    /// The model of one device described by `profile` in `cluster`, for `dtype`: expert and router GEMMs on the
    /// profile's GEMM law, [`EXPERT_LAUNCHES`] launches per expert and [`DISPATCH_LAUNCHES`] per dispatch or
    /// combine, the permutation, softmax and top-k streaming at the profile's memory bandwidth, all-to-alls on the
    /// cluster's alpha-beta network. A calibrated profile (`trainlab calibrate`) applies here as it does to the
    /// dense step model.
    pub fn from_profile(profile: &DeviceProfile, cluster: &ClusterSpec, dtype: Dtype) -> MoeCostModel {
        let bw = profile.mem_bw_bytes_per_s.max(1.0);
        let eb = dtype.bytes() as f64;
        MoeCostModel {
            gemm_rate: profile.rate(dtype),
            gemm_half_rows: profile.gemm_half_dim,
            expert_overhead_s: EXPERT_LAUNCHES * profile.launch_overhead_s,
            mem_bw: bw,
            elem_bytes: eb,
            network: AlphaBetaNetwork::of(cluster),
            gpus_per_node: cluster.gpus_per_node.max(1) as u64,
            dispatch_fixed_s: DISPATCH_LAUNCHES * profile.launch_overhead_s,
            // read + write one element
            dispatch_s_per_elem: memory_time(2.0 * eb, bw),
            router_s_per_logit: memory_time(SOFTMAX_BYTES_PER_LOGIT, bw),
            router_s_per_pass_logit: memory_time(TOPK_BYTES_PER_LOGIT_PASS, bw),
            backward_factor: 2.0,
            backward_comm_factor: 1.0,
            backward_router_factor: 2.0,
        }
    }

    /// The datasheet model of one GPU of `cluster` ([`MoeCostModel::from_profile`] of
    /// [`datasheet_profile`]`(cluster.gpu)`).
    pub fn from_cluster(cluster: &ClusterSpec, dtype: Dtype) -> MoeCostModel {
        MoeCostModel::from_profile(&datasheet_profile(&cluster.gpu), cluster, dtype)
    }

    /// The GEMM law of these parameters.
    pub fn gemm_law(&self) -> GemmLaw {
        GemmLaw {
            rate_flops_per_s: self.gemm_rate,
            half_dim: self.gemm_half_rows,
            mem_bw_bytes_per_s: self.mem_bw,
        }
    }

    /// Forward time of one expert FFN on `rows` tokens: zero for an idle expert, else the overhead plus its two
    /// GEMMs (`[rows, d] x [d, f]` and `[rows, f] x [f, d]`, `2 rows d f` FLOPs each) on the GEMM law with `d =
    /// rows`: `overhead + 2 max(2 rows d f / (rate * rows / (rows + m_half)), (rows d + d f + rows f) bytes / mem_bw)`.
    pub fn expert_time(&self, rows: f64, d_model: f64, d_ff: f64) -> f64 {
        if rows <= 0.0 {
            return 0.0;
        }
        let flops = 2.0 * rows * d_model * d_ff;
        let bytes = (rows * d_model + d_model * d_ff + rows * d_ff) * self.elem_bytes;
        self.expert_overhead_s + 2.0 * self.gemm_law().time(flops, bytes, rows)
    }

    /// The router's GEMM (`[tokens, d] x [d, E]`) on the GEMM law with `d = tokens`.
    pub fn router_gemm_time(&self, tokens: f64, d_model: f64, experts: f64) -> f64 {
        let flops = 2.0 * tokens * d_model * experts;
        let bytes = (tokens * d_model + d_model * experts + tokens * experts) * self.elem_bytes;
        self.gemm_law().time(flops, bytes, tokens)
    }

    /// Forward router time on `tokens` tokens: the GEMM, the softmax over every logit and `per_group` top-k
    /// selection passes.
    pub fn router_time(&self, tokens: f64, d_model: f64, experts: f64, per_group: f64) -> f64 {
        self.router_gemm_time(tokens, d_model, experts)
            + tokens * experts * (self.router_s_per_logit + per_group * self.router_s_per_pass_logit)
    }

    /// Time of one dispatch (or combine) where the busiest rank moves `bytes` (sent or received, whichever is
    /// larger) among `ranks` expert-parallel ranks packed [`Self::gpus_per_node`] to a node: the local permutation of
    /// `slots` routed slots of width `d_model`, plus the all-to-all on `net` (none with one rank).
    pub fn a2a_time_on(&self, net: &dyn Network, bytes: f64, ranks: u64, slots: f64, d_model: f64) -> f64 {
        let local = self.dispatch_fixed_s + self.dispatch_s_per_elem * slots * d_model;
        if ranks <= 1 {
            return local;
        }
        let group = Placement::packed(ranks, self.gpus_per_node);
        local
            + net
                .collective_time(CollectiveOp::AllToAll, CollectiveAlgo::Ring, bytes, group)
                .0
    }

    /// [`Self::a2a_time_on`] on this model's own network.
    pub fn a2a_time(&self, bytes: f64, ranks: u64, slots: f64, d_model: f64) -> f64 {
        self.a2a_time_on(&self.network, bytes, ranks, slots, d_model)
    }

    /// The step of `layer` given per-expert processed rows (after capacity, length `E`). Each rank waits for the
    /// slowest; returns the time breakdown.
    pub fn step(&self, layer: &MoeLayer, processed: &[f64]) -> StepBreakdown {
        self.step_on(layer, processed, &self.network)
    }

    /// [`Self::step`] with the all-to-alls timed by `net` (e.g. a network simulator).
    pub fn step_on(&self, layer: &MoeLayer, processed: &[f64], net: &dyn Network) -> StepBreakdown {
        let d = layer.d_model as f64;
        let f = layer.d_ff as f64;
        let ranks = layer.ep_ranks.max(1);
        let per_rank = (layer.experts / ranks).max(1) as usize;
        let cap = layer.capacity() as f64;
        let mut max_compute: f64 = 0.0;
        let mut max_recv: f64 = 0.0;
        let mut total = 0.0;
        for chunk in processed.chunks(per_rank) {
            let mut t = 0.0;
            let mut rows_sum = 0.0;
            for &rows in chunk {
                let r = if layer.pad_to_capacity { cap } else { rows };
                t += self.expert_time(r, d, f);
                rows_sum += rows;
            }
            total += rows_sum;
            max_compute = max_compute.max(t);
            max_recv = max_recv.max(rows_sum);
        }
        let r = ranks as f64;
        let send = total / r;
        // capacity-padded buffers: every rank sends and receives `C` rows per expert of its `E / ranks`, whatever
        // the load
        let busiest = if layer.pad_to_capacity {
            cap * per_rank as f64
        } else {
            max_recv.max(send)
        };
        let a2a = self.a2a_time_on(net, busiest * d * self.elem_bytes, ranks, busiest, d);
        let tokens_per_rank = layer.tokens as f64 / r;
        let router = self.router_time(
            tokens_per_rank,
            d,
            layer.experts as f64,
            layer.routing.per_group() as f64,
        );
        let forward = router + a2a + max_compute + a2a;
        let backward = self.backward_router_factor * router
            + self.backward_comm_factor * 2.0 * a2a
            + self.backward_factor * max_compute;
        StepBreakdown {
            router_s: router,
            dispatch_s: a2a,
            compute_s: max_compute,
            combine_s: a2a,
            forward_s: forward,
            backward_s: backward,
            step_s: forward + backward,
            max_rank_rows: max_recv,
            processed: total,
        }
    }
}

/// Time breakdown of one MoE layer step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepBreakdown {
    /// Router GEMM + softmax + top-k, seconds.
    pub router_s: f64,
    /// Dispatch all-to-all, seconds.
    pub dispatch_s: f64,
    /// Slowest rank's expert compute (forward), seconds.
    pub compute_s: f64,
    /// Combine all-to-all, seconds.
    pub combine_s: f64,
    /// Forward, seconds.
    pub forward_s: f64,
    /// Backward, seconds.
    pub backward_s: f64,
    /// Forward + backward, seconds.
    pub step_s: f64,
    /// Processed slots on the busiest rank.
    pub max_rank_rows: f64,
    /// Processed slots in total.
    pub processed: f64,
}

/// Natural log of the Binomial(n, p) probability of `x`.
pub fn ln_binom_pmf(n: u64, p: f64, x: u64) -> f64 {
    if x > n {
        return f64::NEG_INFINITY;
    }
    if p <= 0.0 {
        return if x == 0 { 0.0 } else { f64::NEG_INFINITY };
    }
    if p >= 1.0 {
        return if x == n { 0.0 } else { f64::NEG_INFINITY };
    }
    let (n_, x_) = (n as f64, x as f64);
    ln_gamma(n_ + 1.0) - ln_gamma(x_ + 1.0) - ln_gamma(n_ - x_ + 1.0) + x_ * p.ln() + (n_ - x_) * (-p).ln_1p()
}

/// Moments of the capped load `min(X, c)` and the excess `E[(X - c)+]` for `X ~ Binomial(n, p)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CappedMoments {
    /// `E[min(X, c)]`.
    pub mean_capped: f64,
    /// `Var[min(X, c)]`.
    pub var_capped: f64,
    /// `E[(X - c)+]`.
    pub excess: f64,
}

/// [`CappedMoments`] of a Binomial(n, p) load at capacity `c` (exact sum over the pmf up to `c`).
pub fn capped_moments(n: u64, p: f64, c: u64) -> CappedMoments {
    let mean = n as f64 * p;
    let c = c.min(n);
    let (mut s1, mut s2, mut mass) = (0.0, 0.0, 0.0);
    for x in 0..=c {
        let q = ln_binom_pmf(n, p, x).exp();
        let v = x as f64;
        s1 += v * q;
        s2 += v * v * q;
        mass += q;
    }
    CappedMoments::of_sums(mean, c, s1, s2, mass)
}

impl CappedMoments {
    /// From the pmf sums up to the capacity `c`: `s1 = Σ x q(x)`, `s2 = Σ x² q(x)`, `mass = Σ q(x)` over `x <= c`
    /// (the rest of the mass sits at `c`), and the uncapped mean.
    pub fn of_sums(mean: f64, c: u64, s1: f64, s2: f64, mass: f64) -> CappedMoments {
        let tail = (1.0 - mass).max(0.0);
        let cf = c as f64;
        let mean_capped = s1 + cf * tail;
        let m2 = s2 + cf * cf * tail;
        CappedMoments {
            mean_capped,
            var_capped: (m2 - mean_capped * mean_capped).max(0.0),
            excess: (mean - mean_capped).max(0.0),
        }
    }
}

/// Expected maximum of `count` independent Binomial(n, p) variables: `sum_m (1 - F(m)^count)`.
pub fn expected_max_binomial(n: u64, p: f64, count: u64) -> f64 {
    let mean = n as f64 * p;
    let sd = (mean * (1.0 - p)).sqrt();
    let hi = ((mean + 12.0 * sd + 20.0).ceil() as u64).min(n);
    let mut cdf = 0.0;
    let mut acc = 0.0;
    for m in 0..hi {
        cdf += ln_binom_pmf(n, p, m).exp();
        let f = cdf.min(1.0);
        let term = 1.0 - f.powf(count as f64);
        acc += term;
        if f >= 1.0 && m as f64 > mean {
            break;
        }
    }
    acc
}

/// Blom's approximation of the expected maximum of `r` standard normals.
pub fn expected_max_std_normal(r: u64) -> f64 {
    if r <= 1 {
        return 0.0;
    }
    let q = (r as f64 - 0.375) / (r as f64 + 0.25);
    trainlab_core::stats::inv_norm_cdf(q)
}

/// Closed-form answers for a uniform router.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniformLoad {
    /// Capacity in slots.
    pub capacity: u64,
    /// Mean expert load `k N / E`.
    pub mean_load: f64,
    /// Expected maximum expert load.
    pub expected_max_load: f64,
    /// Expected dropped fraction of slots.
    pub drop_fraction: f64,
    /// Expected processed slots per expert.
    pub processed_per_expert: f64,
    /// Expected processed slots of the busiest rank (normal approximation).
    pub expected_max_rank_processed: f64,
    /// Mean processed slots per rank.
    pub mean_rank_processed: f64,
}

/// The uniform-router closed form for `layer` (see the module docs).
pub fn uniform_load(layer: &MoeLayer) -> UniformLoad {
    let n = layer.tokens;
    let e = layer.experts;
    let k = layer.k();
    let p = k as f64 / e as f64;
    let c = layer.capacity();
    let m = capped_moments(n, p, c);
    let per_rank = layer.experts_per_rank() as f64;
    let rank_mean = per_rank * m.mean_capped;
    let rank_sd = (per_rank * m.var_capped).sqrt();
    UniformLoad {
        capacity: c,
        mean_load: n as f64 * p,
        expected_max_load: expected_max_binomial(n, p, e),
        drop_fraction: m.excess * e as f64 / (k as f64 * n as f64),
        processed_per_expert: m.mean_capped,
        expected_max_rank_processed: rank_mean + rank_sd * expected_max_std_normal(layer.ep_ranks),
        mean_rank_processed: rank_mean,
    }
}

/// The analytical backend (`closed_form`): uniform routing only; other routers are `Unsupported`.
#[derive(Debug, Clone, Default)]
pub struct MoeAnalytical {
    /// Cost model override (e.g. a calibrated one); `None` uses the cluster datasheet.
    pub cost: Option<MoeCostModel>,
}

impl Backend<MoeLayer> for MoeAnalytical {
    fn name(&self) -> &str {
        "closed_form"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, layer: &MoeLayer, _ctx: &mut RunCtx) -> Result<MoeOutcome, Error> {
        layer.validate()?;
        if layer.router != RouterModel::Uniform {
            return Err(Error::Unsupported(format!(
                "the closed form covers the uniform router only (got {})",
                layer.router.label()
            )));
        }
        let cost = self
            .cost
            .clone()
            .unwrap_or_else(|| MoeCostModel::from_cluster(&layer.cluster, layer.dtype));
        Ok(analytical_outcome(layer, &cost))
    }
}

/// The closed-form outcome for a uniform router under `cost`.
pub fn analytical_outcome(layer: &MoeLayer, cost: &MoeCostModel) -> MoeOutcome {
    analytical_outcome_on(layer, cost, &cost.network)
}

/// [`analytical_outcome`] with the all-to-alls timed by `net` (e.g. the flow-level fabric simulator).
pub fn analytical_outcome_on(layer: &MoeLayer, cost: &MoeCostModel, net: &dyn Network) -> MoeOutcome {
    let u = uniform_load(layer);
    let e = layer.experts as usize;
    let per_rank = layer.experts_per_rank() as usize;
    // Expected per-expert processed rows; the busiest rank gets its expected max share, spread over its experts.
    let mut rows = vec![u.processed_per_expert; e];
    let boost = if u.mean_rank_processed > 0.0 {
        u.expected_max_rank_processed / u.mean_rank_processed
    } else {
        1.0
    };
    for r in rows.iter_mut().take(per_rank) {
        *r *= boost;
    }
    let b = cost.step_on(layer, &rows, net);
    let slots = layer.slots() as f64;
    let processed = slots * (1.0 - u.drop_fraction);
    let flops = 3.0 * layer.expert_fwd_flops(processed) / layer.ep_ranks as f64;
    MoeOutcome {
        capacity: u.capacity,
        expert_load: LoadSummary {
            mean: u.mean_load,
            min: f64::NAN,
            max: u.expected_max_load,
            cv: (u.mean_load * (1.0 - layer.k() as f64 / layer.experts as f64)).sqrt() / u.mean_load,
        },
        rank_load: LoadSummary {
            mean: u.mean_rank_processed,
            min: f64::NAN,
            max: u.expected_max_rank_processed,
            cv: f64::NAN,
        },
        expert_imbalance: Estimate::exact(u.expected_max_load / u.mean_load),
        rank_imbalance: Estimate::exact(boost),
        drop_fraction: Estimate::exact(u.drop_fraction),
        slots,
        processed,
        dropped: slots - processed,
        router_s: Estimate::exact(b.router_s),
        dispatch_s: Estimate::exact(b.dispatch_s),
        compute_s: Estimate::exact(b.compute_s),
        combine_s: Estimate::exact(b.combine_s),
        forward_s: Estimate::exact(b.forward_s),
        backward_s: Estimate::exact(b.backward_s),
        step_s: Estimate::exact(b.step_s),
        flops_per_s: flops / b.step_s,
    }
}

/// One measured single-device MoE step, reduced to what [`fit_single_device`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostSample {
    /// Model width.
    pub d_model: f64,
    /// FFN width.
    pub d_ff: f64,
    /// Tokens.
    pub tokens: f64,
    /// Experts.
    pub experts: f64,
    /// Choices per group (top-k selection passes).
    pub per_group: f64,
    /// Experts that received at least one processed slot.
    pub nonempty: f64,
    /// Processed slots (after capacity).
    pub processed: f64,
    /// Measured router time, seconds.
    pub router_s: f64,
    /// Measured dispatch time, seconds.
    pub dispatch_s: f64,
    /// Measured combine time, seconds.
    pub combine_s: f64,
    /// Measured expert forward time, seconds.
    pub experts_s: f64,
    /// Measured backward time, seconds.
    pub backward_s: f64,
}

/// Least squares `min |A c - y|` by the normal equations (Gaussian elimination with partial pivoting); `None` if
/// singular.
pub fn least_squares(rows: &[Vec<f64>], y: &[f64]) -> Option<Vec<f64>> {
    let p = rows.first()?.len();
    let mut a = vec![vec![0.0; p + 1]; p];
    for (r, &yy) in rows.iter().zip(y) {
        for i in 0..p {
            for j in 0..p {
                a[i][j] += r[i] * r[j];
            }
            a[i][p] += r[i] * yy;
        }
    }
    for col in 0..p {
        let piv = (col..p).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, piv);
        for row in 0..p {
            if row != col {
                let fct = a[row][col] / a[col][col];
                let pivot_row = a[col].clone();
                for (x, &pv) in a[row].iter_mut().zip(&pivot_row).skip(col) {
                    *x -= fct * pv;
                }
            }
        }
    }
    Some((0..p).map(|i| a[i][p] / a[i][i]).collect())
}

/// Fits the single-device cost model (`ep_ranks = 1`) to measured CPU steps:
/// expert forward `sum_e [o + 4 d f (m_e + h) / rate]` is linear in (`nonempty`, `4 d f nonempty`,
/// `4 d f processed`) -> `o`, `h / rate`, `1 / rate`; dispatch/combine `a + b * processed * d`; router
/// `2 N d E / rate + N E (c + k_g c_pass)` (`k_g` choices per group) -> `c`, `c_pass`; backward
/// `rho router + 2 beta a2a + phi compute` -> `phi`, `beta`, `rho` (with `rho = 2` if the free fit degenerates). Weights are relative
/// (each sample divided by its own target) so small and large configurations count alike. Non-finite or negative
/// coefficients fall back to `base`.
pub fn fit_single_device(samples: &[CostSample], base: &MoeCostModel) -> MoeCostModel {
    let mut m = base.clone();
    m.mem_bw = 1e18; // the fitted compute law already includes operand traffic
    m.gpus_per_node = 1;
    let rel = |rows: Vec<Vec<f64>>, y: Vec<f64>| -> Option<Vec<f64>> {
        let (r2, y2): (Vec<Vec<f64>>, Vec<f64>) = rows
            .into_iter()
            .zip(&y)
            .map(|(r, &t)| (r.iter().map(|v| v / t).collect(), 1.0))
            .unzip();
        least_squares(&r2, &y2)
    };
    let ok = |v: f64| v.is_finite() && v >= 0.0;
    // Experts
    let rows: Vec<Vec<f64>> = samples
        .iter()
        .map(|s| {
            let w = 4.0 * s.d_model * s.d_ff;
            vec![s.nonempty, w * s.nonempty, w * s.processed]
        })
        .collect();
    if let Some(c) = rel(rows, samples.iter().map(|s| s.experts_s).collect())
        && c[2] > 0.0
    {
        m.gemm_rate = 1.0 / c[2];
        m.gemm_half_rows = if ok(c[1]) { c[1] * m.gemm_rate } else { 0.0 };
        m.expert_overhead_s = if ok(c[0]) { c[0] } else { 0.0 };
    }
    // Dispatch / combine
    let rows: Vec<Vec<f64>> = samples.iter().map(|s| vec![1.0, s.processed * s.d_model]).collect();
    if let Some(c) = rel(
        rows,
        samples.iter().map(|s| 0.5 * (s.dispatch_s + s.combine_s)).collect(),
    ) {
        m.dispatch_fixed_s = c[0].max(0.0);
        m.dispatch_s_per_elem = c[1].max(0.0);
    }
    // Router: what the GEMM leaves, per logit and per logit and selection pass.
    let gemm = |s: &CostSample, m: &MoeCostModel| m.router_gemm_time(s.tokens, s.d_model, s.experts);
    let rows: Vec<Vec<f64>> = samples
        .iter()
        .map(|s| vec![s.tokens * s.experts, s.tokens * s.experts * s.per_group])
        .collect();
    let y: Vec<f64> = samples.iter().map(|s| (s.router_s - gemm(s, &m)).max(1e-12)).collect();
    match rel(rows.clone(), y.clone()) {
        Some(c) if ok(c[0]) && ok(c[1]) => {
            m.router_s_per_logit = c[0];
            m.router_s_per_pass_logit = c[1];
        }
        _ => {
            let per: Vec<f64> = rows.iter().zip(&y).map(|(r, t)| t / r[0]).collect();
            if !per.is_empty() {
                m.router_s_per_logit = per.iter().sum::<f64>() / per.len() as f64;
                m.router_s_per_pass_logit = 0.0;
            }
        }
    }
    // Backward
    let pred = |s: &CostSample, m: &MoeCostModel| {
        let compute = s.nonempty * m.expert_overhead_s
            + 4.0 * s.d_model * s.d_ff * (s.processed + s.nonempty * m.gemm_half_rows) / m.gemm_rate;
        let a2a = m.dispatch_fixed_s + m.dispatch_s_per_elem * s.processed * s.d_model;
        let router =
            gemm(s, m) + s.tokens * s.experts * (m.router_s_per_logit + s.per_group * m.router_s_per_pass_logit);
        (compute, a2a, router)
    };
    let mut rows = vec![];
    let mut y = vec![];
    for s in samples {
        let (c, a, r) = pred(s, &m);
        rows.push(vec![c, 2.0 * a, r]);
        y.push(s.backward_s.max(1e-12));
    }
    match rel(rows.clone(), y.clone()) {
        Some(c) if ok(c[0]) && ok(c[1]) && ok(c[2]) => {
            m.backward_factor = c[0];
            m.backward_comm_factor = c[1];
            m.backward_router_factor = c[2];
        }
        _ => {
            // Collinear or negative: the router backward at twice the forward (two GEMMs), then the compute and
            // communication factors, else the compute factor alone.
            m.backward_router_factor = 2.0;
            let r2: Vec<Vec<f64>> = rows.iter().map(|r| vec![r[0], r[1]]).collect();
            let y2: Vec<f64> = y.iter().zip(&rows).map(|(t, r)| (t - 2.0 * r[2]).max(1e-12)).collect();
            match rel(r2.clone(), y2.clone()) {
                Some(c) if ok(c[0]) && ok(c[1]) => {
                    m.backward_factor = c[0];
                    m.backward_comm_factor = c[1];
                }
                _ => {
                    let r1: Vec<Vec<f64>> = r2.iter().map(|r| vec![r[0]]).collect();
                    let y1: Vec<f64> = y2.iter().zip(&r2).map(|(t, r)| (t - r[1]).max(1e-12)).collect();
                    if let Some(c) = rel(r1, y1)
                        && ok(c[0])
                    {
                        m.backward_factor = c[0];
                        m.backward_comm_factor = 1.0;
                    }
                }
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_pmf_sums_to_one() {
        let s: f64 = (0..=50).map(|x| ln_binom_pmf(50, 0.3, x).exp()).sum();
        assert!((s - 1.0).abs() < 1e-10);
    }

    #[test]
    fn capped_moments_limits() {
        // c >= n: nothing dropped, mean = np
        let m = capped_moments(100, 0.2, 100);
        assert!(m.excess.abs() < 1e-9 && (m.mean_capped - 20.0).abs() < 1e-9);
        assert!((m.var_capped - 16.0).abs() < 1e-6);
        // c = 0: everything dropped
        let m = capped_moments(100, 0.2, 0);
        assert!((m.excess - 20.0).abs() < 1e-9);
    }

    #[test]
    fn uniform_drop_matches_design_note_anchor() {
        // Design notes §3.4: N = 4096, E = 32, top-1, gamma = 1.0 -> 0.035 (Monte Carlo, 200 trials).
        let n = 4096;
        let p = 1.0 / 32.0;
        let m = capped_moments(n, p, 128);
        let frac = m.excess * 32.0 / 4096.0;
        assert!((frac - 0.035).abs() < 0.003, "{frac}");
    }

    #[test]
    fn expected_max_of_one_is_the_mean() {
        let m = expected_max_binomial(1000, 0.1, 1);
        assert!((m - 100.0).abs() < 1e-6, "{m}");
        assert!(expected_max_binomial(1000, 0.1, 64) > 115.0);
    }

    #[test]
    fn least_squares_recovers_a_line() {
        let rows: Vec<Vec<f64>> = (0..5).map(|i| vec![1.0, i as f64]).collect();
        let y: Vec<f64> = (0..5).map(|i| 2.0 + 3.0 * i as f64).collect();
        let c = least_squares(&rows, &y).unwrap();
        assert!((c[0] - 2.0).abs() < 1e-9 && (c[1] - 3.0).abs() < 1e-9);
    }

    #[test]
    fn blom_expected_max() {
        assert!((expected_max_std_normal(2) - 0.5642).abs() < 0.03); // Blom is approximate for tiny r
        assert!((expected_max_std_normal(100) - 2.5076).abs() < 0.02);
    }

    fn switch_like(ep_ranks: u64, nodes: u32) -> MoeLayer {
        MoeLayer {
            tokens: 32768,
            d_model: 768,
            d_ff: 3072,
            experts: 128,
            routing: trainlab_core::workloads::moe::Routing::TopK(1),
            capacity_factor: 1.25,
            balance_loss: None,
            ep_ranks,
            dtype: Dtype::Bf16,
            cluster: crate::collectives::tests::cluster(nodes),
            router: RouterModel::Uniform,
            pad_to_capacity: false,
        }
    }

    #[test]
    fn all_to_all_is_the_collectives_formula_with_inter_node_latency() {
        let l = switch_like(32, 4);
        let m = MoeCostModel::from_cluster(&l.cluster, l.dtype);
        let bytes = 1.7e6;
        let local = m.a2a_time(bytes, 1, 1000.0, 768.0);
        let a2a = m.a2a_time(bytes, 32, 1000.0, 768.0) - local;
        let want =
            crate::collectives::predict_on(CollectiveOp::AllToAll, CollectiveAlgo::Ring, bytes, 32, &l.cluster).time_s;
        assert!((a2a - want).abs() <= 1e-12 * want, "{a2a} vs {want}");
        // 31 peers, the group spans 4 nodes: inter-node latency per peer
        assert!(a2a >= 31.0 * l.cluster.inter.latency_s);
        // within one node: intra-node latency
        let one_node = m.a2a_time(bytes, 8, 1000.0, 768.0) - local;
        assert!(one_node < 7.0 * l.cluster.inter.latency_s && one_node >= 7.0 * l.cluster.intra.latency_s);
    }

    /// A device profile applies to the MoE step as to the dense step: a profile with twice the GEMM rate (and no
    /// launch cost) gives expert compute of exactly half the time when memory does not bind.
    #[test]
    fn from_profile_applies_a_calibrated_profile() {
        let l = switch_like(32, 4);
        let mut p = datasheet_profile(&l.cluster.gpu);
        p.launch_overhead_s = 0.0;
        p.mem_bw_bytes_per_s = 1e18;
        let base = MoeCostModel::from_profile(&p, &l.cluster, l.dtype);
        for r in p.gemm_rate.values_mut() {
            *r *= 2.0;
        }
        let fast = MoeCostModel::from_profile(&p, &l.cluster, l.dtype);
        let rows = vec![256.0; 128];
        let (a, b) = (base.step(&l, &rows), fast.step(&l, &rows));
        assert!(
            (b.compute_s / a.compute_s - 0.5).abs() < 1e-12,
            "{} vs {}",
            b.compute_s,
            a.compute_s
        );
        assert_eq!(a.dispatch_s, b.dispatch_s);
        // the datasheet model is the datasheet profile's
        let d = MoeCostModel::from_cluster(&l.cluster, l.dtype);
        let law = crate::hardware::GemmLaw::of(&datasheet_profile(&l.cluster.gpu), l.dtype);
        assert_eq!(d.gemm_law(), law);
        // one expert of 256 rows: the law with d = rows, two GEMMs, three launches
        let f = 2.0 * 256.0 * 768.0 * 3072.0;
        let bytes = (256.0 * 768.0 + 768.0 * 3072.0 + 256.0 * 3072.0) * 2.0;
        let want = 3.0 * crate::roofline::DATASHEET_LAUNCH_OVERHEAD_S + 2.0 * law.time(f, bytes, 256.0);
        assert!((d.expert_time(256.0, 768.0, 3072.0) - want).abs() < 1e-15);
    }

    /// Any [`Network`] can time the all-to-alls: a free network leaves only the local permutation.
    #[test]
    fn step_on_another_network() {
        struct Free;
        impl Network for Free {
            fn collective_time(
                &self,
                _: CollectiveOp,
                a: CollectiveAlgo,
                _: f64,
                _: Placement,
            ) -> (f64, CollectiveAlgo) {
                (0.0, a)
            }
            fn send_time(&self, _: f64, _: bool) -> f64 {
                0.0
            }
        }
        let l = switch_like(32, 4);
        let m = MoeCostModel::from_cluster(&l.cluster, l.dtype);
        let rows = vec![256.0; 128];
        let free = m.step_on(&l, &rows, &Free);
        let ab = m.step(&l, &rows);
        assert!(free.dispatch_s < ab.dispatch_s);
        let local = m.dispatch_fixed_s + m.dispatch_s_per_elem * free.max_rank_rows.max(free.processed / 32.0) * 768.0;
        assert!((free.dispatch_s - local).abs() < 1e-15);
        assert_eq!(free.compute_s, ab.compute_s);
    }
}
