//! Adaptive routing and degraded links on the flow-level fabric simulator and the closed form: adaptive routing
//! equals the planner where flows are equal and decided by one switch each (rings), and is never worse than ECMP
//! beyond noise; the planner re-balances around a degraded link (from the start or mid-run), ECMP does not.
mod common;
use common::{c4_like, fabric, job};
use trainlab_core::workloads::fabric::{DegradedLink, Routing, Topology};
use trainlab_core::workloads::{Fabric, FabricOp};
use trainlab_core::{Seed, Workload};
use trainlab_models::fabric::{fabric_closed_form, ideal_time};
use trainlab_sim::fabric::simulate;

#[allow(clippy::too_many_arguments)]
fn topo(hosts_per_leaf: u32, leaves: u32, spines: u32, ports: u32, pods: Option<u32>, cores: Option<u32>) -> Topology {
    Topology {
        hosts_per_leaf,
        leaves,
        spines,
        pods,
        cores,
        oversubscription: 1.0,
        core_oversubscription: 1.0,
        link_gbps: 100.0,
        link_latency_us: 1.0,
        gpus_per_host: 2,
        nics_per_host: 2,
        ports_per_nic: ports,
    }
}

fn with(f: &Fabric, routing: Routing) -> Fabric {
    let mut g = f.clone();
    g.routing = routing;
    g
}

fn degrade(f: &mut Fabric, a: &str, b: &str, index: u32, fraction: f64, at_s: f64) {
    f.degraded_links.push(DegradedLink {
        a: a.into(),
        b: b.into(),
        index,
        fraction,
        at_s,
    });
    f.validate().unwrap();
}

fn mean_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, (v / n).sqrt())
}

/// Symmetric trees: 2-tier with single and bonded ports, and 3-tier.
fn trees() -> Vec<Topology> {
    vec![
        topo(2, 4, 2, 1, None, None),
        topo(2, 4, 4, 2, None, None),
        topo(2, 2, 2, 2, Some(2), Some(4)),
    ]
}

#[test]
fn adaptive_equals_planned_for_equal_ring_flows() {
    for (i, t) in trees().into_iter().enumerate() {
        let hosts = t.hosts_per_leaf * t.leaves * t.pods.unwrap_or(1);
        for channels in [1u32, 2, 4] {
            let f = fabric(
                t.clone(),
                Routing::Planned,
                vec![job("a", 0, hosts, FabricOp::AllReduce, channels)],
            );
            let planned = simulate(&f, Seed(1)).unwrap().times_s[0];
            let a = with(&f, Routing::Adaptive);
            for s in 0..6 {
                let adaptive = simulate(&a, Seed(s)).unwrap().times_s[0];
                assert!(
                    (adaptive / planned - 1.0).abs() < 1e-9,
                    "tree {i}, {channels} channels, seed {s}: adaptive {adaptive} vs planned {planned}"
                );
            }
            // The closed form takes adaptive as planned: exact here.
            let cf = fabric_closed_form(&a).unwrap().jobs[0].time_s;
            assert!(
                (cf / planned - 1.0).abs() < 1e-6,
                "tree {i}: closed form {cf} vs {planned}"
            );
        }
    }
}

#[test]
fn adaptive_is_never_worse_than_ecmp_beyond_noise() {
    // All-to-all and two jobs sharing the fabric: flows into a leaf come from several leaves, so local choices
    // need not balance the down links; adaptive must still not lose to ECMP by more than 3 standard errors.
    for (i, t) in trees().into_iter().enumerate() {
        let hosts = t.hosts_per_leaf * t.leaves * t.pods.unwrap_or(1);
        let cases = vec![
            vec![job("a", 0, hosts, FabricOp::AllToAll, 2)],
            vec![
                job("a", 0, hosts / 2, FabricOp::AllReduce, 2),
                job("b", hosts / 2, hosts / 2, FabricOp::AllGather, 4),
            ],
        ];
        for (c, jobs) in cases.into_iter().enumerate() {
            let e = fabric(t.clone(), Routing::Ecmp, jobs);
            let a = with(&e, Routing::Adaptive);
            let makespan = |f: &Fabric, s: u64| {
                simulate(f, Seed(s))
                    .unwrap()
                    .times_s
                    .iter()
                    .copied()
                    .fold(0.0, f64::max)
            };
            let xe: Vec<f64> = (0..24).map(|s| makespan(&e, s)).collect();
            let xa: Vec<f64> = (0..24).map(|s| makespan(&a, s)).collect();
            let (me, se_e) = mean_se(&xe);
            let (ma, se_a) = mean_se(&xa);
            let noise = 3.0 * (se_e * se_e + se_a * se_a).sqrt();
            assert!(
                ma <= me + noise,
                "tree {i} case {c}: adaptive {ma} vs ECMP {me} (+- {noise})"
            );
            // And never better than the ideal fabric.
            let shape = e.shape().unwrap();
            let ideal = (0..e.jobs.len()).map(|j| ideal_time(&e, &shape, j)).fold(0.0, f64::max);
            assert!(ma >= ideal * (1.0 - 1e-9), "tree {i} case {c}: {ma} < ideal {ideal}");
        }
    }
}

#[test]
fn a_half_rate_port_is_rebalanced_by_the_planner_not_by_ecmp() {
    // Port 0 of host 10's NIC 0 at half rate from the start. The planner puts 6 of the NIC's 8 connections on the
    // healthy port and 2 on the slow one: max(6, 2 / 0.5) = 6 flow-times against 4 healthy, so the transfer takes
    // 1.5x; the closed form says the same.
    let mut p = c4_like(2, Routing::Planned);
    let shape = p.shape().unwrap();
    let ideal = ideal_time(&p, &shape, 0);
    degrade(&mut p, "host10", "leaf2", 0, 0.5, 0.0);
    let sim = simulate(&p, Seed(1)).unwrap().times_s[0];
    let cf = fabric_closed_form(&p).unwrap().jobs[0].time_s;
    assert!(
        (sim / cf - 1.0).abs() < 1e-6,
        "planned: simulated {sim} vs closed form {cf}"
    );
    // Without hop latency the transfer alone grows 1.5x.
    let healthy = c4_like(2, Routing::Planned);
    assert!(sim > ideal);
    let transfer_healthy = {
        let mut h = healthy.clone();
        h.topology.link_latency_us = 0.0;
        simulate(&h, Seed(1)).unwrap().times_s[0]
    };
    let transfer_degraded = {
        let mut h = p.clone();
        h.topology.link_latency_us = 0.0;
        simulate(&h, Seed(1)).unwrap().times_s[0]
    };
    assert!(
        (transfer_degraded / transfer_healthy - 1.5).abs() < 1e-6,
        "{transfer_degraded} / {transfer_healthy}"
    );
    // ECMP hashes as before: the slow port gets what the hash gives it. Its mean over draws is worse than the
    // planner's, and the closed form's expectation agrees with the simulated mean within 3%.
    let mut e = c4_like(2, Routing::Ecmp);
    degrade(&mut e, "host10", "leaf2", 0, 0.5, 0.0);
    let xs: Vec<f64> = (0..40).map(|s| simulate(&e, Seed(s)).unwrap().times_s[0]).collect();
    let (m, se) = mean_se(&xs);
    let cf_e = fabric_closed_form(&e).unwrap().jobs[0].time_s;
    assert!(m > sim * 1.2, "ECMP {m} vs planned {sim}");
    assert!(
        (cf_e - m).abs() < 4.0 * se,
        "ECMP closed form {cf_e} vs simulated {m} +- {se}"
    );
    // Adaptive routing weighs its local choice by the rate too: as the planner here.
    let mut a = c4_like(2, Routing::Adaptive);
    degrade(&mut a, "host10", "leaf2", 0, 0.5, 0.0);
    let ad = simulate(&a, Seed(2)).unwrap().times_s[0];
    assert!((ad / sim - 1.0).abs() < 1e-6, "adaptive {ad} vs planned {sim}");
}

#[test]
fn a_link_degrading_mid_run_is_an_event() {
    // The same half-rate port from a time in the middle of the all-reduce: the simulator runs step by step and the
    // planner re-plans at that moment; the answer lies between the healthy and the degraded-from-the-start runs,
    // and the closed form's phased time (progress linear in time) agrees within 1%.
    let healthy = simulate(&c4_like(2, Routing::Planned), Seed(1)).unwrap().times_s[0];
    let mut from0 = c4_like(2, Routing::Planned);
    degrade(&mut from0, "host10", "leaf2", 0, 0.5, 0.0);
    let slow = simulate(&from0, Seed(1)).unwrap().times_s[0];
    let mut mid = c4_like(2, Routing::Planned);
    degrade(&mut mid, "host10", "leaf2", 0, 0.5, healthy / 2.0);
    let t = simulate(&mid, Seed(1)).unwrap().times_s[0];
    assert!(t > healthy * 1.01 && t < slow * 0.99, "{healthy} < {t} < {slow}");
    let cf = fabric_closed_form(&mid).unwrap().jobs[0].time_s;
    assert!((cf / t - 1.0).abs() < 0.01, "closed form {cf} vs simulated {t}");
    // A degradation after the collective has finished changes nothing.
    let mut late = c4_like(2, Routing::Planned);
    degrade(&mut late, "host10", "leaf2", 0, 0.5, healthy * 2.0);
    let t = simulate(&late, Seed(1)).unwrap().times_s[0];
    assert!((t / healthy - 1.0).abs() < 1e-9, "{t} vs {healthy}");
}
