//! Calibration of the fault-handling timing ([`FaultTiming`]) from real fault-injection runs, and its check on a run
//! held out of the fit.
//!
//! [`calibrate`] runs a calibration job ([`fit_job`]: kills, hangs and slow ranks spread over the run and the ranks)
//! and a held-out job ([`held_out_job`]: the kinds in another order, at other ranks and other offsets from the
//! checkpoints), fits [`FaultTiming`] on the first ([`fit`]), and predicts the second with the analytical model of
//! `trainlab_models::faultline`, calibrated and uncalibrated, next to what was measured ([`held_out_table`]).
//!
//! What is fitted, from measured [`FaultRunReport`]s: the mean healthy step period (per nominal compute second), the
//! checkpoint write cost, the start-up overhead, and distributions (mean, standard deviation, count) of the kill
//! detection latency (seconds), the hang detection overshoot beyond the threshold
//! `max(c4d_hang_steps x period, c4d_hang_min_s)` (seconds), the slow-rank detection latency (in steps at the slow
//! rank's pace, since the detector's window counts steps), and the restart overhead (verdict to the first completed
//! step, minus that step). Only faults the detector localised enter the latency fits.
use super::{FaultRun, FaultRunConfig, FaultRunReport, scheduled_outcome, small_job};
use std::sync::atomic::AtomicBool;
use trainlab_core::workloads::training_job::{InjectedKind, ScheduledFaultSpec, TrainingJob};
use trainlab_core::{Error, Unit};
use trainlab_models::faultline::{self, FaultTiming, Fitted};

/// The median (`trainlab_core::stats`), 0 for no samples.
fn median(v: Vec<f64>) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        trainlab_core::stats::median(&v)
    }
}

/// Fits the fault-handling timing from one or more measured runs, each with the configuration it ran with.
pub fn fit(reports: &[(&FaultRunConfig, &FaultRunReport)]) -> FaultTiming {
    let period = median(reports.iter().map(|(_, r)| r.step_period_mean_s).collect());
    let compute = median(reports.iter().map(|(c, _)| c.compute_s).collect());
    let (mut kill, mut hang, mut slow, mut restart, mut startup) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut ckpt, mut nck) = (0.0, 0.0);
    for (cfg, r) in reports {
        let p = r.step_period_mean_s;
        ckpt += r.checkpoint_s;
        nck += (r.steps_done / cfg.checkpoint_every.max(1)) as f64;
        startup.push((r.startup_s - p).max(0.0));
        for x in &r.records {
            if let (Some(f), Some(l)) = (x.injected, x.detection_latency_s)
                && x.localised
            {
                match f.what {
                    super::Injection::Kill => kill.push(l),
                    super::Injection::Hang => hang.push(l - (cfg.hang_steps * p).max(cfg.hang_min_s)),
                    super::Injection::Slow(s) if p > 0.0 => slow.push(l / (p * s.max(1.0))),
                    super::Injection::Slow(_) => {}
                }
            }
            if x.restart_s > 0.0 {
                restart.push((x.restart_s - p).max(0.0));
            }
        }
    }
    FaultTiming {
        step_time_s: compute,
        step_period_s: period,
        checkpoint_cost_s: ckpt / nck.max(1.0),
        startup_s: median(startup),
        detect_kill_s: Fitted::of(&kill),
        hang_overshoot_s: Fitted::of(&hang),
        detect_slow_steps: Fitted::of(&slow),
        restart_s: Fitted::of(&restart),
    }
}

fn fault(at_step: u64, rank: u64, kind: InjectedKind, slowdown: Option<f64>) -> ScheduledFaultSpec {
    ScheduledFaultSpec {
        at_step,
        rank,
        kind,
        slowdown,
    }
}

fn spread(steps: u64, kinds: &[(InjectedKind, Option<f64>, u64)], offset: u64) -> Vec<ScheduledFaultSpec> {
    let n = kinds.len() as u64;
    kinds
        .iter()
        .enumerate()
        .map(|(i, &(kind, x, rank))| fault(steps * (i as u64 + 1) / (n + 1) + offset, rank, kind, x))
        .collect()
}

/// Steps of each calibration run (`quick`: 80).
pub fn steps(quick: bool) -> u64 {
    if quick { 80 } else { 200 }
}

/// The calibration job: 4 ranks; two kills, two hangs, a 1.5x and a 2x slow rank spread over the run and the ranks
/// (`quick`: one of each, 80 steps).
pub fn fit_job(quick: bool) -> TrainingJob {
    use InjectedKind::*;
    let kinds: &[(InjectedKind, Option<f64>, u64)] = if quick {
        &[(Kill, None, 1), (Hang, None, 2), (Slow, Some(2.0), 0)]
    } else {
        &[
            (Kill, None, 1),
            (Hang, None, 2),
            (Slow, Some(1.5), 0),
            (Kill, None, 3),
            (Hang, None, 0),
            (Slow, Some(2.0), 2),
        ]
    };
    small_job(4, steps(quick), spread(steps(quick), kinds, 3))
}

/// The held-out job: the kinds in another order, at other ranks and other offsets from the checkpoints.
pub fn held_out_job(quick: bool) -> TrainingJob {
    use InjectedKind::*;
    let kinds: &[(InjectedKind, Option<f64>, u64)] = if quick {
        &[(Hang, None, 3), (Slow, Some(1.5), 1), (Kill, None, 2)]
    } else {
        &[
            (Hang, None, 3),
            (Slow, Some(2.0), 1),
            (Kill, None, 2),
            (Slow, Some(1.5), 3),
            (Kill, None, 0),
        ]
    };
    small_job(4, steps(quick), spread(steps(quick), kinds, 6))
}

/// One metric of the held-out job: measured, predicted with the fitted timing, and predicted uncalibrated.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldOutRow {
    /// Metric name (`ettr`, `wall`, `fault.2.detect_s`...), as every backend reports it.
    pub metric: String,
    /// Its unit.
    pub unit: Unit,
    /// The real run's value.
    pub measured: f64,
    /// The analytical model's with the fitted timing.
    pub calibrated: f64,
    /// The analytical model's with nominal timing.
    pub uncalibrated: f64,
}

impl HeldOutRow {
    /// Calibrated minus measured.
    pub fn calibrated_error(&self) -> f64 {
        self.calibrated - self.measured
    }
    /// Uncalibrated minus measured.
    pub fn uncalibrated_error(&self) -> f64 {
        self.uncalibrated - self.measured
    }
}

/// The held-out table: every metric the real run of `job` and both predictions report, in the measured outcome's
/// order (ETTR, wall, useful, false alarms, then per fault detected, detection latency, restart, lost steps).
pub fn held_out_table(job: &TrainingJob, run: &FaultRunReport, timing: &FaultTiming) -> Vec<HeldOutRow> {
    let measured = scheduled_outcome(job, run).metrics();
    let cal = faultline::expected(job, Some(timing)).metrics();
    let uncal = faultline::expected(job, None).metrics();
    let find = |ms: &[trainlab_core::Metric], name: &str| ms.iter().find(|m| m.name == name).map(|m| m.value);
    measured
        .iter()
        .filter_map(|m| {
            Some(HeldOutRow {
                metric: m.name.clone(),
                unit: m.unit,
                measured: m.value,
                calibrated: find(&cal, &m.name)?,
                uncalibrated: find(&uncal, &m.name)?,
            })
        })
        .collect()
}

/// A calibration: the fitted timing, both runs, and the held-out table.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// The fitted timing (the profile's parameters).
    pub timing: FaultTiming,
    /// The calibration job.
    pub fit_job: TrainingJob,
    /// Its real run.
    pub fit_run: FaultRunReport,
    /// The held-out job.
    pub held_job: TrainingJob,
    /// Its real run.
    pub held_run: FaultRunReport,
    /// Measured vs calibrated vs uncalibrated, per metric of the held-out job.
    pub held_out: Vec<HeldOutRow>,
}

impl Calibration {
    /// The held-out row of `metric`.
    pub fn row(&self, metric: &str) -> Option<&HeldOutRow> {
        self.held_out.iter().find(|r| r.metric == metric)
    }
}

/// Runs the calibration job and the held-out job for real with `runner`'s workers, fits the timing on the first and
/// predicts the second. `on_phase` is told when each run starts, `on_run` gets each finished run (so a caller keeps
/// it if the next one is interrupted). An interrupted run is an error ([`Error::Interrupted`]).
pub fn calibrate(
    runner: &FaultRun,
    quick: bool,
    cancel: &AtomicBool,
    mut on_phase: impl FnMut(&str),
    mut on_run: impl FnMut(&str, &FaultRunReport),
) -> Result<Calibration, Error> {
    let run = |job: &TrainingJob| -> Result<(FaultRunConfig, FaultRunReport), Error> {
        let cfg = runner.config_for(job)?;
        let r = super::run(&cfg, cancel)?;
        if r.interrupted {
            return Err(Error::Interrupted);
        }
        Ok((cfg, r))
    };
    let fit_job = fit_job(quick);
    on_phase("calibration run");
    let (fit_cfg, fit_run) = run(&fit_job)?;
    on_run("calibration run", &fit_run);
    let timing = fit(&[(&fit_cfg, &fit_run)]);
    let held_job = held_out_job(quick);
    on_phase("held-out run");
    let (_, held_run) = run(&held_job)?;
    on_run("held-out run", &held_run);
    let held_out = held_out_table(&held_job, &held_run, &timing);
    Ok(Calibration {
        timing,
        fit_job,
        fit_run,
        held_job,
        held_run,
        held_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faultrun::{FaultRecord, Injection, ScheduledFault};
    use trainlab_core::Workload;
    use trainlab_models::faultline::{JobTiming, expected_timeline};

    /// A synthetic report of `job` whose every latency follows `truth` exactly (what a run on a machine with that
    /// timing would measure, without noise).
    fn report(job: &TrainingJob, truth: &FaultTiming) -> (FaultRunConfig, FaultRunReport) {
        let cfg = FaultRunConfig::for_job(job).unwrap();
        let t = JobTiming::of(job, Some(truth));
        let tl = expected_timeline(job, &t);
        let records = cfg
            .faults
            .iter()
            .zip(&tl.faults)
            .map(|(f, r)| FaultRecord {
                injected: Some(*f),
                detection_latency_s: r.detect_s,
                verdict: Some("x".into()),
                localised: true,
                restart_s: r.restart_s + t.period_s,
                lost_steps: r.lost_steps,
                measured_slowdown: None,
            })
            .collect();
        let s = job.schedule.as_ref().unwrap();
        let report = FaultRunReport {
            records,
            wall_s: tl.wall_s,
            steps_done: s.steps,
            step_period_s: t.period_s,
            step_period_mean_s: t.period_s,
            checkpoint_s: (s.steps / s.checkpoint_every_steps) as f64 * t.checkpoint_s,
            startup_s: t.startup_s + t.period_s,
            ettr: tl.ettr(),
            ..FaultRunReport::default()
        };
        (cfg, report)
    }

    fn truth() -> FaultTiming {
        // A machine slower than the nominal guesses: steps 30% over their compute, slow restarts, hangs found a
        // little late, stragglers after 9 slowed steps.
        FaultTiming {
            step_time_s: 0.06,
            step_period_s: 0.078,
            checkpoint_cost_s: 0.004,
            startup_s: 0.45,
            detect_kill_s: Fitted {
                mean: 0.03,
                std: 0.0,
                n: 2,
            },
            hang_overshoot_s: Fitted {
                mean: 0.15,
                std: 0.0,
                n: 2,
            },
            detect_slow_steps: Fitted {
                mean: 9.0,
                std: 0.0,
                n: 2,
            },
            restart_s: Fitted {
                mean: 0.6,
                std: 0.0,
                n: 5,
            },
        }
    }

    /// Fitting a run that follows a timing recovers it, and the held-out job is then predicted exactly.
    #[test]
    fn recovers_a_consistent_run() {
        let job = fit_job(false);
        job.validate().unwrap();
        let (cfg, r) = report(&job, &truth());
        let fitted = fit(&[(&cfg, &r)]);
        let t = truth();
        for (a, b) in [
            (fitted.step_period_s, t.step_period_s),
            (fitted.step_time_s, t.step_time_s),
            (fitted.startup_s, t.startup_s),
            (fitted.checkpoint_cost_s, t.checkpoint_cost_s),
            (fitted.detect_kill_s.mean, t.detect_kill_s.mean),
            (fitted.hang_overshoot_s.mean, t.hang_overshoot_s.mean),
            (fitted.detect_slow_steps.mean, t.detect_slow_steps.mean),
            (fitted.restart_s.mean, t.restart_s.mean),
        ] {
            assert!((a - b).abs() < 1e-9, "{fitted:?}");
        }
        let held = held_out_job(false);
        let (_, hr) = report(&held, &truth());
        for row in held_out_table(&held, &hr, &fitted) {
            assert!(row.calibrated_error().abs() < 1e-9, "{row:?}");
        }
    }

    /// The acceptance check on recorded runs: calibrated and uncalibrated predictions of the held-out job differ,
    /// and the calibrated one is closer to what was measured, for ETTR, wall time and every fault's detection.
    #[test]
    fn calibrated_beats_uncalibrated_on_held_out_run() {
        for quick in [true, false] {
            let (cfg, r) = report(&fit_job(quick), &truth());
            let fitted = fit(&[(&cfg, &r)]);
            let held = held_out_job(quick);
            let (_, mut hr) = report(&held, &truth());
            // The held-out run is noisier than the model: perturb what was measured.
            hr.wall_s *= 1.02;
            hr.ettr = hr.steps_done as f64 * hr.step_period_mean_s / hr.wall_s;
            for (i, x) in hr.records.iter_mut().enumerate() {
                x.detection_latency_s = x.detection_latency_s.map(|l| l * (1.0 + 0.03 * (i as f64 - 1.0)));
            }
            let table = held_out_table(&held, &hr, &fitted);
            let n_faults = held.schedule.as_ref().unwrap().faults.len();
            let mut names = vec!["ettr".to_string(), "wall".to_string()];
            names.extend((0..n_faults).map(|i| format!("fault.{i}.detect_s")));
            for name in names {
                let row = table
                    .iter()
                    .find(|r| r.metric == name)
                    .unwrap_or_else(|| panic!("{name}: {table:?}"));
                assert!(row.calibrated != row.uncalibrated, "{row:?}");
                assert!(row.calibrated_error().abs() < row.uncalibrated_error().abs(), "{row:?}");
            }
        }
    }

    /// The scheduled faults of the calibration jobs are what the real run injects.
    #[test]
    fn jobs_map_to_run_configs() {
        let cfg = FaultRunConfig::for_job(&held_out_job(true)).unwrap();
        assert_eq!(cfg.steps, 80);
        assert_eq!(
            cfg.faults,
            vec![
                ScheduledFault {
                    at_step: 26,
                    rank: 3,
                    what: Injection::Hang
                },
                ScheduledFault {
                    at_step: 46,
                    rank: 1,
                    what: Injection::Slow(1.5)
                },
                ScheduledFault {
                    at_step: 66,
                    rank: 2,
                    what: Injection::Kill
                },
            ]
        );
        assert_eq!((cfg.window, cfg.warmup_steps, cfg.spares), (8, 10, 3));
    }
}
