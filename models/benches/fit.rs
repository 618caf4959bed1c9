//! Bench: the Chinchilla approach-3 fit (Hoffmann et al. 2022, App. D.2: Huber δ = 1e-3 on log residuals, summed,
//! L-BFGS from the paper's 4,500-point start grid) on 250 synthetic points.
//!
//! Two modes:
//! - `cargo bench -p trainlab-models --bench fit`: criterion, **time per start**: a fit from a fixed spread of 45 of
//!   the grid's starts on one thread (the search from each start, then the polish of the winner), divided by 45.
//! - `TRAINLAB_BENCH_FIT=DIR cargo bench -p trainlab-models --bench fit` (what `scripts/bench-fit.sh` runs): writes
//!   the points to `DIR/points.csv` and the starts to `DIR/starts.csv`, so that `scripts/bench_fit.py` fits exactly
//!   the same data from exactly the same starts with SciPy, then runs the full 4,500-start fit once on
//!   `RAYON_NUM_THREADS` threads and prints `key=value` lines (wall seconds, objective, parameters, winning start).
use criterion::Criterion;
use rand_distr::{Distribution, Normal};
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;
use trainlab_core::Seed;
use trainlab_models::fit::{Dataset, FitConfig, Law, fit_from, start_grid};
use trainlab_models::laws::Chinchilla;

/// 250 points on a 25 x 10 grid of (N, D), 70M..14B parameters and 5B..500B tokens, from the paper's fitted law with
/// 2% log-normal noise.
fn data(law: &Chinchilla) -> Dataset {
    let truth = Chinchilla::pack(1.69, 406.4, 410.7, 0.34, 0.28);
    let mut rng = Seed(2022).rng();
    let noise = Normal::<f64>::new(0.0, 0.02).unwrap_or_else(|e| panic!("{e}"));
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..25 {
        for j in 0..10 {
            let n = 7e7 * 10f64.powf(2.3 * i as f64 / 24.0);
            let d = 5e9 * 10f64.powf(2.0 * j as f64 / 9.0);
            x.push(vec![n, d]);
            y.push(law.eval(&truth, &[n, d]) * noise.sample(&mut rng).exp());
        }
    }
    Dataset::new(vec!["N".into(), "D".into()], x, y).unwrap_or_else(|e| panic!("{e}"))
}

fn write_csv(path: &Path, header: &str, rows: impl Iterator<Item = Vec<f64>>) {
    let mut s = format!("{header}\n");
    for r in rows {
        // `{:e}` prints the shortest representation that reads back to the same f64.
        let cells: Vec<String> = r.iter().map(|v| format!("{v:e}")).collect();
        let _ = writeln!(s, "{}", cells.join(","));
    }
    std::fs::write(path, s).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The full fit, timed once, with its inputs written for the SciPy peer.
fn full(dir: &Path) {
    let law = Chinchilla::new();
    let data = data(&law);
    let cfg = FitConfig::default();
    let starts = start_grid(&law, cfg.max_starts, cfg.seed);
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let pts = data.x.iter().zip(&data.y).map(|(x, y)| vec![x[0], x[1], *y]);
    write_csv(&dir.join("points.csv"), "N,D,loss", pts);
    write_csv(&dir.join("starts.csv"), "a,b,e,alpha,beta", starts.iter().cloned());
    let t0 = Instant::now();
    let fr = fit_from(&law, &data, &cfg, &starts).unwrap_or_else(|e| panic!("{e}"));
    let secs = t0.elapsed().as_secs_f64();
    println!("rust_points={}", data.len());
    println!("rust_starts={}", starts.len());
    println!("rust_threads={}", rayon::current_num_threads());
    println!("rust_seconds={secs:.4}");
    println!("rust_objective={:.17e}", fr.objective);
    println!("rust_best_start={}", fr.best_start);
    println!("rust_params={:?}", fr.params);
}

/// Criterion: a 45-start fit on one thread, reported per start.
fn per_start(c: &mut Criterion) {
    let law = Chinchilla::new();
    let data = data(&law);
    let cfg = FitConfig::default();
    let all = start_grid(&law, cfg.max_starts, cfg.seed);
    let starts: Vec<Vec<f64>> = all.iter().step_by(100).cloned().collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut g = c.benchmark_group("approach3_chinchilla_250_points");
    g.bench_function("time_per_start", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(
                    pool.install(|| fit_from(&law, &data, &cfg, &starts))
                        .unwrap_or_else(|e| panic!("{e}")),
                );
            }
            t.elapsed() / starts.len() as u32
        })
    });
    g.finish();
}

fn main() {
    if let Some(dir) = std::env::var_os("TRAINLAB_BENCH_FIT") {
        full(Path::new(&dir));
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    per_start(&mut c);
    c.final_summary();
}
