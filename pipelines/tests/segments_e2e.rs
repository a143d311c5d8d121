//! Streaming segments end to end on the real services, with the shipped segment files and journeys:
//! subjects who stopped opening the app enter `inactive-3d` by event time alone (no event of theirs),
//! the `segment_entered` event starts the win-back journey and its push goes out; profile attributes
//! (`pro-customers`) and counts (`frequent-buyers`) make memberships too, all landing in ClickHouse
//! `segment_memberships`. The pipeline is then killed with SIGKILL and restarted: the memberships come
//! back from `<group>.segments-changelog`, nobody enters a second time and no win-back push is sent
//! twice; an app open afterwards takes a subject out (its row gets an exit time).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{
    count, journeys_in, produce_json, query_lines, rfc3339, spawn_run, wait_for_count, KillOnDrop, TestPipeline,
    JOURNEYS_OFF,
};
use serde_json::json;

const SUBJECTS: usize = 60;
const BUYERS: usize = 10;
const DAY: i64 = 86_400_000;

fn event(id: &str, kind: &str, subject: &str, at: i64) -> (String, serde_json::Value) {
    (
        subject.to_string(),
        json!({"event_id": id, "event_type": kind, "occurred_at": rfc3339(at), "subject_id": subject,
               "tenant_id": "acme", "attributes": {}}),
    )
}

/// Current members of a segment (entered, not exited), per ClickHouse.
fn members(tp: &TestPipeline, segment: &str) -> u64 {
    count(
        tp,
        &format!(
            "SELECT count() FROM segment_memberships FINAL WHERE segment = '{segment}' AND exited_at IS NULL \
             AND subject_id LIKE 's-%'"
        ),
    )
}

#[test]
fn segments_move_by_time_trigger_journeys_and_survive_a_sigkill() {
    let segments = format!("  dir: {}", Path::new(env!("CARGO_MANIFEST_DIR")).join("segments").display());
    let tp = TestPipeline::new(
        "it_segments",
        &[
            (JOURNEYS_OFF, &journeys_in("journeys")),
            (common::SEGMENTS_OFF, &segments),
            ("idle_timeout: 5s", "idle_timeout: 1s"),
        ],
    );
    tp.prepare();
    let subject = |i: usize| format!("s-{i}");
    // Even subjects are on the pro plan; every subject may get pushes.
    let profiles = (0..SUBJECTS)
        .map(|i| {
            (
                format!("acme/{}", subject(i)),
                json!({"subject_id": subject(i), "tenant_id": "acme", "updated_at": "2026-01-01T00:00:00Z",
                       "devices": [{"token": format!("tok-{}", subject(i))}],
                       "attributes": {"plan": if i % 2 == 0 { "pro" } else { "free" }}}),
            )
        })
        .collect();
    produce_json(&tp, &tp.config.topics.profiles.name, profiles);
    let consent = (0..SUBJECTS)
        .map(|i| {
            (
                format!("acme/{}/push/marketing", subject(i)),
                json!({"subject_id": subject(i), "tenant_id": "acme", "channel": "push", "purpose": "marketing",
                       "status": "granted", "updated_at": "2026-01-01T00:00:00Z", "source": "test"}),
            )
        })
        .collect();
    produce_json(&tp, &tp.config.topics.consent.name, consent);

    // Even subjects opened the app at `start`, odd ones 13 days later (still active when event time
    // stops, two days after that); the first BUYERS ordered three times in three days.
    let now = chrono::Utc::now().timestamp_millis();
    let start = now - now.rem_euclid(DAY) - 20 * DAY;
    let mut events = Vec::new();
    for i in 0..SUBJECTS {
        let opened = if i % 2 == 0 { start } else { start + 13 * DAY };
        events.push(event(&format!("o-{i}"), "app_opened", &subject(i), opened + i as i64 * 1_000));
        if i < BUYERS {
            for n in 0..3 {
                events.push(event(&format!("b-{i}-{n}"), "order_completed", &subject(i), start + n * DAY));
            }
        }
    }
    // In event-time order, as a source would mostly have them.
    events.sort_by_key(|(_, e)| e["occurred_at"].as_str().map(str::to_string));
    produce_json(&tp, &tp.config.topics.events.name, events);
    // Event time moves to 15 days after `start` with one event elsewhere (others go idle).
    produce_json(&tp, &tp.config.topics.events.name, vec![event("clock-1", "page_viewed", "clock", start + 15 * DAY)]);

    let mut guard = KillOnDrop::default();
    let log = |n: &str| std::env::temp_dir().join(format!("{}-{n}.log", tp.name));
    let mut first = spawn_run(&tp, &log("first"));
    guard.watch(&first);
    let half = (SUBJECTS / 2) as u64;
    let win_back = "SELECT count() FROM decisions FINAL WHERE journey = 'win-back' AND decision = 'allowed' \
                    AND subject_id LIKE 's-%'";
    assert_eq!(
        wait_for_count(&tp, win_back, half, Duration::from_secs(120)),
        half,
        "a win-back push per inactive subject"
    );
    assert_eq!(
        wait_for_count(
            &tp,
            "SELECT count() FROM segment_memberships FINAL WHERE subject_id LIKE 's-%'",
            half * 2 + BUYERS as u64,
            Duration::from_secs(60),
        ),
        half * 2 + BUYERS as u64
    );
    assert_eq!(members(&tp, "inactive-3d"), half, "the even subjects, by time alone");
    assert_eq!(members(&tp, "pro-customers"), half, "from the profiles' plan");
    assert_eq!(members(&tp, "frequent-buyers"), BUYERS as u64);
    // Entered when their open left the 3-day window, to the millisecond.
    let entered = query_lines(
        &tp,
        "SELECT concat(subject_id, '|', toString(toUnixTimestamp64Milli(entered_at))) AS line \
         FROM segment_memberships FINAL WHERE segment = 'inactive-3d' AND subject_id LIKE 's-%'",
    );
    for line in &entered {
        let (s, at) = line.split_once('|').unwrap_or_default();
        let i: i64 = s.trim_start_matches("s-").parse().expect("subject number");
        assert_eq!(at.parse::<i64>().ok(), Some(start + i * 1_000 + 3 * DAY + 1), "{line}");
    }
    first.kill().expect("SIGKILL");
    first.wait().expect("wait");

    // Restart: state from the changelogs. More time passes, and s-0 opens the app again.
    let mut second = spawn_run(&tp, &log("second"));
    guard.watch(&second);
    produce_json(
        &tp,
        &tp.config.topics.events.name,
        // Still before the odd subjects' window ends (start + 16 days).
        vec![
            event("back-0", "app_opened", &subject(0), start + 15 * DAY + 3_600_000),
            event("clock-2", "page_viewed", "clock", start + 15 * DAY + DAY / 2),
        ],
    );
    let exited = "SELECT count() FROM segment_memberships FINAL WHERE segment = 'inactive-3d' \
                  AND exited_at IS NOT NULL AND subject_id LIKE 's-%'";
    assert_eq!(wait_for_count(&tp, exited, 1, Duration::from_secs(120)), 1, "s-0 left inactive-3d");
    std::thread::sleep(Duration::from_secs(2));
    let _ = std::process::Command::new("kill").args(["-TERM", &second.id().to_string()]).status();
    assert!(second.wait().expect("wait").success(), "the restarted pipeline stops cleanly");

    assert_eq!(members(&tp, "inactive-3d"), half - 1);
    // `touchpoint explain` tells the story: the membership, then the journey it started.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_touchpoint"))
        .args(["explain", "--config"])
        .arg(&tp.path)
        .args(["--tenant", "acme", "--subject", "s-0"])
        .output()
        .expect("explain");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "segment inactive-3d v1-",
        "left ",
        "segment pro-customers v1-",
        "member now",
        "win-back",
        "trigger:segment_entered",
    ] {
        assert!(text.contains(needle), "explain lacks {needle:?}:\n{text}");
    }
    assert_eq!(
        count(&tp, "SELECT count() FROM segment_memberships FINAL WHERE ordinal > 1"),
        0,
        "nobody entered twice"
    );
    assert_eq!(count(&tp, win_back), half, "no second win-back decision after the restart");
    // Each win-back push on the connector topic once.
    let keys: std::collections::BTreeSet<String> = query_lines(
        &tp,
        "SELECT idempotency_key AS line FROM decisions FINAL WHERE journey = 'win-back' AND decision = 'allowed'",
    )
    .into_iter()
    .collect();
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for (k, _) in common::connector_keys(&tp).into_iter().filter(|(k, _)| keys.contains(k)) {
        *per_key.entry(k).or_default() += 1;
    }
    assert_eq!(per_key.len(), keys.len(), "every win-back push is on the topic");
    assert!(per_key.values().all(|&n| n == 1), "no win-back push twice: {per_key:?}");
}
