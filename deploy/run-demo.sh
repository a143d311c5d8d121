#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install and start the local stack, build touchpoint,
# create the topics and tables, produce a realistic demo stream (JSON and Avro, duplicates, malformed
# records of every kind), run the pipeline until it has drained, replay the last hour (nothing is sent
# twice), deliver the allowed sends through the email and push connectors to the local peers, and show
# what happened; then the ingestion API takes a batch over HTTP, answers a dry run, and an email's
# one-click unsubscribe link revokes consent, which the next dry run shows.
#
#   deploy/run-demo.sh [COUNT]      (default 50000 events; the stack keeps running afterwards:
#                                    deploy/scripts/stack.sh stop)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COUNT="${1:-50000}"
CONFIG="$ROOT/pipelines/config/local.yaml"
CLICKHOUSE="${TOUCHPOINT_CLICKHOUSE_URL:-http://127.0.0.1:18123}"
export TOUCHPOINT_CLICKHOUSE_DATABASE="${TOUCHPOINT_CLICKHOUSE_DATABASE:-touchpoint_demo}"
# Quiet hours for the demo: promotional pushes between 02:00 and 06:00 in the subject's zone are held
# until 06:00 (docs/quiet-hours.md). The stream spans a week, so most nights' held pushes are released.
DEMO_QUIET_HOURS='[{id: push-night, channel: push, window: "02:00-06:00"}]'
export TOUCHPOINT_QUIET_HOURS_RULES="${TOUCHPOINT_QUIET_HOURS_RULES:-$DEMO_QUIET_HOURS}"

# A fresh stack: `reset` deletes the broker's log (consent, changelogs, offsets), so every demo run
# starts from the same state.
"$ROOT/deploy/scripts/stack.sh" reset
cargo build --release -p touchpoint
TP="$ROOT/target/release/touchpoint"

# Empty topics, so an empty database too (its rows would otherwise refer to offsets of the previous
# broker's topics).
curl -fsS "$CLICKHOUSE" --data-binary "DROP DATABASE IF EXISTS $TOUCHPOINT_CLICKHOUSE_DATABASE" >/dev/null
"$TP" migrate --config "$CONFIG"
"$TP" topics --config "$CONFIG"
# 1% of the events arrive hours behind the stream (late under the 1 h allowed lateness, once the
# watermark has formed): the local profile processes them flagged `late`.
"$TP" generate --config "$CONFIG" --count "$COUNT" --late-share 0.01
"$TP" run --config "$CONFIG" --workers 2 --until-drained
# Exactly once: re-process the last hour (everything above) with the same idempotency keys; the send
# ledger (processing.guarantee: exactly_once_keys) finds every send already emitted: nothing new goes out.
echo
echo "== touchpoint replay --from 1h: the same input again"
"$TP" replay --config "$CONFIG" --from 1h --workers 2 2>/dev/null | grep -E "^  (in|already stored|sends emitted|already sent|already suppressed) "

q() { curl -fsS "$CLICKHOUSE" --data-binary "$1 FORMAT PrettyCompactMonoBlock"; }
value() { curl -fsS "$CLICKHOUSE" --data-binary "$1 FORMAT TSV"; }
DB="$TOUCHPOINT_CLICKHOUSE_DATABASE"

# The channel connectors deliver the allowed sends to the local peers (an SMTP server and an FCM-shaped
# push API, deploy/peers/); `touchpoint deliveries` loads the outcomes into ClickHouse. They run until
# every allowed send has an outcome, then stop on SIGTERM like any deployment would.
LOGS="$(mktemp -d)"
"$TP" deliveries --config "$CONFIG" 2>"$LOGS/deliveries.log" & DELIVERIES_PID=$!
"$TP" connect --config "$CONFIG" --channel email 2>"$LOGS/connect-email.log" & EMAIL_PID=$!
"$TP" connect --config "$CONFIG" --channel push 2>"$LOGS/connect-push.log" & PUSH_PID=$!
trap 'kill $DELIVERIES_PID $EMAIL_PID $PUSH_PID 2>/dev/null || true' EXIT
ALLOWED=$(value "SELECT count() FROM $DB.decisions FINAL WHERE decision = 'allowed'")
echo "delivering $ALLOWED allowed sends (email and push connectors; logs in $LOGS)..."
for _ in $(seq 1 1200); do
  DONE=$(value "SELECT uniqExact(idempotency_key) FROM $DB.deliveries WHERE status IN ('sent', 'dead_lettered')" || echo 0)
  [ "$DONE" -ge "$ALLOWED" ] && break
  sleep 0.5
done
kill -TERM "$EMAIL_PID" "$PUSH_PID"; wait "$EMAIL_PID" "$PUSH_PID" || true
kill -TERM "$DELIVERIES_PID"; wait "$DELIVERIES_PID" || true
trap - EXIT
echo
echo "== ClickHouse: events by type (${TOUCHPOINT_CLICKHOUSE_DATABASE}.events)"
q "SELECT event_type, count() AS events, uniqExact(subject_id) AS subjects FROM ${TOUCHPOINT_CLICKHOUSE_DATABASE}.events GROUP BY event_type ORDER BY events DESC"
echo
echo "== Event time: events behind the watermark (event_time.late_events: flag)"
q "SELECT late, count() AS events, min(occurred_at) AS first, max(occurred_at) AS last FROM ${TOUCHPOINT_CLICKHOUSE_DATABASE}.events GROUP BY late ORDER BY late"
echo
echo "== ClickHouse: decisions on send intents (${TOUCHPOINT_CLICKHOUSE_DATABASE}.decisions)"
q "SELECT intent_rule, decision, count() AS intents FROM ${TOUCHPOINT_CLICKHOUSE_DATABASE}.decisions FINAL GROUP BY intent_rule, decision ORDER BY intent_rule, decision"
echo
echo "== Why were sends suppressed? (top reasons)"
q "SELECT reason, count() AS intents FROM ${TOUCHPOINT_CLICKHOUSE_DATABASE}.decisions FINAL WHERE decision != 'allowed' GROUP BY reason ORDER BY intents DESC LIMIT 5"
echo
echo "== Profiles: recipients come from them (${TOUCHPOINT_CLICKHOUSE_DATABASE}.profiles; docs/profiles.md)"
q "SELECT count() AS profiles, countIf(email != '') AS with_email, countIf(notEmpty(devices)) AS with_push_device FROM ${TOUCHPOINT_CLICKHOUSE_DATABASE}.profiles FINAL"
echo "Sends with nowhere to go (the profile has no address for the channel; the event's is not used):"
q "SELECT channel, count() AS intents, any(reason) AS reason FROM ${TOUCHPOINT_CLICKHOUSE_DATABASE}.decisions FINAL WHERE decision = 'suppressed_no_recipient' GROUP BY channel ORDER BY channel"
echo
echo "== Quiet hours: pushes held 02:00-06:00 (subject's zone) and decided again at 06:00"
q "SELECT countIf(decision = 'held_quiet_hours') AS held, countIf(released_at > occurred_at AND decision = 'allowed') AS released_sent, countIf(released_at > occurred_at AND decision != 'allowed') AS released_suppressed FROM ${TOUCHPOINT_CLICKHOUSE_DATABASE}.decisions FINAL"
HELD=$(curl -fsS "$CLICKHOUSE" --data-binary "SELECT tenant_id, subject_id FROM ${TOUCHPOINT_CLICKHOUSE_DATABASE}.decisions FINAL WHERE released_at > occurred_at AND decision = 'allowed' ORDER BY subject_id LIMIT 1 FORMAT TSV")
if [ -n "$HELD" ]; then
  echo "-- one held push and its release (touchpoint explain):"
  "$TP" explain --config "$CONFIG" --tenant "$(echo "$HELD" | cut -f1)" --subject "$(echo "$HELD" | cut -f2)" | grep -E "held|released|subject " || true
fi
echo
echo "== Segments: members now, and memberships that ended (${DB}.segment_memberships; docs/segments.md)"
q "SELECT segment, any(version) AS version, countIf(exited_at IS NULL) AS members, countIf(exited_at IS NOT NULL) AS left FROM $DB.segment_memberships FINAL GROUP BY segment ORDER BY segment"
echo "-- entered inactive-3d by time alone (no event of theirs: a timer on the watermark), then the win-back journey:"
q "SELECT to_step AS step, if(position(cause, ' (') > 0, substring(cause, 1, position(cause, ' (') - 1), cause) AS outcome, uniqExact(tenant_id, subject_id) AS subjects FROM $DB.journey_transitions FINAL WHERE journey = 'win-back' GROUP BY step, outcome ORDER BY subjects DESC"
echo
echo "== Journeys: subjects reaching each step (${TOUCHPOINT_CLICKHOUSE_DATABASE}.journey_transitions)"
q "SELECT journey, to_step AS step, uniqExact(tenant_id, subject_id) AS subjects FROM ${TOUCHPOINT_CLICKHOUSE_DATABASE}.journey_transitions FINAL WHERE to_step != '' GROUP BY journey, step ORDER BY journey, subjects DESC"
echo
# Someone whose welcome email and tips email were both allowed, to show decisions and deliveries.
WHO=$(curl -fsS "$CLICKHOUSE" --data-binary "SELECT tenant_id, subject_id FROM ${TOUCHPOINT_CLICKHOUSE_DATABASE}.decisions FINAL WHERE journey = 'welcome-series' AND journey_step = 'tips' AND decision = 'allowed' ORDER BY subject_id LIMIT 1 FORMAT TSV")
if [ -n "$WHO" ]; then
  TENANT=$(echo "$WHO" | cut -f1); SUBJECT=$(echo "$WHO" | cut -f2)
  echo "== touchpoint explain --tenant $TENANT --subject $SUBJECT --journey welcome-series"
  "$TP" explain --config "$CONFIG" --tenant "$TENANT" --subject "$SUBJECT" --journey welcome-series
  echo
fi
echo "== Deliveries: outcomes per channel (${DB}.deliveries)"
q "SELECT channel, status, count() AS messages FROM $DB.deliveries FINAL WHERE source != 'callback' GROUP BY channel, status ORDER BY channel, status"
echo
echo "== From decision to delivery: allowed sends per rule / journey step and what became of them"
q "SELECT if(d.journey = '', d.intent_rule, concat(d.journey, '/', d.journey_step)) AS sent_by, d.channel, countIf(v.status = 'sent') AS sent, countIf(v.status = 'dead_lettered') AS dead_lettered FROM $DB.decisions AS d FINAL JOIN (SELECT idempotency_key, status FROM $DB.deliveries FINAL WHERE status IN ('sent', 'dead_lettered')) AS v USING idempotency_key WHERE d.decision = 'allowed' GROUP BY sent_by, d.channel ORDER BY sent_by"
echo
echo "== The SMTP server received (first message)"
curl -fsS "${TOUCHPOINT_PEERS_URL:-http://127.0.0.1:18090}/_mail/example.com" \
  | python3 -c 'import json,sys; m=json.load(sys.stdin); print("%d emails; first: To %s | Subject %s | Message-ID %s" % (len(m), m[0]["to"], m[0]["subject"], m[0]["message_id"]) if m else "no email")'
echo
echo "== Dead-letter topic: first records (touchpoint tail shows them all)"
# (head closes the pipe early; that is not a failure of the demo)
"$TP" tail --config "$CONFIG" 2>/dev/null | head -3 || true
echo
echo "== The ingestion API (docs/ingest.md): a batch over HTTP, a dry run, a one-click unsubscribe"
PEERS="${TOUCHPOINT_PEERS_URL:-http://127.0.0.1:18090}"
# The unsubscribe link of the first marketing email the SMTP server received, and whom it names.
read -r LINK UTENANT USUBJECT < <(curl -fsS "$PEERS/_mail/example.com" | python3 -c '
import base64, json, sys
for m in json.load(sys.stdin):
    link = (m.get("headers") or {}).get("list-unsubscribe")
    if link:
        url = link.strip().strip("<>").replace("\n", "").replace(" ", "")
        part = url.rsplit("/", 1)[1].split(".")[1]
        who = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        print(url, who["t"], who["s"])
        break
') || true
if [ -z "${LINK:-}" ]; then
  echo "(no marketing email with an unsubscribe link was delivered; skipped)"
else
  DEMO_KEY="tp-demo-$RANDOM$RANDOM"
  export TOUCHPOINT_INGEST_API_KEYS="[{id: demo, tenant: $UTENANT, sha256: $(printf %s "$DEMO_KEY" | sha256sum | cut -d' ' -f1), internal: true}]"
  # The pipeline live (it answers dry runs and applies the unsubscribe), and the API.
  "$TP" run --config "$CONFIG" --workers 2 >"$LOGS/run-live.out" 2>"$LOGS/run-live.log" & RUN_PID=$!
  "$TP" ingest --config "$CONFIG" 2>"$LOGS/ingest.log" & INGEST_PID=$!
  trap 'kill $RUN_PID $INGEST_PID 2>/dev/null || true' EXIT
  API=http://127.0.0.1:18200; INTERNAL=http://127.0.0.1:18201
  NOW=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  for _ in $(seq 1 100); do curl -fsS "$API/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
  echo "-- POST $API/automation/events (two events for $USUBJECT, one malformed):"
  curl -sS -X POST "$API/automation/events" -H "Authorization: Bearer $DEMO_KEY" -H 'content-type: application/json' \
    -d "{\"events\": [{\"event_type\": \"page_viewed\", \"subject_id\": \"$USUBJECT\", \"occurred_at\": \"$NOW\", \"attributes\": {\"path\": \"/pricing\"}},
                      {\"event_type\": \"app_opened\", \"subject_id\": \"$USUBJECT\", \"occurred_at\": \"$NOW\", \"attributes\": {}},
                      {\"event_type\": \"app_opened\", \"occurred_at\": \"yesterday\"}]}"
  echo
  ask() {
    curl -sS -X POST "$INTERNAL/internal/automation/evaluate" -H "Authorization: Bearer $DEMO_KEY" -H 'content-type: application/json' \
      -d "{\"subject_id\": \"$USUBJECT\", \"channel\": \"email\", \"category\": \"promotional\"}"
  }
  decision() { python3 -c 'import json,sys; a=json.load(sys.stdin); print(a.get("decision", a.get("error")), "|", a.get("reason", a.get("message")))'; }
  for _ in $(seq 1 60); do ANSWER=$(ask); case "$ANSWER" in *'"decision"'*) break;; esac; sleep 1; done
  echo "-- dry run, a promotional email to $USUBJECT now: $(echo "$ANSWER" | decision)"
  echo "-- POST $LINK (the email's one-click unsubscribe):"
  curl -sS -X POST "$LINK" -d 'List-Unsubscribe=One-Click'; echo
  for _ in $(seq 1 50); do ANSWER=$(ask); case "$ANSWER" in *suppressed_consent*) break;; esac; sleep 0.2; done
  echo "-- dry run again: $(echo "$ANSWER" | decision)"
  kill -TERM "$INGEST_PID" "$RUN_PID"; wait "$INGEST_PID" "$RUN_PID" || true
  trap - EXIT
fi
echo
echo "Try next:"
echo "  curl $CLICKHOUSE --data-binary \"SELECT toDate(occurred_at) AS day, event_type, count() FROM ${TOUCHPOINT_CLICKHOUSE_DATABASE}.events GROUP BY day, event_type ORDER BY day, event_type FORMAT PrettyCompact\""
echo "  curl $CLICKHOUSE --data-binary \"SELECT occurred_at, intent_rule, decision, reason FROM ${TOUCHPOINT_CLICKHOUSE_DATABASE}.decisions FINAL WHERE subject_id = 'user-42' ORDER BY occurred_at FORMAT PrettyCompact\""
echo "  $TP tail --config $CONFIG --topic connector.push.dlq | head      # bounced pushes with their reason"
echo "  curl $CLICKHOUSE --data-binary \"SELECT at, channel, status, source, reason FROM ${TOUCHPOINT_CLICKHOUSE_DATABASE}.deliveries FINAL WHERE subject_id = 'user-42' ORDER BY at FORMAT PrettyCompact\""
