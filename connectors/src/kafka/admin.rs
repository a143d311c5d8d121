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
