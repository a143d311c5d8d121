//! Avro datums straight into [`EventFields`], without apache_avro's `Value` tree.
//!
//! The generic path decodes a datum into an Avro `Value` tree, converts every field to a `serde_json`
//! value and the attributes once more into canonical text: a third of the operator chain's time on
//! Avro records. This reader walks the writer schema over the bytes once: the scalar fields are borrowed
//! from the payload, the attributes are written in canonical form as they are read.
//!
//! It covers the schemas made of Avro's plain types (primitives, records, enums, arrays, maps, unions,
//! fixed, and the logical types that are plain numbers); any other schema (decimal, uuid, duration,
//! named references) goes the generic way ([`fast_decodable`]). It gives up (`None`) on anything the
//! generic path would refuse or word differently (truncated data, bad UTF-8, a union index out of range,
//! an integer out of range, NaN), and the caller then takes the generic path for the verdict: both paths
//! accept the same datums and produce the same fields, which the tests check.

use std::borrow::Cow;

use apache_avro::schema::{RecordSchema, Schema};
use serde_json::Number;

use super::event::{
    is_event_field, write_canonical_str, Attributes, CanonicalObject, EventFields, FieldValue, JsonKind,
};
use crate::normalize::write_json;

/// Can [`read_event`] decode datums of this writer schema (a record of plain types)?
pub fn fast_decodable(schema: &Schema) -> bool {
    matches!(schema, Schema::Record(_)) && plain(schema)
}

/// Integer schemas: `Some(true)` for the int-encoded (int, date, time-millis), `Some(false)` for the
/// long-encoded (long and the other time types: plain numbers in JSON), `None` for any other schema.
fn int_encoded(schema: &Schema) -> Option<bool> {
    match schema {
        Schema::Int | Schema::Date | Schema::TimeMillis => Some(true),
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Some(false),
        _ => None,
    }
}

fn plain(schema: &Schema) -> bool {
    if int_encoded(schema).is_some() {
        return true;
    }
    match schema {
        Schema::Null
        | Schema::Boolean
        | Schema::Float
        | Schema::Double
        | Schema::Bytes
        | Schema::String
        | Schema::Enum(_)
        | Schema::Fixed(_) => true,
        Schema::Array(a) => plain(&a.items),
        Schema::Map(m) => plain(&m.types),
        Schema::Union(u) => u.variants().iter().all(plain),
        Schema::Record(r) => r.fields.iter().all(|f| plain(&f.schema)),
        // Decimal, big decimal, uuid, duration and named references (integers were answered above).
        _ => false,
    }
}

/// Decodes one datum of `schema` (a record) into the event fields; `None` when the generic path must
/// decide. The whole body must be consumed (trailing bytes are the generic path's to report).
pub fn read_event<'p>(schema: &'p RecordSchema, body: &'p [u8]) -> Option<EventFields<'p>> {
    let mut cursor = Cursor(body, body.len() + ZERO_WIDTH_ITEMS);
    let mut fields = EventFields::default();
    for field in &schema.fields {
        if !is_event_field(&field.name) {
            cursor.skip(&field.schema)?;
            continue;
        }
        if field.name == "attributes" {
            let mut text = Vec::with_capacity(128);
            fields.attributes = match cursor.canonical(&field.schema, &mut text)? {
                JsonKind::Null => None,
                JsonKind::Object => Some(Attributes::Canonical(String::from_utf8(text).ok()?)),
                other => Some(Attributes::NotAnObject(other.name())),
            };
            continue;
        }
        let value = cursor.scalar(&field.schema)?;
        *fields.scalar_slot(&field.name)? = Some(value);
    }
    cursor.0.is_empty().then_some(fields)
}

/// Items of arrays and maps a datum may hold beyond one per byte: an item of any type but `null` (or a
/// record of nulls) takes at least a byte, so a datum of `n` bytes holds at most `n` such items; the
/// allowance covers arrays of zero-width items. A block count beyond the budget (a few bytes claiming
/// 2^60 nulls) is not believed: the reader gives up before looping or writing for each claimed item.
const ZERO_WIDTH_ITEMS: usize = 4_096;

/// The unread rest of a datum, and how many more array or map items it may claim.
struct Cursor<'p>(&'p [u8], usize);

impl<'p> Cursor<'p> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'p [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// A zig-zag varint long (at most 10 bytes).
    fn long(&mut self) -> Option<i64> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        None
    }

    fn int(&mut self) -> Option<i32> {
        i32::try_from(self.long()?).ok()
    }

    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.long()?).ok()
    }

    fn bytes(&mut self) -> Option<&'p [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    fn str(&mut self) -> Option<&'p str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    fn f32(&mut self) -> Option<f64> {
        let b: [u8; 4] = self.take(4)?.try_into().ok()?;
        Some(f64::from(f32::from_le_bytes(b)))
    }

    fn f64(&mut self) -> Option<f64> {
        let b: [u8; 8] = self.take(8)?.try_into().ok()?;
        Some(f64::from_le_bytes(b))
    }

    /// The item count of the next block of an array or map (0: the end). A negative count is followed
    /// by the block's size in bytes.
    fn block(&mut self) -> Option<usize> {
        let count = self.long()?;
        if count < 0 {
            self.long()?;
        }
        let count = usize::try_from(count.checked_abs()?).ok()?;
        self.1 = self.1.checked_sub(count)?;
        Some(count)
    }

    fn branch<'s>(&mut self, variants: &'s [Schema]) -> Option<&'s Schema> {
        variants.get(usize::try_from(self.long()?).ok()?)
    }

    /// The value of an integer schema (int, long, and the logical types stored as them), `Some(None)`
    /// for any other schema.
    fn integer(&mut self, schema: &Schema) -> Option<Option<i64>> {
        Some(match int_encoded(schema) {
            Some(true) => Some(i64::from(self.int()?)),
            Some(false) => Some(self.long()?),
            None => None,
        })
    }

    /// A field that normalization reads as a scalar; containers are skipped and reported by kind.
    fn scalar(&mut self, schema: &'p Schema) -> Option<FieldValue<'p>> {
        if let Some(n) = self.integer(schema)? {
            return Some(FieldValue::Number(n.into()));
        }
        Some(match schema {
            Schema::Null => FieldValue::Null,
            Schema::Boolean => FieldValue::Bool(self.boolean()?),
            Schema::Float => FieldValue::Number(Number::from_f64(self.f32()?)?),
            Schema::Double => FieldValue::Number(Number::from_f64(self.f64()?)?),
            Schema::String => FieldValue::Str(Cow::Borrowed(self.str()?)),
            Schema::Enum(e) => FieldValue::Str(Cow::Borrowed(e.symbols.get(self.len()?)?.as_str())),
            Schema::Union(u) => {
                let variant = self.branch(u.variants())?;
                return self.scalar(variant);
            }
            Schema::Bytes | Schema::Fixed(_) | Schema::Array(_) => {
                self.skip(schema)?;
                FieldValue::Array
            }
            Schema::Map(_) | Schema::Record(_) => {
                self.skip(schema)?;
                FieldValue::Object
            }
            _ => return None,
        })
    }

    fn boolean(&mut self) -> Option<bool> {
        match self.byte()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// Reads past a value (its canonical text goes to a scratch buffer: skipping is rare, and this keeps
    /// one walk over the schema).
    fn skip(&mut self, schema: &'p Schema) -> Option<()> {
        self.canonical(schema, &mut Vec::new()).map(|_| ())
    }

    /// Writes a value in canonical JSON, as `serde_json::Value::try_from` of its Avro value would give
    /// it and `canonical_json` would write it (after `lowercase_emails`).
    fn canonical(&mut self, schema: &'p Schema, out: &mut Vec<u8>) -> Option<JsonKind> {
        if let Some(n) = self.integer(schema)? {
            write_json(&n, out);
            return Some(JsonKind::Number);
        }
        Some(match schema {
            Schema::Null => {
                out.extend_from_slice(b"null");
                JsonKind::Null
            }
            Schema::Boolean => {
                write_json(&self.boolean()?, out);
                JsonKind::Bool
            }
            Schema::Float => {
                write_json(&Number::from_f64(self.f32()?)?, out);
                JsonKind::Number
            }
            Schema::Double => {
                write_json(&Number::from_f64(self.f64()?)?, out);
                JsonKind::Number
            }
            Schema::String => {
                write_canonical_str(self.str()?, out);
                JsonKind::String
            }
            Schema::Enum(e) => {
                write_canonical_str(e.symbols.get(self.len()?)?, out);
                JsonKind::String
            }
            Schema::Bytes => {
                let bytes = self.bytes()?;
                write_json(bytes, out);
                JsonKind::Array
            }
            Schema::Fixed(f) => {
                let bytes = self.take(f.size)?;
                write_json(bytes, out);
                JsonKind::Array
            }
            Schema::Union(u) => {
                let variant = self.branch(u.variants())?;
                return self.canonical(variant, out);
            }
            Schema::Array(a) => {
                out.push(b'[');
                let mut first = true;
                loop {
                    let count = self.block()?;
                    if count == 0 {
                        break;
                    }
                    for _ in 0..count {
                        if !first {
                            out.push(b',');
                        }
                        first = false;
                        self.canonical(&a.items, out)?;
                    }
                }
                out.push(b']');
                JsonKind::Array
            }
            Schema::Map(m) => {
                let mut object = CanonicalObject::begin(out);
                loop {
                    let count = self.block()?;
                    if count == 0 {
                        break;
                    }
                    for _ in 0..count {
                        object.key(out, Cow::Borrowed(self.str()?));
                        self.canonical(&m.types, out)?;
                        object.value_written(out);
                    }
                }
                object.finish(out);
                JsonKind::Object
            }
            Schema::Record(r) => {
                let mut object = CanonicalObject::begin(out);
                for field in &r.fields {
                    object.key(out, Cow::Borrowed(field.name.as_str()));
                    self.canonical(&field.schema, out)?;
                    object.value_written(out);
                }
                object.finish(out);
                JsonKind::Object
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use apache_avro::types::Value as Avro;

    use super::super::{confluent_encode, RecordDecoder, SchemaLookup, SchemaLookupError};
    use super::*;

    struct One(Arc<Schema>);
    impl SchemaLookup for One {
        fn schema(&self, _id: u32) -> Result<Arc<Schema>, SchemaLookupError> {
            Ok(self.0.clone())
        }
    }

    /// Every plain type, in the event fields and inside the attributes (nested records, arrays, maps,
    /// enums, fixed, bytes, floats, dates), plus a field normalization does not read.
    const RICH: &str = r#"{"type": "record", "name": "Rich", "fields": [
        {"name": "ignored", "type": {"type": "array", "items": ["null", "string", {"type": "map", "values": "long"}]}},
        {"name": "event_id", "type": ["null", "string", "long", "bytes"]},
        {"name": "event_type", "type": ["string", {"type": "enum", "name": "Kind", "symbols": ["Signed_Up", "Page_View"]}]},
        {"name": "occurred_at", "type": ["string", {"type": "long", "logicalType": "timestamp-millis"}, "double", "float", "int", "null"]},
        {"name": "subject_id", "type": ["string", "long", "int", "boolean", {"type": "record", "name": "Sub", "fields": [{"name": "a", "type": "int"}]}]},
        {"name": "tenant_id", "type": ["null", "string", {"type": "fixed", "name": "F2", "size": 2}]},
        {"name": "source", "type": ["null", "string", {"type": "array", "items": "int"}]},
        {"name": "attributes", "type": ["null", "string", "long",
            {"type": "map", "values": ["null", "boolean", "int", "long", "float", "double", "string", "bytes",
                {"type": "array", "items": ["string", "double"]},
                {"type": "record", "name": "Inner", "fields": [
                    {"name": "z", "type": "string"}, {"name": "a", "type": {"type": "int", "logicalType": "date"}},
                    {"name": "k", "type": {"type": "enum", "name": "Kind2", "symbols": ["A", "B"]}},
                    {"name": "f", "type": {"type": "fixed", "name": "F3", "size": 3}}]},
                {"type": "map", "values": "string"}]}]}
    ]}"#;

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn text(&mut self) -> String {
            ["", "Ann@Example.COM ", "plain", "b\"q\\u\n", "ü😀", "zeta", "a", " x@y.de"][self.below(8) as usize]
                .to_string()
        }
    }

    fn value(rng: &mut Rng, schema: &Schema) -> Avro {
        match schema {
            Schema::Null => Avro::Null,
            Schema::Boolean => Avro::Boolean(rng.below(2) == 1),
            Schema::Int => Avro::Int(rng.next() as i32),
            Schema::Date => Avro::Date(rng.below(40_000) as i32),
            Schema::Long => Avro::Long(rng.next() as i64 >> rng.below(64)),
            Schema::TimestampMillis => Avro::TimestampMillis(1_700_000_000_000 + rng.below(1 << 30) as i64),
            Schema::Float => Avro::Float((rng.next() as i32) as f32 / 7.0),
            Schema::Double => Avro::Double((rng.next() as i64) as f64 / 3.0),
            Schema::String => Avro::String(rng.text()),
            Schema::Bytes => Avro::Bytes((0..rng.below(4)).map(|_| rng.next() as u8).collect()),
            Schema::Fixed(f) => Avro::Fixed(f.size, (0..f.size).map(|_| rng.next() as u8).collect()),
            Schema::Enum(e) => {
                let i = rng.below(e.symbols.len() as u64) as usize;
                Avro::Enum(i as u32, e.symbols[i].clone())
            }
            Schema::Union(u) => {
                let i = rng.below(u.variants().len() as u64) as usize;
                Avro::Union(i as u32, Box::new(value(rng, &u.variants()[i])))
            }
            Schema::Array(a) => Avro::Array((0..rng.below(4)).map(|_| value(rng, &a.items)).collect()),
            Schema::Map(m) => Avro::Map(
                (0..rng.below(6)).map(|_| (format!("{}{}", rng.text(), rng.below(3)), value(rng, &m.types))).collect(),
            ),
            Schema::Record(r) => {
                Avro::Record(r.fields.iter().map(|f| (f.name.clone(), value(rng, &f.schema))).collect())
            }
            other => panic!("no generator for {other:?}"),
        }
    }

    fn payloads(schema_text: &str, count: usize) -> (Arc<Schema>, Vec<Vec<u8>>) {
        let schema = Arc::new(Schema::parse_str(schema_text).expect("schema"));
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema).build().expect("writer");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let payloads = (0..count)
            .map(|_| {
                let body = writer.write_value_to_vec(value(&mut rng, &schema)).expect("a valid datum");
                confluent_encode(1, &body)
            })
            .collect();
        (schema, payloads)
    }

    /// Both paths on one payload, as comparable text (fields, or the rejection).
    fn both(decoder: &RecordDecoder<One>, payload: &[u8]) -> (String, String) {
        (format!("{:?}", decoder.decode_event(payload)), format!("{:?}", decoder.decode_event_generic(payload)))
    }

    /// A few bytes claiming 2^40 `null` items: neither path loops over the claim or allocates for it.
    /// Before, the direct reader wrote "null," 2^40 times (hours, and memory without bound), and the
    /// generic path reserved up to apache_avro's default allocation limit (512 MB) per record.
    #[test]
    fn block_counts_beyond_the_datum_are_not_believed() {
        let schema = Arc::new(
            Schema::parse_str(
                r#"{"type": "record", "name": "E", "fields": [
                    {"name": "junk", "type": {"type": "array", "items": "null"}},
                    {"name": "event_type", "type": "string"}]}"#,
            )
            .expect("schema"),
        );
        let Schema::Record(record) = &*schema else { panic!("a record") };
        // Block count 2^40 (zig-zag varint), end of array, then "x".
        let mut body = Vec::new();
        let mut n = (1u64 << 40) << 1;
        while n >= 0x80 {
            body.push((n as u8) | 0x80);
            n >>= 7;
        }
        body.push(n as u8);
        body.extend_from_slice(&[0, 2, b'x']);
        let started = std::time::Instant::now();
        assert!(read_event(record, &body).is_none());
        let decoder = RecordDecoder::new(One(schema.clone()));
        let payload = confluent_encode(1, &body);
        let verdict = decoder.decode_event(&payload);
        assert!(matches!(verdict, Err(crate::decode::DecodeError::Reject(_))), "{verdict:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        // A legitimate array of nulls within the allowance still reads.
        let mut ok = vec![0x80, 0x40]; // 4096 items (zig-zag 8192)
        ok.extend_from_slice(&[0, 2, b'x']);
        assert!(read_event(record, &ok).is_some());
    }

    #[test]
    fn the_direct_reader_gives_what_the_value_tree_gives() {
        for (schema_text, count) in [(RICH, 3_000), (touchpoint_schemas::avro::MARKETING_EVENT, 1_000)] {
            let (schema, payloads) = payloads(schema_text, count);
            let Schema::Record(record) = &*schema else { panic!("a record") };
            assert!(fast_decodable(&schema));
            let decoder = RecordDecoder::new(One(schema.clone()));
            let mut direct = 0;
            for p in &payloads {
                let (fast, generic) = both(&decoder, p);
                assert_eq!(fast, generic);
                direct += usize::from(read_event(record, &p[5..]).is_some());
            }
            // Only NaN-free datums decode directly; nearly all here do.
            assert!(direct * 10 > payloads.len() * 9, "{direct} of {} read directly", payloads.len());
        }
    }

    #[test]
    fn broken_datums_get_the_generic_verdict() {
        let (schema, payloads) = payloads(RICH, 200);
        let decoder = RecordDecoder::new(One(schema));
        let mut rng = Rng(7);
        for p in &payloads {
            for cut in [5, 6, p.len() / 2, p.len() - 1] {
                let (fast, generic) = both(&decoder, &p[..cut.max(5)]);
                assert_eq!(fast, generic, "cut at {cut}");
            }
            let mut padded = p.clone();
            padded.push(0);
            let (fast, generic) = both(&decoder, &padded);
            assert_eq!(fast, generic, "trailing byte");
            for _ in 0..4 {
                let mut flipped = p.clone();
                let at = 5 + rng.below((p.len() - 5) as u64) as usize;
                flipped[at] ^= 1 << rng.below(8);
                let (fast, generic) = both(&decoder, &flipped);
                assert_eq!(fast, generic, "bit flipped at {at}");
            }
        }
    }

    #[test]
    fn schemas_with_other_types_take_the_generic_path() {
        let uuid = r#"{"type": "record", "name": "U", "fields": [{"name": "id", "type": {"type": "string", "logicalType": "uuid"}}]}"#;
        assert!(!fast_decodable(&Schema::parse_str(uuid).unwrap()));
        assert!(!fast_decodable(&Schema::parse_str(r#""string""#).unwrap()));
        // A named type used a second time is a reference: generic.
        let reference = r#"{"type": "record", "name": "R", "fields": [
            {"name": "a", "type": {"type": "fixed", "name": "F", "size": 1}}, {"name": "b", "type": "F"}]}"#;
        assert!(!fast_decodable(&Schema::parse_str(reference).unwrap()));
        assert!(fast_decodable(&Schema::parse_str(RICH).unwrap()));
    }
}
