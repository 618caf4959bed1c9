//! Property/fuzz test of the command line (issue 16): bad values for every flag of every subcommand, and random
//! mutations of every embedded scenario, run through the built binary.
//!
//! Every run must finish within [`BUDGET`] (it is killed and the test fails past it), print no panic, and exit with
//! the code its value calls for: 2 for a value that is nonsense for that flag, 0 for one that is valid (valid values
//! of commands that do expensive work — `c4-run`, `calibrate`, `moe quality`, a CUDA backend — are not run: the
//! point there is that bad values are rejected before the work starts). [`FLAGS`] states, per flag, the values it
//! accepts; `flag_table_covers_every_flag` checks against each subcommand's `--help` that no flag is missing.
//!
//! Values come from one pool of numbers and junk (negative, zero, NaN, infinities, 1e400, 2^64, words, the empty
//! string) plus paths (missing, a folder, an empty file, a junk file, a file where a folder is expected). Scenario
//! mutations are drawn from a fixed seed: each embedded scenario gets [`MUTATIONS`] of them (a number set to a bad
//! value or a string, a string set to an unknown value or a number, a boolean to a string, an array to a scalar, a
//! table to a scalar, a key removed) and is run with its kind's analytical backend (`plan` for studies). A rejected
//! mutation must name the field it touched.
//!
//! Both properties run twice: against the test build (debug assertions and overflow checks on) and against a binary
//! with release semantics (neither), named by `TRAINLAB_RELEASE_BIN` (`.ci/run` builds it with
//! `cargo build --profile fuzz-release --bin trainlab`). Without it the release runs skip with that reason, unless
//! `TRAINLAB_RELEASE_REQUIRED` is set (`.ci/run` sets it), when a skip is a failure.
mod common;
use common::{bin, tmpdir};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Longest any single run may take, debug or release.
const BUDGET: Duration = Duration::from_secs(20);
/// Mutations per embedded scenario.
const MUTATIONS: usize = 3;

/// What a flag accepts; every other value must exit 2.
#[derive(Clone, Copy)]
enum Kind {
    /// An unsigned integer in `[lo, hi]`.
    U(u64, u64),
    /// A finite float in `lo..=hi`, the low end excluded when `open` (e.g. "> 0").
    F { lo: f64, open: bool, hi: f64 },
    /// A float strictly between `lo` and `hi`.
    Between(f64, f64),
    /// One of these words.
    Word(&'static [&'static str]),
    /// A file to read: every value of the path pool (missing, folder, empty, junk) is bad.
    InFile,
    /// A folder to read: missing, a file, an empty folder are bad.
    InDir,
    /// A folder to write: a fresh path is valid; an existing file, a path under a file, the empty string are bad.
    OutDir,
    /// `I/N` with `I < N`.
    Shard,
    /// A switch: any `--flag=VALUE` is bad.
    Bool,
    /// Values and their exit codes, stated one by one.
    Exact(&'static [(&'static str, i32)]),
}

/// One flag (or positional argument) of one subcommand.
struct Flag {
    /// The command line around the value: `@V` stands for the value (positionals); otherwise `flag=@V` is
    /// appended after removing any `flag=...` token. `@CSV`, `@FIT`, `@OUT` are a runs table, a fit report and a
    /// fresh output folder.
    base: &'static str,
    /// `--name`, or `<NAME>` for a positional.
    flag: &'static str,
    kind: Kind,
    /// Whether valid values are run (false for expensive commands: only bad values run there).
    cheap: bool,
}

const fn f(base: &'static str, flag: &'static str, kind: Kind, cheap: bool) -> Flag {
    Flag {
        base,
        flag,
        kind,
        cheap,
    }
}

const POS: Kind = Kind::F {
    lo: 0.0,
    open: true,
    hi: f64::MAX,
};
const NONNEG: Kind = Kind::F {
    lo: 0.0,
    open: false,
    hi: f64::MAX,
};
const ANY_U64: Kind = Kind::U(0, u64::MAX);
const LAWS: &[&str] = &["dcpt", "dcpt-separable"];
const TARGETS: &[&str] = &["auto", "both", "general", "domain", "domain_loss", "general_loss"];
const KINDS_CAL: &[&str] = &[
    "gemm",
    "mem_bandwidth",
    "launch_latency",
    "moe_layer",
    "training_job",
    "cpt_run",
    "contrastive_pretrain",
    "distillation",
    "recsys_step",
    "rlhf_iteration",
];

const FIT: &str = "fit dcpt @CSV --starts=1";
const PM: &str = "plan-mixture @FIT --usage=tradeoff --n=1e5 --d=1e6";
const EX: &str = "execute-dcpt --hidden=4,8 --pretrain-tokens=1000 --cpt-tokens=1000 --evals=4 --starts=2 --out=@OUT";

/// Every value-taking flag and positional of every subcommand, and the switches.
const FLAGS: &[Flag] = &[
    // global
    f("kinds", "--seed", ANY_U64, true),
    f("kinds", "--quiet", Kind::Bool, true),
    // plan
    f("plan @V --out=@OUT", "<SCENARIO>", Kind::Word(&["default-plan"]), true),
    f("plan", "--out", Kind::OutDir, true),
    f("plan --out=@OUT", "--shard", Kind::Shard, true),
    f("plan --out=@OUT", "--profile", Kind::InFile, true),
    f("plan", "--resume", Kind::InDir, true),
    f("plan --out=@OUT", "--emit", Kind::Word(&["slurm"]), true),
    f("plan --emit=slurm --out=@OUT", "--shards", Kind::U(1, 10), true),
    f("plan --out=@OUT", "--json", Kind::Bool, true),
    f("plan --out=@OUT", "--seed", ANY_U64, true),
    f(
        "plan --out=@OUT",
        "--network",
        Kind::Word(&["alpha-beta", "flow-ecmp", "flow-planned"]),
        false,
    ),
    // merge
    f("merge @V", "<DIR>", Kind::InDir, true),
    f(
        "merge @OUT",
        "--out",
        Kind::Exact(&[("@NEWDIR", 2), ("@EMPTY", 2), ("abc", 2)]),
        true,
    ),
    f("merge @OUT", "--json", Kind::Bool, true),
    // run
    f(
        "run @V --backend=analytical",
        "<SCENARIO>",
        Kind::Word(&["llama2-70b-h100"]),
        true,
    ),
    f(
        "run llama2-70b-h100",
        "--backend",
        Kind::Word(&["analytical", "op_sim"]),
        true,
    ),
    f(
        "run llama2-70b-h100 --backend=analytical",
        "--profile",
        Kind::InFile,
        true,
    ),
    f("run llama2-70b-h100 --backend=analytical", "--out", Kind::OutDir, true),
    f("run llama2-70b-h100 --backend=analytical", "--json", Kind::Bool, true),
    f(
        "run llama2-70b-h100 --backend=analytical",
        "--network",
        Kind::Word(&["alpha-beta", "flow-ecmp", "flow-planned"]),
        true,
    ),
    // compare
    f(
        "compare @V --quick",
        "<SCENARIO>",
        Kind::Word(&["llama2-70b-h100"]),
        true,
    ),
    f("compare llama2-70b-h100 --quick", "--profile", Kind::InFile, true),
    f("compare llama2-70b-h100 --quick", "--out", Kind::OutDir, true),
    f("compare llama2-70b-h100", "--quick", Kind::Bool, true),
    f("compare llama2-70b-h100 --quick", "--json", Kind::Bool, true),
    f(
        "compare llama2-70b-h100 --quick",
        "--network",
        Kind::Word(&["alpha-beta", "flow-ecmp", "flow-planned"]),
        true,
    ),
    // calibrate (valid values start minutes of measurement: only bad ones run)
    f(
        "calibrate --quick --out=@OUT",
        "--workload",
        Kind::Word(KINDS_CAL),
        false,
    ),
    f(
        "calibrate --quick --out=@OUT",
        "--backend",
        Kind::Word(&["cpu", "cuda"]),
        false,
    ),
    f("calibrate --quick", "--out", Kind::OutDir, false),
    f("calibrate --out=@OUT", "--quick", Kind::Bool, false),
    f("calibrate --quick --out=@OUT", "--json", Kind::Bool, false),
    // scenarios, kinds
    f(
        "scenarios",
        "--show",
        Kind::Word(&["gemm-cpu", "default-plan", "llama3-405b"]),
        true,
    ),
    f("scenarios", "--json", Kind::Bool, true),
    f("kinds", "--json", Kind::Bool, true),
    // fit
    f("fit @V @CSV --starts=1", "<LAW>", Kind::Word(LAWS), true),
    f("fit dcpt @V --starts=1", "<DATA>", Kind::InFile, true),
    f(FIT, "--target", Kind::Word(TARGETS), true),
    f(FIT, "--bootstrap", Kind::U(0, 100_000), true),
    f(FIT, "--seed", ANY_U64, true),
    f(FIT, "--delta", POS, true),
    f(
        "fit chinchilla @CSV --target=domain_loss",
        "--starts",
        Kind::U(1, 1_000_000),
        true,
    ),
    f(FIT, "--level", Kind::Between(0.0, 1.0), true),
    f(FIT, "--cv", Kind::Word(&["N", "D", "r"]), true),
    f("fit dcpt @CSV --starts=1 --cv=N", "--folds", Kind::U(2, 3), true),
    f(FIT, "--out", Kind::OutDir, true),
    f(FIT, "--json", Kind::Bool, true),
    // plan-mixture (from a fit report: no fitting)
    f(
        "plan-mixture @V --usage=compute --flops=1e18",
        "<INPUT>",
        Kind::InFile,
        true,
    ),
    f(
        "plan-mixture @FIT --n=1e5 --d=1e6 --domain-tokens=1e6 --flops=1e18",
        "--usage",
        Kind::Word(&["tradeoff", "limited-data", "compute"]),
        true,
    ),
    f(PM, "--n", POS, true),
    f(PM, "--d", POS, true),
    f(PM, "--tolerance", NONNEG, true),
    // Below the predicted base loss (about 2.5 here) no ratio is feasible: a valid value the plan rejects (2).
    f(
        PM,
        "--base-general-loss",
        Kind::Exact(&[
            ("3", 0),
            ("1e11", 0),
            ("0", 2),
            ("-1", 2),
            ("nan", 2),
            ("inf", 2),
            ("1e400", 2),
            ("abc", 2),
            ("", 2),
        ]),
        true,
    ),
    f(
        "plan-mixture @FIT --usage=limited-data --n=1e5",
        "--domain-tokens",
        POS,
        true,
    ),
    f(
        "plan-mixture @FIT --usage=limited-data --n=1e5 --domain-tokens=1e6",
        "--r-min",
        Kind::F {
            lo: 1e-6,
            open: false,
            hi: 1.0,
        },
        true,
    ),
    // C = 6ND needs N, D >= 1.
    f(
        "plan-mixture @FIT --usage=compute",
        "--flops",
        Kind::F {
            lo: 6.0,
            open: true,
            hi: f64::MAX,
        },
        true,
    ),
    f(
        "plan-mixture @FIT --usage=compute --flops=1e18",
        "--ratio",
        Kind::F {
            lo: 0.0,
            open: false,
            hi: 1.0,
        },
        true,
    ),
    f(
        "plan-mixture @FIT --usage=compute --flops=1e18",
        "--optimise",
        Kind::Word(&["domain", "general"]),
        true,
    ),
    f(PM, "--bootstrap", Kind::U(0, 100_000), true),
    f(PM, "--starts", Kind::U(1, 1_000_000), true),
    f(PM, "--seed", ANY_U64, true),
    f(PM, "--level", Kind::Between(0.0, 1.0), true),
    f(PM, "--json", Kind::Bool, true),
    // execute-dcpt (a tiny grid: valid values run in well under a second)
    f(EX, "--backend", Kind::Word(&["cpu", "cuda"]), false),
    f(
        EX,
        "--hidden",
        Kind::Exact(&[
            ("0", 2),
            ("4,0", 2),
            ("-1", 2),
            ("4096", 0),
            ("4097", 2),
            ("1e9", 2),
            ("", 2),
            ("abc", 2),
            ("18446744073709551616", 2),
        ]),
        false,
    ),
    f(
        EX,
        "--ratios",
        Kind::Exact(&[
            ("0,0.4,0.8,1", 0),
            ("0.4,0.8", 2),
            ("0,0.5,1", 2),
            ("0,0.4,0.8,2", 2),
            ("nan,0.4,0.8", 2),
            ("-1,0.4,0.8", 2),
            ("inf,0.4,0.8", 2),
            ("", 2),
            ("abc", 2),
        ]),
        true,
    ),
    f(
        EX,
        "--holdout",
        Kind::Exact(&[
            ("0.4", 0),
            ("0.5", 2),
            ("2", 2),
            ("-1", 2),
            ("nan", 2),
            ("inf", 2),
            ("0,0.2,0.4,0.6,0.8,1", 2),
            ("", 2),
            ("abc", 2),
        ]),
        true,
    ),
    f(EX, "--pretrain-tokens", Kind::U(0, 1_000_000_000), false),
    f(EX, "--cpt-tokens", Kind::U(32, 1_000_000_000), false),
    // One evaluation per run leaves this tiny grid fewer rows than the law has parameters (exit 2).
    f(EX, "--evals", Kind::U(2, 1_000), true),
    f(
        EX,
        "--overlap",
        Kind::F {
            lo: 0.0,
            open: false,
            hi: 1.0,
        },
        true,
    ),
    f(EX, "--vocab", Kind::U(2, 256), true),
    f(EX, "--embed", Kind::U(1, 4_096), true),
    f(
        EX,
        "--lr",
        Kind::F {
            lo: 0.0,
            open: true,
            hi: 1.0,
        },
        true,
    ),
    f(EX, "--seed", ANY_U64, true),
    f(EX, "--starts", Kind::U(1, 1_000_000), true),
    f(
        "execute-dcpt --hidden=4,8 --pretrain-tokens=1000 --cpt-tokens=1000 --evals=4 --starts=2",
        "--out",
        Kind::OutDir,
        true,
    ),
    // c4-run (real worker processes: only bad values run)
    f("c4-run", "--schedule", Kind::InFile, false),
    f("c4-run", "--ranks", Kind::U(2, 32), false),
    // 300 steps of 0.06 s and three faults fit the 1,800 s limit up to these bounds.
    f("c4-run", "--steps", Kind::U(1, 19_000), false),
    f(
        "c4-run",
        "--compute-s",
        Kind::F {
            lo: 0.0,
            open: true,
            hi: 3.9,
        },
        false,
    ),
    f("c4-run", "--kill", Kind::U(0, 340), false),
    f("c4-run", "--hang", Kind::U(0, 340), false),
    f("c4-run", "--slow", Kind::U(0, 340), false),
    f(
        "c4-run",
        "--slowdown",
        Kind::F {
            lo: 1.0,
            open: false,
            hi: f64::MAX,
        },
        false,
    ),
    f(
        "c4-run",
        "--minutes",
        Kind::F {
            lo: 0.0,
            open: true,
            hi: 29.0,
        },
        false,
    ),
    f("c4-run", "--fault-seed", ANY_U64, false),
    f("c4-run", "--json", Kind::Bool, false),
    // moe quality (trains models: only bad values run)
    f("moe quality", "--quick", Kind::Bool, false),
    f("moe quality --quick", "--seed", ANY_U64, false),
];

/// The number and junk pool every numeric and word flag is tried with.
const POOL: &[&str] = &[
    "-1",
    "0",
    "1",
    "2",
    "3",
    "0.5",
    "1.5",
    "-0.5",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "1e11",
    "100000000000",
    "18446744073709551615",
    "18446744073709551616",
    "abc",
    "",
    "0x10",
    " 1",
];

/// The path pool: placeholders resolved by [`Scratch::path`].
const PATHS: &[&str] = &["@MISSING", "@DIR", "@EMPTY", "@JUNK", "@UNDERFILE", ""];

/// Scratch files and folders the values point at.
struct Scratch {
    root: PathBuf,
    csv: PathBuf,
    fit: PathBuf,
    next: std::sync::atomic::AtomicUsize,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let root = tmpdir(&format!("cli-fuzz-{tag}"));
        std::fs::create_dir_all(root.join("emptydir")).unwrap();
        std::fs::write(root.join("empty"), "").unwrap();
        let junk: Vec<u8> = (0..512u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(root.join("junk"), junk).unwrap();
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/calibration/dcpt-cpu");
        Scratch {
            root,
            csv: data.join("runs.csv"),
            fit: data.join("fit.json"),
            next: 0.into(),
        }
    }

    fn fresh(&self) -> String {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root.join(format!("out-{i}")).display().to_string()
    }

    /// A placeholder of the path pool (or any value) as a concrete string.
    fn path(&self, v: &str) -> String {
        match v {
            "@MISSING" => self.root.join("no/such/path").display().to_string(),
            "@DIR" => self.root.join("emptydir").display().to_string(),
            "@EMPTY" => self.root.join("empty").display().to_string(),
            "@JUNK" => self.root.join("junk").display().to_string(),
            "@UNDERFILE" => self.root.join("empty/sub").display().to_string(),
            "@NEWDIR" => self.fresh(),
            v => v.to_string(),
        }
    }

    /// The argument vector of `flag` given `value` (already resolved).
    fn argv(&self, flag: &Flag, value: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let positional = flag.flag.starts_with('<');
        for tok in flag.base.split_whitespace() {
            if !positional && tok.starts_with(&format!("{}=", flag.flag)) {
                continue;
            }
            let tok = tok
                .replace("@CSV", &self.csv.display().to_string())
                .replace("@FIT", &self.fit.display().to_string());
            let tok = if tok.contains("@OUT") {
                tok.replace("@OUT", &self.fresh())
            } else {
                tok
            };
            if tok == "@V" {
                out.push(value.to_string());
            } else {
                out.push(tok);
            }
        }
        if !positional {
            out.push(format!("{}={value}", flag.flag));
        }
        out
    }
}

/// The values tried for `kind`, each with the exit code it calls for (`None`: valid but not run).
fn cases(kind: Kind) -> Vec<(String, i32)> {
    let num = |ok: &dyn Fn(&str) -> bool| -> Vec<(String, i32)> {
        POOL.iter()
            .map(|v| (v.to_string(), if ok(v) { 0 } else { 2 }))
            .collect()
    };
    match kind {
        Kind::U(lo, hi) => num(&|v| v.parse::<u64>().is_ok_and(|x| x >= lo && x <= hi)),
        Kind::F { lo, open, hi } => num(&|v| {
            v.parse::<f64>()
                .is_ok_and(|x| x.is_finite() && x <= hi && if open { x > lo } else { x >= lo })
        }),
        Kind::Between(lo, hi) => num(&|v| v.parse::<f64>().is_ok_and(|x| x > lo && x < hi)),
        Kind::Word(words) => {
            let mut c = num(&|v| words.contains(&v));
            c.extend(words.iter().map(|w| (w.to_string(), 0)));
            c.extend([("no-such-name".to_string(), 2), (words[0].to_uppercase() + "x", 2)]);
            c.extend(["@MISSING", "@JUNK"].iter().map(|p| (p.to_string(), 2)));
            c
        }
        Kind::InFile => PATHS.iter().map(|p| (p.to_string(), 2)).collect(),
        Kind::InDir => ["@MISSING", "@DIR", "@EMPTY", "@JUNK", "@UNDERFILE", ""]
            .iter()
            .map(|p| (p.to_string(), 2))
            .collect(),
        Kind::OutDir => vec![
            ("@NEWDIR".into(), 0),
            ("@EMPTY".into(), 2),
            ("@JUNK".into(), 2),
            ("@UNDERFILE".into(), 2),
            ("".into(), 2),
        ],
        Kind::Shard => ["0/1", "0/2", "1/2"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .chain(
                [
                    "2/2",
                    "5/4",
                    "0/0",
                    "-1/4",
                    "1/18446744073709551616",
                    "abc",
                    "",
                    "1/",
                    "/4",
                    "0.5/2",
                    "nan/inf",
                ]
                .iter()
                .map(|s| (s.to_string(), 2)),
            )
            .collect(),
        Kind::Bool => ["abc", "1", "true", ""].iter().map(|s| (s.to_string(), 2)).collect(),
        Kind::Exact(list) => list.iter().map(|(v, c)| (v.to_string(), *c)).collect(),
    }
}

/// What one run of the binary did.
struct Ran {
    code: Option<i32>,
    stderr: String,
    elapsed: Duration,
}

/// Runs `exe` on `args` in `cwd`, killing it past [`BUDGET`].
fn run_budgeted(exe: &Path, args: &[String], cwd: &Path) -> Ran {
    let start = Instant::now();
    let mut child: Child = std::process::Command::new(exe)
        .args(args)
        .current_dir(cwd)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trainlab");
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).to_string()
    });
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        if start.elapsed() > BUDGET {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ran {
        code,
        stderr: reader.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// The failure (if any) of a run that should have exited `want` (`None`: 0 or 2), and on exit 2 named `name`.
fn verdict(what: &str, r: &Ran, want: Option<i32>, name: Option<&str>) -> Option<String> {
    let panicked = r.stderr.contains("panicked") || r.stderr.contains("RUST_BACKTRACE");
    let ok_code = match (r.code, want) {
        (Some(c), Some(w)) => c == w,
        (Some(c), None) => c == 0 || c == 2,
        (None, _) => false,
    };
    let unnamed = r.code == Some(2) && name.is_some_and(|n| !n.split('|').any(|alt| r.stderr.contains(alt)));
    if panicked || !ok_code || unnamed {
        let tail: String = r
            .stderr
            .chars()
            .rev()
            .take(400)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Some(format!(
            "{what}: exit {:?} (want {}{}) after {:.1} s{}\n    {}",
            r.code,
            want.map_or("0 or 2".to_string(), |w| w.to_string()),
            name.map_or(String::new(), |n| format!(", naming `{n}`")),
            r.elapsed.as_secs_f64(),
            if r.code.is_none() {
                " (killed: past the budget)"
            } else {
                ""
            },
            tail.trim().replace('\n', "\n    ")
        ))
    } else {
        None
    }
}

/// A run to make: what it is (for messages), its arguments, the exit code it calls for, a name stderr must hold
/// on exit 2.
type Job = (String, Vec<String>, Option<i32>, Option<String>);

/// Runs `jobs` with `exe` on a few threads (the binary is the heavy part), returning every failure.
fn run_all(exe: &Path, jobs: Vec<Job>, cwd: &Path) -> (usize, Vec<String>) {
    let n = jobs.len();
    let jobs = std::sync::Mutex::new(jobs.into_iter());
    let fails = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..std::thread::available_parallelism().map_or(2, |p| p.get().clamp(1, 4)) {
            s.spawn(|| {
                loop {
                    let Some((what, args, want, name)) = jobs.lock().unwrap().next() else {
                        break;
                    };
                    let r = run_budgeted(exe, &args, cwd);
                    if let Some(f) = verdict(&what, &r, want, name.as_deref()) {
                        fails.lock().unwrap().push(f);
                    }
                }
            });
        }
    });
    (n, fails.into_inner().unwrap())
}

/// A name for scratch folders that differs between the two binaries (their runs go on at once).
fn tag(exe: &Path) -> String {
    if exe == debug_bin() { "debug" } else { "release" }.to_string()
}

/// The test build of the binary.
fn debug_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trainlab"))
}

/// The release-semantics binary from `TRAINLAB_RELEASE_BIN`, or `None` after printing why the run skips (a panic
/// when `TRAINLAB_RELEASE_REQUIRED` is set).
fn release_bin() -> Option<PathBuf> {
    let why = match std::env::var_os("TRAINLAB_RELEASE_BIN").map(PathBuf::from) {
        Some(p) if p.is_file() => return Some(p),
        Some(p) => format!("TRAINLAB_RELEASE_BIN={} is not a file", p.display()),
        None => "TRAINLAB_RELEASE_BIN is not set (build it: cargo build --profile fuzz-release --bin trainlab)".into(),
    };
    assert!(
        std::env::var_os("TRAINLAB_RELEASE_REQUIRED").is_none(),
        "release-semantics fuzz run required, but {why}"
    );
    eprintln!("skipped: {why}");
    None
}

#[test]
fn every_flag_rejects_bad_values_with_exit_2() {
    flags_property(&debug_bin());
}

#[test]
fn every_flag_rejects_bad_values_with_exit_2_release() {
    if let Some(exe) = release_bin() {
        flags_property(&exe);
    }
}

fn flags_property(exe: &Path) {
    let _one = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let t0 = Instant::now();
    let sc = Scratch::new(&tag(exe));
    let mut jobs = Vec::new();
    let mut skipped = 0;
    for fl in FLAGS {
        for (v, code) in cases(fl.kind) {
            if code == 0 && !fl.cheap {
                skipped += 1;
                continue;
            }
            let value = sc.path(&v);
            let args = sc.argv(fl, &value);
            let what = format!(
                "trainlab {}",
                args.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(" ")
            );
            jobs.push((what, args, Some(code), None));
        }
    }
    let (n, fails) = run_all(exe, jobs, &sc.root);
    eprintln!(
        "{}: {n} flag runs ({skipped} valid values of expensive commands not run) in {:.1} s",
        exe.display(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        fails.is_empty(),
        "{} of {n} runs failed:\n{}",
        fails.len(),
        fails.join("\n")
    );
    let _ = std::fs::remove_dir_all(&sc.root);
}

/// The subcommands `trainlab --help` lists (with `moe`'s own), as their command words.
fn subcommands() -> Vec<String> {
    let help = String::from_utf8(bin().arg("--help").output().unwrap().stdout).unwrap();
    let mut out = Vec::new();
    let mut in_cmds = false;
    for line in help.lines() {
        if line.starts_with("Commands:") {
            in_cmds = true;
            continue;
        }
        if in_cmds {
            let Some(name) = line.strip_prefix("  ").and_then(|l| l.split_whitespace().next()) else {
                break;
            };
            match name {
                "help" => {}
                "moe" => out.push("moe quality".to_string()),
                n => out.push(n.to_string()),
            }
        }
    }
    out
}

/// The flags (`--name`) and positionals (`<NAME>`) `trainlab CMD --help` lists, less `--help` and `--version`.
fn help_flags(cmd: &str) -> Vec<String> {
    let mut args: Vec<&str> = cmd.split(' ').collect();
    args.push("--help");
    let help = String::from_utf8(bin().args(&args).output().unwrap().stdout).unwrap();
    let mut out = Vec::new();
    for line in help.lines() {
        let l = line.trim_start();
        if !line.starts_with("  ") {
            continue;
        }
        let first = l.trim_start_matches("-h, ").trim_start_matches("-V, ");
        if let Some(rest) = first.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if name != "help" && name != "version" {
                out.push(format!("--{name}"));
            }
        } else if first.starts_with('<')
            && let Some(end) = first.find('>')
        {
            out.push(first[..=end].to_string());
        }
    }
    out
}

#[test]
fn flag_table_covers_every_flag() {
    let cmds = subcommands();
    assert!(cmds.len() >= 12, "subcommands parsed from --help: {cmds:?}");
    let mut missing = Vec::new();
    for cmd in &cmds {
        let flags = help_flags(cmd);
        assert!(!flags.is_empty(), "{cmd}: no flags parsed from --help");
        for fl in flags {
            let covered = FLAGS.iter().any(|e| {
                e.flag == fl && (e.base == *cmd || e.base.starts_with(&format!("{cmd} ")))
                    || ((fl == "--seed" || fl == "--quiet") && e.flag == fl && e.base == "kinds")
            });
            if !covered {
                missing.push(format!("{cmd} {fl}"));
            }
        }
    }
    assert!(missing.is_empty(), "flags without an entry in FLAGS: {missing:?}");
}

/// A small deterministic generator (PCG-style LCG) for the mutations.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Paths (`a.b[2].c`) of every value in a TOML table, tables and arrays included.
fn all_paths(v: &toml::Value, here: String, out: &mut Vec<(String, Vec<String>)>, keys: &mut Vec<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, sub) in t {
                let p = if here.is_empty() {
                    k.clone()
                } else {
                    format!("{here}.{k}")
                };
                keys.push(k.clone());
                out.push((p.clone(), keys.clone()));
                all_paths(sub, p, out, keys);
                keys.pop();
            }
        }
        toml::Value::Array(a) => {
            for (i, sub) in a.iter().enumerate() {
                let p = format!("{here}[{i}]");
                keys.push(format!("[{i}]"));
                out.push((p.clone(), keys.clone()));
                all_paths(sub, p, out, keys);
                keys.pop();
            }
        }
        _ => {}
    }
}

/// The value at `keys` (`None` to remove it) replaced by `f`.
fn mutate_at(v: &mut toml::Value, keys: &[String], f: &mut dyn FnMut(&toml::Value) -> Option<toml::Value>) {
    let (last, init) = keys.split_last().unwrap();
    let mut cur = v;
    for k in init {
        cur = match (k.strip_prefix('[').and_then(|s| s.strip_suffix(']')), cur) {
            (Some(i), toml::Value::Array(a)) => &mut a[i.parse::<usize>().unwrap()],
            (None, toml::Value::Table(t)) => t.get_mut(k).unwrap(),
            _ => unreachable!(),
        };
    }
    match (last.strip_prefix('[').and_then(|s| s.strip_suffix(']')), cur) {
        (Some(i), toml::Value::Array(a)) => {
            let i: usize = i.parse().unwrap();
            match f(&a[i]) {
                Some(n) => a[i] = n,
                None => {
                    a.remove(i);
                }
            }
        }
        (None, toml::Value::Table(t)) => match f(&t[last]) {
            Some(n) => {
                t.insert(last.clone(), n);
            }
            None => {
                t.remove(last);
            }
        },
        _ => unreachable!(),
    }
}

/// A bad replacement for `old` (or `None`: remove the key), and a label.
fn bad_value(old: &toml::Value, rng: &mut Lcg) -> (Option<toml::Value>, String) {
    use toml::Value as V;
    if rng.below(6) == 0 {
        return (None, "removed".into());
    }
    let pick = |rng: &mut Lcg, opts: Vec<V>| -> V { opts[rng.below(opts.len())].clone() };
    let v = match old {
        V::Integer(_) | V::Float(_) => pick(
            rng,
            vec![
                V::Integer(-1),
                V::Integer(0),
                V::Integer(i64::MAX),
                V::Float(f64::NAN),
                V::Float(f64::INFINITY),
                V::Float(-1.5),
                V::Float(1e300),
                V::String("abc".into()),
                V::Boolean(true),
            ],
        ),
        V::String(_) => pick(
            rng,
            vec![
                V::String("no_such_value".into()),
                V::String(String::new()),
                V::Integer(7),
                V::Array(vec![]),
            ],
        ),
        V::Boolean(_) => pick(rng, vec![V::String("yes".into()), V::Integer(1)]),
        V::Array(_) => pick(rng, vec![V::Integer(3), V::Array(vec![]), V::String("x".into())]),
        V::Table(_) => pick(rng, vec![V::String("x".into()), V::Integer(0)]),
        V::Datetime(_) => V::Integer(0),
    };
    let label = v.to_string();
    (Some(v), label)
}

/// Kind name -> its modelled backends (analytical first, then simulated), from `trainlab kinds --json`.
fn modelled_backends() -> std::collections::HashMap<String, Vec<String>> {
    let out = bin().args(["kinds", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|k| {
            let all = k["backends"].as_array()?;
            let of = |f: &'static str| -> Vec<String> {
                all.iter()
                    .filter(|b| b["fidelity"] == f)
                    .filter_map(|b| b["name"].as_str().map(str::to_string))
                    .collect()
            };
            let mut list = of("analytical");
            list.extend(of("simulated"));
            Some((k["kind"].as_str()?.to_string(), list))
        })
        .collect()
}

/// Heavy properties run one at a time (each already runs the binary on every core).
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn every_embedded_scenario_survives_random_bad_fields() {
    scenarios_property(&debug_bin());
}

#[test]
fn every_embedded_scenario_survives_random_bad_fields_release() {
    if let Some(exe) = release_bin() {
        scenarios_property(&exe);
    }
}

fn scenarios_property(exe: &Path) {
    let _one = HEAVY.lock().unwrap_or_else(|p| p.into_inner());
    let t0 = Instant::now();
    let backends = modelled_backends();
    let root = tmpdir(&format!("cli-fuzz-scenarios-{}", tag(exe)));
    let mut rng = Lcg(0x5eed_0016);
    let cpt_profile = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("datasets/calibration/cpt-cpu")
        .display()
        .to_string();
    let mut jobs = Vec::new();
    for (name, text) in trainlab_datasets::scenario::EMBEDDED {
        let mut doc: toml::Value = toml::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        // A study's measured backends train real models for many seconds per case: keep its modelled ones.
        if let Some(toml::Value::Array(b)) = doc.get_mut("study").and_then(|s| s.get_mut("backends")) {
            b.retain(|v| !matches!(v.as_str(), Some("cpu" | "cuda")));
        }
        let kind = doc["kind"].as_str().unwrap().to_string();
        let mut paths = Vec::new();
        all_paths(&doc, String::new(), &mut paths, &mut Vec::new());
        // The scenario's first modelled backend that answers it unmutated (some answer only some routers, devices
        // or profiles); a study runs through `plan`.
        let profile: Vec<String> = if name.starts_with("cpt-") {
            vec!["--profile".into(), cpt_profile.clone()]
        } else {
            Vec::new()
        };
        let backend = match backends.get(&kind) {
            None => None,
            Some(list) => {
                let base = root.join(format!("{name}-base.toml"));
                std::fs::write(&base, toml::to_string(&doc).unwrap()).unwrap();
                let works = list.iter().find(|b| {
                    let mut a = vec![
                        "run".to_string(),
                        base.display().to_string(),
                        "--backend".into(),
                        (*b).clone(),
                    ];
                    a.extend(profile.iter().cloned());
                    run_budgeted(exe, &a, &root).code == Some(0)
                });
                Some(
                    works
                        .unwrap_or_else(|| panic!("{name}: no modelled backend of `{kind}` ({list:?}) answers it"))
                        .clone(),
                )
            }
        };
        for m in 0..MUTATIONS {
            let (path, keys) = paths[rng.below(paths.len())].clone();
            let mut d = doc.clone();
            let mut label = String::new();
            mutate_at(&mut d, &keys, &mut |old| {
                let (v, l) = bad_value(old, &mut rng);
                label = l;
                v
            });
            let file = root.join(format!("{name}-{m}.toml"));
            std::fs::write(&file, toml::to_string(&d).unwrap()).unwrap();
            let f = file.display().to_string();
            let mut args: Vec<String> = match &backend {
                Some(b) => vec!["run".into(), f, "--backend".into(), b.clone()],
                None => vec![
                    "plan".into(),
                    f,
                    "--out".into(),
                    root.join(format!("out-{name}-{m}")).display().to_string(),
                ],
            };
            // The D-CPT law exists only as fitted: its scenarios need the shipped profile.
            args.extend(profile.iter().cloned());
            // A rejection names the key it touched, or the table holding it (removing the only key of a table that
            // picks one of several forms leaves the table itself invalid).
            let mut named = keys.iter().rev().filter(|k| !k.starts_with('[')).cloned();
            let key = named.next().map(|k| match named.next() {
                Some(parent) => format!("{k}|{parent}"),
                None => k,
            });
            jobs.push((
                format!("{name}: {path} = {label}: trainlab {}", args.join(" ")),
                args,
                None,
                key,
            ));
        }
    }
    let (n, fails) = run_all(exe, jobs, &root);
    eprintln!(
        "{}: {n} scenario mutations in {:.1} s",
        exe.display(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        fails.is_empty(),
        "{} of {n} mutations failed:\n{}",
        fails.len(),
        fails.join("\n")
    );
    let _ = std::fs::remove_dir_all(&root);
}
