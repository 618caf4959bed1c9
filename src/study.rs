//! Studies over any kind: a base scenario, a grid (or list) of overrides by field path, every case answered through
//! the kind table, in parallel, with deterministic shards for a cluster scheduler's array jobs.
//!
//! Two study forms, one engine:
//! - `kind = "study"` with a `[study]` table: `base` (an embedded scenario name or a path relative to the study
//!   file), optional `backends` (default: the kind's analytical and simulated backends; name measured ones
//!   explicitly), `[study.grid]` (field path under `[workload]` -> list of values; the cases are the cartesian product,
//!   first key slowest) and/or `[[study.cases]]` (one table of field path -> value per case; with a grid, each case
//!   is crossed with the grid).
//! - `kind = "plan"` with a `[plan]` table: the dense-training layout study (models x GPU counts), answered by the
//!   `analytical` backend's layout search; the default study of `trainlab plan`.
//!
//! Every case's parameters become columns (`param.<path>`) of the records table, never metrics or parsed labels.
//! Case `i` derives its seed as `seed.index(i)`; shard `I/N` takes the cases with `i % N == I`; [`canonical_sort`]
//! orders records the same way for a single run and a merge, so a merge writes the same bytes as a single run.
use crate::kinds::{self, Group, Kind, Opts, Request};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use trainlab_core::workloads::{DenseTraining, Downtime, ParallelConfig, Recompute, TrainingJob, TransformerSpec};
use trainlab_core::{Dtype, Error, Fidelity, GpuSpec, Param, Record, RunCtx, Workload};
use trainlab_datasets::scenario::Scenario;

/// The `[study]` table of a `kind = "study"` scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudySpec {
    /// The base scenario: an embedded name or a path (relative to the study file).
    pub base: String,
    /// Backends to run on every case; default: the kind's analytical and simulated backends.
    #[serde(default)]
    pub backends: Option<Vec<String>>,
    /// Field path under `[workload]` -> values; the cases are the cartesian product (first key slowest).
    #[serde(default)]
    pub grid: toml::Table,
    /// Explicit cases, each a table of field path -> value.
    #[serde(default)]
    pub cases: Vec<toml::Table>,
    /// Runs of every case with different seeds (a `replica` parameter column, 0-based); default 1.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Common random numbers: replica `r` of every case runs with the seed `seed.index(r)`, so cases differ only by
    /// their parameters (same corpora, same initial weights), as an ablation wants. Default: each case its own seed.
    #[serde(default)]
    pub common_seed: bool,
}

fn one() -> u32 {
    1
}

/// The `[plan]` table of a `kind = "plan"` scenario: the dense-training layout study.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// GPU preset (expanded from its name).
    pub gpu: GpuSpec,
    /// GPUs per node.
    #[serde(default = "eight")]
    pub gpus_per_node: u32,
    /// Cluster sizes to plan for, in GPUs (multiples of `gpus_per_node`).
    pub gpu_counts: Vec<u64>,
    /// Training tokens.
    pub train_tokens: f64,
    /// Tokens per optimizer step.
    pub global_batch_tokens: u64,
    /// Compute type.
    #[serde(default = "bf16")]
    pub dtype: Dtype,
    /// The models.
    pub models: Vec<TransformerSpec>,
    /// A `training_job` scenario (embedded name or path) whose failure rates, detection policies and checkpoint and
    /// restart costs every case also answers with: its expected ETTR, and days and GPU-hours including downtime.
    #[serde(default)]
    pub downtime_from: Option<String>,
    /// Backends of `dense_training` answering every case (default: `analytical` alone). With `op_sim` as well, the
    /// table shows the simulator's step and, where it differs, its layout (it re-ranks the closed form's fastest
    /// layouts by simulation).
    #[serde(default)]
    pub backends: Option<Vec<String>>,
}

/// That every name in `names` is a backend of the kind (`all`), else an input error at `field` listing them.
fn check_backends(names: &[String], all: &[kinds::BackendInfo], kind: &str, field: &str) -> Result<(), Error> {
    match names.iter().find(|n| !all.iter().any(|x| &x.name == *n)) {
        None => Ok(()),
        Some(n) => {
            let known: Vec<String> = all.iter().map(|x| x.name.clone()).collect();
            Err(kinds::unknown_backend(field, kind, n, &known))
        }
    }
}

fn eight() -> u32 {
    8
}
fn bf16() -> Dtype {
    Dtype::Bf16
}

/// What the report of a study shows (kept beside shards so that `merge` renders the same report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Study name.
    pub study: String,
    /// Description.
    pub description: String,
    /// The workload kind of every case.
    pub kind: String,
    /// The study seed.
    pub seed: u64,
    /// `plan` (dense layout study) or `study`.
    pub form: String,
    /// The parameter paths, in grid order.
    pub params: Vec<String>,
    /// Total cases.
    pub cases: usize,
    /// The metrics the report shows first (the kind's headline).
    pub headline: Vec<String>,
    /// How device efficiencies were set (`datasheet defaults` or the profile's provenance).
    pub efficiencies: String,
    /// What every case assumes, as (what, assumed) pairs: the head of the report.
    #[serde(default)]
    pub assumptions: Vec<(String, String)>,
}

/// One case of a study.
#[derive(Debug, Clone)]
pub struct Case {
    /// Position in the study (sharding key).
    pub index: usize,
    /// Label, e.g. `llama2-7b@1024xh100-sxm` or `moe-switch-capacity[capacity_factor=1.5]`.
    pub label: String,
    /// The case's parameters (path, value), in grid order.
    pub params: Vec<(String, Param)>,
    /// The case as a scenario of the study's kind.
    pub scenario: Scenario,
}

/// A study ready to run: its kind, cases and backends.
pub struct Study {
    /// The kind of every case.
    pub kind: &'static dyn Kind,
    /// The cases, in order.
    pub cases: Vec<Case>,
    /// Backends to run on each case.
    pub backends: Vec<String>,
    /// What the report shows.
    pub manifest: Manifest,
}

fn param_of(v: &toml::Value) -> Param {
    match v {
        toml::Value::Integer(i) => Param::Num(*i as f64),
        toml::Value::Float(f) => Param::Num(*f),
        toml::Value::String(s) => Param::Text(s.clone()),
        toml::Value::Boolean(b) => Param::Text(b.to_string()),
        toml::Value::Table(t) => match t.get("name").and_then(toml::Value::as_str) {
            Some(n) => Param::Text(n.to_string()),
            None => Param::Text(toml::to_string(t).unwrap_or_default().trim().replace('\n', ", ")),
        },
        other => Param::Text(other.to_string()),
    }
}

/// Sets `path` (dotted; a numeric segment indexes an array) in `table` to `value`, creating tables on the way.
fn set_path(table: &mut toml::Table, path: &str, value: toml::Value, field: &str) -> Result<(), Error> {
    let segs: Vec<&str> = path.split('.').collect();
    let why = if segs.iter().any(|s| s.is_empty()) {
        Err("empty segment in the field path".to_string())
    } else {
        set_in_table(table, &segs, value)
    };
    why.map_err(|why| {
        Error::invalid(
            field,
            path,
            why,
            "name a field of the base scenario's [workload] table, e.g. `capacity_factor` or `cluster.nodes`",
        )
    })
}

fn set_in_table(t: &mut toml::Table, segs: &[&str], value: toml::Value) -> Result<(), String> {
    let Some((seg, rest)) = segs.split_first() else {
        return Err("empty field path".into());
    };
    if rest.is_empty() {
        t.insert(seg.to_string(), value);
        return Ok(());
    }
    let next = t
        .entry(seg.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    set_in_value(next, rest, value)
}

fn set_in_value(v: &mut toml::Value, segs: &[&str], value: toml::Value) -> Result<(), String> {
    match v {
        toml::Value::Table(t) => set_in_table(t, segs, value),
        toml::Value::Array(a) => {
            let Some((seg, rest)) = segs.split_first() else {
                return Err("empty field path".into());
            };
            let idx: usize = seg
                .parse()
                .map_err(|_| format!("`{seg}`: an array needs a numeric index here"))?;
            let len = a.len();
            let slot = a
                .get_mut(idx)
                .ok_or_else(|| format!("index {idx} is beyond the array's {len} entries"))?;
            if rest.is_empty() {
                *slot = value;
                Ok(())
            } else {
                set_in_value(slot, rest, value)
            }
        }
        _ => Err("a field on the way is neither a table nor an array".into()),
    }
}

fn expand_grid(grid: &toml::Table, origin: &str) -> Result<Vec<Vec<(String, toml::Value)>>, Error> {
    let mut cases: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
    for (path, values) in grid {
        let values = values.as_array().ok_or_else(|| {
            Error::invalid(
                format!("{origin}: study.grid.{path}"),
                values,
                "a grid entry must be a list of values",
                format!("write `{path} = [v1, v2, ...]`"),
            )
        })?;
        if values.is_empty() {
            return Err(Error::invalid(
                format!("{origin}: study.grid.{path}"),
                "[]",
                "an empty list makes no cases",
                "list at least one value",
            ));
        }
        let mut next = Vec::with_capacity(cases.len() * values.len());
        for c in &cases {
            for v in values {
                let mut c = c.clone();
                c.push((path.clone(), v.clone()));
                next.push(c);
            }
        }
        cases = next;
    }
    Ok(cases)
}

fn flatten_case(t: &toml::Table, prefix: &str, out: &mut Vec<(String, toml::Value)>) {
    for (k, v) in t {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        out.push((path, v.clone()));
    }
}

/// Loads a study scenario (`kind = "study"` or `"plan"`) into cases.
pub fn load(sc: &Scenario, opts: &Opts) -> Result<Study, Error> {
    match sc.kind.as_str() {
        "plan" => load_plan(sc, opts),
        "study" => load_study(sc, opts),
        other => Err(Error::invalid(
            format!("{}: kind", sc.origin),
            format!("\"{other}\""),
            "`plan` takes a study (kind = \"study\" or \"plan\")",
            format!(
                "use `trainlab compare {}` for a single workload, or write a study over it",
                sc.name
            ),
        )),
    }
}

/// The downtime model of a plan: the failures, policies and costs of the `training_job` scenario `name` (an embedded
/// name, or a path relative to the plan file).
fn downtime_of(sc: &Scenario, name: &str) -> Result<Downtime, Error> {
    let field = format!("{}: plan.downtime_from", sc.origin);
    let p = Path::new(name);
    let rel = Path::new(&sc.origin).parent().map(|d| d.join(p));
    let path = match rel {
        Some(r) if !p.is_absolute() && r.exists() => r.display().to_string(),
        _ => name.to_string(),
    };
    let base = trainlab_datasets::scenario::load(&path).map_err(|e| e.map_field(|f| format!("{field} -> {f}")))?;
    if base.kind != TrainingJob::KIND {
        return Err(Error::invalid(
            field,
            name,
            format!("a `{}` scenario, not a `training_job`", base.kind),
            "name a training_job scenario with failure rates, e.g. \"llama3-405b\"",
        ));
    }
    let job: TrainingJob = base
        .workload()
        .map_err(|e| e.map_field(|f| format!("{field} -> {f}")))?;
    if job.schedule.is_some() || job.failures.is_empty() {
        return Err(Error::invalid(
            field,
            name,
            "a plan needs failure rates, and this job has a fault schedule or no failures",
            "name a training_job scenario with [[workload.failures]], e.g. \"llama3-405b\"",
        ));
    }
    Ok(Downtime {
        failures: job.failures,
        policies: job.policies,
        checkpoint_cost_s: job.checkpoint_cost_s,
        restart_cost_s: job.restart_cost_s,
        detection: job.detection,
    })
}

fn load_study(sc: &Scenario, opts: &Opts) -> Result<Study, Error> {
    let spec: StudySpec = sc.body_as("study")?;
    let base_path = {
        let p = Path::new(&spec.base);
        let rel = Path::new(&sc.origin).parent().map(|d| d.join(p));
        match rel {
            Some(r) if !p.is_absolute() && r.exists() => r.display().to_string(),
            _ => spec.base.clone(),
        }
    };
    let base = trainlab_datasets::scenario::load(&base_path).map_err(|e| match e {
        Error::Invalid { .. } => e.map_field(|f| format!("{}: study.base -> {f}", sc.origin)),
        // A base that cannot be found or read: name the field that points at it.
        other if other.is_user_error() => Error::invalid(
            format!("{}: study.base", sc.origin),
            &spec.base,
            other.to_string(),
            "name an embedded scenario (`trainlab scenarios` lists them) or a scenario file",
        ),
        other => other,
    })?;
    if base.kind == "study" || base.kind == "plan" {
        return Err(Error::invalid(
            format!("{}: study.base", sc.origin),
            &spec.base,
            "the base of a study is a single-workload scenario, not another study",
            "name a scenario of a workload kind",
        ));
    }
    let kind = kinds::find(&base.kind).map_err(|e| e.map_field(|_| format!("{}: study.base", sc.origin)))?;
    // The base itself must be valid, so that errors below are about the overrides.
    kind.workload_json(&base)?;
    let all = kind.backends(opts)?;
    let backends = match &spec.backends {
        Some(b) => {
            check_backends(b, &all, kind.name(), &format!("{}: study.backends", sc.origin))?;
            b.clone()
        }
        None => all
            .iter()
            .filter(|b| b.fidelity != Fidelity::Measured)
            .map(|b| b.name.clone())
            .collect(),
    };
    let grid = expand_grid(&spec.grid, &sc.origin)?;
    let explicit: Vec<Vec<(String, toml::Value)>> = if spec.cases.is_empty() {
        vec![Vec::new()]
    } else {
        spec.cases
            .iter()
            .map(|t| {
                let mut v = Vec::new();
                flatten_case(t, "", &mut v);
                v
            })
            .collect()
    };
    let mut param_names: Vec<String> = Vec::new();
    let mut cases = Vec::new();
    trainlab_core::error::check::at_least(&format!("{}: study.replicas", sc.origin), u64::from(spec.replicas), 1)?;
    trainlab_core::error::check::at_most(
        &format!("{}: study.replicas", sc.origin),
        u64::from(spec.replicas),
        10_000,
        "a study of that many seeds per case belongs on a cluster: split it",
    )?;
    let replicas: Vec<Option<u32>> = if spec.replicas > 1 {
        (0..spec.replicas).map(Some).collect()
    } else {
        vec![None]
    };
    for e in &explicit {
        for g in &grid {
            for &replica in &replicas {
                let overrides: Vec<(String, toml::Value)> = e.iter().chain(g.iter()).cloned().collect();
                let index = cases.len();
                let mut body = base.body.clone();
                for (path, v) in &overrides {
                    if !param_names.contains(path) {
                        param_names.push(path.clone());
                    }
                    set_path(&mut body, path, v.clone(), &format!("{}: study.grid.{path}", sc.origin))?;
                }
                let mut params: Vec<(String, Param)> =
                    overrides.iter().map(|(p, v)| (p.clone(), param_of(v))).collect();
                if let Some(r) = replica {
                    params.push(("replica".into(), Param::Num(f64::from(r))));
                    if !param_names.iter().any(|p| p == "replica") {
                        param_names.push("replica".into());
                    }
                }
                let label = if params.is_empty() {
                    base.name.clone()
                } else {
                    let inner: Vec<String> = params.iter().map(|(p, v)| format!("{p}={v}")).collect();
                    format!("{}[{}]", base.name, inner.join(","))
                };
                let scenario = Scenario {
                    name: label.clone(),
                    kind: base.kind.clone(),
                    description: base.description.clone(),
                    seed: if spec.common_seed {
                        sc.seed.index(u64::from(replica.unwrap_or(0)))
                    } else {
                        sc.seed.index(index as u64)
                    },
                    body,
                    origin: format!("{} case {index} ({label})", sc.origin),
                };
                cases.push(Case {
                    index,
                    label,
                    params,
                    scenario,
                });
            }
        }
    }
    let assumptions = study_assumptions(&spec, &base, &backends, &param_names, cases.len(), opts);
    Ok(Study {
        kind,
        backends,
        manifest: Manifest {
            study: sc.name.clone(),
            description: sc.description.clone(),
            kind: kind.name().to_string(),
            seed: sc.seed.0,
            form: "study".into(),
            assumptions,
            params: param_names,
            cases: cases.len(),
            headline: kind.headline().iter().map(|s| s.to_string()).collect(),
            efficiencies: efficiencies(opts),
        },
        cases,
    })
}

fn load_plan(sc: &Scenario, opts: &Opts) -> Result<Study, Error> {
    let spec: PlanSpec = sc.body_as("plan")?;
    let origin = &sc.origin;
    if spec.models.is_empty() {
        return Err(Error::invalid(
            format!("{origin}: plan.models"),
            "[]",
            "no models",
            "add [[plan.models]]",
        ));
    }
    if spec.gpu_counts.is_empty() {
        return Err(Error::invalid(
            format!("{origin}: plan.gpu_counts"),
            "[]",
            "no cluster sizes",
            "list GPU counts, e.g. [1024, 2048]",
        ));
    }
    let downtime = match &spec.downtime_from {
        None => None,
        Some(name) => Some(downtime_of(sc, name)?),
    };
    let mut cases = Vec::new();
    for m in &spec.models {
        for (j, &g) in spec.gpu_counts.iter().enumerate() {
            if g == 0 || spec.gpus_per_node == 0 || g % u64::from(spec.gpus_per_node) != 0 {
                return Err(Error::invalid(
                    format!("{origin}: plan.gpu_counts[{j}]"),
                    g,
                    format!("must be a positive multiple of gpus_per_node = {}", spec.gpus_per_node),
                    "use whole nodes",
                ));
            }
            let nodes = u32::try_from(g / u64::from(spec.gpus_per_node)).map_err(|_| {
                Error::invalid(
                    format!("{origin}: plan.gpu_counts[{j}]"),
                    g,
                    "too many nodes",
                    "use fewer GPUs",
                )
            })?;
            let cluster = trainlab_datasets::gpus::cluster(&spec.gpu.name, nodes, spec.gpus_per_node)?;
            let workload = DenseTraining {
                downtime: downtime.clone(),
                ..DenseTraining::new(
                    m.clone(),
                    cluster,
                    spec.global_batch_tokens,
                    spec.train_tokens,
                    spec.dtype,
                )
            };
            workload
                .validate()
                .map_err(|e| e.map_field(|f| format!("{origin}: {}", f.replace("workload.", "plan."))))?;
            let body = match toml::Value::try_from(&workload) {
                Ok(toml::Value::Table(t)) => t,
                _ => return Err(Error::Backend("internal: cannot encode a dense workload".into())),
            };
            let index = cases.len();
            let label = format!("{}@{}x{}", m.name, g, spec.gpu.name);
            cases.push(Case {
                index,
                label: label.clone(),
                params: vec![
                    ("model".into(), Param::Text(m.name.clone())),
                    ("gpus".into(), Param::Num(g as f64)),
                ],
                scenario: Scenario {
                    name: label.clone(),
                    kind: DenseTraining::KIND.into(),
                    description: sc.description.clone(),
                    seed: sc.seed.index(index as u64),
                    body,
                    origin: format!("{origin} case {index} ({label})"),
                },
            });
        }
    }
    let backends = match &spec.backends {
        None => vec!["analytical".to_string()],
        Some(b) => {
            let all = kinds::dense::KIND.backends(opts)?;
            check_backends(b, &all, DenseTraining::KIND, &format!("{origin}: plan.backends"))?;
            if !b.iter().any(|n| n == "analytical") {
                return Err(Error::invalid(
                    format!("{origin}: plan.backends"),
                    format!("{b:?}"),
                    "the plan's table and charts are the closed form's answers",
                    "include \"analytical\"",
                ));
            }
            b.clone()
        }
    };
    Ok(Study {
        kind: &kinds::dense::KIND,
        backends,
        manifest: Manifest {
            study: sc.name.clone(),
            description: sc.description.clone(),
            kind: DenseTraining::KIND.into(),
            seed: sc.seed.0,
            form: "plan".into(),
            assumptions: plan_assumptions(&spec, downtime.as_ref(), opts),
            params: vec!["model".into(), "gpus".into()],
            cases: cases.len(),
            headline: kinds::dense::KIND.headline.iter().map(|s| s.to_string()).collect(),
            efficiencies: efficiencies(opts),
        },
        cases,
    })
}

/// What a generic study's cases share: the base scenario, the backends, the grid and the seeds.
fn study_assumptions(
    spec: &StudySpec,
    base: &Scenario,
    backends: &[String],
    params: &[String],
    cases: usize,
    opts: &Opts,
) -> Vec<(String, String)> {
    let mut v = vec![
        (
            "base scenario".to_string(),
            format!("{} (kind {}): every field not in the grid", base.name, base.kind),
        ),
        ("backends".into(), backends.join(", ")),
        (
            "grid".into(),
            format!(
                "{cases} cases over {}",
                if params.is_empty() {
                    "-".into()
                } else {
                    params.join(", ")
                }
            ),
        ),
        (
            "seeds".into(),
            if spec.common_seed {
                "common random numbers: replica r of every case uses seed.index(r)".into()
            } else {
                "case i uses seed.index(i)".into()
            },
        ),
        ("device efficiencies".into(), efficiencies(opts)),
    ];
    if opts.network != crate::kinds::NetworkChoice::AlphaBeta {
        v.push((
            "network".into(),
            format!(
                "{}: collectives timed on the flow-level fabric simulator (sim/src/fabric_net.rs)",
                opts.network.as_str()
            ),
        ));
    }
    if spec.replicas > 1 {
        v.push(("replicas".into(), format!("{} runs per case", spec.replicas)));
    }
    v
}

/// What every case of a dense layout plan assumes: the cluster, the batch, the search space, the network and the
/// failure model (or its absence).
fn plan_assumptions(spec: &PlanSpec, downtime: Option<&Downtime>, opts: &Opts) -> Vec<(String, String)> {
    let g = &spec.gpu;
    let gib = (1u64 << 30) as f64;
    let sizes: Vec<String> = spec.gpu_counts.iter().map(|&n| thousands(n as f64)).collect();
    let seqs: Vec<String> = spec
        .models
        .iter()
        .map(|m| {
            format!(
                "{} {} sequences of {}",
                m.name,
                thousands((spec.global_batch_tokens / m.seq_len.max(1)) as f64),
                thousands(m.seq_len as f64)
            )
        })
        .collect();
    let failures = match (downtime, &spec.downtime_from) {
        (Some(d), Some(from)) => format!(
            "{} failure classes from the `{from}` training_job scenario; checkpoints at the Young/Daly interval, {} s \
             per write, {} s restart; policies {}; intervals are 95%, from the Poisson count of faults over the run",
            d.failures.len(),
            d.checkpoint_cost_s,
            d.restart_cost_s,
            d.policies.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
        ),
        _ => "none: days and GPU-hours assume no failure and no restart (set plan.downtime_from)".into(),
    };
    vec![
        (
            "GPU".into(),
            format!(
                "{}: {:.0} GiB, {:.0} TFLOP/s dense {}, {} per node",
                g.name,
                g.memory_bytes as f64 / gib,
                g.peak(spec.dtype) / 1e12,
                spec.dtype.as_str(),
                spec.gpus_per_node
            ),
        ),
        ("cluster sizes".into(), format!("{} GPUs", sizes.join(", "))),
        ("training tokens".into(), thousands(spec.train_tokens)),
        (
            "global batch".into(),
            format!(
                "{} tokens per step ({})",
                thousands(spec.global_batch_tokens as f64),
                seqs.join("; ")
            ),
        ),
        ("device efficiencies".into(), efficiencies(opts)),
        ("layout search".into(), trainlab_models::search::SEARCH_SPACE.into()),
        (
            "communication".into(),
            "alpha-beta collectives on the NVLink and NIC bandwidths of the GPU preset; data-parallel gradient \
             reduction overlapped with the backward pass, tensor-parallel collectives not overlapped"
                .into(),
        ),
        (
            "network congestion".into(),
            match opts.network {
                crate::kinds::NetworkChoice::AlphaBeta => "none: an ideal non-blocking fabric".into(),
                n => format!(
                    "{}: the chosen layout's inter-node collectives re-timed on the flow-level fabric simulator \
                     (sim/src/fabric_net.rs)",
                    n.as_str()
                ),
            },
        ),
        ("failures".into(), failures),
        (
            "backends".into(),
            match &spec.backends {
                Some(b) if b.iter().any(|n| n == "op_sim") => format!(
                    "{}: the table and charts are the closed form's; `op_sim` simulates the closed form's 16 fastest \
                     fitting layouts operation by operation and answers with the fastest (with a flow-level network, \
                     the closed form's pick), its step and layout in the table's last columns",
                    b.join(", ")
                ),
                Some(b) => b.join(", "),
                None => "analytical (the closed form and its layout search)".into(),
            },
        ),
    ]
}

/// How the report describes the device efficiencies a run used.
fn efficiencies(opts: &Opts) -> String {
    if opts.profiles.is_empty() {
        "datasheet defaults".into()
    } else {
        opts.profiles
            .items
            .iter()
            .map(|p| {
                format!(
                    "calibrated {} profile ({}, {})",
                    p.kind, p.provenance.device, p.provenance.date
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Parses `I/N`.
pub fn parse_shard(s: &str) -> Result<(usize, usize), Error> {
    let bad = || Error::invalid("--shard", s, "expected I/N with 0 <= I < N", "e.g. --shard 0/4");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let i: usize = i.trim().parse().map_err(|_| bad())?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// The answer for one case.
#[derive(Debug)]
pub struct CaseResult {
    /// The case's index.
    pub index: usize,
    /// The case's label.
    pub label: String,
    /// The case's parameters.
    pub params: Vec<(String, Param)>,
    /// Its answers (grouped by workload), or why it has none.
    pub groups: Result<Vec<Group>, Error>,
}

impl CaseResult {
    /// The case's records (every group, every successful answer).
    pub fn records(&self, study: &str, kind: &str, seed: u64) -> Vec<Record> {
        match &self.groups {
            Ok(gs) => gs
                .iter()
                .flat_map(|g| g.records(study, kind, seed, &self.params))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
    /// Why the case has no answer at all: the case error, or every backend's error on the asked workload.
    pub fn failure(&self) -> Option<String> {
        match &self.groups {
            Err(e) => Some(e.to_string()),
            Ok(gs) => {
                let g = gs.first()?;
                if g.answers.iter().any(|a| a.result.is_ok()) {
                    None
                } else {
                    Some(
                        g.answers
                            .iter()
                            .filter_map(|a| a.result.as_ref().err().map(|e| format!("{}: {e}", a.backend)))
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                }
            }
        }
    }
}

/// Runs `cases` (in parallel; results in input order). Cases not started when `cancel` is set are left out.
/// `on_done` sees each finished case as it finishes (in completion order), before the whole run returns.
pub fn run_cases(
    study: &Study,
    cases: &[Case],
    opts: &Opts,
    cancel: &Arc<AtomicBool>,
    on_done: &(dyn Fn(&CaseResult) + Sync),
) -> Vec<CaseResult> {
    let only = study.backends.clone();
    let out: Vec<Option<CaseResult>> = cases
        .par_iter()
        .map(|case| {
            if cancel.load(Ordering::Relaxed) {
                return None;
            }
            let mut ctx = RunCtx::new(case.scenario.seed);
            ctx.cancel = cancel.clone();
            let req = Request {
                only: Some(&only),
                follow_scaled: false,
                label: &case.label,
            };
            let groups = study.kind.answer(&case.scenario, opts, &req, &mut ctx);
            // A case cut short by the interruption is not done: a resumed run runs it again.
            let interrupted = |e: &Error| matches!(e, Error::Interrupted);
            let cut = match &groups {
                Err(e) => interrupted(e),
                Ok(gs) => gs
                    .iter()
                    .flat_map(|g| &g.answers)
                    .any(|a| a.result.as_ref().is_err_and(interrupted)),
            };
            if cut {
                return None;
            }
            let r = CaseResult {
                index: case.index,
                label: case.label.clone(),
                params: case.params.clone(),
                groups,
            };
            on_done(&r);
            Some(r)
        })
        .collect();
    out.into_iter().flatten().collect()
}

/// The canonical record order of study outputs, used by single runs and merges alike so both write the same bytes.
pub fn canonical_sort(records: &mut [Record]) {
    trainlab_reports::sort_records(records);
}

/// An index of records by (case, backend, metric) -> value, built once (lookups are O(1), so tables over many
/// cases stay linear).
pub struct Index<'a> {
    map: std::collections::HashMap<(&'a str, &'a str, &'a str), &'a Record>,
    /// Cases in first-seen order.
    pub cases: Vec<&'a str>,
}

impl<'a> Index<'a> {
    /// Indexes `records`.
    pub fn new(records: &'a [Record]) -> Self {
        let mut map = std::collections::HashMap::with_capacity(records.len());
        let mut seen = std::collections::HashSet::new();
        let mut cases = Vec::new();
        for r in records {
            map.entry((r.case.as_str(), r.backend.as_str(), r.metric.as_str()))
                .or_insert(r);
            if seen.insert(r.case.as_str()) {
                cases.push(r.case.as_str());
            }
        }
        Index { map, cases }
    }
    /// The record of `case`, `backend`, `metric`.
    pub fn get(&self, case: &str, backend: &str, metric: &str) -> Option<&'a Record> {
        self.map.get(&(case, backend, metric)).copied()
    }
}

/// A case parameter of a record.
pub fn param<'a>(r: &'a Record, name: &str) -> Option<&'a Param> {
    r.params.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// Files written by [`write_manifest`] and read by `merge`.
pub const MANIFEST: &str = "study.json";

/// Writes the manifest beside the records.
pub fn write_manifest(m: &Manifest, out: &Path) -> Result<PathBuf, Error> {
    write_json(m, out.join(MANIFEST))
}

/// What a shard writes beside its records (`records-shard-I-of-N.json`): which study it belongs to, exactly. `merge`
/// accepts only shards with one fingerprint, each index once, every index below N, record counts as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    /// The study's manifest.
    pub manifest: Manifest,
    /// FNV-1a of everything that decides the shard's records: the manifest, the backends, every case's scenario
    /// (body and seed), the profiles' bytes, the tool version and git revision (see [`fingerprint`]).
    pub fingerprint: String,
    /// Shard index I.
    pub index: usize,
    /// Shard count N.
    pub of: usize,
    /// Records in the shard's Parquet.
    pub records: usize,
    /// The profile files the shard read (names only), for messages.
    pub profiles: Vec<String>,
    /// The shard's cases without an answer: (label, reason).
    #[serde(default)]
    pub failures: Vec<(String, String)>,
    /// False when the shard was interrupted before all its cases ran (`merge` refuses it; running the same shard
    /// into the same folder again keeps its finished cases and runs the rest).
    #[serde(default = "yes")]
    pub complete: bool,
    /// Indices of the shard's cases that ran (answered or failed), ascending: what a re-run of an interrupted shard
    /// keeps. Empty in shards written before it existed (such a shard re-runs whole).
    #[serde(default)]
    pub done: Vec<usize>,
}

fn yes() -> bool {
    true
}

/// The name of the description a whole (unsharded) run writes beside its records.
pub const RUN_INFO: &str = "run.json";

/// What a whole (unsharded) run writes beside its records (`run.json`): which study, exactly, and which of its
/// cases are done, so that `plan --resume DIR` runs only the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInfo {
    /// The study's manifest.
    pub manifest: Manifest,
    /// As [`ShardInfo::fingerprint`].
    pub fingerprint: String,
    /// Indices of the cases that ran (answered or failed), ascending.
    pub done: Vec<usize>,
    /// Cases in the study.
    pub asked: usize,
    /// Records in `records.parquet`.
    pub records: usize,
    /// The profile files the run read (names only).
    pub profiles: Vec<String>,
    /// Cases without an answer: (label, reason).
    pub failures: Vec<(String, String)>,
}

/// Writes a run's [`RunInfo`] as `run.json` in `out`, atomically.
pub fn write_run_info(info: &RunInfo, out: &Path) -> Result<PathBuf, Error> {
    write_json(info, out.join(RUN_INFO))
}

/// Reads a run's [`RunInfo`].
pub fn read_run_info(p: &Path) -> Result<RunInfo, Error> {
    read_json(p, "a run description", "run the study again without --resume")
}

/// Writes `value` as pretty JSON to `p`, atomically (a temporary file in the same folder, then a rename).
fn write_json<T: Serialize>(value: &T, p: PathBuf) -> Result<PathBuf, Error> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Backend(format!("internal: {e}")))?;
    trainlab_reports::write_atomic(&p, (text + "\n").as_bytes())?;
    Ok(p)
}

/// Reads JSON written by [`write_json`]; a file of another shape is bad input naming `what` it should be.
fn read_json<T: serde::de::DeserializeOwned>(p: &Path, what: &str, fix: &str) -> Result<T, Error> {
    let text = std::fs::read_to_string(p).map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::invalid(
            p.display().to_string(),
            "(see reason)",
            format!("not {what} of this trainlab version: {e}"),
            fix,
        )
    })
}

/// The fingerprint of a study as run with `profile_bytes` (see [`ShardInfo::fingerprint`]).
pub fn fingerprint(s: &Study, profile_bytes: &[u8]) -> String {
    let mut text = serde_json::to_string(&s.manifest).unwrap_or_default();
    text.push_str(&s.backends.join(","));
    for c in &s.cases {
        text.push_str(&format!("\n{} {} {}", c.index, c.scenario.seed.0, c.scenario.body));
    }
    text.push_str(env!("CARGO_PKG_VERSION"));
    text.push_str(env!("TRAINLAB_GIT_REV"));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(profile_bytes);
    format!("{:016x}", trainlab_core::seed::fnv1a(&bytes))
}

/// Writes a shard's [`ShardInfo`] as `records-shard-I-of-N.json` in `out`.
pub fn write_shard_info(info: &ShardInfo, out: &Path) -> Result<PathBuf, Error> {
    write_json(
        info,
        out.join(format!("records-shard-{}-of-{}.json", info.index, info.of)),
    )
}

/// Reads a shard's [`ShardInfo`].
pub fn read_shard_info(p: &Path) -> Result<ShardInfo, Error> {
    read_json(p, "a shard description", "re-run the shard with this trainlab")
}

/// Reads a manifest written by [`write_manifest`].
pub fn read_manifest(dir: &Path) -> Result<Manifest, Error> {
    read_json(
        &dir.join(MANIFEST),
        "a study manifest",
        "use the folder the shards of one `trainlab plan` wrote",
    )
}

/// A numeric case parameter as f64.
pub fn num(p: Option<&Param>) -> Option<f64> {
    match p? {
        Param::Num(x) => Some(*x),
        Param::Text(_) => None,
    }
}

/// The parameters of a case, in grid order, as a map (for JSON).
pub fn params_json(params: &[(String, Param)]) -> BTreeMap<String, serde_json::Value> {
    params
        .iter()
        .map(|(k, v)| {
            let j = match v {
                Param::Num(x) => serde_json::json!(x),
                Param::Text(s) => serde_json::json!(s),
            };
            (k.clone(), j)
        })
        .collect()
}

/// A value for tables: 4 decimals in a readable range, else scientific.
pub fn fmt_value(v: f64) -> String {
    if v == 0.0 || (1e-3..1e5).contains(&v.abs()) {
        format!("{v:.4}")
    } else {
        format!("{v:.4e}")
    }
}

/// The dense layout study's table, one row per case, from records alone (so merged shards give the same table):
/// ordered by model, then GPU count.
fn layout_rows(records: &[Record]) -> (Vec<String>, Vec<Vec<String>>) {
    let idx = Index::new(records);
    let mut cases: Vec<(&str, String, f64)> = idx
        .cases
        .iter()
        .filter_map(|c| {
            let r = idx.get(c, "analytical", "step_time")?;
            let model = match param(r, "model")? {
                Param::Text(s) => s.clone(),
                Param::Num(x) => x.to_string(),
            };
            Some((*c, model, num(param(r, "gpus")).unwrap_or(f64::NAN)))
        })
        .collect();
    cases.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.total_cmp(&b.2)));
    // Policies with a downtime answer (a plan with `downtime_from`), in a fixed order.
    let policies: Vec<&str> = ["c4d", "baseline"]
        .into_iter()
        .filter(|p| {
            let m = format!("ettr.{p}");
            cases.iter().any(|(c, _, _)| idx.get(c, "analytical", &m).is_some())
        })
        .collect();
    // With the simulator among the backends: its step and, where it chose another, its layout.
    let simulated = cases
        .iter()
        .any(|(c, _, _)| idx.get(c, "op_sim", "step_time").is_some());
    let rows = cases
        .iter()
        .map(|(case, _, _)| {
            let get = |n: &str| idx.get(case, "analytical", n).map_or(f64::NAN, |r| r.value);
            let layout_of = |backend: &str| {
                let get = |n: &str| idx.get(case, backend, n).map_or(f64::NAN, |r| r.value);
                let mut layout = ParallelConfig::new(
                    get("tp") as u64,
                    get("pp") as u64,
                    get("dp") as u64,
                    get("micro_batch") as u64,
                    Recompute::from_level(get("recompute_level") as u8).unwrap_or_default(),
                );
                layout.cp = (get("cp") as u64).max(1);
                layout.virtual_stages = (get("virtual_stages") as u64).max(1);
                layout.sequence_parallel = get("sequence_parallel") != 0.0;
                // The optimizer sharding and end-stage trim the search chose (in the label when not the defaults).
                let z = get("zero_stage");
                layout.zero_stage = if z.is_finite() { z as u8 } else { 1 };
                let t = get("trim_end_stages");
                layout.trim_end_stages = if t.is_finite() { t as u64 } else { 0 };
                layout
            };
            let layout = layout_of("analytical");
            let shares: Vec<(&str, f64)> = SHARES
                .iter()
                .map(|(m, l)| (*l, get(&format!("step_share.{m}"))))
                .collect();
            let mut row = vec![
                case.to_string(),
                layout.label(),
                format!("{:.3}", get("step_time")),
                format!("{:.1}%", 100.0 * get("mfu")),
                format!("{:.2}", get("train_days")),
                thousands(get("gpu_hours")),
                format!("{:.1}", get("memory_per_gpu") / (1u64 << 30) as f64),
                step_split(&shares),
                bottleneck(&shares, get("memory_fraction")),
            ];
            for p in &policies {
                let with_ci = |m: String, f: &dyn Fn(f64) -> String| match idx.get(case, "analytical", &m) {
                    Some(r) => match (r.ci_low, r.ci_high) {
                        (Some(l), Some(h)) => format!("{} [{}–{}]", f(r.value), f(l), f(h)),
                        _ => f(r.value),
                    },
                    None => "-".into(),
                };
                row.push(with_ci(format!("ettr.{p}"), &|x| format!("{x:.3}")));
                row.push(with_ci(format!("days_with_downtime.{p}"), &|x| format!("{x:.2}")));
                row.push(thousands(get(&format!("gpu_hours_with_downtime.{p}"))));
            }
            if simulated {
                match idx.get(case, "op_sim", "step_time") {
                    Some(r) => {
                        row.push(format!(
                            "{:.3} ({:+.1}%)",
                            r.value,
                            100.0 * (get("step_time") / r.value - 1.0)
                        ));
                        let sim = layout_of("op_sim");
                        row.push(if sim == layout { "same".into() } else { sim.label() });
                    }
                    None => row.extend(["-".to_string(), "-".to_string()]),
                }
            }
            row
        })
        .collect();
    let mut headers: Vec<String> = [
        "case",
        "layout",
        "step (s)",
        "MFU",
        "days",
        "GPU-hours",
        "mem/GPU (GiB)",
        "step: compute · bubble · TP · PP · CP/ZeRO-3 · DP · optimizer (%)",
        "bottleneck",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for p in &policies {
        headers.push(format!("ETTR {p}"));
        headers.push(format!("days incl. downtime {p}"));
        headers.push(format!("GPU-hours incl. downtime {p}"));
    }
    if simulated {
        headers.push("op_sim step (s) (closed form vs it)".into());
        headers.push("op_sim layout".into());
    }
    (headers, rows)
}

/// The step shares a dense answer reports (`step_share.<metric>`), with their labels, in the order of
/// [`StepSplit::named`](trainlab_core::workloads::StepSplit::named).
const SHARES: [(&str, &str); 7] = [
    ("compute", "compute"),
    ("bubble", "pipeline bubble"),
    ("tp_comm", "TP comm"),
    ("pp_comm", "PP comm"),
    ("other_comm", "CP/ZeRO-3 comm"),
    ("dp_comm", "DP comm"),
    ("optimizer", "optimizer"),
];

/// Where a layout's step goes: its seven shares in percent (`52 · 40 · 5 · 0 · 0 · 2 · 1`).
fn step_split(shares: &[(&str, f64)]) -> String {
    if shares.iter().any(|(_, x)| !x.is_finite()) {
        return "-".into();
    }
    shares
        .iter()
        .map(|(_, x)| format!("{:.0}", 100.0 * x))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// The bottleneck of a layout: the largest share of the step after compute, or compute when every other cause
/// is under 10% of the step; `memory` is added when the layout fills over 90% of the GPU's memory (memory then
/// forced the split, recomputation or pipeline depth).
fn bottleneck(shares: &[(&str, f64)], memory_fraction: f64) -> String {
    if shares.iter().any(|(_, x)| !x.is_finite()) {
        return "-".into();
    }
    let worst = shares
        .iter()
        .skip(1)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .copied()
        .unwrap_or(("compute", 0.0));
    let mut s = if worst.1 < 0.10 {
        format!("compute ({:.0}%)", 100.0 * shares[0].1)
    } else {
        format!("{} ({:.0}%)", worst.0, 100.0 * worst.1)
    };
    if memory_fraction > 0.9 {
        s.push_str(&format!(" · memory ({:.0}% full)", 100.0 * memory_fraction));
    }
    s
}

/// `x` rounded to a whole number with thousands separators (`535,770`); `-` for NaN.
pub fn thousands(x: f64) -> String {
    if x.is_finite() {
        trainlab_reports::format_thousands(x)
    } else {
        "-".into()
    }
}

/// The metrics a generic study shows: the kind's headline metrics that are present, else the first `n`.
pub fn shown_metrics<'a>(m: &'a Manifest, records: &'a [Record], n: usize) -> Vec<&'a str> {
    let present: std::collections::HashSet<&str> = records.iter().map(|r| r.metric.as_str()).collect();
    let mut v: Vec<&str> = m
        .headline
        .iter()
        .map(String::as_str)
        .filter(|h| present.contains(h))
        .collect();
    if v.is_empty() {
        for r in records {
            if !v.contains(&r.metric.as_str()) && v.len() < n {
                v.push(&r.metric);
            }
        }
    }
    v.truncate(n);
    v
}

/// Orders parameter values: numbers by value, before texts (by text).
fn cmp_params(a: &[Option<&Param>], b: &[Option<&Param>]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = match (x, y) {
            (Some(Param::Num(x)), Some(Param::Num(y))) => x.total_cmp(y),
            (Some(Param::Num(_)), _) => std::cmp::Ordering::Less,
            (_, Some(Param::Num(_))) => std::cmp::Ordering::Greater,
            (Some(Param::Text(x)), Some(Param::Text(y))) => x.cmp(y),
            (x, y) => x.is_some().cmp(&y.is_some()),
        };
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    std::cmp::Ordering::Equal
}

/// A generic study's table: one row per (case, backend), its parameters and the headline metrics, ordered by the
/// parameters (numerically), then backend.
fn generic_rows(m: &Manifest, records: &[Record]) -> (Vec<String>, Vec<Vec<String>>) {
    let metrics = shown_metrics(m, records, 6);
    let mut keys: Vec<(&str, &str, &Record)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in records {
        if seen.insert((r.case.as_str(), r.backend.as_str())) {
            keys.push((&r.case, &r.backend, r));
        }
    }
    let pv = |r: &Record| -> Vec<Option<Param>> { m.params.iter().map(|p| param(r, p).cloned()).collect() };
    keys.sort_by(|a, b| {
        let (x, y) = (pv(a.2), pv(b.2));
        let (x, y): (Vec<Option<&Param>>, Vec<Option<&Param>>) = (
            x.iter().map(Option::as_ref).collect(),
            y.iter().map(Option::as_ref).collect(),
        );
        cmp_params(&x, &y).then(a.0.cmp(b.0)).then(a.1.cmp(b.1))
    });
    let idx = Index::new(records);
    let rows = keys
        .iter()
        .map(|(case, backend, any)| {
            let mut row = vec![backend.to_string()];
            for p in &m.params {
                row.push(param(any, p).map_or(String::new(), |v| v.to_string()));
            }
            for x in &metrics {
                row.push(idx.get(case, backend, x).map_or(String::new(), |r| fmt_value(r.value)));
            }
            row
        })
        .collect();
    let mut headers = vec!["backend".to_string()];
    headers.extend(m.params.iter().cloned());
    headers.extend(metrics.iter().map(|s| s.to_string()));
    (headers, rows)
}

/// The study's summary table (headers, rows): the dense layout table for a `plan` study, else one row per case and
/// backend with its parameters and headline metrics. Built from records alone, in time linear in their number.
pub fn summary_table(m: &Manifest, records: &[Record]) -> (Vec<String>, Vec<Vec<String>>) {
    if m.form == "plan" {
        layout_rows(records)
    } else {
        generic_rows(m, records)
    }
}
