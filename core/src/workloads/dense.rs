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
    /// Checks the relations between the head counts (sizes are each caller's own limits): `heads` divides
    /// `hidden`, `kv_heads` divides `heads`. Field paths are under `path` (e.g. `workload.model`).
    pub fn check_heads(&self, path: &str) -> Result<(), Error> {
        if !self.hidden.is_multiple_of(self.heads) {
            return Err(Error::invalid(
                format!("{path}.heads"),
                self.heads,
                format!("does not divide hidden = {}", self.hidden),
                "choose heads dividing hidden",
            ));
        }
        if let Some(kv) = self.kv_heads
            && (kv == 0 || !self.heads.is_multiple_of(kv))
        {
            return Err(Error::invalid(
                format!("{path}.kv_heads"),
                kv,
                "must divide heads",
                "choose kv_heads dividing heads",
            ));
        }
        Ok(())
    }
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

/// How the tokens of an MoE layer choose their experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum MoeRouting {
    /// Top-k over all experts (GShard, Switch with k = 1, Mixtral with k = 2).
    TopK,
    /// M6-T expert prototyping: `top_k` groups of `experts / top_k` experts, top-1 in each ("k top-1").
    #[serde(rename = "k_top_1")]
    KTop1,
}

/// The mixture-of-experts part of a transformer: every `every`-th layer's FFN is replaced by `experts` FFNs of the
/// model's FFN shape (`ffn_hidden`, `gated_ffn`) behind a router. Every field is required: each one changes the
/// model (no silent variant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeSpec {
    /// Experts per MoE layer.
    pub experts: u64,
    /// An MoE FFN every `every` layers (1: every layer, as in Mixtral; 2: every other one, as in Switch). A stage of
    /// `n` layers holds `ceil(n / every)` MoE layers (stage-local layers 0, every, 2 every, ...).
    pub every: u64,
    /// Experts per token (`k`).
    pub top_k: u64,
    /// `top_k` over all experts, or `k_top_1` prototypes.
    pub routing: MoeRouting,
    /// Capacity factor `gamma`: an expert takes at most `ceil(gamma k N / E)` of the `N` tokens of its
    /// expert-parallel group's micro-batch (Switch Eq. 3); the rest are dropped (they pass on the residual).
    pub capacity_factor: f64,
    /// Run every expert on `capacity` rows and send capacity-sized all-to-all buffers (static shapes, as GShard and
    /// Switch on TPUs), instead of the actual loads.
    pub pad_to_capacity: bool,
    /// Router skew: Zipf exponent `s` of the expert popularity (`p_i ∝ 1/i^s` over a random permutation of the
    /// experts, the meaning of `router = { zipf = { s } }` in `moe_layer`); 0 is a perfectly balanced router.
    pub router_skew: f64,
}

/// Largest capacity factor (as `moe_layer`).
const MAX_MOE_CAPACITY_FACTOR: f64 = 1e4;
/// Most experts per MoE layer (as `moe_layer`).
const MAX_MOE_EXPERTS: u64 = 1 << 20;

impl MoeSpec {
    /// Routing groups: 1 for top-k, `top_k` for prototypes.
    pub fn groups(&self) -> u64 {
        match self.routing {
            MoeRouting::TopK => 1,
            MoeRouting::KTop1 => self.top_k,
        }
    }
    /// MoE layers among `layers` consecutive layers of one stage (`ceil(layers / every)`).
    pub fn layers_in(&self, layers: u64) -> u64 {
        layers.div_ceil(self.every.max(1))
    }
    /// Checks the section, field paths under `path` (e.g. `workload.moe`), for a model of `layers` layers.
    pub fn check(&self, path: &str, layers: u64) -> Result<(), Error> {
        check::at_least(&format!("{path}.experts"), self.experts, 1)?;
        check::at_most(
            &format!("{path}.experts"),
            self.experts,
            MAX_MOE_EXPERTS,
            "the most experts published in one layer (He 2024, a million experts)",
        )?;
        check::at_least(&format!("{path}.every"), self.every, 1)?;
        check::at_most(
            &format!("{path}.every"),
            self.every,
            layers,
            "the model has no more layers",
        )?;
        check::at_least(&format!("{path}.top_k"), self.top_k, 1)?;
        if self.top_k > self.experts {
            return Err(Error::invalid(
                format!("{path}.top_k"),
                self.top_k,
                format!("more experts per token than the {} experts", self.experts),
                "choose top_k <= experts",
            ));
        }
        if self.routing == MoeRouting::KTop1 && !self.experts.is_multiple_of(self.top_k) {
            return Err(Error::invalid(
                format!("{path}.top_k"),
                self.top_k,
                format!(
                    "{} experts cannot be split into {} equal prototype groups",
                    self.experts, self.top_k
                ),
                "choose top_k dividing experts, or routing = \"top_k\"",
            ));
        }
        if !(self.capacity_factor.is_finite() && self.capacity_factor > 0.0) {
            return Err(Error::invalid(
                format!("{path}.capacity_factor"),
                self.capacity_factor,
                "must be a finite number > 0 (0 would drop every token)",
                "use e.g. 1.0, 1.25 or 2.0",
            ));
        }
        check::positive_at_most(
            &format!("{path}.capacity_factor"),
            self.capacity_factor,
            MAX_MOE_CAPACITY_FACTOR,
            "above the number of experts nothing changes",
        )?;
        if !(self.router_skew.is_finite() && self.router_skew >= 0.0 && self.router_skew <= 100.0) {
            return Err(Error::invalid(
                format!("{path}.router_skew"),
                self.router_skew,
                "must be a Zipf exponent in [0, 100]",
                "use 0 for a balanced router, e.g. 0.5 or 1 for a skewed one",
            ));
        }
        Ok(())
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

/// Pipeline schedule of the micro-batches within a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, Hash)]
#[serde(rename_all = "snake_case")]
pub enum PipelineSchedule {
    /// PipeDream-Flush / 1F1B (Narayanan et al. SC'21, sec. 2.2.1); interleaved when `virtual_stages > 1`
    /// (sec. 2.2.2). Stage `s` holds at most `p - s` micro-batches' activations.
    #[default]
    #[serde(rename = "1f1b")]
    OneFOneB,
    /// GPipe (Huang et al. 2019): all forwards, then all backwards; every micro-batch's activations are held.
    Gpipe,
}

/// A parallel layout: tensor x context x pipeline x data parallelism, micro-batch size, recomputation and the
/// schedule. Every field after `micro_batch` has a default that is the plain Megatron-LM layout (no context
/// parallelism, plain 1F1B, sequence parallelism on, distributed optimizer), none of them a model variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(deny_unknown_fields)]
pub struct ParallelConfig {
    /// Tensor-parallel degree (within a node).
    pub tp: u64,
    /// Pipeline stages. Need not divide the layers: stages then differ by one layer and the slowest sets the pace.
    pub pp: u64,
    /// Data-parallel replicas.
    pub dp: u64,
    /// Sequences per micro-batch.
    pub micro_batch: u64,
    /// Recomputation policy.
    #[serde(default)]
    pub recompute: Recompute,
    /// Context-parallel degree (ring attention: each rank holds `seq_len / cp` tokens of every sequence and passes
    /// its keys and values around the ring). Must divide `seq_len`. GPUs = tp * cp * pp * dp.
    #[serde(default = "one")]
    pub cp: u64,
    /// Model chunks per pipeline stage (interleaved 1F1B, Narayanan et al. SC'21 sec. 2.2.2): the bubble is divided
    /// by it, pipeline point-to-point traffic multiplied by it. 1 = plain 1F1B.
    #[serde(default = "one")]
    pub virtual_stages: u64,
    /// Sequence parallelism (Korthikanti et al. 2022): norms and dropout split over the tensor-parallel ranks
    /// along the sequence, all-reduces become reduce-scatter + all-gather (same bytes). Only matters when tp > 1.
    #[serde(default = "yes")]
    pub sequence_parallel: bool,
    /// ZeRO stage over the data-parallel (x context-parallel) ranks: 0 none, 1 optimizer states (Megatron's
    /// distributed optimizer), 2 + gradients, 3 + parameters (FSDP), which are all-gathered for every forward and
    /// backward.
    #[serde(default = "one_u8")]
    pub zero_stage: u8,
    /// Layers taken off each of the first and the last pipeline stage (which also carry the embedding and the LM
    /// head) and spread over the others: Llama 3 405B removed one from each (Dubey et al. 2024, sec. 3.3.2).
    #[serde(default)]
    pub trim_end_stages: u64,
    /// The pipeline schedule.
    #[serde(default)]
    pub schedule: PipelineSchedule,
    /// Expert-parallel size (MoE models only): the experts of every MoE layer are split over `ep` of the
    /// data-parallel ranks (the EP group is carved out of the DP group, as in Megatron-Core and DeepSpeed-MoE), which
    /// exchange tokens by all-to-all. Must divide `dp` and the number of experts. 1 = every rank holds every expert.
    #[serde(default = "one")]
    pub ep: u64,
}

fn one() -> u64 {
    1
}
fn one_u8() -> u8 {
    1
}

impl ParallelConfig {
    /// A plain layout: no context parallelism, plain 1F1B, sequence parallelism, ZeRO-1, even stages.
    pub fn new(tp: u64, pp: u64, dp: u64, micro_batch: u64, recompute: Recompute) -> ParallelConfig {
        ParallelConfig {
            tp,
            pp,
            dp,
            micro_batch,
            recompute,
            cp: 1,
            virtual_stages: 1,
            sequence_parallel: true,
            zero_stage: 1,
            trim_end_stages: 0,
            schedule: PipelineSchedule::OneFOneB,
            ep: 1,
        }
    }

    /// Label like `tp8-pp4-dp32-mb1-sel`, with `-cp2`, `-v3`, `-nosp`, `-z3`, `-trim1`, `-gpipe` when not the
    /// defaults.
    pub fn label(&self) -> String {
        let r = match self.recompute {
            Recompute::None => "none",
            Recompute::Selective => "sel",
            Recompute::Full => "full",
        };
        let mut s = format!("tp{}-pp{}-dp{}-mb{}-{r}", self.tp, self.pp, self.dp, self.micro_batch);
        if self.cp != 1 {
            s += &format!("-cp{}", self.cp);
        }
        if self.virtual_stages != 1 {
            s += &format!("-v{}", self.virtual_stages);
        }
        if !self.sequence_parallel && self.tp > 1 {
            s += "-nosp";
        }
        if self.zero_stage != 1 {
            s += &format!("-z{}", self.zero_stage);
        }
        if self.trim_end_stages != 0 {
            s += &format!("-trim{}", self.trim_end_stages);
        }
        if self.schedule == PipelineSchedule::Gpipe {
            s += "-gpipe";
        }
        if self.ep != 1 {
            s += &format!("-ep{}", self.ep);
        }
        s
    }

    /// Checks the layout against a model, a cluster of `gpus` GPUs and a global batch of `sequences` sequences, naming
    /// the field under `workload.parallel` (the checks of [`DenseTraining::validate`] and of every searched layout).
    /// Returns the micro-batches per replica per step.
    pub fn check(&self, model: &TransformerSpec, gpus: u64, sequences: u64) -> Result<u64, Error> {
        // static field names: this runs for every layout the search tries, so it allocates nothing
        for (field, v) in [
            ("workload.parallel.tp", self.tp),
            ("workload.parallel.cp", self.cp),
            ("workload.parallel.pp", self.pp),
            ("workload.parallel.dp", self.dp),
        ] {
            check::at_least(field, v, 1)?;
            check::at_most(field, v, gpus, "the cluster has no more GPUs")?;
        }
        check::at_least("workload.parallel.micro_batch", self.micro_batch, 1)?;
        check::at_most(
            "workload.parallel.micro_batch",
            self.micro_batch,
            sequences,
            "the global batch has no more sequences",
        )?;
        // Each factor is at most MAX_GPUS (2^20); checked products keep absurd combinations from overflowing.
        let used = self
            .tp
            .checked_mul(self.cp)
            .and_then(|x| x.checked_mul(self.pp))
            .and_then(|x| x.checked_mul(self.dp));
        if used != Some(gpus) {
            return Err(Error::invalid(
                "workload.parallel",
                self.label(),
                format!(
                    "tp*cp*pp*dp = {} but the cluster has {gpus} GPUs",
                    used.map_or("more than 2^64".to_string(), |u| u.to_string())
                ),
                "make tp*cp*pp*dp equal nodes*gpus_per_node",
            ));
        }
        if !model.seq_len.is_multiple_of(self.cp) {
            return Err(Error::invalid(
                "workload.parallel.cp",
                self.cp,
                format!("does not divide seq_len = {}", model.seq_len),
                "choose a context-parallel size dividing the sequence length",
            ));
        }
        if self.zero_stage > 3 {
            return Err(Error::invalid(
                "workload.parallel.zero_stage",
                self.zero_stage,
                "ZeRO has stages 0 to 3",
                "use 0 (none), 1 (optimizer states), 2 (+ gradients) or 3 (+ parameters, FSDP)",
            ));
        }
        check::at_most(
            "workload.parallel.pp",
            self.pp,
            model.layers,
            "a stage needs at least one layer",
        )?;
        let Some(st) = StageLayers::of(model.layers, self.pp, self.trim_end_stages) else {
            return Err(Error::invalid(
                "workload.parallel.trim_end_stages",
                self.trim_end_stages,
                format!(
                    "leaves the first or last of {} stages without a layer ({} layers), or trims one stage",
                    self.pp, model.layers
                ),
                "use a smaller trim, or 0 with pp = 1",
            ));
        };
        check::at_least("workload.parallel.virtual_stages", self.virtual_stages, 1)?;
        if self.virtual_stages > 1 {
            if self.schedule == PipelineSchedule::Gpipe {
                return Err(Error::invalid(
                    "workload.parallel.virtual_stages",
                    self.virtual_stages,
                    "interleaving is a 1F1B schedule",
                    "use schedule = \"1f1b\" or virtual_stages = 1",
                ));
            }
            if self.pp == 1 {
                return Err(Error::invalid(
                    "workload.parallel.virtual_stages",
                    self.virtual_stages,
                    "interleaving needs more than one pipeline stage",
                    "use virtual_stages = 1 with pp = 1",
                ));
            }
            let even = st.even(self.pp);
            if (even && !st.first.is_multiple_of(self.virtual_stages)) || self.virtual_stages > st.min(self.pp) {
                return Err(Error::invalid(
                    "workload.parallel.virtual_stages",
                    self.virtual_stages,
                    if even {
                        format!("does not divide the {} layers per stage", st.first)
                    } else {
                        format!(
                            "more model chunks than the {} layers of the smallest stage",
                            st.min(self.pp)
                        )
                    },
                    "choose virtual_stages dividing layers / pp",
                ));
            }
        }
        if !model.heads.is_multiple_of(self.tp) {
            return Err(Error::invalid(
                "workload.parallel.tp",
                self.tp,
                format!("does not divide heads = {}", model.heads),
                "choose tp dividing the number of attention heads",
            ));
        }
        // dp and micro_batch are at most 2^20 each (checked above): the product cannot overflow.
        if !sequences.is_multiple_of(self.dp * self.micro_batch) {
            return Err(Error::invalid(
                "workload.parallel.micro_batch",
                self.micro_batch,
                format!(
                    "dp * micro_batch = {} does not divide the global batch of {sequences} sequences",
                    self.dp * self.micro_batch
                ),
                "choose dp and micro_batch so that their product divides the global batch",
            ));
        }
        check::at_least("workload.parallel.ep", self.ep, 1)?;
        if !self.dp.is_multiple_of(self.ep) {
            return Err(Error::invalid(
                "workload.parallel.ep",
                self.ep,
                format!(
                    "does not divide dp = {} (the expert-parallel group is carved out of the data-parallel ranks)",
                    self.dp
                ),
                "choose ep dividing dp",
            ));
        }
        let micro_batches = sequences / (self.dp * self.micro_batch);
        if self.virtual_stages > 1 && !micro_batches.is_multiple_of(self.pp) {
            return Err(Error::invalid(
                "workload.parallel.virtual_stages",
                self.virtual_stages,
                format!(
                    "the interleaved schedule needs the {micro_batches} micro-batches per replica to be a multiple of \
                     pp = {}",
                    self.pp
                ),
                "use virtual_stages = 1, or a batch, dp and micro_batch giving a multiple of pp micro-batches",
            ));
        }
        Ok(micro_batches)
    }

    /// Whether sequence parallelism is in effect (asked for and tp > 1).
    pub fn sp(&self) -> bool {
        self.sequence_parallel && self.tp > 1
    }
}

/// How the layers of a model lie on the pipeline stages: the first and the last stage, and the most and fewest on a
/// middle stage. Layers are spread evenly over `pp` slots after adding `2 trim` (so the first and the last stage
/// can give `trim` each back); extra layers go to the middle stages first, then to the first stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageLayers {
    /// Layers of the first stage (which also holds the embedding).
    pub first: u64,
    /// Layers of the last stage (which also holds the LM head); equal to `first` when `pp = 1`.
    pub last: u64,
    /// Most layers on a middle stage (0 when `pp <= 2`).
    pub mid_max: u64,
    /// Fewest layers on a middle stage (0 when `pp <= 2`).
    pub mid_min: u64,
    /// Middle stages holding `mid_max` layers.
    pub n_mid_max: u64,
}

impl StageLayers {
    /// The split of `layers` over `pp` stages with `trim` layers fewer on each end stage; `None` when an end stage
    /// would be left without a layer (or `trim > 0` with one stage).
    pub fn of(layers: u64, pp: u64, trim: u64) -> Option<StageLayers> {
        if pp == 0 || pp > layers {
            return None;
        }
        if pp == 1 {
            return (trim == 0).then_some(StageLayers {
                first: layers,
                last: layers,
                mid_max: 0,
                mid_min: 0,
                n_mid_max: 0,
            });
        }
        let total = layers.checked_add(trim.checked_mul(2)?)?;
        let (base, rem) = (total / pp, total % pp);
        let mids = pp - 2;
        let extra_mid = rem.min(mids);
        let first = (base + u64::from(rem > extra_mid)).checked_sub(trim)?;
        let last = base.checked_sub(trim)?;
        if first == 0 || last == 0 {
            return None;
        }
        let (mid_max, mid_min) = if mids == 0 {
            (0, 0)
        } else {
            (base + u64::from(extra_mid > 0), base + u64::from(extra_mid == mids))
        };
        Some(StageLayers {
            first,
            last,
            mid_max,
            mid_min,
            n_mid_max: if extra_mid > 0 { extra_mid } else { mids },
        })
    }

    /// Layers of each stage, first to last.
    pub fn per_stage(&self, pp: u64) -> Vec<u64> {
        if pp == 1 {
            return vec![self.first];
        }
        let mut v = vec![self.first];
        for i in 0..pp - 2 {
            v.push(if i < self.n_mid_max { self.mid_max } else { self.mid_min });
        }
        v.push(self.last);
        v
    }

    /// The fewest layers on any stage.
    pub fn min(&self, pp: u64) -> u64 {
        let ends = self.first.min(self.last);
        if pp > 2 { ends.min(self.mid_min) } else { ends }
    }

    /// Whether every stage holds the same number of layers.
    pub fn even(&self, pp: u64) -> bool {
        self.first == self.last && (pp <= 2 || (self.mid_max == self.first && self.mid_min == self.first))
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
    /// Mixture-of-experts FFN layers; `None` is a dense model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe: Option<MoeSpec>,
    /// A fixed layout; `None` searches for the fastest that fits.
    #[serde(default)]
    pub parallel: Option<ParallelConfig>,
    /// Overlap communication with compute where the schedule allows it: data-parallel gradient buckets with the
    /// backward pass, ring-attention key/value exchange with attention, ZeRO-3 parameter gathers with the previous
    /// pass. Off: every such transfer waits and is waited for.
    #[serde(default = "yes")]
    pub overlap_comm: bool,
    /// Overlap tensor-parallel collectives with the GEMMs that produce them by splitting both into chunks
    /// (Megatron-Core's `tp_comm_overlap`); the closed form and the operation-level simulator apply the same
    /// chunked pipeline to each GEMM + collective pair where it is faster than the collective after the GEMM.
    #[serde(default)]
    pub tp_comm_overlap: bool,
    /// Pipeline sends do not block the sending stage (MegaScale's PP overlap, NSDI'24 sec. 3.2: send and receive
    /// decoupled and launched asynchronously): a stage goes on with its next pass while its activation or gradient
    /// travels, and only the receiving pass waits for it. Off: a send blocks its stage until done (Megatron-LM's
    /// combined send-receive).
    #[serde(default)]
    pub pp_comm_overlap: bool,
    /// Attention scores are materialised in memory (pre-FlashAttention kernels, e.g. Megatron-LM in 2021): the
    /// `5as/h sbh` bytes of scores, softmax and dropout mask are streamed like the other activations. Off: fused
    /// attention.
    #[serde(default)]
    pub attention_scores_materialized: bool,
    /// Parallel transformer block (GPT-J, PaLM sec. 2, MegaScale sec. 3.1): attention and FFN read the same
    /// LayerNorm output, `y = x + Attn(LN(x)) + MLP(LN(x))`. The QKV and FFN-up GEMMs share their input and run as
    /// one GEMM, as do the output projection and FFN down (their outputs are summed); with tensor parallelism the
    /// block needs one collective forward and one backward instead of two each; one LayerNorm instead of two.
    /// Off: the sequential block of GPT-3 and Llama. Not modelled for MoE models.
    #[serde(default)]
    pub parallel_block: bool,
    /// Sliding-window attention (Longformer, Mistral 7B; MegaScale sec. 3.1): each query attends to itself and the
    /// `sliding_window - 1` keys before it. A fused kernel computes only the key blocks within the window; the
    /// model FLOPs of MFU still count full attention (as they credit no causal mask). `None`: full causal
    /// attention. Must be in `1..=seq_len` (`seq_len` is full causal attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<u64>,
    /// Bytes of gradients per data-parallel reduction bucket (the operation-level simulator launches a bucket's
    /// reduction once the backward has produced it). Default 25 MiB, PyTorch DDP's `bucket_cap_mb = 25`.
    #[serde(default = "default_bucket")]
    pub dp_bucket_bytes: f64,
    /// Failures, detection and recovery of the run: with it, every answer also gives the expected effective training
    /// time ratio and the days and GPU-hours including downtime (the `training_job` closed form of the same run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime: Option<Downtime>,
}

impl DenseTraining {
    /// A run of `model` on `cluster` with the default options: the layout searched, DP reduction overlapped with
    /// the backward pass, TP collectives not overlapped, fused attention, 25 MiB gradient buckets, no downtime.
    pub fn new(
        model: TransformerSpec,
        cluster: ClusterSpec,
        global_batch_tokens: u64,
        train_tokens: f64,
        dtype: Dtype,
    ) -> Self {
        DenseTraining {
            model,
            cluster,
            global_batch_tokens,
            train_tokens,
            dtype,
            moe: None,
            parallel: None,
            overlap_comm: true,
            tp_comm_overlap: false,
            pp_comm_overlap: false,
            attention_scores_materialized: false,
            parallel_block: false,
            sliding_window: None,
            dp_bucket_bytes: DEFAULT_BUCKET_BYTES,
            downtime: None,
        }
    }
}

impl DenseTraining {
    /// Checks the expert-parallel part of a layout against the MoE section: `ep > 1` needs one, `ep` must divide the
    /// experts, and ZeRO-3 is not modelled with MoE.
    pub fn check_moe_layout(&self, p: &ParallelConfig) -> Result<(), Error> {
        match &self.moe {
            None if p.ep > 1 => Err(Error::invalid(
                "workload.parallel.ep",
                p.ep,
                "expert parallelism needs MoE layers, and the model has no `moe` section",
                "use ep = 1, or add [workload.moe]",
            )),
            None => Ok(()),
            Some(moe) => {
                if !moe.experts.is_multiple_of(p.ep) {
                    return Err(Error::invalid(
                        "workload.parallel.ep",
                        p.ep,
                        format!("does not divide experts = {}", moe.experts),
                        "choose ep dividing the number of experts (and dp)",
                    ));
                }
                if p.zero_stage == 3 {
                    return Err(Error::invalid(
                        "workload.parallel.zero_stage",
                        p.zero_stage,
                        "ZeRO-3 parameter gathers are not modelled for MoE models",
                        "use zero_stage 0, 1 or 2",
                    ));
                }
                Ok(())
            }
        }
    }

    /// Parameters of one MoE layer's experts (all of them), and the router's.
    pub fn expert_params(&self) -> (f64, f64) {
        let m = &self.model;
        let Some(moe) = &self.moe else {
            return (0.0, 0.0);
        };
        let ffn = if m.gated_ffn { 3.0 } else { 2.0 } * (m.hidden * m.ffn_hidden) as f64;
        (moe.experts as f64 * ffn, (m.hidden * moe.experts) as f64)
    }

    /// Total parameters, every expert counted.
    pub fn params(&self) -> f64 {
        let m = &self.model;
        let Some(moe) = &self.moe else {
            return m.params();
        };
        let (experts, router) = self.expert_params();
        let ffn = if m.gated_ffn { 3.0 } else { 2.0 } * (m.hidden * m.ffn_hidden) as f64;
        m.params() + moe.layers_in(m.layers) as f64 * (experts + router - ffn)
    }

    /// Training FLOPs per token: the dense model's ([`TransformerSpec::train_flops_per_token`]) with each MoE layer's
    /// FFN counted `top_k` times (the experts a token visits) plus the router GEMM; dropped tokens are not credited
    /// less (the convention of counting the FLOPs the model asks for).
    pub fn train_flops_per_token(&self) -> f64 {
        let m = &self.model;
        let dense = m.train_flops_per_token();
        let Some(moe) = &self.moe else {
            return dense;
        };
        let ffn = if m.gated_ffn { 3.0 } else { 2.0 } * (m.hidden * m.ffn_hidden) as f64;
        let extra = (moe.top_k as f64 - 1.0) * ffn + (m.hidden * moe.experts) as f64;
        dense + 3.0 * 2.0 * moe.layers_in(m.layers) as f64 * extra
    }
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

/// PyTorch DDP's default gradient bucket: `bucket_cap_mb = 25` (torch.nn.parallel.DistributedDataParallel docs).
pub const DEFAULT_BUCKET_BYTES: f64 = 25.0 * 1024.0 * 1024.0;

fn default_bucket() -> f64 {
    DEFAULT_BUCKET_BYTES
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
        m.check_heads("workload.model")?;
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
        check::positive_at_most(
            "workload.dp_bucket_bytes",
            self.dp_bucket_bytes,
            1e15,
            "a bucket larger than any model's gradients",
        )?;
        if let Some(moe) = &self.moe {
            moe.check("workload.moe", m.layers)?;
            if self.parallel_block {
                return Err(Error::invalid(
                    "workload.parallel_block",
                    true,
                    "the parallel transformer block is not modelled for MoE models",
                    "use parallel_block = false, or remove [workload.moe]",
                ));
            }
        }
        if let Some(win) = self.sliding_window
            && (win == 0 || win > m.seq_len)
        {
            return Err(Error::invalid(
                "workload.sliding_window",
                win,
                format!("must be between 1 and seq_len = {} tokens", m.seq_len),
                "give the attention window in tokens (seq_len is full causal attention), or leave it out",
            ));
        }
        if let Some(p) = &self.parallel {
            p.check(m, gpus, sequences)?;
            self.check_moe_layout(p)?;
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
    /// For an MoE model: routing load, drops and all-to-all time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe: Option<MoeStepInfo>,
}

/// What the MoE layers of a step do: per MoE layer and micro-batch of one expert-parallel group.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MoeStepInfo {
    /// Expert capacity in slots (`ceil(gamma k N / E)`, `N` the group's tokens of one micro-batch).
    pub capacity: u64,
    /// Dropped fraction of the routed slots.
    pub drop_fraction: f64,
    /// Processed slots of the busiest expert-parallel rank over the mean rank's.
    pub rank_imbalance: f64,
    /// Expert compute of the slowest rank, forward, one MoE layer and micro-batch, seconds.
    pub expert_fwd_s: f64,
    /// One dispatch (or combine) all-to-all, one MoE layer and micro-batch, seconds.
    pub a2a_s: f64,
    /// All-to-all time per step on the slowest stage (forward and backward, every micro-batch), seconds.
    pub a2a_per_step_s: f64,
    /// Where the slowest rank's load comes from.
    pub load_source: MoeLoadSource,
}

/// Where an MoE step's slowest-rank load comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoeLoadSource {
    /// The closed form's expected maximum over ranks.
    ClosedForm,
    /// The mean over Monte Carlo routing draws of the MoE simulator.
    MonteCarlo,
}

/// A partition of one step's time into its causes, each a share of the step (they sum to 1): the compute of every
/// micro-batch, the pipeline bubble, tensor-parallel, pipeline point-to-point, context-parallel and ZeRO-3
/// communication that is not hidden,
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
    /// Context-parallel K/V ring exchange and ZeRO-3 parameter gathers not hidden behind compute.
    #[serde(default)]
    pub other_comm: f64,
    /// Data-parallel gradient reduction not overlapped with the backward pass.
    pub dp_comm: f64,
    /// The optimizer step.
    pub optimizer: f64,
}

impl StepSplit {
    /// The shares with their names, in a fixed order.
    pub fn named(&self) -> [(&'static str, f64); 7] {
        [
            ("compute", self.compute),
            ("bubble", self.bubble),
            ("tp_comm", self.tp_comm),
            ("pp_comm", self.pp_comm),
            ("other_comm", self.other_comm),
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
            Metric::new("cp", Unit::Choice, self.config.cp as f64),
            Metric::new("virtual_stages", Unit::Choice, self.config.virtual_stages as f64),
            Metric::new("sequence_parallel", Unit::Choice, f64::from(u8::from(self.config.sp()))),
            Metric::new("zero_stage", Unit::Choice, f64::from(self.config.zero_stage)),
            Metric::new("trim_end_stages", Unit::Choice, self.config.trim_end_stages as f64),
        ];
        if let Some(split) = &self.split {
            for (name, share) in split.named() {
                out.push(Metric::new(format!("step_share.{name}"), Unit::Ratio, share));
            }
        }
        if self.memory_fraction > 0.0 {
            out.push(Metric::new("memory_fraction", Unit::Ratio, self.memory_fraction));
        }
        if let Some(moe) = &self.moe {
            out.push(Metric::new("ep", Unit::Choice, self.config.ep as f64));
            out.push(Metric::new("moe.capacity", Unit::Count, moe.capacity as f64));
            out.push(Metric::new("moe.drop_fraction", Unit::Ratio, moe.drop_fraction));
            out.push(Metric::new(
                "moe.rank_imbalance",
                Unit::Dimensionless,
                moe.rank_imbalance,
            ));
            out.push(Metric::new("moe.expert_fwd_time", Unit::Seconds, moe.expert_fwd_s));
            out.push(Metric::new("moe.a2a_time", Unit::Seconds, moe.a2a_s));
            out.push(Metric::new("moe.a2a_per_step", Unit::Seconds, moe.a2a_per_step_s));
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
