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
/// held-out run (another schedule) predicted by it, calibrated and uncalibrated.
fn training_job(a: &CalibrateArgs, seed: Option<u64>, cancel: &Arc<AtomicBool>) -> Result<()> {
    use trainlab_executors::faultrun::{FaultRun, calibrate as c4cal};
    if matches!(a.backend, DeviceKind::Cuda) {
        return Err(UsageError(
            "`calibrate --workload training-job` runs on the CPU only (the fault-injection job has no CUDA variant); \
             drop `--backend cuda`"
                .into(),
        )
        .into());
    }
    let seed = Seed(seed.unwrap_or(42));
    let steps = c4cal::steps(a.quick);
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
    let x = c4cal::calibrate(&FaultRun::new(None), a.quick, cancel, |phase| {
        bar.set_message(format!("{phase}, {steps} steps, 4 worker processes"))
    })?;
    bar.finish_and_clear();
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(format!("creating {}", a.out.display()), e))?;
    #[derive(serde::Serialize)]
    struct Profile<'a> {
        provenance: Provenance,
        timing: &'a trainlab_models::faultline::FaultTiming,
    }
    let prof_path = a.out.join("profile-c4-cpu.toml");
    let text = toml::to_string_pretty(&Profile {
        provenance: provenance(device.clone()),
        timing: &x.timing,
    })?;
    std::fs::write(&prof_path, text).map_err(|e| Error::io(format!("writing {}", prof_path.display()), e))?;
    let study = "calibrate-training-job";
    let mut records = Vec::new();
    for row in &x.held_out {
        for (backend, fid, v) in [
            ("faultrun", Fidelity::Measured, row.measured),
            ("timeline-calibrated", Fidelity::Analytical, row.calibrated),
            ("timeline", Fidelity::Analytical, row.uncalibrated),
        ] {
            records.push(Record::from_metric(
                study,
                "training_job",
                "held-out",
                backend,
                fid,
                seed.0,
                &Metric::new(row.metric.clone(), row.unit, v),
            ));
        }
    }
    let (pq, csv) = trainlab_reports::write_records(&records, &a.out, "calibration-training-job")?;
    let ettr = x.row("ettr").cloned();
    if a.json {
        let v = serde_json::json!({
            "workload": "training_job", "device": device, "profile": prof_path.display().to_string(),
            "timing": &x.timing,
            "fit_ettr": x.fit_run.ettr,
            "held_out": x.held_out.iter().map(|r| serde_json::json!({
                "metric": r.metric, "measured": r.measured, "calibrated": r.calibrated, "uncalibrated": r.uncalibrated,
            })).collect::<Vec<_>>(),
            "outputs": [pq.display().to_string(), csv.display().to_string()],
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let t = &x.timing;
    let fmt_d = |d: &trainlab_models::faultline::Fitted, unit: &str| {
        format!("{:.3} +- {:.3} {unit} (n={})", d.mean, d.std, d.n)
    };
    println!("device: {device}");
    println!(
        "fitted from the calibration run (ETTR {:.3}): step {:.4} s per {:.3} s of compute, checkpoint {:.4} s, \
         start-up {:.3} s",
        x.fit_run.ettr, t.step_period_s, t.step_time_s, t.checkpoint_cost_s, t.startup_s
    );
    println!(
        "detection: kill {}, hang {} beyond the threshold, slow {}; restart overhead {}",
        fmt_d(&t.detect_kill_s, "s"),
        fmt_d(&t.hang_overshoot_s, "s"),
        fmt_d(&t.detect_slow_steps, "slow steps"),
        fmt_d(&t.restart_s, "s")
    );
    let rows: Vec<Vec<String>> = x
        .held_out
        .iter()
        .map(|r| {
            vec![
                r.metric.clone(),
                format!("{:.3}", r.measured),
                format!("{:.3}", r.calibrated),
                format!("{:.3}", r.uncalibrated),
            ]
        })
        .collect();
    println!(
        "held-out run (another schedule):\n{}",
        trainlab_reports::markdown_table(&["metric", "measured", "calibrated", "uncalibrated"], &rows)
    );
    if let Some(e) = ettr {
        println!(
            "held-out ETTR error: {:+.1} points calibrated, {:+.1} uncalibrated",
            100.0 * e.calibrated_error(),
            100.0 * e.uncalibrated_error()
        );
    }
    println!(
        "wrote {}\nwrote {}\nwrote {}",
        prof_path.display(),
        pq.display(),
        csv.display()
    );
    Ok(())
}
