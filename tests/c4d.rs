//! End-to-end checks of the real C4D fault-injection run through the `trainlab` binary's hidden `__c4-worker`
//! subcommand (issue 3). The 10-minute false-alarm run is ignored by default:
//! `cargo test --test c4d -- --ignored no_false_alarm_in_ten_minutes`.
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use trainlab_executors::faultrun::{self, FaultRunConfig, Injection, ScheduledFault};

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
    latencies.sort_by(f64::total_cmp);
    slowdowns.sort_by(f64::total_cmp);
    eprintln!(
        "slow 1.5x: {detected}/{n} detected and localised; median latency {:.2} s; measured slowdown median {:.2} \
         (min {:.2}); false alarms {}",
        latencies.get(latencies.len() / 2).copied().unwrap_or(f64::NAN),
        slowdowns.get(slowdowns.len() / 2).copied().unwrap_or(f64::NAN),
        slowdowns.first().copied().unwrap_or(f64::NAN),
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
    let r = faultrun::run(&c, &AtomicBool::new(false)).expect("run");
    assert_eq!(r.false_alarms, 0, "{r:#?}");
    assert!(r.wall_s >= 590.0);
}
