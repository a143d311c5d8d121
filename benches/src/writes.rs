//! "Writes alone": the second ceiling of the end-to-end harness. Whatever the pipeline computes, it has to
//! hand the broker and ClickHouse what its sinks write (every normalized event, decision and journey
//! transition to ClickHouse; sends, state changelogs and dead letters to Kafka). This module computes
//! those sink inputs for the benchmark's events *before* any clock starts (with [`Chain`], the
//! pipeline's own operator code), then times writing them with the pipeline's own sink writers
//! (`touchpoint::stages::sinks`), every sink at once, as the dataflow does, but with nothing to compute.
//!
//! The rate of that run bounds any pipeline that writes the same outputs to the same services on the same
//! machine: on a machine where the broker and ClickHouse share the cores with the pipeline, their CPU per
//! event is spent whoever produced the rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use touchpoint::stages::epoch_sink::{Batch, BatchWriter};
use touchpoint::stages::normalize::DeadLetter;
use touchpoint::stages::sinks::{
    ClickHouseDecisions, ClickHouseEvents, ClickHouseSegmentMemberships, ClickHouseTransitions, ConnectorTopics,
    StateChangelog, TopicSink,
};
use touchpoint::PipelineConfig;
use touchpoint_connectors::clickhouse::{DecisionStore, EventStore, SegmentMembershipStore, TransitionStore};
use touchpoint_connectors::kafka::AckedProducer;
use touchpoint_operators::decision::{Decision, DecisionKind};
use touchpoint_operators::guardrails::{CapSnapshot, JourneySnapshot, SegmentSnapshot};
use touchpoint_operators::journey::Transition;
use touchpoint_operators::segment::SegmentChange;
use touchpoint_schemas::NormalizedEvent;

use crate::chain::{source_records, Chain, ChainCounts};

/// The sink inputs of the benchmark's events, in batches of one "epoch" each.
#[derive(Default)]
pub struct SinkBatches {
    pub events: Vec<Arc<Batch<NormalizedEvent>>>,
    pub decisions: Vec<Arc<Batch<Arc<Decision>>>>,
    pub sends: Vec<Arc<Batch<Arc<Decision>>>>,
    pub transitions: Vec<Arc<Batch<Transition>>>,
    pub caps: Vec<Arc<Batch<CapSnapshot>>>,
    pub journeys: Vec<Arc<Batch<JourneySnapshot>>>,
    pub segments: Vec<Arc<Batch<SegmentSnapshot>>>,
    pub memberships: Vec<Arc<Batch<SegmentChange>>>,
    pub dead_letters: Vec<Arc<Batch<DeadLetter>>>,
    pub counts: ChainCounts,
}

impl SinkBatches {
    /// Runs `count` generator events of `subjects` subjects (the e2e mix and seed) through the operator
    /// chain configured by `config`, `per_batch` source records per epoch.
    pub fn compute(config: &PipelineConfig, count: usize, subjects: usize, per_batch: usize) -> Self {
        let (records, schema) = source_records(count, subjects);
        let mut chain = Chain::new(config, schema, subjects);
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut out = SinkBatches::default();
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let epoch: Vec<_> = records.by_ref().take(per_batch).collect();
            let inputs = chain.outputs(epoch, now_ms, &mut out.counts);
            let sends: Vec<_> = inputs.decisions.iter().filter(|d| d.kind == DecisionKind::Allowed).cloned().collect();
            out.events.push(batch(inputs.events));
            out.decisions.push(batch(inputs.decisions));
            out.sends.push(batch(sends));
            out.transitions.push(batch(inputs.transitions));
            out.caps.push(batch(inputs.caps));
            out.journeys.push(batch(inputs.journeys));
            out.segments.push(batch(inputs.segments));
            out.memberships.push(batch(inputs.memberships));
            out.dead_letters.push(batch(inputs.dead_letters));
        }
        out
    }
}

fn batch<D>(records: Vec<D>) -> Arc<Batch<D>> {
    Arc::new(Batch::new(vec![records]))
}

/// How long each sink took to write all of its batches, and the whole run.
pub struct WritesReport {
    pub elapsed: Duration,
    /// (sink, time until its last batch was durable)
    pub sinks: Vec<(&'static str, Duration)>,
}

/// Writes every batch with the pipeline's sink writers into `config`'s topics and database (which must
/// exist): every sink at once, each with its own writes in flight ([`BatchWriter::writes_in_flight`]),
/// its batches in order, as the dataflow's epoch sinks do. Only the writing is timed.
pub async fn write_all(config: &PipelineConfig, batches: &SinkBatches) -> Result<WritesReport> {
    let group = &config.pipeline.group_id;
    let producer = || AckedProducer::new(&config.kafka);
    let events = ClickHouseEvents { store: EventStore::new(&config.clickhouse) };
    let decisions = ClickHouseDecisions { store: DecisionStore::new(&config.clickhouse) };
    let transitions = ClickHouseTransitions { store: TransitionStore::new(&config.clickhouse) };
    let sends = ConnectorTopics { producer: producer()?, prefix: config.topics.connectors.prefix.clone() };
    let caps = StateChangelog {
        name: "CapsChangelog",
        producer: producer()?,
        topic: config.topics.caps_changelog(group).name,
    };
    let journeys = StateChangelog {
        name: "JourneysChangelog",
        producer: producer()?,
        topic: config.topics.journeys_changelog(group).name,
    };
    let segments = StateChangelog {
        name: "SegmentsChangelog",
        producer: producer()?,
        topic: config.topics.segments_changelog(group).name,
    };
    let memberships = ClickHouseSegmentMemberships { store: SegmentMembershipStore::new(&config.clickhouse) };
    let dead_letters =
        TopicSink { name: "DeadLetterTopic", producer: producer()?, topic: config.topics.dead_letter.name.clone() };

    let started = Instant::now();
    let sinks = futures::try_join!(
        write_sink(&events, &batches.events, started),
        write_sink(&decisions, &batches.decisions, started),
        write_sink(&sends, &batches.sends, started),
        write_sink(&transitions, &batches.transitions, started),
        write_sink(&caps, &batches.caps, started),
        write_sink(&journeys, &batches.journeys, started),
        write_sink(&segments, &batches.segments, started),
        write_sink(&memberships, &batches.memberships, started),
        write_sink(&dead_letters, &batches.dead_letters, started),
    )?;
    let elapsed = started.elapsed();
    let sinks = vec![sinks.0, sinks.1, sinks.2, sinks.3, sinks.4, sinks.5, sinks.6, sinks.7, sinks.8];
    Ok(WritesReport { elapsed, sinks })
}

/// One sink's batches, in order, with at most its own number of writes in flight.
async fn write_sink<D, W: BatchWriter<D>>(
    writer: &W,
    batches: &[Arc<Batch<D>>],
    started: Instant,
) -> Result<(&'static str, Duration)> {
    let mut writes = futures::stream::iter(batches.iter().enumerate().filter(|(_, b)| !b.is_empty()))
        .map(|(epoch, b)| writer.write(epoch as u64, b.clone()))
        .buffered(writer.writes_in_flight().max(1));
    while let Some(written) = writes.next().await {
        written?;
    }
    Ok((writer.name(), started.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::local_config;

    #[test]
    fn the_batches_hold_what_the_chain_counted() {
        let batches = SinkBatches::compute(&local_config(), 3_000, 500, 1_000);
        let c = batches.counts;
        let total = |sizes: Vec<usize>| sizes.into_iter().sum::<usize>();
        assert_eq!(c.records, 3_000);
        assert_eq!(batches.events.len(), 3, "one batch per epoch of 1,000 records");
        assert_eq!(total(batches.events.iter().map(|b| b.len()).collect()), c.events);
        assert_eq!(total(batches.decisions.iter().map(|b| b.len()).collect()), c.decisions);
        assert_eq!(total(batches.sends.iter().map(|b| b.len()).collect()), c.sends);
        assert_eq!(total(batches.transitions.iter().map(|b| b.len()).collect()), c.transitions);
        let changelogs = total(batches.caps.iter().map(|b| b.len()).collect())
            + total(batches.journeys.iter().map(|b| b.len()).collect())
            + total(batches.segments.iter().map(|b| b.len()).collect());
        assert_eq!(changelogs, c.changelog_records);
        assert_eq!(total(batches.memberships.iter().map(|b| b.len()).collect()), c.memberships);
        assert!(c.memberships > 0, "the shipped segments have members");
        assert_eq!(total(batches.dead_letters.iter().map(|b| b.len()).collect()), c.rejected);
        // The generator's mix: some of everything.
        assert!(c.rejected > 0 && c.sends > 0 && c.transitions > 0 && c.sends < c.decisions);
        assert!(batches.sends.iter().flat_map(|b| b.iter()).all(|d| d.kind == DecisionKind::Allowed));
    }
}
