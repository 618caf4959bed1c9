//! `trainlab run` and `trainlab compare`: one scenario through its kind's backends, from the kind table.
//!
//! `compare` prints one table per workload answered: the one asked for and any other a backend ran instead (a
//! scaled-down real run, a CPU run of a GPU layer), each with its own reference (the kind's explicit choice) and
//! errors computed only within it.
use crate::cli::ctx;
use anyhow::Result;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use trainlab::kinds::{self, Group, NetworkChoice, Opts, Request};
use trainlab::profiles::Profiles;
use trainlab_core::{Error, Metric, Record, Seed};
use trainlab_datasets::scenario::Scenario;

/// The scenario and the seed to run it with.
fn load(arg: &str, seed: Option<u64>) -> Result<(Scenario, Seed)> {
    let sc = trainlab_datasets::scenario::load(arg)?;
    if sc.kind == "plan" || sc.kind == "study" {
        return Err(Error::invalid(
            format!("{}: kind", sc.origin),
            format!("\"{}\"", sc.kind),
            "this scenario is a study",
            format!("run it with `trainlab plan {}`", sc.name),
        )
        .into());
    }
    let s = seed.map(Seed).unwrap_or(sc.seed);
    Ok((sc, s))
}

use trainlab::study::fmt_value;

fn fmt_ci(m: &Metric) -> String {
    m.ci.map(|c| format!("[{}, {}]", fmt_value(c.low), fmt_value(c.high)))
        .unwrap_or_default()
}

fn write_out(records: &[Record], out: Option<&Path>, stem: &str, json: bool) -> Result<()> {
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let (pq, csv) = trainlab_reports::write_records(records, dir, stem)?;
        if !json {
            println!("wrote {}\nwrote {}", pq.display(), csv.display());
        }
    }
    Ok(())
}

fn profile_note(kind: &dyn kinds::Kind, profiles: &Profiles) -> Result<Option<String>> {
    let used = profiles.check_for(kind)?;
    Ok((!used.is_empty()).then(|| {
        used.iter()
            .map(|p| {
                format!(
                    "profile {} ({}, {} on {})",
                    p.path.display(),
                    p.kind,
                    p.provenance.date,
                    p.provenance.device
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }))
}

/// `trainlab run`.
#[allow(clippy::too_many_arguments)]
pub fn run_one(
    scenario: &str,
    backend: &str,
    profile: Option<&Path>,
    network: NetworkChoice,
    seed: Option<u64>,
    cancel: &Arc<AtomicBool>,
    json: bool,
    out: Option<&Path>,
) -> Result<()> {
    let (sc, s) = load(scenario, seed)?;
    let kind = kinds::find(&sc.kind).map_err(|e| e.map_field(|_| format!("{}: kind", sc.origin)))?;
    network.check_for(kind.name())?;
    let opts = Opts {
        profiles: Profiles::load_opt(profile)?,
        quick: false,
        network,
    };
    let note = profile_note(kind, &opts.profiles)?;
    let (mut c, bar) = ctx(s, cancel, json);
    let only = [backend.to_string()];
    let req = Request {
        only: Some(&only),
        follow_scaled: false,
        label: &network.label(&sc.name),
    };
    let groups = kind.answer(&sc, &opts, &req, &mut c);
    bar.finish_and_clear();
    let mut groups = groups?;
    let gi = groups
        .iter()
        .position(|g| !g.answers.is_empty())
        .ok_or_else(|| anyhow::anyhow!("no backend ran"))?;
    let metrics = match std::mem::replace(&mut groups[gi].answers[0].result, Ok(Vec::new())) {
        Ok(m) => {
            groups[gi].answers[0].result = Ok(m.clone());
            m
        }
        Err(e) => {
            let b = &groups[gi].answers[0].backend;
            // The backend asked for cannot answer this workload (another router, device or profile): a choice the
            // user can change, so exit 2 with the way out.
            let e = match e {
                Error::Unsupported(why) => Error::invalid(
                    "--backend",
                    b,
                    format!("cannot answer `{}`: {why}", sc.name),
                    format!(
                        "choose another backend of `{}` (`trainlab kinds` lists them), or use `compare`",
                        kind.name()
                    ),
                ),
                e => e,
            };
            return Err(anyhow::Error::new(e).context(format!("backend `{b}` on `{}`", sc.name)));
        }
    };
    let group = &groups[gi];
    let answer = &group.answers[0];
    let records = group.records(&network.label(&sc.name), kind.name(), s.0, &[]);
    if json {
        let v = serde_json::json!({
            "scenario": sc.name, "kind": kind.name(), "seed": s.0, "network": network.as_str(), "backend": answer.backend,
            "fidelity": answer.fidelity, "profile": answer.profile, "answered": group.workload,
            "scaled_by": group.scaled_by, "metrics": metrics,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} ({}) on {}",
            answer.backend,
            answer.fidelity.as_str(),
            network.label(&sc.name)
        );
        if group.scaled_by.is_some() {
            println!(
                "note: this backend answers another workload than the one asked: {}",
                group.label
            );
        }
        if let Some(n) = &note {
            println!("{n}");
        }
        let rows: Vec<Vec<String>> = metrics
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    fmt_value(m.value),
                    m.unit.symbol().to_string(),
                    fmt_ci(m),
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

fn group_rows(g: &Group) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for a in &g.answers {
        let name = match &a.profile {
            Some(p) => format!("{} ({p} profile)", a.backend),
            None => a.backend.clone(),
        };
        match &a.result {
            Ok(ms) => {
                for m in ms {
                    let e = if g.reference.as_deref() == Some(a.backend.as_str()) {
                        "(reference)".to_string()
                    } else {
                        g.versus_reference(&a.backend, m)
                            .map_or(String::new(), |v| v.to_string())
                    };
                    rows.push(vec![
                        name.clone(),
                        a.fidelity.as_str().to_string(),
                        m.name.clone(),
                        fmt_value(m.value),
                        m.unit.symbol().to_string(),
                        fmt_ci(m),
                        e,
                    ]);
                }
            }
            Err(why) => rows.push(vec![
                name.clone(),
                a.fidelity.as_str().to_string(),
                "-".into(),
                why.to_string(),
                String::new(),
                String::new(),
                String::new(),
            ]),
        }
    }
    rows
}

/// `trainlab compare`.
#[allow(clippy::too_many_arguments)]
pub fn compare(
    scenario: &str,
    profile: Option<&Path>,
    network: NetworkChoice,
    quick: bool,
    seed: Option<u64>,
    cancel: &Arc<AtomicBool>,
    json: bool,
    out: Option<&Path>,
) -> Result<()> {
    let (sc, s) = load(scenario, seed)?;
    let kind = kinds::find(&sc.kind).map_err(|e| e.map_field(|_| format!("{}: kind", sc.origin)))?;
    network.check_for(kind.name())?;
    let opts = Opts {
        profiles: Profiles::load_opt(profile)?,
        quick,
        network,
    };
    let note = profile_note(kind, &opts.profiles)?;
    let (mut c, bar) = ctx(s, cancel, json);
    let req = Request {
        only: None,
        follow_scaled: true,
        label: &network.label(&sc.name),
    };
    let groups = kind.answer(&sc, &opts, &req, &mut c);
    bar.finish_and_clear();
    let mut groups = groups?;
    let all: Vec<Record> = groups
        .iter()
        .flat_map(|g| g.records(&network.label(&sc.name), kind.name(), s.0, &[]))
        .collect();
    if json {
        let v = serde_json::json!({
            "scenario": sc.name, "kind": kind.name(), "seed": s.0, "network": network.as_str(), "profile": note,
            "workloads": groups.iter().map(|g| serde_json::json!({
                "label": g.label, "scaled_by": g.scaled_by, "reference": g.reference, "workload": g.workload,
                "backends": g.answers.iter().map(|a| serde_json::json!({
                    "backend": a.backend, "fidelity": a.fidelity, "profile": a.profile,
                    "error": a.result.as_ref().err().map(|e| e.to_string()),
                    "metrics": a.result.as_ref().map(|ms| ms.iter().map(|m| {
                        let vs = g.versus_reference(&a.backend, m);
                        serde_json::json!({
                            "metric": m.name, "unit": m.unit, "value": m.value,
                            "ci_low": m.ci.map(|c| c.low), "ci_high": m.ci.map(|c| c.high),
                            "rel_error_vs_reference": match vs { Some(kinds::Versus::Error(e)) => Some(e), _ => None },
                            "same_as_reference": match vs { Some(kinds::Versus::Choice(b)) => Some(b), _ => None },
                        })
                    }).collect::<Vec<_>>()).unwrap_or_default(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{} ({}): {}", sc.name, kind.name(), sc.description);
        if let Some(n) = &note {
            println!("{n}");
        }
        for g in &groups {
            if let Some(by) = &g.scaled_by {
                println!(
                    "\n`{by}` answers another workload than the one asked: {}\n(errors below are against this \
                     workload's reference, never across workloads)",
                    g.label
                );
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
                        "vs reference"
                    ],
                    &group_rows(g)
                )
            );
        }
    }
    if groups.iter().flat_map(|g| g.answers.iter()).all(|a| a.result.is_err()) {
        let why: Vec<String> = groups
            .iter()
            .flat_map(|g| g.answers.iter())
            .filter_map(|a| a.result.as_ref().err().map(|e| format!("{}: {e}", a.backend)))
            .collect();
        // Surface a user error (bad input, fits nowhere) as itself so that the exit code is 2.
        for g in &mut groups {
            for a in &mut g.answers {
                if a.result.as_ref().err().is_some_and(Error::is_user_error)
                    && let Err(e) = std::mem::replace(&mut a.result, Ok(Vec::new()))
                {
                    return Err(anyhow::Error::new(e).context(format!("backend `{}` on `{}`", a.backend, sc.name)));
                }
            }
        }
        anyhow::bail!("no backend produced an answer: {}", why.join("; "));
    }
    write_out(&all, out, &format!("{}-compare", sc.name), json)
}
