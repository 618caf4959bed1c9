//! The law-fitting engine: Chinchilla "approach 3" (Hoffmann et al. 2022, §3.3 Eq. 3 and App. D.2).
//!
//! A [`Law`] predicts a loss from inputs (N, D, r, ...) and knows its analytic gradient. [`fit`] minimises the
//! **summed** Huber loss (δ = 1e-3 by default) of the log residuals `log L̂(x_i) − log L_i` with L-BFGS (More–Thuente
//! line search; `fit/lbfgs.rs`) from a grid of initialisations, runs the starts in parallel with rayon and keeps the best
//! optimum (ties broken by start index, so the answer is the same at any thread count). Parameter bounds are enforced
//! by a smooth quadratic penalty outside the box, so the optimiser stays an unconstrained L-BFGS.
//!
//! On top of it: [`bootstrap`] (rows resampled with a seeded generator, refits warm-started from the best optimum) gives
//! percentile intervals on parameters and predictions; [`GoodnessOfFit`] reports the Huber objective, R² of the loss
//! and RMSE of the log loss; [`cross_validate`] runs k-fold cross-validation grouped by the distinct values of a
//! column (N, D or r), the protocol of the D-CPT paper (Que et al. 2024, §4).
use rand::RngExt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use trainlab_core::{Error, Result, Seed};

pub mod csv;
pub(crate) mod fastmath;
mod lbfgs;

/// Where an input of a law may lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputDomain {
    /// Strictly positive (model size N, tokens D, a loss).
    Positive,
    /// In `[0, 1]` (a mixture ratio r; 0 is allowed).
    UnitInterval,
    /// Zero or more (examples seen from one domain: none yet is allowed).
    NonNegative,
}

/// One input of a law (a column of the data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Column name, e.g. `N`.
    pub name: String,
    /// Valid range.
    pub domain: InputDomain,
}

/// One fitted parameter, in the optimiser's coordinates (log-coefficients are named `a`, `b`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// Name, e.g. `alpha`.
    pub name: String,
    /// Lower bound (may be `-inf`).
    pub lower: f64,
    /// Upper bound (may be `+inf`).
    pub upper: f64,
    /// Initial values tried for this parameter; the start grid is the Cartesian product over parameters.
    pub grid: Vec<f64>,
}

impl ParamSpec {
    /// Builds a spec.
    pub fn new(name: &str, lower: f64, upper: f64, grid: &[f64]) -> Self {
        ParamSpec {
            name: name.to_string(),
            lower,
            upper,
            grid: grid.to_vec(),
        }
    }
}

/// A parametric loss law `L(params; x)`, evaluated in log space (the approach-3 fit is on log loss).
pub trait Law: Send + Sync {
    /// Short name, e.g. `chinchilla`.
    fn name(&self) -> &str;
    /// The formula, for reports.
    fn formula(&self) -> &str;
    /// Fitted parameters in optimiser coordinates, with bounds and the start grid.
    fn params(&self) -> &[ParamSpec];
    /// Inputs, in the order `x` is passed.
    fn inputs(&self) -> &[InputSpec];
    /// `log L(p; x)`.
    fn log_eval(&self, p: &[f64], x: &[f64]) -> f64;
    /// `log L(p; x)`, writing `∂ log L / ∂p` into `g` (length = number of parameters).
    fn log_grad(&self, p: &[f64], x: &[f64], g: &mut [f64]) -> f64;
    /// Values per row that [`Law::prepare`] writes (default: the number of inputs).
    fn prepared_len(&self) -> usize {
        self.inputs().len()
    }
    /// Writes into `z` (length [`Law::prepared_len`]) what [`Law::log_grad_prepared`] reads for the row `x`: the work
    /// that depends on the inputs only (e.g. `log N`), done once per fit instead of once per evaluation. Default: the
    /// row itself.
    fn prepare(&self, x: &[f64], z: &mut [f64]) {
        z.copy_from_slice(x)
    }
    /// [`Law::log_grad`] on a row prepared by [`Law::prepare`]; the fitter's inner loop. A law overriding `prepare`
    /// must override this too (and may define `log_grad` through both).
    fn log_grad_prepared(&self, p: &[f64], z: &[f64], g: &mut [f64]) -> f64 {
        self.log_grad(p, z, g)
    }
    /// [`Law::log_grad_prepared`] at every row of `z` (rows of [`Law::prepared_len`] values): writes `log L` into
    /// `lp[i]` and `∂ log L/∂p_j` into `g[j·n + i]` (n = `lp.len()` rows; one column per parameter, so that the
    /// fitter's sums over rows run over contiguous memory). The fitter calls this once per evaluation of its
    /// objective; a law may override it to share work between rows. Default: row by row.
    fn log_grad_rows(&self, p: &[f64], z: &[f64], lp: &mut [f64], g: &mut [f64]) {
        let (n, k) = (lp.len(), p.len());
        let mut row = vec![0.0; k];
        for (i, zi) in z.chunks_exact(self.prepared_len().max(1)).take(n).enumerate() {
            lp[i] = self.log_grad_prepared(p, zi, &mut row);
            for (j, v) in row.iter().enumerate() {
                g[j * n + i] = *v;
            }
        }
    }
    /// `L(p; x)`.
    fn eval(&self, p: &[f64], x: &[f64]) -> f64 {
        self.log_eval(p, x).exp()
    }
    /// `L(p; x)`, writing the analytic gradient `∂L/∂p` into `g`.
    fn grad(&self, p: &[f64], x: &[f64], g: &mut [f64]) -> f64 {
        let l = self.log_grad(p, x, g).exp();
        for gi in g.iter_mut() {
            *gi *= l;
        }
        l
    }
    /// Parameters in natural units (e.g. `A = exp(a)`), for reports.
    fn natural(&self, p: &[f64]) -> Vec<(String, f64)> {
        self.params()
            .iter()
            .map(|s| s.name.clone())
            .zip(p.iter().copied())
            .collect()
    }
}

/// Log-sum-exp of `terms` (entries of `-inf` drop out); writes the softmax weights into `w`.
pub fn lse(terms: &[f64], w: &mut [f64]) -> f64 {
    // The largest term (the first of equals) contributes exp(0) = 1: no call to `exp` for it.
    let (mut m, mut at) = (f64::NEG_INFINITY, usize::MAX);
    for (j, &t) in terms.iter().enumerate() {
        if t > m {
            (m, at) = (t, j);
        }
    }
    if !m.is_finite() {
        w.iter_mut().for_each(|x| *x = 0.0);
        return m;
    }
    let mut s = 0.0;
    for (j, (t, wi)) in terms.iter().zip(w.iter_mut()).enumerate() {
        *wi = if j == at { 1.0 } else { fastmath::exp(t - m) };
        s += *wi;
    }
    let inv = 1.0 / s;
    for wi in w.iter_mut() {
        *wi *= inv;
    }
    m + fastmath::ln(s)
}

/// Huber loss with threshold `delta` (SciPy's `scipy.special.huber`): `r²/2` inside, `δ(|r| − δ/2)` outside.
pub fn huber(delta: f64, r: f64) -> f64 {
    // Branch-free and bit-for-bit the two-case formula: with c = clamp(r, −δ, δ), c·(r − c/2) is (r/2)·r inside
    // (r − r/2 is exact) and ±δ·(r ∓ δ/2) outside.
    let c = huber_deriv(delta, r);
    c * (r - 0.5 * c)
}

/// Derivative of [`huber`] in `r`: `r` clamped to `[−δ, δ]`.
fn huber_deriv(delta: f64, r: f64) -> f64 {
    r.clamp(-delta, delta)
}

/// Observations: one row of inputs per run/checkpoint and the observed loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// Input names, in the law's order.
    pub inputs: Vec<String>,
    /// Rows of inputs.
    pub x: Vec<Vec<f64>>,
    /// Observed losses (> 0).
    pub y: Vec<f64>,
}

impl Dataset {
    /// Builds a dataset, checking shapes, finiteness and positivity of the losses.
    pub fn new(inputs: Vec<String>, x: Vec<Vec<f64>>, y: Vec<f64>) -> Result<Self> {
        if x.len() != y.len() {
            return Err(Error::invalid(
                "data",
                format!("{} rows of inputs, {} losses", x.len(), y.len()),
                "shapes differ",
                "give one loss per row",
            ));
        }
        for (i, (row, yi)) in x.iter().zip(&y).enumerate() {
            if row.len() != inputs.len() {
                return Err(Error::invalid(
                    format!("data.row[{}]", i + 1),
                    row.len(),
                    format!("expected {} inputs", inputs.len()),
                    "give every row the same columns",
                ));
            }
            if !(yi.is_finite() && *yi > 0.0) {
                return Err(Error::invalid(
                    format!("data.row[{}].loss", i + 1),
                    yi,
                    "a loss must be finite and > 0",
                    "remove or correct the row",
                ));
            }
        }
        Ok(Dataset { inputs, x, y })
    }
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.y.len()
    }
    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
    /// Values of input column `j`.
    pub fn column(&self, j: usize) -> Vec<f64> {
        self.x.iter().map(|r| r[j]).collect()
    }
    /// Index of an input column by (case-insensitive) name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|c| c.eq_ignore_ascii_case(name))
    }
    /// The rows where `keep[i]` is true.
    pub fn subset(&self, keep: &[bool]) -> Dataset {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for ((xi, yi), k) in self.x.iter().zip(&self.y).zip(keep) {
            if *k {
                x.push(xi.clone());
                y.push(*yi);
            }
        }
        Dataset {
            inputs: self.inputs.clone(),
            x,
            y,
        }
    }
    /// Checks the inputs against the law's domains (row and column in the message).
    pub fn validate_for(&self, law: &dyn Law) -> Result<()> {
        let specs = law.inputs();
        if specs.len() != self.inputs.len() {
            return Err(Error::invalid(
                "data.columns",
                self.inputs.join(","),
                format!("law `{}` needs {} inputs", law.name(), specs.len()),
                format!(
                    "give columns {}",
                    specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(",")
                ),
            ));
        }
        for (i, row) in self.x.iter().enumerate() {
            for (j, spec) in specs.iter().enumerate() {
                let v = row[j];
                let ok = match spec.domain {
                    InputDomain::Positive => v.is_finite() && v > 0.0,
                    InputDomain::UnitInterval => v.is_finite() && (0.0..=1.0).contains(&v),
                    InputDomain::NonNegative => v.is_finite() && v >= 0.0,
                };
                if !ok {
                    let want = match spec.domain {
                        InputDomain::Positive => "must be finite and > 0",
                        InputDomain::UnitInterval => "must lie in [0, 1]",
                        InputDomain::NonNegative => "must be finite and >= 0",
                    };
                    return Err(Error::invalid(
                        format!("data.row[{}].{}", i + 1, spec.name),
                        v,
                        want,
                        "correct or remove the row",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Settings of an approach-3 fit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FitConfig {
    /// Huber threshold on log residuals (Chinchilla: 1e-3).
    pub delta: f64,
    /// Most starts taken from the grid; when the full product is larger, a seeded subset is used.
    pub max_starts: usize,
    /// L-BFGS iterations per start.
    pub max_iters: u64,
    /// L-BFGS history length.
    pub memory: usize,
    /// Weight of the quadratic penalty for leaving the parameter box.
    pub bound_penalty: f64,
    /// Seed for start subsampling and the bootstrap.
    pub seed: Seed,
    /// Extra grid starts used by each bootstrap refit (besides the full-data optimum).
    pub bootstrap_starts: usize,
    /// A shared cancel flag (Ctrl-C). Once set, starts and bootstrap replicates not yet begun are skipped: a fit
    /// keeps the best of the starts that ran, a bootstrap the replicates that ran; [`cross_validate`] stops with
    /// [`Error::Interrupted`]. Not serialised.
    #[serde(skip)]
    pub cancel: Option<Arc<AtomicBool>>,
    /// Progress of the bootstrap (replicates done of asked). Not serialised.
    #[serde(skip)]
    pub progress: Option<trainlab_core::Progress>,
}

impl FitConfig {
    /// True once the cancel flag is set.
    pub fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            delta: 1e-3,
            max_starts: 4500,
            max_iters: 1000,
            memory: 10,
            bound_penalty: 1e2,
            seed: Seed::default(),
            bootstrap_starts: 4,
            cancel: None,
            progress: None,
        }
    }
}

/// Goodness of fit of a law on a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GoodnessOfFit {
    /// Summed Huber loss of the log residuals.
    pub huber: f64,
    /// Coefficient of determination of the loss (not log loss).
    pub r2: f64,
    /// Root-mean-square error of the log loss.
    pub rmse_log: f64,
    /// Mean absolute relative error of the loss.
    pub mape: f64,
    /// Number of rows.
    pub n: usize,
}

impl GoodnessOfFit {
    /// Computes the statistics from predictions and observations.
    pub fn from_predictions(pred: &[f64], obs: &[f64], delta: f64) -> Self {
        let n = obs.len();
        let mean = obs.iter().sum::<f64>() / n.max(1) as f64;
        let (mut ss_res, mut ss_tot, mut hub, mut sq_log, mut ape) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (p, o) in pred.iter().zip(obs) {
            ss_res += (p - o) * (p - o);
            ss_tot += (o - mean) * (o - mean);
            let r = p.ln() - o.ln();
            hub += huber(delta, r);
            sq_log += r * r;
            ape += ((p - o) / o).abs();
        }
        GoodnessOfFit {
            huber: hub,
            r2: if ss_tot > 0.0 { 1.0 - ss_res / ss_tot } else { f64::NAN },
            rmse_log: (sq_log / n.max(1) as f64).sqrt(),
            mape: ape / n.max(1) as f64,
            n,
        }
    }
    /// Evaluates `params` of `law` on `data`.
    pub fn of(law: &dyn Law, params: &[f64], data: &Dataset, delta: f64) -> Self {
        let pred: Vec<f64> = data.x.iter().map(|x| law.eval(params, x)).collect();
        Self::from_predictions(&pred, &data.y, delta)
    }
}

/// The result of an approach-3 fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitResult {
    /// Law name.
    pub law: String,
    /// Best parameters, optimiser coordinates.
    pub params: Vec<f64>,
    /// Parameter names.
    pub names: Vec<String>,
    /// Objective at the optimum (summed Huber + bound penalty).
    pub objective: f64,
    /// Starts run (fewer than planned when the fit was cancelled part-way).
    pub starts: usize,
    /// Index of the start that won.
    pub best_start: usize,
    /// Fit statistics on the training data.
    pub gof: GoodnessOfFit,
    /// True when the optimum lies inside the parameter box (no penalty active).
    pub inside_bounds: bool,
}

/// The objective of one fit: summed, optionally weighted Huber on log residuals plus the bound penalty.
///
/// Built once per fit and shared by every start (it is read-only): the input-only work of each row ([`Law::prepare`],
/// e.g. `log N`) and `log y` are done here, once.
pub struct Objective<'a> {
    law: &'a dyn Law,
    /// Prepared rows, `width` values each.
    z: Vec<f64>,
    width: usize,
    log_y: Vec<f64>,
    weights: Option<&'a [f64]>,
    delta: f64,
    penalty: f64,
}

/// Buffers of one evaluation of an [`Objective`]: `log L` per row and the gradient columns. One per start, reused by
/// all its evaluations.
struct Scratch {
    lp: Vec<f64>,
    g: Vec<f64>,
}

impl<'a> Objective<'a> {
    /// Builds the objective for `law` on `data` (row weights = bootstrap counts, or `None` for all ones).
    pub fn new(law: &'a dyn Law, data: &'a Dataset, weights: Option<&'a [f64]>, delta: f64, penalty: f64) -> Self {
        let width = law.prepared_len();
        let mut z = vec![0.0; width * data.len()];
        for (row, x) in z.chunks_exact_mut(width.max(1)).zip(&data.x) {
            law.prepare(x, row);
        }
        Objective {
            law,
            z,
            width,
            log_y: data.y.iter().map(|y| y.ln()).collect(),
            weights,
            delta,
            penalty,
        }
    }

    fn scratch(&self) -> Scratch {
        let n = self.log_y.len();
        Scratch {
            lp: vec![0.0; n],
            g: vec![0.0; n * self.law.params().len()],
        }
    }

    /// Objective value and gradient at `p` (`+inf` and a zero gradient where the value is not finite).
    pub fn value_grad(&self, p: &[f64], grad: &mut [f64]) -> f64 {
        self.value_grad_in(p, grad, &mut self.scratch())
    }

    fn value_grad_in(&self, p: &[f64], grad: &mut [f64], sc: &mut Scratch) -> f64 {
        debug_assert_eq!(self.width, self.law.prepared_len());
        self.law.log_grad_rows(p, &self.z, &mut sc.lp, &mut sc.g);
        let mut total = fastmath::vectorised(HuberRows {
            lp: &mut sc.lp,
            log_y: &self.log_y,
            weights: self.weights,
            delta: self.delta,
        });
        // Gradient: Σ_rows (weighted Huber derivative) × ∂ log L/∂p_j, one contiguous column per parameter.
        let n = sc.lp.len();
        for (j, gj) in grad.iter_mut().enumerate() {
            *gj = fastmath::vectorised(Dot(&sc.lp, &sc.g[j * n..(j + 1) * n]));
        }
        for (j, spec) in self.law.params().iter().enumerate() {
            let v = p[j];
            if v < spec.lower {
                total += self.penalty * (spec.lower - v).powi(2);
                grad[j] -= 2.0 * self.penalty * (spec.lower - v);
            } else if v > spec.upper {
                total += self.penalty * (v - spec.upper).powi(2);
                grad[j] += 2.0 * self.penalty * (v - spec.upper);
            }
        }
        if !total.is_finite() {
            grad.iter_mut().for_each(|g| *g = 0.0);
            return f64::INFINITY;
        }
        total
    }
}

/// Summed (weighted) Huber of the residuals `lp[i] − log_y[i]`; replaces each `lp[i]` by its weighted derivative.
/// Rows of weight 0 (left out of a bootstrap resample) count 0. The sum runs in four fixed lanes (row i into lane
/// i mod 4, lanes added at the end), so that it vectorises with the same bits on every machine.
struct HuberRows<'s> {
    lp: &'s mut [f64],
    log_y: &'s [f64],
    weights: Option<&'s [f64]>,
    delta: f64,
}

impl fastmath::Kernel for HuberRows<'_> {
    type Output = f64;
    #[inline(always)]
    fn run(self) -> f64 {
        let HuberRows {
            lp,
            log_y,
            weights,
            delta,
        } = self;
        let n = lp.len().min(log_y.len());
        let (lp, log_y) = (&mut lp[..n], &log_y[..n]);
        let (lc, lt) = lp.as_chunks_mut::<4>();
        let (yc, yt) = log_y.as_chunks::<4>();
        let mut lanes = [0.0; 4];
        match weights {
            None => {
                let row = |l: &mut f64, ly: f64, lane: &mut f64| {
                    let r = *l - ly;
                    *lane += huber(delta, r);
                    *l = huber_deriv(delta, r);
                };
                for (l4, y4) in lc.iter_mut().zip(yc) {
                    for j in 0..4 {
                        row(&mut l4[j], y4[j], &mut lanes[j]);
                    }
                }
                for (j, (l, ly)) in lt.iter_mut().zip(yt).enumerate() {
                    row(l, *ly, &mut lanes[j]);
                }
            }
            Some(w) => {
                let (wc, wt) = w[..n].as_chunks::<4>();
                let row = |l: &mut f64, ly: f64, w: f64, lane: &mut f64| {
                    let r = *l - ly;
                    let (h, d) = (huber(delta, r), huber_deriv(delta, r));
                    *lane += if w == 0.0 { 0.0 } else { w * h };
                    *l = if w == 0.0 { 0.0 } else { w * d };
                };
                for ((l4, y4), w4) in lc.iter_mut().zip(yc).zip(wc) {
                    for j in 0..4 {
                        row(&mut l4[j], y4[j], w4[j], &mut lanes[j]);
                    }
                }
                for (j, ((l, ly), w)) in lt.iter_mut().zip(yt).zip(wt).enumerate() {
                    row(l, *ly, *w, &mut lanes[j]);
                }
            }
        }
        (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
    }
}

/// `Σ a[i]·b[i]` in four fixed lanes (as [`HuberRows`]).
struct Dot<'s>(&'s [f64], &'s [f64]);

impl fastmath::Kernel for Dot<'_> {
    type Output = f64;
    #[inline(always)]
    fn run(self) -> f64 {
        let n = self.0.len().min(self.1.len());
        let (ac, at) = self.0[..n].as_chunks::<4>();
        let (bc, bt) = self.1[..n].as_chunks::<4>();
        let mut lanes = [0.0; 4];
        for (a4, b4) in ac.iter().zip(bc) {
            for j in 0..4 {
                lanes[j] += a4[j] * b4[j];
            }
        }
        for (j, (a, b)) in at.iter().zip(bt).enumerate() {
            lanes[j] += a * b;
        }
        (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
    }
}

/// Stopping rule of the search from each start: SciPy's L-BFGS-B defaults (`factr` = 1e7, i.e. stop when an iteration
/// lowers the objective by at most 1e7·ε·max(|f_k|, |f_k+1|, 1); `pgtol` = 1e-5 on the largest gradient component),
/// so that a start does the work a SciPy start does.
const SEARCH: lbfgs::Options = lbfgs::Options {
    memory: 10,
    max_iters: 1000,
    ftol: 1e7 * f64::EPSILON,
    f_floor: 1.0,
    gtol: 1e-5,
};

/// Stopping rule of the polish of the winning start: a purely relative decrease of 1e-10 (far tighter than
/// [`SEARCH`] on objectives below 1, such as a summed Huber with δ = 1e-3) or a gradient of 1e-12. On the approach-3
/// bench the polished objective agrees with a run to 1e-13 in 14 significant digits.
const POLISH: lbfgs::Options = lbfgs::Options {
    memory: 10,
    max_iters: 1000,
    ftol: 1e-10,
    f_floor: 0.0,
    gtol: 1e-12,
};

fn run_lbfgs(obj: &Objective<'_>, start: &[f64], cfg: &FitConfig, phases: &[lbfgs::Options]) -> (Vec<f64>, f64) {
    let phases: Vec<lbfgs::Options> = phases
        .iter()
        .map(|rule| lbfgs::Options {
            memory: cfg.memory,
            max_iters: cfg.max_iters,
            ..*rule
        })
        .collect();
    let mut sc = obj.scratch();
    let out = lbfgs::minimise(|p, g| obj.value_grad_in(p, g, &mut sc), start, &phases);
    (out.x, out.f)
}

/// Runs L-BFGS (More–Thuente line search, `cfg.memory` pairs, at most `cfg.max_iters` iterations per phase) from
/// `start` to full precision: the search a multi-start runs from every start, continued under the polish rule it
/// gives its winner. Returns the lowest point reached and its objective (never fails: a start where the objective
/// is not finite returns itself and `+inf`).
pub fn minimise_from(obj: &Objective<'_>, start: &[f64], cfg: &FitConfig) -> (Vec<f64>, f64) {
    run_lbfgs(obj, start, cfg, &[SEARCH, POLISH])
}

/// The multi-start: the search from every start (in parallel when `parallel`), the lowest kept (ties to the lowest
/// index, so the same at any thread count), and that start run again to full precision ([`minimise_from`]: the same
/// search, deterministic, then the polish). Returns (winning index, point, objective).
/// The best start of `starts` (searched, then polished) and how many starts ran: a start not begun when
/// `cfg.cancel` is raised is skipped.
fn best_of(obj: &Objective<'_>, starts: &[Vec<f64>], cfg: &FitConfig, parallel: bool) -> (usize, Vec<f64>, f64, usize) {
    let ran = AtomicUsize::new(0);
    let search = |s: &Vec<f64>| {
        if cfg.cancelled() {
            return (s.clone(), f64::INFINITY);
        }
        ran.fetch_add(1, Ordering::Relaxed);
        run_lbfgs(obj, s, cfg, &[SEARCH])
    };
    let results: Vec<(Vec<f64>, f64)> = if parallel {
        starts.par_iter().map(search).collect()
    } else {
        starts.iter().map(search).collect()
    };
    let mut best = (0usize, starts.first().cloned().unwrap_or_default(), f64::INFINITY);
    for (i, (p, c)) in results.into_iter().enumerate() {
        if c < best.2 {
            best = (i, p, c);
        }
    }
    if best.2.is_finite() {
        let (p, c) = minimise_from(obj, &starts[best.0], cfg);
        if c < best.2 {
            (best.1, best.2) = (p, c);
        }
    }
    (best.0, best.1, best.2, ran.into_inner())
}

/// The start grid of `law`: the Cartesian product of each parameter's grid, or a seeded subset of `max` points of it
/// (sampled without replacement, returned in grid order) when the product is larger.
pub fn start_grid(law: &dyn Law, max: usize, seed: Seed) -> Vec<Vec<f64>> {
    let specs = law.params();
    let sizes: Vec<usize> = specs.iter().map(|s| s.grid.len().max(1)).collect();
    let total: u128 = sizes.iter().map(|&s| s as u128).product();
    let decode = |mut idx: u128| -> Vec<f64> {
        let mut p = vec![0.0; specs.len()];
        for j in (0..specs.len()).rev() {
            let s = sizes[j] as u128;
            let k = (idx % s) as usize;
            idx /= s;
            p[j] = specs[j].grid.get(k).copied().unwrap_or(0.0);
        }
        p
    };
    if total <= max as u128 {
        return (0..total).map(decode).collect();
    }
    let mut rng = seed.derive("fit.starts").rng();
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < max {
        let hi = rng.random::<u64>() as u128;
        let lo = rng.random::<u64>() as u128;
        picked.insert(((hi << 64) | lo) % total);
    }
    picked.into_iter().map(decode).collect()
}

fn run_starts(
    law: &dyn Law,
    data: &Dataset,
    weights: Option<&[f64]>,
    starts: &[Vec<f64>],
    cfg: &FitConfig,
) -> (usize, Vec<f64>, f64, usize) {
    let obj = Objective::new(law, data, weights, cfg.delta, cfg.bound_penalty);
    best_of(&obj, starts, cfg, true)
}

fn check_config(cfg: &FitConfig) -> Result<()> {
    trainlab_core::error::check::positive("fit.delta", cfg.delta)?;
    trainlab_core::error::check::at_least("fit.max_starts", cfg.max_starts as u64, 1)?;
    trainlab_core::error::check::at_least("fit.max_iters", cfg.max_iters, 1)?;
    Ok(())
}

/// Fits `law` to `data` by approach 3 from the law's start grid.
pub fn fit(law: &dyn Law, data: &Dataset, cfg: &FitConfig) -> Result<FitResult> {
    let starts = start_grid(law, cfg.max_starts, cfg.seed);
    fit_from(law, data, cfg, &starts)
}

/// Fits `law` to `data` from explicit starts.
pub fn fit_from(law: &dyn Law, data: &Dataset, cfg: &FitConfig, starts: &[Vec<f64>]) -> Result<FitResult> {
    check_config(cfg)?;
    data.validate_for(law)?;
    let k = law.params().len();
    if data.len() < k {
        return Err(Error::invalid(
            "data",
            data.len(),
            format!("law `{}` has {k} parameters; fewer rows than parameters", law.name()),
            "give more rows (runs x checkpoints)",
        ));
    }
    if starts.is_empty() || starts.iter().any(|s| s.len() != k) {
        return Err(Error::invalid(
            "fit.starts",
            starts.len(),
            format!("need at least one start of length {k}"),
            "check the law's start grid",
        ));
    }
    let (best_start, params, objective, ran) = run_starts(law, data, None, starts, cfg);
    if !objective.is_finite() && cfg.cancelled() {
        return Err(Error::Interrupted);
    }
    if !objective.is_finite() {
        return Err(Error::Backend(format!(
            "fit of `{}` failed: no start reached a finite objective",
            law.name()
        )));
    }
    let inside_bounds = law
        .params()
        .iter()
        .zip(&params)
        .all(|(s, v)| *v >= s.lower && *v <= s.upper);
    Ok(FitResult {
        law: law.name().to_string(),
        names: law.params().iter().map(|s| s.name.clone()).collect(),
        gof: GoodnessOfFit::of(law, &params, data, cfg.delta),
        params,
        objective,
        starts: ran,
        best_start,
        inside_bounds,
    })
}

/// Bootstrap replicates of a fit: parameter vectors refitted on resampled rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// One parameter vector per replicate, in replicate order.
    pub params: Vec<Vec<f64>>,
}

/// A two-sided percentile interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ci {
    /// Point estimate (from the full-data fit).
    pub estimate: f64,
    /// Lower end.
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
}

/// The `q`-quantile of a sample (type 7, NaNs dropped): the one in `trainlab_core::stats`.
pub use trainlab_core::stats::quantile;

impl Bootstrap {
    /// Percentile interval at `level` (e.g. 0.9) of an arbitrary statistic of the parameters.
    pub fn interval(&self, estimate: f64, level: f64, stat: impl Fn(&[f64]) -> f64) -> Ci {
        let v: Vec<f64> = self.params.iter().map(|p| stat(p)).collect();
        let a = (1.0 - level) / 2.0;
        Ci {
            estimate,
            lo: quantile(&v, a),
            hi: quantile(&v, 1.0 - a),
        }
    }
    /// Intervals on each parameter (optimiser coordinates).
    pub fn param_intervals(&self, best: &[f64], level: f64) -> Vec<Ci> {
        (0..best.len())
            .map(|j| self.interval(best[j], level, |p| p[j]))
            .collect()
    }
    /// Interval on the prediction of `law` at `x`.
    pub fn predict(&self, law: &dyn Law, best: &[f64], x: &[f64], level: f64) -> Ci {
        self.interval(law.eval(best, x), level, |p| law.eval(p, x))
    }
}

/// Nonparametric bootstrap: `reps` resamples of the rows (with replacement, seeded by `cfg.seed`), each refitted from
/// the full-data optimum plus `cfg.bootstrap_starts` grid starts. Replicates run in parallel, kept in order.
pub fn bootstrap(law: &dyn Law, data: &Dataset, best: &FitResult, reps: usize, cfg: &FitConfig) -> Result<Bootstrap> {
    check_config(cfg)?;
    data.validate_for(law)?;
    let n = data.len();
    let mut starts = vec![best.params.clone()];
    starts.extend(start_grid(
        law,
        cfg.bootstrap_starts,
        cfg.seed.derive("bootstrap.starts"),
    ));
    let base = cfg.seed.derive("bootstrap");
    let done = std::sync::atomic::AtomicU64::new(0);
    let params: Vec<Vec<f64>> = (0..reps)
        .into_par_iter()
        .filter(|_| !cfg.cancelled())
        .map(|b| {
            let mut rng = base.index(b as u64).rng();
            let mut w = vec![0.0; n];
            for _ in 0..n {
                w[rng.random_range(0..n)] += 1.0;
            }
            let inner = FitConfig {
                seed: cfg.seed,
                ..cfg.clone()
            };
            let obj = Objective::new(law, data, Some(&w), inner.delta, inner.bound_penalty);
            let p = best_of(&obj, &starts, &inner, false).1;
            if let Some(pr) = &cfg.progress {
                pr.report(done.fetch_add(1, Ordering::Relaxed) + 1, reps as u64);
            }
            p
        })
        .collect();
    Ok(Bootstrap { params })
}

/// One fold of a grouped cross-validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fold {
    /// Group values held out.
    pub held_out: Vec<f64>,
    /// Fit on the other groups.
    pub fit: FitResult,
    /// Statistics on the held-out rows.
    pub test: GoodnessOfFit,
}

/// Grouped k-fold cross-validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossValidation {
    /// Column the folds are grouped by.
    pub group_by: String,
    /// The folds.
    pub folds: Vec<Fold>,
    /// Statistics over all out-of-fold predictions pooled.
    pub pooled: GoodnessOfFit,
}

/// Distinct values of a column, sorted.
pub fn distinct(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.dedup();
    v
}

/// k-fold cross-validation grouped by the distinct values of input column `group_col` (as in the D-CPT paper's
/// model-size, data-size and ratio generalisation tables): sorted distinct values are dealt round-robin into `k`
/// folds; each fold is fitted on the other folds' rows and scored on its own.
pub fn cross_validate(
    law: &dyn Law,
    data: &Dataset,
    group_col: usize,
    k: usize,
    cfg: &FitConfig,
) -> Result<CrossValidation> {
    let col = data.column(group_col);
    let groups = distinct(&col);
    if k < 2 || k > groups.len() {
        return Err(Error::invalid(
            "cv.folds",
            k,
            format!("need 2 <= k <= {} (distinct values of the column)", groups.len()),
            "choose fewer folds or a column with more distinct values",
        ));
    }
    let fold_of = |v: f64| groups.iter().position(|g| *g == v).unwrap_or(0) % k;
    let starts = start_grid(law, cfg.max_starts, cfg.seed);
    let mut folds = Vec::new();
    let mut pred = vec![f64::NAN; data.len()];
    for f in 0..k {
        if cfg.cancelled() {
            return Err(Error::Interrupted);
        }
        let test_mask: Vec<bool> = col.iter().map(|&v| fold_of(v) == f).collect();
        let train_mask: Vec<bool> = test_mask.iter().map(|t| !t).collect();
        let train = data.subset(&train_mask);
        let test = data.subset(&test_mask);
        let fr = fit_from(law, &train, cfg, &starts)?;
        for (i, m) in test_mask.iter().enumerate() {
            if *m {
                pred[i] = law.eval(&fr.params, &data.x[i]);
            }
        }
        folds.push(Fold {
            held_out: groups.iter().copied().filter(|g| fold_of(*g) == f).collect(),
            test: GoodnessOfFit::of(law, &fr.params, &test, cfg.delta),
            fit: fr,
        });
    }
    Ok(CrossValidation {
        group_by: data.inputs[group_col].clone(),
        folds,
        pooled: GoodnessOfFit::from_predictions(&pred, &data.y, cfg.delta),
    })
}

/// Fits on the rows whose column `col` is not in `held_out` and scores the rows whose value is (e.g. hold out two
/// mixture ratios, as in the D-CPT paper's ratio-generalisation table).
pub fn holdout(law: &dyn Law, data: &Dataset, col: usize, held_out: &[f64], cfg: &FitConfig) -> Result<Fold> {
    let test_mask: Vec<bool> = data.x.iter().map(|r| held_out.contains(&r[col])).collect();
    if !test_mask.iter().any(|t| *t) || test_mask.iter().all(|t| *t) {
        return Err(Error::invalid(
            "holdout",
            format!("{held_out:?}"),
            format!("must select some but not all rows of column `{}`", data.inputs[col]),
            "hold out values that occur in the data",
        ));
    }
    let train = data.subset(&test_mask.iter().map(|t| !t).collect::<Vec<_>>());
    let test = data.subset(&test_mask);
    let fr = fit(law, &train, cfg)?;
    Ok(Fold {
        held_out: held_out.to_vec(),
        test: GoodnessOfFit::of(law, &fr.params, &test, cfg.delta),
        fit: fr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::laws::Chinchilla;

    #[test]
    fn huber_matches_scipy_definition() {
        assert_eq!(huber(1.0, 0.5), 0.125);
        assert!((huber(1e-3, 0.01) - 1e-3 * (0.01 - 0.5e-3)).abs() < 1e-15);
        assert_eq!(huber_deriv(1e-3, -0.5), -1e-3);
    }

    #[test]
    fn lse_drops_minus_infinity() {
        let mut w = [0.0; 3];
        let v = lse(&[0.0, f64::NEG_INFINITY, 0.0], &mut w);
        assert!((v - 2f64.ln()).abs() < 1e-12);
        assert_eq!(w, [0.5, 0.0, 0.5]);
    }

    #[test]
    fn start_grid_full_and_subsampled() {
        let law = Chinchilla::new();
        assert_eq!(start_grid(&law, 10_000, Seed(1)).len(), 4500);
        let s = start_grid(&law, 50, Seed(1));
        assert_eq!(s.len(), 50);
        assert_eq!(s, start_grid(&law, 50, Seed(1)));
    }

    /// The objective (rows at once, column gradients, four-lane sums) against its definition written row by row:
    /// Σ w_i · huber(log L(x_i) − log y_i) plus the bound penalty, with and without weights (zeros included).
    #[test]
    fn objective_matches_its_definition() {
        use crate::laws::DcptL3;
        let law = DcptL3::new();
        let truth = DcptL3::pack(1.5, 300.0, 800.0, 0.05, 0.3, 0.3, 0.5, 0.4, 0.02);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..23 {
            let row = vec![
                1e8 * (1.0 + i as f64),
                1e9 * (1.0 + (i % 5) as f64),
                (i % 6) as f64 / 5.0,
            ];
            y.push(law.eval(&truth, &row) * (1.0 + 0.01 * ((i * 7 % 5) as f64 - 2.0)));
            x.push(row);
        }
        let data = Dataset::new(vec!["N".into(), "D".into(), "r".into()], x, y).unwrap();
        let weights: Vec<f64> = (0..23).map(|i| (i % 3) as f64).collect();
        // Inside the box, and with alpha below its lower bound (the penalty).
        let mut outside = truth.clone();
        outside[4] = -0.2;
        for w in [None, Some(weights.as_slice())] {
            let obj = Objective::new(&law, &data, w, 1e-3, 1e2);
            for p in [&truth, &outside] {
                let k = p.len();
                let mut g = vec![0.0; k];
                let v = obj.value_grad(p, &mut g);
                let (mut want, mut want_g, mut gi) = (0.0, vec![0.0; k], vec![0.0; k]);
                for (i, (xi, yi)) in data.x.iter().zip(&data.y).enumerate() {
                    let wi = w.map_or(1.0, |w| w[i]);
                    let r = law.log_grad(p, xi, &mut gi) - yi.ln();
                    want += wi * huber(1e-3, r);
                    for j in 0..k {
                        want_g[j] += wi * huber_deriv(1e-3, r) * gi[j];
                    }
                }
                for (j, spec) in law.params().iter().enumerate() {
                    if p[j] < spec.lower {
                        want += 1e2 * (spec.lower - p[j]).powi(2);
                        want_g[j] -= 2e2 * (spec.lower - p[j]);
                    }
                }
                assert!((v - want).abs() <= 1e-12 * want, "{v} vs {want}");
                for j in 0..k {
                    assert!(
                        (g[j] - want_g[j]).abs() <= 1e-12 * (1e-6 + want_g[j].abs()),
                        "param {j}: {g:?} vs {want_g:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantile_interpolates() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.25), 1.25);
    }
}

#[cfg(test)]
mod recovery_tests;
