//! `trainlab calibrate`: measure GEMMs and memory bandwidth on this machine's CPU (or the GPU), fit the roofline
//! profile's parameters with argmin (in `trainlab-models`), and report the prediction error on sizes held out of
//! the fit. The profile TOML carries its provenance and is what `--profile FILE` feeds to every prediction.
use crate::cli::{UsageError, ctx};
use anyhow::Result;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use trainlab_core::profile::Provenance;
use trainlab_core::workloads::{Gemm, MemBandwidth, MemKernel};
use trainlab_core::{Error, Fidelity, Metric, Record, Seed, Unit};
use trainlab_executors::timing::Timing;
use trainlab_models::calibrate::{fit_gemm_profile, holdout_error, median_abs};
use trainlab_models::roofline::gemm_time;

/// Which device to calibrate.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceKind {
    /// This machine's CPU (always available).
    Cpu,
    /// The first CUDA GPU (fails with a clear message if none is present).
    Cuda,
}

/// What to calibrate.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CalibrateWorkload {
    /// GEMM and memory-bandwidth microbenchmarks -> a device profile (`profile-<backend>.toml`).
    Gemm,
    /// Real fault-injection runs (C4D) -> detection and restart time distributions (`profile-c4-cpu.toml`), then
    /// the prediction of a held-out fault schedule's ETTR. CPU only.
    TrainingJob,
}

/// `calibrate` arguments.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Device to measure.
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: DeviceKind,
    /// What to calibrate.
    #[arg(long, value_enum, default_value = "gemm")]
    pub workload: CalibrateWorkload,
    /// Output folder for `profile-<backend>.toml` and the measured-vs-predicted table.
    #[arg(long, default_value = "out/calibration")]
    pub out: PathBuf,
    /// Shorter timing (fewer repeats): for smoke tests, not for a profile you will trust.
    #[arg(long)]
    pub quick: bool,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

/// Today's date (UTC) as `YYYY-MM-DD`, from the system clock (civil-from-days, H. Hinnant's algorithm).
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn provenance(device: String) -> Provenance {
    Provenance {
        date: today(),
        device,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// `trainlab calibrate`.
pub fn run(a: &CalibrateArgs, seed: Option<u64>, cancel: &Arc<AtomicBool>) -> Result<()> {
    if let CalibrateWorkload::TrainingJob = a.workload {
        return training_job(a, seed, cancel);
    }
    let seed = Seed(seed.unwrap_or(42));
    let name = match a.backend {
        DeviceKind::Cpu => "cpu",
        DeviceKind::Cuda => "cuda",
    };
    if matches!(a.backend, DeviceKind::Cuda)
        && let Some(why) = trainlab_executors::cuda::gpu_unavailable_reason()
    {
        return Err(UsageError(format!("`calibrate --backend cuda`: no usable GPU here: {why}")).into());
    }
    let (fit_sizes, held_sizes) = match a.backend {
        DeviceKind::Cpu => trainlab_executors::cpu::default_calibration_sizes(),
        DeviceKind::Cuda => trainlab_executors::cuda::default_cuda_calibration_sizes(),
    };
    let all: Vec<Gemm> = fit_sizes.iter().chain(held_sizes.iter()).cloned().collect();
    // The CPU sizes are timed in interleaved passes over the whole sweep, keeping each size's fastest pass (by
    // median): on a shared machine interference comes in bursts that can ruin every sample of one size in a single
    // pass (small multi-threaded GEMMs showed 30-80% spread), but rarely the same size in every pass.
    let rounds: u64 = match a.backend {
        DeviceKind::Cpu if !a.quick => 3,
        _ => 1,
    };
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(all.len() as u64 * rounds)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} calibrate [{bar:30}] {pos}/{len} GEMM sizes ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let ctx_for_pass = |pass: u64| {
        let mut c = ctx(seed, cancel);
        let b = bar.clone();
        let n = all.len() as u64;
        c.progress = Some(Arc::new(move |done, _| b.set_position(pass * n + done)));
        c
    };
    let c = ctx_for_pass(0);
    let triad = MemBandwidth {
        bytes: 64 << 20,
        kernel: MemKernel::Triad,
    };
    let (sweep, mem_timing, device): (Vec<(Gemm, Timing)>, Timing, String) = match a.backend {
        DeviceKind::Cpu => {
            let opts = if a.quick {
                trainlab_executors::cpu::CpuOpts::quick()
            } else {
                trainlab_executors::cpu::CpuOpts::default()
            };
            let mem = trainlab_executors::cpu::time_mem(&triad, &opts, seed.derive("mem"))?;
            let mut sweep = trainlab_executors::cpu::gemm_sweep(&all, &opts, &c)?;
            for pass in 1..rounds {
                let again = trainlab_executors::cpu::gemm_sweep(&all, &opts, &ctx_for_pass(pass))?;
                for (best, (_, t)) in sweep.iter_mut().zip(again) {
                    if t.median_s() < best.1.median_s() {
                        best.1 = t;
                    }
                }
            }
            (sweep, mem, trainlab_executors::cpu::cpu_device_description())
        }
        DeviceKind::Cuda => {
            let opts = if a.quick {
                trainlab_executors::cuda::CudaOpts::quick()
            } else {
                trainlab_executors::cuda::CudaOpts::default()
            };
            let rt = trainlab_executors::cuda::CudaRuntime::new(opts.ordinal)?;
            let mem = rt.time_mem(&triad, &opts.timing, seed.derive("mem"))?;
            let sweep = trainlab_executors::cuda::cuda_gemm_sweep(&all, &opts, &c)?;
            (sweep, mem, rt.device_description())
        }
    };
    bar.finish_and_clear();
    let mem_bw = triad.bytes_moved() / mem_timing.median_s();
    let points: Vec<(Gemm, f64)> = sweep.iter().map(|(g, t)| (g.clone(), t.median_s())).collect();
    let (fit_points, held_points): (Vec<_>, Vec<_>) = points.iter().cloned().partition(|(g, _)| fit_sizes.contains(g));
    let provenance = provenance(device.clone());
    let mut profile = fit_gemm_profile(&fit_points, name, provenance, mem_bw)?;
    let errors = holdout_error(&profile, &held_points);
    profile.holdout_median_abs_rel_error = median_abs(&errors);
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(format!("creating {}", a.out.display()), e))?;
    let prof_path = a.out.join(format!("profile-{name}.toml"));
    let text = toml::to_string_pretty(&profile)?;
    std::fs::write(&prof_path, text).map_err(|e| Error::io(format!("writing {}", prof_path.display()), e))?;
    // Measured vs predicted for every size, as records.
    let study = format!("calibrate-{name}");
    let mut records = Vec::new();
    let mut rows = Vec::new();
    for (g, t) in &sweep {
        let role = if fit_sizes.contains(g) { "fit" } else { "held-out" };
        let case = format!("{} [{role}]", g.label());
        let pred = gemm_time(&profile, g);
        let measured = t.median_s();
        records.push(Record::from_metric(
            &study,
            "gemm",
            &case,
            name,
            Fidelity::Measured,
            seed.0,
            &Metric::new("time", Unit::Seconds, measured),
        ));
        records.push(Record::from_metric(
            &study,
            "gemm",
            &case,
            "roofline-calibrated",
            Fidelity::Analytical,
            seed.0,
            &Metric::new("time", Unit::Seconds, pred),
        ));
        rows.push(vec![
            g.label(),
            role.to_string(),
            format!("{:.3e}", measured),
            format!("{:.1}%", 100.0 * t.rel_spread()),
            format!("{:.3e}", pred),
            format!("{:+.1}%", 100.0 * (pred - measured) / measured),
            format!("{:.1}", g.flops() / measured / 1e9),
        ]);
    }
    let (pq, csv) = trainlab_reports::write_records(&records, &a.out, &format!("calibration-{name}"))?;
    let med = profile.holdout_median_abs_rel_error.unwrap_or(f64::NAN);
    if a.json {
        let v = serde_json::json!({
            "backend": name, "device": device, "profile": prof_path.display().to_string(),
            "mem_bw_bytes_per_s": mem_bw, "gemm_rate": profile.gemm_rate, "gemm_half_dim": profile.gemm_half_dim,
            "launch_overhead_s": profile.launch_overhead_s, "holdout_median_abs_rel_error": med,
            "holdout_errors": errors, "outputs": [pq.display().to_string(), csv.display().to_string()],
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("device: {device}");
        print!(
            "{}",
            trainlab_reports::markdown_table(
                &[
                    "GEMM",
                    "role",
                    "measured (s)",
                    "spread",
                    "predicted (s)",
                    "error",
                    "GFLOP/s"
                ],
                &rows
            )
        );
        println!(
            "memory bandwidth (triad): {:.2} GB/s; fitted asymptotic fp32 GEMM rate {:.1} GFLOP/s, half-rate dim {:.0}, \
             overhead {:.2e} s",
            mem_bw / 1e9,
            profile.rate(trainlab_core::Dtype::Fp32) / 1e9,
            profile.gemm_half_dim,
            profile.launch_overhead_s
        );
        println!(
            "held-out median |error|: {:.1}% over {} sizes",
            100.0 * med,
            held_points.len()
        );
        println!(
            "wrote {}\nwrote {}\nwrote {}",
            prof_path.display(),
            pq.display(),
            csv.display()
        );
    }
    Ok(())
}

/// `trainlab calibrate --workload training-job`: a calibration fault-injection run, the fitted timing profile, and a
/// held-out run (another schedule) predicted by it.
fn training_job(a: &CalibrateArgs, seed: Option<u64>, cancel: &Arc<AtomicBool>) -> Result<()> {
    use trainlab_executors::faultrun::{FaultRunConfig, calibrate as c4cal};
    if matches!(a.backend, DeviceKind::Cuda) {
        return Err(UsageError(
            "`calibrate --workload training-job` runs on the CPU only (the fault-injection job has no CUDA variant); \
             drop `--backend cuda`"
                .into(),
        )
        .into());
    }
    let seed = Seed(seed.unwrap_or(42));
    let steps = if a.quick { 80 } else { 200 };
    let mut base = FaultRunConfig::small(steps, vec![]);
    base.time_limit_s = 600.0;
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} calibrate training-job: {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let device = trainlab_executors::cpu::cpu_device_description();
    let x = c4cal::experiment(&base, steps, a.quick, provenance(device.clone()), cancel, |phase| {
        bar.set_message(format!("{phase}, {steps} steps, 4 worker processes"))
    })?;
    bar.finish_and_clear();
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(format!("creating {}", a.out.display()), e))?;
    let prof_path = a.out.join("profile-c4-cpu.toml");
    let text = toml::to_string_pretty(&x.calibration)?;
    std::fs::write(&prof_path, text).map_err(|e| Error::io(format!("writing {}", prof_path.display()), e))?;
    let study = "calibrate-training-job";
    let metric = |case: &str, backend: &str, fid: Fidelity, name: &str, unit: Unit, v: f64| {
        Record::from_metric(
            study,
            "training_job",
            case,
            backend,
            fid,
            seed.0,
            &Metric::new(name, unit, v),
        )
    };
    let p = &x.prediction;
    let h = &x.held_run;
    let measured_detect: f64 = h.records.iter().filter_map(|r| r.detection_latency_s).sum();
    let measured_restart: f64 = h.records.iter().map(|r| r.restart_s).sum();
    let records = vec![
        metric("fit", "cpu", Fidelity::Measured, "ettr", Unit::Ratio, x.fit_run.ettr),
        metric("held-out", "cpu", Fidelity::Measured, "ettr", Unit::Ratio, h.ettr),
        metric(
            "held-out",
            "timeline-calibrated",
            Fidelity::Simulated,
            "ettr",
            Unit::Ratio,
            p.ettr,
        ),
        metric("held-out", "cpu", Fidelity::Measured, "wall", Unit::Seconds, h.wall_s),
        metric(
            "held-out",
            "timeline-calibrated",
            Fidelity::Simulated,
            "wall",
            Unit::Seconds,
            p.wall_s(),
        ),
    ];
    let (pq, csv) = trainlab_reports::write_records(&records, &a.out, "calibration-training-job")?;
    let fmt_d = |d: &c4cal::Fitted, unit: &str| format!("{:.3} +- {:.3} {unit} (n={})", d.mean, d.std, d.n);
    let missed = |r: &trainlab_executors::faultrun::FaultRunReport| {
        r.records
            .iter()
            .filter(|x| x.injected.is_some() && !x.localised)
            .count()
    };
    if a.json {
        let c = &x.calibration;
        let v = serde_json::json!({
            "workload": "training_job", "device": device, "profile": prof_path.display().to_string(),
            "step_period_s": c.step_period_s, "checkpoint_cost_s": c.checkpoint_cost_s, "startup_s": c.startup_s,
            "detect_kill_s": c.detect_kill_s.mean,
            "hang_overshoot_s": c.hang_overshoot_s.mean, "detect_slow_steps": c.detect_slow_steps.mean,
            "restart_s": c.restart_s.mean,
            "fit_ettr": x.fit_run.ettr, "held_out_measured_ettr": h.ettr, "held_out_predicted_ettr": p.ettr,
            "held_out_replay_ettr_95": [x.interval.low, x.interval.high],
            "held_out_error_points": x.error_points(),
            "missed_faults": missed(&x.fit_run) + missed(h), "false_alarms": x.fit_run.false_alarms + h.false_alarms,
            "outputs": [pq.display().to_string(), csv.display().to_string()],
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let c = &x.calibration;
    println!("device: {device}");
    println!(
        "fitted from the calibration run ({} faults, ETTR {:.3}): step {:.3} s, checkpoint {:.4} s, start-up {:.3} s",
        x.fit_cfg.faults.len(),
        x.fit_run.ettr,
        c.step_period_s,
        c.checkpoint_cost_s,
        c.startup_s
    );
    println!(
        "detection: kill {}, hang {} beyond the threshold, slow {}; restart overhead {}",
        fmt_d(&c.detect_kill_s, "s"),
        fmt_d(&c.hang_overshoot_s, "s"),
        fmt_d(&c.detect_slow_steps, "slow steps"),
        fmt_d(&c.restart_s, "s")
    );
    let rows = vec![
        vec![
            "steps x mean step (s)".to_string(),
            format!("{:.2}", h.steps_done as f64 * h.step_period_mean_s),
            format!("{:.2}", p.useful_s),
        ],
        vec![
            "wall (s)".to_string(),
            format!("{:.2}", h.wall_s),
            format!("{:.2}", p.wall_s()),
        ],
        vec![
            "detection (s)".to_string(),
            format!("{measured_detect:.2}"),
            format!("{:.2}", p.detect_s),
        ],
        vec![
            "restart incl. first step (s)".to_string(),
            format!("{measured_restart:.2}"),
            format!(
                "{:.2}",
                p.restart_s + x.held_cfg.faults.len() as f64 * h.step_period_mean_s
            ),
        ],
        vec![
            "ETTR".to_string(),
            format!("{:.3}", h.ettr),
            format!(
                "{:.3} (replay 95%: {:.3}-{:.3})",
                p.ettr, x.interval.low, x.interval.high
            ),
        ],
    ];
    println!(
        "held-out run ({} faults, another schedule):\n{}",
        x.held_cfg.faults.len(),
        trainlab_reports::markdown_table(&["", "measured", "predicted"], &rows)
    );
    println!(
        "held-out ETTR error: {:+.1} points (faults missed: {}, false alarms: {})",
        x.error_points(),
        missed(&x.fit_run) + missed(h),
        x.fit_run.false_alarms + h.false_alarms
    );
    println!(
        "wrote {}\nwrote {}\nwrote {}",
        prof_path.display(),
        pq.display(),
        csv.display()
    );
    Ok(())
}
