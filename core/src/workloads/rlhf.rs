//! The `rlhf_iteration` workload: one iteration of RLHF (PPO, DPO or rejection sampling) on a cluster: an actor, a
//! reference, a critic and a reward model, a batch of prompts, a response-length distribution (fixed or long-tailed),
//! PPO epochs, a placement (all roles colocated on every GPU with a hybrid engine, or disaggregated with GPU counts per
//! role) and the rollout engine's batch and tensor parallelism. Notes: `shared/design/notes/rlhf-victor.md` §3.1–3.3.
//!
//! Also here, pure so that a model and a real run use the same arithmetic: the segment-credit mask of adaptive
//! message-wise RLHF (arXiv 2411.00809, reconstructed in the notes §1.2), [`credit_mask`]: per-token scores are
//! smoothed, split at pivots where the smoothed score crosses the threshold, and only the segments whose sign agrees
//! with the sample-level label are kept. `token` and `sample` credit are its limits.
use serde::{Deserialize, Serialize};

use super::dense::TransformerSpec;
use crate::error::check;
use crate::{ClusterSpec, Dtype, Error, Metric, Outcome, Unit, Workload};

/// The RL algorithm of the iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// PPO: generate, score with reference, critic and reward model, train actor and critic for `ppo_epochs`.
    Ppo,
    /// DPO on preference pairs: no generation, no critic; reference forward over chosen and rejected, actor training
    /// on both.
    Dpo,
    /// Rejection sampling: generate `samples_per_prompt` responses per prompt, score them with the reward model,
    /// fine-tune the actor on the best one per prompt.
    RejectionSampling,
}

impl Algorithm {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Ppo => "ppo",
            Algorithm::Dpo => "dpo",
            Algorithm::RejectionSampling => "rejection_sampling",
        }
    }
    /// Whether the iteration generates rollouts with the actor.
    pub fn generates(self) -> bool {
        !matches!(self, Algorithm::Dpo)
    }
}

/// Response lengths in tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseLength {
    /// Every response has this many tokens.
    Fixed(u64),
    /// Long-tailed: lognormal with this mean (tokens, before truncation) and log-space standard deviation `sigma`,
    /// cut at `max` (the generation limit: longer responses stop there).
    Lognormal {
        /// Mean of the untruncated lognormal, tokens.
        mean: f64,
        /// Standard deviation of ln(length).
        sigma: f64,
        /// Generation limit (max new tokens).
        max: u64,
    },
    /// An empirical distribution: `lengths[i]` tokens with probability `weights[i] / Σ weights` (e.g. the length
    /// histogram of a logged rollout batch). Weights need not sum to 1.
    Histogram {
        /// Bin lengths, tokens.
        lengths: Vec<u64>,
        /// Bin weights (non-negative, not all zero).
        weights: Vec<f64>,
    },
}

impl ResponseLength {
    /// The longest response.
    pub fn max(&self) -> u64 {
        match self {
            ResponseLength::Fixed(r) => *r,
            ResponseLength::Lognormal { max, .. } => *max,
            ResponseLength::Histogram { lengths, .. } => lengths.iter().copied().max().unwrap_or(0),
        }
    }
}

/// Where the roles run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Placement {
    /// Every role on every GPU, phases in series, the actor resharded in place between training and generation
    /// (DeepSpeed-HE, verl's 3D-HybridEngine).
    Colocated,
    /// Each role on its own GPUs; phases still in series within an iteration (on-policy), roles of one phase in
    /// parallel; the actor's weights are sent to the rollout engines after training.
    Disaggregated {
        /// GPUs training the actor.
        actor_gpus: u64,
        /// GPUs of the rollout (generation) engines. 0 with an algorithm that generates: generation runs on the
        /// actor's training GPUs, from the training module (OpenRLHF's Ray placement without vLLM, its benchmark ratio
        /// 1:1:4:2: HF `generate` on the actor's GPUs, the other roles on their own), in series with training (no
        /// off-policy overlap); the engines are then the actor's GPUs over `rollout_tp`.
        #[serde(default)]
        rollout_gpus: u64,
        /// GPUs of the reference model.
        #[serde(default)]
        reference_gpus: u64,
        /// GPUs training the critic.
        #[serde(default)]
        critic_gpus: u64,
        /// GPUs of the reward model.
        #[serde(default)]
        reward_gpus: u64,
    },
}

/// How a rollout that shares GPUs with training generates (the `colocated_engine` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColocatedEngine {
    /// A hybrid engine that reshards the trained actor into an inference layout once per iteration and decodes with
    /// CUDA graphs (verl, OpenRLHF's colocated vLLM): no per-step host or launch cost.
    #[default]
    Resharded,
    /// DeepSpeed-Chat's Hybrid Engine: the ZeRO-3 actor all-gathered once per generation call, eager kernels.
    HybridEngine,
    /// HuggingFace `generate` on the ZeRO-3 training module (DeepSpeed-Chat without its Hybrid Engine, OpenRLHF
    /// without vLLM): every layer gathered at every decode step, eager kernels and a host loop per step.
    HfGenerate,
}

impl ColocatedEngine {
    /// The name in a scenario file.
    pub fn name(self) -> &'static str {
        match self {
            ColocatedEngine::Resharded => "resharded",
            ColocatedEngine::HybridEngine => "hybrid_engine",
            ColocatedEngine::HfGenerate => "hf_generate",
        }
    }
}

/// One RLHF iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlhfIteration {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The policy being trained (`seq_len` is not read: sequence lengths come from `prompt_len` and `response`).
    pub actor: TransformerSpec,
    /// The frozen reference policy (PPO and DPO).
    #[serde(default)]
    pub reference: Option<TransformerSpec>,
    /// The value model (PPO only).
    #[serde(default)]
    pub critic: Option<TransformerSpec>,
    /// The reward model (PPO and rejection sampling).
    #[serde(default)]
    pub reward: Option<TransformerSpec>,
    /// Prompts per iteration (DPO: preference pairs per iteration).
    pub prompts: u64,
    /// Prompt length, tokens.
    pub prompt_len: u64,
    /// Response lengths.
    pub response: ResponseLength,
    /// Responses generated per prompt (rejection sampling's K; 1 for PPO).
    #[serde(default = "one")]
    pub samples_per_prompt: u64,
    /// Passes over the rollout batch per iteration (PPO).
    #[serde(default = "one")]
    pub ppo_epochs: u64,
    /// Where the roles run.
    pub placement: Placement,
    /// Sequences decoded together by one rollout engine (a static batch: it runs until its longest response ends).
    pub generation_batch: u64,
    /// Tensor parallelism of one rollout engine.
    #[serde(default = "one")]
    pub rollout_tp: u64,
    /// One-step off-policy (asynchronous) RLHF: the rollout engines generate iteration `i + 1` with the weights of
    /// iteration `i − 1` while the trainers score and train iteration `i` (disaggregated placement only; the
    /// simulator pipelines the iterations, the closed form overlaps generation and sync with experience and
    /// training).
    #[serde(default)]
    pub off_policy: bool,
    /// How generation runs where it shares GPUs with training (colocated, or disaggregated with `rollout_gpus = 0`);
    /// dedicated rollout GPUs always run an inference engine of their own (vLLM-like: CUDA graphs, its own weights).
    #[serde(default)]
    pub colocated_engine: ColocatedEngine,
    /// Weight, activation and KV-cache data type.
    #[serde(default = "bf16")]
    pub dtype: Dtype,
    /// The cluster.
    pub cluster: ClusterSpec,
}

fn one() -> u64 {
    1
}
fn bf16() -> Dtype {
    Dtype::Bf16
}

const MAX_LAYERS: u64 = 1024;
const MAX_HIDDEN: u64 = 1 << 17;
const MAX_VOCAB: u64 = 1 << 22;
const MAX_TOKENS: u64 = 1 << 20;
const MAX_PROMPTS: u64 = 1 << 24;
const MAX_GPUS: u64 = 1 << 17;

/// Checks the sizes of a model at `path` (e.g. `workload.critic`).
fn check_model(path: &str, m: &TransformerSpec) -> Result<(), Error> {
    let size = "far beyond any published model";
    let f = |x: &str| format!("{path}.{x}");
    check::at_least(&f("layers"), m.layers, 1)?;
    check::at_most(&f("layers"), m.layers, MAX_LAYERS, size)?;
    check::at_least(&f("hidden"), m.hidden, 1)?;
    check::at_most(&f("hidden"), m.hidden, MAX_HIDDEN, size)?;
    check::at_least(&f("heads"), m.heads, 1)?;
    check::at_least(&f("ffn_hidden"), m.ffn_hidden, 1)?;
    check::at_most(&f("ffn_hidden"), m.ffn_hidden, 4 * MAX_HIDDEN, size)?;
    check::at_least(&f("vocab"), m.vocab, 1)?;
    check::at_most(&f("vocab"), m.vocab, MAX_VOCAB, size)?;
    m.check_heads(path)?;
    Ok(())
}

impl RlhfIteration {
    /// The roles the algorithm uses, with their models: `(name, model, trained)`.
    pub fn roles(&self) -> Vec<(&'static str, &TransformerSpec, bool)> {
        let mut out = vec![("actor", &self.actor, true)];
        if let Some(m) = &self.reference {
            out.push(("reference", m, false));
        }
        if let Some(m) = &self.critic {
            out.push(("critic", m, true));
        }
        if let Some(m) = &self.reward {
            out.push(("reward", m, false));
        }
        out
    }

    /// Sequences generated per iteration (`prompts × samples_per_prompt`; 0 for DPO).
    pub fn generated_sequences(&self) -> u64 {
        if self.algorithm.generates() {
            self.prompts * self.samples_per_prompt
        } else {
            0
        }
    }

    /// Whether generation runs on the actor's training GPUs in a disaggregated placement (`rollout_gpus = 0` with an
    /// algorithm that generates).
    pub fn rollout_on_actor(&self) -> bool {
        matches!(self.placement, Placement::Disaggregated { rollout_gpus: 0, .. }) && self.algorithm.generates()
    }

    /// GPUs per role: `(actor, rollout, reference, critic, reward)`; colocated roles all get the whole cluster (a
    /// rollout on the actor's GPUs, [`RlhfIteration::rollout_on_actor`], reads 0 here).
    pub fn role_gpus(&self) -> [u64; 5] {
        match self.placement {
            Placement::Colocated => [self.cluster.gpus(); 5],
            Placement::Disaggregated {
                actor_gpus,
                rollout_gpus,
                reference_gpus,
                critic_gpus,
                reward_gpus,
            } => [actor_gpus, rollout_gpus, reference_gpus, critic_gpus, reward_gpus],
        }
    }
}

impl Workload for RlhfIteration {
    type Outcome = RlhfOutcome;
    const KIND: &'static str = "rlhf_iteration";
    fn validate(&self) -> Result<(), Error> {
        check_model("workload.actor", &self.actor)?;
        for (name, m) in [
            ("reference", &self.reference),
            ("critic", &self.critic),
            ("reward", &self.reward),
        ] {
            if let Some(m) = m {
                check_model(&format!("workload.{name}"), m)?;
            }
        }
        let alg = self.algorithm.as_str();
        let (need, unused): (&[&str], &[&str]) = match self.algorithm {
            Algorithm::Ppo => (&["reference", "critic", "reward"], &[]),
            Algorithm::Dpo => (&["reference"], &["critic", "reward"]),
            Algorithm::RejectionSampling => (&["reward"], &["reference", "critic"]),
        };
        let given = |n: &str| match n {
            "reference" => self.reference.is_some(),
            "critic" => self.critic.is_some(),
            _ => self.reward.is_some(),
        };
        for n in need {
            if !given(n) {
                return Err(Error::invalid(
                    format!("workload.{n}"),
                    "missing",
                    format!("{alg} uses a {n} model"),
                    format!("add a [workload.{n}] table with the model's shape"),
                ));
            }
        }
        for n in unused {
            if given(n) {
                return Err(Error::invalid(
                    format!("workload.{n}"),
                    "given",
                    format!("{alg} has no {n} model (it would be counted as idle)"),
                    format!("remove [workload.{n}] or choose an algorithm that uses it"),
                ));
            }
        }
        check::at_least("workload.prompts", self.prompts, 1)?;
        check::at_most(
            "workload.prompts",
            self.prompts,
            MAX_PROMPTS,
            "far beyond any RLHF batch",
        )?;
        check::at_least("workload.prompt_len", self.prompt_len, 1)?;
        check::at_most(
            "workload.prompt_len",
            self.prompt_len,
            MAX_TOKENS,
            "beyond any context window",
        )?;
        match &self.response {
            ResponseLength::Histogram { lengths, weights } => {
                let p = "workload.response.histogram";
                if lengths.is_empty() || lengths.len() != weights.len() {
                    return Err(Error::invalid(
                        format!("{p}.weights"),
                        format!("{} weights for {} lengths", weights.len(), lengths.len()),
                        "a histogram needs one weight per length and at least one bin",
                        "give lengths and weights of the same, non-zero, length",
                    ));
                }
                for (i, &l) in lengths.iter().enumerate() {
                    check::at_least(&format!("{p}.lengths[{i}]"), l, 1)?;
                    check::at_most(&format!("{p}.lengths[{i}]"), l, MAX_TOKENS, "beyond any context window")?;
                }
                for (i, &x) in weights.iter().enumerate() {
                    check::non_negative_at_most(&format!("{p}.weights[{i}]"), x, f64::MAX, "not a finite weight")?;
                }
                if weights.iter().sum::<f64>() <= 0.0 {
                    return Err(Error::invalid(
                        format!("{p}.weights"),
                        format!("{weights:?}"),
                        "all weights are zero: no length has any mass",
                        "give at least one bin a positive weight",
                    ));
                }
            }
            &ResponseLength::Fixed(r) => {
                check::at_least("workload.response.fixed", r, 1)?;
                check::at_most("workload.response.fixed", r, MAX_TOKENS, "beyond any context window")?;
            }
            &ResponseLength::Lognormal { mean, sigma, max } => {
                check::positive_at_most(
                    "workload.response.lognormal.mean",
                    mean,
                    MAX_TOKENS as f64,
                    "beyond any context window",
                )?;
                check::positive_at_most(
                    "workload.response.lognormal.sigma",
                    sigma,
                    4.0,
                    "lengths spread over more than ten orders of magnitude",
                )?;
                check::at_least("workload.response.lognormal.max", max, 1)?;
                check::at_most(
                    "workload.response.lognormal.max",
                    max,
                    MAX_TOKENS,
                    "beyond any context window",
                )?;
            }
        }
        check::at_least("workload.samples_per_prompt", self.samples_per_prompt, 1)?;
        check::at_most(
            "workload.samples_per_prompt",
            self.samples_per_prompt,
            1024,
            "beyond best-of-n practice",
        )?;
        if self.algorithm != Algorithm::RejectionSampling && self.samples_per_prompt != 1 {
            return Err(Error::invalid(
                "workload.samples_per_prompt",
                self.samples_per_prompt,
                format!("{alg} uses one response per prompt"),
                "leave samples_per_prompt out, or use algorithm = \"rejection_sampling\"",
            ));
        }
        check::at_least("workload.ppo_epochs", self.ppo_epochs, 1)?;
        check::at_most(
            "workload.ppo_epochs",
            self.ppo_epochs,
            64,
            "far beyond PPO practice (1-4)",
        )?;
        check::at_least("workload.generation_batch", self.generation_batch, 1)?;
        check::at_most(
            "workload.generation_batch",
            self.generation_batch,
            1 << 16,
            "beyond any engine",
        )?;
        check::at_least("workload.rollout_tp", self.rollout_tp, 1)?;
        self.cluster.validate("workload.cluster")?;
        let gpus = self.cluster.gpus();
        if gpus > MAX_GPUS {
            return Err(Error::invalid(
                "workload.cluster.nodes",
                self.cluster.nodes,
                format!("the cluster would have {gpus} GPUs, more than {MAX_GPUS}"),
                "use fewer nodes",
            ));
        }
        let gpn = self.cluster.gpus_per_node as u64;
        if self.rollout_tp > gpn || !gpn.is_multiple_of(self.rollout_tp) {
            return Err(Error::invalid(
                "workload.rollout_tp",
                self.rollout_tp,
                format!("must divide gpus_per_node = {gpn} (a rollout engine stays inside one node)"),
                "choose a divisor of gpus_per_node",
            ));
        }
        if !self.actor.heads.is_multiple_of(self.rollout_tp) {
            return Err(Error::invalid(
                "workload.rollout_tp",
                self.rollout_tp,
                format!("does not divide the actor's {} heads", self.actor.heads),
                "choose rollout_tp dividing the heads",
            ));
        }
        if self.off_policy && !self.algorithm.generates() {
            return Err(Error::invalid(
                "workload.off_policy",
                true,
                format!("{alg} generates nothing, so there is no generation to overlap with training"),
                "set off_policy = false",
            ));
        }
        if self.off_policy && self.placement == Placement::Colocated {
            return Err(Error::invalid(
                "workload.off_policy",
                true,
                "colocated roles share every GPU, so generation cannot overlap training",
                "use a disaggregated placement or set off_policy = false",
            ));
        }
        if self.colocated_engine != ColocatedEngine::Resharded
            && matches!(self.placement, Placement::Disaggregated { rollout_gpus, .. } if rollout_gpus > 0)
        {
            return Err(Error::invalid(
                "workload.colocated_engine",
                format!("\"{}\"", self.colocated_engine.name()),
                "the rollout has GPUs of its own (rollout_gpus > 0), which run their own inference engine; the \
                 colocated engine applies only where generation shares GPUs with training",
                "remove colocated_engine, or use a colocated placement or rollout_gpus = 0",
            ));
        }
        if let Placement::Disaggregated { .. } = self.placement {
            let [actor, rollout, reference, critic, reward] = self.role_gpus();
            let p = |x: &str| format!("workload.placement.disaggregated.{x}");
            let mut used = vec![("actor_gpus", actor, true)];
            used.push(("rollout_gpus", rollout, self.algorithm.generates()));
            used.push(("reference_gpus", reference, self.reference.is_some()));
            used.push(("critic_gpus", critic, self.critic.is_some()));
            used.push(("reward_gpus", reward, self.reward.is_some()));
            for (name, g, needed) in &used {
                // `rollout_gpus = 0` while generating: generation on the actor's GPUs (checked below).
                if *needed && *g == 0 && *name != "rollout_gpus" {
                    return Err(Error::invalid(
                        p(name),
                        0,
                        format!("{alg} uses this role, which needs at least one GPU"),
                        format!("give {name} at least 1"),
                    ));
                }
                if !*needed && *g > 0 {
                    return Err(Error::invalid(
                        p(name),
                        *g,
                        format!("{alg} with these models does not use this role; its GPUs would idle"),
                        format!("set {name} = 0 or leave it out"),
                    ));
                }
                if *g > gpn && !g.is_multiple_of(gpn) {
                    return Err(Error::invalid(
                        p(name),
                        *g,
                        format!("spans nodes but is not a whole number of {gpn}-GPU nodes"),
                        format!("use at most {gpn} or a multiple of {gpn}"),
                    ));
                }
            }
            if self.rollout_on_actor() {
                if self.off_policy {
                    return Err(Error::invalid(
                        "workload.off_policy",
                        true,
                        "with rollout_gpus = 0 the actor's GPUs generate and train, so generation cannot overlap training",
                        "give the rollout its own GPUs (rollout_gpus) or set off_policy = false",
                    ));
                }
                if !actor.is_multiple_of(self.rollout_tp) {
                    return Err(Error::invalid(
                        p("actor_gpus"),
                        actor,
                        format!(
                            "generates on the actor's GPUs (rollout_gpus = 0) but is not a multiple of rollout_tp = {}",
                            self.rollout_tp
                        ),
                        "give the actor a multiple of rollout_tp GPUs, or the rollout its own GPUs",
                    ));
                }
            }
            if rollout > 0 && !rollout.is_multiple_of(self.rollout_tp) {
                return Err(Error::invalid(
                    p("rollout_gpus"),
                    rollout,
                    format!("is not a multiple of rollout_tp = {}", self.rollout_tp),
                    "give each rollout engine rollout_tp GPUs",
                ));
            }
            let total = used.iter().fold(0u64, |a, u| a.saturating_add(u.1));
            if total > gpus {
                return Err(Error::invalid(
                    "workload.placement.disaggregated",
                    total,
                    format!("the roles need {total} GPUs, the cluster has {gpus}"),
                    "lower the GPU counts per role or add nodes",
                ));
            }
        }
        Ok(())
    }
}

/// How credit is assigned to the tokens of one response.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Credit {
    /// Every token gets the sample's label (standard RLHF).
    Sample,
    /// A token is kept where its own score agrees with the label: `z·s_t > 0`.
    Token,
    /// Segment-level: scores smoothed by a centred window mean of half-width `smoothing` tokens, split at pivots
    /// where `s̃_t − threshold` changes sign; a segment is kept where its sign agrees with the label.
    Segment {
        /// Score threshold τ defining the sign of a token.
        threshold: f64,
        /// Half-width of the centred moving average (0: no smoothing).
        smoothing: usize,
    },
}

/// The smoothed scores: the mean of `scores` over `[t − h, t + h]` clipped to the response.
pub fn smooth(scores: &[f64], h: usize) -> Vec<f64> {
    let n = scores.len();
    let mut prefix = vec![0.0; n + 1];
    for (i, s) in scores.iter().enumerate() {
        prefix[i + 1] = prefix[i] + s;
    }
    (0..n)
        .map(|t| {
            let (a, b) = (t.saturating_sub(h), (t + h + 1).min(n));
            (prefix[b] - prefix[a]) / (b - a) as f64
        })
        .collect()
}

/// Segment start indices (the pivots): 0 and every `t` where `s̃_t − τ > 0` differs from `s̃_{t−1} − τ > 0`.
pub fn pivots(smoothed: &[f64], threshold: f64) -> Vec<usize> {
    let mut out = Vec::new();
    for t in 0..smoothed.len() {
        if t == 0 || (smoothed[t] > threshold) != (smoothed[t - 1] > threshold) {
            out.push(t);
        }
    }
    out
}

/// The credit mask of one response: `true` for tokens whose gradient is kept. `label` is the sample-level polarity
/// (`true`: chosen response or non-negative advantage; `false`: rejected or negative advantage).
///
/// Segment mode: a segment is kept when `z·Σ_{t∈G}(s̃_t − τ) > 0` (the segment's sign, constant within it by
/// construction, agrees with `z`). A token whose smoothed score equals τ counts as below it. With `smoothing = 0` and
/// `threshold = 0` this is token mode (except for scores of exactly 0, which join the segment below); with a window covering the response there is one segment, kept whole or
/// dropped whole by the sign of the mean score (sample mode when the mean agrees with the label).
pub fn credit_mask(scores: &[f64], label: bool, credit: Credit) -> Vec<bool> {
    let z = if label { 1.0 } else { -1.0 };
    match credit {
        Credit::Sample => vec![true; scores.len()],
        Credit::Token => scores.iter().map(|s| z * s > 0.0).collect(),
        Credit::Segment { threshold, smoothing } => {
            let sm = smooth(scores, smoothing);
            let p = pivots(&sm, threshold);
            let mut mask = vec![false; scores.len()];
            for (k, &start) in p.iter().enumerate() {
                let end = p.get(k + 1).copied().unwrap_or(scores.len());
                let score: f64 = sm[start..end].iter().map(|s| s - threshold).sum();
                let keep = z * score > 0.0;
                mask[start..end].iter_mut().for_each(|m| *m = keep);
            }
            mask
        }
    }
}

/// The answer for an [`RlhfIteration`]: time per phase, memory per role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlhfOutcome {
    /// Generation prefill, seconds.
    pub prefill_s: f64,
    /// Generation decode, seconds.
    pub decode_s: f64,
    /// Experience making (forward passes of the scoring models), seconds.
    pub experience_s: f64,
    /// Training (actor and critic, all epochs), seconds.
    pub training_s: f64,
    /// Weight resharding or transfer to the rollout engines, seconds.
    pub sync_s: f64,
    /// Tokens (prompt and response) of the sequences the iteration processes.
    pub tokens: f64,
    /// GPUs held by the iteration.
    pub gpus: u64,
    /// Peak bytes per GPU of each role: `(role, bytes)`.
    pub memory_per_gpu: Vec<(String, f64)>,
    /// Seconds of the phases hidden by overlapping iterations (off-policy pipelining); 0 on-policy.
    #[serde(default)]
    pub overlap_s: f64,
    /// Mean fraction of the rollout engines' batch slots holding a live sequence during decode (1 with fixed
    /// lengths; the long tail lowers it); 0 when nothing is generated.
    #[serde(default)]
    pub rollout_occupancy: f64,
    /// A 95% interval of `iteration_time` over Monte Carlo replications (simulator only).
    #[serde(default)]
    pub iteration_time_ci: Option<(f64, f64)>,
}

impl RlhfOutcome {
    /// Time of one iteration: the phases in series less what pipelining hides, seconds.
    pub fn iteration_time_s(&self) -> f64 {
        self.prefill_s + self.decode_s + self.experience_s + self.training_s + self.sync_s - self.overlap_s
    }
}

impl Outcome for RlhfOutcome {
    fn metrics(&self) -> Vec<Metric> {
        let t = self.iteration_time_s();
        let generation = self.prefill_s + self.decode_s;
        let it = match self.iteration_time_ci {
            Some((lo, hi)) => Metric::with_ci("iteration_time", Unit::Seconds, t, lo, hi),
            None => Metric::new("iteration_time", Unit::Seconds, t),
        };
        let mut out = vec![
            it,
            Metric::new("time.generation", Unit::Seconds, generation),
            Metric::new("time.generation.prefill", Unit::Seconds, self.prefill_s),
            Metric::new("time.generation.decode", Unit::Seconds, self.decode_s),
            Metric::new("time.experience", Unit::Seconds, self.experience_s),
            Metric::new("time.training", Unit::Seconds, self.training_s),
            Metric::new("time.sync", Unit::Seconds, self.sync_s),
            Metric::new("time.overlap", Unit::Seconds, self.overlap_s),
            Metric::new("generation_share", Unit::Ratio, generation / (t + self.overlap_s)),
            Metric::new("rollout_occupancy", Unit::Ratio, self.rollout_occupancy),
            Metric::new("tokens_per_s", Unit::TokensPerSecond, self.tokens / t),
            Metric::new("gpu_hours_per_iteration", Unit::GpuHours, t * self.gpus as f64 / 3600.0),
        ];
        for (role, b) in &self.memory_per_gpu {
            out.push(Metric::new(format!("memory_per_gpu.{role}"), Unit::Bytes, *b));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Credit = Credit::Segment {
        threshold: 0.0,
        smoothing: 0,
    };

    #[test]
    fn token_and_sample_modes_by_hand() {
        let s = [0.5, -0.2, 0.0, 1.0];
        assert_eq!(credit_mask(&s, true, Credit::Token), [true, false, false, true]);
        assert_eq!(credit_mask(&s, false, Credit::Token), [false, true, false, false]);
        assert_eq!(credit_mask(&s, false, Credit::Sample), [true; 4]);
        // Segment mode without smoothing and at τ = 0 is token mode for scores other than exactly 0 ...
        let t = [0.5, -0.2, -0.1, 1.0, 2.0, -3.0];
        for label in [true, false] {
            assert_eq!(credit_mask(&t, label, S), credit_mask(&t, label, Credit::Token));
        }
        // ... a score of exactly τ joins the segment below τ: kept in a rejected response, as -0.2 beside it.
        assert_eq!(credit_mask(&s, false, S), [false, true, true, false]);
        assert_eq!(credit_mask(&s, true, S), [true, false, false, true]);
    }

    #[test]
    fn segments_by_hand_with_smoothing() {
        // Scores 1, 1, -3, 1, 1, 1 with half-width 1: means over clipped windows
        // t0: (1+1)/2 = 1; t1: (1+1-3)/3 = -1/3; t2: (1-3+1)/3 = -1/3; t3: (-3+1+1)/3 = -1/3; t4: 1; t5: 1.
        let s = [1.0, 1.0, -3.0, 1.0, 1.0, 1.0];
        let sm = smooth(&s, 1);
        let want = [1.0, -1.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0, 1.0, 1.0];
        for (a, b) in sm.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{sm:?}");
        }
        assert_eq!(pivots(&sm, 0.0), vec![0, 1, 4]);
        let seg = Credit::Segment {
            threshold: 0.0,
            smoothing: 1,
        };
        // Chosen: keep the positive segments [0] and [4, 5]; the token-1 '+1' inside the negative span is dropped.
        assert_eq!(credit_mask(&s, true, seg), [true, false, false, false, true, true]);
        assert_eq!(credit_mask(&s, false, seg), [false, true, true, true, false, false]);
        // Token mode keeps token 1 and 3 (own score +1): the segment mode differs exactly there.
        assert_eq!(
            credit_mask(&s, true, Credit::Token),
            [true, true, false, true, true, true]
        );
    }

    #[test]
    fn threshold_moves_the_pivots() {
        // τ = 0.5: signs of (s − τ) are -, +, +, - → pivots 0, 1, 3.
        let s = [0.2, 0.9, 0.6, 0.4];
        let seg = Credit::Segment {
            threshold: 0.5,
            smoothing: 0,
        };
        assert_eq!(pivots(&s, 0.5), vec![0, 1, 3]);
        assert_eq!(credit_mask(&s, true, seg), [false, true, true, false]);
        assert_eq!(credit_mask(&s, false, seg), [true, false, false, true]);
    }

    #[test]
    fn a_window_over_the_response_is_one_segment() {
        // Mean 0.25 > 0: one segment; a chosen response keeps all (sample mode), a rejected one drops all.
        let s = [1.0, -1.0, 0.5, 0.5];
        let seg = Credit::Segment {
            threshold: 0.0,
            smoothing: 8,
        };
        assert_eq!(credit_mask(&s, true, seg), credit_mask(&s, true, Credit::Sample));
        assert_eq!(credit_mask(&s, false, seg), [false; 4]);
        assert!(credit_mask(&[], true, seg).is_empty());
    }
}
