//! The C4D detector run on synthesised per-rank timestamps: the simulator's source of detection latencies and
//! localisation, for both the failure DES and the replay of scheduled jobs.
use super::{Detector, DetectorConfig, HANG_HISTORY_STEPS, SAMPLE_RANKS, normal};
use rand::RngExt;
use trainlab_core::seed::Rng;
use trainlab_core::workloads::TrainingJob;

/// A detector, its configuration for one job, and the step the synthesised timestamps follow.
pub(super) struct Probe {
    cfg: DetectorConfig,
    /// Compute seconds of a healthy step.
    step_s: f64,
    /// Coefficient of variation of per-rank compute.
    jitter_cv: f64,
    /// Kept between diagnoses to reuse its buffers.
    det: Option<Detector>,
}

impl Probe {
    /// A probe for `job` with `ranks` ranks (at most [`SAMPLE_RANKS`] are synthesised, at least 2) and healthy step
    /// `step_s`.
    pub(super) fn new(job: &TrainingJob, ranks: u64, step_s: f64) -> Self {
        let d = &job.detection;
        Probe {
            cfg: DetectorConfig {
                ranks: (SAMPLE_RANKS as u64).min(ranks).max(2) as usize,
                hang_timeout_s: d.c4d_hang_s(step_s),
                window: d.c4d_window_steps as usize,
                slow_threshold: d.c4d_slow_threshold,
            },
            step_s,
            jitter_cv: d.jitter_cv,
            det: None,
        }
    }

    /// Ranks whose timestamps are synthesised.
    pub(super) fn ranks(&self) -> usize {
        self.cfg.ranks
    }

    fn detector(&mut self) -> Detector {
        let mut det = self.det.take().unwrap_or_else(|| Detector::new(self.cfg, 0.0));
        det.reset(0.0);
        det
    }

    /// Synthesises one healthy BSP step for the ranks starting at `t0`; returns its end (the last arrival).
    fn synth_step(&self, rng: &mut Rng, det: &mut Detector, k: u64, t0: f64, slow: Option<(usize, f64)>) -> f64 {
        let n = self.cfg.ranks;
        let mut end = t0;
        let mut enters = [0.0f64; SAMPLE_RANKS];
        for (r, slot) in enters.iter_mut().enumerate().take(n) {
            let mut c = self.step_s * (1.0 + self.jitter_cv * normal(rng)).max(0.1);
            if let Some((sr, f)) = slow
                && sr == r
            {
                c *= f;
            }
            *slot = t0 + c;
            end = end.max(t0 + c);
        }
        for (r, t) in enters.iter().enumerate().take(n) {
            det.enter(r, k, *t);
        }
        for r in 0..n {
            det.exit(r, k, end);
        }
        end
    }

    /// Runs the detector on a straggler `culprit` slowed by `slowdown`: W + 2 healthy steps of history, then slowed
    /// steps until it fires (at most 50 W). With `mid_step` the fault strikes at a uniform point of the last healthy
    /// step (a fault at a random time), else at its end (a scheduled fault, injected when a step completes). Returns
    /// the latency from the fault and whether the verdict named the culprit.
    pub(super) fn slow(&mut self, rng: &mut Rng, culprit: usize, slowdown: f64, mid_step: bool) -> Option<(f64, bool)> {
        let mut det = self.detector();
        let mut t = 0.0;
        let mut k = 0u64;
        for _ in 0..(self.cfg.window + 2) {
            t = self.synth_step(rng, &mut det, k, t, None);
            k += 1;
        }
        let fault_t = if mid_step {
            let u: f64 = rng.random();
            t - u * self.step_s
        } else {
            t
        };
        let cap = 50 * self.cfg.window as u64;
        let mut out = None;
        for _ in 0..cap {
            t = self.synth_step(rng, &mut det, k, t, Some((culprit, slowdown)));
            k += 1;
            if let Some(v) = det.check(t) {
                out = Some((t - fault_t, v.rank() == Some(culprit)));
                break;
            }
        }
        self.det = Some(det);
        out
    }

    /// Runs the detector on a hang snapshot of `culprit` (a stalled link ending at it when `communication`); true if
    /// it named the right rank.
    ///
    /// The snapshot is [`HANG_HISTORY_STEPS`] healthy steps (with per-rank jitter) and then the hung collective:
    /// the hang rules read which collective each rank entered last, the chunk counters of the collective in flight
    /// and the time since the last completion, all of which one completed step establishes. (The straggler path
    /// keeps its longer history: its rule reads the per-step lags and periods.)
    pub(super) fn hang(&mut self, rng: &mut Rng, culprit: usize, communication: bool) -> bool {
        let mut det = self.detector();
        let n = self.cfg.ranks;
        let mut t = 0.0;
        for k in 0..HANG_HISTORY_STEPS {
            t = self.synth_step(rng, &mut det, k, t, None);
        }
        let step = self.step_s;
        let hung = HANG_HISTORY_STEPS;
        for r in 0..n {
            if communication || r != culprit {
                det.enter(r, hung, t + step * (1.0 + 0.01 * r as f64));
            }
        }
        if communication {
            // Ring positions: chunks received grow by one per hop downstream of the stalled link, which ends at the
            // culprit; nothing is in flight unacknowledged on a stalled link.
            let s0 = rng.random_range(0..4u64);
            for r in 0..n {
                let hop = |x: usize| ((x + n - culprit) % n) as u64;
                // sent = what the right neighbour received (acknowledged); received grows per hop.
                det.progress(r, hung, s0 + hop((r + 1) % n), s0 + hop(r));
            }
        }
        let right = det
            .check(t + 2.0 * step + self.cfg.hang_timeout_s)
            .is_some_and(|v| v.names(culprit));
        self.det = Some(det);
        right
    }
}
