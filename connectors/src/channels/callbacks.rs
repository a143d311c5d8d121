//! Provider status callbacks: an HTTP endpoint that turns "message X was delivered / bounced" into a
//! delivery event on `marketing.deliveries`, reconciled to our message by delivery id.
//!
//! - `POST /callbacks/sms` — Twilio's form (`MessageSid`, `MessageStatus`, `ErrorCode`).
//! - `POST /callbacks/<channel>` — JSON `{"delivery_id": "...", "status": "delivered"|"bounced"|"failed",
//!   "reason": "..."}`; `delivery_id` may be ours or the provider's message id.
//!
//! The id is looked up in ClickHouse `deliveries` (the `sent` row the connector wrote). An id not (yet)
//! known is answered 404 so the provider tries again later (providers retry callbacks); statuses
//! that are not final (`queued`, `sending`, `sent`) are acknowledged and ignored.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Form, Json, Router};
use touchpoint_schemas::DeliverySource;
use touchpoint_schemas::{Delivery, DeliveryStatus};

use super::now_ms;
use super::worker::delivery_record;
use crate::clickhouse::DeliveryStore;
use crate::kafka::AckedProducer;

#[derive(Clone)]
pub struct CallbackState {
    pub store: DeliveryStore,
    pub producer: AckedProducer,
    pub deliveries_topic: String,
}

pub fn router(state: CallbackState) -> Router {
    Router::new()
        .route("/callbacks/sms", post(twilio))
        .route("/callbacks/{channel}", post(generic))
        .route("/health", axum::routing::get(|| async { "ok" }))
        .with_state(Arc::new(state))
}

/// Serves the endpoint until the future is dropped.
pub async fn serve(listen: &str, state: CallbackState) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "provider callbacks accepted on /callbacks/<channel>");
    axum::serve(listener, router(state)).await?;
    Ok(())
}

/// A provider status → ours; `None` for statuses that are not an outcome yet.
pub fn map_status(provider: &str) -> Option<DeliveryStatus> {
    match provider.to_ascii_lowercase().as_str() {
        "delivered" | "read" => Some(DeliveryStatus::Delivered),
        "bounced" | "bounce" | "undelivered" => Some(DeliveryStatus::Bounced),
        "failed" | "rejected" | "dropped" => Some(DeliveryStatus::Failed),
        _ => None,
    }
}

async fn twilio(
    State(state): State<Arc<CallbackState>>,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, String) {
    let (Some(sid), Some(status)) = (form.get("MessageSid"), form.get("MessageStatus")) else {
        return (StatusCode::BAD_REQUEST, "MessageSid and MessageStatus are required".into());
    };
    let reason = form.get("ErrorCode").map(|c| format!("provider error {c}")).or_else(|| Some(status.clone()));
    record(&state, sid, status, reason).await
}

#[derive(serde::Deserialize)]
struct GenericCallback {
    delivery_id: String,
    status: String,
    #[serde(default)]
    reason: Option<String>,
}

async fn generic(
    State(state): State<Arc<CallbackState>>,
    Path(_channel): Path<String>,
    Json(cb): Json<GenericCallback>,
) -> (StatusCode, String) {
    let reason = cb.reason.or_else(|| Some(cb.status.clone()));
    record(&state, &cb.delivery_id, &cb.status, reason).await
}

async fn record(
    state: &CallbackState,
    id: &str,
    provider_status: &str,
    reason: Option<String>,
) -> (StatusCode, String) {
    let Some(status) = map_status(provider_status) else {
        return (StatusCode::OK, format!("status {provider_status} noted (not an outcome)"));
    };
    let known = match state.store.find(id).await {
        Ok(Some(k)) => k,
        Ok(None) => {
            tracing::info!(%id, "callback for a delivery not (yet) known; the provider will retry");
            return (StatusCode::NOT_FOUND, format!("unknown delivery {id}"));
        }
        Err(e) => {
            tracing::warn!(error = %e, "callback lookup failed");
            return (StatusCode::SERVICE_UNAVAILABLE, "lookup failed, retry".into());
        }
    };
    let Some(channel) = touchpoint_schemas::Channel::parse(&known.channel) else {
        tracing::error!(%id, channel = %known.channel, "a stored delivery names an unknown channel");
        return (StatusCode::INTERNAL_SERVER_ERROR, "unknown channel".into());
    };
    let delivery = Delivery {
        delivery_id: known.delivery_id,
        idempotency_key: known.idempotency_key,
        channel,
        tenant_id: known.tenant_id,
        subject_id: known.subject_id,
        status,
        attempt: 0,
        provider_message_id: Some(known.provider_message_id).filter(|p| !p.is_empty()),
        reason: if status == DeliveryStatus::Delivered { None } else { reason },
        source: DeliverySource::Callback,
        at: now_ms(),
    };
    let record = match delivery_record(&state.deliveries_topic, &delivery) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "could not encode a callback's delivery");
            return (StatusCode::INTERNAL_SERVER_ERROR, "not recorded".into());
        }
    };
    match state.producer.send_all(&[record]).await {
        Ok(_) => (StatusCode::OK, "recorded".into()),
        Err(e) => {
            tracing::warn!(error = %e, "could not record a callback");
            (StatusCode::SERVICE_UNAVAILABLE, "not recorded, retry".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_statuses_map_to_outcomes() {
        assert_eq!(map_status("delivered"), Some(DeliveryStatus::Delivered));
        assert_eq!(map_status("undelivered"), Some(DeliveryStatus::Bounced));
        assert_eq!(map_status("FAILED"), Some(DeliveryStatus::Failed));
        assert_eq!(map_status("queued"), None);
        assert_eq!(map_status("sent"), None);
    }
}
