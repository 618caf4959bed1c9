//! The phase cost model of one RLHF iteration, in closed form: the `analytical` backend of the `rlhf_iteration`
//! kind. Notation and the phase table are those of `shared/design/notes/rlhf-victor.md` §3.1 and §3.3: `S`
//! sequences per iteration (`prompts × samples_per_prompt`), prompt length `P`, response length `R` (a
//! distribution), parameters `N` of a role ([`TransformerSpec::params`]), `b` bytes per element of `dtype`. Compute
//! and memory times go through the one hardware model ([`crate::hardware`]: the GEMM law of the GPU's datasheet
//! profile or a calibrated one, HBM at the profile's sustained bandwidth, collectives by the cluster's alpha-beta
//! network). Attention FLOPs are ignored in generation and scoring (the notes' convention; the training step model
//! counts them).
//!
//! 1. **Generation** (PPO and rejection sampling), on `E = rollout GPUs / rollout_tp` engines, each decoding its
//!    `⌈S/E⌉` sequences in `⌈S/(E·batch)⌉` static waves of `B` sequences. Per wave:
//!    - prefill: `2·N·B·P / tp` FLOPs (compute-bound, limiting dimension `B·P`), the weights read once, plus two
//!      tensor-parallel all-reduces of `B·P·hidden·b` bytes per layer;
//!    - decode: a wave runs until its longest response ends, `M_B = E[max of B lengths]` steps (the long tail). Bytes
//!      from HBM: the weights `b·N/tp` at every step, and the KV cache read by every generated token,
//!      `B·(P·E[R] + E[R²]/2)·kv` with `kv = 2·L·H_kv·d_head·b/tp` bytes per token (the notes' KV formula). Compute
//!      `2·N·B·E[R]/tp` at the mean live batch `B·E[R]/M_B`. The wave takes the larger of the two (a roofline over
//!      the wave, not per step), plus `2·L` all-reduces of `live batch·hidden·b` bytes per step when `tp > 1`.
//!    - For the lognormal `R` (truncated at `max`), `E[R]`, `E[R²]` and `M_B = ∫₀^max (1 − F(x)^B) dx` are integrated
//!      numerically (Simpson, 4,096 intervals) from the CDF `F` (`Φ((ln x − μ)/σ)`, `μ = ln mean − σ²/2`; lengths
//!      continuous). Not modelled here: continuous batching (which refills finished slots: this model is the
//!      static-batch upper end; the simulator `trainlab_sim::rlhf` refills them with the same per-step costs,
//!      [`Rollout`]), kernel launch overheads (engines run CUDA graphs), speculative decoding.
//! 2. **Experience making**: forward passes over the `S·(P + E[R])` tokens: PPO the actor's old log-probs, the
//!    reference, critic and reward model (`2·N` FLOPs per token each); rejection sampling the reward model;
//!    DPO the reference over chosen and rejected (`2·prompts` sequences). Compute-bound, limiting dimension the model's
//!    hidden width. Colocated: in series on all GPUs; disaggregated: each role on its own GPUs, in parallel (the actor's
//!    pass on the actor GPUs).
//! 3. **Training**: through the **dense step model** ([`crate::dense`], the fastest fitting layout from
//!    [`crate::search::search`]) for the actor and the critic, on packed sequences of `P + ⌈E[R]⌉` tokens: PPO trains
//!    both on `S` sequences for `ppo_epochs` passes (one optimizer step per pass; the memory check sees the trained
//!    model alone, not the colocated roles beside it); DPO trains the actor on `2·prompts` sequences; rejection
//!    sampling on `prompts` (the best response per prompt). Colocated: actor then critic; disaggregated: in parallel.
//! 4. **Weight sync**: colocated (hybrid engine), each GPU gathers its rollout shard `b·N/tp` less the training shard
//!    it holds `b·N/W` over the tier the cluster spans (NVLink within a node, the inter-node link beyond); or, with
//!    another [`WeightSource`] on a ZeRO-3 actor, the whole actor per generation call (DeepSpeed's Hybrid Engine, plus
//!    one gather each of the actor and the reference per call to score) or every layer at every decode step (HF
//!    `generate`, a floor under each decode step since ZeRO-3 prefetches them while the step runs; its KV cache is freed
//!    before training but must fit beside the training states resident during generation, an input error on
//!    `generation_batch` otherwise); those two eager engines also pay a kernel-launch floor per decode step
//!    ([`Rollout::step_floor_s`]) and, where set, a host time per layer of every forward
//!    ([`RlhfAnalytical::host_s_per_layer`]); disaggregated, every rollout GPU
//!    receives `b·N/tp` and the actor GPUs send `rollout GPUs·b·N/(tp·actor GPUs)` each, over the inter-node tier (one
//!    NIC per GPU), plus its latency.
//!
//! Phases run in series (on-policy); `iteration_time` is their sum (off-policy, disaggregated: `max(G + S, E + T + S)`,
//! the hidden `min(G, E + T)` reported as `time.overlap`), `generation_share` the generation part of it,
//! `tokens_per_s` the iteration's prompt and response tokens over it, `gpu_hours_per_iteration` the time times every
//! GPU of the cluster (idle ones included). Memory per GPU: `actor` and `critic` from the step model (weights,
//! gradients, optimizer state, activations); `rollout` the weights `b·N/tp` plus a KV cache for `B` sequences of
//! `P + max` tokens (more than the GPU holds is an input error naming `generation_batch`); `reference` and `reward`
//! their weights spread over their GPUs. The roles' memory is not summed for a colocated placement (real hybrid
//! engines offload or free parts between phases), and the training memory check sees one model at a time.
use trainlab_core::workloads::dense::{DenseTraining, ParallelConfig, TransformerSpec};
use trainlab_core::workloads::rlhf::{
    Algorithm, ColocatedEngine, Placement as RolePlacement, ResponseLength, RlhfIteration, RlhfOutcome,
};
use trainlab_core::workloads::{CollectiveAlgo, CollectiveOp};
use trainlab_core::{Backend, ClusterSpec, DeviceProfile, Error, Fidelity, RunCtx, Workload};

use crate::hardware::{AlphaBetaNetwork, GemmLaw, Network, Placement, memory_time};
use crate::roofline::datasheet_profile;

const GIB: f64 = (1u64 << 30) as f64;

/// Moments of the response length that the cost model reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LengthStats {
    /// `E[R]`, tokens.
    pub mean: f64,
    /// `E[R²]`.
    pub mean_sq: f64,
}

/// Complementary error function (Numerical Recipes `erfcc`, Chebyshev fit, fractional error below 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// CDF of the response length at `x` tokens (before truncation).
fn cdf(r: &ResponseLength, x: f64) -> f64 {
    match *r {
        ResponseLength::Histogram {
            ref lengths,
            ref weights,
        } => {
            let total: f64 = weights.iter().sum();
            lengths
                .iter()
                .zip(weights)
                .filter(|(l, _)| **l as f64 <= x)
                .map(|(_, w)| w)
                .sum::<f64>()
                / total
        }
        ResponseLength::Fixed(n) => {
            if x >= n as f64 {
                1.0
            } else {
                0.0
            }
        }
        ResponseLength::Lognormal { mean, sigma, .. } => {
            if x <= 0.0 {
                return 0.0;
            }
            let mu = mean.ln() - sigma * sigma / 2.0;
            0.5 * erfc(-(x.ln() - mu) / (sigma * std::f64::consts::SQRT_2))
        }
    }
}

/// `∫₀^max f(x) dx` by Simpson's rule on 4,096 intervals.
fn simpson(max: f64, f: impl Fn(f64) -> f64) -> f64 {
    let n = 4096;
    let h = max / n as f64;
    let mut s = f(0.0) + f(max);
    for i in 1..n {
        s += if i % 2 == 1 { 4.0 } else { 2.0 } * f(i as f64 * h);
    }
    s * h / 3.0
}

/// `E[R]` and `E[R²]` of the truncated length.
pub fn length_stats(r: &ResponseLength) -> LengthStats {
    match *r {
        ResponseLength::Histogram {
            ref lengths,
            ref weights,
        } => {
            let total: f64 = weights.iter().sum();
            let m = |k: i32| -> f64 {
                lengths
                    .iter()
                    .zip(weights)
                    .map(|(l, w)| w * (*l as f64).powi(k))
                    .sum::<f64>()
                    / total
            };
            LengthStats {
                mean: m(1),
                mean_sq: m(2),
            }
        }
        ResponseLength::Fixed(n) => LengthStats {
            mean: n as f64,
            mean_sq: (n * n) as f64,
        },
        ResponseLength::Lognormal { max, .. } => {
            let m = max as f64;
            LengthStats {
                mean: simpson(m, |x| 1.0 - cdf(r, x)),
                mean_sq: simpson(m, |x| 2.0 * x * (1.0 - cdf(r, x))),
            }
        }
    }
}

/// `E[max of batch lengths]`: the decode steps of a static batch.
pub fn expected_max(r: &ResponseLength, batch: u64) -> f64 {
    match *r {
        ResponseLength::Histogram { ref lengths, .. } => {
            // E[max] = Σ_k l_k·(F(l_k)^b − F(l_{k−1})^b) over the distinct lengths in increasing order.
            let mut ls = lengths.clone();
            ls.sort_unstable();
            ls.dedup();
            let mut prev = 0.0;
            let mut e = 0.0;
            for l in ls {
                let f = cdf(r, l as f64).powf(batch as f64);
                e += l as f64 * (f - prev);
                prev = f;
            }
            e
        }
        ResponseLength::Fixed(n) => n as f64,
        ResponseLength::Lognormal { max, .. } => simpson(max as f64, |x| 1.0 - cdf(r, x).powf(batch as f64)),
    }
}

/// The closed-form RLHF iteration model.
#[derive(Debug, Clone, Default)]
pub struct RlhfAnalytical {
    /// Device parameters; `None` uses the datasheet profile of the cluster's GPU.
    pub profile: Option<DeviceProfile>,
    /// Per-phase efficiencies (default 1: the hardware model as it stands).
    pub efficiency: PhaseEfficiency,
    /// How a colocated rollout gets the actor's weights from the training layout (default: resharded once per
    /// iteration).
    pub engine: WeightSource,
    /// The ZeRO stage the actor is trained at (the fastest fitting searched layout at that stage instead of the fastest
    /// layout), as a training stack that pins it does (DeepSpeed-Chat's scripts pass `--actor_zero_stage`: 3 in its
    /// OPT-13B/66B scripts, 2 in the script OpenRLHF's benchmark ran it with, `benchmark/deepspeed-chat/llama_7b.sh`).
    /// `None`: the layout search's best. The layout search prices ZeRO-3 only where memory needs it (and,
    /// with [`RlhfAnalytical::offload_optimizer`], searches a GPU enlarged to leave room for the offloaded state), so a
    /// ZeRO-3 pin where it priced none falls back to the fastest fitting layout; a pin to ZeRO-1 or 2 re-prices every
    /// searched layout at that stage (re-pricing every layout at the pinned stage was tried for ZeRO-3: it made DeepSpeed-Chat's 13B calibration rows on 64 GPUs training-bound beyond their
    /// published time, `tests/rlhf_published.rs`).
    pub actor_zero_stage: Option<u8>,
    /// The critic's, likewise (`--critic_zero_stage`).
    pub critic_zero_stage: Option<u8>,
    /// The actor's and critic's optimizer states (fp32 master weights and Adam moments, 12 bytes per parameter over
    /// the ZeRO shards) live in host memory (DeepSpeed `offload_optimizer`; DeepSpeed-Chat's `--offload`, OpenRLHF's
    /// `--adam_offload`): they leave the GPU's memory (the layout needs only its parameters, gradients and
    /// activations to fit, and the resident training states beside HF `generate` shrink by them). The CPU Adam step
    /// and the PCIe traffic are not priced: that time is left to the training efficiency.
    pub offload_optimizer: bool,
    /// Host seconds per layer of one eager forward (a prefill or a decode step) of an engine that runs the model's
    /// Python modules ([`WeightSource::GatherPerCall`], [`WeightSource::GatherPerStep`]; 0 for the default
    /// resharding engine, which replays CUDA graphs): [`Rollout::host_step_s`] is this times the actor's layers. It
    /// stands for what the device model does not see in HuggingFace `generate`'s eager loop: per module the Python
    /// dispatch of its operators and, on a ZeRO-3 module, DeepSpeed's pre- and post-forward hooks (fetch, release);
    /// per step the logits processing, sampling, the `input_ids` concatenation and the stopping check that
    /// synchronises host and device (transformers `generation/utils.py`, `_sample`). Default 0; not a datasheet
    /// constant: `tests/rlhf_published.rs` fits it on a calibration row.
    pub host_s_per_layer: f64,
    /// Sequences per optimizer step of the actor and critic (`None`: one step over all the iteration's training
    /// sequences). A training stack that splits the rollout batch into train batches steps the optimizer once per
    /// train batch, and each step pays the gradient synchronisation and the optimizer update again: OpenRLHF's
    /// benchmark ran "rollout batch 1024, train batch 128" (`benchmark/README.md`); DeepSpeed-Chat's step-3 trainer
    /// calls the engines' `step()` once per `per_device_training_batch_size` × GPUs sequences with
    /// `--gradient_accumulation_steps 1` (DeepSpeedExamples step 3 `main.py` and its OPT scripts). The iteration trains
    /// `⌈S/train_batch⌉` steps of `min(train_batch, S)` sequences, each through the dense step model.
    pub train_batch: Option<u64>,
}

/// Host seconds per layer of one eager forward of HuggingFace `generate` on a ZeRO-3 module
/// ([`RlhfAnalytical::host_s_per_layer`] for the workload's `colocated_engine = "hf_generate"`): **calibration**, the
/// value `tests/rlhf_published.rs` fits on OpenRLHF's Llama2-7B HF row (2026-12-02: 0.44 ms, 14 ms per decode step of
/// a 32-layer model); that test checks this constant against its fit.
pub const HF_GENERATE_HOST_S_PER_LAYER: f64 = 0.44e-3;

/// Where a colocated rollout engine reads the actor's weights from. The gathers below happen only when the actor's
/// training layout (the step model's searched best) partitions its parameters (ZeRO-3 over more than one
/// data-parallel rank); otherwise every GPU already holds them and generation reads them in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightSource {
    /// A hybrid engine reshards the actor into the rollout layout once per iteration: each GPU receives its rollout
    /// shard `b·N/tp` less the training shard it holds, over the tier the cluster spans (NVLink within one node,
    /// the inter-node link beyond).
    #[default]
    Resharded,
    /// DeepSpeed's Hybrid Engine with pinned parameters (`hybrid_engine.pin_parameters`, DeepSpeed
    /// `runtime/hybrid_engine.py`: `generate` wraps the whole generation call in one `GatheredParameters` of every
    /// layer): each generation call (one static wave) all-gathers the whole actor, `b·N` bytes, over the
    /// data-parallel group; charged as weight sync, once per wave.
    GatherPerCall,
    /// HuggingFace `generate` on the ZeRO-3-partitioned training module (DeepSpeed-Chat or OpenRLHF without an
    /// inference engine): every forward, the prefill and each decode step, all-gathers every layer's parameters
    /// (one collective per layer, `b·N/L` bytes, over the data-parallel group, latency included); a floor under each
    /// decode step (prefetched while it runs, [`Rollout::step_floor_s`]), added to the prefill. No resharding.
    GatherPerStep,
}

/// A cluster of `g` GPUs of `c`'s kind (whole nodes beyond one node; validation checks that).
fn sub_cluster(c: &ClusterSpec, g: u64) -> ClusterSpec {
    let gpn = c.gpus_per_node as u64;
    let mut out = c.clone();
    if g <= gpn {
        out.nodes = 1;
        out.gpus_per_node = g as u32;
    } else {
        out.nodes = (g / gpn) as u32;
    }
    out
}

/// Per-phase efficiencies: every time of a phase is divided by its efficiency (1: the hardware model as it stands).
/// They stand for what the hardware model leaves out of a real system (HF `generate` without paged KV or CUDA
/// graphs, ZeRO-3 gathers, padding, Python overheads); fitted to published rows in `tests/rlhf_published.rs`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseEfficiency {
    /// Generation (prefill and decode).
    pub generation: f64,
    /// Experience making and training.
    pub training: f64,
}

impl Default for PhaseEfficiency {
    fn default() -> Self {
        PhaseEfficiency {
            generation: 1.0,
            training: 1.0,
        }
    }
}

/// The per-step costs of one rollout engine: what the closed form sums over a static wave and the simulator
/// charges step by step. Times are already divided by the generation efficiency.
#[derive(Debug, Clone, Copy)]
pub struct Rollout {
    /// Rollout engines (`rollout GPUs / rollout_tp`).
    pub engines: u64,
    /// Sequences one engine decodes together: `generation_batch`, balanced over the waves of the engine's
    /// `⌈S/E⌉` sequences.
    pub slots: u64,
    /// Static waves per engine.
    pub waves: u64,
    /// Prompt length, tokens.
    pub prompt_len: f64,
    /// Weight bytes per GPU.
    pub weight_bytes: f64,
    /// KV-cache bytes per token per GPU.
    pub kv_bytes_per_token: f64,
    /// Rollout memory per GPU, bytes.
    pub memory: f64,
    law: GemmLaw,
    net: AlphaBetaNetwork,
    group: Placement,
    flops_per_token: f64,
    layers: f64,
    hidden: f64,
    bytes: f64,
    tp: u64,
    efficiency: f64,
    /// Parameter gathers of one forward (prefill or decode step), seconds: [`WeightSource::GatherPerStep`] on a
    /// ZeRO-3 actor, else 0.
    pub step_gather_s: f64,
    /// Kernel-launch floor of one decode step, seconds: an eager engine (no CUDA graphs: the Hybrid Engine and HF
    /// `generate`, [`WeightSource::GatherPerCall`] and [`WeightSource::GatherPerStep`]) launches
    /// [`DECODE_KERNELS_PER_LAYER`] kernels per layer at the profile's launch overhead, and a step takes no less; 0
    /// for an engine that replays CUDA graphs.
    pub launch_floor_s: f64,
    /// Host time of one forward (the prefill of a wave, or one decode step), seconds, added to it: it does not
    /// overlap the device work because the eager loop synchronises every step ([`RlhfAnalytical::host_s_per_layer`]
    /// times the layers; 0 for a CUDA-graph engine). Not divided by the generation efficiency (host, not device,
    /// time).
    pub host_step_s: f64,
}

/// Kernels an eager decode step launches per layer (the dense step model's forward count: 6-7 GEMMs, 2 norms,
/// activation, residual adds, rotary/softmax).
pub const DECODE_KERNELS_PER_LAYER: f64 = 12.0;

impl Rollout {
    /// The rollout engines of `w` on `rollout_gpus` GPUs; an input error when the weights and the KV cache of a
    /// batch do not fit in the GPU's memory.
    pub fn new(
        w: &RlhfIteration,
        law: &GemmLaw,
        net: &AlphaBetaNetwork,
        rollout_gpus: u64,
        efficiency: f64,
    ) -> Result<Rollout, Error> {
        let m = &w.actor;
        let (b, tp) = (w.dtype.bytes() as f64, w.rollout_tp);
        let engines = (rollout_gpus / tp).max(1);
        let seqs = w.generated_sequences().div_ceil(engines);
        let waves = seqs.div_ceil(w.generation_batch);
        let batch = seqs.div_ceil(waves);
        let (l, h) = (m.layers as f64, m.hidden as f64);
        let weights = b * m.params() / tp as f64;
        let kv = 2.0 * l * m.kv() as f64 * (h / m.heads as f64) * b / tp as f64;
        let memory = weights + batch as f64 * (w.prompt_len + w.response.max()) as f64 * kv;
        let have = w.cluster.gpu.memory_bytes as f64;
        if weights > have {
            return Err(Error::invalid(
                "workload.rollout_tp",
                tp,
                format!(
                    "the actor's weights alone need {:.1} GiB per GPU of a rollout engine, more than the {:.0} GiB of a {}",
                    weights / GIB,
                    have / GIB,
                    w.cluster.gpu.name
                ),
                "raise rollout_tp",
            ));
        }
        if memory > have {
            return Err(Error::invalid(
                "workload.generation_batch",
                w.generation_batch,
                format!(
                    "a rollout engine needs {:.1} GiB per GPU (weights and the KV cache of {batch} sequences of {} \
                     tokens at {} key/value heads, workload.actor.kv_heads{}), more than the {:.0} GiB of a {}",
                    memory / GIB,
                    w.prompt_len + w.response.max(),
                    m.kv(),
                    if m.kv_heads.is_none() {
                        " left out: multi-head attention"
                    } else {
                        ""
                    },
                    have / GIB,
                    w.cluster.gpu.name
                ),
                "lower generation_batch, raise rollout_tp, or give workload.actor.kv_heads of a grouped-query model",
            ));
        }
        Ok(Rollout {
            engines,
            slots: batch,
            waves,
            prompt_len: w.prompt_len as f64,
            weight_bytes: weights,
            kv_bytes_per_token: kv,
            memory,
            law: *law,
            net: *net,
            group: Placement::packed(tp, w.cluster.gpus_per_node as u64),
            flops_per_token: 2.0 * m.params() / tp as f64,
            layers: l,
            hidden: h,
            bytes: b,
            tp,
            efficiency,
            step_gather_s: 0.0,
            launch_floor_s: 0.0,
            host_step_s: 0.0,
        })
    }

    fn allreduce(&self, bytes: f64) -> f64 {
        if self.tp > 1 {
            self.net
                .collective_time(CollectiveOp::AllReduce, CollectiveAlgo::Auto, bytes, self.group)
                .0
        } else {
            0.0
        }
    }

    /// Prefill of `k` prompts together: `2·N·k·P/tp` FLOPs (limiting dimension `k·P`) or the weights read once,
    /// whichever is slower, plus two tensor-parallel all-reduces of the activations per layer.
    pub fn prefill_s(&self, k: f64) -> f64 {
        let tokens = k * self.prompt_len;
        (self.law.time(self.flops_per_token * tokens, self.weight_bytes, tokens)
            + 2.0 * self.layers * self.allreduce(tokens * self.hidden * self.bytes)
            + self.step_gather_s)
            / self.efficiency
            + self.host_step_s
    }

    /// Memory time of decode steps reading the weights `steps` times and `kv_tokens` cached tokens.
    pub fn decode_memory_s(&self, steps: f64, kv_tokens: f64) -> f64 {
        memory_time(
            steps * self.weight_bytes + kv_tokens * self.kv_bytes_per_token,
            self.law.mem_bw_bytes_per_s,
        ) / self.efficiency
    }

    /// The floor of one decode step over the generation efficiency: its kernel launches ([`Rollout::launch_floor_s`])
    /// or its per-step parameter gathers ([`Rollout::step_gather_s`]), whichever is longer. The gathers overlap the
    /// step's own HBM traffic and compute rather than adding to them: ZeRO-3 prefetches the parameters of the next
    /// modules on a separate stream while the current one runs (DeepSpeed configuration `stage3_prefetch_bucket_size`,
    /// "the size of the fixed buffer for prefetching parameters"; DeepSpeed `runtime/zero/partitioned_param_coordinator.py`).
    pub fn step_floor_s(&self) -> f64 {
        self.launch_floor_s.max(self.step_gather_s) / self.efficiency
    }

    /// Compute time of decoding `tokens` tokens at a live batch of `live` sequences.
    pub fn decode_compute_s(&self, tokens: f64, live: f64) -> f64 {
        self.law.compute_time(self.flops_per_token * tokens, live) / self.efficiency
    }

    /// The additive part of one decode step at a live batch of `live` sequences: its tensor-parallel all-reduces
    /// (over the generation efficiency) and its host time ([`Rollout::host_step_s`]). The per-step parameter gathers
    /// are a floor ([`Rollout::step_floor_s`]), not added here.
    pub fn decode_comm_s(&self, live: f64) -> f64 {
        2.0 * self.layers * self.allreduce(live * self.hidden * self.bytes) / self.efficiency + self.host_step_s
    }
}

/// Generation time `(prefill, decode)`, the rollout memory per GPU and the mean slot occupancy of the static waves
/// (`E[R]/M_B`).
fn generation(w: &RlhfIteration, ro: &Rollout) -> (f64, f64, f64, f64) {
    let bf = ro.slots as f64;
    let p = ro.prompt_len;
    let st = length_stats(&w.response);
    let steps = expected_max(&w.response, ro.slots);
    let prefill = ro.prefill_s(bf);
    let live = bf * st.mean / steps;
    // A roofline over the wave: memory of every step against the compute of every token.
    let mem = ro.decode_memory_s(steps, bf * (p * st.mean + st.mean_sq / 2.0));
    let compute = ro.decode_compute_s(bf * st.mean, live);
    let decode = mem.max(compute).max(steps * ro.step_floor_s()) + steps * ro.decode_comm_s(live);
    let waves = ro.waves as f64;
    (prefill * waves, decode * waves, ro.memory, st.mean / steps)
}

/// Model-state bytes per GPU of `m` trained in layout `cfg` (the step model's [`crate::dense::zero_state_bytes`],
/// tensor and pipeline parallelism splitting them all), without activations.
fn model_state_bytes(m: &TransformerSpec, cfg: &ParallelConfig) -> f64 {
    crate::dense::zero_state_bytes(
        m.params() / (cfg.tp * cfg.pp) as f64,
        cfg.zero_stage,
        (cfg.dp * cfg.cp) as f64,
    )
}

/// Optimizer-state bytes per GPU of `m` trained in layout `cfg`: fp32 master weights and two Adam moments, 12 bytes
/// per parameter, sharded from ZeRO stage 1 on (the part of [`crate::dense::zero_state_bytes`] an optimizer offload
/// moves to the host).
fn optimizer_state_bytes(m: &TransformerSpec, cfg: &ParallelConfig) -> f64 {
    let p = m.params() / (cfg.tp * cfg.pp) as f64;
    if cfg.zero_stage == 0 {
        12.0 * p
    } else {
        12.0 * p / (cfg.dp * cfg.cp) as f64
    }
}

/// Forward time of `m` over `tokens` tokens on `gpus` GPUs.
fn forward(m: &TransformerSpec, tokens: f64, gpus: u64, law: &GemmLaw) -> f64 {
    law.compute_time(2.0 * m.params() * tokens / gpus as f64, m.hidden as f64)
}

/// How a placement error names the placement: colocated, or generation on the actor's GPUs.
fn placement_label(w: &RlhfIteration) -> &'static str {
    if w.rollout_on_actor() {
        "disaggregated, rollout_gpus = 0"
    } else {
        "colocated"
    }
}

/// Training time of `m` on `seqs` packed sequences of `seq_len` tokens on `gpus` GPUs, through the dense step model,
/// one optimizer step per `train_batch` sequences ([`RlhfAnalytical::train_batch`]; one step when `None`):
/// `(time of all the steps, memory per GPU, layout)`.
#[allow(clippy::too_many_arguments)]
fn train(
    w: &RlhfIteration,
    role: &str,
    m: &TransformerSpec,
    seqs: u64,
    seq_len: u64,
    gpus: u64,
    profile: Option<&DeviceProfile>,
    budget: Option<f64>,
    stage: Option<u8>,
    offload: bool,
    train_batch: Option<u64>,
) -> Result<(f64, f64, ParallelConfig), Error> {
    // One optimizer step per train batch: `steps` steps of `seqs` sequences each.
    let (seqs, steps) = match train_batch {
        Some(tb) if tb > 0 && tb < seqs => (tb, seqs.div_ceil(tb)),
        _ => (seqs, 1),
    };
    let mut model = m.clone();
    model.seq_len = seq_len;
    let mut cluster = sub_cluster(&w.cluster, gpus);
    let have = budget.unwrap_or(cluster.gpu.memory_bytes as f64).max(0.0);
    // Offloaded, a layout needs its memory less its optimizer state to fit: the search runs on a GPU that large
    // enough and the rows are filtered below.
    let opt_bytes = |c: &ParallelConfig| if offload { optimizer_state_bytes(m, c) } else { 0.0 };
    cluster.gpu.memory_bytes = if offload {
        cluster.gpu.memory_bytes.max(4 * have as u64)
    } else {
        have as u64
    };
    let d = DenseTraining::new(model, cluster, seqs * seq_len, (seqs * seq_len) as f64, w.dtype);
    let usable = (1.0 - crate::dense::MEMORY_HEADROOM) * have;
    let best = match (crate::search::search(&d, profile), budget) {
        // A pinned stage (the search prices ZeRO-3 only where memory needs it): the fastest fitting row at that stage,
        // else the fastest fitting row. (Re-pricing every layout at stage 3 was tried: on 64 GPUs its per-layer
        // gathers make the 13B calibration rows training-bound beyond the published time; not used.)
        (Ok(mut r), _) if stage.is_some() || offload => {
            // A pin below ZeRO-3 re-prices every searched layout at that stage (the search itself moves a layout to
            // ZeRO-2 wherever ZeRO-1 does not fit); ZeRO-3 is kept where the search priced it (see `actor_zero_stage`).
            if let Some(s @ 1..=2) = stage {
                let owned;
                let p = match profile {
                    Some(p) => p,
                    None => {
                        owned = datasheet_profile(&d.cluster.gpu);
                        &owned
                    }
                };
                for row in r.rows.iter_mut() {
                    let cfg = ParallelConfig {
                        zero_stage: s,
                        ..row.outcome.config
                    };
                    *row = crate::search::row_of(&d, &cfg, p);
                }
            }
            let fits = |o: &trainlab_core::workloads::dense::DenseOutcome| {
                o.memory_per_gpu_bytes - opt_bytes(&o.config) <= usable
            };
            let pick = |st: Option<u8>| {
                r.rows
                    .iter()
                    .filter(|row| row.fits || offload)
                    .map(|row| &row.outcome)
                    .filter(|o| fits(o) && st.is_none_or(|s| o.config.zero_stage == s))
                    .min_by(|a, b| a.step_time_s.total_cmp(&b.step_time_s))
                    .cloned()
            };
            match pick(stage).or_else(|| pick(None)) {
                Some(o) => o,
                None => {
                    return Err(Error::invalid(
                        "workload.placement",
                        placement_label(w),
                        format!(
                            "training the {role} ({seqs} sequences of {seq_len} tokens on {gpus} GPUs) fits in no \
                             layout within {:.1} GiB per GPU with its optimizer state offloaded",
                            have / GIB
                        ),
                        "use a disaggregated placement, more nodes, or a smaller generation_batch",
                    ));
                }
            }
        }
        (Ok(r), _) => r.best,
        (Err(e), Some(b)) if e.is_user_error() => {
            return Err(Error::invalid(
                "workload.placement",
                placement_label(w),
                format!(
                    "training the {role} ({seqs} sequences of {seq_len} tokens on {gpus} GPUs) fits in no layout \
                     within the {:.1} GiB per GPU the {} leave it ({e})",
                    b / GIB,
                    if w.rollout_on_actor() {
                        "rollout's KV cache on the actor's GPUs"
                    } else {
                        "other colocated roles"
                    }
                ),
                "use a disaggregated placement, more nodes, or a smaller generation_batch",
            ));
        }
        (Err(e), _) => {
            return Err(e.map_field(|f| {
                format!("{f} (training the {role}: {seqs} sequences of {seq_len} tokens on {gpus} GPUs)")
            }));
        }
    };
    Ok((
        best.step_time_s * steps as f64,
        best.memory_per_gpu_bytes - opt_bytes(&best.config),
        best.config,
    ))
}

impl Backend<RlhfIteration> for RlhfAnalytical {
    fn name(&self) -> &str {
        "analytical"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, w: &RlhfIteration, _: &mut RunCtx) -> Result<RlhfOutcome, Error> {
        Ok(self.model(w)?.1)
    }
}

impl RlhfAnalytical {
    /// Model-state bytes per GPU of `m` in layout `cfg` that stay on the GPU: less the optimizer state when it is
    /// offloaded ([`RlhfAnalytical::offload_optimizer`]).
    fn resident_state_bytes(&self, m: &TransformerSpec, cfg: &ParallelConfig) -> f64 {
        model_state_bytes(m, cfg)
            - if self.offload_optimizer {
                optimizer_state_bytes(m, cfg)
            } else {
                0.0
            }
    }

    /// The closed form's generation `(prefill, decode)` seconds of `w` on the engines `ro`.
    pub fn closed_form_generation(w: &RlhfIteration, ro: &Rollout) -> (f64, f64) {
        let (p, d, _, _) = generation(w, ro);
        (p, d)
    }

    /// The closed form of `w`: the rollout engines' per-step costs (`None` without generation) and the outcome.
    /// The workload's `colocated_engine` chooses the engine ([`WeightSource`] and host time) unless this model's
    /// `engine` was set to another than the default.
    pub fn model(&self, w: &RlhfIteration) -> Result<(Option<Rollout>, RlhfOutcome), Error> {
        let (engine, host) = match w.colocated_engine {
            ColocatedEngine::Resharded => (WeightSource::Resharded, 0.0),
            ColocatedEngine::HybridEngine => (WeightSource::GatherPerCall, 0.0),
            ColocatedEngine::HfGenerate => (WeightSource::GatherPerStep, HF_GENERATE_HOST_S_PER_LAYER),
        };
        if self.engine == WeightSource::Resharded && engine != WeightSource::Resharded {
            let host_s_per_layer = if self.host_s_per_layer > 0.0 {
                self.host_s_per_layer
            } else {
                host
            };
            return RlhfAnalytical {
                engine,
                host_s_per_layer,
                ..self.clone()
            }
            .model_of(w);
        }
        self.model_of(w)
    }

    /// [`RlhfAnalytical::model`] with this model's engine as it is.
    fn model_of(&self, w: &RlhfIteration) -> Result<(Option<Rollout>, RlhfOutcome), Error> {
        w.validate()?;
        let owned;
        let profile = match &self.profile {
            Some(p) => {
                p.check_gpu(&w.cluster.gpu.name)?;
                p
            }
            None => {
                owned = datasheet_profile(&w.cluster.gpu);
                &owned
            }
        };
        let law = GemmLaw::of(profile, w.dtype);
        let net = AlphaBetaNetwork::of(&w.cluster);
        let [actor_g, rollout_g, ref_g, critic_g, reward_g] = w.role_gpus();
        let colocated = matches!(w.placement, RolePlacement::Colocated);
        // Disaggregated with `rollout_gpus = 0`: the actor's training GPUs generate (from the training module, as a
        // colocated engine does), the other roles run on their own GPUs.
        let on_actor = w.rollout_on_actor();
        let rollout_g = if on_actor { actor_g } else { rollout_g };
        let gpus = w.cluster.gpus();
        let st = length_stats(&w.response);
        let seq = w.prompt_len as f64 + st.mean;
        let seq_len = w.prompt_len + st.mean.ceil() as u64;
        let b = w.dtype.bytes() as f64;
        let mut memory = Vec::new();

        let eff = self.efficiency;

        // 1. Generation.
        // (Its time is computed after training: per-step gathers depend on the actor's training layout.)
        let mut rollout = if w.algorithm.generates() {
            let ro = Rollout::new(w, &law, &net, rollout_g, eff.generation)?;
            memory.push(("rollout".to_string(), ro.memory));
            Some(ro)
        } else {
            None
        };

        // 2. Experience making: (model, sequences, GPUs).
        let s = w.generated_sequences() as f64;
        let passes: Vec<(&TransformerSpec, f64, u64)> = match w.algorithm {
            Algorithm::Ppo => vec![
                (&w.actor, s, actor_g),
                (w.reference.as_ref().expect("validated"), s, ref_g),
                (w.critic.as_ref().expect("validated"), s, critic_g),
                (w.reward.as_ref().expect("validated"), s, reward_g),
            ],
            Algorithm::Dpo => vec![(w.reference.as_ref().expect("validated"), 2.0 * w.prompts as f64, ref_g)],
            Algorithm::RejectionSampling => vec![(w.reward.as_ref().expect("validated"), s, reward_g)],
        };
        let times = passes
            .iter()
            .map(|(m, n, g)| forward(m, n * seq, *g, &law) / eff.training);
        let mut experience_s = if colocated {
            times.sum()
        } else {
            times.fold(0.0, f64::max)
        };

        // 3. Training.
        let p = Some(profile);
        let (train_seqs, epochs) = match w.algorithm {
            Algorithm::Ppo => (w.generated_sequences(), w.ppo_epochs),
            Algorithm::Dpo => (2 * w.prompts, 1),
            Algorithm::RejectionSampling => (w.prompts, 1),
        };
        // Colocated: the trained roles get what the frozen roles' weights and the rollout's KV cache leave of each
        // GPU, split by parameter count (the rollout's weights are the actor's, resharded in place).
        let (actor_budget, critic_budget) = if colocated {
            let have = w.cluster.gpu.memory_bytes as f64;
            let frozen: f64 = [&w.reference, &w.reward]
                .iter()
                .filter_map(|m| m.as_ref())
                .map(|m| b * m.params() / gpus as f64)
                .sum();
            // HF `generate` (`GatherPerStep`) allocates its KV cache inside the call and frees it on return: it is not
            // resident while the actor and critic train.
            let kv = if self.engine == WeightSource::GatherPerStep {
                0.0
            } else {
                rollout.as_ref().map_or(0.0, |ro| ro.memory - ro.weight_bytes)
            };
            let left = have - frozen - kv;
            if left <= 0.0 {
                return Err(Error::invalid(
                    "workload.generation_batch",
                    w.generation_batch,
                    format!(
                        "colocated, the frozen roles' weights ({:.1} GiB) and the rollout's KV cache ({:.1} GiB) fill \
                         the {:.0} GiB of a {} before the actor is trained",
                        frozen / GIB,
                        kv / GIB,
                        have / GIB,
                        w.cluster.gpu.name
                    ),
                    "lower generation_batch, add nodes, or use a disaggregated placement",
                ));
            }
            let na = w.actor.params();
            let nc = w.critic.as_ref().map_or(0.0, |c| c.params());
            (Some(left * na / (na + nc)), Some(left * nc / (na + nc)))
        } else if on_actor && self.engine != WeightSource::GatherPerStep {
            // The actor's GPUs keep the rollout's KV cache beside its training states.
            let kv = rollout.as_ref().map_or(0.0, |ro| ro.memory - ro.weight_bytes);
            (Some(w.cluster.gpu.memory_bytes as f64 - kv), None)
        } else {
            (None, None)
        };
        let (actor_step, actor_mem, actor_cfg) = train(
            w,
            "actor",
            &w.actor,
            train_seqs,
            seq_len,
            actor_g,
            p,
            actor_budget,
            self.actor_zero_stage,
            self.offload_optimizer,
            self.train_batch,
        )?;
        memory.push(("actor".to_string(), actor_mem));
        let mut training = vec![actor_step * epochs as f64 / eff.training];
        let mut critic_state = 0.0;
        if let Some(c) = &w.critic {
            let (step, mem, cfg) = train(
                w,
                "critic",
                c,
                train_seqs,
                seq_len,
                critic_g,
                p,
                critic_budget,
                self.critic_zero_stage,
                self.offload_optimizer,
                self.train_batch,
            )?;
            memory.push(("critic".to_string(), mem));
            critic_state = self.resident_state_bytes(c, &cfg);
            training.push(step * epochs as f64 / eff.training);
        }
        let training_s = if colocated {
            training.iter().sum()
        } else {
            training.iter().copied().fold(0.0, f64::max)
        };
        for (role, m, g) in [("reference", &w.reference, ref_g), ("reward", &w.reward, reward_g)] {
            if let Some(m) = m {
                memory.push((role.to_string(), b * m.params() / g as f64));
            }
        }

        // 1 (continued). Generation, now that the actor's training layout is known: a colocated engine on a ZeRO-3
        // actor gathers its parameters over the actor's data-parallel group (`WeightSource`).
        let gpn = w.cluster.gpus_per_node as u64;
        let sharded = (colocated || on_actor) && actor_cfg.zero_stage == 3 && actor_cfg.dp > 1;
        let dp_group = Placement {
            ranks: actor_cfg.dp,
            per_node: (gpn / actor_cfg.tp.clamp(1, gpn)).clamp(1, actor_cfg.dp.max(1)),
        };
        let gather = |bytes: f64| {
            net.collective_time(CollectiveOp::AllGather, CollectiveAlgo::Ring, bytes, dp_group)
                .0
        };
        // HF `generate` runs inside the training process: the actor's and critic's model states (parameters,
        // gradients, optimizer state, as their layouts shard them) and the frozen roles' weights stay resident while
        // its KV cache (and the gathered layer) is allocated.
        if let Some(ro) = rollout.as_ref()
            && (colocated || on_actor)
            && self.engine == WeightSource::GatherPerStep
        {
            // Colocated, every role's states share the GPU; on the actor's own GPUs, only the actor's.
            let frozen: f64 = if colocated {
                [&w.reference, &w.reward]
                    .iter()
                    .filter_map(|m| m.as_ref())
                    .map(|m| b * m.params() / gpus as f64)
                    .sum::<f64>()
                    + critic_state
            } else {
                0.0
            };
            let resident = self.resident_state_bytes(&w.actor, &actor_cfg) + frozen;
            let kv = ro.memory - ro.weight_bytes;
            let layer = b * w.actor.params() / w.actor.layers as f64;
            let have = w.cluster.gpu.memory_bytes as f64 * (1.0 - crate::dense::MEMORY_HEADROOM);
            if resident + kv + layer > have {
                return Err(Error::invalid(
                    "workload.generation_batch",
                    w.generation_batch,
                    format!(
                        "HF generate's KV cache ({:.1} GiB for {} sequences) does not fit beside the training states \
                         resident on each GPU ({:.1} GiB) within the {:.0} GiB usable of a {}",
                        kv / GIB,
                        ro.slots,
                        resident / GIB,
                        have / GIB,
                        w.cluster.gpu.name
                    ),
                    "lower generation_batch",
                ));
            }
        }
        if let Some(ro) = rollout.as_mut()
            && self.engine != WeightSource::Resharded
        {
            ro.launch_floor_s = w.actor.layers as f64 * DECODE_KERNELS_PER_LAYER * profile.launch_overhead_s;
            ro.host_step_s = w.actor.layers as f64 * self.host_s_per_layer;
        }
        if let Some(ro) = rollout.as_mut()
            && sharded
            && self.engine == WeightSource::GatherPerStep
        {
            let l = w.actor.layers as f64;
            ro.step_gather_s = l * gather(b * w.actor.params() / l);
        }
        // An engine that generates from the ZeRO-3 training module in place (`GatherPerCall`, `GatherPerStep`) scores
        // with it too: per generation call (wave) the actor's and the reference's forward passes each all-gather
        // their parameters once (DeepSpeed-Chat partitions the reference like the actor under ZeRO-3).
        if sharded && self.engine != WeightSource::Resharded {
            let waves = rollout.as_ref().map_or(1, |r| r.waves) as f64;
            // The reference shares the actor's ZeRO-3 group only when colocated.
            let reference = if colocated {
                w.reference.as_ref().map_or(0.0, |m| m.params())
            } else {
                0.0
            };
            experience_s += waves * (gather(b * w.actor.params()) + gather(b * reference)) / eff.training;
        }
        let (prefill_s, decode_s, occupancy) = match &rollout {
            Some(ro) => {
                let (p, d, _, occ) = generation(w, ro);
                (p, d, occ)
            }
            None => (0.0, 0.0, 0.0),
        };

        // 4. Weight sync.
        let shard = b * w.actor.params() / w.rollout_tp as f64;
        let sync_s = if !w.algorithm.generates() {
            0.0
        } else if colocated || on_actor {
            match (self.engine, sharded) {
                (WeightSource::GatherPerCall, true) => {
                    let waves = rollout.as_ref().map_or(0, |r| r.waves) as f64;
                    waves * gather(b * w.actor.params())
                }
                (WeightSource::GatherPerStep, _) => 0.0,
                _ => {
                    let span = if colocated { gpus } else { actor_g };
                    let link = if span > gpn { &w.cluster.inter } else { &w.cluster.intra };
                    memory_time(
                        (shard - b * w.actor.params() / span as f64).max(0.0),
                        link.bandwidth_bytes_per_s,
                    ) + link.latency_s
                }
            }
        } else {
            let sent = rollout_g as f64 * shard / actor_g as f64;
            memory_time(shard.max(sent), w.cluster.inter.bandwidth_bytes_per_s) + w.cluster.inter.latency_s
        };

        let seqs = match w.algorithm {
            Algorithm::Dpo => 2.0 * w.prompts as f64,
            _ => s,
        };
        memory.sort_by(|a, b| a.0.cmp(&b.0));
        if colocated {
            // Everything resident on one GPU when the roles share it: the trained roles' peaks, the frozen roles'
            // weights and the rollout's KV cache (its weights are the actor's, resharded in place). An upper bound:
            // it assumes the KV cache is kept during training (no offload or free between phases). The trained roles
            // were searched within what the others leave, so the sum fits by construction.
            let kv = if self.engine == WeightSource::GatherPerStep {
                0.0
            } else {
                rollout.as_ref().map_or(0.0, |ro| ro.memory - ro.weight_bytes)
            };
            let resident = memory
                .iter()
                .filter(|(r, _)| r != "rollout")
                .map(|(_, b)| *b)
                .sum::<f64>()
                + kv;
            memory.push(("colocated_sum".to_string(), resident));
        }
        // Off-policy: generation (and sync) of the next iteration runs while this one is scored and trained; in
        // steady state an iteration takes max(G + S, E + T + S), hiding min(G, E + T).
        let overlap_s = if w.off_policy {
            (prefill_s + decode_s).min(experience_s + training_s)
        } else {
            0.0
        };
        let out = RlhfOutcome {
            prefill_s,
            decode_s,
            experience_s,
            training_s,
            sync_s,
            tokens: seqs * seq,
            gpus,
            memory_per_gpu: memory,
            overlap_s,
            rollout_occupancy: occupancy,
            iteration_time_ci: None,
        };
        Ok((rollout, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_and_lognormal_moments() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-7);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-7);
        // A wide cap leaves the lognormal whole: E[R] = mean, E[R²] = mean²·e^{σ²}.
        let r = ResponseLength::Lognormal {
            mean: 200.0,
            sigma: 0.5,
            max: 20_000,
        };
        let s = length_stats(&r);
        assert!((s.mean - 200.0).abs() < 0.1, "{s:?}");
        assert!((s.mean_sq / (40_000.0 * 0.25f64.exp()) - 1.0).abs() < 1e-3, "{s:?}");
        // The expected max of a batch grows with the batch and stays under the cap; one draw is the mean.
        assert!((expected_max(&r, 1) - s.mean).abs() < 1e-9);
        let (m8, m256) = (expected_max(&r, 8), expected_max(&r, 256));
        assert!(s.mean < m8 && m8 < m256 && m256 < 20_000.0, "{m8} {m256}");
        // A tight cap truncates: the mean falls and the max of a large batch reaches the cap.
        let t = ResponseLength::Lognormal {
            mean: 200.0,
            sigma: 1.0,
            max: 256,
        };
        assert!(length_stats(&t).mean < 200.0);
        assert!(expected_max(&t, 4096) > 255.0);
    }
}

#[cfg(test)]
mod decode_tests {
    use super::*;
    use std::collections::BTreeMap;
    use trainlab_core::workloads::rlhf::Placement as RolePlacement;
    use trainlab_core::{Dtype, GpuSpec, LinkSpec};

    fn model() -> TransformerSpec {
        TransformerSpec {
            name: "t".into(),
            layers: 2,
            hidden: 64,
            heads: 4,
            kv_heads: None,
            ffn_hidden: 256,
            gated_ffn: false,
            vocab: 100,
            seq_len: 128,
        }
    }

    fn iteration(batch: u64) -> RlhfIteration {
        let link = LinkSpec {
            bandwidth_bytes_per_s: 1e9,
            latency_s: 0.0,
        };
        RlhfIteration {
            algorithm: Algorithm::RejectionSampling,
            actor: model(),
            reference: None,
            critic: None,
            reward: Some(model()),
            prompts: 64,
            prompt_len: 10,
            response: ResponseLength::Fixed(100),
            samples_per_prompt: 1,
            ppo_epochs: 1,
            placement: RolePlacement::Colocated,
            generation_batch: batch,
            rollout_tp: 1,
            off_policy: false,
            colocated_engine: Default::default(),
            dtype: Dtype::Bf16,
            cluster: ClusterSpec {
                gpu: GpuSpec {
                    name: "toy".into(),
                    memory_bytes: 1 << 40,
                    peak_flops: BTreeMap::from([(Dtype::Bf16, 1e12)]),
                    hbm_bandwidth_bytes_per_s: 1e9,
                    nvlink_bandwidth_bytes_per_s: 1e9,
                    tdp_watts: 1.0,
                    source: "test".into(),
                    sm: None,
                },
                gpus_per_node: 1,
                nodes: 1,
                intra: link,
                inter: link,
            },
        }
    }

    fn decode(batch: u64, rate: f64, bw: f64) -> f64 {
        let w = iteration(batch);
        let law = GemmLaw {
            rate_flops_per_s: rate,
            half_dim: 0.0,
            mem_bw_bytes_per_s: bw,
        };
        let ro = Rollout::new(&w, &law, &AlphaBetaNetwork::of(&w.cluster), 1, 1.0).unwrap();
        generation(&w, &ro).1
    }

    #[test]
    fn decode_by_hand_memory_bound() {
        // 64 sequences in waves of 8: 8 waves of 100 steps. Per wave: weights 2·N bytes per step, KV
        // 8·(10·100 + 100²/2) tokens read of 2·L·H·2 = 512 bytes each; compute negligible at 1e18 FLOP/s.
        let n = model().params();
        let per_wave = (100.0 * 2.0 * n + 8.0 * (1_000.0 + 5_000.0) * 512.0) / 1e9;
        let d = decode(8, 1e18, 1e9);
        assert!((d / (8.0 * per_wave) - 1.0).abs() < 1e-9, "{d} vs {}", 8.0 * per_wave);
        // Doubling the batch halves the waves: the weights are read half as often, the KV bytes stay the same.
        let d16 = decode(16, 1e18, 1e9);
        let want = 4.0 * (100.0 * 2.0 * n + 16.0 * 6_000.0 * 512.0) / 1e9;
        assert!((d16 / want - 1.0).abs() < 1e-9 && d16 < d, "{d} -> {d16} (want {want})");
    }

    #[test]
    fn gathers_are_a_floor_and_host_time_adds() {
        let w = iteration(8);
        let law = GemmLaw {
            rate_flops_per_s: 1e18,
            half_dim: 0.0,
            mem_bw_bytes_per_s: 1e9,
        };
        let mut ro = Rollout::new(&w, &law, &AlphaBetaNetwork::of(&w.cluster), 1, 0.5).unwrap();
        let (_, d0) = RlhfAnalytical::closed_form_generation(&w, &ro);
        // ZeRO-3's per-step gathers overlap the step (prefetch): the floor is the longer of gathers and launches, over
        // the efficiency, and a gather shorter than the memory-bound step costs nothing.
        ro.step_gather_s = 2e-6;
        ro.launch_floor_s = 1e-6;
        assert_eq!(ro.step_floor_s(), 4e-6);
        assert_eq!(ro.decode_comm_s(8.0), 0.0);
        let (_, d1) = RlhfAnalytical::closed_form_generation(&w, &ro);
        assert_eq!(d1, d0);
        // A gather longer than the step sets it: 8 waves of 100 steps at 1 s / 0.5.
        ro.step_gather_s = 1.0;
        let (_, d2) = RlhfAnalytical::closed_form_generation(&w, &ro);
        assert!((d2 - 8.0 * 100.0 * 2.0).abs() < 1e-9, "{d2}");
        // Host time adds to every forward (100 decode steps and one prefill per wave), not divided by the efficiency.
        ro.step_gather_s = 0.0;
        ro.host_step_s = 1e-3;
        assert_eq!(ro.decode_comm_s(8.0), 1e-3);
        let (p0, _) = {
            let mut r0 = ro;
            r0.host_step_s = 0.0;
            RlhfAnalytical::closed_form_generation(&w, &r0)
        };
        let (p3, d3) = RlhfAnalytical::closed_form_generation(&w, &ro);
        assert!((d3 - d0 - 8.0 * 100.0 * 1e-3).abs() < 1e-9, "{d3} {d0}");
        assert!((p3 - p0 - 8.0 * 1e-3).abs() < 1e-12, "{p3} {p0}");
    }

    #[test]
    fn decode_compute_bound_is_batch_independent() {
        // With unbounded bandwidth decode is 2·N FLOPs per generated token: 64·100 tokens at 1e9 FLOP/s.
        let n = model().params();
        for b in [4, 16, 64] {
            let d = decode(b, 1e9, 1e30);
            assert!((d / (2.0 * n * 6_400.0 / 1e9) - 1.0).abs() < 1e-9, "batch {b}: {d}");
        }
    }
}
