//! Discrete-event simulation of a training job under component failures, with baseline or C4D detection
//! (the simulated backend of [`TrainingJob`]).
//!
//! One replication runs the job over its horizon as a discrete-event simulation:
//! - **Faults** arrive per component: exponential entries as one superposed Poisson stream (memoryless, so the
//!   stream is resampled whenever the rate changes, e.g. when a lemon node leaves), Weibull entries from a heap of
//!   per-component lifetimes renewed at replacement. Rates are per component-hour of wall-clock time.
//! - **Up state**: segments of `tau` compute seconds then a `delta`-second checkpoint; a slow fault stretches compute
//!   by its slowdown until the straggler is detected, localised, checkpointed and isolated.
//! - **Interruptions** (fail-stop, hang) lose the work since the last checkpoint and start a down episode with the
//!   C4D timeline: detect, localise, isolate (swap in a spare, waiting for a repair when the pool is empty),
//!   restart. A fault during a down episode starts its own phases afresh.
//! - **Detection** under `c4d` runs the shared [`Detector`] on timestamps synthesised for a sample of ranks (the
//!   culprit among [`SAMPLE_RANKS`] - 1 healthy ones, with per-rank compute jitter): the hang threshold, the
//!   straggler window and the localisation come out of the detector, not from a constant. A wrong culprit falls back
//!   to manual localisation. Simulating all 16k ranks per step would cost 10^4x more and tell the detector nothing
//!   new: its rules compare each rank with the median, which a sample estimates. A straggler is diagnosed on
//!   `window + 2` healthy steps then slowed steps until the detector fires; a hang on [`HANG_HISTORY_STEPS`]
//!   healthy step(s) then the hung collective (the hang rules read only the last collective each rank entered, the
//!   chunk counters and the time since the last completion).
//!
//! Events: every segment's compute end and checkpoint end, every fault, every phase end, straggler detection and
//! repair is an event delivered in time order (`RepResult::events` counts them all: about 12,000 per Llama 3
//! replication under baseline, 20,600 under c4d). The two processes with at most one pending event each, the job's
//! own timer (segments, checkpoints, down phases) and the superposed exponential fault stream, are held in two
//! slots beside an [`Engine`] heap that holds the rest (straggler detections, repairs, Weibull lifetimes); at full
//! speed the segment events up to the next other event are an arithmetic sequence of integer times and are delivered
//! at once: counted, with the checkpoints they complete, leaving the state that delivering them one by one leaves
//! (bit-identical results; routine checkpoints are counted and summed at the end either way).
//!
//! A scheduled job (a `workload.schedule` instead of failure rates) is answered by a Monte Carlo replay of its
//! timeline instead ([`replay`], module `scheduled`), with the same detector probe for localisation.
//!
//! Accounting: every wall-clock second is either useful compute or one of the phases, so
//! `ETTR = 1 - sum(phases) / horizon` exactly. Replications run in parallel (rayon) with seeds
//! `seed.derive("failures").derive(policy).index(i)`; results are collected in order, so the output is the same at
//! any thread count.
mod probe;
mod scheduled;

pub use scheduled::{replay, replay_once, replay_seed};
pub use trainlab_core::detector::{Detector, DetectorConfig, HangKind, Verdict};

use probe::Probe;

use crate::engine::{Engine, EventId, exp_sample};
use rand::RngExt;
use rayon::prelude::*;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use trainlab_core::seed::Rng;
use trainlab_core::workloads::training_job::{
    Estimate, FaultClass, FaultKind, Phase, Policy, PolicyOutcome, TrainingJob, TrainingJobOutcome,
};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, Seed, SimTime, Workload};
use trainlab_models::reliability::{FaultCost, FaultTiming, fault_cost};

/// Ranks whose timestamps the simulated C4D detector sees per diagnosis (the culprit and a random sample).
pub const SAMPLE_RANKS: usize = 16;

/// Healthy steps the C4D detector sees before a hung collective (see `Sim::run_hang_detector`).
pub const HANG_HISTORY_STEPS: u64 = 1;

/// Everything one replication measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RepResult {
    /// Useful training time / wall time.
    pub ettr: f64,
    /// Seconds per phase, [`Phase::ALL`] order.
    pub phase_s: [f64; 6],
    /// Seconds of downtime (excluding routine checkpointing) per class, [`FaultClass::ALL`] order.
    pub class_s: Vec<f64>,
    /// Interruptions per class, [`FaultClass::ALL`] order.
    pub interruptions: Vec<u64>,
    /// Faults that arrived per failure entry (interrupting or not), in `workload.failures` order.
    pub faults_per_entry: Vec<u64>,
    /// Sum and count of detection latencies (seconds).
    pub detect_sum_s: f64,
    /// Number of detections.
    pub detect_n: u64,
    /// Diagnoses by the detector, and how many named the right rank.
    pub diagnosed: u64,
    /// Correct diagnoses.
    pub correct: u64,
    /// Events delivered (from the engine's heap and the job and fault-stream slots beside it; see the module docs).
    pub events: u64,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Weibull(u16),
    Slow,
    Repair,
}

#[derive(Debug, Clone)]
struct EntryRt {
    class: FaultClass,
    class_idx: usize,
    kind: FaultKind,
    slowdown: f64,
    replace: bool,
    rate_s: f64,
    comps: u64,
    lemon_per_node: u64,
    lemon_mult: f64,
    weibull: Option<(f64, f64)>,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Computing,
    Checkpointing {
        start: f64,
    },
    Down {
        phase: Phase,
        since: f64,
        cls: usize,
        waiting: bool,
    },
}

struct SlowEp {
    cls: usize,
    phase: Phase,
    speed: f64,
    localise_s: f64,
}

struct Sim<'a> {
    job: &'a TrainingJob,
    policy: Policy,
    tau: f64,
    delta: f64,
    /// `tau` and `delta` as [`SimTime`] ns: the segment timer's steps at full speed.
    tau_t: u64,
    delta_t: u64,
    /// Whether [`Sim::run_timer`] may take its fast path (always, except in the test that checks it is exact).
    fast_timer: bool,
    entries: Vec<EntryRt>,
    rng: Rng,
    det_rng: Rng,
    mode: Mode,
    work_left: f64,
    last_update: f64,
    speed: f64,
    slow: Option<SlowEp>,
    cost: FaultCost,
    uncommitted: f64,
    pending_swaps: u64,
    spares_free: Option<u64>,
    lemon_left: u64,
    /// The next arrival of the superposed exponential fault stream (ns); always one pending while its rate is
    /// positive. Kept beside the engine's heap like `job_at`.
    fault_at: Option<u64>,
    /// The job's own timer, at most one pending, its meaning given by `mode`: the end of a segment's compute
    /// (`Computing`), of the routine checkpoint (`Checkpointing`), or of the current down phase (`Down`, unless
    /// waiting for a spare). It lives beside the engine's heap, not in it (see [`Sim::run`]).
    job_at: Option<u64>,
    /// Routine checkpoints completed (each `delta` seconds of the checkpointing phase, added at the end).
    ckpts: u64,
    /// Events delivered from `job_at` and `fault_at` (counted into [`RepResult::events`] with the engine's).
    own_events: u64,
    /// The current time in ns (the last event delivered, heap or timer).
    now_t: u64,
    slow_ev: Option<EventId>,
    last_slow_correct: bool,
    rates: Vec<f64>,
    total_rate: f64,
    probe: Probe,
    r: RepResult,
}

/// Seconds to [`SimTime`], rounded to the nearest ns, non-positive and NaN to zero, saturating: what
/// `SimTime::from_secs_f64` does, without the libm `round` call (the float-to-int cast saturates by itself).
#[inline]
fn s2t(s: f64) -> SimTime {
    if s > 0.0 {
        SimTime((s * 1e9 + 0.5) as u64)
    } else {
        SimTime(0)
    }
}

/// Standard normal variate (the ziggurat sampler of `rand_distr`: exact, and without the logarithm and cosine of
/// Box-Muller in the common case).
#[inline]
fn normal(rng: &mut Rng) -> f64 {
    use rand_distr::Distribution;
    rand_distr::StandardNormal.sample(rng)
}

impl<'a> Sim<'a> {
    fn new(job: &'a TrainingJob, policy: Policy, seed: Seed) -> Self {
        let tau = trainlab_models::reliability::checkpoint_interval_s(job);
        let lemon = job.lemon.clone();
        let entries = job
            .failures
            .iter()
            .map(|f| {
                let scope = f.scope();
                let comps = job.components(scope);
                let nodes = job.nodes().max(1);
                let lemon_per_node = match (&lemon, scope) {
                    (Some(_), trainlab_core::workloads::training_job::Scope::Job) => 0,
                    (Some(_), _) if f.class.needs_replacement() => comps.div_ceil(nodes),
                    _ => 0,
                };
                let rate_s = f.rate_per_component_hour / 3600.0;
                EntryRt {
                    class: f.class,
                    class_idx: FaultClass::ALL.iter().position(|c| *c == f.class).unwrap_or(0),
                    kind: f.kind,
                    slowdown: f.slowdown,
                    replace: f.class.needs_replacement(),
                    rate_s,
                    comps,
                    lemon_per_node,
                    lemon_mult: lemon.as_ref().map_or(1.0, |l| l.rate_multiplier),
                    weibull: f
                        .weibull_shape
                        .filter(|k| (*k - 1.0).abs() > 1e-12 && rate_s > 0.0)
                        .map(|k| {
                            let mean = 1.0 / rate_s;
                            (k, mean / statrs::function::gamma::gamma(1.0 + 1.0 / k))
                        }),
                    heap: BinaryHeap::new(),
                }
            })
            .collect();
        Sim {
            job,
            policy,
            tau,
            delta: job.checkpoint_cost_s,
            tau_t: s2t(tau).0,
            delta_t: s2t(job.checkpoint_cost_s).0,
            fast_timer: true,
            entries,
            rng: seed.derive("faults").rng(),
            det_rng: seed.derive("detector").rng(),
            mode: Mode::Computing,
            work_left: tau,
            last_update: 0.0,
            speed: 1.0,
            slow: None,
            cost: FaultCost {
                detect_s: 0.0,
                localise_s: 0.0,
                isolate_s: 0.0,
                restart_s: 0.0,
            },
            uncommitted: 0.0,
            pending_swaps: 0,
            spares_free: job.spare_nodes,
            lemon_left: job.lemon.as_ref().map_or(0, |l| l.nodes),
            fault_at: None,
            job_at: None,
            own_events: 0,
            ckpts: 0,
            now_t: 0,
            slow_ev: None,
            last_slow_correct: true,
            rates: Vec::new(),
            total_rate: 0.0,
            probe: Probe::new(job, job.gpus, job.step_time_s),
            r: RepResult {
                ettr: 0.0,
                phase_s: [0.0; 6],
                class_s: vec![0.0; FaultClass::ALL.len()],
                interruptions: vec![0; FaultClass::ALL.len()],
                faults_per_entry: vec![0; job.failures.len()],
                detect_sum_s: 0.0,
                detect_n: 0,
                diagnosed: 0,
                correct: 0,
                events: 0,
            },
        }
    }

    /// Current exponential rate of entry `e` (lemon nodes still in the job weigh `lemon_mult`).
    fn exp_rate(&self, e: &EntryRt) -> f64 {
        let lemon_comps = (e.lemon_per_node * self.lemon_left).min(e.comps) as f64;
        e.rate_s * ((e.comps as f64 - lemon_comps) + lemon_comps * e.lemon_mult)
    }

    /// Recomputes the cached per-entry exponential rates (at start, and after a lemon node left).
    fn refresh_rates(&mut self) {
        let rates: Vec<f64> = self
            .entries
            .iter()
            .map(|e| if e.weibull.is_none() { self.exp_rate(e) } else { 0.0 })
            .collect();
        self.total_rate = rates.iter().sum();
        self.rates = rates;
    }

    fn total_exp_rate(&self) -> f64 {
        self.total_rate
    }

    fn schedule_fault(&mut self) {
        self.fault_at = None;
        let rate = self.total_exp_rate();
        if rate > 0.0 {
            let dt = exp_sample(&mut self.rng, rate);
            self.fault_at = Some(self.at(dt).0);
        }
    }

    fn init_weibull(&mut self, eng: &mut Engine<Ev>) {
        for i in 0..self.entries.len() {
            let Some((k, scale)) = self.entries[i].weibull else {
                continue;
            };
            let n = self.entries[i].comps;
            let mut heap = BinaryHeap::with_capacity(n as usize);
            for c in 0..n {
                let lemon =
                    c / self.entries[i].lemon_per_node.max(1) < self.lemon_left && self.entries[i].lemon_per_node > 0;
                let sc = if lemon {
                    scale / self.entries[i].lemon_mult.powf(1.0 / k)
                } else {
                    scale
                };
                let u: f64 = self.rng.random();
                let t = sc * (-(1.0 - u).ln()).powf(1.0 / k);
                heap.push(Reverse((s2t(t).0, c as u32)));
            }
            if let Some(Reverse((t, _))) = heap.peek() {
                eng.schedule_at(SimTime(*t), Ev::Weibull(i as u16));
            }
            self.entries[i].heap = heap;
        }
    }

    fn add_phase(&mut self, phase: Phase, cls: usize, dt: f64) {
        if dt > 0.0 {
            self.r.phase_s[phase.index()] += dt;
            if phase != Phase::Checkpointing {
                self.r.class_s[cls] += dt;
            }
        }
    }

    /// Brings the compute accounting up to `now`.
    fn advance(&mut self, now: f64) {
        if self.mode == Mode::Computing {
            let dt = now - self.last_update;
            self.work_left -= dt * self.speed;
            if let Some(ep) = &self.slow {
                let (ph, cls) = (ep.phase, ep.cls);
                self.add_phase(ph, cls, dt * (1.0 - self.speed));
            }
        }
        self.last_update = now;
    }

    fn schedule_work(&mut self) {
        let dt = (self.work_left.max(0.0)) / self.speed;
        self.job_at = Some(self.at(dt).0);
    }

    /// The absolute time `dt` seconds from now.
    #[inline]
    fn at(&self, dt: f64) -> SimTime {
        SimTime(self.now_t.saturating_add(s2t(dt).0))
    }

    fn start_phase(&mut self, now: f64, phase: Phase, cls: usize, dur: f64) {
        self.mode = Mode::Down {
            phase,
            since: now,
            cls,
            waiting: false,
        };
        self.job_at = Some(self.at(dur).0);
    }

    /// Picks the rank of a fault of entry `e` (lemon nodes first in proportion to their weight).
    fn pick_lemon(&mut self, e: usize) -> bool {
        let en = &self.entries[e];
        if en.lemon_per_node == 0 || self.lemon_left == 0 {
            return false;
        }
        let lemon_comps = (en.lemon_per_node * self.lemon_left).min(en.comps) as f64;
        let w = lemon_comps * en.lemon_mult;
        let total = (en.comps as f64 - lemon_comps) + w;
        self.rng.random::<f64>() * total < w
    }

    fn on_fault(&mut self, eng: &mut Engine<Ev>, now: f64, e: usize, lemon: bool) {
        self.r.faults_per_entry[e] += 1;
        let (kind, replace, cls, slowdown, class) = {
            let en = &self.entries[e];
            (en.kind, en.replace, en.class_idx, en.slowdown, en.class)
        };
        if replace {
            self.pending_swaps += 1;
            if lemon {
                self.lemon_left -= 1;
            }
        }
        let down = matches!(self.mode, Mode::Down { .. });
        if kind == FaultKind::Slow && (down || self.slow.is_some()) {
            return; // absorbed: the node is swapped with the restart in progress
        }
        self.advance(now);
        if kind == FaultKind::Slow {
            let detect = self.detect_latency(kind, class, slowdown);
            self.r.detect_sum_s += detect;
            self.r.detect_n += 1;
            let c = fault_cost(self.job, kind, replace, slowdown, self.policy);
            let localise_s = self.localisation(kind, class, c.localise_s);
            self.slow = Some(SlowEp {
                cls,
                phase: Phase::Detect,
                speed: 1.0 / slowdown,
                localise_s,
            });
            self.cost = c;
            if self.mode == Mode::Computing {
                self.speed = 1.0 / slowdown;
                self.schedule_work();
            }
            self.slow_ev = Some(eng.schedule_at(self.at(detect), Ev::Slow));
            return;
        }
        // An interruption.
        self.r.interruptions[cls] += 1;
        match self.mode {
            Mode::Computing => {
                let lost = self.tau - self.work_left;
                self.add_phase(Phase::LostWork, cls, lost);
            }
            Mode::Checkpointing { start } => {
                self.add_phase(Phase::LostWork, cls, self.tau + (now - start));
            }
            Mode::Down {
                phase, since, cls: c0, ..
            } => {
                self.add_phase(phase, c0, now - since);
                if phase == Phase::Checkpointing {
                    self.add_phase(Phase::LostWork, cls, self.uncommitted);
                }
            }
        }
        self.uncommitted = 0.0;
        self.job_at = None;
        if let Some(id) = self.slow_ev.take() {
            eng.cancel(id);
        }
        self.slow = None;
        self.speed = 1.0;
        let mut c = fault_cost(self.job, kind, replace, slowdown, self.policy);
        c.detect_s = self.detect_latency(kind, class, slowdown);
        c.localise_s = self.localisation(kind, class, c.localise_s);
        if !replace && self.pending_swaps > 0 {
            c.isolate_s = fault_cost(self.job, kind, true, slowdown, self.policy).isolate_s;
        }
        self.r.detect_sum_s += c.detect_s;
        self.r.detect_n += 1;
        self.cost = c;
        self.start_phase(now, Phase::Detect, cls, c.detect_s);
    }

    /// Detection latency of one fault: constants for crashes and baseline; the detector's own for C4D.
    fn detect_latency(&mut self, kind: FaultKind, class: FaultClass, slowdown: f64) -> f64 {
        let base = fault_cost(self.job, kind, true, slowdown, self.policy).detect_s;
        if self.policy == Policy::Baseline || kind == FaultKind::FailStop {
            return base;
        }
        let _ = class;
        let d = &self.job.detection;
        let step = self.job.step_time_s;
        match kind {
            FaultKind::Hang => {
                let u: f64 = self.det_rng.random();
                (d.c4d_hang_s(step) - u * step).max(0.0)
            }
            _ => match self.run_slow_detector(slowdown) {
                Some((lat, _)) => lat,
                None => fault_cost(self.job, kind, true, slowdown, Policy::Baseline).detect_s,
            },
        }
    }

    /// Localisation time: C4D's when the detector names the right rank, else manual (baseline).
    fn localisation(&mut self, kind: FaultKind, class: FaultClass, c4d_s: f64) -> f64 {
        if self.policy == Policy::Baseline {
            return c4d_s;
        }
        let right = match kind {
            FaultKind::FailStop => true,
            FaultKind::Hang => self.run_hang_detector(class.is_communication()),
            FaultKind::Slow => self.last_slow_correct,
        };
        self.r.diagnosed += 1;
        if right {
            self.r.correct += 1;
            c4d_s
        } else {
            fault_cost(self.job, kind, true, 1.5, Policy::Baseline).localise_s
        }
    }

    /// Runs the detector on a straggler (a random rank of the sample, striking mid-step). Returns the latency from
    /// the fault and whether it named the right rank.
    fn run_slow_detector(&mut self, slowdown: f64) -> Option<(f64, bool)> {
        let culprit = self.det_rng.random_range(0..self.probe.ranks());
        let out = self.probe.slow(&mut self.det_rng, culprit, slowdown, true);
        self.last_slow_correct = out.is_some_and(|(_, right)| right);
        out
    }

    /// Runs the detector on a hang of a random rank of the sample; true if it named the right rank.
    fn run_hang_detector(&mut self, communication: bool) -> bool {
        let culprit = self.det_rng.random_range(0..self.probe.ranks());
        self.probe.hang(&mut self.det_rng, culprit, communication)
    }

    fn on_phase_end(&mut self, eng: &mut Engine<Ev>, now: f64) {
        self.job_at = None;
        let Mode::Down { phase, since, cls, .. } = self.mode else {
            return;
        };
        self.add_phase(phase, cls, now - since);
        match phase {
            Phase::Detect => self.start_phase(now, Phase::Localise, cls, self.cost.localise_s),
            Phase::Localise | Phase::Checkpointing => {
                if phase == Phase::Checkpointing {
                    self.uncommitted = 0.0;
                }
                self.begin_isolate(eng, now, cls)
            }
            Phase::Isolate => self.start_phase(now, Phase::Restart, cls, self.cost.restart_s),
            Phase::Restart | Phase::LostWork => {
                self.mode = Mode::Computing;
                self.work_left = self.tau;
                self.speed = 1.0;
                self.last_update = now;
                self.schedule_work();
            }
        }
    }

    fn begin_isolate(&mut self, eng: &mut Engine<Ev>, now: f64, cls: usize) {
        let need = self.pending_swaps;
        match self.spares_free {
            Some(free) if free < need => {
                // Take what is free, wait for repairs for the rest.
                for _ in 0..free {
                    eng.schedule_at(self.at(self.job.repair_hours * 3600.0), Ev::Repair);
                }
                self.pending_swaps -= free;
                self.spares_free = Some(0);
                self.mode = Mode::Down {
                    phase: Phase::Isolate,
                    since: now,
                    cls,
                    waiting: true,
                };
            }
            _ => {
                if let Some(free) = self.spares_free.as_mut() {
                    *free -= need;
                    for _ in 0..need {
                        eng.schedule_at(self.at(self.job.repair_hours * 3600.0), Ev::Repair);
                    }
                }
                self.pending_swaps = 0;
                self.start_phase(now, Phase::Isolate, cls, self.cost.isolate_s);
                // start_phase resets `since`; keep it for accounting.
            }
        }
        // A lemon leaving changes the exponential rate (memoryless: resampling the next arrival is exact).
        if self.job.lemon.is_some() {
            self.refresh_rates();
            self.schedule_fault();
        }
    }

    fn on_repair(&mut self, eng: &mut Engine<Ev>) {
        if let Some(free) = self.spares_free.as_mut() {
            *free += 1;
        }
        if let Mode::Down {
            phase: Phase::Isolate,
            since,
            cls,
            waiting: true,
        } = self.mode
            && let Some(free) = self.spares_free
        {
            let take = free.min(self.pending_swaps);
            self.spares_free = Some(free - take);
            self.pending_swaps -= take;
            for _ in 0..take {
                eng.schedule_at(self.at(self.job.repair_hours * 3600.0), Ev::Repair);
            }
            if self.pending_swaps == 0 {
                self.mode = Mode::Down {
                    phase: Phase::Isolate,
                    since,
                    cls,
                    waiting: false,
                };
                self.job_at = Some(self.at(self.cost.isolate_s).0);
            }
        }
    }

    fn on_slow(&mut self, eng: &mut Engine<Ev>, now: f64) {
        self.slow_ev = None;
        self.advance(now);
        let Some(ep) = self.slow.as_mut() else { return };
        if ep.phase == Phase::Detect {
            ep.phase = Phase::Localise;
            let l = ep.localise_s;
            self.slow_ev = Some(eng.schedule_at(self.at(l), Ev::Slow));
            return;
        }
        // Localised: checkpoint now, then isolate and restart. Counts as one interruption.
        let cls = ep.cls;
        self.slow = None;
        self.speed = 1.0;
        self.r.interruptions[cls] += 1;
        // While up, the job timer holds the segment's next event: the checkpoint phase replaces it.
        match self.mode {
            Mode::Computing => {
                self.uncommitted = self.tau - self.work_left;
                self.start_phase(now, Phase::Checkpointing, cls, self.delta);
            }
            Mode::Checkpointing { start } => {
                // The routine checkpoint in progress serves; finish it.
                self.uncommitted = self.tau;
                self.add_phase(Phase::Checkpointing, cls, now - start);
                let left = (self.delta - (now - start)).max(0.0);
                self.start_phase(now, Phase::Checkpointing, cls, left);
            }
            Mode::Down { .. } => {}
        }
    }

    /// Delivers the segment timer's events up to `lim` (ns). With no straggler episode the job computes at full
    /// speed and the timer alternates `tau_t` (compute) and `delta_t` (checkpoint) from its current time, an
    /// arithmetic sequence of integer times; all those due by `lim` are delivered at once: counted, with the
    /// checkpoints they complete, and the state left as [`on_timer`](Self::on_timer) one by one leaves it (the
    /// results are bit-identical, see the `segment_fast_path_is_exact` test). Anything else goes through
    /// `on_timer`.
    fn run_timer(&mut self, lim: u64) {
        let Some(mut tw) = self.job_at else { return };
        if tw > lim {
            return;
        }
        // (A zero-length segment, which would repeat forever, is left to the event-by-event path too.)
        if !self.fast_timer || self.slow.is_some() || self.speed != 1.0 || self.tau_t.saturating_add(self.delta_t) == 0
        {
            while let Some(tw) = self.job_at
                && tw <= lim
            {
                self.on_timer(tw);
            }
            return;
        }
        let mut computing = match self.mode {
            Mode::Computing => true,
            Mode::Checkpointing { .. } => false,
            Mode::Down { .. } => return debug_assert!(false, "segment timer pending while down"),
        };
        let (tau_t, delta_t) = (self.tau_t, self.delta_t);
        let seg_t = tau_t.saturating_add(delta_t);
        let mut n = 0u64;
        let mut last = tw;
        if !computing {
            // The checkpoint in progress ends.
            last = tw;
            n += 1;
            self.ckpts += 1;
            tw = tw.saturating_add(tau_t);
            computing = true;
        }
        // Whole segments: compute ends at `tw + j seg_t` and checkpoint ends `delta_t` after each, for every `j`
        // whose checkpoint end is due by `lim` (integer times, so the count is exact).
        let first_end = tw.saturating_add(delta_t);
        if first_end <= lim {
            let k = (lim - first_end) / seg_t + 1;
            let end = first_end + (k - 1) * seg_t; // <= lim: no overflow
            last = end;
            n += 2 * k;
            self.ckpts += k;
            tw = end.saturating_add(tau_t);
        }
        if tw <= lim {
            // The compute end of the last segment; its checkpoint is in progress at `lim`.
            last = tw;
            n += 1;
            tw = tw.saturating_add(delta_t);
            computing = false;
        }
        self.own_events += n;
        self.now_t = last;
        self.job_at = Some(tw);
        let now = SimTime(last).as_secs_f64();
        self.last_update = now;
        if computing {
            self.mode = Mode::Computing;
            self.work_left = self.tau;
        } else {
            self.mode = Mode::Checkpointing { start: now };
            self.work_left = 0.0;
        }
    }

    /// The segment timer fired at `t` (ns): the compute part of a segment ended (start the routine checkpoint), or
    /// the checkpoint did (start the next segment).
    fn on_timer(&mut self, t: u64) {
        self.job_at = None;
        self.now_t = t;
        self.own_events += 1;
        let now = SimTime(t).as_secs_f64();
        match self.mode {
            Mode::Computing => {
                self.advance(now);
                self.work_left = 0.0;
                self.mode = Mode::Checkpointing { start: now };
                self.job_at = Some(self.at(self.delta).0);
            }
            Mode::Checkpointing { .. } => {
                self.ckpts += 1;
                self.mode = Mode::Computing;
                self.work_left = self.tau;
                self.last_update = now;
                if let Some(ep) = &self.slow {
                    self.speed = ep.speed;
                }
                self.schedule_work();
            }
            // Every transition into a down episode clears the timer.
            Mode::Down { .. } => debug_assert!(false, "segment timer fired while down"),
        }
    }

    /// An arrival of the superposed exponential stream at `t` (ns): picks its entry in proportion to the entries'
    /// rates (and a lemon node in proportion to its weight), then draws the next arrival.
    fn on_exp_fault(&mut self, eng: &mut Engine<Ev>, t: u64) {
        self.fault_at = None;
        self.now_t = t;
        self.own_events += 1;
        let now = SimTime(t).as_secs_f64();
        let total = self.total_exp_rate();
        let mut x = self.rng.random::<f64>() * total;
        let mut pick = None;
        for (i, &r) in self.rates.iter().enumerate() {
            if r <= 0.0 {
                continue;
            }
            pick = Some(i);
            if x < r {
                break;
            }
            x -= r;
        }
        if let Some(i) = pick {
            let lemon = self.pick_lemon(i);
            self.on_fault(eng, now, i, lemon);
        }
        if self.fault_at.is_none() {
            self.schedule_fault();
        }
    }

    fn handle(&mut self, eng: &mut Engine<Ev>, t: SimTime, ev: Ev) {
        self.now_t = t.0;
        let now = t.as_secs_f64();
        match ev {
            Ev::Weibull(i) => {
                let i = i as usize;
                if let Some(Reverse((_, c))) = self.entries[i].heap.pop() {
                    let (k, scale) = self.entries[i].weibull.unwrap_or((1.0, 1.0));
                    let u: f64 = self.rng.random();
                    let life = scale * (-(1.0 - u).ln()).powf(1.0 / k);
                    self.entries[i].heap.push(Reverse((s2t(now + life).0, c)));
                    self.on_fault(eng, now, i, false);
                }
                if let Some(Reverse((tn, _))) = self.entries[i].heap.peek() {
                    eng.schedule_at(SimTime(*tn), Ev::Weibull(i as u16));
                }
            }
            Ev::Slow => self.on_slow(eng, now),
            Ev::Repair => self.on_repair(eng),
        }
    }

    fn run(mut self) -> RepResult {
        let h = self.job.horizon_s();
        let mut eng: Engine<Ev> = Engine::with_capacity(64);
        self.refresh_rates();
        self.init_weibull(&mut eng);
        self.schedule_fault();
        self.schedule_work();
        // The event loop. Two processes have at most one pending event each and are the bulk of the events: the
        // job's own timer (segments, checkpoints, down phases) and the exponential fault stream; they are kept in
        // `job_at` and `fault_at` beside the engine's heap, which holds the rest (straggler detection, repairs,
        // Weibull lifetimes). Events are delivered in time order across the three; ties go to the job timer, then
        // to the fault stream, then to the heap. Segment events never touch the heap or the fault stream, so a run
        // of them is delivered without looking at either again.
        let h_t = s2t(h).0;
        loop {
            let th = eng.peek_time().map_or(u64::MAX, |t| t.0);
            let tf = self.fault_at.unwrap_or(u64::MAX);
            let tx = th.min(tf);
            if let Some(tj) = self.job_at
                && tj <= tx.min(h_t)
            {
                if let Mode::Down { .. } = self.mode {
                    self.now_t = tj;
                    self.own_events += 1;
                    self.on_phase_end(&mut eng, SimTime(tj).as_secs_f64());
                    continue;
                }
                self.run_timer(tx.min(h_t));
            }
            if tx > h_t {
                break;
            }
            if tf <= th {
                self.on_exp_fault(&mut eng, tf);
            } else if let Some((t, ev)) = eng.step() {
                self.handle(&mut eng, t, ev);
            }
        }
        // Close the books at the horizon. Routine checkpoints that completed were counted, not summed.
        if self.delta > 0.0 {
            self.r.phase_s[Phase::Checkpointing.index()] += self.ckpts as f64 * self.delta;
        }
        match self.mode {
            Mode::Computing => self.advance(h),
            Mode::Checkpointing { start } => self.add_phase(Phase::Checkpointing, 0, h - start),
            Mode::Down { phase, since, cls, .. } => {
                self.add_phase(phase, cls, h - since);
                if phase == Phase::Checkpointing {
                    // the planned checkpoint never finished: its segment's progress is lost
                    self.add_phase(Phase::LostWork, cls, self.uncommitted);
                }
            }
        }
        let lost: f64 = self.r.phase_s.iter().sum();
        self.r.ettr = (1.0 - lost / h).clamp(0.0, 1.0);
        self.r.events = eng.delivered() + self.own_events;
        self.r
    }
}

/// Simulates one replication of `job` under `policy`. `job` must be validated.
pub fn simulate_once(job: &TrainingJob, policy: Policy, seed: Seed) -> RepResult {
    Sim::new(job, policy, seed).run()
}

/// The seed of replication `i` of `policy`.
pub fn rep_seed(seed: Seed, policy: Policy, i: u64) -> Seed {
    seed.derive("failures").derive(policy.as_str()).index(i)
}

/// Simulates `reps` replications in parallel, results in replication order (deterministic at any thread count).
pub fn simulate(job: &TrainingJob, policy: Policy, seed: Seed, reps: u32) -> Vec<RepResult> {
    (0..reps as u64)
        .into_par_iter()
        .map(|i| simulate_once(job, policy, rep_seed(seed, policy, i)))
        .collect()
}

/// Reduces replications to a [`PolicyOutcome`] with Monte Carlo 95% intervals.
pub fn summarize(job: &TrainingJob, policy: Policy, reps: &[RepResult]) -> PolicyOutcome {
    let h = job.horizon_s();
    let col = |f: &dyn Fn(&RepResult) -> f64| Estimate::of(&reps.iter().map(f).collect::<Vec<_>>());
    let mut classes: Vec<usize> = Vec::new();
    for f in &job.failures {
        let i = FaultClass::ALL.iter().position(|c| *c == f.class).unwrap_or(0);
        if !classes.contains(&i) {
            classes.push(i);
        }
    }
    PolicyOutcome {
        policy,
        ettr: col(&|r| r.ettr),
        downtime_by_phase: Phase::ALL
            .iter()
            .map(|p| (*p, col(&|r| r.phase_s[p.index()] / h)))
            .collect(),
        downtime_by_class: classes
            .iter()
            .map(|&i| (FaultClass::ALL[i], col(&|r| r.class_s[i] / h)))
            .collect(),
        interruptions: col(&|r| r.interruptions.iter().sum::<u64>() as f64),
        interruptions_by_class: classes
            .iter()
            .map(|&i| (FaultClass::ALL[i], col(&|r| r.interruptions[i] as f64)))
            .collect(),
        gpu_hours_lost: col(&|r| (1.0 - r.ettr) * job.gpus as f64 * h / 3600.0),
        detection_latency_s: col(&|r| r.detect_sum_s / r.detect_n.max(1) as f64),
        localisation_accuracy: col(&|r| {
            if r.diagnosed == 0 {
                1.0
            } else {
                r.correct as f64 / r.diagnosed as f64
            }
        }),
    }
}

/// The simulated backend (`Fidelity::Simulated`, name `des`): `workload.replications` replications per policy of
/// the failure DES for a job with failure rates; as many replications of the Monte Carlo replay
/// ([`replay`]) for a scheduled job.
#[derive(Debug, Default, Clone)]
pub struct FailureSim {
    /// Fitted fault-handling timing for scheduled jobs (a calibrated `training_job` profile); `None`: nominal values
    /// and the detector on synthesised timestamps. A rate-based job is always answered from its own fields.
    pub timing: Option<FaultTiming>,
}

impl FailureSim {
    /// The simulator with a fitted profile (`None`: uncalibrated).
    pub fn new(timing: Option<FaultTiming>) -> Self {
        FailureSim { timing }
    }
}

impl Backend<TrainingJob> for FailureSim {
    fn name(&self) -> &str {
        "des"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Simulated
    }
    fn run(&mut self, job: &TrainingJob, ctx: &mut RunCtx) -> Result<TrainingJobOutcome, Error> {
        job.validate()?;
        if job.schedule.is_some() {
            if let Some(t) = &self.timing {
                t.validate("profile")?;
            }
            return Ok(TrainingJobOutcome {
                policies: vec![],
                scheduled: Some(scheduled::answer(job, self.timing.as_ref(), ctx.seed)),
            });
        }
        let mut policies = Vec::new();
        let total = job.policies.len() as u64;
        for (i, p) in job.policies.iter().enumerate() {
            if ctx.cancelled() {
                return Err(Error::Interrupted);
            }
            let reps = simulate(job, *p, ctx.seed, job.replications);
            policies.push(summarize(job, *p, &reps));
            ctx.report(i as u64 + 1, total);
        }
        Ok(TrainingJobOutcome {
            policies,
            scheduled: None,
        })
    }
}

#[cfg(test)]
mod tests;
