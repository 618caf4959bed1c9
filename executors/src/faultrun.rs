//! A real fault-injection run of a small synchronous training job on this machine (the measured backend of
//! [`TrainingJob`]).
//!
//! `ranks` worker processes (the trainlab binary's hidden `__c4-worker` subcommand, see [`worker_main`]) each do a
//! fixed amount of floating-point work per step and a real ring all-reduce over loopback TCP (127.0.0.1 only);
//! rank 0 checkpoints the parameters to a temporary directory. The monitor (this module, in the calling process)
//! receives every worker's collective entry/exit timestamps, feeds them to the same
//! [`Detector`](trainlab_core::detector::Detector) the simulator uses, and injects faults on schedule:
//! - `kill`: SIGKILL the worker;
//! - `hang`: SIGSTOP it (never continued);
//! - `slow`: stretch its compute phase to `slowdown` times its measured duration. The monitor writes a throttle file
//!   naming the worker's pid and factor; the worker, after each compute phase of wall time `d`, stalls for
//!   `(slowdown - 1) d` before entering the collective, as a host waits on a throttled GPU. (An earlier SIGSTOP/SIGCONT
//!   duty cycle was dropped: with four workers sharing two cores, the slowdown it produced depended on contention
//!   and fell well short of the nominal factor.) The slowdown each slow rank really showed is measured from its
//!   timestamps and reported ([`FaultRecord::measured_slowdown`]). A slow rank the detector has not named within
//!   [`FaultRunConfig::slow_give_up_steps`] steps is recorded as missed and its throttle lifted.
//!
//! On a verdict the monitor records the detection latency and whether the named rank is the injected one, kills the
//! workers' process group, and restarts from the last checkpoint with a fresh process in place of the faulty one
//! (a spare) or, with no spare left, without it. It measures restart time (verdict to the first completed step),
//! lost work (steps since the checkpoint) and ETTR (useful step time / wall time). Workers live in their own process
//! group and die with the monitor (`PR_SET_PDEATHSIG`); on cancellation (Ctrl-C) the group is killed and the results
//! so far are returned. After each (re)start a fault waits until the group has completed
//! [`FaultRunConfig::warmup_steps`] steps, so that the detector knows the step period before it has to judge.
//!
//! As the measured backend ([`FaultRun`]) it runs a scheduled job (`workload.schedule`) exactly as written
//! ([`FaultRunConfig::for_job`]): its ranks, steps, checkpoint interval, faults, `step_time_s` seconds of compute
//! per step and C4D thresholds. A job with failure rates (thousands of GPUs over weeks) cannot run here: the backend
//! runs its [`scaled_job`] (4 processes, 200 steps, one fault per kind) instead and says so through
//! [`Backend::answers`], so that its answer is compared only with predictions of that same scaled job.
pub mod calibrate;
mod worker;

pub use worker::worker_main;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trainlab_core::detector::{Detector, DetectorConfig, Verdict};
use trainlab_core::workloads::training_job::{
    CheckpointInterval, DetectionSpec, Estimate, FaultKind, FaultSchedule, InjectedKind, Policy, ScheduledFaultOutcome,
    ScheduledFaultSpec, ScheduledOutcome, TrainingJob, TrainingJobOutcome,
};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, Workload};
use worker::{WorkerArgs, now_s};

/// The floor of the hang timeout, seconds: the detector's hang threshold is `max(hang_steps x period, this)`, because
/// on a shared machine a healthy step now and then takes several periods.
pub const HANG_FLOOR_S: f64 = 1.0;

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Injection {
    /// SIGKILL.
    Kill,
    /// SIGSTOP, never continued.
    Hang,
    /// The rank's compute phase takes this many times as long (>= 1).
    Slow(f64),
}

/// One scheduled fault: injected into `rank` once the job has completed `at_step` steps.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ScheduledFault {
    /// Completed steps before injection.
    pub at_step: u64,
    /// Target rank.
    pub rank: usize,
    /// What to do.
    pub what: Injection,
}

/// Configuration of a real run.
#[derive(Debug, Clone)]
pub struct FaultRunConfig {
    /// The executable that understands the worker subcommand.
    pub exe: PathBuf,
    /// Arguments before the worker's own (e.g. `["__c4-worker"]`).
    pub worker_prefix: Vec<String>,
    /// Worker processes.
    pub ranks: usize,
    /// Spare processes available for replacement.
    pub spares: usize,
    /// Steps to train.
    pub steps: u64,
    /// Target compute time per step, seconds (calibrated to a work count on this machine).
    pub compute_s: f64,
    /// Floats all-reduced per step.
    pub len: usize,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// Faults to inject.
    pub faults: Vec<ScheduledFault>,
    /// Detector: hang threshold in step periods (floor `hang_min_s`).
    pub hang_steps: f64,
    /// Detector: floor of the hang threshold, seconds.
    pub hang_min_s: f64,
    /// Detector: straggler window in steps.
    pub window: usize,
    /// Detector: straggler lag threshold (fraction of the step period).
    pub slow_threshold: f64,
    /// Give up after this many seconds of wall time.
    pub time_limit_s: f64,
    /// A slow rank not named within this many completed steps after its injection counts as missed.
    pub slow_give_up_steps: u64,
    /// Steps the job completes after each (re)start before a fault is injected (the detector's warm-up: it needs
    /// the step period and a full straggler window), whatever the fault's `at_step`.
    pub warmup_steps: u64,
}

impl FaultRunConfig {
    /// A 4-rank run of `steps` steps of about 60 ms with the given faults, using the current executable.
    pub fn small(steps: u64, faults: Vec<ScheduledFault>) -> Self {
        FaultRunConfig {
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("trainlab")),
            worker_prefix: vec!["__c4-worker".to_string()],
            ranks: 4,
            spares: 8,
            steps,
            compute_s: 0.06,
            len: 16_384,
            checkpoint_every: 10,
            faults,
            hang_steps: 8.0,
            hang_min_s: HANG_FLOOR_S,
            window: 8,
            slow_threshold: 0.15,
            time_limit_s: 300.0,
            slow_give_up_steps: 40,
            warmup_steps: 10,
        }
    }
}

/// What happened to one injected fault (or one false alarm).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FaultRecord {
    /// The injection (None for a false alarm).
    pub injected: Option<ScheduledFault>,
    /// Seconds from injection to verdict (None if never detected).
    pub detection_latency_s: Option<f64>,
    /// The verdict.
    pub verdict: Option<String>,
    /// Whether the verdict named the injected rank.
    pub localised: bool,
    /// Seconds from the verdict until the restarted job completed a step.
    pub restart_s: f64,
    /// Steps lost (completed since the last checkpoint).
    pub lost_steps: u64,
    /// For a slow injection: the faulty rank's median compute time (collective exit to next entry) while slow,
    /// divided by the median of the healthy ranks over the same steps. None for other faults or too few steps.
    pub measured_slowdown: Option<f64>,
}

/// The result of a real run.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct FaultRunReport {
    /// Per fault (and false alarm), in order.
    pub records: Vec<FaultRecord>,
    /// Verdicts with no fault injected.
    pub false_alarms: u64,
    /// Wall time, seconds.
    pub wall_s: f64,
    /// Steps committed (completed by all ranks and not lost).
    pub steps_done: u64,
    /// Median healthy step period, seconds.
    pub step_period_s: f64,
    /// Mean healthy step period, seconds.
    pub step_period_mean_s: f64,
    /// Seconds spent writing checkpoints.
    pub checkpoint_s: f64,
    /// Seconds from the start of the run to the first completed step (spawning the workers, connecting the ring,
    /// and that step).
    pub startup_s: f64,
    /// Useful time / wall time, where useful time is the committed steps times the mean healthy step period (the
    /// mean, not the median, so that step-time noise on a shared machine counts as training, not as lost time).
    pub ettr: f64,
    /// True if cancelled before the end (a run stopped by its time limit is not interrupted).
    pub interrupted: bool,
}

enum Msg {
    Hello(usize, u16, u32, TcpStream),
    Enter(usize, u64, f64),
    Exit(usize, u64, f64),
    Progress(usize, u64, u64, u64),
    Ckpt(u64, f64),
}

/// Measures how many passes of the worker's kernel take `seconds` on this machine.
fn calibrate_work(len: usize, seconds: f64) -> u64 {
    let params = vec![0.1f32; len];
    let mut out = vec![0.0f32; len];
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < 0.05 {
        worker::compute(&params, 10, n, 0, &mut out);
        n += 10;
    }
    std::hint::black_box(&out);
    let per = t.elapsed().as_secs_f64() / n as f64;
    ((seconds / per) as u64).max(1)
}

struct Group {
    children: Vec<Child>,
    pids: Vec<u32>,
    pgid: Option<i32>,
}

impl Group {
    fn kill(&mut self) {
        if let Some(g) = self.pgid {
            // SAFETY: kill(2) on a process group we created; no memory is touched.
            unsafe {
                libc::kill(-g, libc::SIGCONT);
                libc::kill(-g, libc::SIGKILL);
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a worker pid we spawned.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Runs the job with its fault schedule. Returns early (with `interrupted`) when `cancel` is set.
pub fn run(cfg: &FaultRunConfig, cancel: &AtomicBool) -> Result<FaultRunReport, Error> {
    // Unique per run, also for concurrent runs in one process (tests): pid, a process-wide counter, and the time.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("trainlab-c4-{}-{n}-{}", std::process::id(), now_s() as u64));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let res = run_in(cfg, cancel, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn run_in(cfg: &FaultRunConfig, cancel: &AtomicBool, dir: &std::path::Path) -> Result<FaultRunReport, Error> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("binding the monitor socket on 127.0.0.1", e))?;
    let addr = listener.local_addr().map_err(|e| Error::io("monitor address", e))?;
    // Every message carries the sending worker's pid, so lines still in flight from a killed group are ignored.
    let (tx, rx) = mpsc::channel::<(u32, Msg)>();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let tx = tx.clone();
                std::thread::spawn(move || read_worker(conn, tx));
            }
        });
    }
    let work = calibrate_work(cfg.len, cfg.compute_s);
    let t_start = Instant::now();
    let t_start_epoch = now_s();
    let elapsed = || t_start.elapsed().as_secs_f64();
    let mut report = FaultRunReport::default();
    let mut world = cfg.ranks;
    let mut spares = cfg.spares;
    let mut pending: Vec<ScheduledFault> = cfg.faults.clone();
    pending.sort_by_key(|f| f.at_step);
    let mut committed = 0u64; // last checkpointed step
    let mut periods: Vec<f64> = Vec::new();
    // The throttle file of the slow rank being injected, if any (removing it lifts the throttle).
    let mut throttle: Option<PathBuf> = None;
    let lift = |throttle: &mut Option<PathBuf>| {
        if let Some(f) = throttle.take() {
            let _ = std::fs::remove_file(f);
        }
    };
    let mut last_verdict_t: Option<f64> = None;
    let mut ckpt_s = 0.0;
    'restart: loop {
        // Launch the group.
        let mut group = Group {
            children: Vec::new(),
            pids: Vec::new(),
            pgid: None,
        };
        for r in 0..world {
            let a = WorkerArgs {
                rank: r,
                world,
                monitor: addr.to_string(),
                work,
                len: cfg.len,
                steps: cfg.steps,
                ckpt: dir.to_path_buf(),
                every: cfg.checkpoint_every,
            };
            let mut cmd = Command::new(&cfg.exe);
            cmd.args(&cfg.worker_prefix)
                .args(a.to_args())
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            {
                use std::os::unix::process::CommandExt;
                cmd.process_group(group.pgid.unwrap_or(0));
            }
            let child = cmd
                .spawn()
                .map_err(|e| Error::io(format!("spawning worker {}", cfg.exe.display()), e))?;
            if group.pgid.is_none() {
                group.pgid = Some(child.id() as i32);
            }
            group.pids.push(child.id());
            group.children.push(child);
        }
        // Handshake.
        let mut conns: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
        let mut ports = vec![0u16; world];
        let hs_deadline = Instant::now() + Duration::from_secs(20);
        while conns.iter().any(|c| c.is_none()) {
            if cancel.load(Ordering::Relaxed) || Instant::now() > hs_deadline {
                group.kill();
                report.interrupted = cancel.load(Ordering::Relaxed);
                if !report.interrupted {
                    return Err(Error::Backend("workers did not connect within 20 s".into()));
                }
                break 'restart;
            }
            if let Ok((_, Msg::Hello(r, p, _pid, s))) = rx.recv_timeout(Duration::from_millis(50))
                && r < world
            {
                ports[r] = p;
                conns[r] = Some(s);
            }
        }
        let line = format!(
            "P {}\n",
            ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ")
        );
        for s in conns.iter_mut().flatten() {
            let _ = s.write_all(line.as_bytes());
        }
        let t_launch = now_s();
        let mut det = Detector::new(
            DetectorConfig {
                ranks: world,
                hang_timeout_s: f64::INFINITY,
                window: cfg.window,
                slow_threshold: cfg.slow_threshold,
            },
            t_launch,
        );
        let mut exits: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        let mut done_steps = committed;
        let launched_at = committed;
        let mut active: Option<(ScheduledFault, f64)> = None;
        // Completed steps when the active fault was injected, and the compute times (exit of step k-1 to entry of
        // step k) of every rank since then: `(step, rank, seconds)`.
        let mut active_step = 0u64;
        let mut compute_samples: Vec<(u64, usize, f64)> = Vec::new();
        let mut last_exit: Vec<Option<(u64, f64)>> = vec![None; world];
        let mut first_step_after_restart = true;
        let mut last_exit_t: Option<f64> = None;
        loop {
            if cancel.load(Ordering::Relaxed) || elapsed() > cfg.time_limit_s {
                lift(&mut throttle);
                group.kill();
                report.interrupted = cancel.load(Ordering::Relaxed);
                report.steps_done = done_steps;
                break 'restart;
            }
            // Checkpoint notices count whichever group sent them (the file was renamed into place before); the rest
            // only from the current group.
            let msg = match rx.recv_timeout(Duration::from_millis(20)) {
                Ok((pid, m)) if group.pids.contains(&pid) || matches!(m, Msg::Ckpt(..)) => Some(m),
                _ => None,
            };
            match msg {
                Some(Msg::Enter(r, k, t)) => {
                    det.enter(r, k, t);
                    if let Some(Some((kk, te))) = last_exit.get(r)
                        && kk + 1 == k
                        && matches!(
                            active,
                            Some((
                                ScheduledFault {
                                    what: Injection::Slow(_),
                                    ..
                                },
                                _
                            ))
                        )
                    {
                        compute_samples.push((k, r, t - te));
                    }
                }
                Some(Msg::Exit(r, k, t)) => {
                    det.exit(r, k, t);
                    if let Some(e) = last_exit.get_mut(r) {
                        *e = Some((k, t));
                    }
                    {
                        let e = exits.entry(k).or_insert(0);
                        *e += 1;
                        if *e == world as u64 {
                            exits.remove(&k);
                            done_steps = done_steps.max(k + 1);
                            if let Some(lt) = last_exit_t
                                && active.is_none()
                            {
                                periods.push(t - lt);
                            }
                            last_exit_t = Some(t);
                            if report.startup_s == 0.0 {
                                report.startup_s = t - t_start_epoch;
                            }
                            if first_step_after_restart {
                                first_step_after_restart = false;
                                if let (Some(vt), Some(rec)) = (last_verdict_t.take(), report.records.last_mut()) {
                                    rec.restart_s = t - vt;
                                }
                            }
                        }
                    }
                }
                Some(Msg::Progress(r, k, sent, recv)) => det.progress(r, k, sent, recv),
                Some(Msg::Ckpt(k, s)) => {
                    committed = committed.max(k);
                    ckpt_s += s;
                }
                Some(Msg::Hello(..)) | None => {}
            }
            // Once the step period is known, arm the hang threshold (floor 1 s: this machine is shared and noisy).
            if det.config().hang_timeout_s.is_infinite()
                && let Some(p) = det.period()
            {
                det.set_hang_timeout((cfg.hang_steps * p).max(cfg.hang_min_s), now_s());
            }
            // Finished?
            if done_steps >= cfg.steps {
                lift(&mut throttle);
                group.kill();
                report.steps_done = done_steps;
                if let Some((f, _)) = active.take() {
                    report.records.push(missed(f, &compute_samples));
                }
                break 'restart;
            }
            // A slow rank still unnamed after the give-up window: missed; lift its throttle and go on.
            if let Some((
                f @ ScheduledFault {
                    what: Injection::Slow(_),
                    ..
                },
                _,
            )) = active
                && done_steps >= active_step + cfg.slow_give_up_steps
            {
                lift(&mut throttle);
                report.records.push(missed(f, &compute_samples));
                active = None;
            }
            // Crashes: a rank killed by a signal is the cause; peers that exited on a broken connection follow it.
            // A worker that exits successfully has finished its steps (its last Exit lines may still be queued).
            let mut exited: Vec<(usize, bool)> = Vec::new();
            let mut finished = 0;
            for (r, c) in group.children.iter_mut().enumerate() {
                if let Ok(Some(st)) = c.try_wait() {
                    use std::os::unix::process::ExitStatusExt;
                    if st.success() {
                        finished += 1;
                    } else {
                        exited.push((r, st.signal().is_some()));
                    }
                }
            }
            if finished == world {
                lift(&mut throttle);
                if let Some((f, _)) = active.take() {
                    report.records.push(missed(f, &compute_samples));
                }
                while let Ok((_, m)) = rx.recv_timeout(Duration::from_millis(20)) {
                    if let Msg::Ckpt(k, s) = m {
                        committed = committed.max(k);
                        ckpt_s += s;
                    }
                }
                group.kill();
                report.steps_done = cfg.steps;
                break 'restart;
            }
            exited.sort_by_key(|(r, sig)| (!sig, *r));
            if let Some((r, _)) = exited.first() {
                det.crash(*r);
            }
            // Inject.
            if active.is_none()
                && let Some(f) = pending.first().copied()
                && done_steps >= f.at_step
                && done_steps >= launched_at + cfg.warmup_steps
                && f.rank < world
            {
                pending.remove(0);
                let pid = group.pids[f.rank];
                match f.what {
                    Injection::Kill => signal(pid, libc::SIGKILL),
                    Injection::Hang => signal(pid, libc::SIGSTOP),
                    Injection::Slow(x) => {
                        let path = worker::throttle_path(dir, pid);
                        std::fs::write(&path, format!("{x}"))
                            .map_err(|e| Error::io(format!("writing the throttle file {}", path.display()), e))?;
                        throttle = Some(path);
                    }
                }
                active = Some((f, now_s()));
                active_step = done_steps;
                compute_samples.clear();
            }
            // Detect.
            if let Some(v) = det.check(now_s()) {
                let t = now_s();
                lift(&mut throttle);
                let (rec, replace) = match active.take() {
                    Some((f, ti)) => (
                        FaultRecord {
                            injected: Some(f),
                            detection_latency_s: Some(t - ti),
                            verdict: Some(describe(&v)),
                            localised: v.names(f.rank),
                            restart_s: 0.0,
                            lost_steps: done_steps.saturating_sub(committed),
                            measured_slowdown: slowdown_of(f, &compute_samples),
                        },
                        true,
                    ),
                    None => {
                        report.false_alarms += 1;
                        (
                            FaultRecord {
                                injected: None,
                                detection_latency_s: None,
                                verdict: Some(describe(&v)),
                                localised: false,
                                restart_s: 0.0,
                                lost_steps: done_steps.saturating_sub(committed),
                                measured_slowdown: None,
                            },
                            true,
                        )
                    }
                };
                report.records.push(rec);
                group.kill();
                std::thread::sleep(Duration::from_millis(30));
                // Drain stale messages of the dead group.
                while rx.try_recv().is_ok() {}
                if replace {
                    if spares > 0 {
                        spares -= 1;
                    } else if world > 1 {
                        world -= 1;
                    }
                }
                last_verdict_t = Some(t);
                continue 'restart;
            }
        }
    }
    report.wall_s = elapsed();
    periods.sort_by(f64::total_cmp);
    report.step_period_s = periods.get(periods.len() / 2).copied().unwrap_or(0.0);
    report.step_period_mean_s = periods.iter().sum::<f64>() / periods.len().max(1) as f64;
    report.checkpoint_s = ckpt_s;
    let useful = report.steps_done as f64 * report.step_period_mean_s;
    report.ettr = if report.wall_s > 0.0 {
        (useful / report.wall_s).min(1.0)
    } else {
        0.0
    };
    Ok(report)
}

/// The record of a fault the detector never reported.
fn missed(f: ScheduledFault, compute_samples: &[(u64, usize, f64)]) -> FaultRecord {
    FaultRecord {
        injected: Some(f),
        detection_latency_s: None,
        verdict: None,
        localised: false,
        restart_s: 0.0,
        lost_steps: 0,
        measured_slowdown: slowdown_of(f, compute_samples),
    }
}

/// The median (`trainlab_core::stats`), `None` for no samples.
fn median(v: &mut [f64]) -> Option<f64> {
    (!v.is_empty()).then(|| trainlab_core::stats::median_mut(v))
}

/// The slowdown a slow injection really produced: per step, the faulty rank's compute time over the median of the
/// others'; the median of that ratio over the steps observed (None for other faults or with fewer than 3 steps).
fn slowdown_of(f: ScheduledFault, samples: &[(u64, usize, f64)]) -> Option<f64> {
    if !matches!(f.what, Injection::Slow(_)) {
        return None;
    }
    let mut steps: Vec<u64> = samples.iter().filter(|s| s.1 == f.rank).map(|s| s.0).collect();
    steps.sort_unstable();
    steps.dedup();
    let mut ratios: Vec<f64> = steps
        .iter()
        .filter_map(|&k| {
            let slow = samples.iter().find(|s| s.0 == k && s.1 == f.rank)?.2;
            let mut others: Vec<f64> = samples
                .iter()
                .filter(|s| s.0 == k && s.1 != f.rank)
                .map(|s| s.2)
                .collect();
            let m = median(&mut others)?;
            (m > 0.0).then(|| slow / m)
        })
        .collect();
    if ratios.len() < 3 {
        return None;
    }
    median(&mut ratios)
}

fn describe(v: &Verdict) -> String {
    match v {
        Verdict::Crash { rank } => format!("crash rank {rank}"),
        Verdict::Hang { kind, ranks } => format!("{kind:?} hang ranks {ranks:?}"),
        Verdict::Slow { rank, lag } => format!("slow rank {rank} lag {lag:.2}"),
    }
}

fn read_worker(conn: TcpStream, tx: mpsc::Sender<(u32, Msg)>) {
    let Ok(clone) = conn.try_clone() else { return };
    let mut rd = BufReader::new(clone);
    let mut line = String::new();
    let mut rank = usize::MAX;
    let mut pid = 0u32;
    let mut hello = Some(conn);
    while rd.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let msg = match (w.first().copied(), w.len()) {
            (Some("H"), 4) => {
                rank = w[1].parse().unwrap_or(usize::MAX);
                let p = w[2].parse().unwrap_or(0);
                pid = w[3].parse().unwrap_or(0);
                hello.take().map(|s| Msg::Hello(rank, p, pid, s))
            }
            (Some("E"), 3) => Some(Msg::Enter(rank, w[1].parse().unwrap_or(0), w[2].parse().unwrap_or(0.0))),
            (Some("X"), 3) => Some(Msg::Exit(rank, w[1].parse().unwrap_or(0), w[2].parse().unwrap_or(0.0))),
            (Some("P"), 4) => Some(Msg::Progress(
                rank,
                w[1].parse().unwrap_or(0),
                w[2].parse().unwrap_or(0),
                w[3].parse().unwrap_or(0),
            )),
            (Some("C"), 3) => Some(Msg::Ckpt(w[1].parse().unwrap_or(0), w[2].parse().unwrap_or(0.0))),
            _ => None,
        };
        if let Some(m) = msg
            && tx.send((pid, m)).is_err()
        {
            return;
        }
        line.clear();
    }
}

/// Most ranks (worker processes) a real run of a scheduled job spawns on this machine.
pub const MAX_RANKS: u64 = 32;

/// Longest real run of a scheduled job the measured backend starts, seconds of estimated wall time.
pub const MAX_RUN_S: f64 = 1800.0;

/// Steps of the scaled-down job the measured backend runs for a job with failure rates.
pub const SCALED_STEPS: u64 = 200;

/// A small scheduled job on this machine: `ranks` worker processes of [`FaultRunConfig::small`]'s size (60 ms of
/// compute and a 64 KiB ring all-reduce per step, a checkpoint every 10 steps, its detector thresholds), training
/// `steps` steps with `faults`. Its uncalibrated timing is what one would assume before measuring (a calibrated
/// profile replaces it): a crash seen within one 20 ms poll of the monitor, a 1 ms checkpoint write of the 64 KiB
/// parameters, 0.2 s to relaunch and reconnect the workers, nothing for localisation and isolation (the verdict
/// names the rank; the spare is the relaunched process).
pub fn small_job(ranks: u64, steps: u64, faults: Vec<ScheduledFaultSpec>) -> TrainingJob {
    let c = FaultRunConfig::small(steps, vec![]);
    TrainingJob {
        gpus: 0,
        gpus_per_node: 8,
        step_time_s: c.compute_s,
        horizon_days: 0.0,
        checkpoint_interval: CheckpointInterval::Seconds(0.0),
        checkpoint_cost_s: 0.001,
        restart_cost_s: 0.2,
        spare_nodes: None,
        repair_hours: 48.0,
        failures: vec![],
        lemon: None,
        policies: vec![Policy::C4d],
        detection: DetectionSpec {
            crash_detect_s: 0.02,
            c4d_hang_steps: c.hang_steps,
            c4d_hang_min_s: c.hang_min_s,
            c4d_window_steps: c.window as u32,
            c4d_slow_threshold: c.slow_threshold,
            c4d_localise_s: 0.0,
            c4d_isolate_s: 0.0,
            ..DetectionSpec::default()
        },
        replications: 64,
        schedule: Some(FaultSchedule {
            ranks,
            steps,
            checkpoint_every_steps: c.checkpoint_every,
            slow_give_up_steps: c.slow_give_up_steps,
            faults,
        }),
    }
}

/// The scheduled job the measured backend really runs for a job with failure rates: [`small_job`] with 4 ranks and
/// [`SCALED_STEPS`] steps, one injection per fault kind of its failure model (kill for fail-stop, hang, slow at the
/// entry's slowdown, at least 1.5x so that the detector can see it), spread over the steps and the ranks, in the
/// order the kinds first appear. Its replications are the job's.
pub fn scaled_job(job: &TrainingJob) -> TrainingJob {
    let ranks = 4u64;
    let steps = SCALED_STEPS;
    let mut kinds: Vec<(FaultKind, f64)> = Vec::new();
    for f in &job.failures {
        if !kinds.iter().any(|(k, _)| *k == f.kind) {
            kinds.push((f.kind, f.slowdown));
        }
    }
    let n = kinds.len() as u64;
    let faults = kinds
        .iter()
        .enumerate()
        .map(|(i, (k, s))| ScheduledFaultSpec {
            at_step: steps * (i as u64 + 1) / (n + 1),
            rank: (i as u64 * 7 + 1) % ranks,
            kind: match k {
                FaultKind::FailStop => InjectedKind::Kill,
                FaultKind::Hang => InjectedKind::Hang,
                FaultKind::Slow => InjectedKind::Slow,
            },
            slowdown: (*k == FaultKind::Slow).then_some(s.max(1.5)),
        })
        .collect();
    let mut small = small_job(ranks, steps, faults);
    small.replications = job.replications;
    small
}

impl FaultRunConfig {
    /// The real run of a scheduled job (validated), exactly as written: its ranks, steps, checkpoint interval and
    /// faults, `step_time_s` seconds of compute per step, its C4D thresholds, a spare for every fault, and a time
    /// limit of three times the estimated wall time plus a minute. Uses the current executable's worker subcommand
    /// (set `exe` and `worker_prefix` to change it). Errors for a job without a schedule, or one too large to run
    /// here ([`MAX_RANKS`], [`MAX_RUN_S`]).
    pub fn for_job(job: &TrainingJob) -> Result<FaultRunConfig, Error> {
        let Some(s) = &job.schedule else {
            return Err(Error::Unsupported(
                "a real fault run needs a scheduled job (workload.schedule); see FaultRun::answers".into(),
            ));
        };
        if s.ranks > MAX_RANKS {
            return Err(Error::Unsupported(format!(
                "workload.schedule.ranks = {}: a real run on this machine spawns at most {MAX_RANKS} worker processes",
                s.ranks
            )));
        }
        let d = &job.detection;
        let estimate = s.steps as f64 * job.step_time_s * 1.5 + s.faults.len() as f64 * 5.0 + 5.0;
        if estimate > MAX_RUN_S {
            return Err(Error::Unsupported(format!(
                "the real run of {} steps of {} s would take about {:.0} s (more than {MAX_RUN_S} s); scale the \
                 schedule down",
                s.steps, job.step_time_s, estimate
            )));
        }
        let mut c = FaultRunConfig::small(s.steps, vec![]);
        c.ranks = s.ranks as usize;
        c.spares = s.faults.len();
        c.compute_s = job.step_time_s;
        c.checkpoint_every = s.checkpoint_every_steps;
        c.faults = s
            .faults
            .iter()
            .map(|f| ScheduledFault {
                at_step: f.at_step,
                rank: f.rank as usize,
                what: match f.kind {
                    InjectedKind::Kill => Injection::Kill,
                    InjectedKind::Hang => Injection::Hang,
                    InjectedKind::Slow => Injection::Slow(f.factor()),
                },
            })
            .collect();
        c.hang_steps = d.c4d_hang_steps;
        c.hang_min_s = d.c4d_hang_min_s;
        c.window = d.c4d_window_steps as usize;
        c.slow_threshold = d.c4d_slow_threshold;
        c.slow_give_up_steps = s.slow_give_up_steps;
        c.warmup_steps = FaultSchedule::warmup_steps(d);
        c.time_limit_s = 3.0 * estimate + 60.0;
        Ok(c)
    }
}

/// Reduces a real run of the scheduled `job` to its outcome (the metric names every backend uses). Fault `i` of the
/// schedule is matched with the record of its injection; a fault never injected (the run ended first) counts as not
/// detected. `restart_s` is the measured verdict-to-first-step time less one mean healthy step (the step itself is
/// useful time).
pub fn scheduled_outcome(job: &TrainingJob, r: &FaultRunReport) -> ScheduledOutcome {
    let exact = Estimate::exact;
    let period = r.step_period_mean_s;
    let faults = job
        .schedule
        .as_ref()
        .map_or(&[][..], |s| &s.faults[..])
        .iter()
        .map(|f| {
            let rec = r.records.iter().find(|x| {
                x.injected
                    .is_some_and(|i| i.at_step == f.at_step && i.rank as u64 == f.rank)
            });
            match rec.and_then(|x| x.detection_latency_s.map(|l| (x, l))) {
                Some((x, latency)) => ScheduledFaultOutcome {
                    detected: exact(1.0),
                    detect_s: Some(exact(latency)),
                    restart_s: exact((x.restart_s - period).max(0.0)),
                    lost_steps: exact(x.lost_steps as f64),
                    localised: Some(exact(f64::from(x.localised))),
                },
                None => ScheduledFaultOutcome {
                    detected: exact(0.0),
                    detect_s: None,
                    restart_s: exact(0.0),
                    lost_steps: exact(0.0),
                    localised: None,
                },
            }
        })
        .collect();
    ScheduledOutcome {
        ettr: exact(r.ettr),
        wall_s: exact(r.wall_s),
        useful_s: exact(r.steps_done as f64 * period),
        false_alarms: exact(r.false_alarms as f64),
        faults,
    }
}

/// The measured backend (`Fidelity::Measured`, name `faultrun`): a real run of a scheduled job, exactly as written;
/// for a job with failure rates, of its [`scaled_job`], which [`Backend::answers`] reports.
#[derive(Debug, Clone)]
pub struct FaultRun {
    /// Worker executable (default: the current executable).
    pub exe: PathBuf,
    /// Arguments before the worker's own (default `["__c4-worker"]`, the trainlab binary's hidden subcommand).
    pub worker_prefix: Vec<String>,
    /// The last report, for the CLI's detailed table.
    pub last: Arc<Mutex<Option<FaultRunReport>>>,
}

impl FaultRun {
    /// A backend spawning workers from `exe` (`None`: the current executable).
    pub fn new(exe: Option<PathBuf>) -> Self {
        FaultRun {
            exe: exe.unwrap_or_else(|| std::env::current_exe().unwrap_or_else(|_| PathBuf::from("trainlab"))),
            worker_prefix: vec!["__c4-worker".to_string()],
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// The configuration of the real run of the scheduled `job`, with this backend's workers.
    pub fn config_for(&self, job: &TrainingJob) -> Result<FaultRunConfig, Error> {
        let mut c = FaultRunConfig::for_job(job)?;
        c.exe = self.exe.clone();
        c.worker_prefix = self.worker_prefix.clone();
        Ok(c)
    }

    /// Runs the scheduled `job` for real and returns the report (early, `interrupted`, when `cancel` is set).
    pub fn run_job(&self, job: &TrainingJob, cancel: &AtomicBool) -> Result<FaultRunReport, Error> {
        job.validate()?;
        run(&self.config_for(job)?, cancel)
    }
}

impl Backend<TrainingJob> for FaultRun {
    fn name(&self) -> &str {
        "faultrun"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Measured
    }
    fn available(&self) -> Result<(), String> {
        if cfg!(unix) && self.exe.exists() {
            Ok(())
        } else {
            Err(format!(
                "worker executable {} not found (unix only)",
                self.exe.display()
            ))
        }
    }
    /// A scheduled job is run as written (`None`), or refused when too large for this machine; a job with failure
    /// rates is answered by its [`scaled_job`].
    fn answers(&self, job: &TrainingJob) -> Result<Option<TrainingJob>, Error> {
        if job.schedule.is_some() {
            FaultRunConfig::for_job(job)?;
            Ok(None)
        } else {
            Ok(Some(scaled_job(job)))
        }
    }
    fn run(&mut self, job: &TrainingJob, ctx: &mut RunCtx) -> Result<TrainingJobOutcome, Error> {
        job.validate()?;
        let target = self.answers(job)?.unwrap_or_else(|| job.clone());
        let r = self.run_job(&target, &ctx.cancel)?;
        if r.interrupted {
            return Err(Error::Interrupted);
        }
        let out = scheduled_outcome(&target, &r);
        if let Ok(mut l) = self.last.lock() {
            *l = Some(r);
        }
        Ok(TrainingJobOutcome {
            policies: vec![],
            scheduled: Some(out),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not a test: the entry point of worker processes spawned by the tests below, which re-run this test binary
    /// with `--exact faultrun::tests::worker_entry` followed by the worker's `key=value` arguments.
    #[test]
    fn worker_entry() {
        let args: Vec<String> = std::env::args()
            .filter(|a| a.contains('=') && !a.starts_with("--"))
            .collect();
        if args.iter().any(|a| a.starts_with("rank=")) {
            std::process::exit(worker_main(&args));
        }
    }

    fn cfg(steps: u64, faults: Vec<ScheduledFault>) -> FaultRunConfig {
        let mut c = FaultRunConfig::small(steps, faults);
        c.worker_prefix = vec![
            "--exact".into(),
            "faultrun::tests::worker_entry".into(),
            "--nocapture".into(),
            "--test-threads=1".into(),
        ];
        c.time_limit_s = 90.0;
        c
    }

    #[test]
    fn ring_allreduce_sums() {
        let (l0, l1) = (
            TcpListener::bind("127.0.0.1:0").unwrap(),
            TcpListener::bind("127.0.0.1:0").unwrap(),
        );
        let (p0, p1) = (l0.local_addr().unwrap(), l1.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let mut right = TcpStream::connect(p0).unwrap();
            let (mut left, _) = l1.accept().unwrap();
            let mut v: Vec<f32> = (0..10).map(|i| i as f32).collect();
            worker::ring_allreduce(&mut v, 1, 2, &mut right, &mut left, |_, _| Ok(())).unwrap();
            v
        });
        let mut right = TcpStream::connect(p1).unwrap();
        let (mut left, _) = l0.accept().unwrap();
        let mut v: Vec<f32> = (0..10).map(|i| 10.0 * i as f32).collect();
        worker::ring_allreduce(&mut v, 0, 2, &mut right, &mut left, |_, _| Ok(())).unwrap();
        let w = t.join().unwrap();
        let want: Vec<f32> = (0..10).map(|i| 11.0 * i as f32).collect();
        assert_eq!(v, want);
        assert_eq!(w, want);
    }

    /// Kill, hang (SIGSTOP) and slow (throttled to 1/2) are each detected and localised to the injected rank, and
    /// the job finishes from its checkpoints.
    #[test]
    fn detects_and_localises_injected_faults() {
        let c = cfg(
            150,
            vec![
                ScheduledFault {
                    at_step: 25,
                    rank: 1,
                    what: Injection::Kill,
                },
                ScheduledFault {
                    at_step: 60,
                    rank: 2,
                    what: Injection::Hang,
                },
                ScheduledFault {
                    at_step: 100,
                    rank: 3,
                    what: Injection::Slow(2.0),
                },
            ],
        );
        let cancel = AtomicBool::new(false);
        let r = run(&c, &cancel).unwrap();
        eprintln!("{r:#?}");
        assert!(!r.interrupted, "{r:?}");
        assert_eq!(r.steps_done, 150);
        let injected: Vec<_> = r.records.iter().filter(|x| x.injected.is_some()).collect();
        assert_eq!(injected.len(), 3, "{r:?}");
        for x in &injected {
            assert!(x.localised, "{x:?}");
            assert!(x.detection_latency_s.unwrap() < 10.0, "{x:?}");
        }
        assert!(r.ettr > 0.2 && r.ettr <= 1.0);
    }

    fn runner() -> FaultRun {
        let mut r = FaultRun::new(None);
        r.worker_prefix = cfg(0, vec![]).worker_prefix;
        r
    }

    /// Calibrate on one real run, predict a held-out run with another fault schedule: ETTR within 5 points, and
    /// closer than the uncalibrated prediction.
    #[test]
    #[ignore = "timing-sensitive (two real runs, ~40 s); on a loaded shared machine the step period drifts between \
                runs. Run: cargo test -p trainlab-executors calibrated_prediction -- --ignored --nocapture"]
    fn calibrated_prediction_of_held_out_run() {
        let x = calibrate::calibrate(&runner(), false, &AtomicBool::new(false), |_| {}, |_, _| {}).unwrap();
        eprintln!("{:#?}", x.timing);
        for r in &x.held_out {
            eprintln!("{r:?}");
        }
        let e = x.row("ettr").unwrap();
        assert!(e.calibrated_error().abs() <= 0.05, "{e:?}");
        assert!(e.calibrated_error().abs() < e.uncalibrated_error().abs(), "{e:?}");
    }

    /// A scheduled job runs as written and its outcome has one entry per scheduled fault, with the names every
    /// backend uses.
    #[test]
    fn runs_a_scheduled_job_as_written() {
        let job = small_job(
            3,
            90,
            vec![
                ScheduledFaultSpec {
                    at_step: 20,
                    rank: 2,
                    kind: InjectedKind::Kill,
                    slowdown: None,
                },
                ScheduledFaultSpec {
                    at_step: 50,
                    rank: 0,
                    kind: InjectedKind::Hang,
                    slowdown: None,
                },
            ],
        );
        job.validate().unwrap();
        let mut b = runner();
        assert_eq!(b.answers(&job).unwrap(), None);
        let out = b.run(&job, &mut RunCtx::new(trainlab_core::Seed(1))).unwrap();
        let names: Vec<String> = trainlab_core::Outcome::metrics(&out)
            .into_iter()
            .map(|m| m.name)
            .collect();
        let predicted: Vec<String> = trainlab_core::Outcome::metrics(
            &trainlab_models::reliability::ReliabilityModel::default()
                .run(&job, &mut RunCtx::new(trainlab_core::Seed(1)))
                .unwrap(),
        )
        .into_iter()
        .map(|m| m.name)
        .collect();
        for n in &predicted {
            assert!(names.contains(n), "{n} missing from {names:?}");
        }
        let s = out.scheduled.unwrap();
        assert_eq!(s.faults.len(), 2);
        for f in &s.faults {
            assert_eq!(f.detected.mean, 1.0, "{s:?}");
            assert_eq!(f.localised.unwrap().mean, 1.0, "{s:?}");
        }
        // Killed after step 20 with a checkpoint every 10: nothing lost when step 20's checkpoint was written before
        // the kill; on a loaded machine the kill can land while it is being written, and the restart then redoes the
        // 10 steps since step 10's (seen twice under a parallel test run). Anything else is a bug.
        let lost = s.faults[0].lost_steps.mean;
        assert!(lost == 0.0 || lost == 10.0, "lost {lost} steps: {s:?}");
        let r = b.last.lock().unwrap().clone().unwrap();
        assert_eq!(r.steps_done, 90);
    }

    /// A job with failure rates is answered by its scaled-down scheduled job, one fault per kind.
    #[test]
    fn a_rate_based_job_is_scaled_down() {
        let mut job = small_job(4, 10, vec![]);
        job.schedule = None;
        job.gpus = 1024;
        job.horizon_days = 30.0;
        job.checkpoint_interval = CheckpointInterval::Seconds(600.0);
        job.policies = vec![Policy::Baseline, Policy::C4d];
        job.replications = 16;
        for (kind, slowdown) in [
            (FaultKind::FailStop, 1.5),
            (FaultKind::Slow, 1.3),
            (FaultKind::Hang, 1.5),
        ] {
            job.failures.push(trainlab_core::workloads::FailureSpec {
                class: trainlab_core::workloads::FaultClass::Gpu,
                kind,
                rate_per_component_hour: 1e-5,
                scope: None,
                weibull_shape: None,
                slowdown,
            });
        }
        job.validate().unwrap();
        let scaled = FaultRun::new(None).answers(&job).unwrap().expect("scaled");
        scaled.validate().unwrap();
        let s = scaled.schedule.as_ref().unwrap();
        assert_eq!((s.ranks, s.steps, scaled.replications), (4, SCALED_STEPS, 16));
        let kinds: Vec<_> = s.faults.iter().map(|f| (f.at_step, f.kind, f.slowdown)).collect();
        assert_eq!(
            kinds,
            [
                (50, InjectedKind::Kill, None),
                (100, InjectedKind::Slow, Some(1.5)),
                (150, InjectedKind::Hang, None)
            ]
        );
        let mut too_big = scaled.clone();
        too_big.schedule.as_mut().unwrap().ranks = 1000;
        assert!(matches!(
            FaultRun::new(None).answers(&too_big),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn cancel_leaves_no_workers() {
        let c = cfg(100_000, vec![]);
        let cancel = Arc::new(AtomicBool::new(false));
        let c2 = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            c2.store(true, Ordering::Relaxed);
        });
        let r = run(&c, &cancel).unwrap();
        assert!(r.interrupted);
        assert!(r.steps_done > 0, "{r:?}");
    }
}
