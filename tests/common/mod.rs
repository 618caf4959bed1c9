//! Helpers the end-to-end tests share: the built binary, its output, scratch folders and scenario files.
#![allow(dead_code)] // each test binary uses its own subset
use std::path::PathBuf;
use std::process::{Command, Output};

/// The `trainlab` binary built for this test run.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainlab"))
}

/// Runs `cmd` to completion.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn trainlab")
}

/// Its standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A fresh, empty scratch folder for this test process and `tag`.
pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("trainlab-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `text` written as `s.toml` in a fresh scratch folder for `tag`.
pub fn scenario_file(tag: &str, text: &str) -> PathBuf {
    let p = tmpdir(tag).join("s.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Serialises the tests of one binary that time real runs or run heavy real work: on a 2-core machine, another test's
/// work running beside a timed one would be timed with it. Hold the guard for the whole test.
pub fn timing_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The value of metric `name` in a `run --json` answer on `stdout`.
pub fn json_metric(stdout: &[u8], name: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_slice(stdout).unwrap();
    v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["value"].as_f64())
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// The values of the columns `names` on every data line of a report's `records.csv` text (`trainlab_models`' CSV
/// splitter; panics on a missing column).
pub fn record_columns<const N: usize>(text: &str, names: [&str; N]) -> Vec<[String; N]> {
    let mut lines = text.lines();
    let head = trainlab_models::fit::csv::split_line(lines.next().expect("a header"));
    let at = names.map(|n| {
        head.iter()
            .position(|h| h == n)
            .unwrap_or_else(|| panic!("no column {n}"))
    });
    lines
        .map(|l| {
            let f = trainlab_models::fit::csv::split_line(l);
            at.map(|i| f[i].clone())
        })
        .collect()
}
