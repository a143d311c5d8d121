//! `processing.guarantee: exactly_once_v2` against the real broker's transactions. Two instances are
//! kept apart by the pipeline's lease (`lease_e2e.rs`); the transactions fence the case the lease cannot
//! see in time: an instance paused (a GC pause, a frozen VM, a network partition) past its session, whose
//! lease went to another instance meanwhile. On waking it must stop by itself, with a clear message,
//! and no send may reach the connector topics twice. (The 20×SIGKILL test under transactions is in
//! `exactly_once_e2e.rs`.)

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{assert_allowed_sent_once, end_offsets, KillOnDrop, TestPipeline};

fn start(tp: &TestPipeline, log: &str) -> Child {
    common::spawn_run(tp, &std::env::temp_dir().join(format!("{}-{log}.log", tp.name)))
}

fn log_of(tp: &TestPipeline, log: &str) -> String {
    std::fs::read_to_string(std::env::temp_dir().join(format!("{}-{log}.log", tp.name))).unwrap_or_default()
}

fn signal(child: &Child, signal: &str) {
    assert!(Command::new("kill").args([signal, &child.id().to_string()]).status().expect("kill").success());
}

#[test]
fn an_instance_paused_past_its_lease_stops_on_waking_and_no_send_is_doubled() {
    let tp = TestPipeline::new(
        "it_fence",
        &[("guarantee: exactly_once_keys", "guarantee: exactly_once_v2"), ("max_records: 50000", "max_records: 1000")],
    );
    tp.prepare();
    let produced = tp.produce(30_000, 7);
    let ends = end_offsets(&produced);

    let mut a = start(&tp, "a");
    let mut guard = KillOnDrop::default();
    guard.watch(&a);
    let deadline = Instant::now() + Duration::from_secs(120);
    while tp.committed_offsets().values().sum::<i64>() < 2_000 {
        assert!(Instant::now() < deadline, "A commits nothing:\n{}", log_of(&tp, "a"));
        std::thread::sleep(Duration::from_millis(50));
    }
    // A freezes mid-stream; B starts, gets the lease once A's session expires, and registers the
    // transactional id (A's open transaction is aborted).
    signal(&a, "-STOP");
    let b = start(&tp, "b");
    guard.watch(&b);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !log_of(&tp, "b").contains("transactions initialized") {
        assert!(Instant::now() < deadline, "B never took over:\n{}", log_of(&tp, "b"));
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(&a, "-CONT");
    // Woken, A finds its commit fenced (or its lease gone) and stops by itself.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = a.try_wait().expect("status") {
            break status;
        }
        assert!(Instant::now() < deadline, "the woken instance never stopped:\n{}", log_of(&tp, "a"));
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!status.success(), "the stale instance exits with an error");
    let message = log_of(&tp, "a");
    assert!(
        (message.contains("fenced: another instance with transactional.id") && message.contains(".transactions"))
            || message.contains("lost the pipeline's lease"),
        "the stale instance says why it stopped: {}",
        message.lines().filter(|l| l.contains("ERROR")).collect::<Vec<_>>().join("\n")
    );
    let survivor = b;

    // The survivor processes everything and commits the end of every partition.
    let mut survivor = survivor;
    let deadline = Instant::now() + Duration::from_secs(240);
    while tp.committed_offsets() != ends {
        assert!(survivor.try_wait().expect("status").is_none(), "the surviving instance stopped");
        assert!(Instant::now() < deadline, "committed {:?}, produced {ends:?}", tp.committed_offsets());
        std::thread::sleep(Duration::from_millis(500));
    }
    Command::new("kill").args(["-TERM", &survivor.id().to_string()]).status().expect("SIGTERM");
    assert!(survivor.wait().expect("exit").success(), "the survivor stops cleanly");

    assert_allowed_sent_once(&tp, "although both instances processed part of the input");
    // Every valid event is stored. (The stale instance wrote ClickHouse rows for the epoch it had open
    // when it froze; `events` is a plain MergeTree deduplicated by insert token, so those may stand
    // twice: docs/exactly-once.md, "Fencing".)
    let stored = tp.stored_ids();
    let valid = touchpoint_generate::valid_event_ids(&produced);
    assert_eq!(stored.keys().cloned().collect::<BTreeSet<_>>(), valid, "every valid event stored");
    eprintln!(
        "events stored twice (by the stale instance's open epoch): {}",
        stored.values().filter(|n| **n > 1).count()
    );
}
