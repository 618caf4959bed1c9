//! Bench: a 4,500-start Chinchilla approach-3 fit (Hoffmann et al. 2022, App. D.2: Huber δ = 1e-3 on log residuals,
//! summed, L-BFGS from the paper's grid) on 250 synthetic points.
//!
//! One fit takes seconds, so this is a plain timed main rather than a criterion loop (criterion's 10-sample minimum
//! would take minutes on the 2-core machine). It writes the points to `target/bench-fit/points.csv` so that
//! `scripts/bench_fit.py` fits exactly the same data from exactly the same starts with SciPy; `scripts/bench-fit.sh`
//! runs both and prints the ratio. Output: one `key=value` line per quantity.
use rand_distr::{Distribution, Normal};
use std::time::Instant;
use trainlab_core::Seed;
use trainlab_models::fit::Law;
use trainlab_models::fit::{Dataset, FitConfig, fit, start_grid};
use trainlab_models::laws::Chinchilla;

fn main() {
    let law = Chinchilla::new();
    let truth = Chinchilla::pack(1.69, 406.4, 410.7, 0.34, 0.28);
    let mut rng = Seed(2022).rng();
    let noise = Normal::<f64>::new(0.0, 0.02).unwrap_or_else(|e| panic!("{e}"));
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..25 {
        for j in 0..10 {
            let n = 7e7 * 10f64.powf(2.3 * i as f64 / 24.0); // 70M .. 14B
            let d = 5e9 * 10f64.powf(2.0 * j as f64 / 9.0); // 5B .. 500B
            x.push(vec![n, d]);
            y.push(law.eval(&truth, &[n, d]) * noise.sample(&mut rng).exp());
        }
    }
    let data = Dataset::new(vec!["N".into(), "D".into()], x, y).unwrap_or_else(|e| panic!("{e}"));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-fit");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let mut csv = String::from("N,D,loss\n");
    for (r, l) in data.x.iter().zip(&data.y) {
        csv.push_str(&format!("{:e},{:e},{:e}\n", r[0], r[1], l));
    }
    std::fs::write(dir.join("points.csv"), csv).unwrap_or_else(|e| panic!("{e}"));
    let cfg = FitConfig::default();
    let starts = start_grid(&law, cfg.max_starts, cfg.seed);
    let t0 = Instant::now();
    let fr = fit(&law, &data, &cfg).unwrap_or_else(|e| panic!("{e}"));
    let secs = t0.elapsed().as_secs_f64();
    println!("points={}", data.len());
    println!("starts={}", starts.len());
    println!("threads={}", rayon::current_num_threads());
    println!("rust_seconds={secs:.3}");
    println!("rust_objective={:.10e}", fr.objective);
    println!("rust_params={:?}", fr.params);
    println!("rust_r2={:.6}", fr.gof.r2);
}
