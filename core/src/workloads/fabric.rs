//! The `fabric` workload: collectives of one or more jobs on a 2- or 3-tier fat tree (Clos), routed by ECMP or by a
//! C4P-style path planner (C4, arXiv 2406.04594, HPCA 2025; notes in `shared/design/notes/c4-picasso-moe.md`, C4P
//! sections). The closed form lives in `trainlab_models::fabric`, the flow-level simulator in `trainlab_sim::fabric`.
//!
//! # The fabric
//! - **Hosts** hold `gpus_per_host` GPUs (ranks) and `nics_per_host` NICs; NIC `r` of every host is rail `r`. Each NIC
//!   has `ports_per_nic` ports (2 = a dual-port bonded NIC), every port a link of `link_gbps` to the host's leaf (both
//!   ports to the same leaf: dual-ToR wiring is not modelled).
//! - **2-tier**: `leaves` leaves of `hosts_per_leaf` hosts, `spines` spines. A leaf has `d = hosts_per_leaf x
//!   nics_per_host x ports_per_nic` down ports and `u = d / oversubscription` up ports, spread evenly: `k = u / spines`
//!   parallel links to every spine.
//! - **3-tier** (`pods` set): `pods` pods of `leaves` leaves and `spines` aggregation switches each; `cores` core
//!   switches in `spines` planes of `cores / spines`. Aggregation switch `s` of every pod connects to the cores of
//!   plane `s`, with `m = (leaves x k / core_oversubscription) / (cores / spines)` parallel links to each.
//! - Every link is full duplex at `link_gbps` each way and adds `link_latency_us` per hop.
//!
//! # Traffic
//! A job runs on whole hosts (`placement`: a contiguous range or a list), its ranks are the hosts' GPUs in placement
//! order, and it runs one collective of `bytes` (the nccl-tests "size": each rank's buffer). Ring collectives run as
//! NCCL runs them on a multi-NIC host: one ring per rail, each ring through every rank, the buffer split evenly over
//! the rings; inside a host the ring uses NVLink, which is taken to be no bottleneck, so the network carries the hops
//! between consecutive hosts. Each hop is `channels` flows (connections, each its own queue pair and UDP source port).
//! All-reduce is `2(n-1)` steps, all-gather and reduce-scatter `n-1` steps, each moving `bytes / n` per rank
//! (`bytes / (n x rails x channels)` per flow); every step uses the same connections. All-to-all runs as `h-1` shift
//! steps over the job's `h` hosts (step `k`: host `i` sends to host `i+k`), `g^2 bytes / n` per host pair.
//!
//! # Routing
//! `ecmp`: every switch (and the bonded NIC, for its port) hashes the flow's 5-tuple with its own seed; `planned`:
//! C4P-style, each connection on the least-loaded path, bonded ports balanced; `adaptive`: per-flowlet adaptive
//! routing, each switch (and the bonded NIC) sending a flowlet (one step of a connection) on its locally least-loaded
//! next hop, re-decided at every step, without the planner's view of the rest of the path. `failed_links` are removed
//! before routing (both directions).
//!
//! # Degraded links
//! `degraded_links` run at a `fraction` of `link_gbps` (a half-rate port: 0.5) from `at_s` seconds into the run
//! (0: from the start), both directions. ECMP does not see them (the hash is the same); the planner re-plans every
//! running job at that moment, weighing each link by its rate, so it moves connections onto healthy paths; adaptive
//! routing weighs its local choice by the rate from the next step on.
use serde::{Deserialize, Serialize};

use crate::error::check;
use crate::{Error, Metric, Outcome, Unit, Workload};

/// Most hosts in one fabric (2^16: a 16,384-GPU cluster at 8 GPUs a host is 2,048).
pub const MAX_HOSTS: u64 = 1 << 16;
/// Most directed links of each tier (host ports, leaf uplinks, core links).
pub const MAX_LINKS_PER_TIER: u64 = 1 << 22;
/// Most flows active at once (all jobs, one step each).
pub const MAX_FLOWS: u64 = 1 << 22;
/// Most hosts of an all-to-all job (its steps differ, so each is routed and simulated).
pub const MAX_ALL_TO_ALL_HOSTS: u64 = 256;

/// How flows are placed on paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// Hash of the 5-tuple at every switch and bonded NIC, seeded per switch from the scenario seed.
    #[default]
    Ecmp,
    /// C4P-style: each connection on the least-loaded path (max load, then total load; ties to the lowest index),
    /// bonded ports balanced, re-planned around failed links and degraded links.
    Planned,
    /// Per-flowlet adaptive routing: each switch and bonded NIC sends each flowlet (one step of a connection) on its
    /// locally least-loaded next hop (flows per rate), ties by the flow's hash; re-decided at every step.
    Adaptive,
}

impl Routing {
    /// The policy's name as written in scenarios.
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Ecmp => "ecmp",
            Routing::Planned => "planned",
            Routing::Adaptive => "adaptive",
        }
    }
}

/// The collective a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FabricOp {
    /// Ring all-reduce: `2(n-1)` steps.
    AllReduce,
    /// Ring all-gather: `n-1` steps.
    AllGather,
    /// Ring reduce-scatter: `n-1` steps.
    ReduceScatter,
    /// All-to-all as `h-1` host shift steps.
    AllToAll,
}

impl FabricOp {
    /// nccl-tests bus-bandwidth factor: `busbw = algbw x factor(n)`.
    pub fn busbw_factor(self, n: u64) -> f64 {
        let n = n as f64;
        match self {
            FabricOp::AllReduce => 2.0 * (n - 1.0) / n,
            _ => (n - 1.0) / n,
        }
    }
}

/// The switches and links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Hosts under one leaf.
    pub hosts_per_leaf: u32,
    /// Leaves (per pod when `pods` is set).
    pub leaves: u32,
    /// Spines (2-tier) or aggregation switches per pod (3-tier).
    pub spines: u32,
    /// Pods: set for a 3-tier fat tree.
    #[serde(default)]
    pub pods: Option<u32>,
    /// Core switches (3-tier only), a multiple of `spines`.
    #[serde(default)]
    pub cores: Option<u32>,
    /// Leaf down capacity : up capacity (1 = non-blocking).
    #[serde(default = "one")]
    pub oversubscription: f64,
    /// Aggregation down : up capacity (3-tier).
    #[serde(default = "one")]
    pub core_oversubscription: f64,
    /// Rate of every link, each direction, Gb/s.
    pub link_gbps: f64,
    /// Latency of one hop, microseconds.
    #[serde(default)]
    pub link_latency_us: f64,
    /// GPUs (ranks) per host.
    pub gpus_per_host: u32,
    /// NICs per host (one ring per NIC: rails).
    pub nics_per_host: u32,
    /// Ports per NIC: 1, or 2 for a dual-port bonded NIC.
    #[serde(default = "one_u32")]
    pub ports_per_nic: u32,
}

fn one() -> f64 {
    1.0
}
fn one_u32() -> u32 {
    1
}

/// Where a job runs: `first` and `count` (a contiguous range of hosts) or `hosts` (a list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// First host of a contiguous range.
    #[serde(default)]
    pub first: Option<u32>,
    /// Hosts in the range.
    #[serde(default)]
    pub count: Option<u32>,
    /// An explicit list of hosts, in ring order.
    #[serde(default)]
    pub hosts: Option<Vec<u32>>,
}

/// One job: a placement and one collective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FabricJob {
    /// Name, used in metric names (`job.<name>.time`).
    pub name: String,
    /// Its hosts.
    pub placement: Placement,
    /// The collective.
    pub collective: FabricOp,
    /// Buffer size per rank, bytes (nccl-tests "size").
    pub bytes: u64,
    /// Flows (connections) per neighbour pair and rail.
    #[serde(default = "one_u32")]
    pub channels: u32,
    /// Compute of one training step around the collective, not overlapped with it, seconds (0: the collective
    /// alone). With it the answer also gives the step time `compute_s + time` and the collective's share of it:
    /// the end-to-end effect of the fabric on a job whose step is this compute and this collective.
    #[serde(default)]
    pub compute_s: f64,
}

/// A failed link, named by its two ends (`host12`, `leaf3`, `spine5`, `core7`; leaves and spines numbered across
/// pods) and, among parallel links, `index` (host links: `nic x ports_per_nic + port`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedLink {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
    /// Which of the parallel links between them.
    #[serde(default)]
    pub index: u32,
}

/// A link running below its rate from a time on (a half-rate port of a bonded NIC, a flapping optic): an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DegradedLink {
    /// One end (as in [`FailedLink`]).
    pub a: String,
    /// The other end.
    pub b: String,
    /// Which of the parallel links between them.
    #[serde(default)]
    pub index: u32,
    /// The link's rate as a fraction of `link_gbps`, in (0, 1].
    pub fraction: f64,
    /// When the link degrades, seconds from the start of the run (0: from the start).
    #[serde(default)]
    pub at_s: f64,
}

/// The `fabric` workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fabric {
    /// The fat tree.
    pub topology: Topology,
    /// Routing policy.
    #[serde(default)]
    pub routing: Routing,
    /// The jobs, all running at once.
    pub jobs: Vec<FabricJob>,
    /// Links down for the whole run.
    #[serde(default)]
    pub failed_links: Vec<FailedLink>,
    /// Links that run below their rate from a time on.
    #[serde(default)]
    pub degraded_links: Vec<DegradedLink>,
}

/// A switch or host, by tier and global index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    /// A host.
    Host(u32),
    /// A leaf (numbered across pods).
    Leaf(u32),
    /// A spine / aggregation switch (`pod x spines + s`).
    Spine(u32),
    /// A core switch (`plane x cores_per_plane + c`).
    Core(u32),
}

/// A physical (full-duplex) link, resolved from a [`FailedLink`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkRef {
    /// Port `port` of NIC `nic` of `host` to its leaf.
    HostPort {
        /// Host.
        host: u32,
        /// NIC.
        nic: u32,
        /// Port of the NIC.
        port: u32,
    },
    /// Parallel link `j` between `leaf` and spine `s` of its pod (local index).
    LeafSpine {
        /// Leaf (global).
        leaf: u32,
        /// Spine within the pod.
        s: u32,
        /// Parallel link.
        j: u32,
    },
    /// Parallel link `j` between aggregation switch `agg` (global) and core `c` of its plane (local index).
    AggCore {
        /// Aggregation switch (global).
        agg: u32,
        /// Core within the plane.
        c: u32,
        /// Parallel link.
        j: u32,
    },
}

/// The derived shape of a valid topology (all counts fit comfortably in `u32`/`u64`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Pods (1 for 2-tier).
    pub pods: u32,
    /// Whether there is a core tier.
    pub three_tier: bool,
    /// Leaves per pod.
    pub leaves_per_pod: u32,
    /// Spines (aggregation switches) per pod.
    pub spines_per_pod: u32,
    /// Hosts per leaf.
    pub hosts_per_leaf: u32,
    /// NICs per host.
    pub nics: u32,
    /// Ports per NIC.
    pub ports: u32,
    /// GPUs per host.
    pub gpus_per_host: u32,
    /// Parallel links between a leaf and each spine of its pod.
    pub k: u32,
    /// Cores per plane (3-tier).
    pub cores_per_plane: u32,
    /// Parallel links between an aggregation switch and each core of its plane (3-tier).
    pub m: u32,
    /// Link rate, bytes per second.
    pub link_bytes_per_s: f64,
    /// Latency of one hop, seconds.
    pub hop_latency_s: f64,
}

impl Shape {
    /// Hosts in the fabric.
    pub fn hosts(&self) -> u32 {
        self.pods * self.leaves_per_pod * self.hosts_per_leaf
    }
    /// Leaves in the fabric.
    pub fn leaves(&self) -> u32 {
        self.pods * self.leaves_per_pod
    }
    /// Spines (aggregation switches) in the fabric.
    pub fn spines(&self) -> u32 {
        self.pods * self.spines_per_pod
    }
    /// Core switches.
    pub fn cores(&self) -> u32 {
        if self.three_tier {
            self.spines_per_pod * self.cores_per_plane
        } else {
            0
        }
    }
    /// The leaf of `host`.
    pub fn leaf_of(&self, host: u32) -> u32 {
        host / self.hosts_per_leaf
    }
    /// The pod of `leaf`.
    pub fn pod_of_leaf(&self, leaf: u32) -> u32 {
        leaf / self.leaves_per_pod
    }
    /// Up ports of one leaf (`spines x k`).
    pub fn leaf_uplinks(&self) -> u32 {
        self.spines_per_pod * self.k
    }
    /// Up ports of one aggregation switch (`cores_per_plane x m`; 0 in 2-tier).
    pub fn agg_uplinks(&self) -> u32 {
        if self.three_tier {
            self.cores_per_plane * self.m
        } else {
            0
        }
    }
    /// Hops from a host of `leaf_a` to a host of `leaf_b`: 2 under one leaf, 4 within a pod, 6 across pods.
    pub fn hops(&self, leaf_a: u32, leaf_b: u32) -> u32 {
        if leaf_a == leaf_b {
            2
        } else if self.pod_of_leaf(leaf_a) == self.pod_of_leaf(leaf_b) {
            4
        } else {
            6
        }
    }
}

impl Topology {
    /// Checks the topology and derives its [`Shape`]. Every product is bounded before it is formed.
    pub fn shape(&self, at: &str) -> Result<Shape, Error> {
        let f = |name: &str| format!("{at}.{name}");
        check::at_least(&f("hosts_per_leaf"), self.hosts_per_leaf as u64, 1)?;
        check::at_most(
            &f("hosts_per_leaf"),
            self.hosts_per_leaf as u64,
            1024,
            "a leaf has at most 1,024 hosts",
        )?;
        check::at_least(&f("leaves"), self.leaves as u64, 1)?;
        check::at_most(&f("leaves"), self.leaves as u64, 4096, "at most 4,096 leaves (per pod)")?;
        check::at_least(&f("spines"), self.spines as u64, 1)?;
        check::at_most(&f("spines"), self.spines as u64, 4096, "at most 4,096 spines (per pod)")?;
        check::at_least(&f("gpus_per_host"), self.gpus_per_host as u64, 1)?;
        check::at_most(
            &f("gpus_per_host"),
            self.gpus_per_host as u64,
            64,
            "at most 64 GPUs a host",
        )?;
        check::at_least(&f("nics_per_host"), self.nics_per_host as u64, 1)?;
        check::at_most(
            &f("nics_per_host"),
            self.nics_per_host as u64,
            64,
            "at most 64 NICs a host",
        )?;
        if !(1..=2).contains(&self.ports_per_nic) {
            return Err(Error::invalid(
                f("ports_per_nic"),
                self.ports_per_nic,
                "a NIC has 1 port or 2 bonded ports",
                "use 1 or 2",
            ));
        }
        check::positive_at_most(&f("link_gbps"), self.link_gbps, 1e6, "a link of at most 1 Pb/s")?;
        check::non_negative_at_most(&f("link_latency_us"), self.link_latency_us, 1e6, "at most 1 s a hop")?;
        check::positive_at_most(&f("oversubscription"), self.oversubscription, 1024.0, "at most 1024:1")?;
        check::positive_at_most(
            &f("core_oversubscription"),
            self.core_oversubscription,
            1024.0,
            "at most 1024:1",
        )?;
        let (pods, three_tier) = match (self.pods, self.cores) {
            (None, None) => (1u32, false),
            (Some(p), Some(_)) => {
                check::at_least(&f("pods"), p as u64, 1)?;
                check::at_most(&f("pods"), p as u64, 1024, "at most 1,024 pods")?;
                (p, true)
            }
            (Some(p), None) => {
                return Err(Error::invalid(
                    f("cores"),
                    "(missing)",
                    format!("a 3-tier fabric ({p} pods) needs core switches"),
                    "add topology.cores (a multiple of topology.spines), or drop topology.pods for a 2-tier fabric",
                ));
            }
            (None, Some(c)) => {
                return Err(Error::invalid(
                    f("pods"),
                    "(missing)",
                    format!("{c} core switches need pods"),
                    "add topology.pods, or drop topology.cores for a 2-tier fabric",
                ));
            }
        };
        let (h, l, s, n, p) = (
            self.hosts_per_leaf as u64,
            self.leaves as u64,
            self.spines as u64,
            self.nics_per_host as u64,
            self.ports_per_nic as u64,
        );
        let hosts = pods as u64 * l * h;
        check::at_most(
            &f("hosts_per_leaf"),
            hosts,
            MAX_HOSTS,
            "pods x leaves x hosts_per_leaf: at most 65,536 hosts",
        )?;
        let host_ports = hosts * n * p;
        check::at_most(
            &f("nics_per_host"),
            host_ports,
            MAX_LINKS_PER_TIER,
            "at most 2^22 host ports",
        )?;
        // Leaf up ports from the oversubscription ratio.
        let down = h * n * p;
        let up = whole(down as f64 / self.oversubscription).ok_or_else(|| {
            Error::invalid(
                f("oversubscription"),
                self.oversubscription,
                format!(
                    "{down} down ports per leaf / {} is not a whole number of up ports",
                    self.oversubscription
                ),
                "choose a ratio that divides the leaf's down ports (hosts_per_leaf x nics_per_host x ports_per_nic)",
            )
        })?;
        if up == 0 || !up.is_multiple_of(s) {
            return Err(Error::invalid(
                f("spines"),
                self.spines,
                format!("a leaf's {up} up ports cannot be spread evenly over {s} spines"),
                format!("use a number of spines that divides {up}"),
            ));
        }
        let k = up / s;
        check::at_most(
            &f("spines"),
            (pods as u64 * l).saturating_mul(up),
            MAX_LINKS_PER_TIER,
            "at most 2^22 leaf up links",
        )?;
        let (mut cpp, mut m) = (0u64, 0u64);
        if three_tier {
            let cores = self.cores.unwrap_or(0) as u64;
            check::at_least(&f("cores"), cores, 1)?;
            check::at_most(&f("cores"), cores, 65536, "at most 65,536 core switches")?;
            if !cores.is_multiple_of(s) {
                return Err(Error::invalid(
                    f("cores"),
                    cores,
                    format!("cores form one plane per aggregation switch of a pod ({s}): {cores} is not a multiple"),
                    format!("use a multiple of {s}"),
                ));
            }
            cpp = cores / s;
            let agg_down = l.saturating_mul(k);
            let agg_up = whole(agg_down as f64 / self.core_oversubscription).ok_or_else(|| {
                Error::invalid(
                    f("core_oversubscription"),
                    self.core_oversubscription,
                    format!("{agg_down} down ports per aggregation switch / ratio is not a whole number"),
                    "choose a ratio that divides leaves x (leaf up ports / spines)",
                )
            })?;
            if agg_up == 0 || !agg_up.is_multiple_of(cpp) {
                return Err(Error::invalid(
                    f("cores"),
                    cores,
                    format!("an aggregation switch's {agg_up} up ports cannot be spread evenly over {cpp} cores"),
                    format!("use cores = spines x a divisor of {agg_up}"),
                ));
            }
            m = agg_up / cpp;
            check::at_most(
                &f("cores"),
                (pods as u64).saturating_mul(s).saturating_mul(agg_up),
                MAX_LINKS_PER_TIER,
                "at most 2^22 core links",
            )?;
        }
        Ok(Shape {
            pods,
            three_tier,
            leaves_per_pod: self.leaves,
            spines_per_pod: self.spines,
            hosts_per_leaf: self.hosts_per_leaf,
            nics: self.nics_per_host,
            ports: self.ports_per_nic,
            gpus_per_host: self.gpus_per_host,
            k: k as u32,
            cores_per_plane: cpp as u32,
            m: m as u32,
            link_bytes_per_s: self.link_gbps * 1e9 / 8.0,
            hop_latency_s: self.link_latency_us * 1e-6,
        })
    }
}

/// `x` as a whole number, if it is one (to 1e-9).
fn whole(x: f64) -> Option<u64> {
    let r = x.round();
    (x.is_finite() && (x - r).abs() < 1e-9 && (0.0..1e12).contains(&r)).then_some(r as u64)
}

impl FabricJob {
    /// The job's hosts in ring order (valid job).
    pub fn hosts(&self) -> Vec<u32> {
        match (&self.placement.hosts, self.placement.first, self.placement.count) {
            (Some(list), _, _) => list.clone(),
            (None, first, Some(count)) => {
                let first = first.unwrap_or(0);
                (first..first + count).collect()
            }
            _ => Vec::new(),
        }
    }
    /// Host count (valid job).
    pub fn host_count(&self) -> u64 {
        match (&self.placement.hosts, self.placement.count) {
            (Some(list), _) => list.len() as u64,
            (None, Some(c)) => c as u64,
            _ => 0,
        }
    }
    /// Ranks: hosts x GPUs per host.
    pub fn ranks(&self, shape: &Shape) -> u64 {
        self.host_count() * shape.gpus_per_host as u64
    }
    /// Synchronous steps of the collective.
    pub fn steps(&self, shape: &Shape) -> u64 {
        let n = self.ranks(shape);
        match self.collective {
            FabricOp::AllReduce => 2 * (n - 1),
            FabricOp::AllGather | FabricOp::ReduceScatter => n - 1,
            FabricOp::AllToAll => self.host_count() - 1,
        }
    }
    /// Distinct step patterns: 1 for rings (every step uses the same connections), `h-1` for all-to-all.
    pub fn patterns(&self) -> u64 {
        match self.collective {
            FabricOp::AllToAll => self.host_count() - 1,
            _ => 1,
        }
    }
    /// Times each pattern repeats.
    pub fn repeats(&self, shape: &Shape) -> u64 {
        self.steps(shape) / self.patterns()
    }
    /// Bytes of one flow in one step.
    pub fn flow_bytes(&self, shape: &Shape) -> f64 {
        let n = self.ranks(shape) as f64;
        let per_pair = match self.collective {
            FabricOp::AllToAll => {
                let g = shape.gpus_per_host as f64;
                g * g * self.bytes as f64 / n
            }
            _ => self.bytes as f64 / n,
        };
        per_pair / (shape.nics as f64 * self.channels as f64)
    }
    /// The (source host, destination host) pairs of pattern `p` (ring: host `i` to `i+1`; all-to-all shift `p+1`).
    pub fn pairs(&self, p: u64) -> Vec<(u32, u32)> {
        let hs = self.hosts();
        let h = hs.len();
        let shift = match self.collective {
            FabricOp::AllToAll => p as usize + 1,
            _ => 1,
        };
        (0..h).map(|i| (hs[i], hs[(i + shift) % h])).collect()
    }
}

impl Fabric {
    /// The topology's shape (valid workload).
    pub fn shape(&self) -> Result<Shape, Error> {
        self.topology.shape("workload.topology")
    }

    /// The failed links, resolved (valid workload).
    pub fn failed(&self) -> Result<Vec<LinkRef>, Error> {
        let shape = self.shape()?;
        self.failed_links
            .iter()
            .enumerate()
            .map(|(i, l)| resolve_link(&shape, l, &format!("workload.failed_links[{i}]")))
            .collect()
    }

    /// The degraded links, resolved: `(link, fraction, at_s)` (valid workload).
    pub fn degraded(&self) -> Result<Vec<(LinkRef, f64, f64)>, Error> {
        let shape = self.shape()?;
        self.degraded_links
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let l = FailedLink {
                    a: d.a.clone(),
                    b: d.b.clone(),
                    index: d.index,
                };
                Ok((
                    resolve_link(&shape, &l, &format!("workload.degraded_links[{i}]"))?,
                    d.fraction,
                    d.at_s,
                ))
            })
            .collect()
    }

    /// Whether some link degrades after the start (the simulator then runs step by step).
    pub fn degrades_mid_run(&self) -> bool {
        self.degraded_links.iter().any(|d| d.at_s > 0.0)
    }
}

/// Parses `host12`, `leaf3`, `spine5`, `core7` and checks the switch exists.
fn parse_node(shape: &Shape, name: &str, field: &str) -> Result<Node, Error> {
    let bad = |why: String| {
        Error::invalid(
            field,
            format!("\"{name}\""),
            why,
            "name a node as host<i>, leaf<i>, spine<i> or core<i> with an index that exists",
        )
    };
    let split = name.find(|c: char| c.is_ascii_digit()).unwrap_or(name.len());
    let (tier, idx) = name.split_at(split);
    let i: u32 = idx.parse().map_err(|_| bad("not a node name".into()))?;
    let (node, count) = match tier {
        "host" => (Node::Host(i), shape.hosts()),
        "leaf" => (Node::Leaf(i), shape.leaves()),
        "spine" => (Node::Spine(i), shape.spines()),
        "core" => (Node::Core(i), shape.cores()),
        _ => return Err(bad("unknown tier (host, leaf, spine, core)".into())),
    };
    if i >= count {
        return Err(bad(format!("the fabric has {count} {tier} node(s), numbered from 0")));
    }
    Ok(node)
}

/// Resolves a [`FailedLink`] to the physical link it names, or says why it names no link.
pub fn resolve_link(shape: &Shape, l: &FailedLink, at: &str) -> Result<LinkRef, Error> {
    let a = parse_node(shape, &l.a, &format!("{at}.a"))?;
    let b = parse_node(shape, &l.b, &format!("{at}.b"))?;
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let nowhere = || {
        Error::invalid(
            format!("{at}.b"),
            format!("\"{}\"", l.b),
            format!("there is no link between {} and {}", l.a, l.b),
            "name two adjacent nodes: a host and its leaf, a leaf and a spine of its pod, or a spine and a core of its plane",
        )
    };
    let parallel = |n: u32| {
        if l.index < n {
            Ok(())
        } else {
            Err(Error::invalid(
                format!("{at}.index"),
                l.index,
                format!("there are {n} parallel links between {} and {}", l.a, l.b),
                format!("use an index below {n}"),
            ))
        }
    };
    match (lo, hi) {
        (Node::Host(h), Node::Leaf(leaf)) => {
            if shape.leaf_of(h) != leaf {
                return Err(nowhere());
            }
            parallel(shape.nics * shape.ports)?;
            Ok(LinkRef::HostPort {
                host: h,
                nic: l.index / shape.ports,
                port: l.index % shape.ports,
            })
        }
        (Node::Leaf(leaf), Node::Spine(sp)) => {
            if shape.pod_of_leaf(leaf) != sp / shape.spines_per_pod {
                return Err(nowhere());
            }
            parallel(shape.k)?;
            Ok(LinkRef::LeafSpine {
                leaf,
                s: sp % shape.spines_per_pod,
                j: l.index,
            })
        }
        (Node::Spine(sp), Node::Core(c)) if shape.three_tier => {
            let plane = sp % shape.spines_per_pod;
            if c / shape.cores_per_plane != plane {
                return Err(nowhere());
            }
            parallel(shape.m)?;
            Ok(LinkRef::AggCore {
                agg: sp,
                c: c % shape.cores_per_plane,
                j: l.index,
            })
        }
        _ => Err(nowhere()),
    }
}

impl Workload for Fabric {
    type Outcome = FabricOutcome;
    const KIND: &'static str = "fabric";
    fn validate(&self) -> Result<(), Error> {
        let shape = self.shape()?;
        check::at_least("workload.jobs", self.jobs.len() as u64, 1)?;
        check::at_most("workload.jobs", self.jobs.len() as u64, 64, "at most 64 jobs")?;
        let hosts = shape.hosts() as u64;
        let mut owner: Vec<Option<usize>> = vec![None; hosts as usize];
        let mut flows = 0u64;
        for (ji, j) in self.jobs.iter().enumerate() {
            let at = format!("workload.jobs[{ji}]");
            if j.name.is_empty()
                || !j
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(Error::invalid(
                    format!("{at}.name"),
                    format!("\"{}\"", j.name),
                    "a job name is letters, digits, '_' or '-' (it becomes part of metric names)",
                    "rename the job",
                ));
            }
            if self.jobs[..ji].iter().any(|o| o.name == j.name) {
                return Err(Error::invalid(
                    format!("{at}.name"),
                    format!("\"{}\"", j.name),
                    "two jobs have this name",
                    "give every job its own name",
                ));
            }
            let pl = &j.placement;
            match (&pl.hosts, pl.first, pl.count) {
                (Some(list), None, None) => {
                    check::at_least(&format!("{at}.placement.hosts"), list.len() as u64, 2)?;
                    check::at_most(
                        &format!("{at}.placement.hosts"),
                        list.len() as u64,
                        hosts,
                        "the fabric's hosts",
                    )?;
                    for (i, &h) in list.iter().enumerate() {
                        if h as u64 >= hosts {
                            return Err(Error::invalid(
                                format!("{at}.placement.hosts[{i}]"),
                                h,
                                format!("the fabric has {hosts} hosts, numbered from 0"),
                                format!("use hosts below {hosts}"),
                            ));
                        }
                    }
                }
                (None, first, Some(count)) => {
                    let first = first.unwrap_or(0) as u64;
                    check::at_least(&format!("{at}.placement.count"), count as u64, 2)?;
                    if first + count as u64 > hosts {
                        return Err(Error::invalid(
                            format!("{at}.placement.count"),
                            count,
                            format!(
                                "hosts {first}..{} ({} ranks) do not exist: the fabric has {hosts} hosts",
                                first + count as u64,
                                count as u64 * shape.gpus_per_host as u64
                            ),
                            format!("use first + count <= {hosts}, or a bigger fabric"),
                        ));
                    }
                }
                _ => {
                    return Err(Error::invalid(
                        format!("{at}.placement"),
                        "{...}",
                        "give either `count` (and optionally `first`) for a range, or `hosts` for a list",
                        "e.g. placement = { first = 0, count = 64 }",
                    ));
                }
            }
            for h in j.hosts() {
                if let Some(o) = owner[h as usize] {
                    return Err(Error::invalid(
                        format!("{at}.placement"),
                        h,
                        format!("host {h} is used twice (by {} and {})", self.jobs[o].name, j.name),
                        "give every host to one job, once",
                    ));
                }
                owner[h as usize] = Some(ji);
            }
            check::at_least(&format!("{at}.bytes"), j.bytes, 1)?;
            check::at_most(&format!("{at}.bytes"), j.bytes, 1 << 50, "at most 1 PiB a rank")?;
            check::non_negative_at_most(&format!("{at}.compute_s"), j.compute_s, 1e6, "at most 1e6 s a step")?;
            check::at_least(&format!("{at}.channels"), j.channels as u64, 1)?;
            check::at_most(
                &format!("{at}.channels"),
                j.channels as u64,
                64,
                "at most 64 flows a neighbour pair",
            )?;
            if j.collective == FabricOp::AllToAll {
                check::at_most(
                    &format!("{at}.placement"),
                    j.host_count(),
                    MAX_ALL_TO_ALL_HOSTS,
                    "an all-to-all job spans at most 256 hosts (each of its steps is routed separately)",
                )?;
            }
            // host_count <= 2^16, nics <= 64, channels <= 64: no overflow.
            flows += j.host_count() * shape.nics as u64 * j.channels as u64;
        }
        check::at_most(
            "workload.jobs",
            flows,
            MAX_FLOWS,
            "at most 2^22 flows at once over all jobs",
        )?;
        let failed = self.failed()?;
        // A failure may not cut a NIC or a leaf off the fabric.
        let mut ports_down = std::collections::BTreeMap::<(u32, u32), u32>::new();
        let mut ups_down = std::collections::BTreeMap::<u32, u32>::new();
        for (i, f) in failed.iter().enumerate() {
            if failed[..i].contains(f) {
                return Err(Error::invalid(
                    format!("workload.failed_links[{i}].index"),
                    format!("{} - {}", self.failed_links[i].a, self.failed_links[i].b),
                    "this link is listed twice",
                    "list every failed link once",
                ));
            }
            let cut = match *f {
                LinkRef::HostPort { host, nic, .. } => {
                    let c = ports_down.entry((host, nic)).or_default();
                    *c += 1;
                    *c == shape.ports
                }
                LinkRef::LeafSpine { leaf, .. } => {
                    let c = ups_down.entry(leaf).or_default();
                    *c += 1;
                    *c == shape.leaf_uplinks()
                }
                LinkRef::AggCore { .. } => false,
            };
            if cut {
                return Err(Error::invalid(
                    format!("workload.failed_links[{i}]"),
                    format!("{} - {}", self.failed_links[i].a, self.failed_links[i].b),
                    "with this link down a NIC or a leaf has no link left",
                    "leave at least one port of each NIC and one uplink of each leaf",
                ));
            }
        }
        check::at_most(
            "workload.degraded_links",
            self.degraded_links.len() as u64,
            4096,
            "at most 4,096 degraded links",
        )?;
        for (i, d) in self.degraded_links.iter().enumerate() {
            let at = format!("workload.degraded_links[{i}]");
            if !(d.fraction > 0.0 && d.fraction <= 1.0) {
                return Err(Error::invalid(
                    format!("{at}.fraction"),
                    d.fraction,
                    "a degraded link runs at a fraction of its rate in (0, 1] (a half-rate port: 0.5)",
                    "use a fraction above 0 and at most 1 (a link at 0 is a failed link: list it in failed_links)",
                ));
            }
            check::non_negative_at_most(&format!("{at}.at_s"), d.at_s, 1e9, "at most 1e9 s into the run")?;
        }
        let degraded = self.degraded()?;
        for (i, (l, _, _)) in degraded.iter().enumerate() {
            let at = format!("workload.degraded_links[{i}]");
            if degraded[..i].iter().any(|(o, _, _)| o == l) {
                return Err(Error::invalid(
                    format!("{at}.index"),
                    format!("{} - {}", self.degraded_links[i].a, self.degraded_links[i].b),
                    "this link is listed twice",
                    "list every degraded link once",
                ));
            }
            if failed.contains(l) {
                return Err(Error::invalid(
                    format!("{at}.index"),
                    format!("{} - {}", self.degraded_links[i].a, self.degraded_links[i].b),
                    "this link is also in failed_links",
                    "a link is either failed or degraded",
                ));
            }
        }
        Ok(())
    }
}

/// One job's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOutcome {
    /// The job's name.
    pub name: String,
    /// Ranks (GPUs).
    pub ranks: u64,
    /// Completion time of the collective, seconds (a mean over hash draws where replicated).
    pub time_s: f64,
    /// 95% interval of `time_s` across replications (simulation under ECMP).
    pub time_ci_s: Option<(f64, f64)>,
    /// The same collective on an ideal fabric: alpha-beta ring at the fabric's bottleneck capacity, seconds.
    pub ideal_time_s: f64,
    /// `bytes / time`, bytes/s.
    pub algbw: f64,
    /// `algbw x` the nccl-tests factor, bytes/s.
    pub busbw: f64,
    /// The job's compute per step around the collective (its `compute_s`), seconds.
    pub compute_s: f64,
}

/// The answer for a [`Fabric`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FabricOutcome {
    /// Per job, in input order.
    pub jobs: Vec<JobOutcome>,
    /// Highest utilisation of any link over the run (bytes carried / (capacity x makespan)).
    pub max_link_utilisation: f64,
    /// Flows on the most loaded uplink (leaf to spine or aggregation to core) at one time.
    pub max_uplink_flows: f64,
    /// Flow-rate computations (simulator) or hash-group distributions (closed form) done.
    pub work: u64,
}

impl FabricOutcome {
    /// The job that finishes last (first of equals).
    pub fn slowest(&self) -> &JobOutcome {
        let mut best = &self.jobs[0];
        for j in &self.jobs[1..] {
            if j.time_s > best.time_s {
                best = j;
            }
        }
        best
    }
}

impl Outcome for FabricOutcome {
    fn metrics(&self) -> Vec<Metric> {
        let mut v = Vec::new();
        if self.jobs.is_empty() {
            return v;
        }
        let s = self.slowest();
        let time = |name: String, j: &JobOutcome| match j.time_ci_s {
            Some((lo, hi)) => Metric::with_ci(name, Unit::Seconds, j.time_s, lo, hi),
            None => Metric::new(name, Unit::Seconds, j.time_s),
        };
        v.push(time("time".into(), s));
        v.push(Metric::new("algbw", Unit::BytesPerSecond, s.algbw));
        v.push(Metric::new("busbw", Unit::BytesPerSecond, s.busbw));
        let slowdown = self.jobs.iter().map(|j| j.time_s / j.ideal_time_s).fold(0.0, f64::max);
        v.push(Metric::new("slowdown", Unit::Dimensionless, slowdown));
        v.push(Metric::new(
            "max_link_utilisation",
            Unit::Ratio,
            self.max_link_utilisation,
        ));
        v.push(Metric::new("max_uplink_flows", Unit::Count, self.max_uplink_flows));
        if s.compute_s > 0.0 {
            let step = s.compute_s + s.time_s;
            v.push(Metric::new("step_time", Unit::Seconds, step));
            v.push(Metric::new("comm_share", Unit::Ratio, s.time_s / step));
        }
        if self.jobs.len() > 1 {
            for j in &self.jobs {
                let p = format!("job.{}", j.name);
                v.push(time(format!("{p}.time"), j));
                v.push(Metric::new(format!("{p}.busbw"), Unit::BytesPerSecond, j.busbw));
                v.push(Metric::new(
                    format!("{p}.slowdown"),
                    Unit::Dimensionless,
                    j.time_s / j.ideal_time_s,
                ));
                if j.compute_s > 0.0 {
                    v.push(Metric::new(
                        format!("{p}.step_time"),
                        Unit::Seconds,
                        j.compute_s + j.time_s,
                    ));
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2-tier fabric of 4 leaves x 2 hosts, 4 spines, 1 NIC of 1 port: one job on all 8 hosts.
    pub(crate) fn small() -> Fabric {
        Fabric {
            topology: Topology {
                hosts_per_leaf: 2,
                leaves: 4,
                spines: 2,
                pods: None,
                cores: None,
                oversubscription: 1.0,
                core_oversubscription: 1.0,
                link_gbps: 100.0,
                link_latency_us: 1.0,
                gpus_per_host: 1,
                nics_per_host: 1,
                ports_per_nic: 1,
            },
            routing: Routing::Ecmp,
            jobs: vec![FabricJob {
                name: "a".into(),
                placement: Placement {
                    first: Some(0),
                    count: Some(8),
                    hosts: None,
                },
                collective: FabricOp::AllReduce,
                bytes: 1 << 20,
                channels: 2,
                compute_s: 0.0,
            }],
            failed_links: vec![],
            degraded_links: vec![],
        }
    }

    fn err(f: &Fabric) -> String {
        f.validate().unwrap_err().to_string()
    }

    #[test]
    fn valid_and_shape() {
        let f = small();
        f.validate().unwrap();
        let s = f.shape().unwrap();
        assert_eq!((s.hosts(), s.k, s.leaf_uplinks()), (8, 1, 2));
        assert_eq!(f.jobs[0].steps(&s), 14);
        assert_eq!(f.jobs[0].pairs(0)[7], (7, 0));
    }

    #[test]
    fn bad_fields_are_named() {
        let mut f = small();
        f.topology.link_gbps = 0.0;
        assert!(err(&f).contains("workload.topology.link_gbps"));
        let mut f = small();
        f.topology.link_gbps = -5.0;
        assert!(err(&f).contains("workload.topology.link_gbps"));
        let mut f = small();
        f.jobs[0].placement.count = Some(9);
        assert!(err(&f).contains("workload.jobs[0].placement.count"));
        let mut f = small();
        f.failed_links.push(FailedLink {
            a: "leaf0".into(),
            b: "spine7".into(),
            index: 0,
        });
        assert!(err(&f).contains("workload.failed_links[0].b"), "{}", err(&f));
        let mut f = small();
        f.failed_links.push(FailedLink {
            a: "host0".into(),
            b: "leaf1".into(),
            index: 0,
        });
        assert!(err(&f).contains("no link between"), "{}", err(&f));
        let mut f = small();
        f.topology.spines = 3;
        assert!(err(&f).contains("workload.topology.spines"));
        let mut f = small();
        f.topology.pods = Some(2);
        assert!(err(&f).contains("workload.topology.cores"));
    }

    #[test]
    fn a_16k_gpu_fabric_validates() {
        let mut f = small();
        f.topology = Topology {
            hosts_per_leaf: 16,
            leaves: 16,
            spines: 16,
            pods: Some(8),
            cores: Some(256),
            oversubscription: 1.0,
            core_oversubscription: 1.0,
            link_gbps: 200.0,
            link_latency_us: 1.0,
            gpus_per_host: 8,
            nics_per_host: 8,
            ports_per_nic: 2,
        };
        f.jobs[0].placement.count = Some(2048);
        f.validate().unwrap();
        let s = f.shape().unwrap();
        assert_eq!(f.jobs[0].ranks(&s), 16384);
        assert_eq!((s.k, s.cores_per_plane, s.m), (16, 16, 16));
    }

    #[test]
    fn huge_values_are_refused_without_overflow() {
        let mut f = small();
        f.topology.hosts_per_leaf = u32::MAX;
        assert!(err(&f).contains("hosts_per_leaf"));
        let mut f = small();
        f.topology.leaves = 4096;
        f.topology.hosts_per_leaf = 1024;
        assert!(err(&f).contains("workload.topology"));
        let mut f = small();
        f.jobs[0].placement.first = Some(u32::MAX);
        assert!(err(&f).contains("workload.jobs[0].placement.count"));
        let mut f = small();
        f.jobs[0].placement.first = None;
        f.jobs[0].placement.count = None;
        f.jobs[0].placement.hosts = Some(vec![0, 1, u32::MAX]);
        assert!(err(&f).contains("workload.jobs[0].placement.hosts[2]"));
    }

    #[test]
    fn bad_degraded_links_are_named() {
        let d = |a: &str, b: &str, fraction: f64| DegradedLink {
            a: a.into(),
            b: b.into(),
            index: 0,
            fraction,
            at_s: 0.0,
        };
        let mut f = small();
        f.degraded_links.push(d("host0", "leaf0", 0.5));
        f.validate().unwrap();
        for bad in [0.0, -0.5, 1.5, f64::NAN] {
            let mut f = small();
            f.degraded_links.push(d("host0", "leaf0", bad));
            assert!(
                err(&f).contains("workload.degraded_links[0].fraction"),
                "{bad}: {}",
                err(&f)
            );
        }
        let mut f = small();
        f.degraded_links.push(d("host0", "leaf3", 0.5));
        assert!(err(&f).contains("workload.degraded_links[0].b"), "{}", err(&f));
        let mut f = small();
        f.degraded_links.push(d("leaf0", "spine0", 0.5));
        f.degraded_links[0].at_s = -1.0;
        assert!(err(&f).contains("workload.degraded_links[0].at_s"), "{}", err(&f));
        let mut f = small();
        f.degraded_links.push(d("leaf0", "spine0", 0.5));
        f.degraded_links.push(d("spine0", "leaf0", 0.25));
        assert!(err(&f).contains("workload.degraded_links[1].index"), "{}", err(&f));
    }

    #[test]
    fn unknown_routing_is_refused() {
        let e = serde_json::from_str::<Routing>(r#""random""#).unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
    }
}
