//! Log compaction keeps the whole state: the consent topic and the pipeline's changelogs are compacted
//! for real by the broker's log cleaner, and a restarted pipeline decides exactly as one whose topics
//! were never compacted.
//!
//! Two pipelines get the same inputs: consent (several records per key: pending then granted, grants
//! then revocations, tombstones, churn), events in two runs (so every subject's state is written more
//! than once), more consent, then a third run. Before the third run, one of them has its compacted
//! topics (`marketing.consent`, the caps and journeys changelogs) set to roll and clean at once, and the
//! test waits until the cleaner has left one record per key. Then:
//! - the state a restart restores (the consent table, cap counters and send ledger, journey state) is
//!   the same as before the cleaner ran;
//! - the third run's decisions (consent verdicts, caps counted in earlier runs, journey timers set in
//!   earlier runs) are the same rows as the uncompacted pipeline's.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::{journeys_in, query_lines, runtime, TestPipeline, JOURNEYS_OFF};
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use serde_json::{json, Value};
use touchpoint::RunOptions;
use touchpoint_connectors::kafka::{read_all, AckedProducer, OutgoingRecord};
use touchpoint_operators::consent::{
    check_record_key, parse_consent_fields, parse_tombstone_key, ConsentConfig, ConsentFields, ConsentTable,
};
use touchpoint_schemas::{Channel, Purpose, SubjectRef};

const SUBJECTS: usize = 300;
const DAY: &str = "2026-11-24";
const LATER: &str = "2026-11-26";

fn subject(i: usize) -> String {
    format!("c-{i}")
}

fn record(key: String, value: Option<Value>) -> OutgoingRecord {
    OutgoingRecord {
        partition: None,
        topic: String::new(),
        key: Some(key.into_bytes()),
        payload: value.map(|v| v.to_string().into_bytes()),
        headers: vec![],
    }
}

fn consent(i: usize, channel: &str, status: &str, minute: usize) -> OutgoingRecord {
    record(
        format!("acme/{}/{channel}/marketing", subject(i)),
        Some(json!({"subject_id": subject(i), "tenant_id": "acme", "channel": channel, "purpose": "marketing",
                    "status": status, "updated_at": format!("2026-11-01T00:{minute:02}:00Z"), "source": "crm"})),
    )
}

/// Before the first run: five kinds of subject, most keys written several times.
fn consent_before() -> Vec<OutgoingRecord> {
    let mut out = Vec::new();
    for i in 0..SUBJECTS {
        for channel in ["email", "push"] {
            match i % 5 {
                // pending, then granted: keeps the grant
                0..=2 => {
                    out.push(consent(i, channel, "pending", 0));
                    out.push(consent(i, channel, "granted", 1));
                }
                // nothing: the marketing default (deny)
                3 => {}
                // churn: granted, denied, granted, denied, granted
                _ => (0..5).for_each(|m| out.push(consent(i, channel, ["granted", "denied"][m % 2], m))),
            }
        }
    }
    out
}

/// Between the second and the third run: revocations (group 1) and a tombstone of the push grant
/// (group 2): after compaction only the denial, and for a while the tombstone, are left of those keys.
fn consent_between() -> Vec<OutgoingRecord> {
    let mut out = Vec::new();
    for i in (0..SUBJECTS).filter(|i| i % 5 == 1) {
        out.push(consent(i, "email", "denied", 30));
        out.push(consent(i, "push", "denied", 30));
    }
    for i in (0..SUBJECTS).filter(|i| i % 5 == 2) {
        out.push(record(format!("acme/{}/push/marketing", subject(i)), None));
    }
    out
}

fn event(i: usize, id: &str, event_type: &str, at: String) -> OutgoingRecord {
    let tz = if i.is_multiple_of(3) { "America/New_York" } else { "Europe/Berlin" };
    let mut r = record(
        subject(i),
        Some(json!({"event_id": format!("{}-{id}", subject(i)), "event_type": event_type, "occurred_at": at,
                    "subject_id": subject(i), "tenant_id": "acme",
                    "attributes": {"email": format!("{}@example.com", subject(i)), "time_zone": tz,
                                   "device_token": format!("tok-{i}"), "amount": 80, "currency": "EUR"}})),
    );
    r.key = Some(subject(i).into_bytes());
    r
}

/// Run 1: sign-ups (the welcome journey: a welcome email, then a one-day wait). Run 2: an app open (a
/// push, counted by the rolling-hour push cap) and a cart update (the abandoned-cart journey: a second
/// journey state record per subject). Run 3: another app open within that hour (capped only if the
/// restored cap state remembers run 2's push) and, two days later, a page view that moves the watermark
/// past both journeys' waits (their timers come from the restored journey state).
fn events(run: usize) -> Vec<OutgoingRecord> {
    (0..SUBJECTS)
        .flat_map(|i| match run {
            1 => vec![event(i, "signup", "signed_up", format!("{DAY}T09:00:00Z"))],
            2 => vec![
                event(i, "open-1", "app_opened", format!("{DAY}T09:10:00Z")),
                event(i, "cart", "cart_updated", format!("{DAY}T09:15:00Z")),
            ],
            _ => vec![
                event(i, "open-2", "app_opened", format!("{DAY}T09:40:00Z")),
                event(i, "view", "page_viewed", format!("{LATER}T09:00:00Z")),
            ],
        })
        .collect()
}

fn produce(tp: &TestPipeline, topic: &str, mut records: Vec<OutgoingRecord>) {
    for r in &mut records {
        r.topic = topic.to_string();
    }
    runtime().block_on(AckedProducer::new(&tp.config.kafka).unwrap().send_all(&records)).unwrap();
}

fn run(tp: &TestPipeline) {
    touchpoint::run(tp.config.clone(), RunOptions { workers: 2, until_drained: true, ..Default::default() }).unwrap();
}

fn compacted_topics(tp: &TestPipeline) -> [String; 3] {
    let group = &tp.config.pipeline.group_id;
    [
        tp.config.topics.consent.name.clone(),
        tp.config.topics.caps_changelog(group).name,
        tp.config.topics.journeys_changelog(group).name,
    ]
}

/// Keys and how many records each has, per topic.
fn key_counts(tp: &TestPipeline, topic: &str) -> BTreeMap<Vec<u8>, usize> {
    let mut counts = BTreeMap::new();
    for r in read_all(&tp.config.kafka, topic, Duration::from_millis(500), Duration::from_secs(60)).unwrap() {
        *counts.entry(r.key.clone().unwrap_or_default()).or_default() += 1;
    }
    counts
}

/// What a restart restores: the consent table (every verdict), and the latest value per subject of both
/// changelogs, read by the pipeline's own restore code.
#[derive(Debug)]
struct Restored {
    consent: BTreeMap<String, String>,
    caps: BTreeMap<String, Value>,
    journeys: BTreeMap<String, Value>,
}

fn restored(tp: &TestPipeline) -> Restored {
    let kafka = &tp.config.kafka;
    let mut table = ConsentTable::new();
    for r in
        read_all(kafka, &tp.config.topics.consent.name, Duration::from_millis(500), Duration::from_secs(60)).unwrap()
    {
        let change = match r.payload.as_deref() {
            None => parse_tombstone_key(r.key.as_deref().unwrap()).unwrap(),
            Some(p) => {
                let change = parse_consent_fields(&ConsentFields::from_json(p).unwrap(), "default").unwrap();
                check_record_key(&change, r.key.as_deref()).unwrap();
                change
            }
        };
        table.apply(&change);
    }
    let mut consent = BTreeMap::new();
    for i in 0..SUBJECTS {
        let s = SubjectRef::new("acme", &subject(i));
        for channel in Channel::ALL {
            for purpose in [Purpose::Marketing, Purpose::Transactional] {
                let verdict = table.verdict(&s, channel, purpose, &ConsentConfig::default());
                consent.insert(format!("{} {channel:?} {purpose:?}", subject(i)), verdict.describe());
            }
        }
    }
    let group = &tp.config.pipeline.group_id;
    let changelog = |topic: String| -> BTreeMap<String, Value> {
        touchpoint::restore_changelog::<Value>(&tp.config, &topic, "test", 1, 0..1, touchpoint::PartialRestore::Refuse)
            .unwrap()
            .into_values()
            .flatten()
            .map(|(s, v)| (format!("{}/{}", s.tenant_id, s.subject_id), v))
            .collect()
    };
    Restored {
        consent,
        caps: changelog(tp.config.topics.caps_changelog(group).name),
        journeys: changelog(tp.config.topics.journeys_changelog(group).name),
    }
}

/// Sets a compacted topic to roll its segments and clean them as soon as it can (what an operator does
/// with `kafka-configs --alter`). The whole set is sent: AlterConfigs replaces a topic's configs.
fn compact_now(tp: &TestPipeline, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = tp.config.kafka.admin_config().create().unwrap();
    let alter = AlterConfig::new(ResourceSpecifier::Topic(topic))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "100")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("min.compaction.lag.ms", "0");
    let results = runtime().block_on(admin.alter_configs(&[alter], &AdminOptions::new())).unwrap();
    for r in results {
        r.unwrap_or_else(|e| panic!("altering {topic}: {e:?}"));
    }
}

/// The active segment is never cleaned: once `segment.ms` has passed, one more record per partition
/// (a tombstone for a key nobody has) rolls it, and the cleaner may take everything before it.
fn roll_segments(tp: &TestPipeline, topic: &str, partitions: i32, filler_key: &str) {
    std::thread::sleep(Duration::from_millis(300));
    let records: Vec<OutgoingRecord> = (0..partitions)
        .map(|p| OutgoingRecord {
            partition: Some(p),
            topic: topic.to_string(),
            key: Some(filler_key.as_bytes().to_vec()),
            payload: None,
            headers: vec![],
        })
        .collect();
    runtime().block_on(AckedProducer::new(&tp.config.kafka).unwrap().send_all(&records)).unwrap();
}

/// Fails with the first entries that differ, not two dumps of the whole state.
fn assert_same<V: PartialEq + std::fmt::Debug>(got: &BTreeMap<String, V>, want: &BTreeMap<String, V>, what: &str) {
    let differ: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .map(|(k, v)| (k, v, got.get(k)))
        .chain(got.iter().filter(|(k, _)| !want.contains_key(*k)).map(|(k, v)| (k, v, Some(v))))
        .take(3)
        .collect();
    assert!(
        differ.is_empty(),
        "{what}: {} entries vs {}; first differences (key, want, got): {differ:#?}",
        got.len(),
        want.len()
    );
}

fn assert_same_state(got: &Restored, want: &Restored, when: &str) {
    assert_same(&got.consent, &want.consent, &format!("consent table {when}"));
    assert_same(&got.caps, &want.caps, &format!("cap counters and send ledger {when}"));
    assert_same(&got.journeys, &want.journeys, &format!("journey state {when}"));
}

/// Decision rows a run leaves, minus what depends on the run (times, offsets, the late flag).
fn decisions(tp: &TestPipeline) -> BTreeSet<String> {
    query_lines(
        tp,
        "SELECT concat(idempotency_key, '|', subject_id, '|', intent_rule, '|', journey, '/', journey_step, '|', \
         decision, '|', cap_rule, '|', consent_status) AS line FROM decisions FINAL",
    )
    .into_iter()
    .collect()
}

#[test]
fn compaction_keeps_consent_and_state_and_a_restart_decides_the_same() {
    let journeys = journeys_in("journeys");
    let overrides = [(JOURNEYS_OFF, journeys.as_str())];
    let control = TestPipeline::new("it_compact_ctl", &overrides);
    let compacted = TestPipeline::new("it_compact", &overrides);
    for tp in [&control, &compacted] {
        tp.prepare();
        produce(tp, &tp.config.topics.consent.name, consent_before());
        common::produce_profiles_of(tp, "acme", (0..SUBJECTS).map(subject));
        for run_no in [1, 2] {
            produce(tp, &tp.config.topics.events.name, events(run_no));
            run(tp);
        }
        produce(tp, &tp.config.topics.consent.name, consent_between());
    }

    // Compact one of them for real.
    let before = restored(&compacted);
    // (Cap and journey state hold the wall-clock time of each decision, so only consent compares
    // across the two pipelines; within one, all of it does.)
    assert_same(&before.consent, &restored(&control).consent, "consent of the two pipelines before compaction");
    let topics = compacted_topics(&compacted);
    let mut duplicated = BTreeMap::new();
    for topic in &topics {
        let counts = key_counts(&compacted, topic);
        let superseded: usize = counts.values().map(|n| n - 1).sum();
        assert!(superseded > 0, "{topic} has records for the cleaner to remove");
        duplicated.insert(topic.clone(), (counts.values().sum::<usize>(), superseded));
        compact_now(&compacted, topic);
    }
    let consent_partitions = compacted.config.topics.consent.partitions;
    roll_segments(&compacted, &topics[0], consent_partitions, "filler/none/email/marketing");
    for topic in &topics[1..] {
        roll_segments(&compacted, topic, compacted.config.topics.changelog_partitions, "filler/none");
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    for topic in &topics {
        loop {
            let counts = key_counts(&compacted, topic);
            // The filler key is in the active segment of every partition (and maybe in a cleaned one).
            let left: usize = counts.iter().filter(|(k, _)| !k.starts_with(b"filler/")).map(|(_, n)| n - 1).sum();
            if left == 0 {
                let (total, superseded) = duplicated[topic];
                eprintln!("{topic}: the cleaner removed {superseded} of {total} records");
                break;
            }
            assert!(Instant::now() < deadline, "{topic}: the log cleaner did not run ({left} superseded records left)");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    let after = restored(&compacted);
    assert_same_state(&after, &before, "after compaction");
    // The state is not trivially empty: grants, revocations, tombstoned pushes, counters, journeys.
    let verdicts: HashMap<&str, usize> = after.consent.values().fold(HashMap::new(), |mut m, v| {
        *m.entry(v.as_str()).or_default() += 1;
        m
    });
    assert!(verdicts.get("granted").copied().unwrap_or(0) > 0 && verdicts.get("denied").copied().unwrap_or(0) > 0);
    assert!(
        after.caps.len() > SUBJECTS / 2 && after.journeys.len() >= SUBJECTS,
        "{} {}",
        after.caps.len(),
        after.journeys.len()
    );

    // The third run, restarted on compacted topics, decides what the uncompacted pipeline decides.
    for tp in [&control, &compacted] {
        produce(tp, &tp.config.topics.events.name, events(3));
        run(tp);
    }
    let (want, got) = (decisions(&control), decisions(&compacted));
    let strip = |set: &BTreeSet<String>| -> BTreeSet<String> {
        set.iter().map(|l| l.split_once('|').map_or(l.clone(), |(_, rest)| rest.to_string())).collect()
    };
    assert_eq!(got.len(), want.len(), "as many decisions");
    assert_eq!(got, want, "the same decisions after compaction");
    // The decisions that depend on restored state are among them.
    let lines = strip(&got);
    let count = |pattern: &str| lines.iter().filter(|l| l.contains(pattern)).count();
    assert!(count("|suppressed_cap|push-hourly|") > 0, "run 3's pushes capped by run 2's: {lines:?}");
    assert!(count("welcome-series/nudge|allowed") + count("welcome-series/tips|allowed") > 0, "welcome timers fired");
    assert!(count("|abandoned-cart/reminder-") > 0, "abandoned-cart timers fired");
    assert!(count("|suppressed_consent|") > 0, "revoked and tombstoned consent holds");
}
