//! The outputs of a complete study (one process, a resumed run or a merge): records as Parquet/CSV, the manifest,
//! charts as PNG/SVG, and one `report.html` that summarises at any study size.
//!
//! The page never grows with the study beyond a fixed number of rows and charts: the assumptions, the summary table
//! (the best layout per case for a dense plan; the first rows of the cases otherwise, with per-metric statistics over
//! all of them), the Pareto front of days against GPU-hours, small multiples instead of one chart with every series,
//! the cases without an answer and why, and the first records. Every record is in `records.parquet`/`records.csv`.
use anyhow::Result;
use std::path::{Path, PathBuf};
use trainlab::study::{self, Index, Manifest, num, param, shown_metrics, summary_table, thousands};
use trainlab_core::{Param, Record};
use trainlab_reports::{ChartKind, ChartSpec, HtmlReport, Series};

/// Rows of the case table a generic study's page shows (all are in the CSV).
const CASE_ROWS: usize = 200;
/// Records the page shows.
const RECORD_ROWS: usize = 500;
/// Panels per metric in a generic study's small multiples.
const PANELS: usize = 6;
/// Series per panel before a plan's charts split into more panels.
const SERIES_PER_PANEL: usize = 6;

/// What a run that did not finish tells the report: cases done of cases asked.
#[derive(Debug, Clone, Copy)]
pub struct Partial {
    /// Cases answered (or failed) before the interruption.
    pub done: usize,
    /// Cases asked.
    pub asked: usize,
}

/// Writes the full set of outputs of a study: records, manifest, charts, report.html. `failures` are the cases
/// without an answer (label, reason); `partial` marks an interrupted run.
pub fn write_outputs(
    m: &Manifest,
    records: &[Record],
    failures: &[(String, String)],
    partial: Option<Partial>,
    out: &Path,
) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let (pq, csv) = trainlab_reports::write_records(records, out, "records")?;
    written.extend([pq, csv, study::write_manifest(m, out)?]);
    let mut report = HtmlReport::new(format!("trainlab plan: {}", m.study));
    report.paragraph(&m.description);
    if let Some(p) = partial {
        report.heading("PARTIAL RESULTS");
        report.paragraph(&format!(
            "This run was interrupted after {} of {} cases; the tables and charts hold those cases only. Run \
             `trainlab plan STUDY --resume {}` to finish it.",
            p.done,
            p.asked,
            out.display()
        ));
    }
    if !m.assumptions.is_empty() {
        report.heading("Assumptions");
        let rows: Vec<Vec<String>> = m.assumptions.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect();
        report.table(&["what", "assumed"], &rows);
    }
    let how = if m.form == "plan" {
        let mut how = "Each case is answered by the analytical step model's search over layouts; the table shows the \
         fastest layout that fits in memory, where its step time goes (shares of the step: compute, pipeline bubble, \
         tensor-parallel, pipeline, context-parallel or ZeRO-3 and data-parallel communication not hidden, optimizer) \
         and its bottleneck: the \
         largest cause after compute, or compute when every other cause is under 10% of the step."
            .to_string();
        if records.iter().any(|r| r.backend == "op_sim") {
            how.push_str(
                " The operation-level simulator (op_sim) answers every case too: the table's last columns give its \
                 step, the closed form's difference from it, and its layout where its re-ranking of the closed form's \
                 fastest layouts by simulation picked another. The charts and the Pareto front are the closed form's.",
            );
        }
        how
    } else {
        format!(
            "{} cases of kind {}, answered by the kind's backends through the kind table.",
            m.cases, m.kind
        )
    };
    report.paragraph(&how);
    let (headers, rows) = summary_table(m, records);
    if m.form == "plan" {
        report.heading("Best layout per case");
        report.table(&headers, &rows);
    } else {
        report.heading("Summary over all cases");
        let (h, r) = metric_stats(m, records);
        report.table(&h, &r);
        let panels = generic_panels(m, records);
        if !panels.is_empty() {
            report.heading("Charts");
            charts(&mut report, panels, out, &mut written)?;
        }
        if rows.len() > CASE_ROWS {
            report.heading(&format!("Cases (first {CASE_ROWS} rows of {})", rows.len()));
            report.paragraph("Every row is in records.parquet and records.csv beside this page.");
            report.table(&headers, &rows[..CASE_ROWS]);
        } else {
            report.heading("Cases");
            report.table(&headers, &rows);
        }
    }
    if !failures.is_empty() {
        report.heading(&format!("Cases without an answer ({})", failures.len()));
        let rows: Vec<Vec<String>> = failures.iter().map(|(c, w)| vec![c.clone(), w.clone()]).collect();
        report.table(&["case", "why"], &rows);
    }
    if m.form == "plan" {
        let (front, spec) = pareto(records);
        report.heading("Days against GPU-hours");
        report.paragraph(
            "Each point is one case; the Pareto front of each model (no other cluster size of that model is both \
             faster and cheaper) is listed below. Days and GPU-hours include expected downtime where the plan has a \
             failure model.",
        );
        let png = out.join("pareto.png");
        let svg = out.join("pareto.svg");
        trainlab_reports::render_chart(&spec, Some(&png), Some(&svg))?;
        written.extend([png, svg]);
        report.chart(&spec)?;
        report.table(&["model", "GPUs", "days", "GPU-hours"], &front);
        report.heading("Scaling");
        charts(&mut report, plan_panels(records), out, &mut written)?;
    }
    if records.len() > RECORD_ROWS {
        report.heading(&format!("Records (first {RECORD_ROWS} of {})", records.len()));
        report.paragraph("Every record is in records.parquet and records.csv beside this page.");
        report.table_records(&records[..RECORD_ROWS]);
    } else {
        report.heading("All records");
        report.table_records(records);
    }
    let html = out.join("report.html");
    report.write(&html)?;
    written.push(html);
    Ok(written)
}

/// Renders `panels` as PNG and SVG files in `out` and as small multiples on the page.
fn charts(
    report: &mut HtmlReport,
    panels: Vec<(String, ChartSpec)>,
    out: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    let mut specs = Vec::new();
    for (stem, spec) in panels {
        let png = out.join(format!("{stem}.png"));
        let svg = out.join(format!("{stem}.svg"));
        trainlab_reports::render_chart(&spec, Some(&png), Some(&svg))?;
        written.extend([png, svg]);
        specs.push(spec);
    }
    report.chart_grid(&specs)?;
    Ok(())
}

/// The models of a plan's records, in first-seen order.
fn models(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in records {
        if let Some(Param::Text(x)) = param(r, "model")
            && !v.contains(x)
        {
            v.push(x.clone());
        }
    }
    v
}

/// The days and GPU-hours metrics a plan's Pareto front uses: with downtime (the first policy present, C4D before
/// the baseline) where the plan has a failure model, else failure-free.
fn cost_metrics(records: &[Record]) -> (String, String, &'static str) {
    for p in ["c4d", "baseline"] {
        let d = format!("days_with_downtime.{p}");
        if records.iter().any(|r| r.metric == d) {
            return (d, format!("gpu_hours_with_downtime.{p}"), p);
        }
    }
    ("train_days".into(), "gpu_hours".into(), "")
}

/// The Pareto front of days against GPU-hours per model (rows: model, GPUs, days, GPU-hours) and its chart.
fn pareto(records: &[Record]) -> (Vec<Vec<String>>, ChartSpec) {
    let idx = Index::new(records);
    let (days_m, hours_m, policy) = cost_metrics(records);
    let mut rows = Vec::new();
    let mut spec = ChartSpec::new(
        if policy.is_empty() {
            "Days against GPU-hours".to_string()
        } else {
            format!("Days against GPU-hours, including expected downtime ({policy})")
        },
        "GPU-hours",
        "days",
        ChartKind::Line,
    );
    spec.log_x = true;
    spec.log_y = true;
    for model in models(records) {
        let mut pts: Vec<(f64, f64, f64)> = idx
            .cases
            .iter()
            .filter_map(|c| {
                let d = idx.get(c, "analytical", &days_m)?;
                if !matches!(param(d, "model"), Some(Param::Text(x)) if *x == model) {
                    return None;
                }
                let h = idx.get(c, "analytical", &hours_m)?;
                Some((num(param(d, "gpus"))?, d.value, h.value))
            })
            .filter(|p| p.1.is_finite() && p.2.is_finite())
            .collect();
        pts.sort_by(|a, b| a.2.total_cmp(&b.2));
        // Sorted by GPU-hours: a point is on the front when it is faster than every cheaper point.
        let mut best_days = f64::INFINITY;
        let mut front = Vec::new();
        for &(g, d, h) in &pts {
            if d < best_days {
                best_days = d;
                front.push((g, d, h));
            }
        }
        for &(g, d, h) in &front {
            rows.push(vec![model.clone(), thousands(g), format!("{d:.2}"), thousands(h)]);
        }
        spec.series.push(Series {
            name: model.clone(),
            points: front.iter().map(|&(_, d, h)| (h, d)).collect(),
        });
        let off: Vec<(f64, f64)> = pts
            .iter()
            .filter(|p| !front.iter().any(|f| f.0 == p.0))
            .map(|&(_, d, h)| (h, d))
            .collect();
        if !off.is_empty() {
            spec.series.push(Series {
                name: format!("{model} (dominated)"),
                points: off,
            });
        }
    }
    (rows, spec)
}

/// A plan's scaling charts (days, GPU-hours, MFU against GPUs), as small multiples of at most
/// [`SERIES_PER_PANEL`] models each.
fn plan_panels(records: &[Record]) -> Vec<(String, ChartSpec)> {
    let models = models(records);
    let (days_m, hours_m, policy) = cost_metrics(records);
    let with = if policy.is_empty() {
        String::new()
    } else {
        format!(" (incl. downtime, {policy})")
    };
    let metrics: [(&str, String, String, f64, &str); 3] = [
        ("days", days_m, format!("Days to train{with}"), 1.0, "days"),
        (
            "gpu_hours",
            hours_m,
            format!("GPU-hours to train{with}"),
            1.0,
            "GPU-hours",
        ),
        ("mfu", "mfu".into(), "MFU of the best layout".into(), 100.0, "MFU (%)"),
    ];
    let groups: Vec<&[String]> = models.chunks(SERIES_PER_PANEL).collect();
    let mut out = Vec::new();
    for (stem, metric, title, scale, ylabel) in metrics {
        for (gi, group) in groups.iter().enumerate() {
            let series = group
                .iter()
                .map(|mname| {
                    let mut points: Vec<(f64, f64)> = records
                        .iter()
                        .filter(|r| {
                            r.backend == "analytical"
                                && r.metric == metric
                                && matches!(param(r, "model"), Some(Param::Text(x)) if x == mname)
                        })
                        .filter_map(|r| Some((num(param(r, "gpus"))?, r.value * scale)))
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Series {
                        name: mname.clone(),
                        points,
                    }
                })
                .collect();
            let (t, s) = if groups.len() > 1 {
                (format!("{title} ({}/{})", gi + 1, groups.len()), format!("{stem}_{gi}"))
            } else {
                (title.clone(), stem.to_string())
            };
            let mut spec = ChartSpec::new(t, "GPUs", ylabel, ChartKind::Line);
            spec.series = series;
            spec.log_x = true;
            spec.log_y = stem != "mfu";
            spec.width = 560;
            spec.height = 400;
            out.push((s, spec));
        }
    }
    out
}

/// Up to [`PANELS`] values of `all` (sorted), evenly spaced, always with the first and the last.
fn spread<T: Clone>(all: &[T], n: usize) -> Vec<T> {
    if all.len() <= n {
        return all.to_vec();
    }
    (0..n)
        .map(|i| all[(i * (all.len() - 1)) / (n - 1).max(1)].clone())
        .collect()
}

/// A generic study's charts: each shown metric against the first numeric parameter, one series per backend, as
/// small multiples over up to [`PANELS`] values of the second parameter (evenly spaced through its values), or one
/// chart per metric when the grid has one parameter.
fn generic_panels(m: &Manifest, records: &[Record]) -> Vec<(String, ChartSpec)> {
    let Some(x) = m
        .params
        .iter()
        .find(|p| records.iter().any(|r| num(param(r, p)).is_some()))
    else {
        return Vec::new();
    };
    let second = m.params.iter().find(|p| *p != x && *p != "replica");
    let mut values: Vec<Param> = Vec::new();
    if let Some(s) = second {
        for r in records {
            if let Some(v) = param(r, s)
                && !values.contains(v)
            {
                values.push(v.clone());
            }
        }
        values.sort_by(|a, b| match (a, b) {
            (Param::Num(a), Param::Num(b)) => a.total_cmp(b),
            (Param::Num(_), _) => std::cmp::Ordering::Less,
            (_, Param::Num(_)) => std::cmp::Ordering::Greater,
            (Param::Text(a), Param::Text(b)) => a.cmp(b),
        });
    }
    let shown: Vec<Option<Param>> = if values.is_empty() {
        vec![None]
    } else {
        spread(&values, PANELS).into_iter().map(Some).collect()
    };
    let mut out = Vec::new();
    for metric in shown_metrics(m, records, 3) {
        let unit = records
            .iter()
            .find(|r| r.metric == metric)
            .map_or("", |r| r.unit.symbol());
        for (pi, panel) in shown.iter().enumerate() {
            let mut series: Vec<Series> = Vec::new();
            for r in records.iter().filter(|r| r.metric == metric) {
                if let (Some(s), Some(v)) = (second, panel)
                    && param(r, s) != Some(v)
                {
                    continue;
                }
                let Some(xv) = num(param(r, x)) else { continue };
                match series.iter_mut().find(|s| s.name == r.backend) {
                    Some(s) => s.points.push((xv, r.value)),
                    None => series.push(Series {
                        name: r.backend.clone(),
                        points: vec![(xv, r.value)],
                    }),
                }
            }
            let title = match (second, panel) {
                (Some(s), Some(v)) => format!("{metric} vs {x}, {s} = {v}"),
                _ => format!("{metric} vs {x}"),
            };
            let mut spec = ChartSpec::new(title, x.as_str(), format!("{metric} ({unit})"), ChartKind::Line);
            spec.series = series;
            spec.width = 560;
            spec.height = 400;
            let stem = metric.replace(['.', '/'], "_");
            let stem = if shown.len() > 1 { format!("{stem}_{pi}") } else { stem };
            out.push((stem, spec));
        }
    }
    out
}

/// Per backend and shown metric, over every case: count, minimum, median and maximum.
fn metric_stats(m: &Manifest, records: &[Record]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut rows = Vec::new();
    let mut backends: Vec<&str> = Vec::new();
    for r in records {
        if !backends.contains(&r.backend.as_str()) {
            backends.push(&r.backend);
        }
    }
    for metric in shown_metrics(m, records, 6) {
        for b in &backends {
            let mut v: Vec<f64> = records
                .iter()
                .filter(|r| r.metric == metric && r.backend == *b && r.value.is_finite())
                .map(|r| r.value)
                .collect();
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            let unit = records
                .iter()
                .find(|r| r.metric == metric)
                .map_or("", |r| r.unit.symbol());
            rows.push(vec![
                metric.to_string(),
                b.to_string(),
                unit.to_string(),
                v.len().to_string(),
                study::fmt_value(v[0]),
                study::fmt_value(trainlab_core::stats::quantile_sorted(&v, 0.5)),
                study::fmt_value(v[v.len() - 1]),
            ]);
        }
    }
    let headers = ["metric", "backend", "unit", "cases", "min", "median", "max"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    (headers, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plan answered by two backends charts the closed form's answers only: one point per model and GPU count.
    #[test]
    fn plan_charts_take_the_closed_forms_answers() {
        let rec = |gpus: f64, backend: &str, value: f64| Record {
            study: "s".into(),
            workload: "dense_training".into(),
            case: format!("m@{gpus}"),
            backend: backend.into(),
            fidelity: trainlab_core::Fidelity::Analytical,
            metric: "mfu".into(),
            unit: trainlab_core::Unit::Ratio,
            value,
            ci_low: None,
            ci_high: None,
            seed: 1,
            params: vec![
                ("gpus".into(), Param::Num(gpus)),
                ("model".into(), Param::Text("m".into())),
            ],
        };
        let records = vec![
            rec(8.0, "analytical", 0.5),
            rec(8.0, "op_sim", 0.4),
            rec(16.0, "analytical", 0.45),
            rec(16.0, "op_sim", 0.35),
        ];
        let panels = plan_panels(&records);
        let mfu = panels
            .iter()
            .find(|(stem, _)| stem.starts_with("mfu"))
            .expect("an MFU panel");
        assert_eq!(mfu.1.series[0].points, vec![(8.0, 50.0), (16.0, 45.0)]);
    }

    #[test]
    fn spread_keeps_the_ends_and_at_most_n() {
        let v: Vec<u32> = (0..100).collect();
        let s = spread(&v, 6);
        assert_eq!(s.len(), 6);
        assert_eq!((s[0], s[5]), (0, 99));
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(spread(&v[..3], 6), vec![0, 1, 2]);
    }
}
