//! Row types of the ClickHouse tables, encoded as RowBinary. Field order and types follow
//! `schemas/clickhouse/*.sql`; the client validates them against the table at the first insert.

use clickhouse::Row;
use serde::Serialize;
use touchpoint_schemas::NormalizedEvent;

/// One row of `events`. `DateTime64(3)` columns are milliseconds since the epoch on the wire.
#[derive(Debug, Row, Serialize)]
pub struct EventRow<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub occurred_at: i64,
    pub subject_id: &'a str,
    pub tenant_id: &'a str,
    pub source: &'a str,
    pub attributes: &'a str,
    pub ingested_at: i64,
    pub kafka_topic: &'a str,
    pub kafka_partition: u32,
    pub kafka_offset: u64,
    pub late: bool,
}

impl<'a> From<&'a NormalizedEvent> for EventRow<'a> {
    fn from(e: &'a NormalizedEvent) -> Self {
        EventRow {
            event_id: &e.event_id,
            event_type: &e.event_type,
            occurred_at: e.occurred_at_ms,
            subject_id: &e.subject_id,
            tenant_id: &e.tenant_id,
            source: &e.source,
            attributes: &e.attributes_json,
            ingested_at: e.ingested_at_ms,
            kafka_topic: &e.position.topic,
            kafka_partition: u32::try_from(e.position.partition).unwrap_or_default(),
            kafka_offset: u64::try_from(e.position.offset).unwrap_or_default(),
            late: e.late,
        }
    }
}

/// The deduplication token of a batch: a hash of the source positions it holds. The same batch,
/// retried, carries the same token, and ClickHouse stores it once.
pub fn batch_token<'a>(sink: &str, events: impl IntoIterator<Item = &'a NormalizedEvent>) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(sink.as_bytes());
    for e in events {
        h.update(e.position.topic.as_bytes());
        h.update(&e.position.partition.to_le_bytes());
        h.update(&e.position.offset.to_le_bytes());
    }
    format!("{sink}-{:032x}", h.digest128())
}

/// One row of `decisions`.
#[derive(Debug, Row, Serialize)]
pub struct DecisionRow<'a> {
    pub decided_at: i64,
    pub occurred_at: i64,
    pub tenant_id: &'a str,
    pub subject_id: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub intent_rule: &'a str,
    pub channel: &'a str,
    pub purpose: &'a str,
    pub category: &'a str,
    pub template: &'a str,
    pub priority: i32,
    pub decision: &'a str,
    pub reason: String,
    pub consent_status: String,
    pub cap_rule: &'a str,
    pub cap_count: u32,
    pub cap_limit: u32,
    pub cap_window: &'a str,
    pub intents_version: &'a str,
    pub caps_version: &'a str,
    pub idempotency_key: &'a str,
    pub kafka_partition: u32,
    pub kafka_offset: u64,
    pub late: bool,
    pub journey: &'a str,
    pub journey_version: &'a str,
    pub journey_step: &'a str,
    pub recipient_source: &'static str,
    /// The instant a held send was decided again (0: decided at its event).
    pub released_at: i64,
    /// When a held send is decided again (0: not held).
    pub held_until: i64,
}

impl<'a> DecisionRow<'a> {
    pub fn new(d: &'a touchpoint_operators::decision::Decision, decided_at: i64) -> Self {
        use touchpoint_operators::decision::DecisionKind;
        use touchpoint_operators::frequency_cap::CapVerdict;
        let i = &d.intent;
        let (cap_rule, cap_count, cap_limit, cap_window) = match &d.cap {
            Some(CapVerdict::Capped { rule_id, count, limit, window }) => {
                (rule_id.as_str(), *count, *limit, window.as_str())
            }
            _ => ("", 0, 0, ""),
        };
        DecisionRow {
            decided_at,
            occurred_at: i.occurred_at_ms,
            tenant_id: &i.subject.tenant_id,
            subject_id: &i.subject.subject_id,
            event_id: &i.event_id,
            event_type: &i.event_type,
            intent_rule: &i.rule_id,
            channel: i.channel.as_str(),
            purpose: i.purpose.as_str(),
            category: &i.category,
            template: &i.template,
            priority: i.priority,
            decision: d.kind.as_str(),
            reason: d.reason(),
            consent_status: d.consent.describe(),
            cap_rule,
            cap_count,
            cap_limit,
            cap_window,
            intents_version: &i.ruleset_version,
            caps_version: &d.caps_version,
            idempotency_key: &i.idempotency_key,
            kafka_partition: u32::try_from(i.position.partition).unwrap_or_default(),
            kafka_offset: u64::try_from(i.position.offset).unwrap_or_default(),
            late: i.late,
            journey: i.journey.as_ref().map_or("", |j| j.journey.as_str()),
            journey_version: i.journey.as_ref().map_or("", |j| j.version.as_str()),
            journey_step: i.journey.as_ref().map_or("", |j| j.step.as_str()),
            recipient_source: d.recipient.as_str(),
            released_at: i.released_at_ms.unwrap_or(0),
            held_until: d.quiet.as_ref().filter(|_| d.kind == DecisionKind::HeldQuietHours).map_or(0, |q| q.until_ms),
        }
    }
}

/// One row of `journey_transitions`.
#[derive(Debug, Row, Serialize)]
pub struct TransitionRow<'a> {
    pub recorded_at: i64,
    pub event_time: i64,
    pub tenant_id: &'a str,
    pub subject_id: &'a str,
    pub journey: &'a str,
    pub journey_version: &'a str,
    pub from_step: &'a str,
    pub to_step: &'a str,
    /// The cause's text (`Cause`'s `Display`): what analysts and scenario files read.
    pub cause: String,
    pub event_id: &'a str,
    pub seq: u32,
}

impl<'a> TransitionRow<'a> {
    pub fn new(t: &'a touchpoint_operators::journey::Transition, recorded_at: i64) -> Self {
        TransitionRow {
            recorded_at,
            event_time: t.event_time_ms,
            tenant_id: &t.subject.tenant_id,
            subject_id: &t.subject.subject_id,
            journey: &t.journey,
            journey_version: &t.version,
            from_step: t.from_step.as_deref().unwrap_or_default(),
            to_step: t.to_step.as_deref().unwrap_or_default(),
            cause: t.cause.to_string(),
            event_id: t.event_id.as_deref().unwrap_or_default(),
            seq: t.seq,
        }
    }
}

/// One row of `profiles`: a subject's profile after a change.
#[derive(Debug, Row, Serialize)]
pub struct ProfileRow<'a> {
    pub recorded_at: i64,
    pub updated_at: i64,
    pub tenant_id: &'a str,
    pub subject_id: &'a str,
    pub email: &'a str,
    pub phone: &'a str,
    pub devices: Vec<&'a str>,
    pub time_zone: &'a str,
    pub locale: &'a str,
    /// The custom attributes, a JSON object.
    pub attributes: String,
    pub deleted: u8,
}

impl<'a> ProfileRow<'a> {
    pub fn new(s: &'a touchpoint_operators::guardrails::ProfileSnapshot, recorded_at: i64) -> Self {
        let p = s.state.as_ref();
        let text = |f: fn(&'a touchpoint_operators::profile::SubjectProfile) -> Option<&'a str>| {
            p.and_then(f).unwrap_or_default()
        };
        let attributes = p.map(|p| p.custom_attributes()).unwrap_or_default();
        let mut row = ProfileRow {
            recorded_at,
            updated_at: p.map_or(recorded_at, |p| p.updated_at_ms()),
            tenant_id: &s.subject.tenant_id,
            subject_id: &s.subject.subject_id,
            email: text(|p| p.email()),
            phone: text(|p| p.phone()),
            devices: p.map(|p| p.device_tokens()).unwrap_or_default(),
            time_zone: text(|p| p.time_zone()),
            locale: text(|p| p.locale()),
            attributes: String::new(),
            deleted: 0,
        };
        // Forgotten: nothing set remains (a tombstone's time alone).
        let empty = [row.email, row.phone, row.time_zone, row.locale].iter().all(|t| t.is_empty())
            && row.devices.is_empty()
            && attributes.is_empty();
        row.deleted = u8::from(empty);
        row.attributes = serde_json::Value::Object(attributes).to_string();
        row
    }
}

/// One row of `segment_memberships`: an entry (no exit time) or an exit.
#[derive(Debug, Row, Serialize)]
pub struct SegmentMembershipRow<'a> {
    pub recorded_at: i64,
    pub tenant_id: &'a str,
    pub segment: &'a str,
    pub subject_id: &'a str,
    pub ordinal: u32,
    pub version: &'a str,
    pub entered_at: i64,
    pub exited_at: Option<i64>,
    pub updated_at: i64,
}

impl<'a> SegmentMembershipRow<'a> {
    pub fn new(c: &'a touchpoint_operators::segment::SegmentChange, recorded_at: i64) -> Self {
        SegmentMembershipRow {
            recorded_at,
            tenant_id: &c.subject.tenant_id,
            segment: &c.segment,
            subject_id: &c.subject.subject_id,
            ordinal: c.ordinal,
            version: &c.version,
            entered_at: c.entered_at_ms,
            exited_at: (!c.entered).then_some(c.at_ms),
            updated_at: c.at_ms,
        }
    }
}

/// One row of `deliveries`.
#[derive(Debug, Row, Serialize)]
pub struct DeliveryRow<'a> {
    pub at: i64,
    pub tenant_id: &'a str,
    pub subject_id: &'a str,
    pub channel: &'a str,
    pub status: &'a str,
    pub attempt: i32,
    pub source: &'a str,
    pub delivery_id: &'a str,
    pub idempotency_key: &'a str,
    pub provider_message_id: &'a str,
    pub reason: &'a str,
}

impl<'a> From<&'a touchpoint_schemas::Delivery> for DeliveryRow<'a> {
    fn from(d: &'a touchpoint_schemas::Delivery) -> Self {
        DeliveryRow {
            at: d.at,
            tenant_id: &d.tenant_id,
            subject_id: &d.subject_id,
            channel: d.channel.as_str(),
            status: d.status.as_str(),
            attempt: d.attempt,
            source: match d.source {
                touchpoint_schemas::DeliverySource::Connector => "connector",
                touchpoint_schemas::DeliverySource::Callback => "callback",
                touchpoint_schemas::DeliverySource::Reconciled => "reconciled",
            },
            delivery_id: &d.delivery_id,
            idempotency_key: &d.idempotency_key,
            provider_message_id: d.provider_message_id.as_deref().unwrap_or_default(),
            reason: d.reason.as_deref().unwrap_or_default(),
        }
    }
}
