//! Real contrastive pre-training steps on this CPU (fp32): the `cpu` measured backend of the `contrastive_pretrain`
//! kind, and the measured pieces its calibration fits.
//!
//! What runs, per step of one GPU's batch `b` with embedding width `d` (all GEMMs on the crate's one CPU GEMM):
//! - **Encoders** stand-ins: one linear projection per modality from [`INPUT_DIM`] seeded features to `d`
//!   (`params = INPUT_DIM·d`, one token), forward and backward (weight and input gradients: `6·params` FLOPs per
//!   sample, the closed form's accounting), and with a momentum key network the key projections' forward
//!   (`2·params`).
//! - **InfoNCE head** (van den Oord et al. 2018; CLIP's symmetric form, Radford et al. 2021 Fig. 3; MoCo's queue,
//!   He et al. 2020 Alg. 1), temperature [`TEMPERATURE`], on seeded L2-normalised embeddings:
//!   - in-batch: `S = Q Kᵀ/τ` (B×B), loss `(CE_rows(S) + CE_cols(S))/2` with the diagonal as targets, gradients
//!     `G = (softmax_rows(S) + softmax_cols(S) − 2I)/(2B)`, `dQ = G K/τ`, `dK = Gᵀ Q/τ` (`6·B²·d` FLOPs);
//!   - queue: per queue, the queries of one modality against `C = [keys of the batch; queue]` from the momentum key
//!     network of the other (VICTOR's dual alignment), `S = Q Cᵀ/τ` (b×(b+K)), CE with target `i` for row `i`,
//!     `dQ = (softmax(S) − onehot)/b · C/τ`; keys take no gradient (`4·b·(b+K)·d` FLOPs); then the batch's keys enter
//!     the FIFO queue, evicting the oldest ([`KeyQueue`]).
//! - **Momentum update**: `θ_k ← m·θ_k + (1 − m)·θ_q` over the key projections ([`ema`]).
//! - **Loader**: decoding `b × frames` frames with `cores` threads. No video decoder is available from the
//!   package registries this build uses, so **PNG decoding stands in for video decoding**: 224×224 RGB frames
//!   generated in memory from seeded smooth noise (a coarse random grid bilinearly upsampled plus fine noise, so the
//!   filters and deflate have real work), decoded with the `png` crate.
//!
//! The stages are timed apart through [`crate::timing`] (warm-up, medians, seeded non-zero inputs; one-thread stages
//! and each decode worker by their on-CPU seconds, so a shared machine's other processes do not count); the step is
//! `max(load, encoders + logits + momentum)`, as a prefetching loader overlaps decoding with the step (the stages
//! are not run concurrently here). Such a run answers a workload on the `cpu` device preset, scaled down (see
//! `src/kinds/contrastive.rs`); it refuses any other.
use crate::cpu::MatRef;
use crate::timing::{
    TimingOpts, black_box, ensure_not_all_zero, random_f32, thread_on_cpu_s, time_fn, time_fn_on_cpu, time_samples,
};
use rayon::prelude::*;
use trainlab_core::workloads::contrastive::{ContrastiveOutcome, ContrastivePretrain, Negatives};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, Seed, Workload};

/// Input features of the encoder stand-ins.
pub const INPUT_DIM: usize = 512;
/// The InfoNCE temperature (CLIP's initial value, MoCo's 0.07).
pub const TEMPERATURE: f32 = 0.07;
/// Side of a generated frame, pixels (CLIP's input resolution).
pub const FRAME_SIDE: u32 = 224;
/// Largest logit matrix the head allocates, elements (1 GiB of fp32).
pub const MAX_LOGITS: u64 = 1 << 28;

#[allow(clippy::too_many_arguments)]
fn mm(m: usize, n: usize, k: usize, a: MatRef<'_, f32>, b: MatRef<'_, f32>, c: &mut [f32], acc: bool, t: usize) {
    // Shapes come from the validated workload: a mismatch is a bug here, not bad input.
    crate::cpu::gemm(m, n, k, a, b, c, acc, t).expect("contrastive matrix shapes are consistent");
}

/// Row-wise log-sum-exp and softmax of a row-major `rows × cols` matrix, in place (each row becomes its softmax);
/// returns the log-sum-exp of every row.
fn softmax_rows(s: &mut [f32], cols: usize) -> Vec<f32> {
    s.chunks_mut(cols)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for x in row.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|x| *x *= inv);
            max + sum.ln()
        })
        .collect()
}

/// Symmetric in-batch InfoNCE of `q`, `k` (both `n × d`, row-major): the loss and, if `grad`, `(dq, dk)`.
/// `s` and `t` are `n × n` work buffers (the logit matrix and its column softmax, both row-major).
#[allow(clippy::too_many_arguments)]
pub fn in_batch(
    q: &[f32],
    k: &[f32],
    n: usize,
    d: usize,
    s: &mut [f32],
    t: &mut [f32],
    grad: Option<(&mut [f32], &mut [f32])>,
    threads: usize,
) -> f64 {
    let inv_tau = 1.0 / TEMPERATURE;
    mm(
        n,
        n,
        d,
        MatRef::row_major(q, d),
        MatRef::transposed(k, d),
        s,
        false,
        threads,
    );
    s.iter_mut().for_each(|x| *x *= inv_tau);
    let diag: Vec<f32> = (0..n).map(|i| s[i * n + i]).collect();
    // Column softmax into `t` (same row-major layout: row by row, so no strided pass over the matrix).
    let mut cmax = vec![f32::NEG_INFINITY; n];
    for row in s.chunks(n) {
        cmax.iter_mut().zip(row).for_each(|(m, &x)| *m = m.max(x));
    }
    let mut csum = vec![0.0f32; n];
    for (row, trow) in s.chunks(n).zip(t.chunks_mut(n)) {
        for ((x, out), (m, sum)) in row.iter().zip(trow.iter_mut()).zip(cmax.iter().zip(csum.iter_mut())) {
            let e = (x - m).exp();
            *out = e;
            *sum += e;
        }
    }
    let cinv: Vec<f32> = csum.iter().map(|c| 1.0 / c).collect();
    for trow in t.chunks_mut(n) {
        trow.iter_mut().zip(&cinv).for_each(|(x, c)| *x *= c);
    }
    let lse_c: Vec<f32> = cmax.iter().zip(&csum).map(|(m, c)| m + c.ln()).collect();
    let lse_r = softmax_rows(s, n);
    let loss = (0..n)
        .map(|i| f64::from(lse_r[i] - diag[i]) + f64::from(lse_c[i] - diag[i]))
        .sum::<f64>()
        / (2 * n) as f64;
    if let Some((dq, dk)) = grad {
        // G = (P_rows + P_cols - 2I) / 2n, times 1/τ for dS/dQ: written into s.
        let scale = inv_tau / (2 * n) as f32;
        for (i, (row, trow)) in s.chunks_mut(n).zip(t.chunks(n)).enumerate() {
            row.iter_mut().zip(trow).for_each(|(x, c)| *x = (*x + c) * scale);
            row[i] -= 2.0 * scale;
        }
        mm(
            n,
            d,
            n,
            MatRef::row_major(s, n),
            MatRef::row_major(k, d),
            dq,
            false,
            threads,
        );
        mm(
            n,
            d,
            n,
            MatRef::transposed(s, n),
            MatRef::row_major(q, d),
            dk,
            false,
            threads,
        );
    }
    loss
}

/// InfoNCE of queries `q` (`n × d`) against candidates `c` (`m × d`, row `i < n` the positive of query `i`): the loss
/// and, if given, `dq`. `s` is the `n × m` logit buffer.
#[allow(clippy::too_many_arguments)]
pub fn against_keys(
    q: &[f32],
    c: &[f32],
    n: usize,
    m: usize,
    d: usize,
    s: &mut [f32],
    dq: Option<&mut [f32]>,
    threads: usize,
) -> f64 {
    let inv_tau = 1.0 / TEMPERATURE;
    mm(
        n,
        m,
        d,
        MatRef::row_major(q, d),
        MatRef::transposed(c, d),
        s,
        false,
        threads,
    );
    s.iter_mut().for_each(|x| *x *= inv_tau);
    let pos: Vec<f32> = (0..n).map(|i| s[i * m + i]).collect();
    let lse = softmax_rows(s, m);
    let loss = (0..n).map(|i| f64::from(lse[i] - pos[i])).sum::<f64>() / n as f64;
    if let Some(dq) = dq {
        let scale = inv_tau / n as f32;
        for i in 0..n {
            s[i * m + i] -= 1.0;
        }
        s.iter_mut().for_each(|x| *x *= scale);
        mm(
            n,
            d,
            m,
            MatRef::row_major(s, m),
            MatRef::row_major(c, d),
            dq,
            false,
            threads,
        );
    }
    loss
}

/// Scales every row of a row-major matrix with `d` columns to unit length (CLIP and MoCo compare L2-normalised
/// embeddings, so the logits lie in `[-1/τ, 1/τ]`; unnormalised random embeddings would instead push most
/// `exp` results into the slow subnormal range).
pub fn normalize_rows(x: &mut [f32], d: usize) {
    for row in x.chunks_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

/// A FIFO queue of `size` keys of width `d` (MoCo): a ring buffer whose oldest keys are replaced first.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyQueue {
    /// The keys, `size × d`, in ring order.
    pub keys: Vec<f32>,
    /// Key width.
    pub d: usize,
    /// Next row to overwrite (the oldest key).
    pub head: usize,
}

impl KeyQueue {
    /// A queue filled with seeded random unit keys (MoCo initialises its queue randomly and normalises keys).
    pub fn new(size: usize, d: usize, seed: Seed) -> KeyQueue {
        let mut keys = random_f32(seed, size * d);
        normalize_rows(&mut keys, d);
        KeyQueue { keys, d, head: 0 }
    }
    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.len() / self.d
    }
    /// True when it holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    /// Enqueues the rows of `batch` (`n × d`), evicting the `n` oldest keys.
    pub fn enqueue(&mut self, batch: &[f32]) {
        let size = self.len();
        for row in batch.chunks(self.d) {
            self.keys[self.head * self.d..(self.head + 1) * self.d].copy_from_slice(row);
            self.head = (self.head + 1) % size;
        }
    }
    /// Key `age` places from the newest (0: the last enqueued).
    pub fn newest(&self, age: usize) -> &[f32] {
        let size = self.len();
        let i = (self.head + size - 1 - age % size) % size;
        &self.keys[i * self.d..(i + 1) * self.d]
    }
}

/// The momentum update `key ← m·key + (1 − m)·query`.
pub fn ema(key: &mut [f32], query: &[f32], m: f32) {
    key.iter_mut().zip(query).for_each(|(k, q)| *k = m * *k + (1.0 - m) * q);
}

/// The shapes one step of `w` computes on: per-GPU batch, width and negatives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shapes {
    /// Samples per step on this device.
    pub batch: usize,
    /// Embedding width.
    pub d: usize,
    /// Queue size and count (`None`: in-batch).
    pub queue: Option<(usize, usize)>,
    /// Momentum of the key network, if any.
    pub momentum: Option<f32>,
}

impl Shapes {
    /// The shapes of `w` on one device.
    pub fn of(w: &ContrastivePretrain) -> Shapes {
        Shapes {
            batch: w.per_gpu_batch() as usize,
            d: w.embed_dim as usize,
            queue: match w.negatives {
                Negatives::InBatch { .. } => None,
                Negatives::Queue { size, queues } => Some((size as usize, queues as usize)),
            },
            momentum: w.momentum.map(|m| m as f32),
        }
    }
    /// Elements of the logit matrices held for the backward pass (`memory.logits / 4`).
    pub fn logit_elements(&self) -> u64 {
        let b = self.batch as u64;
        match self.queue {
            None => b * b,
            Some((k, q)) => b * (b + k as u64) * q as u64,
        }
    }
}

/// The contrastive head of one step: embeddings, queues and work buffers, built once, run many times.
pub struct Head {
    shapes: Shapes,
    qv: Vec<f32>,
    qt: Vec<f32>,
    kv: Vec<f32>,
    kt: Vec<f32>,
    queues: Vec<KeyQueue>,
    logits: Vec<Vec<f32>>,
    cand: Vec<f32>,
    work: Vec<f32>,
    dqv: Vec<f32>,
    dqt: Vec<f32>,
    threads: usize,
}

impl Head {
    /// Seeded embeddings and queues for `shapes`.
    pub fn new(shapes: Shapes, seed: Seed, threads: usize) -> Result<Head, Error> {
        if shapes.logit_elements() > MAX_LOGITS {
            return Err(Error::Unsupported(format!(
                "{} logits exceed the {MAX_LOGITS} this CPU head allocates",
                shapes.logit_elements()
            )));
        }
        let (b, d) = (shapes.batch, shapes.d);
        let emb = |l: &str| {
            let mut e = random_f32(seed.derive(l), b * d);
            normalize_rows(&mut e, d);
            e
        };
        let (queues, logits, cand) = match shapes.queue {
            None => (Vec::new(), vec![vec![0.0; b * b]], Vec::new()),
            Some((k, q)) => (
                (0..q)
                    .map(|i| KeyQueue::new(k, d, seed.derive("queue").index(i as u64)))
                    .collect(),
                (0..q).map(|_| vec![0.0; b * (b + k)]).collect(),
                vec![0.0; (b + k) * d],
            ),
        };
        Ok(Head {
            shapes,
            qv: emb("qv"),
            qt: emb("qt"),
            kv: emb("kv"),
            kt: emb("kt"),
            work: if shapes.queue.is_none() {
                vec![0.0; b * b]
            } else {
                Vec::new()
            },
            queues,
            logits,
            cand,
            dqv: vec![0.0; b * d],
            dqt: vec![0.0; b * d],
            threads,
        })
    }

    /// Bytes of the logit matrices it holds.
    pub fn logits_bytes(&self) -> u64 {
        self.logits.iter().map(|l| l.len() as u64 * 4).sum()
    }

    /// Bytes of its key queues.
    pub fn queue_bytes(&self) -> u64 {
        self.queues.iter().map(|q| q.keys.len() as u64 * 4).sum()
    }

    /// One forward and backward pass of the head (and the enqueue); returns the loss.
    pub fn step(&mut self) -> f64 {
        let (b, d, t) = (self.shapes.batch, self.shapes.d, self.threads);
        match self.shapes.queue {
            None => in_batch(
                &self.qv,
                &self.qt,
                b,
                d,
                &mut self.logits[0],
                &mut self.work,
                Some((&mut self.dqv, &mut self.dqt)),
                t,
            ),
            Some((k, _)) => {
                let mut loss = 0.0;
                for (j, (queue, s)) in self.queues.iter_mut().zip(&mut self.logits).enumerate() {
                    // Alternate directions: video queries against text keys, then text against video.
                    let (q, keys, dq) = if j % 2 == 0 {
                        (&self.qv, &self.kt, &mut self.dqv)
                    } else {
                        (&self.qt, &self.kv, &mut self.dqt)
                    };
                    self.cand[..b * d].copy_from_slice(keys);
                    self.cand[b * d..].copy_from_slice(&queue.keys);
                    loss += against_keys(q, &self.cand, b, b + k, d, s, Some(dq), t);
                    queue.enqueue(keys);
                }
                loss
            }
        }
    }
}

/// The encoder stand-ins: a linear projection per modality (query and, with a key network, key copies).
pub struct Encoders {
    b: usize,
    d: usize,
    xv: Vec<f32>,
    xt: Vec<f32>,
    wv: Vec<f32>,
    wt: Vec<f32>,
    key: Option<(Vec<f32>, Vec<f32>, f32)>,
    out: Vec<f32>,
    dout: Vec<f32>,
    dw: Vec<f32>,
    dx: Vec<f32>,
    threads: usize,
}

impl Encoders {
    /// Seeded features and weights for `shapes`.
    pub fn new(shapes: Shapes, seed: Seed, threads: usize) -> Encoders {
        let (b, d) = (shapes.batch, shapes.d);
        let r = |l: &str, n| random_f32(seed.derive(l), n);
        Encoders {
            b,
            d,
            xv: r("xv", b * INPUT_DIM),
            xt: r("xt", b * INPUT_DIM),
            wv: r("wv", INPUT_DIM * d),
            wt: r("wt", INPUT_DIM * d),
            key: shapes
                .momentum
                .map(|m| (r("wv", INPUT_DIM * d), r("wt", INPUT_DIM * d), m)),
            out: vec![0.0; b * d],
            dout: r("dout", b * d),
            dw: vec![0.0; INPUT_DIM * d],
            dx: vec![0.0; b * INPUT_DIM],
            threads,
        }
    }

    /// Parameters of the query projections (and of the key network: the same).
    pub fn params(&self) -> usize {
        2 * INPUT_DIM * self.d
    }

    /// Forward and backward of both query projections, and the key projections' forward.
    pub fn step(&mut self) {
        let (b, d, p, t) = (self.b, self.d, INPUT_DIM, self.threads);
        for (x, w) in [(&self.xv, &self.wv), (&self.xt, &self.wt)] {
            mm(
                b,
                d,
                p,
                MatRef::row_major(x, p),
                MatRef::row_major(w, d),
                &mut self.out,
                false,
                t,
            );
            // dW = Xᵀ dOut, dX = dOut Wᵀ.
            mm(
                p,
                d,
                b,
                MatRef::transposed(x, p),
                MatRef::row_major(&self.dout, d),
                &mut self.dw,
                false,
                t,
            );
            mm(
                b,
                p,
                d,
                MatRef::row_major(&self.dout, d),
                MatRef::transposed(w, d),
                &mut self.dx,
                false,
                t,
            );
        }
        if let Some((kv, kt, _)) = &self.key {
            for (x, w) in [(&self.xv, kv), (&self.xt, kt)] {
                mm(
                    b,
                    d,
                    p,
                    MatRef::row_major(x, p),
                    MatRef::row_major(w, d),
                    &mut self.out,
                    false,
                    t,
                );
            }
        }
        black_box(&self.out);
    }

    /// The momentum update of both key projections (nothing without a key network).
    pub fn momentum(&mut self) {
        if let Some((kv, kt, m)) = &mut self.key {
            ema(kv, &self.wv, *m);
            ema(kt, &self.wt, *m);
        }
    }
}

/// `count` seeded 224×224 RGB frames, PNG-encoded (smooth noise: a coarse 8-pixel grid bilinearly upsampled, plus
/// ±4 levels of fine noise).
pub fn png_frames(count: usize, seed: Seed) -> Result<Vec<Vec<u8>>, Error> {
    use rand::RngExt;
    let side = FRAME_SIDE as usize;
    let cell = 8usize;
    let g = side / cell + 2;
    (0..count)
        .map(|i| {
            let mut rng = seed.index(i as u64).rng();
            let grid: Vec<f32> = (0..g * g * 3).map(|_| rng.random_range(0.0f32..255.0)).collect();
            let mut px = vec![0u8; side * side * 3];
            for y in 0..side {
                for x in 0..side {
                    let (gy, gx) = (y / cell, x / cell);
                    let (fy, fx) = ((y % cell) as f32 / cell as f32, (x % cell) as f32 / cell as f32);
                    for c in 0..3 {
                        let at = |yy: usize, xx: usize| grid[(yy * g + xx) * 3 + c];
                        let v = at(gy, gx) * (1.0 - fy) * (1.0 - fx)
                            + at(gy, gx + 1) * (1.0 - fy) * fx
                            + at(gy + 1, gx) * fy * (1.0 - fx)
                            + at(gy + 1, gx + 1) * fy * fx
                            + rng.random_range(-4.0f32..4.0);
                        px[(y * side + x) * 3 + c] = v.clamp(0.0, 255.0) as u8;
                    }
                }
            }
            let mut out = Vec::new();
            let mut enc = png::Encoder::new(&mut out, FRAME_SIDE, FRAME_SIDE);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let e = |e: png::EncodingError| Error::Backend(format!("encoding a PNG frame: {e}"));
            let mut wr = enc.write_header().map_err(e)?;
            wr.write_image_data(&px).map_err(e)?;
            wr.finish().map_err(e)?;
            Ok(out)
        })
        .collect()
}

/// Decodes one PNG frame; returns a checksum of its pixels (so the work cannot be skipped).
pub fn decode_png(bytes: &[u8]) -> Result<u64, Error> {
    let e = |e: png::DecodingError| Error::Backend(format!("decoding a PNG frame: {e}"));
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().map_err(e)?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(e)?;
    Ok(buf[..info.buffer_size()]
        .iter()
        .step_by(97)
        .map(|&v| u64::from(v))
        .sum())
}

/// The measured loader stage: decoding `frames` frames (cycling through `pool`) on `threads` threads. The frames are
/// split into `threads` equal shares, one task each; a sample is the largest share's **on-CPU** seconds
/// ([`thread_on_cpu_s`]): the stage's time with one dedicated core per worker, which is what "cores per GPU" means.
/// On a shared machine the wall time would add the turns other processes take on the cores; contention for caches
/// and memory between the workers still shows. Wall time where the thread clock is unavailable.
pub fn time_decode(
    pool: &[Vec<u8>],
    frames: usize,
    threads: usize,
    opts: &TimingOpts,
    cancel: &dyn Fn() -> bool,
) -> Result<crate::timing::Timing, Error> {
    let tp = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::Backend(format!("building a decode pool of {threads} threads: {e}")))?;
    let share = frames.div_ceil(threads.max(1)).max(1);
    let shares: Vec<std::ops::Range<usize>> = (0..frames).step_by(share).map(|a| a..(a + share).min(frames)).collect();
    let once = || -> Result<f64, Error> {
        if cancel() {
            return Err(Error::Interrupted);
        }
        let wall = std::time::Instant::now();
        let per_share: Result<Vec<(u64, Option<f64>)>, Error> = tp.install(|| {
            shares
                .par_iter()
                .map(|r| {
                    let t0 = thread_on_cpu_s();
                    let mut sum = 0u64;
                    for i in r.clone() {
                        sum += decode_png(&pool[i % pool.len()])?;
                    }
                    Ok((sum, t0.zip(thread_on_cpu_s()).map(|(a, b)| b - a)))
                })
                .collect()
        });
        let per_share = per_share?;
        let wall = wall.elapsed().as_secs_f64();
        black_box(per_share.iter().map(|x| x.0).sum::<u64>());
        let busiest = per_share
            .iter()
            .map(|x| x.1)
            .try_fold(0.0f64, |m, t| t.map(|t| m.max(t)));
        Ok(busiest.unwrap_or(wall))
    };
    for _ in 0..opts.warmup {
        once()?;
    }
    time_samples(opts, once)
}

/// Medians of one measured step's stages, seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Encoder stand-ins, forward and backward (and the key forward).
    pub encoders_s: f64,
    /// The InfoNCE head, forward and backward (and the enqueue).
    pub logits_s: f64,
    /// The momentum update.
    pub momentum_s: f64,
    /// Decoding the batch's frames on `cores_per_gpu` threads.
    pub load_s: f64,
    /// Bytes of the logit matrices the head held.
    pub logits_bytes: u64,
    /// Bytes of the key queues.
    pub queue_bytes: u64,
    /// Bytes of the key network (fp32 key projections).
    pub key_network_bytes: u64,
}

/// [`time_fn_on_cpu`] for work on one thread (the caller's: the GEMMs run inline), [`time_fn`] otherwise.
fn time_one_thread<F>(opts: &TimingOpts, threads: usize, f: F) -> Result<crate::timing::Timing, Error>
where
    F: FnMut() -> Result<(), Error>,
{
    if threads <= 1 {
        time_fn_on_cpu(opts, f)
    } else {
        time_fn(opts, f)
    }
}

/// Times the head of `shapes` (`threads` GEMM threads; on one thread its on-CPU seconds).
pub fn time_head(shapes: Shapes, opts: &TimingOpts, seed: Seed, threads: usize) -> Result<(f64, u64), Error> {
    let mut head = Head::new(shapes, seed.derive("head"), threads)?;
    ensure_not_all_zero("qv", &head.qv)?;
    let t = time_one_thread(opts, threads, || {
        black_box(head.step());
        Ok(())
    })?;
    Ok((t.median_s(), head.logits_bytes()))
}

/// Times the encoder stand-ins of `shapes` and their momentum update (0 without a key network): medians, seconds
/// (on-CPU seconds where the work is on one thread).
pub fn time_encoders(shapes: Shapes, opts: &TimingOpts, seed: Seed, threads: usize) -> Result<(f64, f64), Error> {
    let mut enc = Encoders::new(shapes, seed.derive("encoders"), threads);
    let encoders_s = time_one_thread(opts, threads, || {
        enc.step();
        Ok(())
    })?
    .median_s();
    let momentum_s = if shapes.momentum.is_some() {
        time_fn_on_cpu(opts, || {
            enc.momentum();
            Ok(())
        })?
        .median_s()
    } else {
        0.0
    };
    Ok((encoders_s, momentum_s))
}

/// Measures every stage of one step of `w` (which must be on the `cpu` device preset, one device).
pub fn measure(w: &ContrastivePretrain, opts: &TimingOpts, seed: Seed, ctx: &RunCtx) -> Result<Measured, Error> {
    let shapes = Shapes::of(w);
    // One GEMM thread, as the calibration measures: on a shared machine one core is far more repeatable.
    let threads = 1;
    let (encoders_s, momentum_s) = time_encoders(shapes, opts, seed, threads)?;
    if ctx.cancelled() {
        return Err(Error::Interrupted);
    }
    let (logits_s, logits_bytes) = time_head(shapes, opts, seed, threads)?;
    let head = Head::new(shapes, seed.derive("head"), threads)?;
    if ctx.cancelled() {
        return Err(Error::Interrupted);
    }
    let pool = png_frames(16, seed.derive("frames"))?;
    let frames = shapes.batch * w.frames_per_clip as usize;
    let load_s = time_decode(&pool, frames, w.cores_per_gpu as usize, opts, &|| ctx.cancelled())?.median_s();
    Ok(Measured {
        encoders_s,
        logits_s,
        momentum_s,
        load_s,
        logits_bytes,
        queue_bytes: head.queue_bytes(),
        key_network_bytes: if shapes.momentum.is_some() {
            4 * 2 * (INPUT_DIM * shapes.d) as u64
        } else {
            0
        },
    })
}

/// The measured backend: real runs of the scaled workload on this CPU.
#[derive(Debug, Clone)]
pub struct ContrastiveCpu {
    /// How each stage is timed.
    pub timing: TimingOpts,
}

impl Default for ContrastiveCpu {
    fn default() -> Self {
        ContrastiveCpu {
            timing: TimingOpts {
                warmup: 1,
                min_samples: 3,
                max_samples: 5,
                min_time_s: 0.0,
                target_sample_s: 1e-3,
            },
        }
    }
}

impl Backend<ContrastivePretrain> for ContrastiveCpu {
    fn name(&self) -> &str {
        "cpu"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Measured
    }
    fn run(&mut self, w: &ContrastivePretrain, ctx: &mut RunCtx) -> Result<ContrastiveOutcome, Error> {
        w.validate()?;
        if w.cluster.gpu.name != "cpu" || w.cluster.gpus() != 1 {
            return Err(Error::Unsupported(format!(
                "the CPU run answers workloads on one `cpu` device, not {} x {}",
                w.cluster.gpus(),
                w.cluster.gpu.name
            )));
        }
        let m = measure(w, &self.timing, ctx.seed.derive("contrastive-cpu"), ctx)?;
        let gpu_s = m.encoders_s + m.logits_s + m.momentum_s;
        let step_s = gpu_s.max(m.load_s);
        let bg = w.global_batch as f64;
        Ok(ContrastiveOutcome {
            load_s: m.load_s,
            encoders_s: m.encoders_s,
            logits_s: m.logits_s,
            momentum_s: m.momentum_s,
            comm_s: 0.0,
            step_s,
            cores_needed: m.load_s * w.cores_per_gpu as f64 / gpu_s,
            logits_bytes: m.logits_bytes as f64,
            queue_bytes: m.queue_bytes as f64,
            key_network_bytes: m.key_network_bytes as f64,
            days: w.samples_per_epoch * w.epochs / bg * step_s / 86_400.0,
            samples_per_s: bg / step_s,
            loader_bound: m.load_s > gpu_s,
            gpu_idle_fraction: 1.0 - gpu_s / step_s,
            queue_occupancy: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f64s(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&v| f64::from(v)).collect()
    }

    /// Central differences of `f` at every coordinate of `x` (fp32 perturbation `h`).
    fn numeric(x: &[f32], h: f32, mut f: impl FnMut(&[f32]) -> f64) -> Vec<f64> {
        let mut x = x.to_vec();
        (0..x.len())
            .map(|i| {
                let v = x[i];
                x[i] = v + h;
                let up = f(&x);
                x[i] = v - h;
                let down = f(&x);
                x[i] = v;
                (up - down) / (2.0 * f64::from(h))
            })
            .collect()
    }

    fn close(a: &[f64], b: &[f64], what: &str) {
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 2e-2 * scale + 1e-4,
                "{what}[{i}]: analytic {x} numeric {y} (scale {scale})"
            );
        }
    }

    #[test]
    fn in_batch_gradients_match_finite_differences() {
        let (n, d) = (6, 5);
        // Small embeddings keep the logits moderate at τ = 0.07.
        let q: Vec<f32> = random_f32(Seed(1), n * d).iter().map(|v| v * 0.2).collect();
        let k: Vec<f32> = random_f32(Seed(2), n * d).iter().map(|v| v * 0.2).collect();
        let (mut s, mut t) = (vec![0.0; n * n], vec![0.0; n * n]);
        let (mut dq, mut dk) = (vec![0.0; n * d], vec![0.0; n * d]);
        let loss = in_batch(&q, &k, n, d, &mut s, &mut t, Some((&mut dq, &mut dk)), 1);
        assert!(loss.is_finite() && loss > 0.0);
        let nq = numeric(&q, 1e-2, |x| {
            in_batch(x, &k, n, d, &mut s.clone(), &mut t.clone(), None, 1)
        });
        let nk = numeric(&k, 1e-2, |x| {
            in_batch(&q, x, n, d, &mut s.clone(), &mut t.clone(), None, 1)
        });
        close(&f64s(&dq), &nq, "dq");
        close(&f64s(&dk), &nk, "dk");
    }

    #[test]
    fn queue_gradient_matches_finite_differences() {
        let (n, m, d) = (4, 11, 6);
        let q: Vec<f32> = random_f32(Seed(3), n * d).iter().map(|v| v * 0.2).collect();
        let c: Vec<f32> = random_f32(Seed(4), m * d).iter().map(|v| v * 0.2).collect();
        let mut s = vec![0.0; n * m];
        let mut dq = vec![0.0; n * d];
        against_keys(&q, &c, n, m, d, &mut s, Some(&mut dq), 1);
        let nq = numeric(&q, 1e-2, |x| {
            against_keys(x, &c, n, m, d, &mut vec![0.0; n * m], None, 1)
        });
        close(&f64s(&dq), &nq, "dq");
    }

    #[test]
    fn the_queue_is_fifo() {
        let d = 3;
        let mut q = KeyQueue::new(5, d, Seed(9));
        assert_eq!(q.len(), 5);
        let batch =
            |start: usize, n: usize| -> Vec<f32> { (start..start + n).flat_map(|i| vec![i as f32; d]).collect() };
        q.enqueue(&batch(0, 3));
        q.enqueue(&batch(3, 4)); // 7 keys through a queue of 5: keys 0 and 1 are evicted
        for age in 0..5 {
            assert_eq!(q.newest(age), &[(6 - age) as f32; 3][..], "age {age}");
        }
        assert!(!q.keys.contains(&0.0) && !q.keys.contains(&1.0));
    }

    #[test]
    fn the_momentum_update_is_an_ema() {
        let mut k = vec![1.0f32, -2.0, 0.5];
        let q = vec![3.0f32, 0.0, 0.5];
        ema(&mut k, &q, 0.9);
        for (got, want) in k.iter().zip([1.2f32, -1.8, 0.5]) {
            assert!((got - want).abs() < 1e-6, "{got} {want}");
        }
        // m = 0 copies the query network.
        ema(&mut k, &q, 0.0);
        assert_eq!(k, q);
    }

    #[test]
    fn frames_decode_to_their_pixels() {
        let pool = png_frames(2, Seed(5)).expect("encode");
        assert_ne!(pool[0], pool[1]);
        // Smooth noise compresses, but not to nothing.
        let raw = (FRAME_SIDE * FRAME_SIDE * 3) as usize;
        assert!(pool[0].len() < raw && pool[0].len() > raw / 20, "{}", pool[0].len());
        assert_eq!(pool, png_frames(2, Seed(5)).expect("encode"));
        assert!(decode_png(&pool[0]).expect("decode") > 0);
    }
}
