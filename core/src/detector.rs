//! A C4D-style detector over per-rank collective timestamps (after Dong et al., C4, HPCA 2025, §C4D; the rules are
//! the formalisation of `notes/c4-picasso-moe.md` §1.4). Pure: it holds no clock and does no IO, so the simulator
//! (`trainlab_sim::failures`, on sampled synthetic timestamps) and the real fault-injection run
//! (`trainlab_executors::faultrun`, on timestamps its workers send) run the very same code; it lives in `core`, below
//! both.
//!
//! Inputs, per rank `r` and collective (step) `k`: `enter(r, k, t)`, `exit(r, k, t)`, and for the collective in
//! flight the chunks received so far (`progress(r, k, chunks)`); a dead process is reported with `crash(r)`.
//! Rules, checked by [`Detector::check`]:
//! - **Crash**: a rank reported dead.
//! - **Hang**: no rank completed a collective for `hang_timeout_s`. If some ranks never entered the collective the
//!   others wait in, it is a *non-communication hang* and those ranks are the culprits. If all entered, the
//!   per-connection counters decide: a rank whose left neighbour delivered more chunks than it consumed is not
//!   draining its connection (a stuck process inside the collective: non-communication, that rank); otherwise it is
//!   a *communication hang* on a stalled link, whose receiving end is the rank that received the fewest chunks (every
//!   rank downstream received one more); both ends of that link are named, sender first.
//! - **Slow**: for each step all ranks entered, the arrival lag `enter(r,k) - median_r enter(.,k)` relative to the
//!   median step period (medians as in [`crate::stats::median`]: the mean of the two middle values for an even
//!   count); a rank whose mean lag over the last `window` steps exceeds `slow_threshold` and which was
//!   the last to arrive in most of them is a straggler (non-communication slow).
use std::collections::VecDeque;

use crate::stats::median_mut;

/// Thresholds of the detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectorConfig {
    /// Ranks observed.
    pub ranks: usize,
    /// No collective completed for this long (seconds) means a hang.
    pub hang_timeout_s: f64,
    /// Steps in the straggler window.
    pub window: usize,
    /// Mean arrival lag, as a fraction of the step period, that makes a straggler.
    pub slow_threshold: f64,
}

/// Kind of hang.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangKind {
    /// Some ranks never entered the collective (stuck compute, dead host).
    NonCommunication,
    /// All ranks entered; a connection stopped moving bytes.
    Communication,
}

/// What the detector concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A rank's process died.
    Crash {
        /// The rank.
        rank: usize,
    },
    /// Nothing completes.
    Hang {
        /// Which kind.
        kind: HangKind,
        /// The culprit ranks (for a communication hang: the receiving end of the stalled link).
        ranks: Vec<usize>,
    },
    /// A straggler.
    Slow {
        /// The rank.
        rank: usize,
        /// Its mean arrival lag over the window, as a fraction of the step period.
        lag: f64,
    },
}

impl Verdict {
    /// Whether the verdict names `rank` among its culprits.
    pub fn names(&self, rank: usize) -> bool {
        match self {
            Verdict::Crash { rank: r } | Verdict::Slow { rank: r, .. } => *r == rank,
            Verdict::Hang { ranks, .. } => ranks.contains(&rank),
        }
    }
    /// The first culprit rank.
    pub fn rank(&self) -> Option<usize> {
        match self {
            Verdict::Crash { rank } | Verdict::Slow { rank, .. } => Some(*rank),
            Verdict::Hang { ranks, .. } => ranks.first().copied(),
        }
    }
}

/// Step periods kept for the running median period (the most recent ones).
const MAX_PERIODS: usize = 32;

/// Per-step record while some rank has not entered it yet.
#[derive(Debug, Clone)]
struct StepRec {
    enter: Vec<f64>,
    entered: usize,
}

/// The detector state. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Detector {
    cfg: DetectorConfig,
    /// Steps some rank has entered and some has not, ascending by step (a handful at most in practice, so a sorted
    /// `Vec` searched from the newest end beats a map).
    open: Vec<(u64, StepRec)>,
    /// `enter` buffers of closed steps, reused for new ones (no allocation per step).
    pool: Vec<Vec<f64>>,
    /// Scratch space for the median of a completed step.
    scratch: Vec<f64>,
    last_enter: Vec<Option<u64>>,
    chunks: Vec<(u64, u64, u64)>,
    last_progress_s: f64,
    lags: Vec<VecDeque<f64>>,
    last_flags: VecDeque<usize>,
    periods: VecDeque<f64>,
    prev_median: Option<(u64, f64)>,
    crashed: Option<usize>,
}

impl Detector {
    /// A detector for `cfg.ranks` ranks; `start_s` is the time monitoring begins (the hang clock starts there).
    pub fn new(cfg: DetectorConfig, start_s: f64) -> Self {
        Detector {
            cfg,
            open: Vec::new(),
            pool: Vec::new(),
            scratch: Vec::with_capacity(cfg.ranks),
            last_enter: vec![None; cfg.ranks],
            chunks: vec![(0, 0, 0); cfg.ranks],
            last_progress_s: start_s,
            lags: vec![VecDeque::with_capacity(cfg.window + 1); cfg.ranks],
            last_flags: VecDeque::with_capacity(cfg.window + 1),
            periods: VecDeque::with_capacity(MAX_PERIODS + 1),
            prev_median: None,
            crashed: None,
        }
    }

    /// Forgets all observations (keeping allocations), as if newly created at `start_s`.
    pub fn reset(&mut self, start_s: f64) {
        for (_, rec) in self.open.drain(..) {
            self.pool.push(rec.enter);
        }
        self.last_enter.iter_mut().for_each(|x| *x = None);
        self.chunks.iter_mut().for_each(|x| *x = (0, 0, 0));
        self.last_progress_s = start_s;
        self.lags.iter_mut().for_each(|q| q.clear());
        self.last_flags.clear();
        self.periods.clear();
        self.prev_median = None;
        self.crashed = None;
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// Rank `rank` entered collective `step` at `t`.
    pub fn enter(&mut self, rank: usize, step: u64, t: f64) {
        if rank >= self.cfg.ranks {
            return;
        }
        self.last_enter[rank] = Some(self.last_enter[rank].map_or(step, |s| s.max(step)));
        let n = self.cfg.ranks;
        let pos = match self.open.iter().rposition(|(k, _)| *k <= step) {
            Some(i) if self.open[i].0 == step => i,
            before => {
                let i = before.map_or(0, |i| i + 1);
                let mut enter = self.pool.pop().unwrap_or_default();
                enter.clear();
                enter.resize(n, f64::NAN);
                self.open.insert(i, (step, StepRec { enter, entered: 0 }));
                i
            }
        };
        let rec = &mut self.open[pos].1;
        if rec.enter[rank].is_nan() {
            rec.enter[rank] = t;
            rec.entered += 1;
        }
        if rec.entered == n {
            let (_, rec) = self.open.remove(pos);
            self.complete_step(step, &rec.enter);
            self.pool.push(rec.enter);
            // Older incomplete steps (all before `pos`) can no longer complete in order; drop them.
            for (_, old) in self.open.drain(..pos) {
                self.pool.push(old.enter);
            }
        }
    }

    /// Rank `rank` left collective `step` at `t` (the collective completed there).
    pub fn exit(&mut self, rank: usize, step: u64, t: f64) {
        if rank < self.cfg.ranks {
            self.last_progress_s = self.last_progress_s.max(t);
            self.chunks[rank] = (step, u64::MAX, u64::MAX);
        }
    }

    /// Rank `rank` has, in collective `step`, delivered `sent` chunks to its right neighbour (acknowledged by the
    /// transport) and consumed `received` chunks from its left neighbour.
    pub fn progress(&mut self, rank: usize, step: u64, sent: u64, received: u64) {
        if rank < self.cfg.ranks {
            self.chunks[rank] = (step, sent, received);
        }
    }

    /// Changes the hang threshold (e.g. once the step period is known); the hang clock restarts at `now_s`.
    pub fn set_hang_timeout(&mut self, hang_timeout_s: f64, now_s: f64) {
        self.cfg.hang_timeout_s = hang_timeout_s;
        self.last_progress_s = self.last_progress_s.max(now_s);
    }

    /// Rank `rank`'s process died.
    pub fn crash(&mut self, rank: usize) {
        if rank < self.cfg.ranks && self.crashed.is_none() {
            self.crashed = Some(rank);
        }
    }

    fn complete_step(&mut self, step: u64, enter: &[f64]) {
        // The median of the arrival times, selected in a reused buffer (no allocation per step).
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.extend_from_slice(enter);
        let med = median_mut(&mut buf);
        self.scratch = buf;
        if let Some((pk, pm)) = self.prev_median
            && step > pk
        {
            let p = (med - pm) / (step - pk) as f64;
            if p > 0.0 {
                if self.periods.len() == MAX_PERIODS {
                    self.periods.pop_front();
                }
                self.periods.push_back(p);
            }
        }
        self.prev_median = Some((step, med));
        let last = enter
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        if self.last_flags.len() == self.cfg.window {
            self.last_flags.pop_front();
        }
        self.last_flags.push_back(last);
        for (r, &t) in enter.iter().enumerate() {
            let q = &mut self.lags[r];
            if q.len() == self.cfg.window {
                q.pop_front();
            }
            q.push_back(t - med);
        }
    }

    /// The median step period seen so far (seconds), if any.
    pub fn period(&self) -> Option<f64> {
        if self.periods.is_empty() {
            return None;
        }
        // At most 32 periods are kept (see `complete_step`): select the median on the stack.
        let mut buf = [0.0f64; MAX_PERIODS];
        let n = self.periods.len().min(MAX_PERIODS);
        for (d, s) in buf.iter_mut().zip(&self.periods) {
            *d = *s;
        }
        Some(median_mut(&mut buf[..n]))
    }

    /// Evaluates the rules at time `now_s`. Returns the first verdict that holds (crash, hang, slow).
    pub fn check(&self, now_s: f64) -> Option<Verdict> {
        if let Some(rank) = self.crashed {
            return Some(Verdict::Crash { rank });
        }
        if now_s - self.last_progress_s > self.cfg.hang_timeout_s {
            return Some(self.classify_hang());
        }
        self.straggler()
    }

    fn classify_hang(&self) -> Verdict {
        let max_step = self.last_enter.iter().flatten().max().copied();
        let behind: Vec<usize> = match max_step {
            Some(m) => (0..self.cfg.ranks)
                .filter(|&r| self.last_enter[r].is_none_or(|s| s < m))
                .collect(),
            None => (0..self.cfg.ranks).collect(),
        };
        if !behind.is_empty() && behind.len() < self.cfg.ranks {
            return Verdict::Hang {
                kind: HangKind::NonCommunication,
                ranks: behind,
            };
        }
        let n = self.cfg.ranks;
        let live = |r: usize| Some(self.chunks[r].0) == max_step && self.chunks[r].2 != u64::MAX;
        // A rank not draining what its left neighbour delivered is stuck inside the collective.
        let stuck: Vec<usize> = (0..n)
            .filter(|&r| {
                let l = (r + n - 1) % n;
                live(r) && live(l) && self.chunks[l].1 > self.chunks[r].2
            })
            .collect();
        if !stuck.is_empty() && stuck.len() < n {
            return Verdict::Hang {
                kind: HangKind::NonCommunication,
                ranks: stuck,
            };
        }
        // A stalled link ends at the rank with the fewest chunks received.
        let r = (0..n)
            .filter(|&r| live(r))
            .min_by_key(|&r| self.chunks[r].2)
            .unwrap_or(0);
        Verdict::Hang {
            kind: HangKind::Communication,
            ranks: vec![(r + n - 1) % n, r],
        }
    }

    fn straggler(&self) -> Option<Verdict> {
        let w = self.cfg.window;
        if self.last_flags.len() < w {
            return None;
        }
        let period = self.period()?;
        let (rank, lag) = self
            .lags
            .iter()
            .enumerate()
            .map(|(r, q)| (r, q.iter().sum::<f64>() / q.len().max(1) as f64 / period))
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        let last_count = self.last_flags.iter().filter(|&&r| r == rank).count();
        (lag > self.cfg.slow_threshold && 2 * last_count > w).then_some(Verdict::Slow { rank, lag })
    }
}

#[cfg(test)]
mod tests;
