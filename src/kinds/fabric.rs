//! The `fabric` kind: collectives of jobs on a fat tree, ECMP vs C4P-style planned paths (issue 10): the closed form
//! (`analytical`), the flow-level simulator (`flow_sim`) and the namespace testbed (`testbed`, measured: a real fat
//! tree of network namespaces, veth links shaped by `tc`, Linux multipath routing and a real ring collective over
//! TCP; `trainlab_executors::netbed`).
//!
//! Honest answers: the testbed builds 2-tier fabrics of at most 16 single-NIC, single-GPU hosts and runs ring
//! collectives; anything else is refused with the field to change (exit 2 under `run --backend testbed`, an error
//! row under `compare`). Links faster than 1 Gb/s are answered scaled: the testbed runs the same fabric at 0.1 Gb/s
//! with the buffer scaled by the same factor (the same ideal time), and files its answer under that workload, where
//! the closed form and the simulator answer it too. The testbed adds no link latency (`link_latency_us` is answered
//! as 0) and bounds each collective to [`TESTBED_MAX_S`] seconds of ideal time (larger buffers are scaled down).
//!
//! Calibration (`trainlab calibrate --workload fabric`, root only): testbed runs at 0.1 Gb/s fit the effective link
//! capacity, the per-hop latency and the per-flow overhead of `trainlab_models::fabric_cal` on small rings, then
//! predict held-out rings on other topologies (oversubscribed, more leaves) and policies (ECMP and planned) with the
//! flow simulator's max-min model on the paths the flows really took. With `--profile`, `analytical` and `flow_sim`
//! read the fitted values for workloads at the profile's link rate.
use super::{KindDef, Opts};
use crate::calibration::{CalRequest, Calibrated, Calibration, Device, envelope, provenance};
use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use trainlab_core::workloads::Fabric;
use trainlab_core::workloads::fabric::{
    FabricJob, FabricOp, FabricOutcome, JobOutcome, LinkRef, Placement, Routing, Topology,
};
use trainlab_core::{
    Backend, Error, Fidelity, HeldOut, Metric, Outcome, Profile, Record, RunCtx, Seed, Unit, Workload,
};
use trainlab_executors::netbed::{self, BedRun, Ring, RingOp, Topo};
use trainlab_models::fabric::ideal_time;
use trainlab_models::fabric_cal::{self, TestbedCase, TestbedParams};
use trainlab_sim::fabric::{FlowCase, flow_case};
use trainlab_sim::fabric_replay::{fluid_step, replay};

/// Link rate the testbed runs a faster fabric at, Gb/s.
pub const TESTBED_GBPS: f64 = 0.1;
/// Most ideal seconds of one testbed collective (larger buffers are scaled down).
pub const TESTBED_MAX_S: f64 = 8.0;
/// Smallest buffer the testbed runs, bytes.
pub const TESTBED_MIN_BYTES: u64 = 64 << 10;

fn profile(o: &Opts) -> Result<Option<Profile<TestbedParams>>, Error> {
    let p = o.profiles.get_one::<TestbedParams>("fabric", |_| true)?;
    if let Some(p) = &p {
        p.params.validate("profile.params")?;
    }
    Ok(p)
}

fn backends(opts: &Opts) -> Result<super::Backends<Fabric>, Error> {
    let params = profile(opts)?.map(|p| p.params);
    Ok(vec![
        Box::new(Profiled {
            inner: Box::new(trainlab_models::fabric::FabricAnalytical),
            params: params.clone(),
        }),
        Box::new(Profiled {
            inner: Box::new(trainlab_sim::fabric::FabricSim {
                replications: if opts.quick { 2 } else { 8 },
            }),
            params,
        }),
        Box::new(FabricTestbed),
    ])
}

/// The `fabric` kind.
pub static KIND: KindDef<Fabric> = KindDef {
    about: "collectives of jobs on a 2- or 3-tier fat tree: ECMP, planned or adaptive paths, failed and degraded links (C4P)",
    reads: &["fabric"],
    reference: &["testbed", "flow_sim", "analytical"],
    headline: &["time", "busbw", "slowdown", "max_uplink_flows", "step_time"],
    backends,
    describe: |w| format!("{} job(s), {}", w.jobs.len(), w.routing.as_str()),
    profiled: |o, w| match profile(o) {
        Ok(Some(p)) if p.params.applies_to(w.topology.link_gbps) => {
            vec![("analytical", "fabric".into()), ("flow_sim", "fabric".into())]
        }
        _ => vec![],
    },
    calibration: Some(&FabricCalibration),
};

/// A model backend that reads the testbed profile for workloads at its link rate: effective capacity for the link
/// rate, the fitted hop latency added to the workload's, and each step charged the per-flow overhead of the flows a
/// host sends.
struct Profiled {
    inner: Box<dyn Backend<Fabric>>,
    params: Option<TestbedParams>,
}

/// `w` with the profile's effective capacity and hop latency.
pub fn with_profile(w: &Fabric, p: &TestbedParams) -> Fabric {
    let mut x = w.clone();
    x.topology.link_gbps = w.topology.link_gbps * p.capacity_gbps / p.link_gbps;
    x.topology.link_latency_us = (w.topology.link_latency_us + p.hop_latency_us).max(0.0);
    x
}

impl Backend<Fabric> for Profiled {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn fidelity(&self) -> Fidelity {
        self.inner.fidelity()
    }
    fn run(&mut self, w: &Fabric, ctx: &mut RunCtx) -> Result<FabricOutcome, Error> {
        let Some(p) = self.params.as_ref().filter(|p| p.applies_to(w.topology.link_gbps)) else {
            return self.inner.run(w, ctx);
        };
        w.validate()?;
        let shape = w.shape()?;
        let mut o = self.inner.run(&with_profile(w, p), ctx)?;
        for (j, jo) in o.jobs.iter_mut().enumerate() {
            let job = &w.jobs[j];
            let extra =
                job.steps(&shape) as f64 * (shape.nics as f64 * job.channels as f64) * p.flow_overhead_us * 1e-6;
            jo.time_s += extra;
            jo.time_ci_s = jo.time_ci_s.map(|(a, b)| (a + extra, b + extra));
            jo.ideal_time_s = ideal_time(w, &shape, j);
            jo.algbw = job.bytes as f64 / jo.time_s;
            jo.busbw = jo.algbw * job.collective.busbw_factor(jo.ranks);
        }
        Ok(o)
    }
}

/// Why the testbed cannot run `w` (field path and fix), if it cannot.
pub fn testbed_refusal(w: &Fabric) -> Result<(), Error> {
    w.validate()?;
    let t = &w.topology;
    let not = |field: &str, value: String, why: &str, fix: &str| {
        Err(Error::invalid(
            format!("workload.topology.{field}"),
            value,
            format!("the namespace testbed {why}"),
            fix,
        ))
    };
    if w.routing == Routing::Adaptive {
        return Err(Error::invalid(
            "workload.routing",
            w.routing.as_str(),
            "the namespace testbed routes by Linux's multipath hash (ecmp) or pinned paths (planned), not per flowlet",
            "use routing = \"ecmp\" or \"planned\", or compare without --backend testbed",
        ));
    }
    if !w.degraded_links.is_empty() {
        return Err(Error::invalid(
            "workload.degraded_links",
            format!("{} link(s)", w.degraded_links.len()),
            "the namespace testbed does not degrade a link mid-run",
            "remove degraded_links, or compare without --backend testbed",
        ));
    }
    if t.pods.is_some() {
        return not(
            "pods",
            format!("{:?}", t.pods),
            "builds 2-tier fat trees",
            "drop pods and cores, or compare without --backend testbed",
        );
    }
    if t.nics_per_host != 1 {
        return not(
            "nics_per_host",
            t.nics_per_host.to_string(),
            "gives every host one NIC",
            "use nics_per_host = 1",
        );
    }
    if t.ports_per_nic != 1 {
        return not(
            "ports_per_nic",
            t.ports_per_nic.to_string(),
            "gives every NIC one port",
            "use ports_per_nic = 1",
        );
    }
    if t.gpus_per_host != 1 {
        return not(
            "gpus_per_host",
            t.gpus_per_host.to_string(),
            "runs one rank a host",
            "use gpus_per_host = 1",
        );
    }
    if t.link_gbps < netbed::MIN_MBIT / 1000.0 {
        return not(
            "link_gbps",
            t.link_gbps.to_string(),
            "cannot shape links below 1 Mbit/s in a bounded run",
            "use link_gbps >= 0.001",
        );
    }
    for (i, j) in w.jobs.iter().enumerate() {
        if j.collective == FabricOp::AllToAll {
            return Err(Error::invalid(
                format!("workload.jobs[{i}].collective"),
                "all_to_all",
                "the namespace testbed runs ring collectives",
                "use all_reduce, all_gather or reduce_scatter",
            ));
        }
    }
    topo(w, t.link_gbps.min(1.0), 1)?.check()
}

/// The testbed's network for `w` at `gbps`.
fn topo(w: &Fabric, gbps: f64, hash_seed: u32) -> Result<Topo, Error> {
    let shape = w.shape()?;
    let dead = w
        .failed()?
        .into_iter()
        .filter_map(|l| match l {
            LinkRef::LeafSpine { leaf, s, j } => Some((leaf, s, j)),
            _ => None,
        })
        .collect();
    Ok(Topo {
        hosts_per_leaf: shape.hosts_per_leaf,
        leaves: shape.leaves(),
        spines: shape.spines_per_pod,
        k: shape.k,
        rate_mbit: gbps * 1000.0,
        dead,
        hash_seed,
    })
}

/// The workload the testbed really runs for `w` (`None`: `w` itself). Assumes `testbed_refusal(w)` passed.
pub fn on_testbed(w: &Fabric) -> Option<Fabric> {
    let mut x = w.clone();
    if w.topology.link_gbps > netbed::MAX_MBIT / 1000.0 {
        let f = TESTBED_GBPS / w.topology.link_gbps;
        x.topology.link_gbps = TESTBED_GBPS;
        for j in x.jobs.iter_mut() {
            j.bytes = ((j.bytes as f64 * f) as u64).max(TESTBED_MIN_BYTES);
        }
    }
    x.topology.link_latency_us = 0.0;
    if let Ok(shape) = x.shape() {
        for j in 0..x.jobs.len() {
            let t = ideal_time(&x, &shape, j);
            if t > TESTBED_MAX_S {
                let b = (x.jobs[j].bytes as f64 * TESTBED_MAX_S / t) as u64;
                x.jobs[j].bytes = b.max(TESTBED_MIN_BYTES);
            }
            x.jobs[j].bytes = x.jobs[j].bytes.min(netbed::MAX_BYTES);
        }
    }
    (x != *w).then_some(x)
}

/// The measured backend: the namespace testbed.
#[derive(Debug, Clone, Copy, Default)]
pub struct FabricTestbed;

impl Backend<Fabric> for FabricTestbed {
    fn name(&self) -> &str {
        "testbed"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Measured
    }
    fn available(&self) -> Result<(), String> {
        netbed::available()
    }
    fn answers(&self, w: &Fabric) -> Result<Option<Fabric>, Error> {
        // A workload the testbed refuses is answered by the refusal itself (an error row, exit 2 under `run`).
        Ok(match testbed_refusal(w) {
            Ok(()) => on_testbed(w),
            Err(_) => None,
        })
    }
    fn run(&mut self, w: &Fabric, ctx: &mut RunCtx) -> Result<FabricOutcome, Error> {
        testbed_refusal(w)?;
        let x = on_testbed(w).unwrap_or_else(|| w.clone());
        Ok(run_testbed(&x, ctx.seed, &ctx.cancel)?.outcome)
    }
}

/// One testbed run: what was measured and the answer built from it.
#[derive(Debug, Clone)]
pub struct TestbedRun {
    /// The raw measurement.
    pub bed: BedRun,
    /// The answer (same metrics as the other backends).
    pub outcome: FabricOutcome,
    /// The flows as the testbed routed them (the simulator's flow case with the real paths).
    pub case: FlowCase,
    /// Source port of every flow of every job.
    pub sports: Vec<Vec<u16>>,
}

/// Runs `w` (a workload the testbed takes as it is) on the testbed.
pub fn run_testbed(w: &Fabric, seed: Seed, cancel: &AtomicBool) -> Result<TestbedRun, Error> {
    testbed_refusal(w)?;
    let shape = w.shape()?;
    let t = topo(w, w.topology.link_gbps, seed.derive("ecmp-hash").0 as u32)?;
    // The simulator's routes: under `planned`, the paths the testbed pins.
    let mut case = flow_case(w, seed.derive("fabric").index(0))?;
    let mut used = HashSet::new();
    let mut rings = Vec::new();
    let mut sports = Vec::new();
    let mut port_rng = seed.derive("sport").index(0).0;
    for (ji, job) in w.jobs.iter().enumerate() {
        let hosts = job.hosts();
        let nf = hosts.len() * job.channels as usize;
        let mut sp = Vec::with_capacity(nf);
        while sp.len() < nf {
            // SplitMix64 steps: distinct ports in 20000..60000.
            port_rng = port_rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = port_rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let p = 20_000 + ((z ^ (z >> 31)) % 40_000) as u16;
            if used.insert(p) {
                sp.push(p);
            }
        }
        let pins = match w.routing {
            Routing::Ecmp | Routing::Adaptive => vec![None; nf],
            Routing::Planned => case.jobs[ji].patterns[0]
                .paths
                .iter()
                .map(|p| {
                    if p.len() < 4 {
                        return None;
                    }
                    let h = t.hosts();
                    let up = p[1] / 2 - h;
                    let down = p[2] / 2 - h;
                    Some(((up / t.k) % t.spines, up % t.k, down % t.k))
                })
                .collect(),
        };
        rings.push(Ring {
            hosts,
            channels: job.channels,
            bytes: job.bytes,
            op: match job.collective {
                FabricOp::AllReduce => RingOp::AllReduce,
                FabricOp::AllGather => RingOp::AllGather,
                _ => RingOp::ReduceScatter,
            },
            sports: sp.clone(),
            pins,
        });
        sports.push(sp);
    }
    let ideal: f64 = (0..w.jobs.len()).map(|j| ideal_time(w, &shape, j)).fold(0.0, f64::max);
    // Bounded: generous over the ideal time (collisions, a loaded machine), and never under 20 s.
    let limit = Duration::from_secs_f64((20.0 * ideal).clamp(20.0, 300.0));
    let bed = netbed::run(&t, &rings, cancel, limit)?;
    for (j, job) in case.jobs.iter_mut().enumerate() {
        job.patterns[0].paths = bed.paths[j].clone();
    }
    let makespan = bed.times_s.iter().copied().fold(0.0, f64::max);
    let cap = shape.link_bytes_per_s;
    let peak = bed.tx_bytes.iter().copied().max().unwrap_or(0) as f64;
    let mut on_link = vec![0u32; t.links()];
    for p in bed.paths.iter().flatten() {
        for &l in p {
            on_link[l as usize] += 1;
        }
    }
    let hosts = t.hosts();
    let max_uplink = (0..t.links())
        .filter(|&l| l % 2 == 0 && l as u32 / 2 >= hosts)
        .map(|l| on_link[l])
        .max()
        .unwrap_or(0);
    let jobs = w
        .jobs
        .iter()
        .enumerate()
        .map(|(j, job)| {
            let ranks = job.ranks(&shape);
            let time_s = bed.times_s[j];
            let algbw = job.bytes as f64 / time_s;
            JobOutcome {
                name: job.name.clone(),
                ranks,
                time_s,
                time_ci_s: None,
                ideal_time_s: ideal_time(w, &shape, j),
                algbw,
                busbw: algbw * job.collective.busbw_factor(ranks),
                compute_s: job.compute_s,
            }
        })
        .collect();
    let outcome = FabricOutcome {
        jobs,
        max_link_utilisation: peak / (cap * makespan),
        max_uplink_flows: max_uplink as f64,
        work: bed.paths.iter().map(Vec::len).sum::<usize>() as u64,
    };
    Ok(TestbedRun {
        bed,
        outcome,
        case,
        sports,
    })
}

/// A 2-tier testbed workload at 0.1 Gb/s: one ring all-reduce over `hosts`.
#[allow(clippy::too_many_arguments)]
pub fn testbed_workload(
    hosts_per_leaf: u32,
    leaves: u32,
    spines: u32,
    oversubscription: f64,
    hosts: Vec<u32>,
    bytes: u64,
    channels: u32,
    routing: Routing,
) -> Fabric {
    Fabric {
        topology: Topology {
            hosts_per_leaf,
            leaves,
            spines,
            pods: None,
            cores: None,
            oversubscription,
            core_oversubscription: 1.0,
            link_gbps: TESTBED_GBPS,
            link_latency_us: 0.0,
            gpus_per_host: 1,
            nics_per_host: 1,
            ports_per_nic: 1,
        },
        routing,
        jobs: vec![FabricJob {
            name: "ring".into(),
            placement: Placement {
                first: None,
                count: None,
                hosts: Some(hosts),
            },
            collective: FabricOp::AllReduce,
            bytes,
            channels,
            compute_s: 0.0,
        }],
        failed_links: vec![],
        degraded_links: vec![],
    }
}

struct CalCase {
    label: &'static str,
    w: Fabric,
    held_out: bool,
}

/// The calibration's cases: small rings to fit (one flow per link, sizes, hops, channels), larger rings on other
/// topologies and policies held out.
fn cal_cases(quick: bool) -> Vec<CalCase> {
    let mib = if quick { 1u64 << 18 } else { 1 << 20 };
    let c = |label, w, held_out| CalCase { label, w, held_out };
    let a = |hosts: Vec<u32>, bytes, ch, r| testbed_workload(2, 2, 2, 1.0, hosts, bytes, ch, r);
    use Routing::{Ecmp, Planned};
    vec![
        c("2 hosts, one leaf, 1 MiB", a(vec![0, 1], mib, 1, Planned), false),
        c("2 hosts, one leaf, 4 MiB", a(vec![0, 1], 4 * mib, 1, Planned), false),
        c("2 hosts, two leaves, 1 MiB", a(vec![0, 2], mib, 1, Planned), false),
        c("2 hosts, two leaves, 4 MiB", a(vec![0, 2], 4 * mib, 1, Planned), false),
        c(
            "2 hosts, two leaves, 4 MiB, 4 channels",
            a(vec![0, 2], 4 * mib, 4, Planned),
            false,
        ),
        c(
            "4 hosts, 2x2 tree, 2 MiB",
            a(vec![0, 1, 2, 3], 2 * mib, 1, Planned),
            false,
        ),
        c(
            "4 hosts, 2x2 tree, 4 MiB, 2 channels",
            a(vec![0, 1, 2, 3], 4 * mib, 2, Planned),
            false,
        ),
        // Held out: rings that cross leaves twice per leaf, ECMP and planned, other topologies.
        c(
            "4 hosts, 2x2 tree, ring across, 8 MiB, planned",
            a(vec![0, 2, 1, 3], 8 * mib, 1, Planned),
            true,
        ),
        c(
            "4 hosts, 2x2 tree, ring across, 8 MiB, ecmp",
            a(vec![0, 2, 1, 3], 8 * mib, 1, Ecmp),
            true,
        ),
        c(
            "4 hosts, 2x2 tree, ring across, 8 MiB, 2 ch, ecmp",
            a(vec![0, 2, 1, 3], 8 * mib, 2, Ecmp),
            true,
        ),
        c(
            "8 hosts, 2 leaves 2:1, ring across, 8 MiB, planned",
            testbed_workload(4, 2, 2, 2.0, vec![0, 4, 1, 5, 2, 6, 3, 7], 8 * mib, 1, Planned),
            true,
        ),
        c(
            "8 hosts, 2 leaves 2:1, ring across, 8 MiB, ecmp",
            testbed_workload(4, 2, 2, 2.0, vec![0, 4, 1, 5, 2, 6, 3, 7], 8 * mib, 1, Ecmp),
            true,
        ),
        c(
            "8 hosts, 4 leaves, ring across, 8 MiB, planned",
            testbed_workload(2, 4, 2, 1.0, vec![0, 2, 4, 6, 1, 3, 5, 7], 8 * mib, 1, Planned),
            true,
        ),
        c(
            "8 hosts, 4 leaves, ring across, 8 MiB, ecmp",
            testbed_workload(2, 4, 2, 1.0, vec![0, 2, 4, 6, 1, 3, 5, 7], 8 * mib, 1, Ecmp),
            true,
        ),
    ]
}

/// The 1-minute load average.
fn load() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// A calibration case from a testbed run of `w`.
pub fn testbed_case(label: &str, held_out: bool, w: &Fabric, r: &TestbedRun) -> Result<TestbedCase, Error> {
    let shape = w.shape()?;
    let job = &w.jobs[0];
    let fc = &r.case;
    let pat = &fc.jobs[0].patterns[0];
    let unit = fluid_step(fc.links, 1.0, &pat.paths, pat.bytes) * fc.jobs[0].steps as f64;
    let max_hops = job
        .pairs(0)
        .iter()
        .map(|&(a, b)| shape.hops(shape.leaf_of(a), shape.leaf_of(b)))
        .max()
        .unwrap_or(0);
    Ok(TestbedCase {
        label: label.to_string(),
        held_out,
        routing: w.routing.as_str().to_string(),
        links: fc.links,
        steps: job.steps(&shape),
        max_hops,
        flows_per_host: job.channels,
        flow_bytes: pat.bytes,
        paths: pat.paths.clone(),
        unit_fluid_s: unit,
        bytes: job.bytes,
        busbw_factor: job.collective.busbw_factor(job.ranks(&shape)),
        measured_s: r.outcome.jobs[0].time_s,
        load: load(),
    })
}

/// The held-out table of `p`: busbw measured vs predicted with the fitted values and with the nominal ones.
pub fn held_out_rows(p: &TestbedParams) -> Vec<HeldOut> {
    p.cases
        .iter()
        .filter(|c| c.held_out)
        .map(|c| {
            let bw = |t: f64| c.bytes as f64 / t * c.busbw_factor;
            HeldOut {
                case: c.label.clone(),
                metric: "busbw".into(),
                measured: bw(c.measured_s),
                calibrated: bw(p.predict_s(c)),
                uncalibrated: Some(bw(fabric_cal::predict_nominal(c, p.link_gbps))),
            }
        })
        .collect()
}

/// Calibration of the flow model against the namespace testbed.
pub struct FabricCalibration;

impl Calibration for FabricCalibration {
    fn profile_kind(&self) -> &'static str {
        "fabric"
    }
    fn devices(&self) -> &'static [Device] {
        &[Device::Cpu]
    }
    fn run(&self, req: &CalRequest<'_>) -> Result<Calibrated, Error> {
        netbed::available()
            .map_err(|why| Error::Unsupported(format!("the fabric calibration needs the testbed: {why}")))?;
        let cases = cal_cases(req.quick);
        let study = "calibrate-fabric-testbed";
        // Interleaved passes over all cases, the fastest of each kept: other processes on a shared machine only
        // add time (the same seed gives the same paths in every pass).
        let passes = if req.quick { 1 } else { 2 };
        let mut measured: Vec<Option<TestbedCase>> = vec![None; cases.len()];
        let mut records = Vec::new();
        for pass in 0..passes {
            for (i, c) in cases.iter().enumerate() {
                (req.progress)(format!(
                    "testbed pass {} of {passes}: {} ({} of {})",
                    pass + 1,
                    c.label,
                    i + 1,
                    cases.len()
                ));
                let r = run_testbed(&c.w, req.seed.index(i as u64), req.cancel)?;
                let tc = testbed_case(c.label, c.held_out, &c.w, &r)?;
                let set = if c.held_out { "held-out" } else { "fit" };
                let label = format!("{} [{set}] pass {}", c.label, pass + 1);
                let recs: Vec<Record> = r
                    .outcome
                    .metrics()
                    .iter()
                    .map(|m| {
                        Record::from_metric(
                            study,
                            Fabric::KIND,
                            &label,
                            "testbed",
                            Fidelity::Measured,
                            req.seed.0,
                            m,
                        )
                    })
                    .collect();
                (req.keep)(recs.clone());
                records.extend(recs);
                if measured[i].as_ref().is_none_or(|m| tc.measured_s < m.measured_s) {
                    measured[i] = Some(tc);
                }
            }
        }
        let measured: Vec<TestbedCase> = measured.into_iter().flatten().collect();
        let (cap, lat, o) = fabric_cal::fit(&measured).ok_or_else(|| {
            Error::Backend("the fabric calibration: the fit cases do not determine the parameters".into())
        })?;
        let params = TestbedParams {
            link_gbps: TESTBED_GBPS,
            capacity_gbps: cap * 8.0 / 1e9,
            hop_latency_us: lat * 1e6,
            flow_overhead_us: o * 1e6,
            cases: measured,
        };
        for c in &params.cases {
            let set = if c.held_out { "held-out" } else { "fit" };
            let label = format!("{} [{set}]", c.label);
            let bw = |t: f64| c.bytes as f64 / t * c.busbw_factor;
            for (backend, v) in [
                ("flow_sim-calibrated", bw(params.predict_s(c))),
                ("flow_sim", bw(fabric_cal::predict_nominal(c, params.link_gbps))),
            ] {
                records.push(Record::from_metric(
                    study,
                    Fabric::KIND,
                    &label,
                    backend,
                    Fidelity::Simulated,
                    req.seed.0,
                    &Metric::new("busbw", Unit::BytesPerSecond, v),
                ));
            }
        }
        let held_out = held_out_rows(&params);
        let errs: Vec<f64> = held_out.iter().map(|h| h.calibrated_error().abs()).collect();
        let worst = errs.iter().copied().fold(0.0f64, f64::max);
        let device = format!(
            "namespace testbed on this machine: veth links at {} Mbit/s (tc tbf), Linux multipath (L4 hash)",
            TESTBED_GBPS * 1000.0
        );
        let prov = provenance(device.clone(), params.cases.iter().map(|c| c.label.clone()).collect());
        let notes = vec![
            format!("device: {device}"),
            format!(
                "fitted: effective link capacity {:.2} Mbit/s ({:.1}% of the nominal rate), hop latency {:.1} us, \
                 per-flow overhead {:.1} us a step",
                params.capacity_gbps * 1000.0,
                100.0 * params.capacity_gbps / params.link_gbps,
                params.hop_latency_us,
                params.flow_overhead_us
            ),
            format!(
                "held-out busbw: worst |error| {:.1}% over {} cases; machine load (1-minute average) {:.2}",
                100.0 * worst,
                errs.len(),
                load()
            ),
        ];
        let json = serde_json::json!({
            "device": device,
            "capacity_gbps": params.capacity_gbps,
            "hop_latency_us": params.hop_latency_us,
            "flow_overhead_us": params.flow_overhead_us,
            "held_out_max_abs_error": worst,
        });
        Ok(Calibrated {
            profile_kind: "fabric",
            profile_toml: envelope("fabric", prov, params, held_out.clone())?,
            held_out,
            records,
            notes,
            json,
        })
    }
}

/// Recomputes a case's fluid time from its paths (what the committed profile's check does).
pub fn unit_fluid(c: &TestbedCase) -> f64 {
    fluid_step(c.links, 1.0, &c.paths, c.flow_bytes) * c.steps as f64
}

/// The flow simulator's answer on the case's real paths at capacity `cap` bytes/s (no latency).
pub fn replay_case(case: &FlowCase, cap: f64) -> Vec<f64> {
    replay(case, Some(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_testbed_refuses_what_it_cannot_build_naming_the_field() {
        let ok = testbed_workload(2, 2, 2, 1.0, vec![0, 2, 1, 3], 1 << 20, 1, Routing::Ecmp);
        testbed_refusal(&ok).unwrap();
        assert_eq!(on_testbed(&ok), None);
        let mut big = testbed_workload(8, 4, 2, 1.0, (0..32).collect(), 1 << 20, 1, Routing::Ecmp);
        let e = testbed_refusal(&big).unwrap_err().to_string();
        assert!(e.contains("workload.topology.hosts_per_leaf"), "{e}");
        big.topology.nics_per_host = 2;
        assert!(testbed_refusal(&big).unwrap_err().to_string().contains("nics_per_host"));
        let mut slow = ok.clone();
        slow.topology.link_gbps = 1e-6;
        let e = testbed_refusal(&slow).unwrap_err().to_string();
        assert!(e.contains("workload.topology.link_gbps"), "{e}");
        // Routing per flowlet and degrading a link mid-run are the simulator's, not the testbed's.
        let adaptive = testbed_workload(2, 2, 2, 1.0, vec![0, 2, 1, 3], 1 << 20, 1, Routing::Adaptive);
        let e = testbed_refusal(&adaptive).unwrap_err().to_string();
        assert!(e.contains("workload.routing"), "{e}");
        let mut degraded = ok.clone();
        degraded.degraded_links = vec![trainlab_core::workloads::fabric::DegradedLink {
            a: "leaf0".into(),
            b: "spine0".into(),
            index: 0,
            fraction: 0.5,
            at_s: 0.0,
        }];
        degraded.validate().unwrap();
        let e = testbed_refusal(&degraded).unwrap_err().to_string();
        assert!(e.contains("workload.degraded_links"), "{e}");
        // A fast fabric is answered scaled to 0.1 Gb/s with the same ideal time (bounded).
        let mut fast = ok.clone();
        fast.topology.link_gbps = 100.0;
        fast.jobs[0].bytes = 1 << 30;
        testbed_refusal(&fast).unwrap();
        let x = on_testbed(&fast).expect("scaled");
        assert_eq!(x.topology.link_gbps, TESTBED_GBPS);
        assert_eq!(x.jobs[0].bytes, 1_073_741); // 1 GiB x 0.1/100
        assert_eq!(on_testbed(&x), None);
    }

    #[test]
    fn the_profile_scales_capacity_and_adds_latency_and_overhead() {
        let w = testbed_workload(2, 2, 2, 1.0, vec![0, 2, 1, 3], 1 << 20, 2, Routing::Planned);
        let p = TestbedParams {
            link_gbps: 0.1,
            capacity_gbps: 0.09,
            hop_latency_us: 50.0,
            flow_overhead_us: 100.0,
            cases: vec![],
        };
        let mut plain = trainlab_sim::fabric::FabricSim { replications: 1 };
        let mut prof = Profiled {
            inner: Box::new(plain),
            params: Some(p.clone()),
        };
        let mut ctx = RunCtx::new(Seed(1));
        let a = plain.run(&w, &mut ctx).unwrap().jobs[0].time_s;
        let b = prof.run(&w, &mut ctx).unwrap().jobs[0].time_s;
        // 6 steps: fluid x 0.1/0.09, + 6 x 4 hops x 50 us + 6 x 2 flows x 100 us.
        let want = a / 0.9 + 6.0 * 4.0 * 50e-6 + 6.0 * 2.0 * 100e-6;
        assert!((b - want).abs() < 1e-9 * want, "{b} vs {want}");
    }
}
