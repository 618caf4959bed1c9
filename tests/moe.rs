//! MoE layer (issue 4): the three backends side by side, and the calibration of the simulator against measured CPU
//! runs, checked on held-out configurations (different skew, k, prototypes and capacity factor).
use trainlab_core::workloads::moe::{MoeLayer, RouterModel, Routing};
use trainlab_core::{Backend, Dtype, RunCtx, Seed, Workload};
use trainlab_executors::moe::{MoeCpu, measure};
use trainlab_models::moe::MoeAnalytical;
use trainlab_sim::moe::{MeasuredStep, MoeSim, calibrate};

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

/// Real CPU runs of `l` as the simulator's calibration consumes them.
fn measured(l: &MoeLayer, i: usize, draws: usize, repeats: usize) -> Result<Vec<MeasuredStep>, trainlab_core::Error> {
    let m = measure(l, draws, repeats, 0, Seed(100 + i as u64))?;
    Ok(m.loads
        .iter()
        .zip(&m.phases)
        .zip(&m.step_s)
        .map(|((loads, p), &step)| MeasuredStep {
            loads: loads.clone(),
            router_s: p.router,
            dispatch_s: p.dispatch,
            combine_s: p.combine,
            experts_s: p.experts,
            backward_s: p.backward,
            step_s: step,
        })
        .collect())
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
    let cal = calibrate(&train, &held, 200, Seed(7), |l, i| measured(l, i, draws, repeats)).unwrap();
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
}
