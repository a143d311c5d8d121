//! The pipeline's metrics, in the Prometheus text format on `pipeline.metrics_listen` (`GET /metrics`).
//!
//! What an operator watches during an outage: a sink that cannot write keeps retrying and holds its
//! epochs, so the source offsets are not committed; `touchpoint_commit_lag_records` (records read past
//! the last committed offsets, up to the broker's end) and `touchpoint_seconds_since_commit` grow, and
//! `touchpoint_sink_retrying_epochs{sink}` names the sink. Counters are process-wide; gauges are summed
//! over this process's workers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A monotonically increasing count.
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Self::new()
    }
}

/// Allowed sends handed to the connector topics.
pub static SENDS_EMITTED: Counter = Counter::new();
/// Sends skipped because the send ledger already held their key.
pub static SENDS_ALREADY_EMITTED: Counter = Counter::new();
/// Suppressed intents skipped because the send ledger already held their key.
pub static SUPPRESSED_ALREADY_DECIDED: Counter = Counter::new();
/// Failed sink writes (each is retried).
pub static SINK_WRITE_FAILURES: Counter = Counter::new();
/// Offset commits made.
pub static COMMITS: Counter = Counter::new();

/// Per sink: epochs whose write has failed at least once and is still being retried.
static SINK_RETRYING: Mutex<BTreeMap<&'static str, i64>> = Mutex::new(BTreeMap::new());
/// Per worker: (records past the committed offsets, seconds since the last commit while behind).
static WORKER_LAG: Mutex<BTreeMap<usize, (i64, u64)>> = Mutex::new(BTreeMap::new());

/// A sink's epoch started (`+1`) or stopped (`-1`) retrying.
pub fn sink_retrying(sink: &'static str, delta: i64) {
    if let Ok(mut m) = SINK_RETRYING.lock() {
        *m.entry(sink).or_default() += delta;
    }
}

/// A worker's current commit lag.
pub fn worker_lag(worker: usize, records: i64, seconds_since_commit: u64) {
    if let Ok(mut m) = WORKER_LAG.lock() {
        m.insert(worker, (records, seconds_since_commit));
    }
}

/// Everything, in the Prometheus text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    };
    counter(
        &mut out,
        "touchpoint_sends_already_emitted_total",
        "Sends skipped because the send ledger already held their idempotency key.",
        SENDS_ALREADY_EMITTED.get(),
    );
    counter(
        &mut out,
        "touchpoint_suppressed_already_decided_total",
        "Suppressed intents skipped because the send ledger already held their idempotency key.",
        SUPPRESSED_ALREADY_DECIDED.get(),
    );
    counter(
        &mut out,
        "touchpoint_sends_emitted_total",
        "Allowed sends handed to the connector topics.",
        SENDS_EMITTED.get(),
    );
    counter(
        &mut out,
        "touchpoint_sink_write_failures_total",
        "Failed sink writes (retried).",
        SINK_WRITE_FAILURES.get(),
    );
    counter(&mut out, "touchpoint_commits_total", "Source offset commits.", COMMITS.get());
    let _ = writeln!(
        out,
        "# HELP touchpoint_sink_retrying_epochs Epochs a sink is retrying.\n\
         # TYPE touchpoint_sink_retrying_epochs gauge"
    );
    if let Ok(m) = SINK_RETRYING.lock() {
        for (sink, n) in m.iter() {
            let _ = writeln!(out, "touchpoint_sink_retrying_epochs{{sink=\"{sink}\"}} {n}");
        }
    }
    let (records, seconds) = WORKER_LAG
        .lock()
        .map(|m| (m.values().map(|(r, _)| *r).sum::<i64>(), m.values().map(|(_, s)| *s).max().unwrap_or(0)))
        .unwrap_or((0, 0));
    let _ = writeln!(
        out,
        "# HELP touchpoint_commit_lag_records Records past the committed source offsets (read or not yet read).\n\
         # TYPE touchpoint_commit_lag_records gauge\ntouchpoint_commit_lag_records {records}"
    );
    let _ = writeln!(
        out,
        "# HELP touchpoint_seconds_since_commit Seconds since a worker with uncommitted records last committed.\n\
         # TYPE touchpoint_seconds_since_commit gauge\ntouchpoint_seconds_since_commit {seconds}"
    );
    out
}

/// Serves `GET /metrics` on `listen` until the runtime stops.
pub async fn serve(listen: String) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let app = axum::Router::new().route("/metrics", axum::routing::get(|| async { render() }));
    let listener =
        tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("metrics: listening on {listen}"))?;
    tracing::info!(%listen, "serving metrics on /metrics");
    axum::serve(listener, app).await.context("metrics server")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_every_metric_with_its_value() {
        SENDS_ALREADY_EMITTED.add(3);
        sink_retrying("ClickHouseEvents", 1);
        worker_lag(7, 120, 9);
        let text = render();
        assert!(text.contains("touchpoint_sends_already_emitted_total "), "{text}");
        assert!(text.contains("touchpoint_sink_retrying_epochs{sink=\"ClickHouseEvents\"} 1"), "{text}");
        assert!(text.contains("touchpoint_commit_lag_records 120\n"), "{text}");
        sink_retrying("ClickHouseEvents", -1);
        assert!(render().contains("touchpoint_sink_retrying_epochs{sink=\"ClickHouseEvents\"} 0"));
    }
}
