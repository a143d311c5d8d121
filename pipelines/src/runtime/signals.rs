//! Stopping on SIGINT/SIGTERM, in bounded time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a requested stop may take. Normally the open epochs become durable and commit well within
/// it; with a sink or the schema registry down they cannot, and the process exits anyway with a
/// message. Nothing is lost: their offsets are not committed, so they are read again at the next start,
/// as after a crash (docs/exactly-once.md).
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit code of a stop that could not finish (grace period over, or a second signal).
pub const EXIT_STOP_UNFINISHED: i32 = 3;

/// SIGINT/SIGTERM: stop reading, finish the open epochs, commit, exit. A second signal, or
/// [`SHUTDOWN_TIMEOUT`] after the first, exits at once without committing what is not durable.
pub fn spawn_signal_handler(runtime: &tokio::runtime::Runtime, stop: Arc<AtomicBool>) {
    runtime.spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!(timeout = ?SHUTDOWN_TIMEOUT, "stop requested: finishing open epochs");
        stop.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::warn!("second stop request: exiting now"),
            _ = term.recv() => tracing::warn!("second stop request: exiting now"),
            _ = tokio::time::sleep(SHUTDOWN_TIMEOUT) => tracing::error!(
                timeout = ?SHUTDOWN_TIMEOUT,
                "stop did not finish in time (a sink or the schema registry unavailable?)",
            ),
        }
        tracing::error!("exiting without committing the open epochs: they are read again at the next start");
        std::process::exit(EXIT_STOP_UNFINISHED);
    });
}
