-- Event time: `late` marks an event that arrived behind the watermark (its partition's newest event time
-- minus the allowed lateness, slowest partition first) and was processed anyway (`event_time.late_events:
-- flag`). With `late_events: route` late events go to the late-events topic instead and never land here.
-- See docs/guardrails.md ("Event time").
ALTER TABLE events ADD COLUMN IF NOT EXISTS late Bool DEFAULT false
