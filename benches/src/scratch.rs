//! What a benchmark run needs around the pipeline: the shipped pipeline file renamed for the run, and
//! the run's topics and databases removed afterwards.

use std::path::Path;

use anyhow::{Context, Result};
use touchpoint::PipelineConfig;
use touchpoint_connectors::clickhouse::{drop_databases_with_prefix, ClickHouseConfig};
use touchpoint_connectors::kafka::{delete_topics_with_prefix, KafkaConfig};

/// The topics and ClickHouse databases of a run, all named with one prefix, removed when this is
/// dropped. The local broker keeps topics in memory: without this, every 1M-event run left ~1 GB in it and
/// its tables in ClickHouse, and each run was slower than the one before (53k → 32k events/s over six
/// runs of the same build).
pub struct Scratch {
    pub kafka: KafkaConfig,
    pub clickhouse: ClickHouseConfig,
    pub prefix: String,
}

impl Scratch {
    pub fn remove(&self) {
        let removed = tokio::runtime::Builder::new_current_thread().enable_all().build().map(|rt| {
            rt.block_on(async {
                (
                    delete_topics_with_prefix(&self.kafka, &self.prefix).await,
                    drop_databases_with_prefix(&self.clickhouse, &self.prefix).await,
                )
            })
        });
        match removed {
            Ok((Ok(topics), Ok(databases))) => {
                tracing::info!(prefix = %self.prefix, topics, databases, "removed the run's topics and databases")
            }
            Ok((topics, databases)) => tracing::warn!(
                prefix = %self.prefix,
                topics = ?topics.err(),
                databases = ?databases.err(),
                "could not remove all of the run's topics and databases"
            ),
            Err(e) => tracing::warn!(error = %e, "no runtime to remove the run's topics and databases"),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The pipeline file's text with every topic, the group and the database renamed for this run
/// (`path` is where the text came from: the journeys and segments next to it).
pub fn renamed(text: &str, path: &Path, name: &str, partitions: i32) -> String {
    // Absolute: the text may be written to a file anywhere (relative dirs are read from the file's).
    let journeys = path.parent().unwrap_or(Path::new(".")).join("../journeys");
    let journeys = std::path::absolute(&journeys).unwrap_or(journeys);
    text.replace("name: marketing.events.dlq", &format!("name: {name}.dlq"))
        .replace("name: marketing.events.late", &format!("name: {name}.late"))
        .replace("  dir: ../journeys", &format!("  dir: {}", journeys.display()))
        .replace("  dir: ../segments", &format!("  dir: {}", journeys.with_file_name("segments").display()))
        .replace("name: marketing.profiles.dlq", &format!("name: {name}.profiles.dlq"))
        .replace("name: marketing.profiles", &format!("name: {name}.profiles"))
        .replace("name: marketing.consent.dlq", &format!("name: {name}.consent.dlq"))
        .replace("name: marketing.consent", &format!("name: {name}.consent"))
        .replace("name: marketing.deliveries", &format!("name: {name}.deliveries"))
        .replace("prefix: connector.", &format!("prefix: {name}.connector."))
        .replace("name: marketing.events", &format!("name: {name}.events"))
        .replace("partitions: 4", &format!("partitions: {partitions}"))
        .replace("group_id: touchpoint.normalization", &format!("group_id: {name}.pipeline"))
        .replace("${TOUCHPOINT_CLICKHOUSE_DATABASE:-touchpoint}", &name.replace('.', "_"))
}

/// [`renamed`], parsed.
pub fn bench_config(path: &Path, name: &str, partitions: i32) -> Result<PipelineConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut config = PipelineConfig::parse(&renamed(&text, path, name, partitions), path)?;
    config.pipeline.metrics_listen = None;
    Ok(config)
}

/// A port free on 127.0.0.1 now (for a server the run starts).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// What a pipeline file holds of an API key: its SHA-256, lower-case hex.
pub fn sha256_hex(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}
