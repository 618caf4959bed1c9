//! One mixture-of-experts (MoE) layer under expert parallelism: routing, expert capacity, dropped tokens and step time.
//!
//! Follows the routing formulation of GShard / Switch Transformer (Fedus et al., JMLR 2022, Eq. 1-3: router softmax,
//! top-k, capacity = capacity_factor * k * tokens / experts) and M6-T's expert prototyping (Yang et al. 2021,
//! arXiv 2105.15082: `k` groups of `E/k` experts, top-1 in each, "k top-1"). Assignments beyond an expert's capacity
//! are dropped: the slot's output is zero and the token passes on the residual.
use crate::error::check;
use crate::{ClusterSpec, Dtype, Error, Interval, Metric, Outcome, Unit, Workload};
use serde::{Deserialize, Serialize};

/// How tokens choose experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Routing {
    /// Top-k over all experts (`routing = { top_k = 2 }`).
    TopK(u64),
    /// M6-T expert prototyping: `k` groups of `E/k` experts, top-1 in each (`routing = { prototypes = 2 }`).
    Prototypes(u64),
}

impl Routing {
    /// Expert slots per token (`k` in both schemes).
    pub fn k(self) -> u64 {
        match self {
            Routing::TopK(k) | Routing::Prototypes(k) => k,
        }
    }
    /// Number of independent routing groups (1 for top-k, `k` for prototypes).
    pub fn groups(self) -> u64 {
        match self {
            Routing::TopK(_) => 1,
            Routing::Prototypes(k) => k,
        }
    }
    /// Experts chosen per token within one group (`k` for top-k, 1 for prototypes).
    pub fn per_group(self) -> u64 {
        match self {
            Routing::TopK(k) => k,
            Routing::Prototypes(_) => 1,
        }
    }
    /// Label such as `top2` or `2xtop1`.
    pub fn label(self) -> String {
        match self {
            Routing::TopK(k) => format!("top{k}"),
            Routing::Prototypes(k) => format!("{k}xtop1"),
        }
    }
}

/// The router's behaviour: where the probability mass over experts goes. Tokens choose their `k` experts by sampling
/// without replacement from the (group's) popularity vector, i.e. Gumbel top-k, which is what a noisy top-k router
/// does when the logits are dominated by the expert bias.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RouterModel {
    /// Every expert equally likely (a perfectly balanced router).
    #[default]
    Uniform,
    /// Zipf popularity `p_i ∝ 1/i^s` over a random permutation of the experts (drawn per step), as in the drop-rate
    /// anchors of the design notes (§3.4). `s = 0` is uniform.
    Zipf {
        /// Exponent `s >= 0`.
        s: f64,
    },
    /// Popularity drawn from a symmetric Dirichlet(alpha) for every step; each token then samples from it. Small
    /// alpha means a heavily skewed router, large alpha tends to uniform. (A per-token Dirichlet with i.i.d. tokens
    /// integrates to a fixed popularity, so the draw is per step, which also models step-to-step router drift.)
    Dirichlet {
        /// Concentration `alpha > 0`.
        alpha: f64,
    },
    /// A routing trace: CSV lines `token,expert[,expert...]` (header optional). Replayed verbatim (cycled if it has
    /// fewer tokens than the workload).
    Trace {
        /// Path of the CSV file.
        path: String,
    },
}

impl RouterModel {
    /// Short label, e.g. `zipf(1)`.
    pub fn label(&self) -> String {
        match self {
            RouterModel::Uniform => "uniform".into(),
            RouterModel::Zipf { s } => format!("zipf({s})"),
            RouterModel::Dirichlet { alpha } => format!("dirichlet({alpha})"),
            RouterModel::Trace { path } => format!("trace({path})"),
        }
    }
}

/// One MoE layer under expert parallelism.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeLayer {
    /// Tokens per step in the expert-parallel group (all ranks together).
    pub tokens: u64,
    /// Model width.
    pub d_model: u64,
    /// Expert FFN inner width.
    pub d_ff: u64,
    /// Total experts `E`.
    pub experts: u64,
    /// Routing scheme.
    pub routing: Routing,
    /// Capacity factor `gamma`: capacity per expert = ceil(gamma * k * tokens / experts).
    pub capacity_factor: f64,
    /// Auxiliary load-balancing loss coefficient (Switch Eq. 4, alpha = 1e-2 there). Only the measured CPU layer
    /// uses it (it adds the loss and its gradient); the predictors take the router model as given.
    #[serde(default)]
    pub balance_loss: Option<f64>,
    /// Expert-parallel ranks; experts are placed `E / ranks` to a rank, contiguously.
    #[serde(default = "one")]
    pub ep_ranks: u64,
    /// Compute data type.
    #[serde(default = "bf16")]
    pub dtype: Dtype,
    /// The cluster that runs the layer (its GPU and network tiers set the cost model).
    pub cluster: ClusterSpec,
    /// Router behaviour.
    #[serde(default)]
    pub router: RouterModel,
    /// Run every expert on `capacity` rows (static shapes, as GShard on TPUs) instead of on its actual load.
    #[serde(default)]
    pub pad_to_capacity: bool,
}

fn one() -> u64 {
    1
}
fn bf16() -> Dtype {
    Dtype::Bf16
}

/// Widest `d_model` or `d_ff`: 2^22.
const MAX_WIDTH: u64 = 1 << 22;
/// Most experts in a layer: 2^20 (PEER, He 2024, "Mixture of A Million Experts", uses 1024^2).
const MAX_EXPERTS: u64 = 1 << 20;
/// Largest capacity factor: 1e4. Capacities and slot counts then stay far inside `u64`.
const MAX_CAPACITY_FACTOR: f64 = 1e4;

impl MoeLayer {
    /// Expert slots per token.
    pub fn k(&self) -> u64 {
        self.routing.k()
    }
    /// Experts in one routing group.
    pub fn experts_per_group(&self) -> u64 {
        self.experts / self.routing.groups()
    }
    /// Experts per expert-parallel rank.
    pub fn experts_per_rank(&self) -> u64 {
        self.experts / self.ep_ranks
    }
    /// Expert capacity `C = ceil(gamma * k * N / E)` (Switch Eq. 3; for prototypes `gamma * N / (E/k)`, the same).
    pub fn capacity(&self) -> u64 {
        let c = self.capacity_factor * self.k() as f64 * self.tokens as f64 / self.experts as f64;
        (c - 1e-9).ceil().max(0.0) as u64
    }
    /// Total routed slots `k * N`.
    pub fn slots(&self) -> u64 {
        self.k() * self.tokens
    }
    /// FLOPs of one expert FFN (two GEMMs) forward on `rows` tokens: `4 * rows * d_model * d_ff`.
    pub fn expert_fwd_flops(&self, rows: f64) -> f64 {
        4.0 * rows * self.d_model as f64 * self.d_ff as f64
    }
    /// Short label, e.g. `E64 top2 cf1.25 zipf(1)`.
    pub fn label(&self) -> String {
        format!(
            "E{} {} cf{} {} N{} ep{}",
            self.experts,
            self.routing.label(),
            self.capacity_factor,
            self.router.label(),
            self.tokens,
            self.ep_ranks
        )
    }
}

impl Workload for MoeLayer {
    type Outcome = MoeOutcome;
    const KIND: &'static str = "moe_layer";
    fn validate(&self) -> Result<(), Error> {
        check::at_least("workload.tokens", self.tokens, 1)?;
        check::at_least("workload.d_model", self.d_model, 1)?;
        check::at_least("workload.d_ff", self.d_ff, 1)?;
        check::at_least("workload.experts", self.experts, 1)?;
        check::at_least("workload.ep_ranks", self.ep_ranks, 1)?;
        // Sizes on their own first, so an absurd value is named rather than a relation it breaks.
        let size = "far beyond any published MoE layer";
        check::at_most("workload.d_model", self.d_model, MAX_WIDTH, size)?;
        check::at_most("workload.d_ff", self.d_ff, MAX_WIDTH, size)?;
        check::at_most(
            "workload.experts",
            self.experts,
            MAX_EXPERTS,
            "the most experts published in one layer (He 2024, a million experts)",
        )?;
        let k = self.k();
        let field = match self.routing {
            Routing::TopK(_) => "workload.routing.top_k",
            Routing::Prototypes(_) => "workload.routing.prototypes",
        };
        check::at_least(field, k, 1)?;
        if !self.experts.is_multiple_of(self.routing.groups()) {
            return Err(Error::invalid(
                field,
                k,
                format!(
                    "{} experts cannot be split into {k} equal prototype groups",
                    self.experts
                ),
                "choose k dividing the number of experts",
            ));
        }
        if self.routing.per_group() > self.experts_per_group() {
            return Err(Error::invalid(
                field,
                k,
                format!("k is larger than the {} experts in a group", self.experts_per_group()),
                "choose k <= experts",
            ));
        }
        if !(self.capacity_factor.is_finite() && self.capacity_factor > 0.0) {
            return Err(Error::invalid(
                "workload.capacity_factor",
                self.capacity_factor,
                "must be a finite number > 0 (0 would drop every token)",
                "use e.g. 1.0, 1.25 or 2.0",
            ));
        }
        if self.capacity_factor > MAX_CAPACITY_FACTOR {
            return Err(Error::invalid(
                "workload.capacity_factor",
                self.capacity_factor,
                format!(
                    "must be at most {MAX_CAPACITY_FACTOR:e}; above the number of experts nothing changes (one \
                     expert could already take every slot)"
                ),
                format!("use at most {}", (self.experts as f64).min(MAX_CAPACITY_FACTOR)),
            ));
        }
        if !self.experts.is_multiple_of(self.ep_ranks) {
            return Err(Error::invalid(
                "workload.ep_ranks",
                self.ep_ranks,
                format!("does not divide experts = {}", self.experts),
                "choose ep_ranks dividing the number of experts",
            ));
        }
        if self.ep_ranks > self.cluster.gpus() {
            return Err(Error::invalid(
                "workload.ep_ranks",
                self.ep_ranks,
                format!("the cluster has only {} GPUs", self.cluster.gpus()),
                "lower ep_ranks or add nodes",
            ));
        }
        if let Some(a) = self.balance_loss {
            check::non_negative("workload.balance_loss", a)?;
        }
        match &self.router {
            RouterModel::Uniform | RouterModel::Trace { .. } => {}
            RouterModel::Zipf { s } => check::non_negative("workload.router.zipf.s", *s)?,
            RouterModel::Dirichlet { alpha } => check::positive("workload.router.dirichlet.alpha", *alpha)?,
        }
        let elems = (self.tokens as f64) * (self.d_model.max(self.d_ff) as f64) * (k as f64);
        if elems > 1e13 {
            return Err(Error::invalid(
                "workload.tokens",
                self.tokens,
                "tokens * width * k exceeds 1e13 elements",
                "use fewer tokens",
            ));
        }
        self.cluster.validate("workload.cluster")?;
        Ok(())
    }
}

/// A value with an optional 95% interval (Monte Carlo backends fill the interval).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Estimate {
    /// Point value (mean over replications for simulations).
    pub value: f64,
    /// 95% interval of the mean, if estimated.
    pub ci: Option<Interval>,
}

impl Estimate {
    /// A point value.
    pub fn exact(value: f64) -> Self {
        Estimate { value, ci: None }
    }
    /// A value with an interval.
    pub fn with_ci(value: f64, low: f64, high: f64) -> Self {
        Estimate {
            value,
            ci: Some(Interval { low, high }),
        }
    }
    fn metric(&self, name: &str, unit: Unit) -> Metric {
        match self.ci {
            Some(c) => Metric::with_ci(name, unit, self.value, c.low, c.high),
            None => Metric::new(name, unit, self.value),
        }
    }
}

/// Summary of a load vector (per expert or per rank), in routed slots before capacity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct LoadSummary {
    /// Mean load.
    pub mean: f64,
    /// Minimum load.
    pub min: f64,
    /// Maximum load.
    pub max: f64,
    /// Coefficient of variation std/mean.
    pub cv: f64,
}

impl LoadSummary {
    /// Summarises a load vector (empty gives zeros).
    pub fn of(xs: &[f64]) -> LoadSummary {
        if xs.is_empty() {
            return LoadSummary::default();
        }
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        LoadSummary {
            mean,
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            cv: if mean > 0.0 { var.sqrt() / mean } else { 0.0 },
        }
    }
    /// max / mean.
    pub fn imbalance(&self) -> f64 {
        if self.mean > 0.0 { self.max / self.mean } else { 1.0 }
    }
}

/// The answer for one MoE layer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct MoeOutcome {
    /// Expert capacity in slots.
    pub capacity: u64,
    /// Per-expert routed load (expected, or of one draw for measured runs).
    pub expert_load: LoadSummary,
    /// Per-rank routed load.
    pub rank_load: LoadSummary,
    /// max/mean expert load.
    pub expert_imbalance: Estimate,
    /// max/mean rank load (after capacity: processed slots).
    pub rank_imbalance: Estimate,
    /// Dropped fraction of routed slots.
    pub drop_fraction: Estimate,
    /// Routed slots `k * tokens`.
    pub slots: f64,
    /// Processed slots.
    pub processed: f64,
    /// Dropped slots.
    pub dropped: f64,
    /// Router (gating) time, seconds.
    pub router_s: Estimate,
    /// Dispatch (all-to-all) time, forward, seconds.
    pub dispatch_s: Estimate,
    /// Expert compute time, forward, slowest rank, seconds.
    pub compute_s: Estimate,
    /// Combine (all-to-all) time, forward, seconds.
    pub combine_s: Estimate,
    /// Forward time, seconds.
    pub forward_s: Estimate,
    /// Backward time, seconds.
    pub backward_s: Estimate,
    /// Forward + backward, seconds.
    pub step_s: Estimate,
    /// Achieved FLOP/s per rank (useful expert FLOPs forward + backward over step time).
    pub flops_per_s: f64,
}

impl Outcome for MoeOutcome {
    fn metrics(&self) -> Vec<Metric> {
        vec![
            Metric::new("capacity", Unit::Count, self.capacity as f64),
            Metric::new("expert_load_max", Unit::Count, self.expert_load.max),
            Metric::new("expert_load_cv", Unit::Ratio, self.expert_load.cv),
            Metric::new("rank_load_max", Unit::Count, self.rank_load.max),
            self.expert_imbalance.metric("expert_imbalance", Unit::Dimensionless),
            self.rank_imbalance.metric("rank_imbalance", Unit::Dimensionless),
            self.drop_fraction.metric("drop_fraction", Unit::Ratio),
            Metric::new("processed_slots", Unit::Count, self.processed),
            Metric::new("dropped_slots", Unit::Count, self.dropped),
            self.router_s.metric("router_time", Unit::Seconds),
            self.dispatch_s.metric("dispatch_time", Unit::Seconds),
            self.compute_s.metric("compute_time", Unit::Seconds),
            self.combine_s.metric("combine_time", Unit::Seconds),
            self.forward_s.metric("forward_time", Unit::Seconds),
            self.backward_s.metric("backward_time", Unit::Seconds),
            self.step_s.metric("step_time", Unit::Seconds),
            Metric::new("flops_per_s", Unit::FlopPerSecond, self.flops_per_s),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GpuSpec, LinkSpec};
    use std::collections::BTreeMap;

    fn cluster() -> ClusterSpec {
        ClusterSpec {
            gpu: GpuSpec {
                name: "x".into(),
                memory_bytes: 1 << 30,
                peak_flops: BTreeMap::from([(Dtype::Bf16, 1e15)]),
                hbm_bandwidth_bytes_per_s: 3e12,
                nvlink_bandwidth_bytes_per_s: 4.5e11,
                tdp_watts: 700.0,
                source: "test".into(),
                sm: None,
            },
            gpus_per_node: 8,
            nodes: 1,
            intra: LinkSpec {
                bandwidth_bytes_per_s: 4.5e11,
                latency_s: 3e-6,
            },
            inter: LinkSpec {
                bandwidth_bytes_per_s: 5e10,
                latency_s: 5e-6,
            },
        }
    }

    fn layer() -> MoeLayer {
        MoeLayer {
            tokens: 4096,
            d_model: 512,
            d_ff: 2048,
            experts: 32,
            routing: Routing::TopK(2),
            capacity_factor: 1.25,
            balance_loss: None,
            ep_ranks: 8,
            dtype: Dtype::Bf16,
            cluster: cluster(),
            router: RouterModel::Uniform,
            pad_to_capacity: false,
        }
    }

    #[test]
    fn capacity_follows_switch_eq3() {
        let l = layer();
        assert!(l.validate().is_ok());
        assert_eq!(l.capacity(), 320); // 1.25 * 2 * 4096 / 32
        let mut p = l.clone();
        p.routing = Routing::Prototypes(2);
        assert_eq!(p.capacity(), 320);
        assert_eq!(p.experts_per_group(), 16);
    }

    #[test]
    fn bad_input_names_the_field() {
        let mut l = layer();
        l.capacity_factor = 0.0;
        assert!(l.validate().unwrap_err().to_string().contains("capacity_factor"));
        let mut l = layer();
        l.routing = Routing::TopK(33);
        assert!(l.validate().unwrap_err().to_string().contains("routing.top_k"));
        let mut l = layer();
        l.routing = Routing::Prototypes(3);
        assert!(l.validate().unwrap_err().to_string().contains("routing.prototypes"));
        let mut l = layer();
        l.ep_ranks = 3;
        assert!(l.validate().unwrap_err().to_string().contains("ep_ranks"));
    }

    #[test]
    fn serde_shapes() {
        let l = layer();
        let j = serde_json::to_string(&l).unwrap();
        assert!(j.contains("\"routing\":{\"top_k\":2}"));
        let back: MoeLayer = serde_json::from_str(&j).unwrap();
        assert_eq!(back, l);
        let r: RouterModel = serde_json::from_str("{\"zipf\":{\"s\":1.0}}").unwrap();
        assert_eq!(r, RouterModel::Zipf { s: 1.0 });
    }
}
