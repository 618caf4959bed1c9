//! The `rlhf_iteration` kind: one RLHF iteration (PPO, DPO or rejection sampling) on a GPU cluster, colocated or
//! disaggregated: where the time goes (memory-bound generation with the long tail of response lengths, experience
//! making, training through the dense step model, weight sync), memory per role and GPU-hours. Answered by the
//! closed-form phase model (`analytical`); it reads a GPU `device` profile like `dense_training`.
//!
//! The `simulated` backend (`trainlab_sim::rlhf`) samples response lengths, refills rollout slots as sequences end
//! (continuous batching) and pipelines disaggregated iterations when `off_policy` is set; it answers the same metrics
//! so `trainlab compare` shows both. The efficiencies fitted to published rows live in `tests/rlhf_published.rs`.
//!
//! The measured backend `cpu` (`trainlab_executors::rlhf::RlhfCpu`) runs real iterations of the tiny trainer on this
//! CPU, the n-gram policy standing in for the transformer. Honest answers: it answers another workload, the one
//! asked scaled down by [`on_cpu`] (one `cpu` device, colocated, actor width at most [`CPU_MAX_HIDDEN`], vocabulary
//! at most [`CPU_MAX_VOCAB`], at most [`CPU_MAX_PROMPTS`] prompts, a fixed response of at most
//! [`CPU_MAX_RESPONSE`] tokens), filed in its own group where the closed form and the simulator answer it too.
//!
//! Calibration (`trainlab calibrate --workload rlhf_iteration`, device `cpu`): PPO iterations of the tiny trainer
//! timed per phase on fit sizes, the CPU phase model `trainlab_models::rlhf_tiny` fitted (two constants a phase)
//! and checked on held-out sizes. With that profile (`--profile`), `analytical` answers workloads on the `cpu`
//! device with the fitted phase model instead of the GPU closed form.
use super::dense::gpu_profile;
use super::{Answering, KindDef, Opts};
use crate::calibration::{CalRequest, Calibrated, Calibration, Device, envelope, provenance};
use trainlab_core::workloads::dense::TransformerSpec;
use trainlab_core::workloads::rlhf::{Placement, ResponseLength, RlhfIteration, RlhfOutcome};
use trainlab_core::{Backend, Dtype, Error, Fidelity, HeldOut, Metric, Profile, Record, RunCtx, Unit, Workload};
use trainlab_executors::rlhf::{self as exec, CPU_CONTEXT, CPU_EMBED, RlhfCpu, TinyConfig};
use trainlab_models::rlhf_tiny::{self, CpuPhaseProfile, TinySize};

/// Largest actor width the CPU run uses (the n-gram policy's hidden width).
pub const CPU_MAX_HIDDEN: u64 = 512;
/// Largest vocabulary the CPU run uses.
pub const CPU_MAX_VOCAB: u64 = 64;
/// Most prompts (DPO: pairs) of one CPU iteration.
pub const CPU_MAX_PROMPTS: u64 = 64;
/// Longest (fixed) response of the CPU run.
pub const CPU_MAX_RESPONSE: u64 = 32;
/// Longest prompt of the CPU run.
pub const CPU_MAX_PROMPT_LEN: u64 = 64;

fn cpu_cluster() -> trainlab_core::ClusterSpec {
    trainlab_datasets::gpus::cluster("cpu", 1, 1).unwrap_or_else(|_| unreachable!("the cpu preset exists"))
}

/// The n-gram stand-in of a model: one layer, one head, the width and vocabulary capped.
fn scaled_model(m: &TransformerSpec) -> TransformerSpec {
    let hidden = m.hidden.min(CPU_MAX_HIDDEN);
    TransformerSpec {
        name: format!("{}-ngram-cpu", m.name.trim_end_matches("-ngram-cpu")),
        layers: 1,
        hidden,
        heads: 1,
        kv_heads: None,
        ffn_hidden: hidden,
        gated_ffn: false,
        vocab: m.vocab.clamp(2, CPU_MAX_VOCAB),
        seq_len: m.seq_len,
    }
}

/// The workload the CPU run really answers for `w` (`None`: `w` itself).
pub fn on_cpu(w: &RlhfIteration) -> Option<RlhfIteration> {
    let mut x = w.clone();
    x.cluster = cpu_cluster();
    x.actor = scaled_model(&w.actor);
    x.reference = w.reference.as_ref().map(scaled_model);
    x.critic = w.critic.as_ref().map(scaled_model);
    x.reward = w.reward.as_ref().map(scaled_model);
    x.prompts = w.prompts.min(CPU_MAX_PROMPTS);
    x.prompt_len = w.prompt_len.clamp(CPU_CONTEXT as u64, CPU_MAX_PROMPT_LEN);
    x.response = ResponseLength::Fixed(w.response.max().min(CPU_MAX_RESPONSE));
    x.samples_per_prompt = w.samples_per_prompt.min(8);
    x.ppo_epochs = w.ppo_epochs.min(4);
    x.placement = Placement::Colocated;
    x.off_policy = false;
    x.generation_batch = x.prompts * x.samples_per_prompt;
    x.rollout_tp = 1;
    x.dtype = Dtype::Fp32;
    (x != *w).then_some(x)
}

fn cpu_profile(o: &Opts) -> Result<Option<Profile<CpuPhaseProfile>>, Error> {
    let p = o.profiles.get_one::<CpuPhaseProfile>("rlhf_iteration", |_| true)?;
    if let Some(p) = &p {
        p.params.validate("profile.params")?;
    }
    Ok(p)
}

/// The phase model's size of a workload on the `cpu` device (the n-gram policy's context and width from the
/// profile).
fn tiny_size_of(w: &RlhfIteration, p: &CpuPhaseProfile) -> TinySize {
    TinySize {
        batch: w.prompts as f64,
        response_len: w.response.max() as f64,
        context: p.context,
        embed: p.embed,
        hidden: w.actor.hidden as f64,
        vocab: w.actor.vocab as f64,
        ppo_epochs: w.ppo_epochs as f64,
    }
}

/// `analytical`: the GPU closed form, or, for workloads on the `cpu` device with an `rlhf_iteration` profile, the
/// CPU phase model fitted by the calibration.
struct Analytical {
    gpu: trainlab_models::rlhf::RlhfAnalytical,
    cpu: Option<CpuPhaseProfile>,
}

impl Backend<RlhfIteration> for Analytical {
    fn name(&self) -> &str {
        "analytical"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, w: &RlhfIteration, ctx: &mut RunCtx) -> Result<RlhfOutcome, Error> {
        match &self.cpu {
            Some(p) if w.cluster.gpu.name == p.device => {
                let t = p.predict(w.algorithm, &tiny_size_of(w, p), w.samples_per_prompt as f64);
                Ok(trainlab_models::rlhf_tiny::outcome(
                    w,
                    t,
                    w.prompt_len + w.response.max(),
                ))
            }
            _ => self.gpu.run(w, ctx),
        }
    }
}

fn backends(o: &Opts) -> Result<super::Backends<RlhfIteration>, Error> {
    let profile = gpu_profile(o)?;
    let des = trainlab_sim::rlhf::RlhfDes {
        profile: profile.clone(),
        ..Default::default()
    };
    let des = if o.quick {
        trainlab_sim::rlhf::RlhfDes {
            iterations: 4,
            replications: 2,
            ..des
        }
    } else {
        des
    };
    Ok(vec![
        Box::new(Analytical {
            gpu: trainlab_models::rlhf::RlhfAnalytical {
                profile,
                ..Default::default()
            },
            cpu: cpu_profile(o)?.map(|p| p.params),
        }),
        Box::new(des),
        Box::new(Answering {
            inner: Box::new(if o.quick {
                RlhfCpu {
                    warmup: 0,
                    iterations: 1,
                }
            } else {
                RlhfCpu::default()
            }),
            map: on_cpu,
        }),
    ])
}

/// The `rlhf_iteration` kind.
pub static KIND: KindDef<RlhfIteration> = KindDef {
    about: "one RLHF iteration (PPO, DPO, rejection sampling) on a GPU cluster: time per phase, generation share, \
            memory per role, GPU-hours; colocated or disaggregated",
    reads: &["device", "rlhf_iteration"],
    reference: &["cpu", "analytical"],
    headline: &["iteration_time", "generation_share", "gpu_hours_per_iteration"],
    backends,
    describe: |w| {
        let p = match w.placement {
            Placement::Colocated => "colocated".to_string(),
            Placement::Disaggregated { .. } if w.off_policy => "disaggregated, off-policy".to_string(),
            Placement::Disaggregated { .. } => "disaggregated".to_string(),
        };
        if w.cluster.gpu.name == "cpu" {
            return format!(
                "{} on this CPU, the n-gram policy standing in for the transformer (hidden {}, vocab {}, {} prompts, \
                 {} response tokens)",
                w.algorithm.as_str(),
                w.actor.hidden,
                w.actor.vocab,
                w.prompts,
                w.response.max()
            );
        }
        format!("{} on {} GPUs, {p}", w.algorithm.as_str(), w.cluster.gpus())
    },
    profiled: |o, w| {
        let mut v = match gpu_profile(o) {
            Ok(Some(_)) => vec![("analytical", "device".into()), ("simulated", "device".into())],
            _ => vec![],
        };
        if let Ok(Some(p)) = cpu_profile(o)
            && p.params.device == w.cluster.gpu.name
        {
            v.retain(|(b, _)| *b != "analytical");
            v.push(("analytical", "rlhf_iteration".into()));
        }
        v
    },
    calibration: Some(&RlhfCalibration),
};

/// One calibration size: prompts B and actor width H (fit or held out).
struct Case {
    cfg: TinyConfig,
    held_out: bool,
}

impl Case {
    fn label(&self) -> String {
        format!("ppo B={} H={}", self.cfg.batch, self.cfg.hidden)
    }
}

/// The calibration sizes: fit widths 32, 128, 512 and held-out 64, 256 at B = 16 and 64 (as the committed
/// `datasets/calibration/rlhf-cpu/phases.csv`); `quick`: widths 16, 64 (fit) and 32 (held out) at B = 8 and 16.
fn cases(quick: bool) -> Vec<Case> {
    let (widths, held, batches): (&[usize], &[usize], &[usize]) = if quick {
        (&[16, 32, 64], &[32], &[8, 16])
    } else {
        (&[32, 64, 128, 256, 512], &[64, 256], &[16, 64])
    };
    let mut v = Vec::new();
    for &hidden in widths {
        for &batch in batches {
            v.push(Case {
                cfg: TinyConfig {
                    hidden,
                    batch,
                    context: CPU_CONTEXT,
                    embed: CPU_EMBED,
                    ..TinyConfig::default()
                },
                held_out: held.contains(&hidden),
            });
        }
    }
    v
}

/// Calibration of the CPU phase model of the tiny RLHF iteration against real PPO iterations on this CPU.
pub struct RlhfCalibration;

impl Calibration for RlhfCalibration {
    fn profile_kind(&self) -> &'static str {
        "rlhf_iteration"
    }
    fn devices(&self) -> &'static [Device] {
        &[Device::Cpu]
    }
    fn run(&self, req: &CalRequest<'_>) -> Result<Calibrated, Error> {
        debug_assert_eq!(req.device, Device::Cpu);
        let seed = req.seed;
        let cases = cases(req.quick);
        let (warmup, iterations) = if req.quick { (1, 3) } else { (3, 15) };
        let study = "calibrate-rlhf_iteration-cpu";
        let mut measured = Vec::with_capacity(cases.len());
        for (i, case) in cases.iter().enumerate() {
            (req.progress)(format!("{} ({} of {})", case.label(), i + 1, cases.len()));
            let t = exec::measure_ppo_phases(&case.cfg, warmup, iterations, seed.index(i as u64), req.cancel)?;
            let secs = [t[0].median_s(), t[1].median_s(), t[2].median_s()];
            let set = if case.held_out { "held-out" } else { "fit" };
            let label = format!("{} [{set}]", case.label());
            (req.keep)(
                (0..3)
                    .map(|ph| {
                        crate::calibration::measured_record(
                            study,
                            RlhfIteration::KIND,
                            &label,
                            Device::Cpu,
                            seed,
                            &Metric::new(format!("time.{}", rlhf_tiny::PHASES[ph]), Unit::Seconds, secs[ph]),
                        )
                    })
                    .collect(),
            );
            measured.push(secs);
        }
        let fit_pts: Vec<(TinySize, [f64; 3])> = cases
            .iter()
            .zip(&measured)
            .filter(|(c, _)| !c.held_out)
            .map(|(c, m)| (exec::tiny_size(&c.cfg), *m))
            .collect();
        let cost = rlhf_tiny::fit(&fit_pts)?;
        let held: Vec<(String, TinySize, [f64; 3])> = cases
            .iter()
            .zip(&measured)
            .filter(|(c, _)| c.held_out)
            .map(|(c, m)| (c.label(), exec::tiny_size(&c.cfg), *m))
            .collect();
        let held_out: Vec<HeldOut> = rlhf_tiny::held_out(&cost, &held);
        let mut records = Vec::new();
        for (case, m) in cases.iter().zip(&measured) {
            let set = if case.held_out { "held-out" } else { "fit" };
            let label = format!("{} [{set}]", case.label());
            let p = cost.predict(&exec::tiny_size(&case.cfg));
            for ph in 0..3 {
                let rec = |backend: &str, f: Fidelity, v: f64| {
                    Record::from_metric(
                        study,
                        RlhfIteration::KIND,
                        &label,
                        backend,
                        f,
                        seed.0,
                        &Metric::new(format!("time.{}", rlhf_tiny::PHASES[ph]), Unit::Seconds, v),
                    )
                };
                records.push(rec("cpu", Fidelity::Measured, m[ph]));
                records.push(rec("analytical-calibrated", Fidelity::Analytical, p[ph]));
            }
        }
        let mut errs: Vec<f64> = held_out.iter().map(|h| h.calibrated_error().abs()).collect();
        errs.sort_by(f64::total_cmp);
        let median = if errs.is_empty() {
            f64::NAN
        } else if errs.len() % 2 == 1 {
            errs[errs.len() / 2]
        } else {
            (errs[errs.len() / 2 - 1] + errs[errs.len() / 2]) / 2.0
        };
        let worst = errs.last().copied().unwrap_or(f64::NAN);
        let device = trainlab_executors::cpu::cpu_device_description();
        let prov = provenance(device.clone(), cases.iter().map(Case::label).collect());
        let params = CpuPhaseProfile {
            device: "cpu".into(),
            context: CPU_CONTEXT as f64,
            embed: CPU_EMBED as f64,
            cost,
        };
        let c = &params.cost;
        let notes = vec![
            format!("device: {device}"),
            "policy: the n-gram LM of executors/src/lm.rs standing in for the transformer (f64, no attention, no KV \
             cache); PPO iterations, medians per phase"
                .to_string(),
            format!(
                "fitted: generation {:.2} GFLOP/s + {:.1} us/pass; experience {:.2} GFLOP/s + {:.1} us/pass; training \
                 {:.2} GFLOP/s + {:.1} us/pass",
                gflops(c.s_per_flop[0]),
                1e6 * c.overhead_s[0],
                gflops(c.s_per_flop[1]),
                1e6 * c.overhead_s[1],
                gflops(c.s_per_flop[2]),
                1e6 * c.overhead_s[2],
            ),
            format!(
                "held-out: median |error| {:.1}%, worst {:.1}% over {} phase times",
                100.0 * median,
                100.0 * worst,
                errs.len()
            ),
        ];
        let json = serde_json::json!({
            "device": device, "cost": params,
            "held_out_median_abs_error": median,
            "held_out_max_abs_error": worst,
        });
        Ok(Calibrated {
            profile_kind: "rlhf_iteration",
            profile_toml: envelope("rlhf_iteration", prov, params, held_out.clone())?,
            held_out,
            records,
            notes,
            json,
        })
    }
}

fn gflops(s_per_flop: f64) -> f64 {
    if s_per_flop > 0.0 {
        1e-9 / s_per_flop
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_run_answers_a_bounded_scaled_workload() {
        for name in [
            "rlhf-70b-colocated",
            "rlhf-70b-disaggregated",
            "rlhf-70b-async",
            "rlhf-openrlhf-13b",
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("scenarios/{name}.toml"));
            let w: RlhfIteration = trainlab_datasets::scenario::load_file(&path)
                .and_then(|s| s.workload())
                .expect("shipped scenario");
            let x = on_cpu(&w).expect("a 70B job is scaled");
            x.validate().expect("the scaled workload is valid");
            assert_eq!(on_cpu(&x), None, "{name}: a scaled workload is answered as it is");
            assert!(x.actor.hidden <= CPU_MAX_HIDDEN && x.actor.vocab <= CPU_MAX_VOCAB);
            assert!(x.prompts <= CPU_MAX_PROMPTS && x.response.max() <= CPU_MAX_RESPONSE);
            assert_eq!(x.cluster.gpus(), 1);
            assert_eq!(x.algorithm, w.algorithm);
            let cfg = exec::tiny_config_of(&x).expect("maps to the tiny trainer");
            assert_eq!((cfg.hidden as u64, cfg.batch as u64), (x.actor.hidden, x.prompts));
            assert_eq!(cfg.response_len as u64, x.response.max());
        }
    }
}
