//! MoE layer (issue 4): the three backends side by side, and the calibration of the simulator against measured CPU
//! runs, checked on held-out configurations (different skew, k, prototypes and capacity factor).
use trainlab_core::workloads::moe::{MoeLayer, RouterModel, Routing};
use trainlab_core::{Backend, RunCtx, Seed, Workload};
use trainlab_executors::moe::{MoeCpu, measure};
use trainlab_models::moe::MoeAnalytical;
use trainlab_sim::moe::{MoeSim, calibrate};

#[test]
fn analytical_simulated_and_measured_side_by_side() {
    let l = cpu_layer(512, 128, 8, Routing::TopK(2), 1.25, RouterModel::Uniform);
    l.validate().unwrap();
    let mut ctx = RunCtx::new(Seed(1));
    let a = MoeAnalytical::default().run(&l, &mut ctx).unwrap();
    let s = MoeSim {
        replications: 200,
        cost: None,
    }
    .run(&l, &mut ctx)
    .unwrap();
    let m = MoeCpu {
        draws: 1,
        repeats: 1,
        threads: 0,
    }
    .run(&l, &mut ctx)
    .unwrap();
    assert!((a.drop_fraction.value - s.drop_fraction.value).abs() < 0.01);
    assert!(m.drop_fraction.value < 0.2 && m.step_s.value > 0.0);
    assert_eq!(a.capacity, 160);
}

/// Calibrate on uniform-router runs, predict skewed / prototype / other-capacity runs: every held-out layer within
/// 10%. Prints the table for the README. About 20 s of real GEMMs: run with `--ignored`.
#[test]
#[ignore]
fn calibrated_simulator_predicts_held_out_cpu_runs() {
    let (draws, repeats) = (4, 2);
    let (train, held) = cmd_moe::calibration_sets();
    let cal = calibrate(&train, &held, 200, Seed(7), 3, |l, i| {
        cmd_moe::measured(l, i, draws, repeats, Seed(100))
    })
    .unwrap();
    let c = &cal.cost;
    println!(
        "fitted: rate {:.3e} FLOP/s, half rows {:.1}, expert overhead {:.2e} s, dispatch {:.2e} s + {:.2e} s/elem, \
         router {:.2e} s/logit, backward x{:.2} compute, x{:.2} comm",
        c.gemm_rate,
        c.gemm_half_rows,
        c.expert_overhead_s,
        c.dispatch_fixed_s,
        c.dispatch_s_per_elem,
        c.router_s_per_logit,
        c.backward_factor,
        c.backward_comm_factor
    );
    println!("{}", cal.markdown());
    let median = cal.held_out_median_abs_error();
    println!(
        "held-out median |error| {:.1}%, max {:.1}%",
        median * 100.0,
        cal.held_out_max_abs_error() * 100.0
    );
    assert!(median < 0.10, "median held-out error {median}");
    assert!(
        cal.held_out_max_abs_error() < 0.10,
        "worst held-out error {}",
        cal.held_out_max_abs_error()
    );
}

/// Per-phase view of one measured configuration against the fitted model (diagnostics): `--ignored --nocapture`.
#[test]
#[ignore]
fn phase_breakdown() {
    let l = cpu_layer(2048, 256, 8, Routing::TopK(2), 2.0, RouterModel::Uniform);
    let m = measure(&l, 1, 3, 0, Seed(1)).unwrap();
    println!("{:?} step {:?} spread {:.2}", m.phases, m.step_s, m.spread);
}

/// Issue 4 acceptance: the CPU layer's expert GEMMs reach >= 70% of this machine's plain GEMM rate for large expert
/// batches (same shapes, interleaved, best of several to resist noise from other processes): `--ignored`.
#[test]
#[ignore]
fn expert_gemms_reach_machine_gemm_rate() {
    use trainlab_executors::cpu::sgemm;
    let (tokens, d, f, e) = (4096usize, 256usize, 1024usize, 2usize);
    let l = MoeLayer {
        d_model: d as u64,
        ..cpu_layer(
            tokens as u64,
            f as u64,
            e as u64,
            Routing::TopK(1),
            2.0,
            RouterModel::Uniform,
        )
    };
    let rows = tokens / e;
    let a = vec![0.5f32; rows * d];
    let w1 = vec![0.25f32; d * f];
    let w2 = vec![0.125f32; f * d];
    let mut h = vec![0f32; rows * f];
    let mut o = vec![0f32; rows * d];
    let mut best_plain = f64::INFINITY;
    let mut best_moe = f64::INFINITY;
    for round in 0..5 {
        let t = std::time::Instant::now();
        for _ in 0..e {
            sgemm(rows, f, d, &a, &w1, &mut h, 0).unwrap();
            sgemm(rows, d, f, &h, &w2, &mut o, 0).unwrap();
        }
        best_plain = best_plain.min(t.elapsed().as_secs_f64());
        let m = measure(&l, 1, 1, 0, Seed(round)).unwrap();
        best_moe = best_moe.min(m.phases[0].experts);
    }
    let flops = 4.0 * tokens as f64 * d as f64 * f as f64;
    let (plain, moe) = (flops / best_plain, flops / best_moe);
    println!(
        "plain GEMM {:.2e} FLOP/s, MoE experts {:.2e} FLOP/s, ratio {:.2}",
        plain,
        moe,
        moe / plain
    );
    assert!(moe / plain >= 0.7, "ratio {}", moe / plain);
}

/// The shipped Switch scenario: drops under Switch's published "typically < 1%" at capacity factor 1.25, closed form
/// and Monte Carlo agree; at capacity factor 1.0 the drop is about 1.2%.
#[test]
fn switch_capacity_scenario_reproduces_published_bound() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/moe-switch-capacity.toml");
    let sc = trainlab_datasets::scenario::load_file(&path).unwrap();
    let mut l: MoeLayer = sc.workload().unwrap();
    let mut ctx = RunCtx::new(sc.seed);
    let a = MoeAnalytical::default().run(&l, &mut ctx).unwrap();
    let s = MoeSim {
        replications: 100,
        cost: None,
    }
    .run(&l, &mut ctx)
    .unwrap();
    assert!(a.drop_fraction.value < trainlab_datasets::moe_published::SWITCH_TYPICAL_DROP_BOUND);
    assert!(s.drop_fraction.value < trainlab_datasets::moe_published::SWITCH_TYPICAL_DROP_BOUND);
    assert!((a.drop_fraction.value - s.drop_fraction.value).abs() < 5e-4);
    l.capacity_factor = 1.0;
    let a1 = MoeAnalytical::default().run(&l, &mut ctx).unwrap();
    assert!(
        (a1.drop_fraction.value - 0.025).abs() < 0.002,
        "{}",
        a1.drop_fraction.value
    );
    println!(
        "drop cf1.25: closed {:.2e} sim {:.2e}; cf1.0: {:.4}; step closed {:.3e} s sim {:.3e} s",
        a.drop_fraction.value, s.drop_fraction.value, a1.drop_fraction.value, a.step_s.value, s.step_s.value
    );
    // Step time: the closed form and the simulator's mean agree within 10% for a balanced router.
    assert!((a.step_s.value - s.step_s.value).abs() / s.step_s.value < 0.10);
}

/// Bad input is a user error naming the field, never a panic.
#[test]
fn bad_input_is_a_user_error() {
    let mut l = cpu_layer(64, 32, 8, Routing::TopK(9), 1.0, RouterModel::Uniform);
    let e = l.validate().unwrap_err();
    assert!(e.is_user_error() && e.to_string().contains("routing.top_k"));
    l.routing = Routing::TopK(1);
    l.capacity_factor = 0.0;
    assert!(l.validate().unwrap_err().to_string().contains("capacity_factor"));
    l.capacity_factor = 1.0;
    let dir = std::env::temp_dir().join(format!("trainlab-moe-trace-{}.csv", std::process::id()));
    std::fs::write(&dir, "token,expert\n0,1\n1,2\n2,99\n").unwrap();
    l.router = RouterModel::Trace {
        path: dir.display().to_string(),
    };
    let err = MoeSim::default().run(&l, &mut RunCtx::new(Seed(1))).unwrap_err();
    let _ = std::fs::remove_file(&dir);
    assert!(err.is_user_error());
    assert!(
        err.to_string().contains(":4") && err.to_string().contains("expert 99"),
        "{err}"
    );
}

/// M6-T quality claim at tiny scale (issue 4): top-1, top-2 and 2-top-1 prototypes, with and without the balance
/// loss, across capacity factors, 3 seeds; prints final held-out MSE (mean +- std): `--ignored --nocapture`.
#[test]
#[ignore]
fn quality_experiment_tiny_moe() {
    use trainlab_executors::moe::{TinyTrainConfig, train_tiny};
    println!(
        "| routing | capacity factor | balance loss | final MSE (mean +- std, 3 seeds) | zero-predictor MSE | drop | load CV |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, groups, per) in [("top1", 1, 1), ("top2", 1, 2), ("2xtop1", 2, 1)] {
        for cf in [1.0, 1.25, 2.0] {
            for bal in [0.0, 0.01] {
                let cfg = TinyTrainConfig::small(groups, per, cf, bal);
                let rs: Vec<_> = (0..3).map(|s| train_tiny(&cfg, Seed(1000 + s)).unwrap()).collect();
                let l: Vec<f64> = rs.iter().map(|r| r.final_loss).collect();
                let s = trainlab_core::Summary::of(&l);
                let avg = |f: fn(&trainlab_executors::moe::TinyTrainResult) -> f64| {
                    rs.iter().map(f).sum::<f64>() / rs.len() as f64
                };
                println!(
                    "| {name} | {cf} | {bal} | {:.4} +- {:.4} | {:.4} | {:.3} | {:.3} |",
                    s.mean,
                    s.std,
                    avg(|r| r.baseline_loss),
                    avg(|r| r.drop_fraction),
                    avg(|r| r.load_cv)
                );
            }
        }
    }
}

// The MoE kind's module (configurations and the measured-run adapter) from the kind table.
use trainlab::kinds::moe as cmd_moe;
use trainlab::kinds::moe::cpu_layer;

#[test]
fn cli_modules_compile_and_list_four_backends() {
    use trainlab::kinds::Kind;
    let opts = trainlab::kinds::Opts {
        quick: true,
        ..Default::default()
    };
    let names: Vec<String> = trainlab::kinds::moe::KIND
        .backends(&opts)
        .unwrap()
        .iter()
        .map(|b| b.name.clone())
        .collect();
    assert_eq!(names, ["closed_form", "monte_carlo", "cpu", "cuda"]);
    let (fit, held) = cmd_moe::calibration_sets();
    assert_eq!((fit.len(), held.len()), (10, 6));
    assert!(fit.iter().chain(&held).all(|l| l.validate().is_ok()));
}

#[test]
fn shipped_moe_scenarios_load_and_run() {
    for name in ["moe-switch-capacity", "moe-m6t-prototypes"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("scenarios/{name}.toml"));
        let sc = trainlab_datasets::scenario::load_file(&path).unwrap();
        let l: MoeLayer = sc.workload().unwrap();
        let o = MoeSim {
            replications: 20,
            cost: None,
        }
        .run(&l, &mut RunCtx::new(sc.seed))
        .unwrap();
        assert!(o.step_s.value > 0.0 && o.drop_fraction.value < 0.5, "{name}");
    }
}
