//! The gap-dynamics law of a multi-domain distillation (DDK, Liu et al. 2024): the student's validation loss on each
//! domain as a function of the examples it has seen from every domain, fitted by the project's fit engine
//! ([`crate::fit`]) on real runs and read by the analytical (`gap_law`) and simulated (`ddk_sim`) backends of the
//! `distillation` kind.
//!
//! For domain `i` of `n`, with `D_j` examples seen from domain `j` whose pool holds `P_j` unique examples:
//!
//! ```text
//! L_i = E_i + A_i · [(1 − f_i) · X_i^(−β_i) + f_i · X0_i^(−β_i)] + f_i · Σ_{j≠i} (π_j · S_ij / h_i) · H_j
//! X0_i = 1 + τ · Σ_{j≠i} D'_j,   X_i = X0_i + D'_i
//! D'_j = U_j + U_j · R* · (1 − exp(−R_j / R*)),   U_j = min(D_j, P_j),   R_j = (D_j − U_j) / U_j
//! f_i = 1 − exp(−h_i),   h_i = Σ_{j≠i} π_j · S_ij
//! S_ij = Σ_{examples t from domain j} exp(−n_i(t) / ν)   (n_i(t): examples from domain i drawn after t)
//! ```
//!
//! `E_i` is the student's floor on domain `i`, `A_i` its reducible part, `β_i` its data exponent (per domain: in the
//! measured runs `code` keeps gaining from its own data long after the other domains have flattened), τ ∈ [0, 1] the
//! transfer from the other domains (shared: the synthetic domains share one common law, `Distillation::overlap`), and
//! `D'` the effective data of a domain whose pool is reused cyclically once exhausted (DDK §2.2): `R_j` repetitions of
//! `U_j` unique examples are worth `U_j·R*·(1 − e^(−R_j/R*))` fresh ones, the repeated-data form of Muennighoff et
//! al. 2023 (arXiv 2305.16264, Eq. 5). Without forgetting (`f_i = 0`) the loss follows the learning curve of the
//! domain's own data plus what transfers from the others (`X_i`); `X0_i` is the curve of the transfer alone. The
//! forgetting share `f_i` is displacement: a student too small for every domain at once loses part of what domain
//! `i`'s *own* data taught it with every example of another domain `j` (pressure `π_j` per example: which domain takes
//! the capacity matters), and each example of `i` refreshes the domain, discounting the displacement accumulated before
//! it by `e^(−1/ν)`. A domain learned and then starved (unsmoothed DDK) falls back towards the transfer-only curve; a
//! domain given a small share from the start has little of its own to lose, so a static mixture's low shares cost
//! little (what the measured static mixtures show). Displacement does more than undo a domain's own gain: a student
//! that gives nearly all its capacity to one domain moves its predictions towards that domain, and the others end
//! *above* their transfer-only curve (in the measured runs, starving every domain but `code` takes them back to about
//! their losses after 50 steps, and further under DDK with α = 1). The harm `H_j` (nats) is that excess when `j` is
//! the displacer, charged at the forgotten share and mixed over the displacers by their share of `h_i` (a domain
//! close to the common law, like `chat`, harms little). `ν` (examples) is not a gradient parameter: a row carries `S`
//! for one `ν`, which the calibration picks on a grid by leave-one-schedule-out cross-validation. Parameters in
//! optimiser coordinates: `[e_1..e_n, a_1..a_n, β_1..β_n, τ, r, q_1..q_n, η_1..η_n]` with `E = exp(e)`, `A = exp(a)`,
//! `R* = exp(r)`, `π = exp(q)`, `H = exp(η)`.
//!
//! A row of data is `[domain (1-based), D_1..D_n, P_1..P_n, S_11..S_1n, .., S_n1..S_nn]` (row-major, examples), the
//! target the student's CE on that domain (nats).
use crate::fit::{InputDomain, InputSpec, Law, ParamSpec};
use serde::{Deserialize, Serialize};
use trainlab_core::workloads::distill::{DistillOutcome, Distillation, Schedule, ddk_update};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, Workload};

/// The law for `n` domains.
#[derive(Debug, Clone)]
pub struct GapLaw {
    n: usize,
    params: Vec<ParamSpec>,
    inputs: Vec<InputSpec>,
}

/// Fitted parameters in natural units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GapLawParams {
    /// Floor `E_i` per domain (nats).
    pub floor: Vec<f64>,
    /// Reducible part `A_i` per domain (nats).
    pub scale: Vec<f64>,
    /// Data exponent `β_i` per domain.
    pub beta: Vec<f64>,
    /// Transfer τ from the other domains' data.
    pub transfer: f64,
    /// Repetition constant `R*` of reused data.
    pub rstar: f64,
    /// Displacement pressure `π_j` of each domain (per example of `j`, on the forgetting exponent of every other
    /// domain; empty: none).
    #[serde(default)]
    pub pressure: Vec<f64>,
    /// Harm `H_j` (nats) of each domain's displacement beyond the lost gain: the loss a domain `i` displaced by `j`
    /// alone ends up above its transfer-only curve (empty: none).
    #[serde(default)]
    pub harm: Vec<f64>,
    /// Refresh scale `ν` (examples of a domain that discount its accumulated displacement by `e`).
    #[serde(default = "one")]
    pub refresh: f64,
}

fn one() -> f64 {
    1.0
}

/// Advances the displacement state `acc` (`n×n`, row-major: `acc[i·n + j]` = `S_ij`, refresh scale `nu`) by a
/// stretch of training in which `chunk[j]` examples came from domain `j`, spread evenly over the stretch:
/// `S_ij ← S_ij·e^(−c_i/ν) + c_j·(ν/c_i)(1 − e^(−c_i/ν))` (each of `j`'s examples discounted by the examples of `i`
/// drawn after it in the stretch), or `S_ij ← S_ij + c_j` when the stretch has no example of `i`.
pub fn advance_displacement(acc: &mut [f64], chunk: &[f64], nu: f64) {
    let n = chunk.len();
    for (i, row) in acc.chunks_mut(n).enumerate() {
        let ci = chunk[i];
        if ci > 0.0 {
            let keep = (-ci / nu).exp();
            let spread = nu / ci * (1.0 - keep);
            for (s, c) in row.iter_mut().zip(chunk) {
                *s = *s * keep + c * spread;
            }
        } else {
            for (s, c) in row.iter_mut().zip(chunk) {
                *s += c;
            }
        }
    }
}

impl GapLaw {
    /// The law for `n` domains (2 or more).
    pub fn new(n: usize) -> Self {
        let mut params = Vec::with_capacity(5 * n + 2);
        for i in 0..n {
            // Floors near the losses of small LMs on tiny vocabularies (e^0.7 ≈ 2, e^1.2 ≈ 3.3 nats).
            params.push(ParamSpec::new(&format!("e{}", i + 1), -5.0, 3.0, &[0.7, 1.0]));
        }
        for i in 0..n {
            params.push(ParamSpec::new(&format!("a{}", i + 1), -10.0, 5.0, &[-1.0, 0.5]));
        }
        for i in 0..n {
            params.push(ParamSpec::new(&format!("beta{}", i + 1), 0.0, 3.0, &[0.05, 0.5, 1.5]));
        }
        params.push(ParamSpec::new("tau", 0.0, 1.0, &[0.1, 0.5]));
        params.push(ParamSpec::new("r", -3.0, 6.0, &[0.0, 2.7]));
        for j in 0..n {
            // Pressure per example of `j`: e^-12 ≈ 6e-6 (half of a domain's own gain forgotten after ~110k examples
            // of `j` with none of its own).
            params.push(ParamSpec::new(
                &format!("q{}", j + 1),
                -30.0,
                -3.0,
                &[-14.0, -11.0, -9.0],
            ));
        }
        for j in 0..n {
            // Harm of `j`'s displacement: e^-3 ≈ 0.05 nats (the synthetic domains' losses move by ~0.01–0.2).
            params.push(ParamSpec::new(&format!("h{}", j + 1), -12.0, 2.0, &[-5.0, -3.0]));
        }
        let mut inputs = vec![InputSpec {
            name: "domain".into(),
            domain: InputDomain::Positive,
        }];
        for (tag, dom) in [("D", InputDomain::NonNegative), ("P", InputDomain::Positive)] {
            for j in 0..n {
                inputs.push(InputSpec {
                    name: format!("{tag}{}", j + 1),
                    domain: dom,
                });
            }
        }
        for i in 0..n {
            for j in 0..n {
                inputs.push(InputSpec {
                    name: format!("S{}_{}", i + 1, j + 1),
                    domain: InputDomain::NonNegative,
                });
            }
        }
        GapLaw { n, params, inputs }
    }

    /// Domains.
    pub fn domains(&self) -> usize {
        self.n
    }

    /// Natural parameters from optimiser coordinates.
    pub fn unpack(&self, p: &[f64]) -> GapLawParams {
        let n = self.n;
        GapLawParams {
            floor: p[..n].iter().map(|x| x.exp()).collect(),
            scale: p[n..2 * n].iter().map(|x| x.exp()).collect(),
            beta: p[2 * n..3 * n].to_vec(),
            transfer: p[3 * n],
            rstar: p[3 * n + 1].exp(),
            pressure: p[3 * n + 2..4 * n + 2].iter().map(|x| x.exp()).collect(),
            harm: p[4 * n + 2..5 * n + 2].iter().map(|x| x.exp()).collect(),
            refresh: 1.0,
        }
    }

    /// Optimiser coordinates from natural parameters.
    pub fn pack(q: &GapLawParams) -> Vec<f64> {
        let mut p: Vec<f64> = q.floor.iter().map(|x| x.ln()).collect();
        p.extend(q.scale.iter().map(|x| x.ln()));
        p.extend(&q.beta);
        p.extend([q.transfer, q.rstar.ln()]);
        let n = q.floor.len();
        p.extend((0..n).map(|j| q.pressure.get(j).copied().unwrap_or(0.0).max(1e-300).ln()));
        p.extend((0..n).map(|j| q.harm.get(j).copied().unwrap_or(0.0).max(1e-300).ln()));
        p
    }

    /// A data row for domain `i` (0-based).
    pub fn row(i: usize, seen: &[f64], pool: &[f64], acc: &[f64]) -> Vec<f64> {
        let mut x = Vec::with_capacity(1 + 2 * seen.len() + acc.len());
        x.push((i + 1) as f64);
        x.extend_from_slice(seen);
        x.extend_from_slice(pool);
        x.extend_from_slice(acc);
        x
    }
}

/// Effective data of `d` examples from a pool of `p` unique ones (`R*` = `rstar`), and its derivative in `log R*`.
pub fn effective(d: f64, p: f64, rstar: f64) -> (f64, f64) {
    let u = d.min(p);
    if d <= p || u <= 0.0 {
        return (d, 0.0);
    }
    let r = (d - u) / u;
    let e = (-r / rstar).exp();
    let v = u + u * rstar * (1.0 - e);
    // ∂v/∂R* = U·[(1 − e) − (R/R*)·e]; ∂/∂log R* = R*·∂v/∂R*.
    let dv = u * rstar * ((1.0 - e) - (r / rstar) * e);
    (v, dv)
}

impl GapLawParams {
    /// Predicted student CE on every domain after `seen` examples from each (pools `pool`), with the displacement
    /// state `acc` (`n×n`, see [`advance_displacement`]).
    pub fn predict(&self, seen: &[f64], pool: &[f64], acc: &[f64]) -> Vec<f64> {
        let n = seen.len();
        let eff: Vec<f64> = seen
            .iter()
            .zip(pool)
            .map(|(d, p)| effective(*d, *p, self.rstar).0)
            .collect();
        let total: f64 = eff.iter().sum();
        (0..n)
            .map(|i| {
                let x0 = 1.0 + self.transfer * (total - eff[i]);
                let (f, harm) = self.forgotten(i, &acc[i * n..(i + 1) * n]);
                let b = self.beta[i];
                self.floor[i] + self.scale[i] * ((1.0 - f) * (x0 + eff[i]).powf(-b) + f * x0.powf(-b)) + f * harm
            })
            .collect()
    }

    /// The share `f_i = 1 − e^(−h_i)`, `h_i = Σ_{j≠i} π_j·S_ij`, of domain `i`'s own gain that is forgotten, with its
    /// row `s` of the state, and the harm its displacers leave, `Σ_{j≠i} (π_j·S_ij / h_i)·H_j` (nats, charged at
    /// `f_i`).
    pub fn forgotten(&self, i: usize, s: &[f64]) -> (f64, f64) {
        let (mut h, mut g) = (0.0, 0.0);
        for (j, (p, v)) in self.pressure.iter().zip(s).enumerate().filter(|(j, _)| *j != i) {
            h += p * v;
            g += p * v * self.harm.get(j).copied().unwrap_or(0.0);
        }
        (1.0 - (-h).exp(), if h > 0.0 { g / h } else { 0.0 })
    }

    /// Checks that the parameters can be used (finite, positive where they must be), naming `field`.
    pub fn validate(&self, field: &str, n: usize) -> Result<(), Error> {
        let per_domain_params = [("floor", &self.floor), ("scale", &self.scale), ("beta", &self.beta)];
        if let Some((name, v)) = per_domain_params.iter().find(|(_, v)| v.len() != n) {
            return Err(Error::invalid(
                format!("{field}.{name}"),
                v.len(),
                format!(
                    "the law has {} values of `{name}`, this workload has {n} domains",
                    v.len()
                ),
                "calibrate on a workload with the same domains",
            ));
        }
        let all = self.floor.iter().chain(&self.scale).chain([&self.rstar, &self.refresh]);
        if all.clone().any(|x| !(x.is_finite() && *x > 0.0)) {
            return Err(Error::invalid(
                field,
                "a non-positive or non-finite value",
                "floors, scales and R* must be finite and > 0",
                "recalibrate: trainlab calibrate --workload distillation",
            ));
        }
        let per_domain = |v: &[f64]| (v.is_empty() || v.len() == n) && v.iter().all(|x| x.is_finite() && *x >= 0.0);
        let beta_ok = self.beta.iter().all(|b| b.is_finite() && *b >= 0.0);
        if !(beta_ok && (0.0..=1.0).contains(&self.transfer) && per_domain(&self.pressure) && per_domain(&self.harm)) {
            return Err(Error::invalid(
                format!("{field}.beta/transfer/pressure/harm"),
                format!(
                    "{:?} / {} / {:?} / {:?}",
                    self.beta, self.transfer, self.pressure, self.harm
                ),
                "need every beta >= 0, transfer in [0, 1], and one pressure >= 0 and one harm >= 0 per domain (or none)",
                "recalibrate: trainlab calibrate --workload distillation",
            ));
        }
        Ok(())
    }
}

impl Law for GapLaw {
    fn name(&self) -> &str {
        "ddk_gap"
    }
    fn formula(&self) -> &str {
        "L_i = E_i + A_i [(1 - f_i) X_i^-beta_i + f_i X0_i^-beta_i] + f_i sum_{j!=i} (pi_j S_ij / h_i) H_j, \
         X_i = X0_i + D'_i, X0_i = 1 + tau sum_{j!=i} D'_j, D' = U + U R* (1 - exp(-R/R*)), f_i = 1 - exp(-h_i), \
         h_i = sum_{j!=i} pi_j S_ij, S_ij = examples of j discounted by exp(-(examples of i since)/nu)"
    }
    fn params(&self) -> &[ParamSpec] {
        &self.params
    }
    fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }
    fn log_eval(&self, p: &[f64], x: &[f64]) -> f64 {
        let mut g = vec![0.0; p.len()];
        self.log_grad(p, x, &mut g)
    }
    fn log_grad(&self, p: &[f64], x: &[f64], g: &mut [f64]) -> f64 {
        let n = self.n;
        let i = (x[0].round() as usize).clamp(1, n) - 1;
        let (seen, pool) = (&x[1..1 + n], &x[1 + n..1 + 2 * n]);
        let (beta, tau, rstar) = (p[2 * n + i], p[3 * n], p[3 * n + 1].exp());
        let (qs, hs) = (3 * n + 2, 4 * n + 2);
        let (e, a) = (p[i].exp(), p[n + i].exp());
        let (mut xi, mut others, mut dx_own, mut dx_oth) = (1.0, 0.0, 0.0, 0.0);
        for j in 0..n {
            let (v, dv) = effective(seen[j], pool[j], rstar);
            if j == i {
                xi += v;
                dx_own += dv;
            } else {
                others += v;
                dx_oth += dv;
            }
        }
        xi += tau * others;
        // Forgetting: the share f = 1 − e^(−h) of what domain i's own data added is lost, h = Σ_{j≠i} c_j with
        // c_j = π_j·S_ij, and the displacers leave the harm f·G/h, G = Σ_{j≠i} c_j·H_j.
        let x0 = 1.0 + tau * others;
        let (pow, pow0) = (xi.powf(-beta), x0.powf(-beta));
        let acc = &x[1 + 2 * n + i * n..1 + 2 * n + (i + 1) * n];
        let c: Vec<f64> = (0..n)
            .map(|j| if j == i { 0.0 } else { p[qs + j].exp() * acc[j] })
            .collect();
        let h: f64 = c.iter().sum();
        let gsum: f64 = (0..n).map(|j| c[j] * p[hs + j].exp()).sum();
        let keep = (-h).exp();
        let f = 1.0 - keep;
        // f/h and its derivative in h (their limits 1 and −1/2 as h → 0).
        let (fh, dfh) = if h > 1e-8 {
            (f / h, (keep * h - f) / (h * h))
        } else {
            (1.0 - h / 2.0, -0.5 + h / 3.0)
        };
        let curve = keep * pow + f * pow0;
        let l = e + a * curve + fh * gsum;
        g.fill(0.0);
        g[i] = e / l;
        g[n + i] = a * curve / l;
        g[2 * n + i] = -a * (keep * pow * xi.ln() + f * pow0 * x0.ln()) / l;
        // ∂X^(−β)/∂X = −β·X^(−β−1), for the learned curve (X_i) and the transfer-only one (X_0 = 1 + τ·Σ_{j≠i} D'_j).
        let (d_own, d_x0) = (-beta * pow / xi, -beta * pow0 / x0);
        g[3 * n] = a * others * (keep * d_own + f * d_x0) / l;
        g[3 * n + 1] = a * (keep * d_own * (dx_own + tau * dx_oth) + f * d_x0 * tau * dx_oth) / l;
        // ∂L/∂q_j = c_j·[A·(X_0^(−β) − X_i^(−β))·e^(−h) + G·d(f/h)/dh + (f/h)·H_j]; ∂L/∂log H_j = (f/h)·c_j·H_j.
        for j in (0..n).filter(|&j| j != i) {
            let hj = p[hs + j].exp();
            g[qs + j] = c[j] * (a * (pow0 - pow) * keep + gsum * dfh + fh * hj) / l;
            g[hs + j] = fh * c[j] * hj / l;
        }
        l.ln()
    }
    fn natural(&self, p: &[f64]) -> Vec<(String, f64)> {
        let q = self.unpack(p);
        let mut out = Vec::new();
        for (i, (f, s)) in q.floor.iter().zip(&q.scale).enumerate() {
            out.push((format!("E{}", i + 1), *f));
            out.push((format!("A{}", i + 1), *s));
        }
        for (i, b) in q.beta.iter().enumerate() {
            out.push((format!("beta{}", i + 1), *b));
        }
        out.extend([("tau".to_string(), q.transfer), ("R*".to_string(), q.rstar)]);
        for (j, v) in q.pressure.iter().enumerate() {
            out.push((format!("pi{}", j + 1), *v));
        }
        for (j, v) in q.harm.iter().enumerate() {
            out.push((format!("H{}", j + 1), *v));
        }
        out
    }
}

/// A `distillation` profile: the gap law fitted on real runs of one setup, with what it was fitted on. The law
/// answers runs of that setup (same domains, pools, teacher, student and hyper-parameters) under any schedule and
/// student budget; another setup needs its own calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillProfile {
    /// The calibrated setup (its schedule and student budget are those of the first fitted run).
    pub setup: Distillation,
    /// The teacher's validation CE per domain, measured (nats).
    pub teacher_ce: Vec<f64>,
    /// The fitted law.
    pub law: GapLawParams,
    /// Bootstrap replicates of the law (for intervals), possibly empty.
    #[serde(default)]
    pub bootstrap: Vec<GapLawParams>,
}

impl DistillProfile {
    /// Checks the profile and that it was fitted on `w`'s setup (everything but the schedule and student budget).
    pub fn check_for(&self, w: &Distillation) -> Result<(), Error> {
        self.law.validate("profile.params.law", self.setup.domains.len())?;
        if self.teacher_ce.len() != self.setup.domains.len() || self.teacher_ce.iter().any(|x| !x.is_finite()) {
            return Err(Error::invalid(
                "profile.params.teacher_ce",
                format!("{:?}", self.teacher_ce),
                "one finite teacher loss per domain",
                "recalibrate: trainlab calibrate --workload distillation",
            ));
        }
        let mut same = w.clone();
        same.schedule = self.setup.schedule.clone();
        same.student_tokens = self.setup.student_tokens;
        if same != self.setup {
            return Err(Error::Unsupported(
                "the distillation profile was fitted on another setup (domains, pools, teacher, student or \
                 hyper-parameters differ); the gap law predicts other schedules and budgets of that setup only: \
                 calibrate on this one"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Unique examples in each domain's pool.
    pub fn pools(&self) -> Vec<f64> {
        self.setup.domains.iter().map(|d| d.tokens as f64).collect()
    }
}

/// The state of a schedule followed on the law: examples seen per domain and the weights in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Followed {
    /// Examples seen from each domain.
    pub seen: Vec<f64>,
    /// The displacement state (`n×n`, see [`advance_displacement`]; the law's refresh scale).
    pub displacement: Vec<f64>,
    /// The final weights.
    pub weights: Vec<f64>,
}

/// Adds a chunk of `examples` drawn under `weights` to `seen`.
pub type Draw<'a> = dyn FnMut(&[f64], u64, &mut [f64]) + 'a;

/// Follows `w`'s schedule on the law, `draw(weights, examples, seen)` adding each chunk's examples to `seen`: the
/// expected counts for the closed form ([`expected_chunk`]), a multinomial draw for the simulator. Under `ddk` the
/// weights are updated every `k` steps from the law's losses at that point (Eq. 1–2, the same arithmetic as the
/// real run); chunks are the stretches between updates (the weights are constant inside one). Under `phased` the
/// chunks are the phases.
pub fn follow(
    w: &Distillation,
    law: &GapLawParams,
    teacher_ce: &[f64],
    pools: &[f64],
    draw: &mut Draw<'_>,
) -> Followed {
    let n = w.domains.len();
    let mut seen = vec![0.0; n];
    let mut displacement = vec![0.0; n * n];
    let mut weights = w.initial_weights();
    // One stretch: its examples drawn, the displacement state advanced by what it added.
    let mut stretch = |weights: &[f64], examples: u64, seen: &mut Vec<f64>, displacement: &mut Vec<f64>| {
        let before = seen.clone();
        draw(weights, examples, seen);
        let chunk: Vec<f64> = seen.iter().zip(&before).map(|(a, b)| a - b).collect();
        advance_displacement(displacement, &chunk, law.refresh);
    };
    let steps = w.student_tokens.div_ceil(w.batch);
    // Examples in the first `s` steps (the last step may be short).
    let examples_to = |s: u64| (s * w.batch).min(w.student_tokens);
    match w.schedule {
        Schedule::Ddk { k, alpha } => {
            let mut at = 0u64;
            while at < steps {
                let next = (at + k).min(steps);
                stretch(
                    &weights,
                    examples_to(next) - examples_to(at),
                    &mut seen,
                    &mut displacement,
                );
                if next.is_multiple_of(k) {
                    let l = law.predict(&seen, pools, &displacement);
                    weights = ddk_update(&weights, &l, teacher_ce, alpha);
                }
                at = next;
            }
        }
        _ => {
            // Open loop: the schedule's stretches (one for uniform and static weights), each at its own weights.
            let st = w.stretches().unwrap_or_default();
            for (j, (from, wts)) in st.iter().enumerate() {
                let to = st.get(j + 1).map_or(steps, |(s, _)| *s).min(steps);
                stretch(wts, examples_to(to) - examples_to(*from), &mut seen, &mut displacement);
                weights.clone_from(wts);
            }
        }
    }
    Followed {
        seen,
        displacement,
        weights,
    }
}

/// Most DDK updates a law-driven run follows (each evaluates the law on every domain).
pub const MAX_UPDATES: u64 = 1_000_000;

/// Checks that following `w` on the law is bounded work: at most [`MAX_UPDATES`] DDK updates.
pub fn check_updates(w: &Distillation) -> Result<(), Error> {
    if let Schedule::Ddk { k, .. } = w.schedule {
        let updates = w.student_tokens.div_ceil(w.batch) / k;
        if updates > MAX_UPDATES {
            return Err(Error::invalid(
                "workload.schedule.ddk.k",
                k,
                format!(
                    "{updates} updates over {} student steps; the law-driven backends follow at most {MAX_UPDATES}",
                    w.student_tokens.div_ceil(w.batch)
                ),
                "raise k or lower student_tokens",
            ));
        }
    }
    Ok(())
}

/// The closed form's chunk: every domain gets its expected share.
pub fn expected_chunk(weights: &[f64], examples: u64, seen: &mut [f64]) {
    for (s, w) in seen.iter_mut().zip(weights) {
        *s += w * examples as f64;
    }
}

/// The analytical backend (`gap_law`): the fitted law along the schedule's expected counts (exact for uniform and
/// static weights; for DDK the mean-field recursion of the update with expected counts, no sampling noise).
#[derive(Debug, Clone, Default)]
pub struct GapLawBackend {
    /// The profile (`--profile`), if given.
    pub profile: Option<DistillProfile>,
}

/// The error of a law backend run without a profile.
pub fn needs_profile() -> Error {
    Error::Unsupported(
        "the gap law exists only as fitted to real runs: run `trainlab calibrate --workload distillation --out DIR`, \
         then pass `--profile DIR`"
            .into(),
    )
}

/// The answer of a law-driven backend: its final per-domain losses and weights, with the profile's teacher losses
/// and the closed-form FLOPs.
pub fn outcome(w: &Distillation, p: &DistillProfile, student_ce: Vec<f64>, weights: Vec<f64>) -> DistillOutcome {
    DistillOutcome {
        domains: w.domains.iter().map(|d| d.name.clone()).collect(),
        student_ce: Some(student_ce),
        teacher_ce: Some(p.teacher_ce.clone()),
        weights: Some(weights),
        flops: crate::distill::flops(w),
        gap_ci: None,
        at_scale: None,
    }
}

impl Backend<Distillation> for GapLawBackend {
    fn name(&self) -> &str {
        "gap_law"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, w: &Distillation, _: &mut RunCtx) -> Result<DistillOutcome, Error> {
        w.validate()?;
        let p = self.profile.as_ref().ok_or_else(needs_profile)?;
        p.check_for(w)?;
        check_updates(w)?;
        let f = follow(w, &p.law, &p.teacher_ce, &p.pools(), &mut expected_chunk);
        Ok(outcome(
            w,
            p,
            p.law.predict(&f.seen, &p.pools(), &f.displacement),
            f.weights,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::{Dataset, FitConfig, fit};

    fn truth() -> GapLawParams {
        GapLawParams {
            floor: vec![2.2, 2.6, 2.9],
            scale: vec![3.0, 2.0, 1.5],
            beta: vec![0.35, 0.5, 0.25],
            transfer: 0.3,
            rstar: 4.0,
            pressure: vec![6e-5, 5e-5, 4e-5],
            harm: vec![0.2, 0.1, 0.05],
            refresh: 300.0,
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let law = GapLaw::new(3);
        let p = GapLaw::pack(&truth());
        let pools = [20000.0, 2000.0, 20000.0];
        // The analytic gradient of row `x` against central differences; returns it.
        let check = |x: &[f64], what: &str| {
            let mut g = vec![0.0; p.len()];
            law.log_grad(&p, x, &mut g);
            for j in 0..p.len() {
                let h = 1e-6;
                let (mut up, mut dn) = (p.clone(), p.clone());
                up[j] += h;
                dn[j] -= h;
                let num = (law.log_eval(&up, x) - law.log_eval(&dn, x)) / (2.0 * h);
                assert!(
                    (num - g[j]).abs() < 1e-6 * (1.0 + num.abs()),
                    "{what}, param {j}: {num} vs {}",
                    g[j]
                );
            }
            g
        };
        // Domain 2 with its pool reused (D > P) so every parameter, R* included, has a gradient.
        let displaced = [0.0, 10.0, 20.0, 3000.0, 0.0, 900.0, 5.0, 7.0, 0.0];
        let g = check(
            &GapLaw::row(1, &[5000.0, 9000.0, 300.0], &pools, &displaced),
            "displaced",
        );
        // The row's own domain exerts no pressure and no harm on itself.
        assert_eq!(g[3 * 3 + 2 + 1], 0.0);
        assert_eq!(g[4 * 3 + 2 + 1], 0.0);
        // The same with no displacement at all (h = 0: the harm's f/h limit).
        check(&GapLaw::row(1, &[5000.0, 9000.0, 300.0], &pools, &[0.0; 9]), "h = 0");
    }

    #[test]
    fn reuse_is_worth_less_than_fresh_data_and_never_negative() {
        // Within the pool: one for one. Beyond it: each repetition is worth less, the total stays below U(1 + R*).
        assert_eq!(effective(500.0, 1000.0, 4.0).0, 500.0);
        let (a, b) = (effective(2000.0, 1000.0, 4.0).0, effective(3000.0, 1000.0, 4.0).0);
        assert!(1000.0 < a && a < 2000.0 && a < b && b - a < a - 1000.0, "{a} {b}");
        assert!(effective(1e9, 1000.0, 4.0).0 <= 1000.0 * 5.0 + 1e-9);
    }

    #[test]
    fn fit_recovers_known_parameters() {
        let law = GapLaw::new(3);
        let t = truth();
        let pool = [20000.0, 8000.0, 20000.0];
        let mut x = Vec::new();
        let mut y = Vec::new();
        // Six schedules' trajectories (uniform, two skewed, and three that starve the others after a uniform start,
        // one per domain: a domain's pressure shows only on domains that learned something of their own first), 16
        // checkpoints of 1,500 examples each; the displacement state with the truth's refresh scale.
        let starve = |k: usize, late: [f64; 3]| if k <= 6 { [1.0 / 3.0; 3] } else { late };
        let plans: [&dyn Fn(usize) -> [f64; 3]; 6] = [
            &|_| [1.0 / 3.0; 3],
            &|_| [0.6, 0.1, 0.3],
            &|_| [0.05, 0.15, 0.8],
            &|k| starve(k, [0.98, 0.01, 0.01]),
            &|k| starve(k, [0.01, 0.98, 0.01]),
            &|k| starve(k, [0.01, 0.01, 0.98]),
        ];
        for w in plans {
            let (mut seen, mut acc) = (vec![0.0; 3], vec![0.0; 9]);
            for k in 1..=16 {
                let chunk: Vec<f64> = w(k).iter().map(|f| f * 1500.0).collect();
                seen.iter_mut().zip(&chunk).for_each(|(s, c)| *s += c);
                advance_displacement(&mut acc, &chunk, t.refresh);
                let l = t.predict(&seen, &pool, &acc);
                for (i, li) in l.iter().enumerate() {
                    x.push(GapLaw::row(i, &seen, &pool, &acc));
                    y.push(*li);
                }
            }
        }
        let names = law.inputs().iter().map(|s| s.name.clone()).collect();
        let data = Dataset::new(names, x, y).unwrap();
        let cfg = FitConfig {
            max_starts: 256,
            max_iters: 5000,
            ..FitConfig::default()
        };
        let r = fit(&law, &data, &cfg).unwrap();
        let q = law.unpack(&r.params);
        assert!(r.gof.r2 > 0.9999, "{:?} {q:?}", r.gof);
        for (a, b) in q.beta.iter().zip(&t.beta) {
            assert!((a - b).abs() < 0.02, "{q:?}");
        }
        assert!((q.transfer - t.transfer).abs() < 0.02, "{q:?}");
        // The pressures act through a saturating share of each domain's own gain, which only the starving stretches
        // show, and the harms through the same share: recovered within 20% from noiseless data.
        for (a, b) in q.pressure.iter().zip(&t.pressure).chain(q.harm.iter().zip(&t.harm)) {
            assert!((a - b).abs() < 0.2 * b, "{q:?}");
        }
    }

    #[test]
    fn displacement_settles_under_a_mixture_and_grows_when_starved() {
        // A static mixture: S_ij → ν·w_j/w_i whatever the chunking (one stretch of 2E = two of E).
        let (mut a, mut b) = (vec![0.0; 4], vec![0.0; 4]);
        for _ in 0..100 {
            advance_displacement(&mut a, &[750.0, 250.0], 100.0);
        }
        advance_displacement(&mut b, &[75_000.0, 25_000.0], 100.0);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-9 * (1.0 + y), "{a:?} vs {b:?}");
        }
        assert!(
            (a[1] - 100.0 * 0.25 / 0.75).abs() < 1e-9 && (a[2] - 100.0 * 0.75 / 0.25).abs() < 1e-9,
            "{a:?}"
        );
        // Domain 2 starved: every example of domain 1 adds one to S_21; S_12 decays by e^(−c/ν).
        let s12 = a[1];
        advance_displacement(&mut a, &[2000.0, 0.0], 100.0);
        assert!((a[2] - (300.0 + 2000.0)).abs() < 1e-9, "{a:?}");
        assert!((a[1] - s12 * (-20.0f64).exp()).abs() < 1e-12, "{a:?}");
    }
}
