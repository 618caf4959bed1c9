//! The kind table: every workload kind declared once, next to its code.
//!
//! A kind is a [`KindDef`]: its workload type (`core::workloads::*`, whose `KIND` is the name written in scenario
//! files), a one-line description, its backends in fidelity order (closed forms in `models`, simulators in `sim`,
//! real runs in `executors`), the profile kinds its backends read, the backend that is the reference of a comparison,
//! and its calibration, if it has a measured backend. `run`, `compare`, `plan`, `calibrate`, `scenarios` and every
//! "known kinds" message are generated from [`KINDS`]; embedded scenarios are found by their `kind`.
//!
//! Adding a workload: one module per crate (the workload type in `core::workloads`, its backends where their method
//! lives) plus one module here with its [`KindDef`] and one line in [`KINDS`].
//!
//! **Honest answers.** A backend that answers a different workload than the one asked (the real fault run of a
//! production job runs 4 processes; a CPU run of a GPU layer runs on this CPU) says so through
//! [`Backend::answers`]. [`Kind::answer`] then files its answer under that other workload (a [`Group`]), runs the
//! other backends on it too when asked to, and every error is computed within one group, against that group's
//! reference.
use crate::calibration::Calibration;
use crate::profiles::Profiles;
use trainlab_core::{Backend, Error, Fidelity, Metric, Param, Record, RunCtx, Unit, Workload};
use trainlab_datasets::scenario::Scenario;

pub mod collective;
pub mod contrastive;
pub mod cpt;
pub mod dense;
pub mod distill;
pub mod fabric;
pub mod micro;
pub mod moe;
pub mod queue;
pub mod recsys;
pub mod rlhf;
pub mod training_job;

/// The table of workload kinds, in the order `trainlab` lists them.
pub static KINDS: &[&dyn Kind] = &[
    &micro::GEMM,
    &micro::MEM_BANDWIDTH,
    &micro::LAUNCH_LATENCY,
    &collective::KIND,
    &dense::KIND,
    &queue::KIND,
    &moe::KIND,
    &training_job::KIND,
    &fabric::KIND,
    &cpt::KIND,
    &distill::KIND,
    &contrastive::KIND,
    &recsys::KIND,
    &rlhf::KIND,
];

/// The kind named `name`, or an input error listing the known kinds.
pub fn find(name: &str) -> Result<&'static dyn Kind, Error> {
    let canonical = name.replace('-', "_");
    KINDS.iter().copied().find(|k| k.name() == canonical).ok_or_else(|| {
        Error::invalid(
            "kind",
            format!("\"{name}\""),
            format!("unknown workload kind (known: {})", names().join(", ")),
            "use one of the known kinds",
        )
    })
}

/// The names of all kinds, in table order.
pub fn names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name()).collect()
}

/// What shapes a kind's backend list.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// Calibration profiles given with `--profile` (possibly none).
    pub profiles: Profiles,
    /// Fewer replications and repeats, and no long real runs.
    pub quick: bool,
    /// The network model that times communication (`--network`).
    pub network: NetworkChoice,
}

/// The network model of `run --network` / `compare --network`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkChoice {
    /// The cluster's alpha-beta network (two tiers, no contention).
    #[default]
    AlphaBeta,
    /// The flow-level fabric simulator with ECMP hashing (collisions of elephant flows).
    FlowEcmp,
    /// The flow-level fabric simulator with planned (C4P-style) paths.
    FlowPlanned,
}

impl NetworkChoice {
    /// The kinds whose backends take a network model other than alpha-beta.
    pub const KINDS: &'static [&'static str] = &["dense_training", "moe_layer"];

    /// The name as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkChoice::AlphaBeta => "alpha-beta",
            NetworkChoice::FlowEcmp => "flow-ecmp",
            NetworkChoice::FlowPlanned => "flow-planned",
        }
    }

    /// The flow network factory, `None` for alpha-beta (ECMP: 8 hash draws, 2 with `quick`).
    pub fn factory(self, quick: bool) -> Option<std::sync::Arc<dyn trainlab_models::hardware::NetworkFactory>> {
        use trainlab_core::workloads::fabric::Routing;
        let routing = match self {
            NetworkChoice::AlphaBeta => return None,
            NetworkChoice::FlowEcmp => Routing::Ecmp,
            NetworkChoice::FlowPlanned => Routing::Planned,
        };
        Some(std::sync::Arc::new(trainlab_sim::fabric_net::FlowNetworks {
            routing,
            replications: if quick { 2 } else { 8 },
        }))
    }

    /// The label of an answer under this network: the scenario's name, with the network named when it is not
    /// alpha-beta (so tables, records and JSON say which network timed the collectives).
    pub fn label(self, name: &str) -> String {
        match self {
            NetworkChoice::AlphaBeta => name.to_string(),
            _ => format!("{name} (network {})", self.as_str()),
        }
    }

    /// An input error when `kind` does not use the network model chosen.
    pub fn check_for(self, kind: &str) -> Result<(), Error> {
        if self == NetworkChoice::AlphaBeta || Self::KINDS.contains(&kind) {
            return Ok(());
        }
        Err(Error::invalid(
            "--network",
            self.as_str(),
            format!(
                "kind \"{kind}\" has no network model other than alpha-beta (only {})",
                Self::KINDS.join(", ")
            ),
            "drop --network",
        ))
    }
}

/// A backend's name and fidelity, as listed by `--help`-like messages and `trainlab kinds`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackendInfo {
    /// The backend's name.
    pub name: String,
    /// Its fidelity.
    pub fidelity: Fidelity,
}

/// One backend's answer to one workload.
#[derive(Debug)]
pub struct Answer {
    /// The backend's name.
    pub backend: String,
    /// Its fidelity.
    pub fidelity: Fidelity,
    /// Whether a calibration profile shaped this answer (and which: `device`, `moe_layer`, ...).
    pub profile: Option<String>,
    /// Its metrics, or why it has none ([`Error::Unsupported`] when it cannot run here).
    pub result: Result<Vec<Metric>, Error>,
}

/// The answers to one workload: the one asked for, or another one a backend ran instead.
#[derive(Debug)]
pub struct Group {
    /// The case label: the scenario's (or study case's) label, with what differs for a scaled workload.
    pub label: String,
    /// `None` for the workload asked for; for another workload, the backend that ran it instead.
    pub scaled_by: Option<String>,
    /// The workload itself, as JSON.
    pub workload: serde_json::Value,
    /// The answers, in backend order.
    pub answers: Vec<Answer>,
    /// The reference backend of this group (the kind's explicit choice among those that answered), if any.
    pub reference: Option<String>,
}

impl Group {
    /// The reference answer's metrics.
    pub fn reference_metrics(&self) -> Option<&[Metric]> {
        let r = self.reference.as_ref()?;
        self.answers
            .iter()
            .find(|a| &a.backend == r)
            .and_then(|a| a.result.as_ref().ok())
            .map(Vec::as_slice)
    }

    /// How `m` (of backend `backend` in this group) compares with the reference: the relative error for
    /// quantities, `same`/`differs` for [`Unit::Choice`], `None` for the reference itself or a metric it lacks.
    pub fn versus_reference(&self, backend: &str, m: &Metric) -> Option<Versus> {
        if self.reference.as_deref() == Some(backend) {
            return None;
        }
        let x = self.reference_metrics()?.iter().find(|x| x.name == m.name)?;
        Some(if m.unit == Unit::Choice {
            Versus::Choice(x.value == m.value)
        } else if x.value != 0.0 && x.value.is_finite() && m.value.is_finite() {
            Versus::Error((m.value - x.value) / x.value.abs())
        } else {
            return None;
        })
    }

    /// Flattens the group's successful answers into records (`params` on every row).
    pub fn records(&self, study: &str, kind: &str, seed: u64, params: &[(String, Param)]) -> Vec<Record> {
        let mut out = Vec::new();
        for a in &self.answers {
            if let Ok(ms) = &a.result {
                for m in ms {
                    let mut r = Record::from_metric(study, kind, &self.label, &a.backend, a.fidelity, seed, m);
                    r.params = params.to_vec();
                    out.push(r);
                }
            }
        }
        out
    }
}

/// A metric compared with its group's reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Versus {
    /// Relative error `(value - reference) / |reference|`.
    Error(f64),
    /// For a decision: whether it equals the reference's.
    Choice(bool),
}

impl std::fmt::Display for Versus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Versus::Error(e) => write!(f, "{:+.1}%", 100.0 * e),
            Versus::Choice(true) => f.write_str("same"),
            Versus::Choice(false) => f.write_str("differs"),
        }
    }
}

/// How a kind's answers are requested.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// Only these backends (by name); all when `None`. Unknown names are input errors.
    pub only: Option<&'a [String]>,
    /// Also run the other backends on any workload a backend answered instead of the one asked (what `compare`
    /// does, so every answer has something to be compared with).
    pub follow_scaled: bool,
    /// The label of the workload asked for.
    pub label: &'a str,
}

/// A workload kind, type-erased so that the table can hold every kind.
pub trait Kind: Sync {
    /// The kind's name, as written in scenario files.
    fn name(&self) -> &'static str;
    /// One line on what it models.
    fn about(&self) -> &'static str;
    /// Its backends, in fidelity order, as `opts` would build them.
    fn backends(&self, opts: &Opts) -> Result<Vec<BackendInfo>, Error>;
    /// The profile kinds its backends read (empty: it takes no profile).
    fn reads(&self) -> &'static [&'static str];
    /// The backends that are the reference of a comparison, most trusted first.
    fn reference(&self) -> &'static [&'static str];
    /// The metrics a study's table and charts show first.
    fn headline(&self) -> &'static [&'static str];
    /// Its calibration, if it has a measured backend to calibrate against.
    fn calibration(&self) -> Option<&'static dyn Calibration>;
    /// Parses and validates the scenario's workload (without running anything), as JSON.
    fn workload_json(&self, sc: &Scenario) -> Result<serde_json::Value, Error>;
    /// Answers the scenario's workload with its backends (see [`Request`]).
    fn answer(&self, sc: &Scenario, opts: &Opts, req: &Request<'_>, ctx: &mut RunCtx) -> Result<Vec<Group>, Error>;
}

/// The backends of a kind, as a kind builds them from [`Opts`].
pub type Backends<W> = Vec<Box<dyn Backend<W>>>;

/// The declaration of one kind: everything the table needs, for workload type `W`.
pub struct KindDef<W: Workload> {
    /// One line on what it models.
    pub about: &'static str,
    /// The profile kinds its backends read.
    pub reads: &'static [&'static str],
    /// Reference backends, most trusted first.
    pub reference: &'static [&'static str],
    /// The metrics a study's table and charts show first.
    pub headline: &'static [&'static str],
    /// Builds the backends, in fidelity order, with the profiles in `opts` applied.
    pub backends: fn(&Opts) -> Result<Backends<W>, Error>,
    /// A short description of a workload a backend ran instead of the one asked (e.g. `4 ranks x 200 steps`).
    pub describe: fn(&W) -> String,
    /// Which profile (if any) shaped each backend's answer to `w`: `(backend name, profile kind)`.
    pub profiled: fn(&Opts, &W) -> Vec<(&'static str, String)>,
    /// The calibration, if any.
    pub calibration: Option<&'static dyn Calibration>,
}

/// `profiled` for kinds whose backends read no profile.
pub fn no_profile<W>(_: &Opts, _: &W) -> Vec<(&'static str, String)> {
    Vec::new()
}

/// The input error for a backend `name` that kind `kind` does not have (`names`), at `field`.
pub(crate) fn unknown_backend(field: &str, kind: &str, name: &str, names: &[String]) -> Error {
    Error::invalid(
        field,
        name,
        format!("kind \"{kind}\" has the backends {}", names.join(", ")),
        "name one of them",
    )
}

impl<W: Workload> Kind for KindDef<W> {
    fn name(&self) -> &'static str {
        W::KIND
    }
    fn about(&self) -> &'static str {
        self.about
    }
    fn backends(&self, opts: &Opts) -> Result<Vec<BackendInfo>, Error> {
        Ok((self.backends)(opts)?
            .iter()
            .map(|b| BackendInfo {
                name: b.name().to_string(),
                fidelity: b.fidelity(),
            })
            .collect())
    }
    fn reads(&self) -> &'static [&'static str] {
        self.reads
    }
    fn reference(&self) -> &'static [&'static str] {
        self.reference
    }
    fn headline(&self) -> &'static [&'static str] {
        self.headline
    }
    fn calibration(&self) -> Option<&'static dyn Calibration> {
        self.calibration
    }
    fn workload_json(&self, sc: &Scenario) -> Result<serde_json::Value, Error> {
        let w: W = sc.workload()?;
        serde_json::to_value(&w).map_err(|e| Error::Backend(format!("internal: encoding the workload: {e}")))
    }
    fn answer(&self, sc: &Scenario, opts: &Opts, req: &Request<'_>, ctx: &mut RunCtx) -> Result<Vec<Group>, Error> {
        let w: W = sc.workload()?;
        for line in w.warnings() {
            eprintln!("warning: {}: {line}", sc.origin);
        }
        self.answer_workload(&w, opts, req, ctx)
    }
}

struct Pending<W> {
    workload: W,
    json: serde_json::Value,
    group: Group,
}

fn to_json<W: Workload>(w: &W) -> Result<serde_json::Value, Error> {
    serde_json::to_value(w).map_err(|e| Error::Backend(format!("internal: encoding the workload: {e}")))
}

impl<W: Workload> KindDef<W> {
    /// Answers a typed workload (see [`Kind::answer`]).
    pub fn answer_workload(
        &self,
        w: &W,
        opts: &Opts,
        req: &Request<'_>,
        ctx: &mut RunCtx,
    ) -> Result<Vec<Group>, Error> {
        let mut backends = (self.backends)(opts)?;
        let names: Vec<String> = backends.iter().map(|b| b.name().to_string()).collect();
        if let Some(only) = req.only {
            for n in only {
                if !names.contains(n) {
                    return Err(unknown_backend("--backend", W::KIND, n, &names));
                }
            }
            backends.retain(|b| only.iter().any(|n| n == b.name()));
        }
        let mut groups: Vec<Pending<W>> = vec![Pending {
            workload: w.clone(),
            json: to_json(w)?,
            group: Group {
                label: req.label.to_string(),
                scaled_by: None,
                workload: serde_json::Value::Null,
                answers: Vec::new(),
                reference: None,
            },
        }];
        for b in backends.iter_mut() {
            if let Err(why) = b.available() {
                // A backend that cannot run here answers nothing: it is listed, skipped, under the workload asked.
                groups[0].group.answers.push(Answer {
                    backend: b.name().to_string(),
                    fidelity: b.fidelity(),
                    profile: None,
                    result: Err(Error::Unsupported(format!("skipped: {why}"))),
                });
                continue;
            }
            let target = match b.answers(w)? {
                None => 0,
                Some(other) => {
                    let json = to_json(&other)?;
                    match groups.iter().position(|g| g.json == json) {
                        Some(i) => i,
                        None => {
                            let label = format!("{} [{} runs {}]", req.label, b.name(), (self.describe)(&other));
                            groups.push(Pending {
                                workload: other,
                                json,
                                group: Group {
                                    label,
                                    scaled_by: Some(b.name().to_string()),
                                    workload: serde_json::Value::Null,
                                    answers: Vec::new(),
                                    reference: None,
                                },
                            });
                            groups.len() - 1
                        }
                    }
                }
            };
            let g = &mut groups[target];
            let answer = self.run_one(b.as_mut(), &g.workload, opts, ctx);
            g.group.answers.push(answer);
        }
        if req.follow_scaled {
            for g in groups.iter_mut().skip(1) {
                // Nothing to compare with when the backend that ran this workload could not answer it.
                if g.group.answers.iter().all(|a| a.result.is_err()) {
                    continue;
                }
                for b in backends.iter_mut() {
                    if b.available().is_err() || g.group.answers.iter().any(|a| a.backend == b.name()) {
                        continue;
                    }
                    // Only a backend that answers this workload as it is belongs to its group.
                    if b.answers(&g.workload)?.is_some() {
                        continue;
                    }
                    let answer = self.run_one(b.as_mut(), &g.workload, opts, ctx);
                    g.group.answers.push(answer);
                }
                // Keep backend order within the group.
                let order = |n: &str| names.iter().position(|x| x == n).unwrap_or(usize::MAX);
                g.group.answers.sort_by_key(|a| order(&a.backend));
            }
        }
        Ok(groups
            .into_iter()
            .map(|mut p| {
                p.group.workload = p.json;
                p.group.reference = self
                    .reference
                    .iter()
                    .find(|r| p.group.answers.iter().any(|a| a.backend == **r && a.result.is_ok()))
                    .map(|r| r.to_string());
                p.group
            })
            .collect())
    }

    fn run_one(&self, b: &mut dyn Backend<W>, w: &W, opts: &Opts, ctx: &mut RunCtx) -> Answer {
        let backend = b.name().to_string();
        let profile = (self.profiled)(opts, w)
            .into_iter()
            .find(|(n, _)| *n == backend)
            .map(|(_, p)| p);
        let result = match b.available() {
            Err(why) => Err(Error::Unsupported(format!("skipped: {why}"))),
            Ok(()) => {
                use trainlab_core::Outcome;
                b.run(w, ctx).map(|o| o.metrics())
            }
        };
        Answer {
            backend,
            fidelity: b.fidelity(),
            profile,
            result,
        }
    }
}

/// A backend that answers another workload than the one asked: `map` says which (`None`: the one asked).
pub struct Answering<W: Workload> {
    /// The backend.
    pub inner: Box<dyn Backend<W>>,
    /// The workload it really runs when asked for one.
    pub map: fn(&W) -> Option<W>,
}

impl<W: Workload> Backend<W> for Answering<W> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn fidelity(&self) -> Fidelity {
        self.inner.fidelity()
    }
    fn available(&self) -> Result<(), String> {
        self.inner.available()
    }
    fn answers(&self, w: &W) -> Result<Option<W>, Error> {
        Ok((self.map)(w))
    }
    fn run(&mut self, w: &W, ctx: &mut RunCtx) -> Result<W::Outcome, Error> {
        self.inner.run(w, ctx)
    }
}
