-- Journeys: which journey, version and step made a send intent (empty for rule-driven intents), so
-- "why did subject X not get message Y" can be answered per journey step. See docs/journeys.md.
ALTER TABLE decisions
    ADD COLUMN IF NOT EXISTS journey LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS journey_version LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS journey_step LowCardinality(String) DEFAULT ''
