//! The D-CPT mixture planner: the three usages of the D-CPT law (Que et al. 2024, §5; formalised in the notes §1.8).
//!
//! A [`DcptPair`] holds a fitted general-loss law (input r = general share r_g = 1 − r_d) and a fitted domain-loss law
//! (input r = domain share r_d), each with its bootstrap replicates. Every usage is solved on the point estimate and on
//! each bootstrap replicate pair (replicate i of the general fit with replicate i of the domain fit), which gives the
//! percentile interval of the answer.
//!
//! 1. [`DcptPair::tradeoff`]: `r_d* = argmin L_d(N, D, r_d)` s.t. `L_g(N, D, 1 − r_d) ≤ (1 + T)·L_g0`.
//! 2. [`DcptPair::limited_domain_data`]: with D_dom domain tokens used once, `D = D_dom / r_d`;
//!    `r_d* = argmin L_d(N, D_dom/r_d, r_d)`.
//! 3. [`DcptPair::compute_allocation`]: under `C = 6·N·D` at a fixed ratio, `argmin_N L(N, C/(6N), r)`; for L3 this is
//!    Chinchilla's closed form with `B' = B·r^η` (checked in the tests).
use crate::fit::{Ci, Law, quantile};
use crate::laws::{self, Target};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use trainlab_core::{Error, Result};

/// A fitted law with its bootstrap replicates, as written by `trainlab fit --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FittedLaw {
    /// Law name (see [`laws::by_name`]).
    pub law: String,
    /// Which loss it predicts.
    pub target: Target,
    /// Best parameters (optimiser coordinates).
    pub params: Vec<f64>,
    /// Bootstrap replicates (may be empty).
    pub bootstrap: Vec<Vec<f64>>,
}

/// One fitted target in a `trainlab fit --json` report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetFit {
    /// Loss column fitted (`general_loss`, `domain_loss`, `loss`, ...).
    pub loss_column: String,
    /// For D-CPT laws: which ratio the `r` input is.
    pub target: Option<Target>,
    /// The fit.
    pub fit: crate::fit::FitResult,
    /// Parameters in natural units.
    pub natural: Vec<(String, f64)>,
    /// Bootstrap intervals on the parameters (optimiser coordinates), when bootstrapped.
    pub param_ci: Vec<Ci>,
    /// Bootstrap replicates.
    pub bootstrap: Vec<Vec<f64>>,
    /// Grouped cross-validation, when requested.
    pub cv: Option<crate::fit::CrossValidation>,
}

/// The JSON written by `trainlab fit --json` and read by `trainlab plan-mixture`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    /// Law name.
    pub law: String,
    /// Law formula.
    pub formula: String,
    /// Data file.
    pub data: String,
    /// Huber δ used.
    pub delta: f64,
    /// Seed used.
    pub seed: u64,
    /// Interval level of `param_ci`.
    pub level: f64,
    /// One entry per fitted loss.
    pub fits: Vec<TargetFit>,
}

impl FitReport {
    /// The general/domain pair for the planner.
    pub fn pair(&self) -> Result<DcptPair> {
        let find = |t: Target| -> Result<FittedLaw> {
            let f = self.fits.iter().find(|f| f.target == Some(t)).ok_or_else(|| {
                Error::invalid(
                    "fit report",
                    &self.data,
                    format!("no {t:?} fit in the report"),
                    "fit with `--target both` on a table with general_loss and domain_loss",
                )
            })?;
            Ok(FittedLaw {
                law: self.law.clone(),
                target: t,
                params: f.fit.params.clone(),
                bootstrap: f.bootstrap.clone(),
            })
        };
        DcptPair::new(find(Target::General)?, find(Target::Domain)?)
    }
}

/// General- and domain-loss laws fitted on the same runs.
pub struct DcptPair {
    general: Box<dyn Law>,
    domain: Box<dyn Law>,
    /// The general-loss fit.
    pub general_fit: FittedLaw,
    /// The domain-loss fit.
    pub domain_fit: FittedLaw,
}

/// Answer to usage 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TradeoffPlan {
    /// Best domain share r_d.
    pub r_domain: Ci,
    /// Predicted domain loss at r_d*.
    pub domain_loss: Ci,
    /// Predicted general loss at r_d*.
    pub general_loss: Ci,
    /// The general-loss limit (1 + T)·L_g0.
    pub general_limit: f64,
    /// Share of bootstrap replicates with a feasible ratio.
    pub feasible_share: f64,
}

/// Answer to usage 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitedDataPlan {
    /// Best domain share r_d.
    pub r_domain: Ci,
    /// Total CPT tokens D = D_dom / r_d.
    pub tokens: Ci,
    /// Predicted domain loss.
    pub domain_loss: Ci,
    /// Predicted general loss.
    pub general_loss: Ci,
}

/// Answer to usage 3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputePlan {
    /// Compute-optimal parameters N.
    pub params: Ci,
    /// Compute-optimal tokens D = C / (6N).
    pub tokens: Ci,
    /// Predicted loss of the optimised target.
    pub loss: Ci,
}

fn ci(estimate: f64, reps: &[f64], level: f64) -> Ci {
    let a = (1.0 - level) / 2.0;
    Ci {
        estimate,
        lo: quantile(reps, a),
        hi: quantile(reps, 1.0 - a),
    }
}

/// Golden-section minimisation of `f` on `[lo, hi]` after a coarse scan of `grid` points (robust to multimodality
/// at the grid's resolution).
fn minimise_1d(f: impl Fn(f64) -> f64, lo: f64, hi: f64, grid: usize) -> f64 {
    let step = (hi - lo) / grid as f64;
    let mut best = (lo, f(lo));
    for i in 1..=grid {
        let x = lo + step * i as f64;
        let v = f(x);
        if v < best.1 {
            best = (x, v);
        }
    }
    let (mut a, mut b) = ((best.0 - step).max(lo), (best.0 + step).min(hi));
    let g = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..80 {
        let c = b - g * (b - a);
        let d = a + g * (b - a);
        if f(c) < f(d) {
            b = d;
        } else {
            a = c;
        }
    }
    let x = 0.5 * (a + b);
    if f(x) <= best.1 { x } else { best.0 }
}

impl DcptPair {
    /// Builds the pair; both laws must take inputs `[N, D, r]` and have matching bootstrap sizes (or none).
    pub fn new(general_fit: FittedLaw, domain_fit: FittedLaw) -> Result<Self> {
        let get = |f: &FittedLaw, field: &str| -> Result<Box<dyn Law>> {
            let law = laws::by_name(&f.law, field)?;
            let names: Vec<&str> = law.inputs().iter().map(|i| i.name.as_str()).collect();
            if names != ["N", "D", "r"] {
                return Err(Error::invalid(
                    field,
                    &f.law,
                    "the planner needs a law of (N, D, r)",
                    "use `dcpt`",
                ));
            }
            if f.params.len() != law.params().len() || f.bootstrap.iter().any(|b| b.len() != f.params.len()) {
                return Err(Error::invalid(
                    field,
                    f.params.len(),
                    format!("law `{}` has {} parameters", f.law, law.params().len()),
                    "refit with this version of trainlab",
                ));
            }
            Ok(law)
        };
        let general = get(&general_fit, "plan.general")?;
        let domain = get(&domain_fit, "plan.domain")?;
        if general_fit.target != Target::General || domain_fit.target != Target::Domain {
            return Err(Error::invalid(
                "plan.targets",
                format!("{:?}/{:?}", general_fit.target, domain_fit.target),
                "need one general-loss and one domain-loss fit",
                "fit with --target both",
            ));
        }
        Ok(DcptPair {
            general,
            domain,
            general_fit,
            domain_fit,
        })
    }

    /// Predicted general loss at domain share `r_d` with parameters `p`.
    pub fn general_loss(&self, p: &[f64], n: f64, d: f64, r_d: f64) -> f64 {
        self.general.eval(p, &[n, d, 1.0 - r_d])
    }
    /// Predicted domain loss at domain share `r_d` with parameters `p`.
    pub fn domain_loss(&self, p: &[f64], n: f64, d: f64, r_d: f64) -> f64 {
        self.domain.eval(p, &[n, d, r_d])
    }

    /// Parameter pairs: the point estimate first, then the bootstrap replicates paired by index.
    fn pairs(&self) -> Vec<(&[f64], &[f64])> {
        let mut v = vec![(self.general_fit.params.as_slice(), self.domain_fit.params.as_slice())];
        for (g, d) in self.general_fit.bootstrap.iter().zip(&self.domain_fit.bootstrap) {
            v.push((g.as_slice(), d.as_slice()));
        }
        v
    }

    fn solve_tradeoff(&self, pg: &[f64], pd: &[f64], n: f64, d: f64, limit: f64) -> Option<f64> {
        const GRID: usize = 2000;
        let feasible = |r: f64| self.general_loss(pg, n, d, r) <= limit;
        let mut best: Option<(usize, f64)> = None;
        for i in 0..=GRID {
            let r = i as f64 / GRID as f64;
            if feasible(r) {
                let v = self.domain_loss(pd, n, d, r);
                if best.is_none_or(|b| v < b.1) {
                    best = Some((i, v));
                }
            }
        }
        let (i, _) = best?;
        let r = i as f64 / GRID as f64;
        // Refine at the constraint boundary when the neighbour is infeasible and lowers the domain loss.
        if i < GRID {
            let nxt = (i + 1) as f64 / GRID as f64;
            if !feasible(nxt) && self.domain_loss(pd, n, d, nxt) < self.domain_loss(pd, n, d, r) {
                let (mut a, mut b) = (r, nxt);
                for _ in 0..60 {
                    let m = 0.5 * (a + b);
                    if feasible(m) {
                        a = m;
                    } else {
                        b = m;
                    }
                }
                return Some(a);
            }
        }
        Some(r)
    }

    /// Usage 1: the domain share that lowers the domain loss most while the general loss stays within
    /// `tolerance` (e.g. 0.03) of `base_general_loss` (the base model's general loss before CPT; when `None`, the
    /// predicted general loss at r_d = 0 is used).
    pub fn tradeoff(
        &self,
        n: f64,
        d: f64,
        tolerance: f64,
        base_general_loss: Option<f64>,
        level: f64,
    ) -> Result<TradeoffPlan> {
        trainlab_core::error::check::positive("plan.N", n)?;
        trainlab_core::error::check::positive("plan.D", d)?;
        trainlab_core::error::check::non_negative("plan.tolerance", tolerance)?;
        let base = match base_general_loss {
            Some(b) => {
                trainlab_core::error::check::positive("plan.base_general_loss", b)?;
                b
            }
            None => self.general_loss(&self.general_fit.params, n, d, 0.0),
        };
        let limit = (1.0 + tolerance) * base;
        let sols: Vec<Option<(f64, f64, f64)>> = self
            .pairs()
            .par_iter()
            .map(|(pg, pd)| {
                self.solve_tradeoff(pg, pd, n, d, limit)
                    .map(|r| (r, self.domain_loss(pd, n, d, r), self.general_loss(pg, n, d, r)))
            })
            .collect();
        let Some(est) = sols[0] else {
            return Err(Error::invalid(
                "plan.tolerance",
                tolerance,
                format!("no ratio keeps the predicted general loss under {limit:.4}"),
                "raise the tolerance or check the base general loss",
            ));
        };
        let reps: Vec<(f64, f64, f64)> = sols[1..].iter().flatten().copied().collect();
        let nb = sols.len() - 1;
        let col = |k: usize| -> Vec<f64> {
            reps.iter()
                .map(|t| match k {
                    0 => t.0,
                    1 => t.1,
                    _ => t.2,
                })
                .collect()
        };
        Ok(TradeoffPlan {
            r_domain: ci(est.0, &col(0), level),
            domain_loss: ci(est.1, &col(1), level),
            general_loss: ci(est.2, &col(2), level),
            general_limit: limit,
            feasible_share: if nb == 0 { 1.0 } else { reps.len() as f64 / nb as f64 },
        })
    }

    /// Usage 2: the domain share minimising the domain loss when only `domain_tokens` domain tokens exist and are
    /// used once (D = D_dom / r_d); r_d is searched in `[r_min, 1]`.
    pub fn limited_domain_data(&self, n: f64, domain_tokens: f64, r_min: f64, level: f64) -> Result<LimitedDataPlan> {
        trainlab_core::error::check::positive("plan.N", n)?;
        trainlab_core::error::check::positive("plan.domain_tokens", domain_tokens)?;
        trainlab_core::error::check::in_range("plan.r_min", r_min, 1e-6, 1.0)?;
        let sols: Vec<[f64; 4]> = self
            .pairs()
            .par_iter()
            .map(|(pg, pd)| {
                let r = minimise_1d(|r| self.domain_loss(pd, n, domain_tokens / r, r), r_min, 1.0, 400);
                let d = domain_tokens / r;
                [r, d, self.domain_loss(pd, n, d, r), self.general_loss(pg, n, d, r)]
            })
            .collect();
        let col = |k: usize| -> Vec<f64> { sols[1..].iter().map(|s| s[k]).collect() };
        Ok(LimitedDataPlan {
            r_domain: ci(sols[0][0], &col(0), level),
            tokens: ci(sols[0][1], &col(1), level),
            domain_loss: ci(sols[0][2], &col(2), level),
            general_loss: ci(sols[0][3], &col(3), level),
        })
    }

    /// Usage 3: compute-optimal (N, D) under `flops = 6·N·D` at domain share `r_d`, minimising the `target` loss.
    pub fn compute_allocation(&self, flops: f64, r_d: f64, target: Target, level: f64) -> Result<ComputePlan> {
        trainlab_core::error::check::positive("plan.flops", flops)?;
        trainlab_core::error::check::in_range("plan.r", r_d, 0.0, 1.0)?;
        let budget = flops / 6.0;
        if budget <= 1.0 {
            return Err(Error::invalid(
                "plan.flops",
                flops,
                "budget too small",
                "give C > 6 FLOPs",
            ));
        }
        let sols: Vec<[f64; 3]> = self
            .pairs()
            .par_iter()
            .map(|(pg, pd)| {
                let loss = |n: f64| match target {
                    Target::General => self.general_loss(pg, n, budget / n, r_d),
                    Target::Domain => self.domain_loss(pd, n, budget / n, r_d),
                };
                let ln_n = minimise_1d(|ln_n| loss(ln_n.exp()), 0.0, budget.ln(), 2000);
                let n = ln_n.exp();
                [n, budget / n, loss(n)]
            })
            .collect();
        let col = |k: usize| -> Vec<f64> { sols[1..].iter().map(|s| s[k]).collect() };
        Ok(ComputePlan {
            params: ci(sols[0][0], &col(0), level),
            tokens: ci(sols[0][1], &col(1), level),
            loss: ci(sols[0][2], &col(2), level),
        })
    }
}

/// Chinchilla's closed-form compute-optimal N for `E' + A/N^α + B'/D^β` under C = 6ND:
/// `N_opt = G·(C/6)^(β/(α+β))`, `G = (αA/(βB'))^(1/(α+β))` (Hoffmann et al. 2022, App. D.2).
pub fn chinchilla_n_opt(a: f64, b: f64, alpha: f64, beta: f64, flops: f64) -> f64 {
    let g = (alpha * a / (beta * b)).powf(1.0 / (alpha + beta));
    g * (flops / 6.0).powf(beta / (alpha + beta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::laws::DcptL3;

    fn pair() -> DcptPair {
        pair_with(50.0)
    }

    fn pair_with(b_domain: f64) -> DcptPair {
        // General loss falls with the general share r_g; domain loss falls with r_d.
        let g = DcptL3::pack(1.8, 200.0, 50.0, 0.5, 0.3, 0.3, 0.6, 0.2, 0.02);
        let d = DcptL3::pack(1.2, 150.0, b_domain, 0.5, 0.3, 0.3, 0.5, 0.3, 0.01);
        DcptPair::new(
            FittedLaw {
                law: "dcpt".into(),
                target: Target::General,
                params: g,
                bootstrap: vec![],
            },
            FittedLaw {
                law: "dcpt".into(),
                target: Target::Domain,
                params: d,
                bootstrap: vec![],
            },
        )
        .unwrap()
    }

    #[test]
    fn tradeoff_is_the_constraint_boundary() {
        let p = pair();
        let (n, d) = (1.8e9, 1e10);
        let base = p.general_loss(&p.general_fit.params, n, d, 0.0);
        let plan = p.tradeoff(n, d, 0.03, Some(base), 0.9).unwrap();
        let r = plan.r_domain.estimate;
        assert!(r > 0.0 && r < 1.0, "{r}");
        let lg = p.general_loss(&p.general_fit.params, n, d, r);
        assert!((lg - 1.03 * base).abs() < 1e-9, "{lg} vs {}", 1.03 * base);
        // Tighter tolerance -> smaller domain share.
        let tighter = p.tradeoff(n, d, 0.01, Some(base), 0.9).unwrap();
        assert!(tighter.r_domain.estimate < r);
        assert!(p.tradeoff(n, d, 0.0, Some(base * 0.5), 0.9).is_err());
    }

    #[test]
    fn limited_data_has_interior_optimum_satisfying_first_order_condition() {
        // A large data term makes more domain tokens (smaller r, larger D) worth it: interior optimum.
        let p = pair_with(2000.0);
        let (n, dd) = (1.8e9, 5e9);
        let plan = p.limited_domain_data(n, dd, 1e-3, 0.9).unwrap();
        let r = plan.r_domain.estimate;
        assert!(r > 0.001 && r < 1.0, "{r}");
        let f = |r: f64| p.domain_loss(&p.domain_fit.params, n, dd / r, r);
        assert!(f(r) <= f(r * 1.01) + 1e-12 && f(r) <= f(r * 0.99) + 1e-12);
        assert!((plan.tokens.estimate - dd / r).abs() / plan.tokens.estimate < 1e-12);
    }

    #[test]
    fn compute_allocation_matches_chinchilla_closed_form() {
        let p = pair();
        let (flops, r) = (1e21, 0.4);
        let plan = p.compute_allocation(flops, r, Target::Domain, 0.9).unwrap();
        // Domain law natural params: A = 150, B' = 50 * r^0.3, alpha = beta = 0.3.
        let want = chinchilla_n_opt(150.0, 50.0 * r.powf(0.3), 0.3, 0.3, flops);
        assert!(
            (plan.params.estimate / want - 1.0).abs() < 1e-4,
            "{} vs {want}",
            plan.params.estimate
        );
        assert!((plan.params.estimate * plan.tokens.estimate * 6.0 / flops - 1.0).abs() < 1e-9);
    }
}
