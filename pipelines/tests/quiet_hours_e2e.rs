//! Quiet hours end to end on the real services: pushes triggered at night are held (a decision row
//! with the release time, nothing on the connector topic), the pipeline is killed with SIGKILL while
//! they are held, and after the restart each is decided again and sent exactly once, with its
//! original idempotency key, when event time passes the end of the window.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{produce_json, query_lines, rfc3339, spawn_run, wait_for_count, KillOnDrop, TestPipeline};
use serde_json::json;

const SUBJECTS: usize = 200;
const HOUR: i64 = 3_600_000;

#[test]
fn held_sends_survive_a_sigkill_and_go_out_once_at_the_end_of_the_window() {
    let tp = TestPipeline::new(
        "it_quiet",
        &[
            (
                "  rules: ${TOUCHPOINT_QUIET_HOURS_RULES:-[]}\n",
                "  rules:\n    - {id: push-night, channel: push, window: \"21:00-08:00\"}\n",
            ),
            ("idle_timeout: 5s", "idle_timeout: 1s"),
        ],
    );
    tp.prepare();
    let subject = |i: usize| format!("q-{i}");
    common::produce_profiles_of(&tp, "acme", (0..SUBJECTS).map(subject));
    let consent = (0..SUBJECTS)
        .map(|i| {
            (
                format!("acme/{}/push/marketing", subject(i)),
                json!({"subject_id": subject(i), "tenant_id": "acme", "channel": "push", "purpose": "marketing",
                       "status": "granted", "updated_at": "2026-11-01T00:00:00Z", "source": "test"}),
            )
        })
        .collect();
    produce_json(&tp, &tp.config.topics.consent.name, consent);
    // Two days ago, 23:00 UTC (the profiles name no zone: UTC): one app open per subject, in quiet hours.
    let now = chrono::Utc::now().timestamp_millis();
    let night = now - now.rem_euclid(24 * HOUR) - 2 * 24 * HOUR + 23 * HOUR;
    let morning = night + 9 * HOUR;
    let opened = |id: String, subject: String, at: i64| {
        (
            subject.clone(),
            json!({"event_id": id, "event_type": "app_opened", "occurred_at": rfc3339(at), "subject_id": subject,
                   "tenant_id": "acme", "attributes": {}}),
        )
    };
    produce_json(
        &tp,
        &tp.config.topics.events.name,
        (0..SUBJECTS).map(|i| opened(format!("n-{i}"), subject(i), night + i as i64 * 1_000)).collect(),
    );

    let mut guard = KillOnDrop::default();
    let log = |n: &str| std::env::temp_dir().join(format!("{}-{n}.log", tp.name));
    let mut first = spawn_run(&tp, &log("held"));
    guard.watch(&first);
    let held = "SELECT count() FROM decisions FINAL WHERE decision = 'held_quiet_hours'";
    assert_eq!(
        wait_for_count(&tp, held, SUBJECTS as u64, Duration::from_secs(120)),
        SUBJECTS as u64,
        "every push held"
    );
    let sent_at_night = common::connector_keys(&tp).into_iter().filter(|(_, c)| c == "push").count();
    assert_eq!(sent_at_night, 0, "nothing is sent in quiet hours");
    first.kill().expect("SIGKILL");
    first.wait().expect("wait");

    // Restart, and move event time past 08:00 (plus the allowed lateness) with one event elsewhere.
    let mut second = spawn_run(&tp, &log("released"));
    guard.watch(&second);
    produce_json(&tp, &tp.config.topics.events.name, vec![opened("clock".into(), "clock".into(), morning + 2 * HOUR)]);
    let released = "SELECT count() FROM decisions FINAL WHERE decision = 'allowed' AND released_at > occurred_at";
    let n = wait_for_count(&tp, released, SUBJECTS as u64, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(2));
    let _ = std::process::Command::new("kill").args(["-TERM", &second.id().to_string()]).status();
    assert!(second.wait().expect("wait").success(), "the restarted pipeline stops cleanly");
    assert_eq!(n, SUBJECTS as u64, "every held push decided again at 08:00 and allowed");

    // Each push on the connector topic once, with the key its hold had; released at 08:00 sharp.
    let pushes: Vec<String> =
        common::connector_keys(&tp).into_iter().filter(|(_, c)| c == "push").map(|(k, _)| k).collect();
    let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
    for k in &pushes {
        *per_key.entry(k.as_str()).or_default() += 1;
    }
    assert_eq!(per_key.len(), SUBJECTS, "one push per subject");
    assert!(per_key.values().all(|&n| n == 1), "no push twice: {per_key:?}");
    let rows = query_lines(
        &tp,
        "SELECT concat(idempotency_key, '|', arrayStringConcat(arraySort(groupArray(concat(decision, '@', \
         toString(toUnixTimestamp64Milli(if(decision = 'held_quiet_hours', held_until, released_at)))))), ',')) AS line \
         FROM decisions FINAL WHERE intent_rule = 'daily-deal-push' AND subject_id LIKE 'q-%' GROUP BY idempotency_key",
    );
    assert_eq!(rows.len(), SUBJECTS);
    // Held until 08:00 UTC the morning after, and decided again at that instant.
    let release = morning;
    for row in &rows {
        let (key, decisions) = row.split_once('|').unwrap_or_default();
        assert!(per_key.contains_key(key), "{key} decided but not sent");
        assert_eq!(decisions, format!("allowed@{release},held_quiet_hours@{release}"), "{row}");
    }
}
