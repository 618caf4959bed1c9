//! End-to-end checks of the real C4D fault-injection run through the `trainlab` binary's hidden `__c4-worker`
//! subcommand (issue 3), and of scheduled jobs answered at every fidelity (issue 9). The 10-minute false-alarm run
//! is ignored by default: `cargo test --test c4d -- --ignored no_false_alarm_in_ten_minutes`.
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use trainlab_core::workloads::TrainingJob;
use trainlab_core::{Backend, Metric, Outcome, RunCtx, Seed, Workload};
use trainlab_executors::faultrun::{self, FaultRun, FaultRunConfig, Injection, ScheduledFault};

/// Held by every test that makes a real run, so that two runs do not compete for the cores (a rank starved by a
/// neighbour is, to the detector, a real straggler).
static REAL_RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cfg(steps: u64, faults: Vec<ScheduledFault>) -> FaultRunConfig {
    let mut c = FaultRunConfig::small(steps, faults);
    c.exe = PathBuf::from(env!("CARGO_BIN_EXE_trainlab"));
    c.worker_prefix = vec!["__c4-worker".to_string()];
    c
}

/// Every injected kill and hang, and slow ranks at 1.5x, are detected and localised; latency is reported.
#[test]
fn detects_kill_hang_and_slow() {
    let c = cfg(
        260,
        vec![
            ScheduledFault {
                at_step: 30,
                rank: 0,
                what: Injection::Kill,
            },
            ScheduledFault {
                at_step: 80,
                rank: 3,
                what: Injection::Hang,
            },
            ScheduledFault {
                at_step: 130,
                rank: 1,
                what: Injection::Slow(1.5),
            },
            ScheduledFault {
                at_step: 190,
                rank: 2,
                what: Injection::Slow(2.0),
            },
        ],
    );
    let _one = REAL_RUN.lock().unwrap_or_else(|e| e.into_inner());
    let r = faultrun::run(&c, &AtomicBool::new(false)).expect("run");
    for x in &r.records {
        eprintln!("{x:?}");
    }
    let injected: Vec<_> = r.records.iter().filter(|x| x.injected.is_some()).collect();
    assert_eq!(injected.len(), 4, "{r:#?}");
    for x in injected {
        assert!(x.localised, "{x:?}");
        let l = x.detection_latency_s.expect("latency");
        assert!(l > 0.0 && l < 10.0, "{x:?}");
    }
    assert_eq!(r.steps_done, 260);
    assert!(r.ettr > 0.0 && r.ettr <= 1.0);
}

/// At least 90% of slow ranks (1.5x) are detected and localised, none named wrongly; their measured slowdown is
/// reported. 20 injections over the four ranks, about 3 minutes.
#[test]
#[ignore = "about 3 minutes; run with: cargo test --release --test c4d -- --ignored slow_detection_rate --nocapture"]
fn slow_detection_rate() {
    let n = 20u64;
    let faults = (0..n)
        .map(|i| ScheduledFault {
            at_step: 20 + 25 * i,
            rank: (i % 4) as usize,
            what: Injection::Slow(1.5),
        })
        .collect();
    let mut c = cfg(20 + 25 * n + 30, faults);
    c.spares = n as usize;
    c.time_limit_s = 900.0;
    let _one = REAL_RUN.lock().unwrap_or_else(|e| e.into_inner());
    let r = faultrun::run(&c, &AtomicBool::new(false)).expect("run");
    let mut latencies = Vec::new();
    let mut slowdowns = Vec::new();
    for x in &r.records {
        eprintln!("{x:?}");
        if let Some(l) = x.detection_latency_s
            && x.localised
        {
            latencies.push(l);
        }
        slowdowns.extend(x.measured_slowdown);
    }
    let detected = latencies.len();
    eprintln!(
        "slow 1.5x: {detected}/{n} detected and localised; median latency {:.2} s; measured slowdown median {:.2} \
         (min {:.2}); false alarms {}",
        trainlab_core::stats::median(&latencies),
        trainlab_core::stats::median(&slowdowns),
        slowdowns.iter().copied().fold(f64::NAN, f64::min),
        r.false_alarms
    );
    assert_eq!(
        r.records.iter().filter(|x| x.injected.is_some()).count() as u64,
        n,
        "{r:#?}"
    );
    assert!(detected as f64 >= 0.9 * n as f64, "{detected}/{n} detected");
    assert!(
        r.records.iter().all(|x| x.detection_latency_s.is_none() || x.localised),
        "a wrong rank was named"
    );
    assert!(
        slowdowns.len() as u64 >= n / 2 && slowdowns[slowdowns.len() / 2] >= 1.35,
        "{slowdowns:?}"
    );
}

/// No verdict in 10 minutes of fault-free training.
#[test]
#[ignore = "10 minutes; run with: cargo test --test c4d -- --ignored no_false_alarm_in_ten_minutes"]
fn no_false_alarm_in_ten_minutes() {
    let mut c = cfg(u64::MAX / 2, vec![]);
    c.time_limit_s = 600.0;
    let _one = REAL_RUN.lock().unwrap_or_else(|e| e.into_inner());
    let r = faultrun::run(&c, &AtomicBool::new(false)).expect("run");
    assert_eq!(r.false_alarms, 0, "{r:#?}");
    assert!(r.wall_s >= 590.0);
}

fn scenario(name: &str) -> TrainingJob {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"));
    trainlab_datasets::scenario::load_file(&path)
        .and_then(|s| s.workload::<TrainingJob>())
        .expect("shipped scenario")
}

fn metrics(b: &mut dyn Backend<TrainingJob>, job: &TrainingJob) -> Vec<Metric> {
    b.run(job, &mut RunCtx::new(Seed(7))).expect("backend runs").metrics()
}

fn value(ms: &[Metric], name: &str) -> f64 {
    ms.iter().find(|m| m.name == name).map(|m| m.value).unwrap_or(f64::NAN)
}

/// The shipped schedule runs for real exactly as written and is predicted by the closed form and the Monte Carlo
/// replay with the same metric names, fault by fault; kill and hang are detected and localised.
#[test]
fn scheduled_scenario_at_every_fidelity() {
    let job = scenario("c4-schedule-small");
    let mut m = FaultRun::new(Some(PathBuf::from(env!("CARGO_BIN_EXE_trainlab"))));
    assert_eq!(m.answers(&job).unwrap(), None, "runs the scheduled job as written");
    let measured = {
        let _one = REAL_RUN.lock().unwrap_or_else(|e| e.into_inner());
        metrics(&mut m, &job)
    };
    let analytical = metrics(&mut trainlab_models::reliability::ReliabilityModel::default(), &job);
    let simulated = metrics(&mut trainlab_sim::failures::FailureSim::default(), &job);
    eprintln!("{:<22} {:>10} {:>10} {:>10}", "metric", "measured", "young-daly", "des");
    for a in &analytical {
        eprintln!(
            "{:<22} {:>10.3} {:>10.3} {:>10.3}",
            a.name,
            value(&measured, &a.name),
            a.value,
            value(&simulated, &a.name)
        );
        // A latency exists only for a detected fault: on a loaded machine the 1.5x straggler can be missed.
        let fault = a.name.strip_prefix("fault.").and_then(|r| r.split('.').next());
        if fault.is_none_or(|i| value(&measured, &format!("fault.{i}.detected")) > 0.0) {
            assert!(
                value(&measured, &a.name).is_finite(),
                "{} missing from the real run",
                a.name
            );
        }
        assert!(
            value(&simulated, &a.name).is_finite(),
            "{} missing from the replay",
            a.name
        );
    }
    for i in 0..2 {
        assert_eq!(value(&measured, &format!("fault.{i}.detected")), 1.0, "{measured:?}");
        assert_eq!(value(&measured, &format!("fault.{i}.localised")), 1.0, "{measured:?}");
    }
    let ettr = value(&measured, "ettr");
    assert!(ettr > 0.3 && ettr <= 1.0, "{ettr}");
}

/// The production job is not what the real run runs: the measured backend says which scaled job it answers, and
/// the analytical and simulated backends answer that one too.
#[test]
fn production_job_is_scaled_down_honestly() {
    let job = scenario("c4-production");
    let scaled = FaultRun::new(None).answers(&job).unwrap().expect("a scaled job");
    scaled.validate().unwrap();
    let s = scaled.schedule.as_ref().unwrap();
    assert_eq!((s.ranks, s.steps), (4, 200));
    assert_eq!(s.faults.len(), 3, "one fault per kind of the failure model: {s:?}");
    let a = metrics(&mut trainlab_models::reliability::ReliabilityModel::default(), &scaled);
    let d = metrics(&mut trainlab_sim::failures::FailureSim::default(), &scaled);
    let names = |ms: &[Metric]| {
        ms.iter()
            .map(|m| m.name.clone())
            .filter(|n| !n.ends_with("localised"))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), names(&d));
    assert!(
        a.iter().all(|m| !m.name.starts_with("c4d.")),
        "scaled answers are not production answers"
    );
}

/// A bad schedule file exits 2 and names the field; so does a scenario without a schedule.
#[test]
fn bad_schedule_files_exit_2_with_the_field() {
    let dir = std::env::temp_dir().join(format!("trainlab-c4d-sched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let head = "ranks = 4\nsteps = 100\ncheckpoint_every_steps = 10\n";
    let cases = [
        (
            "rank",
            format!("{head}[[faults]]\nat_step = 20\nrank = 4\nkind = \"kill\"\n"),
            "schedule.faults[0].rank",
        ),
        (
            "slowdown",
            format!("{head}[[faults]]\nat_step = 20\nrank = 1\nkind = \"slow\"\nslowdown = 0.5\n"),
            "schedule.faults[0].slowdown",
        ),
        (
            "step",
            format!("{head}[[faults]]\nat_step = 100\nrank = 1\nkind = \"hang\"\n"),
            "schedule.faults[0].at_step",
        ),
        (
            "unknown",
            format!("{head}[[faults]]\nat_step = 20\nrank = 1\nkind = \"kill\"\nwhen = 3\n"),
            "when",
        ),
        (
            "kind",
            format!("{head}[[faults]]\nat_step = 20\nrank = 1\nkind = \"melt\"\n"),
            "schedule.faults[0].kind",
        ),
        (
            "missing",
            "ranks = 4\nsteps = 100\n".to_string(),
            "checkpoint_every_steps",
        ),
    ];
    for (tag, text, needle) in cases {
        let f = dir.join(format!("{tag}.toml"));
        std::fs::write(&f, text).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_trainlab"))
            .args(["c4-run", "--schedule"])
            .arg(&f)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{tag}: {e}");
        assert!(e.contains(needle), "{tag}: expected `{needle}` in {e}");
        assert!(!e.contains("panicked"), "{e}");
    }
    let prod = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/c4-production.toml");
    let o = Command::new(env!("CARGO_BIN_EXE_trainlab"))
        .args(["c4-run", "--schedule"])
        .arg(&prod)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("workload.schedule"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
