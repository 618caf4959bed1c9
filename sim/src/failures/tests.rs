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
        schedule: None,
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
    assert!(
        c.ettr.mean > b.ettr.mean + 0.1,
        "c4d {} baseline {}",
        c.ettr.mean,
        b.ettr.mean
    );
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

/// The segment timer's fast path (no straggler: a tight loop over tau/delta boundaries) delivers the same events
/// with the same arithmetic as the general path: every replication is bit-identical with it off, across fail-stop
/// faults, hangs, stragglers (which take the general path), spare shortages, lemons and Weibull lifetimes.
#[test]
fn segment_fast_path_is_exact() {
    let mut mixed = job(vec![
        spec(FaultClass::Gpu, FaultKind::FailStop, 2e-4),
        spec(FaultClass::SwitchCable, FaultKind::Hang, 1e-4),
        spec(FaultClass::Gpu, FaultKind::Slow, 5e-5),
        FailureSpec {
            weibull_shape: Some(0.7),
            ..spec(FaultClass::Hbm, FaultKind::FailStop, 5e-5)
        },
    ]);
    mixed.spare_nodes = Some(2);
    mixed.lemon = Some(trainlab_core::workloads::training_job::LemonSpec {
        nodes: 2,
        rate_multiplier: 20.0,
    });
    let llama = scenario(include_str!("../../../scenarios/llama3-405b.toml"));
    for j in [&mixed, &llama] {
        for p in [Policy::Baseline, Policy::C4d] {
            for i in 0..4 {
                let seed = rep_seed(Seed(21), p, i);
                let fast = Sim::new(j, p, seed).run();
                let mut slow = Sim::new(j, p, seed);
                slow.fast_timer = false;
                let slow = slow.run();
                assert_eq!(fast, slow, "{p:?} replication {i}");
                assert!(fast.events > 500, "{}", fast.events);
            }
        }
    }
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

#[test]
#[ignore = "prints agreement numbers for the report"]
fn print_agreement() {
    let j = job(vec![spec(FaultClass::Gpu, FaultKind::FailStop, 3e-4)]);
    for p in [Policy::Baseline, Policy::C4d] {
        let s = summarize(&j, p, &simulate(&j, p, Seed(7), 400));
        let cf = trainlab_models::reliability::expected(&j, p).ettr.mean;
        println!(
            "{p:?}: sim {:.5} [{:.5}, {:.5}] closed {cf:.5}",
            s.ettr.mean, s.ettr.low, s.ettr.high
        );
    }
    let j = job(vec![
        spec(FaultClass::Gpu, FaultKind::Hang, 1e-4),
        spec(FaultClass::SwitchCable, FaultKind::Hang, 4e-4),
        spec(FaultClass::Gpu, FaultKind::Slow, 5e-5),
    ]);
    for p in [Policy::Baseline, Policy::C4d] {
        let s = summarize(&j, p, &simulate(&j, p, Seed(5), 64));
        let cf = trainlab_models::reliability::expected(&j, p);
        println!(
            "mixed {p:?}: sim {:.4} [{:.4}, {:.4}] closed {:.4} det {:.1}s loc {:.3}",
            s.ettr.mean,
            s.ettr.low,
            s.ettr.high,
            cf.ettr.mean,
            s.detection_latency_s.mean,
            s.localisation_accuracy.mean
        );
    }
}

fn scenario(text: &str) -> TrainingJob {
    let s = trainlab_datasets::scenario::parse(text, "test").unwrap();
    s.workload::<TrainingJob>().unwrap()
}

/// Llama 3 405B: predicted interruptions and their mix by cause match Table 5 within Poisson uncertainty.
#[test]
fn llama3_interruptions_match_table5() {
    use statrs::distribution::{ChiSquared, ContinuousCDF};
    let mut j = scenario(include_str!("../../../scenarios/llama3-405b.toml"));
    j.validate().unwrap();
    j.policies = vec![Policy::C4d];
    let reps = simulate(&j, Policy::C4d, Seed(405), 32);
    let o = summarize(&j, Policy::C4d, &reps);
    let table = trainlab_datasets::llama3::table5();
    // Total: the table's 419 is one Poisson draw around the model's mean: |419 - mean| < 3 sqrt(mean).
    let mean = o.interruptions.mean;
    assert!((mean - 419.0).abs() < 3.0 * mean.sqrt(), "predicted {mean}");
    // Mix: chi-squared of the table's counts against the predicted means, pooling classes predicted < 5.
    let (mut chi2, mut df, mut pool_o, mut pool_e) = (0.0, 0usize, 0.0, 0.0);
    for row in &table {
        let e = o
            .interruptions_by_class
            .iter()
            .find(|(c, _)| *c == row.class)
            .map(|(_, e)| e.mean)
            .unwrap_or(0.0);
        if e < 5.0 {
            pool_o += row.count as f64;
            pool_e += e;
        } else {
            chi2 += (row.count as f64 - e).powi(2) / e;
            df += 1;
        }
    }
    if pool_e > 0.0 {
        chi2 += (pool_o - pool_e).powi(2) / pool_e;
        df += 1;
    }
    let p = 1.0 - ChiSquared::new(df as f64).unwrap().cdf(chi2);
    eprintln!(
        "llama3: predicted {mean:.1} interruptions, chi2 {chi2:.2} df {df} p {p:.3}, ettr {:.4}",
        o.ettr.mean
    );
    assert!(p > 0.05, "chi2 {chi2} df {df} p {p}");
    // Llama 3 reports > 90% effective training time with automated recovery.
    assert!(o.ettr.mean > 0.9, "ettr {}", o.ettr.mean);
}

/// C4 production: baseline loses about 30% of the time, C4D about 1% (C4: 31.19% -> 1.16%), in the closed form and
/// in the simulator.
#[test]
fn c4_production_baseline_30_c4d_1() {
    let j = scenario(include_str!("../../../scenarios/c4-production.toml"));
    j.validate().unwrap();
    let b = trainlab_models::reliability::expected(&j, Policy::Baseline).ettr.mean;
    let c = trainlab_models::reliability::expected(&j, Policy::C4d).ettr.mean;
    assert!((1.0 - b - 0.31).abs() < 0.04, "baseline loss {}", 1.0 - b);
    assert!((1.0 - c - 0.0116).abs() < 0.006, "c4d loss {}", 1.0 - c);
    let sb = summarize(&j, Policy::Baseline, &simulate(&j, Policy::Baseline, Seed(1), 32));
    let sc = summarize(&j, Policy::C4d, &simulate(&j, Policy::C4d, Seed(1), 32));
    assert!(
        (1.0 - sb.ettr.mean - 0.31).abs() < 0.05,
        "sim baseline loss {}",
        1.0 - sb.ettr.mean
    );
    assert!(
        (1.0 - sc.ettr.mean - 0.0116).abs() < 0.006,
        "sim c4d loss {}",
        1.0 - sc.ettr.mean
    );
}

#[test]
#[ignore = "prints scenario numbers for the report"]
fn print_scenarios() {
    for text in [
        include_str!("../../../scenarios/c4-production.toml"),
        include_str!("../../../scenarios/llama3-405b.toml"),
    ] {
        let j = scenario(text);
        println!("tau = {:.0} s", trainlab_models::reliability::checkpoint_interval_s(&j));
        for p in [Policy::Baseline, Policy::C4d] {
            let a = trainlab_models::reliability::expected(&j, p);
            let t = std::time::Instant::now();
            let reps = simulate(&j, p, Seed(1), 64);
            let dt = t.elapsed();
            let s = summarize(&j, p, &reps);
            println!(
                "{p:?}: analytical loss {:.4}; sim loss {:.4} [{:.4}, {:.4}] interruptions {:.1} det {:.1}s loc {:.3} ({dt:?} for 64 reps)",
                1.0 - a.ettr.mean,
                1.0 - s.ettr.mean,
                1.0 - s.ettr.high,
                1.0 - s.ettr.low,
                s.interruptions.mean,
                s.detection_latency_s.mean,
                s.localisation_accuracy.mean
            );
            for (ph, e) in &s.downtime_by_phase {
                print!(" {}={:.4}", ph.as_str(), e.mean);
            }
            println!();
        }
    }
}

/// Bad input through the scenario loader names the field: an unknown fault class, a NaN rate, a zero interval.
#[test]
fn bad_scenarios_name_the_field() {
    let base = include_str!("../../../scenarios/c4-production.toml");
    let load = |t: &str| {
        trainlab_datasets::scenario::parse(t, "test")
            .and_then(|s| s.workload::<TrainingJob>())
            .and_then(|w| w.validate().map(|_| w))
    };
    let e = load(&base.replacen("class = \"software\"", "class = \"flux_capacitor\"", 1)).unwrap_err();
    assert!(e.to_string().contains("flux_capacitor"), "{e}");
    let e = load(&base.replacen("rate_per_component_hour = 1.693e-5", "rate_per_component_hour = nan", 1)).unwrap_err();
    assert!(e.to_string().contains("failures[0].rate_per_component_hour"), "{e}");
    assert!(e.is_user_error());
    let e = load(&base.replacen("checkpoint_interval = \"young_daly\"", "checkpoint_interval = 0", 1)).unwrap_err();
    assert!(e.to_string().contains("checkpoint_interval"), "{e}");
    let e = load(&base.replacen("gpus_per_node = 8", "gpus_per_node = 8\nspare_nodes = 500", 1)).unwrap_err();
    assert!(e.to_string().contains("spare_nodes"), "{e}");
}
