-- Event time: `late` marks a decision made for a late event (processed under `event_time.late_events:
-- flag`), so analysts can tell decisions taken on out-of-order data apart. See docs/guardrails.md.
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS late Bool DEFAULT false
