//! The cost of one contrastive pre-training step (CLIP-style in-batch negatives or MoCo/VICTOR-style momentum
//! queues), in closed form: the `analytical` backend of the `contrastive_pretrain` kind. Formulas from
//! `shared/design/notes/rlhf-victor.md` §3.4–3.5 (the notes' own derivations, tagged [I] there):
//!
//! With W GPUs, global batch B, per-GPU batch b = B/W, embedding width d, query encoders of N_v, N_t parameters fed
//! T_v, T_t tokens per sample:
//! - encoders: `6·(N_v·T_v + N_t·T_t)·b` FLOPs for the query encoders (forward and backward), plus
//!   `2·(N_v·T_v + N_t·T_t)·b` for the momentum key encoders (forward only), at `mfu` of the GPU's peak;
//! - logits, forward and backward: in-batch `3 × 2·B·B·d` per rank (logits, and the gradients of both sides), or
//!   `3 × 2·b·B·d` with the local loss; queue `2 × 2·b·(K + b)·d` per queue (each query against the queue and the
//!   batch's own keys; the keys come from the momentum network and take no gradient);
//! - momentum EMA: a memory-bound pass of ≈ 12 bytes per key-network parameter (read both weights, write one, fp32),
//!   over the HBM bandwidth;
//! - communication through the one hardware model ([`crate::hardware::AlphaBetaNetwork`]): the all-gather of the
//!   b×d image and text embeddings (bf16) of every rank (in-batch; the same volume again as a reduce-scatter with
//!   `gather_with_grad`), the all-gather of the keys for the queues, and the data-parallel all-reduce of the query
//!   encoders' bf16 gradients, counted in full (not overlapped with the backward pass: an upper bound);
//! - loading: `b · frames · decode_s_per_frame / cores_per_gpu` host seconds; it runs ahead of the GPU (prefetch), so
//!   a step takes the larger of loading and the GPU's work, and `cores needed = b·frames·decode / GPU time`;
//! - memory: the fp32 logit matrix (`B·B·4` bytes, or `b·B·4` with the local loss: 4.29 GB at B = 32,768, the
//!   notes' check), the fp32 queues `K·d·4` each, the key network's weights in the compute type `bytes·(N_v + N_t)`.
//!
//! A `contrastive_pretrain` profile ([`ContrastiveCost`], written by `trainlab calibrate --workload
//! contrastive_pretrain` from real runs on this CPU) replaces, for workloads on the device it was measured on, the
//! assumed decode cost and `mfu` by fitted ones: decode seconds per frame on one core with a parallel efficiency of
//! extra workers, seconds per encoder FLOP, the logits as `overhead + s/FLOP · FLOPs + s/element · elements` (the
//! softmax and its gradient touch every logit; one cost per element for the symmetric in-batch loss, another for a
//! queue head), and the EMA's sustained bandwidth.
use serde::{Deserialize, Serialize};

use crate::collectives::Placement;
use crate::hardware::{AlphaBetaNetwork, Network, memory_time};
use trainlab_core::workloads::CollectiveAlgo;
use trainlab_core::workloads::CollectiveOp;
use trainlab_core::workloads::contrastive::{ContrastiveOutcome, ContrastivePretrain, Negatives};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, Workload};

/// Fitted costs of a device (the `params` of a `contrastive_pretrain` profile).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContrastiveCost {
    /// The device preset the runs were measured on (`cpu`): the costs apply to workloads on it only.
    pub device: String,
    /// Seconds to decode one frame on one core (the measured decode stage: PNG frames standing in for video).
    pub decode_s_per_frame: f64,
    /// Speed-up of `t` decode workers is `1 + eff · (t − 1)`.
    pub decode_parallel_efficiency: f64,
    /// Seconds per encoder FLOP (forward and backward of the query encoders, forward of the key encoders) at a large
    /// embedding width.
    pub encoder_s_per_flop: f64,
    /// The encoders' GEMMs run at `d / (d + half_dim)` of that rate at embedding width `d` (the GEMM law the dense
    /// model uses: narrow products reuse less of each loaded operand). 0 in profiles written before it was fitted.
    #[serde(default)]
    pub encoder_half_dim: f64,
    /// Seconds per squared local batch added to the encoders: the stand-ins' inputs (`b × 512` fp32 per modality,
    /// re-read by the forward and both backward products) outgrow the caches as `b` grows, so a sample's input costs
    /// more at a larger batch (measured: the fixed per-sample part of the time is 13x larger at `b` = 4,096 than at
    /// 2,048). A first-order term fitted on fit cases at batches 1,024 to 4,096; 0 in profiles written before it.
    #[serde(default)]
    pub encoder_s_per_batch_sq: f64,
    /// Fixed seconds per contrastive head (per queue, or once in-batch).
    pub logit_overhead_s: f64,
    /// Seconds per logit-GEMM FLOP.
    pub logit_s_per_flop: f64,
    /// Seconds per logit element of the symmetric in-batch loss (softmax over rows and over columns,
    /// cross-entropy and the gradient).
    pub logit_s_per_element_in_batch: f64,
    /// Seconds per logit element of a queue head (one softmax, cross-entropy and the gradient, and the copy of the
    /// candidates).
    pub logit_s_per_element_queue: f64,
    /// Sustained bytes per second of the momentum EMA pass.
    pub ema_bytes_per_s: f64,
}

/// Logit elements of one step's head on one GPU: `rows·B` in-batch, `b·(K + b)` per queue.
pub fn logit_elements(w: &ContrastivePretrain) -> f64 {
    let (bg, b) = (w.global_batch as f64, w.per_gpu_batch());
    match w.negatives {
        Negatives::InBatch { local_loss, .. } => (if local_loss { b } else { bg }) * bg,
        Negatives::Queue { size, queues } => b * (size as f64 + b) * queues as f64,
    }
}

/// Logit-GEMM FLOPs of one step's head, forward and backward.
pub fn logit_flops(w: &ContrastivePretrain) -> f64 {
    let (bg, b, d) = (w.global_batch as f64, w.per_gpu_batch(), w.embed_dim as f64);
    match w.negatives {
        Negatives::InBatch { local_loss, .. } => 3.0 * 2.0 * if local_loss { b } else { bg } * bg * d,
        // Forward and the queries' gradient only: the keys come from the momentum network, without gradient.
        Negatives::Queue { size, queues } => 2.0 * 2.0 * b * (size as f64 + b) * d * queues as f64,
    }
}

/// Encoder FLOPs of one step on one GPU: query encoders forward and backward, key encoders forward.
pub fn encoder_flops(w: &ContrastivePretrain) -> f64 {
    let per_sample = w.video_encoder.params * w.video_encoder.tokens + w.text_encoder.params * w.text_encoder.tokens;
    (6.0 + if w.momentum.is_some() { 2.0 } else { 0.0 }) * per_sample * w.per_gpu_batch()
}

impl ContrastiveCost {
    /// Checks every number (finite; rates positive; efficiency in [0, 1]); `path` prefixes the field names.
    pub fn validate(&self, path: &str) -> Result<(), Error> {
        use trainlab_core::error::check;
        check::positive(&format!("{path}.decode_s_per_frame"), self.decode_s_per_frame)?;
        check::in_range(
            &format!("{path}.decode_parallel_efficiency"),
            self.decode_parallel_efficiency,
            0.0,
            1.5,
        )?;
        check::positive(&format!("{path}.encoder_s_per_flop"), self.encoder_s_per_flop)?;
        check::non_negative(&format!("{path}.encoder_half_dim"), self.encoder_half_dim)?;
        check::non_negative(&format!("{path}.encoder_s_per_batch_sq"), self.encoder_s_per_batch_sq)?;
        check::non_negative(&format!("{path}.logit_overhead_s"), self.logit_overhead_s)?;
        check::non_negative(&format!("{path}.logit_s_per_flop"), self.logit_s_per_flop)?;
        check::non_negative(
            &format!("{path}.logit_s_per_element_in_batch"),
            self.logit_s_per_element_in_batch,
        )?;
        check::non_negative(
            &format!("{path}.logit_s_per_element_queue"),
            self.logit_s_per_element_queue,
        )?;
        check::positive(&format!("{path}.ema_bytes_per_s"), self.ema_bytes_per_s)
    }

    /// Seconds to decode one GPU's batch of `w` on its workers.
    pub fn load_s(&self, w: &ContrastivePretrain) -> f64 {
        let decode = w.per_gpu_batch() * w.frames_per_clip as f64 * self.decode_s_per_frame;
        decode / self.speedup(w.cores_per_gpu as f64)
    }
    fn speedup(&self, workers: f64) -> f64 {
        1.0 + self.decode_parallel_efficiency * (workers - 1.0)
    }
}

/// The step cost of `w` with the assumed decode cost and utilisation of the workload.
pub fn step_cost(w: &ContrastivePretrain) -> ContrastiveOutcome {
    step_cost_with(w, None)
}

/// The step cost of `w`, with fitted device costs where `cost` was measured on `w`'s device.
pub fn step_cost_with(w: &ContrastivePretrain, cost: Option<&ContrastiveCost>) -> ContrastiveOutcome {
    let cost = cost.filter(|c| c.device == w.cluster.gpu.name);
    let gpus = w.cluster.gpus() as f64;
    let (bg, b, d) = (w.global_batch as f64, w.per_gpu_batch(), w.embed_dim as f64);
    let rate = w.cluster.gpu.peak(w.dtype) * w.mfu;
    let key_net = w.momentum.is_some();
    let (encoder_flops, logit_flops) = (encoder_flops(w), logit_flops(w));
    let (logits_bytes, queue_bytes) = match w.negatives {
        Negatives::InBatch { local_loss, .. } => (if local_loss { b } else { bg } * bg * 4.0, 0.0),
        Negatives::Queue { size, queues } => {
            let (k, q) = (size as f64, queues as f64);
            (b * (k + b) * 4.0 * q, k * d * 4.0 * q)
        }
    };
    let key_params = w.video_encoder.params + w.text_encoder.params;
    let heads = match w.negatives {
        Negatives::InBatch { .. } => 1.0,
        Negatives::Queue { queues, .. } => queues as f64,
    };
    let ema_bw = cost.map_or(w.cluster.gpu.hbm_bandwidth_bytes_per_s, |c| c.ema_bytes_per_s);
    let momentum_s = if key_net {
        memory_time(12.0 * key_params, ema_bw)
    } else {
        0.0
    };
    let net = AlphaBetaNetwork::of(&w.cluster);
    let group = Placement::packed(w.cluster.gpus(), u64::from(w.cluster.gpus_per_node));
    let coll = |op, bytes: f64| {
        if gpus < 2.0 {
            0.0
        } else {
            net.collective_time(op, CollectiveAlgo::Auto, bytes, group).0
        }
    };
    // nccl-tests convention: `bytes` is each rank's full buffer (the gathered result for an all-gather).
    let embeddings = 2.0 * bg * d * 2.0; // image and text, bf16, whole batch
    let mut comm_s = coll(CollectiveOp::AllReduce, 2.0 * key_params);
    match w.negatives {
        Negatives::InBatch { gather_with_grad, .. } => {
            comm_s += coll(CollectiveOp::AllGather, embeddings);
            if gather_with_grad {
                comm_s += coll(CollectiveOp::ReduceScatter, embeddings);
            }
        }
        Negatives::Queue { queues, .. } => comm_s += coll(CollectiveOp::AllGather, bg * d * 2.0 * queues as f64),
    }
    let (encoders_s, logits_s) = match cost {
        None => (encoder_flops / rate, logit_flops / rate),
        Some(c) => (
            encoder_flops * c.encoder_s_per_flop * (1.0 + c.encoder_half_dim / w.embed_dim.max(1) as f64)
                + c.encoder_s_per_batch_sq * b * b,
            heads * c.logit_overhead_s
                + logit_flops * c.logit_s_per_flop
                + logit_elements(w)
                    * match w.negatives {
                        Negatives::InBatch { .. } => c.logit_s_per_element_in_batch,
                        Negatives::Queue { .. } => c.logit_s_per_element_queue,
                    },
        ),
    };
    let gpu_s = encoders_s + logits_s + momentum_s + comm_s;
    // One worker's seconds for one GPU's batch, and the speed-up of the workers.
    let (decode, speedup) = match cost {
        None => (
            b * w.frames_per_clip as f64 * w.decode_s_per_frame,
            w.cores_per_gpu as f64,
        ),
        Some(c) => (
            b * w.frames_per_clip as f64 * c.decode_s_per_frame,
            c.speedup(w.cores_per_gpu as f64),
        ),
    };
    let load_s = decode / speedup;
    let step_s = gpu_s.max(load_s);
    // Workers whose speed-up brings loading down to the GPU's work.
    let cores_needed = match cost {
        None => decode / gpu_s,
        Some(c) if c.decode_parallel_efficiency > 0.0 => {
            (1.0 + (decode / gpu_s - 1.0) / c.decode_parallel_efficiency).max(decode / gpu_s)
        }
        Some(_) => f64::INFINITY,
    };
    let steps = w.samples_per_epoch * w.epochs / bg;
    ContrastiveOutcome {
        load_s,
        encoders_s,
        logits_s,
        momentum_s,
        comm_s,
        step_s,
        cores_needed,
        logits_bytes,
        queue_bytes,
        key_network_bytes: if key_net {
            w.dtype.bytes() as f64 * key_params
        } else {
            0.0
        },
        days: steps * step_s / 86_400.0,
        samples_per_s: bg / step_s,
        loader_bound: load_s > gpu_s,
        gpu_idle_fraction: 1.0 - gpu_s / step_s,
        queue_occupancy: None,
    }
}

/// The closed-form backend, with the fitted costs of a profile where one applies.
#[derive(Debug, Clone, Default)]
pub struct ContrastiveAnalytical {
    /// Fitted device costs (from a `contrastive_pretrain` profile).
    pub cost: Option<ContrastiveCost>,
}

impl Backend<ContrastivePretrain> for ContrastiveAnalytical {
    fn name(&self) -> &str {
        "analytical"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, w: &ContrastivePretrain, _: &mut RunCtx) -> Result<ContrastiveOutcome, Error> {
        w.validate()?;
        Ok(step_cost_with(w, self.cost.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainlab_core::workloads::contrastive::Encoder;

    /// CLIP ViT-L/14's shape (Radford et al. 2021 as quoted in the notes §3.4: batch 32,768, 256 GPUs).
    fn clip_vit_l14(mfu: f64) -> ContrastivePretrain {
        ContrastivePretrain {
            // An H100 cluster of 256 GPUs here (the memory checks do not depend on the GPU); the published-budget
            // check runs on the V100 preset in `tests/contrastive.rs`.
            cluster: crate::collectives::tests::cluster(32),
            global_batch: 32_768,
            embed_dim: 768,
            video_encoder: Encoder {
                params: 304e6,
                tokens: 257.0,
            },
            text_encoder: Encoder {
                params: 123e6,
                tokens: 77.0,
            },
            negatives: Negatives::InBatch {
                local_loss: false,
                gather_with_grad: false,
            },
            momentum: None,
            frames_per_clip: 1,
            decode_s_per_frame: 0.0,
            cores_per_gpu: 8,
            decode_cv: 0.0,
            prefetch_batches: 2,
            samples_per_epoch: 400e6,
            epochs: 32.0,
            dtype: trainlab_core::Dtype::Fp16,
            mfu,
        }
    }

    #[test]
    fn logit_memory_matches_the_notes() {
        let w = clip_vit_l14(0.2);
        let o = step_cost(&w);
        // B x B fp32 at B = 32,768: 4.29 GB.
        assert!((o.logits_bytes - 4.294_967_296e9).abs() < 1.0, "{}", o.logits_bytes);
        let mut l = w.clone();
        l.negatives = Negatives::InBatch {
            local_loss: true,
            gather_with_grad: true,
        };
        // B/W x B: 128 x 32,768 x 4 = 16.8 MB on 256 GPUs.
        assert!((step_cost(&l).logits_bytes - 128.0 * 32_768.0 * 4.0).abs() < 1.0);
        // MoCo's default queue: 65,536 x 128 fp32 = 32 MiB.
        let mut q = w;
        q.embed_dim = 128;
        q.momentum = Some(0.999);
        q.negatives = Negatives::Queue {
            size: 65_536,
            queues: 1,
        };
        assert_eq!(step_cost(&q).queue_bytes, 32.0 * 1024.0 * 1024.0);
    }

    #[test]
    fn more_decode_cores_end_a_loader_bound_step() {
        let mut w = clip_vit_l14(0.2);
        w.frames_per_clip = 12;
        w.decode_s_per_frame = 0.01;
        w.cores_per_gpu = 1;
        let o = step_cost(&w);
        assert!(o.load_s > o.step_s - 1e-12 && o.cores_needed > 1.0, "{o:?}");
        w.cores_per_gpu = o.cores_needed.ceil() as u64;
        let o2 = step_cost(&w);
        assert!(o2.load_s <= o2.step_s && o2.step_s < o.step_s, "{o2:?}");
    }
}
