//! Argument definitions and dispatch.
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use trainlab_core::{DeviceProfile, RunCtx, Seed};

/// An input problem the CLI itself detects (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Predict, simulate, execute and calibrate large-model training workloads.
///
/// Every workload is answered by one interface at several fidelities (analytical, simulated, measured) so the
/// answers can be compared and the models calibrated against real runs.
#[derive(Debug, Parser)]
#[command(name = "trainlab", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Seed for every random stream (overrides the scenario's `seed`).
    #[arg(long, global = true)]
    pub seed: Option<u64>,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plan a training study: best parallel layout, step time, MFU, days and GPU-hours per case; writes Parquet,
    /// CSV, charts and report.html. Without SCENARIO runs the embedded default study.
    Plan(PlanArgs),
    /// Merge the Parquet shards written by `plan --shard I/N` runs and write the full report.
    Merge(MergeArgs),
    /// Run one backend on a scenario.
    Run(RunArgs),
    /// Run every backend that applies to a scenario, side by side, with relative errors.
    Compare(CompareArgs),
    /// Measure this machine (or the GPU), fit a device profile, and report held-out prediction error.
    Calibrate(calibrate::CalibrateArgs),
    /// List the embedded scenarios, or print one.
    Scenarios(ScenariosArgs),
    /// Fit a scaling law (Chinchilla, D-CPT) to a CSV of runs, with bootstrap intervals.
    Fit(crate::cmd::dcpt::FitArgs),
    /// Plan a domain mixture ratio (D-CPT usages: trade-off, limited domain data, compute allocation).
    PlanMixture(crate::cmd::dcpt::PlanArgs),
    /// Run a grid of small continual-pretraining runs on this CPU and fit the D-CPT law to them.
    ExecuteDcpt(crate::cmd::dcpt::ExecuteArgs),
    /// A real fault-injection training run (C4D): worker processes, ring all-reduce over loopback TCP, detection,
    /// localisation and restart from checkpoints.
    C4Run(crate::cmd::c4::C4RunArgs),
    /// MoE layer: calibrate the simulator against real CPU runs, or run the M6-T quality experiment.
    Moe(MoeArgs),
}

/// `moe` arguments.
#[derive(Debug, Args)]
pub struct MoeArgs {
    /// What to do.
    #[command(subcommand)]
    pub what: MoeCommand,
}

/// `moe` subcommands.
#[derive(Debug, Subcommand)]
pub enum MoeCommand {
    /// Fit the MoE cost model to measured CPU layers and report held-out step-time error.
    Calibrate {
        /// Fewer configurations and repeats.
        #[arg(long)]
        quick: bool,
    },
    /// Train a tiny MoE with top-1, top-2 and 2-top-1 prototypes across capacity factors (M6-T's claim).
    Quality {
        /// Fewer steps and seeds.
        #[arg(long)]
        quick: bool,
    },
}

use crate::calibrate;

/// `plan` arguments.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Scenario file or embedded name (kind = "plan"); default: the embedded `default-plan`.
    pub scenario: Option<String>,
    /// Output folder.
    #[arg(long, default_value = "out/plan")]
    pub out: PathBuf,
    /// Run only shard I of N (0-based), e.g. `--shard 3/16` from a Slurm array task; writes one Parquet per shard.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// A device profile TOML from `trainlab calibrate` to use instead of datasheet efficiencies.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Print a JSON summary on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `merge` arguments.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Folder holding `records-shard-*-of-N.parquet` files (all N must be present).
    pub dir: PathBuf,
    /// Output folder for the merged tables and report (default: DIR).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

/// `run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario file or embedded name.
    pub scenario: String,
    /// Backend name (see `compare` for the list that applies), e.g. `roofline`, `cpu`, `cuda`, `des`.
    #[arg(long)]
    pub backend: String,
    /// Device profile TOML for analytical backends.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Write records (Parquet, CSV) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `compare` arguments.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Scenario file or embedded name.
    pub scenario: String,
    /// Device profile TOML for analytical backends.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Skip slow backends (long real runs).
    #[arg(long)]
    pub quick: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Write records (Parquet, CSV) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `scenarios` arguments.
#[derive(Debug, Args)]
pub struct ScenariosArgs {
    /// Print this embedded scenario's TOML.
    #[arg(long)]
    pub show: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Reads a device profile TOML.
pub fn load_profile(path: &std::path::Path) -> Result<DeviceProfile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| trainlab_core::Error::io(format!("reading profile {}", path.display()), e))?;
    let p: DeviceProfile = toml::from_str(&text).map_err(|e| {
        trainlab_core::Error::invalid(
            path.display().to_string(),
            "(profile)",
            e.message().to_string(),
            "use a file written by `trainlab calibrate`",
        )
    })?;
    Ok(p)
}

/// The run context for a seed and the shared cancel flag.
pub fn ctx(seed: Seed, cancel: &Arc<AtomicBool>) -> RunCtx {
    let mut c = RunCtx::new(seed);
    c.cancel = cancel.clone();
    c
}

/// Dispatches a parsed command line.
pub fn dispatch(cli: Cli, cancel: Arc<AtomicBool>) -> Result<()> {
    let seed = cli.seed;
    match cli.command {
        Command::Plan(a) => crate::plan::run(&a, seed, &cancel),
        Command::Merge(a) => crate::plan::merge(&a),
        Command::Run(a) => {
            let profile = a.profile.as_deref().map(load_profile).transpose()?;
            crate::registry::run_one(
                &a.scenario,
                &a.backend,
                profile,
                seed,
                &cancel,
                a.json,
                a.out.as_deref(),
            )
        }
        Command::Compare(a) => {
            let profile = a.profile.as_deref().map(load_profile).transpose()?;
            crate::registry::compare(&a.scenario, profile, a.quick, seed, &cancel, a.json, a.out.as_deref())
        }
        Command::Calibrate(a) => calibrate::run(&a, seed, &cancel),
        Command::Scenarios(a) => scenarios(&a),
        Command::Fit(a) => crate::cmd::dcpt::fit(&a, &cancel),
        Command::PlanMixture(a) => crate::cmd::dcpt::plan_mixture(&a, &cancel),
        Command::ExecuteDcpt(a) => crate::cmd::dcpt::execute(&a, &cancel),
        Command::C4Run(a) => crate::cmd::c4::run(a, cancel),
        Command::Moe(a) => {
            let s = Seed(seed.unwrap_or(42));
            match a.what {
                MoeCommand::Calibrate { quick } => {
                    let cal = crate::cmd::moe::calibrate_cpu(quick, s, &cancel)?;
                    print!("{}", cal.markdown());
                    println!(
                        "held-out step time: median |error| {:.1}%, worst {:.1}% over {} layers",
                        100.0 * cal.held_out_median_abs_error(),
                        100.0 * cal.held_out_max_abs_error(),
                        cal.held_out.len()
                    );
                }
                MoeCommand::Quality { quick } => print!("{}", crate::cmd::moe::quality_table(quick, &cancel)?),
            }
            Ok(())
        }
    }
}

fn scenarios(a: &ScenariosArgs) -> Result<()> {
    use trainlab_datasets::scenario::{EMBEDDED, parse};
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
