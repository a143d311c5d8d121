//! Running the pipeline: a timely computation whose workers each own a share of the source partitions.
//!
//! The worker loop steps the dataflow and, whenever the sinks' probe passes epochs, commits the source
//! offsets recorded at the close of the last such epoch. See `docs/time-and-delivery.md`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::consumer::CommitMode;
use timely::worker::Worker;
use touchpoint_connectors::clickhouse::{DecisionStore, EventStore, TransitionStore};
use touchpoint_connectors::kafka::source::{owned_partitions, partition_count};
use touchpoint_connectors::kafka::{ensure_topics, read_all, AckedProducer, PartitionSource, TransactionalProducer};
use touchpoint_connectors::schema_registry::RegistryClient;
use touchpoint_operators::consent::SubjectRef;
use touchpoint_operators::dedupe::dedupe_key;
use touchpoint_operators::journey::{Journey, Journeys, SubjectJourneys};
use touchpoint_operators::send_ledger::ProcessingGuarantee;
use touchpoint_operators::FastHashMap;
use touchpoint_operators::{EventDeduplicator, Normalizer};

use crate::config::PipelineConfig;
use crate::stages::dedupe::owner;
use crate::stages::kafka_source::{SourceState, StopPolicy};
use crate::stages::tally::{RunTotals, TallyBook};
use crate::stages::transaction::{FatalSlot, TransactionalCommit, TxnItem};
use crate::stages::Epoch;
use crate::topology::{self, WorkerParts};
use touchpoint_operators::guardrails::{GuardrailState, SubjectSendState};
use touchpoint_operators::key_groups::owner as guardrail_owner;

/// How to run: parallelism (timely's threads/processes) and when to stop.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Worker threads per process.
    pub workers: usize,
    /// Number of processes of the computation (each started with its own `process` index).
    pub processes: usize,
    /// This process's index, `0..processes`.
    pub process: usize,
    /// One `host:port` per line, one line per process (default: 127.0.0.1:2101, 2102, ...).
    pub hostfile: Option<PathBuf>,
    /// Stop once the source topic is drained (demo, tests, backfills) instead of running forever.
    pub until_drained: bool,
    /// Re-process a range of the source (`touchpoint replay`) instead of resuming from the committed
    /// offsets: the same keys, the same state, no offset commits.
    pub replay: Option<crate::replay::ReplayRange>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { workers: 1, processes: 1, process: 0, hostfile: None, until_drained: false, replay: None }
    }
}

/// What a run did (complete only in process 0, whose worker 0 sums the tallies).
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub totals: RunTotals,
    /// From the start of the run until the first worker began running the dataflow (topics checked,
    /// state restored from changelogs and ClickHouse, journeys loaded).
    pub start_up: Option<Duration>,
}

pub fn run(config: PipelineConfig, options: RunOptions) -> Result<RunReport> {
    let started = Instant::now();
    let runtime = touchpoint_connectors::io_runtime("touchpoint-io").context("starting the async runtime")?;

    let mut topics = config.topics.all();
    topics.push(config.topics.caps_changelog(&config.pipeline.group_id));
    topics.push(config.topics.journeys_changelog(&config.pipeline.group_id));
    topics.push(config.topics.journey_versions(&config.pipeline.group_id));
    runtime.block_on(ensure_topics(&config.kafka, &topics))?;
    // exactly_once_v2: register the job's transactional id before anything reads committed offsets or
    // state, so that an earlier instance still running is fenced (its open transaction aborted) first.
    let eos = config.processing.guarantee == ProcessingGuarantee::ExactlyOnceV2;
    if eos && options.replay.is_some() {
        bail!("touchpoint replay needs processing.guarantee: exactly_once_keys (the send ledger), not exactly_once_v2");
    }
    let transaction = match (eos, options.process) {
        (true, 0) => Some(Arc::new(TransactionalProducer::new(
            &config.kafka,
            &transactional_id(&config.pipeline.group_id),
            &config.pipeline.group_id,
        )?)),
        _ => None,
    };
    let latest = touchpoint_schemas::clickhouse::MIGRATIONS.last().map_or(0, |m| m.version);
    let applied: u32 = runtime
        .block_on(config.clickhouse.client().query("SELECT max(version) FROM schema_migrations").fetch_one())
        .unwrap_or(0);
    if applied < latest {
        bail!(
            "database {} is at schema version {applied}, this pipeline needs {latest}: run `touchpoint migrate` first",
            config.clickhouse.database
        );
    }
    let partitions = partition_count(&config.kafka, &config.topics.events.name)?;
    let replay = match &options.replay {
        Some(range) => Some(crate::replay::resolve(&config, range, partitions)?),
        None => None,
    };
    let consent_partitions = partition_count(&config.kafka, &config.topics.consent.name)?;

    // Frequency-cap state from its changelog, read once per process and handed to the owning workers.
    let peers = options.workers * options.processes;
    let local_workers = options.process * options.workers..(options.process + 1) * options.workers;
    // The restores are independent and mostly wait on the broker and ClickHouse: side by side.
    let current_journeys = config.journeys()?;
    let has_journeys = !current_journeys.is_empty();
    let (restored_caps, journeys, restored_journeys, restored_ids) = std::thread::scope(|s| {
        let caps = s.spawn(|| restore_caps(&config, peers, local_workers.clone()));
        let journeys = s.spawn(|| load_journeys(&config, current_journeys, &runtime));
        let journey_state = s.spawn(|| {
            if !has_journeys {
                return Ok(HashMap::new());
            }
            let topic = config.topics.journeys_changelog(&config.pipeline.group_id).name;
            restore_changelog::<SubjectJourneys>(&config, &topic, "journey", peers, local_workers.clone())
        });
        let ids = runtime.block_on(restore_event_ids(&config, peers, local_workers.clone()));
        let joined = |what: &str| anyhow!("restoring {what} panicked");
        (
            caps.join().map_err(|_| joined("cap state")),
            journeys.join().map_err(|_| joined("journeys")),
            journey_state.join().map_err(|_| joined("journey state")),
            ids,
        )
    });
    let restored_caps = restored_caps??;
    let journeys = journeys??;
    let restored_journeys = restored_journeys??;
    let restored_ids = restored_ids?;

    let stop = Arc::new(AtomicBool::new(false));
    spawn_signal_handler(&runtime, stop.clone());
    if let Some(listen) = config.pipeline.metrics_listen.clone() {
        runtime.spawn(async move {
            if let Err(e) = crate::metrics::serve(listen).await {
                tracing::error!(error = format!("{e:#}"), "metrics endpoint failed");
            }
        });
    }

    let totals = Arc::new(Mutex::new(RunTotals::default()));
    let timely_config =
        timely::Config { communication: communication(&options)?, worker: timely::WorkerConfig::default() };
    let shared = Arc::new(Shared {
        config,
        runtime: runtime.handle().clone(),
        partitions,
        consent_partitions,
        restored_caps: Mutex::new(restored_caps),
        restored_journeys: Mutex::new(restored_journeys),
        journeys,
        restored_ids: Mutex::new(restored_ids),
        stop,
        until_drained: options.until_drained || replay.is_some(),
        replay,
        totals: totals.clone(),
        started,
        start_up: std::sync::OnceLock::new(),
        transaction,
        fatal: FatalSlot::default(),
    });
    let start_up = shared.clone();
    let guards = timely::execute(timely_config, move |worker| run_worker(worker, &shared))
        .map_err(|e| anyhow!("starting timely: {e}"))?;
    let mut errors = Vec::new();
    for (i, result) in guards.join().into_iter().enumerate() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("worker {i}: {e:#}")),
            Err(panic) => errors.push(format!("worker {i} panicked: {panic}")),
        }
    }
    if !errors.is_empty() {
        bail!("pipeline failed: {}", errors.join("; "));
    }
    let totals = totals.lock().map(|t| t.clone()).unwrap_or_default();
    Ok(RunReport { totals, start_up: start_up.start_up.get().copied() })
}

struct Shared {
    config: PipelineConfig,
    runtime: tokio::runtime::Handle,
    partitions: i32,
    consent_partitions: i32,
    /// Worker index → the cap state it owns, restored from the changelog.
    restored_caps: Mutex<HashMap<usize, FastHashMap<SubjectRef, SubjectSendState>>>,
    /// Worker index → the journey state it owns, restored from the changelog.
    restored_journeys: Mutex<HashMap<usize, FastHashMap<SubjectRef, SubjectJourneys>>>,
    journeys: Journeys,
    /// Worker index → the deduplication keys it owns (with first-seen time), from ClickHouse.
    restored_ids: Mutex<HashMap<usize, Vec<(u128, i64)>>>,
    stop: Arc<AtomicBool>,
    until_drained: bool,
    /// Replaying: where each partition starts and stops; no offsets are committed.
    replay: Option<crate::replay::ResolvedReplay>,
    totals: Arc<Mutex<RunTotals>>,
    started: Instant,
    /// Set by the first worker to run the dataflow: [`RunReport::start_up`].
    start_up: std::sync::OnceLock<Duration>,
    /// `exactly_once_v2`, in process 0: the job's transactional producer (used by worker 0).
    transaction: Option<Arc<TransactionalProducer>>,
    /// A fatal transaction error (fenced): every worker loop stops the run with it.
    fatal: FatalSlot,
}

impl Shared {
    /// `processing.guarantee: exactly_once_v2`.
    fn eos(&self) -> bool {
        self.config.processing.guarantee == ProcessingGuarantee::ExactlyOnceV2
    }
}

/// The job's transactional id: one committer per pipeline (group), so a second instance fences the first.
pub fn transactional_id(group_id: &str) -> String {
    format!("{group_id}.transactions")
}

fn run_worker(worker: &mut Worker, shared: &Shared) -> Result<()> {
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
    let caps_state = shared.restored_caps.lock().ok().and_then(|mut m| m.remove(&index)).unwrap_or_default();
    let journey_state = shared.restored_journeys.lock().ok().and_then(|mut m| m.remove(&index)).unwrap_or_default();
    let handles = topology::build(
        worker,
        WorkerParts {
            source: state.clone(),
            source_topic: topic,
            consent_source: SourceState::new(consent_source, HashSet::new()),
            consent_topic: config.topics.consent.name.clone(),
            consent_dead_letter_topic: config.topics.consent_dead_letter.name.clone(),
            default_tenant: config.normalize.default_tenant.clone(),
            rules: config.guardrail_rules(shared.journeys.clone())?,
            guardrail_state: GuardrailState { consent: Default::default(), caps: caps_state, journeys: journey_state },
            transitions: TransitionStore::new(&config.clickhouse),
            journeys_changelog: AckedProducer::new(&config.kafka)?,
            journeys_changelog_topic: config.topics.journeys_changelog(&config.pipeline.group_id).name,
            decisions: DecisionStore::new(&config.clickhouse),
            connector_prefix: config.topics.connectors.prefix.clone(),
            caps_changelog_topic: config.topics.caps_changelog(&config.pipeline.group_id).name,
            event_time: config.event_time.clone(),
            late_events: AckedProducer::new(&config.kafka)?,
            late_events_topic: config.topics.late_events.name.clone(),
            epochs: config.epochs.clone(),
            stop: StopPolicy {
                until_drained: shared.until_drained,
                drain_idle: config.source.drain_idle,
                stop: shared.stop.clone(),
            },
            registry: Arc::new(RegistryClient::new(&config.schema_registry)?),
            normalizer: Normalizer::new(config.normalize.clone())?,
            deduplicator,
            events: store,
            dead_letters: AckedProducer::new(&config.kafka)?,
            consent_dead_letters: AckedProducer::new(&config.kafka)?,
            sends: AckedProducer::new(&config.kafka)?,
            changelog: AckedProducer::new(&config.kafka)?,
            dead_letter_topic: config.topics.dead_letter.name.clone(),
            runtime: shared.runtime.clone(),
            tally: tally.clone(),
            totals: shared.totals.clone(),
            transaction: shared.eos().then(|| TransactionalCommit {
                producer: if index == 0 { shared.transaction.clone() } else { None },
                source_topic: config.topics.events.name.clone(),
                fatal: shared.fatal.clone(),
                stop: shared.stop.clone(),
            }),
        },
    );
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
                "offsets not committed: a sink is behind (see touchpoint_sink_retrying_epochs); catching up once it writes"
            );
        }
    }
}

/// Reads the event ids stored within the dedupe TTL once per process and groups them by the worker
/// that owns them (the dedupe exchange's routing), keeping the workers of this process.
async fn restore_event_ids(
    config: &PipelineConfig,
    peers: usize,
    local_workers: std::ops::Range<usize>,
) -> Result<HashMap<usize, Vec<(u128, i64)>>> {
    let ttl_ms = i64::try_from(config.dedupe.ttl.as_millis()).unwrap_or(i64::MAX);
    let since = chrono::Utc::now().timestamp_millis().saturating_sub(ttl_ms);
    let mut by_worker: HashMap<usize, Vec<(u128, i64)>> = HashMap::new();
    for id in EventStore::new(&config.clickhouse).event_ids_since(since).await? {
        let worker = owner(&id.tenant_id, &id.event_id, peers);
        if local_workers.contains(&worker) {
            by_worker.entry(worker).or_default().push((dedupe_key(&id.tenant_id, &id.event_id), id.ingested_at_ms));
        }
    }
    Ok(by_worker)
}

/// Reads the cap changelog (cap counters and send ledger; latest value per subject wins; a tombstone
/// forgets) and groups the state by owning worker, keeping the workers of this process.
pub fn restore_caps(
    config: &PipelineConfig,
    peers: usize,
    local_workers: std::ops::Range<usize>,
) -> Result<HashMap<usize, FastHashMap<SubjectRef, SubjectSendState>>> {
    let topic = config.topics.caps_changelog(&config.pipeline.group_id).name;
    restore_changelog(config, &topic, "frequency-cap", peers, local_workers)
}

/// Reads a subject-keyed changelog (latest value per subject wins; a tombstone forgets) and groups the
/// state by owning worker, keeping the workers of this process.
pub fn restore_changelog<T: serde::de::DeserializeOwned>(
    config: &PipelineConfig,
    topic: &str,
    what: &str,
    peers: usize,
    local_workers: std::ops::Range<usize>,
) -> Result<HashMap<usize, FastHashMap<SubjectRef, T>>> {
    let started = std::time::Instant::now();
    let records = read_all(&config.kafka, topic, Duration::from_millis(500), Duration::from_secs(600))?;
    let mut latest: HashMap<SubjectRef, Option<T>> = HashMap::new();
    let count = records.len();
    let mut unreadable = 0usize;
    for r in records {
        let Some(key) = r.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else { continue };
        let Some((tenant, subject)) = key.split_once('/') else { continue };
        let subject = SubjectRef::new(tenant, subject);
        let value = match r.payload.as_deref() {
            None => None,
            Some(p) => match serde_json::from_slice::<T>(p) {
                Ok(v) => Some(v),
                Err(e) => {
                    // Never silently: a state record this version cannot read is reported.
                    unreadable += 1;
                    tracing::error!(topic, key, error = %e, "unreadable state record; the subject starts afresh");
                    None
                }
            },
        };
        latest.insert(subject, value);
    }
    let mut by_worker: HashMap<usize, FastHashMap<SubjectRef, T>> = HashMap::new();
    let mut subjects = 0usize;
    for (subject, state) in latest {
        let Some(state) = state else { continue };
        let worker = guardrail_owner(&subject, peers);
        if local_workers.contains(&worker) {
            by_worker.entry(worker).or_default().insert(subject, state);
            subjects += 1;
        }
    }
    tracing::info!(topic, records = count, subjects, unreadable, elapsed = ?started.elapsed(), "restored {what} state");
    Ok(by_worker)
}

/// The journeys to run: the current files (`config.journeys()`), plus every older version recorded in the versions topic
/// (subjects continue on the version they entered with). Current versions not yet recorded are
/// recorded first, so a version is archived before any subject can enter it.
pub fn load_journeys(
    config: &PipelineConfig,
    current: Vec<Journey>,
    runtime: &tokio::runtime::Runtime,
) -> Result<Journeys> {
    let mut journeys = Journeys::new(current.clone(), &config.intents.time_zone_attribute);
    if current.is_empty() {
        return Ok(journeys);
    }
    let topic = config.topics.journey_versions(&config.pipeline.group_id).name;
    let archived = read_all(&config.kafka, &topic, Duration::from_millis(500), Duration::from_secs(120))?;
    let mut known = std::collections::HashSet::new();
    for r in &archived {
        let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).to_string();
        let text = String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default()).to_string();
        match Journey::parse(&text, std::path::Path::new(&format!("{topic}/{key}"))) {
            Ok(j) => {
                known.insert(key);
                journeys.archive(j);
            }
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

fn communication(options: &RunOptions) -> Result<timely::CommunicationConfig> {
    if options.workers == 0 || options.processes == 0 {
        bail!("--workers and --processes must be at least 1");
    }
    if options.process >= options.processes {
        bail!("--process must be below --processes ({})", options.processes);
    }
    Ok(if options.processes == 1 {
        if options.workers == 1 {
            timely::CommunicationConfig::Thread
        } else {
            timely::CommunicationConfig::Process(options.workers)
        }
    } else {
        let addresses = match &options.hostfile {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let hosts: Vec<String> =
                    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
                if hosts.len() != options.processes {
                    bail!("{} lists {} hosts for {} processes", path.display(), hosts.len(), options.processes);
                }
                hosts
            }
            None => (0..options.processes).map(|i| format!("127.0.0.1:{}", 2101 + i)).collect(),
        };
        timely::CommunicationConfig::Cluster {
            threads: options.workers,
            process: options.process,
            addresses,
            report: false,
            zerocopy: false,
        }
    })
}

/// SIGINT/SIGTERM: stop reading, finish the open epochs, commit, exit.
pub fn spawn_signal_handler(runtime: &tokio::runtime::Runtime, stop: Arc<AtomicBool>) {
    runtime.spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stop requested: finishing open epochs");
        stop.store(true, Ordering::Relaxed);
    });
}
