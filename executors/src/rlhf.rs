//! A real tiny RLHF on the CPU (issue 13, part 2b): DPO, PPO and rejection sampling of the n-gram policy of
//! [`crate::lm`] on a synthetic preference task with planted error spans, with `sample`, `token` and `segment` credit
//! through [`trainlab_core::workloads::rlhf::credit_mask`], each phase timed.
//!
//! **The task.** A seeded hidden rule maps every token to its one correct successor (`rule[prev]`). A prompt is
//! `prompt_len` seeded uniform tokens; a response of `response_len` tokens follows the rule except in planted wrong
//! spans (0 to `max_spans` spans of 1 to `max_span_len` tokens at seeded places), where each token is a uniform draw
//! among the `V − 1` wrong successors of the token before it. So every response token is right or wrong by
//! construction. A preference pair holds two responses to one prompt; the one with fewer wrong tokens is chosen
//! (ties are redrawn). Labels are sample-level, so chosen responses carry wrong spans and rejected ones mostly right
//! tokens: the *supervision conflict* of arXiv 2411.00809, measured here as the share of pair tokens whose sample
//! label disagrees with their truth ([`PairData::conflict_rate`]).
//!
//! **Per-token scores** are a noisy version of the truth, not a learned reward model: `s_t = ±1 + σ·N(0,1)` (+1 for
//! a right token), `σ = score_noise`. They stand in for the critic values (APPO) or precomputed token rewards (ADPO)
//! of the notes §1.2; with σ > 0 token credit sees single-token noise that segment smoothing averages out. The
//! sample-level reward of PPO and rejection sampling is the response's share of right tokens (an exact sequence
//! reward model).
//!
//! **The policy** is the neural n-gram LM of [`crate::lm`] (a fixed window of `context` previous tokens, no
//! attention, no KV cache: generation recomputes one forward pass per new token over the window). It starts from a
//! short supervised fine-tune (SFT) on all responses of the pair data; the frozen reference is that SFT policy.
//!
//! **Algorithms** (losses [K] as in the notes §1.3, masks [I] following §1.2), all trained through the one primitive
//! [`Model::weighted_logp`] with weights `∂L/∂log p_t`:
//! - DPO: `L = −log σ(β·[Σ m^w(lp − lp_ref) − Σ m^l(lp − lp_ref)])` over a batch of pairs; `m^w` is the credit mask
//!   of the chosen response with label `true`, `m^l` of the rejected one with label `false`.
//! - PPO: responses sampled from the policy (real autoregressive sampling); reward = right share − `kl`·mean
//!   per-token `log π_old − log π_ref`; sample advantage = batch-normalised reward (a group baseline instead of a
//!   critic: no value model is trained); per-token advantage `A` on the tokens kept by the credit mask with label
//!   `A ≥ 0`; clipped-ratio loss `−(1/Σm)·Σ m·min(ρA, clip(ρ, 1±ε)A)` for `ppo_epochs` passes.
//! - Rejection sampling: `samples_per_prompt` responses per prompt, the best by reward kept, supervised on its tokens
//!   kept by the credit mask with label `true`.
//!
//! **Measured**: the rule-conformant probability `mean_ctx p(rule[last] | ctx)` over every context
//! ([`rule_prob`]) vs steps, the mean log-probability of the planted wrong tokens of chosen responses, the kept-token
//! fraction κ, wall time per phase (generation, experience making, training) with `Instant`, and the mask's overhead
//! on a training step ([`mask_overhead`], with [`crate::timing::time_fn`]).
use crate::lm::{AdamW, Grads, Model, Shape};
use crate::timing::{TimingOpts, black_box, time_fn};
use rand::RngExt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use trainlab_core::error::check;
use trainlab_core::workloads::rlhf::{Algorithm, Credit, RlhfIteration, RlhfOutcome, credit_mask};
use trainlab_core::{Backend, Error, Fidelity, Result, RunCtx, Seed, Summary};

/// The task, the policy and the training hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TinyConfig {
    /// Vocabulary size V.
    pub vocab: usize,
    /// Policy context window c (previous tokens seen).
    pub context: usize,
    /// Embedding width.
    pub embed: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Prompt tokens (at least `context`).
    pub prompt_len: usize,
    /// Response tokens.
    pub response_len: usize,
    /// Preference pairs (DPO data; SFT data for every algorithm).
    pub pairs: usize,
    /// Most planted wrong spans per response (drawn uniformly in `0..=max_spans`).
    pub max_spans: usize,
    /// Longest planted span (lengths uniform in `1..=max_span_len`).
    pub max_span_len: usize,
    /// Standard deviation σ of the per-token score noise.
    pub score_noise: f64,
    /// Supervised fine-tuning steps before RLHF (batch `batch` sequences).
    pub sft_steps: usize,
    /// Pairs (DPO) or prompts (PPO, rejection sampling) per step.
    pub batch: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// DPO β.
    pub beta: f64,
    /// PPO clip ε.
    pub clip: f64,
    /// PPO passes over each rollout batch.
    pub ppo_epochs: usize,
    /// PPO KL penalty coefficient in the reward.
    pub kl: f64,
    /// Rejection sampling: responses per prompt.
    pub samples_per_prompt: usize,
}

impl Default for TinyConfig {
    fn default() -> Self {
        TinyConfig {
            vocab: 16,
            context: 2,
            embed: 16,
            hidden: 64,
            prompt_len: 4,
            response_len: 16,
            pairs: 512,
            max_spans: 4,
            max_span_len: 4,
            score_noise: 1.0,
            sft_steps: 150,
            batch: 32,
            lr: 3e-3,
            beta: 0.5,
            clip: 0.2,
            ppo_epochs: 2,
            kl: 0.05,
            samples_per_prompt: 4,
        }
    }
}

impl TinyConfig {
    /// Checks the sizes (field paths `rlhf_tiny.<field>`).
    pub fn validate(&self) -> Result<()> {
        let f = |x: &str| format!("rlhf_tiny.{x}");
        check::at_least(&f("vocab"), self.vocab as u64, 2)?;
        check::at_most(&f("vocab"), self.vocab as u64, 4096, "a tiny CPU run")?;
        check::at_least(&f("context"), self.context as u64, 1)?;
        check::at_most(&f("context"), self.context as u64, 8, "a tiny CPU run")?;
        check::at_least(&f("embed"), self.embed as u64, 1)?;
        check::at_least(&f("hidden"), self.hidden as u64, 1)?;
        check::at_most(&f("hidden"), self.hidden as u64, 1 << 14, "a tiny CPU run")?;
        check::at_least(&f("prompt_len"), self.prompt_len as u64, self.context as u64)?;
        check::at_least(&f("response_len"), self.response_len as u64, 1)?;
        check::at_most(&f("response_len"), self.response_len as u64, 4096, "a tiny CPU run")?;
        check::at_least(&f("pairs"), self.pairs as u64, 1)?;
        check::at_least(&f("max_spans"), self.max_spans as u64, 1)?;
        check::at_least(&f("max_span_len"), self.max_span_len as u64, 1)?;
        check::non_negative(&f("score_noise"), self.score_noise)?;
        check::at_least(&f("batch"), self.batch as u64, 1)?;
        check::positive(&f("lr"), self.lr)?;
        check::positive(&f("beta"), self.beta)?;
        check::in_range(&f("clip"), self.clip, 0.0, 1.0)?;
        check::at_least(&f("ppo_epochs"), self.ppo_epochs as u64, 1)?;
        check::non_negative(&f("kl"), self.kl)?;
        check::at_least(&f("samples_per_prompt"), self.samples_per_prompt as u64, 1)?;
        Ok(())
    }

    /// The policy's shape.
    pub fn shape(&self) -> Shape {
        Shape {
            vocab: self.vocab,
            context: self.context,
            embed: self.embed,
            hidden: self.hidden,
        }
    }
}

/// The hidden rule: `rule[prev]` is the one right successor of `prev`.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The rule.
    pub rule: Vec<u32>,
    context: usize,
    prompt_len: usize,
    response_len: usize,
    vocab: usize,
}

/// One prompt and response with the truth and the scores of its response tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Seq {
    /// Prompt tokens.
    pub prompt: Vec<u32>,
    /// Response tokens.
    pub response: Vec<u32>,
    /// Whether each response token follows the rule.
    pub right: Vec<bool>,
    /// Per-token scores (noisy truth).
    pub scores: Vec<f64>,
}

impl Seq {
    /// Wrong response tokens.
    pub fn wrong(&self) -> usize {
        self.right.iter().filter(|r| !**r).count()
    }
    /// Share of right response tokens (the sample-level reward).
    pub fn right_share(&self) -> f64 {
        1.0 - self.wrong() as f64 / self.right.len().max(1) as f64
    }
}

impl Task {
    /// A seeded rule for `cfg`.
    pub fn new(cfg: &TinyConfig, seed: Seed) -> Task {
        let mut rng = seed.derive("rlhf.rule").rng();
        Task {
            rule: (0..cfg.vocab).map(|_| rng.random_range(0..cfg.vocab as u32)).collect(),
            context: cfg.context,
            prompt_len: cfg.prompt_len,
            response_len: cfg.response_len,
            vocab: cfg.vocab,
        }
    }

    /// A uniform random prompt.
    pub fn prompt(&self, rng: &mut trainlab_core::seed::Rng) -> Vec<u32> {
        (0..self.prompt_len)
            .map(|_| rng.random_range(0..self.vocab as u32))
            .collect()
    }

    /// The truth of `response` after `prompt`.
    pub fn judge(&self, prompt: &[u32], response: &[u32]) -> Vec<bool> {
        let mut prev = *prompt.last().expect("prompt_len >= context >= 1");
        response
            .iter()
            .map(|&y| {
                let ok = self.rule[prev as usize] == y;
                prev = y;
                ok
            })
            .collect()
    }

    /// Noisy-truth scores `±1 + σ·N(0,1)`.
    pub fn scores(&self, right: &[bool], noise: f64, rng: &mut trainlab_core::seed::Rng) -> Vec<f64> {
        right
            .iter()
            .map(|&r| if r { 1.0 } else { -1.0 } + noise * normal(rng))
            .collect()
    }

    /// A response with planted wrong spans (0..=`max_spans` spans of 1..=`max_span_len` tokens).
    fn planted(&self, cfg: &TinyConfig, prompt: Vec<u32>, rng: &mut trainlab_core::seed::Rng) -> Seq {
        let t = self.response_len;
        let mut wrong = vec![false; t];
        for _ in 0..rng.random_range(0..=cfg.max_spans) {
            let len = rng.random_range(1..=cfg.max_span_len);
            let start = rng.random_range(0..t);
            wrong[start..(start + len).min(t)].iter_mut().for_each(|w| *w = true);
        }
        let mut prev = *prompt.last().expect("prompt_len >= 1");
        let mut response = Vec::with_capacity(t);
        for &w in &wrong {
            let good = self.rule[prev as usize];
            let y = if w {
                // Uniform among the V − 1 wrong successors.
                let k = rng.random_range(0..self.vocab as u32 - 1);
                if k >= good { k + 1 } else { k }
            } else {
                good
            };
            response.push(y);
            prev = y;
        }
        let right = self.judge(&prompt, &response);
        let scores = self.scores(&right, cfg.score_noise, rng);
        Seq {
            prompt,
            response,
            right,
            scores,
        }
    }

    /// The policy's training examples of `seqs`: for every response token, the `context` tokens before it (prompt
    /// included) and the token. Returns `(contexts, targets)`.
    pub fn examples<'a>(&self, seqs: impl IntoIterator<Item = &'a Seq>) -> (Vec<u32>, Vec<u32>) {
        let (mut ctx, mut tgt) = (Vec::new(), Vec::new());
        for s in seqs {
            let full: Vec<u32> = s.prompt.iter().chain(&s.response).copied().collect();
            for t in 0..s.response.len() {
                let end = s.prompt.len() + t;
                ctx.extend_from_slice(&full[end - self.context..end]);
                tgt.push(full[end]);
            }
        }
        (ctx, tgt)
    }

    /// Samples one response per prompt from `policy` (temperature 1): `response_len` forward passes over the batch,
    /// each on the last `context` tokens of every sequence.
    pub fn generate(&self, policy: &Model, prompts: &[Vec<u32>], rng: &mut trainlab_core::seed::Rng) -> Vec<Vec<u32>> {
        let c = self.context;
        let v = self.vocab;
        let mut full: Vec<Vec<u32>> = prompts.to_vec();
        for _ in 0..self.response_len {
            let ctx: Vec<u32> = full.iter().flat_map(|s| s[s.len() - c..].iter().copied()).collect();
            let probs = policy.soft_targets(&ctx, 1.0);
            for (s, p) in full.iter_mut().zip(probs.chunks(v)) {
                let u: f64 = rng.random();
                let mut acc = 0.0;
                let mut y = v - 1;
                for (k, pk) in p.iter().enumerate() {
                    acc += pk;
                    if u < acc {
                        y = k;
                        break;
                    }
                }
                s.push(y as u32);
            }
        }
        full.into_iter()
            .zip(prompts)
            .map(|(s, p)| s[p.len()..].to_vec())
            .collect()
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut trainlab_core::seed::Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A preference pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// The response with fewer wrong tokens.
    pub chosen: Seq,
    /// The other.
    pub rejected: Seq,
}

/// The preference data of one seed.
#[derive(Debug, Clone, PartialEq)]
pub struct PairData {
    /// The pairs.
    pub pairs: Vec<Pair>,
}

impl PairData {
    /// `cfg.pairs` pairs: two planted responses per seeded prompt, the one with fewer wrong tokens chosen (ties
    /// redrawn).
    pub fn new(task: &Task, cfg: &TinyConfig, seed: Seed) -> PairData {
        let mut rng = seed.derive("rlhf.pairs").rng();
        let mut pairs = Vec::with_capacity(cfg.pairs);
        while pairs.len() < cfg.pairs {
            let prompt = task.prompt(&mut rng);
            let a = task.planted(cfg, prompt.clone(), &mut rng);
            let b = task.planted(cfg, prompt, &mut rng);
            if a.wrong() == b.wrong() {
                continue;
            }
            let (chosen, rejected) = if a.wrong() < b.wrong() { (a, b) } else { (b, a) };
            pairs.push(Pair { chosen, rejected });
        }
        PairData { pairs }
    }

    /// Share of all pair tokens whose sample-level label disagrees with their truth (wrong tokens of chosen
    /// responses and right tokens of rejected ones): the supervision conflict.
    pub fn conflict_rate(&self) -> f64 {
        let (mut bad, mut all) = (0usize, 0usize);
        for p in &self.pairs {
            bad += p.chosen.wrong() + p.rejected.right.iter().filter(|r| **r).count();
            all += p.chosen.right.len() + p.rejected.right.len();
        }
        bad as f64 / all.max(1) as f64
    }

    /// Share of chosen responses holding at least one wrong token.
    pub fn chosen_with_errors(&self) -> f64 {
        self.pairs.iter().filter(|p| p.chosen.wrong() > 0).count() as f64 / self.pairs.len().max(1) as f64
    }

    /// Share of wrong tokens over all responses.
    pub fn wrong_share(&self) -> f64 {
        let w: usize = self.pairs.iter().map(|p| p.chosen.wrong() + p.rejected.wrong()).sum();
        let n: usize = self
            .pairs
            .iter()
            .map(|p| p.chosen.right.len() + p.rejected.right.len())
            .sum();
        w as f64 / n.max(1) as f64
    }
}

/// Mean over every context (all `V^c` windows) of the probability the policy gives the rule's successor of the
/// context's last token.
pub fn rule_prob(policy: &Model, task: &Task) -> f64 {
    let (v, c) = (task.vocab, task.context);
    let n = v.pow(c as u32);
    let mut ctx = Vec::with_capacity(n * c);
    let mut tgt = Vec::with_capacity(n);
    for i in 0..n {
        let mut k = i;
        let mut w = vec![0u32; c];
        for slot in w.iter_mut().rev() {
            *slot = (k % v) as u32;
            k /= v;
        }
        tgt.push(task.rule[w[c - 1] as usize]);
        ctx.extend(w);
    }
    policy.logp(&ctx, &tgt).iter().map(|l| l.exp()).sum::<f64>() / n as f64
}

/// Mean log-probability of the planted wrong tokens of the chosen responses (the tokens sample-level credit pushes
/// up).
pub fn planted_logp(policy: &Model, task: &Task, data: &PairData) -> f64 {
    let (ctx, tgt) = task.examples(data.pairs.iter().map(|p| &p.chosen));
    let right: Vec<bool> = data.pairs.iter().flat_map(|p| p.chosen.right.iter().copied()).collect();
    let lp = policy.logp(&ctx, &tgt);
    let (s, n) = lp
        .iter()
        .zip(&right)
        .filter(|(_, r)| !**r)
        .fold((0.0, 0usize), |(s, n), (l, _)| (s + l, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

/// Wall-clock seconds per phase over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    /// Autoregressive sampling (PPO, rejection sampling).
    pub generation_s: f64,
    /// Experience making: reference and old-policy log-probs, rewards, scores, advantages and credit masks.
    pub experience_s: f64,
    /// Forward/backward and optimiser steps.
    pub training_s: f64,
}

/// One evaluation during a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// RLHF steps done.
    pub step: usize,
    /// [`rule_prob`].
    pub rule_prob: f64,
    /// [`planted_logp`].
    pub planted_logp: f64,
}

/// One RLHF run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The credit.
    pub credit: Credit,
    /// The seed.
    pub seed: u64,
    /// Evaluations, the first at step 0 (the SFT policy).
    pub curve: Vec<Point>,
    /// Kept-token fraction κ over all trained tokens.
    pub kept: f64,
    /// Time per phase.
    pub phases: Phases,
}

/// The SFT policy (the RLHF start and the frozen reference) of one seed, with its task and data.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The task.
    pub task: Task,
    /// The preference data.
    pub data: PairData,
    /// The SFT policy.
    pub sft: Model,
}

impl Setup {
    /// The seed's task and data, and `cfg.sft_steps` steps of supervised fine-tuning on all responses of the data.
    pub fn new(cfg: &TinyConfig, seed: Seed, cancel: &AtomicBool) -> Result<Setup> {
        cfg.validate()?;
        let task = Task::new(cfg, seed);
        let data = PairData::new(&task, cfg, seed);
        let mut sft = Model::new(cfg.shape(), seed.derive("rlhf.policy"));
        let mut opt = AdamW::new(sft.shape, cfg.lr, 0.0);
        let mut g = Model::zeros(sft.shape);
        let seqs: Vec<&Seq> = data.pairs.iter().flat_map(|p| [&p.chosen, &p.rejected]).collect();
        let mut rng = seed.derive("rlhf.sft").rng();
        for _ in 0..cfg.sft_steps {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Interrupted);
            }
            let batch: Vec<&Seq> = (0..cfg.batch).map(|_| seqs[rng.random_range(0..seqs.len())]).collect();
            let (ctx, tgt) = task.examples(batch);
            sft.loss(&ctx, &tgt, Some(&mut g));
            opt.step(&mut sft, &g);
        }
        Ok(Setup { task, data, sft })
    }
}

/// The credit masks of a batch of sequences with their labels, flattened in token order.
fn masks<'a>(seqs: impl IntoIterator<Item = (&'a Seq, bool)>, credit: Credit) -> Vec<bool> {
    seqs.into_iter()
        .flat_map(|(s, label)| credit_mask(&s.scores, label, credit))
        .collect()
}

/// `steps` RLHF steps of `alg` with `credit` from the setup's SFT policy, evaluating every `eval_every` steps.
/// Checks `cancel` every step ([`Error::Interrupted`]).
#[allow(clippy::too_many_arguments)]
pub fn run(
    setup: &Setup,
    cfg: &TinyConfig,
    alg: Algorithm,
    credit: Credit,
    steps: usize,
    eval_every: usize,
    seed: Seed,
    cancel: &AtomicBool,
) -> Result<Run> {
    cfg.validate()?;
    check::at_least("rlhf_tiny.eval_every", eval_every as u64, 1)?;
    let task = &setup.task;
    let reference = &setup.sft;
    let mut policy = setup.sft.clone();
    let mut opt = AdamW::new(policy.shape, cfg.lr, 0.0);
    let mut g = Model::zeros(policy.shape);
    let mut rng = seed.derive("rlhf.run").derive(alg.as_str()).rng();
    let mut phases = Phases::default();
    let (mut kept, mut trained) = (0usize, 0usize);
    let eval = |m: &Model, step| Point {
        step,
        rule_prob: rule_prob(m, task),
        planted_logp: planted_logp(m, task, &setup.data),
    };
    let mut curve = vec![eval(&policy, 0)];
    // DPO's reference log-probs of every pair, once (experience making).
    let t0 = Instant::now();
    let ref_lp: Vec<(Vec<f64>, Vec<f64>)> = if alg == Algorithm::Dpo {
        setup
            .data
            .pairs
            .iter()
            .map(|p| {
                let (c, t) = task.examples([&p.chosen]);
                let (c2, t2) = task.examples([&p.rejected]);
                (reference.logp(&c, &t), reference.logp(&c2, &t2))
            })
            .collect()
    } else {
        Vec::new()
    };
    phases.experience_s += t0.elapsed().as_secs_f64();
    for step in 1..=steps {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let (k, n) = match alg {
            Algorithm::Dpo => dpo_step(
                setup,
                cfg,
                credit,
                &ref_lp,
                &mut policy,
                &mut opt,
                &mut g,
                &mut rng,
                &mut phases,
            ),
            Algorithm::Ppo => ppo_step(
                task,
                reference,
                cfg,
                credit,
                &mut policy,
                &mut opt,
                &mut g,
                &mut rng,
                &mut phases,
            ),
            Algorithm::RejectionSampling => {
                rs_step(task, cfg, credit, &mut policy, &mut opt, &mut g, &mut rng, &mut phases)
            }
        };
        kept += k;
        trained += n;
        if step % eval_every == 0 || step == steps {
            curve.push(eval(&policy, step));
        }
    }
    Ok(Run {
        algorithm: alg,
        credit,
        seed: seed.0,
        curve,
        kept: kept as f64 / trained.max(1) as f64,
        phases,
    })
}

/// One DPO step on a random batch of pairs. Returns (kept tokens, tokens).
#[allow(clippy::too_many_arguments)]
fn dpo_step(
    setup: &Setup,
    cfg: &TinyConfig,
    credit: Credit,
    ref_lp: &[(Vec<f64>, Vec<f64>)],
    policy: &mut Model,
    opt: &mut AdamW,
    g: &mut Grads,
    rng: &mut trainlab_core::seed::Rng,
    phases: &mut Phases,
) -> (usize, usize) {
    let t0 = Instant::now();
    let idx: Vec<usize> = (0..cfg.batch)
        .map(|_| rng.random_range(0..setup.data.pairs.len()))
        .collect();
    let seqs: Vec<(&Seq, bool)> = idx
        .iter()
        .flat_map(|&i| {
            [
                (&setup.data.pairs[i].chosen, true),
                (&setup.data.pairs[i].rejected, false),
            ]
        })
        .collect();
    let mask = masks(seqs.iter().copied(), credit);
    let lp_ref: Vec<f64> = idx
        .iter()
        .flat_map(|&i| ref_lp[i].0.iter().chain(&ref_lp[i].1).copied())
        .collect();
    let (ctx, tgt) = setup.task.examples(seqs.iter().map(|(s, _)| *s));
    phases.experience_s += t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let w = dpo_weights(&mask, &lp_ref, cfg.response_len, cfg.beta);
    policy.weighted_logp(&ctx, &tgt, w, g);
    opt.step(policy, g);
    phases.training_s += t1.elapsed().as_secs_f64();
    (mask.iter().filter(|m| **m).count(), mask.len())
}

/// The DPO weights `∂L/∂log p_t` for a batch laid out as (chosen, rejected) response pairs of `t` tokens each, with
/// the loss the batch mean of `−log σ(β·Δ)`, `Δ = Σ m^w(lp − lp_ref) − Σ m^l(lp − lp_ref)`.
fn dpo_weights<'a>(mask: &'a [bool], lp_ref: &'a [f64], t: usize, beta: f64) -> impl FnOnce(&[f64]) -> Vec<f64> + 'a {
    move |lp: &[f64]| {
        let pairs = lp.len() / (2 * t);
        let mut w = vec![0.0; lp.len()];
        for p in 0..pairs {
            let (a, b) = (2 * p * t, (2 * p + 1) * t);
            let sum = |r: std::ops::Range<usize>| -> f64 { r.filter(|&i| mask[i]).map(|i| lp[i] - lp_ref[i]).sum() };
            let delta = sum(a..b) - sum(b..b + t);
            // d(−log σ(βΔ))/dΔ = −β·σ(−βΔ)
            let d = -beta / (1.0 + (beta * delta).exp()) / pairs as f64;
            for i in a..b + t {
                if mask[i] {
                    w[i] = if i < b { d } else { -d };
                }
            }
        }
        w
    }
}

/// `prompts` fresh prompts and one sampled response each, judged and scored. Adds to the generation phase (sampling)
/// and the experience phase (judging and scoring).
fn rollouts(
    task: &Task,
    cfg: &TinyConfig,
    policy: &Model,
    prompts: usize,
    rng: &mut trainlab_core::seed::Rng,
    phases: &mut Phases,
) -> Vec<Seq> {
    let t0 = Instant::now();
    let ps: Vec<Vec<u32>> = (0..prompts).map(|_| task.prompt(rng)).collect();
    let responses = task.generate(policy, &ps, rng);
    phases.generation_s += t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let out = ps
        .into_iter()
        .zip(responses)
        .map(|(prompt, response)| {
            let right = task.judge(&prompt, &response);
            let scores = task.scores(&right, cfg.score_noise, rng);
            Seq {
                prompt,
                response,
                right,
                scores,
            }
        })
        .collect();
    phases.experience_s += t1.elapsed().as_secs_f64();
    out
}

/// One PPO iteration: rollouts, experience (old and reference log-probs, rewards, advantages, masks), `ppo_epochs`
/// clipped-ratio updates. Returns (kept tokens, tokens).
#[allow(clippy::too_many_arguments)]
fn ppo_step(
    task: &Task,
    reference: &Model,
    cfg: &TinyConfig,
    credit: Credit,
    policy: &mut Model,
    opt: &mut AdamW,
    g: &mut Grads,
    rng: &mut trainlab_core::seed::Rng,
    phases: &mut Phases,
) -> (usize, usize) {
    let seqs = rollouts(task, cfg, policy, cfg.batch, rng, phases);
    let t0 = Instant::now();
    let t = cfg.response_len;
    let (ctx, tgt) = task.examples(&seqs);
    let old = policy.logp(&ctx, &tgt);
    let lref = reference.logp(&ctx, &tgt);
    let rewards: Vec<f64> = seqs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let kl: f64 = (i * t..(i + 1) * t).map(|j| old[j] - lref[j]).sum::<f64>() / t as f64;
            s.right_share() - cfg.kl * kl
        })
        .collect();
    let st = Summary::of(&rewards);
    let adv: Vec<f64> = rewards.iter().map(|r| (r - st.mean) / (st.std + 1e-8)).collect();
    let mask = masks(seqs.iter().zip(&adv).map(|(s, a)| (s, *a >= 0.0)), credit);
    let kept = mask.iter().filter(|m| **m).count();
    phases.experience_s += t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let (lo, hi) = (1.0 - cfg.clip, 1.0 + cfg.clip);
    for _ in 0..cfg.ppo_epochs {
        let w = |lp: &[f64]| -> Vec<f64> {
            (0..lp.len())
                .map(|j| {
                    let a = adv[j / t];
                    let rho = (lp[j] - old[j]).exp();
                    // min(ρA, clip(ρ)A) takes the clipped (constant) branch when the ratio is past the clip in the
                    // direction the advantage pushes.
                    let clipped = (a > 0.0 && rho > hi) || (a < 0.0 && rho < lo);
                    if mask[j] && !clipped {
                        -a * rho / kept.max(1) as f64
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        policy.weighted_logp(&ctx, &tgt, w, g);
        opt.step(policy, g);
    }
    phases.training_s += t1.elapsed().as_secs_f64();
    (kept, mask.len())
}

/// One rejection-sampling iteration: `samples_per_prompt` rollouts per prompt, the best by reward kept, one
/// supervised step on its credited tokens. Returns (kept tokens, tokens).
#[allow(clippy::too_many_arguments)]
fn rs_step(
    task: &Task,
    cfg: &TinyConfig,
    credit: Credit,
    policy: &mut Model,
    opt: &mut AdamW,
    g: &mut Grads,
    rng: &mut trainlab_core::seed::Rng,
    phases: &mut Phases,
) -> (usize, usize) {
    let k = cfg.samples_per_prompt;
    let t0 = Instant::now();
    let ps: Vec<Vec<u32>> = (0..cfg.batch).map(|_| task.prompt(rng)).collect();
    let many: Vec<Vec<u32>> = ps.iter().flat_map(|p| std::iter::repeat_n(p.clone(), k)).collect();
    let responses = task.generate(policy, &many, rng);
    phases.generation_s += t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut best = Vec::with_capacity(cfg.batch);
    for (p, group) in ps.into_iter().zip(responses.chunks(k)) {
        let judged: Vec<Vec<bool>> = group.iter().map(|r| task.judge(&p, r)).collect();
        let i = (0..k)
            .max_by_key(|&i| judged[i].iter().filter(|r| **r).count())
            .unwrap_or(0);
        let right = judged[i].clone();
        let scores = task.scores(&right, cfg.score_noise, rng);
        best.push(Seq {
            prompt: p,
            response: group[i].clone(),
            right,
            scores,
        });
    }
    let mask = masks(best.iter().map(|s| (s, true)), credit);
    let kept = mask.iter().filter(|m| **m).count();
    let (ctx, tgt) = task.examples(&best);
    phases.experience_s += t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let w = |_: &[f64]| -> Vec<f64> {
        mask.iter()
            .map(|&m| if m { -1.0 / kept.max(1) as f64 } else { 0.0 })
            .collect()
    };
    policy.weighted_logp(&ctx, &tgt, w, g);
    opt.step(policy, g);
    phases.training_s += t2.elapsed().as_secs_f64();
    (kept, mask.len())
}

/// The three credits of the experiment: `sample`, `token`, and `segment` at threshold 0 with smoothing half-width
/// `smoothing`.
pub fn credits(smoothing: usize) -> [Credit; 3] {
    [
        Credit::Sample,
        Credit::Token,
        Credit::Segment {
            threshold: 0.0,
            smoothing,
        },
    ]
}

/// Name of a credit.
pub fn credit_name(c: Credit) -> &'static str {
    match c {
        Credit::Sample => "sample",
        Credit::Token => "token",
        Credit::Segment { .. } => "segment",
    }
}

/// The credit experiment: every algorithm × credit × seed, each run from its seed's SFT policy, runs in parallel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// The setup.
    pub config: TinyConfig,
    /// Supervision-conflict rate of each seed's pair data ([`PairData::conflict_rate`]).
    pub conflict_rate: Vec<f64>,
    /// Share of chosen responses with a wrong token, per seed.
    pub chosen_with_errors: Vec<f64>,
    /// The runs, in (algorithm, credit, seed) order.
    pub runs: Vec<Run>,
}

/// Runs the experiment.
#[allow(clippy::too_many_arguments)]
pub fn credit_experiment(
    cfg: &TinyConfig,
    algorithms: &[Algorithm],
    credits: &[Credit],
    seeds: &[u64],
    steps: usize,
    eval_every: usize,
    cancel: &AtomicBool,
) -> Result<Experiment> {
    let setups: Vec<Setup> = seeds
        .par_iter()
        .map(|&s| Setup::new(cfg, Seed(s), cancel))
        .collect::<Result<_>>()?;
    let mut jobs = Vec::new();
    for &a in algorithms {
        for &c in credits {
            for (i, &s) in seeds.iter().enumerate() {
                jobs.push((a, c, i, s));
            }
        }
    }
    let runs = jobs
        .par_iter()
        .map(|&(a, c, i, s)| run(&setups[i], cfg, a, c, steps, eval_every, Seed(s), cancel))
        .collect::<Result<Vec<_>>>()?;
    Ok(Experiment {
        config: cfg.clone(),
        conflict_rate: setups.iter().map(|s| s.data.conflict_rate()).collect(),
        chosen_with_errors: setups.iter().map(|s| s.data.chosen_with_errors()).collect(),
        runs,
    })
}

/// Mean and sample standard deviation.
fn mean_sd(x: &[f64]) -> (f64, f64) {
    let s = Summary::of(x);
    (s.mean, if x.len() > 1 { s.std } else { 0.0 })
}

impl Experiment {
    /// The runs of one algorithm and credit (one per seed).
    pub fn cell(&self, alg: Algorithm, credit: Credit) -> Vec<&Run> {
        self.runs
            .iter()
            .filter(|r| r.algorithm == alg && r.credit == credit)
            .collect()
    }

    /// Final rule-conformant probability of each seed's run of `(alg, credit)`.
    pub fn final_rule_prob(&self, alg: Algorithm, credit: Credit) -> Vec<f64> {
        self.cell(alg, credit)
            .iter()
            .map(|r| r.curve.last().map_or(f64::NAN, |p| p.rule_prob))
            .collect()
    }

    /// A Markdown table: per algorithm and credit, the rule-conformant probability at the SFT start and at each
    /// evaluation (mean ± sd over seeds), the change of the planted tokens' log-probability, κ and phase seconds.
    pub fn table(&self) -> String {
        let mut algs: Vec<Algorithm> = Vec::new();
        let mut creds: Vec<Credit> = Vec::new();
        for r in &self.runs {
            if !algs.contains(&r.algorithm) {
                algs.push(r.algorithm);
            }
            if !creds.contains(&r.credit) {
                creds.push(r.credit);
            }
        }
        let steps: Vec<usize> = self
            .runs
            .first()
            .map_or(vec![], |r| r.curve.iter().map(|p| p.step).collect());
        let (c, csd) = mean_sd(&self.conflict_rate);
        let (e, esd) = mean_sd(&self.chosen_with_errors);
        let mut out = format!(
            "supervision conflict: {:.1}% ± {:.1} of pair tokens; chosen responses with a wrong token: {:.1}% ± {:.1} \
             ({} seeds)\n\n| algorithm | credit |",
            100.0 * c,
            100.0 * csd,
            100.0 * e,
            100.0 * esd,
            self.conflict_rate.len()
        );
        for s in &steps {
            out += &format!(" rule p @{s} |");
        }
        out += " Δ log p planted | κ kept | gen s | exp s | train s |\n|---|---|";
        out += &"---|".repeat(steps.len() + 5);
        out += "\n";
        for &a in &algs {
            for &cr in &creds {
                let runs = self.cell(a, cr);
                out += &format!("| {} | {} |", a.as_str(), credit_name(cr));
                for k in 0..steps.len() {
                    let v: Vec<f64> = runs.iter().map(|r| r.curve[k].rule_prob).collect();
                    let (m, sd) = mean_sd(&v);
                    out += &format!(" {m:.3} ± {sd:.3} |");
                }
                let d: Vec<f64> = runs
                    .iter()
                    .map(|r| r.curve.last().map_or(f64::NAN, |p| p.planted_logp) - r.curve[0].planted_logp)
                    .collect();
                let (dm, dsd) = mean_sd(&d);
                let (km, _) = mean_sd(&runs.iter().map(|r| r.kept).collect::<Vec<_>>());
                let ph = |f: fn(&Phases) -> f64| mean_sd(&runs.iter().map(|r| f(&r.phases)).collect::<Vec<_>>()).0;
                out += &format!(
                    " {dm:+.3} ± {dsd:.3} | {km:.2} | {:.3} | {:.3} | {:.3} |\n",
                    ph(|p| p.generation_s),
                    ph(|p| p.experience_s),
                    ph(|p| p.training_s)
                );
            }
        }
        out
    }
}

/// The mask's cost on one DPO training step (same batch): the step (forward, backward, AdamW on a copy of the
/// policy) with precomputed masks and the same step computing the segment masks of its responses first, timed in
/// alternation (each sample times one of each back to back, so load changes hit both), and the mask computation
/// alone.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskOverhead {
    /// Step without mask computation.
    pub step: crate::timing::Timing,
    /// Step with mask computation.
    pub step_with_mask: crate::timing::Timing,
    /// Per sample, (step with mask) / (step without), back to back.
    pub ratio: Summary,
    /// Mask computation alone.
    pub mask: crate::timing::Timing,
    /// Matrix FLOPs of the step (the same with and without the mask: masked tokens stay in the batch).
    pub flops: u64,
}

impl MaskOverhead {
    /// Median mask time over median step time.
    pub fn mask_share(&self) -> f64 {
        self.mask.median_s() / self.step.median_s()
    }
}

/// Measures [`MaskOverhead`] on a batch of `cfg.batch` pairs of `setup` with `credit`.
pub fn mask_overhead(setup: &Setup, cfg: &TinyConfig, credit: Credit, opts: &TimingOpts) -> Result<MaskOverhead> {
    let pairs = &setup.data.pairs[..cfg.batch.min(setup.data.pairs.len())];
    let seqs: Vec<(&Seq, bool)> = pairs
        .iter()
        .flat_map(|p| [(&p.chosen, true), (&p.rejected, false)])
        .collect();
    let (ctx, tgt) = setup.task.examples(seqs.iter().map(|(s, _)| *s));
    let lp_ref = setup.sft.logp(&ctx, &tgt);
    let pre = masks(seqs.iter().copied(), credit);
    let mut g = Model::zeros(setup.sft.shape);
    let step = |mask: &[bool], g: &mut Grads| {
        let mut policy = setup.sft.clone();
        let mut opt = AdamW::new(policy.shape, cfg.lr, 0.0);
        policy.weighted_logp(&ctx, &tgt, dpo_weights(mask, &lp_ref, cfg.response_len, cfg.beta), g);
        opt.step(&mut policy, g);
        black_box(&policy);
    };
    for _ in 0..opts.warmup {
        step(&pre, &mut g);
    }
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let ratio = crate::timing::time_samples(opts, || {
        let t = Instant::now();
        step(&pre, &mut g);
        let a = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let m = masks(seqs.iter().copied(), credit);
        step(&m, &mut g);
        let b = t.elapsed().as_secs_f64();
        without.push(a);
        with.push(b);
        Ok(b / a.max(1e-12))
    })?;
    let alone = time_fn(opts, || {
        black_box(masks(seqs.iter().copied(), credit));
        Ok(())
    })?;
    Ok(MaskOverhead {
        step: crate::timing::Timing::from_samples(without),
        step_with_mask: crate::timing::Timing::from_samples(with),
        ratio: ratio.summary,
        mask: alone,
        flops: setup.sft.matmul_flops_per_step(tgt.len()),
    })
}

/// Wall-clock seconds per phase of single PPO iterations of `cfg` (the policy freshly initialised, no SFT: the cost
/// does not depend on the weights), `warmup` untimed iterations then `iterations` timed ones: per phase, the timings
/// (one sample per iteration). Checks `cancel` every iteration.
pub fn measure_ppo_phases(
    cfg: &TinyConfig,
    warmup: usize,
    iterations: usize,
    seed: Seed,
    cancel: &AtomicBool,
) -> Result<[crate::timing::Timing; 3]> {
    measure_phases(cfg, Algorithm::Ppo, warmup, iterations, seed, cancel)
}

/// [`measure_ppo_phases`] for any algorithm, with segment credit. DPO: each iteration computes the reference
/// log-probs of its `cfg.batch` pairs (experience making; the pair data has `cfg.batch` pairs) and trains one step
/// on a batch drawn from them; it generates nothing (generation 0). Rejection sampling: `samples_per_prompt`
/// responses per prompt, scored exactly (no reward-model pass), one supervised step on the best.
pub fn measure_phases(
    cfg: &TinyConfig,
    alg: Algorithm,
    warmup: usize,
    iterations: usize,
    seed: Seed,
    cancel: &AtomicBool,
) -> Result<[crate::timing::Timing; 3]> {
    cfg.validate()?;
    check::at_least("rlhf_tiny.iterations", iterations as u64, 1)?;
    let task = Task::new(cfg, seed);
    let reference = Model::new(cfg.shape(), seed.derive("rlhf.policy"));
    let mut policy = reference.clone();
    let mut opt = AdamW::new(policy.shape, cfg.lr, 0.0);
    let mut g = Model::zeros(policy.shape);
    let mut rng = seed.derive("rlhf.measure").rng();
    let credit = credits(1)[2];
    // DPO's pair data: one batch of pairs, the SFT policy replaced by the fresh reference.
    let setup = (alg == Algorithm::Dpo).then(|| {
        let dcfg = TinyConfig {
            pairs: cfg.batch,
            ..cfg.clone()
        };
        Setup {
            data: PairData::new(&task, &dcfg, seed),
            task: task.clone(),
            sft: reference.clone(),
        }
    });
    let mut samples = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..warmup + iterations {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let mut ph = Phases::default();
        match (alg, &setup) {
            (Algorithm::Dpo, Some(setup)) => {
                let t0 = Instant::now();
                let ref_lp: Vec<(Vec<f64>, Vec<f64>)> = setup
                    .data
                    .pairs
                    .iter()
                    .map(|p| {
                        let (c, t) = task.examples([&p.chosen]);
                        let (c2, t2) = task.examples([&p.rejected]);
                        (reference.logp(&c, &t), reference.logp(&c2, &t2))
                    })
                    .collect();
                ph.experience_s += t0.elapsed().as_secs_f64();
                dpo_step(
                    setup,
                    cfg,
                    credit,
                    &ref_lp,
                    &mut policy,
                    &mut opt,
                    &mut g,
                    &mut rng,
                    &mut ph,
                );
            }
            (Algorithm::RejectionSampling, _) => {
                rs_step(&task, cfg, credit, &mut policy, &mut opt, &mut g, &mut rng, &mut ph);
            }
            _ => {
                ppo_step(
                    &task,
                    &reference,
                    cfg,
                    credit,
                    &mut policy,
                    &mut opt,
                    &mut g,
                    &mut rng,
                    &mut ph,
                );
            }
        }
        if i >= warmup {
            samples[0].push(ph.generation_s);
            samples[1].push(ph.experience_s);
            samples[2].push(ph.training_s);
        }
    }
    Ok(samples.map(crate::timing::Timing::from_samples))
}

/// Context window of the n-gram policy standing in for the transformer in [`RlhfCpu`].
pub const CPU_CONTEXT: usize = 2;
/// Embedding width of the n-gram policy in [`RlhfCpu`].
pub const CPU_EMBED: usize = 16;

/// The tiny trainer's configuration for an `rlhf_iteration` workload the CPU run answers (already scaled: see
/// `trainlab::kinds::rlhf::on_cpu`): the actor's `hidden` and `vocab` become the n-gram policy's widths (context
/// [`CPU_CONTEXT`], embedding [`CPU_EMBED`]; layers, heads and the FFN are not modelled), `prompts` the batch,
/// the longest response the (fixed) response length.
pub fn tiny_config_of(w: &RlhfIteration) -> Result<TinyConfig> {
    check::at_most("workload.actor.hidden", w.actor.hidden, 1 << 14, "a tiny CPU run")?;
    check::at_most("workload.actor.vocab", w.actor.vocab, 4096, "a tiny CPU run")?;
    check::at_most("workload.prompts", w.prompts, 4096, "a tiny CPU run")?;
    check::at_most("workload.response", w.response.max(), 4096, "a tiny CPU run")?;
    let cfg = TinyConfig {
        vocab: w.actor.vocab.max(2) as usize,
        context: CPU_CONTEXT,
        embed: CPU_EMBED,
        hidden: w.actor.hidden as usize,
        prompt_len: (w.prompt_len as usize).max(CPU_CONTEXT),
        response_len: w.response.max() as usize,
        batch: w.prompts as usize,
        pairs: w.prompts as usize,
        ppo_epochs: w.ppo_epochs as usize,
        samples_per_prompt: w.samples_per_prompt as usize,
        sft_steps: 0,
        ..TinyConfig::default()
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The measured backend `cpu` of `rlhf_iteration`: real iterations of the tiny trainer of this module on this CPU,
/// the n-gram policy standing in for the transformer (no attention, no KV cache, f64, one thread per matrix
/// product). Generation (autoregressive sampling) is reported as decode; there is no separate prefill (the fixed
/// window is recomputed every token) and no weight sync (one process holds every role): both are 0. No critic is
/// trained (PPO uses a group baseline) and the reward is exact, so the critic and reward passes the closed form
/// counts do not exist here. Memory per role is not reported (the n-gram's bytes are not the transformer's).
#[derive(Debug, Clone)]
pub struct RlhfCpu {
    /// Untimed iterations first.
    pub warmup: usize,
    /// Timed iterations (the median per phase is reported).
    pub iterations: usize,
}

impl Default for RlhfCpu {
    fn default() -> Self {
        RlhfCpu {
            warmup: 1,
            iterations: 3,
        }
    }
}

impl Backend<RlhfIteration> for RlhfCpu {
    fn name(&self) -> &str {
        "cpu"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Measured
    }
    fn run(&mut self, w: &RlhfIteration, ctx: &mut RunCtx) -> Result<RlhfOutcome> {
        let cfg = tiny_config_of(w)?;
        let t = measure_phases(
            &cfg,
            w.algorithm,
            self.warmup,
            self.iterations.max(1),
            ctx.seed.derive("rlhf.cpu"),
            &ctx.cancel,
        )?;
        Ok(trainlab_models::rlhf_tiny::outcome(
            w,
            [t[0].median_s(), t[1].median_s(), t[2].median_s()],
            (cfg.prompt_len + cfg.response_len) as u64,
        ))
    }
}

/// The phase model's size of `cfg`.
pub fn tiny_size(cfg: &TinyConfig) -> trainlab_models::rlhf_tiny::TinySize {
    trainlab_models::rlhf_tiny::TinySize {
        batch: cfg.batch as f64,
        response_len: cfg.response_len as f64,
        context: cfg.context as f64,
        embed: cfg.embed as f64,
        hidden: cfg.hidden as f64,
        vocab: cfg.vocab as f64,
        ppo_epochs: cfg.ppo_epochs as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> TinyConfig {
        TinyConfig {
            pairs: 64,
            sft_steps: 20,
            batch: 8,
            ..TinyConfig::default()
        }
    }

    #[test]
    fn planted_data_is_labelled_by_errors_and_conflicts() {
        let cfg = small();
        let task = Task::new(&cfg, Seed(1));
        let data = PairData::new(&task, &cfg, Seed(1));
        assert_eq!(data, PairData::new(&task, &cfg, Seed(1)));
        for p in &data.pairs {
            assert!(p.chosen.wrong() < p.rejected.wrong());
            assert_eq!(p.chosen.right, task.judge(&p.chosen.prompt, &p.chosen.response));
        }
        let c = data.conflict_rate();
        assert!(c > 0.1 && c < 0.9, "{c}");
        assert!(data.chosen_with_errors() > 0.2);
    }

    #[test]
    fn dpo_weights_with_full_mask_are_the_dpo_gradient() {
        // One pair of 2 tokens each, lp − lp_ref = (0.1, 0.2 | −0.3, 0.0): Δ = 0.3 − (−0.3) = 0.6, β = 0.5:
        // d = −β·σ(−βΔ) = −0.5/(1+e^0.3).
        let mask = [true; 4];
        let lp_ref = [0.0; 4];
        let w = dpo_weights(&mask, &lp_ref, 2, 0.5)(&[0.1, 0.2, -0.3, 0.0]);
        let d = -0.5 / (1.0 + 0.3f64.exp());
        assert!((w[0] - d).abs() < 1e-12 && (w[1] - d).abs() < 1e-12);
        assert!((w[2] + d).abs() < 1e-12 && (w[3] + d).abs() < 1e-12);
        // A masked token has no weight and leaves Δ: Δ = 0.1 − (−0.3) = 0.4.
        let w = dpo_weights(&[true, false, true, false], &lp_ref, 2, 0.5)(&[0.1, 0.2, -0.3, 0.0]);
        let d = -0.5 / (1.0 + 0.2f64.exp());
        assert_eq!(w[1], 0.0);
        assert_eq!(w[3], 0.0);
        assert!((w[0] - d).abs() < 1e-12 && (w[2] + d).abs() < 1e-12);
    }

    #[test]
    fn generation_follows_a_policy_that_knows_the_rule() {
        // After SFT on mostly-right data, sampled responses are mostly right.
        let cfg = TinyConfig {
            sft_steps: 200,
            ..small()
        };
        let setup = Setup::new(&cfg, Seed(2), &AtomicBool::new(false)).unwrap();
        let mut rng = Seed(3).rng();
        let ps: Vec<Vec<u32>> = (0..64).map(|_| setup.task.prompt(&mut rng)).collect();
        let rs = setup.task.generate(&setup.sft, &ps, &mut rng);
        let right: f64 = ps
            .iter()
            .zip(&rs)
            .map(|(p, r)| task_share(&setup.task, p, r))
            .sum::<f64>()
            / 64.0;
        assert!(right > 0.3, "right share {right}");
        assert!(rule_prob(&setup.sft, &setup.task) > 0.3);
        fn task_share(t: &Task, p: &[u32], r: &[u32]) -> f64 {
            t.judge(p, r).iter().filter(|x| **x).count() as f64 / r.len() as f64
        }
    }

    #[test]
    fn runs_are_deterministic_and_cancellable() {
        let cfg = small();
        let no = AtomicBool::new(false);
        let setup = Setup::new(&cfg, Seed(4), &no).unwrap();
        for alg in [Algorithm::Dpo, Algorithm::Ppo, Algorithm::RejectionSampling] {
            let a = run(&setup, &cfg, alg, credits(1)[2], 3, 1, Seed(4), &no).unwrap();
            let b = run(&setup, &cfg, alg, credits(1)[2], 3, 1, Seed(4), &no).unwrap();
            assert_eq!(a.curve, b.curve);
            assert_eq!(a.curve.len(), 4);
            assert!(a.kept > 0.0 && a.kept < 1.0, "{alg:?} κ {}", a.kept);
            assert!(a.phases.training_s > 0.0);
        }
        let err = run(
            &setup,
            &cfg,
            Algorithm::Dpo,
            Credit::Sample,
            3,
            1,
            Seed(4),
            &AtomicBool::new(true),
        );
        assert!(matches!(err, Err(Error::Interrupted)));
        let bad = TinyConfig {
            prompt_len: 1,
            ..small()
        };
        let e = Setup::new(&bad, Seed(1), &no).unwrap_err();
        assert!(e.to_string().contains("rlhf_tiny.prompt_len"), "{e}");
    }
}
