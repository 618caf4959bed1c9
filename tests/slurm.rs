//! `plan --emit slurm` on a real Slurm: `scripts/slurm-test.sh run` starts a private single-node cluster (munged,
//! slurmctld, slurmd on loopback; installed from Debian packages as root when absent), the emitted `submit.sh`
//! runs the study as an array job and then its merge job, and the merged tables must be byte-identical to a
//! one-process run. Without root or the packages the script exits 77 and the test is skipped with its reason,
//! unless `TRAINLAB_SLURM_REQUIRED` is set (`.ci/run` sets it as root), where a skip fails.
mod common;
use common::{bin, run, stderr, tmpdir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SHARDS: usize = 4;

/// A `collective` study of 36 cases (6 rank counts x 6 message sizes): fast, and more cases than shards.
fn study(dir: &Path) -> PathBuf {
    let p = dir.join("slurm-study.toml");
    std::fs::write(
        &p,
        "name = \"slurm-array-test\"\nkind = \"study\"\nseed = 21\n[study]\nbase = \"allreduce-h100\"\n\
         [study.grid]\nranks = [2, 4, 8, 16, 32, 64]\n\
         bytes = [1024, 65536, 1048576, 16777216, 268435456, 1073741824]\n",
    )
    .unwrap();
    p
}

/// Runs the study `s` in one process into `d/one` and emits its Slurm array of `shards` tasks into `d/array`.
fn one_process_and_emitted(d: &Path, s: &Path, shards: usize) -> (PathBuf, PathBuf) {
    let one = d.join("one");
    let o = run(bin().arg("plan").arg(s).arg("--out").arg(&one));
    assert!(o.status.success(), "{}", stderr(&o));
    let arr = d.join("array");
    let o = run(bin()
        .arg("plan")
        .arg(s)
        .args(["--emit", "slurm", "--shards", &shards.to_string(), "--out"])
        .arg(&arr));
    assert!(o.status.success(), "{}", stderr(&o));
    (one, arr)
}

/// Whether `scripts/slurm-test.sh` said it cannot run here (exit 77): the test is then skipped with the reason,
/// unless `TRAINLAB_SLURM_REQUIRED` is set, where it fails.
fn skipped(o: &std::process::Output) -> bool {
    if o.status.code() != Some(77) {
        return false;
    }
    let err = stderr(o);
    let reason = err.lines().find(|l| l.contains("cannot run here")).unwrap_or(&err);
    assert!(
        std::env::var_os("TRAINLAB_SLURM_REQUIRED").is_none(),
        "TRAINLAB_SLURM_REQUIRED is set but Slurm is unavailable: {reason}"
    );
    eprintln!("skipped: {reason}");
    true
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn emit_checks_its_arguments_and_runs_nothing() {
    let d = tmpdir("slurm-emit");
    let s = study(&d);
    let s = s.to_str().unwrap();
    for (args, why) in [
        (vec!["--shards", "0"], "zero shards"),
        (vec!["--shards", "37"], "more shards than cases"),
        (vec!["--shards", "-1"], "a negative count"),
        (vec!["--shards", "2", "--shard", "0/2"], "--emit with --shard"),
    ] {
        let o = run(bin()
            .args(["plan", s, "--emit", "slurm", "--out"])
            .arg(d.join("x"))
            .args(&args));
        assert_eq!(o.status.code(), Some(2), "{why}: {}", stderr(&o));
    }
    let o = run(bin().args(["plan", s, "--shards", "2", "--out"]).arg(d.join("y")));
    assert_eq!(o.status.code(), Some(2), "--shards without --emit: {}", stderr(&o));
    let o = run(bin()
        .args(["plan", s, "--emit", "slurm", "--out"])
        .arg(d.join("x"))
        .arg("--json"));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["cases"], 36);
    assert_eq!(v["shards"], 16, "default: one shard per case, at most 16");
    let plan = std::fs::read_to_string(d.join("x/slurm/plan.sbatch")).unwrap();
    assert!(plan.contains("#SBATCH --array=0-15\n"), "{plan}");
    // Absolute paths of the binary and the study: the tasks may start in any folder.
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_trainlab")).unwrap();
    assert!(plan.contains(&format!("exec '{}' plan '{s}'", exe.display())), "{plan}");
    // Nothing ran: no records in the output folder.
    let names: Vec<String> = std::fs::read_dir(d.join("x"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["slurm"]);
}

#[test]
fn array_job_then_merge_equals_one_process_run() {
    let t0 = Instant::now();
    let d = tmpdir("slurm-array");
    let s = study(&d);
    let (one, arr) = one_process_and_emitted(&d, &s, SHARDS);
    assert!(!arr.join("records.csv").exists(), "--emit ran the study");

    // The cluster lives as long as the command it runs: the array, then the merge after it (`--wait`).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-test.sh");
    let o = Command::new("bash")
        .arg(&script)
        .args(["run", "--"])
        .arg(arr.join("slurm/submit.sh"))
        .arg("--wait")
        .env("SLURM_TEST_TIMEOUT", "300")
        .output()
        .expect("spawn bash scripts/slurm-test.sh");
    let err = stderr(&o);
    if skipped(&o) {
        return;
    }
    let logs = |prefix: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(arr.join("slurm/logs"))
            .map(|rd| rd.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.retain(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix));
        v.sort();
        v
    };
    let task_logs: String = logs("")
        .iter()
        .map(|p| format!("--- {}\n{}", p.display(), String::from_utf8_lossy(&read(p))))
        .collect();
    assert!(
        o.status.success(),
        "slurm-test.sh run: {:?}\nstdout:\n{}\nstderr:\n{err}\njob logs:\n{task_logs}",
        o.status,
        String::from_utf8_lossy(&o.stdout)
    );
    // Slurm ran every array task and the merge job.
    assert_eq!(logs("plan-").len(), SHARDS, "{task_logs}");
    assert_eq!(logs("merge-").len(), 1, "{task_logs}");
    for i in 0..SHARDS {
        assert!(arr.join(format!("records-shard-{i}-of-{SHARDS}.parquet")).exists());
    }

    // The merge job's tables, and a `trainlab merge` run here, both equal the one-process run byte for byte
    // (Parquet included: its writer puts no timestamp in the file).
    let again = d.join("merged-here");
    let o = run(bin().arg("merge").arg(&arr).arg("--out").arg(&again));
    assert!(o.status.success(), "{}", stderr(&o));
    for dir in [&arr, &again] {
        for f in ["records.csv", "records.parquet"] {
            assert!(
                read(&one.join(f)) == read(&dir.join(f)),
                "{} differs from the one-process run's",
                dir.join(f).display()
            );
        }
    }
    let rows = String::from_utf8_lossy(&read(&one.join("records.csv"))).lines().count() - 1;
    eprintln!(
        "slurm: 36 cases as {SHARDS} array tasks + merge job: records.csv ({rows} records) and records.parquet \
         byte-identical to one process; {:.1} s in all",
        t0.elapsed().as_secs_f64()
    );
}

/// The driver of the requeue test, run inside the private cluster: submits the array of `$1/slurm/plan.sbatch` with
/// checkpoints every 0.2 s, waits for the file `$2` (the test writes it once task 1 has saved a few cases), requeues
/// task 1 while it runs, and waits until no task of the array is queued or running.
const REQUEUE_DRIVER: &str = r#"#!/bin/bash
set -euo pipefail
arr=$1
go=$2
export TRAINLAB_CHECKPOINT_SECS=0.2
jid=$(sbatch --parsable "$arr/slurm/plan.sbatch")
jid=${jid%%;*}
for _ in $(seq 1200); do [[ -f $go ]] && break; sleep 0.05; done
[[ -f $go ]] || { echo "driver: the test never said when to requeue" >&2; exit 1; }
scontrol requeue "${jid}_1"
echo "driver: requeued ${jid}_1" >&2
# Slurm holds a requeued job back for a while (its begin time moves about two minutes on); make it eligible now.
for _ in $(seq 100); do
    [[ $(squeue -h -j "${jid}_1" -o %t 2>/dev/null) == PD ]] && break
    sleep 0.1
done
scontrol update JobId="${jid}_1" StartTime=now >&2 || true
for _ in $(seq 2400); do
    [[ -z $(squeue -h -j "$jid" -o %i 2>/dev/null) ]] && exit 0
    sleep 0.1
done
echo "driver: the array is still queued after 240 s" >&2
squeue >&2 || true
exit 1
"#;

/// A task of the emitted array killed by Slurm mid-shard and put back in the queue (`scontrol requeue`, as on
/// preemption or a failed node: the emitted script is `--requeue`) resumes its shard: the second start keeps the
/// cases the first one saved, and the merged tables equal a one-process run's byte for byte.
#[test]
fn a_requeued_array_task_resumes_its_shard() {
    let d = tmpdir("slurm-requeue");
    // 20 M/M/1 simulations of a million customers (about half a second each): a shard of 10 runs for seconds.
    let s = d.join("requeue-study.toml");
    std::fs::write(
        &s,
        "name = \"slurm-requeue-test\"\nkind = \"study\"\nseed = 5\n[study]\nbase = \"mm1\"\nbackends = [\"des\"]\n\
         replicas = 20\n[study.grid]\ncustomers = [1000000]\n",
    )
    .unwrap();
    let (one, arr) = one_process_and_emitted(&d, &s, 2);
    let driver = d.join("driver.sh");
    std::fs::write(&driver, REQUEUE_DRIVER).unwrap();
    let go = d.join("go");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-test.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .args(["run", "--", "bash"])
        .arg(&driver)
        .arg(&arr)
        .arg(&go)
        .env("SLURM_TEST_TIMEOUT", "400")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bash scripts/slurm-test.sh");
    // Watch task 1's checkpoints; once it has saved a few cases (and is not done), say "requeue now".
    let side = arr.join("records-shard-1-of-2.json");
    let started = Instant::now();
    let mut saved = 0;
    while started.elapsed() < Duration::from_secs(420) {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        let v = std::fs::read_to_string(&side)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        if let Some(v) = v {
            let n = v["done"].as_array().map_or(0, Vec::len);
            if v["complete"] == serde_json::json!(false) && n >= 2 {
                saved = n;
                std::fs::write(&go, "").unwrap();
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().expect("wait for slurm-test.sh");
    let err = stderr(&o);
    if skipped(&o) {
        return;
    }
    let log1 = std::fs::read_dir(arr.join("slurm/logs"))
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().ends_with("_1.out"))
                .map(|p| String::from_utf8_lossy(&read(&p)).to_string())
                .collect::<String>()
        })
        .unwrap_or_default();
    assert!(
        o.status.success(),
        "slurm-test.sh run: {:?}\nstderr:\n{err}\ntask 1 log:\n{log1}",
        o.status
    );
    assert!(
        (2..10).contains(&saved),
        "task 1 saved {saved} of its 10 cases before the requeue"
    );
    assert!(err.contains("requeued"), "{err}");
    // The second start of task 1 (its log appended to the first's) kept the cases the first one saved.
    assert!(log1.contains("keeping its"), "task 1 did not resume its shard:\n{log1}");
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&side).unwrap()).unwrap();
    assert_eq!(info["complete"], serde_json::json!(true), "{info}");
    let o = run(bin().arg("merge").arg(&arr));
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["records.csv", "records.parquet"] {
        assert!(
            read(&one.join(f)) == read(&arr.join(f)),
            "{f} of the requeued array differs from the one-process run's"
        );
    }
    eprintln!(
        "slurm requeue: task 1 requeued after saving {saved} of 10 cases, resumed, merged = one process ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}
