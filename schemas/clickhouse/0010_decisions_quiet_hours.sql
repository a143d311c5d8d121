-- Quiet hours: a held send has two decision rows (or more, if it is held again): `held_quiet_hours` at its
-- event, then its final decision at the end of the window. `released_at` (the instant a held send was
-- decided again; 1970 for a decision at the triggering event) joins the sorting key, so that the rows of one
-- idempotency key do not replace each other; `held_until` says when a held send is decided again.
ALTER TABLE decisions
    ADD COLUMN released_at DateTime64(3, 'UTC'),
    ADD COLUMN held_until DateTime64(3, 'UTC'),
    MODIFY ORDER BY (tenant_id, subject_id, occurred_at, idempotency_key, released_at)
