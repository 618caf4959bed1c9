//! The `training_job` kind (C4D): a training job under failures, answered by the renewal-reward closed form, the
//! failure DES with the shared C4D detector, and (unless `--quick`) a real fault-injection run on this machine.
use super::{KindDef, Opts, no_profile};
use trainlab_core::workloads::TrainingJob;
use trainlab_core::{Backend, Error};

fn backends(o: &Opts) -> Result<super::Backends<TrainingJob>, Error> {
    let mut v: Vec<Box<dyn Backend<TrainingJob>>> = vec![
        Box::new(trainlab_models::reliability::ReliabilityModel),
        Box::new(trainlab_sim::failures::FailureSim),
    ];
    if !o.quick {
        v.push(Box::new(trainlab_executors::faultrun::FaultRun::new(None)));
    }
    Ok(v)
}

/// The `training_job` kind.
pub static KIND: KindDef<TrainingJob> = KindDef {
    about: "a training job under failures: detection, localisation, restart, ETTR (C4D)",
    reads: &[],
    reference: &["faultrun", "des", "young-daly"],
    headline: &["baseline.ettr", "c4d.ettr", "saving.ettr"],
    backends,
    describe: |w| format!("{} GPUs", w.gpus),
    profiled: no_profile,
    calibration: None,
};
