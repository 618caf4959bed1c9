//! The `moe_layer` kind (M6-T): closed form (uniform router), Monte Carlo routing simulator, the real CPU layer
//! (forward + backward) and the CUDA layer, and the calibration of the MoE cost model against real CPU layers.
//!
//! Honest answers: the CPU executor runs every expert on this CPU in fp32, so for a layer of a GPU cluster it
//! answers another workload (the same layer on the `cpu` device preset, one rank); the CUDA executor runs on one GPU
//! (one rank). `compare` files those answers under their own workload and runs the models on it too.
//!
//! The `moe_layer` profile holds the fitted [`MoeCostModel`] and the device preset it was measured on; the closed
//! form and the simulator use it for layers on that device only.
use super::{Answering, KindDef, Opts};
use crate::calibration::{CalRequest, Calibrated, Calibration, Device, envelope, provenance};
use serde::{Deserialize, Serialize};
use trainlab_core::workloads::moe::{MoeLayer, MoeOutcome, RouterModel, Routing};
use trainlab_core::{Backend, Dtype, Error, Fidelity, HeldOut, Metric, Profile, Record, RunCtx, Seed, Unit, Workload};
use trainlab_executors::moe::measure;
use trainlab_models::moe::{MoeAnalytical, MoeCostModel};
use trainlab_sim::moe::{MeasuredStep, MoeSim, aggregate, calibrate};

/// The parameters of a `moe_layer` profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeProfile {
    /// The device preset the layers were measured on (`cpu` for this machine's CPU).
    pub device: String,
    /// The fitted cost model.
    pub cost: MoeCostModel,
}

fn moe_profile(o: &Opts) -> Result<Option<Profile<MoeProfile>>, Error> {
    o.profiles.get_one::<MoeProfile>("moe_layer", |_| true)
}

/// The closed form or the simulator, with the calibrated cost model applied to layers on the profile's device: a
/// `moe_layer` profile measured there, else the MoE cost model built from a `device` profile of that device.
struct WithCost<B> {
    inner: B,
    profile: Option<MoeProfile>,
    device: Option<trainlab_core::DeviceProfile>,
    set: fn(&mut B, Option<MoeCostModel>),
    /// The network that times the all-to-alls (`--network`); `None`: the cost model's alpha-beta network.
    network: Option<std::sync::Arc<dyn trainlab_models::hardware::NetworkFactory>>,
    /// Runs the backend with the all-to-alls on a given network.
    on: OnNetwork<B>,
}

type OnNetwork<B> =
    fn(&B, &MoeLayer, &mut RunCtx, &dyn trainlab_models::hardware::Network) -> Result<MoeOutcome, Error>;

/// The closed form with its all-to-alls on `net`.
fn closed_form_on(
    b: &MoeAnalytical,
    w: &MoeLayer,
    _ctx: &mut RunCtx,
    net: &dyn trainlab_models::hardware::Network,
) -> Result<MoeOutcome, Error> {
    w.validate()?;
    if w.router != RouterModel::Uniform {
        return Err(Error::Unsupported(format!(
            "the closed form covers the uniform router only (got {})",
            w.router.label()
        )));
    }
    let cost = b
        .cost
        .clone()
        .unwrap_or_else(|| MoeCostModel::from_cluster(&w.cluster, w.dtype));
    Ok(trainlab_models::moe::analytical_outcome_on(w, &cost, net))
}

/// The Monte Carlo simulator with its all-to-alls on `net`.
fn monte_carlo_on(
    b: &MoeSim,
    w: &MoeLayer,
    ctx: &mut RunCtx,
    net: &dyn trainlab_models::hardware::Network,
) -> Result<MoeOutcome, Error> {
    let reps = b.replicate_on(w, ctx.seed, Some(net))?;
    ctx.report(reps.len() as u64, reps.len() as u64);
    Ok(aggregate(w, &reps))
}

/// Whether a device profile (`cpu` or `cuda`) describes the device a layer runs on (the `cpu` preset or a GPU).
fn device_matches(p: &trainlab_core::DeviceProfile, w: &MoeLayer) -> bool {
    (p.backend == "cpu") == (w.cluster.gpu.name == "cpu")
}

impl<B: Backend<MoeLayer>> Backend<MoeLayer> for WithCost<B> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn fidelity(&self) -> Fidelity {
        self.inner.fidelity()
    }
    fn run(&mut self, w: &MoeLayer, ctx: &mut RunCtx) -> Result<MoeOutcome, Error> {
        let cost = self
            .profile
            .as_ref()
            .filter(|p| p.device == w.cluster.gpu.name)
            .map(|p| p.cost.clone())
            .or_else(|| {
                self.device
                    .as_ref()
                    .filter(|d| device_matches(d, w))
                    .map(|d| MoeCostModel::from_profile(d, &w.cluster, w.dtype))
            });
        (self.set)(&mut self.inner, cost);
        match &self.network {
            Some(f) => {
                let net = f.network(&w.cluster, ctx.seed)?;
                (self.on)(&self.inner, w, ctx, net.as_ref())
            }
            None => self.inner.run(w, ctx),
        }
    }
}

/// The layer the CPU executor really runs: every expert on this CPU (the `cpu` preset, one rank), fp32.
pub fn on_cpu(w: &MoeLayer) -> Option<MoeLayer> {
    if w.cluster.gpu.name == "cpu" && w.ep_ranks == 1 && w.dtype == Dtype::Fp32 {
        return None;
    }
    let mut x = w.clone();
    x.cluster = trainlab_datasets::gpus::cluster("cpu", 1, 1).ok()?;
    x.ep_ranks = 1;
    x.dtype = Dtype::Fp32;
    Some(x)
}

/// The layer the CUDA executor really runs: all experts on one GPU of the same preset.
pub fn on_one_gpu(w: &MoeLayer) -> Option<MoeLayer> {
    if w.ep_ranks == 1 && w.cluster.gpus() == 1 {
        return None;
    }
    let mut x = w.clone();
    x.cluster = trainlab_datasets::gpus::cluster(&w.cluster.gpu.name, 1, 1).ok()?;
    x.ep_ranks = 1;
    Some(x)
}

/// The device profile given with `--profile` (the GPU's if there is one, else the CPU's).
fn device_profile(o: &Opts) -> Result<Option<trainlab_core::DeviceProfile>, Error> {
    Ok(super::micro::device_profile(o, Device::Cuda)?
        .or(super::micro::device_profile(o, Device::Cpu)?)
        .map(|p| p.params))
}

fn backends(o: &Opts) -> Result<super::Backends<MoeLayer>, Error> {
    let profile = moe_profile(o)?.map(|p| p.params);
    let device = device_profile(o)?;
    Ok(vec![
        Box::new(WithCost {
            inner: MoeAnalytical::default(),
            profile: profile.clone(),
            device: device.clone(),
            set: |b, c| b.cost = c,
            network: o.network.factory(o.quick),
            on: closed_form_on,
        }),
        Box::new(WithCost {
            inner: MoeSim {
                replications: if o.quick { 50 } else { 500 },
                cost: None,
            },
            profile,
            device,
            set: |b, c| b.cost = c,
            network: o.network.factory(o.quick),
            on: monte_carlo_on,
        }),
        Box::new(Answering {
            inner: Box::new(trainlab_executors::moe::MoeCpu {
                draws: if o.quick { 1 } else { 3 },
                repeats: if o.quick { 2 } else { 5 },
                // One thread, as the calibration measures: a layer timed on two threads is another workload for
                // the fitted cost model (about half the time), and one core is far more repeatable on a shared
                // machine.
                threads: 1,
            }),
            map: on_cpu,
        }),
        Box::new(Answering {
            inner: Box::new(trainlab_executors::moe::cuda::MoeCuda),
            map: on_one_gpu,
        }),
    ])
}

/// The `moe_layer` kind.
pub static KIND: KindDef<MoeLayer> = KindDef {
    about: "an MoE layer: expert load, capacity and dropped tokens under top-k and k-top-1 routing, step time",
    reads: &["moe_layer", "device"],
    reference: &["cuda", "cpu", "monte_carlo", "closed_form"],
    headline: &["drop_fraction", "expert_load_max", "step_time"],
    backends,
    describe: |w| format!("{} x {} on {}", w.ep_ranks, w.dtype.as_str(), w.cluster.gpu.name),
    profiled: |o, w| match moe_profile(o) {
        Ok(Some(p)) if p.params.device == w.cluster.gpu.name => {
            vec![("closed_form", "moe_layer".into()), ("monte_carlo", "moe_layer".into())]
        }
        _ => vec![],
    },
    calibration: Some(&MoeCalibration),
};

/// A single-device fp32 layer on this CPU for calibration (`d_model` 128).
pub fn cpu_layer(tokens: u64, d_ff: u64, experts: u64, routing: Routing, cf: f64, router: RouterModel) -> MoeLayer {
    MoeLayer {
        tokens,
        d_model: 128,
        d_ff,
        experts,
        routing,
        capacity_factor: cf,
        balance_loss: None,
        ep_ranks: 1,
        dtype: Dtype::Fp32,
        cluster: trainlab_datasets::gpus::cluster("cpu", 1, 1)
            .unwrap_or_else(|_| unreachable!("the cpu preset is part of the datasets crate")),
        router,
        pad_to_capacity: false,
    }
}

/// Fit set (uniform routers) and held-out set (Zipf / Dirichlet skew, prototypes, other k and capacity factors).
pub fn calibration_sets() -> (Vec<MoeLayer>, Vec<MoeLayer>) {
    let u = RouterModel::Uniform;
    let fit = vec![
        cpu_layer(2048, 128, 8, Routing::TopK(1), 1.0, u.clone()),
        cpu_layer(2048, 256, 8, Routing::TopK(2), 2.0, u.clone()),
        cpu_layer(2048, 128, 32, Routing::TopK(2), 1.0, u.clone()),
        cpu_layer(2048, 256, 32, Routing::TopK(1), 2.0, u.clone()),
        cpu_layer(1024, 256, 16, Routing::TopK(4), 1.0, u.clone()),
        cpu_layer(4096, 128, 16, Routing::TopK(1), 1.25, u.clone()),
        // Large dispatches (8,192 routed slots) and small ones, so that no held-out layer lies outside the fitted
        // range of slots, rows and widths (the backward's cost per slot grows once activations leave the cache).
        cpu_layer(4096, 256, 8, Routing::TopK(2), 1.25, u.clone()),
        cpu_layer(2048, 192, 32, Routing::TopK(4), 1.5, u.clone()),
        cpu_layer(4096, 128, 32, Routing::TopK(2), 1.0, u.clone()),
        cpu_layer(1024, 192, 8, Routing::TopK(1), 1.0, u.clone()),
    ];
    let held = vec![
        cpu_layer(2048, 256, 16, Routing::TopK(2), 1.25, RouterModel::Zipf { s: 1.0 }),
        cpu_layer(2048, 128, 16, Routing::Prototypes(2), 1.0, RouterModel::Zipf { s: 0.5 }),
        cpu_layer(
            2048,
            256,
            32,
            Routing::Prototypes(4),
            1.5,
            RouterModel::Dirichlet { alpha: 0.5 },
        ),
        cpu_layer(2048, 128, 8, Routing::TopK(1), 2.0, RouterModel::Zipf { s: 1.2 }),
        cpu_layer(
            1024,
            256,
            32,
            Routing::TopK(4),
            1.0,
            RouterModel::Dirichlet { alpha: 1.0 },
        ),
        cpu_layer(4096, 192, 16, Routing::TopK(2), 1.0, u),
    ];
    (fit, held)
}

/// Real CPU runs of `l` (`draws` routing draws, `repeats` timed repeats each) as the calibration consumes them.
pub fn measured(l: &MoeLayer, i: usize, draws: usize, repeats: usize, seed: Seed) -> Result<Vec<MeasuredStep>, Error> {
    // A Dirichlet router draws a new popularity vector every step, so the load (and the drop) varies much more
    // from draw to draw than under a uniform or Zipf router (whose totals do not depend on which expert is
    // popular): its measured mean needs three times the draws to estimate the expected step time.
    let draws = if matches!(l.router, RouterModel::Dirichlet { .. }) {
        3 * draws
    } else {
        draws
    };
    // Single-threaded GEMMs: on a shared machine one core is far more repeatable than all of them.
    let m = measure(l, draws, repeats, 1, seed.index(i as u64))?;
    Ok(m.loads
        .iter()
        .zip(&m.phases)
        .zip(&m.step_s)
        .map(|((loads, p), &step)| MeasuredStep {
            loads: loads.clone(),
            router_s: p.router,
            dispatch_s: p.dispatch,
            combine_s: p.combine,
            experts_s: p.experts,
            backward_s: p.backward,
            step_s: step,
        })
        .collect())
}

/// Calibrates the simulator on this CPU and checks it on held-out configurations: 4 routing draws per layer, each
/// timed twice, in 3 interleaved passes over all layers (`quick`: 1 draw, 2 repeats, 1 pass).
pub fn calibrate_cpu(
    quick: bool,
    seed: Seed,
    progress: &dyn Fn(String),
    cancel: &std::sync::atomic::AtomicBool,
    keep: &dyn Fn(Vec<Record>),
) -> Result<trainlab_sim::moe::Calibration, Error> {
    let (fit, held) = calibration_sets();
    let (draws, repeats, rounds) = if quick { (1, 2, 1) } else { (4, 2, 3) };
    let total = fit.len() + held.len();
    let mut done = 0usize;
    calibrate(&fit, &held, 200, seed, rounds, |l, i| {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        done += 1;
        progress(format!(
            "layer {} of {} ({} passes)",
            (done - 1) % total + 1,
            total,
            rounds
        ));
        let m = measured(l, i, draws, repeats, seed)?;
        let steps: Vec<f64> = m.iter().map(|x| x.step_s).collect();
        keep(vec![crate::calibration::measured_record(
            "calibrate-moe_layer-cpu",
            MoeLayer::KIND,
            &format!(
                "{} d{} f{} [pass {}]",
                l.label(),
                l.d_model,
                l.d_ff,
                (done - 1) / total + 1
            ),
            Device::Cpu,
            seed,
            &Metric::new("step_time", Unit::Seconds, trainlab_core::stats::median(&steps)),
        )]);
        Ok(m)
    })
}

/// Calibration of the MoE cost model against real CPU layers.
pub struct MoeCalibration;

impl Calibration for MoeCalibration {
    fn profile_kind(&self) -> &'static str {
        "moe_layer"
    }
    fn devices(&self) -> &'static [Device] {
        &[Device::Cpu]
    }
    fn run(&self, req: &CalRequest<'_>) -> Result<Calibrated, Error> {
        if req.device != Device::Cpu {
            return Err(Error::invalid(
                "--backend",
                req.device.as_str(),
                "the MoE calibration measures CPU layers only (the CUDA layer has not run on a GPU yet)",
                "use --backend cpu",
            ));
        }
        let seed = req.seed;
        let cal = calibrate_cpu(req.quick, seed, req.progress, req.cancel, req.keep)?;
        let (fit, held) = calibration_sets();
        let label = |l: &MoeLayer| format!("{} d{} f{}", l.label(), l.d_model, l.d_ff);
        // The uncalibrated prediction of each held-out layer: the simulator with the `cpu` preset's datasheet-style
        // cost model.
        let mut held_out = Vec::new();
        for (l, row) in held.iter().zip(&cal.held_out) {
            let uncal = aggregate(
                l,
                &MoeSim {
                    replications: 200,
                    cost: None,
                }
                .replicate(l, seed)?,
            );
            held_out.push(HeldOut {
                case: label(l),
                metric: "step_time".into(),
                measured: row.measured_step_s,
                calibrated: row.simulated_step_s,
                uncalibrated: Some(uncal.step_s.value),
            });
        }
        let study = "calibrate-moe_layer-cpu";
        let mut records = Vec::new();
        for (set, rows) in [("fit", &cal.fitted), ("held-out", &cal.held_out)] {
            for r in rows {
                let case = format!("{} [{set}]", r.label);
                let rec = |backend: &str, f: Fidelity, name: &str, unit: Unit, v: f64| {
                    Record::from_metric(
                        study,
                        MoeLayer::KIND,
                        &case,
                        backend,
                        f,
                        seed.0,
                        &Metric::new(name, unit, v),
                    )
                };
                records.push(rec(
                    "cpu",
                    Fidelity::Measured,
                    "step_time",
                    Unit::Seconds,
                    r.measured_step_s,
                ));
                records.push(rec(
                    "monte_carlo-calibrated",
                    Fidelity::Simulated,
                    "step_time",
                    Unit::Seconds,
                    r.simulated_step_s,
                ));
                records.push(rec(
                    "cost-model-replayed",
                    Fidelity::Analytical,
                    "step_time",
                    Unit::Seconds,
                    r.replayed_step_s,
                ));
                records.push(rec(
                    "cpu",
                    Fidelity::Measured,
                    "drop_fraction",
                    Unit::Ratio,
                    r.measured_drop,
                ));
                records.push(rec(
                    "monte_carlo-calibrated",
                    Fidelity::Simulated,
                    "drop_fraction",
                    Unit::Ratio,
                    r.simulated_drop,
                ));
            }
        }
        let device = trainlab_executors::cpu::cpu_device_description();
        let measured: Vec<String> = fit.iter().chain(&held).map(label).collect();
        let prov = provenance(device.clone(), measured);
        let notes = vec![
            format!("device: {device}"),
            cal.markdown(),
            format!(
                "held-out step time: median |error| {:.1}%, worst {:.1}% over {} layers",
                100.0 * cal.held_out_median_abs_error(),
                100.0 * cal.held_out_max_abs_error(),
                cal.held_out.len()
            ),
        ];
        let json = serde_json::json!({
            "device": device, "cost": cal.cost,
            "held_out_median_abs_error": cal.held_out_median_abs_error(),
            "held_out_max_abs_error": cal.held_out_max_abs_error(),
        });
        let params = MoeProfile {
            device: "cpu".into(),
            cost: cal.cost.clone(),
        };
        Ok(Calibrated {
            profile_kind: "moe_layer",
            profile_toml: envelope("moe_layer", prov, params, held_out.clone())?,
            held_out,
            records,
            notes,
            json,
        })
    }
}
