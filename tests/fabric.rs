//! End-to-end tests of the `fabric` kind through the binary: bad input exits 2 naming the field, the C4P scenarios
//! run and compare.
mod common;
use common::*;
use std::path::PathBuf;

fn base() -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/c4p-link-failure.toml")).unwrap()
}

#[test]
fn bad_fabric_input_exits_2_with_the_field_path() {
    let b = base();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "nowhere",
            b.replacen("b = \"spine0\"\nindex = 0", "b = \"core9\"\nindex = 0", 1),
            "workload.failed_links[0].b",
        ),
        (
            "no-node",
            b.replacen("a = \"leaf7\"", "a = \"leaf99\"", 1),
            "workload.failed_links[0].a",
        ),
        (
            "zero-gbps",
            b.replace("link_gbps = 200.0", "link_gbps = 0.0"),
            "workload.topology.link_gbps",
        ),
        (
            "negative-gbps",
            b.replace("link_gbps = 200.0", "link_gbps = -200.0"),
            "workload.topology.link_gbps",
        ),
        (
            "too-many-ranks",
            b.replace(
                "placement = { first = 0, count = 64 }",
                "placement = { first = 100, count = 64 }",
            ),
            "workload.jobs[0].placement.count",
        ),
        (
            "routing",
            b.replace("routing = \"ecmp\"", "routing = \"random\""),
            "workload.routing",
        ),
        (
            "unknown-field",
            b.replace("ports_per_nic = 2", "ports_per_nic = 2\nbonding = true"),
            "bonding",
        ),
    ];
    for (tag, text, field) in cases {
        assert_ne!(text, b, "{tag}: the mutation did not apply");
        let p = scenario_file(tag, &text);
        for args in [vec!["run", "--backend", "flow_sim"], vec!["compare"]] {
            let o = bin().args(&args).arg(&p).output().unwrap();
            let e = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{tag} {args:?}: {e}");
            assert!(e.contains(field), "{tag}: {field} not in: {e}");
            assert!(!e.contains("panicked"), "{tag}: {e}");
        }
    }
}

#[test]
fn c4p_scenarios_run_and_compare() {
    let o = bin()
        .args(["run", "c4p-512", "--backend", "analytical"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = bin()
        .args(["compare", "c4p-link-failure-planned", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = v.to_string();
    assert!(s.contains("flow_sim") && s.contains("slowdown"), "{s}");
}

fn step_time(args: &[&str]) -> f64 {
    let o = bin().args(args).args(["--json"]).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The answer says which network timed it.
    let net = args
        .iter()
        .position(|a| *a == "--network")
        .map_or("alpha-beta", |i| args[i + 1]);
    assert_eq!(v["network"], net, "{args:?}");
    v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "step_time")
        .and_then(|m| m["value"].as_f64())
        .unwrap()
}

#[test]
fn network_flow_times_dense_training_and_is_refused_where_unused() {
    for backend in ["analytical", "op_sim"] {
        let run = |net: &str| step_time(&["run", "llama2-70b-h100", "--backend", backend, "--network", net]);
        let (ab, planned, ecmp) = (run("alpha-beta"), run("flow-planned"), run("flow-ecmp"));
        // Planned paths on the 1:1 fabric are the alpha-beta ring; ECMP collisions only add time.
        assert!(
            (planned - ab).abs() / ab < 0.01,
            "{backend}: planned {planned} vs alpha-beta {ab}"
        );
        assert!(ecmp >= ab * 0.999, "{backend}: ECMP {ecmp} below alpha-beta {ab}");
    }
    let o = bin()
        .args(["run", "gemm-cpu", "--backend", "roofline", "--network", "flow-ecmp"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--network"), "{}", stderr(&o));
}
