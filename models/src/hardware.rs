//! The one hardware model every closed form calls: GEMM time with a size-dependent efficiency, memory time, and the
//! cost of collectives behind the [`Network`] capability. Dense training ([`crate::dense`]), the MoE step cost
//! ([`crate::moe::MoeCostModel`]), the roofline backends ([`crate::roofline`]) and future workloads use these
//! functions, so a calibrated [`DeviceProfile`] changes all of them the same way.
//!
//! **GEMM law** ([`GemmLaw`]; roofline of Williams, Waterman & Patterson, CACM 2009, with a saturating
//! efficiency): an operation of `F` FLOPs moving `B` bytes whose limiting dimension is `d` takes
//! `max(F / (rate * d / (d + half_dim)), B / mem_bw)` (plus a launch overhead the caller adds per kernel). `rate` is
//! the asymptotic rate of large problems, `half_dim` the dimension at which half of it is reached. The datasheet
//! constants (`rate` = 0.75 x dense peak, `half_dim` = 128, `mem_bw` = 0.9 x HBM) are in [`crate::roofline`] with
//! their sources; `trainlab calibrate` fits all three. Callers choose `d`: a dense GEMM uses `min(m, n, k)`; the MoE
//! cost model uses the row count (tokens) of its expert and router GEMMs, the convention its CPU calibration fits
//! (see [`crate::moe`]).
//!
//! **Memory law** ([`memory_time`]): `bytes / bandwidth`, bytes counted read plus written.
//!
//! **Collectives** ([`Network`]): the time of a collective over a group of ranks ([`Placement`]) and of one
//! point-to-point message. [`AlphaBetaNetwork`] answers with the hierarchical alpha-beta formulas of
//! [`crate::collectives`] over a cluster's two tiers (in particular all-to-all, whose latency term is the
//! inter-node latency once the group spans nodes); a flow-level network simulator can implement the same trait.
use serde::{Deserialize, Serialize};
use trainlab_core::workloads::{CollectiveAlgo, CollectiveOp};
use trainlab_core::{ClusterSpec, DeviceProfile, Dtype, LinkSpec};

pub use crate::collectives::Placement;

/// Efficiency factor `d / (d + half_dim)` of an operation whose limiting dimension is `d` (0 for `d <= 0`).
pub fn size_efficiency(d: f64, half_dim: f64) -> f64 {
    if d <= 0.0 {
        return 0.0;
    }
    d / (d + half_dim.max(0.0))
}

/// Time to stream `bytes` bytes at `bandwidth_bytes_per_s` (guarded against a zero bandwidth), seconds.
pub fn memory_time(bytes: f64, bandwidth_bytes_per_s: f64) -> f64 {
    bytes / bandwidth_bytes_per_s.max(1.0)
}

/// The GEMM law of one device for one data type (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmLaw {
    /// Asymptotic rate of large GEMMs, FLOP/s.
    pub rate_flops_per_s: f64,
    /// Limiting dimension at which half the asymptotic rate is reached.
    pub half_dim: f64,
    /// Sustained memory bandwidth, bytes/s.
    pub mem_bw_bytes_per_s: f64,
}

impl GemmLaw {
    /// The law of `profile` for `dtype`.
    pub fn of(profile: &DeviceProfile, dtype: Dtype) -> GemmLaw {
        GemmLaw {
            rate_flops_per_s: profile.rate(dtype),
            half_dim: profile.gemm_half_dim,
            mem_bw_bytes_per_s: profile.mem_bw_bytes_per_s,
        }
    }

    /// Compute time of `flops` FLOPs with limiting dimension `d`: `F / (rate * d / (d + half_dim))`, seconds.
    pub fn compute_time(&self, flops: f64, d: f64) -> f64 {
        if flops <= 0.0 {
            return 0.0;
        }
        flops / (self.rate_flops_per_s * size_efficiency(d, self.half_dim)).max(1.0)
    }

    /// Roofline time of `flops` FLOPs moving `bytes` bytes with limiting dimension `d`, without launch overhead.
    pub fn time(&self, flops: f64, bytes: f64, d: f64) -> f64 {
        self.compute_time(flops, d)
            .max(memory_time(bytes, self.mem_bw_bytes_per_s))
    }

    /// Time of `batch` products `[m, k] x [k, n]` with `elem_bytes`-byte elements (each operand read once, the
    /// result written once; `d = min(m, n, k)`), without launch overhead.
    pub fn matmul_time(&self, m: f64, n: f64, k: f64, batch: f64, elem_bytes: f64) -> f64 {
        let flops = 2.0 * m * n * k * batch;
        let bytes = (m * k + k * n + m * n) * elem_bytes * batch;
        self.time(flops, bytes, m.min(n).min(k))
    }
}

/// How collectives cost time: the capability dense, MoE and future workload models call for communication. The
/// alpha-beta model implements it today ([`AlphaBetaNetwork`]); a flow-level simulator can plug in behind the same
/// calls.
pub trait Network: Send + Sync {
    /// Time of `op` with algorithm `algo` on `bytes` bytes over the ranks of `group`, in the nccl-tests convention
    /// (`bytes` is each rank's full buffer), and the algorithm used (`Auto` resolves to the faster one).
    fn collective_time(
        &self,
        op: CollectiveOp,
        algo: CollectiveAlgo,
        bytes: f64,
        group: Placement,
    ) -> (f64, CollectiveAlgo);

    /// Time of one point-to-point message of `bytes` bytes between two ranks, on different nodes or not.
    fn send_time(&self, bytes: f64, cross_node: bool) -> f64;
}

/// Builds the [`Network`] of a cluster: how a backend that is given a network model other than alpha-beta (e.g. the
/// flow-level fabric simulator of `trainlab_sim::fabric_net`, chosen with `--network`) gets one per workload.
pub trait NetworkFactory: Send + Sync + std::fmt::Debug {
    /// The network of `cluster`; `seed` roots its random draws (ECMP hashes).
    fn network(
        &self,
        cluster: &ClusterSpec,
        seed: trainlab_core::Seed,
    ) -> Result<Box<dyn Network>, trainlab_core::Error>;
}

/// The alpha-beta network (Hockney 1994) of a two-tier cluster: NVLink-class links inside a node, one NIC per GPU
/// between nodes. Formulas in [`crate::collectives`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlphaBetaNetwork {
    /// Per-GPU link to peers in the same node.
    pub intra: LinkSpec,
    /// Per-GPU link to peers in other nodes.
    pub inter: LinkSpec,
}

impl AlphaBetaNetwork {
    /// The two tiers of `cluster`.
    pub fn of(cluster: &ClusterSpec) -> AlphaBetaNetwork {
        AlphaBetaNetwork {
            intra: cluster.intra,
            inter: cluster.inter,
        }
    }
}

impl Network for AlphaBetaNetwork {
    fn collective_time(
        &self,
        op: CollectiveOp,
        algo: CollectiveAlgo,
        bytes: f64,
        group: Placement,
    ) -> (f64, CollectiveAlgo) {
        crate::collectives::collective_time(op, algo, bytes, group, &self.intra, &self.inter)
    }

    fn send_time(&self, bytes: f64, cross_node: bool) -> f64 {
        let link = if cross_node { &self.inter } else { &self.intra };
        link.latency_s + bytes / link.bandwidth_bytes_per_s.max(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectives::tests::cluster;
    use proptest::prelude::*;

    fn law() -> GemmLaw {
        GemmLaw {
            rate_flops_per_s: 1e15,
            half_dim: 128.0,
            mem_bw_bytes_per_s: 3e12,
        }
    }

    #[test]
    fn half_rate_at_half_dim() {
        let l = law();
        let f = 1e12;
        assert!((l.compute_time(f, 128.0) / (f / 1e15) - 2.0).abs() < 1e-12);
        assert_eq!(l.compute_time(0.0, 128.0), 0.0);
        // d = 0 cannot run at any rate: guarded, not infinite
        assert!(l.compute_time(f, 0.0).is_finite());
        // skinny products are memory bound
        let t = l.matmul_time(65536.0, 1.0, 65536.0, 1.0, 2.0);
        assert!((t - memory_time((65536.0 * 65536.0 + 65536.0 * 2.0) * 2.0, 3e12)).abs() < 1e-15);
    }

    #[test]
    fn all_to_all_pays_inter_node_latency_across_nodes() {
        let net = AlphaBetaNetwork::of(&cluster(4));
        let s = 1024.0; // latency dominated
        let one_node = net
            .collective_time(CollectiveOp::AllToAll, CollectiveAlgo::Ring, s, Placement::packed(8, 8))
            .0;
        let four_nodes = net
            .collective_time(
                CollectiveOp::AllToAll,
                CollectiveAlgo::Ring,
                s,
                Placement::packed(32, 8),
            )
            .0;
        assert!(one_node >= 7.0 * net.intra.latency_s && one_node < 7.0 * net.intra.latency_s * 1.01);
        assert!(four_nodes >= 31.0 * net.inter.latency_s);
        assert_eq!(net.send_time(0.0, true), net.inter.latency_s);
        assert_eq!(net.send_time(0.0, false), net.intra.latency_s);
    }

    proptest! {
        /// The law is monotone: more FLOPs or bytes never take less time, a larger limiting dimension never more.
        #[test]
        fn law_is_monotone(f in 1.0f64..1e15, b in 0.0f64..1e12, d in 1.0f64..1e5, x in 1.0f64..10.0) {
            let l = law();
            prop_assert!(l.time(f * x, b, d) >= l.time(f, b, d));
            prop_assert!(l.time(f, b * x, d) >= l.time(f, b, d));
            prop_assert!(l.time(f, b, d * x) <= l.time(f, b, d));
        }
    }
}
