//! Scheduled training jobs: a fault schedule written by the user (which fault strikes which rank after how many
//! steps) instead of failure rates. Every backend answers the same timeline, so the closed form, the Monte Carlo
//! replay and the real fault-injection run report the same metrics, fault by fault.
//!
//! The timeline of a scheduled job (all backends):
//! - `schedule.ranks` ranks train `schedule.steps` synchronous steps; a healthy step takes `step_time_s` seconds of
//!   compute (plus the all-reduce, which a calibrated profile accounts for). After every
//!   `schedule.checkpoint_every_steps`-th step a checkpoint is written, blocking `checkpoint_cost_s`.
//! - Faults strike in schedule order. Fault `i` is injected once the job has completed `at_step` steps and, since
//!   the last (re)start, at least [`FaultSchedule::warmup_steps`] steps (the C4D detector needs the step period and a
//!   full straggler window before it can judge); a fault that would come after the last step is never injected.
//! - `kill` ends the rank's process, `hang` stops it for good, `slow` makes its compute take `slowdown` times as
//!   long. C4D detection uses the job's `detection.c4d_*` thresholds; `detect_s` runs from the injection to the
//!   verdict.
//! - On a verdict the job is torn down and relaunched from its last checkpoint, a spare in place of the named rank:
//!   `restart_s` runs from the verdict until the restarted job begins its first step (localise, isolate, restart),
//!   and the `lost_steps` completed since the checkpoint are redone.
//! - A slow rank not named within `schedule.slow_give_up_steps` steps after its injection is missed: its slowdown
//!   ends (a transient straggler) and the job goes on without a restart.
//! - `useful` = steps x the healthy step period, `wall` = the whole run, `ETTR = useful / wall`.
//!
//! A scheduled job runs under C4D detection only (`policies` must include `"c4d"`; the baseline policy has no real
//! counterpart on a small machine).
use super::{
    CLOCK, CheckpointInterval, DetectionSpec, Estimate, MAX_FACTOR, MAX_GPUS, MAX_REPLICATIONS, MAX_SCHEDULED_STEPS,
    MAX_SECONDS, Policy, TrainingJob,
};
use crate::error::check;
use crate::{Error, Metric, Unit};
use serde::{Deserialize, Serialize};

/// What a scheduled fault does to its rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InjectedKind {
    /// The rank's process dies (SIGKILL in the real run).
    Kill,
    /// The rank stops and never resumes (SIGSTOP in the real run).
    Hang,
    /// The rank's compute phase takes `slowdown` times as long.
    Slow,
}

impl InjectedKind {
    /// snake_case name, as in schedule files.
    pub fn as_str(self) -> &'static str {
        match self {
            InjectedKind::Kill => "kill",
            InjectedKind::Hang => "hang",
            InjectedKind::Slow => "slow",
        }
    }
}

/// One fault of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledFaultSpec {
    /// Completed steps before the fault strikes (`0 <= at_step < steps`, increasing along the schedule).
    pub at_step: u64,
    /// The rank it strikes (`0 <= rank < ranks`).
    pub rank: u64,
    /// What it does.
    pub kind: InjectedKind,
    /// For `slow` (required there, not allowed otherwise): the factor by which the rank's compute slows (>= 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slowdown: Option<f64>,
}

impl ScheduledFaultSpec {
    /// The slowdown in force: the given factor for `slow`, 1 otherwise.
    pub fn factor(&self) -> f64 {
        match self.kind {
            InjectedKind::Slow => self.slowdown.unwrap_or(1.0).max(1.0),
            _ => 1.0,
        }
    }
}

/// An explicit fault schedule: the `[workload.schedule]` table of a `training_job` scenario, and the file
/// `trainlab c4-run --schedule` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSchedule {
    /// Ranks (one process, i.e. one GPU, each), at least 2.
    pub ranks: u64,
    /// Steps to train.
    pub steps: u64,
    /// A checkpoint after every this many steps.
    pub checkpoint_every_steps: u64,
    /// A slow rank not named within this many steps after its injection counts as missed and its slowdown ends
    /// (default 40).
    #[serde(default = "default_give_up")]
    pub slow_give_up_steps: u64,
    /// The faults, in increasing `at_step`.
    #[serde(default)]
    pub faults: Vec<ScheduledFaultSpec>,
}

fn default_give_up() -> u64 {
    40
}

impl FaultSchedule {
    /// Steps the job completes after each (re)start before a fault can be injected: the detector's straggler
    /// window plus two (one step to learn the period, one to compare it with).
    pub fn warmup_steps(detection: &DetectionSpec) -> u64 {
        u64::from(detection.c4d_window_steps) + 2
    }

    /// Checks the schedule; `path` prefixes every field (`workload.schedule`), `warmup` is
    /// [`FaultSchedule::warmup_steps`].
    pub fn validate_at(&self, path: &str, warmup: u64) -> Result<(), Error> {
        check::at_least(&format!("{path}.ranks"), self.ranks, 2)?;
        check::at_most(&format!("{path}.ranks"), self.ranks, MAX_GPUS, "far beyond any cluster")?;
        check::at_least(&format!("{path}.steps"), self.steps, 1)?;
        check::at_most(
            &format!("{path}.steps"),
            self.steps,
            MAX_SCHEDULED_STEPS,
            "the simulator replays every step",
        )?;
        check::at_least(
            &format!("{path}.checkpoint_every_steps"),
            self.checkpoint_every_steps,
            1,
        )?;
        check::at_least(&format!("{path}.slow_give_up_steps"), self.slow_give_up_steps, 1)?;
        let mut prev: Option<u64> = None;
        for (i, f) in self.faults.iter().enumerate() {
            let at = format!("{path}.faults[{i}]");
            if f.rank >= self.ranks {
                return Err(Error::invalid(
                    format!("{at}.rank"),
                    f.rank,
                    format!(
                        "rank out of range: the job has {} ranks, 0 to {}",
                        self.ranks,
                        self.ranks - 1
                    ),
                    format!("give a rank below {}, or raise ranks", self.ranks),
                ));
            }
            if f.at_step >= self.steps {
                return Err(Error::invalid(
                    format!("{at}.at_step"),
                    f.at_step,
                    format!("beyond the job: it ends after {} steps", self.steps),
                    format!("give a step below {}, or raise steps", self.steps),
                ));
            }
            if f.at_step < warmup {
                return Err(Error::invalid(
                    format!("{at}.at_step"),
                    f.at_step,
                    format!("before the detector's warm-up of {warmup} steps (straggler window + 2)"),
                    format!("give a step of at least {warmup}"),
                ));
            }
            if let Some(p) = prev
                && f.at_step <= p
            {
                return Err(Error::invalid(
                    format!("{at}.at_step"),
                    f.at_step,
                    format!("not after the previous fault's step {p}"),
                    "list the faults in increasing at_step, one per step",
                ));
            }
            prev = Some(f.at_step);
            match (f.kind, f.slowdown) {
                (InjectedKind::Slow, None) => {
                    return Err(Error::invalid(
                        format!("{at}.slowdown"),
                        "missing",
                        "a slow fault needs its factor",
                        "add e.g. slowdown = 1.5: the rank's compute then takes 1.5 times as long",
                    ));
                }
                (InjectedKind::Slow, Some(x)) if !(x.is_finite() && (1.0..=MAX_FACTOR).contains(&x)) => {
                    return Err(Error::invalid(
                        format!("{at}.slowdown"),
                        x,
                        format!("must be a finite factor in [1, {MAX_FACTOR}]"),
                        "give the compute-time multiple of the slow rank, e.g. 1.5",
                    ));
                }
                (InjectedKind::Kill | InjectedKind::Hang, Some(x)) => {
                    return Err(Error::invalid(
                        format!("{at}.slowdown"),
                        x,
                        format!("only a slow fault has a slowdown, this one is `{}`", f.kind.as_str()),
                        "drop slowdown, or make the fault kind = \"slow\"",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl TrainingJob {
    /// Validation of a job with a `schedule`: the schedule itself, the fields it reuses (`step_time_s`,
    /// `checkpoint_cost_s`, `restart_cost_s`, `detection`, `replications`), and no field that conflicts with it.
    pub(super) fn validate_scheduled(&self, s: &FaultSchedule) -> Result<(), Error> {
        let conflict = |field: &str, value: String, instead: &str| {
            Err(Error::invalid(
                format!("workload.{field}"),
                value,
                "conflicts with workload.schedule",
                format!("drop {field} from a scheduled job: {instead}"),
            ))
        };
        if self.gpus != 0 && self.gpus != s.ranks {
            return conflict(
                "gpus",
                self.gpus.to_string(),
                &format!("schedule.ranks = {} sets the size", s.ranks),
            );
        }
        if self.horizon_days != 0.0 {
            return conflict(
                "horizon_days",
                self.horizon_days.to_string(),
                "schedule.steps sets the length",
            );
        }
        if self.checkpoint_interval != CheckpointInterval::Seconds(0.0) {
            return conflict(
                "checkpoint_interval",
                format!("{:?}", self.checkpoint_interval),
                "schedule.checkpoint_every_steps sets the interval",
            );
        }
        if !self.failures.is_empty() {
            return conflict(
                "failures",
                format!("{} entries", self.failures.len()),
                "the faults are schedule.faults",
            );
        }
        if self.lemon.is_some() {
            return conflict("lemon", "a table".into(), "faults strike the ranks the schedule names");
        }
        if let Some(n) = self.spare_nodes {
            return conflict("spare_nodes", n.to_string(), "every faulty rank is replaced by a spare");
        }
        if !self.policies.contains(&Policy::C4d) {
            return Err(Error::invalid(
                "workload.policies",
                format!("{:?}", self.policies),
                "a scheduled job runs under C4D detection",
                "drop policies, or include \"c4d\"",
            ));
        }
        self.check_step_time()?;
        check::non_negative_at_most("workload.checkpoint_cost_s", self.checkpoint_cost_s, MAX_SECONDS, CLOCK)?;
        check::non_negative_at_most("workload.restart_cost_s", self.restart_cost_s, MAX_SECONDS, CLOCK)?;
        check::at_least("workload.replications", u64::from(self.replications), 2)?;
        check::at_most(
            "workload.replications",
            u64::from(self.replications),
            MAX_REPLICATIONS,
            "64 to 1,000 already give tight intervals",
        )?;
        self.detection.validate_at("workload.detection")?;
        s.validate_at("workload.schedule", FaultSchedule::warmup_steps(&self.detection))
    }
}

/// What became of one scheduled fault (over the replications of a simulation; one run for a closed form or a real
/// run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledFaultOutcome {
    /// Fraction of replications in which the fault was injected and detected (0 or 1 for one run).
    pub detected: Estimate,
    /// Seconds from injection to verdict, over the replications that detected it (None if none did).
    pub detect_s: Option<Estimate>,
    /// Seconds from the verdict until the restarted job begins its first step (0 when not detected).
    pub restart_s: Estimate,
    /// Steps completed since the last checkpoint when the verdict came, redone after the restart.
    pub lost_steps: Estimate,
    /// Fraction of detections that named the injected rank, where the backend knows it.
    pub localised: Option<Estimate>,
}

/// The answer for a scheduled job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledOutcome {
    /// Useful time / wall time.
    pub ettr: Estimate,
    /// Wall time of the whole run, seconds.
    pub wall_s: Estimate,
    /// Useful time: steps x the healthy step period, seconds.
    pub useful_s: Estimate,
    /// Verdicts with no fault injected.
    pub false_alarms: Estimate,
    /// Per fault, in schedule order.
    pub faults: Vec<ScheduledFaultOutcome>,
}

impl ScheduledOutcome {
    /// Metrics: `ettr`, `wall`, `useful`, `false_alarms`, and per fault `i` (schedule order)
    /// `fault.{i}.detected`, `fault.{i}.detect_s` (when detected), `fault.{i}.restart_s`, `fault.{i}.lost_steps`
    /// and `fault.{i}.localised` (where known). Every backend uses these names.
    pub fn metrics(&self) -> Vec<Metric> {
        let mut out = vec![
            self.ettr.metric("ettr".into(), Unit::Ratio),
            self.wall_s.metric("wall".into(), Unit::Seconds),
            self.useful_s.metric("useful".into(), Unit::Seconds),
            self.false_alarms.metric("false_alarms".into(), Unit::Count),
        ];
        for (i, f) in self.faults.iter().enumerate() {
            out.push(f.detected.metric(format!("fault.{i}.detected"), Unit::Ratio));
            if let Some(d) = &f.detect_s {
                out.push(d.metric(format!("fault.{i}.detect_s"), Unit::Seconds));
            }
            out.push(f.restart_s.metric(format!("fault.{i}.restart_s"), Unit::Seconds));
            out.push(f.lost_steps.metric(format!("fault.{i}.lost_steps"), Unit::Count));
            if let Some(l) = &f.localised {
                out.push(l.metric(format!("fault.{i}.localised"), Unit::Ratio));
            }
        }
        out
    }
}

impl DetectionSpec {
    /// Checks every timing parameter; `path` prefixes the field names (`workload.detection`).
    pub fn validate_at(&self, path: &str) -> Result<(), Error> {
        for (name, v) in [
            ("crash_detect_s", self.crash_detect_s),
            ("hang_timeout_s", self.hang_timeout_s),
            ("baseline_localise_crash_s", self.baseline_localise_crash_s),
            ("baseline_localise_hang_s", self.baseline_localise_hang_s),
            ("baseline_slow_detect_s", self.baseline_slow_detect_s),
            ("baseline_localise_slow_s", self.baseline_localise_slow_s),
            ("baseline_isolate_s", self.baseline_isolate_s),
            ("c4d_hang_min_s", self.c4d_hang_min_s),
            ("c4d_localise_s", self.c4d_localise_s),
            ("c4d_isolate_s", self.c4d_isolate_s),
        ] {
            check::non_negative_at_most(&format!("{path}.{name}"), v, MAX_SECONDS, CLOCK)?;
        }
        check::in_range(&format!("{path}.jitter_cv"), self.jitter_cv, 0.0, 1.0)?;
        let steps = "the detector replays every step it waits for";
        check::positive_at_most(
            &format!("{path}.c4d_hang_steps"),
            self.c4d_hang_steps,
            MAX_FACTOR,
            steps,
        )?;
        check::positive_at_most(
            &format!("{path}.c4d_slow_threshold"),
            self.c4d_slow_threshold,
            MAX_FACTOR,
            "a lag of a thousand steps is a hang",
        )?;
        check::at_least(&format!("{path}.c4d_window_steps"), u64::from(self.c4d_window_steps), 1)?;
        check::at_most(
            &format!("{path}.c4d_window_steps"),
            u64::from(self.c4d_window_steps),
            MAX_FACTOR as u64,
            steps,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Workload;

    const JOB: &str = r#"{"step_time_s": 0.06, "checkpoint_cost_s": 0.01, "restart_cost_s": 0.5,
        "schedule": {"ranks": 4, "steps": 300, "checkpoint_every_steps": 10, "faults": [
            {"at_step": 40, "rank": 1, "kind": "kill"},
            {"at_step": 120, "rank": 2, "kind": "hang"},
            {"at_step": 200, "rank": 3, "kind": "slow", "slowdown": 1.5}]}}"#;

    fn job() -> TrainingJob {
        serde_json::from_str(JOB).unwrap()
    }

    fn err(j: &TrainingJob) -> String {
        j.validate().unwrap_err().to_string()
    }

    #[test]
    fn a_scheduled_job_parses_and_validates() {
        let j = job();
        j.validate().unwrap();
        let s = j.schedule.as_ref().unwrap();
        assert_eq!(s.slow_give_up_steps, 40);
        assert_eq!(s.faults[2].factor(), 1.5);
        assert_eq!(s.faults[0].factor(), 1.0);
        assert_eq!(FaultSchedule::warmup_steps(&j.detection), 7);
        // Round trip (the scaled job a measured backend reports is serialised by `compare --json`).
        let back: TrainingJob = serde_json::from_str(&serde_json::to_string(&j).unwrap()).unwrap();
        assert_eq!(back, j);
        let unknown = serde_json::from_str::<TrainingJob>(&JOB.replace("\"rank\": 1,", "\"rank\": 1, \"when\": 3,"))
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("when"), "{unknown}");
    }

    #[test]
    fn every_bad_value_names_its_field() {
        type Edit = Box<dyn Fn(&mut TrainingJob)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|j| j.schedule.as_mut().unwrap().faults[1].rank = 4),
                "workload.schedule.faults[1].rank",
            ),
            (
                Box::new(|j| j.schedule.as_mut().unwrap().faults[2].at_step = 300),
                "workload.schedule.faults[2].at_step",
            ),
            (
                Box::new(|j| j.schedule.as_mut().unwrap().faults[0].at_step = 3),
                "workload.schedule.faults[0].at_step",
            ),
            (
                Box::new(|j| j.schedule.as_mut().unwrap().faults[1].at_step = 40),
                "workload.schedule.faults[1].at_step",
            ),
            (
                Box::new(|j| j.schedule.as_mut().unwrap().faults[2].slowdown = Some(0.5)),
                "faults[2].slowdown",
            ),
            (
                Box::new(|j| j.schedule.as_mut().unwrap().faults[2].slowdown = Some(f64::NAN)),
                "faults[2].slowdown",
            ),
            (
                Box::new(|j| j.schedule.as_mut().unwrap().faults[2].slowdown = Some(f64::INFINITY)),
                "faults[2].slowdown",
            ),
            (
                Box::new(|j| j.schedule.as_mut().unwrap().faults[2].slowdown = None),
                "faults[2].slowdown",
            ),
            (
                Box::new(|j| j.schedule.as_mut().unwrap().faults[0].slowdown = Some(2.0)),
                "faults[0].slowdown",
            ),
            (
                Box::new(|j| j.schedule.as_mut().unwrap().ranks = 1),
                "workload.schedule.ranks",
            ),
            (
                Box::new(|j| j.schedule.as_mut().unwrap().steps = 0),
                "workload.schedule.steps",
            ),
            (
                Box::new(|j| j.schedule.as_mut().unwrap().checkpoint_every_steps = 0),
                "checkpoint_every_steps",
            ),
            (Box::new(|j| j.gpus = 1024), "workload.gpus"),
            (Box::new(|j| j.horizon_days = 1.0), "workload.horizon_days"),
            (
                Box::new(|j| j.checkpoint_interval = CheckpointInterval::Seconds(60.0)),
                "workload.checkpoint_interval",
            ),
            (Box::new(|j| j.spare_nodes = Some(2)), "workload.spare_nodes"),
            (Box::new(|j| j.policies = vec![Policy::Baseline]), "workload.policies"),
            (Box::new(|j| j.step_time_s = f64::NAN), "workload.step_time_s"),
            (Box::new(|j| j.restart_cost_s = -1.0), "workload.restart_cost_s"),
            (
                Box::new(|j| j.detection.c4d_hang_steps = 0.0),
                "workload.detection.c4d_hang_steps",
            ),
            (
                Box::new(|j| {
                    j.failures = vec![super::super::FailureSpec {
                        class: super::super::FaultClass::Gpu,
                        kind: super::super::FaultKind::FailStop,
                        rate_per_component_hour: 1e-5,
                        scope: None,
                        weibull_shape: None,
                        slowdown: 1.5,
                    }]
                }),
                "workload.failures",
            ),
        ];
        for (i, (edit, field)) in cases.iter().enumerate() {
            let mut j = job();
            edit(&mut j);
            let e = err(&j);
            assert!(e.contains(field), "case {i}: {e}");
        }
        // gpus equal to the ranks is not a conflict.
        let mut j = job();
        j.gpus = 4;
        j.validate().unwrap();
    }

    #[test]
    fn a_rate_based_job_without_its_fields_says_which() {
        let j: TrainingJob = serde_json::from_str(
            r#"{"gpus": 8, "step_time_s": 1, "horizon_days": 1, "checkpoint_cost_s": 5, "restart_cost_s": 60}"#,
        )
        .unwrap();
        assert!(err(&j).contains("workload.checkpoint_interval"), "{}", err(&j));
        let j: TrainingJob = serde_json::from_str(
            r#"{"gpus": 8, "step_time_s": 1, "checkpoint_interval": 60, "checkpoint_cost_s": 5, "restart_cost_s": 60}"#,
        )
        .unwrap();
        assert!(err(&j).contains("workload.horizon_days"), "{}", err(&j));
    }

    #[test]
    fn metrics_are_named_per_fault() {
        let e = Estimate::exact;
        let o = super::super::TrainingJobOutcome {
            policies: vec![],
            scheduled: Some(ScheduledOutcome {
                ettr: e(0.8),
                wall_s: e(25.0),
                useful_s: e(20.0),
                false_alarms: e(0.0),
                faults: vec![
                    ScheduledFaultOutcome {
                        detected: e(1.0),
                        detect_s: Some(e(0.1)),
                        restart_s: e(0.5),
                        lost_steps: e(3.0),
                        localised: Some(e(1.0)),
                    },
                    ScheduledFaultOutcome {
                        detected: e(0.0),
                        detect_s: None,
                        restart_s: e(0.0),
                        lost_steps: e(0.0),
                        localised: None,
                    },
                ],
            }),
        };
        let names: Vec<String> = crate::Outcome::metrics(&o).into_iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            [
                "ettr",
                "wall",
                "useful",
                "false_alarms",
                "fault.0.detected",
                "fault.0.detect_s",
                "fault.0.restart_s",
                "fault.0.lost_steps",
                "fault.0.localised",
                "fault.1.detected",
                "fault.1.restart_s",
                "fault.1.lost_steps"
            ]
        );
    }
}
