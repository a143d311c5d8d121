//! The HTTP side: authentication, the request's shape and limits, per-item validation with the
//! pipeline's normalizer, and the produce that a `202` waits for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use touchpoint_connectors::kafka::{AckedProducer, OutgoingRecord, SourceRecord};
use touchpoint_operators::decode::{RecordDecoder, SchemaLookup, SchemaLookupError};
use touchpoint_operators::evaluate::EvaluateRequest;
use touchpoint_operators::normalize::Normalizer;
use touchpoint_schemas::{Channel, Purpose, AUTOMATION_TRIGGERED, TRIGGER_JOURNEY_ATTRIBUTE, TRIGGER_RULE_ATTRIBUTE};

use super::auth::{authenticate, presents_credential, AuthError, PeerIdentity, WEBHOOK_ID};
use super::config::{Caller, IngestSettings};
use super::evaluate::{EvaluateError, Evaluator};
use super::guard::{Answer, Claim, Idempotency, RateLimits, MAX_KEY_LEN};
use crate::stages::normalize::normalize_record;
use std::collections::HashMap;
use touchpoint_connectors::channels::unsubscribe::{TokenError, UnsubscribeLinks};

/// How long a request waits for the broker's acknowledgements before it is answered `503`.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(10);

/// The API takes JSON: no schema is ever looked up.
struct JsonOnly;

impl SchemaLookup for JsonOnly {
    fn schema(&self, id: u32) -> Result<Arc<apache_avro::Schema>, SchemaLookupError> {
        Err(SchemaLookupError::NotFound(id))
    }
}

/// What the handlers share.
pub struct IngestState {
    settings: IngestSettings,
    normalizer: Normalizer,
    decoder: RecordDecoder<JsonOnly>,
    producer: AckedProducer,
    topic: String,
    rates: RateLimits,
    idempotency: Idempotency,
    /// What a direct trigger may name: the current journeys' ids and the intent rules.
    journeys: std::collections::BTreeSet<String>,
    rules: touchpoint_operators::intent::IntentRules,
    /// Dry runs through the pipeline (with the internal API only).
    evaluator: Option<Evaluator>,
    /// One-click unsubscribe links (`compliance.unsubscribe`), the consent topic they write to, and
    /// the tokens this process already honoured (hash → expiry), so a replay writes nothing.
    unsubscribe: Option<UnsubscribeLinks>,
    consent_topic: String,
    used_tokens: std::sync::Mutex<HashMap<u128, i64>>,
}

/// The most honoured unsubscribe tokens remembered (expired ones go first; past this the oldest do, and a
/// replay of one of those writes the same denial again, which changes no consent).
const USED_TOKENS: usize = 100_000;

/// How long a dry run waits for the pipeline's answer (an epoch, two produces, usually well under 1 s).
const EVALUATE_TIMEOUT: Duration = Duration::from_secs(5);

/// The byte bound of the idempotency cache (its entry bound is the pipeline file's).
const IDEMPOTENCY_BYTES: usize = 64 << 20;

impl IngestState {
    /// The API's state; `evaluator` answers dry runs (the internal API's).
    pub fn new(
        config: &crate::PipelineConfig,
        settings: IngestSettings,
        producer: AckedProducer,
        evaluator: Option<Evaluator>,
    ) -> anyhow::Result<Self> {
        Ok(IngestState {
            normalizer: config.built()?.normalizer.clone(),
            decoder: RecordDecoder::new(JsonOnly),
            producer,
            evaluator,
            topic: config.topics.events.name.clone(),
            rates: RateLimits::default(),
            idempotency: Idempotency::new(settings.idempotency_ttl, settings.idempotency_entries, IDEMPOTENCY_BYTES),
            journeys: config.journeys()?.into_iter().map(|j| j.id).collect(),
            unsubscribe: config.compliance.unsubscribe_links()?,
            consent_topic: config.topics.consent.name.clone(),
            used_tokens: Default::default(),
            rules: config.built()?.intents.clone(),
            settings,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// One event of a request that is not produced, and why (the dead-letter codes of the pipeline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemError {
    pub index: usize,
    pub code: String,
    pub message: String,
}

/// The OpenAPI document of this API (hand-written; a test checks it against the routes).
pub const OPENAPI: &str = include_str!("../../../schemas/api/ingest.openapi.json");

/// The public API's routes.
pub fn router(state: Arc<IngestState>) -> Router {
    Router::new()
        .route("/automation/events", endpoint_route(Endpoint::Events))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/u/{token}", get(unsubscribe_page).post(unsubscribe))
        .with_state(state)
}

/// The internal API's routes (its own listener, `ingest.internal_listen`; credentials with `internal`).
pub fn internal_router(state: Arc<IngestState>) -> Router {
    Router::new()
        .route("/internal/automation/trigger", endpoint_route(Endpoint::Trigger))
        .route("/internal/automation/evaluate", endpoint_route(Endpoint::Evaluate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(state)
}

/// Which endpoint a request is for: both share authentication, idempotency and rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Events,
    Trigger,
    Evaluate,
}

fn problem(status: StatusCode, code: &str, message: impl Into<String>) -> Answer {
    let body = serde_json::to_vec(&json!({"error": code, "message": message.into()})).unwrap_or_default();
    Answer { status, body: body.into() }
}

fn answer(status: StatusCode, value: Value) -> Answer {
    Answer { status, body: serde_json::to_vec(&value).unwrap_or_default().into() }
}

fn respond(a: Answer, retry_after: Option<Duration>, replayed: bool) -> Response {
    let mut r = (a.status, [(header::CONTENT_TYPE, "application/json")], a.body).into_response();
    if a.status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(wait) = retry_after {
        // Whole seconds, rounded up: a client waiting that long finds the tokens there.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    if replayed {
        r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    r
}

/// Forgets a claimed idempotency key unless the request finished: a client that hangs up mid-request
/// must not leave its key "in flight" for every retry.
struct ClaimGuard<'a> {
    state: &'a IngestState,
    caller: String,
    key: String,
    body: u128,
    done: bool,
}

impl ClaimGuard<'_> {
    fn finish(mut self, answer: Option<Answer>) {
        self.done = true;
        self.state.idempotency.finish(&self.caller, &self.key, self.body, answer, Instant::now());
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.state.idempotency.finish(&self.caller, &self.key, self.body, None, Instant::now());
        }
    }
}

/// A `POST` route of `endpoint`: every endpoint shares [`handle`] (credentials, idempotency, limits).
fn endpoint_route(endpoint: Endpoint) -> axum::routing::MethodRouter<Arc<IngestState>> {
    post(
        move |State(state): State<Arc<IngestState>>,
              peer: Option<Extension<PeerIdentity>>,
              headers: HeaderMap,
              body: Body| async move { handle(&state, peer, headers, body, endpoint).await },
    )
}

async fn handle(
    state: &IngestState,
    peer: Option<Extension<PeerIdentity>>,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Response {
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    // No credential at all: refused before the body is read.
    if !presents_credential(&headers, &peer) {
        return respond(problem(StatusCode::UNAUTHORIZED, "unauthorized", AuthError::Missing.to_string()), None, false);
    }
    let body = match read_body(&state.settings, &headers, body).await {
        Ok(b) => b,
        Err(a) => return respond(a, None, false),
    };
    let now_s = chrono::Utc::now().timestamp();
    let caller = match authenticate(&state.settings, &headers, &peer, &body, now_s) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(code = e.code(), error = %e, "ingest: request refused (401)");
            return respond(problem(StatusCode::UNAUTHORIZED, e.code(), e.to_string()), None, false);
        }
    };
    if endpoint != Endpoint::Events && !caller.internal {
        tracing::warn!(key = %caller.key_id, "ingest: a credential without `internal` called the internal API (403)");
        let a = problem(StatusCode::FORBIDDEN, "not_internal", "this credential may not call the internal API");
        return respond(a, None, false);
    }
    // A retried request answers as the first did, without producing again.
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(a) => return respond(a, None, false),
    };
    let guard = match key.clone() {
        None => None,
        Some(key) => {
            let hash = xxhash_rust::xxh3::xxh3_128(&body);
            match state.idempotency.claim(&caller.key_id, &key, hash, Instant::now()) {
                Claim::New => Some(ClaimGuard { state, caller: caller.key_id.clone(), key, body: hash, done: false }),
                Claim::Replay(first) => return respond(first, None, true),
                Claim::InFlight => {
                    let a = problem(
                        StatusCode::CONFLICT,
                        "request_in_progress",
                        "a request with this key is being answered",
                    );
                    return respond(a, Some(Duration::from_secs(1)), false);
                }
                Claim::Mismatch => {
                    let a = problem(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency_key_reused",
                        "this idempotency key came before with another body",
                    );
                    return respond(a, None, false);
                }
            }
        }
    };
    let (answer, retry_after) = match endpoint {
        Endpoint::Events => accept(state, caller, &body).await,
        Endpoint::Trigger => direct_trigger(state, caller, &body, key).await,
        Endpoint::Evaluate => dry_run(state, caller, &body).await,
    };
    if let Some(guard) = guard {
        // 429 and 503 are not final: a retry must be tried for real.
        let last = retry_after.is_none().then(|| answer.clone());
        guard.finish(last);
    }
    respond(answer, retry_after, false)
}

/// The body, within the size limit (`413`) and the read timeout (`408`).
async fn read_body(settings: &IngestSettings, headers: &HeaderMap, body: Body) -> Result<Bytes, Answer> {
    let limit = settings.max_request_bytes;
    let too_large =
        || problem(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", format!("the body is over {limit} bytes"));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    match tokio::time::timeout(settings.read_timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            Err(if over {
                too_large()
            } else {
                problem(StatusCode::BAD_REQUEST, "malformed_request", format!("the body could not be read: {e}"))
            })
        }
        Err(_) => Err(problem(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the body did not arrive within {:?}", settings.read_timeout),
        )),
    }
}

/// `Idempotency-Key`, else a signed request's `webhook-id` (Standard Webhooks senders retry with the
/// same id).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Answer> {
    let Some(value) = headers.get("idempotency-key").or_else(|| headers.get(WEBHOOK_ID)) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= MAX_KEY_LEN => Ok(Some(k.to_string())),
        _ => Err(problem(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            format!("an idempotency key is 1 to {MAX_KEY_LEN} visible ASCII characters"),
        )),
    }
}

/// The request of an authenticated caller: its events checked, the valid ones produced. A retry hint
/// comes with answers that are not final (`429`, `503`).
async fn accept(state: &IngestState, caller: &Caller, body: &[u8]) -> (Answer, Option<Duration>) {
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return (problem(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not JSON: {e}")), None)
        }
    };
    let items = match parsed {
        Value::Array(items) => items,
        Value::Object(mut o) => match o.remove("events") {
            Some(Value::Array(items)) => items,
            Some(_) => {
                return (problem(StatusCode::BAD_REQUEST, "malformed_request", "`events` must be an array"), None)
            }
            None => vec![Value::Object(o)],
        },
        _ => {
            let a = problem(
                StatusCode::BAD_REQUEST,
                "malformed_request",
                "send an event object, an array of them, or {\"events\": [...]}",
            );
            return (a, None);
        }
    };
    if items.is_empty() {
        return (problem(StatusCode::BAD_REQUEST, "malformed_request", "no events"), None);
    }
    if items.len() > state.settings.max_events {
        let a = problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("{} events; at most {} per request", items.len(), state.settings.max_events),
        );
        return (a, None);
    }
    // The tenant is the credential's: an event naming another is refused with the whole request.
    for (index, item) in items.iter().enumerate() {
        if let Some(tenant) = item.get("tenant_id").and_then(Value::as_str) {
            if tenant != caller.tenant {
                tracing::warn!(key = %caller.key_id, index, "ingest: an event names another tenant; request refused");
                let a = problem(
                    StatusCode::FORBIDDEN,
                    "forbidden_tenant",
                    format!("events[{index}] names tenant {tenant:?}; this key writes for {:?}", caller.tenant),
                );
                return (a, None);
            }
        }
    }
    if let Err(wait) = state.rates.take(caller, items.len(), Instant::now()) {
        tracing::debug!(key = %caller.key_id, events = items.len(), "ingest: over the rate limit (429)");
        let a = problem(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("over this key's events per second; retry in {:.1} s", wait.as_secs_f64()),
        );
        return (a, Some(wait));
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (records, errors) = check(state, caller, items, now_ms);
    if records.is_empty() {
        return (answer(StatusCode::BAD_REQUEST, json!({"accepted": 0, "errors": errors})), None);
    }
    let accepted = records.len();
    match produce(state, caller, &records).await {
        Ok(()) => {
            tracing::debug!(key = %caller.key_id, accepted, rejected = errors.len(), "ingest: events produced");
            (answer(StatusCode::ACCEPTED, json!({"accepted": accepted, "errors": errors})), None)
        }
        Err(unavailable) => unavailable,
    }
}

/// Produces the records and waits for the broker's acknowledgement of every one; else the `503`.
async fn produce(
    state: &IngestState,
    caller: &Caller,
    records: &[OutgoingRecord],
) -> Result<(), (Answer, Option<Duration>)> {
    match tokio::time::timeout(PRODUCE_TIMEOUT, state.producer.send_all(records)).await {
        Ok(Ok(_)) => Ok(()),
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no acknowledgement within {PRODUCE_TIMEOUT:?}"),
            };
            tracing::warn!(key = %caller.key_id, error = %why, "ingest: events not durable; answered 503");
            let a = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the events are not durable: {why}; retry"),
            );
            Err((a, Some(Duration::from_secs(1))))
        }
    }
}

/// `POST /internal/automation/trigger`: `{"subject_id", "journey" | "rule", "data"?, "trigger_id"?,
/// "occurred_at"?}` becomes an `automation_triggered` event of the credential's tenant, produced like
/// any event, so the pipeline audits, dedupes and decides on it as on any other. Its id is
/// `trigger_id`, else derived from the idempotency key, so a retried trigger is one event.
async fn direct_trigger(
    state: &IngestState,
    caller: &Caller,
    body: &[u8],
    idempotency_key: Option<String>,
) -> (Answer, Option<Duration>) {
    let bad = |message: String| (problem(StatusCode::BAD_REQUEST, "malformed_request", message), None);
    let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(body) else {
        return bad("the body is a JSON object: {\"subject_id\", \"journey\" or \"rule\", \"data\"?}".into());
    };
    let Some(Value::String(subject)) = request.remove("subject_id") else {
        return bad("subject_id (a string) is required".into());
    };
    let (attribute, target) = match (request.remove(TRIGGER_JOURNEY_ATTRIBUTE), request.remove(TRIGGER_RULE_ATTRIBUTE))
    {
        (Some(Value::String(j)), None) => (TRIGGER_JOURNEY_ATTRIBUTE, j),
        (None, Some(Value::String(r))) => (TRIGGER_RULE_ATTRIBUTE, r),
        _ => return bad("name exactly one of journey or rule (a string)".into()),
    };
    let known = if attribute == TRIGGER_JOURNEY_ATTRIBUTE {
        state.journeys.contains(&target)
    } else {
        state.rules.has_rule(&target)
    };
    if !known {
        let a = problem(StatusCode::NOT_FOUND, "unknown_target", format!("no {attribute} {target:?} in this pipeline"));
        return (a, None);
    }
    let mut attributes = match request.remove("data") {
        None => serde_json::Map::new(),
        Some(Value::Object(data)) => data,
        Some(_) => return bad("data must be an object".into()),
    };
    attributes.insert(attribute.into(), Value::String(target.clone()));
    let event_id = match (request.remove("trigger_id"), idempotency_key) {
        (Some(Value::String(id)), _) => id,
        (Some(_), _) => return bad("trigger_id must be a string".into()),
        (None, Some(key)) => format!("trigger:{}:{key}", caller.key_id),
        // Neither: a fresh id (a retry is then a second trigger; the journey's re-entry rule applies).
        (None, None) => format!(
            "trigger:{}:{:032x}",
            caller.key_id,
            xxhash_rust::xxh3::xxh3_128(
                format!("{subject}|{target}|{}", chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default())
                    .as_bytes()
            )
        ),
    };
    let occurred_at = request
        .remove("occurred_at")
        .unwrap_or_else(|| Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
    if let Some(field) = request.keys().next() {
        return bad(format!("unknown field {field:?}"));
    }
    let event = json!({
        "event_id": event_id,
        "event_type": AUTOMATION_TRIGGERED,
        "subject_id": subject,
        "tenant_id": caller.tenant,
        "occurred_at": occurred_at,
        "attributes": attributes,
    });
    let payload = serde_json::to_vec(&event).unwrap_or_default();
    if payload.len() > state.settings.max_event_bytes {
        let a = problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "event_too_large",
            format!("{} bytes; at most {}", payload.len(), state.settings.max_event_bytes),
        );
        return (a, None);
    }
    if let Err(wait) = state.rates.take(caller, 1, Instant::now()) {
        let a = problem(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "over this key's events per second");
        return (a, Some(wait));
    }
    let record = match validate(state, caller, payload, chrono::Utc::now().timestamp_millis()) {
        Ok(r) => r,
        // The pipeline file refuses the event (e.g. `automation_triggered` not among event_types.known).
        Err((code, message)) => return (problem(StatusCode::BAD_REQUEST, &code, message), None),
    };
    match produce(state, caller, std::slice::from_ref(&record)).await {
        Ok(()) => {
            tracing::info!(key = %caller.key_id, %attribute, %target, "ingest: direct trigger produced");
            let a = answer(StatusCode::ACCEPTED, json!({"event_id": event_id, "event_type": AUTOMATION_TRIGGERED}));
            (a, None)
        }
        Err(unavailable) => unavailable,
    }
}

/// `GET /u/{token}`: what a person who opens the link sees. It changes nothing (mail clients and
/// scanners fetch links); its button is the one-click `POST`.
async fn unsubscribe_page(State(state): State<Arc<IngestState>>, Path(token): Path<String>) -> Response {
    let Some(links) = &state.unsubscribe else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let page = |status: StatusCode, body: String| {
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            format!("<!doctype html><html><body>{body}</body></html>"),
        )
            .into_response()
    };
    match links.verify(&token, chrono::Utc::now().timestamp()) {
        Ok(what) => page(
            StatusCode::OK,
            format!(
                "<p>Stop {} messages about offers and news?</p><form method=\"post\"><button type=\"submit\" \
                 name=\"List-Unsubscribe\" value=\"One-Click\">Unsubscribe</button></form>",
                what.channel
            ),
        ),
        Err(TokenError::Expired) => page(StatusCode::GONE, "<p>This link has expired.</p>".into()),
        Err(_) => page(StatusCode::BAD_REQUEST, "<p>This link is not valid.</p>".into()),
    }
}

/// `POST /u/{token}` (RFC 8058 one-click; any body): a valid, unexpired token writes a consent denial
/// (source `unsubscribe`) for its tenant, subject, channel and purpose to the consent topic, answered
/// `200` once the broker acknowledged it. An invalid token is `400`, an expired one `410`; neither
/// changes anything. A token this process honoured before is answered `200` without a second record.
async fn unsubscribe(State(state): State<Arc<IngestState>>, Path(token): Path<String>) -> Response {
    let Some(links) = &state.unsubscribe else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let now_s = chrono::Utc::now().timestamp();
    let what = match links.verify(&token, now_s) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "ingest: unsubscribe token refused");
            let (status, code) = match e {
                TokenError::Expired => (StatusCode::GONE, "expired_token"),
                _ => (StatusCode::BAD_REQUEST, "invalid_token"),
            };
            return respond(problem(status, code, e.to_string()), None, false);
        }
    };
    let hash = xxhash_rust::xxh3::xxh3_128(token.as_bytes());
    let seen = {
        let mut used = state.used_tokens.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, expires| *expires >= now_s);
        if used.len() >= USED_TOKENS {
            if let Some(oldest) = used.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k) {
                used.remove(&oldest);
            }
        }
        used.contains_key(&hash)
    };
    if seen {
        return respond(answer(StatusCode::OK, json!({"unsubscribed": true, "already": true})), None, false);
    }
    let record = OutgoingRecord {
        topic: state.consent_topic.clone(),
        partition: None,
        key: Some(format!("{}/{}/{}/{}", what.tenant_id, what.subject_id, what.channel, what.purpose).into_bytes()),
        payload: Some(
            serde_json::to_vec(&json!({
                "tenant_id": what.tenant_id,
                "subject_id": what.subject_id,
                "channel": what.channel,
                "purpose": what.purpose,
                "status": "denied",
                "updated_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "source": "unsubscribe",
            }))
            .unwrap_or_default(),
        ),
        headers: Vec::new(),
    };
    let caller = Caller { key_id: "unsubscribe".into(), tenant: what.tenant_id.clone(), rate: None, internal: false };
    match produce(&state, &caller, std::slice::from_ref(&record)).await {
        Ok(()) => {
            state.used_tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(hash, what.expires_at_s);
            tracing::info!(channel = %what.channel, "ingest: unsubscribed (consent denied, source unsubscribe)");
            respond(answer(StatusCode::OK, json!({"unsubscribed": true})), None, false)
        }
        Err((a, retry)) => respond(a, retry, false),
    }
}

/// `POST /internal/automation/evaluate`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateBody {
    subject_id: String,
    channel: Channel,
    #[serde(default)]
    purpose: Option<Purpose>,
    category: String,
    #[serde(default)]
    template: String,
    #[serde(default)]
    priority: i32,
}

/// A dry run: would a message on `channel` for `purpose` / `category` to the subject be allowed now?
/// Answered by the pipeline worker that holds the subject, from its live state; nothing is counted.
async fn dry_run(state: &IngestState, caller: &Caller, body: &[u8]) -> (Answer, Option<Duration>) {
    let Some(evaluator) = &state.evaluator else {
        return (problem(StatusCode::NOT_FOUND, "not_found", "dry runs are served on the internal listener"), None);
    };
    let request: EvaluateBody = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("{e} (fields: subject_id, channel, purpose?, category, template?, priority?)");
            return (problem(StatusCode::BAD_REQUEST, "malformed_request", message), None);
        }
    };
    if request.subject_id.is_empty() || request.subject_id.len() > 256 {
        return (problem(StatusCode::BAD_REQUEST, "malformed_request", "subject_id: 1 to 256 bytes"), None);
    }
    if let Err(wait) = state.rates.take(caller, 1, Instant::now()) {
        return (
            problem(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "over this key's requests per second"),
            Some(wait),
        );
    }
    let ask = EvaluateRequest {
        correlation_id: evaluator.correlation_id(),
        tenant_id: caller.tenant.clone(),
        subject_id: request.subject_id,
        channel: request.channel,
        purpose: request.purpose.unwrap_or(Purpose::Marketing),
        category: request.category,
        template: request.template,
        priority: request.priority,
        at_ms: chrono::Utc::now().timestamp_millis(),
    };
    match evaluator.ask(ask, EVALUATE_TIMEOUT).await {
        Ok(reply) => (answer(StatusCode::OK, serde_json::to_value(&reply).unwrap_or_default()), None),
        Err(e @ EvaluateError::Produce(_)) => {
            (problem(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string()), Some(Duration::from_secs(1)))
        }
        Err(e @ EvaluateError::NoAnswer(_)) => {
            (problem(StatusCode::GATEWAY_TIMEOUT, "no_answer", e.to_string()), Some(Duration::from_secs(1)))
        }
    }
}

/// Each item as the record to produce (the caller's tenant set), or its error.
fn check(
    state: &IngestState,
    caller: &Caller,
    items: Vec<Value>,
    now_ms: i64,
) -> (Vec<OutgoingRecord>, Vec<ItemError>) {
    let mut records = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let Value::Object(mut fields) = item else {
            errors.push(ItemError {
                index,
                code: "malformed_payload".into(),
                message: "an event is a JSON object".into(),
            });
            continue;
        };
        fields.insert("tenant_id".into(), Value::String(caller.tenant.clone()));
        let payload = serde_json::to_vec(&Value::Object(fields)).unwrap_or_default();
        if payload.len() > state.settings.max_event_bytes {
            errors.push(ItemError {
                index,
                code: "event_too_large".into(),
                message: format!("{} bytes; at most {}", payload.len(), state.settings.max_event_bytes),
            });
            continue;
        }
        match validate(state, caller, payload, now_ms) {
            Ok(record) => records.push(record),
            Err((code, message)) => errors.push(ItemError { index, code, message }),
        }
    }
    (records, errors)
}

/// The pipeline's own normalizer on the event: the record to produce (the caller's JSON as sent, tenant
/// set, keyed by subject as the pipeline's producers key them; the pipeline normalizes it again like any
/// record), or the reason the pipeline would dead-letter it.
fn validate(
    state: &IngestState,
    caller: &Caller,
    payload: Vec<u8>,
    now_ms: i64,
) -> Result<OutgoingRecord, (String, String)> {
    let record = SourceRecord {
        partition: 0,
        offset: 0,
        key: None,
        payload: Some(payload.clone()),
        timestamp_ms: None,
        already_stored: false,
    };
    match normalize_record(&state.decoder, &state.normalizer, &state.topic, record, now_ms) {
        Ok(Ok(read)) => Ok(OutgoingRecord {
            topic: state.topic.clone(),
            partition: None,
            key: Some(read.event.subject_id.into_bytes()),
            payload: Some(payload),
            // Which key sent it, for audits (the key's id, not the key).
            headers: vec![("tp.ingest.key_id".into(), caller.key_id.clone().into_bytes())],
        }),
        Ok(Err(dead)) => Err((dead.reason_code, dead.message)),
        Err(blocked) => Err(("unknown_schema".into(), blocked.why.to_string())),
    }
}
