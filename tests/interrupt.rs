//! The first Ctrl-C (SIGINT) is honoured by the long subcommands: each stops within a second (at its next unit of
//! work: a run, a start, a case, a timed sample), keeps what it has marked partial, and exits 130. The binary is
//! started, interrupted once it is well into its work, and its exit code, stop latency and output are checked.
#![cfg(unix)]
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The longest a command may take to exit after the first Ctrl-C (issue 16).
const STOP: Duration = Duration::from_secs(1);

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("trainlab-int-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts `trainlab ARGS`, waits `after`, sends one SIGINT, and waits (at most `limit`) for the exit.
fn interrupt(args: &[&str], after: Duration, limit: Duration) -> (Output, Duration) {
    signal("-INT", args, after, limit)
}

/// [`interrupt`] with the signal `sig` (a `kill` option: `-INT`, `-TERM`).
fn signal(sig: &str, args: &[&str], after: Duration, limit: Duration) -> (Output, Duration) {
    let child: Child = Command::new(env!("CARGO_BIN_EXE_trainlab"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trainlab");
    std::thread::sleep(after);
    let sent = Instant::now();
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{args:?}: still running {limit:?} after Ctrl-C"))
        .expect("wait");
    let took = sent.elapsed();
    eprintln!("{}: stopped {took:?} after {sig}", args[0]);
    (out, took)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn execute_dcpt_keeps_finished_runs_on_ctrl_c() {
    let out = tmpdir("dcpt");
    let o = out.display().to_string();
    // 3 sizes x 11 ratios of runs of 2M tokens (about a second each in the test profile): some finish before the
    // interrupt, most do not.
    let args = [
        "execute-dcpt",
        "--hidden",
        "4,8,16",
        "--ratios",
        "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
        "--holdout",
        "0.5",
        "--pretrain-tokens",
        "2000",
        "--cpt-tokens",
        "2000000",
        "--evals",
        "4",
        "--out",
        &o,
    ];
    let (r, took) = interrupt(&args, Duration::from_secs(6), Duration::from_secs(60));
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(130), "{err}");
    assert!(took < STOP, "took {took:?} to stop");
    let csv = std::fs::read_to_string(Path::new(&out).join("runs.csv")).expect("runs.csv written on interrupt");
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert!(rows.len() < 33 * 4, "the grid was not interrupted: {} rows", rows.len());
    // Only whole runs are kept: every (N, r) present has all 4 evaluation points.
    let mut runs = std::collections::BTreeMap::new();
    for row in &rows {
        let cells: Vec<&str> = row.split(',').collect();
        *runs.entry((cells[0].to_string(), cells[2].to_string())).or_insert(0) += 1;
    }
    assert!(runs.values().all(|&n| n == 4), "partial runs kept: {runs:?}");
    assert!(err.contains("runs finished"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn fit_keeps_its_best_start_on_ctrl_c() {
    let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/calibration/dcpt-cpu/runs.csv");
    let out = tmpdir("fit");
    let c = csv.display().to_string();
    let o = out.display().to_string();
    // 4,500 starts per loss and 2,000 bootstrap replicates: minutes of work, interrupted after 3 s.
    let args = ["fit", "dcpt", &c, "--bootstrap", "2000", "--json", "--out", &o];
    let (r, took) = interrupt(&args, Duration::from_secs(3), Duration::from_secs(60));
    let err = text(&r.stderr);
    assert!(took < STOP, "took {took:?} to stop");
    assert_eq!(r.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    // Whatever was fitted is printed and written.
    if out.join("fit.json").exists() {
        let v: serde_json::Value = serde_json::from_slice(&r.stdout).expect("a JSON report on stdout");
        assert!(!v["fits"].as_array().unwrap().is_empty());
    }
}

/// A study of 24 M/M/1 simulations of a million customers each (about half a second apiece in the test profile).
fn slow_study(dir: &Path) -> String {
    let p = dir.join("slow-study.toml");
    std::fs::write(
        &p,
        "name = \"slow-study\"\nkind = \"study\"\ndescription = \"24 long M/M/1 simulations\"\nseed = 3\n\
         [study]\nbase = \"mm1\"\nbackends = [\"des\"]\nreplicas = 24\n[study.grid]\ncustomers = [1000000]\n",
    )
    .unwrap();
    p.display().to_string()
}

/// Waits (at most 60 s, polling every 100 ms) until the run description `side` (`run.json` or a shard's `.json`)
/// names at least `n` finished cases; returns how many it names.
fn wait_for_checkpoint(side: &Path, n: usize) -> usize {
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let done = std::fs::read_to_string(side)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .map_or(0, |v| v["done"].as_array().map_or(0, Vec::len));
        if done >= n || started.elapsed() > Duration::from_secs(60) {
            return done;
        }
    }
}

/// The records of a resumed run are byte for byte those of the one-process run.
fn assert_same_records(full: &Path, part: &Path) {
    for f in ["records.csv", "records.parquet"] {
        assert_eq!(
            std::fs::read(full.join(f)).unwrap(),
            std::fs::read(part.join(f)).unwrap(),
            "{f} of the resumed run differs from the one-process run"
        );
    }
}

#[test]
fn plan_keeps_finished_cases_on_ctrl_c_and_resumes_to_the_one_process_answer() {
    let dir = tmpdir("plan");
    let study = slow_study(&dir);
    let (full, part) = (dir.join("full"), dir.join("part"));
    let o = Command::new(env!("CARGO_BIN_EXE_trainlab"))
        .args(["plan", &study, "--json", "--out"])
        .arg(&full)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let p = part.display().to_string();
    let (r, took) = interrupt(
        &["plan", &study, "--out", &p],
        Duration::from_millis(2500),
        Duration::from_secs(60),
    );
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(130), "{err}");
    // Cases in flight stop at their next event batch, none starts after the signal.
    assert!(took < STOP, "took {took:?} to stop");
    assert!(err.contains("--resume"), "{err}");
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(part.join("run.json")).expect("run.json on interrupt")).unwrap();
    let done = run["done"].as_array().unwrap().len();
    assert!(done < 24, "nothing was interrupted: {done} of 24 done");
    let html = std::fs::read_to_string(part.join("report.html")).unwrap();
    assert!(html.contains("PARTIAL RESULTS"), "the partial report is not marked");
    // Resuming runs the rest and ends with the bytes of the one-process run.
    let o = Command::new(env!("CARGO_BIN_EXE_trainlab"))
        .args(["plan", &study, "--json", "--resume", &p])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["cases"].as_array().unwrap().len(),
        24 - done,
        "resume reran finished cases"
    );
    assert_same_records(&full, &part);
    assert!(
        !std::fs::read_to_string(part.join("report.html"))
            .unwrap()
            .contains("PARTIAL RESULTS")
    );
    // Another study (here: another seed) does not resume this folder.
    let o = Command::new(env!("CARGO_BIN_EXE_trainlab"))
        .args(["plan", &study, "--seed", "9", "--resume", &p])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("different content"), "{}", text(&o.stderr));
}

/// A run killed without warning (SIGKILL: no handler runs) keeps the cases of its last checkpoint, and `--resume`
/// ends with the bytes of the one-process run.
#[test]
fn plan_killed_without_warning_resumes_from_its_last_checkpoint() {
    let dir = tmpdir("plan-kill");
    let study = slow_study(&dir);
    let (full, part) = (dir.join("full"), dir.join("part"));
    let o = Command::new(env!("CARGO_BIN_EXE_trainlab"))
        .args(["plan", &study, "--out"])
        .arg(&full)
        .env("TRAINLAB_CHECKPOINT_SECS", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let p = part.display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_trainlab"))
        .args(["plan", &study, "--out", &p])
        .env("TRAINLAB_CHECKPOINT_SECS", "0.2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // kill it once a checkpoint names a few cases, before the end
    let done = wait_for_checkpoint(&part.join("run.json"), 3);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        (3..24).contains(&done),
        "checkpointed {done} of 24 cases before the kill"
    );
    assert!(
        !part.join("report.html").exists(),
        "the run was not killed before its end"
    );
    // A kill between a checkpoint's records and its run.json: run.json names one case fewer than the records hold.
    let side = part.join("run.json");
    let mut run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&side).unwrap()).unwrap();
    let (named, records) = (run["done"].as_array().unwrap().len(), run["records"].as_u64().unwrap());
    run["done"].as_array_mut().unwrap().pop();
    run["records"] = serde_json::json!(records - records / named as u64);
    std::fs::write(&side, serde_json::to_string(&run).unwrap()).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_trainlab"))
        .args(["plan", &study, "--json", "--resume", &p])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rerun = v["cases"].as_array().unwrap().len();
    assert_eq!(
        rerun,
        24 - (named - 1),
        "resume runs exactly the cases run.json does not name"
    );
    assert_same_records(&full, &part);
}

/// A shard killed without warning (a preempted or lost Slurm task) keeps the cases of its last checkpoint: the same
/// command run again (a requeued task) runs only the rest and ends with the bytes of an uninterrupted shard; a shard
/// of another study in that folder is not resumed.
#[test]
fn shard_killed_without_warning_resumes_when_run_again() {
    let dir = tmpdir("shard-kill");
    let study = slow_study(&dir);
    let (full, part) = (dir.join("full"), dir.join("part"));
    let shard = |out: &Path, secs: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_trainlab"));
        c.args(["plan", &study, "--shard", "1/2", "--json", "--out"])
            .arg(out)
            .env("TRAINLAB_CHECKPOINT_SECS", secs);
        c
    };
    let o = shard(&full, "0").output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let side = part.join("records-shard-1-of-2.json");
    let mut child = shard(&part, "0.2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let done = wait_for_checkpoint(&side, 3);
    child.kill().unwrap();
    child.wait().unwrap();
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&side).unwrap()).unwrap();
    assert!(
        (3..12).contains(&done),
        "checkpointed {done} of the shard's 12 cases before the kill"
    );
    assert_eq!(
        info["complete"],
        serde_json::json!(false),
        "the shard was not killed before its end"
    );
    // Run again: only the rest runs, and the shard's records are those of the uninterrupted shard.
    let o = shard(&part, "0").output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("keeping its"), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["cases"].as_array().unwrap().len(),
        12 - done,
        "the re-run ran finished cases"
    );
    for f in [
        "records-shard-1-of-2.csv",
        "records-shard-1-of-2.parquet",
        "records-shard-1-of-2.json",
    ] {
        assert_eq!(
            std::fs::read(full.join(f)).unwrap(),
            std::fs::read(part.join(f)).unwrap(),
            "{f} of the resumed shard differs from the uninterrupted shard"
        );
    }
    // A complete shard, or one of another study (here: another seed), runs whole.
    let mut info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&side).unwrap()).unwrap();
    info["complete"] = serde_json::json!(false);
    std::fs::write(&side, serde_json::to_string(&info).unwrap()).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_trainlab"))
        .args(["plan", &study, "--seed", "9", "--shard", "1/2", "--json", "--out"])
        .arg(&part)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["cases"].as_array().unwrap().len(),
        12,
        "a shard of another study was resumed"
    );
}

/// SIGTERM (what Slurm sends a task it cancels, requeues or times out) is honoured like Ctrl-C: a shard stops
/// within a second, saves its finished cases marked incomplete, `merge` refuses it saying how to finish it, and the
/// same command finishes it (running only the rest), after which the merge goes through.
#[test]
fn shard_stops_on_sigterm_and_finishes_when_run_again() {
    let dir = tmpdir("shard-term");
    let study = slow_study(&dir);
    let p = dir.join("part").display().to_string();
    let (r, took) = signal(
        "-TERM",
        &["plan", &study, "--shard", "0/2", "--out", &p],
        Duration::from_millis(1500),
        Duration::from_secs(60),
    );
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(130), "{err}");
    assert!(took < STOP, "took {took:?} to stop");
    assert!(err.contains("run the same command again"), "{err}");
    let side = dir.join("part/records-shard-0-of-2.json");
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&side).unwrap()).unwrap();
    let done = info["done"].as_array().unwrap().len();
    assert_eq!(info["complete"], serde_json::json!(false), "{info}");
    assert!(done < 12, "nothing was interrupted: {done} of 12");
    // With the other shard done, `merge` refuses the interrupted one and says how to finish it.
    let merge = || {
        Command::new(env!("CARGO_BIN_EXE_trainlab"))
            .args(["merge", &p])
            .output()
            .unwrap()
    };
    let o = Command::new(env!("CARGO_BIN_EXE_trainlab"))
        .args(["plan", &study, "--shard", "1/2", "--out", &p])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = merge();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("--shard 0/2 --out"), "{}", text(&o.stderr));
    let o = Command::new(env!("CARGO_BIN_EXE_trainlab"))
        .args(["plan", &study, "--shard", "0/2", "--json", "--out", &p])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["cases"].as_array().unwrap().len(), 12 - done);
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&side).unwrap()).unwrap();
    assert_eq!(info["complete"], serde_json::json!(true), "{info}");
    let o = merge();
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn c4_run_stops_its_workers_on_ctrl_c() {
    // 4 worker processes, 300 steps of 60 ms with a kill, a hang and a slow rank: about 40 s; interrupted after 4 s.
    let (r, took) = interrupt(&["c4-run", "--json"], Duration::from_secs(4), Duration::from_secs(60));
    let err = text(&r.stderr);
    assert!(
        matches!(r.status.code(), Some(130)),
        "exit {:?}: {err}",
        r.status.code()
    );
    assert!(took < STOP, "took {took:?} to stop");
    assert!(!err.contains("panicked"), "{err}");
    // The steps done so far, as JSON, marked interrupted.
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).expect("a JSON report on stdout");
    assert_eq!(v["interrupted"], true, "{v}");
    assert!(v["steps_done"].as_u64().is_some_and(|s| s < 300), "{v}");
    // No worker outlives the run.
    std::thread::sleep(Duration::from_millis(500));
    let ps = Command::new("pgrep").args(["-f", "__c4-worker"]).output().unwrap();
    assert!(ps.stdout.is_empty(), "workers left running: {}", text(&ps.stdout));
}

#[test]
fn calibrate_stops_on_ctrl_c_without_a_half_profile() {
    // The device calibration measures GEMM sweeps and triad for tens of seconds; interrupted after 3 s it exits 130,
    // keeps the sizes it timed in a file marked partial, and writes no profile: a profile fitted to part of a sweep
    // would mislead every later prediction.
    let out = tmpdir("calibrate");
    let o = out.display().to_string();
    let (r, took) = interrupt(
        &["calibrate", "--workload", "gemm", "--json", "--out", &o],
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(130), "{err}");
    assert!(took < STOP, "took {took:?} to stop");
    assert!(!err.contains("panicked"), "{err}");
    let profiles: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("profile-"))
        .collect();
    assert!(profiles.is_empty(), "a profile was written on interrupt");
    let kept = std::fs::read_to_string(out.join("partial-calibration-device-cpu.csv")).expect("partial measurements");
    assert!(kept.lines().count() >= 2, "no measurement kept: {kept}");
    assert!(kept.contains("triad"), "{kept}");
    assert!(err.contains("marked partial"), "{err}");
}

#[test]
fn moe_calibration_keeps_the_layers_it_timed_on_ctrl_c() {
    let out = tmpdir("calibrate-moe");
    let o = out.display().to_string();
    let (r, took) = interrupt(
        &["calibrate", "--workload", "moe_layer", "--out", &o],
        Duration::from_secs(4),
        Duration::from_secs(60),
    );
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(130), "{err}");
    assert!(took < STOP, "took {took:?} to stop");
    assert!(!out.join("profile-moe_layer-cpu.toml").exists());
    let kept = std::fs::read_to_string(out.join("partial-calibration-moe_layer-cpu.csv")).expect("partial layers");
    assert!(kept.contains("step_time"), "{kept}");
}

#[test]
fn moe_quality_prints_the_configurations_it_finished_on_ctrl_c() {
    let (r, took) = interrupt(&["moe", "quality"], Duration::from_secs(4), Duration::from_secs(60));
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(130), "{err}");
    assert!(took < STOP, "took {took:?} to stop");
    let all = format!("{}{err}", text(&r.stdout));
    assert!(all.contains("configurations finished"), "{all}");
}

#[test]
fn a_long_simulation_stops_on_ctrl_c_and_marks_what_it_did_not_finish() {
    // The Llama 3 failure model: Monte Carlo replications of a 54-day job and a real 4-process fault run, about a
    // minute in all; interrupted after 4 s.
    let (r, took) = interrupt(
        &["compare", "llama3-405b"],
        Duration::from_secs(4),
        Duration::from_secs(60),
    );
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(130), "{err}");
    assert!(took < STOP, "took {took:?} to stop");
    assert!(text(&r.stdout).contains("interrupted"), "{}", text(&r.stdout));
}

#[test]
fn a_long_plan_says_how_long_it_will_take() {
    // 2,000 simulations of about half a second each: minutes even on a fast machine; interrupted after 5 s.
    let dir = tmpdir("plan-long");
    let body = std::fs::read_to_string(slow_study(&dir))
        .unwrap()
        .replace("replicas = 24", "replicas = 2000");
    let study = dir.join("long-study.toml");
    std::fs::write(&study, body).unwrap();
    let out = dir.join("out").display().to_string();
    let s = study.display().to_string();
    let (r, _) = interrupt(
        &["plan", &s, "--out", &out],
        Duration::from_secs(5),
        Duration::from_secs(60),
    );
    let err = text(&r.stderr);
    assert_eq!(r.status.code(), Some(130), "{err}");
    assert!(err.contains("more minutes") && err.contains("--resume"), "{err}");
}
