//! Monte Carlo replay of a scheduled job (the simulated backend's answer to a `training_job` with a `schedule`).
//!
//! Each replication walks the schedule through the one timeline of `trainlab_models::faultline`, with every
//! fault's handling drawn instead of taken at its expectation:
//! - calibrated (a [`FaultTiming`] profile): the kill latency, the hang overshoot beyond the threshold, the slow
//!   detection in slowed steps and the restart overhead are drawn from normals with the fitted means and standard
//!   deviations (latencies floored at zero): the spread one run of this schedule may show given the latencies seen
//!   in the calibration runs;
//! - uncalibrated: kills and hangs at their nominal latencies, restarts at the nominal overhead, and a slow rank's
//!   detection from the C4D detector itself, run on synthesised per-rank timestamps with the job's `jitter_cv`.
//!
//! In both, the detector is run on the hang snapshot and on the straggler to say whether its verdict names the
//! injected rank (`localised`); a kill is always localised (the process exit names it). Replication `i` uses the
//! seed [`replay_seed`]; replications run in parallel with results in order, so the answer is the same at any
//! thread count.
use super::Probe;
use rand::RngExt;
use rayon::prelude::*;
use trainlab_core::Seed;
use trainlab_core::seed::Rng;
use trainlab_core::workloads::training_job::{InjectedKind, ScheduledOutcome, TrainingJob};
use trainlab_models::faultline::{self, FaultTiming, Fitted, Handling, JobTiming, Timeline};

/// The seed of replication `i` of a scheduled job.
pub fn replay_seed(seed: Seed, i: u64) -> Seed {
    seed.derive("failures").derive("schedule").index(i)
}

fn draw(rng: &mut Rng, f: &Fitted) -> f64 {
    f.mean + f.std * super::normal(rng)
}

/// One replication of the scheduled `job` (validated, with a schedule) under timing `t`.
pub fn replay_once(job: &TrainingJob, t: &JobTiming, seed: Seed) -> Timeline {
    let Some(s) = &job.schedule else {
        return Timeline::default();
    };
    let mut rng = seed.rng();
    let mut probe = Probe::new(job, s.ranks, t.period_s);
    let give_up = s.slow_give_up_steps;
    faultline::replay(job, t, |_, f| {
        // The injected rank, if it is among the synthesised ones; else a random one of them stands in for it.
        let culprit = match usize::try_from(f.rank) {
            Ok(r) if r < probe.ranks() => r,
            _ => rng.random_range(0..probe.ranks()),
        };
        let restart_s = draw(&mut rng, &t.restart).max(0.0);
        match f.kind {
            InjectedKind::Kill => Handling {
                detect_s: t.detect_s(job, f, Some(draw(&mut rng, &t.kill)), give_up),
                restart_s,
                localised: Some(true),
            },
            InjectedKind::Hang => {
                let v = draw(&mut rng, &t.hang_overshoot);
                Handling {
                    detect_s: t.detect_s(job, f, Some(v), give_up),
                    restart_s,
                    localised: Some(probe.hang(&mut rng, culprit, false)),
                }
            }
            InjectedKind::Slow => {
                let x = f.factor();
                let probed = probe.slow(&mut rng, culprit, x, false);
                let steps = match t.slow_steps {
                    Some(fit) => Some(draw(&mut rng, &fit)),
                    None => probed.map(|(latency, _)| latency / (t.period_s * x)),
                };
                Handling {
                    detect_s: steps.and_then(|v| t.detect_s(job, f, Some(v), give_up)),
                    restart_s,
                    localised: probed.map(|(_, right)| right),
                }
            }
        }
    })
}

/// `reps` replications of the scheduled `job` with `fitted` timing (None: nominal), in replication order.
pub fn replay(job: &TrainingJob, fitted: Option<&FaultTiming>, seed: Seed, reps: u32) -> Vec<Timeline> {
    let t = JobTiming::of(job, fitted);
    (0..u64::from(reps))
        .into_par_iter()
        .map(|i| replay_once(job, &t, replay_seed(seed, i)))
        .collect()
}

/// The simulated answer to a scheduled job: `job.replications` replications summarised with 95% intervals.
pub fn answer(job: &TrainingJob, fitted: Option<&FaultTiming>, seed: Seed) -> ScheduledOutcome {
    faultline::summarize(&replay(job, fitted, seed, job.replications))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainlab_core::Workload;
    use trainlab_core::workloads::training_job::{
        CheckpointInterval, DetectionSpec, FaultSchedule, Policy, ScheduledFaultSpec,
    };

    fn job() -> TrainingJob {
        let fault = |at_step, rank, kind, slowdown| ScheduledFaultSpec {
            at_step,
            rank,
            kind,
            slowdown,
        };
        let j = TrainingJob {
            gpus: 0,
            gpus_per_node: 8,
            step_time_s: 0.07,
            horizon_days: 0.0,
            checkpoint_interval: CheckpointInterval::Seconds(0.0),
            checkpoint_cost_s: 0.005,
            restart_cost_s: 0.4,
            spare_nodes: None,
            repair_hours: 48.0,
            failures: vec![],
            lemon: None,
            policies: vec![Policy::C4d],
            detection: DetectionSpec {
                crash_detect_s: 0.02,
                c4d_hang_steps: 8.0,
                c4d_hang_min_s: 1.0,
                c4d_window_steps: 8,
                c4d_slow_threshold: 0.15,
                c4d_localise_s: 0.0,
                c4d_isolate_s: 0.0,
                ..DetectionSpec::default()
            },
            replications: 200,
            schedule: Some(FaultSchedule {
                ranks: 4,
                steps: 300,
                checkpoint_every_steps: 10,
                slow_give_up_steps: 40,
                faults: vec![
                    fault(40, 1, InjectedKind::Kill, None),
                    fault(120, 2, InjectedKind::Hang, None),
                    fault(200, 3, InjectedKind::Slow, Some(1.5)),
                ],
            }),
        };
        j.validate().unwrap();
        j
    }

    fn timing() -> FaultTiming {
        FaultTiming {
            step_time_s: 0.07,
            step_period_s: 0.08,
            checkpoint_cost_s: 0.004,
            startup_s: 0.3,
            detect_kill_s: Fitted {
                mean: 0.03,
                std: 0.01,
                n: 2,
            },
            hang_overshoot_s: Fitted {
                mean: 0.2,
                std: 0.3,
                n: 2,
            },
            detect_slow_steps: Fitted {
                mean: 9.0,
                std: 2.0,
                n: 2,
            },
            restart_s: Fitted {
                mean: 0.5,
                std: 0.1,
                n: 5,
            },
        }
    }

    /// Calibrated: the closed form's timeline (at the expected latencies) lies inside the band of single replayed
    /// runs and near their mean (not at it: lost steps wrap at checkpoints, so the mean of the timeline is not the
    /// timeline at the mean); without spread it is the closed form exactly; the same seed gives the same answer.
    #[test]
    fn calibrated_replay_brackets_the_expected_timeline() {
        let j = job();
        let cal = timing();
        let expected = faultline::expected(&j, Some(&cal)).ettr.mean;
        let mut runs: Vec<f64> = replay(&j, Some(&cal), Seed(5), 400)
            .iter()
            .map(Timeline::ettr)
            .collect();
        runs.sort_by(f64::total_cmp);
        let (lo, hi) = (runs[10], runs[389]);
        assert!(lo < expected && expected < hi, "{lo}..{hi} vs {expected}");
        let sim = answer(&j, Some(&cal), Seed(5));
        assert!((sim.ettr.mean - expected).abs() < 0.015, "{:?} vs {expected}", sim.ettr);
        assert_eq!(sim, answer(&j, Some(&cal), Seed(5)));
        let mut fixed = cal.clone();
        for f in [
            &mut fixed.detect_kill_s,
            &mut fixed.hang_overshoot_s,
            &mut fixed.detect_slow_steps,
            &mut fixed.restart_s,
        ] {
            f.std = 0.0;
        }
        let exact = answer(&j, Some(&fixed), Seed(5));
        assert!((exact.ettr.mean - faultline::expected(&j, Some(&fixed)).ettr.mean).abs() < 1e-12);
    }

    /// Uncalibrated: the detector on synthesised timestamps names the injected rank of the hang and of the 1.5x
    /// straggler, and finds the straggler within a step or two of the closed form's rule.
    #[test]
    fn uncalibrated_replay_uses_the_detector() {
        let j = job();
        let sim = answer(&j, None, Seed(9));
        let cf = faultline::expected(&j, None);
        for f in &sim.faults {
            assert_eq!(f.detected.mean, 1.0, "{f:?}");
            assert!(f.localised.is_some_and(|l| l.mean > 0.95), "{f:?}");
        }
        let (s, c) = (sim.faults[2].detect_s.unwrap(), cf.faults[2].detect_s.unwrap());
        let step = 0.07 * 1.5;
        assert!((s.mean - c.mean).abs() <= 2.0 * step, "{s:?} vs {c:?}");
        assert!(cf.faults[2].localised.is_none());
    }
}
