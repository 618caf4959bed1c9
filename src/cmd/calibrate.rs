//! `trainlab calibrate --workload KIND [--backend cpu|cuda]`: the kind table's calibration of KIND, its profile
//! written to `--out`, its held-out table printed (calibrated and uncalibrated prediction against measurement).
use crate::cli::CalibrateArgs;
use anyhow::Result;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use trainlab::calibration::{self, CalRequest, Device};
use trainlab::kinds;
use trainlab_core::{Error, Seed};

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
    let bar = trainlab::progress::spinner(&format!("calibrate {}", kind.name()), a.json);
    let progress = {
        let b = bar.clone();
        move |m: String| b.set_message(m)
    };
    let req = CalRequest {
        device,
        quick: a.quick,
        seed: Seed(seed.unwrap_or(42)),
        cancel,
        progress: &progress,
    };
    let done = cal.run(&req);
    bar.finish_and_clear();
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
