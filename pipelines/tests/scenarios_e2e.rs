//! Three scenario files of `pipelines/scenarios` end to end on the real services: the scenario's journeys
//! and caps become the pipeline's, its consent and events are produced to the topics, a `watermark` step
//! becomes an event one allowed lateness later (the other partitions go idle), and the outcome is read
//! back from the connector topics and ClickHouse. The whole suite runs in-process in `scenarios.rs`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{produce_json, rfc3339, runtime, TestPipeline, JOURNEYS_OFF};
use serde_json::{json, Value};
use touchpoint::scenario::{
    parse_file, profile_record, scenario_journeys, ExpectedSend, ProfileEntry, ScenarioInput, TENANT,
};
use touchpoint_connectors::kafka::read_all;

/// The local profile's allowed lateness: a tick this far after a watermark step moves time to it.
const LATENESS_MS: i64 = 3_600_000;

fn run_on_services(name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("scenarios").join(name);
    let (scenario, inputs) = parse_file(&path, &root.join("journeys")).expect("scenario");
    assert!(!inputs.iter().any(|i| matches!(i, ScenarioInput::Restart(..))), "restarts are covered in-process");

    // The scenario's journeys and caps become the pipeline's.
    let dir = std::env::temp_dir().join(format!("touchpoint-scenario-{}-{}", std::process::id(), name));
    std::fs::create_dir_all(&dir).expect("journey dir");
    for j in scenario_journeys(&scenario, &root.join("journeys"), &path).expect("journeys") {
        std::fs::write(dir.join(format!("{}.yaml", j.id)), serde_yaml::to_string(&j.source).expect("yaml"))
            .expect("write");
    }
    let dir_line = format!("  dir: {}", dir.display());
    let caps = serde_yaml::to_string(&scenario.caps).expect("caps");
    let caps_block = format!("caps:\n{}", caps.lines().map(|l| format!("  {l}\n")).collect::<String>());
    let local = std::fs::read_to_string(root.join("config/local.yaml")).expect("local.yaml");
    let caps_start = local.find("\ncaps:\n").expect("caps section") + 1;
    // The section runs to the first blank line.
    let caps_end = local[caps_start..].find("\n\n").map_or(local.len(), |e| caps_start + e + 1);
    let shipped_caps = &local[caps_start..caps_end];
    let tp = TestPipeline::new(
        "it_scenario",
        &[(JOURNEYS_OFF, &dir_line), ("idle_timeout: 5s", "idle_timeout: 1s"), (shipped_caps, &caps_block)],
    );
    tp.prepare();

    let consent: Vec<(String, Value)> = scenario
        .consent
        .iter()
        .map(|c| {
            (
                format!("{TENANT}/{}/{}/{}", c.subject, c.channel, c.purpose),
                json!({"subject_id": c.subject, "tenant_id": TENANT, "channel": c.channel,
                "purpose": c.purpose, "status": c.status, "updated_at": "2026-11-01T00:00:00Z", "source": "scenario"}),
            )
        })
        .collect();
    produce_json(&tp, &tp.config.topics.consent.name, consent);
    let start_ms = scenario.start_ms().expect("start");
    let profile = |p: &ProfileEntry| {
        let record = profile_record(p, start_ms).expect("profile");
        (record.key, Value::Object(record.value.expect("not a tombstone")))
    };
    produce_json(&tp, &tp.config.topics.profiles.name, scenario.profiles.iter().map(profile).collect());
    let mut child = Command::new(env!("CARGO_BIN_EXE_touchpoint"))
        .args(["run", "--config"])
        .arg(&tp.path)
        .args(["--workers", "2"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(std::env::temp_dir().join(format!("{}.log", tp.name))).expect("log"))
        .spawn()
        .expect("starting touchpoint");

    for (n, input) in inputs.iter().enumerate() {
        match input {
            ScenarioInput::Event(e) => produce_json(
                &tp,
                &tp.config.topics.events.name,
                vec![(
                    e.subject_id.clone(),
                    json!({"event_id": e.event_id, "event_type": e.event_type,
                    "occurred_at": rfc3339(e.occurred_at_ms), "subject_id": e.subject_id, "tenant_id": TENANT,
                    "attributes": serde_json::from_str::<Value>(&e.attributes_json).unwrap_or(json!({}))}),
                )],
            ),
            ScenarioInput::Watermark(w) => {
                // Let the events so far be processed, then move event time with a tick on another subject.
                std::thread::sleep(Duration::from_millis(1500));
                produce_json(
                    &tp,
                    &tp.config.topics.events.name,
                    vec![(
                        format!("clock-{n}"),
                        json!({"event_id": format!("tick-{n}"), "event_type": "page_viewed",
                        "occurred_at": rfc3339(w + LATENESS_MS), "subject_id": format!("clock-{n}"), "tenant_id": TENANT,
                        "attributes": {}}),
                    )],
                );
            }
            ScenarioInput::Consent(_) | ScenarioInput::Profile(_) | ScenarioInput::Restart(..) => {
                unreachable!("not in the end-to-end scenarios")
            }
        }
    }

    // Wait for every expected movement and decision, then stop.
    let expected_moves: usize = scenario.expect.transitions.values().map(Vec::len).sum();
    let expected_decisions = scenario.expect.sends.len() + scenario.expect.suppressed.len();
    let count = |sql: &str| -> usize {
        runtime().block_on(tp.store().client().query(sql).fetch_one::<u64>()).unwrap_or(0) as usize
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while (count("SELECT count() FROM journey_transitions FINAL") < expected_moves
        || count("SELECT count() FROM decisions FINAL WHERE journey != ''") < expected_decisions)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("SIGTERM");
    assert!(child.wait().expect("wait").success());
    std::fs::remove_dir_all(&dir).ok();

    // Sends (connector topics), suppressions (decisions) and paths (journey_transitions).
    let mut sends = Vec::new();
    for channel in ["email", "push", "sms", "webhook"] {
        let topic = format!("{}{channel}", tp.config.topics.connectors.prefix);
        for r in read_all(&tp.config.kafka, &topic, Duration::from_secs(1), Duration::from_secs(30)).expect("reading") {
            let v: Value = serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).expect("JSON");
            if !v["journey"].is_null() {
                let s = ExpectedSend {
                    subject: v["subject_id"].as_str().unwrap_or_default().into(),
                    template: v["template"].as_str().unwrap_or_default().into(),
                    decision: None,
                    recipient: v["recipient"].as_str().map(str::to_string),
                    reason: None,
                };
                if !sends.contains(&s) {
                    sends.push(s);
                }
            }
        }
    }
    let mut expected_sends = scenario.expect.sends.clone();
    let key = |s: &ExpectedSend| (s.subject.clone(), s.template.clone());
    sends.sort_by_key(key);
    expected_sends.sort_by_key(key);
    expected_sends.dedup();
    assert!(
        ExpectedSend::all_match(&expected_sends, &sends),
        "{name}: sends: expected {expected_sends:?}, got {sends:?}"
    );

    #[derive(Debug, clickhouse::Row, serde::Deserialize)]
    struct Suppressed {
        subject_id: String,
        template: String,
        decision: String,
    }
    let mut suppressed: Vec<ExpectedSend> = runtime()
        .block_on(
            tp.store()
                .client()
                .query(
                    "SELECT subject_id, template, decision FROM decisions FINAL WHERE journey != '' AND \
                    decision != 'allowed'",
                )
                .fetch_all::<Suppressed>(),
        )
        .expect("decisions")
        .into_iter()
        .map(|s| ExpectedSend {
            subject: s.subject_id,
            template: s.template,
            decision: Some(s.decision),
            recipient: None,
            reason: None,
        })
        .collect();
    let mut expected_suppressed = scenario.expect.suppressed.clone();
    suppressed.sort_by_key(key);
    expected_suppressed.sort_by_key(key);
    assert!(
        ExpectedSend::all_match(&expected_suppressed, &suppressed),
        "{name}: suppressions: expected {expected_suppressed:?}, got {suppressed:?}"
    );

    #[derive(Debug, clickhouse::Row, serde::Deserialize)]
    struct Move {
        from_step: String,
        to_step: String,
        cause: String,
    }
    let mut paths: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for subject in scenario.expect.transitions.keys() {
        let moves = runtime()
            .block_on(
                tp.store()
                    .client()
                    .query(
                        "SELECT from_step, to_step, cause FROM journey_transitions FINAL WHERE subject_id = ? \
                        ORDER BY event_time, seq",
                    )
                    .bind(subject)
                    .fetch_all::<Move>(),
            )
            .expect("transitions");
        paths.insert(
            subject.clone(),
            moves.into_iter().map(|m| format!("{}>{}:{}", m.from_step, m.to_step, m.cause)).collect(),
        );
    }
    assert_eq!(paths, scenario.expect.transitions, "{name}: transitions");
}

#[test]
fn welcome_series_opened_on_the_real_services() {
    run_on_services("01-welcome-opened.yaml");
}

#[test]
fn abandoned_cart_split_on_the_real_services() {
    run_on_services("04-cart-abandoned.yaml");
}

#[test]
fn capped_step_on_the_real_services() {
    run_on_services("10-capped-step.yaml");
}
