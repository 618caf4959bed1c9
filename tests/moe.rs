//! MoE layer (issue 4): the three backends side by side, and the calibration of the simulator against measured CPU
//! runs, checked on held-out configurations (different skew, k, prototypes and capacity factor).
use trainlab_core::workloads::moe::{MoeLayer, RouterModel, Routing};
use trainlab_core::{Backend, Dtype, RunCtx, Seed, Workload};
use trainlab_executors::moe::{MoeCpu, MoeMeasurement, measure};
use trainlab_models::moe::{CostSample, MoeAnalytical, MoeCostModel, fit_single_device};
use trainlab_sim::moe::{MoeSim, aggregate};

fn cpu_layer(tokens: u64, d_ff: u64, experts: u64, routing: Routing, cf: f64, router: RouterModel) -> MoeLayer {
    MoeLayer {
        tokens,
        d_model: 128,
        d_ff,
        experts,
        routing,
        capacity_factor: cf,
        balance_loss: None,
        ep_ranks: 1,
        dtype: Dtype::Fp32,
        cluster: trainlab_datasets::gpus::cluster("h100-sxm", 1, 8).expect("preset"),
        router,
        pad_to_capacity: false,
    }
}

fn samples(l: &MoeLayer, m: &MoeMeasurement) -> Vec<CostSample> {
    let c = l.capacity();
    m.loads
        .iter()
        .zip(&m.phases)
        .map(|(loads, p)| CostSample {
            d_model: l.d_model as f64,
            d_ff: l.d_ff as f64,
            tokens: l.tokens as f64,
            experts: l.experts as f64,
            nonempty: loads.iter().filter(|&&x| x > 0).count() as f64,
            processed: loads.iter().map(|&x| x.min(c)).sum::<u64>() as f64,
            router_s: p.router,
            dispatch_s: p.dispatch,
            combine_s: p.combine,
            experts_s: p.experts,
            backward_s: p.backward,
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

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

/// Calibrate on uniform-router runs, predict skewed / prototype / other-capacity runs. Prints the table for the
/// README. Slow-ish (a few seconds of real GEMMs): run with `--ignored`.
#[test]
#[ignore]
fn calibrated_simulator_predicts_held_out_cpu_runs() {
    let (draws, repeats) = (2, 3);
    let train = [
        cpu_layer(2048, 128, 8, Routing::TopK(1), 1.0, RouterModel::Uniform),
        cpu_layer(2048, 256, 8, Routing::TopK(2), 2.0, RouterModel::Uniform),
        cpu_layer(2048, 128, 32, Routing::TopK(2), 1.0, RouterModel::Uniform),
        cpu_layer(2048, 256, 32, Routing::TopK(1), 2.0, RouterModel::Uniform),
        cpu_layer(1024, 256, 16, Routing::TopK(4), 1.0, RouterModel::Uniform),
        cpu_layer(4096, 128, 16, Routing::TopK(1), 1.25, RouterModel::Uniform),
    ];
    let held = [
        cpu_layer(2048, 256, 16, Routing::TopK(2), 1.25, RouterModel::Zipf { s: 1.0 }),
        cpu_layer(2048, 128, 16, Routing::Prototypes(2), 1.0, RouterModel::Zipf { s: 0.5 }),
        cpu_layer(
            2048,
            256,
            32,
            Routing::Prototypes(4),
            1.5,
            RouterModel::Dirichlet { alpha: 0.5 },
        ),
        cpu_layer(2048, 128, 8, Routing::TopK(1), 2.0, RouterModel::Zipf { s: 1.2 }),
        cpu_layer(
            1024,
            256,
            32,
            Routing::TopK(4),
            1.0,
            RouterModel::Dirichlet { alpha: 1.0 },
        ),
        cpu_layer(4096, 192, 16, Routing::TopK(2), 1.0, RouterModel::Uniform),
    ];
    let mut fit_set = vec![];
    for (i, l) in train.iter().enumerate() {
        let m = measure(l, draws, repeats, 0, Seed(100 + i as u64)).unwrap();
        fit_set.extend(samples(l, &m));
    }
    let base = MoeCostModel::from_cluster(&train[0].cluster, Dtype::Fp32);
    let cost = fit_single_device(&fit_set, &base);
    println!(
        "fitted: rate {:.3e} FLOP/s, half rows {:.1}, expert overhead {:.2e} s, dispatch {:.2e} s + {:.2e} s/elem, \
         router {:.2e} s/logit, backward x{:.2} compute, x{:.2} comm",
        cost.gemm_rate,
        cost.gemm_half_rows,
        cost.expert_overhead_s,
        cost.dispatch_fixed_s,
        cost.dispatch_s_per_elem,
        cost.router_s_per_logit,
        cost.backward_factor,
        cost.backward_comm_factor
    );
    println!("| configuration | drop measured | drop simulated | step measured (ms) | step simulated (ms) | error |");
    println!("|---|---|---|---|---|---|");
    let mut errs = vec![];
    for (i, l) in held.iter().enumerate() {
        let m = measure(l, draws, repeats, 0, Seed(200 + i as u64)).unwrap();
        let meas = mean(&m.step_s);
        let drop_m = mean(
            &m.loads
                .iter()
                .map(|v| v.iter().map(|&x| x.saturating_sub(l.capacity())).sum::<u64>() as f64 / l.slots() as f64)
                .collect::<Vec<_>>(),
        );
        let sim = MoeSim {
            replications: 200,
            cost: Some(cost.clone()),
        };
        let o = aggregate(l, &sim.replicate(l, Seed(7)).unwrap());
        let err = (o.step_s.value - meas) / meas;
        errs.push(err.abs());
        println!(
            "| {} d_ff{} | {:.3} | {:.3} | {:.2} | {:.2} | {:+.1}% |",
            l.label(),
            l.d_ff,
            drop_m,
            o.drop_fraction.value,
            meas * 1e3,
            o.step_s.value * 1e3,
            err * 100.0
        );
    }
    errs.sort_by(f64::total_cmp);
    let median = errs[errs.len() / 2];
    println!(
        "median |error| {:.1}%, max {:.1}%",
        median * 100.0,
        errs[errs.len() - 1] * 100.0
    );
    assert!(median < 0.10, "median held-out error {median}");
}
