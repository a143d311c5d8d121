-- Segment memberships: one row per subject and membership of a segment (docs/segments.md). An entry
-- writes the row with exited_at NULL; the exit writes it again with exited_at set, and the replacing
-- engine keeps the later one.
--
-- ordinal:    which of the subject's memberships of the segment (1 for the first): with the subject and
--             the segment, the row's identity (an entry evaluated again after a restart replaces it).
-- version:    the segment's version that admitted the subject (the entry row) or saw it leave (the exit).
-- updated_at: the event time of the row's change (entry or exit), the replacing version.
-- Current members: SELECT ... FROM segment_memberships FINAL WHERE segment = 'x' AND exited_at IS NULL.
CREATE TABLE IF NOT EXISTS segment_memberships
(
    recorded_at  DateTime64(3, 'UTC'),
    tenant_id    LowCardinality(String),
    segment      LowCardinality(String),
    subject_id   String,
    ordinal      UInt32,
    version      LowCardinality(String),
    entered_at   DateTime64(3, 'UTC'),
    exited_at    Nullable(DateTime64(3, 'UTC')),
    updated_at   DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (tenant_id, segment, subject_id, ordinal)
