//! The measured `cpu` backend of `recsys_step` (PICASSO, arXiv 2204.04903; issue 11 part 2): a scaled wide-and-deep
//! training step really run on this CPU, op by op, so that the gains of packing, interleaving and caching are
//! measured rather than assumed.
//!
//! # What runs
//! Every field is an fp32 embedding table whose ids are seeded Zipf(`s`) ranks ([`field_ranks`]; the rank `r` row
//! sits at a pseudo-random place, `r a mod rows` with `a` coprime to `rows`, as hashed ids do). Per micro-batch and
//! per chain (one field, or with `packing` one table and one op for all fields of equal `dim` and `pooling`, their
//! tables concatenated) the executor runs the ops of [`trainlab_models::recsys::cpu_counts`], one at a time, each
//! timed:
//! - `copy` (only when some lookup misses the cache): the missed rows are copied from the host table into a staging
//!   buffer, the stand-in for the PCIe transfer (with `lru` / `lfu` also the caches' decisions and the admitted
//!   rows' copy into the device table);
//! - `gather`: every lookup's row, from the "device" table of cached rows (a hit, counted) or from the staging buffer,
//!   into a `L x d` buffer; `pool`: the sum (or mean) of each sample's rows per field (embedding-bag = gather + pooled
//!   sum);
//! - the MLP: `concat` of the pooled vectors (in field order, whatever the packing), per layer a GEMM (the crate's one
//!   CPU GEMM, single-threaded) and ReLU (the last layer linear), the loss gradient, per layer backward the ReLU
//!   gradient, data- and weight-gradient GEMMs;
//! - `pool_grad`: each lookup's gradient row (`L x d`);
//! - at the end of the step, per chain and micro-batch, `scatter`: the sparse SGD row update (scatter-add of the
//!   gradient rows into the cached or host rows), and per MLP layer the SGD update.
//!
//! The cache holds `round(fraction rows)` rows of each table in a separate "device" table. `static_topk`: the most
//! popular rows, fixed. `lru` / `lfu`: each field's cache is a [`RowCache`] (the state machine the cache simulator
//! runs) deciding every lookup in order; a miss's row is copied host -> staging and, admitted, staging -> device
//! after the gather, the evicted row written back to the host table if an update touched it since it was admitted
//! (write-back). The caches are warmed at construction with one step's lookups, so every step starts from the state
//! a step leaves (LRU: the same state each time the same ids are replayed).
//!
//! # Streams and micro-batches
//! With one stream every op runs in program order on the calling thread. With `S >= 2` streams the step is a
//! three-stage software pipeline on a private rayon pool of `threads` workers: at tick `t` the forward embedding
//! ops of micro-batch `t` (its chains split into `S` contiguous parts, one rayon task per part: the streams), the MLP
//! of micro-batch `t - 1` and the backward embedding ops of micro-batch `t - 2` run concurrently. Tables are only
//! written by the end-of-step updates, so the overlap never reads a half-updated row; results do not depend on `S`,
//! `threads` or the timing.
//!
//! # What is reported
//! `step_time` is the median of timed steps (after warm-up) through [`crate::timing`], each step timed by the seconds
//! it takes with dedicated cores ([`StepTimes::dedicated_s`]: on-CPU seconds of the calling thread and of the busiest
//! stream worker, so other processes on a shared machine do not count); `stage.*` are the least, over the timed
//! steps, of the summed op times of each stage (busy time; with streams the stages overlap, so they can add up to more than the
//! step); `kernels` the ops that are not copies; `cache_hit_rate` the hits the gathers counted; `sm_busy` the busy
//! share of the threads; `hbm_util` the ops' bytes over the step time and the `cpu` preset's memory bandwidth;
//! `pcie_util` the share of the step the staging copies run; `stage.launch` is 0 (no separate launch on a CPU).
//!
//! A step of a GPU cluster, or larger than [`TABLE_BUDGET_BYTES`] of tables, [`ACT_BUDGET_BYTES`] of gathered rows or
//! [`MLP_FLOP_BUDGET`],
//! is not what this backend runs: [`scaled_to_budget`] gives the step it runs instead (the kind files that answer
//! under its own workload).
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use rand_distr::{Distribution, Zipf};
use rayon::prelude::*;
use trainlab_core::workloads::recsys::{CachePolicy, Pooling, RecsysOutcome, RecsysStep};
use trainlab_core::{Backend, Dtype, Error, Fidelity, RunCtx, Seed, Summary, Workload};
use trainlab_models::cache::{Access, RankHash, RankMap, RowCache};
use trainlab_models::recsys::{CpuCounts, cpu_counts, field_chains};

use crate::cpu::{MatRef, gemm};

pub mod cuda;
use crate::timing::{TimingOpts, black_box, fill_random_f32, thread_on_cpu_s, time_samples};

/// Most bytes of embedding tables a measured step holds (the tables of the step asked are scaled down to this).
pub const TABLE_BUDGET_BYTES: u64 = 256 << 20;
/// Most bytes of gathered rows per step (`batch x Σ fields x ids x dim x 4`; the batch is scaled down to this).
pub const ACT_BUDGET_BYTES: u64 = 48 << 20;
/// Most MLP GEMM FLOPs per step (forward and both backward GEMMs; the batch is scaled down to this), so that one
/// measured step of a production-sized MLP takes a fraction of a second on a CPU.
pub const MLP_FLOP_BUDGET: f64 = 2e9;
/// SGD learning rate of the embedding and MLP updates.
const LR: f32 = 1e-3;

/// The step this backend runs for `w`: the same step with tables scaled to [`TABLE_BUDGET_BYTES`] (every table's
/// rows by one common factor, at least `ids_per_sample`), the batch to [`ACT_BUDGET_BYTES`] of gathered rows and
/// [`MLP_FLOP_BUDGET`] (micro-batches at most the batch) and fp32 MLP GEMMs. The cluster is left as given (the kind sets the `cpu`
/// preset).
pub fn scaled_to_budget(w: &RecsysStep) -> RecsysStep {
    let mut x = w.clone();
    x.mlp_dtype = Dtype::Fp32;
    let table_bytes: f64 = w.fields.iter().map(|g| (g.count * g.rows * g.dim * 4) as f64).sum();
    if table_bytes > TABLE_BUDGET_BYTES as f64 {
        let f = TABLE_BUDGET_BYTES as f64 / table_bytes;
        for g in &mut x.fields {
            g.rows = ((g.rows as f64 * f).floor() as u64).max(g.ids_per_sample).max(1);
        }
    }
    let per_sample: u64 = w.fields.iter().map(|g| g.count * g.ids_per_sample * g.dim * 4).sum();
    let mut widths = vec![w.mlp_input() as f64];
    widths.extend(w.mlp.iter().map(|&x| x as f64));
    let flops_per_sample: f64 = widths.windows(2).map(|p| 6.0 * p[0] * p[1]).sum();
    let max_batch = (ACT_BUDGET_BYTES / per_sample.max(1))
        .min((MLP_FLOP_BUDGET / flops_per_sample.max(1.0)) as u64)
        .max(1);
    if x.batch > max_batch {
        x.batch = max_batch;
    }
    x.micro_batches = x.micro_batches.min(x.batch);
    x
}

/// The seeded Zipf(`s`) ranks (1-based: rank 1 is the most popular row) of `n` lookups of global field `field`
/// of a table of `rows` rows: stream `seed.derive("recsys.ids").index(field)`, one `rand_distr::Zipf` draw each (the
/// draws of `trainlab_sim::recsys::simulate_hit_rate`).
pub fn field_ranks(seed: Seed, field: u64, rows: u64, s: f64, n: usize) -> Result<Vec<u64>, Error> {
    Ok(IdStream::new(seed, field, rows, s)?.draw(n))
}

/// Draws of a field's id stream ([`field_ranks`]) that warm a replacing (`lru` / `lfu`) cache of `k` rows before the
/// first step, for a step of `lookups` lookups of that field: `max(8 k, lookups)`.
pub fn cache_warmup_draws(k: u64, lookups: usize) -> usize {
    (8 * k as usize).max(lookups)
}

/// A field's id stream ([`field_ranks`] are its first draws), continued step after step (replacing caches see fresh
/// ids every step).
#[derive(Debug)]
struct IdStream {
    zipf: Zipf<f64>,
    rng: trainlab_core::seed::Rng,
}

impl IdStream {
    fn new(seed: Seed, field: u64, rows: u64, s: f64) -> Result<IdStream, Error> {
        let zipf = Zipf::new(rows as f64, s)
            .map_err(|e| Error::Backend(format!("Zipf({rows}, {s}) for field {field}: {e}")))?;
        Ok(IdStream {
            zipf,
            rng: seed.derive("recsys.ids").index(field).rng(),
        })
    }
    fn draw(&mut self, n: usize) -> Vec<u64> {
        (0..n).map(|_| self.zipf.sample(&mut self.rng) as u64).collect()
    }
}

/// The row of a table of `rows` rows that holds the id of 0-based popularity rank `rank` (`rank a mod rows`, `a`
/// coprime with `rows`: a permutation that scatters the hot rows, as hashed ids do).
pub fn row_of(rank: u64, rows: u64) -> u64 {
    (rank * coprime(rows)) % rows.max(1)
}

/// A multiplier coprime with `rows` (a prime that does not divide it), for the rank-to-row permutation.
fn coprime(rows: u64) -> u64 {
    [1_000_003u64, 998_244_353, 1_000_000_007]
        .into_iter()
        .find(|p| !rows.is_multiple_of(*p))
        .unwrap_or(1)
        % rows.max(1)
}

/// One field inside a chain: the layout the `cpu` and `cuda` executors share ([`layout`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChainField {
    /// Index of the field in the model (group order, then count).
    pub(crate) global: usize,
    /// Group of the field in the workload.
    pub(crate) group: usize,
    pub(crate) rows: u64,
    /// Row offset of this field in the chain's host table.
    pub(crate) base: usize,
    /// Cached rows (ranks `0..k`), and their offset in the chain's device table.
    pub(crate) k: u64,
    pub(crate) dev_base: usize,
    pub(crate) ids: usize,
    pub(crate) mean: bool,
    /// Rank-to-row multiplier ([`row_of`]).
    pub(crate) mult: u64,
    /// Column offset of this field in the MLP input.
    pub(crate) x_off: usize,
}

/// The embedding layout of a step, shared by the `cpu` and `cuda` executors.
pub(crate) struct Layout {
    /// Per field in the global numbering (group order, then count): its group and MLP input column.
    pub(crate) fields: Vec<(usize, usize)>,
    /// The chains of [`field_chains`] (the CPU op model's order): embedding dimension and member fields, each with
    /// its row offset in the chain's host table and its cached rows' offset in the chain's device table.
    pub(crate) chains: Vec<(usize, Vec<ChainField>)>,
    /// Width of the MLP input (the sum of the fields' dimensions).
    pub(crate) width: usize,
}

/// The embedding layout of `w` ([`Layout`]).
pub(crate) fn layout(w: &RecsysStep) -> Layout {
    let mut fields = Vec::new();
    let mut next_of_group = Vec::new();
    let mut width = 0usize;
    for (g, f) in w.fields.iter().enumerate() {
        next_of_group.push(fields.len());
        for _ in 0..f.count {
            fields.push((g, width));
            width += f.dim as usize;
        }
    }
    let mut chains = Vec::new();
    for (dim, members) in field_chains(w) {
        let mut chain = Vec::new();
        let (mut base, mut dev_base) = (0usize, 0usize);
        for (g, n) in members {
            let f = &w.fields[g];
            for _ in 0..n {
                let global = next_of_group[g];
                next_of_group[g] += 1;
                let k = w.cached_rows(f.rows);
                chain.push(ChainField {
                    global,
                    group: g,
                    rows: f.rows,
                    base,
                    k,
                    dev_base,
                    ids: f.ids_per_sample as usize,
                    mean: f.pooling == Pooling::Mean,
                    mult: coprime(f.rows),
                    x_off: fields[global].1,
                });
                base += f.rows as usize;
                dev_base += k as usize;
            }
        }
        chains.push((dim as usize, chain));
    }
    Layout { fields, chains, width }
}

/// A chain: its fields and its rows.
#[derive(Debug)]
struct Chain {
    dim: usize,
    fields: Vec<ChainField>,
    /// `lru` / `lfu`: rows move in and out of the device table as the caches decide.
    dynamic: bool,
    /// Written by the forward ops of one micro-batch at a time (dynamic caches) and by the end-of-step updates;
    /// never contended (a chain's forward ops run on one stream, in micro-batch order).
    data: Mutex<ChainData>,
}

/// The rows of a chain: its table (host), its cached rows (device), one cache per field.
#[derive(Debug)]
struct ChainData {
    host: Vec<f32>,
    dev: Vec<f32>,
    /// The replacement state of each field's cache (slots `dev_base..dev_base + k` of the device table).
    caches: Vec<RowCache>,
    /// Per device row: updated since it was admitted (written back to the host table when evicted).
    dirty: Vec<bool>,
}

impl Chain {
    fn data(&self) -> std::sync::MutexGuard<'_, ChainData> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A row a gather reads with a dynamic cache: a device row, or with this bit a staging row.
const STAGED: u32 = 1 << 31;

/// Buffers of one chain in one micro-batch.
#[derive(Debug, Clone, Default)]
struct ChainBuf {
    /// 0-based rank of each lookup, in (field, sample, id) order.
    ranks: Vec<u32>,
    misses: usize,
    /// Dynamic caches: per lookup the row the gather reads (see [`STAGED`]), the rows admitted in this
    /// micro-batch (device row, staging row) and the hits.
    src: Vec<u32>,
    installs: Vec<(u32, u32)>,
    hits: u64,
    staging: Vec<f32>,
    gathered: Vec<f32>,
    pooled: Vec<f32>,
    grads: Vec<f32>,
}

#[derive(Debug, Clone)]
struct MicroBatch {
    b: usize,
    chains: Vec<ChainBuf>,
    /// Gradient of the MLP input (`b x K0`).
    dx: Vec<f32>,
    target: Vec<f32>,
}

/// The MLP: weights, their gradients and the scratch of one micro-batch.
#[derive(Debug, Clone)]
struct Mlp {
    widths: Vec<usize>,
    w: Vec<Vec<f32>>,
    gw: Vec<Vec<f32>>,
    /// Input (`b x K0`) and per layer pre-activations and activations.
    x: Vec<f32>,
    z: Vec<Vec<f32>>,
    h: Vec<Vec<f32>>,
    dh: Vec<f32>,
    dz: Vec<f32>,
}

/// Busy nanoseconds per stage: copy, embedding, MLP.
#[derive(Debug, Default)]
struct Busy([AtomicU64; 3]);

const COPY: usize = 0;
const EMB: usize = 1;
const MLP: usize = 2;

impl Busy {
    fn time<T>(&self, stage: usize, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.0[stage].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }
}

/// One timed step: wall time, busy seconds per stage (copy, embedding, MLP), ops run, hits counted.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTimes {
    /// Wall-clock seconds of the step.
    pub total_s: f64,
    /// The step's seconds with dedicated cores: the calling thread's on-CPU seconds plus, with streams, the largest
    /// on-CPU seconds of a pool worker ([`crate::timing::thread_on_cpu_s`]; the time other processes held the cores
    /// does not count). The wall time where the thread clock is unavailable.
    pub dedicated_s: f64,
    /// Summed op seconds of the copy, embedding and MLP stages (wall-clock op times scaled by
    /// `dedicated_s / total_s`).
    pub busy_s: [f64; 3],
    /// Ops run (copies included).
    pub ops: u64,
    /// Copies run.
    pub copies: u64,
    /// Lookups that the gathers found in the device table.
    pub hits: u64,
    /// Lookups.
    pub lookups: u64,
}

/// A step of a `recsys_step` on this CPU, with its tables, ids and buffers (built once, run many times).
#[derive(Debug)]
pub struct CpuStep {
    streams: usize,
    chains: Vec<Chain>,
    mbs: Vec<MicroBatch>,
    mlp: Mlp,
    k0: usize,
    pool: Option<rayon::ThreadPool>,
    threads: usize,
    /// Replacing caches: each field's id stream (the next step's ids are drawn from it), and steps run.
    id_streams: Vec<IdStream>,
    steps: usize,
    /// What the executor runs, as the CPU op model counts it (with the real misses of the first step).
    pub counts: CpuCounts,
}

/// Fills every micro-batch's lookup ranks (0-based) from each global field's 1-based `ranks` of the step (samples
/// in order, micro-batches contiguous), and the misses of a static cache.
fn fill_ranks(chains: &[Chain], mbs: &mut [MicroBatch], ranks: &[Vec<u64>]) {
    let mut start = 0usize;
    for mb in mbs.iter_mut() {
        for (c, buf) in chains.iter().zip(&mut mb.chains) {
            buf.ranks.clear();
            buf.misses = 0;
            for cf in &c.fields {
                for &x in &ranks[cf.global][start * cf.ids..(start + mb.b) * cf.ids] {
                    let x = (x - 1) as u32;
                    buf.misses += usize::from(u64::from(x) >= cf.k);
                    buf.ranks.push(x);
                }
            }
        }
        start += mb.b;
    }
}

impl CpuStep {
    /// Builds the step of `w` (on the `cpu` device, within the budgets; see [`scaled_to_budget`]): tables and MLP
    /// weights seeded from `seed`, ids from [`field_ranks`]. `threads`: workers of the streams (0: all cores).
    pub fn new(w: &RecsysStep, seed: Seed, threads: usize) -> Result<CpuStep, Error> {
        w.validate()?;
        if !w.on_cpu_device() {
            return Err(Error::Unsupported(format!(
                "the cpu executor runs steps on the `cpu` device preset (asked: {})",
                w.cluster.gpu.name
            )));
        }
        let s = scaled_to_budget(w);
        if s.batch != w.batch || s.fields != w.fields {
            return Err(Error::Unsupported(format!(
                "the step exceeds the cpu executor's budget ({} MiB of tables, {} MiB of gathered rows); run the \
                 scaled step instead",
                TABLE_BUDGET_BYTES >> 20,
                ACT_BUDGET_BYTES >> 20
            )));
        }
        let threads = if threads == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            threads
        };
        // Global field indices and MLP column offsets (group order), and the chains in the CPU op model's order.
        let Layout {
            fields: global,
            chains: layout_chains,
            width: k0,
        } = layout(w);
        let batch = w.batch as usize;
        // A replacing cache keeps what recent steps looked up, so its steps draw fresh ids (each field's stream
        // continued: warm-up draws, then one step's worth per step); a static cache replays one step's ids.
        let replacing = w.cache.policy != CachePolicy::StaticTopk && w.cache.fraction > 0.0;
        let mut id_streams: Vec<IdStream> = Vec::new();
        let mut warm: Vec<Vec<u64>> = Vec::new();
        let ranks: Vec<Vec<u64>> = if replacing {
            let mut out = Vec::with_capacity(global.len());
            for (i, &(g, _)) in global.iter().enumerate() {
                let f = &w.fields[g];
                let n = batch * f.ids_per_sample as usize;
                let mut st = IdStream::new(seed, i as u64, f.rows, f.zipf_s)?;
                warm.push(st.draw(cache_warmup_draws(w.cached_rows(f.rows), n)));
                out.push(st.draw(n));
                id_streams.push(st);
            }
            out
        } else {
            global
                .par_iter()
                .enumerate()
                .map(|(i, &(g, _))| {
                    let f = &w.fields[g];
                    field_ranks(seed, i as u64, f.rows, f.zipf_s, batch * f.ids_per_sample as usize)
                })
                .collect::<Result<_, _>>()?
        };
        let mut chains = Vec::new();
        for (d, fields) in layout_chains {
            let base: usize = fields.iter().map(|cf| cf.rows as usize).sum();
            let dev_base: usize = fields.iter().map(|cf| cf.k as usize).sum();
            // Each field's rows from its own stream, so a packed table holds exactly the separate tables' values.
            let mut host = vec![0.0f32; base * d];
            for cf in &fields {
                fill_random_f32(
                    seed.derive("recsys.table").index(cf.global as u64),
                    &mut host[cf.base * d..(cf.base + cf.rows as usize) * d],
                );
            }
            let dynamic = w.cache.policy != CachePolicy::StaticTopk && dev_base > 0;
            let mut caches: Vec<RowCache> = fields.iter().map(|cf| RowCache::new(w.cache.policy, cf.k)).collect();
            if dynamic {
                // Warm the caches with the draws before the first step's ([`cache_warmup_draws`]).
                for (cf, cache) in fields.iter().zip(&mut caches) {
                    for &x in &warm[cf.global] {
                        cache.access(x - 1);
                    }
                }
            }
            let mut dev = vec![0.0f32; dev_base * d];
            for (cf, cache) in fields.iter().zip(&caches) {
                for (r, slot) in cache.cached() {
                    let row = cf.base + ((r * cf.mult) % cf.rows) as usize;
                    let at = (cf.dev_base + slot as usize) * d;
                    dev[at..at + d].copy_from_slice(&host[row * d..(row + 1) * d]);
                }
            }
            chains.push(Chain {
                dim: d,
                fields,
                dynamic,
                data: Mutex::new(ChainData {
                    host,
                    dev,
                    caches,
                    dirty: vec![false; dev_base],
                }),
            });
        }
        let m_total = w.micro_batches as usize;
        let mut mbs = Vec::with_capacity(m_total);
        for m in 0..m_total {
            let b = batch / m_total + usize::from(m < batch % m_total);
            let bufs = chains.iter().map(|_| ChainBuf::default()).collect();
            let target = crate::timing::random_f32(seed.derive("recsys.target").index(m as u64), b)
                .into_iter()
                .map(|v| 0.5 + 0.5 * v)
                .collect();
            mbs.push(MicroBatch {
                b,
                chains: bufs,
                dx: Vec::new(),
                target,
            });
        }
        fill_ranks(&chains, &mut mbs, &ranks);
        // Replacing caches: the misses of the first step (from the warmed state), replayed on a copy of the caches.
        for (ci, c) in chains.iter().enumerate() {
            if !c.dynamic {
                continue;
            }
            let mut caches = c.data().caches.clone();
            let mut start = 0usize;
            for mb in &mut mbs {
                let mut misses = 0usize;
                for (cf, cache) in c.fields.iter().zip(&mut caches) {
                    for &x in &ranks[cf.global][start * cf.ids..(start + mb.b) * cf.ids] {
                        misses += usize::from(!cache.access(x - 1).is_hit());
                    }
                }
                mb.chains[ci].misses = misses;
                start += mb.b;
            }
        }
        let mut widths = vec![k0];
        widths.extend(w.mlp.iter().map(|&x| x as usize));
        let wts = (0..w.mlp.len())
            .map(|l| {
                let mut v =
                    crate::timing::random_f32(seed.derive("recsys.mlp").index(l as u64), widths[l] * widths[l + 1]);
                let scale = 1.0 / (widths[l] as f32).sqrt();
                v.iter_mut().for_each(|x| *x *= scale);
                v
            })
            .collect();
        let gw = (0..w.mlp.len())
            .map(|l| vec![0.0f32; widths[l] * widths[l + 1]])
            .collect();
        let counts = cpu_counts(w, |m, c| mbs[m as usize].chains[c].misses as f64);
        let pool = if w.streams >= 2 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(|e| Error::Backend(format!("building the stream pool: {e}")))?,
            )
        } else {
            None
        };
        Ok(CpuStep {
            streams: w.streams as usize,
            chains,
            mbs,
            mlp: Mlp {
                widths,
                w: wts,
                gw,
                x: Vec::new(),
                z: vec![Vec::new(); w.mlp.len()],
                h: vec![Vec::new(); w.mlp.len()],
                dh: Vec::new(),
                dz: Vec::new(),
            },
            k0,
            pool,
            threads,
            id_streams,
            steps: 0,
            counts,
        })
    }

    /// Worker threads of the streams.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs one training step (forward, backward, updates), polling `cancel` between micro-batches. With a
    /// replacing cache every step after the first draws fresh ids first (not timed).
    pub fn step(&mut self, cancel: &AtomicBool) -> Result<StepTimes, Error> {
        if self.steps > 0 && !self.id_streams.is_empty() {
            let batch: usize = self.mbs.iter().map(|m| m.b).sum();
            let mut per_field = vec![0usize; self.id_streams.len()];
            for c in &self.chains {
                for cf in &c.fields {
                    per_field[cf.global] = batch * cf.ids;
                }
            }
            let ranks: Vec<Vec<u64>> = self
                .id_streams
                .iter_mut()
                .zip(&per_field)
                .map(|(st, &n)| st.draw(n))
                .collect();
            fill_ranks(&self.chains, &mut self.mbs, &ranks);
        }
        self.steps += 1;
        let busy = Busy::default();
        let ops = AtomicU64::new(0);
        let copies = AtomicU64::new(0);
        let hits = AtomicU64::new(0);
        let t0 = Instant::now();
        let workers_cpu = |pool: &Option<rayon::ThreadPool>| -> Option<Vec<f64>> {
            match pool {
                None => Some(Vec::new()),
                Some(p) => p.broadcast(|_| thread_on_cpu_s()).into_iter().collect(),
            }
        };
        let (caller0, workers0) = (thread_on_cpu_s(), workers_cpu(&self.pool));
        let m_total = self.mbs.len();
        let streams = self.streams;
        let k0 = self.k0;
        let chains = &self.chains;
        let ctx = OpCtx {
            busy: &busy,
            ops: &ops,
            copies: &copies,
            hits: &hits,
        };
        match &self.pool {
            None => {
                for mb in &mut self.mbs {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Error::Interrupted);
                    }
                    fwd_chains(chains, &mut mb.chains, &ctx);
                    mlp_step(&mut self.mlp, chains, mb, k0, &ctx)?;
                    bwd_chains(chains, &mut mb.chains, mb.b, &mb.dx, k0, &ctx);
                }
            }
            Some(pool) => {
                let mlp = &mut self.mlp;
                for t in 0..m_total + 2 {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Error::Interrupted);
                    }
                    let mut slots: Vec<Option<&mut MicroBatch>> = self.mbs.iter_mut().map(Some).collect();
                    let f = (t < m_total).then(|| slots[t].take()).flatten();
                    let g = (t >= 1 && t <= m_total).then(|| slots[t - 1].take()).flatten();
                    let h = (t >= 2).then(|| slots[t - 2].take()).flatten();
                    let mut mlp_result = Ok(());
                    let ctx = &ctx;
                    pool.install(|| {
                        rayon::scope(|s| {
                            if let Some(mb) = f {
                                s.spawn(move |_| {
                                    let per = mb.chains.len().div_ceil(streams).max(1);
                                    mb.chains
                                        .par_chunks_mut(per)
                                        .enumerate()
                                        .for_each(|(i, part)| fwd_chains(&chains[i * per..], part, ctx));
                                });
                            }
                            if let Some(mb) = h {
                                s.spawn(move |_| {
                                    let per = mb.chains.len().div_ceil(streams).max(1);
                                    let (b, dx) = (mb.b, &mb.dx);
                                    mb.chains
                                        .par_chunks_mut(per)
                                        .enumerate()
                                        .for_each(|(i, part)| bwd_chains(&chains[i * per..], part, b, dx, k0, ctx));
                                });
                            }
                            if let Some(mb) = g {
                                mlp_result = mlp_step(mlp, chains, mb, k0, ctx);
                            }
                        })
                    });
                    mlp_result?;
                }
            }
        }
        // End of the step: the sparse row updates (per chain, micro-batches in order) and the SGD of the MLP.
        let mbs = &self.mbs;
        let update = |(ci, c): (usize, &mut Chain)| {
            for mb in mbs {
                busy.time(EMB, || scatter(c, &mb.chains[ci]));
                ops.fetch_add(1, Ordering::Relaxed);
            }
        };
        match &self.pool {
            None => self.chains.iter_mut().enumerate().for_each(update),
            Some(pool) => pool.install(|| self.chains.par_iter_mut().enumerate().for_each(update)),
        }
        for (w, g) in self.mlp.w.iter_mut().zip(&mut self.mlp.gw) {
            busy.time(MLP, || {
                for (x, gx) in w.iter_mut().zip(g.iter_mut()) {
                    *x -= LR * *gx;
                    *gx = 0.0;
                }
            });
            ops.fetch_add(1, Ordering::Relaxed);
        }
        let total_s = t0.elapsed().as_secs_f64();
        let (caller1, workers1) = (thread_on_cpu_s(), workers_cpu(&self.pool));
        let dedicated_s = match (caller0, caller1, workers0, workers1) {
            (Some(c0), Some(c1), Some(w0), Some(w1)) => {
                (c1 - c0) + w0.iter().zip(&w1).map(|(a, b)| b - a).fold(0.0, f64::max)
            }
            _ => total_s,
        };
        // The ops are timed by the wall clock (a thread-clock read costs a system call, too much per op): the time
        // other processes held the cores lands in whichever op was running, so the stage sums are scaled by the
        // step's share of dedicated time (first order: preemption hits each stage in proportion to its time).
        let scale = if total_s > 0.0 {
            (dedicated_s / total_s).min(1.0)
        } else {
            1.0
        };
        let ns = |i: usize| busy.0[i].load(Ordering::Relaxed) as f64 * 1e-9 * scale;
        Ok(StepTimes {
            total_s,
            dedicated_s,
            busy_s: [ns(COPY), ns(EMB), ns(MLP)],
            ops: ops.load(Ordering::Relaxed),
            copies: copies.load(Ordering::Relaxed),
            hits: hits.load(Ordering::Relaxed),
            lookups: self.counts.lookups as u64,
        })
    }

    /// The MLP input of the last micro-batch the MLP ran (`b x K0`, row-major, fields in model order).
    pub fn mlp_input(&self) -> &[f32] {
        &self.mlp.x
    }

    /// The current rows of global field `field` (`rows x dim`), cached rows read from the device table.
    pub fn field_table(&self, field: usize) -> Option<Vec<f32>> {
        for c in &self.chains {
            for cf in &c.fields {
                if cf.global == field {
                    let d = c.dim;
                    let data = c.data();
                    let j = c.fields.iter().position(|f| f.global == field)?;
                    let mut out = data.host[cf.base * d..(cf.base + cf.rows as usize) * d].to_vec();
                    for (r, slot) in data.caches[j].cached() {
                        let row = ((r * cf.mult) % cf.rows) as usize;
                        let at = (cf.dev_base + slot as usize) * d;
                        out[row * d..(row + 1) * d].copy_from_slice(&data.dev[at..at + d]);
                    }
                    return Some(out);
                }
            }
        }
        None
    }
}

struct OpCtx<'a> {
    busy: &'a Busy,
    ops: &'a AtomicU64,
    copies: &'a AtomicU64,
    hits: &'a AtomicU64,
}

/// The forward embedding ops (copy, gather, pool) of `bufs`, the buffers of `chains[..bufs.len()]`.
fn fwd_chains(chains: &[Chain], bufs: &mut [ChainBuf], ctx: &OpCtx<'_>) {
    for (c, buf) in chains.iter().zip(bufs.iter_mut()) {
        let d = c.dim;
        let mut data = c.data();
        if c.dynamic {
            // the miss path: the caches' decisions, missed rows host -> staging (evicted dirty rows written back),
            // after the gather the admitted rows staging -> device; one copy op when something missed
            let misses = ctx.busy.time(COPY, || cache_lookups(c, &mut data, buf));
            if misses > 0 {
                ctx.ops.fetch_add(1, Ordering::Relaxed);
                ctx.copies.fetch_add(1, Ordering::Relaxed);
            }
            ctx.busy.time(EMB, || gather_cached(c, &data, buf));
            ctx.hits.fetch_add(buf.hits, Ordering::Relaxed);
            ctx.busy.time(COPY, || admit(c, &mut data, buf));
        } else {
            if buf.misses > 0 {
                ctx.busy.time(COPY, || copy_misses(c, &data, buf));
                ctx.ops.fetch_add(1, Ordering::Relaxed);
                ctx.copies.fetch_add(1, Ordering::Relaxed);
            }
            let hits = ctx.busy.time(EMB, || gather(c, &data, buf));
            ctx.hits.fetch_add(hits, Ordering::Relaxed);
        }
        drop(data);
        ctx.busy.time(EMB, || pool(c, buf));
        ctx.ops.fetch_add(2, Ordering::Relaxed);
        black_box(&buf.pooled[..d.min(buf.pooled.len())]);
    }
}

/// Iterates the bags of a chain buffer of `buf_len` lookups as `f(sample, field in chain, first lookup, ids)`, field
/// by field (a packed op's input is the concatenation of its fields' id lists, as in PICASSO's packed lookups), each
/// field's samples in order. Bag `(sample i, field j)` is the `j b + i`-th.
fn bags(c: &Chain, buf_len: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    let per_sample: usize = c.fields.iter().map(|cf| cf.ids).sum();
    if per_sample == 0 {
        return;
    }
    let b = buf_len / per_sample;
    let mut l = 0;
    for (j, cf) in c.fields.iter().enumerate() {
        for i in 0..b {
            f(i, j, l, cf.ids);
            l += cf.ids;
        }
    }
}

/// The missed rows, host table -> staging buffer (the PCIe stand-in).
fn copy_misses(c: &Chain, data: &ChainData, buf: &mut ChainBuf) {
    let d = c.dim;
    let ChainBuf { ranks, staging, .. } = buf;
    staging.clear();
    bags(c, ranks.len(), |_, j, l, n| {
        let cf = &c.fields[j];
        for &r in &ranks[l..l + n] {
            let r = u64::from(r);
            if r >= cf.k {
                let row = cf.base + ((r * cf.mult) % cf.rows) as usize;
                staging.extend_from_slice(&data.host[row * d..(row + 1) * d]);
            }
        }
    });
}

/// Every lookup's row (device table on a hit, staging buffer on a miss) into `gathered`; returns the hits.
fn gather(c: &Chain, data: &ChainData, buf: &mut ChainBuf) -> u64 {
    let d = c.dim;
    let ChainBuf {
        ranks,
        staging,
        gathered,
        ..
    } = buf;
    gathered.clear();
    let mut hits = 0u64;
    let mut next = 0usize;
    bags(c, ranks.len(), |_, j, l, n| {
        let cf = &c.fields[j];
        for &r in &ranks[l..l + n] {
            let r = u64::from(r);
            if r < cf.k {
                hits += 1;
                let at = (cf.dev_base + r as usize) * d;
                gathered.extend_from_slice(&data.dev[at..at + d]);
            } else {
                gathered.extend_from_slice(&staging[next..next + d]);
                next += d;
            }
        }
    });
    hits
}

/// A dynamically cached chain's lookups through its caches, in order (the decisions of
/// [`trainlab_models::cache::RowCache`]): a hit reads its device row (or the staging row of a row admitted earlier
/// in this micro-batch, not yet on the device), a miss copies its host row into the staging buffer and, admitted,
/// takes a slot whose evicted row is written back to the host table if it was updated. Device rows are written only
/// by [`admit`], after the gather, so every hit reads what its row held when it was looked up. Returns the misses.
fn cache_lookups(c: &Chain, data: &mut ChainData, buf: &mut ChainBuf) -> usize {
    let d = c.dim;
    let ChainData {
        host,
        dev,
        caches,
        dirty,
    } = data;
    let ChainBuf {
        ranks,
        src,
        installs,
        hits,
        staging,
        ..
    } = buf;
    src.clear();
    staging.clear();
    installs.clear();
    *hits = 0;
    // device row -> staging row of the rows admitted in this micro-batch
    let mut pending: RankMap<u32> = RankMap::with_hasher(RankHash);
    let mut misses = 0usize;
    bags(c, ranks.len(), |_, j, l, n| {
        let cf = &c.fields[j];
        for &r in &ranks[l..l + n] {
            let r = u64::from(r);
            match caches[j].access(r) {
                Access::Hit { slot } => {
                    *hits += 1;
                    let row = (cf.dev_base + slot as usize) as u64;
                    src.push(pending.get(&row).map_or(row as u32, |&i| STAGED | i));
                }
                Access::Miss { slot, evicted } => {
                    misses += 1;
                    let i = (staging.len() / d) as u32;
                    let h = cf.base + ((r * cf.mult) % cf.rows) as usize;
                    staging.extend_from_slice(&host[h * d..(h + 1) * d]);
                    src.push(STAGED | i);
                    if let Some(slot) = slot {
                        let row = cf.dev_base + slot as usize;
                        if let Some(old) = evicted
                            && pending.remove(&(row as u64)).is_none()
                            && dirty[row]
                        {
                            let o = cf.base + ((old * cf.mult) % cf.rows) as usize;
                            host[o * d..(o + 1) * d].copy_from_slice(&dev[row * d..(row + 1) * d]);
                        }
                        dirty[row] = false;
                        pending.insert(row as u64, i);
                    }
                }
            }
        }
    });
    installs.extend(pending.into_iter().map(|(row, i)| (row as u32, i)));
    misses
}

/// Every lookup's row as [`cache_lookups`] placed it (device row, or staging row) into `gathered`.
fn gather_cached(c: &Chain, data: &ChainData, buf: &mut ChainBuf) {
    let d = c.dim;
    let ChainBuf {
        src, staging, gathered, ..
    } = buf;
    gathered.clear();
    for &at in src.iter() {
        let row = (at & !STAGED) as usize;
        if at & STAGED != 0 {
            gathered.extend_from_slice(&staging[row * d..(row + 1) * d]);
        } else {
            gathered.extend_from_slice(&data.dev[row * d..(row + 1) * d]);
        }
    }
}

/// The rows admitted in this micro-batch, staging -> device table.
fn admit(c: &Chain, data: &mut ChainData, buf: &ChainBuf) {
    let d = c.dim;
    for &(row, i) in &buf.installs {
        let (row, i) = (row as usize, i as usize);
        data.dev[row * d..(row + 1) * d].copy_from_slice(&buf.staging[i * d..(i + 1) * d]);
    }
}

/// Sum (or mean) of each bag's gathered rows: `pooled[(field in chain, sample)]`.
fn pool(c: &Chain, buf: &mut ChainBuf) {
    let d = c.dim;
    let ChainBuf {
        ranks,
        gathered,
        pooled,
        ..
    } = buf;
    pooled.clear();
    bags(c, ranks.len(), |_, j, l, n| {
        let at = pooled.len();
        pooled.extend_from_slice(&gathered[l * d..(l + 1) * d]);
        for q in l + 1..l + n {
            for (p, g) in pooled[at..].iter_mut().zip(&gathered[q * d..(q + 1) * d]) {
                *p += *g;
            }
        }
        if c.fields[j].mean {
            let inv = 1.0 / n as f32;
            pooled[at..].iter_mut().for_each(|p| *p *= inv);
        }
    });
}

/// Each lookup's gradient row from the MLP input gradient `dx` (`b x K0`).
fn pool_grad(c: &Chain, buf: &mut ChainBuf, dx: &[f32], k0: usize) {
    let d = c.dim;
    let ChainBuf { ranks, grads, .. } = buf;
    grads.clear();
    bags(c, ranks.len(), |i, j, _, n| {
        let cf = &c.fields[j];
        let row = &dx[i * k0 + cf.x_off..i * k0 + cf.x_off + d];
        let scale = if cf.mean { 1.0 / n as f32 } else { 1.0 };
        for _ in 0..n {
            grads.extend(row.iter().map(|g| g * scale));
        }
    });
}

/// SGD row update of every lookup: `row -= lr grad`, on the device row for a cached rank, else the host row.
fn scatter(c: &mut Chain, buf: &ChainBuf) {
    let d = c.dim;
    let dynamic = c.dynamic;
    let Chain { fields, data, .. } = c;
    let ChainData {
        host,
        dev,
        caches,
        dirty,
    } = data.get_mut().unwrap_or_else(|e| e.into_inner());
    let per_sample: usize = fields.iter().map(|cf| cf.ids).sum();
    let b = buf.ranks.len() / per_sample.max(1);
    let mut l = 0usize;
    for (j, cf) in fields.iter().enumerate() {
        for _ in 0..b * cf.ids {
            {
                let r = u64::from(buf.ranks[l]);
                let slot = if dynamic {
                    caches[j].slot(r)
                } else {
                    (r < cf.k).then_some(r as u32)
                };
                let dst = if let Some(slot) = slot {
                    let row = cf.dev_base + slot as usize;
                    dirty[row] = true;
                    &mut dev[row * d..(row + 1) * d]
                } else {
                    let row = cf.base + ((r * cf.mult) % cf.rows) as usize;
                    &mut host[row * d..(row + 1) * d]
                };
                for (x, g) in dst.iter_mut().zip(&buf.grads[l * d..(l + 1) * d]) {
                    *x -= LR * g;
                }
                l += 1;
            }
        }
    }
}

fn bwd_chains(chains: &[Chain], bufs: &mut [ChainBuf], _b: usize, dx: &[f32], k0: usize, ctx: &OpCtx<'_>) {
    for (c, buf) in chains.iter().zip(bufs.iter_mut()) {
        ctx.busy.time(EMB, || pool_grad(c, buf, dx, k0));
        ctx.ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// The MLP of one micro-batch: concat, forward, loss gradient, backward (weight gradients accumulate); leaves the
/// input gradient in `mb.dx`.
fn mlp_step(mlp: &mut Mlp, chains: &[Chain], mb: &mut MicroBatch, k0: usize, ctx: &OpCtx<'_>) -> Result<(), Error> {
    let b = mb.b;
    let layers = mlp.w.len();
    let op = |f: &mut dyn FnMut() -> Result<(), Error>| -> Result<(), Error> {
        ctx.ops.fetch_add(1, Ordering::Relaxed);
        ctx.busy.time(MLP, f)
    };
    op(&mut || {
        mlp.x.clear();
        mlp.x.resize(b * k0, 0.0);
        for (c, buf) in chains.iter().zip(&mb.chains) {
            let d = c.dim;
            for (j, cf) in c.fields.iter().enumerate() {
                for i in 0..b {
                    let src = &buf.pooled[(j * b + i) * d..(j * b + i + 1) * d];
                    mlp.x[i * k0 + cf.x_off..i * k0 + cf.x_off + d].copy_from_slice(src);
                }
            }
        }
        Ok(())
    })?;
    for l in 0..layers {
        let (k, n) = (mlp.widths[l], mlp.widths[l + 1]);
        let input: &[f32] = if l == 0 { &mlp.x } else { &mlp.h[l - 1] };
        let z = &mut mlp.z[l];
        z.clear();
        z.resize(b * n, 0.0);
        let wl = &mlp.w[l];
        op(&mut || {
            gemm(
                b,
                n,
                k,
                MatRef::row_major(input, k),
                MatRef::row_major(wl, n),
                z,
                false,
                1,
            )
        })?;
        let (z, h) = (&mlp.z[l], &mut mlp.h[l]);
        let last = l + 1 == layers;
        op(&mut || {
            h.clear();
            h.extend(z.iter().map(|&v| if last || v > 0.0 { v } else { 0.0 }));
            Ok(())
        })?;
    }
    let out = &mlp.h[layers - 1];
    let n_last = mlp.widths[layers];
    let dh = &mut mlp.dh;
    let target = &mb.target;
    op(&mut || {
        dh.clear();
        let inv = 1.0 / b as f32;
        dh.extend(
            out.iter()
                .enumerate()
                .map(|(i, &y)| (y - target[(i / n_last) % target.len()]) * inv),
        );
        Ok(())
    })?;
    for l in (0..layers).rev() {
        let (k, n) = (mlp.widths[l], mlp.widths[l + 1]);
        let last = l + 1 == layers;
        let (z, dh, dz) = (&mlp.z[l], &mlp.dh, &mut mlp.dz);
        op(&mut || {
            dz.clear();
            dz.extend(z.iter().zip(dh).map(|(&zv, &g)| if last || zv > 0.0 { g } else { 0.0 }));
            Ok(())
        })?;
        let (dz, wl) = (&mlp.dz, &mlp.w[l]);
        let dprev = if l == 0 { &mut mb.dx } else { &mut mlp.dh };
        op(&mut || {
            dprev.clear();
            dprev.resize(b * k, 0.0);
            gemm(
                b,
                k,
                n,
                MatRef::row_major(dz, n),
                MatRef::transposed(wl, n),
                dprev,
                false,
                1,
            )
        })?;
        let input: &[f32] = if l == 0 { &mlp.x } else { &mlp.h[l - 1] };
        let gw = &mut mlp.gw[l];
        op(&mut || {
            gemm(
                k,
                n,
                b,
                MatRef::transposed(input, k),
                MatRef::row_major(dz, n),
                gw,
                true,
                1,
            )
        })?;
    }
    Ok(())
}

/// The measured `cpu` backend (see the [module docs](self)).
#[derive(Debug, Clone, Copy)]
pub struct RecsysCpu {
    /// Untimed warm-up steps.
    pub warmup: usize,
    /// Timed steps (the median is reported).
    pub repeats: usize,
    /// Worker threads of the streams (0: all cores).
    pub threads: usize,
}

impl Default for RecsysCpu {
    fn default() -> Self {
        RecsysCpu {
            warmup: 2,
            repeats: 7,
            threads: 0,
        }
    }
}

/// A measured step: median step time with dedicated cores and the least per-stage busy times, with what ran.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Median step seconds with dedicated cores ([`StepTimes::dedicated_s`]).
    pub step_s: f64,
    /// Least step seconds with dedicated cores (the fastest timed step: what the step costs when no other process
    /// slows it through the shared caches or the hypervisor; the calibration's statistic).
    pub step_min_s: f64,
    /// Least (over the timed steps) busy seconds of copy, embedding and MLP ops.
    pub busy_s: [f64; 3],
    /// Relative spread of the step samples.
    pub rel_spread: f64,
    /// What ran, as counted by the CPU op model (real misses).
    pub counts: CpuCounts,
    /// Ops run per step (copies included), counted by the executor.
    pub ops: u64,
    /// Copies per step.
    pub copies: u64,
    /// Hits counted by the gathers / lookups.
    pub hit_rate: f64,
    /// Worker threads.
    pub threads: usize,
}

/// Builds and times the step of `w`: `warmup` untimed steps, then `repeats` timed ones (medians).
pub fn measure(
    w: &RecsysStep,
    seed: Seed,
    warmup: usize,
    repeats: usize,
    threads: usize,
    cancel: &AtomicBool,
) -> Result<Measured, Error> {
    let mut st = CpuStep::new(w, seed, threads)?;
    let mut last = StepTimes::default();
    for _ in 0..warmup {
        last = st.step(cancel)?;
    }
    let mut busy: [Vec<f64>; 3] = Default::default();
    let opts = TimingOpts {
        warmup: 0,
        min_samples: repeats.max(1),
        max_samples: repeats.max(1),
        min_time_s: 0.0,
        target_sample_s: 0.0,
    };
    let timing = time_samples(&opts, || {
        last = st.step(cancel)?;
        for (v, x) in busy.iter_mut().zip(last.busy_s) {
            v.push(x);
        }
        Ok(last.dedicated_s)
    })?;
    // Per stage the least busy step: a preemption lands in whichever op is running and only adds to its stage.
    let least = |v: &[f64]| Summary::of(v).min;
    Ok(Measured {
        step_s: timing.median_s(),
        step_min_s: timing.summary.min,
        busy_s: [least(&busy[0]), least(&busy[1]), least(&busy[2])],
        rel_spread: timing.rel_spread(),
        counts: st.counts,
        ops: last.ops,
        copies: last.copies,
        hit_rate: if last.lookups > 0 {
            last.hits as f64 / last.lookups as f64
        } else {
            0.0
        },
        threads: st.threads(),
    })
}

/// The outcome of a measured step of `w`.
pub fn outcome(w: &RecsysStep, m: &Measured) -> RecsysOutcome {
    let t = m.step_s;
    RecsysOutcome {
        step_time_s: t,
        kernels: m.ops - m.copies,
        sm_busy: (m.busy_s.iter().sum::<f64>() / (t * m.threads as f64)).min(1.0),
        hbm_util: m.counts.bytes() / (t * w.cluster.gpu.hbm_bandwidth_bytes_per_s),
        pcie_util: (m.busy_s[COPY] / t).min(1.0),
        cache_hit_rate: m.hit_rate,
        stage_embedding_s: m.busy_s[EMB],
        stage_mlp_s: m.busy_s[MLP],
        stage_copy_s: m.busy_s[COPY],
        stage_launch_s: 0.0,
        batch: w.batch,
    }
}

impl Backend<RecsysStep> for RecsysCpu {
    fn name(&self) -> &str {
        "cpu"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Measured
    }
    fn run(&mut self, w: &RecsysStep, ctx: &mut RunCtx) -> Result<RecsysOutcome, Error> {
        w.validate()?;
        let m = measure(
            w,
            ctx.seed.derive("recsys_cpu"),
            self.warmup,
            self.repeats,
            self.threads,
            &ctx.cancel,
        )?;
        Ok(outcome(w, &m))
    }
}
