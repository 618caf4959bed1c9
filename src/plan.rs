//! `trainlab plan` and `trainlab merge`: a study of dense-training cases (models x GPU counts), each answered by the
//! analytical step model's search for the fastest layout that fits, split into deterministic shards for a cluster
//! scheduler's array jobs.
//!
//! Shard `I/N` takes the cases whose index `i` satisfies `i % N == I` (cases are numbered models-major in the order
//! of the scenario). Each shard writes `records-shard-I-of-N.parquet`/`.csv`; `merge` checks that all N are present
//! and writes the same tables and report a single run writes (both use [`canonical_sort`]).
use crate::cli::{MergeArgs, PlanArgs, UsageError, ctx, load_profile};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use trainlab_core::workloads::{DenseTraining, ParallelConfig, Recompute, TransformerSpec};
use trainlab_core::{Backend, DeviceProfile, Dtype, Error, GpuSpec, Outcome, Record, Seed};
use trainlab_models::dense::DenseAnalytical;
use trainlab_reports::{ChartKind, ChartSpec, HtmlReport, Series};

/// The `[plan]` table of a `kind = "plan"` scenario.
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
}

fn eight() -> u32 {
    8
}
fn bf16() -> Dtype {
    Dtype::Bf16
}

/// One case of the study.
#[derive(Debug, Clone)]
pub struct Case {
    /// Position in the study (sharding key).
    pub index: usize,
    /// Label, e.g. `llama2-7b@1024xh100-sxm`.
    pub label: String,
    /// The workload.
    pub workload: DenseTraining,
}

impl PlanSpec {
    /// Validates and expands into cases.
    pub fn cases(&self, origin: &str) -> Result<Vec<Case>, Error> {
        if self.models.is_empty() {
            return Err(Error::invalid(
                format!("{origin}: plan.models"),
                "[]",
                "no models",
                "add [[plan.models]]",
            ));
        }
        if self.gpu_counts.is_empty() {
            return Err(Error::invalid(
                format!("{origin}: plan.gpu_counts"),
                "[]",
                "no cluster sizes",
                "list GPU counts, e.g. [1024, 2048]",
            ));
        }
        let mut out = Vec::new();
        for m in &self.models {
            for (j, &g) in self.gpu_counts.iter().enumerate() {
                if g == 0 || g % self.gpus_per_node as u64 != 0 {
                    return Err(Error::invalid(
                        format!("{origin}: plan.gpu_counts[{j}]"),
                        g,
                        format!("must be a positive multiple of gpus_per_node = {}", self.gpus_per_node),
                        "use whole nodes",
                    ));
                }
                let nodes = u32::try_from(g / self.gpus_per_node as u64).map_err(|_| {
                    Error::invalid(
                        format!("{origin}: plan.gpu_counts[{j}]"),
                        g,
                        "too many nodes",
                        "use fewer GPUs",
                    )
                })?;
                let cluster = trainlab_datasets::gpus::cluster(&self.gpu.name, nodes, self.gpus_per_node)?;
                let workload = DenseTraining {
                    model: m.clone(),
                    cluster,
                    global_batch_tokens: self.global_batch_tokens,
                    train_tokens: self.train_tokens,
                    dtype: self.dtype,
                    parallel: None,
                    overlap_comm: true,
                };
                use trainlab_core::Workload;
                workload
                    .validate()
                    .map_err(|e| e.map_field(|f| format!("{origin}: {}", f.replace("workload.", "plan."))))?;
                out.push(Case {
                    index: out.len(),
                    label: format!("{}@{}x{}", m.name, g, self.gpu.name),
                    workload,
                });
            }
        }
        Ok(out)
    }
}

/// Parses `I/N`.
pub fn parse_shard(s: &str) -> Result<(usize, usize), UsageError> {
    let bad = || {
        UsageError(format!(
            "invalid `--shard` = {s}: expected I/N with 0 <= I < N, e.g. 0/4"
        ))
    };
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let i: usize = i.trim().parse().map_err(|_| bad())?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

/// The answer for one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case.
    pub case: Case,
    /// Its records, or why it has none (fits nowhere).
    pub records: Result<Vec<Record>, String>,
    /// The chosen layout's label.
    pub layout: Option<String>,
}

/// Runs the cases of one shard in order (the search inside each case is parallel and deterministic).
pub fn run_cases(
    study: &str,
    cases: &[Case],
    profile: Option<&DeviceProfile>,
    seed: Seed,
    cancel: &Arc<AtomicBool>,
    show_progress: bool,
) -> Vec<CaseResult> {
    let bar = if show_progress {
        let b = ProgressBar::new(cases.len() as u64);
        b.set_style(
            ProgressStyle::with_template("{spinner} plan [{bar:30}] {pos}/{len} cases {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let mut out = Vec::with_capacity(cases.len());
    for case in cases {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        bar.set_message(case.label.clone());
        let mut backend = DenseAnalytical {
            profile: profile.cloned(),
        };
        let mut c = ctx(seed, cancel);
        let res = backend.run(&case.workload, &mut c);
        let (records, layout) = match res {
            Ok(o) => {
                let recs = o
                    .metrics()
                    .iter()
                    .map(|m| {
                        Record::from_metric(
                            study,
                            "dense_training",
                            &case.label,
                            backend.name(),
                            backend.fidelity(),
                            seed.0,
                            m,
                        )
                    })
                    .collect();
                (Ok(recs), Some(o.config.label()))
            }
            Err(e) => (Err(e.to_string()), None),
        };
        out.push(CaseResult {
            case: case.clone(),
            records,
            layout,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    out
}

/// `trainlab plan`.
pub fn run(a: &PlanArgs, seed_override: Option<u64>, cancel: &Arc<AtomicBool>) -> Result<()> {
    let name = a.scenario.as_deref().unwrap_or("default-plan");
    let sc = trainlab_datasets::scenario::load(name)?;
    if sc.kind != "plan" {
        return Err(UsageError(format!(
            "scenario `{}` has kind \"{}\"; `plan` takes kind = \"plan\" (use `trainlab compare` for single workloads)",
            sc.name, sc.kind
        ))
        .into());
    }
    let spec: PlanSpec = sc.body_as("plan")?;
    let cases = spec.cases(&sc.origin)?;
    let seed = seed_override.map(Seed).unwrap_or(sc.seed);
    let profile = a.profile.as_deref().map(load_profile).transpose()?;
    let shard = a.shard.as_deref().map(parse_shard).transpose()?;
    let mine: Vec<Case> = match shard {
        Some((i, n)) => cases.iter().filter(|c| c.index % n == i).cloned().collect(),
        None => cases.clone(),
    };
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(format!("creating {}", a.out.display()), e))?;
    let results = run_cases(&sc.name, &mine, profile.as_ref(), seed, cancel, !a.json);
    let interrupted = results.len() < mine.len();
    let mut records: Vec<Record> = results
        .iter()
        .flat_map(|r| r.records.clone().unwrap_or_default())
        .collect();
    canonical_sort(&mut records);
    let feasible = results.iter().filter(|r| r.records.is_ok()).count();
    for r in &results {
        if let Err(why) = &r.records {
            eprintln!("warning: case {} skipped: {why}", r.case.label);
        }
    }
    if feasible == 0 && !results.is_empty() {
        let why = results
            .iter()
            .filter_map(|r| r.records.as_ref().err().map(|e| format!("{}: {e}", r.case.label)))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::invalid(
            format!("{}: plan.models", sc.origin),
            "(all cases)",
            why,
            "add GPUs or use a smaller model",
        )
        .into());
    }
    let mut written: Vec<PathBuf> = Vec::new();
    match shard {
        Some((i, n)) => {
            let stem = format!("records-shard-{i}-of-{n}");
            let (pq, csv) = trainlab_reports::write_records(&records, &a.out, &stem)?;
            written.extend([pq, csv]);
        }
        None => {
            written.extend(write_outputs(
                &sc.name,
                &sc.description,
                seed,
                &records,
                &a.out,
                &efficiencies(profile.as_ref()),
            )?);
        }
    }
    if a.json {
        let cases_json: Vec<_> = results
            .iter()
            .map(|r| {
                let metric = |name: &str| {
                    r.records
                        .as_ref()
                        .ok()
                        .and_then(|v| v.iter().find(|x| x.metric == name).map(|x| x.value))
                };
                serde_json::json!({
                    "case": r.case.label, "index": r.case.index, "layout": r.layout,
                    "step_time_s": metric("step_time"), "mfu": metric("mfu"), "train_days": metric("train_days"),
                    "gpu_hours": metric("gpu_hours"), "error": r.records.as_ref().err(),
                })
            })
            .collect();
        let v = serde_json::json!({
            "study": sc.name, "seed": seed.0, "shard": a.shard, "interrupted": interrupted,
            "outputs": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "cases": cases_json,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let (headers, rows) = layout_rows(&records);
        print!("{}", trainlab_reports::markdown_table(&headers, &rows));
        for p in &written {
            println!("wrote {}", p.display());
        }
    }
    if interrupted {
        eprintln!(
            "interrupted after {} of {} cases; the files above hold those cases",
            results.len(),
            mine.len()
        );
    }
    Ok(())
}

/// The best-layout table, rebuilt from records alone (so merged shards give the same table).
fn layout_rows(records: &[Record]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut cases: Vec<&str> = Vec::new();
    for r in records {
        if !cases.contains(&r.case.as_str()) {
            cases.push(&r.case);
        }
    }
    // Readable order: by model, then by GPU count as a number (labels are `model@GPUSxgpu`).
    let gpus_of = |case: &str| -> u64 {
        case.split('@')
            .nth(1)
            .and_then(|g| g.split('x').next())
            .and_then(|g| g.parse().ok())
            .unwrap_or(0)
    };
    cases.sort_by_key(|c| (c.split('@').next().unwrap_or(c).to_string(), gpus_of(c)));
    let rows = cases
        .iter()
        .map(|case| {
            let get = |n: &str| {
                records
                    .iter()
                    .find(|r| r.case == *case && r.metric == n)
                    .map(|r| r.value)
                    .unwrap_or(f64::NAN)
            };
            let layout = ParallelConfig {
                tp: get("tp") as u64,
                pp: get("pp") as u64,
                dp: get("dp") as u64,
                micro_batch: get("micro_batch") as u64,
                recompute: Recompute::from_level(get("recompute_level") as u8).unwrap_or_default(),
                zero1: true,
            };
            vec![
                case.to_string(),
                layout.label(),
                format!("{:.3}", get("step_time")),
                format!("{:.1}%", 100.0 * get("mfu")),
                format!("{:.2}", get("train_days")),
                format!("{:.4e}", get("gpu_hours")),
                format!("{:.1}", get("memory_per_gpu") / (1u64 << 30) as f64),
            ]
        })
        .collect();
    (
        vec![
            "case",
            "layout",
            "step (s)",
            "MFU",
            "days",
            "GPU-hours",
            "mem/GPU (GiB)",
        ],
        rows,
    )
}

/// How the report describes the device efficiencies a run used.
fn efficiencies(profile: Option<&DeviceProfile>) -> String {
    profile.map_or("datasheet defaults".to_string(), |p| {
        format!("calibrated profile ({}, {})", p.provenance.device, p.provenance.date)
    })
}

/// Writes the full set of outputs for a complete study: records, charts, report.html.
pub fn write_outputs(
    study: &str,
    description: &str,
    seed: Seed,
    records: &[Record],
    out: &Path,
    efficiencies: &str,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let (pq, csv) = trainlab_reports::write_records(records, out, "records")?;
    written.extend([pq, csv]);
    // Charts: one series per model, x = GPUs.
    let mut models: Vec<String> = Vec::new();
    for r in records {
        let m = r.case.split('@').next().unwrap_or(&r.case).to_string();
        if !models.contains(&m) {
            models.push(m);
        }
    }
    let series_of = |metric: &str, scale: f64| -> Vec<Series> {
        models
            .iter()
            .map(|m| Series {
                name: m.clone(),
                points: records
                    .iter()
                    .filter(|r| r.metric == metric && r.case.split('@').next() == Some(m.as_str()))
                    .filter_map(|r| {
                        let g: f64 = r.case.split('@').nth(1)?.split('x').next()?.parse().ok()?;
                        Some((g, r.value * scale))
                    })
                    .collect::<Vec<_>>(),
            })
            .map(|mut s| {
                s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
                s
            })
            .collect()
    };
    let charts = [
        (
            "days",
            "Wall-clock days to train",
            "training days",
            series_of("train_days", 1.0),
        ),
        (
            "gpu_hours",
            "GPU-hours to train",
            "GPU-hours",
            series_of("gpu_hours", 1.0),
        ),
        (
            "mfu",
            "Model FLOPs utilisation of the best layout",
            "MFU (%)",
            series_of("mfu", 100.0),
        ),
    ];
    let mut report = HtmlReport::new(format!("trainlab plan: {study}"));
    report.paragraph(description);
    report.paragraph(&format!(
        "Seed {}. Device efficiencies: {}. Each case is answered by the analytical step model's search over \
         tensor/pipeline/data-parallel layouts, micro-batch sizes and recomputation, keeping the fastest that fits in \
         GPU memory.",
        seed.0, efficiencies
    ));
    for (stem, title, ylabel, series) in charts {
        let mut spec = ChartSpec::new(title, "GPUs", ylabel, ChartKind::Line);
        spec.series = series;
        spec.log_x = true;
        spec.log_y = stem != "mfu";
        let png = out.join(format!("{stem}.png"));
        let svg = out.join(format!("{stem}.svg"));
        trainlab_reports::render_chart(&spec, Some(&png), Some(&svg))?;
        written.extend([png, svg]);
        report.chart(&spec)?;
    }
    report.heading("Best layout per case");
    let (headers, rows) = layout_rows(records);
    report.table(&headers, &rows);
    report.heading("All records");
    report.table_records(records);
    let html = out.join("report.html");
    report.write(&html)?;
    written.push(html);
    Ok(written)
}

/// `trainlab merge`.
pub fn merge(a: &MergeArgs) -> Result<()> {
    let rd = std::fs::read_dir(&a.dir).map_err(|e| Error::io(format!("reading {}", a.dir.display()), e))?;
    let mut shards: Vec<(usize, usize, PathBuf)> = Vec::new();
    for entry in rd {
        let p = entry
            .map_err(|e| Error::io(format!("reading {}", a.dir.display()), e))?
            .path();
        let name = p.file_name().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        if let Some(rest) = name
            .strip_prefix("records-shard-")
            .and_then(|s| s.strip_suffix(".parquet"))
            && let Some((i, n)) = rest.split_once("-of-")
            && let (Ok(i), Ok(n)) = (i.parse(), n.parse())
        {
            shards.push((i, n, p));
        }
    }
    if shards.is_empty() {
        bail!(UsageError(format!(
            "no records-shard-I-of-N.parquet files in {}",
            a.dir.display()
        )));
    }
    shards.sort();
    let n = shards[0].1;
    if shards.iter().any(|s| s.1 != n) {
        bail!(UsageError("shards of different N in one folder".into()));
    }
    let have: Vec<usize> = shards.iter().map(|s| s.0).collect();
    let missing: Vec<usize> = (0..n).filter(|i| !have.contains(i)).collect();
    if !missing.is_empty() {
        bail!(UsageError(format!(
            "missing shards {missing:?} of {n} in {}",
            a.dir.display()
        )));
    }
    let paths: Vec<PathBuf> = shards.into_iter().map(|s| s.2).collect();
    let records = trainlab_reports::merge_parquet(&paths).context("merging shards")?;
    let mut records = records;
    canonical_sort(&mut records);
    let study = records.first().map(|r| r.study.clone()).unwrap_or_default();
    let seed = Seed(records.first().map(|r| r.seed).unwrap_or(0));
    let description = trainlab_datasets::scenario::load(&study)
        .map(|s| s.description)
        .unwrap_or_default();
    let out = a.out.clone().unwrap_or_else(|| a.dir.clone());
    std::fs::create_dir_all(&out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    let written = write_outputs(
        &study,
        &description,
        seed,
        &records,
        &out,
        "those the shards ran with (a --profile given to the shards is not recorded in the records)",
    )?;
    if a.json {
        let v = serde_json::json!({"study": study, "shards": n, "records": records.len(),
            "outputs": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>()});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("merged {n} shards, {} records", records.len());
        for p in &written {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}

/// The canonical record order of plan outputs, used by single runs and merges alike so both write the same bytes:
/// by study, case, backend, then metric name.
pub fn canonical_sort(records: &mut [Record]) {
    records.sort_by(|a, b| (&a.study, &a.case, &a.backend, &a.metric).cmp(&(&b.study, &b.case, &b.backend, &b.metric)));
}
