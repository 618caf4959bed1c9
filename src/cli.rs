//! Argument definitions and dispatch.
use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use trainlab_core::{RunCtx, Seed};

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
    /// No progress bars (they are drawn only on a terminal anyway, and never with --json).
    #[arg(long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a study: every case of a grid over any workload kind through the kind table, in parallel, as Parquet,
    /// CSV, charts and report.html; `--shard I/N` for array jobs. Without SCENARIO runs the embedded default study
    /// (dense training: best parallel layout, step time, MFU, days and GPU-hours on 1k-16k H100s, closed form and
    /// operation-level simulator).
    Plan(PlanArgs),
    /// Merge the Parquet shards written by `plan --shard I/N` runs and write the full report.
    Merge(MergeArgs),
    /// Run one backend on a scenario.
    Run(RunArgs),
    /// Run every backend that applies to a scenario, side by side, with relative errors.
    Compare(CompareArgs),
    /// Measure real runs of a kind, fit its model (a profile for `--profile`), and report held-out error.
    Calibrate(CalibrateArgs),
    /// List the embedded scenarios, or print one.
    Scenarios(ScenariosArgs),
    /// List the workload kinds: backends, calibration, profiles read, embedded scenarios.
    Kinds(KindsArgs),
    /// Fit a scaling law (Chinchilla, D-CPT) to a CSV of runs, with bootstrap intervals.
    Fit(trainlab::dcpt::FitArgs),
    /// Plan a domain mixture ratio (D-CPT usages: trade-off, limited domain data, compute allocation).
    PlanMixture(trainlab::dcpt::PlanArgs),
    /// Run a grid of small continual-pretraining runs on this CPU and fit the D-CPT law to them.
    ExecuteDcpt(trainlab::dcpt::ExecuteArgs),
    /// A real fault-injection training run (C4D): worker processes, ring all-reduce over loopback TCP, detection,
    /// localisation and restart from checkpoints.
    C4Run(crate::cmd::c4::C4RunArgs),
    /// MoE layer: the M6-T quality experiment (the cost-model calibration is `calibrate --workload moe_layer`).
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
    /// Train a tiny MoE with top-1, top-2 and 2-top-1 prototypes across capacity factors (M6-T's claim).
    Quality {
        /// Fewer steps and seeds.
        #[arg(long)]
        quick: bool,
    },
}

/// `plan` arguments.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Study file or embedded name (kind = "study" or "plan"); default: the embedded `default-plan`.
    pub scenario: Option<String>,
    /// Output folder.
    #[arg(long, default_value = "out/plan")]
    pub out: PathBuf,
    /// Run only shard I of N (0-based), e.g. `--shard 3/16` from a Slurm array task; writes one Parquet per shard.
    /// It saves its finished cases every 30 s (`TRAINLAB_CHECKPOINT_SECS`) and on Ctrl-C or SIGTERM; run again into the same
    /// --out (a requeued task), an interrupted shard of the same study keeps them and runs only the rest.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// A profile file or directory from `trainlab calibrate` (one the study's kind reads), or a published-run device
    /// profile of `datasets/calibration/published-dense/` (dense_training, rlhf_iteration; its GPU only).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Finish an interrupted run in DIR (its output folder): run only the cases it did not finish and write the
    /// complete outputs there. The study and --profile must be those of that run. A run saves its finished cases
    /// every 30 s (`TRAINLAB_CHECKPOINT_SECS`; 0 turns it off), so even a killed run can be resumed.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["shard", "out"])]
    pub resume: Option<PathBuf>,
    /// Print a JSON summary on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Run nothing; write a batch job that runs the study as shards into `--out` (`slurm`: an array job, a merge
    /// job and `slurm/submit.sh` that chains them).
    #[arg(long, value_enum, conflicts_with_all = ["shard", "resume"])]
    pub emit: Option<Emit>,
    /// With `--emit`: the number of shards (array tasks), 1 to the study's case count (default: cases, at most 16).
    #[arg(long, value_name = "N", requires = "emit")]
    pub shards: Option<usize>,
    /// The network model that times communication in every case: `alpha-beta`, or the flow-level fabric simulator
    /// with `flow-ecmp` or `flow-planned` paths (dense_training and moe_layer studies; not with --emit).
    #[arg(long, value_enum, default_value = "alpha-beta")]
    pub network: trainlab::kinds::NetworkChoice,
}

/// What `plan --emit` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Emit {
    /// A Slurm array job (sbatch), its merge job and a submit script.
    Slurm,
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
    /// Backend name (`trainlab kinds` lists them per kind), e.g. `roofline`, `cpu`, `cuda`, `des`.
    #[arg(long)]
    pub backend: String,
    /// A profile file or directory from `trainlab calibrate` (one the scenario's kind reads), or a published-run device
    /// profile of `datasets/calibration/published-dense/` (dense_training, rlhf_iteration; its GPU only).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// The network model that times communication: `alpha-beta`, or the flow-level fabric simulator with `flow-ecmp`
    /// (hash collisions, the mean of 8 draws; 2 with --quick) or `flow-planned` paths (dense_training and moe_layer).
    #[arg(long, value_enum, default_value = "alpha-beta")]
    pub network: trainlab::kinds::NetworkChoice,
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
    /// A profile file or directory from `trainlab calibrate` (one the scenario's kind reads), or a published-run device
    /// profile of `datasets/calibration/published-dense/` (dense_training, rlhf_iteration; its GPU only).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Skip slow backends (long real runs) and use fewer replications.
    #[arg(long)]
    pub quick: bool,
    /// The network model that times communication: `alpha-beta`, or the flow-level fabric simulator with `flow-ecmp`
    /// (hash collisions, the mean of 8 draws; 2 with --quick) or `flow-planned` paths (dense_training and moe_layer).
    #[arg(long, value_enum, default_value = "alpha-beta")]
    pub network: trainlab::kinds::NetworkChoice,
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

/// `kinds` arguments.
#[derive(Debug, Args)]
pub struct KindsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `calibrate` arguments.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// The workload kind to calibrate (`trainlab kinds` lists which have a calibration): `gemm` (the device
    /// profile: GEMM, memory, launch), `moe_layer`, `training_job`.
    #[arg(long, default_value = "gemm")]
    pub workload: String,
    /// Device to measure: `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Output folder for `profile-<kind>-<device>.toml` and the measured-vs-predicted records.
    #[arg(long, default_value = "out/calibration")]
    pub out: PathBuf,
    /// Fewer and shorter runs: for smoke tests, not for a profile you will trust.
    #[arg(long)]
    pub quick: bool,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

/// The run context for a seed and the shared cancel flag, with a progress bar that backends reporting progress
/// (simulator replications, measured sweeps) drive; hidden with `json` or `--quiet`. The caller clears the bar.
pub fn ctx(seed: Seed, cancel: &Arc<AtomicBool>, json: bool) -> (RunCtx, indicatif::ProgressBar) {
    let mut c = RunCtx::new(seed);
    c.cancel = cancel.clone();
    let bar = trainlab::progress::bar(0, "running", json);
    c.progress = Some(trainlab::progress::callback(&bar).0);
    (c, bar)
}

/// Dispatches a parsed command line.
pub fn dispatch(cli: Cli, cancel: Arc<AtomicBool>) -> Result<()> {
    let seed = cli.seed;
    trainlab::progress::set_quiet(cli.quiet);
    match cli.command {
        Command::Plan(a) if a.emit.is_some() => crate::cmd::slurm::emit(&a, seed),
        Command::Plan(a) => crate::cmd::plan::run(&a, seed, &cancel),
        Command::Merge(a) => crate::cmd::plan::merge(&a),
        Command::Run(a) => crate::cmd::answer::run_one(
            &a.scenario,
            &a.backend,
            a.profile.as_deref(),
            a.network,
            seed,
            &cancel,
            a.json,
            a.out.as_deref(),
        ),
        Command::Compare(a) => crate::cmd::answer::compare(
            &a.scenario,
            a.profile.as_deref(),
            a.network,
            a.quick,
            seed,
            &cancel,
            a.json,
            a.out.as_deref(),
        ),
        Command::Calibrate(a) => crate::cmd::calibrate::run(&a, seed, &cancel),
        Command::Scenarios(a) => crate::cmd::scenarios::scenarios(&a),
        Command::Kinds(a) => crate::cmd::scenarios::kinds(&a),
        Command::Fit(a) => trainlab::dcpt::fit(&a, &cancel),
        Command::PlanMixture(a) => trainlab::dcpt::plan_mixture(&a, &cancel),
        Command::ExecuteDcpt(a) => trainlab::dcpt::execute(&a, &cancel),
        Command::C4Run(a) => crate::cmd::c4::run(a, seed, cancel),
        Command::Moe(a) => {
            let s = trainlab_core::Seed(seed.unwrap_or(1000));
            match a.what {
                MoeCommand::Quality { quick } => print!("{}", crate::cmd::moe::quality_table(quick, s, &cancel)?),
            }
            Ok(())
        }
    }
}
