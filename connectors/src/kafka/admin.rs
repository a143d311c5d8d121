//! Topic creation through the admin API, and the start-up wait for a broker.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use super::{KafkaConfig, TopicSpec};

/// Waits until a broker answers a metadata request, logging what it waits for about every 5 s, and
/// gives up after `config.startup_wait` with an error that names the bootstrap servers. Without it a
/// command started before its cluster (or while a broker restarts) sat in librdkafka's retries
/// without a word.
pub async fn wait_for_brokers(config: &KafkaConfig) -> Result<()> {
    let client = config.admin_config();
    let (brokers, limit) = (config.brokers.clone(), config.startup_wait);
    tokio::task::spawn_blocking(move || {
        let probe: BaseConsumer = client.create().context("creating the Kafka metadata client")?;
        let started = Instant::now();
        let mut waited_before = false;
        loop {
            let attempt =
                (limit.saturating_sub(started.elapsed())).clamp(Duration::from_millis(100), Duration::from_secs(5));
            match probe.fetch_metadata(None, attempt) {
                Ok(metadata) => {
                    if waited_before {
                        tracing::info!(brokers, waited = ?started.elapsed(), "Kafka answers");
                    }
                    tracing::debug!(brokers = metadata.brokers().len(), "Kafka metadata");
                    return Ok(());
                }
                Err(e) if started.elapsed() >= limit => {
                    bail!(
                        "no Kafka broker answered at {brokers} within {limit:?} (last error: {e}); is the cluster \
                         up and `kafka.brokers` right? (`kafka.startup_wait` sets how long to wait)"
                    )
                }
                Err(e) => {
                    tracing::warn!(
                        brokers,
                        waited_s = started.elapsed().as_secs(),
                        gives_up_after_s = limit.as_secs(),
                        error = %e,
                        "waiting for Kafka: no broker answers metadata yet"
                    );
                    waited_before = true;
                }
            }
        }
    })
    .await
    .context("the wait for Kafka panicked")?
}

/// Creates every topic that does not exist yet; existing topics are left as they are. Waits for the
/// cluster first ([`wait_for_brokers`]): every command starts here.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[TopicSpec]) -> Result<()> {
    wait_for_brokers(config).await?;
    let admin: AdminClient<DefaultClientContext> =
        config.admin_config().create().context("creating the Kafka admin client")?;
    let configs: Vec<Vec<(&str, String)>> = topics.iter().map(TopicSpec::configs).collect();
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .zip(&configs)
        .map(|(t, cfgs)| {
            let mut nt = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(config.replication_factor));
            for (k, v) in cfgs {
                nt = nt.set(k, v);
            }
            nt
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new_topics, &options).await.context("CreateTopics request")?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::debug!(topic = %name, "topic exists"),
            Err((name, code)) => bail!("could not create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Deletes every topic whose name starts with `prefix`; returns how many. For benchmarks and tests that
/// create scratch topics under a unique prefix: an in-memory broker keeps every record of a topic until
/// the topic is deleted, so leftovers of earlier runs grow its memory and slow the runs after them.
pub async fn delete_topics_with_prefix(config: &KafkaConfig, prefix: &str) -> Result<usize> {
    if prefix.is_empty() {
        bail!("refusing to delete every topic (empty prefix)");
    }
    let admin: AdminClient<DefaultClientContext> =
        config.admin_config().create().context("creating the Kafka admin client")?;
    let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(10)).context("Metadata request")?;
    let names: Vec<String> =
        metadata.topics().iter().map(|t| t.name()).filter(|name| name.starts_with(prefix)).map(String::from).collect();
    if names.is_empty() {
        return Ok(0);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.delete_topics(&refs, &options).await.context("DeleteTopics request")?;
    for result in results {
        match result {
            Ok(name) => tracing::debug!(topic = %name, "deleted topic"),
            Err((name, RDKafkaErrorCode::UnknownTopicOrPartition)) => tracing::debug!(topic = %name, "already gone"),
            Err((name, code)) => bail!("could not delete topic {name}: {code}"),
        }
    }
    Ok(names.len())
}
