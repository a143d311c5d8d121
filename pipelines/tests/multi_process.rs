//! Two `touchpoint run` processes form one timely computation (`--processes 2 --process i --hostfile`):
//! together they store every valid event once and commit every partition to its end; under
//! `exactly_once_v2`, a process killed mid-run leaves no send doubled or lost (one transaction commits
//! the whole job's epoch: docs/exactly-once.md, "One committer, also with several processes").

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Command, Stdio};

use common::{assert_allowed_sent_once, end_offsets, KillOnDrop, TestPipeline};
use touchpoint_generate::valid_event_ids;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn_processes(
    tp: &TestPipeline,
    hostfile: &std::path::Path,
    log: &str,
    until_drained: bool,
) -> Vec<std::process::Child> {
    (0..2)
        .map(|i| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_touchpoint"));
            c.args(["run", "--config"])
                .arg(&tp.path)
                .args(["--workers", "1", "--processes", "2", "--process", &i.to_string(), "--hostfile"])
                .arg(hostfile);
            if until_drained {
                c.arg("--until-drained");
            }
            c.stdout(Stdio::piped())
                .stderr(std::fs::File::create(std::env::temp_dir().join(format!("{}-{log}-{i}.log", tp.name))).unwrap())
                .spawn()
                .unwrap()
        })
        .collect()
}

#[test]
fn two_processes_share_the_partitions_and_the_work() {
    let tp = TestPipeline::new("it_procs", &[]);
    tp.prepare();
    let produced = tp.produce(4_000, 5);
    let valid = valid_event_ids(&produced);

    let hostfile = std::env::temp_dir().join(format!("{}.hosts", tp.name));
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();
    let children: Vec<_> = (0..2)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_touchpoint"))
                .args(["run", "--config"])
                .arg(&tp.path)
                .args(["--workers", "1", "--processes", "2", "--process", &i.to_string(), "--hostfile"])
                .arg(&hostfile)
                .arg("--until-drained")
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(std::env::temp_dir().join(format!("{}-{i}.log", tp.name))).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for (i, out) in outputs.iter().enumerate() {
        assert!(out.status.success(), "process {i} failed; see {}-{i}.log", tp.name);
    }
    // Process 0 hosts worker 0, which sums the tallies of both processes.
    let summary = String::from_utf8_lossy(&outputs[0].stdout);
    assert!(summary.contains("in              4000"), "{summary}");

    let stored = tp.stored_ids();
    assert!(stored.values().all(|n| *n == 1));
    assert_eq!(stored.into_keys().collect::<BTreeSet<_>>(), valid);
    assert_eq!(tp.committed_offsets(), end_offsets(&produced));
    std::fs::remove_file(hostfile).ok();
}

/// Under Kafka transactions, process 1 is SIGKILLed after the job committed some epochs (process 0 goes
/// down with the computation), then both restart: every allowed send is on its topic exactly once,
/// every event stored once, every partition committed to its end. With a transaction per process this
/// is where sends would be lost: process 0's offsets committed, process 1's share of the same epochs'
/// effects aborted.
#[test]
fn a_process_killed_under_transactions_loses_and_doubles_nothing() {
    // Small epochs: with the default 50,000-record cap the whole input can commit in one transaction
    // before the test sees a commit, and the kill would come after the end.
    let tp = TestPipeline::new(
        "it_procs_eos",
        &[
            ("guarantee: exactly_once_keys", "guarantee: exactly_once_v2"),
            ("max_records: 50000", "max_records: 1000"),
            ("max_in_flight: 8", "max_in_flight: 2"),
        ],
    );
    tp.prepare();
    let produced = tp.produce(40_000, 11);
    let valid = valid_event_ids(&produced);
    let ends = end_offsets(&produced);
    let hostfile = std::env::temp_dir().join(format!("{}.hosts", tp.name));
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port())).unwrap();

    let mut guard = KillOnDrop::default();
    let mut first = spawn_processes(&tp, &hostfile, "first", false);
    first.iter().for_each(|c| guard.watch(c));
    let total: i64 = ends.values().sum();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let committed: i64 = tp.committed_offsets().values().sum();
        if committed > 0 {
            assert!(committed < total, "the kill must come mid-stream: {committed} of {total} committed");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "nothing committed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    first[1].kill().unwrap();
    first[1].wait().unwrap();
    // Process 0 loses its peer; whether it notices by itself or not, it goes too.
    std::thread::sleep(std::time::Duration::from_secs(2));
    first[0].kill().ok();
    first[0].wait().unwrap();

    let second = spawn_processes(&tp, &hostfile, "second", true);
    second.iter().for_each(|c| guard.watch(c));
    for (i, out) in second.into_iter().map(|c| c.wait_with_output().unwrap()).enumerate() {
        assert!(out.status.success(), "process {i} of the restart failed; see {}-second-{i}.log", tp.name);
    }

    assert_allowed_sent_once(&tp, "although a process died mid-transaction");
    let stored = tp.stored_ids();
    assert!(stored.values().all(|n| *n == 1));
    assert_eq!(stored.into_keys().collect::<BTreeSet<_>>(), valid);
    assert_eq!(tp.committed_offsets(), ends);
    std::fs::remove_file(hostfile).ok();
}
