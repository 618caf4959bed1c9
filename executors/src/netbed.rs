//! The namespace testbed: a real 2-tier fat tree built on this machine out of Linux network namespaces, and a real
//! ring collective over TCP between its hosts (the measured backend of the `fabric` kind, issue 10).
//!
//! **The network.** Every host, leaf and spine is a network namespace named `tlb<pid>-<run>-<node>` (the pid and a
//! per-process run counter keep parallel runs apart). Every link is a veth pair (MTU [`MTU`]) whose two ends egress
//! through a token bucket (`tc qdisc ... tbf rate R`): the link rate, each direction. Leaves and spines forward
//! (`net.ipv4.ip_forward=1`) and hash multipath routes on the 5-tuple (set in each namespace, see Routing). Addresses come only from the benchmarking range 198.18.0.0/15: host `i` of leaf `L` is
//! `198.18.L.(4i+2)/30` (its leaf `.4i+1`), parallel link `j` between leaf `L` and spine `s` is
//! `198.19.L.(4(s k + j))/30` (leaf `+1`, spine `+2`).
//!
//! **Routing.** A host sends everything to its leaf. A leaf reaches the hosts of another leaf through a multipath
//! route over its uplinks whose spine still reaches that leaf; a spine reaches a leaf through a multipath route over
//! its parallel links to it. That is ECMP with Linux's own hash over the 5-tuple, seeded per switch from the run's
//! seed (`net.ipv4.fib_multipath_hash_seed`), so a draw is reproducible, and read back after the run with
//! `ip route get ... ipproto tcp sport P dport D`. The hash policy is 3 with the fields source and destination
//! address, protocol, source and destination port (`fib_multipath_hash_fields=0x0037`), not policy 1: on a
//! forwarded packet policy 1 takes the hash the sending socket put on the packet (`skb->l4_hash`, the socket's
//! random `sk_txhash`, which veth keeps across namespaces and TCP re-draws after a timeout), so the path would not
//! be a function of the 5-tuple, could change mid-run, and `ip route get` would not tell it (seen on this testbed:
//! counters contradicted the read-back paths). A flow with a pinned path
//! (`planned`) gets a policy rule matching its 5-tuple (`ip rule ... ipproto tcp sport P`) at its source leaf (and at
//! the spine when there are parallel links down) whose table holds only the chosen next hop.
//!
//! **The collective.** Each ring runs with one TCP connection per neighbour pair and channel, bound to a chosen
//! source port; the rank's buffer of `f32` is split in `n` chunks, each sent as `channels` pieces. All-reduce is
//! `n-1` reduce-scatter steps (receive, add) and `n-1` all-gather steps (receive, copy); the result is checked
//! (every element equals the sum over ranks). Every rank starts at one barrier after all connections are up; a
//! job's time is its last rank's finish. Sockets are created by threads that entered the host's namespace
//! (`setns`), every blocking read and write wakes every 50 ms to check the cancel flag and the run's deadline.
//!
//! **Counters.** Transmitted bytes of every interface (`ip -j -s link`, the counters of
//! `/sys/class/net/*/statistics`) before and after the run give the bytes of every directed link.
//!
//! **Teardown.** [`Bed`] deletes every namespace it created when dropped: on success, on error and on
//! [`Error::Interrupted`]. At start, [`cleanup_stale`] deletes namespaces of this prefix whose process is gone (a
//! run killed by a second Ctrl-C).
//!
//! Links are numbered as the flow simulator numbers them for one NIC of one port (`trainlab_sim::fabric::Net`):
//! physical link `h` is host `h`'s link, `H + (L S + s) k + j` the parallel link `j` between leaf `L` and spine
//! `s`; directed link `2p` is up (host to leaf, leaf to spine), `2p + 1` down.
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::time::{Duration, Instant};
use trainlab_core::Error;

/// Prefix of every namespace the testbed creates.
pub const PREFIX: &str = "tlb";
/// Most hosts of a testbed.
pub const MAX_HOSTS: u32 = 16;
/// Most spines of a testbed.
pub const MAX_SPINES: u32 = 8;
/// Lowest link rate, Mbit/s (`tc` takes less, but a run would take minutes).
pub const MIN_MBIT: f64 = 1.0;
/// Highest link rate, Mbit/s (what two loaded cores can forward through four hops is less than this; see
/// `NOTES-testbed.md`).
pub const MAX_MBIT: f64 = 1000.0;
/// Largest buffer per rank, bytes.
pub const MAX_BYTES: u64 = 64 << 20;
/// MTU of every veth (jumbo frames, as RoCE fabrics run; fewer packets for the CPU to forward).
pub const MTU: u32 = 9000;
/// TCP port every host listens on.
const PORT: u16 = 5000;

static RUN: AtomicU32 = AtomicU32::new(0);

/// A 2-tier fat tree with one single-port NIC per host.
#[derive(Debug, Clone, PartialEq)]
pub struct Topo {
    /// Hosts under one leaf.
    pub hosts_per_leaf: u32,
    /// Leaves.
    pub leaves: u32,
    /// Spines.
    pub spines: u32,
    /// Parallel links between a leaf and each spine.
    pub k: u32,
    /// Link rate, each direction, Mbit/s.
    pub rate_mbit: f64,
    /// Leaf-spine links down: `(leaf, spine, parallel index)`.
    pub dead: Vec<(u32, u32, u32)>,
    /// Seed of the switches' multipath hash (each switch derives its own).
    pub hash_seed: u32,
}

impl Topo {
    /// Hosts.
    pub fn hosts(&self) -> u32 {
        self.hosts_per_leaf * self.leaves
    }
    /// Physical link between `leaf` and spine `s`, parallel index `j`.
    pub fn ls(&self, leaf: u32, s: u32, j: u32) -> u32 {
        self.hosts() + (leaf * self.spines + s) * self.k + j
    }
    /// Directed links.
    pub fn links(&self) -> usize {
        2 * (self.hosts() + self.leaves * self.spines * self.k) as usize
    }
    fn alive(&self, leaf: u32, s: u32, j: u32) -> bool {
        !self.dead.contains(&(leaf, s, j))
    }
    /// Checks the limits of the testbed (field paths as in a `fabric` workload).
    pub fn check(&self) -> Result<(), Error> {
        if self.hosts() > MAX_HOSTS || self.hosts() < 2 {
            return Err(Error::invalid(
                "workload.topology.hosts_per_leaf",
                format!("{} hosts", self.hosts()),
                format!("the namespace testbed builds 2 to {MAX_HOSTS} hosts on this machine"),
                format!("use leaves x hosts_per_leaf <= {MAX_HOSTS}"),
            ));
        }
        if self.hosts_per_leaf > 16 || self.leaves > 16 {
            return Err(Error::invalid(
                "workload.topology.leaves",
                self.leaves,
                "the testbed addresses at most 16 leaves of 16 hosts",
                "use fewer leaves",
            ));
        }
        if self.spines > MAX_SPINES || self.spines * self.k > 16 {
            return Err(Error::invalid(
                "workload.topology.spines",
                self.spines,
                format!("the testbed builds at most {MAX_SPINES} spines and 16 uplinks a leaf"),
                "use fewer spines or a higher oversubscription",
            ));
        }
        if !(MIN_MBIT..=MAX_MBIT).contains(&self.rate_mbit) || !self.rate_mbit.is_finite() {
            return Err(Error::invalid(
                "workload.topology.link_gbps",
                self.rate_mbit / 1000.0,
                format!(
                    "the testbed's token buckets run links at {MIN_MBIT}-{MAX_MBIT} Mbit/s ({} to {} Gb/s)",
                    MIN_MBIT / 1000.0,
                    MAX_MBIT / 1000.0
                ),
                "use link_gbps between 0.001 and 1 for the testbed (faster links are answered scaled to 0.1)",
            ));
        }
        Ok(())
    }
}

/// The collective a ring runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingOp {
    /// Reduce-scatter then all-gather: `2(n-1)` steps.
    AllReduce,
    /// `n-1` copy steps.
    AllGather,
    /// `n-1` add steps.
    ReduceScatter,
}

/// One job: a ring over `hosts`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ring {
    /// Hosts in ring order (host `hosts[i]` sends to `hosts[i+1]`).
    pub hosts: Vec<u32>,
    /// Connections per neighbour pair.
    pub channels: u32,
    /// Buffer per rank, bytes (rounded down to whole `f32`).
    pub bytes: u64,
    /// The collective.
    pub op: RingOp,
    /// Source port of flow `i x channels + c` (pair `i`, channel `c`).
    pub sports: Vec<u16>,
    /// Pinned path of each flow (`None`: ECMP): `(spine, uplink index, downlink index)`.
    pub pins: Vec<Option<(u32, u32, u32)>>,
}

impl Ring {
    /// Steps of the collective.
    pub fn steps(&self) -> usize {
        let n = self.hosts.len();
        match self.op {
            RingOp::AllReduce => 2 * (n - 1),
            _ => n - 1,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BedRun {
    /// Completion time of each ring, seconds (from the common start to its last rank's finish).
    pub times_s: Vec<f64>,
    /// Bytes transmitted on every directed link (numbered as in the module docs) during the run.
    pub tx_bytes: Vec<u64>,
    /// The directed links of every flow of every ring, as Linux routed them.
    pub paths: Vec<Vec<Vec<u32>>>,
    /// Namespaces created.
    pub namespaces: usize,
    /// Seconds spent building the network.
    pub setup_s: f64,
}

/// Whether the testbed can run here: root, `ip` and `tc` from iproute2.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the namespace testbed needs root (network namespaces, veth, tc)".into());
    }
    for tool in ["ip", "tc"] {
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(format!("`{tool}` (iproute2) is not installed"));
        }
    }
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBE.get_or_init(probe).clone()
}

/// Whether this machine lets root build what a testbed needs (a container without `CAP_NET_ADMIN`, or a kernel
/// without veth or the token-bucket qdisc, does not): one namespace with a shaped veth pair, deleted at once (named
/// like a bed's, so [`cleanup_stale`] removes it if this process dies before).
fn probe() -> Result<(), String> {
    let ns = format!("{PREFIX}{}-probe", std::process::id());
    run_cmd(&["ip", "netns", "add", &ns], None)
        .map_err(|e| format!("creating a network namespace failed (no CAP_NET_ADMIN here?): {e}"))?;
    let built = run_cmd(
        &[
            "ip", "-n", &ns, "link", "add", "tlp0", "type", "veth", "peer", "name", "tlp1",
        ],
        None,
    )
    .and_then(|_| {
        run_cmd(
            &[
                "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "tlp0", "root", "tbf", "rate", "100mbit",
                "burst", "32kb", "latency", "100ms",
            ],
            None,
        )
    });
    let _ = run_cmd(&["ip", "netns", "del", &ns], None);
    built
        .map(|_| ())
        .map_err(|e| format!("a veth pair shaped by tc tbf cannot be built here: {e}"))
}

fn run_cmd(args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let mut c = Command::new(args[0]);
    c.args(&args[1..])
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .map_err(|e| Error::Backend(format!("testbed: running {}: {e}", args[0])))?;
    if let (Some(text), Some(mut si)) = (stdin, child.stdin.take()) {
        si.write_all(text.as_bytes())
            .map_err(|e| Error::Backend(format!("testbed: writing to {}: {e}", args[0])))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Backend(format!("testbed: waiting for {}: {e}", args[0])))?;
    if !out.status.success() {
        return Err(Error::Backend(format!(
            "testbed: `{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespaces that exist now (`ip netns list`, names only).
pub fn namespaces() -> Vec<String> {
    run_cmd(&["ip", "netns", "list"], None)
        .map(|s| {
            s.lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The pid in a testbed namespace name (`tlb<pid>-...`).
fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?;
    let end = rest.find('-')?;
    rest[..end].parse().ok()
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for the process.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Deletes the testbed namespaces whose process is gone. Returns how many were deleted.
pub fn cleanup_stale() -> usize {
    let mut n = 0;
    for name in namespaces() {
        if let Some(pid) = owner_pid(&name)
            && pid > 0
            && !pid_alive(pid)
            && run_cmd(&["ip", "netns", "del", &name], None).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// The namespaces of one run; dropping it deletes them all.
#[derive(Debug)]
pub struct Bed {
    prefix: String,
    created: Vec<String>,
}

impl Bed {
    /// A bed with a fresh prefix (`tlb<pid>-<run>-`), no namespace yet.
    pub fn new() -> Bed {
        let run = RUN.fetch_add(1, Ordering::Relaxed);
        Bed {
            prefix: format!("{PREFIX}{}-{run}-", std::process::id()),
            created: Vec::new(),
        }
    }
    /// The prefix of this bed's namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// Full name of node `node`.
    pub fn ns(&self, node: &str) -> String {
        format!("{}{node}", self.prefix)
    }
    /// Creates namespace `node` (remembered for teardown before it exists, so a half-made one goes too).
    pub fn add(&mut self, node: &str) -> Result<String, Error> {
        let name = self.ns(node);
        self.created.push(name.clone());
        run_cmd(&["ip", "netns", "add", &name], None)?;
        Ok(name)
    }
    /// Namespaces created.
    pub fn len(&self) -> usize {
        self.created.len()
    }
    /// Whether none was created.
    pub fn is_empty(&self) -> bool {
        self.created.is_empty()
    }
}

impl Default for Bed {
    fn default() -> Self {
        Bed::new()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if self.created.is_empty() {
            return;
        }
        let script: String = self.created.iter().map(|n| format!("netns del {n}\n")).collect();
        // `-force`: carry on past a namespace that was never made.
        let _ = run_cmd(&["ip", "-force", "-batch", "-"], Some(&script));
        for n in &self.created {
            if std::path::Path::new(&format!("/var/run/netns/{n}")).exists() {
                let _ = run_cmd(&["ip", "netns", "del", n], None);
            }
        }
    }
}

fn host_ns(h: u32) -> String {
    format!("h{h}")
}
fn leaf_ns(l: u32) -> String {
    format!("l{l}")
}
fn spine_ns(s: u32) -> String {
    format!("s{s}")
}
/// Address of host `h`.
pub fn host_ip(t: &Topo, h: u32) -> Ipv4Addr {
    let (l, i) = (h / t.hosts_per_leaf, h % t.hosts_per_leaf);
    Ipv4Addr::new(198, 18, l as u8, (4 * i + 2) as u8)
}
fn leaf_host_ip(t: &Topo, h: u32) -> Ipv4Addr {
    let (l, i) = (h / t.hosts_per_leaf, h % t.hosts_per_leaf);
    Ipv4Addr::new(198, 18, l as u8, (4 * i + 1) as u8)
}
fn ls_ip(t: &Topo, l: u32, s: u32, j: u32, spine_side: bool) -> Ipv4Addr {
    let base = 4 * (s * t.k + j);
    Ipv4Addr::new(198, 19, l as u8, (base + 1 + u32::from(spine_side)) as u8)
}

/// Builds the network of `t` in `bed`.
fn build(bed: &mut Bed, t: &Topo, rings: &[Ring]) -> Result<(), Error> {
    let (h, nl, ns_) = (t.hosts(), t.leaves, t.spines);
    for x in 0..h {
        bed.add(&host_ns(x))?;
    }
    for l in 0..nl {
        bed.add(&leaf_ns(l))?;
    }
    for s in 0..ns_ {
        bed.add(&spine_ns(s))?;
    }
    // veth pairs, created straight into their namespaces.
    let mut links = String::new();
    for x in 0..h {
        let l = x / t.hosts_per_leaf;
        links += &format!(
            "link add up0 mtu {MTU} netns {} type veth peer name h{x} mtu {MTU} netns {}\n",
            bed.ns(&host_ns(x)),
            bed.ns(&leaf_ns(l))
        );
    }
    for l in 0..nl {
        for s in 0..ns_ {
            for j in 0..t.k {
                if t.alive(l, s, j) {
                    links += &format!(
                        "link add s{s}p{j} mtu {MTU} netns {} type veth peer name l{l}p{j} mtu {MTU} netns {}\n",
                        bed.ns(&leaf_ns(l)),
                        bed.ns(&spine_ns(s))
                    );
                }
            }
        }
    }
    run_cmd(&["ip", "-batch", "-"], Some(&links))?;
    let rate = format!("{}kbit", (t.rate_mbit * 1000.0).round() as u64);
    // Token bucket: a burst of a few jumbo frames (a bigger one lets the first bytes of every step through at line
    // speed, which a flow model does not know; a smaller one cuts offload packets into more frames, CPU the loaded
    // machine does not have), a deep queue (~100 ms at the link rate, at least 1 MiB) so that flows starting together
    // in a step rarely lose packets to the queue and wait for a retransmission timeout.
    let limit = ((t.rate_mbit * 1e6 / 8.0 * 0.1) as u64).max(1 << 20);
    let tbf = |dev: &str| format!("qdisc add dev {dev} root tbf rate {rate} burst 32kb limit {limit}\n");
    // Hosts.
    for x in 0..h {
        let name = bed.ns(&host_ns(x));
        let cmds = format!(
            "link set lo up\naddr add {}/30 dev up0\nlink set up0 up\nroute add default via {} dev up0\n",
            host_ip(t, x),
            leaf_host_ip(t, x)
        );
        run_cmd(&["ip", "-n", &name, "-batch", "-"], Some(&cmds))?;
        run_cmd(&["tc", "-n", &name, "-batch", "-"], Some(&tbf("up0")))?;
    }
    // Which spines reach which leaf.
    let reaches = |s: u32, l: u32| (0..t.k).any(|j| t.alive(l, s, j));
    for l in 0..nl {
        let name = bed.ns(&leaf_ns(l));
        let mut cmds = String::from("link set lo up\n");
        let mut tc = String::new();
        for i in 0..t.hosts_per_leaf {
            let x = l * t.hosts_per_leaf + i;
            cmds += &format!("addr add {}/30 dev h{x}\nlink set h{x} up\n", leaf_host_ip(t, x));
            tc += &tbf(&format!("h{x}"));
        }
        for s in 0..ns_ {
            for j in 0..t.k {
                if t.alive(l, s, j) {
                    cmds += &format!(
                        "addr add {}/30 dev s{s}p{j}\nlink set s{s}p{j} up\n",
                        ls_ip(t, l, s, j, false)
                    );
                    tc += &tbf(&format!("s{s}p{j}"));
                    // The table of a pinned path through this uplink.
                    cmds += &format!(
                        "route add 198.18.0.0/15 via {} dev s{s}p{j} table {}\n",
                        ls_ip(t, l, s, j, true),
                        100 + s * t.k + j
                    );
                }
            }
        }
        for l2 in (0..nl).filter(|&l2| l2 != l) {
            let hops: Vec<String> = (0..ns_)
                .filter(|&s| reaches(s, l2))
                .flat_map(|s| (0..t.k).map(move |j| (s, j)))
                .filter(|&(s, j)| t.alive(l, s, j))
                .map(|(s, j)| format!("nexthop via {} dev s{s}p{j}", ls_ip(t, l, s, j, true)))
                .collect();
            if hops.is_empty() {
                return Err(Error::Backend(format!(
                    "testbed: leaf {l} has no uplink to a spine that reaches leaf {l2}"
                )));
            }
            cmds += &format!("route add 198.18.{l2}.0/24 {}\n", hops.join(" "));
        }
        run_cmd(&["ip", "-n", &name, "-batch", "-"], Some(&cmds))?;
        run_cmd(&["tc", "-n", &name, "-batch", "-"], Some(&tc))?;
    }
    for s in 0..ns_ {
        let name = bed.ns(&spine_ns(s));
        let mut cmds = String::from("link set lo up\n");
        let mut tc = String::new();
        for l in 0..nl {
            let mut hops = Vec::new();
            for j in 0..t.k {
                if t.alive(l, s, j) {
                    cmds += &format!(
                        "addr add {}/30 dev l{l}p{j}\nlink set l{l}p{j} up\n",
                        ls_ip(t, l, s, j, true)
                    );
                    tc += &tbf(&format!("l{l}p{j}"));
                    hops.push(format!("nexthop via {} dev l{l}p{j}", ls_ip(t, l, s, j, false)));
                    cmds += &format!(
                        "route add 198.18.{l}.0/24 via {} dev l{l}p{j} table {}\n",
                        ls_ip(t, l, s, j, false),
                        200 + l * t.k + j
                    );
                }
            }
            if !hops.is_empty() {
                cmds += &format!("route add 198.18.{l}.0/24 {}\n", hops.join(" "));
            }
        }
        run_cmd(&["ip", "-n", &name, "-batch", "-"], Some(&cmds))?;
        if !tc.is_empty() {
            run_cmd(&["tc", "-n", &name, "-batch", "-"], Some(&tc))?;
        }
    }
    // Forwarding and L4 multipath hashing on every switch.
    for (i, node) in (0..nl).map(leaf_ns).chain((0..ns_).map(spine_ns)).enumerate() {
        // Linux takes 0 for "random": keep every switch's seed non-zero.
        let seed = (t.hash_seed ^ (i as u32).wrapping_mul(0x9E37_79B9)).max(1);
        run_cmd(
            &[
                "ip",
                "netns",
                "exec",
                &bed.ns(&node),
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.fib_multipath_hash_policy=3",
                "net.ipv4.fib_multipath_hash_fields=0x0037",
                &format!("net.ipv4.fib_multipath_hash_seed={seed}"),
            ],
            None,
        )?;
    }
    // Pinned paths: a rule per flow at its source leaf (and at the spine when there are parallel links down).
    let mut leaf_rules = vec![String::new(); nl as usize];
    let mut spine_rules = vec![String::new(); ns_ as usize];
    for r in rings {
        let n = r.hosts.len();
        for (f, pin) in r.pins.iter().enumerate() {
            let Some((s, ju, jd)) = *pin else { continue };
            let (a, b) = (
                r.hosts[f / r.channels as usize],
                r.hosts[(f / r.channels as usize + 1) % n],
            );
            let (la, lb) = (a / t.hosts_per_leaf, b / t.hosts_per_leaf);
            if la == lb {
                continue;
            }
            let m = format!(
                "from {} to {} ipproto tcp sport {}",
                host_ip(t, a),
                host_ip(t, b),
                r.sports[f]
            );
            leaf_rules[la as usize] += &format!("rule add pref 100 {m} table {}\n", 100 + s * t.k + ju);
            if t.k > 1 {
                spine_rules[s as usize] += &format!("rule add pref 100 {m} table {}\n", 200 + lb * t.k + jd);
            }
        }
    }
    for (l, rules) in leaf_rules.iter().enumerate() {
        if !rules.is_empty() {
            run_cmd(&["ip", "-n", &bed.ns(&leaf_ns(l as u32)), "-batch", "-"], Some(rules))?;
        }
    }
    for (s, rules) in spine_rules.iter().enumerate() {
        if !rules.is_empty() {
            run_cmd(&["ip", "-n", &bed.ns(&spine_ns(s as u32)), "-batch", "-"], Some(rules))?;
        }
    }
    Ok(())
}

/// Transmitted bytes of every interface of namespace `ns`.
fn tx_counters(ns: &str) -> Result<Vec<(String, u64)>, Error> {
    let out = run_cmd(&["ip", "-n", ns, "-j", "-s", "link", "show"], None)?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| Error::Backend(format!("testbed: reading counters: {e}")))?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    Some((
                        i.get("ifname")?.as_str()?.to_string(),
                        i.pointer("/stats64/tx/bytes")?.as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Bytes transmitted so far on every directed link.
fn link_counters(bed: &Bed, t: &Topo) -> Result<Vec<u64>, Error> {
    let mut v = vec![0u64; t.links()];
    let num = |s: &str| s.parse::<u32>().ok();
    for x in 0..t.hosts() {
        for (name, b) in tx_counters(&bed.ns(&host_ns(x)))? {
            if name == "up0" {
                v[2 * x as usize] = b;
            }
        }
    }
    for l in 0..t.leaves {
        for (name, b) in tx_counters(&bed.ns(&leaf_ns(l)))? {
            if let Some(x) = name.strip_prefix('h').and_then(num) {
                v[2 * x as usize + 1] = b;
            } else if let Some((s, j)) = name
                .strip_prefix('s')
                .and_then(|r| r.split_once('p'))
                .and_then(|(s, j)| Some((num(s)?, num(j)?)))
            {
                v[2 * t.ls(l, s, j) as usize] = b;
            }
        }
    }
    for s in 0..t.spines {
        for (name, b) in tx_counters(&bed.ns(&spine_ns(s)))? {
            if let Some((l, j)) = name
                .strip_prefix('l')
                .and_then(|r| r.split_once('p'))
                .and_then(|(l, j)| Some((num(l)?, num(j)?)))
            {
                v[2 * t.ls(l, s, j) as usize + 1] = b;
            }
        }
    }
    Ok(v)
}

/// The device `ip route get` answers, from its output.
fn route_dev(out: &str) -> Option<String> {
    let w: Vec<&str> = out.split_whitespace().collect();
    w.windows(2).find(|p| p[0] == "dev").map(|p| p[1].to_string())
}

/// The directed links of the flow `a -> b` with source port `sport`, as Linux routes it now.
fn read_path(bed: &Bed, t: &Topo, a: u32, b: u32, sport: u16) -> Result<Vec<u32>, Error> {
    let (la, lb) = (a / t.hosts_per_leaf, b / t.hosts_per_leaf);
    let mut p = vec![2 * a];
    if la != lb {
        let get = |ns: String, iif: String| -> Result<String, Error> {
            let out = run_cmd(
                &[
                    "ip",
                    "-n",
                    &ns,
                    "route",
                    "get",
                    &host_ip(t, b).to_string(),
                    "from",
                    &host_ip(t, a).to_string(),
                    "iif",
                    &iif,
                    "ipproto",
                    "tcp",
                    "sport",
                    &sport.to_string(),
                    "dport",
                    &PORT.to_string(),
                ],
                None,
            )?;
            route_dev(&out).ok_or_else(|| Error::Backend(format!("testbed: no route in `{}`", out.trim())))
        };
        let up = get(bed.ns(&leaf_ns(la)), format!("h{a}"))?;
        let parse = |d: &str, c: char| -> Option<(u32, u32)> {
            let (x, j) = d.strip_prefix(c)?.split_once('p')?;
            Some((x.parse().ok()?, j.parse().ok()?))
        };
        let (s, ju) = parse(&up, 's').ok_or_else(|| Error::Backend(format!("testbed: leaf {la} routes to {up}")))?;
        let down = get(bed.ns(&spine_ns(s)), format!("l{la}p{ju}"))?;
        let (l2, jd) =
            parse(&down, 'l').ok_or_else(|| Error::Backend(format!("testbed: spine {s} routes to {down}")))?;
        if l2 != lb {
            return Err(Error::Backend(format!(
                "testbed: spine {s} sends host {b}'s traffic to leaf {l2}"
            )));
        }
        p.push(2 * t.ls(la, s, ju));
        p.push(2 * t.ls(lb, s, jd) + 1);
    }
    p.push(2 * b + 1);
    Ok(p)
}

/// Runs `f` on a thread that entered network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T, Error> {
    let path = format!("/var/run/netns/{ns}");
    let ns_name = ns.to_string();
    std::thread::spawn(move || -> Result<T, Error> {
        let file = std::fs::File::open(&path).map_err(|e| Error::io(format!("opening {path}"), e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace fd; setns changes only this thread's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(Error::io(
                format!("entering {ns_name}"),
                std::io::Error::last_os_error(),
            ));
        }
        f().map_err(|e| Error::io(format!("testbed socket in {ns_name}"), e))
    })
    .join()
    .map_err(|_| Error::Backend("testbed: a setup thread panicked".into()))?
}

/// A TCP connection from `src:sport` to `dst:PORT`, created in the calling thread's namespace.
fn connect_from(src: Ipv4Addr, sport: u16, dst: Ipv4Addr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let sa = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: plain socket calls on a fresh descriptor, closed on every error path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let a = sa(src, sport);
        if libc::bind(fd, &a as *const _ as *const libc::sockaddr, len) != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        let b = sa(dst, PORT);
        if libc::connect(fd, &b as *const _ as *const libc::sockaddr, len) != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

/// Why a blocked transfer should stop now.
struct Stop<'a> {
    cancel: &'a AtomicBool,
    abort: &'a AtomicBool,
    deadline: Instant,
    /// Set when a transfer hit the deadline (the cause; the other ranks then fail as its echoes).
    timed_out: AtomicBool,
}

impl Stop<'_> {
    fn check(&self) -> Result<(), Error> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        if self.abort.load(Ordering::Relaxed) {
            return Err(Error::Backend("testbed: another rank failed".into()));
        }
        if Instant::now() > self.deadline {
            self.timed_out.store(true, Ordering::Relaxed);
            return Err(Error::Backend("testbed: the run exceeded its time bound".into()));
        }
        Ok(())
    }
}

/// One read or write, retried while the socket times out (checking `stop` each time); the bytes moved.
fn moved(stop: &Stop<'_>, what: &str, mut io: impl FnMut() -> std::io::Result<usize>) -> Result<usize, Error> {
    loop {
        match io() {
            Ok(0) => return Err(Error::Backend("testbed: connection closed".into())),
            Ok(n) => return Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                stop.check()?
            }
            Err(e) => return Err(Error::io(format!("testbed: {what}"), e)),
        }
    }
}

fn write_all(s: &mut TcpStream, mut buf: &[u8], stop: &Stop<'_>) -> Result<(), Error> {
    while !buf.is_empty() {
        let n = moved(stop, "sending", || s.write(buf))?;
        buf = &buf[n..];
    }
    Ok(())
}

fn read_exact(s: &mut TcpStream, buf: &mut [u8], stop: &Stop<'_>) -> Result<(), Error> {
    let mut at = 0;
    while at < buf.len() {
        at += moved(stop, "receiving", || s.read(&mut buf[at..]))?;
    }
    Ok(())
}

/// Element range of chunk `c` of `n` over `e` elements, piece `p` of `q`.
fn piece(e: usize, n: usize, c: usize, q: usize, p: usize) -> std::ops::Range<usize> {
    let (lo, hi) = (c * e / n, (c + 1) * e / n);
    let len = hi - lo;
    (lo + p * len / q)..(lo + (p + 1) * len / q)
}

/// Value of element `e` of rank `r` before the collective (small integers: sums are exact in `f32`).
fn init(r: usize, e: usize) -> f32 {
    (r + 1) as f32 + (e % 7) as f32
}

/// One rank of a ring: its step loop. Returns its finish time after `t0`.
#[allow(clippy::too_many_arguments)]
fn rank(
    i: usize,
    ring: &Ring,
    outs: Vec<TcpStream>,
    ins: Vec<TcpStream>,
    start: &Barrier,
    t0: &std::sync::OnceLock<Instant>,
    stop: &Stop<'_>,
) -> Result<f64, Error> {
    let n = ring.hosts.len();
    let q = ring.channels as usize;
    let e = (ring.bytes / 4) as usize;
    let mut data: Vec<f32> = (0..e).map(|k| init(i, k)).collect();
    let steps = ring.steps();
    // Which chunk rank i sends and receives at step `s`, and whether it adds.
    let plan = |s: usize| -> (usize, usize, bool) {
        let rs = match ring.op {
            RingOp::AllReduce | RingOp::ReduceScatter => n - 1,
            RingOp::AllGather => 0,
        };
        if s < rs {
            ((i + n - s) % n, (i + 2 * n - s - 1) % n, true)
        } else {
            let s2 = s - rs;
            let off = if rs > 0 { 1 } else { 0 };
            ((i + n + off - s2) % n, (i + n + off - s2 - 1 + n) % n, false)
        }
    };
    let res = std::thread::scope(|sc| -> Result<f64, Error> {
        let mut to_send = Vec::new();
        let mut sent = Vec::new();
        for mut o in outs {
            let (tx, rx) = mpsc::channel::<Vec<u8>>();
            let (atx, arx) = mpsc::channel::<Result<(), Error>>();
            sc.spawn(move || {
                while let Ok(buf) = rx.recv() {
                    let r = write_all(&mut o, &buf, stop);
                    let bad = r.is_err();
                    if atx.send(r).is_err() || bad {
                        stop.abort.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            });
            to_send.push(tx);
            sent.push(arx);
        }
        let mut got = Vec::new();
        for (p, mut s) in ins.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel::<Result<Vec<u8>, Error>>();
            let plan = &plan;
            sc.spawn(move || {
                for step in 0..steps {
                    let (_, rc, _) = plan(step);
                    let r = piece(e, n, rc, q, p);
                    let mut buf = vec![0u8; r.len() * 4];
                    let res = read_exact(&mut s, &mut buf, stop).map(|_| buf);
                    let bad = res.is_err();
                    if tx.send(res).is_err() || bad {
                        stop.abort.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            });
            got.push(rx);
        }
        start.wait();
        let t0 = *t0.get_or_init(Instant::now);
        let out = (|| -> Result<f64, Error> {
            for step in 0..steps {
                stop.check()?;
                let (sc_, rc, add) = plan(step);
                for (p, tx) in to_send.iter().enumerate() {
                    let r = piece(e, n, sc_, q, p);
                    let bytes: Vec<u8> = data[r].iter().flat_map(|x| x.to_le_bytes()).collect();
                    tx.send(bytes)
                        .map_err(|_| Error::Backend("testbed: a sender stopped".into()))?;
                }
                for (p, rx) in got.iter().enumerate() {
                    let buf = rx
                        .recv()
                        .map_err(|_| Error::Backend("testbed: a receiver stopped".into()))??;
                    let r = piece(e, n, rc, q, p);
                    for (d, c) in data[r].iter_mut().zip(buf.chunks_exact(4)) {
                        let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                        if add {
                            *d += v;
                        } else {
                            *d = v;
                        }
                    }
                }
                for rx in &sent {
                    rx.recv()
                        .map_err(|_| Error::Backend("testbed: a sender stopped".into()))??;
                }
            }
            Ok(t0.elapsed().as_secs_f64())
        })();
        if out.is_err() {
            stop.abort.store(true, Ordering::Relaxed);
        }
        drop(to_send);
        out
    })?;
    // Check the result: all-reduce: every element is the sum over ranks; all-gather: chunk c is rank c's.
    let sum = |k: usize| (n * (n + 1) / 2) as f32 + (n * (k % 7)) as f32;
    let ok = match ring.op {
        RingOp::AllReduce => data.iter().enumerate().all(|(k, &v)| v == sum(k)),
        RingOp::AllGather => (0..n).all(|c| {
            let r = piece(e, n, c, 1, 0);
            data[r.clone()].iter().zip(r).all(|(&v, k)| v == init(c, k))
        }),
        RingOp::ReduceScatter => {
            let c = (i + 1) % n;
            piece(e, n, c, 1, 0).all(|k| data[k] == sum(k))
        }
    };
    if !ok {
        return Err(Error::Backend(format!(
            "testbed: rank {i} holds a wrong result after the collective"
        )));
    }
    Ok(res)
}

/// Builds the testbed of `t`, runs `rings` on it at once, measures, and tears it all down (also on error or
/// interruption). `limit` bounds the collective's wall time.
pub fn run(t: &Topo, rings: &[Ring], cancel: &AtomicBool, limit: Duration) -> Result<BedRun, Error> {
    t.check()?;
    for (ji, r) in rings.iter().enumerate() {
        let nf = r.hosts.len() * r.channels as usize;
        if r.hosts.len() < 2 || r.sports.len() != nf || r.pins.len() != nf || r.channels == 0 {
            return Err(Error::Backend(format!("testbed: ring {ji} is malformed")));
        }
        if r.bytes > MAX_BYTES {
            return Err(Error::invalid(
                format!("workload.jobs[{ji}].bytes"),
                r.bytes,
                format!("the testbed holds at most {MAX_BYTES} bytes a rank"),
                "use a smaller buffer",
            ));
        }
        if r.hosts.iter().any(|&h| h >= t.hosts()) {
            return Err(Error::Backend(format!(
                "testbed: ring {ji} names a host that does not exist"
            )));
        }
    }
    cleanup_stale();
    let setup = Instant::now();
    let mut bed = Bed::new();
    build(&mut bed, t, rings)?;
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    // Listeners, then connections (pair i, channel c), each announcing its channel with 4 bytes.
    let mut listeners = Vec::new();
    for r in rings {
        let mut ls = Vec::new();
        for &h in &r.hosts {
            let ip = host_ip(t, h);
            ls.push(in_netns(&bed.ns(&host_ns(h)), move || {
                TcpListener::bind(SocketAddrV4::new(ip, PORT))
            })?);
        }
        listeners.push(ls);
    }
    let tick = Some(Duration::from_millis(50));
    let mut outs: Vec<Vec<Vec<TcpStream>>> = Vec::new();
    let mut ins: Vec<Vec<Vec<Option<TcpStream>>>> = Vec::new();
    for (ji, r) in rings.iter().enumerate() {
        let n = r.hosts.len();
        let q = r.channels as usize;
        let mut o = Vec::new();
        let mut inn: Vec<Vec<Option<TcpStream>>> = (0..n).map(|_| (0..q).map(|_| None).collect()).collect();
        for i in 0..n {
            let (a, b) = (r.hosts[i], r.hosts[(i + 1) % n]);
            let mut chans = Vec::new();
            for c in 0..q {
                let (src, dst, sport) = (host_ip(t, a), host_ip(t, b), r.sports[i * q + c]);
                let mut s = in_netns(&bed.ns(&host_ns(a)), move || connect_from(src, sport, dst))?;
                s.write_all(&(c as u32).to_le_bytes())
                    .map_err(|e| Error::io("testbed: greeting", e))?;
                let (mut acc, _) = listeners[ji][(i + 1) % n]
                    .accept()
                    .map_err(|e| Error::io("testbed: accepting", e))?;
                let mut id = [0u8; 4];
                acc.read_exact(&mut id).map_err(|e| Error::io("testbed: greeting", e))?;
                let ch = u32::from_le_bytes(id) as usize;
                for st in [&s, &acc] {
                    st.set_nodelay(true).map_err(|e| Error::io("testbed: socket", e))?;
                    st.set_read_timeout(tick).map_err(|e| Error::io("testbed: socket", e))?;
                    st.set_write_timeout(tick)
                        .map_err(|e| Error::io("testbed: socket", e))?;
                }
                inn[(i + 1) % n][ch.min(q - 1)] = Some(acc);
                chans.push(s);
            }
            o.push(chans);
        }
        outs.push(o);
        ins.push(inn);
    }
    let setup_s = setup.elapsed().as_secs_f64();
    let before = link_counters(&bed, t)?;
    let abort = AtomicBool::new(false);
    let stop = Stop {
        cancel,
        abort: &abort,
        deadline: Instant::now() + limit,
        timed_out: AtomicBool::new(false),
    };
    let ranks: usize = rings.iter().map(|r| r.hosts.len()).sum();
    let start = Arc::new(Barrier::new(ranks));
    let t0 = std::sync::OnceLock::new();
    let results: Vec<Vec<Result<f64, Error>>> = std::thread::scope(|sc| {
        let mut handles = Vec::new();
        for (ji, r) in rings.iter().enumerate() {
            let mut hs = Vec::new();
            let o = std::mem::take(&mut outs[ji]);
            let inn = std::mem::take(&mut ins[ji]);
            for (i, (ov, iv)) in o.into_iter().zip(inn).enumerate() {
                let iv: Vec<TcpStream> = iv.into_iter().flatten().collect();
                let (start, stop, t0) = (&start, &stop, &t0);
                hs.push(sc.spawn(move || rank(i, r, ov, iv, start, t0, stop)));
            }
            handles.push(hs);
        }
        handles
            .into_iter()
            .map(|hs| {
                hs.into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(Error::Backend("testbed: a rank panicked".into())))
                    })
                    .collect()
            })
            .collect()
    });
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Interrupted);
    }
    // Report the cause, not its echoes: once one rank fails, the others see closed connections or the abort flag.
    let echo = |e: &Error| match e {
        Error::Interrupted => 0,
        Error::Backend(m) if m.contains("time bound") => 1,
        Error::Backend(m) if m.contains("another rank") || m.contains("connection closed") || m.contains("stopped") => {
            3
        }
        _ => 2,
    };
    let mut times_s = Vec::new();
    let mut failure: Option<Error> = None;
    for rs in results {
        let mut worst: f64 = 0.0;
        for r in rs {
            match r {
                Ok(t) => worst = worst.max(t),
                Err(e) => {
                    if failure.as_ref().is_none_or(|f| echo(&e) < echo(f)) {
                        failure = Some(e);
                    }
                }
            }
        }
        times_s.push(worst);
    }
    if let Some(e) = failure {
        if stop.timed_out.load(Ordering::Relaxed) {
            return Err(Error::Backend(format!(
                "testbed: the run exceeded its time bound ({:.1} s)",
                limit.as_secs_f64()
            )));
        }
        return Err(e);
    }
    let after = link_counters(&bed, t)?;
    let tx_bytes = after.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).collect();
    let mut paths = Vec::new();
    for r in rings {
        let n = r.hosts.len();
        let q = r.channels as usize;
        let mut ps = Vec::new();
        for f in 0..n * q {
            let (a, b) = (r.hosts[f / q], r.hosts[(f / q + 1) % n]);
            ps.push(read_path(&bed, t, a, b, r.sports[f])?);
        }
        paths.push(ps);
    }
    Ok(BedRun {
        times_s,
        tx_bytes,
        paths,
        namespaces: bed.len(),
        setup_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_buffer() {
        let (e, n, q) = (1001, 4, 3);
        let mut covered = vec![0u32; e];
        for c in 0..n {
            for p in 0..q {
                for k in piece(e, n, c, q, p) {
                    covered[k] += 1;
                }
            }
        }
        assert!(covered.iter().all(|&c| c == 1));
    }

    #[test]
    fn names_and_limits() {
        assert_eq!(owner_pid("tlb1234-0-h3"), Some(1234));
        assert_eq!(owner_pid("other-1"), None);
        let t = Topo {
            hosts_per_leaf: 2,
            leaves: 2,
            spines: 2,
            k: 1,
            rate_mbit: 100.0,
            dead: vec![],
            hash_seed: 1,
        };
        t.check().unwrap();
        assert_eq!((t.ls(1, 1, 0), t.links()), (7, 16));
        let e = Topo { leaves: 9, ..t.clone() }.check().unwrap_err().to_string();
        assert!(e.contains("workload.topology.hosts_per_leaf"), "{e}");
        let e = Topo { rate_mbit: 0.01, ..t }.check().unwrap_err().to_string();
        assert!(e.contains("workload.topology.link_gbps"), "{e}");
    }
}
