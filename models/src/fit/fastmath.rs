//! `exp` and `ln` for the fitter's inner loop, as straight-line arithmetic: no call into the C library, so the
//! callers' loops keep their values in registers (a libm call spills every live floating-point register, which cost
//! more than the functions themselves in the approach-3 fit). Both are within a few ulp of the C library's, checked in
//! the tests below; arguments outside the fast range defer to `std` (or saturate, for `exp`).
//!
//! Method: Cody–Waite range reduction and polynomials, the textbook construction (e.g. Muller, "Elementary Functions:
//! Algorithms and Implementation", 3rd ed., 2016, ch. 11): `exp(x) = 2^k · exp(r)` with `|r| ≤ ln2/2` and the Taylor
//! series of `exp(r)` to degree 13 (truncation below 5e-18 relative); `ln(x) = k·ln2 + ln(f)` with `f ∈ [√½, √2)` and
//! `ln(f) = 2·atanh(u)`, `u = (f − 1)/(f + 1)`, `|u| ≤ 0.172`, by its odd series to `u^23` (truncation below 1e-18).

/// `ln 2` split so that `k · LN2_HI` is exact for `|k| < 2^21` (the low 21 bits of its significand are zero).
const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
/// `ln 2 − LN2_HI`.
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
const INV_LN2: f64 = std::f64::consts::LOG2_E;
/// Adding and subtracting 1.5 · 2^52 rounds a double of magnitude below 2^51 to the nearest integer (ties to even)
/// without a call to `round`, which is not an instruction on baseline x86-64.
const ROUND_SHIFT: f64 = 6_755_399_441_055_744.0;

/// Taylor coefficients 1/n! for n = 2..=13.
const EXP_C: [f64; 12] = [
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
    1.0 / 40_320.0,
    1.0 / 362_880.0,
    1.0 / 3_628_800.0,
    1.0 / 39_916_800.0,
    1.0 / 479_001_600.0,
    1.0 / 6_227_020_800.0,
];

/// `e^x`. Below −708 it returns 0 (the exact value would be subnormal, under 2.3e-308); above 709, the C library's
/// value (the last finite values, then infinity); NaN stays NaN.
#[inline(always)]
pub fn exp(x: f64) -> f64 {
    if x > -708.0 && x < 709.0 {
        exp_in_range(x)
    } else if x.is_nan() {
        x
    } else if x < 0.0 {
        0.0
    } else {
        x.exp()
    }
}

/// `e^x` for `x` in `(-708, 709)` (unchecked: other arguments give garbage). Branch-free, so that a loop over an
/// array of arguments vectorises.
#[inline(always)]
pub fn exp_in_range(x: f64) -> f64 {
    let kf = (x * INV_LN2 + ROUND_SHIFT) - ROUND_SHIFT;
    let r = (x - kf * LN2_HI) - kf * LN2_LO;
    let mut p = EXP_C[11];
    for c in EXP_C[..11].iter().rev() {
        p = p * r + c;
    }
    let er = (p * r + 1.0) * r + 1.0;
    // 2^k for k in [-1022, 1023]: k + 1023 placed in the exponent field. The significand bits of
    // `kf + 1023 + ROUND_SHIFT` hold 2^51 + k + 1023 exactly, so the integer is read from the bits without a
    // float-to-integer conversion.
    let biased = (kf + (ROUND_SHIFT + 1023.0)).to_bits() & 0x7FF;
    er * f64::from_bits(biased << 52)
}

/// `ln x`. Zero, negative, subnormal, infinite and NaN arguments defer to `f64::ln`.
#[inline(always)]
pub fn ln(x: f64) -> f64 {
    if (f64::MIN_POSITIVE..f64::INFINITY).contains(&x) {
        ln_normal(x)
    } else {
        x.ln()
    }
}

/// `ln x` for positive, normal, finite `x` (unchecked). Branch-free, so that a loop over an array vectorises.
#[inline(always)]
pub fn ln_normal(x: f64) -> f64 {
    let bits = x.to_bits();
    // Biased exponent as a double without an integer-to-float conversion: 2^52 + e, minus 2^52, minus the bias.
    let mut kf = f64::from_bits(0x4330_0000_0000_0000 | (bits >> 52)) - (4_503_599_627_370_496.0 + 1023.0);
    // Significand in [1, 2), then folded into [√½, √2) so that u stays small.
    let mut f = f64::from_bits((bits & 0x000F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000);
    let fold = f > std::f64::consts::SQRT_2;
    f = if fold { 0.5 * f } else { f };
    kf += if fold { 1.0 } else { 0.0 };
    let u = (f - 1.0) / (f + 1.0); // f − 1 is exact (Sterbenz)
    let w = u * u;
    // 1 + w/3 + w²/5 + … + w¹¹/23.
    let mut s = 1.0 / 23.0;
    for d in [21.0, 19.0, 17.0, 15.0, 13.0, 11.0, 9.0, 7.0, 5.0, 3.0] {
        s = s * w + 1.0 / d;
    }
    let ln_f = 2.0 * u + 2.0 * u * w * s;
    kf * LN2_HI + (kf * LN2_LO + ln_f)
}

/// A loop over rows to run through [`vectorised`]: straight-line arithmetic per row ([`exp_in_range`],
/// [`ln_normal`], `+ − × ÷`, comparisons). Implement `run` with `#[inline(always)]`, so that its body is compiled into
/// the vector copy.
pub trait Kernel {
    /// What the loop returns.
    type Output;
    /// Runs the loop.
    fn run(self) -> Self::Output;
}

/// Runs `k` compiled for AVX2 (4-wide vectors) on CPUs that have it, else as is. Rust never fuses a multiply and an
/// add unless asked, and vectorising an element-wise loop does not reorder any sum, so `k` gives the same bits either
/// way (checked in the tests): the answer does not depend on the machine, only the speed does.
#[inline(always)]
pub fn vectorised<K: Kernel>(k: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2 (checked just above), the only requirement of `avx2`.
        return unsafe { avx2(k) };
    }
    k.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2<K: Kernel>(k: K) -> K::Output {
    k.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite doubles of the same sign.
    fn ulps(a: f64, b: f64) -> u64 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
    }

    /// A reproducible spread of arguments (a Weyl sequence), plus the edges of the fast ranges.
    fn points(lo: f64, hi: f64, n: usize) -> Vec<f64> {
        let mut v: Vec<f64> = (0..n)
            .map(|i| lo + (hi - lo) * ((i as f64 * 0.618_033_988_749_894_9).fract()))
            .collect();
        v.extend([lo, hi, 0.0, -0.0, 1e-300, -1e-300, 0.5 * std::f64::consts::LN_2]);
        v.retain(|x| (lo..=hi).contains(x));
        v
    }

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        let mut worst = 0;
        for x in points(-707.9, 708.9, 200_000)
            .into_iter()
            .chain(points(-1.0, 1.0, 50_000))
        {
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(ulps(a, b));
            assert!(ulps(a, b) <= 2, "exp({x:e}) = {a:e}, std {b:e}");
        }
        assert!(worst <= 2);
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-800.0), 0.0);
        assert_eq!(exp(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp(710.0), f64::INFINITY);
        assert_eq!(exp(709.5), 709.5f64.exp());
        assert!(exp(f64::NAN).is_nan());
    }

    #[test]
    fn ln_is_within_two_ulp_of_std() {
        for x in points(1e-300, 10.0, 100_000)
            .into_iter()
            .chain(points(0.5, 2.0, 100_000))
            .chain(points(1.0, 1e300, 100_000))
        {
            let (a, b) = (ln(x), x.ln());
            // Near x = 1 the result is tiny; compare relative to its own scale.
            assert!(
                ulps(a, b) <= 2 || (a - b).abs() <= 2.0 * f64::EPSILON * b.abs(),
                "ln({x:e}) = {a:e}, std {b:e}"
            );
        }
    }

    /// `exp_in_range` or `ln_normal` of every element of a slice.
    struct Map<'a>(&'a mut [f64], fn(f64) -> f64);

    impl Kernel for Map<'_> {
        type Output = ();
        #[inline(always)]
        fn run(self) {
            let f = self.1;
            self.0.iter_mut().for_each(|x| *x = f(*x));
        }
    }

    #[test]
    fn vectorised_loops_give_the_same_bits() {
        let xs = points(-700.0, 700.0, 10_001);
        let mut v = xs.clone();
        vectorised(Map(&mut v, exp_in_range));
        for (x, e) in xs.iter().zip(&v) {
            assert_eq!(e.to_bits(), exp_in_range(*x).to_bits(), "exp({x:e})");
        }
        let xs = points(1e-300, 1e300, 10_001);
        let mut v = xs.clone();
        vectorised(Map(&mut v, ln_normal));
        for (x, l) in xs.iter().zip(&v) {
            assert_eq!(l.to_bits(), ln_normal(*x).to_bits(), "ln({x:e})");
        }
    }

    #[test]
    fn ln_edges() {
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
        assert!(ln(-1.0).is_nan());
        assert_eq!(ln(f64::INFINITY), f64::INFINITY);
        assert_eq!(ln(5e-324), 5e-324f64.ln());
        assert_eq!(ln(std::f64::consts::E), 1.0);
    }
}
