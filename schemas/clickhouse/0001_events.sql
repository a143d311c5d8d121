-- Normalized events: one row per unique event (by event_id), written by the pipeline's ClickHouse sink.
--
-- ORDER BY (tenant_id, event_type, toDate(occurred_at), subject_id, occurred_at):
--   analysts mostly ask "how many X happened per day" and "what did subject S do", inside one tenant.
--   The first is answered from the primary key prefix (tenant, type, day); the second from the
--   bloom-filter skip index on subject_id plus the key's subject_id column within a type.
-- PARTITION BY the month of ingestion, not of occurred_at: a producer with a broken clock must never be
--   able to make an insert touch hundreds of partitions (which ClickHouse refuses), so inserts never fail
--   because of the data. Retention can still drop old months.
-- non_replicated_deduplication_window: enables insert_deduplication_token on this (non-replicated)
--   table, so a retried batch is stored once (see docs/time-and-delivery.md).
CREATE TABLE IF NOT EXISTS events
(
    event_id        String,
    event_type      LowCardinality(String),
    occurred_at     DateTime64(3, 'UTC'),
    subject_id      String,
    tenant_id       LowCardinality(String),
    source          LowCardinality(String),
    attributes      String CODEC(ZSTD(3)) COMMENT 'canonical JSON object; query with JSONExtract*(attributes, key)',
    ingested_at     DateTime64(3, 'UTC'),
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    INDEX subject_bf subject_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX offset_mm kafka_offset TYPE minmax GRANULARITY 1
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ingested_at)
ORDER BY (tenant_id, event_type, toDate(occurred_at), subject_id, occurred_at)
SETTINGS non_replicated_deduplication_window = 1000
