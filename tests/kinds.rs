//! The kind table: every kind declared once and consistent, studies over any kind, profiles checked per kind.
mod common;
use common::*;
use std::path::Path;
use trainlab::kinds::{self, KINDS, Opts, Request};
use trainlab::profiles::Profiles;
use trainlab::study;
use trainlab_core::{Fidelity, RunCtx, Seed};
use trainlab_datasets::scenario::{EMBEDDED, parse};

#[test]
fn table_is_consistent() {
    let mut seen = std::collections::HashSet::new();
    for k in KINDS {
        assert!(seen.insert(k.name()), "kind {} declared twice", k.name());
        let b = k.backends(&Opts::default()).unwrap();
        assert!(!b.is_empty(), "{}", k.name());
        // Fidelity order: analytical, then simulated, then measured.
        assert!(
            b.windows(2).all(|w| w[0].fidelity <= w[1].fidelity),
            "{}: {b:?}",
            k.name()
        );
        for r in k.reference() {
            assert!(
                b.iter().any(|x| x.name == *r),
                "{}: reference {r} is not a backend",
                k.name()
            );
        }
        if let Some(c) = k.calibration() {
            assert!(
                k.reads().contains(&c.profile_kind()),
                "{} must read what it calibrates",
                k.name()
            );
            assert!(b.iter().any(|x| x.fidelity == Fidelity::Measured), "{}", k.name());
        }
    }
    // Every embedded scenario is of a known kind (or a study), and every kind is found by name.
    for (name, text) in EMBEDDED {
        let sc = parse(text, name).unwrap();
        if sc.kind != "plan" && sc.kind != "study" {
            kinds::find(&sc.kind).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    let e = kinds::find("nope").err().unwrap().to_string();
    assert!(e.contains("moe_layer") && e.contains("training_job"), "{e}");
}

#[test]
fn every_embedded_single_workload_scenario_validates() {
    for (name, text) in EMBEDDED {
        let sc = parse(text, name).unwrap();
        if sc.kind == "plan" || sc.kind == "study" {
            let s = study::load(&sc, &Opts::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!s.cases.is_empty(), "{name}");
            continue;
        }
        kinds::find(&sc.kind)
            .unwrap()
            .workload_json(&sc)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

fn study_text(base: &str, grid: &str) -> String {
    format!("name = \"t\"\nkind = \"study\"\nseed = 3\n[study]\nbase = \"{base}\"\n[study.grid]\n{grid}\n")
}

#[test]
fn a_study_over_moe_layer_puts_parameters_in_columns() {
    let sc = parse(
        &study_text(
            "moe-switch-capacity",
            "capacity_factor = [1.0, 2.0]\nexperts = [64, 128]",
        ),
        "t.toml",
    )
    .unwrap();
    let opts = Opts {
        quick: true,
        ..Default::default()
    };
    let s = study::load(&sc, &opts).unwrap();
    assert_eq!(s.cases.len(), 4);
    assert_eq!(s.backends, ["closed_form", "monte_carlo"]);
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let res = study::run_cases(&s, &s.cases, &opts, &cancel, &|_| {});
    let recs: Vec<_> = res.iter().flat_map(|r| r.records("t", "moe_layer", 3)).collect();
    let drop_at = |cf: f64| {
        recs.iter()
            .find(|r| {
                r.backend == "closed_form"
                    && r.metric == "drop_fraction"
                    && study::num(study::param(r, "capacity_factor")) == Some(cf)
                    && study::num(study::param(r, "experts")) == Some(128.0)
            })
            .map(|r| r.value)
            .unwrap()
    };
    // More capacity, fewer drops: the parameter really reached the workload.
    assert!(drop_at(1.0) > drop_at(2.0), "{} {}", drop_at(1.0), drop_at(2.0));
    assert!(recs.iter().all(|r| r.params.len() == 2));
}

#[test]
fn a_study_over_training_job_runs_and_bad_paths_name_the_field() {
    let sc = parse(&study_text("c4-production", "gpus = [256, 1024]"), "t.toml").unwrap();
    let opts = Opts {
        quick: true,
        ..Default::default()
    };
    let s = study::load(&sc, &opts).unwrap();
    assert_eq!(s.kind.name(), "training_job");
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let res = study::run_cases(&s, &s.cases, &opts, &cancel, &|_| {});
    assert!(
        res.iter().all(|r| r.failure().is_none()),
        "{:?}",
        res.iter().map(|r| r.failure()).collect::<Vec<_>>()
    );
    let bad = parse(&study_text("c4-production", "gpuz = [1]"), "t.toml").unwrap();
    let s = study::load(&bad, &opts).unwrap();
    let res = study::run_cases(&s, &s.cases, &opts, &cancel, &|_| {});
    let why = res[0].failure().unwrap();
    assert!(why.contains("gpuz"), "{why}");
    let bad = parse(&study_text("c4-production", "gpus = 5"), "t.toml").unwrap();
    let e = study::load(&bad, &opts).err().unwrap().to_string();
    assert!(e.contains("study.grid.gpus"), "{e}");
}

#[test]
fn a_profile_of_another_kind_is_refused() {
    let d = tmpdir("prof");
    let p = d.join("profile-moe_layer-cpu.toml");
    std::fs::write(
        &p,
        "kind = \"moe_layer\"\nformat = 2\n[provenance]\ndate = \"x\"\ndevice = \"x\"\ncommand = \"x\"\nversion = \"x\"\n\
         [params]\ndevice = \"cpu\"\n",
    )
    .unwrap();
    let o = run(bin().args(["compare", "allreduce-h100", "--profile"]).arg(&p));
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("moe_layer") && err.contains("collective"), "{err}");
    // A stale profile (an older format) is refused with the fix.
    std::fs::write(&p, "backend = \"cpu\"\ngemm_half_dim = 1.0\n").unwrap();
    let o = run(bin().args(["compare", "gemm-cpu", "--profile"]).arg(&p));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("format"));
    // A directory with nothing that applies is refused too.
    let o = run(bin().args(["compare", "mm1", "--profile"]).arg(&d));
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn compare_errors_only_within_one_workload() {
    let _timing = timing_lock();
    // The CPU run of a GPU layer answers another workload; its group carries its own reference.
    let sc = trainlab_datasets::scenario::load("moe-switch-capacity").unwrap();
    let k = kinds::find(&sc.kind).unwrap();
    let opts = Opts {
        quick: true,
        profiles: Profiles::none(),
        network: Default::default(),
    };
    let mut ctx = RunCtx::new(Seed(1));
    let only = ["closed_form".to_string(), "cpu".to_string()];
    let req = Request {
        only: Some(&only),
        follow_scaled: false,
        label: "x",
    };
    let groups = k.answer(&sc, &opts, &req, &mut ctx).unwrap();
    assert_eq!(groups.len(), 2, "the CPU run answers the layer on the cpu device");
    assert_eq!(groups[1].scaled_by.as_deref(), Some("cpu"));
    assert!(groups[0].answers.iter().all(|a| a.backend == "closed_form"));
    let m = &groups[0].answers[0].result.as_ref().unwrap()[0];
    assert!(groups[0].versus_reference("closed_form", m).is_none());
}

#[test]
fn calibrated_moe_profile_predicts_a_held_out_layer_better() {
    let _timing = timing_lock();
    let d = tmpdir("moecal");
    let o = run(bin()
        .args(["calibrate", "--workload", "moe_layer", "--quick", "--json", "--out"])
        .arg(&d));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let compare = |profile: Option<&Path>| -> (f64, f64) {
        let mut c = bin();
        c.args(["compare", "moe-cpu-heldout", "--quick", "--json"]);
        if let Some(p) = profile {
            c.arg("--profile").arg(p);
        }
        let o = run(&mut c);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let g = &v["workloads"][0];
        let step = |b: &str| {
            g["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["backend"] == b)
                .and_then(|x| {
                    x["metrics"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|m| m["metric"] == "step_time")
                })
                .and_then(|m| m["value"].as_f64())
                .unwrap()
        };
        (step("monte_carlo"), step("cpu"))
    };
    let (uncal, measured_a) = compare(None);
    let (cal, measured_b) = compare(Some(&d));
    assert_ne!(uncal, cal, "the profile must change the prediction");
    let measured = 0.5 * (measured_a + measured_b);
    let (e_cal, e_uncal) = ((cal - measured).abs() / measured, (uncal - measured).abs() / measured);
    println!(
        "held-out layer: measured {measured:.4e} s, calibrated {cal:.4e} ({e_cal:.3}), uncalibrated {uncal:.4e} ({e_uncal:.3})"
    );
    assert!(e_cal < e_uncal, "calibrated {e_cal} vs uncalibrated {e_uncal}");
}

#[test]
fn calibrated_training_job_profile_is_used_and_beats_the_nominal_timing() {
    let _timing = timing_lock();
    let d = tmpdir("c4cal");
    let o = run(bin()
        .args(["calibrate", "--workload", "training_job", "--quick", "--json", "--out"])
        .arg(&d));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The held-out run (another schedule, not in the fit) is in the profile with both predictions. Whether the
    // calibrated one is closer is asserted on recorded runs (`executors` test
    // `calibrated_beats_uncalibrated_on_held_out_run`), not here: a `--quick` real calibration on a loaded 2-core
    // machine once fitted a step period far from the held-out run's (calibrated ETTR 0.470, uncalibrated 0.635,
    // measured 0.806 at load 9).
    let ettr = v["held_out"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"] == "ettr")
        .unwrap();
    let (m, c, u) = (
        ettr["measured"].as_f64().unwrap(),
        ettr["calibrated"].as_f64().unwrap(),
        ettr["uncalibrated"].as_f64().unwrap(),
    );
    println!("held-out ETTR: measured {m:.3}, calibrated {c:.3}, uncalibrated {u:.3}");
    assert!((0.0..=1.0).contains(&m) && (0.0..=1.0).contains(&c) && (0.0..=1.0).contains(&u));
    // `compare --profile` feeds the fitted timing to the closed form and the simulator of a scheduled job.
    let ettr_of = |profile: Option<&Path>| -> f64 {
        let mut c = bin();
        c.args(["compare", "c4-schedule-small", "--quick", "--json"]);
        if let Some(p) = profile {
            c.arg("--profile").arg(p);
        }
        let o = run(&mut c);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let b = &v["workloads"][0]["backends"][0];
        assert_eq!(b["backend"], "young-daly");
        if profile.is_some() {
            assert_eq!(b["profile"], "training_job");
        }
        b["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["metric"] == "ettr")
            .unwrap()["value"]
            .as_f64()
            .unwrap()
    };
    assert_ne!(ettr_of(None), ettr_of(Some(&d)));
}

#[test]
fn calibrated_cpt_law_predicts_a_run_outside_its_grid() {
    let _timing = timing_lock();
    let d = tmpdir("cptcal");
    let o = run(bin()
        .args(["calibrate", "--workload", "cpt_run", "--quick", "--json", "--out"])
        .arg(&d));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!v["held_out"].as_array().unwrap().is_empty(), "{v}");
    // Without a profile the law has no answer (it exists only as fitted), and says how to get one.
    let o = run(bin().args(["run", "cpt-heldout", "--backend", "dcpt_law"]));
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("calibrate --workload cpt_run"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // With it, the law and the real run answer the same workload; the law's error is computed against the run.
    let o = run(bin().args(["compare", "cpt-heldout", "--json", "--profile"]).arg(&d));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let g = &v["workloads"][0];
    let value = |b: &str, metric: &str| {
        g["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["backend"] == b)
            .and_then(|x| x["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == metric))
            .and_then(|m| m["value"].as_f64())
            .unwrap_or_else(|| panic!("{b} {metric} in {g}"))
    };
    for metric in ["general_loss", "domain_loss"] {
        let (law, cpu) = (value("dcpt_law", metric), value("cpu", metric));
        let e = (law - cpu).abs() / cpu;
        println!(
            "cpt-heldout {metric}: law {law:.4}, measured {cpu:.4}, error {:.2}%",
            100.0 * e
        );
        // A quick fit (15 runs, widths 4 to 16) of a width (24) and a share (0.35) it never saw: within 5% (it was
        // 1.1% when written; the full calibration's held-out error is in the README).
        assert!(e < 0.05, "{metric}: law {law} vs measured {cpu}");
    }
}

#[test]
fn recorded_cpt_profile_reproduces_its_held_out_table() {
    use trainlab_core::Backend;
    use trainlab_models::cpt::{CptLaw, CptLawParams};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/calibration/cpt-cpu/profile-cpt_run-cpu.toml");
    let profiles = Profiles::load(&path).unwrap();
    let p = profiles
        .get_one::<CptLawParams>("cpt_run", |_| true)
        .unwrap()
        .expect("the committed cpt_run profile");
    assert!(p.held_out.len() >= 8, "{:?}", p.held_out);
    let mut law = CptLaw {
        fitted: Some(p.params.clone()),
    };
    let mut worst = 0.0f64;
    for h in &p.held_out {
        // Cases read "H=8 r=0.3 [held-out]": the final point (all CPT tokens) of that run.
        let mut it = h.case.split_whitespace();
        let hidden: u64 = it.next().unwrap().trim_start_matches("H=").parse().unwrap();
        let ratio: f64 = it.next().unwrap().trim_start_matches("r=").parse().unwrap();
        let w = trainlab::kinds::cpt::default_run(hidden, ratio, p.params.fitted_tokens.1);
        let o = law.run(&w, &mut RunCtx::new(Seed(1))).unwrap();
        let predicted = if h.metric == "general_loss" {
            o.general_loss.0
        } else {
            o.domain_loss.0
        };
        assert!(
            (predicted - h.calibrated).abs() < 1e-9,
            "{}: {predicted} vs {}",
            h.case,
            h.calibrated
        );
        worst = worst.max((predicted - h.measured).abs() / h.measured);
    }
    println!("committed cpt_run profile: worst held-out error {:.2}%", 100.0 * worst);
    assert!(worst < 0.02, "worst held-out error {worst}");
}

#[test]
fn replicas_with_common_seeds_share_seeds_across_cases() {
    let text = "name = \"t\"\nkind = \"study\"\nseed = 3\n[study]\nbase = \"moe-switch-capacity\"\nreplicas = 2\n\
                common_seed = true\n[study.grid]\ncapacity_factor = [1.0, 2.0]\n";
    let sc = parse(text, "t.toml").unwrap();
    let s = study::load(&sc, &Opts::default()).unwrap();
    assert_eq!(s.cases.len(), 4);
    let seed = |cf: f64, r: f64| {
        s.cases
            .iter()
            .find(|c| {
                c.params
                    .iter()
                    .any(|(p, v)| p == "capacity_factor" && *v == trainlab_core::Param::Num(cf))
                    && c.params
                        .iter()
                        .any(|(p, v)| p == "replica" && *v == trainlab_core::Param::Num(r))
            })
            .map(|c| c.scenario.seed)
            .unwrap()
    };
    assert_eq!(seed(1.0, 0.0), seed(2.0, 0.0));
    assert_eq!(seed(1.0, 1.0), seed(2.0, 1.0));
    assert_ne!(seed(1.0, 0.0), seed(1.0, 1.0));
    // Without common_seed every case has its own.
    let sc = parse(&text.replace("common_seed = true", "common_seed = false"), "t.toml").unwrap();
    let s = study::load(&sc, &Opts::default()).unwrap();
    let mut seeds: Vec<_> = s.cases.iter().map(|c| c.scenario.seed.0).collect();
    seeds.dedup();
    assert_eq!(seeds.len(), 4);
}

#[test]
fn distillation_bad_input_exits_2_with_the_field() {
    let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/ddk-tiny.toml")).unwrap();
    let d = tmpdir("ddkbad");
    for (from, to, field) in [
        (
            "schedule = { ddk = { k = 25, alpha = 0.5 } }",
            "schedule = { static = [0.5, 0.5, 0.5, 0.0, 0.0, 0.0] }",
            "workload.schedule.static",
        ),
        ("alpha = 0.5 }", "alpha = 1.5 }", "workload.schedule.ddk.alpha"),
        ("k = 25,", "k = 0,", "workload.schedule.ddk.k"),
        (
            "tokens = 3000, zipf = 1.0",
            "tokens = 0, zipf = 1.0",
            "workload.domains[3].tokens",
        ),
    ] {
        assert!(base.contains(from), "{from}");
        let p = d.join("bad.toml");
        std::fs::write(&p, base.replace(from, to)).unwrap();
        let o = run(bin().args(["run", "--backend", "cost_model"]).arg(&p));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(field), "{field}: {err}");
    }
}

#[test]
fn a_device_profile_with_a_bad_rate_is_refused() {
    let d = tmpdir("badrate");
    let p = d.join("profile-device-cpu.toml");
    let text = |rate: &str, bw: &str| {
        format!(
            "kind = \"device\"\nformat = 2\n[provenance]\ndate = \"x\"\ndevice = \"x\"\ncommand = \"x\"\nversion = \"x\"\n\
             [params]\nbackend = \"cpu\"\ngemm_half_dim = 64.0\nlaunch_overhead_s = 1e-6\nmem_bw_bytes_per_s = {bw}\n\
             [params.gemm_rate]\nfp32 = {rate}\n[params.provenance]\ndate = \"x\"\ndevice = \"x\"\ncommand = \"x\"\n\
             version = \"x\"\n"
        )
    };
    std::fs::write(&p, text("1e11", "2e10")).unwrap();
    let o = run(bin()
        .args(["run", "gemm-cpu", "--backend", "roofline", "--profile"])
        .arg(&p));
    assert!(
        o.status.success(),
        "a sane profile is used: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for (rate, bw, field) in [
        ("nan", "2e10", "profile.params.gemm_rate.fp32"),
        ("-1e11", "2e10", "profile.params.gemm_rate.fp32"),
        ("1e11", "0.0", "profile.params.mem_bw_bytes_per_s"),
    ] {
        std::fs::write(&p, text(rate, bw)).unwrap();
        let o = run(bin()
            .args(["run", "gemm-cpu", "--backend", "roofline", "--profile"])
            .arg(&p));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(field), "{field}: {err}");
    }
}
