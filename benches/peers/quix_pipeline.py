#!/usr/bin/env python3
"""Quix Streams peer of Touchpoint's pipeline, for the end-to-end benchmark (benches/peers/README.md).

Same broker, same input topic, same logic as Touchpoint's stages, simplified where the README says:

    events -> decode + validate -+-> rejected ----------------------------------------> <prefix>.dlq
                                 +-> dedupe (state) -> journey step (state)
                                     -> consent (global table) -> daily cap (state) -> <prefix>.sends

Runs until it has consumed --count input messages, stops the application cleanly (final checkpoint:
producer flushed, state flushed, offsets committed) and prints ONE JSON line with the counts and the
rate on stdout. Everything else goes to stderr. Exit status: 0 done, 1 error, 2 stalled.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import logging
import math
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from datetime import datetime, timedelta, timezone

# quixstreams imports authlib, whose httpx integration warns about its own deprecation on import.
warnings.filterwarnings("ignore", message="The httpx module is deprecated")

# ruff: noqa: E402  (third-party imports after the warnings filter)
import fastavro
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from quixstreams import Application, State, message_context
from quixstreams.models import TopicConfig

log = logging.getLogger("quix_peer")

# ---------------------------------------------------------------------------------------------------
# Configuration mirrored from pipelines/config/local.yaml (normalize, consent, caps) and the journeys in
# pipelines/journeys. Kept as constants: the peer runs one fixed profile, the benchmark's.
# ---------------------------------------------------------------------------------------------------

MAX_FUTURE_SKEW_MS = 24 * 3_600_000  # normalize.max_future_skew: 24h
MAX_SUBJECT_ID_LEN = 256  # normalize.max_subject_id_len
DEFAULT_TENANT = "default"
DEFAULT_SOURCE = "unknown"
KNOWN_EVENT_TYPES = {
    "page_viewed",
    "email_opened",
    "email_clicked",
    "cart_updated",
    "order_completed",
    "signed_up",
    "app_opened",
    "profile_updated",
}
EVENT_TYPE_ALIASES = {
    "Email Opened": "email_opened",
    "Opened Email": "email_opened",
    "Email Clicked": "email_clicked",
    "Page View": "page_viewed",
    "Cart Updated": "cart_updated",
    "Signed Up": "signed_up",
    "App Opened": "app_opened",
    "Profile Updated": "profile_updated",
    "Checkout Completed": "order_completed",
    "Order Placed": "order_completed",
}
DEDUPE_TTL = timedelta(hours=24)  # dedupe.ttl

# Event times accepted (ClickHouse DateTime64(3) range, as operators/src/normalize/canonical.rs).
MIN_EVENT_TIME_MS = -2_208_988_800_000  # 1900-01-01
MAX_EVENT_TIME_MS = 10_413_792_000_000  # 2300-01-01
# Epoch numbers below this magnitude are seconds, above it milliseconds.
SECONDS_MILLIS_BOUNDARY = 1e11

# The one journey step and the one rule the peer runs (see README: what differs).
#   signed_up   -> welcome-series/welcome: email "welcome", category onboarding; the journey's
#                  `reentry: once` means a subject gets it at most once, ever.
#   cart_updated -> cart reminder: email "cart_reminder", category promotional, on every cart update
#                  (Touchpoint's abandoned-cart journey waits 4 h for an order first).
JOURNEY_STEPS = {
    "signed_up": ("welcome-series", "welcome", "email", "onboarding", "welcome", True),
    "cart_updated": ("abandoned-cart", "reminder", "email", "promotional", "cart_reminder", False),
}
JOURNEY_VERSION = "v1"
# caps: email-promotional-daily: at most 2 per subject, channel and category per calendar day (UTC).
CAP_CHANNEL, CAP_CATEGORY, CAP_LIMIT = "email", "promotional", 2
DAY_MS = 86_400_000
# A counter is needed until its day can no longer receive events; events lag by minutes here.
CAP_STATE_TTL = timedelta(days=2)


class Rejected(Exception):
    """A record the pipeline refuses: `reason` is Touchpoint's stable code (schemas/src/reject.rs)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------------------------------------------
# decode: JSON, or Avro in the Confluent wire format (operators/src/decode.rs)
# ---------------------------------------------------------------------------------------------------


class RegistryUnavailable(Exception):
    """The registry could not be asked: the record is not at fault, so it is never dead-lettered."""


class SchemaRegistry:
    """Writer schemas by id, cached. Only a 404 makes an id unknown (like Touchpoint's RegistryClient,
    404s are not cached: an id can be registered later)."""

    def __init__(self, url: str):
        parsed = urllib.parse.urlsplit(url)
        self._host, self._port = parsed.hostname, parsed.port or 80
        self._base = parsed.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None
        self._cache: dict[int, object] = {}

    def schema(self, schema_id: int):
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        status, body = self._get(f"{self._base}/schemas/ids/{schema_id}")
        if status == 404:
            raise Rejected("unknown_schema", f"Avro schema id {schema_id} is not registered in the schema registry")
        if status != 200:
            raise RegistryUnavailable(f"GET /schemas/ids/{schema_id}: HTTP {status}: {body[:200]!r}")
        try:
            parsed = fastavro.parse_schema(orjson.loads(orjson.loads(body)["schema"]))
        except Exception as e:  # the registry answered with something that is not an Avro schema
            raise Rejected("unknown_schema", f"schema id {schema_id} is not a valid Avro schema: {e}") from e
        self._cache[schema_id] = parsed
        return parsed

    def _get(self, path: str) -> tuple[int, bytes]:
        # One kept-alive connection: unknown ids are asked again on every record (as Touchpoint does),
        # so a fresh TCP connection per request would dominate their cost.
        for attempt in range(3):
            try:
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self._host, self._port, timeout=10)
                self._conn.request("GET", path)
                response = self._conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException) as e:
                self._conn = None
                if attempt == 2:
                    raise RegistryUnavailable(f"GET {path}: {e}") from e
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")


def decode(payload: bytes | None, registry: SchemaRegistry) -> dict:
    if not payload:
        raise Rejected("malformed_payload", "empty payload")
    if payload[0] == 0:
        if len(payload) < 5:
            raise Rejected("malformed_payload", f"Confluent Avro payload of {len(payload)} bytes has no 5-byte header")
        schema_id = int.from_bytes(payload[1:5], "big")
        schema = registry.schema(schema_id)
        body = io.BytesIO(payload[5:])
        try:
            record = fastavro.schemaless_reader(body, schema)
        except Exception as e:  # truncated or corrupt datum: fastavro raises EOFError, ValueError, ...
            raise Rejected("malformed_payload", f"Avro datum does not decode with schema id {schema_id}: {e!r}") from e
        trailing = len(payload) - 5 - body.tell()
        if trailing:
            raise Rejected("malformed_payload", f"{trailing} trailing bytes after the Avro datum")
        if not isinstance(record, dict):
            raise Rejected("malformed_payload", f"Avro schema id {schema_id} is not a record")
        return record
    try:
        fields = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise Rejected("malformed_payload", f"payload is neither JSON nor Confluent Avro: {e}") from e
    if not isinstance(fields, dict):
        raise Rejected("malformed_payload", f"JSON payload must be an object, got {type(fields).__name__}")
    return fields


# ---------------------------------------------------------------------------------------------------
# validate / canonicalize (operators/src/normalize/): same checks, same order, same reason codes
# ---------------------------------------------------------------------------------------------------


def snake_case(raw: str) -> str:
    """snake_case of a type name: 'Email Opened', 'emailOpened', 'email-opened' -> 'email_opened'."""
    chars = raw.strip()
    out: list[str] = []
    pending_sep = False
    for i, c in enumerate(chars):
        if not c.isalnum():
            pending_sep = bool(out)
            continue
        if c.isupper() and i > 0 and out:
            prev = chars[i - 1]
            next_is_lower = i + 1 < len(chars) and chars[i + 1].islower()
            if prev.islower() or "0" <= prev <= "9" or (prev.isupper() and next_is_lower):
                pending_sep = True
        if pending_sep and out and out[-1] != "_":
            out.append("_")
        pending_sep = False
        out.append(c.lower())
    return "".join(out)


ALIASES = {snake_case(k): snake_case(v) for k, v in EVENT_TYPE_ALIASES.items()}
# Producers use a handful of spellings: remember each one's outcome instead of snake_casing every
# record. Bounded, so a stream of random types cannot grow it without limit.
_event_type_memo: dict[str, tuple[str | None, str | None]] = {}


def canonical_event_type(raw: str) -> str:
    memo = _event_type_memo.get(raw)
    if memo is None:
        snake = snake_case(raw)
        canonical = ALIASES.get(snake, snake)
        if not snake:
            memo = (None, "invalid_event_type")
        elif canonical not in KNOWN_EVENT_TYPES:
            memo = (None, "unknown_event_type")
        else:
            memo = (canonical, None)
        if len(_event_type_memo) < 4096:
            _event_type_memo[raw] = memo
    canonical, reason = memo
    if reason is not None:
        raise Rejected(reason, f"event_type {raw!r} is not a known event type")
    return canonical


# RFC 3339 date-time (what chrono's parse_from_rfc3339 accepts); fromisoformat alone accepts more.
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z")


def _epoch_number_to_ms(f: float) -> int:
    if not math.isfinite(f):
        raise ValueError("timestamp is not a finite number")
    ms = f * 1000.0 if abs(f) < SECONDS_MILLIS_BOUNDARY else f
    if abs(ms) > 1e15:
        raise ValueError(f"{f} is out of range for epoch seconds or milliseconds")
    return int(math.copysign(math.floor(abs(ms) + 0.5), ms))  # Rust's f64::round: half away from zero


def parse_event_time(value) -> int:
    """RFC 3339 with any offset, or epoch seconds / milliseconds (number or numeric string) -> UTC ms."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a string or a number, got {type(value).__name__}")
    if isinstance(value, int):
        ms = _epoch_number_to_ms(float(value)) if abs(value) < SECONDS_MILLIS_BOUNDARY else value
        if abs(ms) > 1e15:
            raise ValueError(f"{value} is out of range for epoch seconds or milliseconds")
    elif isinstance(value, float):
        ms = _epoch_number_to_ms(value)
    else:
        s = value.strip()
        if _RFC3339.match(s):
            if s[-1] in "zZ":  # fromisoformat takes "Z" but not "z"
                s = s[:-1] + "+00:00"
            since_epoch = datetime.fromisoformat(s) - _EPOCH
            # Integer arithmetic: a float timestamp() * 1000 can land 1 ms short.
            ms = since_epoch.days * DAY_MS + since_epoch.seconds * 1000 + since_epoch.microseconds // 1000
        else:
            try:
                if "_" in s:  # Python's float() takes "1_000"; Rust's parser does not
                    raise ValueError
                ms = _epoch_number_to_ms(float(s))
            except ValueError:
                raise ValueError(f"{s!r} is neither RFC 3339 nor epoch seconds/milliseconds") from None
    if not MIN_EVENT_TIME_MS <= ms < MAX_EVENT_TIME_MS:
        raise ValueError(f"{ms} ms since the epoch is outside 1900..2300")
    return ms


_WHITESPACE = re.compile(r"\s")


def is_email_like(s: str) -> bool:
    s = s.strip()
    if (len(s) if s.isascii() else len(s.encode())) > 254 or _WHITESPACE.search(s):
        return False
    parts = s.split("@")
    if len(parts) != 2:
        return False
    local, domain = parts
    return bool(local) and "." in domain and not domain.startswith(".") and not domain.endswith(".")


def lowercase_emails(value):
    """Email-like strings anywhere in the attributes are trimmed and lower-cased."""
    if isinstance(value, str):
        return value.strip().lower() if "@" in value and is_email_like(value) else value
    if isinstance(value, dict):
        return {k: lowercase_emails(v) for k, v in value.items()}
    if isinstance(value, list):
        return [lowercase_emails(v) for v in value]
    return value


def derived_event_id(tenant: str, event_type: str, subject: str, occurred_at_ms: int, attributes_json: bytes) -> str:
    """An id from the canonical content, so the same id-less event sent twice is deduplicated.
    Touchpoint hashes the same fields with xxh3-128; a peer only needs the same property."""
    h = hashlib.blake2b(digest_size=16)
    for part in (tenant, event_type, subject):
        h.update(part.encode())
        h.update(b"\0")
    h.update(occurred_at_ms.to_bytes(8, "little", signed=True))
    h.update(attributes_json)
    return "tp-" + h.hexdigest()


def _required(fields: dict, name: str):
    value = fields.get(name)
    if value is None:
        raise Rejected("missing_field", f"required field `{name}` is missing")
    return value


def _optional_string(fields: dict, name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise Rejected("invalid_field_type", f"`{name}` must be a string")


def normalize(fields: dict, now_ms: int) -> dict:
    raw_type = _required(fields, "event_type")
    if not isinstance(raw_type, str):
        raise Rejected("invalid_field_type", "`event_type` must be a string")
    event_type = canonical_event_type(raw_type)

    try:
        occurred_at_ms = parse_event_time(_required(fields, "occurred_at"))
    except ValueError as e:
        raise Rejected("invalid_timestamp", f"occurred_at: {e}") from None
    if occurred_at_ms > now_ms + MAX_FUTURE_SKEW_MS:
        raise Rejected("timestamp_in_future", "occurred_at is further ahead than the allowed clock skew")

    subject = _required(fields, "subject_id")
    if isinstance(subject, str):
        subject = subject.strip()
    elif isinstance(subject, int) and not isinstance(subject, bool):
        subject = str(subject)  # numeric CRM ids: their decimal form is the canonical id
    else:
        raise Rejected("invalid_field_type", "`subject_id` must be a string or an integer")
    if not subject:
        raise Rejected("invalid_subject_id", "`subject_id` is empty")
    if len(subject) > MAX_SUBJECT_ID_LEN:
        raise Rejected("invalid_subject_id", f"`subject_id` has more than {MAX_SUBJECT_ID_LEN} characters")

    attributes = fields.get("attributes")
    if attributes is None:
        raise Rejected("missing_field", "required field `attributes` is missing")
    if not isinstance(attributes, dict):
        raise Rejected("invalid_field_type", "`attributes` must be an object")
    # Canonical attributes (emails lower-cased, keys sorted): Touchpoint stores this text in ClickHouse
    # and hashes it for missing ids, so the peer does the same work per event.
    attributes_json = orjson.dumps(lowercase_emails(attributes), option=orjson.OPT_SORT_KEYS)

    tenant = _optional_string(fields, "tenant_id") or DEFAULT_TENANT
    source = _optional_string(fields, "source") or DEFAULT_SOURCE
    event_id = _optional_string(fields, "event_id") or derived_event_id(
        tenant, event_type, subject, occurred_at_ms, attributes_json
    )
    return {
        "event_id": event_id,
        "event_type": event_type,
        "occurred_at_ms": occurred_at_ms,
        "subject_id": subject,
        "tenant_id": tenant,
        "source": source,
        "attributes_json": attributes_json.decode(),
    }


# ---------------------------------------------------------------------------------------------------
# consent: a global table loaded from the compacted consent topic before processing starts
# (operators/src/consent.rs: newest updated_at wins, a tie goes to the more restrictive status,
# a tombstone forgets the subject; marketing without a record is denied)
# ---------------------------------------------------------------------------------------------------

CHANNELS = {"email", "sms", "push", "webhook"}
PURPOSES = {"marketing", "transactional"}
STATUS_RANK = {"granted": 0, "pending": 1, "denied": 2}


class ConsentTable:
    def __init__(self):
        # (tenant, subject) -> {(channel, purpose): (updated_at_ms, status rank)}
        self.subjects: dict[tuple[str, str], dict[tuple[str, str], tuple[int, int]]] = {}
        self.records = 0
        self.invalid = 0

    def apply(self, key: bytes | None, value: bytes | None, registry: SchemaRegistry) -> None:
        self.records += 1
        if value is None:  # tombstone, key `tenant/subject` (or `subject` for the default tenant)
            tenant, slash, subject = (key or b"").decode(errors="replace").partition("/")
            if not slash:
                tenant, subject = DEFAULT_TENANT, tenant
            self.subjects.pop((tenant.strip(), subject.strip()), None)
            return
        try:
            fields = decode(value, registry)
            subject = fields["subject_id"].strip()
            tenant = (fields.get("tenant_id") or "").strip() or DEFAULT_TENANT
            channel = fields["channel"].strip().lower()
            purpose = fields["purpose"].strip().lower()
            rank = STATUS_RANK[fields["status"].strip().lower()]
            updated_at_ms = parse_event_time(fields["updated_at"])
            if not subject or channel not in CHANNELS or purpose not in PURPOSES:
                raise ValueError("bad subject, channel or purpose")
        except (Rejected, KeyError, AttributeError, TypeError, ValueError):
            self.invalid += 1  # Touchpoint dead-letters these to the consent DLQ; the peer only counts
            return
        entries = self.subjects.setdefault((tenant, subject), {})
        if (updated_at_ms, rank) >= entries.get((channel, purpose), (updated_at_ms, -1)):
            entries[(channel, purpose)] = (updated_at_ms, rank)

    def granted(self, tenant: str, subject: str, channel: str, purpose: str = "marketing") -> bool:
        entry = self.subjects.get((tenant, subject), {}).get((channel, purpose))
        if entry is None:
            return purpose == "transactional"  # consent.when_missing: marketing deny, transactional allow
        return entry[1] == STATUS_RANK["granted"]


def load_consent(args, registry: SchemaRegistry) -> ConsentTable:
    """Reads the consent topic from the beginning with a plain consumer (no group membership).

    The end is the record count the harness passes (--consent-count); without it, the end of every
    partition as reported by the broker's Fetch responses (partition EOF)."""
    table = ConsentTable()
    consumer = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": f"{args.group}.consent-loader",  # required by the client; assign() joins no group
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = consumer.list_topics(args.consent, timeout=30).topics.get(args.consent)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise RuntimeError(f"consent topic {args.consent!r} not found: {metadata and metadata.error}")
        consumer.assign([TopicPartition(args.consent, p, OFFSET_BEGINNING) for p in metadata.partitions])
        at_end: set[int] = set()
        started = last_record = time.monotonic()
        while True:
            if args.consent_count is not None and table.records >= args.consent_count:
                break
            if args.consent_count is None and len(at_end) == len(metadata.partitions):
                break
            if time.monotonic() - last_record > args.stall_seconds:
                raise RuntimeError(
                    f"consent topic stalled: {table.records} records read"
                    + (f" of {args.consent_count}" if args.consent_count is not None else "")
                    + f", nothing new for {args.stall_seconds:.0f} s"
                )
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition())
                        continue
                    raise KafkaException(err)
                at_end.discard(msg.partition())
                last_record = time.monotonic()
                table.apply(msg.key(), msg.value(), registry)
        log.info(
            "consent table: %d records (%d invalid), %d subjects, loaded in %.2f s",
            table.records,
            table.invalid,
            len(table.subjects),
            time.monotonic() - started,
        )
    finally:
        consumer.close()
    return table


# ---------------------------------------------------------------------------------------------------
# the run: counters, the stop-by-count, the stall watchdog
# ---------------------------------------------------------------------------------------------------


class Run:
    def __init__(self, args):
        self.args = args
        self.started = time.monotonic()
        self.counts = dict(valid=0, rejected=0, duplicates=0, sends=0, capped=0, no_consent=0)
        self.consumed = 0
        self.first_at: float | None = None
        self.nth_at: float | None = None
        self.last_progress = time.monotonic()
        self.stalled: str | None = None
        self.app: Application | None = None

    def on_message_processed(self, topic: str, partition: int, offset: int) -> None:
        # Called by Quix after every input message went through the whole dataframe. Counting input
        # messages, not offsets (offsets of a transactional topic include commit markers).
        now = time.monotonic()
        self.last_progress = now
        if self.first_at is None:
            self.first_at = now
        self.consumed += 1
        if self.consumed == self.args.count:
            self.nth_at = now
            self.app.stop()  # leaves the loop, then the final checkpoint commits everything

    def watch(self) -> None:
        """Stops the app when input stops arriving: a run that cannot finish must fail, not hang."""
        while self.nth_at is None and self.stalled is None:
            time.sleep(1.0)
            idle = time.monotonic() - self.last_progress
            limit = self.args.stall_seconds if self.first_at is not None else self.args.startup_seconds
            if idle > limit and self.nth_at is None:
                self.stalled = f"stalled: {self.consumed} of {self.args.count} input messages, nothing for {idle:.0f} s"
                log.error(self.stalled)
                self.app.stop(fail=True)


# ---------------------------------------------------------------------------------------------------
# the dataframe
# ---------------------------------------------------------------------------------------------------


def build(app: Application, args, run: Run, registry: SchemaRegistry, consent: ConsentTable | None) -> None:
    # Input created by `touchpoint topics` (explicit configs): Quix only inspects it. Its retention.ms
    # is what Quix derives the changelog topic's config from.
    events_topic = app.topic(args.input, key_deserializer="bytes", value_deserializer="bytes")
    partitions = events_topic.broker_config.num_partitions
    events = app.dataframe(events_topic)
    if args.trivial:
        return  # the baseline: Quix consuming and committing, no processing at all

    if "retention.ms" not in events_topic.broker_config.extra_config:
        # Quix derives the changelog topic's config from it: registering the first stateful step fails
        # with KeyError('retention.ms') in TopicManager.derive_topic_config (a broker that reports no
        # configs for a topic created without any, as the stand-in broker of earlier versions did).
        raise RuntimeError(
            f"topic {args.input}: the broker reports no retention.ms (DescribeConfigs is empty); "
            "create it with explicit configs, e.g. `touchpoint topics`"
        )

    # Outputs are created by Quix; with explicit configs, so that DescribeConfigs answers for them.
    def output(name: str):
        retention = {"retention.ms": str(7 * DAY_MS)}
        config = TopicConfig(num_partitions=partitions, replication_factor=1, extra_config=retention)
        return app.topic(name, key_serializer="bytes", value_serializer="json", config=config)

    sends_topic = output(f"{args.output_prefix}.sends")
    dlq_topic = output(f"{args.output_prefix}.dlq")
    counts = run.counts
    # Quix's state TTL (event time = the record's timestamp, the produce time here) bounds the state as
    # Touchpoint's expiries do. Nothing expires within a benchmark run; --no-ttl measures without it.
    dedupe_ttl, cap_ttl = (None, None) if args.no_ttl else (DEDUPE_TTL, CAP_STATE_TTL)

    # 1-2. decode + validate/canonicalize: a normalized event, or a rejection.
    def check(payload: bytes | None) -> dict:
        try:
            return normalize(decode(payload, registry), int(time.time() * 1000))
        except Rejected as r:
            return {"rejected": r.reason, "message": r.message}

    checked = events.apply(check)

    # Branch: rejections to the dead-letter topic, with where they came from.
    def dead_letter(rejection: dict) -> dict:
        counts["rejected"] += 1
        ctx = message_context()
        return {
            "reason": rejection["rejected"],
            "message": rejection["message"],
            "topic": ctx.topic,
            "partition": ctx.partition,
            "offset": ctx.offset,
        }

    checked.filter(lambda v: "rejected" in v).apply(dead_letter).to_topic(dlq_topic)

    # 3. dedupe by (tenant, event_id) in the state of the message key. Correct because a repeat is a
    # resend with the same key (the subject); Touchpoint routes by the (tenant, event_id) itself.
    def first_seen(event: dict, state: State) -> bool:
        key = f"dedupe\0{event['tenant_id']}\0{event['event_id']}"
        if state.get(key) is not None:
            counts["duplicates"] += 1
            return False
        state.set(key, 1, ttl=dedupe_ttl)
        counts["valid"] += 1
        return True

    valid = checked.filter(lambda v: "rejected" not in v).filter(first_seen, stateful=True)

    # 5. the journey step an event triggers (zero or one send intent); `reentry: once` in state.
    def journey(event: dict, state: State) -> list[dict]:
        journey_id, step_id, channel, category, template, once = JOURNEY_STEPS[event["event_type"]]
        tenant, subject = event["tenant_id"], event["subject_id"]
        if once:
            entered = f"journey\0{journey_id}\0{tenant}\0{subject}"
            if state.get(entered) is not None:
                return []
            state.set(entered, 1)
        # Deterministic: a replayed event yields the same key, so connectors can drop the repeat.
        parts = (tenant, subject, f"{journey_id}/{step_id}", JOURNEY_VERSION, event["event_id"])
        key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]
        intent = {
            "idempotency_key": f"tpk-{key}",
            "journey": journey_id,
            "step": step_id,
            "tenant_id": tenant,
            "subject_id": subject,
            "channel": channel,
            "category": category,
            "template": template,
            "event_id": event["event_id"],
            "occurred_at_ms": event["occurred_at_ms"],
        }
        return [intent]

    # Only the trigger types reach the stateful step: each stateful call opens the key's state.
    intents = valid.filter(lambda e: e["event_type"] in JOURNEY_STEPS).apply(journey, stateful=True, expand=True)

    # 4. consent join against the global table: only "granted" lets a marketing send through.
    def consented(intent: dict) -> bool:
        if consent.granted(intent["tenant_id"], intent["subject_id"], intent["channel"]):
            return True
        counts["no_consent"] += 1
        return False

    # 6. daily frequency cap, counted on sends that passed consent, per UTC day of the event time.
    def under_cap(intent: dict, state: State) -> bool:
        if intent["channel"] != CAP_CHANNEL or intent["category"] != CAP_CATEGORY:
            return True
        day = intent["occurred_at_ms"] // DAY_MS
        key = f"cap\0{intent['tenant_id']}\0{intent['subject_id']}\0{CAP_CHANNEL}\0{CAP_CATEGORY}\0{day}"
        sent = state.get(key, 0)
        if sent >= CAP_LIMIT:
            counts["capped"] += 1
            return False
        state.set(key, sent + 1, ttl=cap_ttl)
        return True

    # 7. send: the connector-ready message, keyed by subject.
    def send(intent: dict) -> dict:
        counts["sends"] += 1
        ms = intent.pop("occurred_at_ms")
        # Integer seconds, then the milliseconds: a float ms / 1000 can print 1 ms short.
        at = datetime.fromtimestamp(ms // 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        intent["occurred_at"] = f"{at}.{ms % 1000:03d}Z"
        return intent

    intents.filter(consented).filter(under_cap, stateful=True).apply(send).to_topic(sends_topic)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--brokers", required=True)
    p.add_argument("--registry", required=True, help="Schema Registry URL")
    p.add_argument("--input", required=True, help="events topic")
    p.add_argument("--consent", help="consent topic (required unless --trivial)")
    p.add_argument("--consent-count", type=int, help="consent records to load (default: to the end)")
    p.add_argument("--output-prefix", help="writes <prefix>.sends and <prefix>.dlq (required unless --trivial)")
    p.add_argument("--group", required=True, help="consumer group (fresh per run: it starts at the beginning)")
    p.add_argument("--count", type=int, required=True, help="input messages to consume, then stop")
    p.add_argument("--state-dir", help="Quix state directory (default: a temporary one, removed at exit)")
    p.add_argument("--commit-interval", type=float, default=5.0, help="Quix checkpoint interval, s")
    p.add_argument(
        "--processing-guarantee",
        choices=["at-least-once", "exactly-once"],
        default="at-least-once",
        help="Quix's processing guarantee (exactly-once uses Kafka transactions)",
    )
    p.add_argument("--stall-seconds", type=float, default=30.0, help="fail when no input arrives for this long")
    p.add_argument("--startup-seconds", type=float, default=90.0, help="... or when the first one takes this long")
    p.add_argument("--no-ttl", action="store_true", help="state entries never expire (no Quix TTL bookkeeping)")
    p.add_argument("--trivial", action="store_true", help="baseline: consume and count only, no processing")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args()
    if not args.trivial and not (args.consent and args.output_prefix):
        p.error("--consent and --output-prefix are required unless --trivial")
    if args.count <= 0:
        p.error("--count must be positive")

    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(stream=sys.stderr, level=args.log_level, format=log_format)
    run = Run(args)
    state_dir = args.state_dir or tempfile.mkdtemp(prefix="quix-peer-state-")
    try:
        registry = SchemaRegistry(args.registry)
        consent = None if args.trivial else load_consent(args, registry)
        app = Application(
            broker_address=args.brokers,
            consumer_group=args.group,
            auto_offset_reset="earliest",
            # exactly-once: Kafka transactions per checkpoint, as Touchpoint's exactly_once_v2.
            processing_guarantee=args.processing_guarantee,
            commit_interval=args.commit_interval,
            state_dir=state_dir,
            on_message_processed=run.on_message_processed,
            loglevel=args.log_level,
        )
        run.app = app
        build(app, args, run, registry, consent)
        run.last_progress = time.monotonic()  # the startup timeout counts from here, consent loading excluded
        threading.Thread(target=run.watch, name="stall-watchdog", daemon=True).start()
        app.run()
        stopped_at = time.monotonic()
    except Exception:
        log.exception("peer failed")
        return 1
    finally:
        if args.state_dir is None:
            shutil.rmtree(state_dir, ignore_errors=True)
    if run.stalled is not None:
        return 2  # the watchdog said why
    if run.nth_at is None:  # stopped from outside (SIGTERM, SIGINT) before the count
        log.error("the app stopped after %d of %d input messages", run.consumed, args.count)
        return 2
    seconds = run.nth_at - run.first_at
    result = {
        "events": run.consumed,
        **run.counts,
        "seconds": round(seconds, 3),
        "events_per_s": round(run.consumed / seconds, 1) if seconds > 0 else None,
        # From the N-th message to app.run() returning: final checkpoint (producer flush, state flush,
        # offset commit) and shutdown. Not in `seconds`, reported so the harness can add it.
        "stop_seconds": round(stopped_at - run.nth_at, 3),
        "wall_seconds": round(time.monotonic() - run.started, 3),
    }
    if not args.trivial:
        result["consent_records"] = consent.records
        result["state_ttl"] = not args.no_ttl
    print(orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
