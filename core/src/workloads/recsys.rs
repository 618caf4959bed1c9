//! The `recsys_step` workload: one training step of a wide-and-deep recommender on one GPU, with PICASSO's three
//! optimisations as switches (PICASSO: Zhang et al., ICDE 2022, arXiv 2204.04903; notes in
//! `shared/design/notes/c4-picasso-moe.md` §2).
//!
//! The model: groups of feature fields (each field an embedding table of `rows` x `dim` fp32 values, `ids_per_sample`
//! ids per sample drawn Zipf(`zipf_s`) over the table's rows, pooled by sum or mean), their pooled embeddings
//! concatenated into an interaction MLP of `mlp` layer widths, batch `batch`. The tables live in host memory
//! (industrial WDL tables exceed HBM); rows found in the GPU cache are read from HBM, misses are copied over PCIe.
//!
//! Switches:
//! - `packing`: fields with equal `dim` and `pooling` share one packed table and one op chain (PICASSO D-Packing);
//! - `micro_batches` and `streams`: the batch is split into micro-batches whose op chains run on `streams` CUDA
//!   streams, launched asynchronously (PICASSO data and kernel interleaving). With one stream the executor is
//!   synchronous: every op is launched, then run, then the next is launched (the per-op executor of the baseline);
//! - `cache`: a fraction of every table's rows cached on the GPU under `static_topk`, `lru` or `lfu`.
//!
//! The outcome has the same metric names from every backend: `step_time`, `samples_per_s`, `kernels`, `sm_busy`,
//! `hbm_util`, `pcie_util`, `cache_hit_rate`, and `stage.embedding`, `stage.mlp`, `stage.copy`, `stage.launch`.
//!
//! A step on the `cpu` device preset ([`CPU_DEVICE`], no SM limits) is what the measured `cpu` backend runs: there
//! `sm_busy` is the busy share of the worker threads, `hbm_util` the bytes over the step time and the preset's
//! memory bandwidth, `pcie_util` the share of the step the staging copy of missed rows runs, `stage.launch` 0.
use serde::{Deserialize, Serialize};

use crate::error::check;
use crate::{ClusterSpec, Dtype, Error, Metric, Outcome, Unit, Workload};

/// How the ids of one sample in one field are pooled into one vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Sum of the looked-up rows.
    #[default]
    Sum,
    /// Mean of the looked-up rows.
    Mean,
}

/// Which rows the GPU cache keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CachePolicy {
    /// The `k` most popular rows, fixed (an oracle of the id distribution, as a frequency-sorted warm start gives).
    #[default]
    StaticTopk,
    /// Least recently used eviction.
    Lru,
    /// Least frequently used eviction (counts of the cached rows, ties to the least recent).
    Lfu,
}

impl CachePolicy {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            CachePolicy::StaticTopk => "static_topk",
            CachePolicy::Lru => "lru",
            CachePolicy::Lfu => "lfu",
        }
    }
}

/// `count` feature fields with the same shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldGroup {
    /// Number of fields in the group (each its own table).
    pub count: u64,
    /// Rows of each table.
    pub rows: u64,
    /// Embedding dimension (fp32 values per row).
    pub dim: u64,
    /// Ids looked up per sample in each field.
    pub ids_per_sample: u64,
    /// Zipf exponent of the id popularity over the rows (0: uniform).
    #[serde(default = "d_zipf")]
    pub zipf_s: f64,
    /// Pooling of a sample's ids.
    #[serde(default)]
    pub pooling: Pooling,
}

/// The GPU cache of embedding rows.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Fraction of every table's rows cached on the GPU (0: no cache, every lookup misses; 1: the whole table).
    #[serde(default)]
    pub fraction: f64,
    /// Replacement policy.
    #[serde(default)]
    pub policy: CachePolicy,
}

/// Fixed costs per op.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overheads {
    /// Host time to launch one op (framework executor + CUDA launch), microseconds.
    #[serde(default = "d_launch")]
    pub launch_us: f64,
    /// GPU-side fixed time of one kernel (block dispatch, ramp and drain), microseconds.
    #[serde(default = "d_kernel")]
    pub kernel_us: f64,
}

impl Default for Overheads {
    fn default() -> Self {
        Overheads {
            launch_us: d_launch(),
            kernel_us: d_kernel(),
        }
    }
}

/// One training step of a wide-and-deep recommender on one GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecsysStep {
    /// Feature field groups.
    pub fields: Vec<FieldGroup>,
    /// Interaction MLP layer widths (the input is the concatenation of the pooled embeddings).
    pub mlp: Vec<u64>,
    /// Samples per step.
    pub batch: u64,
    /// The GPU (one node of one GPU; the shorthand `{ gpu = "h100-sxm", nodes = 1, gpus_per_node = 1 }`).
    pub cluster: ClusterSpec,
    /// Data type of the MLP GEMMs.
    #[serde(default = "d_dtype")]
    pub mlp_dtype: Dtype,
    /// Pack fields of equal `dim` and `pooling` into one table and one op chain.
    #[serde(default)]
    pub packing: bool,
    /// Micro-batches the batch is split into.
    #[serde(default = "d_one")]
    pub micro_batches: u64,
    /// CUDA streams (1: synchronous per-op execution).
    #[serde(default = "d_one")]
    pub streams: u64,
    /// The GPU embedding cache.
    #[serde(default)]
    pub cache: CacheSpec,
    /// Fixed per-op costs.
    #[serde(default)]
    pub overheads: Overheads,
}

fn d_zipf() -> f64 {
    1.0
}
fn d_launch() -> f64 {
    10.0
}
fn d_kernel() -> f64 {
    2.0
}
fn d_dtype() -> Dtype {
    Dtype::Bf16
}
fn d_one() -> u64 {
    1
}

/// The device preset of a step run on this machine's CPU (no SM limits, no PCIe: the `cpu` backend's workload; the
/// closed form then uses its CPU op model, `trainlab_models::recsys::cpu_closed_form`).
pub const CPU_DEVICE: &str = "cpu";

impl RecsysStep {
    /// Whether the step runs on the CPU device preset.
    pub fn on_cpu_device(&self) -> bool {
        self.cluster.gpu.name == CPU_DEVICE && self.cluster.gpu.sm.is_none()
    }
}

/// Most fields in one model.
pub const MAX_FIELDS: u64 = 4096;
/// Most rows of one table (16 G rows).
pub const MAX_ROWS: u64 = 1 << 34;
/// Largest embedding dimension and most ids per sample.
pub const MAX_DIM: u64 = 4096;
/// Largest batch.
pub const MAX_BATCH: u64 = 1 << 20;
/// Largest MLP width.
pub const MAX_WIDTH: u64 = 1 << 16;
/// Most ops (kernels and copies) one step may have, so a simulation stays within memory.
pub const MAX_OPS: u64 = 4_000_000;

impl RecsysStep {
    /// Total number of fields.
    pub fn field_count(&self) -> u64 {
        self.fields.iter().map(|g| g.count).sum()
    }

    /// Width of the MLP input: the sum of every field's dimension.
    pub fn mlp_input(&self) -> u64 {
        self.fields.iter().map(|g| g.count * g.dim).sum()
    }

    /// Rows of a table of `rows` rows held in the GPU cache.
    pub fn cached_rows(&self, rows: u64) -> u64 {
        ((self.cache.fraction * rows as f64).round() as u64).min(rows)
    }

    /// Embedding op chains of one micro-batch: one per field, or one per (dim, pooling) group when packed.
    pub fn chains(&self) -> u64 {
        if self.packing {
            let mut keys: Vec<(u64, Pooling)> = self.fields.iter().map(|g| (g.dim, g.pooling)).collect();
            keys.sort();
            keys.dedup();
            keys.len() as u64
        } else {
            self.field_count()
        }
    }
}

impl Workload for RecsysStep {
    type Outcome = RecsysOutcome;
    const KIND: &'static str = "recsys_step";
    fn validate(&self) -> Result<(), Error> {
        if self.fields.is_empty() {
            return Err(Error::invalid(
                "workload.fields",
                "[]",
                "a recommender needs at least one feature field",
                "add [[workload.fields]] tables with count, rows, dim and ids_per_sample",
            ));
        }
        for (i, g) in self.fields.iter().enumerate() {
            let f = |x: &str| format!("workload.fields[{i}].{x}");
            check::at_least(&f("count"), g.count, 1)?;
            check::at_most(&f("count"), g.count, MAX_FIELDS, "more fields than any published model")?;
            check::at_least(&f("rows"), g.rows, 1)?;
            check::at_most(&f("rows"), g.rows, MAX_ROWS, "larger than any table")?;
            check::at_least(&f("dim"), g.dim, 1)?;
            check::at_most(&f("dim"), g.dim, MAX_DIM, "wider than any embedding")?;
            check::at_least(&f("ids_per_sample"), g.ids_per_sample, 1)?;
            check::at_most(
                &f("ids_per_sample"),
                g.ids_per_sample,
                MAX_DIM,
                "longer than any id list",
            )?;
            if g.ids_per_sample > g.rows {
                return Err(Error::invalid(
                    f("ids_per_sample"),
                    g.ids_per_sample,
                    format!("more ids per sample than the table has rows ({})", g.rows),
                    format!("use at most {} ids per sample, or a larger table", g.rows),
                ));
            }
            check::non_negative_at_most(&f("zipf_s"), g.zipf_s, 4.0, "all lookups would hit one row")?;
        }
        let fields = self.field_count();
        check::at_most(
            "workload.fields",
            fields,
            MAX_FIELDS,
            "more fields than any published model",
        )?;
        if self.mlp.is_empty() {
            return Err(Error::invalid(
                "workload.mlp",
                "[]",
                "the interaction MLP needs at least one layer",
                "give layer widths, e.g. mlp = [1024, 512, 256, 1]",
            ));
        }
        check::at_most(
            "workload.mlp",
            self.mlp.len() as u64,
            64,
            "deeper than any interaction MLP",
        )?;
        for (i, w) in self.mlp.iter().enumerate() {
            let f = format!("workload.mlp[{i}]");
            check::at_least(&f, *w, 1)?;
            check::at_most(&f, *w, MAX_WIDTH, "wider than any interaction layer")?;
        }
        check::at_least("workload.batch", self.batch, 1)?;
        check::at_most("workload.batch", self.batch, MAX_BATCH, "beyond one GPU's batch")?;
        check::at_least("workload.micro_batches", self.micro_batches, 1)?;
        check::at_most(
            "workload.micro_batches",
            self.micro_batches,
            64,
            "micro-batches of a few samples",
        )?;
        if self.micro_batches > self.batch {
            return Err(Error::invalid(
                "workload.micro_batches",
                self.micro_batches,
                format!("more micro-batches than samples ({})", self.batch),
                "use at most `batch` micro-batches",
            ));
        }
        check::at_least("workload.streams", self.streams, 1)?;
        check::at_most(
            "workload.streams",
            self.streams,
            32,
            "more streams than hardware queues",
        )?;
        if !(self.cache.fraction.is_finite() && self.cache.fraction >= 0.0) {
            return Err(Error::invalid(
                "workload.cache.fraction",
                self.cache.fraction,
                "must be a finite fraction >= 0",
                "give the share of each table's rows cached on the GPU, between 0 and 1",
            ));
        }
        if self.cache.fraction > 1.0 {
            return Err(Error::invalid(
                "workload.cache.fraction",
                self.cache.fraction,
                "a cache larger than the table",
                "use at most 1 (the whole table on the GPU)",
            ));
        }
        check::positive_at_most(
            "workload.overheads.launch_us",
            self.overheads.launch_us,
            1e4,
            "10 ms per op",
        )?;
        check::non_negative_at_most(
            "workload.overheads.kernel_us",
            self.overheads.kernel_us,
            1e4,
            "10 ms per kernel",
        )?;
        let c = &self.cluster;
        if c.nodes != 1 || c.gpus_per_node != 1 {
            return Err(Error::invalid(
                "workload.cluster",
                format!("{} nodes x {} GPUs", c.nodes, c.gpus_per_node),
                "recsys_step models one GPU (multi-GPU sharding is not modelled yet)",
                "set nodes = 1 and gpus_per_node = 1",
            ));
        }
        match &c.gpu.sm {
            Some(sm) => {
                check::at_least("workload.cluster.gpu.sm.sms", sm.sms as u64, 1)?;
                check::positive("workload.cluster.gpu.sm.pcie_bytes_per_s", sm.pcie_bytes_per_s)?;
            }
            // A step on this machine's CPU (what the measured `cpu` backend runs): no SMs, no PCIe.
            None if c.gpu.name == CPU_DEVICE => {}
            None => {
                return Err(Error::invalid(
                    "workload.cluster.gpu.sm",
                    format!("\"{}\"", c.gpu.name),
                    "the GPU has no per-SM limits (SM count, registers, shared memory, PCIe)",
                    "use a GPU preset with SM limits (v100-32gb, a100-80gb, h100-sxm, h800, h200), or `cpu` for \
                     this machine's CPU",
                ));
            }
        }
        check::positive(
            "workload.cluster.gpu.hbm_bandwidth_bytes_per_s",
            c.gpu.hbm_bandwidth_bytes_per_s,
        )?;
        check::positive("workload.cluster.gpu.peak_flops", c.gpu.peak(self.mlp_dtype))?;
        // Ops per step: per micro-batch up to 5 per chain (copy, unique, gather, pool fwd; pool bwd and scatter)
        // plus 6 per MLP layer, and one optimizer kernel per layer. Bounded above by the limits checked.
        let ops = self.micro_batches * (6 * self.chains() + 6 * self.mlp.len() as u64 + 1) + self.mlp.len() as u64;
        check::at_most(
            "workload.micro_batches",
            ops,
            MAX_OPS,
            "ops per step a simulation can hold",
        )?;
        Ok(())
    }
}

/// One backend's answer for a step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecsysOutcome {
    /// Step time, seconds.
    pub step_time_s: f64,
    /// GPU kernels launched per step (copies not counted).
    pub kernels: u64,
    /// Time-average fraction of the SMs' block slots in use.
    pub sm_busy: f64,
    /// HBM bytes moved / (step time x sustained HBM bandwidth).
    pub hbm_util: f64,
    /// PCIe bytes / (step time x PCIe bandwidth).
    pub pcie_util: f64,
    /// Fraction of looked-up rows found in the GPU cache.
    pub cache_hit_rate: f64,
    /// Time embedding kernels run (busy time of the stage), seconds.
    pub stage_embedding_s: f64,
    /// Time MLP kernels run, seconds.
    pub stage_mlp_s: f64,
    /// Time PCIe copies run, seconds.
    pub stage_copy_s: f64,
    /// Host time launching ops, seconds.
    pub stage_launch_s: f64,
    /// Samples per step (to derive the throughput).
    pub batch: u64,
}

impl Outcome for RecsysOutcome {
    fn metrics(&self) -> Vec<Metric> {
        vec![
            Metric::new("step_time", Unit::Seconds, self.step_time_s),
            Metric::new(
                "samples_per_s",
                Unit::Dimensionless,
                self.batch as f64 / self.step_time_s.max(1e-300),
            ),
            Metric::new("kernels", Unit::Count, self.kernels as f64),
            Metric::new("sm_busy", Unit::Ratio, self.sm_busy),
            Metric::new("hbm_util", Unit::Ratio, self.hbm_util),
            Metric::new("pcie_util", Unit::Ratio, self.pcie_util),
            Metric::new("cache_hit_rate", Unit::Ratio, self.cache_hit_rate),
            Metric::new("stage.embedding", Unit::Seconds, self.stage_embedding_s),
            Metric::new("stage.mlp", Unit::Seconds, self.stage_mlp_s),
            Metric::new("stage.copy", Unit::Seconds, self.stage_copy_s),
            Metric::new("stage.launch", Unit::Seconds, self.stage_launch_s),
        ]
    }
}
