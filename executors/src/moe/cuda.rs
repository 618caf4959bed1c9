//! The MoE layer forward on an NVIDIA GPU (cudarc, dynamic loading): router GEMM and per-expert FFN GEMMs on cuBLAS
//! (fp32), NVRTC kernels for gating (per-group softmax + top-k, one thread per token) and ReLU; capacity assignment,
//! gather and combine run on the host between transfers (so dispatch/combine times include PCIe copies). The result
//! is checked against the CPU layer ([`super::forward`]) with the same parameters and router noise.
//!
//! Status: compiled on every build; **never run on a GPU during development** (no device was available), so the
//! GPU path is unverified. Without a GPU, [`MoeCuda::available`] gives the reason and nothing is touched.
use super::{MoeParams, PhaseTimes, RoutingSpec, forward, popularity, router_bias};
use crate::cuda::gpu_unavailable_reason;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys as blas_sys};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::sync::Arc;
use std::time::Instant;
use trainlab_core::workloads::moe::{Estimate, MoeLayer, MoeOutcome};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, Seed, Workload};

/// CUDA C source of the gating and activation kernels.
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
extern "C" __global__ void tl_relu(float* x, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) x[i] = fmaxf(x[i], 0.f);
}
"#;

fn drv(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Backend(format!("CUDA {what}: {e}"))
}

/// Row-major `C (m x n) = A (m x k) * B (k x n) [+ C]` on cuBLAS (column-major: `C^T = B^T A^T`).
#[allow(clippy::too_many_arguments)]
fn gemm_rm(
    blas: &CudaBlas,
    m: usize,
    n: usize,
    k: usize,
    a: &CudaSlice<f32>,
    b: &CudaSlice<f32>,
    c: &mut CudaSlice<f32>,
    acc: bool,
) -> Result<(), Error> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let cfg = GemmConfig {
        transa: blas_sys::cublasOperation_t::CUBLAS_OP_N,
        transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
        m: n as i32,
        n: m as i32,
        k: k as i32,
        alpha: 1.0f32,
        lda: n as i32,
        ldb: k as i32,
        beta: if acc { 1.0 } else { 0.0 },
        ldc: n as i32,
    };
    // SAFETY: the slices were allocated with exactly m*k, k*n and m*n elements by the caller (asserted in debug),
    // and cuBLAS reads/writes only inside those extents for these leading dimensions.
    debug_assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    unsafe { blas.gemm(cfg, b, a, c) }.map_err(|e| Error::Backend(format!("cuBLAS gemm: {e}")))
}

struct Gpu {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    gate: cudarc::driver::CudaFunction,
    relu: cudarc::driver::CudaFunction,
}

impl Gpu {
    fn new() -> Result<Gpu, Error> {
        if let Some(why) = gpu_unavailable_reason() {
            return Err(Error::Unsupported(why));
        }
        let ctx = CudaContext::new(0).map_err(drv("context"))?;
        let stream = ctx.default_stream();
        let ptx = cudarc::nvrtc::compile_ptx(MOE_KERNELS_CU)
            .map_err(|e| Error::Backend(format!("NVRTC compilation of the MoE kernels: {e}")))?;
        let module = ctx.load_module(ptx).map_err(drv("module load"))?;
        let gate = module.load_function("tl_moe_gate").map_err(drv("load tl_moe_gate"))?;
        let relu = module.load_function("tl_relu").map_err(drv("load tl_relu"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| Error::Backend(format!("cuBLAS handle: {e}")))?;
        Ok(Gpu {
            stream,
            blas,
            gate,
            relu,
        })
    }
}

/// Result of one GPU forward.
#[derive(Debug, Clone)]
pub struct GpuForward {
    /// Output `N x d`.
    pub y: Vec<f32>,
    /// Per-expert routed loads.
    pub loads: Vec<u64>,
    /// Phase times (forward phases only; `backward` is 0).
    pub times: PhaseTimes,
    /// Max relative error against the CPU forward, `max |y_gpu - y_cpu| / max |y_cpu|`.
    pub rel_err_vs_cpu: f64,
}

/// Runs the forward on the GPU and checks it against the CPU layer.
pub fn gpu_forward(layer: &MoeLayer, seed: Seed) -> Result<GpuForward, Error> {
    layer.validate()?;
    let gpu = Gpu::new()?;
    let st = &gpu.stream;
    let (n, d, f, e) = (
        layer.tokens as usize,
        layer.d_model as usize,
        layer.d_ff as usize,
        layer.experts as usize,
    );
    if (e * 2 * d * f) as u64 > super::MAX_PARAMS {
        return Err(Error::Unsupported("layer too large for the GPU check".into()));
    }
    let r = RoutingSpec {
        groups: layer.routing.groups() as usize,
        per_group: layer.routing.per_group() as usize,
        capacity: layer.capacity() as usize,
    };
    let k = r.groups * r.per_group;
    let p = MoeParams::init(d, f, e, 0.1, seed.derive("params"));
    let mut rng = seed.derive("x").rng();
    let x: Vec<f32> = (0..n * d).map(|_| super::normal(&mut rng)).collect();
    let pop = popularity(&layer.router, e, &mut rng)?;
    let bias = router_bias(pop.as_deref(), n, e, &mut rng);
    let up = |v: &[f32]| st.clone_htod(v).map_err(drv("upload"));
    let mut times = PhaseTimes::default();
    // Router
    let t0 = Instant::now();
    let xd = up(&x)?;
    let wr = up(&p.wr)?;
    let mut logits = up(&bias)?;
    gemm_rm(&gpu.blas, n, e, d, &xd, &wr, &mut logits, true)?;
    let mut probs = st.alloc_zeros::<f32>(n * e).map_err(drv("alloc"))?;
    let mut chosen = st.alloc_zeros::<i32>(n * k).map_err(drv("alloc"))?;
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(128) as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    let (ni, ei, gi, pi) = (n as i32, e as i32, r.groups as i32, r.per_group as i32);
    let mut lb = st.launch_builder(&gpu.gate);
    lb.arg(&logits)
        .arg(&mut probs)
        .arg(&mut chosen)
        .arg(&ni)
        .arg(&ei)
        .arg(&gi)
        .arg(&pi);
    // SAFETY: the kernel reads n*e logits and writes n*e probs and n*k choices, the sizes allocated above.
    unsafe { lb.launch(cfg) }.map_err(drv("launch gate"))?;
    let probs_h = st.clone_dtoh(&probs).map_err(drv("download"))?;
    let chosen_h = st.clone_dtoh(&chosen).map_err(drv("download"))?;
    times.router = t0.elapsed().as_secs_f64();
    // Dispatch (host)
    let t0 = Instant::now();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); e];
    let mut loads = vec![0u64; e];
    let mut slot_of = vec![None; n * k];
    for t in 0..n {
        for s in 0..k {
            let ex = chosen_h[t * k + s].clamp(0, e as i32 - 1) as usize;
            loads[ex] += 1;
            if members[ex].len() < r.capacity {
                slot_of[t * k + s] = Some((ex, members[ex].len()));
                members[ex].push(t);
            }
        }
    }
    let mut xe = Vec::with_capacity(e);
    for m in &members {
        let mut v = Vec::with_capacity(m.len() * d);
        for &t in m {
            v.extend_from_slice(&x[t * d..(t + 1) * d]);
        }
        xe.push(if v.is_empty() { None } else { Some(up(&v)?) });
    }
    times.dispatch = t0.elapsed().as_secs_f64();
    // Experts
    let t0 = Instant::now();
    let mut outs: Vec<Vec<f32>> = Vec::with_capacity(e);
    for ex in 0..e {
        let m = members[ex].len();
        let Some(xin) = &xe[ex] else {
            outs.push(Vec::new());
            continue;
        };
        let w1 = up(&p.w1[ex * d * f..(ex + 1) * d * f])?;
        let w2 = up(&p.w2[ex * f * d..(ex + 1) * f * d])?;
        let mut h = st.alloc_zeros::<f32>(m * f).map_err(drv("alloc"))?;
        gemm_rm(&gpu.blas, m, f, d, xin, &w1, &mut h, false)?;
        let cnt = (m * f) as u64;
        let rc = LaunchConfig {
            grid_dim: ((m * f).div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut lb = st.launch_builder(&gpu.relu);
        lb.arg(&mut h).arg(&cnt);
        // SAFETY: the kernel touches the m*f elements of `h` only.
        unsafe { lb.launch(rc) }.map_err(drv("launch relu"))?;
        let mut o = st.alloc_zeros::<f32>(m * d).map_err(drv("alloc"))?;
        gemm_rm(&gpu.blas, m, d, f, &h, &w2, &mut o, false)?;
        outs.push(st.clone_dtoh(&o).map_err(drv("download"))?);
    }
    st.synchronize().map_err(drv("synchronize"))?;
    times.experts = t0.elapsed().as_secs_f64();
    // Combine (host)
    let t0 = Instant::now();
    let mut y = vec![0f32; n * d];
    for t in 0..n {
        for s in 0..k {
            if let Some((ex, pos)) = slot_of[t * k + s] {
                let g = probs_h[t * e + ex];
                for j in 0..d {
                    y[t * d + j] += g * outs[ex][pos * d + j];
                }
            }
        }
    }
    times.combine = t0.elapsed().as_secs_f64();
    let cpu = forward(&p, &x, &bias, r, 0.0, 0, &mut PhaseTimes::default());
    let scale = cpu.y.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-30);
    let err = y.iter().zip(&cpu.y).fold(0f32, |a, (g, c)| a.max((g - c).abs())) / scale;
    Ok(GpuForward {
        y,
        loads,
        times,
        rel_err_vs_cpu: err as f64,
    })
}

/// The measured GPU backend (`cuda`): forward only, checked against the CPU; `step_time` is the forward time.
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
        let g = gpu_forward(layer, ctx.seed.derive("moe_cuda"))?;
        if g.rel_err_vs_cpu > 1e-3 {
            return Err(Error::Backend(format!(
                "GPU MoE forward differs from the CPU result: max relative error {:.2e} > 1e-3",
                g.rel_err_vs_cpu
            )));
        }
        let m = super::MoeMeasurement {
            loads: vec![g.loads],
            phases: vec![g.times],
            step_s: vec![g.times.forward()],
            spread: 0.0,
        };
        let mut o = super::outcome(layer, &m);
        o.backward_s = Estimate::exact(0.0);
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_cleanly_or_matches_cpu() {
        let l = MoeLayer {
            tokens: 256,
            d_model: 32,
            d_ff: 64,
            experts: 8,
            routing: trainlab_core::workloads::moe::Routing::TopK(2),
            capacity_factor: 1.0,
            balance_loss: None,
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
        };
        let b = MoeCuda;
        match b.available() {
            Err(why) => {
                assert!(!why.is_empty());
                assert!(matches!(gpu_forward(&l, Seed(1)), Err(Error::Unsupported(_))));
            }
            Ok(()) => {
                let g = gpu_forward(&l, Seed(1)).unwrap();
                assert!(g.rel_err_vs_cpu < 1e-3, "{}", g.rel_err_vs_cpu);
            }
        }
    }
}
