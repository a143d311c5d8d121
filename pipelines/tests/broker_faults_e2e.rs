//! Broker faults: the local Kafka broker is SIGKILLed in the middle of a run and started again (its log
//! is on disk), and a command started while no broker answers says what it waits for.
//!
//! The first test kills the stack's own broker (by the PID `deploy/scripts/stack.sh` keeps), so it is
//! the only test of this binary: cargo runs test binaries one after the other.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{connector_keys, produce_json, query_lines, runtime, KillOnDrop, TestPipeline, RULES};
use serde_json::{json, Value};
use touchpoint_connectors::testing::{unique_name, Peers, ServiceAddresses};

const SUBJECTS: usize = 300;
/// App opens per subject, two hours apart: each is one allowed push (the push cap is 1 per rolling hour).
const OPENS: usize = 4;

fn touchpoint_home() -> PathBuf {
    std::env::var_os("TOUCHPOINT_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".touchpoint"))
}

fn stack(args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/scripts/stack.sh");
    let status = Command::new("bash").arg(script).args(args).status().expect("running stack.sh");
    assert!(status.success(), "stack.sh {args:?} failed");
}

/// SIGKILL to the local broker; returns its PID.
fn kill_broker() -> u32 {
    let pid_file = touchpoint_home().join("run/kafka.pid");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e} (this test needs the local stack's broker)", pid_file.display()))
        .trim()
        .parse()
        .expect("a PID");
    let status = Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("kill");
    assert!(status.success(), "kill -9 {pid}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    pid
}

fn start(tp: &TestPipeline, args: &[&str], log: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_touchpoint"))
        .args(args)
        .arg("--config")
        .arg(&tp.path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(std::env::temp_dir().join(format!("{}-{log}.log", tp.name))).expect("log"))
        .spawn()
        .expect("starting touchpoint")
}

fn stop(mut child: Child, what: &str) {
    assert!(child.try_wait().expect("status").is_none(), "{what} exited by itself during the run");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("SIGTERM");
    let status = child.wait().expect("exit");
    assert!(status.success(), "{what} did not stop cleanly: {status}");
}

fn wait_until(what: &str, secs: u64, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn events(half: usize) -> Vec<(String, Value)> {
    (0..SUBJECTS)
        .flat_map(|i| {
            (0..OPENS).filter(move |n| n % 2 == half).map(move |n| {
                let subject = format!("b-{i}");
                (
                    subject.clone(),
                    json!({"event_id": format!("{subject}-open-{n}"), "event_type": "app_opened",
                           "occurred_at": format!("2026-11-24T{:02}:00:00Z", 8 + 2 * n), "subject_id": subject,
                           "tenant_id": "acme", "attributes": {"device_token": format!("device-{i}")}}),
                )
            })
        })
        .collect()
}

/// Every record lands once and every allowed push reaches the provider exactly once, although the broker
/// died (SIGKILL) while the pipeline, a connector and `touchpoint deliveries` were working, stayed away
/// for a while (a connector started meanwhile waits for it), and came back with its log from disk.
#[test]
fn a_broker_killed_mid_run_and_restarted_loses_and_doubles_nothing() {
    let bucket = unique_name("brokerkill").replace('_', "-").to_lowercase();
    let push_path = format!("/push/{bucket}");
    let tp = TestPipeline::new("it_brokerkill", &[RULES, ("/push/local", push_path.as_str())]);
    tp.prepare();
    let peers = Peers::new(&ServiceAddresses::from_env());
    let received = || -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in runtime().block_on(peers.records(&bucket)).expect("peer records") {
            *m.entry(r["headers"]["idempotency-key"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        }
        m
    };
    let consent: Vec<(String, Value)> = (0..SUBJECTS)
        .map(|i| {
            let s = format!("b-{i}");
            (
                format!("acme/{s}/push/marketing"),
                json!({"subject_id": s, "tenant_id": "acme", "channel": "push", "purpose": "marketing",
                       "status": "granted", "updated_at": "2026-11-01T00:00:00Z", "source": "test"}),
            )
        })
        .collect();
    produce_json(&tp, &tp.config.topics.consent.name, consent);
    common::produce_profiles_of(&tp, "acme", (0..SUBJECTS).map(|i| format!("b-{i}")));
    produce_json(&tp, &tp.config.topics.events.name, events(0));

    let mut guard = KillOnDrop::default();
    let pipeline = start(&tp, &["run"], "run");
    let connector = start(&tp, &["connect", "--channel", "push", "--instance", "w1"], "push");
    guard.watch(&pipeline);
    guard.watch(&connector);
    let expected = SUBJECTS * OPENS;
    wait_until("the first pushes", 180, || received().len() >= SUBJECTS / 4);

    let pid = kill_broker();
    eprintln!("killed the broker (pid {pid}) with {} pushes received", received().len());
    // A command started while no broker answers waits for it (and says so) instead of failing.
    let deliveries = start(&tp, &["deliveries"], "deliveries");
    guard.watch(&deliveries);
    std::thread::sleep(Duration::from_secs(5));
    let restarted = Instant::now();
    stack(&["start", "kafka"]);
    eprintln!("broker back after {:?} of start-up", restarted.elapsed());
    produce_json(&tp, &tp.config.topics.events.name, events(1));

    wait_until("every push", 300, || received().len() >= expected);
    // Everything that was going to happen has: the deliveries land in ClickHouse too.
    let sent_rows = || {
        query_lines(
            &tp,
            "SELECT toString(uniqExact(idempotency_key)) AS line FROM deliveries FINAL WHERE status = 'sent'",
        )
        .first()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0)
    };
    wait_until("the deliveries in ClickHouse", 120, || sent_rows() >= expected);
    std::thread::sleep(Duration::from_secs(2));
    stop(connector, "the push connector");
    stop(deliveries, "touchpoint deliveries");
    stop(pipeline, "touchpoint run");

    let per_key = received();
    assert_eq!(per_key.len(), expected, "every allowed push reached the provider");
    let repeated: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(repeated.is_empty(), "pushes delivered more than once: {repeated:?}");

    let stored = tp.stored_ids();
    assert_eq!(stored.len(), expected, "every event stored");
    assert!(stored.values().all(|n| *n == 1), "an event stored twice");
    let allowed: BTreeSet<String> = query_lines(
        &tp,
        "SELECT idempotency_key AS line FROM decisions FINAL WHERE decision = 'allowed' AND channel = 'push'",
    )
    .into_iter()
    .collect();
    assert_eq!(allowed.len(), expected, "one allowed decision per app open");
    let on_topic: BTreeSet<String> = connector_keys(&tp).into_iter().map(|(k, _)| k).collect();
    assert_eq!(on_topic, allowed, "the connector topic holds exactly the allowed sends");
    assert_eq!(per_key.keys().cloned().collect::<BTreeSet<_>>(), allowed, "the provider got exactly those");
    assert_eq!(sent_rows(), expected);
}

/// `touchpoint run` with no broker at its address: a warning every few seconds that names what it waits
/// for, then a clear error once `kafka.startup_wait` is over. Never a silent hang.
#[test]
fn run_without_a_broker_says_what_it_waits_for_and_gives_up_in_time() {
    let dead = format!("127.0.0.1:{}", common::free_port());
    let brokers = format!("brokers: {}", ServiceAddresses::from_env().kafka_brokers);
    let dead_line = format!("brokers: {dead}");
    let tp = TestPipeline::new("it_nobroker", &[(&brokers, &dead_line), ("startup_wait: 60s", "startup_wait: 8s")]);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_touchpoint"))
        .args(["run", "--config"])
        .arg(&tp.path)
        .output()
        .expect("running touchpoint");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "run must fail without a broker");
    assert!(elapsed < Duration::from_secs(40), "gave up after {elapsed:?}, not about 8 s");
    assert!(
        stderr.contains("waiting for Kafka") && stderr.contains(&dead),
        "a warning that names the address while waiting: {stderr}"
    );
    assert!(
        stderr.contains(&format!("no Kafka broker answered at {dead} within 8s")),
        "a final error that names the address and the wait: {stderr}"
    );
}
