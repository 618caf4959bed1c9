//! The one set of statistics helpers every crate uses: sample summaries with a 95% confidence interval of the mean
//! (Student-t), medians, quantiles and the inverse standard-normal CDF.
//!
//! Where statrs has the function it is used: the median ([`statrs::statistics::OrderStatistics::median`], a
//! selection in place, no sort), the Student-t and standard-normal quantiles. statrs's own `quantile` is the
//! Hyndman & Fan (1996) type 8 estimator; [`quantile`] here is their type 7 (linear interpolation between order
//! statistics, the default of NumPy and R), which the bootstrap percentile intervals are defined with, so it is
//! written out.
//!
//! Conventions: the median of an even-sized sample is the mean of the two middle values; an empty sample gives NaN
//! (or `None` where the caller must handle it); values are ordered by [`f64::total_cmp`].
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};
use statrs::statistics::{Data, OrderStatistics};

/// Summary of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Sample size.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n - 1).
    pub std: f64,
    /// Standard error of the mean.
    pub stderr: f64,
    /// Median.
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Summary {
    /// Summarises `xs`; an empty sample gives NaNs with `n = 0`.
    pub fn of(xs: &[f64]) -> Summary {
        let n = xs.len();
        if n == 0 {
            return Summary {
                n,
                mean: f64::NAN,
                std: f64::NAN,
                stderr: f64::NAN,
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        let mut s = xs.to_vec();
        s.sort_by(f64::total_cmp);
        let (min, max) = (s[0], s[n - 1]);
        Summary {
            n,
            mean,
            std: var.sqrt(),
            stderr: (var / n as f64).sqrt(),
            median: median_mut(&mut s),
            min,
            max,
        }
    }
    /// Half-width of the 95% interval of the mean: `t_{0.975, n-1} * stderr` (0 for a single value, NaN for none).
    pub fn half_width(&self) -> f64 {
        if self.n < 2 {
            return if self.n == 1 { 0.0 } else { f64::NAN };
        }
        student_t_quantile(0.975, (self.n - 1) as f64) * self.stderr
    }
    /// 95% interval of the mean.
    pub fn ci95(&self) -> (f64, f64) {
        (self.mean - self.half_width(), self.mean + self.half_width())
    }
    /// Relative spread (std / median), a noise indicator for timings.
    pub fn rel_spread(&self) -> f64 {
        self.std / self.median.abs().max(f64::MIN_POSITIVE)
    }
}

/// Quantile `q` in [0, 1] of a slice sorted ascending (type 7: linear interpolation between order statistics); NaN
/// for an empty slice.
pub fn quantile_sorted(s: &[f64], q: f64) -> f64 {
    if s.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// Quantile `q` in [0, 1] of an unsorted sample (type 7, see [`quantile_sorted`]), NaNs dropped; NaN when nothing is
/// left.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut s: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    s.sort_by(f64::total_cmp);
    quantile_sorted(&s, q)
}

/// Median of an unsorted slice (mean of the two middle values for an even size); NaN for an empty slice.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    median_mut(&mut v)
}

/// [`median`] reordering `xs` in place instead of copying it (a selection, no sort, no allocation): for hot paths
/// that own a scratch buffer.
pub fn median_mut(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    Data::new(xs).median()
}

/// Median of the absolute values of the finite entries of `xs` (the usual summary of relative errors); `None` when
/// no entry is finite.
pub fn median_abs(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().map(|e| e.abs()).filter(|e| e.is_finite()).collect();
    (!v.is_empty()).then(|| median_mut(&mut v))
}

/// Inverse of the standard-normal CDF, `Phi^-1(p)` (statrs); `-inf` / `+inf` at 0 / 1, NaN outside [0, 1].
pub fn inv_norm_cdf(p: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    Normal::standard().inverse_cdf(p)
}

/// The `p`-quantile of Student's t with `dof` degrees of freedom (statrs); NaN for `dof <= 0` or `p` outside [0, 1].
pub fn student_t_quantile(p: f64, dof: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    match StudentsT::new(0.0, 1.0, dof) {
        Ok(t) => t.inverse_cdf(p),
        Err(_) => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn summary_basic() {
        let s = Summary::of(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s.mean, 2.5);
        assert_eq!(s.median, 2.5);
        assert!((s.std - 1.290_994).abs() < 1e-5);
        let (lo, hi) = s.ci95();
        assert!(lo < 2.5 && hi > 2.5);
        // t(0.975, 3) = 3.182446 (any t table)
        assert!((s.half_width() - 3.182_446 * s.stderr).abs() < 1e-5 * s.stderr);
        assert_eq!(Summary::of(&[7.0]).half_width(), 0.0);
        assert!(Summary::of(&[]).half_width().is_nan());
    }

    #[test]
    fn t_and_normal_quantiles_match_tables() {
        // Two-sided 95% t critical values (Abramowitz & Stegun, Table 26.10): dof 1, 10, 30, 120.
        for (dof, t) in [(1.0, 12.706_2), (10.0, 2.228_1), (30.0, 2.042_3), (120.0, 1.979_9)] {
            assert!((student_t_quantile(0.975, dof) - t).abs() < 1e-4, "dof {dof}");
        }
        assert!(inv_norm_cdf(0.5).abs() < 1e-12);
        assert!((inv_norm_cdf(0.975) - 1.959_964).abs() < 1e-6);
        assert!((inv_norm_cdf(0.025) + 1.959_964).abs() < 1e-6);
        assert!(inv_norm_cdf(1.5).is_nan() && student_t_quantile(0.5, 0.0).is_nan());
    }

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(median_abs(&[-3.0, 1.0, f64::NAN, 2.0]), Some(2.0));
        assert_eq!(median_abs(&[f64::INFINITY]), None);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.25), 2.0);
        assert_eq!(quantile(&[1.0, f64::NAN, 2.0], 0.5), 1.5);
        assert!(quantile(&[f64::NAN], 0.5).is_nan());
    }

    proptest! {
        /// The selection median equals the middle of a sort, and quantile 0.5 is the median.
        #[test]
        fn median_is_the_sorted_middle(xs in proptest::collection::vec(-1e6f64..1e6, 1..60)) {
            let mut s = xs.clone();
            s.sort_by(f64::total_cmp);
            let n = s.len();
            let want = if n % 2 == 1 { s[n / 2] } else { 0.5 * (s[n / 2 - 1] + s[n / 2]) };
            prop_assert_eq!(median(&xs), want);
            prop_assert!((quantile(&xs, 0.5) - want).abs() <= 1e-9 * want.abs().max(1.0));
            prop_assert_eq!(Summary::of(&xs).median, want);
        }
    }
}
