//! Closed-form expected ETTR of a training job under failures (the analytical backend of
//! [`TrainingJob`](trainlab_core::workloads::TrainingJob)).
//!
//! Model (the same assumptions as the simulator in `trainlab_sim::failures`):
//! - Interrupting faults (fail-stop, hang) form a Poisson process in wall-clock time with rate
//!   `lambda = sum_i rate_i * components_i` (failure rate scaling linearly with node count, Kokolis et al. 2024:
//!   `MTTF = 1 / (N_nodes r_f)`). Weibull entries enter with their mean rate (Palm-Khintchine: a superposition of many
//!   renewal processes is asymptotically Poisson).
//! - Work proceeds in segments of `tau` compute seconds followed by a `delta`-second checkpoint; a fault at up-time
//!   `x` into a segment loses `x`, then a down episode of fixed phase durations `D` (detect + localise + isolate +
//!   restart) follows. A fault during a down episode starts its own phases afresh.
//! - Expected down episode (random `D` drawn by rate): `E[L] = E[1 - e^{-lambda D}] / (lambda E[e^{-lambda D}])`.
//!   Expected wall time per completed segment (renewal argument, as in Daly 2006 eq. 13):
//!   `E[T] = (e^{lambda s} - 1)(1/lambda + E[L])`, `s = tau + delta`; ETTR = `tau / E[T]`. This is exact for
//!   exponential fail-stop and hang faults with fixed phase durations.
//! - Slow faults (stragglers) are added to first order: each costs the progress lost while running slow until it
//!   is detected and localised, a checkpoint, isolation and restart: `ETTR *= 1 - lambda_slow c_slow`.
//!
//! The downtime breakdown by phase and by class is first order (expected cost per fault times expected faults) and
//! rescaled so that it sums to `1 - ETTR`.
//!
//! A job with an explicit fault schedule instead of rates is answered by the timeline of [`crate::faultline`].
use trainlab_core::workloads::training_job::{
    CheckpointInterval, CheckpointRule, Estimate, FaultKind, Phase, Policy, PolicyOutcome, TrainingJob,
    TrainingJobOutcome,
};
use trainlab_core::{Backend, Error, Fidelity, RunCtx};

/// The checkpoint interval of `job` in seconds of compute: the given value, or Daly's optimum (Daly 2006, eq. 37) for
/// the job's MTTF over interrupting faults and the checkpoint cost (at least one step; the whole horizon when no
/// interrupting fault can happen).
pub fn checkpoint_interval_s(job: &TrainingJob) -> f64 {
    match job.checkpoint_interval {
        CheckpointInterval::Seconds(s) => s,
        CheckpointInterval::Rule(CheckpointRule::YoungDaly) => {
            let rate = job.interrupt_rate_per_s();
            if rate <= 0.0 {
                return job.horizon_s().max(1.0);
            }
            daly_interval(job.checkpoint_cost_s, 1.0 / rate).max(job.step_time_s)
        }
    }
}

/// Daly's higher-order optimal checkpoint interval (compute seconds) for write cost `delta` and MTTF `m`
/// (Daly, FGCS 22(3), 2006): `sqrt(2 delta m)[1 + sqrt(delta/(2m))/3 + delta/(18 m)] - delta` for `delta < 2m`, else
/// `m`.
pub fn daly_interval(delta: f64, m: f64) -> f64 {
    if delta <= 0.0 {
        return 0.0;
    }
    if delta >= 2.0 * m {
        return m;
    }
    let x = delta / (2.0 * m);
    (2.0 * delta * m).sqrt() * (1.0 + x.sqrt() / 3.0 + x / 9.0) - delta
}

/// Young's first-order optimal interval `sqrt(2 delta m)` (Young, CACM 17(9), 1974).
pub fn young_interval(delta: f64, m: f64) -> f64 {
    (2.0 * delta * m).sqrt()
}
pub use crate::faultline::FaultTiming;

/// Expected phase durations of one fault under one policy, seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultCost {
    /// From the fault to its detection (for slow faults: wall time running slow before detection).
    pub detect_s: f64,
    /// Localisation (for slow faults: wall time running slow while localising).
    pub localise_s: f64,
    /// Isolation (0 when the fault needs no node replacement).
    pub isolate_s: f64,
    /// Restart.
    pub restart_s: f64,
}

impl FaultCost {
    /// Down time of an interrupting fault: detect + localise + isolate + restart.
    pub fn down_s(&self) -> f64 {
        self.detect_s + self.localise_s + self.isolate_s + self.restart_s
    }
}

/// Expected phase durations of a fault of `kind` from a class that does (`replace`) or does not need a node swap,
/// under `policy`. For C4D hangs the latency is the hang threshold less half a step on average (the last collective
/// completed up to one step before the fault); for C4D stragglers it is the window of `W` slowed steps plus half a
/// step. These are the expectations of the simulator's mechanism, not independent guesses.
pub fn fault_cost(job: &TrainingJob, kind: FaultKind, replace: bool, slowdown: f64, policy: Policy) -> FaultCost {
    let d = &job.detection;
    let step = job.step_time_s;
    let (detect_s, localise_s, isolate_s) = match (policy, kind) {
        (Policy::Baseline, FaultKind::FailStop) => {
            (d.crash_detect_s, d.baseline_localise_crash_s, d.baseline_isolate_s)
        }
        (Policy::Baseline, FaultKind::Hang) => (d.hang_timeout_s, d.baseline_localise_hang_s, d.baseline_isolate_s),
        (Policy::Baseline, FaultKind::Slow) => (
            d.baseline_slow_detect_s,
            d.baseline_localise_slow_s,
            d.baseline_isolate_s,
        ),
        (Policy::C4d, FaultKind::FailStop) => (d.crash_detect_s, d.c4d_localise_s, d.c4d_isolate_s),
        (Policy::C4d, FaultKind::Hang) => (
            (d.c4d_hang_s(step) - 0.5 * step).max(0.0),
            d.c4d_localise_s,
            d.c4d_isolate_s,
        ),
        (Policy::C4d, FaultKind::Slow) => (
            (d.c4d_window_steps as f64 + 0.5) * step * slowdown,
            d.c4d_localise_s,
            d.c4d_isolate_s,
        ),
    };
    FaultCost {
        detect_s,
        localise_s,
        isolate_s: if replace { isolate_s } else { 0.0 },
        restart_s: job.restart_cost_s,
    }
}

/// Expected ETTR and breakdown of one policy, closed form. `job` must be validated.
pub fn expected(job: &TrainingJob, policy: Policy) -> PolicyOutcome {
    let h = job.horizon_s();
    let tau = checkpoint_interval_s(job);
    let delta = job.checkpoint_cost_s;
    let s = tau + delta;
    // Interrupting faults: rate-weighted down times.
    let mut lam = 0.0;
    let mut e_one_minus = 0.0; // sum_i lam_i (1 - e^{-lam D_i})
    let mut e_exp = 0.0; // sum_i lam_i e^{-lam D_i}
    let lam_total = job.interrupt_rate_per_s();
    let mut slow_loss_rate = 0.0; // fraction of wall time lost to slow faults (first order)
    let mut per_class: Vec<(trainlab_core::workloads::FaultClass, [f64; 6], f64)> = Vec::new();
    let lost_per_fault = if lam_total > 0.0 {
        // E[x | x < s] for x ~ Exp(lam): 1/lam - s e^{-lam s} / (1 - e^{-lam s}).
        let q = (-lam_total * s).exp();
        1.0 / lam_total - s * q / (1.0 - q)
    } else {
        0.0
    };
    for f in &job.failures {
        let li = job.entry_rate_per_s(f);
        if li <= 0.0 {
            continue;
        }
        let c = fault_cost(job, f.kind, f.class.needs_replacement(), f.slowdown, policy);
        let mut phases = [0.0; 6];
        if f.kind == FaultKind::Slow {
            let lossf = 1.0 - 1.0 / f.slowdown;
            phases[Phase::Detect.index()] = c.detect_s * lossf;
            phases[Phase::Localise.index()] = c.localise_s * lossf;
            phases[Phase::Isolate.index()] = c.isolate_s;
            phases[Phase::Restart.index()] = c.restart_s;
            phases[Phase::Checkpointing.index()] = delta;
            slow_loss_rate += li * phases.iter().sum::<f64>();
        } else {
            lam += li;
            let dn = c.down_s();
            e_one_minus += li * (1.0 - (-lam_total * dn).exp());
            e_exp += li * (-lam_total * dn).exp();
            phases[Phase::Detect.index()] = c.detect_s;
            phases[Phase::Localise.index()] = c.localise_s;
            phases[Phase::Isolate.index()] = c.isolate_s;
            phases[Phase::Restart.index()] = c.restart_s;
            phases[Phase::LostWork.index()] = lost_per_fault;
        }
        match per_class.iter_mut().find(|(k, _, _)| *k == f.class) {
            Some((_, p, r)) => {
                for (a, b) in p.iter_mut().zip(phases) {
                    *a += li * b;
                }
                *r += li;
            }
            None => per_class.push((f.class, phases.map(|x| x * li), li)),
        }
    }
    let ettr_interrupt = if lam > 0.0 {
        // E[L] = E[1 - e^{-lam D}] / (lam E[e^{-lam D}]), the expectations weighted by rate (weights sum to lam).
        let e_l = e_one_minus / (lam * e_exp);
        let e_t = ((lam * s).exp() - 1.0) * (1.0 / lam + e_l);
        tau / e_t
    } else {
        tau / s
    };
    let ettr = (ettr_interrupt * (1.0 - slow_loss_rate)).clamp(0.0, 1.0);
    // Breakdown: first-order per-phase totals, rescaled to 1 - ETTR.
    let mut by_phase = [0.0; 6];
    let ckpt_rate = ettr / tau.max(f64::MIN_POSITIVE) * delta; // checkpoints per useful second x cost
    for (_, p, _) in &per_class {
        for (a, b) in by_phase.iter_mut().zip(p) {
            *a += b;
        }
    }
    by_phase[Phase::Checkpointing.index()] += ckpt_rate;
    let raw: f64 = by_phase.iter().sum();
    let scale = if raw > 0.0 { (1.0 - ettr) / raw } else { 0.0 };
    let downtime_by_phase = Phase::ALL
        .iter()
        .map(|p| (*p, Estimate::exact(by_phase[p.index()] * scale)))
        .collect();
    let downtime_by_class = per_class
        .iter()
        .map(|(c, p, _)| {
            let v: f64 = p.iter().sum::<f64>() - p[Phase::Checkpointing.index()];
            (*c, Estimate::exact(v * scale))
        })
        .collect();
    let interruptions_by_class: Vec<_> = per_class.iter().map(|(c, _, r)| (*c, Estimate::exact(r * h))).collect();
    let total_rate: f64 = per_class.iter().map(|(_, _, r)| r).sum();
    let det: f64 = job
        .failures
        .iter()
        .map(|f| {
            let li = job.entry_rate_per_s(f);
            li * fault_cost(job, f.kind, f.class.needs_replacement(), f.slowdown, policy).detect_s
        })
        .sum::<f64>()
        / total_rate.max(f64::MIN_POSITIVE);
    PolicyOutcome {
        policy,
        ettr: Estimate::exact(ettr),
        downtime_by_phase,
        downtime_by_class,
        interruptions: Estimate::exact(total_rate * h),
        interruptions_by_class,
        gpu_hours_lost: Estimate::exact((1.0 - ettr) * job.gpus as f64 * h / 3600.0),
        detection_latency_s: Estimate::exact(det),
        localisation_accuracy: Estimate::exact(1.0),
    }
}

/// A 95% interval of the ETTR of one run of `job` whose expected outcome under a policy is `o`: the spread of the
/// Poisson count of faults over the run. The fault-driven downtime (everything but checkpoint writes, a fraction
/// `1 - ETTR - c` of wall time) scales with the count `N ~ Poisson(Lambda)` while checkpointing (`c`) does not:
/// `ETTR_N = ETTR / (ETTR + c + (1 - ETTR - c) N / Lambda)`, at the 2.5% and 97.5% quantiles of `N`. Each fault's cost
/// is held at its mean, so the interval is that of the count only (the dominant term when a run sees tens of faults
/// or more; narrower than the truth for a run expecting only a few). Returns `(low, high)`.
pub fn ettr_interval(o: &PolicyOutcome) -> (f64, f64) {
    let e = o.ettr.mean;
    let lambda = o.interruptions.mean;
    let c = o
        .downtime_by_phase
        .iter()
        .find(|(p, _)| *p == Phase::Checkpointing)
        .map_or(0.0, |(_, x)| x.mean);
    let f = (1.0 - e - c).max(0.0);
    if !(lambda > 0.0 && lambda.is_finite() && e > 0.0) || f == 0.0 {
        return (e, e);
    }
    use statrs::distribution::{DiscreteCDF, Poisson};
    let Ok(n) = Poisson::new(lambda) else {
        return (e, e);
    };
    let at = |k: u64| e / (e + c + f * k as f64 / lambda);
    // More faults, lower ETTR.
    (at(n.inverse_cdf(0.975)), at(n.inverse_cdf(0.025)))
}

/// The closed-form backend (`Fidelity::Analytical`, name `young-daly`): the renewal-reward model above for a job
/// with failure rates, the expected timeline of [`crate::faultline`] for a scheduled job.
#[derive(Debug, Default, Clone)]
pub struct ReliabilityModel {
    /// Fitted fault-handling timing for scheduled jobs (a calibrated `training_job` profile); `None`: nominal values
    /// from the workload ([`crate::faultline::JobTiming::of`]). A rate-based job is always answered from its own
    /// fields: the profile describes fault handling on the machine it was measured on, not a production cluster.
    pub timing: Option<FaultTiming>,
}

impl ReliabilityModel {
    /// The model with a fitted profile (`None`: uncalibrated).
    pub fn new(timing: Option<FaultTiming>) -> Self {
        ReliabilityModel { timing }
    }
}

impl Backend<TrainingJob> for ReliabilityModel {
    fn name(&self) -> &str {
        "young-daly"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, job: &TrainingJob, _ctx: &mut RunCtx) -> Result<TrainingJobOutcome, Error> {
        use trainlab_core::Workload;
        job.validate()?;
        if job.schedule.is_some() {
            if let Some(t) = &self.timing {
                t.validate("profile")?;
            }
            return Ok(TrainingJobOutcome {
                policies: vec![],
                scheduled: Some(crate::faultline::expected(job, self.timing.as_ref())),
            });
        }
        Ok(TrainingJobOutcome {
            policies: job.policies.iter().map(|p| expected(job, *p)).collect(),
            scheduled: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainlab_core::workloads::training_job::{CheckpointInterval, DetectionSpec, FailureSpec, FaultClass};

    pub(crate) fn job(rate: f64, tau: f64) -> TrainingJob {
        TrainingJob {
            gpus: 16_384,
            gpus_per_node: 8,
            step_time_s: 10.0,
            horizon_days: 54.0,
            checkpoint_interval: CheckpointInterval::Seconds(tau),
            checkpoint_cost_s: 60.0,
            restart_cost_s: 300.0,
            spare_nodes: None,
            repair_hours: 48.0,
            failures: vec![FailureSpec {
                class: FaultClass::Gpu,
                kind: FaultKind::FailStop,
                rate_per_component_hour: rate,
                scope: None,
                weibull_shape: None,
                slowdown: 1.5,
            }],
            lemon: None,
            policies: vec![Policy::Baseline, Policy::C4d],
            detection: DetectionSpec::default(),
            replications: 8,
            schedule: None,
        }
    }

    #[test]
    fn matches_first_order_waste_for_rare_failures() {
        // First-order waste delta/s + lambda (s/2 + D) (Young 1974) when lambda s << 1.
        let j = job(1e-8, 1800.0);
        let o = expected(&j, Policy::C4d);
        let lam = j.interrupt_rate_per_s();
        let c = fault_cost(&j, FaultKind::FailStop, true, 1.5, Policy::C4d);
        let s = 1860.0;
        let waste = 60.0 / s + lam * (s / 2.0 + c.down_s());
        assert!(
            ((1.0 - o.ettr.mean) - waste).abs() < 1e-3 * waste,
            "{} vs {waste}",
            1.0 - o.ettr.mean
        );
    }

    #[test]
    fn breakdown_sums_to_loss_and_c4d_wins() {
        let j = job(4.7e-4 / 24.0, 1800.0);
        let b = expected(&j, Policy::Baseline);
        let c = expected(&j, Policy::C4d);
        assert!(c.ettr.mean > b.ettr.mean);
        let sum: f64 = c.downtime_by_phase.iter().map(|(_, e)| e.mean).sum();
        assert!((sum - (1.0 - c.ettr.mean)).abs() < 1e-9);
        // Llama 3 scale: 16,384 GPUs at 4.7e-4 failures per GPU-day ~ 415 interruptions in 54 days.
        assert!((c.interruptions.mean - 415.9).abs() < 1.0, "{}", c.interruptions.mean);
    }

    #[test]
    fn ettr_interval_brackets_the_mean_and_narrows_with_more_faults() {
        let j = job(1e-5, 3600.0);
        let o = expected(&j, Policy::C4d);
        let (lo, hi) = ettr_interval(&o);
        assert!(lo < o.ettr.mean && o.ettr.mean < hi, "{lo} {} {hi}", o.ettr.mean);
        // Ten times the horizon: ten times the faults, a relatively narrower interval of the same mean.
        let mut long = j.clone();
        long.horizon_days *= 10.0;
        let ol = expected(&long, Policy::C4d);
        let (l2, h2) = ettr_interval(&ol);
        assert!((ol.ettr.mean - o.ettr.mean).abs() < 1e-9);
        assert!(h2 - l2 < 0.5 * (hi - lo), "{} vs {}", h2 - l2, hi - lo);
        // The relative half-width of the fault-driven downtime is about 1.96 / sqrt(Lambda) (normal limit).
        let lambda = o.interruptions.mean;
        assert!(lambda > 50.0, "{lambda}");
        // 1/ETTR - 1 is the downtime per useful second; its fault-driven part f/e spreads with the count.
        let e = o.ettr.mean;
        let c = o
            .downtime_by_phase
            .iter()
            .find(|(p, _)| *p == Phase::Checkpointing)
            .unwrap()
            .1
            .mean;
        let f = 1.0 - e - c;
        let half = (1.0 / lo - 1.0 / hi) / 2.0 / (f / e);
        assert!(
            (half / (1.96 / lambda.sqrt()) - 1.0).abs() < 0.1,
            "{half} vs {}",
            1.96 / lambda.sqrt()
        );
    }

    #[test]
    fn daly_interval_is_near_optimal() {
        // ETTR at the Young/Daly interval beats intervals 2x shorter or longer.
        let mut j = job(4.7e-4 / 24.0, 1800.0);
        j.checkpoint_interval = CheckpointInterval::Rule(CheckpointRule::YoungDaly);
        let t = checkpoint_interval_s(&j);
        let e = expected(&j, Policy::C4d).ettr.mean;
        for f in [0.5, 2.0] {
            j.checkpoint_interval = CheckpointInterval::Seconds(t * f);
            assert!(expected(&j, Policy::C4d).ettr.mean < e);
        }
    }

    #[test]
    fn daly_close_to_young_for_small_delta() {
        let m = 185.6 * 60.0;
        let y = young_interval(60.0, m);
        let d = daly_interval(60.0, m);
        assert!((y / 60.0 - 19.3).abs() < 0.1, "{}", y / 60.0);
        assert!((d - y).abs() / y < 0.05);
        assert_eq!(daly_interval(10.0, 4.0), 4.0);
        assert_eq!(daly_interval(0.0, 4.0), 0.0);
    }
}
