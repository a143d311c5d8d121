//! The HTTP side: authentication, the request's shape and limits, per-item validation with the
//! pipeline's normalizer, and the produce that a `202` waits for.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use touchpoint_connectors::kafka::{AckedProducer, OutgoingRecord, SourceRecord};
use touchpoint_operators::decode::{RecordDecoder, SchemaLookup, SchemaLookupError};
use touchpoint_operators::normalize::Normalizer;

use super::config::{Caller, IngestSettings};
use crate::stages::normalize::normalize_record;

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
}

impl IngestState {
    pub fn new(config: &crate::PipelineConfig, settings: IngestSettings) -> anyhow::Result<Self> {
        Ok(IngestState {
            settings,
            normalizer: config.built()?.normalizer.clone(),
            decoder: RecordDecoder::new(JsonOnly),
            producer: AckedProducer::new(&config.kafka)?,
            topic: config.topics.events.name.clone(),
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

pub fn router(state: IngestState) -> Router {
    let limit = state.settings.max_request_bytes;
    Router::new()
        .route("/automation/events", post(events))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        // Larger bodies are refused with 413 before they are read whole.
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Arc::new(state))
}

fn problem(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": code, "message": message.into()}))).into_response()
}

fn caller<'s>(state: &'s IngestState, headers: &HeaderMap) -> Option<&'s Caller> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let key = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?;
    state.settings.caller(key.trim())
}

async fn events(State(state): State<Arc<IngestState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(caller) = caller(&state, &headers) else {
        let mut r = problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer <key>)",
        );
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return r;
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not JSON: {e}")),
    };
    let items = match parsed {
        Value::Array(items) => items,
        Value::Object(mut o) => match o.remove("events") {
            Some(Value::Array(items)) => items,
            Some(_) => return problem(StatusCode::BAD_REQUEST, "malformed_request", "`events` must be an array"),
            None => vec![Value::Object(o)],
        },
        _ => {
            return problem(
                StatusCode::BAD_REQUEST,
                "malformed_request",
                "send an event object, an array of them, or {\"events\": [...]}",
            )
        }
    };
    if items.is_empty() {
        return problem(StatusCode::BAD_REQUEST, "malformed_request", "no events");
    }
    if items.len() > state.settings.max_events {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("{} events; at most {} per request", items.len(), state.settings.max_events),
        );
    }
    // The tenant is the key's: an event naming another is refused with the whole request.
    for (index, item) in items.iter().enumerate() {
        if let Some(tenant) = item.get("tenant_id").and_then(Value::as_str) {
            if tenant != caller.tenant {
                tracing::warn!(key = %caller.key_id, index, "ingest: an event names another tenant; request refused");
                return problem(
                    StatusCode::FORBIDDEN,
                    "forbidden_tenant",
                    format!("events[{index}] names tenant {tenant:?}; this key writes for {:?}", caller.tenant),
                );
            }
        }
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (records, errors) = check(&state, caller, items, now_ms);
    if records.is_empty() {
        return (StatusCode::BAD_REQUEST, Json(json!({"accepted": 0, "errors": errors}))).into_response();
    }
    let accepted = records.len();
    match tokio::time::timeout(PRODUCE_TIMEOUT, state.producer.send_all(&records)).await {
        Ok(Ok(_)) => {
            tracing::debug!(key = %caller.key_id, accepted, rejected = errors.len(), "ingest: events produced");
            (StatusCode::ACCEPTED, Json(json!({"accepted": accepted, "errors": errors}))).into_response()
        }
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no acknowledgement within {PRODUCE_TIMEOUT:?}"),
            };
            tracing::warn!(key = %caller.key_id, error = %why, "ingest: events not durable; answered 503");
            let mut r = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the events are not durable: {why}; retry"),
            );
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
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
