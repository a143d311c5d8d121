//! Does the connector's rate limit hold? A webhook connector worker (the real one: ledger, breaker,
//! retries) delivers to the local HTTP peer with `rate_limit.per_second = L`; the send rate is measured
//! from the peer's own arrival times over a 10 s window that starts after the burst has drained.
//! Baseline, same run: the same worker without a limit (what the machine can do), so the limit is known
//! to be what holds the rate back.
//!
//!   cargo run --release -p touchpoint-benches --bin rate_limit -- --limit 50
//!
//! Needs the local stack with the peers (deploy/scripts/stack.sh start).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use touchpoint::PipelineConfig;
use touchpoint_connectors::kafka::{ensure_topics, AckedProducer, OutgoingRecord};
use touchpoint_connectors::testing::{unique_name, Peers, ServiceAddresses};

#[derive(Parser)]
struct Args {
    /// Sends per second allowed.
    #[arg(long, default_value_t = 50.0)]
    limit: f64,
    /// Burst (bucket size).
    #[arg(long, default_value_t = 5.0)]
    burst: f64,
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    window: f64,
    #[arg(long, default_value = "pipelines/config/local.yaml")]
    config: PathBuf,
}

const WEBHOOK_LIMIT_LINE: &str = "      timeout: 5s\n    rate_limit: {per_second: 200, burst: 50}";

fn config_for(args: &Args, name: &str, bucket: &str, rate_limit: Option<(f64, f64)>) -> Result<PipelineConfig> {
    let base = args.config.parent().unwrap_or(std::path::Path::new("."));
    let limit = match rate_limit {
        Some((per_second, burst)) => {
            format!("      timeout: 5s\n    rate_limit: {{per_second: {per_second}, burst: {burst}}}")
        }
        None => "      timeout: 5s".to_string(),
    };
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    anyhow::ensure!(
        text.contains(WEBHOOK_LIMIT_LINE),
        "{}: the webhook rate_limit line changed",
        args.config.display()
    );
    let text = text
        .replace(WEBHOOK_LIMIT_LINE, &limit)
        .replace("/hooks/local", &format!("/hooks/{bucket}"))
        .replace(
            "templates: ../../schemas/templates",
            &format!("templates: {}", base.join("../../schemas/templates").display()),
        )
        .replace("  dir: ../journeys", "  dir: null")
        .replace("  dir: ../segments", "  dir: null")
        .replace("name: marketing.deliveries", &format!("name: {name}.deliveries"))
        .replace("prefix: connector.", &format!("prefix: {name}.connector."))
        .replace("group_id: touchpoint.normalization", &format!("group_id: {name}.group"));
    Ok(PipelineConfig::parse(&text, &args.config)?)
}

/// Delivers `count` webhooks through a worker; returns the peer's arrival times (seconds).
fn run(
    config: &PipelineConfig,
    peers: &Peers,
    bucket: &str,
    count: usize,
    rt: &tokio::runtime::Runtime,
) -> Result<Vec<f64>> {
    let topic = config.topics.channel(touchpoint_schemas::Channel::Webhook).source;
    rt.block_on(ensure_topics(&config.kafka, &config.topics.all()))?;
    rt.block_on(peers.control(bucket, serde_json::json!({"secret": "whsec-local-demo"})))?;
    let records: Vec<OutgoingRecord> = (0..count)
        .map(|i| {
            let m = serde_json::json!({
                "idempotency_key": format!("{bucket}-{i}"), "channel": "webhook", "tenant_id": "acme",
                "subject_id": format!("u{i}"), "recipient": null, "template": null, "data": {"n": i},
                "metadata": {}, "category": "bench", "purpose": "marketing", "priority": 0, "event_id": format!("e{i}"),
                "event_type": "bench", "occurred_at": 0, "rule_id": "bench", "intents_version": "v",
                "caps_version": "c", "journey": null
            });
            OutgoingRecord {
                topic: topic.clone(),
                partition: None,
                key: Some(format!("u{i}").into_bytes()),
                payload: Some(m.to_string().into_bytes()),
                headers: vec![],
            }
        })
        .collect();
    rt.block_on(AckedProducer::new(&config.kafka)?.send_all(&records))?;
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (config, stop) = (config.clone(), stop.clone());
        rt.spawn(async move {
            touchpoint::connect::connect_until(&config, touchpoint_schemas::Channel::Webhook, stop).await
        })
    };
    let arrivals = rt.block_on(async {
        loop {
            let r = peers.records(bucket).await?;
            if r.len() >= count {
                return anyhow::Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })?;
    stop.store(true, Ordering::Relaxed);
    rt.block_on(worker)??;
    let mut at: Vec<f64> = arrivals.iter().filter_map(|r| r["at"].as_f64()).collect();
    at.sort_by(f64::total_cmp);
    Ok(at)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let args = Args::parse();
    let rt = touchpoint_connectors::io_runtime("bench-io")?;
    let peers = Peers::new(&ServiceAddresses::from_env());
    let settle = 2.0;

    // Limited: enough messages to keep the worker busy past the window.
    let count = ((args.limit * (args.window + settle + 2.0)) + args.burst).ceil() as usize;
    let name = unique_name("ratebench");
    let bucket = name.replace('_', "-").to_lowercase();
    let config = config_for(&args, &name, &bucket, Some((args.limit, args.burst)))?;
    eprintln!("limited run: {count} webhooks at {}/s (burst {})...", args.limit, args.burst);
    let at = run(&config, &peers, &bucket, count, &rt)?;
    let start = at[0] + settle;
    let in_window = at.iter().filter(|t| **t >= start && **t < start + args.window).count();
    let measured = in_window as f64 / args.window;
    let ratio = measured / args.limit;

    // Baseline: no limit.
    let name = unique_name("ratebench");
    let bucket = name.replace('_', "-").to_lowercase();
    let config = config_for(&args, &name, &bucket, None)?;
    eprintln!("unlimited run: {count} webhooks...");
    let at = run(&config, &peers, &bucket, count, &rt)?;
    let span = at[at.len() - 1] - at[0];
    let capacity = (at.len() - 1) as f64 / span.max(1e-9);

    println!("rate limit {:.1}/s (burst {}), window {:.0} s after {settle:.0} s:", args.limit, args.burst, args.window);
    println!("  measured       {measured:.2}/s ({in_window} sends)  ratio to the limit {ratio:.3}");
    println!("  unlimited      {capacity:.1}/s  (the limit is {:.3} of capacity)", args.limit / capacity);
    println!("  within 10%     {}", if (ratio - 1.0).abs() <= 0.10 { "yes" } else { "NO" });
    anyhow::ensure!((ratio - 1.0).abs() <= 0.10, "the measured rate is not within 10% of the limit");
    anyhow::ensure!(capacity > args.limit * 1.2, "the machine cannot even reach the limit; the check says nothing");
    Ok(())
}
