-- Journeys: every movement of a subject through a journey, with the version it ran on.
--
-- from_step: ''  when the subject enters; to_step: '' when it leaves.
-- cause:     trigger:<event type> | sent | suppressed (<decision reason>) | condition:true|false | split:<bucket><<bound> |
--            wait elapsed | event:<event type> | timeout | goal:<event type> | exit | sent; end |
--            migrated from <version> | version unavailable
-- event_time: the event time of the movement (the event's, or the timer's due time);
-- recorded_at: when the pipeline wrote it (processing time).
-- ORDER BY (tenant_id, subject_id, journey, event_time, seq, ...): analysts ask "what path did subject X take
--   through journey J"; funnels per step scan the LowCardinality step columns.
-- ReplacingMergeTree: a movement made again after a crash (same subject, journey, time, steps and cause)
--   replaces its earlier row; use FINAL for exact counts.
CREATE TABLE IF NOT EXISTS journey_transitions
(
    recorded_at      DateTime64(3, 'UTC'),
    event_time       DateTime64(3, 'UTC'),
    tenant_id        LowCardinality(String),
    subject_id       String,
    journey          LowCardinality(String),
    journey_version  LowCardinality(String),
    from_step        LowCardinality(String),
    to_step          LowCardinality(String),
    cause            LowCardinality(String),
    event_id         String,
    seq              UInt32 COMMENT 'orders the movements of one stay in a journey (several share an event time)'
)
ENGINE = ReplacingMergeTree(recorded_at)
ORDER BY (tenant_id, subject_id, journey, event_time, seq, from_step, to_step, cause)
