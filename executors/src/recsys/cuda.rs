//! The measured `cuda` backend of `recsys_step` (PICASSO, arXiv 2204.04903; issue 11): the step of the `cpu`
//! backend ([`super`]) as NVRTC kernels and cuBLAS GEMMs on one NVIDIA GPU, through the crate's GPU runtime
//! ([`crate::gpu`]: cudarc with dynamic loading, so this compiles and links on machines with no CUDA at all).
//!
//! # What runs
//! The plan ([`DevicePlan::new`]) is the `cpu` backend's: the same chains ([`field_chains`]: one per field, or with
//! `packing` one per (dim, pooling) group, its fields' tables concatenated), the same global field numbering, table
//! values, Zipf ids ([`super::field_ranks`]), rank-to-row permutation and micro-batch split. Per micro-batch and chain:
//! - **miss path**: the embedding tables are host-resident (a `Vec<f32>` per chain). The `static_topk` cache keeps
//!   the `round(fraction rows)` most popular rows of each table in a device table; the distinct rows a micro-batch
//!   misses are packed by the host into a pinned (page-locked) staging buffer and copied over PCIe with one
//!   `cuMemcpyHtoDAsync` per chain and micro-batch;
//! - `tl_rs_bag_fwd`: the embedding bag, one launch per chain (so one per field, or one packed launch over the
//!   concatenated tables with a per-field offset table: lookups before the field per sample, ids, MLP column, mean
//!   flag): each thread gathers one column of one bag's rows (device cache or staging) and writes their sum (or mean)
//!   straight into the MLP input (the `concat` fused);
//! - the MLP on cuBLAS sgemm (fp32, default math mode: no TF32) with NVRTC ReLU, loss-gradient and ReLU-backward
//!   kernels, weight gradients accumulated over the micro-batches;
//! - `tl_rs_bag_bwd`: each lookup's gradient row from the MLP input gradient, one launch per chain;
//! - at the end of the step, per chain and micro-batch, `tl_rs_scatter`: the sparse SGD (`atomicAdd` of `-lr g`)
//!   into the cached rows, and the missed rows' summed gradients into a device buffer that goes back over PCIe
//!   (`cuMemcpyDtoHAsync` into pinned memory) for the host to apply to its table; per MLP layer `tl_rs_sgd`.
//!
//! Every micro-batch's forward reads the tables as they were at the start of the step (updates only at its end), as
//! on the CPU, so the pooled MLP inputs of a step equal the `cpu` backend's bit for bit (the same fp32 additions in the
//! same order) and the updated tables agree within fp32 rounding (the atomics add in another order).
//!
//! # Streams
//! One stream: every op is launched, run to completion (`cuStreamSynchronize`), then the next is launched, the
//! synchronous per-op executor of the baseline. Two or more: two CUDA streams, embedding and MLP; micro-batch `t`'s
//! MLP waits (`cuStreamWaitEvent`) for its forward embedding ops and overlaps micro-batch `t + 1`'s; micro-batch `t`'s
//! backward embedding ops wait for its MLP (the embedding stream runs `fwd 0, fwd 1, bwd 0, fwd 2, bwd 1, ...`).
//! More than two streams are run on two.
//!
//! # What is reported
//! `step_time` is the median over the timed steps of the CUDA-event time from the first op to the last plus the
//! host's miss-path seconds (packing staging rows before, applying the missed rows' updates after); `stage.*` the
//! least over the timed steps of the CUDA-event spans of each stage's op groups (copies, embedding kernels, MLP;
//! spans include the launch gaps of an idle stream, so they bound busy time from above) plus, for `stage.copy`, the
//! host's miss-path seconds; `stage.launch` the host seconds spent in launch and enqueue calls; `kernels` the kernel
//! launches and GEMM calls; `sm_busy` the embedding and MLP spans over the step (at most 1; not an SM-occupancy
//! measurement, there is no CUPTI here); `hbm_util` the bytes the kernels move (counted) over the step and the preset's
//! HBM bandwidth; `pcie_util` the share of the step the PCIe copies span; `cache_hit_rate` the lookups in the device
//! cache.
//!
//! `lru` / `lfu` caches are not implemented on the GPU (the `cpu` backend runs them). A step larger than
//! [`TABLE_BUDGET_BYTES`] of tables or [`ACT_BUDGET_BYTES`] of gathered rows runs scaled ([`scaled_to_device`]).
//!
//! Status: compiled in every build; **not run on a GPU during development** (no device was available). Without a
//! GPU, [`RecsysCuda::available`] gives the reason and nothing is touched.
use super::{STAGED, field_ranks, layout};
use crate::gpu::{GpuRuntime, drv, event_on, gpu_unavailable_reason, grid, seconds_between, sgemm_rm};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaEvent, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PinnedHostSlice, PushKernelArg};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use trainlab_core::workloads::recsys::{CachePolicy, RecsysOutcome, RecsysStep};
use trainlab_core::{Backend, Dtype, Error, Fidelity, RunCtx, Seed, Summary, Workload};

/// Most bytes of host-resident embedding tables a measured GPU step holds (larger steps are scaled down to this).
pub const TABLE_BUDGET_BYTES: u64 = 2 << 30;
/// Most bytes of gathered rows per step (`batch x Σ fields x ids x dim x 4`; the batch is scaled down to this).
pub const ACT_BUDGET_BYTES: u64 = 1 << 30;
/// SGD learning rate (the `cpu` backend's).
const LR: f32 = 1e-3;
/// Timed steps of the backend (after [`WARMUP`] untimed ones).
pub const REPEATS: usize = 7;
/// Untimed steps before the timed ones.
pub const WARMUP: usize = 2;
/// Largest accepted difference of the GPU's table updates (updated minus initial table) from the `cpu` backend's,
/// relative to the largest update: the atomics add a hot row's gradients in another order (a few ulps of a table
/// value), while a wrong or missing update is off by the update itself.
pub const UPDATE_REL_BOUND: f64 = 0.1;

/// CUDA C source of the recommender kernels, compiled at run time by NVRTC. Rows are addressed by a `u32`: a row of
/// the device cache table, or with bit 31 ([`STAGED`]) a row of the staging buffer.
pub const RECSYS_KERNELS_CU: &str = r#"
#define TL_STAGED 0x80000000u

__device__ __forceinline__ const float* tl_rs_row(const float* cache, const float* staging, unsigned s, int d) {
    return (s & TL_STAGED) ? staging + (long long)(s & ~TL_STAGED) * d : cache + (long long)s * d;
}
/* Addressing: a chain's cached rows start at float cache0 of the cache table, a chain-and-micro-batch's staged rows
   at float stage0 of the staging buffer; src holds rows relative to those (bit 31: staged). */

/* Embedding bag of one chain (one field, or the packed fields of one table) in one micro-batch of b samples: one
   thread per (bag, column); bag = j b + i is field f0 + j of the chain, sample i, its n = ids[f0 + j] lookups at
   src[src0 + b ids_before[f0 + j] + i n ...]. The sum of the rows (the mean with mean[.]) goes to the MLP input
   x[i, xoff[.] + c]: the concat is fused. Rows are added in lookup order, as on the CPU. */
extern "C" __global__ void tl_rs_bag_fwd(const float* cache, long long cache0, const float* staging,
                                         long long stage0, const unsigned* src, long long src0,
                                         const int* ids_before, const int* ids, const int* xoff, const int* mean,
                                         int f0, float* x, int nf, int b, int d, int k0) {
    long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (t >= (long long)nf * b * d) return;
    int c = (int)(t % d);
    long long bag = t / d;
    int j = f0 + (int)(bag / b);
    int i = (int)(bag % b);
    int n = ids[j];
    const unsigned* s = src + src0 + (long long)b * ids_before[j] + (long long)i * n;
    const float* ca = cache + cache0;
    const float* st = staging + stage0;
    float acc = tl_rs_row(ca, st, s[0], d)[c];
    for (int q = 1; q < n; ++q) acc += tl_rs_row(ca, st, s[q], d)[c];
    if (mean[j]) acc *= 1.0f / (float)n;
    x[(long long)i * k0 + xoff[j] + c] = acc;
}

/* Backward of the bag: every lookup's gradient row, grads[grad0 + l d + c] = dx[i, xoff + c] (/ n for a mean). */
extern "C" __global__ void tl_rs_bag_bwd(const float* dx, const int* ids_before, const int* ids, const int* xoff,
                                         const int* mean, int f0, float* grads, long long grad0, int nf, int b, int d,
                                         int k0) {
    long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (t >= (long long)nf * b * d) return;
    int c = (int)(t % d);
    long long bag = t / d;
    int j = f0 + (int)(bag / b);
    int i = (int)(bag % b);
    int n = ids[j];
    float g = dx[(long long)i * k0 + xoff[j] + c];
    float scale = mean[j] ? 1.0f / (float)n : 1.0f;
    long long l0 = (long long)b * ids_before[j] + (long long)i * n;
    for (int q = 0; q < n; ++q) grads[grad0 + (l0 + q) * d + c] = g * scale;
}

/* Sparse SGD of nl lookups: a cached row gets row -= lr g (atomic: lookups of one row collide); a missed row's
   gradients are summed into its staging slot of mgrad (applied to the host table after the copy back). */
extern "C" __global__ void tl_rs_scatter(float* cache, long long cache0, float* mgrad, long long stage0,
                                         const unsigned* src, long long src0, const float* grads, long long grad0,
                                         float lr, long long nl, int d) {
    long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (t >= nl * d) return;
    long long l = t / d;
    int c = (int)(t % d);
    unsigned s = src[src0 + l];
    float g = grads[grad0 + t];
    if (s & TL_STAGED) atomicAdd(mgrad + stage0 + (long long)(s & ~TL_STAGED) * d + c, g);
    else atomicAdd(cache + cache0 + (long long)s * d + c, -lr * g);
}

extern "C" __global__ void tl_rs_relu(const float* z, float* h, long long n) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) h[i] = z[i] > 0.f ? z[i] : 0.f;
}

/* Gradient of the squared-error loss / 2 over b samples: dh = (out - target[sample]) / b. */
extern "C" __global__ void tl_rs_loss_grad(const float* out, const float* target, float* dh, long long n, int n_last,
                                           float inv) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) dh[i] = (out[i] - target[i / n_last]) * inv;
}

extern "C" __global__ void tl_rs_relu_bwd(const float* z, const float* dh, float* dz, long long n) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) dz[i] = z[i] > 0.f ? dh[i] : 0.f;
}

extern "C" __global__ void tl_rs_sgd(float* w, float* g, float lr, long long n) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) { w[i] -= lr * g[i]; g[i] = 0.f; }
}
"#;

/// Entry points of [`RECSYS_KERNELS_CU`], in the order [`Kernels`] loads them.
pub const RECSYS_KERNEL_NAMES: [&str; 7] = [
    "tl_rs_bag_fwd",
    "tl_rs_bag_bwd",
    "tl_rs_scatter",
    "tl_rs_relu",
    "tl_rs_loss_grad",
    "tl_rs_relu_bwd",
    "tl_rs_sgd",
];

/// The step the `cuda` backend runs for `w`: tables scaled to [`TABLE_BUDGET_BYTES`] (every table's rows by one
/// common factor, at least `ids_per_sample`), the batch to [`ACT_BUDGET_BYTES`] of gathered rows (micro-batches at most
/// the batch), fp32 MLP GEMMs; the cluster as given.
pub fn scaled_to_device(w: &RecsysStep) -> RecsysStep {
    let mut x = w.clone();
    x.mlp_dtype = Dtype::Fp32;
    let bytes = |fs: &[trainlab_core::workloads::recsys::FieldGroup]| -> f64 {
        fs.iter().map(|g| (g.count * g.rows * g.dim * 4) as f64).sum()
    };
    // One common factor on every table's rows; tables held at `ids_per_sample` rows take their share from the
    // others, so the factor is shrunk until the tables fit.
    let mut f = 1.0f64;
    while bytes(&x.fields) > TABLE_BUDGET_BYTES as f64 && f > 0.0 {
        f *= TABLE_BUDGET_BYTES as f64 / bytes(&x.fields);
        for (g, o) in x.fields.iter_mut().zip(&w.fields) {
            g.rows = ((o.rows as f64 * f).floor() as u64).max(o.ids_per_sample).max(1);
        }
    }
    let per_sample: u64 = w.fields.iter().map(|g| g.count * g.ids_per_sample * g.dim * 4).sum();
    let max_batch = (ACT_BUDGET_BYTES / per_sample.max(1)).max(1);
    x.batch = x.batch.min(max_batch);
    x.micro_batches = x.micro_batches.min(x.batch);
    x
}

/// One field of a chain in the device plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanField {
    /// Index of the field in the model (group order, then count): the `cpu` backend's numbering.
    pub global: usize,
    /// Group of the field in the workload.
    pub group: usize,
    /// Rows of its table.
    pub rows: u64,
    /// Row offset of its table in the chain's host table.
    pub base: usize,
    /// Cached rows (popularity ranks `0..k`).
    pub k: u64,
    /// Row offset of its cached rows among the chain's cached rows.
    pub dev_base: usize,
    /// Ids per sample.
    pub ids: usize,
    /// Lookups per sample of the chain's earlier fields.
    pub ids_before: usize,
    /// Mean pooling.
    pub mean: bool,
    /// Rank-to-row multiplier ([`super::row_of`]).
    pub mult: u64,
    /// Column offset in the MLP input.
    pub x_off: usize,
}

/// One chain (one op chain per micro-batch) of the device plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanChain {
    /// Embedding dimension.
    pub dim: usize,
    /// Its fields, in the order of their lookups.
    pub fields: Vec<PlanField>,
    /// Index of its first field in the step's field offset table ([`DevicePlan::offset_table`]).
    pub first: usize,
    /// Rows of its host table.
    pub host_rows: usize,
    /// Its cached rows.
    pub cache_rows: usize,
    /// Float offset of its cached rows in the step's device cache table.
    pub cache0: usize,
}

impl PlanChain {
    /// Lookups per sample.
    pub fn ids_per_sample(&self) -> usize {
        self.fields.iter().map(|f| f.ids).sum()
    }
}

/// The field offset table the bag kernels read (one entry per field, chains in order): per-sample lookups of the
/// chain's earlier fields, ids per sample, MLP input column, mean flag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetTable {
    /// Lookups per sample of the chain's earlier fields.
    pub ids_before: Vec<i32>,
    /// Ids per sample.
    pub ids: Vec<i32>,
    /// Column in the MLP input.
    pub x_off: Vec<i32>,
    /// 1 for mean pooling.
    pub mean: Vec<i32>,
}

/// Where the lookups of one chain in one micro-batch read their rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LookupPlan {
    /// Per lookup (bag order: field by field, sample by sample): a row of the chain's cached rows, or [`STAGED`] | a
    /// row of this chain and micro-batch's staged rows.
    pub src: Vec<u32>,
    /// The chain host-table row of each staged row (the distinct missed rows, in order of first miss).
    pub miss_rows: Vec<usize>,
    /// Offset of this chain and micro-batch's lookups in the step's lookup array (and, times `dim`, ...).
    pub src0: usize,
    /// Float offset of its staged rows in the step's staging buffer.
    pub stage0: usize,
    /// Float offset of its lookups' gradient rows in the step's gradient buffer.
    pub grad0: usize,
    /// Lookups that hit the cache.
    pub hits: usize,
}

/// The host-side plan of a step on the GPU: chains, offsets, micro-batches and each lookup's row.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    /// The chains, in the order of [`field_chains`].
    pub chains: Vec<PlanChain>,
    /// Width of the MLP input.
    pub k0: usize,
    /// MLP layer widths, the input first.
    pub widths: Vec<usize>,
    /// Samples of each micro-batch.
    pub mbs: Vec<usize>,
    /// Floats of the device cache table (all chains).
    pub cache_floats: usize,
    /// `lookups[m][c]`: chain `c` in micro-batch `m`.
    pub lookups: Vec<Vec<LookupPlan>>,
    /// Lookups per step.
    pub total_lookups: usize,
    /// Staged rows per step.
    pub total_staged: usize,
    /// Floats of the staging buffer.
    pub staged_floats: usize,
    /// Floats of the lookup gradients.
    pub grad_floats: usize,
}

impl DevicePlan {
    /// The plan of `w` with the lookups of `ranks[global field]` (1-based Zipf ranks, `batch x ids` per field,
    /// samples in order). Only `static_topk` caches (or none).
    pub fn new(w: &RecsysStep, ranks: &[Vec<u64>]) -> Result<DevicePlan, Error> {
        if w.cache.policy != CachePolicy::StaticTopk && w.cache.fraction > 0.0 {
            return Err(Error::Unsupported(format!(
                "the cuda backend of recsys_step implements the static_topk cache only (asked: {}); the cpu backend \
                 runs lru and lfu",
                w.cache.policy.as_str()
            )));
        }
        // The cpu executor's layout: global field numbering, MLP columns, chains and their table offsets.
        let lay = layout(w);
        let k0 = lay.width;
        let mut chains = Vec::new();
        let (mut first, mut cache0) = (0usize, 0usize);
        for (dim, slots) in lay.chains {
            let base: usize = slots.iter().map(|f| f.rows as usize).sum();
            let dev_base: usize = slots.iter().map(|f| f.k as usize).sum();
            let mut before = 0usize;
            let fields: Vec<PlanField> = slots
                .into_iter()
                .map(|f| {
                    let pf = PlanField {
                        global: f.global,
                        group: f.group,
                        rows: f.rows,
                        base: f.base,
                        k: f.k,
                        dev_base: f.dev_base,
                        ids: f.ids,
                        ids_before: before,
                        mean: f.mean,
                        mult: f.mult,
                        x_off: f.x_off,
                    };
                    before += f.ids;
                    pf
                })
                .collect();
            let nf = fields.len();
            chains.push(PlanChain {
                dim,
                fields,
                first,
                host_rows: base,
                cache_rows: dev_base,
                cache0,
            });
            first += nf;
            cache0 += dev_base * dim;
        }
        let batch = w.batch as usize;
        let m = w.micro_batches as usize;
        let mbs: Vec<usize> = (0..m).map(|i| batch / m + usize::from(i < batch % m)).collect();
        let (mut src0, mut stage0, mut grad0, mut staged, mut start) = (0usize, 0usize, 0usize, 0usize, 0usize);
        let mut lookups = Vec::with_capacity(m);
        for &b in &mbs {
            let mut per_chain = Vec::with_capacity(chains.len());
            for c in &chains {
                let mut lp = LookupPlan {
                    src0,
                    stage0,
                    grad0,
                    ..Default::default()
                };
                let mut rows: HashMap<usize, u32> = HashMap::new();
                for cf in &c.fields {
                    let r = ranks
                        .get(cf.global)
                        .ok_or_else(|| Error::Backend(format!("no ids for field {} of the device plan", cf.global)))?;
                    let want = (start + b) * cf.ids;
                    if r.len() < want {
                        return Err(Error::Backend(format!(
                            "field {}: {} ids for {} lookups",
                            cf.global,
                            r.len(),
                            want
                        )));
                    }
                    for &x in &r[start * cf.ids..want] {
                        let rank = x.saturating_sub(1);
                        if rank < cf.k {
                            lp.hits += 1;
                            lp.src.push((cf.dev_base as u64 + rank) as u32);
                        } else {
                            let row = cf.base + ((rank * cf.mult) % cf.rows) as usize;
                            let next = lp.miss_rows.len() as u32;
                            let i = *rows.entry(row).or_insert_with(|| {
                                lp.miss_rows.push(row);
                                next
                            });
                            lp.src.push(STAGED | i);
                        }
                    }
                }
                src0 += lp.src.len();
                stage0 += lp.miss_rows.len() * c.dim;
                grad0 += lp.src.len() * c.dim;
                staged += lp.miss_rows.len();
                per_chain.push(lp);
            }
            lookups.push(per_chain);
            start += b;
        }
        if chains.iter().any(|c| c.cache_rows >= STAGED as usize) || staged >= STAGED as usize {
            return Err(Error::Unsupported(format!(
                "{staged} staged rows per step or a chain of 2^31 cached rows: the GPU step addresses fewer"
            )));
        }
        let mut widths = vec![k0];
        widths.extend(w.mlp.iter().map(|&x| x as usize));
        Ok(DevicePlan {
            chains,
            k0,
            widths,
            mbs,
            cache_floats: cache0,
            lookups,
            total_lookups: src0,
            total_staged: staged,
            staged_floats: stage0,
            grad_floats: grad0,
        })
    }

    /// The field offset table of the bag kernels.
    pub fn offset_table(&self) -> OffsetTable {
        let mut t = OffsetTable::default();
        for c in &self.chains {
            for f in &c.fields {
                t.ids_before.push(f.ids_before as i32);
                t.ids.push(f.ids as i32);
                t.x_off.push(f.x_off as i32);
                t.mean.push(i32::from(f.mean));
            }
        }
        t
    }

    /// Bytes of device memory the step allocates: cache table, staged rows and their gradients, lookup sources and
    /// gradients, per micro-batch MLP input, its gradient and targets, MLP weights, gradients and scratch.
    pub fn device_bytes(&self) -> f64 {
        let batch: usize = self.mbs.iter().sum();
        let bmax = self.mbs.iter().copied().max().unwrap_or(0);
        let wmax = self.widths.iter().copied().max().unwrap_or(0);
        let weights: usize = self.widths.windows(2).map(|p| p[0] * p[1]).sum();
        let scratch: usize = self.widths[1..].iter().map(|n| 2 * bmax * n).sum::<usize>() + 2 * bmax * wmax;
        4.0 * (self.cache_floats
            + 2 * self.staged_floats
            + self.grad_floats
            + self.total_lookups
            + 2 * batch * self.k0
            + batch
            + 2 * weights
            + scratch) as f64
    }

    /// Bytes the kernels of one step read and write (the `hbm_util` numerator): per chain and micro-batch the bag
    /// (`4 L d` rows read, `4 b n d` written), its backward (`4 b n d` read, `4 L d` written) and the scatter
    /// (`12 L d`), per micro-batch three GEMMs per layer (`4 (b k + k n + b n)` each) and the elementwise kernels,
    /// per layer the SGD (`16 k n`).
    pub fn kernel_bytes(&self) -> f64 {
        let mut bytes = 0.0;
        for (m, per_chain) in self.lookups.iter().enumerate() {
            let b = self.mbs[m] as f64;
            for (c, lp) in self.chains.iter().zip(per_chain) {
                let (l, d, nf) = (lp.src.len() as f64, c.dim as f64, c.fields.len() as f64);
                bytes += 20.0 * l * d + 8.0 * b * nf * d;
            }
            for p in self.widths.windows(2) {
                let (k, n) = (p[0] as f64, p[1] as f64);
                bytes += 12.0 * (b * k + k * n + b * n) + 20.0 * b * n;
            }
        }
        for p in self.widths.windows(2) {
            bytes += 16.0 * (p[0] * p[1]) as f64;
        }
        bytes
    }

    /// Lookups that hit the device cache, over all lookups.
    pub fn hit_rate(&self) -> f64 {
        let hits: usize = self.lookups.iter().flatten().map(|lp| lp.hits).sum();
        if self.total_lookups == 0 {
            0.0
        } else {
            hits as f64 / self.total_lookups as f64
        }
    }

    /// Kernel launches and GEMM calls of one step: per chain and micro-batch a bag, a bag backward and a scatter;
    /// per micro-batch and layer a GEMM and (all but the last layer) a ReLU, the loss gradient, per layer two GEMMs and
    /// (all but the last) a ReLU backward; per layer an SGD.
    pub fn kernels(&self) -> u64 {
        let layers = self.widths.len() - 1;
        let per_mb = 3 * self.chains.len() + layers + (layers - 1) + 1 + 2 * layers + (layers - 1);
        (per_mb * self.mbs.len() + layers) as u64
    }
}

/// Launch configuration of a bag kernel (forward or backward) of a chain of `nf` fields, `b` samples, dimension `d`:
/// one thread per (bag, column), [`crate::gpu::BLOCK_THREADS`] per block.
pub fn bag_launch(nf: usize, b: usize, d: usize) -> LaunchConfig {
    grid(nf * b * d)
}

/// One op of a step: enqueue the closure's work on the stream (host-timed), then, with one stream, wait for it.
type OpFn<'a> = dyn FnMut(&CudaStream, &mut dyn FnMut() -> Result<(), Error>) -> Result<(), Error> + 'a;

/// The compiled recommender kernels.
struct Kernels {
    bag_fwd: CudaFunction,
    bag_bwd: CudaFunction,
    scatter: CudaFunction,
    relu: CudaFunction,
    loss_grad: CudaFunction,
    relu_bwd: CudaFunction,
    sgd: CudaFunction,
}

/// Per-step timing of a GPU step (seconds).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GpuStepTimes {
    /// CUDA-event seconds from the first op to the last plus the host's miss-path seconds.
    pub step_s: f64,
    /// Spans of the PCIe copies plus the host's miss-path seconds.
    pub copy_s: f64,
    /// Spans of the embedding kernels (bags, bag backward, scatter).
    pub embedding_s: f64,
    /// Spans of the MLP (GEMMs, elementwise kernels, SGD).
    pub mlp_s: f64,
    /// Host seconds in launch and enqueue calls.
    pub launch_s: f64,
    /// Kernel launches and GEMM calls.
    pub kernels: u64,
}

/// Device buffers of a step.
struct Bufs {
    cache: CudaSlice<f32>,
    src: CudaSlice<u32>,
    stage: CudaSlice<f32>,
    mgrad: CudaSlice<f32>,
    grads: CudaSlice<f32>,
    ids_before: CudaSlice<i32>,
    ids: CudaSlice<i32>,
    x_off: CudaSlice<i32>,
    mean: CudaSlice<i32>,
    x: Vec<CudaSlice<f32>>,
    dx: Vec<CudaSlice<f32>>,
    target: Vec<CudaSlice<f32>>,
    w: Vec<CudaSlice<f32>>,
    gw: Vec<CudaSlice<f32>>,
    z: Vec<CudaSlice<f32>>,
    h: Vec<CudaSlice<f32>>,
    dh: CudaSlice<f32>,
    dz: CudaSlice<f32>,
}

/// A step of a `recsys_step` on the GPU, with its tables, ids and buffers (built once, run many times).
pub struct GpuStep {
    rt: GpuRuntime,
    k: Kernels,
    emb: Arc<CudaStream>,
    mlp: Arc<CudaStream>,
    blas: CudaBlas,
    sync_each_op: bool,
    /// The plan.
    pub plan: DevicePlan,
    /// Host tables, one per chain.
    host: Vec<Vec<f32>>,
    stage_h: PinnedHostSlice<f32>,
    mgrad_h: PinnedHostSlice<f32>,
    b: Bufs,
}

impl std::fmt::Debug for GpuStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuStep")
            .field("rt", &self.rt)
            .field("chains", &self.plan.chains.len())
            .finish_non_exhaustive()
    }
}

/// The events of one step, and the (start, end) pairs of each stage's op groups (indices into `evs`).
#[derive(Default)]
struct Marks {
    evs: Vec<CudaEvent>,
    copy: Vec<(usize, usize)>,
    emb: Vec<(usize, usize)>,
    mlp: Vec<(usize, usize)>,
}

impl Marks {
    /// An event recorded now on `s`; its index.
    fn mark(&mut self, s: &CudaStream) -> Result<usize, Error> {
        self.evs.push(event_on(s)?);
        Ok(self.evs.len() - 1)
    }
    /// Summed seconds of `spans` (after the step synchronised).
    fn span(&self, spans: &[(usize, usize)]) -> Result<f64, Error> {
        spans
            .iter()
            .map(|&(a, b)| seconds_between(&self.evs[a], &self.evs[b]))
            .sum()
    }
}

impl GpuStep {
    /// Builds the step of `w` on GPU 0: host tables, ids and MLP weights seeded from `seed` exactly as the `cpu`
    /// backend's ([`super::CpuStep::new`]), the device cache filled, buffers allocated. Without a GPU this is
    /// [`Error::Unsupported`] with the reason.
    pub fn new(w: &RecsysStep, seed: Seed) -> Result<GpuStep, Error> {
        w.validate()?;
        if w.on_cpu_device() {
            return Err(Error::Unsupported(
                "the cuda backend runs steps on a GPU preset; steps on the `cpu` device are the cpu backend's".into(),
            ));
        }
        let s = scaled_to_device(w);
        if s.batch != w.batch || s.fields != w.fields {
            return Err(Error::Unsupported(format!(
                "the step exceeds the cuda executor's budget ({} MiB of tables, {} MiB of gathered rows); run the \
                 scaled step instead",
                TABLE_BUDGET_BYTES >> 20,
                ACT_BUDGET_BYTES >> 20
            )));
        }
        let rt = GpuRuntime::new(0)?;
        let plan = build_plan(w, seed)?;
        rt.check_fits(
            "workload",
            format!("{} fields, batch {}", w.field_count(), w.batch),
            plan.device_bytes(),
        )?;
        let [bag_fwd, bag_bwd, scatter, relu, loss_grad, relu_bwd, sgd] =
            rt.load_kernels(RECSYS_KERNELS_CU, "the recommender kernels", RECSYS_KERNEL_NAMES)?;
        let ctx = rt.ctx().clone();
        let emb = ctx.new_stream().map_err(drv("stream creation"))?;
        let mlp = if w.streams >= 2 {
            ctx.new_stream().map_err(drv("stream creation"))?
        } else {
            emb.clone()
        };
        let blas = CudaBlas::new(mlp.clone()).map_err(crate::gpu::blas_err("handle creation"))?;
        // Host tables (each field's rows from its own stream, as on the CPU) and the device cache (rank r of a field
        // at its chain's cached row dev_base + r, as on the CPU).
        let mut host = Vec::with_capacity(plan.chains.len());
        let mut cache_h: Vec<f32> = Vec::with_capacity(plan.cache_floats);
        for c in &plan.chains {
            let t = host_table(c, seed);
            let d = c.dim;
            for f in &c.fields {
                for r in 0..f.k {
                    let row = f.base + ((r * f.mult) % f.rows) as usize;
                    cache_h.extend_from_slice(&t[row * d..(row + 1) * d]);
                }
            }
            host.push(t);
        }
        let up_f = |v: &[f32]| -> Result<CudaSlice<f32>, Error> {
            if v.is_empty() {
                emb.alloc_zeros::<f32>(1).map_err(drv("alloc"))
            } else {
                emb.clone_htod(v).map_err(drv("upload"))
            }
        };
        let up_i = |v: &[i32]| -> Result<CudaSlice<i32>, Error> {
            if v.is_empty() {
                emb.alloc_zeros::<i32>(1).map_err(drv("alloc"))
            } else {
                emb.clone_htod(v).map_err(drv("upload"))
            }
        };
        let zeros = |n: usize| emb.alloc_zeros::<f32>(n.max(1)).map_err(drv("alloc"));
        let src_all: Vec<u32> = plan
            .lookups
            .iter()
            .flatten()
            .flat_map(|lp| lp.src.iter().copied())
            .collect();
        let src = if src_all.is_empty() {
            emb.alloc_zeros::<u32>(1).map_err(drv("alloc"))?
        } else {
            emb.clone_htod(&src_all).map_err(drv("upload"))?
        };
        // SAFETY: the staging buffer is written by the host before any copy reads it; the gradient buffer is only
        // read after a device-to-host copy wrote it.
        let stage_h = unsafe { ctx.alloc_pinned::<f32>(plan.staged_floats.max(1)) }.map_err(drv("pinned alloc"))?;
        // Staging is only written by the host (write-combined pinned memory); the gradients come back to be read by
        // the host, so they get plain (cached) pinned memory: reads of write-combined memory are uncached.
        let mgrad_h =
            unsafe { ctx.alloc_pinned_with_flags::<f32>(plan.staged_floats.max(1), 0) }.map_err(drv("pinned alloc"))?;
        let ot = plan.offset_table();
        let k0 = plan.k0;
        let (mut x, mut dx, mut target) = (Vec::new(), Vec::new(), Vec::new());
        for (m, &b) in plan.mbs.iter().enumerate() {
            x.push(zeros(b * k0)?);
            dx.push(zeros(b * k0)?);
            target.push(up_f(&targets(seed, m, b))?);
        }
        let bmax = plan.mbs.iter().copied().max().unwrap_or(1);
        let wmax = plan.widths.iter().copied().max().unwrap_or(1);
        let (mut wts, mut gw, mut z, mut h) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for l in 0..plan.widths.len() - 1 {
            let (k, n) = (plan.widths[l], plan.widths[l + 1]);
            wts.push(up_f(&mlp_weights(seed, l, k, n))?);
            gw.push(zeros(k * n)?);
            z.push(zeros(bmax * n)?);
            h.push(zeros(bmax * n)?);
        }
        let b = Bufs {
            cache: up_f(&cache_h)?,
            src,
            stage: zeros(plan.staged_floats)?,
            mgrad: zeros(plan.staged_floats)?,
            grads: zeros(plan.grad_floats)?,
            ids_before: up_i(&ot.ids_before)?,
            ids: up_i(&ot.ids)?,
            x_off: up_i(&ot.x_off)?,
            mean: up_i(&ot.mean)?,
            x,
            dx,
            target,
            w: wts,
            gw,
            z,
            h,
            dh: zeros(bmax * wmax)?,
            dz: zeros(bmax * wmax)?,
        };
        emb.synchronize().map_err(drv("synchronize"))?;
        Ok(GpuStep {
            k: Kernels {
                bag_fwd,
                bag_bwd,
                scatter,
                relu,
                loss_grad,
                relu_bwd,
                sgd,
            },
            sync_each_op: w.streams == 1,
            host,
            stage_h,
            mgrad_h,
            b,
            plan,
            emb,
            mlp,
            blas,
            rt,
        })
    }

    /// Device description for provenance.
    pub fn device_description(&self) -> String {
        self.rt.device_description()
    }

    /// Runs one training step (forward, backward, updates) and times it.
    pub fn step(&mut self) -> Result<GpuStepTimes, Error> {
        let GpuStep {
            k,
            emb,
            mlp,
            blas,
            sync_each_op,
            plan,
            host,
            stage_h,
            mgrad_h,
            b,
            ..
        } = self;
        let (emb, mlp, sync_each_op) = (emb.clone(), mlp.clone(), *sync_each_op);
        let two = !Arc::ptr_eq(&emb, &mlp);
        let mut launch_s = 0.0f64;
        let mut kernels = 0u64;
        // One op: enqueue (host-timed), then with one stream wait for it.
        let mut op = |s: &CudaStream, f: &mut dyn FnMut() -> Result<(), Error>| -> Result<(), Error> {
            let t = Instant::now();
            f()?;
            launch_s += t.elapsed().as_secs_f64();
            if sync_each_op {
                s.synchronize().map_err(drv("synchronize"))?;
            }
            Ok(())
        };
        // The host's miss path before the step: the staged rows packed into pinned memory.
        let t_host = Instant::now();
        {
            let stage = stage_h.as_mut_slice().map_err(drv("pinned access"))?;
            for per_chain in &plan.lookups {
                for ((c, lp), t) in plan.chains.iter().zip(per_chain).zip(host.iter()) {
                    let d = c.dim;
                    for (i, &row) in lp.miss_rows.iter().enumerate() {
                        let at = lp.stage0 + i * d;
                        stage[at..at + d].copy_from_slice(&t[row * d..(row + 1) * d]);
                    }
                }
            }
        }
        let mut host_s = t_host.elapsed().as_secs_f64();
        let mut ev = Marks::default();
        let start = ev.mark(&emb)?;
        if two {
            mlp.wait(&ev.evs[start]).map_err(drv("stream wait"))?;
        }
        let k0 = plan.k0 as i32;
        let m_total = plan.mbs.len();
        let mut mlp_done: Vec<usize> = Vec::with_capacity(m_total);
        let bwd = |m: usize, b: &mut Bufs, ev: &mut Marks, op: &mut OpFn<'_>, kernels: &mut u64| -> Result<(), Error> {
            let e0 = ev.mark(&emb)?;
            let bsz = plan.mbs[m];
            for (c, lp) in plan.chains.iter().zip(&plan.lookups[m]) {
                let (nf, d) = (c.fields.len() as i32, c.dim as i32);
                let (f0, grad0, bi) = (c.first as i32, lp.grad0 as i64, bsz as i32);
                op(&emb, &mut || {
                    let mut lb = emb.launch_builder(&k.bag_bwd);
                    lb.arg(&b.dx[m])
                        .arg(&b.ids_before)
                        .arg(&b.ids)
                        .arg(&b.x_off)
                        .arg(&b.mean)
                        .arg(&f0)
                        .arg(&mut b.grads)
                        .arg(&grad0)
                        .arg(&nf)
                        .arg(&bi)
                        .arg(&d)
                        .arg(&k0);
                    // SAFETY: nf b d threads; field entries f0..f0+nf of the offset table exist; each writes the
                    // ids rows of its bag inside grads[grad0..grad0 + L d] and reads dx (b x k0) at its field's
                    // columns.
                    unsafe { lb.launch(bag_launch(c.fields.len(), bsz, c.dim)) }
                        .map(|_| ())
                        .map_err(drv("launch bag backward"))
                })?;
                *kernels += 1;
            }
            let e1 = ev.mark(&emb)?;
            ev.emb.push((e0, e1));
            Ok(())
        };
        for m in 0..m_total {
            let bsz = plan.mbs[m];
            // Micro-batch m's staged rows over PCIe, then its bags (the MLP input).
            let c0 = ev.mark(&emb)?;
            {
                let stage = stage_h.as_slice().map_err(drv("pinned access"))?;
                for (c, lp) in plan.chains.iter().zip(&plan.lookups[m]) {
                    if lp.miss_rows.is_empty() {
                        continue;
                    }
                    let (a, e) = (lp.stage0, lp.stage0 + lp.miss_rows.len() * c.dim);
                    op(&emb, &mut || {
                        let mut dst = b.stage.slice_mut(a..e);
                        emb.memcpy_htod(&stage[a..e], &mut dst).map_err(drv("staging copy"))
                    })?;
                }
            }
            let c1 = ev.mark(&emb)?;
            for (c, lp) in plan.chains.iter().zip(&plan.lookups[m]) {
                let (nf, d) = (c.fields.len() as i32, c.dim as i32);
                let (cache0, stage0, src0) = (c.cache0 as i64, lp.stage0 as i64, lp.src0 as i64);
                let (f0, bi) = (c.first as i32, bsz as i32);
                op(&emb, &mut || {
                    let mut lb = emb.launch_builder(&k.bag_fwd);
                    lb.arg(&b.cache)
                        .arg(&cache0)
                        .arg(&b.stage)
                        .arg(&stage0)
                        .arg(&b.src)
                        .arg(&src0)
                        .arg(&b.ids_before)
                        .arg(&b.ids)
                        .arg(&b.x_off)
                        .arg(&b.mean)
                        .arg(&f0)
                        .arg(&mut b.x[m])
                        .arg(&nf)
                        .arg(&bi)
                        .arg(&d)
                        .arg(&k0);
                    // SAFETY: nf b d threads; each reads the rows its lookups name (cached rows of the chain or
                    // staged rows of this chain and micro-batch, all inside the buffers by construction of the plan)
                    // and writes one element of x (b x k0) at its field's columns.
                    unsafe { lb.launch(bag_launch(c.fields.len(), bsz, c.dim)) }
                        .map(|_| ())
                        .map_err(drv("launch bag"))
                })?;
                kernels += 1;
            }
            let f1 = ev.mark(&emb)?;
            ev.copy.push((c0, c1));
            ev.emb.push((c1, f1));
            // The MLP of micro-batch m (on its own stream with two streams, after its bags).
            if two {
                mlp.wait(&ev.evs[f1]).map_err(drv("stream wait"))?;
            }
            let m0 = ev.mark(&mlp)?;
            mlp_step(k, blas, &mlp, plan, b, m, &mut op, &mut kernels)?;
            let m1 = ev.mark(&mlp)?;
            ev.mlp.push((m0, m1));
            mlp_done.push(m1);
            // Backward embedding ops: with one stream right away; with two, micro-batch m - 1's after m's bags.
            if !two {
                bwd(m, b, &mut ev, &mut op, &mut kernels)?;
            } else if m >= 1 {
                emb.wait(&ev.evs[mlp_done[m - 1]]).map_err(drv("stream wait"))?;
                bwd(m - 1, b, &mut ev, &mut op, &mut kernels)?;
            }
        }
        if two {
            emb.wait(&ev.evs[mlp_done[m_total - 1]]).map_err(drv("stream wait"))?;
            bwd(m_total - 1, b, &mut ev, &mut op, &mut kernels)?;
        }
        // End of the step: the sparse updates (cached rows on the device, missed rows' gradients back to the host)
        // and the SGD of the MLP.
        let s0 = ev.mark(&emb)?;
        if plan.staged_floats > 0 {
            op(&emb, &mut || emb.memset_zeros(&mut b.mgrad).map_err(drv("memset")))?;
        }
        for per_chain in &plan.lookups {
            for (c, lp) in plan.chains.iter().zip(per_chain) {
                let nl = lp.src.len() as i64;
                if nl == 0 {
                    continue;
                }
                let (cache0, stage0, src0, grad0, d) = (
                    c.cache0 as i64,
                    lp.stage0 as i64,
                    lp.src0 as i64,
                    lp.grad0 as i64,
                    c.dim as i32,
                );
                op(&emb, &mut || {
                    let mut lb = emb.launch_builder(&k.scatter);
                    lb.arg(&mut b.cache)
                        .arg(&cache0)
                        .arg(&mut b.mgrad)
                        .arg(&stage0)
                        .arg(&b.src)
                        .arg(&src0)
                        .arg(&b.grads)
                        .arg(&grad0)
                        .arg(&LR)
                        .arg(&nl)
                        .arg(&d);
                    // SAFETY: nl d threads, each reading one gradient element of this chain and micro-batch and
                    // adding into one cached row of the chain or one staged row of this chain and micro-batch.
                    unsafe { lb.launch(grid(lp.src.len() * c.dim)) }
                        .map(|_| ())
                        .map_err(drv("launch scatter"))
                })?;
                kernels += 1;
            }
        }
        let s1 = ev.mark(&emb)?;
        if plan.staged_floats > 0 {
            let n = plan.staged_floats;
            op(&emb, &mut || {
                let dst = mgrad_h.as_mut_slice().map_err(drv("pinned access"))?;
                emb.memcpy_dtoh(&b.mgrad.slice(0..n), &mut dst[..n])
                    .map_err(drv("gradient copy"))
            })?;
        }
        let s2 = ev.mark(&emb)?;
        ev.emb.push((s0, s1));
        ev.copy.push((s1, s2));
        let p0 = ev.mark(&mlp)?;
        for l in 0..plan.widths.len() - 1 {
            let n = (plan.widths[l] * plan.widths[l + 1]) as i64;
            op(&mlp, &mut || {
                let mut lb = mlp.launch_builder(&k.sgd);
                lb.arg(&mut b.w[l]).arg(&mut b.gw[l]).arg(&LR).arg(&n);
                // SAFETY: n threads over the k n elements of the layer's weights and gradients.
                unsafe { lb.launch(grid(n as usize)) }
                    .map(|_| ())
                    .map_err(drv("launch sgd"))
            })?;
            kernels += 1;
        }
        let p1 = ev.mark(&mlp)?;
        ev.mlp.push((p0, p1));
        if two {
            emb.wait(&ev.evs[p1]).map_err(drv("stream wait"))?;
        }
        let end = ev.mark(&emb)?;
        emb.synchronize().map_err(drv("synchronize"))?;
        // The host's miss path after the step: the missed rows' summed gradients applied to the host tables.
        let t_host = Instant::now();
        if plan.staged_floats > 0 {
            let g = mgrad_h.as_slice().map_err(drv("pinned access"))?;
            for per_chain in &plan.lookups {
                for ((c, lp), t) in plan.chains.iter().zip(per_chain).zip(host.iter_mut()) {
                    let d = c.dim;
                    for (i, &row) in lp.miss_rows.iter().enumerate() {
                        let at = lp.stage0 + i * d;
                        for (x, gx) in t[row * d..(row + 1) * d].iter_mut().zip(&g[at..at + d]) {
                            *x -= LR * gx;
                        }
                    }
                }
            }
        }
        host_s += t_host.elapsed().as_secs_f64();
        Ok(GpuStepTimes {
            step_s: seconds_between(&ev.evs[start], &ev.evs[end])? + host_s,
            copy_s: ev.span(&ev.copy)? + host_s,
            embedding_s: ev.span(&ev.emb)?,
            mlp_s: ev.span(&ev.mlp)?,
            launch_s,
            kernels,
        })
    }

    /// The MLP input of micro-batch `m` (`b x K0`, row-major, fields in model order) as the last step's bags left
    /// it.
    pub fn mlp_input(&self, m: usize) -> Result<Vec<f32>, Error> {
        let x = self.emb.clone_dtoh(&self.b.x[m]).map_err(drv("download"))?;
        self.emb.synchronize().map_err(drv("synchronize"))?;
        Ok(x[..self.plan.mbs[m] * self.plan.k0].to_vec())
    }

    /// The current rows of global field `field` (`rows x dim`), cached rows read from the device.
    pub fn field_table(&self, field: usize) -> Result<Option<Vec<f32>>, Error> {
        for (ci, c) in self.plan.chains.iter().enumerate() {
            if let Some(f) = c.fields.iter().find(|f| f.global == field) {
                let d = c.dim;
                let mut out = self.host[ci][f.base * d..(f.base + f.rows as usize) * d].to_vec();
                if f.k > 0 {
                    let a = c.cache0 + f.dev_base * d;
                    let dev = self
                        .emb
                        .clone_dtoh(&self.b.cache.slice(a..a + f.k as usize * d))
                        .map_err(drv("download"))?;
                    self.emb.synchronize().map_err(drv("synchronize"))?;
                    for r in 0..f.k as usize {
                        let row = ((r as u64 * f.mult) % f.rows) as usize;
                        out[row * d..(row + 1) * d].copy_from_slice(&dev[r * d..(r + 1) * d]);
                    }
                }
                return Ok(Some(out));
            }
        }
        Ok(None)
    }
}

/// A chain's host table: each field's rows from its own seeded stream (the `cpu` backend's values).
fn host_table(c: &PlanChain, seed: Seed) -> Vec<f32> {
    let d = c.dim;
    let mut t = vec![0.0f32; c.host_rows * d];
    for f in &c.fields {
        crate::timing::fill_random_f32(
            seed.derive("recsys.table").index(f.global as u64),
            &mut t[f.base * d..(f.base + f.rows as usize) * d],
        );
    }
    t
}

/// Targets of micro-batch `m` (the `cpu` backend's).
fn targets(seed: Seed, m: usize, b: usize) -> Vec<f32> {
    crate::timing::random_f32(seed.derive("recsys.target").index(m as u64), b)
        .into_iter()
        .map(|v| 0.5 + 0.5 * v)
        .collect()
}

/// MLP layer `l`'s initial weights (`k x n`, the `cpu` backend's).
fn mlp_weights(seed: Seed, l: usize, k: usize, n: usize) -> Vec<f32> {
    let mut v = crate::timing::random_f32(seed.derive("recsys.mlp").index(l as u64), k * n);
    let scale = 1.0 / (k as f32).sqrt();
    v.iter_mut().for_each(|x| *x *= scale);
    v
}

/// The ids of `w` (the `cpu` backend's, [`field_ranks`]) and its device plan.
pub fn build_plan(w: &RecsysStep, seed: Seed) -> Result<DevicePlan, Error> {
    let batch = w.batch as usize;
    let mut ranks = Vec::new();
    for g in &w.fields {
        for _ in 0..g.count {
            let i = ranks.len() as u64;
            ranks.push(field_ranks(
                seed,
                i,
                g.rows,
                g.zipf_s,
                batch * g.ids_per_sample as usize,
            )?);
        }
    }
    DevicePlan::new(w, &ranks)
}

/// The MLP of micro-batch `m` on stream `s`: forward GEMMs and ReLUs, the loss gradient, backward (weight gradients
/// accumulate, the input gradient into `dx[m]`).
#[allow(clippy::too_many_arguments)]
fn mlp_step(
    k: &Kernels,
    blas: &CudaBlas,
    s: &Arc<CudaStream>,
    plan: &DevicePlan,
    b: &mut Bufs,
    m: usize,
    op: &mut OpFn<'_>,
    kernels: &mut u64,
) -> Result<(), Error> {
    let bsz = plan.mbs[m];
    let layers = plan.widths.len() - 1;
    let Bufs {
        x,
        dx,
        target,
        w,
        gw,
        z,
        h,
        dh,
        dz,
        ..
    } = b;
    for l in 0..layers {
        let (kk, n) = (plan.widths[l], plan.widths[l + 1]);
        let (before, after) = h.split_at_mut(l);
        let input: &CudaSlice<f32> = if l == 0 { &x[m] } else { &before[l - 1] };
        op(s, &mut || {
            sgemm_rm(blas, bsz, n, kk, input, false, &w[l], false, &mut z[l], false)
        })?;
        *kernels += 1;
        if l + 1 < layers {
            let cnt = (bsz * n) as i64;
            op(s, &mut || {
                let mut lb = s.launch_builder(&k.relu);
                lb.arg(&z[l]).arg(&mut after[0]).arg(&cnt);
                // SAFETY: b n threads over the first b n elements of z and h (sized for the largest micro-batch).
                unsafe { lb.launch(grid(cnt as usize)) }
                    .map(|_| ())
                    .map_err(drv("launch relu"))
            })?;
            *kernels += 1;
        }
    }
    // The last layer is linear: its output is z[last].
    let n_last = plan.widths[layers];
    let cnt = (bsz * n_last) as i64;
    let (nl, inv) = (n_last as i32, 1.0f32 / bsz as f32);
    op(s, &mut || {
        let mut lb = s.launch_builder(&k.loss_grad);
        lb.arg(&z[layers - 1])
            .arg(&target[m])
            .arg(&mut *dh)
            .arg(&cnt)
            .arg(&nl)
            .arg(&inv);
        // SAFETY: b n_last threads; target holds b values, one per sample (index i / n_last < b).
        unsafe { lb.launch(grid(cnt as usize)) }
            .map(|_| ())
            .map_err(drv("launch loss gradient"))
    })?;
    *kernels += 1;
    for l in (0..layers).rev() {
        let (kk, n) = (plan.widths[l], plan.widths[l + 1]);
        // dz = dh through the ReLU (the last layer is linear: dz = dh).
        let last = l + 1 == layers;
        if !last {
            let cnt = (bsz * n) as i64;
            op(s, &mut || {
                let mut lb = s.launch_builder(&k.relu_bwd);
                lb.arg(&z[l]).arg(&*dh).arg(&mut *dz).arg(&cnt);
                // SAFETY: b n threads over the first b n elements of z, dh and dz.
                unsafe { lb.launch(grid(cnt as usize)) }
                    .map(|_| ())
                    .map_err(drv("launch relu backward"))
            })?;
            *kernels += 1;
        } else {
            op(s, &mut || {
                s.memcpy_dtod(&dh.slice(0..bsz * n), &mut dz.slice_mut(0..bsz * n))
                    .map_err(drv("copy"))
            })?;
        }
        let input: &CudaSlice<f32> = if l == 0 { &x[m] } else { &h[l - 1] };
        // gW += input^T dz
        op(s, &mut || {
            sgemm_rm(blas, kk, n, bsz, input, true, &*dz, false, &mut gw[l], true)
        })?;
        *kernels += 1;
        // d(input) = dz W^T
        if l == 0 {
            op(s, &mut || {
                sgemm_rm(blas, bsz, kk, n, &*dz, false, &w[l], true, &mut dx[m], false)
            })?;
        } else {
            op(s, &mut || {
                sgemm_rm(blas, bsz, kk, n, &*dz, false, &w[l], true, &mut *dh, false)
            })?;
        }
        *kernels += 1;
    }
    Ok(())
}

/// A measured GPU step: medians and least stage spans over the timed steps, with what ran.
#[derive(Debug, Clone)]
pub struct GpuMeasured {
    /// Median step seconds ([`GpuStepTimes::step_s`]).
    pub step_s: f64,
    /// Relative spread of the step samples.
    pub rel_spread: f64,
    /// Least (over the timed steps) copy, embedding and MLP spans and host launch seconds.
    pub copy_s: f64,
    /// See [`Self::copy_s`].
    pub embedding_s: f64,
    /// See [`Self::copy_s`].
    pub mlp_s: f64,
    /// See [`Self::copy_s`].
    pub launch_s: f64,
    /// Kernel launches and GEMM calls per step.
    pub kernels: u64,
    /// Lookups in the device cache over all lookups.
    pub hit_rate: f64,
    /// Bytes the kernels move per step ([`DevicePlan::kernel_bytes`]).
    pub kernel_bytes: f64,
    /// The device, for provenance.
    pub device: String,
}

/// Builds the step of `w` on the GPU and times it: `warmup` untimed steps, then `repeats` timed ones.
pub fn measure(
    w: &RecsysStep,
    seed: Seed,
    warmup: usize,
    repeats: usize,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<GpuMeasured, Error> {
    let mut st = GpuStep::new(w, seed)?;
    for _ in 0..warmup {
        st.step()?;
    }
    let mut samples = Vec::with_capacity(repeats.max(1));
    for _ in 0..repeats.max(1) {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        samples.push(st.step()?);
    }
    let least = |f: fn(&GpuStepTimes) -> f64| samples.iter().map(f).fold(f64::INFINITY, f64::min);
    let steps: Vec<f64> = samples.iter().map(|s| s.step_s).collect();
    let sum = Summary::of(&steps);
    Ok(GpuMeasured {
        step_s: sum.median,
        rel_spread: sum.rel_spread(),
        copy_s: least(|s| s.copy_s),
        embedding_s: least(|s| s.embedding_s),
        mlp_s: least(|s| s.mlp_s),
        launch_s: least(|s| s.launch_s),
        kernels: samples[0].kernels,
        hit_rate: st.plan.hit_rate(),
        kernel_bytes: st.plan.kernel_bytes(),
        device: st.device_description(),
    })
}

/// The outcome of a measured GPU step of `w` (see the [module docs](self) for each metric).
pub fn outcome(w: &RecsysStep, m: &GpuMeasured) -> RecsysOutcome {
    let t = m.step_s;
    RecsysOutcome {
        step_time_s: t,
        kernels: m.kernels,
        sm_busy: ((m.embedding_s + m.mlp_s) / t).min(1.0),
        hbm_util: m.kernel_bytes / (t * w.cluster.gpu.hbm_bandwidth_bytes_per_s),
        pcie_util: (m.copy_s / t).min(1.0),
        cache_hit_rate: m.hit_rate,
        stage_embedding_s: m.embedding_s,
        stage_mlp_s: m.mlp_s,
        stage_copy_s: m.copy_s,
        stage_launch_s: m.launch_s,
        batch: w.batch,
    }
}

/// The measured `cuda` backend (see the [module docs](self)).
#[derive(Debug, Clone, Copy)]
pub struct RecsysCuda {
    /// Untimed warm-up steps.
    pub warmup: usize,
    /// Timed steps (the median is reported).
    pub repeats: usize,
}

impl Default for RecsysCuda {
    fn default() -> Self {
        RecsysCuda {
            warmup: WARMUP,
            repeats: REPEATS,
        }
    }
}

impl Backend<RecsysStep> for RecsysCuda {
    fn name(&self) -> &str {
        "cuda"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Measured
    }
    fn available(&self) -> Result<(), String> {
        match gpu_unavailable_reason() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
    fn run(&mut self, w: &RecsysStep, ctx: &mut RunCtx) -> Result<RecsysOutcome, Error> {
        w.validate()?;
        let m = measure(w, ctx.seed.derive("recsys_cpu"), self.warmup, self.repeats, &ctx.cancel)?;
        Ok(outcome(w, &m))
    }
}

#[cfg(test)]
mod tests {
    use super::super::CpuStep;
    use super::*;
    use std::sync::atomic::AtomicBool;
    use trainlab_core::workloads::recsys::{CacheSpec, FieldGroup, Overheads, Pooling};
    use trainlab_models::recsys::field_chains;

    /// A small step: two groups of different dims (one mean-pooled with 3 ids per sample) plus a third with the first
    /// group's shape, so packing merges groups 0 and 2.
    fn step(packing: bool, cache: f64, micro_batches: u64, streams: u64, gpu: &str) -> RecsysStep {
        let g = |count, rows, dim, ids, zipf_s, pooling| FieldGroup {
            count,
            rows,
            dim,
            ids_per_sample: ids,
            zipf_s,
            pooling,
        };
        RecsysStep {
            fields: vec![
                g(3, 500, 8, 1, 1.0, Pooling::Sum),
                g(2, 300, 4, 3, 1.1, Pooling::Mean),
                g(2, 700, 8, 2, 0.9, Pooling::Sum),
            ],
            mlp: vec![16, 1],
            batch: 37,
            cluster: trainlab_datasets_cluster(gpu),
            mlp_dtype: Dtype::Fp32,
            packing,
            micro_batches,
            streams,
            cache: CacheSpec {
                fraction: cache,
                policy: CachePolicy::StaticTopk,
            },
            overheads: Overheads::default(),
        }
    }

    /// One device of one node: `cpu` (no SM limits: the cpu executor's device) or a GPU named `gpu` with SM limits
    /// (test values of the order of an H100's; only their presence matters here).
    fn trainlab_datasets_cluster(gpu: &str) -> trainlab_core::ClusterSpec {
        let link = trainlab_core::LinkSpec {
            bandwidth_bytes_per_s: 1e11,
            latency_s: 1e-6,
        };
        trainlab_core::ClusterSpec {
            gpu: trainlab_core::GpuSpec {
                name: gpu.to_string(),
                memory_bytes: 80 << 30,
                peak_flops: [(Dtype::Fp32, 6.7e13), (Dtype::Bf16, 9.9e14)].into_iter().collect(),
                hbm_bandwidth_bytes_per_s: 3.35e12,
                nvlink_bandwidth_bytes_per_s: 0.0,
                tdp_watts: 700.0,
                source: "test".into(),
                sm: (gpu != "cpu").then_some(trainlab_core::SmSpec {
                    sms: 132,
                    max_threads_per_sm: 2048,
                    max_blocks_per_sm: 32,
                    max_threads_per_block: 1024,
                    registers_per_sm: 65536,
                    max_registers_per_thread: 255,
                    register_alloc_unit: 256,
                    shared_mem_per_sm_bytes: 233472,
                    max_shared_mem_per_block_bytes: 232448,
                    reserved_shared_mem_per_block_bytes: 1024,
                    shared_mem_alloc_unit_bytes: 128,
                    pcie_bytes_per_s: 64e9,
                }),
            },
            gpus_per_node: 1,
            nodes: 1,
            intra: link,
            inter: link,
        }
    }

    /// The bag kernel's index arithmetic on the host: what `tl_rs_bag_fwd` writes for micro-batch `m`, from the
    /// plan's offset table and sources, the cache table and the staged rows packed as [`GpuStep::step`] packs them.
    fn emulate_bag_fwd(plan: &DevicePlan, host: &[Vec<f32>], cache: &[f32], m: usize) -> Vec<f32> {
        let ot = plan.offset_table();
        let (b, k0) = (plan.mbs[m], plan.k0);
        let mut x = vec![f32::NAN; b * k0];
        for ((ci, c), lp) in plan.chains.iter().enumerate().zip(&plan.lookups[m]) {
            let d = c.dim;
            let staged: Vec<f32> = lp
                .miss_rows
                .iter()
                .flat_map(|&r| host[ci][r * d..(r + 1) * d].iter().copied())
                .collect();
            let ca = &cache[c.cache0..];
            let row = |s: u32| -> &[f32] {
                if s & STAGED != 0 {
                    let i = (s & !STAGED) as usize;
                    &staged[i * d..(i + 1) * d]
                } else {
                    &ca[s as usize * d..(s as usize + 1) * d]
                }
            };
            for t in 0..c.fields.len() * b * d {
                let (col, bag) = (t % d, t / d);
                let (j, i) = (c.first + bag / b, bag % b);
                let n = ot.ids[j] as usize;
                let s = &lp.src[b * ot.ids_before[j] as usize + i * n..];
                let mut acc = row(s[0])[col];
                for &sq in &s[1..n] {
                    acc += row(sq)[col];
                }
                if ot.mean[j] != 0 {
                    acc *= 1.0f32 / n as f32;
                }
                x[i * k0 + ot.x_off[j] as usize + col] = acc;
            }
        }
        x
    }

    /// The device plan is the cpu executor's: the same chains (dims, member fields with their global numbers, table
    /// and cache offsets, MLP columns, ids and pooling) and the same lookups in the same order.
    #[test]
    fn plan_is_the_cpu_executors() {
        for packing in [false, true] {
            for (cache, m) in [(0.0, 1), (0.05, 3)] {
                let w = step(packing, cache, m, 1, "cpu");
                let seed = Seed(5);
                let cpu = CpuStep::new(&w, seed, 1).unwrap();
                let plan = build_plan(&w, seed).unwrap();
                assert_eq!(plan.chains.len(), field_chains(&w).len());
                assert_eq!(plan.chains.len(), cpu.chains.len());
                assert_eq!(plan.k0, cpu.k0);
                assert_eq!(plan.mbs, cpu.mbs.iter().map(|mb| mb.b).collect::<Vec<_>>());
                for (pc, cc) in plan.chains.iter().zip(&cpu.chains) {
                    assert_eq!(pc.dim, cc.dim);
                    assert_eq!(pc.fields.len(), cc.fields.len());
                    for (pf, cf) in pc.fields.iter().zip(&cc.fields) {
                        assert_eq!(
                            (
                                pf.global,
                                pf.rows,
                                pf.base,
                                pf.k,
                                pf.dev_base,
                                pf.ids,
                                pf.mean,
                                pf.mult,
                                pf.x_off
                            ),
                            (
                                cf.global,
                                cf.rows,
                                cf.base,
                                cf.k,
                                cf.dev_base,
                                cf.ids,
                                cf.mean,
                                cf.mult,
                                cf.x_off
                            )
                        );
                    }
                }
                // Every lookup reads the row the cpu executor's rank names.
                for (mi, per_chain) in plan.lookups.iter().enumerate() {
                    for (ci, (lp, cc)) in per_chain.iter().zip(&cpu.chains).enumerate() {
                        let ranks = &cpu.mbs[mi].chains[ci].ranks;
                        assert_eq!(lp.src.len(), ranks.len());
                        let mut l = 0;
                        for cf in &cc.fields {
                            for _ in 0..cpu.mbs[mi].b * cf.ids {
                                let r = u64::from(ranks[l]);
                                let s = lp.src[l];
                                if r < cf.k {
                                    assert_eq!(s, (cf.dev_base as u64 + r) as u32);
                                } else {
                                    assert!(s & STAGED != 0);
                                    let row = lp.miss_rows[(s & !STAGED) as usize];
                                    assert_eq!(row, cf.base + ((r * cf.mult) % cf.rows) as usize);
                                }
                                l += 1;
                            }
                        }
                        // staged rows are distinct
                        let mut rows = lp.miss_rows.clone();
                        rows.sort_unstable();
                        rows.dedup();
                        assert_eq!(rows.len(), lp.miss_rows.len());
                    }
                }
                if cache > 0.0 {
                    assert!(plan.hit_rate() > 0.0 && plan.hit_rate() < 1.0);
                } else {
                    assert_eq!(plan.hit_rate(), 0.0);
                }
            }
        }
    }

    /// The bag kernel's arithmetic (emulated on the host from the offset table and the sources) gives the cpu
    /// executor's MLP input bit for bit, separate and packed, with and without a cache.
    #[test]
    fn emulated_bag_kernel_equals_the_cpu_pooling() {
        for packing in [false, true] {
            for (cache, m) in [(0.0, 1), (0.1, 2)] {
                let w = step(packing, cache, m, 1, "cpu");
                let seed = Seed(9);
                let mut cpu = CpuStep::new(&w, seed, 1).unwrap();
                cpu.step(&AtomicBool::new(false)).unwrap();
                let plan = build_plan(&w, seed).unwrap();
                let host: Vec<Vec<f32>> = plan.chains.iter().map(|c| host_table(c, seed)).collect();
                let mut cache_t = Vec::new();
                for (c, t) in plan.chains.iter().zip(&host) {
                    for f in &c.fields {
                        for r in 0..f.k {
                            let row = f.base + ((r * f.mult) % f.rows) as usize;
                            cache_t.extend_from_slice(&t[row * c.dim..(row + 1) * c.dim]);
                        }
                    }
                }
                assert_eq!(cache_t.len(), plan.cache_floats);
                let x = emulate_bag_fwd(&plan, &host, &cache_t, plan.mbs.len() - 1);
                let want = cpu.mlp_input();
                assert_eq!(x.len(), want.len());
                let same = x.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "packing {packing} cache {cache}: pooled inputs differ");
            }
        }
    }

    /// Largest difference of the updates (`table - fresh`) of two tables, and the largest update of `want`.
    fn update_diff(mine: &[f32], want: &[f32], fresh: &[f32]) -> (f32, f32) {
        assert_eq!((mine.len(), want.len()), (fresh.len(), fresh.len()));
        let (mut err, mut size) = (0f32, 0f32);
        for ((a, b), f) in mine.iter().zip(want).zip(fresh) {
            err = err.max(((a - f) - (b - f)).abs());
            size = size.max((b - f).abs());
        }
        (err, size)
    }

    /// The backward path's index arithmetic replayed on the host (what `tl_rs_bag_bwd` writes from the cpu
    /// executor's MLP input gradients, `tl_rs_scatter` into the cached rows and the staged rows' gradient sums, and
    /// the host's update of the missed rows) leaves the tables the cpu executor's step leaves, within fp32 rounding
    /// (the sums run in another order), separate and packed, with and without a cache.
    #[test]
    fn emulated_backward_and_miss_path_update_the_cpu_tables() {
        for packing in [false, true] {
            for (cache, m) in [(0.0, 1), (0.1, 2), (0.3, 3)] {
                let w = step(packing, cache, m, 1, "cpu");
                let seed = Seed(13);
                let mut cpu = CpuStep::new(&w, seed, 1).unwrap();
                cpu.step(&AtomicBool::new(false)).unwrap();
                let plan = build_plan(&w, seed).unwrap();
                let ot = plan.offset_table();
                let mut host: Vec<Vec<f32>> = plan.chains.iter().map(|c| host_table(c, seed)).collect();
                let mut cache_t = Vec::new();
                for (c, t) in plan.chains.iter().zip(&host) {
                    for f in &c.fields {
                        for r in 0..f.k {
                            let row = f.base + ((r * f.mult) % f.rows) as usize;
                            cache_t.extend_from_slice(&t[row * c.dim..(row + 1) * c.dim]);
                        }
                    }
                }
                let mut grads = vec![f32::NAN; plan.grad_floats];
                let mut mgrad = vec![0.0f32; plan.staged_floats];
                let k0 = plan.k0;
                for (mi, per_chain) in plan.lookups.iter().enumerate() {
                    let (b, dx) = (plan.mbs[mi], &cpu.mbs[mi].dx);
                    for (c, lp) in plan.chains.iter().zip(per_chain) {
                        let d = c.dim;
                        // tl_rs_bag_bwd
                        for t in 0..c.fields.len() * b * d {
                            let (col, bag) = (t % d, t / d);
                            let (j, i) = (c.first + bag / b, bag % b);
                            let n = ot.ids[j] as usize;
                            let g = dx[i * k0 + ot.x_off[j] as usize + col];
                            let scale = if ot.mean[j] != 0 { 1.0f32 / n as f32 } else { 1.0 };
                            let l0 = b * ot.ids_before[j] as usize + i * n;
                            for q in 0..n {
                                grads[lp.grad0 + (l0 + q) * d + col] = g * scale;
                            }
                        }
                        // tl_rs_scatter
                        for t in 0..lp.src.len() * d {
                            let (l, col) = (t / d, t % d);
                            let s = lp.src[l];
                            let g = grads[lp.grad0 + t];
                            assert!(!g.is_nan(), "lookup {l} has no gradient");
                            if s & STAGED != 0 {
                                mgrad[lp.stage0 + (s & !STAGED) as usize * d + col] += g;
                            } else {
                                cache_t[c.cache0 + s as usize * d + col] += -LR * g;
                            }
                        }
                    }
                }
                // the host's miss path after the step
                for per_chain in &plan.lookups {
                    for ((c, lp), t) in plan.chains.iter().zip(per_chain).zip(host.iter_mut()) {
                        let d = c.dim;
                        for (i, &row) in lp.miss_rows.iter().enumerate() {
                            for (x, g) in t[row * d..(row + 1) * d].iter_mut().zip(&mgrad[lp.stage0 + i * d..]) {
                                *x -= LR * g;
                            }
                        }
                    }
                }
                let mut moved = 0usize;
                for (c, t) in plan.chains.iter().zip(&host) {
                    let d = c.dim;
                    for f in &c.fields {
                        let mut mine = t[f.base * d..(f.base + f.rows as usize) * d].to_vec();
                        for r in 0..f.k as usize {
                            let row = ((r as u64 * f.mult) % f.rows) as usize;
                            let at = c.cache0 + (f.dev_base + r) * d;
                            mine[row * d..(row + 1) * d].copy_from_slice(&cache_t[at..at + d]);
                        }
                        let want = cpu.field_table(f.global).unwrap();
                        let fresh = {
                            let mut v = vec![0.0f32; f.rows as usize * d];
                            crate::timing::fill_random_f32(seed.derive("recsys.table").index(f.global as u64), &mut v);
                            v
                        };
                        moved += want.iter().zip(&fresh).filter(|(a, b)| a != b).count();
                        let (err, size) = update_diff(&mine, &want, &fresh);
                        // The same sums in another order: at most 2 ulps of a value below 1 apart, while every
                        // field's largest update is well above that (so a missing or misplaced update fails).
                        let tag = format!("packing {packing} cache {cache} field {}", f.global);
                        assert!(
                            err <= 2.5e-7,
                            "{tag}: tables differ by {err:.2e} (largest update {size:.2e})"
                        );
                        assert!(size >= 1e-6, "{tag}: largest update {size:.2e}");
                    }
                }
                assert!(moved > 0, "the step updated no table row");
            }
        }
    }

    #[test]
    fn offsets_and_launches_cover_every_bag() {
        let w = step(true, 0.05, 2, 2, "h100-sxm");
        let plan = build_plan(&w, Seed(1)).unwrap();
        let ot = plan.offset_table();
        assert_eq!(ot.ids.len(), 7);
        // packed (dim, pooling) groups in key order: (4, mean) [2 fields], (8, sum) [3 + 2 fields]
        assert_eq!(plan.chains.len(), 2);
        assert_eq!(plan.chains[0].dim, 4);
        assert_eq!(plan.chains[1].first, 2);
        assert_eq!(&ot.ids_before[2..], &[0, 1, 2, 3, 5]);
        assert_eq!(&ot.ids[..2], &[3, 3]);
        assert_eq!(&ot.mean[..2], &[1, 1]);
        // MLP columns: group 0 at 0, 8, 16; group 1 at 24, 28; group 2 at 32, 40
        assert_eq!(&ot.x_off, &[24, 28, 0, 8, 16, 32, 40]);
        for per_chain in &plan.lookups {
            for (c, lp) in plan.chains.iter().zip(per_chain) {
                let b = lp.src.len() / c.ids_per_sample();
                let cfg = bag_launch(c.fields.len(), b, c.dim);
                let threads = cfg.grid_dim.0 as usize * cfg.block_dim.0 as usize;
                assert!(threads >= c.fields.len() * b * c.dim);
                assert!(threads - c.fields.len() * b * c.dim < cfg.block_dim.0 as usize);
            }
        }
        // offsets are contiguous
        let (mut src0, mut grad0) = (0, 0);
        for per_chain in &plan.lookups {
            for (c, lp) in plan.chains.iter().zip(per_chain) {
                assert_eq!((lp.src0, lp.grad0), (src0, grad0));
                src0 += lp.src.len();
                grad0 += lp.src.len() * c.dim;
            }
        }
        assert_eq!((plan.total_lookups, plan.grad_floats), (src0, grad0));
        // MLP 16-1 (two layers): 2 micro-batches x (3 x 2 chains + 2 GEMMs and 1 ReLU forward + 1 loss gradient +
        // 4 GEMMs and 1 ReLU backward) + 2 SGDs
        assert_eq!(plan.kernels(), 2 * (6 + 3 + 1 + 5) + 2);
        assert!(plan.device_bytes() > 4.0 * (plan.cache_floats + plan.grad_floats) as f64);
    }

    #[test]
    fn scaling_fits_the_budgets_and_keeps_small_steps() {
        let small = step(false, 0.0, 1, 1, "h100-sxm");
        assert_eq!(scaled_to_device(&small), small);
        let mut big = small.clone();
        big.fields[0].rows = 1 << 30;
        big.fields[1].ids_per_sample = 200;
        big.fields[2].rows = 1 << 28;
        big.batch = 1 << 20;
        big.micro_batches = 64;
        big.validate().unwrap();
        let s = scaled_to_device(&big);
        let tables: u64 = s.fields.iter().map(|g| g.count * g.rows * g.dim * 4).sum();
        let per_sample: u64 = s.fields.iter().map(|g| g.count * g.ids_per_sample * g.dim * 4).sum();
        assert!(tables <= TABLE_BUDGET_BYTES);
        assert!(s.batch * per_sample <= ACT_BUDGET_BYTES);
        assert!(s.micro_batches <= s.batch);
        assert!(s.fields.iter().all(|g| g.rows >= g.ids_per_sample));
        s.validate().unwrap();
    }

    #[test]
    fn replacing_caches_are_refused_with_the_reason() {
        let mut w = step(false, 0.05, 1, 1, "h100-sxm");
        w.cache.policy = CachePolicy::Lru;
        let e = build_plan(&w, Seed(1)).unwrap_err();
        assert!(matches!(&e, Error::Unsupported(m) if m.contains("static_topk")), "{e}");
    }

    /// NVRTC needs no GPU: wherever `libnvrtc` can be loaded, the kernel source must compile and define every entry
    /// point [`GpuStep::new`] loads.
    #[test]
    fn recsys_kernels_compile_with_nvrtc_when_present() {
        crate::gpu::tests::assert_kernels_compile_when_nvrtc_present(RECSYS_KERNELS_CU, &RECSYS_KERNEL_NAMES);
    }

    /// On a GPU: after one step the pooled MLP input of the last micro-batch equals the cpu executor's bit for bit and
    /// the table updates agree within [`UPDATE_REL_BOUND`] of the largest update, separate and packed, one and two
    /// streams, with and without a cache; the backend reports a positive step time. Without one: prints the reason and
    /// checks that nothing is attempted.
    #[test]
    fn gpu_step_matches_cpu_or_skips() {
        if let Some(why) = gpu_unavailable_reason() {
            println!("skipped: {why}");
            let w = step(true, 0.05, 2, 2, "h100-sxm");
            assert!(matches!(GpuStep::new(&w, Seed(1)), Err(Error::Unsupported(_))));
            assert!(RecsysCuda::default().available().is_err());
            return;
        }
        for packing in [false, true] {
            for (cache, m, streams) in [(0.0, 1, 1), (0.05, 2, 2), (0.2, 3, 2)] {
                let w = step(packing, cache, m, streams, "h100-sxm");
                let seed = Seed(21);
                let mut g = GpuStep::new(&w, seed).unwrap();
                let t = g.step().unwrap();
                let mut wc = w.clone();
                wc.cluster = trainlab_datasets_cluster("cpu");
                let mut c = CpuStep::new(&wc, seed, 1).unwrap();
                c.step(&AtomicBool::new(false)).unwrap();
                let x = g.mlp_input(g.plan.mbs.len() - 1).unwrap();
                let want = c.mlp_input();
                let diff = x.iter().zip(want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                // Updates (table - initial table) against the cpu executor's: the atomics add in another order, so a
                // hot row's sum may differ by a few ulps; a wrong or missing update is off by the update itself.
                let mut worst = 0.0f64;
                for f in 0..7 {
                    let gt = g.field_table(f).unwrap().unwrap();
                    let ct = c.field_table(f).unwrap();
                    let mut fresh = vec![0.0f32; ct.len()];
                    crate::timing::fill_random_f32(seed.derive("recsys.table").index(f as u64), &mut fresh);
                    let (err, size) = update_diff(&gt, &ct, &fresh);
                    assert!(size >= 1e-6, "field {f}: largest update {size:.2e}");
                    worst = worst.max(f64::from(err) / f64::from(size));
                }
                println!(
                    "recsys cuda packing {packing} cache {cache} m {m} s {streams}: pooled mismatches {diff} of {}, \
                     table update err {worst:.2e} of the largest; step {:.1} us, copy {:.1} us, emb {:.1} us, mlp {:.1} us, launch \
                     {:.1} us, {} kernels",
                    x.len(),
                    t.step_s * 1e6,
                    t.copy_s * 1e6,
                    t.embedding_s * 1e6,
                    t.mlp_s * 1e6,
                    t.launch_s * 1e6,
                    t.kernels
                );
                assert_eq!(x.len(), want.len());
                assert_eq!(diff, 0, "pooled MLP inputs differ from the cpu executor's");
                assert!(
                    worst <= UPDATE_REL_BOUND,
                    "table updates differ: {worst:.3e} of the largest update"
                );
                assert_eq!(t.kernels, g.plan.kernels());
                assert!(t.step_s > 0.0);
            }
        }
        let w = step(true, 0.05, 2, 2, "h100-sxm");
        let mut ctx = RunCtx::new(Seed(3));
        let o = RecsysCuda::default().run(&w, &mut ctx).unwrap();
        assert!(o.step_time_s > 0.0 && o.cache_hit_rate > 0.0);
    }
}
