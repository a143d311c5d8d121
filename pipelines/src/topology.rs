//! The whole dataflow of the normalization pipeline, on one screen.
//!
//! ```text
//!  marketing.events ─► EventSource ─► Normalize ─┬─ events ─► [by tenant+event_id] Dedupe ─► LateEvents ─┬─► ClickHouseEvents (`events`)
//!   (this worker's      (epochs ≥ 1)  (decode,   │                                           (watermark)  ├─► SendIntents (rules)
//!    partitions)             │        validate)  ├─ rejects ─► DeadLetterTopic (marketing.events.dlq)  ▲  └─ late, `route` ─► LateEventsTopic
//!                            │                   └─► PartitionClocks ─► [broadcast] partition reports ─┘     │   (marketing.events.late)
//!                            │                        (max event time, idle)                                 ▼
//!  marketing.consent ─► ConsentSource ─► ParseConsent ─┬─ changes ─► [by subject key group] ─► Guardrails (consent, then caps)
//!   (replayed from      (restore at       (decode,     └─ rejects ─► DeadLetterTopic             │    │    │
//!    the beginning)      epoch 0)          validate)                 (marketing.consent.dlq)     │    │    └─► CapsChangelog (<group>.caps-changelog)
//!                                                                                  decisions ◄───┘    └─► allowed ─► ConnectorTopics (connector.<channel>)
//!                                                                          ClickHouseDecisions (`decisions`)
//!
//!  every sink's progress ─► probe ─► commit the event offsets of durable epochs
//!  per-worker tallies ─► [to worker 0] EpochTally (logs in = out + dlq + duplicates per epoch)
//! ```
//!
//! Every operator lives in `crate::stages`; its logic and state in `touchpoint-operators`.

use std::sync::{Arc, Mutex};

use timely::dataflow::operators::core::{Concat, Concatenate, OkErr};
use timely::dataflow::operators::vec::{Broadcast, Filter};
use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::worker::Worker;
use touchpoint_connectors::clickhouse::{DecisionStore, EventStore};
use touchpoint_connectors::kafka::AckedProducer;
use touchpoint_connectors::schema_registry::RegistryClient;
use touchpoint_operators::consent::{ConsentChange, ConsentConfig};
use touchpoint_operators::decision::{Decision, DecisionKind};
use touchpoint_operators::frequency_cap::FrequencyCaps;
use touchpoint_operators::intent::IntentRules;
use touchpoint_operators::watermark::EventTimeConfig;
use touchpoint_operators::{EpochTally, EventDeduplicator, Normalizer, RecordDecoder};
use touchpoint_schemas::NormalizedEvent;

use crate::config::EpochConfig;
use crate::stages::consent::{parse_consent_stream, ConsentOutcome};
use crate::stages::dedupe::dedupe;
use crate::stages::epoch_sink::epoch_sink;
use crate::stages::event_time::{late_events, partition_clocks, Judged, LateEvent};
use crate::stages::guardrails::{guardrails, intents, CapSnapshot, GuardrailOutput, GuardrailState};
use crate::stages::kafka_source::{kafka_source, SharedSource, SourceRole, StopPolicy};
use crate::stages::normalize::{normalize, DeadLetter, Outcome};
use crate::stages::sinks::{
    CapsChangelog, ClickHouseDecisions, ClickHouseEvents, ConnectorTopics, DeadLetterTopic, LateEventsTopic,
};
use crate::stages::tally::{log_epoch_tallies, RunTotals, TallyBook};
use crate::stages::Epoch;

/// Everything one worker needs to build its copy of the dataflow.
pub struct WorkerParts {
    pub source: SharedSource,
    pub source_topic: String,
    pub consent_source: SharedSource,
    pub consent_topic: String,
    pub consent_dead_letter_topic: String,
    pub default_tenant: String,
    pub intent_rules: IntentRules,
    pub consent_config: ConsentConfig,
    pub caps: FrequencyCaps,
    pub guardrail_state: GuardrailState,
    pub decisions: DecisionStore,
    pub connector_prefix: String,
    pub caps_changelog_topic: String,
    pub event_time: EventTimeConfig,
    pub late_events: AckedProducer,
    pub late_events_topic: String,
    pub epochs: EpochConfig,
    pub stop: StopPolicy,
    pub registry: Arc<RegistryClient>,
    pub normalizer: Normalizer,
    pub deduplicator: EventDeduplicator,
    pub events: EventStore,
    /// One producer per Kafka sink: each gets its own connection and in-flight window.
    pub dead_letters: AckedProducer,
    pub consent_dead_letters: AckedProducer,
    pub sends: AckedProducer,
    pub changelog: AckedProducer,
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
        consent_source,
        consent_topic,
        consent_dead_letter_topic,
        default_tenant,
        intent_rules,
        consent_config,
        caps,
        guardrail_state,
        decisions,
        connector_prefix,
        caps_changelog_topic,
        event_time,
        late_events: late_producer,
        late_events_topic,
        epochs,
        stop,
        registry,
        normalizer,
        deduplicator,
        events,
        dead_letters,
        consent_dead_letters,
        sends,
        changelog,
        dead_letter_topic,
        runtime,
        tally,
        totals,
    } = parts;
    worker.dataflow::<Epoch, _, _>(|scope| {
        // Events: normalize, dedupe, store.
        let records = kafka_source(
            scope,
            "EventSource",
            SourceRole::Stream,
            source.clone(),
            epochs.clone(),
            stop.clone(),
            Some(tally.clone()),
        );
        let outcomes =
            normalize(records, RecordDecoder::new(registry.clone()), normalizer, source_topic, tally.clone());
        // Event time: every worker's partition reports reach every worker's watermark.
        let reports = partition_clocks(outcomes.clone(), source, &event_time).broadcast();
        let (valid, rejected) =
            outcomes.ok_err::<Vec<(NormalizedEvent, bool)>, _, Vec<DeadLetter>, _, _>(|o| match o {
                Outcome::Event(e, already_stored) => Ok((e, already_stored)),
                Outcome::Rejected(d) => Err(d),
            });
        let deduplicated = dedupe(valid, deduplicator, tally.clone());
        let judged = late_events(deduplicated, reports, &event_time, tally);
        let (deduplicated, late) =
            judged.ok_err::<Vec<(NormalizedEvent, bool)>, _, Vec<LateEvent>, _, _>(|j| match j {
                Judged::Event(e, already_stored) => Ok((e, already_stored)),
                Judged::Routed(late) => Err(late),
            });
        let late_routed =
            epoch_sink(late, LateEventsTopic { producer: late_producer, topic: late_events_topic }, runtime.clone());
        // Events a previous run stored are not stored again, but still drive decisions (their effects
        // may not have been durable when it died; the decision path is idempotent by key).
        let (to_store, already_stored) =
            deduplicated.ok_err::<Vec<NormalizedEvent>, _, Vec<NormalizedEvent>, _, _>(|(e, already_stored)| {
                if already_stored {
                    Err(e)
                } else {
                    Ok(e)
                }
            });
        let unique = to_store.clone().concat(already_stored);
        let stored = epoch_sink(to_store, ClickHouseEvents { store: events }, runtime.clone());
        let dead_lettered =
            epoch_sink(rejected, DeadLetterTopic { producer: dead_letters, topic: dead_letter_topic }, runtime.clone());

        // Consent: the table, replayed at start (epoch 0), then live.
        let consent_records =
            kafka_source(scope, "ConsentSource", SourceRole::Table, consent_source, epochs, stop, None);
        let parsed = parse_consent_stream(consent_records, RecordDecoder::new(registry), consent_topic, default_tenant);
        let (changes, bad_consent) = parsed.ok_err::<Vec<ConsentChange>, _, Vec<DeadLetter>, _, _>(|o| match o {
            ConsentOutcome::Change(c) => Ok(c),
            ConsentOutcome::Rejected(d) => Err(d),
        });
        let consent_dead_lettered = epoch_sink(
            bad_consent,
            DeadLetterTopic { producer: consent_dead_letters, topic: consent_dead_letter_topic },
            runtime.clone(),
        );

        // Guardrails: intents from rules, consent join, frequency caps; decisions, sends, state.
        let outputs = guardrails(intents(unique, intent_rules), changes, guardrail_state, consent_config, caps);
        let (decided, snapshots) = outputs.ok_err::<Vec<Decision>, _, Vec<CapSnapshot>, _, _>(|o| match o {
            GuardrailOutput::Decision(d) => Ok(*d),
            GuardrailOutput::Snapshot(s) => Err(s),
        });
        let recorded = epoch_sink(decided.clone(), ClickHouseDecisions { store: decisions }, runtime.clone());
        let allowed = decided.filter(|d: &Decision| d.kind == DecisionKind::Allowed);
        let sent = epoch_sink(allowed, ConnectorTopics { producer: sends, prefix: connector_prefix }, runtime.clone());
        let persisted =
            epoch_sink(snapshots, CapsChangelog { producer: changelog, topic: caps_changelog_topic }, runtime);

        let sinks = ProbeHandle::new();
        scope
            .concatenate([stored, dead_lettered, late_routed, consent_dead_lettered, recorded, sent, persisted])
            .probe_with(&sinks);

        let (tallies, partials) = scope.new_input::<Vec<EpochTally>>();
        let tallies_logged = ProbeHandle::new();
        log_epoch_tallies(partials, totals).probe_with(&tallies_logged);
        Handles { sinks, tallies, tallies_logged }
    })
}
