//! Dense transformer training: a model, a cluster, a batch and a token budget; optionally a fixed parallel layout.
use crate::error::check;
use crate::{ClusterSpec, Dtype, Error, Metric, Outcome, Unit, Workload};
use serde::{Deserialize, Serialize};

/// A decoder-only transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerSpec {
    /// Label, e.g. `llama2-70b`.
    pub name: String,
    /// Transformer layers.
    pub layers: u64,
    /// Model (hidden) width.
    pub hidden: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads (grouped-query attention); equal to `heads` for multi-head attention.
    #[serde(default)]
    pub kv_heads: Option<u64>,
    /// FFN inner width.
    pub ffn_hidden: u64,
    /// Gated FFN (SwiGLU: three weight matrices) instead of two.
    #[serde(default = "yes")]
    pub gated_ffn: bool,
    /// Vocabulary size.
    pub vocab: u64,
    /// Sequence length in tokens.
    pub seq_len: u64,
}

fn yes() -> bool {
    true
}

impl TransformerSpec {
    /// KV heads (defaults to `heads`).
    pub fn kv(&self) -> u64 {
        self.kv_heads.unwrap_or(self.heads)
    }
    /// Parameters of one layer (attention + FFN + 2 norms).
    pub fn layer_params(&self) -> f64 {
        let h = self.hidden as f64;
        let head_dim = h / self.heads as f64;
        let kv = 2.0 * h * head_dim * self.kv() as f64;
        let attn = 2.0 * h * h + kv;
        let ffn = if self.gated_ffn { 3.0 } else { 2.0 } * h * self.ffn_hidden as f64;
        attn + ffn + 2.0 * h
    }
    /// Total parameters (untied input and output embeddings).
    pub fn params(&self) -> f64 {
        self.layers as f64 * self.layer_params() + 2.0 * (self.vocab * self.hidden) as f64
    }
    /// Training FLOPs per token, forward + backward (3x forward), including attention scores.
    /// Forward per token: 2 * (non-embedding params + output head) + 2 * 2 * layers * seq * hidden (QK^T and AV,
    /// causal masking not credited, the convention of the MFU definition in PaLM, App. B).
    pub fn train_flops_per_token(&self) -> f64 {
        let dense = self.layers as f64 * self.layer_params() + (self.vocab * self.hidden) as f64;
        let attn = 2.0 * self.layers as f64 * self.seq_len as f64 * self.hidden as f64;
        3.0 * (2.0 * dense + 2.0 * attn)
    }
}

/// Activation recomputation policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Recompute {
    /// Keep all activations.
    #[default]
    None,
    /// Recompute attention scores only (Korthikanti et al. 2022).
    Selective,
    /// Recompute the whole layer in the backward pass.
    Full,
}

impl Recompute {
    /// 0 = none, 1 = selective, 2 = full (how it appears in records).
    pub fn level(self) -> u8 {
        match self {
            Recompute::None => 0,
            Recompute::Selective => 1,
            Recompute::Full => 2,
        }
    }
    /// Inverse of [`Recompute::level`].
    pub fn from_level(level: u8) -> Option<Recompute> {
        match level {
            0 => Some(Recompute::None),
            1 => Some(Recompute::Selective),
            2 => Some(Recompute::Full),
            _ => None,
        }
    }
}

/// A parallel layout: tensor x pipeline x data parallelism, micro-batch size and recomputation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(deny_unknown_fields)]
pub struct ParallelConfig {
    /// Tensor-parallel degree (within a node).
    pub tp: u64,
    /// Pipeline stages.
    pub pp: u64,
    /// Data-parallel replicas.
    pub dp: u64,
    /// Sequences per micro-batch.
    pub micro_batch: u64,
    /// Recomputation policy.
    #[serde(default)]
    pub recompute: Recompute,
    /// Shard optimizer state across data-parallel ranks (ZeRO-1 / distributed optimizer).
    #[serde(default = "yes")]
    pub zero1: bool,
}

impl ParallelConfig {
    /// Label like `tp8-pp4-dp32-mb1-sel`.
    pub fn label(&self) -> String {
        let r = match self.recompute {
            Recompute::None => "none",
            Recompute::Selective => "sel",
            Recompute::Full => "full",
        };
        format!("tp{}-pp{}-dp{}-mb{}-{r}", self.tp, self.pp, self.dp, self.micro_batch)
    }
}

/// Train `model` on `cluster` for `train_tokens` tokens with `global_batch_tokens` tokens per step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseTraining {
    /// The model.
    pub model: TransformerSpec,
    /// The cluster; all its GPUs are used.
    pub cluster: ClusterSpec,
    /// Tokens per optimizer step.
    pub global_batch_tokens: u64,
    /// Total training tokens.
    pub train_tokens: f64,
    /// Compute data type.
    #[serde(default = "bf16")]
    pub dtype: Dtype,
    /// A fixed layout; `None` searches for the fastest that fits.
    #[serde(default)]
    pub parallel: Option<ParallelConfig>,
    /// Overlap data-parallel gradient communication with the backward pass.
    #[serde(default = "yes")]
    pub overlap_comm: bool,
}

fn bf16() -> Dtype {
    Dtype::Bf16
}

impl Workload for DenseTraining {
    type Outcome = DenseOutcome;
    const KIND: &'static str = "dense_training";
    fn validate(&self) -> Result<(), Error> {
        let m = &self.model;
        check::at_least("workload.model.layers", m.layers, 1)?;
        check::at_least("workload.model.hidden", m.hidden, 1)?;
        check::at_least("workload.model.heads", m.heads, 1)?;
        check::at_least("workload.model.ffn_hidden", m.ffn_hidden, 1)?;
        check::at_least("workload.model.vocab", m.vocab, 1)?;
        check::at_least("workload.model.seq_len", m.seq_len, 1)?;
        if !m.hidden.is_multiple_of(m.heads) {
            return Err(Error::invalid(
                "workload.model.heads",
                m.heads,
                format!("does not divide hidden = {}", m.hidden),
                "choose heads dividing hidden",
            ));
        }
        if let Some(kv) = m.kv_heads
            && (kv == 0 || !m.heads.is_multiple_of(kv))
        {
            return Err(Error::invalid(
                "workload.model.kv_heads",
                kv,
                "must divide heads",
                "choose kv_heads dividing heads",
            ));
        }
        self.cluster.validate("workload.cluster")?;
        check::positive("workload.train_tokens", self.train_tokens)?;
        check::at_least("workload.global_batch_tokens", self.global_batch_tokens, m.seq_len)?;
        if let Some(p) = &self.parallel {
            check::at_least("workload.parallel.tp", p.tp, 1)?;
            check::at_least("workload.parallel.pp", p.pp, 1)?;
            check::at_least("workload.parallel.dp", p.dp, 1)?;
            check::at_least("workload.parallel.micro_batch", p.micro_batch, 1)?;
            let used = p.tp * p.pp * p.dp;
            if used != self.cluster.gpus() {
                return Err(Error::invalid(
                    "workload.parallel",
                    p.label(),
                    format!("tp*pp*dp = {used} but the cluster has {} GPUs", self.cluster.gpus()),
                    "make tp*pp*dp equal nodes*gpus_per_node",
                ));
            }
        }
        Ok(())
    }
}

/// The answer for dense training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseOutcome {
    /// The layout the answer is for.
    pub config: ParallelConfig,
    /// Seconds per optimizer step.
    pub step_time_s: f64,
    /// Model FLOPs utilisation (model FLOPs / (time * GPUs * peak)).
    pub mfu: f64,
    /// Peak memory per GPU, bytes.
    pub memory_per_gpu_bytes: f64,
    /// Training throughput, tokens/s.
    pub tokens_per_s: f64,
    /// Wall-clock days for the token budget.
    pub train_days: f64,
    /// GPU-hours for the token budget.
    pub gpu_hours: f64,
    /// Fraction of the step in the pipeline bubble.
    pub bubble_fraction: f64,
    /// Communication time not hidden behind compute, seconds per step.
    pub exposed_comm_s: f64,
}

impl Outcome for DenseOutcome {
    fn metrics(&self) -> Vec<Metric> {
        vec![
            Metric::new("step_time", Unit::Seconds, self.step_time_s),
            Metric::new("mfu", Unit::Ratio, self.mfu),
            Metric::new("memory_per_gpu", Unit::Bytes, self.memory_per_gpu_bytes),
            Metric::new("tokens_per_s", Unit::TokensPerSecond, self.tokens_per_s),
            Metric::new("train_days", Unit::Days, self.train_days),
            Metric::new("gpu_hours", Unit::GpuHours, self.gpu_hours),
            Metric::new("bubble_fraction", Unit::Ratio, self.bubble_fraction),
            Metric::new("exposed_comm", Unit::Seconds, self.exposed_comm_s),
            Metric::new("tp", Unit::Choice, self.config.tp as f64),
            Metric::new("pp", Unit::Choice, self.config.pp as f64),
            Metric::new("dp", Unit::Choice, self.config.dp as f64),
            Metric::new("micro_batch", Unit::Choice, self.config.micro_batch as f64),
            Metric::new("recompute_level", Unit::Choice, self.config.recompute.level() as f64),
        ]
    }
}
