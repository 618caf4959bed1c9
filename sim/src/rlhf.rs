//! RLHF iterations as a discrete-event simulation on [`Engine`]: the `simulated` backend of the `rlhf_iteration`
//! kind (notes `shared/design/notes/rlhf-victor.md` §3.1: long-tailed response lengths leave decode slots idle;
//! disaggregated roles can overlap generation with training).
//!
//! Model. Every iteration samples each generated sequence's response length (fixed, or the truncated lognormal of
//! the workload rounded to whole tokens) from the scenario seed. The `S` sequences are dealt round-robin to the
//! `E` rollout engines; an engine holds `slots` sequences at once (the closed form's balanced
//! `generation_batch`, [`Rollout::slots`]). With **continuous batching** (the default) a slot frees when its
//! sequence ends and the next prompt enters at once (its prefill charged to the engine, [`Rollout::prefill_s`]);
//! with static batching a new wave enters only when the whole previous wave has ended. A decode step at `n` live
//! sequences holding `C` cached tokens costs `max(memory, compute) + comm` with memory the weights plus `C` KV
//! tokens over HBM, compute `2·N·n/tp` FLOPs at limiting dimension `n` and comm the tensor-parallel all-reduces
//! ([`Rollout::decode_memory_s`], [`Rollout::decode_compute_s`], [`Rollout::decode_comm_s`], the closed form's
//! pieces). A token being generated counts half (`C = Σ (P + generated + ½)`), so with fixed lengths the steps of a
//! wave sum to the closed form's `R·weights + B·(P·R + R²/2)·kv` exactly. The engine is event-driven per sequence
//! end, not per token: between two ends `n` is constant and the memory time grows linearly, so the `k` steps in
//! between are summed in closed form (the steps below the compute floor, then the rest).
//!
//! Experience making, training and weight sync take the closed form's times ([`RlhfAnalytical::model`]: the dense
//! step model's layout search for training). Colocated, or on-policy: generation, experience, training and sync run
//! in series, and generation of iteration `i + 1` starts when the sync of `i` ends. Off-policy (`off_policy = true`,
//! disaggregated only): generation of `j` starts when generation of `j − 1` has ended and the weights of `j − 2`
//! have been synced; experience of `i` starts when its rollouts exist and the trainers have finished (and synced)
//! `i − 1`; the sync of `i` waits for the rollout engines to finish `i + 1`. In steady state that is the closed form's
//! `max(G + S, E + T + S)`.
//!
//! Outcome: the mean over replications of the iteration period (`(end of last sync − end of first sync)/(N − 1)`,
//! the first iteration being the pipeline's fill), its 95% interval over replications, the generation span (the
//! slowest engine; its prefill part as `prefill_s`), the closed form's other phases, `overlap_s` = phases in series
//! less the period, and the mean slot occupancy during decode. Tested: with fixed lengths the generation time equals
//! the closed form's (every step memory-bound, or every step compute-bound; otherwise the per-step roofline is
//! slower than the closed form's roofline over the wave), static waves over sampled lengths come within a few percent
//! of the closed form's integral, continuous batching beats them on a long tail, on-policy periods are the sum of the
//! phases and a trainer-bound off-policy period is the trainer chain. Event times are integer nanoseconds on the
//! engine; durations are summed in `f64` seconds (carried in the events) so the comparisons above are exact.
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::engine::Engine;
use rand::RngExt;
use rand_distr::{Distribution, LogNormal};
use trainlab_core::seed::Rng;
use trainlab_core::stats::Summary;
use trainlab_core::workloads::rlhf::{ResponseLength, RlhfIteration, RlhfOutcome};
use trainlab_core::{Backend, DeviceProfile, Error, Fidelity, RunCtx, Seed, SimTime};
use trainlab_models::rlhf::{PhaseEfficiency, RlhfAnalytical, Rollout};

/// Simulated sequences per run beyond which replications, then iterations, are cut (1,000 iterations of 1,024
/// prompts fit; a batch of millions of prompts runs 2 iterations once).
const SEQUENCE_BUDGET: u64 = 4_000_000;

/// The RLHF iteration simulator.
#[derive(Debug, Clone)]
pub struct RlhfDes {
    /// Device parameters; `None` uses the datasheet profile of the cluster's GPU.
    pub profile: Option<DeviceProfile>,
    /// Per-phase efficiencies (as the closed form's).
    pub efficiency: PhaseEfficiency,
    /// Iterations per replication.
    pub iterations: u64,
    /// Monte Carlo replications.
    pub replications: u64,
    /// Continuous batching (`false`: static waves, as the closed form).
    pub continuous: bool,
}

impl Default for RlhfDes {
    fn default() -> Self {
        RlhfDes {
            profile: None,
            efficiency: PhaseEfficiency::default(),
            iterations: 16,
            replications: 8,
            continuous: true,
        }
    }
}

/// What one replication measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replication {
    /// Iteration period, seconds.
    pub period_s: f64,
    /// Mean generation span over the iterations after the first, seconds.
    pub generation_s: f64,
    /// Mean prefill time of the slowest engine, seconds.
    pub prefill_s: f64,
    /// Mean slot occupancy during decode.
    pub occupancy: f64,
    /// Mean tokens (prompt and response) per iteration.
    pub tokens: f64,
    /// Events delivered.
    pub events: u64,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    /// Engine `e` reached the end of its next sequence (or the start of its first).
    Engine { e: u32 },
    /// The experience of iteration `i` ended at `t`.
    Experience { i: u32, t: f64 },
    /// The training of `i` ended at `t`.
    Training { i: u32, t: f64 },
    /// The weight sync of `i` ended at `t`.
    Sync { i: u32, t: f64 },
}

/// One rollout engine's state during a generation.
#[derive(Default)]
struct EngineState {
    lens: Vec<u64>,
    next: usize,
    live: BinaryHeap<Reverse<(u64, u64)>>,
    n: u64,
    sum_start: u64,
    step: u64,
    t: f64,
    prefill: f64,
    slot_steps: u64,
    steps: u64,
}

/// Seconds of `k` decode steps at `n` live sequences starting with `c` cached tokens (each step adds `n`).
fn segment(ro: &Rollout, n: u64, c: f64, k: u64) -> f64 {
    let (nf, kf) = (n as f64, k as f64);
    let a = ro.decode_memory_s(1.0, c);
    let slope = ro.decode_memory_s(0.0, nf);
    // An eager engine's launch floor bounds a step from below like its compute (`Rollout::step_floor_s`, 0 otherwise).
    let comp = ro.decode_compute_s(nf, nf).max(ro.step_floor_s());
    // Steps j < j* are compute-bound (a + slope·j < comp).
    let js = if a >= comp {
        0.0
    } else if slope <= 0.0 {
        kf
    } else {
        ((comp - a) / slope).ceil().min(kf)
    };
    js * comp + (kf - js) * a + slope * (kf * (kf - 1.0) - js * (js - 1.0)) / 2.0 + kf * ro.decode_comm_s(nf)
}

/// Samples one response length.
fn sample_len(r: &ResponseLength, dist: Option<&LogNormal<f64>>, rng: &mut Rng) -> u64 {
    match (r, dist) {
        (&ResponseLength::Lognormal { max, .. }, Some(d)) => (d.sample(rng).round() as u64).clamp(1, max),
        (ResponseLength::Histogram { lengths, weights }, _) => {
            let total: f64 = weights.iter().sum();
            let mut u = rng.random::<f64>() * total;
            for (l, w) in lengths.iter().zip(weights) {
                if u < *w {
                    return *l;
                }
                u -= w;
            }
            // Rounding left u just past the last bin with mass.
            lengths
                .iter()
                .zip(weights)
                .rev()
                .find(|(_, w)| **w > 0.0)
                .map_or(r.max(), |(l, _)| *l)
        }
        _ => r.max(),
    }
}

/// Simulates `iterations` iterations of `w` with the rollout `ro` and the closed form's phases `cf`.
pub fn simulate(
    w: &RlhfIteration,
    ro: &Rollout,
    cf: &RlhfOutcome,
    iterations: u64,
    continuous: bool,
    seed: Seed,
    ctx: &RunCtx,
) -> Result<Replication, Error> {
    let n_it = iterations.max(1) as usize;
    let engines = ro.engines as usize;
    let seqs = w.generated_sequences() as usize;
    let p = ro.prompt_len + 0.5;
    let dist = match w.response {
        ResponseLength::Lognormal { mean, sigma, .. } => Some(
            LogNormal::new(mean.ln() - sigma * sigma / 2.0, sigma)
                .map_err(|e| Error::invalid("workload.response.lognormal", sigma, e.to_string(), "check sigma"))?,
        ),
        ResponseLength::Fixed(_) | ResponseLength::Histogram { .. } => None,
    };
    let mut rng = seed.derive("rlhf-lengths").rng();
    let (exp_s, train_s, sync_s) = (cf.experience_s, cf.training_s, cf.sync_s);
    let ns = |t: f64| SimTime::from_secs_f64(t);

    let mut eng: Engine<Ev> = Engine::with_capacity(engines + 4);
    let mut st: Vec<EngineState> = (0..engines).map(|_| EngineState::default()).collect();
    let mut gen_done: Vec<Option<f64>> = vec![None; n_it];
    let mut sync_done: Vec<Option<f64>> = vec![None; n_it];
    let mut train_done: Vec<Option<f64>> = vec![None; n_it];
    let (mut next_gen, mut next_exp, mut next_sync) = (0usize, 0usize, 0usize);
    let (mut gen_running, mut trainer_busy) = (false, false);
    let (mut gen_start, mut engines_left) = (0.0f64, 0usize);
    let mut spans = Vec::with_capacity(n_it);
    let mut prefills = Vec::with_capacity(n_it);
    let (mut slot_steps, mut steps, mut tokens) = (0u64, 0u64, 0u64);
    let mut now = 0.0f64;
    let mut events = 0u64;

    loop {
        // Start whatever is ready at `now`.
        let mut changed = true;
        while changed {
            changed = false;
            let gen_ready = next_gen < n_it
                && !gen_running
                && (next_gen == 0
                    || if w.off_policy {
                        gen_done[next_gen - 1].is_some() && (next_gen < 2 || sync_done[next_gen - 2].is_some())
                    } else {
                        sync_done[next_gen - 1].is_some()
                    });
            if gen_ready {
                gen_running = true;
                gen_start = now;
                engines_left = engines;
                for (e, s) in st.iter_mut().enumerate() {
                    *s = EngineState {
                        lens: std::mem::take(&mut s.lens),
                        live: std::mem::take(&mut s.live),
                        ..EngineState::default()
                    };
                    s.lens.clear();
                    s.live.clear();
                    for _ in (e..seqs).step_by(engines) {
                        let l = sample_len(&w.response, dist.as_ref(), &mut rng);
                        tokens += l + w.prompt_len;
                        s.lens.push(l);
                    }
                    eng.schedule_at(ns(now), Ev::Engine { e: e as u32 });
                }
                changed = true;
            }
            if !trainer_busy
                && next_exp < n_it
                && gen_done[next_exp].is_some()
                && (next_exp == 0 || sync_done[next_exp - 1].is_some())
            {
                trainer_busy = true;
                let t = now + exp_s;
                eng.schedule_at(ns(t), Ev::Experience { i: next_exp as u32, t });
                next_exp += 1;
                changed = true;
            }
            if next_sync < n_it
                && train_done[next_sync].is_some()
                && !gen_running
                && (!w.off_policy || next_sync + 1 == n_it || gen_done[next_sync + 1].is_some())
            {
                let t = now + sync_s;
                eng.schedule_at(ns(t), Ev::Sync { i: next_sync as u32, t });
                next_sync += 1;
                // The rollout engines receive weights: no generation meanwhile.
                gen_running = true;
                changed = true;
            }
        }
        let Some((_, ev)) = eng.step() else { break };
        events += 1;
        if events.is_multiple_of(4096) && ctx.cancelled() {
            return Err(Error::Interrupted);
        }
        match ev {
            Ev::Experience { i, t } => {
                now = t;
                let t2 = t + train_s;
                eng.schedule_at(ns(t2), Ev::Training { i, t: t2 });
            }
            Ev::Training { i, t } => {
                now = t;
                train_done[i as usize] = Some(t);
            }
            Ev::Sync { i, t } => {
                now = t;
                sync_done[i as usize] = Some(t);
                trainer_busy = false;
                gen_running = false;
            }
            Ev::Engine { e } => {
                let s = &mut st[e as usize];
                // Sequences ending at this step leave.
                while let Some(&Reverse((end, start))) = s.live.peek() {
                    if end > s.step {
                        break;
                    }
                    s.live.pop();
                    s.n -= 1;
                    s.sum_start -= start;
                }
                // Admit new prompts.
                let room = if continuous || s.n == 0 { ro.slots - s.n } else { 0 };
                let k = room.min((s.lens.len() - s.next) as u64);
                if k > 0 {
                    for _ in 0..k {
                        let l = s.lens[s.next];
                        s.next += 1;
                        s.live.push(Reverse((s.step + l, s.step)));
                        s.n += 1;
                        s.sum_start += s.step;
                    }
                    let dt = ro.prefill_s(k as f64);
                    s.t += dt;
                    s.prefill += dt;
                }
                if s.n == 0 {
                    engines_left -= 1;
                    now = gen_start + s.t;
                    if engines_left == 0 {
                        // The generation ends with its slowest engine.
                        let (span, pre) = st
                            .iter()
                            .map(|s| (s.t, s.prefill))
                            .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
                        for s in &st {
                            slot_steps += s.slot_steps;
                            steps += s.steps * ro.slots;
                        }
                        spans.push(span);
                        prefills.push(pre);
                        now = gen_start + span;
                        gen_done[next_gen] = Some(now);
                        next_gen += 1;
                        gen_running = false;
                    }
                    continue;
                }
                let Some(&Reverse((end, _))) = s.live.peek() else {
                    unreachable!("n > 0")
                };
                let k = end - s.step;
                // Cached tokens: Σ (P + ½ + step − start).
                let c = s.n as f64 * (p + s.step as f64) - s.sum_start as f64;
                s.t += segment(ro, s.n, c, k);
                s.slot_steps += s.n * k;
                s.steps += k;
                s.step = end;
                eng.schedule_at(ns(gen_start + s.t), Ev::Engine { e });
            }
        }
    }
    Ok(finish(
        spans, prefills, &sync_done, slot_steps, steps, tokens, n_it, events,
    ))
}

#[allow(clippy::too_many_arguments)]
fn finish(
    spans: Vec<f64>,
    prefills: Vec<f64>,
    sync_done: &[Option<f64>],
    slot_steps: u64,
    steps: u64,
    tokens: u64,
    n_it: usize,
    events: u64,
) -> Replication {
    let last = sync_done[n_it - 1].unwrap_or(f64::NAN);
    let (period, from) = if n_it >= 2 {
        ((last - sync_done[0].unwrap_or(f64::NAN)) / (n_it - 1) as f64, 1)
    } else {
        (last, 0)
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Replication {
        period_s: period,
        generation_s: mean(&spans[from..]),
        prefill_s: mean(&prefills[from..]),
        occupancy: if steps > 0 {
            slot_steps as f64 / steps as f64
        } else {
            0.0
        },
        tokens: tokens as f64 / n_it as f64,
        events,
    }
}

impl RlhfDes {
    /// The closed form of `w` under this simulator's profile and efficiencies, and one [`Replication`] per seed
    /// index.
    pub fn replications(&self, w: &RlhfIteration, ctx: &RunCtx) -> Result<(RlhfOutcome, Vec<Replication>), Error> {
        let model = RlhfAnalytical {
            profile: self.profile.clone(),
            efficiency: self.efficiency,
            ..Default::default()
        };
        let (ro, cf) = model.model(w)?;
        let Some(ro) = ro else {
            // Nothing generated (DPO): no random part, one iteration is the closed form.
            return Ok((cf, Vec::new()));
        };
        // A work budget: about SEQUENCE_BUDGET simulated sequences per run (a few seconds), trading replications
        // first and then iterations (at least 2, so a period exists) for very large batches.
        let s = w.generated_sequences().max(1);
        let iterations = self.iterations.max(1).min((SEQUENCE_BUDGET / s).max(2));
        let replications = self
            .replications
            .max(1)
            .min((SEQUENCE_BUDGET / (s * iterations)).max(1));
        let base = ctx.seed.derive("rlhf-des");
        let reps = (0..replications)
            .map(|r| simulate(w, &ro, &cf, iterations, self.continuous, base.index(r), ctx))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((cf, reps))
    }
}

impl Backend<RlhfIteration> for RlhfDes {
    fn name(&self) -> &str {
        "simulated"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Simulated
    }
    fn run(&mut self, w: &RlhfIteration, ctx: &mut RunCtx) -> Result<RlhfOutcome, Error> {
        let (cf, reps) = self.replications(w, ctx)?;
        if reps.is_empty() {
            return Ok(cf);
        }
        let of = |f: fn(&Replication) -> f64| Summary::of(&reps.iter().map(f).collect::<Vec<_>>());
        let period = of(|r| r.period_s);
        let generation = of(|r| r.generation_s).mean;
        let prefill = of(|r| r.prefill_s).mean;
        let serial = generation + cf.experience_s + cf.training_s + cf.sync_s;
        Ok(RlhfOutcome {
            prefill_s: prefill,
            decode_s: generation - prefill,
            tokens: of(|r| r.tokens).mean,
            overlap_s: if w.off_policy {
                (serial - period.mean).max(0.0)
            } else {
                0.0
            },
            rollout_occupancy: of(|r| r.occupancy).mean,
            iteration_time_ci: (reps.len() > 1).then(|| period.ci95()),
            ..cf
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use trainlab_core::workloads::dense::TransformerSpec;
    use trainlab_core::workloads::rlhf::{Algorithm, Placement};
    use trainlab_core::{ClusterSpec, Dtype, GpuSpec, LinkSpec, Workload};
    use trainlab_models::hardware::{AlphaBetaNetwork, GemmLaw};

    fn model() -> TransformerSpec {
        TransformerSpec {
            name: "t".into(),
            layers: 2,
            hidden: 64,
            heads: 4,
            kv_heads: None,
            ffn_hidden: 256,
            gated_ffn: false,
            vocab: 100,
            seq_len: 128,
        }
    }

    fn iteration(batch: u64, response: ResponseLength, gpus: u32) -> RlhfIteration {
        let link = LinkSpec {
            bandwidth_bytes_per_s: 1e9,
            latency_s: 0.0,
        };
        RlhfIteration {
            algorithm: Algorithm::RejectionSampling,
            actor: model(),
            reference: None,
            critic: None,
            reward: Some(model()),
            prompts: 64,
            prompt_len: 10,
            response,
            samples_per_prompt: 1,
            ppo_epochs: 1,
            placement: Placement::Colocated,
            generation_batch: batch,
            rollout_tp: 1,
            off_policy: false,
            colocated_engine: Default::default(),
            dtype: Dtype::Bf16,
            cluster: ClusterSpec {
                gpu: GpuSpec {
                    name: "toy".into(),
                    memory_bytes: 1 << 40,
                    peak_flops: BTreeMap::from([(Dtype::Bf16, 1e12)]),
                    hbm_bandwidth_bytes_per_s: 1e9,
                    nvlink_bandwidth_bytes_per_s: 1e9,
                    tdp_watts: 1.0,
                    source: "test".into(),
                    sm: None,
                },
                gpus_per_node: gpus,
                nodes: 1,
                intra: link,
                inter: link,
            },
        }
    }

    /// Generation seconds of the closed form and of the simulator (static or continuous) under one law.
    fn both(w: &RlhfIteration, law: GemmLaw, continuous: bool) -> (f64, f64, f64) {
        w.validate().unwrap();
        let net = AlphaBetaNetwork::of(&w.cluster);
        let ro = Rollout::new(w, &law, &net, w.cluster.gpus(), 1.0).unwrap();
        let cf = RlhfAnalytical::closed_form_generation(w, &ro);
        let zero = RlhfOutcome {
            prefill_s: cf.0,
            decode_s: cf.1,
            experience_s: 0.0,
            training_s: 0.0,
            sync_s: 0.0,
            tokens: 0.0,
            gpus: 1,
            memory_per_gpu: vec![],
            overlap_s: 0.0,
            rollout_occupancy: 0.0,
            iteration_time_ci: None,
        };
        let r = simulate(w, &ro, &zero, 200, continuous, Seed(5), &RunCtx::new(Seed(5))).unwrap();
        (cf.0 + cf.1, r.generation_s, r.period_s)
    }

    #[test]
    fn fixed_lengths_reduce_to_the_closed_form() {
        let memory_bound = GemmLaw {
            rate_flops_per_s: 1e18,
            half_dim: 0.0,
            mem_bw_bytes_per_s: 1e9,
        };
        let compute_bound = GemmLaw {
            rate_flops_per_s: 1e9,
            half_dim: 0.0,
            mem_bw_bytes_per_s: 1e30,
        };
        for law in [memory_bound, compute_bound] {
            for (batch, gpus) in [(8, 1), (16, 1), (64, 1), (8, 4)] {
                let w = iteration(batch, ResponseLength::Fixed(100), gpus);
                for continuous in [false, true] {
                    let (cf, sim, period) = both(&w, law, continuous);
                    assert!(
                        (sim / cf - 1.0).abs() < 1e-9,
                        "batch {batch} gpus {gpus}: {sim} vs {cf}"
                    );
                    // On-policy with no other phase: the period is the generation.
                    assert!((period / cf - 1.0).abs() < 1e-9);
                }
            }
        }
    }

    #[test]
    fn continuous_batching_fills_the_tail() {
        let law = GemmLaw {
            rate_flops_per_s: 1e18,
            half_dim: 0.0,
            mem_bw_bytes_per_s: 1e9,
        };
        let w = iteration(
            8,
            ResponseLength::Lognormal {
                mean: 100.0,
                sigma: 1.0,
                max: 1000,
            },
            1,
        );
        let (cf, stat, _) = both(&w, law, false);
        let (_, cont, _) = both(&w, law, true);
        // The static simulation samples what the closed form integrates: within sampling noise of it.
        assert!((stat / cf - 1.0).abs() < 0.05, "static {stat} vs closed form {cf}");
        eprintln!("closed form {cf} static {stat} continuous {cont}");
        assert!(cont < 0.8 * stat, "continuous {cont} vs static {stat}");
    }
}
