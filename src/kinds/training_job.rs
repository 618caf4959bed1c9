//! The `training_job` kind (C4D): a training job under failures, answered by the renewal-reward closed form (or, for
//! a scheduled job, the fault-handling timeline), the failure DES with the shared C4D detector (or the Monte Carlo
//! replay of a schedule), and (unless `--quick`) a real fault-injection run on this machine.
//!
//! Honest answers: the real run of a rate-based production job runs a scaled-down scheduled job (4 ranks, 200 steps,
//! one fault of each kind; `FaultRun::answers`), so `compare` files it under that job and runs the closed form and
//! the simulator on it too. The `training_job` profile (fitted fault-handling timings: detection per fault kind,
//! restart, checkpoint, start-up) applies to scheduled jobs only: it describes fault handling on the machine it was
//! measured on, not a production cluster.
use super::{KindDef, Opts};
use crate::calibration::{CalRequest, Calibrated, Calibration, Device, envelope, provenance};
use trainlab_core::workloads::TrainingJob;
use trainlab_core::{Error, Fidelity, HeldOut, Metric, Profile, Record, Unit, Workload};
use trainlab_executors::faultrun::{FaultRun, calibrate as c4cal};
use trainlab_models::reliability::FaultTiming;

fn timing_profile(o: &Opts) -> Result<Option<Profile<FaultTiming>>, Error> {
    let p = o.profiles.get_one::<FaultTiming>("training_job", |_| true)?;
    if let Some(p) = &p {
        p.params.validate("profile.params")?;
    }
    Ok(p)
}

fn backends(o: &Opts) -> Result<super::Backends<TrainingJob>, Error> {
    let timing = timing_profile(o)?.map(|p| p.params);
    let mut v: super::Backends<TrainingJob> = vec![
        Box::new(trainlab_models::reliability::ReliabilityModel::new(timing.clone())),
        Box::new(trainlab_sim::failures::FailureSim::new(timing)),
    ];
    if !o.quick {
        v.push(Box::new(FaultRun::new(None)));
    }
    Ok(v)
}

/// The `training_job` kind.
pub static KIND: KindDef<TrainingJob> = KindDef {
    about: "a training job under failures: detection, localisation, restart, ETTR (C4D); rates or a fault schedule",
    reads: &["training_job"],
    reference: &["faultrun", "des", "young-daly"],
    headline: &["baseline.ettr", "c4d.ettr", "saving.ettr", "ettr"],
    backends,
    describe: |w| match &w.schedule {
        Some(s) => format!("{} ranks x {} steps, {} faults", s.ranks, s.steps, s.faults.len()),
        None => format!("{} GPUs", w.gpus),
    },
    profiled: |o, w| match timing_profile(o) {
        Ok(Some(_)) if w.schedule.is_some() => {
            vec![("young-daly", "training_job".into()), ("des", "training_job".into())]
        }
        _ => vec![],
    },
    calibration: Some(&FaultCalibration),
};

/// Calibration of the fault-handling timings from real fault-injection runs (a fit schedule and a held-out one).
pub struct FaultCalibration;

impl Calibration for FaultCalibration {
    fn profile_kind(&self) -> &'static str {
        "training_job"
    }
    fn devices(&self) -> &'static [Device] {
        &[Device::Cpu]
    }
    fn run(&self, req: &CalRequest<'_>) -> Result<Calibrated, Error> {
        if req.device != Device::Cpu {
            return Err(Error::invalid(
                "--backend",
                req.device.as_str(),
                "the fault-injection calibration runs on the CPU only (the fault-injection job has no CUDA variant)",
                "drop --backend cuda",
            ));
        }
        let device = trainlab_executors::cpu::cpu_device_description();
        let x = c4cal::calibrate(
            &FaultRun::new(None),
            req.quick,
            req.cancel,
            |phase| (req.progress)(format!("{phase}, 4 worker processes")),
            |phase, r| {
                let m = |name: &str, unit: Unit, v: f64| {
                    crate::calibration::measured_record(
                        "calibrate-training_job-cpu",
                        TrainingJob::KIND,
                        phase,
                        Device::Cpu,
                        req.seed,
                        &Metric::new(name, unit, v),
                    )
                };
                (req.keep)(vec![
                    m("wall_time", Unit::Seconds, r.wall_s),
                    m("steps_done", Unit::Count, r.steps_done as f64),
                    m("step_period", Unit::Seconds, r.step_period_s),
                    m("checkpoint_time", Unit::Seconds, r.checkpoint_s),
                    m("startup_time", Unit::Seconds, r.startup_s),
                    m("ettr", Unit::Ratio, r.ettr),
                ]);
            },
        )?;
        let describe = |j: &TrainingJob| (KIND.describe)(j);
        let held_case = format!("held-out: {}", describe(&x.held_job));
        let held_out: Vec<HeldOut> = x
            .held_out
            .iter()
            .map(|r| HeldOut {
                case: held_case.clone(),
                metric: r.metric.clone(),
                measured: r.measured,
                calibrated: r.calibrated,
                uncalibrated: Some(r.uncalibrated),
            })
            .collect();
        let study = "calibrate-training_job-cpu";
        let seed = req.seed.0;
        let mut records = Vec::new();
        for r in &x.held_out {
            for (backend, f, v) in [
                ("faultrun", Fidelity::Measured, r.measured),
                ("young-daly-calibrated", Fidelity::Analytical, r.calibrated),
                ("young-daly-uncalibrated", Fidelity::Analytical, r.uncalibrated),
            ] {
                records.push(Record::from_metric(
                    study,
                    TrainingJob::KIND,
                    &held_case,
                    backend,
                    f,
                    seed,
                    &Metric::new(r.metric.clone(), r.unit, v),
                ));
            }
        }
        let t = &x.timing;
        let ettr = |rows: &[c4cal::HeldOutRow]| {
            rows.iter()
                .find(|r| r.metric == "ettr")
                .map(|r| (r.measured, r.calibrated, r.uncalibrated))
        };
        let mut notes = vec![
            format!("device: {device}"),
            format!("fit run: {} (ETTR {:.3})", describe(&x.fit_job), x.fit_run.ettr),
            format!("fitted timing: {}", serde_json::to_string(t).unwrap_or_default()),
        ];
        if let Some((m, c, u)) = ettr(&x.held_out) {
            notes.push(format!(
                "held-out ETTR: measured {m:.3}, calibrated {c:.3} ({:+.1} points), uncalibrated {u:.3} ({:+.1} points)",
                100.0 * (c - m),
                100.0 * (u - m)
            ));
        }
        let json = serde_json::json!({
            "device": device, "timing": t, "fit_ettr": x.fit_run.ettr, "held_out_ettr": x.held_run.ettr,
            "false_alarms": x.fit_run.false_alarms + x.held_run.false_alarms,
        });
        let measured = vec![describe(&x.fit_job), describe(&x.held_job)];
        Ok(Calibrated {
            profile_kind: "training_job",
            profile_toml: envelope(
                "training_job",
                provenance(device, measured),
                t.clone(),
                held_out.clone(),
            )?,
            held_out,
            records,
            notes,
            json,
        })
    }
}
