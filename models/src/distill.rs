//! The compute cost of a distillation run (DDK, Liu et al. 2024), in closed form: the `cost_model` backend of the
//! `distillation` kind. It answers the FLOP metrics only (no losses: those need the real run or a fitted law).
//!
//! For a tiny LM of width H (`c` context tokens of width E, vocabulary V; both include the domain marker,
//! `Distillation::model_vocab`), one example's forward pass costs
//! `f(H) = 2·(c·E·H + H·V)` matrix FLOPs and a training step three times that. Over a run of `D` student tokens in
//! `steps = ⌈D / batch⌉` steps, with `n·v` validation examples (n domains, v each):
//! - student training: `3·f(H_S)·D`;
//! - teacher soft targets: `f(H_T)·D` (one teacher forward per student example);
//! - evaluation: `f(H_T)·n·v` once (the teacher is fixed) plus `f(H_S)·n·v` at every DDK update
//!   (`⌊steps / k⌋` of them) and once at the end.
//!
//! The same accounting for transformers (6·N per trained token, 2·N per forward token; Kaplan et al. 2020) gives the
//! teacher's share `2·N_T / (6·N_S + 2·N_T)` before evaluation: 72% for DDK's 14B teacher and 1.8B student.
use trainlab_core::workloads::distill::{DistillOutcome, Distillation, Flops, Schedule};
use trainlab_core::{Backend, Error, Fidelity, RunCtx, Workload};

/// Forward matrix FLOPs of one example through a tiny LM of width `hidden` in `w`'s family.
pub fn forward_flops(w: &Distillation, hidden: u64) -> f64 {
    let (v, c, e, h) = (
        w.model_vocab() as f64,
        w.model_context() as f64,
        w.embed as f64,
        hidden as f64,
    );
    2.0 * (c * e * h + h * v)
}

/// The FLOPs of `w` by part.
pub fn flops(w: &Distillation) -> Flops {
    let d = w.student_tokens as f64;
    let steps = w.student_tokens.div_ceil(w.batch);
    let updates = match w.schedule {
        Schedule::Ddk { k, .. } => steps / k,
        _ => 0,
    };
    let val = (w.domains.len() as u64 * w.val_examples) as f64;
    let (fs, ft) = (forward_flops(w, w.student_hidden), forward_flops(w, w.teacher_hidden));
    Flops {
        student_train: 3.0 * fs * d,
        teacher_forward: ft * d,
        evaluation: ft * val + fs * val * (updates + 1) as f64,
    }
}

/// The closed-form cost backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct DistillCost;

impl Backend<Distillation> for DistillCost {
    fn name(&self) -> &str {
        "cost_model"
    }
    fn fidelity(&self) -> Fidelity {
        Fidelity::Analytical
    }
    fn run(&mut self, w: &Distillation, _: &mut RunCtx) -> Result<DistillOutcome, Error> {
        w.validate()?;
        Ok(DistillOutcome {
            domains: w.domains.iter().map(|d| d.name.clone()).collect(),
            student_ce: None,
            teacher_ce: None,
            weights: w.final_weights(),
            flops: flops(w),
            gap_ci: None,
            at_scale: w.at_scale.as_ref().map(|a| a.cost()),
        })
    }
}

/// The teacher's share of the FLOPs of distilling a transformer of `student_params` from one of `teacher_params`
/// (training 6·N per token, forward 2·N), evaluation left out.
pub fn transformer_teacher_share(teacher_params: f64, student_params: f64) -> f64 {
    2.0 * teacher_params / (6.0 * student_params + 2.0 * teacher_params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddk_paper_teacher_share() {
        // Qwen-1.5 14B teacher, 1.8B student (DDK §4): 28 / (10.8 + 28).
        let s = transformer_teacher_share(14e9, 1.8e9);
        assert!((s - 28.0 / 38.8).abs() < 1e-12, "{s}");
    }
}
