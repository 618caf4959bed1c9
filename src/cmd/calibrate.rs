//! `trainlab calibrate --workload KIND [--backend cpu|cuda]`: the kind table's calibration of KIND, its profile
//! written to `--out`, its held-out table printed (calibrated and uncalibrated prediction against measurement).
use crate::cli::CalibrateArgs;
use anyhow::Result;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};
use trainlab::calibration::{self, CalRequest, Calibrated, Calibration, Device};
use trainlab::kinds;
use trainlab_core::{Error, Record, Seed};

/// How long a calibration may take to stop by itself after Ctrl-C before its unit in flight (one timed GEMM, one
/// MoE layer, one training run) is abandoned: the command must exit within a second of the signal.
const GRACE: Duration = Duration::from_millis(400);

/// Runs `cal` on a thread of its own so that Ctrl-C is honoured within [`GRACE`] even when one unit of its work is
/// longer: the measurements it reported through `keep` are in `kept` either way; a unit abandoned in flight is lost
/// (the process exits while it runs).
fn run_cancellable(
    cal: &'static dyn Calibration,
    device: Device,
    quick: bool,
    seed: Seed,
    cancel: &Arc<AtomicBool>,
    bar: &indicatif::ProgressBar,
    kept: &Arc<std::sync::Mutex<Vec<Record>>>,
) -> Result<Calibrated, Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (cancel, bar, kept) = (cancel.clone(), bar.clone(), kept.clone());
        std::thread::spawn(move || {
            let progress = move |m: String| bar.set_message(m);
            let keep = move |r: Vec<Record>| kept.lock().unwrap_or_else(|p| p.into_inner()).extend(r);
            let req = CalRequest {
                device,
                quick,
                seed,
                cancel: &cancel,
                progress: &progress,
                keep: &keep,
            };
            let _ = tx.send(cal.run(&req));
        });
    }
    let mut since: Option<Instant> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(done) => return done,
            Err(RecvTimeoutError::Timeout) => {
                if cancel.load(Ordering::Relaxed) && since.get_or_insert_with(Instant::now).elapsed() > GRACE {
                    return Err(Error::Interrupted);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::Backend(
                    "internal: the calibration stopped without an answer".into(),
                ));
            }
        }
    }
}

/// `trainlab calibrate`.
pub fn run(a: &CalibrateArgs, seed: Option<u64>, cancel: &Arc<AtomicBool>) -> Result<()> {
    let kind = kinds::find(&a.workload).map_err(|e| e.map_field(|_| "--workload".into()))?;
    let cal = kind.calibration().ok_or_else(|| {
        let with: Vec<&str> = kinds::KINDS
            .iter()
            .filter(|k| k.calibration().is_some())
            .map(|k| k.name())
            .collect();
        Error::invalid(
            "--workload",
            &a.workload,
            format!("kind \"{}\" has no measured backend to calibrate against", kind.name()),
            format!("calibrate one of: {}", with.join(", ")),
        )
    })?;
    let device = match a.backend.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda,
        other => {
            return Err(Error::invalid("--backend", other, "unknown device", "use cpu or cuda").into());
        }
    };
    if !cal.devices().contains(&device) {
        return Err(Error::invalid(
            "--backend",
            device.as_str(),
            format!(
                "the {} calibration measures {} only",
                kind.name(),
                cal.devices()
                    .iter()
                    .map(|d| d.as_str().to_uppercase())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
            format!(
                "use --backend {}",
                cal.devices()
                    .iter()
                    .map(|d| d.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        )
        .into());
    }
    // An unusable output folder fails now, not after minutes of measurement.
    trainlab::dcpt::check_out_dir("--out", &a.out)?;
    let bar = trainlab::progress::spinner(&format!("calibrate {}", kind.name()), a.json);
    let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = run_cancellable(cal, device, a.quick, Seed(seed.unwrap_or(42)), cancel, &bar, &kept);
    bar.finish_and_clear();
    if let Err(Error::Interrupted) = done {
        let kept = std::mem::take(&mut *kept.lock().unwrap_or_else(|p| p.into_inner()));
        if kept.is_empty() {
            eprintln!("interrupted before any measurement finished: nothing written, no profile");
        } else {
            let paths = calibration::write_partial(&kept, cal.profile_kind(), device, &a.out)?;
            eprintln!(
                "interrupted: {} measurements kept, marked partial, in {}; no profile written (a model fitted to \
                 part of the runs would mislead later predictions)",
                kept.len(),
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" and ")
            );
        }
        return Err(Error::Interrupted.into());
    }
    let done = done?;
    let written = calibration::write(&done, device, &a.out)?;
    let med = trainlab_core::stats::median(
        &done
            .held_out
            .iter()
            .map(|h| h.calibrated_error().abs())
            .filter(|e| e.is_finite())
            .collect::<Vec<_>>(),
    );
    if a.json {
        let v = serde_json::json!({
            "workload": kind.name(), "profile_kind": done.profile_kind, "backend": device.as_str(),
            "profile": written[0].display().to_string(),
            "held_out": done.held_out, "held_out_median_abs_error": med,
            "details": done.json,
            "outputs": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for n in &done.notes {
        println!("{}", n.trim_end());
    }
    println!("held-out (not in the fit):");
    print!(
        "{}",
        trainlab_reports::markdown_table(
            &[
                "case",
                "metric",
                "measured",
                "calibrated",
                "error",
                "uncalibrated",
                "error"
            ],
            &calibration::held_out_rows(&done.held_out)
        )
    );
    println!(
        "held-out median |error| of the calibrated model: {:.1}% over {} rows",
        100.0 * med,
        done.held_out.len()
    );
    for p in &written {
        println!("wrote {}", p.display());
    }
    println!(
        "use it: trainlab compare SCENARIO --profile {} (kinds that read `{}` profiles: {})",
        written[0].display(),
        done.profile_kind,
        trainlab::profiles::readers(done.profile_kind).join(", ")
    );
    Ok(())
}
