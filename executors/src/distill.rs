//! Real knowledge distillation over several domains on this CPU: the measured backend of the `distillation` kind
//! (DDK, Liu et al. 2024).
//!
//! The corpus is [`Corpus::multi`]: one seeded Markov source per domain. Each domain's training data is a finite pool
//! of `tokens` examples drawn once from its source and reused cyclically once exhausted (DDK §2.2); its validation set
//! is `val_examples` further examples from the same source. The teacher (width `teacher_hidden`) trains on the uniform
//! mixture; the student (width `student_hidden`) trains on `CE + γ·τ²·KL` against the teacher's soft targets
//! ([`Model::loss_kd`]) with each example's domain drawn from the schedule's weights. Under `ddk`, every `k` student
//! steps the student's per-domain validation CE and the teacher's give new weights by DDK Eq. 1–2
//! ([`trainlab_core::workloads::distill::ddk_update`]). Both models go through one training loop ([`train`]); only the
//! loss differs.
//!
//! FLOPs are counted as they are spent (matrix products only, as [`Model::matmul_flops_per_step`]): student steps,
//! the teacher's forward on every student batch, and the forward passes of every evaluation.
use crate::lm::{AdamW, Corpus, Kd, Model, Shape, Stream};
use rand::RngExt;
use std::sync::atomic::{AtomicBool, Ordering};
use trainlab_core::workloads::distill::{DistillOutcome, Distillation, Flops, Schedule, ddk_update};
use trainlab_core::{Backend, Error, Fidelity, Result, RunCtx, Seed, Workload};

/// Examples of one domain: contexts (`context` tokens each) and targets.
#[derive(Debug, Clone, Default)]
struct Examples {
    ctx: Vec<u32>,
    tgt: Vec<u32>,
}

impl Examples {
    /// `n` examples of `domain`: each context is the domain's marker token (`marker`) and `context` source tokens.
    fn draw(corpus: &Corpus, domain: usize, n: u64, context: usize, marker: u32, seed: Seed) -> Self {
        let mut s = Stream::of(domain, seed);
        let mut e = Examples::default();
        for _ in 0..n {
            e.ctx.push(marker);
            s.push(corpus, context, &mut e.ctx, &mut e.tgt);
        }
        e
    }
    fn len(&self) -> usize {
        self.tgt.len()
    }
}

/// A domain's finite training pool, read cyclically.
struct Pool {
    ex: Examples,
    next: usize,
}

impl Pool {
    fn take(&mut self, context: usize, ctx: &mut Vec<u32>, tgt: &mut Vec<u32>) {
        let i = self.next;
        ctx.extend_from_slice(&self.ex.ctx[i * context..(i + 1) * context]);
        tgt.push(self.ex.tgt[i]);
        self.next = (i + 1) % self.ex.len();
    }
}

/// Forward FLOPs of `model` on `n` examples (the two matrix products).
fn forward_flops(model: &Model, n: usize) -> f64 {
    model.matmul_flops_per_step(n) as f64 / 3.0
}

/// Validation CE of `model` on each domain.
fn eval_domains(model: &Model, val: &[Examples]) -> Vec<f64> {
    val.iter().map(|v| model.loss(&v.ctx, &v.tgt, None)).collect()
}

/// Index drawn from the probability vector `w` with the uniform `u`.
fn pick(w: &[f64], u: f64) -> usize {
    let mut acc = 0.0;
    for (i, x) in w.iter().enumerate() {
        acc += x;
        if u < acc {
            return i;
        }
    }
    w.len() - 1
}

/// What the one training loop needs to know about a run.
struct Loop<'a> {
    tokens: u64,
    batch: usize,
    lr: f64,
    teacher: Option<(&'a Model, f64, f64)>,
    cancel: &'a AtomicBool,
}

/// Appends `b` examples (contexts, targets) to the batch.
type NextBatch<'a> = dyn FnMut(usize, &mut Vec<u32>, &mut Vec<u32>) + 'a;

/// The one training loop (teacher and student): AdamW with a 20-step linear warm-up, batches from `next_batch`,
/// the distillation term when `teacher` is set; `after_step(step, model)` runs after every step. Returns the FLOPs
/// spent on the student's (or teacher's) steps and on the teacher's soft targets, or `None` when cancelled.
fn train(
    model: &mut Model,
    l: &Loop<'_>,
    next_batch: &mut NextBatch<'_>,
    after_step: &mut dyn FnMut(u64, &Model),
) -> Option<(f64, f64)> {
    let mut opt = AdamW::new(model.shape, l.lr, 0.01);
    let mut grads = Model::zeros(model.shape);
    let (mut seen, mut step, mut own, mut soft_flops) = (0u64, 0u64, 0.0, 0.0);
    let (mut ctx, mut tgt) = (Vec::new(), Vec::new());
    while seen < l.tokens {
        if l.cancel.load(Ordering::Relaxed) {
            return None;
        }
        let b = l.batch.min((l.tokens - seen) as usize);
        ctx.clear();
        tgt.clear();
        next_batch(b, &mut ctx, &mut tgt);
        seen += b as u64;
        match l.teacher {
            Some((t, gamma, tau)) => {
                let soft = t.soft_targets(&ctx, tau);
                soft_flops += forward_flops(t, b);
                let kd = Kd {
                    soft: &soft,
                    gamma,
                    tau,
                };
                model.loss_kd(&ctx, &tgt, Some(kd), Some(&mut grads));
            }
            None => {
                model.loss(&ctx, &tgt, Some(&mut grads));
            }
        }
        step += 1;
        opt.lr = l.lr * (step as f64 / 20.0).min(1.0);
        opt.step(model, &grads);
        own += model.matmul_flops_per_step(b) as f64;
        after_step(step, model);
    }
    Some((own, soft_flops))
}

/// One point of a distillation's trajectory: after `step` student steps, the examples seen from each domain and the
/// student's validation CE on each.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TracePoint {
    /// Student steps done.
    pub step: u64,
    /// Training examples (target tokens) drawn from each domain so far.
    pub seen: Vec<f64>,
    /// Student validation CE per domain (nats).
    pub student_ce: Vec<f64>,
    /// Sampling weights in force after this step.
    pub weights: Vec<f64>,
}

/// Runs a distillation for real. `Err(Error::Interrupted)` when `cancel` is set part-way.
pub fn distill(w: &Distillation, seed: Seed, cancel: &AtomicBool) -> Result<DistillOutcome> {
    distill_traced(w, seed, seed, cancel, None).map(|(o, _)| o)
}

/// [`distill`], also evaluating the student on every domain every `trace_every` steps (and after the last step) for
/// its trajectory. Trace evaluations are measurement, not part of the method: they are not counted in the FLOPs and
/// do not change the run (the same seed gives the same student with or without a trace).
///
/// `seed` draws the setup (corpus, pools, validation sets, teacher); `student_seed` the student's initialisation and
/// its domain sampling, so that replicas of one setup differ only in the student (`distill` uses one seed for both).
pub fn distill_traced(
    w: &Distillation,
    seed: Seed,
    student_seed: Seed,
    cancel: &AtomicBool,
    trace_every: Option<u64>,
) -> Result<(DistillOutcome, Vec<TracePoint>)> {
    w.validate()?;
    let n = w.domains.len();
    // Source tokens per context, and the model's context (the domain marker first).
    let (src_context, context) = (w.context as usize, w.model_context() as usize);
    let marker = |i: usize| (w.vocab as usize + i) as u32;
    let zipf: Vec<f64> = w.domains.iter().map(|d| d.zipf).collect();
    let corpus = Corpus::multi(w.vocab as usize, &zipf, w.overlap, seed.derive("distill.corpus"))?;
    let pools = |tag: &str| -> Vec<Pool> {
        w.domains
            .iter()
            .enumerate()
            .map(|(i, d)| Pool {
                ex: Examples::draw(
                    &corpus,
                    i,
                    d.tokens,
                    src_context,
                    marker(i),
                    seed.derive(tag).index(i as u64),
                ),
                next: 0,
            })
            .collect()
    };
    let val: Vec<Examples> = (0..n)
        .map(|i| {
            let s = seed.derive("distill.val").index(i as u64);
            Examples::draw(&corpus, i, w.val_examples, src_context, marker(i), s)
        })
        .collect();
    let shape = |hidden: u64| Shape {
        vocab: w.model_vocab() as usize,
        context,
        embed: w.embed as usize,
        hidden: hidden as usize,
    };
    // The teacher: the uniform mixture of the same pools, round robin.
    let mut teacher = Model::new(shape(w.teacher_hidden), seed.derive("distill.teacher"));
    let mut tp = pools("distill.train");
    let mut turn = 0usize;
    let l = Loop {
        tokens: w.teacher_tokens,
        batch: w.batch as usize,
        lr: w.lr,
        teacher: None,
        cancel,
    };
    train(
        &mut teacher,
        &l,
        &mut |b, ctx, tgt| {
            for _ in 0..b {
                tp[turn % n].take(context, ctx, tgt);
                turn += 1;
            }
        },
        &mut |_, _| {},
    )
    .ok_or(Error::Interrupted)?;
    let teacher_ce = eval_domains(&teacher, &val);
    let mut eval_flops = forward_flops(&teacher, val.iter().map(Examples::len).sum());
    // The student: the schedule's weights, a fresh pass over the same pools.
    let mut student = Model::new(shape(w.student_hidden), student_seed.derive("distill.student"));
    let mut sp = pools("distill.train");
    let mut weights = w.initial_weights();
    let mut rng = student_seed.derive("distill.sampling").rng();
    let val_total: usize = val.iter().map(Examples::len).sum();
    let l = Loop {
        tokens: w.student_tokens,
        batch: w.batch as usize,
        lr: w.lr,
        teacher: Some((&teacher, w.gamma, w.temperature)),
        cancel,
    };
    let weights_cell = std::cell::RefCell::new(&mut weights);
    let seen = std::cell::RefCell::new(vec![0.0f64; n]);
    let mut trace = Vec::new();
    let total_steps = w.student_tokens.div_ceil(w.batch);
    let stretches = w.stretches().unwrap_or_default();
    let (student_flops, soft_flops) = train(
        &mut student,
        &l,
        &mut |b, ctx, tgt| {
            let wts = weights_cell.borrow();
            let mut seen = seen.borrow_mut();
            for _ in 0..b {
                let d = pick(&wts, rng.random::<f64>());
                sp[d].take(context, ctx, tgt);
                seen[d] += 1.0;
            }
        },
        &mut |step, m| {
            // A phased schedule's next phase starts after its first step's worth of steps.
            if let Some((_, next)) = stretches.iter().find(|(from, _)| *from == step) {
                **weights_cell.borrow_mut() = next.clone();
            }
            if let Schedule::Ddk { k, alpha } = w.schedule
                && step % k == 0
            {
                let s = eval_domains(m, &val);
                eval_flops += forward_flops(m, val_total);
                let mut wts = weights_cell.borrow_mut();
                let next = ddk_update(&wts, &s, &teacher_ce, alpha);
                **wts = next;
            }
            if let Some(every) = trace_every
                && (step % every.max(1) == 0 || step == total_steps)
            {
                trace.push(TracePoint {
                    step,
                    seen: seen.borrow().clone(),
                    student_ce: eval_domains(m, &val),
                    weights: weights_cell.borrow().to_vec(),
                });
            }
        },
    )
    .ok_or(Error::Interrupted)?;
    let student_ce = eval_domains(&student, &val);
    eval_flops += forward_flops(&student, val_total);
    let out = DistillOutcome {
        domains: w.domains.iter().map(|d| d.name.clone()).collect(),
        student_ce: Some(student_ce),
        teacher_ce: Some(teacher_ce),
        weights: Some(weights),
        flops: Flops {
            student_train: student_flops,
            teacher_forward: soft_flops,
            evaluation: eval_flops,
        },
        gap_ci: None,
        at_scale: None,
    };
    Ok((out, trace))
}

/// The real distillation run as a backend (`cpu`).
#[derive(Debug, Clone, Copy, Default)]
pub struct DistillCpu;

impl Backend<Distillation> for DistillCpu {
    fn name(&self) -> &str {
        "cpu"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Measured
    }
    fn run(&mut self, w: &Distillation, ctx: &mut RunCtx) -> Result<DistillOutcome> {
        distill(w, ctx.seed, &ctx.cancel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainlab_core::workloads::distill::DomainSpec;

    fn run(schedule: Schedule) -> Distillation {
        let d = |name: &str, tokens: u64, zipf: f64| DomainSpec {
            name: name.into(),
            tokens,
            zipf,
        };
        Distillation {
            domains: vec![d("easy", 20_000, 2.0), d("mid", 20_000, 1.2), d("hard", 2_000, 0.8)],
            schedule,
            teacher_hidden: 32,
            student_hidden: 4,
            vocab: 16,
            embed: 8,
            context: 2,
            overlap: 0.3,
            teacher_tokens: 60_000,
            student_tokens: 20_000,
            batch: 64,
            lr: 5e-3,
            gamma: 0.2,
            temperature: 1.0,
            val_examples: 500,
            at_scale: None,
        }
    }

    #[test]
    fn an_exhausted_pool_is_reused_cyclically() {
        // Three examples of context 2: taking five gives 0, 1, 2, 0, 1 (DDK §2.2: exhausted domains are re-read).
        let mut p = Pool {
            ex: Examples {
                ctx: vec![10, 11, 20, 21, 30, 31],
                tgt: vec![1, 2, 3],
            },
            next: 0,
        };
        let (mut ctx, mut tgt) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            p.take(2, &mut ctx, &mut tgt);
        }
        assert_eq!(tgt, vec![1, 2, 3, 1, 2]);
        assert_eq!(ctx, vec![10, 11, 20, 21, 30, 31, 10, 11, 20, 21]);
    }

    #[test]
    fn kd_gradient_matches_finite_differences() {
        let shape = Shape {
            vocab: 6,
            context: 2,
            embed: 3,
            hidden: 4,
        };
        let (t, mut s) = (Model::new(shape, Seed(1)), Model::new(shape, Seed(2)));
        let ctx = [0u32, 1, 2, 3, 4, 5, 1, 1];
        let tgt = [2u32, 0, 5, 3];
        let soft = t.soft_targets(&ctx, 2.0);
        let kd = || {
            Some(Kd {
                soft: &soft,
                gamma: 0.7,
                tau: 2.0,
            })
        };
        let mut g = Model::new(shape, Seed(0));
        s.loss_kd(&ctx, &tgt, kd(), Some(&mut g));
        for (i, analytic) in [(0usize, g.w1[0]), (5, g.w1[5])] {
            let h = 1e-6;
            s.w1[i] += h;
            let up = s.loss_kd(&ctx, &tgt, kd(), None);
            s.w1[i] -= 2.0 * h;
            let down = s.loss_kd(&ctx, &tgt, kd(), None);
            s.w1[i] += h;
            let numeric = (up - down) / (2.0 * h);
            assert!(
                (numeric - analytic).abs() < 1e-6 * (1.0 + numeric.abs()),
                "{numeric} vs {analytic}"
            );
        }
        let (i, analytic) = (3usize, g.b2[3]);
        s.b2[i] += 1e-6;
        let up = s.loss_kd(&ctx, &tgt, kd(), None);
        s.b2[i] -= 2e-6;
        let down = s.loss_kd(&ctx, &tgt, kd(), None);
        assert!(((up - down) / 2e-6 - analytic).abs() < 1e-6, "b2");
    }

    #[test]
    fn distillation_runs_and_ddk_moves_weight_to_the_lagging_domain() {
        let cancel = AtomicBool::new(false);
        let o = distill(&run(Schedule::Ddk { k: 25, alpha: 0.5 }), Seed(3), &cancel).unwrap();
        let (s, t, w) = (o.student_ce.unwrap(), o.teacher_ce.unwrap(), o.weights.unwrap());
        assert!(s.iter().zip(&t).all(|(a, b)| a.is_finite() && b.is_finite()));
        assert!(
            (w.iter().sum::<f64>() - 1.0).abs() < 1e-9 && w.iter().all(|x| *x >= 0.5 / 3.0 - 1e-12),
            "{w:?}"
        );
        // The domain with the largest gap gets the largest weight.
        let gaps: Vec<f64> = s.iter().zip(&t).map(|(a, b)| a - b).collect();
        let arg = |v: &[f64]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
        assert_eq!(arg(&gaps), arg(&w), "gaps {gaps:?} weights {w:?}");
        // Same seed, same bytes.
        let again = distill(&run(Schedule::Ddk { k: 25, alpha: 0.5 }), Seed(3), &cancel).unwrap();
        assert_eq!(again.student_ce.unwrap(), s);
    }

    #[test]
    fn phased_schedule_switches_weights_at_the_phase_boundary() {
        use trainlab_core::workloads::distill::Phase;
        let cancel = AtomicBool::new(false);
        let mut w = run(Schedule::Phased(vec![
            Phase {
                steps: 40,
                weights: vec![1.0 / 3.0; 3],
            },
            Phase {
                steps: 1,
                weights: vec![0.0, 0.0, 1.0],
            },
        ]));
        w.student_tokens = 6_400; // 100 steps
        w.teacher_tokens = 6_400;
        let (o, trace) = distill_traced(&w, Seed(2), Seed(2), &cancel, Some(10)).unwrap();
        assert_eq!(o.weights, Some(vec![0.0, 0.0, 1.0]));
        let at = |s: u64| trace.iter().find(|p| p.step == s).unwrap();
        // Up to step 40 every domain is drawn; after it only the last, so the first two counts stop growing.
        assert_eq!(at(30).weights, vec![1.0 / 3.0; 3]);
        assert_eq!(at(40).weights, vec![0.0, 0.0, 1.0]);
        let (s40, s100) = (&at(40).seen, &at(100).seen);
        assert!(s40.iter().all(|x| *x > 500.0), "{s40:?}");
        assert_eq!((s40[0], s40[1]), (s100[0], s100[1]));
        assert_eq!(s100[2] - s40[2], 60.0 * 64.0);
    }

    #[test]
    fn alpha_zero_is_uniform_and_flops_match_the_closed_form() {
        let cancel = AtomicBool::new(false);
        let mut w = run(Schedule::Uniform);
        w.student_tokens = 8_000;
        w.teacher_tokens = 8_000;
        let u = distill(&w, Seed(5), &cancel).unwrap();
        w.schedule = Schedule::Ddk { k: 10, alpha: 0.0 };
        let d = distill(&w, Seed(5), &cancel).unwrap();
        // DDK with no smoothing weight keeps the uniform floor 1/N: the same draws, the same student.
        assert_eq!(u.student_ce, d.student_ce);
        // The FLOPs counted as spent equal the closed form's, part by part (exact integers in f64).
        for (o, sched) in [(&u, Schedule::Uniform), (&d, Schedule::Ddk { k: 10, alpha: 0.0 })] {
            w.schedule = sched;
            assert_eq!(o.flops, trainlab_models::distill::flops(&w), "{:?}", w.schedule);
        }
    }
}
