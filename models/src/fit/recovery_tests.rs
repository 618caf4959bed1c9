//! Recovery tests: data drawn from known laws with noise; the fit must recover the predictions, be deterministic,
//! and its bootstrap intervals must cover the truth at about their nominal rate.
use super::*;
use crate::laws::{Chinchilla, DcptL3};
use rand_distr::{Distribution, Normal};

fn chinchilla_data(seed: Seed, sigma: f64) -> (Dataset, Vec<f64>) {
    let law = Chinchilla::new();
    let truth = Chinchilla::pack(1.69, 406.4, 410.7, 0.34, 0.28);
    let mut rng = seed.rng();
    let noise = Normal::<f64>::new(0.0, sigma).unwrap();
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..8 {
        for j in 0..8 {
            let n = 1e7 * 10f64.powf(3.0 * i as f64 / 7.0);
            let d = 1e9 * 10f64.powf(3.0 * j as f64 / 7.0);
            let l = law.eval(&truth, &[n, d]) * noise.sample(&mut rng).exp();
            x.push(vec![n, d]);
            y.push(l);
        }
    }
    (Dataset::new(vec!["N".into(), "D".into()], x, y).unwrap(), truth)
}

fn few_starts() -> FitConfig {
    FitConfig {
        max_starts: 24,
        bootstrap_starts: 0,
        ..FitConfig::default()
    }
}

#[test]
fn chinchilla_recovers_predictions_not_the_ridge() {
    let law = Chinchilla::new();
    let (data, truth) = chinchilla_data(Seed(3), 0.005);
    let fr = fit(&law, &data, &few_starts()).unwrap();
    assert!(fr.gof.r2 > 0.99, "{:?}", fr.gof);
    for (n, d) in [(1e8, 1e10), (3e9, 3e11), (5e7, 2e11)] {
        let (p, t) = (law.eval(&fr.params, &[n, d]), law.eval(&truth, &[n, d]));
        assert!((p / t - 1.0).abs() < 0.005, "N={n} D={d}: {p} vs {t}");
    }
    // Exponents near the truth (they are identified; A and B individually may sit on a ridge).
    assert!(
        (fr.params[3] - 0.34).abs() < 0.1 && (fr.params[4] - 0.28).abs() < 0.1,
        "{:?}",
        fr.params
    );
}

#[test]
fn fit_is_deterministic_at_any_thread_count() {
    let law = Chinchilla::new();
    let (data, _) = chinchilla_data(Seed(5), 0.01);
    let cfg = few_starts();
    let a = fit(&law, &data, &cfg).unwrap();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let b = pool.install(|| fit(&law, &data, &cfg).unwrap());
    assert_eq!(a, b);
    let ba = bootstrap(&law, &data, &a, 4, &cfg).unwrap();
    let bb = pool.install(|| bootstrap(&law, &data, &a, 4, &cfg).unwrap());
    assert_eq!(ba, bb);
}

#[test]
fn bootstrap_intervals_cover_truth_near_nominal_rate() {
    let law = Chinchilla::new();
    let (seeds, reps, level) = (30u64, 40usize, 0.9);
    let x = [3e8, 3e10];
    let mut covered = 0;
    for s in 0..seeds {
        let (data, truth) = chinchilla_data(Seed(1000 + s), 0.02);
        let cfg = FitConfig {
            seed: Seed(s),
            ..few_starts()
        };
        let fr = fit(&law, &data, &cfg).unwrap();
        let bs = bootstrap(&law, &data, &fr, reps, &cfg).unwrap();
        let c = bs.predict(&law, &fr.params, &x, level);
        let t = law.eval(&truth, &x);
        if c.lo <= t && t <= c.hi {
            covered += 1;
        }
    }
    let rate = covered as f64 / seeds as f64;
    // Binomial(30, 0.9): P(X <= 21) ~ 2.6%; a broken interval (too narrow / biased) lands far below.
    assert!(rate >= 0.73, "coverage {rate}");
}

#[test]
fn dcpt_l3_recovers_domain_loss_surface() {
    let law = DcptL3::new();
    let truth = DcptL3::pack(1.2, 60.0, 900.0, 0.04, 0.35, 0.4, 0.5, 0.3, 0.02);
    let mut rng = Seed(9).rng();
    let noise = Normal::<f64>::new(0.0, 0.003).unwrap();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for n in [2e4, 6e4, 2e5] {
        for r in [0.0, 0.1, 0.2, 0.33, 0.5, 0.67, 0.8, 0.9, 1.0] {
            for k in 0..12 {
                let d = 2e5 * 1.35f64.powi(k);
                x.push(vec![n, d, r]);
                y.push(law.eval(&truth, &[n, d, r]) * noise.sample(&mut rng).exp());
            }
        }
    }
    let data = Dataset::new(vec!["N".into(), "D".into(), "r".into()], x, y).unwrap();
    let cfg = FitConfig {
        max_starts: 32,
        ..FitConfig::default()
    };
    let fr = fit(&law, &data, &cfg).unwrap();
    assert!(fr.gof.r2 > 0.99, "{:?}", fr);
    for probe in [[1e5, 1e6, 0.4], [3e4, 4e5, 0.05], [2e5, 3e6, 0.95]] {
        let (p, t) = (law.eval(&fr.params, &probe), law.eval(&truth, &probe));
        assert!((p / t - 1.0).abs() < 0.01, "{probe:?}: {p} vs {t}");
    }
    // Grouped CV by ratio: held-out ratios are predicted well.
    let cv = cross_validate(&law, &data, 2, 3, &FitConfig { max_starts: 8, ..cfg }).unwrap();
    assert_eq!(cv.folds.len(), 3);
    for f in &cv.folds {
        if f.held_out.contains(&0.0) {
            // r = 0 is an extrapolation in ε (the paper's stated weak spot at tiny ratios): report, do not demand.
            assert!(f.test.r2 > 0.5, "{f:?}");
        } else {
            assert!(f.test.r2 > 0.99, "{f:?}");
        }
    }
}

#[test]
fn bad_inputs_are_reported() {
    let law = DcptL3::new();
    let data = Dataset::new(
        vec!["N".into(), "D".into(), "r".into()],
        vec![vec![1e5, 1e6, 1.5]; 12],
        vec![2.0; 12],
    )
    .unwrap();
    let e = fit(&law, &data, &FitConfig::default()).unwrap_err().to_string();
    assert!(e.contains("row[1].r") && e.contains("[0, 1]"), "{e}");
    assert!(Dataset::new(vec!["N".into()], vec![vec![1.0]], vec![f64::NAN]).is_err());
    let small = Dataset::new(
        vec!["N".into(), "D".into(), "r".into()],
        vec![vec![1e5, 1e6, 0.5]; 3],
        vec![2.0; 3],
    )
    .unwrap();
    assert!(fit(&law, &small, &FitConfig::default()).is_err());
}

#[test]
fn cross_domain_law_fits_several_domains() {
    use crate::laws::DcptCrossDomain;
    let law = DcptCrossDomain::new();
    // L3 part plus F/K^mu with K = w1/k1 + w2*k2.
    let mut truth = DcptL3::pack(1.0, 60.0, 900.0, 0.04, 0.35, 0.4, 0.5, 0.3, 0.02);
    truth.extend([(0.6f64).ln(), 1.0, (1.5f64).ln(), (0.5f64).ln()]);
    let mut rng = Seed(11).rng();
    let noise = Normal::<f64>::new(0.0, 0.002).unwrap();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (k1, k2) in [(2.0, 0.3), (3.0, 0.8), (1.5, 0.1), (4.0, 1.5)] {
        for n in [2e4, 2e5] {
            for r in [0.1, 0.33, 0.67, 1.0] {
                for k in 0..6 {
                    let row = vec![n, 2e5 * 1.8f64.powi(k), r, k1, k2];
                    y.push(law.eval(&truth, &row) * noise.sample(&mut rng).exp());
                    x.push(row);
                }
            }
        }
    }
    let names = ["N", "D", "r", "k1", "k2"].iter().map(|s| s.to_string()).collect();
    let data = Dataset::new(names, x, y).unwrap();
    let fr = fit(
        &law,
        &data,
        &FitConfig {
            max_starts: 24,
            ..FitConfig::default()
        },
    )
    .unwrap();
    assert!(fr.gof.r2 > 0.98, "{:?}", fr.gof);
    assert!(fr.gof.rmse_log < 0.01, "{:?}", fr.gof);
}
