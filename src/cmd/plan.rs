//! `trainlab plan` and `trainlab merge`: studies over any kind (see [`trainlab::study`]), their shards and their
//! report (records as Parquet/CSV, charts as PNG/SVG, one self-contained `report.html`).
use crate::cli::{MergeArgs, PlanArgs, UsageError};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use trainlab::kinds::Opts;
use trainlab::profiles::Profiles;
use trainlab::study::{self, Manifest, canonical_sort, num, param, shown_metrics, summary_table};
use trainlab_core::{Error, Param, Record, Seed};
use trainlab_reports::{ChartKind, ChartSpec, HtmlReport, Series};

/// `trainlab plan`.
pub fn run(a: &PlanArgs, seed_override: Option<u64>, cancel: &Arc<AtomicBool>) -> Result<()> {
    let name = a.scenario.as_deref().unwrap_or("default-plan");
    let mut sc = trainlab_datasets::scenario::load(name)?;
    if let Some(s) = seed_override {
        sc.seed = Seed(s);
    }
    let opts = Opts {
        profiles: Profiles::load_opt(a.profile.as_deref())?,
        quick: false,
    };
    let study = study::load(&sc, &opts)?;
    opts.profiles.check_for(study.kind)?;
    let shard = a.shard.as_deref().map(study::parse_shard).transpose()?;
    let mine: Vec<study::Case> = match shard {
        Some((i, n)) => study.cases.iter().filter(|c| c.index % n == i).cloned().collect(),
        None => study.cases.clone(),
    };
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(format!("creating {}", a.out.display()), e))?;
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(mine.len() as u64);
        b.set_style(
            ProgressStyle::with_template("{spinner} plan [{bar:30}] {pos}/{len} cases ({elapsed}, eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b
    };
    let results = study::run_cases(&study, &mine, &opts, cancel, &|| bar.inc(1));
    bar.finish_and_clear();
    let interrupted = results.len() < mine.len();
    let m = &study.manifest;
    let mut records: Vec<Record> = results
        .iter()
        .flat_map(|r| r.records(&m.study, &m.kind, m.seed))
        .collect();
    canonical_sort(&mut records);
    let failures: Vec<(String, String)> = results
        .iter()
        .filter_map(|r| r.failure().map(|f| (r.label.clone(), f)))
        .collect();
    for (label, why) in &failures {
        eprintln!("warning: case {label} has no answer: {why}");
    }
    if !results.is_empty() && failures.len() == results.len() {
        let why = failures
            .iter()
            .map(|(l, w)| format!("{l}: {w}"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::invalid(
            format!("{}: cases", sc.origin),
            "(all cases)",
            why,
            "change the study (e.g. add GPUs or use a smaller model)",
        )
        .into());
    }
    let mut written: Vec<PathBuf> = Vec::new();
    match shard {
        Some((i, n)) => {
            let (pq, csv) = trainlab_reports::write_records(&records, &a.out, &format!("records-shard-{i}-of-{n}"))?;
            let (names, bytes) = profile_files(a.profile.as_deref())?;
            let info = study::ShardInfo {
                manifest: m.clone(),
                fingerprint: study::fingerprint(&study, &bytes),
                index: i,
                of: n,
                records: records.len(),
                profiles: names,
            };
            written.extend([
                pq,
                csv,
                study::write_shard_info(&info, &a.out)?,
                study::write_manifest(m, &a.out)?,
            ]);
        }
        None => written.extend(write_outputs(m, &records, &a.out)?),
    }
    if a.json {
        let cases: Vec<_> = results
            .iter()
            .map(|r| {
                let answers: serde_json::Map<String, serde_json::Value> = match &r.groups {
                    Ok(gs) => gs
                        .iter()
                        .flat_map(|g| g.answers.iter().map(move |x| (g, x)))
                        .map(|(g, x)| {
                            let key = if g.scaled_by.is_some() {
                                format!("{} ({})", x.backend, g.label)
                            } else {
                                x.backend.clone()
                            };
                            let v = match &x.result {
                                Ok(ms) => serde_json::Value::Object(
                                    ms.iter()
                                        .map(|m| (m.name.clone(), serde_json::json!(m.value)))
                                        .collect(),
                                ),
                                Err(e) => serde_json::json!({ "error": e.to_string() }),
                            };
                            (key, v)
                        })
                        .collect(),
                    Err(_) => serde_json::Map::new(),
                };
                serde_json::json!({
                    "case": r.label, "index": r.index, "params": study::params_json(&r.params),
                    "answers": answers, "error": r.failure(),
                })
            })
            .collect();
        let v = serde_json::json!({
            "study": m.study, "kind": m.kind, "seed": m.seed, "shard": a.shard, "interrupted": interrupted,
            "outputs": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "cases": cases,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let (headers, rows) = summary_table(m, &records);
        print!(
            "{}",
            trainlab_reports::markdown_table(&headers.iter().map(String::as_str).collect::<Vec<_>>(), &rows)
        );
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

fn plan_charts(records: &[Record]) -> Vec<(&'static str, ChartSpec)> {
    let mut models: Vec<String> = Vec::new();
    for r in records {
        if let Some(Param::Text(mname)) = param(r, "model")
            && !models.contains(mname)
        {
            models.push(mname.clone());
        }
    }
    let series_of = |metric: &str, scale: f64| -> Vec<Series> {
        models
            .iter()
            .map(|mname| {
                let mut points: Vec<(f64, f64)> = records
                    .iter()
                    .filter(|r| r.metric == metric && matches!(param(r, "model"), Some(Param::Text(x)) if x == mname))
                    .filter_map(|r| Some((num(param(r, "gpus"))?, r.value * scale)))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    name: mname.clone(),
                    points,
                }
            })
            .collect()
    };
    [
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
    ]
    .into_iter()
    .map(|(stem, title, ylabel, series)| {
        let mut spec = ChartSpec::new(title, "GPUs", ylabel, ChartKind::Line);
        spec.series = series;
        spec.log_x = true;
        spec.log_y = stem != "mfu";
        (stem, spec)
    })
    .collect()
}

/// Generic charts: the first three metrics against the first numeric parameter, one series per backend (and per
/// value of the second parameter, if any).
fn generic_charts(m: &Manifest, records: &[Record]) -> Vec<(String, ChartSpec)> {
    let Some(x) = m
        .params
        .iter()
        .find(|p| records.iter().any(|r| num(param(r, p)).is_some()))
    else {
        return Vec::new();
    };
    let second = m.params.iter().find(|p| *p != x);
    shown_metrics(m, records, 3)
        .iter()
        .map(|metric| {
            let mut series: Vec<Series> = Vec::new();
            for r in records.iter().filter(|r| r.metric == *metric) {
                let Some(xv) = num(param(r, x)) else { continue };
                let name = match second.and_then(|s| param(r, s).map(|v| format!("{s}={v}"))) {
                    Some(s) => format!("{} {s}", r.backend),
                    None => r.backend.clone(),
                };
                match series.iter_mut().find(|s| s.name == name) {
                    Some(s) => s.points.push((xv, r.value)),
                    None => series.push(Series {
                        name,
                        points: vec![(xv, r.value)],
                    }),
                }
            }
            for s in &mut series {
                s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
            let unit = records
                .iter()
                .find(|r| r.metric == *metric)
                .map_or("", |r| r.unit.symbol());
            let mut spec = ChartSpec::new(
                format!("{metric} vs {x}"),
                x.as_str(),
                format!("{metric} ({unit})"),
                ChartKind::Line,
            );
            spec.series = series;
            (metric.replace(['.', '/'], "_"), spec)
        })
        .collect()
}

/// Writes the full set of outputs of a complete study: records, manifest, charts, report.html.
pub fn write_outputs(m: &Manifest, records: &[Record], out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let (pq, csv) = trainlab_reports::write_records(records, out, "records")?;
    written.extend([pq, csv, study::write_manifest(m, out)?]);
    let charts: Vec<(String, ChartSpec)> = if m.form == "plan" {
        plan_charts(records)
            .into_iter()
            .map(|(s, c)| (s.to_string(), c))
            .collect()
    } else {
        generic_charts(m, records)
    };
    let mut report = HtmlReport::new(format!("trainlab plan: {}", m.study));
    report.paragraph(&m.description);
    let how = if m.form == "plan" {
        "Each case is answered by the analytical step model's search over tensor/pipeline/data-parallel layouts, \
         micro-batch sizes and recomputation, keeping the fastest that fits in GPU memory."
            .to_string()
    } else {
        format!(
            "{} cases of kind {}, answered by the kind's backends through the kind table; case i uses seed.index(i).",
            m.cases, m.kind
        )
    };
    report.paragraph(&format!(
        "Seed {}. Device efficiencies: {}. {how}",
        m.seed, m.efficiencies
    ));
    for (stem, spec) in charts {
        let png = out.join(format!("{stem}.png"));
        let svg = out.join(format!("{stem}.svg"));
        trainlab_reports::render_chart(&spec, Some(&png), Some(&svg))?;
        written.extend([png, svg]);
        report.chart(&spec)?;
    }
    report.heading(if m.form == "plan" {
        "Best layout per case"
    } else {
        "Cases"
    });
    let (headers, rows) = summary_table(m, records);
    report.table(&headers.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
    // The page stays readable (and small) for large studies: the records table shows the first rows; every record
    // is in records.parquet / records.csv.
    const SHOWN: usize = 2_000;
    if records.len() > SHOWN {
        report.heading(&format!("Records (first {SHOWN} of {})", records.len()));
        report.paragraph("All records are in records.parquet and records.csv beside this page.");
        report.table_records(&records[..SHOWN]);
    } else {
        report.heading("All records");
        report.table_records(records);
    }
    let html = out.join("report.html");
    report.write(&html)?;
    written.push(html);
    Ok(written)
}

/// The profile files given with `--profile` (a file, or the `*.toml` files of a folder in name order): their names
/// and their bytes (names and contents), for the shard fingerprint.
fn profile_files(p: Option<&Path>) -> Result<(Vec<String>, Vec<u8>)> {
    let Some(p) = p else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut files: Vec<PathBuf> = if p.is_dir() {
        std::fs::read_dir(p)
            .map_err(|e| Error::io(format!("reading {}", p.display()), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.extension().is_some_and(|x| x == "toml"))
            .collect()
    } else {
        vec![p.to_path_buf()]
    };
    files.sort();
    let (mut names, mut bytes) = (Vec::new(), Vec::new());
    for f in files {
        let name = f
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend(std::fs::read(&f).map_err(|e| Error::io(format!("reading {}", f.display()), e))?);
        names.push(name);
    }
    Ok((names, bytes))
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
    let name = |p: &Path| {
        p.file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default()
    };
    let n = shards[0].1;
    if let Some(s) = shards.iter().find(|s| s.1 != n) {
        bail!(UsageError(format!(
            "{} and {}: shards of different N in one folder (merge the shards of one `plan --shard I/N` run)",
            name(&shards[0].2),
            name(&s.2)
        )));
    }
    if let Some(s) = shards.iter().find(|s| s.0 >= n) {
        bail!(UsageError(format!(
            "{}: a stray shard (index {} of {n}: indices run from 0 to {})",
            name(&s.2),
            s.0,
            n - 1
        )));
    }
    let have: Vec<usize> = shards.iter().map(|s| s.0).collect();
    let missing: Vec<usize> = (0..n).filter(|i| !have.contains(i)).collect();
    if !missing.is_empty() {
        bail!(UsageError(format!(
            "missing shards {missing:?} of {n} in {}",
            a.dir.display()
        )));
    }
    // Every shard's description: one fingerprint (one study, one content, the same profiles), its own index.
    let mut infos = Vec::new();
    for (i, _, p) in &shards {
        let side = p.with_extension("json");
        if !side.exists() {
            bail!(UsageError(format!(
                "{}: no {} beside it (written by `trainlab plan --shard` with every shard); re-run that shard",
                name(p),
                name(&side)
            )));
        }
        let info = study::read_shard_info(&side)?;
        if info.index != *i || info.of != n {
            bail!(UsageError(format!(
                "{}: describes shard {}/{} but is named as shard {i}/{n} (a renamed or copied shard)",
                name(&side),
                info.index,
                info.of
            )));
        }
        infos.push((info, side));
    }
    let (first, first_path) = &infos[0];
    for (info, p) in &infos[1..] {
        if info.fingerprint != first.fingerprint {
            let what = if info.manifest.study != first.manifest.study {
                format!(
                    "different studies (`{}` and `{}`)",
                    first.manifest.study, info.manifest.study
                )
            } else if info.profiles != first.profiles {
                format!("different profiles ({:?} and {:?})", first.profiles, info.profiles)
            } else {
                format!(
                    "the same study name `{}` with different content (cases, backends, profiles or trainlab version)",
                    info.manifest.study
                )
            };
            bail!(UsageError(format!(
                "{} and {}: {what}; merge the shards of one `plan --shard I/N` run",
                name(first_path),
                name(p)
            )));
        }
    }
    let manifest = first.manifest.clone();
    let paths: Vec<PathBuf> = shards.into_iter().map(|s| s.2).collect();
    let mut records = Vec::new();
    for ((info, side), p) in infos.iter().zip(&paths) {
        let part =
            trainlab_reports::merge_parquet(std::slice::from_ref(p)).with_context(|| format!("reading {}", name(p)))?;
        if part.len() != info.records {
            bail!(UsageError(format!(
                "{}: {} records, but {} says {} were written (a truncated or replaced file)",
                name(p),
                part.len(),
                name(side),
                info.records
            )));
        }
        records.extend(part);
    }
    canonical_sort(&mut records);
    let out = a.out.clone().unwrap_or_else(|| a.dir.clone());
    std::fs::create_dir_all(&out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    let written = write_outputs(&manifest, &records, &out)?;
    if a.json {
        let v = serde_json::json!({"study": manifest.study, "shards": n, "records": records.len(),
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
