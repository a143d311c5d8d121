//! A stop during an outage ends in bounded time (issue 21). With ClickHouse down, the open epochs
//! cannot become durable; a SIGTERM used to wait for them forever ("stop requested: finishing open
//! epochs", then nothing). Now the process exits after the grace period with a message and a non-zero
//! code, a second SIGTERM exits at once, and nothing is lost or doubled: the open epochs' offsets were
//! not committed, so the next run reads them again.
//!
//! This stops the stack's ClickHouse (`deploy/scripts/stack.sh stop clickhouse`); it is the only test
//! of its binary, and cargo runs test binaries one after the other.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{end_offsets, runtime, TestPipeline};

fn stack(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/scripts/stack.sh");
    let status = Command::new("bash").arg(script).args(args).status().expect("running stack.sh");
    assert!(status.success(), "stack.sh {args:?} failed");
}

fn sigterm(child: &Child) {
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
}

/// Waits for `child` to exit, at most `limit`; its exit code, or `None` if it is still running.
fn exited_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Until ClickHouse holds at least `rows` events (the pipeline is mid-stream).
fn wait_for_rows(tp: &TestPipeline, rows: u64) {
    let (rt, store) = (runtime(), tp.store());
    let deadline = Instant::now() + Duration::from_secs(120);
    while rt.block_on(store.count()).unwrap_or(0) < rows && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stop_during_a_clickhouse_outage_ends_in_bounded_time_and_loses_nothing() {
    let tp = TestPipeline::new(
        "it_shutdown",
        &[common::RULES, ("interval: 200ms", "interval: 50ms"), ("max_records: 50000", "max_records: 500")],
    );
    tp.prepare();
    let produced = tp.produce(40_000, 41);
    let valid = touchpoint_generate::valid_event_ids(&produced);
    let log = std::env::temp_dir().join(format!("{}.log", tp.name));

    // One SIGTERM during the outage: the process exits after the grace period, not never.
    let mut first = common::spawn_run(&tp, &log);
    wait_for_rows(&tp, 2_000);
    stack(&["stop", "clickhouse"]);
    std::thread::sleep(Duration::from_secs(2));
    sigterm(&first);
    let code = exited_within(&mut first, Duration::from_secs(60));
    stack(&["start", "clickhouse"]);
    assert_eq!(code, Some(3), "a stop that cannot finish exits within the grace period, with code 3");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("stop did not finish in time"), "the log says why");

    // Two SIGTERMs during the outage: the second exits at once.
    let mut second = common::spawn_run(&tp, &log);
    wait_for_rows(&tp, runtime().block_on(tp.store().count()).unwrap_or(0) + 1_000);
    stack(&["stop", "clickhouse"]);
    std::thread::sleep(Duration::from_secs(2));
    sigterm(&second);
    std::thread::sleep(Duration::from_secs(2));
    let still_running = second.try_wait().unwrap().is_none();
    sigterm(&second);
    let code = exited_within(&mut second, Duration::from_secs(5));
    stack(&["start", "clickhouse"]);
    assert!(still_running, "one SIGTERM waits for the open epochs (within the grace period)");
    assert_eq!(code, Some(3), "the second SIGTERM exits at once");

    // A last run to the end: every valid event stored once, every offset committed.
    let report =
        touchpoint::run(tp.config.clone(), touchpoint::RunOptions { until_drained: true, ..Default::default() })
            .expect("the run after the interrupted ones");
    assert!(report.totals.tally.received > 0);
    let stored = tp.stored_ids();
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(doubled.is_empty(), "events stored twice: {doubled:?}");
    assert_eq!(stored.into_keys().collect::<BTreeSet<_>>(), valid);
    assert_eq!(tp.committed_offsets(), end_offsets(&produced));
}
