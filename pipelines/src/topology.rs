//! The whole dataflow of the pipeline, on one screen.
//!
//! ```text
//! marketing.events ─► EventSource ─► Normalize ─┬─ rejects ─► DeadLetterTopic (marketing.events.dlq)
//! (this worker's      (epochs ≥ 1)  (decode,    ├─ clock readings ─► PartitionClocks ─► [broadcast] ┐
//!  partitions)                       validate)  │   (max event time, idle; partition reports)    ▼
//!                                                └─ events ─► [by tenant+event_id] Dedupe ─► LateEvents (watermark)
//!                                                                                                │
//!     ┌──────────────────────────────────────────────────────────────────────────────────────────┤
//!     │  late, `route` ─► LateEventsTopic (marketing.events.late)                                │ events, watermark
//! marketing.consent ─► ConsentSource ─► ParseConsent ─┬─ rejects ─► DeadLetterTopic              │
//! (replayed from the   (restore at      (decode,      │              (marketing.consent.dlq)     │
//!  beginning)           epoch 0)         validate)    └─ changes ─► [by subject key group] ──────┤
//! marketing.profiles ─► ProfileSource ─► ParseProfiles ─┬─ rejects ─► DeadLetterTopic            │
//! (replayed from the    (restore at      (decode, key   │              (marketing.profiles.dlq)  │
//!  beginning)            epoch 0)         checked)      └─ changes ─► [by subject key group] ────┤
//! <group>.evaluate-requests ─► EvaluateSource ─► (parse) ─► dry runs ─► [by subject key group] ──┤
//! (from its end at each start)                                                                   ▼
//!          Guardrails [events and changes by subject key group]: consent; profiles (also from profile
//!          update events); segments (segment_entered/exited events); journey timers; rules; journeys;
//!          recipients from profiles; caps
//!           │ events an earlier run did not store ─► ClickHouseEvents (`events`)
//!           │ decisions ─► ClickHouseDecisions (`decisions`)
//!           │   └ allowed ─► ConnectorTopics (connector.<channel>)
//!           │ journey movements ─► ClickHouseTransitions (`journey_transitions`)
//!           │ caps + send ledger ─► AfterSends (once the epoch's sends and decisions are durable)
//!           │                         ─► CapsChangelog (<group>.caps-changelog)
//!           │ journey state ─► AfterLedger (once the ledger is durable)
//!           │                    ─► JourneysChangelog (<group>.journeys-changelog)
//!           │ segment state ─► AfterJourneys (once the journeys that followed its changes are durable)
//!           │                    ─► SegmentsChangelog (<group>.segments-changelog)
//!           │ segment entries and exits ─► ClickHouseSegmentMemberships (`segment_memberships`)
//!           │ changed profiles ─► ClickHouseProfiles (`profiles`)
//!           │                    ─► ProfilesChangelog (<group>.profiles-changelog)
//!           └ dry-run answers (after their epoch; counted nothing) ─► EvaluateReplies
//!                              (<group>.evaluate-replies; not state: outside the probe and transactions)
//!
//! every sink's progress ─► probe ─► commit the event offsets of durable epochs
//! per-worker tallies ─► [to worker 0] EpochTally (logs in = out + dlq + duplicates per epoch)
//! ```
//!
//! Under `processing.guarantee: exactly_once_v2` the Kafka sinks above are replaced by one transaction:
//!
//! ```text
//!  late events, dead letters (events, consent, profiles), allowed sends, caps, journey, segment and
//!  profile state (as records)
//!  + source positions (from the worker loop, at the epoch they closed)
//!      ─► AfterClickHouse (the epoch's ClickHouse rows durable) ─► [to worker 0] KafkaTransaction
//!         (begin; produce; send_offsets_to_transaction; commit — complete epochs, in order)
//!  ClickHouse sinks + KafkaTransaction ─► probe (no separate offset commit)
//! ```
//!
//! Beyond this dataflow, each `connector.<channel>` is consumed by `touchpoint connect --channel <c>`
//! workers (deliveries, dedupe ledger, retries; `crate::connect`, docs/channels.md), whose outcomes
//! reach ClickHouse `deliveries` through `touchpoint deliveries`.
//!
//! Every operator lives in `crate::stages`; its logic and state in `touchpoint-operators`.
//!
//! The pictures are drawn for reading. `docs/topology.txt` is the dataflow as built: every operator and
//! channel, recorded from timely's own log (`crate::describe`) and checked against a real run by
//! `pipelines/tests/pipeline_e2e.rs`; a test below checks that every named operator there appears in
//! the pictures, so neither can drift from the code.

use std::sync::{Arc, Mutex};

use timely::dataflow::operators::core::{Concat, Concatenate};
use timely::dataflow::operators::vec::{Broadcast, Filter, Map};
use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::worker::Worker;
use touchpoint_connectors::clickhouse::{
    DecisionStore, EventStore, ProfileStore, SegmentMembershipStore, TransitionStore,
};
use touchpoint_connectors::kafka::{AckedProducer, SourceRecord};
use touchpoint_connectors::schema_registry::RegistryClient;
use touchpoint_operators::decision::{Decision, DecisionKind};
use touchpoint_operators::decode::RecordDecoder;
use touchpoint_operators::dedupe::EventDeduplicator;
use touchpoint_operators::evaluate::{EvaluateReply, EvaluateRequest};
use touchpoint_operators::guardrails::{GuardrailRules, GuardrailState};
use touchpoint_operators::normalize::Normalizer;
use touchpoint_operators::tally::EpochTally;
use touchpoint_operators::watermark::EventTimeConfig;

use crate::config::EpochConfig;
use crate::stages::consent::parse_consent_stream;
use crate::stages::dedupe::dedupe;
use crate::stages::epoch_sink::{after_durable, epoch_sink};
use crate::stages::event_time::{late_events, partition_clocks};
use crate::stages::guardrails::guardrails;
use crate::stages::kafka_source::{kafka_source, SharedSource, SourceRole, StopPolicy};
use crate::stages::normalize::normalize;
use crate::stages::profiles::parse_profile_stream;
use crate::stages::sinks::{
    changelog_record, send_record, ClickHouseDecisions, ClickHouseEvents, ClickHouseProfiles,
    ClickHouseSegmentMemberships, ClickHouseTransitions, ConnectorTopics, StateChangelog, TopicRecord, TopicSink,
};
use crate::stages::tally::{log_epoch_tallies, RunTotals, TallyBook};
use crate::stages::transaction::{TransactionalCommit, TxnItem};
use crate::stages::Epoch;

/// Everything one worker needs to build its copy of the dataflow, by part of the dataflow.
pub struct WorkerParts {
    pub events: EventInput,
    pub consent: TableInput,
    pub profiles: TableInput,
    /// Dry-run requests and where their answers go.
    pub evaluate: EvaluateInput,
    /// The subject-keyed operator's rules and the state this worker owns.
    pub rules: GuardrailRules,
    pub guardrail_state: GuardrailState,
    pub clickhouse: ClickHouseSinks,
    /// Where the Kafka outputs go, and how they are written.
    pub topics: OutputTopics,
    pub kafka: KafkaWriters,
    pub epochs: EpochConfig,
    pub stop: StopPolicy,
    pub runtime: tokio::runtime::Handle,
    pub tally: TallyBook,
    pub totals: Arc<Mutex<RunTotals>>,
}

/// The source stream and what reads it: decoding, normalization, dedupe, event time.
pub struct EventInput {
    pub source: SharedSource,
    pub topic: String,
    pub registry: Arc<RegistryClient>,
    pub normalizer: Normalizer,
    pub deduplicator: EventDeduplicator,
    pub event_time: EventTimeConfig,
}

/// A table's topic (consent, profiles), replayed from the beginning.
pub struct TableInput {
    pub source: SharedSource,
    pub topic: String,
    /// The tenant of records that name none.
    pub default_tenant: String,
}

/// `POST /internal/automation/evaluate`'s path through the dataflow: requests read from the end of
/// their topic at every start, answers written (acknowledged, outside any transaction: an answer is
/// not state) to the replies topic the API reads.
pub struct EvaluateInput {
    pub source: SharedSource,
    pub replies: String,
    pub producer: AckedProducer,
}

/// The ClickHouse tables the dataflow writes.
pub struct ClickHouseSinks {
    pub events: EventStore,
    pub decisions: DecisionStore,
    pub transitions: TransitionStore,
    pub profiles: ProfileStore,
    pub memberships: SegmentMembershipStore,
}

/// The Kafka topics the dataflow writes.
pub struct OutputTopics {
    pub dead_letter: String,
    pub consent_dead_letter: String,
    pub profiles_dead_letter: String,
    pub late_events: String,
    /// `connector.` + channel.
    pub connector_prefix: String,
    pub caps_changelog: String,
    pub journeys_changelog: String,
    pub profiles_changelog: String,
    pub segments_changelog: String,
}

/// How the Kafka outputs are written.
pub enum KafkaWriters {
    /// `exactly_once_keys`, `at_least_once`: one acknowledged producer per sink (each its own connection
    /// and in-flight window); the source offsets are committed by the worker loop.
    Acked(AckedWriters),
    /// `exactly_once_v2`: every Kafka output and the source positions commit in one transaction at
    /// worker 0 (`stages::transaction`).
    Transactional(TransactionalCommit),
}

pub struct AckedWriters {
    pub dead_letters: AckedProducer,
    pub consent_dead_letters: AckedProducer,
    pub profile_dead_letters: AckedProducer,
    pub late_events: AckedProducer,
    pub sends: AckedProducer,
    pub caps_changelog: AckedProducer,
    pub journeys_changelog: AckedProducer,
    pub profiles_changelog: AckedProducer,
    pub segments_changelog: AckedProducer,
}

/// Handles the worker loop drives the dataflow with.
pub struct Handles {
    /// Progress of every sink: an epoch the probe has passed is durable everywhere.
    pub sinks: ProbeHandle<Epoch>,
    /// Where this worker sends its partial tallies of completed epochs.
    pub tallies: InputHandle<Epoch, timely::container::CapacityContainerBuilder<Vec<EpochTally>>>,
    /// Progress of the tally log.
    pub tallies_logged: ProbeHandle<Epoch>,
    /// `exactly_once_v2`: where the worker loop puts its source positions, at the epoch they closed.
    pub positions: Option<InputHandle<Epoch, timely::container::CapacityContainerBuilder<Vec<TxnItem>>>>,
}

pub fn build(worker: &mut Worker, parts: WorkerParts) -> Handles {
    let WorkerParts {
        events: input,
        consent,
        profiles,
        evaluate,
        rules,
        guardrail_state,
        clickhouse,
        topics,
        kafka,
        epochs,
        stop,
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
            input.source.clone(),
            epochs.clone(),
            stop.clone(),
            Some(tally.clone()),
        );
        let registry = input.registry;
        let normalized =
            normalize(records, RecordDecoder::new(registry.clone()), input.normalizer, input.topic, tally.clone());
        let rejected = normalized.rejected;
        // Event time: every worker's partition reports reach every worker's watermark.
        let reports = partition_clocks(normalized.clocks, input.source, &input.event_time).broadcast();
        let deduplicated = dedupe(normalized.events, input.deduplicator, tally.clone());
        let judged = late_events(deduplicated, reports, &input.event_time, tally);
        let late = judged.routed;
        // Consent: the table, replayed at start (epoch 0), then live.
        let consent_records =
            kafka_source(scope, "ConsentSource", SourceRole::Table, consent.source, epochs.clone(), stop.clone(), None);
        let (changes, bad_consent) = parse_consent_stream(
            consent_records,
            RecordDecoder::new(registry.clone()),
            consent.topic,
            consent.default_tenant,
        );
        // Profiles: the table, replayed at start (epoch 0) on top of the restored changelog, then live.
        let profile_records =
            kafka_source(scope, "ProfileSource", SourceRole::Table, profiles.source, epochs.clone(), stop.clone(), None);
        // Dry runs: a record that is not a request is logged and dropped (no one to answer).
        let requests = kafka_source(scope, "EvaluateSource", SourceRole::Table, evaluate.source, epochs, stop, None)
            .flat_map(|r: SourceRecord| match EvaluateRequest::parse(r.payload.as_deref().unwrap_or_default()) {
                Ok(request) => Some(request),
                Err(why) => {
                    tracing::warn!(partition = r.partition, offset = r.offset, %why, "not an evaluate request; ignored");
                    None
                }
            });
        let (profile_changes, bad_profiles) = parse_profile_stream(
            profile_records,
            RecordDecoder::new(registry),
            profiles.topic,
            profiles.default_tenant,
        );
        let OutputTopics {
            dead_letter: dead_letter_topic,
            consent_dead_letter: consent_dead_letter_topic,
            profiles_dead_letter: profiles_dead_letter_topic,
            late_events: late_events_topic,
            connector_prefix,
            caps_changelog: caps_changelog_topic,
            journeys_changelog: journeys_changelog_topic,
            profiles_changelog: profiles_changelog_topic,
            segments_changelog: segments_changelog_topic,
        } = topics;
        // The subject-keyed operator: consent join, journeys (timers on the watermark), intents from
        // rules, frequency caps; decisions, transitions, sends, state changelogs. Events a previous run
        // stored still drive decisions (their effects may not have been durable when it died; the decision
        // path is idempotent by key), and the keyed operator passes on only the others to be stored.
        let keyed =
            guardrails(judged.events, changes, profile_changes, judged.watermarks, requests, guardrail_state, rules);
        // Answers are not state: written as they come (not once their epoch completes, as the sinks
        // above are), outside the probe and any transaction.
        evaluate_replies(keyed.replies, evaluate.producer, evaluate.replies, runtime.clone());
        let (cap_states, journey_states, profile_states, segment_states) =
            (keyed.caps, keyed.journeys, keyed.profiles, keyed.segments);
        let stored = epoch_sink(keyed.events, ClickHouseEvents { store: clickhouse.events }, runtime.clone());
        let recorded =
            epoch_sink(keyed.decisions.clone(), ClickHouseDecisions { store: clickhouse.decisions }, runtime.clone());
        let allowed = keyed.decisions.filter(|d: &Arc<Decision>| d.kind == DecisionKind::Allowed);
        let transitioned =
            epoch_sink(keyed.transitions, ClickHouseTransitions { store: clickhouse.transitions }, runtime.clone());
        let profiled =
            epoch_sink(profile_states.clone(), ClickHouseProfiles { store: clickhouse.profiles }, runtime.clone());
        let members = epoch_sink(
            keyed.memberships,
            ClickHouseSegmentMemberships { store: clickhouse.memberships },
            runtime.clone(),
        );

        let sinks = ProbeHandle::new();
        let mut positions = None;
        let kafka_durable = match kafka {
            // exactly_once_v2: every Kafka output of every worker, and the source positions, to worker 0,
            // once the epoch's ClickHouse rows are durable; one transaction per write there.
            KafkaWriters::Transactional(commit) => {
                use timely::dataflow::operators::Exchange as _;
                let (input, source_positions) = scope.new_input::<Vec<TxnItem>>();
                positions = Some(input);
                let items = scope.concatenate([
                    late.map(move |r| TxnItem::Record(r.to_record(&late_events_topic).bounded())),
                    rejected.map(move |r| TxnItem::Record(r.to_record(&dead_letter_topic).bounded())),
                    bad_consent.map(move |r| TxnItem::Record(r.to_record(&consent_dead_letter_topic).bounded())),
                    bad_profiles.map(move |r| TxnItem::Record(r.to_record(&profiles_dead_letter_topic).bounded())),
                    allowed.map(move |d| TxnItem::encoded(send_record(&d, &connector_prefix))),
                    cap_states.map(move |s| TxnItem::encoded(changelog_record(&caps_changelog_topic, &s))),
                    journey_states.map(move |s| TxnItem::encoded(changelog_record(&journeys_changelog_topic, &s))),
                    profile_states.map(move |s| TxnItem::encoded(changelog_record(&profiles_changelog_topic, &s))),
                    segment_states.map(move |s| TxnItem::encoded(changelog_record(&segments_changelog_topic, &s))),
                    source_positions,
                ]);
                let clickhouse = scope.concatenate([
                    stored.clone(),
                    recorded.clone(),
                    transitioned.clone(),
                    profiled.clone(),
                    members.clone(),
                ]);
                let gated = after_durable(items, clickhouse, "AfterClickHouse").exchange(|_| 0);
                vec![epoch_sink(gated, commit, runtime)]
            }
            KafkaWriters::Acked(w) => {
                let late_routed = epoch_sink(
                    late,
                    TopicSink { name: "LateEventsTopic", producer: w.late_events, topic: late_events_topic },
                    runtime.clone(),
                );
                let dead_lettered = epoch_sink(
                    rejected,
                    TopicSink { name: "DeadLetterTopic", producer: w.dead_letters, topic: dead_letter_topic },
                    runtime.clone(),
                );
                let consent_dead_lettered = epoch_sink(
                    bad_consent,
                    TopicSink {
                        name: "DeadLetterTopic",
                        producer: w.consent_dead_letters,
                        topic: consent_dead_letter_topic,
                    },
                    runtime.clone(),
                );
                let profile_dead_lettered = epoch_sink(
                    bad_profiles,
                    TopicSink {
                        name: "DeadLetterTopic",
                        producer: w.profile_dead_letters,
                        topic: profiles_dead_letter_topic,
                    },
                    runtime.clone(),
                );
                // Independent of the sends: a profile names no send, and a restore merges it either way.
                let profiles_persisted = epoch_sink(
                    profile_states,
                    StateChangelog {
                        name: "ProfilesChangelog",
                        producer: w.profiles_changelog,
                        topic: profiles_changelog_topic,
                    },
                    runtime.clone(),
                );
                let sent = epoch_sink(
                    allowed,
                    ConnectorTopics { producer: w.sends, prefix: connector_prefix },
                    runtime.clone(),
                );
                // The send ledger (with the cap counters) is written only once the epoch's sends and decision
                // rows are durable: a key in a restored ledger means its send is out and its decision stored.
                let caps_persisted = epoch_sink(
                    after_durable(cap_states, sent.clone().concat(recorded.clone()), "AfterSends"),
                    StateChangelog { name: "CapsChangelog", producer: w.caps_changelog, topic: caps_changelog_topic },
                    runtime.clone(),
                );
                // Journey state (a send step passed) is written only after that epoch's ledger is durable, so
                // it never runs ahead of the sends it made, and a re-run step finds its key in the ledger.
                let journeys_persisted = epoch_sink(
                    after_durable(journey_states, caps_persisted.clone(), "AfterLedger"),
                    StateChangelog {
                        name: "JourneysChangelog",
                        producer: w.journeys_changelog,
                        topic: journeys_changelog_topic,
                    },
                    runtime.clone(),
                );
                // Segment state (a membership changed) only after the journeys that followed the change:
                // a restore that finds the subject a member has the journey state its entry made, and one
                // that does not evaluates the entry again (same event id, same send keys).
                let segments_persisted = epoch_sink(
                    after_durable(segment_states, journeys_persisted.clone(), "AfterJourneys"),
                    StateChangelog {
                        name: "SegmentsChangelog",
                        producer: w.segments_changelog,
                        topic: segments_changelog_topic,
                    },
                    runtime,
                );
                vec![
                    late_routed,
                    dead_lettered,
                    consent_dead_lettered,
                    profile_dead_lettered,
                    sent,
                    caps_persisted,
                    journeys_persisted,
                    segments_persisted,
                    profiles_persisted,
                ]
            }
        };
        scope
            .concatenate([stored, recorded, transitioned, profiled, members].into_iter().chain(kafka_durable))
            .probe_with(&sinks);

        let (tallies, partials) = scope.new_input::<Vec<EpochTally>>();
        let tallies_logged = ProbeHandle::new();
        log_epoch_tallies(partials, totals).probe_with(&tallies_logged);
        Handles { sinks, tallies, tallies_logged, positions }
    })
}

/// The `EvaluateReplies` sink: each batch of answers is produced as soon as it arrives (a waiting
/// request's latency is this, not an epoch); a failed write is logged, and the request times out.
fn evaluate_replies<'s>(
    replies: timely::dataflow::Stream<'s, Epoch, Vec<EvaluateReply>>,
    producer: AckedProducer,
    topic: String,
    runtime: tokio::runtime::Handle,
) {
    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::operator::Operator;
    replies.sink(Pipeline, "EvaluateReplies", move |(input, _frontier)| {
        input.for_each(|_, data| {
            let records: Vec<_> = data.iter().map(|r| r.to_record(&topic)).collect();
            let producer = producer.clone();
            runtime.spawn(async move {
                if let Err(e) = producer.send_all(&records).await {
                    tracing::warn!(error = %e, answers = records.len(), "dry-run answers not written");
                }
            });
        });
    });
}

#[cfg(test)]
mod tests {
    /// Every operator of the built dataflow with a name of ours (not timely's generic `FlatMap`,
    /// `Concatenate`, ...) appears in the pictures above, and every name there exists.
    #[test]
    fn the_pictures_name_the_operators_the_dataflow_builds() {
        const GENERIC: [&str; 7] = ["FlatMap", "Concatenate", "Exchange", "Filter", "Input", "Probe", "OkErr"];
        let built = include_str!("../../docs/topology.txt");
        let picture: String = include_str!("topology.rs").lines().take_while(|l| l.starts_with("//!")).collect();
        let operators: std::collections::BTreeSet<&str> = built
            .lines()
            .filter(|l| !l.starts_with('#'))
            .flat_map(|l| l.split(" --> "))
            .map(|op| op.split(['[', '#']).next().unwrap_or(op).trim())
            .filter(|op| !op.is_empty() && !GENERIC.contains(op))
            .collect();
        assert!(operators.len() > 15, "{operators:?}");
        for op in &operators {
            assert!(picture.contains(op), "{op} is built but not in the pictures of topology.rs");
        }
        for drawn in ["EventSource", "ParseConsent", "AfterSends", "AfterLedger", "AfterClickHouse", "KafkaTransaction"]
        {
            assert!(operators.contains(drawn), "{drawn} is drawn but not built");
        }
    }
}
