use super::*;
use trainlab_core::workloads::training_job::{CheckpointInterval, DetectionSpec, FailureSpec};

fn spec(class: FaultClass, kind: FaultKind, rate: f64) -> FailureSpec {
    FailureSpec {
        class,
        kind,
        rate_per_component_hour: rate,
        scope: None,
        weibull_shape: None,
        slowdown: 1.5,
    }
}

fn job(failures: Vec<FailureSpec>) -> TrainingJob {
    TrainingJob {
        gpus: 1024,
        gpus_per_node: 8,
        step_time_s: 10.0,
        horizon_days: 30.0,
        checkpoint_interval: CheckpointInterval::Seconds(3600.0),
        checkpoint_cost_s: 60.0,
        restart_cost_s: 600.0,
        spare_nodes: None,
        repair_hours: 48.0,
        failures,
        lemon: None,
        policies: vec![Policy::Baseline, Policy::C4d],
        detection: DetectionSpec::default(),
        replications: 200,
    }
}

/// Exponential fail-stop faults only: the simulated mean ETTR agrees with the closed form (renewal-reward, exact
/// for this case) within the Monte Carlo 95% interval, for both policies.
#[test]
fn ettr_agrees_with_closed_form() {
    // 1024 GPUs at 3e-4 faults per GPU-hour: MTTF ~ 3.3 h, ~220 interruptions in 30 days.
    let j = job(vec![spec(FaultClass::Gpu, FaultKind::FailStop, 3e-4)]);
    for p in [Policy::Baseline, Policy::C4d] {
        let reps = simulate(&j, p, Seed(7), 400);
        let s = summarize(&j, p, &reps);
        let cf = trainlab_models::reliability::expected(&j, p).ettr.mean;
        let half = (s.ettr.high - s.ettr.low) / 2.0;
        // Edge effects of a finite horizon are O(segment / horizon); allow them on top of the interval.
        let edge = 3600.0 / j.horizon_s();
        assert!(
            (s.ettr.mean - cf).abs() <= half + edge * 0.1,
            "{p:?}: simulated {} +- {half} vs closed form {cf}",
            s.ettr.mean
        );
        // Every phase sums to the loss.
        for r in &reps {
            let lost: f64 = r.phase_s.iter().sum::<f64>() / j.horizon_s();
            assert!((lost - (1.0 - r.ettr)).abs() < 1e-9);
        }
    }
}

/// Simulated fault counts per entry pass a chi-squared test against the configured rates (wall-clock Poisson).
#[test]
fn fault_counts_pass_chi_squared() {
    use statrs::distribution::{ChiSquared, ContinuousCDF};
    let j = job(vec![
        spec(FaultClass::Gpu, FaultKind::FailStop, 2e-4),
        spec(FaultClass::Hbm, FaultKind::Hang, 1e-4),
        spec(FaultClass::Nic, FaultKind::Hang, 3e-5),
        spec(FaultClass::Host, FaultKind::FailStop, 4e-4),
        spec(FaultClass::Software, FaultKind::FailStop, 2e-4),
    ]);
    let reps = simulate(&j, Policy::C4d, Seed(11), 60);
    let h = j.horizon_s();
    let mut chi2 = 0.0;
    for (i, f) in j.failures.iter().enumerate() {
        let expected = j.entry_rate_per_s(f) * h * reps.len() as f64;
        let observed: u64 = reps.iter().map(|r| r.faults_per_entry[i]).sum();
        chi2 += (observed as f64 - expected).powi(2) / expected;
    }
    // Counts are independent Poisson with known means: chi2 with k degrees of freedom.
    let p = 1.0 - ChiSquared::new(j.failures.len() as f64).unwrap().cdf(chi2);
    assert!(p > 0.001, "chi2 = {chi2}, p = {p}");
}

#[test]
fn deterministic_at_any_thread_count() {
    let j = job(vec![
        spec(FaultClass::Gpu, FaultKind::FailStop, 2e-4),
        spec(FaultClass::Gpu, FaultKind::Slow, 5e-5),
        spec(FaultClass::Nic, FaultKind::Hang, 5e-5),
    ]);
    let a = simulate(&j, Policy::C4d, Seed(3), 16);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let b = pool.install(|| simulate(&j, Policy::C4d, Seed(3), 16));
    assert_eq!(a, b);
}

/// Hangs and stragglers: C4D detects them in seconds to minutes with the detector naming the right rank, and
/// recovers most of the baseline's loss.
#[test]
fn c4d_detects_and_saves() {
    let mut j = job(vec![
        spec(FaultClass::Gpu, FaultKind::Hang, 1e-4),
        spec(FaultClass::SwitchCable, FaultKind::Hang, 4e-4),
        spec(FaultClass::Gpu, FaultKind::Slow, 5e-5),
    ]);
    j.replications = 16;
    let b = summarize(&j, Policy::Baseline, &simulate(&j, Policy::Baseline, Seed(5), 16));
    let c = summarize(&j, Policy::C4d, &simulate(&j, Policy::C4d, Seed(5), 16));
    assert!(c.ettr.mean > b.ettr.mean + 0.1, "c4d {} baseline {}", c.ettr.mean, b.ettr.mean);
    assert!(c.detection_latency_s.mean < 120.0, "{}", c.detection_latency_s.mean);
    assert!(c.localisation_accuracy.mean > 0.95, "{}", c.localisation_accuracy.mean);
    let ca = trainlab_models::reliability::expected(&j, Policy::C4d).ettr.mean;
    assert!((c.ettr.mean - ca).abs() < 0.01, "sim {} analytical {ca}", c.ettr.mean);
}

/// A limited spare pool with long repairs makes the job wait; an unlimited one does not.
#[test]
fn spare_shortage_costs_isolation_time() {
    let mut j = job(vec![spec(FaultClass::Gpu, FaultKind::FailStop, 3e-4)]);
    let free = summarize(&j, Policy::C4d, &simulate(&j, Policy::C4d, Seed(9), 8));
    j.spare_nodes = Some(1);
    j.repair_hours = 72.0;
    let short = summarize(&j, Policy::C4d, &simulate(&j, Policy::C4d, Seed(9), 8));
    let iso = |o: &PolicyOutcome| o.downtime_by_phase[Phase::Isolate.index()].1.mean;
    assert!(iso(&short) > 5.0 * iso(&free), "{} vs {}", iso(&short), iso(&free));
}

#[test]
fn weibull_and_lemons_run() {
    let mut j = job(vec![FailureSpec {
        weibull_shape: Some(0.7),
        ..spec(FaultClass::Gpu, FaultKind::FailStop, 2e-4)
    }]);
    j.lemon = Some(trainlab_core::workloads::training_job::LemonSpec {
        nodes: 2,
        rate_multiplier: 20.0,
    });
    let r = simulate_once(&j, Policy::C4d, Seed(1));
    assert!(r.ettr > 0.0 && r.ettr < 1.0);
    assert!(r.faults_per_entry[0] > 0);
}
