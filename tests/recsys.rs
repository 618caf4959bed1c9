//! End-to-end tests of the `recsys_step` kind through the binary: bad input exits 2 naming the field path, the
//! PICASSO scenario and its ablation study run.
mod common;
use common::*;
use std::path::PathBuf;

fn base() -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/picasso-wdl.toml")).unwrap()
}

#[test]
fn bad_recsys_input_exits_2_with_the_field_path() {
    let b = base();
    // The scenario without its field groups (everything from the first [[workload.fields]] on).
    let no_fields = {
        let cut = b.find("[[workload.fields]]").unwrap();
        format!("{}fields = []\n", &b[..cut])
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("zero-fields", no_fields, "workload.fields"),
        (
            "zero-count",
            b.replacen("count = 200", "count = 0", 1),
            "workload.fields[0].count",
        ),
        (
            "zero-dim",
            b.replacen("dim = 16", "dim = 0", 1),
            "workload.fields[1].dim",
        ),
        (
            "ids-over-rows",
            b.replacen(
                "rows = 100000\ndim = 8\nids_per_sample = 1",
                "rows = 100\ndim = 8\nids_per_sample = 101",
                1,
            ),
            "workload.fields[0].ids_per_sample",
        ),
        (
            "cache-over-table",
            b.replace("fraction = 0.0", "fraction = 1.5"),
            "workload.cache.fraction",
        ),
        (
            "unknown-policy",
            b.replace("policy = \"static_topk\"", "policy = \"fifo\""),
            "workload.cache.policy",
        ),
        (
            "zero-streams",
            b.replace("streams = 1", "streams = 0"),
            "workload.streams",
        ),
        (
            "zero-width",
            b.replace("mlp = [1024, 512, 256, 1]", "mlp = [1024, 0, 1]"),
            "workload.mlp[1]",
        ),
        (
            "two-gpus",
            b.replace("gpus_per_node = 1", "gpus_per_node = 2"),
            "workload.cluster",
        ),
    ];
    for (tag, text, field) in cases {
        assert_ne!(text, b, "{tag}: the replacement did not apply");
        let p = scenario_file(tag, &text);
        let o = bin()
            .args(["run", &p.display().to_string(), "--backend", "kernel_des"])
            .output()
            .unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{tag}: {e}");
        assert!(e.contains(field), "{tag}: expected {field} in: {e}");
        assert!(!e.contains("panicked"), "{tag}: {e}");
    }
}

#[test]
fn picasso_scenario_compares_and_the_ablation_study_runs() {
    let o = bin().args(["compare", "picasso-wdl", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("kernel_des") && out.contains("cache_hit_rate"), "{out}");
    let dir = std::env::temp_dir().join(format!("trainlab-recsys-study-{}", std::process::id()));
    let o = bin()
        .args(["plan", "picasso-ablation-study", "--out", &dir.display().to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("records.parquet").exists());
}
