//! CUDA backend of the neural n-gram LM trainer of [`crate::lm`] (Bengio et al. 2003 model, AdamW of Loshchilov &
//! Hutter 2019), in fp32.
//!
//! **Status: compiled, never run on a GPU.** This module was written on a machine with no GPU; it builds against
//! cudarc's dynamically loaded driver, NVRTC and cuBLAS, and its tests print `skipped: <reason>` there. The GPU
//! tests (one step's loss and parameter update against the f64 CPU trainer) have not been executed yet.
//! What *is* checked here without a GPU: the row-major → column-major cuBLAS argument mapping of every product
//! (against a reference column-major BLAS on the host), and that [`CudaLm::new`] returns [`Error::Unsupported`].
//!
//! Same model as [`crate::lm::Model`]: the parameters are initialised by [`Model::new`] on the host from the same
//! seed (so both backends start from identical values, rounded to f32) and uploaded. One training step:
//!
//! - `lm_gather` (NVRTC): `X[B, c·E]` from the embedding rows of the context tokens;
//! - cuBLAS sgemm `Z = X·W1`, then `lm_bias_tanh`: `A = tanh(Z + b1)`;
//! - cuBLAS sgemm `L = A·W2`, then `lm_softmax_xent`: adds `b2`, writes each row's cross-entropy and replaces the
//!   row by `dL = (softmax − onehot)/B` (one thread per row, max-subtracted);
//! - backward: sgemm `dW2 = Aᵀ·dL`, `lm_col_sum` for `db2`, sgemm `dA = dL·W2ᵀ`, `lm_tanh_backward`
//!   (`dZ = dA·(1 − A²)`), `lm_col_sum` for `db1`, sgemm `dW1 = Xᵀ·dZ`, sgemm `dX = dZ·W1ᵀ`, `lm_scatter_emb`
//!   (embedding gradient; one thread per embedding entry summing its occurrences in a fixed order, so the result
//!   is deterministic, unlike an `atomicAdd` scatter);
//! - `lm_adamw`: one launch per tensor, decoupled weight decay on `emb`, `W1`, `W2` only, bias-corrected moments,
//!   exactly the update order of [`crate::lm::AdamW::step`].
//!
//! Row-major products go to column-major cuBLAS as `Cᵀ = op(B)ᵀ·op(A)ᵀ` (see `crate::gpu::sgemm_rm`). Per-row losses are
//! downloaded and summed on the host in f64, in row order.
//!
//! [`train_run_cuda`] is the GPU twin of the CPU grid runner's per-run `train` function in [`crate::lm`] (same
//! mixture interleaving, warm-up and evaluation callback), so [`crate::lm::run_grid`] could call either.
use super::{Corpus, GridConfig, Model, Shape, Source, Stream};
use crate::gpu::{GpuRuntime, drv, grid, sgemm_rm};
use cudarc::driver::{CudaFunction, CudaSlice, PushKernelArg};
use trainlab_core::{Error, Seed};

/// CUDA C source of the LM kernels, compiled at run time by NVRTC.
pub const LM_KERNELS_CU: &str = r#"
extern "C" __global__ void lm_gather(const unsigned int* ctx, const float* emb, float* x, int rows, int c, int e) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long n = (long long)rows * c * e;
    if (i >= n) return;
    long long q = i % e;
    long long pos = i / e;
    x[i] = emb[(long long)ctx[pos] * e + q];
}

extern "C" __global__ void lm_bias_tanh(float* z, const float* bias, int rows, int cols) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * cols) return;
    z[i] = tanhf(z[i] + bias[i % cols]);
}

extern "C" __global__ void lm_softmax_xent(float* lg, const float* b2, const unsigned int* tgt, float* loss,
                                           int rows, int v, int want_grad) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    float* row = lg + (long long)r * v;
    float m = -3.402823466e+38f;
    for (int k = 0; k < v; ++k) {
        float z = row[k] + b2[k];
        row[k] = z;
        m = fmaxf(m, z);
    }
    float s = 0.0f;
    for (int k = 0; k < v; ++k) s += expf(row[k] - m);
    unsigned int t = tgt[r];
    loss[r] = logf(s) - (row[t] - m);
    if (want_grad) {
        float inv = 1.0f / (s * (float)rows);
        for (int k = 0; k < v; ++k) row[k] = expf(row[k] - m) * inv;
        row[t] -= 1.0f / (float)rows;
    }
}

extern "C" __global__ void lm_col_sum(const float* a, float* out, int rows, int cols) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= cols) return;
    float acc = 0.0f;
    for (int i = 0; i < rows; ++i) acc += a[(long long)i * cols + k];
    out[k] = acc;
}

extern "C" __global__ void lm_tanh_backward(float* dz, const float* a, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float av = a[i];
    dz[i] *= 1.0f - av * av;
}

extern "C" __global__ void lm_scatter_emb(const unsigned int* ctx, const float* dx, float* gemb, int positions,
                                          int e, int vocab) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)vocab * e) return;
    unsigned int t = (unsigned int)(i / e);
    long long q = i % e;
    float acc = 0.0f;
    for (int p = 0; p < positions; ++p) {
        if (ctx[p] == t) acc += dx[(long long)p * e + q];
    }
    gemb[i] = acc;
}

extern "C" __global__ void lm_adamw(float* p, const float* g, float* m, float* v, long long n, float lr, float b1,
                                    float b2, float c1, float c2, float eps, float wd, int decay) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    float mi = b1 * m[i] + (1.0f - b1) * gi;
    float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float upd = (mi / c1) / (sqrtf(vi / c2) + eps);
    float pi = p[i];
    if (decay) pi -= lr * wd * pi;
    p[i] = pi - lr * upd;
}
"#;

/// Tensor order everywhere in this module: `emb, W1, b1, W2, b2` (as [`Model`]).
const EMB: usize = 0;
const W1: usize = 1;
const B1: usize = 2;
const W2: usize = 3;
const B2: usize = 4;
/// Which tensors get decoupled weight decay (matrices and embeddings, not biases), as in [`crate::lm::AdamW`].
const DECAY: [bool; 5] = [true, true, false, true, false];

/// Settings of a [`CudaLm`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CudaLmConfig {
    /// Model shape.
    pub shape: Shape,
    /// Largest batch a step or an evaluation chunk may hold (sizes the device work buffers).
    pub max_batch: usize,
    /// AdamW learning rate (change it per step with [`CudaLm::set_lr`]).
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
}

struct Kernels {
    gather: CudaFunction,
    bias_tanh: CudaFunction,
    softmax_xent: CudaFunction,
    col_sum: CudaFunction,
    tanh_backward: CudaFunction,
    scatter_emb: CudaFunction,
    adamw: CudaFunction,
}

/// The neural n-gram LM on one GPU: fp32 parameters, gradients and AdamW moments in device memory.
pub struct CudaLm {
    rt: GpuRuntime,
    k: Kernels,
    shape: Shape,
    cap: usize,
    lr: f64,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    t: i32,
    params: Vec<CudaSlice<f32>>,
    grads: Vec<CudaSlice<f32>>,
    m: Vec<CudaSlice<f32>>,
    v: Vec<CudaSlice<f32>>,
    ctx_d: CudaSlice<u32>,
    tgt_d: CudaSlice<u32>,
    x: CudaSlice<f32>,
    a: CudaSlice<f32>,
    lg: CudaSlice<f32>,
    loss_rows: CudaSlice<f32>,
    dz: CudaSlice<f32>,
    dx: CudaSlice<f32>,
}

impl std::fmt::Debug for CudaLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaLm")
            .field("rt", &self.rt)
            .field("shape", &self.shape)
            .field("max_batch", &self.cap)
            .field("step", &self.t)
            .finish_non_exhaustive()
    }
}

fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|v| *v as f32).collect()
}

impl CudaLm {
    /// Opens GPU 0, initialises the parameters exactly as [`Model::new`]`(config.shape, seed)` (then rounded to
    /// f32), zeroes the AdamW moments and allocates work buffers for `config.max_batch` examples.
    /// Without a usable GPU: [`Error::Unsupported`] with the reason.
    pub fn new(config: CudaLmConfig, seed: Seed) -> Result<Self, Error> {
        Self::from_model(&Model::new(config.shape, seed), config)
    }

    /// Like [`CudaLm::new`], starting from the given parameters (e.g. a pretrained base model).
    pub fn from_model(model: &Model, config: CudaLmConfig) -> Result<Self, Error> {
        let s = config.shape;
        if s != model.shape {
            return Err(Error::invalid(
                "cuda_lm.shape",
                format!("{s:?}"),
                format!("differs from the model's {:?}", model.shape),
                "pass the model's shape",
            ));
        }
        for (field, v) in [
            ("cuda_lm.shape.vocab", s.vocab),
            ("cuda_lm.shape.context", s.context),
            ("cuda_lm.shape.embed", s.embed),
            ("cuda_lm.shape.hidden", s.hidden),
            ("cuda_lm.max_batch", config.max_batch),
        ] {
            trainlab_core::error::check::at_least(field, v as u64, 1)?;
        }
        let (v, c, e, h, cap) = (s.vocab, s.context, s.embed, s.hidden, config.max_batch);
        let biggest = [v * e, c * e * h, h * v, cap * c * e, cap * v, cap * h]
            .into_iter()
            .max()
            .unwrap_or(0);
        if biggest > i32::MAX as usize {
            return Err(Error::invalid(
                "cuda_lm.shape",
                format!("{s:?}"),
                "a tensor has more than 2^31 − 1 elements",
                "use smaller sizes",
            ));
        }
        let rt = GpuRuntime::new(0)?;
        let [
            gather,
            bias_tanh,
            softmax_xent,
            col_sum,
            tanh_backward,
            scatter_emb,
            adamw,
        ] = rt.load_kernels(
            LM_KERNELS_CU,
            "the LM kernels",
            [
                "lm_gather",
                "lm_bias_tanh",
                "lm_softmax_xent",
                "lm_col_sum",
                "lm_tanh_backward",
                "lm_scatter_emb",
                "lm_adamw",
            ],
        )?;
        let k = Kernels {
            gather,
            bias_tanh,
            softmax_xent,
            col_sum,
            tanh_backward,
            scatter_emb,
            adamw,
        };
        let st = rt.stream().clone();
        let host = [&model.emb, &model.w1, &model.b1, &model.w2, &model.b2];
        let mut params = Vec::with_capacity(5);
        let mut grads = Vec::with_capacity(5);
        let mut mom = Vec::with_capacity(5);
        let mut vel = Vec::with_capacity(5);
        for t in host {
            params.push(st.clone_htod(&to_f32(t)).map_err(drv("upload parameters"))?);
            grads.push(st.alloc_zeros::<f32>(t.len()).map_err(drv("alloc"))?);
            mom.push(st.alloc_zeros::<f32>(t.len()).map_err(drv("alloc"))?);
            vel.push(st.alloc_zeros::<f32>(t.len()).map_err(drv("alloc"))?);
        }
        let alloc = |n: usize| st.alloc_zeros::<f32>(n).map_err(drv("alloc"));
        Ok(CudaLm {
            ctx_d: st.alloc_zeros::<u32>(cap * c).map_err(drv("alloc"))?,
            tgt_d: st.alloc_zeros::<u32>(cap).map_err(drv("alloc"))?,
            x: alloc(cap * c * e)?,
            a: alloc(cap * h)?,
            lg: alloc(cap * v)?,
            loss_rows: alloc(cap)?,
            dz: alloc(cap * h)?,
            dx: alloc(cap * c * e)?,
            rt,
            k,
            shape: s,
            cap,
            lr: config.lr,
            weight_decay: config.weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
            params,
            grads,
            m: mom,
            v: vel,
        })
    }

    /// Model shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Sets the AdamW learning rate for the next steps (warm-up schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Exact matrix-product FLOPs of one step on `batch` examples (same count as
    /// [`Model::matmul_flops_per_step`]).
    pub fn matmul_flops_per_step(&self, batch: usize) -> u64 {
        let s = self.shape;
        6 * (batch * (s.context * s.embed * s.hidden + s.hidden * s.vocab)) as u64
    }

    fn check_batch(&self, ctx: &[u32], tgt: &[u32], max: usize) -> Result<(), Error> {
        let s = self.shape;
        if tgt.is_empty() || tgt.len() > max {
            return Err(Error::invalid(
                "batch.targets",
                tgt.len(),
                format!("need 1..={max} examples"),
                "split the batch or raise max_batch",
            ));
        }
        if ctx.len() != tgt.len() * s.context {
            return Err(Error::invalid(
                "batch.contexts",
                ctx.len(),
                format!("need {} tokens per example", s.context),
                "pass context·targets tokens",
            ));
        }
        if let Some(bad) = ctx.iter().chain(tgt).find(|t| **t as usize >= s.vocab) {
            return Err(Error::invalid(
                "batch.tokens",
                bad,
                format!("vocabulary has {} tokens", s.vocab),
                "use token ids below the vocabulary size",
            ));
        }
        Ok(())
    }

    /// Forward pass on `b = tgt.len() ≤ max_batch` examples; leaves `X`, `A` and (when `want_grad`) `dL` in the
    /// work buffers. Returns the summed cross-entropy (nats).
    fn forward(&mut self, ctx: &[u32], tgt: &[u32], want_grad: bool) -> Result<f64, Error> {
        let s = self.shape;
        let (v, c, e, h) = (s.vocab, s.context, s.embed, s.hidden);
        let b = tgt.len();
        let st = self.rt.stream().clone();
        st.memcpy_htod(ctx, &mut self.ctx_d).map_err(drv("upload contexts"))?;
        st.memcpy_htod(tgt, &mut self.tgt_d).map_err(drv("upload targets"))?;
        let (bi, ci, ei, hi, vi) = (b as i32, c as i32, e as i32, h as i32, v as i32);
        {
            let mut l = st.launch_builder(&self.k.gather);
            l.arg(&self.ctx_d)
                .arg(&self.params[EMB])
                .arg(&mut self.x)
                .arg(&bi)
                .arg(&ci)
                .arg(&ei);
            // SAFETY: signature (const uint*, const float*, float*, int, int, int) matches; ctx holds b·c tokens
            // below V (checked by the caller), emb V·E floats, x ≥ b·c·E floats; the kernel bounds-checks `i`.
            unsafe { l.launch(grid(b * c * e)) }.map_err(drv("launch lm_gather"))?;
        }
        sgemm_rm(
            self.rt.blas(),
            b,
            h,
            c * e,
            &self.x,
            false,
            &self.params[W1],
            false,
            &mut self.a,
            false,
        )?;
        {
            let mut l = st.launch_builder(&self.k.bias_tanh);
            l.arg(&mut self.a).arg(&self.params[B1]).arg(&bi).arg(&hi);
            // SAFETY: (float*, const float*, int, int); a ≥ b·H floats, b1 H floats; bounds-checked.
            unsafe { l.launch(grid(b * h)) }.map_err(drv("launch lm_bias_tanh"))?;
        }
        sgemm_rm(
            self.rt.blas(),
            b,
            v,
            h,
            &self.a,
            false,
            &self.params[W2],
            false,
            &mut self.lg,
            false,
        )?;
        {
            let g = i32::from(want_grad);
            let mut l = st.launch_builder(&self.k.softmax_xent);
            l.arg(&mut self.lg)
                .arg(&self.params[B2])
                .arg(&self.tgt_d)
                .arg(&mut self.loss_rows)
                .arg(&bi)
                .arg(&vi)
                .arg(&g);
            // SAFETY: (float*, const float*, const uint*, float*, int, int, int); lg ≥ b·V floats, b2 V floats,
            // tgt b tokens below V, loss ≥ b floats; one thread per row, bounds-checked.
            unsafe { l.launch(grid(b)) }.map_err(drv("launch lm_softmax_xent"))?;
        }
        let rows = st
            .clone_dtoh(&self.loss_rows.slice(0..b))
            .map_err(drv("download losses"))?;
        Ok(rows.iter().map(|x| *x as f64).sum())
    }

    /// Mean cross-entropy (nats) on `(contexts, targets)` (any number of examples, evaluated in chunks of
    /// `max_batch`); parameters are not changed.
    pub fn eval_loss(&mut self, ctx: &[u32], tgt: &[u32]) -> Result<f64, Error> {
        self.check_batch(ctx, tgt, usize::MAX)?;
        let c = self.shape.context;
        let mut total = 0.0;
        for (i, chunk) in tgt.chunks(self.cap).enumerate() {
            let start = i * self.cap * c;
            total += self.forward(&ctx[start..start + chunk.len() * c], chunk, false)?;
        }
        Ok(total / tgt.len() as f64)
    }

    /// One AdamW step on a batch of `tgt.len() ≤ max_batch` examples (`context` tokens per example in `ctx`).
    /// Returns the batch's mean loss before the update.
    pub fn train_step(&mut self, ctx: &[u32], tgt: &[u32]) -> Result<f32, Error> {
        self.check_batch(ctx, tgt, self.cap)?;
        let total = self.forward(ctx, tgt, true)?;
        self.backward(tgt.len())?;
        self.adamw()?;
        Ok((total / tgt.len() as f64) as f32)
    }

    fn backward(&mut self, b: usize) -> Result<(), Error> {
        let s = self.shape;
        let (v, c, e, h) = (s.vocab, s.context, s.embed, s.hidden);
        let st = self.rt.stream().clone();
        let (bi, ei, hi, vi) = (b as i32, e as i32, h as i32, v as i32);
        let col_sum = |src: &CudaSlice<f32>, out: &mut CudaSlice<f32>, cols: i32| -> Result<(), Error> {
            let mut l = st.launch_builder(&self.k.col_sum);
            l.arg(src).arg(out).arg(&bi).arg(&cols);
            // SAFETY: (const float*, float*, int, int); src ≥ b·cols floats, out cols floats; bounds-checked.
            unsafe { l.launch(grid(cols as usize)) }.map_err(drv("launch lm_col_sum"))?;
            Ok(())
        };
        // dW2 = Aᵀ·dL ; db2 = Σ_rows dL
        sgemm_rm(
            self.rt.blas(),
            h,
            v,
            b,
            &self.a,
            true,
            &self.lg,
            false,
            &mut self.grads[W2],
            false,
        )?;
        col_sum(&self.lg, &mut self.grads[B2], vi)?;
        // dA = dL·W2ᵀ ; dZ = dA·(1 − A²) ; db1 = Σ_rows dZ
        sgemm_rm(
            self.rt.blas(),
            b,
            h,
            v,
            &self.lg,
            false,
            &self.params[W2],
            true,
            &mut self.dz,
            false,
        )?;
        {
            let n = (b * h) as i64;
            let mut l = st.launch_builder(&self.k.tanh_backward);
            l.arg(&mut self.dz).arg(&self.a).arg(&n);
            // SAFETY: (float*, const float*, long long); both ≥ b·H floats; bounds-checked.
            unsafe { l.launch(grid(b * h)) }.map_err(drv("launch lm_tanh_backward"))?;
        }
        col_sum(&self.dz, &mut self.grads[B1], hi)?;
        // dW1 = Xᵀ·dZ ; dX = dZ·W1ᵀ
        sgemm_rm(
            self.rt.blas(),
            c * e,
            h,
            b,
            &self.x,
            true,
            &self.dz,
            false,
            &mut self.grads[W1],
            false,
        )?;
        sgemm_rm(
            self.rt.blas(),
            b,
            c * e,
            h,
            &self.dz,
            false,
            &self.params[W1],
            true,
            &mut self.dx,
            false,
        )?;
        {
            let positions = (b * c) as i32;
            let mut l = st.launch_builder(&self.k.scatter_emb);
            l.arg(&self.ctx_d)
                .arg(&self.dx)
                .arg(&mut self.grads[EMB])
                .arg(&positions)
                .arg(&ei)
                .arg(&vi);
            // SAFETY: (const uint*, const float*, float*, int, int, int); ctx ≥ b·c tokens, dx ≥ b·c·E floats,
            // gemb V·E floats; one thread per embedding entry, bounds-checked.
            unsafe { l.launch(grid(v * e)) }.map_err(drv("launch lm_scatter_emb"))?;
        }
        Ok(())
    }

    fn adamw(&mut self) -> Result<(), Error> {
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = (1.0 - b1.powi(self.t)) as f32;
        let c2 = (1.0 - b2.powi(self.t)) as f32;
        let (lr, wd, eps) = (self.lr as f32, self.weight_decay as f32, self.eps as f32);
        let (b1, b2) = (b1 as f32, b2 as f32);
        let st = self.rt.stream().clone();
        for (ti, decay) in DECAY.iter().enumerate() {
            let n = self.params[ti].len();
            let n64 = n as i64;
            let d = i32::from(*decay);
            let mut l = st.launch_builder(&self.k.adamw);
            l.arg(&mut self.params[ti])
                .arg(&self.grads[ti])
                .arg(&mut self.m[ti])
                .arg(&mut self.v[ti])
                .arg(&n64)
                .arg(&lr)
                .arg(&b1)
                .arg(&b2)
                .arg(&c1)
                .arg(&c2)
                .arg(&eps)
                .arg(&wd)
                .arg(&d);
            // SAFETY: (float*, const float*, float*, float*, long long, 7 × float, int); the four buffers hold
            // exactly `n` floats each (same tensor); bounds-checked.
            unsafe { l.launch(grid(n)) }.map_err(drv("launch lm_adamw"))?;
        }
        Ok(())
    }

    /// Downloads the parameters into a host [`Model`] (f32 values widened to f64).
    pub fn to_model(&self) -> Result<Model, Error> {
        let st = self.rt.stream();
        let mut t = Vec::with_capacity(5);
        for p in &self.params {
            let h = st.clone_dtoh(p).map_err(drv("download parameters"))?;
            t.push(h.into_iter().map(f64::from).collect::<Vec<f64>>());
        }
        let mut it = t.into_iter();
        let mut next = || it.next().unwrap_or_default();
        Ok(Model {
            shape: self.shape,
            emb: next(),
            w1: next(),
            b1: next(),
            w2: next(),
            b2: next(),
        })
    }
}

/// GPU twin of the CPU grid runner's per-run `train` in [`crate::lm`]: trains `model` (uploaded, trained on the GPU,
/// downloaded back into `model`) on the mixture at domain share `r` for `tokens` tokens, with the same streams
/// (`seed.derive("general")`, `seed.derive("domain")`), the same error-diffusion interleaving, the same 20-step
/// linear warm-up, and `at_eval(model, tokens_so_far, flops)` at each of `eval_at` (ascending; the model passed is
/// downloaded from the GPU). Returns the matrix FLOPs spent. Without a GPU: [`Error::Unsupported`].
///
/// Wiring into [`crate::lm::run_grid`] (not done here): add a backend choice to `GridConfig` and call this instead
/// of `train(...)` with identical arguments, mapping its `Result` with `?`.
#[allow(clippy::too_many_arguments)]
pub fn train_run_cuda(
    model: &mut Model,
    cfg: &GridConfig,
    corpus: &Corpus,
    r: f64,
    tokens: u64,
    seed: Seed,
    eval_at: &[u64],
    mut at_eval: impl FnMut(&Model, u64, f64),
) -> Result<f64, Error> {
    trainlab_core::error::check::in_range("grid.ratio", r, 0.0, 1.0)?;
    trainlab_core::error::check::at_least("grid.batch", cfg.batch as u64, 1)?;
    let mut lm = CudaLm::from_model(
        model,
        CudaLmConfig {
            shape: model.shape,
            max_batch: cfg.batch,
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
        },
    )?;
    let context = model.shape.context;
    let mut gen_s = Stream::new(Source::General, seed.derive("general"));
    let mut dom_s = Stream::new(Source::Domain, seed.derive("domain"));
    let (mut seen, mut dom_seen, mut flops) = (0u64, 0u64, 0.0);
    let mut next_eval = 0;
    let warmup: f64 = 20.0;
    let mut step: f64 = 0.0;
    while seen < tokens {
        let b = cfg.batch.min((tokens - seen) as usize);
        let (mut ctx, mut tgt) = (Vec::with_capacity(b * context), Vec::with_capacity(b));
        for _ in 0..b {
            seen += 1;
            if ((r * seen as f64).round() as u64) > dom_seen {
                dom_seen += 1;
                dom_s.push(corpus, context, &mut ctx, &mut tgt);
            } else {
                gen_s.push(corpus, context, &mut ctx, &mut tgt);
            }
        }
        step += 1.0;
        // The CPU runner sets the warmed-up rate before its optimiser step; the loss does not depend on it.
        lm.set_lr(cfg.lr * (step / warmup).min(1.0));
        lm.train_step(&ctx, &tgt)?;
        flops += lm.matmul_flops_per_step(b) as f64;
        while next_eval < eval_at.len() && eval_at[next_eval] <= seen {
            *model = lm.to_model()?;
            at_eval(model, seen, flops);
            next_eval += 1;
        }
    }
    *model = lm.to_model()?;
    Ok(flops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::gpu_unavailable_reason;
    use crate::lm::AdamW;

    fn shape() -> Shape {
        Shape {
            vocab: 11,
            context: 2,
            embed: 4,
            hidden: 6,
        }
    }

    fn batch() -> (Vec<u32>, Vec<u32>) {
        let ctx: Vec<u32> = (0..16u32).map(|i| (i * 7 + 3) % 11).collect();
        let tgt: Vec<u32> = (0..8u32).map(|i| (i * 5 + 1) % 11).collect();
        (ctx, tgt)
    }

    fn config() -> CudaLmConfig {
        CudaLmConfig {
            shape: shape(),
            max_batch: 8,
            lr: 1e-2,
            weight_decay: 0.01,
        }
    }

    fn skip() -> bool {
        if let Some(why) = gpu_unavailable_reason() {
            println!("skipped: {why}");
            return true;
        }
        false
    }

    /// The row-major → column-major mapping of [`sgemm_rm`], checked on the host (the runtime's cuBLAS reference)
    /// for the exact shapes and transposes of the trainer's products, with work buffers larger than each product as
    /// the trainer passes them, against a naive row-major product.
    #[test]
    fn colmajor_mapping_computes_row_major_products() {
        let (bsz, ce, h, v) = (5usize, 6usize, 4usize, 7usize);
        let cases = [
            (bsz, h, ce, false, false), // Z = X·W1
            (bsz, v, h, false, false),  // L = A·W2
            (h, v, bsz, true, false),   // dW2 = Aᵀ·dL
            (bsz, h, v, false, true),   // dA = dL·W2ᵀ
            (ce, h, bsz, true, false),  // dW1 = Xᵀ·dZ
            (bsz, ce, h, false, true),  // dX = dZ·W1ᵀ
            (3, 2, 4, true, true),
        ];
        for (m, n, k, a_t, b_t) in cases {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 + 11) % 17) as f32 - 8.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 23 + 5) % 13) as f32 - 6.0).collect();
            // Logical op(A)[i][p] and op(B)[p][j] from the stored row-major layouts.
            let la = |i: usize, p: usize| if a_t { a[p * m + i] } else { a[i * k + p] };
            let lb = |p: usize, j: usize| if b_t { b[j * k + p] } else { b[p * n + j] };
            let mut want = vec![0.0f32; m * n];
            for i in 0..m {
                for j in 0..n {
                    want[i * n + j] = (0..k).map(|p| la(i, p) * lb(p, j)).sum();
                }
            }
            // Oversized buffers, as the trainer's max-batch work buffers are: only the leading part is touched.
            let (mut a_big, mut b_big) = (a.clone(), b.clone());
            a_big.extend([99.0; 3]);
            b_big.extend([99.0; 5]);
            let mut got = vec![0.0f32; m * n + 4];
            crate::gpu::tests::sgemm_rm_host(m, n, k, &a_big, a_t, &b_big, b_t, &mut got, false);
            assert_eq!(&got[m * n..], &[0.0; 4]);
            got.truncate(m * n);
            assert_eq!(got, want, "m={m} n={n} k={k} a_t={a_t} b_t={b_t}");
        }
    }

    #[test]
    fn without_gpu_new_is_unsupported_with_reason() {
        let r = CudaLm::new(config(), Seed(1));
        match gpu_unavailable_reason() {
            Some(why) => {
                assert!(matches!(&r, Err(Error::Unsupported(w)) if *w == why), "{r:?}");
                println!("skipped: {why}");
            }
            None => assert!(r.is_ok(), "{r:?}"),
        }
    }

    #[test]
    fn gpu_one_step_matches_cpu_trainer() {
        if skip() {
            return;
        }
        let (ctx, tgt) = batch();
        let cfg = config();
        let mut gpu = CudaLm::new(cfg, Seed(7)).unwrap();
        let mut cpu = Model::new(shape(), Seed(7));
        // Same initial parameters (up to f32 rounding).
        let init = gpu.to_model().unwrap();
        assert!((init.w1[3] - cpu.w1[3]).abs() <= 1e-6 * cpu.w1[3].abs().max(1.0));
        let eval0 = gpu.eval_loss(&ctx, &tgt).unwrap();
        let mut g = Model::new(shape(), Seed(0));
        let cpu_loss = cpu.loss(&ctx, &tgt, Some(&mut g));
        assert!(
            (eval0 - cpu_loss).abs() < 1e-5 * cpu_loss,
            "eval {eval0} vs cpu {cpu_loss}"
        );
        let gpu_loss = gpu.train_step(&ctx, &tgt).unwrap() as f64;
        assert!(
            (gpu_loss - cpu_loss).abs() < 1e-5 * cpu_loss,
            "step {gpu_loss} vs cpu {cpu_loss}"
        );
        let mut opt = AdamW::new(shape(), cfg.lr, cfg.weight_decay);
        opt.step(&mut cpu, &g);
        let after = gpu.to_model().unwrap();
        let pairs = [
            (&after.emb, &cpu.emb, &init.emb),
            (&after.w1, &cpu.w1, &init.w1),
            (&after.b1, &cpu.b1, &init.b1),
            (&after.w2, &cpu.w2, &init.w2),
            (&after.b2, &cpu.b2, &init.b2),
        ];
        for (ti, (gp, cp, p0)) in pairs.into_iter().enumerate() {
            // Compare the updates (not the parameters), normwise: the first AdamW step moves each entry by about
            // lr·sign(g), so fp32 gradient noise only matters where |g| is near ε.
            let mut num = 0.0;
            let mut den = 0.0;
            for i in 0..gp.len() {
                let du_gpu = gp[i] - p0[i];
                let du_cpu = cp[i] - p0[i];
                num += (du_gpu - du_cpu).powi(2);
                den += du_cpu.powi(2);
            }
            let rel = (num / den.max(1e-300)).sqrt();
            println!("tensor {ti}: normwise relative update error {rel:.2e}");
            assert!(rel < 1e-3, "tensor {ti}: {rel}");
        }
    }

    #[test]
    fn gpu_training_lowers_loss_and_rejects_bad_batches() {
        if skip() {
            return;
        }
        let (ctx, tgt) = batch();
        let mut gpu = CudaLm::new(config(), Seed(2)).unwrap();
        let before = gpu.eval_loss(&ctx, &tgt).unwrap();
        for _ in 0..100 {
            gpu.train_step(&ctx, &tgt).unwrap();
        }
        let after = gpu.eval_loss(&ctx, &tgt).unwrap();
        assert!(after < before - 0.5, "{before} -> {after}");
        assert!(gpu.train_step(&ctx[..3], &tgt).is_err());
        assert!(gpu.train_step(&[0, 11], &[1]).is_err());
    }
}
