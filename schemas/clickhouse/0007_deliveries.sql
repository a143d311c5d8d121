-- One row per delivery outcome from the channel connectors (`marketing.deliveries`) and provider
-- callbacks: sent, delivered, bounced, failed, retrying (one per failed attempt), dead_lettered.
--
-- Joins `decisions` on idempotency_key: "what did we decide, and what happened to it".
-- ORDER BY (tenant_id, idempotency_key, status, attempt, source): a delivery event produced again
--   (a connector restarted before committing its offset re-emits outcomes it had already made durable)
--   replaces its earlier row; query with FINAL for exact counts.
-- non_replicated_deduplication_window: a batch the loader inserts again after a crash (same
--   insert_deduplication_token) is dropped at insert time.
CREATE TABLE IF NOT EXISTS deliveries
(
    at                   DateTime64(3, 'UTC'),
    tenant_id            LowCardinality(String),
    subject_id           String,
    channel              LowCardinality(String),
    status               LowCardinality(String),
    attempt              Int32,
    source               LowCardinality(String),
    delivery_id          String,
    idempotency_key      String,
    provider_message_id  String,
    reason               String
)
ENGINE = ReplacingMergeTree(at)
ORDER BY (tenant_id, idempotency_key, status, attempt, source)
SETTINGS non_replicated_deduplication_window = 1000
