//! The one calibration capability: `trainlab calibrate --workload KIND [--backend cpu|cuda]`.
//!
//! A kind with a measured backend declares a [`Calibration`] in its [`crate::kinds::KindDef`]. Running it measures
//! real runs, fits the kind's model parameters on part of them, predicts the rest (the held-out table, with the
//! uncalibrated prediction beside the calibrated one where the kind has one), and returns a profile envelope
//! ([`trainlab_core::Profile`]) that [`write`] puts in the output directory as `profile-<kind>-<device>.toml`, with
//! the measured-vs-predicted records as Parquet/CSV. Every analytical and simulated backend of the kinds that read
//! that profile kind takes it through `--profile`.
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use trainlab_core::{Error, Fidelity, HeldOut, Metric, PROFILE_FORMAT, Profile, Provenance, Record, Seed};

pub use trainlab_core::Device;

/// What a calibration run is asked to do.
pub struct CalRequest<'a> {
    /// The device to measure.
    pub device: Device,
    /// Fewer and shorter runs (smoke tests; not a profile to trust).
    pub quick: bool,
    /// Seed of every random input.
    pub seed: Seed,
    /// Set on Ctrl-C.
    pub cancel: &'a Arc<AtomicBool>,
    /// Progress messages (a spinner or nothing).
    pub progress: &'a (dyn Fn(String) + Sync),
    /// Measurements as they finish (records of the measured backend). If the run is interrupted, `calibrate`
    /// writes what reached here to `partial-calibration-<kind>-<device>.parquet` / `.csv` and no profile: a model
    /// fitted to part of a sweep would mislead every later prediction.
    pub keep: &'a (dyn Fn(Vec<Record>) + Sync),
}

/// A record of one measurement taken by a calibration (`backend` is the device measured).
pub fn measured_record(study: &str, kind: &str, case: &str, device: Device, seed: Seed, m: &Metric) -> Record {
    Record::from_metric(study, kind, case, device.as_str(), Fidelity::Measured, seed.0, m)
}

/// What a calibration produced.
pub struct Calibrated {
    /// The profile kind (`device`, `moe_layer`, `training_job`).
    pub profile_kind: &'static str,
    /// The profile file's text (a [`Profile`] envelope as TOML).
    pub profile_toml: String,
    /// The held-out table (also inside the profile).
    pub held_out: Vec<HeldOut>,
    /// Measured and predicted values as records (fit and held-out cases).
    pub records: Vec<Record>,
    /// Human-readable lines to print before the held-out table (fitted values, device).
    pub notes: Vec<String>,
    /// Extra fields for `--json`.
    pub json: serde_json::Value,
}

/// A kind's calibration.
pub trait Calibration: Sync {
    /// The profile kind it writes.
    fn profile_kind(&self) -> &'static str;
    /// The devices it can measure.
    fn devices(&self) -> &'static [Device];
    /// Measures, fits and predicts the held-out runs.
    fn run(&self, req: &CalRequest<'_>) -> Result<Calibrated, Error>;
}

/// Today's date (UTC) as `YYYY-MM-DD`, from the system clock (days to civil date, Hinnant's algorithm).
pub fn today() -> String {
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

/// Provenance of a measurement made now on `device`, of the configurations `measured`.
pub fn provenance(device: String, measured: Vec<String>) -> Provenance {
    Provenance {
        date: today(),
        device,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        version: env!("CARGO_PKG_VERSION").to_string(),
        git_rev: env!("TRAINLAB_GIT_REV").to_string(),
        measured,
    }
}

/// Wraps fitted parameters into a profile envelope and renders it as TOML.
pub fn envelope<P: Serialize>(
    kind: &'static str,
    provenance: Provenance,
    params: P,
    held_out: Vec<HeldOut>,
) -> Result<String, Error> {
    let p = Profile {
        kind: kind.to_string(),
        format: PROFILE_FORMAT,
        provenance,
        params,
        held_out,
    };
    toml::to_string_pretty(&p).map_err(|e| Error::Backend(format!("internal: encoding the profile: {e}")))
}

/// Writes a calibration's outputs into `out`: `profile-<kind>-<device>.toml` and `calibration-<kind>-<device>.parquet`
/// / `.csv`. Returns the paths, profile first.
pub fn write(c: &Calibrated, device: Device, out: &Path) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    let prof = out.join(format!("profile-{}-{}.toml", c.profile_kind, device.as_str()));
    trainlab_reports::write_atomic(&prof, c.profile_toml.as_bytes()).map_err(|e| Error::Backend(e.to_string()))?;
    let (pq, csv) = trainlab_reports::write_records(
        &c.records,
        out,
        &format!("calibration-{}-{}", c.profile_kind, device.as_str()),
    )
    .map_err(|e| Error::Backend(e.to_string()))?;
    Ok(vec![prof, pq, csv])
}

/// Writes the measurements of an interrupted calibration into `out` as `partial-calibration-<kind>-<device>`
/// Parquet and CSV (the name marks them partial; no profile is written). Returns the paths.
pub fn write_partial(
    records: &[Record],
    profile_kind: &str,
    device: Device,
    out: &Path,
) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    let (pq, csv) = trainlab_reports::write_records(
        records,
        out,
        &format!("partial-calibration-{profile_kind}-{}", device.as_str()),
    )
    .map_err(|e| Error::Backend(e.to_string()))?;
    Ok(vec![pq, csv])
}

/// The held-out table as Markdown rows: case, metric, measured, calibrated (error), uncalibrated (error).
pub fn held_out_rows(rows: &[HeldOut]) -> Vec<Vec<String>> {
    let v = |x: f64| {
        if x == 0.0 || (1e-3..1e5).contains(&x.abs()) {
            format!("{x:.4}")
        } else {
            format!("{x:.4e}")
        }
    };
    rows.iter()
        .map(|h| {
            vec![
                h.case.clone(),
                h.metric.clone(),
                v(h.measured),
                v(h.calibrated),
                format!("{:+.1}%", 100.0 * h.calibrated_error()),
                h.uncalibrated.map(v).unwrap_or_default(),
                h.uncalibrated_error()
                    .map(|e| format!("{:+.1}%", 100.0 * e))
                    .unwrap_or_default(),
            ]
        })
        .collect()
}
