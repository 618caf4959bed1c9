//! The timeline of a scheduled training job (a [`TrainingJob`] with a
//! [`FaultSchedule`](trainlab_core::workloads::training_job::FaultSchedule)): the analytical backend's answer to it,
//! and the one timeline the simulated backend (`trainlab_sim::failures`) replays with drawn latencies.
//!
//! The model knows the mechanism and takes what it cannot know from a [`FaultTiming`] profile (fitted from real
//! runs by `trainlab_executors::faultrun::calibrate`) or, uncalibrated, from nominal values derived from the
//! workload's fields and the detector's thresholds ([`JobTiming::of`]). Walking the schedule in order (the semantics
//! are those of the schedule's module docs):
//!
//! - fault `i` is injected at step `max(at_step, resume + warmup)`, where `resume` is the step the job last
//!   (re)started from and `warmup` = [`FaultSchedule::warmup_steps`](trainlab_core::workloads::training_job::FaultSchedule::warmup_steps);
//! - a kill or hang detected `D` seconds later loses the `inject mod every` steps since the last checkpoint, costs
//!   `D + restart` seconds of wall time and the redone steps;
//! - a slow rank detected `D` seconds later kept the job running at `x` times the step period meanwhile: it
//!   completed `n = floor(D / (period x))` slowed steps, so it costs `D - n period + restart` seconds beyond those
//!   steps' healthy time, and loses `(inject + n) mod every` steps;
//! - a slow rank the detector would name only after `slow_give_up_steps` slowed steps (or never) is missed: it costs
//!   `(x - 1) period` per slowed step until it ends, and no restart.
//!
//! `wall = startup + (steps + redone) period + floor(steps / every) checkpoint + sum of the fault costs`,
//! `useful = steps period`, `ETTR = useful / wall`.
use serde::{Deserialize, Serialize};
use trainlab_core::workloads::training_job::{
    Estimate, FaultSchedule, InjectedKind, ScheduledFaultOutcome, ScheduledFaultSpec, ScheduledOutcome, TrainingJob,
};
use trainlab_core::{Error, Summary};

/// Mean, standard deviation and sample count of a fitted quantity (seconds or steps, as its field says).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fitted {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 with fewer than two samples).
    pub std: f64,
    /// Samples behind the fit (0: nothing was measured, the nominal value is used).
    pub n: u32,
}

impl Fitted {
    /// A fixed value (no spread), as for a nominal parameter.
    pub fn fixed(mean: f64) -> Fitted {
        Fitted { mean, std: 0.0, n: 0 }
    }
    /// Fit of a sample (all zero for an empty one).
    pub fn of(xs: &[f64]) -> Fitted {
        if xs.is_empty() {
            return Fitted::default();
        }
        let s = Summary::of(xs);
        Fitted {
            mean: s.mean,
            std: if xs.len() > 1 { s.std } else { 0.0 },
            n: u32::try_from(s.n).unwrap_or(u32::MAX),
        }
    }
    fn validate(&self, path: &str, allow_negative: bool) -> Result<(), Error> {
        let ok_mean = self.mean.is_finite() && (allow_negative || self.mean >= 0.0);
        if !ok_mean {
            return Err(Error::invalid(
                format!("{path}.mean"),
                self.mean,
                if allow_negative {
                    "must be finite"
                } else {
                    "must be a finite number >= 0"
                },
                "re-run `trainlab calibrate --workload training_job`",
            ));
        }
        trainlab_core::error::check::non_negative(&format!("{path}.std"), self.std)
    }
}

/// Timing of the fault handling of a real fault-injection run, fitted from measured runs: the parameters of a
/// calibrated `training_job` profile. The analytical and simulated backends hold it as `Option<FaultTiming>` (`None`:
/// uncalibrated, see [`JobTiming::of`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultTiming {
    /// The nominal compute seconds per step (`step_time_s`) of the runs it was fitted on.
    pub step_time_s: f64,
    /// Their mean healthy step period, seconds (compute, all-reduce and contention): a job's period is predicted as
    /// its `step_time_s` times `step_period_s / step_time_s`.
    pub step_period_s: f64,
    /// Seconds per checkpoint write.
    pub checkpoint_cost_s: f64,
    /// Start-up overhead: launching and connecting the workers before the first step begins, seconds.
    pub startup_s: f64,
    /// Detection latency of kills, seconds.
    pub detect_kill_s: Fitted,
    /// Hang detection latency beyond the threshold `max(c4d_hang_steps x period, c4d_hang_min_s)`, seconds. It can
    /// be negative: the detector arms its threshold on its own running median of the step period.
    pub hang_overshoot_s: Fitted,
    /// Detection latency of slow ranks, in slowed steps (each `period x slowdown`).
    pub detect_slow_steps: Fitted,
    /// Restart overhead: from the verdict until the restarted job begins its first step, seconds.
    pub restart_s: Fitted,
}

impl FaultTiming {
    /// Checks a loaded profile; `path` prefixes the field names (e.g. the profile file).
    pub fn validate(&self, path: &str) -> Result<(), Error> {
        use trainlab_core::error::check;
        check::positive(&format!("{path}.step_time_s"), self.step_time_s)?;
        check::positive(&format!("{path}.step_period_s"), self.step_period_s)?;
        check::non_negative(&format!("{path}.checkpoint_cost_s"), self.checkpoint_cost_s)?;
        check::non_negative(&format!("{path}.startup_s"), self.startup_s)?;
        self.detect_kill_s.validate(&format!("{path}.detect_kill_s"), false)?;
        self.hang_overshoot_s
            .validate(&format!("{path}.hang_overshoot_s"), true)?;
        self.detect_slow_steps
            .validate(&format!("{path}.detect_slow_steps"), false)?;
        self.restart_s.validate(&format!("{path}.restart_s"), false)
    }
}

/// The timing one prediction of a job uses: nominal or calibrated, resolved for that job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobTiming {
    /// Healthy step period, seconds.
    pub period_s: f64,
    /// Seconds per checkpoint write.
    pub checkpoint_s: f64,
    /// Start-up overhead, seconds.
    pub startup_s: f64,
    /// The C4D hang threshold at this period, seconds.
    pub hang_threshold_s: f64,
    /// Kill detection latency, seconds.
    pub kill: Fitted,
    /// Hang detection latency beyond the threshold, seconds.
    pub hang_overshoot: Fitted,
    /// Slow-rank detection latency in slowed steps; `None`: uncalibrated, from the detector's rule
    /// ([`nominal_slow_steps`]).
    pub slow_steps: Option<Fitted>,
    /// Restart overhead, seconds.
    pub restart: Fitted,
    /// Whether a fitted profile is behind it.
    pub calibrated: bool,
}

/// Slowed steps until the C4D straggler rule names a rank slowed by `slowdown`, from the detector's thresholds:
/// the rank must be the last to arrive in more than half of the `W = c4d_window_steps` window, and its mean lag
/// over the window, `k (slowdown - 1) / W` step periods after `k` slowed steps, must exceed `c4d_slow_threshold`:
/// `k = max(floor(W/2), floor(threshold W / (slowdown - 1))) + 1`. `None` when `k > W` (never named).
pub fn nominal_slow_steps(job: &TrainingJob, slowdown: f64) -> Option<f64> {
    let d = &job.detection;
    let w = f64::from(d.c4d_window_steps);
    let excess = slowdown - 1.0;
    if excess <= 0.0 {
        return None;
    }
    let k = (w / 2.0).floor().max((d.c4d_slow_threshold * w / excess).floor()) + 1.0;
    (k <= w).then_some(k)
}

impl JobTiming {
    /// The timing of `job` from a fitted profile, or (`None`) nominal values from the job's fields:
    /// - healthy step period = `step_time_s` (calibrated: scaled by the profile's period per nominal step second);
    /// - checkpoint write = `checkpoint_cost_s`; start-up = `restart_cost_s` (launching and connecting the job is a
    ///   restart without a checkpoint to load);
    /// - kill detected after `detection.crash_detect_s`; a hang exactly at the threshold
    ///   `max(c4d_hang_steps x period, c4d_hang_min_s)` (the fault strikes just after a step completed, when the hang
    ///   clock restarts); a slow rank after [`nominal_slow_steps`] slowed steps;
    /// - restart = `c4d_localise_s + c4d_isolate_s + restart_cost_s` (the C4D timeline from verdict to resumption).
    ///
    /// A fitted quantity with no samples (`n = 0`, that kind of fault never measured) keeps its nominal value.
    pub fn of(job: &TrainingJob, fitted: Option<&FaultTiming>) -> JobTiming {
        let d = &job.detection;
        let nominal_restart = Fitted::fixed(d.c4d_localise_s + d.c4d_isolate_s + job.restart_cost_s);
        let pick = |f: Fitted, nominal: Fitted| if f.n > 0 { f } else { nominal };
        match fitted {
            None => JobTiming {
                period_s: job.step_time_s,
                checkpoint_s: job.checkpoint_cost_s,
                startup_s: job.restart_cost_s,
                hang_threshold_s: d.c4d_hang_s(job.step_time_s),
                kill: Fitted::fixed(d.crash_detect_s),
                hang_overshoot: Fitted::fixed(0.0),
                slow_steps: None,
                restart: nominal_restart,
                calibrated: false,
            },
            Some(t) => {
                let period = job.step_time_s * t.step_period_s / t.step_time_s;
                JobTiming {
                    period_s: period,
                    checkpoint_s: t.checkpoint_cost_s,
                    startup_s: t.startup_s,
                    hang_threshold_s: d.c4d_hang_s(period),
                    kill: pick(t.detect_kill_s, Fitted::fixed(d.crash_detect_s)),
                    hang_overshoot: pick(t.hang_overshoot_s, Fitted::fixed(0.0)),
                    slow_steps: (t.detect_slow_steps.n > 0).then_some(t.detect_slow_steps),
                    restart: pick(t.restart_s, nominal_restart),
                    calibrated: true,
                }
            }
        }
    }

    /// Detection latency (seconds) of fault `f` when its fitted quantity takes the value `v` (kill: seconds; hang:
    /// seconds beyond the threshold; slow: slowed steps), or `None` when a slow rank is never named within
    /// `give_up` slowed steps. `v = None` for a slow fault means "use the detector's rule".
    pub fn detect_s(&self, job: &TrainingJob, f: &ScheduledFaultSpec, v: Option<f64>, give_up: u64) -> Option<f64> {
        match f.kind {
            InjectedKind::Kill => Some(v.unwrap_or(self.kill.mean).max(0.0)),
            InjectedKind::Hang => Some((self.hang_threshold_s + v.unwrap_or(self.hang_overshoot.mean)).max(0.0)),
            InjectedKind::Slow => {
                let x = f.factor();
                let k = match (v, self.slow_steps) {
                    (Some(v), _) => Some(v),
                    (None, Some(s)) => Some(s.mean),
                    (None, None) => nominal_slow_steps(job, x),
                }?
                .max(0.0);
                (k <= give_up as f64).then_some(k * self.period_s * x)
            }
        }
    }
}

/// What one fault of a replayed timeline did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultResult {
    /// Whether it was injected (a fault pushed past the last step by the warm-up rule is not).
    pub injected: bool,
    /// Seconds from injection to verdict (None: missed or not injected).
    pub detect_s: Option<f64>,
    /// Restart overhead, seconds (0 when not detected).
    pub restart_s: f64,
    /// Steps lost (completed since the last checkpoint at the verdict).
    pub lost_steps: u64,
    /// Whether the verdict named the injected rank, where the caller knows it.
    pub localised: Option<bool>,
}

/// One replayed timeline of a scheduled job.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Timeline {
    /// Wall time, seconds.
    pub wall_s: f64,
    /// Useful time (steps x healthy period), seconds.
    pub useful_s: f64,
    /// Per fault, in schedule order.
    pub faults: Vec<FaultResult>,
}

impl Timeline {
    /// `useful / wall`.
    pub fn ettr(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.useful_s / self.wall_s
        } else {
            0.0
        }
    }
}

/// How one fault is handled, as the caller decides it (expected values for the closed form, draws for a Monte
/// Carlo replay): its detection latency (None: missed), its restart overhead, and whether the verdict named the
/// right rank (None: unknown).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Handling {
    /// Injection to verdict, seconds; None when the fault is missed.
    pub detect_s: Option<f64>,
    /// Verdict to the restarted job's first step, seconds.
    pub restart_s: f64,
    /// Whether the verdict named the injected rank.
    pub localised: Option<bool>,
}

/// Replays the schedule of `job` (which must be a validated scheduled job) with timing `t`; `handle(i, fault)` says
/// how fault `i` is handled (it is called only for faults that are injected, in order).
pub fn replay(
    job: &TrainingJob,
    t: &JobTiming,
    mut handle: impl FnMut(usize, &ScheduledFaultSpec) -> Handling,
) -> Timeline {
    let Some(s) = &job.schedule else {
        return Timeline::default();
    };
    let every = s.checkpoint_every_steps.max(1);
    let warmup = FaultSchedule::warmup_steps(&job.detection);
    let p = t.period_s;
    let mut wall = t.startup_s;
    let mut resume = 0u64;
    let mut redone = 0u64;
    let mut faults = Vec::with_capacity(s.faults.len());
    for (i, f) in s.faults.iter().enumerate() {
        let inject = f.at_step.max(resume.saturating_add(warmup));
        if inject >= s.steps {
            faults.push(FaultResult::default());
            continue;
        }
        let h = handle(i, f);
        let x = f.factor();
        let mut r = FaultResult {
            injected: true,
            localised: h.localised,
            ..FaultResult::default()
        };
        match (f.kind, h.detect_s) {
            (InjectedKind::Kill | InjectedKind::Hang, Some(d)) => {
                let lost = inject % every;
                wall += d + h.restart_s;
                redone += lost;
                resume = inject - lost;
                r.detect_s = Some(d);
                r.restart_s = h.restart_s;
                r.lost_steps = lost;
            }
            (InjectedKind::Slow, Some(d)) if inject.saturating_add(slowed_steps(d, p, x)) < s.steps => {
                let n = slowed_steps(d, p, x);
                let done = inject + n;
                let lost = done % every;
                wall += d - n as f64 * p + h.restart_s;
                redone += lost;
                resume = done - lost;
                r.detect_s = Some(d);
                r.restart_s = h.restart_s;
                r.lost_steps = lost;
            }
            _ => {
                // Missed (or the job ends first): slowed steps until the slowdown ends, no restart.
                let n = s.slow_give_up_steps.min(s.steps - inject);
                wall += n as f64 * p * (x - 1.0);
                r.localised = None;
            }
        }
        faults.push(r);
    }
    let useful = s.steps as f64 * p;
    wall += useful + redone as f64 * p + (s.steps / every) as f64 * t.checkpoint_s;
    Timeline {
        wall_s: wall,
        useful_s: useful,
        faults,
    }
}

/// Slowed steps completed in `d` seconds at `period x slowdown` each (a relative tolerance of 1e-9 so that a latency
/// computed as a whole number of steps counts them all).
fn slowed_steps(d: f64, period: f64, slowdown: f64) -> u64 {
    (d / (period * slowdown) * (1.0 + 1e-9)).floor() as u64
}

/// The expected timeline: every fault handled with its expected latencies (the analytical answer).
pub fn expected_timeline(job: &TrainingJob, t: &JobTiming) -> Timeline {
    let give_up = job.schedule.as_ref().map_or(0, |s| s.slow_give_up_steps);
    replay(job, t, |_, f| Handling {
        detect_s: t.detect_s(job, f, None, give_up),
        restart_s: t.restart.mean.max(0.0),
        localised: None,
    })
}

/// An [`Estimate`] of a sample: None when empty, exact when one value or no spread, else mean and 95% interval.
pub fn estimate(xs: &[f64]) -> Option<Estimate> {
    match xs {
        [] => None,
        [x] => Some(Estimate::exact(*x)),
        _ if xs.iter().all(|x| *x == xs[0]) => Some(Estimate::exact(xs[0])),
        _ => Some(Estimate::of(xs)),
    }
}

/// Reduces replayed timelines (one for a closed form, many for a Monte Carlo replay) to the scheduled outcome.
pub fn summarize(runs: &[Timeline]) -> ScheduledOutcome {
    let col = |f: &dyn Fn(&Timeline) -> f64| {
        estimate(&runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(Estimate::exact(0.0))
    };
    let n_faults = runs.first().map_or(0, |r| r.faults.len());
    let faults = (0..n_faults)
        .map(|i| {
            let fr: Vec<&FaultResult> = runs.iter().map(|r| &r.faults[i]).collect();
            let of = |f: &dyn Fn(&FaultResult) -> f64| {
                estimate(&fr.iter().map(|x| f(x)).collect::<Vec<_>>()).unwrap_or(Estimate::exact(0.0))
            };
            let detects: Vec<f64> = fr.iter().filter_map(|x| x.detect_s).collect();
            let local: Vec<f64> = fr
                .iter()
                .filter(|x| x.detect_s.is_some())
                .filter_map(|x| x.localised.map(f64::from))
                .collect();
            ScheduledFaultOutcome {
                detected: of(&|x| f64::from(x.detect_s.is_some())),
                detect_s: estimate(&detects),
                restart_s: of(&|x| x.restart_s),
                lost_steps: of(&|x| x.lost_steps as f64),
                localised: estimate(&local),
            }
        })
        .collect();
    ScheduledOutcome {
        ettr: col(&|r| r.ettr()),
        wall_s: col(&|r| r.wall_s),
        useful_s: col(&|r| r.useful_s),
        false_alarms: Estimate::exact(0.0),
        faults,
    }
}

/// The analytical answer to a scheduled job: its expected timeline with `fitted` timing (None: nominal).
pub fn expected(job: &TrainingJob, fitted: Option<&FaultTiming>) -> ScheduledOutcome {
    summarize(&[expected_timeline(job, &JobTiming::of(job, fitted))])
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainlab_core::Workload;

    pub(crate) fn job() -> TrainingJob {
        use trainlab_core::workloads::training_job::{CheckpointInterval, DetectionSpec, Policy};
        let fault = |at_step, rank, kind, slowdown| ScheduledFaultSpec {
            at_step,
            rank,
            kind,
            slowdown,
        };
        let j = TrainingJob {
            gpus: 0,
            gpus_per_node: 8,
            step_time_s: 0.2,
            horizon_days: 0.0,
            checkpoint_interval: CheckpointInterval::Seconds(0.0),
            checkpoint_cost_s: 0.01,
            restart_cost_s: 0.3,
            spare_nodes: None,
            repair_hours: 48.0,
            failures: vec![],
            lemon: None,
            policies: vec![Policy::C4d],
            detection: DetectionSpec {
                crash_detect_s: 0.05,
                c4d_hang_steps: 8.0,
                c4d_hang_min_s: 1.0,
                c4d_window_steps: 8,
                c4d_slow_threshold: 0.15,
                c4d_localise_s: 0.0,
                c4d_isolate_s: 0.1,
                ..DetectionSpec::default()
            },
            replications: 8,
            schedule: Some(FaultSchedule {
                ranks: 4,
                steps: 100,
                checkpoint_every_steps: 10,
                slow_give_up_steps: 40,
                faults: vec![
                    fault(23, 1, InjectedKind::Kill, None),
                    fault(67, 2, InjectedKind::Hang, None),
                    fault(81, 0, InjectedKind::Slow, Some(2.0)),
                ],
            }),
        };
        j.validate().unwrap();
        j
    }

    pub(crate) fn timing() -> FaultTiming {
        FaultTiming {
            step_time_s: 0.2,
            step_period_s: 0.2,
            checkpoint_cost_s: 0.01,
            startup_s: 0.3,
            detect_kill_s: Fitted {
                mean: 0.05,
                std: 0.0,
                n: 1,
            },
            hang_overshoot_s: Fitted {
                mean: 0.1,
                std: 0.0,
                n: 1,
            },
            detect_slow_steps: Fitted {
                mean: 5.0,
                std: 0.0,
                n: 1,
            },
            restart_s: Fitted {
                mean: 0.4,
                std: 0.0,
                n: 3,
            },
        }
    }

    /// The wall time of a hand-computed timeline.
    #[test]
    fn calibrated_timeline_by_hand() {
        let j = job();
        let t = JobTiming::of(&j, Some(&timing()));
        let tl = expected_timeline(&j, &t);
        // Hang threshold max(8 x 0.2, 1) = 1.6 s (+0.1); slow: 5 slowed steps of 0.4 s = 2 s, of which 5 x 0.2 s
        // are the steps' healthy time; lost 3 (kill at 23), 7 (hang at 67), (81 + 5) mod 10 = 6 (slow).
        let wall = 0.3 + 0.05 + 1.7 + (2.0 - 1.0) + 3.0 * 0.4 + (100.0 + 16.0) * 0.2 + 10.0 * 0.01;
        assert!((tl.wall_s - wall).abs() < 1e-9, "{tl:?} vs {wall}");
        let lost: Vec<u64> = tl.faults.iter().map(|f| f.lost_steps).collect();
        assert_eq!(lost, [3, 7, 6]);
        assert!((tl.ettr() - 20.0 / wall).abs() < 1e-12);
        // At half the step time the period, the hang threshold (floored at 1 s) and the slow latency scale.
        let mut k = j.clone();
        k.step_time_s = 0.1;
        let t2 = JobTiming::of(&k, Some(&timing()));
        let f = &k.schedule.as_ref().unwrap().faults;
        assert!((t2.detect_s(&k, &f[1], None, 40).unwrap() - 1.1).abs() < 1e-9);
        assert!((t2.detect_s(&k, &f[2], None, 40).unwrap() - 1.0).abs() < 1e-9);
    }

    /// Uncalibrated: the detector's rule gives 5 slowed steps for a 2x straggler in a window of 8 at 0.15, none for
    /// 1.1x; the nominal restart is localise + isolate + restart.
    #[test]
    fn nominal_values_follow_the_detector_thresholds() {
        let j = job();
        assert_eq!(nominal_slow_steps(&j, 2.0), Some(5.0));
        assert_eq!(nominal_slow_steps(&j, 1.1), None);
        let t = JobTiming::of(&j, None);
        assert!(!t.calibrated && (t.restart.mean - 0.4).abs() < 1e-12 && t.hang_threshold_s == 1.6);
        let o = expected(&j, None);
        assert_eq!(o.faults.len(), 3);
        assert!(o.faults.iter().all(|f| f.detected.mean == 1.0));
        assert!((o.faults[1].detect_s.unwrap().mean - 1.6).abs() < 1e-12);
        // A 1.1x straggler is missed: 40 slowed steps at 0.1 x 0.2 s extra, no restart.
        let mut m = j.clone();
        m.schedule.as_mut().unwrap().faults[2].slowdown = Some(1.1);
        let a = expected_timeline(&m, &t);
        assert!(a.faults[2].detect_s.is_none() && a.faults[2].restart_s == 0.0);
        let b = expected_timeline(&j, &t);
        assert!(a.wall_s != b.wall_s);
    }

    /// A fault whose step comes before the warm-up after the previous restart waits for it, and one pushed past the
    /// end is not injected.
    #[test]
    fn warmup_after_restart_delays_injection() {
        let mut j = job();
        let s = j.schedule.as_mut().unwrap();
        s.faults = vec![
            ScheduledFaultSpec {
                at_step: 15,
                rank: 1,
                kind: InjectedKind::Kill,
                slowdown: None,
            },
            ScheduledFaultSpec {
                at_step: 16,
                rank: 2,
                kind: InjectedKind::Kill,
                slowdown: None,
            },
            ScheduledFaultSpec {
                at_step: 99,
                rank: 2,
                kind: InjectedKind::Kill,
                slowdown: None,
            },
        ];
        j.validate().unwrap();
        let t = JobTiming::of(&j, None);
        let tl = expected_timeline(&j, &t);
        // Restart from 10 after the first kill; the second strikes at 10 + 10 = 20: 0 lost.
        assert_eq!(tl.faults[0].lost_steps, 5);
        assert_eq!(tl.faults[1].lost_steps, 0);
        assert!(tl.faults[2].injected);
        j.schedule.as_mut().unwrap().steps = 25;
        j.schedule.as_mut().unwrap().faults.pop();
        let tl = expected_timeline(&j, &t);
        assert!(tl.faults[1].injected);
        j.schedule.as_mut().unwrap().steps = 20;
        let tl = expected_timeline(&j, &t);
        assert!(!tl.faults[1].injected && tl.faults[1].detect_s.is_none());
    }

    #[test]
    fn profile_validation_names_fields() {
        let mut t = timing();
        t.restart_s.mean = f64::NAN;
        let e = t.validate("profile").unwrap_err().to_string();
        assert!(e.contains("profile.restart_s.mean"), "{e}");
        let mut t = timing();
        t.hang_overshoot_s.mean = -0.2;
        t.validate("profile").unwrap();
        t.step_period_s = 0.0;
        assert!(t.validate("p").unwrap_err().to_string().contains("p.step_period_s"));
    }
}
