//! Replays routed flows ([`FlowCase`]) on the flow simulator's model: max-min fair rates recomputed at every flow
//! end, a job's step ends its pattern's latency after its last flow drains, jobs step independently. This is what
//! [`crate::fabric::simulate`] computes, for paths given from outside: the routes a real network chose (the
//! namespace testbed reads Linux's ECMP choices back), or the routes of a hash draw exported by
//! [`crate::fabric::flow_case`] (tested equal to `simulate`). Time is continuous (`f64` seconds), not ticks.
use crate::fabric::{FlowCase, max_min_rates};

/// Seconds of one step of `paths`, every flow carrying `bytes`, on links of `cap` bytes/s (no latency).
pub fn fluid_step(links: usize, cap: f64, paths: &[Vec<u32>], bytes: f64) -> f64 {
    let caps = vec![cap; links];
    let mut rem: Vec<(usize, f64)> = (0..paths.len()).map(|f| (f, bytes)).collect();
    let mut t = 0.0;
    while !rem.is_empty() {
        let ps: Vec<&[u32]> = rem.iter().map(|&(f, _)| paths[f].as_slice()).collect();
        let rates = max_min_rates(&caps, &ps);
        let dt = rem
            .iter()
            .zip(&rates)
            .map(|(&(_, r), &x)| r / x)
            .fold(f64::INFINITY, f64::min);
        if !dt.is_finite() {
            return f64::INFINITY;
        }
        t += dt;
        for ((_, r), &x) in rem.iter_mut().zip(&rates) {
            *r -= x * dt;
        }
        rem.retain(|&(_, r)| r > bytes * 1e-12);
    }
    t
}

/// Completion time of every job of `case` with link capacity `cap` bytes/s (the case's own when `None`) and each
/// pattern's latency as in the case. One job: each pattern once, times its repeats (exact, as in `simulate`);
/// several jobs: step by step.
pub fn replay(case: &FlowCase, cap: Option<f64>) -> Vec<f64> {
    let cap = cap.unwrap_or(case.link_bytes_per_s);
    if case.jobs.len() == 1 {
        let j = &case.jobs[0];
        let per: f64 = j
            .patterns
            .iter()
            .map(|p| fluid_step(case.links, cap, &p.paths, p.bytes) + p.latency_s)
            .sum();
        return vec![per * j.repeats as f64];
    }
    struct St {
        step: u64,
        rem: Vec<f64>,
        wait_until: Option<f64>,
        done: Option<f64>,
    }
    let pat = |j: usize, step: u64| &case.jobs[j].patterns[(step / case.jobs[j].repeats.max(1)) as usize];
    let mut st: Vec<St> = (0..case.jobs.len())
        .map(|j| St {
            step: 0,
            rem: vec![pat(j, 0).bytes; pat(j, 0).paths.len()],
            wait_until: None,
            done: (case.jobs[j].steps == 0).then_some(0.0),
        })
        .collect();
    let caps = vec![cap; case.links];
    let mut t = 0.0;
    loop {
        // Jobs whose flows have drained wait out their latency.
        for (j, s) in st.iter_mut().enumerate() {
            if s.done.is_none() && s.wait_until.is_none() && s.rem.iter().all(|&r| r <= 0.0) {
                s.wait_until = Some(t + pat(j, s.step).latency_s);
            }
        }
        for (j, s) in st.iter_mut().enumerate() {
            if let Some(w) = s.wait_until
                && w <= t
            {
                s.wait_until = None;
                s.step += 1;
                if s.step >= case.jobs[j].steps {
                    s.done = Some(t);
                    s.rem.clear();
                } else {
                    let p = pat(j, s.step);
                    s.rem = vec![p.bytes; p.paths.len()];
                }
            }
        }
        if st.iter().all(|s| s.done.is_some()) {
            break;
        }
        let mut idx = Vec::new();
        let mut ps: Vec<&[u32]> = Vec::new();
        for (j, s) in st.iter().enumerate() {
            if s.done.is_none() && s.wait_until.is_none() {
                let p = pat(j, s.step);
                for (f, &r) in s.rem.iter().enumerate() {
                    if r > 0.0 {
                        idx.push((j, f));
                        ps.push(&p.paths[f]);
                    }
                }
            }
        }
        let rates = max_min_rates(&caps, &ps);
        let mut dt = f64::INFINITY;
        for (&(j, f), &x) in idx.iter().zip(&rates) {
            dt = dt.min(st[j].rem[f] / x);
        }
        for s in &st {
            if let Some(w) = s.wait_until {
                dt = dt.min(w - t);
            }
        }
        if !dt.is_finite() {
            break;
        }
        t += dt.max(0.0);
        for (&(j, f), &x) in idx.iter().zip(&rates) {
            let b = pat(j, st[j].step).bytes;
            let r = &mut st[j].rem[f];
            *r -= x * dt;
            if *r <= b * 1e-12 {
                *r = 0.0;
            }
        }
    }
    st.iter().map(|s| s.done.unwrap_or(f64::INFINITY)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::{flow_case, simulate};
    use trainlab_core::Seed;
    use trainlab_core::workloads::Fabric;
    use trainlab_core::workloads::fabric::{FabricJob, FabricOp, Placement, Routing, Topology};

    fn fabric(routing: Routing, jobs: Vec<(u32, u32, u32)>) -> Fabric {
        Fabric {
            topology: Topology {
                hosts_per_leaf: 4,
                leaves: 4,
                spines: 2,
                pods: None,
                cores: None,
                oversubscription: 2.0,
                core_oversubscription: 1.0,
                link_gbps: 0.1,
                link_latency_us: 20.0,
                gpus_per_host: 1,
                nics_per_host: 1,
                ports_per_nic: 1,
            },
            routing,
            jobs: jobs
                .into_iter()
                .enumerate()
                .map(|(i, (first, count, ch))| FabricJob {
                    name: format!("j{i}"),
                    placement: Placement {
                        first: Some(first),
                        count: Some(count),
                        hosts: None,
                    },
                    collective: FabricOp::AllReduce,
                    bytes: 1 << 22,
                    channels: ch,
                    compute_s: 0.0,
                })
                .collect(),
            failed_links: vec![],
            degraded_links: vec![],
        }
    }

    #[test]
    fn replay_equals_the_simulator() {
        for routing in [Routing::Ecmp, Routing::Planned] {
            for jobs in [vec![(0, 16, 1)], vec![(0, 8, 2)], vec![(0, 6, 1), (6, 10, 2)]] {
                let w = fabric(routing, jobs);
                for r in 0..3 {
                    let seed = Seed(11).index(r);
                    let sim = simulate(&w, seed).unwrap().times_s;
                    let rep = replay(&flow_case(&w, seed).unwrap(), None);
                    for (a, b) in sim.iter().zip(&rep) {
                        assert!((a - b).abs() <= 1e-6 * a, "{routing:?} {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_shared_link_halves_the_rate() {
        // Two flows over link 0, one of them also over link 1: each gets half of link 0.
        let t = fluid_step(2, 10.0, &[vec![0], vec![0, 1]], 5.0);
        assert!((t - 1.0).abs() < 1e-12, "{t}");
    }
}
