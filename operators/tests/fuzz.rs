//! Fuzzing on stable (issue 21): the parsers a producer reaches, fed arbitrary and near-valid input.
//! Each target must return (accept or reject), never panic or run away. Random bytes and mutations of
//! valid inputs; the number of cases per target is `TOUCHPOINT_FUZZ_CASES` (default 10,000, a few
//! seconds in all). A failure prints the shrunk input: it becomes a regression test below.

use std::sync::Arc;

use apache_avro::Schema;
use proptest::prelude::*;
use touchpoint_operators::consent::{
    check_record_key, parse_consent_fields, parse_tombstone_key, ConsentConfig, ConsentFields, ConsentTable,
};
use touchpoint_operators::decode::{decode_json_event, RecordDecoder, SchemaLookup, SchemaLookupError};
use touchpoint_operators::journey::Expr;
use touchpoint_operators::normalize::{NormalizeConfig, Normalizer};
use touchpoint_schemas::{Channel, Purpose, SourcePosition};

fn cases() -> u32 {
    std::env::var("TOUCHPOINT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() }
}

/// A valid event, as the mutations' starting point.
const EVENT: &str = r#"{"event_id": "e-1", "event_type": "Order Completed", "occurred_at": "2026-11-25T10:00:00Z",
  "subject_id": "u-1", "tenant_id": "acme", "source": "web", "attributes": {"email": "A@B.co", "n": [1, 2.5, {"x": null}]}}"#;

/// The pipeline's clock for the JSON seeds: a few hours after their times.
const SEEDS_NOW: i64 = 1_795_650_000_000;

/// Valid events of several shapes: the mutations' starting points.
const EVENTS: &[&str] = &[
    EVENT,
    r#"{"event_id": "e-2", "event_type": "Email Opened", "occurred_at": 1795600000, "subject_id": "u-2", "attributes": {}}"#,
    r#"{"event_id": "e-3", "event_type": "signed up", "occurred_at": "2026-11-25 10:00:00+01:00", "subject_id": "u-3",
      "tenant_id": "acme", "attributes": {"plan": "pro", "tags": ["a", "b"], "nested": {"deep": {"x": 1e300}}}}"#,
    r#"{"event_id": "e-4", "event_type": "app_opened", "occurred_at": 1795600000000.5, "subject_id": "u/4",
      "attributes": {}, "source": ""}"#,
    r#"{"event_type": "x", "occurred_at": "2026-11-25T10:00:00.123456789Z", "subject_id": "u5", "attributes": {}}"#,
];

const CONSENT: &str = r#"{"subject_id": "u-1", "tenant_id": "acme", "channel": "email", "purpose": "marketing",
  "status": "granted", "updated_at": 1764000000000, "source": "crm"}"#;

const CONSENTS: &[&str] = &[
    CONSENT,
    r#"{"subject_id": "u-2", "channel": "SMS", "purpose": "transactional", "status": "denied",
      "updated_at": "2026-11-25T10:00:00Z"}"#,
    r#"{"subject_id": "u-3", "tenant_id": "acme", "channel": "push", "purpose": "marketing", "status": "revoked",
      "updated_at": 1764000000}"#,
    "acme/u-1/email/marketing",
    "acme/u-1/Email/marketing",
];

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

/// Aliases, known types only, a short subject id: the rejecting branches of normalization.
fn strict_normalizer() -> Normalizer {
    let mut cfg = NormalizeConfig::default();
    cfg.event_types.known = vec!["email_opened".into(), "signed_up".into(), "app_opened".into()];
    cfg.event_types.unknown = touchpoint_operators::normalize::UnknownEventTypes::Reject;
    cfg.event_types.aliases.insert("Email Opened".into(), "email_opened".into());
    cfg.event_types.aliases.insert("signed up".into(), "signed_up".into());
    cfg.max_subject_id_len = 4;
    Normalizer::new(cfg).expect("strict normalize config")
}

fn position() -> SourcePosition {
    SourcePosition { topic: "t".into(), partition: 0, offset: 0 }
}

proptest! {
    #![proptest_config(config())]

    /// The JSON event decoder and normalization, on bytes and on mutated events (several shapes of
    /// valid event), with the default normalizer and a strict one (aliases, known types only).
    #[test]
    fn json_events(bytes in prop::collection::vec(any::<u8>(), 0..256), seed in any::<prop::sample::Index>(), edits in edits()) {
        let seed = EVENTS[seed.index(EVENTS.len())];
        for input in [bytes, mutate(seed.as_bytes(), &edits)] {
            if let Ok(fields) = decode_json_event(&input) {
                let _ = normalizer().normalize(fields, position(), SEEDS_NOW);
            }
            if let Ok(fields) = decode_json_event(&input) {
                let _ = strict_normalizer().normalize(fields, position(), SEEDS_NOW);
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

    /// Consent records (JSON fields, then the table's checks), tombstone keys, and what a parsed change
    /// does to a consent table and its verdicts.
    #[test]
    fn consent_records(bytes in prop::collection::vec(any::<u8>(), 0..256), seed in any::<prop::sample::Index>(), edits in edits()) {
        let seed = CONSENTS[seed.index(CONSENTS.len())];
        let mut table = ConsentTable::new();
        let config = ConsentConfig::default();
        for input in [bytes, mutate(seed.as_bytes(), &edits)] {
            let mut changes = Vec::new();
            if let Some(fields) = ConsentFields::from_json(&input) {
                changes.extend(parse_consent_fields(&fields, "default"));
            }
            changes.extend(parse_tombstone_key(&input));
            for change in changes {
                let _ = check_record_key(&change, Some(change.key().as_bytes()));
                let _ = check_record_key(&change, Some(&input));
                table.apply(&change);
                for channel in Channel::ALL {
                    for purpose in [Purpose::Marketing, Purpose::Transactional] {
                        let _ = table.verdict(change.subject(), channel, purpose, &config).describe();
                    }
                }
            }
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

/// Field types a writer schema may give a field (the fast path must read or skip each).
const TYPES: &[&str] = &[
    r#""string""#,
    r#""long""#,
    r#""int""#,
    r#""double""#,
    r#""float""#,
    r#""boolean""#,
    r#""bytes""#,
    r#"["null", "string"]"#,
    r#"["null", "long"]"#,
    r#"["string", "null"]"#,
    r#"{"type": "map", "values": "string"}"#,
    r#"{"type": "map", "values": ["null", "string", "long", "double", "boolean"]}"#,
    r#"{"type": "array", "items": "long"}"#,
    r#"{"type": "enum", "name": "E@", "symbols": ["A", "B"]}"#,
    r#"{"type": "fixed", "name": "F@", "size": 3}"#,
    r#"{"type": "record", "name": "R@", "fields": [{"name": "a", "type": "long"}]}"#,
];
const FIELD_NAMES: &[&str] =
    &["event_id", "event_type", "occurred_at", "subject_id", "tenant_id", "source", "attributes", "x", "y"];

/// A writer schema from `choices`: which fields, in which order, of which types. The fields an event
/// needs come first and mostly with types that can hold a valid value (else nearly every datum would
/// be rejected before the paths could differ); the rest get any type.
fn writer_schema(choices: &[(u8, u8)]) -> Option<Schema> {
    const TEXTUAL: &[usize] = &[0, 7, 9];
    const TIMES: &[usize] = &[0, 1, 7, 8];
    let mut seen = std::collections::HashSet::new();
    let required = ["event_type", "occurred_at", "subject_id", "event_id", "attributes"].map(|n| (n, 0u8));
    let fields: Vec<String> = required
        .iter()
        .copied()
        .chain(choices.iter().map(|&(name, ty)| (FIELD_NAMES[usize::from(name) % FIELD_NAMES.len()], ty)))
        .enumerate()
        .filter_map(|(i, (name, _))| {
            let ty = choices.get(i).map_or(0, |c| usize::from(c.1));
            seen.insert(name).then(|| {
                let ty = match name {
                    // One time in eight any type, so that wrong types are compared too.
                    _ if ty % 8 == 7 => ty,
                    "occurred_at" => TIMES[ty % TIMES.len()],
                    "event_type" | "subject_id" | "event_id" | "tenant_id" | "source" => TEXTUAL[ty % TEXTUAL.len()],
                    "attributes" => 10 + ty % 2,
                    _ => ty,
                };
                let ty = TYPES[ty % TYPES.len()].replace('@', &i.to_string());
                format!(r#"{{"name": "{name}", "type": {ty}}}"#)
            })
        })
        .collect();
    Schema::parse_str(&format!(r#"{{"type": "record", "name": "Ev", "fields": [{}]}}"#, fields.join(","))).ok()
}

/// A datum of `schema` from `seed`: values near what normalization cares about (times, ids, blanks).
fn datum(schema: &Schema, seed: &mut u64) -> apache_avro::types::Value {
    use apache_avro::types::Value as Avro;
    let mut next = || {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *seed >> 33
    };
    const TEXT: &[&str] = &["", "x", "Email Opened", "2026-11-25T10:00:00Z", "1764000000000", "acme", "a/b", " "];
    const LONGS: &[i64] = &[0, -1, 1_764_000_000_000, 1_764_000_000, i64::MAX, i64::MIN];
    match schema {
        Schema::String => Avro::String(TEXT[next() as usize % TEXT.len()].into()),
        Schema::Long => Avro::Long(LONGS[next() as usize % LONGS.len()]),
        Schema::Int => Avro::Int(next() as i32),
        Schema::Double => Avro::Double([0.0, 1.5, 1.764e12, f64::NAN][next() as usize % 4]),
        Schema::Float => Avro::Float([0.0, 2.5, f32::INFINITY][next() as usize % 3]),
        Schema::Boolean => Avro::Boolean(next() % 2 == 0),
        Schema::Bytes => Avro::Bytes(vec![0xff, 0x00, b'a']),
        Schema::Null => Avro::Null,
        Schema::Union(u) => {
            let i = next() as usize % u.variants().len();
            Avro::Union(i as u32, Box::new(datum(&u.variants()[i], seed)))
        }
        Schema::Map(m) => Avro::Map((0..next() % 3).map(|i| (format!("k{i}"), datum(&m.types, seed))).collect()),
        Schema::Array(a) => Avro::Array((0..next() % 3).map(|_| datum(&a.items, seed)).collect()),
        Schema::Enum(e) => {
            let i = next() as usize % e.symbols.len();
            Avro::Enum(i as u32, e.symbols[i].clone())
        }
        Schema::Fixed(f) => Avro::Fixed(f.size, vec![7; f.size]),
        Schema::Record(r) => Avro::Record(r.fields.iter().map(|f| (f.name.clone(), datum(&f.schema, seed))).collect()),
        _ => Avro::Null,
    }
}

/// The event the generic path makes of `body`, written here from apache_avro's value tree: the whole
/// datum read (no trailing bytes), the event fields in their JSON form, normalization.
fn generic_outcome(schema: &Schema, body: &[u8]) -> Result<String, String> {
    use apache_avro::types::Value as Avro;
    let malformed = || "malformed_payload".to_string();
    let mut rest = body;
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(schema).build().map_err(|_| malformed())?;
    let value = reader.read_value(&mut rest).map_err(|_| malformed())?;
    let Avro::Record(record) = value else { return Err(malformed()) };
    if !rest.is_empty() {
        return Err(malformed());
    }
    let mut fields = touchpoint_operators::decode::event::EventFields::default();
    for (name, value) in record {
        if touchpoint_operators::decode::event::is_event_field(&name) {
            fields.set_from_value(&name, serde_json::Value::try_from(value).map_err(|_| malformed())?);
        }
    }
    normalizer().normalize(fields, position(), NOW).map(|e| format!("{e:?}")).map_err(|r| r.reason.code().to_string())
}

/// What the comparison holds a rejection to: its reason (the paths word their messages differently).
fn code(e: touchpoint_operators::decode::DecodeError) -> String {
    match e {
        touchpoint_operators::decode::DecodeError::Reject(r) => r.reason.code().to_string(),
        touchpoint_operators::decode::DecodeError::Retry(why) => format!("retry: {why}"),
    }
}

/// The pipeline's clock for the comparison: a day after the datums' times.
const NOW: i64 = 1_764_086_400_000;

proptest! {
    #![proptest_config(config())]

    /// The Avro fast path against arbitrary writer schemas, compared with the generic path: for every
    /// datum (valid for its schema, then mutated), decoding and normalization must reach the same event,
    /// or a rejection with the same reason, as from the generic value tree.
    #[test]
    fn avro_fast_path_matches_the_generic_path(
        choices in prop::collection::vec((any::<u8>(), any::<u8>()), 1..10),
        seed in any::<u64>(),
        edits in edits(),
    ) {
        let Some(schema) = writer_schema(&choices) else { return Ok(()) };
        let mut s = seed;
        let Ok(body) = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .and_then(|w| w.write_value_to_vec(datum(&schema, &mut s)))
        else {
            return Ok(());
        };
        let decoder = RecordDecoder::new(One(Arc::new(schema.clone())));
        for body in [body.clone(), mutate(&body, &edits)] {
            let payload = touchpoint_operators::decode::confluent_encode(1, &body);
            let fast = decoder
                .decode_event(&payload)
                .map_err(code)
                .and_then(|f| normalizer().normalize(f, position(), NOW).map(|e| format!("{e:?}")).map_err(|r| r.reason.code().to_string()));
            let generic = generic_outcome(&schema, &body);
            prop_assert_eq!(fast, generic, "schema {}", schema.canonical_form());
        }
    }
}

#[test]
fn the_json_seeds_are_valid_events() {
    for seed in EVENTS {
        let fields = decode_json_event(seed.as_bytes()).expect("decodes");
        assert!(normalizer().normalize(fields, position(), SEEDS_NOW).is_ok(), "{seed}");
    }
}
