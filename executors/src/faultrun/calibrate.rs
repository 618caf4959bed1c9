//! Calibration of the fault-run timing model from measured runs, and its prediction for a held-out fault schedule.
//!
//! Fitted from a measured [`FaultRunReport`]: the healthy step period, the checkpoint write cost, the mean detection
//! latency per injection kind and the mean restart time (verdict to the first completed step). The prediction
//! replays a schedule through the same timeline the simulator uses (detect, restart, lost work since the checkpoint,
//! checkpointing): `wall = steps x period + sum_faults(detect + restart + lost x period) + checkpoints x cost`,
//! `ETTR = steps x period / wall`.
use super::{FaultRunConfig, FaultRunReport, Injection};

/// Timing parameters fitted from measured runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Healthy step period, seconds.
    pub step_period_s: f64,
    /// Seconds per checkpoint write.
    pub checkpoint_cost_s: f64,
    /// Mean detection latency of kills, hangs and slow ranks, seconds.
    pub detect_s: [f64; 3],
    /// Mean restart time, seconds.
    pub restart_s: f64,
}

fn kind_index(i: Injection) -> usize {
    match i {
        Injection::Kill => 0,
        Injection::Hang => 1,
        Injection::Slow(_) => 2,
    }
}

/// Fits a calibration from one or more measured runs (means over all their faults).
pub fn fit(reports: &[(&FaultRunConfig, &FaultRunReport)]) -> Calibration {
    let mut det = [(0.0, 0u32); 3];
    let (mut restart, mut nr) = (0.0, 0u32);
    let (mut period, mut ckpt, mut nck) = (0.0, 0.0, 0.0);
    for (cfg, r) in reports {
        period += r.step_period_s / reports.len() as f64;
        ckpt += r.checkpoint_s;
        nck += (r.steps_done / cfg.checkpoint_every.max(1)) as f64;
        for x in &r.records {
            if let (Some(f), Some(l)) = (x.injected, x.detection_latency_s) {
                let k = kind_index(f.what);
                det[k].0 += l;
                det[k].1 += 1;
            }
            if x.restart_s > 0.0 {
                restart += x.restart_s;
                nr += 1;
            }
        }
    }
    let all: f64 = det.iter().map(|d| d.0).sum::<f64>() / det.iter().map(|d| d.1).sum::<u32>().max(1) as f64;
    Calibration {
        step_period_s: period,
        checkpoint_cost_s: ckpt / nck.max(1.0),
        detect_s: det.map(|(s, n)| if n > 0 { s / n as f64 } else { all }),
        restart_s: restart / nr.max(1) as f64,
    }
}

/// Predicted ETTR of running `cfg` (its steps and fault schedule) with the calibrated fault timings. The step period
/// is an input of the workload, not a fault parameter: pass the held-out run's healthy period (`Some`) or use the
/// calibration run's (`None`).
pub fn predict_ettr(cal: &Calibration, cfg: &FaultRunConfig, step_period_s: Option<f64>) -> f64 {
    let mut c = *cal;
    if let Some(p) = step_period_s {
        c.step_period_s = p;
    }
    let every = cfg.checkpoint_every.max(1);
    let useful = cfg.steps as f64 * c.step_period_s;
    let mut wall = useful + (cfg.steps / every) as f64 * c.checkpoint_cost_s;
    for f in &cfg.faults {
        let k = kind_index(f.what);
        let detect = c.detect_s[k];
        // Steps completed since the last checkpoint are redone; a slow rank keeps the job stepping (slowly) while
        // it is being detected, and those steps are redone too.
        let mut lost = (f.at_step % every) as f64;
        if let Injection::Slow(x) = f.what {
            lost += detect / (c.step_period_s * x.max(1.0));
        }
        wall += detect + c.restart_s + lost * c.step_period_s;
    }
    useful / wall
}
