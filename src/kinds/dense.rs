//! The `dense_training` kind: a dense transformer trained on a GPU cluster (step model and layout search, operation-level
//! step simulator). Reads a `device` profile measured on a GPU (`calibrate --backend cuda`).
use super::micro::device_profile;
use super::{KindDef, Opts};
use crate::calibration::Device;
use trainlab_core::workloads::DenseTraining;
use trainlab_core::{DeviceProfile, Error};

/// The GPU device profile given with `--profile`, if any; a CPU-only device profile is an input error (a dense job
/// runs on GPUs, and a CPU's rates would silently make every answer wrong).
pub fn gpu_profile(opts: &Opts) -> Result<Option<DeviceProfile>, Error> {
    if let Some(p) = device_profile(opts, Device::Cuda)? {
        return Ok(Some(p.params));
    }
    if let Some(p) = device_profile(opts, Device::Cpu)? {
        return Err(Error::invalid(
            "--profile",
            opts.profiles
                .source
                .as_ref()
                .map_or(String::new(), |s| s.display().to_string()),
            format!(
                "a device profile measured on the CPU ({}); dense_training runs on GPUs",
                p.provenance.device
            ),
            "give a profile from `trainlab calibrate --backend cuda`, or drop --profile",
        ));
    }
    Ok(None)
}

fn backends(o: &Opts) -> Result<super::Backends<DenseTraining>, Error> {
    let profile = gpu_profile(o)?;
    Ok(vec![
        Box::new(trainlab_models::dense::DenseAnalytical {
            profile: profile.clone(),
            network: o.network.factory(o.quick),
        }),
        Box::new(trainlab_sim::dense::DenseOpSim {
            profile,
            network: o.network.factory(o.quick),
        }),
    ])
}

/// The `dense_training` kind.
pub static KIND: KindDef<DenseTraining> = KindDef {
    about: "a dense transformer trained on a GPU cluster: layout, step time, MFU, memory, days",
    reads: &["device"],
    reference: &["op_sim", "analytical"],
    headline: &["step_time", "mfu", "train_days", "gpu_hours"],
    backends,
    describe: |w| format!("{} GPUs", w.cluster.gpus()),
    profiled: |o, _| match gpu_profile(o) {
        Ok(Some(_)) => vec![("analytical", "device".into()), ("op_sim", "device".into())],
        _ => vec![],
    },
    calibration: None,
};
