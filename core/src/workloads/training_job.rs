//! A large synchronous training job under component failures: how much of its GPU time is lost, and what
//! communication-driven detection (C4D, Dong et al., HPCA 2025, arXiv 2406.04594) buys over baseline detection.
//!
//! The job runs `gpus` GPUs in nodes of `gpus_per_node`, checkpoints every `checkpoint_interval` seconds of compute
//! (each write blocks for `checkpoint_cost_s`), and suffers faults drawn per component class (GPU, HBM, NIC,
//! switch/cable, host, software...) at configured rates per component-hour of wall-clock time. Each fault is
//! fail-stop, a hang, or a slowdown (straggler); detection follows `policy`:
//!
//! - `baseline`: a crash is seen at once, a hang only after the collective (NCCL-watchdog) timeout, a slow rank late
//!   or never; the faulty node is found by manual diagnosis (hours).
//! - `c4d`: per-rank collective timestamps reveal a hang or a straggler within seconds to tens of seconds and name the
//!   rank or link; the node is isolated automatically and replaced from the spare pool.
//!
//! Every interruption then goes through the phases of the C4D timeline (detect, localise, isolate, restart) and
//! loses the work since the last checkpoint. The outcome is the effective training time ratio (ETTR = useful
//! training time / wall time, Kokolis et al. 2024) and the downtime broken down by phase and by fault class.
use crate::error::check;
use crate::{Error, Metric, Outcome, Unit, Workload};
use serde::{Deserialize, Serialize};

mod schedule;
pub use schedule::{FaultSchedule, InjectedKind, ScheduledFaultOutcome, ScheduledFaultSpec, ScheduledOutcome};

/// Component classes faults are attributed to (the rows of Llama 3's Table 5 plus generic ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultClass {
    /// A faulty GPU (XID errors, fell off the bus).
    Gpu,
    /// GPU HBM memory (uncorrectable ECC).
    Hbm,
    /// GPU on-chip SRAM.
    GpuSram,
    /// GPU system processor (GSP).
    GpuProcessor,
    /// GPU thermal interface or sensor.
    GpuThermal,
    /// Silent data corruption.
    Sdc,
    /// Network interface card.
    Nic,
    /// Network switch or cable.
    SwitchCable,
    /// Host (generic).
    Host,
    /// Unplanned host maintenance.
    HostMaintenance,
    /// Local SSD.
    Ssd,
    /// Power supply.
    PowerSupply,
    /// Server chassis.
    Chassis,
    /// IO expansion board.
    IoBoard,
    /// Host CPU.
    Cpu,
    /// Host system memory.
    SystemMemory,
    /// Software bug in the training stack.
    Software,
    /// A broken software dependency.
    Dependency,
    /// NCCL watchdog timeout of unknown cause.
    NcclWatchdog,
}

impl FaultClass {
    /// Every class, in declaration order.
    pub const ALL: [FaultClass; 19] = [
        FaultClass::Gpu,
        FaultClass::Hbm,
        FaultClass::GpuSram,
        FaultClass::GpuProcessor,
        FaultClass::GpuThermal,
        FaultClass::Sdc,
        FaultClass::Nic,
        FaultClass::SwitchCable,
        FaultClass::Host,
        FaultClass::HostMaintenance,
        FaultClass::Ssd,
        FaultClass::PowerSupply,
        FaultClass::Chassis,
        FaultClass::IoBoard,
        FaultClass::Cpu,
        FaultClass::SystemMemory,
        FaultClass::Software,
        FaultClass::Dependency,
        FaultClass::NcclWatchdog,
    ];

    /// snake_case name, as in scenario files.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultClass::Gpu => "gpu",
            FaultClass::Hbm => "hbm",
            FaultClass::GpuSram => "gpu_sram",
            FaultClass::GpuProcessor => "gpu_processor",
            FaultClass::GpuThermal => "gpu_thermal",
            FaultClass::Sdc => "sdc",
            FaultClass::Nic => "nic",
            FaultClass::SwitchCable => "switch_cable",
            FaultClass::Host => "host",
            FaultClass::HostMaintenance => "host_maintenance",
            FaultClass::Ssd => "ssd",
            FaultClass::PowerSupply => "power_supply",
            FaultClass::Chassis => "chassis",
            FaultClass::IoBoard => "io_board",
            FaultClass::Cpu => "cpu",
            FaultClass::SystemMemory => "system_memory",
            FaultClass::Software => "software",
            FaultClass::Dependency => "dependency",
            FaultClass::NcclWatchdog => "nccl_watchdog",
        }
    }

    /// The component a rate of this class is counted per, unless a failure entry overrides it: GPU classes per GPU,
    /// NICs per NIC (one per GPU, as on H100/H800 nodes), everything else per node.
    pub fn default_scope(self) -> Scope {
        match self {
            FaultClass::Gpu
            | FaultClass::Hbm
            | FaultClass::GpuSram
            | FaultClass::GpuProcessor
            | FaultClass::GpuThermal
            | FaultClass::Sdc => Scope::Gpu,
            FaultClass::Nic => Scope::Nic,
            _ => Scope::Node,
        }
    }

    /// Whether recovering needs the node swapped for a spare (hardware) or only a restart (software).
    pub fn needs_replacement(self) -> bool {
        !matches!(
            self,
            FaultClass::Software | FaultClass::Dependency | FaultClass::NcclWatchdog
        )
    }

    /// Whether a hang of this class shows in the network (all ranks entered the collective, a connection stalls) or
    /// outside it (some rank never entered). C4D's two hang classes.
    pub fn is_communication(self) -> bool {
        matches!(
            self,
            FaultClass::Nic | FaultClass::SwitchCable | FaultClass::NcclWatchdog
        )
    }
}

impl std::fmt::Display for FaultClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rate is counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Per GPU.
    Gpu,
    /// Per NIC (one per GPU).
    Nic,
    /// Per node.
    Node,
    /// Once for the whole job.
    Job,
}

/// How a fault shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The process or node dies; every peer sees it at once.
    #[default]
    FailStop,
    /// The job stops making progress without an error (a stuck kernel, a stalled connection).
    Hang,
    /// The job keeps running, slower (a straggler GPU, a degraded link).
    Slow,
}

impl FaultKind {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::FailStop => "fail_stop",
            FaultKind::Hang => "hang",
            FaultKind::Slow => "slow",
        }
    }
}

/// One entry of the failure model: faults of `class`, of one `kind`, at `rate_per_component_hour`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureSpec {
    /// Component class.
    pub class: FaultClass,
    /// How the fault shows.
    #[serde(default)]
    pub kind: FaultKind,
    /// Faults per component per hour of wall-clock time (the reciprocal of the mean lifetime).
    pub rate_per_component_hour: f64,
    /// What a component is (defaults to [`FaultClass::default_scope`]).
    #[serde(default)]
    pub scope: Option<Scope>,
    /// Weibull shape `k` of component lifetimes (1 = exponential, the default; < 1 infant mortality, > 1 wear-out).
    /// The scale is chosen so the mean lifetime is `1 / rate`.
    #[serde(default)]
    pub weibull_shape: Option<f64>,
    /// For `slow` faults: the factor by which the step time grows (1.5 = 50% slower).
    #[serde(default = "default_slowdown")]
    pub slowdown: f64,
}

fn default_slowdown() -> f64 {
    1.5
}

impl FailureSpec {
    /// The scope in effect.
    pub fn scope(&self) -> Scope {
        self.scope.unwrap_or(self.class.default_scope())
    }
}

/// How often to checkpoint: a fixed interval of compute in seconds, or `"young_daly"` for Daly's optimum (2006).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CheckpointInterval {
    /// Seconds of compute between checkpoints.
    Seconds(f64),
    /// A named rule.
    Rule(CheckpointRule),
}

/// Named checkpoint rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointRule {
    /// Daly's higher-order optimum `sqrt(2 delta M)[1 + sqrt(delta/2M)/3 + delta/18M] - delta`.
    YoungDaly,
}

/// Nodes that fail far more often than the rest (Kokolis et al. 2024: 1.2% of nodes, 13% of jobs touched).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LemonSpec {
    /// Lemon nodes among the job's nodes.
    pub nodes: u64,
    /// Their hardware failure rates, as a multiple of the configured ones.
    pub rate_multiplier: f64,
}

/// The detection policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Crash seen at once, hang after the collective timeout, slow late; manual localisation and isolation.
    Baseline,
    /// Communication-driven detection and localisation in seconds, automatic isolation.
    C4d,
}

impl Policy {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Baseline => "baseline",
            Policy::C4d => "c4d",
        }
    }
}

/// Timing parameters of both detection policies (seconds). Defaults are documented per field with their source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionSpec {
    /// Both policies: delay until a crashed process is noticed (the launcher sees the exit). Default 30 s.
    pub crash_detect_s: f64,
    /// Baseline: collective timeout after which a hang surfaces (PyTorch's NCCL watchdog, 30 min default in 2.x).
    pub hang_timeout_s: f64,
    /// Baseline: time to find the faulty node of a crash from logs. Default 1 h.
    pub baseline_localise_crash_s: f64,
    /// Baseline: time to find the faulty node of a hang by manual diagnosis / bisection ("hours to days", C4 §1).
    /// Default 8 h.
    pub baseline_localise_hang_s: f64,
    /// Baseline: time until a slow job is noticed (throughput dashboards). Default 12 h.
    pub baseline_slow_detect_s: f64,
    /// Baseline: time to find the straggler once noticed. Default 6 h.
    pub baseline_localise_slow_s: f64,
    /// Baseline: time to cordon the node and get a replacement by hand. Default 30 min.
    pub baseline_isolate_s: f64,
    /// C4D: a hang is declared when no collective completes for this many step times. Default 3.
    pub c4d_hang_steps: f64,
    /// C4D: floor of the hang threshold in seconds. Default 10 s.
    pub c4d_hang_min_s: f64,
    /// C4D: steps in the straggler window W. Default 5.
    pub c4d_window_steps: u32,
    /// C4D: a rank is a straggler when its mean arrival lag exceeds this fraction of the step time. Default 0.2.
    pub c4d_slow_threshold: f64,
    /// C4D: time for the master to localise once a syndrome is seen ("tens of seconds", C4D). Default 20 s.
    pub c4d_localise_s: f64,
    /// C4D: automatic isolation: evict the node, pull a spare. Default 60 s.
    pub c4d_isolate_s: f64,
    /// Coefficient of variation of per-rank compute time (step jitter) in the simulated timestamps. Default 0.02.
    pub jitter_cv: f64,
}

impl Default for DetectionSpec {
    fn default() -> Self {
        DetectionSpec {
            crash_detect_s: 30.0,
            hang_timeout_s: 1800.0,
            baseline_localise_crash_s: 3600.0,
            baseline_localise_hang_s: 8.0 * 3600.0,
            baseline_slow_detect_s: 12.0 * 3600.0,
            baseline_localise_slow_s: 6.0 * 3600.0,
            baseline_isolate_s: 1800.0,
            c4d_hang_steps: 3.0,
            c4d_hang_min_s: 10.0,
            c4d_window_steps: 5,
            c4d_slow_threshold: 0.2,
            c4d_localise_s: 20.0,
            c4d_isolate_s: 60.0,
            jitter_cv: 0.02,
        }
    }
}

impl DetectionSpec {
    /// The C4D hang threshold in seconds for a given step time.
    pub fn c4d_hang_s(&self, step_time_s: f64) -> f64 {
        (self.c4d_hang_steps * step_time_s).max(self.c4d_hang_min_s)
    }
}

/// A training job under failures. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingJob {
    /// GPUs the job runs on (absent in a scheduled job: its `schedule.ranks` say how many).
    #[serde(default)]
    pub gpus: u64,
    /// GPUs per node (default 8).
    #[serde(default = "eight")]
    pub gpus_per_node: u64,
    /// Seconds per optimizer step.
    pub step_time_s: f64,
    /// Wall-clock length of the job, days (absent in a scheduled job: `schedule.steps` set its length).
    #[serde(default)]
    pub horizon_days: f64,
    /// Compute seconds between checkpoints, or `"young_daly"` (absent in a scheduled job: it checkpoints every
    /// `schedule.checkpoint_every_steps` steps).
    #[serde(default = "unset_interval")]
    pub checkpoint_interval: CheckpointInterval,
    /// Seconds one checkpoint write blocks training.
    pub checkpoint_cost_s: f64,
    /// Seconds to restart: process launch, communicator init, checkpoint load.
    pub restart_cost_s: f64,
    /// Healthy spare nodes available for isolation; absent = the scheduler always finds one (unlimited pool).
    #[serde(default)]
    pub spare_nodes: Option<u64>,
    /// Hours until a failed node is repaired and returns to the spare pool.
    #[serde(default = "default_repair_hours")]
    pub repair_hours: f64,
    /// The failure model (empty in a scheduled job: its faults are in `schedule.faults`).
    #[serde(default)]
    pub failures: Vec<FailureSpec>,
    /// Optional lemon nodes.
    #[serde(default)]
    pub lemon: Option<LemonSpec>,
    /// Detection policies to evaluate (default both, so one run shows the saving).
    #[serde(default = "both_policies")]
    pub policies: Vec<Policy>,
    /// Detection timing parameters.
    #[serde(default)]
    pub detection: DetectionSpec,
    /// Monte Carlo replications per policy for the simulated backend (default 64).
    #[serde(default = "default_replications")]
    pub replications: u32,
    /// An explicit fault schedule instead of failure rates: which faults strike which rank at which step. See
    /// [`FaultSchedule`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<FaultSchedule>,
}

fn eight() -> u64 {
    8
}
pub(crate) fn default_repair_hours() -> f64 {
    48.0
}
fn both_policies() -> Vec<Policy> {
    vec![Policy::Baseline, Policy::C4d]
}
pub(crate) fn default_replications() -> u32 {
    64
}
/// The `checkpoint_interval` of a job that gives none: invalid for a rate-based job (validation says so), the
/// expected value in a scheduled one.
fn unset_interval() -> CheckpointInterval {
    CheckpointInterval::Seconds(0.0)
}

impl TrainingJob {
    /// Nodes the job occupies (rounded up).
    pub fn nodes(&self) -> u64 {
        self.gpus.div_ceil(self.gpus_per_node.max(1))
    }
    /// Horizon in seconds.
    pub fn horizon_s(&self) -> f64 {
        self.horizon_days * 86_400.0
    }
    /// Number of components of a scope in this job.
    pub fn components(&self, scope: Scope) -> u64 {
        match scope {
            Scope::Gpu | Scope::Nic => self.gpus,
            Scope::Node => self.nodes(),
            Scope::Job => 1,
        }
    }
    /// Lemon multiplier applied to hardware rates of one lemon node, 1 without lemons.
    fn lemon_factor(&self, spec: &FailureSpec) -> f64 {
        match &self.lemon {
            Some(l) if spec.class.needs_replacement() && spec.scope() != Scope::Job && self.nodes() > 0 => {
                let frac = l.nodes as f64 / self.nodes() as f64;
                1.0 + frac * (l.rate_multiplier - 1.0)
            }
            _ => 1.0,
        }
    }
    /// Expected faults per second of wall time from one failure entry, for the whole job (lemons included).
    pub fn entry_rate_per_s(&self, spec: &FailureSpec) -> f64 {
        spec.rate_per_component_hour * self.components(spec.scope()) as f64 * self.lemon_factor(spec) / 3600.0
    }
    /// Total fault rate of the job, per second (all kinds).
    pub fn total_rate_per_s(&self) -> f64 {
        self.failures.iter().map(|f| self.entry_rate_per_s(f)).sum()
    }
    /// Rate of interrupting faults (fail-stop and hang), per second.
    pub fn interrupt_rate_per_s(&self) -> f64 {
        self.failures
            .iter()
            .filter(|f| f.kind != FaultKind::Slow)
            .map(|f| self.entry_rate_per_s(f))
            .sum()
    }
}

// Bounds that keep the simulator's integer-nanosecond clock (u64, 584 years) and its event count finite:
// horizon <= 10 years, every duration <= ~31.7 years, at most 1e5 faults per replication.
const MAX_GPUS: u64 = 1 << 20;
const MAX_HORIZON_DAYS: f64 = 3650.0;
const MAX_SECONDS: f64 = 1e9;
const MIN_STEP_S: f64 = 1e-4;
const MAX_STEP_S: f64 = 1e6;
const MAX_FACTOR: f64 = 1e3;
const MAX_FAULTS: f64 = 1e5;
const MAX_REPLICATIONS: u64 = 1_000_000;
/// Steps of a scheduled job (the simulator replays each one).
const MAX_SCHEDULED_STEPS: u64 = 10_000_000;
const CLOCK: &str = "keeps the simulator's nanosecond clock in range";

impl TrainingJob {
    /// `step_time_s` in [`MIN_STEP_S`, `MAX_STEP_S`] (rate-based and scheduled jobs alike).
    fn check_step_time(&self) -> Result<(), Error> {
        check::positive_at_most("workload.step_time_s", self.step_time_s, MAX_STEP_S, CLOCK)?;
        if self.step_time_s < MIN_STEP_S {
            return Err(Error::invalid(
                "workload.step_time_s",
                self.step_time_s,
                format!("must be at least {MIN_STEP_S:e} s (the detector's timestamps are in nanoseconds)"),
                "give the seconds of one optimizer step",
            ));
        }
        Ok(())
    }
}

impl Workload for TrainingJob {
    type Outcome = TrainingJobOutcome;
    const KIND: &'static str = "training_job";
    fn validate(&self) -> Result<(), Error> {
        if let Some(s) = &self.schedule {
            return self.validate_scheduled(s);
        }
        let clock = CLOCK;
        check::at_least("workload.gpus", self.gpus, 1)?;
        check::at_most("workload.gpus", self.gpus, MAX_GPUS, "far beyond any cluster")?;
        check::at_least("workload.gpus_per_node", self.gpus_per_node, 1)?;
        check::at_most(
            "workload.gpus_per_node",
            self.gpus_per_node,
            MAX_GPUS,
            "far beyond any node",
        )?;
        self.check_step_time()?;
        check::positive_at_most("workload.horizon_days", self.horizon_days, MAX_HORIZON_DAYS, clock)?;
        match self.checkpoint_interval {
            CheckpointInterval::Seconds(s) => {
                if !(s.is_finite() && (1e-3..=MAX_SECONDS).contains(&s)) {
                    return Err(Error::invalid(
                        "workload.checkpoint_interval",
                        s,
                        format!("must be a finite number of seconds in [1e-3, {MAX_SECONDS:e}]"),
                        "give the compute seconds between checkpoints, or \"young_daly\"",
                    ));
                }
            }
            CheckpointInterval::Rule(_) => {
                if self.checkpoint_cost_s <= 0.0 {
                    return Err(Error::invalid(
                        "workload.checkpoint_cost_s",
                        self.checkpoint_cost_s,
                        "the Young/Daly interval needs a checkpoint cost > 0",
                        "give the seconds one checkpoint write blocks training",
                    ));
                }
            }
        }
        check::non_negative_at_most("workload.checkpoint_cost_s", self.checkpoint_cost_s, MAX_SECONDS, clock)?;
        check::non_negative_at_most("workload.restart_cost_s", self.restart_cost_s, MAX_SECONDS, clock)?;
        check::positive_at_most("workload.repair_hours", self.repair_hours, MAX_SECONDS / 3600.0, clock)?;
        let nodes = self.nodes();
        if let Some(spares) = self.spare_nodes
            && spares > nodes
        {
            return Err(Error::invalid(
                "workload.spare_nodes",
                spares,
                format!("more spares than the job's {nodes} nodes"),
                format!("use at most {nodes} spare nodes"),
            ));
        }
        if let Some(l) = &self.lemon {
            if l.nodes > nodes {
                return Err(Error::invalid(
                    "workload.lemon.nodes",
                    l.nodes,
                    format!("more lemon nodes than the job's {nodes} nodes"),
                    format!("use at most {nodes}"),
                ));
            }
            if !(l.rate_multiplier.is_finite() && (1.0..=MAX_FACTOR).contains(&l.rate_multiplier)) {
                return Err(Error::invalid(
                    "workload.lemon.rate_multiplier",
                    l.rate_multiplier,
                    format!("must be a finite factor in [1, {MAX_FACTOR}]"),
                    "give how many times more often a lemon node fails, e.g. 10",
                ));
            }
        }
        for (i, f) in self.failures.iter().enumerate() {
            let rate = format!("workload.failures[{i}].rate_per_component_hour");
            check::non_negative(&rate, f.rate_per_component_hour)?;
            if let Some(k) = f.weibull_shape {
                check::in_range(&format!("workload.failures[{i}].weibull_shape"), k, 0.1, 20.0)?;
            }
            if !(f.slowdown.is_finite() && (1.0..=MAX_FACTOR).contains(&f.slowdown)) {
                return Err(Error::invalid(
                    format!("workload.failures[{i}].slowdown"),
                    f.slowdown,
                    format!("must be a finite factor in [1, {MAX_FACTOR}]"),
                    "give the step-time multiple of a slow fault, e.g. 1.5",
                ));
            }
            let expected = self.entry_rate_per_s(f) * self.horizon_s();
            if expected > MAX_FAULTS {
                return Err(Error::invalid(
                    rate,
                    f.rate_per_component_hour,
                    format!(
                        "{expected:.3e} expected faults over the horizon, more than {MAX_FAULTS:e} (the simulator \
                         draws every one)"
                    ),
                    "give faults per component per hour, e.g. 1e-5 for a GPU",
                ));
            }
        }
        let expected = self.total_rate_per_s() * self.horizon_s();
        if expected > MAX_FAULTS {
            return Err(Error::invalid(
                "workload.failures",
                format!("{} entries", self.failures.len()),
                format!("{expected:.3e} expected faults over the horizon, more than {MAX_FAULTS:e}"),
                "lower the rates or the horizon",
            ));
        }
        if self.policies.is_empty() {
            return Err(Error::invalid(
                "workload.policies",
                "[]",
                "no detection policy given",
                "list at least one of \"baseline\", \"c4d\"",
            ));
        }
        check::at_least("workload.replications", self.replications as u64, 2)?;
        check::at_most(
            "workload.replications",
            self.replications as u64,
            MAX_REPLICATIONS,
            "64 to 1,000 already give tight intervals",
        )?;
        self.detection.validate_at("workload.detection")
    }
}

/// Downtime phases of the C4D timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// From the fault until it is noticed (for slow faults: the progress lost while running slow).
    Detect,
    /// Finding the faulty component.
    Localise,
    /// Evicting it and bringing in a spare (including waiting for a repair when no spare is free).
    Isolate,
    /// Relaunch, communicator init, checkpoint load.
    Restart,
    /// Recomputing the work since the last checkpoint.
    LostWork,
    /// Blocking checkpoint writes.
    Checkpointing,
}

impl Phase {
    /// Every phase, in timeline order.
    pub const ALL: [Phase; 6] = [
        Phase::Detect,
        Phase::Localise,
        Phase::Isolate,
        Phase::Restart,
        Phase::LostWork,
        Phase::Checkpointing,
    ];
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Detect => "detect",
            Phase::Localise => "localise",
            Phase::Isolate => "isolate",
            Phase::Restart => "restart",
            Phase::LostWork => "lost_work",
            Phase::Checkpointing => "checkpointing",
        }
    }
    /// Index in [`Phase::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// An estimate with its 95% interval (equal bounds for closed forms).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Point estimate (mean over replications).
    pub mean: f64,
    /// Lower end of the 95% interval.
    pub low: f64,
    /// Upper end of the 95% interval.
    pub high: f64,
}

impl Estimate {
    /// An exact value (closed form).
    pub fn exact(v: f64) -> Self {
        Estimate {
            mean: v,
            low: v,
            high: v,
        }
    }
    /// Mean and 95% interval of a sample (Student-t for small samples).
    pub fn of(xs: &[f64]) -> Self {
        let s = crate::Summary::of(xs);
        let (low, high) = s.ci95();
        Estimate {
            mean: s.mean,
            low,
            high,
        }
    }
    fn metric(&self, name: String, unit: Unit) -> Metric {
        if self.low == self.high {
            Metric::new(name, unit, self.mean)
        } else {
            Metric::with_ci(name, unit, self.mean, self.low, self.high)
        }
    }
}

/// The answer for one detection policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyOutcome {
    /// The policy.
    pub policy: Policy,
    /// Effective training time ratio: useful training time / wall time.
    pub ettr: Estimate,
    /// Downtime per phase as a fraction of wall time, in [`Phase::ALL`] order.
    pub downtime_by_phase: Vec<(Phase, Estimate)>,
    /// Downtime (all phases but checkpointing) attributed to each fault class, fraction of wall time.
    pub downtime_by_class: Vec<(FaultClass, Estimate)>,
    /// Interruptions (fail-stop, hang and detected slow faults) over the horizon.
    pub interruptions: Estimate,
    /// Interruptions per fault class.
    pub interruptions_by_class: Vec<(FaultClass, Estimate)>,
    /// GPU-hours lost: (1 - ETTR) x GPUs x horizon.
    pub gpu_hours_lost: Estimate,
    /// Mean detection latency of interrupting faults, seconds (detect phase per fault).
    pub detection_latency_s: Estimate,
    /// Fraction of faults localised to the right component (1 for closed forms).
    pub localisation_accuracy: Estimate,
}

/// The answer for a training job: one entry per evaluated policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingJobOutcome {
    /// Per-policy results, in the order of `workload.policies` (empty for a scheduled job).
    pub policies: Vec<PolicyOutcome>,
    /// The answer for a scheduled job (`workload.schedule`), None for a rate-based one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<ScheduledOutcome>,
}

impl TrainingJobOutcome {
    /// The outcome of `policy`, if evaluated.
    pub fn policy(&self, policy: Policy) -> Option<&PolicyOutcome> {
        self.policies.iter().find(|p| p.policy == policy)
    }
}

impl Outcome for TrainingJobOutcome {
    /// Metrics are named `<policy>.<metric>` (`c4d.ettr`, `baseline.downtime.detect`, `c4d.downtime_class.gpu`...);
    /// with both policies, `saving.ettr` (c4d - baseline) and `saving.gpu_hours` are added.
    fn metrics(&self) -> Vec<Metric> {
        let mut out = Vec::new();
        for p in &self.policies {
            let pre = p.policy.as_str();
            out.push(p.ettr.metric(format!("{pre}.ettr"), Unit::Ratio));
            out.push(p.interruptions.metric(format!("{pre}.interruptions"), Unit::Count));
            out.push(p.gpu_hours_lost.metric(format!("{pre}.gpu_hours_lost"), Unit::GpuHours));
            out.push(
                p.detection_latency_s
                    .metric(format!("{pre}.detection_latency"), Unit::Seconds),
            );
            out.push(
                p.localisation_accuracy
                    .metric(format!("{pre}.localisation_accuracy"), Unit::Ratio),
            );
            for (ph, e) in &p.downtime_by_phase {
                out.push(e.metric(format!("{pre}.downtime.{}", ph.as_str()), Unit::Ratio));
            }
            for (c, e) in &p.downtime_by_class {
                out.push(e.metric(format!("{pre}.downtime_class.{c}"), Unit::Ratio));
            }
            for (c, e) in &p.interruptions_by_class {
                out.push(e.metric(format!("{pre}.interruptions_class.{c}"), Unit::Count));
            }
        }
        if let (Some(b), Some(c)) = (self.policy(Policy::Baseline), self.policy(Policy::C4d)) {
            out.push(Metric::new("saving.ettr", Unit::Ratio, c.ettr.mean - b.ettr.mean));
            out.push(Metric::new(
                "saving.gpu_hours",
                Unit::GpuHours,
                b.gpu_hours_lost.mean - c.gpu_hours_lost.mean,
            ));
        }
        if let Some(s) = &self.scheduled {
            out.extend(s.metrics());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> TrainingJob {
        TrainingJob {
            gpus: 1024,
            gpus_per_node: 8,
            step_time_s: 10.0,
            horizon_days: 10.0,
            checkpoint_interval: CheckpointInterval::Seconds(1800.0),
            checkpoint_cost_s: 30.0,
            restart_cost_s: 300.0,
            spare_nodes: Some(4),
            repair_hours: 48.0,
            failures: vec![FailureSpec {
                class: FaultClass::Gpu,
                kind: FaultKind::FailStop,
                rate_per_component_hour: 1e-5,
                scope: None,
                weibull_shape: None,
                slowdown: 1.5,
            }],
            lemon: None,
            policies: both_policies(),
            detection: DetectionSpec::default(),
            replications: 8,
            schedule: None,
        }
    }

    #[test]
    fn validation_names_fields() {
        assert!(job().validate().is_ok());
        let mut j = job();
        j.failures[0].rate_per_component_hour = f64::NAN;
        let e = j.validate().unwrap_err().to_string();
        assert!(e.contains("workload.failures[0].rate_per_component_hour"), "{e}");
        let mut j = job();
        j.failures[0].rate_per_component_hour = -1.0;
        assert!(j.validate().is_err());
        let mut j = job();
        j.checkpoint_interval = CheckpointInterval::Seconds(0.0);
        assert!(
            j.validate()
                .unwrap_err()
                .to_string()
                .contains("workload.checkpoint_interval")
        );
        let mut j = job();
        j.spare_nodes = Some(129);
        assert!(j.validate().unwrap_err().to_string().contains("workload.spare_nodes"));
    }

    #[test]
    fn toml_forms_parse() {
        let j: TrainingJob = serde_json::from_str(
            r#"{"gpus":16,"step_time_s":1,"horizon_days":1,"checkpoint_interval":"young_daly",
                "checkpoint_cost_s":5,"restart_cost_s":60,
                "failures":[{"class":"hbm","kind":"hang","rate_per_component_hour":1e-4}]}"#,
        )
        .unwrap();
        assert_eq!(
            j.checkpoint_interval,
            CheckpointInterval::Rule(CheckpointRule::YoungDaly)
        );
        assert_eq!(j.nodes(), 2);
        let bad = serde_json::from_str::<TrainingJob>(
            r#"{"gpus":16,"step_time_s":1,"horizon_days":1,"checkpoint_interval":60,
                "checkpoint_cost_s":5,"restart_cost_s":60,
                "failures":[{"class":"flux_capacitor","rate_per_component_hour":1e-4}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("flux_capacitor"), "{bad}");
    }
}
