//! Closed form of a recommender training step (`recsys_step`, PICASSO: arXiv 2204.04903; cost model of
//! `shared/design/notes/c4-picasso-moe.md` §2.4), and the op plan the kernel-level simulator (`trainlab_sim::recsys`)
//! replays.
//!
//! # The op plan ([`plan`])
//! Per micro-batch of `b` samples, each embedding chain (a field, or a packed group of fields with equal `dim` and
//! `pooling`) with `L = b Σ ids_per_sample` lookups of rows of `d` fp32 values runs, in order:
//! `unique` (reads and writes the 8-byte ids: `16 L` bytes), a PCIe `copy` of the missed rows (`(1-h) 4 L d` bytes,
//! only when something misses), `gather` (`8 L d`: rows read, written to a staging buffer), `pool` (`4 L d` read,
//! `4 b d` per field written); the MLP chain: `concat` (`8 b K0`, `K0 = Σ d`), per layer a GEMM `[b, k] x [k, n]`
//! and an activation (`2 b n e` bytes), then backward per layer (last first) activation gradient (`3 b n e`), the
//! data-gradient GEMM `[b, n] x [n, k]` and the weight-gradient GEMM `[k, b] x [b, n]`; then per embedding chain
//! `pool_grad` (`4 b d` per field read, `4 L d` written) and the sparse row update `scatter` (`12 L d`). After all
//! micro-batches, one optimizer kernel per layer (`28 k n` bytes: Adam reads weights, gradient and two moments, writes
//! three). Packing makes one chain of summed bytes out of the group's fields. Mean pooling costs what sum does.
//! Ids are not de-duplicated before the copy (every lookup of a missed row copies it): an upper bound on PCIe bytes.
//!
//! # Time of one op alone
//! - **Kernels** have a block shape ([`BlockShape`]) and a grid; the blocks an SM holds follow the CUDA occupancy
//!   rules ([`occupancy`]), and the kernel's share of the GPU's block slots is `s = min(1, blocks / (occ x SMs))`.
//! - **Memory-bound kernels** (all but GEMMs): `kernel_us + bytes / (bw x min(1, 2 s))`, `bw` = 0.9 x HBM (the
//!   datasheet memory efficiency of [`crate::roofline`]). A kernel on fewer than half the SMs cannot keep enough bytes
//!   in flight to saturate HBM (Little's law); the factor 2 is an assumption, not a measurement.
//! - **GEMMs**: `kernel_us` + the shared GEMM law of [`crate::hardware`] (`max(F / (rate d/(d+h)), B / bw)`,
//!   `d = min(m, n, k)`, datasheet rate 0.75 x dense peak); 256-thread blocks of a 128 x 128 tile, 128 registers per
//!   thread, 64 KiB shared memory (a cuBLAS-like tile; an assumption).
//! - **Copies**: `kernel_us + bytes / PCIe` per direction (the preset's datasheet figure).
//! - **Launch**: every op (kernels and copies) costs the host `launch_us`.
//!
//! # Step time ([`RecsysAnalytical`])
//! With one stream the executor is synchronous: `T = Σ_ops (launch + time)`. With `S >= 2` streams and `M`
//! micro-batches three stages (host launch, PCIe copy, and the GPU's embedding and MLP kernels; sums `t_r`) pipeline
//! across micro-batches: `T = max(t_launch, Σ_r t_r / M + (M - 1) max(t_copy, t_gpu) / M)` (notes §2.4; it tends to
//! the slowest stage as `M` grows instead of `Σ_r t_r`; the host launch streams op by op from the start, so when it is
//! the slowest the others finish behind it). The embedding and MLP kernels share the GPU, so its stage takes
//! `max(Σ_k s_k t_k, bytes / bw, t_embedding, t_mlp)` (at most their sum): concurrent kernels overlap only as far as
//! the SMs and HBM allow (the simulator's block scheduling and shared bandwidth).
//! `sm_busy = Σ s_k t_k / T`, `hbm_util = Σ bytes / (T bw)`, `pcie_util = Σ copied / (T PCIe)`.
//!
//! # Cache hit rate in closed form
//! Ids of a table of `V` rows are Zipf(`s`): the row of rank `i` has probability `i^-s / H_{V,s}`,
//! `H_{n,s} = Σ_{i<=n} i^-s` (generalised harmonic number).
//! - `static_topk` caching the `k` most popular rows: `h = H_{k,s} / H_{V,s}` (notes §2.4).
//! - `lru`: Che's approximation (Che, Tung & Wang, IEEE JSAC 20(7), 2002; Fricker, Robert & Roberts, ITC 2012):
//!   the characteristic time `t_C` solves `Σ_i (1 - exp(-p_i t_C)) = k` (by bisection on `log t_C`), and
//!   `h = Σ_i p_i (1 - exp(-p_i t_C))`.
//! - `lfu`: under independent references an LFU cache converges to the top-k rows, so the static form is used.
//!
//! Sums over up to 2^34 rows are exact for the first [`EXACT_TERMS`] ranks and by geometric bins beyond (each bin's
//! terms evaluated at its geometric midpoint times its count; relative error below 1e-5 in the tests).
use serde::{Deserialize, Serialize};
use trainlab_core::workloads::recsys::{CachePolicy, RecsysOutcome, RecsysStep};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, SmSpec, Workload};

use crate::hardware::GemmLaw;
use crate::roofline::datasheet_profile;

/// A kernel's block shape, as the occupancy rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockShape {
    /// Threads per block.
    pub threads: u32,
    /// Registers per thread.
    pub regs: u32,
    /// Static plus dynamic shared memory per block, bytes.
    pub smem: u32,
}

/// Memory-bound kernels: 256 threads, 32 registers, 4 KiB shared memory (a hash or reduction scratch).
pub const MEM_BLOCK: BlockShape = BlockShape {
    threads: 256,
    regs: 32,
    smem: 4096,
};
/// GEMM kernels: 256 threads, 128 registers, 64 KiB shared memory per 128 x 128 tile.
pub const GEMM_BLOCK: BlockShape = BlockShape {
    threads: 256,
    regs: 128,
    smem: 64 * 1024,
};

/// SM sub-partitions whose register files are allocated separately (4 from compute capability 7.0; the
/// `cudaOccMaxBlocksPerSMRegsLimit` rule of `cuda_occupancy.h`).
const SUB_PARTITIONS: u32 = 4;

fn round_up(x: u32, unit: u32) -> u32 {
    if unit == 0 { x } else { x.div_ceil(unit) * unit }
}

/// Resident blocks per SM of a kernel of block shape `b` (0 if the shape cannot launch), by the CUDA occupancy
/// rules for compute capability 7.0 and later: the minimum of the block limit, the warp limit
/// (`max_threads / 32` warps over `ceil(threads / 32)` warps per block), the register limit (registers per warp
/// rounded up to the allocation unit; whole warps per sub-partition register file of `registers / 4`), and the
/// shared-memory limit (`smem + reserved` rounded up to the allocation unit).
pub fn occupancy(sm: &SmSpec, b: BlockShape) -> u32 {
    if b.threads == 0
        || b.threads > sm.max_threads_per_block
        || b.regs > sm.max_registers_per_thread
        || b.smem > sm.max_shared_mem_per_block_bytes
    {
        return 0;
    }
    let warps = b.threads.div_ceil(32);
    let by_blocks = sm.max_blocks_per_sm;
    let by_warps = (sm.max_threads_per_sm / 32) / warps;
    let by_regs = if b.regs == 0 {
        u32::MAX
    } else {
        let per_warp = round_up(b.regs * 32, sm.register_alloc_unit);
        let warps_by_regs = (sm.registers_per_sm / SUB_PARTITIONS / per_warp) * SUB_PARTITIONS;
        warps_by_regs / warps
    };
    let smem = round_up(
        b.smem + sm.reserved_shared_mem_per_block_bytes,
        sm.shared_mem_alloc_unit_bytes,
    );
    let by_smem = sm.shared_mem_per_sm_bytes.checked_div(smem).unwrap_or(u32::MAX);
    by_blocks.min(by_warps).min(by_regs).min(by_smem)
}

/// The share of the GPU's block slots a grid of `blocks` blocks of shape `b` occupies: `min(1, blocks / (occ SMs))`.
pub fn sm_share(sm: &SmSpec, b: BlockShape, blocks: f64) -> f64 {
    let slots = occupancy(sm, b) as f64 * sm.sms as f64;
    if slots <= 0.0 { 1.0 } else { (blocks / slots).min(1.0) }
}

/// Ranks summed term by term before geometric binning.
pub const EXACT_TERMS: u64 = 1 << 16;
const BIN_RATIO: f64 = 1.001;

/// `Σ_{i=1}^{n} g(i)` for a smooth, slowly varying `g`: exact up to [`EXACT_TERMS`], geometric bins beyond.
pub fn rank_sum(n: u64, g: impl Fn(f64) -> f64) -> f64 {
    let exact = n.min(EXACT_TERMS);
    let mut s = 0.0;
    for i in 1..=exact {
        s += g(i as f64);
    }
    let mut a = exact + 1;
    while a <= n {
        let b = (((a as f64) * BIN_RATIO) as u64).max(a).min(n);
        let mid = ((a as f64) * (b as f64)).sqrt();
        s += (b - a + 1) as f64 * g(mid);
        a = b + 1;
    }
    s
}

/// Generalised harmonic number `H_{n,s} = Σ_{i<=n} i^-s`.
pub fn harmonic(n: u64, s: f64) -> f64 {
    rank_sum(n, |i| i.powf(-s))
}

/// Hit rate of a static cache of the `k` most popular of `rows` Zipf(`s`) rows: `H_{k,s} / H_{V,s}`.
pub fn static_topk_hit(rows: u64, k: u64, s: f64) -> f64 {
    if k == 0 {
        return 0.0;
    }
    if k >= rows {
        return 1.0;
    }
    harmonic(k, s) / harmonic(rows, s)
}

/// Hit rate of an LRU cache of `k` of `rows` Zipf(`s`) rows under independent references, by Che's approximation.
pub fn lru_che_hit(rows: u64, k: u64, s: f64) -> f64 {
    if k == 0 {
        return 0.0;
    }
    if k >= rows {
        return 1.0;
    }
    let h = harmonic(rows, s);
    let occupied = |t: f64| rank_sum(rows, |i| 1.0 - (-(i.powf(-s) / h) * t).exp());
    // Bisection on log t: occupied(t) grows from 0 to `rows`.
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while occupied(hi.exp()) < k as f64 {
        lo = hi;
        hi *= 2.0;
        if hi > 200.0 {
            break;
        }
    }
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if occupied(mid.exp()) < k as f64 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let t = (0.5 * (lo + hi)).exp();
    rank_sum(rows, |i| {
        let p = i.powf(-s) / h;
        p * (1.0 - (-p * t).exp())
    })
}

/// The closed-form hit rate of field group `g` of `w` under its cache policy.
pub fn closed_form_hit(w: &RecsysStep, g: usize) -> f64 {
    let f = &w.fields[g];
    let k = w.cached_rows(f.rows);
    match w.cache.policy {
        CachePolicy::StaticTopk | CachePolicy::Lfu => static_topk_hit(f.rows, k, f.zipf_s),
        CachePolicy::Lru => lru_che_hit(f.rows, k, f.zipf_s),
    }
}

/// Which stage an op belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Embedding kernels (unique, gather, pool and their backward).
    Embedding,
    /// MLP kernels (concat, GEMMs, activations, optimizer).
    Mlp,
    /// PCIe copies (their own engine).
    Copy,
}

/// One op of the plan, in host program order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Op {
    /// Its stage.
    pub stage: Stage,
    /// The micro-batch (the optimizer ops carry `micro_batches`).
    pub micro: u32,
    /// The stream it runs on when there are `S >= 2` streams (copies: the copy engine).
    pub stream: u32,
    /// Time alone on the GPU, seconds (including the fixed kernel time).
    pub time_s: f64,
    /// Share of the GPU's block slots (0 for copies).
    pub sm_share: f64,
    /// HBM bytes moved.
    pub hbm_bytes: f64,
    /// PCIe bytes moved.
    pub pcie_bytes: f64,
}

/// The ops of one step, in host program order, and their dependencies beyond stream order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The ops.
    pub ops: Vec<Op>,
    /// `(before, after)`: `after` may start only once `before` has finished.
    pub edges: Vec<(u32, u32)>,
    /// Host time per op launch, seconds.
    pub launch_s: f64,
    /// Sustained HBM bandwidth, bytes/s.
    pub hbm_bw: f64,
    /// PCIe bandwidth, bytes/s.
    pub pcie_bw: f64,
    /// Lookups per step (all fields).
    pub lookups: f64,
    /// Lookups that hit the cache.
    pub hits: f64,
}

impl Plan {
    /// GPU kernels (ops that are not copies).
    pub fn kernels(&self) -> u64 {
        self.ops.iter().filter(|o| o.stage != Stage::Copy).count() as u64
    }
}

struct Builder<'a> {
    plan: Plan,
    sm: &'a SmSpec,
    kernel_s: f64,
    gemm: GemmLaw,
    elem: f64,
}

impl Builder<'_> {
    fn push(&mut self, op: Op, after: &[u32]) -> u32 {
        let id = self.plan.ops.len() as u32;
        self.plan.ops.push(op);
        for &a in after {
            self.plan.edges.push((a, id));
        }
        id
    }
    fn mem(&mut self, stage: Stage, micro: u32, stream: u32, bytes: f64, elems: f64, after: &[u32]) -> u32 {
        let s = sm_share(self.sm, MEM_BLOCK, (elems / 1024.0).ceil().max(1.0));
        let bw = self.plan.hbm_bw * (2.0 * s).min(1.0);
        let op = Op {
            stage,
            micro,
            stream,
            time_s: self.kernel_s + bytes / bw,
            sm_share: s,
            hbm_bytes: bytes,
            pcie_bytes: 0.0,
        };
        self.push(op, after)
    }
    fn gemm(&mut self, micro: u32, stream: u32, m: f64, n: f64, k: f64, after: &[u32]) -> u32 {
        let blocks = (m / 128.0).ceil() * (n / 128.0).ceil();
        let s = sm_share(self.sm, GEMM_BLOCK, blocks.max(1.0));
        let op = Op {
            stage: Stage::Mlp,
            micro,
            stream,
            time_s: self.kernel_s + self.gemm.matmul_time(m, n, k, 1.0, self.elem),
            sm_share: s,
            hbm_bytes: (m * k + k * n + m * n) * self.elem,
            pcie_bytes: 0.0,
        };
        self.push(op, after)
    }
}

/// The op plan of a step of `w` (validated), with the hit rate of each field group given by `hit`.
pub fn plan(w: &RecsysStep, hit: &[f64]) -> Plan {
    let gpu = &w.cluster.gpu;
    let sm = gpu.sm.as_ref().expect("validated: the GPU has SM limits");
    let profile = datasheet_profile(gpu);
    let gemm = GemmLaw::of(&profile, w.mlp_dtype);
    let mut b = Builder {
        plan: Plan {
            launch_s: w.overheads.launch_us * 1e-6,
            hbm_bw: profile.mem_bw_bytes_per_s,
            pcie_bw: sm.pcie_bytes_per_s,
            ..Plan::default()
        },
        sm,
        kernel_s: w.overheads.kernel_us * 1e-6,
        gemm,
        elem: w.mlp_dtype.bytes() as f64,
    };
    // Chains: (dim, fields of the chain as (group index, count)).
    let chains = field_chains(w);
    let m_total = w.micro_batches;
    let streams = w.streams as u32;
    let k0 = w.mlp_input() as f64;
    let mut mlp_last = Vec::new();
    for m in 0..m_total {
        // Split the batch as evenly as possible: the first `batch % M` micro-batches get one more sample.
        let bm = (w.batch / m_total + u64::from(m < w.batch % m_total)) as f64;
        let mi = m as u32;
        let mut fwd_last = Vec::with_capacity(chains.len());
        for (c, (dim, members)) in chains.iter().enumerate() {
            let st = (mi + c as u32) % streams;
            let d = *dim as f64;
            let (mut lookups, mut misses, mut nf) = (0.0, 0.0, 0.0);
            for &(g, count) in members {
                let l = bm * (count * w.fields[g].ids_per_sample) as f64;
                lookups += l;
                misses += l * (1.0 - hit[g]);
                nf += count as f64;
            }
            b.plan.lookups += lookups;
            b.plan.hits += lookups - misses;
            let u = b.mem(Stage::Embedding, mi, st, 16.0 * lookups, lookups, &[]);
            let mut prev = u;
            if misses > 0.0 {
                let bytes = 4.0 * misses * d;
                let op = Op {
                    stage: Stage::Copy,
                    micro: mi,
                    stream: st,
                    time_s: b.kernel_s + bytes / b.plan.pcie_bw,
                    sm_share: 0.0,
                    hbm_bytes: 0.0,
                    pcie_bytes: bytes,
                };
                prev = b.push(op, &[u]);
            }
            let g = b.mem(Stage::Embedding, mi, st, 8.0 * lookups * d, lookups * d, &[prev]);
            let p = b.mem(
                Stage::Embedding,
                mi,
                st,
                4.0 * lookups * d + 4.0 * bm * nf * d,
                lookups * d,
                &[g],
            );
            fwd_last.push(p);
        }
        let st = mi % streams;
        let mut prev = b.mem(Stage::Mlp, mi, st, 8.0 * bm * k0, bm * k0, &fwd_last);
        let mut widths = vec![k0];
        widths.extend(w.mlp.iter().map(|&x| x as f64));
        for l in 0..w.mlp.len() {
            let (k, n) = (widths[l], widths[l + 1]);
            prev = b.gemm(mi, st, bm, n, k, &[prev]);
            prev = b.mem(Stage::Mlp, mi, st, 2.0 * bm * n * b.elem, bm * n, &[prev]);
        }
        for l in (0..w.mlp.len()).rev() {
            let (k, n) = (widths[l], widths[l + 1]);
            prev = b.mem(Stage::Mlp, mi, st, 3.0 * bm * n * b.elem, bm * n, &[prev]);
            prev = b.gemm(mi, st, bm, k, n, &[prev]);
            prev = b.gemm(mi, st, k, n, bm, &[prev]);
        }
        mlp_last.push(prev);
        for (c, (dim, members)) in chains.iter().enumerate() {
            let st = (mi + c as u32) % streams;
            let d = *dim as f64;
            let (mut lookups, mut nf) = (0.0, 0.0);
            for &(g, count) in members {
                lookups += bm * (count * w.fields[g].ids_per_sample) as f64;
                nf += count as f64;
            }
            let pg = b.mem(
                Stage::Embedding,
                mi,
                st,
                4.0 * bm * nf * d + 4.0 * lookups * d,
                lookups * d,
                &[prev],
            );
            b.mem(Stage::Embedding, mi, st, 12.0 * lookups * d, lookups * d, &[pg]);
        }
    }
    let mut widths = vec![k0];
    widths.extend(w.mlp.iter().map(|&x| x as f64));
    let mut after = mlp_last;
    for l in 0..w.mlp.len() {
        let kn = widths[l] * widths[l + 1];
        let id = b.mem(Stage::Mlp, m_total as u32, 0, 28.0 * kn, kn, &after);
        after = vec![id];
    }
    b.plan
}

/// Sums of one plan by stage, and the utilisations of a step of time `t`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageSums {
    /// Host launch time, seconds.
    pub launch: f64,
    /// Embedding kernels, seconds.
    pub embedding: f64,
    /// MLP kernels, seconds.
    pub mlp: f64,
    /// Copies, seconds.
    pub copy: f64,
    /// `Σ s_k t_k`, seconds.
    pub sm_time: f64,
    /// HBM bytes.
    pub hbm_bytes: f64,
    /// PCIe bytes.
    pub pcie_bytes: f64,
}

/// The stage sums of `p`.
pub fn stage_sums(p: &Plan) -> StageSums {
    let mut s = StageSums {
        launch: p.ops.len() as f64 * p.launch_s,
        ..StageSums::default()
    };
    for o in &p.ops {
        match o.stage {
            Stage::Embedding => s.embedding += o.time_s,
            Stage::Mlp => s.mlp += o.time_s,
            Stage::Copy => s.copy += o.time_s,
        }
        s.sm_time += o.sm_share * o.time_s;
        s.hbm_bytes += o.hbm_bytes;
        s.pcie_bytes += o.pcie_bytes;
    }
    s
}

/// The closed-form outcome of `w` (validated).
pub fn closed_form(w: &RecsysStep) -> RecsysOutcome {
    let hit: Vec<f64> = (0..w.fields.len()).map(|g| closed_form_hit(w, g)).collect();
    let p = plan(w, &hit);
    let s = stage_sums(&p);
    let total = s.launch + s.embedding + s.mlp + s.copy;
    let t = if w.streams == 1 {
        total
    } else {
        // The embedding and MLP kernels share one GPU: across micro-batches they overlap only as far as its SMs and
        // HBM allow, so the GPU is one pipeline stage taking at least the SM time (every kernel's share of the SMs
        // times its duration, perfectly packed) and the HBM time, and no less than either kind of kernel alone (the
        // two stages the closed form had before 2026-12-03; kernels of one kind on different streams may overlap a
        // little too, which this leaves out).
        let gpu = s
            .sm_time
            .max(s.hbm_bytes / p.hbm_bw)
            .max(s.embedding)
            .max(s.mlp)
            .min(s.embedding + s.mlp);
        // The host launches op after op from the start, and the copies and kernels of a launched op start at once:
        // when launching is the slowest stage the others stream behind it and the step is the launch time (the
        // simulator's step equals it in the launch-bound cases); otherwise the slowest of the copy engine and the
        // GPU paces the pipeline, with the launches in its fill.
        let m = w.micro_batches as f64;
        let pace = gpu.max(s.copy);
        ((s.launch + gpu + s.copy) / m + (m - 1.0) * pace / m).max(s.launch)
    };
    RecsysOutcome {
        step_time_s: t,
        kernels: p.kernels(),
        sm_busy: (s.sm_time / t).min(1.0),
        hbm_util: s.hbm_bytes / (t * p.hbm_bw),
        pcie_util: s.pcie_bytes / (t * p.pcie_bw),
        cache_hit_rate: if p.lookups > 0.0 { p.hits / p.lookups } else { 0.0 },
        stage_embedding_s: s.embedding,
        stage_mlp_s: s.mlp,
        stage_copy_s: s.copy,
        stage_launch_s: s.launch,
        batch: w.batch,
    }
}

/// Parameters of the CPU op model (the `recsys_step` profile's parameters, fitted by `trainlab calibrate --workload
/// recsys_step` to real runs of the measured `cpu` backend; see [`cpu_closed_form`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecsysCpuParams {
    /// Fixed time of one op (dispatch, loop set-up, buffer bookkeeping), seconds.
    pub op_overhead_s: f64,
    /// Time per embedding row touched (one random row access and its loop step, whatever its width), and per pooled
    /// vector the MLP's `concat` moves, seconds.
    pub row_s: f64,
    /// Time per lookup of a staging copy op (each lookup checked against the cache, a missed row read from a random
    /// place of the host table), seconds; `None` (older profiles): `row_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_row_s: Option<f64>,
    /// Time per missed lookup in a staging copy op (the missed row read from a random place of the host table on
    /// top of the lookup's check), seconds; `None` (older profiles): 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miss_s: Option<f64>,
    /// Time per lookup decided by an LRU cache on top of `copy_row_s` (the [`crate::cache::RowCache`] bookkeeping:
    /// hash-map update and recency queue, the eviction and write-back of a miss at the fitted hit rate, the
    /// scatter's slot look-up), seconds; `None` (older profiles): 0, the static cache's rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lru_lookup_s: Option<f64>,
    /// Time per lookup decided by an LFU cache and per level `log2(k + 1)` of its ordered set of `k` rows (the
    /// `BTreeSet` remove and insert of every access are `O(log k)`), on top of `copy_row_s`, seconds; `None` (older
    /// profiles): 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lfu_level_s: Option<f64>,
    /// Time per host-table row access of a missed lookup (its read by the staging copy, its update by the
    /// `scatter`) and per doubling of its field's table beyond one 4 KiB page ([`span_levels`]): a random row of a
    /// larger table costs more (measured at fixed row width: README), the concave growth of the step with the field
    /// count at fixed embedding bytes, seconds; `None` (older profiles): 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_s: Option<f64>,
    /// Time per lookup that hits the cache, in the `gather` (a random row of the "device" table behind a
    /// data-dependent branch, where a miss's row is read from the staging buffer in order), seconds; `None` (older
    /// profiles): 0. On a CPU the "device" table is the same memory, so a hit costs about what the miss path saves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hit_s: Option<f64>,
    /// Time per byte of a hit row of an LRU cache, on top of `hit_s` (read by the `gather`, updated by the
    /// `scatter`): a replacing cache keeps each row in the slot it was admitted to, so its hot rows lie scattered over
    /// the "device" table, where a static top-k cache keeps the hottest rows together at the table's start; seconds;
    /// `None` (older profiles): 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lru_hit_byte_s: Option<f64>,
    /// Time per byte of a hit row of an LFU cache, on top of `hit_s`: as `lru_hit_byte_s`, fitted on its own (the
    /// LFU steps' embedding stage costs two to three times the LRU steps' extra per hit byte, measured; a likely cause
    /// is the larger bookkeeping of the copy stage before it, an ordered set per field, evicting the device rows from
    /// the CPU caches: not measured); seconds; `None` (older profiles): 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lfu_hit_byte_s: Option<f64>,
    /// Effective bandwidth of the embedding and element-wise ops (random row gathers, pooling, scatter), bytes/s.
    pub mem_bytes_per_s: f64,
    /// Bandwidth of the staging copy of missed rows (the stand-in for PCIe), bytes/s.
    pub copy_bytes_per_s: f64,
    /// Rate of the single-threaded MLP GEMMs, FLOP/s.
    pub gemm_flops_per_s: f64,
    /// Bandwidth of the MLP stage's bytes (GEMM operands, activations, the optimizer's weight update: dense,
    /// sequential streams, unlike the embedding ops' random rows) of a micro-batch that does not run from the cache,
    /// bytes/s; `None` (older profiles): `mem_bytes_per_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bytes_per_s: Option<f64>,
    /// Share of the ideal interleaving gain realised with two or more streams (0: none, 1: the ideal bound).
    pub overlap: f64,
    /// Worker threads the embedding streams run on.
    pub threads: u32,
    /// Bytes of the cache a micro-batch's first MLP layer ([`mlp_working_set`]) must fit in for the MLP ops to run
    /// from it (the calibrating machine's per-core L2, read from `/sys`); 0: never (older profiles).
    #[serde(default)]
    pub cache_bytes: f64,
    /// Bandwidth of the activation-side ops (forward and backward embedding ops, MLP) of a micro-batch whose first
    /// MLP layer fits in `cache_bytes`, bytes/s (0: `mem_bytes_per_s`).
    #[serde(default)]
    pub cache_bytes_per_s: f64,
}

impl RecsysCpuParams {
    /// The uncalibrated CPU model of `w` (on the `cpu` preset): the workload's `launch_us + kernel_us` per op, the
    /// preset's memory bandwidth for embedding ops and copies, its fp32 rate halved for one GEMM thread (the preset
    /// is for two cores), the ideal overlap, one thread. Documented guesses, replaced by a profile.
    pub fn uncalibrated(w: &RecsysStep) -> Self {
        let g = &w.cluster.gpu;
        RecsysCpuParams {
            op_overhead_s: (w.overheads.launch_us + w.overheads.kernel_us) * 1e-6,
            row_s: 0.0,
            copy_row_s: None,
            miss_s: None,
            lru_lookup_s: None,
            lfu_level_s: None,
            span_s: None,
            hit_s: None,
            lru_hit_byte_s: None,
            lfu_hit_byte_s: None,
            mem_bytes_per_s: g.hbm_bandwidth_bytes_per_s,
            copy_bytes_per_s: g.hbm_bandwidth_bytes_per_s,
            gemm_flops_per_s: 0.5 * g.peak(trainlab_core::Dtype::Fp32),
            mlp_bytes_per_s: None,
            overlap: 1.0,
            threads: 1,
            cache_bytes: 0.0,
            cache_bytes_per_s: 0.0,
        }
    }

    /// Whether the MLP of `w`'s largest micro-batch runs from cache: a cache bandwidth was fitted and the first
    /// layer's operands (fp32 input `b x K0`, weights `K0 x n1`, output `b x n1`) fit in `cache_bytes`.
    pub fn mlp_from_cache(&self, w: &RecsysStep) -> bool {
        self.cache_bytes > 0.0 && self.cache_bytes_per_s > 0.0 && mlp_working_set(w) <= self.cache_bytes
    }
}

/// Bytes of the first MLP layer's fp32 operands for `w`'s largest micro-batch: `4 (b K0 + K0 n1 + b n1)`.
pub fn mlp_working_set(w: &RecsysStep) -> f64 {
    let b = w.batch.div_ceil(w.micro_batches.max(1)) as f64;
    let k0 = w.mlp_input() as f64;
    let n1 = w.mlp.first().copied().unwrap_or(1) as f64;
    4.0 * (b * k0 + k0 * n1 + b * n1)
}

/// Ops, bytes and FLOPs of one stage of a step on the CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuStage {
    /// Ops.
    pub ops: f64,
    /// Embedding rows touched (one per lookup and pass over it; in the MLP stage, one per pooled vector `concat`
    /// moves).
    pub rows: f64,
    /// Bytes read and written.
    pub bytes: f64,
    /// GEMM FLOPs.
    pub flops: f64,
    /// Lookups that missed the cache (copy ops only).
    pub misses: f64,
    /// Lookups decided by an LRU cache (copy ops only).
    pub lru_lookups: f64,
    /// Lookups decided by an LFU cache of `k` rows, each weighted by `log2(k + 1)` (copy ops only).
    pub lfu_levels: f64,
    /// Host-table row accesses of missed lookups, each weighted by [`span_levels`] of its field's table (copy and
    /// scatter ops).
    pub span_levels: f64,
    /// Lookups that hit the cache (`gather` ops only).
    pub hits: f64,
    /// Bytes of the rows of the hits of an LRU cache, `4 d` per hit (`gather` ops only).
    pub lru_hit_bytes: f64,
    /// Bytes of the rows of the hits of an LFU cache, `4 d` per hit (`gather` ops only).
    pub lfu_hit_bytes: f64,
    /// Bytes of the row moves of a replacing (LRU/LFU) cache's misses, at `mem_bytes_per_s` (copy ops only: each
    /// admitted row staging -> device, each evicted row device -> host, `16 d` bytes per miss).
    pub row_bytes: f64,
}

/// Doublings of a table of `rows x dim` fp32 values beyond one 4 KiB page: `log2(max(1, 4 rows dim / 4096))` (a
/// packed table's field keeps its own contiguous rows, so its field's table).
pub fn span_levels(rows: u64, dim: u64) -> f64 {
    (4.0 * rows as f64 * dim as f64 / 4096.0).max(1.0).log2()
}

impl CpuStage {
    fn add(&mut self, ops: f64, rows: f64, bytes: f64, flops: f64) {
        self.ops += ops;
        self.rows += rows;
        self.bytes += bytes;
        self.flops += flops;
    }
}

/// What the measured `cpu` backend does in one step, stage by stage ([`cpu_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuCounts {
    /// Staging copies of missed rows (one per chain and micro-batch that misses; a row per lookup, each checked
    /// against the cache; `8` bytes per missed value).
    pub copy: CpuStage,
    /// Forward embedding ops: `gather` (`8 L d`) and `pool` (`4 L d + 4 b n d`) per chain and micro-batch.
    pub emb_fwd: CpuStage,
    /// MLP ops per micro-batch: `concat` (`8 b K0`, one row per pooled vector: `b` per field), per layer GEMM (`2 b k n` FLOPs) and ReLU (`8 b n`), the loss
    /// gradient (`12 b n_last`), per layer ReLU gradient (`12 b n`), data- and weight-gradient GEMMs.
    pub mlp: CpuStage,
    /// Backward embedding ops: `pool_grad` (`4 b n d + 4 L d`) per chain and micro-batch.
    pub emb_bwd: CpuStage,
    /// Sparse row updates at the end of the step: `scatter` (`12 L d`) per chain and micro-batch.
    pub scatter: CpuStage,
    /// Optimizer (SGD) per MLP layer at the end of the step (`16 k n`).
    pub optim: CpuStage,
    /// Lookups per step.
    pub lookups: f64,
    /// Lookups that hit the cache.
    pub hits: f64,
}

impl CpuCounts {
    /// Ops that are not copies (the `kernels` metric).
    pub fn kernels(&self) -> f64 {
        self.emb_fwd.ops + self.mlp.ops + self.emb_bwd.ops + self.scatter.ops + self.optim.ops
    }
    /// Bytes of every op.
    pub fn bytes(&self) -> f64 {
        [
            self.copy,
            self.emb_fwd,
            self.mlp,
            self.emb_bwd,
            self.scatter,
            self.optim,
        ]
        .iter()
        .map(|s| s.bytes)
        .sum()
    }
}

/// The chains of `w`: `(dim, [(group, fields)])`, one per field or one per packed (dim, pooling) group, in the order
/// the kernel plan and the CPU executor run them.
pub fn field_chains(w: &RecsysStep) -> Vec<(u64, Vec<(usize, u64)>)> {
    let mut chains: Vec<(u64, Vec<(usize, u64)>)> = Vec::new();
    if w.packing {
        let mut keys: Vec<_> = w.fields.iter().map(|g| (g.dim, g.pooling)).collect();
        keys.sort();
        keys.dedup();
        for (dim, pooling) in keys {
            let members = w
                .fields
                .iter()
                .enumerate()
                .filter(|(_, g)| g.dim == dim && g.pooling == pooling)
                .map(|(i, g)| (i, g.count))
                .collect();
            chains.push((dim, members));
        }
    } else {
        for (i, g) in w.fields.iter().enumerate() {
            for _ in 0..g.count {
                chains.push((g.dim, vec![(i, 1)]));
            }
        }
    }
    chains
}

/// The CPU op counts of a step of `w`; `misses(m, c)` gives the lookups of chain `c` in micro-batch `m` that miss
/// the cache (the executor passes its real counts, the closed form the expected ones).
pub fn cpu_counts(w: &RecsysStep, mut misses: impl FnMut(u64, usize) -> f64) -> CpuCounts {
    let chains = field_chains(w);
    let mut c = CpuCounts::default();
    let k0 = w.mlp_input() as f64;
    let mut widths = vec![k0];
    widths.extend(w.mlp.iter().map(|&x| x as f64));
    for m in 0..w.micro_batches {
        let b = (w.batch / w.micro_batches + u64::from(m < w.batch % w.micro_batches)) as f64;
        for (ci, (dim, members)) in chains.iter().enumerate() {
            let d = *dim as f64;
            let nf: f64 = members.iter().map(|&(_, n)| n as f64).sum();
            // lookups of one field of the chain in this micro-batch
            let lookups = |g: usize, n: u64| b * (n * w.fields[g].ids_per_sample) as f64;
            let l: f64 = members.iter().map(|&(g, n)| lookups(g, n)).sum();
            let miss = misses(m, ci);
            c.lookups += l;
            c.hits += l - miss;
            if miss > 0.0 {
                // the op checks every lookup (hit or miss) and copies the missed rows
                c.copy.add(1.0, l, 8.0 * miss * d, 0.0);
                c.copy.misses += miss;
                // each missed row read from its field's host table, and updated there by the scatter (a packed
                // chain's misses split over its fields by their lookups)
                let levels: f64 = members
                    .iter()
                    .map(|&(g, n)| lookups(g, n) / l * span_levels(w.fields[g].rows, w.fields[g].dim))
                    .sum::<f64>()
                    * miss;
                c.copy.span_levels += levels;
                c.scatter.span_levels += levels;
                if w.cache.policy != CachePolicy::StaticTopk && w.cache.fraction > 0.0 {
                    // a replacing cache admits every missed row (staging -> device) and writes the evicted one back
                    // to a random place of its host table (a full, updated cache: every miss evicts a dirty row)
                    c.copy.row_bytes += 16.0 * miss * d;
                    c.copy.span_levels += levels;
                }
            }
            // a replacing cache decides every lookup (its bookkeeping runs whether or not something missed)
            for &(g, n) in members {
                let k = w.cached_rows(w.fields[g].rows);
                let lg = lookups(g, n);
                match w.cache.policy {
                    _ if k == 0 => {}
                    CachePolicy::Lru => c.copy.lru_lookups += lg,
                    CachePolicy::Lfu => c.copy.lfu_levels += lg * (k as f64 + 1.0).log2(),
                    CachePolicy::StaticTopk => {}
                }
            }
            c.emb_fwd
                .add(2.0, 2.0 * l, 8.0 * l * d + 4.0 * l * d + 4.0 * b * nf * d, 0.0);
            c.emb_fwd.hits += l - miss;
            let hit_bytes = 4.0 * (l - miss) * d;
            match w.cache.policy {
                _ if w.cache.fraction <= 0.0 => {}
                CachePolicy::Lru => c.emb_fwd.lru_hit_bytes += hit_bytes,
                CachePolicy::Lfu => c.emb_fwd.lfu_hit_bytes += hit_bytes,
                CachePolicy::StaticTopk => {}
            }
            c.emb_bwd.add(1.0, l, 4.0 * b * nf * d + 4.0 * l * d, 0.0);
            c.scatter.add(1.0, l, 12.0 * l * d, 0.0);
        }
        let pooled: f64 = chains
            .iter()
            .flat_map(|(_, members)| members.iter().map(|&(_, n)| b * n as f64))
            .sum();
        c.mlp.add(1.0, pooled, 8.0 * b * k0, 0.0);
        for l in 0..w.mlp.len() {
            let (k, n) = (widths[l], widths[l + 1]);
            c.mlp.add(1.0, 0.0, 4.0 * (b * k + k * n + b * n), 2.0 * b * k * n);
            c.mlp.add(1.0, 0.0, 8.0 * b * n, 0.0);
        }
        c.mlp.add(1.0, 0.0, 12.0 * b * widths[w.mlp.len()], 0.0);
        for l in (0..w.mlp.len()).rev() {
            let (k, n) = (widths[l], widths[l + 1]);
            c.mlp.add(1.0, 0.0, 12.0 * b * n, 0.0);
            c.mlp.add(1.0, 0.0, 4.0 * (b * n + k * n + b * k), 2.0 * b * k * n);
            c.mlp
                .add(1.0, 0.0, 4.0 * (b * k + b * n + 2.0 * k * n), 2.0 * b * k * n);
        }
    }
    for l in 0..w.mlp.len() {
        c.optim.add(1.0, 0.0, 16.0 * widths[l] * widths[l + 1], 0.0);
    }
    c
}

/// Time of one CPU stage under `p`: `ops o + rows r + bytes / bw + flops / rate` (a copy's rows at
/// [`RecsysCpuParams::copy_row_s`], its bytes at `copy_bytes_per_s`, plus its misses at `miss_s`, its LRU lookups at
/// `lru_lookup_s` and its LFU lookup-levels at `lfu_level_s`).
pub fn cpu_stage_time(s: &CpuStage, p: &RecsysCpuParams, copy: bool) -> f64 {
    if copy {
        let row = p.copy_row_s.unwrap_or(p.row_s);
        s.ops * p.op_overhead_s
            + s.rows * row
            + s.bytes / p.copy_bytes_per_s
            + s.flops / p.gemm_flops_per_s
            + s.misses * p.miss_s.unwrap_or(0.0)
            + s.lru_lookups * p.lru_lookup_s.unwrap_or(0.0)
            + s.lfu_levels * p.lfu_level_s.unwrap_or(0.0)
            + s.span_levels * p.span_s.unwrap_or(0.0)
            + s.row_bytes / p.mem_bytes_per_s
    } else {
        stage_time_at(s, p, p.mem_bytes_per_s)
    }
}

/// Time of one CPU stage under `p` with its bytes at `bw`.
fn stage_time_at(s: &CpuStage, p: &RecsysCpuParams, bw: f64) -> f64 {
    s.ops * p.op_overhead_s
        + s.rows * p.row_s
        + s.bytes / bw
        + s.flops / p.gemm_flops_per_s
        + s.span_levels * p.span_s.unwrap_or(0.0)
        + s.hits * p.hit_s.unwrap_or(0.0)
        + s.lru_hit_bytes * p.lru_hit_byte_s.unwrap_or(0.0)
        + s.lfu_hit_bytes * p.lfu_hit_byte_s.unwrap_or(0.0)
}

/// Bandwidth of the activation-side ops of `w` (forward and backward embedding ops, the MLP): `cache_bytes_per_s`
/// when a micro-batch's activations fit in the cache ([`RecsysCpuParams::mlp_from_cache`]), else `mem_bytes_per_s`.
pub fn activation_bytes_per_s(w: &RecsysStep, p: &RecsysCpuParams) -> f64 {
    if p.mlp_from_cache(w) {
        p.cache_bytes_per_s
    } else {
        p.mem_bytes_per_s
    }
}

/// Bandwidth of the MLP ops of `w`: `cache_bytes_per_s` when a micro-batch's activations fit in the cache
/// ([`RecsysCpuParams::mlp_from_cache`]), else `mlp_bytes_per_s` (`None`: `mem_bytes_per_s`).
pub fn mlp_bytes_per_s(w: &RecsysStep, p: &RecsysCpuParams) -> f64 {
    if p.mlp_from_cache(w) {
        p.cache_bytes_per_s
    } else {
        dense_bytes_per_s(p)
    }
}

/// Bandwidth of the dense streams of the MLP stage from memory (the optimizer's always): `mlp_bytes_per_s`, or
/// `mem_bytes_per_s` for older profiles.
pub fn dense_bytes_per_s(p: &RecsysCpuParams) -> f64 {
    p.mlp_bytes_per_s.unwrap_or(p.mem_bytes_per_s)
}

/// Time of the MLP ops of `w` (`c.mlp` at [`mlp_bytes_per_s`], and the optimizer at [`dense_bytes_per_s`]) under
/// `p`.
pub fn cpu_mlp_time(w: &RecsysStep, c: &CpuCounts, p: &RecsysCpuParams) -> f64 {
    stage_time_at(&c.mlp, p, mlp_bytes_per_s(w, p)) + stage_time_at(&c.optim, p, dense_bytes_per_s(p))
}

/// Time of the embedding ops of `w` (forward and backward at [`activation_bytes_per_s`], the scatter into the
/// tables from memory) under `p`.
pub fn cpu_embedding_time(w: &RecsysStep, c: &CpuCounts, p: &RecsysCpuParams) -> f64 {
    let bw = activation_bytes_per_s(w, p);
    stage_time_at(&c.emb_fwd, p, bw) + stage_time_at(&c.emb_bwd, p, bw) + cpu_stage_time(&c.scatter, p, false)
}

/// Predicted times of a CPU step: `(serial, ideal, step)` seconds, and the stage times (copy, embedding, MLP).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    /// Every op one after another (one stream).
    pub serial: f64,
    /// The ideal interleaved step: forward and backward embedding stages spread over `min(streams, threads)`
    /// workers and pipelined with the MLP across micro-batches, no faster than the work over the threads; the
    /// end-of-step scatter and optimizer after it.
    pub ideal: f64,
    /// The prediction: `serial` with one stream, else `serial - overlap (serial - ideal)`.
    pub step: f64,
    /// Copy stage, seconds.
    pub copy: f64,
    /// Embedding ops (forward, backward, scatter), seconds.
    pub embedding: f64,
    /// MLP ops and optimizer, seconds.
    pub mlp: f64,
}

/// The CPU op model's times of `w` with counts `c` under `p`.
pub fn cpu_times(w: &RecsysStep, c: &CpuCounts, p: &RecsysCpuParams) -> CpuTimes {
    let copy = cpu_stage_time(&c.copy, p, true);
    let act = activation_bytes_per_s(w, p);
    let fwd = copy + stage_time_at(&c.emb_fwd, p, act);
    let optim = stage_time_at(&c.optim, p, dense_bytes_per_s(p));
    let mlp = stage_time_at(&c.mlp, p, mlp_bytes_per_s(w, p));
    let bwd = stage_time_at(&c.emb_bwd, p, act);
    let tail = cpu_stage_time(&c.scatter, p, false) + optim;
    let serial = fwd + mlp + bwd + tail;
    let workers = w.streams.min(u64::from(p.threads.max(1))) as f64;
    let m = w.micro_batches as f64;
    let stages = [fwd / workers, mlp, bwd / workers];
    let max = stages.iter().copied().fold(0.0, f64::max);
    let pipe = stages.iter().sum::<f64>() / m + (m - 1.0) * max / m;
    let ideal = pipe.max((fwd + mlp + bwd) / f64::from(p.threads.max(1))) + tail;
    let step = if w.streams == 1 {
        serial
    } else {
        serial - p.overlap.clamp(0.0, 1.0) * (serial - ideal).max(0.0)
    };
    CpuTimes {
        serial,
        ideal,
        step,
        copy,
        embedding: fwd - copy + bwd + cpu_stage_time(&c.scatter, p, false),
        mlp: mlp + optim,
    }
}

/// The closed form of a step on the `cpu` device (the CPU op model): the ops the measured `cpu` backend runs
/// ([`cpu_counts`], with the closed-form hit rates), timed by `p` ([`cpu_times`]). `sm_busy` is the busy share of
/// the threads, `hbm_util` the bytes over the step time and the preset's memory bandwidth, `pcie_util` the share of
/// the step the staging copy runs; there is no separate launch stage on a CPU (`stage.launch` = 0).
pub fn cpu_closed_form(w: &RecsysStep, p: &RecsysCpuParams) -> RecsysOutcome {
    let hit: Vec<f64> = (0..w.fields.len()).map(|g| closed_form_hit(w, g)).collect();
    let chains = field_chains(w);
    let c = cpu_counts(w, |m, ci| {
        let b = (w.batch / w.micro_batches + u64::from(m < w.batch % w.micro_batches)) as f64;
        chains[ci]
            .1
            .iter()
            .map(|&(g, n)| b * (n * w.fields[g].ids_per_sample) as f64 * (1.0 - hit[g]))
            .sum()
    });
    let t = cpu_times(w, &c, p);
    let busy = t.copy + t.embedding + t.mlp;
    RecsysOutcome {
        step_time_s: t.step,
        kernels: c.kernels() as u64,
        sm_busy: (busy / (t.step * f64::from(p.threads.max(1)))).min(1.0),
        hbm_util: c.bytes() / (t.step * w.cluster.gpu.hbm_bandwidth_bytes_per_s),
        pcie_util: (t.copy / t.step).min(1.0),
        cache_hit_rate: if c.lookups > 0.0 { c.hits / c.lookups } else { 0.0 },
        stage_embedding_s: t.embedding,
        stage_mlp_s: t.mlp,
        stage_copy_s: t.copy,
        stage_launch_s: 0.0,
        batch: w.batch,
    }
}

/// The `analytical` backend of `recsys_step` (see the [module docs](self)). On the `cpu` device it is the CPU op
/// model ([`cpu_closed_form`]) with `cpu` (a `recsys_step` profile's parameters), or the uncalibrated guesses.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecsysAnalytical {
    /// Calibrated parameters of the CPU op model (used for steps on the `cpu` device only).
    pub cpu: Option<RecsysCpuParams>,
}

impl Backend<RecsysStep> for RecsysAnalytical {
    fn name(&self) -> &str {
        "analytical"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, workload: &RecsysStep, _ctx: &mut RunCtx) -> Result<RecsysOutcome, Error> {
        workload.validate()?;
        if workload.on_cpu_device() {
            let p = self.cpu.unwrap_or_else(|| RecsysCpuParams::uncalibrated(workload));
            return Ok(cpu_closed_form(workload, &p));
        }
        Ok(closed_form(workload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harmonic_numbers_match_direct_sums() {
        for &(n, s) in &[(10u64, 1.0), (1000, 0.8), (200_000, 1.1), (3_000_000, 1.0)] {
            let direct: f64 = (1..=n).map(|i| (i as f64).powf(-s)).sum();
            let r = harmonic(n, s);
            assert!(((r - direct) / direct).abs() < 1e-5, "H({n},{s}) = {r} vs {direct}");
        }
        assert_eq!(static_topk_hit(100, 100, 1.0), 1.0);
        assert_eq!(static_topk_hit(100, 0, 1.0), 0.0);
        // Uniform ids: a cache of k rows hits k/V under every policy.
        assert!((static_topk_hit(1000, 100, 0.0) - 0.1).abs() < 1e-12);
        assert!((lru_che_hit(1000, 100, 0.0) - 0.1).abs() < 1e-6);
    }

    #[test]
    fn che_is_below_static_topk_under_skew() {
        let (v, k, s) = (100_000, 1000, 1.0);
        let lru = lru_che_hit(v, k, s);
        let top = static_topk_hit(v, k, s);
        assert!(lru < top && lru > 0.5 * top, "lru {lru} top {top}");
    }
}
