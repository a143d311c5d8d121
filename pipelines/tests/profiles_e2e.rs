//! Profiles end to end on the real services: recipients come from `marketing.profiles` and profile
//! update events, never from the event that triggers a send; a send with nowhere to go is its own
//! decision; a bad profile record is dead-lettered with its reason; profiles land in ClickHouse; and a
//! restart restores what events set (the profiles changelog) and applies a tombstone.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{produce_json, query_lines, rfc3339, TestPipeline, RULES};
use serde_json::{json, Value};
use touchpoint::RunOptions;
use touchpoint_connectors::kafka::{read_all, AckedProducer, OutgoingRecord};
use touchpoint_schemas::headers;

const T0: i64 = 1_795_600_800_000; // 2026-11-25T10:00:00Z

fn event(id: &str, subject: &str, event_type: &str, at_ms: i64, attributes: Value) -> (String, Value) {
    (
        subject.to_string(),
        json!({"event_id": id, "event_type": event_type, "occurred_at": rfc3339(at_ms), "subject_id": subject,
               "tenant_id": "acme", "attributes": attributes}),
    )
}

fn grant(subject: &str) -> (String, Value) {
    (
        format!("acme/{subject}/email/marketing"),
        json!({"subject_id": subject, "tenant_id": "acme", "channel": "email", "purpose": "marketing",
               "status": "granted", "updated_at": "2026-11-01T00:00:00Z", "source": "test"}),
    )
}

fn profile(subject: &str, fields: Value) -> (String, Value) {
    let mut value = json!({"subject_id": subject, "tenant_id": "acme", "updated_at": "2026-11-01T00:00:00Z"});
    if let (Value::Object(v), Value::Object(f)) = (&mut value, fields) {
        v.extend(f);
    }
    (format!("acme/{subject}"), value)
}

/// Subject → the recipients of its email sends, in topic order.
fn email_recipients(tp: &TestPipeline) -> BTreeMap<String, Vec<String>> {
    let topic = format!("{}email", tp.config.topics.connectors.prefix);
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in read_all(&tp.config.kafka, &topic, Duration::from_secs(1), Duration::from_secs(60)).expect("reading") {
        let v: Value = serde_json::from_slice(r.payload.as_deref().unwrap_or_default()).expect("JSON");
        out.entry(v["subject_id"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(v["recipient"].as_str().unwrap_or("<none>").to_string());
    }
    out
}

fn run(tp: &TestPipeline) {
    touchpoint::run(tp.config.clone(), RunOptions { workers: 2, until_drained: true, ..Default::default() })
        .expect("pipeline run");
}

#[test]
fn recipients_come_from_profiles_and_survive_a_restart() {
    let tp = TestPipeline::new("it_profiles", &[RULES]);
    tp.prepare();
    let subjects = ["p-ann", "p-zed", "p-eve", "p-bad"];
    produce_json(&tp, &tp.config.topics.consent.name, subjects.iter().map(|s| grant(s)).collect());
    produce_json(
        &tp,
        &tp.config.topics.profiles.name,
        vec![
            profile(
                "p-ann",
                json!({"email": "ann@example.com", "locale": "de-DE", "attributes": {"first_name": "Ann"}}),
            ),
            // Rejected whole: the address does not check out.
            profile("p-bad", json!({"email": "not an address"})),
        ],
    );
    let attacker = json!({"email": "attacker@evil.example"});
    produce_json(
        &tp,
        &tp.config.topics.events.name,
        vec![
            // The event names another address: ignored, the profile's is used.
            event("e1", "p-ann", "signed_up", T0, attacker.clone()),
            // No profile: nowhere to send, whatever the event says.
            event("e2", "p-zed", "signed_up", T0, attacker.clone()),
            // The profile comes from an event, earlier than the send it serves.
            event("e3", "p-eve", "profile_updated", T0, json!({"email": "eve@example.com", "plan": "pro"})),
            event("e4", "p-eve", "signed_up", T0 + 1_000, attacker.clone()),
            event("e5", "p-bad", "signed_up", T0, attacker.clone()),
        ],
    );
    run(&tp);

    let sent = email_recipients(&tp);
    assert_eq!(sent.get("p-ann"), Some(&vec!["ann@example.com".to_string()]), "{sent:?}");
    assert_eq!(sent.get("p-eve"), Some(&vec!["eve@example.com".to_string()]), "{sent:?}");
    assert!(!sent.contains_key("p-zed") && !sent.contains_key("p-bad"), "{sent:?}");
    assert!(!sent.values().flatten().any(|r| r.contains("evil")), "no send goes where an event says: {sent:?}");
    let decisions = query_lines(
        &tp,
        "SELECT concat(subject_id, '|', decision, '|', recipient_source, '|', reason) AS line FROM decisions FINAL \
         ORDER BY subject_id",
    );
    let reason_of = |subject: &str| decisions.iter().find(|l| l.starts_with(&format!("{subject}|"))).cloned();
    assert_eq!(
        reason_of("p-zed").as_deref(),
        Some(
            "p-zed|suppressed_no_recipient|missing|consent granted; no email address in the profile; the event's \
             recipient is not used (recipients: profile_only)"
        ),
        "{decisions:?}"
    );
    assert!(reason_of("p-ann").is_some_and(|l| l.starts_with("p-ann|allowed|profile|")), "{decisions:?}");

    // The bad record is dead-lettered with its reason, and nothing of it was taken.
    let dlq = read_all(
        &tp.config.kafka,
        &tp.config.topics.profiles_dead_letter.name,
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
    .expect("reading the profiles dead letters");
    assert_eq!(dlq.len(), 1, "one bad profile record");
    assert_eq!(dlq[0].header(headers::ERROR_CODE), Some("invalid_profile_field"));
    assert!(dlq[0].header(headers::ERROR_MESSAGE).is_some_and(|m| m.contains("not an email address")));

    // ClickHouse `profiles`: what analysts query.
    let rows = query_lines(
        &tp,
        "SELECT concat(subject_id, '|', email, '|', locale, '|', attributes) AS line FROM profiles FINAL ORDER BY subject_id",
    );
    assert_eq!(
        rows,
        ["p-ann|ann@example.com|de-DE|{\"first_name\":\"Ann\"}", "p-eve|eve@example.com||{\"plan\":\"pro\"}"],
        "{rows:?}"
    );

    // Restart: Eve's address came from an event, so only the changelog has it. Ann is forgotten (a
    // tombstone, dated now: after every field she has).
    let tombstone = OutgoingRecord {
        partition: None,
        topic: tp.config.topics.profiles.name.clone(),
        key: Some(b"acme/p-ann".to_vec()),
        payload: None,
        headers: vec![],
    };
    common::runtime()
        .block_on(AckedProducer::new(&tp.config.kafka).expect("producer").send_all(&[tombstone]))
        .expect("tombstone");
    produce_json(
        &tp,
        &tp.config.topics.events.name,
        vec![
            event("e6", "p-eve", "cart_updated", T0 + 60_000, json!({})),
            event("e7", "p-ann", "cart_updated", T0 + 60_000, json!({})),
        ],
    );
    run(&tp);
    let sent = email_recipients(&tp);
    assert_eq!(
        sent.get("p-eve"),
        Some(&vec!["eve@example.com".to_string(); 2]),
        "restored from the changelog: {sent:?}"
    );
    assert_eq!(sent.get("p-ann").map(Vec::len), Some(1), "forgotten: no second send: {sent:?}");
    let ann = query_lines(
        &tp,
        "SELECT concat(intent_rule, '|', decision) AS line FROM decisions FINAL WHERE subject_id = 'p-ann' ORDER BY intent_rule",
    );
    assert_eq!(ann, ["cart-reminder|suppressed_no_recipient", "welcome-email|allowed"]);
    let deleted = query_lines(&tp, "SELECT toString(deleted) AS line FROM profiles FINAL WHERE subject_id = 'p-ann'");
    assert!(deleted.is_empty() || deleted == ["1"], "a forgotten profile leaves the table: {deleted:?}");
}
