//! The optimiser behind [`super::minimise_from`]: limited-memory BFGS (Nocedal 1980, "Updating quasi-Newton matrices
//! with limited storage", Math. Comp. 35; two-loop recursion and the `sᵀy / yᵀy` initial scaling of Liu & Nocedal
//! 1989, §6) with the Moré–Thuente line search (Moré & Thuente 1994, "Line search algorithms with guaranteed
//! sufficient decrease", ACM TOMS 20(3), the safeguarded cubic/quadratic step of §4 and the modified function of §3).
//!
//! Written for the fits here: a handful of parameters, an objective that costs far more than the optimiser's own
//! arithmetic, thousands of independent starts. Every buffer is allocated once per run; an iteration allocates
//! nothing. The run is a pure function of the objective and the start (no clocks, no shared state), so a multi-start
//! gives the same bytes at any thread count.

/// Limits and stopping rules of one phase of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Correction pairs kept (L-BFGS memory; the first phase's value holds for the run).
    pub memory: usize,
    /// Most iterations (line searches) in this phase.
    pub max_iters: u64,
    /// Stop when one iteration lowers the objective by at most `ftol · max(|f_k|, |f_k+1|, f_floor)`.
    pub ftol: f64,
    /// Floor of the scale in the `ftol` rule (SciPy's L-BFGS-B uses 1; 0 makes the rule purely relative).
    pub f_floor: f64,
    /// Stop when every gradient component is at most this in magnitude.
    pub gtol: f64,
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    /// Lowest point reached (the start when no evaluation there was finite).
    pub x: Vec<f64>,
    /// Objective at `x` (`+inf` when the start itself was not finite).
    pub f: f64,
    /// Objective-and-gradient evaluations used.
    pub evaluations: u64,
    /// Iterations (line searches that moved).
    pub iterations: u64,
}

/// Sufficient-decrease constant of the line search (Armijo's c1).
const C1: f64 = 1e-4;
/// Curvature constant of the line search (strong Wolfe c2; 0.9 is the usual choice for quasi-Newton methods).
const C2: f64 = 0.9;
/// Relative width of the bracket below which the line search stops with the best point so far.
const XTOL: f64 = 1e-10;
/// Evaluations one line search may spend.
const LS_MAX_EVALS: u32 = 20;
/// Smallest and largest step lengths tried.
const STP_MIN: f64 = 1e-20;
const STP_MAX: f64 = 1e20;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises `fg` (which returns the objective at its first argument and writes the gradient into its second) from
/// `x0`, in phases: when a phase's stopping rule holds, the run goes on under the next one, keeping its iterate and
/// its curvature pairs (a later, tighter phase continues the same L-BFGS run rather than restarting it). Never fails:
/// the lowest point reached is returned.
pub(crate) fn minimise<F: FnMut(&[f64], &mut [f64]) -> f64>(mut fg: F, x0: &[f64], phases: &[Options]) -> Outcome {
    let k = x0.len();
    let Some(first) = phases.first() else {
        return Outcome {
            x: x0.to_vec(),
            f: f64::INFINITY,
            evaluations: 0,
            iterations: 0,
        };
    };
    let m = first.memory.max(1);
    let mut x = x0.to_vec();
    let mut g = vec![0.0; k];
    let mut f = fg(&x, &mut g);
    let mut evals = 1u64;
    if !f.is_finite() {
        return Outcome {
            x,
            f: f64::INFINITY,
            evaluations: evals,
            iterations: 0,
        };
    }
    // Correction pairs in a ring: slot (head + i) % m holds the i-th oldest of `len` pairs.
    let (mut s, mut y) = (vec![0.0; m * k], vec![0.0; m * k]);
    let (mut rho, mut alpha) = (vec![0.0; m], vec![0.0; m]);
    let (mut head, mut len) = (0usize, 0usize);
    let mut gamma = 1.0;
    let mut d = vec![0.0; k];
    let (mut xt, mut gt) = (vec![0.0; k], vec![0.0; k]);
    let (mut iterations, mut phase, mut in_phase) = (0, 0, 0);
    loop {
        let opt = &phases[phase];
        if in_phase >= opt.max_iters || g.iter().all(|v| v.abs() <= opt.gtol) {
            if phase + 1 < phases.len() {
                (phase, in_phase) = (phase + 1, 0);
                continue;
            }
            break;
        }
        // d = -H g by the two-loop recursion, H0 = gamma I.
        d.copy_from_slice(&g);
        for i in (0..len).rev() {
            let j = (head + i) % m;
            let sj = &s[j * k..(j + 1) * k];
            alpha[j] = rho[j] * dot(sj, &d);
            for (dv, yv) in d.iter_mut().zip(&y[j * k..(j + 1) * k]) {
                *dv -= alpha[j] * yv;
            }
        }
        d.iter_mut().for_each(|v| *v *= -gamma);
        for i in 0..len {
            let j = (head + i) % m;
            // d holds -r here; the update r += s (alpha - beta) with beta = rho yᵀr becomes d -= s (alpha + rho yᵀd).
            let beta = rho[j] * dot(&y[j * k..(j + 1) * k], &d);
            for (dv, sv) in d.iter_mut().zip(&s[j * k..(j + 1) * k]) {
                *dv -= (alpha[j] + beta) * sv;
            }
        }
        let mut dg = dot(&d, &g);
        if dg.is_nan() || dg >= 0.0 || len == 0 {
            // No history, or a direction that does not descend (rounding): restart from steepest descent.
            len = 0;
            gamma = 1.0;
            d.iter_mut().zip(&g).for_each(|(dv, gv)| *dv = -gv);
            dg = -dot(&g, &g);
            if dg == 0.0 {
                break;
            }
        }
        // The first step of a steepest-descent restart has unit length; later ones take the quasi-Newton step.
        let stp0 = if len == 0 { 1.0 / dot(&d, &d).sqrt() } else { 1.0 };
        let Some(ft) = line_search(&mut fg, &x, f, &d, dg, stp0, &mut xt, &mut gt, &mut evals) else {
            break;
        };
        // s = xt - x, y = gt - g; keep the pair only when its curvature is safely positive.
        let (mut sy, mut yy) = (0.0, 0.0);
        for i in 0..k {
            let (si, yi) = (xt[i] - x[i], gt[i] - g[i]);
            sy += si * yi;
            yy += yi * yi;
        }
        if sy > f64::EPSILON * yy && yy > 0.0 {
            let j = if len < m {
                len += 1;
                (head + len - 1) % m
            } else {
                let j = head;
                head = (head + 1) % m;
                j
            };
            for i in 0..k {
                s[j * k + i] = xt[i] - x[i];
                y[j * k + i] = gt[i] - g[i];
            }
            rho[j] = 1.0 / sy;
            gamma = sy / yy;
        }
        iterations += 1;
        in_phase += 1;
        let drop = f - ft;
        std::mem::swap(&mut x, &mut xt);
        std::mem::swap(&mut g, &mut gt);
        let scale = f.abs().max(ft.abs()).max(opt.f_floor);
        f = ft;
        if drop <= opt.ftol * scale {
            if phase + 1 < phases.len() {
                (phase, in_phase) = (phase + 1, 0);
            } else {
                break;
            }
        }
    }
    Outcome {
        x,
        f,
        evaluations: evals,
        iterations,
    }
}

/// A trial step: step length, objective, directional derivative.
#[derive(Debug, Clone, Copy)]
struct Pt {
    t: f64,
    f: f64,
    g: f64,
}

/// Moré–Thuente search along `d` from `x` (objective `f0`, directional derivative `dg0 < 0`), first trial `stp0`.
/// On success `xt`/`gt` hold the accepted point and its objective is returned: a point meeting the strong Wolfe
/// conditions, or, when the search runs out of evaluations or of resolution, the lowest point it found if that is
/// below `f0`. `None` when no trial lowered the objective.
#[allow(clippy::too_many_arguments)]
fn line_search<F: FnMut(&[f64], &mut [f64]) -> f64>(
    fg: &mut F,
    x: &[f64],
    f0: f64,
    d: &[f64],
    dg0: f64,
    stp0: f64,
    xt: &mut [f64],
    gt: &mut [f64],
    evals: &mut u64,
) -> Option<f64> {
    let gtest = C1 * dg0;
    let mut eval_at = |stp: f64, xt: &mut [f64], gt: &mut [f64]| -> (f64, f64) {
        for ((xv, x0), dv) in xt.iter_mut().zip(x).zip(d) {
            *xv = x0 + stp * dv;
        }
        *evals += 1;
        let f = fg(xt, gt);
        (f, dot(gt, d))
    };
    let mut bracketed = false;
    let mut stage1 = true;
    let mut width = STP_MAX - STP_MIN;
    let mut width1 = 2.0 * width;
    // bx: the best step so far; by: the other end of the interval (Moré–Thuente's stx and sty).
    let mut bx = Pt { t: 0.0, f: f0, g: dg0 };
    let mut by = bx;
    let mut stp = stp0.clamp(STP_MIN, STP_MAX);
    let (mut lo, mut hi) = (0.0, stp + 4.0 * stp);
    let mut stp_max = STP_MAX;
    let mut best = Pt { t: 0.0, f: f0, g: dg0 };
    let mut last = f64::NAN;
    for _ in 0..LS_MAX_EVALS {
        let (ft, dgt) = eval_at(stp, xt, gt);
        last = stp;
        if !(ft.is_finite() && dgt.is_finite()) {
            // Overflow or a domain error out there: the step is too long. Halve it towards the best step.
            stp_max = stp;
            stp = bx.t + 0.5 * (stp - bx.t);
            if stp <= bx.t || stp - bx.t <= XTOL * stp {
                break;
            }
            continue;
        }
        if ft < best.f {
            best = Pt { t: stp, f: ft, g: dgt };
        }
        let ftest = f0 + stp * gtest;
        if ft <= ftest && dgt.abs() <= -C2 * dg0 {
            return Some(ft); // strong Wolfe conditions hold
        }
        if stage1 && ft <= ftest && dgt >= 0.0 {
            stage1 = false;
        }
        if (bracketed && (stp <= lo || stp >= hi || hi - lo <= XTOL * hi))
            || (stp == stp_max && ft <= ftest && dgt <= gtest)
            || (stp == STP_MIN && (ft > ftest || dgt >= gtest))
        {
            break; // no further progress possible
        }
        let p = Pt { t: stp, f: ft, g: dgt };
        if stage1 && ft <= bx.f && ft > ftest {
            // Work on the modified function psi(t) = f(t) - f0 - t C1 dg0 until a step with psi <= 0 and
            // f' >= 0 appears (§3 of the paper).
            let shift = |q: Pt| Pt {
                t: q.t,
                f: q.f - q.t * gtest,
                g: q.g - gtest,
            };
            let unshift = |q: Pt| Pt {
                t: q.t,
                f: q.f + q.t * gtest,
                g: q.g + gtest,
            };
            let (mut mx, mut my) = (shift(bx), shift(by));
            stp = safeguarded_step(&mut mx, &mut my, shift(p), &mut bracketed, lo, hi);
            bx = unshift(mx);
            by = unshift(my);
        } else {
            stp = safeguarded_step(&mut bx, &mut by, p, &mut bracketed, lo, hi);
        }
        if bracketed {
            if (by.t - bx.t).abs() >= 0.66 * width1 {
                stp = bx.t + 0.5 * (by.t - bx.t); // force sufficient shrinking of the interval
            }
            width1 = width;
            width = (by.t - bx.t).abs();
            lo = bx.t.min(by.t);
            hi = bx.t.max(by.t);
        } else {
            lo = stp + 1.1 * (stp - bx.t);
            hi = stp + 4.0 * (stp - bx.t);
        }
        stp = stp.clamp(STP_MIN, stp_max);
        if bracketed && (stp <= lo || stp >= hi || hi - lo <= XTOL * hi) {
            break;
        }
    }
    if best.f >= f0 {
        return None;
    }
    if best.t != last {
        let (ft, _) = eval_at(best.t, xt, gt);
        if ft.is_nan() || ft >= f0 {
            return None;
        }
        return Some(ft);
    }
    Some(best.f)
}

/// Minimiser of the cubic through `(u.t, u.f)` and `(v.t, v.f)` with slopes `u.g`, `v.g`, as `u.t + r (v.t − u.t)`:
/// returns `(r, gamma)` (`gamma` = 0 when the cubic has no interior minimum in that direction).
fn cubic(u: Pt, v: Pt) -> (f64, f64) {
    let theta = 3.0 * (u.f - v.f) / (v.t - u.t) + u.g + v.g;
    let s = theta.abs().max(u.g.abs()).max(v.g.abs());
    let disc = ((theta / s) * (theta / s) - (u.g / s) * (v.g / s)).max(0.0);
    let mut gamma = s * disc.sqrt();
    if v.t < u.t {
        gamma = -gamma;
    }
    let p = (gamma - u.g) + theta;
    let q = ((gamma - u.g) + gamma) + v.g;
    (p / q, gamma)
}

/// One safeguarded step (§4 of the paper): from the best step `x`, the other end `y` and the new trial `p`, picks the
/// next trial in `[lo, hi]` and updates the interval (`bracketed` turns true once a minimiser is enclosed).
fn safeguarded_step(x: &mut Pt, y: &mut Pt, p: Pt, bracketed: &mut bool, lo: f64, hi: f64) -> f64 {
    let opposite = p.g * x.g.signum() < 0.0;
    let next;
    if p.f > x.f {
        // Higher value: a minimiser lies between x and p. Cubic step, or halfway to the quadratic one if farther.
        let (r, _) = cubic(*x, p);
        let c = x.t + r * (p.t - x.t);
        let q = x.t + (x.g / ((x.f - p.f) / (p.t - x.t) + x.g)) / 2.0 * (p.t - x.t);
        next = if (c - x.t).abs() < (q - x.t).abs() {
            c
        } else {
            c + (q - c) / 2.0
        };
        *bracketed = true;
    } else if opposite {
        // Lower value, slopes of opposite sign: bracketed. The farther of the cubic and secant steps.
        let (r, _) = cubic(p, *x);
        let c = p.t + r * (x.t - p.t);
        let sec = p.t + (p.g / (p.g - x.g)) * (x.t - p.t);
        next = if (c - p.t).abs() > (sec - p.t).abs() { c } else { sec };
        *bracketed = true;
    } else if p.g.abs() < x.g.abs() {
        // Lower value, same sign, smaller slope: the cubic step if the cubic turns up beyond p, else an end.
        let (r, gamma) = cubic(p, *x);
        let c = if r < 0.0 && gamma != 0.0 {
            p.t + r * (x.t - p.t)
        } else if p.t > x.t {
            hi
        } else {
            lo
        };
        let sec = p.t + (p.g / (p.g - x.g)) * (x.t - p.t);
        if *bracketed {
            let n = if (c - p.t).abs() < (sec - p.t).abs() { c } else { sec };
            let cap = p.t + 0.66 * (y.t - p.t);
            next = if p.t > x.t { n.min(cap) } else { n.max(cap) };
        } else {
            let n = if (c - p.t).abs() > (sec - p.t).abs() { c } else { sec };
            next = n.clamp(lo.min(hi), hi.max(lo));
        }
    } else if *bracketed {
        // Lower value, same sign, slope not smaller: cubic step towards the other end.
        let (r, _) = cubic(p, *y);
        next = p.t + r * (y.t - p.t);
    } else {
        next = if p.t > x.t { hi } else { lo };
    }
    if p.f > x.f {
        *y = p;
    } else {
        if opposite {
            *y = *x;
        }
        *x = p;
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> [Options; 1] {
        [Options {
            memory: 10,
            max_iters: 1000,
            ftol: 1e-15,
            f_floor: 0.0,
            gtol: 1e-10,
        }]
    }

    /// Rosenbrock's valley: the classic test of a quasi-Newton method's line search and curvature updates.
    #[test]
    fn finds_the_rosenbrock_minimum() {
        let fg = |x: &[f64], g: &mut [f64]| {
            let (a, b) = (1.0 - x[0], x[1] - x[0] * x[0]);
            g[0] = -2.0 * a - 400.0 * x[0] * b;
            g[1] = 200.0 * b;
            a * a + 100.0 * b * b
        };
        let out = minimise(fg, &[-1.2, 1.0], &opts());
        assert!(
            (out.x[0] - 1.0).abs() < 1e-6 && (out.x[1] - 1.0).abs() < 1e-6,
            "{out:?}"
        );
        assert!(out.evaluations < 100, "{out:?}");
    }

    /// A badly scaled quadratic in 8 dimensions (condition number 1e6) is solved to full precision.
    #[test]
    fn solves_an_ill_conditioned_quadratic() {
        let scale: Vec<f64> = (0..8).map(|i| 10f64.powf(6.0 * i as f64 / 7.0)).collect();
        let fg = |x: &[f64], g: &mut [f64]| {
            let mut f = 0.0;
            for i in 0..8 {
                let r = x[i] - i as f64;
                f += 0.5 * scale[i] * r * r;
                g[i] = scale[i] * r;
            }
            f
        };
        let out = minimise(fg, &[10.0; 8], &opts());
        for (i, v) in out.x.iter().enumerate() {
            assert!((v - i as f64).abs() < 1e-5, "{out:?}");
        }
    }

    /// A loose first phase followed by a tight one continues the same run: it ends where a tight run alone ends, and
    /// lower than the loose phase alone.
    #[test]
    fn phases_continue_one_run() {
        let fg = |x: &[f64], g: &mut [f64]| {
            let (a, b) = (1.0 - x[0], x[1] - x[0] * x[0]);
            g[0] = -2.0 * a - 400.0 * x[0] * b;
            g[1] = 200.0 * b;
            a * a + 100.0 * b * b
        };
        let loose = Options {
            ftol: 1e-3,
            f_floor: 1.0,
            gtol: 1e-2,
            ..opts()[0]
        };
        let early = minimise(fg, &[-1.2, 1.0], &[loose]);
        let both = minimise(fg, &[-1.2, 1.0], &[loose, opts()[0]]);
        assert!(both.f < early.f && both.f < 1e-16, "{early:?} {both:?}");
        assert!(both.evaluations > early.evaluations);
        assert!((both.x[0] - 1.0).abs() < 1e-8, "{both:?}");
    }

    /// Overflow far from the start is handled by shortening the step, and a non-finite start returns infinity.
    #[test]
    fn survives_non_finite_regions() {
        let fg = |x: &[f64], g: &mut [f64]| {
            if x[0] > 3.0 {
                g[0] = f64::NAN;
                return f64::INFINITY;
            }
            g[0] = 2.0 * (x[0] - 2.0);
            (x[0] - 2.0) * (x[0] - 2.0)
        };
        let out = minimise(fg, &[-50.0], &opts());
        assert!((out.x[0] - 2.0).abs() < 1e-8, "{out:?}");
        let out = minimise(fg, &[5.0], &opts());
        assert_eq!(out.f, f64::INFINITY);
        assert_eq!(out.x, vec![5.0]);
    }
}
