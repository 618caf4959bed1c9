//! Fitting a [`DeviceProfile`] to measured GEMM timings.
//!
//! The model is the roofline of [`crate::roofline`]: `t = launch + max(F / (rate[dtype] d/(d + half_dim)),
//! bytes / mem_bw)`, with `mem_bw` given (measured separately by the memory-bandwidth probe). The free parameters are
//! `ln rate[dtype]` for every dtype present, `ln half_dim` and `ln launch`; the objective is the mean squared error of
//! `ln t` (relative errors weigh small and large GEMMs alike; log parameters keep them positive). Minimised with
//! argmin's Nelder-Mead (Lagarias et al. 1998) on `Vec<f64>`, restarted from its own optimum until it stops
//! improving (the objective is not smooth where the roofline switches regime).
use argmin::core::{CostFunction, Executor};
use argmin::solver::neldermead::NelderMead;
use trainlab_core::profile::Provenance;
use trainlab_core::workloads::Gemm;
use trainlab_core::{DeviceProfile, Dtype, Error};

use crate::roofline::gemm_time;

struct LogLsq<'a> {
    points: &'a [(Gemm, f64)],
    dtypes: Vec<Dtype>,
    mem_bw: f64,
}

impl LogLsq<'_> {
    fn profile(&self, x: &[f64]) -> DeviceProfile {
        let k = self.dtypes.len();
        DeviceProfile {
            backend: String::new(),
            gemm_rate: self.dtypes.iter().zip(x).map(|(d, v)| (*d, v.exp())).collect(),
            gemm_half_dim: x[k].exp(),
            launch_overhead_s: x[k + 1].exp(),
            mem_bw_bytes_per_s: self.mem_bw,
            provenance: Provenance::default(),
            holdout_median_abs_rel_error: None,
            gpu: None,
        }
    }
    fn sse(&self, x: &[f64]) -> f64 {
        if x.iter().any(|v| !v.is_finite() || v.abs() > 200.0) {
            return f64::MAX / 4.0;
        }
        let p = self.profile(x);
        self.points
            .iter()
            .map(|(g, t)| {
                let e = gemm_time(&p, g).ln() - t.ln();
                e * e
            })
            .sum::<f64>()
            / self.points.len() as f64
    }
}

impl CostFunction for LogLsq<'_> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, x: &Self::Param) -> Result<f64, argmin::core::Error> {
        Ok(self.sse(x))
    }
}

fn nelder_mead(problem: &LogLsq<'_>, start: &[f64], step: f64) -> Result<(Vec<f64>, f64), Error> {
    let mut simplex = vec![start.to_vec()];
    for i in 0..start.len() {
        let mut v = start.to_vec();
        v[i] += step;
        simplex.push(v);
    }
    let solver = NelderMead::new(simplex)
        .with_sd_tolerance(1e-14)
        .map_err(|e| Error::Backend(format!("calibration solver: {e}")))?;
    let res = Executor::new(
        LogLsq {
            points: problem.points,
            dtypes: problem.dtypes.clone(),
            mem_bw: problem.mem_bw,
        },
        solver,
    )
    .configure(|s| s.max_iters(4000))
    .run()
    .map_err(|e| Error::Backend(format!("calibration fit did not run: {e}")))?;
    let best = res
        .state
        .best_param
        .clone()
        .ok_or_else(|| Error::Backend("calibration fit returned no parameters".into()))?;
    let cost = problem.sse(&best);
    Ok((best, cost))
}

/// Fits a profile to `(gemm, median seconds)` points. One asymptotic rate per dtype present in the points; `mem_bw`
/// (bytes/s) is taken as given. `backend` is `cpu` or `cuda`; the fitted profile carries `provenance`.
/// Needs at least (dtypes + 2) points with positive finite times.
pub fn fit_gemm_profile(
    points: &[(Gemm, f64)],
    backend: &str,
    provenance: Provenance,
    mem_bw: f64,
) -> Result<DeviceProfile, Error> {
    if !(mem_bw.is_finite() && mem_bw > 0.0) {
        return Err(Error::invalid(
            "mem_bw",
            mem_bw,
            "must be a finite number > 0",
            "measure memory bandwidth first",
        ));
    }
    for (i, (g, t)) in points.iter().enumerate() {
        if !(t.is_finite() && *t > 0.0) {
            return Err(Error::invalid(
                format!("points[{i}].time"),
                t,
                "must be a finite time > 0",
                "drop failed measurements before fitting",
            ));
        }
        if g.m == 0 || g.n == 0 || g.k == 0 || g.batch == 0 {
            return Err(Error::invalid(
                format!("points[{i}].gemm"),
                g.label(),
                "has a zero dimension",
                "measure GEMMs with m, n, k, batch >= 1",
            ));
        }
    }
    let dtypes: Vec<Dtype> = points
        .iter()
        .map(|(g, _)| g.dtype)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if points.len() < dtypes.len() + 2 {
        return Err(Error::invalid(
            "points",
            points.len(),
            format!("{} parameters need at least as many timings", dtypes.len() + 2),
            "measure more GEMM sizes",
        ));
    }
    // starting point: the best achieved rate per dtype, a 64-wide half dimension, half the fastest time as launch
    let mut start = Vec::with_capacity(dtypes.len() + 2);
    for d in &dtypes {
        let best = points
            .iter()
            .filter(|(g, _)| g.dtype == *d)
            .map(|(g, t)| g.flops() / t)
            .fold(0.0f64, f64::max);
        start.push((best * 1.2).max(1.0).ln());
    }
    start.push(64f64.ln());
    let fastest = points.iter().map(|(_, t)| *t).fold(f64::INFINITY, f64::min);
    start.push((fastest * 0.5).ln());
    let problem = LogLsq {
        points,
        dtypes: dtypes.clone(),
        mem_bw,
    };
    let (mut x, mut cost) = nelder_mead(&problem, &start, 0.5)?;
    for step in [0.3, 0.1, 0.03, 0.01] {
        let (x2, c2) = nelder_mead(&problem, &x, step)?;
        if c2 <= cost {
            x = x2;
            cost = c2;
        }
    }
    let mut p = problem.profile(&x);
    p.backend = backend.to_string();
    p.provenance = provenance;
    // in-sample errors are not a hold-out estimate: the caller sets `holdout_median_abs_rel_error` from held-out
    // points with [`holdout_error`] and [`median_abs`]
    p.holdout_median_abs_rel_error = None;
    Ok(p)
}

/// Relative errors `(predicted - measured) / measured` of the profile on each point, in order.
pub fn holdout_error(profile: &DeviceProfile, points: &[(Gemm, f64)]) -> Vec<f64> {
    points.iter().map(|(g, t)| (gemm_time(profile, g) - t) / t).collect()
}

/// Median of absolute values (for `holdout_median_abs_rel_error`); `None` for an empty slice (core's one median).
pub use trainlab_core::stats::median_abs;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;
    use trainlab_core::Seed;

    fn truth() -> DeviceProfile {
        let mut p = crate::roofline::default_cpu_profile();
        p.gemm_rate = [(Dtype::Fp32, 110e9), (Dtype::Bf16, 60e9)].into_iter().collect();
        p.gemm_half_dim = 40.0;
        p.launch_overhead_s = 15e-6;
        p
    }

    fn shapes() -> Vec<Gemm> {
        let mut v = Vec::new();
        for dtype in [Dtype::Fp32, Dtype::Bf16] {
            for n in [8u64, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024] {
                v.push(Gemm {
                    m: n,
                    n,
                    k: n,
                    batch: 1,
                    dtype,
                    device: Default::default(),
                });
                v.push(Gemm {
                    m: n * 2,
                    n,
                    k: n / 2 + 1,
                    batch: 1,
                    dtype,
                    device: Default::default(),
                });
            }
        }
        v
    }

    #[test]
    fn recovers_known_profile() {
        let t = truth();
        let pts: Vec<(Gemm, f64)> = shapes().into_iter().map(|g| (g.clone(), gemm_time(&t, &g))).collect();
        let p = fit_gemm_profile(&pts, "cpu", Provenance::default(), t.mem_bw_bytes_per_s).unwrap();
        for d in [Dtype::Fp32, Dtype::Bf16] {
            let r = p.rate(d) / t.rate(d) - 1.0;
            assert!(r.abs() < 0.01, "{d:?} {r}");
        }
        assert!(
            (p.gemm_half_dim / t.gemm_half_dim - 1.0).abs() < 0.01,
            "{}",
            p.gemm_half_dim
        );
        assert!(
            (p.launch_overhead_s / t.launch_overhead_s - 1.0).abs() < 0.01,
            "{}",
            p.launch_overhead_s
        );
        let e = holdout_error(&p, &pts);
        assert!(median_abs(&e).unwrap() < 1e-3);
    }

    #[test]
    fn noisy_fit_is_close_and_predicts_holdout() {
        let t = truth();
        let mut rng = Seed(7).derive("calibrate-noise").rng();
        let all: Vec<(Gemm, f64)> = shapes()
            .into_iter()
            .map(|g| {
                let noise: f64 = rng.random_range(-0.05..0.05);
                let time = gemm_time(&t, &g) * (1.0 + noise);
                (g, time)
            })
            .collect();
        let (train, hold): (Vec<_>, Vec<_>) = all.iter().cloned().enumerate().partition(|(i, _)| i % 4 != 0);
        let train: Vec<_> = train.into_iter().map(|(_, p)| p).collect();
        let hold: Vec<_> = hold.into_iter().map(|(_, p)| p).collect();
        let p = fit_gemm_profile(&train, "cpu", Provenance::default(), t.mem_bw_bytes_per_s).unwrap();
        for d in [Dtype::Fp32, Dtype::Bf16] {
            assert!((p.rate(d) / t.rate(d) - 1.0).abs() < 0.08, "{d:?}");
        }
        let med = median_abs(&holdout_error(&p, &hold)).unwrap();
        assert!(med < 0.05, "{med}");
    }

    #[test]
    fn rejects_bad_points() {
        let g = Gemm::square(64);
        assert!(fit_gemm_profile(&[(g.clone(), 0.0)], "cpu", Provenance::default(), 1e10).is_err());
        assert!(fit_gemm_profile(&[(g, 1e-3)], "cpu", Provenance::default(), 1e10).is_err());
    }
}
