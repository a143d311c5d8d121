//! Normalization: validate the required fields of a decoded event and bring every field into its
//! canonical form. Pure: the caller passes the clock (`now_ms`), so replays and tests are deterministic.
//!
//! Rules (one rejection reason each, see [`RejectReason`]):
//! - `event_type` (required string): alias table, then snake_case; unknown types allowed or rejected;
//! - `occurred_at` (required): RFC 3339 with any offset, or epoch seconds/millis → UTC millis; not
//!   further in the future than `max_future_skew`;
//! - `subject_id` (required string or integer): trimmed, non-empty, at most `max_subject_id_len` chars;
//! - `attributes` (required object): email-like string values lower-cased, keys sorted;
//! - `event_id`, `tenant_id`, `source` (optional strings): a missing `event_id` is derived from the
//!   content, so the same event sent twice gets the same id and is deduplicated; at most 256, 128 and
//!   128 bytes, and no `/` or control character in a tenant id (`invalid_id`).
//!
//! Fields other than these are ignored: producers put payload data in `attributes`.

mod canonical;
mod config;

use touchpoint_schemas::{NormalizedEvent, RejectReason, SourcePosition};

pub use canonical::{
    canonical_json, is_email_like, lowercase_emails, parse_event_time, parse_event_time_field, snake_case,
};
pub use config::{EventTypesConfig, NormalizeConfig, UnknownEventTypes};
// Shared with the decoders, which write canonical attributes while they parse.
pub(crate) use canonical::{lowercased_email, utf8, write_json};

use crate::decode::event::{Attributes, EventFields, FieldValue};
use crate::fast_hash::{FastHashMap, FastHashSet};

/// A record the pipeline refuses, with the reason code and a message for the person who produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Rejection { reason, message: message.into() }
    }
}

/// A configuration that cannot work (reported when the pipeline file is loaded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("normalize.event_types: {0}")]
pub struct InvalidNormalizeConfig(String);

/// The normalization operator: configuration compiled into lookup tables.
#[derive(Debug, Clone)]
pub struct Normalizer {
    config: NormalizeConfig,
    /// snake_case(alias) → canonical type.
    aliases: FastHashMap<String, String>,
    /// Each alias exactly as configured → its canonical type: the common spellings skip snake_case.
    spellings: FastHashMap<String, String>,
    /// Canonical types accepted when unknown types are rejected.
    known: FastHashSet<String>,
    max_future_skew_ms: i64,
}

impl Normalizer {
    pub fn new(config: NormalizeConfig) -> Result<Self, InvalidNormalizeConfig> {
        let mut aliases = FastHashMap::default();
        for (from, to) in &config.event_types.aliases {
            let (key, target) = (snake_case(from), snake_case(to));
            if key.is_empty() || target.is_empty() {
                return Err(InvalidNormalizeConfig(format!(
                    "alias {from:?} -> {to:?} has no letters or digits on one side"
                )));
            }
            if let Some(previous) = aliases.insert(key.clone(), target.clone()) {
                if previous != target {
                    return Err(InvalidNormalizeConfig(format!(
                        "aliases {from:?} maps to both {previous:?} and {target:?} (spellings collide as {key:?})"
                    )));
                }
            }
        }
        let spellings = config
            .event_types
            .aliases
            .keys()
            .filter_map(|from| Some((from.clone(), aliases.get(&snake_case(from))?.clone())))
            .collect();
        let known: FastHashSet<String> = config.event_types.known.iter().map(|t| snake_case(t)).collect();
        if config.event_types.unknown == UnknownEventTypes::Reject && known.is_empty() {
            return Err(InvalidNormalizeConfig(
                "unknown: reject needs a non-empty `known` list, or every event would be rejected".into(),
            ));
        }
        let max_future_skew_ms = i64::try_from(config.max_future_skew.as_millis()).unwrap_or(i64::MAX);
        Ok(Normalizer { config, aliases, spellings, known, max_future_skew_ms })
    }

    pub fn config(&self) -> &NormalizeConfig {
        &self.config
    }

    /// The canonical name of a producer's event type.
    pub fn canonical_event_type(&self, raw: &str) -> Result<String, Rejection> {
        let canonical = match self.spellings.get(raw) {
            Some(canonical) => canonical.clone(),
            None => {
                // Most producers send snake_case already: no need to take it apart character by character.
                let snake = if is_plain_snake_case(raw) { raw.to_string() } else { snake_case(raw) };
                if snake.is_empty() {
                    return Err(Rejection::new(
                        RejectReason::InvalidEventType,
                        format!("event_type {raw:?} has no letters or digits"),
                    ));
                }
                self.aliases.get(&snake).cloned().unwrap_or(snake)
            }
        };
        if self.config.event_types.unknown == UnknownEventTypes::Reject && !self.known.contains(&canonical) {
            return Err(Rejection::new(
                RejectReason::UnknownEventType,
                format!("event_type {raw:?} (canonical {canonical:?}) is not a known event type"),
            ));
        }
        Ok(canonical)
    }

    /// Validates and canonicalizes one decoded record (its attributes arrive in canonical text already:
    /// [`crate::decode::event`]).
    pub fn normalize(
        &self,
        fields: EventFields<'_>,
        position: SourcePosition,
        now_ms: i64,
    ) -> Result<NormalizedEvent, Rejection> {
        let raw_type = required_string(&fields.event_type, "event_type")?;
        let event_type = self.canonical_event_type(raw_type)?;

        let occurred_at_ms = parse_event_time_field(required(&fields.occurred_at, "occurred_at")?)
            .map_err(|m| Rejection::new(RejectReason::InvalidTimestamp, format!("occurred_at: {m}")))?;
        if occurred_at_ms > now_ms.saturating_add(self.max_future_skew_ms) {
            return Err(Rejection::new(
                RejectReason::TimestampInFuture,
                format!(
                    "occurred_at is {} s ahead of the pipeline's clock, more than the allowed skew of {} s",
                    (occurred_at_ms - now_ms) / 1000,
                    self.max_future_skew_ms / 1000
                ),
            ));
        }

        let subject_id = self.subject_id(required(&fields.subject_id, "subject_id")?)?;

        let attributes_json = match fields.attributes {
            None => return Err(Rejection::new(RejectReason::MissingField, "required field `attributes` is missing")),
            Some(Attributes::Canonical(text)) => text,
            Some(Attributes::NotAnObject(kind)) => {
                return Err(Rejection::new(
                    RejectReason::InvalidFieldType,
                    format!("`attributes` must be an object, got {kind}"),
                ))
            }
        };

        let tenant_id =
            optional_string(&fields.tenant_id, "tenant_id")?.unwrap_or_else(|| self.config.default_tenant.clone());
        check_tenant_id(&tenant_id)?;
        let source = optional_string(&fields.source, "source")?.unwrap_or_else(|| self.config.default_source.clone());
        check_length("source", &source, MAX_SOURCE_BYTES)?;
        let event_id = match optional_string(&fields.event_id, "event_id")? {
            Some(id) => {
                check_length("event_id", &id, MAX_EVENT_ID_BYTES)?;
                id
            }
            None => derived_event_id(&tenant_id, &event_type, &subject_id, occurred_at_ms, &attributes_json),
        };

        Ok(NormalizedEvent {
            event_id,
            event_type,
            occurred_at_ms,
            subject_id,
            tenant_id,
            source,
            attributes_json,
            ingested_at_ms: now_ms,
            position,
            late: false,
        })
    }

    fn subject_id(&self, value: &FieldValue<'_>) -> Result<String, Rejection> {
        let id = match value {
            FieldValue::Str(s) => s.trim().to_string(),
            // Numeric ids are common in CRMs; their decimal form is the canonical id.
            FieldValue::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
            other => {
                return Err(Rejection::new(
                    RejectReason::InvalidFieldType,
                    format!("`subject_id` must be a string or an integer, got {}", other.kind()),
                ))
            }
        };
        if id.is_empty() {
            return Err(Rejection::new(RejectReason::InvalidSubjectId, "`subject_id` is empty"));
        }
        let len = id.chars().count();
        if len > self.config.max_subject_id_len {
            return Err(Rejection::new(
                RejectReason::InvalidSubjectId,
                format!("`subject_id` has {len} characters, more than the limit of {}", self.config.max_subject_id_len),
            ));
        }
        Ok(id)
    }
}

/// A deterministic id from the event's canonical content (`tp-` + 128-bit xxh3, hex).
pub fn derived_event_id(
    tenant: &str,
    event_type: &str,
    subject: &str,
    occurred_at_ms: i64,
    attributes_json: &str,
) -> String {
    let key = crate::fast_hash::KeyBytes::with_capacity(
        tenant.len() + event_type.len() + subject.len() + attributes_json.len() + 24,
    )
    .part(tenant)
    .part(event_type)
    .part(subject)
    .raw(&occurred_at_ms.to_le_bytes())
    .raw(attributes_json.as_bytes());
    crate::fast_hash::hex_id("tp-", key.hash128())
}

/// Already snake_case as [`snake_case`] writes it: ASCII lower-case letters and digits in words joined by
/// single underscores.
fn is_plain_snake_case(raw: &str) -> bool {
    !raw.is_empty()
        && !raw.starts_with('_')
        && !raw.ends_with('_')
        && !raw.contains("__")
        && raw.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn required<'f, 'a>(field: &'f Option<FieldValue<'a>>, name: &str) -> Result<&'f FieldValue<'a>, Rejection> {
    match field {
        None | Some(FieldValue::Null) => {
            Err(Rejection::new(RejectReason::MissingField, format!("required field `{name}` is missing")))
        }
        Some(v) => Ok(v),
    }
}

fn required_string<'f>(field: &'f Option<FieldValue<'_>>, name: &str) -> Result<&'f str, Rejection> {
    match required(field, name)? {
        FieldValue::Str(s) => Ok(s),
        other => Err(Rejection::new(
            RejectReason::InvalidFieldType,
            format!("`{name}` must be a string, got {}", other.kind()),
        )),
    }
}

/// An optional string field: absent, null or blank → `None`; numbers are accepted as their text.
/// Limits of the optional ids (bytes): they are part of every key, row and record of the event.
pub const MAX_TENANT_ID_BYTES: usize = 128;
pub const MAX_EVENT_ID_BYTES: usize = 256;
pub const MAX_SOURCE_BYTES: usize = 128;

fn check_length(name: &str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.len() > max {
        return Err(Rejection::new(
            RejectReason::InvalidId,
            format!("`{name}` has {} bytes, more than the limit of {max}", value.len()),
        ));
    }
    Ok(())
}

/// A tenant id is bounded and has no `/` or control character: state keys are `tenant/subject`,
/// split at the first `/`.
pub fn check_tenant_id(tenant_id: &str) -> Result<(), Rejection> {
    check_length("tenant_id", tenant_id, MAX_TENANT_ID_BYTES)?;
    if tenant_id.contains('/') || tenant_id.chars().any(char::is_control) {
        return Err(Rejection::new(
            RejectReason::InvalidId,
            format!("`tenant_id` {tenant_id:?} contains `/` or a control character"),
        ));
    }
    Ok(())
}

fn optional_string(field: &Option<FieldValue<'_>>, name: &str) -> Result<Option<String>, Rejection> {
    match field {
        None | Some(FieldValue::Null) => Ok(None),
        Some(FieldValue::Str(s)) => {
            let t = s.trim();
            Ok((!t.is_empty()).then(|| t.to_string()))
        }
        Some(FieldValue::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(Rejection::new(
            RejectReason::InvalidFieldType,
            format!("`{name}` must be a string, got {}", other.kind()),
        )),
    }
}

#[cfg(test)]
mod tests;
