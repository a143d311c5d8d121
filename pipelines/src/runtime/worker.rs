//! One worker's loop: it builds its copy of the dataflow, steps it, commits the source offsets of the
//! epochs the sinks have made durable (or, under `exactly_once_v2`, feeds the source positions to the
//! transaction) and reports the commit lag.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use rdkafka::consumer::CommitMode;
use timely::worker::Worker;
use touchpoint_connectors::clickhouse::{
    DecisionStore, EventStore, ProfileStore, SegmentMembershipStore, TransitionStore,
};
use touchpoint_connectors::kafka::owned_partitions;
use touchpoint_connectors::kafka::{AckedProducer, PartitionSource};
use touchpoint_connectors::schema_registry::RegistryClient;
use touchpoint_operators::dedupe::EventDeduplicator;
use touchpoint_operators::guardrails::GuardrailState;
use touchpoint_operators::profile::ProfileTable;

use super::Shared;
use crate::stages::kafka_source::{SourceState, StopPolicy};
use crate::stages::tally::TallyBook;
use crate::stages::transaction::{TransactionalCommit, TxnItem};
use crate::stages::Epoch;
use crate::topology::{
    self, AckedWriters, ClickHouseSinks, EvaluateInput, EventInput, KafkaWriters, OutputTopics, TableInput, WorkerParts,
};

pub(super) fn run_worker(worker: &mut Worker, shared: &Shared) -> Result<()> {
    let config = &shared.config;
    let (index, peers) = (worker.index(), worker.peers());
    let topic = config.topics.events.name.clone();
    let owned = owned_partitions(shared.partitions, index, peers);
    let source = match &shared.replay {
        None => PartitionSource::open(
            &config.kafka,
            &config.pipeline.group_id,
            &topic,
            owned,
            config.source.verify_resume_offsets,
        )?,
        Some(replay) => {
            // Only the owned partitions the range covers (a range given as offsets may name a few).
            let (start, end) = owned.iter().filter_map(|&p| replay.range(p).map(|(s, e)| ((p, s), (p, e)))).unzip();
            PartitionSource::open_range(&config.kafka, &config.pipeline.group_id, &topic, start, end)?
        }
    };
    let store = EventStore::new(&config.clickhouse);

    // After a crash, the records between the committed offsets and what the sink already stored are
    // read again: find the ones already stored so they are skipped, not stored twice.
    let already_stored: HashSet<(i32, i64)> =
        shared.runtime.block_on(store.stored_offsets(&topic, &source.positions()))?.into_iter().collect();
    if !already_stored.is_empty() {
        tracing::info!(
            worker = index,
            records = already_stored.len(),
            "records past the committed offsets are already stored; they will be skipped"
        );
    }

    // Deduplication state: the ids this worker owns that were stored within the TTL.
    let mut deduplicator = EventDeduplicator::new(&config.dedupe);
    let restored_ids = shared.restored_ids.lock().ok().and_then(|mut m| m.remove(&index)).unwrap_or_default();
    let restored = restored_ids.len();
    for (key, seen_at_ms) in restored_ids {
        deduplicator.remember(key, seen_at_ms);
    }
    tracing::info!(worker = index, partitions = ?source.partitions(), restored_event_ids = restored, "worker starting");

    let state = SourceState::new(source, already_stored);
    let tally = TallyBook::default();
    let consent_source = PartitionSource::open_from_beginning(
        &config.kafka,
        &format!("{}.consent", config.pipeline.group_id),
        &config.topics.consent.name,
        owned_partitions(shared.consent_partitions, index, peers),
    )?;
    let profile_source = PartitionSource::open_from_beginning(
        &config.kafka,
        &format!("{}.profiles", config.pipeline.group_id),
        &config.topics.profiles.name,
        owned_partitions(shared.profile_partitions, index, peers),
    )?;
    let evaluate_source = PartitionSource::open_from_end(
        &config.kafka,
        &format!("{}.evaluate", config.pipeline.group_id),
        &config.topics.evaluate_requests(&config.pipeline.group_id).name,
        owned_partitions(shared.evaluate_partitions, index, peers),
    )?;
    let profiles = shared.restored_profiles.lock().ok().and_then(|mut m| m.remove(&index)).unwrap_or_default();
    let segment_state = shared.restored_segments.lock().ok().and_then(|mut m| m.remove(&index)).unwrap_or_default();
    let caps_state = shared.restored_caps.lock().ok().and_then(|mut m| m.remove(&index)).unwrap_or_default();
    let journey_state = shared.restored_journeys.lock().ok().and_then(|mut m| m.remove(&index)).unwrap_or_default();
    let kafka = if shared.eos() {
        KafkaWriters::Transactional(TransactionalCommit {
            producer: if index == 0 { shared.transaction.clone() } else { None },
            source_topic: config.topics.events.name.clone(),
            fatal: shared.fatal.clone(),
            stop: shared.stop.clone(),
        })
    } else {
        KafkaWriters::Acked(AckedWriters {
            dead_letters: AckedProducer::new(&config.kafka)?,
            consent_dead_letters: AckedProducer::new(&config.kafka)?,
            profile_dead_letters: AckedProducer::new(&config.kafka)?,
            late_events: AckedProducer::new(&config.kafka)?,
            sends: AckedProducer::new(&config.kafka)?,
            caps_changelog: AckedProducer::new(&config.kafka)?,
            journeys_changelog: AckedProducer::new(&config.kafka)?,
            profiles_changelog: AckedProducer::new(&config.kafka)?,
            segments_changelog: AckedProducer::new(&config.kafka)?,
        })
    };
    let group = &config.pipeline.group_id;
    let capture = if shared.describe && index == 0 { crate::describe::Capture::start(worker) } else { None };
    let handles = topology::build(
        worker,
        WorkerParts {
            events: EventInput {
                source: state.clone(),
                topic,
                registry: Arc::new(RegistryClient::new(&config.schema_registry)?),
                normalizer: config.built()?.normalizer.clone(),
                deduplicator,
                event_time: config.event_time.clone(),
            },
            consent: TableInput {
                source: SourceState::new(consent_source, HashSet::new()),
                topic: config.topics.consent.name.clone(),
                default_tenant: config.normalize.default_tenant.clone(),
            },
            profiles: TableInput {
                source: SourceState::new(profile_source, HashSet::new()),
                topic: config.topics.profiles.name.clone(),
                default_tenant: config.normalize.default_tenant.clone(),
            },
            evaluate: EvaluateInput {
                source: SourceState::new(evaluate_source, HashSet::new()),
                replies: config.topics.evaluate_replies(&config.pipeline.group_id).name,
                producer: AckedProducer::new(&config.kafka)?,
            },
            rules: config.guardrail_rules(shared.journeys.clone(), shared.segments.clone())?,
            guardrail_state: GuardrailState {
                consent: Default::default(),
                profiles: ProfileTable::new(profiles),
                caps: caps_state,
                journeys: journey_state,
                segments: segment_state,
            },
            clickhouse: ClickHouseSinks {
                events: store,
                decisions: DecisionStore::new(&config.clickhouse),
                transitions: TransitionStore::new(&config.clickhouse),
                profiles: ProfileStore::new(&config.clickhouse),
                memberships: SegmentMembershipStore::new(&config.clickhouse),
            },
            topics: OutputTopics {
                dead_letter: config.topics.dead_letter.name.clone(),
                consent_dead_letter: config.topics.consent_dead_letter.name.clone(),
                profiles_dead_letter: config.topics.profiles_dead_letter.name.clone(),
                late_events: config.topics.late_events.name.clone(),
                connector_prefix: config.topics.connectors.prefix.clone(),
                caps_changelog: config.topics.caps_changelog(group).name,
                journeys_changelog: config.topics.journeys_changelog(group).name,
                profiles_changelog: config.topics.profiles_changelog(group).name,
                segments_changelog: config.topics.segments_changelog(group).name,
            },
            kafka,
            epochs: config.epochs.clone(),
            stop: StopPolicy {
                until_drained: shared.until_drained,
                drain_idle: config.source.drain_idle,
                stop: shared.stop.clone(),
                lease: shared.lease.clone(),
            },
            runtime: shared.runtime.clone(),
            tally: tally.clone(),
            totals: shared.totals.clone(),
        },
    );
    if let Some(capture) = capture {
        let _ = shared.topology.set(capture.finish(worker));
    }
    let mut tallies = Some(handles.tallies);
    let mut positions = handles.positions;
    // The first epoch whose source positions have not gone to the transaction yet.
    let mut positions_from: Epoch = 0;
    let mut last_commit: Option<Vec<(i32, i64)>> = None;
    let mut failure = None;
    // Under exactly_once_v2 the offsets commit inside the transactions, not from here.
    let commits = shared.replay.is_none() && !shared.eos();
    let mut lag = CommitLag::new(index, &state.borrow().source.positions());
    let _ = shared.start_up.set(shared.started.elapsed());
    loop {
        // Parks the thread when no operator is active; Kafka data, finished sink writes and the
        // source's own timers wake it.
        worker.step_or_park(Some(Duration::from_millis(10)));
        let frontier = handles.sinks.with_frontier(|f| f.first().copied());

        {
            let mut st = state.borrow_mut();
            if let Some(positions) = st.take_committable(frontier) {
                if commits {
                    if let Err(e) = st.source.commit(&positions, CommitMode::Async) {
                        tracing::warn!(error = %e, "offset commit failed; the next epoch's commit covers it");
                    }
                    crate::metrics::COMMITS.add(1);
                }
                lag.committed(&positions);
                last_commit = Some(positions);
            }
            lag.observe(&st.source);
            if let Some(input) = positions.as_mut() {
                // Each closed epoch's positions enter at that epoch; the input then follows the source's
                // open epoch, so the transaction of an epoch waits for them and for nothing later.
                for (&epoch, closed) in st.closed.range(positions_from..) {
                    input.advance_to(epoch);
                    for &(partition, next) in closed {
                        input.send(TxnItem::Position { partition, next });
                    }
                    positions_from = epoch + 1;
                }
                match st.open {
                    Some(open) if open > *input.time() => input.advance_to(open),
                    Some(_) => {}
                    None if st.finished => positions = None,
                    None => {}
                }
            }
            if let Some(e) = st.error.take() {
                // Stop every worker of this process: the others would otherwise keep the dataflow
                // (and this worker's loop) alive forever.
                tracing::error!(worker = index, error = %e, "source failed; stopping the pipeline");
                shared.stop.store(true, Ordering::Relaxed);
                failure = Some(e);
            }
        }

        if let Some(input) = tallies.as_mut() {
            for (epoch, partial) in tally.take_before(frontier) {
                if epoch >= *input.time() {
                    input.advance_to(epoch);
                    input.send(partial);
                }
            }
            match frontier {
                Some(f) if f > *input.time() => input.advance_to(f),
                Some(_) => {}
                None => drop(tallies.take()),
            }
        }
        if frontier.is_none() && tallies.is_none() && handles.tallies_logged.done() {
            break;
        }
    }
    if let Some(fatal) = shared.fatal.lock().ok().and_then(|f| f.clone()) {
        // Fenced: nothing was committed since; the open epochs are left to the instance that won.
        return Err(anyhow!(fatal));
    }
    match last_commit {
        Some(positions) if commits => {
            state.borrow().source.commit(&positions, CommitMode::Sync)?;
            tracing::info!(worker = index, ?positions, "committed final offsets");
        }
        Some(positions) if shared.eos() => {
            tracing::info!(worker = index, ?positions, "final positions committed with the last transaction")
        }
        Some(positions) => tracing::info!(worker = index, ?positions, "replay done (offsets not committed)"),
        None => {}
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// How far the committed offsets trail the topic, for the metrics and a log line while commits stall
/// (a sink that cannot write holds its epochs: see `crate::metrics`).
struct CommitLag {
    worker: usize,
    committed: HashMap<i32, i64>,
    last_commit: std::time::Instant,
    last_check: std::time::Instant,
    last_log: std::time::Instant,
}

impl CommitLag {
    /// `start`: where this run began reading (committed, or the replay's start).
    fn new(worker: usize, start: &[(i32, i64)]) -> Self {
        let now = std::time::Instant::now();
        let committed = start.iter().copied().collect();
        CommitLag { worker, committed, last_commit: now, last_check: now, last_log: now }
    }

    fn committed(&mut self, positions: &[(i32, i64)]) {
        self.committed.extend(positions.iter().copied());
        self.last_commit = std::time::Instant::now();
    }

    /// At most once a second: records between the committed offsets and the end the last fetch saw.
    fn observe(&mut self, source: &PartitionSource) {
        if self.last_check.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_check = std::time::Instant::now();
        let positions = source.positions();
        let records: i64 = positions
            .iter()
            .map(|&(p, next)| {
                let end = source.cached_high_watermark(p).unwrap_or(next).max(next);
                let committed = self.committed.get(&p).copied().unwrap_or(next);
                (end - committed).max(0)
            })
            .sum();
        let behind = positions.iter().any(|&(p, next)| self.committed.get(&p).is_some_and(|&c| c < next));
        let stalled = if behind { self.last_commit.elapsed().as_secs() } else { 0 };
        crate::metrics::worker_lag(self.worker, records, stalled);
        if stalled >= 5 && self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = std::time::Instant::now();
            tracing::warn!(
                worker = self.worker,
                lag_records = records,
                seconds_since_commit = stalled,
                "offsets not committed: a sink is behind (see touchpoint_sink_retrying_epochs); \
                 catching up once it writes"
            );
        }
    }
}
