//! The `trainlab` command-line interface: predict, simulate, execute and calibrate training workloads.
//!
//! Exit codes: 0 success, 1 failure while running, 2 bad input (an unknown field, a bad value, a missing file, a
//! model that fits nowhere), 130 interrupted (results gathered so far are kept).
mod cli;
mod cmd;

use clap::Parser;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // Hidden worker entry points used by the real fault-injection runs (they spawn this binary).
    if argv.get(1).map(String::as_str) == Some("__c4-worker") {
        let code = trainlab_executors::faultrun::worker_main(&argv[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let args = cli::Cli::parse();
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let c = cancel.clone();
        // Ctrl-C, SIGTERM (a scheduler cancelling, requeueing or timing out a task) and SIGHUP alike: finish the
        // unit of work at hand and keep what is done. A second signal while the first is being handled exits at once.
        let _ = ctrlc::set_handler(move || {
            if c.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupted: finishing the current unit of work and keeping results so far (Ctrl-C again to abort)"
            );
        });
    }
    // Measurements stop within one sample of the signal.
    trainlab_executors::timing::stop_when(cancel.clone());
    match cli::dispatch(args, cancel.clone()) {
        Ok(()) => {
            if cancel.load(Ordering::SeqCst) {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The error and its causes on one line, `outer: inner: root`, each cause once: a cause whose text the message
/// already ends with (an error type that both displays its source and returns it) is not repeated.
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// 2 for bad input anywhere in the cause chain, 130 for an interruption, else 1.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(te) = cause.downcast_ref::<trainlab_core::Error>() {
            if matches!(te, trainlab_core::Error::Interrupted) {
                return 130;
            }
            if te.is_user_error() {
                return 2;
            }
        }
        if cause.downcast_ref::<cli::UsageError>().is_some() {
            return 2;
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::message;

    /// An error type that both displays its source and returns it, as some library errors do.
    #[derive(Debug, thiserror::Error)]
    #[error("writing out/r.csv: {source}")]
    struct Both {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn each_cause_appears_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let e = anyhow::Error::new(Both { source: io }).context("saving the report");
        assert_eq!(
            message(&e),
            "saving the report: writing out/r.csv: No such file or directory"
        );
        let e = anyhow::anyhow!("root").context("middle").context("outer");
        assert_eq!(message(&e), "outer: middle: root");
    }
}
