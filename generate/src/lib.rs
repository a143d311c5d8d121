//! Demo and test data, kept out of the pipeline's code path: `touchpoint generate`, the end-to-end tests
//! and the benchmarks use it. A realistic, reproducible stream of marketing events. JSON and Confluent-framed Avro
//! mixed, producer spellings of event types, timestamps in
//! every accepted notation, a share of duplicates, and a share of malformed records covering every
//! rejection reason. Each record carries what the pipeline is expected to do with it.

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use touchpoint_operators::decode::confluent_encode;
use touchpoint_operators::normalize::{canonical_json, derived_event_id, lowercase_emails};
use touchpoint_schemas::RejectReason;

/// Canonical event types and the spellings producers use for them. The local pipeline file lists the
/// canonical names as known types and the spaced spellings as aliases.
pub const EVENT_MIX: &[(&str, u32, &[&str])] = &[
    ("page_viewed", 35, &["Page View", "pageViewed", "page_viewed"]),
    ("email_opened", 18, &["Email Opened", "email-opened", "Opened Email"]),
    ("email_clicked", 8, &["Email Clicked", "emailClicked"]),
    ("cart_updated", 10, &["Cart Updated", "cart_updated"]),
    ("order_completed", 6, &["Checkout Completed", "Order Placed", "order_completed"]),
    ("signed_up", 5, &["Signed Up", "signed_up"]),
    ("app_opened", 12, &["App Opened", "appOpened"]),
    ("profile_updated", 6, &["Profile Updated"]),
];

/// Systems that produce events.
const SOURCES: [&str; 5] = ["web", "ios", "android", "crm", "billing"];

/// A schema id no registry hands out (for the unknown-schema rejection).
pub const UNKNOWN_SCHEMA_ID: u32 = 0x7fff_fff0;

#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    pub count: usize,
    pub subjects: usize,
    /// Share of records that are malformed (cycling through every rejection reason).
    pub malformed_share: f64,
    /// Share of records that repeat an earlier valid event.
    pub duplicate_share: f64,
    /// Share of valid records encoded as Avro (the rest JSON). Needs a registered schema id.
    pub avro_share: f64,
    pub seed: u64,
    /// The clock the events are generated around: event times advance through the `span_ms` before it,
    /// record by record, each up to two minutes out of order (like clients that batch their uploads).
    pub now_ms: i64,
    /// How much event time the records cover (default 7 days: a week of history). A live stream produced
    /// at a steady rate over D seconds uses D, so event time keeps pace with the wall clock.
    pub span_ms: i64,
    /// Share of valid events that arrive hours behind the others (2 to 6 h: an app that was offline),
    /// i.e. beyond the local profile's allowed lateness of 1 h once the stream has moved on.
    pub late_share: f64,
    /// Relative weights of canonical event types; empty means [`EVENT_MIX`]'s defaults, otherwise
    /// unlisted types are not generated. See [`parse_mix`].
    pub mix: std::collections::BTreeMap<String, u32>,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            count: 10_000,
            subjects: 1_000,
            malformed_share: 0.05,
            duplicate_share: 0.02,
            avro_share: 0.5,
            seed: 42,
            now_ms: chrono::Utc::now().timestamp_millis(),
            span_ms: 7 * 24 * 3_600_000,
            late_share: 0.0,
            mix: Default::default(),
        }
    }
}

/// Parses an event mix such as `page_viewed=50,email_opened=30,order_completed=20`.
pub fn parse_mix(text: &str) -> Result<std::collections::BTreeMap<String, u32>, String> {
    let mut mix = std::collections::BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part.split_once('=').ok_or_else(|| format!("{part:?}: expected type=weight"))?;
        let name = name.trim();
        if !EVENT_MIX.iter().any(|(t, _, _)| *t == name) {
            let known: Vec<&str> = EVENT_MIX.iter().map(|(t, _, _)| *t).collect();
            return Err(format!("unknown event type {name:?}; the generator knows {}", known.join(", ")));
        }
        let weight: u32 = weight.trim().parse().map_err(|_| format!("{part:?}: weight must be a whole number"))?;
        mix.insert(name.to_string(), weight);
    }
    if mix.values().all(|w| *w == 0) {
        return Err("the mix needs at least one type with a weight above 0".into());
    }
    Ok(mix)
}

/// What the pipeline must do with a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "expect", rename_all = "snake_case")]
pub enum Expected {
    Valid { event_id: String },
    Duplicate { event_id: String },
    Rejected { reason: String },
}

#[derive(Debug, Clone)]
pub struct GeneratedRecord {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub expected: Expected,
}

/// SplitMix64: tiny, fast, and the same sequence on every platform and version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// One valid event before encoding.
struct Draft {
    event_id: Option<String>,
    raw_type: String,
    canonical_type: &'static str,
    occurred_ms: i64,
    occurred: Value,
    subject: String,
    tenant: Option<&'static str>,
    source: &'static str,
    attributes: Value,
}

impl Draft {
    fn expected_id(&self) -> String {
        match &self.event_id {
            Some(id) => id.clone(),
            None => {
                let mut attrs = self.attributes.clone();
                lowercase_emails(&mut attrs);
                derived_event_id(
                    self.tenant.unwrap_or("default"),
                    self.canonical_type,
                    self.subject.trim(),
                    self.occurred_ms,
                    &canonical_json(&attrs),
                )
            }
        }
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        if let Some(id) = &self.event_id {
            m.insert("event_id".into(), json!(id));
        }
        m.insert("event_type".into(), json!(self.raw_type));
        m.insert("occurred_at".into(), self.occurred.clone());
        m.insert("subject_id".into(), json!(self.subject));
        if let Some(t) = self.tenant {
            m.insert("tenant_id".into(), json!(t));
        }
        m.insert("source".into(), json!(self.source));
        m.insert("attributes".into(), self.attributes.clone());
        Value::Object(m)
    }

    fn to_avro(&self) -> Avro {
        let opt = |v: Option<&str>| match v {
            Some(s) => Avro::Union(1, Box::new(Avro::String(s.to_string()))),
            None => Avro::Union(0, Box::new(Avro::Null)),
        };
        let occurred = match &self.occurred {
            Value::String(s) => Avro::Union(0, Box::new(Avro::String(s.clone()))),
            Value::Number(n) if n.is_i64() => Avro::Union(1, Box::new(Avro::Long(n.as_i64().unwrap_or_default()))),
            Value::Number(n) => Avro::Union(2, Box::new(Avro::Double(n.as_f64().unwrap_or_default()))),
            other => Avro::Union(0, Box::new(Avro::String(other.to_string()))),
        };
        let attributes = match &self.attributes {
            Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), avro_attribute(v))).collect(),
            _ => Default::default(),
        };
        Avro::Record(vec![
            ("event_id".into(), opt(self.event_id.as_deref())),
            ("event_type".into(), Avro::String(self.raw_type.clone())),
            ("occurred_at".into(), occurred),
            ("subject_id".into(), Avro::String(self.subject.clone())),
            ("tenant_id".into(), opt(self.tenant)),
            ("source".into(), opt(Some(self.source))),
            ("attributes".into(), Avro::Map(attributes)),
        ])
    }
}

/// Attribute values in the schema's union `[null, boolean, long, double, string]`.
fn avro_attribute(v: &Value) -> Avro {
    match v {
        Value::Null => Avro::Union(0, Box::new(Avro::Null)),
        Value::Bool(b) => Avro::Union(1, Box::new(Avro::Boolean(*b))),
        Value::Number(n) if n.is_i64() => Avro::Union(2, Box::new(Avro::Long(n.as_i64().unwrap_or_default()))),
        Value::Number(n) => Avro::Union(3, Box::new(Avro::Double(n.as_f64().unwrap_or_default()))),
        Value::String(s) => Avro::Union(4, Box::new(Avro::String(s.clone()))),
        other => Avro::Union(4, Box::new(Avro::String(other.to_string()))),
    }
}

/// The registered Avro writer schema to encode with.
pub struct AvroWriter<'a> {
    pub schema_id: u32,
    pub schema: &'a Schema,
}

impl AvroWriter<'_> {
    fn encode(&self, value: Avro) -> Vec<u8> {
        let body = apache_avro::writer::datum::GenericDatumWriter::builder(self.schema)
            .build()
            .and_then(|w| w.write_value_to_vec(value))
            .unwrap_or_default();
        confluent_encode(self.schema_id, &body)
    }
}

pub fn generate(config: &GeneratorConfig, avro: Option<&AvroWriter<'_>>) -> Vec<GeneratedRecord> {
    let mut rng = Rng(config.seed ^ 0x5eed);
    let mut out = Vec::with_capacity(config.count);
    let mut valid: Vec<usize> = Vec::new();
    let mut malformed = 0usize;
    let weights: Vec<u64> = EVENT_MIX
        .iter()
        .map(|(t, w, _)| u64::from(if config.mix.is_empty() { *w } else { config.mix.get(*t).copied().unwrap_or(0) }))
        .collect();
    for i in 0..config.count {
        if !valid.is_empty() && rng.chance(config.duplicate_share) {
            let original = &out[valid[rng.below(valid.len() as u64) as usize]];
            let GeneratedRecord { key, payload, expected } = original;
            let event_id = match expected {
                Expected::Valid { event_id } => event_id.clone(),
                _ => unreachable!("only valid records are duplicated"),
            };
            out.push(GeneratedRecord {
                key: key.clone(),
                payload: payload.clone(),
                expected: Expected::Duplicate { event_id },
            });
            continue;
        }
        let draft = draft(&mut rng, config, i, &weights);
        let use_avro = avro.is_some() && rng.chance(config.avro_share);
        if rng.chance(config.malformed_share) {
            let reason = RejectReason::EVENT[malformed % RejectReason::EVENT.len()];
            malformed += 1;
            out.push(malformed_record(&mut rng, draft, reason, avro));
            continue;
        }
        let payload = match (use_avro, avro) {
            (true, Some(w)) => w.encode(draft.to_avro()),
            _ => draft.to_json().to_string().into_bytes(),
        };
        valid.push(out.len());
        out.push(GeneratedRecord {
            key: draft.subject.trim().as_bytes().to_vec(),
            payload,
            expected: Expected::Valid { event_id: draft.expected_id() },
        });
    }
    out
}

fn draft(rng: &mut Rng, config: &GeneratorConfig, i: usize, weights: &[u64]) -> Draft {
    let mut roll = rng.below(weights.iter().sum());
    let (canonical_type, _, spellings) = EVENT_MIX
        .iter()
        .zip(weights)
        .find(|(_, w)| {
            let hit = roll < **w;
            roll = roll.saturating_sub(**w);
            hit
        })
        .map_or(EVENT_MIX[0], |(entry, _)| *entry);
    let subject_no = rng.below(config.subjects.max(1) as u64);
    let subject = if rng.chance(0.05) { format!("  user-{subject_no} ") } else { format!("user-{subject_no}") };
    let progress = i64::try_from(i).unwrap_or(i64::MAX) as f64 / config.count.max(1) as f64;
    let mut occurred_ms =
        config.now_ms - config.span_ms + (progress * config.span_ms as f64) as i64 - rng.below(120_000) as i64;
    if rng.chance(config.late_share) {
        occurred_ms -= 2 * 3_600_000 + rng.below(4 * 3_600_000) as i64;
    }
    let occurred = match rng.below(4) {
        0 => {
            occurred_ms -= occurred_ms.rem_euclid(1000);
            json!(occurred_ms / 1000)
        }
        1 => json!(occurred_ms),
        2 => json!(chrono::DateTime::from_timestamp_millis(occurred_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))),
        _ => {
            let offset = chrono::FixedOffset::east_opt(2 * 3600)
                .unwrap_or(chrono::FixedOffset::east_opt(0).expect("zero offset"));
            json!(chrono::DateTime::from_timestamp_millis(occurred_ms)
                .map(|t| t.with_timezone(&offset).to_rfc3339_opts(chrono::SecondsFormat::Millis, false)))
        }
    };
    let mut attributes = Map::new();
    attributes.insert("email".into(), json!(format!("User{subject_no}@Example.com")));
    // Most subjects have the app (a push token); a few tokens are stale (the provider answers
    // UNREGISTERED, so those pushes bounce).
    if !subject_no.is_multiple_of(10) {
        let prefix = if subject_no.is_multiple_of(97) { "invalid" } else { "fcm" };
        attributes.insert("device_token".into(), json!(format!("{prefix}-{subject_no:08x}")));
    }
    attributes.insert("country".into(), json!(rng.pick(&["US", "DE", "FR", "BR", "JP", "IN"])));
    match canonical_type {
        "page_viewed" => {
            attributes.insert("url".into(), json!(format!("/products/{}", rng.below(500))));
        }
        "email_opened" | "email_clicked" => {
            attributes
                .insert("campaign".into(), json!(rng.pick(&["welcome", "black_friday", "winback", "newsletter"])));
        }
        "cart_updated" | "order_completed" => {
            attributes.insert("amount".into(), json!((rng.below(50_000) as f64) / 100.0 + 0.5));
            attributes.insert("currency".into(), json!("USD"));
        }
        _ => {
            attributes.insert("plan".into(), json!(rng.pick(&["free", "pro", "enterprise"])));
        }
    }
    Draft {
        event_id: if rng.chance(0.8) { Some(format!("evt-{:x}-{i}", config.seed)) } else { None },
        raw_type: rng.pick(spellings).to_string(),
        canonical_type,
        occurred_ms,
        occurred,
        subject,
        tenant: *rng.pick(&[Some("acme"), Some("globex"), None]),
        source: SOURCES[rng.below(SOURCES.len() as u64) as usize],
        attributes: Value::Object(attributes),
    }
}

fn malformed_record(
    rng: &mut Rng,
    mut d: Draft,
    reason: RejectReason,
    avro: Option<&AvroWriter<'_>>,
) -> GeneratedRecord {
    let key = d.subject.trim().as_bytes().to_vec();
    let expected = Expected::Rejected { reason: reason.code().to_string() };
    let avro_ok = avro.is_some() && rng.chance(0.5);
    match reason {
        RejectReason::MalformedPayload => {
            let payload = match avro {
                Some(w) if avro_ok => {
                    let full = w.encode(d.to_avro());
                    full[..full.len().saturating_sub(7).max(6)].to_vec()
                }
                _ => br#"{"event_type": "Page View", "subject_id": "user-1", "#.to_vec(),
            };
            return GeneratedRecord { key, payload, expected };
        }
        RejectReason::UnknownSchema => {
            let payload = confluent_encode(UNKNOWN_SCHEMA_ID, b"\x02\x0aabcde");
            return GeneratedRecord { key, payload, expected };
        }
        RejectReason::MissingField | RejectReason::InvalidFieldType => {
            // The Avro schema cannot express these: JSON only.
            let mut v = d.to_json();
            if let Value::Object(m) = &mut v {
                if reason == RejectReason::MissingField {
                    m.remove(*rng.pick(&["event_type", "occurred_at", "subject_id", "attributes"]));
                } else {
                    m.insert("attributes".into(), json!("plan=pro"));
                }
            }
            return GeneratedRecord { key, payload: v.to_string().into_bytes(), expected };
        }
        RejectReason::InvalidTimestamp => d.occurred = json!("sometime last week"),
        RejectReason::TimestampInFuture => {
            d.occurred = json!(chrono::DateTime::from_timestamp_millis(d.occurred_ms + 30 * 24 * 3_600_000)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        }
        RejectReason::InvalidSubjectId => d.subject = "   ".into(),
        RejectReason::InvalidEventType => d.raw_type = "!!!".into(),
        RejectReason::UnknownEventType => d.raw_type = "Mystery Event".into(),
        RejectReason::InvalidId => d.tenant = Some("acme/eu"),
        consent_only @ (RejectReason::UnknownChannel
        | RejectReason::UnknownPurpose
        | RejectReason::UnknownConsentStatus
        | RejectReason::InvalidKey
        | RejectReason::InvalidProfileField) => {
            unreachable!("{consent_only} is not a reason to reject an event (consent and profile records only)")
        }
    }
    let payload = match avro {
        Some(w) if avro_ok => w.encode(d.to_avro()),
        _ => d.to_json().to_string().into_bytes(),
    };
    GeneratedRecord { key, payload, expected }
}

/// Consent grants (email and push marketing) for a share of the generator's subjects, in each tenant
/// the generator uses, as records for the consent topic (key `tenant/subject/channel/purpose`).
pub fn consent_grants(
    subjects: usize,
    share: f64,
    seed: u64,
    topic: &str,
) -> Vec<touchpoint_connectors::kafka::OutgoingRecord> {
    let mut rng = Rng(seed ^ 0xc0_05e7);
    let mut out = Vec::new();
    for n in 0..subjects {
        if !rng.chance(share) {
            continue;
        }
        for tenant in ["acme", "globex", "default"] {
            for channel in ["email", "push"] {
                let value = json!({"subject_id": format!("user-{n}"), "tenant_id": tenant, "channel": channel,
                                   "purpose": "marketing", "status": "granted", "updated_at": "2026-01-01T00:00:00Z",
                                   "source": "generator"});
                out.push(touchpoint_connectors::kafka::OutgoingRecord {
                    partition: None,
                    topic: topic.to_string(),
                    key: Some(format!("{tenant}/user-{n}/{channel}/marketing").into_bytes()),
                    payload: Some(value.to_string().into_bytes()),
                    headers: vec![],
                });
            }
        }
    }
    out
}

/// A profile for each of the generator's subjects, in each tenant the generator uses, as records for
/// the profiles topic (key `tenant/subject`): the email address the events carry (lower-cased, as
/// normalization writes it), the push token most subjects' events carry, a plan and a first name. No
/// time zone: calendar caps count in the pipeline's default zone, as they did when events carried none.
pub fn subject_profiles(subjects: usize, topic: &str) -> Vec<touchpoint_connectors::kafka::OutgoingRecord> {
    const PLANS: [&str; 3] = ["free", "pro", "enterprise"];
    let mut out = Vec::with_capacity(subjects * 3);
    for n in 0..subjects {
        for tenant in ["acme", "globex", "default"] {
            let mut value = json!({"subject_id": format!("user-{n}"), "tenant_id": tenant,
                                   "updated_at": "2026-01-01T00:00:00Z", "email": format!("user{n}@example.com"),
                                   "locale": "en-US", "source": "generator",
                                   "attributes": {"plan": PLANS[n % 3], "first_name": format!("User {n}")}});
            if !n.is_multiple_of(10) {
                let prefix = if n.is_multiple_of(97) { "invalid" } else { "fcm" };
                value["devices"] = json!([{"token": format!("{prefix}-{n:08x}"), "platform": "android"}]);
            }
            out.push(touchpoint_connectors::kafka::OutgoingRecord {
                partition: None,
                topic: topic.to_string(),
                key: Some(format!("{tenant}/user-{n}").into_bytes()),
                payload: Some(value.to_string().into_bytes()),
                headers: vec![],
            });
        }
    }
    out
}

/// Where generated events go: the pipeline's source topic, the topics to create first, the registry
/// that gets the event schema.
pub struct Target<'a> {
    pub registry: &'a touchpoint_connectors::schema_registry::SchemaRegistryConfig,
    pub events_topic: &'a str,
    /// Created (when missing) before producing: the pipeline's topics.
    pub topics: Vec<touchpoint_connectors::kafka::TopicSpec>,
}

impl<'a> Target<'a> {
    pub fn new(
        registry: &'a touchpoint_connectors::schema_registry::SchemaRegistryConfig,
        events_topic: &'a str,
        topics: Vec<touchpoint_connectors::kafka::TopicSpec>,
    ) -> Self {
        Target { registry, events_topic, topics }
    }
}

/// Registers the event schema for the source topic (subject `<topic>-value`) and generates
/// `generator.count` records with it; returns the schema id and the records, not produced yet. Blocks
/// (the registry client): call it outside async code.
pub fn generate_registered(
    target: &Target<'_>,
    generator: &GeneratorConfig,
) -> anyhow::Result<(u32, Vec<GeneratedRecord>)> {
    use touchpoint_connectors::schema_registry::RegistryClient;

    let schema = Schema::parse_str(touchpoint_schemas::avro::MARKETING_EVENT)?;
    let schema_id = RegistryClient::new(target.registry)?
        .register_avro(&format!("{}-value", target.events_topic), touchpoint_schemas::avro::MARKETING_EVENT)?;
    Ok((schema_id, generate(generator, Some(&AvroWriter { schema_id, schema: &schema }))))
}

/// A generated record and the (partition, offset) the broker gave it.
pub type ProducedRecord = (GeneratedRecord, (i32, i64));

/// Registers the event schema (subject `<topic>-value`), generates `generator.count` records (half Avro
/// by default) and produces them to the pipeline's source topic with `kafka`'s producer settings,
/// waiting for every acknowledgement. Call it outside async code: the registry client blocks.
pub fn produce_generated(
    target: &Target<'_>,
    kafka: &touchpoint_connectors::kafka::KafkaConfig,
    generator: &GeneratorConfig,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<(u32, Vec<ProducedRecord>)> {
    use touchpoint_connectors::kafka::{ensure_topics, AckedProducer, OutgoingRecord};

    let topic = target.events_topic;
    let (schema_id, records) = generate_registered(target, generator)?;
    runtime.block_on(ensure_topics(kafka, &target.topics))?;
    let producer = AckedProducer::new(kafka)?;
    let mut positions = Vec::with_capacity(records.len());
    for chunk in records.chunks(10_000) {
        let outgoing: Vec<OutgoingRecord> = chunk
            .iter()
            .map(|r| OutgoingRecord {
                partition: None,
                topic: topic.to_string(),
                key: Some(r.key.clone()),
                payload: Some(r.payload.clone()),
                headers: vec![],
            })
            .collect();
        positions.extend(runtime.block_on(producer.send_all(&outgoing))?);
    }
    Ok((schema_id, records.into_iter().zip(positions).collect()))
}

/// The ids of the records that must end up stored (valid, first occurrences).
pub fn valid_event_ids(records: &[ProducedRecord]) -> std::collections::BTreeSet<String> {
    records
        .iter()
        .filter_map(|(r, _)| match &r.expected {
            Expected::Valid { event_id } => Some(event_id.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use touchpoint_operators::decode::{RecordDecoder, SchemaLookup, SchemaLookupError};
    use touchpoint_operators::normalize::Normalizer;
    use touchpoint_schemas::SourcePosition;

    struct OneSchema(std::sync::Arc<Schema>);
    impl SchemaLookup for OneSchema {
        fn schema(&self, id: u32) -> Result<std::sync::Arc<Schema>, SchemaLookupError> {
            if id == 1 {
                Ok(self.0.clone())
            } else {
                Err(SchemaLookupError::NotFound(id))
            }
        }
    }

    /// The normalizer of the shipped pipeline file (its `normalize` section).
    fn local_normalizer() -> Normalizer {
        let file: serde_yaml::Value = serde_yaml::from_str(include_str!("../../pipelines/config/local.yaml")).unwrap();
        let normalize = file.get("normalize").cloned().unwrap_or_default();
        Normalizer::new(serde_yaml::from_value(normalize).unwrap()).unwrap()
    }

    /// The generator's expectations agree with the normalizer on every record (pure, no services).
    #[test]
    fn expectations_match_the_normalizer() {
        let schema = Schema::parse_str(touchpoint_schemas::avro::MARKETING_EVENT).unwrap();
        let cfg = GeneratorConfig { count: 5_000, now_ms: 1_795_600_800_000, ..Default::default() };
        let records = generate(&cfg, Some(&AvroWriter { schema_id: 1, schema: &schema }));
        let decoder = RecordDecoder::new(OneSchema(std::sync::Arc::new(schema.clone())));
        let normalizer = local_normalizer();
        let mut reasons = HashSet::new();
        let (mut avro, mut duplicates) = (0, 0);
        for (i, r) in records.iter().enumerate() {
            avro += usize::from(r.payload.first() == Some(&0));
            let pos = SourcePosition { topic: "t".into(), partition: 0, offset: i as i64 };
            let outcome = match decoder.decode_event(&r.payload) {
                Ok(fields) => normalizer.normalize(fields, pos, cfg.now_ms).map_err(|e| e.reason),
                Err(touchpoint_operators::decode::DecodeError::Reject(e)) => Err(e.reason),
                Err(e) => panic!("{e:?}"),
            };
            match (&r.expected, outcome) {
                (Expected::Valid { event_id } | Expected::Duplicate { event_id }, Ok(e)) => {
                    assert_eq!(&e.event_id, event_id, "record {i}");
                    duplicates += usize::from(matches!(r.expected, Expected::Duplicate { .. }));
                }
                (Expected::Rejected { reason }, Err(got)) => {
                    assert_eq!(reason, got.code(), "record {i}");
                    reasons.insert(got);
                }
                (want, got) => panic!("record {i}: expected {want:?}, got {got:?}"),
            }
        }
        assert_eq!(reasons.len(), RejectReason::EVENT.len(), "every rejection reason is generated: {reasons:?}");
        assert!(avro > 1_000 && avro < 4_000, "{avro} Avro records");
        assert!(duplicates > 50, "{duplicates} duplicates");
    }

    #[test]
    fn the_mix_selects_event_types() {
        let mix = parse_mix("email_opened=1, order_completed=3").unwrap();
        let cfg = GeneratorConfig {
            count: 2_000,
            malformed_share: 0.0,
            duplicate_share: 0.0,
            mix,
            now_ms: 1_795_600_800_000,
            ..Default::default()
        };
        let normalizer = local_normalizer();
        let mut counts = std::collections::BTreeMap::new();
        for (i, r) in generate(&cfg, None).iter().enumerate() {
            let fields = touchpoint_operators::decode::decode_json_event(&r.payload).unwrap();
            let e = normalizer
                .normalize(fields, SourcePosition { topic: "t".into(), partition: 0, offset: i as i64 }, cfg.now_ms)
                .unwrap();
            *counts.entry(e.event_type).or_insert(0) += 1;
        }
        assert_eq!(counts.keys().collect::<Vec<_>>(), ["email_opened", "order_completed"]);
        assert!(counts["order_completed"] > 2 * counts["email_opened"], "{counts:?}");
        assert!(parse_mix("nope=1").is_err());
        assert!(parse_mix("email_opened=x").is_err());
        assert!(parse_mix("email_opened=0").is_err());
    }

    #[test]
    fn generation_is_reproducible() {
        let cfg = GeneratorConfig { count: 500, now_ms: 1_795_600_800_000, ..Default::default() };
        let a: Vec<Vec<u8>> = generate(&cfg, None).into_iter().map(|r| r.payload).collect();
        let b: Vec<Vec<u8>> = generate(&cfg, None).into_iter().map(|r| r.payload).collect();
        assert_eq!(a, b);
        let c: Vec<Vec<u8>> =
            generate(&GeneratorConfig { seed: 7, ..cfg }, None).into_iter().map(|r| r.payload).collect();
        assert_ne!(a, c);
    }
}
