//! `touchpoint ingest`: the signed ingestion API, `POST /automation/events`.
//!
//! Product apps send one event or a batch over HTTP instead of producing to Kafka themselves. Every
//! event goes through the pipeline's own normalizer first, so a caller learns at once which items are
//! wrong (index, code, message: the dead-letter codes) and only valid ones are produced to the events
//! topic, where the pipeline normalizes, dedupes and decides as for any producer.
//!
//! - Auth (`auth`): a bearer API key (the file holds its SHA-256), an HMAC-signed body (Standard
//!   Webhooks headers, a replay window), or a client certificate (mTLS, `tls`). The tenant comes from
//!   the credential, never from the body: an event naming another tenant makes the request `403`.
//! - `202 Accepted` only once the broker acknowledged every accepted record (the producer's
//!   `acks=all`, idempotent); `503` with `Retry-After` when it did not, so a 2xx never answers a
//!   record that is not durable.
//! - Protection (`guard`): events per second per credential (`429`), an idempotency cache (a retried
//!   request gets its first answer and produces nothing), request and event sizes (`413`), read
//!   timeouts for slow clients (`408`, and the connection closed when headers are slow).
//! - `GET /healthz`, `GET /readyz`, `GET /openapi.json`.
//! - The internal API, on its own listener (`internal_listen`) for credentials marked `internal`:
//!   `POST /internal/automation/trigger` starts a journey or fires an intent rule for a subject, as an
//!   `automation_triggered` event through the same pipeline (audited like any event);
//!   `POST /internal/automation/evaluate` asks the pipeline worker holding the subject whether a message
//!   would be allowed now (`evaluate`: request and reply topics through the dataflow).

mod auth;
mod config;
mod evaluate;
mod guard;
mod handler;
mod tls;

pub use auth::{certificate_names, PeerIdentity, KEY_ID_HEADER, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP};
pub use config::{ApiKeyConfig, Caller, IngestConfig, IngestConfigError, IngestSettings, TlsConfig};
pub use handler::{internal_router, router, IngestState, ItemError, OPENAPI};

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt;

/// How long requests in flight get to finish after SIGTERM.
const DRAIN: Duration = Duration::from_secs(30);

/// Serves the API (and the internal API when `internal_listen` is set) until the process is stopped
/// (SIGTERM or Ctrl-C).
pub fn serve(config: &crate::PipelineConfig) -> Result<()> {
    use futures::FutureExt;
    let settings = IngestSettings::new(&config.ingest)?;
    let tls = settings.tls.as_ref().map(tls::acceptor).transpose()?;
    let runtime = touchpoint_connectors::io_runtime("touchpoint-ingest").context("starting the async runtime")?;
    runtime.block_on(async move {
        let producer = touchpoint_connectors::kafka::AckedProducer::new(&config.kafka)?;
        let evaluator = match &settings.internal_listen {
            Some(_) => Some(evaluate::Evaluator::start(config, producer.clone()).await?),
            None => None,
        };
        let state = std::sync::Arc::new(IngestState::new(config, settings.clone(), producer, evaluator)?);
        let bind = |listen: String| async move {
            tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("listening on {listen}"))
        };
        let listener = bind(settings.listen.clone()).await?;
        let internal = match &settings.internal_listen {
            Some(listen) => Some(bind(listen.clone()).await?),
            None => None,
        };
        tracing::info!(
            listen = %settings.listen, internal = ?settings.internal_listen, topic = %state.topic(), https = tls.is_some(),
            "ingestion API on POST /automation/events"
        );
        let stop = shutdown().shared();
        let public = run(listener, router(state.clone()), tls.clone(), settings.read_timeout, stop.clone());
        match internal {
            Some(l) => {
                let internal = run(l, internal_router(state), tls, settings.read_timeout, stop);
                tokio::join!(public, internal);
            }
            None => public.await,
        }
        Ok(())
    })
}

/// The accept loop: TLS (with the client certificate's names put on every request of the connection),
/// HTTP/1.1 with a header read timeout, and a drain of the connections when `stop` completes.
pub async fn run(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    read_timeout: Duration,
    stop: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // A client that does not send its headers in time is disconnected (slowloris).
    http.timer(TokioTimer::new()).header_read_timeout(read_timeout);
    tokio::pin!(stop);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "ingest: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, tls, http, watcher) = (app.clone(), tls.clone(), http.clone(), graceful.watcher());
        tokio::spawn(async move {
            match tls {
                None => {
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await;
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(read_timeout, acceptor.accept(stream)).await;
                    let stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return tracing::info!(%remote, error = %e, "ingest: TLS handshake refused"),
                        Err(_) => return tracing::info!(%remote, "ingest: TLS handshake timed out"),
                    };
                    let peer = PeerIdentity {
                        names: stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|leaf| certificate_names(leaf))
                            .unwrap_or_default(),
                    };
                    let app = app.map_request(move |mut request: axum::http::Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(peer.clone());
                        request
                    });
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await;
                }
            }
        });
    }
    drop(listener);
    tracing::info!("ingestion API stopping: requests in flight finish first");
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("ingest: requests still in flight after {DRAIN:?}; stopping anyway");
    }
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
}
