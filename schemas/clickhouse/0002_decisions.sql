-- One row per send intent: what the guardrails decided and why, with the rule-set versions that decided.
--
-- decision: allowed | suppressed_consent | suppressed_cap | suppressed_ledger_full | suppressed_no_recipient |
--           held_quiet_hours | suppressed_quiet_hours
-- reason:   human text ("consent denied", "cap promo-daily: 2 of 2 per calendar day", ...)
-- ORDER BY (tenant_id, subject_id, occurred_at): analysts mostly ask "what happened to subject X" and
--   "why did X not get message Y"; per-decision aggregates scan the LowCardinality columns.
-- ReplacingMergeTree keyed by the intent's idempotency key (inside the sorting key): an intent decided
--   again after a crash replaces its earlier row instead of adding one; query with FINAL for exact counts.
--   No PARTITION BY: replacement only happens within a partition, and a decision made again must meet
--   its earlier row whenever it is made.
CREATE TABLE IF NOT EXISTS decisions
(
    decided_at       DateTime64(3, 'UTC'),
    occurred_at      DateTime64(3, 'UTC'),
    tenant_id        LowCardinality(String),
    subject_id       String,
    event_id         String,
    event_type       LowCardinality(String),
    intent_rule      LowCardinality(String),
    channel          LowCardinality(String),
    purpose          LowCardinality(String),
    category         LowCardinality(String),
    template         LowCardinality(String),
    priority         Int32,
    decision         LowCardinality(String),
    reason           String,
    consent_status   LowCardinality(String),
    cap_rule         LowCardinality(String),
    cap_count        UInt32,
    cap_limit        UInt32,
    cap_window       LowCardinality(String),
    intents_version  LowCardinality(String),
    caps_version     LowCardinality(String),
    idempotency_key  String,
    kafka_partition  UInt32,
    kafka_offset     UInt64
)
ENGINE = ReplacingMergeTree(decided_at)
ORDER BY (tenant_id, subject_id, occurred_at, idempotency_key)
