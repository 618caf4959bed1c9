//! `plan --emit slurm` on a real Slurm: `scripts/slurm-test.sh run` starts a private single-node cluster (munged,
//! slurmctld, slurmd on loopback; installed from Debian packages as root when absent), the emitted `submit.sh`
//! runs the study as an array job and then its merge job, and the merged tables must be byte-identical to a
//! one-process run. Without root or the packages the script exits 77 and the test is skipped with its reason,
//! unless `TRAINLAB_SLURM_REQUIRED` is set (`.ci/run` sets it as root), where a skip fails.
mod common;
use common::{bin, run, stderr, tmpdir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

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
    let one = d.join("one");
    let o = run(bin().arg("plan").arg(&s).arg("--out").arg(&one));
    assert!(o.status.success(), "{}", stderr(&o));

    let arr = d.join("array");
    let o = run(bin()
        .arg("plan")
        .arg(&s)
        .args(["--emit", "slurm", "--shards", &SHARDS.to_string(), "--out"])
        .arg(&arr));
    assert!(o.status.success(), "{}", stderr(&o));
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
    if o.status.code() == Some(77) {
        let reason = err
            .lines()
            .find(|l| l.contains("cannot run here"))
            .unwrap_or(&err)
            .to_string();
        assert!(
            std::env::var_os("TRAINLAB_SLURM_REQUIRED").is_none(),
            "TRAINLAB_SLURM_REQUIRED is set but Slurm is unavailable: {reason}"
        );
        eprintln!("skipped: {reason}");
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
