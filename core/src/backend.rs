//! The one interface that predicts or executes a workload.
use crate::{Error, Metric, Record, Seed};
use serde::{Serialize, de::DeserializeOwned};
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// How a backend produces its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fidelity {
    /// A closed form or fitted law.
    Analytical,
    /// A discrete-event or Monte Carlo simulation.
    Simulated,
    /// A real run on this machine (CPU) or a GPU.
    Measured,
}

impl Fidelity {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Fidelity::Analytical => "analytical",
            Fidelity::Simulated => "simulated",
            Fidelity::Measured => "measured",
        }
    }
}

/// What an outcome reduces to: named metrics with units.
pub trait Outcome: Debug + Send {
    /// The metrics, in a stable order.
    fn metrics(&self) -> Vec<Metric>;
}

/// A serialisable description of something that runs.
pub trait Workload: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The answer every backend gives.
    type Outcome: Outcome;
    /// The kind's stable name, as written in scenario files (`kind = "gemm"`).
    const KIND: &'static str;
    /// Checks the description, naming the offending field. Backends may assume a validated workload.
    fn validate(&self) -> Result<(), Error>;
    /// Settings that are legal but probably not what was meant, one line each, starting with the field path. They
    /// are printed as warnings (on standard error) and never stop a run.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Progress callback: `(done, total)`.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// A progress callback `(done, total)` that can sit in `Debug + Clone` settings (e.g. a fit's configuration).
#[derive(Clone)]
pub struct Progress(pub ProgressFn);

impl Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

impl Progress {
    /// Reports `done` of `total` units.
    pub fn report(&self, done: u64, total: u64) {
        (self.0)(done, total)
    }
}

/// Per-run context: seed, progress reporting and cancellation.
#[derive(Clone)]
pub struct RunCtx {
    /// The scenario seed; components derive their own streams from it.
    pub seed: Seed,
    /// Optional progress callback for long work.
    pub progress: Option<ProgressFn>,
    /// Set when the user interrupts; long-running backends poll it and return early with what they have.
    pub cancel: Arc<AtomicBool>,
}

impl Debug for RunCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunCtx")
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl RunCtx {
    /// A context with this seed, no progress reporting and a fresh cancel flag.
    pub fn new(seed: Seed) -> Self {
        RunCtx {
            seed,
            progress: None,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
    /// Reports progress if a callback is installed.
    pub fn report(&self, done: u64, total: u64) {
        if let Some(p) = &self.progress {
            p(done, total);
        }
    }
    /// True once the run was interrupted.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Something that answers workloads of kind `W`: a closed form, a simulator, a fitted law or a real executor.
pub trait Backend<W: Workload>: Send {
    /// Stable name, e.g. `roofline`, `des`, `cpu`, `cuda`.
    fn name(&self) -> &str;
    /// How the answer is produced.
    fn fidelity(&self) -> Fidelity;
    /// Whether this backend can run here (e.g. a GPU is present). `Err` carries the reason.
    fn available(&self) -> Result<(), String> {
        Ok(())
    }
    /// The workload this backend really answers when asked for `workload`: `None` when it answers `workload`
    /// itself, `Some(other)` when it runs something else (a real run of a scaled-down job, say). `compare` computes
    /// errors only between answers to the same workload, so a backend that scales down must say so here.
    fn answers(&self, workload: &W) -> Result<Option<W>, Error> {
        let _ = workload;
        Ok(None)
    }
    /// Answers the workload.
    fn run(&mut self, workload: &W, ctx: &mut RunCtx) -> Result<W::Outcome, Error>;
}

/// The result of running one backend in [`run_backends`].
#[derive(Debug)]
pub struct BackendRun {
    /// Backend name.
    pub backend: String,
    /// Backend fidelity.
    pub fidelity: Fidelity,
    /// Its records, or why it did not run ([`Error::Unsupported`] when the backend is unavailable here).
    pub result: Result<Vec<Record>, Error>,
}

/// Runs every backend on one workload, in the order given, flattening outcomes into [`Record`]s.
/// Unavailable backends are skipped with their reason; backend errors are returned per backend.
pub fn run_backends<W: Workload>(
    study: &str,
    case: &str,
    workload: &W,
    backends: &mut [Box<dyn Backend<W>>],
    ctx: &mut RunCtx,
) -> Vec<BackendRun> {
    let mut out = Vec::with_capacity(backends.len());
    for b in backends.iter_mut() {
        let name = b.name().to_string();
        let fidelity = b.fidelity();
        let result = match b.available() {
            Err(why) => Err(Error::Unsupported(format!("skipped: {why}"))),
            Ok(()) => b.run(workload, ctx).map(|o| {
                o.metrics()
                    .iter()
                    .map(|m| Record::from_metric(study, W::KIND, case, &name, fidelity, ctx.seed.0, m))
                    .collect()
            }),
        };
        out.push(BackendRun {
            backend: name,
            fidelity,
            result,
        });
    }
    out
}
