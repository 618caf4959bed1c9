//! Closed-form training-step model of a dense decoder-only transformer under tensor (TP), pipeline (PP) and data (DP)
//! parallelism, after Narayanan et al. SC'21 ("Efficient Large-Scale Language Model Training on GPU Clusters Using
//! Megatron-LM") and Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models").
//!
//! **Compute.** Each layer's forward is the list of its GEMMs (QKV, attention scores `QK^T`, `AV`, output
//! projection, FFN up (x2 when gated), FFN down) split over `tp`, each timed with the roofline of
//! [`crate::hardware::GemmLaw`] (`d = min(m, n, k)` sets the efficiency), plus memory-bound element-wise work (norms,
//! activation, residuals, dropout, rotary): `2 x 34 sbh / tp` bytes read and written per layer (each of the
//! `34 sbh` bytes of stored activations of Korthikanti eq. 1 written once and read once; attention is assumed fused,
//! so the `5as/h` score matrix is not streamed). Backward is twice the forward. Recomputation adds one more forward
//! (`Full`) or the attention-score GEMMs only (`Selective`). Their FLOPs sum to
//! [`TransformerSpec::train_flops_per_token`] (forward 1/3, backward 2/3), up to the norms.
//! The slowest pipeline stage holds `ceil(layers/pp)` layers plus the output head (which the last stage carries).
//!
//! **Communication.** TP: Megatron's 2 all-reduces per layer in forward and 2 in backward (+2 with full recompute),
//! each of `b s h` elements over the `tp` ranks of a node, not overlapped (reduce-scatter + all-gather under sequence
//! parallelism moves the same bytes). PP: one activation send forward and one gradient send backward per
//! micro-batch, `b s h / tp` elements (Megatron's scatter/gather optimisation), on the inter-node tier when the
//! neighbouring stages are `tp*dp >= gpus_per_node` ranks apart (rank order tp, dp, pp), exposed. DP: all-reduce
//! of the stage's bf16 gradients over `dp` ranks spaced `tp` apart, or reduce-scatter + all-gather with `zero1`
//! (same bytes); hierarchical alpha-beta from [`crate::collectives`], through the [`Network`] capability of
//! [`crate::hardware`] ([`step_breakdown_on`] takes another network).
//!
//! **Schedule.** 1F1B with `m = global_sequences / (dp * micro_batch)` micro-batches per replica:
//! `step = (m + p - 1) t_mb + exposed_dp + t_optimizer`, bubble fraction `(p-1)/(m+p-1)`.
//! **Overlap rule:** with `overlap_comm`, the gradient reduction of a stage overlaps only the backward pass of its
//! last micro-batch (gradients are final only then; Megatron launches bucketed reductions during that backward):
//! `exposed_dp = max(0, t_dp - t_backward_mb)`; without it, `exposed_dp = t_dp`.
//! The optimizer step (Adam) streams 32 bytes per local parameter (fp32 master, two moments, bf16 grad; read and
//! write), sharded over `dp` with `zero1`.
//!
//! **Memory per GPU** (Korthikanti et al. 2022, eq. 1-2, sequence parallelism assumed whenever `tp > 1`): weights and
//! grads 4 bytes/param plus fp32 master and Adam moments 12 bytes/param (divided by `dp` with `zero1`), for the
//! stage's parameters divided by `tp`; activations per layer per micro-batch `sbh (34 + 5as/h) / tp` (none),
//! `34 sbh / tp` (selective), `2 sbh / tp` plus one layer's `34 sbh / tp` working set (full); stage 0 holds
//! `min(p, m)` micro-batches in flight under 1F1B; the last stage holds one plus the fp32 logits `4 s b V / tp`.
//! [`fits`] keeps [`MEMORY_HEADROOM`] of the GPU memory free for the CUDA context, allocator fragmentation and
//! communication buffers.
//!
//! **MFU** = model FLOPs (without recomputation) / (step time x GPUs x dense peak of the dtype).
use trainlab_core::workloads::{
    CollectiveAlgo, CollectiveOp, DenseOutcome, DenseTraining, ParallelConfig, Recompute, StepSplit, TransformerSpec,
};
use trainlab_core::{Backend, DeviceProfile, Error, Fidelity, RunCtx, Workload};

use crate::hardware::{AlphaBetaNetwork, GemmLaw, Network, Placement, memory_time};
use crate::roofline::datasheet_profile;

/// Fraction of GPU memory kept free by [`fits`] (CUDA context ~0.5-1 GiB, PyTorch caching-allocator fragmentation,
/// NCCL buffers): a layout fits when its modelled peak is at most `1 - MEMORY_HEADROOM` of the device memory.
pub const MEMORY_HEADROOM: f64 = 0.10;
/// Kernels launched per layer in the forward pass (6-7 GEMMs, 2 norms, activation, residual adds, rotary/softmax).
const KERNELS_PER_LAYER_FWD: f64 = 12.0;
/// Bytes per parameter streamed by the optimizer step.
const OPTIMIZER_BYTES_PER_PARAM: f64 = 32.0;

/// Model options beyond [`ParallelConfig`] (which lives in `trainlab-core`): schedule and kernel features of the
/// framework being modelled. [`Default`] is plain 1F1B with fused (FlashAttention-style) attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepOptions {
    /// Model chunks per pipeline stage for the interleaved 1F1B schedule (Narayanan et al. 2021, sec. 2.2.2): the
    /// bubble shrinks to `(p-1)/V` micro-batch slots and point-to-point traffic grows `V`-fold. 1 = plain 1F1B.
    /// Activation memory is taken as unchanged (the paper reports a small increase).
    pub virtual_stages: u64,
    /// Attention scores are materialised in memory (pre-FlashAttention kernels, e.g. Megatron-LM 2021): the
    /// `5as/h sbh` bytes of scores, softmax and dropout mask are streamed like the other activations.
    pub attention_scores_materialized: bool,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            virtual_stages: 1,
            attention_scores_materialized: false,
        }
    }
}

/// Every term of the step model, for one layout.
#[derive(Debug, Clone, PartialEq)]
pub struct StepBreakdown {
    /// The layout.
    pub config: ParallelConfig,
    /// Micro-batches per replica per step (`m`).
    pub micro_batches: u64,
    /// Forward time of one micro-batch on the slowest stage (compute only), seconds.
    pub forward_mb_s: f64,
    /// Backward time of one micro-batch on the slowest stage, including recomputation, seconds.
    pub backward_mb_s: f64,
    /// Tensor-parallel communication per micro-batch on that stage, seconds.
    pub tp_comm_mb_s: f64,
    /// Pipeline point-to-point time per micro-batch, seconds.
    pub pp_comm_mb_s: f64,
    /// Data-parallel gradient communication per step, seconds.
    pub dp_comm_s: f64,
    /// The part of it not hidden behind backward, seconds.
    pub dp_exposed_s: f64,
    /// Optimizer step, seconds.
    pub optimizer_s: f64,
    /// Step time, seconds.
    pub step_time_s: f64,
    /// Pipeline bubble fraction `(p-1)/(m+p-1)`.
    pub bubble_fraction: f64,
    /// Peak memory per GPU, bytes.
    pub memory_per_gpu_bytes: f64,
    /// Model FLOPs per step (no recomputation).
    pub model_flops_per_step: f64,
    /// Model FLOPs utilisation.
    pub mfu: f64,
}

/// Global batch in sequences, checked.
pub fn global_sequences(w: &DenseTraining) -> Result<u64, Error> {
    let s = w.model.seq_len.max(1);
    if !w.global_batch_tokens.is_multiple_of(s) {
        return Err(Error::invalid(
            "workload.global_batch_tokens",
            w.global_batch_tokens,
            format!("is not a multiple of seq_len = {s}"),
            "use a whole number of sequences per step",
        ));
    }
    Ok(w.global_batch_tokens / s)
}

/// Checks a layout against the workload (the checks `step` performs), naming the field.
pub fn check_config(w: &DenseTraining, cfg: &ParallelConfig) -> Result<u64, Error> {
    let m = &w.model;
    let seqs = global_sequences(w)?;
    if cfg.tp == 0 || cfg.pp == 0 || cfg.dp == 0 || cfg.micro_batch == 0 {
        return Err(Error::invalid(
            "workload.parallel",
            cfg.label(),
            "tp, pp, dp and micro_batch must be at least 1",
            "set each to 1 or more",
        ));
    }
    if cfg.tp * cfg.pp * cfg.dp != w.cluster.gpus() {
        return Err(Error::invalid(
            "workload.parallel",
            cfg.label(),
            format!(
                "tp*pp*dp = {} but the cluster has {} GPUs",
                cfg.tp * cfg.pp * cfg.dp,
                w.cluster.gpus()
            ),
            "make tp*pp*dp equal nodes*gpus_per_node",
        ));
    }
    if !m.heads.is_multiple_of(cfg.tp) {
        return Err(Error::invalid(
            "workload.parallel.tp",
            cfg.tp,
            format!("does not divide heads = {}", m.heads),
            "choose tp dividing the number of attention heads",
        ));
    }
    if cfg.pp > m.layers {
        return Err(Error::invalid(
            "workload.parallel.pp",
            cfg.pp,
            format!("more stages than layers ({})", m.layers),
            "use pp <= layers",
        ));
    }
    if !seqs.is_multiple_of(cfg.dp * cfg.micro_batch) {
        return Err(Error::invalid(
            "workload.parallel.micro_batch",
            cfg.micro_batch,
            format!(
                "dp * micro_batch = {} does not divide the global batch of {seqs} sequences",
                cfg.dp * cfg.micro_batch
            ),
            "choose dp and micro_batch so that their product divides the global batch",
        ));
    }
    Ok(seqs / (cfg.dp * cfg.micro_batch))
}

/// Per-layer forward GEMM time plus element-wise time for a micro-batch, and the attention-score part.
struct LayerTimes {
    fwd: f64,
    attn_scores: f64,
}

fn layer_times(
    m: &TransformerSpec,
    cfg: &ParallelConfig,
    p: &DeviceProfile,
    dtype: trainlab_core::Dtype,
    opts: &StepOptions,
) -> LayerTimes {
    let tp = cfg.tp as f64;
    let b = cfg.micro_batch as f64;
    let s = m.seq_len as f64;
    let h = m.hidden as f64;
    let a = m.heads as f64;
    let hd = h / a;
    let kv = m.kv() as f64;
    let f = m.ffn_hidden as f64;
    let t = b * s;
    let eb = dtype.bytes() as f64;
    let law = GemmLaw::of(p, dtype);
    let gemm = |mm: f64, nn: f64, kk: f64, batch: f64| law.matmul_time(mm, nn, kk, batch, eb);
    let qkv = gemm(t, (h + 2.0 * kv * hd) / tp, h, 1.0);
    let scores = gemm(s, s, hd, b * a / tp);
    let av = gemm(s, hd, s, b * a / tp);
    let proj = gemm(t, h, h / tp, 1.0);
    let up = gemm(t, f * if m.gated_ffn { 2.0 } else { 1.0 } / tp, h, 1.0);
    let down = gemm(t, h, f / tp, 1.0);
    let stored = if opts.attention_scores_materialized {
        34.0 + 5.0 * a * s / h
    } else {
        34.0
    };
    let elementwise = memory_time(2.0 * stored * t * h / tp, p.mem_bw_bytes_per_s);
    let launches = KERNELS_PER_LAYER_FWD * p.launch_overhead_s;
    LayerTimes {
        fwd: qkv + scores + av + proj + up + down + elementwise + launches,
        attn_scores: scores + av,
    }
}

/// Activation bytes per layer per micro-batch for a recompute policy (Korthikanti et al. 2022, with sequence
/// parallelism when `tp > 1`).
pub fn activation_bytes_per_layer(m: &TransformerSpec, micro_batch: u64, tp: u64, r: Recompute) -> f64 {
    let sbh = m.seq_len as f64 * micro_batch as f64 * m.hidden as f64;
    let tp = tp as f64;
    match r {
        Recompute::None => sbh * (34.0 + 5.0 * m.heads as f64 * m.seq_len as f64 / m.hidden as f64) / tp,
        Recompute::Selective => 34.0 * sbh / tp,
        Recompute::Full => 2.0 * sbh / tp,
    }
}

/// Peak memory per GPU in bytes for a layout (max of the first and the last pipeline stage).
pub fn memory_per_gpu(w: &DenseTraining, cfg: &ParallelConfig, micro_batches: u64) -> f64 {
    let m = &w.model;
    let (tp, pp, dp) = (cfg.tp as f64, cfg.pp, cfg.dp as f64);
    let stage_layers = m.layers.div_ceil(pp) as f64;
    let emb = (m.vocab * m.hidden) as f64;
    let stage_params = |first: bool, last: bool| {
        let mut p = stage_layers * m.layer_params();
        if first {
            p += emb;
        }
        if last {
            p += emb;
        }
        p / tp
    };
    let opt_div = if cfg.zero1 { dp } else { 1.0 };
    let state = |p: f64| 4.0 * p + 12.0 * p / opt_div;
    let per_layer = activation_bytes_per_layer(m, cfg.micro_batch, cfg.tp, cfg.recompute);
    let working = if cfg.recompute == Recompute::Full {
        activation_bytes_per_layer(m, cfg.micro_batch, cfg.tp, Recompute::Selective)
    } else {
        0.0
    };
    let in_flight = pp.min(micro_batches).max(1) as f64;
    let logits = 4.0 * (m.seq_len * cfg.micro_batch) as f64 * m.vocab as f64 / tp;
    let first = state(stage_params(true, pp == 1)) + in_flight * stage_layers * per_layer + working;
    let last = state(stage_params(pp == 1, true)) + stage_layers * per_layer + working + logits;
    if pp == 1 { first + logits } else { first.max(last) }
}

/// Whether a modelled peak fits the GPU with [`MEMORY_HEADROOM`] kept free.
pub fn fits_memory(w: &DenseTraining, bytes: f64) -> bool {
    bytes <= (1.0 - MEMORY_HEADROOM) * w.cluster.gpu.memory_bytes as f64
}

/// The full breakdown for a checked layout (no validation of the workload itself), communication on the cluster's
/// alpha-beta network.
pub(crate) fn evaluate(
    w: &DenseTraining,
    cfg: &ParallelConfig,
    p: &DeviceProfile,
    micro_batches: u64,
    opts: &StepOptions,
) -> StepBreakdown {
    evaluate_on(w, cfg, p, micro_batches, opts, &AlphaBetaNetwork::of(&w.cluster))
}

/// [`evaluate`] with communication timed by `net`.
pub(crate) fn evaluate_on(
    w: &DenseTraining,
    cfg: &ParallelConfig,
    p: &DeviceProfile,
    micro_batches: u64,
    opts: &StepOptions,
    net: &dyn Network,
) -> StepBreakdown {
    let m = &w.model;
    let c = &w.cluster;
    let gpn = c.gpus_per_node as u64;
    let dtype = w.dtype;
    let eb = dtype.bytes() as f64;
    let (tp, pp, dp) = (cfg.tp, cfg.pp, cfg.dp);
    let b = cfg.micro_batch as f64;
    let s = m.seq_len as f64;
    let h = m.hidden as f64;
    let v = m.vocab as f64;
    let t_tok = b * s;
    let stage_layers = m.layers.div_ceil(pp) as f64;

    let lt = layer_times(m, cfg, p, dtype, opts);
    let v_stages = opts.virtual_stages.max(1) as f64;
    // output head on the last stage: logits GEMM + fp32 softmax/cross-entropy streaming (3 passes)
    let law = GemmLaw::of(p, dtype);
    let head_fwd = p.launch_overhead_s * 3.0
        + law.time(
            2.0 * t_tok * h * v / tp as f64,
            (t_tok * h + h * v / tp as f64) * eb,
            t_tok.min(h).min(v / tp as f64),
        )
        + memory_time(3.0 * 4.0 * t_tok * v / tp as f64, p.mem_bw_bytes_per_s);
    let recompute_layer = match cfg.recompute {
        Recompute::None => 0.0,
        Recompute::Selective => lt.attn_scores,
        Recompute::Full => lt.fwd,
    };
    let forward_mb = stage_layers * lt.fwd + head_fwd;
    let backward_mb = stage_layers * (2.0 * lt.fwd + recompute_layer) + 2.0 * head_fwd;

    // tensor parallel: 2 all-reduces forward, 2 backward, 2 more in a full recompute
    let tp_at = Placement {
        ranks: tp,
        per_node: tp.min(gpn).max(1),
    };
    let ar = |bytes: f64, at: Placement| {
        net.collective_time(CollectiveOp::AllReduce, CollectiveAlgo::Auto, bytes, at)
            .0
    };
    let tp_per_layer = if tp > 1 {
        let n_ar = if cfg.recompute == Recompute::Full { 6.0 } else { 4.0 };
        n_ar * ar(t_tok * h * eb, tp_at)
    } else {
        0.0
    };
    let tp_comm_mb = stage_layers * tp_per_layer;

    // pipeline point-to-point
    let pp_comm_mb = if pp > 1 {
        let cross_node = tp * dp >= gpn && c.nodes > 1;
        2.0 * v_stages * net.send_time(t_tok * h * eb / tp as f64, cross_node)
    } else {
        0.0
    };

    let t_mb = forward_mb + backward_mb + tp_comm_mb + pp_comm_mb;
    let mf = micro_batches as f64;
    let pf = pp as f64;
    let bubble_slots = (pf - 1.0) / v_stages;
    let pipeline = (mf + bubble_slots) * t_mb;
    let bubble = bubble_slots / (mf + bubble_slots);

    // data parallel gradients of the slowest (last) stage
    let emb = v * h;
    let stage_params = (stage_layers * m.layer_params() + emb + if pp == 1 { emb } else { 0.0 }) / tp as f64;
    let dp_at = Placement {
        ranks: dp,
        per_node: (gpn / tp.min(gpn)).clamp(1, dp.max(1)),
    };
    let grad_bytes = stage_params * eb;
    let dp_comm = if dp > 1 {
        if cfg.zero1 {
            net.collective_time(CollectiveOp::ReduceScatter, CollectiveAlgo::Ring, grad_bytes, dp_at)
                .0
                + net
                    .collective_time(CollectiveOp::AllGather, CollectiveAlgo::Ring, grad_bytes, dp_at)
                    .0
        } else {
            ar(grad_bytes, dp_at)
        }
    } else {
        0.0
    };
    let dp_exposed = if w.overlap_comm {
        (dp_comm - backward_mb).max(0.0)
    } else {
        dp_comm
    };
    let opt_params = if cfg.zero1 {
        stage_params / dp as f64
    } else {
        stage_params
    };
    let optimizer = p.launch_overhead_s + memory_time(OPTIMIZER_BYTES_PER_PARAM * opt_params, p.mem_bw_bytes_per_s);

    let step = pipeline + dp_exposed + optimizer;
    let tokens = (micro_batches * cfg.micro_batch * dp) as f64 * s;
    let model_flops = m.train_flops_per_token() * tokens;
    let peak = c.gpu.peak(dtype).max(1.0);
    let mfu = model_flops / (step * c.gpus() as f64 * peak);
    StepBreakdown {
        config: *cfg,
        micro_batches,
        forward_mb_s: forward_mb,
        backward_mb_s: backward_mb,
        tp_comm_mb_s: tp_comm_mb,
        pp_comm_mb_s: pp_comm_mb,
        dp_comm_s: dp_comm,
        dp_exposed_s: dp_exposed,
        optimizer_s: optimizer,
        step_time_s: step,
        bubble_fraction: bubble,
        memory_per_gpu_bytes: memory_per_gpu(w, cfg, micro_batches),
        model_flops_per_step: model_flops,
        mfu,
    }
}

/// Converts a breakdown into the workload's outcome.
pub fn outcome_of(w: &DenseTraining, b: &StepBreakdown) -> DenseOutcome {
    let tokens = (b.micro_batches * b.config.micro_batch * b.config.dp * w.model.seq_len) as f64;
    let tokens_per_s = tokens / b.step_time_s;
    let seconds = w.train_tokens / tokens_per_s;
    let ettr = expected_ettr(w, b.step_time_s, seconds / 86_400.0);
    DenseOutcome {
        config: b.config,
        step_time_s: b.step_time_s,
        mfu: b.mfu,
        memory_per_gpu_bytes: b.memory_per_gpu_bytes,
        tokens_per_s,
        train_days: seconds / 86_400.0,
        gpu_hours: seconds / 3_600.0 * w.cluster.gpus() as f64,
        bubble_fraction: b.bubble_fraction,
        exposed_comm_s: b.micro_batches as f64 / (1.0 - b.bubble_fraction) * (b.tp_comm_mb_s + b.pp_comm_mb_s)
            + b.dp_exposed_s,
        ettr: ettr.iter().map(|&(p, e, _)| (p, e)).collect(),
        ettr_ci: ettr.iter().map(|&(p, _, (l, h))| (p, l, h)).collect(),
        split: Some(split_of(b)),
        memory_fraction: b.memory_per_gpu_bytes / w.cluster.gpu.memory_bytes as f64,
    }
}

/// The step's partition into causes (see [`StepSplit`]): the pipeline runs `m + (p - 1)/v` slots of one micro-batch
/// time (compute, TP and PP communication); the `(p - 1)/v` slots are the bubble; then the exposed DP reduction and
/// the optimizer. The six shares sum to 1 by construction.
fn split_of(b: &StepBreakdown) -> StepSplit {
    let step = b.step_time_s;
    let pipeline = step - b.dp_exposed_s - b.optimizer_s;
    let mf = b.micro_batches as f64;
    StepSplit {
        compute: mf * (b.forward_mb_s + b.backward_mb_s) / step,
        bubble: b.bubble_fraction * pipeline / step,
        tp_comm: mf * b.tp_comm_mb_s / step,
        pp_comm: mf * b.pp_comm_mb_s / step,
        dp_comm: b.dp_exposed_s / step,
        optimizer: b.optimizer_s / step,
    }
}

/// With a downtime model: the `training_job` closed form (renewal-reward with Young/Daly checkpoints,
/// [`crate::reliability::expected`]) of this run's GPUs and step time over its failure-free training days, per
/// policy.
/// Each entry: the policy, the expected ETTR and its 95% interval ([`crate::reliability::ettr_interval`]).
fn expected_ettr(
    w: &DenseTraining,
    step_time_s: f64,
    days: f64,
) -> Vec<(trainlab_core::workloads::Policy, f64, (f64, f64))> {
    let Some(d) = &w.downtime else {
        return Vec::new();
    };
    let job = d.job(w.cluster.gpus(), u64::from(w.cluster.gpus_per_node), step_time_s, days);
    d.policies
        .iter()
        .map(|&p| {
            let o = crate::reliability::expected(&job, p);
            (p, o.ettr.mean, crate::reliability::ettr_interval(&o))
        })
        .collect()
}

/// The full term-by-term breakdown of one layout. `profile = None` uses [`datasheet_profile`] of the cluster's GPU.
pub fn step_breakdown(
    w: &DenseTraining,
    cfg: &ParallelConfig,
    profile: Option<&DeviceProfile>,
) -> Result<StepBreakdown, Error> {
    step_breakdown_with(w, cfg, profile, &StepOptions::default())
}

/// [`step_breakdown`] with explicit [`StepOptions`].
pub fn step_breakdown_with(
    w: &DenseTraining,
    cfg: &ParallelConfig,
    profile: Option<&DeviceProfile>,
    opts: &StepOptions,
) -> Result<StepBreakdown, Error> {
    step_breakdown_on(w, cfg, profile, opts, &AlphaBetaNetwork::of(&w.cluster))
}

/// [`step_breakdown_with`] with communication timed by `net` instead of the cluster's alpha-beta network (e.g. a
/// network simulator).
pub fn step_breakdown_on(
    w: &DenseTraining,
    cfg: &ParallelConfig,
    profile: Option<&DeviceProfile>,
    opts: &StepOptions,
    net: &dyn Network,
) -> Result<StepBreakdown, Error> {
    w.validate()?;
    if opts.virtual_stages == 0 {
        return Err(Error::invalid(
            "options.virtual_stages",
            0,
            "must be at least 1",
            "use 1 for plain 1F1B",
        ));
    }
    let mb = check_config(w, cfg)?;
    let owned;
    let p = match profile {
        Some(p) => p,
        None => {
            owned = datasheet_profile(&w.cluster.gpu);
            &owned
        }
    };
    Ok(evaluate_on(w, cfg, p, mb, opts, net))
}

/// Predicted step of one layout (does not check memory: see [`fits`]).
pub fn step(w: &DenseTraining, cfg: &ParallelConfig, profile: Option<&DeviceProfile>) -> Result<DenseOutcome, Error> {
    let b = step_breakdown(w, cfg, profile)?;
    Ok(outcome_of(w, &b))
}

/// [`step`] with explicit [`StepOptions`].
pub fn step_with(
    w: &DenseTraining,
    cfg: &ParallelConfig,
    profile: Option<&DeviceProfile>,
    opts: &StepOptions,
) -> Result<DenseOutcome, Error> {
    let b = step_breakdown_with(w, cfg, profile, opts)?;
    Ok(outcome_of(w, &b))
}

/// Whether the layout is valid for the workload and its modelled peak memory fits the GPU with
/// [`MEMORY_HEADROOM`] free.
pub fn fits(w: &DenseTraining, cfg: &ParallelConfig) -> bool {
    match check_config(w, cfg) {
        Ok(mb) => fits_memory(w, memory_per_gpu(w, cfg, mb)),
        Err(_) => false,
    }
}

/// The analytical dense-training backend: a fixed layout is evaluated as given (an error if it does not fit in
/// memory), `parallel = None` runs [`crate::search::search`] and answers with the fastest fitting layout.
#[derive(Debug, Clone, Default)]
pub struct DenseAnalytical {
    /// Device parameters; `None` uses the datasheet profile of the cluster's GPU.
    pub profile: Option<DeviceProfile>,
}

impl Backend<DenseTraining> for DenseAnalytical {
    fn name(&self) -> &str {
        "analytical"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, w: &DenseTraining, _ctx: &mut RunCtx) -> Result<DenseOutcome, Error> {
        match &w.parallel {
            Some(cfg) => {
                let b = step_breakdown(w, cfg, self.profile.as_ref())?;
                if !fits_memory(w, b.memory_per_gpu_bytes) {
                    return Err(Error::invalid(
                        "workload.parallel",
                        cfg.label(),
                        format!(
                            "needs {:.1} GiB per GPU, more than {:.0}% of the {:.0} GiB of a {}",
                            b.memory_per_gpu_bytes / (1u64 << 30) as f64,
                            (1.0 - MEMORY_HEADROOM) * 100.0,
                            w.cluster.gpu.memory_bytes as f64 / (1u64 << 30) as f64,
                            w.cluster.gpu.name
                        ),
                        "raise tp or pp, enable recompute, lower micro_batch, or leave `parallel` out to search",
                    ));
                }
                Ok(outcome_of(w, &b))
            }
            None => Ok(crate::search::search(w, self.profile.as_ref())?.best),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::collectives::tests::cluster;
    use crate::roofline::DATASHEET_GEMM_EFFICIENCY as DATASHEET_BOUND;
    use trainlab_core::Dtype;

    pub(crate) fn llama70b() -> TransformerSpec {
        TransformerSpec {
            name: "llama2-70b".into(),
            layers: 80,
            hidden: 8192,
            heads: 64,
            kv_heads: Some(8),
            ffn_hidden: 28672,
            gated_ffn: true,
            vocab: 32000,
            seq_len: 4096,
        }
    }

    pub(crate) fn workload(nodes: u32) -> DenseTraining {
        DenseTraining {
            model: llama70b(),
            cluster: cluster(nodes),
            global_batch_tokens: 4096 * 1024,
            train_tokens: 2e12,
            dtype: Dtype::Bf16,
            parallel: None,
            overlap_comm: true,
            downtime: None,
        }
    }

    fn cfg(tp: u64, pp: u64, dp: u64, mb: u64, r: Recompute) -> ParallelConfig {
        ParallelConfig {
            tp,
            pp,
            dp,
            micro_batch: mb,
            recompute: r,
            zero1: true,
        }
    }

    #[test]
    fn downtime_divides_days_by_the_training_job_ettr() {
        use trainlab_core::Outcome;
        use trainlab_core::workloads::Downtime;
        use trainlab_core::workloads::training_job::{FailureSpec, FaultClass, FaultKind, Policy};
        let mut w = workload(128);
        w.downtime = Some(Downtime {
            failures: vec![FailureSpec {
                class: FaultClass::Gpu,
                kind: FaultKind::FailStop,
                rate_per_component_hour: 1e-5,
                scope: None,
                weibull_shape: None,
                slowdown: 1.0,
            }],
            policies: vec![Policy::Baseline, Policy::C4d],
            checkpoint_cost_s: 10.0,
            restart_cost_s: 300.0,
            detection: Default::default(),
        });
        w.validate().unwrap();
        let o = DenseAnalytical::default()
            .run(&w, &mut RunCtx::new(trainlab_core::Seed(1)))
            .unwrap();
        let job = w.downtime.as_ref().unwrap().job(1024, 8, o.step_time_s, o.train_days);
        for (p, e) in &o.ettr {
            let want = crate::reliability::expected(&job, *p).ettr.mean;
            assert_eq!(*e, want);
            assert!(*e > 0.5 && *e < 1.0, "{p:?} {e}");
        }
        // C4D detection loses less than the baseline.
        assert!(o.ettr[1].1 > o.ettr[0].1, "{:?}", o.ettr);
        let m = o.metrics();
        let get = |n: &str| m.iter().find(|x| x.name == n).unwrap().value;
        assert!((get("days_with_downtime.c4d") - o.train_days / o.ettr[1].1).abs() < 1e-12);
        // A bad rate in the downtime model names its path.
        w.downtime.as_mut().unwrap().failures[0].rate_per_component_hour = f64::NAN;
        let e = w.validate().unwrap_err().to_string();
        assert!(
            e.contains("workload.downtime.failures[0].rate_per_component_hour"),
            "{e}"
        );
    }

    #[test]
    fn flops_split_matches_spec() {
        // With a huge-rate, no-overhead profile, compute time is FLOPs / rate: forward+backward = train flops.
        let w = workload(16);
        let mut p = datasheet_profile(&w.cluster.gpu);
        p.gemm_half_dim = 0.0;
        p.launch_overhead_s = 0.0;
        p.mem_bw_bytes_per_s = 1e30;
        let c = cfg(8, 4, 4, 1, Recompute::None);
        let mb = check_config(&w, &c).unwrap();
        let b = evaluate(&w, &c, &p, mb, &StepOptions::default());
        let m = &w.model;
        let tokens_mb = m.seq_len as f64;
        // slowest stage: 20 layers + head, over tp = 8
        let layer_flops = 3.0 * (2.0 * m.layer_params() + 4.0 * m.seq_len as f64 * m.hidden as f64) * tokens_mb / 8.0;
        let head = 3.0 * 2.0 * (m.vocab * m.hidden) as f64 * tokens_mb / 8.0;
        let expect = (20.0 * layer_flops + head) / p.rate(Dtype::Bf16);
        let got = b.forward_mb_s + b.backward_mb_s;
        // norms (2h params per layer) are not GEMMs: tiny difference
        assert!((got / expect - 1.0).abs() < 1e-3, "{got} vs {expect}");
        assert!((b.backward_mb_s / b.forward_mb_s - 2.0).abs() < 1e-9);
    }

    #[test]
    fn recompute_trades_time_for_memory() {
        let w = workload(16);
        let none = step_breakdown(&w, &cfg(8, 4, 4, 1, Recompute::None), None).unwrap();
        let sel = step_breakdown(&w, &cfg(8, 4, 4, 1, Recompute::Selective), None).unwrap();
        let full = step_breakdown(&w, &cfg(8, 4, 4, 1, Recompute::Full), None).unwrap();
        assert!(none.step_time_s < sel.step_time_s && sel.step_time_s < full.step_time_s);
        assert!(none.memory_per_gpu_bytes > sel.memory_per_gpu_bytes);
        assert!(sel.memory_per_gpu_bytes > full.memory_per_gpu_bytes);
        // full recompute costs about one extra forward: +1/3 of compute
        let ratio = (full.forward_mb_s + full.backward_mb_s) / (none.forward_mb_s + none.backward_mb_s);
        assert!(ratio > 1.3 && ratio < 1.34, "{ratio}");
        // MFU does not credit recomputation
        assert!(full.mfu < none.mfu);
    }

    #[test]
    fn bubble_and_memory_closed_forms() {
        let w = workload(16);
        let c = cfg(8, 4, 4, 2, Recompute::Selective);
        let b = step_breakdown(&w, &c, None).unwrap();
        // 1024 sequences / (dp 4 * mb 2) = 128 micro-batches
        assert_eq!(b.micro_batches, 128);
        assert!((b.bubble_fraction - 3.0 / 131.0).abs() < 1e-12);
        // Korthikanti: selective, first stage: 34 sbh / t per layer * L/p layers * p in flight = 34 sbh L / t
        let m = &w.model;
        let sbh = (m.seq_len * 2 * m.hidden) as f64;
        let act = 34.0 * sbh * 80.0 / 8.0;
        let params0 = (20.0 * m.layer_params() + (m.vocab * m.hidden) as f64) / 8.0;
        let expect = act + 4.0 * params0 + 12.0 * params0 / 4.0;
        let last_params = params0; // same count on the last stage (head instead of embedding)
        let last = 20.0 * 34.0 * sbh / 8.0
            + 4.0 * last_params
            + 12.0 * last_params / 4.0
            + 4.0 * (m.seq_len * 2 * m.vocab) as f64 / 8.0;
        assert!((b.memory_per_gpu_bytes - expect.max(last)).abs() < 1.0);
    }

    #[test]
    fn interleaving_shrinks_bubble_and_materialized_attention_costs() {
        let w = workload(16);
        let c = cfg(8, 4, 4, 2, Recompute::Selective);
        let plain = step_breakdown(&w, &c, None).unwrap();
        let opts = StepOptions {
            virtual_stages: 3,
            ..StepOptions::default()
        };
        let inter = step_breakdown_with(&w, &c, None, &opts).unwrap();
        assert!((inter.bubble_fraction - 1.0 / 129.0).abs() < 1e-12);
        assert!(inter.step_time_s < plain.step_time_s);
        assert!((inter.pp_comm_mb_s / plain.pp_comm_mb_s - 3.0).abs() < 1e-9);
        let opts = StepOptions {
            attention_scores_materialized: true,
            ..StepOptions::default()
        };
        let mat = step_breakdown_with(&w, &c, None, &opts).unwrap();
        assert!(mat.forward_mb_s > plain.forward_mb_s);
        let bad = StepOptions {
            virtual_stages: 0,
            ..StepOptions::default()
        };
        assert!(step_with(&w, &c, None, &bad).is_err());
    }

    proptest::proptest! {
        #[test]
        fn invariants_over_layouts(tpi in 0u32..4, ppi in 0usize..5, mbi in 0u32..4, r in 0usize..3, ni in 1u32..7) {
            let w = workload(1 << ni);
            let tp = 1u64 << tpi;
            let pp = [1u64, 2, 4, 8, 16][ppi];
            let gpus = w.cluster.gpus();
            proptest::prop_assume!(gpus.is_multiple_of(tp * pp));
            let dp = gpus / (tp * pp);
            let mb = 1u64 << mbi;
            let rc = [Recompute::None, Recompute::Selective, Recompute::Full][r];
            let c = cfg(tp, pp, dp, mb, rc);
            proptest::prop_assume!(check_config(&w, &c).is_ok());
            let b = step_breakdown(&w, &c, None).unwrap();
            proptest::prop_assert!(b.mfu > 0.0 && b.mfu < DATASHEET_BOUND);
            proptest::prop_assert!(b.bubble_fraction >= 0.0 && b.bubble_fraction < 1.0);
            proptest::prop_assert!(b.dp_exposed_s <= b.dp_comm_s + 1e-15);
            // a step is at least its pipeline of micro-batches
            let floor = b.micro_batches as f64 * (b.forward_mb_s + b.backward_mb_s);
            proptest::prop_assert!(b.step_time_s >= floor);
            // larger micro-batches never need less memory (equal when fewer are in flight)
            if mb > 1 && dp * mb > dp {
                let smaller = cfg(tp, pp, dp, mb / 2, rc);
                let m2 = memory_per_gpu(&w, &smaller, check_config(&w, &smaller).unwrap());
                proptest::prop_assert!(m2 <= b.memory_per_gpu_bytes);
            }
        }
    }

    #[test]
    fn overlap_hides_dp() {
        let mut w = workload(16);
        let c = cfg(8, 1, 16, 1, Recompute::Full);
        let a = step_breakdown(&w, &c, None).unwrap();
        w.overlap_comm = false;
        let b = step_breakdown(&w, &c, None).unwrap();
        assert!(a.dp_exposed_s < b.dp_exposed_s);
        assert!((b.dp_exposed_s - b.dp_comm_s).abs() < 1e-15);
        assert!((a.dp_exposed_s - (a.dp_comm_s - a.backward_mb_s).max(0.0)).abs() < 1e-15);
    }

    #[test]
    fn bad_layouts_are_named() {
        let w = workload(16);
        let e = step(&w, &cfg(8, 4, 8, 1, Recompute::None), None).unwrap_err();
        assert!(e.to_string().contains("workload.parallel"), "{e}");
        let e = step(&w, &cfg(128, 1, 1, 1, Recompute::None), None).unwrap_err();
        assert!(e.to_string().contains("tp"), "{e}");
        let e = step(&w, &cfg(8, 4, 4, 3, Recompute::None), None).unwrap_err();
        assert!(e.to_string().contains("micro_batch"), "{e}");
        assert!(!fits(&w, &cfg(1, 1, 128, 1, Recompute::None)));
        assert!(fits(&w, &cfg(8, 4, 4, 1, Recompute::Selective)));
    }

    #[test]
    fn backend_fixed_and_searched() {
        let mut w = workload(16);
        let mut be = DenseAnalytical::default();
        let mut ctx = RunCtx::new(trainlab_core::Seed(0));
        let searched = be.run(&w, &mut ctx).unwrap();
        w.parallel = Some(searched.config);
        let fixed = be.run(&w, &mut ctx).unwrap();
        assert_eq!(searched, fixed);
        assert!(searched.mfu > 0.3 && searched.mfu < 0.75, "{}", searched.mfu);
        w.parallel = Some(cfg(1, 1, 128, 1, Recompute::None));
        assert!(be.run(&w, &mut ctx).is_err());
    }

    /// Communication goes through the [`Network`] capability: a free network leaves compute only, and the cluster's
    /// alpha-beta network is what the default entry points use.
    #[test]
    fn step_on_another_network() {
        struct Free;
        impl Network for Free {
            fn collective_time(
                &self,
                _: CollectiveOp,
                a: CollectiveAlgo,
                _: f64,
                _: Placement,
            ) -> (f64, CollectiveAlgo) {
                (0.0, a)
            }
            fn send_time(&self, _: f64, _: bool) -> f64 {
                0.0
            }
        }
        let w = workload(16);
        let c = cfg(8, 4, 4, 1, Recompute::Selective);
        let opts = StepOptions::default();
        let free = step_breakdown_on(&w, &c, None, &opts, &Free).unwrap();
        assert_eq!((free.tp_comm_mb_s, free.pp_comm_mb_s, free.dp_comm_s), (0.0, 0.0, 0.0));
        let ab = step_breakdown_on(&w, &c, None, &opts, &AlphaBetaNetwork::of(&w.cluster)).unwrap();
        assert_eq!(ab, step_breakdown(&w, &c, None).unwrap());
        assert!(ab.tp_comm_mb_s > 0.0 && ab.pp_comm_mb_s > 0.0 && ab.dp_comm_s > 0.0);
        assert_eq!(free.forward_mb_s, ab.forward_mb_s);
    }
}
