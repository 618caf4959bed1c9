//! Closed-form training-step model of a dense decoder-only transformer under tensor (TP), context (CP), pipeline
//! (PP) and data (DP) parallelism, after Narayanan et al. SC'21 ("Efficient Large-Scale Language Model Training on GPU
//! Clusters Using Megatron-LM") and Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
//! Models").
//!
//! The per-operation costs of one micro-batch ([`StepCosts`], [`LayerCosts`]) are computed once, here, through the
//! one hardware model ([`crate::hardware`]); the closed form sums them and the operation-level simulator
//! (`trainlab_sim::dense`) schedules the same numbers on streams. Neither has a formula of its own.
//!
//! **Compute.** Each layer's forward is the list of its GEMMs (QKV, attention scores `QK^T`, `AV`, output
//! projection, FFN up (x2 when gated), FFN down) split over `tp`, on the `b s / cp` tokens a rank holds (scores
//! against all `s` keys), each timed with the roofline of [`crate::hardware::GemmLaw`] (`d = min(m, n, k)` sets the
//! efficiency), plus memory-bound element-wise work: `2 x` the stored activation bytes of Korthikanti eq. 1-2 (each
//! written once and read once): `34 sbh / t` with sequence parallelism, `(10 + 24/t) sbh` without (norms and dropout
//! replicated over the TP ranks); attention is fused unless `attention_scores_materialized` (then the `5as/h sbh` of
//! scores, softmax and mask are streamed too). A fused kernel is causal: it computes only the score tiles on or below
//! the diagonal ([`causal_block_fraction`], about half at long sequences), and with `sliding_window` only the key tiles
//! within the window ([`attention_block_fraction`]); materialised scores are a full GEMM either way. A parallel block
//! (`parallel_block`) fuses QKV with FFN up and the output projection with FFN down (one GEMM each, timed as fused),
//! stores `4 sbh` less (one LayerNorm) and launches 3 kernels fewer. Backward is twice the forward. Recomputation adds one more forward
//! (`Full`) or the attention core only (`Selective`). The first stage also runs the embedding (a memory-bound
//! gather, and its TP all-reduce), the last the LM head (logits GEMM and fp32 cross-entropy, and the TP all-reduce of
//! its input gradient).
//!
//! **Communication.** TP: Megatron's 2 collectives per layer in forward and 2 in backward (+2 with full recompute;
//! half as many with a parallel block, one after each fused pair),
//! each of `b s h / cp` elements over the `tp` ranks of a node (all-reduce, or reduce-scatter + all-gather under
//! sequence parallelism: the same bytes), exposed in full; with `tp_comm_overlap` each collective and the GEMM that
//! produces it (output projection and FFN down forward, FFN up and QKV input gradients backward, the embedding
//! gather, the head's backward) are split into [`TP_OVERLAP_CHUNKS`] chunks that pipeline on two streams (Megatron-
//! Core's `tp_comm_overlap`, Wang et al. ASPLOS'23 decomposition): exposed `c + (n - 1) max(0, c - g)` with `g` a
//! GEMM chunk and `c` a collective chunk (each paying the latency again), applied only where that is less than the
//! whole collective ([`LayerCosts::tp_after`]); the same rule, op by op, as the operation-level simulator. CP (ring attention): per layer `cp - 1`
//! steps each passing the local K and V (`2 b (s/cp) kv_heads d_head / t` elements) to the next rank, twice that in
//! backward (K/V and their gradients); with `overlap_comm` hidden behind the attention core
//! (`exposed = max(0, comm - core)`). PP: one activation send forward and one gradient send backward per
//! micro-batch and model chunk, `b s h / (t cp)` elements, on the inter-node tier when neighbouring stages are
//! `tp*cp*dp >= gpus_per_node` ranks apart (rank order tp, cp, dp, pp), exposed; interleaving multiplies them by `v`
//! (Narayanan et al. sec. 2.2.2); with `pp_comm_overlap` (sends that do not block the sender) only the fill's and
//! drain's `p - 1` boundary crossings each way, `(p - 1) pp / v`, stay on the critical path. DP over the `dp * cp` ranks that hold the same weights: all-reduce of the stage's
//! bf16 gradients (ZeRO-0), reduce-scatter + all-gather (ZeRO-1/2: the same bytes), reduce-scatter only plus one
//! all-gather of the parameters before every forward and every backward (ZeRO-3 / FSDP: 1.5x the bytes per step
//! with one micro-batch, Rajbhandari et al. SC'20 sec. 7.2.1), through the [`Network`] capability.
//!
//! **Schedule.** Stage `i` takes `t_i` per micro-batch (its layers, embedding or head, collectives, sends). With
//! `m` micro-batches and `v` model chunks per stage the pipeline takes `m t_max + (sum_i t_i - t_max) / v`: the
//! slowest stage sets the pace and the others fill and drain; with equal stages this is the familiar
//! `(m + (p-1)/v) t` (bubble `(p-1)/v` slots, Narayanan et al. eq. 1 and sec. 2.2.2). GPipe has the same time.
//! Plain 1F1B (`v = 1`) is timed stage by stage instead ([`one_f_one_b_time`]): the stages after a slower one work in
//! its shadow, which the formula charges in full; with equal stages the two agree.
//! **Overlap rule:** with `overlap_comm`, the gradient reduction of a stage runs in buckets (whole layers of at least
//! `dp_bucket_bytes`, each collective with its own latency, as the simulator forms them) behind the last backward of
//! each model chunk and the passes after it, one chunk after the other on the DP stream (`dp_tail_exposed`; with
//! one chunk `exposed_dp = max(t_dp - t_backward_mb, t_last_bucket)`); without it, one reduction after the backward,
//! `exposed_dp = t_dp`. ZeRO-3 gathers queue on that stream too (`zero3_chunk_boundaries`). The optimizer
//! step (Adam) streams 32 bytes per local parameter, sharded over the DP x CP ranks with ZeRO >= 1.
//!
//! **Memory per GPU** (Korthikanti et al. 2022 eq. 1-2 and Table 2): weights 2 bytes/param and gradients 2, fp32
//! master and Adam moments 12 (ZeRO-1 shards the 12, ZeRO-2 also the gradients, ZeRO-3 all 16 plus two gathered
//! layers), for the stage's parameters divided by `tp`; activations per layer per micro-batch `sbh (34 + 5as/h) / t`
//! with SP, `sbh (10 + 24/t + 5as/(ht))` without (none); selective drops the `5as/h` term, and so does fused
//! attention (`attention_scores_materialized = false`: the kernel stores no scores); full keeps the layer input
//! `2 sbh / t` (SP) or `2 sbh` plus one layer's working set; `s` is the local `s / cp` except in `5as/h`. In flight
//! on stage `i`: `min(p - i, m)` micro-batches under 1F1B, `m` under GPipe, and under interleaving
//! `min(m v, 2 (p - i - 1) + (v - 1) p + 1)` chunks of `1/v` of the stage (the warm-up of Megatron-LM's interleaved
//! schedule); the last stage also holds the fp32 logits `4 s b V / (t cp)`. [`fits`] keeps [`MEMORY_HEADROOM`] of the
//! GPU memory free for the CUDA context, allocator fragmentation and communication buffers.
//!
//! **MFU** = model FLOPs (without recomputation) / (step time x GPUs x dense peak of the dtype).
use trainlab_core::workloads::{
    CollectiveAlgo, CollectiveOp, DenseOutcome, DenseTraining, MoeLoadSource, MoeStepInfo, ParallelConfig,
    PipelineSchedule, Recompute, StageLayers, StepSplit, TransformerSpec,
};

use crate::dense_moe::{FFN_ACTIVATION_SHARE, MoeCosts, MoeLoad, moe_costs};
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
/// Chunks a GEMM and its tensor-parallel collective are split into when `tp_comm_overlap` is on (the simulator's
/// pipelined GEMM + reduce-scatter; each chunk pays the collective's latency again).
pub const TP_OVERLAP_CHUNKS: u32 = 4;

/// Per-operation times of one layer for one micro-batch on one GPU, seconds (forward unless said otherwise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerCosts {
    /// QKV GEMM, half of the element-wise work and half of the launches.
    pub qkv: f64,
    /// Attention core: `QK^T` and `AV`.
    pub core: f64,
    /// Output projection GEMM.
    pub proj: f64,
    /// FFN up (and gate) GEMM, the other half of the element-wise work and launches.
    pub up: f64,
    /// FFN down GEMM.
    pub down: f64,
    /// One tensor-parallel collective of the micro-batch's activations (0 when `tp = 1`).
    pub tp_coll: f64,
    /// The same collective on `1 / TP_OVERLAP_CHUNKS` of the bytes.
    pub tp_coll_chunk: f64,
    /// One ring-attention step: the local K and V to the next context-parallel rank (0 when `cp = 1`).
    pub cp_step: f64,
    /// Gradient bytes of the layer on one GPU (bf16/fp16 parameters over `tp`).
    pub grad_bytes: f64,
    /// Parallel transformer block: QKV and FFN up run as one GEMM (their times are its shares), so do the output
    /// projection and FFN down, and one TP collective follows each fused pair.
    pub parallel_block: bool,
}

impl LayerCosts {
    /// Forward compute.
    pub fn fwd(&self) -> f64 {
        self.qkv + self.core + self.proj + self.up + self.down
    }
    /// Extra forward work of a recompute policy in the backward pass.
    pub fn recompute(&self, r: Recompute) -> f64 {
        match r {
            Recompute::None => 0.0,
            Recompute::Selective => self.core,
            Recompute::Full => self.fwd(),
        }
    }
    /// Backward compute, including recomputation.
    pub fn bwd(&self, r: Recompute) -> f64 {
        2.0 * self.fwd() + self.recompute(r)
    }
    /// Tensor-parallel collectives per layer and micro-batch: 2 forward, 2 backward, 2 more with full recompute;
    /// half of each with a parallel block (one after its fused output GEMM, one after its fused input gradient).
    pub fn tp_colls(&self, r: Recompute) -> f64 {
        let n = if r == Recompute::Full { 6.0 } else { 4.0 };
        if self.parallel_block { n / 2.0 } else { n }
    }
    /// Whether splitting a GEMM of `gemm` seconds and the TP collective that follows it into [`TP_OVERLAP_CHUNKS`]
    /// pipelined chunks finishes earlier than the GEMM then the whole collective. Each chunk pays the collective's
    /// latency again, so behind a GEMM too short to hide it the split would be slower: it is then not applied (the
    /// same decision in the closed form and in the simulator, so overlap never makes a step slower).
    pub fn tp_chunking_pays(&self, gemm: f64) -> bool {
        self.tp_coll > 0.0 && self.tp_chunked_exposed(gemm) < self.tp_coll
    }
    /// Exposed time of the TP collective after a GEMM of `gemm` seconds split with it into `n` =
    /// [`TP_OVERLAP_CHUNKS`] chunks on two in-order streams (GEMM chunk `i + 1` runs while collective chunk `i` is
    /// sent): the pair ends at `g + c + (n - 1) max(g, c)` with `g = gemm / n` and `c` =
    /// [`LayerCosts::tp_coll_chunk`], so `c + (n - 1) max(0, c - g)` after the GEMM's own `n g`.
    pub fn tp_chunked_exposed(&self, gemm: f64) -> f64 {
        let n = f64::from(TP_OVERLAP_CHUNKS);
        let (g, c) = (gemm / n, self.tp_coll_chunk);
        c + (n - 1.0) * (c - g).max(0.0)
    }
    /// Exposed time of the TP collective after a GEMM of `gemm` seconds: the whole collective, or with
    /// `tp_comm_overlap` the chunked pipeline where it pays.
    pub fn tp_after(&self, gemm: f64, tp_overlap: bool) -> f64 {
        if tp_overlap && self.tp_chunking_pays(gemm) {
            self.tp_chunked_exposed(gemm)
        } else {
            self.tp_coll
        }
    }
    /// Exposed TP time of one layer per micro-batch: forward after the output projection and FFN down, backward
    /// after the FFN up and QKV input-gradient GEMMs (twice the forward's), the forward's again with full recompute.
    /// A parallel block has one collective after each fused pair: forward after projection + down, backward after
    /// the (QKV + up) input gradient.
    pub fn tp_layer(&self, r: Recompute, tp_overlap: bool) -> f64 {
        if !tp_overlap {
            return self.tp_colls(r) * self.tp_coll;
        }
        let (f, b) = self.tp_layer_passes(tp_overlap);
        f + b + if r == Recompute::Full { f } else { 0.0 }
    }
    /// The forward's and the backward's (without recomputation) exposed TP time of one layer per micro-batch: the two
    /// parts of [`LayerCosts::tp_layer`].
    pub fn tp_layer_passes(&self, tp_overlap: bool) -> (f64, f64) {
        if !tp_overlap {
            let half = self.tp_colls(Recompute::None) / 2.0 * self.tp_coll;
            return (half, half);
        }
        let (f, b) = if self.parallel_block {
            (
                self.tp_after(self.proj + self.down, true),
                self.tp_after(2.0 * (self.qkv + self.up), true),
            )
        } else {
            (
                self.tp_after(self.proj, true) + self.tp_after(self.down, true),
                self.tp_after(2.0 * self.up, true) + self.tp_after(2.0 * self.qkv, true),
            )
        };
        (f, b)
    }
}

/// Everything the step of one layout costs, per operation: what [`evaluate_on`] sums and the operation-level
/// simulator schedules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCosts {
    /// The layout.
    pub config: ParallelConfig,
    /// One layer.
    pub layer: LayerCosts,
    /// Layers per stage.
    pub stages: StageLayers,
    /// Micro-batches per replica per step (`m`).
    pub micro_batches: u64,
    /// Embedding forward on the first stage (its backward is twice this).
    pub emb_fwd: f64,
    /// LM head forward (logits and cross-entropy) on the last stage (its backward is twice this).
    pub head_fwd: f64,
    /// One pipeline point-to-point message (an activation or its gradient, one model chunk).
    pub p2p: f64,
    /// Parameters of one layer on one GPU.
    pub layer_params: f64,
    /// Parameters of the embedding (and of the untied LM head) on one GPU.
    pub emb_params: f64,
    /// Bytes per parameter and gradient element.
    pub elem_bytes: f64,
    /// The data-parallel (x context-parallel) group.
    pub dp_group: Placement,
    /// Memory bandwidth (optimizer), bytes/s.
    pub mem_bw: f64,
    /// Launch overhead, seconds.
    pub launch: f64,
    /// Overlap DP buckets, CP exchange and ZeRO-3 gathers with compute.
    pub overlap: bool,
    /// Split each TP collective and the GEMM before it into pipelined chunks (`tp_comm_overlap`).
    pub tp_overlap: bool,
    /// The MoE layers' costs (`None` for a dense model).
    pub moe: Option<MoeCosts>,
}

impl StepCosts {
    /// Parameters on one GPU of a stage with `layers` layers (plus the embedding on the first, the head on the last).
    pub fn stage_params(&self, layers: u64, first: bool, last: bool) -> f64 {
        let emb = self.emb_params * (f64::from(u8::from(first)) + f64::from(u8::from(last)));
        match &self.moe {
            None => layers as f64 * self.layer_params + emb,
            Some(moe) => {
                let nm = moe.layers_in(layers);
                (layers - nm) as f64 * self.layer_params + nm as f64 * (moe.layer_params + moe.expert_params) + emb
            }
        }
    }
    /// Expert parameters on one GPU of a stage with `layers` layers (part of [`StepCosts::stage_params`]).
    pub fn stage_expert_params(&self, layers: u64) -> f64 {
        self.moe
            .as_ref()
            .map_or(0.0, |moe| moe.layers_in(layers) as f64 * moe.expert_params)
    }
    /// Reduction of `bytes` of expert gradients over the ranks holding the same experts, as [`StepCosts::dp_sync`]
    /// (0 for a dense model or one such rank).
    pub fn expert_dp_sync(&self, net: &dyn Network, bytes: f64) -> f64 {
        let Some(moe) = &self.moe else {
            return 0.0;
        };
        if moe.expert_dp_group.ranks <= 1 || bytes <= 0.0 {
            return 0.0;
        }
        let g = moe.expert_dp_group;
        let c = |op| net.collective_time(op, CollectiveAlgo::Ring, bytes, g).0;
        match self.config.zero_stage {
            0 => {
                net.collective_time(CollectiveOp::AllReduce, CollectiveAlgo::Auto, bytes, g)
                    .0
            }
            _ => c(CollectiveOp::ReduceScatter) + c(CollectiveOp::AllGather),
        }
    }
    /// Gradient synchronisation of `bytes` of gradients over the DP group at the end of the step: all-reduce
    /// (ZeRO-0), reduce-scatter + all-gather (ZeRO-1/2), reduce-scatter (ZeRO-3, parameters are gathered per pass).
    pub fn dp_sync(&self, net: &dyn Network, bytes: f64) -> f64 {
        if self.dp_group.ranks <= 1 || bytes <= 0.0 {
            return 0.0;
        }
        let c = |op| net.collective_time(op, CollectiveAlgo::Ring, bytes, self.dp_group).0;
        match self.config.zero_stage {
            0 => {
                net.collective_time(CollectiveOp::AllReduce, CollectiveAlgo::Auto, bytes, self.dp_group)
                    .0
            }
            3 => c(CollectiveOp::ReduceScatter),
            _ => c(CollectiveOp::ReduceScatter) + c(CollectiveOp::AllGather),
        }
    }
    /// ZeRO-3 all-gather of `bytes` of parameters before a pass (0 below ZeRO-3 or with one replica).
    pub fn zero3_gather(&self, net: &dyn Network, bytes: f64) -> f64 {
        if self.config.zero_stage < 3 || self.dp_group.ranks <= 1 {
            return 0.0;
        }
        net.collective_time(CollectiveOp::AllGather, CollectiveAlgo::Ring, bytes, self.dp_group)
            .0
    }
    /// Optimizer step of a stage with `params` parameters on one GPU, `expert` of them expert parameters (sharded
    /// by ZeRO over the expert-data-parallel ranks instead of the data-parallel ones).
    pub fn optimizer(&self, params: f64, expert: f64) -> f64 {
        let local = if self.config.zero_stage >= 1 {
            let edp = self.moe.as_ref().map_or(1, |m| m.expert_dp_group.ranks).max(1) as f64;
            (params - expert) / self.dp_group.ranks.max(1) as f64 + expert / edp
        } else {
            params
        };
        self.launch + memory_time(OPTIMIZER_BYTES_PER_PARAM * local, self.mem_bw)
    }
    /// Exposed time of a transfer `comm` that may hide behind `compute` when overlap is on.
    pub fn exposed(&self, comm: f64, compute: f64) -> f64 {
        if self.overlap { (comm - compute).max(0.0) } else { comm }
    }
    /// Ring-attention exposure of one layer per micro-batch: forward, backward (twice the bytes and the core) and a
    /// full recompute's forward again.
    pub fn cp_exposed_layer(&self) -> f64 {
        let l = &self.layer;
        let kv = (self.config.cp.saturating_sub(1)) as f64 * l.cp_step;
        if kv == 0.0 {
            return 0.0;
        }
        let f = self.exposed(kv, l.core);
        let b = self.exposed(2.0 * kv, 2.0 * l.core);
        f + b
            + if self.config.recompute == Recompute::Full {
                f
            } else {
                0.0
            }
    }
}

/// The closed-form time of one stage per micro-batch, by term.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct StageTime {
    fwd: f64,
    bwd: f64,
    tp: f64,
    pp: f64,
    cp: f64,
    zero3: f64,
    /// MoE dispatch and combine all-to-alls (never hidden).
    ep: f64,
    /// One forward pass's span on the stage: its compute and the collectives it waits for (TP, MoE all-to-alls), the
    /// window a prefetched ZeRO-3 gather of the next pass hides behind.
    fwd_span: f64,
    params: f64,
    expert_params: f64,
}

impl StageTime {
    fn total(&self) -> f64 {
        self.fwd + self.bwd + self.tp + self.pp + self.cp + self.zero3 + self.ep
    }
}

fn stage_time(c: &StepCosts, net: &dyn Network, layers: u64, first: bool, last: bool) -> StageTime {
    let l = &c.layer;
    let r = c.config.recompute;
    let nm = c.moe.as_ref().map_or(0, |moe| moe.layers_in(layers));
    let n = (layers - nm) as f64;
    let (e, h) = (f64::from(u8::from(first)), f64::from(u8::from(last)));
    let mut fwd = n * l.fwd() + e * c.emb_fwd + h * c.head_fwd;
    let mut bwd = n * l.bwd(r) + 2.0 * (e * c.emb_fwd + h * c.head_fwd);
    // the embedding's all-reduce follows its gather, the head's input gradient follows the head's backward
    let mut tp = n * l.tp_layer(r, c.tp_overlap)
        + e * l.tp_after(c.emb_fwd, c.tp_overlap)
        + h * l.tp_after(2.0 * c.head_fwd, c.tp_overlap);
    // the forward's part of `tp` (and of `ep` below)
    let mut tp_fwd = n * l.tp_layer_passes(c.tp_overlap).0 + e * l.tp_after(c.emb_fwd, c.tp_overlap);
    let mut ep_fwd = 0.0;
    let mut ep = 0.0;
    if let Some(moe) = &c.moe {
        let k = nm as f64;
        let f = moe.fwd(l.qkv + l.core + l.proj);
        let replay = r == Recompute::Full;
        fwd += k * f;
        bwd += k
            * (2.0 * f
                + match r {
                    Recompute::None => 0.0,
                    Recompute::Selective => l.core,
                    Recompute::Full => f,
                });
        // TP: after the output projection (chunked where it pays) and after the combine (whole), backward after
        // the router's input gradient (whole) and the QKV input gradient (chunked where it pays)
        let tpf = l.tp_after(l.proj, c.tp_overlap) + l.tp_coll;
        let tpb = l.tp_coll + l.tp_after(2.0 * l.qkv, c.tp_overlap);
        tp += k * (tpf + tpb + if replay { tpf } else { 0.0 });
        tp_fwd += k * tpf;
        ep = k * moe.a2a * if replay { 6.0 } else { 4.0 };
        ep_fwd = k * moe.a2a * 2.0;
    }

    let pp = if c.config.pp > 1 {
        2.0 * c.config.virtual_stages as f64 * c.p2p
    } else {
        0.0
    };
    let params = c.stage_params(layers, first, last);
    // one gather per model chunk and pass (each paying its own latency)
    let vf = c.config.virtual_stages.max(1) as f64;
    let ag = vf * c.zero3_gather(net, params / vf * c.elem_bytes);
    // ZeRO-3: a backward's gather hides behind the forward before it, a forward's behind a backward (1F1B's
    // alternation), each for the pass's whole span, its blocking collectives included (the simulator's prefetch
    // starts with the previous pass)
    let fwd_span = fwd + tp_fwd + ep_fwd;
    let bwd_span = bwd + (tp - tp_fwd) + (ep - ep_fwd);
    let zero3 = if ag > 0.0 {
        c.exposed(ag, fwd_span) + c.exposed(ag, bwd_span)
    } else {
        0.0
    };
    StageTime {
        fwd,
        bwd,
        tp,
        pp,
        cp: layers as f64 * c.cp_exposed_layer(),
        zero3,
        ep,
        fwd_span,
        params,
        expert_params: c.stage_expert_params(layers),
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
    /// Pipeline point-to-point time per micro-batch on the critical path, seconds (with `pp_comm_overlap`: the fill's
    /// and drain's sends spread over the micro-batches).
    pub pp_comm_mb_s: f64,
    /// Exposed ring-attention and ZeRO-3 gather time per micro-batch on that stage, seconds.
    pub other_comm_mb_s: f64,
    /// ZeRO-3 exposure per step outside the pipeline's per-micro-batch terms, seconds: the part of the step's first
    /// gather that nothing hides (a pass's gather is prefetched during the previous pass of its stage, and the step's
    /// first pass has none), plus, with interleaved stages, the `v - 1` chunk boundaries where the next pass's gather
    /// queues behind the finished chunk's gradient reduction on the one data-parallel stream.
    pub zero3_first_s: f64,
    /// Data-parallel gradient communication per step, seconds.
    pub dp_comm_s: f64,
    /// The part of it not hidden behind backward, seconds.
    pub dp_exposed_s: f64,
    /// Optimizer step, seconds.
    pub optimizer_s: f64,
    /// Step time, seconds.
    pub step_time_s: f64,
    /// Pipeline bubble fraction (`(p-1)/v / (m + (p-1)/v)` with equal stages).
    pub bubble_fraction: f64,
    /// Peak memory per GPU, bytes.
    pub memory_per_gpu_bytes: f64,
    /// Model FLOPs per step (no recomputation).
    pub model_flops_per_step: f64,
    /// Model FLOPs utilisation.
    pub mfu: f64,
    /// MoE layers: load, drops and all-to-all time (`None` for a dense model).
    pub moe: Option<MoeStepInfo>,
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

/// Checks a layout against the workload (the checks `step` performs), naming the field; returns the micro-batches
/// per replica per step.
pub fn check_config(w: &DenseTraining, cfg: &ParallelConfig) -> Result<u64, Error> {
    let seqs = global_sequences(w)?;
    let mb = cfg.check(&w.model, w.cluster.gpus(), seqs)?;
    w.check_moe_layout(cfg)?;
    Ok(mb)
}

/// Activation bytes per layer per micro-batch for a recompute policy (Korthikanti et al. 2022 eq. 1-2, Table 2),
/// on the `seq_len / cp` tokens of a context-parallel rank, with or without sequence parallelism. The `5as/h` bytes
/// of attention scores, softmax and dropout mask are stored only when `scores_materialized`: a fused attention
/// kernel keeps none of them, so without recomputation it stores what selective recomputation stores. A parallel
/// block (`parallel_block`) stores `4 sbh` less of Korthikanti's 34: one LayerNorm input instead of two, and the
/// LayerNorm output that QKV and FFN up share once instead of each GEMM's input (both among the `10 sbh` kept whole
/// on every TP rank without sequence parallelism: 6 of them remain).
pub fn activation_bytes_per_layer(
    m: &TransformerSpec,
    cfg: &ParallelConfig,
    r: Recompute,
    scores_materialized: bool,
    parallel_block: bool,
) -> f64 {
    let sbh = (m.seq_len / cfg.cp.max(1)) as f64 * cfg.micro_batch as f64 * m.hidden as f64;
    let t = cfg.tp as f64;
    let scores = if scores_materialized {
        5.0 * m.heads as f64 * m.seq_len as f64 / m.hidden as f64
    } else {
        0.0
    };
    let shared = if parallel_block { 4.0 } else { 0.0 };
    let (replicated, split) = if cfg.sp() || cfg.tp == 1 {
        (0.0, 34.0 - shared)
    } else {
        (10.0 - shared, 24.0)
    };
    match r {
        Recompute::None => sbh * (replicated + (split + scores) / t),
        Recompute::Selective => sbh * (replicated + split / t),
        Recompute::Full => {
            if cfg.sp() || cfg.tp == 1 {
                2.0 * sbh / t
            } else {
                2.0 * sbh
            }
        }
    }
}

/// Layers' worth of activations a stage holds in flight: `layers` times the micro-batches (or model chunks of
/// `1/v` of the stage) between their forward and their backward at the peak, for stage `stage` of `p`.
fn in_flight_layers(cfg: &ParallelConfig, stage: u64, layers: u64, m: u64) -> f64 {
    let (p, v) = (cfg.pp, cfg.virtual_stages.max(1));
    let l = layers as f64;
    match cfg.schedule {
        PipelineSchedule::Gpipe => m as f64 * l,
        PipelineSchedule::OneFOneB if v == 1 => (p - stage).min(m).max(1) as f64 * l,
        PipelineSchedule::OneFOneB => {
            let chunks = (2 * (p - stage - 1) + (v - 1) * p + 1).min(m * v);
            chunks as f64 * l / v as f64
        }
    }
}

/// Peak memory per GPU in bytes for a layout (the largest over the first, a middle and the last stage); for an MoE
/// model with the closed-form load.
pub fn memory_per_gpu(w: &DenseTraining, cfg: &ParallelConfig, micro_batches: u64) -> f64 {
    let moe = w
        .moe
        .as_ref()
        .map(|moe| crate::dense_moe::closed_form_load(moe, crate::dense_moe::group_tokens(w, cfg), cfg.ep.max(1)));
    memory_with(w, cfg, micro_batches, moe)
}

/// Model-state bytes of `params` parameters under mixed-precision Adam (2-byte parameters and gradients, 12 bytes of
/// fp32 master weights and moments) with ZeRO stage `zero_stage` over `shards` data-parallel ranks: ZeRO-1 shards
/// the 12, ZeRO-2 also the gradients, ZeRO-3 all 16 (without the gathered layers a ZeRO-3 pass holds).
pub fn zero_state_bytes(params: f64, zero_stage: u8, shards: f64) -> f64 {
    match zero_stage {
        0 => 16.0 * params,
        1 => 4.0 * params + 12.0 * params / shards,
        2 => 2.0 * params + 14.0 * params / shards,
        _ => 16.0 * params / shards,
    }
}

/// [`memory_per_gpu`] with the MoE load given.
fn memory_with(w: &DenseTraining, cfg: &ParallelConfig, micro_batches: u64, load: Option<MoeLoad>) -> f64 {
    let m = &w.model;
    let Some(st) = StageLayers::of(m.layers, cfg.pp, cfg.trim_end_stages) else {
        return f64::INFINITY;
    };
    let tp = cfg.tp as f64;
    let emb = (m.vocab * m.hidden) as f64 / tp;
    let lp = m.layer_params() / tp;
    let d = (cfg.dp * cfg.cp) as f64;
    let state = |p: f64| {
        zero_state_bytes(p, cfg.zero_stage, d)
            // ZeRO-3: two gathered layers (the one computing and the one prefetched), 2 bytes per parameter
            + if cfg.zero_stage >= 3 { 4.0 * lp } else { 0.0 }
    };
    let per_layer =
        activation_bytes_per_layer(m, cfg, cfg.recompute, w.attention_scores_materialized, w.parallel_block);
    // MoE: per MoE layer the non-expert parameters (dense over dp cp), the experts over ep (state over dp cp / ep),
    // and the FFN's activations scaled by the rows the rank processes
    let moe = w.moe.as_ref().zip(load).map(|(moe, load)| {
        let h = m.hidden as f64;
        let hd = h / m.heads as f64;
        let attn = (2.0 * h * h + 2.0 * h * hd * m.kv() as f64 + 2.0 * h + h * moe.experts as f64) / tp;
        let ffn = if m.gated_ffn { 3.0 } else { 2.0 } * h * m.ffn_hidden as f64 / tp;
        let experts = (moe.experts / cfg.ep.max(1)) as f64 * ffn;
        let t = ((m.seq_len / cfg.cp.max(1)) * cfg.micro_batch) as f64;
        let rows = if moe.pad_to_capacity {
            (load.capacity * (moe.experts / cfg.ep.max(1))) as f64
        } else {
            load.rank_rows
        };
        let act = if cfg.recompute == Recompute::Full {
            per_layer
        } else {
            per_layer * (1.0 + FFN_ACTIVATION_SHARE * (rows / t - 1.0))
        };
        (moe.every, attn, experts, act)
    });
    let edp = (d / cfg.ep.max(1) as f64).max(1.0);
    let working = if cfg.recompute == Recompute::Full {
        activation_bytes_per_layer(
            m,
            cfg,
            Recompute::Selective,
            w.attention_scores_materialized,
            w.parallel_block,
        )
    } else {
        0.0
    };
    let logits = 4.0 * ((m.seq_len / cfg.cp.max(1)) * cfg.micro_batch) as f64 * m.vocab as f64 / tp;
    let pp = cfg.pp;
    let stage_mem = |stage: u64, layers: u64, first: bool, last: bool| {
        let emb_p = emb * (f64::from(u8::from(first)) + f64::from(u8::from(last)));
        let flight = in_flight_layers(cfg, stage, layers, micro_batches);
        let (weights, acts) = match moe {
            None => (state(layers as f64 * lp + emb_p), flight * per_layer),
            Some((every, attn, experts, act)) => {
                let nm = layers.div_ceil(every.max(1));
                let nd = (layers - nm) as f64;
                let nmf = nm as f64;
                let dense = state(nd * lp + nmf * attn + emb_p);
                // the experts' state sharded over the expert-data-parallel ranks (ZeRO-3 is refused with MoE)
                let ex = nmf * experts;
                let ex_state = zero_state_bytes(ex, cfg.zero_stage.min(2), edp);
                let l = layers.max(1) as f64;
                (dense + ex_state, flight * (nd * per_layer + nmf * act) / l)
            }
        };
        weights + acts + working + if last { logits } else { 0.0 }
    };
    if pp == 1 {
        return stage_mem(0, st.first, true, true);
    }
    let mut peak = stage_mem(0, st.first, true, false).max(stage_mem(pp - 1, st.last, false, true));
    if pp > 2 {
        peak = peak.max(stage_mem(1, st.mid_max, false, false));
    }
    peak
}

/// Query/key tile edge of a fused attention kernel (FlashAttention-2's forward tiles are 64 or 128 wide; 128 assumed).
const ATTENTION_TILE: f64 = 128.0;

/// Fraction of the `s x s` score tiles a fused causal attention kernel computes: with `n = ceil(s / tile)` tiles a
/// side, the `n (n + 1) / 2` on or below the diagonal (tiles wholly above it are skipped). With context parallelism
/// the load-balanced ring (each rank holds a chunk from each end of the sequence) gives every rank the same share.
pub fn causal_block_fraction(seq_len: f64) -> f64 {
    attention_block_fraction(seq_len, None)
}

/// Fraction of the `s x s` score tiles a fused causal attention kernel computes with a sliding window of `window`
/// tokens (each query attends to itself and the `window - 1` keys before it; `None` is full causal attention). With
/// `n = ceil(s / tile)` tiles a side, query tile `i` needs the key tiles `i - c ..= i`, `c = ceil((window - 1) /
/// tile)`, clipped at 0: `sum_i (min(i, c) + 1) = (c + 1)(c + 2) / 2 + (n - 1 - c)(c + 1)` tiles when `c < n - 1`,
/// else the causal `n (n + 1) / 2`. Closed form (no loop over tiles): the layout search evaluates it per candidate.
pub fn attention_block_fraction(seq_len: f64, window: Option<u64>) -> f64 {
    let n = (seq_len / ATTENTION_TILE).ceil().max(1.0);
    let c = window.map_or(f64::INFINITY, |w| ((w.max(1) - 1) as f64 / ATTENTION_TILE).ceil());
    let tiles = if c < n - 1.0 {
        (c + 1.0) * (c + 2.0) / 2.0 + (n - 1.0 - c) * (c + 1.0)
    } else {
        n * (n + 1.0) / 2.0
    };
    tiles / (n * n)
}

/// Whether a modelled peak fits the GPU with [`MEMORY_HEADROOM`] kept free.
pub fn fits_memory(w: &DenseTraining, bytes: f64) -> bool {
    bytes <= (1.0 - MEMORY_HEADROOM) * w.cluster.gpu.memory_bytes as f64
}

/// The per-operation costs of a checked layout with `micro_batches` micro-batches, communication timed by `net`
/// (an MoE model's load from the closed form).
pub fn step_costs(
    w: &DenseTraining,
    cfg: &ParallelConfig,
    p: &DeviceProfile,
    micro_batches: u64,
    net: &dyn Network,
) -> StepCosts {
    step_costs_with(w, cfg, p, micro_batches, net, None)
}

/// [`step_costs`] with an MoE model's slowest-rank load given (e.g. from Monte Carlo routing draws); `None` takes
/// the closed form's.
pub fn step_costs_with(
    w: &DenseTraining,
    cfg: &ParallelConfig,
    p: &DeviceProfile,
    micro_batches: u64,
    net: &dyn Network,
    load: Option<MoeLoad>,
) -> StepCosts {
    let m = &w.model;
    let c = &w.cluster;
    let gpn = c.gpus_per_node as u64;
    let dtype = w.dtype;
    let eb = dtype.bytes() as f64;
    let (tp, cp, dp) = (cfg.tp, cfg.cp.max(1), cfg.dp);
    let tpf = tp as f64;
    let b = cfg.micro_batch as f64;
    let s = m.seq_len as f64;
    let s_loc = s / cp as f64;
    let h = m.hidden as f64;
    let a = m.heads as f64;
    let hd = h / a;
    let kv = m.kv() as f64;
    let f = m.ffn_hidden as f64;
    let v = m.vocab as f64;
    let t = b * s_loc;
    let law = GemmLaw::of(p, dtype);
    let gemm = |mm: f64, nn: f64, kk: f64, batch: f64| law.matmul_time(mm, nn, kk, batch, eb);
    // A fused causal kernel skips the key blocks wholly above the diagonal (and, with a sliding window, those
    // wholly before it); materialised scores are a full GEMM masked afterwards.
    let causal = if w.attention_scores_materialized {
        1.0
    } else {
        attention_block_fraction(s, w.sliding_window)
    };
    let scores = causal * gemm(s_loc, s, hd, b * a / tpf);
    let av = causal * gemm(s_loc, hd, s, b * a / tpf);
    let (n_qkv, n_up) = ((h + 2.0 * kv * hd) / tpf, f * if m.gated_ffn { 2.0 } else { 1.0 } / tpf);
    let (k_proj, k_down) = (h / tpf, f / tpf);
    // A parallel block runs QKV and FFN up as one GEMM on their shared input (output widths concatenated), and the
    // output projection and FFN down as one (inner dimensions concatenated, outputs summed); each GEMM's time is its
    // FLOP share of the fused one.
    let (qkv, up, proj, down) = if w.parallel_block {
        let wide = gemm(t, n_qkv + n_up, h, 1.0);
        let deep = gemm(t, h, k_proj + k_down, 1.0);
        let (a_in, a_out) = (n_qkv / (n_qkv + n_up), k_proj / (k_proj + k_down));
        (a_in * wide, (1.0 - a_in) * wide, a_out * deep, (1.0 - a_out) * deep)
    } else {
        (
            gemm(t, n_qkv, h, 1.0),
            gemm(t, n_up, h, 1.0),
            gemm(t, h, k_proj, 1.0),
            gemm(t, h, k_down, 1.0),
        )
    };
    // element-wise work: every stored activation written once and read once (Korthikanti's bytes, one place)
    let stored = activation_bytes_per_layer(
        m,
        cfg,
        Recompute::None,
        w.attention_scores_materialized,
        w.parallel_block,
    );
    let elementwise = memory_time(2.0 * stored, p.mem_bw_bytes_per_s);
    // a parallel block launches one LayerNorm and two GEMMs fewer
    let kernels = KERNELS_PER_LAYER_FWD - if w.parallel_block { 3.0 } else { 0.0 };
    let half_launches = kernels * p.launch_overhead_s / 2.0;

    let tp_at = Placement {
        ranks: tp,
        per_node: tp.min(gpn).max(1),
    };
    let tp_time = |bytes: f64| {
        if tp > 1 {
            net.collective_time(CollectiveOp::AllReduce, CollectiveAlgo::Auto, bytes, tp_at)
                .0
        } else {
            0.0
        }
    };
    let act_bytes = t * h * eb;
    let cp_step = if cp > 1 {
        let kv_local = (kv / tpf).max(1.0) * hd;
        net.send_time(2.0 * t * kv_local * eb, tp * cp > gpn)
    } else {
        0.0
    };
    let layer = LayerCosts {
        qkv: qkv + elementwise / 2.0 + half_launches,
        core: scores + av,
        proj,
        up: up + elementwise / 2.0 + half_launches,
        down,
        tp_coll: tp_time(act_bytes),
        tp_coll_chunk: tp_time(act_bytes / f64::from(TP_OVERLAP_CHUNKS)),
        cp_step,
        grad_bytes: m.layer_params() / tpf * eb,
        parallel_block: w.parallel_block,
    };
    // output head on the last stage: logits GEMM + fp32 softmax/cross-entropy streaming (3 passes)
    let head_fwd = p.launch_overhead_s * 3.0
        + law.time(2.0 * t * h * v / tpf, (t * h + h * v / tpf) * eb, t.min(h).min(v / tpf))
        + memory_time(3.0 * 4.0 * t * v / tpf, p.mem_bw_bytes_per_s);
    // embedding on the first stage: gather of `t` rows, written once and read once
    let emb_fwd = p.launch_overhead_s + memory_time(2.0 * t * h * eb, p.mem_bw_bytes_per_s);
    let p2p = if cfg.pp > 1 {
        let cross_node = tp * cp * dp >= gpn && c.nodes > 1;
        net.send_time(act_bytes / tpf, cross_node)
    } else {
        0.0
    };
    let ranks = dp * cp;
    StepCosts {
        config: *cfg,
        layer,
        stages: StageLayers::of(m.layers, cfg.pp, cfg.trim_end_stages).unwrap_or(StageLayers {
            first: m.layers,
            last: m.layers,
            mid_max: 0,
            mid_min: 0,
            n_mid_max: 0,
        }),
        micro_batches,
        emb_fwd,
        head_fwd,
        p2p,
        layer_params: m.layer_params() / tpf,
        emb_params: v * h / tpf,
        elem_bytes: eb,
        dp_group: Placement {
            ranks,
            per_node: (gpn / tp.min(gpn).max(1)).clamp(1, ranks.max(1)),
        },
        mem_bw: p.mem_bw_bytes_per_s,
        launch: p.launch_overhead_s,
        overlap: w.overlap_comm,
        tp_overlap: w.tp_comm_overlap,
        moe: moe_costs(
            w,
            cfg,
            &law,
            p.mem_bw_bytes_per_s,
            p.launch_overhead_s,
            elementwise / 2.0 + half_launches,
            net,
            load,
        ),
    }
}

/// The full breakdown for a checked layout (no validation of the workload itself), communication on the cluster's
/// alpha-beta network.
#[cfg(test)]
pub(crate) fn evaluate(
    w: &DenseTraining,
    cfg: &ParallelConfig,
    p: &DeviceProfile,
    micro_batches: u64,
) -> StepBreakdown {
    evaluate_on(w, cfg, p, micro_batches, &AlphaBetaNetwork::of(&w.cluster))
}

/// [`evaluate`] with communication timed by `net`.
pub(crate) fn evaluate_on(
    w: &DenseTraining,
    cfg: &ParallelConfig,
    p: &DeviceProfile,
    micro_batches: u64,
    net: &dyn Network,
) -> StepBreakdown {
    evaluate_with(w, cfg, p, micro_batches, net, None)
}

/// [`evaluate_on`] with an MoE model's load given (`None`: the closed form's).
pub(crate) fn evaluate_with(
    w: &DenseTraining,
    cfg: &ParallelConfig,
    p: &DeviceProfile,
    micro_batches: u64,
    net: &dyn Network,
    load: Option<MoeLoad>,
) -> StepBreakdown {
    let c = step_costs_with(w, cfg, p, micro_batches, net, load);
    breakdown_of(w, &c, net)
}

/// The closed-form step of checked per-operation costs.
pub fn breakdown_of(w: &DenseTraining, c: &StepCosts, net: &dyn Network) -> StepBreakdown {
    let cfg = &c.config;
    let micro_batches = c.micro_batches;
    let st = c.stages;
    let pp = cfg.pp;
    // the stage classes: first, last, the middle ones with the most and the fewest layers
    let mut classes: [(StageTime, f64); 4] = [(StageTime::default(), 0.0); 4];
    if pp == 1 {
        classes[0] = (stage_time(c, net, st.first, true, true), 1.0);
    } else {
        classes[0] = (stage_time(c, net, st.first, true, false), 1.0);
        classes[1] = (stage_time(c, net, st.last, false, true), 1.0);
        if pp > 2 {
            classes[2] = (stage_time(c, net, st.mid_max, false, false), st.n_mid_max as f64);
            let rest = (pp - 2 - st.n_mid_max) as f64;
            if rest > 0.0 {
                classes[3] = (stage_time(c, net, st.mid_min, false, false), rest);
            }
        }
    }
    // With `pp_comm_overlap` a stage does not wait for its sends: they leave the steady state, and only the fill
    // and drain cross the `p - 1` stage boundaries once each way (one forward and one backward send of a model chunk
    // per boundary, `pp / v` of a stage's per-micro-batch send time).
    let overlap_pp = w.pp_comm_overlap && pp > 1;
    let busy = |t: &StageTime| if overlap_pp { t.total() - t.pp } else { t.total() };
    let mut slow = classes[0].0;
    let mut sum = 0.0;
    for (t, n) in classes.iter().filter(|(_, n)| *n > 0.0) {
        sum += n * busy(t);
        if busy(t) > busy(&slow) {
            slow = *t;
        }
    }
    let mf = micro_batches as f64;
    let vf = cfg.virtual_stages.max(1) as f64;
    // the sends charged per micro-batch on the critical path (all of them, or the fill's and drain's spread over m)
    let pp_mb = if overlap_pp {
        (pp - 1) as f64 * slow.pp / vf / mf
    } else {
        slow.pp
    };
    let t_max = busy(&slow) + if overlap_pp { pp_mb } else { 0.0 };
    let pipeline = if pp > 1 && cfg.virtual_stages <= 1 && cfg.schedule == PipelineSchedule::OneFOneB {
        // plain 1F1B, stage by stage (uneven stages: the stages after a slower one work in its shadow)
        let mut f = Vec::with_capacity(pp as usize);
        let mut b = Vec::with_capacity(pp as usize);
        for i in 0..pp as usize {
            // stages in order: first, the middle ones with the most layers, the others, last (`StageLayers::per_stage`)
            let t = if i == 0 {
                &classes[0].0
            } else if i + 1 == pp as usize {
                &classes[1].0
            } else if (i as u64) <= st.n_mid_max {
                &classes[2].0
            } else {
                &classes[3].0
            };
            let whole = busy(t);
            // the forward's share: its span, and half the sends it waits for
            let fwd = (t.fwd_span + 0.5 * (whole - (t.total() - t.pp)).max(0.0)).min(whole);
            f.push(fwd);
            b.push(whole - fwd);
        }
        one_f_one_b_time(&f, &b, micro_batches) + if overlap_pp { mf * pp_mb } else { 0.0 }
    } else {
        mf * t_max + (sum - busy(&slow)) / vf
    };
    let bubble = if pipeline > 0.0 {
        (pipeline - mf * t_max) / pipeline
    } else {
        0.0
    };

    // data-parallel gradients of the stage with the most parameters, hidden behind its last backward
    let mut big = classes[0].0;
    for (t, _) in classes.iter().filter(|(_, n)| *n > 0.0) {
        if t.params > big.params {
            big = *t;
        }
    }
    let (dense_dp, dense_dp_last) = bucketed_dp_sync(w, c, net, (big.params - big.expert_params) * c.elem_bytes);
    // expert gradients are reduced over their own group after the backward, not hidden (as in the simulator)
    let expert_dp = c.expert_dp_sync(net, big.expert_params * c.elem_bytes);
    let dp_comm = dense_dp + expert_dp;
    let dp_exposed = if c.overlap {
        dp_tail_exposed(big.bwd, dense_dp, dense_dp_last, vf, pp.min(micro_batches) as f64)
    } else {
        dense_dp
    } + expert_dp;
    let optimizer = c.optimizer(big.params, big.expert_params);

    // ZeRO-3: each pass's gather is hidden behind the stage's previous pass (a forward's behind a backward, a
    // backward's behind a forward); the first stage's first pass of the step has no previous pass, so its gather
    // (one chunk's parameters) is exposed whole instead of `exposed(g, bwd)` (the simulator's order)
    let first = &classes[0].0;
    let zero3_first = {
        let g = c.zero3_gather(net, first.params / vf * c.elem_bytes);
        if g > 0.0 { g - c.exposed(g, first.bwd / vf) } else { 0.0 }
    } + zero3_chunk_boundaries(w, c, net, &big, vf);
    let step = pipeline + zero3_first + dp_exposed + optimizer;
    let m = &w.model;
    let tokens = (micro_batches * cfg.micro_batch * cfg.dp) as f64 * m.seq_len as f64;
    let model_flops = w.train_flops_per_token() * tokens;
    let peak = w.cluster.gpu.peak(w.dtype).max(1.0);
    let mfu = model_flops / (step * w.cluster.gpus() as f64 * peak);
    StepBreakdown {
        config: *cfg,
        micro_batches,
        forward_mb_s: slow.fwd,
        backward_mb_s: slow.bwd,
        tp_comm_mb_s: slow.tp,
        pp_comm_mb_s: pp_mb,
        other_comm_mb_s: slow.cp + slow.zero3 + slow.ep,
        zero3_first_s: zero3_first,
        dp_comm_s: dp_comm,
        dp_exposed_s: dp_exposed,
        optimizer_s: optimizer,
        step_time_s: step,
        bubble_fraction: bubble,
        memory_per_gpu_bytes: memory_with(w, cfg, micro_batches, c.moe.map(|m| m.load)),
        model_flops_per_step: model_flops,
        mfu,
        moe: c.moe.map(|moe| MoeStepInfo {
            capacity: moe.load.capacity,
            drop_fraction: moe.load.drop_fraction,
            rank_imbalance: if moe.load.mean_rank_rows > 0.0 {
                moe.load.rank_rows / moe.load.mean_rank_rows
            } else {
                1.0
            },
            expert_fwd_s: moe.experts,
            a2a_s: moe.a2a,
            a2a_per_step_s: mf * slow.ep,
            load_source: if moe.load.monte_carlo {
                MoeLoadSource::MonteCarlo
            } else {
                MoeLoadSource::ClosedForm
            },
        }),
    }
}

/// The time of the plain 1F1B schedule (PipeDream-Flush: stage `i` runs `w_i = min(p - i - 1, m)` warm-up
/// forwards, then alternates one forward and one backward, then drains its backwards) of `m` micro-batches over
/// stages with forward and backward times `f[i]`, `b[i]` per micro-batch:
/// `max_k [ sum_{i<k} (f_i + b_i) + m t_k + W_k ]`, `t_k = f_k + b_k`, `D_k = sum_{i>k} t_i`, `w_k = p - k - 1`:
/// stage `k` starts when the first micro-batch reaches it, runs its `m` micro-batches, and waits for the stages after
/// it: with a steady phase (`m - 1 > w_k`) once after its warm-up for the first backward's round trip less the
/// warm-up forwards it runs meanwhile, and once before its last backward for the last forward's round trip less the
/// drain's backwards, `W_k = max(0, D_k - w_k f_k) + max(0, D_k - w_k b_k)`; with every forward before the first
/// backward (`m - 1 <= w_k`) once, `W_k = max(0, D_k - (m - 1) f_k)`. The last backward then crosses the stages
/// before it. With equal stages it is
/// `(m + p - 1) t`; `m t_max + sum_{i != k} t_i` (the interleaved formula with `v = 1`) charges the stages after the
/// slowest one in full, which they mostly work off in its shadow. Against the schedule played pass by pass: exact on
/// equal stages, within 0.5% on the split of 60-126 layers over 4-32 stages with an embedding and a head, never
/// above it and 0.03% mean / 4.4% worst below it on random stage times, fewer micro-batches than stages included
/// (tests; derived and checked 2026-12-03).
pub fn one_f_one_b_time(f: &[f64], b: &[f64], m: u64) -> f64 {
    let p = f.len().min(b.len());
    let mf = m as f64;
    let mut down: f64 = (0..p).map(|i| f[i] + b[i]).sum();
    let mut up = 0.0;
    let mut best = 0.0_f64;
    for k in 0..p {
        let t = f[k] + b[k];
        down -= t;
        let warm = p - k - 1;
        let wait = if (m as usize).saturating_sub(1) <= warm {
            // every forward before the first backward: one round trip, less the other forwards
            (down - (mf - 1.0).max(0.0) * f[k]).max(0.0)
        } else {
            let w = warm as f64;
            (down - w * f[k]).max(0.0) + (down - w * b[k]).max(0.0)
        };
        best = best.max(up + mf * t + wait);
        up += t;
    }
    best
}

/// The data-parallel reduction of `bytes` of dense gradients, `(total, last)` seconds: with overlap in buckets as the
/// simulator forms them (whole layers, at least `dp_bucket_bytes` each; what is left at the end in one more), each
/// collective paying its own latency (at hundreds of ranks a ring's latency term is milliseconds per collective);
/// without overlap in one reduction after the backward. `last` is the bucket that can only start after the backward.
fn bucketed_dp_sync(w: &DenseTraining, c: &StepCosts, net: &dyn Network, bytes: f64) -> (f64, f64) {
    let whole = c.dp_sync(net, bytes);
    let layer = c.layer.grad_bytes;
    if !c.overlap || whole <= 0.0 || layer <= 0.0 {
        return (whole, whole);
    }
    let bucket = (w.dp_bucket_bytes / layer).ceil().max(1.0) * layer;
    let full = (bytes / bucket).floor();
    let rest = bytes - full * bucket;
    let one = c.dp_sync(net, bucket.min(bytes));
    let tail = if rest > 1.0 { c.dp_sync(net, rest) } else { 0.0 };
    (full * one + tail, if rest > 1.0 { tail } else { one })
}

/// Exposed end of the data-parallel reduction with overlap, seconds: each of the `v` model chunks hands its buckets
/// (`total / v` seconds of them, the last `last` seconds long and ready only when the chunk's last backward ends) to
/// the DP stream during that backward (`bwd / v` long); the chunks' last backwards end `gap` backward passes apart
/// (the interleaved schedule runs the final group of micro-batches chunk after chunk, `p` of them each), the stage's
/// final pass last. The stream serves them in order; what it has left when the final pass ends is exposed. With one
/// chunk: `max(total - bwd, last)`.
fn dp_tail_exposed(bwd: f64, total: f64, last: f64, v: f64, gap: f64) -> f64 {
    let pass = bwd / v;
    let chunk = total / v;
    let n = v.round().max(1.0) as u64;
    let mut free = f64::NEG_INFINITY;
    for j in 0..n {
        let end = -((n - 1 - j) as f64) * gap.max(1.0) * pass;
        free = (free.max(end - pass) + chunk).max(end + last);
    }
    free.max(0.0)
}

/// ZeRO-3 with `v > 1` interleaved chunks and overlap on: a chunk's gradients are final after its last backward and
/// are reduced (reduce-scatter, in buckets of `dp_bucket_bytes` as the backward produces them) on the data-parallel
/// stream, the stream its parameter gathers use: one communicator runs its collectives in the order they were issued
/// (PyTorch's NCCL process group has one NCCL stream per device). So the next pass's gather, issued after those
/// buckets, starts only when the reduction backlog at the end of the pass is done: the backlog (the last bucket, plus
/// what the chunk's reduction has over its backward) and that gather are exposed, `v - 1` times per step (the last
/// chunk's last backward is the stage's final pass). `stage` is the stage with the most parameters. Zero without
/// ZeRO-3, overlap or interleaving. This is the simulator's order (`trainlab_sim::dense`): without it the closed form priced `llama2-70b-h100`'s
/// searched layout (TP2 PP2 v8 ZeRO-3, two micro-batches) 14% below `op_sim`.
fn zero3_chunk_boundaries(w: &DenseTraining, c: &StepCosts, net: &dyn Network, stage: &StageTime, vf: f64) -> f64 {
    if !c.overlap || vf <= 1.0 || c.config.zero_stage < 3 {
        return 0.0;
    }
    let chunk_bytes = (stage.params - stage.expert_params) / vf * c.elem_bytes;
    let gather = c.zero3_gather(net, chunk_bytes);
    if gather <= 0.0 {
        return 0.0;
    }
    let last_bucket = w.dp_bucket_bytes.max(c.layer.grad_bytes).min(chunk_bytes);
    let backlog = c.dp_sync(net, last_bucket) + (c.dp_sync(net, chunk_bytes) - stage.bwd / vf).max(0.0);
    // the per-micro-batch term already charged that pass's gather beyond the forward span it assumed it hid behind
    (vf - 1.0) * (backlog + gather.min(stage.fwd_span / vf))
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
        exposed_comm_s: b.micro_batches as f64 / (1.0 - b.bubble_fraction)
            * (b.tp_comm_mb_s + b.pp_comm_mb_s + b.other_comm_mb_s)
            + b.zero3_first_s
            + b.dp_exposed_s,
        ettr: ettr.iter().map(|&(p, e, _)| (p, e)).collect(),
        ettr_ci: ettr.iter().map(|&(p, _, (l, h))| (p, l, h)).collect(),
        split: Some(split_of(b)),
        memory_fraction: b.memory_per_gpu_bytes / w.cluster.gpu.memory_bytes as f64,
        moe: b.moe,
    }
}

/// The step's partition into causes (see [`StepSplit`]): the pipeline runs `m` micro-batch times of the slowest
/// stage (compute, TP, PP, CP and ZeRO-3 communication) plus its bubble; then the step's first ZeRO-3 gather (in
/// the other-communication share), the exposed DP reduction and the optimizer. The seven shares sum to 1 by
/// construction.
fn split_of(b: &StepBreakdown) -> StepSplit {
    let step = b.step_time_s;
    let pipeline = step - b.zero3_first_s - b.dp_exposed_s - b.optimizer_s;
    let mf = b.micro_batches as f64;
    StepSplit {
        compute: mf * (b.forward_mb_s + b.backward_mb_s) / step,
        bubble: b.bubble_fraction * pipeline / step,
        tp_comm: mf * b.tp_comm_mb_s / step,
        pp_comm: mf * b.pp_comm_mb_s / step,
        other_comm: (mf * b.other_comm_mb_s + b.zero3_first_s) / step,
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
    step_breakdown_on(w, cfg, profile, &AlphaBetaNetwork::of(&w.cluster))
}

/// [`step_breakdown`] with communication timed by `net` instead of the cluster's alpha-beta network (e.g. a
/// network simulator).
pub fn step_breakdown_on(
    w: &DenseTraining,
    cfg: &ParallelConfig,
    profile: Option<&DeviceProfile>,
    net: &dyn Network,
) -> Result<StepBreakdown, Error> {
    w.validate()?;
    let mb = check_config(w, cfg)?;
    let owned;
    let p = match profile {
        Some(p) => p,
        None => {
            owned = datasheet_profile(&w.cluster.gpu);
            &owned
        }
    };
    Ok(evaluate_on(w, cfg, p, mb, net))
}

/// Predicted step of one layout (does not check memory: see [`fits`]).
pub fn step(w: &DenseTraining, cfg: &ParallelConfig, profile: Option<&DeviceProfile>) -> Result<DenseOutcome, Error> {
    let b = step_breakdown(w, cfg, profile)?;
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
    /// The network that times the chosen layout's communication; `None` is the cluster's alpha-beta network. The
    /// layout search always runs on alpha-beta (millions of layouts); only the layout it picks (or the one given) is
    /// re-timed on this network.
    pub network: Option<std::sync::Arc<dyn crate::hardware::NetworkFactory>>,
}

impl Backend<DenseTraining> for DenseAnalytical {
    fn name(&self) -> &str {
        "analytical"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, w: &DenseTraining, ctx: &mut RunCtx) -> Result<DenseOutcome, Error> {
        if let Some(p) = &self.profile {
            p.check_gpu(&w.cluster.gpu.name)?;
        }
        let net = self
            .network
            .as_ref()
            .map(|f| f.network(&w.cluster, ctx.seed))
            .transpose()?;
        let Some(cfg) = &w.parallel else {
            let best = crate::search::search(w, self.profile.as_ref())?.best;
            return match &net {
                None => Ok(best),
                Some(net) => Ok(outcome_of(
                    w,
                    &step_breakdown_on(w, &best.config, self.profile.as_ref(), &**net)?,
                )),
            };
        };
        let b = match &net {
            None => step_breakdown(w, cfg, self.profile.as_ref())?,
            Some(net) => step_breakdown_on(w, cfg, self.profile.as_ref(), &**net)?,
        };
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The plain 1F1B schedule played pass by pass (each pass when its stage is free and its input is there): the
    /// reference for [`one_f_one_b_time`].
    fn one_f_one_b_played(f: &[f64], b: &[f64], m: usize) -> f64 {
        let p = f.len();
        let (mut f_end, mut b_end) = (vec![f64::NAN; p * m], vec![f64::NAN; p * m]);
        let (mut free, mut done) = (vec![0.0_f64; p], vec![0_usize; p]);
        loop {
            let mut progressed = false;
            for i in 0..p {
                let w = (p - i - 1).min(m);
                while done[i] < 2 * m {
                    let k = done[i];
                    let (fwd, j) = if k < w {
                        (true, k)
                    } else if k < 2 * m - w {
                        if (k - w).is_multiple_of(2) {
                            (true, w + (k - w) / 2)
                        } else {
                            (false, (k - w) / 2)
                        }
                    } else {
                        (false, k - m)
                    };
                    let ready = match (fwd, i) {
                        (true, 0) => 0.0,
                        (true, _) => f_end[(i - 1) * m + j],
                        (false, _) if i + 1 == p => f_end[i * m + j],
                        (false, _) => b_end[(i + 1) * m + j],
                    };
                    if ready.is_nan() {
                        break;
                    }
                    let end = free[i].max(ready) + if fwd { f[i] } else { b[i] };
                    if fwd {
                        f_end[i * m + j] = end
                    } else {
                        b_end[i * m + j] = end
                    }
                    free[i] = end;
                    done[i] += 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        free.iter().copied().fold(0.0, f64::max)
    }

    /// [`one_f_one_b_time`] against the schedule played pass by pass: equal stages `(m + p - 1) t`; a hand-worked
    /// case; Megatron-like splits (60-126 layers over 4-32 stages, one layer fewer on the end stages or not, an
    /// embedding on the first and a head on the last), from one micro-batch to 8 per stage, within 0.5%; random stage
    /// times within 5%, 0.2% on average, never above the schedule; `m t_max + sum - t_max` is more than 10% above it
    /// on some of those splits.
    #[test]
    fn one_f_one_b_time_follows_the_schedule() {
        for (p, m) in [(1usize, 5u64), (2, 4), (4, 8), (8, 32), (16, 16)] {
            let t = one_f_one_b_time(&vec![1.0; p], &vec![2.0; p], m);
            assert!((t - (m as f64 + p as f64 - 1.0) * 3.0).abs() < 1e-9, "{p} {m}: {t}");
        }
        // p = 2, m = 4, f = (1.75, 1), b = (5.25, 3): stage 0 waits 2.25 once for the first backward (its second
        // forward ends at 3.5, the backward is back at 1.75 + 4 = 5.75), then runs back to back: 4 x 7 + 2.25
        let (f, b) = ([1.75, 1.0], [5.25, 3.0]);
        assert!((one_f_one_b_played(&f, &b, 4) - 30.25).abs() < 1e-9);
        assert!((one_f_one_b_time(&f, &b, 4) - 30.25).abs() < 1e-9);
        let mut worst_old = 0.0_f64;
        for layers in [60u64, 80, 96, 126] {
            for p in [4u64, 8, 16, 32] {
                for trim in [0, 1] {
                    let Some(st) = StageLayers::of(layers, p, trim) else {
                        continue;
                    };
                    for (emb, head) in [(0.1, 0.5), (0.3, 1.5)] {
                        let mut t: Vec<f64> = st.per_stage(p).iter().map(|&l| l as f64).collect();
                        t[0] += emb;
                        t[p as usize - 1] += head;
                        let f: Vec<f64> = t.iter().map(|x| x / 3.0).collect();
                        let b: Vec<f64> = t.iter().map(|x| 2.0 * x / 3.0).collect();
                        for m in [1, p / 2, p, 2 * p, 8 * p] {
                            let played = one_f_one_b_played(&f, &b, m as usize);
                            let e = one_f_one_b_time(&f, &b, m) / played - 1.0;
                            assert!(e.abs() < 0.005, "{layers} layers, pp {p}, trim {trim}, m {m}: {e}");
                            let t_max = t.iter().copied().fold(0.0, f64::max);
                            let old = m as f64 * t_max + t.iter().sum::<f64>() - t_max;
                            worst_old = worst_old.max(old / played - 1.0);
                        }
                    }
                }
            }
        }
        assert!(worst_old > 0.10, "the stage-sum formula's worst {worst_old}");
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            3.0 + (x % 5) as f64
        };
        let mut errors = Vec::new();
        for _ in 0..40 {
            for p in [2usize, 3, 5, 8, 16] {
                for m in [
                    1,
                    (p as u64).div_ceil(2),
                    p as u64 - 1,
                    p as u64,
                    2 * p as u64,
                    4 * p as u64,
                ] {
                    let m = m.max(1);
                    let t: Vec<f64> = (0..p).map(|_| next()).collect();
                    let r = if m % 2 == 0 { 1.0 / 3.0 } else { 0.25 };
                    let f: Vec<f64> = t.iter().map(|x| x * r).collect();
                    let b: Vec<f64> = t.iter().map(|x| x * (1.0 - r)).collect();
                    let e = one_f_one_b_time(&f, &b, m) / one_f_one_b_played(&f, &b, m as usize) - 1.0;
                    assert!(e < 1e-9 && e > -0.05, "{t:?} m {m}: {e}");
                    errors.push(e.abs());
                }
            }
        }
        let mean = errors.iter().sum::<f64>() / errors.len() as f64;
        assert!(mean < 0.002, "mean {mean}");
    }

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
        DenseTraining::new(llama70b(), cluster(nodes), 4096 * 1024, 2e12, Dtype::Bf16)
    }

    pub(crate) fn cfg(tp: u64, pp: u64, dp: u64, mb: u64, r: Recompute) -> ParallelConfig {
        ParallelConfig::new(tp, pp, dp, mb, r)
    }

    #[test]
    fn causal_attention_computes_the_tiles_on_and_below_the_diagonal() {
        assert_eq!(causal_block_fraction(128.0), 1.0);
        assert_eq!(causal_block_fraction(256.0), 0.75);
        assert_eq!(causal_block_fraction(2048.0), 17.0 / 32.0);
        assert!((causal_block_fraction(131_072.0) - 0.5).abs() < 1e-3);
        // the fused kernel's attention core is that fraction of the materialised one (same GEMMs, full square)
        let m = TransformerSpec {
            seq_len: 32_768,
            ..llama70b()
        };
        let c = cfg(8, 1, 1, 1, Recompute::Full);
        let fused = DenseTraining::new(m, cluster(1), 32_768, 1e9, Dtype::Bf16);
        let mat = DenseTraining {
            attention_scores_materialized: true,
            ..fused.clone()
        };
        let core = |w: &DenseTraining| {
            let mb = check_config(w, &c).unwrap();
            let p = datasheet_profile(&w.cluster.gpu);
            step_costs(w, &c, &p, mb, &AlphaBetaNetwork::of(&w.cluster)).layer.core
        };
        let ratio = core(&fused) / core(&mat);
        assert!((ratio - causal_block_fraction(32_768.0)).abs() < 1e-12, "{ratio}");
    }

    /// A sliding window: the key tiles within it, counted in closed form (checked against a count over the tiles
    /// and against the exact number of (query, key) pairs, which the tiles cover with at most one partial tile per
    /// query tile at the window's lower edge and one on the diagonal).
    #[test]
    fn sliding_window_counts_the_key_tiles_within_it() {
        let t = ATTENTION_TILE;
        // 2048 tokens, window 1024: query tile i needs key tiles i-8..=i: 36 + 8 * 9 = 108 of 256
        assert_eq!(attention_block_fraction(2048.0, Some(1024)), 108.0 / 256.0);
        assert_eq!(attention_block_fraction(2048.0, None), causal_block_fraction(2048.0));
        assert_eq!(
            attention_block_fraction(2048.0, Some(2048)),
            causal_block_fraction(2048.0)
        );
        // a window of one token: the diagonal tiles only
        assert_eq!(attention_block_fraction(2048.0, Some(1)), 1.0 / 16.0);
        for (s, w) in [
            (2048u64, 129u64),
            (4096, 1000),
            (8192, 4096),
            (131_072, 4096),
            (131_072, 8191),
        ] {
            let n = (s as f64 / t).ceil() as u64;
            let mut tiles = 0u64;
            for i in 0..n {
                let lo = (i * t as u64 + 1).saturating_sub(w) / t as u64;
                tiles += i - lo + 1;
            }
            let f = attention_block_fraction(s as f64, Some(w));
            assert!((f - tiles as f64 / (n * n) as f64).abs() < 1e-15, "{s} {w}: {f}");
            // exact pairs: sum over queries q of min(q + 1, w)
            let (sf, wf) = (s as f64, w as f64);
            let pairs = wf * (wf + 1.0) / 2.0 + (sf - wf) * wf;
            let covered = f * sf * sf;
            assert!(covered >= pairs && covered <= pairs + 2.0 * n as f64 * t * t, "{s} {w}");
        }
        // the fused kernel's attention core shrinks by the same ratio
        let c = cfg(8, 1, 1, 1, Recompute::Selective);
        let full = DenseTraining::new(llama70b(), cluster(1), 4096, 1e9, Dtype::Bf16);
        let win = DenseTraining {
            sliding_window: Some(1024),
            ..full.clone()
        };
        let core = |w: &DenseTraining| {
            let mb = check_config(w, &c).unwrap();
            let p = datasheet_profile(&w.cluster.gpu);
            step_costs(w, &c, &p, mb, &AlphaBetaNetwork::of(&w.cluster)).layer.core
        };
        let want = attention_block_fraction(4096.0, Some(1024)) / causal_block_fraction(4096.0);
        assert!((core(&win) / core(&full) - want).abs() < 1e-12);
        // materialised scores stay a full GEMM (masked afterwards)
        let mat = |w: &DenseTraining| DenseTraining {
            attention_scores_materialized: true,
            ..w.clone()
        };
        assert_eq!(core(&mat(&win)), core(&mat(&full)));
        // model FLOPs (MFU) count full attention either way
        assert_eq!(win.train_flops_per_token(), full.train_flops_per_token());
        // 0 and more than the sequence are input errors naming the field
        for bad in [0, 4097] {
            let w = DenseTraining {
                sliding_window: Some(bad),
                ..full.clone()
            };
            let e = w.validate().unwrap_err().to_string();
            assert!(e.contains("workload.sliding_window"), "{e}");
        }
    }

    /// The parallel block: half the TP collectives, 4 sbh less activation memory per layer, fused GEMMs no slower
    /// than the two they replace, nothing changes without TP except compute and memory.
    #[test]
    fn parallel_block_halves_the_tp_collectives() {
        let w = workload(16);
        let ptb = DenseTraining {
            parallel_block: true,
            ..w.clone()
        };
        for c in [
            cfg(8, 4, 4, 1, Recompute::Selective),
            cfg(8, 4, 4, 1, Recompute::Full),
            ParallelConfig {
                sequence_parallel: false,
                ..cfg(8, 4, 4, 1, Recompute::None)
            },
        ] {
            let a = step_breakdown(&w, &c, None).unwrap();
            let b = step_breakdown(&ptb, &c, None).unwrap();
            // per layer half the collectives (the embedding's and the head's stay)
            let layer = |w: &DenseTraining| {
                let p = datasheet_profile(&w.cluster.gpu);
                let mb = check_config(w, &c).unwrap();
                step_costs(w, &c, &p, mb, &AlphaBetaNetwork::of(&w.cluster)).layer
            };
            let (la, lb) = (layer(&w), layer(&ptb));
            let r = c.recompute;
            assert!(
                (lb.tp_layer(r, false) / la.tp_layer(r, false) - 0.5).abs() < 1e-12,
                "{c:?}"
            );
            assert!(b.tp_comm_mb_s < 0.6 * a.tp_comm_mb_s, "{c:?}");
            assert!(b.forward_mb_s < a.forward_mb_s, "{c:?}");
            assert!(b.memory_per_gpu_bytes < a.memory_per_gpu_bytes, "{c:?}");
            assert!(b.step_time_s < a.step_time_s && b.mfu > a.mfu);
            assert_eq!(a.model_flops_per_step, b.model_flops_per_step);
        }
        let c = cfg(8, 4, 4, 1, Recompute::None);
        let m = &w.model;
        let sbh = (m.seq_len * m.hidden) as f64;
        let seq = activation_bytes_per_layer(m, &c, Recompute::None, false, false);
        let par = activation_bytes_per_layer(m, &c, Recompute::None, false, true);
        assert!(((seq - par) / (4.0 * sbh / 8.0) - 1.0).abs() < 1e-12);
        let nosp = ParallelConfig {
            sequence_parallel: false,
            ..c
        };
        let par = activation_bytes_per_layer(m, &nosp, Recompute::None, false, true);
        assert!((par / (sbh * (6.0 + 24.0 / 8.0)) - 1.0).abs() < 1e-12);
        // with tp_comm_overlap too: each fused pair is chunked where that pays, and it never slows the step
        let ptbo = DenseTraining {
            tp_comm_overlap: true,
            ..ptb.clone()
        };
        let on = step_breakdown(&ptbo, &c, None).unwrap();
        let off = step_breakdown(&ptb, &c, None).unwrap();
        assert!(on.tp_comm_mb_s < off.tp_comm_mb_s);
        // no TP: no collective to save
        let c1 = cfg(1, 8, 16, 1, Recompute::Full);
        assert_eq!(step_breakdown(&ptb, &c1, None).unwrap().tp_comm_mb_s, 0.0);
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
        let b = evaluate(&w, &c, &p, mb);
        let m = &w.model;
        let tokens_mb = m.seq_len as f64;
        // slowest stage: 20 layers + head, over tp = 8; the fused causal kernel computes the score tiles on or below
        // the diagonal
        let attn = 4.0 * m.seq_len as f64 * m.hidden as f64 * causal_block_fraction(m.seq_len as f64);
        let layer_flops = 3.0 * (2.0 * m.layer_params() + attn) * tokens_mb / 8.0;
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
        // fused attention stores no scores: selective recomputation saves no memory then
        assert_eq!(none.memory_per_gpu_bytes, sel.memory_per_gpu_bytes);
        assert!(sel.memory_per_gpu_bytes > full.memory_per_gpu_bytes);
        let mut wm = w.clone();
        wm.attention_scores_materialized = true;
        let none_m = step_breakdown(&wm, &cfg(8, 4, 4, 1, Recompute::None), None).unwrap();
        let sel_m = step_breakdown(&wm, &cfg(8, 4, 4, 1, Recompute::Selective), None).unwrap();
        assert!(none_m.memory_per_gpu_bytes > sel_m.memory_per_gpu_bytes);
        assert_eq!(sel_m.memory_per_gpu_bytes, sel.memory_per_gpu_bytes);
        // full recompute costs about one extra forward: +1/3 of compute
        let ratio = (full.forward_mb_s + full.backward_mb_s) / (none.forward_mb_s + none.backward_mb_s);
        assert!(ratio > 1.3 && ratio < 1.34, "{ratio}");
        // MFU does not credit recomputation
        assert!(full.mfu < none.mfu);
    }

    /// The bubble of `m t_max + (sum_i t_i - t_max) / v` from the four stages' own times (20 layers each).
    fn pipeline_bubble(w: &DenseTraining, c: &ParallelConfig, v: u64) -> f64 {
        let mb = check_config(w, c).unwrap();
        let net = AlphaBetaNetwork::of(&w.cluster);
        let p = datasheet_profile(&w.cluster.gpu);
        let costs = step_costs(w, c, &p, mb, &net);
        let t: Vec<f64> = [(true, false), (false, false), (false, false), (false, true)]
            .iter()
            .map(|&(first, last)| stage_time(&costs, &net, 20, first, last).total())
            .collect();
        let t_max = t.iter().copied().fold(0.0, f64::max);
        let steady = mb as f64 * t_max;
        let pipeline = steady + (t.iter().sum::<f64>() - t_max) / v as f64;
        (pipeline - steady) / pipeline
    }

    #[test]
    fn bubble_and_memory_closed_forms() {
        let w = workload(16);
        let c = cfg(8, 4, 4, 2, Recompute::Selective);
        let b = step_breakdown(&w, &c, None).unwrap();
        // 1024 sequences / (dp 4 * mb 2) = 128 micro-batches
        assert_eq!(b.micro_batches, 128);
        // m t_max + (sum - t_max) / v over the stages' times (the first carries the embedding, the last the head);
        // with equal stages this would be (p-1)/(m+p-1) = 3/131, and the cheaper end stages make it a little less
        let expect = pipeline_bubble(&w, &c, 1);
        assert!(
            (b.bubble_fraction - expect).abs() < 1e-12,
            "{} vs {expect}",
            b.bubble_fraction
        );
        assert!(b.bubble_fraction < 3.0 / 131.0 && b.bubble_fraction > 0.9 * 3.0 / 131.0);
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
        let mut w = workload(16);
        let c = cfg(8, 4, 4, 2, Recompute::Selective);
        let plain = step_breakdown(&w, &c, None).unwrap();
        let inter_cfg = ParallelConfig { virtual_stages: 4, ..c };
        let inter = step_breakdown(&w, &inter_cfg, None).unwrap();
        // Narayanan et al. sec. 2.2.2: the bubble is (p-1)/v slots, the point-to-point traffic v times
        let expect = pipeline_bubble(&w, &inter_cfg, 4);
        assert!(
            (inter.bubble_fraction - expect).abs() < 1e-12,
            "{} vs {expect}",
            inter.bubble_fraction
        );
        // near (p-1)/v / (m + (p-1)/v) of equal stages
        assert!(inter.bubble_fraction < 0.75 / 128.75 && inter.bubble_fraction > 0.9 * 0.75 / 128.75);
        assert!(inter.step_time_s < plain.step_time_s);
        assert!((inter.pp_comm_mb_s / plain.pp_comm_mb_s - 4.0).abs() < 1e-9);
        // more chunks in flight on the first stage: 2(p-1) + (v-1)p + 1 = 19 chunks of 5 layers vs 4 x 20 layers
        assert!(inter.memory_per_gpu_bytes > plain.memory_per_gpu_bytes);
        w.attention_scores_materialized = true;
        let mat = step_breakdown(&w, &c, None).unwrap();
        assert!(mat.forward_mb_s > plain.forward_mb_s);
        // 3 chunks do not divide the 20 layers per stage
        let bad = ParallelConfig { virtual_stages: 3, ..c };
        let e = step(&w, &bad, None).unwrap_err().to_string();
        assert!(e.contains("workload.parallel.virtual_stages"), "{e}");
    }

    #[test]
    fn korthikanti_activation_memory() {
        let m = llama70b();
        let (s, b, h, a) = (4096.0, 1.0, 8192.0, 64.0);
        let sbh = s * b * h;
        let mut c = cfg(8, 1, 1, 1, Recompute::None);
        let with_sp = activation_bytes_per_layer(&m, &c, Recompute::None, true, false);
        assert!((with_sp / (sbh / 8.0 * (34.0 + 5.0 * a * s / h)) - 1.0).abs() < 1e-12);
        assert!(
            (activation_bytes_per_layer(&m, &c, Recompute::Selective, true, false) / (34.0 * sbh / 8.0) - 1.0).abs()
                < 1e-12
        );
        c.sequence_parallel = false;
        let without = activation_bytes_per_layer(&m, &c, Recompute::None, true, false);
        assert!((without / (sbh * (10.0 + 24.0 / 8.0 + 5.0 * a * s / (h * 8.0))) - 1.0).abs() < 1e-12);
        assert!(
            (activation_bytes_per_layer(&m, &c, Recompute::Selective, true, false) / (sbh * (10.0 + 3.0)) - 1.0).abs()
                < 1e-12
        );
        // context parallelism divides the tokens a rank holds
        c.sequence_parallel = true;
        c.cp = 4;
        let cp4 = activation_bytes_per_layer(&m, &c, Recompute::None, true, false);
        assert!((cp4 * 4.0 / with_sp - 1.0).abs() < 1e-12);
        // fused attention stores no scores: no recomputation then stores what selective recomputation stores
        c.cp = 1;
        let fused = activation_bytes_per_layer(&m, &c, Recompute::None, false, false);
        assert_eq!(
            fused,
            activation_bytes_per_layer(&m, &c, Recompute::Selective, true, false)
        );
    }

    #[test]
    fn sequence_parallel_context_parallel_and_zero_change_time_and_memory() {
        let w = workload(16);
        let base = cfg(8, 4, 4, 1, Recompute::Selective);
        let b = step_breakdown(&w, &base, None).unwrap();
        let nosp = step_breakdown(
            &w,
            &ParallelConfig {
                sequence_parallel: false,
                ..base
            },
            None,
        )
        .unwrap();
        assert!(nosp.forward_mb_s > b.forward_mb_s && nosp.memory_per_gpu_bytes > b.memory_per_gpu_bytes);
        // cp 2 halves the tokens per rank: less memory, a ring exchange per layer
        let cp = ParallelConfig { cp: 2, dp: 2, ..base };
        let bc = step_breakdown(&w, &cp, None).unwrap();
        assert!(bc.memory_per_gpu_bytes < b.memory_per_gpu_bytes);
        assert!(bc.forward_mb_s < b.forward_mb_s);
        let mut wo = w.clone();
        wo.overlap_comm = false;
        let bo = step_breakdown(&wo, &cp, None).unwrap();
        assert!(bo.other_comm_mb_s > bc.other_comm_mb_s && bo.other_comm_mb_s > 0.0);
        // ZeRO stages: less memory each, ZeRO-3 gathers parameters every pass
        let mem: Vec<f64> = (0..=3u8)
            .map(|z| step_breakdown(&w, &ParallelConfig { zero_stage: z, ..base }, None).unwrap())
            .map(|x| x.memory_per_gpu_bytes)
            .collect();
        assert!(mem.windows(2).all(|p| p[1] < p[0]), "{mem:?}");
        let z3 = step_breakdown(&wo, &ParallelConfig { zero_stage: 3, ..base }, None).unwrap();
        assert!(z3.other_comm_mb_s > 0.0);
        // The step-time shares partition the step, CP and ZeRO-3 communication included.
        for x in [&b, &bc, &bo, &z3, &nosp] {
            let total: f64 = split_of(x).named().iter().map(|(_, v)| v).sum();
            assert!((total - 1.0).abs() < 1e-9, "{total}");
        }
        assert!(split_of(&bo).other_comm > 0.0);
        // cp must divide the sequence, zero_stage is 0..=3
        let e = step(
            &w,
            &ParallelConfig {
                cp: 3,
                dp: 1,
                pp: 1,
                tp: 8,
                ..base
            },
            None,
        );
        assert!(e.is_err());
        let mut w3 = workload(12);
        w3.global_batch_tokens = 4096 * 96;
        let e = step(
            &w3,
            &ParallelConfig {
                cp: 3,
                dp: 4,
                pp: 1,
                tp: 8,
                ..base
            },
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("workload.parallel.cp"), "{e}");
        let e = step(&w, &ParallelConfig { zero_stage: 4, ..base }, None).unwrap_err();
        assert!(e.to_string().contains("workload.parallel.zero_stage"), "{e}");
    }

    #[test]
    fn uneven_stages_slowest_sets_the_pace() {
        // 80 layers on 6 stages: the two extra layers go to the middle stages first
        let st = StageLayers::of(80, 6, 0).unwrap();
        assert_eq!(st.per_stage(6).iter().sum::<u64>(), 80);
        assert_eq!(st.per_stage(6), vec![13, 14, 14, 13, 13, 13]);
        // Llama 3 405B: 126 layers, 16 stages, one layer fewer on the first and the last
        let l3 = StageLayers::of(126, 16, 1).unwrap();
        assert_eq!((l3.first, l3.last, l3.mid_max, l3.mid_min), (7, 7, 8, 8));
        assert_eq!(l3.per_stage(16).iter().sum::<u64>(), 126);
        let w = workload(16);
        let even = step_breakdown(&w, &cfg(8, 4, 4, 1, Recompute::Selective), None).unwrap();
        // pp = 5 does not divide the GPUs here; trim shifts the head's stage's layers to the others
        let trimmed = step_breakdown(
            &w,
            &ParallelConfig {
                trim_end_stages: 1,
                ..cfg(8, 4, 4, 1, Recompute::Selective)
            },
            None,
        )
        .unwrap();
        // a 70B layer costs more than the LM head: 21 layers on a middle stage are slower than 20 + head
        assert!(
            trimmed.step_time_s > even.step_time_s,
            "{} vs {}",
            trimmed.step_time_s,
            even.step_time_s
        );
        let c = check_config(&w, &cfg(8, 4, 4, 1, Recompute::Selective)).unwrap();
        let p = datasheet_profile(&w.cluster.gpu);
        let costs = step_costs(
            &w,
            &cfg(8, 4, 4, 1, Recompute::Selective),
            &p,
            c,
            &AlphaBetaNetwork::of(&w.cluster),
        );
        assert!((trimmed.forward_mb_s / (21.0 * costs.layer.fwd()) - 1.0).abs() < 1e-12);
        // with a trim the slowest stage's time sets m t_max + (sum - t_max) / v
        assert!(StageLayers::of(8, 4, 4).is_none());
        let e = step(
            &w,
            &ParallelConfig {
                trim_end_stages: 40,
                ..cfg(8, 4, 4, 1, Recompute::Selective)
            },
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("workload.parallel.trim_end_stages"), "{e}");
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

    /// The DP reduction's exposed end: with one chunk `max(total - bwd, last)`; interleaved chunks hand their buckets
    /// over earlier, so they never expose more than one chunk with the same totals; never less than the last bucket.
    #[test]
    fn dp_tail_is_the_last_chunks_backlog() {
        for (bwd, total, last) in [(1.0, 0.4, 0.05), (1.0, 1.5, 0.05), (0.2, 3.0, 0.3), (1.0, 0.0, 0.0)] {
            let one = dp_tail_exposed(bwd, total, last, 1.0, 1.0);
            assert!((one - (total - bwd).max(last)).abs() < 1e-12, "{one}");
            for (v, gap) in [(2.0, 1.0), (4.0, 2.0), (8.0, 8.0)] {
                let e = dp_tail_exposed(bwd, total, last, v, gap);
                assert!(e <= one + 1e-12 && e >= last - 1e-12, "v {v}: {e} vs {one}");
            }
        }
        // a stream that cannot keep up runs without a break from the first chunk's last backward on: it exposes all
        // the buckets less the time from that pass's start to the step's end (3 passes apart, plus the pass itself)
        let e = dp_tail_exposed(0.8, 4.0, 0.1, 4.0, 1.0);
        assert!((e - (4.0 - (3.0 * 0.2 + 0.2))).abs() < 1e-12, "{e}");
    }

    /// With overlap the DP reduction runs in buckets of whole layers, each collective paying its latency: more than
    /// one reduction of the same bytes, and exactly it when one bucket holds them all; without overlap, one reduction.
    #[test]
    fn dp_buckets_pay_their_latency() {
        let mut w = workload(64);
        let c = cfg(8, 1, 64, 1, Recompute::Selective);
        let p = datasheet_profile(&w.cluster.gpu);
        let net = AlphaBetaNetwork::of(&w.cluster);
        let costs = step_costs(&w, &c, &p, 2, &net);
        let bytes = 80.0 * costs.layer.grad_bytes;
        let whole = costs.dp_sync(&net, bytes);
        let (total, last) = bucketed_dp_sync(&w, &costs, &net, bytes);
        assert!(total > whole && last < total, "{total} {last} {whole}");
        w.dp_bucket_bytes = 2.0 * bytes;
        let (all, last) = bucketed_dp_sync(&w, &costs, &net, bytes);
        assert!((all - whole).abs() < 1e-12 * whole && (last - whole).abs() < 1e-12 * whole);
        w.overlap_comm = false;
        w.dp_bucket_bytes = trainlab_core::workloads::dense::DEFAULT_BUCKET_BYTES;
        let costs = step_costs(&w, &c, &p, 2, &net);
        assert_eq!(bucketed_dp_sync(&w, &costs, &net, bytes), (whole, whole));
    }

    /// `tp_comm_overlap` never makes a step slower (each GEMM + collective pair is chunked only where that pays),
    /// hides TP time where the GEMMs are long, and leaves a layout without TP alone.
    #[test]
    fn tp_comm_overlap_only_hides() {
        let mut w = workload(16);
        let mut hid = 0;
        for c in crate::search::candidates(&w).iter().step_by(7) {
            w.tp_comm_overlap = false;
            let off = step_breakdown(&w, c, None).unwrap();
            w.tp_comm_overlap = true;
            let on = step_breakdown(&w, c, None).unwrap();
            assert!(on.step_time_s <= off.step_time_s, "{c:?}");
            assert!(on.tp_comm_mb_s <= off.tp_comm_mb_s);
            if c.tp == 1 {
                assert_eq!(on, off);
            } else if on.tp_comm_mb_s < off.tp_comm_mb_s {
                hid += 1;
            }
        }
        assert!(hid > 10, "{hid}");
        // the rule itself: a GEMM far longer than a collective chunk leaves one chunk exposed; a GEMM of zero time
        // would expose n chunks (more than the whole collective: latency paid n times), so no chunking then
        let c = cfg(8, 1, 16, 1, Recompute::Selective);
        let mb = check_config(&w, &c).unwrap();
        let l = step_costs(
            &w,
            &c,
            &datasheet_profile(&w.cluster.gpu),
            mb,
            &AlphaBetaNetwork::of(&w.cluster),
        )
        .layer;
        assert!((l.tp_chunked_exposed(1.0) - l.tp_coll_chunk).abs() < 1e-18);
        assert!(!l.tp_chunking_pays(0.0) && l.tp_after(0.0, true) == l.tp_coll);
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
        let free = step_breakdown_on(&w, &c, None, &Free).unwrap();
        assert_eq!((free.tp_comm_mb_s, free.pp_comm_mb_s, free.dp_comm_s), (0.0, 0.0, 0.0));
        let ab = step_breakdown_on(&w, &c, None, &AlphaBetaNetwork::of(&w.cluster)).unwrap();
        assert_eq!(ab, step_breakdown(&w, &c, None).unwrap());
        assert!(ab.tp_comm_mb_s > 0.0 && ab.pp_comm_mb_s > 0.0 && ab.dp_comm_s > 0.0);
        assert_eq!(free.forward_mb_s, ab.forward_mb_s);
    }
}
