//! A study must scale linearly in its cases: the whole in-process pipeline of `trainlab plan` (expand the grid, answer
//! every case through the kind table, flatten, sort, build the summary table, write Parquet/CSV) for 1,000 and
//! 10,000 cases of a `collective` study (closed form, so the engine's own cost dominates). Criterion reports
//! cases/s for both sizes: equal rates mean linear time. `cargo bench --bench study`.
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use trainlab::kinds::Opts;
use trainlab::study;

fn study_text(cases: usize) -> String {
    // bytes x ranks: 100 or 1,000 byte sizes x 10 group sizes.
    let sizes: Vec<String> = (0..cases / 10).map(|i| format!("{}", 1024 * (i + 1))).collect();
    format!(
        "name = \"bench\"\nkind = \"study\"\nseed = 1\n[study]\nbase = \"allreduce-h100\"\n[study.grid]\n\
         bytes = [{}]\nranks = [2, 4, 8, 16, 24, 32, 40, 48, 56, 64]\n",
        sizes.join(", ")
    )
}

fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("study");
    g.sample_size(10);
    let out = std::env::temp_dir().join(format!("trainlab-bench-study-{}", std::process::id()));
    for cases in [1_000usize, 10_000] {
        let sc = trainlab_datasets::scenario::parse(&study_text(cases), "bench.toml").expect("study parses");
        g.throughput(Throughput::Elements(cases as u64));
        g.bench_with_input(BenchmarkId::from_parameter(cases), &cases, |b, _| {
            b.iter(|| {
                let opts = Opts::default();
                let s = study::load(&sc, &opts).expect("study loads");
                assert_eq!(s.cases.len(), cases);
                let cancel = Arc::new(AtomicBool::new(false));
                let res = study::run_cases(&s, &s.cases, &opts, &cancel, &|_| {});
                let m = &s.manifest;
                let mut recs: Vec<_> = res.iter().flat_map(|r| r.records(&m.study, &m.kind, m.seed)).collect();
                study::canonical_sort(&mut recs);
                let (_, rows) = study::summary_table(m, &recs);
                assert_eq!(rows.len(), cases);
                trainlab_reports::write_records(&recs, &out, "records").expect("write");
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&out);
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
