//! Running the pipeline: a timely computation whose workers each own a share of the source partitions.
//!
//! - this file: the run itself: topics, the transactional id, the schema check, the restores side by
//!   side, then timely;
//! - [`worker`]: one worker's loop: it builds the dataflow, steps it and, whenever the sinks' probe
//!   passes epochs, commits the source offsets recorded at the close of the last such epoch (see
//!   `docs/time-and-delivery.md`);
//! - [`restore`]: keyed state from the changelogs and event ids from ClickHouse, grouped by owner;
//! - [`journeys`]: the journey versions to run, archived before any subject can enter them;
//! - [`cluster`]: timely's communication (threads, processes, hosts);
//! - [`signals`]: SIGINT/SIGTERM stop the run cleanly.

mod cluster;
mod journeys;
mod restore;
mod signals;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use touchpoint_connectors::kafka::partition_count;
use touchpoint_connectors::kafka::{ensure_topics, lease_topic, Lease, LeaseHeld, LeaseWait, TransactionalProducer};
use touchpoint_operators::fast_hash::FastHashMap;
use touchpoint_operators::guardrails::SubjectSendState;
use touchpoint_operators::journey::{Journeys, SubjectJourneys};
use touchpoint_operators::profile::SubjectProfile;
use touchpoint_operators::segment::{Segments, SubjectSegments};
use touchpoint_operators::send_ledger::ProcessingGuarantee;
use touchpoint_schemas::SubjectRef;

use crate::config::PipelineConfig;
use crate::stages::tally::RunTotals;
use crate::stages::transaction::FatalSlot;

pub use journeys::load_journeys;
pub use restore::{restore_caps, restore_changelog, PartialRestore};
pub use signals::spawn_signal_handler;

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
    /// Describe the dataflow worker 0 builds ([`RunReport::topology`], `crate::describe`).
    pub describe: bool,
    /// Run with what a restore could read when it cannot read everything (`--accept-partial-restore`).
    pub accept_partial_restore: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
            until_drained: false,
            replay: None,
            describe: false,
            accept_partial_restore: false,
        }
    }
}

/// What a run did (complete only in process 0, whose worker 0 sums the tallies).
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub totals: RunTotals,
    /// From the start of the run until the first worker began running the dataflow (topics checked,
    /// state restored from changelogs and ClickHouse, journeys loaded).
    pub start_up: Option<Duration>,
    /// With [`RunOptions::describe`], in process 0: the dataflow as built (`crate::describe`).
    pub topology: Option<String>,
}

pub fn run(config: PipelineConfig, options: RunOptions) -> Result<RunReport> {
    let started = Instant::now();
    let runtime = touchpoint_connectors::io_runtime("touchpoint-io").context("starting the async runtime")?;

    let mut topics = config.topics.all();
    topics.push(config.topics.caps_changelog(&config.pipeline.group_id));
    topics.push(config.topics.journeys_changelog(&config.pipeline.group_id));
    topics.push(config.topics.profiles_changelog(&config.pipeline.group_id));
    topics.push(config.topics.segments_changelog(&config.pipeline.group_id));
    topics.push(config.topics.evaluate_requests(&config.pipeline.group_id));
    topics.push(config.topics.evaluate_replies(&config.pipeline.group_id));
    topics.push(config.topics.journey_versions(&config.pipeline.group_id));
    topics.push(lease_topic(&config.pipeline.group_id));
    runtime.block_on(ensure_topics(&config.kafka, &topics))?;

    // One instance at a time: the lease comes before the transactional id and every restore, so a
    // second instance neither fences nor reads the state of one still running (a replay fails at once).
    let stop = Arc::new(AtomicBool::new(false));
    spawn_signal_handler(&runtime, stop.clone());
    let fatal = FatalSlot::default();
    let wait = if options.replay.is_some() { LeaseWait::Fail } else { LeaseWait::UntilFree };
    let lease = {
        let (fatal, stop_run) = (fatal.clone(), stop.clone());
        Lease::acquire(&config.kafka, &config.pipeline.group_id, options.process, wait, &stop, move |why| {
            tracing::error!("{why}");
            if let Ok(mut slot) = fatal.lock() {
                slot.get_or_insert(why);
            }
            stop_run.store(true, std::sync::atomic::Ordering::Relaxed);
        })?
    };
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
    // Reachable first: an unreachable server is not a database that needs `migrate`.
    runtime
        .block_on(config.clickhouse.server_client().query("SELECT 1").fetch_one::<u8>())
        .with_context(|| format!("ClickHouse at {} is unreachable", config.clickhouse.url))?;
    let latest = touchpoint_schemas::clickhouse::MIGRATIONS.last().map_or(0, |m| m.version);
    // No schema_migrations table yet: nothing applied.
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
    let profile_partitions = partition_count(&config.kafka, &config.topics.profiles.name)?;
    let evaluate_partitions =
        partition_count(&config.kafka, &config.topics.evaluate_requests(&config.pipeline.group_id).name)?;

    // Frequency-cap state from its changelog, read once per process and handed to the owning workers.
    let peers = options.workers * options.processes;
    let local_workers = options.process * options.workers..(options.process + 1) * options.workers;
    // The restores are independent and mostly wait on the broker and ClickHouse: side by side.
    let current_journeys = config.journeys()?;
    let segments = config.segments()?;
    let has_journeys = !current_journeys.is_empty();
    let partial = if options.accept_partial_restore { PartialRestore::Accept } else { PartialRestore::Refuse };
    let restored = std::thread::scope(|s| {
        let caps = s.spawn(|| restore_caps(&config, peers, local_workers.clone(), partial));
        // The merged profiles; `marketing.profiles` is replayed on top (newest wins per field).
        let profiles = s.spawn(|| {
            let topic = config.topics.profiles_changelog(&config.pipeline.group_id).name;
            restore_changelog::<SubjectProfile>(&config, &topic, "profile", peers, local_workers.clone(), partial)
        });
        // Segment state is restored even when no segment is configured any more: its members then leave.
        let segments = s.spawn(|| {
            let topic = config.topics.segments_changelog(&config.pipeline.group_id).name;
            restore_changelog::<SubjectSegments>(&config, &topic, "segment", peers, local_workers.clone(), partial)
        });
        let journeys = s.spawn(|| load_journeys(&config, current_journeys, &runtime, partial));
        let journey_state = s.spawn(|| {
            if !has_journeys {
                return Ok(HashMap::new());
            }
            let topic = config.topics.journeys_changelog(&config.pipeline.group_id).name;
            restore_changelog::<SubjectJourneys>(&config, &topic, "journey", peers, local_workers.clone(), partial)
        });
        let ids = runtime.block_on(restore::restore_event_ids(&config, peers, local_workers.clone()));
        let joined = |what: &str| anyhow!("restoring {what} panicked");
        (
            caps.join().map_err(|_| joined("cap state")),
            journeys.join().map_err(|_| joined("journeys")),
            journey_state.join().map_err(|_| joined("journey state")),
            profiles.join().map_err(|_| joined("profiles")),
            segments.join().map_err(|_| joined("segments")),
            ids,
        )
    });
    let (restored_caps, journeys, restored_journeys, restored_profiles, restored_segments, restored_ids) = restored;
    let restored_caps = restored_caps??;
    let journeys = journeys??;
    let restored_journeys = restored_journeys??;
    let restored_profiles = restored_profiles??;
    let restored_segments = restored_segments??;
    let restored_ids = restored_ids?;

    if let Some(listen) = config.pipeline.metrics_listen.clone() {
        runtime.spawn(async move {
            if let Err(e) = crate::metrics::serve(listen).await {
                tracing::error!(error = format!("{e:#}"), "metrics endpoint failed");
            }
        });
    }

    let totals = Arc::new(Mutex::new(RunTotals::default()));
    let timely_config =
        timely::Config { communication: cluster::communication(&options)?, worker: timely::WorkerConfig::default() };
    let shared = Arc::new(Shared {
        config,
        runtime: runtime.handle().clone(),
        partitions,
        consent_partitions,
        profile_partitions,
        evaluate_partitions,
        restored_caps: Mutex::new(restored_caps),
        restored_journeys: Mutex::new(restored_journeys),
        restored_profiles: Mutex::new(restored_profiles),
        restored_segments: Mutex::new(restored_segments),
        journeys,
        segments,
        restored_ids: Mutex::new(restored_ids),
        stop,
        until_drained: options.until_drained || replay.is_some(),
        describe: options.describe,
        topology: std::sync::OnceLock::new(),
        replay,
        totals: totals.clone(),
        started,
        start_up: std::sync::OnceLock::new(),
        transaction,
        fatal,
        lease: lease.held_flag(),
    });
    let start_up = shared.clone();
    let guards = timely::execute(timely_config, move |worker| worker::run_worker(worker, &shared))
        .map_err(|e| anyhow!("starting timely: {e}"))?;
    let mut errors = Vec::new();
    for (i, result) in guards.join().into_iter().enumerate() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("worker {i}: {e:#}")),
            Err(panic) => errors.push(format!("worker {i} panicked: {panic}")),
        }
    }
    // Held until every worker is done: the next instance starts only after this one's last commit.
    drop(lease);
    if !errors.is_empty() {
        bail!("pipeline failed: {}", errors.join("; "));
    }
    let totals = totals.lock().map(|t| t.clone()).unwrap_or_default();
    Ok(RunReport { totals, start_up: start_up.start_up.get().copied(), topology: start_up.topology.get().cloned() })
}

struct Shared {
    config: PipelineConfig,
    runtime: tokio::runtime::Handle,
    partitions: i32,
    consent_partitions: i32,
    profile_partitions: i32,
    evaluate_partitions: i32,
    /// Worker index → the cap state it owns, restored from the changelog.
    restored_caps: Mutex<HashMap<usize, FastHashMap<SubjectRef, SubjectSendState>>>,
    /// Worker index → the journey state it owns, restored from the changelog.
    restored_journeys: Mutex<HashMap<usize, FastHashMap<SubjectRef, SubjectJourneys>>>,
    /// Worker index → the profiles it owns, restored from the changelog.
    restored_profiles: Mutex<HashMap<usize, FastHashMap<SubjectRef, SubjectProfile>>>,
    /// Worker index → the segment state it owns, restored from the changelog.
    restored_segments: Mutex<HashMap<usize, FastHashMap<SubjectRef, SubjectSegments>>>,
    journeys: Journeys,
    /// The segment files, loaded once for every worker.
    segments: Segments,
    /// Worker index → the deduplication keys it owns (with first-seen time), from ClickHouse.
    restored_ids: Mutex<HashMap<usize, Vec<(u128, i64)>>>,
    stop: Arc<AtomicBool>,
    until_drained: bool,
    /// Describe the dataflow worker 0 builds, into `topology`.
    describe: bool,
    topology: std::sync::OnceLock<String>,
    /// Replaying: where each partition starts and stops; no offsets are committed.
    replay: Option<crate::replay::ResolvedReplay>,
    totals: Arc<Mutex<RunTotals>>,
    started: Instant,
    /// Set by the first worker to run the dataflow: [`RunReport::start_up`].
    start_up: std::sync::OnceLock<Duration>,
    /// `exactly_once_v2`, in process 0: the job's transactional producer (used by worker 0).
    transaction: Option<Arc<TransactionalProducer>>,
    /// A fatal error (fenced, lease lost): every worker loop stops the run with it.
    fatal: FatalSlot,
    /// Whether this instance holds the pipeline's lease (the sources read nothing while it does not).
    lease: LeaseHeld,
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
