//! Dense transformer training: a model, a cluster, a batch and a token budget; optionally a fixed parallel layout.
use super::training_job::{CheckpointInterval, CheckpointRule, DetectionSpec, FailureSpec, Policy, TrainingJob};
use crate::error::check;
use crate::{ClusterSpec, Dtype, Error, Metric, Outcome, Unit, Workload};
use serde::{Deserialize, Serialize};

/// A decoder-only transformer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawTransformerSpec")]
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
    /// Gated FFN (SwiGLU, as in Llama: three weight matrices) or a plain one (GELU, as in GPT and Megatron: two).
    /// Required: there is no default, because either guess silently changes the parameter count by a third of the
    /// FFN.
    pub gated_ffn: bool,
    /// Vocabulary size.
    pub vocab: u64,
    /// Sequence length in tokens.
    pub seq_len: u64,
}

/// [`TransformerSpec`] as written in a scenario: the same fields, `gated_ffn` optional only so that leaving it out
/// gives a message that says what to write.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransformerSpec {
    name: String,
    layers: u64,
    hidden: u64,
    heads: u64,
    #[serde(default)]
    kv_heads: Option<u64>,
    ffn_hidden: u64,
    gated_ffn: Option<bool>,
    vocab: u64,
    seq_len: u64,
}

impl TryFrom<RawTransformerSpec> for TransformerSpec {
    type Error = String;
    fn try_from(r: RawTransformerSpec) -> Result<Self, String> {
        let gated_ffn = r.gated_ffn.ok_or_else(|| {
            format!(
                "missing field `gated_ffn` in model `{}`: add gated_ffn = true for a SwiGLU FFN (Llama) or \
                 gated_ffn = false for a plain GELU FFN (GPT, Megatron); there is no default",
                r.name
            )
        })?;
        Ok(TransformerSpec {
            name: r.name,
            layers: r.layers,
            hidden: r.hidden,
            heads: r.heads,
            kv_heads: r.kv_heads,
            ffn_hidden: r.ffn_hidden,
            gated_ffn,
            vocab: r.vocab,
            seq_len: r.seq_len,
        })
    }
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
    /// Failures, detection and recovery of the run: with it, every answer also gives the expected effective training
    /// time ratio and the days and GPU-hours including downtime (the `training_job` closed form of the same run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime: Option<Downtime>,
}

/// What a training run loses to failures: the failure model, detection policies and recovery costs of a
/// `training_job`, applied to a dense run's GPUs and step time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Downtime {
    /// Failure rates per component class (e.g. the Llama 3 Table 5 rates of `scenarios/llama3-405b.toml`).
    pub failures: Vec<FailureSpec>,
    /// Detection policies to answer for (`baseline`, `c4d`).
    pub policies: Vec<Policy>,
    /// Seconds one checkpoint write blocks training (checkpoints at the Young/Daly interval).
    pub checkpoint_cost_s: f64,
    /// Seconds from isolation until training resumes.
    pub restart_cost_s: f64,
    /// Detection timings.
    #[serde(default)]
    pub detection: DetectionSpec,
}

impl Downtime {
    /// The `training_job` of a run on `gpus` GPUs (`gpus_per_node` each node) with steps of `step_time_s`, over
    /// `horizon_days` of training.
    pub fn job(&self, gpus: u64, gpus_per_node: u64, step_time_s: f64, horizon_days: f64) -> TrainingJob {
        TrainingJob {
            gpus,
            gpus_per_node,
            step_time_s,
            horizon_days,
            checkpoint_interval: CheckpointInterval::Rule(CheckpointRule::YoungDaly),
            checkpoint_cost_s: self.checkpoint_cost_s,
            restart_cost_s: self.restart_cost_s,
            spare_nodes: None,
            repair_hours: super::training_job::default_repair_hours(),
            failures: self.failures.clone(),
            lemon: None,
            policies: self.policies.clone(),
            detection: self.detection.clone(),
            replications: super::training_job::default_replications(),
            schedule: None,
        }
    }

    /// Checks the failure model and costs as a job of `gpus` GPUs would (field paths under `path`).
    pub fn validate_at(&self, path: &str, gpus: u64, gpus_per_node: u64) -> Result<(), Error> {
        self.job(gpus, gpus_per_node, 1.0, 1.0)
            .validate()
            .map_err(|e| e.map_field(|f| f.replacen("workload", path, 1)))
    }
}

fn bf16() -> Dtype {
    Dtype::Bf16
}

impl Workload for DenseTraining {
    type Outcome = DenseOutcome;
    const KIND: &'static str = "dense_training";
    fn validate(&self) -> Result<(), Error> {
        let m = &self.model;
        // Sizes first, each on its own (so an absurd value is named, not a relation it breaks). The limits lie
        // far beyond any published model and keep every product the step model forms in `u64` exact.
        let size = "far beyond any published model; larger sizes overflow the step model's arithmetic";
        check::at_least("workload.model.layers", m.layers, 1)?;
        check::at_most("workload.model.layers", m.layers, MAX_LAYERS, size)?;
        check::at_least("workload.model.hidden", m.hidden, 1)?;
        check::at_most("workload.model.hidden", m.hidden, MAX_HIDDEN, size)?;
        check::at_least("workload.model.heads", m.heads, 1)?;
        check::at_least("workload.model.ffn_hidden", m.ffn_hidden, 1)?;
        check::at_most("workload.model.ffn_hidden", m.ffn_hidden, MAX_FFN_HIDDEN, size)?;
        check::at_least("workload.model.vocab", m.vocab, 1)?;
        check::at_most("workload.model.vocab", m.vocab, MAX_VOCAB, size)?;
        check::at_least("workload.model.seq_len", m.seq_len, 1)?;
        check::at_most("workload.model.seq_len", m.seq_len, MAX_SEQ_LEN, size)?;
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
        let gpus = self.cluster.gpus();
        if gpus > MAX_GPUS {
            let (field, value) = if self.cluster.gpus_per_node as u64 > MAX_GPUS {
                ("workload.cluster.gpus_per_node", self.cluster.gpus_per_node)
            } else {
                ("workload.cluster.nodes", self.cluster.nodes)
            };
            return Err(Error::invalid(
                field,
                value,
                format!("the cluster would have {gpus} GPUs, more than {MAX_GPUS}"),
                "use fewer nodes or GPUs per node",
            ));
        }
        check::positive_at_most(
            "workload.train_tokens",
            self.train_tokens,
            MAX_TRAIN_TOKENS,
            "far beyond any published token budget",
        )?;
        check::at_least("workload.global_batch_tokens", self.global_batch_tokens, m.seq_len)?;
        let sequences = self.global_batch_tokens / m.seq_len;
        if sequences > MAX_SEQUENCES {
            return Err(Error::invalid(
                "workload.global_batch_tokens",
                self.global_batch_tokens,
                format!(
                    "{sequences} sequences of {} tokens per step, more than {MAX_SEQUENCES} (the pipeline simulator \
                     replays every micro-batch)",
                    m.seq_len
                ),
                "give the tokens of one optimizer step",
            ));
        }
        if let Some(p) = &self.parallel {
            for (name, v) in [("tp", p.tp), ("pp", p.pp), ("dp", p.dp)] {
                let field = format!("workload.parallel.{name}");
                check::at_least(&field, v, 1)?;
                check::at_most(&field, v, gpus, "the cluster has no more GPUs")?;
            }
            check::at_least("workload.parallel.micro_batch", p.micro_batch, 1)?;
            check::at_most(
                "workload.parallel.micro_batch",
                p.micro_batch,
                sequences,
                "the global batch has no more sequences",
            )?;
            // Each factor is at most MAX_GPUS (2^20), so the product cannot overflow.
            let used = p.tp * p.pp * p.dp;
            if used != gpus {
                return Err(Error::invalid(
                    "workload.parallel",
                    p.label(),
                    format!("tp*pp*dp = {used} but the cluster has {gpus} GPUs"),
                    "make tp*pp*dp equal nodes*gpus_per_node",
                ));
            }
        }
        if let Some(d) = &self.downtime {
            d.validate_at("workload.downtime", gpus, u64::from(self.cluster.gpus_per_node))?;
        }
        Ok(())
    }
}

/// Most transformer layers: 2^14 (DeepNet, Wang et al. 2022, trained 1,000; published LLMs have a few hundred).
const MAX_LAYERS: u64 = 1 << 14;
/// Widest model (`hidden`): 2^20, some 50x PaLM 540B's 18,432 (Chowdhery et al. 2022, Table 1).
const MAX_HIDDEN: u64 = 1 << 20;
/// Widest FFN inner layer: 2^22.
const MAX_FFN_HIDDEN: u64 = 1 << 22;
/// Largest vocabulary: 2^24 tokens.
const MAX_VOCAB: u64 = 1 << 24;
/// Longest sequence: 2^24 tokens.
const MAX_SEQ_LEN: u64 = 1 << 24;
/// Most sequences per optimizer step: 2^20, 16x the 65,536 of LAMB's BERT runs (You et al. 2019).
const MAX_SEQUENCES: u64 = 1 << 20;
/// Most GPUs in a cluster: 2^20.
const MAX_GPUS: u64 = 1 << 20;
/// Largest token budget: 1e18 tokens, some 60,000x Llama 3's 15.6T (Dubey et al. 2024).
const MAX_TRAIN_TOKENS: f64 = 1e18;

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
    /// With a `downtime` model: per policy, the expected ETTR (useful / wall time) of the run.
    #[serde(default)]
    pub ettr: Vec<(Policy, f64)>,
    /// With a `downtime` model: per policy, a 95% interval `(low, high)` of the ETTR (the Poisson spread of the
    /// fault count over the run), in the order of `ettr`.
    #[serde(default)]
    pub ettr_ci: Vec<(Policy, f64, f64)>,
    /// Where the step time goes, as shares of it (None where the backend does not split it).
    #[serde(default)]
    pub split: Option<StepSplit>,
    /// Peak memory per GPU over the GPU's memory.
    #[serde(default)]
    pub memory_fraction: f64,
}

/// A partition of one step's time into its causes, each a share of the step (they sum to 1): the compute of every
/// micro-batch, the pipeline bubble, tensor-parallel and pipeline point-to-point communication that is not hidden,
/// the data-parallel gradient reduction not hidden behind the backward pass, and the optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepSplit {
    /// Forward and backward compute (including recomputation).
    pub compute: f64,
    /// Idle stage time in the pipeline fill and drain.
    pub bubble: f64,
    /// Tensor-parallel collectives.
    pub tp_comm: f64,
    /// Pipeline sends and receives.
    pub pp_comm: f64,
    /// Data-parallel gradient reduction not overlapped with the backward pass.
    pub dp_comm: f64,
    /// The optimizer step.
    pub optimizer: f64,
}

impl StepSplit {
    /// The shares with their names, in a fixed order.
    pub fn named(&self) -> [(&'static str, f64); 6] {
        [
            ("compute", self.compute),
            ("bubble", self.bubble),
            ("tp_comm", self.tp_comm),
            ("pp_comm", self.pp_comm),
            ("dp_comm", self.dp_comm),
            ("optimizer", self.optimizer),
        ]
    }
}

impl Outcome for DenseOutcome {
    fn metrics(&self) -> Vec<Metric> {
        let mut out = vec![
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
        ];
        if let Some(split) = &self.split {
            for (name, share) in split.named() {
                out.push(Metric::new(format!("step_share.{name}"), Unit::Ratio, share));
            }
        }
        if self.memory_fraction > 0.0 {
            out.push(Metric::new("memory_fraction", Unit::Ratio, self.memory_fraction));
        }
        // Days and GPU-hours including expected downtime: the failure-free figures over the ETTR, with the 95%
        // interval of the ETTR where the backend gives one.
        for (p, e) in &self.ettr {
            let ci = self.ettr_ci.iter().find(|(q, _, _)| q == p).map(|&(_, l, h)| (l, h));
            let p = p.as_str();
            let with = |name: String, unit: Unit, v: f64| match ci {
                Some((l, h)) if name.starts_with("ettr") => Metric::with_ci(name, unit, v, l, h),
                // Over the ETTR: a higher ETTR gives fewer days.
                Some((l, h)) => Metric::with_ci(name, unit, v, v * e / h, v * e / l),
                None => Metric::new(name, unit, v),
            };
            out.push(with(format!("ettr.{p}"), Unit::Ratio, *e));
            out.push(with(format!("days_with_downtime.{p}"), Unit::Days, self.train_days / e));
            out.push(with(
                format!("gpu_hours_with_downtime.{p}"),
                Unit::GpuHours,
                self.gpu_hours / e,
            ));
        }
        out
    }
}
