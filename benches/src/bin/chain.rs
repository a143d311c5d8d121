//! The operator chain without Kafka (`touchpoint_benches::chain`) on one core, for profiling
//! (`perf record`, `valgrind --tool=callgrind`): prints events/s, what the chain produced, and the rate of
//! JSON+Avro decoding alone on the same records (the baseline of the same run).
//!
//!   cargo run --release -p touchpoint-benches --bin chain -- --records 1000000 --subjects 100000

use std::time::Instant;

// The `touchpoint` binary's allocator (mimalloc), as in the pipeline.
touchpoint_benches::pipeline_allocator!();

use clap::Parser;
use touchpoint_benches::chain::{local_config, source_records, CachedSchema, Chain, Parts};
use touchpoint_operators::decode::RecordDecoder;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    #[arg(long, default_value_t = 100_000)]
    subjects: usize,
    /// Records per epoch.
    #[arg(long, default_value_t = 5_000)]
    per_epoch: usize,
    /// Passes over fresh state (the best is reported).
    #[arg(long, default_value_t = 3)]
    passes: usize,
    /// Also run the chain without profiles (recipients from the events), alternating with the chain
    /// with them, and report the ratio: the cost of profiles.
    #[arg(long)]
    compare_profiles: bool,
    /// Also run the chain without segments, alternating with the chain with them, and report the
    /// ratio: the cost of segments.
    #[arg(long)]
    compare_segments: bool,
}

fn main() {
    touchpoint::allocator::keep_freed_memory();
    let args = Args::parse();
    let config = local_config();
    let (records, schema) = source_records(args.records, args.subjects);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let decoder = RecordDecoder::new(CachedSchema(schema.clone()));
    let started = Instant::now();
    let decoded =
        records.iter().filter(|r| decoder.decode_event(r.payload.as_deref().unwrap_or_default()).is_ok()).count();
    let baseline = records.len() as f64 / started.elapsed().as_secs_f64();
    // The whole chain first; each variant leaves one part out. Alternated within every pass, so a
    // drifting clock affects all alike.
    let mut variants = vec![("", Parts { profiles: true, segments: true })];
    if args.compare_profiles {
        variants.push(("profiles", Parts { profiles: false, segments: true }));
    }
    if args.compare_segments {
        variants.push(("segments", Parts { profiles: true, segments: false }));
    }
    let mut best = vec![0f64; variants.len()];
    let mut counts = Default::default();
    for _ in 0..args.passes {
        for (i, (without, parts)) in variants.iter().enumerate() {
            let mut chain = Chain::with(&config, schema.clone(), args.subjects, *parts);
            // The chain takes its records as the source hands them over (owned); the copy is not timed.
            let input = records.clone();
            let started = Instant::now();
            let run = chain.run(input, args.per_epoch, now_ms);
            let rate = records.len() as f64 / started.elapsed().as_secs_f64();
            best[i] = best[i].max(rate);
            if i == 0 {
                counts = run;
            } else {
                println!("without {without}: {run:?}");
            }
        }
    }
    println!("records {} ({decoded} decodable), subjects {}", records.len(), args.subjects);
    println!("baseline: decode only        {baseline:>12.0} records/s");
    println!(
        "chain (best of {})            {:>12.0} records/s   ratio {:.3}",
        args.passes,
        best[0],
        best[0] / baseline
    );
    println!("{counts:?}");
    for (i, (without, _)) in variants.iter().enumerate().skip(1) {
        println!(
            "chain without {without:<9} (best) {:>12.0} records/s   with / without {:.3}",
            best[i],
            best[0] / best[i]
        );
    }
}
