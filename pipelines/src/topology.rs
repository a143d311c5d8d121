//! The whole dataflow of the normalization pipeline, on one screen.
//!
//! ```text
//!  marketing.events ─► KafkaSource ─► Normalize ─┬─ events ──► [exchange by tenant+event_id] Dedupe ─► ClickHouseEvents (table `events`)
//!   (this worker's      (epochs)     (decode,    │                                                            │
//!    partitions)                      validate)  └─ rejects ─────────────────────────────────► DeadLetterTopic (marketing.events.dlq)
//!                                                                                                              │
//!                      offsets of durable epochs ◄── commit ◄── probe ◄────────── both sinks' progress ◄───────┘
//!
//!  per-worker tallies ─► [exchange to worker 0] EpochTally (logs in = out + dlq + duplicates per epoch)
//! ```
//!
//! Every operator lives in `crate::stages`; its logic and state in `touchpoint-operators`.

use std::sync::{Arc, Mutex};

use timely::dataflow::operators::core::{Concat, OkErr};
use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::worker::Worker;
use touchpoint_connectors::clickhouse::EventStore;
use touchpoint_connectors::kafka::AckedProducer;
use touchpoint_connectors::schema_registry::RegistryClient;
use touchpoint_operators::{EpochTally, EventDeduplicator, Normalizer, RecordDecoder};
use touchpoint_schemas::NormalizedEvent;

use crate::config::EpochConfig;
use crate::stages::dedupe::dedupe;
use crate::stages::epoch_sink::epoch_sink;
use crate::stages::kafka_source::{kafka_source, SharedSource, StopPolicy};
use crate::stages::normalize::{normalize, DeadLetter, Outcome};
use crate::stages::sinks::{ClickHouseEvents, DeadLetterTopic};
use crate::stages::tally::{log_epoch_tallies, RunTotals, TallyBook};
use crate::stages::Epoch;

/// Everything one worker needs to build its copy of the dataflow.
pub struct WorkerParts {
    pub source: SharedSource,
    pub source_topic: String,
    pub epochs: EpochConfig,
    pub stop: StopPolicy,
    pub registry: Arc<RegistryClient>,
    pub normalizer: Normalizer,
    pub deduplicator: EventDeduplicator,
    pub events: EventStore,
    pub dead_letters: AckedProducer,
    pub dead_letter_topic: String,
    pub runtime: tokio::runtime::Handle,
    pub tally: TallyBook,
    pub totals: Arc<Mutex<RunTotals>>,
}

/// Handles the worker loop drives the dataflow with.
pub struct Handles {
    /// Progress of both sinks: an epoch the probe has passed is durable everywhere.
    pub sinks: ProbeHandle<Epoch>,
    /// Where this worker sends its partial tallies of completed epochs.
    pub tallies: InputHandle<Epoch, timely::container::CapacityContainerBuilder<Vec<EpochTally>>>,
    /// Progress of the tally log.
    pub tallies_logged: ProbeHandle<Epoch>,
}

// `ok_err` routes by a `Result` whose error side is a dead letter; its size is what it is.
#[allow(clippy::result_large_err)]
pub fn build(worker: &mut Worker, parts: WorkerParts) -> Handles {
    let WorkerParts {
        source,
        source_topic,
        epochs,
        stop,
        registry,
        normalizer,
        deduplicator,
        events,
        dead_letters,
        dead_letter_topic,
        runtime,
        tally,
        totals,
    } = parts;
    worker.dataflow::<Epoch, _, _>(|scope| {
        let records = kafka_source(scope, source, epochs, stop, tally.clone());
        let outcomes = normalize(records, RecordDecoder::new(registry), normalizer, source_topic, tally.clone());
        let (valid, rejected) = outcomes.ok_err::<Vec<NormalizedEvent>, _, Vec<DeadLetter>, _, _>(|o| match o {
            Outcome::Event(e) => Ok(e),
            Outcome::Rejected(d) => Err(d),
        });
        let unique = dedupe(valid, deduplicator, tally);

        let stored = epoch_sink(unique, ClickHouseEvents { store: events }, runtime.clone());
        let dead_lettered =
            epoch_sink(rejected, DeadLetterTopic { producer: dead_letters, topic: dead_letter_topic }, runtime);
        let sinks = ProbeHandle::new();
        stored.concat(dead_lettered).probe_with(&sinks);

        let (tallies, partials) = scope.new_input::<Vec<EpochTally>>();
        let tallies_logged = ProbeHandle::new();
        log_epoch_tallies(partials, totals).probe_with(&tallies_logged);
        Handles { sinks, tallies, tallies_logged }
    })
}
