//! End-to-end tests of the `trainlab` binary: outputs, determinism, sharding, and bad input (exit code 2).
mod common;
use common::*;
use std::path::Path;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn scenarios_lists_the_embedded_ones() {
    let o = run(bin().args(["scenarios", "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"default-plan"), "{names:?}");
}

#[test]
fn bad_input_exits_2_and_names_the_cause() {
    let cases = [
        (fixture("unknown-field.toml"), "learning_rate"),
        (fixture("negative-gpus.toml"), "workload.cluster.nodes"),
        (fixture("fits-nowhere.toml"), "fits in no parallel configuration"),
        ("no/such/file.toml".to_string(), "no/such/file.toml"),
    ];
    for (path, needle) in cases {
        let o = run(bin().args(["compare", &path]));
        assert_eq!(o.status.code(), Some(2), "{path}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(needle), "{path}: expected `{needle}` in: {e}");
        assert!(!e.contains("panicked"), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "one-line cause expected: {e}");
    }
    let o = run(bin().args(["plan", "--shard", "3/2"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // The fault-injection calibration has no CUDA variant: refused before anything runs.
    let o = run(bin().args(["calibrate", "--workload", "training-job", "--backend", "cuda"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("CPU only"), "{}", stderr(&o));
}

#[test]
fn plan_writes_report_tables_and_charts_deterministically() {
    let a = tmpdir("plan-a");
    let b = tmpdir("plan-b");
    let o = run(bin()
        .args(["plan", &fixture("small-plan.toml"), "--out"])
        .arg(&a)
        .env("RAYON_NUM_THREADS", "1"));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(bin()
        .args(["plan", &fixture("small-plan.toml"), "--out"])
        .arg(&b)
        .env("RAYON_NUM_THREADS", "2"));
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "report.html",
        "records.parquet",
        "records.csv",
        "days.png",
        "days.svg",
        "mfu.svg",
        "gpu_hours.png",
    ] {
        let x = std::fs::read(a.join(f)).unwrap_or_else(|_| panic!("missing {f}"));
        assert!(!x.is_empty(), "{f} empty");
        if !f.ends_with(".png") {
            assert_eq!(x, std::fs::read(b.join(f)).unwrap(), "{f} differs across thread counts");
        }
    }
    let html = std::fs::read_to_string(a.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("gpt-13b@256xa100-80gb"));
}

#[test]
fn shards_merge_to_the_single_run() {
    let full = tmpdir("shard-full");
    let parts = tmpdir("shard-parts");
    let o = run(bin().args(["plan", &fixture("small-plan.toml"), "--out"]).arg(&full));
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 0..3 {
        let o = run(bin()
            .args([
                "plan",
                &fixture("small-plan.toml"),
                "--shard",
                &format!("{i}/3"),
                "--out",
            ])
            .arg(&parts));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let merged = tmpdir("shard-merged");
    let o = run(bin().arg("merge").arg(&parts).arg("--out").arg(&merged));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(full.join("records.csv")).unwrap(),
        std::fs::read(merged.join("records.csv")).unwrap()
    );
    assert_eq!(
        std::fs::read(full.join("records.parquet")).unwrap(),
        std::fs::read(merged.join("records.parquet")).unwrap()
    );
    // A missing shard is refused.
    std::fs::remove_file(parts.join("records-shard-1-of-3.parquet")).unwrap();
    let o = run(bin().arg("merge").arg(&parts));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// Writes a study over `allreduce-h100` named `name` with `ranks` as its grid, returns its path.
fn study_file(dir: &Path, file: &str, name: &str, ranks: &str) -> String {
    let p = dir.join(file);
    std::fs::write(
        &p,
        format!("name = \"{name}\"\nkind = \"study\"\nseed = 5\n[study]\nbase = \"allreduce-h100\"\n[study.grid]\nranks = [{ranks}]\n"),
    )
    .unwrap();
    p.display().to_string()
}

fn shard(study: &str, i: usize, n: usize, out: &Path) {
    let o = run(bin()
        .args(["plan", study, "--shard", &format!("{i}/{n}"), "--out"])
        .arg(out));
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn merge_rejects_stray_renamed_mixed_and_truncated_shards() {
    let src = tmpdir("merge-src");
    let a = study_file(&src, "a.toml", "alpha", "2, 4, 8, 16");
    let b = study_file(&src, "b.toml", "beta", "2, 4, 8, 16");
    let a2 = study_file(&src, "a2.toml", "alpha", "2, 4, 8, 32");
    let good = tmpdir("merge-good");
    for i in 0..2 {
        shard(&a, i, 2, &good);
    }
    let o = run(bin().arg("merge").arg(&good));
    assert!(o.status.success(), "{}", stderr(&o));
    let copy = |tag: &str| {
        let d = tmpdir(tag);
        for e in std::fs::read_dir(&good).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with("records-shard-") {
                std::fs::copy(&p, d.join(p.file_name().unwrap())).unwrap();
            }
        }
        std::fs::copy(good.join("study.json"), d.join("study.json")).unwrap();
        d
    };
    let refused = |d: &Path, why: &str| {
        let o = run(bin().arg("merge").arg(d));
        assert_eq!(o.status.code(), Some(2), "{why}: {}", stderr(&o));
        assert!(stderr(&o).contains(why), "{why}: {}", stderr(&o));
    };
    // A stray shard 7-of-2.
    let d = copy("merge-stray");
    for ext in ["parquet", "json"] {
        std::fs::copy(
            d.join(format!("records-shard-0-of-2.{ext}")),
            d.join(format!("records-shard-7-of-2.{ext}")),
        )
        .unwrap();
    }
    refused(&d, "stray shard");
    // Shard 0 copied over shard 1 (a duplicate under another name).
    let d = copy("merge-dup");
    for ext in ["parquet", "json"] {
        std::fs::copy(
            d.join(format!("records-shard-0-of-2.{ext}")),
            d.join(format!("records-shard-1-of-2.{ext}")),
        )
        .unwrap();
    }
    refused(&d, "describes shard 0/2");
    // Shard 1 of another study.
    let d = copy("merge-mixed");
    shard(&b, 1, 2, &d);
    refused(&d, "different studies");
    // Shard 1 of a study of the same name with other cases.
    let d = copy("merge-content");
    shard(&a2, 1, 2, &d);
    refused(&d, "different content");
    // A shard whose Parquet lost records.
    let d = copy("merge-truncated");
    let side = d.join("records-shard-1-of-2.json");
    let text = std::fs::read_to_string(&side).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n = v["records"].as_u64().unwrap();
    std::fs::write(
        &side,
        text.replace(&format!("\"records\": {n}"), &format!("\"records\": {}", n + 1)),
    )
    .unwrap();
    refused(&d, "truncated");
}

#[test]
fn compare_gemm_shows_analytical_and_measured() {
    let o = run(bin().args(["compare", "gemm-cpu", "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The workload asked (on the CPU) first; the CUDA run, if any, answers the GEMM on the GPU, in its own group.
    let g = &v["workloads"][0];
    let b = g["backends"].as_array().unwrap();
    let fid: Vec<&str> = b
        .iter()
        .filter(|x| x["error"].is_null())
        .map(|x| x["fidelity"].as_str().unwrap())
        .collect();
    assert!(fid.contains(&"analytical") && fid.contains(&"measured"), "{v}");
    assert_eq!(g["reference"], "cpu");
    assert!(g["scaled_by"].is_null());
}

#[test]
fn io_errors_print_their_cause_once() {
    // A missing scenario, a missing CSV for `fit` and a missing profile: each cause appears exactly once.
    let cases: [&[&str]; 3] = [
        &["compare", "no/such/scenario.toml"],
        &["fit", "dcpt", "no/such/runs.csv"],
        &[
            "run",
            "gemm-cpu",
            "--backend",
            "roofline",
            "--profile",
            "no/such/profile.toml",
        ],
    ];
    for args in cases {
        let o = run(bin().args(args));
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        let path = args.iter().find(|a| a.starts_with("no/such")).unwrap();
        assert!(e.contains(path), "{args:?}: {e}");
        // The OS message ("No such file or directory") or the loader's "not found": whichever, once.
        let cause = if e.contains("No such file") {
            "No such file"
        } else {
            "not found"
        };
        assert_eq!(e.matches(cause).count(), 1, "{args:?}: cause repeated: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{args:?}: {e}");
    }
}

#[test]
fn unknown_law_exits_2_with_the_known_names() {
    let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/calibration/dcpt-cpu/runs.csv");
    let o = run(bin().arg("fit").arg("NOPE").arg(&csv));
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("NOPE") && e.contains("chinchilla") && e.contains("dcpt-cross"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn missing_gated_ffn_is_named_with_the_fix() {
    let dir = tmpdir("gated");
    let path = dir.join("no-gated.toml");
    let text = std::fs::read_to_string(fixture("unknown-field.toml"))
        .unwrap()
        .replace("gated_ffn = true\n", "")
        .replace("learning_rate = 3e-4\n", "");
    std::fs::write(&path, text).unwrap();
    let o = run(bin().arg("compare").arg(&path));
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("workload.model") && e.contains("gated_ffn"), "{e}");
    assert!(
        e.contains("gated_ffn = true") && e.contains("gated_ffn = false"),
        "the fix: {e}"
    );
}

#[test]
fn error_messages_do_not_nest_backticks() {
    // A CSV cell that is not a number: the field path is plain, the value alone is quoted.
    let dir = tmpdir("quotes");
    let csv = dir.join("x.csv");
    std::fs::write(&csv, "N,D,r,loss\n1e6,2e9,0.5,abc\n").unwrap();
    let o = run(bin().arg("fit").arg("dcpt").arg(&csv));
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("line 2, column loss = `\"abc\"`"), "{e}");
    // No backtick-quoted span contains another quote of the same kind: spans alternate open/close cleanly.
    assert_eq!(e.matches('`').count() % 2, 0, "{e}");
}

#[test]
fn default_plan_answers_with_expected_downtime() {
    let out = tmpdir("default-downtime");
    let o = run(bin().args(["plan", "--out"]).arg(&out));
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("days incl. downtime c4d"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("records.csv")).unwrap();
    let value_of = |case: &str, backend: &str, metric: &str| -> f64 {
        csv.lines()
            .find(|l| l.contains(case) && l.contains(&format!(",{backend},")) && l.contains(&format!(",{metric},")))
            .and_then(|l| l.split(',').nth(7))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{case} {backend} {metric}"))
    };
    let value = |case: &str, metric: &str| value_of(case, "analytical", metric);
    // The simulator answers every case too (default-plan.toml's `backends`), in the table's last columns.
    assert!(
        stdout.contains("op_sim step (s)") && stdout.contains("op_sim layout"),
        "{stdout}"
    );
    for gpus in [1024, 2048, 4096, 8192, 16384] {
        for model in ["llama2-7b", "llama2-70b"] {
            let case = format!("{model}@{gpus}xh100-sxm");
            assert!(value_of(&case, "op_sim", "step_time") > 0.0, "{case}");
        }
    }
    // 16,384 GPUs under the Llama 3 failure rates: the baseline loses far more than C4D, and both stretch the run.
    let case = "llama2-70b@16384xh100-sxm";
    let (days, c4d, base) = (
        value(case, "train_days"),
        value(case, "days_with_downtime.c4d"),
        value(case, "days_with_downtime.baseline"),
    );
    assert!(days < c4d && c4d < base, "{days} {c4d} {base}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("days incl. downtime"),
        "report lacks the downtime columns"
    );
    // The report states its assumptions, a bottleneck per case and 95% intervals of the days with downtime.
    for needle in [
        "Assumptions",
        "global batch",
        "Poisson count",
        "bottleneck",
        "Pareto front",
    ] {
        assert!(html.contains(needle), "report lacks `{needle}`");
    }
    let ci = |metric: &str| -> (f64, f64) {
        let line = csv
            .lines()
            .find(|l| l.contains(case) && l.contains(&format!(",{metric},")))
            .unwrap();
        let cells: Vec<&str> = line.split(',').collect();
        (cells[8].parse().unwrap(), cells[9].parse().unwrap())
    };
    let (lo, hi) = ci("days_with_downtime.c4d");
    assert!(lo < c4d && c4d < hi && lo >= days, "{lo} {c4d} {hi}");
    // Step shares partition the step: they sum to 1.
    let shares: f64 = [
        "compute",
        "bubble",
        "tp_comm",
        "pp_comm",
        "other_comm",
        "dp_comm",
        "optimizer",
    ]
    .iter()
    .map(|s| value(case, &format!("step_share.{s}")))
    .sum();
    assert!((shares - 1.0).abs() < 1e-9, "{shares}");
}

#[test]
fn plan_backends_are_checked() {
    // `plan.backends` names dense_training backends and keeps the closed form, whose answers the table shows.
    let text = std::fs::read_to_string(fixture("small-plan.toml")).unwrap();
    for (backends, says) in [
        ("[\"op_sim\"]", "include \"analytical\""),
        ("[\"analytical\", \"des\"]", "op_sim"),
    ] {
        let study = common::scenario_file(
            "plan-backends-in",
            &text.replace("[plan]\n", &format!("[plan]\nbackends = {backends}\n")),
        );
        let o = run(bin()
            .arg("plan")
            .arg(&study)
            .arg("--out")
            .arg(tmpdir("plan-backends-out")));
        assert_eq!(o.status.code(), Some(2), "{backends}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("plan.backends") && e.contains(says), "{backends}: {e}");
    }
}

#[test]
fn infeasible_cases_are_listed_in_the_report() {
    // A 175B model on 8 A100s does not fit in memory; the 1.3B model does.
    let text = std::fs::read_to_string(fixture("small-plan.toml"))
        .unwrap()
        .replace("gpu_counts = [64, 128, 256]", "gpu_counts = [8, 256]")
        .replace(
            "name = \"gpt-13b\"\nlayers = 40\nhidden = 5120\nheads = 40\nffn_hidden = 20480",
            "name = \"gpt-175b\"\nlayers = 96\nhidden = 12288\nheads = 96\nffn_hidden = 49152",
        );
    let study = common::scenario_file("infeasible-plan", &text);
    let out = tmpdir("infeasible");
    let o = run(bin().arg("plan").arg(&study).arg("--out").arg(&out));
    assert!(o.status.success(), "{}", stderr(&o));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Cases without an answer (1)"), "no infeasible section");
    assert!(
        html.contains("gpt-175b@8xa100-80gb"),
        "the infeasible case is not named"
    );
}

#[test]
fn plan_mixture_without_bootstrap_replicates_prints_no_nan() {
    // The shipped D-CPT fit has no bootstrap replicates: the plan says there is no interval instead of `[NaN, NaN]`.
    let fit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/calibration/dcpt-cpu/fit.json");
    for usage in [
        ["--usage", "tradeoff", "--n", "1200", "--d", "1e5"],
        ["--usage", "limited-data", "--n", "1200", "--domain-tokens", "1e4"],
    ] {
        let o = common::bin()
            .arg("plan-mixture")
            .arg(&fit)
            .args(usage)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(!out.contains("NaN") && out.contains("no interval"), "{out}");
    }
}

#[test]
fn published_run_profiles_slow_the_dense_step_and_refuse_another_gpu() {
    // The published-run calibrations (`datasets/calibration/published-dense/`, written by `tests/validate_dense.rs`)
    // are device profiles `--profile` reads: the H100's sustained GEMM rate is below the datasheet's, so the same
    // scenario answers with a longer step; on an A100 cluster the H100's profile is refused, naming --profile.
    let h100 = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/calibration/published-dense/h100-sxm.toml");
    let step = |profile: Option<&Path>| {
        let mut cmd = bin();
        cmd.args(["run", "llama2-70b-h100", "--backend", "analytical", "--json"]);
        if let Some(p) = profile {
            cmd.arg("--profile").arg(p);
        }
        let o = run(&mut cmd);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["metrics"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == "step_time"))
            .and_then(|m| m["value"].as_f64())
            .unwrap_or_else(|| panic!("no step time in {v}"))
    };
    let (datasheet, calibrated) = (step(None), step(Some(&h100)));
    assert!(calibrated > 1.1 * datasheet, "{calibrated} vs {datasheet}");
    let o = run(bin()
        .args(["run", "megascale-175b", "--backend", "analytical", "--profile"])
        .arg(&h100));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("--profile") && e.contains("a100-80gb"), "{e}");
}
