//! Crash test: SIGKILL the pipeline process mid-stream (three times), restart it, and check that
//! ClickHouse holds every valid event exactly once.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{end_offsets, runtime, TestPipeline};
use touchpoint_generate::valid_event_ids;

#[test]
fn sigkill_mid_stream_then_restart_loses_and_duplicates_nothing() {
    // Small epochs so that a kill lands between inserts and commits, with many in flight.
    let tp = TestPipeline::new(
        "it_crash",
        &[("interval: 200ms", "interval: 20ms"), ("max_records: 50000", "max_records: 150")],
    );
    tp.prepare();
    let produced = tp.produce(20_000, 11);
    let valid = valid_event_ids(&produced);

    let binary = env!("CARGO_BIN_EXE_touchpoint");
    let log = |n: usize| std::fs::File::create(std::env::temp_dir().join(format!("{}-{n}.log", tp.name))).unwrap();
    let rt = runtime();
    let store = tp.store();
    let mut killed_at = Vec::new();
    for kill in 0..3 {
        let before = rt.block_on(store.count()).unwrap();
        let mut child = Command::new(binary)
            .args(["run", "--config"])
            .arg(&tp.path)
            .args(["--workers", "2"])
            .stdout(Stdio::null())
            .stderr(log(kill))
            .spawn()
            .expect("starting touchpoint");
        // Kill mid-stream at a different moment each round: (0) right after the first inserts, before
        // anything is committed; (1) and (2) after this run stored more rows and (usually) committed
        // offsets, so that inserts, produces and commits are all in flight when the process dies.
        let committed_before: i64 = tp.committed_offsets().values().sum();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let stored = rt.block_on(store.count()).unwrap();
            let ready = match kill {
                0 => stored >= before + 1_000,
                // Prefer a moment after a commit; don't wait past 4,000 more rows for one (commits trail
                // the dead-letter acknowledgements, which are slow on the local broker).
                _ => {
                    stored >= before + 2_000
                        && (stored >= before + 4_000 || tp.committed_offsets().values().sum::<i64>() > committed_before)
                }
            };
            if ready || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().expect("SIGKILL"); // std's Child::kill sends SIGKILL on Unix
        child.wait().unwrap();
        killed_at.push(rt.block_on(store.count()).unwrap());
    }
    assert!(
        killed_at.last().copied().unwrap_or_default() < valid.len() as u64,
        "the kills must happen mid-stream: stored rows at each kill {killed_at:?} of {}",
        valid.len()
    );

    let status = Command::new(binary)
        .args(["run", "--config"])
        .arg(&tp.path)
        .args(["--workers", "2", "--until-drained"])
        .stdout(Stdio::null())
        .stderr(log(99))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "final run failed: see {}",
        std::env::temp_dir().join(format!("{}-99.log", tp.name)).display()
    );

    let stored = tp.stored_ids();
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(doubled.is_empty(), "stored more than once after the crashes: {doubled:?}");
    let stored: BTreeSet<String> = stored.into_keys().collect();
    let missing: Vec<_> = valid.difference(&stored).take(5).collect();
    let unexpected: Vec<_> = stored.difference(&valid).take(5).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "missing {missing:?}, unexpected {unexpected:?} (kills at {killed_at:?})"
    );
    assert_eq!(tp.committed_offsets(), end_offsets(&produced));
}

/// SIGTERM: the pipeline stops reading, finishes its open epochs, commits, and exits 0. A restart then
/// finds nothing already stored past the committed offsets (the commit covered every stored row).
#[test]
fn sigterm_finishes_open_epochs_and_commits_before_exiting() {
    let tp = TestPipeline::new(
        "it_term",
        &[("interval: 200ms", "interval: 20ms"), ("max_records: 50000", "max_records: 150")],
    );
    tp.prepare();
    let produced = tp.produce(10_000, 13);
    let valid = valid_event_ids(&produced);
    let binary = env!("CARGO_BIN_EXE_touchpoint");
    let rt = runtime();
    let store = tp.store();

    let mut child = Command::new(binary)
        .args(["run", "--config"])
        .arg(&tp.path)
        .args(["--workers", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while rt.block_on(store.count()).unwrap() < 2_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful stop must exit 0, got {exit:?}");
    let stored_at_stop = rt.block_on(store.count()).unwrap();
    assert!(stored_at_stop < valid.len() as u64, "stopped mid-stream ({stored_at_stop} of {})", valid.len());

    let out = Command::new(binary)
        .args(["run", "--config"])
        .arg(&tp.path)
        .args(["--workers", "2", "--until-drained"])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("already stored  0\n"), "the stop committed everything it stored:\n{summary}");
    let stored = tp.stored_ids();
    assert!(stored.values().all(|n| *n == 1));
    assert_eq!(stored.into_keys().collect::<BTreeSet<_>>(), valid);
    assert_eq!(tp.committed_offsets(), end_offsets(&produced));
}
