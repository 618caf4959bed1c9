//! Alpha-beta (Hockney 1994) model of collective operations, with the algorithms of Thakur, Rabenseifner & Gropp
//! (2005, "Optimization of collective communication operations in MPICH") and NCCL's ring and double binary tree.
//!
//! A message of `b` bytes over a tier costs `alpha + b / beta` (`alpha` = `LinkSpec::latency_s`, `beta` =
//! `LinkSpec::bandwidth_bytes_per_s`, per GPU and direction). `S` is the nccl-tests "size": the full buffer of each
//! rank (the output buffer for all-gather, the input for reduce-scatter).
//!
//! Single tier (all ranks in one node, or one rank per node):
//! - ring all-reduce: `2(n-1) (alpha + S/(n beta))` (reduce-scatter then all-gather);
//! - double binary tree all-reduce (NCCL 2.4+): `2 ceil(log2 n) alpha + 2 S / beta` (reduce up, broadcast down, each
//!   pipelined so that its bandwidth term is ~`S/beta`; the two trees each carry half the data with both directions
//!   of every link busy);
//! - ring all-gather / reduce-scatter: `(n-1) (alpha + S/(n beta))`;
//! - pairwise all-to-all: `(n-1) alpha + (n-1)/n S / beta`.
//!
//! Two tiers (`n` ranks, `g` per node, `N = ceil(n/g)` nodes; one NIC per GPU, rail-aligned), hierarchical as NCCL
//! effectively behaves on DGX-style nodes (its rings enter and leave each node once per channel, with one channel
//! per NIC, so each GPU's NIC carries `1/g` of the inter-node traffic):
//! - all-reduce = intra reduce-scatter over `g` on `S` + inter all-reduce over `N` on `S/g` (ring or tree) + intra
//!   all-gather over `g` on `S`;
//! - all-gather = inter all-gather over `N` of the `S/g` rail share + intra all-gather over `g` on `S`;
//!   reduce-scatter is its mirror image (same time);
//! - all-to-all: each GPU sends `S (n-g)/n` bytes off-node and `S (g-1)/n` on-node concurrently; the slower tier is
//!   the bottleneck: `(n-1) alpha_inter + max(S (n-g)/(n beta_inter), S (g-1)/(n beta_intra))`.
//!
//! Reported: `time`, `algbw = S / time`, `busbw = algbw * CollectiveOp::busbw_factor(n)`.
//!
//! Models call these formulas through [`crate::hardware::Network`] ([`AlphaBetaNetwork`]), never directly, so a
//! different network model can replace them in one place.
use crate::hardware::{AlphaBetaNetwork, Network};
use trainlab_core::workloads::{Collective, CollectiveAlgo, CollectiveOp, CollectiveOutcome};
use trainlab_core::{Backend, ClusterSpec, Error, Fidelity, LinkSpec, RunCtx, Workload};

fn ceil_log2(n: u64) -> f64 {
    if n <= 1 {
        0.0
    } else {
        (64 - (n - 1).leading_zeros()) as f64
    }
}

/// Ring all-reduce of `s` bytes over `n` ranks on one tier.
pub fn ring_allreduce(s: f64, n: u64, link: &LinkSpec) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let nf = n as f64;
    2.0 * (nf - 1.0) * (link.latency_s + s / (nf * link.bandwidth_bytes_per_s))
}

/// Double-binary-tree all-reduce of `s` bytes over `n` ranks on one tier.
pub fn tree_allreduce(s: f64, n: u64, link: &LinkSpec) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    2.0 * ceil_log2(n) * link.latency_s + 2.0 * s / link.bandwidth_bytes_per_s
}

/// Ring all-gather (or reduce-scatter) with total size `s` over `n` ranks on one tier.
pub fn ring_allgather(s: f64, n: u64, link: &LinkSpec) -> f64 {
    if n <= 1 {
        return 0.0;
    }
    let nf = n as f64;
    (nf - 1.0) * (link.latency_s + s / (nf * link.bandwidth_bytes_per_s))
}

/// Where the ranks of a group sit: `ranks` in all, `per_node` of them in each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Ranks in the group.
    pub ranks: u64,
    /// Ranks of the group sharing one node (1 when every rank is on its own node).
    pub per_node: u64,
}

impl Placement {
    /// Ranks packed `gpus_per_node` to a node.
    pub fn packed(ranks: u64, gpus_per_node: u64) -> Placement {
        Placement {
            ranks,
            per_node: ranks.min(gpus_per_node.max(1)).max(1),
        }
    }
    /// Nodes spanned.
    pub fn nodes(&self) -> u64 {
        self.ranks.div_ceil(self.per_node.max(1))
    }
}

/// Time of `op` with algorithm `algo` on `s` bytes over the group `at`, with tiers `intra` and `inter`.
/// Returns the time and the algorithm used (`Auto` picks the faster of ring and tree for all-reduce; the other
/// operations always use ring/pairwise and report `Ring`).
pub fn collective_time(
    op: CollectiveOp,
    algo: CollectiveAlgo,
    s: f64,
    at: Placement,
    intra: &LinkSpec,
    inter: &LinkSpec,
) -> (f64, CollectiveAlgo) {
    let n = at.ranks;
    if n <= 1 || s <= 0.0 {
        return (0.0, CollectiveAlgo::Ring);
    }
    let g = at.per_node.clamp(1, n);
    let nodes = at.nodes();
    let multi = nodes > 1;
    match op {
        CollectiveOp::AllReduce => {
            let with = |tree: bool| -> f64 {
                let one = |s: f64, n: u64, l: &LinkSpec| {
                    if tree {
                        tree_allreduce(s, n, l)
                    } else {
                        ring_allreduce(s, n, l)
                    }
                };
                if !multi {
                    one(s, n, intra)
                } else if g == 1 {
                    one(s, n, inter)
                } else {
                    2.0 * ring_allgather(s, g, intra) + one(s / g as f64, nodes, inter)
                }
            };
            match algo {
                CollectiveAlgo::Ring => (with(false), CollectiveAlgo::Ring),
                CollectiveAlgo::Tree => (with(true), CollectiveAlgo::Tree),
                CollectiveAlgo::Auto => {
                    let (r, t) = (with(false), with(true));
                    if t < r {
                        (t, CollectiveAlgo::Tree)
                    } else {
                        (r, CollectiveAlgo::Ring)
                    }
                }
            }
        }
        CollectiveOp::AllGather | CollectiveOp::ReduceScatter => {
            let t = if !multi {
                ring_allgather(s, n, intra)
            } else if g == 1 {
                ring_allgather(s, n, inter)
            } else {
                ring_allgather(s / g as f64, nodes, inter) + ring_allgather(s, g, intra)
            };
            (t, CollectiveAlgo::Ring)
        }
        CollectiveOp::AllToAll => {
            let nf = n as f64;
            let t = if !multi {
                (nf - 1.0) * intra.latency_s + (nf - 1.0) / nf * s / intra.bandwidth_bytes_per_s
            } else {
                let gf = g as f64;
                let off = s * (nf - gf) / nf / inter.bandwidth_bytes_per_s;
                let on = s * (gf - 1.0) / nf / intra.bandwidth_bytes_per_s;
                (nf - 1.0) * inter.latency_s + off.max(on)
            };
            (t, CollectiveAlgo::Ring)
        }
    }
}

/// Answers a [`Collective`] workload: ranks packed `gpus_per_node` to a node.
pub fn predict(w: &Collective) -> CollectiveOutcome {
    predict_on(w.op, w.algo, w.bytes as f64, w.ranks, &w.cluster)
}

/// Time, algbw and busbw for `op` of `bytes` over `ranks` packed GPUs of `cluster`.
pub fn predict_on(
    op: CollectiveOp,
    algo: CollectiveAlgo,
    bytes: f64,
    ranks: u64,
    cluster: &ClusterSpec,
) -> CollectiveOutcome {
    let at = Placement::packed(ranks, cluster.gpus_per_node as u64);
    let (t, _) = AlphaBetaNetwork::of(cluster).collective_time(op, algo, bytes, at);
    let algbw = if t > 0.0 { bytes / t } else { f64::INFINITY };
    CollectiveOutcome {
        time_s: t,
        algbw,
        busbw: algbw * op.busbw_factor(ranks),
    }
}

/// The alpha-beta backend for [`Collective`] workloads.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlphaBeta;

impl Backend<Collective> for AlphaBeta {
    fn name(&self) -> &str {
        "alpha_beta"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, w: &Collective, _ctx: &mut RunCtx) -> Result<CollectiveOutcome, Error> {
        w.validate()?;
        if w.algo == CollectiveAlgo::Tree && w.op != CollectiveOp::AllReduce {
            return Err(Error::invalid(
                "workload.algo",
                "tree",
                "the double binary tree is modelled for all-reduce only",
                "use algo = \"ring\" or \"auto\"",
            ));
        }
        Ok(predict(w))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::roofline::tests::h100;
    use proptest::prelude::*;

    pub(crate) fn cluster(nodes: u32) -> ClusterSpec {
        ClusterSpec {
            gpu: h100(),
            gpus_per_node: 8,
            nodes,
            intra: LinkSpec {
                bandwidth_bytes_per_s: 450e9,
                latency_s: 3e-6,
            },
            inter: LinkSpec {
                bandwidth_bytes_per_s: 50e9,
                latency_s: 10e-6,
            },
        }
    }

    #[test]
    fn large_ring_busbw_approaches_link() {
        let c = cluster(1);
        for n in [2u64, 4, 8] {
            let o = predict_on(CollectiveOp::AllReduce, CollectiveAlgo::Ring, 8e9, n, &c);
            assert!((o.busbw / 450e9 - 1.0).abs() < 0.01, "n={n} busbw={}", o.busbw);
            let o = predict_on(CollectiveOp::AllGather, CollectiveAlgo::Ring, 8e9, n, &c);
            assert!((o.busbw / 450e9 - 1.0).abs() < 0.01);
        }
        // one rank per node: the inter tier is the link
        let mut c = cluster(16);
        c.gpus_per_node = 1;
        let o = predict_on(CollectiveOp::AllReduce, CollectiveAlgo::Ring, 8e9, 16, &c);
        assert!((o.busbw / 50e9 - 1.0).abs() < 0.01);
    }

    #[test]
    fn n2_edge_cases() {
        let c = cluster(1);
        let l = c.intra;
        let s = 1e6;
        // ring all-reduce of 2: two steps of S/2
        let t = ring_allreduce(s, 2, &l);
        assert!((t - 2.0 * (l.latency_s + s / 2.0 / l.bandwidth_bytes_per_s)).abs() < 1e-15);
        // all-gather of 2: one step of S/2
        let t = ring_allgather(s, 2, &l);
        assert!((t - (l.latency_s + s / 2.0 / l.bandwidth_bytes_per_s)).abs() < 1e-15);
        // busbw factor of all-reduce at n = 2 is 1
        let o = predict_on(CollectiveOp::AllReduce, CollectiveAlgo::Ring, s, 2, &c);
        assert!((o.busbw - o.algbw).abs() < 1e-6 * o.algbw);
        // one rank: nothing to do
        assert_eq!(ring_allreduce(s, 1, &l), 0.0);
    }

    #[test]
    fn tree_wins_small_ring_wins_large() {
        let c = cluster(32);
        let n = 256;
        let small = |a| predict_on(CollectiveOp::AllReduce, a, 1024.0, n, &c).time_s;
        let large = |a| predict_on(CollectiveOp::AllReduce, a, 4e9, n, &c).time_s;
        assert!(small(CollectiveAlgo::Tree) < small(CollectiveAlgo::Ring));
        assert!(large(CollectiveAlgo::Ring) < large(CollectiveAlgo::Tree));
        let at = Placement::packed(n, 8);
        assert_eq!(
            collective_time(
                CollectiveOp::AllReduce,
                CollectiveAlgo::Auto,
                1024.0,
                at,
                &c.intra,
                &c.inter
            )
            .1,
            CollectiveAlgo::Tree
        );
    }

    #[test]
    fn multi_node_allreduce_hierarchical_busbw() {
        // 8 GPUs/node at 450 GB/s, 50 GB/s NIC per GPU: busbw ~ 2 / (2*7/8/450 + 2/8/50*(N-1)/N)*... bounded by both
        let c = cluster(16);
        let o = predict_on(CollectiveOp::AllReduce, CollectiveAlgo::Ring, 16e9, 128, &c);
        assert!(o.busbw > 50e9 && o.busbw < 450e9, "{}", o.busbw);
    }

    #[test]
    fn backend_rejects_bad() {
        let mut b = AlphaBeta;
        let mut ctx = RunCtx::new(trainlab_core::Seed(0));
        let w = Collective {
            op: CollectiveOp::AllReduce,
            algo: CollectiveAlgo::Auto,
            bytes: 1 << 20,
            ranks: 1000,
            cluster: cluster(2),
        };
        assert!(b.run(&w, &mut ctx).is_err());
        let w = Collective { ranks: 16, ..w };
        let o = b.run(&w, &mut ctx).unwrap();
        assert!(o.time_s > 0.0);
    }

    proptest! {
        #[test]
        fn busbw_never_exceeds_the_link(s in 1.0f64..1e11, n in 2u64..=8, op in 0usize..4, algo in 0usize..3) {
            let ops = [CollectiveOp::AllReduce, CollectiveOp::AllGather, CollectiveOp::ReduceScatter,
                CollectiveOp::AllToAll];
            let algos = [CollectiveAlgo::Ring, CollectiveAlgo::Tree, CollectiveAlgo::Auto];
            let c = cluster(1);
            let o = predict_on(ops[op], algos[algo], s, n, &c);
            prop_assert!(o.busbw <= c.intra.bandwidth_bytes_per_s * (1.0 + 1e-12));
            prop_assert!((o.algbw * o.time_s / s - 1.0).abs() < 1e-9);
        }

        #[test]
        fn monotone_in_size(s in 1.0f64..1e10, f in 1.01f64..4.0, n in 2u64..512, op in 0usize..4, algo in 0usize..3) {
            let ops = [CollectiveOp::AllReduce, CollectiveOp::AllGather, CollectiveOp::ReduceScatter,
                CollectiveOp::AllToAll];
            let algos = [CollectiveAlgo::Ring, CollectiveAlgo::Tree, CollectiveAlgo::Auto];
            let c = cluster(64);
            let a = predict_on(ops[op], algos[algo], s, n, &c).time_s;
            let b = predict_on(ops[op], algos[algo], s * f, n, &c).time_s;
            prop_assert!(b > a);
        }
    }
}
