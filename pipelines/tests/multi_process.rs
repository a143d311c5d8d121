//! Two `touchpoint run` processes form one timely computation (`--processes 2 --process i --hostfile`):
//! together they store every valid event once and commit every partition to its end.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Command, Stdio};

use common::{end_offsets, TestPipeline};
use touchpoint::generate::valid_event_ids;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
