//! Why a record was rejected. The code travels in the dead-letter header `tp.error.code`, so it is a
//! stable public contract: add variants, never rename them.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Not JSON, not Confluent-framed Avro, or bytes that do not decode with their schema.
    MalformedPayload,
    /// Confluent-framed Avro whose schema id the registry does not know.
    UnknownSchema,
    /// A required field (`event_type`, `occurred_at`, `subject_id`, `attributes`) is absent or null.
    MissingField,
    /// A field has the wrong type (e.g. `attributes` is not an object).
    InvalidFieldType,
    /// `occurred_at` is neither RFC 3339 nor epoch seconds/milliseconds.
    InvalidTimestamp,
    /// `occurred_at` lies further in the future than the configured clock skew.
    TimestampInFuture,
    /// `subject_id` is empty after trimming, or longer than allowed.
    InvalidSubjectId,
    /// `event_type` has no letters or digits to build a snake_case name from.
    InvalidEventType,
    /// `event_type` is not in the known list and the pipeline rejects unknown types.
    UnknownEventType,
    /// `tenant_id`, `event_id` or `source` is longer than allowed (128, 256, 128 bytes), or the tenant
    /// contains `/` or a control character (state keys are `tenant/subject`: a `/` in the tenant would
    /// make two subjects share one key).
    InvalidId,
    /// A consent record names a channel the pipeline does not know.
    UnknownChannel,
    /// A consent record names a purpose other than marketing or transactional.
    UnknownPurpose,
    /// A consent record's status is not granted, denied or pending.
    UnknownConsentStatus,
    /// A consent record's key is not `tenant/subject/channel/purpose` of the entry it sets or clears
    /// (compaction keeps the last record per key, so the key must name exactly one table entry).
    InvalidKey,
    /// A profile record's email, phone, time zone, locale, device or attribute does not check out.
    InvalidProfileField,
}

impl RejectReason {
    /// Every reason, events', consent records' and profile records'.
    pub const ALL: [RejectReason; 15] = [
        RejectReason::MalformedPayload,
        RejectReason::UnknownSchema,
        RejectReason::MissingField,
        RejectReason::InvalidFieldType,
        RejectReason::InvalidTimestamp,
        RejectReason::TimestampInFuture,
        RejectReason::InvalidSubjectId,
        RejectReason::InvalidEventType,
        RejectReason::UnknownEventType,
        RejectReason::InvalidId,
        RejectReason::UnknownChannel,
        RejectReason::UnknownPurpose,
        RejectReason::UnknownConsentStatus,
        RejectReason::InvalidKey,
        RejectReason::InvalidProfileField,
    ];

    /// The reasons a `marketing.events` record can be rejected for (the first ten of [`Self::ALL`]).
    pub const EVENT: &'static [RejectReason] = Self::ALL.split_at(10).0;

    /// The stable code written to `tp.error.code`.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::MalformedPayload => "malformed_payload",
            RejectReason::UnknownSchema => "unknown_schema",
            RejectReason::MissingField => "missing_field",
            RejectReason::InvalidFieldType => "invalid_field_type",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::TimestampInFuture => "timestamp_in_future",
            RejectReason::InvalidSubjectId => "invalid_subject_id",
            RejectReason::InvalidEventType => "invalid_event_type",
            RejectReason::UnknownEventType => "unknown_event_type",
            RejectReason::InvalidId => "invalid_id",
            RejectReason::UnknownChannel => "unknown_channel",
            RejectReason::UnknownPurpose => "unknown_purpose",
            RejectReason::UnknownConsentStatus => "unknown_consent_status",
            RejectReason::InvalidKey => "invalid_key",
            RejectReason::InvalidProfileField => "invalid_profile_field",
        }
    }

    pub fn from_code(code: &str) -> Option<RejectReason> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Dead-letter header names (see `schemas/avro/dead_letter.avsc`).
pub mod headers {
    pub const ERROR_CODE: &str = "tp.error.code";
    pub const ERROR_MESSAGE: &str = "tp.error.message";
    pub const SOURCE_TOPIC: &str = "tp.source.topic";
    pub const SOURCE_PARTITION: &str = "tp.source.partition";
    pub const SOURCE_OFFSET: &str = "tp.source.offset";
    pub const REJECTED_AT: &str = "tp.rejected_at";
    /// On the late-events topic: the watermark the event was judged against (RFC 3339, UTC).
    pub const LATE_WATERMARK: &str = "tp.late.watermark";
    /// On the late-events topic: how far behind the watermark the event was, in milliseconds.
    pub const LATE_BEHIND_MS: &str = "tp.late.behind_ms";
    /// On `connector.<channel>` records and the connectors' dead letters: the send's idempotency key.
    pub const IDEMPOTENCY_KEY: &str = "tp.idempotency_key";
    /// On a connector's dead letters: why the message was not delivered, its last status, the attempts
    /// spent and when it was dead-lettered (epoch milliseconds).
    pub const DLQ_REASON: &str = "tp.dlq.reason";
    pub const DLQ_STATUS: &str = "tp.dlq.status";
    pub const DLQ_ATTEMPTS: &str = "tp.dlq.attempts";
    pub const DLQ_AT: &str = "tp.dlq.at";
    /// On a record written as a reference (its key and value left out, too large to write): the size
    /// in bytes the full record would have had. The source position headers say where the original is.
    pub const ORIGINAL_BYTES: &str = "tp.original.bytes";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in RejectReason::ALL {
            assert!(seen.insert(r.code()), "duplicate code {}", r.code());
            assert_eq!(RejectReason::from_code(r.code()), Some(r));
        }
        assert_eq!(RejectReason::from_code("nope"), None);
    }

    #[test]
    fn event_reasons_exclude_consent_only_ones() {
        assert_eq!(RejectReason::EVENT.len(), 10);
        assert!(RejectReason::EVENT.contains(&RejectReason::InvalidId));
        for consent_only in
            [RejectReason::UnknownChannel, RejectReason::UnknownPurpose, RejectReason::UnknownConsentStatus]
        {
            assert!(!RejectReason::EVENT.contains(&consent_only));
        }
    }
}
