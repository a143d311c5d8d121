#!/usr/bin/env python3
"""Local channel peers for the integration tests: one SMTP server and one HTTP server in one process.

The HTTP server plays three providers, each under its own path prefix:
  /hooks/<bucket>/...   a Standard Webhooks consumer (signature check, idempotent on webhook-id)
  /push/<bucket>/v1/... Firebase Cloud Messaging HTTP v1 (messages:send)
  /sms/<bucket>/2010-04-01/... Twilio Programmable Messaging (Messages.json, status callbacks)
and the test-facing routes /_health, /_control/<bucket>, /_records/<bucket>, /_mail/<bucket>.
The SMTP server (aiosmtpd) accepts mail and files it under the recipient's domain.

Every test uses its own bucket (an HTTP path segment, or the recipient domain for SMTP), so tests
running in parallel never see each other's traffic. Bucket names are case-insensitive (lower-cased).
See README.md beside this file for the full API.

No real authentication and no TLS: it binds to loopback only. Stop it with SIGTERM.
"""
import argparse
import asyncio
import base64
import binascii
import email
import email.policy
import email.utils
import hashlib
import hmac
import http.server
import ipaddress
import itertools
import json
import logging
import random
import re
import secrets
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

log = logging.getLogger("peers")

SMTP_USER = "touchpoint"
SMTP_PASSWORD = "secret"
WEBHOOK_TOLERANCE_S = 300
SMS_CALLBACK_DELAY_S = 0.2
SMS_CALLBACK_RETRIES = 5
SMS_CALLBACK_RETRY_INTERVAL_S = 1.0
E164 = re.compile(r"\+[1-9][0-9]{6,14}")

CONTROL_DEFAULTS = {
    "fail_rate": 0.0,
    "fail_status": 503,
    "retry_after": None,
    "fail_first": 0,
    "delay_ms": 0,
    "seed": None,
    "secret": None,
}


class ControlError(ValueError):
    pass


def parse_control(raw):
    """Validates a PUT /_control body; returns the full control (defaults filled in)."""
    if not isinstance(raw, dict):
        raise ControlError("control must be a JSON object")
    unknown = sorted(set(raw) - set(CONTROL_DEFAULTS))
    if unknown:
        raise ControlError(f"unknown control keys: {', '.join(unknown)}")
    control = dict(CONTROL_DEFAULTS)
    for key, value in raw.items():
        if value is None:
            continue
        if key == "fail_rate":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ControlError("fail_rate must be a number in [0, 1]")
            control[key] = float(value)
        elif key == "fail_status":
            if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
                raise ControlError("fail_status must be an integer in [400, 599]")
            control[key] = value
        elif key == "retry_after":
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ControlError("retry_after must be a string (or an integer)")
            control[key] = str(value)
        elif key in ("fail_first", "delay_ms"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ControlError(f"{key} must be a non-negative number")
            control[key] = int(value) if key == "fail_first" else value
        elif key == "seed":
            if isinstance(value, (bool, dict, list)):
                raise ControlError("seed must be an integer or a string")
            control[key] = value
        elif key == "secret":
            if not isinstance(value, str) or not value:
                raise ControlError("secret must be a non-empty string")
            control[key] = value
    return control


class Bucket:
    """One test's traffic and behaviour. Every field is guarded by State.lock."""

    def __init__(self):
        self.control = dict(CONTROL_DEFAULTS)
        self.rng = random.Random()
        self.records = []  # (arrival seq, record)
        self.mail = []
        self.clear()

    def clear(self):
        self.records = []
        self.mail = []
        self.hook_ok_ids = set()  # webhook-id answered 2xx
        self.push_keys = {}  # Idempotency-Key -> message name
        self.push_messages = {}  # name -> {"name", "state"}
        self.sms_keys = {}  # Idempotency-Key -> sid
        self.sms_messages = {}  # sid -> message JSON

    def set_control(self, control):
        self.control = control
        self.rng = random.Random(control["seed"]) if control["seed"] is not None else random.Random()

    def decide_failure(self):
        """True when this provider request must fail (consumes fail_first / one random draw)."""
        if self.control["fail_first"] > 0:
            self.control["fail_first"] -= 1
            return True
        rate = self.control["fail_rate"]
        return rate > 0 and self.rng.random() < rate


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.buckets = {}
        self.seq = itertools.count()

    def bucket(self, name):  # call with the lock held
        b = self.buckets.get(name)
        if b is None:
            b = self.buckets[name] = Bucket()
        return b

    def delay_of(self, name):
        with self.lock:
            return self.bucket(name).control["delay_ms"] / 1000.0

    def failure(self, name):
        """None, or (status, retry_after) of an injected failure."""
        with self.lock:
            b = self.bucket(name)
            if b.decide_failure():
                return b.control["fail_status"], b.control["retry_after"]
            return None


STATE = State()
STOP = threading.Event()


def bucket_name(raw):
    return raw.strip().lower()


def now_rfc2822():
    return email.utils.formatdate(usegmt=True).replace("GMT", "+0000")


def is_loopback_url(url):
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError:
        return False
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# Provider-style error bodies
# ---------------------------------------------------------------------------------------------

FCM_STATUS = {
    400: ("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
    401: ("UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"),
    403: ("PERMISSION_DENIED", "SENDER_ID_MISMATCH"),
    404: ("NOT_FOUND", "UNREGISTERED"),
    429: ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
    500: ("INTERNAL", "INTERNAL"),
    503: ("UNAVAILABLE", "UNAVAILABLE"),
}


_DEFAULT = object()


def fcm_error(code, message, error_code=_DEFAULT):
    """FCM's error body; error_code=None leaves out the FcmError details."""
    status_name, default_error_code = FCM_STATUS.get(code, ("UNKNOWN", None))
    err = {"code": code, "message": message, "status": status_name}
    if error_code is _DEFAULT:
        error_code = default_error_code
    if error_code:
        err["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]
    return {"error": err}


def twilio_error(status, code, message, more_info=True):
    body = {"code": code, "message": message}
    if more_info:
        body["more_info"] = f"https://www.twilio.com/docs/errors/{code}"
    body["status"] = status
    return body


# ---------------------------------------------------------------------------------------------
# Webhook signatures (Standard Webhooks, key = the secret's UTF-8 bytes)
# ---------------------------------------------------------------------------------------------


def webhook_signature_valid(secret, headers, body, now):
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not timestamp or not signatures:
        return False
    try:
        ts = int(timestamp.strip())
    except ValueError:
        return False
    if abs(now - ts) > WEBHOOK_TOLERANCE_S:
        return False
    signed = f"{msg_id}.{timestamp.strip()}.".encode() + body
    expected = base64.b64encode(hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest())
    valid = False
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode("utf-8", "replace"), expected):
            valid = True
    return valid


# ---------------------------------------------------------------------------------------------
# SMS status callbacks (Twilio style, from a background thread)
# ---------------------------------------------------------------------------------------------


def twilio_signature(auth_token, url, params):
    """X-Twilio-Signature: base64(HMAC-SHA1(auth token, url + sorted key/value pairs))."""
    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def sms_delivery(bucket, sid, callback_url, auth_token):
    if STOP.wait(SMS_CALLBACK_DELAY_S):
        return
    with STATE.lock:
        message = STATE.bucket(bucket).sms_messages.get(sid)
        if message is None:  # the bucket was cleared meanwhile
            return
        undelivered = message["to"].endswith("9999")
        message["status"] = "undelivered" if undelivered else "delivered"
        message["date_updated"] = now_rfc2822()
        if undelivered:
            message["error_code"] = 30005
            message["error_message"] = "Unknown destination handset"
        params = {
            "MessageSid": sid,
            "SmsSid": sid,
            "MessageStatus": message["status"],
            "SmsStatus": message["status"],
            "AccountSid": message["account_sid"],
            "To": message["to"],
            "From": message["from"],
            "ApiVersion": "2010-04-01",
        }
        if undelivered:
            params["ErrorCode"] = "30005"
    if not callback_url:
        return
    if not is_loopback_url(callback_url):
        log.warning("sms %s: not calling back %s: only loopback callback URLs are allowed", sid, callback_url)
        return
    data = urllib.parse.urlencode(params).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "User-Agent": "TwilioProxy/1.1",
        "X-Twilio-Signature": twilio_signature(auth_token, callback_url, params),
    }
    for attempt in range(1, SMS_CALLBACK_RETRIES + 2):
        try:
            req = urllib.request.Request(callback_url, data=data, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=5) as resp:
                resp.read()
                log.info("sms %s: status callback %s -> %s (attempt %d)", sid, callback_url, resp.status, attempt)
                return
        except urllib.error.HTTPError as e:
            log.warning("sms %s: status callback %s answered %s (attempt %d)", sid, callback_url, e.code, attempt)
        except (urllib.error.URLError, OSError) as e:
            log.warning("sms %s: status callback %s failed: %s (attempt %d)", sid, callback_url, e, attempt)
        if attempt <= SMS_CALLBACK_RETRIES and STOP.wait(SMS_CALLBACK_RETRY_INTERVAL_S):
            return
    log.error("sms %s: status callback %s gave up after %d attempts", sid, callback_url, SMS_CALLBACK_RETRIES + 1)


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


class Reply:
    def __init__(self, status, body, headers=None, content_type="application/json"):
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.content_type = content_type


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "touchpoint-peers/1"

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        log.debug("http %s %s", self.address_string(), format % args)

    # -- plumbing ------------------------------------------------------------------------------

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send(self, reply):
        if isinstance(reply.body, (bytes, bytearray)):
            payload = bytes(reply.body)
        elif isinstance(reply.body, str):
            payload = reply.body.encode()
        else:
            payload = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def route(self):
        split = urllib.parse.urlsplit(self.path)
        segs = [urllib.parse.unquote(s) for s in split.path.split("/")[1:]]
        while segs and segs[-1] == "" and len(segs) > 1:
            segs.pop()
        query = {k: v[0] if len(v) == 1 else v for k, v in urllib.parse.parse_qs(split.query, keep_blank_values=True).items()}
        return split.path, segs, query

    def header_dict(self):
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            try:  # http.server decodes header bytes as latin-1; most clients send UTF-8
                value = value.encode("latin-1").decode("utf-8")
            except (UnicodeEncodeError, UnicodeDecodeError):
                pass
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return headers

    def handle_any(self):
        body = self.read_body() if self.command in ("POST", "PUT", "PATCH", "DELETE") else b""
        path, segs, query = self.route()
        try:
            reply = self.dispatch(path, segs, query, body)
        except Exception:  # a bug here must not kill the connection without an answer
            log.exception("error handling %s %s", self.command, self.path)
            reply = Reply(500, {"error": "internal error in the peer server"})
        self.send(reply)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_any

    # -- dispatch ------------------------------------------------------------------------------

    def dispatch(self, path, segs, query, body):
        head = segs[0] if segs else ""
        method = self.command
        if head == "_health" and len(segs) == 1 and method in ("GET", "HEAD"):
            return Reply(200, "ok", content_type="text/plain")
        if head in ("_control", "_records", "_mail"):
            if len(segs) != 2 or not segs[1].strip():
                return Reply(404, {"error": f"expected /{head}/<bucket>"})
            return self.test_route(head, bucket_name(segs[1]), method, body)
        if head in ("hooks", "push", "sms") and len(segs) >= 2 and segs[1].strip():
            bucket = bucket_name(segs[1])
            if method == "POST":
                return self.provider_send(head, bucket, path, segs, query, body)
            if method == "GET" and head == "push":
                return self.push_lookup(bucket, segs)
            if method == "GET" and head == "sms":
                return self.sms_lookup(bucket, path, segs, query)
            return Reply(405, {"error": f"{method} not allowed here"}, headers={"Allow": "POST" if head == "hooks" else "GET, POST"})
        return Reply(404, {"error": "no such route"})

    def test_route(self, head, bucket, method, body):
        if head == "_control":
            if method == "PUT":
                try:
                    control = parse_control(json.loads(body.decode() or "{}"))
                except (ValueError, UnicodeDecodeError) as e:
                    return Reply(400, {"error": str(e)})
                with STATE.lock:
                    STATE.bucket(bucket).set_control(control)
                log.info("control %s: %s", bucket, {k: v for k, v in control.items() if k != "secret"})
                return Reply(200, {"ok": True, "control": control})
            if method == "GET":
                with STATE.lock:
                    return Reply(200, dict(STATE.bucket(bucket).control))
            if method == "DELETE":
                with STATE.lock:
                    STATE.bucket(bucket).set_control(dict(CONTROL_DEFAULTS))
                return Reply(200, {"ok": True})
            return Reply(405, {"error": "use PUT, GET or DELETE"}, headers={"Allow": "PUT, GET, DELETE"})
        if head == "_records":
            if method == "GET":
                with STATE.lock:
                    records = [r for _, r in sorted(STATE.bucket(bucket).records, key=lambda x: x[0])]
                    return Reply(200, json.loads(json.dumps(records)))
            if method == "DELETE":
                with STATE.lock:
                    STATE.bucket(bucket).clear()
                return Reply(200, {"ok": True})
            return Reply(405, {"error": "use GET or DELETE"}, headers={"Allow": "GET, DELETE"})
        # _mail
        if method == "GET":
            with STATE.lock:
                return Reply(200, json.loads(json.dumps(STATE.bucket(bucket).mail)))
        return Reply(405, {"error": "use GET"}, headers={"Allow": "GET"})

    # -- provider sends (recorded, subject to failure injection) --------------------------------

    def provider_send(self, route, bucket, path, segs, query, body):
        seq = next(STATE.seq)
        record = {
            "route": {"hooks": "hook"}.get(route, route),
            "method": self.command,
            "path": path,
            "query": query,
            "headers": self.header_dict(),
            "body": body.decode("utf-8", "replace"),
            "status": None,
            "duplicate": False,
            "signature_valid": None,
            "at": time.time(),
        }
        handler = {"hooks": self.hook_send, "push": self.push_send, "sms": self.sms_send}[route]
        reply = handler(bucket, segs, body, record)
        record["status"] = reply.status
        with STATE.lock:
            STATE.bucket(bucket).records.append((seq, record))
        log.info(
            "%s %s %s -> %s%s",
            bucket, self.command, path, reply.status, " (duplicate)" if record["duplicate"] else "",
        )
        return reply

    def injected(self, bucket):
        """Sleeps delay_ms, then returns the injected failure (status, retry_after) or None."""
        delay = STATE.delay_of(bucket)
        if delay > 0:
            time.sleep(delay)
        return STATE.failure(bucket)

    @staticmethod
    def failure_headers(retry_after):
        return {"Retry-After": retry_after} if retry_after is not None else {}

    def hook_send(self, bucket, segs, body, record):
        headers = record["headers"]
        failure = self.injected(bucket)
        with STATE.lock:
            secret = STATE.bucket(bucket).control["secret"]
        if secret is not None:
            record["signature_valid"] = webhook_signature_valid(secret, headers, body, time.time())
        msg_id = headers.get("webhook-id")
        with STATE.lock:
            b = STATE.bucket(bucket)
            record["duplicate"] = bool(msg_id) and msg_id in b.hook_ok_ids
            if failure is not None:
                status, retry_after = failure
                return Reply(status, {"ok": False, "error": "injected failure"}, self.failure_headers(retry_after))
            if record["signature_valid"] is False:
                return Reply(401, {"ok": False, "error": "invalid webhook signature"})
            if msg_id:
                b.hook_ok_ids.add(msg_id)
        return Reply(200, {"ok": True})

    def push_send(self, bucket, segs, body, record):
        # push/<bucket>/v1/projects/<project>/messages:send
        if len(segs) != 6 or segs[2] != "v1" or segs[3] != "projects" or segs[5] != "messages:send":
            return Reply(404, fcm_error(404, "Requested entity was not found.", error_code=None))
        project = segs[4]
        failure = self.injected(bucket)
        if failure is not None:
            status, retry_after = failure
            return Reply(status, fcm_error(status, "The service is currently unavailable." if status == 503 else "Injected failure."), self.failure_headers(retry_after))
        auth = record["headers"].get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Reply(
                401,
                fcm_error(
                    401,
                    "Request is missing required authentication credential. Expected OAuth 2 access token, "
                    "login cookie or other valid authentication credential.",
                    error_code=None,
                ),
                {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'},
            )
        try:
            payload = json.loads(body.decode("utf-8"))
            message = payload["message"]
            device = message["token"]
            if not isinstance(device, str) or not device:
                raise ValueError("message.token must be a non-empty string")
        except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
            return Reply(400, fcm_error(400, f"Invalid JSON payload: message.token is required ({type(e).__name__}: {e})"))
        key = record["headers"].get("idempotency-key")
        with STATE.lock:
            b = STATE.bucket(bucket)
            if key and key in b.push_keys:
                record["duplicate"] = True
                return Reply(200, {"name": b.push_keys[key]})
        if device.startswith("invalid"):
            return Reply(404, fcm_error(404, "Requested entity was not found.", error_code="UNREGISTERED"))
        with STATE.lock:
            b = STATE.bucket(bucket)
            if key and key in b.push_keys:  # a concurrent request with the same key won the race
                record["duplicate"] = True
                return Reply(200, {"name": b.push_keys[key]})
            name = f"projects/{project}/messages/{secrets.token_hex(8)}"
            b.push_messages[name] = {"name": name, "state": "accepted"}
            if key:
                b.push_keys[key] = name
        return Reply(200, {"name": name})

    def sms_send(self, bucket, segs, body, record):
        # sms/<bucket>/2010-04-01/Accounts/<AccountSid>/Messages.json
        if len(segs) != 6 or segs[2] != "2010-04-01" or segs[3] != "Accounts" or segs[5] != "Messages.json":
            return Reply(404, twilio_error(404, 20404, f"The requested resource {'/' + '/'.join(segs[2:])} was not found", more_info=False))
        account = segs[4]
        failure = self.injected(bucket)
        if failure is not None:
            status, retry_after = failure
            return Reply(status, twilio_error(status, 20000 + status, "Injected failure", more_info=False), self.failure_headers(retry_after))
        auth_token = basic_auth_password(record["headers"].get("authorization", ""))
        if auth_token is None:
            return Reply(401, {"code": 20003, "message": "Authenticate", "status": 401}, {"WWW-Authenticate": 'Basic realm="Twilio API"'})
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        to, from_, text = form.get("To", ""), form.get("From", ""), form.get("Body", "")
        if not to:
            return Reply(400, twilio_error(400, 21604, "A 'To' phone number is required."))
        if not E164.fullmatch(to):
            return Reply(400, twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number."))
        if not from_:
            return Reply(400, twilio_error(400, 21603, "A 'From' phone number is required."))
        if not text:
            return Reply(400, twilio_error(400, 21602, "Message body is required."))
        key = record["headers"].get("idempotency-key")
        callback = form.get("StatusCallback") or None
        with STATE.lock:
            b = STATE.bucket(bucket)
            if key and key in b.sms_keys and b.sms_keys[key] in b.sms_messages:
                record["duplicate"] = True
                return Reply(201, dict(b.sms_messages[b.sms_keys[key]]))
            sid = "SM" + secrets.token_hex(16)
            created = now_rfc2822()
            message = {
                "sid": sid,
                "account_sid": account,
                "to": to,
                "from": from_,
                "body": text,
                "status": "queued",
                "direction": "outbound-api",
                "num_segments": "1",
                "date_created": created,
                "date_updated": created,
                "date_sent": None,
                "error_code": None,
                "error_message": None,
                "api_version": "2010-04-01",
                "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
            }
            b.sms_messages[sid] = message
            if key:
                b.sms_keys[key] = sid
            reply = Reply(201, dict(message))
        threading.Thread(target=sms_delivery, args=(bucket, sid, callback, auth_token), name=f"sms-{sid}", daemon=True).start()
        return reply

    # -- lookups (not recorded, no failure injection) -------------------------------------------

    def push_lookup(self, bucket, segs):
        # push/<bucket>/v1/projects/<project>/messages:byKey/<key> | .../messages/<id>
        not_found = Reply(404, fcm_error(404, "Requested entity was not found.", error_code=None))
        if len(segs) < 7 or segs[2] != "v1" or segs[3] != "projects":
            return not_found
        project = segs[4]
        with STATE.lock:
            b = STATE.bucket(bucket)
            if segs[5] == "messages:byKey":
                name = b.push_keys.get("/".join(segs[6:]))
            elif segs[5] == "messages" and len(segs) == 7:
                name = f"projects/{project}/messages/{segs[6]}"
            else:
                return not_found
            found = b.push_messages.get(name) if name else None
            return Reply(200, dict(found)) if found else not_found

    def sms_lookup(self, bucket, path, segs, query):
        # sms/<bucket>/2010-04-01/Accounts/<sid>/Messages.json?IdempotencyKey=... | .../Messages/<sid>.json
        resource = "/" + "/".join(segs[2:])
        not_found = Reply(404, {"code": 20404, "message": f"The requested resource {resource} was not found", "status": 404})
        if len(segs) < 6 or segs[2] != "2010-04-01" or segs[3] != "Accounts":
            return not_found
        account = segs[4]
        with STATE.lock:
            b = STATE.bucket(bucket)
            if len(segs) == 6 and segs[5] == "Messages.json":
                key = query.get("IdempotencyKey")
                if isinstance(key, list):
                    key = key[0]
                if key is not None:
                    sid = b.sms_keys.get(key)
                    found = [b.sms_messages[sid]] if sid in b.sms_messages else []
                else:
                    found = list(b.sms_messages.values())
                return Reply(200, {"messages": [dict(m) for m in found if m["account_sid"] == account]})
            if len(segs) == 7 and segs[5] == "Messages" and segs[6].endswith(".json"):
                message = b.sms_messages.get(segs[6][: -len(".json")])
                if message and message["account_sid"] == account:
                    return Reply(200, dict(message))
            return not_found


def basic_auth_password(header):
    """The password of an HTTP Basic authorization with a non-empty user, else None."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password if sep and user else None


class HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


# ---------------------------------------------------------------------------------------------
# SMTP
# ---------------------------------------------------------------------------------------------


def smtp_authenticator(server, session, envelope, mechanism, auth_data):
    from aiosmtpd.smtp import AuthResult, LoginPassword

    if mechanism not in ("LOGIN", "PLAIN") or not isinstance(auth_data, LoginPassword):
        return AuthResult(success=False, handled=False)
    ok = hmac.compare_digest(auth_data.login, SMTP_USER.encode()) & hmac.compare_digest(
        auth_data.password, SMTP_PASSWORD.encode()
    )
    if not ok:
        log.info("smtp: AUTH %s failed for %r", mechanism, auth_data.login)
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def split_address(address):
    local, sep, domain = address.rpartition("@")
    return (local, domain) if sep else (address, "")


class SmtpHandler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local, domain = split_address(address)
        if not domain:
            return f"553 5.1.3 <{address}>: Recipient address needs a domain (the test bucket)"
        if local.lower().startswith("bounce"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local.lower().startswith("tempfail"):
            return "451 4.2.0 Mailbox temporarily unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        buckets = []
        for rcpt in envelope.rcpt_tos:
            name = bucket_name(split_address(rcpt)[1])
            if name not in buckets:
                buckets.append(name)
        failed = False
        for name in buckets:
            delay = STATE.delay_of(name)
            if delay > 0:
                await asyncio.sleep(delay)
            if STATE.failure(name) is not None:
                failed = True
        if failed:
            log.info("smtp DATA for %s -> 451 (injected)", ",".join(buckets))
            return "451 4.3.0 Try again later"
        parsed = parse_mail(envelope.content)
        authenticated_as = None
        login = getattr(session.auth_data, "login", None) if session.authenticated else None
        if login is not None:
            authenticated_as = login.decode("utf-8", "replace") if isinstance(login, bytes) else str(login)
        now = time.time()
        with STATE.lock:
            for name in buckets:
                STATE.bucket(name).mail.append(
                    {
                        "mail_from": envelope.mail_from,
                        "rcpt_tos": [r for r in envelope.rcpt_tos if bucket_name(split_address(r)[1]) == name],
                        **parsed,
                        "authenticated_as": authenticated_as,
                        "at": now,
                    }
                )
        log.info("smtp DATA from %s to %s -> 250", envelope.mail_from, ",".join(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


def parse_mail(content):
    if isinstance(content, str):
        content = content.encode("utf-8", "surrogateescape")
    # SMTP carries CRLF line endings; store text with "\n" ones, as Python's mailbox tools do.
    content = content.replace(b"\r\n", b"\n")
    msg = email.message_from_bytes(content, policy=email.policy.default)

    def part(kind):
        try:
            body = msg.get_body(preferencelist=(kind,))
            return body.get_content() if body is not None else None
        except (LookupError, KeyError, ValueError, AttributeError) as e:
            log.warning("smtp: could not decode the text/%s part: %s", kind, e)
            return None

    def header(name):
        value = msg.get(name)
        return str(value) if value is not None else None

    headers = {}
    for name, value in msg.items():
        name = name.lower()
        headers[name] = f"{headers[name]}, {value}" if name in headers else str(value)
    return {
        "message_id": header("message-id"),
        "subject": header("subject"),
        "from": header("from"),
        "to": header("to"),
        "text": part("plain"),
        "html": part("html"),
        "headers": headers,
    }


# ---------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=18025)
    parser.add_argument("--http-port", type=int, default=18090)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    mail_log = logging.getLogger("mail.log")
    if log.getEffectiveLevel() > logging.DEBUG:  # aiosmtpd logs every connection at INFO
        mail_log.setLevel(logging.WARNING)
    # aiosmtpd 1.4 itself sets the deprecated Session.login_data on every successful AUTH.
    mail_log.addFilter(lambda record: "login_data is deprecated" not in record.getMessage())

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.error("refusing to listen on a non-loopback address: these peers have no real authentication")
        return 2

    from aiosmtpd.controller import Controller

    controller = Controller(
        SmtpHandler(),
        hostname=args.host,
        port=args.smtp_port,
        server_hostname="localhost",
        authenticator=smtp_authenticator,
        auth_required=False,
        auth_require_tls=False,
        enable_SMTPUTF8=True,
    )
    controller.start()
    try:
        httpd = HTTPServer((args.host, args.http_port), Handler)
    except OSError:
        controller.stop()
        raise
    http_thread = threading.Thread(target=httpd.serve_forever, name="http", daemon=True)
    http_thread.start()

    def on_signal(signum, _frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        STOP.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("peers serving smtp://%s:%d and http://%s:%d", args.host, args.smtp_port, args.host, args.http_port)

    while not STOP.wait(1.0):
        pass
    httpd.shutdown()
    httpd.server_close()
    controller.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
