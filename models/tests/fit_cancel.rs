//! The fit engine honours a cancel flag (Ctrl-C) between starts, bootstrap replicates and cross-validation folds.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use trainlab_core::Error;
use trainlab_models::fit::{self, Dataset, FitConfig, Law};
use trainlab_models::laws::Chinchilla;

fn data() -> Dataset {
    let law = Chinchilla::new();
    let truth = Chinchilla::pack(1.69, 406.4, 410.7, 0.34, 0.28);
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..6 {
        for j in 0..6 {
            let (n, d) = (1e7 * 4f64.powi(i), 1e9 * 4f64.powi(j));
            x.push(vec![n, d]);
            y.push(law.eval(&truth, &[n, d]));
        }
    }
    Dataset::new(vec!["N".into(), "D".into()], x, y).unwrap()
}

fn cfg(cancel: &Arc<AtomicBool>) -> FitConfig {
    FitConfig {
        max_starts: 16,
        bootstrap_starts: 0,
        cancel: Some(cancel.clone()),
        ..FitConfig::default()
    }
}

#[test]
fn a_set_flag_stops_fit_bootstrap_and_cross_validation() {
    let law = Chinchilla::new();
    let data = data();
    let cancel = Arc::new(AtomicBool::new(false));
    let best = fit::fit(&law, &data, &cfg(&cancel)).unwrap();
    assert_eq!(best.starts, 16, "every start ran");
    let full = fit::bootstrap(&law, &data, &best, 6, &cfg(&cancel)).unwrap();
    assert_eq!(full.params.len(), 6);

    cancel.store(true, Ordering::Relaxed);
    // No start runs: nothing to keep, so the fit says it was interrupted (not "no finite objective").
    assert!(matches!(fit::fit(&law, &data, &cfg(&cancel)), Err(Error::Interrupted)));
    // No replicate runs: an empty bootstrap, not an error.
    assert!(
        fit::bootstrap(&law, &data, &best, 6, &cfg(&cancel))
            .unwrap()
            .params
            .is_empty()
    );
    assert!(matches!(
        fit::cross_validate(&law, &data, 0, 3, &cfg(&cancel)),
        Err(Error::Interrupted)
    ));
}

#[test]
fn without_a_flag_nothing_changes() {
    let law = Chinchilla::new();
    let data = data();
    let never = Arc::new(AtomicBool::new(false));
    let a = fit::fit(&law, &data, &cfg(&never)).unwrap();
    let b = fit::fit(
        &law,
        &data,
        &FitConfig {
            cancel: None,
            ..cfg(&never)
        },
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(law.name(), "chinchilla");
}
