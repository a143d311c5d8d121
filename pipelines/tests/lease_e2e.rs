//! One instance at a time (issue 21). Two `touchpoint run` of one pipeline group (a rolling deploy
//! with surge) used to run side by side, each deciding and sending from its own copy of the keyed
//! state; a `touchpoint replay` during a live run did the same. Now the second `run` waits for the
//! pipeline's lease (`connectors/src/kafka/lease.rs`) and takes over when the first stops, and a
//! `replay` during a live run fails at once with a message.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{assert_allowed_sent_once, end_offsets, KillOnDrop, TestPipeline};

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Until `path` contains `needle`, at most `limit`.
fn wait_for_log(path: &Path, needle: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if log_of(path).contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn sigterm(child: &Child) {
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
}

#[test]
fn a_second_run_waits_for_the_first_and_a_replay_during_a_live_run_is_refused() {
    let tp = TestPipeline::new("it_lease", &[common::RULES]);
    tp.prepare();
    let first_batch = tp.produce(3_000, 71);
    let tmp = std::env::temp_dir();
    let (log_a, log_b) = (tmp.join(format!("{}-a.log", tp.name)), tmp.join(format!("{}-b.log", tp.name)));
    let mut killer = KillOnDrop::default();

    let mut a = common::spawn_run(&tp, &log_a);
    killer.watch(&a);
    assert!(wait_for_log(&log_a, "lease taken", Duration::from_secs(60)), "A takes the lease:\n{}", log_of(&log_a));

    // B starts while A runs: it waits, and reads nothing (no restore, no source).
    let mut b = common::spawn_run(&tp, &log_b);
    killer.watch(&b);
    assert!(
        wait_for_log(&log_b, "another instance of this pipeline is running", Duration::from_secs(60)),
        "B says it waits:\n{}",
        log_of(&log_b)
    );
    let second_batch = tp.produce(3_000, 72);
    std::thread::sleep(Duration::from_secs(3));
    assert!(b.try_wait().unwrap().is_none(), "B keeps waiting while A runs");
    assert!(!log_of(&log_b).contains("lease taken"), "B must not run beside A:\n{}", log_of(&log_b));

    // A replay during the live run fails at once, naming the reason.
    let started = Instant::now();
    let replay = Command::new(env!("CARGO_BIN_EXE_touchpoint"))
        .args(["replay", "--config"])
        .arg(&tp.path)
        .args(["--from", "1h"])
        .output()
        .expect("running touchpoint replay");
    let stderr = String::from_utf8_lossy(&replay.stderr);
    assert!(!replay.status.success(), "a replay beside a live run is refused:\n{stderr}");
    assert!(stderr.contains("is running (it holds the lease"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "refused in {:?}", started.elapsed());

    // A stops; B takes over at once and processes what is left.
    sigterm(&a);
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(a.try_wait().unwrap().and_then(|s| s.code()), Some(0), "A stops cleanly:\n{}", log_of(&log_a));
    assert!(wait_for_log(&log_b, "lease taken", Duration::from_secs(30)), "B takes over:\n{}", log_of(&log_b));
    let produced: Vec<_> = first_batch.into_iter().chain(second_batch).collect();
    let ends = end_offsets(&produced);
    let deadline = Instant::now() + Duration::from_secs(120);
    while tp.committed_offsets() != ends && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(tp.committed_offsets(), ends, "B processed everything:\n{}", log_of(&log_b));
    sigterm(&b);
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }

    // Whoever processed it, each event is stored once and each allowed decision sent once.
    let stored = tp.stored_ids();
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(doubled.is_empty(), "events stored twice: {doubled:?}");
    assert_eq!(stored.len(), touchpoint_generate::valid_event_ids(&produced).len(), "every valid event is stored");
    assert_allowed_sent_once(&tp, "after a hand-over between two instances");
}
