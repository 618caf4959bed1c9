//! The DDK control loop run on the fitted gap law (`ddk_sim`, the simulated backend of the `distillation` kind), with
//! Monte Carlo over the sampling of domains, and the schedule search built on it.
//!
//! One replication follows the schedule as the real run does ([`trainlab_models::gaplaw::follow`]): the examples of
//! each stretch between two DDK updates are drawn from the weights in force (a multinomial draw: the real run picks
//! each example's domain independently), every `k` steps the law's per-domain losses give the next weights by Eq. 1–2
//! (the same `ddk_update` as the real run), and exhausted pools are reused cyclically (the law's effective data).
//! The answer is the mean over replications of the final per-domain losses, with 95% percentile intervals of the
//! mean and worst gap.
//!
//! [`search`] ranks candidate schedules (uniform, static weights, DDK over a grid of `k` and `alpha`) by the mean gap
//! over replications, in parallel over candidates (each candidate's replications are seeded by its index, so the
//! ranking does not depend on the thread count).
use rand_distr::{Binomial, Distribution};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use trainlab_core::workloads::distill::{DistillOutcome, Distillation, GapCi, Schedule};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, Seed, Workload};
use trainlab_models::gaplaw::{DistillProfile, Followed, check_updates, follow, needs_profile, outcome};

/// Adds a multinomial draw of `examples` over `weights` to `seen` (sequential binomials).
fn multinomial(rng: &mut trainlab_core::seed::Rng, weights: &[f64], examples: u64, seen: &mut [f64]) {
    let (mut left, mut mass) = (examples, 1.0f64);
    for (i, w) in weights.iter().enumerate() {
        if left == 0 {
            break;
        }
        let x = if i + 1 == weights.len() || mass <= *w {
            left
        } else {
            let q = (w / mass).clamp(0.0, 1.0);
            Binomial::new(left, q).map(|b| b.sample(rng)).unwrap_or(0)
        };
        seen[i] += x as f64;
        left -= x;
        mass -= w;
    }
}

/// One replication of `w` on the law.
pub fn replicate(w: &Distillation, p: &DistillProfile, seed: Seed) -> Followed {
    let mut rng = seed.rng();
    let pools = p.pools();
    follow(w, &p.law, &p.teacher_ce, &pools, &mut |wt, ex, seen| {
        multinomial(&mut rng, wt, ex, seen)
    })
}

/// Mean and worst gap of a followed run.
fn gaps(p: &DistillProfile, f: &Followed) -> (f64, f64, Vec<f64>) {
    let l = p.law.predict(&f.seen, &p.pools(), &f.displacement);
    let g: Vec<f64> = l.iter().zip(&p.teacher_ce).map(|(a, b)| a - b).collect();
    let mean = g.iter().sum::<f64>() / g.len() as f64;
    let worst = g.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, worst, l)
}

fn percentile_95(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.025), at(0.975))
}

/// Monte Carlo summary of a schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Mean over replications of the final student CE per domain.
    pub student_ce: Vec<f64>,
    /// Mean over replications of the final weights.
    pub weights: Vec<f64>,
    /// Mean gap (mean over replications) and its 95% interval.
    pub mean_gap: (f64, (f64, f64)),
    /// Worst gap (mean over replications) and its 95% interval.
    pub worst_gap: (f64, (f64, f64)),
}

/// `reps` replications of `w` (seeded `seed.index(r)`); `None` when cancelled.
pub fn monte_carlo(
    w: &Distillation,
    p: &DistillProfile,
    reps: usize,
    seed: Seed,
    cancel: &AtomicBool,
) -> Option<Summary> {
    let n = w.domains.len();
    let (mut ce, mut wt) = (vec![0.0; n], vec![0.0; n]);
    let (mut means, mut worsts) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for r in 0..reps {
        if cancel.load(Ordering::Relaxed) {
            return None;
        }
        let f = replicate(w, p, seed.index(r as u64));
        let (m, x, l) = gaps(p, &f);
        means.push(m);
        worsts.push(x);
        for i in 0..n {
            ce[i] += l[i] / reps as f64;
            wt[i] += f.weights[i] / reps as f64;
        }
    }
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (mm, mw) = (avg(&means), avg(&worsts));
    Some(Summary {
        student_ce: ce,
        weights: wt,
        mean_gap: (mm, percentile_95(&mut means)),
        worst_gap: (mw, percentile_95(&mut worsts)),
    })
}

/// The simulated backend.
#[derive(Debug, Clone, Default)]
pub struct DdkSim {
    /// The profile (`--profile`), if given.
    pub profile: Option<DistillProfile>,
    /// Monte Carlo replications.
    pub replications: usize,
}

impl Backend<Distillation> for DdkSim {
    fn name(&self) -> &str {
        "ddk_sim"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Simulated
    }
    fn run(&mut self, w: &Distillation, ctx: &mut RunCtx) -> Result<DistillOutcome, Error> {
        w.validate()?;
        let p = self.profile.as_ref().ok_or_else(needs_profile)?;
        p.check_for(w)?;
        check_updates(w)?;
        let reps = self.replications.max(2);
        let s = monte_carlo(w, p, reps, ctx.seed.derive("ddk_sim"), &ctx.cancel).ok_or(Error::Interrupted)?;
        let mut o = outcome(w, p, s.student_ce, s.weights);
        o.gap_ci = Some(GapCi {
            mean: s.mean_gap.1,
            worst: s.worst_gap.1,
        });
        Ok(o)
    }
}

/// One ranked candidate of a schedule search.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    /// The schedule.
    pub schedule: Schedule,
    /// Its Monte Carlo summary.
    pub summary: Summary,
}

/// The candidate schedules of a search for `n` domains: uniform, `statics` static weight vectors (Dirichlet(1)
/// draws from `seed`), and DDK over `ks` x `alphas`.
pub fn candidates(n: usize, ks: &[u64], alphas: &[f64], statics: usize, seed: Seed) -> Vec<Schedule> {
    let mut out = vec![Schedule::Uniform];
    let mut rng = seed.rng();
    let g = rand_distr::Gamma::<f64>::new(1.0, 1.0).expect("Gamma(1, 1)");
    for _ in 0..statics {
        let x: Vec<f64> = (0..n).map(|_| g.sample(&mut rng).max(1e-9)).collect();
        let z: f64 = x.iter().sum();
        let mut w: Vec<f64> = x.iter().map(|v| v / z).collect();
        // Exact sum 1 (the workload checks it to 1e-6).
        let last = 1.0 - w[..n - 1].iter().sum::<f64>();
        w[n - 1] = last.max(0.0);
        out.push(Schedule::Static(w));
    }
    for &k in ks {
        for &alpha in alphas {
            out.push(Schedule::Ddk { k, alpha });
        }
    }
    out
}

/// Ranks `schedules` on `base` (its schedule replaced) by Monte Carlo mean gap, best first. Every candidate gets the
/// same replication seeds (common random numbers).
pub fn search(
    base: &Distillation,
    p: &DistillProfile,
    schedules: &[Schedule],
    reps: usize,
    seed: Seed,
    cancel: &AtomicBool,
) -> Result<Vec<Ranked>, Error> {
    let mut out: Vec<Ranked> = schedules
        .par_iter()
        .map(|s| {
            let mut w = base.clone();
            w.schedule = s.clone();
            w.validate()?;
            check_updates(&w)?;
            let summary = monte_carlo(&w, p, reps, seed, cancel).ok_or(Error::Interrupted)?;
            Ok(Ranked {
                schedule: s.clone(),
                summary,
            })
        })
        .collect::<Result<_, Error>>()?;
    out.sort_by(|a, b| a.summary.mean_gap.0.total_cmp(&b.summary.mean_gap.0));
    Ok(out)
}

/// The ranking check of schedules: a pair of schedules is *resolvable* when their measured mean gaps (means over
/// seeds) differ by more than `z` standard errors of the difference (`sqrt(sd_a²/n_a + sd_b²/n_b)`, sample standard
/// deviations over seeds, unpaired); it is *ordered* when the predicted mean gaps put the two the same way round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankCheck {
    /// Pairs of schedules.
    pub pairs: usize,
    /// Pairs whose measured difference exceeds `z` standard errors.
    pub resolvable: usize,
    /// Resolvable pairs the prediction orders as measured.
    pub ordered: usize,
}

/// [`RankCheck`] of `predicted` mean gaps against `measured` per-seed mean gaps (one list per schedule, two or more
/// seeds each), threshold `z` standard errors.
pub fn rank_check(predicted: &[f64], measured: &[Vec<f64>], z: f64) -> RankCheck {
    let stat = |v: &[f64]| {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0).max(1.0);
        (m, var / n)
    };
    let mut c = RankCheck {
        pairs: 0,
        resolvable: 0,
        ordered: 0,
    };
    for a in 0..measured.len() {
        for b in a + 1..measured.len() {
            c.pairs += 1;
            let ((ma, va), (mb, vb)) = (stat(&measured[a]), stat(&measured[b]));
            if (ma - mb).abs() > z * (va + vb).sqrt() {
                c.resolvable += 1;
                if (predicted[a] - predicted[b]) * (ma - mb) > 0.0 {
                    c.ordered += 1;
                }
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainlab_core::workloads::distill::{DomainSpec, Phase};
    use trainlab_models::gaplaw::{GapLawParams, advance_displacement, expected_chunk};

    fn profile() -> DistillProfile {
        let d = |name: &str, tokens: u64, zipf: f64| DomainSpec {
            name: name.into(),
            tokens,
            zipf,
        };
        let setup = Distillation {
            domains: vec![d("a", 20_000, 2.0), d("b", 20_000, 1.2), d("c", 1_000, 0.8)],
            schedule: Schedule::Uniform,
            teacher_hidden: 32,
            student_hidden: 4,
            vocab: 16,
            embed: 8,
            context: 2,
            overlap: 0.3,
            teacher_tokens: 60_000,
            student_tokens: 30_000,
            batch: 64,
            lr: 5e-3,
            gamma: 0.2,
            temperature: 1.0,
            val_examples: 500,
            at_scale: None,
        };
        DistillProfile {
            setup,
            teacher_ce: vec![2.3, 2.6, 2.8],
            law: GapLawParams {
                floor: vec![2.4, 2.62, 2.78],
                scale: vec![3.0, 1.0, 0.8],
                beta: vec![0.4; 3],
                transfer: 0.2,
                rstar: 3.0,
                pressure: vec![],
                harm: vec![],
                refresh: 1.0,
            },
            bootstrap: vec![],
        }
    }

    #[test]
    fn rank_check_counts_only_resolvable_pairs() {
        // a and b differ by far more than their spread; c overlaps b.
        let m = vec![vec![1.0, 1.1, 0.9], vec![2.0, 2.1, 1.9], vec![2.05, 1.8, 2.3]];
        let c = rank_check(&[0.5, 3.0, 1.0], &m, 2.0);
        assert_eq!((c.pairs, c.resolvable), (3, 2));
        // a < b and a < c measured; predicted a < b and a < c: both ordered (b vs c is not resolvable).
        assert_eq!(c.ordered, 2);
        let wrong = rank_check(&[3.5, 3.0, 1.0], &m, 2.0);
        assert_eq!(wrong.ordered, 0);
    }

    #[test]
    fn multinomial_conserves_examples() {
        let mut rng = Seed(1).rng();
        let mut seen = vec![0.0; 4];
        multinomial(&mut rng, &[0.1, 0.2, 0.3, 0.4], 10_000, &mut seen);
        assert_eq!(seen.iter().sum::<f64>(), 10_000.0);
        assert!((seen[3] / 10_000.0 - 0.4).abs() < 0.03, "{seen:?}");
    }

    #[test]
    fn phased_schedule_follows_its_phases() {
        // 30,000 examples in batches of 64 (469 steps, the last short): 100 uniform steps (6,400 examples), then
        // 23,600 at (0.8, 0.1, 0.1). The closed form's counts and displacement state are those two chunks.
        let mut p = profile();
        p.law.refresh = 300.0;
        let mut w = p.setup.clone();
        let last = vec![0.8, 0.1, 0.1];
        w.schedule = Schedule::Phased(vec![
            Phase {
                steps: 100,
                weights: vec![1.0 / 3.0; 3],
            },
            Phase {
                steps: 5,
                weights: last.clone(),
            },
        ]);
        let f = follow(&w, &p.law, &p.teacher_ce, &p.pools(), &mut expected_chunk);
        let first = [6400.0 / 3.0; 3];
        let second: Vec<f64> = last.iter().map(|x| x * 23_600.0).collect();
        for i in 0..3 {
            assert!((f.seen[i] - (first[i] + second[i])).abs() < 1e-6, "{:?}", f.seen);
        }
        let mut m = vec![0.0; 9];
        advance_displacement(&mut m, &first, 300.0);
        advance_displacement(&mut m, &second, 300.0);
        for i in 0..9 {
            assert!(
                (f.displacement[i] - m[i]).abs() < 1e-12,
                "{:?} vs {m:?}",
                f.displacement
            );
        }
        assert_eq!(f.weights, last);
        // Starving b and c after the uniform phase: their displacement by a (S_ba, S_ca) grows beyond what uniform
        // weights leave, a's by b shrinks.
        let mut u = w.clone();
        u.schedule = Schedule::Uniform;
        let fu = follow(&u, &p.law, &p.teacher_ce, &p.pools(), &mut expected_chunk);
        assert!(
            f.displacement[3] > fu.displacement[3]
                && f.displacement[6] > fu.displacement[6]
                && f.displacement[1] < fu.displacement[1],
            "{:?} {:?}",
            f.displacement,
            fu.displacement
        );
    }

    #[test]
    fn static_schedules_average_to_the_closed_form() {
        // Uniform and static: the mean over replications converges to the law at the expected counts.
        let p = profile();
        let cancel = AtomicBool::new(false);
        let phased = Schedule::Phased(vec![
            Phase {
                steps: 100,
                weights: vec![1.0 / 3.0; 3],
            },
            Phase {
                steps: 1,
                weights: vec![0.8, 0.1, 0.1],
            },
        ]);
        for s in [Schedule::Uniform, Schedule::Static(vec![0.5, 0.3, 0.2]), phased] {
            let mut w = p.setup.clone();
            w.schedule = s;
            let mc = monte_carlo(&w, &p, 200, Seed(3), &cancel).unwrap();
            let f = follow(&w, &p.law, &p.teacher_ce, &p.pools(), &mut expected_chunk);
            let cf = p.law.predict(&f.seen, &p.pools(), &f.displacement);
            for (a, b) in mc.student_ce.iter().zip(&cf) {
                assert!((a - b).abs() < 1e-3, "{:?} vs {cf:?}", mc.student_ce);
            }
        }
    }

    #[test]
    fn ddk_shifts_weight_to_the_lagging_domain_and_alpha_zero_is_uniform() {
        let p = profile();
        let cancel = AtomicBool::new(false);
        let mut w = p.setup.clone();
        w.schedule = Schedule::Ddk { k: 20, alpha: 0.5 };
        let s = monte_carlo(&w, &p, 50, Seed(4), &cancel).unwrap();
        // Domain a has the largest gap (floor 2.4 vs teacher 2.3 plus the largest reducible part).
        assert!(
            s.weights[0] > s.weights[1] && s.weights[0] > 1.0 / 3.0,
            "{:?}",
            s.weights
        );
        assert!(
            s.weights.iter().all(|x| *x >= 0.5 / 3.0 - 1e-9),
            "the (1 - alpha)/N floor"
        );
        w.schedule = Schedule::Ddk { k: 20, alpha: 0.0 };
        let z = monte_carlo(&w, &p, 50, Seed(4), &cancel).unwrap();
        assert!(z.weights.iter().all(|x| (x - 1.0 / 3.0).abs() < 1e-12));
    }

    #[test]
    fn search_ranks_every_candidate_best_first_and_is_deterministic() {
        let p = profile();
        let cancel = AtomicBool::new(false);
        let c = candidates(3, &[5, 20, 100], &[0.0, 0.5, 1.0], 10, Seed(9));
        assert_eq!(c.len(), 1 + 10 + 9);
        let r = search(&p.setup, &p, &c, 20, Seed(1), &cancel).unwrap();
        assert_eq!(r.len(), c.len());
        assert!(r.windows(2).all(|x| x[0].summary.mean_gap.0 <= x[1].summary.mean_gap.0));
        let again = search(&p.setup, &p, &c, 20, Seed(1), &cancel).unwrap();
        assert_eq!(r, again);
    }
}
