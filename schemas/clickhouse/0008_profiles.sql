-- Subject profiles as the pipeline holds them (merged from marketing.profiles and profile update events,
-- newest wins per field): one row per subject and change.
--
-- updated_at: the newest time of any field (or of the tombstone that forgot the subject); the version.
-- devices:    active push device tokens, the most recently set first.
-- attributes: the custom attributes, a JSON object.
-- deleted:    1 when a tombstone forgot the subject (nothing set after it remains).
-- ReplacingMergeTree(updated_at, deleted): the newest row per subject wins, and FINAL leaves forgotten
--   subjects out; query with FINAL for the current profiles.
CREATE TABLE IF NOT EXISTS profiles
(
    recorded_at  DateTime64(3, 'UTC'),
    updated_at   DateTime64(3, 'UTC'),
    tenant_id    LowCardinality(String),
    subject_id   String,
    email        String,
    phone        String,
    devices      Array(String),
    time_zone    LowCardinality(String),
    locale       LowCardinality(String),
    attributes   String,
    deleted      UInt8
)
ENGINE = ReplacingMergeTree(updated_at, deleted)
ORDER BY (tenant_id, subject_id)
