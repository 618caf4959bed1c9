//! The `cpt_run` kind (D-CPT Law): one continual-pretraining run of the tiny LM, answered by the D-CPT law L3 fitted
//! to real runs of the same setup (`dcpt_law`, from a `cpt_run` profile), and by the real run on the CPU (`cpu`) or
//! the first GPU (`cuda`).
//!
//! Calibration (`trainlab calibrate --workload cpt_run`): a grid of real runs (sizes x domain shares, each
//! evaluated at log-spaced token counts) on this CPU; the general- and domain-loss laws are fitted by the project's
//! fit engine (Chinchilla approach 3, Huber on log residuals, L-BFGS from a start grid) on every run except those at
//! the held-out shares, with bootstrap replicates for 90% intervals; the held-out runs' final losses are the
//! held-out table. The law has no uncalibrated form: it exists only as fitted.
use super::{KindDef, Opts};
use crate::calibration::{CalRequest, Calibrated, Calibration, Device, envelope, provenance};
use trainlab_core::workloads::cpt::{CptRun, CptSetup};
use trainlab_core::{Error, Fidelity, HeldOut, Metric, Profile, Record, Unit, Workload};
use trainlab_executors::lm::{self, CptExec, GridRow, LmBackend};
use trainlab_models::cpt::{CptLaw, CptLawParams, FittedLaw};
use trainlab_models::fit::{self, Dataset, FitConfig, Law};
use trainlab_models::laws::DcptL3;

fn law_profile(o: &Opts) -> Result<Option<Profile<CptLawParams>>, Error> {
    let p = o.profiles.get_one::<CptLawParams>("cpt_run", |_| true)?;
    if let Some(p) = &p {
        p.params.validate()?;
    }
    Ok(p)
}

fn backends(o: &Opts) -> Result<super::Backends<CptRun>, Error> {
    Ok(vec![
        Box::new(CptLaw {
            fitted: law_profile(o)?.map(|p| p.params),
        }),
        Box::new(CptExec { device: LmBackend::Cpu }),
        Box::new(CptExec {
            device: LmBackend::Cuda,
        }),
    ])
}

/// The `cpt_run` kind.
pub static KIND: KindDef<CptRun> = KindDef {
    about: "a continual-pretraining run of a tiny LM: general and domain loss by model size, tokens and domain share \
            (D-CPT Law)",
    reads: &["cpt_run"],
    reference: &["cuda", "cpu"],
    headline: &["general_loss", "domain_loss"],
    backends,
    describe: |w| format!("H={} r={} D={}", w.hidden, w.domain_ratio, w.cpt_tokens),
    profiled: |o, w| match law_profile(o) {
        Ok(Some(p)) if p.params.setup == w.setup => vec![("dcpt_law", "cpt_run".into())],
        _ => vec![],
    },
    calibration: Some(&CptCalibration),
};

/// The calibration grid: sizes, domain shares, the shares held out, CPT tokens and evaluation points per run.
#[derive(Debug, Clone)]
pub struct CalGrid {
    /// Hidden widths.
    pub hidden: Vec<u64>,
    /// Domain shares r_d.
    pub ratios: Vec<f64>,
    /// Shares held out of the fit (among `ratios`).
    pub held_out: Vec<f64>,
    /// CPT tokens per run.
    pub cpt_tokens: u64,
    /// Evaluation points per run.
    pub evals: usize,
    /// Bootstrap replicates per law.
    pub bootstrap: usize,
    /// Starts of each fit.
    pub starts: usize,
}

impl CalGrid {
    /// The grid `calibrate` runs (`quick`: fewer sizes, shares, tokens and replicates).
    pub fn new(quick: bool) -> Self {
        if quick {
            CalGrid {
                hidden: vec![4, 8, 16],
                ratios: vec![0.0, 0.25, 0.5, 0.75, 1.0],
                held_out: vec![0.5],
                cpt_tokens: 50_000,
                evals: 6,
                bootstrap: 20,
                starts: 128,
            }
        } else {
            CalGrid {
                hidden: vec![4, 8, 16, 32],
                ratios: vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                held_out: vec![0.3, 0.7],
                cpt_tokens: 200_000,
                evals: 10,
                bootstrap: 100,
                starts: 512,
            }
        }
    }
}

/// The dataset of one loss: inputs `[N, D, share]` where the share is `1 − r_d` for the general loss.
fn dataset(rows: &[&GridRow], general: bool) -> Result<Dataset, Error> {
    let x = rows
        .iter()
        .map(|r| vec![r.n, r.d, if general { 1.0 - r.r } else { r.r }])
        .collect();
    let y = rows
        .iter()
        .map(|r| if general { r.general_loss } else { r.domain_loss })
        .collect();
    Dataset::new(vec!["N".into(), "D".into(), "r".into()], x, y)
}

fn fit_one(rows: &[&GridRow], general: bool, g: &CalGrid, cfg: &FitConfig) -> Result<FittedLaw, Error> {
    let law = DcptL3::new();
    let data = dataset(rows, general)?;
    let best = fit::fit(&law, &data, cfg)?;
    let boot = if cfg.cancelled() {
        Vec::new()
    } else {
        fit::bootstrap(&law, &data, &best, g.bootstrap, cfg)?.params
    };
    Ok(FittedLaw {
        params: best.params,
        bootstrap: boot,
    })
}

fn is_held(r: f64, held: &[f64]) -> bool {
    held.iter().any(|h| (h - r).abs() < 1e-9)
}

/// Calibration of the D-CPT law against real CPT runs on this CPU.
pub struct CptCalibration;

impl Calibration for CptCalibration {
    fn profile_kind(&self) -> &'static str {
        "cpt_run"
    }
    fn devices(&self) -> &'static [Device] {
        &[Device::Cpu, Device::Cuda]
    }
    fn run(&self, req: &CalRequest<'_>) -> Result<Calibrated, Error> {
        let g = CalGrid::new(req.quick);
        let setup = CptSetup::default();
        let base = CptRun {
            hidden: g.hidden[0],
            domain_ratio: 0.0,
            cpt_tokens: g.cpt_tokens,
            setup: setup.clone(),
        };
        let mut grid = lm::grid_of(&base, req.seed);
        grid.hidden = g.hidden.iter().map(|&h| h as usize).collect();
        grid.ratios = g.ratios.clone();
        grid.evals = g.evals;
        let (backend, device) = match req.device {
            Device::Cpu => (LmBackend::Cpu, trainlab_executors::cpu::cpu_device_description()),
            Device::Cuda => (LmBackend::Cuda, "cuda:0".to_string()),
        };
        let runs = g.hidden.len() * g.ratios.len();
        let progress =
            |done: usize, _: f64, label: &str| (req.progress)(format!("run {} of {runs}: {label}", done + 1));
        let result = lm::run_grid_on(&grid, backend, &progress, req.cancel)?;
        if req.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            // The finished runs (a run is kept whole or not at all) are kept as the partial measurements.
            let mut kept = Vec::new();
            for r in &result.rows {
                let case = format!("N={:.0} r={} D={:.0}", r.n, r.r, r.d);
                for (name, v) in [("general_loss", r.general_loss), ("domain_loss", r.domain_loss)] {
                    kept.push(crate::calibration::measured_record(
                        "calibrate-cpt_run",
                        CptRun::KIND,
                        &case,
                        req.device,
                        req.seed,
                        &Metric::new(name, Unit::Nats, v),
                    ));
                }
            }
            (req.keep)(kept);
            return Err(Error::Interrupted);
        }
        let fit_rows: Vec<&GridRow> = result.rows.iter().filter(|r| !is_held(r.r, &g.held_out)).collect();
        let cfg = FitConfig {
            max_starts: g.starts,
            seed: req.seed.derive("cpt.fit"),
            cancel: Some(req.cancel.clone()),
            ..FitConfig::default()
        };
        (req.progress)(format!(
            "fitting the general- and domain-loss laws on {} points",
            fit_rows.len()
        ));
        let params = CptLawParams {
            setup: setup.clone(),
            fitted_hidden: g.hidden.clone(),
            fitted_tokens: (
                fit_rows.iter().map(|r| r.d as u64).min().unwrap_or(0),
                fit_rows.iter().map(|r| r.d as u64).max().unwrap_or(0),
            ),
            general: fit_one(&fit_rows, true, &g, &cfg)?,
            domain: fit_one(&fit_rows, false, &g, &cfg)?,
        };
        if req.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let law = DcptL3::new();
        let predict = |r: &GridRow, general: bool| {
            let (p, share) = if general {
                (&params.general.params, 1.0 - r.r)
            } else {
                (&params.domain.params, r.r)
            };
            law.eval(p, &[r.n, r.d, share])
        };
        // The final point of every run: the answer the `cpt_run` workload asks for.
        let finals: Vec<&GridRow> = result.rows.iter().filter(|r| r.d as u64 == g.cpt_tokens).collect();
        let mut held_out = Vec::new();
        let mut records = Vec::new();
        let study = format!("calibrate-cpt_run-{}", req.device.as_str());
        for r in &finals {
            let held = is_held(r.r, &g.held_out);
            // The row knows the parameter count; the label names the width.
            let width = g
                .hidden
                .iter()
                .copied()
                .find(|&w| default_run(w, r.r, g.cpt_tokens).params() == r.n)
                .unwrap_or(0);
            let case = format!("H={width} r={} [{}]", r.r, if held { "held-out" } else { "fit" });
            for (metric, measured, general) in [
                ("general_loss", r.general_loss, true),
                ("domain_loss", r.domain_loss, false),
            ] {
                let predicted = predict(r, general);
                if held {
                    held_out.push(HeldOut {
                        case: case.clone(),
                        metric: metric.into(),
                        measured,
                        calibrated: predicted,
                        uncalibrated: None,
                    });
                }
                for (backend, fidelity, v) in [
                    (req.device.as_str(), Fidelity::Measured, measured),
                    ("dcpt_law", Fidelity::Analytical, predicted),
                ] {
                    records.push(Record::from_metric(
                        &study,
                        CptRun::KIND,
                        &case,
                        backend,
                        fidelity,
                        req.seed.0,
                        &Metric::new(metric, Unit::Nats, v),
                    ));
                }
            }
        }
        let errs: Vec<f64> = held_out.iter().map(|h| h.calibrated_error()).collect();
        let median = trainlab_core::stats::median_abs(&errs).unwrap_or(f64::NAN);
        let worst = errs.iter().fold(0.0f64, |m, e| m.max(e.abs()));
        let measured: Vec<String> = g
            .hidden
            .iter()
            .flat_map(|h| g.ratios.iter().map(move |r| format!("H={h} r={r} D={}", g.cpt_tokens)))
            .collect();
        let notes = vec![
            format!("device: {device}"),
            format!(
                "{runs} runs ({} sizes x {} shares), {} points fitted; held-out shares {:?}",
                g.hidden.len(),
                g.ratios.len(),
                fit_rows.len(),
                g.held_out
            ),
            format!(
                "held-out final losses: median |error| {:.2}%, worst {:.2}% over {} values",
                100.0 * median,
                100.0 * worst,
                held_out.len()
            ),
        ];
        let json = serde_json::json!({
            "device": device,
            "runs": runs,
            "points_fitted": fit_rows.len(),
            "held_out_ratios": g.held_out,
            "held_out_median_abs_error": median,
            "held_out_max_abs_error": worst,
        });
        Ok(Calibrated {
            profile_kind: "cpt_run",
            profile_toml: envelope("cpt_run", provenance(device, measured), params, held_out.clone())?,
            held_out,
            records,
            notes,
            json,
        })
    }
}

/// A CPT run of the default setup (for tests and scenarios).
pub fn default_run(hidden: u64, domain_ratio: f64, cpt_tokens: u64) -> CptRun {
    CptRun {
        hidden,
        domain_ratio,
        cpt_tokens,
        setup: CptSetup::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_holds_out_shares_it_runs() {
        for q in [true, false] {
            let g = CalGrid::new(q);
            assert!(g.held_out.iter().all(|h| is_held(*h, &g.ratios)));
            assert!(g.ratios.len() > g.held_out.len() + 2);
        }
    }
}
