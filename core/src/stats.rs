//! Summary statistics with a 95% confidence interval for the mean (normal approximation; Student-t for small n).

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

/// Two-sided 97.5% Student-t quantiles for 1..=30 degrees of freedom.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120,
    2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
];

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
        Summary {
            n,
            mean,
            std: var.sqrt(),
            stderr: (var / n as f64).sqrt(),
            median: quantile_sorted(&s, 0.5),
            min: s[0],
            max: s[n - 1],
        }
    }
    /// Half-width of the 95% interval of the mean.
    pub fn half_width(&self) -> f64 {
        let t = if self.n >= 2 && self.n - 1 <= 30 {
            T975[self.n - 2]
        } else {
            1.96
        };
        t * self.stderr
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

/// Quantile `q` in [0,1] of a sorted slice (linear interpolation).
pub fn quantile_sorted(s: &[f64], q: f64) -> f64 {
    if s.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// Median of an unsorted slice.
pub fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    quantile_sorted(&s, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn summary_basic() {
        let s = Summary::of(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s.mean, 2.5);
        assert_eq!(s.median, 2.5);
        assert!((s.std - 1.290_994).abs() < 1e-5);
        let (lo, hi) = s.ci95();
        assert!(lo < 2.5 && hi > 2.5);
        assert!((s.half_width() - 3.182 * s.stderr).abs() < 1e-12);
    }
}
