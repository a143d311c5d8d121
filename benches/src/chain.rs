//! The whole operator chain of the pipeline without Kafka, ClickHouse or timely: what one worker does to
//! an epoch of source records, with the same code the dataflow operators call.
//!
//! decode (JSON / Confluent Avro, schema cached) → normalize → dead letter records for rejects → dedupe
//! → event-time watermark → [`GuardrailWorker`] (consent join, journey timers, rule intents, journeys,
//! frequency caps, send ledger) → the records the sinks would write: ClickHouse `events` batch token,
//! `connector.<channel>` messages, cap/ledger and journey changelog records.
//!
//! Left out (I/O, measured end to end instead): the Kafka fetch and produce, the ClickHouse insert's
//! RowBinary encoding and HTTP, timely's exchange between workers and its progress tracking.

use std::sync::Arc;

use apache_avro::Schema;
use touchpoint::stages::normalize::{normalize_record, DeadLetter};
use touchpoint::stages::sinks::{send_record, TopicRecord};
use touchpoint::PipelineConfig;
use touchpoint_connectors::clickhouse::batch_token;
use touchpoint_connectors::kafka::SourceRecord;
use touchpoint_generate::{consent_grants, generate, subject_profiles, AvroWriter, GeneratorConfig};
use touchpoint_operators::consent::{parse_consent, ConsentTable};
use touchpoint_operators::decision::{Decision, DecisionKind};
use touchpoint_operators::decode::{RecordDecoder, SchemaLookup, SchemaLookupError};
use touchpoint_operators::dedupe::EventDeduplicator;
use touchpoint_operators::guardrails::{
    CapSnapshot, GuardrailState, GuardrailWorker, JourneySnapshot, SegmentSnapshot,
};
use touchpoint_operators::journey::{Journeys, Transition};
use touchpoint_operators::normalize::Normalizer;
use touchpoint_operators::profile::{parse_profile_record, ProfileTable};
use touchpoint_operators::read_event::ReadEvent;
use touchpoint_operators::segment::{SegmentChange, Segments};
use touchpoint_schemas::NormalizedEvent;

/// An in-memory schema lookup (the registry client caches the same way after the first lookup).
pub struct CachedSchema(pub Arc<Schema>);

impl SchemaLookup for CachedSchema {
    fn schema(&self, _id: u32) -> Result<Arc<Schema>, SchemaLookupError> {
        Ok(self.0.clone())
    }
}

/// The shipped pipeline file (`pipelines/config/local.yaml`) with its journeys and segments directories
/// made absolute.
pub fn local_config() -> PipelineConfig {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("pipelines/config/local.yaml");
    let text = std::fs::read_to_string(&path)
        .expect("pipelines/config/local.yaml")
        .replace("  dir: ../journeys", &format!("  dir: {}", root.join("pipelines/journeys").display()))
        .replace("  dir: ../segments", &format!("  dir: {}", root.join("pipelines/segments").display()));
    PipelineConfig::parse(&text, &path).expect("the shipped pipeline file is valid")
}

/// Source records of the generator's mix (half Avro, 2% duplicates, 5% malformed), as the source hands
/// them to the pipeline, with the Avro schema they were written with.
pub fn source_records(count: usize, subjects: usize) -> (Vec<SourceRecord>, Arc<Schema>) {
    let schema = Arc::new(Schema::parse_str(touchpoint_schemas::avro::MARKETING_EVENT).expect("bundled schema"));
    let config = GeneratorConfig { count, subjects, ..Default::default() };
    let generated = generate(&config, Some(&AvroWriter { schema_id: 1, schema: &schema }));
    let records = generated
        .into_iter()
        .enumerate()
        .map(|(i, r)| SourceRecord {
            partition: (i % 4) as i32,
            offset: (i / 4) as i64,
            key: Some(r.key),
            payload: Some(r.payload),
            timestamp_ms: None,
            already_stored: false,
        })
        .collect();
    (records, schema)
}

/// What one pass of the chain produced (to check it did the work, and to report).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChainCounts {
    pub records: usize,
    pub events: usize,
    pub rejected: usize,
    pub duplicates: usize,
    pub decisions: usize,
    pub sends: usize,
    pub transitions: usize,
    pub changelog_records: usize,
    /// Bytes of every record the sinks would write (dead letters, sends, changelogs).
    pub bytes_out: usize,
    /// Segment entries and exits.
    pub memberships: usize,
}

/// What the pipeline's sinks are handed for one epoch, by sink (`crate::topology`'s names).
#[derive(Default)]
pub struct SinkInputs {
    /// `DeadLetterTopic`.
    pub dead_letters: Vec<DeadLetter>,
    /// `ClickHouseEvents`.
    pub events: Vec<NormalizedEvent>,
    /// `ClickHouseDecisions`; the allowed ones also go to `ConnectorTopics`.
    pub decisions: Vec<Arc<Decision>>,
    /// `ClickHouseTransitions`.
    pub transitions: Vec<Transition>,
    /// `CapsChangelog`.
    pub caps: Vec<CapSnapshot>,
    /// `JourneysChangelog`.
    pub journeys: Vec<JourneySnapshot>,
    /// `SegmentsChangelog`.
    pub segments: Vec<SegmentSnapshot>,
    /// `ClickHouseSegmentMemberships`.
    pub memberships: Vec<SegmentChange>,
}

/// Which parts of the pipeline file a [`Chain`] runs with.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    /// Profiles (else recipients come from the events).
    pub profiles: bool,
    /// The segments of `segments.dir`.
    pub segments: bool,
}

/// One worker's operators and state, built from a pipeline file, fed epochs of source records.
pub struct Chain {
    decoder: RecordDecoder<CachedSchema>,
    normalizer: Normalizer,
    deduplicator: EventDeduplicator,
    guardrails: GuardrailWorker,
    allowed_lateness_ms: i64,
    newest_event_ms: i64,
    connector_prefix: String,
}

impl Chain {
    /// The chain with the pipeline file's rules and the generator's consent (60% of subjects granted
    /// email and push marketing consent, as `touchpoint generate` produces).
    pub fn new(config: &PipelineConfig, schema: Arc<Schema>, subjects: usize) -> Self {
        Chain::with_profiles(config, schema, subjects, true)
    }

    /// [`Chain::new`], or without profiles (`profiles: false`): the recipients then come from the
    /// events (`event_may_override` for every purpose), as before profiles existed. The generator's
    /// events carry the same addresses its profiles hold, so both send the same.
    pub fn with_profiles(config: &PipelineConfig, schema: Arc<Schema>, subjects: usize, profiles: bool) -> Self {
        Chain::with(config, schema, subjects, Parts { profiles, segments: true })
    }

    /// [`Chain::new`] with some parts left out (to measure what they cost).
    pub fn with(config: &PipelineConfig, schema: Arc<Schema>, subjects: usize, parts: Parts) -> Self {
        let Parts { profiles, segments } = parts;
        let journeys = Journeys::new(config.journeys().expect("journeys"), &config.intents.time_zone_attribute);
        let mut rules =
            config.guardrail_rules(journeys, config.segments().expect("segments")).expect("guardrail rules");
        if !segments {
            rules.segments = Segments::default();
        }
        if !profiles {
            rules.profiles.recipients.default = touchpoint_operators::profile::RecipientPolicy::EventMayOverride;
            rules.profiles.recipients.by_purpose.clear();
        }
        // The generator's consent records (`touchpoint generate` produces the same), parsed as the
        // pipeline's consent stage does.
        let mut consent = ConsentTable::new();
        for record in consent_grants(subjects, 0.6, GeneratorConfig::default().seed, "marketing.consent") {
            let fields: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(record.payload.as_deref().unwrap_or_default()).expect("generated consent");
            consent.apply(&parse_consent(&fields, "default").expect("generated consent is valid"));
        }
        // And every subject's profile (recipients come from profiles), as the profiles stage parses them.
        let mut table = ProfileTable::default();
        for record in subject_profiles(if profiles { subjects } else { 0 }, "marketing.profiles") {
            let fields: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(record.payload.as_deref().unwrap_or_default()).expect("generated profile");
            let change = parse_profile_record(&fields, record.key.as_deref(), "default").expect("generated profile");
            table.apply(&change);
        }
        let state = GuardrailState { consent, profiles: table, ..Default::default() };
        Chain {
            decoder: RecordDecoder::new(CachedSchema(schema)),
            normalizer: config.built().expect("a parsed pipeline file").normalizer.clone(),
            deduplicator: EventDeduplicator::new(&config.dedupe),
            guardrails: GuardrailWorker::new(state, rules),
            allowed_lateness_ms: config.event_time.allowed_lateness.as_millis() as i64,
            newest_event_ms: i64::MIN,
            connector_prefix: config.topics.connectors.prefix.clone(),
        }
    }

    /// Processes one epoch of source records (one worker, every partition) and encodes what the sinks
    /// would write. Records are decoded and normalized by the pipeline's own `normalize_record`.
    pub fn epoch(&mut self, records: Vec<SourceRecord>, now_ms: i64, counts: &mut ChainCounts) {
        let out = self.outputs(records, now_ms, counts);
        let mut bytes = 0;
        for dead in &out.dead_letters {
            bytes += dead.to_record("marketing.events.dlq").payload.map_or(0, |p| p.len());
        }
        for d in out.decisions.iter().filter(|d| d.kind == DecisionKind::Allowed) {
            bytes += send_record(d, &self.connector_prefix).map_or(0, |r| r.payload.map_or(0, |p| p.len()));
        }
        for s in &out.caps {
            bytes += s.state.as_ref().and_then(|c| serde_json::to_vec(c).ok()).map_or(0, |p| p.len());
        }
        for s in &out.journeys {
            bytes += s.state.as_ref().and_then(|c| serde_json::to_vec(c).ok()).map_or(0, |p| p.len());
        }
        for s in &out.segments {
            bytes += s.state.as_ref().and_then(|c| serde_json::to_vec(c).ok()).map_or(0, |p| p.len());
        }
        bytes += batch_token("events", &out.events).len();
        counts.bytes_out += bytes;
    }

    /// Processes one epoch of source records and returns what the pipeline's sinks would be handed,
    /// unencoded (the end-to-end harness writes them with the sinks' own writers: "writes alone").
    pub fn outputs(&mut self, records: Vec<SourceRecord>, now_ms: i64, counts: &mut ChainCounts) -> SinkInputs {
        let mut out = SinkInputs::default();
        let mut events = Vec::with_capacity(records.len());
        for record in records {
            counts.records += 1;
            let outcome = match normalize_record(&self.decoder, &self.normalizer, "marketing.events", record, now_ms) {
                Ok(outcome) => outcome,
                // The chain's registry is in memory: it always answers, or the schema does not exist.
                Err(blocked) => {
                    tracing::error!(why = blocked.why, "schema lookup failed in the chain benchmark");
                    counts.rejected += 1;
                    continue;
                }
            };
            match outcome {
                Ok(ReadEvent { event, already_stored }) => {
                    let key = touchpoint_operators::dedupe::dedupe_key(&event.tenant_id, &event.event_id);
                    if self.deduplicator.first_seen(key, now_ms) {
                        self.newest_event_ms = self.newest_event_ms.max(event.occurred_at_ms);
                        events.push(ReadEvent { event, already_stored });
                    } else {
                        counts.duplicates += 1;
                    }
                }
                Err(dead) => {
                    counts.rejected += 1;
                    out.dead_letters.push(dead);
                }
            }
        }
        counts.events += events.len();
        // One partition clock per worker here: the watermark is the newest event time minus the lateness.
        self.guardrails.advance_watermark(self.newest_event_ms.saturating_sub(self.allowed_lateness_ms));
        let keyed = self.guardrails.process_epoch(vec![events], now_ms);
        counts.decisions += keyed.decisions.len();
        counts.sends += keyed.counts.allowed as usize;
        counts.transitions += keyed.transitions.len();
        counts.changelog_records += keyed.caps.len() + keyed.journeys.len() + keyed.segments.len();
        counts.memberships += keyed.memberships.len();
        out.decisions = keyed.decisions;
        out.transitions = keyed.transitions;
        out.caps = keyed.caps;
        out.journeys = keyed.journeys;
        out.segments = keyed.segments;
        out.memberships = keyed.memberships;
        out.events = keyed.events;
        out
    }

    /// The whole input in epochs of `per_epoch` records.
    pub fn run(&mut self, records: Vec<SourceRecord>, per_epoch: usize, now_ms: i64) -> ChainCounts {
        let mut counts = ChainCounts::default();
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let epoch: Vec<SourceRecord> = records.by_ref().take(per_epoch).collect();
            self.epoch(epoch, now_ms, &mut counts);
        }
        counts
    }
}
