//! The `contrastive_pretrain` kind (VICTOR, CLIP): video-language contrastive pre-training from clip decoding to the
//! InfoNCE logits, answered by the closed-form step cost (`analytical`), the input-pipeline simulator
//! (`pipeline_des`: decode workers, a bounded prefetch queue, the synchronous step) and a real step on this CPU
//! (`cpu`: InfoNCE forward and backward with in-batch or queue negatives, encoder stand-ins, the EMA, and PNG decoding
//! standing in for video decoding).
//!
//! Honest answers: the CPU run answers another workload, the same run scaled to one `cpu` device (batch at most
//! [`CPU_MAX_BATCH`], width at most [`CPU_MAX_DIM`], queues of at most [`CPU_MAX_QUEUE`] keys, at most
//! [`CPU_MAX_FRAMES`] decoded frames a batch, linear encoder stand-ins, fp32, as many decode workers as this machine
//! has cores), filed in its own group where the models answer it too.
//!
//! Calibration (`trainlab calibrate --workload contrastive_pretrain`, device `cpu`): real heads, encoder stand-ins,
//! EMA passes and decode stages on this CPU, timed by their on-CPU seconds (the time other processes hold the cores
//! does not count), in interleaved passes (5, and up to 10 for a case until its two fastest agree within 3%), the
//! fastest pass per case; decode seconds per frame and the parallel
//! efficiency of extra workers, seconds per encoder FLOP (GEMM law in the width) plus a batch-squared input term, the logits' fixed, per-FLOP and per-element costs (least
//! squares) and the EMA bandwidth are fitted on some batch sizes, widths, queues and worker counts and predicted on
//! the others. The closed form and the simulator read the profile for workloads on the `cpu` device.
use super::{Answering, KindDef, Opts};
use crate::calibration::{CalRequest, Calibrated, Calibration, Device, envelope, provenance};
use trainlab_core::workloads::contrastive::{ContrastivePretrain, Encoder, Negatives};
use trainlab_core::{Dtype, Error, Fidelity, HeldOut, Metric, Profile, Record, Seed, Unit, Workload};
use trainlab_executors::contrastive::{self as exec, ContrastiveCpu, INPUT_DIM, Shapes};
use trainlab_executors::timing::TimingOpts;
use trainlab_models::contrastive::{
    ContrastiveAnalytical, ContrastiveCost, encoder_flops, logit_elements, logit_flops, step_cost, step_cost_with,
};
use trainlab_sim::contrastive::PipelineDes;

/// Largest global batch the CPU run computes.
pub const CPU_MAX_BATCH: u64 = 4096;
/// Largest embedding width the CPU run computes.
pub const CPU_MAX_DIM: u64 = 256;
/// Largest queue the CPU run holds.
pub const CPU_MAX_QUEUE: u64 = 32_768;
/// Largest number of frames the CPU run decodes a batch.
pub const CPU_MAX_FRAMES: u64 = 1024;

fn cost_profile(o: &Opts) -> Result<Option<Profile<ContrastiveCost>>, Error> {
    let p = o
        .profiles
        .get_one::<ContrastiveCost>("contrastive_pretrain", |_| true)?;
    if let Some(p) = &p {
        p.params.validate("profile.params")?;
    }
    Ok(p)
}

fn cpu_cluster() -> trainlab_core::ClusterSpec {
    trainlab_datasets::gpus::cluster("cpu", 1, 1).unwrap_or_else(|_| unreachable!("the cpu preset exists"))
}

/// Cores of this machine.
fn cores() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

/// The workload the CPU run really answers for `w` (`None`: `w` itself).
pub fn on_cpu(w: &ContrastivePretrain) -> Option<ContrastivePretrain> {
    let mut x = w.clone();
    x.cluster = cpu_cluster();
    x.global_batch = w.global_batch.min(CPU_MAX_BATCH);
    x.embed_dim = w.embed_dim.min(CPU_MAX_DIM);
    let enc = Encoder {
        params: (INPUT_DIM as u64 * x.embed_dim) as f64,
        tokens: 1.0,
    };
    x.video_encoder = enc;
    x.text_encoder = enc;
    x.negatives = match w.negatives {
        Negatives::InBatch { .. } => Negatives::InBatch {
            local_loss: false,
            gather_with_grad: false,
        },
        Negatives::Queue { size, queues } => Negatives::Queue {
            size: size.min(CPU_MAX_QUEUE).max(x.global_batch),
            queues,
        },
    };
    x.frames_per_clip = w.frames_per_clip.min((CPU_MAX_FRAMES / x.global_batch).max(1));
    x.cores_per_gpu = w.cores_per_gpu.min(cores());
    x.decode_cv = 0.0;
    x.dtype = Dtype::Fp32;
    (x != *w).then_some(x)
}

fn backends(o: &Opts) -> Result<super::Backends<ContrastivePretrain>, Error> {
    let cost = cost_profile(o)?.map(|p| p.params);
    let des = PipelineDes {
        cost: cost.clone(),
        ..PipelineDes::default()
    };
    let des = if o.quick {
        PipelineDes {
            warmup_steps: 50,
            steps: 150,
            ..des
        }
    } else {
        des
    };
    Ok(vec![
        Box::new(ContrastiveAnalytical { cost }),
        Box::new(des),
        Box::new(Answering {
            inner: Box::new(ContrastiveCpu {
                timing: if o.quick {
                    TimingOpts::quick()
                } else {
                    ContrastiveCpu::default().timing
                },
            }),
            map: on_cpu,
        }),
    ])
}

/// The `contrastive_pretrain` kind.
pub static KIND: KindDef<ContrastivePretrain> = KindDef {
    about: "video-language contrastive pre-training: loader- or compute-bound, in-batch vs queue negatives (VICTOR, \
            CLIP)",
    reads: &["contrastive_pretrain"],
    reference: &["cpu", "pipeline_des", "analytical"],
    headline: &[
        "step_time",
        "days",
        "loader_bound",
        "cores_per_gpu_needed",
        "memory.logits",
    ],
    backends,
    describe: |w| {
        let neg = match w.negatives {
            Negatives::InBatch { .. } => format!("in-batch B={}", w.global_batch),
            Negatives::Queue { size, queues } => format!("B={} {queues} queue(s) K={size}", w.global_batch),
        };
        format!(
            "{} x {}, {neg}, d={}, {} frames, {} workers",
            w.cluster.gpus(),
            w.cluster.gpu.name,
            w.embed_dim,
            w.frames_per_clip,
            w.cores_per_gpu
        )
    },
    profiled: |o, w| match cost_profile(o) {
        Ok(Some(p)) if p.params.device == w.cluster.gpu.name => vec![
            ("analytical", "contrastive_pretrain".into()),
            ("pipeline_des", "contrastive_pretrain".into()),
        ],
        _ => vec![],
    },
    calibration: Some(&ContrastiveCalibration),
};

/// A workload on this CPU with the given head shapes and decode stage (encoder stand-ins, assumed decode cost 4 ms
/// per frame for the uncalibrated prediction).
pub fn cpu_workload(batch: u64, d: u64, queue: Option<(u64, u64)>, frames: u64, workers: u64) -> ContrastivePretrain {
    let enc = Encoder {
        params: (INPUT_DIM as u64 * d) as f64,
        tokens: 1.0,
    };
    ContrastivePretrain {
        cluster: cpu_cluster(),
        global_batch: batch,
        embed_dim: d,
        video_encoder: enc,
        text_encoder: enc,
        negatives: match queue {
            None => Negatives::InBatch {
                local_loss: false,
                gather_with_grad: false,
            },
            Some((size, queues)) => Negatives::Queue { size, queues },
        },
        momentum: queue.map(|_| 0.999),
        frames_per_clip: frames,
        decode_s_per_frame: 0.004,
        cores_per_gpu: workers,
        decode_cv: 0.0,
        prefetch_batches: 2,
        samples_per_epoch: 1e6,
        epochs: 1.0,
        dtype: Dtype::Fp32,
        mfu: 0.4,
    }
}

/// What one calibration case measures.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// The InfoNCE head (`time.logits`).
    Head,
    /// Encoder stand-ins and the EMA (`time.encoders`, `time.momentum`).
    Encoders,
    /// The decode stage (`time.load`).
    Decode,
}

struct Case {
    stage: Stage,
    w: ContrastivePretrain,
    held_out: bool,
}

impl Case {
    fn label(&self) -> String {
        let w = &self.w;
        match self.stage {
            Stage::Head => match w.negatives {
                Negatives::InBatch { .. } => format!("head in-batch B={} d={}", w.global_batch, w.embed_dim),
                Negatives::Queue { size, queues } => {
                    format!("head B={} {queues}x queue K={size} d={}", w.global_batch, w.embed_dim)
                }
            },
            Stage::Encoders => format!("encoders B={} d={}", w.global_batch, w.embed_dim),
            Stage::Decode => format!(
                "decode {} frames, {} workers",
                w.global_batch * w.frames_per_clip,
                w.cores_per_gpu
            ),
        }
    }
}

/// The calibration cases: fit and held-out batch sizes, widths, queues and worker counts (`quick`: smaller).
fn cases(quick: bool) -> Vec<Case> {
    let c = |stage, w, held_out| Case { stage, w, held_out };
    let workers = cores().min(4);
    let s = if quick { 4 } else { 1 }; // quick: a quarter of each batch
    let mut v = vec![
        // Heads: in-batch and queues, several widths and sizes.
        c(Stage::Head, cpu_workload(1024 / s, 128, None, 1, 1), false),
        c(Stage::Head, cpu_workload(2048 / s, 64, None, 1, 1), false),
        c(Stage::Head, cpu_workload(2048 / s, 256, None, 1, 1), false),
        c(
            Stage::Head,
            cpu_workload(512 / s, 128, Some((8192 / s, 1)), 1, 1),
            false,
        ),
        c(
            Stage::Head,
            cpu_workload(256 / s, 256, Some((16384 / s, 2)), 1, 1),
            false,
        ),
        c(
            Stage::Head,
            cpu_workload(1024 / s, 64, Some((4096 / s, 1)), 1, 1),
            false,
        ),
        // Two larger fit heads (9.4M and 26M logit elements, 38 and 105 MB in fp32: far beyond the 2 MiB L2 per core), so the held-out sizes below
        // are inside the fitted range: fitted only on matrices up to 5M elements, the 17.8M-element held-out queue
        // head was predicted -15% in one run, +7% in another (the per-element cost is a memory cost there).
        c(Stage::Head, cpu_workload(3072 / s, 96, None, 1, 1), false),
        c(
            Stage::Head,
            cpu_workload(1024 / s, 64, Some((24576 / s, 1)), 1, 1),
            false,
        ),
        c(Stage::Head, cpu_workload(1536 / s, 192, None, 1, 1), true),
        c(Stage::Head, cpu_workload(4096 / s, 128, None, 1, 1), true),
        c(
            Stage::Head,
            cpu_workload(1024 / s, 128, Some((16384 / s, 1)), 1, 1),
            true,
        ),
        c(Stage::Head, cpu_workload(512 / s, 64, Some((32768 / s, 3)), 1, 1), true),
        // Encoder stand-ins (with a key network, so the EMA runs too).
        c(
            Stage::Encoders,
            cpu_workload(1024 / s, 128, Some((8192, 1)), 1, 1),
            false,
        ),
        c(
            Stage::Encoders,
            cpu_workload(2048 / s, 256, Some((8192, 1)), 1, 1),
            false,
        ),
        // Two more fit widths, so the GEMM law's half-rate width is pinned by more than two noisy points.
        c(
            Stage::Encoders,
            cpu_workload(2048 / s, 32, Some((8192, 1)), 1, 1),
            false,
        ),
        c(
            Stage::Encoders,
            cpu_workload(1024 / s, 384, Some((8192, 1)), 1, 1),
            false,
        ),
        // And the largest batch at a narrow and a wide width, so the held-out batch of 4,096 at width 64 lies between
        // fit cases (with only the wider one it was predicted -15% to +9% across runs: at small widths the time is
        // the input's bytes, and the half-rate width fitted from other batches moved with the machine's state).
        c(
            Stage::Encoders,
            cpu_workload(4096 / s, 160, Some((8192, 1)), 1, 1),
            false,
        ),
        c(
            Stage::Encoders,
            cpu_workload(4096 / s, 32, Some((8192, 1)), 1, 1),
            false,
        ),
        c(
            Stage::Encoders,
            cpu_workload(1536 / s, 192, Some((8192, 1)), 1, 1),
            true,
        ),
        c(Stage::Encoders, cpu_workload(4096 / s, 64, Some((8192, 1)), 1, 1), true),
        // Decode: frames and workers.
        c(Stage::Decode, cpu_workload(64 / s, 128, None, 2, 1), false),
        c(Stage::Decode, cpu_workload(128 / s, 128, None, 2, 1), false),
        c(Stage::Decode, cpu_workload(96 / s, 128, None, 2, 1), true),
        c(Stage::Decode, cpu_workload(64 / s, 128, None, 4, 1), true),
    ];
    if workers > 1 {
        // Two fit points for the parallel efficiency (one gave 0.59 in one run, 1.20 in another).
        v.push(c(Stage::Decode, cpu_workload(128 / s, 128, None, 2, workers), false));
        v.push(c(Stage::Decode, cpu_workload(192 / s, 128, None, 2, workers), false));
        v.push(c(Stage::Decode, cpu_workload(96 / s, 128, None, 2, workers), true));
        v.push(c(Stage::Decode, cpu_workload(64 / s, 128, None, 4, workers), true));
    }
    // Held-out worker counts beyond the fitted ones (3 and 4 workers, also on a 2-core machine: each worker's share
    // is timed by its own on-CPU seconds, i.e. as if it had a core of its own; with more workers than cores they
    // take turns, so they contend for caches and memory less than on dedicated cores).
    if workers > 1 {
        v.push(c(Stage::Decode, cpu_workload(128 / s, 128, None, 2, 3), true));
        v.push(c(Stage::Decode, cpu_workload(96 / s, 128, None, 2, 4), true));
    }
    v
}

/// The metrics one case measured: `(name, seconds)`.
fn measure_case(
    case: &Case,
    opts: &TimingOpts,
    seed: Seed,
    pool: &[Vec<u8>],
) -> Result<Vec<(&'static str, f64)>, Error> {
    let shapes = Shapes::of(&case.w);
    Ok(match case.stage {
        Stage::Head => vec![("time.logits", exec::time_head(shapes, opts, seed, 1)?.0)],
        Stage::Encoders => {
            let (e, m) = exec::time_encoders(shapes, opts, seed, 1)?;
            vec![("time.encoders", e), ("time.momentum", m)]
        }
        Stage::Decode => {
            let frames = (case.w.global_batch * case.w.frames_per_clip) as usize;
            let t = exec::time_decode(pool, frames, case.w.cores_per_gpu as usize, opts, &|| false)?;
            vec![("time.load", t.median_s())]
        }
    })
}

/// The prediction of `metric` for `w` by the closed form (calibrated with `cost`, or not).
fn predict(w: &ContrastivePretrain, metric: &str, cost: Option<&ContrastiveCost>) -> f64 {
    let o = match cost {
        Some(c) => step_cost_with(w, Some(c)),
        None => step_cost(w),
    };
    match metric {
        "time.logits" => o.logits_s,
        "time.encoders" => o.encoders_s,
        "time.momentum" => o.momentum_s,
        _ => o.load_s,
    }
}

/// Least squares `y ≈ X β` by the normal equations (`X` has `p` columns), by Gaussian elimination with partial
/// pivoting; columns whose coefficient comes out negative are dropped and the rest refitted (costs are >= 0).
fn nonneg_least_squares(x: &[Vec<f64>], y: &[f64]) -> Vec<f64> {
    let p = x.first().map_or(0, Vec::len);
    let mut active: Vec<usize> = (0..p).collect();
    loop {
        let k = active.len();
        let mut a = vec![vec![0.0; k + 1]; k];
        for (row, &yi) in x.iter().zip(y) {
            for (i, &ci) in active.iter().enumerate() {
                for (j, &cj) in active.iter().enumerate() {
                    a[i][j] += row[ci] * row[cj];
                }
                a[i][k] += row[ci] * yi;
            }
        }
        for col in 0..k {
            let piv = (col..k)
                .max_by(|&r, &s| a[r][col].abs().total_cmp(&a[s][col].abs()))
                .unwrap_or(col);
            a.swap(col, piv);
            let d = a[col][col];
            if d.abs() < 1e-300 {
                continue;
            }
            let pivot = a[col].clone();
            for (r, row) in a.iter_mut().enumerate() {
                if r != col {
                    let f = row[col] / d;
                    for (x, p) in row.iter_mut().zip(&pivot).skip(col) {
                        *x -= f * p;
                    }
                }
            }
        }
        let beta: Vec<f64> = (0..k)
            .map(|i| if a[i][i].abs() < 1e-300 { 0.0 } else { a[i][k] / a[i][i] })
            .collect();
        match beta.iter().position(|b| *b < 0.0) {
            Some(i) if k > 1 => {
                active.remove(i);
            }
            _ => {
                let mut out = vec![0.0; p];
                for (i, &c) in active.iter().enumerate() {
                    out[c] = beta[i].max(0.0);
                }
                return out;
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Fits the device costs to the measured fit cases (`measured[i]`: the metrics of `cases[i]`).
fn fit(cases: &[Case], measured: &[Vec<(&'static str, f64)>]) -> ContrastiveCost {
    let fit = || cases.iter().zip(measured).filter(|(c, _)| !c.held_out);
    let get = |m: &[(&str, f64)], name: &str| m.iter().find(|(n, _)| *n == name).map_or(f64::NAN, |x| x.1);
    // Logits: t = heads·c0 + FLOPs·c1 + in-batch elements·c2 + queue elements·c3.
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (c, m) in fit().filter(|(c, _)| c.stage == Stage::Head) {
        let heads = match c.w.negatives {
            Negatives::InBatch { .. } => 1.0,
            Negatives::Queue { queues, .. } => queues as f64,
        };
        let (e_in, e_queue) = match c.w.negatives {
            Negatives::InBatch { .. } => (logit_elements(&c.w), 0.0),
            Negatives::Queue { .. } => (0.0, logit_elements(&c.w)),
        };
        x.push(vec![heads, logit_flops(&c.w), e_in, e_queue]);
        y.push(get(m, "time.logits"));
    }
    // Relative errors matter: weight each row by 1/y.
    let xw: Vec<Vec<f64>> = x
        .iter()
        .zip(&y)
        .map(|(r, t)| r.iter().map(|v| v / t).collect())
        .collect();
    let beta = nonneg_least_squares(&xw, &vec![1.0; y.len()]);
    let enc: Vec<_> = fit().filter(|(c, _)| c.stage == Stage::Encoders).collect();
    // Encoders: t = a·F + a·h·F/d + g·b² (seconds per FLOP a·(1 + h/d): the GEMM law's rate d/(d + h), plus the
    // batch-squared input term), least squares with relative weights, every coefficient kept non-negative; the
    // rate's dependence on the width d and on the batch b comes from the fit cases' widths and batches.
    let (ex, ey): (Vec<Vec<f64>>, Vec<f64>) = enc
        .iter()
        .map(|(c, m)| {
            let (f, t) = (encoder_flops(&c.w), get(m, "time.encoders"));
            let b = c.w.per_gpu_batch();
            (vec![f / t, f / (c.w.embed_dim as f64 * t), b * b / t], 1.0)
        })
        .unzip();
    let ab = nonneg_least_squares(&ex, &ey);
    let encoder_s_per_flop = ab[0];
    let encoder_half_dim = if ab[0] > 0.0 { ab[1] / ab[0] } else { 0.0 };
    let encoder_s_per_batch_sq = ab[2];
    let ema_bytes_per_s = median(
        enc.iter()
            .map(|(c, m)| 12.0 * (c.w.video_encoder.params + c.w.text_encoder.params) / get(m, "time.momentum"))
            .collect(),
    );
    let dec: Vec<_> = fit().filter(|(c, _)| c.stage == Stage::Decode).collect();
    let per_frame = |c: &Case, m: &[(&str, f64)]| get(m, "time.load") / (c.w.global_batch * c.w.frames_per_clip) as f64;
    let decode_s_per_frame = median(
        dec.iter()
            .filter(|(c, _)| c.w.cores_per_gpu == 1)
            .map(|(c, m)| per_frame(c, m))
            .collect(),
    );
    let effs: Vec<f64> = dec
        .iter()
        .filter(|(c, _)| c.w.cores_per_gpu > 1)
        .map(|(c, m)| (decode_s_per_frame / per_frame(c, m) - 1.0) / (c.w.cores_per_gpu - 1) as f64)
        .collect();
    ContrastiveCost {
        device: "cpu".into(),
        decode_s_per_frame,
        decode_parallel_efficiency: if effs.is_empty() {
            1.0
        } else {
            median(effs).clamp(0.0, 1.5)
        },
        encoder_s_per_flop,
        encoder_half_dim,
        encoder_s_per_batch_sq,
        logit_overhead_s: beta[0],
        logit_s_per_flop: beta[1],
        logit_s_per_element_in_batch: beta[2],
        logit_s_per_element_queue: beta[3],
        ema_bytes_per_s,
    }
}

/// The machine's 1-minute load average (`/proc/loadavg`), or `unknown`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// Calibration of the contrastive cost model against real runs on this CPU.
pub struct ContrastiveCalibration;

impl Calibration for ContrastiveCalibration {
    fn profile_kind(&self) -> &'static str {
        "contrastive_pretrain"
    }
    fn devices(&self) -> &'static [Device] {
        &[Device::Cpu]
    }
    fn run(&self, req: &CalRequest<'_>) -> Result<Calibrated, Error> {
        // `calibrate` has refused any device outside `devices()` already.
        debug_assert_eq!(req.device, Device::Cpu);
        let seed = req.seed;
        let cases = cases(req.quick);
        let (opts, passes, max_passes) = if req.quick {
            (TimingOpts::quick(), 1, 1)
        } else {
            (
                TimingOpts {
                    warmup: 1,
                    min_samples: 3,
                    max_samples: 7,
                    min_time_s: 0.2,
                    target_sample_s: 1e-3,
                },
                5,
                10,
            )
        };
        let pool = exec::png_frames(16, seed.derive("frames"))?;
        // Interleaved passes over all cases, the fastest pass of each metric kept (each pass a median of samples of
        // the work's on-CPU seconds, see `executors::contrastive`): what other processes on a shared machine still
        // cause (evicted caches, shared memory bandwidth) only adds time, and interleaving spreads it over every case
        // alike instead of a few. After `passes` passes, a case whose two fastest passes still differ by more than
        // `CONVERGED` is measured again (up to `max_passes`): on a loaded machine the fastest of five passes of one
        // memory-bound head moved by 20% between runs (predicted -15% in one, +7% in another). The spread over the passes is reported, to tell
        // noise from model error.
        const CONVERGED: f64 = 0.03;
        let converged = |r: &[Vec<(&'static str, f64)>]| {
            r.first().is_some_and(|m0| {
                m0.iter().all(|(name, _)| {
                    let mut v: Vec<f64> = r
                        .iter()
                        .filter_map(|m| m.iter().find(|(n, _)| n == name).map(|x| x.1))
                        .collect();
                    v.sort_by(f64::total_cmp);
                    v.len() >= 2 && v[1] <= v[0] * (1.0 + CONVERGED)
                })
            })
        };
        let mut runs: Vec<Vec<Vec<(&'static str, f64)>>> = vec![Vec::new(); cases.len()];
        for pass in 0..max_passes {
            for (i, case) in cases.iter().enumerate() {
                if pass >= passes && converged(&runs[i]) {
                    continue;
                }
                if req.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(Error::Interrupted);
                }
                (req.progress)(format!(
                    "pass {} of {passes} (up to {max_passes} until the fastest two agree within 3%): {} ({} of {})",
                    pass + 1,
                    case.label(),
                    i + 1,
                    cases.len()
                ));
                runs[i].push(measure_case(case, &opts, seed.index(i as u64), &pool)?);
            }
        }
        let unconverged = runs.iter().filter(|r| !converged(r)).count();
        let over_passes = |r: &[Vec<(&'static str, f64)>], name: &str| -> Vec<f64> {
            r.iter()
                .filter_map(|m| m.iter().find(|(n, _)| *n == name).map(|x| x.1))
                .collect()
        };
        let measured: Vec<Vec<(&'static str, f64)>> = runs
            .iter()
            .map(|r| {
                r[0].iter()
                    .map(|(name, _)| (*name, over_passes(r, name).into_iter().fold(f64::INFINITY, f64::min)))
                    .collect()
            })
            .collect();
        // Spread of each case's metric over the passes: (slowest - fastest) / fastest.
        let spreads: Vec<f64> = runs
            .iter()
            .flat_map(|r| {
                r[0].iter().filter_map(|(name, _)| {
                    let v = over_passes(r, name);
                    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = v.iter().copied().fold(0.0, f64::max);
                    (lo > 0.0).then(|| (hi - lo) / lo)
                })
            })
            .collect();
        let cost = fit(&cases, &measured);
        let study = "calibrate-contrastive_pretrain-cpu";
        let mut records = Vec::new();
        let mut held_out = Vec::new();
        for (case, m) in cases.iter().zip(&measured) {
            let set = if case.held_out { "held-out" } else { "fit" };
            let label = format!("{} [{set}]", case.label());
            for &(name, value) in m {
                if name == "time.momentum" && value == 0.0 {
                    continue;
                }
                let cal = predict(&case.w, name, Some(&cost));
                let uncal = predict(&case.w, name, None);
                let rec = |backend: &str, f: Fidelity, v: f64| {
                    Record::from_metric(
                        study,
                        ContrastivePretrain::KIND,
                        &label,
                        backend,
                        f,
                        seed.0,
                        &Metric::new(name, Unit::Seconds, v),
                    )
                };
                records.push(rec("cpu", Fidelity::Measured, value));
                records.push(rec("analytical-calibrated", Fidelity::Analytical, cal));
                records.push(rec("analytical", Fidelity::Analytical, uncal));
                if case.held_out {
                    held_out.push(HeldOut {
                        case: case.label(),
                        metric: name.into(),
                        measured: value,
                        calibrated: cal,
                        uncalibrated: Some(uncal),
                    });
                }
            }
        }
        let errs: Vec<f64> = held_out.iter().map(|h| h.calibrated_error().abs()).collect();
        let worst = errs.iter().copied().fold(0.0f64, f64::max);
        let device = trainlab_executors::cpu::cpu_device_description();
        let prov = provenance(device.clone(), cases.iter().map(Case::label).collect());
        let notes = vec![
            format!("device: {device}"),
            format!(
                "fitted: decode {:.3} ms/frame on one core (PNG 224x224 standing in for video), parallel efficiency \
                 {:.2}; encoders {:.1} GFLOP/s at large width, half rate at width {:.0}, + {:.2e} s per squared batch; logits {:.2e} s + {:.1} GFLOP/s + {:.2} ns/element in-batch, {:.2} ns/element queue; EMA {:.1} \
                 GB/s",
                1e3 * cost.decode_s_per_frame,
                cost.decode_parallel_efficiency,
                1e-9 / cost.encoder_s_per_flop,
                cost.encoder_half_dim,
                cost.encoder_s_per_batch_sq,
                cost.logit_overhead_s,
                if cost.logit_s_per_flop > 0.0 {
                    1e-9 / cost.logit_s_per_flop
                } else {
                    f64::INFINITY
                },
                1e9 * cost.logit_s_per_element_in_batch,
                1e9 * cost.logit_s_per_element_queue,
                1e-9 * cost.ema_bytes_per_s
            ),
            format!(
                "measurement spread over {passes}-{max_passes} passes ((slowest - fastest) / fastest per case and \
                 metric): median {:.1}%, worst {:.1}%; {unconverged} of {} cases without two passes within 3% after \
                 {max_passes}; machine load (1-minute average) {}",
                100.0 * median(spreads.clone()),
                100.0 * spreads.iter().copied().fold(0.0f64, f64::max),
                cases.len(),
                load_average()
            ),
            format!(
                "held-out: median |error| {:.1}%, worst {:.1}% over {} metrics",
                100.0 * median(errs.clone()),
                100.0 * worst,
                errs.len()
            ),
        ];
        let json = serde_json::json!({
            "device": device, "cost": cost,
            "held_out_median_abs_error": median(errs),
            "held_out_max_abs_error": worst,
            "measurement_spread_median": median(spreads.clone()),
            "cases_unconverged": unconverged,
        });
        Ok(Calibrated {
            profile_kind: "contrastive_pretrain",
            profile_toml: envelope("contrastive_pretrain", prov, cost, held_out.clone())?,
            held_out,
            records,
            notes,
            json,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's accuracy claim for the committed calibration, checked in CI: its parameters, put through today's
    /// model, reproduce the profile's held-out predictions, with a held-out median error under 5% and every held-out
    /// row within 10% (the goal; the committed run: 1.4% and 9.8%, the other run of the same code 0.9% and
    /// 8.8%; earlier fit grids and models gave worst rows of 8.0% to 30.8%, see the README).
    #[test]
    fn the_committed_calibration_reproduces_its_held_out_table_and_errors() {
        let text = include_str!("../../datasets/calibration/contrastive-cpu/profile-contrastive_pretrain-cpu.toml");
        let p: trainlab_core::Profile<ContrastiveCost> = toml::from_str(text).expect("the committed profile");
        let held: Vec<Case> = cases(false).into_iter().filter(|c| c.held_out).collect();
        let mut errors = Vec::new();
        for h in &p.held_out {
            // Decode cases are labelled by worker count, which follows this machine's cores: match what exists.
            let Some(case) = held.iter().find(|c| c.label() == h.case) else {
                continue;
            };
            let again = predict(&case.w, &h.metric, Some(&p.params));
            assert!(
                (again - h.calibrated).abs() <= 1e-9 * h.calibrated.abs(),
                "{} {}: the model now predicts {again}, the profile says {}",
                h.case,
                h.metric,
                h.calibrated
            );
            errors.push(((again - h.measured) / h.measured).abs());
        }
        assert!(
            errors.len() >= 8,
            "only {} held-out rows matched today's cases",
            errors.len()
        );
        errors.sort_by(f64::total_cmp);
        let (median, worst) = (errors[errors.len() / 2], errors[errors.len() - 1]);
        assert!(median < 0.05 && worst < 0.10, "held-out median {median}, worst {worst}");
    }

    #[test]
    fn least_squares_recovers_nonnegative_costs() {
        let x: Vec<Vec<f64>> = (1..8).map(|i| vec![1.0, i as f64, (i * i) as f64]).collect();
        let y: Vec<f64> = x.iter().map(|r| 0.5 * r[0] + 2.0 * r[1] + 0.25 * r[2]).collect();
        let b = nonneg_least_squares(&x, &y);
        for (got, want) in b.iter().zip([0.5, 2.0, 0.25]) {
            assert!((got - want).abs() < 1e-9, "{b:?}");
        }
        // A negative intercept is dropped and the rest refitted.
        let y2: Vec<f64> = x.iter().map(|r| -1.0 + 3.0 * r[1]).collect();
        let b2 = nonneg_least_squares(&x, &y2);
        assert_eq!(b2[0], 0.0);
        assert!(b2.iter().all(|v| *v >= 0.0));
    }

    #[test]
    fn the_cpu_run_answers_a_scaled_workload_whose_memory_the_closed_form_matches() {
        let w = cpu_workload(8192, 512, Some((65_536, 3)), 12, 64);
        let x = on_cpu(&w).expect("scaled");
        assert_eq!((x.global_batch, x.embed_dim), (CPU_MAX_BATCH, CPU_MAX_DIM));
        assert!(x.cores_per_gpu <= cores() && x.global_batch * x.frames_per_clip <= CPU_MAX_FRAMES.max(x.global_batch));
        assert_eq!(on_cpu(&x), None, "a scaled workload is answered as it is");
        // The executor's logit and queue buffers are the closed form's memory for the same shapes.
        for w in [
            cpu_workload(96, 32, None, 1, 1),
            cpu_workload(64, 16, Some((640, 3)), 1, 1),
        ] {
            let head = exec::Head::new(Shapes::of(&w), Seed(1), 1).expect("head");
            let o = step_cost(&w);
            assert_eq!(head.logits_bytes() as f64, o.logits_bytes);
            assert_eq!(head.queue_bytes() as f64, o.queue_bytes);
            assert_eq!(Shapes::of(&w).logit_elements() as f64 * 4.0, o.logits_bytes);
        }
    }
}
