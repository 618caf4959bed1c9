//! A collective operation over `ranks` GPUs, reported in the nccl-tests convention (algbw, busbw).
use crate::error::check;
use crate::{ClusterSpec, Error, Metric, Outcome, Unit, Workload};
use serde::{Deserialize, Serialize};

/// Collective operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectiveOp {
    /// All-reduce.
    AllReduce,
    /// All-gather.
    AllGather,
    /// Reduce-scatter.
    ReduceScatter,
    /// All-to-all.
    AllToAll,
}

impl CollectiveOp {
    /// nccl-tests bus-bandwidth factor: busbw = algbw * factor(n).
    pub fn busbw_factor(self, n: u64) -> f64 {
        let n = n as f64;
        match self {
            CollectiveOp::AllReduce => 2.0 * (n - 1.0) / n,
            CollectiveOp::AllGather | CollectiveOp::ReduceScatter | CollectiveOp::AllToAll => (n - 1.0) / n,
        }
    }
}

/// Algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CollectiveAlgo {
    /// Ring.
    Ring,
    /// Double binary tree (all-reduce only).
    Tree,
    /// The faster of the two for this size.
    #[default]
    Auto,
}

/// A collective of `bytes` (the nccl-tests "size": the full buffer of each rank) over `ranks` GPUs placed
/// `cluster.gpus_per_node` to a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Collective {
    /// Operation.
    pub op: CollectiveOp,
    /// Algorithm.
    #[serde(default)]
    pub algo: CollectiveAlgo,
    /// Buffer size per rank, bytes.
    pub bytes: u64,
    /// Participating GPUs.
    pub ranks: u64,
    /// The cluster (its tiers give alpha and beta).
    pub cluster: ClusterSpec,
}

/// The answer for a collective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectiveOutcome {
    /// Completion time, seconds.
    pub time_s: f64,
    /// Algorithm bandwidth = bytes / time.
    pub algbw: f64,
    /// Bus bandwidth = algbw * the op's factor.
    pub busbw: f64,
}

impl Outcome for CollectiveOutcome {
    fn metrics(&self) -> Vec<Metric> {
        vec![
            Metric::new("time", Unit::Seconds, self.time_s),
            Metric::new("algbw", Unit::BytesPerSecond, self.algbw),
            Metric::new("busbw", Unit::BytesPerSecond, self.busbw),
        ]
    }
}

impl Workload for Collective {
    type Outcome = CollectiveOutcome;
    const KIND: &'static str = "collective";
    fn validate(&self) -> Result<(), Error> {
        check::at_least("workload.ranks", self.ranks, 2)?;
        check::at_least("workload.bytes", self.bytes, 1)?;
        self.cluster.validate("workload.cluster")?;
        if self.ranks > self.cluster.gpus() {
            return Err(Error::invalid(
                "workload.ranks",
                self.ranks,
                format!("the cluster has only {} GPUs", self.cluster.gpus()),
                "lower ranks or add nodes",
            ));
        }
        Ok(())
    }
}
