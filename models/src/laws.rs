//! Loss laws for the approach-3 fitter ([`crate::fit`]).
//!
//! - [`Chinchilla`]: `L(N, D) = E + A/N^α + B/D^β` (Hoffmann et al. 2022, Eq. 2; fitted as in App. D.2 through
//!   `log L = LSE(a − α log N, b − β log D, e)` with `A, B, E = exp(a), exp(b), exp(e)`).
//! - [`DcptL3`]: the D-CPT law the paper chooses (Que et al. 2024, "L3"):
//!   `L(N, D, r) = E + A/N^α + B·r^η/D^β + C/(r + ε)^γ`, fitted separately for the general loss (r = general share
//!   r_g) and the domain loss (r = domain share r_d). In log space
//!   `log L = LSE(e, a − α log N, b + η log r − β log D, c − γ log(r + ε))`; at r = 0 the third term drops out.
//!   ε is fitted as `log_eps` so that it stays positive.
//! - [`DcptSeparable`]: the same without the D×r interaction (η = 0): `E + A/N^α + B/D^β + C/(r + ε)^γ`. It violates the
//!   paper's implicit-trend requirement (∂²L/∂D∂r = 0); it is a baseline, not one of the paper's unrecovered L1/L2/L4/L5.
//! - [`DcptCrossDomain`]: the cross-domain extension with the domain-specific learnable coefficient (DLC)
//!   `L = L3 + F/K^μ`, `K = w1/k1 + w2·k2`, k1 = the domain's initial validation loss, k2 = its rate of decline,
//!   w1, w2 learnable (the adopted K per one secondary source; see the notes, §1.9).
//!
//! All gradients are analytic (`log_grad`) and checked against finite differences in the tests.
use crate::fit::fastmath::{Kernel, exp, exp_in_range, ln_normal, vectorised};
use crate::fit::{InputDomain, InputSpec, Law, ParamSpec, lse};
use trainlab_core::Error;

const INF: f64 = f64::INFINITY;

fn input(name: &str, domain: InputDomain) -> InputSpec {
    InputSpec {
        name: name.to_string(),
        domain,
    }
}

fn natural_with(law: &dyn Law, p: &[f64], exp_names: &[(&str, &str)]) -> Vec<(String, f64)> {
    law.params()
        .iter()
        .zip(p)
        .map(|(s, v)| match exp_names.iter().find(|(from, _)| *from == s.name) {
            Some((_, to)) => (to.to_string(), v.exp()),
            None => (s.name.clone(), *v),
        })
        .collect()
}

/// Chinchilla's parametric loss `E + A/N^α + B/D^β`; parameters `[a, b, e, alpha, beta]` as in App. D.2, with the
/// paper's 4,500-point start grid (α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25}).
#[derive(Debug, Clone)]
pub struct Chinchilla {
    params: Vec<ParamSpec>,
    inputs: Vec<InputSpec>,
}

impl Default for Chinchilla {
    fn default() -> Self {
        Self::new()
    }
}

impl Chinchilla {
    /// The law with the paper's grid and no bounds.
    pub fn new() -> Self {
        let ab: Vec<f64> = (0..6).map(|i| 5.0 * i as f64).collect();
        let e: Vec<f64> = (0..5).map(|i| -1.0 + 0.5 * i as f64).collect();
        let ex: Vec<f64> = (0..5).map(|i| 0.5 * i as f64).collect();
        Chinchilla {
            params: vec![
                ParamSpec::new("a", -INF, INF, &ab),
                ParamSpec::new("b", -INF, INF, &ab),
                ParamSpec::new("e", -INF, INF, &e),
                ParamSpec::new("alpha", -INF, INF, &ex),
                ParamSpec::new("beta", -INF, INF, &ex),
            ],
            inputs: vec![input("N", InputDomain::Positive), input("D", InputDomain::Positive)],
        }
    }
    /// Packs natural parameters (E, A, B, α, β) into optimiser coordinates.
    pub fn pack(e: f64, a: f64, b: f64, alpha: f64, beta: f64) -> Vec<f64> {
        vec![a.ln(), b.ln(), e.ln(), alpha, beta]
    }
}

impl Law for Chinchilla {
    fn name(&self) -> &str {
        "chinchilla"
    }
    fn formula(&self) -> &str {
        "L = E + A/N^alpha + B/D^beta"
    }
    fn params(&self) -> &[ParamSpec] {
        &self.params
    }
    fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }
    fn log_eval(&self, p: &[f64], x: &[f64]) -> f64 {
        let mut w = [0.0; 3];
        lse(&[p[0] - p[3] * x[0].ln(), p[1] - p[4] * x[1].ln(), p[2]], &mut w)
    }
    fn log_grad(&self, p: &[f64], x: &[f64], g: &mut [f64]) -> f64 {
        self.log_grad_prepared(p, &[x[0].ln(), x[1].ln()], g)
    }
    /// `[log N, log D]`.
    fn prepare(&self, x: &[f64], z: &mut [f64]) {
        z[0] = x[0].ln();
        z[1] = x[1].ln();
    }
    fn log_grad_prepared(&self, p: &[f64], z: &[f64], g: &mut [f64]) -> f64 {
        let (ln_n, ln_d) = (z[0], z[1]);
        let mut w = [0.0; 3];
        let v = lse(&[p[0] - p[3] * ln_n, p[1] - p[4] * ln_d, p[2]], &mut w);
        g[0] = w[0];
        g[1] = w[1];
        g[2] = w[2];
        g[3] = -w[0] * ln_n;
        g[4] = -w[1] * ln_d;
        v
    }
    /// Every row at once. When every term lies well inside the range of `exp` (|t| < 700), without the max shift of
    /// [`lse`]: `log(exp(t_N) + exp(t_D) + E)`, with `E = exp(e)` once per call and `exp(t_N)` once per run of
    /// consecutive rows sharing N (the checkpoints of one model); otherwise row by row through [`lse`]. The passes are
    /// loops of independent, call-free iterations, compiled for wide vectors where the CPU has them
    /// ([`vectorised`]). Equal to the row-by-row path to rounding.
    fn log_grad_rows(&self, p: &[f64], z: &[f64], lp: &mut [f64], g: &mut [f64]) {
        let n = lp.len();
        let (z, g) = (&z[..2 * n], &mut g[..5 * n]);
        if !vectorised(ChinchillaRows { p, z, lp, g }) {
            let mut gi = [0.0; 5];
            for (i, zi) in z.chunks_exact(2).enumerate() {
                lp[i] = self.log_grad_prepared(p, zi, &mut gi);
                for (j, v) in gi.iter().enumerate() {
                    g[j * n + i] = *v;
                }
            }
        }
    }
    fn natural(&self, p: &[f64]) -> Vec<(String, f64)> {
        natural_with(self, p, &[("a", "A"), ("b", "B"), ("e", "E")])
    }
}

/// The fast path of [`Chinchilla`]'s `log_grad_rows`: rows of `[log N, log D]` in `z`, `lp.len()` rows. Returns false,
/// with nothing finished, when a term is outside `|t| < 700` or not a number.
struct ChinchillaRows<'a> {
    p: &'a [f64],
    z: &'a [f64],
    lp: &'a mut [f64],
    g: &'a mut [f64],
}

impl Kernel for ChinchillaRows<'_> {
    type Output = bool;
    #[inline(always)]
    fn run(self) -> bool {
        let ChinchillaRows { p, z, lp, g } = self;
        chinchilla_rows(p, z, lp, g)
    }
}

#[inline(always)]
fn chinchilla_rows(p: &[f64], z: &[f64], lp: &mut [f64], g: &mut [f64]) -> bool {
    let (a, b, e, alpha, beta) = (p[0], p[1], p[2], p[3], p[4]);
    let n = lp.len();
    let (z, g) = (&z[..2 * n], &mut g[..5 * n]);
    let (g_a, rest) = g.split_at_mut(n);
    let (g_b, rest) = rest.split_at_mut(n);
    let (g_e, rest) = rest.split_at_mut(n);
    let (g_alpha, g_beta) = rest.split_at_mut(n);
    // Pass 1: t_D per row, and whether every term is in range (NaN is not): a flag rather than a running maximum, so
    // that rows do not wait on each other.
    let mut in_range = e.abs() < 700.0;
    for (l, zi) in lp.iter_mut().zip(z.chunks_exact(2)) {
        let (tn, td) = (a - alpha * zi[0], b - beta * zi[1]);
        in_range &= (tn.abs() < 700.0) & (td.abs() < 700.0);
        *l = td;
    }
    if !in_range {
        return false;
    }
    // Pass 2: exp(t_D) per row; exp(t_N) once per run of rows sharing N, parked in the first gradient column.
    lp.iter_mut().for_each(|l| *l = exp_in_range(*l));
    let mut start = 0;
    while start < n {
        let ln_n = z[2 * start];
        let end = (start + 1..n).find(|&i| z[2 * i] != ln_n).unwrap_or(n);
        g_a[start..end].fill(exp_in_range(a - alpha * ln_n));
        start = end;
    }
    // Pass 3: the sum s (left in lp) and the softmax weights = the gradient of log s.
    let big_e = exp_in_range(e);
    for i in 0..n {
        let (u, v) = (g_a[i], lp[i]);
        let s = u + v + big_e;
        let inv = 1.0 / s;
        let (wn, wd) = (u * inv, v * inv);
        g_a[i] = wn;
        g_b[i] = wd;
        g_e[i] = big_e * inv;
        g_alpha[i] = -wn * z[2 * i];
        g_beta[i] = -wd * z[2 * i + 1];
        lp[i] = s;
    }
    // Pass 4: log s (s >= exp(-700) is normal).
    lp.iter_mut().for_each(|l| *l = ln_normal(*l));
    true
}

/// Which mixture ratio a D-CPT law's `r` input means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Target {
    /// General-corpus validation loss; `r` = general share r_g = 1 − r_d.
    General,
    /// Domain-corpus validation loss; `r` = domain share r_d.
    Domain,
}

fn dcpt_params(with_eta: bool) -> Vec<ParamSpec> {
    let mut v = vec![
        ParamSpec::new("e", -INF, INF, &[-1.0, 0.0, 1.0]),
        ParamSpec::new("a", -INF, INF, &[0.0, 5.0, 10.0]),
        ParamSpec::new("b", -INF, INF, &[0.0, 5.0, 10.0]),
        ParamSpec::new("c", -INF, INF, &[-3.0, -1.0, 0.5]),
        ParamSpec::new("alpha", 0.0, 3.0, &[0.2, 0.6]),
        ParamSpec::new("beta", 0.0, 3.0, &[0.2, 0.6]),
        ParamSpec::new("gamma", 0.0, 3.0, &[0.1, 0.5]),
    ];
    if with_eta {
        v.push(ParamSpec::new("eta", 0.0, 3.0, &[0.1, 0.5]));
    }
    v.push(ParamSpec::new(
        "log_eps",
        (1e-6f64).ln(),
        (10f64).ln(),
        &[(0.01f64).ln(), (0.1f64).ln()],
    ));
    v
}

/// The D-CPT law L3 (Que et al. 2024): `E + A/N^α + B·r^η/D^β + C/(r + ε)^γ`; parameters
/// `[e, a, b, c, alpha, beta, gamma, eta, log_eps]` (E = exp(e), ..., ε = exp(log_eps)); inputs `[N, D, r]`.
/// Exponents are kept in [0, 3] and ε in [1e-6, 10] by the fitter's bound penalty.
#[derive(Debug, Clone)]
pub struct DcptL3 {
    params: Vec<ParamSpec>,
    inputs: Vec<InputSpec>,
}

impl Default for DcptL3 {
    fn default() -> Self {
        Self::new()
    }
}

impl DcptL3 {
    /// The law with its default start grid (3·3·3·3·2·2·2·2·2 = 2,592 points).
    pub fn new() -> Self {
        DcptL3 {
            params: dcpt_params(true),
            inputs: vec![
                input("N", InputDomain::Positive),
                input("D", InputDomain::Positive),
                input("r", InputDomain::UnitInterval),
            ],
        }
    }
    /// Packs natural parameters into optimiser coordinates.
    #[allow(clippy::too_many_arguments)]
    pub fn pack(e: f64, a: f64, b: f64, c: f64, alpha: f64, beta: f64, gamma: f64, eta: f64, eps: f64) -> Vec<f64> {
        vec![e.ln(), a.ln(), b.ln(), c.ln(), alpha, beta, gamma, eta, eps.ln()]
    }
}

/// The prepared row of the D-CPT laws: `[log N, log D, r, log r]` (log r = -inf at r = 0), written into `z[..4]`.
fn dcpt_prepare(x: &[f64], z: &mut [f64]) {
    z[0] = x[0].ln();
    z[1] = x[1].ln();
    z[2] = x[2];
    z[3] = x[2].ln();
}

/// [`dcpt_kernel`] from raw inputs `[N, D, r]`.
fn dcpt_kernel_raw(p: &[f64], x: &[f64], with_eta: bool, g: Option<&mut [f64]>) -> f64 {
    let mut z = [0.0; 4];
    dcpt_prepare(x, &mut z);
    dcpt_kernel(p, &z, with_eta, g)
}

/// Shared kernel of L3 and the separable variant on a prepared row ([`dcpt_prepare`]): returns log L and fills the
/// gradient. `p` = [e, a, b, c, alpha, beta, gamma, (eta), log_eps].
fn dcpt_kernel(p: &[f64], z: &[f64], with_eta: bool, g: Option<&mut [f64]>) -> f64 {
    let (ln_n, ln_d, r, ln_r) = (z[0], z[1], z[2], z[3]);
    let eta = if with_eta { p[7] } else { 0.0 };
    let le = if with_eta { p[8] } else { p[7] };
    let eps = exp(le);
    let ln_re = (r + eps).ln();
    let data_term = if with_eta {
        if r > 0.0 {
            p[2] + eta * ln_r - p[5] * ln_d
        } else {
            f64::NEG_INFINITY
        }
    } else {
        p[2] - p[5] * ln_d
    };
    let terms = [p[0], p[1] - p[4] * ln_n, data_term, p[3] - p[6] * ln_re];
    let mut w = [0.0; 4];
    let v = lse(&terms, &mut w);
    if let Some(g) = g {
        g[0] = w[0];
        g[1] = w[1];
        g[2] = w[2];
        g[3] = w[3];
        g[4] = -w[1] * ln_n;
        g[5] = -w[2] * ln_d;
        g[6] = -w[3] * ln_re;
        let d_le = -w[3] * p[6] * eps / (r + eps);
        if with_eta {
            g[7] = if r > 0.0 { w[2] * ln_r } else { 0.0 };
            g[8] = d_le;
        } else {
            g[7] = d_le;
        }
    }
    v
}

impl Law for DcptL3 {
    fn name(&self) -> &str {
        "dcpt"
    }
    fn formula(&self) -> &str {
        "L = E + A/N^alpha + B*r^eta/D^beta + C/(r+eps)^gamma"
    }
    fn params(&self) -> &[ParamSpec] {
        &self.params
    }
    fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }
    fn log_eval(&self, p: &[f64], x: &[f64]) -> f64 {
        dcpt_kernel_raw(p, x, true, None)
    }
    fn log_grad(&self, p: &[f64], x: &[f64], g: &mut [f64]) -> f64 {
        dcpt_kernel_raw(p, x, true, Some(g))
    }
    fn prepared_len(&self) -> usize {
        4
    }
    /// `[log N, log D, r, log r]`.
    fn prepare(&self, x: &[f64], z: &mut [f64]) {
        dcpt_prepare(x, z)
    }
    fn log_grad_prepared(&self, p: &[f64], z: &[f64], g: &mut [f64]) -> f64 {
        dcpt_kernel(p, z, true, Some(g))
    }
    fn natural(&self, p: &[f64]) -> Vec<(String, f64)> {
        natural_with(
            self,
            p,
            &[("e", "E"), ("a", "A"), ("b", "B"), ("c", "C"), ("log_eps", "eps")],
        )
    }
}

/// Separable baseline `E + A/N^α + B/D^β + C/(r + ε)^γ` (L3 with η = 0); parameters
/// `[e, a, b, c, alpha, beta, gamma, log_eps]`; inputs `[N, D, r]`.
#[derive(Debug, Clone)]
pub struct DcptSeparable {
    params: Vec<ParamSpec>,
    inputs: Vec<InputSpec>,
}

impl Default for DcptSeparable {
    fn default() -> Self {
        Self::new()
    }
}

impl DcptSeparable {
    /// The law with its default start grid.
    pub fn new() -> Self {
        DcptSeparable {
            params: dcpt_params(false),
            inputs: DcptL3::new().inputs,
        }
    }
}

impl Law for DcptSeparable {
    fn name(&self) -> &str {
        "dcpt-separable"
    }
    fn formula(&self) -> &str {
        "L = E + A/N^alpha + B/D^beta + C/(r+eps)^gamma"
    }
    fn params(&self) -> &[ParamSpec] {
        &self.params
    }
    fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }
    fn log_eval(&self, p: &[f64], x: &[f64]) -> f64 {
        dcpt_kernel_raw(p, x, false, None)
    }
    fn log_grad(&self, p: &[f64], x: &[f64], g: &mut [f64]) -> f64 {
        dcpt_kernel_raw(p, x, false, Some(g))
    }
    fn prepared_len(&self) -> usize {
        4
    }
    /// `[log N, log D, r, log r]`.
    fn prepare(&self, x: &[f64], z: &mut [f64]) {
        dcpt_prepare(x, z)
    }
    fn log_grad_prepared(&self, p: &[f64], z: &[f64], g: &mut [f64]) -> f64 {
        dcpt_kernel(p, z, false, Some(g))
    }
    fn natural(&self, p: &[f64]) -> Vec<(String, f64)> {
        natural_with(
            self,
            p,
            &[("e", "E"), ("a", "A"), ("b", "B"), ("c", "C"), ("log_eps", "eps")],
        )
    }
}

/// Cross-domain D-CPT law: L3 plus `F/K^μ` with the domain-specific learnable coefficient `K = w1/k1 + w2·k2`.
/// Parameters `[e, a, b, c, alpha, beta, gamma, eta, log_eps, f, mu, log_w1, log_w2]`; inputs `[N, D, r, k1, k2]`.
#[derive(Debug, Clone)]
pub struct DcptCrossDomain {
    params: Vec<ParamSpec>,
    inputs: Vec<InputSpec>,
}

impl Default for DcptCrossDomain {
    fn default() -> Self {
        Self::new()
    }
}

impl DcptCrossDomain {
    /// The law with its default start grid.
    pub fn new() -> Self {
        let mut params = dcpt_params(true);
        params.push(ParamSpec::new("f", -INF, INF, &[-2.0, 0.0]));
        params.push(ParamSpec::new("mu", 0.0, 5.0, &[0.5, 1.0]));
        params.push(ParamSpec::new("log_w1", -10.0, 10.0, &[0.0]));
        params.push(ParamSpec::new("log_w2", -10.0, 10.0, &[0.0]));
        let mut inputs = DcptL3::new().inputs;
        inputs.push(input("k1", InputDomain::Positive));
        inputs.push(input("k2", InputDomain::Positive));
        DcptCrossDomain { params, inputs }
    }
}

impl Law for DcptCrossDomain {
    fn name(&self) -> &str {
        "dcpt-cross"
    }
    fn formula(&self) -> &str {
        "L = E + A/N^alpha + B*r^eta/D^beta + C/(r+eps)^gamma + F/K^mu, K = w1/k1 + w2*k2"
    }
    fn params(&self) -> &[ParamSpec] {
        &self.params
    }
    fn inputs(&self) -> &[InputSpec] {
        &self.inputs
    }
    fn log_eval(&self, p: &[f64], x: &[f64]) -> f64 {
        let mut g = [0.0; 13];
        self.log_grad(p, x, &mut g)
    }
    fn log_grad(&self, p: &[f64], x: &[f64], g: &mut [f64]) -> f64 {
        let mut z = [0.0; 6];
        self.prepare(x, &mut z);
        self.log_grad_prepared(p, &z, g)
    }
    fn prepared_len(&self) -> usize {
        6
    }
    /// `[log N, log D, r, log r, k1, k2]`.
    fn prepare(&self, x: &[f64], z: &mut [f64]) {
        dcpt_prepare(x, z);
        z[4] = x[3];
        z[5] = x[4];
    }
    fn log_grad_prepared(&self, p: &[f64], z: &[f64], g: &mut [f64]) -> f64 {
        // log L = LSE(log L3, f − μ log K): combine through the two-term softmax.
        let mut g3 = [0.0; 9];
        let l3 = dcpt_kernel(&p[..9], z, true, Some(&mut g3));
        let (w1, w2) = (exp(p[11]), exp(p[12]));
        let (k1, k2) = (z[4], z[5]);
        let k = w1 / k1 + w2 * k2;
        let t = p[9] - p[10] * k.ln();
        let mut w = [0.0; 2];
        let v = lse(&[l3, t], &mut w);
        for j in 0..9 {
            g[j] = w[0] * g3[j];
        }
        g[9] = w[1];
        g[10] = -w[1] * k.ln();
        g[11] = -w[1] * p[10] * (w1 / k1) / k;
        g[12] = -w[1] * p[10] * (w2 * k2) / k;
        v
    }
    fn natural(&self, p: &[f64]) -> Vec<(String, f64)> {
        natural_with(
            self,
            p,
            &[
                ("e", "E"),
                ("a", "A"),
                ("b", "B"),
                ("c", "C"),
                ("log_eps", "eps"),
                ("f", "F"),
                ("log_w1", "w1"),
                ("log_w2", "w2"),
            ],
        )
    }
}

/// Names accepted by [`by_name`].
pub const LAW_NAMES: &[&str] = &["chinchilla", "dcpt", "dcpt-separable", "dcpt-cross"];

/// Looks a law up by name (`chinchilla`, `dcpt`, `dcpt-separable`, `dcpt-cross`; case-insensitive, `dcpt-l3` and
/// `l3` are `dcpt`). An unknown name is an [`Error::Invalid`] on `field` (e.g. `LAW` for the CLI argument) listing
/// the known names.
pub fn by_name(name: &str, field: &str) -> Result<Box<dyn Law>, Error> {
    match name.to_ascii_lowercase().as_str() {
        "chinchilla" => Ok(Box::new(Chinchilla::new())),
        "dcpt" | "dcpt-l3" | "l3" => Ok(Box::new(DcptL3::new())),
        "dcpt-separable" => Ok(Box::new(DcptSeparable::new())),
        "dcpt-cross" => Ok(Box::new(DcptCrossDomain::new())),
        _ => Err(Error::invalid(
            field,
            name,
            "unknown law",
            format!("use one of {}", LAW_NAMES.join(", ")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fd_check(law: &dyn Law, p: &[f64], x: &[f64]) {
        let k = p.len();
        let mut g = vec![0.0; k];
        let v = law.grad(p, x, &mut g);
        assert!((v - law.eval(p, x)).abs() <= 1e-12 * v.abs().max(1.0));
        for j in 0..k {
            let h = 1e-6 * p[j].abs().max(1.0);
            let mut pp = p.to_vec();
            pp[j] += h;
            let up = law.eval(&pp, x);
            pp[j] -= 2.0 * h;
            let dn = law.eval(&pp, x);
            let fd = (up - dn) / (2.0 * h);
            let tol = 1e-5 * (fd.abs() + g[j].abs()) + 1e-8 * v.abs();
            assert!(
                (fd - g[j]).abs() <= tol,
                "{} param {j}: analytic {} vs fd {}",
                law.name(),
                g[j],
                fd
            );
        }
    }

    #[test]
    fn chinchilla_matches_closed_form() {
        let law = Chinchilla::new();
        let p = Chinchilla::pack(1.69, 406.4, 410.7, 0.34, 0.28);
        let (n, d): (f64, f64) = (70e9, 1.4e12);
        let want = 1.69 + 406.4 / n.powf(0.34) + 410.7 / d.powf(0.28);
        assert!((law.eval(&p, &[n, d]) - want).abs() < 1e-12);
    }

    #[test]
    fn dcpt_matches_closed_form_including_r_zero() {
        let law = DcptL3::new();
        let p = DcptL3::pack(1.5, 300.0, 800.0, 0.05, 0.3, 0.3, 0.5, 0.4, 0.02);
        for r in [0.0f64, 0.2, 1.0] {
            let (n, d): (f64, f64) = (1e8, 1e9);
            let want = 1.5 + 300.0 / n.powf(0.3) + 800.0 * r.powf(0.4) / d.powf(0.3) + 0.05 / (r + 0.02f64).powf(0.5);
            assert!((law.eval(&p, &[n, d, r]) - want).abs() < 1e-12, "r={r}");
            fd_check(&law, &p, &[n, d, r]);
        }
    }

    proptest! {
        #[test]
        fn gradients_match_finite_differences(
            e in -1.0f64..1.0, a in 0.0f64..8.0, b in 0.0f64..8.0, c in -3.0f64..1.0,
            alpha in 0.05f64..1.0, beta in 0.05f64..1.0, gamma in 0.05f64..1.5, eta in 0.0f64..1.5,
            le in -6.0f64..0.0, ln_n in 8.0f64..22.0, ln_d in 8.0f64..25.0, r in 0.0f64..1.0,
            f in -3.0f64..1.0, mu in 0.1f64..2.0, k1 in 0.5f64..5.0, k2 in 0.01f64..2.0,
        ) {
            let x3 = [ln_n.exp(), ln_d.exp(), r];
            fd_check(&Chinchilla::new(), &[a, b, e, alpha, beta], &x3[..2]);
            fd_check(&DcptL3::new(), &[e, a, b, c, alpha, beta, gamma, eta, le], &x3);
            fd_check(&DcptSeparable::new(), &[e, a, b, c, alpha, beta, gamma, le], &x3);
            fd_check(
                &DcptCrossDomain::new(),
                &[e, a, b, c, alpha, beta, gamma, eta, le, f, mu, 0.3, -0.2],
                &[x3[0], x3[1], r, k1, k2],
            );
        }
    }

    /// `log_grad_rows` (column-major gradient) against `log_grad` row by row, for every law: Chinchilla's fast path
    /// (rows in runs of equal N and rows that are not), its fallback (a term beyond the range of `exp`), and the
    /// default of the D-CPT laws.
    #[test]
    fn rows_at_once_match_row_by_row() {
        fn check(law: &dyn Law, p: &[f64], xs: &[Vec<f64>]) {
            let (n, k, w) = (xs.len(), p.len(), law.prepared_len());
            let mut z = vec![0.0; n * w];
            for (zi, x) in z.chunks_exact_mut(w).zip(xs) {
                law.prepare(x, zi);
            }
            let (mut lp, mut g) = (vec![0.0; n], vec![0.0; n * k]);
            law.log_grad_rows(p, &z, &mut lp, &mut g);
            let mut gi = vec![0.0; k];
            for (i, x) in xs.iter().enumerate() {
                let want = law.log_grad(p, x, &mut gi);
                let close = |a: f64, b: f64| (a - b).abs() <= 1e-13 * (1.0 + a.abs().max(b.abs()));
                assert!(close(lp[i], want), "{} row {i}: {} vs {want}", law.name(), lp[i]);
                for j in 0..k {
                    assert!(
                        close(g[j * n + i], gi[j]),
                        "{} row {i} param {j}: {} vs {}",
                        law.name(),
                        g[j * n + i],
                        gi[j]
                    );
                }
            }
        }
        let mut xs = Vec::new();
        for (i, n) in [1e7, 3e8, 3e8, 3e8, 5e9, 2e8, 2e8].iter().enumerate() {
            xs.push(vec![
                *n,
                1e9 * (1.0 + i as f64),
                0.1 * i as f64 / 7.0,
                1.0 + 0.2 * i as f64,
                0.05 * (i + 1) as f64,
            ]);
        }
        let two: Vec<Vec<f64>> = xs.iter().map(|x| x[..2].to_vec()).collect();
        let three: Vec<Vec<f64>> = xs.iter().map(|x| x[..3].to_vec()).collect();
        let chin = Chinchilla::new();
        check(&chin, &Chinchilla::pack(1.69, 406.4, 410.7, 0.34, 0.28), &two);
        check(&chin, &[25.0, 0.0, -1.0, 2.0, 0.0], &two);
        check(&chin, &[800.0, 3.0, 0.5, 0.3, 0.2], &two); // exp(800) overflows: the fallback
        check(&chin, &[5.0, 5.0, -750.0, 0.3, 0.2], &two);
        check(
            &DcptL3::new(),
            &DcptL3::pack(1.5, 300.0, 800.0, 0.05, 0.3, 0.3, 0.5, 0.4, 0.02),
            &three,
        );
        check(
            &DcptSeparable::new(),
            &[0.4, 5.7, 6.7, -3.0, 0.3, 0.3, 0.5, -3.9],
            &three,
        );
        check(
            &DcptCrossDomain::new(),
            &[0.4, 5.7, 6.7, -3.0, 0.3, 0.3, 0.5, 0.4, -3.9, -1.0, 0.7, 0.3, -0.2],
            &xs,
        );
    }

    #[test]
    fn registry_knows_all_names() {
        for n in LAW_NAMES {
            assert_eq!(by_name(n, "law").unwrap().name(), *n);
        }
        let Err(e) = by_name("nope", "law") else {
            panic!("`nope` is not a law")
        };
        assert!(e.is_user_error());
        assert!(e.to_string().contains("dcpt-cross"), "{e}");
    }
}
