//! Discrete-event simulation of one pipeline-parallel training step under the 1F1B schedule.
//!
//! The schedule is PipeDream-Flush / 1F1B (Narayanan et al., *Efficient Large-Scale Language Model Training on GPU
//! Clusters Using Megatron-LM*, SC 2021, §2.2.1, Fig. 4 top; also Narayanan et al., *Memory-Efficient
//! Pipeline-Parallel DNN Training*, ICML 2021). With `p` stages and `m` micro-batches, stage `s` (0-based) runs
//! `w_s = min(p - 1 - s, m)` warm-up forwards, then alternates one forward and one backward for the remaining
//! `m - w_s` micro-batches, then drains `w_s` backwards; a flush ends the step. At most `w_s + 1 <= p - s`
//! micro-batches' activations are stashed on stage `s` (versus `m` for GPipe).
//!
//! The simulation is dependency-driven on [`crate::engine::Engine`]: a stage starts its next operation in that fixed
//! order as soon as it is idle and the operation's input has arrived — the activation of micro-batch `j` from stage
//! `s - 1` for a forward, the gradient from stage `s + 1` (or its own forward, on the last stage) for a backward.
//! Each inter-stage transfer takes `p2p_s`. Durations are rounded to integer nanoseconds.
//!
//! With uniform stages (`f`, `b`) and no transfer cost the step takes `(m + p - 1)(f + b)` and the pipeline bubble
//! is `(p - 1) / (m + p - 1)` of the stage-time (Narayanan et al. 2021, §2.2.1: bubble time fraction
//! `(p - 1) / m` relative to ideal compute). The tests check both exactly.
use crate::engine::Engine;
use trainlab_core::{Error, SimTime};

/// The answer for one pipeline step.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineResult {
    /// Time from the first forward's start to the last backward's end (the flush), seconds.
    pub step_time_s: f64,
    /// Idle fraction of the stages' time: `1 - Σ_s busy_s / (p · step_time)`.
    pub bubble_fraction: f64,
    /// Compute time of each stage within the step, seconds.
    pub per_stage_busy_s: Vec<f64>,
    /// Peak number of micro-batches whose activations are stashed on each stage (forward started, backward not
    /// finished). Under 1F1B this is at most `p - s`.
    pub peak_in_flight: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Fwd(u32),
    Bwd(u32),
}

#[derive(Debug, Clone, Copy)]
enum PEvent {
    /// Stage finished the forward of a micro-batch.
    FwdDone { stage: u32, mb: u32 },
    /// Stage finished the backward of a micro-batch.
    BwdDone { stage: u32, mb: u32 },
    /// An activation arrived at a stage.
    ActArrive { stage: u32, mb: u32 },
    /// A gradient arrived at a stage.
    GradArrive { stage: u32, mb: u32 },
}

/// The 1F1B operation order of stage `s` of `p`, for `m` micro-batches.
fn one_f_one_b_order(s: usize, p: usize, m: usize) -> Vec<Op> {
    let w = (p - 1 - s).min(m);
    let mut ops = Vec::with_capacity(2 * m);
    ops.extend((0..w).map(|j| Op::Fwd(j as u32)));
    for i in 0..m - w {
        ops.push(Op::Fwd((w + i) as u32));
        ops.push(Op::Bwd(i as u32));
    }
    ops.extend((m - w..m).map(|j| Op::Bwd(j as u32)));
    ops
}

fn check_durations(field: &str, xs: &[f64], stages: usize) -> Result<(), Error> {
    if xs.len() != stages {
        return Err(Error::invalid(
            field,
            format!("{} values", xs.len()),
            format!("needs one duration per stage ({stages})"),
            format!("give exactly {stages} values"),
        ));
    }
    for (i, &x) in xs.iter().enumerate() {
        trainlab_core::error::check::non_negative(&format!("{field}[{i}]"), x)?;
    }
    Ok(())
}

struct Sim<'a> {
    p: usize,
    m: usize,
    fwd: &'a [SimTime],
    bwd: &'a [SimTime],
    p2p: SimTime,
    order: Vec<Vec<Op>>,
    next: Vec<usize>,
    busy: Vec<bool>,
    act_ready: Vec<bool>,
    grad_ready: Vec<bool>,
    busy_ns: Vec<u64>,
    in_flight: Vec<usize>,
    peak: Vec<usize>,
}

impl Sim<'_> {
    fn try_start(&mut self, eng: &mut Engine<PEvent>, s: usize) {
        if self.busy[s] {
            return;
        }
        let Some(&op) = self.order[s].get(self.next[s]) else {
            return;
        };
        let (ready, dur, ev) = match op {
            Op::Fwd(j) => (
                s == 0 || self.act_ready[s * self.m + j as usize],
                self.fwd[s],
                PEvent::FwdDone { stage: s as u32, mb: j },
            ),
            Op::Bwd(j) => (
                self.grad_ready[s * self.m + j as usize],
                self.bwd[s],
                PEvent::BwdDone { stage: s as u32, mb: j },
            ),
        };
        if !ready {
            return;
        }
        if let Op::Fwd(_) = op {
            self.in_flight[s] += 1;
            self.peak[s] = self.peak[s].max(self.in_flight[s]);
        }
        self.busy[s] = true;
        self.next[s] += 1;
        self.busy_ns[s] += dur.0;
        eng.schedule_in(dur, ev);
    }

    fn handle(&mut self, eng: &mut Engine<PEvent>, ev: PEvent) {
        match ev {
            PEvent::FwdDone { stage, mb } => {
                let s = stage as usize;
                self.busy[s] = false;
                if s + 1 < self.p {
                    eng.schedule_in(self.p2p, PEvent::ActArrive { stage: stage + 1, mb });
                } else {
                    self.grad_ready[s * self.m + mb as usize] = true;
                }
                self.try_start(eng, s);
            }
            PEvent::BwdDone { stage, mb } => {
                let s = stage as usize;
                self.busy[s] = false;
                self.in_flight[s] -= 1;
                if s > 0 {
                    eng.schedule_in(self.p2p, PEvent::GradArrive { stage: stage - 1, mb });
                }
                self.try_start(eng, s);
            }
            PEvent::ActArrive { stage, mb } => {
                self.act_ready[stage as usize * self.m + mb as usize] = true;
                self.try_start(eng, stage as usize);
            }
            PEvent::GradArrive { stage, mb } => {
                self.grad_ready[stage as usize * self.m + mb as usize] = true;
                self.try_start(eng, stage as usize);
            }
        }
    }
}

/// The all-forward-then-all-backward order of GPipe (Huang et al., NeurIPS 2019): every stage stashes all `m`
/// micro-batches' activations.
fn gpipe_order(m: usize) -> Vec<Op> {
    (0..m)
        .map(|j| Op::Fwd(j as u32))
        .chain((0..m).map(|j| Op::Bwd(j as u32)))
        .collect()
}

/// A pipeline schedule (the order in which each stage runs its forwards and backwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// PipeDream-Flush / 1F1B (Narayanan et al. 2021): warm-up forwards, then one forward one backward, then drain.
    OneFOneB,
    /// GPipe (Huang et al. 2019): all forwards, then all backwards. Same bubble, `m` stashed activations per stage.
    GPipe,
}

/// Simulates one training step of a `stages`-stage pipeline over `micro_batches` micro-batches under 1F1B.
///
/// `fwd_s[s]` and `bwd_s[s]` are the forward and backward times of one micro-batch on stage `s` (seconds, >= 0);
/// `p2p_s` is the time to send an activation or a gradient between adjacent stages. Returns
/// [`Error::Invalid`] naming the field for zero stages or micro-batches, slices of the wrong length, or negative
/// or non-finite durations.
pub fn simulate_1f1b(
    stages: usize,
    micro_batches: usize,
    fwd_s: &[f64],
    bwd_s: &[f64],
    p2p_s: f64,
) -> Result<PipelineResult, Error> {
    simulate_pipeline(Schedule::OneFOneB, stages, micro_batches, fwd_s, bwd_s, p2p_s)
}

/// Simulates one training step under `schedule`; see [`simulate_1f1b`] for the arguments and errors.
pub fn simulate_pipeline(
    schedule: Schedule,
    stages: usize,
    micro_batches: usize,
    fwd_s: &[f64],
    bwd_s: &[f64],
    p2p_s: f64,
) -> Result<PipelineResult, Error> {
    trainlab_core::error::check::at_least("stages", stages as u64, 1)?;
    trainlab_core::error::check::at_least("micro_batches", micro_batches as u64, 1)?;
    if stages.saturating_mul(micro_batches) > 100_000_000 {
        return Err(Error::invalid(
            "stages * micro_batches",
            format!("{stages} * {micro_batches}"),
            "more than 1e8 (stage, micro-batch) pairs to simulate",
            "use fewer stages or micro-batches",
        ));
    }
    check_durations("fwd_s", fwd_s, stages)?;
    check_durations("bwd_s", bwd_s, stages)?;
    trainlab_core::error::check::non_negative("p2p_s", p2p_s)?;
    let (p, m) = (stages, micro_batches);
    let fwd: Vec<SimTime> = fwd_s.iter().map(|&x| SimTime::from_secs_f64(x)).collect();
    let bwd: Vec<SimTime> = bwd_s.iter().map(|&x| SimTime::from_secs_f64(x)).collect();
    let mut sim = Sim {
        p,
        m,
        fwd: &fwd,
        bwd: &bwd,
        p2p: SimTime::from_secs_f64(p2p_s),
        order: (0..p)
            .map(|s| match schedule {
                Schedule::OneFOneB => one_f_one_b_order(s, p, m),
                Schedule::GPipe => gpipe_order(m),
            })
            .collect(),
        next: vec![0; p],
        busy: vec![false; p],
        act_ready: vec![false; p * m],
        grad_ready: vec![false; p * m],
        busy_ns: vec![0; p],
        in_flight: vec![0; p],
        peak: vec![0; p],
    };
    let mut eng: Engine<PEvent> = Engine::with_capacity(2 * p);
    for s in 0..p {
        sim.try_start(&mut eng, s);
    }
    eng.run_until(SimTime::MAX, |eng, _t, ev| sim.handle(eng, ev));
    if let Some(s) = (0..p).find(|&s| sim.next[s] != sim.order[s].len()) {
        // Cannot happen for a valid 1F1B order; it would mean the schedule deadlocked.
        return Err(Error::Backend(format!(
            "1F1B schedule deadlocked at stage {s} after {} of {} operations",
            sim.next[s],
            sim.order[s].len()
        )));
    }
    let step_ns = eng.now().0;
    let total_busy: u64 = sim.busy_ns.iter().sum();
    let bubble_fraction = if step_ns == 0 {
        0.0
    } else {
        1.0 - total_busy as f64 / (p as f64 * step_ns as f64)
    };
    Ok(PipelineResult {
        step_time_s: eng.now().as_secs_f64(),
        bubble_fraction,
        per_stage_busy_s: sim.busy_ns.iter().map(|&n| SimTime(n).as_secs_f64()).collect(),
        peak_in_flight: sim.peak,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn order_is_1f1b() {
        use Op::*;
        // p = 4, m = 6, stage 1: 2 warm-up forwards, 4 steady pairs, 2 cool-down backwards.
        assert_eq!(
            one_f_one_b_order(1, 4, 6),
            vec![
                Fwd(0),
                Fwd(1),
                Fwd(2),
                Bwd(0),
                Fwd(3),
                Bwd(1),
                Fwd(4),
                Bwd(2),
                Fwd(5),
                Bwd(3),
                Bwd(4),
                Bwd(5)
            ]
        );
        // Last stage alternates from the start; fewer micro-batches than warm-up slots clamps.
        assert_eq!(one_f_one_b_order(3, 4, 2), vec![Fwd(0), Bwd(0), Fwd(1), Bwd(1)]);
        assert_eq!(one_f_one_b_order(0, 4, 2), vec![Fwd(0), Fwd(1), Bwd(0), Bwd(1)]);
    }

    #[test]
    fn uniform_stages_match_closed_form() {
        for &(p, m) in &[(1usize, 1usize), (1, 8), (2, 1), (4, 8), (8, 32), (8, 3), (16, 64)] {
            for &(f, b) in &[(1.0, 2.0), (0.5, 0.5), (0.013, 0.029)] {
                let r = simulate_1f1b(p, m, &vec![f; p], &vec![b; p], 0.0).expect("valid");
                let fb = SimTime::from_secs_f64(f).as_secs_f64() + SimTime::from_secs_f64(b).as_secs_f64();
                let want = (m + p - 1) as f64 * fb;
                assert!(
                    (r.step_time_s - want).abs() < 1e-9,
                    "p={p} m={m}: {} vs {want}",
                    r.step_time_s
                );
                let bubble = (p - 1) as f64 / (m + p - 1) as f64;
                assert!(
                    (r.bubble_fraction - bubble).abs() < 1e-9,
                    "p={p} m={m}: {}",
                    r.bubble_fraction
                );
                for (s, &busy) in r.per_stage_busy_s.iter().enumerate() {
                    assert!((busy - m as f64 * fb).abs() < 1e-9, "stage {s}");
                    assert!(
                        r.peak_in_flight[s] <= (p - s).min(m),
                        "stage {s} stash {}",
                        r.peak_in_flight[s]
                    );
                }
                assert_eq!(r.peak_in_flight[0], p.min(m));
            }
        }
    }

    #[test]
    fn gpipe_same_bubble_more_memory() {
        let (p, m) = (4, 8);
        let a = simulate_pipeline(Schedule::OneFOneB, p, m, &[1.0; 4], &[2.0; 4], 0.0).expect("valid");
        let g = simulate_pipeline(Schedule::GPipe, p, m, &[1.0; 4], &[2.0; 4], 0.0).expect("valid");
        assert!(
            (a.step_time_s - g.step_time_s).abs() < 1e-9,
            "{} vs {}",
            a.step_time_s,
            g.step_time_s
        );
        assert!((a.bubble_fraction - g.bubble_fraction).abs() < 1e-9);
        assert_eq!(g.peak_in_flight, vec![m; p]);
        assert_eq!(a.peak_in_flight, vec![4, 3, 2, 1]);
    }

    #[test]
    fn p2p_adds_to_the_critical_path() {
        // One micro-batch: a pure chain of p forwards, p backwards and 2(p - 1) transfers.
        let r = simulate_1f1b(4, 1, &[1.0; 4], &[2.0; 4], 0.25).expect("valid");
        assert!((r.step_time_s - (12.0 + 6.0 * 0.25)).abs() < 1e-9);
        let r0 = simulate_1f1b(4, 8, &[1.0; 4], &[2.0; 4], 0.0).expect("valid");
        let r1 = simulate_1f1b(4, 8, &[1.0; 4], &[2.0; 4], 0.1).expect("valid");
        assert!(r1.step_time_s > r0.step_time_s && r1.bubble_fraction > r0.bubble_fraction);
    }

    #[test]
    fn slow_stage_bounds_step_time() {
        let (p, m) = (4, 16);
        let fwd = [1.0, 1.0, 3.0, 1.0];
        let bwd = [2.0, 2.0, 5.0, 2.0];
        let r = simulate_1f1b(p, m, &fwd, &bwd, 0.0).expect("valid");
        assert!(r.step_time_s >= m as f64 * (3.0 + 5.0) - 1e-9, "{}", r.step_time_s);
        // The slow stage is the bottleneck: the others idle more.
        assert!(r.per_stage_busy_s[2] > r.per_stage_busy_s[0]);
        let uniform = simulate_1f1b(p, m, &[1.0; 4], &[2.0; 4], 0.0).expect("valid");
        assert!(r.bubble_fraction > uniform.bubble_fraction);
    }

    #[test]
    fn rejects_bad_input() {
        let e = simulate_1f1b(0, 4, &[], &[], 0.0).unwrap_err().to_string();
        assert!(e.contains("stages"), "{e}");
        let e = simulate_1f1b(2, 4, &[1.0], &[1.0, 1.0], 0.0).unwrap_err().to_string();
        assert!(e.contains("fwd_s"), "{e}");
        let e = simulate_1f1b(2, 4, &[1.0, 1.0], &[1.0, -1.0], 0.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bwd_s[1]"), "{e}");
        let e = simulate_1f1b(2, 4, &[1.0, 1.0], &[1.0, 1.0], f64::NAN)
            .unwrap_err()
            .to_string();
        assert!(e.contains("p2p_s"), "{e}");
        assert!(simulate_1f1b(2, 0, &[1.0, 1.0], &[1.0, 1.0], 0.0).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Lower bounds that hold for any schedule: every stage's own work, and one micro-batch's full chain.
        /// Work is conserved and the bubble fraction lies in [0, 1).
        #[test]
        fn step_time_lower_bounds(
            p in 1usize..8,
            m in 1usize..24,
            durs in proptest::collection::vec((1u32..50, 1u32..100), 8),
            p2p in 0u32..20,
        ) {
            let fwd: Vec<f64> = durs[..p].iter().map(|d| d.0 as f64 * 1e-3).collect();
            let bwd: Vec<f64> = durs[..p].iter().map(|d| d.1 as f64 * 1e-3).collect();
            let c = p2p as f64 * 1e-3;
            let r = simulate_1f1b(p, m, &fwd, &bwd, c).expect("valid");
            let chain: f64 = fwd.iter().sum::<f64>() + bwd.iter().sum::<f64>() + 2.0 * (p - 1) as f64 * c;
            prop_assert!(r.step_time_s >= chain - 1e-9);
            for s in 0..p {
                let own = m as f64 * (fwd[s] + bwd[s]);
                prop_assert!((r.per_stage_busy_s[s] - own).abs() < 1e-9);
                prop_assert!(r.step_time_s >= own - 1e-9);
                prop_assert!(r.peak_in_flight[s] <= (p - s).min(m));
            }
            prop_assert!(r.bubble_fraction >= -1e-12 && r.bubble_fraction < 1.0);
        }
    }
}
