//! `processing.guarantee: exactly_once_v2` against the real broker's transactions: two instances of one
//! pipeline started at once — the fenced one stops with a clear message, and no send reaches the
//! connector topics twice. (The 20×SIGKILL test under transactions is in `exactly_once_e2e.rs`.)

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

#[test]
fn a_second_instance_fences_the_first_and_no_send_is_doubled() {
    let tp = TestPipeline::new("it_fence", &[("guarantee: exactly_once_keys", "guarantee: exactly_once_v2")]);
    tp.prepare();
    let produced = tp.produce(30_000, 7);
    let ends = end_offsets(&produced);

    let mut a = start(&tp, "a");
    let mut b = start(&tp, "b");
    let mut guard = KillOnDrop::default();
    guard.watch(&a);
    guard.watch(&b);
    // One of them registers the transactional id last and fences the other, which must stop by itself
    // once it tries to commit.
    let deadline = Instant::now() + Duration::from_secs(180);
    let (fenced, survivor, fenced_log) = loop {
        if let Some(status) = a.try_wait().expect("status") {
            break (status, b, "a");
        }
        if let Some(status) = b.try_wait().expect("status") {
            break (status, a, "b");
        }
        assert!(Instant::now() < deadline, "neither instance was fenced");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!fenced.success(), "the fenced instance exits with an error");
    let message = log_of(&tp, fenced_log);
    assert!(
        message.contains("fenced: another instance with transactional.id") && message.contains(".transactions"),
        "the fenced instance says why it stopped: {}",
        message.lines().filter(|l| l.contains("ERROR")).collect::<Vec<_>>().join("\n")
    );

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

    assert_allowed_sent_once(&tp, "although both instances processed the input");
    // Every valid event is stored. (The instance that was fenced wrote ClickHouse rows for the epochs it
    // processed before its first commit failed; `events` is a plain MergeTree deduplicated by insert
    // token, so those may stand twice: docs/exactly-once.md, "Fencing".)
    let stored = tp.stored_ids();
    let valid = touchpoint_generate::valid_event_ids(&produced);
    assert_eq!(stored.keys().cloned().collect::<BTreeSet<_>>(), valid, "every valid event stored");
    eprintln!(
        "events stored twice (by the fenced instance's first epochs): {}",
        stored.values().filter(|n| **n > 1).count()
    );
}
