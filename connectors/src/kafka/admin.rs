//! Topic creation through the admin API.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::{KafkaConfig, TopicSpec};

/// Creates every topic that does not exist yet; existing topics are left as they are.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[TopicSpec]) -> Result<()> {
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
