//! Validation property test (issue 9, item 7): in a valid scenario of each of `gemm`, `dense_training`,
//! `moe_layer`, `training_job`, `fabric`, `recsys_step`, `contrastive_pretrain`, `rlhf_iteration` and `distillation`, every numeric field of the `[workload]` table (walked recursively through nested
//! tables and arrays of tables) is set in turn to 0, negative values, NaN, ±inf and 2^63 (as a float, and as the
//! largest TOML integer `i64::MAX`, since 2^63 itself overflows TOML's i64). Each mutated scenario must either be
//! rejected with an [`Error::Invalid`] whose field path names the mutated field, or be accepted and then answered by
//! the analytical and simulated backends without a panic and with finite metrics (a backend may still decline with
//! a user error, e.g. a model that fits nowhere).
//!
//! The library-level loop runs every case; `cli_rejects_bad_fields_with_exit_2` runs the built binary on a few of
//! them and checks exit code 2, the field path on stderr and no panic message. Debug builds (the default for
//! `cargo test`) trap integer overflow, so an unchecked product on user input fails here as a panic.
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;
use trainlab_core::workloads::contrastive::ContrastivePretrain;
use trainlab_core::workloads::distill::Distillation;
use trainlab_core::workloads::moe::MoeLayer;
use trainlab_core::workloads::rlhf::RlhfIteration;
use trainlab_core::workloads::{DenseTraining, Fabric, Gemm, RecsysStep, TrainingJob};
use trainlab_core::{Backend, Error, Outcome, RunCtx, Seed, Workload};
use trainlab_datasets::scenario::{EMBEDDED, Scenario, parse};

/// The values every numeric field is set to, with a label for messages.
fn bad_values() -> Vec<(&'static str, toml::Value)> {
    use toml::Value::{Float, Integer};
    vec![
        ("0", Integer(0)),
        ("0.0", Float(0.0)),
        ("-1", Integer(-1)),
        ("-1.5", Float(-1.5)),
        ("nan", Float(f64::NAN)),
        ("inf", Float(f64::INFINITY)),
        ("-inf", Float(f64::NEG_INFINITY)),
        ("2^63 (float)", Float(9.223372036854776e18)),
        ("i64::MAX", Integer(i64::MAX)),
    ]
}

/// One step of a path into the TOML body.
#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

/// `workload.failures[0].rate_per_component_hour`, the form validation messages use.
fn path_string(path: &[Seg]) -> String {
    let mut s = String::from("workload");
    for seg in path {
        match seg {
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Paths of every integer or float leaf under `v`.
fn numeric_paths(v: &toml::Value, here: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        toml::Value::Integer(_) | toml::Value::Float(_) => out.push(here.clone()),
        toml::Value::Table(t) => {
            for (k, sub) in t {
                here.push(Seg::Key(k.clone()));
                numeric_paths(sub, here, out);
                here.pop();
            }
        }
        toml::Value::Array(a) => {
            for (i, sub) in a.iter().enumerate() {
                here.push(Seg::Index(i));
                numeric_paths(sub, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn set_at(v: &mut toml::Value, path: &[Seg], new: toml::Value) {
    let Some((first, rest)) = path.split_first() else {
        *v = new;
        return;
    };
    let child = match (first, v) {
        (Seg::Key(k), toml::Value::Table(t)) => t.get_mut(k),
        (Seg::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
        _ => None,
    };
    set_at(child.expect("path exists"), rest, new);
}

fn scenario_text(name: &str) -> &'static str {
    EMBEDDED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("embedded scenario {name}"))
}

/// The embedded scenario `name` with `extra` TOML lines appended to its `[workload]` table (optional fields, so they
/// are mutated too). `extra` must only add keys the scenario does not have.
fn variant(name: &str, extra: &str) -> Scenario {
    let mut sc = parse(scenario_text(name), name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let add: toml::Table = toml::from_str(extra).unwrap_or_else(|e| panic!("{name} extra: {e}"));
    for (k, v) in add {
        assert!(!sc.body.contains_key(&k), "{name}: {k} already present");
        sc.body.insert(k, v);
    }
    sc
}

/// The scenarios under test: the embedded ones, and the same with their optional numeric fields written out.
fn scenarios() -> Vec<(String, Scenario)> {
    vec![
        ("gemm-cpu".into(), variant("gemm-cpu", "")),
        ("gemm-cpu+batch".into(), variant("gemm-cpu", "batch = 2")),
        ("llama2-70b-h100".into(), variant("llama2-70b-h100", "")),
        (
            "llama2-70b-h100+parallel".into(),
            variant(
                "llama2-70b-h100",
                "parallel = { tp = 8, pp = 8, dp = 32, micro_batch = 1, recompute = \"selective\" }",
            ),
        ),
        (
            "llama2-70b-h100+layout".into(),
            variant(
                "llama2-70b-h100",
                "parallel = { tp = 4, cp = 2, pp = 8, dp = 32, micro_batch = 1, recompute = \"selective\", \
                 virtual_stages = 2, sequence_parallel = true, zero_stage = 2, trim_end_stages = 1 }\n\
                 dp_bucket_bytes = 4.0e7\nattention_scores_materialized = false\ntp_comm_overlap = true",
            ),
        ),
        (
            "llama2-70b-h100+ptb-swa".into(),
            variant(
                "llama2-70b-h100",
                "parallel = { tp = 8, pp = 8, dp = 32, micro_batch = 1, recompute = \"selective\" }\n\
                 parallel_block = true\nsliding_window = 1024",
            ),
        ),
        ("moe-switch-capacity".into(), variant("moe-switch-capacity", "")),
        (
            "moe-switch-capacity+options".into(),
            variant("moe-switch-capacity", "balance_loss = 0.01"),
        ),
        ("c4-production".into(), variant("c4-production", "")),
        ("c4p-link-failure".into(), variant("c4p-link-failure", "")),
        ("picasso-wdl".into(), variant("picasso-wdl", "")),
        ("victor-h100".into(), variant("victor-h100", "")),
        ("rlhf-70b-colocated".into(), variant("rlhf-70b-colocated", "")),
        (
            "rlhf-70b-colocated+options".into(),
            variant("rlhf-70b-colocated", "samples_per_prompt = 1\ndtype = \"bf16\""),
        ),
        ("rlhf-70b-disaggregated".into(), variant("rlhf-70b-disaggregated", "")),
        ("ddk-tiny".into(), variant("ddk-tiny", "")),
        // A job with an explicit fault schedule (validated and answered by another path).
        ("c4-schedule-small".into(), variant("c4-schedule-small", "")),
        (
            "c4-production+options".into(),
            variant(
                "c4-production",
                "spare_nodes = 4\nrepair_hours = 48.0\nlemon = { nodes = 2, rate_multiplier = 10.0 }",
            ),
        ),
    ]
}

/// A copy of `sc` whose router is Zipf, whose checkpoint interval is numeric, or whose failures have Weibull
/// shapes: fields that replace a non-numeric value of the embedded scenario.
fn replaced_variants() -> Vec<(String, Scenario)> {
    let mut out = Vec::new();
    let mut moe = variant("moe-switch-capacity", "");
    moe.body.insert(
        "router".into(),
        toml::from_str::<toml::Table>("zipf = { s = 1.0 }").unwrap().into(),
    );
    out.push(("moe-switch-capacity+zipf".into(), moe));
    let mut moe = variant("moe-switch-capacity", "");
    moe.body.insert(
        "router".into(),
        toml::from_str::<toml::Table>("dirichlet = { alpha = 0.5 }")
            .unwrap()
            .into(),
    );
    moe.body.insert(
        "routing".into(),
        toml::from_str::<toml::Table>("prototypes = 2").unwrap().into(),
    );
    out.push(("moe-switch-capacity+dirichlet+prototypes".into(), moe));
    let mut job = variant("c4-production", "");
    job.body
        .insert("checkpoint_interval".into(), toml::Value::Float(1800.0));
    if let Some(toml::Value::Array(fs)) = job.body.get_mut("failures")
        && let Some(toml::Value::Table(f)) = fs.first_mut()
    {
        f.insert("weibull_shape".into(), toml::Value::Float(0.8));
    }
    out.push(("c4-production+seconds+weibull".into(), job));
    out
}

/// Runs `backends` on the workload; returns a description of what went wrong, if anything did.
fn answer<W: Workload>(w: &W, backends: Vec<Box<dyn Backend<W>>>) -> Option<String> {
    for mut b in backends {
        let mut ctx = RunCtx::new(Seed(7));
        match b.run(w, &mut ctx) {
            Ok(out) => {
                for m in out.metrics() {
                    let ci_ok = m.ci.is_none_or(|c| c.low.is_finite() && c.high.is_finite());
                    if !m.value.is_finite() || !ci_ok {
                        return Some(format!(
                            "backend {} gave {} = {} (ci {:?})",
                            b.name(),
                            m.name,
                            m.value,
                            m.ci
                        ));
                    }
                }
            }
            Err(Error::Invalid { .. } | Error::Unsupported(_)) => {}
            Err(e) => return Some(format!("backend {} failed: {e}", b.name())),
        }
    }
    None
}

fn gemm_backends() -> Vec<Box<dyn Backend<Gemm>>> {
    use trainlab_models::roofline::{Roofline, datasheet_profile, default_cpu_profile};
    let h100 = trainlab_datasets::gpus::preset("h100-sxm").expect("h100 preset");
    vec![
        Box::new(Roofline {
            profile: default_cpu_profile(),
        }),
        Box::new(Roofline {
            profile: datasheet_profile(&h100),
        }),
    ]
}

fn dense_backends() -> Vec<Box<dyn Backend<DenseTraining>>> {
    vec![
        Box::new(trainlab_models::dense::DenseAnalytical::default()),
        Box::new(trainlab_sim::dense::DenseOpSim::default()),
    ]
}

fn moe_backends() -> Vec<Box<dyn Backend<MoeLayer>>> {
    vec![
        Box::new(trainlab_models::moe::MoeAnalytical::default()),
        Box::new(trainlab_sim::moe::MoeSim {
            replications: 20,
            cost: None,
        }),
    ]
}

fn job_backends() -> Vec<Box<dyn Backend<TrainingJob>>> {
    vec![
        Box::new(trainlab_models::reliability::ReliabilityModel::default()),
        Box::new(trainlab_sim::failures::FailureSim::default()),
    ]
}

fn contrastive_backends() -> Vec<Box<dyn Backend<ContrastivePretrain>>> {
    vec![Box::new(trainlab_models::contrastive::ContrastiveAnalytical::default())]
}

fn recsys_backends() -> Vec<Box<dyn Backend<RecsysStep>>> {
    vec![
        Box::new(trainlab_models::recsys::RecsysAnalytical::default()),
        Box::new(trainlab_sim::recsys::RecsysSim { cache_ids: 2_000 }),
    ]
}

fn rlhf_backends() -> Vec<Box<dyn Backend<RlhfIteration>>> {
    vec![
        Box::new(trainlab_models::rlhf::RlhfAnalytical::default()),
        Box::new(trainlab_sim::rlhf::RlhfDes {
            iterations: 2,
            replications: 1,
            ..Default::default()
        }),
    ]
}

/// The cost model and, with the shipped profile, the law-driven backends (a mutated setup is refused by the
/// profile, an allowed change such as the student budget is answered).
fn distill_backends() -> Vec<Box<dyn Backend<Distillation>>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/calibration/ddk-cpu");
    let text = std::fs::read_to_string(dir.join("profile-distillation-cpu.toml")).expect("shipped profile");
    let p: trainlab_core::Profile<trainlab_models::gaplaw::DistillProfile> = toml::from_str(&text).unwrap();
    vec![
        Box::new(trainlab_models::distill::DistillCost),
        Box::new(trainlab_models::gaplaw::GapLawBackend {
            profile: Some(p.params.clone()),
        }),
        Box::new(trainlab_sim::distill::DdkSim {
            profile: Some(p.params),
            replications: 3,
        }),
    ]
}

fn fabric_backends() -> Vec<Box<dyn Backend<Fabric>>> {
    vec![
        Box::new(trainlab_models::fabric::FabricAnalytical),
        Box::new(trainlab_sim::fabric::FabricSim { replications: 1 }),
    ]
}

/// What happened to a case that holds the property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Rejected with the mutated field's path.
    Rejected,
    /// Accepted and answered with finite metrics.
    Answered,
}

/// Loads the workload of `sc` and, if it validates, answers it; `Err` describes a failure of the property.
fn check_typed<W: Workload>(
    sc: &Scenario,
    field: &str,
    backends: fn() -> Vec<Box<dyn Backend<W>>>,
) -> Result<Verdict, String> {
    match sc.workload::<W>() {
        Err(Error::Invalid { field: f, .. }) => {
            // `f` is `ORIGIN: workload.a.b`; the path must be the mutated field's.
            let path = f.rsplit(": ").next().unwrap_or(&f);
            if path == field {
                Ok(Verdict::Rejected)
            } else {
                Err(format!("rejected, but the error names `{path}` instead"))
            }
        }
        Err(e) => Err(format!("rejected with a non-Invalid error: {e}")),
        Ok(w) => match answer(&w, backends()) {
            None => Ok(Verdict::Answered),
            Some(why) => Err(format!("accepted, then {why}")),
        },
    }
}

fn check(sc: &Scenario, field: &str) -> Result<Verdict, String> {
    match sc.kind.as_str() {
        Gemm::KIND => check_typed::<Gemm>(sc, field, gemm_backends),
        DenseTraining::KIND => check_typed::<DenseTraining>(sc, field, dense_backends),
        MoeLayer::KIND => check_typed::<MoeLayer>(sc, field, moe_backends),
        TrainingJob::KIND => check_typed::<TrainingJob>(sc, field, job_backends),
        Fabric::KIND => check_typed::<Fabric>(sc, field, fabric_backends),
        RecsysStep::KIND => check_typed::<RecsysStep>(sc, field, recsys_backends),
        ContrastivePretrain::KIND => check_typed::<ContrastivePretrain>(sc, field, contrastive_backends),
        RlhfIteration::KIND => check_typed::<RlhfIteration>(sc, field, rlhf_backends),
        Distillation::KIND => check_typed::<Distillation>(sc, field, distill_backends),
        k => Err(format!("kind {k} not covered")),
    }
}

/// Runs one case on its own thread: a panic is caught and reported, and a case that runs longer than a minute (or
/// `TRAINLAB_CASE_TIMEOUT_S` seconds: a loop over an absurd count that validation let through) is reported instead
/// of hanging the test.
fn run_case(sc: Scenario, field: String) -> Result<Verdict, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = catch_unwind(AssertUnwindSafe(|| check(&sc, &field)));
        let _ = tx.send(r.unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {msg}"))
        }));
    });
    let limit = std::env::var("TRAINLAB_CASE_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    rx.recv_timeout(Duration::from_secs(limit))
        .unwrap_or_else(|_| Err(format!("still running after {limit} s")))
}

#[test]
fn every_numeric_field_is_rejected_by_path_or_answered_finitely() {
    // Panics are expected to be caught and reported as failures; keep their default messages off the output.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    let (mut cases, mut answered) = (0, 0);
    for (label, sc) in scenarios().into_iter().chain(replaced_variants()) {
        let mut paths = Vec::new();
        numeric_paths(&toml::Value::Table(sc.body.clone()), &mut Vec::new(), &mut paths);
        assert!(!paths.is_empty(), "{label}: no numeric fields");
        // The unmutated variant must be valid and answered.
        match run_case(sc.clone(), String::new()) {
            Ok(Verdict::Answered) => {}
            Ok(Verdict::Rejected) => failures.push(format!("{label} (unmodified): rejected")),
            Err(e) => failures.push(format!("{label} (unmodified): {e}")),
        }
        for path in &paths {
            let field = path_string(path);
            for (vlabel, value) in bad_values() {
                let mut body = toml::Value::Table(sc.body.clone());
                set_at(&mut body, path, value);
                let mut m = sc.clone();
                m.body = match body {
                    toml::Value::Table(t) => t,
                    _ => unreachable!(),
                };
                cases += 1;
                match run_case(m, field.clone()) {
                    Ok(Verdict::Answered) => answered += 1,
                    Ok(Verdict::Rejected) => {}
                    Err(e) => failures.push(format!("{label}: {field} = {vlabel}: {e}")),
                }
            }
        }
    }
    std::panic::set_hook(hook);
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Most values are rejected; the zeros of optional rates and costs are valid and must be answered.
    eprintln!("{cases} cases: {answered} accepted and answered, the rest rejected by their field");
    assert!(cases > 1000, "only {cases} cases");
    assert!(answered > 20, "only {answered} cases reached the backends");
}

/// Writes `text` to a temporary scenario file and runs `trainlab run FILE --backend BACKEND`.
fn run_cli(tag: &str, text: &str, backend: &str) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!("trainlab-invalid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_trainlab"))
        .args(["run", &path.display().to_string(), "--backend", backend])
        .output()
        .expect("spawn trainlab")
}

/// The embedded scenario `name` with `key = value` replaced in the line that starts with `key =`.
fn with_line(name: &str, key: &str, value: &str) -> String {
    let text = scenario_text(name);
    let mut found = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with(&format!("{key} =")) && !found {
                found = true;
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(found, "{name} has no line `{key} =`");
    out.join("\n")
}

#[test]
fn cli_rejects_bad_fields_with_exit_2() {
    let cases = [
        // 2^32 per dimension: the operand sizes overflow u64 arithmetic (a panic in debug, nonsense in release).
        (
            "gemm-big",
            {
                let t = with_line("gemm-cpu", "m", "4294967296");
                let t = t.replace("n = 1024", "n = 4294967296");
                t.replace("k = 1024", "k = 4294967296")
            },
            "roofline",
            "workload.m",
        ),
        ("gemm-neg", with_line("gemm-cpu", "n", "-3"), "roofline", "workload.n"),
        (
            "dense-hidden",
            with_line("llama2-70b-h100", "hidden", "9223372036854775807"),
            "analytical",
            "workload.model.hidden",
        ),
        (
            "dense-tokens",
            with_line("llama2-70b-h100", "train_tokens", "nan"),
            "analytical",
            "workload.train_tokens",
        ),
        (
            "dense-cp",
            with_line(
                "llama2-70b-h100",
                "train_tokens",
                "2.0e12\nparallel = { tp = 8, cp = 3, pp = 1, dp = 1, micro_batch = 1 }",
            )
            .replace("nodes = 256", "nodes = 3"),
            "analytical",
            "workload.parallel.cp",
        ),
        (
            "dense-vstages",
            with_line(
                "llama2-70b-h100",
                "train_tokens",
                "2.0e12\nparallel = { tp = 8, pp = 8, dp = 32, micro_batch = 1, virtual_stages = 3 }",
            ),
            "op_sim",
            "workload.parallel.virtual_stages",
        ),
        (
            "dense-zero",
            with_line(
                "llama2-70b-h100",
                "train_tokens",
                "2.0e12\nparallel = { tp = 8, pp = 8, dp = 32, micro_batch = 1, zero_stage = 7 }",
            ),
            "analytical",
            "workload.parallel.zero_stage",
        ),
        (
            "dense-window-0",
            with_line("llama2-70b-h100", "train_tokens", "2.0e12\nsliding_window = 0"),
            "analytical",
            "workload.sliding_window",
        ),
        (
            "dense-window-long",
            with_line("llama2-70b-h100", "train_tokens", "2.0e12\nsliding_window = 8192"),
            "op_sim",
            "workload.sliding_window",
        ),
        (
            "dense-ptb-moe",
            with_line("mixtral-8x7b", "train_tokens", "1.0e12\nparallel_block = true"),
            "analytical",
            "workload.parallel_block",
        ),
        (
            "moe-cf",
            with_line("moe-switch-capacity", "capacity_factor", "inf"),
            "closed_form",
            "workload.capacity_factor",
        ),
        (
            "moe-experts",
            with_line("moe-switch-capacity", "experts", "9223372036854775807"),
            "monte_carlo",
            "workload.experts",
        ),
        (
            "job-horizon",
            with_line("c4-production", "horizon_days", "9.223372036854776e18"),
            "des",
            "workload.horizon_days",
        ),
        (
            "job-rate",
            with_line("c4-production", "rate_per_component_hour", "inf"),
            "young-daly",
            "workload.failures[0].rate_per_component_hour",
        ),
    ];
    for (tag, text, backend, field) in cases {
        let o = run_cli(tag, &text, backend);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{tag}: {err}");
        assert!(err.contains(field), "{tag}: expected `{field}` in: {err}");
        assert!(!err.contains("panicked"), "{tag}: {err}");
    }
}
