//! `trainlab c4-run`: a real fault-injection run (issue 3, C4D) with its per-fault table: worker processes doing
//! compute and a ring all-reduce over loopback TCP, faults injected (SIGKILL, SIGSTOP hang, a slow rank whose compute
//! phase is stretched by the slowdown factor), detected and localised by the same detector the simulator uses,
//! restarted from checkpoints.
//! With no fault (`--kill 0 --hang 0 --slow 0 --minutes 10`) it is the false-alarm run.
use anyhow::bail;
use clap::Args;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use trainlab_executors::faultrun::{self, FaultRunConfig, Injection, ScheduledFault};

/// Arguments of `trainlab c4-run`.
#[derive(Args, Debug, Clone)]
pub struct C4RunArgs {
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    pub ranks: usize,
    /// Training steps (ignored with --minutes).
    #[arg(long, default_value_t = 300)]
    pub steps: u64,
    /// Compute seconds per step.
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
    /// Seed of the fault schedule (which rank gets which fault).
    #[arg(long = "fault-seed", default_value_t = 42)]
    pub fault_seed: u64,
    /// Print the report as JSON-like debug output.
    #[arg(long)]
    pub json: bool,
}

/// Runs `trainlab c4-run`.
pub fn run(a: C4RunArgs, cancel: Arc<AtomicBool>) -> anyhow::Result<()> {
    if a.ranks < 2 {
        bail!(trainlab_core::Error::invalid(
            "--ranks",
            a.ranks,
            "need at least 2 ranks",
            "use --ranks 2 or more"
        ));
    }
    if !(a.slowdown.is_finite() && a.slowdown >= 1.0) {
        bail!(trainlab_core::Error::invalid(
            "--slowdown",
            a.slowdown,
            "must be >= 1",
            "e.g. --slowdown 1.5"
        ));
    }
    let steps = match a.minutes {
        Some(m) => (m * 60.0 / a.compute_s.max(1e-3)) as u64 * 4,
        None => a.steps,
    };
    let mut kinds = Vec::new();
    kinds.extend(std::iter::repeat_n(Injection::Kill, a.kill));
    kinds.extend(std::iter::repeat_n(Injection::Hang, a.hang));
    kinds.extend(std::iter::repeat_n(Injection::Slow(a.slowdown), a.slow));
    let n = kinds.len() as u64;
    let mut rng = a.fault_seed;
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
    let r = faultrun::run(&cfg, &cancel)?;
    if a.json {
        println!("{r:#?}");
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
            x.restart_s,
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
    if r.interrupted {
        return Err(trainlab_core::Error::Interrupted.into());
    }
    Ok(())
}
