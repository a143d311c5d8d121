//! A dry run of a send: "would this message to this subject be allowed now?", answered from a worker's
//! live state (consent, profile, caps, quiet hours, segments) with the decision and its reasons, without
//! sending, counting or recording anything (`POST /internal/automation/evaluate`, docs/ingest.md).
//!
//! The request reaches the worker that owns the subject like a consent change does (a topic read by the
//! dataflow, exchanged by subject key); the worker decides a would-be intent on a copy of the subject's
//! cap counters and answers on the replies topic. Nothing the dry run does is in the worker's state.

use serde::{Deserialize, Serialize};
use touchpoint_schemas::{Channel, Purpose, SubjectRef};

/// The most bytes of a request record the pipeline reads (a hostile producer could write more).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// What the API asks, as a record of `<group>.evaluate-requests` (keyed by `tenant/subject`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    /// Matches the reply to the waiting request.
    pub correlation_id: String,
    pub tenant_id: String,
    pub subject_id: String,
    pub channel: Channel,
    #[serde(default = "marketing")]
    pub purpose: Purpose,
    pub category: String,
    #[serde(default)]
    pub template: String,
    #[serde(default)]
    pub priority: i32,
    /// The instant to decide at (caps windows, quiet hours); the API sends its clock's now.
    pub at_ms: i64,
}

fn marketing() -> Purpose {
    Purpose::Marketing
}

impl EvaluateRequest {
    pub fn subject(&self) -> SubjectRef {
        SubjectRef::new(&self.tenant_id, &self.subject_id)
    }

    /// A request record's payload, or why the pipeline ignores it.
    pub fn parse(payload: &[u8]) -> Result<Self, String> {
        if payload.len() > MAX_REQUEST_BYTES {
            return Err(format!("{} bytes; at most {MAX_REQUEST_BYTES}", payload.len()));
        }
        serde_json::from_slice(payload).map_err(|e| e.to_string())
    }
}

/// The answer, as a record of `<group>.evaluate-replies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluateReply {
    pub correlation_id: String,
    /// The decision a real send would get now: `allowed`, `suppressed_consent`, `suppressed_cap`, ...
    pub decision: String,
    /// Why, as the decision rows say it.
    pub reason: String,
    /// `granted`, `denied`, `missing(default deny)`, ...
    pub consent: String,
    /// The cap rule that would suppress it, with its count and limit (none: within every cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<String>,
    /// Until when quiet hours would hold it (RFC 3339), when they would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until: Option<String>,
    /// Where the recipient would come from (`profile`, `event`, `none`).
    pub recipient_source: String,
    /// The segments the subject is a member of now.
    pub segments: Vec<String>,
    /// Whether the pipeline holds a profile for the subject.
    pub has_profile: bool,
    /// The worker's event-time watermark when it answered (how current its state is).
    pub watermark_ms: i64,
}
