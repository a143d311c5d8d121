//! Exactly-once at the recipient-workflow level, proven by killing the process (issue 6).
//!
//! - The chaos test: 200,000 events that drive journeys and rules, run once cleanly and once with
//!   2 workers under 20 SIGKILLs at random moments (restarted each time). Both runs must end with the
//!   same sends (by idempotency key, after the connectors' dedupe), the same decision rows, the same
//!   journey movements and every event stored once. Segments run too: every subject enters
//!   `inactive-1d` by time alone a day after its last app open, and the win-back journey pushes, so
//!   sends made by segment timers and `segment_entered` events are counted like the others.
//! - The replay test: `touchpoint replay --from 1h`, twice, sends nothing new.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{connector_keys, query_lines, runtime, TestPipeline, JOURNEYS_OFF};
use serde_json::json;
use touchpoint_connectors::kafka::{AckedProducer, OutgoingRecord};

/// Events per subject: sign-up, two app opens ten minutes apart, an email open for every other
/// subject, an order. 44,445 subjects: 200,003 events.
const SUBJECTS: usize = 44_445;
const KILLS: usize = 20;
const HOUR: i64 = 3_600_000;

fn subject(i: usize) -> String {
    format!("u-{i}")
}

/// Every subject's events, in event-time order across subjects (so the stream is in order per
/// partition and the watermark moves evenly), spread over six days ending two days ago.
fn workload(now_ms: i64) -> Vec<OutgoingRecord> {
    let start = now_ms - 9 * 24 * HOUR;
    let spacing = 6 * 24 * HOUR / SUBJECTS as i64;
    let mut events: Vec<(i64, OutgoingRecord)> = Vec::with_capacity(SUBJECTS * 5);
    for i in 0..SUBJECTS {
        let t0 = start + i as i64 * spacing;
        let mut add = |n: u32, event_type: &str, at: i64| {
            let value = json!({
                "event_id": format!("{}-{n}", subject(i)), "event_type": event_type,
                "occurred_at": common::rfc3339(at), "subject_id": subject(i), "tenant_id": "acme",
                "attributes": {"email": format!("{}@example.com", subject(i)), "plan": "pro", "country": "DE",
                               "time_zone": "Europe/Berlin"}});
            events.push((
                at,
                OutgoingRecord {
                    partition: None,
                    topic: String::new(),
                    key: Some(subject(i).into_bytes()),
                    payload: Some(value.to_string().into_bytes()),
                    headers: vec![],
                },
            ));
        };
        add(0, "signed_up", t0);
        add(1, "app_opened", t0 + 3 * HOUR);
        add(2, "app_opened", t0 + 3 * HOUR + 10 * 60_000);
        if i % 2 == 0 {
            add(3, "email_opened", t0 + 5 * HOUR);
        }
        add(4, "order_completed", t0 + 30 * HOUR);
    }
    events.sort_by_key(|(at, _)| *at);
    events.into_iter().map(|(_, r)| r).collect()
}

/// Email and push marketing consent for two subjects in three; none for the rest.
fn consent() -> Vec<OutgoingRecord> {
    (0..SUBJECTS)
        .filter(|i| i % 3 != 2)
        .flat_map(|i| {
            ["email", "push"].map(|channel| OutgoingRecord {
                partition: None,
                topic: String::new(),
                key: Some(format!("acme/{}/{channel}/marketing", subject(i)).into_bytes()),
                payload: Some(
                    json!({"subject_id": subject(i), "tenant_id": "acme", "channel": channel,
                           "purpose": "marketing", "status": "granted", "updated_at": "2026-01-01T00:00:00Z",
                           "source": "signup-form"})
                    .to_string()
                    .into_bytes(),
                ),
                headers: vec![],
            })
        })
        .collect()
}

fn produce(tp: &TestPipeline, topic: &str, records: Vec<OutgoingRecord>) {
    let producer = AckedProducer::new(&tp.config.kafka).expect("producer");
    let rt = runtime();
    for chunk in records.chunks(20_000) {
        let chunk: Vec<OutgoingRecord> =
            chunk.iter().cloned().map(|r| OutgoingRecord { topic: topic.to_string(), ..r }).collect();
        rt.block_on(producer.send_all(&chunk)).expect("producing");
    }
}

/// The shipped journeys and a segment `inactive-1d` (the shipped `inactive-3d` with a one-day window)
/// that the win-back journey follows: a subject's last app open is 27 hours before its order, so every
/// entry is due at least an hour and a half before the final watermark (the last order less the allowed
/// lateness), in the clean run and the chaos run alike (with three days, entries would fall around the
/// end of event time and depend on where it stops). Returns the pipeline file's journeys and segments
/// lines.
fn journeys_and_segments() -> (String, String) {
    static DIRS: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    DIRS.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = std::env::temp_dir().join(format!("touchpoint-chaos-{}", std::process::id()));
        let (journeys, segments) = (dir.join("journeys"), dir.join("segments"));
        std::fs::create_dir_all(&journeys).expect("journeys dir");
        std::fs::create_dir_all(&segments).expect("segments dir");
        for entry in std::fs::read_dir(root.join("journeys")).expect("shipped journeys") {
            let path = entry.expect("journey file").path();
            let text = std::fs::read_to_string(&path).expect("journey").replace("'inactive-3d'", "'inactive-1d'");
            std::fs::write(journeys.join(path.file_name().expect("name")), text).expect("journey copy");
        }
        let shipped = std::fs::read_to_string(root.join("segments/inactive-3d.yaml")).expect("inactive-3d");
        let one_day = shipped.replace("id: inactive-3d", "id: inactive-1d").replace("app_opened, 3d", "app_opened, 1d");
        assert!(one_day.contains("app_opened, 1d"), "{one_day}");
        std::fs::write(segments.join("inactive-1d.yaml"), one_day).expect("segment");
        (format!("  dir: {}", journeys.display()), format!("  dir: {}", segments.display()))
    })
    .clone()
}

fn pipeline(prefix: &str, guarantee: &str) -> TestPipeline {
    let guarantee_line = format!("guarantee: {guarantee}");
    let (journeys, segments) = journeys_and_segments();
    let mut overrides = vec![
        (JOURNEYS_OFF, journeys),
        (common::SEGMENTS_OFF, segments),
        ("guarantee: exactly_once_keys", guarantee_line.clone()),
    ];
    if guarantee == "exactly_once_v2" {
        // One transaction commits every epoch that is ready, and this machine runs the whole input in
        // a few transactions of 50,000-record epochs: smaller epochs and fewer in flight make commits
        // small enough for 20 kills to land between and inside them.
        overrides.push(("max_records: 50000", "max_records: 2000".into()));
        overrides.push(("max_in_flight: 8", "max_in_flight: 2".into()));
    }
    let refs: Vec<(&str, &str)> = overrides.iter().map(|(a, b)| (*a, b.as_str())).collect();
    TestPipeline::new(prefix, &refs)
}

fn spawn(tp: &TestPipeline, log: &str, until_drained: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_touchpoint"));
    cmd.args(["run", "--config"]).arg(&tp.path).args(["--workers", "2"]);
    if until_drained {
        cmd.arg("--until-drained");
    }
    let log = std::fs::File::create(std::env::temp_dir().join(log)).expect("log file");
    cmd.stdout(Stdio::null()).stderr(log).spawn().expect("starting touchpoint")
}

/// A deterministic pseudo-random number in `0..n` for draw `i` (the kill schedule is reproducible).
fn draw(i: u64, n: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) % n
}

/// What a finished run left behind, in comparable form.
#[derive(Debug)]
struct Outcome {
    /// Distinct idempotency keys on the connector topics (what the connectors deliver after their dedupe).
    sent: BTreeSet<String>,
    /// Records on the connector topics (repeats included).
    send_records: usize,
    /// `decisions FINAL`: key | decision | cap rule | consent | journey step | late.
    decisions: BTreeSet<String>,
    /// Keys with more than one decision row after FINAL (must be none).
    keys_decided_twice: usize,
    /// `journey_transitions FINAL`.
    transitions: BTreeSet<String>,
    /// Event ids with how often each is stored.
    events: BTreeMap<String, usize>,
}

fn outcome(tp: &TestPipeline) -> Outcome {
    let keys = connector_keys(tp);
    let decisions = query_lines(
        tp,
        "SELECT concat(idempotency_key, '|', decision, '|', cap_rule, '|', consent_status, '|', journey, '/', \
         journey_step, '|', toString(late)) AS line FROM decisions FINAL",
    );
    let repeated = query_lines(
        tp,
        "SELECT toString(count()) AS line FROM (SELECT idempotency_key FROM decisions FINAL \
         GROUP BY idempotency_key HAVING count() > 1)",
    );
    let transitions = query_lines(
        tp,
        "SELECT concat(subject_id, '|', journey, '|', from_step, '>', to_step, '|', cause, '|', \
         toString(event_time), '|', toString(seq)) AS line FROM journey_transitions FINAL",
    );
    Outcome {
        sent: keys.iter().map(|(k, _)| k.clone()).collect(),
        send_records: keys.len(),
        keys_decided_twice: repeated.first().and_then(|n| n.parse().ok()).unwrap_or(usize::MAX),
        decisions: decisions.into_iter().collect(),
        transitions: transitions.into_iter().collect(),
        events: tp.stored_ids(),
    }
}

fn diff(what: &str, want: &BTreeSet<String>, got: &BTreeSet<String>) -> Option<String> {
    let missing: Vec<_> = want.difference(got).take(5).collect();
    let extra: Vec<_> = got.difference(want).take(5).collect();
    (!missing.is_empty() || !extra.is_empty()).then(|| {
        format!(
            "{what}: {} missing (e.g. {missing:?}), {} unexpected (e.g. {extra:?})",
            want.difference(got).count(),
            got.difference(want).count()
        )
    })
}

#[test]
fn twenty_sigkills_change_nothing_against_a_clean_run() {
    chaos_against_clean("exactly_once_keys");
}

/// The same under Kafka transactions: moreover no send reaches the connector topics twice, since an
/// epoch's sends commit with its offsets or not at all.
#[test]
fn twenty_sigkills_change_nothing_against_a_clean_run_under_kafka_transactions() {
    chaos_against_clean("exactly_once_v2");
}

/// The two chaos tests run one after the other: each loads the 2 cores alone (timing-based kills).
static ONE_CHAOS_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn chaos_against_clean(guarantee: &str) {
    let _alone = ONE_CHAOS_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let eos = guarantee == "exactly_once_v2";
    let chaos = pipeline(&format!("it_chaos_{guarantee}"), guarantee);
    let clean = pipeline(&format!("it_clean_{guarantee}"), guarantee).reading_events_of(&chaos);
    chaos.prepare();
    clean.prepare();
    let now = chrono::Utc::now().timestamp_millis();
    let events = workload(now);
    assert!(events.len() >= 200_000, "{} events", events.len());
    let consent = consent();
    produce(&chaos, &chaos.config.topics.consent.name, consent.clone());
    produce(&clean, &clean.config.topics.consent.name, consent);
    for tp in [&chaos, &clean] {
        common::produce_profiles_of(tp, "acme", (0..SUBJECTS).map(subject));
    }
    produce(&chaos, &chaos.config.topics.events.name, events);

    // The clean run: start to end without interruption.
    let status = spawn(&clean, &format!("{}.log", clean.name), true).wait().unwrap();
    assert!(status.success(), "clean run failed: see {}/{}.log", std::env::temp_dir().display(), clean.name);
    let expected = outcome(&clean);
    assert_eq!(expected.keys_decided_twice, 0);
    assert!(expected.sent.len() > 100_000, "the workload sends: {} sends", expected.sent.len());
    let win_back = query_lines(
        &clean,
        "SELECT toString(count()) AS line FROM decisions FINAL WHERE journey = 'win-back' AND decision = 'allowed'",
    );
    let win_back: usize = win_back.first().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(win_back > SUBJECTS / 2, "segment entries send win-back pushes: {win_back}");
    // Even a clean run may put a send on its topic twice: a produce the loaded broker did not acknowledge
    // within `message.timeout.ms` is sent again by the sink (at-least-once topic sinks under
    // exactly_once_keys). Same key: the connectors drop it. Sets are compared.
    let clean_log = std::fs::read_to_string(std::env::temp_dir().join(format!("{}.log", clean.name))).unwrap();
    let resent = clean_log
        .lines()
        .filter(|l| l.contains("record not acknowledged; will resend") && l.contains(".connector."))
        .count();
    let repeats = expected.send_records - expected.sent.len();
    assert!(repeats <= resent, "a clean run repeats a send only by resending it: {repeats} repeats, {resent} resends");
    if eos {
        assert_eq!(repeats, 0, "under transactions a clean run writes every send once");
    }

    // The chaos run: 20 SIGKILLs at random moments. Odd rounds die after a random time from the start
    // (some during the state restore), even rounds after a random amount of progress (mid-epoch, with
    // inserts, produces, changelog writes and commits in flight). Progress is events stored; under
    // transactions it is events committed (ClickHouse rows come before the commit, and a transaction
    // covers several epochs), so that rounds commit some transactions and die inside later ones.
    let rt = runtime();
    let store = chaos.store();
    let progress_now = || -> u64 {
        if eos {
            chaos.committed_offsets().values().map(|o| *o as u64).sum()
        } else {
            rt.block_on(store.count()).unwrap()
        }
    };
    let mut kills = Vec::new();
    for round in 0..KILLS as u64 {
        let before = progress_now();
        let mut child = spawn(&chaos, &format!("{}-{round}.log", chaos.name), false);
        let started = Instant::now();
        let after = Duration::from_millis(300 + draw(round, 4_000));
        let progress = 1_000 + draw(round + 1_000, 9_000);
        // Under transactions one commit covers every epoch that was ready (tens of thousands of events):
        // an even round dies a random 0–1.5 s after its first commit, mostly inside a later transaction.
        let after_commit = Duration::from_millis(draw(round + 2_000, 1_500));
        let mut committed_at: Option<Instant> = None;
        loop {
            let done = if round % 2 == 1 {
                started.elapsed() >= after
            } else if eos {
                if committed_at.is_none() && progress_now() > before {
                    committed_at = Some(Instant::now());
                }
                committed_at.is_some_and(|t| t.elapsed() >= after_commit)
                    || started.elapsed() > Duration::from_secs(120)
            } else {
                progress_now() >= before + progress || started.elapsed() > Duration::from_secs(120)
            };
            if done {
                break;
            }
            std::thread::sleep(Duration::from_millis(if eos { 100 } else { 10 }));
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        kills.push((round, started.elapsed().as_millis(), progress_now()));
    }
    // Stored (or, under transactions, committed) at the kills: less than everything — at the last kill,
    // or under transactions (whose commits take large steps) at least at half of them.
    let mid_stream = kills.iter().filter(|k| (k.2 as usize) < expected.events.len()).count();
    let progress_at_last_kill = kills.last().map_or(0, |k| k.2);
    assert!(
        if eos { mid_stream >= KILLS / 2 } else { (progress_at_last_kill as usize) < expected.events.len() },
        "the kills must land mid-stream: {kills:?} of {} events",
        expected.events.len()
    );
    let status = spawn(&chaos, &format!("{}-final.log", chaos.name), true).wait().unwrap();
    assert!(status.success(), "final run failed: see {}/{}-final.log", std::env::temp_dir().display(), chaos.name);

    let got = outcome(&chaos);
    eprintln!(
        "chaos: kills (round, ms after start, events stored or committed) {kills:?}; {} sends, {} send records on the \
         connector topics ({} repeats for the connectors to drop), {} decisions, {} transitions",
        got.sent.len(),
        got.send_records,
        got.send_records - got.sent.len(),
        got.decisions.len(),
        got.transitions.len()
    );
    let problems: Vec<String> = [
        diff("sends", &expected.sent, &got.sent),
        diff("decisions", &expected.decisions, &got.decisions),
        diff("journey transitions", &expected.transitions, &got.transitions),
        diff("events", &expected.events.keys().cloned().collect(), &got.events.keys().cloned().collect()),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(problems.is_empty(), "the chaos run differs from the clean run:\n{}", problems.join("\n"));
    assert_eq!(got.keys_decided_twice, 0, "one decision row per key (FINAL)");
    if eos {
        assert_eq!(got.send_records, got.sent.len(), "under transactions no send is on its topic twice, kills or not");
    }
    let doubled: Vec<_> = got.events.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(doubled.is_empty(), "events stored twice: {doubled:?}");
}

fn replay(path: &std::path::Path, from: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_touchpoint"))
        .args(["replay", "--config"])
        .arg(path)
        .args(["--from", from, "--workers", "2"])
        .output()
        .expect("running touchpoint replay")
}

#[test]
fn replaying_the_last_hour_twice_sends_nothing_new() {
    let tp = TestPipeline::new("it_replay", &[common::RULES]);
    tp.prepare();
    let produced = tp.produce(6_000, 23);
    let valid = touchpoint_generate::valid_event_ids(&produced).len() as u64;
    let status = spawn(&tp, &format!("{}.log", tp.name), true).wait().unwrap();
    assert!(status.success());
    let sends_before = connector_keys(&tp);
    let decisions = "SELECT concat(idempotency_key, '|', decision, '|', cap_rule, '|', consent_status) AS line \
                     FROM decisions FINAL";
    let decisions_before: BTreeSet<String> = query_lines(&tp, decisions).into_iter().collect();
    let allowed = decisions_before.iter().filter(|d| d.contains("|allowed|")).count();
    assert!(allowed > 100, "the input sends: {allowed} allowed decisions");
    let sent: BTreeSet<String> = sends_before.iter().map(|(k, _)| k.clone()).collect();
    let allowed_keys: BTreeSet<String> = decisions_before
        .iter()
        .filter(|d| d.contains("|allowed|"))
        .filter_map(|d| d.split('|').next().map(String::from))
        .collect();
    if let Some(problem) = diff("sends of the first run", &allowed_keys, &sent) {
        panic!("{problem}");
    }

    for round in 0..2 {
        let out = replay(&tp.path, "1h");
        let summary = String::from_utf8_lossy(&out.stdout);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "replay {round} failed: {summary}\n{log}");
        // Every record of the hour went through the dataflow again (stored events drive decisions)...
        assert!(summary.contains(&format!("already stored  {valid}\n")), "replay {round}:\n{summary}");
        // ... and every allowed send was found in the send ledger.
        assert!(summary.contains("sends emitted   0\n"), "replay {round}:\n{summary}");
        assert!(summary.contains(&format!("already sent    {allowed} ")), "replay {round}:\n{summary}");
        // ... and every suppressed one too: a replay does not re-decide what caps or consent held back.
        let suppressed = decisions_before.len() - allowed;
        assert!(suppressed > 0);
        assert!(summary.contains(&format!("already suppressed {suppressed} ")), "replay {round}:\n{summary}");
    }
    // The replays produced nothing at all (not even a repeat of a known key).
    assert_eq!(connector_keys(&tp).len(), sends_before.len(), "no send record was added by the replays");
    let decisions_after: BTreeSet<String> = query_lines(&tp, decisions).into_iter().collect();
    assert_eq!(decisions_after, decisions_before);
    assert_eq!(tp.stored_ids().values().filter(|n| **n > 1).count(), 0, "no event stored twice");

    // A range after the last record is empty: times resolve to offsets, not to "everything".
    let after_all = common::rfc3339(chrono::Utc::now().timestamp_millis() + 1_000);
    let out = replay(&tp.path, &after_all);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && summary.contains("in              0\n"), "{summary}");

    // Without the ledger, or further back than it remembers, a replay is refused.
    let at_least_once = std::env::temp_dir().join(format!("{}-alo.yaml", tp.name));
    std::fs::write(&at_least_once, tp.yaml.replace("guarantee: exactly_once_keys", "guarantee: at_least_once"))
        .unwrap();
    let out = replay(&at_least_once, "1h");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("replay needs processing.guarantee: exactly_once_keys"), "{err}");
    let out = replay(&tp.path, "30d");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("further back than the send ledger remembers"), "{err}");
    assert_eq!(connector_keys(&tp).len(), sends_before.len());
}
