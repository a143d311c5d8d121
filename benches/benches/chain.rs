//! The whole operator chain without Kafka (`touchpoint_benches::chain`), per core.
//!
//!   cargo bench -p touchpoint-benches --bench chain
//!
//! Baseline in the same run: decoding alone (JSON and Avro) of the same records, so the chain's figure
//! can be read as a ratio.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use touchpoint_benches::chain::{local_config, source_records, CachedSchema, Chain};
use touchpoint_operators::decode::RecordDecoder;

// The `touchpoint` binary's allocator (mimalloc), as in the pipeline.
touchpoint_benches::pipeline_allocator!();

/// The generator's mix over 100,000 subjects: 100,000 records, epochs of 5,000 (a 200 ms epoch at
/// 25k events/s per worker).
const RECORDS: usize = 100_000;
const SUBJECTS: usize = 100_000;
const PER_EPOCH: usize = 5_000;

fn chain(c: &mut Criterion) {
    let config = local_config();
    let (records, schema) = source_records(RECORDS, SUBJECTS);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut group = c.benchmark_group("chain");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.sample_size(10);
    let decoder = RecordDecoder::new(CachedSchema(schema.clone()));
    group.bench_function("baseline: decode only", |b| {
        b.iter(|| {
            records.iter().filter(|r| decoder.decode_event(r.payload.as_deref().unwrap_or_default()).is_ok()).count()
        })
    });
    group.bench_function("decode → normalize → dedupe → guardrails+journeys → sink records", |b| {
        b.iter_batched(
            // The chain takes its records as the source hands them over (owned): copied in the untimed setup.
            || (Chain::new(&config, schema.clone(), SUBJECTS), records.clone()),
            |(mut chain, input)| {
                let counts = chain.run(input, PER_EPOCH, now_ms);
                assert!(counts.sends > 0 && counts.transitions > 0, "the chain did the work: {counts:?}");
                // Returned, so criterion drops the state outside the timed part.
                (chain, counts)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, chain);
criterion_main!(benches);
