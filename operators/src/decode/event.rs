//! Decoding of `marketing.events` payloads straight into the fields normalization reads.
//!
//! The generic path ([`super::RecordDecoder::decode`]) builds a `serde_json::Map` of every field, with a
//! `String` per key and value and a tree of `Value`s for the attributes, only for normalization to read
//! seven of them and turn the attributes back into text. Here a JSON payload is read once: the six
//! scalar fields are borrowed from the payload where they have no escapes, unknown fields are skipped
//! without being built, and the attributes are written into their canonical text while they are parsed
//! (keys sorted, email-like strings lower-cased: the same bytes as [`canonical_json`] of
//! [`lowercase_emails`], which the tests check, since derived event ids hash this text). Avro records
//! are taken apart field by field the same way.
//!
//! Same semantics as a `serde_json::Map`: a repeated field's last value wins, `null` counts as absent.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

use crate::normalize::{canonical_json, lowercase_emails, lowercased_email, utf8, write_json};

/// The fields of an incoming event that normalization reads, as the producer sent them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFields<'a> {
    pub event_type: Option<FieldValue<'a>>,
    pub occurred_at: Option<FieldValue<'a>>,
    pub subject_id: Option<FieldValue<'a>>,
    pub event_id: Option<FieldValue<'a>>,
    pub tenant_id: Option<FieldValue<'a>>,
    pub source: Option<FieldValue<'a>>,
    pub attributes: Option<Attributes>,
}

/// A scalar field's value; containers only by kind (no field that normalization reads may be one).
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl<'a> FieldValue<'a> {
    /// A view of a `serde_json` value (strings borrowed).
    pub fn of(value: &'a Value) -> Self {
        match value {
            Value::Null => FieldValue::Null,
            Value::Bool(b) => FieldValue::Bool(*b),
            Value::Number(n) => FieldValue::Number(n.clone()),
            Value::String(s) => FieldValue::Str(Cow::Borrowed(s)),
            Value::Array(_) => FieldValue::Array,
            Value::Object(_) => FieldValue::Object,
        }
    }

    /// A `serde_json` value taken apart (strings moved, not copied).
    pub fn owned(value: Value) -> FieldValue<'static> {
        match value {
            Value::String(s) => FieldValue::Str(Cow::Owned(s)),
            Value::Null => FieldValue::Null,
            Value::Bool(b) => FieldValue::Bool(b),
            Value::Number(n) => FieldValue::Number(n),
            Value::Array(_) => FieldValue::Array,
            Value::Object(_) => FieldValue::Object,
        }
    }

    /// "a string", "an object", …: for rejection messages.
    pub fn kind(&self) -> &'static str {
        match self {
            FieldValue::Null => JsonKind::Null,
            FieldValue::Bool(_) => JsonKind::Bool,
            FieldValue::Number(_) => JsonKind::Number,
            FieldValue::Str(_) => JsonKind::String,
            FieldValue::Array => JsonKind::Array,
            FieldValue::Object => JsonKind::Object,
        }
        .name()
    }
}

/// The `attributes` field: its canonical JSON text when it is an object, otherwise only its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    Canonical(String),
    NotAnObject(&'static str),
}

impl Attributes {
    /// From a `serde_json` value (the Avro path); `None` for `null`.
    pub fn of_value(mut value: Value) -> Option<Attributes> {
        match value {
            Value::Null => None,
            Value::Object(_) => {
                lowercase_emails(&mut value);
                Some(Attributes::Canonical(canonical_json(&value)))
            }
            other => Some(Attributes::NotAnObject(FieldValue::of(&other).kind())),
        }
    }
}

/// Is this one of the fields normalization reads?
pub fn is_event_field(name: &str) -> bool {
    matches!(name, "attributes" | "event_type" | "occurred_at" | "subject_id" | "event_id" | "tenant_id" | "source")
}

impl<'a> EventFields<'a> {
    /// The place of a scalar field by its name (`None`: `attributes` or a field nobody reads).
    pub fn scalar_slot(&mut self, name: &str) -> Option<&mut Option<FieldValue<'a>>> {
        Some(match name {
            "event_type" => &mut self.event_type,
            "occurred_at" => &mut self.occurred_at,
            "subject_id" => &mut self.subject_id,
            "event_id" => &mut self.event_id,
            "tenant_id" => &mut self.tenant_id,
            "source" => &mut self.source,
            _ => return None,
        })
    }

    /// Sets a field by name from a `serde_json` value (the Avro path); other names are ignored.
    pub fn set_from_value(&mut self, name: &str, value: Value) {
        if name == "attributes" {
            self.attributes = Attributes::of_value(value);
        } else if let Some(slot) = self.scalar_slot(name) {
            *slot = Some(FieldValue::owned(value));
        }
    }
}

/// Parses a JSON object payload into its event fields. `Err` carries serde_json's message; the caller
/// words the rejection (and tells a non-object from broken JSON).
pub fn json_event_fields(payload: &[u8]) -> Result<EventFields<'_>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let fields = de.deserialize_map(EventVisitor)?;
    de.end()?;
    Ok(fields)
}

/// Something a JSON object's fields are read into by name ([`json_slots`]).
pub(crate) trait FieldSlots<'de> {
    /// Where the value of field `name` goes; `None`: the field is skipped without being built.
    fn slot(&mut self, name: &str) -> Option<&mut Option<FieldValue<'de>>>;
}

/// Reads a JSON object into `slots`: strings borrowed where they have no escapes, fields without a slot
/// skipped unbuilt, a repeated field's last value winning (as in a `serde_json::Map`). `None` for
/// anything but one well-formed JSON object.
pub(crate) fn json_slots<'de, F: FieldSlots<'de>>(json: &'de [u8], slots: F) -> Option<F> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let filled = de.deserialize_map(SlotsVisitor(slots)).ok()?;
    de.end().ok()?;
    Some(filled)
}

struct SlotsVisitor<F>(F);

impl<'de, F: FieldSlots<'de>> Visitor<'de> for SlotsVisitor<F> {
    type Value = F;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match self.0.slot(&key) {
                Some(slot) => *slot = Some(map.next_value_seed(FieldSeed)?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(self.0)
    }
}

/// The string values of some top-level fields of a JSON object (e.g. an event's canonical attributes),
/// borrowed where they have no escapes, without building the rest: `None` for a field that is absent or
/// not a string, and for every field when the text is not a JSON object. A repeated field's last value
/// wins, as in a `serde_json::Map`.
pub fn string_fields<'a, const N: usize>(json: &'a str, names: [&str; N]) -> [Option<Cow<'a, str>>; N] {
    let named = Named { names, values: std::array::from_fn(|_| None) };
    let values = json_slots(json.as_bytes(), named).map_or_else(|| std::array::from_fn(|_| None), |n| n.values);
    values.map(|v| match v {
        Some(FieldValue::Str(s)) => Some(s),
        _ => None,
    })
}

/// Slots for the fields named at run time ([`string_fields`]).
struct Named<'n, 'de, const N: usize> {
    names: [&'n str; N],
    values: [Option<FieldValue<'de>>; N],
}

impl<'de, const N: usize> FieldSlots<'de> for Named<'_, 'de, N> {
    fn slot(&mut self, name: &str) -> Option<&mut Option<FieldValue<'de>>> {
        let i = self.names.iter().position(|n| *n == name)?;
        Some(&mut self.values[i])
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = EventFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = EventFields::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let slot = match key.as_ref() {
                "attributes" => {
                    let mut text = Vec::with_capacity(128);
                    let kind = map.next_value_seed(CanonicalSeed(&mut text))?;
                    fields.attributes = match kind {
                        JsonKind::Null => None,
                        JsonKind::Object => Some(Attributes::Canonical(utf8(text))),
                        other => Some(Attributes::NotAnObject(other.name())),
                    };
                    continue;
                }
                name => match fields.scalar_slot(name) {
                    Some(slot) => slot,
                    None => {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                },
            };
            *slot = Some(map.next_value_seed(FieldSeed)?);
        }
        Ok(fields)
    }
}

/// A key, borrowed when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// One of the scalar fields: strings borrowed when they have no escapes, containers skipped.
struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = FieldValue<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed {
    type Value = FieldValue<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(FieldValue::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(FieldValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(FieldValue::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(FieldValue::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // JSON has no NaN or infinity; serde_json's Value makes the same choice for them.
        Ok(Number::from_f64(v).map_or(FieldValue::Null, FieldValue::Number))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(FieldValue::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(FieldValue::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(FieldValue::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(FieldValue::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(FieldValue::Object)
    }
}

/// The kind of a JSON value (written by [`CanonicalSeed`]; named in rejection messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonKind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl JsonKind {
    pub(crate) fn of_value(value: &Value) -> Self {
        match value {
            Value::Null => JsonKind::Null,
            Value::Bool(_) => JsonKind::Bool,
            Value::Number(_) => JsonKind::Number,
            Value::String(_) => JsonKind::String,
            Value::Array(_) => JsonKind::Array,
            Value::Object(_) => JsonKind::Object,
        }
    }

    /// "a string", "an object", …: for rejection messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            JsonKind::Null => "null",
            JsonKind::Bool => "a boolean",
            JsonKind::Number => "a number",
            JsonKind::String => "a string",
            JsonKind::Array => "an array",
            JsonKind::Object => "an object",
        }
    }
}

/// Writes the value being parsed in canonical form: what `canonical_json` writes for the `Value`
/// serde_json would have built, after `lowercase_emails`. Object entries are written as they come;
/// only an object whose keys arrive unsorted (or repeated) is rewritten, in key order, last one winning.
struct CanonicalSeed<'o>(&'o mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for CanonicalSeed<'_> {
    type Value = JsonKind;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl CanonicalSeed<'_> {
    fn string(self, s: &str) -> JsonKind {
        write_canonical_str(s, self.0);
        JsonKind::String
    }
}

impl<'de> Visitor<'de> for CanonicalSeed<'_> {
    type Value = JsonKind;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        self.0.extend_from_slice(b"null");
        Ok(JsonKind::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        write_json(&v, self.0);
        Ok(JsonKind::Bool)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        write_json(&v, self.0);
        Ok(JsonKind::Number)
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        write_json(&v, self.0);
        Ok(JsonKind::Number)
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        match Number::from_f64(v) {
            Some(n) => write_json(&n, self.0),
            None => self.0.extend_from_slice(b"null"),
        }
        Ok(JsonKind::Number)
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.string(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        self.0.push(b'[');
        let mut first = true;
        loop {
            let comma = self.0.len();
            if !first {
                self.0.push(b',');
            }
            if seq.next_element_seed(CanonicalSeed(&mut *self.0))?.is_none() {
                self.0.truncate(comma);
                break;
            }
            first = false;
        }
        self.0.push(b']');
        Ok(JsonKind::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let out = self.0;
        let mut object = CanonicalObject::begin(out);
        while let Some(key) = map.next_key_seed(KeySeed)? {
            object.key(out, key);
            map.next_value_seed(CanonicalSeed(&mut *out))?;
            object.value_written(out);
        }
        object.finish(out);
        Ok(JsonKind::Object)
    }
}

/// Writes one JSON object in canonical form, entry by entry as they come: `{`, then per entry
/// [`key`](Self::key), the value's canonical text, [`value_written`](Self::value_written), and
/// [`finish`](Self::finish). Only an object whose keys arrived unsorted (or repeated) is rewritten, in key
/// order, the last of equal keys winning (as a map insert overwrites).
pub(crate) struct CanonicalObject<'k> {
    body: usize,
    /// Each entry's key and the byte range of its `"key":value` text.
    entries: Vec<(Cow<'k, str>, usize, usize)>,
    in_order: bool,
}

impl<'k> CanonicalObject<'k> {
    pub(crate) fn begin(out: &mut Vec<u8>) -> Self {
        out.push(b'{');
        CanonicalObject { body: out.len(), entries: Vec::new(), in_order: true }
    }

    pub(crate) fn key(&mut self, out: &mut Vec<u8>, key: Cow<'k, str>) {
        if let Some((previous, _, _)) = self.entries.last() {
            self.in_order &= previous.as_ref() < key.as_ref();
            out.push(b',');
        }
        let start = out.len();
        write_json(key.as_ref(), out);
        out.push(b':');
        self.entries.push((key, start, start));
    }

    pub(crate) fn value_written(&mut self, out: &[u8]) {
        if let Some(entry) = self.entries.last_mut() {
            entry.2 = out.len();
        }
    }

    pub(crate) fn finish(self, out: &mut Vec<u8>) {
        let CanonicalObject { body, entries, in_order } = self;
        if !in_order {
            let text = out.split_off(body);
            let mut order: Vec<usize> = (0..entries.len()).collect();
            order.sort_by(|&a, &b| entries[a].0.cmp(&entries[b].0).then(a.cmp(&b)));
            let mut first = true;
            for (i, &e) in order.iter().enumerate() {
                if order.get(i + 1).is_some_and(|&next| entries[next].0 == entries[e].0) {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(&text[entries[e].1 - body..entries[e].2 - body]);
            }
        }
        out.push(b'}');
    }
}

/// A string value in canonical form: email-like strings trimmed and lower-cased.
pub(crate) fn write_canonical_str(s: &str, out: &mut Vec<u8>) {
    match lowercased_email(s) {
        Some(email) => write_json(&email, out),
        None => write_json(s, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the generic path gives for the attributes: the reference.
    fn reference(attributes: &Value) -> String {
        let mut v = attributes.clone();
        lowercase_emails(&mut v);
        canonical_json(&v)
    }

    fn streamed(payload: &str) -> Option<Attributes> {
        json_event_fields(payload.as_bytes()).expect("valid JSON").attributes
    }

    #[test]
    fn attributes_are_canonical_as_the_value_path_writes_them() {
        let cases = [
            json!({}),
            json!({"a": 1}),
            json!({"b": 1, "a": {"d": [1, {"z": 1, "y": 2}], "c": "x\"y"}}),
            json!({"email": " Ann@Example.COM ", "nested": {"cc": ["BOB@X.IO", "Keep Me"]}, "n": 1}),
            json!({"k\n\"ey": "t\u{1}ab\tü😀", "n": -1.5e300, "i": 18446744073709551615u64, "neg": -7,
                   "b": false, "z": null, "e": [], "o": {}, "f": 0.1, "g": 1e21, "h": 100.0}),
            json!({"arr": [[], [{}], [null, true, "A@B.CO"]], "zz": {"b": {"d": 1, "c": 2}, "a": 0}}),
        ];
        for v in cases {
            // Keys in the order json! keeps them (sorted) and reversed, compact and spaced.
            let sorted = serde_json::to_string(&json!({ "attributes": v })).unwrap();
            let spaced = serde_json::to_string_pretty(&json!({ "attributes": v })).unwrap();
            let reversed = format!("{{\"attributes\": {}}}", reversed_keys(&v));
            for payload in [sorted, spaced, reversed] {
                assert_eq!(streamed(&payload), Some(Attributes::Canonical(reference(&v))), "{payload}");
            }
        }
    }

    /// The same value written with every object's keys in reverse order.
    fn reversed_keys(v: &Value) -> String {
        match v {
            Value::Object(m) => {
                let parts: Vec<String> = m
                    .iter()
                    .rev()
                    .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), reversed_keys(v)))
                    .collect();
                format!("{{{}}}", parts.join(", "))
            }
            Value::Array(items) => format!("[{}]", items.iter().map(reversed_keys).collect::<Vec<_>>().join(",")),
            other => other.to_string(),
        }
    }

    #[test]
    fn repeated_keys_keep_the_last_value_like_a_map() {
        let payload = r#"{"attributes": {"b": 1, "a": 2, "b": 3, "a": {"y": 1, "x": 2, "y": 0}}, "event_type": "x", "event_type": "y"}"#;
        let generic: Value = serde_json::from_str(payload).unwrap();
        let fields = json_event_fields(payload.as_bytes()).unwrap();
        assert_eq!(fields.attributes, Some(Attributes::Canonical(reference(&generic["attributes"]))));
        assert_eq!(fields.attributes, Some(Attributes::Canonical(r#"{"a":{"x":2,"y":0},"b":3}"#.into())));
        assert_eq!(fields.event_type, Some(FieldValue::Str("y".into())));
    }

    #[test]
    fn scalars_are_borrowed_unless_escaped_and_containers_are_kinds() {
        let payload = br#"{"event_type": "Email Opened", "subject_id": "a\"b", "occurred_at": 1.5, "event_id": [1, {"x": 2}],
                           "tenant_id": {"a": [1]}, "source": null, "other": {"deep": [1, 2, {"x": "y"}]}, "attributes": [1]}"#;
        let f = json_event_fields(payload).unwrap();
        assert!(matches!(f.event_type, Some(FieldValue::Str(Cow::Borrowed("Email Opened")))));
        assert!(matches!(f.subject_id, Some(FieldValue::Str(Cow::Owned(ref s))) if s == "a\"b"));
        assert_eq!(f.occurred_at, Some(FieldValue::Number(Number::from_f64(1.5).unwrap())));
        assert_eq!(f.event_id, Some(FieldValue::Array));
        assert_eq!(f.tenant_id, Some(FieldValue::Object));
        assert_eq!(f.source, Some(FieldValue::Null));
        assert_eq!(f.attributes, Some(Attributes::NotAnObject("an array")));
        assert_eq!(json_event_fields(br#"{"attributes": null}"#).unwrap().attributes, None);
        assert_eq!(
            json_event_fields(br#"{"attributes": "x"}"#).unwrap().attributes,
            Some(Attributes::NotAnObject("a string"))
        );
    }

    #[test]
    fn broken_json_and_non_objects_are_errors() {
        for bad in
            [&b"[1,2]"[..], b"{not json", b"", b"{\"a\": 1} trailing", b"\"text\"", b"{\"attributes\": {\"a\": }"]
        {
            assert!(json_event_fields(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// `string_fields` reads what a `serde_json::Map` lookup of string values would.
    #[test]
    fn string_fields_read_what_a_map_lookup_would() {
        let texts = [
            r#"{"email":"a@b.c","phone":"+49 1","tz":"Europe/Berlin","other":{"email":"nested"}}"#,
            r#"{"email":"esc\u00e9\"q","phone":5,"tz":null,"device_token":["x"],"webhook_url":{"a":1}}"#,
            r#"{"email":"first","email":"last"}"#,
            r#"{}"#,
            r#"[1,2]"#,
            r#"{"email": "#,
            r#""just text""#,
            "",
        ];
        let names = ["tz", "email", "phone", "device_token", "webhook_url"];
        for text in texts {
            let map: serde_json::Map<String, Value> = serde_json::from_str(text).unwrap_or_default();
            let want: Vec<Option<String>> =
                names.iter().map(|n| map.get(*n).and_then(Value::as_str).map(str::to_string)).collect();
            let got: Vec<Option<String>> =
                string_fields(text, names).into_iter().map(|v| v.map(Cow::into_owned)).collect();
            assert_eq!(got, want, "{text}");
        }
        let [email] = string_fields(r#"{"email":"plain"}"#, ["email"]);
        assert!(matches!(email, Some(Cow::Borrowed("plain"))), "borrowed when there is no escape");
    }
}
