//! Flow-level simulation of the `fabric` workload ([`Fabric`]): every flow routed on the fat tree, rates by max-min
//! fair sharing, steps on the event engine.
//!
//! **Routing.** Every connection is one flow with its own 5-tuple: the addresses of its NICs (`10.nic.host`), UDP
//! destination port 4791 (RoCEv2) and a source port derived from the two queue-pair numbers, as Linux derives
//! the RoCEv2 source port from the flow label of the QP pair (`rdma_calc_flow_label`, `rdma_flow_label_to_udp_sport`
//! in `include/rdma/ib_verbs.h`). QP numbers are allocated in sequence from a random 24-bit base per NIC
//! (`seed.derive("qpn")`). Under `ecmp` the bonded NIC (for its port) and every switch on the way pick a next hop
//! among the surviving ones that still reach the destination: CRC-32 (IEEE 802.3) of the 5-tuple, started from the
//! switch's own seed (`seed.derive("ecmp").index(switch)`) and passed through a seeded non-linear finaliser
//! ([`ecmp_hash`]: without it every switch would split the same flows the same way), modulo the number of
//! candidates. Under `planned`
//! (C4P-style) each connection, in order, takes the path whose most loaded link has the fewest flows already placed
//! (ties to the lowest index), the NIC ports chosen the same way, so bonded ports are balanced; a failed link is
//! simply absent, so the planner re-plans and ECMP re-hashes over the survivors. Under `adaptive` each step's
//! connections are routed when the step starts, in a random order (flowlets do not start in connection order), each
//! switch and bonded NIC taking its locally least-loaded next hop (flows on the link now + 1, over its rate; ties from
//! a hashed start), without the planner's look-ahead; a step's links are released when it ends.
//!
//! **Degraded links.** Every link has a rate (a fraction of `link_gbps`); the planner and adaptive routing weigh a
//! link by `(flows + 1) / rate`. A degradation at `at_s > 0` is an [`Engine`] event: the rate changes, the planner
//! re-plans every job's current pattern (running flows move to their new paths), ECMP keeps its hash, adaptive routing
//! sees it from its next choices. A single job with such an event runs step by step, but a step that repeats one
//! already simulated on the unchanged fabric, with no event due before it would end, is not simulated again (exact:
//! it starts from the same state).
//!
//! **Rates.** [`max_min_rates`] is progressive filling: raise every unfrozen flow's rate together until a link
//! saturates, freeze that link's flows, repeat. It runs with a heap of links keyed by their fair share
//! `remaining capacity / unfrozen flows`, which only grows as flows freeze, so a stale heap entry is skipped;
//! `O((F P + L) log L)` for `F` flows of `P` hops. Rates are recomputed in full at every flow start and end (not
//! incrementally).
//!
//! **Steps.** A job's collective is a sequence of synchronous steps (`trainlab_core::workloads::fabric`): all its
//! flows of a step start together, the step ends when its last flow has drained plus the step's longest path
//! latency, and the next step starts then. Jobs step independently and share links. Time is integer picoseconds on
//! [`Engine`] (not nanoseconds: a step of a 16,384-GPU ring can be a few hundred nanoseconds).
//!
//! **Shortcut (single job).** With one job nothing else is on the fabric, and every repetition of a step pattern
//! starts from the same state (same flows, same bytes, same routes: the connections persist over the collective),
//! so its duration is the same: the simulator runs each distinct pattern once and multiplies by its repetitions.
//! This is exact for the model, not an approximation. Several jobs are simulated step by step.
//!
//! **Replications.** Under ECMP the answer depends on the hash draw: the backend runs `replications` draws
//! (`seed.derive("fabric").index(r)`), in parallel, and reports the mean with a 95% interval. Planned routing is
//! deterministic and runs once.
use crate::engine::{Engine, EventId};
use rayon::prelude::*;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use trainlab_core::workloads::fabric::{LinkRef, Node, Routing, Shape};
use trainlab_core::workloads::{Fabric, FabricOutcome, JobOutcome};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, Seed, SimTime, Summary, Workload};
use trainlab_models::fabric::{ideal_time, step_latency};

/// Simulated time ticks per second (picoseconds).
const TICKS_PER_S: f64 = 1e12;
/// Most `steps x flows` a multi-job run may simulate step by step.
pub const MAX_MULTI_JOB_WORK: u64 = 1 << 28;

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) lookup table.
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32 of `bytes` started from `seed` (0xFFFFFFFF ^ seed), as switch ASICs seed their ECMP hash.
pub fn crc32(seed: u32, bytes: &[u8]) -> u32 {
    let mut c = !seed;
    for &b in bytes {
        c = CRC_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// A switch's ECMP hash of `tuple`: CRC-32 of the 5-tuple started from the switch's seed, then mixed with the seed
/// through a non-linear finaliser (SplitMix64's). A bare CRC is affine in its input and seed, so two switches that
/// differ only in the seed would make the same split of the same flows (hash polarization); ASICs avoid that by
/// offering several hash functions and per-switch seeds, which the finaliser stands in for.
pub fn ecmp_hash(switch_seed: u64, tuple: &FiveTuple) -> u64 {
    let mut z = (crc32(switch_seed as u32, &tuple.bytes()) as u64) ^ switch_seed;
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A flow's 5-tuple (UDP, RoCEv2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FiveTuple {
    /// Source address.
    pub src_ip: u32,
    /// Destination address.
    pub dst_ip: u32,
    /// UDP source port.
    pub sport: u16,
    /// UDP destination port (4791).
    pub dport: u16,
    /// IP protocol (17).
    pub proto: u8,
}

impl FiveTuple {
    /// The 13 bytes a switch hashes.
    pub fn bytes(&self) -> [u8; 13] {
        let mut b = [0u8; 13];
        b[0..4].copy_from_slice(&self.src_ip.to_be_bytes());
        b[4..8].copy_from_slice(&self.dst_ip.to_be_bytes());
        b[8..10].copy_from_slice(&self.sport.to_be_bytes());
        b[10..12].copy_from_slice(&self.dport.to_be_bytes());
        b[12] = self.proto;
        b
    }
}

/// The RoCEv2 UDP source port of a QP pair: a 20-bit flow label mixed from the product of the QP numbers, folded to
/// 14 bits, in 0xC000..=0xFFFF (after Linux's `rdma_calc_flow_label` and `rdma_flow_label_to_udp_sport`).
pub fn roce_sport(lqpn: u32, rqpn: u32) -> u16 {
    let mut v = lqpn as u64 * rqpn as u64;
    v ^= v >> 20;
    v ^= v >> 40;
    let fl = (v & 0xF_FFFF) as u32;
    (((fl & 0x3FFF) ^ ((fl & 0xF_C000) >> 14)) | 0xC000) as u16
}

/// Max-min fair rates by progressive filling. `paths[f]` lists flow `f`'s links (each at most once), `cap[l]` link
/// `l`'s capacity (> 0). A flow with an empty path gets rate `f64::INFINITY`.
pub fn max_min_rates(cap: &[f64], paths: &[&[u32]]) -> Vec<f64> {
    let mut solver = MaxMin::new(cap.len());
    let mut rates = vec![0.0; paths.len()];
    solver.solve(|l| cap[l as usize], paths.len(), |f| paths[f], &mut rates);
    rates
}

/// Reusable buffers of [`max_min_rates`] (sized to the number of links once, reused at every recomputation).
#[derive(Debug, Default)]
pub struct MaxMin {
    total: Vec<u32>,
    start: Vec<u32>,
    members: Vec<u32>,
    rem: Vec<f64>,
    left: Vec<u32>,
    used: Vec<u32>,
    frozen: Vec<bool>,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
}

impl MaxMin {
    /// Buffers for `links` links.
    pub fn new(links: usize) -> MaxMin {
        MaxMin {
            total: vec![0; links],
            start: vec![0; links],
            rem: vec![0.0; links],
            left: vec![0; links],
            ..MaxMin::default()
        }
    }

    /// Flows on link `l` in the last [`MaxMin::solve`] (0 for a link no flow used).
    pub fn flows_on(&self, l: u32) -> u32 {
        self.total[l as usize]
    }

    /// The links the last [`MaxMin::solve`] used.
    pub fn used(&self) -> &[u32] {
        &self.used
    }

    /// Max-min rates of `n` flows (`path(f)`) on links of capacity `cap(l)`, written to `rates[..n]`.
    pub fn solve<'a>(
        &mut self,
        cap: impl Fn(u32) -> f64,
        n: usize,
        path: impl Fn(usize) -> &'a [u32],
        rates: &mut [f64],
    ) {
        for &l in &self.used {
            self.total[l as usize] = 0;
        }
        self.used.clear();
        for f in 0..n {
            for &l in path(f) {
                if self.total[l as usize] == 0 {
                    self.used.push(l);
                }
                self.total[l as usize] += 1;
            }
        }
        let mut acc = 0u32;
        for &l in &self.used {
            let li = l as usize;
            self.start[li] = acc;
            acc += self.total[li];
            self.left[li] = 0; // fill cursor first
            self.rem[li] = cap(l);
        }
        self.members.clear();
        self.members.resize(acc as usize, 0);
        for f in 0..n {
            for &l in path(f) {
                let li = l as usize;
                self.members[(self.start[li] + self.left[li]) as usize] = f as u32;
                self.left[li] += 1;
            }
        }
        self.frozen.clear();
        self.frozen.resize(n, false);
        for (f, r) in rates.iter_mut().enumerate().take(n) {
            if path(f).is_empty() {
                *r = f64::INFINITY;
                self.frozen[f] = true;
            }
        }
        self.heap.clear();
        for &l in &self.used {
            let share = self.rem[l as usize] / self.left[l as usize] as f64;
            self.heap.push(Reverse((share.to_bits(), l)));
        }
        while let Some(Reverse((key, l))) = self.heap.pop() {
            let li = l as usize;
            if self.left[li] == 0 {
                continue;
            }
            let share = (self.rem[li] / self.left[li] as f64).max(0.0);
            if share.to_bits() != key {
                continue; // stale: the share grew since this entry was pushed
            }
            let (s, e) = (self.start[li] as usize, (self.start[li] + self.total[li]) as usize);
            for i in s..e {
                let f = self.members[i] as usize;
                if self.frozen[f] {
                    continue;
                }
                self.frozen[f] = true;
                rates[f] = share;
                for &l2 in path(f) {
                    let l2i = l2 as usize;
                    self.rem[l2i] -= share;
                    self.left[l2i] -= 1;
                    if l2 != l && self.left[l2i] > 0 {
                        let s2 = (self.rem[l2i] / self.left[l2i] as f64).max(0.0);
                        self.heap.push(Reverse((s2.to_bits(), l2)));
                    }
                }
            }
        }
    }
}

/// The fat tree's links, numbered: each physical link `p` is the directed links `2p` (up: host to leaf, leaf to
/// spine, aggregation to core) and `2p + 1` (down).
#[derive(Debug, Clone)]
pub struct Net {
    /// The topology's shape.
    pub shape: Shape,
    base_ls: u32,
    base_ac: u32,
    phys: u32,
    dead: Vec<bool>,
    /// Rate of each physical link as a fraction of `link_gbps` (empty: every link at full rate).
    rate: Vec<f64>,
}

impl Net {
    /// The fabric of `shape` without the `failed` links.
    pub fn new(shape: Shape, failed: &[LinkRef]) -> Net {
        let s = &shape;
        let base_ls = s.hosts() * s.nics * s.ports;
        let base_ac = base_ls + s.leaves() * s.spines_per_pod * s.k;
        let phys = base_ac + s.spines() * s.agg_uplinks();
        let mut net = Net {
            shape,
            base_ls,
            base_ac,
            phys,
            dead: Vec::new(),
            rate: Vec::new(),
        };
        if !failed.is_empty() {
            net.dead = vec![false; phys as usize];
            for l in failed {
                let p = match *l {
                    LinkRef::HostPort { host, nic, port } => net.hp(host, nic, port),
                    LinkRef::LeafSpine { leaf, s, j } => net.ls(leaf, s, j),
                    LinkRef::AggCore { agg, c, j } => net.ac(agg, c, j),
                };
                net.dead[p as usize] = true;
            }
        }
        net
    }
    /// The physical link of `l`.
    pub fn phys_of(&self, l: &LinkRef) -> u32 {
        match *l {
            LinkRef::HostPort { host, nic, port } => self.hp(host, nic, port),
            LinkRef::LeafSpine { leaf, s, j } => self.ls(leaf, s, j),
            LinkRef::AggCore { agg, c, j } => self.ac(agg, c, j),
        }
    }
    /// Sets physical link `l` (both directions) to `fraction` of the rate.
    pub fn set_rate(&mut self, l: &LinkRef, fraction: f64) {
        if self.rate.is_empty() {
            self.rate = vec![1.0; self.phys as usize];
        }
        let p = self.phys_of(l);
        self.rate[p as usize] = fraction;
    }
    /// Rate of directed link `l` as a fraction of `link_gbps`.
    pub fn frac(&self, l: u32) -> f64 {
        if self.rate.is_empty() {
            1.0
        } else {
            self.rate[(l / 2) as usize]
        }
    }
    /// Directed links.
    pub fn links(&self) -> usize {
        2 * self.phys as usize
    }
    /// Physical link of port `port` of NIC `nic` of `host`.
    pub fn hp(&self, host: u32, nic: u32, port: u32) -> u32 {
        (host * self.shape.nics + nic) * self.shape.ports + port
    }
    /// Physical link `j` between `leaf` and spine `s` of its pod.
    pub fn ls(&self, leaf: u32, s: u32, j: u32) -> u32 {
        self.base_ls + (leaf * self.shape.spines_per_pod + s) * self.shape.k + j
    }
    /// Physical link `j` between aggregation switch `agg` and core `c` of its plane.
    pub fn ac(&self, agg: u32, c: u32, j: u32) -> u32 {
        self.base_ac + (agg * self.shape.cores_per_plane + c) * self.shape.m + j
    }
    /// The two ends of directed link `l`, `(from, to)`.
    pub fn ends(&self, l: u32) -> (Node, Node) {
        let s = &self.shape;
        let p = l / 2;
        let (lower, upper) = if p < self.base_ls {
            let host = p / (s.nics * s.ports);
            (Node::Host(host), Node::Leaf(s.leaf_of(host)))
        } else if p < self.base_ac {
            let i = p - self.base_ls;
            let leaf = i / (s.spines_per_pod * s.k);
            let sp = (i / s.k) % s.spines_per_pod;
            (
                Node::Leaf(leaf),
                Node::Spine(s.pod_of_leaf(leaf) * s.spines_per_pod + sp),
            )
        } else {
            let i = p - self.base_ac;
            let agg = i / (s.cores_per_plane * s.m);
            let c = (i / s.m) % s.cores_per_plane;
            let plane = agg % s.spines_per_pod;
            (Node::Spine(agg), Node::Core(plane * s.cores_per_plane + c))
        };
        if l.is_multiple_of(2) {
            (lower, upper)
        } else {
            (upper, lower)
        }
    }
    /// Whether directed link `l` is an uplink between switches (leaf to spine, aggregation to core).
    pub fn is_uplink(&self, l: u32) -> bool {
        l.is_multiple_of(2) && l / 2 >= self.base_ls
    }
    fn ok(&self, p: u32) -> bool {
        self.dead.is_empty() || !self.dead[p as usize]
    }
    fn healthy(&self) -> bool {
        self.dead.is_empty()
    }
    /// Aggregation switch `s` of `leaf`'s pod has a link down to `leaf`.
    fn agg_down_ok(&self, s: u32, leaf: u32) -> bool {
        self.healthy() || (0..self.shape.k).any(|j| self.ok(self.ls(leaf, s, j)))
    }
    /// Core `c` of plane `s` reaches `leaf`.
    fn core_ok(&self, s: u32, c: u32, leaf: u32) -> bool {
        if self.healthy() {
            return true;
        }
        let agg = self.shape.pod_of_leaf(leaf) * self.shape.spines_per_pod + s;
        (0..self.shape.m).any(|j| self.ok(self.ac(agg, c, j))) && self.agg_down_ok(s, leaf)
    }
    /// Aggregation switch `agg` reaches `leaf` of another pod through a core.
    fn agg_up_ok(&self, agg: u32, leaf: u32) -> bool {
        if self.healthy() {
            return true;
        }
        let s = agg % self.shape.spines_per_pod;
        (0..self.shape.cores_per_plane)
            .any(|c| self.core_ok(s, c, leaf) && (0..self.shape.m).any(|j| self.ok(self.ac(agg, c, j))))
    }
}

/// One connection to route: from NIC `nic` of `src` to the same rail on `dst`.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    /// Source host.
    pub src: u32,
    /// Destination host.
    pub dst: u32,
    /// Rail (NIC index on both hosts).
    pub nic: u32,
    /// The connection's 5-tuple.
    pub tuple: FiveTuple,
}

/// Switch numbers for hash seeds: NICs, then leaves, spines, cores.
fn switch_id(net: &Net, node: SwitchRef) -> u64 {
    let s = &net.shape;
    let nics = s.hosts() as u64 * s.nics as u64;
    match node {
        SwitchRef::Nic(h, r) => h as u64 * s.nics as u64 + r as u64,
        SwitchRef::Leaf(l) => nics + l as u64,
        SwitchRef::Spine(a) => nics + s.leaves() as u64 + a as u64,
        SwitchRef::Core(c) => nics + s.leaves() as u64 + s.spines() as u64 + c as u64,
    }
}

#[derive(Debug, Clone, Copy)]
enum SwitchRef {
    Nic(u32, u32),
    Leaf(u32),
    Spine(u32),
    Core(u32),
}

/// How paths are chosen.
pub enum Router {
    /// ECMP with per-switch seeds derived from this seed.
    Ecmp(Seed),
    /// The planner, with the flows placed so far on each directed link.
    Planned(Vec<u32>),
    /// Adaptive routing: the flows on each directed link now, and the seed of the tie-breaks of this step.
    Adaptive(Vec<u32>, Seed),
}

/// No route: the failures cut the destination off.
fn no_route(c: &Conn) -> Error {
    Error::invalid(
        "workload.failed_links",
        "[...]",
        format!(
            "with these links down there is no path from host {} to host {} on rail {}",
            c.src, c.dst, c.nic
        ),
        "fail fewer links",
    )
}

impl Router {
    fn pick(&self, net: &Net, at: SwitchRef, cands: &[(u32, u32)], tuple: &FiveTuple) -> usize {
        match self {
            Router::Ecmp(seed) | Router::Adaptive(_, seed) => {
                (ecmp_hash(seed.index(switch_id(net, at)).0, tuple) % cands.len() as u64) as usize
            }
            Router::Planned(_) => 0,
        }
    }
    fn load(&self, l: u32) -> u32 {
        match self {
            Router::Planned(loads) | Router::Adaptive(loads, _) => loads[l as usize],
            Router::Ecmp(_) => 0,
        }
    }
    /// The time a flow added to directed link `l` would see: `(flows + 1) / rate` (the order of the flow count on a
    /// fabric at full rate).
    fn cost(&self, net: &Net, l: u32) -> f64 {
        (self.load(l) + 1) as f64 / net.frac(l)
    }
    /// Index in `cands` (directed link ids in `.0`) of the least cost, first of equals from `from`.
    fn least(&self, net: &Net, cands: &[(u32, u32)], from: usize) -> usize {
        let n = cands.len();
        let mut best = from % n;
        for k in 0..n {
            let i = (from + k) % n;
            if self.cost(net, cands[i].0) < self.cost(net, cands[best].0) {
                best = i;
            }
        }
        best
    }
    /// Chooses among `cands` (directed link, tag) at switch `at`.
    fn choose(&self, net: &Net, at: SwitchRef, cands: &[(u32, u32)], tuple: &FiveTuple) -> (u32, u32) {
        let i = match self {
            Router::Ecmp(_) => self.pick(net, at, cands, tuple),
            Router::Planned(_) => self.least(net, cands, 0),
            // Local least loaded; ties broken from a hashed starting point, so equals are spread.
            Router::Adaptive(..) => self.least(net, cands, self.pick(net, at, cands, tuple)),
        };
        cands[i]
    }

    /// Routes `c`, appending its directed links to `path`. Under `Planned`, the loads are updated.
    pub fn route(&mut self, net: &Net, c: &Conn, path: &mut Vec<u32>) -> Result<(), Error> {
        let s = net.shape;
        let (la, lb) = (s.leaf_of(c.src), s.leaf_of(c.dst));
        let (pa, pb) = (s.pod_of_leaf(la), s.pod_of_leaf(lb));
        let t = &c.tuple;
        let mut cands: Vec<(u32, u32)> = Vec::with_capacity(16);
        let start = path.len();
        // Source port (the bonded NIC's choice).
        cands.extend(
            (0..s.ports)
                .map(|p| (2 * net.hp(c.src, c.nic, p), p))
                .filter(|x| net.ok(x.0 / 2)),
        );
        if cands.is_empty() {
            return Err(no_route(c));
        }
        path.push(self.choose(net, SwitchRef::Nic(c.src, c.nic), &cands, t).0);
        if la != lb {
            let sp = s.spines_per_pod;
            if pa == pb {
                // Leaf up to spine s, parallel link j; spine down to lb.
                cands.clear();
                for sw in 0..sp {
                    if !net.agg_down_ok(sw, lb) {
                        continue;
                    }
                    for j in 0..s.k {
                        let p = net.ls(la, sw, j);
                        if net.ok(p) {
                            cands.push((2 * p, sw));
                        }
                    }
                }
                if cands.is_empty() {
                    return Err(no_route(c));
                }
                let (up, sw) = match self {
                    Router::Ecmp(_) | Router::Adaptive(..) => self.choose(net, SwitchRef::Leaf(la), &cands, t),
                    Router::Planned(_) => {
                        // Minimax over the two hops: the spine's best link down to lb.
                        let down_min = |r: &Router, sw: u32| {
                            (0..s.k)
                                .map(|j| net.ls(lb, sw, j))
                                .filter(|&p| net.ok(p))
                                .map(|p| r.cost(net, 2 * p + 1))
                                .fold(f64::INFINITY, f64::min)
                        };
                        let cost: Vec<f64> = cands
                            .iter()
                            .map(|&(l, sw)| self.cost(net, l).max(down_min(self, sw)))
                            .collect();
                        cands[first_min(&cost)]
                    }
                };
                path.push(up);
                let agg = pa * sp + sw;
                cands.clear();
                cands.extend(
                    (0..s.k)
                        .map(|j| net.ls(lb, sw, j))
                        .filter(|&p| net.ok(p))
                        .map(|p| (2 * p + 1, 0)),
                );
                path.push(self.choose(net, SwitchRef::Spine(agg), &cands, t).0);
            } else {
                // Leaf up to aggregation s, core c of plane s, down to lb's pod aggregation s, down to lb.
                cands.clear();
                for sw in 0..sp {
                    if !net.agg_up_ok(pa * sp + sw, lb) {
                        continue;
                    }
                    for j in 0..s.k {
                        let p = net.ls(la, sw, j);
                        if net.ok(p) {
                            cands.push((2 * p, sw));
                        }
                    }
                }
                if cands.is_empty() {
                    return Err(no_route(c));
                }
                let cpp = s.cores_per_plane;
                // For the planner: the best (max load) of the links from aggregation `agg` of plane sw to lb.
                let core_down_min = |r: &Router, sw: u32, core: u32| {
                    let agg_b = pb * sp + sw;
                    (0..s.m)
                        .map(|j| net.ac(agg_b, core, j))
                        .filter(|&p| net.ok(p))
                        .map(|p| r.cost(net, 2 * p + 1))
                        .fold(f64::INFINITY, f64::min)
                };
                let leaf_down_min = |r: &Router, sw: u32| {
                    (0..s.k)
                        .map(|j| net.ls(lb, sw, j))
                        .filter(|&p| net.ok(p))
                        .map(|p| r.cost(net, 2 * p + 1))
                        .fold(f64::INFINITY, f64::min)
                };
                let agg_best = |r: &Router, sw: u32| -> (f64, u32) {
                    // (cost, directed up link) of the best core path from aggregation (pa, sw).
                    let agg = pa * sp + sw;
                    let mut best = (f64::INFINITY, u32::MAX);
                    for core in 0..cpp {
                        if !net.core_ok(sw, core, lb) {
                            continue;
                        }
                        let down = core_down_min(r, sw, core);
                        for j in 0..s.m {
                            let p = net.ac(agg, core, j);
                            if net.ok(p) {
                                let cost = r.cost(net, 2 * p).max(down);
                                if cost < best.0 {
                                    best = (cost, 2 * p);
                                }
                            }
                        }
                    }
                    best
                };
                let (up, sw) = match self {
                    Router::Ecmp(_) | Router::Adaptive(..) => self.choose(net, SwitchRef::Leaf(la), &cands, t),
                    Router::Planned(_) => {
                        let mut best = (f64::INFINITY, 0usize);
                        let mut cache: Vec<Option<f64>> = vec![None; sp as usize];
                        for (i, &(l, sw)) in cands.iter().enumerate() {
                            let rest = *cache[sw as usize]
                                .get_or_insert_with(|| agg_best(self, sw).0.max(leaf_down_min(self, sw)));
                            let cost = self.cost(net, l).max(rest);
                            if cost < best.0 {
                                best = (cost, i);
                            }
                        }
                        cands[best.1]
                    }
                };
                path.push(up);
                let agg = pa * sp + sw;
                cands.clear();
                for core in 0..cpp {
                    if !net.core_ok(sw, core, lb) {
                        continue;
                    }
                    for j in 0..s.m {
                        let p = net.ac(agg, core, j);
                        if net.ok(p) {
                            cands.push((2 * p, core));
                        }
                    }
                }
                if cands.is_empty() {
                    return Err(no_route(c));
                }
                let (up2, core) = match self {
                    Router::Ecmp(_) | Router::Adaptive(..) => self.choose(net, SwitchRef::Spine(agg), &cands, t),
                    Router::Planned(_) => {
                        let cost: Vec<f64> = cands
                            .iter()
                            .map(|&(l, core)| self.cost(net, l).max(core_down_min(self, sw, core)))
                            .collect();
                        cands[first_min(&cost)]
                    }
                };
                path.push(up2);
                let agg_b = pb * sp + sw;
                cands.clear();
                cands.extend(
                    (0..s.m)
                        .map(|j| net.ac(agg_b, core, j))
                        .filter(|&p| net.ok(p))
                        .map(|p| (2 * p + 1, 0)),
                );
                path.push(self.choose(net, SwitchRef::Core(sw * cpp + core), &cands, t).0);
                cands.clear();
                cands.extend(
                    (0..s.k)
                        .map(|j| net.ls(lb, sw, j))
                        .filter(|&p| net.ok(p))
                        .map(|p| (2 * p + 1, 0)),
                );
                path.push(self.choose(net, SwitchRef::Spine(agg_b), &cands, t).0);
            }
        }
        // Destination port: the destination leaf's choice among the NIC's ports.
        cands.clear();
        cands.extend(
            (0..s.ports)
                .map(|p| (2 * net.hp(c.dst, c.nic, p) + 1, p))
                .filter(|x| net.ok(x.0 / 2)),
        );
        if cands.is_empty() {
            return Err(no_route(c));
        }
        path.push(self.choose(net, SwitchRef::Leaf(lb), &cands, t).0);
        if let Router::Planned(loads) | Router::Adaptive(loads, _) = self {
            for &l in &path[start..] {
                loads[l as usize] += 1;
            }
        }
        Ok(())
    }
}

/// The connections of job `j`'s step pattern `p`, in a fixed order (pair, rail, channel).
pub fn connections(w: &Fabric, shape: &Shape, j: usize, p: u64, qpn_seed: Seed) -> Vec<Conn> {
    let job = &w.jobs[j];
    let q = job.channels;
    let base = |h: u32, r: u32| (qpn_seed.index(h as u64 * shape.nics as u64 + r as u64).0 & 0x00FF_FFFF) as u32;
    let ip = |h: u32, r: u32| (10u32 << 24) | (r << 16) | h;
    let mut out = Vec::new();
    for (a, b) in job.pairs(p) {
        for r in 0..shape.nics {
            for ch in 0..q {
                // Send-side QPs of a NIC are numbered from its base, receive-side QPs from base + 2^15, one block
                // of `channels` per pattern.
                let k = (p as u32).wrapping_mul(q).wrapping_add(ch);
                let lqpn = base(a, r).wrapping_add(k) & 0x00FF_FFFF;
                let rqpn = base(b, r).wrapping_add(0x8000).wrapping_add(k) & 0x00FF_FFFF;
                out.push(Conn {
                    src: a,
                    dst: b,
                    nic: r,
                    tuple: FiveTuple {
                        src_ip: ip(a, r),
                        dst_ip: ip(b, r),
                        sport: roce_sport(lqpn, rqpn),
                        dport: 4791,
                        proto: 17,
                    },
                });
            }
        }
    }
    out
}

/// The routes of one step pattern: flow `f` is `links[offs[f]..offs[f + 1]]`.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// Directed links of all flows, concatenated.
    pub links: Vec<u32>,
    /// Offsets into `links`, one more than flows.
    pub offs: Vec<u32>,
}

impl Routes {
    /// Flow `f`'s links.
    pub fn path(&self, f: usize) -> &[u32] {
        &self.links[self.offs[f] as usize..self.offs[f + 1] as usize]
    }
    /// Flows.
    pub fn len(&self) -> usize {
        self.offs.len().saturating_sub(1)
    }
    /// Whether there is no flow.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Routes `conns` with `router`.
pub fn route_all(net: &Net, router: &mut Router, conns: &[Conn]) -> Result<Routes, Error> {
    let mut r = Routes {
        links: Vec::with_capacity(conns.len() * 4),
        offs: Vec::with_capacity(conns.len() + 1),
    };
    r.offs.push(0);
    for c in conns {
        router.route(net, c, &mut r.links)?;
        r.offs.push(r.links.len() as u32);
    }
    Ok(r)
}

/// One simulated hash draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Replication {
    /// Completion time of each job, seconds.
    pub times_s: Vec<f64>,
    /// Highest link utilisation over the makespan.
    pub max_link_utilisation: f64,
    /// Most flows on one uplink at once.
    pub max_uplink_flows: u32,
    /// Rate computations.
    pub recomputes: u64,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Start(u32),
    /// Degraded link `i` of the workload takes its lower rate.
    Degrade(u32),
    Drain,
    End(u32),
}

#[derive(Debug, Clone, Copy)]
struct Active {
    job: u32,
    flow: u32,
    rem: f64,
    rate: f64,
}

struct JobState {
    steps: u64,
    repeats: u64,
    step: u64,
    pattern: Option<u64>,
    routes: Routes,
    bytes: f64,
    latency_ticks: u64,
    left: u32,
    /// The first pattern's routes, kept for the planner when the job has other patterns.
    first: Routes,
    started_at: u64,
    elapsed: f64,
    /// The fabric's version (degradations so far) when the current step started.
    version: u64,
    /// The current step was not simulated: it repeats a simulated one (see `simulate`).
    skipped: bool,
}

/// The routes of pattern `p` (> 0) of job `j`: under `planned`, placed on the load table of every job's first
/// pattern (`base`) less job `j`'s own first pattern (`first`), which is not running then.
#[allow(clippy::too_many_arguments)]
fn reroute(
    w: &Fabric,
    net: &Net,
    router: &mut Router,
    base: Option<&[u32]>,
    first: &Routes,
    j: usize,
    p: u64,
    qpn_seed: Seed,
) -> Result<Routes, Error> {
    if let (Router::Planned(loads), Some(base)) = (&mut *router, base) {
        loads.copy_from_slice(base);
        for &l in &first.links {
            loads[l as usize] -= 1;
        }
    }
    route_all(net, router, &connections(w, &net.shape, j, p, qpn_seed))
}

/// Adaptive routing of job `j`'s pattern `p` at its step `step`: the connections take their flowlets' local choices
/// in a random order (flowlets do not start in connection order), on the loads `router` holds now; the routes are
/// returned in connection order.
#[allow(clippy::too_many_arguments)]
fn adaptive_routes(
    w: &Fabric,
    net: &Net,
    router: &mut Router,
    j: usize,
    p: u64,
    step: u64,
    qpn_seed: Seed,
    order_seed: Seed,
) -> Result<Routes, Error> {
    use rand::seq::SliceRandom;
    let conns = connections(w, &net.shape, j, p, qpn_seed);
    let salt = order_seed.index(j as u64).index(step);
    if let Router::Adaptive(_, s) = router {
        *s = salt.derive("ties");
    }
    let mut order: Vec<usize> = (0..conns.len()).collect();
    order.shuffle(&mut salt.derive("order").rng());
    let mut paths: Vec<Vec<u32>> = vec![Vec::new(); conns.len()];
    for i in order {
        let mut path = Vec::with_capacity(6);
        router.route(net, &conns[i], &mut path)?;
        paths[i] = path;
    }
    let mut r = Routes {
        links: Vec::with_capacity(conns.len() * 4),
        offs: Vec::with_capacity(conns.len() + 1),
    };
    r.offs.push(0);
    for path in paths {
        r.links.extend(path);
        r.offs.push(r.links.len() as u32);
    }
    Ok(r)
}

/// The flows of a `fabric` workload exactly as [`simulate`] routes them for one hash draw: what another simulator
/// needs to run the same case (the SimGrid peer of `tests/fabric_peers.rs`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowCase {
    /// Capacity of every directed link, bytes per second.
    pub link_bytes_per_s: f64,
    /// Directed links (numbered as in [`Net`]).
    pub links: usize,
    /// The ends of every directed link a path uses: `(link, from, to)`, nodes named as in scenario files (`host3`,
    /// `leaf1`, `spine0`, `core2`). Parallel links share their ends and differ by number.
    pub ends: Vec<(u32, String, String)>,
    /// The jobs, all starting at time zero.
    pub jobs: Vec<FlowJob>,
}

/// One job of a [`FlowCase`]: `steps` synchronous steps; step `s` runs pattern `s / repeats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowJob {
    /// Steps of the collective.
    pub steps: u64,
    /// Consecutive steps per pattern.
    pub repeats: u64,
    /// The step patterns.
    pub patterns: Vec<FlowPattern>,
}

/// One step pattern: every flow starts with the step and carries `bytes`; the step ends `latency_s` after its last
/// flow has drained.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowPattern {
    /// Bytes per flow.
    pub bytes: f64,
    /// Added after the last flow of a step drains, seconds.
    pub latency_s: f64,
    /// Each flow's directed links.
    pub paths: Vec<Vec<u32>>,
}

/// The [`FlowCase`] of `w` (valid) under the hash draw `seed`: the routes [`simulate`] uses with the same seed.
pub fn flow_case(w: &Fabric, seed: Seed) -> Result<FlowCase, Error> {
    let shape = w.shape()?;
    let net = Net::new(shape, &w.failed()?);
    if !w.degraded_links.is_empty() || w.routing == Routing::Adaptive {
        return Err(Error::invalid(
            "workload",
            "degraded_links / routing = \"adaptive\"",
            "the case export for peer simulators takes full-rate links and fixed routes (ECMP or planned) only",
            "drop degraded_links and use routing = \"ecmp\" or \"planned\"",
        ));
    }
    let qpn_seed = seed.derive("qpn");
    let mut router = match w.routing {
        Routing::Ecmp => Router::Ecmp(seed.derive("ecmp")),
        _ => Router::Planned(vec![0; net.links()]),
    };
    let mut first = Vec::with_capacity(w.jobs.len());
    for j in 0..w.jobs.len() {
        first.push(route_all(&net, &mut router, &connections(w, &shape, j, 0, qpn_seed))?);
    }
    let base = match &router {
        Router::Planned(l) => Some(l.clone()),
        _ => None,
    };
    let mut jobs = Vec::with_capacity(w.jobs.len());
    for (j, job) in w.jobs.iter().enumerate() {
        let mut patterns = Vec::new();
        for p in 0..job.patterns() {
            let routes = if p == 0 {
                first[j].clone()
            } else {
                reroute(w, &net, &mut router, base.as_deref(), &first[j], j, p, qpn_seed)?
            };
            patterns.push(FlowPattern {
                bytes: job.flow_bytes(&shape),
                latency_s: (step_latency(w, &shape, j, p) * TICKS_PER_S).round() / TICKS_PER_S,
                paths: (0..routes.len()).map(|f| routes.path(f).to_vec()).collect(),
            });
        }
        jobs.push(FlowJob {
            steps: job.steps(&shape),
            repeats: job.repeats(&shape),
            patterns,
        });
    }
    let mut used: Vec<u32> = jobs
        .iter()
        .flat_map(|j: &FlowJob| j.patterns.iter().flat_map(|p| p.paths.iter().flatten().copied()))
        .collect();
    used.sort_unstable();
    used.dedup();
    let name = |n: Node| match n {
        Node::Host(i) => format!("host{i}"),
        Node::Leaf(i) => format!("leaf{i}"),
        Node::Spine(i) => format!("spine{i}"),
        Node::Core(i) => format!("core{i}"),
    };
    let ends = used
        .into_iter()
        .map(|l| {
            let (a, b) = net.ends(l);
            (l, name(a), name(b))
        })
        .collect();
    Ok(FlowCase {
        link_bytes_per_s: shape.link_bytes_per_s,
        links: net.links(),
        ends,
        jobs,
    })
}

/// Simulates `w` (valid) with the hash draw `seed` (see the [module docs](self)).
pub fn simulate(w: &Fabric, seed: Seed) -> Result<Replication, Error> {
    let shape = w.shape()?;
    let mut net = Net::new(shape, &w.failed()?);
    let degraded = w.degraded()?;
    for (l, frac, at) in &degraded {
        if *at <= 0.0 {
            net.set_rate(l, *frac);
        }
    }
    let nl = net.links();
    // A link that degrades mid-run breaks the symmetry of the steps: then every step is simulated.
    let single = w.jobs.len() == 1 && !w.degrades_mid_run();
    if !single {
        let work: u64 = w
            .jobs
            .iter()
            .map(|j| {
                j.steps(&shape)
                    .saturating_mul(j.host_count() * shape.nics as u64 * j.channels as u64)
            })
            .fold(0u64, |a, b| a.saturating_add(b));
        if work > MAX_MULTI_JOB_WORK {
            return Err(Error::invalid(
                if w.jobs.len() == 1 {
                    "workload.degraded_links"
                } else {
                    "workload.jobs"
                },
                format!("{} jobs", w.jobs.len()),
                format!("several jobs are simulated step by step: steps x flows = {work} exceeds {MAX_MULTI_JOB_WORK}"),
                "simulate fewer or smaller jobs at once (a single job of any size is simulated one step pattern at \
                 a time)",
            ));
        }
    }
    let qpn_seed = seed.derive("qpn");
    let order_seed = seed.derive("flowlets");
    let adaptive = w.routing == Routing::Adaptive;
    let mut router = match w.routing {
        Routing::Ecmp => Router::Ecmp(seed.derive("ecmp")),
        Routing::Planned => Router::Planned(vec![0; nl]),
        Routing::Adaptive => Router::Adaptive(vec![0; nl], seed.derive("adaptive")),
    };
    // Pattern 0 of every job is routed up front (for the planner: all jobs' connections on one load table);
    // adaptive routing routes every step when it starts.
    let mut jobs: Vec<JobState> = Vec::with_capacity(w.jobs.len());
    for (j, job) in w.jobs.iter().enumerate() {
        let routes = if adaptive {
            Routes::default()
        } else {
            route_all(&net, &mut router, &connections(w, &shape, j, 0, qpn_seed))?
        };
        let (steps, repeats) = if single {
            (job.patterns(), job.repeats(&shape))
        } else {
            (job.steps(&shape), 1)
        };
        let first = if job.patterns() > 1 && w.routing == Routing::Planned {
            routes.clone()
        } else {
            Routes::default()
        };
        jobs.push(JobState {
            first,
            steps,
            repeats,
            step: 0,
            pattern: Some(0),
            routes,
            bytes: job.flow_bytes(&shape),
            latency_ticks: 0,
            left: 0,
            started_at: 0,
            elapsed: 0.0,
            version: 0,
            skipped: false,
        });
    }
    let mut base_loads = match &router {
        Router::Planned(l) => Some(l.clone()),
        _ => None,
    };
    let mut link_bytes = vec![0.0f64; nl];
    let mut eng: Engine<Ev> = Engine::with_capacity(2 * jobs.len() + 2 + degraded.len());
    for j in 0..jobs.len() {
        eng.schedule_at(SimTime(0), Ev::Start(j as u32));
    }
    for (i, (_, _, at)) in degraded.iter().enumerate() {
        if *at > 0.0 {
            eng.schedule_at(SimTime((at * TICKS_PER_S).round() as u64), Ev::Degrade(i as u32));
        }
    }
    let mut active: Vec<Active> = Vec::new();
    let mut rates: Vec<f64> = Vec::new();
    let mut solver = MaxMin::new(nl);
    let mut drain: Option<EventId> = None;
    let mut last = 0u64;
    let mut recomputes = 0u64;
    let mut max_uplink = 0u32;
    let bytes_per_tick = shape.link_bytes_per_s / TICKS_PER_S;
    let mut finished = vec![0.0f64; jobs.len()];
    // One job run step by step because a link degrades mid-run: a step that repeats a step already simulated on the
    // same fabric (same pattern, no degradation since) with no degradation due before it would end starts from the
    // same state (nothing else on the fabric) and lasts as long; it is not simulated again. Exact for the model
    // (under adaptive routing the step repeats the simulated step's flowlet draw).
    let warp = w.jobs.len() == 1 && !single;
    let mut version = 0u64;
    let mut step_ticks: std::collections::HashMap<(u64, u64), u64> = std::collections::HashMap::new();
    let event_ticks: Vec<u64> = degraded
        .iter()
        .filter(|d| d.2 > 0.0)
        .map(|d| (d.2 * TICKS_PER_S).round() as u64)
        .collect();
    while let Some((t, ev)) = eng.step() {
        let now = t.0;
        let dt = (now - last) as f64;
        if dt > 0.0 {
            for a in active.iter_mut() {
                a.rem -= a.rate * dt;
            }
        }
        last = now;
        let mut start = None;
        match ev {
            Ev::Start(j) => start = Some(j as usize),
            Ev::Drain => drain = None,
            Ev::Degrade(i) => {
                let (l, frac, _) = &degraded[i as usize];
                net.set_rate(l, *frac);
                version += 1;
                if w.routing == Routing::Planned {
                    // The planner re-plans every job on the new rates: the first patterns on a fresh load table,
                    // then each job's current pattern; running flows move to their new paths.
                    let mut r = Router::Planned(vec![0u32; nl]);
                    let mut firsts = Vec::with_capacity(jobs.len());
                    for j in 0..jobs.len() {
                        firsts.push(route_all(&net, &mut r, &connections(w, &shape, j, 0, qpn_seed))?);
                    }
                    let base = match &r {
                        Router::Planned(l) => l.clone(),
                        _ => Vec::new(),
                    };
                    for (j, f) in firsts.into_iter().enumerate() {
                        let p = jobs[j].pattern.unwrap_or(0);
                        if p == 0 {
                            jobs[j].routes = f.clone();
                        } else {
                            jobs[j].routes = reroute(w, &net, &mut r, Some(&base), &f, j, p, qpn_seed)?;
                        }
                        if w.jobs[j].patterns() > 1 {
                            jobs[j].first = f;
                        }
                    }
                    base_loads = Some(base);
                    router = r;
                }
            }
            Ev::End(j) => {
                let js = &jobs[j as usize];
                if warp && !js.skipped && js.version == version {
                    step_ticks.insert((js.pattern.unwrap_or(0), version), now - js.started_at);
                }
                if adaptive && !js.skipped {
                    // The step's flowlets are over: their links are free for the next choices.
                    if let Router::Adaptive(loads, _) = &mut router {
                        for &l in &jobs[j as usize].routes.links {
                            loads[l as usize] -= 1;
                        }
                    }
                }
                let js = &mut jobs[j as usize];
                js.elapsed += (now - js.started_at) as f64 / TICKS_PER_S * js.repeats as f64;
                js.step += 1;
                if js.step < js.steps {
                    start = Some(j as usize);
                } else {
                    finished[j as usize] = js.elapsed;
                }
            }
        }
        let mut skip = false;
        if let Some(j) = start {
            let job = &w.jobs[j];
            let p = if single {
                jobs[j].step
            } else {
                jobs[j].step / job.repeats(&shape)
            };
            if warp
                && jobs[j].pattern == Some(p)
                && let Some(&d) = step_ticks.get(&(p, version))
                && event_ticks.iter().all(|&e| e < now || e > now + d)
            {
                skip = true;
                let js = &mut jobs[j];
                js.started_at = now;
                js.skipped = true;
                for &l in &js.routes.links {
                    link_bytes[l as usize] += js.bytes;
                }
                eng.schedule_in(SimTime(d), Ev::End(j as u32));
            }
        }
        if let Some(j) = start.filter(|_| !skip) {
            let job = &w.jobs[j];
            let p = if single {
                jobs[j].step
            } else {
                jobs[j].step / job.repeats(&shape)
            };
            jobs[j].skipped = false;
            jobs[j].version = version;
            if adaptive {
                jobs[j].routes = adaptive_routes(w, &net, &mut router, j, p, jobs[j].step, qpn_seed, order_seed)?;
                jobs[j].pattern = Some(p);
            } else if jobs[j].pattern != Some(p) {
                jobs[j].routes = reroute(
                    w,
                    &net,
                    &mut router,
                    base_loads.as_deref(),
                    &jobs[j].first,
                    j,
                    p,
                    qpn_seed,
                )?;
                jobs[j].pattern = Some(p);
            }
            let js = &mut jobs[j];
            js.latency_ticks = (step_latency(w, &shape, j, p) * TICKS_PER_S).round() as u64;
            js.started_at = now;
            js.left = js.routes.len() as u32;
            let weight = js.bytes * js.repeats as f64;
            for f in 0..js.routes.len() {
                for &l in js.routes.path(f) {
                    link_bytes[l as usize] += weight;
                }
                active.push(Active {
                    job: j as u32,
                    flow: f as u32,
                    rem: js.bytes,
                    rate: 0.0,
                });
            }
            if js.left == 0 {
                eng.schedule_in(SimTime(js.latency_ticks), Ev::End(j as u32));
            }
        }
        // Retire drained flows; a job's step ends its latency after its last flow.
        let mut i = 0;
        while i < active.len() {
            let a = active[i];
            let js = &mut jobs[a.job as usize];
            if a.rem <= js.bytes * 1e-9 {
                active.swap_remove(i);
                js.left -= 1;
                if js.left == 0 {
                    eng.schedule_in(SimTime(js.latency_ticks), Ev::End(a.job));
                }
            } else {
                i += 1;
            }
        }
        if eng.peek_time() == Some(t) {
            continue; // more events at this instant: recompute once after them
        }
        // Keep a canonical order so that rates do not depend on removal history.
        active.sort_unstable_by_key(|a| (a.job, a.flow));
        rates.resize(active.len(), 0.0);
        {
            let jobs_ref = &jobs;
            let act = &active;
            let net_ref = &net;
            solver.solve(
                |l| bytes_per_tick * net_ref.frac(l),
                act.len(),
                |f| jobs_ref[act[f].job as usize].routes.path(act[f].flow as usize),
                &mut rates,
            );
        }
        recomputes += 1;
        for &l in solver.used() {
            if net.is_uplink(l) {
                max_uplink = max_uplink.max(solver.flows_on(l));
            }
        }
        let mut next = f64::INFINITY;
        for (a, &r) in active.iter_mut().zip(&rates) {
            a.rate = r;
            next = next.min(a.rem / r);
        }
        if let Some(id) = drain.take() {
            eng.cancel(id);
        }
        if next.is_finite() {
            drain = Some(eng.schedule_in(SimTime(next.max(0.0).ceil() as u64), Ev::Drain));
        }
    }
    let makespan = finished.iter().copied().fold(0.0, f64::max);
    let peak = link_bytes.iter().copied().fold(0.0, f64::max);
    Ok(Replication {
        times_s: finished,
        max_link_utilisation: (peak / (shape.link_bytes_per_s * makespan)).min(1.0),
        max_uplink_flows: max_uplink,
        recomputes,
    })
}

/// The flow-level simulator backend (`simulated`).
#[derive(Debug, Clone, Copy)]
pub struct FabricSim {
    /// Hash draws under ECMP (planned routing runs once).
    pub replications: u32,
}

impl Default for FabricSim {
    fn default() -> Self {
        FabricSim { replications: 8 }
    }
}

impl Backend<Fabric> for FabricSim {
    fn name(&self) -> &str {
        "flow_sim"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Simulated
    }
    fn run(&mut self, w: &Fabric, ctx: &mut RunCtx) -> Result<FabricOutcome, Error> {
        w.validate()?;
        let shape = w.shape()?;
        let reps = match w.routing {
            Routing::Ecmp | Routing::Adaptive => self.replications.max(1) as u64,
            Routing::Planned => 1,
        };
        let root = ctx.seed.derive("fabric");
        let ctx_ref = &*ctx;
        let results: Vec<Option<Result<Replication, Error>>> = (0..reps)
            .into_par_iter()
            .map(|r| {
                if ctx_ref.cancelled() {
                    return None;
                }
                let out = simulate(w, root.index(r));
                ctx_ref.report(r + 1, reps);
                Some(out)
            })
            .collect();
        let mut done = Vec::with_capacity(results.len());
        for r in results {
            done.push(r.ok_or(Error::Interrupted)??);
        }
        let n = done.len() as f64;
        let jobs = w
            .jobs
            .iter()
            .enumerate()
            .map(|(j, job)| {
                let times: Vec<f64> = done.iter().map(|r| r.times_s[j]).collect();
                let s = Summary::of(&times);
                let ranks = job.ranks(&shape);
                let algbw = job.bytes as f64 / s.mean;
                JobOutcome {
                    name: job.name.clone(),
                    ranks,
                    time_s: s.mean,
                    time_ci_s: (s.n >= 2).then(|| s.ci95()),
                    ideal_time_s: ideal_time(w, &shape, j),
                    algbw,
                    busbw: algbw * job.collective.busbw_factor(ranks),
                    compute_s: job.compute_s,
                }
            })
            .collect();
        Ok(FabricOutcome {
            jobs,
            max_link_utilisation: done.iter().map(|r| r.max_link_utilisation).sum::<f64>() / n,
            max_uplink_flows: done.iter().map(|r| r.max_uplink_flows as f64).sum::<f64>() / n,
            work: done.iter().map(|r| r.recomputes).sum(),
        })
    }
}

/// Index of the first smallest cost (the planner's tie-break: the earliest candidate).
fn first_min(cost: &[f64]) -> usize {
    let mut best = 0;
    for i in 1..cost.len() {
        if cost[i] < cost[best] {
            best = i;
        }
    }
    best
}
