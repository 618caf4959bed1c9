//! `trainlab plan STUDY --emit slurm [--shards N] [--out DIR]`: writes a Slurm array job that runs the study as N
//! shards (`plan --shard I/N`), a merge job, and a submit script that chains them; runs no case.
//!
//! Files written under `DIR/slurm/`:
//! - `plan.sbatch`: `#SBATCH --array=0-(N-1)`; task I runs `trainlab plan STUDY --shard I/N --out DIR` with the
//!   absolute paths of this binary, the study file and the profile (an embedded study keeps its name); the tasks
//!   are requeueable (`--requeue`): a requeued task's shard keeps the cases it saved before and runs the rest;
//! - `merge.sbatch`: `trainlab merge DIR`, meant to run with `--dependency=afterok:<array job id>`;
//! - `submit.sh [--wait] [SBATCH OPTIONS]`: submits both, the merge after the whole array succeeded;
//! - `logs/`: each task's output.
use crate::cli::{PlanArgs, UsageError};
use anyhow::{Result, bail};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use trainlab::kinds::Opts;
use trainlab::profiles::Profiles;
use trainlab::study;
use trainlab_core::Error;

/// Shards when `--shards` is not given: one per case up to this many.
pub const DEFAULT_SHARDS: usize = 16;

/// `trainlab plan ... --emit slurm`.
pub fn emit(a: &PlanArgs, seed_override: Option<u64>) -> Result<()> {
    if a.network != trainlab::kinds::NetworkChoice::AlphaBeta {
        return Err(Error::invalid(
            "--network",
            a.network.as_str(),
            "the Slurm job's shards are not given a network model",
            "drop --network with --emit, or run `trainlab plan STUDY --network ...` without --emit",
        )
        .into());
    }
    let name = a.scenario.as_deref().unwrap_or("default-plan");
    let sc = trainlab_datasets::scenario::load(name)?;
    let opts = Opts {
        profiles: Profiles::load_opt(a.profile.as_deref())?,
        quick: false,
        network: Default::default(),
    };
    let st = study::load(&sc, &opts)?;
    opts.profiles.check_for(st.kind)?;
    let cases = st.cases.len();
    let n = a.shards.unwrap_or(cases.min(DEFAULT_SHARDS));
    if n == 0 || n > cases {
        bail!(UsageError(format!(
            "--shards {n}: the study `{}` has {cases} cases; give 1 to {cases} shards",
            st.manifest.study
        )));
    }
    let out_s = a.out.display().to_string();
    if let Some(c) = out_s
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '%' | '"' | '\'' | '\\'))
    {
        bail!(UsageError(format!(
            "--out {out_s:?}: contains {c:?}, which an #SBATCH line cannot carry; choose a folder without it"
        )));
    }
    let slurm_dir = a.out.join("slurm");
    let logs = slurm_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| Error::io(format!("creating {}", logs.display()), e))?;
    let abs = |p: &Path| -> Result<PathBuf> {
        Ok(std::fs::canonicalize(p).map_err(|e| Error::io(format!("resolving {}", p.display()), e))?)
    };
    let job = Job {
        bin: std::env::current_exe().map_err(|e| Error::io("locating the trainlab binary", e))?,
        // A file is named by its absolute path; an embedded study by its name (it is inside the binary).
        study: if Path::new(name).exists() {
            abs(Path::new(name))?.display().to_string()
        } else {
            name.to_string()
        },
        study_name: st.manifest.study.clone(),
        cases,
        shards: n,
        out: abs(&a.out)?,
        profile: a.profile.as_deref().map(abs).transpose()?,
        seed: seed_override,
    };
    let files = [
        ("plan.sbatch", job.plan_script()),
        ("merge.sbatch", job.merge_script()),
        ("submit.sh", job.submit_script()),
    ];
    let mut written = Vec::new();
    for (file, text) in files {
        let p = job.out.join("slurm").join(file);
        write_executable(&p, &text)?;
        written.push(p);
    }
    if a.json {
        let v = serde_json::json!({
            "study": job.study_name, "cases": cases, "shards": n, "out": job.out.display().to_string(),
            "scripts": written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "study `{}`: {cases} cases as a Slurm array of {n} tasks (no case was run)",
            job.study_name
        );
        for p in &written {
            println!("wrote {}", p.display());
        }
        println!(
            "submit: {}  (the array, then `trainlab merge` after it succeeded)",
            written[2].display()
        );
    }
    Ok(())
}

/// Writes `text` to `p` (through a temp file and a rename) with mode 0755.
fn write_executable(p: &Path, text: &str) -> Result<()> {
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io(format!("setting the mode of {}", tmp.display()), e))?;
    }
    std::fs::rename(&tmp, p).map_err(|e| Error::io(format!("renaming {} to {}", tmp.display(), p.display()), e))?;
    Ok(())
}

/// Everything the scripts name.
struct Job {
    bin: PathBuf,
    study: String,
    study_name: String,
    cases: usize,
    shards: usize,
    out: PathBuf,
    profile: Option<PathBuf>,
    seed: Option<u64>,
}

/// `s` quoted for a POSIX shell (single quotes; a single quote as `'\''`).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Job {
    fn slurm_dir(&self) -> String {
        self.out.join("slurm").display().to_string()
    }

    /// The job name: `trainlab-<study>` with characters other than `[A-Za-z0-9._-]` as `_`.
    fn job_name(&self, what: &str) -> String {
        let s: String = self
            .study_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("trainlab-{what}-{s}")
    }

    /// `BIN [--seed S] ` quoted.
    fn bin_prefix(&self) -> String {
        let mut s = sh_quote(&self.bin.display().to_string());
        if let Some(seed) = self.seed {
            let _ = write!(s, " --seed {seed}");
        }
        s
    }

    fn header(&self, what: &str) -> String {
        format!(
            "#!/bin/bash\n\
             # Written by `trainlab plan --emit slurm` (trainlab {ver}) for the study `{name}`: {cases} cases as {n}\n\
             # shards. {what}\n\
             # Submit both steps with {dir}/submit.sh, or by hand:\n\
             #   jid=$(sbatch --parsable {dir}/plan.sbatch)\n\
             #   sbatch --dependency=afterok:$jid {dir}/merge.sbatch\n\
             # Options given to sbatch on its command line override the #SBATCH lines (--partition, --time, ...).\n",
            ver = env!("CARGO_PKG_VERSION"),
            name = self.study_name,
            cases = self.cases,
            n = self.shards,
            dir = self.slurm_dir(),
        )
    }

    fn plan_script(&self) -> String {
        let mut s = self.header(&format!(
            "Array task I runs the cases i % {n} == I and writes\n\
             # records-shard-I-of-{n}.parquet/.csv/.json into {out}.",
            n = self.shards,
            out = self.out.display()
        ));
        let _ = write!(
            s,
            "#SBATCH --job-name={job}\n\
             #SBATCH --array=0-{last}\n\
             #SBATCH --ntasks=1\n\
             #SBATCH --output={dir}/logs/plan-%A_%a.out\n\
             # A task preempted or on a failed node goes back to the queue; run again, its shard keeps the cases it\n\
             # saved (every 30 s) and runs only the rest.\n\
             #SBATCH --requeue\n\
             #SBATCH --open-mode=append\n\
             set -euo pipefail\n\
             # Same bytes at any thread count; one thread per CPU Slurm gave the task.\n\
             export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-1}}\"\n\
             exec {bin} plan {study} --shard \"${{SLURM_ARRAY_TASK_ID}}/{n}\" --out {out}",
            job = self.job_name("plan"),
            last = self.shards - 1,
            dir = self.slurm_dir(),
            bin = self.bin_prefix(),
            study = sh_quote(&self.study),
            n = self.shards,
            out = sh_quote(&self.out.display().to_string()),
        );
        if let Some(p) = &self.profile {
            let _ = write!(s, " --profile {}", sh_quote(&p.display().to_string()));
        }
        s.push('\n');
        s
    }

    fn merge_script(&self) -> String {
        let mut s = self.header(&format!(
            "This step merges the {n} shards in\n\
             # {out} into records.parquet/.csv, charts and report.html (the bytes of a one-process run); it refuses\n\
             # missing, duplicate or foreign shards.",
            n = self.shards,
            out = self.out.display()
        ));
        let _ = write!(
            s,
            "#SBATCH --job-name={job}\n\
             #SBATCH --ntasks=1\n\
             #SBATCH --kill-on-invalid-dep=yes\n\
             #SBATCH --output={dir}/logs/merge-%j.out\n\
             set -euo pipefail\n\
             exec {bin} merge {out}\n",
            job = self.job_name("merge"),
            dir = self.slurm_dir(),
            bin = sh_quote(&self.bin.display().to_string()),
            out = sh_quote(&self.out.display().to_string()),
        );
        s
    }

    fn submit_script(&self) -> String {
        format!(
            "#!/bin/bash\n\
             # Written by `trainlab plan --emit slurm` (trainlab {ver}): submits the study `{name}` as an array of {n}\n\
             # tasks, then its merge with --dependency=afterok on the whole array (cancelled if a task fails).\n\
             # Usage: submit.sh [--wait] [SBATCH OPTIONS...]   (options go to both sbatch calls; with --wait it\n\
             # returns when the merge has ended: 0 if it completed, 1 if it failed or was cancelled by a failed task)\n\
             set -euo pipefail\n\
             dir={dir}\n\
             wait=()\n\
             if [[ \"${{1:-}}\" == --wait ]]; then wait=(--wait); shift; fi\n\
             jid=$(sbatch --parsable \"$@\" \"$dir/plan.sbatch\")\n\
             jid=${{jid%%;*}}\n\
             echo \"plan array: job $jid ({n} tasks)\"\n\
             rc=0\n\
             mjid=$(sbatch --parsable \"${{wait[@]}}\" --dependency=afterok:\"$jid\" \"$@\" \"$dir/merge.sbatch\") || rc=$?\n\
             mjid=${{mjid%%;*}}\n\
             echo \"merge: job $mjid (after the array succeeded)\"\n\
             if [[ ${{#wait[@]}} -gt 0 ]]; then\n\
             \x20   # sbatch --wait exits 0 for a merge that never ran (cancelled): ask for its state.\n\
             \x20   state=$(scontrol show job -o \"$mjid\" | grep -o 'JobState=[A-Z_]*' || true)\n\
             \x20   if [[ $rc -ne 0 || $state != JobState=COMPLETED ]]; then\n\
             \x20       echo \"merge job $mjid: ${{state:-state unknown}}, exit $rc (did an array task fail? see $dir/logs)\" >&2\n\
             \x20       exit 1\n\
             \x20   fi\n\
             fi\n",
            ver = env!("CARGO_PKG_VERSION"),
            name = self.study_name,
            n = self.shards,
            dir = sh_quote(&self.slurm_dir()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(profile: Option<&str>, seed: Option<u64>) -> Job {
        Job {
            bin: PathBuf::from("/opt/it's/trainlab"),
            study: "/data/my study.toml".into(),
            study_name: "my study".into(),
            cases: 36,
            shards: 4,
            out: PathBuf::from("/shared/out"),
            profile: profile.map(PathBuf::from),
            seed,
        }
    }

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn plan_script_runs_each_shard_with_absolute_paths() {
        let s = job(Some("/p/prof.toml"), Some(3)).plan_script();
        assert!(s.starts_with("#!/bin/bash\n"));
        assert!(s.contains("#SBATCH --array=0-3\n"), "{s}");
        assert!(s.contains("#SBATCH --job-name=trainlab-plan-my_study\n"), "{s}");
        assert!(
            s.contains("#SBATCH --output=/shared/out/slurm/logs/plan-%A_%a.out\n"),
            "{s}"
        );
        // a requeued task resumes its shard and keeps the log of its earlier start
        assert!(
            s.contains("#SBATCH --requeue\n") && s.contains("#SBATCH --open-mode=append\n"),
            "{s}"
        );
        assert!(
            s.contains(
                r#"exec '/opt/it'\''s/trainlab' --seed 3 plan '/data/my study.toml' --shard "${SLURM_ARRAY_TASK_ID}/4" --out '/shared/out' --profile '/p/prof.toml'"#
            ),
            "{s}"
        );
    }

    #[test]
    fn merge_and_submit_chain_on_the_array() {
        let j = job(None, Some(3));
        let m = j.merge_script();
        assert!(m.contains("exec '/opt/it'\\''s/trainlab' merge '/shared/out'\n"), "{m}");
        assert!(m.contains("#SBATCH --kill-on-invalid-dep=yes\n"));
        assert!(!m.contains("--seed"), "merge reads the seed from the shards");
        let s = j.submit_script();
        assert!(s.contains("--dependency=afterok:\"$jid\""), "{s}");
        assert!(s.contains("dir='/shared/out/slurm'\n"), "{s}");
    }
}
