//! DDK (issue 12): the shipped gap-law calibration predicts the held-out DDK runs it was not fitted on, the backends
//! that read it answer `ddk-tiny`, the schedule search is fast, and the at-scale cost follows its formulas.
mod common;
use common::{bin, tmpdir};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use trainlab_core::workloads::distill::{Distillation, Schedule};
use trainlab_core::{HeldOut, Profile, Seed, Workload};
use trainlab_models::gaplaw::DistillProfile;
use trainlab_sim::distill::{candidates, monte_carlo, rank_check, search};

fn shipped() -> (Profile<DistillProfile>, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/calibration/ddk-cpu");
    let text = std::fs::read_to_string(dir.join("profile-distillation-cpu.toml")).expect("the shipped profile");
    (
        toml::from_str(&text).expect("a distillation profile"),
        dir.display().to_string(),
    )
}

fn ddk_tiny() -> Distillation {
    trainlab_datasets::scenario::load("ddk-tiny")
        .unwrap()
        .workload()
        .unwrap()
}

fn schedule_of(case: &str) -> Option<Schedule> {
    // "ddk k=25 alpha=0.5 [held-out, ...]"
    let rest = case.strip_prefix("ddk k=")?;
    let (k, rest) = rest.split_once(" alpha=")?;
    let alpha = rest.split_whitespace().next()?;
    Some(Schedule::Ddk {
        k: k.parse().ok()?,
        alpha: alpha.parse().ok()?,
    })
}

#[test]
fn the_shipped_law_predicts_the_held_out_ddk_runs() {
    // Recomputed with today's code from the measured values in the shipped profile: the simulated control loop on
    // the law fitted to uniform, static and phased runs only (none a DDK run). The bar: R^2 >= 0.9 over every
    // held-out DDK run, the unsmoothed ones (alpha = 1, whose weights collapse onto `code` and starve the others)
    // included: 0.950 in the shipped calibration (0.964 without alpha = 1; the law before the per-domain exponents and
    // the displacers' harm: 0.497 / 0.954).
    let (p, _) = shipped();
    let w0 = ddk_tiny();
    p.params.check_for(&w0).expect("the profile answers ddk-tiny");
    let names: Vec<String> = w0.domains.iter().map(|d| d.name.clone()).collect();
    let cancel = AtomicBool::new(false);
    let (mut pred, mut obs) = (Vec::new(), Vec::new());
    let (mut pred_s, mut obs_s) = (Vec::new(), Vec::new());
    let mut seen = std::collections::BTreeSet::new();
    let mut unsmoothed = 0;
    for h in &p.held_out {
        let Some(s) = schedule_of(&h.case) else { continue };
        let Schedule::Ddk { alpha, .. } = s else { continue };
        seen.insert(h.case.clone());
        if alpha >= 1.0 {
            unsmoothed += 1;
        }
        let mut w = w0.clone();
        w.schedule = s;
        let mc = monte_carlo(&w, &p.params, 100, Seed(42).derive("distill.mc"), &cancel).unwrap();
        let i = names
            .iter()
            .position(|n| h.metric == format!("student_ce.{n}"))
            .unwrap_or_else(|| panic!("{}", h.metric));
        pred.push(mc.student_ce[i]);
        obs.push(h.measured);
        if alpha < 1.0 {
            pred_s.push(mc.student_ce[i]);
            obs_s.push(h.measured);
        }
        // The profile's own prediction is today's prediction (same law, same seeds).
        assert!(
            (mc.student_ce[i] - h.calibrated).abs() < 1e-9,
            "{h:?} vs {}",
            mc.student_ce[i]
        );
    }
    assert!(seen.len() >= 5, "held-out DDK schedules in the profile: {seen:?}");
    assert!(unsmoothed >= 6, "the alpha = 1 runs are among the held-out values");
    let r2 = trainlab_models::fit::GoodnessOfFit::from_predictions(&pred, &obs, 1e-3).r2;
    let r2_s = trainlab_models::fit::GoodnessOfFit::from_predictions(&pred_s, &obs_s, 1e-3).r2;
    eprintln!(
        "held-out DDK runs: R^2 {r2:.3} over {} values (alpha = 1 included), {r2_s:.3} over {} (alpha < 1)",
        obs.len(),
        obs_s.len()
    );
    assert!(r2 >= 0.9, "R^2 {r2}");
    assert!(r2_s >= 0.9, "R^2 (alpha < 1) {r2_s}");
    // Every held-out per-domain loss within 5% (3.3% at worst in the shipped calibration).
    let errs: Vec<f64> = p
        .held_out
        .iter()
        .filter(|h| h.metric.starts_with("student_ce."))
        .map(HeldOut::calibrated_error)
        .collect();
    assert!(errs.len() >= 30 && errs.iter().all(|e| e.abs() < 0.05), "{errs:?}");
}

/// `(case, backend, metric, value)` of every row of the shipped calibration CSV.
fn shipped_rows() -> Vec<(String, String, String, f64)> {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/calibration/ddk-cpu/calibration-distillation-cpu.csv");
    let text = std::fs::read_to_string(f).expect("the shipped records");
    text.lines()
        .skip(1)
        .map(|line| {
            // study,workload,case,backend,fidelity,metric,unit,value,...; the case is quoted when it holds a comma.
            let (case, rest) = match line.split_once('"') {
                Some((_, r)) => {
                    let (case, rest) = r.split_once('"').expect("a closing quote");
                    (case.to_string(), rest.trim_start_matches(',').to_string())
                }
                None => {
                    let mut it = line.splitn(4, ',');
                    let (_, _, case) = (it.next(), it.next(), it.next().unwrap_or_default());
                    (case.to_string(), it.next().unwrap_or_default().to_string())
                }
            };
            let f: Vec<&str> = rest.split(',').collect();
            (case, f[0].to_string(), f[2].to_string(), f[4].parse().expect("a value"))
        })
        .collect()
}

#[test]
fn the_shipped_law_orders_the_resolvable_pairs_of_held_out_schedules() {
    // The ranking check, recomputed from the shipped records: for every measured schedule (fitted, held out, and the
    // searched best), the measured mean gap of each student seed and the simulated loop's predicted mean gap. A pair
    // whose measured means differ by more than 2 standard errors of the difference (over seeds) should be ordered the
    // same way by the prediction; pairs within their seed spread are not ranked (nothing could rank them). Over the
    // held-out DDK schedules every resolvable pair is ordered (asserted: 10 of 10 in the shipped calibration); over all
    // 19 schedules it is not (126 of 138: the law misorders some static mixtures and starving runs, see the README).
    // And the search's pick, run for real, is at least as good as the paper's default (lower mean gap over the seeds:
    // 0.0437 vs 0.0536 in the shipped calibration, sd 0.0026 and 0.0043 over 5 seeds).
    let (p, _) = shipped();
    let rows = shipped_rows();
    let schedule_name = |case: &str| case.rsplit_once(" [").map(|(s, _)| s.to_string()).unwrap_or_default();
    let mut per_seed: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut predicted: std::collections::BTreeMap<String, f64> = Default::default();
    for (case, backend, metric, v) in &rows {
        if metric != "gap.mean" {
            continue;
        }
        if case.contains("[seed ") && backend == "cpu" {
            per_seed.entry(schedule_name(case)).or_default().push(*v);
        } else if backend == "ddk_sim" {
            predicted.insert(schedule_name(case), *v);
        }
    }
    let best = p
        .held_out
        .iter()
        .find(|h| h.case.starts_with("searched best: "))
        .expect("the searched best");
    predicted
        .entry(best.case.trim_start_matches("searched best: ").to_string())
        .or_insert(best.calibrated);
    let names: Vec<&String> = per_seed.keys().collect();
    assert!(names.len() >= 12, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| predicted.contains_key(*n) && per_seed[*n].len() >= 5),
        "{names:?} {predicted:?}"
    );
    let pred: Vec<f64> = names.iter().map(|n| predicted[*n]).collect();
    let meas: Vec<Vec<f64>> = names.iter().map(|n| per_seed[*n].clone()).collect();
    let c = rank_check(&pred, &meas, 2.0);
    eprintln!(
        "ranking, all schedules: {}/{} resolvable pairs ordered ({} pairs)",
        c.ordered, c.resolvable, c.pairs
    );
    let held: Vec<usize> = (0..names.len()).filter(|&j| names[j].starts_with("ddk ")).collect();
    let h = rank_check(
        &held.iter().map(|&j| pred[j]).collect::<Vec<_>>(),
        &held.iter().map(|&j| meas[j].clone()).collect::<Vec<_>>(),
        2.0,
    );
    eprintln!(
        "ranking, held-out DDK schedules: {}/{} resolvable pairs ordered ({} pairs)",
        h.ordered, h.resolvable, h.pairs
    );
    // The check has something to check: the unsmoothed DDK run stands apart from the others.
    assert!(h.resolvable >= 4, "{h:?}");
    assert_eq!(h.ordered, h.resolvable, "{h:?}");
    assert!(c.resolvable >= 10 && c.ordered >= c.resolvable / 2, "{c:?}");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let picked = &per_seed[best.case.trim_start_matches("searched best: ")];
    let default = &per_seed["ddk k=25 alpha=0.5"];
    eprintln!(
        "searched best {:.4} vs the paper's default {:.4}",
        mean(picked),
        mean(default)
    );
    assert!(mean(picked) <= mean(default), "{picked:?} vs {default:?}");
}

#[test]
fn the_schedule_search_ranks_200_schedules_in_seconds() {
    // 1 uniform + 164 static + 7 k x 5 alpha = 200 schedules, 100 replications each (the calibration's search). The
    // speed itself is measured in the calibration notes and the README, not asserted here.
    let (p, _) = shipped();
    let w = ddk_tiny();
    let c = candidates(
        6,
        &[5, 10, 25, 50, 100, 200, 400],
        &[0.0, 0.25, 0.5, 0.75, 1.0],
        164,
        Seed(1),
    );
    assert_eq!(c.len(), 200);
    let r = search(&w, &p.params, &c, 100, Seed(2), &AtomicBool::new(false)).unwrap();
    // The law's own verdicts: without smoothing (alpha = 1) the weights can collapse onto one domain and the worst
    // such run is worse than any smoothed one (alpha = 0.5; at small k the two are close; at k = 25 the law puts the
    // harm 10% above the measured one, see the README), and uniform sampling is not the best.
    let gap = |pick: &dyn Fn(f64) -> bool| -> Vec<f64> {
        r.iter()
            .filter(|x| matches!(x.schedule, Schedule::Ddk { alpha, .. } if pick(alpha)))
            .map(|x| x.summary.mean_gap.0)
            .collect()
    };
    let (half, one) = (gap(&|a| a == 0.5), gap(&|a| a == 1.0));
    let worst = |v: &[f64]| v.iter().cloned().fold(f64::MIN, f64::max);
    assert!(worst(&one) > worst(&half), "{half:?} vs {one:?}");
    assert_ne!(r[0].schedule, Schedule::Uniform);
}

#[test]
fn compare_answers_ddk_tiny_from_the_shipped_profile() {
    let (_, dir) = shipped();
    let o = bin()
        .args(["compare", "ddk-tiny", "--profile", &dir, "--quick", "--json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let text = v.to_string();
    for b in ["gap_law", "ddk_sim", "cpu", "cost_model"] {
        assert!(text.contains(&format!("\"{b}\"")), "{b} missing: {text:.400}");
    }
    // The at-scale cost by its formulas: (6 N_S + 2 N_T) D FLOPs on 16 A100s (312 TFLOP/s bf16) at 40% MFU.
    let flops = (6.0 * 1.8e9 + 2.0 * 14e9) * 15e9;
    let days = flops / (16.0 * 312e12 * 0.4) / 86_400.0;
    let w = ddk_tiny();
    let cost = w.at_scale.as_ref().unwrap().cost();
    assert!((cost.flops - flops).abs() / flops < 1e-12 && (cost.days - days).abs() / days < 1e-9);
    assert!((cost.teacher_share - 28.0 / 38.8).abs() < 1e-12);
    assert!(text.contains("at_scale.days"), "{text:.400}");
}

#[test]
fn a_profile_of_another_setup_is_refused_and_bad_schedules_exit_2() {
    let (p, _) = shipped();
    let mut w = ddk_tiny();
    w.student_hidden = 16;
    assert!(p.params.check_for(&w).is_err());
    let dir = tmpdir("distill-bad");
    let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/ddk-tiny.toml")).unwrap();
    for (from, to, field) in [
        (
            "{ ddk = { k = 25, alpha = 0.5 } }",
            "{ ddk = { k = 0, alpha = 0.5 } }",
            "schedule.ddk.k",
        ),
        (
            "{ ddk = { k = 25, alpha = 0.5 } }",
            "{ ddk = { k = 25, alpha = 1.5 } }",
            "schedule.ddk.alpha",
        ),
        (
            "{ ddk = { k = 25, alpha = 0.5 } }",
            "{ static = [0.5, 0.5, 0.1, 0.1, 0.1, 0.1] }",
            "schedule.static",
        ),
        (
            "{ ddk = { k = 25, alpha = 0.5 } }",
            "{ phased = [] }",
            "schedule.phased",
        ),
        (
            "{ ddk = { k = 25, alpha = 0.5 } }",
            "{ phased = [{ steps = 0, weights = [0.5, 0.5, 0, 0, 0, 0] }, { steps = 1, weights = [0, 0, 0, 0, 0, 1] }] }",
            "schedule.phased[0].steps",
        ),
        (
            "{ ddk = { k = 25, alpha = 0.5 } }",
            "{ phased = [{ steps = 9, weights = [0.5, 0.5, 0, 0, 0, 0] }, { steps = 1, weights = [0, 0, 0, 0, 0.5, 1] }] }",
            "schedule.phased[1].weights",
        ),
        (
            "tokens = 3000, zipf = 1.0",
            "tokens = 0, zipf = 1.0",
            "domains[3].tokens",
        ),
        ("mfu = 0.4", "mfu = 1.5", "at_scale.mfu"),
    ] {
        assert!(base.contains(from), "{from}");
        let f = dir.join("bad.toml");
        std::fs::write(&f, base.replacen(from, to, 1)).unwrap();
        let o = bin()
            .args(["run", f.to_str().unwrap(), "--backend", "cost_model"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{to}: {err}");
        assert!(err.contains(field), "{to}: {err}");
    }
    // A valid phased schedule parses and runs; the cost model reports the last phase's weights.
    let f = dir.join("phased.toml");
    let good =
        "{ phased = [{ steps = 500, weights = [0.5, 0.5, 0, 0, 0, 0] }, { steps = 1, weights = [0, 0, 0, 0, 0, 1] }] }";
    std::fs::write(&f, base.replacen("{ ddk = { k = 25, alpha = 0.5 } }", good, 1)).unwrap();
    let o = bin()
        .args(["run", f.to_str().unwrap(), "--backend", "cost_model", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let weight = |d: &str| {
        v["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == format!("weight.{d}"))
            .and_then(|m| m["value"].as_f64())
    };
    assert_eq!((weight("chat"), weight("code")), (Some(1.0), Some(0.0)));
    let _ = Distillation::KIND;
}

#[test]
fn a_teacher_smaller_than_the_student_runs_with_a_warning() {
    let dir = tmpdir("distill-small-teacher");
    let base = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/ddk-tiny.toml")).unwrap();
    let (t, s) = (ddk_tiny().teacher_hidden, ddk_tiny().student_hidden);
    assert!(t > s);
    let from = format!("teacher_hidden = {t}");
    assert!(base.contains(&from), "{from}");
    for (text, warned) in [
        (base.clone(), false),
        (base.replacen(&from, &format!("teacher_hidden = {}", s / 2), 1), true),
    ] {
        let f = dir.join("small-teacher.toml");
        std::fs::write(&f, text).unwrap();
        let o = bin()
            .args(["run", f.to_str().unwrap(), "--backend", "cost_model", "--json"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("the JSON answer, unmixed with the warning");
        assert_eq!(
            err.contains("warning:") && err.contains("workload.teacher_hidden"),
            warned,
            "{err}"
        );
    }
}

#[test]
fn the_shipped_law_on_schedules_the_calibration_never_ran() {
    // `datasets/calibration/ddk-fresh`: four schedules chosen after the law was committed and never run by its
    // calibration, 3 new student seeds each (measured), against today's simulated loop on the shipped law. The
    // smoothed and static ones are predicted (R^2 0.930 over 18 per-domain losses, worst 1.0%); the unsmoothed one
    // at k = 10 is not: its runs keep `web` (2.77-2.80 nats in every seed) where the law starves it (2.96), R^2 0.745
    // with it. Asserted: >= 0.9 without it, and that the miss is still there (so that fixing it shows up here).
    let (p, _) = shipped();
    let w0 = ddk_tiny();
    let names: Vec<String> = w0.domains.iter().map(|d| d.name.clone()).collect();
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/calibration/ddk-fresh/records.csv");
    let text = std::fs::read_to_string(f).expect("the fresh records");
    let mut measured: std::collections::BTreeMap<(String, usize), Vec<f64>> = Default::default();
    for [backend, metric, value, sched] in
        common::record_columns(&text, ["backend", "metric", "value", "param.schedule"])
    {
        let Some(i) = names.iter().position(|n| metric == format!("student_ce.{n}")) else {
            continue;
        };
        if backend == "cpu" {
            measured.entry((sched, i)).or_default().push(value.parse().unwrap());
        }
    }
    let schedules = [
        ("[ddk], alpha = 1.0, k = 10", Schedule::Ddk { k: 10, alpha: 1.0 }),
        ("[ddk], alpha = 0.25, k = 50", Schedule::Ddk { k: 50, alpha: 0.25 }),
        ("[ddk], alpha = 0.75, k = 100", Schedule::Ddk { k: 100, alpha: 0.75 }),
        (
            "static = [0.5, 0.1, 0.1, 0.1, 0.1, 0.1]",
            Schedule::Static(vec![0.5, 0.1, 0.1, 0.1, 0.1, 0.1]),
        ),
    ];
    let cancel = AtomicBool::new(false);
    let (mut pred, mut obs, mut pred_s, mut obs_s) = (vec![], vec![], vec![], vec![]);
    for (label, s) in schedules {
        let mut w = w0.clone();
        w.schedule = s.clone();
        let mc = monte_carlo(&w, &p.params, 100, Seed(42).derive("distill.mc"), &cancel).unwrap();
        for (i, ce) in mc.student_ce.iter().enumerate() {
            let m = &measured[&(label.to_string(), i)];
            assert_eq!(m.len(), 3, "{label} {i}");
            let mean = m.iter().sum::<f64>() / 3.0;
            pred.push(*ce);
            obs.push(mean);
            if !matches!(s, Schedule::Ddk { alpha, .. } if alpha >= 1.0) {
                pred_s.push(*ce);
                obs_s.push(mean);
            }
        }
    }
    let r2 = trainlab_models::fit::GoodnessOfFit::from_predictions(&pred, &obs, 1e-3).r2;
    let r2_s = trainlab_models::fit::GoodnessOfFit::from_predictions(&pred_s, &obs_s, 1e-3).r2;
    eprintln!(
        "fresh schedules: R^2 {r2:.3} over {} values, {r2_s:.3} over {} (alpha < 1)",
        obs.len(),
        obs_s.len()
    );
    assert!(r2_s >= 0.9, "R^2 (alpha < 1) {r2_s}");
    assert!(
        r2 < 0.9,
        "R^2 {r2}: the unsmoothed fresh schedule is now predicted, update the README and this test"
    );
}
