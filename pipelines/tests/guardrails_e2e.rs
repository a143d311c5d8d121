//! Consent and frequency caps end to end on the real services: 50,000 subjects' consent on its own
//! topic (3 partitions) and events on another (4 partitions); a first run; then revocations, denials and
//! more events; a restarted second run. Checks the connector topics, the decisions table and the
//! consent dead-letter topic.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use common::{runtime, TestPipeline};
use serde_json::json;
use touchpoint::RunOptions;
use touchpoint_connectors::kafka::{read_all, AckedProducer, OutgoingRecord};
use touchpoint_schemas::headers;

const SUBJECTS: usize = 50_000;
/// Subjects that also get events (the rest only have consent records).
const ACTIVE: usize = 2_000;
const DAY: &str = "2026-11-24";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Group {
    /// Granted email and push marketing; keeps it.
    Granted,
    /// Granted, then revoked between the runs.
    Revoked,
    /// Denied from the start.
    Denied,
    /// No consent record: the marketing default (deny) applies.
    Missing,
}

fn group(i: usize) -> Group {
    match i % 4 {
        0 => Group::Granted,
        1 => Group::Revoked,
        2 => Group::Denied,
        _ => Group::Missing,
    }
}

fn subject(i: usize) -> String {
    format!("s-{i}")
}

fn consent(i: usize, channel: &str, status: &str, at: &str) -> OutgoingRecord {
    OutgoingRecord {
        partition: None,
        topic: String::new(),
        key: Some(format!("acme/{}/{channel}/marketing", subject(i)).into_bytes()),
        payload: Some(
            json!({"subject_id": subject(i), "tenant_id": "acme", "channel": channel, "purpose": "marketing",
                   "status": status, "updated_at": at, "source": "preference-center"})
            .to_string()
            .into_bytes(),
        ),
        headers: vec![],
    }
}

/// Five promotional-email triggers and three push triggers per active subject, all on one local day,
/// plus a receipt (transactional: exempt from caps, allowed without consent).
fn events(i: usize, run: u32) -> Vec<OutgoingRecord> {
    let tz = if i.is_multiple_of(3) { "America/New_York" } else { "Europe/Berlin" };
    let mut out = Vec::new();
    let mut push = |event_type: &str, n: u32, minute: u32| {
        out.push(OutgoingRecord {
            partition: None,
            topic: String::new(),
            key: Some(subject(i).into_bytes()),
            payload: Some(
                json!({"event_id": format!("r{run}-{i}-{event_type}-{n}"), "event_type": event_type,
                       "occurred_at": format!("{DAY}T{:02}:{:02}:00-05:00", 9 + run * 2 + n / 2, minute),
                       "subject_id": subject(i), "tenant_id": "acme",
                       "attributes": {"email": format!("{}@example.com", subject(i)), "time_zone": tz}})
                .to_string()
                .into_bytes(),
            ),
            headers: vec![],
        })
    };
    for n in 0..5 {
        push("cart_updated", n, n * 7);
    }
    for n in 0..3 {
        push("app_opened", n, 30 + n * 9);
    }
    push("order_completed", 0, 59);
    out
}

fn produce(tp: &TestPipeline, topic: &str, mut records: Vec<OutgoingRecord>) {
    let kafka = &tp.config.kafka;
    for r in &mut records {
        r.topic = topic.to_string();
    }
    let producer = AckedProducer::new(kafka).unwrap();
    let rt = runtime();
    for chunk in records.chunks(20_000) {
        rt.block_on(producer.send_all(chunk)).unwrap();
    }
}

#[derive(Debug)]
struct Send {
    subject: String,
    channel: String,
    category: String,
    event_id: String,
    occurred_at: i64,
    key: String,
}

fn sends(tp: &TestPipeline) -> Vec<Send> {
    let mut out = Vec::new();
    for channel in ["email", "push", "sms", "webhook"] {
        let topic = format!("{}{channel}", tp.config.topics.connectors.prefix);
        for r in read_all(&tp.config.kafka, &topic, Duration::from_secs(1), Duration::from_secs(120)).unwrap() {
            let v: serde_json::Value = serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
            assert_eq!(r.header("tp.idempotency_key"), v["idempotency_key"].as_str());
            out.push(Send {
                subject: v["subject_id"].as_str().unwrap().into(),
                channel: v["channel"].as_str().unwrap().into(),
                category: v["category"].as_str().unwrap().into(),
                event_id: v["event_id"].as_str().unwrap().into(),
                occurred_at: v["occurred_at"].as_i64().unwrap(),
                key: v["idempotency_key"].as_str().unwrap().into(),
            });
        }
    }
    out
}

#[test]
fn consent_and_caps_hold_across_topics_partitions_and_a_restart() {
    let tp = TestPipeline::new(
        "it_guard",
        &[("    partitions: 2\n    compacted: true", "    partitions: 3\n    compacted: true"), common::RULES],
    );
    let consent_topic = tp.config.topics.consent.name.clone();
    assert_eq!(tp.config.topics.consent.partitions, 3);
    tp.prepare();

    // Consent for 50,000 subjects, and two bad records.
    let mut records = Vec::new();
    for i in 0..SUBJECTS {
        match group(i) {
            Group::Granted | Group::Revoked => {
                records.push(consent(i, "email", "granted", "2026-11-01T00:00:00Z"));
                records.push(consent(i, "push", "granted", "2026-11-01T00:00:00Z"));
            }
            Group::Denied => records.push(consent(i, "email", "denied", "2026-11-01T00:00:00Z")),
            Group::Missing => {}
        }
    }
    records.push(consent(1, "pigeon", "granted", "2026-11-01T00:00:00Z"));
    records.push(consent(1, "email", "maybe", "2026-11-01T00:00:00Z"));
    produce(&tp, &consent_topic, records);
    common::produce_profiles_of(&tp, "acme", (0..ACTIVE).map(subject));
    produce(&tp, &tp.config.topics.events.name, (0..ACTIVE).flat_map(|i| events(i, 0)).collect());

    let first =
        touchpoint::run(tp.config.clone(), RunOptions { workers: 2, until_drained: true, ..Default::default() })
            .unwrap();
    assert_eq!(first.totals.tally.normalized, (ACTIVE * 9) as u64);

    // Between the runs: revocations, and for denied subjects a grant followed by a denial of the same
    // key (the later record wins: it is the one compaction keeps).
    let mut records = Vec::new();
    for i in (0..SUBJECTS).filter(|i| group(*i) == Group::Revoked) {
        records.push(consent(i, "email", "denied", "2026-11-24T00:00:00Z"));
        records.push(consent(i, "push", "denied", "2026-11-24T00:00:00Z"));
    }
    for i in (0..SUBJECTS).filter(|i| group(*i) == Group::Denied) {
        records.push(consent(i, "email", "granted", "2026-11-24T00:00:00Z"));
        records.push(consent(i, "email", "denied", "2026-11-24T00:00:01Z"));
    }
    produce(&tp, &consent_topic, records);
    produce(&tp, &tp.config.topics.events.name, (0..ACTIVE).flat_map(|i| events(i, 1)).collect());

    // Restart: consent and cap state are restored before the new events are decided.
    let second =
        touchpoint::run(tp.config.clone(), RunOptions { workers: 2, until_drained: true, ..Default::default() })
            .unwrap();
    assert_eq!(second.totals.tally.normalized, (ACTIVE * 9) as u64);

    let all = sends(&tp);
    let keys: HashSet<&str> = all.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys.len(), all.len(), "no idempotency key is sent twice");
    let index = |s: &Send| s.subject.trim_start_matches("s-").parse::<usize>().unwrap();

    // No marketing send without consent; none for revoked subjects after the revocation.
    for s in all.iter().filter(|s| s.category != "transactional") {
        match group(index(s)) {
            Group::Granted => {}
            Group::Revoked => assert!(s.event_id.starts_with("r0-"), "sent after the revocation: {s:?}"),
            Group::Denied | Group::Missing => panic!("marketing send without consent: {s:?}"),
        }
    }
    // Receipts are transactional: default allow, exempt from caps, for everyone, both runs.
    let receipts = all.iter().filter(|s| s.category == "transactional").count();
    assert_eq!(receipts, 2 * ACTIVE);

    // Caps: at most 2 promotional emails per local day, 1 push per rolling hour, 10 per week; and they
    // were not reset by the restart (run 1 already used today's email budget).
    let mut per_day: HashMap<String, usize> = HashMap::new();
    let mut pushes: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for s in all.iter().filter(|s| s.category == "promotional") {
        match s.channel.as_str() {
            "email" => *per_day.entry(s.subject.clone()).or_default() += 1,
            "push" => pushes.entry(s.subject.clone()).or_default().push(s.occurred_at),
            other => panic!("unexpected channel {other}"),
        }
    }
    let over: Vec<_> = per_day.iter().filter(|(_, n)| **n > 2).take(5).collect();
    assert!(over.is_empty(), "promotional email cap exceeded: {over:?}");
    for times in pushes.values_mut() {
        times.sort_unstable();
        assert!(times.windows(2).all(|w| w[1] - w[0] >= 3_600_000), "push cap exceeded: {times:?}");
    }
    let granted = (0..ACTIVE).filter(|i| group(*i) == Group::Granted).count();
    let revoked = (0..ACTIVE).filter(|i| group(*i) == Group::Revoked).count();
    assert_eq!(per_day.len(), granted + revoked, "every consenting subject got its emails");
    assert!(per_day.values().all(|n| *n == 2));
    // Run 2's emails for granted subjects are all capped: same local day, budget used in run 1.
    assert!(!all.iter().any(|s| s.channel == "email" && s.category == "promotional" && s.event_id.starts_with("r1-")));

    // Decisions: one per intent (FINAL collapses re-decisions), with reasons.
    #[derive(Debug, clickhouse::Row, serde::Deserialize)]
    struct Count {
        decision: String,
        n: u64,
    }
    let rows: Vec<Count> = runtime()
        .block_on(
            tp.store()
                .client()
                .query("SELECT decision, count() AS n FROM decisions FINAL GROUP BY decision ORDER BY decision")
                .fetch_all(),
        )
        .unwrap();
    let counts: BTreeMap<String, u64> = rows.into_iter().map(|r| (r.decision, r.n)).collect();
    let intents = (2 * ACTIVE * 9) as u64; // every event triggers exactly one rule
    assert_eq!(counts.values().sum::<u64>(), intents, "{counts:?}");
    assert_eq!(counts.get("allowed").copied().unwrap_or(0), all.len() as u64, "{counts:?}");
    assert!(
        counts.get("suppressed_cap").copied().unwrap_or(0) > 0
            && counts.get("suppressed_consent").copied().unwrap_or(0) > 0
    );

    // Bad consent records are dead-lettered with their reasons.
    let dlq = read_all(
        &tp.config.kafka,
        &tp.config.topics.consent_dead_letter.name,
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
    .unwrap();
    let mut reasons: Vec<&str> = dlq.iter().filter_map(|r| r.header(headers::ERROR_CODE)).collect();
    reasons.sort_unstable();
    // Both runs replay the consent table, so each bad record is dead-lettered once per run.
    assert_eq!(reasons, vec!["unknown_channel", "unknown_channel", "unknown_consent_status", "unknown_consent_status"]);
}

/// SIGKILL mid-stream, restart: consent and caps still hold. A send re-emitted for an intent decided
/// again after the crash carries the same idempotency key (connectors deduplicate by it) and is not
/// counted twice, so every subject still gets exactly its 2 promotional emails for the day.
#[test]
fn caps_and_consent_survive_a_sigkill() {
    use std::process::{Command, Stdio};
    use std::time::Instant;

    let tp = TestPipeline::new(
        "it_guard_kill",
        &[("interval: 200ms", "interval: 20ms"), ("max_records: 50000", "max_records: 100"), common::RULES],
    );
    tp.prepare();
    let subjects = 1_200;
    let mut records = Vec::new();
    for i in 0..subjects {
        if matches!(group(i), Group::Granted | Group::Revoked) {
            records.push(consent(i, "email", "granted", "2026-11-01T00:00:00Z"));
        }
    }
    produce(&tp, &tp.config.topics.consent.name, records);
    common::produce_profiles_of(&tp, "acme", (0..subjects).map(subject));
    // Events are resumed after the kill: one record per producer batch (the local profile).
    let events: Vec<OutgoingRecord> = (0..subjects)
        .flat_map(|i| events(i, 0))
        .map(|mut r| {
            r.topic = tp.config.topics.events.name.clone();
            r
        })
        .collect();
    let rt = runtime();
    rt.block_on(AckedProducer::new(&tp.config.kafka).unwrap().send_all(&events)).unwrap();

    let binary = env!("CARGO_BIN_EXE_touchpoint");
    let log = |n: &str| std::fs::File::create(std::env::temp_dir().join(format!("{}-{n}.log", tp.name))).unwrap();
    let decisions =
        || -> u64 { rt.block_on(tp.store().client().query("SELECT count() FROM decisions").fetch_one()).unwrap_or(0) };
    let mut child = Command::new(binary)
        .args(["run", "--config"])
        .arg(&tp.path)
        .args(["--workers", "2"])
        .stdout(Stdio::null())
        .stderr(log("killed"))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while decisions() < 2_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = decisions();
    assert!(at_kill < (subjects * 9) as u64, "killed mid-stream ({at_kill} decisions)");

    let status = Command::new(binary)
        .args(["run", "--config"])
        .arg(&tp.path)
        .args(["--workers", "2", "--until-drained"])
        .stdout(Stdio::null())
        .stderr(log("restarted"))
        .status()
        .unwrap();
    assert!(status.success());

    let all = sends(&tp);
    let mut emails: HashMap<String, HashSet<String>> = HashMap::new();
    for s in &all {
        let i: usize = s.subject.trim_start_matches("s-").parse().unwrap();
        if s.category == "promotional" {
            assert!(matches!(group(i), Group::Granted | Group::Revoked), "send without consent: {s:?}");
            if s.channel == "email" {
                emails.entry(s.subject.clone()).or_default().insert(s.key.clone());
            }
        }
    }
    let consenting = (0..subjects).filter(|i| matches!(group(*i), Group::Granted | Group::Revoked)).count();
    assert_eq!(emails.len(), consenting);
    for (subject, keys) in &emails {
        assert_eq!(keys.len(), 2, "{subject}: the daily cap of 2 held across the crash, no reset: {keys:?}");
    }
    // Every allowed decision's send is in the connector topics.
    let allowed: Vec<String> = rt
        .block_on(
            tp.store()
                .client()
                .query("SELECT idempotency_key FROM decisions FINAL WHERE decision = 'allowed'")
                .fetch_all(),
        )
        .unwrap();
    let sent: HashSet<&str> = all.iter().map(|s| s.key.as_str()).collect();
    assert!(allowed.iter().all(|k| sent.contains(k.as_str())));
    let total: u64 = rt.block_on(tp.store().client().query("SELECT count() FROM decisions FINAL").fetch_one()).unwrap();
    assert_eq!(total, (subjects * 9) as u64, "one decision per intent");
}
