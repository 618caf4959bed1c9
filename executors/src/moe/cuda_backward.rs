//! Backward pass of the GPU MoE layer (the parent module documents the whole step). It mirrors
//! [`crate::moe::backward`] operation by operation: the gate gradient and `dO_e = gate * dY` only for kept slots,
//! the per-expert FFN backward, the scatter-add of `dX_e` into `dX`, the balance-loss term `alpha E f_i / N` added to
//! every `dP[t, i]` (with `f_i` a constant, as in Switch), the per-group softmax backward and the router GEMMs.
//!
//! Compiled on every build, **never run on a GPU** during development.
use super::{DevForward, DevLayer, Gpu};
use crate::gpu::{drv, event_gaps, grid, sgemm_rm};
use cudarc::driver::{CudaSlice, PushKernelArg};
use std::time::Instant;
use trainlab_core::Error;

/// Phase times of one GPU backward, seconds (host clocks around stream-synchronised phases).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BackwardPhases {
    /// Combine backward: `dO_e = gate * dY` rows and the gate gradients.
    pub combine: f64,
    /// Expert FFN backward: four GEMMs and the ReLU backward per expert.
    pub experts: f64,
    /// Dispatch backward: scatter-add of the `dX_e` rows into `dX`.
    pub dispatch: f64,
    /// Router backward: softmax backward (with the balance loss), `dW_r` and the router's share of `dX`.
    pub router: f64,
}

impl BackwardPhases {
    /// The whole backward.
    pub fn total(&self) -> f64 {
        self.combine + self.experts + self.dispatch + self.router
    }
}

/// Gradients on the device, laid out as [`crate::moe::MoeGrads`].
pub(crate) struct DevGrads {
    pub(crate) dx: CudaSlice<f32>,
    pub(crate) dwr: CudaSlice<f32>,
    pub(crate) dw1: CudaSlice<f32>,
    pub(crate) dw2: CudaSlice<f32>,
}

/// The balance-loss gradient per expert column, `alpha E f_i / N` with `f_i = load_i / (k N)`, computed exactly as
/// the CPU backward does (f64, then rounded to f32); zeros when the loss is off.
pub(crate) fn balance_grad(balance: f64, loads: &[u64], n: usize) -> Vec<f32> {
    let e = loads.len();
    if balance <= 0.0 {
        return vec![0.0; e];
    }
    let total: u64 = loads.iter().sum();
    loads
        .iter()
        .map(|&l| (balance * e as f64 * l as f64 / total.max(1) as f64 / n as f64) as f32)
        .collect()
}

/// Backward on the device for the layer's upstream gradient `l.dy`, from the forward's saved state `fw`. Adds the
/// phase times to `times` and per-expert FFN backward times (CUDA events) to `per_expert`.
pub(crate) fn run_backward(
    g: &Gpu,
    l: &DevLayer,
    fw: &DevForward,
    times: &mut BackwardPhases,
    per_expert: &mut [f64],
) -> Result<DevGrads, Error> {
    let st = g.stream();
    let (n, d, f, e) = (l.n, l.d, l.f, l.e);
    let alloc = |len: usize| st.alloc_zeros::<f32>(len).map_err(drv("alloc"));
    let (di, ei) = (d as i32, e as i32);
    // Combine backward: dO_e and dP (n x e, zero where a slot was dropped or an expert not chosen).
    let t0 = Instant::now();
    let mut dprobs = alloc(n * e)?;
    let mut d_out: Vec<Option<CudaSlice<f32>>> = Vec::with_capacity(e);
    for (ex, s) in fw.experts.iter().enumerate() {
        let Some(s) = s else {
            d_out.push(None);
            continue;
        };
        let mut dout = alloc(s.m * d)?;
        let (mi, exi) = (s.m as i32, ex as i32);
        let mut lb = st.launch_builder(&g.combine_bwd);
        lb.arg(&l.dy)
            .arg(&s.o)
            .arg(&s.tok)
            .arg(&fw.probs)
            .arg(&mut dout)
            .arg(&mut dprobs)
            .arg(&mi)
            .arg(&di)
            .arg(&ei)
            .arg(&exi);
        // SAFETY: one warp (32 threads, the block of 256 is a multiple of 32) per row r < m reads dy and probs at the
        // row's token (< n, host-built list), o (m x d), and writes dout (m x d) and one dprobs entry (n x e) per
        // row; the rows of one expert are distinct tokens.
        unsafe { lb.launch(grid(s.m * 32)) }.map_err(drv("launch combine backward"))?;
        d_out.push(Some(dout));
    }
    g.sync()?;
    times.combine += t0.elapsed().as_secs_f64();
    // Experts backward.
    let t0 = Instant::now();
    let mut dw1 = alloc(e * d * f)?;
    let mut dw2 = alloc(e * f * d)?;
    let mut dxe: Vec<Option<CudaSlice<f32>>> = Vec::with_capacity(e);
    let mut evs = vec![g.event()?];
    for (ex, (s, dout)) in fw.experts.iter().zip(&d_out).enumerate() {
        let (Some(s), Some(dout)) = (s, dout) else {
            dxe.push(None);
            evs.push(g.event()?);
            continue;
        };
        let m = s.m;
        let w1 = l.w1.slice(ex * d * f..(ex + 1) * d * f); // d x f
        let w2 = l.w2.slice(ex * f * d..(ex + 1) * f * d); // f x d
        // dW2_e [f, d] = A_e^T dO_e: A_e stored [m, f] (transposed), dO_e [m, d].
        {
            let mut dw2e = dw2.slice_mut(ex * f * d..(ex + 1) * f * d);
            sgemm_rm(g.blas(), f, d, m, &s.a, true, dout, false, &mut dw2e, false)?;
        }
        // dA_e [m, f] = dO_e W2_e^T: dO_e [m, d], W2_e stored [f, d] (transposed).
        let mut da = alloc(m * f)?;
        sgemm_rm(g.blas(), m, f, d, dout, false, &w2, true, &mut da, false)?;
        // dH_e = dA_e where H_e > 0.
        let cnt = (m * f) as u64;
        let mut lb = st.launch_builder(&g.relu_bwd);
        lb.arg(&mut da).arg(&s.h).arg(&cnt);
        // SAFETY: touches the m*f elements of da and h only.
        unsafe { lb.launch(grid(m * f)) }.map_err(drv("launch relu backward"))?;
        // dW1_e [d, f] = X_e^T dH_e: X_e stored [m, d] (transposed), dH_e [m, f].
        {
            let mut dw1e = dw1.slice_mut(ex * d * f..(ex + 1) * d * f);
            sgemm_rm(g.blas(), d, f, m, &s.xe, true, &da, false, &mut dw1e, false)?;
        }
        // dX_e [m, d] = dH_e W1_e^T: dH_e [m, f], W1_e stored [d, f] (transposed).
        let mut dx_e = alloc(m * d)?;
        sgemm_rm(g.blas(), m, d, f, &da, false, &w1, true, &mut dx_e, false)?;
        dxe.push(Some(dx_e));
        evs.push(g.event()?);
    }
    g.sync()?;
    times.experts += t0.elapsed().as_secs_f64();
    for (acc, t) in per_expert.iter_mut().zip(event_gaps(&evs)?) {
        *acc += t;
    }
    // Dispatch backward: dX[t] += dX_e[pos].
    let t0 = Instant::now();
    let mut dx = alloc(n * d)?;
    for (s, dx_e) in fw.experts.iter().zip(&dxe) {
        let (Some(s), Some(dx_e)) = (s, dx_e) else { continue };
        let mi = s.m as i32;
        let mut lb = st.launch_builder(&g.scatter_add);
        lb.arg(dx_e).arg(&s.tok).arg(&mut dx).arg(&mi).arg(&di);
        // SAFETY: m*d threads read dx_e (m x d) and add into dx (n x d) at distinct token rows < n.
        unsafe { lb.launch(grid(s.m * d)) }.map_err(drv("launch scatter-add"))?;
    }
    g.sync()?;
    times.dispatch += t0.elapsed().as_secs_f64();
    // Router backward: dLogits per group, dW_r = X^T dLogits, dX += dLogits W_r^T.
    let t0 = Instant::now();
    let bal = st
        .clone_htod(&balance_grad(l.balance, &fw.loads, n))
        .map_err(drv("upload"))?;
    let mut dlogits = alloc(n * e)?;
    let (ni, gi) = (n as i32, l.r.groups as i32);
    let mut lb = st.launch_builder(&g.softmax_bwd);
    lb.arg(&fw.probs)
        .arg(&dprobs)
        .arg(&bal)
        .arg(&mut dlogits)
        .arg(&ni)
        .arg(&ei)
        .arg(&gi);
    // SAFETY: one thread per (token, group) reads and writes e/groups entries of its own row of probs, dprobs and
    // dlogits (n x e each) and of bal (e); groups divides e (validated).
    unsafe { lb.launch(grid(n * l.r.groups)) }.map_err(drv("launch softmax backward"))?;
    let mut dwr = alloc(d * e)?;
    // dW_r [d, e] = X^T dLogits: X stored [n, d] (transposed), dLogits [n, e].
    sgemm_rm(g.blas(), d, e, n, &l.x, true, &dlogits, false, &mut dwr, false)?;
    // dX [n, d] += dLogits W_r^T: dLogits [n, e], W_r stored [d, e] (transposed).
    sgemm_rm(g.blas(), n, d, e, &dlogits, false, &l.wr, true, &mut dx, true)?;
    g.sync()?;
    times.router += t0.elapsed().as_secs_f64();
    Ok(DevGrads { dx, dwr, dw1, dw2 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::tests::sgemm_rm_host;
    use crate::moe::{MoeParams, PhaseTimes, RoutingSpec, backward, forward, normal, router_bias};
    use trainlab_core::Seed;

    /// The GPU step's orchestration replayed on the host: the kernels as Rust loops written from their CUDA C and
    /// the GEMMs with `run_forward`'s and `run_backward`'s exact (m, n, k, operand, transpose) arguments through the
    /// cuBLAS reference. The forward must reproduce the CPU forward's probabilities, per-expert rows,
    /// pre-activations, outputs and `Y`; the backward, run from that state, the CPU backward's gradients, with
    /// drops, prototypes and the balance loss.
    #[test]
    fn host_replay_of_the_gpu_step_matches_the_cpu_layer() {
        for (r, bal) in [
            (
                RoutingSpec {
                    groups: 1,
                    per_group: 2,
                    capacity: 5,
                },
                0.0,
            ),
            (
                RoutingSpec {
                    groups: 2,
                    per_group: 1,
                    capacity: 5,
                },
                0.01,
            ),
        ] {
            let (n, d, f, e) = (12, 6, 5, 4);
            let p = MoeParams::init(d, f, e, 1.0, Seed(5));
            let mut rng = Seed(6).rng();
            let x: Vec<f32> = (0..n * d).map(|_| normal(&mut rng)).collect();
            let dy: Vec<f32> = (0..n * d).map(|_| normal(&mut rng)).collect();
            let bias = router_bias(None, n, e, &mut rng);
            let fw = forward(&p, &x, &bias, r, bal, 1, &mut PhaseTimes::default());
            assert!(fw.slots.iter().any(|s| s.is_none()), "the test should drop slots");
            let want = backward(&p, &x, &fw, &dy, r, bal, 1);
            // Forward GEMMs with run_forward's arguments: router logits (then the gate kernel's softmax), and per
            // expert the gather, H = X_e W1_e, O = relu(H) W2_e and the combine.
            let mut logits = bias.clone();
            sgemm_rm_host(n, e, d, &x, false, &p.wr, false, &mut logits, true);
            let g = e / r.groups;
            let mut probs = vec![0f32; n * e];
            for (row, out) in logits.chunks(g).zip(probs.chunks_mut(g)) {
                let mx = row.iter().copied().fold(-3.4e38f32, f32::max);
                let s: f32 = row.iter().map(|v| (v - mx).exp()).sum();
                for (o, v) in out.iter_mut().zip(row) {
                    *o = (v - mx).exp() / s;
                }
            }
            assert!(super::super::rel_err(&probs, &fw.probs) < 1e-5);
            let mut y = vec![0f32; n * d];
            for ex in 0..e {
                let mem = &fw.members[ex];
                let m = mem.len();
                if m == 0 {
                    continue;
                }
                let xe: Vec<f32> = (0..m * d).map(|i| x[mem[i / d] as usize * d + i % d]).collect(); // tl_moe_gather
                assert_eq!(xe, fw.xe[ex]);
                let mut h = vec![0f32; m * f];
                sgemm_rm_host(
                    m,
                    f,
                    d,
                    &xe,
                    false,
                    &p.w1[ex * d * f..(ex + 1) * d * f],
                    false,
                    &mut h,
                    false,
                );
                assert!(super::super::rel_err(&h, &fw.he[ex]) < 1e-5);
                let a: Vec<f32> = h.iter().map(|v| v.max(0.0)).collect();
                let mut o = vec![0f32; m * d];
                sgemm_rm_host(
                    m,
                    d,
                    f,
                    &a,
                    false,
                    &p.w2[ex * f * d..(ex + 1) * f * d],
                    false,
                    &mut o,
                    false,
                );
                assert!(super::super::rel_err(&o, &fw.oe[ex]) < 1e-5);
                for i in 0..m * d {
                    let t = mem[i / d] as usize;
                    y[t * d + i % d] += fw.probs[t * e + ex] * o[i]; // tl_moe_combine
                }
            }
            assert!(super::super::rel_err(&y, &fw.y) < 1e-5);
            // Combine backward (tl_moe_combine_bwd).
            let mut dprobs = vec![0f32; n * e];
            let mut d_out = vec![];
            for (ex, mem) in fw.members.iter().enumerate() {
                let m = mem.len();
                let mut dout = vec![0f32; m * d];
                for (w, &t) in mem.iter().enumerate() {
                    let t = t as usize;
                    let g = fw.probs[t * e + ex];
                    let mut dot = 0f32;
                    for j in 0..d {
                        dout[w * d + j] = g * dy[t * d + j];
                        dot += fw.oe[ex][w * d + j] * dy[t * d + j];
                    }
                    dprobs[t * e + ex] += dot;
                }
                d_out.push(dout);
            }
            // Experts backward, GEMM arguments as in run_backward.
            let mut dw1 = vec![0f32; e * d * f];
            let mut dw2 = vec![0f32; e * f * d];
            let mut dx = vec![0f32; n * d];
            for ex in 0..e {
                let m = fw.members[ex].len();
                if m == 0 {
                    continue;
                }
                let a: Vec<f32> = fw.he[ex].iter().map(|v| v.max(0.0)).collect(); // tl_moe_relu
                let (h, xe, dout) = (&fw.he[ex], &fw.xe[ex], &d_out[ex]);
                let w1 = &p.w1[ex * d * f..(ex + 1) * d * f];
                let w2 = &p.w2[ex * f * d..(ex + 1) * f * d];
                sgemm_rm_host(
                    f,
                    d,
                    m,
                    &a,
                    true,
                    dout,
                    false,
                    &mut dw2[ex * f * d..(ex + 1) * f * d],
                    false,
                );
                let mut da = vec![0f32; m * f];
                sgemm_rm_host(m, f, d, dout, false, w2, true, &mut da, false);
                for (v, hv) in da.iter_mut().zip(h) {
                    if *hv <= 0.0 {
                        *v = 0.0; // tl_moe_relu_bwd
                    }
                }
                sgemm_rm_host(
                    d,
                    f,
                    m,
                    xe,
                    true,
                    &da,
                    false,
                    &mut dw1[ex * d * f..(ex + 1) * d * f],
                    false,
                );
                let mut dx_e = vec![0f32; m * d];
                sgemm_rm_host(m, d, f, &da, false, w1, true, &mut dx_e, false);
                for (w, &t) in fw.members[ex].iter().enumerate() {
                    for j in 0..d {
                        dx[t as usize * d + j] += dx_e[w * d + j]; // tl_moe_scatter_add
                    }
                }
            }
            // Router backward (tl_moe_softmax_bwd with balance_grad, then the two GEMMs).
            let balg = balance_grad(bal, &fw.loads, n);
            let mut dlogits = vec![0f32; n * e];
            for t in 0..n {
                for grp in 0..r.groups {
                    let lo = t * e + grp * g;
                    let s: f32 = (0..g)
                        .map(|j| fw.probs[lo + j] * (dprobs[lo + j] + balg[grp * g + j]))
                        .sum();
                    for j in 0..g {
                        dlogits[lo + j] = fw.probs[lo + j] * ((dprobs[lo + j] + balg[grp * g + j]) - s);
                    }
                }
            }
            let mut dwr = vec![0f32; d * e];
            sgemm_rm_host(d, e, n, &x, true, &dlogits, false, &mut dwr, false);
            sgemm_rm_host(n, d, e, &dlogits, false, &p.wr, true, &mut dx, true);
            for (what, got, want) in [
                ("dx", &dx, &want.dx),
                ("dwr", &dwr, &want.dwr),
                ("dw1", &dw1, &want.dw1),
                ("dw2", &dw2, &want.dw2),
            ] {
                let err = super::super::rel_err(got, want);
                assert!(err < 1e-5, "{what}: relative error {err:e} (groups {})", r.groups);
                assert!(want.iter().any(|v| *v != 0.0), "{what} is all zeros");
            }
        }
    }

    #[test]
    fn balance_grad_matches_the_cpu_formula() {
        // alpha E f_i / N with f_i = load_i / total: E = 4, N = 10, k = 2 (total 20).
        let g = balance_grad(0.01, &[8, 6, 4, 2], 10);
        let want = [
            0.01 * 4.0 * 0.4 / 10.0,
            0.01 * 4.0 * 0.3 / 10.0,
            0.01 * 4.0 * 0.2 / 10.0,
            0.01 * 4.0 * 0.1 / 10.0,
        ];
        for (a, b) in g.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-9, "{a} vs {b}");
        }
        assert_eq!(balance_grad(0.0, &[8, 6, 4, 2], 10), vec![0.0; 4]);
    }
}
