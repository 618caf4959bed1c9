//! Which backends answer which workload kind, and the generic `run` and `compare` drivers over them.
//!
//! Every kind maps to an ordered list of `Backend<W>`s (analytical first, then simulated, then measured). `compare`
//! runs them all on one scenario and puts each metric side by side, with the relative error of every backend
//! against the highest-fidelity answer present (measured > simulated > analytical).
use crate::cli::{UsageError, ctx};
use anyhow::Result;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use trainlab_core::backend::BackendRun;
use trainlab_core::workloads::moe::MoeLayer;
use trainlab_core::workloads::training_job::TrainingJob;
use trainlab_core::workloads::{Collective, DenseTraining, Gemm, LaunchLatency, MemBandwidth};
use trainlab_core::{Backend, DeviceProfile, Fidelity, Record, RunCtx, Seed, Workload, run_backends};
use trainlab_datasets::scenario::Scenario;

/// Options that shape backend lists.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// A calibrated device profile for analytical backends.
    pub profile: Option<DeviceProfile>,
    /// Skip slow backends.
    pub quick: bool,
}

fn roofline(opts: &Opts, gpu_default: bool) -> trainlab_models::roofline::Roofline {
    let profile = opts.profile.clone().unwrap_or_else(|| {
        if gpu_default && trainlab_executors::cuda::gpu_available() {
            trainlab_models::roofline::datasheet_profile(&trainlab_datasets::gpus::preset("h100-sxm").expect("preset"))
        } else {
            trainlab_models::roofline::default_cpu_profile()
        }
    });
    trainlab_models::roofline::Roofline { profile }
}

fn gemm_backends(o: &Opts) -> Vec<Box<dyn Backend<Gemm>>> {
    vec![
        Box::new(roofline(o, false)),
        Box::new(trainlab_executors::cpu::CpuGemm::default()),
        Box::new(trainlab_executors::cuda::CudaGemm::default()),
    ]
}
fn mem_backends(o: &Opts) -> Vec<Box<dyn Backend<MemBandwidth>>> {
    vec![
        Box::new(roofline(o, false)),
        Box::new(trainlab_executors::cpu::CpuMem::default()),
        Box::new(trainlab_executors::cuda::CudaMem::default()),
    ]
}
fn launch_backends(o: &Opts) -> Vec<Box<dyn Backend<LaunchLatency>>> {
    vec![
        Box::new(roofline(o, false)),
        Box::new(trainlab_executors::cpu::CpuDispatch::default()),
        Box::new(trainlab_executors::cuda::CudaLaunch::default()),
    ]
}
fn collective_backends(_o: &Opts) -> Vec<Box<dyn Backend<Collective>>> {
    vec![Box::new(trainlab_models::collectives::AlphaBeta)]
}
fn dense_backends(o: &Opts) -> Vec<Box<dyn Backend<DenseTraining>>> {
    vec![
        Box::new(trainlab_models::dense::DenseAnalytical {
            profile: o.profile.clone(),
        }),
        Box::new(trainlab_sim::dense::DensePipelineSim {
            profile: o.profile.clone(),
        }),
    ]
}
fn queue_backends(_o: &Opts) -> Vec<Box<dyn Backend<trainlab_core::workloads::Queue>>> {
    vec![
        Box::new(trainlab_models::queueing::QueueAnalytical),
        Box::new(trainlab_sim::queueing::QueueSim::default()),
    ]
}

fn go<W: Workload>(
    sc: &Scenario,
    mut backends: Vec<Box<dyn Backend<W>>>,
    only: Option<&str>,
    c: &mut RunCtx,
) -> Result<Vec<BackendRun>> {
    let w: W = sc.workload()?;
    if let Some(name) = only {
        let names: Vec<String> = backends.iter().map(|b| b.name().to_string()).collect();
        backends.retain(|b| b.name() == name);
        if backends.is_empty() {
            return Err(UsageError(format!(
                "invalid `--backend` = {name}: kind \"{}\" has backends {}",
                W::KIND,
                names.join(", ")
            ))
            .into());
        }
    }
    Ok(run_backends(&sc.name, &sc.name, &w, &mut backends, c))
}

/// Runs the backends of a scenario's kind (all, or the one named).
pub fn dispatch(sc: &Scenario, opts: &Opts, only: Option<&str>, c: &mut RunCtx) -> Result<Vec<BackendRun>> {
    match sc.kind.as_str() {
        Gemm::KIND => go(sc, gemm_backends(opts), only, c),
        MemBandwidth::KIND => go(sc, mem_backends(opts), only, c),
        LaunchLatency::KIND => go(sc, launch_backends(opts), only, c),
        Collective::KIND => go(sc, collective_backends(opts), only, c),
        DenseTraining::KIND => go(sc, dense_backends(opts), only, c),
        "queue" => go(sc, queue_backends(opts), only, c),
        MoeLayer::KIND => go(sc, crate::workloads::moe::backends(opts.quick), only, c),
        TrainingJob::KIND => go(sc, crate::workloads::training_job::backends(opts.quick), only, c),
        "plan" => Err(UsageError(format!(
            "scenario `{}` is a study: run it with `trainlab plan {}`",
            sc.name, sc.name
        ))
        .into()),
        other => Err(UsageError(format!(
            "scenario `{}`: unknown kind \"{other}\" (known: gemm, mem_bandwidth, launch_latency, collective, \
             dense_training, queue, moe_layer, training_job, plan)",
            sc.name
        ))
        .into()),
    }
}

fn load(arg: &str, seed: Option<u64>) -> Result<(Scenario, Seed)> {
    let sc = trainlab_datasets::scenario::load(arg)?;
    let s = seed.map(Seed).unwrap_or(sc.seed);
    Ok((sc, s))
}

fn write_out(records: &[Record], out: Option<&Path>, stem: &str, json: bool) -> Result<()> {
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|e| trainlab_core::Error::io(format!("creating {}", dir.display()), e))?;
        let (pq, csv) = trainlab_reports::write_records(records, dir, stem)?;
        if !json {
            println!("wrote {}\nwrote {}", pq.display(), csv.display());
        }
    }
    Ok(())
}

struct BackendRunInfo {
    backend: String,
    fidelity: Fidelity,
}

/// `trainlab run`.
pub fn run_one(
    scenario: &str,
    backend: &str,
    profile: Option<DeviceProfile>,
    seed: Option<u64>,
    cancel: &Arc<AtomicBool>,
    json: bool,
    out: Option<&Path>,
) -> Result<()> {
    let (sc, s) = load(scenario, seed)?;
    let mut c = ctx(s, cancel);
    let runs = dispatch(&sc, &Opts { profile, quick: false }, Some(backend), &mut c)?;
    let Some(run) = runs.into_iter().next() else {
        anyhow::bail!("no backend ran");
    };
    let backend_name = run.backend.clone();
    let records = run
        .result
        .map_err(|e| anyhow::Error::new(e).context(format!("backend `{backend_name}` on `{}`", sc.name)))?;
    let run = BackendRunInfo {
        backend: backend_name,
        fidelity: run.fidelity,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        println!("{} ({}) on {}", run.backend, run.fidelity.as_str(), sc.name);
        let rows: Vec<Vec<String>> = records
            .iter()
            .map(|r| {
                vec![
                    r.metric.clone(),
                    fmt_value(r.value),
                    r.unit.symbol().to_string(),
                    fmt_ci(r),
                ]
            })
            .collect();
        print!(
            "{}",
            trainlab_reports::markdown_table(&["metric", "value", "unit", "95% CI"], &rows)
        );
    }
    write_out(&records, out, &format!("{}-{}", sc.name, backend), json)
}

fn fmt_value(v: f64) -> String {
    if v == 0.0 || (1e-3..1e5).contains(&v.abs()) {
        format!("{v:.4}")
    } else {
        format!("{v:.4e}")
    }
}
fn fmt_ci(r: &Record) -> String {
    match (r.ci_low, r.ci_high) {
        (Some(l), Some(h)) => format!("[{}, {}]", fmt_value(l), fmt_value(h)),
        _ => String::new(),
    }
}

/// Reference backend of a comparison: the highest fidelity that produced records.
fn reference(runs: &[BackendRun]) -> Option<&BackendRun> {
    [Fidelity::Measured, Fidelity::Simulated, Fidelity::Analytical]
        .into_iter()
        .find_map(|f| runs.iter().find(|r| r.fidelity == f && r.result.is_ok()))
}

/// `trainlab compare`.
pub fn compare(
    scenario: &str,
    profile: Option<DeviceProfile>,
    quick: bool,
    seed: Option<u64>,
    cancel: &Arc<AtomicBool>,
    json: bool,
    out: Option<&Path>,
) -> Result<()> {
    let (sc, s) = load(scenario, seed)?;
    let mut c = ctx(s, cancel);
    let runs = dispatch(&sc, &Opts { profile, quick }, None, &mut c)?;
    let reference = reference(&runs).map(|r| r.backend.clone());
    let ref_records: Vec<Record> = runs
        .iter()
        .find(|r| Some(&r.backend) == reference.as_ref())
        .and_then(|r| r.result.as_ref().ok().cloned())
        .unwrap_or_default();
    let rel_err = |r: &Record| -> Option<f64> {
        let x = ref_records.iter().find(|x| x.metric == r.metric)?;
        (x.value != 0.0).then(|| (r.value - x.value) / x.value.abs())
    };
    let all: Vec<Record> = runs
        .iter()
        .flat_map(|r| r.result.as_ref().ok().cloned().unwrap_or_default())
        .collect();
    if json {
        let v = serde_json::json!({
            "scenario": sc.name, "kind": sc.kind, "seed": s.0, "reference": reference,
            "backends": runs.iter().map(|r| serde_json::json!({
                "backend": r.backend, "fidelity": r.fidelity, "error": r.result.as_ref().err().map(|e| e.to_string()),
                "metrics": r.result.as_ref().map(|recs| recs.iter().map(|x| serde_json::json!({
                    "metric": x.metric, "unit": x.unit, "value": x.value, "ci_low": x.ci_low, "ci_high": x.ci_high,
                    "rel_error_vs_reference": rel_err(x),
                })).collect::<Vec<_>>()).unwrap_or_default(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{} ({}): {}", sc.name, sc.kind, sc.description);
        let mut rows = Vec::new();
        for r in &runs {
            match &r.result {
                Ok(recs) => {
                    for x in recs {
                        let e = if Some(&r.backend) == reference.as_ref() {
                            "(reference)".to_string()
                        } else {
                            rel_err(x).map_or(String::new(), |e| format!("{:+.1}%", 100.0 * e))
                        };
                        rows.push(vec![
                            r.backend.clone(),
                            r.fidelity.as_str().to_string(),
                            x.metric.clone(),
                            fmt_value(x.value),
                            x.unit.symbol().to_string(),
                            fmt_ci(x),
                            e,
                        ]);
                    }
                }
                Err(why) => rows.push(vec![
                    r.backend.clone(),
                    r.fidelity.as_str().to_string(),
                    "-".into(),
                    why.to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]),
            }
        }
        print!(
            "{}",
            trainlab_reports::markdown_table(
                &[
                    "backend",
                    "fidelity",
                    "metric",
                    "value",
                    "unit",
                    "95% CI",
                    "error vs reference"
                ],
                &rows
            )
        );
    }
    if runs.iter().all(|r| r.result.is_err()) {
        // Surface a user error (bad input, fits nowhere) as itself so the exit code is 2.
        let mut runs = runs;
        if let Some(pos) = runs
            .iter()
            .position(|r| r.result.as_ref().err().is_some_and(|e| e.is_user_error()))
        {
            let r = runs.swap_remove(pos);
            if let Err(e) = r.result {
                return Err(anyhow::Error::new(e).context(format!("backend `{}` on `{}`", r.backend, sc.name)));
            }
        }
        let why: Vec<String> = runs
            .iter()
            .filter_map(|r| r.result.as_ref().err().map(|e| format!("{}: {e}", r.backend)))
            .collect();
        anyhow::bail!("no backend produced an answer: {}", why.join("; "));
    }
    write_out(&all, out, &format!("{}-compare", sc.name), json)
}
