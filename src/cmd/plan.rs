//! `trainlab plan` and `trainlab merge`: studies over any kind (see [`trainlab::study`]), their shards and their
//! report (records as Parquet/CSV, charts as PNG/SVG, one self-contained `report.html`).
use crate::cli::{MergeArgs, PlanArgs, UsageError};
use crate::cmd::report::{Partial, write_outputs};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use trainlab::kinds::Opts;
use trainlab::profiles::Profiles;
use trainlab::study::{self, canonical_sort, summary_table};
use trainlab_core::{Error, Record, Seed};

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
        network: a.network,
    };
    let study = study::load(&sc, &opts)?;
    opts.profiles.check_for(study.kind)?;
    a.network.check_for(study.kind.name())?;
    let shard = a.shard.as_deref().map(study::parse_shard).transpose()?;
    let (names, profile_bytes) = profile_files(a.profile.as_deref())?;
    let fingerprint = study::fingerprint(&study, &profile_bytes);
    // A resumed run: what the earlier run of the same study finished (checked by fingerprint) is kept, only the
    // rest runs. A shard resumes by itself: run again into the same folder (a Slurm task requeued after preemption
    // or a lost node), an interrupted shard of the same study keeps its finished cases.
    let (out, prior) = match (&a.resume, shard) {
        (Some(dir), _) => (dir.clone(), Some(resume_state(dir, &fingerprint, &names, &study)?)),
        (None, Some((i, n))) => {
            let prior = shard_resume_state(&a.out, i, n, &fingerprint, &study)?;
            if let Some(p) = &prior {
                let of = study.cases.iter().filter(|c| c.index % n == i).count();
                eprintln!(
                    "note: shard {i}/{n} in {} was interrupted; keeping its {} finished cases of {of}, running the rest",
                    a.out.display(),
                    p.done.len()
                );
            }
            (a.out.clone(), prior)
        }
        (None, None) => (a.out.clone(), None),
    };
    let already: std::collections::HashSet<usize> = prior
        .as_ref()
        .map_or_else(Default::default, |p| p.done.iter().copied().collect());
    let mine: Vec<study::Case> = study
        .cases
        .iter()
        .filter(|c| shard.is_none_or(|(i, n)| c.index % n == i) && !already.contains(&c.index))
        .cloned()
        .collect();
    std::fs::create_dir_all(&out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    let bar = trainlab::progress::bar(mine.len() as u64, "plan: cases", a.json);
    // Once a few seconds of work show the pace, a study that will take over a minute says so (once), with how to
    // stop and continue it.
    let started = std::time::Instant::now();
    let (finished, warned) = (
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicBool::new(false),
    );
    let total = mine.len();
    // A run also saves what has finished every `checkpoint_every`: the records and `run.json` that `--resume` reads
    // (a shard: its records and its description, marked incomplete, that a re-run of the shard reads), so that even
    // a run killed without warning (SIGKILL, a lost node, a preempted Slurm task) keeps its cases.
    let checkpoint_every = checkpoint_interval()?;
    let checkpoint = std::sync::Mutex::new(Checkpoint {
        last: std::time::Instant::now(),
        finished: Vec::new(),
    });
    let m = &study.manifest;
    let on_done = |r: &study::CaseResult| {
        if let Some(every) = checkpoint_every {
            let mut c = checkpoint.lock().unwrap_or_else(|e| e.into_inner());
            c.finished.push((
                r.index,
                r.records(&m.study, &m.kind, m.seed),
                r.failure().map(|f| (r.label.clone(), f)),
            ));
            if c.last.elapsed() >= every {
                let saved = c.save(&out, &study, shard, prior.as_ref(), &fingerprint, &names);
                if let Err(e) = saved {
                    bar.suspend(|| eprintln!("warning: could not save a checkpoint in {}: {e}", out.display()));
                }
                c.last = std::time::Instant::now();
            }
        }
        bar.inc(1);
        let n = finished.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let spent = started.elapsed().as_secs_f64();
        let eta = spent / n as f64 * total.saturating_sub(n) as f64;
        if spent > 2.0 && eta > 60.0 && !warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            bar.suspend(|| {
                eprintln!(
                    "note: {total} cases at this pace take about {:.0} more minutes; Ctrl-C keeps the finished cases \
                     and `--resume {}` continues",
                    (eta / 60.0).ceil(),
                    out.display()
                )
            });
        }
    };
    let results = study::run_cases(&study, &mine, &opts, cancel, &on_done);
    bar.finish_and_clear();
    let interrupted = results.len() < mine.len();
    // With checkpoints the finished cases' records are built already (in completion order; sorted below).
    let checkpointed = checkpoint.into_inner().unwrap_or_else(|e| e.into_inner()).finished;
    let mut records: Vec<Record> = if checkpointed.len() == results.len() {
        checkpointed.into_iter().flat_map(|(_, recs, _)| recs).collect()
    } else {
        results
            .iter()
            .flat_map(|r| r.records(&m.study, &m.kind, m.seed))
            .collect()
    };
    let mut failures: Vec<(String, String)> = results
        .iter()
        .filter_map(|r| r.failure().map(|f| (r.label.clone(), f)))
        .collect();
    for (label, why) in &failures {
        eprintln!("warning: case {label} has no answer: {why}");
    }
    if prior.is_none() && !interrupted && !results.is_empty() && failures.len() == results.len() {
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
    let mut done: Vec<usize> = results.iter().map(|r| r.index).collect();
    if let Some(p) = prior {
        records.extend(p.records);
        failures.extend(p.failures);
        done.extend(p.done);
    }
    done.sort_unstable();
    canonical_sort(&mut records);
    // Failures by case label, so a resumed run and a merge of shards list them as a single run does.
    failures.sort();
    let mut written: Vec<PathBuf> = Vec::new();
    match shard {
        Some((i, n)) => {
            let (pq, csv) = trainlab_reports::write_records(&records, &out, &format!("records-shard-{i}-of-{n}"))?;
            let info = study::ShardInfo {
                manifest: m.clone(),
                fingerprint,
                index: i,
                of: n,
                records: records.len(),
                profiles: names,
                failures: failures.clone(),
                complete: !interrupted,
                done,
            };
            written.extend([
                pq,
                csv,
                study::write_shard_info(&info, &out)?,
                study::write_manifest(m, &out)?,
            ]);
        }
        None => {
            let asked = study.cases.len();
            let partial = (done.len() < asked).then_some(Partial {
                done: done.len(),
                asked,
            });
            written.extend(write_outputs(m, &records, &failures, partial, &out)?);
            let info = study::RunInfo {
                manifest: m.clone(),
                fingerprint,
                done,
                asked,
                records: records.len(),
                profiles: names,
                failures: failures.clone(),
            };
            written.push(study::write_run_info(&info, &out)?);
        }
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
        let how = match shard {
            Some(_) => "run the same command again to finish the shard: it keeps the finished cases \
                        (`merge` refuses an interrupted shard)"
                .to_string(),
            None => format!(
                "the files above hold those cases, marked partial; `trainlab plan {} --resume {}` runs the rest",
                a.scenario.as_deref().unwrap_or(""),
                out.display()
            ),
        };
        eprintln!("interrupted after {} of {} cases; {how}", results.len(), mine.len());
    }
    Ok(())
}

/// How often a whole `plan` run saves its finished cases: `TRAINLAB_CHECKPOINT_SECS` (seconds; 0 turns it off),
/// 30 s by default.
fn checkpoint_interval() -> Result<Option<std::time::Duration>> {
    let secs = match std::env::var("TRAINLAB_CHECKPOINT_SECS") {
        Err(_) => 30.0,
        Ok(v) => match v.trim().parse::<f64>() {
            Ok(x) if (0.0..=1e6).contains(&x) => x,
            _ => {
                return Err(Error::invalid(
                    "TRAINLAB_CHECKPOINT_SECS",
                    v,
                    "not a number of seconds between 0 and 1e6",
                    "set it to e.g. 30 (0 turns checkpoints off) or unset it",
                )
                .into());
            }
        },
    };
    Ok((secs > 0.0).then(|| std::time::Duration::from_secs_f64(secs)))
}

/// What an earlier run of the same study (or shard) finished: the cases, their failures and their records.
struct Prior {
    done: Vec<usize>,
    failures: Vec<(String, String)>,
    records: Vec<Record>,
}

/// The cases a run has finished since it started, saved now and then.
struct Checkpoint {
    last: std::time::Instant,
    finished: Vec<Finished>,
}

/// A finished case: its index, its records and its failure (label, reason).
type Finished = (usize, Vec<Record>, Option<(String, String)>);

impl Checkpoint {
    /// Writes the records of the earlier run (when resuming) and of the cases finished so far, then the description
    /// naming those cases: `run.json` for a whole run, the shard's `.json` marked incomplete for a shard (each file
    /// atomically; a kill between the two leaves records of cases the description does not name, which a resumed
    /// run drops).
    fn save(
        &self,
        out: &Path,
        study: &study::Study,
        shard: Option<(usize, usize)>,
        prior: Option<&Prior>,
        fingerprint: &str,
        profiles: &[String],
    ) -> Result<()> {
        let mut records: Vec<Record> = prior.map(|p| p.records.clone()).unwrap_or_default();
        let mut failures: Vec<(String, String)> = prior.map(|p| p.failures.clone()).unwrap_or_default();
        let mut done: Vec<usize> = prior.map(|p| p.done.clone()).unwrap_or_default();
        for (index, recs, failure) in &self.finished {
            records.extend(recs.iter().cloned());
            failures.extend(failure.clone());
            done.push(*index);
        }
        done.sort_unstable();
        canonical_sort(&mut records);
        failures.sort();
        match shard {
            Some((i, n)) => {
                trainlab_reports::write_records(&records, out, &format!("records-shard-{i}-of-{n}"))?;
                let info = study::ShardInfo {
                    manifest: study.manifest.clone(),
                    fingerprint: fingerprint.to_string(),
                    index: i,
                    of: n,
                    records: records.len(),
                    profiles: profiles.to_vec(),
                    failures,
                    complete: false,
                    done,
                };
                study::write_shard_info(&info, out)?;
            }
            None => {
                trainlab_reports::write_records(&records, out, "records")?;
                let info = study::RunInfo {
                    manifest: study.manifest.clone(),
                    fingerprint: fingerprint.to_string(),
                    done,
                    asked: study.cases.len(),
                    records: records.len(),
                    profiles: profiles.to_vec(),
                    failures,
                };
                study::write_run_info(&info, out)?;
            }
        }
        Ok(())
    }
}

/// Keeps only the records of the cases `done` names (a run killed between writing a checkpoint's records and its
/// description leaves records of cases the description does not name: those cases run again).
fn keep_named(records: &mut Vec<Record>, done: &[usize], study: &study::Study) {
    let named: std::collections::HashSet<&str> = done
        .iter()
        .filter_map(|&i| study.cases.get(i).map(|c| c.label.as_str()))
        .collect();
    records.retain(|r| named.contains(r.case.as_str()));
}

/// What an interrupted earlier run of shard `i/n` of the same study left in `dir`: `None` (the shard runs whole)
/// where there is no shard description, it is complete, of another study or version, or written before shards
/// named their finished cases; an error where its records do not match it.
fn shard_resume_state(
    dir: &Path,
    i: usize,
    n: usize,
    fingerprint: &str,
    study: &study::Study,
) -> Result<Option<Prior>> {
    let side = dir.join(format!("records-shard-{i}-of-{n}.json"));
    if !side.exists() {
        return Ok(None);
    }
    let Ok(info) = study::read_shard_info(&side) else {
        return Ok(None);
    };
    if info.complete || info.fingerprint != fingerprint || info.index != i || info.of != n || info.done.is_empty() {
        return Ok(None);
    }
    let pq = dir.join(format!("records-shard-{i}-of-{n}.parquet"));
    let mut records = if pq.exists() {
        trainlab_reports::read_records_parquet(&pq).with_context(|| format!("reading {}", pq.display()))?
    } else {
        Vec::new()
    };
    if records.len() > info.records {
        keep_named(&mut records, &info.done, study);
    }
    if records.len() != info.records {
        bail!(UsageError(format!(
            "--shard {i}/{n}: {} has {} records but {} says {} (a file replaced since); remove both or use a new --out",
            pq.display(),
            records.len(),
            side.display(),
            info.records
        )));
    }
    Ok(Some(Prior {
        done: info.done,
        failures: info.failures,
        records,
    }))
}

/// What an earlier run in `dir` finished: its description (which must be of the same study, with the same
/// profiles and trainlab) and its records.
fn resume_state(dir: &Path, fingerprint: &str, profiles: &[String], study: &study::Study) -> Result<Prior> {
    let side = dir.join(study::RUN_INFO);
    if !side.exists() {
        bail!(UsageError(format!(
            "--resume {}: no {} there (it is written by every `trainlab plan` run without --shard); \
             give the folder of an earlier run, or run without --resume",
            dir.display(),
            study::RUN_INFO
        )));
    }
    let info = study::read_run_info(&side)?;
    if info.fingerprint != fingerprint {
        let what = if info.profiles != profiles {
            format!("was run with the profiles {:?}, not {:?}", info.profiles, profiles)
        } else {
            format!(
                "holds the study `{}` with different content (cases, backends, seed or trainlab version)",
                info.manifest.study
            )
        };
        bail!(UsageError(format!(
            "--resume {}: {what}; resume with the same study and --profile, or use a new --out",
            dir.display()
        )));
    }
    let pq = dir.join("records.parquet");
    let mut records = if info.records == 0 && !pq.exists() {
        Vec::new()
    } else {
        trainlab_reports::read_records_parquet(&pq).with_context(|| format!("reading {}", pq.display()))?
    };
    // A run killed between writing a checkpoint's records and its run.json leaves records of cases run.json does
    // not name: those cases run again.
    if records.len() > info.records {
        keep_named(&mut records, &info.done, study);
    }
    if records.len() != info.records {
        bail!(UsageError(format!(
            "--resume {}: records.parquet has {} records but {} says {} (a file replaced since); use a new --out",
            dir.display(),
            records.len(),
            study::RUN_INFO,
            info.records
        )));
    }
    Ok(Prior {
        done: info.done,
        failures: info.failures,
        records,
    })
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
        if !info.complete {
            bail!(UsageError(format!(
                "{}: shard {i}/{n} was interrupted after {} of its cases; finish it with `trainlab plan STUDY \
                 --shard {i}/{n} --out {}` (it keeps the finished cases and runs the rest)",
                name(&side),
                info.done.len(),
                a.dir.display()
            )));
        }
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
    let mut failures: Vec<(String, String)> = Vec::new();
    for (info, _) in &infos {
        failures.extend(info.failures.iter().cloned());
    }
    failures.sort();
    let written = write_outputs(&manifest, &records, &failures, None, &out)?;
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
