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
        }
    }
}

/// The deduplication token of a batch: a hash of the source positions it holds. The same batch,
/// retried, carries the same token, and ClickHouse stores it once.
pub fn batch_token(sink: &str, events: &[NormalizedEvent]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(sink.as_bytes());
    for e in events {
        h.update(e.position.topic.as_bytes());
        h.update(&e.position.partition.to_le_bytes());
        h.update(&e.position.offset.to_le_bytes());
    }
    format!("{sink}-{:032x}", h.digest128())
}
