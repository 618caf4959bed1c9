//! `trainlab fit`, `trainlab plan-mixture` and `trainlab execute-dcpt`: the D-CPT Law workflow (Que et al. 2024)
//! on the approach-3 fitting engine of `trainlab_models::fit`.
use anyhow::{Context, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use trainlab_core::Seed;
use trainlab_models::fit::{self, FitConfig, csv::Table};
use trainlab_models::laws::{self, Target};
use trainlab_models::mixture::{FitReport, TargetFit};

/// `trainlab fit LAW DATA.csv`: fit a loss law by Chinchilla approach 3.
#[derive(Args, Debug, Clone)]
pub struct FitArgs {
    /// Law: chinchilla (N,D), dcpt (N,D,r: E + A/N^a + B r^h/D^b + C/(r+e)^g), dcpt-separable, dcpt-cross (N,D,r,k1,k2).
    pub law: String,
    /// CSV with a header; columns named after the law's inputs plus loss column(s).
    pub data: PathBuf,
    /// Loss to fit: `auto` (both when general_loss and domain_loss exist, else `loss`), `both`, `general`
    /// (general_loss with r -> 1 - r), `domain` (domain_loss), or any column name.
    #[arg(long, default_value = "auto")]
    pub target: String,
    /// Bootstrap replicates (0 = none).
    #[arg(long, default_value_t = 0)]
    pub bootstrap: usize,
    /// Seed for start subsampling and the bootstrap.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Huber threshold on log residuals.
    #[arg(long, default_value_t = 1e-3)]
    pub delta: f64,
    /// Most L-BFGS starts from the law's grid (the default takes the whole grid up to 4,500).
    #[arg(long, default_value_t = 4500)]
    pub starts: usize,
    /// Interval level for bootstrap intervals.
    #[arg(long, default_value_t = 0.9)]
    pub level: f64,
    /// Grouped k-fold cross-validation by this input column (e.g. N, D or r).
    #[arg(long)]
    pub cv: Option<String>,
    /// Folds for --cv.
    #[arg(long, default_value_t = 3)]
    pub folds: usize,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write fit.json into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn targets(table: &Table, law: &dyn fit::Law, target: &str) -> anyhow::Result<Vec<(String, Option<Target>, bool)>> {
    let has_ratio = law.inputs().iter().any(|i| i.domain == fit::InputDomain::UnitInterval);
    let both = vec![
        ("general_loss".to_string(), Some(Target::General), true),
        ("domain_loss".to_string(), Some(Target::Domain), false),
    ];
    Ok(match target {
        "auto" if has_ratio && table.has("general_loss") && table.has("domain_loss") => both,
        "auto" => vec![("loss".to_string(), None, false)],
        "both" if has_ratio => both,
        "general" if has_ratio => vec![both[0].clone()],
        "domain" if has_ratio => vec![both[1].clone()],
        "both" | "general" | "domain" => bail!(trainlab_core::Error::invalid(
            "--target",
            target,
            "needs a law with a mixture ratio input",
            "use a dcpt law, or --target auto / a loss column"
        )),
        col => vec![(col.to_string(), None, false)],
    })
}

/// Fits every requested target of `table`; shared by `fit` and `plan-mixture DATA.csv`.
///
/// When `cfg.cancel` is set part-way (Ctrl-C), the fit in progress keeps the best of the starts that ran and the
/// bootstrap the replicates that ran, cross-validation is skipped, later targets are not fitted, and a note on
/// stderr says so; the report holds what was done. Nothing fitted at all is [`trainlab_core::Error::Interrupted`].
fn fit_table(
    law_name: &str,
    table: &Table,
    target: &str,
    cfg: &FitConfig,
    bootstrap: usize,
    level: f64,
    cv: Option<(&str, usize)>,
) -> anyhow::Result<FitReport> {
    let law = laws::by_name(law_name, "LAW")?;
    let mut fits = Vec::new();
    for (col, t, flip) in targets(table, law.as_ref(), target)? {
        if cfg.cancelled() {
            eprintln!("interrupted: `{col}` not fitted");
            continue;
        }
        let data = fit::csv::dataset(table, law.as_ref(), &col, flip)?;
        let fr = match fit::fit(law.as_ref(), &data, cfg) {
            Err(trainlab_core::Error::Interrupted) => {
                eprintln!("interrupted: `{col}` not fitted");
                continue;
            }
            other => other?,
        };
        if cfg.cancelled() {
            eprintln!("interrupted: `{col}` is the best of the starts that finished");
        }
        let (param_ci, reps) = if bootstrap > 0 && !cfg.cancelled() {
            let bs = fit::bootstrap(law.as_ref(), &data, &fr, bootstrap, cfg)?;
            if cfg.cancelled() {
                eprintln!(
                    "interrupted: `{col}` bootstrap kept {} of {bootstrap} replicates",
                    bs.params.len()
                );
            }
            (bs.param_intervals(&fr.params, level), bs.params)
        } else {
            (Vec::new(), Vec::new())
        };
        let cv = match cv {
            Some((c, k)) => {
                let j = data
                    .column_index(c)
                    .with_context(|| format!("--cv {c}: not an input of law {law_name} ({})", data.inputs.join(",")))?;
                match fit::cross_validate(law.as_ref(), &data, j, k, cfg) {
                    Err(trainlab_core::Error::Interrupted) => {
                        eprintln!("interrupted: `{col}` cross-validation skipped");
                        None
                    }
                    other => Some(other?),
                }
            }
            None => None,
        };
        fits.push(TargetFit {
            loss_column: col,
            target: t,
            natural: law.natural(&fr.params),
            fit: fr,
            param_ci,
            bootstrap: reps,
            cv,
        });
    }
    if fits.is_empty() {
        return Err(trainlab_core::Error::Interrupted.into());
    }
    Ok(FitReport {
        law: law.name().to_string(),
        formula: law.formula().to_string(),
        data: table.source.clone(),
        delta: cfg.delta,
        seed: cfg.seed.0,
        level,
        fits,
    })
}

fn print_report(r: &FitReport) {
    println!(
        "law {}: {}   (data {}, Huber delta {})",
        r.law, r.formula, r.data, r.delta
    );
    for f in &r.fits {
        let g = &f.fit.gof;
        println!(
            "\n[{}] objective {:.4e} (best of {} starts, #{}), R^2 {:.4}, RMSE(log) {:.4}, MAPE {:.2}%, n {}{}",
            f.loss_column,
            f.fit.objective,
            f.fit.starts,
            f.fit.best_start,
            g.r2,
            g.rmse_log,
            100.0 * g.mape,
            g.n,
            if f.fit.inside_bounds {
                ""
            } else {
                "  (optimum on a parameter bound)"
            }
        );
        for (i, (name, v)) in f.natural.iter().enumerate() {
            match f.param_ci.get(i) {
                // The fit works on log-parameters for positive coefficients (e.g. `a` = ln A); report the
                // interval in the same natural units as the estimate (exp is monotone, so bounds map directly).
                Some(c) => println!(
                    "  {name:>8} = {v:<12.6}  [{:.4}, {:.4}] ({:.0}% bootstrap, {} reps)",
                    if f.fit.names[i] == *name { c.lo } else { c.lo.exp() },
                    if f.fit.names[i] == *name { c.hi } else { c.hi.exp() },
                    100.0 * r.level,
                    f.bootstrap.len()
                ),
                None => println!("  {name:>8} = {v:.6}"),
            }
        }
        if let Some(cv) = &f.cv {
            println!(
                "  cross-validation by {}: pooled out-of-fold R^2 {:.4}",
                cv.group_by, cv.pooled.r2
            );
            for fold in &cv.folds {
                let held: Vec<String> = fold.held_out.iter().map(|v| format!("{v:.4}")).collect();
                println!(
                    "    held out [{}]: R^2 {:.4}, MAPE {:.2}%",
                    held.join(", "),
                    fold.test.r2,
                    100.0 * fold.test.mape
                );
            }
        }
    }
}

fn write_json(dir: &Path, name: &str, v: &impl serde::Serialize) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v)?).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// The ranges of the fitting flags, checked before any work: `--bootstrap` at most 100,000 replicates, `--starts`
/// 1 to 1,000,000, `--level` strictly between 0 and 1, `--delta` > 0.
fn check_fit_flags(bootstrap: usize, starts: usize, level: f64, delta: Option<f64>) -> anyhow::Result<()> {
    use trainlab_core::error::check;
    check::at_most(
        "--bootstrap",
        bootstrap as u64,
        100_000,
        "far past what a percentile interval needs",
    )?;
    check::at_least("--starts", starts as u64, 1)?;
    check::at_most(
        "--starts",
        starts as u64,
        1_000_000,
        "the start grids have at most a few thousand points",
    )?;
    if !(level > 0.0 && level < 1.0) {
        return Err(trainlab_core::Error::invalid(
            "--level",
            level,
            "an interval level lies strictly between 0 and 1",
            "use e.g. --level 0.9",
        )
        .into());
    }
    if let Some(d) = delta {
        check::positive("--delta", d)?;
    }
    Ok(())
}

/// An output folder given by `flag` must be a folder or not exist yet: checked before any work, so a path that
/// names a file fails at once (exit 2) rather than after the fit or the runs.
pub fn check_out_dir(flag: &str, dir: &Path) -> anyhow::Result<()> {
    if dir.as_os_str().is_empty() {
        bail!(trainlab_core::Error::invalid(
            flag,
            "",
            "empty path",
            "give a folder path"
        ));
    }
    // The folder itself, else the nearest ancestor that exists, must be a folder (`FILE/sub` cannot be created).
    if let Some(p) = dir.ancestors().find(|p| !p.as_os_str().is_empty() && p.exists())
        && !p.is_dir()
    {
        let reason = if p == dir {
            "exists and is not a folder".to_string()
        } else {
            format!("{} is a file, so no folder can be created under it", p.display())
        };
        bail!(trainlab_core::Error::invalid(
            flag,
            dir.display(),
            reason,
            "give a folder path (it is created when missing)"
        ));
    }
    Ok(())
}

/// `--cv COLUMN` and `--folds K` of `fit`, checked before the fit: K from 2 to 1,000, and with `--cv` the column an
/// input of the law with at least K distinct values in the table.
fn check_cv(table: &Table, law: &dyn fit::Law, cv: Option<&str>, folds: usize) -> anyhow::Result<()> {
    use trainlab_core::error::check;
    check::at_least("--folds", folds as u64, 2)?;
    check::at_most("--folds", folds as u64, 1_000, "each fold is a full fit")?;
    let Some(c) = cv else { return Ok(()) };
    let names: Vec<&str> = law.inputs().iter().map(|i| i.name.as_str()).collect();
    if !names.iter().any(|n| n.eq_ignore_ascii_case(c)) {
        bail!(trainlab_core::Error::invalid(
            "--cv",
            c,
            format!("not an input of law {}", law.name()),
            format!("use one of {}", names.join(", "))
        ));
    }
    let j = table.index(c)?;
    let mut distinct: Vec<f64> = table.rows.iter().map(|r| r[j]).collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    if folds > distinct.len() {
        bail!(trainlab_core::Error::invalid(
            "--folds",
            folds,
            format!("column {c} has {} distinct values", distinct.len()),
            format!("use --folds 2 to {}", distinct.len())
        ));
    }
    Ok(())
}

fn config(seed: u64, delta: f64, starts: usize, cancel: &Arc<AtomicBool>) -> FitConfig {
    FitConfig {
        delta,
        max_starts: starts,
        seed: Seed(seed),
        cancel: Some(cancel.clone()),
        ..FitConfig::default()
    }
}

/// Runs `trainlab fit`. A first Ctrl-C (`cancel`) keeps what the fit has so far (see `fit_table`), prints and
/// writes it; the caller exits 130.
pub fn fit(args: &FitArgs, cancel: &Arc<AtomicBool>) -> anyhow::Result<()> {
    let law = laws::by_name(&args.law, "LAW")?;
    check_fit_flags(args.bootstrap, args.starts, args.level, Some(args.delta))?;
    if let Some(dir) = &args.out {
        check_out_dir("--out", dir)?;
    }
    let table = Table::read(&args.data)?;
    check_cv(&table, law.as_ref(), args.cv.as_deref(), args.folds)?;
    let mut cfg = config(args.seed, args.delta, args.starts, cancel);
    let spin = crate::progress::spinner("fit", args.json);
    spin.set_message(format!(
        "{} starts per target, then {} bootstrap refits",
        args.starts, args.bootstrap
    ));
    cfg.progress = Some(crate::progress::message_callback(&spin, "bootstrap refits"));
    let cv = args.cv.as_deref().map(|c| (c, args.folds));
    let report = fit_table(&args.law, &table, &args.target, &cfg, args.bootstrap, args.level, cv);
    spin.finish_and_clear();
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if let Some(dir) = &args.out {
        let p = write_json(dir, "fit.json", &report)?;
        if !args.json {
            println!("\nwrote {}", p.display());
        }
    }
    Ok(())
}

/// Which usage of the D-CPT law to plan for.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Usage 1: largest domain-loss reduction with the general loss within --tolerance of the base model.
    Tradeoff,
    /// Usage 2: best ratio when only --domain-tokens domain tokens exist (D = D_domain / r).
    LimitedData,
    /// Usage 3: compute-optimal (N, D) under --flops at ratio --ratio.
    Compute,
}

/// `trainlab plan-mixture FIT.json|DATA.csv --usage ...`: answer a D-CPT usage with bootstrap intervals.
#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// A report from `trainlab fit dcpt ... --out DIR` (fit.json) or a CSV with N,D,r,general_loss,domain_loss.
    pub input: PathBuf,
    /// The usage.
    #[arg(long, value_enum)]
    pub usage: Usage,
    /// Model parameters N (tradeoff, limited-data).
    #[arg(long = "n")]
    pub n: Option<f64>,
    /// CPT tokens D (tradeoff).
    #[arg(long = "d")]
    pub d: Option<f64>,
    /// Tolerated relative rise of the general loss (tradeoff).
    #[arg(long, default_value_t = 0.03)]
    pub tolerance: f64,
    /// General validation loss of the base model before CPT (tradeoff; default: predicted at r_d = 0, or the
    /// table's base_general_loss column for this N when present).
    #[arg(long)]
    pub base_general_loss: Option<f64>,
    /// Domain tokens available (limited-data).
    #[arg(long)]
    pub domain_tokens: Option<f64>,
    /// Smallest domain share searched (limited-data).
    #[arg(long, default_value_t = 1e-3)]
    pub r_min: f64,
    /// Training FLOPs budget C = 6ND (compute).
    #[arg(long)]
    pub flops: Option<f64>,
    /// Domain share r_d (compute).
    #[arg(long, default_value_t = 0.5)]
    pub ratio: f64,
    /// Loss to optimise in the compute usage: domain or general.
    #[arg(long, default_value = "domain")]
    pub optimise: String,
    /// Bootstrap replicates when fitting from a CSV.
    #[arg(long, default_value_t = 50)]
    pub bootstrap: usize,
    /// Starts when fitting from a CSV.
    #[arg(long, default_value_t = 512)]
    pub starts: usize,
    /// Seed when fitting from a CSV.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Interval level.
    #[arg(long, default_value_t = 0.9)]
    pub level: f64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn need(v: Option<f64>, flag: &str, usage: &str) -> anyhow::Result<f64> {
    v.ok_or_else(|| {
        trainlab_core::Error::invalid(
            flag,
            "(missing)",
            format!("--usage {usage} needs {flag}"),
            format!("pass {flag} VALUE"),
        )
        .into()
    })
}

/// The flags `args.usage` reads, checked before any fit (the plan checks them again under its own names): each
/// required one present, sizes finite and positive, shares in range, `--optimise` known.
fn check_usage_flags(args: &PlanArgs) -> anyhow::Result<()> {
    use trainlab_core::error::check;
    match args.usage {
        Usage::Tradeoff => {
            check::positive("--n", need(args.n, "--n", "tradeoff")?)?;
            check::positive("--d", need(args.d, "--d", "tradeoff")?)?;
            check::non_negative("--tolerance", args.tolerance)?;
            if let Some(b) = args.base_general_loss {
                check::positive("--base-general-loss", b)?;
            }
        }
        Usage::LimitedData => {
            check::positive("--n", need(args.n, "--n", "limited-data")?)?;
            check::positive(
                "--domain-tokens",
                need(args.domain_tokens, "--domain-tokens", "limited-data")?,
            )?;
            check::in_range("--r-min", args.r_min, 1e-6, 1.0)?;
        }
        Usage::Compute => {
            check::positive("--flops", need(args.flops, "--flops", "compute")?)?;
            check::in_range("--ratio", args.ratio, 0.0, 1.0)?;
            if !matches!(args.optimise.as_str(), "domain" | "general") {
                bail!(trainlab_core::Error::invalid(
                    "--optimise",
                    &args.optimise,
                    "unknown objective",
                    "use domain or general"
                ));
            }
        }
    }
    Ok(())
}

/// Device choice of `execute-dcpt`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainBackend {
    /// This machine's CPU.
    Cpu,
    /// The first CUDA GPU (cuBLAS + NVRTC trainer).
    Cuda,
}

/// Runs `trainlab plan-mixture`. A first Ctrl-C (`cancel`) during the fit from a CSV keeps what the fit has; the
/// plan is then answered from it when both losses were fitted (else the run ends as interrupted).
pub fn plan_mixture(args: &PlanArgs, cancel: &Arc<AtomicBool>) -> anyhow::Result<()> {
    check_fit_flags(args.bootstrap, args.starts, args.level, None)?;
    check_usage_flags(args)?;
    let is_json = args.input.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let mut base_from_table = None;
    let report: FitReport = if is_json {
        let text = std::fs::read_to_string(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
        serde_json::from_str(&text).map_err(|e| {
            trainlab_core::Error::invalid(
                args.input.display().to_string(),
                "not a fit report",
                format!("not a `trainlab fit` report: {e}"),
                "give the fit.json written by `trainlab fit dcpt DATA.csv --out DIR`, or a CSV of runs",
            )
        })?
    } else {
        let table = Table::read(&args.input)?;
        if let (Some(n), true) = (args.n, table.has("base_general_loss")) {
            let (jn, jb) = (table.index("N")?, table.index("base_general_loss")?);
            base_from_table = table
                .rows
                .iter()
                .find(|r| (r[jn] / n - 1.0).abs() < 1e-9)
                .map(|r| r[jb]);
        }
        let mut cfg = config(args.seed, 1e-3, args.starts, cancel);
        let spin = crate::progress::spinner("plan-mixture", args.json);
        spin.set_message(format!(
            "fitting the D-CPT law ({} starts, {} bootstrap refits)",
            args.starts, args.bootstrap
        ));
        cfg.progress = Some(crate::progress::message_callback(&spin, "bootstrap refits"));
        let r = fit_table("dcpt", &table, "both", &cfg, args.bootstrap, args.level, None);
        spin.finish_and_clear();
        r?
    };
    if cancel.load(Ordering::Relaxed) && report.fits.len() < 2 {
        return Err(trainlab_core::Error::Interrupted.into());
    }
    let pair = report.pair()?;
    let lvl = args.level;
    // A fit without bootstrap replicates has no interval: say so rather than print `[NaN, NaN]`.
    let fmt = |c: &fit::Ci| {
        if c.lo.is_finite() && c.hi.is_finite() {
            format!("{:.4} [{:.4}, {:.4}]", c.estimate, c.lo, c.hi)
        } else {
            format!("{:.4} (no interval: the fit has no bootstrap replicates)", c.estimate)
        }
    };
    match args.usage {
        Usage::Tradeoff => {
            let (n, d) = (need(args.n, "--n", "tradeoff")?, need(args.d, "--d", "tradeoff")?);
            let base = args.base_general_loss.or(base_from_table);
            let plan = pair.tradeoff(n, d, args.tolerance, base, lvl)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                println!(
                    "trade-off at N={n:.3e}, D={d:.3e}: general loss limit {:.4} ({}% over base)",
                    plan.general_limit,
                    100.0 * args.tolerance
                );
                println!("  best domain share r_d  {}", fmt(&plan.r_domain));
                println!("  domain loss            {}", fmt(&plan.domain_loss));
                println!("  general loss           {}", fmt(&plan.general_loss));
                if plan.r_domain.lo.is_finite() {
                    println!(
                        "  feasible in {:.0}% of bootstrap replicates",
                        100.0 * plan.feasible_share
                    );
                } else {
                    println!("  (no bootstrap replicates in this fit: refit with `trainlab fit ... --bootstrap N`)");
                }
            }
        }
        Usage::LimitedData => {
            let n = need(args.n, "--n", "limited-data")?;
            let dd = need(args.domain_tokens, "--domain-tokens", "limited-data")?;
            let plan = pair.limited_domain_data(n, dd, args.r_min, lvl)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                println!("limited domain data at N={n:.3e}, D_domain={dd:.3e}:");
                println!("  best domain share r_d  {}", fmt(&plan.r_domain));
                println!("  total tokens D         {}", fmt(&plan.tokens));
                println!("  domain loss            {}", fmt(&plan.domain_loss));
                println!("  general loss           {}", fmt(&plan.general_loss));
            }
        }
        Usage::Compute => {
            let c = need(args.flops, "--flops", "compute")?;
            let target = match args.optimise.as_str() {
                "domain" => Target::Domain,
                "general" => Target::General,
                o => bail!(trainlab_core::Error::invalid(
                    "--optimise",
                    o,
                    "unknown objective",
                    "use domain or general"
                )),
            };
            let plan = pair.compute_allocation(c, args.ratio, target, lvl)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                println!("compute allocation for C={c:.3e} FLOPs at r_d={}:", args.ratio);
                println!("  N_opt  {}", fmt(&plan.params));
                println!("  D_opt  {}", fmt(&plan.tokens));
                println!("  loss   {}", fmt(&plan.loss));
            }
        }
    }
    Ok(())
}

/// `trainlab execute-dcpt`: real small continual-pretraining runs on the CPU over a grid of sizes x ratios, written as
/// a CSV that `trainlab fit` reads, then the D-CPT law fitted on all but the held-out ratios and scored on them.
#[derive(Args, Debug, Clone)]
pub struct ExecuteArgs {
    /// Device that trains the runs: `cpu`, or `cuda` (the first GPU; fails with the reason when none is present).
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: TrainBackend,
    /// Hidden widths of the models (one model size each).
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    pub hidden: Vec<usize>,
    /// Domain shares r_d of the CPT mixture.
    #[arg(long, value_delimiter = ',', default_value = "0,0.2,0.4,0.6,0.8,1")]
    pub ratios: Vec<f64>,
    /// Ratios held out of the fit and predicted (must be among --ratios).
    #[arg(long, value_delimiter = ',', default_value = "0.4,0.8")]
    pub holdout: Vec<f64>,
    /// General-corpus pretraining tokens before CPT.
    #[arg(long, default_value_t = 100_000)]
    pub pretrain_tokens: u64,
    /// CPT tokens per run.
    #[arg(long, default_value_t = 100_000)]
    pub cpt_tokens: u64,
    /// Evaluation points per run (log-spaced token counts).
    #[arg(long, default_value_t = 10)]
    pub evals: usize,
    /// Overlap of the domain source with the general source (0 = disjoint statistics, 1 = identical).
    #[arg(long, default_value_t = 0.8)]
    pub overlap: f64,
    /// Vocabulary of the synthetic sources.
    #[arg(long, default_value_t = 16)]
    pub vocab: usize,
    /// Embedding width.
    #[arg(long, default_value_t = 8)]
    pub embed: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 5e-3)]
    pub lr: f64,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Starts for the fits.
    #[arg(long, default_value_t = 256)]
    pub starts: usize,
    /// Directory for runs.csv and fit.json.
    #[arg(long, default_value = "out/dcpt")]
    pub out: PathBuf,
}

/// The size of the `execute-dcpt` grid and its held-out ratios, checked before any run: widths, embedding and token
/// counts within what a CPU trains in hours, not years (each bound far above the defaults), at most 10,000 runs, and
/// every `--holdout` ratio one of `--ratios`, with at least one ratio left to fit on.
fn check_grid_size(args: &ExecuteArgs) -> anyhow::Result<()> {
    use trainlab_core::error::check;
    check::at_most(
        "--starts",
        args.starts as u64,
        1_000_000,
        "the start grid has a few thousand points",
    )?;
    check::at_most("--embed", args.embed as u64, 4_096, "a CPU trains these tiny models")?;
    for h in &args.hidden {
        check::at_most("--hidden", *h as u64, 4_096, "a CPU trains these tiny models")?;
    }
    const TOKENS: u64 = 1_000_000_000;
    check::at_most(
        "--pretrain-tokens",
        args.pretrain_tokens,
        TOKENS,
        "a billion tokens is hours per run",
    )?;
    check::at_most(
        "--cpt-tokens",
        args.cpt_tokens,
        TOKENS,
        "a billion tokens is hours per run",
    )?;
    let runs = args.hidden.len().saturating_mul(args.ratios.len());
    check::at_most(
        "--hidden x --ratios",
        runs as u64,
        10_000,
        "one run per width and ratio",
    )?;
    for (i, r) in args.ratios.iter().enumerate() {
        check::in_range(&format!("--ratios[{i}]"), *r, 0.0, 1.0)?;
    }
    for h in &args.holdout {
        if !args.ratios.iter().any(|r| (r - h).abs() < 1e-9) {
            bail!(trainlab_core::Error::invalid(
                "--holdout",
                h,
                "not one of --ratios",
                "hold out ratios that --ratios lists"
            ));
        }
    }
    if args
        .ratios
        .iter()
        .all(|r| args.holdout.iter().any(|h| (r - h).abs() < 1e-9))
    {
        bail!(trainlab_core::Error::invalid(
            "--holdout",
            format!("{:?}", args.holdout),
            "holds out every ratio, leaving none to fit on",
            "hold out some of --ratios, not all"
        ));
    }
    Ok(())
}

/// Runs `trainlab execute-dcpt`. A first Ctrl-C (`cancel`) stops the runs in progress (dropped) and starts no new
/// one; the runs that finished are written to `runs.csv`, the fit is skipped, and the caller exits 130.
pub fn execute(args: &ExecuteArgs, cancel: &Arc<AtomicBool>) -> anyhow::Result<()> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    use trainlab_core::error::check;
    use trainlab_executors::lm;
    check::at_least("--starts", args.starts as u64, 1)?;
    check::at_least("--evals", args.evals as u64, 1)?;
    check::at_most(
        "--evals",
        args.evals as u64,
        1_000,
        "one evaluation per log-spaced point",
    )?;
    check::at_least("--embed", args.embed as u64, 1)?;
    check::at_least("--vocab", args.vocab as u64, 2)?;
    check::at_most(
        "--vocab",
        args.vocab as u64,
        256,
        "each source stores V^3 probabilities",
    )?;
    check::positive_at_most("--lr", args.lr, 1.0, "AdamW diverges far below that")?;
    check::in_range("--overlap", args.overlap, 0.0, 1.0)?;
    check_grid_size(args)?;
    check_out_dir("--out", &args.out)?;
    let grid = lm::GridConfig {
        hidden: args.hidden.clone(),
        ratios: args.ratios.clone(),
        pretrain_tokens: args.pretrain_tokens,
        cpt_tokens: args.cpt_tokens,
        evals: args.evals,
        overlap: args.overlap,
        vocab: args.vocab,
        embed: args.embed,
        lr: args.lr,
        seed: Seed(args.seed),
        ..lm::GridConfig::default()
    };
    let runs = args.hidden.len() * args.ratios.len();
    let mp = MultiProgress::new();
    if crate::progress::quiet() {
        mp.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>14} [{bar:40}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let total = mp.add(ProgressBar::new(runs as u64));
    total.set_style(style.clone());
    total.set_prefix("runs");
    let bar = mp.add(ProgressBar::new(1000));
    bar.set_style(style);
    bar.set_prefix("current run");
    let progress = |done_runs: usize, frac: f64, label: &str| {
        total.set_position(done_runs as u64);
        bar.set_position((frac * 1000.0) as u64);
        bar.set_message(label.to_string());
    };
    let backend = match args.backend {
        TrainBackend::Cpu => lm::LmBackend::Cpu,
        TrainBackend::Cuda => lm::LmBackend::Cuda,
    };
    let result = lm::run_grid_on(&grid, backend, &progress, cancel)?;
    total.finish();
    bar.finish_and_clear();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let csv_path = args.out.join("runs.csv");
    std::fs::write(&csv_path, result.to_csv()).with_context(|| format!("writing {}", csv_path.display()))?;
    // Each run contributes one row per evaluation point.
    let evals = lm::eval_points(args.cpt_tokens, args.evals).len().max(1);
    let finished = result.rows.len() / evals;
    println!(
        "wrote {} ({} rows, {finished} of {runs} runs)",
        csv_path.display(),
        result.rows.len(),
    );
    if cancel.load(Ordering::Relaxed) {
        eprintln!("interrupted: {finished} of {runs} runs finished and are in runs.csv; the fit was skipped");
        return Ok(());
    }
    let table = Table::read(&csv_path)?;
    let cfg = config(args.seed, 1e-3, args.starts, cancel);
    let law = laws::DcptL3::new();
    for (col, flip, name) in [("general_loss", true, "general"), ("domain_loss", false, "domain")] {
        let mut data = fit::csv::dataset(&table, &law, col, flip)?;
        // Hold out by the domain share r_d (the general law's input is 1 - r_d).
        let held: Vec<f64> = args.holdout.iter().map(|r| if flip { 1.0 - r } else { *r }).collect();
        for row in data.x.iter_mut() {
            for h in &held {
                if (row[2] - h).abs() < 1e-9 {
                    row[2] = *h;
                }
            }
        }
        let fold = fit::holdout(&law, &data, 2, &held, &cfg)?;
        println!(
            "{name:>8} loss: fit on other ratios (train R^2 {:.4}); held-out r_d {:?}: R^2 {:.4}, MAPE {:.2}%, RMSE(log) {:.4}",
            fold.fit.gof.r2,
            args.holdout,
            fold.test.r2,
            100.0 * fold.test.mape,
            fold.test.rmse_log
        );
    }
    let report = fit_table("dcpt", &table, "both", &cfg, 0, 0.9, None)?;
    let p = write_json(&args.out, "fit.json", &report)?;
    println!("wrote {} (all ratios)", p.display());
    Ok(())
}
