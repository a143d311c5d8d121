//! The canonical forms of individual fields.

use chrono::DateTime;
use serde_json::Value;

use crate::decode::event::FieldValue;

/// Smallest and largest event times accepted (ClickHouse `DateTime64(3)` covers 1900-01-01 ..
/// 2299-12-31; we stay inside it).
pub const MIN_EVENT_TIME_MS: i64 = -2_208_988_800_000; // 1900-01-01T00:00:00Z
pub const MAX_EVENT_TIME_MS: i64 = 10_413_792_000_000; // 2300-01-01T00:00:00Z

/// Epoch numbers below this magnitude are seconds, above it milliseconds. 1e11 seconds is the year
/// 5138, and 1e11 milliseconds is 1973-03-03: no plausible event is ambiguous.
const SECONDS_MILLIS_BOUNDARY: f64 = 1e11;

/// snake_case of a free-form type name: "Email Opened", "emailOpened", "email-opened",
/// "EMAIL_OPENED" and "HTTPRequest" give "email_opened", ..., "http_request".
/// Returns an empty string when there is no letter or digit.
pub fn snake_case(raw: &str) -> String {
    if raw.is_ascii() {
        snake_case_ascii(raw.as_bytes())
    } else {
        snake_case_unicode(raw)
    }
}

/// [`snake_case`] of ASCII text, byte by byte: event types are ASCII, and collecting the characters of
/// every camel-cased or spaced type into a vector to look them up in Unicode's tables was ~2% of the
/// operator chain (benches/README.md, "Profiling" 22). Same rules, same output (a property test holds it
/// to the general path). Trimming is implied: leading separators meet an empty output, and trailing ones
/// only ever set a separator that is never written.
fn snake_case_ascii(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len() + 4);
    let mut pending_sep = false;
    for (i, &c) in raw.iter().enumerate() {
        if !c.is_ascii_alphanumeric() {
            pending_sep = !out.is_empty();
            continue;
        }
        if c.is_ascii_uppercase() && !out.is_empty() && i > 0 {
            let prev = raw[i - 1];
            let next_is_lower = raw.get(i + 1).is_some_and(u8::is_ascii_lowercase);
            if prev.is_ascii_lowercase() || prev.is_ascii_digit() || (prev.is_ascii_uppercase() && next_is_lower) {
                pending_sep = true;
            }
        }
        if pending_sep && !out.ends_with('_') {
            out.push('_');
        }
        pending_sep = false;
        out.push(char::from(c.to_ascii_lowercase()));
    }
    out
}

fn snake_case_unicode(raw: &str) -> String {
    let chars: Vec<char> = raw.trim().chars().collect();
    let mut out = String::with_capacity(chars.len() + 4);
    let mut pending_sep = false;
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            pending_sep = !out.is_empty();
            continue;
        }
        if c.is_uppercase() && i > 0 && !out.is_empty() {
            let prev = chars[i - 1];
            let next_is_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            // fooBar | foo9Bar -> boundary before B; HTTPRequest -> boundary before the R of Request.
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_is_lower) {
                pending_sep = true;
            }
        }
        if pending_sep && !out.ends_with('_') {
            out.push('_');
        }
        pending_sep = false;
        out.extend(c.to_lowercase());
    }
    out
}

/// Why a timestamp field is not an event time.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventTimeError {
    #[error("{0} is not a finite number")]
    NotFinite(String),
    #[error("{0:?} is neither RFC 3339 nor epoch seconds/milliseconds")]
    Unparsable(String),
    #[error("expected a string or a number, got {0}")]
    WrongType(&'static str),
    #[error("{0} ms since the epoch is outside 1900..2300")]
    OutOfYears(i64),
    #[error("{0} is out of range for epoch seconds or milliseconds")]
    OutOfRange(f64),
}

/// Parses `occurred_at`: RFC 3339 with any offset, or epoch seconds / milliseconds (as a number or a
/// numeric string, fractions allowed). Returns UTC milliseconds.
pub fn parse_event_time(value: &Value) -> Result<i64, EventTimeError> {
    parse_event_time_field(&FieldValue::of(value))
}

/// [`parse_event_time`] of a decoded event field.
pub fn parse_event_time_field(value: &FieldValue<'_>) -> Result<i64, EventTimeError> {
    let ms = match value {
        FieldValue::Number(n) => {
            let f = n.as_f64().ok_or_else(|| EventTimeError::NotFinite(n.to_string()))?;
            epoch_number_to_millis(f)?
        }
        FieldValue::Str(s) => {
            let s = s.trim();
            if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
                dt.timestamp_millis()
            } else if let Ok(f) = s.parse::<f64>() {
                epoch_number_to_millis(f)?
            } else {
                return Err(EventTimeError::Unparsable(s.to_string()));
            }
        }
        other => return Err(EventTimeError::WrongType(other.kind())),
    };
    if !(MIN_EVENT_TIME_MS..MAX_EVENT_TIME_MS).contains(&ms) {
        return Err(EventTimeError::OutOfYears(ms));
    }
    Ok(ms)
}

fn epoch_number_to_millis(f: f64) -> Result<i64, EventTimeError> {
    if !f.is_finite() {
        return Err(EventTimeError::NotFinite("timestamp".into()));
    }
    let ms = if f.abs() < SECONDS_MILLIS_BOUNDARY { f * 1000.0 } else { f };
    if ms.abs() > 1e15 {
        return Err(EventTimeError::OutOfRange(f));
    }
    Ok(ms.round() as i64)
}

/// Is this string an email address (loosely: one `@`, a dotted domain, no spaces)?
pub fn is_email_like(s: &str) -> bool {
    // Most strings are not addresses: without an `@` the answer is no, before any per-character work.
    if !s.as_bytes().contains(&b'@') {
        return false;
    }
    let s = s.trim();
    if s.len() > 254 {
        return false;
    }
    // `char::is_whitespace` on ASCII is exactly these bytes; only other text needs the Unicode table.
    let has_whitespace = if s.is_ascii() {
        s.bytes().any(|b| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'))
    } else {
        s.chars().any(char::is_whitespace)
    };
    if has_whitespace {
        return false;
    }
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }
        None => false,
    }
}

/// Lower-cases (and trims) email-like string values anywhere inside `value`.
pub fn lowercase_emails(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Some(email) = lowercased_email(s) {
                *s = email;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(lowercase_emails),
        Value::Object(map) => map.values_mut().for_each(lowercase_emails),
        _ => {}
    }
}

/// An email-like string in canonical form (trimmed, lower-cased); `None` for any other string.
pub(crate) fn lowercased_email(s: &str) -> Option<String> {
    is_email_like(s).then(|| s.trim().to_lowercase())
}

/// Canonical JSON text: object keys sorted (whatever map order serde_json was built with), no spaces.
/// Equal values always give equal text, which makes content-derived event ids stable.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::with_capacity(128);
    write_canonical(value, &mut out);
    utf8(out)
}

/// Text that serde_json wrote: UTF-8 only, so the check is a fast pass over bytes just written.
pub(crate) fn utf8(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Writes straight into one buffer: keys and scalars through serde_json's own writer (same escaping as
/// its `Display`, without a `String` per key and value: that was most of normalization's allocations).
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(k, out);
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => write_json(scalar, out),
    }
}

/// A key or scalar in serde_json's compact form (the same escaping and number formatting as its
/// `Display`), appended to `out`.
pub(crate) fn write_json<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // Writing a string, number, bool or null into a Vec cannot fail.
    let _ = serde_json::to_writer(out, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn snake_case_handles_spaces_camel_kebab_and_acronyms() {
        assert_eq!(snake_case("Email Opened"), "email_opened");
        assert_eq!(snake_case("emailOpened"), "email_opened");
        assert_eq!(snake_case("email-opened"), "email_opened");
        assert_eq!(snake_case("EMAIL_OPENED"), "email_opened");
        assert_eq!(snake_case("HTTPRequest"), "http_request");
        assert_eq!(snake_case("  page  viewed!! "), "page_viewed");
        assert_eq!(snake_case("checkout.v2.Completed"), "checkout_v2_completed");
        assert_eq!(snake_case("already_snake"), "already_snake");
        assert_eq!(snake_case(" -- "), "");
    }

    proptest::proptest! {
        /// The ASCII path is the general path for every ASCII string (whitespace of every kind, digits,
        /// separators, case runs).
        #[test]
        fn snake_case_of_ascii_is_the_general_rule(raw in "[ -~\t\n\x0B\x0C\r]{0,40}") {
            proptest::prop_assert_eq!(snake_case_ascii(raw.as_bytes()), snake_case_unicode(&raw));
        }

        #[test]
        fn snake_case_of_camel_runs_is_the_general_rule(raw in "[aAbB09_ .-]{0,24}") {
            proptest::prop_assert_eq!(snake_case_ascii(raw.as_bytes()), snake_case_unicode(&raw));
        }
    }

    #[test]
    fn snake_case_keeps_unicode_rules_for_other_text() {
        assert_eq!(snake_case("Émail Ouvert"), "émail_ouvert");
        assert_eq!(snake_case("  ÜberEvent "), "über_event");
    }

    #[test]
    fn rfc3339_with_offsets_becomes_utc_millis() {
        let a = parse_event_time(&json!("2026-11-25T10:00:00Z")).unwrap();
        let b = parse_event_time(&json!("2026-11-25T11:00:00+01:00")).unwrap();
        let c = parse_event_time(&json!("2026-11-25T05:30:00.250-04:30")).unwrap();
        assert_eq!(a, b);
        assert_eq!(c, a + 250);
        assert_eq!(a, 1_795_600_800_000);
    }

    #[test]
    fn epoch_seconds_and_millis_are_told_apart() {
        assert_eq!(parse_event_time(&json!(1_700_000_000)).unwrap(), 1_700_000_000_000);
        assert_eq!(parse_event_time(&json!(1_700_000_000_123i64)).unwrap(), 1_700_000_000_123);
        assert_eq!(parse_event_time(&json!(1_700_000_000.5)).unwrap(), 1_700_000_000_500);
        assert_eq!(parse_event_time(&json!("1700000000")).unwrap(), 1_700_000_000_000);
    }

    #[test]
    fn unparseable_times_are_errors() {
        for bad in
            [json!("yesterday"), json!("2026-13-01T00:00:00Z"), json!(true), json!(null), json!({}), json!(1e300)]
        {
            assert!(parse_event_time(&bad).is_err(), "{bad} should not parse");
        }
        assert!(parse_event_time(&json!("2400-01-01T00:00:00Z")).is_err());
    }

    #[test]
    fn emails_are_detected_and_lowercased_recursively() {
        assert!(is_email_like("Ann@Example.COM"));
        // The fast paths (no `@`, ASCII whitespace) answer as the plain definition does.
        let plain = |s: &str| {
            let s = s.trim();
            let mut parts = s.split('@');
            s.len() <= 254
                && !s.chars().any(char::is_whitespace)
                && match (parts.next(), parts.next(), parts.next()) {
                    (Some(l), Some(d), None) => {
                        !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
                    }
                    _ => false,
                }
        };
        let long = format!("{}@example.com", "a".repeat(250));
        for s in [
            "",
            "@",
            "a@b.c",
            " a@b.c\t",
            "a@b.c\x0b",
            "a\x0c@b.c",
            "a@b\r.c",
            "a@b.c\u{85}",
            "a@\u{a0}b.c",
            "\u{2003}a@b.c\u{2003}",
            "ü@b.de",
            "a@.b",
            "a@b.",
            "@b.c",
            "a@b@c.d",
            "a@bc",
            "plain text",
            long.as_str(),
        ] {
            assert_eq!(is_email_like(s), plain(s), "{s:?}");
        }
        assert!(!is_email_like("not an@email.com"));
        assert!(!is_email_like("a@b"));
        assert!(!is_email_like("a@@b.com"));
        let mut v = json!({"email": " Ann@Example.COM ", "nested": {"cc": ["BOB@X.IO", "Keep Me"]}, "n": 1});
        lowercase_emails(&mut v);
        assert_eq!(v, json!({"email": "ann@example.com", "nested": {"cc": ["bob@x.io", "Keep Me"]}, "n": 1}));
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"d": [1, {"z": 1, "y": 2}], "c": "x\"y"}});
        assert_eq!(canonical_json(&v), r#"{"a":{"c":"x\"y","d":[1,{"y":2,"z":1}]},"b":1}"#);
    }

    #[test]
    fn canonical_json_escapes_and_scalars_as_serde_json_displays_them() {
        let v = json!({"k\n\"ey": "t\u{1}ab\tü😀", "n": -1.5e300, "i": 18446744073709551615u64, "b": false, "z": null,
                       "e": [], "o": {}});
        // Same bytes as serde_json's own compact form of each part.
        let expected = format!(
            "{{{}:{},{}:{},{}:{},{}:{},{}:{},{}:{},{}:{}}}",
            json!("b"),
            json!(false),
            json!("e"),
            "[]",
            json!("i"),
            json!(18446744073709551615u64),
            json!("k\n\"ey"),
            json!("t\u{1}ab\tü😀"),
            json!("n"),
            json!(-1.5e300),
            json!("o"),
            "{}",
            json!("z"),
            "null"
        );
        assert_eq!(canonical_json(&v), expected);
    }
}
