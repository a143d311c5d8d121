//! Journeys end to end on the real services, with the shipped journey files (`pipelines/journeys`):
//! the welcome series (send, wait 1 day, branch on whether the welcome email was opened) and the
//! abandoned cart (wait for an order or time out after 4 hours, then a 50/50 split of reminders, goal
//! exit on the order).
//!
//! The pipeline is SIGKILLed while every subject waits (after its offsets were committed, so no event is
//! read again), restarted, and only then does event time move past the waits: the waits restored from
//! the journey changelog fire once each, and no send is made twice (a send repeated after a crash
//! carries the same idempotency key and counts once).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{count, journeys_in, produce_json, rfc3339, runtime, TestPipeline, JOURNEYS_OFF};
use serde_json::{json, Value};
use touchpoint_connectors::kafka::read_all;
use touchpoint_operators::journey::machine::split_bucket;
use touchpoint_schemas::SubjectRef;

const T0_MS: i64 = 1_795_168_800_000;
const MINUTE: i64 = 60_000;
const N: usize = 12;

fn event(id: &str, subject: &str, event_type: &str, at_ms: i64, attributes: Value) -> (String, Value) {
    let value = json!({"event_id": id, "event_type": event_type, "occurred_at": rfc3339(at_ms),
                       "subject_id": subject, "tenant_id": "acme", "attributes": attributes});
    (subject.to_string(), value)
}

fn grant(subject: &str, channel: &str) -> (String, Value) {
    let value = json!({"subject_id": subject, "tenant_id": "acme", "channel": channel, "purpose": "marketing",
                       "status": "granted", "updated_at": "2026-11-01T00:00:00Z", "source": "test"});
    (format!("acme/{subject}/{channel}/marketing"), value)
}

fn start(tp: &TestPipeline, log: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_touchpoint"))
        .args(["run", "--config"])
        .arg(&tp.path)
        .args(["--workers", "2"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(std::env::temp_dir().join(format!("{}-{log}.log", tp.name))).expect("log"))
        .spawn()
        .expect("starting touchpoint")
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Journey sends on the connector topics: (subject, template) → distinct idempotency keys, and how many
/// records there are in all.
fn journey_sends(tp: &TestPipeline) -> (BTreeMap<(String, String), BTreeSet<String>>, usize) {
    let mut by_send: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut records = 0;
    for channel in ["email", "push"] {
        let topic = format!("{}{channel}", tp.config.topics.connectors.prefix);
        for r in read_all(&tp.config.kafka, &topic, Duration::from_secs(1), Duration::from_secs(60)).expect("reading") {
            let v: Value = serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).expect("JSON");
            if v["journey"].is_null() {
                continue;
            }
            records += 1;
            let key = (
                v["subject_id"].as_str().unwrap_or_default().to_string(),
                v["template"].as_str().unwrap_or_default().to_string(),
            );
            by_send.entry(key).or_default().insert(v["idempotency_key"].as_str().unwrap_or_default().to_string());
        }
    }
    (by_send, records)
}

#[test]
fn journeys_wait_branch_split_and_exit_across_a_sigkill() {
    let tp = TestPipeline::new(
        "it_journeys",
        &[(JOURNEYS_OFF, &journeys_in("journeys")), ("idle_timeout: 5s", "idle_timeout: 1s")],
    );
    tp.prepare();
    let opened = |i: usize| format!("opened-{i}");
    let silent = |i: usize| format!("silent-{i}");
    let cart = |i: usize| format!("cart-{i}");
    let buyer = |i: usize| format!("buyer-{i}");
    let small = |i: usize| format!("small-{i}");

    let mut consent = Vec::new();
    for i in 0..N {
        for s in [opened(i), silent(i), cart(i), buyer(i)] {
            consent.push(grant(&s, "email"));
            consent.push(grant(&s, "push"));
        }
    }
    produce_json(&tp, &tp.config.topics.consent.name, consent);
    let everyone = (0..N).flat_map(|i| [opened(i), silent(i), cart(i), buyer(i), small(i)]);
    common::produce_profiles_of(&tp, "acme", everyone);

    let mut first = Vec::new();
    for i in 0..N {
        let t = T0_MS + i as i64 * MINUTE;
        let attrs =
            |s: &str| json!({"email": format!("{s}@example.com"), "plan": "pro", "amount": 80, "currency": "EUR"});
        first.push(event(&format!("su-o{i}"), &opened(i), "signed_up", t, attrs(&opened(i))));
        first.push(event(&format!("op-o{i}"), &opened(i), "email_opened", t + 120 * MINUTE, json!({})));
        first.push(event(&format!("su-s{i}"), &silent(i), "signed_up", t, attrs(&silent(i))));
        first.push(event(&format!("ca-c{i}"), &cart(i), "cart_updated", t, attrs(&cart(i))));
        first.push(event(&format!("ca-b{i}"), &buyer(i), "cart_updated", t, attrs(&buyer(i))));
        first.push(event(&format!("or-b{i}"), &buyer(i), "order_completed", t + 60 * MINUTE, attrs(&buyer(i))));
        first.push(event(&format!("ca-x{i}"), &small(i), "cart_updated", t, json!({"amount": 20})));
    }
    produce_json(&tp, &tp.config.topics.events.name, first);

    // Run 1: everyone enters; buyers leave on their order; the others wait. Then SIGKILL.
    let mut child = start(&tp, 1);
    let entered = (4 * N) as u64;
    wait_until("entries and the buyers' exits", || {
        count(&tp, "SELECT count() FROM journey_transitions FINAL WHERE from_step = ''") >= entered
            && count(&tp, "SELECT count() FROM journey_transitions FINAL WHERE cause = 'goal:order_completed'")
                >= N as u64
    });
    // Once every event's offset is committed, run 2 reads none of them again: only the journey state
    // restored from its changelog can make the waits fire.
    wait_until("the offsets to be committed", || tp.committed_offsets().values().sum::<i64>() == (7 * N) as i64);
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    let (before, _) = journey_sends(&tp);
    assert!(before.keys().all(|(_, t)| t == "welcome"), "only welcome emails before time moves: {before:?}");

    // Run 2: restored waits; an event two days later moves event time past every wait.
    let mut child = start(&tp, 2);
    produce_json(
        &tp,
        &tp.config.topics.events.name,
        vec![event("tick", "clock", "page_viewed", T0_MS + 2 * 1_440 * MINUTE, json!({}))],
    );
    let exits = (4 * N) as u64; // opened, silent, cart: exit; buyers: goal
    wait_until("every journey to end", || {
        count(&tp, "SELECT count() FROM journey_transitions FINAL WHERE to_step = ''") >= exits
    });
    std::thread::sleep(Duration::from_millis(1500));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("SIGTERM");
    assert!(child.wait().expect("wait").success());

    // Sends: exactly the expected ones, each under one idempotency key.
    let (sends, records) = journey_sends(&tp);
    let mut expected: BTreeMap<(String, String), ()> = BTreeMap::new();
    for i in 0..N {
        expected.insert((opened(i), "welcome".into()), ());
        expected.insert((opened(i), "getting_started_tips".into()), ());
        expected.insert((silent(i), "welcome".into()), ());
        expected.insert((silent(i), "come_back".into()), ());
        let bucket = split_bucket(&SubjectRef::new("acme", &cart(i)), "abandoned-cart");
        let reminder = if bucket < 50 { "cart_reminder" } else { "cart_reminder_discount" };
        expected.insert((cart(i), reminder.into()), ());
    }
    let got: BTreeSet<_> = sends.keys().cloned().collect();
    let want: BTreeSet<_> = expected.keys().cloned().collect();
    assert_eq!(
        got,
        want,
        "missing {:?}, unexpected {:?}",
        want.difference(&got).collect::<Vec<_>>(),
        got.difference(&want).collect::<Vec<_>>()
    );
    let doubled: Vec<_> = sends.iter().filter(|(_, keys)| keys.len() != 1).collect();
    assert!(doubled.is_empty(), "a send was made twice under different keys: {doubled:?}");
    assert!(records >= sends.len(), "{records} records for {} sends", sends.len());

    // Transitions: the path of one subject of each kind.
    #[derive(Debug, clickhouse::Row, serde::Deserialize)]
    struct Step {
        from_step: String,
        to_step: String,
        cause: String,
    }
    let path = |subject: &str| -> Vec<String> {
        runtime()
            .block_on(
                tp.store()
                    .client()
                    .query(
                        "SELECT from_step, to_step, cause FROM journey_transitions FINAL WHERE subject_id = ? \
                        ORDER BY event_time, seq",
                    )
                    .bind(subject)
                    .fetch_all::<Step>(),
            )
            .expect("transitions")
            .into_iter()
            .map(|s| format!("{}>{}:{}", s.from_step, s.to_step, s.cause))
            .collect()
    };
    let o = path(&opened(0));
    assert!(o.starts_with(&[">welcome:trigger:signed_up".to_string(), "welcome>wait-1d:sent".to_string()]), "{o:?}");
    assert!(
        o.ends_with(&[
            "wait-1d>opened-welcome:wait elapsed".to_string(),
            "opened-welcome>tips:condition:true".to_string(),
            "tips>done:sent".to_string(),
            "done>:exit".to_string(),
        ]),
        "{o:?}"
    );
    assert!(path(&silent(0)).contains(&"opened-welcome>nudge:condition:false".to_string()));
    assert_eq!(path(&buyer(0)), vec![">wait-for-order:trigger:cart_updated", "wait-for-order>:goal:order_completed"]);
    assert!(path(&small(0)).is_empty(), "below the trigger's threshold");
    let c = path(&cart(0));
    assert!(c.contains(&"wait-for-order>variant:timeout".to_string()), "{c:?}");

    // Decisions carry the journey and step.
    let journey_decisions = count(
        &tp,
        "SELECT count() FROM decisions FINAL WHERE journey != '' AND journey_step \
        != '' AND journey_version LIKE 'v1-%'",
    );
    assert_eq!(journey_decisions, expected.len() as u64);
    // `touchpoint explain` tells the story of one subject.
    let out = Command::new(env!("CARGO_BIN_EXE_touchpoint"))
        .args(["explain", "--config"])
        .arg(&tp.path)
        .args(["--tenant", "acme", "--subject", &silent(0)])
        .output()
        .expect("explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for needle in [
        "welcome-series",
        "(enter) -> welcome  (trigger:signed_up)",
        "email welcome -> ALLOWED",
        "opened-welcome -> nudge  (condition:false)",
        "push come_back -> ALLOWED",
    ] {
        assert!(text.contains(needle), "explain lacks {needle:?}:\n{text}");
    }
    // Waits fired once: one `wait elapsed` per welcome subject.
    assert_eq!(
        count(&tp, "SELECT count() FROM journey_transitions FINAL WHERE cause = 'wait elapsed'"),
        (2 * N) as u64
    );
}
