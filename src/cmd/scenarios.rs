//! `trainlab scenarios` and `trainlab kinds`: what is embedded, and the kind table.
use crate::cli::{KindsArgs, ScenariosArgs, UsageError};
use anyhow::{Context, Result};
use trainlab::kinds::{self, Opts};
use trainlab_datasets::scenario::{EMBEDDED, parse};

/// `trainlab scenarios`.
pub fn scenarios(a: &ScenariosArgs) -> Result<()> {
    if let Some(name) = &a.show {
        let (_, text) = EMBEDDED.iter().find(|(n, _)| n == name).ok_or_else(|| {
            UsageError(format!(
                "no embedded scenario `{name}` (embedded: {})",
                EMBEDDED.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ))
        })?;
        print!("{text}");
        return Ok(());
    }
    let mut rows = Vec::new();
    for (name, text) in EMBEDDED {
        let s = parse(text, name).with_context(|| format!("embedded scenario {name}"))?;
        rows.push((s.name, s.kind, s.description));
    }
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(n, k, d)| serde_json::json!({"name": n, "kind": k, "description": d}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(4);
        let wk = rows.iter().map(|r| r.1.len()).max().unwrap_or(4);
        for (n, k, d) in rows {
            println!("{n:<w$}  {k:<wk$}  {d}");
        }
    }
    Ok(())
}

/// `trainlab kinds`: the kind table.
pub fn kinds(a: &KindsArgs) -> Result<()> {
    let opts = Opts::default();
    let mut out = Vec::new();
    for k in kinds::KINDS {
        let backends = k.backends(&opts)?;
        let scenarios: Vec<&str> = EMBEDDED
            .iter()
            .filter(|(n, t)| parse(t, n).is_ok_and(|s| s.kind == k.name()))
            .map(|(n, _)| *n)
            .collect();
        out.push((*k, backends, scenarios));
    }
    if a.json {
        let v: Vec<_> = out
            .iter()
            .map(|(k, b, s)| {
                serde_json::json!({
                    "kind": k.name(), "about": k.about(), "backends": b, "reference": k.reference(),
                    "reads_profiles": k.reads(), "calibration": k.calibration().map(|c| c.profile_kind()),
                    "scenarios": s,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = out
        .iter()
        .map(|(k, b, s)| {
            vec![
                k.name().to_string(),
                b.iter()
                    .map(|x| format!("{} ({})", x.name, x.fidelity.as_str()))
                    .collect::<Vec<_>>()
                    .join(", "),
                k.calibration().map_or("-".into(), |c| {
                    format!("calibrate --workload {} -> {}", k.name(), c.profile_kind())
                }),
                if k.reads().is_empty() {
                    "-".into()
                } else {
                    k.reads().join(", ")
                },
                s.join(", "),
            ]
        })
        .collect();
    print!(
        "{}",
        trainlab_reports::markdown_table(
            &[
                "kind",
                "backends (fidelity order)",
                "calibration",
                "reads profiles",
                "embedded scenarios"
            ],
            &rows
        )
    );
    Ok(())
}
