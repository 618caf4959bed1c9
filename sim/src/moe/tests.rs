use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use trainlab_core::workloads::moe::Routing;
use trainlab_core::{ClusterSpec, Dtype, GpuSpec, LinkSpec};
use trainlab_models::moe::{expected_max_binomial, uniform_load};

fn cluster() -> ClusterSpec {
    ClusterSpec {
        gpu: GpuSpec {
            name: "h100-like".into(),
            memory_bytes: 80 << 30,
            peak_flops: BTreeMap::from([(Dtype::Bf16, 989e12)]),
            hbm_bandwidth_bytes_per_s: 3.35e12,
            nvlink_bandwidth_bytes_per_s: 4.5e11,
            tdp_watts: 700.0,
            source: "test".into(),
            sm: None,
        },
        gpus_per_node: 8,
        nodes: 8,
        intra: LinkSpec {
            bandwidth_bytes_per_s: 4.5e11,
            latency_s: 3e-6,
        },
        inter: LinkSpec {
            bandwidth_bytes_per_s: 5e10,
            latency_s: 5e-6,
        },
    }
}

fn layer(tokens: u64, experts: u64, routing: Routing, cf: f64) -> MoeLayer {
    MoeLayer {
        tokens,
        d_model: 1024,
        d_ff: 4096,
        experts,
        routing,
        capacity_factor: cf,
        balance_loss: None,
        ep_ranks: 8,
        dtype: Dtype::Bf16,
        cluster: cluster(),
        router: RouterModel::Uniform,
        pad_to_capacity: false,
    }
}

#[test]
fn uniform_routing_matches_closed_form() {
    for routing in [
        Routing::TopK(1),
        Routing::TopK(2),
        Routing::Prototypes(2),
        Routing::Prototypes(4),
    ] {
        let l = layer(4096, 32, routing, 1.0);
        let sim = MoeSim {
            replications: 400,
            cost: None,
        };
        let reps = sim.replicate(&l, Seed(3)).unwrap();
        let out = aggregate(&l, &reps);
        let u = uniform_load(&l);
        let d = out.drop_fraction;
        let ci = d.ci.unwrap();
        let tol = 3.0 * (ci.high - ci.low) / 2.0 + 1e-3;
        assert!(
            (d.value - u.drop_fraction).abs() < tol,
            "{routing:?}: sim {} vs closed {}",
            d.value,
            u.drop_fraction
        );
        let max: f64 = reps.iter().map(|r| *r.loads.iter().max().unwrap() as f64).sum::<f64>() / reps.len() as f64;
        // The closed form treats loads as independent (slightly high); 3% covers that and the MC error.
        assert!(
            (max - u.expected_max_load).abs() / u.expected_max_load < 0.03,
            "{routing:?}: max {max} vs {}",
            u.expected_max_load
        );
    }
}

#[test]
fn large_uniform_max_load_matches() {
    let l = layer(1 << 20, 1024, Routing::TopK(1), 1.0);
    let reps = MoeSim {
        replications: 50,
        cost: None,
    }
    .replicate(&l, Seed(1))
    .unwrap();
    let max: f64 = reps.iter().map(|r| *r.loads.iter().max().unwrap() as f64).sum::<f64>() / reps.len() as f64;
    let want = expected_max_binomial(1 << 20, 1.0 / 1024.0, 1024);
    assert!((max - want).abs() / want < 0.01, "{max} vs {want}");
}

#[test]
fn zipf_matches_design_note_anchor() {
    // Design notes §3.4 (derived Monte Carlo, 200 trials): N = 4096, E = 32, s = 1, gamma = 1: top-1 0.421, top-2
    // 0.403, 2xtop1 0.395.
    for (routing, want) in [
        (Routing::TopK(1), 0.421),
        (Routing::TopK(2), 0.403),
        (Routing::Prototypes(2), 0.395),
    ] {
        let mut l = layer(4096, 32, routing, 1.0);
        l.router = RouterModel::Zipf { s: 1.0 };
        let reps = MoeSim {
            replications: 100,
            cost: None,
        }
        .replicate(&l, Seed(5))
        .unwrap();
        let d = aggregate(&l, &reps).drop_fraction.value;
        assert!((d - want).abs() < 0.015, "{routing:?}: {d} vs {want}");
    }
}

#[test]
fn same_seed_same_answer_and_skew_costs_time() {
    let mut l = layer(65536, 64, Routing::TopK(2), 1.25);
    let sim = MoeSim {
        replications: 20,
        cost: None,
    };
    let a = sim.replicate(&l, Seed(9)).unwrap();
    let b = sim.replicate(&l, Seed(9)).unwrap();
    assert_eq!(a, b);
    let uni = aggregate(&l, &a);
    l.router = RouterModel::Dirichlet { alpha: 0.5 };
    let skew = aggregate(&l, &sim.replicate(&l, Seed(9)).unwrap());
    assert!(skew.drop_fraction.value > uni.drop_fraction.value + 0.05);
    assert!(skew.rank_imbalance.value > uni.rank_imbalance.value);
}

#[test]
fn trace_errors_carry_line_numbers() {
    let l = layer(8, 4, Routing::TopK(1), 1.0);
    let e = parse_trace("token,expert\n0,1\n1,7\n", "t.csv", &l)
        .unwrap_err()
        .to_string();
    assert!(e.contains("t.csv:3") && e.contains("expert 7 does not exist"), "{e}");
    let e = parse_trace("0,1,2\n", "t.csv", &l).unwrap_err().to_string();
    assert!(e.contains("t.csv:1"), "{e}");
    let p = layer(8, 4, Routing::Prototypes(2), 1.0);
    let e = parse_trace("0,0,1\n", "t.csv", &p).unwrap_err().to_string();
    assert!(e.contains("one expert in each"), "{e}");
    let t = parse_trace("0,0,3\n1,1,2\n", "t.csv", &p).unwrap();
    assert_eq!(trace_loads(&t, 4, 5), vec![3, 2, 2, 3]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn slots_are_conserved(
        tokens in 1u64..3000,
        log_e in 1u32..6,
        k_pow in 0u32..3,
        proto in any::<bool>(),
        cf in 0.1f64..3.0,
        router in 0u8..3,
        seed in any::<u64>(),
    ) {
        let experts = 1u64 << log_e;
        let k = (1u64 << k_pow).min(experts);
        let routing = if proto { Routing::Prototypes(k) } else { Routing::TopK(k) };
        let mut l = layer(tokens, experts, routing, cf);
        l.ep_ranks = experts.min(4);
        l.router = match router {
            0 => RouterModel::Uniform,
            1 => RouterModel::Zipf { s: 1.2 },
            _ => RouterModel::Dirichlet { alpha: 0.3 },
        };
        let mut rng = Seed(seed).rng();
        let loads = draw_loads(&l, None, &mut rng);
        prop_assert_eq!(loads.iter().sum::<u64>(), k * tokens);
        if proto {
            for g in loads.chunks(l.experts_per_group() as usize) {
                prop_assert_eq!(g.iter().sum::<u64>(), tokens);
            }
        }
        let cost = MoeCostModel::from_cluster(&l.cluster, l.dtype);
        let r = evaluate(&l, &cost, loads);
        prop_assert_eq!(r.processed.iter().sum::<u64>() + r.dropped, k * tokens);
        prop_assert!(r.processed.iter().all(|&x| x <= l.capacity()));
        prop_assert!(r.step.step_s > 0.0 && r.step.forward_s < r.step.step_s);
    }
}

/// The bench configuration timed in the test profile (an upper bound on the criterion number): run with `--ignored`.
#[test]
#[ignore]
fn bench_config_runs_under_a_second() {
    let mut l = layer(1 << 20, 1024, Routing::TopK(1), 1.25);
    l.ep_ranks = 64;
    for (routing, router) in [
        (Routing::TopK(1), RouterModel::Uniform),
        (Routing::Prototypes(2), RouterModel::Zipf { s: 1.0 }),
    ] {
        l.routing = routing;
        l.router = router.clone();
        let sim = MoeSim {
            replications: 100,
            cost: None,
        };
        let t = std::time::Instant::now();
        let out = aggregate(&l, &sim.replicate(&l, Seed(1)).unwrap());
        let s = t.elapsed().as_secs_f64();
        println!("{routing:?} {router:?}: {s:.3} s, drop {:.4}", out.drop_fraction.value);
        assert!(s < 1.0, "{s}");
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let mut l = layer(8192, 64, Routing::TopK(2), 1.0);
    l.router = RouterModel::Zipf { s: 0.8 };
    let sim = MoeSim {
        replications: 16,
        cost: None,
    };
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    let a = one.install(|| sim.replicate(&l, Seed(4)).unwrap());
    let b = three.install(|| sim.replicate(&l, Seed(4)).unwrap());
    assert_eq!(a, b);
}

#[test]
fn m6t_scenario_matches_derived_table() {
    // scenarios/moe-m6t-prototypes.toml: N = 4096, E = 32, Zipf(1), gamma = 2 -> design notes §3.4 (derived):
    // top-2 0.240, 2xtop1 0.232, top-4 0.194, 4xtop1 0.172.
    for (routing, want) in [
        (Routing::TopK(2), 0.240),
        (Routing::Prototypes(2), 0.232),
        (Routing::TopK(4), 0.194),
        (Routing::Prototypes(4), 0.172),
    ] {
        let mut l = layer(4096, 32, routing, 2.0);
        l.router = RouterModel::Zipf { s: 1.0 };
        let d = aggregate(
            &l,
            &MoeSim {
                replications: 100,
                cost: None,
            }
            .replicate(&l, Seed(6))
            .unwrap(),
        )
        .drop_fraction
        .value;
        assert!((d - want).abs() < 0.015, "{routing:?}: {d} vs {want}");
    }
}
