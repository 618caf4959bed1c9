//! Kernel-level discrete-event simulation of one recommender training step on one GPU (`recsys_step`, backend
//! `kernel_des`; PICASSO: arXiv 2204.04903), and a cache simulator over seeded Zipf id streams.
//!
//! # What is simulated
//! The op plan of [`trainlab_models::recsys::plan`] (same ops, bytes and isolated times as the closed form) is
//! replayed on [`Engine`] in integer picoseconds:
//! - **Host launch queue.** One host thread launches the ops in program order, `launch_us` each. With one stream
//!   it is synchronous (it launches the next op when the previous one has finished); with `S >= 2` streams it
//!   launches ahead, and each op waits on its stream.
//! - **Streams.** Each stream runs its ops in launch order, one at a time; an op also waits for the ops it depends on
//!   on other streams (the joins of the plan: the MLP of a micro-batch waits for all its embedding chains, the
//!   backward chains for the MLP, the optimizer for every micro-batch), as `cudaStreamWaitEvent` does.
//! - **Copy engine.** PCIe copies run one at a time, in launch order, on their own engine.
//! - **Sharing the GPU.** Running kernels (at most one per stream) share the SMs' block slots and the HBM bandwidth.
//!   Kernel `k` alone takes `t_k`, occupies a share `s_k` of the block slots (CUDA occupancy rules) and a share
//!   `u_k = bytes_k / (t_k bw)` of the bandwidth. Together they all progress at the common rate
//!   `r = min(1, 1 / Σ s_k, 1 / Σ u_k)` of their isolated speed (a fluid model: a kernel that fits beside another
//!   runs at full speed, which is how a gather beside a GEMM overlaps; two bandwidth-bound kernels share HBM).
//!   Rates change only when a kernel starts or ends; the one pending completion is cancelled and rescheduled then.
//!
//! # Invariants
//! With one stream and one micro-batch nothing overlaps, so the step time equals the closed form's sum (tested).
//! Every op runs exactly once, after its launch, its stream predecessor and its dependencies.
//!
//! # Cache simulator ([`simulate_hit_rate`])
//! A seeded stream of Zipf(`s`) ranks over a table's rows (`rand_distr::Zipf`, rejection-inversion), played through a
//! cache of `k` rows: `static_topk` (rows of rank `<= k`), `lru` (evict the least recently used) or `lfu` (evict the
//! least frequently used of the cached rows, ties to the least recent): the state machine of
//! [`trainlab_models::cache::RowCache`], which the measured CPU step runs too. The first quarter of the stream warms
//! the cache and is not counted.
use std::collections::VecDeque;

use rand_distr::{Distribution, Zipf};
use trainlab_core::seed::Rng;
use trainlab_core::workloads::recsys::{CachePolicy, RecsysOutcome, RecsysStep};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, Seed, SimTime, Workload};
use trainlab_models::cache::RowCache;
use trainlab_models::recsys::{Plan, Stage, plan};

use crate::engine::{Engine, EventId};

/// Simulated time ticks per second (picoseconds).
const TICKS: f64 = 1e12;

fn ticks(s: f64) -> u64 {
    (s * TICKS).round() as u64
}

/// Hit rate of a cache of `k` of `rows` rows under `policy`, over `ids` Zipf(`s`) draws (the first quarter warms
/// the cache).
pub fn simulate_hit_rate(rows: u64, k: u64, s: f64, policy: CachePolicy, ids: u64, rng: &mut Rng) -> f64 {
    if k == 0 {
        return 0.0;
    }
    if k >= rows {
        return 1.0;
    }
    let zipf = Zipf::new(rows as f64, s).expect("validated: rows >= 1, s >= 0");
    play(ids, k, policy, ids / 4, || zipf.sample(rng) as u64)
}

/// Hit rate of a cache of `k` rows under `policy` over a given stream of 1-based ranks (rank `r` is the `r`-th most
/// popular row), the first `warm` accesses not counted: the cache simulator on a measured or replayed id stream
/// (the measured `cpu` backend's ids, for instance).
pub fn hit_rate_of(ranks: &[u64], k: u64, policy: CachePolicy, warm: usize) -> f64 {
    if k == 0 {
        return 0.0;
    }
    let mut it = ranks.iter().copied();
    play(ranks.len() as u64, k, policy, warm as u64, || it.next().unwrap_or(0))
}

fn play(ids: u64, k: u64, policy: CachePolicy, warm: u64, mut draw: impl FnMut() -> u64) -> f64 {
    let mut hits = 0u64;
    let mut counted = 0u64;
    // the one replacement state machine, shared with the measured CPU step (0-based ranks)
    let mut cache = RowCache::new(policy, k);
    for i in 0..ids {
        let hit = cache.access(draw().saturating_sub(1)).is_hit();
        if i >= warm {
            counted += 1;
            hits += u64::from(hit);
        }
    }
    if counted == 0 {
        0.0
    } else {
        hits as f64 / counted as f64
    }
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    /// The host finished launching op `i`.
    Launched(u32),
    /// Copy `i` finished.
    CopyDone(u32),
    /// Kernel `i` is due to finish at the current rate.
    KernelDone(u32),
}

struct Running {
    op: u32,
    /// Remaining isolated seconds.
    left: f64,
    share: f64,
    bw: f64,
}

/// Integrals and end time of one simulated step.
#[derive(Debug, Clone, Copy, Default)]
pub struct Replay {
    /// Step time, seconds.
    pub step_s: f64,
    /// `∫ min(1, r Σ s_k) dt`, seconds.
    pub sm_time: f64,
    /// Busy time of the embedding, MLP and copy stages, seconds.
    pub busy: [f64; 3],
    /// Events delivered.
    pub events: u64,
}

fn stage_index(s: Stage) -> usize {
    match s {
        Stage::Embedding => 0,
        Stage::Mlp => 1,
        Stage::Copy => 2,
    }
}

struct Des<'a> {
    p: &'a Plan,
    sync: bool,
    eng: Engine<Ev>,
    preds: Vec<u32>,
    succ_start: Vec<usize>,
    succ: Vec<u32>,
    queues: Vec<VecDeque<u32>>,
    busy_q: Vec<bool>,
    running: Vec<Running>,
    pending: Option<EventId>,
    rate: f64,
    last: u64,
    stage_running: [u32; 3],
    out: Replay,
}

impl Des<'_> {
    /// The queue of op `i`: its stream, or the copy engine (the last queue).
    fn queue(&self, i: u32) -> usize {
        let o = &self.p.ops[i as usize];
        if o.stage == Stage::Copy {
            self.queues.len() - 1
        } else if self.sync {
            0
        } else {
            o.stream as usize
        }
    }

    /// Accounts the time since the last change and moves the running kernels on.
    fn advance(&mut self) {
        let now = self.eng.now().0;
        let dt = (now - self.last) as f64 / TICKS;
        if dt > 0.0 {
            let sum_s: f64 = self.running.iter().map(|r| r.share).sum();
            self.out.sm_time += dt * (self.rate * sum_s).min(1.0);
            for (k, n) in self.stage_running.iter().enumerate() {
                if *n > 0 {
                    self.out.busy[k] += dt;
                }
            }
            for r in &mut self.running {
                r.left -= dt * self.rate;
            }
        }
        self.last = now;
    }

    /// Recomputes the common rate and reschedules the next kernel completion.
    fn reschedule(&mut self) {
        if let Some(id) = self.pending.take() {
            self.eng.cancel(id);
        }
        let sum_s: f64 = self.running.iter().map(|r| r.share).sum();
        let sum_u: f64 = self.running.iter().map(|r| r.bw).sum();
        self.rate = 1.0f64.min(1.0 / sum_s.max(1e-300)).min(1.0 / sum_u.max(1e-300));
        if let Some(next) = self
            .running
            .iter()
            .min_by(|a, b| a.left.total_cmp(&b.left).then(a.op.cmp(&b.op)))
        {
            let dt = ticks(next.left.max(0.0) / self.rate);
            let op = next.op;
            self.pending = Some(self.eng.schedule_in(SimTime(dt), Ev::KernelDone(op)));
        }
    }

    fn try_start(&mut self, q: usize) {
        if self.busy_q[q] {
            return;
        }
        let Some(&i) = self.queues[q].front() else { return };
        if self.preds[i as usize] > 0 {
            return;
        }
        self.busy_q[q] = true;
        let o = self.p.ops[i as usize];
        self.advance();
        self.stage_running[stage_index(o.stage)] += 1;
        if o.stage == Stage::Copy {
            self.eng.schedule_in(SimTime(ticks(o.time_s)), Ev::CopyDone(i));
        } else {
            let bw = if o.time_s > 0.0 {
                o.hbm_bytes / (o.time_s * self.p.hbm_bw)
            } else {
                0.0
            };
            self.running.push(Running {
                op: i,
                left: o.time_s,
                share: o.sm_share,
                bw,
            });
            self.reschedule();
        }
    }

    fn finish(&mut self, i: u32) {
        let q = self.queue(i);
        debug_assert_eq!(self.queues[q].front(), Some(&i));
        self.queues[q].pop_front();
        self.busy_q[q] = false;
        let (a, b) = (self.succ_start[i as usize], self.succ_start[i as usize + 1]);
        for k in a..b {
            let j = self.succ[k];
            self.preds[j as usize] -= 1;
            if self.preds[j as usize] == 0 {
                let qj = self.queue(j);
                self.try_start(qj);
            }
        }
        self.try_start(q);
        if self.sync && (i as usize) + 1 < self.p.ops.len() {
            self.eng
                .schedule_in(SimTime(ticks(self.p.launch_s)), Ev::Launched(i + 1));
        }
    }
}

/// Replays `p` (ops of a workload with `streams` streams) on the event engine.
pub fn replay(p: &Plan, streams: u32) -> Replay {
    let n = p.ops.len();
    let sync = streams <= 1;
    let crate::dag::Dag {
        pending: preds,
        start: deg,
        succ,
    } = crate::dag::Dag::new(n, &p.edges);
    let nq = streams.max(1) as usize + 1;
    let mut d = Des {
        p,
        sync,
        eng: Engine::with_capacity(64),
        preds,
        succ_start: deg,
        succ,
        queues: vec![VecDeque::new(); nq],
        busy_q: vec![false; nq],
        running: Vec::new(),
        pending: None,
        rate: 1.0,
        last: 0,
        stage_running: [0; 3],
        out: Replay::default(),
    };
    if n > 0 {
        d.eng.schedule_at(SimTime(ticks(p.launch_s)), Ev::Launched(0));
    }
    while let Some((_, ev)) = d.eng.step() {
        match ev {
            Ev::Launched(i) => {
                let q = d.queue(i);
                d.queues[q].push_back(i);
                d.try_start(q);
                if !d.sync && (i as usize) + 1 < n {
                    d.eng.schedule_in(SimTime(ticks(p.launch_s)), Ev::Launched(i + 1));
                }
            }
            Ev::CopyDone(i) => {
                d.advance();
                d.stage_running[2] -= 1;
                d.finish(i);
            }
            Ev::KernelDone(i) => {
                d.pending = None;
                d.advance();
                let pos = d.running.iter().position(|r| r.op == i).expect("a running kernel");
                d.running.swap_remove(pos);
                d.stage_running[stage_index(p.ops[i as usize].stage)] -= 1;
                d.reschedule();
                d.finish(i);
            }
        }
    }
    d.advance();
    d.out.step_s = d.eng.now().0 as f64 / TICKS;
    d.out.events = d.eng.delivered();
    d.out
}

/// The `kernel_des` backend of `recsys_step` (see the [module docs](self)).
#[derive(Debug, Clone, Copy)]
pub struct RecsysSim {
    /// Ids drawn per field group for the cache simulator.
    pub cache_ids: u64,
}

impl Default for RecsysSim {
    fn default() -> Self {
        RecsysSim { cache_ids: 200_000 }
    }
}

/// Most ids one field group's cache simulation draws.
pub const MAX_CACHE_IDS: u64 = 8 << 20;

/// Ids drawn for a cache of `k` rows: `ids` for a static cache (no warm-up needed); for LRU and LFU at least `8 k`
/// (the first quarter warms the cache, so the counted part is `6 k` accesses, long enough for an LRU cache to
/// turn over), at most [`MAX_CACHE_IDS`]. A cache of more than 1 M rows is therefore measured before it is
/// stationary: a bias the closed form does not have.
pub fn cache_stream_len(policy: CachePolicy, k: u64, ids: u64) -> u64 {
    match policy {
        CachePolicy::StaticTopk => ids,
        CachePolicy::Lru | CachePolicy::Lfu => k.saturating_mul(8).max(ids).min(MAX_CACHE_IDS.max(ids)),
    }
}

/// The simulated hit rate of every field group of `w`, each from its own labelled stream of `seed` (in parallel
/// over groups; each group's stream depends only on its index).
pub fn simulated_hits(w: &RecsysStep, ids: u64, seed: Seed) -> Vec<f64> {
    use rayon::prelude::*;
    w.fields
        .par_iter()
        .enumerate()
        .map(|(g, f)| {
            let mut rng = seed.derive("recsys.cache").index(g as u64).rng();
            let k = w.cached_rows(f.rows);
            let n = cache_stream_len(w.cache.policy, k, ids);
            simulate_hit_rate(f.rows, k, f.zipf_s, w.cache.policy, n, &mut rng)
        })
        .collect()
}

impl Backend<RecsysStep> for RecsysSim {
    fn name(&self) -> &str {
        "kernel_des"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Simulated
    }
    fn run(&mut self, w: &RecsysStep, ctx: &mut RunCtx) -> Result<RecsysOutcome, Error> {
        w.validate()?;
        if w.on_cpu_device() {
            return Err(Error::Unsupported(
                "the kernel-level simulator models a GPU; a step on the cpu device is answered by `analytical` (the \
                 CPU op model) and `cpu`"
                    .into(),
            ));
        }
        let hits = simulated_hits(w, self.cache_ids, ctx.seed);
        let p = plan(w, &hits);
        let r = replay(&p, w.streams as u32);
        let t = r.step_s;
        let (hbm, pcie): (f64, f64) = p
            .ops
            .iter()
            .fold((0.0, 0.0), |(h, c), o| (h + o.hbm_bytes, c + o.pcie_bytes));
        Ok(RecsysOutcome {
            step_time_s: t,
            kernels: p.kernels(),
            sm_busy: (r.sm_time / t).min(1.0),
            hbm_util: hbm / (t * p.hbm_bw),
            pcie_util: pcie / (t * p.pcie_bw),
            cache_hit_rate: if p.lookups > 0.0 { p.hits / p.lookups } else { 0.0 },
            stage_embedding_s: r.busy[0],
            stage_mlp_s: r.busy[1],
            stage_copy_s: r.busy[2],
            stage_launch_s: p.ops.len() as f64 * p.launch_s,
            batch: w.batch,
        })
    }
}
