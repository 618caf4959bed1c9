//! The `contrastive_pretrain` kind through the binary: CLIP's published budgets (ViT-L/14, RN50x64), the
//! CLIP4Clip-style loader question, the calibration read back through `--profile`, and bad input exits 2 naming the
//! field.
mod common;
use common::*;

#[test]
fn clip_vit_l14_budget_is_within_a_quarter_of_the_published_days() {
    let _serial = timing_lock();
    let o = run(bin().args(["run", "clip-vit-l14", "--backend", "analytical", "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let days = json_metric(&o.stdout, "days");
    // Published: 12 days on 256 V100s (with the scenario's assumed utilisation of 0.2; see its comment).
    println!(
        "CLIP ViT-L/14: {days:.2} days (published 12), error {:+.1}%",
        100.0 * (days - 12.0) / 12.0
    );
    assert!((days - 12.0).abs() / 12.0 < 0.25, "{days}");
    // B x B fp32 logits at B = 32,768: 4.29 GB.
    assert_eq!(json_metric(&o.stdout, "memory.logits"), 32_768.0 * 32_768.0 * 4.0);
}

#[test]
fn clip_rn50x64_budget_is_within_a_quarter_of_the_published_days() {
    let _serial = timing_lock();
    let o = run(bin().args(["run", "clip-rn50x64", "--backend", "analytical", "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let days = json_metric(&o.stdout, "days");
    // Published: 18 days on 592 V100s (CLIP §2.5), with the ViT-L/14 scenario's utilisation, not re-tuned.
    println!(
        "CLIP RN50x64: {days:.2} days (published 18), error {:+.1}%",
        100.0 * (days - 18.0) / 18.0
    );
    assert!((days - 18.0).abs() / 18.0 < 0.25, "{days}");
}

#[test]
fn clip4clip_style_video_is_loader_bound_and_says_how_many_cores_fix_it() {
    let _serial = timing_lock();
    let get = |backend: &str, extra: &[&str]| {
        let o = run(bin()
            .args(["run", "clip4clip-8gpu", "--backend", backend, "--json"])
            .args(extra));
        assert!(o.status.success(), "{}", stderr(&o));
        o.stdout
    };
    let cf = get("analytical", &[]);
    let des = get("pipeline_des", &[]);
    let needed = json_metric(&cf, "cores_per_gpu_needed");
    println!(
        "CLIP4Clip-style: closed form step {:.3} s, loader-bound {}, cores needed {needed:.2}; simulated step {:.3} s, \
         GPU idle {:.1}%",
        json_metric(&cf, "step_time"),
        json_metric(&cf, "loader_bound"),
        json_metric(&des, "step_time"),
        100.0 * json_metric(&des, "gpu_idle_fraction")
    );
    // 4 cores per GPU are too few: both the closed form and the simulator say the step waits for the loader.
    assert_eq!(json_metric(&cf, "loader_bound"), 1.0);
    assert_eq!(json_metric(&des, "loader_bound"), 1.0);
    assert!(needed > 4.0 && needed < 64.0, "{needed}");
    // Slow clips make the simulated step slower than the closed form's mean.
    assert!(json_metric(&des, "step_time") >= json_metric(&cf, "step_time") * (1.0 - 1e-3));
    // With the cores the closed form asks for, it is no longer loader-bound there.
    let base =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/clip4clip-8gpu.toml"))
            .unwrap();
    let more = base.replace(
        "cores_per_gpu = 4",
        &format!("cores_per_gpu = {}", needed.ceil() as u64),
    );
    let p = scenario_file("clip4clip-more-cores", &more);
    let o = run(bin().args(["run", "--backend", "analytical", "--json"]).arg(&p));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_metric(&o.stdout, "loader_bound"), 0.0);
}

#[test]
fn bad_contrastive_input_exits_2_with_the_field() {
    let _serial = timing_lock();
    let base =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/victor-h100.toml"))
            .unwrap();
    for (from, to, field) in [
        (
            "frames_per_clip = 12",
            "frames_per_clip = 0",
            "workload.frames_per_clip",
        ),
        ("size = 131072", "size = 1024", "workload.negatives.queue.size"),
        ("momentum = 0.999", "momentum = 1.0", "workload.momentum"),
        ("momentum = 0.999", "momentum = -0.1", "workload.momentum"),
        ("cores_per_gpu = 16", "cores_per_gpu = 0", "workload.cores_per_gpu"),
        ("decode_cv = 0.5", "decode_cv = -1", "workload.decode_cv"),
        (
            "decode_cv = 0.5",
            "decode_cv = 0.5\nprefetch_batches = 0",
            "workload.prefetch_batches",
        ),
    ] {
        assert!(base.contains(from), "{from}");
        let p = scenario_file("contrastive-bad", &base.replace(from, to));
        let o = run(bin().args(["run", "--backend", "analytical"]).arg(&p));
        assert_eq!(o.status.code(), Some(2), "{field}: {}", stderr(&o));
        assert!(stderr(&o).contains(field), "{field}: {}", stderr(&o));
    }
}

#[test]
fn the_calibrated_profile_is_read_for_cpu_workloads_and_beats_the_guess_on_another_run() {
    let _serial = timing_lock();
    let d = tmpdir("contrastive-cal");
    let o = run(bin()
        .args([
            "calibrate",
            "--workload",
            "contrastive_pretrain",
            "--quick",
            "--json",
            "--out",
        ])
        .arg(&d));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["held_out"].as_array().is_some_and(|h| h.len() >= 6), "{v}");
    // The profile changes the closed form's answer for a CPU workload, and only there.
    let step = |scenario: &str, profile: bool| {
        let mut c = bin();
        c.args(["run", scenario, "--backend", "analytical", "--json"]);
        if profile {
            c.arg("--profile").arg(&d);
        }
        let o = run(&mut c);
        assert!(o.status.success(), "{}", stderr(&o));
        json_metric(&o.stdout, "time.logits")
    };
    assert_eq!(step("victor-h100", false), step("victor-h100", true));
    // On a run that was not a calibration case, the calibrated head time is closer to the measured one than the
    // uncalibrated (datasheet-guess) prediction.
    let o = run(bin()
        .args(["compare", "contrastive-cpu", "--quick", "--json", "--profile"])
        .arg(&d));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let logits = |b: &str| {
        v["workloads"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["backend"] == b)
            .and_then(|x| {
                x["metrics"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["metric"] == "time.logits")
            })
            .and_then(|m| m["value"].as_f64())
            .unwrap_or_else(|| panic!("{b} in {v}"))
    };
    let (measured, cal, uncal) = (logits("cpu"), logits("analytical"), step("contrastive-cpu", false));
    assert_ne!(cal, uncal);
    let (e_cal, e_uncal) = ((cal - measured).abs() / measured, (uncal - measured).abs() / measured);
    println!(
        "contrastive-cpu head: measured {measured:.4} s, calibrated {cal:.4} ({e_cal:.3}), uncalibrated {uncal:.4} ({e_uncal:.3})"
    );
    assert!(e_cal < e_uncal, "calibrated {e_cal} vs uncalibrated {e_uncal}");
}
