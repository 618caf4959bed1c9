//! A small language-model trainer for real continual-pretraining (CPT) runs, the measured side of the D-CPT Law
//! (Que et al. 2024).
//!
//! Model: a neural n-gram LM (Bengio et al. 2003): the embeddings of the previous `context` tokens are concatenated,
//! passed through one tanh hidden layer of width `hidden`, and projected to vocabulary logits; softmax cross-entropy.
//! Forward and backward are written by hand; the three matrix products per direction run on the crate's one CPU GEMM
//! ([`crate::cpu::gemm`], the `gemm` crate's packed f64 kernels, with strided views for the transposed operands). The optimiser is
//! AdamW (Loshchilov & Hutter 2019; decoupled weight decay on matrices, not on biases). FLOPs are counted exactly for
//! the matrix products (2·m·n·k each: 3 forward-pass GEMMs... see [`Model::matmul_flops_per_step`]).
//!
//! Corpora: two seeded order-2 Markov sources over the same vocabulary ("general" and "domain"). Each context's
//! next-token distribution is a Zipf law over a context-specific permutation; the domain source's law is the mixture
//! `overlap·p_general + (1 − overlap)·p_own`, so `overlap` controls how much learning one source helps the other. A CPT run mixes the sources at domain share `r` with error-diffusion interleaving, so
//! exactly `round(r·D)` of the first D tokens are domain tokens.
//!
//! The same trainer serves RLHF ([`crate::rlhf`]): [`Model::logp`] gives per-token log-probabilities of given targets
//! and [`Model::weighted_logp`] the gradient of a per-token-weighted sum of them, the one primitive DPO, PPO and
//! rejection sampling are written on.
//!
//! [`run_grid`] pretrains one base model per size on the general source, then continues each one at every ratio,
//! evaluating general and domain validation loss at log-spaced token counts: one run yields many (D, loss) points.
pub mod cuda;

use crate::cpu::MatRef;
use rand::RngExt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use trainlab_core::workloads::cpt::{CptOutcome, CptRun};
use trainlab_core::{Backend, Error, Fidelity, Result, RunCtx, Seed};

/// `C = A·B` (row-major `C`, strided `A` and `B` views) on the crate's one CPU GEMM, f64, serial.
fn mm(m: usize, n: usize, k: usize, a: MatRef<'_, f64>, b: MatRef<'_, f64>, c: &mut [f64]) {
    // The shapes come from the model's own dimensions, so a mismatch is a bug here, not bad input.
    crate::cpu::gemm(m, n, k, a, b, c, false, 1).expect("LM matrix shapes are consistent");
}

/// A row-major matrix with `cols` columns.
fn rm(data: &[f64], cols: usize) -> MatRef<'_, f64> {
    MatRef::row_major(data, cols)
}

/// The transpose of a row-major matrix with `cols` columns.
fn tr(data: &[f64], cols: usize) -> MatRef<'_, f64> {
    MatRef::transposed(data, cols)
}

/// Shape of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Vocabulary size V.
    pub vocab: usize,
    /// Previous tokens seen c.
    pub context: usize,
    /// Embedding width E.
    pub embed: usize,
    /// Hidden width H.
    pub hidden: usize,
}

impl Shape {
    /// Parameter count: `V·E + c·E·H + H + H·V + V`.
    pub fn params(&self) -> usize {
        let (v, c, e, h) = (self.vocab, self.context, self.embed, self.hidden);
        v * e + c * e * h + h + h * v + v
    }
}

/// Model parameters (flat, row-major).
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Shape.
    pub shape: Shape,
    /// Embeddings `[V, E]`.
    pub emb: Vec<f64>,
    /// First layer `[c·E, H]`.
    pub w1: Vec<f64>,
    /// First bias `[H]`.
    pub b1: Vec<f64>,
    /// Output layer `[H, V]`.
    pub w2: Vec<f64>,
    /// Output bias `[V]`.
    pub b2: Vec<f64>,
}

/// Gradients, same layout as [`Model`].
pub type Grads = Model;

impl Model {
    /// Random initialisation (normal, std 1/sqrt(fan-in)).
    pub fn new(shape: Shape, seed: Seed) -> Self {
        let mut rng = seed.derive("lm.init").rng();
        let mut normal = |n: usize, std: f64| -> Vec<f64> {
            (0..n)
                .map(|_| {
                    // Box–Muller from two uniforms (no extra dependency).
                    let u1: f64 = rng.random::<f64>().max(1e-300);
                    let u2: f64 = rng.random();
                    std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
                })
                .collect()
        };
        let (v, c, e, h) = (shape.vocab, shape.context, shape.embed, shape.hidden);
        Model {
            emb: normal(v * e, 1.0),
            w1: normal(c * e * h, 1.0 / ((c * e) as f64).sqrt()),
            b1: vec![0.0; h],
            w2: normal(h * v, 1.0 / (h as f64).sqrt()),
            b2: vec![0.0; v],
            shape,
        }
    }

    pub(crate) fn zeros(shape: Shape) -> Self {
        let (v, c, e, h) = (shape.vocab, shape.context, shape.embed, shape.hidden);
        Model {
            emb: vec![0.0; v * e],
            w1: vec![0.0; c * e * h],
            b1: vec![0.0; h],
            w2: vec![0.0; h * v],
            b2: vec![0.0; v],
            shape,
        }
    }

    fn tensors_mut(&mut self) -> [&mut Vec<f64>; 5] {
        [&mut self.emb, &mut self.w1, &mut self.b1, &mut self.w2, &mut self.b2]
    }

    /// Exact FLOPs of the matrix products of one training step on `batch` examples: forward `X·W1` (2·B·cE·H) and
    /// `H·W2` (2·B·H·V); backward twice each (weight gradient and input gradient): total `6·B·(cE·H + H·V)`.
    /// Element-wise work (tanh, softmax, bias, AdamW) is not counted.
    pub fn matmul_flops_per_step(&self, batch: usize) -> u64 {
        let s = self.shape;
        6 * (batch * (s.context * s.embed * s.hidden + s.hidden * s.vocab)) as u64
    }

    /// Mean cross-entropy (nats) on examples `(contexts, targets)`; `contexts` holds `c` tokens per example. When
    /// `grads` is given, the gradient of that mean is written into it.
    pub fn loss(&self, ctx: &[u32], tgt: &[u32], grads: Option<&mut Grads>) -> f64 {
        self.loss_kd(ctx, tgt, None, grads)
    }

    /// The temperature-`tau` softmax of the logits of each example (row-major `[B, V]`): a teacher's soft targets.
    pub fn soft_targets(&self, ctx: &[u32], tau: f64) -> Vec<f64> {
        let b = ctx.len() / self.shape.context.max(1);
        let (_, _, mut lg) = self.forward(ctx, b);
        let v = self.shape.vocab;
        for row in lg.chunks_mut(v) {
            softmax_in_place(row, tau);
        }
        lg
    }

    /// The hidden activations and logits (bias included) of `b` examples: `(X [B, cE], A [B, H], logits [B, V])`.
    fn forward(&self, ctx: &[u32], b: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let s = self.shape;
        let (v, c, e, h) = (s.vocab, s.context, s.embed, s.hidden);
        let ce = c * e;
        let mut x = vec![0.0; b * ce];
        for i in 0..b {
            for j in 0..c {
                let t = ctx[i * c + j] as usize;
                x[i * ce + j * e..i * ce + (j + 1) * e].copy_from_slice(&self.emb[t * e..(t + 1) * e]);
            }
        }
        // Z = X W1 + b1 ; A = tanh(Z)
        let mut a = vec![0.0; b * h];
        mm(b, h, ce, rm(&x, ce), rm(&self.w1, h), &mut a);
        for i in 0..b {
            for k in 0..h {
                a[i * h + k] = (a[i * h + k] + self.b1[k]).tanh();
            }
        }
        // logits = A W2 + b2
        let mut lg = vec![0.0; b * v];
        mm(b, v, h, rm(&a, h), rm(&self.w2, v), &mut lg);
        for row in lg.chunks_mut(v) {
            for (z, bb) in row.iter_mut().zip(&self.b2) {
                *z += bb;
            }
        }
        (x, a, lg)
    }

    /// Mean of `CE + γ·τ²·KL(teacher_τ ‖ student_τ)` over the examples (the distillation loss of Hinton et al. 2015 as
    /// DDK uses it), or the plain mean CE when `kd` is `None`; its gradient into `grads` when given. `kd.soft` holds
    /// the teacher's temperature-τ probabilities of each example ([`Model::soft_targets`]).
    pub fn loss_kd(&self, ctx: &[u32], tgt: &[u32], kd: Option<Kd<'_>>, grads: Option<&mut Grads>) -> f64 {
        let v = self.shape.vocab;
        let b = tgt.len();
        let (x, a, mut lg) = self.forward(ctx, b);
        let mut total = 0.0;
        let mut soft = vec![0.0; if kd.is_some() { v } else { 0 }];
        for i in 0..b {
            let row = &mut lg[i * v..(i + 1) * v];
            if let Some(k) = &kd {
                // The student's tempered distribution, the KL term and its gradient γ·τ·(p_S,τ − p_T,τ).
                soft.copy_from_slice(row);
                softmax_in_place(&mut soft, k.tau);
                let q = &k.soft[i * v..(i + 1) * v];
                let kl: f64 = q
                    .iter()
                    .zip(&soft)
                    .filter(|(qt, _)| **qt > 0.0)
                    .map(|(qt, ps)| qt * (qt.ln() - ps.max(1e-300).ln()))
                    .sum();
                total += k.gamma * k.tau * k.tau * kl;
                for (sv, qt) in soft.iter_mut().zip(q) {
                    *sv = k.gamma * k.tau * (*sv - qt) / b as f64;
                }
            }
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut sum = 0.0;
            for z in row.iter_mut() {
                *z = (*z - m).exp();
                sum += *z;
            }
            let t = tgt[i] as usize;
            total += -(row[t] / sum).ln();
            // row becomes dlogits = (softmax - onehot) / B (+ the KL term's gradient)
            for z in row.iter_mut() {
                *z /= sum * b as f64;
            }
            row[t] -= 1.0 / b as f64;
            if kd.is_some() {
                for (z, g) in row.iter_mut().zip(&soft) {
                    *z += g;
                }
            }
        }
        let Some(g) = grads else {
            return total / b as f64;
        };
        self.backward(ctx, &x, &a, &lg, g);
        total / b as f64
    }

    /// Log-probabilities `log p(tgt_i | ctx_i)` of each example (the sequence log-probability of a response is the
    /// sum over its tokens).
    pub fn logp(&self, ctx: &[u32], tgt: &[u32]) -> Vec<f64> {
        let (_, _, lg) = self.forward(ctx, tgt.len());
        log_softmax_at(&lg, tgt, self.shape.vocab)
    }

    /// One forward and one backward pass for a per-token-weighted sum of log-probabilities `J = Σ_i w_i·log p(tgt_i |
    /// ctx_i)`: the log-probabilities are computed, `weights` turns them into the `w_i` (so a loss that depends on
    /// them non-linearly, as DPO's `−log σ(β·Δ)` or PPO's clipped ratio, passes `w_i = ∂L/∂log p_i` and gets `∇L`),
    /// and the gradient `∇J = Σ_i w_i·∇log p_i` is written into `grads`. Weights may be negative or zero (a masked
    /// token contributes nothing but its context still enters the forward pass). Returns the log-probabilities.
    /// Every RLHF algorithm of [`crate::rlhf`] trains through this one function.
    pub fn weighted_logp(
        &self,
        ctx: &[u32],
        tgt: &[u32],
        weights: impl FnOnce(&[f64]) -> Vec<f64>,
        grads: &mut Grads,
    ) -> Vec<f64> {
        let v = self.shape.vocab;
        let (x, a, mut lg) = self.forward(ctx, tgt.len());
        let lp = log_softmax_at(&lg, tgt, v);
        let w = weights(&lp);
        assert_eq!(w.len(), tgt.len(), "one weight per target token");
        // d log p_t / d logits = onehot(t) − softmax; times w.
        for ((row, &t), &wi) in lg.chunks_mut(v).zip(tgt).zip(&w) {
            softmax_in_place(row, 1.0);
            for z in row.iter_mut() {
                *z *= -wi;
            }
            row[t as usize] += wi;
        }
        self.backward(ctx, &x, &a, &lg, grads);
        lp
    }

    /// Backward pass from the gradient `dlg [B, V]` of some objective with respect to the logits, given the forward
    /// pass's `x` and `a`: writes the parameter gradient into `g`.
    fn backward(&self, ctx: &[u32], x: &[f64], a: &[f64], lg: &[f64], g: &mut Grads) {
        let s = self.shape;
        let (v, c, e, h) = (s.vocab, s.context, s.embed, s.hidden);
        let ce = c * e;
        let b = lg.len() / v;
        // dW2 = A^T dL ; db2 = sum dL
        mm(h, v, b, tr(a, h), rm(lg, v), &mut g.w2);
        g.b2.iter_mut().for_each(|x| *x = 0.0);
        for i in 0..b {
            for k in 0..v {
                g.b2[k] += lg[i * v + k];
            }
        }
        // dA = dL W2^T ; dZ = dA (1 - A^2)
        let mut dz = vec![0.0; b * h];
        mm(b, h, v, rm(lg, v), tr(&self.w2, v), &mut dz);
        for (d, av) in dz.iter_mut().zip(a) {
            *d *= 1.0 - av * av;
        }
        g.b1.iter_mut().for_each(|x| *x = 0.0);
        for i in 0..b {
            for k in 0..h {
                g.b1[k] += dz[i * h + k];
            }
        }
        // dW1 = X^T dZ ; dX = dZ W1^T
        mm(ce, h, b, tr(x, ce), rm(&dz, h), &mut g.w1);
        let mut dx = vec![0.0; b * ce];
        mm(b, ce, h, rm(&dz, h), tr(&self.w1, h), &mut dx);
        g.emb.iter_mut().for_each(|x| *x = 0.0);
        for i in 0..b {
            for j in 0..c {
                let t = ctx[i * c + j] as usize;
                for q in 0..e {
                    g.emb[t * e + q] += dx[i * ce + j * e + q];
                }
            }
        }
    }
}

/// The distillation term of [`Model::loss_kd`].
#[derive(Debug, Clone, Copy)]
pub struct Kd<'a> {
    /// The teacher's temperature-τ probabilities, `[B, V]`.
    pub soft: &'a [f64],
    /// Weight γ of the KL term.
    pub gamma: f64,
    /// Temperature τ.
    pub tau: f64,
}

/// `log softmax(logits_i)[tgt_i]` of each row of `lg` (`[B, V]`).
fn log_softmax_at(lg: &[f64], tgt: &[u32], v: usize) -> Vec<f64> {
    lg.chunks(v)
        .zip(tgt)
        .map(|(row, &t)| {
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
            row[t as usize] - lse
        })
        .collect()
}

/// `row` ← softmax(`row` / `tau`).
fn softmax_in_place(row: &mut [f64], tau: f64) {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for z in row.iter_mut() {
        *z = ((*z - m) / tau).exp();
        sum += *z;
    }
    for z in row.iter_mut() {
        *z /= sum;
    }
}

/// AdamW state and hyper-parameters.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f64,
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay (matrices and embeddings only).
    pub weight_decay: f64,
    m: Model,
    v: Model,
    t: i32,
}

impl AdamW {
    /// Fresh optimiser state for `shape`.
    pub fn new(shape: Shape, lr: f64, weight_decay: f64) -> Self {
        AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            m: Model::zeros(shape),
            v: Model::zeros(shape),
            t: 0,
        }
    }

    /// One update of `model` with gradients `g`.
    pub fn step(&mut self, model: &mut Model, g: &Grads) {
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        let gs = [&g.emb, &g.w1, &g.b1, &g.w2, &g.b2];
        let decays = [true, true, false, true, false];
        let ms = self.m.tensors_mut();
        let vs = self.v.tensors_mut();
        for (((p, gg), (m, v)), decay) in model
            .tensors_mut()
            .into_iter()
            .zip(gs)
            .zip(ms.into_iter().zip(vs))
            .zip(decays)
        {
            for i in 0..p.len() {
                m[i] = b1 * m[i] + (1.0 - b1) * gg[i];
                v[i] = b2 * v[i] + (1.0 - b2) * gg[i] * gg[i];
                let upd = (m[i] / c1) / ((v[i] / c2).sqrt() + self.eps);
                if decay {
                    p[i] -= self.lr * self.weight_decay * p[i];
                }
                p[i] -= self.lr * upd;
            }
        }
    }
}

/// Two order-2 Markov token sources ("general" and "domain") with controllable overlap.
#[derive(Debug, Clone)]
pub struct Corpus {
    vocab: usize,
    /// Cumulative next-token distributions per source and context, `[sources][V·V][V]`.
    cdf: Vec<Vec<f64>>,
}

/// Which source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The general corpus.
    General = 0,
    /// The domain corpus.
    Domain = 1,
}

impl Corpus {
    /// Builds the sources: Zipf(`zipf`) next-token laws over seeded per-context permutations; the domain source's
    /// next-token law is the mixture `overlap·p_general + (1 − overlap)·p_own` in every context.
    pub fn new(vocab: usize, zipf: f64, overlap: f64, seed: Seed) -> Result<Self> {
        trainlab_core::error::check::in_range("corpus.overlap", overlap, 0.0, 1.0)?;
        trainlab_core::error::check::at_least("corpus.vocab", vocab as u64, 2)?;
        let weights: Vec<f64> = (1..=vocab).map(|k| (k as f64).powf(-zipf)).collect();
        let z: f64 = weights.iter().sum();
        let mut rng_g = seed.derive("corpus.general").rng();
        let mut rng_d = seed.derive("corpus.domain").rng();
        let perm = |rng: &mut trainlab_core::seed::Rng| permutation(vocab, rng);
        let mut cdf = vec![vec![0.0; vocab * vocab * vocab]; 2];
        for ctx in 0..vocab * vocab {
            let pg = perm(&mut rng_g);
            let pd = perm(&mut rng_d);
            let mut probs = [vec![0.0; vocab], vec![0.0; vocab]];
            for rank in 0..vocab {
                let w = weights[rank] / z;
                probs[0][pg[rank]] += w;
                probs[1][pg[rank]] += overlap * w;
                probs[1][pd[rank]] += (1.0 - overlap) * w;
            }
            for (s, pr) in probs.iter().enumerate() {
                let mut acc = 0.0;
                for t in 0..vocab {
                    acc += pr[t];
                    cdf[s][ctx * vocab + t] = acc;
                }
            }
        }
        Ok(Corpus { vocab, cdf })
    }

    /// `zipf.len()` domain sources (DDK's multi-domain corpus): domain `i`'s next-token law in every context is
    /// `overlap·Zipf(s_i)∘π_common + (1 − overlap)·Zipf(s_i)∘π_i`, a law shared by all domains (what transfers between
    /// them) mixed with the domain's own, at the domain's own Zipf exponent (its entropy). Source `i` is
    /// [`Stream::of`]`(i, ..)`.
    pub fn multi(vocab: usize, zipf: &[f64], overlap: f64, seed: Seed) -> Result<Self> {
        trainlab_core::error::check::in_range("corpus.overlap", overlap, 0.0, 1.0)?;
        trainlab_core::error::check::at_least("corpus.vocab", vocab as u64, 2)?;
        let mut rng_c = seed.derive("corpus.common").rng();
        let mut rngs: Vec<_> = (0..zipf.len())
            .map(|i| seed.derive("corpus.domain").index(i as u64).rng())
            .collect();
        let weights: Vec<Vec<f64>> = zipf
            .iter()
            .map(|s| {
                let w: Vec<f64> = (1..=vocab).map(|k| (k as f64).powf(-s)).collect();
                let z: f64 = w.iter().sum();
                w.iter().map(|x| x / z).collect()
            })
            .collect();
        let mut cdf = vec![vec![0.0; vocab * vocab * vocab]; zipf.len()];
        let mut probs = vec![0.0; vocab];
        for ctx in 0..vocab * vocab {
            let pc = permutation(vocab, &mut rng_c);
            for (i, rng) in rngs.iter_mut().enumerate() {
                let own = permutation(vocab, rng);
                probs.iter_mut().for_each(|p| *p = 0.0);
                for rank in 0..vocab {
                    probs[pc[rank]] += overlap * weights[i][rank];
                    probs[own[rank]] += (1.0 - overlap) * weights[i][rank];
                }
                let mut acc = 0.0;
                for t in 0..vocab {
                    acc += probs[t];
                    cdf[i][ctx * vocab + t] = acc;
                }
            }
        }
        Ok(Corpus { vocab, cdf })
    }

    /// Number of sources.
    pub fn sources(&self) -> usize {
        self.cdf.len()
    }

    /// Entropy rate bound: the average next-token entropy over contexts (nats), a floor for any model's loss
    /// (exact when contexts are visited uniformly; the stationary weighting differs slightly).
    pub fn context_entropy(&self, src: Source) -> f64 {
        self.source_entropy(src as usize)
    }

    /// [`Corpus::context_entropy`] of source `i`.
    pub fn source_entropy(&self, i: usize) -> f64 {
        let v = self.vocab;
        let cdf = &self.cdf[i];
        let mut h = 0.0;
        for ctx in 0..v * v {
            let mut prev = 0.0;
            for t in 0..v {
                let p = cdf[ctx * v + t] - prev;
                prev = cdf[ctx * v + t];
                if p > 0.0 {
                    h -= p * p.ln();
                }
            }
        }
        h / (v * v) as f64
    }

    fn next(&self, src: usize, a: u32, b: u32, u: f64) -> u32 {
        let v = self.vocab;
        let row = &self.cdf[src][(a as usize * v + b as usize) * v..][..v];
        row.partition_point(|c| *c < u).min(v - 1) as u32
    }
}

/// A seeded Fisher–Yates permutation of `0..n`.
fn permutation(n: usize, rng: &mut trainlab_core::seed::Rng) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        p.swap(i, j);
    }
    p
}

/// A token stream from one source: yields (context, next) examples from a running sequence.
#[derive(Debug, Clone)]
pub struct Stream {
    src: usize,
    last: [u32; 2],
    rng: trainlab_core::seed::Rng,
}

impl Stream {
    /// A stream seeded by `seed`.
    pub fn new(src: Source, seed: Seed) -> Self {
        Self::of(src as usize, seed)
    }
    /// A stream of source `i` of a [`Corpus::multi`] corpus, seeded by `seed`.
    pub fn of(i: usize, seed: Seed) -> Self {
        Stream {
            src: i,
            last: [0, 1],
            rng: seed.rng(),
        }
    }
    /// Appends one example: `context` tokens (the last of which is the Markov state) and the target.
    pub fn push(&mut self, corpus: &Corpus, context: usize, ctx: &mut Vec<u32>, tgt: &mut Vec<u32>) {
        let u: f64 = self.rng.random();
        let t = corpus.next(self.src, self.last[0], self.last[1], u);
        // The model sees the last `context` tokens; with context > 2 the older ones are padded with the oldest.
        for j in 0..context {
            let back = context - j;
            ctx.push(if back >= 2 { self.last[0] } else { self.last[1] });
        }
        tgt.push(t);
        self.last = [self.last[1], t];
    }
}

/// Settings of a grid of CPT runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridConfig {
    /// Hidden widths (one model size each).
    pub hidden: Vec<usize>,
    /// Domain shares r_d.
    pub ratios: Vec<f64>,
    /// Vocabulary.
    pub vocab: usize,
    /// Context tokens.
    pub context: usize,
    /// Embedding width.
    pub embed: usize,
    /// Batch size (examples = tokens per step).
    pub batch: usize,
    /// AdamW learning rate (constant after a short warm-up, so checkpoints are comparable).
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// General-only pretraining tokens of each base model.
    pub pretrain_tokens: u64,
    /// CPT tokens per run.
    pub cpt_tokens: u64,
    /// Evaluations per run (log-spaced from cpt_tokens/16 to cpt_tokens).
    pub evals: usize,
    /// Validation examples per source.
    pub val_examples: usize,
    /// Zipf exponent of the sources.
    pub zipf: f64,
    /// Overlap of the domain source with the general one.
    pub overlap: f64,
    /// Seed.
    pub seed: Seed,
}

impl Default for GridConfig {
    fn default() -> Self {
        GridConfig {
            hidden: vec![16, 32, 64],
            ratios: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            vocab: 48,
            context: 2,
            embed: 12,
            batch: 64,
            lr: 1e-2,
            weight_decay: 0.01,
            pretrain_tokens: 200_000,
            cpt_tokens: 200_000,
            evals: 12,
            val_examples: 4096,
            zipf: 1.6,
            overlap: 0.5,
            seed: Seed::default(),
        }
    }
}

/// One evaluation point of one run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GridRow {
    /// Parameters N.
    pub n: f64,
    /// CPT tokens so far D.
    pub d: f64,
    /// Domain share r_d.
    pub r: f64,
    /// General validation loss (nats).
    pub general_loss: f64,
    /// Domain validation loss (nats).
    pub domain_loss: f64,
    /// Matrix-product FLOPs of CPT so far.
    pub flops: f64,
    /// General validation loss of the base model before CPT.
    pub base_general_loss: f64,
    /// Domain validation loss of the base model before CPT.
    pub base_domain_loss: f64,
}

/// All rows of a grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridResult {
    /// Rows, ordered by size, ratio, tokens.
    pub rows: Vec<GridRow>,
}

impl GridResult {
    /// CSV in the format `trainlab fit dcpt` reads.
    pub fn to_csv(&self) -> String {
        let mut s = String::from("N,D,r,general_loss,domain_loss,flops,base_general_loss,base_domain_loss\n");
        for r in &self.rows {
            s.push_str(&format!(
                "{},{},{},{:.6},{:.6},{:.6e},{:.6},{:.6}\n",
                r.n, r.d, r.r, r.general_loss, r.domain_loss, r.flops, r.base_general_loss, r.base_domain_loss
            ));
        }
        s
    }
}

struct ValSet {
    ctx: Vec<u32>,
    tgt: Vec<u32>,
}

fn val_set(corpus: &Corpus, src: Source, n: usize, context: usize, seed: Seed) -> ValSet {
    let mut st = Stream::new(src, seed);
    let (mut ctx, mut tgt) = (Vec::new(), Vec::new());
    for _ in 0..256 {
        st.push(corpus, context, &mut Vec::new(), &mut Vec::new()); // burn-in to stationarity
    }
    for _ in 0..n {
        st.push(corpus, context, &mut ctx, &mut tgt);
    }
    ValSet { ctx, tgt }
}

fn eval(model: &Model, v: &ValSet) -> f64 {
    model.loss(&v.ctx, &v.tgt, None)
}

/// One run (pretraining or CPT) on `backend`; see [`train`].
#[allow(clippy::too_many_arguments)]
fn train_on(
    backend: LmBackend,
    model: &mut Model,
    cfg: &GridConfig,
    corpus: &Corpus,
    r: f64,
    tokens: u64,
    seed: Seed,
    eval_at: &[u64],
    at_eval: &mut dyn FnMut(&Model, u64, f64),
    cancel: &AtomicBool,
) -> Result<f64> {
    match backend {
        LmBackend::Cpu => Ok(train(model, cfg, corpus, r, tokens, seed, eval_at, at_eval, cancel)),
        LmBackend::Cuda => cuda::train_run_cuda(model, cfg, corpus, r, tokens, seed, eval_at, at_eval),
    }
}

/// Trains `model` on the mixture at domain share `r` for `tokens` tokens, calling `at_eval(tokens_so_far)` at each
/// of `eval_at` (ascending). Returns matrix FLOPs spent. Stops after the step in progress once `cancel` is set (the
/// run is then incomplete: fewer `at_eval` calls than `eval_at` points).
#[allow(clippy::too_many_arguments)]
fn train(
    model: &mut Model,
    cfg: &GridConfig,
    corpus: &Corpus,
    r: f64,
    tokens: u64,
    seed: Seed,
    eval_at: &[u64],
    mut at_eval: impl FnMut(&Model, u64, f64),
    cancel: &AtomicBool,
) -> f64 {
    let mut opt = AdamW::new(model.shape, cfg.lr, cfg.weight_decay);
    let mut gen_s = Stream::new(Source::General, seed.derive("general"));
    let mut dom_s = Stream::new(Source::Domain, seed.derive("domain"));
    let mut grads = Model::zeros(model.shape);
    let (mut seen, mut dom_seen, mut flops) = (0u64, 0u64, 0.0);
    let mut next_eval = 0;
    let warmup: f64 = 20.0;
    let mut step: f64 = 0.0;
    while seen < tokens {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        let b = cfg.batch.min((tokens - seen) as usize);
        let (mut ctx, mut tgt) = (Vec::with_capacity(b * cfg.context), Vec::with_capacity(b));
        for _ in 0..b {
            seen += 1;
            // Error diffusion: exactly round(r * seen) domain tokens among the first `seen`.
            if ((r * seen as f64).round() as u64) > dom_seen {
                dom_seen += 1;
                dom_s.push(corpus, cfg.context, &mut ctx, &mut tgt);
            } else {
                gen_s.push(corpus, cfg.context, &mut ctx, &mut tgt);
            }
        }
        model.loss(&ctx, &tgt, Some(&mut grads));
        step += 1.0;
        opt.lr = cfg.lr * (step / warmup).min(1.0);
        opt.step(model, &grads);
        flops += model.matmul_flops_per_step(b) as f64;
        while next_eval < eval_at.len() && eval_at[next_eval] <= seen {
            at_eval(model, seen, flops);
            next_eval += 1;
        }
    }
    flops
}

/// Log-spaced evaluation token counts from `total/16` to `total`.
pub fn eval_points(total: u64, n: usize) -> Vec<u64> {
    let lo = (total as f64 / 16.0).max(1.0);
    let mut v: Vec<u64> = (0..n)
        .map(|i| {
            let f = if n == 1 { 1.0 } else { i as f64 / (n - 1) as f64 };
            (lo * (total as f64 / lo).powf(f)).round() as u64
        })
        .collect();
    v.dedup();
    v
}

/// Runs the grid: per size, pretrain a base model on the general source, then continue it at each ratio (ratios in
/// parallel, results in input order). `progress(done_runs, fraction_of_current_run, label)` is called as work
/// proceeds.
pub fn run_grid(cfg: &GridConfig, progress: &(dyn Fn(usize, f64, &str) + Sync)) -> Result<GridResult> {
    run_grid_on(cfg, LmBackend::Cpu, progress, &AtomicBool::new(false))
}

/// Which device trains the grid's runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LmBackend {
    /// This machine's CPU (ratios in parallel with rayon).
    #[default]
    Cpu,
    /// The first CUDA GPU through [`cuda::train_run_cuda`] (ratios one after another: one GPU context).
    Cuda,
}

/// [`run_grid`] on a chosen backend. With [`LmBackend::Cuda`] and no GPU, fails with [`Error::Unsupported`].
///
/// `cancel` (Ctrl-C) is polled at every training step on the CPU and before every run on either backend; once it
/// is set, the runs in progress stop and are dropped, no new run starts, and the result holds the runs that finished
/// (each with all its evaluation points).
pub fn run_grid_on(
    cfg: &GridConfig,
    backend: LmBackend,
    progress: &(dyn Fn(usize, f64, &str) + Sync),
    cancel: &AtomicBool,
) -> Result<GridResult> {
    if cfg.hidden.is_empty() || cfg.ratios.is_empty() {
        return Err(Error::invalid(
            "grid",
            "(empty)",
            "need sizes and ratios",
            "give --hidden and --ratios",
        ));
    }
    for (i, r) in cfg.ratios.iter().enumerate() {
        trainlab_core::error::check::in_range(&format!("grid.ratios[{i}]"), *r, 0.0, 1.0)?;
    }
    for (i, h) in cfg.hidden.iter().enumerate() {
        trainlab_core::error::check::at_least(&format!("grid.hidden[{i}]"), *h as u64, 1)?;
    }
    trainlab_core::error::check::at_least("grid.cpt_tokens", cfg.cpt_tokens, 32)?;
    trainlab_core::error::check::at_least("grid.batch", cfg.batch as u64, 1)?;
    let corpus = Corpus::new(cfg.vocab, cfg.zipf, cfg.overlap, cfg.seed)?;
    let vg = val_set(
        &corpus,
        Source::General,
        cfg.val_examples,
        cfg.context,
        cfg.seed.derive("val.general"),
    );
    let vd = val_set(
        &corpus,
        Source::Domain,
        cfg.val_examples,
        cfg.context,
        cfg.seed.derive("val.domain"),
    );
    let evals = eval_points(cfg.cpt_tokens, cfg.evals);
    let done = AtomicUsize::new(0);
    let mut rows = Vec::new();
    for (si, &h) in cfg.hidden.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        let shape = Shape {
            vocab: cfg.vocab,
            context: cfg.context,
            embed: cfg.embed,
            hidden: h,
        };
        let size_seed = cfg.seed.derive("size").index(si as u64);
        let mut base = Model::new(shape, size_seed);
        let label = format!("pretrain H={h}");
        train_on(
            backend,
            &mut base,
            cfg,
            &corpus,
            0.0,
            cfg.pretrain_tokens,
            size_seed.derive("pretrain"),
            &[],
            &mut |_, _, _| {},
            cancel,
        )?;
        if cancel.load(Ordering::Relaxed) {
            break; // the base model's pretraining did not finish
        }
        progress(done.load(Ordering::Relaxed), 0.0, &label);
        let (bg, bd) = (eval(&base, &vg), eval(&base, &vd));
        let one_ratio = |(ri, &r): (usize, &f64)| -> Result<Vec<GridRow>> {
            if cancel.load(Ordering::Relaxed) {
                return Ok(Vec::new());
            }
            let mut m = base.clone();
            let mut out = Vec::new();
            let label = format!("H={h} r={r}");
            train_on(
                backend,
                &mut m,
                cfg,
                &corpus,
                r,
                cfg.cpt_tokens,
                size_seed.derive("cpt").index(ri as u64),
                &evals,
                &mut |m, d, f| {
                    out.push(GridRow {
                        n: shape.params() as f64,
                        d: d as f64,
                        r,
                        general_loss: eval(m, &vg),
                        domain_loss: eval(m, &vd),
                        flops: f,
                        base_general_loss: bg,
                        base_domain_loss: bd,
                    });
                    progress(done.load(Ordering::Relaxed), d as f64 / cfg.cpt_tokens as f64, &label);
                },
                cancel,
            )?;
            if out.len() < evals.len() {
                return Ok(Vec::new()); // interrupted part-way: keep only finished runs
            }
            done.fetch_add(1, Ordering::Relaxed);
            progress(done.load(Ordering::Relaxed), 1.0, &label);
            Ok(out)
        };
        let per_ratio: Vec<Vec<GridRow>> = match backend {
            LmBackend::Cpu => cfg
                .ratios
                .par_iter()
                .enumerate()
                .map(one_ratio)
                .collect::<Result<_>>()?,
            LmBackend::Cuda => cfg.ratios.iter().enumerate().map(one_ratio).collect::<Result<_>>()?,
        };
        rows.extend(per_ratio.into_iter().flatten());
    }
    Ok(GridResult { rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (Model, Vec<u32>, Vec<u32>) {
        let shape = Shape {
            vocab: 7,
            context: 2,
            embed: 3,
            hidden: 5,
        };
        let m = Model::new(shape, Seed(3));
        let ctx = vec![0, 1, 2, 3, 4, 5, 6, 0, 1, 1, 2, 2];
        let tgt = vec![1, 2, 3, 4, 5, 6];
        (m, ctx, tgt)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (m, ctx, tgt) = tiny();
        let mut g = Model::zeros(m.shape);
        m.loss(&ctx, &tgt, Some(&mut g));
        let mut mm = m.clone();
        let gs = [g.emb.clone(), g.w1.clone(), g.b1.clone(), g.w2.clone(), g.b2.clone()];
        for (ti, gt) in gs.iter().enumerate() {
            for (i, gti) in gt.iter().enumerate() {
                let h = 1e-6;
                let orig = mm.tensors_mut()[ti][i];
                mm.tensors_mut()[ti][i] = orig + h;
                let up = mm.loss(&ctx, &tgt, None);
                mm.tensors_mut()[ti][i] = orig - h;
                let dn = mm.loss(&ctx, &tgt, None);
                mm.tensors_mut()[ti][i] = orig;
                let fd = (up - dn) / (2.0 * h);
                assert!(
                    (fd - gti).abs() < 1e-7 + 1e-5 * fd.abs(),
                    "tensor {ti} [{i}]: {gti} vs {fd}"
                );
            }
        }
    }

    /// `Σ w_i log p_i` with fixed weights (negative, zero, positive) and a DPO-like non-linear loss of the log-probs
    /// (`−log σ(β·(Σ_chosen lp − Σ_rejected lp))`, weights `∂L/∂lp` computed inside the closure): the gradient that
    /// [`Model::weighted_logp`] writes matches central finite differences of the objective recomputed from
    /// [`Model::logp`].
    #[test]
    fn weighted_logp_gradient_matches_finite_differences() {
        let (m, ctx, tgt) = tiny();
        let fixed = [0.7, -1.3, 0.0, 2.0, -0.4, 1.1];
        let beta = 0.8;
        let sig = |u: f64| 1.0 / (1.0 + (-u).exp());
        let dpo = |lp: &[f64]| {
            let u = beta * (lp[..3].iter().sum::<f64>() - lp[3..].iter().sum::<f64>());
            -sig(u).ln()
        };
        let dpo_w = |lp: &[f64]| -> Vec<f64> {
            let u = beta * (lp[..3].iter().sum::<f64>() - lp[3..].iter().sum::<f64>());
            let d = -(1.0 - sig(u)) * beta;
            (0..lp.len()).map(|i| if i < 3 { d } else { -d }).collect()
        };
        type Objective<'a> = (&'a dyn Fn(&[f64]) -> f64, &'a dyn Fn(&[f64]) -> Vec<f64>);
        let lin = |lp: &[f64]| lp.iter().zip(&fixed).map(|(l, w)| l * w).sum::<f64>();
        let lin_w = |_: &[f64]| fixed.to_vec();
        let cases: [Objective<'_>; 2] = [(&lin, &lin_w), (&dpo, &dpo_w)];
        for (obj, wts) in cases {
            let mut g = Model::zeros(m.shape);
            let lp = m.weighted_logp(&ctx, &tgt, wts, &mut g);
            assert_eq!(lp, m.logp(&ctx, &tgt));
            assert!(lp.iter().all(|l| *l < 0.0));
            let mut mm = m.clone();
            let gs = [g.emb.clone(), g.w1.clone(), g.b1.clone(), g.w2.clone(), g.b2.clone()];
            let mut nonzero = 0;
            for (ti, gt) in gs.iter().enumerate() {
                for (i, gti) in gt.iter().enumerate() {
                    let h = 1e-6;
                    let orig = mm.tensors_mut()[ti][i];
                    mm.tensors_mut()[ti][i] = orig + h;
                    let up = obj(&mm.logp(&ctx, &tgt));
                    mm.tensors_mut()[ti][i] = orig - h;
                    let dn = obj(&mm.logp(&ctx, &tgt));
                    mm.tensors_mut()[ti][i] = orig;
                    let fd = (up - dn) / (2.0 * h);
                    assert!(
                        (fd - gti).abs() < 1e-7 + 1e-5 * fd.abs(),
                        "tensor {ti} [{i}]: {gti} vs {fd}"
                    );
                    nonzero += usize::from(gti.abs() > 1e-9);
                }
            }
            assert!(nonzero > 20, "a gradient that is mostly zero tests little");
        }
    }

    #[test]
    fn flops_and_params_are_exact() {
        let (m, ..) = tiny();
        assert_eq!(m.shape.params(), 7 * 3 + 2 * 3 * 5 + 5 + 5 * 7 + 7);
        assert_eq!(m.matmul_flops_per_step(10), 6 * 10 * (6 * 5 + 5 * 7));
    }

    #[test]
    fn training_lowers_loss_toward_entropy_floor_and_mixture_is_exact() {
        let cfg = GridConfig {
            vocab: 16,
            ..GridConfig::default()
        };
        let corpus = Corpus::new(16, 1.1, 0.3, Seed(1)).unwrap();
        let vg = val_set(&corpus, Source::General, 2000, 2, Seed(2));
        let shape = Shape {
            vocab: 16,
            context: 2,
            embed: 8,
            hidden: 32,
        };
        let mut m = Model::new(shape, Seed(4));
        let before = eval(&m, &vg);
        train(
            &mut m,
            &cfg,
            &corpus,
            0.0,
            40_000,
            Seed(5),
            &[],
            |_, _, _| {},
            &AtomicBool::new(false),
        );
        let after = eval(&m, &vg);
        let floor = corpus.context_entropy(Source::General);
        assert!(after < before - 0.3, "{before} -> {after}");
        assert!(after > floor - 0.1, "{after} below floor {floor}");
        assert_eq!(eval_points(1600, 5), vec![100, 200, 400, 800, 1600]);
    }

    #[test]
    fn grid_is_deterministic_and_domain_share_helps_domain_loss() {
        let cfg = GridConfig {
            hidden: vec![8],
            ratios: vec![0.0, 1.0],
            vocab: 16,
            pretrain_tokens: 5000,
            cpt_tokens: 8000,
            evals: 3,
            val_examples: 1000,
            ..GridConfig::default()
        };
        let a = run_grid(&cfg, &|_, _, _| {}).unwrap();
        let b = run_grid(&cfg, &|_, _, _| {}).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rows.len(), 6);
        let last = |r: f64| a.rows.iter().rfind(|x| x.r == r).copied().unwrap();
        assert!(last(1.0).domain_loss < last(0.0).domain_loss);
        assert!(last(1.0).general_loss > last(0.0).general_loss);
        assert!(a.to_csv().starts_with("N,D,r,general_loss,domain_loss"));
    }

    #[test]
    fn cancelled_grid_keeps_only_finished_runs() {
        let cfg = GridConfig {
            hidden: vec![8, 12],
            ratios: vec![0.0, 0.5, 1.0],
            vocab: 16,
            pretrain_tokens: 3000,
            cpt_tokens: 6000,
            evals: 3,
            val_examples: 500,
            ..GridConfig::default()
        };
        let cancel = AtomicBool::new(true);
        let none = run_grid_on(&cfg, LmBackend::Cpu, &|_, _, _| {}, &cancel).unwrap();
        assert!(none.rows.is_empty());
        // Interrupt once the first run has finished: every kept run has all its evaluation points, and runs of the
        // second size never start.
        let cancel = AtomicBool::new(false);
        let part = run_grid_on(
            &cfg,
            LmBackend::Cpu,
            &|done, _, _| {
                if done >= 1 {
                    cancel.store(true, Ordering::Relaxed);
                }
            },
            &cancel,
        )
        .unwrap();
        let full = run_grid(&cfg, &|_, _, _| {}).unwrap();
        assert!(!part.rows.is_empty() && part.rows.len() < full.rows.len());
        assert_eq!(part.rows.len() % 3, 0, "whole runs only");
        for row in &part.rows {
            assert!(
                full.rows.contains(row),
                "a kept row differs from the uninterrupted run: {row:?}"
            );
        }
    }
}

/// The grid of one [`CptRun`]: its size, its ratio, its setup, one evaluation at the end of CPT.
pub fn grid_of(w: &CptRun, seed: Seed) -> GridConfig {
    let s = &w.setup;
    GridConfig {
        hidden: vec![w.hidden as usize],
        ratios: vec![w.domain_ratio],
        vocab: s.vocab as usize,
        context: s.context as usize,
        embed: s.embed as usize,
        batch: s.batch as usize,
        lr: s.lr,
        weight_decay: s.weight_decay,
        pretrain_tokens: s.pretrain_tokens,
        cpt_tokens: w.cpt_tokens,
        evals: 1,
        val_examples: s.val_examples as usize,
        zipf: s.zipf,
        overlap: s.overlap,
        seed,
    }
}

/// A real CPT run of a [`CptRun`] (pretraining of the base model, then CPT, then both validation losses) on the CPU
/// or the first CUDA GPU: the measured backend of the `cpt_run` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct CptExec {
    /// The device that trains.
    pub device: LmBackend,
}

impl Backend<CptRun> for CptExec {
    fn name(&self) -> &str {
        match self.device {
            LmBackend::Cpu => "cpu",
            LmBackend::Cuda => "cuda",
        }
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Measured
    }
    fn available(&self) -> std::result::Result<(), String> {
        match self.device {
            LmBackend::Cpu => Ok(()),
            LmBackend::Cuda => crate::cuda::gpu_unavailable_reason().map_or(Ok(()), Err),
        }
    }
    fn run(&mut self, w: &CptRun, ctx: &mut RunCtx) -> Result<CptOutcome> {
        let g = run_grid_on(&grid_of(w, ctx.seed), self.device, &|_, _, _| {}, &ctx.cancel)?;
        let Some(last) = g.rows.last() else {
            return Err(Error::Interrupted);
        };
        Ok(CptOutcome {
            general_loss: (last.general_loss, None),
            domain_loss: (last.domain_loss, None),
            params: last.n,
        })
    }
}
