//! End to end on the local broker, one run, the same data for every reader:
//!
//! 1. **ceiling** — a bare rdkafka consumer (same librdkafka, same consumer settings, no processing)
//!    drains the topic;
//! 2. **Touchpoint** — the full pipeline (normalize → consent → journeys → caps → sends → ClickHouse)
//!    drains it, once per worker count (default 1 and 2), each run from the beginning with its own
//!    group, state, connector topics and database;
//! 3. **writes alone** — what the pipeline's sinks write for these events (ClickHouse rows, sends,
//!    changelogs, dead letters), computed before the clock, written with the sinks' own writers and
//!    nothing else: the ceiling the output side sets on this machine (`touchpoint_benches::writes`);
//! 4. **peer** — the same logic in Quix Streams (`benches/peers/`) drains it;
//! 5. **latency** — a live stream at a fixed offered load (half of Touchpoint's best rate above) through
//!    a fresh pipeline: event-to-send latency from each event's produce time to its send record's
//!    timestamp on `connector.<channel>`.
//!
//!   cargo run --release -p touchpoint-benches --bin e2e -- --count 1000000
//!
//! Needs the local stack (deploy/scripts/stack.sh start); the peer's Python environment is installed by
//! benches/peers/install.sh (run by the harness, skipped when present). Events are produced before any
//! clock starts. Results and how to read them: benches/README.md.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use touchpoint::{PipelineConfig, RunOptions};
use touchpoint_benches::cpu::{CpuUse, Processes};
use touchpoint_benches::scratch::{bench_config, Scratch};
use touchpoint_benches::writes::{write_all, SinkBatches};
use touchpoint_connectors::clickhouse::migrate;
use touchpoint_connectors::kafka::{ensure_topics, read_all, AckedProducer, KafkaConfig};
use touchpoint_connectors::testing::unique_name;
use touchpoint_generate::{
    consent_grants, generate_registered, produce_generated, subject_profiles, Expected, GeneratorConfig, Target,
};
use touchpoint_operators::send_ledger::ProcessingGuarantee;

// The `touchpoint` binary's allocator (mimalloc), as in the pipeline.
touchpoint_benches::pipeline_allocator!();

#[derive(Parser)]
struct Args {
    /// Events to produce (before the clock starts); 5000000 for the long run.
    #[arg(long, default_value_t = 1_000_000)]
    count: usize,
    /// Distinct subjects in the events.
    #[arg(long, default_value_t = 100_000)]
    subjects: usize,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Touchpoint worker counts to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Runs per worker count (alternating; the best of each is reported).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Also run the pipeline under `at_least_once` and `exactly_once_v2` (the shipped guarantee is
    /// `exactly_once_keys`), 2 workers.
    #[arg(long)]
    compare_guarantees: bool,
    /// Skip the Quix Streams peer.
    #[arg(long)]
    no_peer: bool,
    /// The peer's processing guarantees, one run each (`at-least-once`, `exactly-once`: Kafka
    /// transactions, like Touchpoint's `exactly_once_v2`).
    #[arg(long, value_delimiter = ',', default_value = "at-least-once,exactly-once")]
    peer_guarantees: Vec<String>,
    /// Source records per batch of the "writes alone" runs, one run each (the sinks write one batch per
    /// epoch, merging epochs that queue behind a slow write); an empty list skips them.
    #[arg(long, value_delimiter = ',', default_value = "20000,100000")]
    write_batches: Vec<usize>,
    /// Seconds of live stream for the latency run (0: skip it). The first 5 s are warm-up.
    #[arg(long, default_value_t = 25)]
    latency_seconds: u64,
    /// Offered load of the latency run in events/s (default: half of Touchpoint's best rate).
    #[arg(long)]
    latency_rate: Option<f64>,
    /// `epochs.max_in_flight` of the throughput and latency runs (default: the pipeline file's).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// `epochs.interval` of the throughput runs in ms (default: the pipeline file's, 200).
    #[arg(long)]
    epoch_ms: Option<u64>,
    /// Epoch intervals of the latency runs in ms, one run each (default: the pipeline file's).
    #[arg(long, value_delimiter = ',')]
    latency_epoch_ms: Vec<u64>,
    /// Pipeline file whose services and client settings are used (topics/group/database are replaced).
    #[arg(long, default_value = "pipelines/config/local.yaml")]
    config: PathBuf,
}

/// Where the harness's readers start: offset 0 of the bench's fresh topics (no log-start lookup inside
/// the bare consumer's clock).
const FROM_START: Offset = Offset::Offset(0);

fn main() -> Result<()> {
    touchpoint::allocator::keep_freed_memory();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let args = Args::parse();
    let name = unique_name("bench");
    let config = bench_config(&args.config, &name, args.partitions)?;
    let topic = config.topics.events.name.clone();
    let rt = touchpoint_connectors::io_runtime("bench-io")?;
    // Every topic and database of this benchmark starts with `name`; they go when it ends, however it ends.
    let _scratch = Scratch { kafka: config.kafka.clone(), clickhouse: config.clickhouse.clone(), prefix: name.clone() };

    // Consent (60% of subjects granted email and push, as `touchpoint generate`), then the events, with
    // large producer batches (the producer is not what is measured).
    let producer_config = batching(&config.kafka);
    rt.block_on(ensure_topics(&config.kafka, &config.topics.all()))?;
    let consent_records = produce_consent(&config, args.subjects, &rt)?;
    eprintln!("producing {} events to {topic} ({} partitions)...", args.count, args.partitions);
    let generator = GeneratorConfig { count: args.count, subjects: args.subjects, ..Default::default() };
    let produced_at = Instant::now();
    let target = Target::new(&config.schema_registry, &config.topics.events.name, config.topics.all());
    drop(produce_generated(&target, &producer_config, &generator, rt.handle())?);
    eprintln!("produced in {:.1?}", produced_at.elapsed());

    // 1. The ceiling.
    let processes = Processes::of_local_stack();
    let cpu = processes.start();
    let bare = bare_consumer_rate(&config, &topic, args.partitions, args.count)?;
    let bare_cpu = cpu.stop();
    eprintln!("bare consumer: {bare:.0} events/s; {}", bare_cpu.per_event(args.count));

    // 2. What the sinks write for these events, alone.
    let mut writes = Vec::new();
    for &per_batch in args.write_batches.iter().filter(|&&b| b > 0) {
        let run = format!("{name}_writes_{per_batch}");
        let w = writes_alone(&config, &rt, &run, &processes, &args, per_batch);
        drop(Scratch { kafka: config.kafka.clone(), clickhouse: config.clickhouse.clone(), prefix: run });
        let w = w?;
        eprintln!(
            "writes alone, batches of {per_batch} records: {:.0} events/s ({:.1?}); {}",
            w.rate,
            w.elapsed,
            w.cpu.per_event(args.count)
        );
        writes.push(w);
    }

    // 3. Touchpoint at each worker count (and guarantee), alternating rounds, best of each.
    let mut runs: Vec<(usize, ProcessingGuarantee)> =
        args.workers.iter().map(|&w| (w, ProcessingGuarantee::ExactlyOnceKeys)).collect();
    if args.compare_guarantees {
        runs.push((2, ProcessingGuarantee::AtLeastOnce));
        runs.push((2, ProcessingGuarantee::ExactlyOnceV2));
    }
    let mut best: Vec<Option<TouchpointRun>> = vec![None; runs.len()];
    for round in 0..args.rounds {
        for (i, &(workers, guarantee)) in runs.iter().enumerate() {
            let run = format!("{name}_{}w_{}_{round}", workers, guarantee.as_str());
            let r = touchpoint_rate(&config, &rt, &run, guarantee, workers, args.count, &args);
            // Each run's own topics (changelogs, connector topics) and database go before the next run.
            drop(Scratch { kafka: config.kafka.clone(), clickhouse: config.clickhouse.clone(), prefix: run });
            let r = r?;
            eprintln!(
                "touchpoint {workers} worker(s) {} round {round}: {:.0} events/s after a start-up of {:.1?} \
                 ({:.0} events/s including it); {}",
                guarantee.as_str(),
                r.rate,
                r.start_up,
                r.wall_rate,
                r.cpu.per_event(args.count)
            );
            if best[i].as_ref().is_none_or(|b| b.rate < r.rate) {
                best[i] = Some(r);
            }
        }
    }
    let best: Vec<TouchpointRun> = best.into_iter().flatten().collect();

    // 4. The peer.
    let mut peers = Vec::new();
    if !args.no_peer {
        for guarantee in &args.peer_guarantees {
            let run = format!("{name}_quix_{}", guarantee.replace('-', "_"));
            let r = peer_rate(&config, &run, guarantee, args.count, consent_records);
            drop(Scratch { kafka: config.kafka.clone(), clickhouse: config.clickhouse.clone(), prefix: run });
            peers.push((guarantee.clone(), r?));
        }
    }

    // 5. Latency at half of the best rate.
    let top = best.iter().map(|r| r.rate).fold(0f64, f64::max);
    let top_wall = best.iter().map(|r| r.wall_rate).fold(0f64, f64::max);
    let rate = args.latency_rate.unwrap_or(top / 2.0);
    let epochs: Vec<Option<u64>> = if args.latency_epoch_ms.is_empty() {
        vec![None]
    } else {
        args.latency_epoch_ms.iter().copied().map(Some).collect()
    };
    let mut latencies = Vec::new();
    for (i, epoch_ms) in epochs.into_iter().enumerate().filter(|_| args.latency_seconds > 0) {
        let run = format!("{name}_live{i}");
        let l = latency_run(&args, &rt, &run, rate, epoch_ms);
        drop(Scratch { kafka: config.kafka.clone(), clickhouse: config.clickhouse.clone(), prefix: run });
        latencies.push((epoch_ms.map_or(config.epochs.interval, Duration::from_millis), l?));
    }

    println!("events {}, subjects {}, partitions {}", args.count, args.subjects, args.partitions);
    println!("{:<44} {:>10.0} events/s   {}", "bare rdkafka consumer (ceiling)", bare, bare_cpu.per_event(args.count));
    for w in &writes {
        println!(
            "{:<44} {:>10.0} events/s   writes/ceiling {:.3}   {}",
            format!("writes alone, batches of {}", w.per_batch),
            w.rate,
            w.rate / bare,
            w.cpu.per_event(args.count)
        );
        let sinks: Vec<String> = w.sinks.iter().map(|(n, d)| format!("{n} {:.1}s", d.as_secs_f64())).collect();
        println!("{:<44} {}", "  each sink done after", sinks.join(", "));
    }
    let writes_top = writes.iter().map(|w| w.rate).fold(0f64, f64::max);
    println!("rates after start-up (restores, journey loading); in brackets: including it");
    for (&(workers, guarantee), r) in runs.iter().zip(&best) {
        println!(
            "{:<44} {:>10.0} events/s   touchpoint/ceiling {:.3}   [{:.0} events/s, {:.3}; start-up {:.1?}]",
            format!("touchpoint {workers} worker(s), {}", guarantee.as_str()),
            r.rate,
            r.rate / bare,
            r.wall_rate,
            r.wall_rate / bare,
            r.start_up
        );
        if writes_top > 0.0 {
            println!("{:<44} touchpoint/writes alone (best) {:.3}", "", r.rate / writes_top);
        }
        println!("{:<44} {}", "", r.cpu.per_event(args.count));
        println!(
            "{:<44} caps changelog: {} subjects, {:.0} bytes each on average, {} at most",
            "", r.state.subjects, r.state.mean_bytes, r.state.max_bytes
        );
    }
    for (guarantee, peer) in &peers {
        println!(
            "{:<44} {:>10.0} events/s   peer/ceiling {:.3}   [{:.0} events/s]",
            format!("quix streams peer (1 process), {guarantee}"),
            peer.rate,
            peer.rate / bare,
            peer.wall_rate
        );
        println!("{:<44} {:>10.2}   [{:.2}]", "touchpoint (best) / peer", top / peer.rate, top_wall / peer.wall_rate);
    }
    for (interval, l) in latencies {
        println!(
            "latency at {rate:.0} events/s offered (2 workers, epochs of {interval:?}, at most {} in flight):",
            args.max_in_flight.unwrap_or(config.epochs.max_in_flight),
        );
        for (what, p, unit) in [
            ("  event to send (touchpoint)", &l.pipeline, "sends"),
            ("  produce to poll (bare consumer)", &l.broker, "records"),
            ("  poll to send (touchpoint's own)", &l.added, "sends"),
            ("  poll to poll (two bare consumers)", &l.jitter, "events"),
        ] {
            println!(
                "{what:<36} p50 {:>4} ms   p99 {:>4} ms   max {:>4} ms   over {} {unit}",
                p.p50, p.p99, p.max, p.samples
            );
        }
    }
    Ok(())
}

/// Consent for 60% of `subjects` (email and push granted, the records `touchpoint generate` produces) to
/// the pipeline's consent topic, and every subject's profile (recipients come from profiles); returns
/// how many consent records.
fn produce_consent(config: &PipelineConfig, subjects: usize, rt: &tokio::runtime::Runtime) -> Result<usize> {
    let consent = consent_grants(subjects, 0.6, GeneratorConfig::default().seed, &config.topics.consent.name);
    let producer = AckedProducer::new(&batching(&config.kafka))?;
    rt.block_on(producer.send_all(&consent))?;
    rt.block_on(producer.send_all(&subject_profiles(subjects, &config.topics.profiles.name)))?;
    Ok(consent.len())
}

/// Producer settings for loading the benchmark's input fast: large batches, a short linger.
fn batching(kafka: &KafkaConfig) -> KafkaConfig {
    let mut kafka = kafka.clone();
    kafka.producer.insert("batch.num.messages".into(), "10000".into());
    kafka.producer.insert("linger.ms".into(), "5".into());
    kafka
}

#[derive(Clone)]
struct TouchpointRun {
    /// Events over the time after start-up (the dataflow running: consent table replay included).
    rate: f64,
    /// Events over the whole run, start-up included.
    wall_rate: f64,
    start_up: Duration,
    /// CPU of the whole run (start-up included) by process.
    cpu: CpuUse,
    state: SubjectState,
}

/// A "writes alone" run.
struct WritesRun {
    per_batch: usize,
    /// Events over the time the writes took.
    rate: f64,
    elapsed: Duration,
    sinks: Vec<(&'static str, Duration)>,
    cpu: CpuUse,
}

/// The pipeline's sink inputs for the benchmark's events, computed with the operator chain before the
/// clock, then written with the pipeline's own sink writers into a fresh database and topics
/// (`touchpoint_benches::writes`).
fn writes_alone(
    base: &PipelineConfig,
    rt: &tokio::runtime::Runtime,
    run: &str,
    processes: &Processes,
    args: &Args,
    per_batch: usize,
) -> Result<WritesRun> {
    let config = run_config(base, run);
    let mut topics = config.topics.all();
    topics.push(config.topics.caps_changelog(&config.pipeline.group_id));
    topics.push(config.topics.journeys_changelog(&config.pipeline.group_id));
    topics.push(config.topics.segments_changelog(&config.pipeline.group_id));
    topics.push(config.topics.profiles_changelog(&config.pipeline.group_id));
    rt.block_on(ensure_topics(&config.kafka, &topics))?;
    rt.block_on(migrate(&config.clickhouse))?;
    eprintln!("writes alone: computing the sink inputs of {} events (batches of {per_batch})...", args.count);
    let batches = SinkBatches::compute(&config, args.count, args.subjects, per_batch);
    let cpu = processes.start();
    let report = rt.block_on(write_all(&config, &batches))?;
    let cpu = cpu.stop();
    eprintln!("writes alone: wrote {:?}", batches.counts);
    Ok(WritesRun {
        per_batch,
        rate: args.count as f64 / report.elapsed.as_secs_f64(),
        elapsed: report.elapsed,
        sinks: report.sinks,
        cpu,
    })
}

/// `base` with the group, the database and the connector topics of one run.
fn run_config(base: &PipelineConfig, run: &str) -> PipelineConfig {
    let mut config = base.clone();
    config.pipeline.group_id = format!("{run}.pipeline");
    config.clickhouse.database = run.replace('.', "_");
    config.topics.connectors.prefix = format!("{run}.connector.");
    config.kafka = batching(&config.kafka);
    config
}

/// One pipeline run over the whole topic with its own group (so it starts at the beginning), state
/// changelogs, connector topics and database.
fn touchpoint_rate(
    base: &PipelineConfig,
    rt: &tokio::runtime::Runtime,
    run: &str,
    guarantee: ProcessingGuarantee,
    workers: usize,
    count: usize,
    tuning: &Args,
) -> Result<TouchpointRun> {
    let mut config = run_config(base, run);
    config.processing.guarantee = guarantee;
    config.source.drain_idle = Duration::from_millis(300);
    if let Some(n) = tuning.max_in_flight {
        config.epochs.max_in_flight = n;
    }
    if let Some(ms) = tuning.epoch_ms {
        config.epochs.interval = Duration::from_millis(ms);
    }
    rt.block_on(ensure_topics(&config.kafka, &config.topics.all()))?;
    rt.block_on(migrate(&config.clickhouse))?;
    let started = Instant::now();
    let cpu = Processes::of_local_stack().start();
    let report = touchpoint::run(config.clone(), RunOptions { workers, until_drained: true, ..Default::default() })?;
    let cpu = cpu.stop();
    // The run ends drain_idle after the last record; that idle wait is not processing time.
    let elapsed = started.elapsed().saturating_sub(Duration::from_millis(300));
    if report.totals.tally.received != count as u64 {
        bail!("pipeline read {} of {count} events", report.totals.tally.received);
    }
    let start_up = report.start_up.context("the pipeline never started its workers")?;
    let state = SubjectState::of(&config)?;
    Ok(TouchpointRun {
        rate: count as f64 / elapsed.saturating_sub(start_up).as_secs_f64(),
        wall_rate: count as f64 / elapsed.as_secs_f64(),
        start_up,
        cpu,
        state,
    })
}

/// The per-subject state a run left: the last record of every subject on the caps changelog (cap
/// counters plus, under `exactly_once_keys`, the send ledger), as compaction would keep it.
#[derive(Clone, Copy)]
struct SubjectState {
    subjects: usize,
    mean_bytes: f64,
    max_bytes: usize,
}

impl SubjectState {
    fn of(config: &PipelineConfig) -> Result<Self> {
        let topic = config.topics.caps_changelog(&config.pipeline.group_id).name;
        let records = read_all(&config.kafka, &topic, Duration::from_secs(2), Duration::from_secs(120))?;
        let mut last: HashMap<Vec<u8>, usize> = HashMap::new();
        for r in records {
            if let Some(key) = r.key {
                match r.payload {
                    Some(p) => last.insert(key, p.len()),
                    None => last.remove(&key),
                };
            }
        }
        let total: usize = last.values().sum();
        Ok(SubjectState {
            subjects: last.len(),
            mean_bytes: total as f64 / last.len().max(1) as f64,
            max_bytes: last.values().copied().max().unwrap_or(0),
        })
    }
}

fn bare_consumer_rate(config: &PipelineConfig, topic: &str, partitions: i32, count: usize) -> Result<f64> {
    let consumer: BaseConsumer = config.kafka.consumer_config(&unique_name("bench-bare")).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, FROM_START)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut seen = 0usize;
    while seen < count {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(_)) => seen += 1,
            Some(Err(e)) => bail!("bare consumer: {e}"),
            None => bail!("bare consumer stalled at {seen} of {count}"),
        }
    }
    Ok(seen as f64 / started.elapsed().as_secs_f64())
}

/// What the Quix Streams peer reported.
struct PeerRun {
    /// Events over the time from its first record to its last (its consent table is loaded before).
    rate: f64,
    /// Events over the process's whole life (start-up included), like Touchpoint's figure.
    wall_rate: f64,
}

/// Runs `benches/peers/quix_pipeline.py` on the same topic (installing its environment when missing)
/// and reads its one-line JSON report.
fn peer_rate(
    config: &PipelineConfig,
    name: &str,
    guarantee: &str,
    count: usize,
    consent_records: usize,
) -> Result<PeerRun> {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers");
    let install = Command::new("bash").arg(peers.join("install.sh")).output().context("benches/peers/install.sh")?;
    if !install.status.success() {
        bail!("benches/peers/install.sh failed: {}", String::from_utf8_lossy(&install.stderr));
    }
    let python = touchpoint_benches::touchpoint_home().join("bench-venv/bin/python");
    let state_dir = std::env::temp_dir().join(format!("{name}-quix-state"));
    eprintln!("quix streams peer, {guarantee}...");
    let started = Instant::now();
    let output = Command::new(&python)
        .arg(peers.join("quix_pipeline.py"))
        .args(["--brokers", &config.kafka.brokers])
        .args(["--registry", &config.schema_registry.url])
        .args(["--input", &config.topics.events.name])
        .args(["--consent", &config.topics.consent.name])
        .args(["--consent-count", &consent_records.to_string()])
        .args(["--output-prefix", &format!("{name}.quix")])
        .args(["--group", &format!("{name}.quix")])
        .args(["--count", &count.to_string()])
        .args(["--processing-guarantee", guarantee])
        .arg("--state-dir")
        .arg(&state_dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    let wall = started.elapsed();
    let _ = std::fs::remove_dir_all(&state_dir);
    if !output.status.success() {
        bail!("the peer failed ({})", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().context("the peer printed nothing")?;
    let report: serde_json::Value = serde_json::from_str(line).with_context(|| format!("peer report {line:?}"))?;
    eprintln!("peer: {line}");
    let events = report["events"].as_u64().context("peer report: events")?;
    if events != count as u64 {
        bail!("the peer read {events} of {count} events");
    }
    let seconds = report["seconds"].as_f64().context("peer report: seconds")?;
    Ok(PeerRun { rate: count as f64 / seconds, wall_rate: count as f64 / wall.as_secs_f64() })
}

struct Latency {
    /// Produce → send record, Touchpoint.
    pipeline: Percentiles,
    /// Produce → a bare consumer's poll of the same records, in the same run: the broker's own floor.
    broker: Percentiles,
    /// The bare consumer's poll of an event → Touchpoint's send for it: what Touchpoint adds to the
    /// broker's delivery (both consumers read the same records at about the same time).
    added: Percentiles,
    /// Two bare consumers' polls of the same event, apart: the broker's own jitter between readers.
    jitter: Percentiles,
}

struct Percentiles {
    p50: i64,
    p99: i64,
    max: i64,
    samples: usize,
}

impl Percentiles {
    fn of(mut millis: Vec<i64>) -> Option<Self> {
        if millis.is_empty() {
            return None;
        }
        millis.sort_unstable();
        let at = |q: f64| millis[((millis.len() - 1) as f64 * q).round() as usize];
        Some(Percentiles { p50: at(0.50), p99: at(0.99), max: at(1.0), samples: millis.len() })
    }
}

/// What the bare consumer saw of the live stream.
struct BrokerDelivery {
    /// Poll time minus produce timestamp, per record produced after the warm-up.
    waited: Vec<i64>,
    /// Poll time (wall clock, ms) per event id.
    polled_at: HashMap<String, i64>,
}

/// Reads `topic` from the beginning until `stop` is set and nothing came for a second, noting for every
/// record produced after `from_ms` how long after its produce timestamp (CreateTime, set by the
/// producer) it was polled: what any consumer of this broker waits at best. `event_ids` names the
/// event of each payload (by hash) so that Touchpoint's sends can be matched to the poll of their event.
fn broker_latency(
    config: &PipelineConfig,
    topic: &str,
    from_ms: i64,
    event_ids: &HashMap<u64, String>,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<BrokerDelivery> {
    let consumer: BaseConsumer = config.kafka.consumer_config(&unique_name("bench-broker-latency")).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..config.topics.events.partitions {
        tpl.add_partition_offset(topic, p, FROM_START)?;
    }
    consumer.assign(&tpl)?;
    let mut seen = BrokerDelivery { waited: Vec::new(), polled_at: HashMap::new() };
    let mut last = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) || last.elapsed() < Duration::from_secs(1) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let now_ms = chrono::Utc::now().timestamp_millis();
                if let Some(ts) = m.timestamp().to_millis().filter(|&ts| ts >= from_ms) {
                    seen.waited.push(now_ms - ts);
                    if let Some(id) = m.payload().and_then(|p| event_ids.get(&payload_hash(p))) {
                        seen.polled_at.entry(id.clone()).or_insert(now_ms);
                    }
                }
            }
            Some(Err(e)) => bail!("reading the live stream: {e}"),
            None => {}
        }
    }
    Ok(seen)
}

fn payload_hash(payload: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut h);
    h.finish()
}

/// A live stream at `rate` events/s for `--latency-seconds` through a fresh pipeline (2 workers, the
/// shipped settings): event time keeps pace with the wall clock, as in production, so journey waits
/// (hours, days) do not fire and every send answers an event of the run. Latency of a send: its record's
/// timestamp on `connector.<channel>` (set when the pipeline produced it) minus the time its event was
/// handed to the producer. Sends of the first 5 s (warm-up) are left out.
fn latency_run(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    name: &str,
    rate: f64,
    epoch_ms: Option<u64>,
) -> Result<Latency> {
    const WARM_UP: Duration = Duration::from_secs(5);
    let config = bench_config(&args.config, name, args.partitions)?;
    let mut pipeline_config = config.clone();
    // Ends once production stopped (it never pauses that long while producing).
    pipeline_config.source.drain_idle = Duration::from_secs(3);
    pipeline_config.kafka = batching(&config.kafka);
    pipeline_config.kafka.producer.insert("linger.ms".into(), "1".into());
    if let Some(ms) = epoch_ms {
        pipeline_config.epochs.interval = Duration::from_millis(ms);
    }
    if let Some(n) = args.max_in_flight {
        pipeline_config.epochs.max_in_flight = n;
    }
    rt.block_on(ensure_topics(&config.kafka, &config.topics.all()))?;
    rt.block_on(migrate(&config.clickhouse))?;
    produce_consent(&config, args.subjects, rt)?;

    let seconds = args.latency_seconds;
    let count = (rate * seconds as f64) as usize;
    let start_ms = chrono::Utc::now().timestamp_millis() + 2_000;
    let generator = GeneratorConfig {
        count,
        subjects: args.subjects,
        now_ms: start_ms + seconds as i64 * 1_000,
        span_ms: seconds as i64 * 1_000,
        ..Default::default()
    };
    let target = Target::new(&config.schema_registry, &config.topics.events.name, config.topics.all());
    let (_, records) = generate_registered(&target, &generator)?;

    eprintln!("latency: {count} events at {rate:.0}/s over {seconds} s...");
    let pipeline = std::thread::spawn(move || {
        touchpoint::run(pipeline_config, RunOptions { workers: 2, until_drained: true, ..Default::default() })
    });
    // Two bare consumers read the same live stream meanwhile: the broker's produce-to-poll latency, and
    // how far apart two plain readers get the same records (the broker's own jitter, the yardstick for
    // what Touchpoint adds on top of the broker's delivery).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let event_ids: std::sync::Arc<HashMap<u64, String>> = std::sync::Arc::new(
        records
            .iter()
            .filter_map(|r| match &r.expected {
                Expected::Valid { event_id } => Some((payload_hash(&r.payload), event_id.clone())),
                _ => None,
            })
            .collect(),
    );
    let from_ms = chrono::Utc::now().timestamp_millis() + WARM_UP.as_millis() as i64;
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (config, stop, event_ids) = (config.clone(), stop.clone(), event_ids.clone());
            let topic = config.topics.events.name.clone();
            std::thread::spawn(move || broker_latency(&config, &topic, from_ms, &event_ids, &stop))
        })
        .collect();
    // Paced producer: every 5 ms, the records due by then; each record's send time is noted.
    let producer: ThreadedProducer<DefaultProducerContext> = {
        let mut c = config.kafka.producer_config();
        c.set("linger.ms", "1").set("batch.num.messages", "1000");
        c.create()?
    };
    let mut produced_at: HashMap<String, i64> = HashMap::with_capacity(count);
    let began = Instant::now();
    let topic = config.topics.events.name.clone();
    for (i, r) in records.iter().enumerate() {
        let due = Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_sub(began.elapsed()) {
            if wait > Duration::from_millis(5) {
                std::thread::sleep(wait);
            }
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        if let Expected::Valid { event_id } = &r.expected {
            if began.elapsed() >= WARM_UP {
                produced_at.entry(event_id.clone()).or_insert(now_ms);
            }
        }
        let mut record = BaseRecord::to(&topic).key(&r.key).payload(&r.payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    if !matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)) {
                        bail!("producing the live stream: {e}");
                    }
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30))?;
    let offered = count as f64 / began.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut readers = readers
        .into_iter()
        .map(|r| r.join().map_err(|_| anyhow::anyhow!("a bare consumer thread panicked"))?)
        .collect::<Result<Vec<_>>>()?;
    let (Some(other), Some(broker)) = (readers.pop(), readers.pop()) else { bail!("two bare consumers ran") };
    let jitter: Vec<i64> =
        broker.polled_at.iter().filter_map(|(id, at)| other.polled_at.get(id).map(|b| (b - at).abs())).collect();
    let report = pipeline.join().map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))??;
    eprintln!("latency: offered {offered:.0} events/s; pipeline read {}", report.totals.tally.received);

    // Every send record: its event and timestamp.
    let mut latencies: Vec<i64> = Vec::new();
    let mut added: Vec<i64> = Vec::new();
    let consumer: BaseConsumer = config.kafka.consumer_config(&unique_name("bench-latency")).create()?;
    let mut tpl = TopicPartitionList::new();
    for channel in ["email", "push", "sms", "webhook"] {
        let t = format!("{}{channel}", config.topics.connectors.prefix);
        for p in 0..config.topics.connectors.partitions {
            tpl.add_partition_offset(&t, p, FROM_START)?;
        }
    }
    consumer.assign(&tpl)?;
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(3) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let Some(sent_ms) = m.timestamp().to_millis() else { continue };
                let Some(message) =
                    m.payload().and_then(|p| serde_json::from_slice::<touchpoint_schemas::ChannelMessage>(p).ok())
                else {
                    continue;
                };
                if let Some(at) = produced_at.get(&message.event_id) {
                    latencies.push(sent_ms - at);
                    if let Some(polled) = broker.polled_at.get(&message.event_id) {
                        added.push(sent_ms - polled);
                    }
                }
            }
            Some(Err(e)) => bail!("reading sends: {e}"),
            None => {}
        }
    }
    let pipeline = Percentiles::of(latencies).context("no send of the live stream found")?;
    let added = Percentiles::of(added).context("no send matched an event the bare consumer read")?;
    let broker = Percentiles::of(broker.waited).context("the bare consumer read nothing of the live stream")?;
    let jitter = Percentiles::of(jitter).context("the two bare consumers read no event in common")?;
    Ok(Latency { pipeline, broker, added, jitter })
}
