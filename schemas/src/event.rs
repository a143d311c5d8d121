//! The canonical event that normalization produces and every later operator consumes.

use serde::{Deserialize, Serialize};

/// Where a record came from: the exact Kafka coordinates, kept on every event so that sinks can make
/// their writes deterministic and a restart can tell what was already stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourcePosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A validated, canonical marketing event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormalizedEvent {
    /// Producer-assigned, or derived deterministically from the content when absent.
    pub event_id: String,
    /// Canonical snake_case, after the alias table.
    pub event_type: String,
    /// Event time, UTC milliseconds since the Unix epoch.
    pub occurred_at_ms: i64,
    /// Trimmed, non-empty, bounded.
    pub subject_id: String,
    pub tenant_id: String,
    pub source: String,
    /// Canonical JSON object: keys sorted, email-like string values lower-cased.
    pub attributes_json: String,
    /// Wall-clock time the pipeline accepted the event, UTC milliseconds.
    pub ingested_at_ms: i64,
    pub position: SourcePosition,
    /// Behind the watermark when it arrived, and processed anyway (`event_time.late_events: flag`).
    #[serde(default)]
    pub late: bool,
}
