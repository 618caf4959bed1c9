//! `trainlab c4-run`: a real fault-injection run (issue 3, C4D) with its per-fault table: worker processes doing
//! compute and a ring all-reduce over loopback TCP, faults injected (SIGKILL, SIGSTOP hang, a slow rank whose compute
//! phase is stretched by the slowdown factor), detected and localised by the same detector the simulator uses,
//! restarted from checkpoints. The faults come from `--kill/--hang/--slow` (spread over the run, ranks drawn from the
//! seed) or from a schedule file (`--schedule`, the `[workload.schedule]` table of a `training_job` scenario).
//! With no fault (`--kill 0 --hang 0 --slow 0 --minutes 10`) it is the false-alarm run.
use anyhow::{Context, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use trainlab_core::Workload;
use trainlab_core::workloads::training_job::{FaultSchedule, TrainingJob};
use trainlab_executors::faultrun::{self, FaultRun, FaultRunConfig, FaultRunReport, Injection, ScheduledFault};

/// Arguments of `trainlab c4-run`.
#[derive(Args, Debug, Clone)]
pub struct C4RunArgs {
    /// Run this fault schedule instead of --kill/--hang/--slow. A TOML file with the fields of a training_job
    /// scenario's [workload.schedule] table, or a whole training_job scenario with one (its step_time_s and
    /// detection thresholds then apply too), e.g.:
    ///
    ///     ranks = 4                    # worker processes, at least 2
    ///     steps = 300                  # steps to train
    ///     checkpoint_every_steps = 10  # a checkpoint after every 10th step
    ///     slow_give_up_steps = 40      # optional: a slow rank not named within 40 steps is missed
    ///
    ///     [[faults]]                   # in increasing at_step, each at step >= 10 (the detector's warm-up)
    ///     at_step = 60                 # injected once 60 steps are done
    ///     rank = 1                     # 0 <= rank < ranks
    ///     kind = "kill"                # "kill" (SIGKILL), "hang" (SIGSTOP) or "slow"
    ///
    ///     [[faults]]
    ///     at_step = 200
    ///     rank = 3
    ///     kind = "slow"
    ///     slowdown = 1.5               # slow faults only: compute takes 1.5 times as long
    ///
    /// A bad file exits with code 2 and names the field (e.g. schedule.faults[1].rank).
    #[arg(long, value_name = "FILE", verbatim_doc_comment,
          conflicts_with_all = ["ranks", "steps", "kill", "hang", "slow", "slowdown", "minutes", "fault_seed"])]
    pub schedule: Option<PathBuf>,
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    pub ranks: usize,
    /// Training steps (ignored with --minutes).
    #[arg(long, default_value_t = 300)]
    pub steps: u64,
    /// Compute seconds per step (a bare --schedule file's step_time_s).
    #[arg(long, default_value_t = 0.06)]
    pub compute_s: f64,
    /// Kills to inject.
    #[arg(long, default_value_t = 1)]
    pub kill: usize,
    /// Hangs (SIGSTOP) to inject.
    #[arg(long, default_value_t = 1)]
    pub hang: usize,
    /// Slow ranks to inject (the rank's compute phase takes --slowdown times as long).
    #[arg(long, default_value_t = 1)]
    pub slow: usize,
    /// Slowdown factor of slow ranks.
    #[arg(long, default_value_t = 1.5)]
    pub slowdown: f64,
    /// Run this many minutes instead of a step count (for the fault-free false-alarm run).
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Seed of the fault schedule (which rank gets which fault); default: the global --seed, else 42.
    #[arg(long = "fault-seed")]
    pub fault_seed: Option<u64>,
    /// Print the report as JSON-like debug output.
    #[arg(long)]
    pub json: bool,
}

/// The scheduled job in a `--schedule` file: a `training_job` scenario with a `schedule`, or a bare schedule table
/// (run with `compute_s` seconds of compute per step and the small job's detector thresholds). Errors name the file
/// and the field path.
pub fn schedule_job(path: &Path, compute_s: f64) -> anyhow::Result<TrainingJob> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| trainlab_core::Error::io(format!("reading {origin}"), e))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        trainlab_core::Error::invalid(
            origin.clone(),
            "not TOML",
            e.message().to_string(),
            "write the schedule as TOML (see `trainlab c4-run --help`)",
        )
    })?;
    if table.contains_key("kind") || table.contains_key("workload") {
        let job: TrainingJob = trainlab_datasets::scenario::parse(&text, &origin)?.workload()?;
        if job.schedule.is_none() {
            bail!(trainlab_core::Error::invalid(
                format!("{origin}: workload.schedule"),
                "missing",
                "c4-run runs a scheduled job; this scenario gives failure rates",
                "add a [workload.schedule] table, or run it with `trainlab compare`",
            ));
        }
        return Ok(job);
    }
    let s: FaultSchedule = trainlab_datasets::scenario::from_table(&table, &origin, "schedule")?;
    let mut job = faultrun::small_job(s.ranks, s.steps, s.faults.clone());
    job.schedule = Some(s);
    job.step_time_s = compute_s;
    job.validate()
        .map_err(|e| e.map_field(|f| format!("{origin}: {}", f.strip_prefix("workload.").unwrap_or(&f))))?;
    Ok(job)
}

/// Runs `trainlab c4-run`. `seed` is the global `--seed` (the fault schedule's seed unless `--fault-seed` is given).
pub fn run(a: C4RunArgs, seed: Option<u64>, cancel: Arc<AtomicBool>) -> anyhow::Result<()> {
    if !(a.compute_s.is_finite() && a.compute_s > 0.0) {
        bail!(trainlab_core::Error::invalid(
            "--compute-s",
            a.compute_s,
            "must be a finite number of seconds > 0",
            "e.g. --compute-s 0.06"
        ));
    }
    let spin = trainlab::progress::spinner("c4-run", a.json);
    spin.set_message("fault-injection run: worker processes, ring all-reduce over loopback");
    let r = run_c4(&a, seed, &cancel);
    spin.finish_and_clear();
    let r = r?;
    if a.json {
        // The report as JSON; an interrupted run says so (`"interrupted": true`) and exits 130.
        println!("{}", serde_json::to_string_pretty(&r)?);
        if r.interrupted {
            return Err(trainlab_core::Error::Interrupted.into());
        }
        return Ok(());
    }
    println!(
        "{:<28} {:>6} {:>12} {:>10} {:>10} {:>6}  verdict",
        "fault", "rank", "latency_s", "localised", "restart_s", "lost"
    );
    for x in &r.records {
        let (f, rank) = match x.injected {
            Some(f) => (format!("{:?} @ step {}", f.what, f.at_step), f.rank.to_string()),
            None => ("(false alarm)".to_string(), "-".to_string()),
        };
        println!(
            "{f:<28} {rank:>6} {:>12} {:>10} {:>10.3} {:>6}  {}",
            x.detection_latency_s.map_or("-".to_string(), |l| format!("{l:.3}")),
            x.localised,
            (x.restart_s - r.step_period_mean_s).max(0.0),
            x.lost_steps,
            x.verdict.clone().unwrap_or_default()
        );
    }
    println!(
        "steps {} in {:.1} s, step period {:.3} s, checkpointing {:.2} s, false alarms {}, ETTR {:.3}{}",
        r.steps_done,
        r.wall_s,
        r.step_period_s,
        r.checkpoint_s,
        r.false_alarms,
        r.ettr,
        if r.interrupted {
            " (interrupted: partial results)"
        } else {
            ""
        }
    );
    println!("restart_s: from the verdict until the restarted job begins its first step");
    if r.interrupted {
        return Err(trainlab_core::Error::Interrupted.into());
    }
    Ok(())
}

/// The run itself: the schedule file's job, or the job the flags describe.
fn run_c4(a: &C4RunArgs, seed: Option<u64>, cancel: &AtomicBool) -> anyhow::Result<FaultRunReport> {
    Ok(match &a.schedule {
        Some(path) => {
            let job = schedule_job(path, a.compute_s)?;
            if let Err(trainlab_core::Error::Unsupported(why)) = FaultRunConfig::for_job(&job) {
                bail!(trainlab_core::Error::invalid(
                    format!("{}: schedule", path.display()),
                    "too large",
                    why,
                    "fewer ranks or steps, or a shorter step_time_s",
                ));
            }
            FaultRun::new(None)
                .run_job(&job, cancel)
                .with_context(|| format!("running the schedule in {}", path.display()))?
        }
        None => run_flags(a, seed, cancel)?,
    })
}

/// The run of `--kill/--hang/--slow` faults spread over the steps, ranks drawn from the seed.
fn run_flags(a: &C4RunArgs, seed: Option<u64>, cancel: &AtomicBool) -> anyhow::Result<FaultRunReport> {
    let n = check_flags(a)?;
    let steps = match a.minutes {
        Some(m) => (m * 60.0 / a.compute_s.max(1e-3)) as u64 * 4,
        None => a.steps,
    };
    if steps == 0 {
        bail!(trainlab_core::Error::invalid(
            "--minutes",
            a.minutes.unwrap_or(0.0),
            format!("shorter than one step of --compute-s {} s", a.compute_s),
            "more minutes or a smaller --compute-s"
        ));
    }
    let mut kinds = Vec::new();
    kinds.extend(std::iter::repeat_n(Injection::Kill, a.kill));
    kinds.extend(std::iter::repeat_n(Injection::Hang, a.hang));
    kinds.extend(std::iter::repeat_n(Injection::Slow(a.slowdown), a.slow));
    let mut rng = a.fault_seed.or(seed).unwrap_or(42);
    let faults = kinds
        .into_iter()
        .enumerate()
        .map(|(i, what)| {
            rng = rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ScheduledFault {
                at_step: steps * (i as u64 + 1) / (n + 1),
                rank: (rng >> 33) as usize % a.ranks,
                what,
            }
        })
        .collect();
    let mut cfg = FaultRunConfig::small(steps, faults);
    cfg.ranks = a.ranks;
    cfg.compute_s = a.compute_s;
    if let Some(m) = a.minutes {
        cfg.time_limit_s = m * 60.0;
    } else {
        cfg.time_limit_s = cfg.time_limit_s.max(steps as f64 * a.compute_s * 5.0);
    }
    Ok(faultrun::run(&cfg, cancel)?)
}

/// The ranges of the `--kill/--hang/--slow` run's flags, checked before any worker starts: 2 to
/// [`faultrun::MAX_RANKS`] ranks, at least one step, `--minutes` finite and positive, `--slowdown` >= 1, and an
/// estimated wall time (steps at `--compute-s` each, 5 s per fault) within [`faultrun::MAX_RUN_S`], as for a
/// `--schedule` file. Returns the number of faults.
fn check_flags(a: &C4RunArgs) -> anyhow::Result<u64> {
    use trainlab_core::Error;
    let max_ranks = faultrun::MAX_RANKS;
    if a.ranks < 2 || a.ranks as u64 > max_ranks {
        bail!(Error::invalid(
            "--ranks",
            a.ranks,
            format!("need 2 to {max_ranks} ranks (each is a worker process on this machine)"),
            format!("use --ranks between 2 and {max_ranks}")
        ));
    }
    if !(a.slowdown.is_finite() && a.slowdown >= 1.0) {
        bail!(Error::invalid(
            "--slowdown",
            a.slowdown,
            "must be >= 1",
            "e.g. --slowdown 1.5"
        ));
    }
    let n = (a.kill as u64)
        .saturating_add(a.hang as u64)
        .saturating_add(a.slow as u64);
    let run_s = match a.minutes {
        Some(m) => {
            if !(m.is_finite() && m > 0.0) {
                bail!(Error::invalid(
                    "--minutes",
                    m,
                    "must be a finite number of minutes > 0",
                    "e.g. --minutes 10"
                ));
            }
            m * 60.0
        }
        None => {
            if a.steps == 0 {
                bail!(Error::invalid("--steps", 0, "must be at least 1", "e.g. --steps 300"));
            }
            a.steps as f64 * a.compute_s.max(1e-3) * 1.5
        }
    };
    let estimate = run_s + n as f64 * 5.0 + 5.0;
    let max_s = faultrun::MAX_RUN_S;
    if estimate > max_s {
        let (flag, value) = if n as f64 * 5.0 > run_s {
            ("--kill/--hang/--slow", format!("{}/{}/{}", a.kill, a.hang, a.slow))
        } else if let Some(m) = a.minutes {
            ("--minutes", m.to_string())
        } else {
            ("--steps x --compute-s", format!("{} x {}", a.steps, a.compute_s))
        };
        bail!(Error::invalid(
            flag,
            value,
            format!(
                "the run would take about {} s (more than {max_s} s: {} s of steps at --compute-s {} and about 5 s \
                 per fault)",
                seconds(estimate),
                seconds(run_s),
                a.compute_s
            ),
            "fewer steps, minutes or faults, or a smaller --compute-s",
        ));
    }
    Ok(n)
}

/// Seconds for a message: whole seconds, or scientific notation past a million.
fn seconds(s: f64) -> String {
    if s < 1e6 { format!("{s:.0}") } else { format!("{s:.2e}") }
}
