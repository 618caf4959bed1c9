//! D-CPT workflow end to end: real small CPT runs (trainlab-executors::lm) -> CSV -> approach-3 fit of the D-CPT law
//! (trainlab-models) -> held-out ratios -> planner, through the library's subcommand functions (`trainlab::dcpt`),
//! without spawning the binary.
use trainlab::dcpt;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use trainlab_core::Seed;
use trainlab_executors::lm;
use trainlab_models::fit::{self, FitConfig, csv::Table};
use trainlab_models::laws::DcptL3;

/// A cancel flag nobody sets (Ctrl-C never pressed).
fn no_cancel() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("trainlab-dcpt-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn small_grid() -> lm::GridConfig {
    lm::GridConfig {
        hidden: vec![8, 16, 32],
        ratios: vec![0.0, 0.25, 0.5, 0.75, 1.0],
        vocab: 16,
        embed: 8,
        pretrain_tokens: 20_000,
        cpt_tokens: 20_000,
        evals: 6,
        val_examples: 2000,
        seed: Seed(7),
        ..lm::GridConfig::default()
    }
}

#[test]
fn real_runs_fit_the_dcpt_law_and_the_cli_reads_them() {
    let grid = lm::run_grid(&small_grid(), &|_, _, _| {}).unwrap();
    assert_eq!(grid.rows.len(), 3 * 5 * 6);
    let dir = tmp("small");
    let csv = dir.join("runs.csv");
    std::fs::write(&csv, grid.to_csv()).unwrap();
    let table = Table::read(&csv).unwrap();
    let law = DcptL3::new();
    let cfg = FitConfig {
        max_starts: 24,
        ..FitConfig::default()
    };
    let data = fit::csv::dataset(&table, &law, "domain_loss", false).unwrap();
    let fr = fit::fit(&law, &data, &cfg).unwrap();
    assert!(fr.gof.r2 > 0.9, "domain fit {:?}", fr.gof);
    // The CLI path: fit both targets with a bootstrap, write fit.json, plan from it.
    let args = dcpt::FitArgs {
        law: "dcpt".into(),
        data: csv.clone(),
        target: "auto".into(),
        bootstrap: 4,
        seed: 1,
        delta: 1e-3,
        starts: 16,
        level: 0.9,
        cv: None,
        folds: 3,
        json: false,
        out: Some(dir.clone()),
    };
    dcpt::fit(&args, &no_cancel()).unwrap();
    let report: trainlab_models::mixture::FitReport =
        serde_json::from_str(&std::fs::read_to_string(dir.join("fit.json")).unwrap()).unwrap();
    assert_eq!(report.fits.len(), 2);
    let pair = report.pair().unwrap();
    let n = table.rows[table.rows.len() - 1][0];
    let plan = pair.tradeoff(n, 20_000.0, 0.03, None, 0.9).unwrap();
    assert!((0.0..=1.0).contains(&plan.r_domain.estimate));
    assert!(plan.r_domain.lo <= plan.r_domain.hi);
}

#[test]
fn cli_reports_bad_csv_with_row_and_column() {
    let dir = tmp("bad");
    let p = dir.join("bad.csv");
    std::fs::write(&p, "N,D,r,loss\n1e6,1e9,0.5,2.0\n1e6,abc,0.5,2.0\n").unwrap();
    let args = dcpt::FitArgs {
        law: "dcpt".into(),
        data: p.clone(),
        target: "auto".into(),
        bootstrap: 0,
        seed: 1,
        delta: 1e-3,
        starts: 4,
        level: 0.9,
        cv: None,
        folds: 3,
        json: true,
        out: None,
    };
    let e = format!("{:#}", dcpt::fit(&args, &no_cancel()).unwrap_err());
    assert!(e.contains("line 3, column D = "), "{e}");
    std::fs::write(&p, "N,D,loss\n1e6,1e9,2.0\n").unwrap();
    let e = format!("{:#}", dcpt::fit(&args, &no_cancel()).unwrap_err());
    assert!(e.contains("missing column `r`"), "{e}");
    std::fs::write(&p, "N,D,r,loss\n1e6,1e9,1.5,2.0\n").unwrap();
    let e = format!("{:#}", dcpt::fit(&args, &no_cancel()).unwrap_err());
    assert!(e.contains("line 2") && e.contains("[0, 1]"), "{e}");
}

fn grid_args(out: PathBuf) -> dcpt::ExecuteArgs {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let list = |k: &str, d: &str| -> Vec<f64> { env(k, d).split(',').map(|x| x.parse().unwrap()).collect() };
    dcpt::ExecuteArgs {
        backend: dcpt::TrainBackend::Cpu,
        hidden: list("DCPT_HIDDEN", "8,16,32").iter().map(|h| *h as usize).collect(),
        ratios: list("DCPT_RATIOS", "0,0.2,0.4,0.6,0.8,1"),
        holdout: list("DCPT_HOLDOUT", "0.4,0.8"),
        pretrain_tokens: env("DCPT_PRETRAIN", "100000").parse().unwrap(),
        cpt_tokens: env("DCPT_CPT", "100000").parse().unwrap(),
        evals: env("DCPT_EVALS", "10").parse().unwrap(),
        overlap: env("DCPT_OVERLAP", "0.8").parse().unwrap(),
        vocab: env("DCPT_VOCAB", "16").parse().unwrap(),
        embed: env("DCPT_EMBED", "8").parse().unwrap(),
        lr: env("DCPT_LR", "0.005").parse().unwrap(),
        seed: 42,
        starts: 256,
        out,
    }
}

/// The committed CPU grid (datasets/calibration/dcpt-cpu): run with
/// `cargo test -p trainlab --test dcpt -- --ignored --nocapture execute_dcpt_cpu_grid` (DCPT_* variables override the
/// grid; DCPT_OUT the output directory).
#[test]
#[ignore]
fn execute_dcpt_cpu_grid() {
    let out = std::env::var("DCPT_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/calibration/dcpt-cpu"));
    dcpt::execute(&grid_args(out), &no_cancel()).unwrap();
}

/// The planner on the committed CPU grid (usage 1 at the largest size and full CPT length, 1% and 3% tolerance, with
/// bootstrap intervals; usages 2 and 3 for illustration): run with
/// `cargo test -p trainlab --test dcpt -- --ignored --nocapture plan_on_cpu_grid`.
#[test]
#[ignore]
fn plan_on_cpu_grid() {
    let csv = std::env::var("DCPT_PLAN_CSV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/calibration/dcpt-cpu/runs.csv"));
    let dir = tmp("plan");
    dcpt::fit(
        &dcpt::FitArgs {
            law: "dcpt".into(),
            data: csv.clone(),
            target: "both".into(),
            bootstrap: 40,
            seed: 42,
            delta: 1e-3,
            starts: 256,
            level: 0.9,
            cv: Some("r".into()),
            folds: 3,
            json: false,
            out: Some(dir.clone()),
        },
        &no_cancel(),
    )
    .unwrap();
    let table = Table::read(&csv).unwrap();
    let n = table.rows.iter().map(|r| r[0]).fold(0.0, f64::max);
    let base = |usage: dcpt::Usage, tolerance: f64| dcpt::PlanArgs {
        input: dir.join("fit.json"),
        usage,
        n: Some(n),
        d: Some(100_000.0),
        tolerance,
        base_general_loss: table
            .rows
            .iter()
            .find(|r| r[0] == n)
            .map(|r| r[table.index("base_general_loss").unwrap()]),
        domain_tokens: Some(30_000.0),
        r_min: 1e-3,
        flops: Some(1e12),
        ratio: 0.5,
        optimise: "domain".into(),
        bootstrap: 0,
        starts: 0,
        seed: 42,
        level: 0.9,
        json: false,
    };
    dcpt::plan_mixture(&base(dcpt::Usage::Tradeoff, 0.01), &no_cancel()).unwrap();
    dcpt::plan_mixture(&base(dcpt::Usage::Tradeoff, 0.03), &no_cancel()).unwrap();
    dcpt::plan_mixture(&base(dcpt::Usage::LimitedData, 0.03), &no_cancel()).unwrap();
    dcpt::plan_mixture(&base(dcpt::Usage::Compute, 0.03), &no_cancel()).unwrap();
}
