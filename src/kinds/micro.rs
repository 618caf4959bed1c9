//! Microbenchmark kinds: `gemm`, `mem_bandwidth`, `launch_latency`, and their one calibration (the `device`
//! profile: asymptotic GEMM rate per dtype, half-rate dimension, launch overhead, memory bandwidth).
//!
//! Each workload names its device (`cpu` or `cuda`). The roofline answers on that device from the device profile
//! (a calibrated one from `--profile`, else a documented guess for the CPU or the H100 datasheet for the GPU); the
//! CPU executor answers the workload on this CPU and the CUDA executor on the GPU, so `compare` puts a CPU run and a
//! GPU run in different groups and never computes an error between them.
use super::{Answering, KindDef, Opts};
use crate::calibration::{self, CalRequest, Calibrated, Calibration, Device, envelope, provenance};
use trainlab_core::workloads::{Gemm, GemmOutcome, LaunchLatency, LaunchOutcome, MemBandwidth, MemKernel, MemOutcome};
use trainlab_core::{
    Backend, DeviceProfile, Error, Fidelity, HeldOut, Metric, Profile, Record, RunCtx, Unit, Workload,
};
use trainlab_executors::timing::Timing;
use trainlab_models::roofline::{Roofline, datasheet_profile, default_cpu_profile, gemm_time};

/// The device profile for `device` given with `--profile`, if any.
pub fn device_profile(opts: &Opts, device: Device) -> Result<Option<Profile<DeviceProfile>>, Error> {
    let p = opts
        .profiles
        .get_one::<DeviceProfile>("device", |p| p.params.backend == device.as_str())?;
    if let Some(p) = &p {
        p.params.validate("profile.params")?;
    }
    Ok(p)
}

/// The uncalibrated device profile: a documented guess for a small CPU, the H100 datasheet for a GPU.
pub fn default_profile(device: Device) -> DeviceProfile {
    match device {
        Device::Cpu => default_cpu_profile(),
        Device::Cuda => datasheet_profile(
            &trainlab_datasets::gpus::preset("h100-sxm")
                .unwrap_or_else(|| unreachable!("the h100-sxm preset is part of the datasets crate")),
        ),
    }
}

/// The profile the analytical models use for `device`: the calibrated one, else [`default_profile`].
pub fn effective_profile(opts: &Opts, device: Device) -> Result<DeviceProfile, Error> {
    Ok(device_profile(opts, device)?.map_or_else(|| default_profile(device), |p| p.params))
}

/// A roofline per device: answers each workload with the profile of the device it names.
struct DeviceRoofline {
    cpu: Roofline,
    cuda: Roofline,
}

impl DeviceRoofline {
    fn new(opts: &Opts) -> Result<Self, Error> {
        Ok(DeviceRoofline {
            cpu: Roofline {
                profile: effective_profile(opts, Device::Cpu)?,
            },
            cuda: Roofline {
                profile: effective_profile(opts, Device::Cuda)?,
            },
        })
    }
    fn on(&mut self, d: Device) -> &mut Roofline {
        match d {
            Device::Cpu => &mut self.cpu,
            Device::Cuda => &mut self.cuda,
        }
    }
}

macro_rules! device_workload {
    ($w:ty, $out:ty) => {
        impl Backend<$w> for DeviceRoofline {
            fn name(&self) -> &str {
                "roofline"
            }
            fn fidelity(&self) -> Fidelity {
                Fidelity::Analytical
            }
            fn run(&mut self, w: &$w, ctx: &mut RunCtx) -> Result<$out, Error> {
                Backend::<$w>::run(self.on(w.device), w, ctx)
            }
        }
    };
}
device_workload!(Gemm, GemmOutcome);
device_workload!(MemBandwidth, MemOutcome);
device_workload!(LaunchLatency, LaunchOutcome);

macro_rules! on_device {
    ($name:ident, $w:ty, $d:expr) => {
        fn $name(w: &$w) -> Option<$w> {
            (w.device != $d).then(|| {
                let mut x = w.clone();
                x.device = $d;
                x
            })
        }
    };
}
on_device!(gemm_on_cpu, Gemm, Device::Cpu);
on_device!(gemm_on_cuda, Gemm, Device::Cuda);
on_device!(mem_on_cpu, MemBandwidth, Device::Cpu);
on_device!(mem_on_cuda, MemBandwidth, Device::Cuda);
on_device!(launch_on_cpu, LaunchLatency, Device::Cpu);
on_device!(launch_on_cuda, LaunchLatency, Device::Cuda);

fn gemm_backends(o: &Opts) -> Result<super::Backends<Gemm>, Error> {
    Ok(vec![
        Box::new(DeviceRoofline::new(o)?),
        Box::new(Answering {
            inner: Box::new(trainlab_executors::cpu::CpuGemm::default()),
            map: gemm_on_cpu,
        }),
        Box::new(Answering {
            inner: Box::new(trainlab_executors::cuda::CudaGemm::default()),
            map: gemm_on_cuda,
        }),
    ])
}
fn mem_backends(o: &Opts) -> Result<super::Backends<MemBandwidth>, Error> {
    Ok(vec![
        Box::new(DeviceRoofline::new(o)?),
        Box::new(Answering {
            inner: Box::new(trainlab_executors::cpu::CpuMem::default()),
            map: mem_on_cpu,
        }),
        Box::new(Answering {
            inner: Box::new(trainlab_executors::cuda::CudaMem::default()),
            map: mem_on_cuda,
        }),
    ])
}
fn launch_backends(o: &Opts) -> Result<super::Backends<LaunchLatency>, Error> {
    Ok(vec![
        Box::new(DeviceRoofline::new(o)?),
        Box::new(Answering {
            inner: Box::new(trainlab_executors::cpu::CpuDispatch::default()),
            map: launch_on_cpu,
        }),
        Box::new(Answering {
            inner: Box::new(trainlab_executors::cuda::CudaLaunch::default()),
            map: launch_on_cuda,
        }),
    ])
}

fn profiled(o: &Opts, d: Device) -> Vec<(&'static str, String)> {
    match device_profile(o, d) {
        Ok(Some(_)) => vec![("roofline", "device".to_string())],
        _ => vec![],
    }
}

/// The `gemm` kind.
pub static GEMM: KindDef<Gemm> = KindDef {
    about: "a (batched) dense matrix product on the CPU or a GPU",
    reads: &["device"],
    reference: &["cuda", "cpu"],
    headline: &["time", "flops_per_s"],
    backends: gemm_backends,
    describe: |w| format!("on {}", w.device.as_str()),
    profiled: |o, w| profiled(o, w.device),
    calibration: Some(&DeviceCalibration),
};

/// The `mem_bandwidth` kind.
pub static MEM_BANDWIDTH: KindDef<MemBandwidth> = KindDef {
    about: "a streaming memory kernel (STREAM copy or triad)",
    reads: &["device"],
    reference: &["cuda", "cpu"],
    headline: &["time", "bandwidth"],
    backends: mem_backends,
    describe: |w| format!("on {}", w.device.as_str()),
    profiled: |o, w| profiled(o, w.device),
    calibration: Some(&DeviceCalibration),
};

/// The `launch_latency` kind.
pub static LAUNCH_LATENCY: KindDef<LaunchLatency> = KindDef {
    about: "kernel launch (GPU) or thread-pool dispatch (CPU) latency",
    reads: &["device"],
    reference: &["cuda", "cpu"],
    headline: &["per_launch"],
    backends: launch_backends,
    describe: |w| format!("on {}", w.device.as_str()),
    profiled: |o, w| profiled(o, w.device),
    calibration: Some(&DeviceCalibration),
};

/// Calibration of the `device` profile from a GEMM sweep and a triad run.
pub struct DeviceCalibration;

impl Calibration for DeviceCalibration {
    fn profile_kind(&self) -> &'static str {
        "device"
    }
    fn devices(&self) -> &'static [Device] {
        &[Device::Cpu, Device::Cuda]
    }
    fn run(&self, req: &CalRequest<'_>) -> Result<Calibrated, Error> {
        let device = req.device;
        if device == Device::Cuda
            && let Some(why) = trainlab_executors::cuda::gpu_unavailable_reason()
        {
            return Err(Error::invalid(
                "--backend",
                "cuda",
                format!("no usable GPU here: {why}"),
                "calibrate on a machine with an NVIDIA GPU, or use --backend cpu",
            ));
        }
        let (fit_sizes, held_sizes) = match device {
            Device::Cpu => trainlab_executors::cpu::default_calibration_sizes(),
            Device::Cuda => trainlab_executors::cuda::default_cuda_calibration_sizes(),
        };
        let all: Vec<Gemm> = fit_sizes.iter().chain(held_sizes.iter()).cloned().collect();
        // The CPU sizes are timed in interleaved passes over the whole sweep, keeping each size's fastest pass (by
        // median): on a shared machine interference comes in bursts that can ruin every sample of one size in a
        // single pass (small multi-threaded GEMMs showed 30-80% spread), but rarely the same size in every pass.
        let rounds = if device == Device::Cpu && !req.quick { 3 } else { 1 };
        let study = format!("calibrate-device-{}", device.as_str());
        let seed = req.seed;
        let mut ctx = RunCtx::new(seed);
        ctx.cancel = req.cancel.clone();
        let n = all.len();
        let triad = MemBandwidth {
            bytes: 64 << 20,
            kernel: MemKernel::Triad,
            device,
        };
        let (sweep, mem_timing, description): (Vec<(Gemm, Timing)>, Timing, String) = match device {
            Device::Cpu => {
                let opts = if req.quick {
                    trainlab_executors::cpu::CpuOpts::quick()
                } else {
                    trainlab_executors::cpu::CpuOpts::default()
                };
                (req.progress)("memory bandwidth (triad)".into());
                let mem = trainlab_executors::cpu::time_mem(&triad, &opts, seed.derive("mem"))?;
                (req.keep)(vec![calibration::measured_record(
                    &study,
                    MemBandwidth::KIND,
                    "triad 64 MiB",
                    device,
                    seed,
                    &Metric::new("time", Unit::Seconds, mem.median_s()),
                )]);
                let mut sweep: Vec<(Gemm, Timing)> = Vec::new();
                for pass in 0..rounds {
                    let mut again = Vec::with_capacity(n);
                    for (i, g) in all.iter().enumerate() {
                        (req.progress)(format!(
                            "GEMM sweep, pass {} of {rounds}, size {} of {n}",
                            pass + 1,
                            i + 1
                        ));
                        let t = trainlab_executors::cpu::gemm_sweep(std::slice::from_ref(g), &opts, &ctx)?;
                        (req.keep)(vec![calibration::measured_record(
                            &study,
                            Gemm::KIND,
                            &format!("{} [pass {}]", g.label(), pass + 1),
                            device,
                            seed,
                            &Metric::new("time", Unit::Seconds, t[0].1.median_s()),
                        )]);
                        again.extend(t);
                    }
                    if sweep.is_empty() {
                        sweep = again;
                        continue;
                    }
                    for (best, (_, t)) in sweep.iter_mut().zip(again) {
                        if t.median_s() < best.1.median_s() {
                            best.1 = t;
                        }
                    }
                }
                (sweep, mem, trainlab_executors::cpu::cpu_device_description())
            }
            Device::Cuda => {
                let opts = if req.quick {
                    trainlab_executors::cuda::CudaOpts::quick()
                } else {
                    trainlab_executors::cuda::CudaOpts::default()
                };
                let rt = trainlab_executors::cuda::CudaRuntime::new(opts.ordinal)?;
                (req.progress)("memory bandwidth (triad)".into());
                let mem = rt.time_mem(&triad, &opts.timing, seed.derive("mem"))?;
                (req.progress)(format!("GEMM sweep, {n} sizes"));
                let sweep = trainlab_executors::cuda::cuda_gemm_sweep(&all, &opts, &ctx)?;
                (sweep, mem, rt.device_description())
            }
        };
        if req.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let mem_bw = triad.bytes_moved() / mem_timing.median_s();
        let points: Vec<(Gemm, f64)> = sweep.iter().map(|(g, t)| (g.clone(), t.median_s())).collect();
        let (fit_points, held_points): (Vec<_>, Vec<_>) =
            points.iter().cloned().partition(|(g, _)| fit_sizes.contains(g));
        let measured: Vec<String> = all
            .iter()
            .map(|g| g.label())
            .chain(std::iter::once("triad 64 MiB".to_string()))
            .collect();
        let prov = provenance(description.clone(), measured);
        let mut profile =
            trainlab_models::calibrate::fit_gemm_profile(&fit_points, device.as_str(), prov.clone(), mem_bw)?;
        let uncal = default_profile(device);
        let held_out: Vec<HeldOut> = held_points
            .iter()
            .map(|(g, t)| HeldOut {
                case: g.label(),
                metric: "time".into(),
                measured: *t,
                calibrated: gemm_time(&profile, g),
                uncalibrated: Some(gemm_time(&uncal, g)),
            })
            .collect();
        let errors: Vec<f64> = held_out.iter().map(HeldOut::calibrated_error).collect();
        profile.holdout_median_abs_rel_error = trainlab_models::calibrate::median_abs(&errors);
        let mut records = Vec::new();
        for (g, t) in &sweep {
            let role = if fit_sizes.contains(g) { "fit" } else { "held-out" };
            let case = format!("{} [{role}]", g.label());
            let rec = |backend: &str, f: Fidelity, v: f64| {
                Record::from_metric(
                    &study,
                    Gemm::KIND,
                    &case,
                    backend,
                    f,
                    seed.0,
                    &Metric::new("time", Unit::Seconds, v),
                )
            };
            records.push(rec(device.as_str(), Fidelity::Measured, t.median_s()));
            records.push(rec("roofline-calibrated", Fidelity::Analytical, gemm_time(&profile, g)));
            records.push(rec("roofline-uncalibrated", Fidelity::Analytical, gemm_time(&uncal, g)));
        }
        let med = profile.holdout_median_abs_rel_error.unwrap_or(f64::NAN);
        let notes = vec![
            format!("device: {description}"),
            format!(
                "memory bandwidth (triad): {:.2} GB/s; fitted asymptotic fp32 GEMM rate {:.1} GFLOP/s, half-rate dim \
                 {:.0}, overhead {:.2e} s",
                mem_bw / 1e9,
                profile.rate(trainlab_core::Dtype::Fp32) / 1e9,
                profile.gemm_half_dim,
                profile.launch_overhead_s
            ),
            format!(
                "held-out median |error|: {:.1}% over {} sizes",
                100.0 * med,
                held_points.len()
            ),
        ];
        let json = serde_json::json!({
            "device": description, "mem_bw_bytes_per_s": mem_bw, "gemm_rate": profile.gemm_rate,
            "gemm_half_dim": profile.gemm_half_dim, "launch_overhead_s": profile.launch_overhead_s,
            "holdout_median_abs_rel_error": med,
        });
        let profile_toml = envelope("device", prov, profile, held_out.clone())?;
        Ok(Calibrated {
            profile_kind: "device",
            profile_toml,
            held_out,
            records,
            notes,
            json,
        })
    }
}
