//! The journey versions a run executes: the current files, plus every older version recorded in the
//! versions topic (subjects continue on the version they entered with).

use anyhow::{bail, Result};
use touchpoint_connectors::kafka::AckedProducer;

use super::restore::read_for_restore;
use super::PartialRestore;
use touchpoint_operators::journey::{Journey, Journeys};

use crate::config::PipelineConfig;

/// The journeys to run: the current files (`config.journeys()`), plus every older version recorded in the versions
/// topic
/// (subjects continue on the version they entered with). Current versions not yet recorded are
/// recorded first, so a version is archived before any subject can enter it.
pub fn load_journeys(
    config: &PipelineConfig,
    current: Vec<Journey>,
    runtime: &tokio::runtime::Runtime,
    partial: PartialRestore,
) -> Result<Journeys> {
    let mut journeys = Journeys::new(current.clone(), &config.intents.time_zone_attribute);
    if current.is_empty() {
        return Ok(journeys);
    }
    let topic = config.topics.journey_versions(&config.pipeline.group_id).name;
    let archived = read_for_restore(config, &topic, "the journey versions", partial)?;
    let mut known = std::collections::HashSet::new();
    for r in &archived {
        let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).to_string();
        let text = String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default()).to_string();
        match Journey::parse(&text, std::path::Path::new(&format!("{topic}/{key}"))) {
            Ok(j) => {
                known.insert(key);
                journeys.archive(j);
            }
            Err(e) if partial == PartialRestore::Refuse => bail!(
                "restoring the journey versions: {topic} partition {} offset {} does not validate: {e} \
                 (start with --accept-partial-restore to run without it; subjects on it leave the journey)",
                r.partition,
                r.offset
            ),
            Err(e) => tracing::error!(%e, "an archived journey version no longer validates; subjects on it will leave"),
        }
    }
    let mut new = Vec::new();
    for j in &current {
        let key = format!("{}/{}", j.id, j.version);
        if !known.contains(&key) {
            new.push(touchpoint_connectors::kafka::OutgoingRecord {
                partition: None,
                topic: topic.clone(),
                key: Some(key.into_bytes()),
                payload: Some(serde_yaml::to_string(&j.source)?.into_bytes()),
                headers: vec![],
            });
        }
    }
    if !new.is_empty() {
        runtime.block_on(AckedProducer::new(&config.kafka)?.send_all(&new))?;
    }
    for j in journeys.current() {
        tracing::info!(journey = %j.id, version = %j.version, steps = j.steps.len(), "journey loaded");
    }
    tracing::info!(versions = journeys.versions().count(), newly_archived = new.len(), "journeys ready");
    Ok(journeys)
}
