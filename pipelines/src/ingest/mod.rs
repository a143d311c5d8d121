//! `touchpoint ingest`: the signed ingestion API, `POST /automation/events`.
//!
//! Product apps send one event or a batch over HTTP instead of producing to Kafka themselves. Every
//! event goes through the pipeline's own normalizer first, so a caller learns at once which items are
//! wrong (index, code, message: the dead-letter codes) and only valid ones are produced to the events
//! topic, where the pipeline normalizes, dedupes and decides as for any producer.
//!
//! - Auth: `Authorization: Bearer <api key>`; the pipeline file holds each key's SHA-256 and tenant
//!   (`ingest.api_keys`). The tenant comes from the key, never from the body: an event naming another
//!   tenant makes the request `403`; an event naming none gets the key's.
//! - `202 Accepted` only once the broker acknowledged every accepted record (the producer's
//!   `acks=all`, idempotent); `503` with `Retry-After` when it did not within `produce_timeout`, so a
//!   2xx never answers a record that is not durable. A retried request makes no duplicate event when
//!   its events carry `event_id` (or none: the id is derived from the content) — the pipeline's dedupe.
//! - Limits from the pipeline file: events per request, bytes per request (`413`), bytes per event (an
//!   item error). Malformed JSON is `400`.
//! - `GET /healthz`, `GET /readyz`.
//!
//! Still to come (issue 23): HMAC-signed bodies, mTLS, per-key rate limits, `Idempotency-Key`,
//! `/openapi.json`, the load benchmark.

mod config;
mod handler;

pub use config::{ApiKeyConfig, Caller, IngestConfig, IngestConfigError, IngestSettings};
pub use handler::{router, IngestState, ItemError};

use anyhow::{Context, Result};

/// Serves the API until the process is stopped.
pub fn serve(config: &crate::PipelineConfig) -> Result<()> {
    let settings = IngestSettings::new(&config.ingest)?;
    let state = IngestState::new(config, settings.clone())?;
    let runtime = touchpoint_connectors::io_runtime("touchpoint-ingest").context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&settings.listen)
            .await
            .with_context(|| format!("listening on {}", settings.listen))?;
        tracing::info!(listen = %settings.listen, topic = %state.topic(), "ingestion API on POST /automation/events");
        axum::serve(listener, router(state)).with_graceful_shutdown(shutdown()).await.context("ingestion API")
    })
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("ingestion API stopping: requests in flight finish first");
}
