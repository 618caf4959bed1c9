//! Closed form of the `fabric` workload ([`Fabric`]): collectives on a fat tree under ECMP or planned paths.
//!
//! **Steps.** Every job's collective is a sequence of synchronous steps (see `trainlab_core::workloads::fabric`);
//! in a step each flow carries `b` bytes (`Fabric` docs), every link has the same rate `B`, and a step lasts
//! `alpha + b x L / B`, where `alpha` is the longest path's latency (hops x `link_latency_us`) and `L` the number of
//! flows on the step's most loaded link. With equal flows started together, max-min fair sharing gives exactly
//! that: the flows of the most loaded link get `B / L` and no flow gets less (the flow-level simulator,
//! `trainlab_sim::fabric`, computes it flow by flow).
//!
//! **Hash groups.** The flows of a step meet the fabric's choices in groups: `f` flows that choose among `u` equal
//! links. The groups are: each sending NIC (its flows over its bonded ports), each receiving NIC (over its ports),
//! each leaf's outgoing flows (over its up links), each pod's outgoing flows (over its aggregation-to-core links,
//! 3-tier: two independent uniform choices compose to a uniform choice of one of these links), and, when the last
//! hop down has parallel links (`k > 1` or `m > 1`), each leaf's (pod's) incoming flows over the links down to it.
//! When the down hop has a single link per switch pair its loads repeat the up hop's, and the group is left out.
//! - **Ideal**: the fluid bound, `L = max_g f_g / u_g` over the healthy fabric (the alpha-beta ring with the
//!   fabric's bottleneck capacity: for a ring on NICs of `P` ports, `b x channels / (P B)` a step, busbw =
//!   `rails x P x B`).
//! - **Planned** (C4P-style): every group balanced on its surviving links, `L = max_g ceil(f_g / u_g)`; equal to the
//!   ideal when paths are disjoint and the channels divide evenly over the ports.
//! - **Adaptive** (per-flowlet, local least-loaded): taken as planned, every group balanced by its own switch. This
//!   is exact where each group's flows are decided by one switch, as in rings (a leaf's flows go to one next leaf);
//!   where flows into a leaf come from several leaves (all-to-all), local balance does not balance the down links
//!   and the closed form is optimistic (the simulator has the real choice).
//! - **Degraded links** (`degraded_links`): a link at fraction `c` of the rate. A group's time is `max_l x_l / c_l`;
//!   planned and adaptive routing place the flows one by one where `(x + 1) / c` is least ([`balanced_load`]);
//!   under ECMP `P(max_l X_l / c_l <= s)` is the same dynamic programme with a cap `floor(s c_l)` per bin
//!   ([`p_scaled_max_at_most`]), and the expectation sums `P(max > s)` over the values the maximum can take
//!   ([`expected_max_mixed`]). A link that degrades at `at_s > 0` splits the run into states; the collective's
//!   progress is taken as linear in time within a state ([`phased_time`]).
//! - **ECMP**: each group's maximum load `M_g` is the maximum of `f_g` balls thrown uniformly into `u_g` bins, and
//!   `E[L] = E[max_g M_g] = sum_m (1 - prod_g P(M_g <= m))`, **taking the groups as independent** (the
//!   approximation: a flow's choices at successive tiers are correlated only through the links they share).
//!   `P(M <= m)` is computed **exactly** by a dynamic programme over bins (the first of `j` bins gets
//!   `Binomial(b, 1/j)` of the `b` remaining balls) for `f x u <= 2^20`; larger groups use the independent-bins
//!   approximation `P(Binomial(f, 1/u) <= m)^u`. The per-group distributions are memoised by `(f, u)`.
//!
//! A job's expected step time uses the groups its flows are in; several jobs are taken to be concurrent for their
//! whole run (their steps overlap), which the simulator does not assume.
use std::collections::{BTreeMap, HashMap};
use trainlab_core::workloads::fabric::{LinkRef, Routing, Shape};
use trainlab_core::workloads::{Fabric, FabricOutcome, JobOutcome};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, Workload};

/// Largest `f x u` computed by the exact dynamic programme.
const EXACT_LIMIT: u64 = 1 << 20;

/// `ln k!` for `k = 0..=n`.
fn ln_factorials(n: u64) -> Vec<f64> {
    let mut v = Vec::with_capacity(n as usize + 1);
    let mut acc = 0.0;
    v.push(0.0);
    for k in 1..=n {
        acc += (k as f64).ln();
        v.push(acc);
    }
    v
}

/// `P(max load <= m)` for `f` balls thrown uniformly into `u` bins, exact (dynamic programme over bins).
pub fn p_max_at_most_exact(f: u64, u: u64, m: u64) -> f64 {
    if u == 0 {
        return if f == 0 { 1.0 } else { 0.0 };
    }
    if m >= f {
        return 1.0;
    }
    if m.saturating_mul(u) < f {
        return 0.0;
    }
    let lf = ln_factorials(f);
    all_bins_within(f, u, &lf, |_| m)
}

/// `P(bin j holds at most cap(j) balls for every j in 1..=u)` for `f` balls thrown uniformly into `u` bins, exact:
/// a dynamic programme over bins, `q[b]` = the probability that `b` balls thrown into the bins processed so far
/// respect their caps (`lf`: ln k! for k <= f).
fn all_bins_within(f: u64, u: u64, lf: &[f64], cap: impl Fn(u64) -> u64) -> f64 {
    let mut q: Vec<f64> = (0..=f).map(|b| if b <= cap(1) { 1.0 } else { 0.0 }).collect();
    let mut next = vec![0.0; f as usize + 1];
    for j in 2..=u {
        let c = cap(j);
        let p = 1.0 / j as f64;
        let (lp, lq) = (p.ln(), (1.0 - p).ln());
        for b in 0..=f {
            let mut acc = 0.0;
            for k in 0..=b.min(c) {
                let rest = b - k;
                if q[rest as usize] == 0.0 {
                    continue;
                }
                let ln_pmf = lf[b as usize] - lf[k as usize] - lf[rest as usize] + k as f64 * lp + rest as f64 * lq;
                acc += ln_pmf.exp() * q[rest as usize];
            }
            next[b as usize] = acc.min(1.0);
        }
        std::mem::swap(&mut q, &mut next);
    }
    q[f as usize]
}

/// `P(Binomial(f, 1/u) <= m)^u`: the independent-bins approximation of `P(max load <= m)`.
pub fn p_max_at_most_approx(f: u64, u: u64, m: u64) -> f64 {
    if m >= f {
        return 1.0;
    }
    let lf = ln_factorials(f);
    let p = 1.0 / u as f64;
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    let cdf: f64 = (0..=m)
        .map(|k| (lf[f as usize] - lf[k as usize] - lf[(f - k) as usize] + k as f64 * lp + (f - k) as f64 * lq).exp())
        .sum();
    cdf.min(1.0).powf(u as f64)
}

/// The distribution of the maximum load of `f` balls in `u` bins: `cdf[m] = P(max <= m)`, `m = 0..=f`.
pub fn max_load_cdf(f: u64, u: u64) -> Vec<f64> {
    if u <= 1 {
        return (0..=f).map(|m| if m >= f { 1.0 } else { 0.0 }).collect();
    }
    let exact = f.saturating_mul(u) <= EXACT_LIMIT;
    let mut out = Vec::with_capacity(f as usize + 1);
    let mut done = false;
    let mut prev = 0.0;
    for m in 0..=f {
        let p = if done {
            1.0
        } else if exact {
            p_max_at_most_exact(f, u, m)
        } else {
            p_max_at_most_approx(f, u, m)
        };
        // Stop once the distribution has converged (rounding keeps a sum of exponentials a hair below 1).
        if p >= 1.0 - 1e-12 || (p > 0.5 && p - prev < 1e-15) {
            done = true;
        }
        prev = p;
        out.push(p);
    }
    out
}

/// `E[max load]` of `f` balls in `u` bins.
pub fn expected_max_load(f: u64, u: u64) -> f64 {
    let cdf = max_load_cdf(f, u);
    cdf.iter().map(|p| 1.0 - p).sum()
}

/// What a group of flows chooses among.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupKey {
    /// The ports of a sending NIC `(host, nic)`.
    SendNic(u32, u32),
    /// The ports of a receiving NIC.
    RecvNic(u32, u32),
    /// A leaf's up links.
    LeafUp(u32),
    /// The links down into a leaf from its spines.
    LeafDown(u32),
    /// A pod's aggregation-to-core links.
    PodUp(u32),
    /// The core-to-aggregation links into a pod.
    PodDown(u32),
}

impl GroupKey {
    /// Whether the group's links are uplinks (leaf to spine, aggregation to core).
    pub fn is_uplink(self) -> bool {
        matches!(self, GroupKey::LeafUp(_) | GroupKey::PodUp(_))
    }
}

/// One hash group: `f` flows over `u` surviving links (`u_healthy` without failures), and the jobs with flows in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Group {
    /// Flows.
    pub f: u64,
    /// Surviving links.
    pub u: u64,
    /// Links of the healthy fabric.
    pub u_healthy: u64,
    /// Bit `j` set when job `j` has flows in the group.
    pub jobs: u64,
}

/// Surviving link counts of each group's links, from the failed links.
#[derive(Debug, Clone, Default)]
pub struct Failures {
    ports: HashMap<(u32, u32), u64>,
    leaf_up: HashMap<u32, u64>,
    pod_up: HashMap<u32, u64>,
}

impl Failures {
    /// Counts the failed links by group.
    pub fn of(shape: &Shape, failed: &[LinkRef]) -> Failures {
        let mut f = Failures::default();
        for l in failed {
            match *l {
                LinkRef::HostPort { host, nic, .. } => *f.ports.entry((host, nic)).or_default() += 1,
                LinkRef::LeafSpine { leaf, .. } => *f.leaf_up.entry(leaf).or_default() += 1,
                LinkRef::AggCore { agg, .. } => *f.pod_up.entry(agg / shape.spines_per_pod).or_default() += 1,
            }
        }
        f
    }
    fn down(&self, key: GroupKey) -> u64 {
        let g = |m: &HashMap<u32, u64>, k: u32| m.get(&k).copied().unwrap_or(0);
        match key {
            GroupKey::SendNic(h, r) | GroupKey::RecvNic(h, r) => self.ports.get(&(h, r)).copied().unwrap_or(0),
            GroupKey::LeafUp(l) | GroupKey::LeafDown(l) => g(&self.leaf_up, l),
            GroupKey::PodUp(p) | GroupKey::PodDown(p) => g(&self.pod_up, p),
        }
    }
}

/// The hash groups of the steps `sel` (pairs of job index and pattern index) running at once.
pub fn groups(w: &Fabric, shape: &Shape, fails: &Failures, sel: &[(usize, u64)]) -> BTreeMap<GroupKey, Group> {
    let mut out: BTreeMap<GroupKey, Group> = BTreeMap::new();
    let healthy = |key: GroupKey| -> u64 {
        match key {
            GroupKey::SendNic(..) | GroupKey::RecvNic(..) => shape.ports as u64,
            GroupKey::LeafUp(_) | GroupKey::LeafDown(_) => shape.leaf_uplinks() as u64,
            GroupKey::PodUp(_) | GroupKey::PodDown(_) => shape.spines_per_pod as u64 * shape.agg_uplinks() as u64,
        }
    };
    let mut add = |key: GroupKey, flows: u64, job: usize| {
        let u_h = healthy(key);
        let g = out.entry(key).or_insert(Group {
            f: 0,
            u: u_h.saturating_sub(fails.down(key)),
            u_healthy: u_h,
            jobs: 0,
        });
        g.f += flows;
        g.jobs |= 1 << job;
    };
    for &(j, p) in sel {
        let job = &w.jobs[j];
        let q = job.channels as u64;
        for (a, b) in job.pairs(p) {
            if a == b {
                continue;
            }
            let (la, lb) = (shape.leaf_of(a), shape.leaf_of(b));
            let (pa, pb) = (shape.pod_of_leaf(la), shape.pod_of_leaf(lb));
            for r in 0..shape.nics {
                add(GroupKey::SendNic(a, r), q, j);
                add(GroupKey::RecvNic(b, r), q, j);
                if la != lb {
                    add(GroupKey::LeafUp(la), q, j);
                    if shape.k > 1 {
                        add(GroupKey::LeafDown(lb), q, j);
                    }
                }
                if pa != pb {
                    add(GroupKey::PodUp(pa), q, j);
                    if shape.m > 1 {
                        add(GroupKey::PodDown(pb), q, j);
                    }
                }
            }
        }
    }
    out
}

/// Longest path latency of job `j`'s pattern `p`, seconds.
pub fn step_latency(w: &Fabric, shape: &Shape, j: usize, p: u64) -> f64 {
    let hops = w.jobs[j]
        .pairs(p)
        .iter()
        .map(|&(a, b)| shape.hops(shape.leaf_of(a), shape.leaf_of(b)))
        .max()
        .unwrap_or(0);
    hops as f64 * shape.hop_latency_s
}

/// The steps that run at once with job `j`'s pattern `p`: that pattern and every other job's first pattern.
pub fn concurrent(w: &Fabric, j: usize, p: u64) -> Vec<(usize, u64)> {
    (0..w.jobs.len())
        .map(|i| if i == j { (i, p) } else { (i, 0) })
        .collect()
}

/// Ideal time of job `j`: the fluid bound on the healthy fabric (see the [module docs](self)), seconds.
pub fn ideal_time(w: &Fabric, shape: &Shape, j: usize) -> f64 {
    let job = &w.jobs[j];
    let b = job.flow_bytes(shape);
    let reps = job.repeats(shape) as f64;
    let solo = Failures::default();
    (0..job.patterns())
        .map(|p| {
            let gs = groups(w, shape, &solo, &[(j, p)]);
            let load = gs.values().map(|g| g.f as f64 / g.u_healthy as f64).fold(0.0, f64::max);
            reps * (step_latency(w, shape, j, p) + b * load / shape.link_bytes_per_s)
        })
        .sum()
}

/// Memoised max-load distributions by `(f, u)`.
#[derive(Debug, Default)]
pub struct MaxLoad {
    cdfs: HashMap<(u64, u64), Vec<f64>>,
}

impl MaxLoad {
    /// `P(max load <= m)` of `f` balls in `u` bins.
    pub fn cdf(&mut self, f: u64, u: u64, m: u64) -> f64 {
        let c = self.cdfs.entry((f, u)).or_insert_with(|| max_load_cdf(f, u));
        c.get(m as usize).copied().unwrap_or(1.0)
    }
    /// Distinct distributions computed.
    pub fn len(&self) -> usize {
        self.cdfs.len()
    }
    /// Whether none was computed.
    pub fn is_empty(&self) -> bool {
        self.cdfs.is_empty()
    }
    /// `E[max_g M_g]` over independent groups given as `(f, u) -> how many groups`.
    pub fn expected_max(&mut self, groups: &BTreeMap<(u64, u64), u64>) -> f64 {
        let top = groups.keys().map(|&(f, _)| f).max().unwrap_or(0);
        let mut e = 0.0;
        for m in 0..top {
            let mut ln_p = 0.0;
            for (&(f, u), &count) in groups {
                let p = self.cdf(f, u, m);
                if p <= 0.0 {
                    ln_p = f64::NEG_INFINITY;
                    break;
                }
                ln_p += count as f64 * p.ln();
            }
            e += 1.0 - ln_p.exp();
        }
        e
    }
}

/// The rates (fractions of `link_gbps`) of the degraded links of each hash group, from the degraded links in force.
#[derive(Debug, Clone, Default)]
pub struct Rates {
    by: HashMap<GroupKey, Vec<f64>>,
}

impl Rates {
    /// The degraded links `(link, fraction, at_s)` in force at time `t` (those with `at_s <= t`), by group.
    pub fn at(shape: &Shape, degraded: &[(LinkRef, f64, f64)], t: f64) -> Rates {
        let mut r = Rates::default();
        for &(l, frac, at) in degraded {
            if at > t {
                continue;
            }
            let keys = match l {
                LinkRef::HostPort { host, nic, .. } => [GroupKey::SendNic(host, nic), GroupKey::RecvNic(host, nic)],
                LinkRef::LeafSpine { leaf, .. } => [GroupKey::LeafUp(leaf), GroupKey::LeafDown(leaf)],
                LinkRef::AggCore { agg, .. } => {
                    let pod = agg / shape.spines_per_pod;
                    [GroupKey::PodUp(pod), GroupKey::PodDown(pod)]
                }
            };
            for k in keys {
                r.by.entry(k).or_default().push(frac);
            }
        }
        r
    }
    /// The rates of a group of `u` surviving links: 1 for a healthy link, the fraction for a degraded one. `None`
    /// when every link of the group is healthy.
    fn of(&self, key: GroupKey, u: u64) -> Option<Vec<f64>> {
        let d = self.by.get(&key)?;
        let mut v = vec![1.0; (u as usize).saturating_sub(d.len())];
        v.extend(d.iter().copied().take(u as usize));
        Some(v)
    }
}

/// Planned (and adaptive) load of `f` equal flows on links of rates `rates`: flows placed one by one on the link
/// whose time after adding is least (`(x + 1) / rate`, first of equals), which minimises `max x / rate`. Returns
/// `(max x / rate, max x)`.
pub fn balanced_load(f: u64, rates: &[f64]) -> (f64, u64) {
    if rates.is_empty() {
        return (f64::INFINITY, f);
    }
    let mut x = vec![0u64; rates.len()];
    for _ in 0..f {
        let mut best = 0;
        for i in 1..rates.len() {
            if (x[i] + 1) as f64 / rates[i] < (x[best] + 1) as f64 / rates[best] {
                best = i;
            }
        }
        x[best] += 1;
    }
    let load = x.iter().zip(rates).map(|(&n, &r)| n as f64 / r).fold(0.0, f64::max);
    (load, x.iter().copied().max().unwrap_or(0))
}

/// `P(max_l X_l / rate_l <= s)` for `f` balls thrown uniformly into bins of rates `rates`: every bin `l` holds at
/// most `floor(s rate_l)`. Exact (the dynamic programme over bins with per-bin caps) when `u f^2 <= 2^24`, else the
/// independent-bins approximation.
pub fn p_scaled_max_at_most(f: u64, rates: &[f64], s: f64) -> f64 {
    let u = rates.len() as u64;
    if u == 0 {
        return if f == 0 { 1.0 } else { 0.0 };
    }
    let caps: Vec<u64> = rates
        .iter()
        .map(|&r| ((s * r) + 1e-9).floor().max(0.0) as u64)
        .collect();
    if caps.iter().map(|&c| c.min(f)).sum::<u64>() < f {
        return 0.0;
    }
    let lf = ln_factorials(f);
    let p1 = 1.0 / u as f64;
    if u.saturating_mul(f).saturating_mul(f) > 1 << 24 {
        let (lp, lq) = (p1.ln(), (1.0 - p1).ln());
        let mut prod = 1.0;
        for &c in &caps {
            if c >= f {
                continue;
            }
            let cdf: f64 = (0..=c)
                .map(|k| {
                    (lf[f as usize] - lf[k as usize] - lf[(f - k) as usize] + k as f64 * lp + (f - k) as f64 * lq).exp()
                })
                .sum();
            prod *= cdf.min(1.0);
        }
        return prod;
    }
    all_bins_within(f, u, &lf, |j| caps[j as usize - 1])
}

/// `E[max_g T_g]` over independent groups: healthy ones given as `(f, u) -> how many` (`T` = max flows on a link),
/// degraded ones as `(f, rates)` (`T` = max flows / rate). Sums `P(max > s)` over the sorted values `T` can take.
pub fn expected_max_mixed(ml: &mut MaxLoad, healthy: &BTreeMap<(u64, u64), u64>, degraded: &[(u64, Vec<f64>)]) -> f64 {
    if degraded.is_empty() {
        return ml.expected_max(healthy);
    }
    let mut pts: Vec<f64> = Vec::new();
    let top_h = healthy.keys().map(|&(f, _)| f).max().unwrap_or(0);
    pts.extend((0..=top_h).map(|m| m as f64));
    for (f, rates) in degraded {
        let mut rs: Vec<f64> = rates.clone();
        rs.sort_by(f64::total_cmp);
        rs.dedup();
        for r in rs {
            pts.extend((0..=*f).map(|x| x as f64 / r));
        }
    }
    pts.sort_by(f64::total_cmp);
    pts.dedup_by(|a, b| (*a - *b).abs() <= 1e-12 * b.abs().max(1.0));
    let mut e = 0.0;
    for w in pts.windows(2) {
        let (s, next) = (w[0], w[1]);
        let mut ln_p = 0.0;
        for (&(f, u), &count) in healthy.iter() {
            let p = ml.cdf(f, u, (s + 1e-9).floor() as u64);
            if p <= 0.0 {
                ln_p = f64::NEG_INFINITY;
                break;
            }
            ln_p += count as f64 * p.ln();
        }
        if ln_p.is_finite() {
            for (f, rates) in degraded {
                let p = p_scaled_max_at_most(*f, rates, s);
                if p <= 0.0 {
                    ln_p = f64::NEG_INFINITY;
                    break;
                }
                ln_p += p.ln();
            }
        }
        let p_all = ln_p.exp();
        if p_all >= 1.0 - 1e-15 {
            break;
        }
        e += (next - s) * (1.0 - p_all);
    }
    e
}

/// Per job: the collective's time and its transfer time (no latencies) with the links of `rates`, and the most
/// flows on an uplink (mean under ECMP).
fn job_times(
    w: &Fabric,
    shape: &Shape,
    fails: &Failures,
    rates: &Rates,
    ml: &mut MaxLoad,
) -> (Vec<f64>, Vec<f64>, f64) {
    let mut times = Vec::with_capacity(w.jobs.len());
    let mut busy = Vec::with_capacity(w.jobs.len());
    let mut max_uplink = 0.0f64;
    for (j, job) in w.jobs.iter().enumerate() {
        let b = job.flow_bytes(shape);
        let reps = job.repeats(shape) as f64;
        let (mut time, mut transfer) = (0.0, 0.0);
        for p in 0..job.patterns() {
            let gs = groups(w, shape, fails, &concurrent(w, j, p));
            let (load, uplink) = match w.routing {
                Routing::Planned | Routing::Adaptive => {
                    let c = |k: GroupKey, g: &Group| match rates.of(k, g.u) {
                        None => {
                            let n = g.f.div_ceil(g.u.max(1));
                            (n as f64, n as f64)
                        }
                        Some(r) => {
                            let (l, n) = balanced_load(g.f, &r);
                            (l, n as f64)
                        }
                    };
                    let uplink = gs
                        .iter()
                        .filter(|(k, _)| k.is_uplink())
                        .map(|(k, g)| c(*k, g).1)
                        .fold(0.0, f64::max);
                    let load = gs
                        .iter()
                        .filter(|(_, g)| g.jobs & (1 << j) != 0)
                        .map(|(k, g)| c(*k, g).0)
                        .fold(0.0, f64::max);
                    (load, uplink)
                }
                Routing::Ecmp => {
                    let mut by: BTreeMap<(u64, u64), u64> = BTreeMap::new();
                    let mut slow: Vec<(u64, Vec<f64>)> = Vec::new();
                    for (k, g) in gs.iter().filter(|(_, g)| g.jobs & (1 << j) != 0) {
                        match rates.of(*k, g.u) {
                            None => *by.entry((g.f, g.u.max(1))).or_default() += 1,
                            Some(r) => slow.push((g.f, r)),
                        }
                    }
                    let mut up: BTreeMap<(u64, u64), u64> = BTreeMap::new();
                    for (_, g) in gs.iter().filter(|(k, _)| k.is_uplink()) {
                        *up.entry((g.f, g.u.max(1))).or_default() += 1;
                    }
                    (expected_max_mixed(ml, &by, &slow), ml.expected_max(&up))
                }
            };
            max_uplink = max_uplink.max(uplink);
            let t = b * load / shape.link_bytes_per_s;
            transfer += reps * t;
            time += reps * (step_latency(w, shape, j, p) + t);
        }
        times.push(time);
        busy.push(transfer);
    }
    (times, busy, max_uplink)
}

/// The completion time of a collective that takes `totals[k]` in state `k` (state `k` in force from `starts[k]`,
/// `starts[0] = 0`), its progress taken as linear in time within a state.
pub fn phased_time(starts: &[f64], totals: &[f64]) -> f64 {
    let mut done = 0.0;
    for k in 0..totals.len() {
        let end = starts.get(k + 1).copied().unwrap_or(f64::INFINITY);
        let left = (1.0 - done) * totals[k];
        if starts[k] + left <= end {
            return starts[k] + left;
        }
        done += (end - starts[k]) / totals[k];
    }
    f64::INFINITY
}

/// The closed form's answer (see the [module docs](self)).
pub fn fabric_closed_form(w: &Fabric) -> Result<FabricOutcome, Error> {
    let shape = w.shape()?;
    let fails = Failures::of(&shape, &w.failed()?);
    let degraded = w.degraded()?;
    let mut ml = MaxLoad::default();
    // States: the fabric from 0, then after each distinct degradation time.
    let mut starts: Vec<f64> = vec![0.0];
    let mut ats: Vec<f64> = degraded.iter().map(|d| d.2).filter(|&t| t > 0.0).collect();
    ats.sort_by(f64::total_cmp);
    ats.dedup();
    starts.extend(ats);
    let mut per_state = Vec::with_capacity(starts.len());
    for &t in &starts {
        per_state.push(job_times(w, &shape, &fails, &Rates::at(&shape, &degraded, t), &mut ml));
    }
    let max_uplink = per_state.iter().map(|s| s.2).fold(0.0, f64::max);
    let mut jobs = Vec::with_capacity(w.jobs.len());
    let mut busy = Vec::with_capacity(w.jobs.len());
    for (j, job) in w.jobs.iter().enumerate() {
        let totals: Vec<f64> = per_state.iter().map(|s| s.0[j]).collect();
        let time = phased_time(&starts, &totals);
        // Transfer share of the time, from the state the job finishes in (all states when they agree).
        let last = per_state.iter().zip(&starts).rposition(|(_, &s)| s < time).unwrap_or(0);
        busy.push(time * per_state[last].1[j] / per_state[last].0[j]);
        let ideal = ideal_time(w, &shape, j);
        let ranks = job.ranks(&shape);
        let algbw = job.bytes as f64 / time;
        jobs.push(JobOutcome {
            name: job.name.clone(),
            ranks,
            time_s: time,
            time_ci_s: None,
            ideal_time_s: ideal,
            algbw,
            busbw: algbw * job.collective.busbw_factor(ranks),
            compute_s: job.compute_s,
        });
    }
    let makespan = jobs.iter().map(|j| j.time_s).fold(0.0, f64::max);
    let util = busy.iter().copied().fold(0.0, f64::max) / makespan;
    Ok(FabricOutcome {
        jobs,
        max_link_utilisation: util.min(1.0),
        max_uplink_flows: max_uplink,
        work: ml.len() as u64,
    })
}

/// The closed-form backend (`analytical`).
#[derive(Debug, Clone, Copy, Default)]
pub struct FabricAnalytical;

impl Backend<Fabric> for FabricAnalytical {
    fn name(&self) -> &str {
        "analytical"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, workload: &Fabric, _ctx: &mut RunCtx) -> Result<FabricOutcome, Error> {
        workload.validate()?;
        fabric_closed_form(workload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force over all `u^f` assignments.
    fn brute(f: u32, u: u32, m: u32) -> f64 {
        let total = (u as u64).pow(f);
        let mut ok = 0u64;
        for mut x in 0..total {
            let mut counts = vec![0u32; u as usize];
            for _ in 0..f {
                counts[(x % u as u64) as usize] += 1;
                x /= u as u64;
            }
            ok += (counts.iter().all(|&c| c <= m)) as u64;
        }
        ok as f64 / total as f64
    }

    #[test]
    fn exact_max_load_matches_brute_force() {
        for (f, u) in [(3, 2), (4, 3), (5, 4), (6, 3), (7, 2)] {
            for m in 0..=f {
                let a = p_max_at_most_exact(f as u64, u as u64, m as u64);
                let b = brute(f, u, m);
                assert!((a - b).abs() < 1e-12, "f={f} u={u} m={m}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn scaled_max_load_matches_brute_force_and_the_plain_one() {
        // With every rate 1 it is the plain distribution.
        for (f, u) in [(4u64, 3usize), (6, 2)] {
            for m in 0..=f {
                let a = p_scaled_max_at_most(f, &vec![1.0; u], m as f64);
                assert!((a - p_max_at_most_exact(f, u as u64, m)).abs() < 1e-12);
            }
        }
        // Brute force over all assignments with one half-rate bin.
        let rates = [1.0, 0.5, 1.0];
        let f = 5u32;
        for s in [1.0, 2.0, 2.5, 3.0, 4.0, 6.0] {
            let total = 3u64.pow(f);
            let mut ok = 0u64;
            for mut x in 0..total {
                let mut c = [0u32; 3];
                for _ in 0..f {
                    c[(x % 3) as usize] += 1;
                    x /= 3;
                }
                ok += (0..3).all(|i| c[i] as f64 / rates[i] <= s + 1e-9) as u64;
            }
            let want = ok as f64 / total as f64;
            let got = p_scaled_max_at_most(f as u64, &rates, s);
            assert!((got - want).abs() < 1e-12, "s={s}: {got} vs {want}");
        }
        // The mixed expectation of one group equals the direct sum over its values.
        let mut ml = MaxLoad::default();
        let e = expected_max_mixed(&mut ml, &BTreeMap::new(), &[(2, vec![1.0, 0.5])]);
        // 2 balls on a full and a half-rate bin: (2,0) -> 2, (1,1) -> 2 (twice), (0,2) -> 4: E = (2 + 4 + 4) / 4.
        assert!((e - 2.5).abs() < 1e-12, "{e}");
    }

    #[test]
    fn balanced_load_and_phases() {
        assert_eq!(balanced_load(8, &[1.0, 1.0]), (4.0, 4));
        // 8 connections on a full and a half-rate port: 5 + 3 gives max(5, 6) = 6; 6 + 2 gives max(6, 4) = 6.
        assert_eq!(balanced_load(8, &[1.0, 0.5]).0, 6.0);
        // Healthy 10 s, after t = 4 s the rest at 20 s per collective: 4 + 0.6 x 20 = 16.
        assert!((phased_time(&[0.0, 4.0], &[10.0, 20.0]) - 16.0).abs() < 1e-12);
        assert!((phased_time(&[0.0, 12.0], &[10.0, 20.0]) - 10.0).abs() < 1e-12);
    }

    #[test]
    fn expected_max_matches_the_notes_table() {
        // The C4P notes (§1.5 a) give Monte Carlo values (5,000 trials): E[max] = 2.59 (8 in 8), 3.08 (16 in 16),
        // 2.06 (8 in 16); and the bonded-port efficiency E[Q / (2 max(B, Q-B))] of Q QPs on 2 ports (§1.5 b).
        for (f, u, want) in [(8, 8, 2.59), (16, 16, 3.08), (8, 16, 2.06), (32, 32, 3.53)] {
            let e = expected_max_load(f, u);
            assert!((e - want).abs() < 0.04, "{f} in {u}: {e} vs {want}");
        }
        // Q = 4 on 2 ports: E[max] = (4*2 + 3*8 + 2*6) / 16 = 2.75.
        assert!((expected_max_load(4, 2) - 2.75).abs() < 1e-12);
        // The approximation is close for large groups.
        let (a, b) = (expected_max_load(256, 64), {
            let c: Vec<f64> = (0..=256).map(|m| p_max_at_most_approx(256, 64, m)).collect();
            c.iter().map(|p| 1.0 - p).sum::<f64>()
        });
        assert!((a - b).abs() / a < 0.03, "{a} vs {b}");
    }
}
