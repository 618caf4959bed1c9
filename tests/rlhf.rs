//! The `rlhf_iteration` kind end to end: the shipped scenarios run, phase times move the way the cost model says they
//! must, and bad input exits 2 naming the field.
use std::path::{Path, PathBuf};
use std::process::Command;
use trainlab_core::workloads::rlhf::{Algorithm, ResponseLength, RlhfIteration};
use trainlab_core::{Backend, Metric, Outcome, RunCtx, Seed, Workload};
use trainlab_models::rlhf::RlhfAnalytical;

fn scenario(name: &str) -> RlhfIteration {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"));
    trainlab_datasets::scenario::load_file(&path)
        .and_then(|s| s.workload::<RlhfIteration>())
        .expect("shipped scenario")
}

fn metrics(w: &RlhfIteration) -> Vec<Metric> {
    RlhfAnalytical::default()
        .run(w, &mut RunCtx::new(Seed(1)))
        .expect("model runs")
        .metrics()
}

fn value(ms: &[Metric], name: &str) -> f64 {
    ms.iter()
        .find(|m| m.name == name)
        .map(|m| m.value)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
fn rlhf_phases_add_up_and_memory_is_per_role() {
    for name in ["rlhf-70b-colocated", "rlhf-70b-disaggregated"] {
        let m = metrics(&scenario(name));
        let parts: f64 = ["time.generation", "time.experience", "time.training", "time.sync"]
            .iter()
            .map(|n| value(&m, n))
            .sum();
        let t = value(&m, "iteration_time");
        assert!((parts - t).abs() < 1e-9 * t, "{name}: {parts} vs {t}");
        assert!(
            (value(&m, "time.generation.prefill") + value(&m, "time.generation.decode") - value(&m, "time.generation"))
                .abs()
                < 1e-9 * t
        );
        for role in ["actor", "critic", "reference", "reward", "rollout"] {
            let b = value(&m, &format!("memory_per_gpu.{role}"));
            assert!(b > 0.0 && b < 80e9, "{name}: {role} {b}");
        }
        if name == "rlhf-70b-colocated" {
            // The resident sum: every role's bytes plus the rollout's KV cache (its weights are the actor's).
            let roles: f64 = ["actor", "critic", "reference", "reward"]
                .iter()
                .map(|r| value(&m, &format!("memory_per_gpu.{r}")))
                .sum();
            let sum = value(&m, "memory_per_gpu.colocated_sum");
            let rollout = value(&m, "memory_per_gpu.rollout");
            assert!(
                sum > roles && sum < roles + rollout,
                "{sum} vs roles {roles} + rollout {rollout}"
            );
            let have = scenario(name).cluster.gpu.memory_bytes as f64;
            assert!(
                sum <= have,
                "colocated roles searched within the GPU's memory: {sum} > {have}"
            );
        } else {
            assert!(!m.iter().any(|x| x.name == "memory_per_gpu.colocated_sum"));
        }
        let share = value(&m, "generation_share");
        assert!(share > 0.0 && share < 1.0, "{name}: {share}");
        assert!((value(&m, "gpu_hours_per_iteration") - t * 64.0 / 3600.0).abs() < 1e-9 * t);
    }
}

#[test]
fn rlhf_longer_responses_raise_decode_time_and_generation_share() {
    let base = scenario("rlhf-70b-colocated");
    let mut last: Option<(f64, f64)> = None;
    for r in [128, 512, 2048] {
        let mut w = base.clone();
        w.response = ResponseLength::Fixed(r);
        let m = metrics(&w);
        let (decode, share) = (value(&m, "time.generation.decode"), value(&m, "generation_share"));
        if let Some((d0, s0)) = last {
            assert!(decode > 2.0 * d0, "decode {d0} -> {decode} at {r}");
            assert!(share > s0, "share {s0} -> {share} at {r}");
        }
        last = Some((decode, share));
    }
}

#[test]
fn rlhf_the_long_tail_costs_decode_steps() {
    // Same mean length: a wider lognormal makes each static batch wait for a longer response.
    let base = scenario("rlhf-70b-colocated");
    let decode = |sigma: f64| {
        let mut w = base.clone();
        w.response = ResponseLength::Lognormal {
            mean: 600.0,
            sigma,
            max: 4096,
        };
        value(&metrics(&w), "time.generation.decode")
    };
    let (narrow, wide) = (decode(0.1), decode(1.0));
    assert!(wide > 1.5 * narrow, "{narrow} vs {wide}");
}

#[test]
fn rlhf_dpo_generates_nothing() {
    let mut w = scenario("rlhf-70b-colocated");
    w.algorithm = Algorithm::Dpo;
    w.critic = None;
    w.reward = None;
    let m = metrics(&w);
    assert_eq!(value(&m, "time.generation"), 0.0);
    assert_eq!(value(&m, "time.sync"), 0.0);
    assert!(value(&m, "time.training") > 0.0 && value(&m, "time.experience") > 0.0);
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("trainlab-rlhf-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn rlhf_bad_input_exits_2_with_the_field() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let colo = std::fs::read_to_string(root.join("rlhf-70b-colocated.toml")).unwrap();
    let dis = std::fs::read_to_string(root.join("rlhf-70b-disaggregated.toml")).unwrap();
    let asy = std::fs::read_to_string(root.join("rlhf-70b-async.toml")).unwrap();
    let d = tmpdir("bad");
    let reward_layers = "[workload.reward]\nname = \"llama2-7b\"\nlayers = 32";
    for (base, from, to, field) in [
        (&colo, "sigma = 0.8", "sigma = 0.0", "workload.response.lognormal.sigma"),
        (&colo, "mean = 600.0", "mean = -5.0", "workload.response.lognormal.mean"),
        (&colo, "max = 2048", "max = 0", "workload.response.lognormal.max"),
        (
            &colo,
            reward_layers,
            "[workload.reward]\nname = \"llama2-7b\"\nlayers = 0",
            "workload.reward.layers",
        ),
        (
            &colo,
            "algorithm = \"ppo\"",
            "algorithm = \"grpo\"",
            "workload.algorithm",
        ),
        (&colo, "rollout_tp = 8", "rollout_tp = 3", "workload.rollout_tp"),
        // The KV cache of 128 sequences of 17,408 tokens (41 KB per token per GPU at TP 8) does not fit in an H100;
        // the 140 GB of weights do not fit at TP 1.
        (&colo, "max = 2048", "max = 16384", "workload.generation_batch"),
        (&colo, "rollout_tp = 8", "rollout_tp = 1", "workload.rollout_tp"),
        (
            &dis,
            "actor_gpus = 16",
            "actor_gpus = 40",
            "workload.placement.disaggregated",
        ),
        (
            &dis,
            "critic_gpus = 4",
            "critic_gpus = 0",
            "workload.placement.disaggregated.critic_gpus",
        ),
        (&colo, "algorithm = \"ppo\"", "algorithm = \"dpo\"", "workload.critic"),
        // Off-policy pipelining needs roles on their own GPUs.
        (
            &colo,
            "placement = \"colocated\"",
            "placement = \"colocated\"\noff_policy = true",
            "workload.off_policy",
        ),
        (&colo, "mean = 600.0", "mean = 0.0", "workload.response.lognormal.mean"),
        // Generation on the actor's GPUs (`rollout_gpus = 0`): no off-policy overlap, and whole engines of rollout_tp.
        (&asy, "rollout_gpus = 40", "rollout_gpus = 0", "workload.off_policy"),
        (
            &dis,
            "actor_gpus = 16, rollout_gpus = 32",
            "actor_gpus = 4, rollout_gpus = 0",
            "workload.placement.disaggregated.actor_gpus",
        ),
        // Histogram lengths: a negative weight, no mass at all, a zero length, mismatched bins.
        (
            &colo,
            "lognormal = { mean = 600.0, sigma = 0.8, max = 2048 }",
            "histogram = { lengths = [100, 900], weights = [1.0, -0.5] }",
            "workload.response.histogram.weights[1]",
        ),
        (
            &colo,
            "lognormal = { mean = 600.0, sigma = 0.8, max = 2048 }",
            "histogram = { lengths = [100, 900], weights = [0.0, 0.0] }",
            "workload.response.histogram.weights",
        ),
        (
            &colo,
            "lognormal = { mean = 600.0, sigma = 0.8, max = 2048 }",
            "histogram = { lengths = [0, 900], weights = [1.0, 1.0] }",
            "workload.response.histogram.lengths[0]",
        ),
        (
            &colo,
            "lognormal = { mean = 600.0, sigma = 0.8, max = 2048 }",
            "histogram = { lengths = [100, 900], weights = [1.0] }",
            "workload.response.histogram.weights",
        ),
    ] {
        assert!(base.contains(from), "{from}");
        let p = d.join("bad.toml");
        std::fs::write(&p, base.replace(from, to)).unwrap();
        for backend in ["analytical", "simulated"] {
            let o = Command::new(env!("CARGO_BIN_EXE_trainlab"))
                .args(["run", "--backend", backend])
                .arg(&p)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{backend} {to}: {err}");
            assert!(err.contains(field), "{backend} {field}: {err}");
        }
    }
}

/// Issue 13: the `cpu` backend answers a scaled workload in its own group, with the closed form and the simulator
/// beside it; `calibrate --workload rlhf_iteration --quick` measures, fits and writes a profile that `analytical` then
/// reads for that cpu workload. No timing bound (a loaded shared machine): the held-out rows exist, are positive and
/// finite, and the profiled model answers.
#[test]
fn rlhf_cpu_backend_and_calibration_end_to_end() {
    let exe = env!("CARGO_BIN_EXE_trainlab");
    let scen = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/rlhf-70b-colocated.toml");
    let d = tmpdir("cal");
    let out = Command::new(exe)
        .args([
            "calibrate",
            "--workload",
            "rlhf_iteration",
            "--quick",
            "--json",
            "--out",
        ])
        .arg(&d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let text = j.to_string();
    assert!(
        text.contains("time.generation") && text.contains("time.training"),
        "{text}"
    );
    let prof = d.join("profile-rlhf_iteration-cpu.toml");
    let p = std::fs::read_to_string(&prof).expect("profile written");
    assert!(
        p.contains("kind = \"rlhf_iteration\"") && p.contains("s_per_flop"),
        "{p}"
    );
    let csv = std::fs::read_to_string(d.join("calibration-rlhf_iteration-cpu.csv")).expect("records");
    // 6 sizes x 3 phases, measured and calibrated.
    assert!(csv.lines().count() > 36, "{csv}");
    let err = j["held_out_median_abs_error"].as_f64().expect("median error");
    assert!(err.is_finite() && err >= 0.0, "{err}");

    let out = Command::new(exe)
        .args(["compare", "--quick", "--json", "--profile"])
        .arg(&prof)
        .arg(&scen)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let j: serde_json::Value = serde_json::from_str(&s).expect("json");
    let groups = j["workloads"].as_array().unwrap_or_else(|| panic!("workloads in {s}"));
    assert_eq!(groups.len(), 2, "the asked workload and the cpu-scaled one: {s}");
    assert_eq!(groups[1]["reference"], "cpu", "{s}");
    assert_eq!(groups[1]["scaled_by"], "cpu", "{s}");
    let cpu_group = groups[1]["backends"].to_string();
    for b in ["\"cpu\"", "\"analytical\"", "\"simulated\""] {
        assert!(cpu_group.contains(b), "{b} answers the scaled workload: {cpu_group}");
    }
    assert!(
        !groups[0]["backends"].to_string().contains("\"measured\""),
        "no measured answer to a 70B job: {s}"
    );
    std::fs::remove_dir_all(&d).ok();
}

/// Issue 13: histogram response lengths. The closed form's moments and expected batch maximum by hand, a one-bin
/// histogram is the fixed length, and a long-tailed histogram costs decode steps in the closed form and the
/// simulator alike.
#[test]
fn rlhf_histogram_lengths_by_hand_and_in_both_models() {
    use trainlab_models::rlhf::{expected_max, length_stats};
    let h = ResponseLength::Histogram {
        lengths: vec![100, 1000],
        weights: vec![3.0, 1.0],
    };
    let st = length_stats(&h);
    // E[R] = (3·100 + 1000)/4 = 325; E[R²] = (3·10⁴ + 10⁶)/4 = 257,500.
    assert!(
        (st.mean - 325.0).abs() < 1e-9 && (st.mean_sq - 257_500.0).abs() < 1e-6,
        "{st:?}"
    );
    // Batch of 2: P(max = 100) = 0.75² = 0.5625, E[max] = 100·0.5625 + 1000·0.4375 = 493.75.
    assert!((expected_max(&h, 2) - 493.75).abs() < 1e-9);
    assert!((expected_max(&h, 1) - 325.0).abs() < 1e-9);
    assert_eq!(h.max(), 1000);

    let mut w = scenario("rlhf-70b-colocated");
    w.response = ResponseLength::Fixed(600);
    let fixed = metrics(&w);
    w.response = ResponseLength::Histogram {
        lengths: vec![600],
        weights: vec![2.5],
    };
    w.validate().unwrap();
    assert_eq!(metrics(&w), fixed, "a one-bin histogram is the fixed length");
    // Mean 600 with a tail: 90% at 500, 10% at 1,500.
    w.response = ResponseLength::Histogram {
        lengths: vec![500, 1500],
        weights: vec![0.9, 0.1],
    };
    w.validate().unwrap();
    let tail = metrics(&w);
    assert!(value(&tail, "time.generation.decode") > value(&fixed, "time.generation.decode"));
    let des = trainlab_sim::rlhf::RlhfDes {
        iterations: 4,
        replications: 2,
        ..Default::default()
    }
    .run(&w, &mut RunCtx::new(Seed(3)))
    .expect("simulator runs")
    .metrics();
    // Sampled lengths: the slots idle while the batch's 1,500-token stragglers finish.
    let occ = value(&des, "rollout_occupancy");
    assert!(occ > 0.2 && occ < 0.9, "occupancy {occ}");
    let (a, b) = (value(&tail, "time.generation"), value(&des, "time.generation"));
    assert!((b / a - 1.0).abs() < 0.25, "simulated {b} vs closed form {a}");
}

/// Issue 13: colocated, the trained roles get only what the frozen roles and the rollout's KV cache leave; the
/// OpenRLHF 13B row with static batches of 24 at TP 1 on 8 A100-80GB (the KV cache alone fits) no longer fits, and both
/// backends say which field to change; the shipped batch of 12 fits within the GPU's memory.
#[test]
fn rlhf_colocated_memory_that_does_not_fit_exits_2_naming_the_placement() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/rlhf-openrlhf-13b.toml");
    let text = std::fs::read_to_string(&src).unwrap();
    assert!(text.contains("generation_batch = 12"));
    let d = tmpdir("colocated");
    let p = d.join("b24.toml");
    std::fs::write(&p, text.replace("generation_batch = 12", "generation_batch = 24")).unwrap();
    for backend in ["analytical", "simulated"] {
        let o = Command::new(env!("CARGO_BIN_EXE_trainlab"))
            .args(["run", "--backend", backend])
            .arg(&p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{backend}: {err}");
        assert!(
            err.contains("workload.placement") && err.contains("colocated roles leave"),
            "{err}"
        );
    }
    let w = scenario("rlhf-openrlhf-13b");
    let m = metrics(&w);
    let sum = value(&m, "memory_per_gpu.colocated_sum");
    assert!(sum <= w.cluster.gpu.memory_bytes as f64, "{sum}");
}

#[test]
fn rlhf_generation_on_the_actors_gpus() {
    // Disaggregated with `rollout_gpus = 0` (OpenRLHF's Ray placement without vLLM): the actor's 16 GPUs are the
    // rollout engines (2 at TP 8), so generation costs what 16 rollout GPUs of their own cost, while the reference,
    // critic and reward model keep their own GPUs and the phases run in series.
    let mut own = scenario("rlhf-70b-disaggregated");
    own.off_policy = false;
    // Small enough that the KV cache fits beside the actor's training states on its GPUs.
    own.generation_batch = 16;
    let trainlab_core::workloads::rlhf::Placement::Disaggregated {
        reference_gpus,
        critic_gpus,
        reward_gpus,
        ..
    } = own.placement
    else {
        panic!("disaggregated scenario")
    };
    own.placement = trainlab_core::workloads::rlhf::Placement::Disaggregated {
        actor_gpus: 16,
        rollout_gpus: 16,
        reference_gpus,
        critic_gpus,
        reward_gpus,
    };
    let mut on_actor = own.clone();
    on_actor.placement = trainlab_core::workloads::rlhf::Placement::Disaggregated {
        actor_gpus: 16,
        rollout_gpus: 0,
        reference_gpus,
        critic_gpus,
        reward_gpus,
    };
    assert!(on_actor.rollout_on_actor() && !own.rollout_on_actor());
    let run = |w: &RlhfIteration| RlhfAnalytical::default().run(w, &mut RunCtx::new(Seed(1))).unwrap();
    let (a, b) = (run(&own), run(&on_actor));
    let generation = |o: &trainlab_core::workloads::rlhf::RlhfOutcome| o.prefill_s + o.decode_s;
    eprintln!(
        "generation {:.2} s (own GPUs) vs {:.2} s (actor's GPUs); sync {:.3} vs {:.3} s",
        generation(&a),
        generation(&b),
        a.sync_s,
        b.sync_s
    );
    assert!((generation(&a) / generation(&b) - 1.0).abs() < 1e-9);
    assert_eq!((a.experience_s, b.overlap_s), (b.experience_s, 0.0));
    // The actor already holds its weights: resharding within its own 16 GPUs, not a send to other GPUs.
    assert!(b.sync_s < a.sync_s, "{} vs {}", b.sync_s, a.sync_s);
    assert_eq!(b.gpus, own.cluster.gpus());
}
