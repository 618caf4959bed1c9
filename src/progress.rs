//! Progress bars for work that can run over a second: drawn on standard error only when it is a terminal
//! (indicatif's own check), never with `--quiet` or `--json`.
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Hides every progress bar from now on (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// True under `--quiet`.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A bar of `len` units labelled `what` (hidden when `hidden` or under `--quiet`).
pub fn bar(len: u64, what: &str, hidden: bool) -> ProgressBar {
    if hidden || quiet() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_prefix(what.to_string());
    b
}

/// A spinner labelled `what` whose message says the phase (hidden when `hidden` or under `--quiet`).
pub fn spinner(what: &str, hidden: bool) -> ProgressBar {
    if hidden || quiet() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new_spinner();
    b.set_style(
        ProgressStyle::with_template("{spinner} {prefix}: {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    b.set_prefix(what.to_string());
    b.enable_steady_tick(std::time::Duration::from_millis(200));
    b
}

/// A `(done, total)` callback driving `bar` (its length follows `total`).
pub fn callback(bar: &ProgressBar) -> trainlab_core::Progress {
    let b = bar.clone();
    trainlab_core::Progress(Arc::new(move |done, total| {
        if b.length() != Some(total) {
            b.set_length(total);
        }
        b.set_position(done);
    }))
}

/// A `(done, total)` callback that writes `what done/total` as `spinner`'s message.
pub fn message_callback(spinner: &ProgressBar, what: &'static str) -> trainlab_core::Progress {
    let b = spinner.clone();
    trainlab_core::Progress(Arc::new(move |done, total| {
        b.set_message(format!("{what} {done}/{total}"));
    }))
}
