-- Where each decision's recipient came from: profile | event (the pipeline file let the event choose) |
-- not_needed (a webhook to the connector's URL) | missing (suppressed_no_recipient). The address itself
-- is not stored here (it is in the profile and the connector topic).
ALTER TABLE decisions ADD COLUMN IF NOT EXISTS recipient_source LowCardinality(String) DEFAULT ''
