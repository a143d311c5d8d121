//! Latency of a dry run (`POST /internal/automation/evaluate`) against a running pipeline: the API
//! produces a request, the dataflow's worker that owns the subject answers after its epoch, the API
//! reads the answer back. Sequential requests (one at a time), then `--concurrency` in flight.
//!
//! Baseline, same run: the broker's own round trip for one record — produce (acknowledged), then poll it
//! back with a consumer waiting at the end of the topic — the floor of any request/reply through Kafka.
//! A dry run takes two of those plus up to one epoch (`epochs.interval`, 200 ms in the shipped file)
//! while the request waits for its epoch to complete.
//!
//!   cargo build --release -p touchpoint && \
//!   cargo run --release -p touchpoint-benches --bin evaluate_latency -- [--requests 300 --concurrency 16]
//!
//! Needs the local stack (deploy/scripts/stack.sh start).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use touchpoint_benches::scratch::{bench_config, free_port, sha256_hex, Scratch};
use touchpoint_connectors::clickhouse::migrate;
use touchpoint_connectors::kafka::{ensure_topics, AckedProducer, OutgoingRecord, TopicSpec};
use touchpoint_connectors::testing::unique_name;

touchpoint_benches::pipeline_allocator!();

#[derive(Parser)]
struct Args {
    /// Sequential dry runs measured.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Dry runs in flight at once in the second phase.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Length of the concurrent phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Subjects with consent and a profile.
    #[arg(long, default_value_t = 1000)]
    subjects: usize,
    #[arg(long, default_value = "target/release/touchpoint")]
    binary: PathBuf,
    #[arg(long, default_value = "pipelines/config/local.yaml")]
    config: PathBuf,
}

const KEY: &str = "tp-bench-internal";

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())).init();
    let args = Args::parse();
    anyhow::ensure!(
        args.binary.exists(),
        "{} is missing: cargo build --release -p touchpoint first",
        args.binary.display()
    );
    let name = unique_name("bench_eval");
    let (port, internal) = (free_port()?, free_port()?);
    let sha = sha256_hex(KEY);
    let config = bench_config(&args.config, &name, 4)?;
    let _scratch = Scratch { kafka: config.kafka.clone(), clickhouse: config.clickhouse.clone(), prefix: name.clone() };
    // The same renamed file on disk for the two processes, with the API's ports and an internal key.
    let text = std::fs::read_to_string(&args.config)?;
    let renamed = touchpoint_benches::scratch::renamed(&text, &args.config, &name, 4)
        .replace("${TOUCHPOINT_INGEST_LISTEN:-127.0.0.1:18200}", &format!("127.0.0.1:{port}"))
        .replace("${TOUCHPOINT_INGEST_INTERNAL_LISTEN:-127.0.0.1:18201}", &format!("127.0.0.1:{internal}"))
        .replace(
            "api_keys: ${TOUCHPOINT_INGEST_API_KEYS:-[]}",
            &format!("api_keys: [{{id: bench, tenant: acme, sha256: {sha}, internal: true}}]"),
        )
        .replace("${TOUCHPOINT_METRICS_LISTEN:-127.0.0.1:19464}", &format!("127.0.0.1:{}", free_port()?));
    let path = args.config.with_file_name(format!("{name}.yaml"));
    std::fs::write(&path, &renamed)?;
    let rt = touchpoint_connectors::io_runtime("evaluate-latency")?;
    rt.block_on(migrate(&config.clickhouse))?;
    rt.block_on(ensure_topics(&config.kafka, &config.topics.all()))?;
    let producer = AckedProducer::new(&config.kafka)?;
    let subject = |i: usize| format!("user-{i}");
    let mut tables = Vec::new();
    for i in 0..args.subjects {
        let s = subject(i);
        tables.push(record(&config.topics.profiles.name, &format!("acme/{s}"), serde_json::json!({
            "subject_id": s, "tenant_id": "acme", "updated_at": "2026-01-01T00:00:00Z", "email": format!("{s}@example.com")})));
        if i % 2 == 0 {
            tables.push(record(
                &config.topics.consent.name,
                &format!("acme/{s}/email/marketing"),
                serde_json::json!({
                "subject_id": s, "tenant_id": "acme", "channel": "email", "purpose": "marketing", "status": "granted",
                "updated_at": "2026-11-01T00:00:00Z", "source": "bench"}),
            ));
        }
    }
    rt.block_on(producer.send_all(&tables))?;

    let spawn = |command: &str| {
        let log = std::env::temp_dir().join(format!("{name}-{command}.log"));
        Command::new(&args.binary)
            .args([command, "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting touchpoint {command} (log: {})", log.display()))
    };
    let mut pipeline = spawn("run")?;
    let mut api = spawn("ingest")?;
    let outcome = rt.block_on(measure(&args, internal, &config, subject));
    for child in [&mut api, &mut pipeline] {
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let _ = child.wait();
    }
    let _ = std::fs::remove_file(&path);
    let (floor, sequential, concurrent, rate) = outcome?;
    println!(
        "dry runs against a running pipeline (epochs.interval {:?}; {} subjects)",
        config.epochs.interval, args.subjects
    );
    println!("{:<44} {}", "broker round trip (produce + poll, floor)", floor);
    println!("{:<44} {}", "dry run, sequential", sequential);
    println!("{:<44} {}   {rate:.0} dry runs/s", format!("dry run, {} in flight", args.concurrency), concurrent);
    Ok(())
}

fn record(topic: &str, key: &str, value: serde_json::Value) -> OutgoingRecord {
    OutgoingRecord {
        topic: topic.into(),
        partition: None,
        key: Some(key.as_bytes().to_vec()),
        payload: Some(value.to_string().into_bytes()),
        headers: Vec::new(),
    }
}

/// p50, p99, max of a sample.
struct Spread(Vec<Duration>);

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut l = self.0.clone();
        l.sort();
        let at =
            |q: f64| l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or_default();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
            ms(at(0.5)),
            ms(at(0.99)),
            ms(l.last().copied().unwrap_or_default()),
            l.len()
        )
    }
}

async fn measure(
    args: &Args,
    internal: u16,
    config: &touchpoint::PipelineConfig,
    subject: impl Fn(usize) -> String,
) -> Result<(Spread, Spread, Spread, f64)> {
    let url = format!("http://127.0.0.1:{internal}/internal/automation/evaluate");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let ask = |client: &reqwest::Client, s: String| {
        client
            .post(&url)
            .bearer_auth(KEY)
            .json(&serde_json::json!({"subject_id": s, "channel": "email", "category": "promotional"}))
            .send()
    };
    // Up when the pipeline answers (restores done, dataflow running).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(r) = ask(&client, subject(0)).await {
            if r.status() == 200 {
                break;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no dry-run answer within 180 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The floor: one record's produce + poll round trip on the same broker.
    let floor_topic = TopicSpec {
        name: format!("{}.roundtrip", config.pipeline.group_id),
        partitions: 1,
        retention: None,
        compacted: false,
    };
    ensure_topics(&config.kafka, std::slice::from_ref(&floor_topic)).await?;
    let consumer: BaseConsumer =
        config.kafka.consumer_config(&format!("{}.roundtrip", config.pipeline.group_id)).create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&floor_topic.name, 0, Offset::End)?;
    consumer.assign(&tpl)?;
    let producer = AckedProducer::new(&config.kafka)?;
    let mut floor = Vec::new();
    for i in 0..args.requests.min(200) {
        let started = Instant::now();
        producer.send_all(&[record(&floor_topic.name, "k", serde_json::json!({"i": i}))]).await?;
        loop {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
                break;
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "round-trip record not read back");
        }
        floor.push(started.elapsed());
    }

    let mut sequential = Vec::new();
    for i in 0..args.requests {
        let started = Instant::now();
        let r = ask(&client, subject(i % args.subjects)).await?;
        if r.status() != 200 {
            eprintln!(
                "dry run {i} (subject {}) answered {} after {:?}",
                subject(i % args.subjects),
                r.status(),
                started.elapsed()
            );
            continue;
        }
        sequential.push(started.elapsed());
    }

    let samples = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + Duration::from_secs_f64(args.seconds);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|c| {
            let (client, url, samples) = (client.clone(), url.clone(), samples.clone());
            let subjects = args.subjects;
            tokio::spawn(async move {
                let mut i = c;
                while Instant::now() < until {
                    let started = Instant::now();
                    let body = serde_json::json!({"subject_id": format!("user-{}", i % subjects), "channel": "email", "category": "promotional"});
                    if let Ok(r) = client.post(&url).bearer_auth(KEY).json(&body).send().await {
                        if r.status() == 200 {
                            samples.lock().unwrap_or_else(|p| p.into_inner()).push(started.elapsed());
                        }
                    }
                    i += 16;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let concurrent = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    let rate = concurrent.len() as f64 / args.seconds;
    Ok((Spread(floor), Spread(sequential), Spread(concurrent), rate))
}
