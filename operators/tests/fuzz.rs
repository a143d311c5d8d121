//! Fuzzing on stable (issue 21): the parsers a producer reaches, fed arbitrary and near-valid input.
//! Each target must return (accept or reject), never panic or run away. Random bytes and mutations of
//! valid inputs; the number of cases per target is `TOUCHPOINT_FUZZ_CASES` (default 10,000, a few
//! seconds in all). A failure prints the shrunk input: it becomes a regression test below.

use std::sync::Arc;

use apache_avro::Schema;
use proptest::prelude::*;
use touchpoint_operators::consent::{parse_consent_fields, parse_tombstone_key, ConsentFields};
use touchpoint_operators::decode::{decode_json_event, RecordDecoder, SchemaLookup, SchemaLookupError};
use touchpoint_operators::journey::Expr;
use touchpoint_operators::normalize::{NormalizeConfig, Normalizer};
use touchpoint_schemas::SourcePosition;

fn cases() -> u32 {
    std::env::var("TOUCHPOINT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() }
}

/// A valid event, as the mutations' starting point.
const EVENT: &str = r#"{"event_id": "e-1", "event_type": "Order Completed", "occurred_at": "2026-11-25T10:00:00Z",
  "subject_id": "u-1", "tenant_id": "acme", "source": "web", "attributes": {"email": "A@B.co", "n": [1, 2.5, {"x": null}]}}"#;

const CONSENT: &str = r#"{"subject_id": "u-1", "tenant_id": "acme", "channel": "email", "purpose": "marketing",
  "status": "granted", "updated_at": 1764000000000, "source": "crm"}"#;

/// `text` with `edits` applied: each replaces one byte, inserts one, or cuts the rest.
fn mutate(text: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut out = text.to_vec();
    for &(at, kind, byte) in edits {
        if out.is_empty() {
            break;
        }
        let at = at % out.len();
        match kind % 3 {
            0 => out[at] = byte,
            1 => out.insert(at, byte),
            _ => out.truncate(at),
        }
    }
    out
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..8)
}

struct One(Arc<Schema>);
impl SchemaLookup for One {
    fn schema(&self, _id: u32) -> Result<Arc<Schema>, SchemaLookupError> {
        Ok(self.0.clone())
    }
}

fn normalizer() -> Normalizer {
    Normalizer::new(NormalizeConfig::default()).expect("default normalize config")
}

fn position() -> SourcePosition {
    SourcePosition { topic: "t".into(), partition: 0, offset: 0 }
}

proptest! {
    #![proptest_config(config())]

    /// The JSON event decoder and normalization, on bytes and on mutated events.
    #[test]
    fn json_events(bytes in prop::collection::vec(any::<u8>(), 0..256), edits in edits()) {
        let n = normalizer();
        for input in [bytes, mutate(EVENT.as_bytes(), &edits)] {
            if let Ok(fields) = decode_json_event(&input) {
                let _ = n.normalize(fields, position(), 1_764_000_000_000);
            }
        }
    }

    /// Confluent-framed Avro in the event schema: the direct reader and the value tree, on arbitrary
    /// datums and on mutations of a valid one.
    #[test]
    fn avro_events(bytes in prop::collection::vec(any::<u8>(), 0..256), edits in edits()) {
        let schema = Arc::new(Schema::parse_str(touchpoint_schemas::avro::MARKETING_EVENT).expect("schema"));
        let decoder = RecordDecoder::new(One(schema));
        let valid = valid_avro();
        for body in [bytes, mutate(&valid, &edits)] {
            let payload = touchpoint_operators::decode::confluent_encode(1, &body);
            let _ = decoder.decode_event(&payload).map(|fields| normalizer().normalize(fields, position(), 0));
            let _ = decoder.decode(&payload);
        }
    }

    /// Consent records (JSON fields, then the table's checks) and tombstone keys.
    #[test]
    fn consent_records(bytes in prop::collection::vec(any::<u8>(), 0..256), edits in edits()) {
        for input in [bytes, mutate(CONSENT.as_bytes(), &edits)] {
            if let Some(fields) = ConsentFields::from_json(&input) {
                let _ = parse_consent_fields(&fields, "default");
            }
            let _ = parse_tombstone_key(&input);
        }
    }

    /// The journey predicate language, on arbitrary text and on token soup.
    #[test]
    fn journey_expressions(
        text in ".{0,64}",
        tokens in prop::collection::vec(
            prop::sample::select(vec!["event.attributes.amount", ">", "100", "and", "or", "not", "(", ")", "==",
                "'x'", "consent(email, marketing)", "in", "[", "]", ",", "vars.a", "starts_with", "\"", "1e999"]),
            0..16,
        ),
    ) {
        let _ = Expr::parse(&text);
        let _ = Expr::parse(&tokens.join(" "));
    }
}

#[test]
fn the_avro_seed_is_a_valid_event() {
    let schema = Arc::new(Schema::parse_str(touchpoint_schemas::avro::MARKETING_EVENT).expect("schema"));
    let payload = touchpoint_operators::decode::confluent_encode(1, &valid_avro());
    assert!(RecordDecoder::new(One(schema)).decode_event(&payload).is_ok());
}

/// A valid datum of the event schema (for the Avro mutations).
fn valid_avro() -> Vec<u8> {
    use apache_avro::types::Value as Avro;
    let schema = Schema::parse_str(touchpoint_schemas::avro::MARKETING_EVENT).expect("schema");
    let Schema::Record(record) = &schema else { panic!("a record") };
    let value = Avro::Record(
        record
            .fields
            .iter()
            .map(|f| {
                let v = match (f.name.as_str(), &f.schema) {
                    (_, Schema::Union(u)) => {
                        let i = u.variants().iter().position(|s| *s == Schema::String).unwrap_or(0);
                        let inner =
                            if u.variants()[i] == Schema::String { Avro::String("x".into()) } else { Avro::Null };
                        Avro::Union(i as u32, Box::new(inner))
                    }
                    ("occurred_at", Schema::Long) => Avro::Long(1_764_000_000_000),
                    (_, Schema::Long) => Avro::Long(1),
                    (_, Schema::Map(_)) => Avro::Map(Default::default()),
                    _ => Avro::String("x".into()),
                };
                (f.name.clone(), v)
            })
            .collect(),
    );
    apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .expect("a valid datum")
}
