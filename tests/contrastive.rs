//! The `contrastive_pretrain` kind through the binary: CLIP's published budget, and bad input exits 2 naming the field.
mod common;
use common::*;

fn metric(stdout: &[u8], name: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_slice(stdout).unwrap();
    v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["value"].as_f64())
        .unwrap_or_else(|| panic!("{name} in {v}"))
}

#[test]
fn clip_vit_l14_budget_is_within_a_quarter_of_the_published_days() {
    let o = run(bin().args(["run", "clip-vit-l14", "--backend", "analytical", "--json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let days = metric(&o.stdout, "days");
    // Published: 12 days on 256 V100s (with the scenario's assumed utilisation of 0.2; see its comment).
    println!(
        "CLIP ViT-L/14: {days:.2} days (published 12), error {:+.1}%",
        100.0 * (days - 12.0) / 12.0
    );
    assert!((days - 12.0).abs() / 12.0 < 0.25, "{days}");
    // B x B fp32 logits at B = 32,768: 4.29 GB.
    assert_eq!(metric(&o.stdout, "memory.logits"), 32_768.0 * 32_768.0 * 4.0);
}

#[test]
fn bad_contrastive_input_exits_2_with_the_field() {
    let base =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/victor-h100.toml"))
            .unwrap();
    for (from, to, field) in [
        (
            "frames_per_clip = 12",
            "frames_per_clip = 0",
            "workload.frames_per_clip",
        ),
        ("size = 131072", "size = 1024", "workload.negatives.queue.size"),
        ("momentum = 0.999", "momentum = 1.0", "workload.momentum"),
        ("cores_per_gpu = 16", "cores_per_gpu = 0", "workload.cores_per_gpu"),
    ] {
        assert!(base.contains(from), "{from}");
        let p = scenario_file("contrastive-bad", &base.replace(from, to));
        let o = run(bin().args(["run", "--backend", "analytical"]).arg(&p));
        assert_eq!(o.status.code(), Some(2), "{field}: {}", stderr(&o));
        assert!(stderr(&o).contains(field), "{field}: {}", stderr(&o));
    }
}
