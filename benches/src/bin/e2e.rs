//! End-to-end throughput on the local broker: the same topic drained by a bare rdkafka consumer (the
//! ceiling: same librdkafka, same consumer settings, no processing) and by the Touchpoint pipeline
//! (decode → normalize → dedupe → ClickHouse + dead-letter topic, offsets committed), in one run; the
//! pipeline once per processing guarantee (`at_least_once`, `exactly_once_keys`), alternating, each run
//! from the beginning of the topic with its own group, state and database.
//!
//!   cargo run --release -p touchpoint-benches --bin e2e -- --count 1000000 [--rounds 2]
//!
//! Needs the local stack (deploy/scripts/stack.sh start). Events are produced before any clock starts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use touchpoint::generate::{produce_generated, GeneratorConfig};
use touchpoint::{PipelineConfig, RunOptions};
use touchpoint_connectors::clickhouse::migrate;
use touchpoint_connectors::kafka::ensure_topics;
use touchpoint_connectors::testing::unique_name;
use touchpoint_operators::send_ledger::ProcessingGuarantee;

#[derive(Parser)]
struct Args {
    /// Events to produce (before the clock starts).
    #[arg(long, default_value_t = 1_000_000)]
    count: usize,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Touchpoint worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Runs per processing guarantee (alternating, the best of each is reported).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Pipeline file whose services and client settings are used (topics/group/database are replaced).
    #[arg(long, default_value = "pipelines/config/local.yaml")]
    config: PathBuf,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let args = Args::parse();
    let name = unique_name("bench");
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?
        .replace("name: marketing.events.dlq", &format!("name: {name}.dlq"))
        .replace("name: marketing.events.late", &format!("name: {name}.late"))
        .replace(
            "  dir: ../journeys",
            &format!(
                "  dir: {}",
                args.config.parent().unwrap_or(std::path::Path::new(".")).join("../journeys").display()
            ),
        )
        .replace("name: marketing.consent.dlq", &format!("name: {name}.consent.dlq"))
        .replace("name: marketing.consent", &format!("name: {name}.consent"))
        .replace("prefix: connector.", &format!("prefix: {name}.connector."))
        .replace("name: marketing.events", &format!("name: {name}.events"))
        .replace("partitions: 4", &format!("partitions: {}", args.partitions))
        .replace("group_id: touchpoint.normalization", &format!("group_id: {name}.pipeline"))
        .replace("${TOUCHPOINT_CLICKHOUSE_DATABASE:-touchpoint}", &name)
        .replace("drain_idle: 1500ms", "drain_idle: 300ms");
    let config = PipelineConfig::parse(&text, &args.config)?;
    let topic = config.topics.events.name.clone();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(ensure_topics(&config.kafka, &config.topics.all()))?;
    rt.block_on(migrate(&config.clickhouse))?;

    // Produce with normal batching: nobody resumes mid-batch in this benchmark (both readers start at
    // the beginning of every partition), so the local broker's batch quirk does not apply.
    eprintln!("producing {} events to {topic} ({} partitions)...", args.count, args.partitions);
    let mut producer_config = config.kafka.clone();
    producer_config.producer.insert("batch.num.messages".into(), "10000".into());
    producer_config.producer.insert("linger.ms".into(), "5".into());
    let generator = GeneratorConfig { count: args.count, subjects: 100_000, ..Default::default() };
    let produced_at = Instant::now();
    let (_, produced) = produce_generated(&config, &producer_config, &generator, rt.handle())?;
    drop(produced);
    eprintln!("produced in {:.1?}", produced_at.elapsed());

    // 1. The ceiling: a bare consumer, same client settings, counting messages until it has all.
    let bare = bare_consumer_rate(&config, &topic, args.partitions, args.count)?;

    // 2. Touchpoint, full pipeline, until drained, under each guarantee (alternating, best of rounds).
    let mut best = [0f64; 2];
    for round in 0..args.rounds {
        for (i, guarantee) in
            [ProcessingGuarantee::AtLeastOnce, ProcessingGuarantee::ExactlyOnceKeys].into_iter().enumerate()
        {
            let (rate, elapsed) = touchpoint_rate(
                &config,
                &rt,
                &format!("{name}_{}_{round}", guarantee.as_str()),
                guarantee,
                args.workers,
                args.count,
            )?;
            eprintln!("touchpoint {} round {round}: {rate:.0} events/s ({elapsed:.1?})", guarantee.as_str());
            best[i] = best[i].max(rate);
        }
    }
    let [at_least_once, exactly_once_keys] = best;

    println!("events                              {}", args.count);
    println!("bare rdkafka consumer               {:>10.0} events/s", bare);
    println!("touchpoint at_least_once ({} w)      {:>10.0} events/s", args.workers, at_least_once);
    println!("touchpoint exactly_once_keys ({} w)  {:>10.0} events/s", args.workers, exactly_once_keys);
    println!("ratio touchpoint (eok) / bare       {:>10.3}", exactly_once_keys / bare);
    println!("ratio exactly_once_keys / at_least_once {:>6.3}", exactly_once_keys / at_least_once);
    Ok(())
}

/// One pipeline run over the whole topic with its own group (so it starts at the beginning), state
/// changelogs, connector topics and database. Returns events/s and the processing time.
fn touchpoint_rate(
    base: &PipelineConfig,
    rt: &tokio::runtime::Runtime,
    run: &str,
    guarantee: ProcessingGuarantee,
    workers: usize,
    count: usize,
) -> Result<(f64, Duration)> {
    let mut config = base.clone();
    config.pipeline.group_id = format!("{run}.pipeline");
    config.pipeline.metrics_listen = None;
    config.clickhouse.database = run.replace('.', "_");
    config.topics.connectors.prefix = format!("{run}.connector.");
    config.processing.guarantee = guarantee;
    rt.block_on(ensure_topics(&config.kafka, &config.topics.all()))?;
    rt.block_on(migrate(&config.clickhouse))?;
    // Its Kafka sinks may batch too: nothing resumes from the benchmark's dead-letter or connector topics
    // (the local profile's one-record batches cap the local broker at a few thousand acknowledged records
    // per second; see benches/README.md).
    config.source.drain_idle = Duration::from_millis(300);
    config.kafka.producer.insert("batch.num.messages".into(), "10000".into());
    config.kafka.producer.insert("linger.ms".into(), "5".into());
    let started = Instant::now();
    let report = touchpoint::run(config, RunOptions { workers, until_drained: true, ..Default::default() })?;
    // The run ends drain_idle after the last record; that idle wait is not processing time.
    let elapsed = started.elapsed().saturating_sub(Duration::from_millis(300));
    if report.totals.tally.received != count as u64 {
        bail!("pipeline read {} of {count} events", report.totals.tally.received);
    }
    Ok((count as f64 / elapsed.as_secs_f64(), elapsed))
}

fn bare_consumer_rate(config: &PipelineConfig, topic: &str, partitions: i32, count: usize) -> Result<f64> {
    let consumer: BaseConsumer = config.kafka.consumer_config(&unique_name("bench-bare")).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut seen = 0usize;
    let mut bytes = 0usize;
    while seen < count {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                seen += 1;
                bytes += m.payload_len();
            }
            Some(Err(e)) => bail!("bare consumer: {e}"),
            None => bail!("bare consumer stalled at {seen} of {count}"),
        }
    }
    let elapsed = started.elapsed();
    eprintln!("bare consumer: {seen} events, {bytes} bytes in {elapsed:.1?}");
    Ok(seen as f64 / elapsed.as_secs_f64())
}
