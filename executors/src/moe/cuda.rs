//! The MoE layer forward **and backward** on an NVIDIA GPU (cudarc, dynamic loading), fp32 throughout.
//!
//! Forward: router GEMM on cuBLAS (`logits = bias + X W_r`), an NVRTC gating kernel (per-group softmax + top-k, one
//! thread per token), capacity assignment on the host (the token-order rule of [`super::forward`], from the
//! downloaded choices), then per expert an NVRTC gather of its token rows, two cuBLAS GEMMs with an NVRTC ReLU
//! between them (`O_e = relu(X_e W1_e) W2_e`, pre-activations kept for the backward), and an NVRTC gate-weighted
//! combine into `Y`.
//!
//! Backward ([`bwd`]): the same upstream gradient `dY` and Switch balance-loss convention as [`super::backward`]:
//! combine backward (`dO_e = gate * dY` rows and the gate gradient `dP[t, e] = <O_e[t], dY[t]>`, NVRTC), per expert
//! `dW2_e = A_e^T dO_e`, `dA_e = dO_e W2_e^T`, ReLU backward (NVRTC), `dW1_e = X_e^T dH_e`, `dX_e = dH_e W1_e^T`
//! (cuBLAS), the dispatch backward (scatter-add of `dX_e` rows into `dX`, NVRTC), and the router backward (per-group
//! softmax backward with the balance-loss term, NVRTC; `dW_r = X^T dLogits` and `dX += dLogits W_r^T`, cuBLAS).
//! Dropped slots get no expert gradient and no gate gradient, exactly as on the CPU.
//!
//! Parameters, inputs, router noise and `dY` are uploaded before timing (they are resident in a real layer). Phases
//! are timed with host clocks around stream-synchronised phases (the convention of the forward's [`PhaseTimes`]);
//! per-expert forward and backward times come from CUDA events. [`gpu_step`] runs one warm-up step and `repeats`
//! timed steps (forward + backward) and reports per-phase minima, like the CPU layer's [`super::measure`]; the
//! last step's output and every gradient are checked against the CPU layer with the same parameters, router noise
//! and `dY` (relative error `max |gpu - cpu| / max |cpu|`, bound [`FP32_REL_BOUND`]; cuBLAS sgemm runs in its
//! default math mode, which does not use TF32).
//!
//! Status: compiled on every build; **never run on a GPU during development** (no device was available), so the
//! whole GPU path, forward and backward, is unverified. Without a GPU, [`MoeCuda::available`] gives the reason and
//! nothing is touched.
use super::{MoeGrads, MoeParams, PhaseTimes, RoutingSpec, backward, forward, popularity, router_bias};
use crate::gpu::{GpuRuntime, drv, event_gaps, gpu_unavailable_reason, grid, sgemm_rm};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaEvent, CudaFunction, CudaSlice, CudaStream, PushKernelArg};
use std::sync::Arc;
use std::time::Instant;
use trainlab_core::workloads::moe::{MoeLayer, MoeOutcome};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, Seed, Summary, Workload};

#[path = "cuda_backward.rs"]
pub mod bwd;

/// Largest accepted relative error of the GPU output and gradients against the CPU layer (fp32, no TF32).
pub const FP32_REL_BOUND: f64 = 1e-3;

/// Timed steps per [`MoeCuda`] run (after one warm-up step).
pub const REPEATS: usize = 5;

/// CUDA C source of the gating, dispatch, activation and combine kernels (forward and backward).
pub const MOE_KERNELS_CU: &str = r#"
extern "C" __global__ void tl_moe_gate(const float* logits, float* probs, int* chosen, int n, int e, int groups,
                                       int per_group) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    int g = e / groups;
    int k = groups * per_group;
    for (int grp = 0; grp < groups; ++grp) {
        const float* row = logits + (long long)t * e + grp * g;
        float* out = probs + (long long)t * e + grp * g;
        float mx = -3.4e38f;
        for (int j = 0; j < g; ++j) mx = fmaxf(mx, row[j]);
        float s = 0.f;
        for (int j = 0; j < g; ++j) { out[j] = expf(row[j] - mx); s += out[j]; }
        for (int j = 0; j < g; ++j) out[j] /= s;
        for (int c = 0; c < per_group; ++c) {
            int best = -1;
            for (int j = 0; j < g; ++j) {
                bool taken = false;
                for (int q = 0; q < c; ++q) if (chosen[(long long)t * k + grp * per_group + q] == grp * g + j) taken = true;
                if (taken) continue;
                if (best < 0 || row[j] > row[best]) best = j;
            }
            chosen[(long long)t * k + grp * per_group + c] = grp * g + best;
        }
    }
}

/* a = relu(h), out of place: h (the pre-activation) is kept for the backward. */
extern "C" __global__ void tl_moe_relu(const float* h, float* a, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) a[i] = fmaxf(h[i], 0.f);
}

/* xe[r, :] = x[tok[r], :] for the m rows of one expert. */
extern "C" __global__ void tl_moe_gather(const float* x, const int* tok, float* xe, int m, int d) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)m * d) return;
    long long r = i / d, j = i % d;
    xe[i] = x[(long long)tok[r] * d + j];
}

/* y[tok[r], :] += probs[tok[r], ex] * o[r, :]. The rows of one expert are distinct tokens, so no two threads of a
   launch touch the same element; launches for different experts are ordered on the one stream. */
extern "C" __global__ void tl_moe_combine(const float* o, const int* tok, const float* probs, float* y, int m, int d,
                                          int e, int ex) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)m * d) return;
    long long r = i / d, j = i % d;
    long long t = tok[r];
    y[t * d + j] += probs[t * e + ex] * o[i];
}

/* Combine backward for one expert, one warp per row r (token t = tok[r]):
   d_o[r, :] = probs[t, ex] * dy[t, :] and dprobs[t, ex] += <o[r, :], dy[t, :]>.
   blockDim.x must be a multiple of 32 so that a warp never straddles two rows. */
extern "C" __global__ void tl_moe_combine_bwd(const float* dy, const float* o, const int* tok, const float* probs,
                                              float* d_o, float* dprobs, int m, int d, int e, int ex) {
    long long w = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x & 31;
    if (w >= m) return;
    long long t = tok[w];
    float g = probs[t * e + ex];
    float dot = 0.f;
    for (int j = lane; j < d; j += 32) {
        float v = dy[t * d + j];
        d_o[w * d + j] = g * v;
        dot += o[w * d + j] * v;
    }
    for (int off = 16; off > 0; off >>= 1) dot += __shfl_down_sync(0xffffffffu, dot, off);
    if (lane == 0) dprobs[t * e + ex] += dot;
}

/* ReLU backward in place: da = 0 where the pre-activation h <= 0 (the CPU layer's rule). */
extern "C" __global__ void tl_moe_relu_bwd(float* da, const float* h, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n && h[i] <= 0.f) da[i] = 0.f;
}

/* Dispatch backward for one expert: dx[tok[r], :] += dxe[r, :] (distinct tokens within a launch). */
extern "C" __global__ void tl_moe_scatter_add(const float* dxe, const int* tok, float* dx, int m, int d) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)m * d) return;
    long long r = i / d, j = i % d;
    dx[(long long)tok[r] * d + j] += dxe[i];
}

/* Softmax backward per (token, group), one thread each, with the balance-loss gradient bal[j] (a constant per
   expert column, 0 when off) added to dprobs first: dl_j = p_j (dp_j - sum_i p_i dp_i). */
extern "C" __global__ void tl_moe_softmax_bwd(const float* probs, const float* dprobs, const float* bal, float* dlogits,
                                              int n, int e, int groups) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i >= (long long)n * groups) return;
    long long t = i / groups;
    int grp = (int)(i % groups);
    int g = e / groups;
    long long lo = t * e + grp * g;
    float s = 0.f;
    for (int j = 0; j < g; ++j) s += probs[lo + j] * (dprobs[lo + j] + bal[grp * g + j]);
    for (int j = 0; j < g; ++j) dlogits[lo + j] = probs[lo + j] * ((dprobs[lo + j] + bal[grp * g + j]) - s);
}
"#;

/// The GPU runtime and the compiled MoE kernels.
pub(crate) struct Gpu {
    rt: GpuRuntime,
    gate: CudaFunction,
    relu: CudaFunction,
    gather: CudaFunction,
    combine: CudaFunction,
    combine_bwd: CudaFunction,
    relu_bwd: CudaFunction,
    scatter_add: CudaFunction,
    softmax_bwd: CudaFunction,
}

/// Entry points of [`MOE_KERNELS_CU`], in the order [`Gpu::new`] loads them.
const MOE_KERNEL_NAMES: [&str; 8] = [
    "tl_moe_gate",
    "tl_moe_relu",
    "tl_moe_gather",
    "tl_moe_combine",
    "tl_moe_combine_bwd",
    "tl_moe_relu_bwd",
    "tl_moe_scatter_add",
    "tl_moe_softmax_bwd",
];

impl Gpu {
    fn new() -> Result<Gpu, Error> {
        let rt = GpuRuntime::new(0)?;
        let [
            gate,
            relu,
            gather,
            combine,
            combine_bwd,
            relu_bwd,
            scatter_add,
            softmax_bwd,
        ] = rt.load_kernels(MOE_KERNELS_CU, "the MoE kernels", MOE_KERNEL_NAMES)?;
        Ok(Gpu {
            rt,
            gate,
            relu,
            gather,
            combine,
            combine_bwd,
            relu_bwd,
            scatter_add,
            softmax_bwd,
        })
    }
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        self.rt.stream()
    }
    pub(crate) fn blas(&self) -> &CudaBlas {
        self.rt.blas()
    }
    fn sync(&self) -> Result<(), Error> {
        self.rt.sync()
    }
    /// A timing event recorded now on the stream.
    fn event(&self) -> Result<CudaEvent, Error> {
        self.rt.event()
    }
}

/// The layer on the device: sizes, routing and the resident parameters and inputs.
pub(crate) struct DevLayer {
    n: usize,
    d: usize,
    f: usize,
    e: usize,
    k: usize,
    r: RoutingSpec,
    /// Balance-loss coefficient (0 = off).
    balance: f64,
    x: CudaSlice<f32>,
    bias: CudaSlice<f32>,
    dy: CudaSlice<f32>,
    wr: CudaSlice<f32>,
    w1: CudaSlice<f32>,
    w2: CudaSlice<f32>,
}

/// What one expert's forward leaves on the device for the backward.
pub(crate) struct ExpertState {
    /// Tokens routed to the expert (kept), in position order, `m`.
    tok: CudaSlice<i32>,
    /// Rows.
    m: usize,
    /// Gathered inputs `m x d`.
    xe: CudaSlice<f32>,
    /// Hidden pre-activations `m x f`.
    h: CudaSlice<f32>,
    /// Activations `relu(h)`, `m x f`.
    a: CudaSlice<f32>,
    /// Outputs `m x d`.
    o: CudaSlice<f32>,
}

/// The forward's saved state (device buffers plus the host routing decisions).
pub(crate) struct DevForward {
    probs: CudaSlice<f32>,
    y: CudaSlice<f32>,
    chosen: Vec<i32>,
    loads: Vec<u64>,
    experts: Vec<Option<ExpertState>>,
}

/// Forward on the device. Adds the phase times to `times`; per-expert FFN times (CUDA events) go to `per_expert`.
fn run_forward(g: &Gpu, l: &DevLayer, times: &mut PhaseTimes, per_expert: &mut [f64]) -> Result<DevForward, Error> {
    let st = g.stream();
    let (n, d, f, e, k) = (l.n, l.d, l.f, l.e, l.k);
    let alloc = |len: usize| st.alloc_zeros::<f32>(len).map_err(drv("alloc"));
    // Router: logits = bias + X W_r, gating kernel, choices to the host.
    let t0 = Instant::now();
    let mut logits = alloc(n * e)?;
    st.memcpy_dtod(&l.bias, &mut logits).map_err(drv("copy"))?;
    sgemm_rm(g.blas(), n, e, l.d, &l.x, false, &l.wr, false, &mut logits, true)?;
    let mut probs = alloc(n * e)?;
    let mut chosen = st.alloc_zeros::<i32>(n * k).map_err(drv("alloc"))?;
    let (ni, ei, gi, pi) = (n as i32, e as i32, l.r.groups as i32, l.r.per_group as i32);
    let mut lb = st.launch_builder(&g.gate);
    lb.arg(&logits)
        .arg(&mut probs)
        .arg(&mut chosen)
        .arg(&ni)
        .arg(&ei)
        .arg(&gi)
        .arg(&pi);
    // SAFETY: one thread per token reads e logits and writes e probs and k choices of its own row; the buffers hold
    // n*e, n*e and n*k elements and groups divides e (validated).
    unsafe { lb.launch(grid(n)) }.map_err(drv("launch gate"))?;
    let chosen_h = st.clone_dtoh(&chosen).map_err(drv("download"))?;
    g.sync()?;
    times.router += t0.elapsed().as_secs_f64();
    // Dispatch: capacity in token order (slot-major within a token) on the host, then a gather per expert.
    let t0 = Instant::now();
    let mut members: Vec<Vec<i32>> = vec![Vec::new(); e];
    let mut loads = vec![0u64; e];
    for t in 0..n {
        for s in 0..k {
            let c = chosen_h[t * k + s];
            if c < 0 || c as usize >= e {
                return Err(Error::Backend(format!(
                    "GPU gate chose expert {c} of {e} for token {t}"
                )));
            }
            let ex = c as usize;
            loads[ex] += 1;
            if members[ex].len() < l.r.capacity {
                members[ex].push(t as i32);
            }
        }
    }
    let mut experts: Vec<Option<ExpertState>> = Vec::with_capacity(e);
    for mem in &members {
        let m = mem.len();
        if m == 0 {
            experts.push(None);
            continue;
        }
        let tok = st.clone_htod(mem).map_err(drv("upload"))?;
        let mut xe = alloc(m * d)?;
        let (mi, di) = (m as i32, d as i32);
        let mut lb = st.launch_builder(&g.gather);
        lb.arg(&l.x).arg(&tok).arg(&mut xe).arg(&mi).arg(&di);
        // SAFETY: m*d threads each write one element of xe (m*d) and read x at a token row < n (host-built list).
        unsafe { lb.launch(grid(m * d)) }.map_err(drv("launch gather"))?;
        experts.push(Some(ExpertState {
            tok,
            m,
            xe,
            h: alloc(m * f)?,
            a: alloc(m * f)?,
            o: alloc(m * d)?,
        }));
    }
    g.sync()?;
    times.dispatch += t0.elapsed().as_secs_f64();
    // Experts: H = X_e W1_e, A = relu(H), O = A W2_e.
    let t0 = Instant::now();
    let mut evs = vec![g.event()?];
    for (ex, slot) in experts.iter_mut().enumerate() {
        if let Some(s) = slot {
            let w1 = l.w1.slice(ex * d * f..(ex + 1) * d * f);
            let w2 = l.w2.slice(ex * f * d..(ex + 1) * f * d);
            sgemm_rm(g.blas(), s.m, f, d, &s.xe, false, &w1, false, &mut s.h, false)?;
            let cnt = (s.m * f) as u64;
            let mut lb = st.launch_builder(&g.relu);
            lb.arg(&s.h).arg(&mut s.a).arg(&cnt);
            // SAFETY: reads and writes the m*f elements of h and a only.
            unsafe { lb.launch(grid(s.m * f)) }.map_err(drv("launch relu"))?;
            sgemm_rm(g.blas(), s.m, d, f, &s.a, false, &w2, false, &mut s.o, false)?;
        }
        evs.push(g.event()?);
    }
    g.sync()?;
    times.experts += t0.elapsed().as_secs_f64();
    for (acc, t) in per_expert.iter_mut().zip(event_gaps(&evs)?) {
        *acc += t;
    }
    // Combine: Y[t] += gate * O_e[pos].
    let t0 = Instant::now();
    let mut y = alloc(n * d)?;
    for (ex, s) in experts.iter().enumerate() {
        let Some(s) = s else { continue };
        let (mi, di, ei, exi) = (s.m as i32, d as i32, e as i32, ex as i32);
        let mut lb = st.launch_builder(&g.combine);
        lb.arg(&s.o)
            .arg(&s.tok)
            .arg(&probs)
            .arg(&mut y)
            .arg(&mi)
            .arg(&di)
            .arg(&ei)
            .arg(&exi);
        // SAFETY: m*d threads read o (m*d) and probs at rows < n, and write y (n*d) at distinct token rows.
        unsafe { lb.launch(grid(s.m * d)) }.map_err(drv("launch combine"))?;
    }
    g.sync()?;
    times.combine += t0.elapsed().as_secs_f64();
    Ok(DevForward {
        probs,
        y,
        chosen: chosen_h,
        loads,
        experts,
    })
}

/// Relative error `max |a - b| / max |b|` (0 when both are all zeros).
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    if scale == 0.0 { diff } else { diff / scale }
}

/// The GPU result against the CPU layer, relative errors `max |gpu - cpu| / max |cpu|`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuCheck {
    /// Output `Y`.
    pub y: f64,
    /// `dX`.
    pub dx: f64,
    /// `dW_r`.
    pub dwr: f64,
    /// `dW1`.
    pub dw1: f64,
    /// `dW2`.
    pub dw2: f64,
    /// Slots whose chosen expert differs from the CPU's (near-tied logits); the errors are meaningless if > 0.
    pub routing_mismatches: usize,
}

impl GpuCheck {
    /// Largest of the relative errors (infinite when the routing differs).
    pub fn worst(&self) -> f64 {
        if self.routing_mismatches > 0 {
            return f64::INFINITY;
        }
        [self.y, self.dx, self.dwr, self.dw1, self.dw2]
            .into_iter()
            .fold(0.0, f64::max)
    }
}

/// Result of [`gpu_step`]: the last step's output and gradients, timings (minimum over the timed steps) and the
/// check against the CPU layer.
#[derive(Debug, Clone)]
pub struct GpuStep {
    /// Output `N x d`.
    pub y: Vec<f32>,
    /// Gradients of the parameters and of the input.
    pub grads: MoeGrads,
    /// Per-expert routed loads (before capacity).
    pub loads: Vec<u64>,
    /// Phase times, each the minimum over the timed steps; `backward` is the whole backward.
    pub times: PhaseTimes,
    /// Backward phase times, each the minimum over the timed steps.
    pub backward_phases: bwd::BackwardPhases,
    /// Per-expert FFN forward time (CUDA events), minimum over the timed steps.
    pub expert_forward_s: Vec<f64>,
    /// Per-expert FFN backward time (CUDA events), minimum over the timed steps.
    pub expert_backward_s: Vec<f64>,
    /// Minimum over the timed steps of forward + backward, seconds.
    pub step_s: f64,
    /// Relative spread (std / median) of the step samples.
    pub spread: f64,
    /// The comparison against the CPU layer.
    pub check: GpuCheck,
}

/// Runs forward + backward on the GPU (one warm-up step, then `repeats` timed steps) and checks the output and
/// every gradient against the CPU layer with the same parameters, input, router noise and upstream gradient `dY`.
pub fn gpu_step(layer: &MoeLayer, seed: Seed, repeats: usize) -> Result<GpuStep, Error> {
    layer.validate()?;
    let (n, d, f, e) = (
        layer.tokens as usize,
        layer.d_model as usize,
        layer.d_ff as usize,
        layer.experts as usize,
    );
    let r = RoutingSpec::of(layer);
    let k = r.groups * r.per_group;
    let params = (e * 2 * d * f) as u64;
    if params > super::MAX_PARAMS || (n * d.max(e).max(k)) as u64 > super::MAX_PARAMS {
        return Err(Error::Unsupported(format!(
            "the GPU MoE check (which runs the CPU layer as its reference) is limited to {} parameters and \
             activations (got {params} parameters)",
            super::MAX_PARAMS
        )));
    }
    let gpu = Gpu::new()?;
    let st = gpu.stream();
    let balance = layer.balance_loss.unwrap_or(0.0);
    let p = MoeParams::init(d, f, e, 0.1, seed.derive("params"));
    let mut rng = seed.derive("x").rng();
    let x: Vec<f32> = (0..n * d).map(|_| super::normal(&mut rng)).collect();
    let pop = popularity(&layer.router, e, &mut rng)?;
    let bias = router_bias(pop.as_deref(), n, e, &mut rng);
    let mut dyr = seed.derive("dy").rng();
    let dy: Vec<f32> = (0..n * d).map(|_| super::normal(&mut dyr)).collect();
    let up = |v: &[f32]| st.clone_htod(v).map_err(drv("upload"));
    let l = DevLayer {
        n,
        d,
        f,
        e,
        k,
        r,
        balance,
        x: up(&x)?,
        bias: up(&bias)?,
        dy: up(&dy)?,
        wr: up(&p.wr)?,
        w1: up(&p.w1)?,
        w2: up(&p.w2)?,
    };
    gpu.sync()?;
    let mut samples: Vec<(PhaseTimes, bwd::BackwardPhases, Vec<f64>, Vec<f64>)> = Vec::new();
    let mut last = None;
    for rep in 0..repeats.max(1) + 1 {
        let mut pt = PhaseTimes::default();
        let mut bp = bwd::BackwardPhases::default();
        let mut ef = vec![0.0; e];
        let mut eb = vec![0.0; e];
        let fw = run_forward(&gpu, &l, &mut pt, &mut ef)?;
        let gr = bwd::run_backward(&gpu, &l, &fw, &mut bp, &mut eb)?;
        pt.backward = bp.total();
        if rep > 0 {
            samples.push((pt, bp, ef, eb));
        }
        last = Some((fw, gr));
    }
    let Some((fw, gr)) = last else {
        return Err(Error::Backend("no GPU step ran".into()));
    };
    let down = |s: &CudaSlice<f32>| st.clone_dtoh(s).map_err(drv("download"));
    let y = down(&fw.y)?;
    let grads = MoeGrads {
        dx: down(&gr.dx)?,
        dwr: down(&gr.dwr)?,
        dw1: down(&gr.dw1)?,
        dw2: down(&gr.dw2)?,
    };
    gpu.sync()?;
    // CPU reference with the same parameters, input, noise and dY.
    let cpu = forward(&p, &x, &bias, r, balance, 0, &mut PhaseTimes::default());
    let cg = backward(&p, &x, &cpu, &dy, r, balance, 0);
    let routing_mismatches = fw
        .chosen
        .iter()
        .zip(&cpu.chosen)
        .filter(|(a, b)| **a as i64 != **b as i64)
        .count();
    let check = GpuCheck {
        y: rel_err(&y, &cpu.y),
        dx: rel_err(&grads.dx, &cg.dx),
        dwr: rel_err(&grads.dwr, &cg.dwr),
        dw1: rel_err(&grads.dw1, &cg.dw1),
        dw2: rel_err(&grads.dw2, &cg.dw2),
        routing_mismatches,
    };
    let min = |v: &mut dyn Iterator<Item = f64>| v.fold(f64::INFINITY, f64::min);
    let pmin = |fsel: fn(&PhaseTimes) -> f64| min(&mut samples.iter().map(|s| fsel(&s.0)));
    let bmin = |fsel: fn(&bwd::BackwardPhases) -> f64| min(&mut samples.iter().map(|s| fsel(&s.1)));
    let steps: Vec<f64> = samples.iter().map(|s| s.0.forward() + s.0.backward).collect();
    let ss = Summary::of(&steps);
    Ok(GpuStep {
        y,
        grads,
        loads: fw.loads,
        times: PhaseTimes {
            router: pmin(|p| p.router),
            dispatch: pmin(|p| p.dispatch),
            experts: pmin(|p| p.experts),
            combine: pmin(|p| p.combine),
            backward: pmin(|p| p.backward),
        },
        backward_phases: bwd::BackwardPhases {
            combine: bmin(|b| b.combine),
            experts: bmin(|b| b.experts),
            dispatch: bmin(|b| b.dispatch),
            router: bmin(|b| b.router),
        },
        expert_forward_s: (0..e).map(|i| min(&mut samples.iter().map(|s| s.2[i]))).collect(),
        expert_backward_s: (0..e).map(|i| min(&mut samples.iter().map(|s| s.3[i]))).collect(),
        step_s: ss.min,
        spread: ss.rel_spread(),
        check,
    })
}

/// The measured GPU backend (`cuda`): forward + backward on one GPU ([`gpu_step`], [`REPEATS`] timed steps after a
/// warm-up), checked against the CPU layer; the step time is forward + backward, as for [`super::MoeCpu`].
#[derive(Debug, Clone, Default)]
pub struct MoeCuda;

impl Backend<MoeLayer> for MoeCuda {
    fn name(&self) -> &str {
        "cuda"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Measured
    }
    fn available(&self) -> Result<(), String> {
        match gpu_unavailable_reason() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }
    fn run(&mut self, layer: &MoeLayer, ctx: &mut RunCtx) -> Result<MoeOutcome, Error> {
        let g = gpu_step(layer, ctx.seed.derive("moe_cuda"), REPEATS)?;
        let c = g.check;
        if c.worst() > FP32_REL_BOUND {
            return Err(Error::Backend(format!(
                "GPU MoE layer differs from the CPU result (relative errors y {:.2e}, dx {:.2e}, dW_r {:.2e}, \
                 dW1 {:.2e}, dW2 {:.2e}; bound {FP32_REL_BOUND:.0e}; {} slots routed differently)",
                c.y, c.dx, c.dwr, c.dw1, c.dw2, c.routing_mismatches
            )));
        }
        let m = super::MoeMeasurement {
            loads: vec![g.loads],
            phases: vec![g.times],
            step_s: vec![g.step_s],
            spread: g.spread,
        };
        Ok(super::outcome(layer, &m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainlab_core::workloads::moe::Routing;

    fn layer(routing: Routing, capacity_factor: f64, balance_loss: Option<f64>) -> MoeLayer {
        MoeLayer {
            tokens: 256,
            d_model: 32,
            d_ff: 64,
            experts: 8,
            routing,
            capacity_factor,
            balance_loss,
            ep_ranks: 1,
            dtype: trainlab_core::Dtype::Fp32,
            cluster: trainlab_core::ClusterSpec {
                gpu: trainlab_core::GpuSpec {
                    name: "x".into(),
                    memory_bytes: 1,
                    peak_flops: Default::default(),
                    hbm_bandwidth_bytes_per_s: 1e12,
                    nvlink_bandwidth_bytes_per_s: 0.0,
                    tdp_watts: 1.0,
                    source: "test".into(),
                    sm: None,
                },
                gpus_per_node: 1,
                nodes: 1,
                intra: trainlab_core::LinkSpec {
                    bandwidth_bytes_per_s: 1e11,
                    latency_s: 1e-6,
                },
                inter: trainlab_core::LinkSpec {
                    bandwidth_bytes_per_s: 1e10,
                    latency_s: 1e-6,
                },
            },
            router: Default::default(),
            pad_to_capacity: false,
        }
    }

    /// NVRTC needs no GPU: wherever `libnvrtc` can be loaded (e.g. from the `nvidia-cuda-nvrtc` wheel on
    /// `LD_LIBRARY_PATH`), the kernel source must compile and define every entry point `Gpu::new` loads.
    #[test]
    fn moe_kernels_compile_with_nvrtc_when_present() {
        crate::gpu::tests::assert_kernels_compile_when_nvrtc_present(MOE_KERNELS_CU, &MOE_KERNEL_NAMES);
    }

    #[test]
    fn rel_err_is_relative_to_the_reference_maximum() {
        assert_eq!(rel_err(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((rel_err(&[1.0, 2.5], &[1.0, 2.0]) - 0.25).abs() < 1e-12);
        assert_eq!(rel_err(&[0.0], &[0.0]), 0.0);
        assert_eq!(rel_err(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    }

    /// On a GPU: forward and every gradient within [`FP32_REL_BOUND`] of the CPU layer for top-2 routing with drops
    /// and for 2 prototypes with the balance loss, and the backend reports a step time that includes the backward.
    /// Without one: prints the reason and checks that nothing is attempted.
    #[test]
    fn gpu_forward_backward_matches_cpu_or_skips() {
        if let Some(why) = gpu_unavailable_reason() {
            println!("skipped: {why}");
            assert!(!why.is_empty());
            let l = layer(Routing::TopK(2), 1.0, None);
            assert!(matches!(gpu_step(&l, Seed(1), 1), Err(Error::Unsupported(_))));
            assert!(MoeCuda.available().is_err());
            return;
        }
        for (name, l) in [
            ("top2 cf1.0", layer(Routing::TopK(2), 1.0, None)),
            (
                "2xtop1 cf1.0 balance 0.01",
                layer(Routing::Prototypes(2), 1.0, Some(0.01)),
            ),
        ] {
            let g = gpu_step(&l, Seed(1), 3).unwrap();
            let c = g.check;
            println!(
                "moe cuda {name}: rel err y {:.2e} dx {:.2e} dW_r {:.2e} dW1 {:.2e} dW2 {:.2e} (bound {:.0e}), \
                 routing mismatches {}; fwd router {:.1} us dispatch {:.1} us experts {:.1} us combine {:.1} us; \
                 bwd {:.1} us (combine {:.1}, experts {:.1}, dispatch {:.1}, router {:.1}); step {:.1} us; \
                 per-expert fwd us {:?} bwd us {:?}",
                c.y,
                c.dx,
                c.dwr,
                c.dw1,
                c.dw2,
                FP32_REL_BOUND,
                c.routing_mismatches,
                g.times.router * 1e6,
                g.times.dispatch * 1e6,
                g.times.experts * 1e6,
                g.times.combine * 1e6,
                g.times.backward * 1e6,
                g.backward_phases.combine * 1e6,
                g.backward_phases.experts * 1e6,
                g.backward_phases.dispatch * 1e6,
                g.backward_phases.router * 1e6,
                g.step_s * 1e6,
                g.expert_forward_s.iter().map(|t| (t * 1e6).round()).collect::<Vec<_>>(),
                g.expert_backward_s
                    .iter()
                    .map(|t| (t * 1e6).round())
                    .collect::<Vec<_>>(),
            );
            assert_eq!(c.routing_mismatches, 0, "{name}: GPU and CPU routed differently");
            for (what, v) in [("y", c.y), ("dx", c.dx), ("dwr", c.dwr), ("dw1", c.dw1), ("dw2", c.dw2)] {
                assert!(v <= FP32_REL_BOUND, "{name}: {what} relative error {v:.3e}");
            }
            // The gradients are not trivially zero, and capacity 1.0 dropped something.
            assert!(g.grads.dw1.iter().any(|v| *v != 0.0) && g.grads.dwr.iter().any(|v| *v != 0.0));
            assert!(g.loads.iter().any(|&x| x > l.capacity()), "{name}: expected drops");
            assert!(g.times.backward > 0.0 && g.step_s >= g.times.backward);
            assert_eq!(g.expert_backward_s.len(), 8);
        }
        let l = layer(Routing::TopK(2), 1.25, None);
        let mut ctx = RunCtx::new(Seed(3));
        let o = MoeCuda.run(&l, &mut ctx).unwrap();
        assert!(o.backward_s.value > 0.0);
        assert!(o.step_s.value >= o.forward_s.value + o.backward_s.value * 0.99);
    }
}
