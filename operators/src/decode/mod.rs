//! Decoding of `marketing.events` payloads into a field map.
//!
//! Two wire formats share the topic:
//! - JSON: a UTF-8 object (optionally preceded by whitespace);
//! - Avro in the Confluent wire format: magic byte `0x00`, a big-endian `u32` schema id, then the Avro
//!   binary datum. The writer schema is looked up by id (see [`SchemaLookup`]).
//!
//! Both decode into the same `serde_json` map (for the consent stage), or, for events, straight into the
//! fields normalization reads ([`event`]), so that normalization has one code path.

mod avro;
pub mod event;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::Schema;
use serde_json::{Map, Value};
use touchpoint_schemas::RejectReason;

use crate::normalize::Rejection;
use event::{json_event_fields, EventFields};

/// The Confluent wire format's magic byte.
pub const CONFLUENT_MAGIC: u8 = 0;

/// Why a schema could not be produced for an id.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SchemaLookupError {
    /// The registry answered and does not know this id: the record is at fault.
    #[error("schema id {0} is not registered")]
    NotFound(u32),
    /// The registry answered with a schema we cannot parse: the record cannot be decoded.
    #[error("schema id {id} is not a valid Avro schema: {message}")]
    Invalid { id: u32, message: String },
    /// The registry could not be asked (down, timeout): the record is not at fault, retry later.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
}

/// Resolves Confluent schema ids to parsed Avro writer schemas. Implementations cache.
pub trait SchemaLookup {
    fn schema(&self, id: u32) -> Result<Arc<Schema>, SchemaLookupError>;
}

impl<T: SchemaLookup + ?Sized> SchemaLookup for Arc<T> {
    fn schema(&self, id: u32) -> Result<Arc<Schema>, SchemaLookupError> {
        (**self).schema(id)
    }
}

/// A record that could not be decoded.
#[derive(Debug)]
pub enum DecodeError {
    /// The record itself is bad: it goes to the dead-letter topic.
    Reject(Rejection),
    /// A dependency failed (schema registry down): retry the same record later, never dead-letter it.
    Retry(String),
}

impl From<Rejection> for DecodeError {
    fn from(r: Rejection) -> Self {
        DecodeError::Reject(r)
    }
}

/// Decodes payloads of either wire format.
/// The most apache_avro may allocate for one collection of a datum (see [`RecordDecoder::new`]).
pub const AVRO_MAX_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

pub struct RecordDecoder<L> {
    lookup: L,
    /// Avro datum readers by schema id. Building a reader resolves the schema's names (a walk over the
    /// whole schema into a map): done per record, that was a third of Avro decoding. A reader borrows its
    /// schema, so the schema of each id is leaked once: schema ids are immutable and few, and the registry
    /// client keeps every schema it fetched for the life of the process anyway.
    readers: RwLock<HashMap<u32, Arc<AvroReader>>>,
}

impl<L: SchemaLookup> RecordDecoder<L> {
    pub fn new(lookup: L) -> Self {
        // apache_avro reserves up to this much for one array or map a datum claims (default 512 MB, per
        // record). A record is at most a few MB on the wire; the limit is process-wide, set once.
        apache_avro::util::max_allocation_bytes(AVRO_MAX_ALLOCATION_BYTES);
        RecordDecoder { lookup, readers: RwLock::default() }
    }

    pub fn decode(&self, payload: &[u8]) -> Result<Map<String, Value>, DecodeError> {
        match payload.first() {
            None => Err(malformed("empty payload").into()),
            Some(&CONFLUENT_MAGIC) => self.decode_avro(payload),
            Some(_) => Ok(decode_json(payload)?),
        }
    }

    /// Decodes an event payload into the fields normalization reads (see [`event`]).
    pub fn decode_event<'p>(&self, payload: &'p [u8]) -> Result<EventFields<'p>, DecodeError> {
        match payload.first() {
            None => Err(malformed("empty payload").into()),
            Some(&CONFLUENT_MAGIC) => {
                let (schema_id, body) = confluent_frame(payload)?;
                let reader = self.reader(schema_id)?;
                if let Some(fields) = reader.fast.and_then(|record| avro::read_event(record, body)) {
                    return Ok(fields);
                }
                self.decode_event_generic(payload)
            }
            Some(_) => Ok(decode_json_event(payload)?),
        }
    }

    /// [`Self::decode_event`] of an Avro payload through apache_avro's `Value` tree: for the schemas the
    /// direct reader does not cover, and for the verdict on datums it gave up on.
    fn decode_event_generic<'p>(&self, payload: &'p [u8]) -> Result<EventFields<'p>, DecodeError> {
        let (schema_id, value) = self.avro_value(payload)?;
        let apache_avro::types::Value::Record(record) = value else {
            return Err(not_a_record(schema_id, value).into());
        };
        let mut fields = EventFields::default();
        for (name, value) in record {
            if event::is_event_field(&name) {
                let json = Value::try_from(value)
                    .map_err(|e| malformed(format!("Avro field `{name}` has no JSON form: {e}")))?;
                fields.set_from_value(&name, json);
            }
        }
        Ok(fields)
    }

    fn decode_avro(&self, payload: &[u8]) -> Result<Map<String, Value>, DecodeError> {
        let (schema_id, value) = self.avro_value(payload)?;
        match Value::try_from(value).map_err(|e| malformed(format!("Avro value has no JSON form: {e}")))? {
            Value::Object(map) => Ok(map),
            other => {
                Err(malformed(format!("Avro schema id {schema_id} is not a record (got {})", json_kind(&other))).into())
            }
        }
    }

    /// The Avro datum of a Confluent-framed payload, decoded with its writer schema.
    fn avro_value(&self, payload: &[u8]) -> Result<(u32, apache_avro::types::Value), DecodeError> {
        let (schema_id, mut body) = confluent_frame(payload)?;
        let reader = self.reader(schema_id)?;
        let value = reader
            .generic
            .read_value(&mut body)
            .map_err(|e| malformed(format!("Avro datum does not decode with schema id {schema_id}: {e}")))?;
        if !body.is_empty() {
            return Err(malformed(format!(
                "{} trailing bytes after the Avro datum (schema id {schema_id})",
                body.len()
            ))
            .into());
        }
        Ok((schema_id, value))
    }

    /// The datum reader of a schema id: cached, or looked up in the registry and built.
    fn reader(&self, schema_id: u32) -> Result<Arc<AvroReader>, DecodeError> {
        // A poisoned lock only means another thread panicked while inserting: the map is still valid.
        if let Some(reader) = self.readers.read().unwrap_or_else(|e| e.into_inner()).get(&schema_id) {
            return Ok(reader.clone());
        }
        let schema = match self.lookup.schema(schema_id) {
            Ok(s) => s,
            Err(SchemaLookupError::NotFound(id)) => {
                return Err(Rejection::new(
                    RejectReason::UnknownSchema,
                    format!("Avro schema id {id} is not registered in the schema registry"),
                )
                .into())
            }
            Err(e @ SchemaLookupError::Invalid { .. }) => {
                return Err(Rejection::new(RejectReason::UnknownSchema, e.to_string()).into())
            }
            Err(SchemaLookupError::Unavailable(m)) => return Err(DecodeError::Retry(m)),
        };
        let schema: &'static Schema = Box::leak(Box::new(schema));
        let generic = GenericDatumReader::builder(schema)
            .build()
            .map_err(|e| malformed(format!("Avro datum does not decode with schema id {schema_id}: {e}")))?;
        let fast = match schema {
            Schema::Record(record) if avro::fast_decodable(schema) => Some(record),
            _ => None,
        };
        let reader = Arc::new(AvroReader { generic, fast });
        self.readers.write().unwrap_or_else(|e| e.into_inner()).insert(schema_id, reader.clone());
        Ok(reader)
    }
}

/// How the datums of one writer schema are read.
struct AvroReader {
    generic: GenericDatumReader<'static>,
    /// The schema, when [`avro::read_event`] can read its datums directly.
    fast: Option<&'static apache_avro::schema::RecordSchema>,
}

fn not_a_record(schema_id: u32, value: apache_avro::types::Value) -> Rejection {
    let kind = Value::try_from(value).map_or("a value without a JSON form", |v| json_kind(&v));
    malformed(format!("Avro schema id {schema_id} is not a record (got {kind})"))
}

/// Splits a Confluent-framed payload into its schema id and Avro body.
pub fn confluent_frame(payload: &[u8]) -> Result<(u32, &[u8]), Rejection> {
    if payload.len() < 5 || payload[0] != CONFLUENT_MAGIC {
        return Err(malformed(format!(
            "payload starts like Confluent Avro but is {} bytes, shorter than the 5-byte header",
            payload.len()
        )));
    }
    let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
    Ok((id, &payload[5..]))
}

/// Frames an Avro body in the Confluent wire format (used by producers and tests).
pub fn confluent_encode(schema_id: u32, avro_body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + avro_body.len());
    out.push(CONFLUENT_MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(avro_body);
    out
}

/// Parses a JSON object payload.
pub fn decode_json(payload: &[u8]) -> Result<Map<String, Value>, Rejection> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(malformed(format!("JSON payload must be an object, got {}", json_kind(&other)))),
        Err(e) => Err(malformed(format!("payload is neither JSON nor Confluent Avro: {e}"))),
    }
}

/// Parses a JSON object payload into the fields normalization reads, with the same rejections as
/// [`decode_json`] (which words them when the fast path fails).
pub fn decode_json_event(payload: &[u8]) -> Result<EventFields<'_>, Rejection> {
    json_event_fields(payload).map_err(|error| match decode_json(payload) {
        Err(rejection) => rejection,
        Ok(_) => malformed(format!("payload is neither JSON nor Confluent Avro: {error}")),
    })
}

pub(crate) fn json_kind(v: &Value) -> &'static str {
    event::JsonKind::of_value(v).name()
}

fn malformed(message: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::MalformedPayload, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Record;

    /// A pure in-memory lookup: fine for unit tests of decoding logic.
    struct Fixed(HashMap<u32, Arc<Schema>>, bool);

    impl SchemaLookup for Fixed {
        fn schema(&self, id: u32) -> Result<Arc<Schema>, SchemaLookupError> {
            if self.1 {
                return Err(SchemaLookupError::Unavailable("connection refused".into()));
            }
            self.0.get(&id).cloned().ok_or(SchemaLookupError::NotFound(id))
        }
    }

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::parse_str(touchpoint_schemas::avro::MARKETING_EVENT).unwrap())
    }

    fn avro_payload(id: u32) -> Vec<u8> {
        let schema = schema();
        let mut rec = Record::new(&schema).unwrap();
        rec.put("event_id", apache_avro::types::Value::Union(1, Box::new("e1".into())));
        rec.put("event_type", "Email Opened");
        rec.put("occurred_at", apache_avro::types::Value::Union(1, Box::new(1_700_000_000_000i64.into())));
        rec.put("subject_id", "s-1");
        rec.put("tenant_id", apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)));
        rec.put("source", apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)));
        rec.put(
            "attributes",
            apache_avro::types::Value::Map(
                [("plan".to_string(), apache_avro::types::Value::Union(4, Box::new("pro".into())))]
                    .into_iter()
                    .collect(),
            ),
        );
        let body = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(rec)
            .unwrap();
        confluent_encode(id, &body)
    }

    fn decoder(down: bool) -> RecordDecoder<Fixed> {
        RecordDecoder::new(Fixed([(7, schema())].into_iter().collect(), down))
    }

    fn reject_reason(r: Result<Map<String, Value>, DecodeError>) -> RejectReason {
        match r {
            Err(DecodeError::Reject(rej)) => rej.reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn json_object_decodes() {
        let m = decoder(false).decode(br#"  {"a": 1}"#).unwrap();
        assert_eq!(m["a"], 1);
    }

    #[test]
    fn json_non_object_and_garbage_are_malformed() {
        let d = decoder(false);
        assert_eq!(reject_reason(d.decode(b"[1,2]")), RejectReason::MalformedPayload);
        assert_eq!(reject_reason(d.decode(b"{not json")), RejectReason::MalformedPayload);
        assert_eq!(reject_reason(d.decode(b"")), RejectReason::MalformedPayload);
    }

    #[test]
    fn avro_decodes_to_the_same_field_map_as_json() {
        let m = decoder(false).decode(&avro_payload(7)).unwrap();
        assert_eq!(m["event_type"], "Email Opened");
        assert_eq!(m["occurred_at"], 1_700_000_000_000i64);
        assert_eq!(m["attributes"]["plan"], "pro");
        assert_eq!(m["tenant_id"], Value::Null);
    }

    #[test]
    fn avro_and_json_events_decode_to_the_same_fields() {
        let payload = avro_payload(7);
        let from_avro = decoder(false).decode_event(&payload).unwrap();
        let json = br#"{"event_id": "e1", "event_type": "Email Opened", "occurred_at": 1700000000000,
                        "subject_id": "s-1", "tenant_id": null, "source": null, "attributes": {"plan": "pro"}}"#;
        let from_json = decoder(false).decode_event(json).unwrap();
        assert_eq!(from_avro, from_json);
        assert_eq!(from_avro.attributes, Some(event::Attributes::Canonical(r#"{"plan":"pro"}"#.into())));
        assert_eq!(
            reject_reason(decoder(false).decode_event(&avro_payload(99)).map(|_| Map::new())),
            RejectReason::UnknownSchema
        );
        assert!(matches!(decoder(true).decode_event(&avro_payload(7)), Err(DecodeError::Retry(_))));
        for bad in [&b"[1,2]"[..], b"{not json", b""] {
            let Err(DecodeError::Reject(fast)) = decoder(false).decode_event(bad) else { panic!("accepted") };
            let Err(DecodeError::Reject(generic)) = decoder(false).decode(bad) else { panic!("accepted") };
            assert_eq!(fast, generic, "the same rejection as the generic path");
        }
    }

    #[test]
    fn unknown_schema_id_is_rejected_not_retried() {
        assert_eq!(reject_reason(decoder(false).decode(&avro_payload(99))), RejectReason::UnknownSchema);
    }

    #[test]
    fn registry_outage_is_a_retry_not_a_rejection() {
        assert!(matches!(decoder(true).decode(&avro_payload(7)), Err(DecodeError::Retry(_))));
    }

    #[test]
    fn truncated_and_padded_avro_are_malformed() {
        let d = decoder(false);
        let p = avro_payload(7);
        assert_eq!(reject_reason(d.decode(&p[..3])), RejectReason::MalformedPayload);
        assert_eq!(reject_reason(d.decode(&p[..p.len() - 4])), RejectReason::MalformedPayload);
        let mut padded = p.clone();
        padded.extend_from_slice(&[1, 2, 3]);
        assert_eq!(reject_reason(d.decode(&padded)), RejectReason::MalformedPayload);
    }
}
