//! Event time end to end on the real services: watermarks per partition, idle partitions, and both
//! late-event policies.
//!
//! The source topic has 4 partitions read by 2 workers. A first batch goes to partition 0 only, so the
//! watermark can only form once partitions 1–3 are detected idle (no event for `idle_timeout`, read to
//! their end). A second batch then brings events far behind the watermark (on partition 0, and on
//! partition 1, which wakes up with old events), an event behind its partition's newest event but within
//! the allowed lateness, and on-time events. With `route` the late ones go to the late-events topic (and
//! nowhere else); with `flag` they are stored and decided, marked late.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{runtime, TestPipeline};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use touchpoint_connectors::kafka::{read_all, ReadRecord};
use touchpoint_schemas::headers;

/// The stream's reference time; the local profile allows 1 h of lateness.
const T0_MS: i64 = 1_795_168_800_000; // 2026-11-20T10:00:00Z
const MINUTE: i64 = 60_000;

struct Event {
    id: String,
    event_type: &'static str,
    at_ms: i64,
    partition: i32,
}

fn event(id: &str, event_type: &'static str, at_ms: i64, partition: i32) -> Event {
    Event { id: id.into(), event_type, at_ms, partition }
}

fn produce(tp: &TestPipeline, events: &[Event]) {
    let producer: FutureProducer = tp.config.kafka.producer_config().create().expect("producer");
    let rt = runtime();
    common::produce_profiles_of(tp, "acme", events.iter().map(|e| format!("s-{}", e.id)));
    for e in events {
        let subject = format!("s-{}", e.id);
        let payload = json!({"event_id": e.id, "event_type": e.event_type,
            "occurred_at": chrono::DateTime::from_timestamp_millis(e.at_ms).expect("time").to_rfc3339(),
            "subject_id": subject, "tenant_id": "acme", "attributes": {"email": format!("{subject}@example.com")}})
        .to_string();
        let record =
            FutureRecord::to(&tp.config.topics.events.name).partition(e.partition).key(&subject).payload(&payload);
        rt.block_on(producer.send(record, Duration::from_secs(30))).expect("producing an event");
    }
}

fn start(tp: &TestPipeline, log: &PathBuf) -> Child {
    Command::new(env!("CARGO_BIN_EXE_touchpoint"))
        .args(["run", "--config"])
        .arg(&tp.path)
        .args(["--workers", "2"])
        // Every epoch's verdicts and every sink write are in the log a failure prints.
        .env(
            "RUST_LOG",
            "info,rdkafka=warn,touchpoint::stages::event_time=debug,\
             touchpoint::stages::epoch_sink=debug,touchpoint::stages::sinks=debug",
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("starting touchpoint")
}

fn wait_for(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !ready() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_text(log: &PathBuf) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

fn stop(mut child: Child) -> String {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("waiting for touchpoint");
    let mut stdout = String::new();
    child.stdout.take().expect("stdout").read_to_string(&mut stdout).expect("stdout");
    assert!(exit.success(), "graceful stop must exit 0, got {exit:?}\n{stdout}");
    stdout
}

/// Every record of `topic`, read to its end.
fn read_topic(tp: &TestPipeline, topic: &str) -> Vec<ReadRecord> {
    read_all(&tp.config.kafka, topic, Duration::from_secs(1), Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("reading {topic}: {e:#}"))
}

fn query_strings(tp: &TestPipeline, sql: &str) -> BTreeSet<String> {
    runtime().block_on(tp.store().client().query(sql).fetch_all::<String>()).expect(sql).into_iter().collect()
}

/// Runs both batches through a pipeline with `policy`; returns (pipeline, late ids, on-time ids, stdout, log).
fn scenario(prefix: &str, policy: &str) -> (TestPipeline, BTreeSet<String>, BTreeSet<String>, String, String) {
    let tp = TestPipeline::new(
        prefix,
        &[("late_events: flag", policy), ("idle_timeout: 5s", "idle_timeout: 1s"), common::RULES],
    );
    tp.prepare();
    let log = std::env::temp_dir().join(format!("{}.log", tp.name));
    let child = start(&tp, &log);

    // Batch 1: partition 0 only, T0 .. T0+39min, a sign-up (decision-making) every fifth.
    let first: Vec<Event> = (0..40)
        .map(|k| event(&format!("a{k}"), if k % 5 == 0 { "signed_up" } else { "page_viewed" }, T0_MS + k * MINUTE, 0))
        .collect();
    produce(&tp, &first);
    let store = tp.store();
    let rt = runtime();
    wait_for("the first batch to be stored", Duration::from_secs(60), || rt.block_on(store.count()).unwrap_or(0) == 40);
    // Partitions 1–3 never had an event: only idle detection lets time form (T0+39min − 1h).
    wait_for("the watermark to form", Duration::from_secs(60), || log_text(&log).contains("watermark formed"));

    // Batch 2.
    let mut second: Vec<Event> = Vec::new();
    let mut late = BTreeSet::new();
    for k in 0..10 {
        // Two hours behind: late. Sign-ups, so that a decision would be made if they were processed.
        second.push(event(&format!("late{k}"), "signed_up", T0_MS - 120 * MINUTE + k * MINUTE, 0));
        late.insert(format!("late{k}"));
    }
    // Partition 1 wakes up with an old event: the watermark does not move back for it.
    second.push(event("late-p1", "signed_up", T0_MS - 180 * MINUTE, 1));
    late.insert("late-p1".to_string());
    // Behind partition 0's newest event (T0+39min) but within the allowed lateness: on time.
    second.push(event("behind-ok", "signed_up", T0_MS, 0));
    for k in 0..10 {
        second.push(event(
            &format!("b{k}"),
            if k % 2 == 0 { "signed_up" } else { "page_viewed" },
            T0_MS + (40 + k) * MINUTE,
            0,
        ));
    }
    produce(&tp, &second);
    let on_time: BTreeSet<String> =
        first.iter().chain(&second).map(|e| e.id.clone()).filter(|id| !late.contains(id)).collect();
    let total = (first.len() + second.len()) as u64;
    let expected_stored = if policy.ends_with("route") { on_time.len() as u64 } else { total };
    wait_for("the second batch to be processed", Duration::from_secs(60), || {
        rt.block_on(store.count()).unwrap_or(0) >= expected_stored
    });
    let stdout = stop(child);
    let log = log_text(&log);
    for p in 1..=3 {
        let idle = log.lines().any(|l| l.contains("partition idle") && l.contains(&format!("partition={p}")));
        assert!(idle, "partition {p} is detected idle:\n{log}");
    }
    (tp, late, on_time, stdout, log)
}

#[test]
fn late_events_are_routed_to_the_late_topic_and_nowhere_else() {
    let (tp, late, on_time, stdout, log) = scenario("it_late_route", "late_events: route");

    let routed = read_topic(&tp, &tp.config.topics.late_events.name);
    let routed_ids: BTreeSet<String> = routed
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).expect("JSON");
            v["event_id"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    if routed_ids != late {
        // Say where each missing or extra event went: stored, dead-lettered, or nowhere.
        let stored = tp.stored_ids();
        let dead: Vec<String> = read_topic(&tp, &tp.config.topics.dead_letter.name)
            .iter()
            .map(|r| String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default()).into_owned())
            .collect();
        let fate = |id: &String| {
            let in_dlq = dead.iter().any(|d| d.contains(&format!("\"{id}\"")));
            format!("{id}: stored {:?}, dead-lettered {in_dlq}", stored.get(id))
        };
        let missing: Vec<String> = late.difference(&routed_ids).map(fate).collect();
        // Read again: a record found only now was there all along (a read problem, not a lost write).
        let again: Vec<String> = read_topic(&tp, &tp.config.topics.late_events.name)
            .iter()
            .map(|r| format!("{}@{}", r.partition, r.offset))
            .collect();
        let first: Vec<String> = routed.iter().map(|r| format!("{}@{}", r.partition, r.offset)).collect();
        let extra: Vec<String> = routed_ids.difference(&late).map(fate).collect();
        panic!(
            "exactly the late events are routed; missing {missing:?}, extra {extra:?}; read {first:?}, read \
            again {again:?}\nstdout:\n{stdout}\nlog:\n{log}"
        );
    }
    assert_eq!(routed.len(), late.len(), "each once");
    for r in &routed {
        let behind: i64 = r.header(headers::LATE_BEHIND_MS).and_then(|h| h.parse().ok()).unwrap_or(0);
        assert!(behind > 0, "the record says how late it was");
        let watermark = r.header(headers::LATE_WATERMARK).unwrap_or_default();
        assert!(watermark.starts_with("2026-11-20T09:"), "watermark T0+39min-1h..., got {watermark}");
        assert!(r.header(headers::SOURCE_OFFSET).is_some());
    }
    let p1 =
        routed.iter().find(|r| String::from_utf8_lossy(r.payload.as_deref().unwrap_or_default()).contains("late-p1"));
    assert_eq!(p1.and_then(|r| r.header(headers::SOURCE_PARTITION)), Some("1"));

    let stored: BTreeSet<String> = tp.stored_ids().into_keys().collect();
    assert_eq!(stored, on_time, "on-time events (incl. one within the allowed lateness) are stored, late ones not");
    let decided = query_strings(&tp, "SELECT DISTINCT event_id FROM decisions");
    assert!(
        decided.is_disjoint(&late),
        "no decision for a routed late event: {:?}",
        decided.intersection(&late).collect::<Vec<_>>()
    );
    assert!(
        decided.contains("behind-ok") && decided.contains("b0") && decided.contains("a0"),
        "on-time sign-ups are decided: {decided:?}"
    );
    assert!(
        stdout.contains(&format!("late            {} (routed", late.len())),
        "the run counts its late events:\n{stdout}"
    );
    assert!(stdout.contains("(0 unbalanced)"), "{stdout}");
}

#[test]
fn late_events_are_processed_and_flagged_with_the_flag_policy() {
    let (tp, late, on_time, stdout, _log) = scenario("it_late_flag", "late_events: flag");

    let stored: BTreeSet<String> = tp.stored_ids().into_keys().collect();
    assert_eq!(stored, on_time.union(&late).cloned().collect(), "every event is stored");
    assert_eq!(query_strings(&tp, "SELECT event_id FROM events WHERE late"), late, "exactly the late ones are flagged");
    let late_decisions = query_strings(&tp, "SELECT DISTINCT event_id FROM decisions WHERE late");
    assert_eq!(late_decisions, late, "the decisions of late sign-ups are made, and flagged");
    let on_time_decisions = query_strings(&tp, "SELECT DISTINCT event_id FROM decisions WHERE NOT late");
    assert!(on_time_decisions.is_disjoint(&late) && on_time_decisions.contains("behind-ok"));
    let routed = read_topic(&tp, &tp.config.topics.late_events.name);
    assert!(routed.is_empty(), "nothing is routed under `flag`");
    assert!(stdout.contains(&format!("late            {} (processed", late.len())), "{stdout}");
}

/// A producer cannot push time forward (issue 21). Events dated 23 h ahead (inside `max_future_skew`)
/// on every partition used to move the watermark a day ahead: the subject's next, real-time event was
/// late (checked: with `max_clock_lead: 48h` this test fails on `second:suppressed_cap:late`), and the
/// cap counters a sweep at that watermark finds were expired. Each partition's clock now leads the
/// broker's time by at most `max_clock_lead`.
#[test]
fn future_dated_events_on_every_partition_neither_free_a_cap_nor_make_real_traffic_late() {
    let tp = TestPipeline::new("it_future", &[("idle_timeout: 5s", "idle_timeout: 1s")]);
    tp.prepare();
    let now = chrono::Utc::now().timestamp_millis();
    let producer: FutureProducer = tp.config.kafka.producer_config().create().expect("producer");
    let rt = runtime();
    let send = |topic: &str, partition: Option<i32>, key: &str, payload: serde_json::Value| {
        let payload = payload.to_string();
        let mut record = FutureRecord::to(topic).key(key).payload(&payload);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        rt.block_on(producer.send(record, Duration::from_secs(30))).expect("producing");
    };
    let opened = |id: &str, subject: &str, at_ms: i64| {
        json!({"event_id": id, "event_type": "app_opened", "subject_id": subject, "tenant_id": "acme",
            "occurred_at": chrono::DateTime::from_timestamp_millis(at_ms).expect("time").to_rfc3339(),
            "attributes": {}})
    };
    // The subject may get marketing pushes: its first app open is sent, the second is capped (1 per
    // rolling hour).
    send(
        &tp.config.topics.consent.name,
        None,
        "acme/hot/push/marketing",
        json!({"subject_id": "hot", "tenant_id": "acme", "channel": "push", "purpose": "marketing",
            "status": "granted", "updated_at": "2026-01-01T00:00:00Z", "source": "test"}),
    );
    common::produce_profiles_of(&tp, "acme", ["hot".to_string()]);
    send(&tp.config.topics.events.name, Some(0), "hot", opened("first", "hot", now - 20 * MINUTE));
    for p in 0..tp.config.topics.events.partitions {
        send(
            &tp.config.topics.events.name,
            Some(p),
            "f",
            opened(&format!("future-{p}"), &format!("f{p}"), now + 23 * 60 * MINUTE),
        );
    }

    let log = std::env::temp_dir().join(format!("{}.log", tp.name));
    let child = start(&tp, &log);
    wait_for("the first events stored", Duration::from_secs(120), || rt_count(&tp) >= 5);
    // The future-dated events' epochs are done: whatever watermark they make is in force now.
    std::thread::sleep(Duration::from_secs(3));
    send(&tp.config.topics.events.name, Some(0), "hot", opened("second", "hot", now - 10 * MINUTE));
    wait_for("the second event stored", Duration::from_secs(120), || rt_count(&tp) >= 6);
    std::thread::sleep(Duration::from_secs(1));
    stop(child);

    let decisions = query_strings(
        &tp,
        "SELECT concat(event_id, ':', decision, if(late, ':late', '')) FROM decisions FINAL WHERE subject_id = 'hot'",
    );
    assert_eq!(
        decisions,
        BTreeSet::from(["first:allowed".to_string(), "second:suppressed_cap".to_string()]),
        "the cap holds and the real-time event is on time\n{}",
        log_text(&log)
    );
    let late = query_strings(&tp, "SELECT event_id FROM events WHERE late");
    assert!(late.is_empty(), "no event is late: {late:?}");
}

fn rt_count(tp: &TestPipeline) -> u64 {
    runtime().block_on(tp.store().count()).unwrap_or(0)
}
