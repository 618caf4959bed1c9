//! Integration tests: Parquet/CSV round trips, deterministic bytes, shard merging, charts and the HTML report.
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use trainlab_core::{Fidelity, Record, Unit};
use trainlab_reports::*;

/// A per-process temporary directory, removed when dropped.
struct TmpDir(PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp(name: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("trainlab-reports-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    TmpDir(d)
}

fn sample() -> Vec<Record> {
    let mut v = Vec::new();
    let backends = [
        ("roofline", Fidelity::Analytical),
        ("des", Fidelity::Simulated),
        ("cpu", Fidelity::Measured),
    ];
    for (ci, case) in ["7B@8xH100", "70B@1024xH100", "odd, \"quoted\" case", ""]
        .iter()
        .enumerate()
    {
        for (bi, (b, f)) in backends.iter().enumerate() {
            let x = (ci * 3 + bi) as f64;
            v.push(Record {
                study: "scaling".into(),
                workload: "training_job".into(),
                case: case.to_string(),
                backend: b.to_string(),
                fidelity: *f,
                metric: "step_time".into(),
                unit: Unit::Seconds,
                value: 0.1 + x * 1.234_567_890_123e-3,
                ci_low: (bi == 1).then_some(0.09 + x * 1e-3),
                ci_high: (bi == 1).then_some(0.11 + x * 1e-3),
                seed: u64::MAX - ci as u64,
                params: if ci == 1 {
                    vec![
                        ("model".into(), trainlab_core::Param::Text("70B".into())),
                        ("workload.gpus".into(), trainlab_core::Param::Num(1024.0)),
                    ]
                } else {
                    vec![("workload.gpus".into(), trainlab_core::Param::Num(8.0))]
                },
            });
            v.push(Record {
                study: "scaling".into(),
                workload: "training_job".into(),
                case: case.to_string(),
                backend: b.to_string(),
                fidelity: *f,
                metric: "mfu".into(),
                unit: Unit::Ratio,
                value: 0.4 + x * 1e-2,
                ci_low: None,
                ci_high: None,
                seed: 42,
                params: vec![],
            });
        }
    }
    v
}

#[test]
fn parquet_and_csv_round_trip() {
    let d = tmp("roundtrip");
    let recs = sample();
    let (pq, csv) = write_records(&recs, &d, "records").expect("write");
    assert_eq!(pq, d.join("records.parquet"));
    assert_eq!(read_records_parquet(&pq).expect("read parquet"), recs);
    assert_eq!(read_records_csv(&csv).expect("read csv"), recs);
    let header = std::fs::read_to_string(&csv).expect("csv text");
    assert!(header.starts_with(
        "study,workload,case,backend,fidelity,metric,unit,value,ci_low,ci_high,seed,param.model,param.workload.gpus\n"
    ));
}

#[test]
fn empty_records_round_trip() {
    let d = tmp("empty");
    let (pq, csv) = write_records(&[], &d, "none").expect("write");
    assert!(read_records_parquet(&pq).expect("read").is_empty());
    assert!(read_records_csv(&csv).expect("read").is_empty());
}

#[test]
fn bytes_are_deterministic() {
    let (a, b) = (tmp("det-a"), tmp("det-b"));
    let recs = sample();
    let (pa, ca) = write_records(&recs, &a, "r").expect("write a");
    let (pb, cb) = write_records(&recs, &b, "r").expect("write b");
    assert_eq!(std::fs::read(pa).expect("read"), std::fs::read(pb).expect("read"));
    assert_eq!(std::fs::read(ca).expect("read"), std::fs::read(cb).expect("read"));
    // Overwriting in place gives the same bytes again.
    let first = std::fs::read(a.join("r.parquet")).expect("read");
    write_records(&recs, &a, "r").expect("rewrite");
    assert_eq!(first, std::fs::read(a.join("r.parquet")).expect("read"));
}

#[test]
fn merge_of_shards_equals_full_run() {
    let d = tmp("merge");
    let recs = sample();
    // Shard by case (as a Slurm array would), in a scrambled order.
    let shard_a: Vec<Record> = recs.iter().filter(|r| r.case.len() % 2 == 0).cloned().rev().collect();
    let shard_b: Vec<Record> = recs.iter().filter(|r| r.case.len() % 2 == 1).cloned().collect();
    assert!(!shard_a.is_empty() && !shard_b.is_empty());
    let (pa, _) = write_records(&shard_a, &d, "shard-0").expect("write");
    let (pb, _) = write_records(&shard_b, &d, "shard-1").expect("write");
    let merged = merge_parquet(&[pb.clone(), pa.clone()]).expect("merge");
    let mut full = recs.clone();
    sort_records(&mut full);
    assert_eq!(merged, full);
    assert_eq!(
        merge_parquet(&[pa, pb]).expect("merge"),
        merged,
        "independent of path order"
    );
    assert!(matches!(merge_parquet(&[]), Err(ReportError::Invalid { .. })));
}

#[test]
fn io_errors_name_the_path() {
    let missing = Path::new("/nonexistent-trainlab-dir/x.parquet");
    let e = read_records_parquet(missing).expect_err("must fail");
    assert!(e.to_string().contains("/nonexistent-trainlab-dir/x.parquet"), "{e}");
    assert!(matches!(
        write_records(&sample(), &tmp("stem"), "a/b"),
        Err(ReportError::Invalid { .. })
    ));
}

#[test]
fn wrong_file_is_a_schema_error() {
    let d = tmp("schema");
    let (pq, _) = write_table(vec![("x".into(), TableColumn::floats([1.0]))], &d, "t").expect("write");
    let e = read_records_parquet(&pq).expect_err("not a records file");
    assert!(matches!(e, ReportError::Schema { .. }), "{e}");
}

#[test]
fn generic_table_round_trips_and_validates() {
    let d = tmp("table");
    let cols = vec![
        ("tp".to_string(), TableColumn::ints([1, 2, 4])),
        ("pp".to_string(), TableColumn::UInt(vec![Some(8), None, Some(2)])),
        ("layout".to_string(), TableColumn::texts(["a", "b,c", "d"])),
        (
            "step_s".to_string(),
            TableColumn::Float(vec![Some(1.5), Some(f64::NAN), None]),
        ),
        ("fits".to_string(), TableColumn::bools([true, false, true])),
    ];
    let (pq, csv) = write_table(cols.clone(), &d, "search").expect("write");
    let f = std::fs::File::open(&pq).expect("open");
    use polars::prelude::{ParquetReader, SerReader};
    let df = ParquetReader::new(f).finish().expect("read");
    assert_eq!(df.shape(), (3, 5));
    assert_eq!(
        df.column("layout").expect("col").str().expect("str").get(1),
        Some("b,c")
    );
    assert_eq!(df.column("pp").expect("col").u64().expect("u64").get(1), None);
    let text = std::fs::read_to_string(csv).expect("csv");
    assert!(text.starts_with("tp,pp,layout,step_s,fits\n"), "{text}");
    // Ragged and duplicate columns are rejected.
    let ragged = vec![
        ("a".into(), TableColumn::ints([1])),
        ("b".into(), TableColumn::ints([1, 2])),
    ];
    assert!(matches!(table_frame(ragged), Err(ReportError::Invalid { .. })));
    let dup = vec![
        ("a".into(), TableColumn::ints([1])),
        ("a".into(), TableColumn::ints([2])),
    ];
    assert!(matches!(table_frame(dup), Err(ReportError::Invalid { .. })));
}

fn demo_chart(kind: ChartKind, log: bool) -> ChartSpec {
    let pts = |a: f64, p: f64| {
        (0..8)
            .map(|i| (2f64.powi(i), a * 2f64.powi(i).powf(p)))
            .collect::<Vec<_>>()
    };
    ChartSpec::new("Step time vs GPUs", "GPUs", "step time (s)", kind)
        .with_log(log, log)
        .with_series(Series::new("analytical", pts(10.0, -0.9)))
        .with_series(Series::new("simulated", pts(12.0, -0.85)))
        .with_series(Series::new(
            "measured",
            vec![(1.0, 11.0), (4.0, f64::NAN), (8.0, 1.9), (-1.0, 3.0)],
        ))
}

#[test]
fn charts_render_png_and_svg() {
    let d = tmp("charts");
    for (i, (kind, log)) in [
        (ChartKind::Line, true),
        (ChartKind::Scatter, false),
        (ChartKind::Bar, false),
        (ChartKind::Bar, true),
    ]
    .into_iter()
    .enumerate()
    {
        let spec = demo_chart(kind, log);
        let png = d.join(format!("c{i}.png"));
        let svg = d.join(format!("sub/c{i}.svg"));
        render_chart(&spec, Some(&png), Some(&svg)).expect("render");
        let bytes = std::fs::read(&png).expect("png");
        assert!(bytes.len() > 1000);
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let s = std::fs::read_to_string(&svg).expect("svg");
        assert!(s.contains("<svg") && s.contains("analytical") && s.contains("GPUs"));
    }
}

#[test]
fn charts_survive_degenerate_input() {
    let d = tmp("degenerate");
    let cases = [
        ChartSpec::new("empty", "x", "y", ChartKind::Line),
        ChartSpec::new("empty series", "x", "y", ChartKind::Bar).with_series(Series::new("", vec![])),
        ChartSpec::new("one point", "x", "y", ChartKind::Line).with_series(Series::new("a", vec![(3.0, 3.0)])),
        ChartSpec::new("zero point", "x", "y", ChartKind::Bar).with_series(Series::new("a", vec![(0.0, 0.0)])),
        ChartSpec::new("all nan", "x", "y", ChartKind::Scatter)
            .with_series(Series::new("a", vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)])),
        ChartSpec::new("log non-positive", "x", "y", ChartKind::Line)
            .with_log(true, true)
            .with_series(Series::new("a", vec![(0.0, 1.0), (-1.0, 2.0), (1.0, -3.0)])),
        ChartSpec::new("negative bars", "x", "y", ChartKind::Bar)
            .with_series(Series::new("a", vec![(1.0, -2.0), (2.0, 3.0)])),
    ];
    for (i, spec) in cases.iter().enumerate() {
        let png = d.join(format!("d{i}.png"));
        render_chart(spec, Some(&png), None).unwrap_or_else(|e| panic!("{}: {e}", spec.title));
        assert!(std::fs::metadata(&png).expect("png").len() > 0);
        assert!(chart_svg_string(spec).expect("svg").contains("<svg"));
    }
    let mut bad = ChartSpec::new("tiny", "x", "y", ChartKind::Line);
    bad.width = 1;
    assert!(matches!(
        render_chart(&bad, None, None),
        Err(ReportError::Invalid { .. })
    ));
}

#[test]
fn svg_is_deterministic() {
    let spec = demo_chart(ChartKind::Line, true);
    assert_eq!(chart_svg_string(&spec).expect("a"), chart_svg_string(&spec).expect("b"));
}

#[test]
fn html_report_is_self_contained() {
    let d = tmp("html");
    let mut r = HtmlReport::new("Scaling <study>");
    r.heading("Records").paragraph("a < b & \"c\"").table_records(&sample());
    r.chart(&demo_chart(ChartKind::Line, true)).expect("chart");
    r.table(&["k", "v"], &[vec!["x", "1.5"]]);
    let path = d.join("nested/report.html");
    r.write(&path).expect("write");
    let html = std::fs::read_to_string(&path).expect("read");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<title>Scaling &lt;study&gt;</title>"));
    assert!(html.contains("<p>a &lt; b &amp; &quot;c&quot;</p>"));
    assert!(html.contains("<table>") && html.contains("<td>70B@1024xH100</td>"));
    assert!(html.contains("<td class=\"num\">1.5</td>"));
    assert!(html.contains("<svg"));
    assert!(!html.contains("<script"));
    // No external assets: the only URLs are the SVG (and XLink) namespaces.
    let urls = html.matches("http").count();
    let ns = html.matches("http://www.w3.org/2000/svg").count() + html.matches("http://www.w3.org/1999/xlink").count();
    assert_eq!(urls, ns);
}

#[test]
fn records_markdown_has_one_line_per_record() {
    let recs = sample();
    let md = records_markdown(&recs);
    assert_eq!(md.lines().count(), recs.len() + 2);
    assert!(md.lines().next().is_some_and(|h| h.contains("95% CI")));
    assert!(md.contains("[0.091, 0.111]"));
}

#[test]
fn series_group_by_backend() {
    let recs = sample();
    let series = series_from_records(&recs, "mfu", |r| {
        r.case.split('@').next()?.trim_end_matches('B').parse().ok()
    });
    let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["roofline (analytical)", "des (simulated)", "cpu (measured)"]);
    // Only the two cases with a parseable model size count.
    assert!(series.iter().all(|s| s.points.len() == 2));
    assert_eq!(series[0].points[0], (7.0, 0.4));
}

fn arb_record() -> impl Strategy<Value = Record> {
    (
        "[a-z,\" ]{0,6}",
        "\\PC{0,8}",
        prop_oneof![
            Just(Fidelity::Analytical),
            Just(Fidelity::Simulated),
            Just(Fidelity::Measured)
        ],
        prop_oneof![Just(Unit::Seconds), Just(Unit::FlopPerSecond), Just(Unit::GpuHours)],
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
        proptest::option::of(-1e300f64..1e300),
        any::<u64>(),
        proptest::option::of(-1e12f64..1e12),
    )
        .prop_map(|(study, case, fidelity, unit, value, ci, seed, p)| Record {
            study,
            workload: "gemm".into(),
            case,
            backend: "b".into(),
            fidelity,
            metric: "m".into(),
            unit,
            value,
            ci_low: ci,
            ci_high: ci.map(|c| c + 1.0),
            seed,
            params: p
                .map(|x| vec![("grid.x".to_string(), trainlab_core::Param::Num(x))])
                .unwrap_or_default(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn prop_round_trip_exact(recs in proptest::collection::vec(arb_record(), 0..12)) {
        let d = tmp("prop");
        let (pq, csv) = write_records(&recs, &d, "p").expect("write");
        prop_assert_eq!(&read_records_parquet(&pq).expect("parquet"), &recs);
        prop_assert_eq!(&read_records_csv(&csv).expect("csv"), &recs);
    }
}
