//! Load on `touchpoint ingest`: the most events per second the API takes in batches (each `202` after
//! the broker acknowledged the batch), then p50/p99 latency at half of that rate, open loop (latency from
//! each request's scheduled instant, so a server that falls behind is not hidden by a waiting client).
//!
//! Baseline, same run: the bare producer — the same batches produced with the same producer code
//! (`AckedProducer::send_all`, `acks=all`, idempotent) straight from this process at the same
//! concurrency. The ratio says what HTTP, authentication and per-event validation cost on top of the
//! broker's acknowledgements.
//!
//!   cargo build --release -p touchpoint && \
//!   cargo run --release -p touchpoint-benches --bin ingest_load -- [--batch 100 --connections 8 --seconds 10]
//!
//! Needs the local stack (deploy/scripts/stack.sh start). The server is the release `touchpoint` binary
//! as a separate process, so its CPU per event is its own.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use touchpoint::PipelineConfig;
use touchpoint_benches::cpu::cpu_time;
use touchpoint_benches::scratch::{free_port, sha256_hex};
use touchpoint_connectors::kafka::{ensure_topics, AckedProducer, OutgoingRecord};
use touchpoint_connectors::testing::unique_name;

touchpoint_benches::pipeline_allocator!();

#[derive(Parser)]
struct Args {
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Requests in flight at once (client connections) in the max-rate phase.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Length of each measured phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// The release binary that serves the API.
    #[arg(long, default_value = "target/release/touchpoint")]
    binary: PathBuf,
    #[arg(long, default_value = "pipelines/config/local.yaml")]
    config: PathBuf,
}

const KEY: &str = "tp-bench-key";

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())).init();
    let args = Args::parse();
    anyhow::ensure!(
        args.binary.exists(),
        "{} is missing: cargo build --release -p touchpoint first",
        args.binary.display()
    );
    let name = unique_name("bench_ingest");
    let port = free_port()?;
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let sha = sha256_hex(KEY);
    for needle in [
        "    name: marketing.events\n",
        "${TOUCHPOINT_INGEST_LISTEN:-127.0.0.1:18200}",
        "api_keys: ${TOUCHPOINT_INGEST_API_KEYS:-[]}",
    ] {
        anyhow::ensure!(text.contains(needle), "{}: the ingest section changed ({needle})", args.config.display());
    }
    let text = text
        .replace("    name: marketing.events\n", &format!("    name: {name}.events\n"))
        .replace("${TOUCHPOINT_INGEST_LISTEN:-127.0.0.1:18200}", &format!("127.0.0.1:{port}"))
        .replace(
            "api_keys: ${TOUCHPOINT_INGEST_API_KEYS:-[]}",
            &format!("api_keys: [{{id: bench, tenant: acme, sha256: {sha}}}]"),
        );
    let path = args.config.with_file_name(format!("{name}.yaml"));
    std::fs::write(&path, &text)?;
    let config = PipelineConfig::load(&path)?;
    let rt = touchpoint_connectors::io_runtime("ingest-load")?;
    rt.block_on(ensure_topics(&config.kafka, std::slice::from_ref(&config.topics.events)))?;

    // Request bodies made up front (distinct events), so the client's own work is small.
    let bodies: Arc<Vec<String>> = Arc::new((0..64).map(|b| body(b, args.batch)).collect());
    let bytes_per_event = bodies[0].len() as f64 / args.batch as f64;

    // Baseline: the bare producer, same batches and concurrency.
    let topic = config.topics.events.name.clone();
    let producer = AckedProducer::new(&config.kafka)?;
    let records: Arc<Vec<Vec<OutgoingRecord>>> = Arc::new(
        bodies
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_str(b).expect("own JSON");
                v["events"]
                    .as_array()
                    .expect("events")
                    .iter()
                    .map(|e| OutgoingRecord {
                        topic: topic.clone(),
                        partition: None,
                        key: e["subject_id"].as_str().map(|s| s.as_bytes().to_vec()),
                        payload: Some(serde_json::to_vec(e).expect("JSON")),
                        headers: Vec::new(),
                    })
                    .collect()
            })
            .collect(),
    );
    let broker_pid = pid_of("kafka");
    let phase = Duration::from_secs_f64(args.seconds);
    let (bare, bare_cpu) = rt.block_on(async {
        let cpu0 = (cpu_time(std::process::id()), broker_pid.and_then(cpu_time));
        let done = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + phase;
        let tasks: Vec<_> = (0..args.connections)
            .map(|c| {
                let (producer, records, done) = (producer.clone(), records.clone(), done.clone());
                tokio::spawn(async move {
                    let mut i = c;
                    while Instant::now() < until {
                        let batch = &records[i % records.len()];
                        if producer.send_all(batch).await.is_ok() {
                            done.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        }
                        i += args.connections;
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        let events = done.load(Ordering::Relaxed);
        let cpu = (
            per_event(cpu0.0, cpu_time(std::process::id()), events),
            per_event(cpu0.1, broker_pid.and_then(cpu_time), events),
        );
        (events as f64 / phase.as_secs_f64(), cpu)
    });
    drop(producer);

    // The API, as its own process.
    let log = std::env::temp_dir().join(format!("{name}.log"));
    let mut server = Command::new(&args.binary)
        .args(["ingest", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting touchpoint ingest")?;
    let server_pid = server.id();
    let outcome = rt.block_on(measure(&args, port, bodies, server_pid, broker_pid));
    let _ = Command::new("kill").args(["-TERM", &server_pid.to_string()]).status();
    let _ = server.wait();
    let _ = std::fs::remove_file(&path);
    let (max, max_cpu, lat) = outcome?;

    println!(
        "ingest load: batches of {} events ({bytes_per_event:.0} B each), {} connections, {} s phases",
        args.batch, args.connections, args.seconds
    );
    println!(
        "{:<46} {:>9.0} events/s   CPU µs/event: this process {}, broker {}",
        "bare producer (send_all, same batches)",
        bare,
        fmt(bare_cpu.0),
        fmt(bare_cpu.1)
    );
    println!(
        "{:<46} {:>9.0} events/s   CPU µs/event: server {}, client {}, broker {}",
        "touchpoint ingest, max (202s only)",
        max,
        fmt(max_cpu.0),
        fmt(max_cpu.1),
        fmt(max_cpu.2)
    );
    println!("{:<46} {:>9.3}", "ratio ingest / bare producer", max / bare.max(1.0));
    println!(
        "{:<46} {:>9.0} events/s   p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} requests, {} not 202)",
        "at half the max rate, open loop", lat.rate, lat.p50_ms, lat.p99_ms, lat.max_ms, lat.requests, lat.failed
    );
    Ok(())
}

struct Latency {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    requests: usize,
    failed: usize,
}

type Cpu3 = (Option<f64>, Option<f64>, Option<f64>);

async fn measure(
    args: &Args,
    port: u16,
    bodies: Arc<Vec<String>>,
    server_pid: u32,
    broker_pid: Option<u32>,
) -> Result<(f64, Cpu3, Latency)> {
    let url = format!("http://127.0.0.1:{port}/automation/events");
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).timeout(Duration::from_secs(30)).build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.get(format!("http://127.0.0.1:{port}/readyz")).send().await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "touchpoint ingest did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Warm-up: connections open, producer connected.
    for b in bodies.iter().take(4) {
        let r = client.post(&url).bearer_auth(KEY).body(b.clone()).send().await?;
        anyhow::ensure!(r.status() == 202, "warm-up answered {}: {}", r.status(), r.text().await.unwrap_or_default());
    }
    let phase = Duration::from_secs_f64(args.seconds);

    // Max rate: closed loop, `connections` requests in flight.
    let cpu0 = (cpu_time(server_pid), cpu_time(std::process::id()), broker_pid.and_then(cpu_time));
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + phase;
    let tasks: Vec<_> = (0..args.connections)
        .map(|c| {
            let (client, url, bodies, done, batch) =
                (client.clone(), url.clone(), bodies.clone(), done.clone(), args.batch);
            let step = args.connections;
            tokio::spawn(async move {
                let mut i = c;
                while Instant::now() < until {
                    if let Ok(r) =
                        client.post(&url).bearer_auth(KEY).body(bodies[i % bodies.len()].clone()).send().await
                    {
                        if r.status() == 202 {
                            done.fetch_add(batch as u64, Ordering::Relaxed);
                        }
                    }
                    i += step;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let events = done.load(Ordering::Relaxed);
    let cpu = (
        per_event(cpu0.0, cpu_time(server_pid), events),
        per_event(cpu0.1, cpu_time(std::process::id()), events),
        per_event(cpu0.2, broker_pid.and_then(cpu_time), events),
    );
    let max = events as f64 / phase.as_secs_f64();

    // Half of it, open loop: requests start on a schedule whatever the answers do.
    let rate = max / 2.0;
    let interval = Duration::from_secs_f64(args.batch as f64 / rate.max(1.0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(start, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut handles = Vec::new();
    let mut n = 0usize;
    while start.elapsed() < phase {
        let scheduled = tick.tick().await;
        let (client, url, body, latencies, failed) =
            (client.clone(), url.clone(), bodies[n % bodies.len()].clone(), latencies.clone(), failed.clone());
        n += 1;
        handles.push(tokio::spawn(async move {
            let ok = client.post(&url).bearer_auth(KEY).body(body).send().await.is_ok_and(|r| r.status() == 202);
            if !ok {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            lock(&latencies).push(scheduled.elapsed());
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let mut l = std::mem::take(&mut *lock(&latencies));
    l.sort();
    let at = |q: f64| {
        l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1))).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let latency = Latency {
        rate: n as f64 * args.batch as f64 / phase.as_secs_f64(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: l.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        requests: l.len(),
        failed: failed.load(Ordering::Relaxed) as usize,
    };
    Ok((max, cpu, latency))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `{"events": [...]}` of `n` distinct valid events.
fn body(b: usize, n: usize) -> String {
    let now = chrono::Utc::now();
    let events: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let subject = (b * n + i) % 10_000;
            serde_json::json!({
                "event_id": format!("load-{b}-{i}"),
                "event_type": "page_viewed",
                "occurred_at": (now - chrono::Duration::seconds(i as i64)).to_rfc3339(),
                "subject_id": format!("user-{subject}"),
                "attributes": {"path": "/pricing", "country": "DE", "email": format!("user{subject}@example.com")}
            })
        })
        .collect();
    serde_json::json!({"events": events}).to_string()
}

fn per_event(before: Option<Duration>, after: Option<Duration>, events: u64) -> Option<f64> {
    Some(after?.saturating_sub(before?).as_secs_f64() * 1e6 / events.max(1) as f64)
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.1}"))
}

fn pid_of(service: &str) -> Option<u32> {
    std::fs::read_to_string(touchpoint_benches::touchpoint_home().join("run").join(format!("{service}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}
