//! The flow-level fabric simulator against a peer (issue 10): SimGrid's flow model (Debian `python3-simgrid`, run by
//! `scripts/peers/simgrid_fabric.py`) runs the very flows trainlab routes (`trainlab_sim::fabric::flow_case`: same
//! links, paths, sizes and step latencies) and must give every job's completion time within 1%. The cases cover
//! 2- and 3-tier trees, ECMP and planned paths, bonded ports, oversubscription, a failed link, all-to-all's many
//! patterns and two jobs sharing the fabric with different step lengths (flows starting and ending at different
//! times). Each case also prints both simulators' wall-clock times and their ratio (`scripts/bench-peers.sh`).
//!
//! Without SimGrid the test prints why and passes, unless `TRAINLAB_PEERS_REQUIRED` is set (`.ci/run` installs the
//! package as root and sets it).
use std::process::Command;
use std::time::Instant;
use trainlab_core::Seed;
use trainlab_core::workloads::Fabric;
use trainlab_sim::fabric::{flow_case, simulate};

const PYTHON: &str = "/usr/bin/python3";

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
        assert!(
            std::env::var_os("TRAINLAB_PEERS_REQUIRED").is_none(),
            "TRAINLAB_PEERS_REQUIRED is set but SimGrid is missing: {why}"
        );
        eprintln!("skipped: {why}");
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
