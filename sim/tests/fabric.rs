//! The flow-level fabric simulator: max-min fairness properties and an independent solver, ECMP collision
//! statistics against balls-into-bins, and agreement with the closed form where they must agree.
mod common;
use common::{c4_like, fabric, job};
use trainlab_core::seed::Rng;
use trainlab_core::workloads::fabric::{FailedLink, Placement, Routing, Topology};
use trainlab_core::workloads::{FabricJob, FabricOp};
use trainlab_core::{Seed, Workload};
use trainlab_models::fabric::{expected_max_load, fabric_closed_form, ideal_time};
use trainlab_sim::fabric::{Net, Router, connections, max_min_rates, route_all, simulate};

use rand::RngExt;

/// Level-synchronous water-filling, written independently of the heap-based solver: raise all unfrozen flows to
/// the smallest fair share over all links, freeze every flow of every link at that share, repeat.
fn water_fill(cap: &[f64], paths: &[Vec<u32>]) -> Vec<f64> {
    let n = paths.len();
    let mut rate = vec![0.0; n];
    let mut frozen = vec![false; n];
    let mut rem = cap.to_vec();
    loop {
        let mut level = f64::INFINITY;
        for (l, &r) in rem.iter().enumerate() {
            let k = (0..n).filter(|&f| !frozen[f] && paths[f].contains(&(l as u32))).count();
            if k > 0 {
                level = level.min(r / k as f64);
            }
        }
        if !level.is_finite() {
            break;
        }
        let mut hit = Vec::new();
        for (l, &r) in rem.iter().enumerate() {
            let k = (0..n).filter(|&f| !frozen[f] && paths[f].contains(&(l as u32))).count();
            if k > 0 && (r / k as f64 - level).abs() <= 1e-12 * level.max(1.0) {
                hit.push(l as u32);
            }
        }
        for f in 0..n {
            if !frozen[f] && paths[f].iter().any(|l| hit.contains(l)) {
                frozen[f] = true;
                rate[f] = level;
                for &l in &paths[f] {
                    rem[l as usize] -= level;
                }
            }
        }
    }
    rate
}

fn random_case(rng: &mut Rng) -> (Vec<f64>, Vec<Vec<u32>>) {
    let links = rng.random_range(1..8usize);
    let cap: Vec<f64> = (0..links).map(|_| rng.random_range(1..10u32) as f64).collect();
    let flows = rng.random_range(1..10usize);
    let paths = (0..flows)
        .map(|_| {
            let mut p: Vec<u32> = (0..links as u32).filter(|_| rng.random_bool(0.4)).collect();
            if p.is_empty() {
                p.push(rng.random_range(0..links as u32));
            }
            p
        })
        .collect();
    (cap, paths)
}

#[test]
fn max_min_is_feasible_bottlenecked_and_matches_water_filling() {
    let mut rng = Seed(2024).rng();
    for case in 0..2000 {
        let (cap, paths) = random_case(&mut rng);
        let refs: Vec<&[u32]> = paths.iter().map(Vec::as_slice).collect();
        let r = max_min_rates(&cap, &refs);
        let pr = &paths;
        let on = move |l: usize| (0..pr.len()).filter(move |&f| pr[f].contains(&(l as u32)));
        // No link over capacity.
        for (l, &c) in cap.iter().enumerate() {
            let load: f64 = on(l).map(|f| r[f]).sum();
            assert!(load <= c * (1.0 + 1e-9), "case {case}: link {l} carries {load} > {c}");
        }
        // Every flow has a saturated link on which its rate is the largest.
        for (f, p) in paths.iter().enumerate() {
            let ok = p.iter().any(|&l| {
                let l = l as usize;
                let load: f64 = on(l).map(|g| r[g]).sum();
                let top = on(l).map(|g| r[g]).fold(0.0, f64::max);
                (load - cap[l]).abs() <= 1e-9 * cap[l] && r[f] >= top * (1.0 - 1e-9)
            });
            assert!(
                ok,
                "case {case}: flow {f} (rate {}) has no bottleneck: {cap:?} {paths:?} {r:?}",
                r[f]
            );
        }
        // Same rates as the independent solver.
        let w = water_fill(&cap, &paths);
        for f in 0..paths.len() {
            assert!(
                (r[f] - w[f]).abs() <= 1e-9 * w[f].max(1.0),
                "case {case}: flow {f}: {} vs {}",
                r[f],
                w[f]
            );
        }
    }
}

fn topo(hosts_per_leaf: u32, leaves: u32, spines: u32, ports: u32) -> Topology {
    Topology {
        hosts_per_leaf,
        leaves,
        spines,
        pods: None,
        cores: None,
        oversubscription: 1.0,
        core_oversubscription: 1.0,
        link_gbps: 100.0,
        link_latency_us: 0.0,
        gpus_per_host: 1,
        nics_per_host: 1,
        ports_per_nic: ports,
    }
}

/// Mean and standard error.
fn mean_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, (v / n).sqrt())
}

#[test]
fn ecmp_uplink_collisions_match_balls_into_bins() {
    // Two leaves of one host each, 8 spines: each host's 8 connections leave its leaf over 8 uplinks. The most
    // loaded uplink of the run is the larger of two independent "8 balls in 8 bins" maxima. E[max] of one group
    // is 2.59 (exact DP: notes §1.5 a); of two, computed from the exact CDF.
    let mut t = topo(1, 2, 8, 1);
    t.oversubscription = 0.125; // 1 host port, 8 up ports
    let f = fabric(t, Routing::Ecmp, vec![job("a", 0, 2, FabricOp::AllGather, 8)]);
    let cdf = trainlab_models::fabric::max_load_cdf(8, 8);
    let want: f64 = cdf.iter().map(|p| 1.0 - p * p).sum();
    let xs: Vec<f64> = (0..600)
        .map(|s| simulate(&f, Seed(s)).unwrap().max_uplink_flows as f64)
        .collect();
    let (m, se) = mean_se(&xs);
    // Tolerance: 4 standard errors of the simulated mean (about +-0.08 flows).
    assert!(
        (m - want).abs() < 4.0 * se,
        "simulated mean {m} +- {se} vs balls-into-bins {want}"
    );
    assert!(want > 2.9 && want < 3.2, "{want}");
}

#[test]
fn ecmp_bonded_port_slowdown_matches_the_closed_form() {
    // Two hosts under one leaf, NICs of 2 bonded ports, 4 connections each way: four independent "4 balls in 2
    // bins" groups (two sending NICs, two receiving). Slowdown = E[max load] / 2 (no latency).
    let f = fabric(
        topo(2, 1, 1, 2),
        Routing::Ecmp,
        vec![job("a", 0, 2, FabricOp::AllGather, 4)],
    );
    let shape = f.shape().unwrap();
    let ideal = ideal_time(&f, &shape, 0);
    let xs: Vec<f64> = (0..800)
        .map(|s| simulate(&f, Seed(s)).unwrap().times_s[0] / ideal)
        .collect();
    let (m, se) = mean_se(&xs);
    let cf = fabric_closed_form(&f).unwrap();
    let want = cf.jobs[0].time_s / cf.jobs[0].ideal_time_s;
    // Closed form: E[max of 4 groups] / 2 with P(max <= 2) = 6/16, P(max <= 3) = 14/16 per group.
    let exact = (4.0 - (6.0f64 / 16.0).powi(4) - (14.0f64 / 16.0).powi(4) - 1.0 + 1.0) / 2.0;
    assert!((want - exact).abs() < 1e-9, "{want} vs {exact}");
    assert!(
        (m - want).abs() < 4.0 * se,
        "simulated {m} +- {se} vs closed form {want}"
    );
    assert!((expected_max_load(4, 2) - 2.75).abs() < 1e-12);
}

#[test]
fn one_flow_runs_at_link_rate() {
    // Two hosts, one NIC port, one channel: each direction is one flow alone on its links.
    let mut t = topo(1, 2, 1, 1);
    t.link_latency_us = 2.0;
    let f = fabric(t, Routing::Ecmp, vec![job("a", 0, 2, FabricOp::AllGather, 1)]);
    let rate = 100e9 / 8.0;
    let want = 4.0 * 2e-6 + ((1u64 << 24) as f64 / 2.0) / rate; // 1 step: 4 hops of latency + S/n at link rate
    let sim = simulate(&f, Seed(1)).unwrap().times_s[0];
    let cf = fabric_closed_form(&f).unwrap().jobs[0].time_s;
    assert!((sim - want).abs() / want < 1e-9, "{sim} vs {want}");
    assert!((cf - want).abs() / want < 1e-12, "{cf} vs {want}");
}

#[test]
fn planned_disjoint_paths_reach_the_ideal_in_both_backends() {
    let mut f = c4_like(4, Routing::Planned);
    let shape = f.shape().unwrap();
    let ideal = ideal_time(&f, &shape, 0);
    let sim = simulate(&f, Seed(3)).unwrap();
    let cf = fabric_closed_form(&f).unwrap();
    assert!(
        (sim.times_s[0] / ideal - 1.0).abs() < 1e-6,
        "{} vs {ideal}",
        sim.times_s[0]
    );
    assert!((cf.jobs[0].time_s / ideal - 1.0).abs() < 1e-12);
    assert_eq!(sim.max_uplink_flows, 1);
    // busbw of the ideal ring at 1 GiB: rails x ports x link rate, less the latency share.
    // With failed spine-tier links the planner re-plans and stays at the ideal.
    for (a, b, i) in [("leaf7", "spine0", 0), ("leaf7", "spine0", 1), ("spine0", "core0", 0)] {
        f.failed_links.push(FailedLink {
            a: a.into(),
            b: b.into(),
            index: i,
        });
    }
    f.validate().unwrap();
    let sim = simulate(&f, Seed(3)).unwrap();
    assert!((sim.times_s[0] / ideal - 1.0).abs() < 1e-6);
}

#[test]
fn ecmp_never_uses_a_failed_link_and_c4_slowdown_agrees() {
    let mut f = c4_like(4, Routing::Ecmp);
    f.failed_links.push(FailedLink {
        a: "leaf7".into(),
        b: "spine0".into(),
        index: 0,
    });
    f.failed_links.push(FailedLink {
        a: "host3".into(),
        b: "leaf0".into(),
        index: 1,
    });
    f.validate().unwrap();
    let shape = f.shape().unwrap();
    let net = Net::new(shape, &f.failed().unwrap());
    let dead = [
        2 * net.ls(7, 0, 0),
        2 * net.ls(7, 0, 0) + 1,
        2 * net.hp(3, 0, 1),
        2 * net.hp(3, 0, 1) + 1,
    ];
    for s in 0..20 {
        let mut r = Router::Ecmp(Seed(s).derive("ecmp"));
        let routes = route_all(&net, &mut r, &connections(&f, &shape, 0, 0, Seed(s).derive("qpn"))).unwrap();
        assert!(routes.links.iter().all(|l| !dead.contains(l)), "seed {s}");
    }
    // Healthy C4-like fabric: the simulated slowdown over 16 draws is within 2% of the closed form's expectation.
    let f = c4_like(4, Routing::Ecmp);
    let shape = f.shape().unwrap();
    let ideal = ideal_time(&f, &shape, 0);
    let xs: Vec<f64> = (0..16)
        .map(|s| simulate(&f, Seed(s)).unwrap().times_s[0] / ideal)
        .collect();
    let (m, _) = mean_se(&xs);
    let cf = fabric_closed_form(&f).unwrap();
    let want = cf.jobs[0].time_s / cf.jobs[0].ideal_time_s;
    assert!((m / want - 1.0).abs() < 0.02, "simulated {m} vs closed form {want}");
}

#[test]
fn jobs_on_disjoint_leaves_run_as_if_alone_and_shared_uplinks_slow_them() {
    // Two ring jobs, one per pair of leaves, planned: the step-by-step multi-job simulation equals each job's
    // single-job (one pattern, multiplied) simulation.
    let t = topo(2, 4, 2, 1);
    let a = job("a", 0, 4, FabricOp::AllReduce, 2);
    let b = job("b", 4, 4, FabricOp::AllReduce, 2);
    let both = fabric(t.clone(), Routing::Planned, vec![a.clone(), b.clone()]);
    let ra = simulate(&fabric(t.clone(), Routing::Planned, vec![a]), Seed(1)).unwrap();
    let rb = simulate(&fabric(t.clone(), Routing::Planned, vec![b]), Seed(1)).unwrap();
    let r = simulate(&both, Seed(1)).unwrap();
    assert!(
        (r.times_s[0] / ra.times_s[0] - 1.0).abs() < 1e-6,
        "{:?} vs {:?}",
        r.times_s,
        ra.times_s
    );
    assert!((r.times_s[1] / rb.times_s[0] - 1.0).abs() < 1e-6);
    // Interleaved placements on a 4:1 oversubscribed fabric: both jobs' rings cross every leaf and share uplinks.
    let mut t = topo(4, 2, 1, 1);
    t.oversubscription = 4.0;
    let hosts = |v: Vec<u32>, n: &str| FabricJob {
        placement: Placement {
            first: None,
            count: None,
            hosts: Some(v),
        },
        ..job(n, 0, 0, FabricOp::AllReduce, 1)
    };
    let a = hosts(vec![0, 4, 1, 5], "a");
    let b = hosts(vec![2, 6, 3, 7], "b");
    let alone = simulate(&fabric(t.clone(), Routing::Planned, vec![a.clone()]), Seed(1)).unwrap();
    let shared = simulate(&fabric(t, Routing::Planned, vec![a, b]), Seed(1)).unwrap();
    assert!(
        shared.times_s[0] > 1.5 * alone.times_s[0],
        "{:?} vs {:?}",
        shared.times_s,
        alone.times_s
    );
}

#[test]
fn all_to_all_runs_its_shift_steps() {
    let f = fabric(
        topo(2, 2, 2, 1),
        Routing::Planned,
        vec![job("a", 0, 4, FabricOp::AllToAll, 1)],
    );
    let shape = f.shape().unwrap();
    let sim = simulate(&f, Seed(1)).unwrap().times_s[0];
    let cf = fabric_closed_form(&f).unwrap().jobs[0].time_s;
    assert!((sim / ideal_time(&f, &shape, 0) - 1.0).abs() < 1e-6);
    assert!((sim / cf - 1.0).abs() < 1e-6, "{sim} vs {cf}");
}
