//! Calibration of the fault-run timing model from measured runs, and its prediction for a held-out fault schedule.
//!
//! The model knows the mechanism and fits what it cannot know. Known from the configuration: the detector's hang
//! threshold `max(hang_steps x period, HANG_FLOOR_S)` and the checkpoint interval. Fitted from measured
//! [`FaultRunReport`]s: the mean healthy step period, the checkpoint write cost, the start-up overhead, and distributions (mean, standard deviation, count) of the kill detection latency (seconds),
//! the hang detection overshoot beyond the threshold (seconds), the slow-rank detection latency (in steps at the
//! slow rank's pace, since the detector's window counts steps), and the restart overhead (verdict to the first
//! completed step, minus that step). The prediction replays a schedule through the simulator's phases (detect,
//! restart, lost work since the checkpoint, checkpointing):
//!
//! `wall = startup + steps x period + checkpoints x cost + sum_faults(detect + restart + lost x period)`,
//! `ETTR = steps x period / wall`,
//!
//! where `lost` is the number of steps completed since the last checkpoint when the verdict comes: the injection
//! step modulo the checkpoint interval, plus for a slow rank the (slowed) steps it kept completing while it was
//! being detected.
use super::{FaultRunConfig, FaultRunReport, HANG_FLOOR_S, Injection, ScheduledFault};
use serde::{Deserialize, Serialize};
use std::sync::atomic::AtomicBool;
use trainlab_core::Error;
use trainlab_core::profile::Provenance;

/// Mean, standard deviation and sample count of a fitted quantity (seconds or steps, as its field says).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fitted {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 with fewer than two samples).
    pub std: f64,
    /// Samples behind the fit.
    pub n: u32,
}

impl Fitted {
    fn of(xs: &[f64]) -> Fitted {
        if xs.is_empty() {
            return Fitted::default();
        }
        let s = trainlab_core::Summary::of(xs);
        Fitted {
            mean: s.mean,
            std: s.std,
            n: s.n as u32,
        }
    }
}

/// Timing parameters fitted from measured runs: the profile `trainlab calibrate --workload training-job` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Where and how it was measured.
    pub provenance: Provenance,
    /// Mean healthy step period, seconds (median over the fit runs).
    pub step_period_s: f64,
    /// Seconds per checkpoint write.
    pub checkpoint_cost_s: f64,
    /// Start-up overhead: spawning and connecting the workers before the first step, seconds.
    pub startup_s: f64,
    /// Detection latency of kills, seconds.
    pub detect_kill_s: Fitted,
    /// Hang detection latency beyond `max(hang_steps x mean step period, HANG_FLOOR_S)`, seconds. It can be negative:
    /// the detector arms its threshold on its own running median of the step period.
    pub hang_overshoot_s: Fitted,
    /// Detection latency of slow ranks, in steps at the slow rank's pace (`period x slowdown`).
    pub detect_slow_steps: Fitted,
    /// Restart overhead: verdict to the first completed step, minus one step period, seconds.
    pub restart_s: Fitted,
}

impl Calibration {
    /// The fitted quantity behind the detection latency of `what`.
    fn detect_fit(&self, what: Injection) -> &Fitted {
        match what {
            Injection::Kill => &self.detect_kill_s,
            Injection::Hang => &self.hang_overshoot_s,
            Injection::Slow(_) => &self.detect_slow_steps,
        }
    }

    /// Expected detection latency (seconds) of `what` in a run of `cfg` with healthy step `period`.
    pub fn detect_s(&self, what: Injection, cfg: &FaultRunConfig, period: f64) -> f64 {
        detect_at(what, cfg, period, self.detect_fit(what).mean)
    }
}

/// Detection latency (seconds, >= 0) of `what` when its fitted quantity ([`Calibration::detect_fit`]) is `v`: kill
/// seconds, hang seconds beyond the threshold, or slow steps.
fn detect_at(what: Injection, cfg: &FaultRunConfig, period: f64, v: f64) -> f64 {
    match what {
        Injection::Kill => v,
        Injection::Hang => (cfg.hang_steps * period).max(HANG_FLOOR_S) + v,
        Injection::Slow(x) => v * period * x.max(1.0),
    }
    .max(0.0)
}

/// Steps completed since the last checkpoint when the verdict on `f` comes `detect` seconds after its injection:
/// the injection step modulo the interval, plus for a slow rank the slowed steps it kept completing meanwhile
/// (checkpoints still commit).
fn steps_since_checkpoint(f: &ScheduledFault, every: u64, period: f64, detect: f64) -> f64 {
    let since = (f.at_step % every) as f64;
    match f.what {
        Injection::Slow(x) => (since + detect / (period * x.max(1.0))).floor() % every as f64,
        _ => since,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Fits a calibration from one or more measured runs.
pub fn fit(reports: &[(&FaultRunConfig, &FaultRunReport)], provenance: Provenance) -> Calibration {
    let period = median(reports.iter().map(|(_, r)| r.step_period_mean_s).collect());
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
                    Injection::Kill => kill.push(l),
                    Injection::Hang => hang.push(l - (cfg.hang_steps * p).max(HANG_FLOOR_S)),
                    Injection::Slow(s) if p > 0.0 => slow.push(l / (p * s.max(1.0))),
                    Injection::Slow(_) => {}
                }
            }
            if x.restart_s > 0.0 {
                restart.push((x.restart_s - p).max(0.0));
            }
        }
    }
    Calibration {
        provenance,
        step_period_s: period,
        checkpoint_cost_s: ckpt / nck.max(1.0),
        startup_s: median(startup),
        detect_kill_s: Fitted::of(&kill),
        hang_overshoot_s: Fitted::of(&hang),
        detect_slow_steps: Fitted::of(&slow),
        restart_s: Fitted::of(&restart),
    }
}

/// The predicted time budget of a run: its parts in seconds and the ETTR they give.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Prediction {
    /// Useful step time (steps x mean healthy period).
    pub useful_s: f64,
    /// Start-up overhead.
    pub startup_s: f64,
    /// Checkpoint writes.
    pub checkpoint_s: f64,
    /// Detection latencies.
    pub detect_s: f64,
    /// Restart overheads.
    pub restart_s: f64,
    /// Redone steps.
    pub lost_s: f64,
    /// `useful / wall`.
    pub ettr: f64,
}

impl Prediction {
    /// The predicted wall time.
    pub fn wall_s(&self) -> f64 {
        self.useful_s + self.startup_s + self.checkpoint_s + self.detect_s + self.restart_s + self.lost_s
    }
}

/// Predicted time budget of running `cfg` (its steps and fault schedule) with the calibrated fault timings. The
/// healthy step period is an input of the workload, not a fault parameter: pass the job's own (`Some`, e.g. the
/// held-out run's mean healthy step) or use the calibration run's (`None`).
pub fn predict(cal: &Calibration, cfg: &FaultRunConfig, step_period_s: Option<f64>) -> Prediction {
    let period = step_period_s.unwrap_or(cal.step_period_s);
    let every = cfg.checkpoint_every.max(1);
    let useful = cfg.steps as f64 * period;
    let mut p = Prediction {
        useful_s: useful,
        startup_s: cal.startup_s,
        checkpoint_s: (cfg.steps / every) as f64 * cal.checkpoint_cost_s,
        ..Prediction::default()
    };
    for f in &cfg.faults {
        let detect = cal.detect_s(f.what, cfg, period);
        p.detect_s += detect;
        p.restart_s += cal.restart_s.mean;
        p.lost_s += steps_since_checkpoint(f, every, period, detect) * period;
    }
    let wall = p.wall_s();
    p.ettr = if wall > 0.0 { p.useful_s / wall } else { 0.0 };
    p
}

/// The same budget read off a measured run (detection latencies, restart overheads and lost steps as measured);
/// its [`Prediction::wall_s`] differs from the measured wall time by what the model does not account for.
pub fn measured_budget(r: &FaultRunReport) -> Prediction {
    let period = r.step_period_mean_s;
    Prediction {
        useful_s: r.steps_done as f64 * period,
        startup_s: (r.startup_s - period).max(0.0),
        checkpoint_s: r.checkpoint_s,
        detect_s: r.records.iter().filter_map(|x| x.detection_latency_s).sum(),
        restart_s: r.records.iter().map(|x| (x.restart_s - period).max(0.0)).sum(),
        lost_s: r.records.iter().map(|x| x.lost_steps as f64).sum::<f64>() * period,
        ettr: r.ettr,
    }
}

/// A Monte Carlo interval of the replayed ETTR.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Mean over the replications.
    pub mean: f64,
    /// 2.5th percentile.
    pub low: f64,
    /// 97.5th percentile.
    pub high: f64,
}

/// Monte Carlo replay of `cfg`'s schedule: like [`predict`], but every fault's detection latency and restart
/// overhead is drawn from its fitted distribution (normal with the fitted mean and standard deviation, a latency
/// floored at zero), `reps` times with seeds derived from `seed`. The spread is what one run of this schedule may
/// show, given the latencies seen in the calibration run.
pub fn simulate(
    cal: &Calibration,
    cfg: &FaultRunConfig,
    step_period_s: Option<f64>,
    reps: u32,
    seed: trainlab_core::Seed,
) -> Interval {
    use rand_distr::{Distribution, StandardNormal};
    let period = step_period_s.unwrap_or(cal.step_period_s);
    let every = cfg.checkpoint_every.max(1);
    let base = predict(cal, cfg, Some(period));
    let fixed = base.useful_s + base.startup_s + base.checkpoint_s;
    let mut ettr: Vec<f64> = (0..reps.max(1))
        .map(|i| {
            let mut rng = seed.derive("c4-replay").index(u64::from(i)).rng();
            let mut draw = |d: &Fitted| -> f64 {
                let z: f64 = StandardNormal.sample(&mut rng);
                d.mean + d.std * z
            };
            let mut wall = fixed;
            for f in &cfg.faults {
                let detect = detect_at(f.what, cfg, period, draw(cal.detect_fit(f.what)));
                wall +=
                    detect + draw(&cal.restart_s).max(0.0) + steps_since_checkpoint(f, every, period, detect) * period;
            }
            if wall > 0.0 { base.useful_s / wall } else { 0.0 }
        })
        .collect();
    ettr.sort_by(f64::total_cmp);
    let q = |p: f64| ettr[((ettr.len() - 1) as f64 * p).round() as usize];
    Interval {
        mean: ettr.iter().sum::<f64>() / ettr.len() as f64,
        low: q(0.025),
        high: q(0.975),
    }
}

/// Predicted ETTR of running `cfg` with the calibrated timings (see [`predict`]).
pub fn predict_ettr(cal: &Calibration, cfg: &FaultRunConfig, step_period_s: Option<f64>) -> f64 {
    predict(cal, cfg, step_period_s).ettr
}

fn fault(at_step: u64, rank: usize, what: Injection) -> ScheduledFault {
    ScheduledFault { at_step, rank, what }
}

/// The fault schedule of the calibration run over `steps` steps: two kills, two hangs, a 1.5x and a 2x slow rank,
/// spread over the run and the ranks (`quick`: one of each kind).
pub fn fit_schedule(steps: u64, quick: bool) -> Vec<ScheduledFault> {
    let kinds: &[(Injection, usize)] = if quick {
        &[(Injection::Kill, 1), (Injection::Hang, 2), (Injection::Slow(2.0), 0)]
    } else {
        &[
            (Injection::Kill, 1),
            (Injection::Hang, 2),
            (Injection::Slow(1.5), 0),
            (Injection::Kill, 3),
            (Injection::Hang, 0),
            (Injection::Slow(2.0), 2),
        ]
    };
    spread(steps, kinds, 3)
}

/// The held-out schedule: the kinds in another order, at other ranks and other offsets from the checkpoints.
pub fn held_out_schedule(steps: u64, quick: bool) -> Vec<ScheduledFault> {
    let kinds: &[(Injection, usize)] = if quick {
        &[(Injection::Hang, 3), (Injection::Slow(1.5), 1), (Injection::Kill, 2)]
    } else {
        &[
            (Injection::Hang, 3),
            (Injection::Slow(2.0), 1),
            (Injection::Kill, 2),
            (Injection::Slow(1.5), 3),
            (Injection::Kill, 0),
        ]
    };
    spread(steps, kinds, 6)
}

fn spread(steps: u64, kinds: &[(Injection, usize)], offset: u64) -> Vec<ScheduledFault> {
    let n = kinds.len() as u64;
    kinds
        .iter()
        .enumerate()
        .map(|(i, &(what, rank))| fault(steps * (i as u64 + 1) / (n + 1) + offset, rank, what))
        .collect()
}

/// A calibration experiment: the fit run, the calibration, the held-out run and its prediction.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// The calibration run's configuration.
    pub fit_cfg: FaultRunConfig,
    /// The calibration run.
    pub fit_run: FaultRunReport,
    /// What was fitted.
    pub calibration: Calibration,
    /// The held-out run's configuration (another fault schedule).
    pub held_cfg: FaultRunConfig,
    /// The held-out run.
    pub held_run: FaultRunReport,
    /// The calibrated prediction of the held-out run (with its measured healthy step time as the workload's).
    pub prediction: Prediction,
    /// The Monte Carlo replay of the held-out schedule with the fitted latency distributions.
    pub interval: Interval,
}

impl Experiment {
    /// Predicted minus measured held-out ETTR, in percentage points.
    pub fn error_points(&self) -> f64 {
        100.0 * (self.prediction.ettr - self.held_run.ettr)
    }
}

/// Runs the calibration run (`base` with [`fit_schedule`]), fits, runs the held-out schedule and predicts it.
/// `base` supplies the worker executable, ranks, step compute and detector settings; `steps` is the length of each
/// run. `on_phase` is told when each run starts. Returns early with an error if a run is cancelled.
pub fn experiment(
    base: &FaultRunConfig,
    steps: u64,
    quick: bool,
    provenance: Provenance,
    cancel: &AtomicBool,
    mut on_phase: impl FnMut(&str),
) -> Result<Experiment, Error> {
    let run = |cfg: &FaultRunConfig| -> Result<FaultRunReport, Error> {
        let r = super::run(cfg, cancel)?;
        if r.interrupted {
            return Err(Error::Interrupted);
        }
        Ok(r)
    };
    let mut fit_cfg = base.clone();
    fit_cfg.steps = steps;
    fit_cfg.faults = fit_schedule(steps, quick);
    on_phase("calibration run");
    let fit_run = run(&fit_cfg)?;
    let calibration = fit(&[(&fit_cfg, &fit_run)], provenance);
    let mut held_cfg = base.clone();
    held_cfg.steps = steps;
    held_cfg.faults = held_out_schedule(steps, quick);
    on_phase("held-out run");
    let held_run = run(&held_cfg)?;
    let prediction = predict(&calibration, &held_cfg, Some(held_run.step_period_mean_s));
    let interval = simulate(
        &calibration,
        &held_cfg,
        Some(held_run.step_period_mean_s),
        2000,
        trainlab_core::Seed(0),
    );
    Ok(Experiment {
        fit_cfg,
        fit_run,
        calibration,
        held_cfg,
        held_run,
        prediction,
        interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faultrun::{FaultRecord, ScheduledFault};

    fn prov() -> Provenance {
        Provenance {
            date: "2026-11-27".into(),
            device: "test".into(),
            command: "test".into(),
            version: "0".into(),
            ..Default::default()
        }
    }

    fn record(what: Injection, at_step: u64, latency: f64, restart: f64) -> FaultRecord {
        FaultRecord {
            injected: Some(ScheduledFault { at_step, rank: 0, what }),
            detection_latency_s: Some(latency),
            verdict: Some("x".into()),
            localised: true,
            restart_s: restart,
            lost_steps: 0,
            measured_slowdown: None,
        }
    }

    /// A synthetic report whose wall time follows the model exactly is predicted exactly, and the fitted parameters
    /// are the ones it was built from.
    #[test]
    fn recovers_a_consistent_run() {
        let period = 0.2;
        let faults = vec![
            ScheduledFault {
                at_step: 23,
                rank: 1,
                what: Injection::Kill,
            },
            ScheduledFault {
                at_step: 67,
                rank: 2,
                what: Injection::Hang,
            },
            ScheduledFault {
                at_step: 81,
                rank: 0,
                what: Injection::Slow(2.0),
            },
        ];
        let cfg = FaultRunConfig::small(100, faults.clone());
        let d = |mean: f64, n: u32| Fitted { mean, std: 0.0, n };
        let cal_in = Calibration {
            provenance: prov(),
            step_period_s: period,
            checkpoint_cost_s: 0.01,
            startup_s: 0.3,
            detect_kill_s: d(0.05, 1),
            hang_overshoot_s: d(0.1, 1),
            detect_slow_steps: d(5.0, 1),
            restart_s: d(0.4, 3),
        };
        let p = predict(&cal_in, &cfg, None);
        // Hang threshold max(8 x 0.2, 1) = 1.6 s; slow detection 5 steps of 0.4 s = 2 s, 1 + 5 steps lost;
        // 3 + 7 + 6 steps lost in all; 10 checkpoints.
        let (hang, slow) = (1.6 + 0.1, 2.0);
        let wall = 0.3 + 100.0 * period + 10.0 * 0.01 + 0.05 + hang + slow + 3.0 * 0.4 + 16.0 * period;
        assert!((p.wall_s() - wall).abs() < 1e-9, "{p:?} vs {wall}");
        let report = FaultRunReport {
            records: vec![
                record(Injection::Kill, 23, 0.05, 0.4 + period),
                record(Injection::Hang, 67, hang, 0.4 + period),
                record(Injection::Slow(2.0), 81, slow, 0.4 + period),
            ],
            wall_s: wall,
            steps_done: 100,
            step_period_s: period * 0.9,
            step_period_mean_s: period,
            checkpoint_s: 10.0 * 0.01,
            startup_s: 0.3 + period,
            ettr: 100.0 * period / wall,
            ..FaultRunReport::default()
        };
        let cal = fit(&[(&cfg, &report)], prov());
        assert!(
            (cal.restart_s.mean - 0.4).abs() < 1e-9 && (cal.startup_s - 0.3).abs() < 1e-9,
            "{cal:?}"
        );
        assert!((cal.hang_overshoot_s.mean - 0.1).abs() < 1e-9 && (cal.detect_slow_steps.mean - 5.0).abs() < 1e-9);
        let e = predict_ettr(&cal, &cfg, Some(period));
        assert!((e - report.ettr).abs() < 1e-12, "{e} vs {}", report.ettr);
        // The Monte Carlo replay: exact without spread; with spread, an interval around the prediction.
        let seed = trainlab_core::Seed(3);
        let iv = simulate(&cal_in, &cfg, None, 200, seed);
        assert!((iv.mean - p.ettr).abs() < 1e-12 && iv.low == iv.high, "{iv:?}");
        let mut spread = cal_in.clone();
        spread.restart_s.std = 0.1;
        spread.hang_overshoot_s.std = 0.3;
        let iv = simulate(&spread, &cfg, None, 2000, seed);
        assert!(
            iv.low < p.ettr && p.ettr < iv.high && (iv.mean - p.ettr).abs() < 0.002,
            "{iv:?} vs {}",
            p.ettr
        );
        assert_eq!(
            iv,
            simulate(&spread, &cfg, None, 2000, seed),
            "deterministic for a seed"
        );
        // At another step period the hang threshold and the slow detection scale with it.
        assert!((cal.detect_s(Injection::Hang, &cfg, 0.1) - 1.1).abs() < 1e-9);
        assert!((cal.detect_s(Injection::Slow(1.5), &cfg, 0.1) - 0.75).abs() < 1e-9);
    }
}
