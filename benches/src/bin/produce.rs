//! The sinks' producing path alone: `AckedProducer::send_all` rounds of acknowledged records to the local
//! broker, as an epoch sink sends them (one round at a time), with the CPU it costs this process and
//! the broker per record.
//!
//!   cargo run --release -p touchpoint-benches --bin produce -- --records 500000 --batch 5000
//!
//! Needs the local stack (deploy/scripts/stack.sh start). Results: benches/README.md, "Profiling" 19.

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use touchpoint_benches::cpu::Processes;
use touchpoint_connectors::kafka::{
    delete_topics_with_prefix, ensure_topics, AckedProducer, KafkaConfig, OutgoingRecord, TopicSpec,
};
use touchpoint_connectors::testing::{unique_name, ServiceAddresses};

touchpoint_benches::pipeline_allocator!();

#[derive(Parser)]
struct Args {
    /// Records in all.
    #[arg(long, default_value_t = 500_000)]
    records: usize,
    /// Records per `send_all` round (a sink's batch).
    #[arg(long, default_value_t = 5_000)]
    batch: usize,
    /// Payload bytes per record (a connector message is ~600, a changelog record 200–1,500).
    #[arg(long, default_value_t = 400)]
    size: usize,
    /// Rounds in flight at once (the sends' sink keeps 4, every other sink 1).
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
}

fn main() -> Result<()> {
    touchpoint::allocator::keep_freed_memory();
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let mut kafka = KafkaConfig::new(ServiceAddresses::from_env().kafka_brokers);
    // The pipeline's batching settings for its sinks (as the e2e harness runs it).
    kafka.producer.insert("batch.num.messages".into(), "10000".into());
    kafka.producer.insert("linger.ms".into(), "5".into());
    let topic = unique_name("bench_produce");
    let rt = touchpoint_connectors::io_runtime("bench-io")?;
    rt.block_on(ensure_topics(&kafka, &[TopicSpec::new(&topic, 8)]))?;
    let records: Vec<Vec<OutgoingRecord>> = (0..args.records)
        .map(|i| OutgoingRecord {
            topic: topic.clone(),
            partition: None,
            key: Some(format!("default/user-{}", i % 100_000).into_bytes()),
            payload: Some(vec![b'x'; args.size]),
            headers: vec![("tp.idempotency_key".into(), format!("tpk-{i:032x}").into_bytes())],
        })
        .collect::<Vec<_>>()
        .chunks(args.batch.max(1))
        .map(<[OutgoingRecord]>::to_vec)
        .collect();
    let producer = AckedProducer::new(&kafka)?;
    let cpu = Processes::of_local_stack().start();
    let started = Instant::now();
    rt.block_on(async {
        use futures::StreamExt;
        let mut rounds =
            futures::stream::iter(records.iter()).map(|r| producer.send_all(r)).buffered(args.in_flight.max(1));
        while let Some(acked) = rounds.next().await {
            acked?;
        }
        anyhow::Ok(())
    })?;
    let elapsed = started.elapsed();
    let used = cpu.stop();
    println!(
        "{} records in rounds of {} ({} B, {} in flight): {:.0} records/s; {}",
        args.records,
        args.batch,
        args.size,
        args.in_flight,
        args.records as f64 / elapsed.as_secs_f64(),
        used.per(args.records, "record")
    );
    rt.block_on(delete_topics_with_prefix(&kafka, &topic))?;
    Ok(())
}
