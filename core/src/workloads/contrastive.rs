//! The `contrastive_pretrain` workload: video-language contrastive pre-training (VICTOR, arXiv 2104.09411; CLIP-style
//! in-batch negatives vs MoCo/VICTOR-style momentum queues), from clip decoding to the InfoNCE logits. Notes:
//! `shared/design/notes/rlhf-victor.md` §2, §3.4, §3.5.
//!
//! Two questions: is a step loader-bound (decoding frames on the host's cores) or compute-bound, and what do in-batch
//! and queue negatives cost in memory, communication and time at a given batch?
use serde::{Deserialize, Serialize};

use crate::error::check;
use crate::{ClusterSpec, Dtype, Error, Metric, Outcome, Unit, Workload};

/// A transformer encoder as the cost model sees it: parameters and tokens per sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encoder {
    /// Parameters.
    pub params: f64,
    /// Tokens one sample feeds it (for a video encoder: frames x patches per frame, plus class tokens).
    pub tokens: f64,
}

/// How the contrastive loss gets its negatives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Negatives {
    /// Every other sample of the global batch (CLIP): the embeddings are all-gathered.
    InBatch {
        /// Each rank's loss uses its own rows against all columns (B/W x B logits) instead of the full B x B
        /// (open_clip `--local-loss`).
        #[serde(default)]
        local_loss: bool,
        /// Gradients flow back through the gather (open_clip `--gather-with-grad`): a reduce-scatter of the same
        /// volume in the backward pass.
        #[serde(default)]
        gather_with_grad: bool,
    },
    /// Keys of past batches from a momentum key network, in FIFO queues (MoCo, VICTOR).
    Queue {
        /// Keys held per queue.
        size: u64,
        /// Queues (one per contrastive task: VICTOR has several).
        #[serde(default = "one")]
        queues: u64,
    },
}

fn one() -> u64 {
    1
}

/// A contrastive pre-training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContrastivePretrain {
    /// The cluster; all its GPUs train data-parallel.
    pub cluster: ClusterSpec,
    /// Global batch (samples per step).
    pub global_batch: u64,
    /// Embedding width of the contrastive space.
    pub embed_dim: u64,
    /// Video (or image) encoder.
    pub video_encoder: Encoder,
    /// Text encoder.
    pub text_encoder: Encoder,
    /// Negatives.
    pub negatives: Negatives,
    /// Momentum of the key network's EMA, in [0, 1); `None`: no key network (CLIP).
    #[serde(default)]
    pub momentum: Option<f64>,
    /// Frames decoded per sample (1 for images).
    pub frames_per_clip: u64,
    /// Host CPU seconds to decode and resize one frame on one core.
    pub decode_s_per_frame: f64,
    /// Decode cores per GPU: data-loader workers, one core each, each decoding whole batches (PyTorch
    /// `DataLoader` style).
    pub cores_per_gpu: u64,
    /// Coefficient of variation of one clip's decode time (lognormal with mean `frames_per_clip x
    /// decode_s_per_frame`); 0: every clip costs the same. Only the input-pipeline simulator reads it (slow clips
    /// stall the step); the closed form uses the mean.
    #[serde(default)]
    pub decode_cv: f64,
    /// Decoded batches each GPU's loader may hold ready ahead of the step (the bounded prefetch queue); a worker
    /// that finishes a batch while the queue is full waits.
    #[serde(default = "two")]
    pub prefetch_batches: u64,
    /// Samples per epoch.
    pub samples_per_epoch: f64,
    /// Epochs.
    #[serde(default = "one_f")]
    pub epochs: f64,
    /// Compute type of the encoders.
    #[serde(default = "bf16")]
    pub dtype: Dtype,
    /// Fraction of the GPU's peak the encoders reach (an assumption of the cost model; a calibration would fit it).
    #[serde(default = "mfu")]
    pub mfu: f64,
}

fn two() -> u64 {
    2
}
fn one_f() -> f64 {
    1.0
}
fn bf16() -> Dtype {
    Dtype::Bf16
}
fn mfu() -> f64 {
    0.4
}

impl ContrastivePretrain {
    /// Samples per GPU per step.
    pub fn per_gpu_batch(&self) -> f64 {
        self.global_batch as f64 / self.cluster.gpus() as f64
    }
}

impl Workload for ContrastivePretrain {
    type Outcome = ContrastiveOutcome;
    const KIND: &'static str = "contrastive_pretrain";
    fn validate(&self) -> Result<(), Error> {
        self.cluster.validate("workload.cluster")?;
        let gpus = self.cluster.gpus();
        check::at_least("workload.global_batch", self.global_batch, gpus)?;
        check::at_most(
            "workload.global_batch",
            self.global_batch,
            1 << 24,
            "a B x B logit matrix beyond any memory",
        )?;
        check::at_least("workload.embed_dim", self.embed_dim, 1)?;
        check::at_most(
            "workload.embed_dim",
            self.embed_dim,
            1 << 16,
            "far beyond any embedding",
        )?;
        for (name, e) in [
            ("video_encoder", &self.video_encoder),
            ("text_encoder", &self.text_encoder),
        ] {
            check::positive_at_most(
                &format!("workload.{name}.params"),
                e.params,
                1e13,
                "far beyond any model",
            )?;
            check::positive_at_most(
                &format!("workload.{name}.tokens"),
                e.tokens,
                1e7,
                "far beyond any sequence",
            )?;
        }
        match self.negatives {
            Negatives::InBatch { .. } => {}
            Negatives::Queue { size, queues } => {
                if size < self.global_batch {
                    return Err(Error::invalid(
                        "workload.negatives.queue.size",
                        size,
                        format!(
                            "a queue smaller than the global batch ({}) drops keys it just enqueued",
                            self.global_batch
                        ),
                        format!("use a queue of at least {} keys", self.global_batch),
                    ));
                }
                check::at_most(
                    "workload.negatives.queue.size",
                    size,
                    1 << 26,
                    "a queue beyond any memory",
                )?;
                check::at_least("workload.negatives.queue.queues", queues, 1)?;
                check::at_most(
                    "workload.negatives.queue.queues",
                    queues,
                    64,
                    "more queues than contrastive tasks",
                )?;
                if self.momentum.is_none() {
                    return Err(Error::invalid(
                        "workload.momentum",
                        "(none)",
                        "queue negatives come from a momentum key network",
                        "give momentum = 0.999 (MoCo's value)",
                    ));
                }
            }
        }
        if let Some(m) = self.momentum
            && !(m.is_finite() && (0.0..1.0).contains(&m))
        {
            return Err(Error::invalid(
                "workload.momentum",
                m,
                "the EMA momentum lies in [0, 1)",
                "use e.g. 0.999",
            ));
        }
        check::at_least("workload.frames_per_clip", self.frames_per_clip, 1)?;
        check::at_most(
            "workload.frames_per_clip",
            self.frames_per_clip,
            100_000,
            "hours of video per sample",
        )?;
        check::non_negative_at_most(
            "workload.decode_s_per_frame",
            self.decode_s_per_frame,
            60.0,
            "a minute a frame",
        )?;
        check::at_least("workload.cores_per_gpu", self.cores_per_gpu, 1)?;
        check::at_most(
            "workload.cores_per_gpu",
            self.cores_per_gpu,
            4096,
            "far beyond any host",
        )?;
        check::non_negative_at_most(
            "workload.decode_cv",
            self.decode_cv,
            10.0,
            "a decode time ten times its mean",
        )?;
        check::at_least("workload.prefetch_batches", self.prefetch_batches, 1)?;
        check::at_most(
            "workload.prefetch_batches",
            self.prefetch_batches,
            1024,
            "far beyond any host memory for decoded batches",
        )?;
        check::positive_at_most(
            "workload.samples_per_epoch",
            self.samples_per_epoch,
            1e13,
            "far beyond any dataset",
        )?;
        check::positive_at_most("workload.epochs", self.epochs, 1e4, "far beyond any schedule")?;
        check::positive_at_most("workload.mfu", self.mfu, 1.0, "a fraction of the peak")?;
        Ok(())
    }
}

/// The answer for a [`ContrastivePretrain`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContrastiveOutcome {
    /// Host seconds per step to decode one GPU's samples on its cores.
    pub load_s: f64,
    /// Encoder seconds per step (query encoders forward and backward, key encoders forward).
    pub encoders_s: f64,
    /// Contrastive-logit seconds per step (forward and backward).
    pub logits_s: f64,
    /// Momentum-update seconds per step.
    pub momentum_s: f64,
    /// Communication seconds per step (embedding gathers, key enqueue, data-parallel gradient all-reduce).
    pub comm_s: f64,
    /// Seconds per step: loading overlaps the GPU's work (prefetch), so the larger of the two.
    pub step_s: f64,
    /// Decode cores per GPU that would hide loading behind the GPU's work.
    pub cores_needed: f64,
    /// Bytes of the logit matrix per GPU (fp32).
    pub logits_bytes: f64,
    /// Bytes of the key queues per GPU (fp32, every rank holds them).
    pub queue_bytes: f64,
    /// Bytes of the key network's weights (bf16 copy, no gradients or optimizer state).
    pub key_network_bytes: f64,
    /// Days to train every epoch.
    pub days: f64,
    /// Samples per second.
    pub samples_per_s: f64,
    /// Whether the step waits for the loader: in closed form, loading takes longer than the GPU's work; in the
    /// simulator, the GPU waits for data more than 1% of the time.
    pub loader_bound: bool,
    /// Fraction of the time the GPU waits for a batch.
    pub gpu_idle_fraction: f64,
    /// Mean number of decoded batches waiting in a GPU's prefetch queue (time average; simulator only).
    #[serde(default)]
    pub queue_occupancy: Option<f64>,
}

impl Outcome for ContrastiveOutcome {
    fn metrics(&self) -> Vec<Metric> {
        let mut v = vec![
            Metric::new("step_time", Unit::Seconds, self.step_s),
            Metric::new("time.load", Unit::Seconds, self.load_s),
            Metric::new("time.encoders", Unit::Seconds, self.encoders_s),
            Metric::new("time.logits", Unit::Seconds, self.logits_s),
            Metric::new("time.momentum", Unit::Seconds, self.momentum_s),
            Metric::new("time.comm", Unit::Seconds, self.comm_s),
            // 1 when the step waits for the loader.
            Metric::new("loader_bound", Unit::Choice, f64::from(u8::from(self.loader_bound))),
            Metric::new("gpu_idle_fraction", Unit::Ratio, self.gpu_idle_fraction),
            Metric::new("cores_per_gpu_needed", Unit::Count, self.cores_needed),
            Metric::new("memory.logits", Unit::Bytes, self.logits_bytes),
            Metric::new("memory.queue", Unit::Bytes, self.queue_bytes),
            Metric::new("memory.key_network", Unit::Bytes, self.key_network_bytes),
            Metric::new("samples_per_s", Unit::Dimensionless, self.samples_per_s),
            Metric::new("days", Unit::Days, self.days),
        ];
        if let Some(q) = self.queue_occupancy {
            v.push(Metric::new("queue_occupancy", Unit::Count, q));
        }
        v
    }
}
