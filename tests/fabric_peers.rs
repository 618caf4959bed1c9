//! The flow-level fabric simulator against a peer (issue 10): SimGrid's flow model (Debian `python3-simgrid`, run by
//! `scripts/peers/simgrid_fabric.py`) runs the very flows trainlab routes (`trainlab_sim::fabric::flow_case`: same
//! links, paths, sizes and step latencies) and must give every job's completion time within 1%. The cases cover
//! 2- and 3-tier trees, ECMP and planned paths, bonded ports, oversubscription, a failed link, all-to-all's many
//! patterns and two jobs sharing the fabric with different step lengths (flows starting and ending at different
//! times). Each case also prints both simulators' wall-clock times and their ratio (`scripts/bench-peers.sh`).
//!
//! The packet-level peer is ns-3 (Debian `libns3-dev`, `scripts/peers/ns3_fabric.cc`, compiled here): the same
//! routed flows of one ring step on a 16-host fat tree as DCTCP connections with pinned paths and ECN-marking ports;
//! the collision slowdown (an ECMP step's time over the ideal, one flow alone on its path, each simulator's own) must
//! agree with trainlab's within 10% for every hash draw.
//!
//! Without a peer a test prints why and passes, unless `TRAINLAB_PEERS_REQUIRED` is set (`.ci/run` installs both
//! packages as root and sets it).
use std::process::Command;
use std::time::Instant;
use trainlab_core::Seed;
use trainlab_core::workloads::Fabric;
use trainlab_sim::fabric::{flow_case, simulate};

const PYTHON: &str = "/usr/bin/python3";

fn skip_unless_required(why: &str) {
    assert!(
        std::env::var_os("TRAINLAB_PEERS_REQUIRED").is_none(),
        "TRAINLAB_PEERS_REQUIRED is set but a peer is missing: {why}"
    );
    eprintln!("skipped: {why}");
}

fn simgrid_missing() -> Option<String> {
    match Command::new(PYTHON).args(["-c", "import simgrid"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "{PYTHON} cannot import simgrid ({}); install Debian's python3-simgrid",
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
        )),
        Err(e) => Some(format!("{PYTHON} not runnable: {e}")),
    }
}

const TWO_TIER: &str = r#"
[topology]
hosts_per_leaf = 4
leaves = 4
spines = 4
link_gbps = 100.0
link_latency_us = 1.0
gpus_per_host = 8
nics_per_host = 2
ports_per_nic = 1
"#;

const THREE_TIER: &str = r#"
[topology]
hosts_per_leaf = 2
leaves = 2
spines = 2
pods = 2
cores = 4
link_gbps = 200.0
link_latency_us = 1.0
gpus_per_host = 8
nics_per_host = 2
ports_per_nic = 2
"#;

fn job(name: &str, first: u32, count: u32, op: &str, bytes: u64, channels: u32) -> String {
    format!(
        "[[jobs]]\nname = \"{name}\"\nplacement = {{ first = {first}, count = {count} }}\ncollective = \"{op}\"\n\
         bytes = {bytes}\nchannels = {channels}\n"
    )
}

fn cases() -> Vec<(&'static str, String)> {
    let ring16 = job("ring", 0, 16, "all_reduce", 1 << 28, 2);
    vec![
        ("2tier-ring-ecmp", format!("routing = \"ecmp\"\n{TWO_TIER}{ring16}")),
        (
            "2tier-ring-planned",
            format!("routing = \"planned\"\n{TWO_TIER}{ring16}"),
        ),
        (
            "2tier-oversub2-ecmp",
            format!(
                "routing = \"ecmp\"\n{}{ring16}",
                TWO_TIER.replace("spines = 4", "spines = 2\noversubscription = 2.0")
            ),
        ),
        (
            "2tier-bonded-failed-ecmp",
            format!(
                "routing = \"ecmp\"\n{}{ring16}[[failed_links]]\na = \"leaf1\"\nb = \"spine0\"\n",
                TWO_TIER.replace("ports_per_nic = 1", "ports_per_nic = 2")
            ),
        ),
        (
            "2tier-alltoall-ecmp",
            format!(
                "routing = \"ecmp\"\n{TWO_TIER}{}",
                job("a2a", 0, 8, "all_to_all", 1 << 26, 1)
            ),
        ),
        (
            "2tier-two-jobs-ecmp",
            format!(
                "routing = \"ecmp\"\n{TWO_TIER}{}{}",
                job("big", 0, 10, "all_reduce", 1 << 28, 1),
                job("small", 10, 6, "all_gather", 1 << 25, 2)
            ),
        ),
        (
            "2tier-two-jobs-planned",
            format!(
                "routing = \"planned\"\n{TWO_TIER}{}{}",
                job("big", 0, 10, "all_reduce", 1 << 28, 1),
                job("small", 10, 6, "reduce_scatter", 1 << 25, 2)
            ),
        ),
        (
            "3tier-ring-ecmp",
            format!(
                "routing = \"ecmp\"\n{THREE_TIER}{}",
                job("ring", 0, 8, "all_reduce", 1 << 28, 2)
            ),
        ),
        (
            "3tier-ring-planned",
            format!(
                "routing = \"planned\"\n{THREE_TIER}{}",
                job("ring", 0, 8, "all_reduce", 1 << 28, 2)
            ),
        ),
    ]
}

fn fabric(tag: &str, body: &str) -> Fabric {
    let text = format!(
        "name = \"{tag}\"\nkind = \"fabric\"\n[workload]\n{}",
        indent_tables(body)
    );
    trainlab_datasets::scenario::parse(&text, tag)
        .and_then(|s| s.workload())
        .unwrap_or_else(|e| panic!("{tag}: {e}\n{text}"))
}

/// Puts the case's tables under `workload.`.
fn indent_tables(body: &str) -> String {
    body.lines()
        .map(|l| {
            if let Some(rest) = l.strip_prefix("[[") {
                format!("[[workload.{rest}")
            } else if let Some(rest) = l.strip_prefix('[') {
                format!("[workload.{rest}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn simgrid_gives_the_same_completion_times_within_1_percent() {
    if let Some(why) = simgrid_missing() {
        skip_unless_required(&why);
        return;
    }
    let dir = std::env::temp_dir().join(format!("trainlab-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut worst = 0.0f64;
    let mut ratios = Vec::new();
    for (tag, body) in cases() {
        let w = fabric(tag, &body);
        let seed = Seed(7);
        let case = flow_case(&w, seed).unwrap();
        // The trainlab side: median of 5 runs of the simulator on this case.
        let mut walls = Vec::new();
        let mut ours = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            ours = simulate(&w, seed).unwrap().times_s;
            walls.push(t.elapsed().as_secs_f64());
        }
        walls.sort_by(f64::total_cmp);
        let path = dir.join(format!("{tag}.json"));
        std::fs::write(&path, serde_json::to_string(&case).unwrap()).unwrap();
        let o = Command::new(PYTHON)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/peers/simgrid_fabric.py"))
            .arg(&path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{tag}: {}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let theirs: Vec<f64> = serde_json::from_value(v["times_s"].clone()).unwrap();
        assert_eq!(theirs.len(), ours.len(), "{tag}");
        let flows: usize = case.jobs.iter().map(|j| j.patterns[0].paths.len()).sum();
        for (j, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let err = (a - b) / b;
            worst = worst.max(err.abs());
            println!(
                "{tag} job {j}: trainlab {a:.6} s, SimGrid {b:.6} s, error {:+.4}%",
                100.0 * err
            );
            assert!(err.abs() < 0.01, "{tag} job {j}: trainlab {a} s vs SimGrid {b} s");
        }
        let sg = v["run_s"].as_f64().unwrap() + v["build_s"].as_f64().unwrap();
        let ratio = sg / walls[2];
        ratios.push(ratio);
        println!(
            "{tag}: {flows} flows per step; wall clock trainlab {:.3} ms (median of 5), SimGrid {:.1} ms \
             (build {:.1} + run {:.1}); SimGrid / trainlab = {ratio:.0}x",
            walls[2] * 1e3,
            sg * 1e3,
            v["build_s"].as_f64().unwrap() * 1e3,
            v["run_s"].as_f64().unwrap() * 1e3,
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "worst |error| {:.4}% over {} cases; speed ratio SimGrid / trainlab: median {:.0}x, min {:.0}x",
        100.0 * worst,
        ratios.len(),
        ratios[ratios.len() / 2],
        ratios[0]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_exported_path_is_a_chain_of_links_from_host_to_host() {
    for (tag, body) in cases() {
        let w = fabric(tag, &body);
        let case = flow_case(&w, Seed(3)).unwrap();
        let ends: std::collections::HashMap<u32, (String, String)> =
            case.ends.iter().map(|(l, a, b)| (*l, (a.clone(), b.clone()))).collect();
        for job in &case.jobs {
            for pat in &job.patterns {
                for path in &pat.paths {
                    let hops: Vec<&(String, String)> = path.iter().map(|l| &ends[l]).collect();
                    assert!(
                        hops[0].0.starts_with("host") && hops.last().unwrap().1.starts_with("host"),
                        "{tag}"
                    );
                    assert_ne!(hops[0].0, hops.last().unwrap().1, "{tag}: a flow to itself");
                    for pair in hops.windows(2) {
                        assert_eq!(pair[0].1, pair[1].0, "{tag}: {path:?} is not a chain");
                    }
                }
            }
        }
    }
}

/// The ns-3 peer, compiled once into the test's scratch directory.
fn ns3_binary() -> Result<std::path::PathBuf, String> {
    let ok = Command::new("pkg-config")
        .args(["--exists", "ns3-core"])
        .status()
        .map_err(|e| format!("pkg-config not runnable: {e}"))?;
    if !ok.success() {
        return Err("ns-3 development files not found (pkg-config ns3-core); install Debian's libns3-dev".into());
    }
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/peers/ns3_fabric.cc");
    let text = std::fs::read(src).unwrap();
    let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ns3_fabric-{hash:016x}"));
    if out.exists() {
        return Ok(out);
    }
    let cflags = Command::new("pkg-config")
        .args(["--cflags", "ns3-core"])
        .output()
        .unwrap();
    let mut cmd = Command::new("g++");
    cmd.args(["-O2", "-std=c++17", "-o"]).arg(&out).arg(src);
    cmd.args(String::from_utf8_lossy(&cflags.stdout).split_whitespace());
    // The modules it uses, named directly: pkg-config's --libs also lists GSL's development symlinks, which the
    // runtime packages do not install.
    for m in [
        "applications",
        "bridge",
        "core",
        "internet",
        "network",
        "point-to-point",
        "stats",
        "traffic-control",
    ] {
        cmd.arg(format!("-lns3-{m}"));
    }
    let o = cmd.output().map_err(|e| format!("g++ not runnable: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "compiling the ns-3 peer failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(out)
}

/// Runs one step pattern of `case` in ns-3: (completion time of the step, wall-clock seconds).
fn ns3_step(bin: &std::path::Path, case: &trainlab_sim::fabric::FlowCase, latency_s: f64, tag: &str) -> (f64, f64) {
    let pat = &case.jobs[0].patterns[0];
    let mut text = format!(
        "rate_bps {}\ndelay_s {latency_s}\nlinks {}\n",
        case.link_bytes_per_s * 8.0,
        case.ends.len()
    );
    for (l, a, b) in &case.ends {
        text += &format!("{l} {a} {b}\n");
    }
    text += &format!("flows {}\n", pat.paths.len());
    for p in &pat.paths {
        text += &format!("{} {}", pat.bytes.round() as u64, p.len());
        for l in p {
            text += &format!(" {l}");
        }
        text += "\n";
    }
    // Kept in the test's scratch directory, to be rerun by hand.
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ns3-case-{tag}.txt"));
    std::fs::write(&file, text).unwrap();
    let o = Command::new(bin).arg(&file).output().unwrap();
    assert!(o.status.success(), "{tag}: {}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let mut step = 0.0f64;
    let mut wall = 0.0;
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["flow", _, t] => step = step.max(t.parse().unwrap()),
            ["wall", t] => wall = t.parse().unwrap(),
            _ => {}
        }
    }
    (step, wall)
}

#[test]
fn ns3_shows_the_same_ecmp_collision_slowdown_within_10_percent() {
    let bin = match ns3_binary() {
        Ok(b) => b,
        Err(why) => {
            skip_unless_required(&why);
            return;
        }
    };
    // 16 hosts on 4 leaves and 4 spines, one NIC and port each, the ring ordered across leaves so every flow goes
    // up to a spine: 16 flows on 16 uplinks, placed by ECMP or by the planner.
    let order: Vec<String> = (0..16).map(|i| ((i % 4) * 4 + i / 4).to_string()).collect();
    let topo = TWO_TIER
        .replace("nics_per_host = 2", "nics_per_host = 1")
        .replace("gpus_per_host = 8", "gpus_per_host = 1");
    let ring = format!(
        "[[jobs]]\nname = \"ring\"\nplacement = {{ hosts = [{}] }}\ncollective = \"all_reduce\"\nbytes = {}\n",
        order.join(", "),
        256u64 << 20
    );
    let planned = fabric("ns3-planned", &format!("routing = \"planned\"\n{topo}{ring}"));
    let ecmp = fabric("ns3-ecmp", &format!("routing = \"ecmp\"\n{topo}{ring}"));
    let latency = 1e-6;
    let steps = planned.jobs[0].steps(&planned.shape().unwrap()) as f64;
    // The ideal: one flow alone on its path (trainlab: bytes over the link rate plus the path latency, which is also
    // its planned step; ns-3: that flow's TCP transfer alone, headers and slow start included).
    let planned_case = flow_case(&planned, Seed(1)).unwrap();
    let mut alone = planned_case.clone();
    alone.jobs[0].patterns[0].paths.truncate(1);
    let (ns_ideal, _) = ns3_step(&bin, &alone, latency, "alone");
    let (ns_planned, _) = ns3_step(&bin, &planned_case, latency, "planned");
    let ours_ideal = simulate(&planned, Seed(1)).unwrap().times_s[0] / steps;
    println!(
        "one ring step of 16 MiB flows: ideal trainlab {:.1} us, ns-3 {:.1} us ({:+.1}%: TCP/IP headers, slow start); \
         planned paths: ns-3 {:.1} us ({:+.1}% over its ideal: ACKs queue behind the reverse direction's data, a \
         packet-level effect the flow model does not have)",
        ours_ideal * 1e6,
        ns_ideal * 1e6,
        100.0 * (ns_ideal / ours_ideal - 1.0),
        ns_planned * 1e6,
        100.0 * (ns_planned / ns_ideal - 1.0)
    );
    let mut compared = 0;
    for s in 1..=4u64 {
        let t = Instant::now();
        let ours = simulate(&ecmp, Seed(s)).unwrap().times_s[0] / steps;
        let our_wall = t.elapsed().as_secs_f64();
        let (ns, wall) = ns3_step(&bin, &flow_case(&ecmp, Seed(s)).unwrap(), latency, &format!("ecmp{s}"));
        let (ours_slow, ns_slow) = (ours / ours_ideal, ns / ns_ideal);
        let err = ns_slow / ours_slow - 1.0;
        println!(
            "ECMP draw {s}: slowdown vs ideal trainlab {ours_slow:.3}, ns-3 {ns_slow:.3} ({:+.1}%); wall clock \
             trainlab {:.3} ms (the whole all-reduce), ns-3 {:.0} ms (one step): {:.0}x",
            100.0 * err,
            our_wall * 1e3,
            wall * 1e3,
            wall / our_wall
        );
        assert!(
            err.abs() < 0.10,
            "draw {s}: trainlab slowdown {ours_slow} vs ns-3 {ns_slow}"
        );
        if ours_slow > 1.2 {
            compared += 1;
        }
    }
    assert!(
        compared >= 2,
        "too few hash draws collide to test the slowdown ({compared})"
    );
}
